//! The EventStore controller: for selfHosted stores it reads the Tenants of the store from a
//! cache (one watch, [`crate::controllers::trigger`]; only changes of what the registry reads
//! wake a store, so Tenant usage or condition updates cost nothing here), plans
//! placement (pure), builds the ServiceAccount, ConfigMap, Services, PodDisruptionBudget and
//! StatefulSet (pure builders), applies them with server-side apply (skipping no-ops), and
//! writes status only when it changed. Deletion runs behind the `allsource.io/cleanup` finalizer.
//! Cloud backends are delegated to [`cloud`]. It must never call into store-node pods.

pub mod cleanup;
pub mod cloud;
pub mod placement;
pub mod status;
pub mod volumes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use parking_lot::Mutex;
use tracing::Instrument;

use super::apply::apply_for;
use super::trigger::{hash_json, reflected_changes};
use super::{error_action, Context, ReconcileError, CONFLICT_RECHECK};
use crate::api::eventstore::{Backend, EventStoreStatus};
use crate::api::{
    set_condition, Condition, EventStore, Phase, Tenant, CONDITION_READY, FIELD_MANAGER, FINALIZER,
};
use crate::controllers::tenant::duplicate;
use crate::resources::{
    configmap, hash_of, pdb, service, serviceaccount, statefulset, tls_secret_name,
};
use placement::TenantRequest;

const KIND: &str = "EventStore";
/// Periodic re-check of a healthy store (reads only; writes happen only on change).
const RESYNC: Duration = Duration::from_secs(600);

/// An Api over one namespace, or over all of them.
fn scoped<K>(client: &kube::Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What one EventStore controller (one namespace, or all of them) reconciles with.
pub(crate) struct State {
    /// Shared operator context.
    pub ctx: Arc<Context>,
    /// Every Tenant of the watched namespace(s), kept by the controller's Tenant watch.
    tenants: Store<Tenant>,
}

/// What of a Tenant the registry and placement of its store read: a change of anything else
/// (usage, conditions, phase) must not wake the EventStore controller.
fn registry_inputs(t: &Tenant) -> u64 {
    hash_json(&(
        &t.spec,
        t.status.as_ref().map(|s| &s.token_sha256),
        t.metadata.deletion_timestamp.is_some(),
    ))
}

/// The stores a Tenant event concerns: its store, and the one it referenced before when
/// `spec.eventStoreRef` changed (that store must drop it). `previous` remembers the last store
/// of each Tenant.
fn stores_of(
    t: &Tenant,
    previous: &mut HashMap<ObjectRef<Tenant>, String>,
) -> Vec<ObjectRef<EventStore>> {
    let Some(ns) = t.namespace() else {
        return Vec::new();
    };
    let store = t.spec.event_store_ref.name.clone();
    let mut out = vec![ObjectRef::<EventStore>::new(&store).within(&ns)];
    if let Some(old) = previous.insert(ObjectRef::from_obj(t), store.clone()) {
        if old != store {
            out.push(ObjectRef::<EventStore>::new(&old).within(&ns));
        }
    }
    out
}

/// Runs the EventStore controller (one per watched namespace) until it stops.
pub async fn run(ctx: Arc<Context>) {
    let namespaces: Vec<Option<String>> = match &ctx.scope {
        super::Scope::All => vec![None],
        super::Scope::Namespaces(ns) => ns.iter().cloned().map(Some).collect(),
    };
    let mut controllers = Vec::new();
    for ns in namespaces {
        let c = &ctx.client;
        let ns = ns.as_deref();
        let owned =
            watcher::Config::default().labels("app.kubernetes.io/managed-by=allsource-operator");
        let (tenants, tenant_changes) = reflected_changes(
            scoped::<Tenant>(c, ns),
            watcher::Config::default(),
            registry_inputs,
        );
        let previous = Mutex::new(HashMap::new());
        let state = Arc::new(State {
            ctx: ctx.clone(),
            tenants,
        });
        let controller = Controller::new(scoped::<EventStore>(c, ns), watcher::Config::default())
            .owns(scoped::<StatefulSet>(c, ns), owned.clone())
            .owns(scoped::<Deployment>(c, ns), owned.clone())
            .owns(scoped::<Service>(c, ns), owned.clone())
            .owns(scoped::<ConfigMap>(c, ns), owned.clone())
            .owns(
                scoped::<Secret>(c, ns),
                watcher::Config::default().labels(&format!(
                    "{}={}",
                    crate::resources::ROLE_LABEL,
                    crate::resources::REGISTRY_ROLE
                )),
            )
            .owns(scoped::<PodDisruptionBudget>(c, ns), owned.clone())
            .owns(scoped::<ServiceAccount>(c, ns), owned)
            .watches_stream(tenant_changes, move |t: Tenant| {
                stores_of(&t, &mut previous.lock())
            })
            .shutdown_on_signal()
            .run(reconcile, on_error, state)
            .for_each(|_| futures::future::ready(()));
        controllers.push(controller);
    }
    futures::future::join_all(controllers).await;
}

fn key(es: &EventStore) -> String {
    // The kind is part of the key: a Tenant and an EventStore may share a name, not a backoff.
    format!(
        "{KIND}/{}/{}",
        es.namespace().unwrap_or_default(),
        es.name_any()
    )
}

fn on_error(es: Arc<EventStore>, err: &ReconcileError, state: Arc<State>) -> Action {
    error_action(&state.ctx, &key(&es), err)
}

async fn reconcile(es: Arc<EventStore>, state: Arc<State>) -> Result<Action, ReconcileError> {
    let ctx = state.ctx.clone();
    let span = tracing::info_span!("reconcile", kind = KIND, namespace = %es.namespace().unwrap_or_default(), name = %es.name_any(), generation = es.metadata.generation.unwrap_or(0));
    let started = Instant::now();
    let result = reconcile_inner(es.clone(), &state).instrument(span).await;
    ctx.metrics.reconciled(
        KIND,
        started.elapsed(),
        result.as_ref().err().map(ReconcileError::class),
    );
    if result.is_ok() {
        ctx.succeeded(&key(&es));
    }
    result
}

async fn reconcile_inner(es: Arc<EventStore>, state: &State) -> Result<Action, ReconcileError> {
    let ctx = &state.ctx;
    let ns = es.namespace().ok_or(ReconcileError::NoNamespace)?;
    let api: Api<EventStore> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, es, |event| async {
        match event {
            FinalizerEvent::Apply(es) => match apply_store(&es, state, &ns).await {
                Err(ReconcileError::NotOwned(m)) => {
                    park(&es, ctx, &ns, "ResourceConflict", m, CONFLICT_RECHECK).await
                }
                Err(ReconcileError::Invalid(m)) => {
                    park(&es, ctx, &ns, "InvalidSpec", m, RESYNC).await
                }
                Err(ReconcileError::Refused { reason, message }) => {
                    park(&es, ctx, &ns, reason, message, RESYNC).await
                }
                other => other,
            },
            FinalizerEvent::Cleanup(es) => match siloed_tenants_left(&es, state, &ns).await? {
                // A cloud store's siloed tenants have schemas, tables or databases of their own
                // that only their own finalizers remove: the store waits for them.
                Some(names) => {
                    let message = format!(
                        "siloed Tenants {} of this store still exist: delete them first (each \
                         Tenant's deletionPolicy decides about its own schema, table or \
                         database), the store is deleted after them",
                        names.join(", ")
                    );
                    park(&es, ctx, &ns, "TenantsRemain", message.clone(), RESYNC).await?;
                    // An error keeps the finalizer; the Tenants' deletions wake the store.
                    Err(ReconcileError::Refused {
                        reason: "TenantsRemain",
                        message,
                    })
                }
                None => cleanup::run(&es, ctx, &ns).await,
            },
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => ReconcileError::Finalizer(other.to_string()),
    })
}

/// The siloed Tenants of the cloud store `es` that are not being deleted themselves, sorted (None
/// when there are none, and always for selfHosted stores, whose tenants live on its volumes).
async fn siloed_tenants_left(
    es: &EventStore,
    state: &State,
    ns: &str,
) -> Result<Option<Vec<String>>, ReconcileError> {
    if es.self_hosted().is_some() {
        return Ok(None);
    }
    crate::controllers::cache_ready(&state.tenants, "Tenant").await?;
    let mut names: Vec<String> = state
        .tenants
        .state()
        .iter()
        .filter(|t| {
            t.namespace().as_deref() == Some(ns)
                && t.spec.event_store_ref.name == es.name_any()
                && t.spec.placement == crate::api::tenant::Placement::Siloed
                && t.metadata.deletion_timestamp.is_none()
        })
        .map(|t| t.name_any())
        .collect();
    names.sort();
    Ok((!names.is_empty()).then_some(names))
}

/// Parks a store whose objects cannot be applied as they are (one of them belongs to someone
/// else, or the apiserver refuses it): Degraded and not Ready with `reason` and the message, a
/// Warning Event when the reason is new, and a re-check after `recheck` (an object we do not
/// own wakes nothing when it goes away).
async fn park(
    es: &EventStore,
    ctx: &Context,
    ns: &str,
    reason: &str,
    message: String,
    recheck: Duration,
) -> Result<Action, ReconcileError> {
    let mut status = es.status.clone().unwrap_or_default();
    let before = status
        .conditions
        .iter()
        .any(|c| c.type_ == crate::api::CONDITION_DEGRADED && c.is_true() && c.reason == reason);
    status.phase = Some(Phase::Degraded);
    status.observed_generation = es.metadata.generation;
    set_condition(
        &mut status.conditions,
        Condition::new(
            crate::api::CONDITION_DEGRADED,
            true,
            reason,
            message.clone(),
        ),
    );
    set_condition(
        &mut status.conditions,
        Condition::new(CONDITION_READY, false, reason, message.clone()),
    );
    if write_status(es, ctx, ns, status).await? && !before {
        ctx.publish(es, EventType::Warning, reason, "Reconcile", message)
            .await;
    }
    Ok(Action::requeue(recheck))
}

/// Writes `status` with server-side apply when it differs from the live status.
pub(crate) async fn write_status(
    es: &EventStore,
    ctx: &Context,
    ns: &str,
    status: EventStoreStatus,
) -> Result<bool, ReconcileError> {
    if es.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let api: Api<EventStore> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": "allsource.io/v1alpha1",
        "kind": "EventStore",
        "status": status,
    });
    ctx.metrics.wrote("EventStore/status", "PATCH");
    api.patch_status(
        &es.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}

async fn apply_store(es: &EventStore, state: &State, ns: &str) -> Result<Action, ReconcileError> {
    let ctx = &*state.ctx;
    if es.spec.suspend {
        let mut status = es.status.clone().unwrap_or_default();
        status.phase = Some(Phase::Suspended);
        status.observed_generation = es.metadata.generation;
        set_condition(
            &mut status.conditions,
            Condition::new(
                CONDITION_READY,
                false,
                "Suspended",
                "spec.suspend is true; nothing is reconciled",
            ),
        );
        write_status(es, ctx, ns, status).await?;
        return Ok(Action::await_change());
    }
    // Images: only from the repositories the platform team allows.
    if let Some(sh) = es.self_hosted() {
        ctx.check_image("spec.selfHosted.image", &sh.image)?;
    }
    if let Some(gw) = es.spec.gateway.as_ref().filter(|g| g.enabled) {
        ctx.check_image("spec.gateway.image", &gw.image)?;
    }
    let Some(sh) = es.self_hosted().cloned() else {
        return match es.spec.backend {
            Backend::SelfHosted => {
                // The CRD's CEL rules prevent this; an apiserver without them could still let it through.
                let mut status = es.status.clone().unwrap_or_default();
                status.phase = Some(Phase::Degraded);
                status.observed_generation = es.metadata.generation;
                set_condition(
                    &mut status.conditions,
                    Condition::new(
                        crate::api::CONDITION_DEGRADED,
                        true,
                        "InvalidSpec",
                        "backend selfHosted needs spec.selfHosted",
                    ),
                );
                write_status(es, ctx, ns, status).await?;
                Ok(Action::await_change())
            }
            _ => cloud::reconcile(es, ctx, ns).await,
        };
    };

    // Fetch: the tenants of this store, from the cache. Until the first list is complete the
    // registry would miss tenants (and take their access away): wait for it.
    crate::controllers::cache_ready(&state.tenants, "Tenant").await?;
    let of_store: Vec<Tenant> = state
        .tenants
        .state()
        .iter()
        .filter(|t| {
            t.namespace().as_deref() == Some(ns) && t.spec.event_store_ref.name == es.name_any()
        })
        .map(|t| Tenant::clone(t))
        .collect();
    // One entry per tenant id: a later Tenant with an id another one holds never enters (the
    // nodes refuse a registry listing an id twice); it is Degraded / DuplicateTenantId.
    let tenants: Vec<Tenant> = duplicate::holders(&of_store)
        .into_iter()
        // A Tenant deleted with its data stays placed, as `purging`, until its finalizer saw
        // the nodes erase it.
        .filter(|t| t.metadata.deletion_timestamp.is_none() || configmap::purging(t))
        .cloned()
        .collect();
    let requests: Vec<TenantRequest> = tenants
        .iter()
        .map(|t| TenantRequest {
            tenant_id: t.spec.tenant_id.clone(),
            placement: t.spec.placement,
        })
        .collect();
    let previous = es.status.clone().unwrap_or_default();
    // What the nodes' volumes remember of placement: a store re-created over retained volumes,
    // or a tenant re-created, goes back to the node that holds its events.
    let pvcs = volumes::list(es, ctx, ns).await?;
    let remembered = volumes::remembered_placement(es, &pvcs);
    let known = |status: &EventStoreStatus| {
        let mut all = remembered.clone();
        all.extend(status.placement.clone());
        all
    };

    // Plan (pure).
    let mut plan = placement::plan(&es.name_any(), sh.replicas, &known(&previous), &requests);
    // A placement change is decided on the apiserver's copy of the store, never on the cached
    // one: the cache may lack our own last status write, and a tenant placed there would look
    // new and could land on another node than the one holding its events (or a scale-down
    // could pass a node that owns a tenant). The steady state (no change) needs no extra read.
    let fresh;
    let (es, sh, previous) = if plan.placement == previous.placement {
        (es, sh, previous)
    } else {
        match Api::<EventStore>::namespaced(ctx.client.clone(), ns)
            .get_opt(&es.name_any())
            .await?
        {
            None => return Ok(Action::await_change()),
            Some(f) if f.resource_version() != es.resource_version() => {
                fresh = f;
                let sh = fresh.self_hosted().cloned().unwrap_or(sh);
                let previous = fresh.status.clone().unwrap_or_default();
                plan =
                    placement::plan(&fresh.name_any(), sh.replicas, &known(&previous), &requests);
                (&fresh, sh, previous)
            }
            Some(_) => (es, sh, previous),
        }
    };

    // Validate what the pods will mount: a TLS Secret the nodes cannot serve from would leave
    // them failing at start (or waiting for the volume) with nothing in the store's status.
    if let Some(name) = tls_secret_name(es) {
        let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await?;
        if let Some(problem) =
            crate::controllers::nodetls::tls_secret_problem(name, secret.as_ref())
        {
            return park(
                es,
                ctx,
                ns,
                "TLSSecretInvalid",
                problem,
                Duration::from_secs(30),
            )
            .await;
        }
    }

    // Build (pure).
    let node_cfg = configmap::node_config(&sh);
    let registry = registry(es, plan.replicas, &tenants, &plan.placement);
    let sts_desired = statefulset::build(es, &sh, plan.replicas, &hash_of(&node_cfg));

    // Apply, skipping no-ops.
    let c = &ctx.client;
    apply_for(
        ctx,
        es,
        &Api::<ServiceAccount>::namespaced(c.clone(), ns),
        serviceaccount::build(es),
    )
    .await?;
    apply_for(
        ctx,
        es,
        &Api::<ConfigMap>::namespaced(c.clone(), ns),
        configmap::build(es, &node_cfg),
    )
    .await?;
    apply_for(
        ctx,
        es,
        &Api::<Secret>::namespaced(c.clone(), ns),
        configmap::registry_secret(es, &registry),
    )
    .await?;
    let svc_api = Api::<Service>::namespaced(c.clone(), ns);
    apply_for(ctx, es, &svc_api, service::headless(es)).await?;
    apply_for(ctx, es, &svc_api, service::client(es)).await?;
    apply_for(
        ctx,
        es,
        &Api::<PodDisruptionBudget>::namespaced(c.clone(), ns),
        pdb::build(es),
    )
    .await?;
    // Volumes: grow each node's PVC to the spec's size, and re-create the StatefulSet (pods
    // orphaned, not restarted) when its immutable claim template asks for another size.
    let volumes_growing = match volumes::reconcile(es, &sh, ctx, ns, &pvcs, &plan.placement).await?
    {
        volumes::Outcome::Continue(progress) => progress,
        volumes::Outcome::Wait(after) => return Ok(Action::requeue(after)),
    };
    let old_image = previous.image.clone();
    let sts = apply_for(
        ctx,
        es,
        &Api::<StatefulSet>::namespaced(c.clone(), ns),
        sts_desired,
    )
    .await?;

    // Status (pure) and write only on change.
    let rollout = status::rollout(Some(&sts.object), plan.replicas);
    let new_status = status::compute(es, &sh, &plan, &rollout, volumes_growing.as_deref());
    let was_ready = previous.phase == Some(Phase::Ready);
    let refused_before = previous
        .conditions
        .iter()
        .any(|c| c.reason == "ScaleDownRefused" && c.is_true());
    let changed = write_status(es, ctx, ns, new_status.clone()).await?;

    // Events for notable transitions only (they are writes too).
    if changed {
        if sts.wrote
            && old_image.is_some()
            && old_image.as_deref() != Some(sh.image.as_str())
            && rollout.rolling
        {
            ctx.publish(
                es,
                EventType::Normal,
                "RollingUpdate",
                "Rollout",
                format!("rolling store nodes to image {}", sh.image),
            )
            .await;
        }
        if let Some(msg) = &plan.refused {
            if !refused_before {
                ctx.publish(
                    es,
                    EventType::Warning,
                    "ScaleDownRefused",
                    "Scale",
                    msg.clone(),
                )
                .await;
            }
        }
        if !was_ready && new_status.phase == Some(Phase::Ready) {
            ctx.publish(
                es,
                EventType::Normal,
                "Ready",
                "Reconcile",
                format!("{} store nodes ready", plan.replicas),
            )
            .await;
        }
    }
    Ok(if rollout.rolling {
        // The owned StatefulSet's status changes wake us anyway; this is a safety net.
        Action::requeue(Duration::from_secs(30))
    } else if volumes_growing.is_some() {
        // Claims are not watched: look again soon for the storage class to finish.
        Action::requeue(Duration::from_secs(5))
    } else {
        Action::requeue(RESYNC)
    })
}

/// The registry written to the ConfigMap: every placed tenant with its token digests and quotas.
fn registry(
    es: &EventStore,
    replicas: i32,
    tenants: &[Tenant],
    placement: &std::collections::BTreeMap<String, String>,
) -> configmap::RegistryFile {
    let mut entries: Vec<configmap::TenantEntry> = tenants
        .iter()
        .filter_map(|t| {
            let node = placement.get(&t.spec.tenant_id)?;
            configmap::registry_tenant(t, node.clone())
        })
        .collect();
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    configmap::RegistryFile {
        version: 1,
        tenants: entries,
        nodes: configmap::node_urls(es, replicas),
    }
}
