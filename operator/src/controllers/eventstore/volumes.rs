//! Growing the store nodes' volumes when `spec.selfHosted.storage.size` grows. A StatefulSet's
//! volumeClaimTemplates are immutable, so, as other operators do, each node's PVC is expanded in
//! place (the StorageClass must allow expansion; the apiserver's resize admission refuses it
//! otherwise) and the StatefulSet is then deleted with its pods orphaned and re-created with the
//! new template, which adopts the running pods without restarting them. A smaller size is
//! refused: volumes never shrink. [`plan`] decides (pure); [`reconcile`] does the calls.
//!
//! Each node's PVC also remembers which tenants have data on it (annotation
//! [`TENANTS_ANNOTATION`]), so that placement survives what `status.placement` does not: an
//! EventStore deleted with `Retain` and created again over its volumes, or a Tenant deleted with
//! `Retain` and created again, finds its events on the node that holds them
//! ([`remembered_placement`], [`tenants_on`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::cleanup::pvc_selector;
use crate::api::eventstore::SelfHostedSpec;
use crate::api::EventStore;
use crate::controllers::apply::quantity;
use crate::controllers::{Context, ReconcileError};

/// Name of the volume claim template (and the prefix of every node's PVC name).
pub const CLAIM: &str = "data";

/// Annotation of a node's PVC: the tenant ids (comma-separated, sorted) that were placed on that
/// node, whose events the volume may hold.
pub const TENANTS_ANNOTATION: &str = "allsource.io/tenants";

/// Longest [`TENANTS_ANNOTATION`] value (the apiserver allows 256 KiB of annotations in all):
/// past it, ids of tenants no longer placed are forgotten first.
pub const TENANTS_ANNOTATION_MAX: usize = 64 * 1024;

/// The ordinal of a node PVC of `es` (`data-<store>-<ordinal>`).
fn pvc_ordinal(es: &EventStore, name: &str) -> Option<i32> {
    let ordinal = name.strip_prefix(&format!("{CLAIM}-{}-", es.name_any()))?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ordinal.parse().ok()
}

/// The tenants each node's volume remembers, as tenant id -> node name (the lowest ordinal when
/// two volumes name the same id). Pure.
pub fn remembered_placement(
    es: &EventStore,
    pvcs: &[PersistentVolumeClaim],
) -> BTreeMap<String, String> {
    let mut by_ordinal: Vec<(i32, &str)> = pvcs
        .iter()
        .filter_map(|p| {
            let i = pvc_ordinal(es, p.metadata.name.as_deref()?)?;
            Some((i, p.annotations().get(TENANTS_ANNOTATION)?.as_str()))
        })
        .collect();
    by_ordinal.sort_unstable();
    let mut out = BTreeMap::new();
    for (i, ids) in by_ordinal {
        for id in ids.split(',').filter(|s| !s.is_empty()) {
            out.entry(id.to_string())
                .or_insert_with(|| crate::resources::node_name(es, i));
        }
    }
    out
}

/// The [`TENANTS_ANNOTATION`] value of node `node`'s volume: what it remembers (`current`) plus
/// every tenant `placement` puts there, sorted; over [`TENANTS_ANNOTATION_MAX`] bytes, only the
/// placed ones. Pure.
pub fn tenants_on(
    current: Option<&str>,
    node: &str,
    placement: &BTreeMap<String, String>,
) -> String {
    let placed: BTreeSet<&str> = placement
        .iter()
        .filter(|(_, n)| n.as_str() == node)
        .map(|(t, _)| t.as_str())
        .collect();
    let mut all = placed.clone();
    all.extend(
        current
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty()),
    );
    let joined = all.into_iter().collect::<Vec<_>>().join(",");
    if joined.len() <= TENANTS_ANNOTATION_MAX {
        joined
    } else {
        placed.into_iter().collect::<Vec<_>>().join(",")
    }
}

/// The PVCs of the store's nodes (by the store's selector labels).
pub async fn list(
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<Vec<PersistentVolumeClaim>, ReconcileError> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(&pvc_selector(es)))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| pvc_ordinal(es, n).is_some())
        })
        .collect())
}

/// What one node's PVC says about its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// PVC name (`data-<store>-<ordinal>`).
    pub name: String,
    /// `spec.resources.requests.storage`, as written.
    pub requested: String,
    /// `status.capacity.storage`, once bound.
    pub capacity: Option<String>,
    /// The claim is bound to a volume (only a bound claim can be resized).
    pub bound: bool,
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The size cannot be applied: a volume (or the live template) is larger. Nothing is
    /// written; the store is Degraded with this message (reason `VolumeShrinkRefused`).
    pub refused: Option<String>,
    /// PVCs to patch to the new size.
    pub expand: Vec<String>,
    /// PVCs asked for the new size whose capacity has not reached it yet.
    pub resizing: Vec<String>,
    /// The live StatefulSet's template asks for another size: re-create it around its pods.
    pub recreate: bool,
}

impl Plan {
    /// The Progressing message while volumes are being grown, if they are.
    pub fn progress(&self, size: &str) -> Option<String> {
        (!self.expand.is_empty() || !self.resizing.is_empty()).then(|| {
            let mut names: Vec<&str> = self
                .expand
                .iter()
                .chain(&self.resizing)
                .map(String::as_str)
                .collect();
            names.sort_unstable();
            format!(
                "waiting for the storage class to grow {} to {size}",
                names.join(", ")
            )
        })
    }
}

/// `spec.resources.requests.storage` of a claim, as written.
fn requested_storage(pvc: &PersistentVolumeClaim) -> Option<String> {
    let requests = pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?;
    requests.get("storage").map(|q| q.0.clone())
}

/// The size of the live StatefulSet's claim template, when it has one.
pub fn template_size(sts: &StatefulSet) -> Option<String> {
    sts.spec
        .as_ref()?
        .volume_claim_templates
        .iter()
        .flatten()
        .find(|c| c.metadata.name.as_deref() == Some(CLAIM))
        .and_then(requested_storage)
}

/// What of a PVC [`plan`] reads; None for a PVC that is not one of the store's node volumes.
pub fn volume(es: &EventStore, pvc: &PersistentVolumeClaim) -> Option<Volume> {
    let name = pvc.metadata.name.clone()?;
    pvc_ordinal(es, &name)?;
    let requested = requested_storage(pvc)?;
    let status = pvc.status.as_ref();
    Some(Volume {
        name,
        requested,
        capacity: status
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone()),
        bound: status.and_then(|s| s.phase.as_deref()) == Some("Bound"),
    })
}

/// Decides what to do so that every node's volume has `size`: `template` is the live
/// StatefulSet's claim size (None before it exists). Sizes compare by value ("1Gi" equals
/// "1073741824"). Pure.
pub fn plan(size: &str, template: Option<&str>, volumes: &[Volume]) -> Plan {
    let Some(want) = quantity(size) else {
        return Plan {
            refused: Some(format!(
                "spec.selfHosted.storage.size {size:?} is not a Kubernetes quantity"
            )),
            ..Plan::default()
        };
    };
    let larger: Vec<String> = volumes
        .iter()
        .filter(|v| quantity(&v.requested).is_some_and(|q| q > want))
        .map(|v| format!("{} has {}", v.name, v.requested))
        .chain(
            template
                .filter(|t| quantity(t).is_some_and(|q| q > want))
                .map(|t| format!("the StatefulSet's volume template asks for {t}")),
        )
        .collect();
    if !larger.is_empty() {
        return Plan {
            refused: Some(format!(
                "spec.selfHosted.storage.size {size} is smaller than the volumes ({}); volumes \
                 cannot shrink: set the size back to at least their size",
                larger.join(", ")
            )),
            ..Plan::default()
        };
    }
    let mut out = Plan {
        recreate: template.is_some_and(|t| quantity(t) != Some(want)),
        ..Plan::default()
    };
    for v in volumes {
        let requested = quantity(&v.requested);
        if requested.is_some_and(|q| q < want) {
            // An unbound claim cannot be resized; it is grown once it binds.
            if v.bound {
                out.expand.push(v.name.clone());
            }
        } else if v.bound
            && v.capacity
                .as_deref()
                .and_then(quantity)
                .is_none_or(|c| c < want)
        {
            out.resizing.push(v.name.clone());
        }
    }
    out
}

/// What [`reconcile`] leaves for the rest of the reconcile.
pub enum Outcome {
    /// Carry on; `Some` is the Progressing message while volumes grow.
    Continue(Option<String>),
    /// The StatefulSet is being re-created: requeue after this long, apply nothing else yet.
    Wait(Duration),
}

/// Brings the volumes `pvcs` of `es` (from [`list`]) in line: each remembers the tenants
/// `placement` puts on its node; each bound PVC smaller than `sh.storage.size` is patched to it,
/// then a StatefulSet whose template asks for another size is re-created (its pods are orphaned,
/// never deleted). `Err(Refused)` for a shrink or a refused expansion (the store is parked
/// Degraded).
pub async fn reconcile(
    es: &EventStore,
    sh: &SelfHostedSpec,
    ctx: &Context,
    ns: &str,
    pvcs: &[PersistentVolumeClaim],
    placement: &BTreeMap<String, String>,
) -> Result<Outcome, ReconcileError> {
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    for p in pvcs {
        let Some((name, i)) = p
            .metadata
            .name
            .as_deref()
            .and_then(|n| Some((n, pvc_ordinal(es, n)?)))
        else {
            continue;
        };
        let current = p.annotations().get(TENANTS_ANNOTATION).map(String::as_str);
        let want = tenants_on(current, &crate::resources::node_name(es, i), placement);
        if current.unwrap_or_default() != want {
            let patch =
                serde_json::json!({"metadata": {"annotations": {TENANTS_ANNOTATION: want}}});
            ctx.metrics.wrote("PersistentVolumeClaim", "PATCH");
            pvc_api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    let live = sts_api.get_opt(&es.name_any()).await?;
    if let Some(sts) = &live {
        if sts.metadata.deletion_timestamp.is_some() {
            // Our own orphaning delete (or someone's): wait for it to go before applying.
            return Ok(Outcome::Wait(Duration::from_secs(2)));
        }
    }
    let volumes: Vec<Volume> = pvcs.iter().filter_map(|p| volume(es, p)).collect();
    let template = live.as_ref().and_then(template_size);
    let size = &sh.storage.size;
    let decided = plan(size, template.as_deref(), &volumes);
    if let Some(m) = decided.refused {
        return Err(ReconcileError::Refused {
            reason: "VolumeShrinkRefused",
            message: m,
        });
    }
    for name in &decided.expand {
        let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": size}}}});
        ctx.metrics.wrote("PersistentVolumeClaim", "PATCH");
        match pvc_api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // The resize admission refuses claims whose class does not allow expansion (403),
            // validation refuses what a claim cannot become (422).
            Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => {
                return Err(ReconcileError::Refused {
                    reason: "VolumeExpansionRefused",
                    message: format!(
                        "cannot grow PersistentVolumeClaim {name} to {size}: {} (the \
                         StorageClass must set allowVolumeExpansion: true)",
                        e.message
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    if decided.recreate {
        if let Some(sts) = &live {
            let uid = sts.metadata.uid.clone();
            let ours = sts
                .owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == es.metadata.uid.as_ref());
            if ours {
                let dp = DeleteParams {
                    propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
                    preconditions: Some(Preconditions {
                        uid,
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                ctx.metrics.wrote("StatefulSet", "DELETE");
                match sts_api.delete(&sts.name_any(), &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
                ctx.publish(
                    es,
                    EventType::Normal,
                    "VolumeTemplateChanged",
                    "Recreate",
                    format!(
                        "re-creating StatefulSet {} with volumes of {size}; its pods keep running",
                        sts.name_any()
                    ),
                )
                .await;
                return Ok(Outcome::Wait(Duration::from_secs(2)));
            }
            // Not ours: the StatefulSet apply reports the conflict.
        }
    }
    Ok(Outcome::Continue(decided.progress(size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(name: &str, requested: &str, capacity: Option<&str>, bound: bool) -> Volume {
        Volume {
            name: name.to_string(),
            requested: requested.to_string(),
            capacity: capacity.map(str::to_string),
            bound,
        }
    }

    #[test]
    fn steady_volumes_need_nothing() {
        let v = [vol("data-s-0", "1Gi", Some("1073741824"), true)];
        assert_eq!(plan("1Gi", Some("1Gi"), &v), Plan::default());
        assert_eq!(plan("1Gi", None, &[]), Plan::default());
    }

    #[test]
    fn growing_expands_bound_claims_and_recreates_the_template() {
        let v = [
            vol("data-s-0", "1Gi", Some("1Gi"), true),
            vol("data-s-1", "2Gi", Some("1Gi"), true),
            vol("data-s-2", "1Gi", None, false),
        ];
        let p = plan("2Gi", Some("1Gi"), &v);
        assert_eq!(p.expand, vec!["data-s-0"]);
        assert_eq!(p.resizing, vec!["data-s-1"]);
        assert!(p.recreate);
        assert!(p.refused.is_none());
        assert_eq!(
            p.progress("2Gi").as_deref(),
            Some("waiting for the storage class to grow data-s-0, data-s-1 to 2Gi")
        );
        // Once the template and the claims say 2Gi and capacity followed, nothing is left.
        let done = [vol("data-s-0", "2Gi", Some("2Gi"), true)];
        assert_eq!(plan("2Gi", Some("2Gi"), &done), Plan::default());
    }

    #[test]
    fn shrinking_is_refused_with_the_sizes() {
        let v = [vol("data-s-0", "2Gi", Some("2Gi"), true)];
        let p = plan("1Gi", Some("1Gi"), &v);
        let m = p.refused.expect("refused");
        assert!(m.contains("data-s-0 has 2Gi"), "{m}");
        assert!(p.expand.is_empty() && !p.recreate);
        let p = plan("1Gi", Some("2Gi"), &[]);
        assert!(p
            .refused
            .expect("refused")
            .contains("template asks for 2Gi"));
    }

    fn store(name: &str) -> EventStore {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "EventStore",
            "metadata": {"name": name, "namespace": "n"}, "spec": {"backend": "selfHosted"},
        }))
        .unwrap()
    }

    #[test]
    fn volumes_remember_the_tenants_placed_on_them() {
        let es = store("s");
        let pvc = |name: &str, tenants: Option<&str>| -> PersistentVolumeClaim {
            let mut p: PersistentVolumeClaim =
                serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
            if let Some(t) = tenants {
                p.metadata.annotations =
                    Some([(TENANTS_ANNOTATION.to_string(), t.to_string())].into());
            }
            p
        };
        let pvcs = [
            pvc("data-s-1", Some("a,c")),
            pvc("data-s-0", Some("b,c")),
            pvc("data-s-2", None),
            pvc("data-other-0", Some("x")),
        ];
        let m = remembered_placement(&es, &pvcs);
        let want: BTreeMap<String, String> = [("a", "s-1"), ("b", "s-0"), ("c", "s-0")]
            .into_iter()
            .map(|(t, n)| (t.to_string(), n.to_string()))
            .collect();
        assert_eq!(m, want);

        // What a node's volume remembers grows with what is placed there, sorted.
        let placement: BTreeMap<String, String> = [("d", "s-0"), ("a", "s-1")]
            .into_iter()
            .map(|(t, n)| (t.to_string(), n.to_string()))
            .collect();
        assert_eq!(tenants_on(Some("b,c"), "s-0", &placement), "b,c,d");
        assert_eq!(tenants_on(None, "s-1", &placement), "a");
        assert_eq!(tenants_on(None, "s-2", &placement), "");
        // Past the bound only the placed tenants stay.
        let many: Vec<String> = (0..2000).map(|i| format!("tenant-{i:040}")).collect();
        assert_eq!(tenants_on(Some(&many.join(",")), "s-0", &placement), "d");
    }

    #[test]
    fn only_node_volumes_of_the_store_count() {
        let es: EventStore = serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "EventStore",
            "metadata": {"name": "s", "namespace": "n"}, "spec": {"backend": "selfHosted"},
        }))
        .unwrap();
        let pvc = |name: &str| -> PersistentVolumeClaim {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"resources": {"requests": {"storage": "1Gi"}}},
                "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}},
            }))
            .unwrap()
        };
        assert_eq!(
            volume(&es, &pvc("data-s-0")),
            Some(vol("data-s-0", "1Gi", Some("1Gi"), true))
        );
        assert_eq!(volume(&es, &pvc("data-s-x")), None);
        assert_eq!(volume(&es, &pvc("data-st-0")), None);
        assert_eq!(volume(&es, &pvc("other-s-0")), None);
    }
}
