//! A Tenant deleted with `deletionPolicy: Delete` loses its archived events too: after its store
//! erased it, the finalizer deletes its objects from the destination of every ArchivePolicy of
//! the store ([`crate::controllers::archivepolicy::erase`]), whatever the policy's tenant selector
//! says today (it may have selected the tenant before). A destination that cannot be reached
//! keeps the Tenant, `Degraded` with reason `ArchiveEraseFailed` naming it, until it can (or until
//! the Tenant is switched to Retain, which keeps the archives).

use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::purge::{write_waiting, Waiting};
use crate::api::{ArchivePolicy, DeletionPolicy, EventStore, Tenant};
use crate::controllers::archivepolicy::erase::erase_tenant;
use crate::controllers::{Context, ReconcileError};

/// Erases `t`'s archives of `es`; Ok(true) when nothing is left (or nothing is to be erased).
pub async fn erase(
    t: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<bool, ReconcileError> {
    if t.spec.deletion_policy != DeletionPolicy::Delete {
        return Ok(true);
    }
    let Some(store_uid) = es.metadata.uid.as_deref() else {
        return Ok(true);
    };
    let policies = Api::<ArchivePolicy>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    for p in policies
        .items
        .iter()
        .filter(|p| p.spec.event_store_ref.name == es.name_any())
    {
        match erase_tenant(&ctx.client, ns, p, &t.spec.tenant_id, store_uid).await {
            Ok(0) => {}
            Ok(n) => {
                ctx.publish(
                    t,
                    EventType::Normal,
                    "ArchiveErased",
                    "Cleanup",
                    format!(
                        "deletionPolicy Delete: {n} archived objects of the tenant erased from the \
                         destination of ArchivePolicy {}",
                        p.name_any()
                    ),
                )
                .await;
            }
            Err(e) => {
                let waiting = Waiting {
                    degraded: true,
                    reason: "ArchiveEraseFailed",
                    message: format!(
                        "cannot erase the tenant's archive at ArchivePolicy {}'s destination: \
                         {e}; the Tenant stays until it can, or until spec.deletionPolicy is set \
                         to Retain (the archives are then kept)",
                        p.name_any()
                    ),
                };
                write_waiting(t, ctx, ns, &waiting).await?;
                return Ok(false);
            }
        }
    }
    Ok(true)
}
