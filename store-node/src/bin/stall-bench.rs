//! Cross-tenant stall benchmark: how long one tenant's appends wait while another tenant with
//! many streams is checkpointed again and again (and keeps appending), against the same appends
//! with no checkpoint running, in one run.
//!
//! `cargo run --release -p store-node --bin stall-bench -- [--streams N] [--seconds S]`
//!
//! Durability is `none` here so that the figures show lock waits, not the disk's fsync time.
//! Figures only; it asserts nothing.

// The ids in `measure` are valid constants of this program.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use store_node::engine::{Durability, Engine, EngineConfig};
use store_node::{EventStore, ExpectedVersion, NewEvent, StreamId, TenantId};
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(about = "AllSource cross-tenant stall benchmark")]
struct Args {
    /// Streams of the big tenant (one event each).
    #[arg(long, default_value_t = 500_000)]
    streams: u64,
    /// Seconds per figure (at least 15 for a figure worth comparing).
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Scratch directory (default: a new directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn one(a: u64, b: u64) -> Vec<NewEvent> {
    vec![NewEvent {
        event_id: Uuid::from_u64_pair(a, b),
        event_type: "Bench".into(),
        payload: vec![7; 256],
        metadata: BTreeMap::new(),
    }]
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Figures {
    small: Vec<Duration>,
    big_max: Duration,
    checkpoints: u64,
    checkpoint_max: Duration,
}

/// For `seconds`: the small tenant appends single events one after the other (latencies
/// recorded), the big tenant appends too, and with `checkpoints` a thread checkpoints in a loop.
async fn measure(engine: &Arc<Engine>, seconds: u64, checkpoints: bool, round: u64) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let ck_count = Arc::new(AtomicU64::new(0));
    let ck_max = Arc::new(AtomicU64::new(0));
    let ck = checkpoints.then(|| {
        let (e, stop, n, max) = (
            engine.clone(),
            stop.clone(),
            ck_count.clone(),
            ck_max.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if let Err(err) = e.checkpoint() {
                    eprintln!("checkpoint failed: {err}");
                    return;
                }
                max.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                n.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    let big = {
        let (e, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move {
            let t = TenantId::new("big").expect("id");
            let mut max = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let s = StreamId::new(format!("s{}", i % 1000)).expect("id");
                let t0 = Instant::now();
                if e.append(&t, &s, ExpectedVersion::Any, one(1_000_000 + round, i))
                    .await
                    .is_err()
                {
                    break;
                }
                max = max.max(t0.elapsed());
                i += 1;
            }
            max
        })
    };
    let small = TenantId::new("small").expect("id");
    let s = StreamId::new("orders").expect("id");
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut i = 0u64;
    while Instant::now() < end {
        let t0 = Instant::now();
        if let Err(e) = engine
            .append(&small, &s, ExpectedVersion::Any, one(2_000_000 + round, i))
            .await
        {
            eprintln!("append failed: {e}");
            break;
        }
        lat.push(t0.elapsed());
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let big_max = big.await.unwrap_or_default();
    if let Some(h) = ck {
        let _ = h.join();
    }
    lat.sort();
    Figures {
        small: lat,
        big_max,
        checkpoints: ck_count.load(Ordering::Relaxed),
        checkpoint_max: Duration::from_micros(ck_max.load(Ordering::Relaxed)),
    }
}

fn report(label: &str, f: &Figures) {
    println!(
        "[{label}] small tenant: {} appends, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, p99.99 {:.0} us, max {:.0} us; big tenant's append max {:.0} us; {} checkpoints (longest {:.0} ms)",
        f.small.len(),
        us(pct(&f.small, 0.5)),
        us(pct(&f.small, 0.99)),
        us(pct(&f.small, 0.999)),
        us(pct(&f.small, 0.9999)),
        us(f.small.last().copied().unwrap_or_default()),
        us(f.big_max),
        f.checkpoints,
        f.checkpoint_max.as_secs_f64() * 1e3,
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("allsource-stall-bench-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let mut cfg = EngineConfig::new(&base);
    cfg.durability = Durability::None;
    cfg.checkpoint_interval_ms = 0;
    cfg.checkpoint_wal_bytes = u64::MAX / 4;
    let engine = Arc::new(Engine::open(cfg)?);
    println!(
        "AllSource cross-tenant stall benchmark: big tenant with {} streams, {} s per figure, durability none, {} cores",
        args.streams,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let t = Instant::now();
    let big = TenantId::new("big")?;
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let (e, big) = (engine.clone(), big.clone());
        let n = args.streams;
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let s = StreamId::new(format!("stream-{i:09}"))?;
                e.append(&big, &s, ExpectedVersion::Any, one(0, i)).await?;
                i += 64;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    engine.checkpoint()?;
    println!(
        "[setup] {} streams of the big tenant written and checkpointed in {:.1} s",
        args.streams,
        t.elapsed().as_secs_f64()
    );
    let quiet = measure(&engine, args.seconds, false, 1).await;
    report("no checkpoint", &quiet);
    let busy = measure(&engine, args.seconds, true, 2).await;
    report("checkpoints of the big tenant in a loop", &busy);
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "[ratio] small tenant's append with checkpoints / without: p99 {:.2}x, p99.9 {:.2}x, max {:.2}x",
        ratio(pct(&busy.small, 0.99), pct(&quiet.small, 0.99)),
        ratio(pct(&busy.small, 0.999), pct(&quiet.small, 0.999)),
        ratio(
            busy.small.last().copied().unwrap_or_default(),
            quiet.small.last().copied().unwrap_or_default()
        ),
    );
    if let Ok(e) = Arc::try_unwrap(engine) {
        e.close()?;
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
