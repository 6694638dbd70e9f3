//! Deletion of a Tenant of a selfHosted EventStore, behind the `allsource.io/cleanup` finalizer.
//! With `deletionPolicy: Retain` the finalizer waits until the registry no longer lists the
//! tenant (access gone) and records a `DataRetained` Event. With `Delete` the EventStore
//! controller keeps the tenant's registry entry in state `purging` (every node then refuses the
//! tenant with 410 and erases its data once); this module asks the owning node, with the
//! tenant's own token, `GET /v1/stats`, and lets the finalizer go only once the node answers
//! 410 `tenant_purged`. Until then the Tenant stays, with conditions saying what it waits for
//! (an unreachable node included), so a deletion never silently leaves data behind; setting
//! `spec.deletionPolicy: Retain` on the deleted Tenant is the way to give up on erasing.
//! [`plan`] and [`classify`] are pure; nothing here writes the registry or configures a pod.

use allsource_client::{ClientError, NodeClient};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::selfhosted;
use crate::api::tenant::TenantStatus;
use crate::api::{
    set_condition, Condition, DeletionPolicy, EventStore, Phase, Tenant, CONDITION_DEGRADED,
    CONDITION_PROGRESSING, CONDITION_READY, FIELD_MANAGER,
};
use crate::controllers::{Context, ReconcileError};
use crate::resources::configmap::{RegistryFile, TenantState};
use crate::resources::secret;

/// What the deletion of a selfHosted Tenant waits for next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the finalizer may go.
    Done,
    /// Retain: the registry still lists the tenant (its token still works).
    AwaitUnregistered,
    /// Delete: the registry does not mark the tenant `purging` yet.
    AwaitPurging,
    /// Delete: ask `node` (published at base URL `url`) whether it erased the tenant.
    Probe {
        /// Node (pod) name.
        node: String,
        /// Its base URL from the registry.
        url: String,
    },
    /// Delete cannot proceed: (reason, message); waits for a change of the store or Tenant.
    Blocked(&'static str, String),
}

/// What a node said about the purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// 410 `tenant_purged`: nothing of the tenant is left on the node.
    Purged,
    /// Still erasing, or the node has not seen the `purging` state yet (what it said).
    Purging(String),
    /// No usable answer (why).
    Unreachable(String),
}

/// Decides the next step of deleting `t` from the store `es` and its registry. Pure.
pub fn plan(t: &Tenant, es: &EventStore, registry: Option<&RegistryFile>) -> Step {
    let id = &t.spec.tenant_id;
    let entry = registry.and_then(|r| r.tenants.iter().find(|e| e.id == *id));
    let store_deleting = es.metadata.deletion_timestamp.is_some();
    if t.spec.deletion_policy == DeletionPolicy::Retain || store_deleting {
        // A suspended or deleting store is not reconciled: its registry will not change.
        let store_active = !es.spec.suspend && !store_deleting;
        return if store_active && entry.is_some() {
            Step::AwaitUnregistered
        } else {
            Step::Done
        };
    }
    if es.spec.suspend {
        return Step::Blocked(
            "StoreSuspended",
            format!(
                "EventStore {} is suspended, so no node can erase the tenant's data; resume it, \
                 or set spec.deletionPolicy: Retain to finish the deletion and keep the data",
                es.name_any()
            ),
        );
    }
    match entry {
        None => {
            let placed = es
                .status
                .as_ref()
                .is_some_and(|s| s.placement.contains_key(id));
            // Never placed on a node: there is no data to erase.
            if placed {
                Step::AwaitPurging
            } else {
                Step::Done
            }
        }
        Some(e) if e.state != TenantState::Purging => Step::AwaitPurging,
        Some(e) => {
            let node = e.node.as_deref().unwrap_or_default();
            match registry.and_then(|r| r.nodes.get(node)) {
                Some(url) => Step::Probe {
                    node: node.to_string(),
                    url: url.clone(),
                },
                None => Step::Blocked(
                    "NodeUnknown",
                    format!("the registry names node {node:?} without an address"),
                ),
            }
        }
    }
}

/// Classifies a node's answer to `GET /v1/stats` with the tenant's token. Pure.
pub fn classify(status: u16, code: Option<&str>, message: Option<&str>) -> Probe {
    match (status, code) {
        (410, Some("tenant_purged")) => Probe::Purged,
        (410, _) => Probe::Purging(message.unwrap_or("erasing").to_string()),
        (200, _) => Probe::Purging("the node has not picked up the purging state yet".into()),
        (s, c) => Probe::Unreachable(format!(
            "the node answered HTTP {s}{}",
            c.map(|c| format!(" ({c})")).unwrap_or_default()
        )),
    }
}

/// Asks the node at `base_url` about the tenant owning `token` with `client` (plain, or verifying
/// the store's CA: [`crate::controllers::nodetls::node_client`]). Never logs the token.
pub async fn probe(client: &reqwest::Client, base_url: &str, token: &str) -> Probe {
    let node = match NodeClient::new(client.clone(), base_url) {
        Ok(n) => n,
        Err(e) => return Probe::Unreachable(e.to_string()),
    };
    match node.stats(token).await {
        Ok(_) => classify(200, None, None),
        Err(ClientError::Status { status, body }) => {
            let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
            let (code, message) = (text(&body.code), text(&body.message));
            classify(status, code.as_deref(), message.as_deref())
        }
        Err(e) => Probe::Unreachable(format!("request failed: {e}")),
    }
}

/// Why the finalizer is still there, as shown in the Tenant's conditions.
pub(super) struct Waiting {
    /// Degraded (needs attention) rather than merely in progress.
    pub(super) degraded: bool,
    pub(super) reason: &'static str,
    pub(super) message: String,
}

/// The status of a Tenant whose deletion waits. Pure.
fn waiting_status(t: &Tenant, w: &Waiting) -> TenantStatus {
    let mut st = t.status.clone().unwrap_or_default();
    st.phase = Some(Phase::Deleting);
    let generation = t.metadata.generation;
    for (type_, value, reason) in [
        (CONDITION_READY, false, w.reason),
        (CONDITION_PROGRESSING, !w.degraded, w.reason),
        (
            CONDITION_DEGRADED,
            w.degraded,
            if w.degraded { w.reason } else { "AsExpected" },
        ),
    ] {
        let mut c = Condition::new(type_, value, reason, w.message.clone());
        c.observed_generation = generation;
        set_condition(&mut st.conditions, c);
    }
    st
}

pub(super) async fn write_waiting(
    t: &Tenant,
    ctx: &Context,
    ns: &str,
    w: &Waiting,
) -> Result<(), ReconcileError> {
    let st = waiting_status(t, w);
    if t.status.as_ref() == Some(&st) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": "allsource.io/v1alpha1",
        "kind": "Tenant",
        "status": st,
    });
    ctx.metrics.wrote("Tenant/status", "PATCH");
    Api::<Tenant>::namespaced(ctx.client.clone(), ns)
        .patch_status(
            &t.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

async fn token(t: &Tenant, ctx: &Context, ns: &str) -> Result<Option<String>, ReconcileError> {
    let s = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(&secret::secret_name(t))
        .await?;
    Ok(s.as_ref()
        .and_then(|s| secret::value(s, secret::TOKEN_KEY))
        .map(str::to_string))
}

/// Cleanup of a deleted Tenant of the selfHosted store `es`; Ok(true) when the finalizer may go.
pub async fn cleanup(
    t: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<bool, ReconcileError> {
    let registry = selfhosted::registry(es, ctx, ns).await?;
    let waiting = match plan(t, es, registry.as_ref()) {
        Step::Done => {
            done_event(t, es, ctx, None).await;
            return Ok(true);
        }
        Step::AwaitUnregistered => return Ok(false),
        Step::AwaitPurging => Waiting {
            degraded: false,
            reason: "PurgePending",
            message: "waiting for the store nodes' registry to mark the tenant purging".into(),
        },
        Step::Blocked(reason, message) => Waiting {
            degraded: true,
            reason,
            message,
        },
        Step::Probe { node, url } => match token(t, ctx, ns).await? {
            None => Waiting {
                degraded: true,
                reason: "CredentialsMissing",
                message: format!(
                    "Secret {} with the tenant's token is gone, so node {node} cannot be asked \
                     whether it erased the tenant's data; set spec.deletionPolicy: Retain to \
                     finish the deletion without that confirmation",
                    secret::secret_name(t)
                ),
            },
            Some(token) => {
                match crate::controllers::nodetls::node_client(&ctx.client, es, ns).await {
                    Err(e) => Waiting {
                        degraded: true,
                        reason: "NodeTlsUnavailable",
                        message: format!("node {node} cannot be asked over HTTPS: {e}"),
                    },
                    Ok(client) => match probe(&client, &ctx.node_url(&url), &token).await {
                        Probe::Purged => {
                            done_event(t, es, ctx, Some(&node)).await;
                            return Ok(true);
                        }
                        Probe::Purging(m) => Waiting {
                            degraded: false,
                            reason: "PurgePending",
                            message: format!("node {node} is erasing the tenant's data: {m}"),
                        },
                        Probe::Unreachable(m) => Waiting {
                            degraded: true,
                            reason: "NodeUnreachable",
                            message: format!(
                        "cannot confirm that node {node} erased the tenant's data ({m}); the \
                         Tenant stays until it can, or until spec.deletionPolicy is set to \
                         Retain (the data is then kept)"
                    ),
                        },
                    },
                }
            }
        },
    };
    write_waiting(t, ctx, ns, &waiting).await?;
    Ok(false)
}

/// The Event recording what happened to the data when the finalizer goes.
async fn done_event(t: &Tenant, es: &EventStore, ctx: &Context, purged_on: Option<&str>) {
    let store = es.name_any();
    let (type_, reason, note) = match (t.spec.deletion_policy, purged_on) {
        (_, Some(node)) => (
            EventType::Normal,
            "DataPurged",
            format!(
                "deletionPolicy Delete: node {node} of EventStore {store} erased the tenant's data"
            ),
        ),
        (DeletionPolicy::Retain, None) => (
            EventType::Normal,
            "DataRetained",
            format!("deletionPolicy Retain: the tenant's events are kept on EventStore {store}"),
        ),
        (DeletionPolicy::Delete, None) if es.metadata.deletion_timestamp.is_some() => (
            EventType::Warning,
            "DataRetained",
            format!(
                "EventStore {store} is being deleted: its own deletionPolicy decides about the \
                 volumes holding the tenant's data"
            ),
        ),
        (DeletionPolicy::Delete, None) => (
            EventType::Normal,
            "DataPurged",
            format!("deletionPolicy Delete: the tenant had no data on EventStore {store}"),
        ),
    };
    ctx.publish(t, type_, reason, "Cleanup", note).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::configmap::{Quotas, TenantEntry};
    use allsource_core::model::TenantId;

    fn tenant(policy: &str) -> Tenant {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "namespace": "shop", "generation": 3,
                         "finalizers": [crate::api::FINALIZER],
                         "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"eventStoreRef": {"name": "orders"}, "tenantId": "acme",
                     "deletionPolicy": policy},
        }))
        .unwrap()
    }

    fn store(suspend: bool, placed: bool) -> EventStore {
        let placement = if placed {
            serde_json::json!({"acme": "orders-0"})
        } else {
            serde_json::json!({})
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "EventStore",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"backend": "selfHosted", "suspend": suspend,
                     "selfHosted": {"replicas": 1, "storage": {"size": "1Gi"}}},
            "status": {"phase": "Ready", "placement": placement},
        }))
        .unwrap()
    }

    fn registry(state: Option<TenantState>) -> RegistryFile {
        RegistryFile {
            version: 1,
            tenants: state
                .map(|state| TenantEntry {
                    id: TenantId::new("acme").unwrap(),
                    token_sha256: vec![],
                    state,
                    quotas: Quotas::default(),
                    node: Some("orders-0".into()),
                    location: None,
                })
                .into_iter()
                .collect(),
            nodes: [("orders-0".to_string(), "http://orders-0.x:8080".to_string())].into(),
        }
    }

    #[test]
    fn retain_waits_for_the_entry_to_go() {
        let t = tenant("Retain");
        let active = registry(Some(TenantState::Active));
        assert_eq!(
            plan(&t, &store(false, true), Some(&active)),
            Step::AwaitUnregistered
        );
        assert_eq!(
            plan(&t, &store(false, true), Some(&registry(None))),
            Step::Done
        );
        assert_eq!(plan(&t, &store(true, true), Some(&active)), Step::Done);
    }

    #[test]
    fn delete_waits_for_purging_then_asks_the_owner() {
        let t = tenant("Delete");
        let es = store(false, true);
        assert_eq!(
            plan(&t, &es, Some(&registry(Some(TenantState::Active)))),
            Step::AwaitPurging
        );
        assert_eq!(plan(&t, &es, Some(&registry(None))), Step::AwaitPurging);
        assert_eq!(
            plan(&t, &es, Some(&registry(Some(TenantState::Purging)))),
            Step::Probe {
                node: "orders-0".into(),
                url: "http://orders-0.x:8080".into()
            }
        );
        // Never placed: nothing to erase.
        assert_eq!(
            plan(&t, &store(false, false), Some(&registry(None))),
            Step::Done
        );
        // A suspended store cannot erase: blocked, with the way out in the message.
        match plan(
            &t,
            &store(true, true),
            Some(&registry(Some(TenantState::Purging))),
        ) {
            Step::Blocked(reason, msg) => {
                assert_eq!(reason, "StoreSuspended");
                assert!(msg.contains("deletionPolicy: Retain"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_of_the_node() {
        assert_eq!(classify(410, Some("tenant_purged"), None), Probe::Purged);
        assert!(matches!(
            classify(410, Some("tenant_purging"), Some("x")),
            Probe::Purging(m) if m == "x"
        ));
        assert!(matches!(classify(200, None, None), Probe::Purging(_)));
        assert!(matches!(
            classify(401, Some("unauthorized"), None),
            Probe::Unreachable(m) if m.contains("401")
        ));
    }

    #[test]
    fn waiting_shows_in_the_conditions() {
        let t = tenant("Delete");
        let st = waiting_status(
            &t,
            &Waiting {
                degraded: true,
                reason: "NodeUnreachable",
                message: "cannot confirm".into(),
            },
        );
        assert_eq!(st.phase, Some(Phase::Deleting));
        let get = |ty: &str| st.conditions.iter().find(|c| c.type_ == ty).unwrap();
        assert!(!get(CONDITION_READY).is_true());
        assert!(get(CONDITION_DEGRADED).is_true());
        assert_eq!(get(CONDITION_DEGRADED).reason, "NodeUnreachable");
        assert_eq!(get(CONDITION_READY).observed_generation, Some(3));
    }
}
