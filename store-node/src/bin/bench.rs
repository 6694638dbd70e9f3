//! Engine benchmark: prints, in one run, the disk's own limit (sequential write + fsync), durable
//! batch ingest, 64 single-event writers (group commit), hot read latency, recovery time, and
//! the same batch ingest against PostgreSQL used as an event store when `PG_URL` is set.
//!
//! `cargo run --release -p store-node --bin bench -- [--events N] [--full] [--dir D]`
//! (`--full` = 10,000,000 events for recovery). Figures only; it asserts nothing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use store_node::engine::{Durability, Engine, EngineConfig};
use store_node::{Direction, EventStore, ExpectedVersion, NewEvent, ReadFrom, StreamId, TenantId};
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(about = "AllSource engine benchmark")]
struct Args {
    /// Events for the recovery measurement.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Full mode: 10,000,000 events for recovery.
    #[arg(long)]
    full: bool,
    /// Scratch directory (default: a new directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Batches for the ingest measurements.
    #[arg(long, default_value_t = 300)]
    batches: u64,
    /// Seconds for the 64-writer measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Durability of the ingest measurements: fsync or fdatasync.
    #[arg(long, default_value = "fsync")]
    durability: String,
    /// PostgreSQL URL for the comparison (default: env PG_URL).
    #[arg(long, env = "PG_URL")]
    pg_url: Option<String>,
}

const BATCH: usize = 1000;
const PAYLOAD: usize = 256;

fn batch(seq: u64) -> Vec<NewEvent> {
    (0..BATCH as u64)
        .map(|i| NewEvent {
            event_id: Uuid::from_u64_pair(seq, i),
            event_type: "Bench".into(),
            payload: vec![(i % 251) as u8; PAYLOAD],
            metadata: BTreeMap::new(),
        })
        .collect()
}

fn single(seq: u64, w: u64) -> Vec<NewEvent> {
    vec![NewEvent {
        event_id: Uuid::from_u64_pair(w, seq),
        event_type: "Bench".into(),
        payload: vec![7; PAYLOAD],
        metadata: BTreeMap::new(),
    }]
}

fn mb(bytes: f64) -> f64 {
    bytes / 1_000_000.0
}

/// Sequential writes of `chunk` bytes, each followed by fdatasync, and one large write + fsync.
fn disk_limit(dir: &Path, chunk: usize, n: usize) -> std::io::Result<(f64, f64, f64)> {
    let buf = vec![0x5au8; chunk];
    let p = dir.join("disk-probe");
    let mut f = std::fs::File::create(&p)?;
    let t = Instant::now();
    for _ in 0..n {
        f.write_all(&buf)?;
        f.sync_data()?;
    }
    let per_sync = (chunk * n) as f64 / t.elapsed().as_secs_f64();
    let sync_lat = t.elapsed().as_secs_f64() / n as f64;
    drop(f);
    std::fs::remove_file(&p)?;
    let big = vec![0x5au8; 8 << 20];
    let mut f = std::fs::File::create(&p)?;
    let t = Instant::now();
    for _ in 0..32 {
        f.write_all(&big)?;
    }
    f.sync_all()?;
    let raw = (32 * big.len()) as f64 / t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&p)?;
    Ok((per_sync, raw, sync_lat))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("allsource-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&base)?;
    let tenant = TenantId::new("bench")?;
    let batch_bytes = (BATCH * (PAYLOAD + 16 + 5 + 4 + 2 + 2)) as f64;
    println!(
        "AllSource engine benchmark (scratch dir {})",
        base.display()
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 1. The disk.
    let (disk_sync_bw, disk_raw_bw, sync_lat) = disk_limit(&base, batch_bytes as usize, 200)?;
    println!(
        "\n[disk] sequential {:.0} KB writes + fdatasync each: {:.1} MB/s ({:.2} ms per sync)",
        batch_bytes / 1000.0,
        mb(disk_sync_bw),
        sync_lat * 1000.0
    );
    println!(
        "[disk] sequential 256 MB write + one fsync: {:.1} MB/s",
        mb(disk_raw_bw)
    );

    // 2. Durable batch ingest, one writer: one fsync per batch.
    let dir = fresh(&base, "ingest");
    let mut cfg = EngineConfig::new(&dir);
    cfg.durability = match args.durability.as_str() {
        "fdatasync" => Durability::Fdatasync,
        _ => Durability::Fsync,
    };
    cfg.checkpoint_interval_ms = 0;
    let engine = Arc::new(Engine::open(cfg.clone())?);
    let batches: Vec<Vec<NewEvent>> = (0..args.batches).map(batch).collect();
    let stream = StreamId::new("ingest")?;
    let wal0 = engine.wal_bytes_written();
    let t = Instant::now();
    for b in batches {
        engine
            .append(&tenant, &stream, ExpectedVersion::Any, b)
            .await?;
    }
    let el = t.elapsed().as_secs_f64();
    let ev = (args.batches as usize * BATCH) as f64;
    let wal_bytes = (engine.wal_bytes_written() - wal0) as f64;
    let ingest_rate = ev / el;
    println!(
        "\n[ingest] 1 writer, batches of {BATCH} x {PAYLOAD} B, {} per batch: {:.0} events/s, {:.1} MB/s of WAL ({:.0}% of the disk's write+fsync bandwidth, {:.0}% of raw)",
        args.durability,
        ev / el,
        mb(wal_bytes / el),
        100.0 * wal_bytes / el / disk_sync_bw,
        100.0 * wal_bytes / el / disk_raw_bw
    );
    drop(engine);

    // 2b. Same with 4 concurrent batch writers (batches share fsyncs).
    let dir = fresh(&base, "ingest4");
    let mut cfg4 = cfg.clone();
    cfg4.data_dir = dir;
    let engine = Arc::new(Engine::open(cfg4)?);
    let wal0 = engine.wal_bytes_written();
    let t = Instant::now();
    let mut hs = Vec::new();
    for w in 0..4u64 {
        let e = engine.clone();
        let tenant = tenant.clone();
        let n = args.batches / 4;
        hs.push(tokio::spawn(async move {
            let s = StreamId::new(format!("ingest-{w}"))?;
            for i in 0..n {
                e.append(&tenant, &s, ExpectedVersion::Any, batch(w << 32 | i))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in hs {
        h.await??;
    }
    let el = t.elapsed().as_secs_f64();
    let ev4 = ((args.batches / 4) * 4) as f64 * BATCH as f64;
    let wal_bytes = (engine.wal_bytes_written() - wal0) as f64;
    println!(
        "[ingest] 4 writers, batches of {BATCH} x {PAYLOAD} B, fsync per group: {:.0} events/s, {:.1} MB/s ({:.0}% of raw disk bandwidth)",
        ev4 / el,
        mb(wal_bytes / el),
        100.0 * wal_bytes / el / disk_raw_bw
    );
    drop(engine);

    // 3. 64 concurrent single-event writers: group commit.
    let dir = fresh(&base, "single");
    let mut cfg64 = cfg.clone();
    cfg64.data_dir = dir;
    let engine = Arc::new(Engine::open(cfg64)?);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let t = Instant::now();
    let mut hs = Vec::new();
    for w in 0..64u64 {
        let e = engine.clone();
        let tenant = tenant.clone();
        hs.push(tokio::spawn(async move {
            let s = StreamId::new(format!("w-{w}"))?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                e.append(&tenant, &s, ExpectedVersion::Any, single(n, w))
                    .await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for h in hs {
        total += h.await??;
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "\n[group commit] 64 writers, single {PAYLOAD} B events, fsync per group: {:.0} events/s ({:.1} events per fsync on average if the disk does {:.0} syncs/s)",
        total as f64 / el,
        (total as f64 / el) * sync_lat,
        1.0 / sync_lat
    );

    // 4. Hot read of a 100-event stream, in process.
    let s100 = StreamId::new("hot-100")?;
    let mut evs = batch(u64::MAX - 1);
    evs.truncate(100);
    engine
        .append(&tenant, &s100, ExpectedVersion::NoStream, evs)
        .await?;
    let iters = 20_000;
    let mut lat = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let r = engine
            .read_stream(&tenant, &s100, ReadFrom::Edge, Direction::Forwards, 100)
            .await?;
        lat.push(t.elapsed());
        std::hint::black_box(r);
    }
    lat.sort();
    println!(
        "\n[hot read] read_stream of 100 events (owned copies): p50 {:.1} us, p99 {:.1} us",
        pct(&lat, 0.5).as_secs_f64() * 1e6,
        pct(&lat, 0.99).as_secs_f64() * 1e6
    );
    let mut lat = Vec::with_capacity(iters);
    let mut sum = 0usize;
    for _ in 0..iters {
        let t = Instant::now();
        engine.visit_stream(&tenant, &s100, 0, 100, |e| sum += e.payload.len())?;
        lat.push(t.elapsed());
    }
    std::hint::black_box(sum);
    lat.sort();
    println!(
        "[hot read] visit_stream of 100 events (borrowed, no copy): p50 {:.2} us, p99 {:.2} us",
        pct(&lat, 0.5).as_secs_f64() * 1e6,
        pct(&lat, 0.99).as_secs_f64() * 1e6
    );
    let mut lat = Vec::with_capacity(iters);
    for i in 0..iters {
        let t = Instant::now();
        let r = engine
            .read_stream(
                &tenant,
                &s100,
                ReadFrom::Version((i % 100) as u64),
                Direction::Forwards,
                1,
            )
            .await?;
        lat.push(t.elapsed());
        std::hint::black_box(r);
    }
    lat.sort();
    println!(
        "[hot read] read_stream of 1 event: p50 {:.2} us, p99 {:.2} us",
        pct(&lat, 0.5).as_secs_f64() * 1e6,
        pct(&lat, 0.99).as_secs_f64() * 1e6
    );
    drop(engine);

    // 5. Recovery.
    let n = if args.full { 10_000_000 } else { args.events };
    for (label, checkpoints) in [
        ("default config (checkpoints every 256 MiB of WAL)", true),
        ("WAL only (checkpoints off)", false),
    ] {
        let dir = fresh(&base, "recovery");
        let mut rcfg = EngineConfig::new(&dir);
        rcfg.durability = Durability::None; // loading speed only; recovery reads the same files
        if !checkpoints {
            rcfg.checkpoint_interval_ms = 0;
            rcfg.checkpoint_wal_bytes = u64::MAX;
        }
        let engine = Arc::new(Engine::open(rcfg.clone())?);
        let t = Instant::now();
        let per_writer = n.div_ceil(BATCH as u64) / 4;
        let mut hs = Vec::new();
        for w in 0..4u64 {
            let e = engine.clone();
            let tenant = tenant.clone();
            hs.push(tokio::spawn(async move {
                for i in 0..per_writer {
                    let s = StreamId::new(format!("r-{}", (w * per_writer + i) % 1000))?;
                    e.append(&tenant, &s, ExpectedVersion::Any, batch(w << 40 | i))
                        .await?;
                }
                anyhow::Ok(())
            }));
        }
        for h in hs {
            h.await??;
        }
        let loaded = per_writer * 4 * BATCH as u64;
        let load_s = t.elapsed().as_secs_f64();
        // Process-death style stop: no final checkpoint.
        match Arc::try_unwrap(engine) {
            Ok(e) => e.halt(),
            Err(_) => anyhow::bail!("engine still shared"),
        }
        let t = Instant::now();
        let engine = Engine::open(rcfg.clone())?;
        let rec = t.elapsed();
        let stats = engine.stats(&tenant).await?;
        anyhow::ensure!(
            stats.events == loaded,
            "recovered {} of {loaded}",
            stats.events
        );
        println!(
            "\n[recovery] {label}: {loaded} events (loaded in {load_s:.1} s), crash, reopen: {:.2} s",
            rec.as_secs_f64()
        );
        if !checkpoints {
            let t = Instant::now();
            let rep = engine.checkpoint()?;
            println!(
                "[recovery] checkpoint of those {} events to Parquet: {} segment(s), {:.2} s",
                rep.events_flushed,
                rep.segments_written,
                t.elapsed().as_secs_f64()
            );
            drop(engine);
            let t = Instant::now();
            let engine = Engine::open(rcfg)?;
            println!(
                "[recovery] reopen after that checkpoint (manifest only, WAL empty): {:.3} s",
                t.elapsed().as_secs_f64()
            );
            drop(engine);
        }
    }

    // 6. PostgreSQL as an event store.
    let engine_rate = ingest_rate;
    #[cfg(feature = "postgres")]
    if let Some(url) = &args.pg_url {
        match pg_ingest(url, args.batches.min(100)).await {
            Ok((rate, fsync, sc)) => println!(
                "\n[postgres] fsync={fsync} synchronous_commit={sc}: batches of {BATCH} x {PAYLOAD} B, one transaction per batch: {rate:.0} events/s; engine/PostgreSQL = {:.1}x",
                engine_rate / el_or_one(rate)
            ),
            Err(e) => println!("\n[postgres] skipped: {e}"),
        }
    }
    #[cfg(not(feature = "postgres"))]
    let _ = (&args.pg_url, engine_rate);
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

#[cfg(feature = "postgres")]
fn el_or_one(x: f64) -> f64 {
    if x > 0.0 {
        x
    } else {
        1.0
    }
}

#[cfg(feature = "postgres")]
async fn pg_ingest(url: &str, batches: u64) -> anyhow::Result<(f64, String, String)> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("postgres connection: {e}");
        }
    });
    let fsync: String = client.query_one("SHOW fsync", &[]).await?.get(0);
    client.batch_execute("SET synchronous_commit = on").await?;
    let sc: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await?
        .get(0);
    client
        .batch_execute(
            "DROP TABLE IF EXISTS bench_events;
             CREATE TABLE bench_events (
               tenant text NOT NULL, stream text NOT NULL, version bigint NOT NULL,
               position bigint NOT NULL, event_id uuid NOT NULL, event_type text NOT NULL,
               payload bytea NOT NULL, metadata jsonb NOT NULL DEFAULT '{}',
               ts timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (tenant, stream, version));
             CREATE UNIQUE INDEX ON bench_events (tenant, position);",
        )
        .await?;
    let stmt = client
        .prepare(
            "INSERT INTO bench_events (tenant, stream, version, position, event_id, event_type, payload)
             SELECT 'bench', 'ingest', v, v, id, 'Bench', p
             FROM unnest($1::bigint[], $2::uuid[], $3::bytea[]) AS t(v, id, p)",
        )
        .await?;
    let t = Instant::now();
    let mut v = 0i64;
    for b in 0..batches {
        let evs = batch(b);
        let versions: Vec<i64> = (v..v + BATCH as i64).collect();
        v += BATCH as i64;
        let ids: Vec<Uuid> = evs.iter().map(|e| e.event_id).collect();
        let payloads: Vec<Vec<u8>> = evs.into_iter().map(|e| e.payload).collect();
        client.batch_execute("BEGIN").await?;
        client.execute(&stmt, &[&versions, &ids, &payloads]).await?;
        client.batch_execute("COMMIT").await?;
    }
    let rate = (batches as usize * BATCH) as f64 / t.elapsed().as_secs_f64();
    client.batch_execute("DROP TABLE bench_events").await?;
    Ok((rate, fsync, sc))
}
