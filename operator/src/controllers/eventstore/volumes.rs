//! Growing the store nodes' volumes when `spec.selfHosted.storage.size` grows. A StatefulSet's
//! volumeClaimTemplates are immutable, so, as other operators do, each node's PVC is expanded in
//! place (the StorageClass must allow expansion; the apiserver's resize admission refuses it
//! otherwise) and the StatefulSet is then deleted with its pods orphaned and re-created with the
//! new template, which adopts the running pods without restarting them. A smaller size is
//! refused: volumes never shrink. [`plan`] decides (pure); [`reconcile`] does the calls.

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

/// The size of the live StatefulSet's claim template, when it has one.
pub fn template_size(sts: &StatefulSet) -> Option<String> {
    sts.spec
        .as_ref()?
        .volume_claim_templates
        .iter()
        .flatten()
        .find(|c| c.metadata.name.as_deref() == Some(CLAIM))?
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

/// What of a PVC [`plan`] reads; None for a PVC that is not one of the store's node volumes.
pub fn volume(es: &EventStore, pvc: &PersistentVolumeClaim) -> Option<Volume> {
    let name = pvc.metadata.name.clone()?;
    let ordinal = name.strip_prefix(&format!("{CLAIM}-{}-", es.name_any()))?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let requested = pvc
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")?
        .0
        .clone();
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

/// Grows the volumes of `es` to `sh.storage.size`: patches each bound PVC that is smaller, then
/// re-creates a StatefulSet whose template asks for another size (its pods are orphaned, never
/// deleted). `Err(Invalid)` for a shrink or a refused expansion (the store is parked Degraded).
pub async fn reconcile(
    es: &EventStore,
    sh: &SelfHostedSpec,
    ctx: &Context,
    ns: &str,
) -> Result<Outcome, ReconcileError> {
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    let live = sts_api.get_opt(&es.name_any()).await?;
    if let Some(sts) = &live {
        if sts.metadata.deletion_timestamp.is_some() {
            // Our own orphaning delete (or someone's): wait for it to go before applying.
            return Ok(Outcome::Wait(Duration::from_secs(2)));
        }
    }
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let volumes: Vec<Volume> = pvc_api
        .list(&ListParams::default().labels(&pvc_selector(es)))
        .await?
        .items
        .iter()
        .filter_map(|p| volume(es, p))
        .collect();
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
