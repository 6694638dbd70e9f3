//! Shared API vocabulary for the three AllSource kinds: the API group, names every controller uses
//! (field manager, finalizer, labels), and the types that appear in more than one resource
//! (conditions, object references, deletion policy, validation patterns). It holds plain data and
//! pure helpers only: it must never talk to the API server.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every AllSource custom resource.
pub const API_GROUP: &str = "allsource.io";
/// API version of every AllSource custom resource.
pub const API_VERSION: &str = "v1alpha1";
/// The one server-side-apply field manager the operator writes with.
pub const FIELD_MANAGER: &str = "allsource-operator";
/// Finalizer that guards cleanup of everything an AllSource resource created.
pub const FINALIZER: &str = "allsource.io/cleanup";
/// Annotation holding the hash of the last applied desired object (skip no-op applies).
pub const SPEC_HASH_ANNOTATION: &str = "allsource.io/spec-hash";
/// Annotation on an ArchivePolicy that asks for an immediate run; any new value triggers one.
pub const RUN_NOW_ANNOTATION: &str = "allsource.io/run-now";

/// Regular expression of a Kubernetes resource quantity as used for sizes (`10Gi`, `500M`, `1.5Ti`).
pub const QUANTITY_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";
/// Regular expression of a duration: one or more `<number><unit>` with units ms, s, m, h, d (`720h`, `30d`, `1h30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";
/// Regular expression of a DNS label (RFC 1123), used for tenant ids.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// Condition type: the resource is serving.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: a change is being rolled out.
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// Condition type: something is wrong that needs attention (invalid spec, refused change, failing backend).
pub const CONDITION_DEGRADED: &str = "Degraded";

/// What happens to data and provisioned backend resources when the custom resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep volumes, tables, schemas and collections; only the Kubernetes objects go away.
    #[default]
    Retain,
    /// Delete volumes, tables, schemas and collections together with the resource.
    Delete,
}

/// Reference to an EventStore in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventStoreRef {
    /// Name of the EventStore in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Reference to a Secret in the same namespace, optionally to one key of it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret in the same namespace as the referring resource.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One observation of the state of a resource, in the style of `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Kind of condition: Ready, Progressing or Degraded.
    #[serde(rename = "type")]
    pub type_: String,
    /// Status of the condition: True, False or Unknown.
    pub status: String,
    /// Machine-readable CamelCase reason for the last transition.
    pub reason: String,
    /// Human-readable explanation.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (not when the condition was last written).
    pub last_transition_time: DateTime<Utc>,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A condition with the given type, boolean status, reason and message, stamped now.
    pub fn new(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.to_string(),
            status: if status { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message: message.into(),
            // Whole seconds, like metav1.Time, so a status read back compares equal.
            last_transition_time: DateTime::from_timestamp(Utc::now().timestamp(), 0)
                .unwrap_or_default(),
            observed_generation: None,
        }
    }

    /// Whether the condition's status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Inserts or updates `new` in `conditions`, keeping the old `lastTransitionTime` when the status
/// did not change, so that an unchanged observation produces an identical status (and no write).
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time;
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Lifecycle phase shown in `kubectl get`; a summary of the conditions, never the source of truth.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, nothing created yet.
    #[default]
    Pending,
    /// Resources are being created or updated.
    Provisioning,
    /// Serving.
    Ready,
    /// Something needs attention; see the Degraded condition.
    Degraded,
    /// Suspended by `spec.suspend`; nothing is reconciled.
    Suspended,
    /// Being deleted; cleanup in progress.
    Deleting,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_when_status_does_not_change() {
        let mut conditions = vec![];
        let first = Condition::new(CONDITION_READY, true, "Ready", "all good");
        let t0 = first.last_transition_time;
        set_condition(&mut conditions, first);
        let mut again = Condition::new(CONDITION_READY, true, "Ready", "still good");
        again.last_transition_time = t0 + chrono::Duration::seconds(60);
        set_condition(&mut conditions, again);
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, t0);
        assert_eq!(conditions[0].message, "still good");

        let mut flipped = Condition::new(CONDITION_READY, false, "NotReady", "down");
        let t1 = t0 + chrono::Duration::seconds(120);
        flipped.last_transition_time = t1;
        set_condition(&mut conditions, flipped);
        assert_eq!(conditions[0].last_transition_time, t1);
        assert!(!conditions[0].is_true());
    }
}
