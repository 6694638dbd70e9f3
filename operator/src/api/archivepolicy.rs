//! The `ArchivePolicy` custom resource: scheduled export of events older than the hot window to
//! S3 or GCS as Parquet plus a manifest, verify then trim, with bucket lifecycle tiers. This module
//! owns the types and their schema (CEL rules for tiers and durations); it must never hold
//! reconcile logic or API calls.

// kube-derive repeats `type_` once per printcolumn, which this lint mistakes for a duplicate.
#![allow(clippy::duplicated_attributes)]

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, EventStoreRef, Phase, SecretRef};
use super::eventstore::PodTemplateOverrides;

/// Desired state of an ArchivePolicy. Annotate the resource with `allsource.io/run-now=<any new value>` to start a run immediately.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "allsource.io",
    version = "v1alpha1",
    kind = "ArchivePolicy",
    plural = "archivepolicies",
    singular = "archivepolicy",
    shortname = "ap",
    category = "allsource",
    namespaced,
    status = "ArchivePolicyStatus",
    derive = "PartialEq",
    doc = "An ArchivePolicy moves events older than the hot window of an EventStore to object storage (Parquet + manifest) on a schedule, verifies the copy, then trims the store. Annotate with allsource.io/run-now=<new value> to run at once.",
    printcolumn(
        name = "EventStore",
        type_ = "string",
        json_path = ".spec.eventStoreRef.name",
        description = "EventStore archived"
    ),
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".spec.schedule",
        description = "Cron schedule"
    ),
    printcolumn(
        name = "Last Run",
        type_ = "date",
        json_path = ".status.lastRunTime",
        description = "Start of the last run"
    ),
    printcolumn(
        name = "Last Result",
        type_ = "string",
        json_path = ".status.lastResult",
        description = "Result of the last run"
    ),
    printcolumn(
        name = "Last Success",
        type_ = "date",
        json_path = ".status.lastSuccessTime",
        description = "End of the last successful run"
    ),
    printcolumn(
        name = "Events",
        type_ = "integer",
        json_path = ".status.eventsArchived",
        description = "Events archived by the last run"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Summary of the conditions"
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
        "rule": "!has(self.tiers) || (has(self.destination.s3) ? self.tiers.all(t, t.storageClass in ['STANDARD_IA', 'ONEZONE_IA', 'INTELLIGENT_TIERING', 'GLACIER_IR', 'GLACIER', 'DEEP_ARCHIVE']) : self.tiers.all(t, t.storageClass in ['NEARLINE', 'COLDLINE', 'ARCHIVE']))",
        "message": "tier storageClass must fit the destination: S3 STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER_IR, GLACIER, DEEP_ARCHIVE; GCS NEARLINE, COLDLINE, ARCHIVE"
    },
    {
        "rule": "!has(self.expireAfter) || int(self.expireAfter.replace('d', '')) * 24 > (self.hotRetention.endsWith('d') ? int(self.hotRetention.replace('d', '')) * 24 : int(self.hotRetention.replace('h', '')))",
        "message": "expireAfter must be longer than hotRetention"
    },
    {
        "rule": "!has(self.expireAfter) || !has(self.tiers) || size(self.tiers) == 0 || int(self.expireAfter.replace('d', '')) > int(self.tiers[size(self.tiers) - 1].after.replace('d', ''))",
        "message": "expireAfter must be longer than the last tier's after"
    }
]))]
pub struct ArchivePolicySpec {
    /// EventStore (same namespace) whose events are archived.
    pub event_store_ref: EventStoreRef,

    /// When runs start, a 5-field cron expression (minute hour day-of-month month day-of-week) or @hourly/@daily/@weekly/@monthly/@yearly.
    #[schemars(regex(
        pattern = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+\s+\S+\s+\S+\s+\S+\s+\S+)$"
    ))]
    #[schemars(length(max = 128))]
    pub schedule: String,

    /// IANA time zone of the schedule, e.g. Europe/Paris.
    #[serde(default = "default_time_zone")]
    #[schemars(regex(pattern = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"))]
    #[schemars(length(max = 64))]
    pub time_zone: String,

    /// When true no new runs start (a running one finishes).
    #[serde(default)]
    pub suspend: bool,

    /// Events younger than this stay in the store; older ones are archived then trimmed. Hours or days, e.g. 720h or 30d.
    #[schemars(regex(pattern = r"^[0-9]{1,6}(h|d)$"))]
    #[schemars(length(max = 8))]
    pub hot_retention: String,

    /// Which Tenants of the EventStore are archived (label selector over Tenant objects); all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_selector: Option<LabelSelector>,

    /// Where archives are written: exactly one of s3 or gcs.
    pub destination: Destination,

    /// Lifecycle transitions of archived objects to colder storage classes, in increasing order of age.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "(size(self) < 2 || int(self[1].after.replace('d', '')) > int(self[0].after.replace('d', ''))) && (size(self) < 3 || int(self[2].after.replace('d', '')) > int(self[1].after.replace('d', ''))) && (size(self) < 4 || int(self[3].after.replace('d', '')) > int(self[2].after.replace('d', '')))",
            "message": "tiers must be listed with strictly increasing after"
        }
    ]))]
    pub tiers: Vec<Tier>,

    /// Delete archived objects this many days after they were written, e.g. 3650d; kept forever when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,6}d$"))]
    #[schemars(length(max = 8))]
    pub expire_after: Option<String>,

    /// What to do when a run is due while the previous one still runs.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,

    /// How many finished successful runs (Jobs) to keep.
    #[serde(default = "default_successful_history")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_runs_history_limit: i32,

    /// How many finished failed runs (Jobs) to keep.
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_runs_history_limit: i32,

    /// ServiceAccount the archiver pods run as, for cloud identity without a credentials Secret
    /// (EKS IRSA for S3, GKE workload identity for GCS); the namespace's default when unset. The
    /// operator does not create it, and the pods get no Kubernetes API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub service_account_name: Option<String>,

    /// Where the archiver pods run and what they carry: node selector, tolerations, affinity,
    /// extra labels and annotations (the operator's own labels win on conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,

    /// CPU and memory requests and limits of the archiver container; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_time_zone() -> String {
    "UTC".to_string()
}

fn default_successful_history() -> i32 {
    3
}

fn default_failed_history() -> i32 {
    1
}

/// Where archives are written.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.s3) != has(self.gcs)", "message": "destination needs exactly one of s3 or gcs"}
]))]
pub struct Destination {
    /// Amazon S3 (or an S3-compatible store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// Google Cloud Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsDestination>,
}

/// An S3 bucket and prefix.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// Bucket name.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub bucket: String,
    /// Key prefix inside the bucket (no leading slash).
    #[serde(default)]
    pub prefix: String,
    /// AWS region of the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint override for S3-compatible stores; AWS when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Use path-style URLs (bucket in the path), needed by most S3-compatible stores.
    #[serde(default)]
    pub force_path_style: bool,
    /// Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; pod identity when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// A GCS bucket and prefix.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcsDestination {
    /// Bucket name.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"))]
    pub bucket: String,
    /// Object name prefix inside the bucket (no leading slash).
    #[serde(default)]
    pub prefix: String,
    /// Endpoint override (e.g. fake-gcs-server); Google when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Secret with an OAuth2 access token for the bucket under GCS_OAUTH_TOKEN (the operator and
    /// the archiver pod send it as is: keep it fresh, it is not refreshed); the metadata server
    /// (GKE workload identity of the operator's and of the archiver pod's ServiceAccount) when
    /// unset. Service-account key files are not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// One lifecycle transition of archived objects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    /// Age of an archived object (days since it was written, e.g. 30d) after which it moves to storageClass. Lifecycle rules count in days.
    #[schemars(regex(pattern = r"^[0-9]{1,6}d$"))]
    #[schemars(length(max = 8))]
    pub after: String,
    /// Target storage class (S3: STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER_IR, GLACIER, DEEP_ARCHIVE; GCS: NEARLINE, COLDLINE, ARCHIVE).
    #[schemars(length(max = 32))]
    pub storage_class: String,
}

/// What to do when a run is due while the previous one still runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Skip the new run.
    #[default]
    Forbid,
    /// Stop the running one and start the new run.
    Replace,
}

/// Observed state of an ArchivePolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchivePolicyStatus {
    /// The metadata.generation the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Start of the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<DateTime<Utc>>,
    /// End of the last successful run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<DateTime<Utc>>,
    /// When the next scheduled run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<DateTime<Utc>>,
    /// Result of the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<RunResult>,
    /// Events archived by the last run (every attempt of its Job, when the Job retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_archived: Option<i64>,
    /// Bytes archived by the last run (every attempt of its Job, when the Job retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_archived: Option<i64>,
    /// Per-tenant progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<TenantArchiveStatus>,
    /// CronJob that runs the archiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_job_name: Option<String>,
    /// Summary of the conditions for kubectl get: Ready, Degraded or Suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Error of the last run (or of the last failed setup step), empty after a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Job whose result the run fields (lastRunTime, lastResult, eventsArchived ...) report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job_name: Option<String>,
    /// Jobs of this policy that are running now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_jobs: Vec<String>,
    /// The allsource.io/run-now annotation value last acted on (a Job was created or the run refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_now_handled: Option<String>,
    /// Hash of the bucket lifecycle rules last applied for this policy (rules are re-applied only when it changes, and re-checked hourly for drift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_hash: Option<String>,
}

/// Result of an archive run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RunResult {
    /// Archived, verified and trimmed.
    Succeeded,
    /// Failed; nothing was trimmed that was not verified.
    Failed,
    /// Skipped (concurrency policy Forbid, or suspended).
    Skipped,
    /// Still running.
    Running,
}

/// Archive progress of one tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantArchiveStatus {
    /// Tenant id.
    pub tenant_id: String,
    /// Tenant position up to which events are archived and verified.
    #[serde(default)]
    pub watermark: i64,
    /// Last error for this tenant, empty when the last run succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
