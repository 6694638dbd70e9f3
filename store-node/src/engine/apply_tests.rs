//! One tenant's busy lock never holds up another tenant's writes: the WAL writer defers the
//! busy tenant's records to that tenant's own applier (see [`super::apply`]), the busy tenant's
//! own write is acknowledged only once it is applied, and a checkpoint taken meanwhile still
//! holds every acknowledged record.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use super::purge_tests::{evs, sid, tid};
use super::*;
use crate::backend::EventStore;
use crate::fsio::SimFs;

fn open(fs: &SimFs) -> Engine {
    let config = EngineConfig {
        checkpoint_interval_ms: 0,
        row_group_rows: 4,
        ..EngineConfig::new("/data")
    };
    Engine::open_with_fs(config, Arc::new(fs.clone())).unwrap()
}

async fn ids(e: &Engine, t: &TenantId) -> Vec<u128> {
    e.read_stream(t, &sid("s"), ReadFrom::Version(0), Direction::Forwards, 100)
        .await
        .unwrap()
        .iter()
        .map(|ev| ev.event_id.as_u128())
        .collect()
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_whose_lock_is_held_does_not_hold_up_other_tenants_writes() {
    let fs = SimFs::new();
    let e = Arc::new(open(&fs));
    let (a, b, s) = (tid("busy"), tid("other"), sid("s"));
    e.append(&a, &s, ExpectedVersion::Any, evs(0, 1))
        .await
        .unwrap();
    e.append(&b, &s, ExpectedVersion::Any, evs(100, 1))
        .await
        .unwrap();

    // Hold the WAL writer between the write and the fsync of A's next record.
    let (syncing_tx, syncing_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let once = parking_lot::Mutex::new(Some((syncing_tx, go_rx)));
    fs.set_sync_hook(Some(Arc::new(move || {
        if let Some((syncing, go)) = once.lock().take() {
            syncing.send(()).unwrap();
            go.recv_timeout(WAIT).unwrap();
        }
    })));
    let a_append = {
        let (e, a, s) = (e.clone(), a.clone(), s.clone());
        tokio::spawn(async move { e.append(&a, &s, ExpectedVersion::Any, evs(1, 1)).await })
    };
    syncing_rx.recv_timeout(WAIT).unwrap();
    fs.set_sync_hook(None);

    // A reader of A holds A's lock, as a long read or a checkpoint copying A would.
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let reader = {
        let (e, a, s) = (e.clone(), a.clone(), s.clone());
        std::thread::spawn(move || {
            let mut first = Some((held_tx, release_rx));
            e.visit_stream(&a, &s, 0, 1, |_| {
                if let Some((held, release)) = first.take() {
                    held.send(()).unwrap();
                    release.recv_timeout(WAIT).unwrap();
                }
            })
        })
    };
    held_rx.recv_timeout(WAIT).unwrap();
    // A's record becomes durable now; applying it needs A's lock.
    go_tx.send(()).unwrap();

    let b_append = tokio::time::timeout(
        Duration::from_secs(20),
        e.append(&b, &s, ExpectedVersion::Any, evs(101, 1)),
    )
    .await;
    assert!(
        b_append.is_ok(),
        "tenant B's append waited for the lock another tenant's reader held"
    );
    b_append.unwrap().unwrap();
    assert_eq!(ids(&e, &b).await, vec![100, 101]);

    // A checkpoint started now must still hold A's durable record once it is done.
    let ck = {
        let e = e.clone();
        std::thread::spawn(move || e.checkpoint())
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !a_append.is_finished(),
        "A's append was acknowledged before readers could see it"
    );

    release_tx.send(()).unwrap();
    assert_eq!(reader.join().unwrap().unwrap(), 1);
    let r = tokio::time::timeout(WAIT, a_append)
        .await
        .expect("A's append never completed")
        .unwrap()
        .unwrap();
    assert_eq!((r.first_version, r.last_version), (1, 1));
    // Acknowledged means visible.
    assert_eq!(ids(&e, &a).await, vec![0, 1]);
    ck.join().unwrap().unwrap();

    // The checkpoint covered A's deferred record: after a power loss (which keeps only what
    // was synced) nothing acknowledged is missing.
    Arc::into_inner(e).expect("no other handle").halt();
    fs.crash();
    let e = open(&fs);
    assert_eq!(ids(&e, &a).await, vec![0, 1]);
    assert_eq!(ids(&e, &b).await, vec![100, 101]);
}
