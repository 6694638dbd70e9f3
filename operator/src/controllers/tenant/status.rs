//! Computes a Tenant's status from one observation: what the reconcile found ([`Verdict`]), the
//! token digests, the Secret, the location and the usage. Conditions keep their
//! lastTransitionTime while their status holds, so the same observation gives an equal status
//! and the reconciler writes nothing. Pure: no I/O, no clock.

use chrono::{DateTime, Utc};

use crate::api::tenant::{TenantLocation, TenantStatus, TenantUsage};
use crate::api::{
    set_condition, Condition, Phase, Tenant, CONDITION_DEGRADED, CONDITION_PROGRESSING,
    CONDITION_READY,
};

/// What a reconcile found, most serious first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `spec.eventStoreRef` names no EventStore in the namespace.
    EventStoreNotFound(String),
    /// The backend cannot serve this tenant (reason, message), e.g. `ProvisionerMissing`.
    BackendDegraded(String, String),
    /// The EventStore exists but is not Ready.
    EventStoreNotReady(String),
    /// The store nodes' registry does not reflect the tenant yet (new token, suspend, resume).
    RegistryPending(String),
    /// The tenant's own schema or table is being created or repaired (what is under way).
    BackendPending(String),
    /// `spec.suspend` is true and the store rejects the tenant's requests.
    Suspended,
    /// The tenant can connect with the token in its Secret.
    Ready,
}

impl Verdict {
    /// CamelCase reason used in the conditions.
    pub fn reason(&self) -> &str {
        match self {
            Verdict::EventStoreNotFound(_) => "EventStoreNotFound",
            Verdict::BackendDegraded(reason, _) => reason,
            Verdict::EventStoreNotReady(_) => "EventStoreNotReady",
            Verdict::RegistryPending(_) => "RegistryPending",
            Verdict::BackendPending(_) => "BackendPending",
            Verdict::Suspended => "Suspended",
            Verdict::Ready => "Ready",
        }
    }

    fn message(&self) -> String {
        match self {
            Verdict::EventStoreNotFound(name) => {
                format!("EventStore {name} does not exist in this namespace")
            }
            Verdict::BackendDegraded(_, msg) => msg.clone(),
            Verdict::EventStoreNotReady(name) => format!("EventStore {name} is not Ready"),
            Verdict::RegistryPending(what) => {
                format!("waiting for the store nodes' registry: {what}")
            }
            Verdict::BackendPending(what) => what.clone(),
            Verdict::Suspended => {
                "spec.suspend is true; the store rejects the tenant's requests".to_string()
            }
            Verdict::Ready => {
                "the digests of the tenant's tokens are published to the store".into()
            }
        }
    }

    fn phase(&self) -> Phase {
        match self {
            Verdict::EventStoreNotFound(_) | Verdict::BackendDegraded(..) => Phase::Degraded,
            Verdict::EventStoreNotReady(_)
            | Verdict::RegistryPending(_)
            | Verdict::BackendPending(_) => Phase::Provisioning,
            Verdict::Suspended => Phase::Suspended,
            Verdict::Ready => Phase::Ready,
        }
    }
}

/// Everything besides the verdict that goes into the status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// Digests of the valid tokens (None: leave the status's digests as they are).
    pub token_sha256: Option<Vec<String>>,
    /// When the token was last rotated.
    pub last_rotation: Option<DateTime<Utc>>,
    /// Name of the connection Secret, once it exists.
    pub secret_name: Option<String>,
    /// Where the tenant's events live.
    pub location: Option<TenantLocation>,
    /// Fresh usage figures (None: keep the previous ones).
    pub usage: Option<TenantUsage>,
}

/// The status to write.
pub fn compute(tenant: &Tenant, verdict: &Verdict, facts: Facts) -> TenantStatus {
    let previous = tenant.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = tenant.metadata.generation;
    status.phase = Some(verdict.phase());
    let reason = verdict.reason();
    let message = verdict.message();
    let gen = tenant.metadata.generation;
    let with_gen = |mut c: Condition| {
        c.observed_generation = gen;
        c
    };
    set_condition(
        &mut status.conditions,
        with_gen(Condition::new(
            CONDITION_READY,
            *verdict == Verdict::Ready,
            reason,
            message.clone(),
        )),
    );
    let progressing = matches!(
        verdict,
        Verdict::EventStoreNotReady(_) | Verdict::RegistryPending(_) | Verdict::BackendPending(_)
    );
    set_condition(
        &mut status.conditions,
        with_gen(Condition::new(
            CONDITION_PROGRESSING,
            progressing,
            if progressing { reason } else { "AsExpected" },
            if progressing {
                message.clone()
            } else {
                String::new()
            },
        )),
    );
    let degraded = matches!(
        verdict,
        Verdict::EventStoreNotFound(_) | Verdict::BackendDegraded(..)
    );
    set_condition(
        &mut status.conditions,
        with_gen(Condition::new(
            CONDITION_DEGRADED,
            degraded,
            if degraded { reason } else { "AsExpected" },
            if degraded { message } else { String::new() },
        )),
    );
    if let Some(hashes) = facts.token_sha256 {
        status.token_sha256 = hashes;
    }
    status.last_rotation = facts.last_rotation.or(previous.last_rotation);
    if facts.secret_name.is_some() {
        status.secret_name = facts.secret_name;
    }
    if facts.location.is_some() {
        status.location = facts.location;
    }
    if facts.usage.is_some() {
        status.usage = facts.usage;
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::find_condition;

    fn tenant() -> Tenant {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1",
            "kind": "Tenant",
            "metadata": {"name": "acme", "namespace": "shop", "generation": 3},
            "spec": {"eventStoreRef": {"name": "orders"}, "tenantId": "acme"},
        }))
        .unwrap()
    }

    #[test]
    fn missing_store_is_degraded_and_same_observation_is_equal() {
        let mut t = tenant();
        let v = Verdict::EventStoreNotFound("orders".into());
        let s = compute(&t, &v, Facts::default());
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(s.observed_generation, Some(3));
        let d = find_condition(&s.conditions, CONDITION_DEGRADED).unwrap();
        assert!(d.is_true());
        assert_eq!(d.reason, "EventStoreNotFound");
        assert!(!find_condition(&s.conditions, CONDITION_READY)
            .unwrap()
            .is_true());
        t.status = Some(s.clone());
        assert_eq!(compute(&t, &v, Facts::default()), s);
    }

    #[test]
    fn ready_suspended_and_facts() {
        let t = tenant();
        let facts = Facts {
            token_sha256: Some(vec!["ab".into()]),
            secret_name: Some("acme-credentials".into()),
            ..Facts::default()
        };
        let s = compute(&t, &Verdict::Ready, facts);
        assert_eq!(s.phase, Some(Phase::Ready));
        assert!(find_condition(&s.conditions, CONDITION_READY)
            .unwrap()
            .is_true());
        assert!(!find_condition(&s.conditions, CONDITION_DEGRADED)
            .unwrap()
            .is_true());
        assert_eq!(s.token_sha256, vec!["ab".to_string()]);
        assert_eq!(s.secret_name.as_deref(), Some("acme-credentials"));

        let s = compute(&t, &Verdict::Suspended, Facts::default());
        assert_eq!(s.phase, Some(Phase::Suspended));
        assert_eq!(
            find_condition(&s.conditions, CONDITION_READY)
                .unwrap()
                .reason,
            "Suspended"
        );
    }
}
