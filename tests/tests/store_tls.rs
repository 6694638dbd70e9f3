//! HTTPS of `store-node serve --tls-dir` end to end, against the real binary, with a CA and
//! server certificates made by the openssl CLI and a TLS directory laid out the way the kubelet
//! lays out a Secret volume (`tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>`), so a
//! rotation is the kubelet's: new files in a new directory, then one rename of the `..data`
//! symlink.
//! - the API answers over HTTPS verified with the CA; plain HTTP and a client without the CA
//!   are refused; `/v1/info` reports the certificate's serial and notAfter;
//! - a missing or mismatched file stops the node at start with an error naming it;
//! - the certificate is rotated while clients append in a loop (reused and fresh connections):
//!   no append fails, every acknowledged event is read back, and a new connection sees the new
//!   certificate; a bad pair afterwards is refused, reported, and the node keeps serving.
//!
//! The gateway's HTTPS (`store-node gateway` with the same TLS directory) is checked over
//! PostgreSQL.
//!
//! Needs only the `openssl` CLI, and PostgreSQL for the gateway.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allsource_tests::bins::{free_port, store_node as binary};
use allsource_tests::certs::{issue_server_cert, make_ca};
use allsource_tests::env::install_crypto_provider;
use reqwest::StatusCode;
use serde_json::{json, Value};
use store_node::server::tls::leaf_facts;
use store_node::tenant::sha256_hex;

const TOKEN: &str = "tls-test-token-7f3a";

/// A server certificate for `localhost`/`127.0.0.1` issued by `ca`, valid `days`, with `serial`
/// (`<out>.crt`, `<out>.key` in `dir`).
fn issue_cert(dir: &Path, ca: &str, out: &str, serial: u32, days: u32) {
    issue_server_cert(dir, ca, out, "DNS:localhost,IP:127.0.0.1", serial, days);
}

/// notAfter of a PEM certificate as openssl prints it (`Jan  2 03:04:05 2027 GMT`).
fn openssl_not_after(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("notAfter=")
        .to_string()
}

/// A TLS directory laid out like a kubelet Secret volume.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir, generation: 0 }
    }

    /// Publishes `files` (name, content) the kubelet's way: a new timestamped directory, a
    /// `..data_tmp` symlink to it renamed over `..data`, and per-key symlinks into `..data`.
    fn publish(&mut self, files: &[(&str, &[u8])]) {
        self.generation += 1;
        let ts = format!(
            "..2026_12_02_00_00_{:02}.{}",
            self.generation, self.generation
        );
        let gen_dir = self.dir.join(&ts);
        std::fs::create_dir(&gen_dir).unwrap();
        for (name, content) in files {
            std::fs::write(gen_dir.join(name), content).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
    }
}

struct Node {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Node {
    fn spawn(work: &Path, tls_dir: &Path) -> Node {
        let data = work.join("data");
        let data = data.to_str().unwrap();
        Self::spawn_with(work, tls_dir, &["serve", "--data-dir", data])
    }

    /// Runs `store-node <sub...>` (`serve ...` or `gateway ...`) with the API flags, the
    /// registry and the TLS directory.
    fn spawn_with(work: &Path, tls_dir: &Path, sub: &[&str]) -> Node {
        std::fs::write(
            work.join("registry.json"),
            serde_json::to_vec(&json!({"version": 1, "tenants": [
                {"id": "acme", "tokenSha256": [sha256_hex(TOKEN)]}
            ]}))
            .unwrap(),
        )
        .unwrap();
        let port = free_port();
        let log = work.join(format!("node-{port}.log"));
        let child = Command::new(binary())
            .args(["--log-format", "text"])
            .args(sub)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--registry")
            .arg(work.join("registry.json"))
            // Both by environment, as the operator sets ALLSOURCE_TLS_DIR.
            .env("ALLSOURCE_TLS_DIR", tls_dir)
            .env("STORE_NODE_TLS_RELOAD_INTERVAL_MS", "200")
            .env("STORE_NODE_METRICS_ADDR", "127.0.0.1:0")
            .env_remove("POD_NAME")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn store-node");
        Node { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn https(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// Waits for `/readyz` over HTTPS with `client`.
    async fn ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(self.https("/readyz")).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("store-node exited early ({st}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "store-node not ready over https; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit by itself; its status and log.
    async fn exit(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "store-node did not exit; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client trusting only `ca_pem`; `fresh`: no connection reuse (every request handshakes).
fn client(ca_pem: &[u8], fresh: bool) -> reqwest::Client {
    install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(10));
    if fresh {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().unwrap()
}

/// Serial (hex) of the certificate the server presented on `resp`'s connection.
fn peer_serial(resp: &reqwest::Response) -> String {
    let info = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info of the response");
    let der = info.peer_certificate().expect("peer certificate");
    leaf_facts(der).expect("an X.509 certificate").0
}

async fn info(c: &reqwest::Client, node: &Node) -> Value {
    let r = c
        .get(node.https("/v1/info"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn append(c: &reqwest::Client, node: &Node, stream: &str, n: u64) -> Result<(), String> {
    let body = json!({"events": [{
        "eventId": uuid::Uuid::from_u128(u128::from(n) + 1), "eventType": "t", "data": {"n": n}
    }]});
    let r = c
        .post(node.https(&format!("/v1/streams/{stream}/events")))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("append {n}: {e:?}"))?;
    if r.status() != StatusCode::CREATED {
        return Err(format!("append {n}: HTTP {}", r.status()));
    }
    Ok(())
}

async fn count(c: &reqwest::Client, node: &Node, stream: &str) -> usize {
    let mut total = 0;
    let mut from = 0u64;
    loop {
        let r = c
            .get(node.https(&format!(
                "/v1/streams/{stream}/events?from={from}&limit=1000"
            )))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        let events = v["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            return total;
        }
        total += events.len();
        from += events.len() as u64;
    }
}

/// A PKI in `tmp/pki` (CAs `ca` and `other`, a leaf `leaf` of `ca` with `serial`, valid 2
/// days) and a Secret volume in `tmp/tls` publishing `ca.crt` and the leaf's pair.
fn pki_with_volume(tmp: &Path, leaf: &str, serial: u32) -> (PathBuf, SecretVolume) {
    let pki = tmp.join("pki");
    std::fs::create_dir(&pki).unwrap();
    make_ca(&pki, "ca");
    make_ca(&pki, "other");
    issue_cert(&pki, "ca", leaf, serial, 2);
    let read = |n: &str| std::fs::read(pki.join(n)).unwrap();
    let mut volume = SecretVolume::new(tmp.join("tls"));
    volume.publish(&[
        ("ca.crt", &read("ca.crt")),
        ("tls.crt", &read(&format!("{leaf}.crt"))),
        ("tls.key", &read(&format!("{leaf}.key"))),
    ]);
    (pki, volume)
}

/// Plain HTTP on `node`'s port is refused; so is a client that trusts only `other.crt` of `pki`.
async fn assert_https_only(node: &Node, pki: &Path) {
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://127.0.0.1:{}/readyz", node.port))
        .send()
        .await;
    assert!(r.is_err(), "plain HTTP answered: {r:?}");
    let stranger = client(&std::fs::read(pki.join("other.crt")).unwrap(), true);
    let r = stranger.get(node.https("/readyz")).send().await;
    assert!(r.is_err(), "a client without the CA connected: {r:?}");
}

/// The whole HTTPS story of one node: serve, refuse plain HTTP, rotate under load, refuse a bad
/// pair. On a store-node that ignores `ALLSOURCE_TLS_DIR` the first HTTPS request never
/// succeeds (the node answers plain HTTP) and the readiness wait fails.
#[tokio::test]
async fn https_from_a_secret_volume_survives_rotation_under_load() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, mut volume) = pki_with_volume(tmp.path(), "one", 1001);
    issue_cert(&pki, "ca", "two", 2002, 30);
    let read = |n: &str| std::fs::read(pki.join(n)).unwrap();
    let ca = read("ca.crt");

    let work = tmp.path().join("node");
    std::fs::create_dir(&work).unwrap();
    let mut node = Node::spawn(&work, &volume.dir);
    let reused = client(&ca, false);
    let fresh = client(&ca, true);
    node.ready(&reused).await;

    // HTTPS with the CA works and shows certificate one.
    append(&fresh, &node, "s", 0).await.unwrap();
    let r = fresh.get(node.https("/healthz")).send().await.unwrap();
    assert_eq!(peer_serial(&r), "03e9", "serial 1001");
    let i = info(&fresh, &node).await;
    assert_eq!(i["tls"]["serial"], "03e9", "{i}");
    assert_eq!(i["tls"]["lastReloadError"], Value::Null, "{i}");
    let not_after: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(i["tls"]["notAfter"].clone()).unwrap();
    assert_eq!(
        not_after.format("%b %e %H:%M:%S %Y GMT").to_string(),
        openssl_not_after(&pki.join("one.crt")),
        "{i}"
    );

    // Plain HTTP on the same port is refused; so is a client that does not trust the CA.
    assert_https_only(&node, &pki).await;

    // Rotation under load: two writers (kept-alive and fresh connections) append in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    let node = Arc::new(node);
    let mut writers = Vec::new();
    for c in [reused.clone(), fresh.clone()] {
        let (stop, next, node) = (stop.clone(), next.clone(), node.clone());
        writers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut done = 0u64;
            while !stop.load(Ordering::Acquire) {
                let n = next.fetch_add(1, Ordering::AcqRel);
                match append(&c, &node, "s", n).await {
                    Ok(()) => done += 1,
                    Err(e) => failures.push(e),
                }
            }
            (done, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    volume.publish(&[
        ("ca.crt", &ca),
        ("tls.crt", &read("two.crt")),
        ("tls.key", &read("two.key")),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = fresh.get(node.https("/healthz")).send().await.unwrap();
        if peer_serial(&r) == "07d2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new connections still get the old certificate; log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let mut acked = 1u64;
    for w in writers {
        let (done, failures) = w.await.unwrap();
        assert!(
            failures.is_empty(),
            "appends failed during the rotation: {failures:?}"
        );
        assert!(done > 0, "a writer made no progress");
        acked += done;
    }
    assert_eq!(
        count(&fresh, &node, "s").await as u64,
        acked,
        "acknowledged appends"
    );
    let i = info(&fresh, &node).await;
    assert_eq!(i["tls"]["serial"], "07d2", "{i}");
    assert_eq!(i["tls"]["reloads"], 1, "{i}");

    // A bad pair (key of certificate one with certificate two) is refused and reported; the node
    // keeps serving certificate two.
    volume.publish(&[
        ("ca.crt", &ca),
        ("tls.crt", &read("two.crt")),
        ("tls.key", &read("one.key")),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let i = loop {
        let i = info(&fresh, &node).await;
        if i["tls"]["lastReloadError"].is_string() {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "bad pair not reported: {i}; log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let err = i["tls"]["lastReloadError"].as_str().unwrap();
    assert!(err.contains("tls.key"), "{err}");
    assert_eq!(i["tls"]["serial"], "07d2", "{i}");
    append(&fresh, &node, "s", 1_000_000).await.unwrap();
    let r = fresh.get(node.https("/healthz")).send().await.unwrap();
    assert_eq!(peer_serial(&r), "07d2");
    assert!(
        node.log().contains("TLS certificate reload refused"),
        "{}",
        node.log()
    );
}

/// A TLS directory without a usable pair stops the node at start, naming the file.
/// `store-node gateway` serves HTTPS from a Secret volume exactly as `serve` does (the operator
/// mounts `spec.gateway.tlsSecretRef` there and sets `ALLSOURCE_TLS_DIR`): appends and reads
/// over HTTPS verified with the CA reach PostgreSQL; plain HTTP and a client without the CA are
/// refused. On the old gateway, which had no TLS flags, the HTTPS readiness wait failed: it
/// answered plain HTTP only.
#[tokio::test]
async fn the_gateway_serves_https_from_its_secret_volume() {
    let Some(env) = allsource_tests::env::require("postgres") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (pki, volume) = pki_with_volume(tmp.path(), "gw", 3003);
    let ca = std::fs::read(pki.join("ca.crt")).unwrap();
    let work = tmp.path().join("gateway");
    std::fs::create_dir(&work).unwrap();
    let schema = format!("gwtls_{}", allsource_tests::env::unique_suffix(8));
    let sub = [
        "gateway",
        "--backend",
        "postgres",
        "--pg-url",
        env.pg_url(),
        "--pg-schema",
        &schema,
        "--init",
    ];
    let mut gw = Node::spawn_with(&work, &volume.dir, &sub);
    let c = client(&ca, true);
    gw.ready(&c).await;
    for n in 0..3 {
        append(&c, &gw, "s", n).await.unwrap();
    }
    assert_eq!(count(&c, &gw, "s").await, 3);
    let r = c.get(gw.https("/healthz")).send().await.unwrap();
    assert_eq!(peer_serial(&r), "0bbb", "serial 3003");

    assert_https_only(&gw, &pki).await;
    drop(gw);

    let (db, conn) = tokio_postgres::connect(env.pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_missing_or_mismatched_pair_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    make_ca(&pki, "ca");
    issue_cert(&pki, "ca", "one", 1, 2);
    issue_cert(&pki, "ca", "two", 2, 2);
    let read = |n: &str| std::fs::read(pki.join(n)).unwrap();

    type Files<'a> = Vec<(&'a str, Vec<u8>)>;
    let cases: [(&str, Files, &str); 3] = [
        (
            "no key",
            vec![("tls.crt", read("one.crt"))],
            "tls.key: No such file",
        ),
        (
            "key of another certificate",
            vec![("tls.crt", read("one.crt")), ("tls.key", read("two.key"))],
            "do not form a usable pair",
        ),
        (
            "not a certificate",
            vec![("tls.crt", b"hello".to_vec()), ("tls.key", read("one.key"))],
            "tls.crt: holds no CERTIFICATE block",
        ),
    ];
    for (what, files, want) in cases {
        let mut volume = SecretVolume::new(tmp.path().join(what.replace(' ', "-")));
        let files: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_slice())).collect();
        volume.publish(&files);
        let work = tmp.path().join(format!("node-{}", what.replace(' ', "-")));
        std::fs::create_dir(&work).unwrap();
        let (status, log) = Node::spawn(&work, &volume.dir).exit().await;
        assert!(!status.success(), "{what}: started; log:\n{log}");
        assert!(log.contains(want), "{what}: want {want:?} in:\n{log}");
        assert!(log.contains("ALLSOURCE_TLS_DIR"), "{what}: {log}");
    }
}
