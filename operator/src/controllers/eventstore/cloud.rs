//! Hook for the cloud backends (dynamodb, firestore, postgres). The provisioners live in
//! `crate::provision`; until one is wired in here, a cloud EventStore is reported honestly as
//! not provisioned (Degraded, reason ProvisionerMissing) instead of pretending to be Ready.
//! It must never create cloud resources itself.

use kube::runtime::controller::Action;

use super::super::{Context, ReconcileError};
use super::write_status;
use crate::api::{
    set_condition, Condition, EventStore, Phase, CONDITION_DEGRADED, CONDITION_READY,
};

/// Reconciles a cloud-backed EventStore.
pub async fn reconcile(es: &EventStore, ctx: &Context, ns: &str) -> Result<Action, ReconcileError> {
    let mut status = es.status.clone().unwrap_or_default();
    status.observed_generation = es.metadata.generation;
    status.phase = Some(Phase::Degraded);
    let msg = format!(
        "this operator build has no provisioner for backend {}",
        es.spec.backend.as_str()
    );
    set_condition(
        &mut status.conditions,
        Condition::new(CONDITION_READY, false, "ProvisionerMissing", msg.clone()),
    );
    set_condition(
        &mut status.conditions,
        Condition::new(CONDITION_DEGRADED, true, "ProvisionerMissing", msg),
    );
    write_status(es, ctx, ns, status).await?;
    Ok(Action::await_change())
}

/// Cleans up a cloud-backed EventStore (nothing was provisioned by this build).
pub async fn cleanup(
    _es: &EventStore,
    _ctx: &Context,
    _ns: &str,
) -> Result<Action, ReconcileError> {
    Ok(Action::await_change())
}
