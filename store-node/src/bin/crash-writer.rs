//! Test helper for `tests/tests/store_crash.rs`: appends through the embedded engine directly
//! (no HTTP) with tiny checkpoint, segment and compaction thresholds, so that a SIGKILL lands
//! in the middle of WAL writes, Parquet flushes, manifest renames and compactions.
//!
//! `crash-writer write <data-dir> <run> <writers>`: prints `SEND <stream> <ids>` before and
//! `ACK <stream>` after every acknowledged append (stdout, flushed), forever.
//! `crash-writer dump <data-dir>`: prints `EV <position> <stream> <version> <event-id>` for every
//! event of the tenant, then closes cleanly.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use store_node::engine::{Durability, Engine, EngineConfig};
use store_node::{EventStore, ExpectedVersion, NewEvent, StreamId, TenantId};
use uuid::Uuid;

fn config(dir: &str) -> EngineConfig {
    EngineConfig {
        durability: Durability::Fsync,
        wal_segment_bytes: 16 * 1024,
        checkpoint_wal_bytes: 48 * 1024,
        checkpoint_interval_ms: 10,
        row_group_rows: 64,
        compact_small_bytes: 256 * 1024,
        compact_min_segments: 3,
        ..EngineConfig::new(dir)
    }
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let tenant = TenantId::new("crash")?;
    match args.get(1).map(String::as_str) {
        Some("write") if args.len() == 5 => {
            let run: u64 = args[3].parse()?;
            let writers: u64 = args[4].parse()?;
            let engine = Arc::new(Engine::open(config(&args[2]))?);
            say("READY".into());
            let mut hs = Vec::new();
            for w in 0..writers {
                let e = engine.clone();
                let tenant = tenant.clone();
                hs.push(tokio::spawn(async move {
                    let stream = StreamId::new(format!("w{w}"))?;
                    for seq in 0u64.. {
                        let n = 1 + (seq * 7 + w) % 5;
                        let ids: Vec<Uuid> = (0..n)
                            .map(|i| Uuid::from_u64_pair(run << 32 | w, seq * 8 + i))
                            .collect();
                        let ids_text: Vec<String> = ids.iter().map(Uuid::to_string).collect();
                        say(format!("SEND {stream} {}", ids_text.join(",")));
                        let events = ids
                            .iter()
                            .map(|id| NewEvent {
                                event_id: *id,
                                event_type: "crash-test".into(),
                                payload: vec![(seq % 251) as u8; 100 + (seq % 300) as usize],
                                metadata: BTreeMap::new(),
                            })
                            .collect();
                        e.append(&tenant, &stream, ExpectedVersion::Any, events)
                            .await?;
                        say(format!("ACK {stream}"));
                    }
                    anyhow::Ok(())
                }));
            }
            for h in hs {
                h.await??;
            }
            Ok(())
        }
        Some("dump") if args.len() == 3 => {
            let engine = Engine::open(config(&args[2]))?;
            let mut from = 0;
            loop {
                let page = engine.read_all(&tenant, from, 1000).await?;
                let Some(last) = page.last() else { break };
                from = last.position + 1;
                for e in &page {
                    say(format!(
                        "EV {} {} {} {}",
                        e.position, e.stream, e.version, e.event_id
                    ));
                }
            }
            engine.close()?;
            Ok(())
        }
        _ => anyhow::bail!("usage: crash-writer write <dir> <run> <writers> | dump <dir>"),
    }
}
