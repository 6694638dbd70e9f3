//! What a selfHosted EventStore says about a tenant: whether the store is Ready, and whether the
//! registry the store nodes read (`registry.json` in the `<store>-registry` Secret, written by
//! the EventStore controller) already carries the tenant with its current token digests and
//! suspend state, on which node. Reads only: it must never write the registry (that is the
//! EventStore controller's job) nor call into store-node pods.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::status::Verdict;
use super::TenantOutcome;
use crate::api::tenant::{LocationKind, TenantLocation};
use crate::api::{EventStore, Phase, Tenant};
use crate::controllers::{Context, ReconcileError};
use crate::resources::configmap::{parse_registry, RegistryFile, TenantState};
use crate::resources::registry_secret_name;

/// How soon to look again while the registry lags the Tenant.
pub const PENDING_RECHECK: Duration = Duration::from_secs(2);
/// How soon to look again while the store is not Ready.
pub const STORE_RECHECK: Duration = Duration::from_secs(10);

/// Reads the registry of `es` from the API (None: no Secret yet or unreadable content).
pub async fn registry(
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<Option<RegistryFile>, ReconcileError> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api
        .get_opt(&registry_secret_name(es))
        .await?
        .as_ref()
        .and_then(parse_registry))
}

/// The verdict for `tenant`, whose valid digests are `hashes`, given the store and its registry.
/// Pure.
pub fn judge(
    tenant: &Tenant,
    es: &EventStore,
    registry: Option<&RegistryFile>,
    hashes: &[String],
) -> TenantOutcome {
    let id = &tenant.spec.tenant_id;
    let entry = registry.and_then(|r| r.tenants.iter().find(|t| t.id == *id));
    let location = entry
        .and_then(|e| e.node.clone())
        .or_else(|| es.status.as_ref()?.placement.get(id).cloned())
        .map(|name| TenantLocation {
            kind: LocationKind::Node,
            name,
        });
    let usage_url = entry.and_then(|e| registry?.nodes.get(e.node.as_deref()?).cloned());
    let es_ready = es.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready);
    let pending = |what: &str| Verdict::RegistryPending(what.to_string());
    let verdict = match entry {
        _ if !es_ready => Verdict::EventStoreNotReady(es.name_any()),
        None => pending("tenant not placed on a node yet"),
        Some(e) => {
            let want: BTreeSet<&String> = hashes.iter().collect();
            let have: BTreeSet<&String> = e.token_sha256.iter().collect();
            if want != have {
                pending("token digests not published yet")
            } else if tenant.spec.suspend && e.state != TenantState::Suspended {
                pending("suspension not published yet")
            } else if !tenant.spec.suspend && e.state == TenantState::Suspended {
                pending("resumption not published yet")
            } else if tenant.spec.suspend {
                Verdict::Suspended
            } else {
                Verdict::Ready
            }
        }
    };
    // The store's transition to Ready wakes its tenants; the re-check is a safety net so that a
    // tenant never waits for the long resync if that wake-up is missed.
    let requeue = match verdict {
        Verdict::RegistryPending(_) => Some(PENDING_RECHECK),
        Verdict::EventStoreNotReady(_) => Some(STORE_RECHECK),
        _ => None,
    };
    TenantOutcome {
        verdict,
        location,
        usage_url,
        requeue,
    }
}

/// Whether the store nodes can still authenticate `tenant` (its entry is still in the registry).
pub async fn still_registered(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<bool, ReconcileError> {
    Ok(registry(es, ctx, ns)
        .await?
        .is_some_and(|r| r.tenants.iter().any(|t| t.id == tenant.spec.tenant_id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::configmap::{Quotas, TenantEntry};
    use allsource_core::model::TenantId;

    fn tenant(suspend: bool) -> Tenant {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1",
            "kind": "Tenant",
            "metadata": {"name": "acme", "namespace": "shop"},
            "spec": {"eventStoreRef": {"name": "orders"}, "tenantId": "acme", "suspend": suspend},
        }))
        .unwrap()
    }

    fn store(phase: &str) -> EventStore {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1",
            "kind": "EventStore",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"backend": "selfHosted", "selfHosted": {"replicas": 1, "storage": {"size": "1Gi"}}},
            "status": {"phase": phase, "placement": {"acme": "orders-0"}},
        }))
        .unwrap()
    }

    fn registry(hash: &str, state: TenantState) -> RegistryFile {
        RegistryFile {
            version: 1,
            tenants: vec![TenantEntry {
                id: TenantId::new("acme").unwrap(),
                token_sha256: vec![hash.into()],
                state,
                quotas: Quotas::default(),
                node: Some("orders-0".into()),
                location: None,
            }],
            nodes: [("orders-0".to_string(), "http://orders-0.x:8080".to_string())].into(),
        }
    }

    #[test]
    fn verdicts() {
        let h = vec!["aa".to_string()];
        let active = registry("aa", TenantState::Active);
        let o = judge(&tenant(false), &store("Ready"), Some(&active), &h);
        assert_eq!(o.verdict, Verdict::Ready);
        assert_eq!(o.location.unwrap().name, "orders-0");
        assert_eq!(o.usage_url.as_deref(), Some("http://orders-0.x:8080"));
        assert_eq!(o.requeue, None);

        let o = judge(&tenant(false), &store("Provisioning"), Some(&active), &h);
        assert_eq!(o.verdict, Verdict::EventStoreNotReady("orders".into()));
        assert_eq!(o.requeue, Some(STORE_RECHECK));

        let stale = registry("bb", TenantState::Active);
        let o = judge(&tenant(false), &store("Ready"), Some(&stale), &h);
        assert_eq!(o.verdict.reason(), "RegistryPending");
        assert_eq!(o.requeue, Some(PENDING_RECHECK));

        let o = judge(&tenant(true), &store("Ready"), Some(&active), &h);
        assert_eq!(o.verdict.reason(), "RegistryPending");
        let suspended = registry("aa", TenantState::Suspended);
        let o = judge(&tenant(true), &store("Ready"), Some(&suspended), &h);
        assert_eq!(o.verdict, Verdict::Suspended);

        let o = judge(&tenant(false), &store("Ready"), None, &h);
        assert_eq!(o.verdict.reason(), "RegistryPending");
        assert_eq!(o.location.unwrap().name, "orders-0");
    }
}
