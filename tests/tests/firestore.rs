//! Firestore-specific behaviour on the emulator from `tests/env`, beyond the shared conformance
//! suite: two gateway replicas (separate clients, no shared in-process lock) racing on one
//! stream, Firestore's size limits at their edge, the TTL field, and the emulator's answer to
//! the Admin API. Every test uses its own random tenant.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use store_node::backend::firestore::{admin, auth, layout, rest, FirestoreConfig, FirestoreStore};
use store_node::{EventStore, ExpectedVersion, NewEvent, StoreError, StreamId, TenantId};
use uuid::Uuid;

fn store() -> Option<(FirestoreStore, FirestoreConfig)> {
    let env = allsource_tests::env::require("firestore")?;
    let cfg = FirestoreConfig::emulator(env.firestore_project(), env.firestore_emulator_host());
    let s = FirestoreStore::connect(cfg.clone()).unwrap_or_else(|e| panic!("client: {e}"));
    Some((s, cfg))
}

/// A bare REST client with the store's credentials.
fn rest_client(cfg: &FirestoreConfig) -> rest::RestClient {
    let tokens = auth::TokenSource::new(&cfg.credentials).unwrap_or_else(|e| panic!("{e}"));
    rest::RestClient::with_tokens(&cfg.endpoint, tokens).unwrap_or_else(|e| panic!("{e}"))
}

fn tenant() -> TenantId {
    let id = Uuid::new_v4().simple().to_string();
    TenantId::new(format!("f-{}", &id[..16])).unwrap_or_else(|e| panic!("{e}"))
}

fn stream(s: &str) -> StreamId {
    StreamId::new(s).unwrap_or_else(|e| panic!("{e}"))
}

fn ev(n: usize) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "t".into(),
        payload: vec![b'x'; n],
        metadata: BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_race_exactly_one_wins_positions_stay_gapless() {
    let Some((a, cfg)) = store() else { return };
    let b = FirestoreStore::connect(cfg).unwrap_or_else(|e| panic!("{e}"));
    let replicas: Vec<Arc<dyn EventStore>> = vec![Arc::new(a), Arc::new(b)];
    let (t, st) = (tenant(), stream("race"));
    replicas[0]
        .append(&t, &st, ExpectedVersion::NoStream, vec![ev(8)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let (s, t, st) = (replicas[i % 2].clone(), t.clone(), st.clone());
            tokio::spawn(async move {
                s.append(&t, &st, ExpectedVersion::Exact(0), vec![ev(8), ev(8)])
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap_or_else(|e| panic!("{e}")) {
            Ok(r) => {
                wins += 1;
                assert_eq!((r.first_version, r.last_version), (1, 2));
            }
            Err(StoreError::Conflict { current: Some(2) }) => {}
            Err(e) => panic!("loser got {e:?}"),
        }
    }
    assert_eq!(wins, 1, "exactly one replica's append must win");
    // Both replicas appending to other streams of the tenant at once: gap-free positions.
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (s, t) = (replicas[i % 2].clone(), t.clone());
            tokio::spawn(async move {
                s.append(
                    &t,
                    &stream(&format!("s{i}")),
                    ExpectedVersion::Any,
                    vec![ev(8)],
                )
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let all = replicas[1]
        .read_all(&t, 0, 100)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (0..9).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firestore_limits_hold_at_their_edge() {
    let Some((s, cfg)) = store() else { return };
    let t = tenant();
    let limits = s.limits();
    // The largest batch is exactly one 500-write commit; the emulator takes it.
    let r = s
        .append(
            &t,
            &stream("wide"),
            ExpectedVersion::NoStream,
            (0..limits.max_batch_events).map(|_| ev(4)).collect(),
        )
        .await
        .unwrap_or_else(|e| panic!("largest batch: {e}"));
    assert_eq!(r.last_version + 1, limits.max_batch_events as u64);
    // The largest event fits one document; one byte more is refused before any call.
    let r = s
        .append(
            &t,
            &stream("big"),
            ExpectedVersion::NoStream,
            vec![ev(limits.max_event_bytes)],
        )
        .await
        .unwrap_or_else(|e| panic!("largest event: {e}"));
    assert_eq!(r.first_version, 0);
    let r = s
        .append(
            &t,
            &stream("big"),
            ExpectedVersion::Any,
            vec![ev(limits.max_event_bytes + 1)],
        )
        .await;
    assert_eq!(r.err().map(|e| e.code()), Some("too_large"));
    // A document over 1 MiB sent anyway is Firestore's own refusal, mapped to too_large.
    let client = rest_client(&cfg);
    let l = layout::Layout::new(&cfg.project, &cfg.database);
    let mut fields = serde_json::Map::new();
    fields.insert("p".into(), layout::bytes(&vec![0u8; 1024 * 1024 + 1]));
    let name = format!("{}/probe/big", l.tenant_doc(&t));
    let r = client
        .commit(l.root(), vec![layout::set(&name, fields)], None)
        .await;
    assert!(matches!(r, Err(rest::RestError::TooLarge(_))), "{r:?}");
    assert_eq!(
        StoreError::from(r.err().unwrap_or_else(|| panic!())).code(),
        "too_large"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_field_is_written_where_the_policy_reads_it() {
    let Some((_, mut cfg)) = store() else { return };
    cfg.event_ttl = Some(Duration::from_secs(3600));
    let s = FirestoreStore::connect(cfg.clone()).unwrap_or_else(|e| panic!("{e}"));
    let (t, st) = (tenant(), stream("ttl"));
    let e = ev(3);
    let before = chrono::Utc::now();
    s.append(&t, &st, ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let after = chrono::Utc::now();
    let client = rest_client(&cfg);
    let l = layout::Layout::new(&cfg.project, &cfg.database);
    for name in [
        l.event_doc(&t, &st, 0),
        l.event_id_doc(&t, &st, &e.event_id),
    ] {
        let doc = client
            .get(l.root(), name.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{name} missing"));
        let ts = doc["fields"][layout::TTL_FIELD]["timestampValue"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no TTL field: {doc}"));
        let ts = chrono::DateTime::parse_from_rfc3339(ts).unwrap_or_else(|e| panic!("{e}"));
        let hour = chrono::Duration::hours(1);
        let lo = before + hour - chrono::Duration::milliseconds(1);
        let hi = after + hour + chrono::Duration::milliseconds(1);
        assert!(ts >= lo && ts <= hi, "{name}: expires {ts}");
    }
    // The TTL policy the admin requests set names the same field on both collection groups.
    let ttl = admin::ttl_policies(&cfg.project, &cfg.database);
    assert!(ttl
        .iter()
        .all(|r| r.path.contains(&format!("/fields/{}?", layout::TTL_FIELD))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_does_not_serve_the_admin_api() {
    let Some((s, _)) = store() else { return };
    // Recorded limit: the emulator answers 404 "Not Found" to every Admin API request; the
    // backend reports that as NotServed instead of failing (requests are tested against a
    // recording server in store-node's admin module).
    let out = s.ensure_indexes().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.len(), admin::requests("p", "d").len());
    assert!(
        out.iter()
            .all(|o| matches!(o, admin::Outcome::NotServed { .. })),
        "{out:?}"
    );
}
