//! Deletion of a selfHosted EventStore behind the finalizer. Owned objects (StatefulSet,
//! Services, ConfigMap, PDB, ServiceAccount) go away through their owner references. Volumes are
//! the data: with `deletionPolicy: Delete` (and `storage.keepOnDelete: false`) the PVCs of the
//! nodes are deleted; with `Retain` they are kept. The finalizer is removed once this returns Ok.
//! It must never delete anything not labelled as this store's.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::super::{Context, ReconcileError};
use crate::api::{DeletionPolicy, EventStore};
use crate::resources::selector_labels;

/// Label selector of the PVCs of the store's nodes.
pub fn pvc_selector(es: &EventStore) -> String {
    selector_labels(es)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether deleting `es` deletes its volumes.
pub fn deletes_volumes(es: &EventStore) -> bool {
    es.spec.deletion_policy == DeletionPolicy::Delete
        && !es
            .spec
            .self_hosted
            .as_ref()
            .is_some_and(|sh| sh.storage.keep_on_delete)
}

/// Runs the cleanup.
pub async fn run(es: &EventStore, ctx: &Context, ns: &str) -> Result<Action, ReconcileError> {
    if es.self_hosted().is_none() {
        return super::cloud::cleanup(es, ctx, ns).await;
    }
    if deletes_volumes(es) {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
        let pvcs = api
            .list(&ListParams::default().labels(&pvc_selector(es)))
            .await?;
        let names: Vec<String> = pvcs.items.iter().map(|p| p.name_any()).collect();
        for name in &names {
            ctx.metrics.wrote("PersistentVolumeClaim", "DELETE");
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        ctx.publish(
            es,
            EventType::Normal,
            "VolumesDeleted",
            "Cleanup",
            format!(
                "deletionPolicy Delete: deleted {} volume claim(s)",
                names.len()
            ),
        )
        .await;
    } else {
        ctx.publish(
            es,
            EventType::Normal,
            "VolumesRetained",
            "Cleanup",
            "deletionPolicy Retain: volume claims are kept".to_string(),
        )
        .await;
    }
    Ok(Action::await_change())
}
