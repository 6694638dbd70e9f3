//! One conformance suite for every implementation of `store_node::EventStore`: the same cases
//! run against PostgreSQL, DynamoDB Local and the Firestore emulator from `tests/env` (and the
//! in-process implementations once they are wired below). Each case returns a result instead of
//! panicking so that every backend prints a full results table; the backend's test then fails if
//! any case failed. Every case uses its own tenant ids, so cases run concurrently.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Result};
use futures::StreamExt;
use store_node::{
    Direction, EventStore, ExpectedVersion, NewEvent, ReadFrom, Snapshot, StoreError, StreamId,
    SubscriptionTarget, TenantId,
};
use uuid::Uuid;

type Store = Arc<dyn EventStore>;
type CaseFn = fn(Store) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), |s| Box::pin($name(s)) as Pin<Box<dyn Future<Output = Result<()>> + Send>>)),*]
    };
}

const CASES: &[(&str, CaseFn)] = cases![
    expected_version_semantics,
    concurrent_conflicting_appends,
    atomic_batches,
    idempotent_retries,
    ordering,
    pagination,
    read_backwards,
    snapshots,
    delete_stream_tombstone,
    truncate_before,
    tenant_isolation,
    limits_and_error_codes,
    subscriptions,
    stats,
    archived_ranges,
];

/// Runs every case against `store`, prints the table, fails when a case failed.
async fn run_suite(backend: &str, store: Store) {
    let runs = CASES.iter().map(|(name, case)| {
        let store = store.clone();
        async move {
            let out = tokio::time::timeout(Duration::from_secs(120), case(store)).await;
            let out = out.unwrap_or_else(|_| Err(anyhow!("timed out after 120 s")));
            (*name, out)
        }
    });
    let results = futures::future::join_all(runs).await;
    let mut table = format!("\nconformance results: {backend}\n");
    let mut failed = 0;
    for (name, r) in &results {
        match r {
            Ok(()) => table.push_str(&format!("  {backend:<10} {name:<32} passed\n")),
            Err(e) => {
                failed += 1;
                table.push_str(&format!("  {backend:<10} {name:<32} FAILED: {e:#}\n"));
            }
        }
    }
    table.push_str(&format!(
        "  {backend}: {} passed, {failed} failed\n",
        results.len() - failed
    ));
    println!("{table}");
    assert_eq!(failed, 0, "{backend}: {failed} conformance case(s) failed");
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_memory() {
    let store = store_node::backend::memory::MemoryStore::new(store_node::Limits::default());
    run_suite("memory", Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_engine() {
    use store_node::engine::{Engine, EngineConfig};
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let engine =
        Engine::open(EngineConfig::new(dir.path())).unwrap_or_else(|e| panic!("engine open: {e}"));
    run_suite("engine", Arc::new(engine)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_postgres() {
    let Some(env) = allsource_tests::env::require("postgres") else {
        return;
    };
    use store_node::backend::postgres::{PostgresConfig, PostgresStore};
    let store = PostgresStore::connect(PostgresConfig::new(env.pg_url(), "conformance"))
        .unwrap_or_else(|e| panic!("postgres pool: {e}"));
    store
        .init_schema()
        .await
        .unwrap_or_else(|e| panic!("postgres schema: {e}"));
    run_suite("postgres", Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_dynamodb() {
    let Some(env) = allsource_tests::env::require("dynamodb") else {
        return;
    };
    use allsource_tests::env::{AWS_TEST_ACCESS_KEY, AWS_TEST_REGION, AWS_TEST_SECRET_KEY};
    use store_node::backend::dynamodb::{DynamoConfig, DynamoStore, StaticCredentials};
    let table = format!("conformance-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut cfg = DynamoConfig::new(table, AWS_TEST_REGION);
    cfg.endpoint = Some(env.dynamodb_endpoint().to_string());
    cfg.credentials = Some(StaticCredentials {
        access_key_id: AWS_TEST_ACCESS_KEY.into(),
        secret_access_key: AWS_TEST_SECRET_KEY.into(),
    });
    let store = DynamoStore::connect(cfg)
        .await
        .unwrap_or_else(|e| panic!("dynamodb client: {e}"));
    store
        .ensure_table()
        .await
        .unwrap_or_else(|e| panic!("dynamodb table: {e}"));
    run_suite("dynamodb", Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_firestore() {
    let Some(env) = allsource_tests::env::require("firestore") else {
        return;
    };
    use store_node::backend::firestore::{FirestoreConfig, FirestoreStore};
    // Every case uses its own random tenants, so the shared emulator database needs no reset.
    let cfg = FirestoreConfig::emulator(env.firestore_project(), env.firestore_emulator_host());
    let store = FirestoreStore::connect(cfg).unwrap_or_else(|e| panic!("firestore client: {e}"));
    run_suite("firestore", Arc::new(store)).await;
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn tenant() -> TenantId {
    let id = Uuid::new_v4().simple().to_string();
    TenantId::new(format!("c-{}", &id[..16])).unwrap_or_else(|e| panic!("{e}"))
}

fn stream(name: &str) -> StreamId {
    StreamId::new(name).unwrap_or_else(|e| panic!("{e}"))
}

fn ev(kind: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: kind.to_string(),
        payload: format!("{{\"kind\":\"{kind}\"}}").into_bytes(),
        metadata: BTreeMap::from([("source".to_string(), "conformance".to_string())]),
    }
}

fn evs(n: usize) -> Vec<NewEvent> {
    (0..n).map(|i| ev(&format!("e{i}"))).collect()
}

fn is_conflict(r: &Result<store_node::AppendResult, StoreError>, current: Option<u64>) -> bool {
    matches!(r, Err(StoreError::Conflict { current: c }) if *c == current)
}

async fn read_fw(s: &Store, t: &TenantId, st: &StreamId) -> Result<Vec<u64>> {
    Ok(
        s.read_stream(t, st, ReadFrom::Edge, Direction::Forwards, 1000)
            .await?
            .iter()
            .map(|e| e.version)
            .collect(),
    )
}

async fn read_fw_from(s: &Store, t: &TenantId, st: &StreamId, from: u64) -> Result<Vec<u64>> {
    Ok(
        s.read_stream(t, st, ReadFrom::Version(from), Direction::Forwards, 1000)
            .await?
            .iter()
            .map(|e| e.version)
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

async fn expected_version_semantics(s: Store) -> Result<()> {
    let t = tenant();
    let st = stream("order-1");
    // NoStream on a new stream succeeds; again conflicts with the current version.
    let r = s.append(&t, &st, ExpectedVersion::NoStream, evs(2)).await?;
    ensure!(
        (r.first_version, r.last_version) == (0, 1),
        "versions {r:?}"
    );
    let again = s.append(&t, &st, ExpectedVersion::NoStream, evs(1)).await;
    ensure!(
        is_conflict(&again, Some(1)),
        "NoStream on existing: {again:?}"
    );
    // StreamExists: fails on a missing stream, succeeds on an existing one.
    let other = stream("order-2");
    let r2 = s
        .append(&t, &other, ExpectedVersion::StreamExists, evs(1))
        .await;
    ensure!(is_conflict(&r2, None), "StreamExists on missing: {r2:?}");
    let r3 = s
        .append(&t, &st, ExpectedVersion::StreamExists, evs(1))
        .await?;
    ensure!(r3.first_version == 2, "StreamExists append {r3:?}");
    // Exact: right version succeeds, wrong version conflicts with the current version.
    let r4 = s.append(&t, &st, ExpectedVersion::Exact(2), evs(1)).await?;
    ensure!(r4.first_version == 3, "Exact append {r4:?}");
    let r5 = s.append(&t, &st, ExpectedVersion::Exact(2), evs(1)).await;
    ensure!(is_conflict(&r5, Some(3)), "stale Exact: {r5:?}");
    let r6 = s
        .append(&t, &other, ExpectedVersion::Exact(0), evs(1))
        .await;
    ensure!(is_conflict(&r6, None), "Exact on missing: {r6:?}");
    // Any always appends.
    let r7 = s.append(&t, &st, ExpectedVersion::Any, evs(1)).await?;
    let r8 = s.append(&t, &other, ExpectedVersion::Any, evs(1)).await?;
    ensure!(
        r7.first_version == 4 && r8.first_version == 0,
        "Any {r7:?} {r8:?}"
    );
    ensure!(
        read_fw(&s, &t, &st).await? == vec![0, 1, 2, 3, 4],
        "stream content"
    );
    Ok(())
}

async fn concurrent_conflicting_appends(s: Store) -> Result<()> {
    let t = tenant();
    let st = stream("hot");
    s.append(&t, &st, ExpectedVersion::NoStream, evs(1)).await?;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (s, t, st) = (s.clone(), t.clone(), st.clone());
            tokio::spawn(async move { s.append(&t, &st, ExpectedVersion::Exact(0), evs(2)).await })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await? {
            Ok(r) => {
                wins += 1;
                ensure!((r.first_version, r.last_version) == (1, 2), "winner {r:?}");
            }
            Err(StoreError::Conflict { current: Some(2) }) => {}
            Err(e) => bail!("loser got {e:?}, want Conflict at 2"),
        }
    }
    ensure!(wins == 1, "{wins} concurrent appends won, want exactly 1");
    ensure!(
        read_fw(&s, &t, &st).await? == vec![0, 1, 2],
        "stream content"
    );
    // Concurrent first appends with NoStream: exactly one creates the stream.
    let fresh = stream("fresh");
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (s, t, st) = (s.clone(), t.clone(), fresh.clone());
            tokio::spawn(async move { s.append(&t, &st, ExpectedVersion::NoStream, evs(1)).await })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        if task.await?.is_ok() {
            wins += 1;
        }
    }
    ensure!(wins == 1, "{wins} NoStream creators won, want exactly 1");
    Ok(())
}

async fn atomic_batches(s: Store) -> Result<()> {
    let t = tenant();
    let st = stream("batch");
    let r = s.append(&t, &st, ExpectedVersion::NoStream, evs(5)).await?;
    ensure!(
        (r.first_version, r.last_version) == (0, 4),
        "batch versions {r:?}"
    );
    ensure!(
        r.last_position - r.first_position == 4,
        "batch positions {r:?}"
    );
    let stats = s.stats(&t).await?;
    let bad = s.append(&t, &st, ExpectedVersion::Exact(1), evs(4)).await;
    ensure!(is_conflict(&bad, Some(4)), "conflicting batch: {bad:?}");
    ensure!(
        read_fw(&s, &t, &st).await? == vec![0, 1, 2, 3, 4],
        "conflict wrote events"
    );
    let after = s.stats(&t).await?;
    ensure!(
        after.events == stats.events,
        "stats changed by a failed batch"
    );
    let all = s.read_all(&t, 0, 100).await?;
    ensure!(all.len() == 5, "read_all sees {} events", all.len());
    Ok(())
}

async fn idempotent_retries(s: Store) -> Result<()> {
    let t = tenant();
    let st = stream("idem");
    let batch = evs(3);
    let first = s
        .append(&t, &st, ExpectedVersion::NoStream, batch.clone())
        .await?;
    ensure!(!first.deduplicated, "first append deduplicated");
    s.append(&t, &st, ExpectedVersion::Any, evs(1)).await?;
    // Same ids again, even with a now-stale expected version: the original result.
    let retry = s
        .append(&t, &st, ExpectedVersion::NoStream, batch.clone())
        .await?;
    ensure!(retry.deduplicated, "retry not deduplicated: {retry:?}");
    ensure!(
        (
            retry.first_version,
            retry.last_version,
            retry.first_position,
            retry.last_position
        ) == (
            first.first_version,
            first.last_version,
            first.first_position,
            first.last_position
        ),
        "retry {retry:?} != first {first:?}"
    );
    ensure!(
        read_fw(&s, &t, &st).await? == vec![0, 1, 2, 3],
        "retry wrote events"
    );
    // A batch mixing stored and new ids is rejected and writes nothing.
    let mut mixed = vec![batch[0].clone()];
    mixed.push(ev("new"));
    let r = s.append(&t, &st, ExpectedVersion::Any, mixed).await;
    ensure!(
        matches!(r, Err(StoreError::Conflict { .. })),
        "mixed batch: {r:?}"
    );
    ensure!(
        read_fw(&s, &t, &st).await?.len() == 4,
        "mixed batch wrote events"
    );
    // The same id in another stream is a different event.
    let r = s
        .append(
            &t,
            &stream("idem-2"),
            ExpectedVersion::Any,
            vec![batch[0].clone()],
        )
        .await?;
    ensure!(!r.deduplicated, "ids must be per stream");
    Ok(())
}

async fn ordering(s: Store) -> Result<()> {
    let t = tenant();
    let caps = s.capabilities();
    for i in 0..6 {
        s.append(
            &t,
            &stream(&format!("s{}", i % 3)),
            ExpectedVersion::Any,
            evs(2),
        )
        .await?;
    }
    let all = s.read_all(&t, 0, 1000).await?;
    ensure!(all.len() == 12, "read_all returned {}", all.len());
    for w in all.windows(2) {
        ensure!(w[0].position < w[1].position, "positions not increasing");
        if caps.gapless_positions {
            ensure!(w[1].position == w[0].position + 1, "gap in positions");
        }
    }
    if caps.gapless_positions {
        ensure!(all[0].position == 0, "first position {}", all[0].position);
    }
    for i in 0..3 {
        let st = stream(&format!("s{i}"));
        let evs = s
            .read_stream(&t, &st, ReadFrom::Edge, Direction::Forwards, 100)
            .await?;
        let versions: Vec<u64> = evs.iter().map(|e| e.version).collect();
        ensure!(
            versions == vec![0, 1, 2, 3],
            "stream s{i} versions {versions:?}"
        );
        ensure!(
            evs.iter().all(|e| e.tenant == t && e.stream == st),
            "wrong ids"
        );
        ensure!(
            evs.windows(2).all(|w| w[0].position < w[1].position),
            "stream positions not increasing"
        );
    }
    let stats = s.stats(&t).await?;
    ensure!(
        stats.next_position > all[all.len() - 1].position,
        "next_position {} not past the last position",
        stats.next_position
    );
    // Payload and metadata round-trip byte for byte.
    let mut e = ev("binary");
    e.payload = (0u8..=255).collect();
    e.metadata.insert("k-ü".into(), "v\"'\n".into());
    let st = stream("bin");
    s.append(&t, &st, ExpectedVersion::Any, vec![e.clone()])
        .await?;
    let got = s
        .read_stream(&t, &st, ReadFrom::Edge, Direction::Forwards, 1)
        .await?;
    ensure!(got.len() == 1, "binary event missing");
    ensure!(
        got[0].payload == e.payload && got[0].metadata == e.metadata,
        "payload/metadata changed"
    );
    ensure!(
        got[0].event_id == e.event_id && got[0].event_type == "binary",
        "ids changed"
    );
    ensure!(
        got[0].timestamp_ms > 1_600_000_000_000,
        "timestamp {}",
        got[0].timestamp_ms
    );
    Ok(())
}

async fn pagination(s: Store) -> Result<()> {
    let t = tenant();
    let st = stream("paged");
    for _ in 0..5 {
        s.append(&t, &st, ExpectedVersion::Any, evs(5)).await?;
    }
    // read_stream pages of 7
    let mut seen = Vec::new();
    let mut from = ReadFrom::Edge;
    loop {
        let page = s.read_stream(&t, &st, from, Direction::Forwards, 7).await?;
        ensure!(page.len() <= 7, "page larger than the limit");
        let Some(last) = page.last() else { break };
        from = ReadFrom::Version(last.version + 1);
        seen.extend(page.iter().map(|e| e.version));
    }
    ensure!(seen == (0..25).collect::<Vec<_>>(), "stream pages {seen:?}");
    // read_all pages of 4
    let mut positions = Vec::new();
    let mut next = 0;
    loop {
        let page = s.read_all(&t, next, 4).await?;
        ensure!(page.len() <= 4, "read_all page larger than the limit");
        let Some(last) = page.last() else { break };
        next = last.position + 1;
        positions.extend(page.iter().map(|e| e.position));
    }
    ensure!(
        positions.len() == 25,
        "read_all pages saw {}",
        positions.len()
    );
    // list_streams pages of 3 over 8 streams, in id order
    let names: Vec<String> = (0..8).map(|i| format!("list-{i:02}")).collect();
    for n in &names {
        s.append(&t, &stream(n), ExpectedVersion::NoStream, evs(1))
            .await?;
    }
    let mut listed = Vec::new();
    let mut after: Option<StreamId> = None;
    loop {
        let page = s.list_streams(&t, after.as_ref(), 3).await?;
        ensure!(page.len() <= 3, "list page larger than the limit");
        let Some(last) = page.last() else { break };
        after = Some(last.stream.clone());
        listed.extend(page.iter().map(|i| i.stream.as_str().to_string()));
    }
    let mut want = names.clone();
    want.push("paged".to_string());
    want.sort();
    ensure!(listed == want, "listed {listed:?}");
    ensure!(s.count_streams(&t).await? == 9, "count_streams");
    Ok(())
}

async fn read_backwards(s: Store) -> Result<()> {
    let t = tenant();
    let st = stream("back");
    s.append(&t, &st, ExpectedVersion::NoStream, evs(10))
        .await?;
    let v = |evs: Vec<store_node::RecordedEvent>| evs.iter().map(|e| e.version).collect::<Vec<_>>();
    let last3 = s
        .read_stream(&t, &st, ReadFrom::Edge, Direction::Backwards, 3)
        .await?;
    ensure!(v(last3) == vec![9, 8, 7], "backwards from the end");
    let mid = s
        .read_stream(&t, &st, ReadFrom::Version(4), Direction::Backwards, 10)
        .await?;
    ensure!(v(mid) == vec![4, 3, 2, 1, 0], "backwards from 4");
    let past = s
        .read_stream(&t, &st, ReadFrom::Version(100), Direction::Backwards, 2)
        .await?;
    ensure!(v(past) == vec![9, 8], "backwards from past the end");
    let fw_past = s
        .read_stream(&t, &st, ReadFrom::Version(10), Direction::Forwards, 2)
        .await?;
    ensure!(fw_past.is_empty(), "forwards past the end is empty");
    Ok(())
}

async fn snapshots(s: Store) -> Result<()> {
    let t = tenant();
    let st = stream("snap");
    s.append(&t, &st, ExpectedVersion::NoStream, evs(3)).await?;
    ensure!(
        s.load_snapshot(&t, &st).await?.is_none(),
        "snapshot before save"
    );
    let snap = |version: u64, body: &str| Snapshot {
        stream: st.clone(),
        version,
        payload: body.as_bytes().to_vec(),
        metadata: BTreeMap::from([("schema".to_string(), "v1".to_string())]),
        timestamp_ms: 1_700_000_000_000,
    };
    s.save_snapshot(&t, snap(1, "state-1")).await?;
    s.save_snapshot(&t, snap(2, "state-2")).await?;
    let got = s
        .load_snapshot(&t, &st)
        .await?
        .ok_or_else(|| anyhow!("snapshot missing"))?;
    ensure!(got == snap(2, "state-2"), "latest snapshot {got:?}");
    let other = tenant();
    ensure!(
        s.load_snapshot(&other, &st).await?.is_none(),
        "snapshot visible to another tenant"
    );
    Ok(())
}

async fn delete_stream_tombstone(s: Store) -> Result<()> {
    let t = tenant();
    let st = stream("doomed");
    let keep = stream("kept");
    s.append(&t, &st, ExpectedVersion::NoStream, evs(3)).await?;
    s.append(&t, &keep, ExpectedVersion::NoStream, evs(1))
        .await?;
    ensure!(s.count_streams(&t).await? == 2, "count before delete");
    s.delete_stream(&t, &st).await?;
    let r = s
        .read_stream(&t, &st, ReadFrom::Edge, Direction::Forwards, 10)
        .await;
    ensure!(
        matches!(r, Err(StoreError::StreamDeleted(_))),
        "read deleted: {r:?}"
    );
    ensure!(s.count_streams(&t).await? == 1, "count after delete");
    let listed = s.list_streams(&t, None, 10).await?;
    let info = listed
        .iter()
        .find(|i| i.stream == st)
        .ok_or_else(|| anyhow!("deleted stream not listed"))?;
    ensure!(
        info.deleted && info.last_version == 2,
        "tombstone info {info:?}"
    );
    // Deleting again changes nothing. The trait leaves its answer open (the cloud backends and
    // the engine answer Ok, the memory reference StreamDeleted); both are accepted.
    let again = s.delete_stream(&t, &st).await;
    ensure!(
        matches!(again, Ok(()) | Err(StoreError::StreamDeleted(_))),
        "second delete: {again:?}"
    );
    ensure!(s.count_streams(&t).await? == 1, "count after second delete");
    // Deleting a missing stream is NotFound.
    let r = s.delete_stream(&t, &stream("never")).await;
    ensure!(
        matches!(r, Err(StoreError::NotFound(_))),
        "delete missing: {r:?}"
    );
    // A deleted stream counts as no stream; appending reopens it after the old versions.
    let r = s.append(&t, &st, ExpectedVersion::Exact(2), evs(1)).await;
    ensure!(is_conflict(&r, None), "Exact on deleted: {r:?}");
    let r = s.append(&t, &st, ExpectedVersion::NoStream, evs(2)).await?;
    ensure!(r.first_version == 3, "reopened at {r:?}");
    ensure!(
        read_fw(&s, &t, &st).await? == vec![3, 4],
        "old events visible after reopen"
    );
    ensure!(s.count_streams(&t).await? == 2, "count after reopen");
    Ok(())
}

async fn truncate_before(s: Store) -> Result<()> {
    let t = tenant();
    let st = stream("trunc");
    s.append(&t, &st, ExpectedVersion::NoStream, evs(6)).await?;
    let dropped = s.truncate_before(&t, &st, 4).await?;
    ensure!(dropped == 4, "dropped {dropped}");
    ensure!(read_fw(&s, &t, &st).await? == vec![4, 5], "after truncate");
    let r = s.append(&t, &st, ExpectedVersion::Exact(5), evs(1)).await?;
    ensure!(r.first_version == 6, "append after truncate {r:?}");
    ensure!(s.stats(&t).await?.events == 3, "stats after truncate");
    let r = s.truncate_before(&t, &stream("nope"), 1).await;
    ensure!(
        matches!(r, Err(StoreError::NotFound(_))),
        "truncate missing: {r:?}"
    );
    Ok(())
}

async fn tenant_isolation(s: Store) -> Result<()> {
    let (a, b) = (tenant(), tenant());
    let st = stream("shared-name");
    s.append(&a, &st, ExpectedVersion::NoStream, evs(3)).await?;
    // B sees nothing of A's data, even under the same stream name.
    let r = s
        .read_stream(&b, &st, ReadFrom::Edge, Direction::Forwards, 10)
        .await;
    ensure!(
        matches!(r, Err(StoreError::NotFound(_))),
        "B reads A's stream: {r:?}"
    );
    ensure!(
        s.read_all(&b, 0, 100).await?.is_empty(),
        "B's read_all sees A"
    );
    ensure!(
        s.list_streams(&b, None, 100).await?.is_empty(),
        "B lists A's streams"
    );
    ensure!(s.count_streams(&b).await? == 0, "B counts A's streams");
    let bs = s.stats(&b).await?;
    ensure!(
        bs.events == 0 && bs.streams == 0,
        "B's stats count A: {bs:?}"
    );
    ensure!(
        s.load_snapshot(&b, &st).await?.is_none(),
        "B loads A's snapshot"
    );
    // B's writes under the same name never touch A's stream; B's positions start on their own.
    let rb = s.append(&b, &st, ExpectedVersion::NoStream, evs(1)).await?;
    ensure!(rb.first_version == 0, "B's stream starts at {rb:?}");
    if s.capabilities().gapless_positions {
        ensure!(rb.first_position == 0, "B's positions start at {rb:?}");
    }
    ensure!(
        read_fw(&s, &a, &st).await? == vec![0, 1, 2],
        "A's stream changed"
    );
    let r = s.delete_stream(&b, &stream("only-a")).await;
    ensure!(
        matches!(r, Err(StoreError::NotFound(_))),
        "B deletes unknown: {r:?}"
    );
    s.delete_stream(&b, &st).await?;
    ensure!(read_fw(&s, &a, &st).await?.len() == 3, "B's delete hit A");
    ensure!(
        s.read_all(&a, 0, 100).await?.iter().all(|e| e.tenant == a),
        "A's read_all has foreign events"
    );
    Ok(())
}

async fn limits_and_error_codes(s: Store) -> Result<()> {
    let t = tenant();
    let st = stream("limits");
    let limits = s.limits();
    let code = |r: Result<store_node::AppendResult, StoreError>| match r {
        Ok(_) => "ok".to_string(),
        Err(e) => e.code().to_string(),
    };
    ensure!(
        code(s.append(&t, &st, ExpectedVersion::Any, vec![]).await) == "invalid_input",
        "empty batch"
    );
    ensure!(
        code(
            s.append(
                &t,
                &st,
                ExpectedVersion::Any,
                evs(limits.max_batch_events + 1)
            )
            .await
        ) == "too_large",
        "batch over max_batch_events"
    );
    let mut big = ev("big");
    big.payload = vec![b'x'; limits.max_event_bytes + 1];
    ensure!(
        code(s.append(&t, &st, ExpectedVersion::Any, vec![big]).await) == "too_large",
        "event over max_event_bytes"
    );
    let e = ev("dup");
    ensure!(
        code(
            s.append(&t, &st, ExpectedVersion::Any, vec![e.clone(), e])
                .await
        ) == "invalid_input",
        "duplicate ids in a batch"
    );
    let mut bad_type = ev("x");
    bad_type.event_type = String::new();
    ensure!(
        code(
            s.append(&t, &st, ExpectedVersion::Any, vec![bad_type])
                .await
        ) == "invalid_input",
        "empty event type"
    );
    // Nothing above was written.
    let r = s
        .read_stream(&t, &st, ReadFrom::Edge, Direction::Forwards, 10)
        .await;
    ensure!(
        matches!(r, Err(StoreError::NotFound(_))),
        "rejected input was written: {r:?}"
    );
    ensure!(
        r.err().map(|e| e.http_status()) == Some(404),
        "NotFound status"
    );
    // The largest allowed batch of the backend is accepted.
    let max = limits.max_batch_events.min(100);
    let r = s
        .append(&t, &st, ExpectedVersion::NoStream, evs(max))
        .await?;
    ensure!(r.last_version + 1 == max as u64, "max batch {r:?}");
    for bad in [0, limits.max_read_limit + 1] {
        let r = s
            .read_stream(&t, &st, ReadFrom::Edge, Direction::Forwards, bad)
            .await;
        ensure!(
            matches!(r, Err(StoreError::InvalidInput { .. })),
            "read limit {bad}: {r:?}"
        );
        let r = s.read_all(&t, 0, bad).await;
        ensure!(
            matches!(r, Err(StoreError::InvalidInput { .. })),
            "read_all limit {bad}"
        );
        let r = s.list_streams(&t, None, bad).await;
        ensure!(
            matches!(r, Err(StoreError::InvalidInput { .. })),
            "list limit {bad}"
        );
    }
    Ok(())
}

async fn subscriptions(s: Store) -> Result<()> {
    let t = tenant();
    let st = stream("sub");
    s.append(&t, &st, ExpectedVersion::NoStream, evs(3)).await?;
    s.append(&t, &stream("sub-other"), ExpectedVersion::NoStream, evs(2))
        .await?;
    let mut all = s.subscribe(&t, SubscriptionTarget::Tenant, None).await?;
    let mut one = s
        .subscribe(&t, SubscriptionTarget::Stream(st.clone()), Some(0))
        .await?;
    let writer = {
        let (s, t, st) = (s.clone(), t.clone(), st.clone());
        tokio::spawn(async move {
            for _ in 0..5 {
                s.append(&t, &st, ExpectedVersion::Any, evs(2)).await?;
            }
            Ok::<_, StoreError>(())
        })
    };
    // Tenant: 5 catch-up + 10 live events, positions strictly increasing, no gaps or dupes.
    let mut positions = Vec::new();
    while positions.len() < 15 {
        let next = tokio::time::timeout(Duration::from_secs(30), all.next())
            .await
            .map_err(|_| anyhow!("tenant subscription stalled after {positions:?}"))?
            .ok_or_else(|| anyhow!("tenant subscription ended"))??;
        ensure!(next.tenant == t, "foreign event in subscription");
        positions.push(next.position);
    }
    ensure!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions {positions:?}"
    );
    // Stream: after version 0 -> versions 1..=12 in order.
    let mut versions = Vec::new();
    while versions.len() < 12 {
        let next = tokio::time::timeout(Duration::from_secs(30), one.next())
            .await
            .map_err(|_| anyhow!("stream subscription stalled after {versions:?}"))?
            .ok_or_else(|| anyhow!("stream subscription ended"))??;
        versions.push(next.version);
    }
    ensure!(
        versions == (1..=12).collect::<Vec<_>>(),
        "versions {versions:?}"
    );
    writer.await??;
    let all_read = s.read_all(&t, 0, 100).await?;
    ensure!(
        all_read.iter().map(|e| e.position).collect::<Vec<_>>() == positions,
        "subscription differs from read_all"
    );
    Ok(())
}

async fn stats(s: Store) -> Result<()> {
    let t = tenant();
    ensure!(
        s.stats(&t).await? == Default::default(),
        "new tenant has stats"
    );
    s.append(&t, &stream("a"), ExpectedVersion::Any, evs(3))
        .await?;
    s.append(&t, &stream("b"), ExpectedVersion::Any, evs(2))
        .await?;
    let st = s.stats(&t).await?;
    ensure!(st.events == 5 && st.streams == 2, "stats {st:?}");
    ensure!(st.bytes > 0, "bytes {st:?}");
    if s.capabilities().gapless_positions {
        ensure!(st.next_position == 5, "next_position {st:?}");
    }
    Ok(())
}

/// Whether `r` is the `archived` refusal naming `first` as the first position (`of_stream`
/// false) or version the store still holds.
fn is_archived<T: std::fmt::Debug>(r: &Result<T, StoreError>, first: u64, stream: bool) -> bool {
    matches!(r, Err(StoreError::Archived { first_available, of_stream, .. })
        if *first_available == first && *of_stream == stream)
}

/// After an archiver's trim, a read or subscription that starts in the trimmed range answers
/// `archived` with where the store's data starts, never a page that silently skips the
/// archived events; truncation (which the application asked for) still reads as before.
async fn archived_ranges(s: Store) -> Result<()> {
    let t = tenant();
    let (a, b, c) = (stream("arch-a"), stream("arch-b"), stream("arch-c"));
    s.append(&t, &a, ExpectedVersion::NoStream, evs(3)).await?; // positions 0-2
    s.append(&t, &b, ExpectedVersion::NoStream, evs(2)).await?; // 3-4
    s.append(&t, &a, ExpectedVersion::Exact(2), evs(2)).await?; // 5-6
    s.append(&t, &c, ExpectedVersion::NoStream, evs(4)).await?; // 7-10
    let dropped = s.trim_tenant_before(&t, 4, None).await?;
    ensure!(dropped == 4, "trim dropped {dropped}");
    ensure!(s.stats(&t).await?.trimmed_before == 4, "stats after trim");

    let r = s.read_all(&t, 0, 100).await;
    ensure!(is_archived(&r, 4, false), "read_all from 0: {r:?}");
    let r = s.read_all(&t, 3, 100).await;
    ensure!(is_archived(&r, 4, false), "read_all from 3: {r:?}");
    let kept: Vec<u64> = s
        .read_all(&t, 4, 100)
        .await?
        .iter()
        .map(|e| e.position)
        .collect();
    ensure!(
        kept == (4..=10).collect::<Vec<_>>(),
        "read_all from 4: {kept:?}"
    );

    let fw = |st: StreamId, from| {
        let (s, t) = (s.clone(), t.clone());
        async move { s.read_stream(&t, &st, from, Direction::Forwards, 100).await }
    };
    let r = fw(a.clone(), ReadFrom::Edge).await;
    ensure!(is_archived(&r, 3, true), "stream a from the start: {r:?}");
    let r = fw(a.clone(), ReadFrom::Version(2)).await;
    ensure!(is_archived(&r, 3, true), "stream a from 2: {r:?}");
    ensure!(
        read_fw_from(&s, &t, &a, 3).await? == vec![3, 4],
        "stream a from 3"
    );
    let r = fw(b.clone(), ReadFrom::Edge).await;
    ensure!(is_archived(&r, 1, true), "stream b from the start: {r:?}");
    let r = s
        .read_stream(&t, &a, ReadFrom::Version(1), Direction::Backwards, 100)
        .await;
    ensure!(
        matches!(
            r,
            Err(StoreError::Archived {
                of_stream: true,
                ..
            })
        ),
        "stream a backwards from 1: {r:?}"
    );
    let back: Vec<u64> = s
        .read_stream(&t, &a, ReadFrom::Edge, Direction::Backwards, 100)
        .await?
        .iter()
        .map(|e| e.version)
        .collect();
    ensure!(
        back == vec![4, 3],
        "stream a backwards from the end: {back:?}"
    );

    // Truncation is not archival: the truncated stream reads from its new start.
    s.truncate_before(&t, &c, 2).await?;
    ensure!(
        read_fw(&s, &t, &c).await? == vec![2, 3],
        "truncated stream c"
    );

    // A subscription from the start refuses at once or as its first item.
    match s.subscribe(&t, SubscriptionTarget::Tenant, None).await {
        Err(e) => ensure!(
            is_archived(&Err::<(), _>(e.clone()), 4, false),
            "subscribe: {e:?}"
        ),
        Ok(mut sub) => {
            let first = tokio::time::timeout(Duration::from_secs(30), sub.next())
                .await
                .map_err(|_| anyhow!("subscription from 0 stalled"))?
                .ok_or_else(|| anyhow!("subscription from 0 ended"))?;
            ensure!(
                is_archived(&first, 4, false),
                "subscription from 0: {first:?}"
            );
        }
    }
    let mut sub = s.subscribe(&t, SubscriptionTarget::Tenant, Some(3)).await?;
    let first = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .map_err(|_| anyhow!("subscription after 3 stalled"))?
        .ok_or_else(|| anyhow!("subscription after 3 ended"))??;
    ensure!(
        first.position == 4,
        "subscription after 3 began at {}",
        first.position
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Gateway: the real `store-node gateway` binary over DynamoDB Local and the Firestore emulator,
// with a hostile tenant.
// ---------------------------------------------------------------------------------------------

use allsource_tests::bins::store_node as store_node_binary;

struct Gateway {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_dynamodb_hostile_tenant() {
    let Some(env) = allsource_tests::env::require("dynamodb") else {
        return;
    };
    use allsource_tests::env::{AWS_TEST_ACCESS_KEY, AWS_TEST_REGION, AWS_TEST_SECRET_KEY};
    let table = format!("gateway-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let args = [
        "--backend",
        "dynamodb",
        "--init",
        "--dynamodb-table",
        &table,
        "--dynamodb-region",
        AWS_TEST_REGION,
        "--dynamodb-endpoint",
        env.dynamodb_endpoint(),
        "--dynamodb-access-key-id",
        AWS_TEST_ACCESS_KEY,
        "--dynamodb-secret-access-key",
        AWS_TEST_SECRET_KEY,
    ];
    hostile_tenant_through_gateway(&args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_firestore_hostile_tenant() {
    let Some(env) = allsource_tests::env::require("firestore") else {
        return;
    };
    // `--init` on the emulator: its missing Admin API must not stop the gateway (see
    // store_node::backend::firestore::admin).
    let args = [
        "--backend",
        "firestore",
        "--init",
        "--firestore-project",
        env.firestore_project(),
        "--firestore-emulator-host",
        env.firestore_emulator_host(),
    ];
    hostile_tenant_through_gateway(&args).await;
}

/// Starts the real `store-node gateway` with `backend_args` and two tenants A and B with their
/// own tokens, then B tries every way into A's data over HTTP.
async fn hostile_tenant_through_gateway(backend_args: &[&str]) {
    use reqwest::StatusCode;
    use serde_json::json;
    use store_node::tenant::sha256_hex;

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (a, b) = (tenant(), tenant());
    let (tok_a, tok_b) = (
        format!("tok-{}", Uuid::new_v4()),
        format!("tok-{}", Uuid::new_v4()),
    );
    let registry = json!({"version": 1, "tenants": [
        {"id": a.as_str(), "tokenSha256": [sha256_hex(&tok_a)], "state": "active"},
        {"id": b.as_str(), "tokenSha256": [sha256_hex(&tok_b)], "state": "active"},
    ]});
    let reg_path = dir.path().join("registry.json");
    std::fs::write(&reg_path, registry.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let port = allsource_tests::bins::free_port();
    let log =
        std::fs::File::create(dir.path().join("gateway.log")).unwrap_or_else(|e| panic!("{e}"));
    let child = std::process::Command::new(store_node_binary())
        // metrics on a free port: parallel nodes would all claim the default
        .env("STORE_NODE_METRICS_ADDR", "127.0.0.1:0")
        .args(["--log-format", "text", "gateway"])
        .args(backend_args)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--registry")
        .arg(&reg_path)
        .env_remove("POD_NAME")
        .env_remove("FIRESTORE_EMULATOR_HOST")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn gateway: {e}"));
    let mut gw = Gateway {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{}/readyz", gw.base)).send().await {
            if r.status() == StatusCode::OK {
                ready = true;
                break;
            }
        }
        if let Ok(Some(st)) = gw.child.try_wait() {
            let log =
                std::fs::read_to_string(gw._dir.path().join("gateway.log")).unwrap_or_default();
            panic!("gateway exited ({st}):\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "gateway never became ready");
    let url = |p: &str| format!("{}{p}", gw.base);

    // A writes a secret.
    let r = http
        .post(url("/v1/streams/secret-plans/events"))
        .bearer_auth(&tok_a)
        .json(&json!({"events": [{"eventId": Uuid::new_v4(), "eventType": "plan", "data": {"secret": "a-only-7f3e"}}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.status().is_success(), "A's append: {}", r.status());

    // B, with its own valid token, tries every way in.
    let get = |path: String, tok: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(path)
                .bearer_auth(tok)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let st = r.status();
            (st, r.text().await.unwrap_or_default())
        }
    };
    let (st, body) = get(url("/v1/streams/secret-plans/events"), tok_b.clone()).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "B reads A's stream name: {body}");
    let (st, body) = get(url("/v1/events?from=0&limit=100"), tok_b.clone()).await;
    assert!(
        st.is_success() && !body.contains("a-only-7f3e"),
        "B's read_all: {st} {body}"
    );
    let (_, body) = get(url("/v1/streams?limit=100"), tok_b.clone()).await;
    assert!(!body.contains("secret-plans"), "B lists A's stream: {body}");
    let (_, body) = get(url("/v1/stats"), tok_b.clone()).await;
    assert!(body.contains("\"events\":0"), "B's stats count A: {body}");
    // Forged tenant ids in the query or a path do not switch tenants.
    let (_, body) = get(
        url(&format!("/v1/events?from=0&limit=100&tenant={a}")),
        tok_b.clone(),
    )
    .await;
    assert!(
        !body.contains("a-only-7f3e"),
        "tenant query param leaked: {body}"
    );
    let (st, _) = get(
        url(&format!("/v1/streams/{a}%23secret-plans/events")),
        tok_b.clone(),
    )
    .await;
    assert!(
        st.is_client_error(),
        "a key-shaped stream id was accepted: {st}"
    );
    // The same with a document path (Firestore names are `tenants/{t}/streams/{s}`).
    let (st, _) = get(
        url(&format!(
            "/v1/streams/..%2F..%2F{a}%2Fstreams%2Fsecret-plans/events"
        )),
        tok_b.clone(),
    )
    .await;
    assert!(
        st.is_client_error(),
        "a path-shaped stream id was accepted: {st}"
    );
    // B writing under the same name creates B's own stream; A's stays untouched.
    let r = http
        .post(url("/v1/streams/secret-plans/events"))
        .bearer_auth(&tok_b)
        .json(&json!({"events": [{"eventId": Uuid::new_v4(), "eventType": "x", "data": 1}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.status().is_success(), "B's append: {}", r.status());
    let r = http
        .delete(url("/v1/streams/secret-plans"))
        .bearer_auth(&tok_b)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.status().is_success(),
        "B's delete of its own stream: {}",
        r.status()
    );
    let (st, body) = get(url("/v1/streams/secret-plans/events"), tok_a.clone()).await;
    assert!(
        st.is_success() && body.contains("a-only-7f3e"),
        "A's data after B's attempts: {st} {body}"
    );
    // No token or a wrong token: 401.
    let (st, _) = get(url("/v1/streams/secret-plans/events"), "nope".into()).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

/// Issue 15, defect 5: a pooled tenant's IAM policy pins only the base-table key, so with its
/// own credentials it can write items into its own partitions whose index attributes (`g1p`,
/// `g2p`) name another tenant. DynamoDB Local enforces no IAM, so this writes exactly what such
/// a tenant could: items keyed `{evil}#...` claiming to be the victim's. The victim must never
/// see them (not even as a page shortened by them), and the victim's trim and purge must never
/// touch the attacker's items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_forged_index_items_are_ignored() {
    let Some(env) = allsource_tests::env::require("dynamodb") else {
        return;
    };
    use allsource_tests::env::{AWS_TEST_ACCESS_KEY, AWS_TEST_REGION, AWS_TEST_SECRET_KEY};
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    use store_node::backend::dynamodb::{DynamoConfig, DynamoStore, StaticCredentials};
    let table = format!("forged-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut cfg = DynamoConfig::new(table.clone(), AWS_TEST_REGION);
    cfg.endpoint = Some(env.dynamodb_endpoint().to_string());
    cfg.credentials = Some(StaticCredentials {
        access_key_id: AWS_TEST_ACCESS_KEY.into(),
        secret_access_key: AWS_TEST_SECRET_KEY.into(),
    });
    let store = DynamoStore::connect(cfg).await.unwrap();
    store.ensure_table().await.unwrap();
    let (victim, evil) = (tenant(), tenant());
    let s = StreamId::new("orders").unwrap();
    store
        .append(&victim, &s, ExpectedVersion::Any, evs(3))
        .await
        .unwrap();
    // The attacker's forged items: 150 events claiming positions 0-149 of the victim (more
    // than a page), and a stream head in the victim's listing.
    let ddb = env.dynamodb_client();
    let pk = format!("{}#fake", evil.as_str());
    for p in 0..150u64 {
        ddb.put_item()
            .table_name(&table)
            .item("pk", Av::S(pk.clone()))
            .item("sk", Av::S(format!("v#{p:020}")))
            .item("g2p", Av::S(victim.as_str().into()))
            .item("g2s", Av::N(p.to_string()))
            .item("stream", Av::S("orders".into()))
            .item("version", Av::N(p.to_string()))
            .item("event_id", Av::S(Uuid::new_v4().to_string()))
            .item("event_type", Av::S("Forged".into()))
            .item("payload", Av::B(b"{}".to_vec().into()))
            .item("metadata", Av::S("{}".into()))
            .item("ts", Av::N("1".into()))
            .send()
            .await
            .unwrap();
    }
    ddb.put_item()
        .table_name(&table)
        .item("pk", Av::S(pk.clone()))
        .item("sk", Av::S("head".into()))
        .item("g1p", Av::S(victim.as_str().into()))
        .item("g1s", Av::S("fake".into()))
        .item("last_version", Av::N("0".into()))
        .item("start_version", Av::N("0".into()))
        .item("deleted", Av::Bool(false))
        .send()
        .await
        .unwrap();

    let all = store.read_all(&victim, 0, 100).await.unwrap();
    let types: Vec<&str> = all.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["e0", "e1", "e2"],
        "the victim's read_all shows the attacker's forged events"
    );
    assert!(all.iter().all(|e| e.tenant == victim));
    let streams = store.list_streams(&victim, None, 100).await.unwrap();
    let names: Vec<&str> = streams.iter().map(|i| i.stream.as_str()).collect();
    assert_eq!(
        names,
        ["orders"],
        "forged stream head listed for the victim"
    );
    assert!(store.foreign_items_ignored() > 0);

    let forged_left = || async {
        ddb.query()
            .table_name(&table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", Av::S(pk.clone()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .count()
    };
    store.trim_tenant_before(&victim, 2, None).await.unwrap();
    assert_eq!(
        forged_left().await,
        151,
        "the victim's trim deleted another partition's items"
    );
    store.purge_tenant(&victim).await.unwrap();
    assert_eq!(
        forged_left().await,
        151,
        "the victim's purge deleted another partition's items"
    );
    assert!(store.read_all(&victim, 0, 100).await.unwrap().is_empty());
}
