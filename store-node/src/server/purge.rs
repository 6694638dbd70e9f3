//! Purges of tenants the registry marks `purging`: a background task erases each such tenant's
//! data once (through [`EventStore::purge_tenant`]) and remembers the outcome, which the
//! authentication step reports to the tenant's own token as 410 Gone with the code
//! `tenant_purging` (still erasing, or the last attempt failed and is retried) or
//! `tenant_purged` (nothing of the tenant is left on this node). The registry is the only
//! input: nothing here is configured by a request, and it must never purge a tenant the
//! registry does not mark `purging`.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::backend::EventStore;
use crate::model::TenantId;

/// Where the purge of one tenant stands on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeStatus {
    /// Not finished yet (not started, running, or retried after the error shown).
    Pending(Option<String>),
    /// The tenant's data is erased on this node.
    Done,
}

/// Outcomes of the purges of the tenants currently marked `purging`, per marking (see
/// [`crate::tenant::RegistrySnapshot::purge_mark`]).
#[derive(Debug, Default)]
pub struct Purges {
    status: Mutex<HashMap<TenantId, (u64, PurgeStatus)>>,
}

impl Purges {
    /// The status of `tenant` under the marking `mark` (pending until a purge started under
    /// that marking finished: a tenant unmarked and marked again, even between two polls,
    /// may have written meanwhile and is purged again).
    pub fn status(&self, tenant: &TenantId, mark: Option<u64>) -> PurgeStatus {
        match (self.status.lock().get(tenant), mark) {
            (Some((m, status)), Some(mark)) if *m == mark => status.clone(),
            _ => PurgeStatus::Pending(None),
        }
    }

    /// Forgets markings no longer in force, so a tenant id used again later is purged again
    /// when it is marked again.
    fn retain(&self, purging: &[(TenantId, u64)]) {
        self.status
            .lock()
            .retain(|t, (m, _)| purging.iter().any(|(id, mark)| id == t && mark == m));
    }

    fn set(&self, tenant: &TenantId, mark: u64, status: PurgeStatus) {
        self.status.lock().insert(tenant.clone(), (mark, status));
    }

    /// Purges every tenant in `purging` (with its marking) not purged yet under that marking,
    /// one after the other.
    pub async fn run_once(&self, store: &Arc<dyn EventStore>, purging: &[(TenantId, u64)]) {
        self.retain(purging);
        for (tenant, mark) in purging {
            let (tenant, mark) = (tenant, *mark);
            let previous = self.status(tenant, Some(mark));
            if previous == PurgeStatus::Done {
                continue;
            }
            match store.purge_tenant(tenant).await {
                Ok(()) => {
                    tracing::info!(%tenant, "tenant marked purging in the registry: data erased");
                    self.set(tenant, mark, PurgeStatus::Done);
                }
                Err(e) => {
                    let msg = e.to_string();
                    if previous != PurgeStatus::Pending(Some(msg.clone())) {
                        tracing::error!(%tenant, error = %msg, "purging tenant failed; retrying");
                    }
                    self.set(tenant, mark, PurgeStatus::Pending(Some(msg)));
                }
            }
        }
    }
}

/// Runs the purges every registry poll interval until `cancel` fires.
pub async fn run(state: AppState, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(state.config().registry_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(store) = state.store() else { continue };
        let purging = state.registry().snapshot().purging_marked();
        state.purges().run_once(&store, &purging).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryStore;
    use crate::model::{ExpectedVersion, NewEvent, StreamId};

    #[tokio::test]
    async fn purges_once_and_forgets_tenants_no_longer_marked() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryStore::default());
        let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
        for t in [&a, &b] {
            let ev = NewEvent {
                event_id: uuid::Uuid::new_v4(),
                event_type: "E".into(),
                payload: b"{}".to_vec(),
                metadata: Default::default(),
            };
            store
                .append(
                    t,
                    &StreamId::new("s").unwrap(),
                    ExpectedVersion::Any,
                    vec![ev],
                )
                .await
                .unwrap();
        }
        let purges = Purges::default();
        assert_eq!(purges.status(&a, Some(1)), PurgeStatus::Pending(None));
        purges.run_once(&store, &[(a.clone(), 1)]).await;
        assert_eq!(purges.status(&a, Some(1)), PurgeStatus::Done);
        assert_eq!(purges.status(&a, None), PurgeStatus::Pending(None));
        // Marked again (unmarked in between): the earlier purge does not count.
        assert_eq!(purges.status(&a, Some(2)), PurgeStatus::Pending(None));
        assert_eq!(store.stats(&a).await.unwrap().events, 0);
        assert_eq!(store.stats(&b).await.unwrap().events, 1);
        purges.run_once(&store, &[]).await;
        assert_eq!(purges.status(&a, Some(1)), PurgeStatus::Pending(None));
    }

    /// Marked `purging`, purged, unmarked, written again and marked again before the purge
    /// loop ran in between: the earlier purge must not count for the new marking (the node
    /// used to answer `tenant_purged` at once while the new events were still stored).
    #[tokio::test]
    async fn a_tenant_marked_again_between_two_polls_is_purged_again() {
        use crate::tenant::Registry;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let write = |state: &str| {
            std::fs::write(
                &path,
                format!(
                    r#"{{"version":1,"tenants":[{{"id":"a","tokenSha256":[],"state":"{state}"}}]}}"#
                ),
            )
            .unwrap();
        };
        write("purging");
        let registry = Registry::load(&path).unwrap();
        let store: Arc<dyn EventStore> = Arc::new(MemoryStore::default());
        let a = TenantId::new("a").unwrap();
        let append = |n: u8| {
            let store = store.clone();
            let a = a.clone();
            async move {
                let ev = NewEvent {
                    event_id: uuid::Uuid::from_u128(u128::from(n)),
                    event_type: "E".into(),
                    payload: b"{}".to_vec(),
                    metadata: Default::default(),
                };
                store
                    .append(
                        &a,
                        &StreamId::new("s").unwrap(),
                        ExpectedVersion::Any,
                        vec![ev],
                    )
                    .await
                    .unwrap();
            }
        };
        append(1).await;
        let purges = Purges::default();
        let status = |p: &Purges| p.status(&a, registry.snapshot().purge_mark(&a));
        purges
            .run_once(&store, &registry.snapshot().purging_marked())
            .await;
        assert_eq!(status(&purges), PurgeStatus::Done);
        // Re-created and written, then marked again, with no purge poll in between.
        write("active");
        assert!(registry.reload_if_changed().unwrap());
        append(2).await;
        write("purging");
        assert!(registry.reload_if_changed().unwrap());
        assert_eq!(
            status(&purges),
            PurgeStatus::Pending(None),
            "the purge of the earlier marking counted for the new one"
        );
        purges
            .run_once(&store, &registry.snapshot().purging_marked())
            .await;
        assert_eq!(status(&purges), PurgeStatus::Done);
        assert_eq!(store.stats(&a).await.unwrap().events, 0);
        // A reload that keeps the marking keeps the outcome.
        std::fs::write(
            &path,
            r#"{"version": 1, "tenants": [{"id": "a", "tokenSha256": [], "state": "purging"}]}"#,
        )
        .unwrap();
        assert!(registry.reload_if_changed().unwrap());
        assert_eq!(status(&purges), PurgeStatus::Done);
    }

    /// A `purging` tenant's token answers 410 everywhere, `tenant_purging` then
    /// `tenant_purged`; the other tenant is served as before.
    #[tokio::test]
    async fn purging_tenant_answers_gone_with_the_progress_code() {
        use axum::body::Body;
        use axum::http::{Request, StatusCode};
        use tower::ServiceExt;

        use crate::metrics::Metrics;
        use crate::tenant::{sha256_hex, Registry, RegistryFile};

        let file = RegistryFile::parse(
            format!(
                r#"{{"version":1,"tenants":[{{"id":"a","tokenSha256":["{}"],"state":"purging"}},{{"id":"b","tokenSha256":["{}"]}}]}}"#,
                sha256_hex("ta"),
                sha256_hex("tb")
            )
            .as_bytes(),
        )
        .unwrap();
        let st = AppState::new(
            Arc::new(Registry::fixed(&file).unwrap()),
            super::super::ServerConfig::default(),
            Arc::new(Metrics::new(10).unwrap()),
            CancellationToken::new(),
        );
        let store: Arc<dyn EventStore> = Arc::new(MemoryStore::default());
        st.set_store(store.clone());
        let call = |token: &'static str, path: &'static str| {
            let st = st.clone();
            async move {
                let req = Request::get(path)
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::empty())
                    .unwrap();
                let resp = super::super::router(st).oneshot(req).await.unwrap();
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                (status, v["code"].as_str().unwrap_or_default().to_string())
            }
        };
        assert_eq!(
            call("ta", "/v1/stats").await,
            (StatusCode::GONE, "tenant_purging".to_string())
        );
        assert_eq!(
            call("ta", "/v1/events").await,
            (StatusCode::GONE, "tenant_purging".to_string())
        );
        assert_eq!(call("tb", "/v1/stats").await.0, StatusCode::OK);
        let purging = st.registry().snapshot().purging_marked();
        assert_eq!(purging, vec![(TenantId::new("a").unwrap(), 1)]);
        st.purges().run_once(&store, &purging).await;
        assert_eq!(
            call("ta", "/v1/stats").await,
            (StatusCode::GONE, "tenant_purged".to_string())
        );
        assert_eq!(call("tb", "/v1/stats").await.0, StatusCode::OK);
    }
}
