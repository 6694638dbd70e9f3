//! Cloud provisioners of the EventStore backends: one module per backend behind the
//! [`Provisioner`] trait (`ensure`, `observe`, `delete`, all idempotent). Each module separates a
//! pure plan (desired DDL or table input, the list of drift items between desired and live) from
//! the few calls that read or change the service. The data layout is store-node's
//! (`allsource_backends::{postgres::sql, dynamodb::table, firestore::layout}`), the same the
//! gateway reads and writes; this module must never define a second layout, read Kubernetes
//! objects, or log or return a credential.

pub mod dynamodb;
pub mod firestore;
pub mod postgres;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::api::DeletionPolicy;

/// How long one connection attempt or one call to a backend may take before it counts as an
/// outage (a hung endpoint must not hold a reconcile forever).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of a provisioner, split by what the reconciler should do about them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    /// The service is unreachable, timed out or throttled: retry with backoff, recovers by itself.
    #[error("{service} unavailable: {message}")]
    Unavailable {
        /// Backend name (postgres, dynamodb, firestore).
        service: &'static str,
        /// The service's or the transport's error.
        message: String,
    },
    /// The spec or the referenced Secret cannot work as written; waits for a change.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The credentials are refused or lack a permission; waits for a change.
    #[error("{service} refused the operation: {message}")]
    Permission {
        /// Backend name.
        service: &'static str,
        /// The service's error.
        message: String,
    },
    /// A resource with the same name exists and does not match the layout; never overwritten.
    #[error("{0}")]
    Conflict(String),
}

impl ProvisionError {
    /// Whether retrying without a spec change can succeed (outage, throttling).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProvisionError::Unavailable { .. })
    }

    /// CamelCase condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ProvisionError::Unavailable { .. } => "BackendUnavailable",
            ProvisionError::InvalidSpec(_) => "InvalidSpec",
            ProvisionError::Permission { .. } => "PermissionDenied",
            ProvisionError::Conflict(_) => "ResourceConflict",
        }
    }
}

/// What `ensure` found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsureAction {
    /// The resource did not exist and was created now.
    Created,
    /// A resource with the expected layout already existed and is used as is.
    Adopted,
    /// The resource exists but is not usable yet (e.g. a table still CREATING).
    Pending,
}

/// Result of [`Provisioner::ensure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// Created, adopted or pending.
    pub action: EnsureAction,
    /// Names of what was provisioned (status.provisioned), never secrets.
    pub resources: BTreeMap<String, String>,
}

/// A feature the spec asks for that the endpoint refuses (e.g. DynamoDB Local has no
/// point-in-time recovery): reported, never silently treated as done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// Feature name as in the spec (pointInTimeRecovery, tags ...).
    pub feature: String,
    /// The service's error.
    pub message: String,
}

/// Result of [`Provisioner::observe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Differences between the live resource and the desired one that were found.
    pub drift: Vec<String>,
    /// The subset of `drift` that was corrected by this call.
    pub corrected: Vec<String>,
    /// Requested features the endpoint does not support.
    pub unsupported: Vec<Unsupported>,
    /// A correction is under way (e.g. an index being rebuilt); check again soon.
    pub pending: bool,
    /// Further facts for status.provisioned (stream ARN, feature states).
    pub resources: BTreeMap<String, String>,
    /// What could not be verified but does not block Ready (e.g. an emulator without the
    /// Firestore Admin API); shown in the Ready message and once as an Event.
    pub notes: Vec<String>,
}

/// Result of [`Provisioner::delete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// deletionPolicy Retain: nothing was touched.
    Retained,
    /// The resource was deleted now.
    Deleted,
    /// deletionPolicy Delete, and the resource did not exist.
    AlreadyGone,
}

/// One backend's provisioner for one EventStore. Every method is idempotent.
#[async_trait]
pub trait Provisioner: Send + Sync {
    /// Creates the resource when missing, or adopts an existing one that matches the layout
    /// ([`ProvisionError::Conflict`] when it does not).
    async fn ensure(&self) -> Result<Ensured, ProvisionError>;
    /// Compares the live resource with the desired one and corrects what it can.
    async fn observe(&self) -> Result<Observed, ProvisionError>;
    /// Deletes the resource under `Delete`; does nothing under `Retain`.
    async fn delete(&self, policy: DeletionPolicy) -> Result<Deleted, ProvisionError>;
}

/// Eight hex digits of SHA-256(`<namespace>/<name>`), appended to names derived from an
/// EventStore's namespace and name: `-`/`.` folding and length cuts could otherwise map two
/// stores (namespace `a` store `b-c`, namespace `a-b` store `c`) to one table or schema.
pub fn identity_suffix(namespace: &str, name: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{namespace}/{name}").as_bytes());
    hex::encode(&digest[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outages_are_retryable() {
        let outage = ProvisionError::Unavailable {
            service: "postgres",
            message: "connection refused".into(),
        };
        assert!(outage.is_retryable());
        assert_eq!(outage.reason(), "BackendUnavailable");
        assert!(!ProvisionError::InvalidSpec("x".into()).is_retryable());
        assert!(!ProvisionError::Conflict("x".into()).is_retryable());
        assert!(!ProvisionError::Permission {
            service: "dynamodb",
            message: "AccessDenied".into()
        }
        .is_retryable());
    }
}
