//! The server against hostile clients and a failing disk, over real loopback sockets: idle and
//! slow connections against the connection cap and the header deadline, `u64::MAX` positions
//! and versions, a WAL whose fsync fails, a data volume at its free-space reserve, and
//! `/metrics` kept off the API port.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::backend::memory::MemoryStore;
use crate::engine::{Engine, EngineConfig};
use crate::fsio::SimFs;
use crate::tenant::{sha256_hex, RegistryFile};

const TOKEN: &str = "t";

struct Server {
    api: String,
    addr: SocketAddr,
    metrics: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Server {
    async fn start(store: Arc<dyn EventStore>, config: ServerConfig) -> Server {
        let file = RegistryFile::parse(
            format!(
                r#"{{"version":1,"tenants":[{{"id":"a","tokenSha256":["{}"]}}]}}"#,
                sha256_hex(TOKEN)
            )
            .as_bytes(),
        )
        .unwrap();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = ServerConfig {
            listen: loopback,
            metrics_listen: Some(loopback),
            ..config
        };
        let listeners = bind_all(&config).await.unwrap();
        let addr = listeners.api.local_addr().unwrap();
        let maddr = listeners.metrics.as_ref().unwrap().local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let st = AppState::new(
            Arc::new(Registry::fixed(&file).unwrap()),
            config,
            Arc::new(Metrics::new(10).unwrap()),
            shutdown.clone(),
        );
        st.set_store(store);
        Server {
            api: format!("http://{addr}"),
            addr,
            metrics: format!("http://{maddr}/metrics"),
            shutdown,
            task: tokio::spawn(run(st, listeners)),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = reqwest::Client::new()
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn append(&self, stream: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/streams/{stream}/events"),
            Some(body),
        )
        .await
    }

    async fn scrape(&self) -> String {
        reqwest::get(&self.metrics)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn ev(n: u128) -> Value {
    json!({"eventId": uuid::Uuid::from_u128(n), "eventType": "t", "data": {"n": n as u64}})
}

fn engine_at(dir: &Path) -> Arc<dyn EventStore> {
    Arc::new(Engine::open(EngineConfig::new(dir)).unwrap())
}

// ---------------------------------------------------------------------------------------------
// Defect 6: connections

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // a refusal's 503 head; the close follows
            Ok(Ok(_)) => continue,
        }
    }
}

async fn legit_request(addr: SocketAddr) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!(
        "GET /v1/stats HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))
}

#[tokio::test]
async fn idle_sockets_are_closed_capped_and_do_not_lock_out_a_client() {
    const CAP: usize = 32;
    let srv = Server::start(
        Arc::new(MemoryStore::default()),
        ServerConfig {
            max_connections: CAP,
            header_read_timeout: Duration::from_millis(500),
            ..ServerConfig::default()
        },
    )
    .await;
    // The attack: four times the cap of sockets that never send a byte, plus a slow client
    // that sends half a request head and stops.
    let mut idle = Vec::new();
    for _ in 0..4 * CAP {
        idle.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    let mut slow = TcpStream::connect(srv.addr).await.unwrap();
    slow.write_all(b"GET /v1/stats HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // A legitimate client is served while every idle socket is still open.
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(legit_request(srv.addr).await, Ok(200));
    }
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "the client waited for the idle sockets to time out ({:?})",
        started.elapsed()
    );
    // The server holds at most CAP of them: the rest are already closed.
    let mut open = 0;
    for s in &mut idle {
        if !closed_within(s, Duration::from_millis(20)).await {
            open += 1;
        }
    }
    assert!(
        open <= CAP,
        "{open} idle sockets held open with a cap of {CAP}"
    );
    // ... and those are closed once the header deadline passes, the slow one too.
    let started = Instant::now();
    for s in idle.iter_mut().chain(std::iter::once(&mut slow)) {
        assert!(
            closed_within(s, Duration::from_secs(3)).await,
            "an idle socket outlived the header deadline"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let m = srv.scrape().await;
    assert!(
        m.contains("allsource_http_connections_closed_total{reason=\"header_timeout\"}"),
        "{m}"
    );
    assert_eq!(legit_request(srv.addr).await, Ok(200));
    srv.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_deadline() {
    let srv = Server::start(
        Arc::new(MemoryStore::default()),
        ServerConfig {
            header_read_timeout: Duration::from_millis(300),
            ..ServerConfig::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Defect 8a: metrics off the API port

#[tokio::test]
async fn metrics_are_served_on_their_own_listener_only() {
    let srv = Server::start(Arc::new(MemoryStore::default()), ServerConfig::default()).await;
    assert_eq!(
        srv.append("s", json!({"events": [ev(1)]})).await.0,
        StatusCode::CREATED
    );
    let (status, body) = srv.get("/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let anonymous = reqwest::get(format!("{}/metrics", srv.api)).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::NOT_FOUND);
    let m = srv.scrape().await;
    assert!(m.contains("allsource_appends_total{tenant=\"a\"} 1"), "{m}");
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Defect 8b: u64::MAX from the client

async fn max_values_are_answered(store: Arc<dyn EventStore>) {
    let srv = Server::start(store, ServerConfig::default()).await;
    let max = u64::MAX;
    assert_eq!(
        srv.append("s", json!({"events": [ev(1), ev(2)]})).await.0,
        StatusCode::CREATED
    );
    // an expected version nobody can reach is a plain conflict
    let (status, body) = srv
        .append("s", json!({"expectedVersion": max, "events": [ev(3)]}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["currentVersion"], 1, "{body}");
    for path in [
        format!("/v1/streams/s/events?from={max}"),
        format!("/v1/streams/s/events?from={max}&direction=backwards"),
        format!("/v1/events?from={max}"),
    ] {
        let (status, body) = srv.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert!(body["events"].is_array(), "{path}: {body}");
    }
    let (status, body) = srv.get(&format!("/v1/events?limit={max}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // subscriptions after u64::MAX stay open (nothing can come after it) instead of dying
    for q in [format!("after={max}"), format!("stream=s&after={max}")] {
        let resp = reqwest::Client::new()
            .get(format!("{}/v1/subscribe?{q}", srv.api))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{q}");
        let mut body = resp.bytes_stream();
        use futures::StreamExt;
        let first = tokio::time::timeout(Duration::from_millis(500), body.next()).await;
        match first {
            Err(_) => {}
            Ok(item) => panic!("subscription {q} ended or delivered: {item:?}"),
        }
    }
    // the same value in Last-Event-ID
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/subscribe", srv.api))
        .bearer_auth(TOKEN)
        .header("last-event-id", max.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    use futures::StreamExt;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), body.next())
            .await
            .is_err(),
        "subscription with Last-Event-ID u64::MAX ended"
    );
    let (status, body) = srv
        .call(
            reqwest::Method::POST,
            "/v1/streams/s/truncate",
            Some(json!({"before": max})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = srv
        .call(
            reqwest::Method::POST,
            "/v1/trim",
            Some(json!({"before": max})),
        )
        .await;
    assert!(
        status == StatusCode::OK || status.is_client_error(),
        "{status} {body}"
    );
    // the server is still whole
    assert_eq!(srv.get("/v1/stats").await.0, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test]
async fn u64_max_positions_and_versions_over_http_engine() {
    let dir = tempfile::tempdir().unwrap();
    max_values_are_answered(engine_at(dir.path())).await;
}

#[tokio::test]
async fn u64_max_positions_and_versions_over_http_memory() {
    max_values_are_answered(Arc::new(MemoryStore::default())).await;
}

// ---------------------------------------------------------------------------------------------
// Defect 7: a poisoned WAL, the free-space reserve

#[tokio::test]
async fn a_failed_fsync_is_reported_by_readyz_info_and_metrics() {
    let fs = SimFs::new();
    let cfg = EngineConfig {
        checkpoint_interval_ms: 0,
        ..EngineConfig::new("/data")
    };
    let engine = Arc::new(Engine::open_with_fs(cfg, Arc::new(fs.clone())).unwrap());
    let srv = Server::start(engine, ServerConfig::default()).await;
    assert_eq!(
        srv.append("s", json!({"events": [ev(1)]})).await.0,
        StatusCode::CREATED
    );
    let ready = reqwest::get(format!("{}/readyz", srv.api)).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(srv.scrape().await.contains("allsource_wal_poisoned 0"));

    fs.fail_syncs(true);
    let (status, body) = srv.append("s", json!({"events": [ev(2)]})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "read_only", "{body}");

    let ready = reqwest::get(format!("{}/readyz", srv.api)).await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["reason"], "wal_poisoned", "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("simulated fsync failure") && msg.contains("restart the node"),
        "{msg}"
    );
    let m = srv.scrape().await;
    assert!(m.contains("allsource_wal_poisoned 1"), "{m}");
    let (status, info) = srv.get("/v1/info").await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["writes"]["accepted"], false, "{info}");
    assert_eq!(info["writes"]["reason"], "wal_poisoned", "{info}");
    // reads still work
    let (status, page) = srv.get("/v1/streams/s/events").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    srv.shutdown.cancel();
    let _ = srv.task.await;
}

/// A tmpfs of 8 MiB (needs root; skipped otherwise), unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
async fn below_the_reserve_writes_answer_507_and_resume_when_space_is_back() {
    let Some(vol) = Tmpfs::mount() else {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    };
    let data = vol.0.path().join("data");
    let reserve = health::DiskReserve {
        path: vol.0.path().to_path_buf(),
        min_free_bytes: 3 << 20,
        min_free_percent: 0.0,
    };
    let cfg = EngineConfig {
        // small WAL files so the volume's usage is the data, not preallocation
        wal_segment_bytes: 1 << 20,
        ..EngineConfig::new(&data)
    };
    let engine = Arc::new(Engine::open(cfg).unwrap());
    let srv = Server::start(
        engine,
        ServerConfig {
            disk_reserve: Some(reserve.clone()),
            ..ServerConfig::default()
        },
    )
    .await;
    assert_eq!(
        srv.append("s", json!({"events": [ev(1)]})).await.0,
        StatusCode::CREATED
    );
    // Something else fills the volume to just below the reserve.
    let free = reserve.space().unwrap().available;
    let filler = vol.0.path().join("filler");
    std::fs::write(&filler, vec![7u8; (free - (3 << 20) + (64 << 10)) as usize]).unwrap();
    let big = "x".repeat(128 << 10);
    let body =
        json!({"events": [{"eventId": uuid::Uuid::from_u128(2), "eventType": "t", "data": big}]});
    let (status, err) = srv.append("s", body.clone()).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{err}");
    assert_eq!(err["code"], "insufficient_storage", "{err}");
    assert!(err["message"].is_string());
    let (status, info) = srv.get("/v1/info").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["writes"]["reason"], "disk_reserve", "{info}");
    let ready = reqwest::get(format!("{}/readyz", srv.api)).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "reads keep being served");
    let snap = json!({"version": 0, "data": big});
    let (status, _) = srv
        .call(reqwest::Method::PUT, "/v1/streams/s/snapshot", Some(snap))
        .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    assert!(srv
        .scrape()
        .await
        .contains("allsource_disk_reserve_bytes 3145728"));
    // Nothing was written: the stream still has one event, and the WAL is not poisoned.
    let (_, page) = srv.get("/v1/streams/s/events").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    // Space is back: the same append is accepted without a restart.
    std::fs::remove_file(&filler).unwrap();
    let (status, res) = srv.append("s", body).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    let (_, info) = srv.get("/v1/info").await;
    assert_eq!(info["writes"]["accepted"], true, "{info}");
    srv.stop().await;
}
