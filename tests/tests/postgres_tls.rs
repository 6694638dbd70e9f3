//! TLS to PostgreSQL against a private PostgreSQL server started for each test (the env's
//! PostgreSQL binaries, its own data directory and loopback port) with `ssl=on`, a server
//! certificate (SAN `localhost`, `127.0.0.1`) issued by a CA made in the test with the openssl
//! CLI, SCRAM passwords and a `hostssl`-only pg_hba, so a plain connection is refused:
//! - every libpq `sslmode` of store-node's connector (the one the operator and the gateway
//!   share): what connects, what is refused and why, and that the session really is encrypted
//!   (`pg_stat_ssl`);
//! - the real `store-node gateway --pg-sslmode verify-full` with the CA in its environment
//!   serves an append; with another CA it refuses to start;
//! - an EventStore with sslMode verify-full and `ca.crt` in its Secret reaches Ready, its pooled
//!   Tenant's login Secret carries the sslmode and works over verified TLS, and a Secret with
//!   another CA leaves the store Degraded with the certificate error (no password in status);
//! - a client certificate (`tls.crt`/`tls.key`) logs a password-less role in through pg_hba
//!   `cert`: store-node's backend, the gateway binary and an EventStore; none, or one of another
//!   CA, is refused, and a Secret with only `tls.crt` leaves the store Degraded (InvalidSpec).

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use allsource_operator::api::eventstore::EventStoreStatus;
use allsource_operator::api::{EventStore, Phase, Tenant};
use allsource_tests::certs::{make_ca, run};
use allsource_tests::operator::{install_crds, suffix, wait_for, wait_status, Operator};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::Client;
use reqwest::StatusCode;
use store_node::backend::postgres::tls::{ClientIdentity, PgTls, SslMode};
use store_node::backend::postgres::{PostgresConfig, PostgresStore};

const DEADLINE: Duration = Duration::from_secs(60);
const PASSWORD: &str = "tls-test-pw-5d1c";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The directory of the installed PostgreSQL server binaries (`initdb`, `pg_ctl`).
fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    dirs.retain(|d| d.join("initdb").exists());
    dirs.sort();
    dirs.pop()
        .unwrap_or_else(|| panic!("no PostgreSQL server binaries (tests/env/install.sh)"))
}

/// A private PostgreSQL server with TLS only; stopped (immediately) on drop.
struct TlsPg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    root: bool,
    port: u16,
    /// PEM of the CA that issued the server's certificate.
    ca: String,
    /// PEM of a CA that did not.
    other_ca: String,
    /// Client certificate (CN `certuser`, issued by `ca`) and its key: the server lets
    /// `certuser` in with it alone (pg_hba `cert`).
    client_cert: String,
    client_key: String,
    /// A certificate with the same CN issued by the other CA (the server must refuse it).
    rogue_cert: String,
    rogue_key: String,
}

/// Extensions of a server certificate for `localhost` / `127.0.0.1`.
const SERVER_EXT: &str = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
     basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n";
/// Extensions of a client certificate.
const CLIENT_EXT: &str =
    "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n";

/// A certificate with CN `cn` and extensions `ext`, issued by the CA `ca`, valid 2 days
/// (`<out>.crt`, `<out>.key` in `dir`).
fn issue_cert(dir: &Path, ca: &str, cn: &str, out: &str, ext: &str, serial: u32) {
    allsource_tests::certs::issue_cert(dir, ca, cn, out, ext, serial, 2);
}

impl TlsPg {
    fn start() -> Self {
        let bin = pg_bin();
        let root = is_root();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let d = dir.path();
        make_ca(d, "ca");
        make_ca(d, "other-ca");
        issue_cert(d, "ca", "localhost", "server", SERVER_EXT, 2);
        run(Command::new("chmod").arg("600").arg(d.join("server.key")));
        issue_cert(d, "ca", "certuser", "client", CLIENT_EXT, 3);
        issue_cert(d, "other-ca", "certuser", "rogue", CLIENT_EXT, 3);
        std::fs::write(d.join("pw"), PASSWORD).unwrap_or_else(|e| panic!("{e}"));
        // initdb refuses to run as root: the server runs as the postgres user (as in
        // tests/env/up.sh), which then owns the whole directory.
        if root {
            run(Command::new("chown").args(["-R", "postgres"]).arg(d));
        }
        let pg = |tool: &str| {
            let mut c = if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
                c
            } else {
                Command::new(bin.join(tool))
            };
            c.current_dir(d);
            c
        };
        run(pg("initdb")
            .arg("-D")
            .arg(d.join("data"))
            .args(["-U", "postgres", "--pwfile"])
            .arg(d.join("pw"))
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .args(["-E", "UTF8", "--no-locale", "--no-sync"]));
        // TLS only: no `host` line, so a plain TCP connection has no pg_hba entry.
        std::fs::write(
            d.join("data/pg_hba.conf"),
            "local all all trust\nhostssl all certuser 127.0.0.1/32 cert\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let port = allsource_tests::bins::free_port();
        let opts = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c ssl=on \
             -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key \
             -c ssl_ca_file={dir}/ca.crt \
             -c fsync=off -c synchronous_commit=off",
            dir = d.display()
        );
        run(pg("pg_ctl")
            .arg("-D")
            .arg(d.join("data"))
            .arg("-l")
            .arg(d.join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"]));
        run(pg("psql")
            .args(["-h", &d.display().to_string(), "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"])
            .args(["-c", "CREATE ROLE certuser LOGIN SUPERUSER"]));
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_else(|e| panic!("{e}"));
        let (ca, other_ca) = (read("ca.crt"), read("other-ca.crt"));
        let (client_cert, client_key) = (read("client.crt"), read("client.key"));
        let (rogue_cert, rogue_key) = (read("rogue.crt"), read("rogue.key"));
        Self {
            dir,
            bin,
            root,
            port,
            ca,
            other_ca,
            client_cert,
            client_key,
            rogue_cert,
            rogue_key,
        }
    }

    /// Admin URL with host `host` (the server listens on 127.0.0.1).
    fn url(&self, host: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@{host}:{}/postgres",
            self.port
        )
    }

    /// Admin connection settings naming `host` (for TLS) while dialing 127.0.0.1.
    fn config(&self, host: &str) -> tokio_postgres::Config {
        let mut c: tokio_postgres::Config = self
            .url(host)
            .parse()
            .unwrap_or_else(|e| panic!("url: {e}"));
        c.hostaddr(std::net::IpAddr::from([127, 0, 0, 1]));
        c.connect_timeout(Duration::from_secs(10));
        c
    }
}

impl Drop for TlsPg {
    fn drop(&mut self) {
        let mut c = if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = c
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// An error and its sources, as one line.
fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}

/// Connects with `mode` (and `ca`), returning the client or the error chain.
async fn connect(
    cfg: &tokio_postgres::Config,
    mode: SslMode,
    ca: Option<&str>,
) -> Result<tokio_postgres::Client, String> {
    let tls = PgTls::new(mode, ca).unwrap_or_else(|e| panic!("connector {mode}: {e}"));
    match tls.connect(cfg).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            Ok(client)
        }
        Err(e) => Err(chain(&e)),
    }
}

/// Whether the server sees this session as TLS.
async fn session_is_tls(c: &tokio_postgres::Client) -> bool {
    c.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("pg_stat_ssl: {e}"))
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_against_a_tls_only_server() {
    if allsource_tests::env::require("postgres").is_none() {
        return;
    }
    let pg = TlsPg::start();
    let (ca, other) = (pg.ca.as_str(), pg.other_ca.as_str());
    let good = pg.config("localhost");
    let by_ip = pg.config("127.0.0.1");
    let wrong_name = pg.config("db.elsewhere.test");

    // Connects, encrypted.
    for (what, cfg, mode, ca) in [
        ("require", &good, SslMode::Require, None),
        (
            "require ignores the CA",
            &good,
            SslMode::Require,
            Some(other),
        ),
        (
            "require ignores the name",
            &wrong_name,
            SslMode::Require,
            None,
        ),
        ("prefer", &good, SslMode::Prefer, None),
        ("verify-full", &good, SslMode::VerifyFull, Some(ca)),
        ("verify-full, IP SAN", &by_ip, SslMode::VerifyFull, Some(ca)),
        (
            "verify-ca, other name",
            &wrong_name,
            SslMode::VerifyCa,
            Some(ca),
        ),
    ] {
        let c = connect(cfg, mode, ca)
            .await
            .unwrap_or_else(|e| panic!("{what}: refused: {e}"));
        assert!(session_is_tls(&c).await, "{what}: session is not TLS");
        println!("{what}: connected, pg_stat_ssl.ssl = true");
    }

    // Refused, and the error says why (never with the password).
    for (what, cfg, mode, ca, expect) in [
        (
            "disable (hostssl only)",
            &good,
            SslMode::Disable,
            None,
            "no encryption",
        ),
        (
            "verify-full, wrong host name",
            &wrong_name,
            SslMode::VerifyFull,
            Some(ca),
            "not valid for name",
        ),
        (
            "verify-full, another CA",
            &good,
            SslMode::VerifyFull,
            Some(other),
            "unknownissuer",
        ),
        (
            "verify-full, built-in roots",
            &good,
            SslMode::VerifyFull,
            None,
            "unknownissuer",
        ),
        (
            "verify-ca, another CA",
            &wrong_name,
            SslMode::VerifyCa,
            Some(other),
            "unknownissuer",
        ),
    ] {
        let e = connect(cfg, mode, ca)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: connected"));
        println!("{what}: refused: {e}");
        let lower = e.to_lowercase().replace(' ', "");
        assert!(
            lower.contains(&expect.replace(' ', "")),
            "{what}: expected {expect:?} in {e}"
        );
        assert!(!e.contains(PASSWORD), "{what}: password in the error");
    }

    // store-node's PostgreSQL backend (the gateway's) over the same connector.
    let schema = format!("tls_{}", suffix());
    let mut cfg = PostgresConfig::new(pg.url("127.0.0.1"), schema.clone());
    cfg.ssl_mode = SslMode::VerifyFull;
    cfg.ca_pem = Some(pg.ca.clone());
    PostgresStore::connect(cfg.clone())
        .unwrap_or_else(|e| panic!("store: {e}"))
        .init_schema()
        .await
        .unwrap_or_else(|e| panic!("init_schema over verify-full: {e}"));
    let admin = connect(&good, SslMode::VerifyFull, Some(ca)).await.unwrap();
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert!(n >= 4, "tables of {schema}: {n}");
    cfg.ca_pem = Some(pg.other_ca.clone());
    cfg.schema = format!("tls_{}", suffix());
    let e = PostgresStore::connect(cfg)
        .unwrap_or_else(|e| panic!("store: {e}"))
        .init_schema()
        .await
        .expect_err("init_schema with another CA");
    println!("store-node backend, another CA: {e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_binary_honours_pg_sslmode() {
    use store_node::tenant::sha256_hex;
    if allsource_tests::env::require("postgres").is_none() {
        return;
    }
    let pg = TlsPg::start();
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let token = format!("tok-{}", uuid::Uuid::new_v4());
    let registry = serde_json::json!({"version": 1, "tenants": [
        {"id": "acme", "tokenSha256": [sha256_hex(&token)], "state": "active"},
    ]});
    let reg = work.path().join("registry.json");
    std::fs::write(&reg, registry.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let schema = format!("gw_{}", suffix());
    let password_url = pg.url("localhost");
    let cert_url = format!("postgres://certuser@localhost:{}/postgres", pg.port);
    let start_with = |url: &str, schema: &str, ca: &str, cert: Option<(&str, &str)>, log: &str| {
        let port = allsource_tests::bins::free_port();
        let log = std::fs::File::create(work.path().join(log)).unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(allsource_tests::bins::store_node());
        cmd.env("STORE_NODE_METRICS_ADDR", "127.0.0.1:0");
        if let Some((cert, key)) = cert {
            cmd.env("STORE_NODE_PG_CLIENT_CERT", cert)
                .env("STORE_NODE_PG_CLIENT_KEY", key);
        }
        let child = cmd
            .args([
                "--log-format",
                "text",
                "gateway",
                "--backend",
                "postgres",
                "--init",
            ])
            .args(["--pg-url", url, "--pg-schema", schema])
            .args(["--pg-sslmode", "verify-full"])
            .env("STORE_NODE_PG_CA_CERT", ca)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--registry")
            .arg(&reg)
            .env_remove("POD_NAME")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn gateway: {e}"));
        (KillOnDrop(child), format!("http://127.0.0.1:{port}"))
    };
    let start = |ca: &str, log: &str| start_with(&password_url, &schema, ca, None, log);

    // Another CA: the gateway cannot create its schema and exits with the certificate error.
    let (mut bad, _) = start(&pg.other_ca, "bad.log");
    let status = wait_for("gateway with another CA exits", DEADLINE, || {
        let st = bad.0.try_wait().ok().flatten();
        async move { st }
    })
    .await;
    assert!(!status.success());
    let log = std::fs::read_to_string(work.path().join("bad.log")).unwrap_or_default();
    assert!(log.contains("UnknownIssuer"), "gateway log: {log}");
    assert!(!log.contains(PASSWORD), "password in the gateway log");

    // The right CA: ready, and an append lands in the server behind hostssl.
    let (mut gw, base) = start(&pg.ca, "good.log");
    let http = reqwest::Client::new();
    ready_then_append(&http, &mut gw, &base, &token, &work.path().join("good.log")).await;
    let admin = connect(&pg.config("localhost"), SslMode::VerifyFull, Some(&pg.ca))
        .await
        .unwrap();
    let n: i64 = admin
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".events WHERE tenant = 'acme'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let gateway_sessions: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(gateway_sessions >= 1, "no TLS session of the gateway");
    println!("gateway over verify-full: append stored, {gateway_sessions} TLS session(s)");
    drop(gw);

    // No password, a client certificate instead (pg_hba `cert` for certuser).
    let cert_schema = format!("gw_{}", suffix());
    let (mut gw, base) = start_with(
        &cert_url,
        &cert_schema,
        &pg.ca,
        Some((&pg.client_cert, &pg.client_key)),
        "cert.log",
    );
    ready_then_append(&http, &mut gw, &base, &token, &work.path().join("cert.log")).await;
    let n: i64 = admin
        .query_one(
            &format!("SELECT count(*) FROM \"{cert_schema}\".events WHERE tenant = 'acme'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let log = std::fs::read_to_string(work.path().join("cert.log")).unwrap_or_default();
    assert!(
        !log.contains("PRIVATE KEY"),
        "client key in the gateway log"
    );
    println!("gateway with a client certificate (no password): append stored");
    drop(gw);
}

/// Waits until the gateway at `base` is ready (panicking with its log if it exits), then appends
/// one event to `orders-1` with `token`.
async fn ready_then_append(
    http: &reqwest::Client,
    gw: &mut KillOnDrop,
    base: &str,
    token: &str,
    log: &Path,
) {
    wait_for("gateway ready", DEADLINE, || {
        let (http, url) = (http.clone(), format!("{base}/readyz"));
        if let Ok(Some(st)) = gw.0.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("gateway exited ({st}):\n{log}");
        }
        async move {
            let r = http.get(url).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        }
    })
    .await;
    let r = http
        .post(format!("{base}/v1/streams/orders-1/events"))
        .bearer_auth(token)
        .json(&serde_json::json!({"events": [{"eventId": uuid::Uuid::new_v4(), "eventType": "placed", "data": {"n": 1}}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.status().is_success(), "append: {}", r.status());
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn secret(client: &Client, ns: &str, name: &str, data: BTreeMap<&str, String>) {
    let s: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "stringData": data,
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

fn store(name: &str, secret: &str, schema: &str) -> EventStore {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "allsource.io/v1alpha1", "kind": "EventStore",
        "metadata": {"name": name},
        "spec": {
            "backend": "postgres",
            "postgres": {"connectionSecretRef": {"name": secret}, "schema": schema, "sslMode": "verify-full"},
            "deletionPolicy": "Delete",
        },
    }))
    .unwrap()
}

fn condition(st: &EventStoreStatus, t: &str) -> Option<(bool, String, String)> {
    allsource_tests::operator::condition(&st.conditions, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventstore_verify_full_reaches_ready() {
    if allsource_tests::env::require("postgres").is_none() {
        return;
    }
    let Some(env) = allsource_tests::env::require("kube") else {
        return;
    };
    let pg = TlsPg::start();
    let ns = env.test_namespace("pg-tls").await.unwrap();
    let client = ns.client().clone();
    let n = ns.name().to_string();
    install_crds(&client).await;
    let op = Operator::start(&client, &n);
    // The server's certificate names 127.0.0.1 (and localhost): verify-full on the IP.
    let url = pg.url("127.0.0.1");
    secret(
        &client,
        &n,
        "pg-admin",
        BTreeMap::from([("url", url.clone()), ("ca.crt", pg.ca.clone())]),
    )
    .await;
    secret(
        &client,
        &n,
        "pg-other-ca",
        BTreeMap::from([("url", url.clone()), ("ca.crt", pg.other_ca.clone())]),
    )
    .await;
    let schema = format!("allsource_tls_{}", suffix());
    let es: Api<EventStore> = Api::namespaced(client.clone(), &n);
    es.create(
        &PostParams::default(),
        &store("orders", "pg-admin", &schema),
    )
    .await
    .unwrap();
    es.create(
        &PostParams::default(),
        &store(
            "untrusted",
            "pg-other-ca",
            &format!("allsource_tls_{}", suffix()),
        ),
    )
    .await
    .unwrap();

    let st = wait_status(&es, "orders", "verify-full store Ready", |e, s| {
        s.phase == Some(Phase::Ready) && s.observed_generation == e.metadata.generation
    })
    .await;
    println!("verify-full store: Ready, provisioned {:?}", st.provisioned);
    let admin = connect(&pg.config("127.0.0.1"), SslMode::VerifyFull, Some(&pg.ca))
        .await
        .unwrap();
    let tables: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert!(tables >= 4, "tables of {schema}: {tables}");

    // Another CA in the Secret: Degraded with the certificate error, Ready false.
    let st = wait_status(&es, "untrusted", "untrusted store Degraded", |_, s| {
        condition(s, "Degraded").is_some_and(|c| c.0)
    })
    .await;
    let (_, reason, msg) = condition(&st, "Degraded").unwrap();
    println!("another CA: Degraded {reason}: {msg}");
    assert!(msg.contains("UnknownIssuer"), "{msg}");
    assert_eq!(condition(&st, "Ready").map(|c| c.0), Some(false));
    let json = serde_json::to_string(&st).unwrap();
    assert!(!json.contains(PASSWORD), "password leaked into status");

    // A pooled tenant's login Secret says how to connect, and that works over verified TLS.
    let tenant_id = format!("acme-{}", suffix());
    let t: Tenant = serde_json::from_value(serde_json::json!({
        "apiVersion": "allsource.io/v1alpha1", "kind": "Tenant",
        "metadata": {"name": tenant_id},
        "spec": {"eventStoreRef": {"name": "orders"}, "tenantId": tenant_id, "placement": "pooled"},
    }))
    .unwrap();
    Api::<Tenant>::namespaced(client.clone(), &n)
        .create(&PostParams::default(), &t)
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &n);
    let login: BTreeMap<String, String> =
        wait_for(&format!("{tenant_id}-postgres Secret"), DEADLINE, || {
            let secrets = secrets.clone();
            let name = format!("{tenant_id}-postgres");
            async move {
                let data = secrets.get_opt(&name).await.ok()??.data?;
                Some(
                    data.into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                        .collect(),
                )
            }
        })
        .await;
    assert_eq!(login["sslmode"], "verify-full");
    assert!(
        login["url"].ends_with("?sslmode=verify-full"),
        "{}",
        login["url"]
    );
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&login["host"])
        .port(login["port"].parse().unwrap())
        .dbname(&login["database"])
        .user(&login["user"])
        .password(&login["password"]);
    let mode: SslMode = login["sslmode"].parse().unwrap();
    // The role is created right after the Secret is written.
    let tenant_client = wait_for("tenant login over verify-full", DEADLINE, || {
        let cfg = cfg.clone();
        let ca = pg.ca.clone();
        async move { connect(&cfg, mode, Some(&ca)).await.ok() }
    })
    .await;
    assert!(session_is_tls(&tenant_client).await);
    let me: String = tenant_client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(me, login["user"]);

    op.stop().await;
    ns.cleanup().await.unwrap();
}

/// `certuser` with `hostssl ... cert`: no password, the client certificate is the credential.
fn cert_config(pg: &TlsPg) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("localhost")
        .hostaddr(std::net::IpAddr::from([127, 0, 0, 1]))
        .port(pg.port)
        .user("certuser")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(10));
    c
}

/// Connects `cfg` with verify-full, presenting `cert`/`key` when given.
async fn connect_with_cert(
    pg: &TlsPg,
    cfg: &tokio_postgres::Config,
    cert: Option<(&str, &str)>,
) -> Result<tokio_postgres::Client, String> {
    let client = cert.map(|(cert_pem, key_pem)| ClientIdentity { cert_pem, key_pem });
    let tls = PgTls::with_client(SslMode::VerifyFull, Some(&pg.ca), client)
        .unwrap_or_else(|e| panic!("connector: {e}"));
    match tls.connect(cfg).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            Ok(client)
        }
        Err(e) => Err(chain(&e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_authenticates_the_operator_and_the_backend() {
    if allsource_tests::env::require("postgres").is_none() {
        return;
    }
    let Some(env) = allsource_tests::env::require("kube") else {
        return;
    };
    let pg = TlsPg::start();
    let cfg = cert_config(&pg);
    let good = (pg.client_cert.as_str(), pg.client_key.as_str());
    let rogue = (pg.rogue_cert.as_str(), pg.rogue_key.as_str());

    // The certificate alone logs certuser in; the server saw its subject.
    let c = connect_with_cert(&pg, &cfg, Some(good))
        .await
        .unwrap_or_else(|e| panic!("with the client certificate: {e}"));
    let row = c
        .query_one(
            "SELECT current_user::text, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let (user, dn): (String, Option<String>) = (row.get(0), row.get(1));
    println!("client certificate: connected as {user}, client_dn {dn:?}");
    assert_eq!(user, "certuser");
    assert!(dn.unwrap_or_default().contains("certuser"));

    // Without it, or with one from another CA: refused.
    for (what, cert) in [
        ("no client certificate", None),
        ("another CA's", Some(rogue)),
    ] {
        let e = connect_with_cert(&pg, &cfg, cert)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: connected"));
        println!("{what}: refused: {e}");
    }

    // store-node's backend (the gateway's) with the certificate.
    let mut store_cfg = PostgresConfig::new(
        format!("postgres://certuser@127.0.0.1:{}/postgres", pg.port),
        format!("cert_{}", suffix()),
    );
    store_cfg.ssl_mode = SslMode::VerifyFull;
    store_cfg.ca_pem = Some(pg.ca.clone());
    store_cfg.client_cert_pem = Some(pg.client_cert.clone());
    store_cfg.client_key_pem = Some(pg.client_key.clone());
    assert!(!format!("{store_cfg:?}").contains("PRIVATE KEY"));
    PostgresStore::connect(store_cfg.clone())
        .unwrap_or_else(|e| panic!("store: {e}"))
        .init_schema()
        .await
        .unwrap_or_else(|e| panic!("init_schema with a client certificate: {e}"));

    // The operator: an EventStore whose Secret holds tls.crt/tls.key and no password.
    let ns = env.test_namespace("pg-cert").await.unwrap();
    let client = ns.client().clone();
    let n = ns.name().to_string();
    install_crds(&client).await;
    let op = Operator::start(&client, &n);
    let base = [
        ("host", "127.0.0.1".to_string()),
        ("port", pg.port.to_string()),
        ("user", "certuser".to_string()),
        ("database", "postgres".to_string()),
        ("ca.crt", pg.ca.clone()),
    ];
    let with = |cert: &str, key: &str| {
        let mut m = BTreeMap::from(base.clone());
        m.insert("tls.crt", cert.to_string());
        m.insert("tls.key", key.to_string());
        m
    };
    secret(&client, &n, "pg-cert", with(good.0, good.1)).await;
    secret(&client, &n, "pg-rogue", with(rogue.0, rogue.1)).await;
    let mut half = BTreeMap::from(base.clone());
    half.insert("tls.crt", good.0.to_string());
    secret(&client, &n, "pg-half", half).await;
    let es: Api<EventStore> = Api::namespaced(client.clone(), &n);
    let schema = format!("allsource_cert_{}", suffix());
    for (name, secret, schema) in [
        ("orders", "pg-cert", schema.clone()),
        ("rogue", "pg-rogue", format!("allsource_cert_{}", suffix())),
        ("half", "pg-half", format!("allsource_cert_{}", suffix())),
    ] {
        es.create(&PostParams::default(), &store(name, secret, &schema))
            .await
            .unwrap();
    }
    let st = wait_status(&es, "orders", "client-certificate store Ready", |e, s| {
        s.phase == Some(Phase::Ready) && s.observed_generation == e.metadata.generation
    })
    .await;
    println!(
        "client-certificate store: Ready, provisioned {:?}",
        st.provisioned
    );
    let tables: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert!(tables >= 4, "tables of {schema}: {tables}");
    for (name, what) in [
        ("rogue", "another CA's certificate"),
        ("half", "tls.crt without tls.key"),
    ] {
        let st = wait_status(&es, name, &format!("{what}: Degraded"), |_, s| {
            condition(s, "Degraded").is_some_and(|c| c.0)
        })
        .await;
        let (_, reason, msg) = condition(&st, "Degraded").unwrap();
        println!("{what}: Degraded {reason}: {msg}");
        assert_eq!(condition(&st, "Ready").map(|c| c.0), Some(false));
        let json = serde_json::to_string(&st).unwrap();
        assert!(!json.contains("PRIVATE KEY"), "key in status");
    }
    op.stop().await;
    ns.cleanup().await.unwrap();
}
