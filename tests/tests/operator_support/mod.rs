//! Helpers shared by the operator test binaries: install the generated CRDs into the env's
//! kube-apiserver, run the operator's controllers in-process for one namespace, pre-create the
//! PersistentVolumes the simulated nodes need, and poll for a condition. No fakes: everything
//! talks to the real apiserver, controller manager, scheduler and kwok of tests/env.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A running in-process operator (all controllers) for one namespace.
pub struct Operator {
    pub metrics: Metrics,
    /// The controllers' context (tests point it at store nodes' loopback ports).
    pub ctx: Arc<Context>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    /// Starts the controllers watching only `ns`.
    /// With `ALLSOURCE_TEST_OPERATOR_LOG` set, the operator logs (JSON, filter from `RUST_LOG`)
    /// go to stdout, for understanding a failed run.
    pub fn start(client: &Client, ns: &str) -> Self {
        if std::env::var_os("ALLSOURCE_TEST_OPERATOR_LOG").is_some() {
            allsource_operator::telemetry::init_logging();
        }
        let metrics = Metrics::new().unwrap();
        let ctx = Arc::new(Context::new(
            client.clone(),
            metrics.clone(),
            Scope::Namespaces(vec![ns.to_string()]),
            Some(format!("test-{ns}")),
        ));
        let task = tokio::spawn(controllers::run(ctx.clone()));
        Self { metrics, ctx, task }
    }

    /// Stops the controllers (like a crash: no graceful shutdown).
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
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

/// Polls the EventStore `name` until its status satisfies `pred` (panicking with `what` after
/// `deadline`) and returns that status.
pub async fn wait_store_status(
    api: &Api<allsource_operator::api::EventStore>,
    name: &str,
    what: &str,
    deadline: Duration,
    pred: impl Fn(
        &allsource_operator::api::EventStore,
        &allsource_operator::api::eventstore::EventStoreStatus,
    ) -> bool,
) -> allsource_operator::api::eventstore::EventStoreStatus {
    wait_for(what, deadline, || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let es = api.get(name).await.ok()?;
            let st = es.status.clone()?;
            pred(&es, &st).then_some(st)
        }
    })
    .await
}
