//! Fuzz target for HTTP request handling: arbitrary methods, paths, query strings, headers and
//! bodies go through the real router (auth, limits, path/query extraction, JSON parsing,
//! handlers) over the in-memory backend, authenticated as tenant `a`. Properties:
//! - no input panics the server or makes it answer 500 (bad input is a 4xx);
//! - no response to tenant `a` ever contains tenant `b`'s data, whatever ids the input sends.
//!
//! Run: `cd store-node/fuzz && cargo +nightly fuzz run http_request`.

#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use store_node::backend::memory::MemoryStore;
use store_node::metrics::Metrics;
use store_node::server::{router, AppState, ServerConfig};
use store_node::tenant::{sha256_hex, Registry, RegistryFile};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const SECRET: &str = "SECRET-OF-TENANT-B";

struct World {
    rt: tokio::runtime::Runtime,
    state: AppState,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let registry = format!(
            r#"{{"version":1,"tenants":[{{"id":"a","tokenSha256":["{}"]}},{{"id":"b","tokenSha256":["{}"]}}]}}"#,
            sha256_hex("token-a"),
            sha256_hex("token-b")
        );
        let file = RegistryFile::parse(registry.as_bytes()).expect("registry");
        let state = AppState::new(
            Arc::new(Registry::fixed(&file).expect("registry")),
            ServerConfig::default(),
            Arc::new(Metrics::new(10).expect("metrics")),
            CancellationToken::new(),
        );
        state.set_store(Arc::new(MemoryStore::default()));
        // Tenant b's data, on stream ids tenant a will guess.
        for (i, stream) in ["s", "secret", "a", "b"].iter().enumerate() {
            let body = format!(r#"{{"events":[{{"eventId":"00000000-0000-0000-0000-00000000000{i}","eventType":"t","data":{{"x":"{SECRET}"}},"metadata":{{"m":"{SECRET}"}}}}]}}"#);
            let req = Request::post(format!("/v1/streams/{stream}/events"))
                .header("authorization", "Bearer token-b")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .expect("request");
            let resp = rt.block_on(router(state.clone()).oneshot(req)).expect("infallible");
            assert_eq!(resp.status(), StatusCode::CREATED, "seeding tenant b");
        }
        World { rt, state }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let w = world();
    let method = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
    ][data[0] as usize % 6]
        .clone();
    let auth = match data[1] % 4 {
        0 => None,
        1 => Some("Bearer token-b-wrong".to_string()),
        _ => Some("Bearer token-a".to_string()),
    };
    let rest = &data[3..];
    let (path, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let prefix = ["", "/v1/", "/v1/streams/", "/v1/streams/s/events"][data[2] as usize % 4];
    let path = format!("{prefix}{}", String::from_utf8_lossy(path));
    if path.contains("subscribe") {
        return; // a live subscription never ends; covered by the server's own tests
    }
    let mut req = Request::builder().method(method).uri(path.as_str());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if data[1] & 4 != 0 {
        req = req.header("content-type", "application/json");
    }
    let Ok(req) = req.body(Body::from(body.to_vec())) else {
        return; // not a valid URI: hyper would reject it before the router
    };
    let (status, bytes) = w.rt.block_on(async {
        let resp = router(w.state.clone()).oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap_or_default();
        (status, bytes)
    });
    assert!(
        !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "{path}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        !String::from_utf8_lossy(&bytes).contains(SECRET),
        "{path}: tenant b's data leaked to tenant a"
    );
});
