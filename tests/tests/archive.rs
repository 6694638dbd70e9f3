//! Archival to object storage against the real S3 (moto) and GCS (fake-gcs-server) servers of
//! tests/env: archive a tenant, read the Parquet back with the parquet crate, check manifests,
//! watermark and trim, read through the archive, crash at every step and rerun (in process and
//! with the real `store-node archive` binary), and bucket lifecycle round trips.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use allsource_tests::env::{require, unique_name, TestEnv};
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use store_node::archive::archiver::sha256_hex;
use store_node::archive::lease::Lease;
use store_node::archive::lifecycle::{self, LifecycleSpec, Tier};
use store_node::archive::manifest::{self, TenantManifest};
use store_node::archive::objstore::{GcsAuth, GcsStore, PutCondition, S3Store, Versioned};
use store_node::archive::{
    self, ArchiveAwareStore, ArchiveError, ArchivePlan, ArchiveReader, ArchiveScope, CrashPoint,
    Destination, FaultAction, ObjectStore,
};
use store_node::backend::memory::MemoryStore;
use store_node::{
    Direction, EventStore, ExpectedVersion, NewEvent, ReadFrom, RecordedEvent, StoreError,
    StreamId, TenantId,
};

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

/// Store uid of the archives these tests write (the operator passes the EventStore's uid).
const STORE: &str = "store-uid-1";

/// The archive scope of a tenant of [`STORE`] at incarnation 0.
fn scope(t: &TenantId) -> ArchiveScope {
    ArchiveScope::new(t.clone(), STORE, 0).unwrap()
}

/// How long the tests' archiver lease lasts (a crashed run holds it this long).
const TEST_LEASE: Duration = Duration::from_secs(1);

/// Waits until a crashed run's lease has lapsed.
async fn lease_lapses() {
    tokio::time::sleep(TEST_LEASE + Duration::from_millis(200)).await;
}

const TIERS: [&str; 3] = ["gold", "silver", "bronze"];
const COUNTRIES: [&str; 4] = ["DE", "FR", "NL", "SE"];

/// A realistic JSON payload (~400 bytes) for event `i`.
fn payload(i: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "orderId": format!("ord-{:08}", i / 4),
        "customer": {"id": format!("cus-{:06}", i % 997), "tier": TIERS[(i % 3) as usize]},
        "lines": [
            {"sku": format!("SKU-{:05}", i % 1_000), "qty": i % 7 + 1, "price": 1999 + (i % 50) * 100},
            {"sku": format!("SKU-{:05}", (i * 7) % 1_000), "qty": 1, "price": 499},
        ],
        "currency": "EUR",
        "shipping": {"method": "standard", "country": COUNTRIES[(i % 4) as usize]},
        "note": "please leave the parcel at the front door",
    }))
    .unwrap()
}

/// Appends `n` events spread over 5 streams; returns them as recorded (read back).
async fn fill(store: &dyn EventStore, t: &TenantId, n: u64) -> Vec<RecordedEvent> {
    let start = store.stats(t).await.unwrap().next_position;
    for i in start..start + n {
        let mut metadata = BTreeMap::new();
        metadata.insert("correlationId".to_string(), format!("c-{i}"));
        store
            .append(
                t,
                &StreamId::new(format!("order-{}", i % 5)).unwrap(),
                ExpectedVersion::Any,
                vec![NewEvent {
                    event_id: uuid::Uuid::new_v4(),
                    event_type: "OrderPlaced".into(),
                    payload: payload(i),
                    metadata,
                }],
            )
            .await
            .unwrap();
    }
    read_all(store, t, start).await
}

/// What the store still holds of a tenant after a trim to `trimmed`: a read from 0 must answer
/// `archived` naming `trimmed`, never a page that skips the archived events.
async fn hot_after_trim(store: &dyn EventStore, t: &TenantId, trimmed: u64) -> Vec<RecordedEvent> {
    let r = store.read_all(t, 0, 1000).await;
    assert!(
        matches!(r, Err(StoreError::Archived { first_available, of_stream: false, .. }) if first_available == trimmed),
        "a read from 0 after a trim to {trimmed}: {r:?}"
    );
    read_all(store, t, trimmed).await
}

async fn read_all(store: &dyn EventStore, t: &TenantId, from: u64) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut pos = from;
    loop {
        let page = store.read_all(t, pos, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        pos = last.position + 1;
        out.extend(page);
    }
    out
}

/// A plan that treats everything appended so far as cold.
fn cold_plan(t: &TenantId) -> ArchivePlan {
    let mut plan = ArchivePlan::new(STORE, vec![t.clone()], Duration::from_secs(3600));
    plan.now_ms = Some(chrono::Utc::now().timestamp_millis() + 2 * 3_600_000);
    // Garbage of a crashed run is collected at once (no run of these tests is still uploading).
    plan.gc_grace = Duration::ZERO;
    plan.lease_ttl = TEST_LEASE;
    plan.file_bounds.max_rows = 400;
    plan.read_page = 250;
    plan
}

async fn s3_bucket(env: &TestEnv) -> (Arc<dyn ObjectStore>, String) {
    let bucket = unique_name("arch");
    let client = env.s3_client();
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    (Arc::new(S3Store::from_client(client, &bucket)), bucket)
}

async fn gcs_bucket(env: &TestEnv) -> (Arc<dyn ObjectStore>, String) {
    let bucket = unique_name("arch");
    let store = GcsStore::new(&bucket, Some(env.gcs_endpoint()), GcsAuth::Anonymous).unwrap();
    store.create_bucket("test-project").await.unwrap();
    (Arc::new(store), bucket)
}

/// Every parquet object under the tenant's directory, decoded independently of the archive
/// module (plain parquet crate): (key, positions, event ids, payloads).
async fn parquet_objects(
    objects: &dyn ObjectStore,
    dest: &Destination,
    t: &TenantId,
) -> Vec<(String, Vec<(u64, String, Vec<u8>)>)> {
    let mut out = Vec::new();
    for o in objects
        .list(&dest.key(&format!("tenant={t}/")))
        .await
        .unwrap()
    {
        if !o.key.ends_with(".parquet") {
            continue;
        }
        let data = objects.get(&o.key).await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(data)
            .unwrap()
            .build()
            .unwrap();
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            let pos = batch
                .column_by_name("position")
                .unwrap()
                .as_primitive::<UInt64Type>();
            let ids = batch.column_by_name("event_id").unwrap().as_string::<i32>();
            let pay = batch.column_by_name("payload").unwrap().as_binary::<i32>();
            for i in 0..batch.num_rows() {
                rows.push((
                    pos.value(i),
                    ids.value(i).to_string(),
                    pay.value(i).to_vec(),
                ));
            }
        }
        out.push((o.key, rows));
    }
    out
}

/// The archive holds every event of `expected` exactly once, and nothing else; every data object
/// is listed in the committed manifest with its true checksum, size and row count.
async fn assert_archive_exactly(
    objects: &dyn ObjectStore,
    dest: &Destination,
    t: &TenantId,
    expected: &[RecordedEvent],
) -> TenantManifest {
    let files = parquet_objects(objects, dest, t).await;
    let mut rows: Vec<_> = files.iter().flat_map(|(_, r)| r.clone()).collect();
    rows.sort_by_key(|r| r.0);
    let want: Vec<_> = expected
        .iter()
        .map(|e| (e.position, e.event_id.to_string(), e.payload.clone()))
        .collect();
    assert_eq!(rows.len(), want.len(), "archived row count");
    assert!(rows == want, "archived rows differ from the events");

    let m = manifest::load_tenant(objects, dest, &scope(t))
        .await
        .unwrap();
    let listed: Vec<_> = m.files.iter().map(|f| dest.key(&f.key)).collect();
    let present: Vec<_> = files.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(listed, present, "objects == committed manifest files");
    for f in &m.files {
        let data = objects.get(&dest.key(&f.key)).await.unwrap();
        assert_eq!(sha256_hex(&data), f.sha256, "{}", f.key);
        assert_eq!(data.len() as u64, f.bytes);
    }
    assert_eq!(m.events(), expected.len() as u64);
    assert_eq!(
        m.watermark,
        expected.last().map_or(0, |e| e.position + 1),
        "watermark"
    );
    m
}

async fn archive_trim_and_read_back(objects: Arc<dyn ObjectStore>, url: &str) {
    let dest = Destination::parse(url).unwrap();
    let store = MemoryStore::default();
    let (acme, other) = (tenant("acme"), tenant("other"));
    let events = fill(&store, &acme, 1_000).await;
    let other_events = fill(&store, &other, 20).await;

    let report = archive::run(&store, objects.as_ref(), &dest, &cold_plan(&acme))
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.events_archived, 1_000);
    assert_eq!(report.tenants[0].trimmed, 1_000);
    assert_eq!(report.tenants[0].watermark, 1_000);
    let m = assert_archive_exactly(objects.as_ref(), &dest, &acme, &events).await;
    assert_eq!(m.files.len(), 3, "400-row files: 400 + 400 + 200");
    assert!(m.files[0]
        .key
        .starts_with("tenant=acme/store=store-uid-1/incarnation=0/date="));
    let run_key = dest.key(&manifest::run_manifest_key(&report.run_id));
    let run: serde_json::Value =
        serde_json::from_slice(&objects.get(&run_key).await.unwrap()).unwrap();
    assert_eq!(run["tenants"][0]["watermark"], 1_000);

    // The store no longer holds them hot; the other tenant is untouched.
    assert_eq!(store.stats(&acme).await.unwrap().events, 0);
    assert!(hot_after_trim(&store, &acme, 1_000).await.is_empty());
    assert_eq!(read_all(&store, &other, 0).await, other_events);

    // New events stay hot while younger than the hot window; a rerun archives nothing.
    let newer = fill(&store, &acme, 30).await;
    let mut plan = cold_plan(&acme);
    plan.now_ms = Some(newer[0].timestamp_ms);
    plan.hot_retention = Duration::ZERO;
    let report = archive::run(&store, objects.as_ref(), &dest, &plan)
        .await
        .unwrap();
    assert_eq!(report.events_archived, 0);
    assert_eq!(store.stats(&acme).await.unwrap().events, 30);

    // Reads through the archive: everything, in order, exactly once.
    let aware = ArchiveAwareStore::new(
        store.clone(),
        ArchiveReader::new(objects.clone(), dest.clone(), STORE).unwrap(),
    );
    let all: Vec<_> = events.iter().chain(&newer).cloned().collect();
    assert_eq!(read_all(&aware, &acme, 0).await, all);
    assert_eq!(
        aware.read_all(&acme, 990, 15).await.unwrap(),
        all[990..1005].to_vec()
    );
    let s = StreamId::new("order-3").unwrap();
    let stream: Vec<_> = all.iter().filter(|e| e.stream == s).cloned().collect();
    let fwd = aware
        .read_stream(&acme, &s, ReadFrom::Edge, Direction::Forwards, 10_000)
        .await
        .unwrap();
    assert_eq!(fwd, stream);
    let back = aware
        .read_stream(&acme, &s, ReadFrom::Version(150), Direction::Backwards, 20)
        .await
        .unwrap();
    let want: Vec<_> = stream
        .iter()
        .rev()
        .filter(|e| e.version <= 150)
        .take(20)
        .cloned()
        .collect();
    assert_eq!(back, want);

    // Everything archived in a later run lands after the first watermark, exactly once.
    archive::run(&store, objects.as_ref(), &dest, &cold_plan(&acme))
        .await
        .unwrap();
    assert_archive_exactly(objects.as_ref(), &dest, &acme, &all).await;
    assert_eq!(store.stats(&acme).await.unwrap().events, 0);
}

#[tokio::test]
async fn s3_archive_trim_and_read_back() {
    let Some(env) = require("s3") else { return };
    let (objects, bucket) = s3_bucket(env).await;
    archive_trim_and_read_back(objects, &format!("s3://{bucket}/archive/es1")).await;
}

/// Archive files are bounded in bytes as well as rows (the archiver buffers a file whole before
/// upload): ten 500 KB events under a 2 MiB bound make files of at most four events, each object
/// on S3 within the bound, and every event archived once.
#[tokio::test]
async fn s3_archive_files_are_bounded_in_bytes() {
    let Some(env) = require("s3") else { return };
    let (objects, bucket) = s3_bucket(env).await;
    let dest = Destination::parse(&format!("s3://{bucket}/archive/bytes")).unwrap();
    let store = MemoryStore::default();
    let t = tenant("acme");
    for i in 0..10u128 {
        store
            .append(
                &t,
                &StreamId::new("big").unwrap(),
                ExpectedVersion::Any,
                vec![NewEvent {
                    event_id: uuid::Uuid::from_u128(i + 1),
                    event_type: "Big".into(),
                    payload: vec![b'a' + i as u8; 500_000],
                    metadata: BTreeMap::new(),
                }],
            )
            .await
            .unwrap();
    }
    let events = read_all(&store, &t, 0).await;
    let mut plan = cold_plan(&t);
    plan.file_bounds.max_bytes = 2 << 20;
    let report = archive::run(&store, objects.as_ref(), &dest, &plan)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    let m = assert_archive_exactly(objects.as_ref(), &dest, &t, &events).await;
    let rows: Vec<u64> = m.files.iter().map(|f| f.rows).collect();
    assert_eq!(rows, vec![4, 4, 2], "files of at most 2 MiB of events");
    for f in &m.files {
        assert!(f.bytes <= 2 << 20, "{} is {} bytes", f.key, f.bytes);
    }
}

#[tokio::test]
async fn gcs_archive_trim_and_read_back() {
    let Some(env) = require("gcs") else { return };
    let (objects, bucket) = gcs_bucket(env).await;
    archive_trim_and_read_back(objects, &format!("gs://{bucket}/archive/es1")).await;
}

/// A crash at each step (injected in process), new events in between, then a clean rerun:
/// every event exactly once in the archive, and no trim before the commit.
#[tokio::test]
async fn s3_crash_at_each_step_then_rerun_in_process() {
    let Some(env) = require("s3") else { return };
    let (objects, bucket) = s3_bucket(env).await;
    for point in [
        CrashPoint::Upload,
        CrashPoint::Verify,
        CrashPoint::Watermark,
    ] {
        let dest = Destination::parse(&format!("s3://{bucket}/crash-{point:?}")).unwrap();
        let store = MemoryStore::default();
        let t = tenant("acme");
        let mut events = fill(&store, &t, 500).await;
        let mut plan = cold_plan(&t);
        plan.fault = Some((point, FaultAction::Stop));
        let err = archive::run(&store, objects.as_ref(), &dest, &plan)
            .await
            .unwrap_err();
        assert!(matches!(err, ArchiveError::InjectedStop(_)), "{err}");
        // Nothing is trimmed before the commit, nor by the crashed run at all.
        assert_eq!(store.stats(&t).await.unwrap().events, 500, "{point:?}");
        let m = manifest::load_tenant(objects.as_ref(), &dest, &scope(&t))
            .await
            .unwrap();
        let committed = point == CrashPoint::Watermark;
        assert_eq!(m.watermark, if committed { 500 } else { 0 }, "{point:?}");

        // More events arrive before the rerun, so uncommitted file names change. The crashed
        // run still holds the lease: a rerun before it lapses is refused.
        events.extend(fill(&store, &t, 123).await);
        let early = archive::run(&store, objects.as_ref(), &dest, &cold_plan(&t)).await;
        assert!(
            matches!(early, Err(ArchiveError::LeaseHeld { .. })),
            "{point:?}: a rerun while the crashed run's lease holds: {early:?}"
        );
        lease_lapses().await;
        let report = archive::run(&store, objects.as_ref(), &dest, &cold_plan(&t))
            .await
            .unwrap();
        assert!(report.ok());
        assert_archive_exactly(objects.as_ref(), &dest, &t, &events).await;
        assert_eq!(store.stats(&t).await.unwrap().events, 0, "{point:?}");
    }
}

/// A file that does not verify is never committed and nothing is trimmed.
#[tokio::test]
async fn s3_corrupted_upload_is_not_committed() {
    let Some(env) = require("s3") else { return };
    let (objects, bucket) = s3_bucket(env).await;
    let corrupting: Arc<dyn ObjectStore> = Arc::new(Corrupting(objects.clone()));
    let dest = Destination::parse(&format!("s3://{bucket}/bad")).unwrap();
    let store = MemoryStore::default();
    let t = tenant("acme");
    let events = fill(&store, &t, 50).await;
    let report = archive::run(&store, corrupting.as_ref(), &dest, &cold_plan(&t))
        .await
        .unwrap();
    assert!(!report.ok());
    let err = report.tenants[0].error.clone().unwrap();
    assert!(err.contains("verification failed"), "{err}");
    assert_eq!(store.stats(&t).await.unwrap().events, 50);
    assert_eq!(
        manifest::load_tenant(objects.as_ref(), &dest, &scope(&t))
            .await
            .unwrap()
            .watermark,
        0
    );
    // A healthy rerun repairs it.
    archive::run(&store, objects.as_ref(), &dest, &cold_plan(&t))
        .await
        .unwrap();
    assert_archive_exactly(objects.as_ref(), &dest, &t, &events).await;
}

/// Flips a byte of every Parquet object it stores (a bucket that corrupts data).
struct Corrupting(Arc<dyn ObjectStore>);

#[async_trait::async_trait]
impl ObjectStore for Corrupting {
    async fn put(&self, key: &str, body: Bytes) -> archive::ArchiveResult<()> {
        let mut v = body.to_vec();
        if key.ends_with(".parquet") {
            let mid = v.len() / 2;
            v[mid] ^= 0xff;
        }
        self.0.put(key, Bytes::from(v)).await
    }
    async fn get(&self, key: &str) -> archive::ArchiveResult<Bytes> {
        self.0.get(key).await
    }
    async fn head(&self, key: &str) -> archive::ArchiveResult<Option<u64>> {
        self.0.head(key).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> archive::ArchiveResult<Vec<archive::objstore::ObjectMeta>> {
        self.0.list(prefix).await
    }
    async fn delete(&self, key: &str) -> archive::ArchiveResult<()> {
        self.0.delete(key).await
    }
    async fn get_versioned(&self, key: &str) -> archive::ArchiveResult<Option<Versioned>> {
        self.0.get_versioned(key).await
    }
    async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        cond: &PutCondition,
    ) -> archive::ArchiveResult<Option<String>> {
        self.0.put_if(key, body, cond).await
    }
    fn bucket(&self) -> &str {
        self.0.bucket()
    }
}

#[tokio::test]
async fn s3_multipart_upload_round_trip() {
    let Some(env) = require("s3") else { return };
    let (objects, _) = s3_bucket(env).await;
    let big: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    objects
        .put("big/object.bin", Bytes::from(big.clone()))
        .await
        .unwrap();
    assert_eq!(
        objects.head("big/object.bin").await.unwrap(),
        Some(big.len() as u64)
    );
    assert!(objects.get("big/object.bin").await.unwrap() == big);
    assert_eq!(objects.head("big/absent").await.unwrap(), None);
    assert!(matches!(
        objects.get("big/absent").await,
        Err(ArchiveError::NotFound(_))
    ));
    objects.delete("big/object.bin").await.unwrap();
    assert!(objects.list("big/").await.unwrap().is_empty());
}

#[tokio::test]
async fn s3_lifecycle_round_trip_preserves_foreign_rules() {
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
        LifecycleRuleFilter,
    };
    let Some(env) = require("s3") else { return };
    let (_, bucket) = s3_bucket(env).await;
    let client = env.s3_client();
    let foreign = LifecycleRule::builder()
        .id("team-logs-expire")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("logs/").build())
        .expiration(LifecycleExpiration::builder().days(7).build())
        .build()
        .unwrap();
    client
        .put_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(foreign)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let mut spec = LifecycleSpec {
        policy: "nightly".into(),
        prefix: "archive/es1".into(),
        hot_retention_days: 30,
        tiers: vec![
            Tier {
                after_days: 30,
                storage_class: "STANDARD_IA".into(),
            },
            Tier {
                after_days: 90,
                storage_class: "GLACIER".into(),
            },
        ],
        expire_after_days: Some(365),
    };
    let get = || async {
        let out = client
            .get_bucket_lifecycle_configuration()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        let mut rules = out.rules().to_vec();
        rules.sort_by(|a, b| a.id().cmp(&b.id()));
        rules
    };
    let ours = lifecycle::s3_rules(&spec).unwrap();
    assert!(
        lifecycle::apply_s3_lifecycle(&client, &bucket, "nightly", ours.clone())
            .await
            .unwrap()
    );
    let rules = get().await;
    let ids: Vec<_> = rules
        .iter()
        .map(|r| r.id().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, vec!["allsource-nightly-archive", "team-logs-expire"]);
    let mine = &rules[0];
    assert_eq!(mine.filter().and_then(|f| f.prefix()), Some("archive/es1/"));
    let tr: Vec<_> = mine
        .transitions()
        .iter()
        .map(|t| (t.days(), t.storage_class().map(|c| c.as_str().to_string())))
        .collect();
    assert_eq!(
        tr,
        vec![
            (Some(30), Some("STANDARD_IA".into())),
            (Some(90), Some("GLACIER".into()))
        ]
    );
    assert_eq!(mine.expiration().and_then(|e| e.days()), Some(365));
    assert_eq!(rules[1].expiration().and_then(|e| e.days()), Some(7));

    // Steady state: nothing to write.
    assert!(
        !lifecycle::apply_s3_lifecycle(&client, &bucket, "nightly", ours)
            .await
            .unwrap()
    );

    // A changed spec replaces our rule only.
    spec.expire_after_days = Some(730);
    let ours = lifecycle::s3_rules(&spec).unwrap();
    assert!(
        lifecycle::apply_s3_lifecycle(&client, &bucket, "nightly", ours)
            .await
            .unwrap()
    );
    let rules = get().await;
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].expiration().and_then(|e| e.days()), Some(730));

    // Removing ours keeps the foreign rule.
    assert!(
        lifecycle::apply_s3_lifecycle(&client, &bucket, "nightly", vec![])
            .await
            .unwrap()
    );
    let rules = get().await;
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].id(), Some("team-logs-expire"));
}

// ---------------------------------------------------------------------------------------------
// The real `store-node archive` binary, killed by the fault hook at each step.

use allsource_tests::bins::store_node as binary;

fn open_engine(dir: &std::path::Path) -> store_node::engine::Engine {
    store_node::engine::Engine::open(store_node::engine::EngineConfig::new(dir)).unwrap()
}

fn run_archive_binary(
    env: &TestEnv,
    data_dir: &std::path::Path,
    dest: &str,
    crash: Option<&str>,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(binary());
    cmd.args(["--log-format", "text", "archive", "--tenant", "acme"])
        .arg("--source")
        .arg(format!("engine:{}", data_dir.display()))
        .args(["--destination", dest, "--hot-retention", "0s"])
        .args(["--endpoint", env.s3_endpoint(), "--force-path-style"])
        .args(["--max-rows-per-file", "100"])
        .args([
            "--store-uid",
            STORE,
            "--gc-grace",
            "0s",
            "--lease-ttl",
            "1s",
        ])
        .env("AWS_ACCESS_KEY_ID", env.s3_access_key())
        .env("AWS_SECRET_ACCESS_KEY", env.s3_secret_key())
        .env("AWS_REGION", "us-east-1")
        .env_remove(archive::archiver::CRASH_ENV);
    if let Some(point) = crash {
        cmd.env(archive::archiver::CRASH_ENV, point);
    }
    cmd.output().expect("run store-node archive")
}

#[tokio::test]
async fn s3_binary_crash_at_each_step_then_rerun() {
    use std::os::unix::process::ExitStatusExt;
    let Some(env) = require("s3") else { return };
    let (objects, bucket) = s3_bucket(env).await;
    let t = tenant("acme");
    for point in ["upload", "verify", "watermark"] {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("s3://{bucket}/bin-{point}");
        let dest = Destination::parse(&url).unwrap();
        let engine = open_engine(dir.path());
        let mut events = fill(&engine, &t, 300).await;
        engine.close().unwrap();
        drop(engine);

        let out = run_archive_binary(env, dir.path(), &url, Some(point));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(6),
            "{point}: not aborted: {stderr}"
        );
        let m = manifest::load_tenant(objects.as_ref(), &dest, &scope(&t))
            .await
            .unwrap();
        assert_eq!(
            m.watermark,
            if point == "watermark" { 300 } else { 0 },
            "{point}"
        );

        // Nothing was trimmed by the crashed run; more events arrive before the rerun.
        let engine = open_engine(dir.path());
        assert_eq!(
            read_all(&engine, &t, 0).await,
            events,
            "{point}: store changed"
        );
        events.extend(fill(&engine, &t, 50).await);
        engine.close().unwrap();
        drop(engine);

        lease_lapses().await;
        let out = run_archive_binary(env, dir.path(), &url, None);
        assert!(
            out.status.success(),
            "{point}: rerun failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["tenants"][0]["watermark"], 350, "{point}");
        assert_archive_exactly(objects.as_ref(), &dest, &t, &events).await;
        let engine = open_engine(dir.path());
        assert!(
            hot_after_trim(&engine, &t, 350).await.is_empty(),
            "{point}: not trimmed"
        );
        engine.close().unwrap();
    }
}

/// Opt-in measurement: archive throughput to the S3 server and the Parquet compression ratio on
/// the realistic JSON payload of [`payload`]. Run with
/// `ALLSOURCE_ARCHIVE_BENCH=200000 cargo test -p allsource-tests --test suites archive::
/// s3_archive_throughput -- --ignored --nocapture` (default 100,000 events).
#[tokio::test]
#[ignore = "measurement; see the doc comment for the command"]
async fn s3_archive_throughput() {
    let n: u64 = std::env::var("ALLSOURCE_ARCHIVE_BENCH").map_or(100_000, |v| v.parse().unwrap());
    let Some(env) = require("s3") else { return };
    let (objects, bucket) = s3_bucket(env).await;
    let dest = Destination::parse(&format!("s3://{bucket}/bench")).unwrap();
    let store = MemoryStore::default();
    let t = tenant("acme");
    let events = fill(&store, &t, n).await;
    // Uncompressed size of the same rows: every column's bytes.
    let raw: usize = events
        .iter()
        .map(|e| {
            e.payload.len()
                + e.event_type.len()
                + e.stream.as_str().len()
                + t.as_str().len()
                + serde_json::to_string(&e.metadata).unwrap().len()
                + 36
                + 8 * 3
        })
        .sum();
    let mut plan = cold_plan(&t);
    plan.file_bounds.max_rows = 50_000;
    plan.read_page = 5_000;
    let started = std::time::Instant::now();
    let report = archive::run(&store, objects.as_ref(), &dest, &plan)
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(report.events_archived, n);
    let mb = report.bytes_archived as f64 / 1e6;
    eprintln!(
        "archive bench: {n} events, raw {:.1} MB, parquet {mb:.2} MB in {} files, \
         compression {:.1}x, {secs:.2} s (read+encode+upload+verify+commit+trim), \
         {:.0} events/s, {:.2} MB/s parquet, {:.2} MB/s raw",
        raw as f64 / 1e6,
        report.tenants[0].files.len(),
        raw as f64 / report.bytes_archived as f64,
        n as f64 / secs,
        mb / secs,
        raw as f64 / 1e6 / secs
    );
}

/// `store-node archive` against a running `store-node serve` (engine backend) over HTTP with the
/// tenant's bearer token: events archived exactly once, then trimmed on the node.
#[tokio::test]
async fn s3_binary_archives_from_http_store_node() {
    let Some(env) = require("s3") else { return };
    let (objects, bucket) = s3_bucket(env).await;
    let tmp = tempfile::tempdir().unwrap();
    let token = "acme-secret-token";
    let registry = serde_json::json!({"version": 1, "tenants": [{"id": "acme",
        "tokenSha256": [store_node::tenant::sha256_hex(token)], "state": "active"}]});
    std::fs::write(tmp.path().join("registry.json"), registry.to_string()).unwrap();
    std::fs::create_dir(tmp.path().join("tokens")).unwrap();
    std::fs::write(tmp.path().join("tokens/acme"), format!("{token}\n")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = std::process::Command::new(binary())
        // metrics on a free port: parallel nodes would all claim the default
        .env("STORE_NODE_METRICS_ADDR", "127.0.0.1:0")
        .args([
            "--log-format",
            "text",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--registry")
        .arg(tmp.path().join("registry.json"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env_remove("POD_NAME")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let http = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "store-node serve exited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _guard = Kill(child);
    for i in 0..120u64 {
        let body = serde_json::json!({"events": [{"eventId": uuid::Uuid::new_v4(),
            "eventType": "OrderPlaced", "data": serde_json::from_slice::<serde_json::Value>(&payload(i)).unwrap(),
            "metadata": {"n": i.to_string()}}]});
        let r = http
            .post(format!("{base}/v1/streams/order-{}/events", i % 3))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(
            status.is_success(),
            "append: {status} {}",
            r.text().await.unwrap_or_default()
        );
    }
    let page: serde_json::Value = http
        .get(format!(
            "{base}/v1/events?from=0&limit=1000&encoding=base64"
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 120);

    let url = format!("s3://{bucket}/http");
    let out = std::process::Command::new(binary())
        .args([
            "--log-format",
            "text",
            "archive",
            "--tenant",
            "acme",
            "--source",
            &base,
        ])
        .arg("--tokens-dir")
        .arg(tmp.path().join("tokens"))
        .args(["--destination", &url, "--hot-retention", "0s"])
        .args(["--endpoint", env.s3_endpoint(), "--force-path-style"])
        .args(["--store-uid", STORE])
        .env("AWS_ACCESS_KEY_ID", env.s3_access_key())
        .env("AWS_SECRET_ACCESS_KEY", env.s3_secret_key())
        .env("AWS_REGION", "us-east-1")
        .env_remove(archive::archiver::CRASH_ENV)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "archive over HTTP failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = Destination::parse(&url).unwrap();
    let files = parquet_objects(objects.as_ref(), &dest, &tenant("acme")).await;
    let mut positions: Vec<u64> = files
        .iter()
        .flat_map(|(_, r)| r.iter().map(|x| x.0))
        .collect();
    positions.sort_unstable();
    assert_eq!(positions, (0..120).collect::<Vec<_>>());
    let archived_payload = &files[0].1[5].2;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(archived_payload).unwrap(),
        serde_json::from_slice::<serde_json::Value>(&payload(5)).unwrap()
    );
    let m = manifest::load_tenant(objects.as_ref(), &dest, &scope(&tenant("acme")))
        .await
        .unwrap();
    assert_eq!(m.watermark, 120);
    let page: serde_json::Value = http
        .get(format!("{base}/v1/events?from=0&limit=1000"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["code"], "archived", "not trimmed on the node: {page}");
    assert_eq!(page["firstAvailablePosition"], 120, "{page}");
}

/// An archiver that fails before it has a report (here: the store node is unreachable) still
/// leaves the reason in `--report-file`, which the operator shows as the policy's lastError.
#[tokio::test]
async fn early_failure_leaves_its_reason_in_the_report_file() {
    let Some(env) = allsource_tests::env::require("s3") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("tokens")).unwrap();
    std::fs::write(tmp.path().join("tokens").join("acme"), "t").unwrap();
    let report = tmp.path().join("termination-log");
    std::fs::write(&report, "").unwrap();
    let closed = format!("http://127.0.0.1:{}", allsource_tests::bins::free_port());
    let out = std::process::Command::new(binary())
        .args(["--log-format", "text", "archive", "--tenant", "acme"])
        .args(["--source", &closed])
        .arg("--tokens-dir")
        .arg(tmp.path().join("tokens"))
        .args(["--destination", "s3://no-such-bucket-for-this-test/x"])
        .args(["--hot-retention", "0s", "--store-uid", STORE])
        .args(["--endpoint", env.s3_endpoint(), "--force-path-style"])
        .arg("--report-file")
        .arg(&report)
        .env("AWS_ACCESS_KEY_ID", env.s3_access_key())
        .env("AWS_SECRET_ACCESS_KEY", env.s3_secret_key())
        .env("AWS_REGION", "us-east-1")
        .env_remove(archive::archiver::CRASH_ENV)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "archiving from a closed port succeeded"
    );
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        text.starts_with("archival failed: "),
        "report file: {text:?}"
    );
    assert!(text.len() < 4096, "termination messages are cut at 4 KiB");
}

// ---------------------------------------------------------------------------------------------
// Whose archive is whose: tenant incarnations, stores sharing a prefix, concurrent archivers.

/// A tenant archived, purged and created again (same id, positions from 0 again) keeps its new,
/// unarchived events: the old incarnation's watermark is not its own.
async fn purged_and_recreated_tenant_keeps_unarchived_events(
    objects: Arc<dyn ObjectStore>,
    url: &str,
) {
    let dest = Destination::parse(url).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path());
    let t = tenant("acme");
    let old = fill(&engine, &t, 200).await;
    let report = archive::run(&engine, objects.as_ref(), &dest, &cold_plan(&t))
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.tenants[0].watermark, 200);

    engine.purge_tenant(&t).await.unwrap();
    let new = fill(&engine, &t, 120).await;
    assert_eq!(
        new[0].position, 0,
        "a re-created tenant starts at position 0"
    );
    assert_eq!(engine.stats(&t).await.unwrap().incarnation, 1);

    // The new events are young (inside the 1 h hot window): nothing of them may go.
    let mut plan = cold_plan(&t);
    plan.now_ms = None;
    let report = archive::run(&engine, objects.as_ref(), &dest, &plan)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    let left = read_all(&engine, &t, 0).await;
    assert_eq!(
        left.len(),
        new.len(),
        "unarchived events of the new incarnation were trimmed"
    );
    assert_eq!(left, new);

    // The old incarnation's archive is whole; the new one archives into its own manifest.
    let m0 = manifest::load_tenant(objects.as_ref(), &dest, &scope(&t))
        .await
        .unwrap();
    assert_eq!((m0.watermark, m0.events()), (200, old.len() as u64));
    let report = archive::run(&engine, objects.as_ref(), &dest, &cold_plan(&t))
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.tenants[0].incarnation, 1);
    assert_eq!(report.tenants[0].watermark, 120);
    let s1 = ArchiveScope::new(t.clone(), STORE, 1).unwrap();
    let m1 = manifest::load_tenant(objects.as_ref(), &dest, &s1)
        .await
        .unwrap();
    assert_eq!((m1.watermark, m1.events()), (120, 120));
    let m0_again = manifest::load_tenant(objects.as_ref(), &dest, &scope(&t))
        .await
        .unwrap();
    assert_eq!(m0_again, m0, "the old incarnation's manifest changed");
    for f in m0.files.iter().chain(&m1.files) {
        let data = objects.get(&dest.key(&f.key)).await.unwrap();
        assert_eq!(sha256_hex(&data), f.sha256, "{}", f.key);
    }
    assert!(
        hot_after_trim(&engine, &t, 120).await.is_empty(),
        "not trimmed"
    );
    engine.close().unwrap();
}

#[tokio::test]
async fn s3_purged_and_recreated_tenant_keeps_unarchived_events() {
    let Some(env) = require("s3") else { return };
    let (objects, bucket) = s3_bucket(env).await;
    purged_and_recreated_tenant_keeps_unarchived_events(objects, &format!("s3://{bucket}/p")).await;
}

#[tokio::test]
async fn gcs_purged_and_recreated_tenant_keeps_unarchived_events() {
    let Some(env) = require("gcs") else { return };
    let (objects, bucket) = gcs_bucket(env).await;
    purged_and_recreated_tenant_keeps_unarchived_events(objects, &format!("gs://{bucket}/p")).await;
}

/// Two stores archiving the same tenant id to one destination prefix: neither trims to, nor
/// collects the files of, the other's archive.
async fn two_stores_sharing_a_prefix_keep_their_events(objects: Arc<dyn ObjectStore>, url: &str) {
    let dest = Destination::parse(url).unwrap();
    let (a, b) = (MemoryStore::default(), MemoryStore::default());
    let t = tenant("acme");
    let a_events = fill(&a, &t, 150).await;
    let b_events = fill(&b, &t, 100).await;
    let plan_for = |uid: &str| {
        let mut p = cold_plan(&t);
        p.store_uid = uid.into();
        p
    };
    let report = archive::run(&a, objects.as_ref(), &dest, &plan_for("store-a"))
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.tenants[0].watermark, 150);

    // B's events are young: they stay hot, whatever A's watermark says.
    let mut young = plan_for("store-b");
    young.now_ms = None;
    let report = archive::run(&b, objects.as_ref(), &dest, &young)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    let left = read_all(&b, &t, 0).await;
    assert_eq!(
        left.len(),
        b_events.len(),
        "B lost unarchived events to a watermark it does not own"
    );

    // B archives later (GC grace 0): both archives are whole and apart.
    let report = archive::run(&b, objects.as_ref(), &dest, &plan_for("store-b"))
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.tenants[0].watermark, 100);
    for (uid, events) in [("store-a", &a_events), ("store-b", &b_events)] {
        let s = ArchiveScope::new(t.clone(), uid, 0).unwrap();
        let m = manifest::load_tenant(objects.as_ref(), &dest, &s)
            .await
            .unwrap();
        assert_eq!(m.events(), events.len() as u64, "{uid}");
        let on_bucket: Vec<String> = objects
            .list(&dest.key(&s.dir()))
            .await
            .unwrap()
            .into_iter()
            .filter(|o| o.key.ends_with(".parquet"))
            .map(|o| o.key)
            .collect();
        let listed: Vec<String> = m.files.iter().map(|f| dest.key(&f.key)).collect();
        assert_eq!(on_bucket, listed, "{uid}: files removed or foreign");
        let reader = ArchiveReader::new(objects.clone(), dest.clone(), uid).unwrap();
        let back = reader.read_all(&m, 0, usize::MAX).await.unwrap();
        assert_eq!(&back, events, "{uid}: archived events differ");
    }
}

#[tokio::test]
async fn s3_two_stores_sharing_a_prefix_keep_their_events() {
    let Some(env) = require("s3") else { return };
    let (objects, bucket) = s3_bucket(env).await;
    two_stores_sharing_a_prefix_keep_their_events(objects, &format!("s3://{bucket}/shared")).await;
}

#[tokio::test]
async fn gcs_two_stores_sharing_a_prefix_keep_their_events() {
    let Some(env) = require("gcs") else { return };
    let (objects, bucket) = gcs_bucket(env).await;
    two_stores_sharing_a_prefix_keep_their_events(objects, &format!("gs://{bucket}/shared")).await;
}

/// A second archiver of a store, started while a first still holds the destination's lease (it
/// hangs after its upload), is refused and changes nothing; a run whose lease lapsed and was taken
/// over cannot renew it, so it cannot commit.
async fn two_archivers_at_once_one_refuses(objects: Arc<dyn ObjectStore>, url: &str) {
    let dest = Destination::parse(url).unwrap();
    let store = MemoryStore::default();
    let t = tenant("acme");
    fill(&store, &t, 300).await;
    let mut first = cold_plan(&t);
    first.lease_ttl = Duration::from_secs(60);
    first.fault = Some((CrashPoint::Upload, FaultAction::Stop));
    let err = archive::run(&store, objects.as_ref(), &dest, &first)
        .await
        .unwrap_err();
    assert!(matches!(err, ArchiveError::InjectedStop(_)), "{err}");
    let uploaded: Vec<String> = objects
        .list(&dest.key(&scope(&t).dir()))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(!uploaded.is_empty(), "the first run uploaded nothing");

    let second = archive::run(&store, objects.as_ref(), &dest, &cold_plan(&t)).await;
    match &second {
        Err(ArchiveError::LeaseHeld { holder, .. }) => assert!(!holder.is_empty()),
        other => panic!("both archivers ran at once: the second got {other:?}"),
    }
    assert_eq!(store.stats(&t).await.unwrap().events, 300, "trimmed");
    let still: Vec<String> = objects
        .list(&dest.key(&scope(&t).dir()))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        still, uploaded,
        "the refused run touched the first run's files"
    );

    // Fencing: a lease that lapsed and was taken over cannot be renewed.
    let mut stale = Lease::acquire(objects.as_ref(), &dest, "store-x", "run-1", TEST_LEASE)
        .await
        .unwrap();
    lease_lapses().await;
    let _taken = Lease::acquire(
        objects.as_ref(),
        &dest,
        "store-x",
        "run-2",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let renewed = stale.renew(objects.as_ref()).await;
    assert!(
        matches!(renewed, Err(ArchiveError::LeaseLost(_))),
        "a taken-over lease renewed: {renewed:?}"
    );
    let third = Lease::acquire(objects.as_ref(), &dest, "store-x", "run-3", TEST_LEASE).await;
    assert!(
        matches!(third, Err(ArchiveError::LeaseHeld { .. })),
        "an unexpired lease was taken: {third:?}"
    );
}

#[tokio::test]
async fn s3_two_archivers_at_once_one_refuses() {
    let Some(env) = require("s3") else { return };
    let (objects, bucket) = s3_bucket(env).await;
    two_archivers_at_once_one_refuses(objects, &format!("s3://{bucket}/lease")).await;
}

#[tokio::test]
async fn gcs_two_archivers_at_once_one_refuses() {
    let Some(env) = require("gcs") else { return };
    let (objects, bucket) = gcs_bucket(env).await;
    two_archivers_at_once_one_refuses(objects, &format!("gs://{bucket}/lease")).await;
}
