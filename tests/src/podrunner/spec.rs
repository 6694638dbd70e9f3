//! Pure translation of a Pod into a local process: which files to materialize, which directories
//! stand in for volumes, and the args and env with container paths rewritten into the pod's
//! directory and the container port moved to a loopback port. No I/O.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

/// What to run for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Arguments (after the binary).
    pub args: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Volume name -> local directory.
    pub dirs: BTreeMap<String, PathBuf>,
    /// ConfigMap volumes: local directory -> ConfigMap name.
    pub config_maps: BTreeMap<PathBuf, String>,
    /// Secret volumes: local directory -> Secret name.
    pub secrets: BTreeMap<PathBuf, String>,
    /// Container port moved to `port`.
    pub container_port: i32,
}

/// Builds the process spec of the first container of `pod`, rooted at `pod_dir` (per pod) and
/// `claims_dir` (PVC data survives pod re-creation), listening on `127.0.0.1:port`.
pub fn translate(pod: &Pod, pod_dir: &Path, claims_dir: &Path, port: u16) -> Option<ProcessSpec> {
    let spec = pod.spec.as_ref()?;
    let c = spec.containers.first()?;
    let mut dirs = BTreeMap::new();
    let mut config_maps = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for v in spec.volumes.clone().unwrap_or_default() {
        let dir = if let Some(pvc) = &v.persistent_volume_claim {
            claims_dir.join(&pvc.claim_name)
        } else {
            pod_dir.join("volumes").join(&v.name)
        };
        if let Some(cm) = &v.config_map {
            config_maps.insert(dir.clone(), cm.name.clone());
        }
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(dir.clone(), name);
        }
        dirs.insert(v.name.clone(), dir);
    }
    // StatefulSet claim templates show up as volumes named after the template with a PVC source.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in c.volume_mounts.clone().unwrap_or_default() {
        let dir = dirs
            .entry(m.name.clone())
            .or_insert_with(|| pod_dir.join("volumes").join(&m.name));
        mounts.push((m.mount_path.clone(), dir.clone()));
    }
    // Longest mount path first so /data/x is not rewritten by /data.
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let container_port = c
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .map(|p| p.container_port)
        .unwrap_or(8080);
    // The other container ports (the metrics listener) get a free port of their own: pods
    // share the host's loopback here.
    let other_ports: Vec<i32> = c
        .ports
        .iter()
        .flatten()
        .skip(1)
        .map(|p| p.container_port)
        .collect();
    let rewrite = |s: &str| -> String {
        if s == format!("0.0.0.0:{container_port}") || s == format!(":{container_port}") {
            return format!("127.0.0.1:{port}");
        }
        if other_ports
            .iter()
            .any(|p| s == format!("0.0.0.0:{p}") || s == format!(":{p}"))
        {
            return "127.0.0.1:0".to_string();
        }
        for (path, dir) in &mounts {
            if let Some(rest) = s.strip_prefix(path.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return format!("{}{rest}", dir.display());
                }
            }
        }
        s.to_string()
    };
    let args = c
        .args
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|a| rewrite(a))
        .collect();
    let meta = &pod.metadata;
    let mut env = BTreeMap::new();
    for e in c.env.clone().unwrap_or_default() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => rewrite(v),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => meta.name.clone().unwrap_or_default(),
                Some("metadata.namespace") => meta.namespace.clone().unwrap_or_default(),
                Some("status.podIP") => "127.0.0.1".to_string(),
                _ => continue,
            },
            _ => String::new(),
        };
        env.insert(e.name.clone(), value);
    }
    Some(ProcessSpec {
        args,
        env,
        dirs,
        config_maps,
        secrets,
        container_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_mounts_ports_and_downward_env() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "orders-0", "namespace": "shop"},
            "spec": {
                "containers": [{
                    "name": "store-node",
                    "args": ["serve", "--data-dir", "/data", "--registry", "/etc/allsource/registry/registry.json", "--listen", "0.0.0.0:8080"],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "CFG", "value": "/etc/allsource/config/node.json"}
                    ],
                    "ports": [{"containerPort": 8080}],
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/data"},
                        {"name": "config", "mountPath": "/etc/allsource/config"},
                        {"name": "registry", "mountPath": "/etc/allsource/registry"}
                    ]
                }],
                "volumes": [
                    {"name": "config", "configMap": {"name": "orders-config"}},
                    {"name": "registry", "secret": {"secretName": "orders-registry"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-orders-0"}}
                ]
            }
        }))
        .unwrap();
        let p = translate(
            &pod,
            Path::new("/s/pods/shop/orders-0"),
            Path::new("/s/claims/shop"),
            40001,
        )
        .unwrap();
        assert_eq!(
            p.args,
            [
                "serve",
                "--data-dir",
                "/s/claims/shop/data-orders-0",
                "--registry",
                "/s/pods/shop/orders-0/volumes/registry/registry.json",
                "--listen",
                "127.0.0.1:40001"
            ]
        );
        assert_eq!(p.env["POD_NAME"], "orders-0");
        assert_eq!(
            p.env["CFG"],
            "/s/pods/shop/orders-0/volumes/config/node.json"
        );
        assert_eq!(
            p.config_maps[Path::new("/s/pods/shop/orders-0/volumes/config")],
            "orders-config"
        );
        assert_eq!(
            p.secrets[Path::new("/s/pods/shop/orders-0/volumes/registry")],
            "orders-registry"
        );
    }
}
