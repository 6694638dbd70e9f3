//! Builds the StatefulSet of store nodes for a selfHosted EventStore. Nodes own disjoint tenants
//! and need no quorum, so pods start in parallel; updates roll one pod at a time. The pod runs
//! non-root with a read-only root filesystem; data lives on a per-node PVC. Pure: no I/O.

use std::collections::BTreeMap;

use super::configmap::REGISTRY_KEY;
use allsource_core::nodeconfig::{NODE_CONFIG_ENV, NODE_CONFIG_FILE};
use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, SeccompProfile, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;

use super::{
    child_meta, common_labels, config_map_name, container_ports, headless_service_name, http_probe,
    registry_secret_name, selector_labels, CONFIG_MOUNT, DATA_MOUNT, HTTP_PORT, METRICS_PORT,
    REGISTRY_MOUNT,
};
use crate::api::eventstore::SelfHostedSpec;
use crate::api::{DeletionPolicy, EventStore};

/// Name of the container running the store node.
pub const CONTAINER: &str = "store-node";
/// Annotation on the pod template with the hash of node.json: a change rolls the nodes.
pub const NODE_CONFIG_HASH_ANNOTATION: &str = "allsource.io/node-config-hash";
const RUN_AS: i64 = 65532;

/// Arguments of the store-node container.
pub fn args() -> Vec<String> {
    [
        "serve",
        "--data-dir",
        DATA_MOUNT,
        "--registry",
        &format!("{REGISTRY_MOUNT}/{REGISTRY_KEY}"),
        "--listen",
        &format!("0.0.0.0:{HTTP_PORT}"),
        "--metrics-addr",
        &format!("0.0.0.0:{METRICS_PORT}"),
        // The claim is the node's alone, so a share of it is kept free as well as the
        // absolute reserve (a node on a shared disk keeps only the absolute one).
        "--disk-reserve-percent",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn container(sh: &SelfHostedSpec) -> Container {
    let mut mounts = vec![
        VolumeMount {
            name: "data".to_string(),
            mount_path: DATA_MOUNT.to_string(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "config".to_string(),
            mount_path: CONFIG_MOUNT.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "registry".to_string(),
            mount_path: REGISTRY_MOUNT.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".to_string(),
            mount_path: "/tmp".to_string(),
            ..VolumeMount::default()
        },
    ];
    let mut env = vec![
        env_from_field("POD_NAME", "metadata.name"),
        env_from_field("POD_NAMESPACE", "metadata.namespace"),
        // Durability and limits reach the node only through node.json (no flag duplicates them,
        // so nothing can override the file behind the operator's back).
        EnvVar {
            name: NODE_CONFIG_ENV.to_string(),
            value: Some(format!("{CONFIG_MOUNT}/{NODE_CONFIG_FILE}")),
            ..EnvVar::default()
        },
    ];
    let tls = sh
        .tls_secret_ref
        .as_ref()
        .map(|r| super::tls_volume(&r.name));
    if let Some((_, mount, var)) = &tls {
        mounts.push(mount.clone());
        env.push(var.clone());
    }
    let tls = tls.is_some();
    Container {
        name: CONTAINER.to_string(),
        image: Some(sh.image.clone()),
        image_pull_policy: Some(sh.image_pull_policy.as_str().to_string()),
        args: Some(args()),
        env: Some(env),
        ports: Some(container_ports()),
        readiness_probe: Some(http_probe("/readyz", 5, 3, tls)),
        liveness_probe: Some(http_probe("/healthz", 10, 6, tls)),
        resources: sh.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn volumes(es: &EventStore, sh: &SelfHostedSpec) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: "config".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(es),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "registry".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(registry_secret_name(es)),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    if let Some(tls) = &sh.tls_secret_ref {
        volumes.push(super::tls_volume(&tls.name).0);
    }
    volumes
}

fn claim_template(es: &EventStore, sh: &SelfHostedSpec) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".to_string()),
            labels: Some(selector_labels(es)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: sh.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(sh.storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The StatefulSet of store nodes with `replicas` pods. `replicas` may differ from the spec when a
/// scale-down is refused; `node_config_hash` rolls the pods when node.json changes.
pub fn build(
    es: &EventStore,
    sh: &SelfHostedSpec,
    replicas: i32,
    node_config_hash: &str,
) -> StatefulSet {
    let overrides = sh.pod_template.clone().unwrap_or_default();
    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(common_labels(es));
    let mut pod_annotations = overrides.annotations.clone();
    pod_annotations.insert(
        NODE_CONFIG_HASH_ANNOTATION.to_string(),
        node_config_hash.to_string(),
    );
    let delete_volumes =
        es.spec.deletion_policy == DeletionPolicy::Delete && !sh.storage.keep_on_delete;
    StatefulSet {
        metadata: child_meta(es, es.name_any()),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(headless_service_name(es)),
            pod_management_policy: Some("Parallel".to_string()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(es)),
                ..LabelSelector::default()
            },
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    ..RollingUpdateStatefulSetStrategy::default()
                }),
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(
                        if delete_volumes { "Delete" } else { "Retain" }.to_string(),
                    ),
                    // Scale-down keeps volumes: a node that comes back finds its data.
                    when_scaled: Some("Retain".to_string()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(es.name_any()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    containers: vec![container(sh)],
                    volumes: Some(volumes(es, sh)),
                    node_selector: (!overrides.node_selector.is_empty())
                        .then(|| overrides.node_selector.clone()),
                    tolerations: (!overrides.tolerations.is_empty())
                        .then(|| overrides.tolerations.clone()),
                    affinity: overrides.affinity.clone(),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![claim_template(es, sh)]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot() {
        let es = super::super::fixtures::selfhosted();
        let sh = es.spec.self_hosted.clone().unwrap();
        insta::assert_yaml_snapshot!(build(&es, &sh, 3, "abc123"));
    }

    #[test]
    fn operator_labels_win_over_user_labels() {
        let mut es = super::super::fixtures::selfhosted();
        let sh = es.spec.self_hosted.as_mut().unwrap();
        sh.pod_template
            .as_mut()
            .unwrap()
            .labels
            .insert("app.kubernetes.io/instance".into(), "hijack".into());
        let sh = sh.clone();
        let sts = build(&es, &sh, 3, "h");
        let labels = sts.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/instance"], "orders");
        assert_eq!(labels["team"], "payments");
    }

    /// With a TLS Secret the node gets the Secret at ALLSOURCE_TLS_DIR and the kubelet probes it
    /// over HTTPS (an HTTP probe of a TLS-only listener fails, so the pod would never be Ready).
    #[test]
    fn tls_secret_mounts_and_probes_over_https() {
        let mut es = super::super::fixtures::selfhosted();
        let sh = es.spec.self_hosted.as_mut().unwrap();
        sh.tls_secret_ref = Some(crate::api::SecretRef {
            name: "orders-tls".into(),
        });
        let sh = sh.clone();
        let sts = build(&es, &sh, 1, "h");
        let pod = sts.spec.unwrap().template.spec.unwrap();
        super::super::fixtures::assert_serves_tls(&pod, "orders-tls");
        // Without TLS the probes keep the default scheme (HTTP) and nothing is mounted.
        let plain = super::super::fixtures::selfhosted();
        let sts = build(&plain, plain.spec.self_hosted.as_ref().unwrap(), 1, "h");
        let c = sts.spec.unwrap().template.spec.unwrap().containers[0].clone();
        assert_eq!(c.readiness_probe.unwrap().http_get.unwrap().scheme, None);
        assert!(!c.env.unwrap().iter().any(|e| e.name == "ALLSOURCE_TLS_DIR"));
    }
}
