//! The chart on the test environment's real kubelet node (tests/env/node.sh: containerd, runc,
//! kubelet, kube-proxy, CNI bridge): the operator image is built from the repository's
//! Dockerfile around the binaries cargo already built (`hack/images.sh` with `BIN_DIR`), on the
//! local base image made from Debian packages, imported into the node's containerd, and
//! `helm install`ed as a user would, with `image.repository`/`image.tag` pointing at it and
//! `imagePullPolicy: Never`. The operator pod must become Ready on the real node under the
//! chart's ServiceAccount, hold the leader Lease, and answer `/metrics` through its Service's
//! ClusterIP (from the host, through kube-proxy's rules) and at its pod IP.
//!
//! Part of every `make test` run as root (install.sh builds the node, up.sh starts it).
//! Needs the `node` service. A missing node fails the tests, unless they run neither as root nor in CI
//! (`CI=true`): then they print SKIPPED, because such a machine cannot run a kubelet.
//! Run alone: `tests/run-tests.sh -p allsource-tests --test suites real_node::` (as root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use allsource_tests::env::{self, TestEnv};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
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
/// the operator pod to be Ready and returns it with the time that took.
async fn install_operator(env: &TestEnv, ns: &env::TestNamespace, tag: &str) -> (Pod, Duration) {
    let (node_selector, tolerations) = placement(env);
    let values = json!({
        "replicas": 1,
        "image": {"repository": format!("{REGISTRY}/allsource-operator"), "tag": tag, "pullPolicy": "Never"},
        // Only this namespace: other tests' EventStores are none of this operator's business.
        "watchNamespaces": [ns.name()],
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
        Ok(p) => (p, t0.elapsed()),
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
    let (pod, ready_after) = install_operator(env, &ns, tag).await;
    eprintln!(
        "helm install -> operator pod Ready in {:.1}s",
        ready_after.as_secs_f64()
    );

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

/// An HTTP client that resolves `url`'s host through the cluster DNS, as a pod would.
async fn cluster_client(env: &TestEnv, url: &str) -> Option<reqwest::Client> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?.to_string();
    let port = parsed.port_or_known_default()?;
    let ip = resolve_like_a_pod(env, &host).await?;
    reqwest::Client::builder()
        .resolve(&host, std::net::SocketAddr::from((ip, port)))
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .ok()
}

/// Sends a request as an application would: to the Secret's endpoint (the client Service's DNS
/// name), following a 421's `Location` to the tenant's owning node (its headless DNS name).
async fn send(
    env: &TestEnv,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<&Value>,
) -> Option<(u16, String)> {
    let mut url = url;
    for _ in 0..3 {
        let client = cluster_client(env, &url).await?;
        let mut req = client.request(method.clone(), &url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.ok()?;
        let code = resp.status().as_u16();
        if code == 421 {
            url = resp
                .headers()
                .get(reqwest::header::LOCATION)?
                .to_str()
                .ok()?
                .to_string();
            continue;
        }
        return Some((code, resp.text().await.ok()?));
    }
    None
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selfhosted_sample_runs_three_real_store_nodes_with_volumes() {
    let Some(env) = node_env() else {
        return;
    };
    let node = var(env, "NODE_NAME").to_string();
    let tag = images(env);
    let ns = env.test_namespace("realnode-sh").await.expect("namespace");
    let client = ns.client().clone();
    let (_, ready_after) = install_operator(env, &ns, tag).await;
    eprintln!(
        "helm install -> operator pod Ready in {:.1}s",
        ready_after.as_secs_f64()
    );

    // The sample as a user on this cluster edits it: the image built here, the node's volume
    // class, and the real node's placement.
    let mut es = yaml_docs("config/samples/eventstore-selfhosted.yaml").remove(0);
    let (node_selector, tolerations) = placement(env);
    let sh = &mut es["spec"]["selfHosted"];
    sh["image"] = json!(format!("{REGISTRY}/store-node:{tag}"));
    sh["imagePullPolicy"] = json!("Never");
    sh["storage"]["storageClassName"] = json!(var(env, "NODE_STORAGE_CLASS"));
    sh["podTemplate"] = json!({"nodeSelector": node_selector, "tolerations": tolerations});
    let es_name = es["metadata"]["name"].as_str().expect("name").to_string();
    let stores: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns.name(), &eventstores());
    let t0 = Instant::now();
    stores
        .patch(
            &es_name,
            &PatchParams::apply("real-node-e2e"),
            &Patch::Apply(&es),
        )
        .await
        .expect("apply EventStore");
    let ready = tokio::time::timeout(
        WAIT,
        wait_for("EventStore Ready with 3 ready nodes", WAIT, || {
            let stores = stores.clone();
            let es_name = es_name.clone();
            async move {
                let es = stores.get(&es_name).await.ok()?;
                (ready_condition(&es) && es.data["status"]["readyReplicas"] == 3).then_some(())
            }
        }),
    )
    .await;
    if ready.is_err() {
        panic!(
            "EventStore not Ready after {WAIT:?}:\n{}",
            describe(env, ns.name())
        );
    }
    eprintln!(
        "selfHosted sample apply -> Ready with 3 real pods in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let store_pods: Vec<Pod> = pods
        .list(&ListParams::default())
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
        .collect();
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

    // A tenant, then an append and a read through the Service DNS name with its Secret.
    let mut tenant = yaml_docs("config/samples/tenant-pooled.yaml").remove(0);
    tenant["spec"]["eventStoreRef"]["name"] = json!(es_name);
    let tenant_name = tenant["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let tns: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &tenants());
    tns.patch(
        &tenant_name,
        &PatchParams::apply("real-node-e2e"),
        &Patch::Apply(&tenant),
    )
    .await
    .expect("apply Tenant");
    let secret_name = wait_for("Tenant Ready with its Secret", WAIT, || {
        let tns = tns.clone();
        let tenant_name = tenant_name.clone();
        async move {
            let t = tns.get(&tenant_name).await.ok()?;
            if !(ready_condition(&t) || t.data["status"]["phase"] == "Ready") {
                return None;
            }
            t.data["status"]["secretName"].as_str().map(str::to_string)
        }
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns.name());
    let secret = secrets.get(&secret_name).await.expect("tenant Secret");
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
    let (endpoint, token) = (field("endpoint"), field("token"));
    assert!(
        endpoint.contains(".svc"),
        "the Secret's endpoint is the Service DNS name: {endpoint}"
    );
    let event = json!({"events": [{
        "eventId": "00000000-0000-4000-8000-000000000042",
        "eventType": "OrderPlaced",
        "data": {"total": 42}
    }]});
    let stream = format!(
        "{}/v1/streams/order-42/events",
        endpoint.trim_end_matches('/')
    );
    // The nodes pick the tenant up from the registry a few seconds after it changes.
    wait_for("append through the Service", WAIT, || {
        let (stream, token, event) = (stream.clone(), token.clone(), event.clone());
        async move {
            let (code, _) = send(env, reqwest::Method::POST, stream, &token, Some(&event)).await?;
            (code == 201).then_some(())
        }
    })
    .await;
    let (code, text) = send(env, reqwest::Method::GET, stream.clone(), &token, None)
        .await
        .expect("read through the Service");
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("OrderPlaced"), "{text}");

    // Deleted while the operator runs: its finalizers go, then the chart.
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
