//! Pure builders of the Kubernetes objects behind a selfHosted EventStore (StatefulSet, Services,
//! ConfigMap, PodDisruptionBudget, ServiceAccount) plus the naming, labelling and hashing rules
//! they share. Every function here is deterministic and side-effect free: builders must never
//! read the clock, the environment or the API server, so their output can be snapshot-tested and
//! hashed to skip no-op applies.

pub mod configmap;
pub mod gateway;
pub mod pdb;
pub mod secret;
pub mod service;
pub mod serviceaccount;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvVar, HTTPGetAction, Probe, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::EventStore;

/// Port of the store node's HTTP API.
pub const HTTP_PORT: i32 = 8080;
/// Port of the store node's Prometheus `/metrics` (not on the API port: its labels name
/// tenants). Exposed by the pods and the headless Service, never by the client Service.
pub const METRICS_PORT: i32 = 9090;

/// The container ports of a store-node or gateway container: `http` and `metrics`.
pub fn container_ports() -> Vec<k8s_openapi::api::core::v1::ContainerPort> {
    use k8s_openapi::api::core::v1::ContainerPort;
    [("http", HTTP_PORT), ("metrics", METRICS_PORT)]
        .into_iter()
        .map(|(name, port)| ContainerPort {
            name: Some(name.to_string()),
            container_port: port,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        })
        .collect()
}
/// Component label value of store-node pods.
pub const COMPONENT_STORE_NODE: &str = "store-node";
/// Mount path of the ConfigMap with node.json.
pub const CONFIG_MOUNT: &str = "/etc/allsource/config";
/// Mount path of the registry Secret with registry.json.
pub const REGISTRY_MOUNT: &str = "/etc/allsource/registry";
/// Label on a store's registry Secret (value [`REGISTRY_ROLE`]): the Tenant controller watches
/// only these Secrets, never the credentials of tenants.
pub const ROLE_LABEL: &str = "allsource.io/role";
/// Value of [`ROLE_LABEL`] on registry Secrets.
pub const REGISTRY_ROLE: &str = "registry";
/// Mount path of the data volume.
pub const DATA_MOUNT: &str = "/data";

/// Key of the CA certificate in the Secret of `spec.selfHosted.tlsSecretRef` (and in a tenant's
/// credentials Secret when its store serves HTTPS).
pub const TLS_CA_KEY: &str = "ca.crt";
/// Key of the certificate chain in that Secret (the node's `tls.crt`).
pub const TLS_CERT_KEY: &str = allsource_core::tls::CERT_FILE;
/// Key of the private key in that Secret (the node's `tls.key`).
pub const TLS_KEY_KEY: &str = allsource_core::tls::KEY_FILE;

/// The Secret of the store's HTTPS listener, if any: `spec.selfHosted.tlsSecretRef` of a
/// selfHosted store, `spec.gateway.tlsSecretRef` of a cloud store with its gateway enabled.
pub fn tls_secret_name(es: &EventStore) -> Option<&str> {
    match es.self_hosted() {
        Some(sh) => sh.tls_secret_ref.as_ref(),
        None => es
            .spec
            .gateway
            .as_ref()
            .filter(|g| g.enabled)
            .and_then(|g| g.tls_secret_ref.as_ref()),
    }
    .map(|r| r.name.as_str())
}

/// Mount path of the TLS Secret in store-node and gateway pods (`ALLSOURCE_TLS_DIR`).
pub const TLS_MOUNT: &str = "/etc/allsource/tls";

/// The volume of TLS Secret `secret`, its read-only mount at [`TLS_MOUNT`] and the
/// `ALLSOURCE_TLS_DIR` variable that makes `store-node serve` or `gateway` read `tls.crt` and
/// `tls.key` there and serve HTTPS only (see `--tls-dir`).
pub fn tls_volume(secret: &str) -> (Volume, VolumeMount, EnvVar) {
    (
        Volume {
            name: "tls".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_string()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: "tls".to_string(),
            mount_path: TLS_MOUNT.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        EnvVar {
            name: "ALLSOURCE_TLS_DIR".to_string(),
            value: Some(TLS_MOUNT.to_string()),
            ..EnvVar::default()
        },
    )
}

/// A kubelet httpGet probe of the named `http` port; `https` when the API is served over TLS
/// (the kubelet does not verify the certificate of a probe).
pub fn http_probe(path: &str, period: i32, failures: i32, https: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("http".to_string()),
            scheme: https.then(|| "HTTPS".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// URL scheme of the store's API (nodes or gateway): `https` when the store has a TLS Secret,
/// else `http`.
pub fn node_scheme(es: &EventStore) -> &'static str {
    if tls_secret_name(es).is_some() {
        "https"
    } else {
        "http"
    }
}

/// Name of the headless Service that gives each node a stable DNS name.
pub fn headless_service_name(es: &EventStore) -> String {
    format!("{}-nodes", es.name_any())
}

/// Name of the ConfigMap with the node configuration.
pub fn config_map_name(es: &EventStore) -> String {
    format!("{}-config", es.name_any())
}

/// Suffix of a store's registry Secret.
pub const REGISTRY_SUFFIX: &str = "-registry";

/// Name of the Secret with the tenant registry the store's nodes (or its gateway) read: token
/// digests, states (a `purging` entry erases a tenant) and node addresses, so it lives in a
/// Secret that only the operator writes, not in a ConfigMap.
pub fn registry_secret_name(es: &EventStore) -> String {
    format!("{}{REGISTRY_SUFFIX}", es.name_any())
}

/// Name of the pod (and node id) of ordinal `i`.
pub fn node_name(es: &EventStore, i: i32) -> String {
    format!("{}-{i}", es.name_any())
}

/// Labels that select the store-node pods of an EventStore (stable for the StatefulSet's life).
pub fn selector_labels(es: &EventStore) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "allsource".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), es.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            COMPONENT_STORE_NODE.to_string(),
        ),
    ])
}

/// The selector labels as a label-selector string (`status.selector`, scale subresource).
pub fn selector_string(es: &EventStore) -> String {
    selector_labels(es)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels of every object the operator creates for an EventStore.
pub fn common_labels(es: &EventStore) -> BTreeMap<String, String> {
    let mut labels = selector_labels(es);
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        "allsource-operator".to_string(),
    );
    labels.insert(
        "app.kubernetes.io/part-of".to_string(),
        "allsource".to_string(),
    );
    labels
}

/// Metadata of a child object: name, namespace, labels and a controller owner reference.
pub fn child_meta(es: &EventStore, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: es.namespace(),
        labels: Some(common_labels(es)),
        owner_references: es.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Hex SHA-256 of the JSON form of `value` (serde_json writes struct fields in declaration order
/// and BTreeMaps sorted, so equal values hash equally).
pub fn hash_of<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
pub(crate) mod fixtures {
    use crate::api::EventStore;
    use k8s_openapi::api::core::v1::PodSpec;

    /// Asserts that `pod` serves HTTPS from TLS Secret `secret`: the Secret's volume, its
    /// read-only mount at [`super::TLS_MOUNT`], `ALLSOURCE_TLS_DIR` naming it, HTTPS probes.
    pub fn assert_serves_tls(pod: &PodSpec, secret: &str) {
        let c = &pod.containers[0];
        let env = c.env.clone().unwrap_or_default();
        let dir = env.iter().find(|e| e.name == "ALLSOURCE_TLS_DIR");
        assert_eq!(dir.and_then(|d| d.value.as_deref()), Some(super::TLS_MOUNT));
        let mounts = c.volume_mounts.clone().unwrap_or_default();
        assert!(mounts
            .iter()
            .any(|m| m.mount_path == super::TLS_MOUNT && m.read_only == Some(true)));
        let volumes = pod.volumes.clone().unwrap_or_default();
        let vol = volumes
            .iter()
            .find(|v| v.name == "tls")
            .expect("tls volume");
        let name = vol.secret.as_ref().and_then(|s| s.secret_name.as_deref());
        assert_eq!(name, Some(secret));
        for p in [&c.readiness_probe, &c.liveness_probe] {
            let get = p.clone().and_then(|p| p.http_get).expect("httpGet probe");
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        }
    }

    /// A selfHosted EventStore as the apiserver would return it (defaults filled, uid set).
    pub fn selfhosted() -> EventStore {
        serde_yaml::from_str(
            r#"
apiVersion: allsource.io/v1alpha1
kind: EventStore
metadata:
  name: orders
  namespace: shop
  uid: 5b0c1f9e-0000-4000-8000-000000000001
  generation: 1
spec:
  backend: selfHosted
  selfHosted:
    replicas: 3
    image: ghcr.io/allsource/store-node:0.1.0
    storage:
      size: 20Gi
      storageClassName: fast
    durability: fsync
    limits:
      maxEventBytes: 65536
    resources:
      requests:
        cpu: 250m
        memory: 256Mi
    podTemplate:
      nodeSelector:
        disk: ssd
      tolerations:
        - key: dedicated
          operator: Equal
          value: events
          effect: NoSchedule
      annotations:
        example.com/team: payments
      labels:
        team: payments
"#,
        )
        .unwrap()
    }
}
