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

/// Outcomes of the purges of the tenants currently marked `purging`.
#[derive(Debug, Default)]
pub struct Purges {
    status: Mutex<HashMap<TenantId, PurgeStatus>>,
}

impl Purges {
    /// The status of `tenant` (pending until a purge finished).
    pub fn status(&self, tenant: &TenantId) -> PurgeStatus {
        self.status
            .lock()
            .get(tenant)
            .cloned()
            .unwrap_or(PurgeStatus::Pending(None))
    }

    /// Forgets tenants no longer marked `purging`, so a tenant id used again later is purged
    /// again when it is marked again.
    fn retain(&self, purging: &[TenantId]) {
        self.status.lock().retain(|t, _| purging.contains(t));
    }

    fn set(&self, tenant: &TenantId, status: PurgeStatus) {
        self.status.lock().insert(tenant.clone(), status);
    }

    /// Purges every tenant in `purging` not purged yet, one after the other.
    pub async fn run_once(&self, store: &Arc<dyn EventStore>, purging: &[TenantId]) {
        self.retain(purging);
        for tenant in purging {
            let previous = self.status(tenant);
            if previous == PurgeStatus::Done {
                continue;
            }
            match store.purge_tenant(tenant).await {
                Ok(()) => {
                    tracing::info!(%tenant, "tenant marked purging in the registry: data erased");
                    self.set(tenant, PurgeStatus::Done);
                }
                Err(e) => {
                    let msg = e.to_string();
                    if previous != PurgeStatus::Pending(Some(msg.clone())) {
                        tracing::error!(%tenant, error = %msg, "purging tenant failed; retrying");
                    }
                    self.set(tenant, PurgeStatus::Pending(Some(msg)));
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
        let purging = state.registry().snapshot().purging();
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
        assert_eq!(purges.status(&a), PurgeStatus::Pending(None));
        purges.run_once(&store, std::slice::from_ref(&a)).await;
        assert_eq!(purges.status(&a), PurgeStatus::Done);
        assert_eq!(store.stats(&a).await.unwrap().events, 0);
        assert_eq!(store.stats(&b).await.unwrap().events, 1);
        purges.run_once(&store, &[]).await;
        assert_eq!(purges.status(&a), PurgeStatus::Pending(None));
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
        let purging = st.registry().snapshot().purging();
        assert_eq!(purging, vec![TenantId::new("a").unwrap()]);
        st.purges().run_once(&store, &purging).await;
        assert_eq!(
            call("ta", "/v1/stats").await,
            (StatusCode::GONE, "tenant_purged".to_string())
        );
        assert_eq!(call("tb", "/v1/stats").await.0, StatusCode::OK);
    }
}
