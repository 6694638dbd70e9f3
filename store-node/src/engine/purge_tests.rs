//! Tenant purge: nothing of the purged tenant survives a restart (replayed from the WAL or read
//! from the manifest), its segment files are deleted, other tenants keep every event, and the
//! tenant can start again from position 0 without meeting its erased files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use uuid::Uuid;

use super::*;
use crate::backend::EventStore;
use crate::fsio::{FileSystem, SimFs};

pub(super) fn tid(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

pub(super) fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

pub(super) fn evs(from: u128, n: u128) -> Vec<NewEvent> {
    (from..from + n)
        .map(|i| NewEvent {
            event_id: Uuid::from_u128(i),
            event_type: "Happened".into(),
            payload: format!("{{\"i\":{i}}}").into_bytes(),
            metadata: BTreeMap::new(),
        })
        .collect()
}

fn config() -> EngineConfig {
    EngineConfig {
        checkpoint_interval_ms: 0,
        row_group_rows: 4,
        ..EngineConfig::new("/data")
    }
}

fn open(fs: &SimFs) -> Engine {
    Engine::open_with_fs(config(), Arc::new(fs.clone())).unwrap()
}

async fn all(e: &Engine, t: &TenantId) -> Vec<RecordedEvent> {
    e.read_all(t, 0, 10_000).await.unwrap()
}

fn segment_files(fs: &SimFs, t: &str) -> Vec<String> {
    let (_, seg_dir, _) = layout(Path::new("/data"));
    let mut files = fs.list(&seg_dir.join(t)).unwrap_or_default();
    files.sort();
    files
}

/// Everything a client could still learn about the tenant is empty.
async fn assert_erased(e: &Engine, t: &TenantId, what: &str) {
    assert!(all(e, t).await.is_empty(), "{what}: events came back");
    // Nothing but the incarnation (one more per purge) is left.
    let stats = e.stats(t).await.unwrap();
    assert_eq!(
        stats,
        TenantStats {
            incarnation: stats.incarnation,
            ..TenantStats::default()
        },
        "{what}"
    );
    assert!(
        stats.incarnation > 0,
        "{what}: a purge counts an incarnation"
    );
    assert!(
        e.list_streams(t, None, 100).await.unwrap().is_empty(),
        "{what}"
    );
    assert_eq!(e.count_streams(t).await.unwrap(), 0, "{what}");
    assert!(
        e.load_snapshot(t, &sid("s0")).await.unwrap().is_none(),
        "{what}"
    );
    assert!(
        matches!(
            e.read_stream(t, &sid("s0"), ReadFrom::Version(0), Direction::Forwards, 10)
                .await,
            Err(StoreError::NotFound(_))
        ),
        "{what}: stream still readable"
    );
}

async fn fill(e: &Engine, t: &TenantId, base: u128, batches: u128) {
    for i in 0..batches {
        e.append(
            t,
            &sid(&format!("s{}", i % 3)),
            ExpectedVersion::Any,
            evs(base + i * 10, 3),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn purge_replayed_from_the_wal_after_a_power_loss_brings_nothing_back() {
    let fs = SimFs::new();
    let e = open(&fs);
    let (a, b) = (tid("gone"), tid("kept"));
    fill(&e, &a, 0, 4).await;
    fill(&e, &b, 1000, 4).await;
    e.save_snapshot(
        &a,
        Snapshot {
            stream: sid("s0"),
            version: 1,
            payload: b"state".to_vec(),
            metadata: BTreeMap::new(),
            timestamp_ms: 0,
        },
    )
    .await
    .unwrap();
    let kept = all(&e, &b).await;
    // Only the WAL record, no checkpoint: recovery must apply the purge itself.
    assert!(e.inner.submit_purge(&a).await.unwrap());
    assert_erased(&e, &a, "live").await;
    e.halt();
    fs.crash();
    let e = open(&fs);
    assert_erased(&e, &a, "after replay").await;
    assert_eq!(all(&e, &b).await, kept);
    // Nothing of a tenant this node never held: no record, no error.
    assert!(!e.inner.submit_purge(&tid("never")).await.unwrap());
}

#[tokio::test]
async fn purge_after_segments_deletes_them_and_survives_restarts() {
    let fs = SimFs::new();
    let e = open(&fs);
    let (a, b) = (tid("gone"), tid("kept"));
    fill(&e, &a, 0, 4).await;
    fill(&e, &b, 1000, 4).await;
    e.checkpoint().unwrap();
    fill(&e, &a, 100, 4).await;
    e.checkpoint().unwrap();
    fill(&e, &a, 200, 2).await; // hot, only in the WAL
    let erased_files = segment_files(&fs, "gone");
    assert_eq!(erased_files.len(), 2, "{erased_files:?}");
    let kept = all(&e, &b).await;
    let kept_files = segment_files(&fs, "kept");

    e.purge_tenant(&a).await.unwrap();
    assert_erased(&e, &a, "live").await;
    assert!(
        segment_files(&fs, "gone").is_empty(),
        "segment files of the purged tenant remain"
    );
    assert_eq!(segment_files(&fs, "kept"), kept_files);
    e.halt();
    fs.crash();
    let e = open(&fs);
    assert_erased(&e, &a, "after power loss").await;
    assert_eq!(all(&e, &b).await, kept);

    // The tenant starts again at position 0 in a new incarnation: its first segment covers the
    // positions of an erased one but never gets its name (nor its cached row groups), and reads
    // show the new events only.
    let r = e
        .append(&a, &sid("fresh"), ExpectedVersion::NoStream, evs(5000, 3))
        .await
        .unwrap();
    assert_eq!((r.first_position, r.first_version), (0, 0));
    fill(&e, &a, 6000, 3).await;
    e.checkpoint().unwrap();
    let now = segment_files(&fs, "gone");
    assert!(!now.is_empty());
    assert!(
        now.iter().all(|f| !erased_files.contains(f)),
        "{now:?} vs {erased_files:?}"
    );
    e.close().unwrap();
    drop(e);
    let e = open(&fs);
    let got = all(&e, &a).await;
    assert_eq!(got.len(), 12);
    assert!(
        got.iter().all(|ev| ev.event_id.as_u128() >= 5000),
        "erased event read back"
    );
    assert_eq!(all(&e, &b).await, kept);
}

#[tokio::test]
async fn power_loss_between_purge_record_and_checkpoint_deletes_the_files_at_open() {
    let fs = SimFs::new();
    let e = open(&fs);
    let (a, b) = (tid("gone"), tid("kept"));
    fill(&e, &a, 0, 5).await;
    fill(&e, &b, 1000, 5).await;
    e.checkpoint().unwrap();
    assert!(!segment_files(&fs, "gone").is_empty());
    let kept = all(&e, &b).await;
    assert!(e.inner.submit_purge(&a).await.unwrap());
    e.halt();
    fs.crash();
    let e = open(&fs);
    assert!(
        segment_files(&fs, "gone").is_empty(),
        "erased segments left on disk"
    );
    assert_erased(&e, &a, "after open").await;
    assert_eq!(all(&e, &b).await, kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purges_interleaved_with_other_tenants_appends_lose_none_of_theirs() {
    let fs = SimFs::new();
    let e = Arc::new(open(&fs));
    let (a, b) = (tid("gone"), tid("kept"));
    let writer = {
        let (e, b) = (e.clone(), b.clone());
        tokio::spawn(async move {
            for i in 0..200u128 {
                e.append(
                    &b,
                    &sid(&format!("w{}", i % 4)),
                    ExpectedVersion::Any,
                    evs(i * 4, 2),
                )
                .await
                .unwrap();
            }
        })
    };
    for round in 0..10u128 {
        // Writes racing a purge are either erased or refused while it is pending, never lost
        // halfway: afterwards the tenant holds only what was acknowledged after the purge.
        let _ = e
            .append(
                &a,
                &sid("s0"),
                ExpectedVersion::Any,
                evs(100_000 + round * 10, 3),
            )
            .await;
        e.purge_tenant(&a).await.unwrap();
        assert_erased(&e, &a, &format!("round {round}")).await;
        if round % 3 == 0 {
            e.checkpoint().unwrap();
        }
    }
    writer.await.unwrap();
    let kept = all(&e, &b).await;
    assert_eq!(kept.len(), 400);
    assert!(kept.windows(2).all(|w| w[0].position + 1 == w[1].position));
    let e = Arc::into_inner(e).unwrap();
    e.halt();
    fs.crash();
    let e = open(&fs);
    assert_eq!(all(&e, &b).await, kept);
    assert_erased(&e, &a, "after restart").await;
}

/// Pauses the first checkpoint that writes the manifest (it has read every tenant's state and
/// written its segments, but not yet attached them): returns (paused, resume).
fn pause_at_manifest_write(
    fs: &SimFs,
) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    let (paused_tx, paused_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let once = parking_lot::Mutex::new(Some((paused_tx, go_rx)));
    fs.set_write_hook(Some(Arc::new(move |p: &Path| {
        if !p.ends_with("manifest.json.tmp") {
            return;
        }
        let Some((paused, go)) = once.lock().take() else {
            return;
        };
        paused.send(()).unwrap();
        go.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
    })));
    (paused_rx, go_tx)
}

/// The re-created tenant holds exactly the events written after the purge.
async fn assert_only_new(e: &Engine, t: &TenantId, n: usize, what: &str) {
    let got = all(e, t).await;
    let old: Vec<_> = got
        .iter()
        .filter(|ev| ev.event_id.as_u128() < 5000)
        .map(|ev| (ev.stream.to_string(), ev.version, ev.position))
        .collect();
    assert!(
        old.is_empty(),
        "{what}: purged events served again: {old:?}"
    );
    assert_eq!(got.len(), n, "{what}: {got:?}");
    let s0 = e
        .read_stream(
            t,
            &sid("s0"),
            ReadFrom::Version(0),
            Direction::Forwards,
            100,
        )
        .await
        .unwrap();
    assert!(
        s0.iter().all(|ev| ev.event_id.as_u128() >= 5000),
        "{what}: purged events in the stream read: {s0:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_during_a_checkpoint_never_reattaches_the_erased_segment() {
    let fs = SimFs::new();
    let e = Arc::new(open(&fs));
    let (a, b) = (tid("gone"), tid("kept"));
    fill(&e, &a, 0, 4).await;
    fill(&e, &b, 1000, 4).await;
    let kept = all(&e, &b).await;

    let (paused, resume) = pause_at_manifest_write(&fs);
    let ck = {
        let e = e.clone();
        std::thread::spawn(move || e.checkpoint())
    };
    paused
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    // The checkpoint holds the old tenant's events in a segment it is about to attach. The
    // purge is applied by the WAL now; its own checkpoint waits for the paused one.
    let purge = {
        let (e, a) = (e.clone(), a.clone());
        tokio::spawn(async move { e.purge_tenant(&a).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while e.stats(&a).await.unwrap().events != 0 {
        assert!(std::time::Instant::now() < deadline, "purge never applied");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    resume.send(()).unwrap();
    ck.join().unwrap().unwrap();
    purge.await.unwrap().unwrap();
    assert_erased(&e, &a, "after the racing checkpoint").await;
    assert!(
        segment_files(&fs, "gone").is_empty(),
        "the segment written for the purged tenant remains: {:?}",
        segment_files(&fs, "gone")
    );

    // Re-created with the same id and the same stream names (same versions and positions).
    fill(&e, &a, 5000, 2).await;
    assert_only_new(&e, &a, 6, "re-created, hot").await;
    e.checkpoint().unwrap();
    assert_only_new(&e, &a, 6, "re-created, checkpointed").await;
    assert_eq!(all(&e, &b).await, kept);
    let e = Arc::into_inner(e).unwrap();
    e.close().unwrap();
    drop(e);
    let e = open(&fs);
    assert_only_new(&e, &a, 6, "after reopen").await;
    assert_eq!(all(&e, &b).await, kept);
    e.halt();
    fs.crash();
    let e = open(&fs);
    assert_only_new(&e, &a, 6, "after power loss").await;
    assert_eq!(all(&e, &b).await, kept);
}
