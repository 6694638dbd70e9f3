//! The store-node HTTP API end to end: runs the real `store-node serve` binary on a loopback
//! port with a registry file and drives every endpoint and error path over HTTP: appends and
//! reads, snapshots, streams, stats, subscriptions (catch-up then live), bad input, cross-tenant
//! attempts, quotas, suspension, placement, registry hot reload with token rotation, and
//! graceful shutdown on SIGTERM with a restart that must find the data again.
//!
//! Needs no external server. The binary is built with `cargo build --workspace --bins --tests` on first
//! use (a no-op when `tests/run-tests.sh` built it already); set `STORE_NODE_BIN` to use a
//! prebuilt one.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use store_node::tenant::sha256_hex;

// ---------------------------------------------------------------------------------------------
// Harness

use allsource_tests::bins::{free_port, store_node as binary};

struct Node {
    child: Option<Child>,
    base: String,
    metrics_base: String,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Node {
    /// Starts a node with the given registry and extra flags, waits until /readyz is 200.
    async fn start(registry: &Value, extra: &[&str]) -> Node {
        Self::start_with_env(registry, extra, &[]).await
    }

    /// Like [`Node::start`], with environment variables set on the node process.
    async fn start_with_env(registry: &Value, extra: &[&str], env: &[(&str, &str)]) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let node = Node {
            child: None,
            base: String::new(),
            metrics_base: String::new(),
            dir,
            _tmp: tmp,
            args: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        node.write_registry(registry);
        node.launch().await
    }

    async fn launch(mut self) -> Node {
        let port = free_port();
        let metrics_port = free_port();
        self.base = format!("http://127.0.0.1:{port}");
        self.metrics_base = format!("http://127.0.0.1:{metrics_port}");
        let log = std::fs::File::create(self.dir.join("node.log")).unwrap();
        let child = Command::new(binary())
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--registry")
            .arg(self.dir.join("registry.json"))
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--registry-poll-ms", "100", "--log-format", "text"])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("POD_NAME")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn store-node");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await {
                if r.status() == StatusCode::OK {
                    break;
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("store-node exited early ({st}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "store-node not ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    /// Replaces the registry file the way a ConfigMap update does: write aside, then rename.
    fn write_registry(&self, registry: &Value) {
        self.write_registry_bytes(&serde_json::to_vec_pretty(registry).unwrap());
    }

    fn write_registry_bytes(&self, bytes: &[u8]) {
        let tmp = self.dir.join("registry.json.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, self.dir.join("registry.json")).unwrap();
    }

    /// Sends SIGTERM and waits for the process to exit.
    async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("node running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "store-node ignored SIGTERM; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Restarts on the same data dir and registry.
    async fn restart(self) -> Node {
        self.launch().await
    }

    fn req(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let c = reqwest::Client::new();
        let mut r = c.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.req(method, path, Some(token));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    async fn append(&self, stream: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/v1/streams/{stream}/events"),
            token,
            Some(body),
        )
        .await
    }

    /// The Prometheus text of the metrics listener (the API port has no `/metrics`).
    async fn metrics(&self) -> String {
        reqwest::Client::new()
            .get(format!("{}/metrics", self.metrics_base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tenant(id: &str, tokens: &[&str]) -> Value {
    json!({"id": id, "tokenSha256": tokens.iter().map(|t| sha256_hex(t)).collect::<Vec<_>>()})
}

fn registry(tenants: Vec<Value>) -> Value {
    json!({"version": 1, "tenants": tenants})
}

fn ev(n: u128, data: Value) -> Value {
    json!({"eventId": uuid::Uuid::from_u128(n), "eventType": "test", "data": data})
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "body: {body}");
    assert_eq!(body["code"], code, "body: {body}");
    assert!(body["message"].is_string(), "body: {body}");
}

const A: &str = "token-of-a";
const B: &str = "token-of-b";

fn two_tenants() -> Value {
    registry(vec![tenant("a", &[A]), tenant("b", &[B])])
}

// ---------------------------------------------------------------------------------------------
// Endpoints

#[tokio::test]
async fn every_endpoint_round_trips() {
    let n = Node::start(&two_tenants(), &[]).await;

    // append: created, then an idempotent retry, then a conflict with the current version
    let batch = json!({"expectedVersion": "noStream", "events": [ev(1, json!({"n": 1})), ev(2, json!([1, 2.50, "x"]))]});
    let (s, r) = n.append("order-1", A, batch.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(
        r,
        json!({"firstVersion":0,"lastVersion":1,"firstPosition":0,"lastPosition":1,"deduplicated":false})
    );
    let (s, r) = n.append("order-1", A, batch).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["deduplicated"], true);
    let (s, r) = n
        .append(
            "order-1",
            A,
            json!({"expectedVersion": 0, "events": [ev(3, json!(3))]}),
        )
        .await;
    assert_error(s, &r, StatusCode::CONFLICT, "wrong_expected_version");
    assert_eq!(r["currentVersion"], 1);

    // expected version as a header; binary payload as base64
    let resp = n
        .req(Method::POST, "/v1/streams/order-1/events", Some(A))
        .header("Expected-Version", "1")
        .json(&json!({"events": [{"eventId": uuid::Uuid::from_u128(3), "eventType": "bin", "dataBase64": "AAH/", "metadata": {"k": "v"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = n
        .req(Method::POST, "/v1/streams/order-1/events", Some(A))
        .header("Expected-Version", "1")
        .json(&json!({"events": [ev(4, json!(4))]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);

    // read forwards, backwards, paged; payloads come back byte-exact
    let (s, r) = n.get("/v1/streams/order-1/events", A).await;
    assert_eq!(s, StatusCode::OK);
    let evs = r["events"].as_array().unwrap();
    assert_eq!(evs.len(), 3);
    assert_eq!(evs[0]["data"], json!({"n": 1}));
    assert_eq!(evs[1]["data"], json!([1, 2.50, "x"]));
    assert_eq!(evs[2]["dataBase64"], "AAH/");
    assert_eq!(evs[2]["metadata"]["k"], "v");
    assert_eq!(evs[2]["eventType"], "bin");
    assert_eq!(r["next"], 3);
    let (_, r) = n
        .get("/v1/streams/order-1/events?direction=backwards&limit=2", A)
        .await;
    let versions: Vec<u64> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1]);
    assert_eq!(r["next"], 0);
    let (_, r) = n
        .get(
            "/v1/streams/order-1/events?from=1&limit=1&encoding=base64",
            A,
        )
        .await;
    assert_eq!(r["events"][0]["version"], 1);
    // base64 of the exact bytes reqwest sent: [1,2.5,"x"]
    assert_eq!(r["events"][0]["dataBase64"], "WzEsMi41LCJ4Il0=");
    assert!(r["events"][0].get("data").is_none());

    // second stream, read all, list, count
    let (s, _) = n
        .append("order-2", A, json!({"events": [ev(10, json!(null))]}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, r) = n.get("/v1/events?from=1&limit=10", A).await;
    let positions: Vec<u64> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [1, 2, 3]);
    assert_eq!(r["next"], 4);
    let (_, r) = n.get("/v1/streams?limit=1", A).await;
    assert_eq!(
        r["streams"],
        json!([{"stream": "order-1", "lastVersion": 2, "deleted": false}])
    );
    assert_eq!(r["next"], "order-1");
    let (_, r) = n.get("/v1/streams?after=order-1", A).await;
    assert_eq!(r["streams"][0]["stream"], "order-2");
    let (_, r) = n.get("/v1/streams/count", A).await;
    assert_eq!(r, json!({"count": 2}));

    // snapshots
    let (s, r) = n.get("/v1/streams/order-1/snapshot", A).await;
    assert_error(s, &r, StatusCode::NOT_FOUND, "not_found");
    let (s, _) = n
        .call(
            Method::PUT,
            "/v1/streams/order-1/snapshot",
            A,
            Some(json!({"version": 2, "data": {"total": 7}})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, r) = n.get("/v1/streams/order-1/snapshot", A).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (r["version"].clone(), r["data"].clone()),
        (json!(2), json!({"total": 7}))
    );

    // truncate, delete, stats, info, trim
    let (s, r) = n
        .call(
            Method::POST,
            "/v1/streams/order-1/truncate",
            A,
            Some(json!({"before": 1})),
        )
        .await;
    assert_eq!((s, r), (StatusCode::OK, json!({"dropped": 1})));
    let (_, r) = n.get("/v1/streams/order-1/events", A).await;
    assert_eq!(r["events"][0]["version"], 1);
    let (s, _) = n.call(Method::DELETE, "/v1/streams/order-2", A, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, r) = n.get("/v1/streams/order-2/events", A).await;
    assert_error(s, &r, StatusCode::GONE, "stream_deleted");
    let (_, r) = n.get("/v1/streams/count", A).await;
    assert_eq!(r["count"], 1);
    let (s, r) = n.get("/v1/stats", A).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            r["tenant"].clone(),
            r["streams"].clone(),
            r["nextPosition"].clone()
        ),
        (json!("a"), json!(1), json!(4))
    );
    let (_, r) = n.get("/v1/info", A).await;
    assert_eq!(r["tenant"], "a");
    assert!(r["limits"]["maxReadLimit"].as_u64().unwrap() > 0);
    let (s, r) = n
        .call(Method::POST, "/v1/trim", A, Some(json!({"before": 2})))
        .await;
    if s == StatusCode::OK {
        assert!(r["dropped"].as_u64().is_some());
    } else {
        assert_error(s, &r, StatusCode::NOT_IMPLEMENTED, "unsupported");
    }

    // operational endpoints
    assert_eq!(
        n.req(Method::GET, "/healthz", None)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let spec = n
        .req(Method::GET, "/openapi.yaml", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(spec.starts_with("openapi: 3"), "{spec}");
    for path in [
        "/v1/streams/{stream}/events",
        "/v1/subscribe",
        "/v1/stats",
        "/v1/trim",
    ] {
        assert!(
            spec.contains(&format!("  {path}:")),
            "openapi.yaml lacks {path}"
        );
    }
    let m = n.metrics().await;
    assert!(m.contains("allsource_appends_total{tenant=\"a\"} 3"), "{m}");
    assert!(
        m.contains("allsource_events_appended_total{tenant=\"a\"} 4"),
        "{m}"
    );
    assert!(m.contains("allsource_http_requests_total{method=\"POST\",route=\"/v1/streams/{stream}/events\",status=\"409\"} 2"), "{m}");
}

/// The project's typed client (`allsource-client`, what the operator and the archiver use)
/// against the real server: an append with an expected version, a conflict as 409
/// `wrong_expected_version`, the bytes back exactly from a stream and from the tenant's log,
/// stats, a trim; a stream id with punctuation (`: @ = +`) arrives as that one stream; another
/// tenant's token sees nothing of it.
#[tokio::test]
async fn the_typed_client_speaks_the_servers_wire_types() {
    use allsource_client::{ClientError, NodeClient};
    use allsource_core::wire::{AppendRequest, EventIn, ExpectedWire, TrimIn};
    let n = Node::start(&two_tenants(), &[]).await;
    let c = NodeClient::new(reqwest::Client::new(), &n.base).unwrap();
    let stream = "orders:1@x=y+z";
    let payloads: [&[u8]; 3] = [b"{\"n\":1}", b"\x00\xffnot json", b""];
    let batch = |ids: std::ops::Range<u128>, expected| AppendRequest {
        expected_version: expected,
        events: ids
            .map(|i| EventIn::from_bytes(uuid::Uuid::from_u128(i), "t", payloads[i as usize % 3]))
            .collect(),
    };
    let first = c
        .append(
            A,
            stream,
            &batch(0..2, Some(ExpectedWire::Keyword("noStream".into()))),
        )
        .await
        .unwrap();
    assert_eq!((first.first_version, first.last_version), (0, 1));
    let conflict = c
        .append(A, stream, &batch(2..3, Some(ExpectedWire::Version(0))))
        .await
        .unwrap_err();
    match &conflict {
        ClientError::Status { status: 409, body } => {
            assert_eq!(body.code, "wrong_expected_version", "{conflict}")
        }
        other => panic!("expected a 409, got {other}"),
    }
    let second = c
        .append(A, stream, &batch(2..3, Some(ExpectedWire::Version(1))))
        .await
        .unwrap();
    assert_eq!(second.last_version, 2);

    let page = c.read_stream(A, stream, 0, 10).await.unwrap();
    assert_eq!(page.events.len(), 3);
    for (i, e) in page.events.into_iter().enumerate() {
        assert_eq!(
            e.payload.into_bytes().unwrap(),
            payloads[i % 3],
            "event {i}"
        );
    }
    let all = c.read_all(A, 0, 10).await.unwrap();
    assert_eq!(all.events.len(), 3);
    assert!(c.read_all(B, 0, 10).await.unwrap().events.is_empty());
    let other = c.read_stream(B, stream, 0, 10).await.unwrap_err();
    assert_eq!(other.status(), Some(404), "another tenant: {other}");
    // Only the whole id is the stream: its prefix is another (absent) stream.
    let prefix = c.read_stream(A, "orders:1", 0, 10).await.unwrap_err();
    assert_eq!(prefix.status(), Some(404), "{prefix}");
    // An id the server refuses is its 400, not a request to some other path.
    let bad = c
        .read_stream(A, "a/../../v1/stats", 0, 10)
        .await
        .unwrap_err();
    assert_eq!(bad.status(), Some(400), "{bad}");

    assert_eq!(c.stats(A).await.unwrap().events, 3);
    let dropped = c
        .trim(
            A,
            &TrimIn {
                before: second.last_position,
                incarnation: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(dropped.dropped, 2);
    // Reads of the trimmed range answer 410 `archived`, never a page that looks empty.
    let gone = c.read_all(A, 0, 10).await.unwrap_err();
    match &gone {
        ClientError::Status { status: 410, body } => assert_eq!(body.code, "archived"),
        other => panic!("expected 410 archived, got {other}"),
    }
    let rest = c.read_all(A, second.last_position, 10).await.unwrap();
    assert_eq!(rest.events.len(), 1);
    let refused = c.stats("not-a-token").await.unwrap_err();
    assert_eq!(refused.status(), Some(401), "{refused}");
}

#[tokio::test]
async fn bad_input_gets_json_errors_and_harms_nothing() {
    let n = Node::start(&two_tenants(), &["--max-body-bytes", "4096"]).await;
    let (s, _) = n.append("s", A, json!({"events": [ev(1, json!(1))]})).await;
    assert_eq!(s, StatusCode::CREATED);

    let raw = |body: &'static str, ctype: Option<&'static str>| {
        let mut r = n
            .req(Method::POST, "/v1/streams/s/events", Some(A))
            .body(body);
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        r
    };
    let check = |resp: reqwest::Response, want: StatusCode, code: &'static str| async move {
        let status = resp.status();
        let body: Value = resp.json().await.expect("error bodies are JSON");
        assert_error(status, &body, want, code);
    };
    check(
        raw("{not json", Some("application/json"))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_input",
    )
    .await;
    check(
        raw(r#"{"events":[]}"#, Some("text/plain"))
            .send()
            .await
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    check(
        raw(r#"{"events":[]}"#, None).send().await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let big = format!(
        r#"{{"events":[{{"eventId":"{}","eventType":"t","data":"{}"}}]}}"#,
        uuid::Uuid::from_u128(9),
        "x".repeat(10_000)
    );
    let resp = n
        .req(Method::POST, "/v1/streams/s/events", Some(A))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    check(resp, StatusCode::PAYLOAD_TOO_LARGE, "too_large").await;

    let bad_bodies = [
        json!({"events": []}),
        json!({"tenant": "b", "events": [ev(2, json!(1))]}),
        json!({"events": [{"eventType": "t"}]}),
        json!({"events": [{"eventId": "not-a-uuid", "eventType": "t"}]}),
        json!({"events": [{"eventId": uuid::Uuid::from_u128(2), "eventType": ""}]}),
        json!({"events": [{"eventId": uuid::Uuid::from_u128(2), "eventType": "t", "data": 1, "dataBase64": "AA=="}]}),
        json!({"events": [{"eventId": uuid::Uuid::from_u128(2), "eventType": "t", "dataBase64": "***"}]}),
        json!({"events": [ev(2, json!(1)), ev(2, json!(1))]}),
        json!({"expectedVersion": -1, "events": [ev(2, json!(1))]}),
        json!({"expectedVersion": "sometimes", "events": [ev(2, json!(1))]}),
        json!({"events": [{"eventId": uuid::Uuid::from_u128(2), "eventType": "t", "tenant": "b"}]}),
    ];
    for b in bad_bodies {
        let (s, r) = n.append("s", A, b.clone()).await;
        assert_error(s, &r, StatusCode::BAD_REQUEST, "invalid_input");
    }
    let resp = n
        .req(Method::POST, "/v1/streams/s/events", Some(A))
        .header("Expected-Version", "soon")
        .json(&json!({"events": [ev(2, json!(1))]}))
        .send()
        .await
        .unwrap();
    check(resp, StatusCode::BAD_REQUEST, "invalid_input").await;

    // hostile stream ids and query strings
    let long = "x".repeat(300);
    for path in [
        "/v1/streams/..%2F..%2Fetc%2Fpasswd/events".to_string(),
        "/v1/streams/..%2Fb/events".to_string(),
        "/v1/streams/__reserved/events".to_string(),
        "/v1/streams/a%23b/events".to_string(),
        "/v1/streams/a%00b/events".to_string(),
        format!("/v1/streams/{long}/events"),
        "/v1/streams/s/events?limit=0".to_string(),
        "/v1/streams/s/events?limit=1000000000".to_string(),
        "/v1/streams/s/events?limit=99999999999999999999999999".to_string(),
        "/v1/streams/s/events?from=-1".to_string(),
        "/v1/streams/s/events?direction=sideways".to_string(),
        "/v1/streams/s/events?tenant=b".to_string(),
        "/v1/events?limit=18446744073709551616".to_string(),
        "/v1/streams?after=..%2F".to_string(),
        "/v1/subscribe?stream=a%2Fb".to_string(),
    ] {
        let (s, r) = n.get(&path, A).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {r}");
        assert_error(s, &r, StatusCode::BAD_REQUEST, "invalid_input");
    }
    let (s, r) = n.get("/v1/nope", A).await;
    assert_error(s, &r, StatusCode::NOT_FOUND, "not_found");
    let (s, r) = n.call(Method::PATCH, "/v1/streams/s/events", A, None).await;
    assert_error(s, &r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let (s, r) = n
        .call(
            Method::POST,
            "/v1/streams/s/truncate",
            A,
            Some(json!({"before": "x"})),
        )
        .await;
    assert_error(s, &r, StatusCode::BAD_REQUEST, "invalid_input");

    // the node is still healthy and the data untouched
    let (s, r) = n.get("/v1/streams/s/events", A).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["events"].as_array().unwrap().len(), 1);
    let (_, r) = n.get("/v1/stats", A).await;
    assert_eq!(r["nextPosition"], 1);
}

#[tokio::test]
async fn tenants_cannot_reach_each_other() {
    let n = Node::start(&two_tenants(), &[]).await;
    let (s, _) = n
        .append(
            "orders-1",
            A,
            json!({"events": [ev(1, json!({"secret": "a"}))]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    n.call(
        Method::PUT,
        "/v1/streams/orders-1/snapshot",
        A,
        Some(json!({"version": 0, "data": 1})),
    )
    .await;

    // B uses A's stream names: sees nothing, changes nothing
    let (s, r) = n.get("/v1/streams/orders-1/events", B).await;
    assert_error(s, &r, StatusCode::NOT_FOUND, "not_found");
    let (_, r) = n.get("/v1/events", B).await;
    assert_eq!(r["events"], json!([]));
    let (_, r) = n.get("/v1/streams", B).await;
    assert_eq!(r["streams"], json!([]));
    let (_, r) = n.get("/v1/streams/count", B).await;
    assert_eq!(r["count"], 0);
    let (s, _) = n.get("/v1/streams/orders-1/snapshot", B).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = n
        .call(Method::DELETE, "/v1/streams/orders-1", B, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = n
        .call(
            Method::POST,
            "/v1/streams/orders-1/truncate",
            B,
            Some(json!({"before": 10})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, r) = n
        .append(
            "orders-1",
            B,
            json!({"expectedVersion": "noStream", "events": [ev(1, json!("b"))]}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "B's stream of the same name is its own: {r}"
    );
    assert_eq!(
        (
            r["firstVersion"].clone(),
            r["firstPosition"].clone(),
            r["deduplicated"].clone()
        ),
        (json!(0), json!(0), json!(false))
    );

    // forged tenant claims
    let resp = n
        .req(Method::GET, "/v1/streams/orders-1/events", Some(B))
        .header("X-AllSource-Tenant", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let (s, _) = n.get("/v1/streams/orders-1/events?tenant=a", B).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // credentials
    let resp = n.req(Method::GET, "/v1/stats", None).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let (s, r) = n.get("/v1/stats", "token-of-c").await;
    assert_error(s, &r, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, _) = n.get("/v1/stats", &sha256_hex(A)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the digest is not a token");
    let resp = n
        .req(Method::GET, "/v1/stats", None)
        .header("authorization", format!("Basic {A}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // A's data is exactly what A wrote
    let (_, r) = n.get("/v1/streams/orders-1/events", A).await;
    assert_eq!(r["events"].as_array().unwrap().len(), 1);
    assert_eq!(r["events"][0]["data"], json!({"secret": "a"}));
    let (_, r) = n.get("/v1/streams/orders-1/snapshot", A).await;
    assert_eq!(r["data"], 1);
}

// ---------------------------------------------------------------------------------------------
// Quotas, suspension, placement, hot reload

#[tokio::test]
async fn quotas_answer_429_and_suspension_403() {
    let mut rate = tenant("rate", &["t-rate"]);
    rate["quotas"] = json!({"eventsPerSecond": 5});
    let mut streams = tenant("streams", &["t-streams"]);
    streams["quotas"] = json!({"maxStreams": 2});
    let mut bytes = tenant("bytes", &["t-bytes"]);
    bytes["quotas"] = json!({"storageBytes": 600});
    let mut susp = tenant("susp", &["t-susp"]);
    susp["state"] = json!("suspended");
    let n = Node::start(&registry(vec![rate, streams, bytes, susp]), &[]).await;

    // rate: a full second's worth passes, then the bucket is empty
    let five: Vec<Value> = (0..5).map(|i| ev(100 + i, json!(i))).collect();
    let (s, _) = n.append("r", "t-rate", json!({"events": five})).await;
    assert_eq!(s, StatusCode::CREATED);
    let mut refused = None;
    for i in 0..50 {
        let resp = n
            .req(Method::POST, "/v1/streams/r/events", Some("t-rate"))
            .json(&json!({"events": [ev(200 + i, json!(1))]}))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(resp);
            break;
        }
    }
    let resp = refused.expect("the append rate quota never answered 429");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "quota_exceeded");

    // streams: two exist, a third is refused, the existing ones still take events
    for s in ["s1", "s2"] {
        let (st, _) = n
            .append(s, "t-streams", json!({"events": [ev(1, json!(1))]}))
            .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    let resp = n
        .req(Method::POST, "/v1/streams/s3/events", Some("t-streams"))
        .json(&json!({"events": [ev(2, json!(1))]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let (st, _) = n
        .append("s1", "t-streams", json!({"events": [ev(3, json!(1))]}))
        .await;
    assert_eq!(st, StatusCode::CREATED);

    // storage: fill past the quota, then refused
    let big = "x".repeat(400);
    let (st, _) = n
        .append("b", "t-bytes", json!({"events": [ev(1, json!(big))]}))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, r) = n
        .append("b", "t-bytes", json!({"events": [ev(2, json!(big))]}))
        .await;
    assert_error(st, &r, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded");
    let (_, r) = n.get("/v1/stats", "t-bytes").await;
    assert_eq!(r["events"], 1);
    assert_eq!(r["quotas"]["storageBytes"], 600);

    // suspended
    let (st, r) = n.get("/v1/stats", "t-susp").await;
    assert_error(st, &r, StatusCode::FORBIDDEN, "tenant_suspended");
    let (st, _) = n
        .append("x", "t-susp", json!({"events": [ev(1, json!(1))]}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    let m = n.metrics().await;
    assert!(
        m.contains("allsource_quota_rejections_total{quota=\"max_streams\",tenant=\"streams\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn tenants_of_other_nodes_answer_421_with_the_owner() {
    let mut here = tenant("here", &["t-here"]);
    here["node"] = json!("es-1");
    let mut there = tenant("there", &["t-there"]);
    there["node"] = json!("es-0");
    let reg = json!({"version": 1, "tenants": [here, there, tenant("anywhere", &["t-any"])],
                     "nodes": {"es-0": "http://es-0.es-nodes.ns.svc:8080", "es-1": "http://es-1.es-nodes.ns.svc:8080"}});
    let n = Node::start(&reg, &["--node-name", "es-1"]).await;
    let (s, r) = n.get("/v1/streams/x/events?limit=5", "t-there").await;
    assert_error(s, &r, StatusCode::MISDIRECTED_REQUEST, "wrong_node");
    assert_eq!(r["owner"], "es-0");
    assert_eq!(
        r["location"],
        "http://es-0.es-nodes.ns.svc:8080/v1/streams/x/events?limit=5"
    );
    let (s, _) = n.get("/v1/stats", "t-here").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = n.get("/v1/stats", "t-any").await;
    assert_eq!(s, StatusCode::OK);
}

/// The typed client (operator, archiver) reached through any node of a 3-node store, as through
/// its Service: a node that does not own the tenant answers 421 and the client follows it to the
/// owner, whose data it is; two nodes that each name the other as owner (a placement changing
/// under the client) end in a 421 after [`allsource_client::MAX_HOPS`] hops, not a loop.
#[tokio::test]
async fn the_typed_client_follows_a_421_to_the_owning_node() {
    use allsource_client::NodeClient;
    use allsource_core::wire::{AppendRequest, EventIn};
    let placed = |owner: &str, nodes: &[(&str, &str)]| {
        let mut t = tenant("t", &["token-t"]);
        t["node"] = json!(owner);
        let nodes: serde_json::Map<String, Value> = nodes
            .iter()
            .map(|(n, u)| (n.to_string(), json!(u)))
            .collect();
        json!({"version": 1, "tenants": [t], "nodes": nodes})
    };
    let empty = registry(vec![]);
    let mut nodes = Vec::new();
    for name in ["es-0", "es-1", "es-2"] {
        nodes.push(Node::start(&empty, &["--node-name", name]).await);
    }
    let urls: Vec<(&str, &str)> = ["es-0", "es-1", "es-2"]
        .into_iter()
        .zip(nodes.iter().map(|n| n.base.as_str()))
        .collect();
    for n in &nodes {
        n.write_registry(&placed("es-2", &urls));
    }
    let http = reqwest::Client::new();
    for n in &nodes {
        let (http, base) = (http.clone(), n.base.clone());
        wait_for("every node knows the tenant", async move || {
            let r = http
                .get(format!("{base}/v1/stats"))
                .bearer_auth("token-t")
                .send()
                .await;
            r.is_ok_and(|r| r.status() != StatusCode::UNAUTHORIZED)
        })
        .await;
    }
    let via_first = NodeClient::new(http.clone(), &nodes[0].base).unwrap();
    let body = AppendRequest {
        expected_version: None,
        events: vec![EventIn::from_bytes(uuid::Uuid::from_u128(7), "t", b"{}")],
    };
    via_first.append("token-t", "s", &body).await.unwrap();
    let page = via_first.read_all("token-t", 0, 10).await.unwrap();
    assert_eq!(page.events.len(), 1);
    // The event is on the owner: its own stats say so, the first node holds nothing.
    let owner = NodeClient::new(http.clone(), &nodes[2].base).unwrap();
    assert_eq!(owner.stats("token-t").await.unwrap().events, 1);
    let (st, r) = nodes[0].get("/v1/stats", "token-t").await;
    assert_error(st, &r, StatusCode::MISDIRECTED_REQUEST, "wrong_node");

    // es-0 says es-1 owns the tenant, es-1 says es-0: the client gives up with the 421.
    nodes[0].write_registry(&placed("es-1", &urls));
    nodes[1].write_registry(&placed("es-0", &urls));
    let (n0, n1) = (nodes[0].base.clone(), nodes[1].base.clone());
    let http2 = http.clone();
    wait_for("the two nodes disagree", async move || {
        let owner_of = async |base: &str| {
            let r = http2
                .get(format!("{base}/v1/stats"))
                .bearer_auth("token-t")
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            v["owner"].as_str().map(str::to_string)
        };
        owner_of(&n0).await.as_deref() == Some("es-1")
            && owner_of(&n1).await.as_deref() == Some("es-0")
    })
    .await;
    let err = via_first.stats("token-t").await.unwrap_err();
    assert_eq!(err.status(), Some(421), "{err}");
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn registry_reloads_add_tenants_and_rotate_tokens() {
    let n = Node::start(&registry(vec![tenant("a", &["a-old"])]), &[]).await;
    let (s, _) = n
        .append("s", "a-old", json!({"events": [ev(1, json!(1))]}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(n.get("/v1/stats", "b-1").await.0, StatusCode::UNAUTHORIZED);

    // add tenant b and a second token for a: both of a's tokens work during the rotation
    n.write_registry(&registry(vec![
        tenant("a", &["a-old", "a-new"]),
        tenant("b", &["b-1"]),
    ]));
    wait_for("tenant b to appear", async || {
        n.get("/v1/stats", "b-1").await.0 == StatusCode::OK
    })
    .await;
    let (_, r) = n.get("/v1/streams/s/events", "a-new").await;
    assert_eq!(
        r["events"].as_array().unwrap().len(),
        1,
        "the new token reaches the same tenant"
    );
    assert_eq!(n.get("/v1/stats", "a-old").await.0, StatusCode::OK);

    // a broken file is refused; the registry in force stays
    n.write_registry_bytes(b"{\"version\": 1, \"tenants\": [");
    wait_for("the reload error to be counted", async || {
        n.metrics()
            .await
            .contains("allsource_registry_reloads_total{result=\"error\"} 1")
    })
    .await;
    assert_eq!(n.get("/v1/stats", "a-new").await.0, StatusCode::OK);
    assert_eq!(n.get("/v1/stats", "b-1").await.0, StatusCode::OK);

    // the old token is removed; b is suspended
    let mut b = tenant("b", &["b-1"]);
    b["state"] = json!("suspended");
    n.write_registry(&registry(vec![tenant("a", &["a-new"]), b]));
    wait_for("the old token to be revoked", async || {
        n.get("/v1/stats", "a-old").await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    assert_eq!(n.get("/v1/stats", "a-new").await.0, StatusCode::OK);
    assert_eq!(n.get("/v1/stats", "b-1").await.0, StatusCode::FORBIDDEN);
    assert!(n.metrics().await.contains("allsource_registry_tenants 2"));
}

// ---------------------------------------------------------------------------------------------
// Subscriptions and shutdown

/// A minimal SSE reader: yields (event, id, data) triples.
struct Sse {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl Sse {
    async fn open(n: &Node, query: &str, token: &str, last_event_id: Option<&str>) -> Sse {
        let mut r = n.req(Method::GET, &format!("/v1/subscribe{query}"), Some(token));
        if let Some(id) = last_event_id {
            r = r.header("Last-Event-ID", id);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        Sse {
            body: resp.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next event, or None when the server closed the stream.
    async fn next(&mut self) -> Option<(String, String, Value)> {
        loop {
            while let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !event.is_empty() {
                    return Some((event, id, serde_json::from_str(&data).unwrap()));
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await
                .expect("no SSE data for 30 s")?;
            self.buf
                .push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    }
}

#[tokio::test]
async fn subscriptions_catch_up_then_follow_live() {
    let n = Node::start(&two_tenants(), &[]).await;
    let batch: Vec<Value> = (0..3).map(|i| ev(i, json!(i))).collect();
    n.append("s", A, json!({"events": batch})).await;
    n.append("other", B, json!({"events": [ev(1, json!("b"))]}))
        .await;

    let mut all = Sse::open(&n, "", A, None).await;
    let mut one = Sse::open(&n, "?stream=s&after=0", A, None).await;
    let mut resumed = Sse::open(&n, "", A, Some("1")).await;
    for pos in 0..3 {
        let (e, id, d) = all.next().await.unwrap();
        assert_eq!(
            (e.as_str(), id, d["position"].as_u64()),
            ("event", pos.to_string(), Some(pos))
        );
    }
    for v in 1..3 {
        let (_, id, d) = one.next().await.unwrap();
        assert_eq!((id, d["version"].as_u64()), (v.to_string(), Some(v)));
    }
    let (_, id, _) = resumed.next().await.unwrap();
    assert_eq!(id, "2", "Last-Event-ID resumes after the given position");

    // live
    n.append("s", A, json!({"events": [ev(10, json!("live"))]}))
        .await;
    n.append("t", A, json!({"events": [ev(11, json!("other stream"))]}))
        .await;
    let (_, _, d) = all.next().await.unwrap();
    assert_eq!(
        (d["position"].as_u64(), d["data"].clone()),
        (Some(3), json!("live"))
    );
    let (_, _, d) = all.next().await.unwrap();
    assert_eq!(
        (d["position"].as_u64(), d["stream"].clone()),
        (Some(4), json!("t"))
    );
    let (_, _, d) = one.next().await.unwrap();
    assert_eq!(
        (d["version"].as_u64(), d["data"].clone()),
        (Some(3), json!("live"))
    );
    assert!(n.metrics().await.contains("allsource_subscriptions 3"));

    // B's subscription never sees A's events
    let mut b = Sse::open(&n, "", B, None).await;
    let (_, _, d) = b.next().await.unwrap();
    assert_eq!(d["stream"], "other");
    n.append("other", B, json!({"events": [ev(2, json!("b2"))]}))
        .await;
    let (_, _, d) = b.next().await.unwrap();
    assert_eq!(
        (d["position"].as_u64(), d["data"].clone()),
        (Some(1), json!("b2"))
    );
}

/// Opens a subscription that must be refused: its status and JSON body (an accepted one fails
/// at once instead of streaming forever).
async fn refused_subscription(n: &Node, token: &str) -> (StatusCode, Value) {
    let resp = n
        .req(Method::GET, "/v1/subscribe", Some(token))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_ne!(status, StatusCode::OK, "the subscription was accepted");
    (status, resp.json().await.unwrap())
}

/// One tenant cannot take every subscription slot of a node: its 33rd concurrent subscription
/// (default `maxSubscriptionsPerTenant` 32) answers 429 `too_many_subscriptions`, while another
/// tenant still subscribes and receives events; the node-wide cap (`--max-subscriptions`) still
/// answers 503 once all of its slots are taken.
#[tokio::test]
async fn one_tenant_cannot_take_every_subscription() {
    let n = Node::start(&two_tenants(), &["--max-subscriptions", "40"]).await;
    let mut held = Vec::new();
    for _ in 0..32 {
        held.push(Sse::open(&n, "", A, None).await);
    }
    let (s, body) = refused_subscription(&n, A).await;
    assert_error(
        s,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_subscriptions",
    );

    // Another tenant is still served, live.
    let mut b = Sse::open(&n, "", B, None).await;
    n.append("s", B, json!({"events": [ev(1, json!("b"))]}))
        .await;
    let (e, id, d) = b.next().await.unwrap();
    assert_eq!(
        (e.as_str(), id.as_str(), d["data"].clone()),
        ("event", "0", json!("b"))
    );
    // A's subscriptions that were accepted still work.
    n.append("s", A, json!({"events": [ev(2, json!("a"))]}))
        .await;
    let (_, _, d) = held[31].next().await.unwrap();
    assert_eq!(d["data"], "a");

    // A closed subscription gives its slot back.
    held.pop();
    wait_for("a freed slot", async || {
        n.metrics().await.contains("allsource_subscriptions 32")
    })
    .await;
    held.push(Sse::open(&n, "", A, None).await);

    // The node-wide cap: 32 of A + 8 of B = 40.
    let mut bs = Vec::new();
    for _ in 0..7 {
        bs.push(Sse::open(&n, "", B, None).await);
    }
    let (s, body) = refused_subscription(&n, B).await;
    assert_error(
        s,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_subscriptions",
    );
}

#[tokio::test]
async fn sigterm_closes_subscriptions_and_exits_cleanly() {
    let mut n = Node::start(&two_tenants(), &[]).await;
    let batch: Vec<Value> = (0..20).map(|i| ev(i, json!({"i": i}))).collect();
    let (s, _) = n.append("keep", A, json!({"events": batch})).await;
    assert_eq!(s, StatusCode::CREATED);
    let mut sub = Sse::open(&n, "?stream=keep", A, None).await;
    for _ in 0..20 {
        sub.next().await.unwrap();
    }
    let status = n.terminate().await;
    assert!(status.success(), "exit status {status}; log:\n{}", n.log());
    assert!(
        sub.next().await.is_none(),
        "the subscription ends at shutdown"
    );
    let log = n.log();
    assert!(log.contains("store closed"), "{log}");
    assert!(!log.contains(A), "a token leaked into the log");

    let n = n.restart().await;
    assert!(
        !n.log().contains("in-memory store"),
        "serve must default to the engine"
    );
    let (s, r) = n.get("/v1/streams/keep/events", A).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let evs = r["events"].as_array().unwrap();
    assert_eq!(
        evs.len(),
        20,
        "every acknowledged event survives the restart"
    );
    assert_eq!(evs[19]["data"], json!({"i": 19}));
    let (_, r) = n.get("/v1/stats", A).await;
    assert_eq!(r["nextPosition"], 20);
}

/// Issue 15, defect 1, over HTTP with a real SIGKILL: a tenant's 70,000-byte metadata key (an
/// event's or a snapshot's) used to be acknowledged with a length that wrapped around 16 bits;
/// the restart then cut the WAL at it and every later acknowledged event of every tenant was
/// gone. Now both are refused with 400 and the other tenant finds all its events.
#[tokio::test]
async fn a_hostile_metadata_key_cannot_cost_another_tenant_its_events() {
    let mut n = Node::start(&two_tenants(), &[]).await;
    let (s, r) = n
        .append(
            "s",
            B,
            json!({"events": [ev(1, json!(1)), ev(2, json!(2))]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let huge_key = "k".repeat(70_000);
    let mut bad = ev(10, json!({}));
    bad["metadata"] = json!({ huge_key.clone(): "v" });
    let (s, r) = n.append("evil", A, json!({"events": [bad]})).await;
    let refused_event = (s, r);
    let (s, r) = n
        .append("evil", A, json!({"events": [ev(11, json!({}))]}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let refused_snapshot = n
        .call(
            Method::PUT,
            "/v1/streams/evil/snapshot",
            A,
            Some(json!({"version": 0, "data": {}, "metadata": { huge_key: "" }})),
        )
        .await;
    let (s, r) = n
        .append(
            "s",
            B,
            json!({"events": [ev(3, json!(3)), ev(4, json!(4))]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    // SIGKILL: no clean shutdown, no checkpoint; the restart replays the WAL.
    let mut child = n.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let n = n.restart().await;
    let (s, r) = n.get("/v1/streams/s/events", B).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        r["events"].as_array().map(Vec::len),
        Some(4),
        "tenant b lost acknowledged events: {r}; log:\n{}",
        n.log()
    );
    assert_error(
        refused_event.0,
        &refused_event.1,
        StatusCode::BAD_REQUEST,
        "invalid_input",
    );
    assert_error(
        refused_snapshot.0,
        &refused_snapshot.1,
        StatusCode::BAD_REQUEST,
        "invalid_input",
    );
    assert!(!n.log().contains("never acknowledged"), "{}", n.log());
}

/// The limits of an EventStore reach a real node: the operator's own builders make the
/// ConfigMap's `node.json` from the spec, the real binary reads it (`--node-config`, as the
/// StatefulSet's `STORE_NODE_CONFIG` does) and enforces it. Before, the node read only its
/// `STORE_NODE_MAX_*` flags, so a limit set in the spec was silently ignored.
#[tokio::test]
async fn limits_set_in_an_eventstore_are_enforced_by_a_real_node() {
    use allsource_operator::api::EventStore;
    use allsource_operator::resources::configmap;
    use store_node::nodeconfig::NODE_CONFIG_FILE;
    let es: EventStore = serde_yaml::from_str(
        r#"
apiVersion: allsource.io/v1alpha1
kind: EventStore
metadata: {name: orders, namespace: shop, uid: 6b1e0c1e-0000-4000-8000-000000000001}
spec:
  backend: selfHosted
  selfHosted:
    replicas: 1
    limits: {maxBatchEvents: 2, maxEventBytes: 1000}
"#,
    )
    .unwrap();
    let sh = es.spec.self_hosted.clone().unwrap();
    let cm = configmap::build(&es, &configmap::node_config(&sh));
    let node_json = cm.data.unwrap()[NODE_CONFIG_FILE].clone();
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg_path = cfg_dir.path().join(NODE_CONFIG_FILE);
    std::fs::write(&cfg_path, &node_json).unwrap();
    let n = Node::start(
        &two_tenants(),
        &["--node-config", cfg_path.to_str().unwrap()],
    )
    .await;
    let three: Vec<Value> = (0..3).map(|i| ev(i, json!(i))).collect();
    let (s, r) = n.append("s", A, json!({"events": three})).await;
    assert_error(s, &r, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let big = ev(9, json!("x".repeat(1200)));
    let (s, r) = n.append("s", A, json!({"events": [big]})).await;
    assert_error(s, &r, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let two: Vec<Value> = (0..2).map(|i| ev(i, json!(i))).collect();
    let (s, r) = n.append("s", A, json!({"events": two})).await;
    assert_eq!(s, StatusCode::CREATED, "{r}; node.json: {node_json}");
}

/// Peak resident memory of a process in bytes (`VmHWM`), and its reset (`clear_refs` 5).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
}

/// A tenant with 100 MB of 1 MB events asking four times at once for the largest page (10,000
/// events) gets pages of at most maxReadBytes (16 MiB by default), the node's peak RSS grows by
/// a bounded amount (documented: about 3 x maxReadBytes per read being answered), and another
/// tenant is served meanwhile. Before the byte budget each read materialized all 100 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_reads_are_bounded_in_bytes_and_in_node_memory() {
    let n = Node::start(&two_tenants(), &[]).await;
    let pid = n.child.as_ref().unwrap().id();
    let blob = "x".repeat(1_000_000);
    for b in 0..10u128 {
        let events: Vec<Value> = (0..10).map(|i| ev(b * 10 + i, json!(blob))).collect();
        let (s, r) = n.append("big", A, json!({"events": events})).await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
    }
    reset_peak_rss(pid);
    let before = peak_rss(pid);
    let reads: Vec<_> = (0..4)
        .map(|_| {
            let req = n.req(Method::GET, "/v1/events?from=0&limit=10000", Some(A));
            tokio::spawn(async move {
                let body = req.send().await.unwrap().bytes().await.unwrap();
                let page: Value = serde_json::from_slice(&body).unwrap();
                (body.len(), page["events"].as_array().unwrap().len())
            })
        })
        .collect();
    let (s, r) = n
        .append("small", B, json!({"events": [ev(1, json!(1))]}))
        .await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "the other tenant is served meanwhile: {r}"
    );
    let mut pages = Vec::new();
    for r in reads {
        pages.push(r.await.unwrap());
    }
    let grew = peak_rss(pid).saturating_sub(before);
    println!(
        "4 concurrent largest-page reads over 100 MB: pages (bytes, events) {pages:?}, peak RSS \
         grew {} MiB",
        grew >> 20
    );
    for (bytes, events) in &pages {
        assert!(
            *events <= 17 && *bytes <= 17 * 1_001_000,
            "a page must stop at maxReadBytes (16 MiB): got {events} events, {bytes} bytes"
        );
    }
    assert!(
        grew < 400 << 20,
        "peak RSS grew {} MiB serving 4 pages of at most 16 MiB",
        grew >> 20
    );
    // Paging by `next` still reaches all 100 events.
    let (mut from, mut total) = (0u64, 0usize);
    loop {
        let (s, page) = n
            .get(&format!("/v1/events?from={from}&limit=10000"), A)
            .await;
        assert_eq!(s, StatusCode::OK);
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        total += events.len();
        from = page["next"].as_u64().unwrap();
    }
    assert_eq!(total, 100);
}

/// Events an archiver trimmed are never served as an empty or shortened page: reads and
/// subscriptions starting among them answer 410 `archived` with where the store's data starts,
/// also after a restart (the trim point is in the tenant's manifest).
#[tokio::test]
async fn reads_of_archived_events_answer_410_archived() {
    let n = Node::start(&two_tenants(), &[]).await;
    let (s, _) = n
        .append(
            "a",
            A,
            json!({"events": (0..3).map(|i| ev(i, json!(i))).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = n
        .append(
            "b",
            A,
            json!({"events": (3..6).map(|i| ev(i, json!(i))).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, r) = n
        .call(
            Method::POST,
            "/v1/trim",
            A,
            Some(json!({"before": 4, "incarnation": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["dropped"], 4);

    let mut n = n;
    for round in ["running", "restarted"] {
        let (s, r) = n.get("/v1/stats", A).await;
        assert_eq!(s, StatusCode::OK, "{round}: {r}");
        assert_eq!(r["trimmedBefore"], 4, "{round}: {r}");
        let (s, r) = n.get("/v1/events?from=0", A).await;
        assert_error(s, &r, StatusCode::GONE, "archived");
        assert_eq!(r["firstAvailablePosition"], 4, "{round}: {r}");
        assert_eq!(r["incarnation"], 0, "{round}: {r}");
        let (s, r) = n.get("/v1/events?from=4", A).await;
        assert_eq!(s, StatusCode::OK, "{round}: {r}");
        assert_eq!(r["events"].as_array().unwrap().len(), 2, "{round}: {r}");
        let (s, r) = n.get("/v1/streams/a/events", A).await;
        assert_error(s, &r, StatusCode::GONE, "archived");
        assert_eq!(r["firstAvailableVersion"], 3, "{round}: {r}");
        let (s, r) = n.get("/v1/streams/b/events", A).await;
        assert_error(s, &r, StatusCode::GONE, "archived");
        assert_eq!(r["firstAvailableVersion"], 1, "{round}: {r}");
        let (s, r) = n.get("/v1/streams/b/events?from=1", A).await;
        assert_eq!(s, StatusCode::OK, "{round}: {r}");
        assert_eq!(r["events"].as_array().unwrap().len(), 2, "{round}: {r}");
        let resp = n
            .req(Method::GET, "/v1/subscribe", Some(A))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::GONE, "{round}: subscribe from 0");
        // The other tenant is untouched.
        let (s, r) = n.get("/v1/events?from=0", B).await;
        assert_eq!(s, StatusCode::OK, "{round}: {r}");
        if round == "running" {
            n.terminate().await;
            n = n.restart().await;
        }
    }
}

/// Snapshots count in the storage quota like events: a tenant that fills its quota with
/// snapshots gets 429 `quota_exceeded` for the next snapshot and for appends, `/v1/stats`
/// reports the bytes as `snapshotBytes`, and another tenant is not affected.
#[tokio::test]
async fn snapshots_count_in_the_storage_quota() {
    let mut a = tenant("a", &[A]);
    a["quotas"] = json!({"storageBytes": 3_000_000});
    let n = Node::start(&registry(vec![a, tenant("b", &[B])]), &[]).await;
    let blob = "s".repeat(1_000_000);
    let mut saved = 0;
    let mut refused = None;
    for i in 0..6 {
        let stream = format!("snap-{i}");
        let (s, r) = n
            .append(&stream, A, json!({"events": [ev(i, json!(i))]}))
            .await;
        if s != StatusCode::CREATED {
            refused = Some((s, r));
            break;
        }
        let (s, r) = n
            .call(
                Method::PUT,
                &format!("/v1/streams/{stream}/snapshot"),
                A,
                Some(json!({"version": 0, "data": blob})),
            )
            .await;
        if s != StatusCode::NO_CONTENT {
            refused = Some((s, r));
            break;
        }
        saved += 1;
    }
    let (_, stats) = n.get("/v1/stats", A).await;
    println!("snapshots saved under a 3 MB quota: {saved}; stats {stats}");
    let (s, r) = refused.unwrap_or_else(|| {
        panic!("6 snapshots of 1 MB were stored under a quota of 3 MB; stats {stats}")
    });
    assert_error(s, &r, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded");
    assert_eq!(saved, 2, "two snapshots of 1 MB fit a 3 MB quota");
    assert!(
        stats["snapshotBytes"].as_u64().unwrap() >= 2_000_000,
        "{stats}"
    );
    // An append the snapshots leave no room for is refused as well, and the other tenant
    // still writes.
    let (s, r) = n
        .append(
            "more",
            A,
            json!({"events": [ev(99, json!("x".repeat(1_000_000)))]}),
        )
        .await;
    assert_error(s, &r, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded");
    let (s, _) = n.append("b", B, json!({"events": [ev(1, json!(1))]})).await;
    assert_eq!(s, StatusCode::CREATED);
    // The snapshots read back.
    let (s, snap) = n.get("/v1/streams/snap-1/snapshot", A).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(snap["data"], json!(blob));
}

/// VmRSS of a process in bytes (`/proc/<pid>/status`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Opens `GET /v1/subscribe` on a raw connection that never reads a byte of the answer.
async fn unread_subscription(n: &Node, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = n.base.trim_start_matches("http://").to_string();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!(
            "GET /v1/subscribe HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    c
}

/// One tenant cannot exhaust a node's memory. A node runs with small limits (below) and one
/// tenant does its worst at once: the largest events (payload and 64 metadata entries of the
/// largest keys), the largest snapshots on 40 streams, saved twice, every subscription it may
/// hold open on raw connections that never read a byte, and the largest reads in parallel.
/// The node's RSS (sampled, and its peak `VmHWM` at the end) must stay below the bound the
/// README documents for these limits (section "Memory" of the store node), while another
/// tenant's appends and reads keep succeeding. The new limits are passed in the environment,
/// so that a node that does not know them still starts (and shows what they bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_tenant_cannot_exhaust_node_memory() {
    const MIB: u64 = 1024 * 1024;
    // The limits, and the README's bound for them.
    let checkpoint_wal = 32 * MIB;
    let concurrent = 16u64;
    let body = 4 * MIB;
    let read = 4 * MIB;
    let subscriptions = 40u64;
    let buffer = 256 * 1024;
    let event = MIB;
    let cache = 16 * MIB;
    let row_group = (4 * MIB).min(cache / 4);
    let compact_small = 16 * MIB;
    let bound = 64 * MIB
        + 4 * checkpoint_wal
        + concurrent * 4 * body.max(read)
        + subscriptions * (2 * buffer + 4 * event)
        + cache
        + concurrent * 2 * row_group
        + 2 * 2 * compact_small;
    let (cw, cc, bb, rb, ms, buf, cb) = (
        checkpoint_wal.to_string(),
        concurrent.to_string(),
        body.to_string(),
        read.to_string(),
        subscriptions.to_string(),
        buffer.to_string(),
        cache.to_string(),
    );
    let n = Node::start_with_env(
        &two_tenants(),
        &[
            "--checkpoint-wal-bytes",
            &cw,
            "--max-concurrent-requests",
            &cc,
            "--max-body-bytes",
            &bb,
            "--max-batch-bytes",
            &(2 * MIB).to_string(),
            "--max-read-bytes",
            &rb,
            "--max-subscriptions",
            &ms,
        ],
        &[
            ("STORE_NODE_MAX_SUBSCRIPTION_BUFFER_BYTES", &buf),
            ("STORE_NODE_CACHE_BYTES", &cb),
        ],
    )
    .await;
    let n = std::sync::Arc::new(n);
    let pid = n.child.as_ref().unwrap().id();
    let base_rss = rss(pid);

    // Watch the node's RSS; past the bound, stop it at once (a node without the limits would
    // otherwise take the machine's memory).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let now = rss(pid);
                most = most.max(now);
                if now > bound {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                    return (most, true);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (most, false)
        })
    };

    // Every subscription the tenant may hold, never read.
    let mut unread = Vec::new();
    for _ in 0..32 {
        unread.push(unread_subscription(&n, A).await);
    }

    // The largest events: 64 metadata entries of 256-byte keys, the rest payload.
    let metadata: serde_json::Map<String, Value> = (0..64)
        .map(|i| (format!("{i:0>256}"), json!("m".repeat(1024))))
        .collect();
    let payload = "p".repeat(1024 * 1024 - 64 * (256 + 1024) - 64);
    let big = move |i: u128| {
        let mut e = ev(i, json!(payload));
        e["metadata"] = Value::Object(metadata.clone());
        e
    };
    let mut attack = Vec::new();
    for w in 0..2u128 {
        let (n, big) = (n.clone(), big.clone());
        attack.push(tokio::spawn(async move {
            for b in 0..30u128 {
                let id = (w * 1000 + b) * 2;
                let events = json!({"events": [big(id), big(id + 1)]});
                let (s, r) = n.append(&format!("h{w}-{}", b % 5), A, events).await;
                assert_eq!(s, StatusCode::CREATED, "hostile append: {r}");
            }
        }));
    }
    // The largest snapshots (maxBatchBytes) on 40 streams, twice each.
    let state = "S".repeat(2 * 1024 * 1024 - 64);
    for w in 0..2u128 {
        let (n, state) = (n.clone(), state.clone());
        attack.push(tokio::spawn(async move {
            for i in 0..20u128 {
                let stream = format!("snap-{w}-{i}");
                let (s, r) = n
                    .append(
                        &stream,
                        A,
                        json!({"events": [ev(50_000 + w * 100 + i, json!(1))]}),
                    )
                    .await;
                assert_eq!(s, StatusCode::CREATED, "{r}");
                for _ in 0..2 {
                    let (s, r) = n
                        .call(
                            Method::PUT,
                            &format!("/v1/streams/{stream}/snapshot"),
                            A,
                            Some(json!({"version": 0, "data": state})),
                        )
                        .await;
                    assert_eq!(s, StatusCode::NO_CONTENT, "hostile snapshot: {r}");
                }
            }
        }));
    }
    // The largest reads, in parallel, over everything the tenant wrote (hot and cold).
    for r in 0..8u64 {
        let n = n.clone();
        attack.push(tokio::spawn(async move {
            for pass in 0..6u64 {
                let from = (r * 7 + pass * 13) % 60;
                let resp = n
                    .req(
                        Method::GET,
                        &format!("/v1/events?from={from}&limit=10000"),
                        Some(A),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                let _ = resp.bytes().await.unwrap();
            }
        }));
    }

    // Meanwhile another tenant appends and reads, and every one of its requests succeeds
    // (until the node is gone, when the monitor stopped it: it tells why below).
    let mut served = 0u128;
    while attack.iter().any(|h| !h.is_finished()) && !monitor.is_finished() {
        let body = json!({"events": [ev(served, json!({"n": served}))]});
        let Ok(resp) = n
            .req(Method::POST, "/v1/streams/calm/events", Some(B))
            .json(&body)
            .send()
            .await
        else {
            break;
        };
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "the other tenant's append"
        );
        let Ok(resp) = n
            .req(
                Method::GET,
                &format!("/v1/streams/calm/events?from={served}"),
                Some(B),
            )
            .send()
            .await
        else {
            break;
        };
        assert_eq!(resp.status(), StatusCode::OK, "the other tenant's read");
        let page: Value = resp.json().await.unwrap();
        assert_eq!(page["events"][0]["data"]["n"], json!(served));
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let (sampled, killed) = monitor.await.unwrap();
    assert!(
        !killed,
        "the node's RSS reached {} MiB during the attack, past the bound of {} MiB for its \
         limits (RSS at start {} MiB); it was stopped",
        sampled / MIB,
        bound / MIB,
        base_rss / MIB
    );
    for h in attack {
        h.await.unwrap();
    }
    let hwm = peak_rss(pid);
    println!(
        "node memory under attack: RSS at start {} MiB, highest sampled VmRSS {} MiB, VmHWM {} \
         MiB; bound {} MiB; the other tenant was served {served} times",
        base_rss / MIB,
        sampled / MIB,
        hwm / MIB,
        bound / MIB
    );
    assert!(
        hwm <= bound,
        "the node's peak RSS (VmHWM) reached {} MiB; the bound for its limits is {} MiB",
        hwm / MIB,
        bound / MIB
    );
    assert!(served > 0, "the other tenant was never served");
    // The subscriptions that never read were held open all along.
    drop(unread);
}
