//! Pooled Tenants of a Firestore EventStore: the tenant lives in `tenants/<tenantId>` of the
//! store's database (store-node's layout; location kind Collection), registered as a member of
//! the store (`allsource/<store>/members/<tenantId>`) so that the store's `deletionPolicy:
//! Delete` removes exactly its tenants' documents, and refused when another store of the same
//! database already registered the id. Ready once the store is provisioned. Deletion under
//! `deletionPolicy: Delete` removes the tenant's documents and its membership; Retain keeps both
//! (the documents still belong to the store). Siloed tenants get a database of their own
//! (`cloud::siloed`, [`crate::provision::firestore::silo`]). It must never log a token.

use std::time::Duration;

use kube::ResourceExt;

use super::status::Verdict;
use super::TenantOutcome;
use crate::api::tenant::{LocationKind, Placement, TenantLocation};
use crate::api::{DeletionPolicy, EventStore, Tenant};
use crate::controllers::eventstore::cloud::firestore_provisioner;
use crate::controllers::{Context, ReconcileError};
use crate::provision::firestore::tenant_collection;
use crate::provision::ProvisionError;

/// Re-check interval while the store is not provisioned yet or Firestore is down.
const RETRY: Duration = Duration::from_secs(5);

/// The outcome of a tenant whose store's database is not provisioned yet (pure).
pub fn store_not_provisioned() -> TenantOutcome {
    TenantOutcome {
        verdict: Verdict::EventStoreNotReady(
            "the EventStore's Firestore database is not provisioned yet".to_string(),
        ),
        location: None,
        usage_url: None,
        requeue: Some(RETRY),
    }
}

/// Whether the store's database is provisioned (its status lists the database).
pub fn store_provisioned(es: &EventStore) -> bool {
    es.status.as_ref().is_some_and(|s| {
        s.provisioned.get("backend").map(String::as_str) == Some("firestore")
            && s.provisioned.contains_key("databaseId")
    })
}

fn degraded(e: &ProvisionError) -> TenantOutcome {
    TenantOutcome {
        verdict: Verdict::BackendDegraded(e.reason().to_string(), e.to_string()),
        location: None,
        usage_url: None,
        requeue: e.is_retryable().then_some(RETRY),
    }
}

/// `<namespace>/<name>` of a Tenant, as its member document records it.
pub fn tenant_ref(t: &Tenant) -> String {
    format!("{}/{}", t.namespace().unwrap_or_default(), t.name_any())
}

/// Ensures a pooled Firestore tenant's place and reports where it lives.
pub async fn reconcile(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<TenantOutcome, ReconcileError> {
    if !store_provisioned(es) {
        return Ok(store_not_provisioned());
    }
    let prov = match firestore_provisioner(es, ctx, ns).await? {
        Ok(p) => p,
        Err(e) => return Ok(degraded(&e)),
    };
    let id = &tenant.spec.tenant_id;
    if let Err(e) = prov.register_tenant(id, &tenant_ref(tenant)).await {
        return Ok(degraded(&e));
    }
    Ok(TenantOutcome {
        verdict: Verdict::Ready,
        location: Some(TenantLocation {
            kind: LocationKind::Collection,
            name: tenant_collection(id),
        }),
        usage_url: es
            .status
            .as_ref()
            .and_then(|s| s.endpoint.as_ref())
            .map(|e| e.url.clone()),
        requeue: None,
    })
}

/// Removes a pooled tenant's documents and membership under `deletionPolicy: Delete`. Ok means
/// done; an outage retries (the finalizer stays).
pub async fn cleanup(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<(), ReconcileError> {
    if tenant.spec.placement != Placement::Pooled
        || tenant.spec.deletion_policy != DeletionPolicy::Delete
        || !store_provisioned(es)
    {
        return Ok(());
    }
    let prov = match firestore_provisioner(es, ctx, ns).await? {
        Ok(p) => p,
        Err(e) => return Err(ReconcileError::Backend(e)),
    };
    let id = &tenant.spec.tenant_id;
    let n = prov.delete_tenant_documents(id).await?;
    prov.unregister_tenant(id).await?;
    tracing::info!(tenant = %id, documents = n, "firestore tenant documents deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn es(provisioned: bool) -> EventStore {
        let mut v = serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "EventStore",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"backend": "firestore", "firestore": {"projectId": "p"}}
        });
        if provisioned {
            v["status"] = serde_json::json!({"provisioned": {"backend": "firestore", "databaseId": "(default)"}});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn tenants_wait_for_the_store() {
        assert!(!store_provisioned(&es(false)));
        assert!(store_provisioned(&es(true)));
    }
}
