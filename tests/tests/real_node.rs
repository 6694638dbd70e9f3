//! The chart on the test environment's real kubelet node (tests/env/node.sh: containerd, runc,
//! kubelet, kube-proxy, CNI bridge): the operator image is built from the repository's
//! Dockerfile around the binaries cargo already built (`hack/images.sh` with `BIN_DIR`), on the
//! local base image made from Debian packages, imported into the node's containerd, and
//! `helm install`ed as a user would, with `image.repository`/`image.tag` pointing at it and
//! `imagePullPolicy: Never`. The operator pod must become Ready on the real node under the
//! chart's ServiceAccount, hold the leader Lease, and answer `/metrics` through its Service's
//! ClusterIP (from the host, through kube-proxy's rules) and at its pod IP. The selfHosted sample
//! runs 3 store-node pods with volumes from the node's provisioner and serves a tenant through the
//! Service DNS name; under a writer per tenant, a deleted pod, a container SIGKILLed through
//! containerd, a rolling upgrade and a drain of every store pod through the Eviction API (the
//! PodDisruptionBudget refuses evictions; at most one store pod unready at any time in either)
//! keep every acknowledged event, once and in order, and each tenant's longest write
//! unavailability is printed. Before those, the volumes are grown under the same load
//! (`storage.size` 10Gi -> 20Gi, on the provisioner's expandable class): every PVC's capacity
//! follows, the StatefulSet is re-created with the new template, and no pod restarts.
//!
//! Part of every `make test` run as root (install.sh builds the node, up.sh starts it).
//! Needs the `node` service. A missing node fails the tests, unless they run neither as root nor in CI
//! (`CI=true`): then they print SKIPPED, because such a machine cannot run a kubelet.
//! Run alone: `tests/run-tests.sh -p allsource-tests --test suites real_node::` (as root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use allsource_tests::env::{self, TestEnv};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(240);
const RELEASE: &str = "allsource-operator";
/// Image names of the test builds: never a registry anyone could push to or pull from.
const REGISTRY: &str = "allsource.local";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent")
        .to_path_buf()
}

/// Directory of the binaries cargo built next to this test (target/<profile>), or
/// `$ALLSOURCE_BIN_DIR`.
fn bin_dir() -> PathBuf {
    if let Ok(p) = std::env::var("ALLSOURCE_BIN_DIR") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/real_node-<hash> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for b in ["allsource-operator", "store-node"] {
        assert!(
            dir.join(b).exists(),
            "{} missing: run `cargo build --workspace --bins --tests` before the tests (or set ALLSOURCE_BIN_DIR)",
            dir.join(b).display()
        );
    }
    dir
}

/// The env with the real node; `None` (with a loud SKIPPED) only off CI for a non-root user.
fn node_env() -> Option<&'static TestEnv> {
    let has_node = env::load().is_ok_and(|e| e.has("node"));
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    });
    if !has_node && !ci && !root {
        eprintln!(
            "SKIPPED {}: the real node needs root (tests/env/up.sh kube node as root)",
            std::thread::current().name().unwrap_or("real_node")
        );
        return None;
    }
    env::require("node")
}

/// A key of the env file that the `node` service writes.
fn var<'a>(env: &'a TestEnv, key: &str) -> &'a str {
    env.get(key)
        .unwrap_or_else(|| panic!("{key} missing from {}", env.path().display()))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tag of this test binary's images: built and imported once, by the first test asking.
fn images(env: &TestEnv) -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let tag = env::unique_name("e2e");
        build_and_load_images(env, &tag);
        tag
    })
}

/// Builds both images with `tag` into the node's dockerd and imports them into its containerd.
fn build_and_load_images(env: &TestEnv, tag: &str) {
    let t0 = Instant::now();
    let saved = tempfile::tempdir().expect("temp dir");
    let listing = run_ok(
        Command::new(root().join("hack/images.sh"))
            .env("DOCKER_HOST", var(env, "NODE_DOCKER_HOST"))
            .env("BIN_DIR", bin_dir())
            .env("BASE_IMAGE", "local")
            .env("REGISTRY", REGISTRY)
            .env("TAG", tag)
            .env("SAVE_DIR", saved.path()),
    );
    eprintln!(
        "images built in {:.1}s:\n{listing}",
        t0.elapsed().as_secs_f64()
    );
    for name in ["allsource-operator", "store-node"] {
        run_ok(
            Command::new("ctr")
                .args(["--address", var(env, "NODE_CONTAINERD_ADDRESS")])
                .args(["-n", "k8s.io", "images", "import"])
                .arg(saved.path().join(format!("{name}.tar"))),
        );
    }
    eprintln!(
        "images built and imported in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

fn helm(env: &TestEnv, ns: &str) -> Command {
    let mut c = Command::new(env.helm());
    c.arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(["--namespace", ns]);
    c
}

/// Polls `f` every 500 ms until it returns `Some`, panicking with `what` after `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn http_get(url: &str) -> Option<String> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().await.ok()
}

/// What the kubelet and containerd say about the namespace's pods, for failure messages.
fn describe(env: &TestEnv, ns: &str) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(["-n", ns, "describe", "pods"])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("kubectl describe: {e}"),
    }
}

/// What the real-node tests schedule: the node's label and toleration of its taint.
fn placement(env: &TestEnv) -> (Value, Value) {
    let taint = var(env, "NODE_TAINT_KEY");
    (
        json!({taint: "true"}),
        json!([{"key": taint, "operator": "Exists", "effect": "NoSchedule"}]),
    )
}

/// `helm install`s the chart into `ns` with the image built here, watching `ns` only; waits for
/// the operator pod to be Ready and returns it with the time that took (also printed).
async fn install_operator(env: &TestEnv, ns: &env::TestNamespace, tag: &str) -> (Pod, Duration) {
    let (node_selector, tolerations) = placement(env);
    let values = json!({
        "replicas": 1,
        "image": {"repository": format!("{REGISTRY}/allsource-operator"), "tag": tag, "pullPolicy": "Never"},
        // Only this namespace: other tests' EventStores are none of this operator's business.
        "watchNamespaces": [ns.name()],
        // The store-node image built here is the one image store nodes may run.
        "storeNodeImages": [format!("{REGISTRY}/store-node")],
        "nodeSelector": node_selector,
        "tolerations": tolerations,
    });
    let values_file = tempfile::NamedTempFile::new().expect("values file");
    std::fs::write(
        values_file.path(),
        serde_json::to_vec(&values).expect("values"),
    )
    .expect("write values");

    let t0 = Instant::now();
    run_ok(
        helm(env, ns.name())
            .args(["install", RELEASE])
            .arg(root().join("charts/allsource-operator"))
            .arg("-f")
            .arg(values_file.path()),
    );
    let pods: Api<Pod> = Api::namespaced(ns.client().clone(), ns.name());
    let ready = tokio::time::timeout(
        WAIT,
        wait_for("operator pod Ready", WAIT, || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels(OPERATOR_SELECTOR))
                    .await
                    .ok()?;
                list.items.into_iter().find(pod_ready)
            }
        }),
    )
    .await;
    match ready {
        Ok(p) => {
            let took = t0.elapsed();
            eprintln!(
                "helm install -> operator pod Ready in {:.1}s",
                took.as_secs_f64()
            );
            (p, took)
        }
        Err(_) => panic!(
            "operator pod not Ready after {WAIT:?}:\n{}",
            describe(env, ns.name())
        ),
    }
}

const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=allsource-operator";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installed_operator_runs_from_its_image_on_the_real_node() {
    let Some(env) = node_env() else {
        return;
    };
    let node = var(env, "NODE_NAME").to_string();
    let tag = images(env);
    let ns = env.test_namespace("realnode").await.expect("namespace");
    let client = ns.client().clone();
    let (pod, _) = install_operator(env, &ns, tag).await;

    let spec = pod.spec.as_ref().expect("pod spec");
    assert_eq!(
        spec.node_name.as_deref(),
        Some(node.as_str()),
        "scheduled on the real node"
    );
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some(RELEASE),
        "runs under the chart's ServiceAccount"
    );
    let status = pod.status.as_ref().expect("pod status");
    let cs = &status
        .container_statuses
        .as_ref()
        .expect("container statuses")[0];
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some(format!("{REGISTRY}/allsource-operator:{tag}").as_str()),
        "the chart's image.repository and image.tag"
    );
    // containerd reports one of the names of the image it ran: an earlier run's tag of the same
    // bytes (a rebuild of unchanged binaries is the same image) is also an image built here.
    assert!(
        cs.image
            .starts_with(&format!("{REGISTRY}/allsource-operator:e2e-")),
        "runs an image built here: {}",
        cs.image
    );
    assert!(
        cs.container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("containerd://")),
        "a real container: {:?}",
        cs.container_id
    );
    let pod_name = pod.metadata.name.clone().expect("pod name");
    let pod_ip = status.pod_ip.clone().expect("pod IP");
    assert!(
        pod_ip.starts_with("10.0.16."),
        "pod IP {pod_ip} from the node's pod CIDR"
    );

    // Leader elected: a Lease of the release namespace held by this pod.
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns.name());
    wait_for("the leader Lease held by the pod", WAIT, || {
        let leases = leases.clone();
        let pod_name = pod_name.clone();
        async move {
            let list = leases.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|l| {
                    l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                        == Some(pod_name.as_str())
                })
                .then_some(())
        }
    })
    .await;

    // /metrics through the Service's ClusterIP (kube-proxy's iptables rules on the host) and at
    // the pod IP (the CNI bridge).
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns.name());
    let svc = svcs
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await
        .expect("list services")
        .items
        .into_iter()
        .next()
        .expect("the chart's metrics Service");
    let svc_spec = svc.spec.as_ref().expect("service spec");
    let cluster_ip = svc_spec.cluster_ip.clone().expect("ClusterIP");
    let port = svc_spec.ports.as_ref().expect("ports")[0].port;
    for url in [
        format!("http://{cluster_ip}:{port}/metrics"),
        format!("http://{pod_ip}:{port}/metrics"),
    ] {
        let t = Instant::now();
        let body = wait_for(&format!("{url} with the leader gauge at 1"), WAIT, || {
            let url = url.clone();
            async move {
                let body = http_get(&url).await?;
                body.lines()
                    .any(|l| l.starts_with("allsource_operator_leader") && l.ends_with(" 1"))
                    .then_some(body)
            }
        })
        .await;
        assert!(body.contains("# TYPE"), "Prometheus text: {body}");
        eprintln!("{url} answered in {:.1}s", t.elapsed().as_secs_f64());
    }

    run_ok(helm(env, ns.name()).args(["uninstall", RELEASE, "--wait", "--timeout", "2m"]));
    ns.cleanup().await.expect("delete namespace");
}

/// An A record from the cluster DNS (CoreDNS on the node IP): one UDP query, as a resolver
/// would send it.
async fn resolve_a(dns: &str, name: &str) -> Option<std::net::Ipv4Addr> {
    let mut q = vec![0x41, 0x53, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).ok()?);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.ok()?;
    sock.send_to(&q, (dns, 53)).await.ok()?;
    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    let msg = &buf[..n];
    let answers = u16::from_be_bytes([*msg.get(6)?, *msg.get(7)?]);
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let len = *msg.get(i)?;
            if len & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            if len == 0 {
                return Some(i + 1);
            }
            i += 1 + usize::from(len);
        }
    };
    let mut i = skip_name(12)? + 4;
    for _ in 0..answers {
        i = skip_name(i)?;
        let typ = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
        let len = usize::from(u16::from_be_bytes([*msg.get(i + 8)?, *msg.get(i + 9)?]));
        let data = msg.get(i + 10..i + 10 + len)?;
        if typ == 1 && len == 4 {
            return Some(std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + len;
    }
    None
}

/// The address of `host` as a pod resolves it: the names in the Secret are relative
/// (`<service>.<namespace>.svc`), so the search list of a pod's resolv.conf applies
/// (`ndots:5`: the search domains first, then the name as it is).
async fn resolve_like_a_pod(env: &TestEnv, host: &str) -> Option<std::net::Ipv4Addr> {
    let dns = var(env, "NODE_DNS");
    for suffix in [".svc.cluster.local", ".cluster.local", ""] {
        if host.ends_with(".cluster.local") && !suffix.is_empty() {
            continue;
        }
        if let Some(ip) = resolve_a(dns, &format!("{host}{suffix}")).await {
            return Some(ip);
        }
    }
    None
}

/// An HTTP client that resolves `url`'s host through the cluster DNS, as a pod would; with `ca`
/// (PEM), an https server is verified against that CA only.
async fn cluster_client(env: &TestEnv, url: &str, ca: Option<&[u8]>) -> Option<reqwest::Client> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?.to_string();
    let port = parsed.port_or_known_default()?;
    let ip = resolve_like_a_pod(env, &host).await?;
    let mut b = reqwest::Client::builder()
        .resolve(&host, std::net::SocketAddr::from((ip, port)))
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = ca {
        b = b
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem).ok()?);
    }
    b.build().ok()
}

/// Sends a request as an application would: to the Secret's endpoint (the owning node's DNS name
/// through the headless Service) or to the store's Service, following a 421's `Location` to the
/// tenant's owning node.
async fn send(
    env: &TestEnv,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<&Value>,
) -> Result<(u16, String), String> {
    send_verified(env, method, url, token, body, None).await
}

/// [`send`] to an https endpoint verified with the CA `ca` (the `ca.crt` of a credentials Secret).
async fn send_verified(
    env: &TestEnv,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<&Value>,
    ca: Option<&[u8]>,
) -> Result<(u16, String), String> {
    let mut url = url;
    for _ in 0..3 {
        let client = cluster_client(env, &url, ca)
            .await
            .ok_or_else(|| format!("{url}: not resolved by the cluster DNS"))?;
        let mut req = client.request(method.clone(), &url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {e:?}"))?;
        let code = resp.status().as_u16();
        if code == 421 {
            url = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| format!("{url}: 421 without a Location"))?
                .to_string();
            continue;
        }
        let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
        return Ok((code, text));
    }
    Err(format!("{url}: more than 3 redirections"))
}

/// Server-side applies `obj` as `name` through `api` with the tests' field manager.
async fn ssa(api: &Api<DynamicObject>, name: &str, obj: &Value, what: &str) {
    api.patch(
        name,
        &PatchParams::apply("real-node-e2e"),
        &Patch::Apply(obj),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn eventstores() -> ApiResource {
    ApiResource {
        group: "allsource.io".into(),
        version: "v1alpha1".into(),
        api_version: "allsource.io/v1alpha1".into(),
        kind: "EventStore".into(),
        plural: "eventstores".into(),
    }
}

fn tenants() -> ApiResource {
    ApiResource {
        group: "allsource.io".into(),
        version: "v1alpha1".into(),
        api_version: "allsource.io/v1alpha1".into(),
        kind: "Tenant".into(),
        plural: "tenants".into(),
    }
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(rel)).expect("sample");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn ready_condition(obj: &DynamicObject) -> bool {
    obj.data["status"]["conditions"]
        .as_array()
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The selfHosted sample as a user on this cluster edits it (the image built here with
/// `image_tag`, the node's volume class, the real node's placement), applied in `ns`; returns
/// its name once it is Ready with 3 ready nodes, and how long that took.
async fn apply_selfhosted_sample(
    env: &TestEnv,
    client: &kube::Client,
    ns: &str,
    image_tag: &str,
) -> (String, Duration) {
    let mut es = selfhosted_sample(env, image_tag);
    let es_name = es["metadata"]["name"].as_str().expect("name").to_string();
    let stores: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &eventstores());
    let t0 = Instant::now();
    es["metadata"]["namespace"] = json!(ns);
    ssa(&stores, &es_name, &es, "apply EventStore").await;
    wait_store_ready(env, &stores, ns, &es_name).await;
    (es_name, t0.elapsed())
}

/// The selfHosted sample with this cluster's image, volume class, placement and CPU share.
fn selfhosted_sample(env: &TestEnv, image_tag: &str) -> Value {
    let mut es = yaml_docs("config/samples/eventstore-selfhosted.yaml").remove(0);
    let (node_selector, tolerations) = placement(env);
    let sh = &mut es["spec"]["selfHosted"];
    sh["image"] = json!(format!("{REGISTRY}/store-node:{image_tag}"));
    sh["imagePullPolicy"] = json!("Never");
    sh["storage"]["storageClassName"] = json!(var(env, "NODE_STORAGE_CLASS"));
    sh["podTemplate"] = json!({"nodeSelector": node_selector, "tolerations": tolerations});
    // The test node has 2 CPUs and the real-node tests run side by side: the sample's 250m per
    // node, three nodes per test, would leave a later test's pods unschedulable.
    sh["resources"]["requests"]["cpu"] = json!("50m");
    es
}

/// Waits for the EventStore `name` to be Ready with 3 ready nodes (the pods described on
/// timeout).
async fn wait_store_ready(env: &TestEnv, stores: &Api<DynamicObject>, ns: &str, name: &str) {
    let ready = tokio::time::timeout(
        WAIT,
        wait_for("EventStore Ready with 3 ready nodes", WAIT, || {
            let stores = stores.clone();
            async move {
                let es = stores.get(name).await.ok()?;
                (ready_condition(&es) && es.data["status"]["readyReplicas"] == 3).then_some(())
            }
        }),
    )
    .await;
    if ready.is_err() {
        panic!(
            "EventStore not Ready after {WAIT:?}:\n{}",
            describe(env, ns)
        );
    }
}

/// The store-node pods of the EventStore `es_name`.
async fn store_pods(pods: &Api<Pod>, es_name: &str) -> Vec<Pod> {
    pods.list(&ListParams::default())
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(&format!("{es_name}-")))
        })
        .collect()
}

/// What an application of a tenant has: the Secret's endpoint and token, and (from the
/// Tenant's status) the store node that owns it.
#[derive(Clone)]
struct Access {
    tenant: String,
    endpoint: String,
    token: String,
    node: String,
}

/// Applies the pooled tenant sample as `name` (tenant id `name`) of `es_name`; returns what its
/// application gets once it is Ready.
async fn apply_tenant(
    env: &TestEnv,
    client: &kube::Client,
    ns: &str,
    es_name: &str,
    name: &str,
) -> Access {
    let mut tenant = yaml_docs("config/samples/tenant-pooled.yaml").remove(0);
    tenant["metadata"]["name"] = json!(name);
    tenant["spec"]["tenantId"] = json!(name);
    tenant["spec"]["eventStoreRef"]["name"] = json!(es_name);
    let tns: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &tenants());
    ssa(&tns, name, &tenant, "apply Tenant").await;
    let (secret_name, node) = wait_for("Tenant Ready with its Secret", WAIT, || {
        let tns = tns.clone();
        async move {
            let t = tns.get(name).await.ok()?;
            if !(ready_condition(&t) || t.data["status"]["phase"] == "Ready") {
                return None;
            }
            let st = &t.data["status"];
            Some((
                st["secretName"].as_str()?.to_string(),
                st["location"]["name"].as_str()?.to_string(),
            ))
        }
    })
    .await;
    // The Secret's endpoint is the owning node's own address once the tenant is placed.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let owner_prefix = format!("://{node}.{es_name}-nodes.{ns}.svc:");
    let secret = wait_for("the Secret's endpoint at the owning node", WAIT, || {
        let (secrets, secret_name, owner_prefix) =
            (secrets.clone(), secret_name.clone(), owner_prefix.clone());
        async move {
            let s = secrets.get(&secret_name).await.ok()?;
            let endpoint = s.data.as_ref()?.get("endpoint")?.0.clone();
            let endpoint = String::from_utf8(endpoint).ok()?;
            ((endpoint.starts_with("http://") || endpoint.starts_with("https://"))
                && endpoint.contains(&owner_prefix))
            .then_some(s)
        }
    })
    .await;
    // Ready is measured: the owning node already accepts the token (no 401 window).
    {
        let data = secret.data.as_ref().expect("secret data");
        let text = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf-8");
        let ca = data.get("ca.crt").map(|c| c.0.clone());
        let stats = format!("{}/v1/stats", text("endpoint").trim_end_matches('/'));
        let (code, body) = send_verified(
            env,
            reqwest::Method::GET,
            stats,
            &text("token"),
            None,
            ca.as_deref(),
        )
        .await
        .expect("stats right after Ready");
        assert_eq!(
            code, 200,
            "the node refused the token of a Ready tenant: {body}"
        );
    }
    let field = |k: &str| -> String {
        let data = secret.data.as_ref().expect("secret data");
        String::from_utf8(
            data.get(k)
                .unwrap_or_else(|| panic!("{k} in the Secret"))
                .0
                .clone(),
        )
        .expect("utf-8")
    };
    Access {
        tenant: name.to_string(),
        endpoint: field("endpoint"),
        token: field("token"),
        node,
    }
}

/// The URL of `stream`'s events for `access`'s application.
fn stream_url(access: &Access, stream: &str) -> String {
    format!(
        "{}/v1/streams/{stream}/events",
        access.endpoint.trim_end_matches('/')
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selfhosted_sample_runs_three_real_store_nodes_with_volumes() {
    let Some(env) = node_env() else {
        return;
    };
    let node = var(env, "NODE_NAME").to_string();
    let tag = images(env);
    let ns = env.test_namespace("realnode-sh").await.expect("namespace");
    let client = ns.client().clone();
    install_operator(env, &ns, tag).await;
    let (es_name, took) = apply_selfhosted_sample(env, &client, ns.name(), tag).await;
    eprintln!(
        "selfHosted sample apply -> Ready with 3 real pods in {:.1}s",
        took.as_secs_f64()
    );
    let stores: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns.name(), &eventstores());
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let store_pods = store_pods(&pods, &es_name).await;
    assert_eq!(store_pods.len(), 3, "three store-node pods");
    for p in &store_pods {
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some(node.as_str()));
        assert!(pod_ready(p), "store pod Ready by its readiness probe");
        let claims = spec
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.persistent_volume_claim.is_some())
            .count();
        assert_eq!(claims, 1, "one PVC per store node");
    }

    // A tenant, then an append with its Secret (to the owning node's DNS name) and a read
    // through the store's Service DNS name (a node that does not own it answers 421).
    let tenant_name = yaml_docs("config/samples/tenant-pooled.yaml").remove(0)["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let access = apply_tenant(env, &client, ns.name(), &es_name, &tenant_name).await;
    let event = json!({"events": [{
        "eventId": "00000000-0000-4000-8000-000000000042",
        "eventType": "OrderPlaced",
        "data": {"total": 42}
    }]});
    let stream = stream_url(&access, "order-42");
    // The owner picks the tenant up from the registry a few seconds after it changes.
    wait_for("append at the Secret's endpoint", WAIT, || {
        let (stream, token, event) = (stream.clone(), access.token.clone(), event.clone());
        async move {
            let (code, _) = send(env, reqwest::Method::POST, stream, &token, Some(&event))
                .await
                .ok()?;
            (code == 201).then_some(())
        }
    })
    .await;
    // The Service may first hand the read to a node that has not reloaded the registry yet
    // (it answers 401 until it knows the tenant): read until one that knows it answers.
    let service = stores.get(&es_name).await.expect("EventStore").data["status"]["endpoint"]["url"]
        .as_str()
        .expect("status.endpoint.url")
        .to_string();
    assert!(
        service.starts_with(&format!("http://{es_name}.{}.svc:", ns.name())),
        "{service}"
    );
    let via_service = format!("{service}/v1/streams/order-42/events");
    let text = wait_for("read through the Service", WAIT, || {
        let (stream, token) = (via_service.clone(), access.token.clone());
        async move {
            let (code, text) = send(env, reqwest::Method::GET, stream, &token, None)
                .await
                .ok()?;
            (code == 200).then_some(text)
        }
    })
    .await;
    assert!(text.contains("OrderPlaced"), "{text}");

    // Deleted while the operator runs: its finalizers go, then the chart.
    let tns: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &tenants());
    tns.delete(&tenant_name, &Default::default())
        .await
        .expect("delete Tenant");
    stores
        .delete(&es_name, &Default::default())
        .await
        .expect("delete EventStore");
    wait_for("Tenant and EventStore gone", WAIT, || {
        let (tns, stores) = (tns.clone(), stores.clone());
        let (t, e) = (tenant_name.clone(), es_name.clone());
        async move {
            (tns.get_opt(&t).await.ok()?.is_none() && stores.get_opt(&e).await.ok()?.is_none())
                .then_some(())
        }
    })
    .await;
    run_ok(helm(env, ns.name()).args(["uninstall", RELEASE, "--wait", "--timeout", "2m"]));
    ns.cleanup().await.expect("delete namespace");
}

/// What one tenant's writer saw: the event ids the store acknowledged, in order, and each
/// stretch during which its appends failed (from the last acknowledgement before it to the
/// first after it).
#[derive(Default)]
struct Ledger {
    acked: Vec<uuid::Uuid>,
    outages: Vec<(Instant, Duration)>,
    last_error: String,
}

/// The id of the `i`-th event of tenant number `t`: known before the append, so an append whose
/// answer was lost is retried with the same id (the store deduplicates it) and every
/// acknowledged event can be looked for by id afterwards.
fn event_id(t: usize, i: usize) -> uuid::Uuid {
    uuid::Uuid::from_u128(
        0x0000_0000_0000_4000_8000_0000_0000_0000 | ((t as u128) << 40) | i as u128,
    )
}

/// Appends one event at a time to `stream` as `access`'s application would (at its Secret's
/// endpoint, following 421s), each at its exact expected version, retrying the same event until
/// it is acknowledged, until `stop`; then finishes the event in flight (bounded by [`WAIT`]).
async fn write_until(
    env: &'static TestEnv,
    access: Access,
    t: usize,
    stream: String,
    stop: tokio::sync::watch::Receiver<bool>,
    ledger: std::sync::Arc<std::sync::Mutex<Ledger>>,
) {
    let url = stream_url(&access, &stream);
    let (mut i, mut last_ok, mut failing) = (0usize, Instant::now(), false);
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stopped_at.is_none() && *stop.borrow() {
            stopped_at = Some(Instant::now());
        }
        let id = event_id(t, i);
        // Each event at its exact version: a retry of an append whose answer was lost is then
        // recognized whether or not the node checkpointed it since (without an expected version
        // only the node's in-memory window recognizes it: store-node/openapi.yaml).
        let expected = if i == 0 {
            json!("noStream")
        } else {
            json!(i - 1)
        };
        let body = json!({"expectedVersion": expected,
                          "events": [{"eventId": id, "eventType": "Tick", "data": {"i": i}}]});
        let sent = send(
            env,
            reqwest::Method::POST,
            url.clone(),
            &access.token,
            Some(&body),
        )
        .await;
        let acked = {
            let mut l = ledger.lock().expect("ledger");
            match sent {
                Ok((200 | 201, _)) => {
                    if failing {
                        l.outages.push((last_ok, last_ok.elapsed()));
                    }
                    l.acked.push(id);
                    true
                }
                other => {
                    l.last_error = format!("{other:?}");
                    assert!(
                        stopped_at.is_none_or(|s| s.elapsed() < WAIT),
                        "tenant {}: event {i} not acknowledged {WAIT:?} after the load stopped: {}",
                        access.tenant,
                        l.last_error
                    );
                    false
                }
            }
        };
        if acked {
            failing = false;
            last_ok = Instant::now();
            i += 1;
            if stopped_at.is_some() {
                return;
            }
        } else {
            failing = true;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every event of `stream` as `access`'s application reads it, page by page.
async fn read_ids(env: &TestEnv, access: &Access, stream: &str) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    let mut from = 0u64;
    loop {
        let url = format!("{}?from={from}&limit=500", stream_url(access, stream));
        // A Service whose endpoints just changed (a roll) may refuse a connection for a moment
        // until kube-proxy has synced its rules: an application retries, so does this.
        let (code, text) = wait_for("a page read through the Service", WAIT, || {
            let url = url.clone();
            async move {
                send(env, reqwest::Method::GET, url, &access.token, None)
                    .await
                    .inspect_err(|e| eprintln!("read retried: {e}"))
                    .ok()
            }
        })
        .await;
        assert_eq!(code, 200, "{text}");
        let page: Value = serde_json::from_str(&text).expect("events page");
        let events = page["events"].as_array().expect("events");
        // An empty page is the end (its `next` is where a later call would follow from).
        if events.is_empty() {
            return ids;
        }
        for e in events {
            ids.push(
                e["eventId"]
                    .as_str()
                    .expect("eventId")
                    .parse()
                    .expect("uuid"),
            );
        }
        match page["next"].as_u64() {
            Some(n) => from = n,
            None => return ids,
        }
    }
}

/// The pod `name` once it is Ready and `done(pod)` holds.
async fn wait_pod(pods: &Api<Pod>, name: &str, what: &str, done: impl Fn(&Pod) -> bool) -> Pod {
    wait_for(what, WAIT, || {
        let pods = pods.clone();
        let done = &done;
        async move {
            let p = pods.get_opt(name).await.ok()??;
            (pod_ready(&p) && done(&p)).then_some(p)
        }
    })
    .await
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// Waits until every writer has had `n` more events acknowledged than now.
async fn wait_progress(ledgers: &[std::sync::Arc<std::sync::Mutex<Ledger>>], n: usize, what: &str) {
    let base: Vec<usize> = ledgers
        .iter()
        .map(|l| l.lock().expect("ledger").acked.len())
        .collect();
    wait_for(what, WAIT, || {
        let ok = ledgers
            .iter()
            .zip(&base)
            .all(|(l, b)| l.lock().expect("ledger").acked.len() >= b + n);
        async move { ok.then_some(()) }
    })
    .await;
}

/// Counts, every 200 ms, how many of a store's 3 pods are not Ready, and keeps the worst.
struct Sampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<usize>,
}

impl Sampler {
    fn start(pods: &Api<Pod>, es_name: &str) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (pods, es_name) = (pods.clone(), es_name.to_string());
        let task = tokio::spawn(async move {
            let mut worst = 0usize;
            while !*stopped.borrow() {
                if let Ok(list) = pods.list(&ListParams::default()).await {
                    let ready = list
                        .items
                        .iter()
                        .filter(|p| {
                            p.metadata
                                .name
                                .as_deref()
                                .is_some_and(|n| n.starts_with(&format!("{es_name}-")))
                                && pod_ready(p)
                        })
                        .count();
                    worst = worst.max(3usize.saturating_sub(ready));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            worst
        });
        Self { stop, task }
    }

    /// The most pods seen unready at once.
    async fn stop(self) -> usize {
        self.stop.send(true).expect("sampler");
        self.task.await.expect("sampler")
    }
}

/// Asks the Eviction API to evict pod `name` of `ns` the way `kubectl drain` does, through
/// kubectl itself: Ok(true) evicted, Ok(false) refused by a disruption budget (429). Not with
/// the test's kube client: kube 5 retries a 429 by itself (`Config::default_retry`), so a
/// refused eviction would come back as granted once the budget allowed it, hiding every refusal.
fn evict(env: &TestEnv, ns: &str, name: &str) -> Result<bool, String> {
    let body = json!({
        "apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": name, "namespace": ns},
    });
    let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(file.path(), body.to_string()).map_err(|e| e.to_string())?;
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args([
            "create",
            "--raw",
            &format!("/api/v1/namespaces/{ns}/pods/{name}/eviction"),
            "-f",
        ])
        .arg(file.path())
        .output()
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(true)
    } else if text.contains("TooManyRequests") || text.contains("disruption budget") {
        Ok(false)
    } else {
        Err(text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_pods_killed_and_rolled_under_load_keep_every_acknowledged_event() {
    let Some(env) = node_env() else {
        return;
    };
    let tag = images(env);
    let ns = env
        .test_namespace("realnode-roll")
        .await
        .expect("namespace");
    let client = ns.client().clone();
    install_operator(env, &ns, tag).await;
    let (es_name, _) = apply_selfhosted_sample(env, &client, ns.name(), tag).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let mut tenants = Vec::new();
    for name in ["roll-a", "roll-b", "roll-c"] {
        tenants.push(apply_tenant(env, &client, ns.name(), &es_name, name).await);
    }
    let owners: Vec<&str> = tenants.iter().map(|a| a.node.as_str()).collect();
    eprintln!("owners: {owners:?}");

    // One writer per tenant, one event per durable append, for the whole test.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ledgers: Vec<_> = tenants
        .iter()
        .map(|_| std::sync::Arc::new(std::sync::Mutex::new(Ledger::default())))
        .collect();
    let writers: Vec<_> = tenants
        .iter()
        .enumerate()
        .map(|(t, a)| {
            tokio::spawn(write_until(
                env,
                a.clone(),
                t,
                "ticks".to_string(),
                stop_rx.clone(),
                ledgers[t].clone(),
            ))
        })
        .collect();
    wait_progress(&ledgers, 20, "every tenant writing").await;
    let mut phases: Vec<(&str, Instant, Instant)> = Vec::new();
    let stores: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns.name(), &eventstores());

    // 0. The volumes grown under load: each PVC expanded in place, the StatefulSet (whose claim
    //    template is immutable) re-created around its running pods, none of them restarted.
    let t0 = Instant::now();
    const GROWN: &str = "20Gi";
    let running: Vec<(String, Option<String>, i32)> = store_pods(&pods, &es_name)
        .await
        .into_iter()
        .map(|p| {
            let n = restarts(&p);
            (p.metadata.name.unwrap_or_default(), p.metadata.uid, n)
        })
        .collect();
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), ns.name());
    let sts_uid = sts_api
        .get(&es_name)
        .await
        .expect("StatefulSet")
        .metadata
        .uid;
    let sampler = Sampler::start(&pods, &es_name);
    let mut es = selfhosted_sample(env, tag);
    es["metadata"]["namespace"] = json!(ns.name());
    es["spec"]["selfHosted"]["storage"]["size"] = json!(GROWN);
    ssa(&stores, &es_name, &es, "apply the larger volume size").await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns.name());
    let grown = tokio::time::timeout(
        WAIT,
        wait_for(
            "every PVC at 20Gi and the StatefulSet re-created",
            WAIT,
            || {
                let (pvcs, sts_api, stores) = (pvcs.clone(), sts_api.clone(), stores.clone());
                let (es_name, sts_uid) = (es_name.clone(), sts_uid.clone());
                async move {
                    for i in 0..3 {
                        let pvc = pvcs.get(&format!("data-{es_name}-{i}")).await.ok()?;
                        let cap = pvc.status?.capacity?.get("storage")?.0.clone();
                        (cap == GROWN).then_some(())?;
                    }
                    let sts = sts_api.get(&es_name).await.ok()?;
                    let template = sts.spec?.volume_claim_templates?[0]
                        .spec
                        .clone()?
                        .resources?
                        .requests?
                        .get("storage")?
                        .0
                        .clone();
                    (sts.metadata.uid != sts_uid && template == GROWN).then_some(())?;
                    let es = stores.get(&es_name).await.ok()?;
                    let done = es.data["status"]["conditions"]
                        .as_array()?
                        .iter()
                        .any(|c| c["type"] == "Progressing" && c["status"] == "False");
                    (ready_condition(&es) && done).then_some(())
                }
            },
        ),
    )
    .await;
    if grown.is_err() {
        panic!(
            "volumes not grown after {WAIT:?}:\n{}",
            describe(env, ns.name())
        );
    }
    let worst = sampler.stop().await;
    for (name, uid, n) in &running {
        let p = pods.get(name).await.expect("store pod");
        assert_eq!(&p.metadata.uid, uid, "{name} was replaced by the resize");
        assert_eq!(restarts(&p), *n, "{name} restarted during the resize");
        let owner = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        assert_eq!(
            owner,
            sts_api
                .get(&es_name)
                .await
                .expect("StatefulSet")
                .metadata
                .uid,
            "{name} adopted by the new StatefulSet"
        );
    }
    assert_eq!(worst, 0, "{worst} store pods unready during the resize");
    wait_progress(&ledgers, 10, "every tenant writing after the resize").await;
    phases.push(("volumes grown", t0, Instant::now()));
    eprintln!(
        "volumes grown 10Gi -> {GROWN} in {:.1}s, no pod restarted",
        t0.elapsed().as_secs_f64()
    );

    // 1. `kubectl delete pod` of the first tenant's node: the StatefulSet makes it again on the
    //    same volume.
    let t0 = Instant::now();
    let victim = tenants[0].node.clone();
    let before = pods.get(&victim).await.expect("victim pod");
    let uid = before.metadata.uid.clone();
    pods.delete(&victim, &Default::default())
        .await
        .expect("delete pod");
    wait_pod(&pods, &victim, "the deleted pod back and Ready", |p| {
        p.metadata.uid != uid
    })
    .await;
    wait_progress(&ledgers, 10, "every tenant writing after the pod came back").await;
    phases.push(("pod deleted", t0, Instant::now()));
    eprintln!("pod deleted and back in {:.1}s", t0.elapsed().as_secs_f64());

    // 2. The second tenant's node's container SIGKILLed through containerd: the kubelet
    //    restarts it in the same pod.
    let t0 = Instant::now();
    let victim = tenants[1].node.clone();
    let before = wait_pod(&pods, &victim, "the second node Ready", |_| true).await;
    let count = restarts(&before);
    let id = before
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.as_deref())
        .and_then(|id| id.strip_prefix("containerd://"))
        .expect("containerd container id")
        .to_string();
    run_ok(
        Command::new("ctr")
            .args(["--address", var(env, "NODE_CONTAINERD_ADDRESS")])
            .args(["-n", "k8s.io", "tasks", "kill", "--signal", "SIGKILL", &id]),
    );
    wait_pod(
        &pods,
        &victim,
        "the SIGKILLed container restarted and Ready",
        |p| restarts(p) > count,
    )
    .await;
    wait_progress(&ledgers, 10, "every tenant writing after the restart").await;
    phases.push(("container SIGKILLed", t0, Instant::now()));
    eprintln!(
        "container SIGKILLed and back in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    // 3. A rolling upgrade: the same image under a new tag, so every pod is replaced. A sampler
    //    counts the store's pods that are not Ready at each moment: one at a time, never more.
    let t0 = Instant::now();
    let next = format!("{tag}-next");
    run_ok(
        Command::new("ctr")
            .args(["--address", var(env, "NODE_CONTAINERD_ADDRESS")])
            .args(["-n", "k8s.io", "images", "tag", "--force"])
            .arg(format!("{REGISTRY}/store-node:{tag}"))
            .arg(format!("{REGISTRY}/store-node:{next}")),
    );
    let sampler = Sampler::start(&pods, &es_name);
    let mut es = selfhosted_sample(env, &next);
    es["metadata"]["namespace"] = json!(ns.name());
    es["spec"]["selfHosted"]["storage"]["size"] = json!(GROWN);
    ssa(&stores, &es_name, &es, "apply the new image").await;
    let image = format!("{REGISTRY}/store-node:{next}");
    wait_for("every store pod on the new image and Ready", WAIT, || {
        let (pods, es_name, image) = (pods.clone(), es_name.clone(), image.clone());
        async move {
            let list = store_pods(&pods, &es_name).await;
            (list.len() == 3
                && list.iter().all(|p| {
                    pod_ready(p)
                        && p.spec
                            .as_ref()
                            .and_then(|s| s.containers[0].image.as_deref())
                            == Some(image.as_str())
                }))
            .then_some(())
        }
    })
    .await;
    wait_store_ready(env, &stores, ns.name(), &es_name).await;
    wait_progress(&ledgers, 10, "every tenant writing after the roll").await;
    let worst = sampler.stop().await;
    phases.push(("rolling upgrade", t0, Instant::now()));
    eprintln!("rolling upgrade done in {:.1}s", t0.elapsed().as_secs_f64());
    assert!(
        worst <= 1,
        "{worst} store pods were unready at once during the roll"
    );

    // 4. A drain of the store's pods as `kubectl drain` does it: every pod evicted at once
    //    through the Eviction API, each eviction retried while the PodDisruptionBudget
    //    (maxUnavailable 1) refuses it (429). The budget must refuse some, and never more than
    //    one store pod may be unready at a time. (Not `kubectl drain` itself: cordoning the
    //    only real node would stop every test's pods from being scheduled again.)
    let t0 = Instant::now();
    let before: Vec<(String, Option<String>)> = store_pods(&pods, &es_name)
        .await
        .into_iter()
        .map(|p| (p.metadata.name.unwrap_or_default(), p.metadata.uid))
        .collect();
    let sampler = Sampler::start(&pods, &es_name);
    let drains: Vec<_> = before
        .iter()
        .map(|(name, _)| {
            let (ns, name) = (ns.name().to_string(), name.clone());
            // kubectl is a process: each pod's retry loop runs on a blocking thread.
            tokio::task::spawn_blocking(move || {
                let mut refused = 0usize;
                let deadline = Instant::now() + WAIT;
                loop {
                    match evict(env, &ns, &name) {
                        Ok(true) => return refused,
                        Ok(false) => refused += 1,
                        Err(e) => panic!("evict {name}: {e}"),
                    }
                    assert!(Instant::now() < deadline, "{name} not evicted in {WAIT:?}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        })
        .collect();
    let mut refused = 0;
    for d in drains {
        refused += d.await.expect("eviction task");
    }
    for (name, uid) in &before {
        wait_pod(&pods, name, "an evicted pod back and Ready", |p| {
            p.metadata.uid != *uid
        })
        .await;
    }
    let worst = sampler.stop().await;
    wait_progress(&ledgers, 10, "every tenant writing after the drain").await;
    phases.push(("drain", t0, Instant::now()));
    eprintln!(
        "3 pods evicted in {:.1}s, {refused} evictions refused by the budget",
        t0.elapsed().as_secs_f64()
    );
    assert!(refused > 0, "the budget never refused an eviction");
    assert!(
        worst <= 1,
        "{worst} store pods were unready at once during the drain"
    );

    // Stop the load; every acknowledged event is there once, in order, and nothing else.
    stop_tx.send(true).expect("stop");
    for w in writers {
        w.await.expect("writer");
    }
    for (t, a) in tenants.iter().enumerate() {
        let read = read_ids(env, a, "ticks").await;
        let l = ledgers[t].lock().expect("ledger");
        assert_eq!(
            read.len(),
            l.acked.len(),
            "tenant {}: {} acknowledged, {} read",
            a.tenant,
            l.acked.len(),
            read.len()
        );
        assert!(read == l.acked, "tenant {}: events out of order", a.tenant);
        for (name, from, to) in &phases {
            let worst = l
                .outages
                .iter()
                .filter(|(at, d)| *at <= *to && *at + *d >= *from)
                .map(|(_, d)| *d)
                .max()
                .unwrap_or_default();
            eprintln!(
                "tenant {} (node {}): {name}: longest write unavailability {:.1}s",
                a.tenant,
                a.node,
                worst.as_secs_f64()
            );
        }
        eprintln!(
            "tenant {}: {} events acknowledged and read back",
            a.tenant,
            read.len()
        );
    }
    run_ok(helm(env, ns.name()).args(["uninstall", RELEASE, "--wait", "--timeout", "2m"]));
    ns.cleanup().await.expect("delete namespace");
}

fn archivepolicies() -> ApiResource {
    ApiResource {
        group: "allsource.io".into(),
        version: "v1alpha1".into(),
        api_version: "allsource.io/v1alpha1".into(),
        kind: "ArchivePolicy".into(),
        plural: "archivepolicies".into(),
    }
}

/// Kills a helper process on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback server of the env (`host:port` on 127.0.0.1) at an address pods reach: a socat
/// bridge on the node's address on the pod network, like the apiserver's. Returns the bridge and
/// its `ip:port`.
fn bridge(env: &TestEnv, upstream: &str) -> (Child, String) {
    let port = allsource_tests::bins::free_port();
    let ip = var(env, "NODE_IP");
    let upstream_port = upstream
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no port in {upstream}"));
    let child = Command::new("socat")
        .arg(format!("TCP-LISTEN:{port},bind={ip},reuseaddr,fork"))
        .arg(format!("TCP:127.0.0.1:{upstream_port}"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("socat");
    (Child(child), format!("{ip}:{port}"))
}

/// The S3 server of the env (moto) at an `http://` URL pods reach.
fn s3_for_pods(env: &TestEnv) -> (Child, String) {
    let upstream = reqwest::Url::parse(env.s3_endpoint()).expect("S3 endpoint");
    let (child, at) = bridge(
        env,
        &format!(
            "127.0.0.1:{}",
            upstream.port_or_known_default().expect("S3 port")
        ),
    );
    (child, format!("http://{at}"))
}

/// The S3 sample ArchivePolicy run for real: its CronJob's Job runs `store-node archive` from the
/// store-node image on the real node (scheduled there through `spec.podTemplate`), with the
/// tenants' token files and the S3 credentials mounted by the kubelet, reading three tenants
/// placed on different nodes through the store's Service (each 421 followed to the owner), and
/// writing to moto S3 through the pod network; its report comes back through the real
/// termination message into the policy's status, and the bucket holds the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_policy_runs_the_real_archiver_pod_on_the_node() {
    let Some(env) = node_env() else {
        return;
    };
    let env_s3 = env::require("s3").expect("s3 service");
    let tag = images(env);
    let ns = env
        .test_namespace("realnode-archive")
        .await
        .expect("namespace");
    let client = ns.client().clone();
    install_operator(env, &ns, tag).await;
    let (es_name, _) = apply_selfhosted_sample(env, &client, ns.name(), tag).await;
    let mut tenants = Vec::new();
    for name in ["arch-a", "arch-b", "arch-c"] {
        tenants.push(apply_tenant(env, &client, ns.name(), &es_name, name).await);
    }
    let mut owners: Vec<&str> = tenants.iter().map(|a| a.node.as_str()).collect();
    owners.sort_unstable();
    owners.dedup();
    eprintln!("owners: {owners:?}");
    assert!(owners.len() > 1, "the tenants are spread over the nodes");
    const PER_TENANT: usize = 20;
    for (t, a) in tenants.iter().enumerate() {
        for i in 0..PER_TENANT {
            let body = json!({"events": [{"eventId": event_id(t, i), "eventType": "OrderPlaced",
                "data": {"n": i}}]});
            let url = stream_url(a, &format!("order-{}", i % 3));
            wait_for("append", WAIT, || {
                let (url, token, body) = (url.clone(), a.token.clone(), body.clone());
                async move {
                    let (code, _) = send(env, reqwest::Method::POST, url, &token, Some(&body))
                        .await
                        .ok()?;
                    (code == 201 || code == 200).then_some(())
                }
            })
            .await;
        }
    }

    // The destination: a bucket on moto, reached by the operator pod and the archiver pod
    // through the bridge on the pod network.
    let (_bridge, s3_url) = s3_for_pods(env_s3);
    let s3 = env_s3.s3_client();
    let bucket = env::unique_name("realnode-archive");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns.name());
    let creds: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s3-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": env_s3.s3_access_key(),
                       "AWS_SECRET_ACCESS_KEY": env_s3.s3_secret_key()},
    }))
    .expect("secret");
    secrets
        .create(&Default::default(), &creds)
        .await
        .expect("create S3 credentials");
    let mut policy = yaml_docs("config/samples/archivepolicy-s3.yaml").remove(0);
    let name = policy["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    policy["metadata"]["namespace"] = json!(ns.name());
    policy["metadata"]["annotations"] = json!({"allsource.io/run-now": "first"});
    let spec = &mut policy["spec"];
    spec["eventStoreRef"]["name"] = json!(es_name);
    spec["hotRetention"] = json!("0h");
    let s3_dest = &mut spec["destination"]["s3"];
    s3_dest["bucket"] = json!(bucket);
    s3_dest["endpoint"] = json!(s3_url);
    s3_dest["forcePathStyle"] = json!(true);
    s3_dest["credentialsSecretRef"] = json!({"name": "s3-creds"});
    let (node_selector, tolerations) = placement(env);
    spec["podTemplate"] = json!({"nodeSelector": node_selector, "tolerations": tolerations});
    spec["resources"] = json!({"requests": {"cpu": "50m", "memory": "64Mi"}});
    let aps: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns.name(), &archivepolicies());
    let t0 = Instant::now();
    ssa(&aps, &name, &policy, "apply ArchivePolicy").await;
    let total = (tenants.len() * PER_TENANT) as i64;
    let done = tokio::time::timeout(
        WAIT,
        wait_for("the archive run's result in status", WAIT, || {
            let aps = aps.clone();
            let name = name.clone();
            async move {
                let p = aps.get(&name).await.ok()?;
                let st = &p.data["status"];
                // Running until the Job ends; then Succeeded or Failed.
                (st["lastResult"] == "Succeeded" || st["lastResult"] == "Failed")
                    .then(|| st.clone())
            }
        }),
    )
    .await;
    let st = match done {
        Ok(st) => st,
        Err(_) => panic!(
            "no archive run recorded after {WAIT:?}:\n{}",
            describe(env, ns.name())
        ),
    };
    eprintln!(
        "ArchivePolicy apply -> run recorded in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        st["lastResult"],
        "Succeeded",
        "{st}\n{}",
        describe(env, ns.name())
    );
    assert_eq!(st["eventsArchived"], total, "{st}");
    for a in &tenants {
        let w = st["tenants"]
            .as_array()
            .and_then(|ts| ts.iter().find(|x| x["tenantId"] == a.tenant.as_str()))
            .unwrap_or_else(|| panic!("tenant {} in {st}", a.tenant));
        assert_eq!(w["watermark"], PER_TENANT, "{st}");
    }
    // The pod that ran it was a real one on the node, from the store-node image.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let job = st["lastJobName"].as_str().expect("lastJobName").to_string();
    let ran = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .expect("pods")
        .items;
    let pod = ran.first().expect("the archiver pod");
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(
        spec.node_name.as_deref(),
        Some(var(env, "NODE_NAME")),
        "archiver on the real node"
    );
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some(format!("{REGISTRY}/store-node:{tag}").as_str())
    );
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list bucket");
    let parquet = listed
        .contents()
        .iter()
        .filter(|o| o.key().is_some_and(|k| k.ends_with(".parquet")))
        .count();
    eprintln!(
        "archived {total} events of {} tenants into {parquet} Parquet files",
        tenants.len()
    );
    assert!(parquet >= tenants.len(), "{parquet} Parquet files");

    // The first tenant deleted with deletionPolicy Delete: its node erases it, then its archive
    // goes from the bucket; the other tenants' archives stay.
    let keys = || async {
        s3.list_objects_v2()
            .bucket(&bucket)
            .send()
            .await
            .expect("list bucket")
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect::<Vec<_>>()
    };
    let of = |keys: &[String], t: &str| {
        keys.iter()
            .filter(|k| k.contains(&format!("/tenant={t}/")))
            .count()
    };
    let before = keys().await;
    assert!(of(&before, &tenants[0].tenant) > 0, "{before:?}");
    let tns: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &self::tenants());
    let gone = tenants[0].tenant.clone();
    tns.patch(
        &gone,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deletionPolicy": "Delete"}})),
    )
    .await
    .expect("deletionPolicy Delete");
    tns.delete(&gone, &Default::default())
        .await
        .expect("delete Tenant");
    wait_for("the deleted Tenant gone", WAIT, || {
        let (tns, gone) = (tns.clone(), gone.clone());
        async move { tns.get_opt(&gone).await.ok()?.is_none().then_some(()) }
    })
    .await;
    let after = keys().await;
    assert_eq!(of(&after, &gone), 0, "{after:?}");
    for a in &tenants[1..] {
        assert_eq!(of(&after, &a.tenant), of(&before, &a.tenant), "{after:?}");
    }
    eprintln!(
        "tenant {gone} deleted: {} archived objects erased, {} of the others kept",
        of(&before, &gone),
        after.len()
    );

    aps.delete(&name, &Default::default())
        .await
        .expect("delete ArchivePolicy");
    wait_for("ArchivePolicy gone", WAIT, || {
        let (aps, name) = (aps.clone(), name.clone());
        async move { aps.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
    run_ok(helm(env, ns.name()).args(["uninstall", RELEASE, "--wait", "--timeout", "2m"]));
    ns.cleanup().await.expect("delete namespace");
}

/// Every sample of `config/samples` applied as a user on this cluster edits it (the images built
/// here, the node's placement and volume class, the servers' addresses as pods reach them through
/// bridges on the pod network, this run's table, database and bucket names, one gateway pod per
/// cloud store to spare the node's 2 CPUs) reaches Ready with the operator running from its image
/// under the chart's ServiceAccount and every store node and gateway a real pod; then a tenant of
/// the PostgreSQL store appends and reads through its gateway with its Secret, as an application
/// would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_reaches_ready_on_the_real_node() {
    let Some(env) = node_env() else {
        return;
    };
    for service in ["postgres", "dynamodb", "firestore", "s3", "gcs"] {
        env::require(service).unwrap_or_else(|| panic!("{service} service"));
    }
    let tag = images(env);
    let ns = env
        .test_namespace("realnode-samples")
        .await
        .expect("namespace");
    let client = ns.client().clone();
    install_operator(env, &ns, tag).await;

    // What the pods reach: each server through a bridge on the node's pod-network address.
    let pg = env.pg_test_database().await.expect("PostgreSQL database");
    let pg_url = reqwest::Url::parse(&pg.url).expect("PostgreSQL URL");
    let pg_at = format!(
        "{}:{}",
        pg_url.host_str().expect("host"),
        pg_url.port().unwrap_or(5432)
    );
    let (_b1, pg_bridge) = bridge(env, &pg_at);
    let (_b2, ddb_bridge) = bridge(env, env.dynamodb_endpoint());
    let (_b3, fs_bridge) = bridge(env, env.firestore_emulator_host());
    let (_b4, s3_url) = s3_for_pods(env);
    let (_b5, gcs_bridge) = bridge(env, env.gcs_endpoint());
    let s3_bucket = env::unique_name("realnode-samples");
    let gcs_bucket = env::unique_name("realnode-samples");
    env.create_buckets(&s3_bucket, &gcs_bucket).await;
    let table = env::unique_name("realnode-orders");

    let (node_selector, tolerations) = placement(env);
    let on_node = json!({"nodeSelector": node_selector, "tolerations": tolerations});
    let image = format!("{REGISTRY}/store-node:{tag}");
    let secret = |name: &str, data: Value| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
               "type": "Opaque", "stringData": data})
    };
    let mut docs = vec![
        secret(
            "samples-aws-keys",
            json!({"AWS_ACCESS_KEY_ID": env::AWS_TEST_ACCESS_KEY,
                   "AWS_SECRET_ACCESS_KEY": env::AWS_TEST_SECRET_KEY}),
        ),
        secret(
            "samples-s3-keys",
            json!({"AWS_ACCESS_KEY_ID": env.s3_access_key(),
                   "AWS_SECRET_ACCESS_KEY": env.s3_secret_key()}),
        ),
        // fake-gcs-server ignores the token; a real one comes from Workload Identity or a key.
        secret("samples-gcs-token", json!({"GCS_OAUTH_TOKEN": "e2e-token"})),
    ];
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("config/samples"))
        .expect("samples")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    for f in &files {
        let rel = f.strip_prefix(root()).expect("relative");
        docs.extend(yaml_docs(rel.to_str().expect("utf-8")));
    }
    for d in docs.iter_mut() {
        let kind = d["kind"].as_str().unwrap_or_default().to_string();
        if kind == "Secret" && d["metadata"]["name"] == "orders-postgres-admin" {
            let mut url = pg_url.clone();
            let (host, port) = pg_bridge.split_once(':').expect("ip:port");
            url.set_host(Some(host)).expect("host");
            url.set_port(port.parse().ok()).expect("port");
            d["stringData"]["url"] = json!(url.to_string());
        }
        let Some(spec) = d.get_mut("spec") else {
            continue;
        };
        match kind.as_str() {
            "EventStore" => {
                match spec["backend"].as_str() {
                    Some("selfHosted") => {
                        let sh = &mut spec["selfHosted"];
                        sh["image"] = json!(image);
                        sh["imagePullPolicy"] = json!("Never");
                        sh["storage"]["storageClassName"] = json!(var(env, "NODE_STORAGE_CLASS"));
                        sh["podTemplate"] = on_node.clone();
                        sh["resources"]["requests"]["cpu"] = json!("50m");
                    }
                    Some("dynamodb") => {
                        let ddb = &mut spec["dynamodb"];
                        ddb["endpoint"] = json!(format!("http://{ddb_bridge}"));
                        ddb["tableName"] = json!(table);
                        ddb["credentialsSecretRef"] = json!({"name": "samples-aws-keys"});
                    }
                    Some("firestore") => {
                        spec["firestore"]["endpoint"] = json!(fs_bridge);
                        spec["firestore"]["emulator"] = json!(true);
                        spec["firestore"]["projectId"] = json!(env.firestore_project());
                    }
                    _ => {}
                }
                if spec.get("gateway").is_some() {
                    let gw = &mut spec["gateway"];
                    gw["replicas"] = json!(1);
                    gw["image"] = json!(image);
                    gw["imagePullPolicy"] = json!("Never");
                    gw["podTemplate"] = on_node.clone();
                    gw["resources"] = json!({"requests": {"cpu": "50m", "memory": "64Mi"}});
                }
            }
            "ArchivePolicy" => {
                spec["podTemplate"] = on_node.clone();
                let dest = &mut spec["destination"];
                if dest.get("s3").is_some() {
                    let s3 = &mut dest["s3"];
                    s3["bucket"] = json!(s3_bucket);
                    s3["endpoint"] = json!(s3_url);
                    s3["forcePathStyle"] = json!(true);
                    s3["credentialsSecretRef"] = json!({"name": "samples-s3-keys"});
                }
                if dest.get("gcs").is_some() {
                    dest["gcs"]["bucket"] = json!(gcs_bucket);
                    dest["gcs"]["endpoint"] = json!(format!("http://{gcs_bridge}"));
                    dest["gcs"]["credentialsSecretRef"] = json!({"name": "samples-gcs-token"});
                }
            }
            _ => {}
        }
    }
    // And a tenant of the PostgreSQL store, to go through its gateway.
    let mut pg_tenant = yaml_docs("config/samples/tenant-pooled.yaml").remove(0);
    pg_tenant["metadata"]["name"] = json!("initech");
    pg_tenant["spec"]["tenantId"] = json!("initech");
    pg_tenant["spec"]["eventStoreRef"]["name"] = json!("orders-postgres");
    docs.push(pg_tenant);

    let t0 = Instant::now();
    for d in &docs {
        let kind = d["kind"].as_str().expect("kind");
        let name = d["metadata"]["name"].as_str().expect("name");
        let (group, version) = match d["apiVersion"].as_str().expect("apiVersion") {
            "v1" => ("", "v1"),
            gv => gv.split_once('/').expect("group/version"),
        };
        let plural = match kind {
            "ArchivePolicy" => "archivepolicies".to_string(),
            k => format!("{}s", k.to_lowercase()),
        };
        let ar = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: d["apiVersion"].as_str().expect("apiVersion").into(),
            kind: kind.into(),
            plural,
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &ar);
        let mut d = d.clone();
        d["metadata"]["namespace"] = json!(ns.name());
        ssa(&api, name, &d, &format!("apply {kind} {name}")).await;
    }
    for d in docs.iter().filter(|d| {
        matches!(
            d["kind"].as_str(),
            Some("EventStore" | "Tenant" | "ArchivePolicy")
        )
    }) {
        let kind = d["kind"].as_str().expect("kind");
        let name = d["metadata"]["name"].as_str().expect("name").to_string();
        let ar = match kind {
            "EventStore" => eventstores(),
            "Tenant" => tenants(),
            _ => archivepolicies(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &ar);
        let ready = tokio::time::timeout(
            WAIT,
            wait_for(&format!("{kind} {name} Ready"), WAIT, || {
                let (api, name) = (api.clone(), name.clone());
                async move {
                    let o = api.get(&name).await.ok()?;
                    (ready_condition(&o)
                        && o.data["status"]["observedGeneration"].as_i64() == o.metadata.generation)
                        .then_some(())
                }
            }),
        )
        .await;
        if ready.is_err() {
            let o = api.get(&name).await.expect("sample");
            panic!(
                "{kind} {name} not Ready after {WAIT:?}: {}\n{}",
                o.data["status"],
                describe(env, ns.name())
            );
        }
        eprintln!(
            "{kind} {name} Ready {:.1}s after the samples were applied",
            t0.elapsed().as_secs_f64()
        );
    }
    // Every store node and gateway is a real pod on the node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let node = var(env, "NODE_NAME");
    let running: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter(pod_ready)
        .map(|p| {
            let on = p.spec.as_ref().and_then(|s| s.node_name.clone());
            assert_eq!(
                on.as_deref(),
                Some(node),
                "{:?} off the real node",
                p.metadata.name
            );
            p.metadata.name.unwrap_or_default()
        })
        .collect();
    for prefix in [
        "orders-0",
        "orders-postgres-gateway",
        "orders-dynamodb-gateway",
        "orders-firestore-gateway",
    ] {
        assert!(
            running.iter().any(|n| n.starts_with(prefix)),
            "no Ready pod {prefix}* among {running:?}"
        );
    }

    // An application of the PostgreSQL store's tenant: its Secret's endpoint is the gateway.
    let access = apply_tenant_secret(&client, ns.name(), "initech").await;
    assert!(
        access.endpoint.contains("orders-postgres"),
        "{}",
        access.endpoint
    );
    let stream = stream_url(&access, "order-1");
    let event = json!({"events": [{"eventId": event_id(9, 1), "eventType": "OrderPlaced",
        "data": {"total": 1}}]});
    wait_for("append through the PostgreSQL gateway", WAIT, || {
        let (stream, token, event) = (stream.clone(), access.token.clone(), event.clone());
        async move {
            let (code, _) = send(env, reqwest::Method::POST, stream, &token, Some(&event))
                .await
                .ok()?;
            (code == 201 || code == 200).then_some(())
        }
    })
    .await;
    let (code, text) = send(
        env,
        reqwest::Method::GET,
        stream.clone(),
        &access.token,
        None,
    )
    .await
    .expect("read");
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("OrderPlaced"), "{text}");
    eprintln!(
        "{} samples Ready and an event through the gateway in {:.1}s",
        docs.len(),
        t0.elapsed().as_secs_f64()
    );

    run_ok(helm(env, ns.name()).args(["uninstall", RELEASE, "--wait", "--timeout", "2m"]));
    ns.cleanup().await.expect("delete namespace");
}

/// What the application of the Ready Tenant `name` reads from its credentials Secret.
async fn apply_tenant_secret(client: &kube::Client, ns: &str, name: &str) -> Access {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = secrets
        .get(&format!("{name}-credentials"))
        .await
        .expect("credentials Secret");
    let data = s.data.unwrap_or_default();
    let field = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf-8");
    Access {
        tenant: name.to_string(),
        endpoint: field("endpoint"),
        token: field("token"),
        node: String::new(),
    }
}

/// The selfHosted sample with `tlsSecretRef` on the real node: a certificate made with openssl for
/// the names the CRD documents, every node serving HTTPS only, a tenant whose Secret carries an
/// https endpoint and `ca.crt` appending and reading with the CA verified, the operator pod reading
/// the tenant's usage from its node over HTTPS, and a deletion with `Delete` finished only once the
/// operator's purge probe, over HTTPS, saw the node erase the tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_store_nodes_serve_tenants_and_the_operator_on_the_real_node() {
    let Some(env) = node_env() else {
        return;
    };
    let tag = images(env);
    let ns = env.test_namespace("realnode-tls").await.expect("namespace");
    let client = ns.client().clone();
    install_operator(env, &ns, tag).await;

    let mut es = selfhosted_sample(env, tag);
    let es_name = es["metadata"]["name"].as_str().expect("name").to_string();
    let pki = tempfile::tempdir().expect("tempdir");
    allsource_tests::certs::make_ca(pki.path(), "ca");
    allsource_tests::certs::issue_server_cert(
        pki.path(),
        "ca",
        "nodes",
        &format!(
            "DNS:{es_name}.{0}.svc,DNS:*.{es_name}-nodes.{0}.svc",
            ns.name()
        ),
        1,
        2,
    );
    let pem = |f: &str| std::fs::read_to_string(pki.path().join(f)).expect("pem");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns.name());
    let tls: Secret = serde_json::from_value(json!({
        "metadata": {"name": "orders-tls"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": pem("nodes.crt"), "tls.key": pem("nodes.key"),
                       "ca.crt": pem("ca.crt")},
    }))
    .expect("secret");
    secrets
        .create(&Default::default(), &tls)
        .await
        .expect("TLS Secret");
    es["spec"]["selfHosted"]["tlsSecretRef"] = json!({"name": "orders-tls"});
    es["metadata"]["namespace"] = json!(ns.name());
    let stores: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns.name(), &eventstores());
    ssa(&stores, &es_name, &es, "apply EventStore").await;
    wait_store_ready(env, &stores, ns.name(), &es_name).await;
    let url = stores.get(&es_name).await.expect("EventStore").data["status"]["endpoint"]["url"]
        .as_str()
        .expect("url")
        .to_string();
    assert!(url.starts_with("https://"), "{url}");

    let access = apply_tenant(env, &client, ns.name(), &es_name, "tls-a").await;
    assert!(
        access.endpoint.starts_with("https://"),
        "{}",
        access.endpoint
    );
    let secret = secrets
        .get("tls-a-credentials")
        .await
        .expect("credentials Secret");
    let ca = secret.data.as_ref().expect("data")["ca.crt"].0.clone();
    assert_eq!(
        ca,
        pem("ca.crt").into_bytes(),
        "the Secret carries the store's CA"
    );
    let stream = stream_url(&access, "order-1");
    let event = json!({"events": [{"eventId": event_id(7, 1), "eventType": "OrderPlaced",
        "data": {"total": 1}}]});
    wait_for("append over HTTPS", WAIT, || {
        let (stream, token, event, ca) = (
            stream.clone(),
            access.token.clone(),
            event.clone(),
            ca.clone(),
        );
        async move {
            let (code, _) = send_verified(
                env,
                reqwest::Method::POST,
                stream,
                &token,
                Some(&event),
                Some(&ca),
            )
            .await
            .ok()?;
            (code == 201).then_some(())
        }
    })
    .await;
    let (code, text) = send_verified(
        env,
        reqwest::Method::GET,
        stream.clone(),
        &access.token,
        None,
        Some(&ca),
    )
    .await
    .expect("read over HTTPS");
    assert_eq!(code, 200, "{text}");
    // Plain HTTP is not served.
    let plain = access.endpoint.replacen("https://", "http://", 1);
    let refused = send(
        env,
        reqwest::Method::GET,
        format!("{plain}/v1/streams/order-1/events"),
        &access.token,
        None,
    )
    .await;
    assert!(
        refused.as_ref().map_or(true, |(c, _)| *c == 400),
        "plain HTTP answered: {refused:?}"
    );

    // The operator pod reads the tenant's usage from its node over HTTPS.
    let tns: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &tenants());
    tns.patch(
        "tls-a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            "allsource.io/usage-interval-seconds": "1"}}})),
    )
    .await
    .expect("usage interval");
    wait_for("usage read by the operator over HTTPS", WAIT, || {
        let tns = tns.clone();
        async move {
            let t = tns.get("tls-a").await.ok()?;
            (t.data["status"]["usage"]["events"].as_u64()? >= 1).then_some(())
        }
    })
    .await;

    // Deleted with Delete: the finalizer waits for the node, asked over HTTPS, to erase it.
    tns.patch(
        "tls-a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deletionPolicy": "Delete"}})),
    )
    .await
    .expect("deletionPolicy Delete");
    tns.delete("tls-a", &Default::default())
        .await
        .expect("delete Tenant");
    wait_for("the Tenant purged and gone", WAIT, || {
        let tns = tns.clone();
        async move { tns.get_opt("tls-a").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let events = run_ok(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(env.kubeconfig())
            .args([
                "-n",
                ns.name(),
                "get",
                "events",
                "-o",
                "jsonpath={.items[*].reason}",
            ]),
    );
    assert!(events.contains("DataPurged"), "{events}");

    run_ok(helm(env, ns.name()).args(["uninstall", RELEASE, "--wait", "--timeout", "2m"]));
    ns.cleanup().await.expect("delete namespace");
}
