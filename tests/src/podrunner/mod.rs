//! The pod runner plays the kubelet for store-node pods on one Node it registers itself
//! (`allsource-runner`, label `allsource.io/pod-runner=true`, not managed by kwok). The real
//! scheduler binds pods that select that label; the runner then starts the store-node binary
//! for each pod (ConfigMap volumes written as files and refreshed, PVCs as per-claim
//! directories, args and env rewritten, a loopback port per pod), reports Running and readiness
//! (polled from `/readyz`) in the pod status, publishes the port in the pod annotation
//! `allsource.io/runner-port`, and kills the process and removes the pod when it is deleted.
//! It is a test tool: it must never run anything but the binary it was given.

pub mod spec;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::process::{Child, Command};

/// Label of the runner's Node; EventStores select it with `podTemplate.nodeSelector`.
pub const NODE_LABEL: &str = "allsource.io/pod-runner";
/// The toleration a pod needs to be scheduled on a runner's Node (which carries the taint
/// `allsource.io/pod-runner=true:NoSchedule`), as JSON for a pod template.
pub fn toleration() -> serde_json::Value {
    json!({"key": NODE_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"})
}

/// Pod annotation with the loopback port of the pod's HTTP listener.
pub const PORT_ANNOTATION: &str = "allsource.io/runner-port";

/// Settings of the runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Node name to register.
    pub node_name: String,
    /// The binary every pod runs.
    pub binary: PathBuf,
    /// Only pods whose image contains this string are run.
    pub image_match: String,
    /// Where pod directories, claims and logs live.
    pub state_dir: PathBuf,
}

struct Running {
    child: Child,
    port: u16,
    spec: spec::ProcessSpec,
    ready: Option<bool>,
    restarts: i32,
    started: String,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Registers (or refreshes) the runner's Node with a Ready condition.
pub async fn heartbeat(client: &Client, name: &str) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    if api.get_opt(name).await?.is_none() {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {NODE_LABEL: "true", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            // Only pods that tolerate it land here: the runner plays the kubelet for one test.
            "spec": {"taints": [{"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}]},
        }))
        .map_err(kube::Error::SerdeError)?;
        api.create(&PostParams::default(), &node).await?;
    }
    let t = now();
    let status = json!({"status": {
        "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110"},
        "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"},
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "RunnerReady", "message": "pod runner is up",
                        "lastHeartbeatTime": t, "lastTransitionTime": t}],
        "nodeInfo": {"kubeletVersion": "v1.34.4-runner", "architecture": "amd64", "operatingSystem": "linux",
                     "containerRuntimeVersion": "process://runner", "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                     "machineID": "", "systemUUID": "", "bootID": ""}
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn materialize(
    client: &Client,
    ns: &str,
    spec: &spec::ProcessSpec,
) -> Result<(), Box<dyn std::error::Error>> {
    for dir in spec.dirs.values() {
        std::fs::create_dir_all(dir)?;
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for (dir, name) in &spec.config_maps {
        if let Some(cm) = api.get_opt(name).await? {
            for (k, v) in cm.data.unwrap_or_default() {
                write_if_changed(dir, &k, v.as_bytes())?;
            }
        }
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for (dir, name) in &spec.secrets {
        if let Some(s) = api.get_opt(name).await? {
            for (k, v) in s.data.unwrap_or_default() {
                write_if_changed(dir, &k, &v.0)?;
            }
        }
    }
    Ok(())
}

/// Writes `dir/name` when its content differs: write then rename, like the kubelet's atomic
/// ConfigMap and Secret volume updates.
fn write_if_changed(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let path = dir.join(name);
    if std::fs::read(&path).ok().as_deref() != Some(bytes) {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

fn pod_status(r: &Running, image: &str, container: &str) -> serde_json::Value {
    let ready = r.ready.unwrap_or(false);
    let s = if ready { "True" } else { "False" };
    json!({"status": {
        "phase": "Running",
        "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": r.started,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": s},
            {"type": "Ready", "status": s}
        ],
        "containerStatuses": [{
            "name": container, "image": image, "imageID": format!("runner://{image}"),
            "containerID": format!("runner://{}", r.child.id().unwrap_or(0)),
            "ready": ready, "started": true, "restartCount": r.restarts,
            "state": {"running": {"startedAt": r.started}}
        }]
    }})
}

/// Starts the process of a pod not yet running (None: not a pod this runner can run).
async fn start_pod(
    client: &Client,
    cfg: &RunnerConfig,
    pod: &Pod,
    api: &Api<Pod>,
) -> Result<Option<Running>, Box<dyn std::error::Error>> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let pod_dir = cfg.state_dir.join("pods").join(&ns).join(&name);
    let claims = cfg.state_dir.join("claims").join(&ns);
    let port = free_port()?;
    let Some(spec) = spec::translate(pod, &pod_dir, &claims, port) else {
        return Ok(None);
    };
    materialize(client, &ns, &spec).await?;
    let child = spawn(cfg, &spec, &pod_dir, false)?;
    eprintln!("pod-runner: started {ns}/{name} on 127.0.0.1:{port}");
    let patch = json!({"metadata": {"annotations": {PORT_ANNOTATION: port.to_string()}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(Some(Running {
        child,
        port,
        spec,
        ready: None,
        restarts: 0,
        started: now(),
    }))
}

/// Spawns the binary for `spec`, logging to `<pod_dir>/log` (appended to on a restart).
fn spawn(
    cfg: &RunnerConfig,
    spec: &spec::ProcessSpec,
    pod_dir: &std::path::Path,
    append: bool,
) -> std::io::Result<Child> {
    std::fs::create_dir_all(pod_dir)?;
    let log = std::fs::OpenOptions::new()
        .append(append)
        .write(true)
        .truncate(!append)
        .create(true)
        .open(pod_dir.join("log"))?;
    Command::new(&cfg.binary)
        .args(&spec.args)
        .envs(&spec.env)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
}

/// Runs the loop forever (one pass per second).
pub async fn run(client: Client, cfg: RunnerConfig) -> Result<(), Box<dyn std::error::Error>> {
    let pods: Api<Pod> = Api::all(client.clone());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut running: BTreeMap<(String, String), Running> = BTreeMap::new();
    let mut tick = 0u64;
    loop {
        if tick.is_multiple_of(10) {
            if let Err(e) = heartbeat(&client, &cfg.node_name).await {
                eprintln!("pod-runner: node heartbeat failed: {e}");
            }
        }
        tick += 1;
        let list = match pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", cfg.node_name)))
            .await
        {
            Ok(l) => l.items,
            Err(e) => {
                eprintln!("pod-runner: list pods: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut seen = std::collections::BTreeSet::new();
        for pod in &list {
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let key = (ns.clone(), name.clone());
            let Some(container) = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .cloned()
            else {
                continue;
            };
            let image = container.image.clone().unwrap_or_default();
            if !image.contains(&cfg.image_match) {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if pod.metadata.deletion_timestamp.is_some() {
                if let Some(mut r) = running.remove(&key) {
                    let _ = r.child.start_kill();
                    let _ = r.child.wait().await;
                }
                // No kubelet: finish the deletion ourselves once the process is gone.
                let _ = api
                    .delete(
                        &name,
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..DeleteParams::default()
                        },
                    )
                    .await;
                continue;
            }
            seen.insert(key.clone());
            if !running.contains_key(&key) {
                // A failure here (the pod deleted meanwhile, a full disk) skips this pod for one
                // pass; the runner itself must keep running for every other pod.
                match start_pod(&client, &cfg, pod, &api).await {
                    Ok(Some(r)) => {
                        running.insert(key.clone(), r);
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        eprintln!("pod-runner: {ns}/{name}: start: {e}");
                        continue;
                    }
                }
            }
            let Some(r) = running.get_mut(&key) else {
                continue;
            };
            if tick.is_multiple_of(2) {
                let _ = materialize(&client, &ns, &r.spec).await;
            }
            if let Ok(Some(code)) = r.child.try_wait() {
                eprintln!("pod-runner: {ns}/{name} exited ({code}); restarting");
                let pod_dir = cfg.state_dir.join("pods").join(&ns).join(&name);
                match spawn(&cfg, &r.spec, &pod_dir, true) {
                    Ok(child) => {
                        r.child = child;
                        r.restarts += 1;
                        r.ready = None;
                    }
                    Err(e) => {
                        eprintln!("pod-runner: {ns}/{name}: restart: {e}");
                        continue;
                    }
                }
            }
            let ready = http
                .get(format!("http://127.0.0.1:{}/readyz", r.port))
                .send()
                .await
                .map(|resp| resp.status().is_success())
                .unwrap_or(false);
            if r.ready != Some(ready) {
                r.ready = Some(ready);
                let status = pod_status(r, &image, &container.name);
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await
                {
                    eprintln!("pod-runner: {ns}/{name}: status: {e}");
                    r.ready = None;
                }
            }
        }
        // Pods that vanished without us seeing the deletion.
        let gone: Vec<_> = running
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(mut r) = running.remove(&k) {
                let _ = r.child.start_kill();
                let _ = r.child.wait().await;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
