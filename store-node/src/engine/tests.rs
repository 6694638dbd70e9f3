//! Engine unit tests: semantics of every operation, recovery (clean, torn tail, simulated power
//! loss through `SimFs`, after a Parquet checkpoint), subscriptions under concurrent appends,
//! and the bit-flip property of the WAL.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::backend::EventStore;
use crate::fsio::SimFs;
use crate::model::Limits;
use crate::wal::CorruptionPolicy;

fn tid(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn ev(i: u128) -> NewEvent {
    let mut metadata = BTreeMap::new();
    metadata.insert("n".to_string(), i.to_string());
    NewEvent {
        event_id: Uuid::from_u128(i),
        event_type: "Happened".into(),
        payload: format!("{{\"i\":{i}}}").into_bytes(),
        metadata,
    }
}

fn evs(from: u128, n: u128) -> Vec<NewEvent> {
    (from..from + n).map(ev).collect()
}

fn sim_config() -> EngineConfig {
    EngineConfig {
        checkpoint_interval_ms: 0,
        row_group_rows: 4,
        ..EngineConfig::new("/data")
    }
}

fn open_sim(fs: &SimFs) -> Engine {
    Engine::open_with_fs(sim_config(), Arc::new(fs.clone())).unwrap()
}

async fn all(e: &Engine, t: &TenantId) -> Vec<RecordedEvent> {
    e.read_all(t, 0, 10_000).await.unwrap()
}

#[tokio::test]
async fn append_and_read_forwards_backwards() {
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let (t, s) = (tid("acme"), sid("order-1"));
    let r = e
        .append(&t, &s, ExpectedVersion::NoStream, evs(1, 3))
        .await
        .unwrap();
    assert_eq!((r.first_version, r.last_version), (0, 2));
    assert_eq!((r.first_position, r.last_position), (0, 2));
    e.append(&t, &sid("other"), ExpectedVersion::Any, evs(10, 1))
        .await
        .unwrap();
    let r2 = e
        .append(&t, &s, ExpectedVersion::Exact(2), evs(4, 2))
        .await
        .unwrap();
    assert_eq!((r2.first_version, r2.first_position), (3, 4));
    let fwd = e
        .read_stream(&t, &s, ReadFrom::Version(1), Direction::Forwards, 3)
        .await
        .unwrap();
    assert_eq!(
        fwd.iter().map(|x| x.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(fwd[0].payload, ev(2).payload);
    assert_eq!(fwd[0].metadata, ev(2).metadata);
    let back = e
        .read_stream(&t, &s, ReadFrom::Edge, Direction::Backwards, 10)
        .await
        .unwrap();
    assert_eq!(
        back.iter().map(|x| x.version).collect::<Vec<_>>(),
        vec![4, 3, 2, 1, 0]
    );
    let ra = all(&e, &t).await;
    assert_eq!(
        ra.iter().map(|x| x.position).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5]
    );
    assert_eq!(ra[3].stream, sid("other"));
    assert!(matches!(
        e.read_stream(&t, &sid("nope"), ReadFrom::Edge, Direction::Forwards, 1)
            .await,
        Err(StoreError::NotFound(_))
    ));
    // Tenants are isolated: another tenant sees nothing and positions start at 0.
    assert!(all(&e, &tid("other-tenant")).await.is_empty());
    let o = e
        .append(&tid("other-tenant"), &s, ExpectedVersion::Any, evs(100, 1))
        .await
        .unwrap();
    assert_eq!(o.first_position, 0);
}

#[tokio::test]
async fn expected_version_semantics() {
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let (t, s) = (tid("acme"), sid("s"));
    let conflict = |r: StoreResult<AppendResult>| match r {
        Err(StoreError::Conflict { current }) => current,
        other => panic!("expected a conflict, got {other:?}"),
    };
    assert_eq!(
        conflict(
            e.append(&t, &s, ExpectedVersion::StreamExists, evs(1, 1))
                .await
        ),
        None
    );
    assert_eq!(
        conflict(e.append(&t, &s, ExpectedVersion::Exact(0), evs(1, 1)).await),
        None
    );
    e.append(&t, &s, ExpectedVersion::NoStream, evs(1, 2))
        .await
        .unwrap();
    assert_eq!(
        conflict(e.append(&t, &s, ExpectedVersion::NoStream, evs(3, 1)).await),
        Some(1)
    );
    assert_eq!(
        conflict(e.append(&t, &s, ExpectedVersion::Exact(0), evs(3, 1)).await),
        Some(1)
    );
    e.append(&t, &s, ExpectedVersion::StreamExists, evs(3, 1))
        .await
        .unwrap();
    e.append(&t, &s, ExpectedVersion::Exact(2), evs(4, 1))
        .await
        .unwrap();
    e.append(&t, &s, ExpectedVersion::Any, evs(5, 1))
        .await
        .unwrap();
    assert_eq!(e.stats(&t).await.unwrap().events, 5);
}

#[tokio::test]
async fn idempotent_retry_returns_the_first_result() {
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let (t, s) = (tid("acme"), sid("s"));
    let first = e
        .append(&t, &s, ExpectedVersion::NoStream, evs(1, 3))
        .await
        .unwrap();
    let again = e
        .append(&t, &s, ExpectedVersion::NoStream, evs(1, 3))
        .await
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(
        (again.first_version, again.last_position),
        (first.first_version, first.last_position)
    );
    assert_eq!(all(&e, &t).await.len(), 3, "nothing written twice");
    // A batch mixing stored and new ids is a conflict, not a partial write.
    assert!(matches!(
        e.append(&t, &s, ExpectedVersion::Any, evs(3, 2)).await,
        Err(StoreError::Conflict { current: Some(2) })
    ));
    // Idempotency survives a crash (the WAL replay rebuilds the id index)...
    e.halt();
    fs.crash();
    let e = open_sim(&fs);
    let again = e
        .append(&t, &s, ExpectedVersion::Any, evs(1, 3))
        .await
        .unwrap();
    assert!(again.deduplicated);
    // ...and a clean close that flushed everything to Parquet, for retries that carry their
    // expected version.
    drop(e);
    let e = open_sim(&fs);
    let again = e
        .append(&t, &s, ExpectedVersion::NoStream, evs(1, 3))
        .await
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.last_position, first.last_position);
    assert!(matches!(
        e.append(&t, &s, ExpectedVersion::NoStream, evs(50, 3))
            .await,
        Err(StoreError::Conflict { current: Some(2) })
    ));
    assert_eq!(all(&e, &t).await.len(), 3);
}

#[tokio::test]
async fn snapshot_delete_truncate_and_trim() {
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let (t, s) = (tid("acme"), sid("s"));
    e.append(&t, &s, ExpectedVersion::Any, evs(1, 5))
        .await
        .unwrap();
    e.append(&t, &sid("b"), ExpectedVersion::Any, evs(10, 2))
        .await
        .unwrap();
    let snap = Snapshot {
        stream: s.clone(),
        version: 3,
        payload: b"state".to_vec(),
        metadata: BTreeMap::new(),
        timestamp_ms: 7,
    };
    e.save_snapshot(&t, snap.clone()).await.unwrap();
    assert_eq!(e.load_snapshot(&t, &s).await.unwrap(), Some(snap.clone()));
    assert!(e
        .save_snapshot(
            &t,
            Snapshot {
                version: 99,
                ..snap.clone()
            }
        )
        .await
        .is_err());

    assert_eq!(e.truncate_before(&t, &s, 2).await.unwrap(), 2);
    let rest = e
        .read_stream(&t, &s, ReadFrom::Edge, Direction::Forwards, 10)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|x| x.version).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(all(&e, &t).await.len(), 5);
    assert_eq!(e.stats(&t).await.unwrap().events, 5);

    assert_eq!(e.count_streams(&t).await.unwrap(), 2);
    e.delete_stream(&t, &sid("b")).await.unwrap();
    assert_eq!(e.count_streams(&t).await.unwrap(), 1);
    assert!(matches!(
        e.read_stream(&t, &sid("b"), ReadFrom::Edge, Direction::Forwards, 10)
            .await,
        Err(StoreError::StreamDeleted(_))
    ));
    let listed = e.list_streams(&t, None, 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[0].deleted && listed[0].stream == sid("b"));
    // A deleted stream accepts NoStream and continues its versions.
    let r = e
        .append(&t, &sid("b"), ExpectedVersion::NoStream, evs(20, 1))
        .await
        .unwrap();
    assert_eq!(r.first_version, 2);
    assert_eq!(e.count_streams(&t).await.unwrap(), 2);

    // Trim the tenant below position 4: positions 0..4 disappear everywhere.
    assert_eq!(e.trim_tenant_before(&t, 4, None).await.unwrap(), 4);
    assert!(matches!(
        e.read_all(&t, 0, 100).await,
        Err(StoreError::Archived {
            first_available: 4,
            of_stream: false,
            ..
        })
    ));
    let ra = e.read_all(&t, 4, 100).await.unwrap();
    assert!(ra.iter().all(|x| x.position >= 4));
    assert!(matches!(
        e.read_stream(&t, &s, ReadFrom::Edge, Direction::Forwards, 10)
            .await,
        Err(StoreError::Archived {
            first_available: 4,
            of_stream: true,
            ..
        })
    ));
    let s_rest = e
        .read_stream(&t, &s, ReadFrom::Version(4), Direction::Forwards, 10)
        .await
        .unwrap();
    assert_eq!(
        s_rest.iter().map(|x| x.version).collect::<Vec<_>>(),
        vec![4]
    );

    // All of it survives a restart: WAL replay of every record kind.
    let before = e.read_all(&t, 4, 100).await.unwrap();
    drop(e);
    let e = open_sim(&fs);
    assert_eq!(e.read_all(&t, 4, 100).await.unwrap(), before);
    assert_eq!(e.load_snapshot(&t, &s).await.unwrap(), Some(snap));
    assert_eq!(e.count_streams(&t).await.unwrap(), 2);
}

#[tokio::test]
async fn reads_span_parquet_and_memory_and_survive_restart() {
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let t = tid("acme");
    for i in 0..10u128 {
        let s = sid(&format!("s{}", i % 3));
        e.append(&t, &s, ExpectedVersion::Any, evs(i * 10, 3))
            .await
            .unwrap();
        if i == 4 {
            let rep = e.checkpoint().unwrap();
            assert_eq!(rep.events_flushed, 15);
            assert!(rep.wal_files_removed <= 1);
        }
    }
    let expected = all(&e, &t).await;
    assert_eq!(expected.len(), 30);
    assert!(expected
        .windows(2)
        .all(|w| w[0].position + 1 == w[1].position));
    let s0 = e
        .read_stream(&t, &sid("s0"), ReadFrom::Edge, Direction::Backwards, 100)
        .await
        .unwrap();
    assert_eq!(s0.len(), 12);
    assert_eq!(
        s0.last().unwrap().position,
        0,
        "oldest event comes from Parquet"
    );

    let rep = e.checkpoint().unwrap();
    assert_eq!(rep.events_flushed, 15);
    // Everything is now in Parquet; the WAL only keeps the active file.
    let (wal_dir, seg_dir, manifest) = layout(Path::new("/data"));
    assert!(fs.exists(&manifest));
    assert!(crate::fsio::FileSystem::list(&fs, &seg_dir.join("acme"))
        .unwrap()
        .iter()
        .any(|f| f.ends_with(".parquet")));
    let wal_files = crate::fsio::FileSystem::list(&fs, &wal_dir).unwrap();
    assert!(wal_files.len() <= 2, "{wal_files:?}");

    // Power loss right now: the checkpointed state is durable.
    e.halt();
    fs.crash();
    let e = open_sim(&fs);
    assert_eq!(all(&e, &t).await, expected);
    assert_eq!(e.count_streams(&t).await.unwrap(), 3);
    // Idempotency window is the hot (non-flushed) data; new appends continue the positions.
    let r = e
        .append(&t, &sid("s1"), ExpectedVersion::Any, evs(1000, 1))
        .await
        .unwrap();
    assert_eq!(r.first_position, 30);
    assert_eq!(r.first_version, 9);

    // Compaction merges the two segments and keeps every read equal.
    let mut cfg = sim_config();
    cfg.compact_min_segments = 1;
    drop(e);
    let e = Engine::open_with_fs(cfg, Arc::new(fs.clone())).unwrap();
    assert_eq!(e.compact().unwrap(), 3);
    let mut now = expected.clone();
    now.extend(e.read_all(&t, 30, 10).await.unwrap());
    assert_eq!(all(&e, &t).await, now);
    drop(e);
    let e = open_sim(&fs);
    assert_eq!(all(&e, &t).await, now);
}

#[tokio::test]
async fn power_loss_keeps_every_acknowledged_batch_in_fsync_mode() {
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let t = tid("acme");
    for i in 0..20u128 {
        e.append(&t, &sid("s"), ExpectedVersion::Any, evs(i * 5, 5))
            .await
            .unwrap();
    }
    let acked = all(&e, &t).await;
    e.halt();
    fs.crash();
    let e = open_sim(&fs);
    assert_eq!(all(&e, &t).await, acked);
}

#[tokio::test]
async fn power_loss_in_none_mode_leaves_whole_batches_only() {
    let fs = SimFs::new();
    let mut cfg = sim_config();
    cfg.durability = Durability::None;
    let e = Engine::open_with_fs(cfg.clone(), Arc::new(fs.clone())).unwrap();
    let t = tid("acme");
    for i in 0..10u128 {
        e.append(&t, &sid("s"), ExpectedVersion::Any, evs(i * 4, 4))
            .await
            .unwrap();
    }
    // Nothing was fsynced: a power loss loses the unsynced tail, never half a batch.
    e.halt();
    fs.crash();
    let e = Engine::open_with_fs(cfg, Arc::new(fs.clone())).unwrap();
    let got = all(&e, &t).await;
    assert_eq!(got.len() % 4, 0);
}

#[tokio::test]
async fn torn_tail_is_truncated_and_later_appends_survive() {
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let t = tid("acme");
    for i in 0..3u128 {
        e.append(&t, &sid("s"), ExpectedVersion::Any, evs(i * 2, 2))
            .await
            .unwrap();
    }
    e.halt();
    let (wal_dir, _, _) = layout(Path::new("/data"));
    let files = crate::wal::reader::list_files(&fs, &wal_dir).unwrap();
    let last = &files.last().unwrap().path;
    let len = fs.len(last).unwrap();
    // Tear the last record: cut 5 bytes off its end.
    crate::fsio::FileSystem::truncate(&fs, last, (len - 5) as u64).unwrap();
    let e = open_sim(&fs);
    assert_eq!(
        all(&e, &t).await.len(),
        4,
        "the torn batch is gone entirely"
    );
    e.append(&t, &sid("s"), ExpectedVersion::Exact(3), evs(100, 1))
        .await
        .unwrap();
    drop(e);
    let e = open_sim(&fs);
    let got = all(&e, &t).await;
    assert_eq!(got.len(), 5);
    assert_eq!(got[4].event_id, Uuid::from_u128(100));
}

#[tokio::test]
async fn failed_fsync_poisons_the_store() {
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let t = tid("acme");
    e.append(&t, &sid("s"), ExpectedVersion::Any, evs(1, 1))
        .await
        .unwrap();
    fs.fail_syncs(true);
    assert!(matches!(
        e.append(&t, &sid("s"), ExpectedVersion::Any, evs(2, 1))
            .await,
        Err(StoreError::Poisoned(_))
    ));
    fs.fail_syncs(false);
    // Even after the disk "recovers", the log refuses writes (no retry on lost pages).
    assert!(matches!(
        e.append(&t, &sid("s"), ExpectedVersion::Any, evs(3, 1))
            .await,
        Err(StoreError::Poisoned(_))
    ));
    // Reads still work and never show the failed write.
    assert_eq!(all(&e, &t).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_see_every_event_once_in_order_under_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.durability = Durability::None;
    cfg.subscription_buffer = 2; // force lagging and the catch-up fallback
    let e = Arc::new(Engine::open(cfg).unwrap());
    let t = tid("acme");
    // Some history before the subscription starts.
    e.append(&t, &sid("w0"), ExpectedVersion::Any, evs(1_000_000, 10))
        .await
        .unwrap();
    let sub_all = e
        .subscribe(&t, SubscriptionTarget::Tenant, Some(4))
        .await
        .unwrap();
    let sub_stream = e
        .subscribe(&t, SubscriptionTarget::Stream(sid("w1")), None)
        .await
        .unwrap();
    let writers = 4u128;
    let per = 50u128;
    let mut handles = Vec::new();
    for w in 0..writers {
        let e = e.clone();
        let t = t.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per {
                e.append(
                    &t,
                    &sid(&format!("w{w}")),
                    ExpectedVersion::Any,
                    evs(w * 10_000 + i * 2, 2),
                )
                .await
                .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let total = 10 + (writers * per * 2) as usize;
    let got: Vec<RecordedEvent> = sub_all.take(total - 5).map(|r| r.unwrap()).collect().await;
    let positions: Vec<u64> = got.iter().map(|e| e.position).collect();
    assert_eq!(positions, (5..total as u64).collect::<Vec<_>>());
    let w1: Vec<RecordedEvent> = sub_stream
        .take((per * 2) as usize)
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(
        w1.iter().map(|e| e.version).collect::<Vec<_>>(),
        (0..(per * 2) as u64).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn open_on_disk_recovers_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let t = tid("acme");
    {
        let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
        e.append(&t, &sid("s"), ExpectedVersion::Any, evs(1, 3))
            .await
            .unwrap();
        e.close().unwrap();
        assert!(matches!(
            e.append(&t, &sid("s"), ExpectedVersion::Any, evs(9, 1))
                .await,
            Err(StoreError::Unavailable(_))
        ));
    }
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    assert_eq!(all(&e, &t).await.len(), 3);
    assert_eq!(e.stats(&t).await.unwrap().next_position, 3);
}

/// Writes `n` append records through the real writer into a SimFs and returns the file bytes
/// and the records in order.
fn small_log(n: usize) -> (Vec<u8>, Vec<crate::wal::WalRecord>) {
    let fs = SimFs::new();
    let dir = Path::new("/wal");
    let w = crate::wal::WalWriter::<()>::start(
        Arc::new(fs.clone()),
        crate::wal::WriterConfig {
            dir: dir.to_path_buf(),
            durability: Durability::Fsync,
            segment_bytes: u64::MAX,
        },
        Vec::new(),
        1,
        |_| {},
    )
    .unwrap();
    let mut recs = Vec::new();
    for i in 0..n {
        let rec = crate::wal::WalRecord::Append {
            tenant: tid("acme"),
            stream: sid("s"),
            first_version: i as u64 * 2,
            first_position: i as u64 * 2,
            timestamp_ms: 1,
            events: evs(i as u128 * 2, 2),
        };
        w.submit(Vec::new(), record::encode_record(&rec).unwrap(), ())
            .unwrap();
        recs.push(rec);
    }
    w.shutdown();
    let files = crate::wal::reader::list_files(&fs, dir).unwrap();
    (
        crate::fsio::FileSystem::read(&fs, &files[0].path).unwrap(),
        recs,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Flip one bit anywhere in a small log. In the last record it is indistinguishable from a
    /// torn write: recovery yields exactly the records before it. Anywhere earlier, acknowledged
    /// records follow the damage: opening refuses and changes nothing on disk; with
    /// `SetAside` it serves the clean prefix and keeps a full copy of the damaged file.
    #[test]
    fn bit_flip_recovers_a_clean_prefix_or_refuses(offset_seed in any::<usize>(), bit in 0u8..8) {
        let (bytes, recs) = small_log(6);
        let offset = offset_seed % bytes.len();
        // Which record holds the offset.
        let mut starts = Vec::new();
        let mut off = 0;
        while off < bytes.len() {
            starts.push(off);
            let (_, _, used) = record::read_frame(&bytes[off..]).unwrap();
            off += used;
        }
        let damaged = starts.iter().rposition(|s| *s <= offset).unwrap();
        let mut bad = bytes.clone();
        bad[offset] ^= 1 << bit;
        let fs = SimFs::new();
        let dir = Path::new("/wal");
        let path = dir.join(crate::wal::reader::file_name(1));
        crate::fsio::FileSystem::write_synced(&fs, &path, &bad).unwrap();
        let mut got = Vec::new();
        if damaged + 1 < recs.len() {
            let err = crate::wal::recover(&fs, dir, 0, CorruptionPolicy::Refuse, |_, rec| got.push(rec)).unwrap_err();
            prop_assert!(matches!(err, crate::wal::RecoverError::Corrupt { offset, .. } if offset == starts[damaged]), "{err}");
            prop_assert!(got.is_empty());
            prop_assert_eq!(fs.len(&path), Some(bad.len()));
            let r = crate::wal::recover(&fs, dir, 0, CorruptionPolicy::SetAside, |_, rec| got.push(rec)).unwrap();
            prop_assert_eq!(r.corrupt_copy.as_ref().and_then(|c| fs.len(c)), Some(bad.len()));
        } else {
            crate::wal::recover(&fs, dir, 0, CorruptionPolicy::Refuse, |_, rec| got.push(rec)).unwrap();
        }
        prop_assert_eq!(&got[..], &recs[..damaged]);
        prop_assert_eq!(fs.len(&path), Some(starts[damaged]));
    }

    /// Every exhaustive single-byte truncation of the log yields a clean prefix too.
    #[test]
    fn any_cut_recovers_a_clean_prefix(cut_seed in any::<usize>()) {
        let (bytes, recs) = small_log(4);
        let cut = cut_seed % (bytes.len() + 1);
        let fs = SimFs::new();
        let dir = Path::new("/wal");
        crate::fsio::FileSystem::write_synced(&fs, &dir.join(crate::wal::reader::file_name(1)), &bytes[..cut]).unwrap();
        let mut got = Vec::new();
        crate::wal::recover(&fs, dir, 0, CorruptionPolicy::Refuse, |_, rec| got.push(rec)).unwrap();
        prop_assert!(got.len() <= recs.len());
        prop_assert_eq!(&got[..], &recs[..got.len()]);
    }
}

/// Issue 15, defect 1: a metadata key longer than its 16-bit length field used to be written
/// with a wrapped length, fsynced and acknowledged; recovery then failed to decode it and cut
/// the WAL there, losing every later acknowledged write of every tenant. Now the key is refused
/// (event and snapshot alike) and the other tenant's events all survive a crash.
#[tokio::test]
async fn hostile_metadata_key_is_refused_and_other_tenants_survive_a_crash() {
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let (hostile, victim) = (tid("hostile"), tid("victim"));
    e.append(&victim, &sid("s"), ExpectedVersion::Any, evs(0, 3))
        .await
        .unwrap();
    let mut bad = ev(100);
    bad.metadata.insert("k".repeat(70_000), "v".into());
    let appended = e
        .append(&hostile, &sid("s"), ExpectedVersion::Any, vec![bad])
        .await;
    e.append(&hostile, &sid("s2"), ExpectedVersion::Any, evs(200, 1))
        .await
        .unwrap();
    let snapshot = Snapshot {
        stream: sid("s2"),
        version: 0,
        payload: b"state".to_vec(),
        metadata: BTreeMap::from([("m".repeat(70_000), String::new())]),
        timestamp_ms: 0,
    };
    let snapped = e.save_snapshot(&hostile, snapshot).await;
    e.append(&victim, &sid("s"), ExpectedVersion::Any, evs(3, 3))
        .await
        .unwrap();
    let acked = all(&e, &victim).await;
    assert_eq!(acked.len(), 6);
    e.halt();
    fs.crash();
    let e = open_sim(&fs);
    assert_eq!(
        all(&e, &victim).await.len(),
        acked.len(),
        "the victim tenant lost acknowledged events after a crash"
    );
    assert!(
        matches!(appended, Err(StoreError::InvalidInput { .. })),
        "append with a 70,000-byte metadata key: {appended:?}"
    );
    assert!(
        matches!(snapped, Err(StoreError::InvalidInput { .. })),
        "snapshot with a 70,000-byte metadata key: {snapped:?}"
    );
}

/// Limits that would admit a field or batch the WAL format cannot hold are refused at open.
#[test]
fn limits_that_overflow_the_wal_format_are_refused_at_open() {
    for limits in [
        Limits {
            max_stream_id_len: 70_000,
            ..Limits::default()
        },
        Limits {
            max_metadata_key_len: 70_000,
            ..Limits::default()
        },
        Limits {
            max_batch_bytes: 300 * 1024 * 1024,
            ..Limits::default()
        },
    ] {
        let cfg = EngineConfig {
            limits,
            ..sim_config()
        };
        let err = Engine::open_with_fs(cfg, Arc::new(SimFs::new())).err();
        assert!(matches!(err, Some(EngineError::Config(_))), "{err:?}");
    }
}

/// A frame whose checksum holds but whose body does not decode was written whole (an encoder
/// bug, not a torn write): recovery refuses, names the file and changes nothing; the old
/// recovery truncated there and logged that the writes were never acknowledged.
#[test]
fn a_whole_but_undecodable_record_mid_log_refuses_to_open() {
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = tid("acme");
    rt.block_on(e.append(&t, &sid("s"), ExpectedVersion::Any, evs(0, 2)))
        .unwrap();
    e.halt();
    let wal = Path::new("/data/wal");
    let files = crate::wal::reader::list_files(&fs, wal).unwrap();
    let last = &files.last().unwrap().path;
    let mut data = crate::fsio::FileSystem::read(&fs, last).unwrap();
    let good_len = data.len();
    // A purge record with trailing bytes (CRC-valid), then a valid record after it.
    record::frame_into(&mut data, 1_000, &[b"\x06\x04\x00acmeX"]);
    let rec = WalRecord::Delete {
        tenant: t.clone(),
        stream: sid("s"),
    };
    record::frame_into(&mut data, 1_001, &[&record::encode_record(&rec).unwrap()]);
    crate::fsio::FileSystem::write_synced(&fs, last, &data).unwrap();
    let err = Engine::open_with_fs(sim_config(), Arc::new(fs.clone()))
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        matches!(err, EngineError::Recover(_)) && msg.contains("checksum is valid"),
        "{msg}"
    );
    assert!(msg.contains(&format!("byte {good_len}")), "{msg}");
    assert_eq!(fs.len(last), Some(data.len()), "nothing changed on disk");
    // The operator's explicit choice: keep a copy, serve what precedes the damage.
    let cfg = EngineConfig {
        wal_on_corruption: CorruptionPolicy::SetAside,
        ..sim_config()
    };
    let e = Engine::open_with_fs(cfg, Arc::new(fs.clone())).unwrap();
    assert_eq!(rt.block_on(all(&e, &t)).len(), 2);
    let mut copy = last.as_os_str().to_owned();
    copy.push(".corrupt");
    assert_eq!(fs.len(Path::new(&copy)), Some(data.len()));
}

/// Damage in a WAL file that is not the last one cannot be a torn write (a file is synced
/// whole before the next starts): refused, even when it is at the very end of that file.
#[test]
fn damage_in_an_earlier_wal_file_refuses_to_open() {
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = tid("acme");
    rt.block_on(e.append(&t, &sid("s"), ExpectedVersion::Any, evs(0, 2)))
        .unwrap();
    e.halt();
    // The next open starts a new file; the first one becomes an earlier file.
    let e = open_sim(&fs);
    rt.block_on(e.append(&t, &sid("s"), ExpectedVersion::Any, evs(2, 2)))
        .unwrap();
    e.halt();
    let wal = Path::new("/data/wal");
    let files = crate::wal::reader::list_files(&fs, wal).unwrap();
    assert!(files.len() >= 2, "{files:?}");
    let first = &files[0].path;
    let len = fs.len(first).unwrap();
    fs.corrupt(first, len - 1, &[0xff]);
    let err = Engine::open_with_fs(sim_config(), Arc::new(fs.clone()))
        .err()
        .unwrap();
    assert!(err.to_string().contains("not the last WAL file"), "{err}");
}

/// A read page is bounded in bytes as well as in events, hot and cold, forwards and backwards,
/// and paging by the last event's position or version still reaches every event once.
#[tokio::test]
async fn read_pages_are_bounded_in_bytes_and_page_through_everything() {
    let fs = SimFs::new();
    let cfg = EngineConfig {
        limits: Limits {
            max_read_bytes: 10_000,
            ..Limits::default()
        },
        ..sim_config()
    };
    let e = Engine::open_with_fs(cfg, Arc::new(fs.clone())).unwrap();
    let (t, s) = (tid("acme"), sid("big"));
    let big = |i: u128| NewEvent {
        payload: vec![b'x'; 3_000],
        ..ev(i)
    };
    e.append(&t, &s, ExpectedVersion::Any, (0..8).map(big).collect())
        .await
        .unwrap();
    e.checkpoint().unwrap(); // the first 8 are cold now
    e.append(&t, &s, ExpectedVersion::Any, (8..16).map(big).collect())
        .await
        .unwrap();
    // One event alone is above the budget: still one per page.
    e.append(
        &t,
        &s,
        ExpectedVersion::Any,
        vec![NewEvent {
            payload: vec![b'y'; 20_000],
            ..ev(16)
        }],
    )
    .await
    .unwrap();
    for from in [0u64, 8, 12] {
        let page = e.read_all(&t, from, 10_000).await.unwrap();
        assert_eq!(
            page.len(),
            3,
            "read_all from {from}: 3 events of ~3 KB fit 10 KB"
        );
        let page = e
            .read_stream(&t, &s, ReadFrom::Version(from), Direction::Forwards, 10_000)
            .await
            .unwrap();
        assert_eq!(page.len(), 3, "read_stream from {from}");
    }
    let back = e
        .read_stream(&t, &s, ReadFrom::Version(10), Direction::Backwards, 10_000)
        .await
        .unwrap();
    let versions: Vec<u64> = back.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![10, 9, 8]);
    let huge = e.read_all(&t, 16, 10_000).await.unwrap();
    assert_eq!(huge.len(), 1, "an event above the budget is served alone");
    // Paging reaches everything exactly once.
    let (mut from, mut seen) = (0u64, Vec::new());
    loop {
        let page = e.read_all(&t, from, 10_000).await.unwrap();
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        seen.extend(page.iter().map(|e| e.position));
    }
    assert_eq!(seen, (0..17).collect::<Vec<_>>());
}

/// A subscriber that never reads holds at most its byte budget (`maxSubscriptionBufferBytes`,
/// 1 MiB by default) plus one event queued, however much is appended meanwhile, and an event
/// larger than the budget still goes through, alone; once it reads, everything arrives in order.
#[tokio::test]
async fn a_subscriber_that_never_reads_holds_at_most_its_byte_budget() {
    use futures::FutureExt;
    const BUDGET: u64 = 1024 * 1024; // the default maxSubscriptionBufferBytes
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let t = tid("acme");
    let mut sub = e
        .subscribe(&t, SubscriptionTarget::Tenant, None)
        .await
        .unwrap();
    let big = |i: u128, size: usize| NewEvent {
        payload: vec![b'x'; size],
        metadata: BTreeMap::new(),
        ..ev(i)
    };
    let mut sizes = Vec::new();
    for i in 0..40 {
        e.append(&t, &sid("s"), ExpectedVersion::Any, vec![big(i, 100_000)])
            .await
            .unwrap();
    }
    for i in 40..43 {
        e.append(
            &t,
            &sid("s"),
            ExpectedVersion::Any,
            vec![big(i, 1024 * 1024)],
        )
        .await
        .unwrap();
    }
    // Let the subscription task queue all it is allowed to.
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // What is queued now, taken without letting the task run again.
    let mut queued = 0u64;
    let mut largest = 0u64;
    while let Some(Some(item)) = tokio::task::unconstrained(sub.next()).now_or_never() {
        let ev = item.unwrap();
        queued += ev.size_bytes();
        largest = largest.max(ev.size_bytes());
        sizes.push(ev.position);
    }
    println!(
        "queued for a subscriber that never read: {} events, {queued} bytes",
        sizes.len()
    );
    assert!(
        queued <= BUDGET + largest,
        "a subscriber that never reads held {queued} bytes ({} events) queued; the budget is \
         {BUDGET} bytes plus one event",
        sizes.len()
    );
    // Everything else still arrives, in order, once the consumer reads.
    while sizes.len() < 43 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
            .await
            .expect("the rest arrives")
            .unwrap()
            .unwrap();
        sizes.push(ev.position);
    }
    assert_eq!(sizes, (0..43).collect::<Vec<u64>>());
}

/// Cold reads of more than the cache's budget (`cacheBytes`, 64 MiB by default) leave at most
/// the budget of decoded rows in the cache, and every event still reads back.
#[tokio::test]
async fn the_cold_read_cache_stays_within_its_byte_budget() {
    const BUDGET: u64 = 64 * 1024 * 1024; // the default cacheBytes
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let t = tid("acme");
    for b in 0..25u128 {
        let events = (0..4)
            .map(|i| NewEvent {
                payload: vec![b'x'; 1024 * 1024 - 64],
                metadata: BTreeMap::new(),
                ..ev(b * 4 + i)
            })
            .collect();
        e.append(&t, &sid("s"), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    e.checkpoint().unwrap();
    let (mut from, mut read, mut bytes) = (0, 0, 0);
    loop {
        let page = e.read_all(&t, from, 10_000).await.unwrap();
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        read += page.len();
        bytes += page.iter().map(|e| e.size_bytes()).sum::<u64>();
    }
    assert_eq!(read, 100);
    let held = e.inner.cache.bytes();
    println!("cold reads of {bytes} bytes left {held} bytes in the cache");
    assert!(bytes > BUDGET);
    assert!(
        held <= BUDGET,
        "after cold reads of {bytes} bytes the cache holds {held} bytes; its budget is {BUDGET}"
    );
}

fn big_snapshot(stream: &str, version: u64, size: usize, fill: u8) -> Snapshot {
    let mut metadata = BTreeMap::new();
    metadata.insert("schema".to_string(), format!("v{version}"));
    Snapshot {
        stream: sid(stream),
        version,
        payload: vec![fill; size],
        metadata,
        timestamp_ms: 1_700_000_000_000 + version as i64,
    }
}

/// Bytes of snapshots the tenant's state holds in memory.
fn resident_snapshot_bytes(e: &Engine, t: &TenantId) -> u64 {
    e.inner.tenant(t).map_or(0, |t| {
        t.state
            .read()
            .snapshots
            .values()
            .map(snapshots::SnapshotSlot::resident)
            .sum()
    })
}

fn manifest_len(fs: &SimFs) -> usize {
    fs.len(Path::new("/data/manifest.json")).unwrap_or(0)
}

/// Snapshots live in files of their own, not in the manifest: saved, checkpointed, reopened
/// (a clean restart and a simulated power loss), they load back identical; a checkpoint that
/// fails before its manifest leaves no file behind after the restart; and after a checkpoint
/// neither the manifest nor memory grows with their size.
#[tokio::test]
async fn snapshots_are_files_that_survive_restarts_and_crashes() {
    let fs = SimFs::new();
    let e = open_sim(&fs);
    let t = tid("acme");
    let mut snaps = Vec::new();
    for i in 0..8u64 {
        let s = format!("s{i}");
        e.append(
            &t,
            &sid(&s),
            ExpectedVersion::Any,
            evs(u128::from(i) * 10, 3),
        )
        .await
        .unwrap();
        let snap = big_snapshot(&s, 2, 1024 * 1024, i as u8);
        e.save_snapshot(&t, snap.clone()).await.unwrap();
        snaps.push(snap);
    }
    async fn check(e: &Engine, snaps: Vec<Snapshot>) {
        for s in snaps {
            assert_eq!(
                e.load_snapshot(&tid("acme"), &s.stream)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(&s),
                "snapshot of {}",
                s.stream
            );
        }
    }
    check(&e, snaps.clone()).await;
    e.checkpoint().unwrap();
    let manifest = manifest_len(&fs);
    let resident = resident_snapshot_bytes(&e, &t);
    println!("after a checkpoint of 8 MiB of snapshots: manifest {manifest} bytes, {resident} bytes of snapshots in memory");
    assert!(
        manifest < 64 * 1024,
        "the manifest is {manifest} bytes for 8 snapshots of 1 MiB"
    );
    assert_eq!(resident, 0, "snapshots stay in memory after the checkpoint");
    check(&e, snaps.clone()).await;

    // A clean restart.
    e.close().unwrap();
    drop(e);
    let e = open_sim(&fs);
    check(&e, snaps.clone()).await;
    assert_eq!(resident_snapshot_bytes(&e, &t), 0);

    // A newer snapshot of s0, in the WAL only, survives a power loss.
    snaps[0] = big_snapshot("s0", 1, 300_000, 0xEE);
    e.save_snapshot(&t, snaps[0].clone()).await.unwrap();
    e.halt();
    fs.crash();
    let e = open_sim(&fs);
    check(&e, snaps.clone()).await;

    // A checkpoint that fails after writing the snapshot files but before its manifest: after
    // a power loss and a restart everything loads, and no file the manifest does not name is
    // left.
    let hook_fs = fs.clone();
    fs.set_write_hook(Some(Arc::new(move |p: &Path| {
        if p.ends_with("manifest.json.tmp") {
            hook_fs.fail_syncs(true);
        }
    })));
    assert!(e.checkpoint().is_err());
    fs.set_write_hook(None);
    e.halt();
    fs.crash();
    fs.fail_syncs(false);
    let e = open_sim(&fs);
    check(&e, snaps.clone()).await;
    let dir = Path::new("/data/snapshots/acme");
    e.checkpoint().unwrap();
    // The replaced file of s0 goes one checkpoint later.
    e.checkpoint().unwrap();
    let mut files = fs.list(dir).unwrap();
    files.sort();
    assert_eq!(files.len(), 8, "one file per stream: {files:?}");
    e.halt();
    fs.crash();
    let e = open_sim(&fs);
    check(&e, snaps.clone()).await;
    assert_eq!(resident_snapshot_bytes(&e, &t), 0);
    let stats = e.stats(&t).await.unwrap();
    assert_eq!(
        stats.snapshot_bytes,
        snaps.iter().map(Snapshot::size_bytes).sum::<u64>()
    );
}

/// A manifest of a node that kept snapshots inline still loads; the next checkpoint moves
/// them to files and drops them from the manifest.
#[tokio::test]
async fn inline_snapshots_of_an_old_manifest_move_to_files() {
    let fs = SimFs::new();
    let t = tid("acme");
    let snap = big_snapshot("s", 1, 10_000, 7);
    {
        let e = open_sim(&fs);
        e.append(&t, &sid("s"), ExpectedVersion::Any, evs(1, 2))
            .await
            .unwrap();
        e.save_snapshot(&t, snap.clone()).await.unwrap();
        e.close().unwrap();
    }
    // Rewrite the manifest the way an older node wrote it: the snapshot inline, no files.
    let path = Path::new("/data/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs.read(path).unwrap()).unwrap();
    let entry = &mut m["tenants"]["acme"];
    entry.as_object_mut().unwrap().remove("snapshotFiles");
    entry["snapshots"] = serde_json::json!({ "s": snap });
    crate::fsio::write_atomic(&fs, path, &serde_json::to_vec(&m).unwrap()).unwrap();
    for f in fs.list(Path::new("/data/snapshots/acme")).unwrap() {
        fs.remove(&Path::new("/data/snapshots/acme").join(f))
            .unwrap();
    }
    let e = open_sim(&fs);
    assert_eq!(
        e.load_snapshot(&t, &sid("s")).await.unwrap(),
        Some(snap.clone())
    );
    e.checkpoint().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&fs.read(path).unwrap()).unwrap();
    assert_eq!(m["tenants"]["acme"]["snapshots"], serde_json::json!({}));
    assert_eq!(m["tenants"]["acme"]["snapshotFiles"]["s"]["version"], 1);
    e.halt();
    fs.crash();
    let e = open_sim(&fs);
    assert_eq!(e.load_snapshot(&t, &sid("s")).await.unwrap(), Some(snap));
}

/// Snapshots saved since the last checkpoint wait in memory for it: past
/// `checkpoint_snapshot_bytes` the next save checkpoints first, so what one tenant holds stays
/// within that bound plus one snapshot however many it saves.
#[tokio::test]
async fn pending_snapshots_are_bounded_in_bytes() {
    let fs = SimFs::new();
    let cfg = EngineConfig {
        checkpoint_snapshot_bytes: 3 * 1024 * 1024,
        ..sim_config()
    };
    let e = Engine::open_with_fs(cfg, Arc::new(fs.clone())).unwrap();
    let t = tid("acme");
    let mut most = 0;
    for i in 0..20u64 {
        let s = format!("s{i}");
        e.append(
            &t,
            &sid(&s),
            ExpectedVersion::Any,
            evs(u128::from(i) * 10, 1),
        )
        .await
        .unwrap();
        e.save_snapshot(&t, big_snapshot(&s, 0, 1024 * 1024, 1))
            .await
            .unwrap();
        most = most.max(resident_snapshot_bytes(&e, &t));
    }
    assert!(
        most <= 4 * 1024 * 1024 + 4096,
        "{most} bytes of snapshots held in memory"
    );
    let want: u64 = (0..20)
        .map(|i| big_snapshot(&format!("s{i}"), 0, 1024 * 1024, 1).size_bytes())
        .sum();
    assert_eq!(e.stats(&t).await.unwrap().snapshot_bytes, want);
}
