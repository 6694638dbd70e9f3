//! Server-side apply with the operator's one field manager, skipped when the live object already
//! carries the hash of the desired one. This is what keeps a steady state at zero API writes.
//! It applies exactly what it is given and must never build or modify objects itself.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{FIELD_MANAGER, SPEC_HASH_ANNOTATION};
use crate::resources::hash_of;
use crate::telemetry::Metrics;

/// Result of [`apply`].
pub struct Applied<K> {
    /// The live object after the call (fetched or returned by the apply).
    pub object: K,
    /// Whether a write was sent.
    pub wrote: bool,
}

/// Applies `desired` unless the live object's hash annotation equals the hash of `desired`.
pub async fn apply<K>(
    api: &Api<K>,
    metrics: &Metrics,
    mut desired: K,
) -> Result<Applied<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let hash = hash_of(&desired);
    desired
        .annotations_mut()
        .insert(SPEC_HASH_ANNOTATION.to_string(), hash.clone());
    let name = desired.name_any();
    if let Some(live) = api.get_opt(&name).await? {
        if live.annotations().get(SPEC_HASH_ANNOTATION) == Some(&hash) {
            return Ok(Applied {
                object: live,
                wrote: false,
            });
        }
    }
    metrics.wrote(&K::kind(&()), "PATCH");
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let object = api.patch(&name, &params, &Patch::Apply(&desired)).await?;
    Ok(Applied {
        object,
        wrote: true,
    })
}
