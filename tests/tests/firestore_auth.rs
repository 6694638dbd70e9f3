//! The real `store-node gateway --backend firestore --firestore-credentials-file key.json`
//! against a loopback recording server that plays the Firestore REST endpoint (no Google): a
//! service-account key made in the test with the openssl CLI, one API call through the gateway,
//! and the Authorization header the server saw must be `Bearer <JWT>` signed by that key (checked
//! with `openssl dgst -verify` and the key's public half) for the datastore scope. Also: the
//! token never appears in the gateway's log, and a key file that is not a service-account key
//! stops the gateway at start.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allsource_tests::operator::wait_for;
use base64::Engine as _;
use store_node::backend::firestore::auth::DATASTORE_SCOPE;

const DEADLINE: Duration = Duration::from_secs(60);
const CLIENT_EMAIL: &str = "gateway@auth-test.iam.gserviceaccount.com";
const KEY_ID: &str = "kid-5e1f";

/// One request the recording server saw: method, path and Authorization header.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
}

/// A loopback server answering every Firestore call with an empty result (`[]`); returns its
/// base URL and what it saw.
async fn recording_server() -> (String, Arc<Mutex<Vec<Seen>>>) {
    use axum::http::{HeaderMap, Uri};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let rec = rec.clone();
        async move {
            let authorization = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            rec.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
                path: uri.path().to_string(),
                authorization,
            });
            ([("content-type", "application/json")], "[]")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run openssl: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `key.json` (a service-account key whose token_uri is `token_uri`) and `pub.pem` into
/// `dir`.
fn service_account_key(dir: &Path, token_uri: &str) {
    openssl(dir, &["genrsa", "-out", "rsa.pem", "2048"]);
    openssl(
        dir,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "rsa.pem", "-out", "pk8.pem",
        ],
    );
    openssl(
        dir,
        &["rsa", "-in", "rsa.pem", "-pubout", "-out", "pub.pem"],
    );
    let pem = std::fs::read_to_string(dir.join("pk8.pem")).unwrap_or_else(|e| panic!("{e}"));
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "auth-test",
        "private_key_id": KEY_ID,
        "private_key": pem,
        "client_email": CLIENT_EMAIL,
        "client_id": "1",
        "token_uri": token_uri,
    });
    std::fs::write(dir.join("key.json"), key.to_string()).unwrap_or_else(|e| panic!("{e}"));
}

fn b64(part: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap_or_else(|e| panic!("base64 {part}: {e}"))
}

/// Checks `jwt` was signed (RS256) by the key whose public half is `dir/pub.pem`; returns its
/// header and claims.
fn verify_jwt(dir: &Path, jwt: &str) -> (serde_json::Value, serde_json::Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT");
    std::fs::write(dir.join("signed.txt"), format!("{}.{}", parts[0], parts[1]))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("sig.bin"), b64(parts[2])).unwrap_or_else(|e| panic!("{e}"));
    openssl(
        dir,
        &[
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "sig.bin",
            "signed.txt",
        ],
    );
    let json = |p: &str| serde_json::from_slice(&b64(p)).unwrap_or_else(|e| panic!("{e}"));
    (json(parts[0]), json(parts[1]))
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gateway over `endpoint` with `key` as credentials file, logging to `log`.
fn gateway(work: &Path, endpoint: &str, key: &Path, log: &str) -> (KillOnDrop, String) {
    let port = allsource_tests::bins::free_port();
    let log = std::fs::File::create(work.join(log)).unwrap_or_else(|e| panic!("{e}"));
    let child = Command::new(allsource_tests::bins::store_node())
        // metrics on a free port: parallel nodes would all claim the default
        .env("STORE_NODE_METRICS_ADDR", "127.0.0.1:0")
        .args(["--log-format", "text", "gateway", "--backend", "firestore"])
        .args(["--firestore-project", "auth-test"])
        .args(["--firestore-endpoint", endpoint])
        .arg("--firestore-credentials-file")
        .arg(key)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--registry")
        .arg(work.join("registry.json"))
        .env("RUST_LOG", "debug")
        .env_remove("FIRESTORE_EMULATOR_HOST")
        .env_remove("STORE_NODE_FIRESTORE_TOKEN")
        .env_remove("STORE_NODE_FIRESTORE_WORKLOAD_IDENTITY")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("POD_NAME")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn gateway: {e}"));
    (KillOnDrop(child), format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_signs_firestore_calls_with_the_service_account_key() {
    use store_node::tenant::sha256_hex;
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = work.path();
    let (base, seen) = recording_server().await;
    service_account_key(dir, &format!("{base}/token"));
    let tenant_token = format!("tok-{}", uuid::Uuid::new_v4());
    let registry = serde_json::json!({"version": 1, "tenants": [
        {"id": "acme", "tokenSha256": [sha256_hex(&tenant_token)], "state": "active"},
    ]});
    std::fs::write(dir.join("registry.json"), registry.to_string())
        .unwrap_or_else(|e| panic!("{e}"));

    let (mut gw, url) = gateway(dir, &base, &dir.join("key.json"), "gateway.log");
    let http = reqwest::Client::new();
    wait_for("gateway answers /healthz", DEADLINE, || {
        if let Ok(Some(st)) = gw.0.try_wait() {
            let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
            panic!("gateway exited ({st}):\n{log}");
        }
        let (http, url) = (http.clone(), format!("{url}/healthz"));
        async move { http.get(url).send().await.ok().map(|_| ()) }
    })
    .await;
    // One read through the gateway: the stream head is looked up with `batchGet`.
    let r = http
        .get(format!("{url}/v1/streams/orders-1/events"))
        .bearer_auth(&tenant_token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    let status = r.status();
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let calls: Vec<&Seen> = seen
        .iter()
        .filter(|s| {
            s.path
                .starts_with("/v1/projects/auth-test/databases/(default)/documents")
        })
        .collect();
    assert!(
        !calls.is_empty(),
        "no Firestore call reached the server (gateway answered {status}); saw {seen:?}"
    );
    let auth = calls[0]
        .authorization
        .clone()
        .unwrap_or_else(|| panic!("no Authorization header on {}", calls[0].path));
    let jwt = auth
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a bearer token"));
    // With scopes, google-cloud-auth signs its own JWT (no exchange at token_uri).
    assert!(
        seen.iter().all(|s| s.path != "/token"),
        "unexpected token exchange: {seen:?}"
    );
    let (header, claims) = verify_jwt(dir, jwt);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], KEY_ID);
    assert_eq!(claims["iss"], CLIENT_EMAIL);
    assert_eq!(claims["sub"], CLIENT_EMAIL);
    assert_eq!(claims["scope"], DATASTORE_SCOPE);
    let (iat, exp) = (claims["iat"].as_i64(), claims["exp"].as_i64());
    assert!(
        matches!((iat, exp), (Some(i), Some(e)) if e > i),
        "{claims}"
    );
    assert!(
        calls
            .iter()
            .all(|c| c.authorization.as_deref() == Some(auth.as_str())),
        "the cached token is reused within its lifetime"
    );
    println!(
        "gateway answered {status}; {} Firestore call(s), Bearer JWT (kid {KEY_ID}, scope {}) \
         verified with the key's public half",
        calls.len(),
        claims["scope"]
    );
    drop(gw);
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
    assert!(!log.contains(jwt), "token in the gateway log");
    let sig = jwt.rsplit('.').next().unwrap_or_default();
    assert!(!log.contains(sig), "token signature in the gateway log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refuses_a_key_file_that_is_not_a_service_account_key() {
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = work.path();
    std::fs::write(dir.join("registry.json"), r#"{"version":1,"tenants":[]}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    let key = dir.join("user.json");
    std::fs::write(
        &key,
        r#"{"type":"authorized_user","refresh_token":"hush-refresh"}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (mut gw, _) = gateway(dir, "http://127.0.0.1:9", &key, "bad.log");
    let st = wait_for("gateway with a user key exits", DEADLINE, || {
        let st = gw.0.try_wait().ok().flatten();
        async move { st }
    })
    .await;
    assert!(!st.success());
    let log = std::fs::read_to_string(dir.join("bad.log")).unwrap_or_default();
    assert!(
        log.contains("not a service-account key"),
        "gateway log: {log}"
    );
    assert!(!log.contains("hush-refresh"), "key material in the log");
}
