//! Hook for Tenants of cloud-backed EventStores (dynamodb, firestore, postgres). The token and
//! connection Secret are handled by the caller for every backend (the gateway authenticates by
//! token too); this module decides what the backend itself says about the tenant. Until a
//! provisioner from `crate::provision` is wired in here, the tenant is reported honestly as not
//! provisioned (Degraded, reason ProvisionerMissing) instead of pretending to be Ready.
//! It must never touch the connection Secret or the token.

use super::status::Verdict;
use super::TenantOutcome;
use crate::api::{EventStore, Tenant};
use crate::controllers::{Context, ReconcileError};

/// Reason used while no provisioner handles the backend.
pub const PROVISIONER_MISSING: &str = "ProvisionerMissing";

/// Ensures the tenant's table / schema / collection exists on a cloud backend and reports where
/// it lives. Called on every reconcile of a live Tenant; must be idempotent.
pub async fn reconcile(
    _tenant: &Tenant,
    es: &EventStore,
    _ctx: &Context,
    _ns: &str,
) -> Result<TenantOutcome, ReconcileError> {
    Ok(TenantOutcome {
        verdict: Verdict::BackendDegraded(
            PROVISIONER_MISSING.to_string(),
            format!(
                "this operator build has no provisioner for backend {}",
                es.spec.backend.as_str()
            ),
        ),
        location: None,
        usage_url: None,
        requeue: None,
    })
}

/// Removes what [`reconcile`] provisioned when the Tenant is deleted (its data only under
/// `deletionPolicy: Delete`). Ok means done: the finalizer is removed afterwards.
pub async fn cleanup(
    _tenant: &Tenant,
    _es: &EventStore,
    _ctx: &Context,
    _ns: &str,
) -> Result<(), ReconcileError> {
    Ok(())
}
