//! http-bench: latency of a hot stream read over HTTP. Starts the real router (the same
//! `server::serve` as `store-node serve`) on a loopback port over the chosen backend, appends
//! one stream of `--events` events, then issues `--requests` sequential
//! `GET /v1/streams/{s}/events?limit=<events>` calls on one keep-alive connection and prints
//! p50/p90/p99/max. Also measures single-event appends. The client is a minimal HTTP/1.1
//! writer/reader so that the figures are the server's, not a client library's.
//! Never used by tests; run it by hand: `cargo run --release -p store-node --bin http-bench`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use store_node::backend::memory::MemoryStore;
use store_node::backend::EventStore;
use store_node::engine::{Engine, EngineConfig};
use store_node::server::{self, ServerConfig};
use store_node::tenant::{sha256_hex, Registry, RegistryFile};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

struct Args {
    events: usize,
    requests: usize,
    backend: String,
    durability: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        events: 100,
        requests: 5000,
        backend: "engine".into(),
        durability: "fsync".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let val = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--events" => a.events = val.parse()?,
            "--requests" => a.requests = val.parse()?,
            "--backend" => a.backend = val,
            "--durability" => a.durability = val,
            other => {
                bail!("unknown flag {other} (flags: --events N --requests N --backend engine|memory|postgres|dynamodb|firestore --durability fsync|fdatasync|none)")
            }
        }
    }
    Ok(a)
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    io: BufReader<TcpStream>,
    token: String,
}

impl Conn {
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.token,
            body.len()
        );
        let s = self.io.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(body.as_bytes()).await?;
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.io.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                }
            }
        }
        let mut buf = vec![0; len];
        self.io.read_exact(&mut buf).await?;
        Ok((status, buf))
    }
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
    format!(
        "n={} p50={:.0}us p90={:.0}us p99={:.0}us max={:.0}us",
        v.len(),
        p(0.50),
        p(0.90),
        p(0.99),
        p(1.0)
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = std::env::temp_dir().join(format!("allsource-http-bench-{}", std::process::id()));
    let mut engine = None;
    let store: Arc<dyn EventStore> = match args.backend.as_str() {
        "memory" => Arc::new(MemoryStore::default()),
        "engine" => {
            let cfg: EngineConfig = serde_json::from_value(serde_json::json!({
                "dataDir": dir,
                "durability": {"mode": args.durability},
            }))?;
            let e = Arc::new(Engine::open(cfg)?);
            engine = Some(e.clone());
            e
        }
        // Cloud backends on the servers of tests/env (`set -a; . tests/env/.env`), each run in
        // its own schema / table; Firestore runs on the emulator, which is not production
        // Firestore (one JVM process, pessimistic locks, no network).
        "postgres" => {
            use store_node::backend::postgres::{PostgresConfig, PostgresStore};
            let url = std::env::var("PG_URL").context("PG_URL")?;
            let schema = format!("http_bench_{}", std::process::id());
            let s = PostgresStore::connect(PostgresConfig::new(url, schema))?;
            s.init_schema().await?;
            Arc::new(s)
        }
        "dynamodb" => {
            use store_node::backend::dynamodb::{DynamoConfig, DynamoStore, StaticCredentials};
            let table = format!("http-bench-{}", std::process::id());
            let mut cfg = DynamoConfig::new(table, "us-east-1");
            cfg.endpoint = Some(std::env::var("DYNAMODB_ENDPOINT").context("DYNAMODB_ENDPOINT")?);
            cfg.credentials = Some(StaticCredentials {
                access_key_id: "test".into(),
                secret_access_key: "test".into(),
            });
            let s = DynamoStore::connect(cfg).await?;
            s.ensure_table().await?;
            Arc::new(s)
        }
        "firestore" => {
            use store_node::backend::firestore::{FirestoreConfig, FirestoreStore};
            let host =
                std::env::var("FIRESTORE_EMULATOR_HOST").context("FIRESTORE_EMULATOR_HOST")?;
            let project = std::env::var("FIRESTORE_PROJECT").unwrap_or_else(|_| "bench".into());
            Arc::new(FirestoreStore::connect(FirestoreConfig::emulator(
                project, &host,
            ))?)
        }
        other => bail!("unknown backend {other}"),
    };
    let token = "bench-token".to_string();
    let file = RegistryFile::parse(
        format!(
            r#"{{"version":1,"tenants":[{{"id":"bench","tokenSha256":["{}"]}}]}}"#,
            sha256_hex(&token)
        )
        .as_bytes(),
    )?;
    let registry = Arc::new(Registry::fixed(&file)?);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = ServerConfig {
        listen: addr,
        ..ServerConfig::default()
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(server::serve(store, registry, config, shutdown.clone()));
    let stream = loop {
        match TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    stream.set_nodelay(true)?;
    let mut c = Conn {
        io: BufReader::new(stream),
        token,
    };

    let mut appends = Vec::with_capacity(args.events);
    for i in 0..args.events {
        let body = format!(
            r#"{{"events":[{{"eventId":"{}","eventType":"bench","data":{{"i":{i},"pad":"0123456789abcdef0123456789abcdef"}}}}]}}"#,
            uuid::Uuid::new_v4()
        );
        let t = Instant::now();
        let (status, _) = c.request("POST", "/v1/streams/hot/events", &body).await?;
        appends.push(t.elapsed());
        if status != 201 {
            bail!("append answered {status}");
        }
    }
    let path = format!("/v1/streams/hot/events?limit={}", args.events);
    for _ in 0..100 {
        c.request("GET", &path, "").await?;
    }
    let mut reads = Vec::with_capacity(args.requests);
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..args.requests {
        let t = Instant::now();
        let (status, body) = c.request("GET", &path, "").await?;
        reads.push(t.elapsed());
        if status != 200 {
            bail!("read answered {status}");
        }
        bytes = body.len();
    }
    let total = started.elapsed();
    let store = if args.backend == "engine" {
        format!("engine(durability={})", args.durability)
    } else {
        args.backend.clone()
    };
    println!(
        "store={store} read of a {}-event stream ({} bytes/response): {} ({:.0} req/s, one connection)",
        args.events,
        bytes,
        percentiles(reads),
        args.requests as f64 / total.as_secs_f64()
    );
    println!(
        "store={store} single-event append: {}",
        percentiles(appends)
    );
    shutdown.cancel();
    server.await??;
    if let Some(e) = engine {
        e.close()?;
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
