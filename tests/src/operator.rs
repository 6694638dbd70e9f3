//! Helpers shared by the operator suites: install the generated CRDs into the env's
//! kube-apiserver, run the operator's controllers in-process for one namespace, pre-create the
//! PersistentVolumes the simulated nodes need, and poll for a condition. No fakes: everything
//! talks to the real apiserver, controller manager, scheduler and kwok of tests/env.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allsource_operator::api::eventstore::EventStoreStatus;
use allsource_operator::api::{Condition, EventStore};
use allsource_operator::controllers::eventstore::cloud::DEFAULT_DRIFT_INTERVAL;
use allsource_operator::controllers::{self, Context, Scope};
use allsource_operator::telemetry::Metrics;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Applies the three CRDs (as generated from the Rust types) and waits until they are Established.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in allsource_operator::crdgen::crds() {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("allsource-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        wait_for(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.ok()?;
                    crd.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await;
    }
    // Discovery of a fresh CRD lags its Established condition a little; wait until it is served.
    let es: Api<allsource_operator::api::EventStore> = Api::all(client.clone());
    wait_for("EventStore API served", Duration::from_secs(30), || {
        let es = es.clone();
        async move { es.list(&Default::default()).await.ok().map(|_| ()) }
    })
    .await;
}

/// A fresh namespace of the env's cluster with the CRDs installed, and a client for it; `None`
/// when the env has no `kube` (see [`crate::env::require`]).
pub async fn kube_namespace(prefix: &str) -> Option<(crate::env::TestNamespace, Client)> {
    let env = crate::env::require("kube")?;
    let ns = env.test_namespace(prefix).await.unwrap();
    let client = ns.client().clone();
    install_crds(&client).await;
    Some((ns, client))
}

/// A running in-process operator (all controllers) for one namespace.
pub struct Operator {
    pub metrics: Metrics,
    /// The controllers' context (tests point it at store nodes' loopback ports).
    pub ctx: Arc<Context>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    /// Starts the controllers watching only `ns`, with the default drift interval.
    /// With `ALLSOURCE_TEST_OPERATOR_LOG` set, the operator logs (JSON, filter from `RUST_LOG`)
    /// go to stdout, for understanding a failed run.
    pub fn start(client: &Client, ns: &str) -> Self {
        Self::start_with_drift(client, ns, DEFAULT_DRIFT_INTERVAL)
    }

    /// Like [`Operator::start`], with the images store nodes, gateways and archivers may run
    /// limited to `repositories` (the `--allowed-images` flag).
    pub fn start_allowing_images(client: &Client, ns: &str, repositories: &[&str]) -> Self {
        Self::start_configured(client, ns, DEFAULT_DRIFT_INTERVAL, repositories)
    }

    /// Like [`Operator::start`], looking for drift of cloud stores and siloed tenants every
    /// `drift` (this operator only: other suites in the process keep their own).
    pub fn start_with_drift(client: &Client, ns: &str, drift: Duration) -> Self {
        Self::start_configured(client, ns, drift, &[])
    }

    fn start_configured(client: &Client, ns: &str, drift: Duration, images: &[&str]) -> Self {
        if std::env::var_os("ALLSOURCE_TEST_OPERATOR_LOG").is_some() {
            allsource_operator::telemetry::init_logging();
        } else {
            capture_warnings();
        }
        let metrics = Metrics::new().unwrap();
        let ctx = Arc::new(
            Context::new(
                client.clone(),
                metrics.clone(),
                Scope::Namespaces(vec![ns.to_string()]),
                Some(format!("test-{ns}")),
            )
            .with_drift_interval(drift)
            .with_allowed_images(images.iter().map(|s| s.to_string()).collect()),
        );
        let task = tokio::spawn(controllers::run(ctx.clone()));
        Self { metrics, ctx, task }
    }

    /// Stops the controllers (like a crash: no graceful shutdown).
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The operators' warnings and errors in this process, newest last, at most [`WARNING_LINES`].
static WARNINGS: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
const WARNING_LINES: usize = 4000;

/// Where the captured log lines go: one line per event, into [`WARNINGS`].
struct WarningSink;

impl std::io::Write for WarningSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut w = WARNINGS.lock().unwrap_or_else(|e| e.into_inner());
        for line in String::from_utf8_lossy(buf)
            .lines()
            .filter(|l| !l.is_empty())
        {
            if w.len() == WARNING_LINES {
                w.pop_front();
            }
            w.push_back(line.to_string());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Keeps the in-process operators' WARN and ERROR events (a failed reconcile, an outage) for
/// [`warnings_about`]; once per process, and only when no other subscriber is set.
fn capture_warnings() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(|| WarningSink)
            .try_init();
    });
}

/// The last captured operator warnings that mention `needle` (a namespace, an object's name),
/// for a timeout's message: a reconcile that keeps failing says why.
pub fn warnings_about(needle: &str) -> String {
    let w = WARNINGS.lock().unwrap_or_else(|e| e.into_inner());
    let hits: Vec<&String> = w.iter().filter(|l| l.contains(needle)).collect();
    let last = &hits[hits.len().saturating_sub(20)..];
    if last.is_empty() {
        return format!("no operator warning mentions {needle}");
    }
    last.iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Creates PersistentVolumes pre-bound to the claims `data-<store>-<i>` in `ns`, so the scheduler
/// can place store-node pods on the simulated nodes (the env has no volume provisioner).
pub async fn create_volumes(client: &Client, ns: &str, store: &str, count: i32) -> Vec<String> {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("{ns}-{store}-{i}");
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"allsource.io/test": "true"}},
            "spec": {
                "capacity": {"storage": "100Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": format!("/tmp/{name}")},
            }
        }))
        .unwrap();
        let mut pv = pv;
        pv.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            namespace: Some(ns.to_string()),
            name: Some(format!("data-{store}-{i}")),
            ..ObjectReference::default()
        });
        match api.create(&PostParams::default(), &pv).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create PV {name}: {e}"),
        }
        names.push(name);
    }
    names
}

/// Deletes the volumes made by [`create_volumes`].
pub async fn delete_volumes(client: &Client, names: &[String]) {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    for n in names {
        let _ = api.delete(n, &DeleteParams::background()).await;
    }
}

/// Polls `probe` every 200 ms until it returns Some, panicking with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Like [`wait_for`], but the probe says what it saw (`Err(seen)`) when the wait is not over,
/// and a timeout panics with the last thing seen: a CI failure then shows the status the object
/// was stuck in, not only that it never got there.
pub async fn wait_seen<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let seen = match probe().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}; last seen: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long the operator suites wait for a status by default.
pub const STATUS_DEADLINE: Duration = Duration::from_secs(90);

/// Polls the EventStore `name` until its status satisfies `pred` (panicking with `what` after
/// [`STATUS_DEADLINE`]) and returns that status.
pub async fn wait_status(
    api: &Api<EventStore>,
    name: &str,
    what: &str,
    pred: impl Fn(&EventStore, &EventStoreStatus) -> bool,
) -> EventStoreStatus {
    wait_seen(what, STATUS_DEADLINE, || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let es = api.get(name).await.map_err(|e| e.to_string())?;
            let st = es.status.clone().ok_or("no status")?;
            if pred(&es, &st) {
                Ok(st)
            } else {
                Err(serde_json::to_string(&st).unwrap_or_default())
            }
        }
    })
    .await
}

/// The condition `type_` among `conditions`: whether it is True, its reason and its message.
pub fn condition(conditions: &[Condition], type_: &str) -> Option<(bool, String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.is_true(), c.reason.clone(), c.message.clone()))
}

/// Eight random hex digits, for names unique to one run of a test.
pub fn suffix() -> String {
    crate::env::unique_suffix(8)
}
