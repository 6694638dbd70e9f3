//! Server-side apply with the operator's one field manager, guarded by ownership and skipped when
//! the live object already says what the desired one says. This keeps a steady state at zero API
//! writes, reverts hand edits of owned objects, and never takes over an object that merely
//! shares a name. It applies exactly what it is given and must never build or modify objects
//! itself.
//!
//! Three checks run before a write, the first two pure ([`ownership`], [`first_difference`]):
//! - a live object without our controller owner reference (the desired object's owner, by uid)
//!   is someone else's: [`ApplyError::NotOwned`], nothing is written;
//! - the live object must carry every field of the desired one with the same value (quantities
//!   compared by value, empty lists and maps equal to absent ones, as the apiserver drops them);
//!   a live object whose hash annotation is current but whose content differs was edited by
//!   hand: it is re-applied and the drift reported in [`Applied::drift`];
//! - an apiserver refusal of the object as invalid (HTTP 422) is [`ApplyError::Invalid`], a spec
//!   error for the owner's status, not a retry.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::api::{FIELD_MANAGER, SPEC_HASH_ANNOTATION};
use crate::resources::hash_of;
use crate::telemetry::Metrics;

use super::Context;

/// Result of [`apply`].
pub struct Applied<K> {
    /// The live object after the call (fetched or returned by the apply).
    pub object: K,
    /// Whether a write was sent.
    pub wrote: bool,
    /// The first field path at which the live object differed from the desired one although its
    /// hash annotation was current (an edit outside the operator), now reverted.
    pub drift: Option<String>,
}

/// Why [`apply`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// An API call failed; retried with backoff.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object of that name exists and is not ours: it is never taken over.
    #[error("{kind} {name} already exists and is not owned by this object ({holder}); delete or rename it")]
    NotOwned {
        /// Kind of the object.
        kind: String,
        /// Its name.
        name: String,
        /// Who owns it, as far as its owner references tell.
        holder: String,
    },
    /// The apiserver refused the object as invalid (HTTP 422): a spec that cannot work.
    #[error("the apiserver refused {kind} {name}: {message}")]
    Invalid {
        /// Kind of the object.
        kind: String,
        /// Its name.
        name: String,
        /// The apiserver's message.
        message: String,
    },
}

/// Whether `live` belongs to the owner `desired` names (its controller owner reference, by uid).
/// `Err` describes who holds it instead. A desired object without a controller owner reference
/// claims nothing and is always allowed. Pure.
pub fn ownership<K: Resource>(live: &K, desired: &K) -> Result<(), String> {
    match desired
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        Some(want) => owned_by(live, &want.uid),
        None => Ok(()),
    }
}

/// Whether `live` carries an owner reference to `owner_uid`; `Err` describes who holds it
/// instead. Pure.
pub fn owned_by<K: Resource>(live: &K, owner_uid: &str) -> Result<(), String> {
    let refs = live.meta().owner_references.as_deref().unwrap_or_default();
    if refs.iter().any(|o| o.uid == owner_uid) {
        return Ok(());
    }
    Err(match refs.iter().find(|o| o.controller == Some(true)) {
        Some(o) => format!("controlled by {} {}", o.kind, o.name),
        None if refs.is_empty() => "no owner reference".to_string(),
        None => format!(
            "owned by {}",
            refs.iter()
                .map(|o| format!("{} {}", o.kind, o.name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// The path of the first field of `desired` that `live` does not carry with the same value,
/// `None` when `live` covers all of `desired`. Extra fields of `live` (defaults, other managers,
/// status) are ignored; lists compare element-wise and must have the same length; empty lists,
/// maps and strings and nulls in `desired` match absent fields; quantity strings compare by
/// value ("1000m" = "1"). Only paths are reported, never values (they may be secret). Pure.
pub fn first_difference(live: &Value, desired: &Value) -> Option<String> {
    diff_at(live, desired, String::new())
}

fn diff_at(live: &Value, desired: &Value, path: String) -> Option<String> {
    let here = || {
        Some(if path.is_empty() {
            ".".to_string()
        } else {
            path.clone()
        })
    };
    match desired {
        Value::Object(want) => {
            let empty = serde_json::Map::new();
            let have = match live {
                Value::Object(m) => m,
                Value::Null if want.is_empty() => &empty,
                _ => return here(),
            };
            for (k, v) in want {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match have.get(k) {
                    Some(l) => {
                        if let Some(p) = diff_at(l, v, sub) {
                            return Some(p);
                        }
                    }
                    None if absent_equivalent(v) => {}
                    None => return Some(sub),
                }
            }
            None
        }
        Value::Array(want) => {
            let have: &[Value] = match live {
                Value::Array(a) => a,
                Value::Null if want.is_empty() => &[],
                _ => return here(),
            };
            if have.len() != want.len() {
                return here();
            }
            want.iter()
                .zip(have)
                .enumerate()
                .find_map(|(i, (w, l))| diff_at(l, w, format!("{path}[{i}]")))
        }
        Value::Null => None,
        Value::String(w) => match live {
            Value::String(l) if l == w => None,
            Value::String(l) => match (quantity(w), quantity(l)) {
                (Some(a), Some(b)) if a == b => None,
                _ => here(),
            },
            Value::Null if w.is_empty() => None,
            _ => here(),
        },
        other => (live != other).then(here).flatten(),
    }
}

/// Whether a desired value is what the apiserver leaves out (empty list, map or string, null).
fn absent_equivalent(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// A Kubernetes quantity ("250m", "1Gi", "1e3", "0.5") in billionths, when `s` is one. Pure.
pub(crate) fn quantity(s: &str) -> Option<i128> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num == "+" || num == "-" {
        return None;
    }
    let (neg, digits) = match num.as_bytes()[0] {
        b'-' => (true, &num[1..]),
        b'+' => (false, &num[1..]),
        _ => (false, num),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || frac.len() > 9
        || int.len() > 20
    {
        return None;
    }
    let mut nanos: i128 = int.parse::<i128>().unwrap_or(0) * 1_000_000_000;
    if !frac.is_empty() {
        let scale = 10i128.pow(9 - frac.len() as u32);
        nanos += frac.parse::<i128>().ok()? * scale;
    }
    // Binary suffixes multiply, decimal ones multiply or divide (billionths keep "n" exact).
    let (mul, div): (i128, i128) = match suffix {
        "" => (1, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1_000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().ok()?;
            if !(-9..=18).contains(&exp) {
                return None;
            }
            if exp >= 0 {
                (10i128.pow(exp as u32), 1)
            } else {
                (1, 10i128.pow((-exp) as u32))
            }
        }
        _ => return None,
    };
    let v = nanos.checked_mul(mul)? / div;
    Some(if neg { -v } else { v })
}

/// Applies `desired` unless the live object already carries it (hash annotation current and
/// content covered); refuses an object of that name that is not ours.
pub async fn apply<K>(
    api: &Api<K>,
    metrics: &Metrics,
    mut desired: K,
) -> Result<Applied<K>, ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let hash = hash_of(&desired);
    desired
        .annotations_mut()
        .insert(SPEC_HASH_ANNOTATION.to_string(), hash.clone());
    let name = desired.name_any();
    let kind = K::kind(&()).to_string();
    let mut drift = None;
    if let Some(live) = api.get_opt(&name).await? {
        if let Err(holder) = ownership(&live, &desired) {
            return Err(ApplyError::NotOwned { kind, name, holder });
        }
        if live.annotations().get(SPEC_HASH_ANNOTATION) == Some(&hash) {
            let (l, d) = (serde_json::to_value(&live), serde_json::to_value(&desired));
            drift = match (l, d) {
                (Ok(l), Ok(d)) => first_difference(&l, &d),
                _ => Some(".".to_string()),
            };
            if drift.is_none() {
                return Ok(Applied {
                    object: live,
                    wrote: false,
                    drift: None,
                });
            }
        }
    }
    metrics.wrote(&kind, "PATCH");
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let object = match api.patch(&name, &params, &Patch::Apply(&desired)).await {
        Ok(o) => o,
        Err(kube::Error::Api(e)) if e.code == 422 => {
            return Err(ApplyError::Invalid {
                kind,
                name,
                message: e.message,
            })
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Applied {
        object,
        wrote: true,
        drift,
    })
}

/// Deletes `name` if it exists and its owner references name `owner_uid` (an object of that
/// name that is not ours is left alone). Returns whether a delete was sent.
pub async fn delete_owned<K>(
    api: &Api<K>,
    metrics: &Metrics,
    name: &str,
    owner_uid: &str,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let Some(live) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if owned_by(&live, owner_uid).is_err() {
        tracing::info!(kind = %K::kind(&()), %name, "not deleting an object we do not own");
        return Ok(false);
    }
    metrics.wrote(&K::kind(&()), "DELETE");
    match api.delete(name, &kube::api::DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`apply`] on behalf of `owner`: a reverted hand edit is published as a `DriftCorrected`
/// Warning Event on the owner (naming the field path, never its value).
pub async fn apply_for<O, K>(
    ctx: &Context,
    owner: &O,
    api: &Api<K>,
    desired: K,
) -> Result<Applied<K>, ApplyError>
where
    O: Resource<DynamicType = ()>,
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let applied = apply(api, &ctx.metrics, desired).await?;
    if let Some(path) = &applied.drift {
        let (kind, name) = (K::kind(&()), applied.object.name_any());
        tracing::warn!(%kind, %name, path = %path, "owned object edited outside the operator; restored");
        // The action names the kind (and `publish` adds a digest of the note, so each
        // different restore is an Event of its own).
        ctx.publish(
            owner,
            EventType::Warning,
            "DriftCorrected",
            &format!("Restore{kind}"),
            format!("{kind} {name}: {path} had been changed outside the operator; restored"),
        )
        .await;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;

    fn owned(uid: &str, controller: bool) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "allsource.io/v1alpha1".into(),
            kind: "EventStore".into(),
            name: "orders".into(),
            uid: uid.into(),
            controller: Some(controller),
            ..OwnerReference::default()
        }]);
        cm
    }

    #[test]
    fn only_our_controller_reference_owns_an_object() {
        let desired = owned("u1", true);
        assert_eq!(ownership(&owned("u1", true), &desired), Ok(()));
        assert_eq!(
            ownership(&ConfigMap::default(), &desired),
            Err("no owner reference".to_string())
        );
        assert_eq!(
            ownership(&owned("u2", true), &desired),
            Err("controlled by EventStore orders".to_string())
        );
        // Nothing claimed, nothing checked.
        assert_eq!(
            ownership(&ConfigMap::default(), &ConfigMap::default()),
            Ok(())
        );
    }

    #[test]
    fn live_objects_cover_desired_ones_up_to_defaults_and_normal_forms() {
        let desired = json!({
            "spec": {"containers": [{"name": "node", "image": "a:1", "args": [],
                "resources": {"requests": {"cpu": "1000m", "memory": "1024Mi"}}}],
                "nodeSelector": {}, "hostname": ""},
            "data": {"k": "dg=="}
        });
        let live = json!({
            "spec": {"containers": [{"name": "node", "image": "a:1",
                "terminationMessagePath": "/dev/termination-log",
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
                "restartPolicy": "Always"},
            "data": {"k": "dg=="},
            "status": {"x": 1}
        });
        assert_eq!(first_difference(&live, &desired), None);
    }

    #[test]
    fn hand_edits_are_found_by_path_without_values() {
        let desired = json!({"spec": {"containers": [{"name": "node", "image": "a:1",
            "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false}}]}});
        let edited = json!({"spec": {"containers": [{"name": "node", "image": "a:1",
            "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": true}}]}});
        assert_eq!(
            first_difference(&edited, &desired).as_deref(),
            Some("spec.containers[0].securityContext.allowPrivilegeEscalation")
        );
        let removed = json!({"spec": {"containers": [{"name": "node", "image": "a:1",
            "securityContext": {"runAsNonRoot": true}}]}});
        assert_eq!(
            first_difference(&removed, &desired).as_deref(),
            Some("spec.containers[0].securityContext.allowPrivilegeEscalation")
        );
        let extra = json!({"spec": {"containers": [
            {"name": "node", "image": "a:1", "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false}},
            {"name": "sidecar"}]}});
        assert_eq!(
            first_difference(&extra, &desired).as_deref(),
            Some("spec.containers")
        );
        let data = json!({"data": {"registry.json": "b2xk"}});
        assert_eq!(
            first_difference(&json!({"data": {"registry.json": "ZWRpdA=="}}), &data).as_deref(),
            Some("data.registry.json")
        );
    }

    #[test]
    fn quantities_parse_by_value() {
        assert_eq!(quantity("1"), quantity("1000m"));
        assert_eq!(quantity("1Gi"), quantity("1024Mi"));
        assert_eq!(quantity("1k"), quantity("1e3"));
        assert_eq!(quantity("0.5"), quantity("500m"));
        assert_eq!(quantity("250m"), Some(250_000_000));
        assert_eq!(quantity("abc"), None);
        assert_eq!(quantity("1.2.3"), None);
        assert_eq!(quantity("orders"), None);
        assert_eq!(quantity(""), None);
        assert_ne!(quantity("1"), quantity("1Ki"));
    }
}
