//! Pure builders of the archiver workloads of an ArchivePolicy: the CronJob (schedule, time zone,
//! suspend, concurrency policy, history limits) and the run-now Job, both running
//! `store-node archive` with the EventStore's image. Credentials reach the pod only as Secret
//! references: the destination's `credentialsSecretRef` through `envFrom` (S3: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`; GCS: `GCS_OAUTH_TOKEN`, else the metadata server / Workload Identity)
//! and the tenants' bearer tokens as a read-only volume (one file per tenant). The archiver writes
//! a compact JSON report to `/dev/termination-log`, from which the controller reads results, so
//! the Job needs no API permissions. This module is pure: it must never do I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvFromSource, KeyToPath, PodSecurityContext, PodSpec,
    PodTemplateSpec, SeccompProfile, Secret, SecretEnvSource, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};

use crate::api::archivepolicy::ConcurrencyPolicy;
use crate::api::ArchivePolicy;

/// Annotation that triggers a one-off run when its value changes.
pub const RUN_NOW_ANNOTATION: &str = "allsource.io/run-now";
/// Where the tenants' token files are mounted.
pub const TOKENS_DIR: &str = "/var/run/allsource/tokens";
/// Where `ca.crt` of the store's TLS Secret is mounted (HTTPS stores only).
pub const CA_DIR: &str = "/var/run/allsource/store-ca";

/// What the controller resolved before building (from the EventStore and the Tenants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiverInputs {
    /// The EventStore's store-node image.
    pub image: String,
    /// Its pull policy (the selfHosted store's `imagePullPolicy`; the kubelet's default when None).
    pub image_pull_policy: Option<String>,
    /// Where the archiver reads events (`http://<service>:<port>` of the store nodes).
    pub source: String,
    /// The EventStore's `metadata.uid`: the archive's manifests, files and lease are keyed by
    /// it, so stores sharing a destination, or a store deleted and created again under the same
    /// name, never touch each other's archive.
    pub store_uid: String,
    /// Tenant ids selected by the policy, sorted.
    pub tenants: Vec<String>,
    /// Secret holding one key per tenant id with its bearer token.
    pub tokens_secret: String,
    /// The store's TLS Secret when its nodes serve HTTPS: its `ca.crt` is mounted and passed as
    /// `--ca-file`, so the archiver verifies the https `source` with it.
    pub ca_secret: Option<String>,
}

/// Name of the CronJob of a policy.
pub fn cron_job_name(p: &ArchivePolicy) -> String {
    format!("{}-archive", p.name_any())
}

fn labels(p: &ArchivePolicy) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "allsource".into()),
        (
            "app.kubernetes.io/instance".into(),
            p.spec.event_store_ref.name.clone(),
        ),
        ("app.kubernetes.io/component".into(), "archiver".into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "allsource-operator".into(),
        ),
        ("app.kubernetes.io/part-of".into(), "allsource".into()),
        ("allsource.io/archive-policy".into(), p.name_any()),
    ])
}

fn meta(p: &ArchivePolicy, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: p.namespace(),
        labels: Some(labels(p)),
        owner_references: p.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The destination URL (`s3://bucket/prefix` or `gs://bucket/prefix`).
pub fn destination_url(p: &ArchivePolicy) -> Option<String> {
    let join = |scheme: &str, bucket: &str, prefix: &str| {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("{scheme}://{bucket}")
        } else {
            format!("{scheme}://{bucket}/{prefix}")
        }
    };
    let d = &p.spec.destination;
    match (&d.s3, &d.gcs) {
        (Some(s3), None) => Some(join("s3", &s3.bucket, &s3.prefix)),
        (None, Some(g)) => Some(join("gs", &g.bucket, &g.prefix)),
        _ => None,
    }
}

/// Command-line arguments of `store-node archive` for a policy.
pub fn archiver_args(p: &ArchivePolicy, inp: &ArchiverInputs) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "archive".into(),
        "--source".into(),
        inp.source.clone(),
        "--tenant".into(),
        inp.tenants.join(","),
        "--destination".into(),
        destination_url(p).unwrap_or_default(),
        "--store-uid".into(),
        inp.store_uid.clone(),
        "--hot-retention".into(),
        p.spec.hot_retention.clone(),
        "--tokens-dir".into(),
        TOKENS_DIR.into(),
        "--report-file".into(),
        "/dev/termination-log".into(),
    ];
    if inp.ca_secret.is_some() {
        args.extend(["--ca-file".into(), format!("{CA_DIR}/ca.crt")]);
    }
    let d = &p.spec.destination;
    if let Some(s3) = &d.s3 {
        if let Some(ep) = &s3.endpoint {
            args.extend(["--endpoint".into(), ep.clone()]);
        }
        if let Some(r) = &s3.region {
            args.extend(["--region".into(), r.clone()]);
        }
        if s3.force_path_style {
            args.push("--force-path-style".into());
        }
    }
    if let Some(g) = &d.gcs {
        if let Some(ep) = &g.endpoint {
            args.extend(["--endpoint".into(), ep.clone()]);
        }
        let auth = if g.credentials_secret_ref.is_some() {
            "token"
        } else {
            "metadata"
        };
        args.extend(["--gcs-auth".into(), auth.into()]);
    }
    args
}

fn pod_template(p: &ArchivePolicy, inp: &ArchiverInputs) -> PodTemplateSpec {
    let d = &p.spec.destination;
    let creds =
        d.s3.as_ref()
            .and_then(|s| s.credentials_secret_ref.as_ref())
            .or_else(|| {
                d.gcs
                    .as_ref()
                    .and_then(|g| g.credentials_secret_ref.as_ref())
            });
    let mut mounts = vec![VolumeMount {
        name: "tenant-tokens".into(),
        mount_path: TOKENS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "tenant-tokens".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(inp.tokens_secret.clone()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if let Some(ca) = &inp.ca_secret {
        mounts.push(VolumeMount {
            name: "store-ca".into(),
            mount_path: CA_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        // Only the CA: the archiver has no use for the nodes' private key.
        volumes.push(Volume {
            name: "store-ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.clone()),
                items: Some(vec![KeyToPath {
                    key: "ca.crt".into(),
                    path: "ca.crt".into(),
                    ..KeyToPath::default()
                }]),
                default_mode: Some(0o444),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let container = Container {
        name: "archiver".into(),
        image: Some(inp.image.clone()),
        image_pull_policy: inp.image_pull_policy.clone(),
        args: Some(archiver_args(p, inp)),
        resources: p.spec.resources.clone(),
        env_from: creds.map(|s| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: s.name.clone(),
                    optional: Some(false),
                }),
                ..EnvFromSource::default()
            }]
        }),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("File".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let overrides = p.spec.pod_template.clone().unwrap_or_default();
    let mut pod_labels = overrides.labels;
    pod_labels.extend(labels(p));
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: (!overrides.annotations.is_empty()).then_some(overrides.annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            node_selector: (!overrides.node_selector.is_empty()).then_some(overrides.node_selector),
            tolerations: (!overrides.tolerations.is_empty()).then_some(overrides.tolerations),
            affinity: overrides.affinity,
            restart_policy: Some("Never".into()),
            service_account_name: p.spec.service_account_name.clone(),
            automount_service_account_token: Some(false),
            containers: vec![container],
            volumes: Some(volumes),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65_532),
                // The token files are mode 0440: readable through the group the kubelet gives
                // the Secret volumes, never world-readable.
                fs_group: Some(65_532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
    }
}

fn job_spec(p: &ArchivePolicy, inp: &ArchiverInputs) -> JobSpec {
    JobSpec {
        // Reruns are safe (the archiver is idempotent), but a broken destination should not loop.
        backoff_limit: Some(2),
        ttl_seconds_after_finished: Some(7 * 24 * 3600),
        template: pod_template(p, inp),
        ..JobSpec::default()
    }
}

/// The CronJob of a policy.
pub fn cron_job(p: &ArchivePolicy, inp: &ArchiverInputs) -> CronJob {
    let s = &p.spec;
    CronJob {
        metadata: meta(p, cron_job_name(p)),
        spec: Some(CronJobSpec {
            schedule: s.schedule.clone(),
            time_zone: Some(s.time_zone.clone()),
            suspend: Some(s.suspend),
            concurrency_policy: Some(
                match s.concurrency_policy {
                    ConcurrencyPolicy::Forbid => "Forbid",
                    ConcurrencyPolicy::Replace => "Replace",
                }
                .into(),
            ),
            successful_jobs_history_limit: Some(s.successful_runs_history_limit),
            failed_jobs_history_limit: Some(s.failed_runs_history_limit),
            starting_deadline_seconds: Some(3600),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(p)),
                    ..ObjectMeta::default()
                }),
                spec: Some(job_spec(p, inp)),
            },
        }),
        status: None,
    }
}

/// Name of the Secret holding the selected tenants' bearer tokens (one key per tenant id).
pub fn tokens_secret_name(p: &ArchivePolicy) -> String {
    format!("{}-archive-tokens", p.name_any())
}

/// The tokens Secret of a policy, mounted read-only into the archiver pod at [`TOKENS_DIR`].
pub fn tokens_secret(p: &ArchivePolicy, tokens: &BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: meta(p, tokens_secret_name(p)),
        type_: Some("Opaque".into()),
        data: Some(
            tokens
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The one-off Job for a run-now annotation value (the name is derived from it, so applying the
/// same value twice is a no-op).
pub fn run_now_job(p: &ArchivePolicy, inp: &ArchiverInputs, value: &str) -> Job {
    let digest: u32 = value.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    });
    Job {
        metadata: meta(p, format!("{}-now-{digest:08x}", cron_job_name(p))),
        spec: Some(job_spec(p, inp)),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::archivepolicy::{ArchivePolicySpec, Destination, GcsDestination};

    fn policy() -> ArchivePolicy {
        let spec: ArchivePolicySpec = serde_json::from_value(serde_json::json!({
            "eventStoreRef": {"name": "orders"},
            "schedule": "30 2 * * *",
            "timeZone": "Europe/Berlin",
            "hotRetention": "720h",
            "destination": {"s3": {"bucket": "acme-archive", "prefix": "/es/orders/",
                "endpoint": "http://minio:9000", "forcePathStyle": true,
                "credentialsSecretRef": {"name": "archive-creds"}}},
        }))
        .unwrap();
        let mut p = ArchivePolicy::new("nightly", spec);
        p.metadata.namespace = Some("team-a".into());
        p.metadata.uid = Some("uid-1".into());
        p
    }

    fn inputs() -> ArchiverInputs {
        ArchiverInputs {
            image: "ghcr.io/allsource/store-node:0.1.0".into(),
            image_pull_policy: Some("IfNotPresent".into()),
            source: "http://orders:8080".into(),
            store_uid: "0b6f7c1e-3c9a-4d0e-9d55-6c3a2f1e9b00".into(),
            tenants: vec!["acme".into(), "globex".into()],
            tokens_secret: "nightly-archive-tokens".into(),
            ca_secret: None,
        }
    }

    #[test]
    fn cron_job_carries_schedule_zone_and_policy() {
        let cj = cron_job(&policy(), &inputs());
        assert_eq!(cj.metadata.name.as_deref(), Some("nightly-archive"));
        assert_eq!(cj.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(
            cj.metadata.owner_references.as_ref().unwrap()[0].kind,
            "ArchivePolicy"
        );
        let s = cj.spec.unwrap();
        assert_eq!(s.schedule, "30 2 * * *");
        assert_eq!(s.time_zone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(s.suspend, Some(false));
        assert_eq!(s.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!(s.successful_jobs_history_limit, Some(3));
        assert_eq!(s.failed_jobs_history_limit, Some(1));
        let pod = s.job_template.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.args.clone().unwrap().join(" "),
            "archive --source http://orders:8080 --tenant acme,globex \
             --destination s3://acme-archive/es/orders \
             --store-uid 0b6f7c1e-3c9a-4d0e-9d55-6c3a2f1e9b00 --hot-retention 720h \
             --tokens-dir /var/run/allsource/tokens --report-file /dev/termination-log \
             --endpoint http://minio:9000 --force-path-style"
        );
        assert_eq!(
            c.env_from.as_ref().unwrap()[0]
                .secret_ref
                .as_ref()
                .unwrap()
                .name,
            "archive-creds"
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        // The non-root archiver reads its 0440 token files through the volume's group.
        let sc = pod.security_context.unwrap();
        assert_eq!((sc.run_as_user, sc.fs_group), (Some(65_532), Some(65_532)));
        let tokens = pod.volumes.unwrap()[0].secret.clone().unwrap();
        assert_eq!(tokens.default_mode, Some(0o440));
    }

    #[test]
    fn suspend_and_gcs_propagate() {
        let mut p = policy();
        p.spec.suspend = true;
        p.spec.concurrency_policy = ConcurrencyPolicy::Replace;
        p.spec.destination = Destination {
            s3: None,
            gcs: Some(GcsDestination {
                bucket: "acme-gcs".into(),
                prefix: String::new(),
                endpoint: None,
                credentials_secret_ref: None,
            }),
        };
        let s = cron_job(&p, &inputs()).spec.unwrap();
        assert_eq!(s.suspend, Some(true));
        assert_eq!(s.concurrency_policy.as_deref(), Some("Replace"));
        let args = archiver_args(&p, &inputs()).join(" ");
        assert!(args.contains("--destination gs://acme-gcs "), "{args}");
        assert!(args.ends_with("--gcs-auth metadata"), "{args}");
    }

    /// `podTemplate` and `resources` reach the archiver pod; the operator's labels win.
    #[test]
    fn pod_template_and_resources_reach_the_archiver_pod() {
        let mut p = policy();
        p.spec.pod_template = Some(
            serde_json::from_value(serde_json::json!({
                "nodeSelector": {"pool": "batch"},
                "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
                "labels": {"team": "payments", "app.kubernetes.io/name": "hijack"},
                "annotations": {"cost-center": "42"},
            }))
            .unwrap(),
        );
        p.spec.resources = Some(
            serde_json::from_value(serde_json::json!({
                "requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"},
            }))
            .unwrap(),
        );
        let t = cron_job(&p, &inputs())
            .spec
            .unwrap()
            .job_template
            .spec
            .unwrap()
            .template;
        let mut with_sa = p.clone();
        with_sa.spec.service_account_name = Some("archiver-irsa".into());
        let sa_pod = cron_job(&with_sa, &inputs())
            .spec
            .unwrap()
            .job_template
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(
            sa_pod.service_account_name.as_deref(),
            Some("archiver-irsa")
        );
        assert_eq!(sa_pod.automount_service_account_token, Some(false));
        let meta = t.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["team"], "payments");
        assert_eq!(labels["app.kubernetes.io/name"], "allsource");
        assert_eq!(meta.annotations.unwrap()["cost-center"], "42");
        let pod = t.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["pool"], "batch");
        assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("batch"));
        let c = &pod.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let r = c.resources.clone().unwrap();
        assert_eq!(r.limits.unwrap()["memory"].0, "512Mi");
        assert_eq!(pod.service_account_name, None);
        // Unset: nothing added.
        let plain = cron_job(&policy(), &inputs())
            .spec
            .unwrap()
            .job_template
            .spec
            .unwrap();
        let pod = plain.template.spec.unwrap();
        assert!(pod.node_selector.is_none() && pod.tolerations.is_none());
        assert!(pod.containers[0].resources.is_none());
    }

    /// An HTTPS store: the archiver gets only `ca.crt` of the store's TLS Secret, mounted, and
    /// `--ca-file` pointing at it.
    #[test]
    fn https_source_gets_the_stores_ca() {
        let mut inp = inputs();
        inp.source = "https://orders.team-a.svc:8080".into();
        inp.ca_secret = Some("orders-tls".into());
        let args = archiver_args(&policy(), &inp).join(" ");
        assert!(
            args.contains("--source https://orders.team-a.svc:8080 ")
                && args.contains("--ca-file /var/run/allsource/store-ca/ca.crt"),
            "{args}"
        );
        let pod = cron_job(&policy(), &inp)
            .spec
            .unwrap()
            .job_template
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let vol = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "store-ca")
            .unwrap()
            .secret
            .unwrap();
        assert_eq!(vol.secret_name.as_deref(), Some("orders-tls"));
        let items = vol.items.unwrap();
        assert_eq!(items.len(), 1, "only the CA, never tls.key");
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("ca.crt", "ca.crt")
        );
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m.name == "store-ca" && m.mount_path == CA_DIR));
        // A plain store: no CA flag, no CA volume.
        let plain = archiver_args(&policy(), &inputs()).join(" ");
        assert!(!plain.contains("--ca-file"), "{plain}");
    }

    #[test]
    fn run_now_job_name_is_stable_per_value() {
        let a = run_now_job(&policy(), &inputs(), "2026-11-24T14:00");
        let b = run_now_job(&policy(), &inputs(), "2026-11-24T14:00");
        let c = run_now_job(&policy(), &inputs(), "again");
        assert_eq!(a.metadata.name, b.metadata.name);
        assert_ne!(a.metadata.name, c.metadata.name);
        assert!(a.metadata.name.unwrap().starts_with("nightly-archive-now-"));
    }
}
