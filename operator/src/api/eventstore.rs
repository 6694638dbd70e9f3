//! The `EventStore` custom resource: which backend holds a set of tenants' events and how it runs.
//! This module owns the spec/status types, their schema (descriptions, defaults, CEL rules) and
//! small pure accessors; it must never contain reconcile behaviour or talk to the API server.

// kube-derive repeats `type_` once per printcolumn, which this lint mistakes for a duplicate.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, DeletionPolicy, Phase, SecretRef};

/// Desired state of an EventStore: one backend block that matches `backend`, plus lifecycle settings.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "allsource.io",
    version = "v1alpha1",
    kind = "EventStore",
    plural = "eventstores",
    singular = "eventstore",
    shortname = "es",
    category = "allsource",
    namespaced,
    status = "EventStoreStatus",
    derive = "PartialEq",
    doc = "An EventStore is a place where tenants' events live: a StatefulSet of AllSource store nodes (selfHosted) or a cloud database (DynamoDB, Firestore, PostgreSQL) the operator provisions.",
    scale(
        spec_replicas_path = ".spec.selfHosted.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Backend",
        type_ = "string",
        json_path = ".spec.backend",
        description = "Storage backend"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.readyText",
        description = "Ready replicas / desired replicas"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint.url",
        description = "Client URL inside the cluster"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.selfHosted) ? 1 : 0) + (has(self.dynamodb) ? 1 : 0) + (has(self.firestore) ? 1 : 0) + (has(self.postgres) ? 1 : 0) == 1",
        "message": "exactly one of spec.selfHosted, spec.dynamodb, spec.firestore, spec.postgres must be set"
    },
    {
        "rule": "has(self.selfHosted) == (self.backend == 'selfHosted') && has(self.dynamodb) == (self.backend == 'dynamodb') && has(self.firestore) == (self.backend == 'firestore') && has(self.postgres) == (self.backend == 'postgres')",
        "message": "the backend block must match spec.backend (e.g. backend: dynamodb needs spec.dynamodb)"
    },
    {
        "rule": "!has(self.gateway) || self.backend != 'selfHosted'",
        "message": "spec.gateway is only for cloud backends (dynamodb, firestore, postgres); selfHosted nodes serve clients themselves"
    }
]))]
pub struct EventStoreSpec {
    /// Storage backend. Immutable: moving data between backends is an export/import, not an edit.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "spec.backend is immutable; create a new EventStore to change backend"}
    ]))]
    pub backend: Backend,

    /// Settings of the selfHosted backend: a StatefulSet of store nodes with local volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_hosted: Option<SelfHostedSpec>,

    /// Settings of the DynamoDB backend: the operator creates and configures the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamodb: Option<DynamoDbSpec>,

    /// Settings of the Firestore backend: the operator prepares the collections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firestore: Option<FirestoreSpec>,

    /// Settings of the PostgreSQL backend: the operator creates the schema, tables and roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,

    /// Optional stateless store-node gateway in front of a cloud backend (not for selfHosted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,

    /// What happens to volumes, tables or schemas when the EventStore is deleted. Retain keeps the data.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// When true the operator stops reconciling this EventStore (running pods are left alone).
    #[serde(default)]
    pub suspend: bool,
}

/// Storage backend of an EventStore.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Backend {
    /// AllSource's embedded engine (WAL + Parquet segments) on a StatefulSet.
    #[serde(rename = "selfHosted")]
    SelfHosted,
    /// Amazon DynamoDB.
    #[serde(rename = "dynamodb")]
    DynamoDb,
    /// Google Cloud Firestore (native mode).
    #[serde(rename = "firestore")]
    Firestore,
    /// PostgreSQL.
    #[serde(rename = "postgres")]
    Postgres,
}

impl Backend {
    /// The name used in `spec.backend`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::SelfHosted => "selfHosted",
            Backend::DynamoDb => "dynamodb",
            Backend::Firestore => "firestore",
            Backend::Postgres => "postgres",
        }
    }
}

/// A StatefulSet of AllSource store nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfHostedSpec {
    /// Number of store nodes. Scaling down is refused while a node to be removed owns tenants.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,

    /// Container image of the store node. Changing it rolls the StatefulSet one pod at a time.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1))]
    pub image: String,

    /// Image pull policy of the store-node container.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// CPU and memory requests and limits of the store-node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The persistent volume of each node (WAL and Parquet segments).
    #[serde(default)]
    pub storage: StorageSpec,

    /// When an append is acknowledged relative to the disk.
    #[serde(default)]
    pub durability: Durability,

    /// Input limits enforced by every node.
    #[serde(default)]
    pub limits: NodeLimits,

    /// Overrides merged into the pod template of the store nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,

    /// Secret with the nodes' TLS certificate: keys tls.crt, tls.key and ca.crt (a
    /// kubernetes.io/tls Secret plus the issuing CA, as cert-manager writes it). When set, every
    /// node serves its API over HTTPS only (mounted at /etc/allsource/tls, reloaded within
    /// seconds when the Secret changes, no restart); the operator, the archiver and the tenants'
    /// credentials Secrets use https:// URLs verified with ca.crt, which is copied into each
    /// tenant's credentials Secret. The certificate must name <store>.<namespace>.svc and
    /// *.<store>-nodes.<namespace>.svc. A Secret that is missing, lacks a key, or whose
    /// tls.crt and tls.key do not form a pair makes the store Degraded (reason
    /// TLSSecretInvalid) before any node is rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<SecretRef>,
}

fn default_replicas() -> i32 {
    3
}

/// Default store-node image.
pub fn default_image() -> String {
    "ghcr.io/allsource/store-node:0.1.0".to_string()
}

impl Default for SelfHostedSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: default_image(),
            image_pull_policy: PullPolicy::default(),
            resources: None,
            storage: StorageSpec::default(),
            durability: Durability::default(),
            limits: NodeLimits::default(),
            pod_template: None,
            tls_secret_ref: None,
        }
    }
}

/// Container image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull only when the image is not on the node.
    #[default]
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Persistent volume of one store node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
        "message": "storage.storageClassName is immutable: the volumes keep the class they were made with"
    }
]))]
pub struct StorageSpec {
    /// Size of each node's volume, a Kubernetes quantity such as 10Gi. Growing it expands every
    /// node's PersistentVolumeClaim in place (the StorageClass must set allowVolumeExpansion;
    /// otherwise the store is Degraded with reason VolumeExpansionRefused) and re-creates the
    /// StatefulSet around its running pods, which are not restarted; Progressing is True with
    /// reason VolumeResizing until every claim's capacity reached the size. A smaller size is
    /// refused (Degraded, reason VolumeShrinkRefused): volumes never shrink.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,

    /// StorageClass of the volumes; the cluster default when unset. Immutable (enforced at
    /// admission): neither set, changed nor removed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,

    /// Keep the volumes even when the EventStore is deleted with deletionPolicy Delete.
    #[serde(default)]
    pub keep_on_delete: bool,
}

fn default_storage_size() -> String {
    "10Gi".to_string()
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            keep_on_delete: false,
        }
    }
}

/// When an append is acknowledged relative to the disk.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Durability {
    /// fsync the WAL before acknowledging (group commit). No acknowledged event is lost.
    #[default]
    Fsync,
    /// fsync on a timer; a crash may lose the last interval of acknowledged events.
    Interval,
    /// Never fsync; for tests and throwaway data.
    None,
}

impl Durability {
    /// The spelling used in the spec and in the node configuration.
    pub fn as_str(&self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Interval => "interval",
            Durability::None => "none",
        }
    }
}

/// Input limits of a store node; unset fields use the store node's defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeLimits {
    /// Largest payload plus metadata of one event, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_event_bytes: Option<i64>,
    /// Most events in one append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_batch_events: Option<i64>,
    /// Largest total size of one append, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_batch_bytes: Option<i64>,
    /// Largest page a read may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_read_limit: Option<i64>,
    /// Most bytes of events one read page holds (payload, type, stream id and metadata;
    /// default 16 MiB). A page always holds at least one event; clients continue from the
    /// page's `next`, so a page with fewer events than asked for is not the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_read_bytes: Option<i64>,
    /// Most subscriptions (`GET /v1/subscribe`) one tenant holds open at once on a node
    /// (default 32); more answer 429 `too_many_subscriptions`. The node-wide cap of 1,024
    /// (503) applies as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_subscriptions_per_tenant: Option<i64>,
    /// Most bytes of events one subscription holds queued for a client that does not read them
    /// yet (default 1 MiB); an event larger than this still goes through, alone. A slow client
    /// stalls only its own subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_subscription_buffer_bytes: Option<i64>,
    /// Bytes of decoded Parquet row groups a node caches in memory for reads of data already
    /// flushed to disk (default 64 MiB); a larger row group is used once and not kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub cache_bytes: Option<i64>,
}

/// Overrides merged into the template of the pods the operator makes (store nodes, archivers).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Node labels a node must have to run the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the pods (the operator adds none by itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra labels on the pods (the operator's own labels win on conflict).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A DynamoDB table provisioned by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(oldSelf.tableName) || (has(self.tableName) && self.tableName == oldSelf.tableName)", "message": "spec.dynamodb.tableName is immutable once set"},
    {"rule": "self.billingMode != 'provisioned' || (has(self.readCapacity) && has(self.writeCapacity))", "message": "billingMode provisioned needs readCapacity and writeCapacity"}
]))]
pub struct DynamoDbSpec {
    /// AWS region of the table, e.g. eu-west-1.
    #[schemars(length(min = 1))]
    pub region: String,
    /// Endpoint override (DynamoDB Local, a VPC endpoint); the regional AWS endpoint when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Table name; derived as allsource-<namespace>-<name>-<8 hex digits of a hash of namespace/name> when unset, recorded in status.provisioned. Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9_.-]{3,255}$"))]
    pub table_name: Option<String>,
    /// Capacity mode of the table.
    #[serde(default)]
    pub billing_mode: BillingMode,
    /// Read capacity units (billingMode provisioned only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub read_capacity: Option<i64>,
    /// Write capacity units (billingMode provisioned only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub write_capacity: Option<i64>,
    /// Turn on point-in-time recovery (continuous backups) for the table.
    #[serde(default = "default_true")]
    pub point_in_time_recovery: bool,
    /// Turn on deletion protection; the operator lifts it only for deletionPolicy Delete.
    #[serde(default = "default_true")]
    pub deletion_protection: bool,
    /// Attribute DynamoDB uses to expire items (time to live); no TTL when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_attribute: Option<String>,
    /// Tags put on the table.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; pod identity (IRSA) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

fn default_true() -> bool {
    true
}

/// DynamoDB capacity mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BillingMode {
    /// Pay per request.
    #[default]
    OnDemand,
    /// Fixed read and write capacity units.
    Provisioned,
}

/// A Firestore database prepared by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.emulator) || !self.emulator || has(self.endpoint)", "message": "spec.firestore.emulator needs spec.firestore.endpoint (the emulator's host:port)"},
    {"rule": "(has(self.emulator) && self.emulator) || !has(self.endpoint) || self.endpoint.startsWith('https://')", "message": "spec.firestore.endpoint must be https:// unless spec.firestore.emulator is true"}
]))]
pub struct FirestoreSpec {
    /// Google Cloud project id.
    #[schemars(length(min = 1))]
    pub project_id: String,
    /// Firestore database id.
    #[serde(default = "default_firestore_database")]
    pub database_id: String,
    /// Endpoint override: an https:// URL (a private or regional endpoint), or with emulator true the emulator's host:port or http:// URL; Google's endpoint when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The endpoint is a Firestore emulator (development and tests only): the operator and the gateway send the emulator's owner token instead of Google credentials, and an Admin API the emulator does not serve is a note on Ready ("indexes and TTL not verified") instead of Degraded. Needs endpoint. When false, an Admin API that cannot be reached or cannot verify the indexes makes the store Degraded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emulator: bool,
    /// Secret with a service-account key under key.json; workload identity when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Field Firestore uses for TTL deletion of documents; no TTL when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_field: Option<String>,
}

fn default_firestore_database() -> String {
    "(default)".to_string()
}

/// A PostgreSQL schema provisioned by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(oldSelf.schema) || (has(self.schema) && self.schema == oldSelf.schema)", "message": "spec.postgres.schema is immutable once set"}
]))]
pub struct PostgresSpec {
    /// Secret with an admin connection: key `url` (postgres://...) or keys host, port, user, password, database; optional key `ca.crt` (PEM) is the CA that sslMode verify-ca and verify-full check the server's certificate against (the Mozilla roots when absent); optional keys `tls.crt` and `tls.key` (PEM, both or neither) are a client certificate the operator and the gateway present (pg_hba `cert` authentication, where the password may be left out).
    pub connection_secret_ref: SecretRef,
    /// Schema that holds the event tables; derived as allsource_<namespace>_<name>_<8 hex digits of a hash of namespace/name> when unset. Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub schema: Option<String>,
    /// libpq sslmode of the operator's and the gateway's connections: disable (no TLS), prefer (TLS when the server offers it, certificate not verified; the default), require (TLS, certificate not verified), verify-ca (TLS, certificate chain verified against the Secret's ca.crt, host name not checked), verify-full (TLS, chain and host name verified). Tenant login Secrets carry the same sslmode.
    #[serde(default)]
    pub ssl_mode: SslMode,
}

/// libpq `sslmode`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, certificate not verified.
    #[default]
    Prefer,
    /// TLS, certificate not verified.
    Require,
    /// TLS, certificate chain verified against the CA (ca.crt), host name not checked.
    VerifyCa,
    /// TLS, certificate chain and host name verified.
    VerifyFull,
}

/// Stateless store-node gateway in front of a cloud backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Run the gateway Deployment.
    #[serde(default)]
    pub enabled: bool,
    /// Number of gateway pods.
    #[serde(default = "default_gateway_replicas")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,
    /// Container image of the gateway (the store-node image).
    #[serde(default = "default_image")]
    pub image: String,
    /// ServiceAccount the gateway pods run as: for GKE workload identity (Firestore) or EKS IRSA (DynamoDB), the one bound to the cloud identity. The namespace's default ServiceAccount when unset. The operator does not create it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub service_account_name: Option<String>,
    /// Secret of the gateway's HTTPS listener, with tls.crt, tls.key and ca.crt (a kubernetes.io/tls Secret plus the issuing CA, as cert-manager writes it). When set, the gateway pods serve the API over HTTPS only (mounted at /etc/allsource/tls, reloaded within seconds when the Secret changes, no restart), status.endpoint and the tenants' credentials Secrets carry an https:// URL, and ca.crt is copied into each tenant's credentials Secret. The certificate must name <store>.<namespace>.svc. A Secret that is missing, lacks a key, or whose tls.crt and tls.key do not form a pair makes the store Degraded (reason TLSSecretInvalid) and the gateway is not rolled out. Unset: plain HTTP (keep the Service inside the cluster's network policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<SecretRef>,
    /// Image pull policy of the gateway container.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// CPU and memory requests and limits of the gateway container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Overrides merged into the pod template of the gateway pods (node selector, tolerations,
    /// affinity, extra labels and annotations; the operator's own labels win on conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
}

fn default_gateway_replicas() -> i32 {
    2
}

/// Observed state of an EventStore.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventStoreStatus {
    /// The metadata.generation the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Summary of the conditions for kubectl get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Where clients connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Number of store-node pods (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Number of ready store-node pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// readyReplicas/replicas as text for kubectl get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_text: Option<String>,
    /// Label selector of the store-node pods (scale subresource, HorizontalPodAutoscaler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// What this store supports: the capabilities store-node declares for the backend of spec.backend (the same values its GET /v1/info reports), with archival also requiring an HTTP endpoint for the archiver (always on selfHosted, spec.gateway.enabled on cloud backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<StatusCapabilities>,
    /// Tenant id to the store node (pod name) that owns it (selfHosted only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub placement: BTreeMap<String, String>,
    /// Names of the backend resources the operator provisioned (table, schema, collection prefix...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub provisioned: BTreeMap<String, String>,
    /// Image currently rolled out on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Client endpoint of an EventStore.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// DNS name of the client Service.
    pub service: String,
    /// TCP port.
    pub port: i32,
    /// Base URL of the HTTP API.
    pub url: String,
}

/// What an EventStore supports, from store-node's declaration for its backend
/// (`allsource_core::model::BackendKind::capabilities`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCapabilities {
    /// Push subscriptions (GET /v1/subscribe); on cloud backends the gateway polls the backend and pushes.
    pub subscriptions: bool,
    /// Stream snapshots (PUT/GET /v1/streams/{id}/snapshot).
    pub snapshots: bool,
    /// Atomic multi-event appends: a batch is stored whole or not at all.
    pub transactions: bool,
    /// An ArchivePolicy can archive this store: the backend can trim archived events and the store has an HTTP endpoint for the archiver (selfHosted, or a cloud backend with spec.gateway.enabled).
    pub archival: bool,
    /// Each tenant's positions are gap-free (0, 1, 2, ...), not only increasing.
    #[serde(default)]
    pub gapless_positions: bool,
}

impl EventStore {
    /// The selfHosted block, when this is a selfHosted store.
    pub fn self_hosted(&self) -> Option<&SelfHostedSpec> {
        match self.spec.backend {
            Backend::SelfHosted => self.spec.self_hosted.as_ref(),
            _ => None,
        }
    }
}
