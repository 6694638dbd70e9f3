//! The Tenant controller against the env's real control plane, one namespace per test, the
//! operator's controllers running in-process: token issued into the `<tenant>-credentials` Secret
//! with only its SHA-256 in status and in the store nodes' registry, zero writes when nothing
//! changed, rotation with both tokens valid for the (test-shortened) grace period, suspend and
//! resume reflected in the registry, deletion removing the registry entry and the Secret, a Tenant
//! whose EventStore appears later, and, with the pod runner playing the kubelet for real
//! store-node processes, an append and read with the Secret's token that another tenant's token
//! cannot see.

// The pod runner's loop, run in-process on a Node of its own (the binary is `pod-runner`).
#[allow(dead_code)]
use allsource_tests::podrunner;

use std::time::{Duration, Instant};

use allsource_operator::api::tenant::TenantStatus;
use allsource_operator::api::{DeletionPolicy, EventStore, Phase, Tenant, FINALIZER};
use allsource_operator::resources::configmap::{RegistryFile, TenantState};
use allsource_tests::operator::{
    create_volumes, delete_volumes, kube_namespace, wait_for, warnings_about, Operator,
};
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use store_node::tenant::registry::sha256_hex;

const DEADLINE: Duration = Duration::from_secs(90);

fn store(name: &str) -> EventStore {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "allsource.io/v1alpha1",
        "kind": "EventStore",
        "metadata": {"name": name},
        "spec": {
            "backend": "selfHosted",
            "selfHosted": {"replicas": 1, "image": "ghcr.io/allsource/store-node:0.1.0", "storage": {"size": "1Gi"}},
        }
    }))
    .unwrap()
}

fn tenant(name: &str, store: &str) -> Tenant {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "allsource.io/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name, "annotations": {"allsource.io/rotation-grace-seconds": "4"}},
        "spec": {"eventStoreRef": {"name": store}, "tenantId": name},
    }))
    .unwrap()
}

fn value(s: &Secret, key: &str) -> Option<String> {
    let v = s.data.as_ref()?.get(key)?;
    String::from_utf8(v.0.clone()).ok()
}

fn condition(st: &TenantStatus, type_: &str) -> Option<(bool, String)> {
    st.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.is_true(), c.reason.clone()))
}

/// Waits until the Tenant's status satisfies `pred` and returns it.
async fn wait_tenant(
    api: &Api<Tenant>,
    name: &str,
    what: &str,
    pred: impl Fn(&Tenant, &TenantStatus) -> bool,
) -> TenantStatus {
    let start = std::time::Instant::now();
    loop {
        if let Ok(t) = api.get(name).await {
            if let Some(st) = t.status.clone() {
                if pred(&t, &st) {
                    return st;
                }
            }
        }
        if start.elapsed() >= DEADLINE {
            let state = describe(api, name).await;
            let ns = api.get(name).await.ok().and_then(|t| t.namespace());
            let warnings = warnings_about(ns.as_deref().unwrap_or(name));
            panic!(
                "timed out after {DEADLINE:?} waiting for {what}\n{state}\noperator warnings:\n{warnings}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a failed wait needs to be understood: the Tenant's status, its store's status and
/// registry, and the store's pods (phase, node, Ready condition).
async fn describe(api: &Api<Tenant>, name: &str) -> String {
    let client = api.clone().into_client();
    let Ok(t) = api.get(name).await else {
        return format!("Tenant {name}: cannot be read");
    };
    let ns = t.namespace().unwrap_or_default();
    let store = t.spec.event_store_ref.name.clone();
    let es = Api::<EventStore>::namespaced(client.clone(), &ns)
        .get_opt(&store)
        .await
        .ok()
        .flatten();
    let cms: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let reg = registry(&cms, &store).await;
    let pods: Vec<String> = Api::<Pod>::namespaced(client, &ns)
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|p| {
                    let st = p.status.clone().unwrap_or_default();
                    let ready = st
                        .conditions
                        .unwrap_or_default()
                        .into_iter()
                        .find(|c| c.type_ == "Ready")
                        .map(|c| c.status);
                    format!(
                        "{} phase={:?} node={:?} ready={ready:?}",
                        p.name_any(),
                        st.phase,
                        p.spec.as_ref().and_then(|s| s.node_name.clone())
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "Tenant {name} rv={:?} finalizers={:?} status: {}\nEventStore {store} status: {}\nregistry: {}\npods: {pods:?}",
        t.metadata.resource_version,
        t.finalizers(),
        serde_json::to_string(&t.status).unwrap_or_default(),
        serde_json::to_string(&es.and_then(|e| e.status)).unwrap_or_default(),
        serde_json::to_string(&reg).unwrap_or_default(),
    )
}

/// Fails if the operator ever replaced a token it issued itself (reason `TokenReissued`): a
/// reconcile working on a stale cached Tenant once took its own fresh token for a foreign one
/// and re-issued tokens again and again, so the registry never caught up.
async fn assert_no_reissue(client: &Client, ns: &str) {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let reissued: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("TokenReissued"))
        .map(|e| format!("{:?}: {:?}", e.involved_object.name, e.message))
        .collect();
    assert!(reissued.is_empty(), "tokens re-issued: {reissued:?}");
}

async fn registry(secrets: &Api<Secret>, store: &str) -> Option<RegistryFile> {
    let s = secrets.get_opt(&format!("{store}-registry")).await.ok()??;
    serde_json::from_slice(&s.data?.get("registry.json")?.0).ok()
}

/// The registry entry of `id`: (token digests, state).
async fn entry(cms: &Api<Secret>, store: &str, id: &str) -> Option<(Vec<String>, TenantState)> {
    let r = registry(cms, store).await?;
    let t = r.tenants.into_iter().find(|t| t.id == id)?;
    Some((t.token_sha256, t.state))
}

async fn secret_token(secrets: &Api<Secret>, name: &str) -> Option<String> {
    value(&secrets.get_opt(name).await.ok()??, "token")
}

/// Deletes every Tenant and EventStore of `ns` while the operator still runs (their finalizers
/// need it), so the namespace can go once the test stops the operator.
async fn remove_all(client: &Client, ns: &str) {
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), ns);
    let stores: Api<EventStore> = Api::namespaced(client.clone(), ns);
    for t in tenants.list(&ListParams::default()).await.unwrap().items {
        let _ = tenants
            .delete(&t.name_any(), &DeleteParams::default())
            .await;
    }
    for es in stores.list(&ListParams::default()).await.unwrap().items {
        let _ = stores
            .delete(&es.name_any(), &DeleteParams::default())
            .await;
    }
    wait_for("Tenants and EventStores gone", DEADLINE, || {
        let (tenants, stores) = (tenants.clone(), stores.clone());
        async move {
            let left = tenants.list(&ListParams::default()).await.ok()?.items.len()
                + stores.list(&ListParams::default()).await.ok()?.items.len();
            (left == 0).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn token_secret_registry_noop_rotation_suspend_and_delete() {
    let Some((ns, client)) = kube_namespace("tn-life").await else {
        return;
    };
    let n = ns.name().to_string();
    let pvs = create_volumes(&client, &n, "orders", 1).await;
    let op = Operator::start(&client, &n);
    let stores: Api<EventStore> = Api::namespaced(client.clone(), &n);
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &n);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &n);
    let cms: Api<Secret> = Api::namespaced(client.clone(), &n);
    stores
        .create(&PostParams::default(), &store("orders"))
        .await
        .unwrap();
    tenants
        .create(&PostParams::default(), &tenant("acme", "orders"))
        .await
        .unwrap();

    // Issue: the token only in the Secret, its digest in status and in the registry.
    let st = wait_tenant(&tenants, "acme", "acme Ready", |_, s| {
        s.phase == Some(Phase::Ready)
    })
    .await;
    assert_no_reissue(&client, &n).await;
    let secret = secrets.get("acme-credentials").await.unwrap();
    let token = value(&secret, "token").unwrap();
    assert_eq!(token.len(), 64, "32 random bytes, hex");
    assert_eq!(st.token_sha256, vec![sha256_hex(&token)]);
    assert_eq!(st.secret_name.as_deref(), Some("acme-credentials"));
    // The endpoint is the owning node's own address (no 421 hop for any HTTP client), written
    // once the registry places the tenant.
    let owner_url = format!("http://orders-0.orders-nodes.{n}.svc:8080");
    wait_for("the Secret's endpoint at the owning node", DEADLINE, || {
        let (secrets, owner_url) = (secrets.clone(), owner_url.clone());
        async move {
            let s = secrets.get("acme-credentials").await.ok()?;
            (value(&s, "endpoint").as_deref() == Some(owner_url.as_str())).then_some(())
        }
    })
    .await;
    assert_eq!(value(&secret, "tenantId").as_deref(), Some("acme"));
    assert_eq!(value(&secret, "backend").as_deref(), Some("selfHosted"));
    let live = tenants.get("acme").await.unwrap();
    assert_eq!(secret.owner_references()[0].uid, live.uid().unwrap());
    assert!(live.finalizers().iter().any(|f| f == FINALIZER));
    assert_eq!(
        st.location.as_ref().map(|l| l.name.as_str()),
        Some("orders-0")
    );
    assert_eq!(condition(&st, "Ready"), Some((true, "Ready".into())));
    assert_eq!(
        condition(&st, "Degraded"),
        Some((false, "AsExpected".into()))
    );
    let status_json = serde_json::to_string(&live.status).unwrap();
    assert!(
        !status_json.contains(&token),
        "the token leaked into status"
    );
    let (hashes, state) = entry(&cms, "orders", "acme").await.unwrap();
    assert_eq!(hashes, vec![sha256_hex(&token)]);
    assert_eq!(state, TenantState::Active);

    // No-op: waking the controller (a label on the EventStore it watches) writes nothing.
    let tenant_rv = live.resource_version();
    let secret_rv = secret.resource_version();
    stores
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"touched": "1"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        tenants.get("acme").await.unwrap().resource_version(),
        tenant_rv
    );
    assert_eq!(
        secrets
            .get("acme-credentials")
            .await
            .unwrap()
            .resource_version(),
        secret_rv
    );
    assert_eq!(
        secret_token(&secrets, "acme-credentials").await.unwrap(),
        token
    );

    // Rotation: a new token, both digests valid during the grace period (4 s here), then one.
    tenants
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"credentials": {"rotate": "r1"}}})),
        )
        .await
        .unwrap();
    let new_token = wait_for("rotated token in the Secret", DEADLINE, || {
        let secrets = secrets.clone();
        let old = token.clone();
        async move {
            let t = secret_token(&secrets, "acme-credentials").await?;
            (t != old).then_some(t)
        }
    })
    .await;
    let both = vec![sha256_hex(&new_token), sha256_hex(&token)];
    let st = tenants.get("acme").await.unwrap().status.unwrap();
    assert!(st.last_rotation.is_some());
    assert!(
        st.token_sha256 == both || st.token_sha256 == vec![sha256_hex(&new_token)],
        "digests after rotation: {:?}",
        st.token_sha256
    );
    wait_tenant(&tenants, "acme", "only the new digest", |_, s| {
        s.token_sha256 == vec![sha256_hex(&new_token)] && s.phase == Some(Phase::Ready)
    })
    .await;
    wait_for("registry has only the new digest", DEADLINE, || {
        let cms = cms.clone();
        let want = vec![sha256_hex(&new_token)];
        async move { (entry(&cms, "orders", "acme").await?.0 == want).then_some(()) }
    })
    .await;

    // Suspend, then resume.
    let set_suspend = |v: bool| {
        let tenants = tenants.clone();
        async move {
            tenants
                .patch(
                    "acme",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"spec": {"suspend": v}})),
                )
                .await
                .unwrap();
        }
    };
    set_suspend(true).await;
    let st = wait_tenant(&tenants, "acme", "acme Suspended", |t, s| {
        s.phase == Some(Phase::Suspended) && s.observed_generation == t.metadata.generation
    })
    .await;
    assert_eq!(condition(&st, "Ready"), Some((false, "Suspended".into())));
    assert_eq!(
        entry(&cms, "orders", "acme").await.unwrap().1,
        TenantState::Suspended
    );
    set_suspend(false).await;
    wait_tenant(&tenants, "acme", "acme Ready again", |t, s| {
        s.phase == Some(Phase::Ready) && s.observed_generation == t.metadata.generation
    })
    .await;
    assert_eq!(
        entry(&cms, "orders", "acme").await.unwrap().1,
        TenantState::Active
    );

    // Delete: once the Tenant is gone, its registry entry and its Secret are gone too.
    tenants
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("Tenant gone", DEADLINE, || {
        let tenants = tenants.clone();
        async move { tenants.get_opt("acme").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let reg = registry(&cms, "orders").await.unwrap();
    assert!(
        reg.tenants.iter().all(|t| t.id != "acme"),
        "deleted tenant still in the registry"
    );
    wait_for("Secret gone", DEADLINE, || {
        let secrets = secrets.clone();
        async move {
            let s = secrets.get_opt("acme-credentials").await.ok()?;
            s.is_none_or(|s| s.metadata.deletion_timestamp.is_some())
                .then_some(())
        }
    })
    .await;

    remove_all(&client, &n).await;
    op.stop().await;
    ns.cleanup().await.unwrap();
    delete_volumes(&client, &pvs).await;
}

/// Issue 19 defect 4: two Tenants with one `spec.tenantId` on one store. The first (earliest
/// creationTimestamp) keeps working: Ready, its digest the registry's only entry for the id, and
/// a rotation of its token still reaches the registry; the later one is Degraded /
/// DuplicateTenantId with no digest and no registry entry, and deleting it leaves the first's
/// entry in place.
#[tokio::test]
async fn duplicate_tenant_id_keeps_the_first_tenant_working() {
    let Some((ns, client)) = kube_namespace("tn-dup").await else {
        return;
    };
    let n = ns.name().to_string();
    let pvs = create_volumes(&client, &n, "orders", 1).await;
    let op = Operator::start(&client, &n);
    let stores: Api<EventStore> = Api::namespaced(client.clone(), &n);
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &n);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &n);
    let cms: Api<Secret> = Api::namespaced(client.clone(), &n);
    stores
        .create(&PostParams::default(), &store("orders"))
        .await
        .unwrap();
    let with_id = |name: &str| {
        let mut t = tenant(name, "orders");
        t.spec.tenant_id = "acme".to_string();
        t
    };
    tenants
        .create(&PostParams::default(), &with_id("first"))
        .await
        .unwrap();
    wait_tenant(&tenants, "first", "first Ready", |_, s| {
        s.phase == Some(Phase::Ready)
    })
    .await;
    let token = secret_token(&secrets, "first-credentials").await.unwrap();
    // creationTimestamp has whole seconds: the second one is created strictly later (its name
    // would not win a tie either: "first" < "second").
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tenants
        .create(&PostParams::default(), &with_id("second"))
        .await
        .unwrap();
    let st = wait_tenant(&tenants, "second", "second Degraded", |_, s| {
        s.phase == Some(Phase::Degraded)
    })
    .await;
    assert_eq!(
        condition(&st, "Degraded"),
        Some((true, "DuplicateTenantId".into())),
        "{st:?}"
    );
    assert_eq!(
        condition(&st, "Ready"),
        Some((false, "DuplicateTenantId".into()))
    );
    assert!(st.token_sha256.is_empty(), "a duplicate's digest: {st:?}");
    let first = tenants.get("first").await.unwrap().status.unwrap();
    assert_eq!(first.phase, Some(Phase::Ready));
    let reg = registry(&cms, "orders").await.unwrap();
    let ids: Vec<&str> = reg.tenants.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec!["acme"], "the registry lists the id once");
    assert_eq!(reg.tenants[0].token_sha256, vec![sha256_hex(&token)]);

    // A rotation of the first still reaches the registry.
    tenants
        .patch(
            "first",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"credentials": {"rotate": "r1"}}})),
        )
        .await
        .unwrap();
    let new_token = wait_for("rotated token in the Secret", DEADLINE, || {
        let secrets = secrets.clone();
        let old = token.clone();
        async move {
            let t = secret_token(&secrets, "first-credentials").await?;
            (t != old).then_some(t)
        }
    })
    .await;
    wait_for("registry has the rotated digest", DEADLINE, || {
        let cms = cms.clone();
        let want = sha256_hex(&new_token);
        async move {
            let r = registry(&cms, "orders").await?;
            (r.tenants.len() == 1 && r.tenants[0].token_sha256.first() == Some(&want)).then_some(())
        }
    })
    .await;
    let st = wait_tenant(&tenants, "second", "second still Degraded", |_, s| {
        s.phase == Some(Phase::Degraded)
    })
    .await;
    assert!(st.token_sha256.is_empty());

    // Deleting the duplicate leaves the first's entry (and data) alone.
    tenants
        .delete("second", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("second gone", DEADLINE, || {
        let tenants = tenants.clone();
        async move {
            tenants
                .get_opt("second")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    let (hashes, state) = entry(&cms, "orders", "acme").await.unwrap();
    assert_eq!(hashes.first(), Some(&sha256_hex(&new_token)));
    assert_eq!(state, TenantState::Active);
    assert_eq!(
        tenants.get("first").await.unwrap().status.unwrap().phase,
        Some(Phase::Ready)
    );

    remove_all(&client, &n).await;
    op.stop().await;
    ns.cleanup().await.unwrap();
    delete_volumes(&client, &pvs).await;
}

#[tokio::test]
async fn missing_store_is_degraded_until_it_appears() {
    let Some((ns, client)) = kube_namespace("tn-missing").await else {
        return;
    };
    let n = ns.name().to_string();
    let pvs = create_volumes(&client, &n, "later", 1).await;
    let op = Operator::start(&client, &n);
    let stores: Api<EventStore> = Api::namespaced(client.clone(), &n);
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &n);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &n);
    tenants
        .create(&PostParams::default(), &tenant("early", "later"))
        .await
        .unwrap();
    let st = wait_tenant(&tenants, "early", "Degraded EventStoreNotFound", |_, s| {
        s.phase == Some(Phase::Degraded)
    })
    .await;
    assert_eq!(
        condition(&st, "Degraded"),
        Some((true, "EventStoreNotFound".into()))
    );
    assert_eq!(
        condition(&st, "Ready"),
        Some((false, "EventStoreNotFound".into()))
    );
    assert!(secrets
        .get_opt("early-credentials")
        .await
        .unwrap()
        .is_none());

    stores
        .create(&PostParams::default(), &store("later"))
        .await
        .unwrap();
    let st = wait_tenant(
        &tenants,
        "early",
        "Ready after the store appears",
        |_, s| s.phase == Some(Phase::Ready),
    )
    .await;
    assert_eq!(
        condition(&st, "Degraded"),
        Some((false, "AsExpected".into()))
    );
    let token = secret_token(&secrets, "early-credentials").await.unwrap();
    assert_eq!(st.token_sha256, vec![sha256_hex(&token)]);

    remove_all(&client, &n).await;
    op.stop().await;
    ns.cleanup().await.unwrap();
    delete_volumes(&client, &pvs).await;
}

/// Where the pod runner of the test in namespace `ns` keeps the pods' files.
fn runner_state_dir(ns: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("allsource-{ns}-runner"))
}

/// Stops the pods of `ns` while the runner still plays their kubelet, then the operator, the
/// runner and its Node, and removes the runner's state (pods' data dirs and logs).
async fn stop_runner(
    client: &Client,
    ns: &str,
    op: Operator,
    runner: tokio::task::JoinHandle<()>,
    node: &str,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    remove_all(client, ns).await;
    wait_for("pods gone", DEADLINE, || {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await;
    op.stop().await;
    runner.abort();
    let _ = runner.await;
    let _ = Api::<Node>::all(client.clone())
        .delete(node, &DeleteParams::default())
        .await;
    let _ = std::fs::remove_dir_all(runner_state_dir(ns));
}

/// Starts the pod runner in-process on its own Node; returns the task and the node name.
fn start_runner(client: &Client, ns: &str) -> (tokio::task::JoinHandle<()>, String) {
    let state_dir = runner_state_dir(ns);
    let node = format!("runner-{ns}");
    let cfg = podrunner::RunnerConfig {
        node_name: node.clone(),
        binary: allsource_tests::bins::store_node(),
        image_match: "store-node".into(),
        state_dir,
    };
    let client = client.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = podrunner::run(client, cfg).await {
            eprintln!("pod runner stopped: {e}");
        }
    });
    (task, node)
}

#[tokio::test]
async fn real_store_node_accepts_the_secret_token_and_isolates_tenants() {
    let Some((ns, client)) = kube_namespace("tn-e2e").await else {
        return;
    };
    let n = ns.name().to_string();
    let pvs = create_volumes(&client, &n, "orders", 1).await;
    let (runner, node) = start_runner(&client, &n);
    let op = Operator::start(&client, &n);
    let stores: Api<EventStore> = Api::namespaced(client.clone(), &n);
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &n);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &n);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &n);
    let mut es = store("orders");
    es.spec.self_hosted.as_mut().unwrap().pod_template = Some(
        serde_json::from_value(serde_json::json!({
            "nodeSelector": {"kubernetes.io/hostname": node, "allsource.io/pod-runner": "true"},
            "tolerations": [podrunner::toleration()]
        }))
        .unwrap(),
    );
    // A limit of the spec, to be enforced by the real node through node.json.
    es.spec.self_hosted.as_mut().unwrap().limits.max_event_bytes = Some(2048);
    stores.create(&PostParams::default(), &es).await.unwrap();
    for name in ["alice", "mallory"] {
        tenants
            .create(&PostParams::default(), &tenant(name, "orders"))
            .await
            .unwrap();
    }
    for name in ["alice", "mallory"] {
        wait_tenant(&tenants, name, &format!("{name} Ready"), |_, s| {
            s.phase == Some(Phase::Ready)
        })
        .await;
    }
    assert_no_reissue(&client, &n).await;
    let alice = secret_token(&secrets, "alice-credentials").await.unwrap();
    let mallory = secret_token(&secrets, "mallory-credentials").await.unwrap();

    // The pod runner publishes each pod's loopback port (the Secret's endpoint is in-cluster DNS).
    let port: u16 = wait_for("runner port of orders-0", DEADLINE, || {
        let pods = pods.clone();
        async move {
            let p = pods.get_opt("orders-0").await.ok()??;
            p.annotations()
                .get(podrunner::PORT_ANNOTATION)?
                .parse()
                .ok()
        }
    })
    .await;
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let body = serde_json::json!({"events": [{
        "eventId": "00000000-0000-4000-8000-000000000001",
        "eventType": "OrderPlaced",
        "data": {"total": 42}
    }]});
    // The node reloads the registry within a few seconds of the registry Secret change.
    wait_for("append with alice's token", DEADLINE, || {
        let (http, url, alice, body) = (http.clone(), url.clone(), alice.clone(), body.clone());
        async move {
            let r = http
                .post(format!("{url}/v1/streams/order-1/events"))
                .bearer_auth(&alice)
                .json(&body)
                .send()
                .await
                .ok()?;
            (r.status().as_u16() == 201).then_some(())
        }
    })
    .await;
    let read = |token: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http
                .get(format!("{url}/v1/streams/order-1/events"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            (code, r.text().await.unwrap_or_default())
        }
    };
    let (code, text) = read(alice.clone()).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("OrderPlaced"), "{text}");
    let (code, text) = read(mallory.clone()).await;
    assert!(
        !text.contains("OrderPlaced"),
        "mallory read alice's event: {code} {text}"
    );
    let (code, _) = read("not-a-token".to_string()).await;
    assert_eq!(code, 401);

    // spec.selfHosted.limits.maxEventBytes (2048) reached the node: it reports it, takes an
    // event of 1 KiB and refuses one of 4 KiB with 413 too_large.
    let info: serde_json::Value = http
        .get(format!("{url}/v1/info"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["limits"]["maxEventBytes"], 2048, "{info}");
    for (i, size, want) in [(2u128, 1024, 201), (3, 4096, 413)] {
        let body = serde_json::json!({"events": [{
            "eventId": uuid::Uuid::from_u128(i),
            "eventType": "Blob",
            "dataBase64": base64::engine::general_purpose::STANDARD.encode(vec![7u8; size]),
        }]});
        let r = http
            .post(format!("{url}/v1/streams/blobs/events"))
            .bearer_auth(&alice)
            .json(&body)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(code, want, "an event of {size} bytes: {text}");
        if want == 413 {
            assert!(
                text.contains("too_large") && text.contains("2048"),
                "{text}"
            );
        }
    }

    // Rotation, seen by the real node: the old token keeps working for the whole grace period
    // (set to 20 s here) next to the new one, then stops. Mallory has no stream order-1, so an
    // accepted token reads 404 and a refused one 401.
    const GRACE: Duration = Duration::from_secs(20);
    tenants
        .patch(
            "mallory",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"allsource.io/rotation-grace-seconds": GRACE.as_secs().to_string()}},
                "spec": {"credentials": {"rotate": "r1"}}})),
        )
        .await
        .unwrap();
    let rotated_at = Instant::now();
    let mallory_new = wait_for("mallory's rotated token in the Secret", DEADLINE, || {
        let secrets = secrets.clone();
        let old = mallory.clone();
        async move {
            let t = secret_token(&secrets, "mallory-credentials").await?;
            (t != old).then_some(t)
        }
    })
    .await;
    wait_for("the node accepts the new token", DEADLINE, || {
        let read = &read;
        let t = mallory_new.clone();
        async move { (read(t).await.0 == 404).then_some(()) }
    })
    .await;
    let (code, text) = read(mallory.clone()).await;
    let in_grace = rotated_at.elapsed();
    assert!(
        in_grace < GRACE,
        "the new token took {in_grace:?} to work, longer than the grace period"
    );
    assert_eq!(
        code, 404,
        "the old token stopped {in_grace:?} after the rotation, within the {GRACE:?} grace period: {text}"
    );
    wait_for(
        "the old token rejected after the grace period",
        DEADLINE,
        || {
            let read = &read;
            let t = mallory.clone();
            async move { (read(t).await.0 == 401).then_some(()) }
        },
    )
    .await;
    let stopped = rotated_at.elapsed();
    println!("rotation on a real node: new token works, old one refused {stopped:?} after the rotation (grace {GRACE:?})");
    assert!(
        stopped + Duration::from_secs(1) >= GRACE,
        "the old token stopped after {stopped:?}, before the {GRACE:?} grace period ended"
    );
    assert_eq!(read(mallory_new.clone()).await.0, 404);

    // Deleting alice's Tenant takes her token away on the node.
    tenants
        .delete("alice", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("alice's token rejected", DEADLINE, || {
        let read = &read;
        let alice = alice.clone();
        async move { (read(alice).await.0 == 401).then_some(()) }
    })
    .await;

    stop_runner(&client, &n, op, runner, &node).await;
    ns.cleanup().await.unwrap();
    delete_volumes(&client, &pvs).await;
}

/// One event for an append body.
fn one_event(id: u128) -> serde_json::Value {
    serde_json::json!({"events": [{
        "eventId": uuid::Uuid::from_u128(id),
        "eventType": "OrderPlaced",
        "data": {"n": id}
    }]})
}

/// Appends one event with `token` once the node accepts the token (registry reload).
async fn append_when_accepted(http: &reqwest::Client, url: &str, token: &str, id: u128) {
    wait_for("append accepted", DEADLINE, || {
        let (http, url, token) = (http.clone(), url.to_string(), token.to_string());
        async move {
            let r = http
                .post(format!("{url}/v1/streams/order-{id}/events"))
                .bearer_auth(&token)
                .json(&one_event(id))
                .send()
                .await
                .ok()?;
            (r.status().as_u16() == 201).then_some(())
        }
    })
    .await;
}

/// How many events the node serves to `token`, once it accepts the token.
async fn events_when_accepted(http: &reqwest::Client, url: &str, token: &str) -> usize {
    wait_for("read accepted", DEADLINE, || {
        let (http, url, token) = (http.clone(), url.to_string(), token.to_string());
        async move {
            let r = http
                .get(format!("{url}/v1/events?from=0&limit=100"))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?;
            if r.status().as_u16() != 200 {
                return None;
            }
            let v: serde_json::Value = r.json().await.ok()?;
            Some(v["events"].as_array()?.len())
        }
    })
    .await
}

async fn create_tenant(tenants: &Api<Tenant>, name: &str, policy: DeletionPolicy) -> Tenant {
    let mut t = tenant(name, "orders");
    t.spec.deletion_policy = policy;
    tenants.create(&PostParams::default(), &t).await.unwrap()
}

async fn delete_and_wait_gone(tenants: &Api<Tenant>, name: &str) {
    tenants
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(&format!("Tenant {name} gone"), DEADLINE, || {
        let tenants = tenants.clone();
        let name = name.to_string();
        async move { tenants.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn deletion_policy_delete_erases_the_tenants_events_on_the_node_and_retain_keeps_them() {
    let Some((ns, client)) = kube_namespace("tn-purge").await else {
        return;
    };
    let n = ns.name().to_string();
    let pvs = create_volumes(&client, &n, "orders", 1).await;
    let (runner, node) = start_runner(&client, &n);
    let op = Operator::start(&client, &n);
    let stores: Api<EventStore> = Api::namespaced(client.clone(), &n);
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &n);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &n);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &n);
    let cms: Api<Secret> = Api::namespaced(client.clone(), &n);
    let mut es = store("orders");
    es.spec.self_hosted.as_mut().unwrap().pod_template = Some(
        serde_json::from_value(serde_json::json!({
            "nodeSelector": {"kubernetes.io/hostname": node, "allsource.io/pod-runner": "true"},
            "tolerations": [{"key": "allsource.io/pod-runner", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]
        }))
        .unwrap(),
    );
    stores.create(&PostParams::default(), &es).await.unwrap();
    create_tenant(&tenants, "alice", DeletionPolicy::Delete).await;
    create_tenant(&tenants, "bob", DeletionPolicy::Delete).await;
    create_tenant(&tenants, "carol", DeletionPolicy::Retain).await;
    for name in ["alice", "bob", "carol"] {
        wait_tenant(&tenants, name, &format!("{name} Ready"), |_, s| {
            s.phase == Some(Phase::Ready)
        })
        .await;
    }
    assert_no_reissue(&client, &n).await;
    let port: u16 = wait_for("runner port of orders-0", DEADLINE, || {
        let pods = pods.clone();
        async move {
            let p = pods.get_opt("orders-0").await.ok()??;
            p.annotations()
                .get(podrunner::PORT_ANNOTATION)?
                .parse()
                .ok()
        }
    })
    .await;
    let url = format!("http://127.0.0.1:{port}");
    let published = registry(&cms, "orders").await.unwrap().nodes["orders-0"].clone();
    let http = reqwest::Client::new();
    let mut tokens = std::collections::HashMap::new();
    for (i, name) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let token = secret_token(&secrets, &format!("{name}-credentials"))
            .await
            .unwrap();
        for k in 0..3 {
            append_when_accepted(&http, &url, &token, (i * 10 + k) as u128).await;
        }
        assert_eq!(events_when_accepted(&http, &url, &token).await, 3);
        tokens.insert(name, token);
    }

    // Delete with the node out of the operator's reach: the Tenant stays and says why.
    let dead = format!("http://127.0.0.1:{}", allsource_tests::bins::free_port());
    op.ctx.set_node_url(&published, &dead);
    tenants
        .delete("alice", &DeleteParams::default())
        .await
        .unwrap();
    wait_tenant(
        &tenants,
        "alice",
        "alice waits for an unreachable node",
        |_, s| condition(s, "Degraded") == Some((true, "NodeUnreachable".to_string())),
    )
    .await;
    // The node refuses her token with 410 (once it reloaded the registry) while the Tenant waits.
    wait_for("alice's token answered 410", DEADLINE, || {
        let (http, url, token) = (http.clone(), url.clone(), tokens["alice"].clone());
        async move {
            let r = http
                .get(format!("{url}/v1/stats"))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?;
            (r.status().as_u16() == 410).then_some(())
        }
    })
    .await;
    assert!(tenants.get_opt("alice").await.unwrap().is_some());

    // Reachable again: the node reports the purge done and the Tenant goes.
    op.ctx.set_node_url(&published, &url);
    wait_for("Tenant alice gone", DEADLINE, || {
        let tenants = tenants.clone();
        async move { tenants.get_opt("alice").await.ok()?.is_none().then_some(()) }
    })
    .await;
    assert_eq!(
        events_when_accepted(&http, &url, &tokens["bob"]).await,
        3,
        "another tenant's events must stay"
    );
    // A Tenant with the same tenantId starts empty: nothing of alice's events is left.
    create_tenant(&tenants, "alice", DeletionPolicy::Delete).await;
    let alice2 = wait_for("alice's new token", DEADLINE, || {
        let (secrets, old) = (secrets.clone(), tokens["alice"].clone());
        async move {
            secret_token(&secrets, "alice-credentials")
                .await
                .filter(|t| *t != old)
        }
    })
    .await;
    assert_eq!(events_when_accepted(&http, &url, &alice2).await, 0);
    let stats: serde_json::Value = http
        .get(format!("{url}/v1/stats"))
        .bearer_auth(&alice2)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["events"], 0, "{stats}");
    assert_eq!(stats["streams"], 0, "{stats}");

    // Retain: the Tenant goes at once, its events stay and come back with the tenantId.
    delete_and_wait_gone(&tenants, "carol").await;
    create_tenant(&tenants, "carol", DeletionPolicy::Retain).await;
    let carol2 = wait_for("carol's new token", DEADLINE, || {
        let (secrets, old) = (secrets.clone(), tokens["carol"].clone());
        async move {
            secret_token(&secrets, "carol-credentials")
                .await
                .filter(|t| *t != old)
        }
    })
    .await;
    assert_eq!(events_when_accepted(&http, &url, &carol2).await, 3);
    assert_eq!(events_when_accepted(&http, &url, &tokens["bob"]).await, 3);

    stop_runner(&client, &n, op, runner, &node).await;
    ns.cleanup().await.unwrap();
    delete_volumes(&client, &pvs).await;
}
