//! The `Tenant` custom resource: one customer's slice of an EventStore (placement, quotas,
//! credentials, usage). This module owns the spec/status types and their schema; the Tenant
//! controller adds behaviour elsewhere. It must never contain reconcile logic or API calls.

// kube-derive repeats `type_` once per printcolumn, which this lint mistakes for a duplicate.
#![allow(clippy::duplicated_attributes)]

use chrono::{DateTime, Utc};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, DeletionPolicy, EventStoreRef, Phase};

/// Desired state of a Tenant.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "allsource.io",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    singular = "tenant",
    shortname = "tn",
    category = "allsource",
    namespaced,
    status = "TenantStatus",
    derive = "PartialEq",
    doc = "A Tenant is one customer's isolated slice of an EventStore, with its own quotas and credentials.",
    printcolumn(
        name = "EventStore",
        type_ = "string",
        json_path = ".spec.eventStoreRef.name",
        description = "EventStore holding the tenant's events"
    ),
    printcolumn(
        name = "Placement",
        type_ = "string",
        json_path = ".spec.placement",
        description = "pooled or siloed"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// EventStore (same namespace) that holds this tenant's events.
    pub event_store_ref: EventStoreRef,

    /// Tenant id used in the store's API and storage keys; a DNS label. Immutable. Write it explicitly (usually the same as metadata.name). One Tenant per id and EventStore: a later Tenant with an id already in use on the store is Degraded (DuplicateTenantId) and gets nothing.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "spec.tenantId is immutable"}
    ]))]
    pub tenant_id: String,

    /// pooled shares tables/schemas/databases/nodes with other tenants (rows keyed by tenant id); siloed gets its own DynamoDB table, PostgreSQL schema, Firestore database or store node. Immutable.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "spec.placement is immutable; create a new Tenant and migrate"}
    ]))]
    pub placement: Placement,

    /// Limits enforced by the store for this tenant; unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<Quotas>,

    /// When true the store rejects the tenant's appends and reads (data is kept).
    #[serde(default)]
    pub suspend: bool,

    /// Credentials of the tenant (kept in a Secret the operator owns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsSpec>,

    /// What happens to the tenant's data when the Tenant is deleted. Retain keeps it; Delete
    /// erases its events from the store and its archived copies from the destination of every
    /// ArchivePolicy of the store before the Tenant goes.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// How a tenant's data is placed in its EventStore.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Placement {
    /// Shared with other tenants, separated by tenant id.
    #[default]
    Pooled,
    /// Own table, schema, Firestore database or node.
    Siloed,
}

/// Per-tenant limits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    /// Most events appended per second (token bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub events_per_second: Option<i64>,
    /// Most bytes of event data stored, a quantity such as 50Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub storage_bytes: Option<String>,
    /// Most streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_streams: Option<i64>,
}

/// Credential settings of a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSpec {
    /// Any new value (e.g. a timestamp) rotates the tenant's token: the connection Secret gets a new token and the previous one stays valid for a grace period (5 minutes; the Tenant annotation allsource.io/rotation-grace-seconds overrides it), then stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub rotate: Option<String>,
}

/// Observed state of a Tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The metadata.generation the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Summary of the conditions for kubectl get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Where the tenant's events live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<TenantLocation>,
    /// Secret (same namespace) holding the tenant's endpoint and token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Usage figures read from the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TenantUsage>,
    /// Hex SHA-256 digests of the tenant's valid tokens (set by the Tenant controller, copied into the store nodes' registry; never the tokens themselves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_sha256: Vec<String>,
    /// When the token was last rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<DateTime<Utc>>,
}

/// Location of a tenant's events inside its EventStore.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantLocation {
    /// Kind of location.
    pub kind: LocationKind,
    /// Name of the table, schema, collection, database or node (pod).
    pub name: String,
}

/// Kind of place a tenant lives in.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LocationKind {
    /// A DynamoDB table.
    #[default]
    Table,
    /// A PostgreSQL schema.
    Schema,
    /// A Firestore collection (a pooled tenant of a Firestore store).
    Collection,
    /// A Firestore database of its own (a siloed tenant of a Firestore store), in the store's
    /// project.
    Database,
    /// A store node (pod) of a selfHosted EventStore.
    Node,
}

/// Usage figures of a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantUsage {
    /// Number of events stored.
    pub events: i64,
    /// Number of streams.
    pub streams: i64,
    /// Bytes of event data stored.
    pub bytes: i64,
    /// When the figures were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}
