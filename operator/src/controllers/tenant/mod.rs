//! The Tenant controller: issues and rotates each tenant's bearer token, keeps it in the
//! connection Secret `<tenant>-credentials` (format in [`crate::resources::secret`]), publishes
//! only the token digests in `status.tokenSha256` (the EventStore controller copies them into the
//! store nodes' registry), and reports whether the store accepts the tenant (conditions Ready,
//! Progressing, Degraded; phase; location; usage read from the store every few minutes).
//! Per reconcile: fetch the EventStore and the Secret, plan the token ([`token`], pure), observe
//! the backend ([`selfhosted`] or [`cloud`]), compute the status ([`status`], pure), write the
//! status (digests first, so the registry learns a token before clients do), then the Secret;
//! both only when they changed, so a steady state makes zero writes. Deletion runs behind the
//! `allsource.io/cleanup` finalizer: for a selfHosted store it waits until the registry no
//! longer lists the tenant (Retain) or its node erased the tenant's data (Delete, [`purge`]),
//! then deletes the Secret. It must never log, publish or put in status a token.

pub mod archives;
pub mod cloud;
pub mod duplicate;
pub mod fanout;
pub mod firestore;
pub mod purge;
pub mod selfhosted;
pub mod status;
pub mod token;
pub mod usage;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use parking_lot::Mutex;
use tracing::Instrument;

use super::apply::{delete_owned, owned_by};
use super::trigger::{hash_json, reflected_changes};
use super::{error_action, Context, ReconcileError, Scope, CONFLICT_RECHECK};
use crate::api::eventstore::Backend;
use crate::api::tenant::{TenantLocation, TenantStatus};
use crate::api::{DeletionPolicy, EventStore, Tenant, FIELD_MANAGER, FINALIZER};
use crate::resources::configmap::parse_registry;
use crate::resources::{secret, service, HTTP_PORT};
use status::{Facts, Verdict};

const KIND: &str = "Tenant";
/// Periodic re-check of a settled tenant (reads only; writes happen only on change).
const RESYNC: Duration = Duration::from_secs(600);
/// Re-check of a tenant whose EventStore is missing (its creation also wakes the tenant).
const MISSING_RECHECK: Duration = Duration::from_secs(60);
/// Re-check while a deleted tenant is still in the registry.
const CLEANUP_RECHECK: Duration = Duration::from_secs(1);
/// Re-check of a Tenant whose id another Tenant holds (it takes over once that one is gone).
const DUPLICATE_RECHECK: Duration = Duration::from_secs(30);
/// Re-check after a write refused because the reconciled copy was older than the apiserver's.
const STALE_RECHECK: Duration = Duration::from_millis(500);

/// How long a rotated-out token stays valid by default.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(300);
/// Tenant annotation overriding the rotation grace period, in seconds.
pub const ROTATION_GRACE_ANNOTATION: &str = "allsource.io/rotation-grace-seconds";
/// How often usage is read from the store by default.
pub const DEFAULT_USAGE_INTERVAL: Duration = Duration::from_secs(300);
/// Tenant annotation overriding the usage refresh interval, in seconds.
pub const USAGE_INTERVAL_ANNOTATION: &str = "allsource.io/usage-interval-seconds";

/// What the backend says about a tenant (filled by [`selfhosted`] or [`cloud`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantOutcome {
    /// Ready, pending, suspended or degraded.
    pub verdict: Verdict,
    /// Where the tenant's events live, when known.
    pub location: Option<TenantLocation>,
    /// Base URL to read the tenant's usage from with its token (None: no usage).
    pub usage_url: Option<String>,
    /// Look again this soon (None: the controller's own schedule).
    pub requeue: Option<Duration>,
}

/// The controller's state besides the shared [`Context`] (one per watched namespace, or one for
/// all of them).
struct State {
    ctx: Arc<Context>,
    http: Option<reqwest::Client>,
    /// Last usage read attempt per tenant, so an unreachable store is not asked on every reconcile.
    usage_tried: Mutex<HashMap<String, Instant>>,
    /// EventStores, kept by the controller's EventStore watch.
    stores: Store<EventStore>,
    /// The stores' registry Secrets, kept by their watch.
    configs: Store<Secret>,
    /// Every Tenant of the watched namespace(s), the controller's own cache.
    tenants: Store<Tenant>,
}

impl State {
    /// The EventStore `name` in `ns` from the cache (None: it does not exist).
    async fn event_store(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<Arc<EventStore>>, ReconcileError> {
        crate::controllers::cache_ready(&self.stores, "EventStore").await?;
        Ok(self.stores.get(&ObjectRef::new(name).within(ns)))
    }

    /// The registry the nodes of the selfHosted store `es` read, from the cache.
    async fn registry(
        &self,
        es: &EventStore,
        ns: &str,
    ) -> Result<Option<crate::resources::configmap::RegistryFile>, ReconcileError> {
        crate::controllers::cache_ready(&self.configs, "Secret").await?;
        let secret = self
            .configs
            .get(&ObjectRef::new(&crate::resources::registry_secret_name(es)).within(ns));
        Ok(secret.as_deref().and_then(parse_registry))
    }

    /// The other Tenant that holds `t`'s id on its store ([`duplicate::holder`]), from the cache.
    async fn id_holder(&self, t: &Tenant) -> Result<Option<Tenant>, ReconcileError> {
        crate::controllers::cache_ready(&self.tenants, "Tenant").await?;
        let all = self.tenants.state();
        Ok(duplicate::holder(t, all.iter().map(|t| t.as_ref())).cloned())
    }
}

fn scoped<K>(client: &kube::Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The Tenants of `store` a change selects (from the controller's Tenant cache).
fn wake(
    cache: &Store<Tenant>,
    ns: Option<String>,
    store: &str,
    wake: &fanout::Wake,
) -> Vec<ObjectRef<Tenant>> {
    let all = cache.state();
    fanout::select(all.iter().map(|t| t.as_ref()), ns.as_deref(), store, wake)
}

/// Runs the Tenant controller (one per watched namespace) until it stops.
pub async fn run(ctx: Arc<Context>) {
    let http = match usage::client() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "no HTTP client; tenant usage is not read");
            None
        }
    };
    let namespaces: Vec<Option<String>> = match &ctx.scope {
        Scope::All => vec![None],
        Scope::Namespaces(ns) => ns.iter().cloned().map(Some).collect(),
    };
    let mut controllers = Vec::new();
    for ns in namespaces {
        let c = &ctx.client;
        let ns = ns.as_deref();
        let controller = Controller::new(scoped::<Tenant>(c, ns), watcher::Config::default());
        let by_store = controller.store();
        let by_registry = by_store.clone();
        let by_tls = by_store.clone();
        let all_tenants = by_store.clone();
        let credentials = watcher::Config::default().labels(&format!(
            "app.kubernetes.io/component={}",
            secret::COMPONENT_CREDENTIALS
        ));
        let (stores, store_changes) = reflected_changes(
            scoped::<EventStore>(c, ns),
            watcher::Config::default(),
            |es| {
                hash_json(&(
                    &es.spec,
                    &es.status,
                    es.metadata.deletion_timestamp.is_some(),
                ))
            },
        );
        // Only the stores' registry Secrets, never the tenants' credentials.
        let registries = watcher::Config::default().labels(&format!(
            "{}={}",
            crate::resources::ROLE_LABEL,
            crate::resources::REGISTRY_ROLE
        ));
        let (configs, config_changes) =
            reflected_changes(scoped::<Secret>(c, ns), registries, |s| {
                hash_json(&(&s.data, s.metadata.deletion_timestamp.is_some()))
            });
        // The stores' TLS Secrets carry any name a tlsSecretRef gives, so no label selects them:
        // every Secret of the namespace is watched as metadata only (never a key), and a new
        // resourceVersion of one that a store names (a renewed certificate, a rotated CA) wakes
        // that store's tenants, whose credentials Secrets then get the new ca.crt within
        // seconds instead of at their next resync.
        let tls_changes = watcher::watcher(
            scoped::<PartialObjectMeta<Secret>>(c, ns),
            watcher::Config::default(),
        )
        .default_backoff()
        .touched_objects();
        let stores_for_tls = stores.clone();
        let state = Arc::new(State {
            ctx: ctx.clone(),
            http: http.clone(),
            usage_tried: Mutex::new(HashMap::new()),
            stores,
            configs,
            tenants: all_tenants,
        });
        let store_memory = Mutex::new(fanout::Memory::<EventStore>::default());
        let config_memory = Mutex::new(fanout::Memory::<Secret>::default());
        let run = controller
            .owns(scoped::<Secret>(c, ns), credentials)
            // A store change wakes the tenants whose part of it changed.
            .watches_stream(store_changes, move |es: EventStore| {
                let w = store_memory.lock().observe(&es, fanout::store_view(&es));
                wake(&by_store, es.namespace(), &es.name_any(), &w)
            })
            // The registry Secret: a tenant waiting for its digests to be published wakes up.
            .watches_stream(config_changes, move |cm: Secret| {
                let Some(store) = fanout::registry_store(&cm) else {
                    return Vec::new();
                };
                let w = config_memory
                    .lock()
                    .observe(&cm, fanout::registry_view(&cm));
                wake(&by_registry, cm.namespace(), &store, &w)
            })
            .watches_stream(tls_changes, move |s: PartialObjectMeta<Secret>| {
                let (ns, name) = (s.namespace(), s.name_any());
                stores_for_tls
                    .state()
                    .iter()
                    .filter(|es| {
                        es.namespace() == ns
                            && crate::resources::tls_secret_name(es) == Some(name.as_str())
                    })
                    .flat_map(|es| wake(&by_tls, ns.clone(), &es.name_any(), &fanout::Wake::All))
                    .collect::<Vec<_>>()
            })
            .shutdown_on_signal()
            .run(reconcile, on_error, state)
            .for_each(|_| futures::future::ready(()));
        controllers.push(run);
    }
    futures::future::join_all(controllers).await;
}

fn key(t: &Tenant) -> String {
    // The kind is part of the key: a Tenant and an EventStore may share a name, not a backoff.
    format!(
        "{KIND}/{}/{}",
        t.namespace().unwrap_or_default(),
        t.name_any()
    )
}

fn on_error(t: Arc<Tenant>, err: &ReconcileError, state: Arc<State>) -> Action {
    error_action(&state.ctx, &key(&t), err)
}

async fn reconcile(t: Arc<Tenant>, state: Arc<State>) -> Result<Action, ReconcileError> {
    let span = tracing::info_span!("reconcile", kind = KIND, namespace = %t.namespace().unwrap_or_default(), name = %t.name_any(), generation = t.metadata.generation.unwrap_or(0));
    let started = Instant::now();
    let result = reconcile_inner(&t, &state).instrument(span).await;
    state.ctx.metrics.reconciled(
        KIND,
        started.elapsed(),
        result.as_ref().err().map(ReconcileError::class),
    );
    if result.is_ok() {
        state.ctx.succeeded(&key(&t));
    }
    result
}

async fn reconcile_inner(t: &Tenant, state: &State) -> Result<Action, ReconcileError> {
    let ns = t.namespace().ok_or(ReconcileError::NoNamespace)?;
    let has_finalizer = t.finalizers().iter().any(|f| f == FINALIZER);
    if t.metadata.deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(Action::await_change());
        }
        // A duplicate was never provisioned: its id, data and registry entry are another
        // Tenant's, so its deletion must not touch them (only its own Secret goes).
        let holder = state.id_holder(t).await?;
        if !cleanup(t, &state.ctx, &ns, holder.is_none()).await? {
            return Ok(Action::requeue(CLEANUP_RECHECK));
        }
        return Ok(match set_finalizer(t, &state.ctx, &ns, false).await? {
            Patched::Done | Patched::Gone => Action::await_change(),
            Patched::Stale => Action::requeue(STALE_RECHECK),
        });
    }
    if !has_finalizer {
        match set_finalizer(t, &state.ctx, &ns, true).await? {
            Patched::Done => {}
            Patched::Gone => return Ok(Action::await_change()),
            Patched::Stale => return Ok(Action::requeue(STALE_RECHECK)),
        }
    }
    match apply_tenant(t, state, &ns).await {
        Err(ReconcileError::NotOwned(m)) => {
            park(t, &state.ctx, &ns, "ResourceConflict", m, Facts::default()).await
        }
        Err(ReconcileError::Invalid(m)) => {
            park(t, &state.ctx, &ns, "InvalidSpec", m, Facts::default()).await
        }
        other => other,
    }
}

/// Parks a Tenant that cannot go on as it is (an object it needs belongs to someone else, or
/// the apiserver refuses one): Degraded with `reason` and `message`, a Warning Event when the
/// reason is new, and a re-check after [`CONFLICT_RECHECK`] (a foreign object going away wakes
/// nothing).
async fn park(
    t: &Tenant,
    ctx: &Context,
    ns: &str,
    reason: &str,
    message: String,
    facts: Facts,
) -> Result<Action, ReconcileError> {
    let before = t.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == crate::api::CONDITION_DEGRADED && c.reason == reason)
    });
    let verdict = Verdict::BackendDegraded(reason.to_string(), message.clone());
    if write_status(t, ctx, ns, status::compute(t, &verdict, facts)).await? && !before {
        ctx.publish(t, EventType::Warning, reason, "Reconcile", message)
            .await;
    }
    Ok(Action::requeue(CONFLICT_RECHECK))
}

/// What became of a finalizer patch.
#[derive(Debug, PartialEq, Eq)]
enum Patched {
    /// Written.
    Done,
    /// The reconcile worked on an older copy than the apiserver's (the cache lags a write of
    /// ours): nothing was written; the newer copy arrives through the watch and is reconciled.
    /// Not a failure, so it must not grow the error backoff.
    Stale,
    /// The Tenant no longer exists.
    Gone,
}

/// Adds or removes our finalizer with a merge patch guarded by the resourceVersion.
async fn set_finalizer(
    t: &Tenant,
    ctx: &Context,
    ns: &str,
    present: bool,
) -> Result<Patched, ReconcileError> {
    let mut finalizers: Vec<String> = t
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.to_string());
    }
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": t.resource_version()}
    });
    ctx.metrics.wrote(KIND, "PATCH");
    match Api::<Tenant>::namespaced(ctx.client.clone(), ns)
        .patch(
            &t.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(Patched::Done),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Patched::Stale),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Patched::Gone),
        Err(e) => Err(e.into()),
    }
}

fn seconds_annotation(t: &Tenant, key: &str, default: Duration) -> Duration {
    t.annotations()
        .get(key)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(default, Duration::from_secs)
}

/// Base URL clients use: the store's published endpoint, else its client Service.
/// The `endpoint` of a tenant's credentials Secret: for a selfHosted store the base URL of the
/// node that owns the tenant (`owner`, from the registry), so that any HTTP client reaches its
/// data without a 421 hop; the store's endpoint before the tenant is placed and for cloud stores.
fn tenant_endpoint(es: &EventStore, owner: Option<&str>) -> String {
    match (es.spec.backend, owner) {
        (Backend::SelfHosted, Some(url)) => url.to_string(),
        _ => endpoint(es),
    }
}

fn endpoint(es: &EventStore) -> String {
    es.status
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| e.url.clone())
        .unwrap_or_else(|| {
            format!(
                "{}://{}:{HTTP_PORT}",
                crate::resources::node_scheme(es),
                service::client_dns(es)
            )
        })
}

/// Now in whole seconds, like metav1.Time, so a status read back compares equal.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap_or_default()
}

/// The credentials plan for `t` given its live connection Secret (pure apart from the token
/// generator).
fn plan_credentials(t: &Tenant, live: Option<&Secret>, now: DateTime<Utc>) -> token::TokenPlan {
    let previous = t.status.as_ref();
    token::plan(
        token::Observed {
            secret_token: live.and_then(|s| secret::value(s, secret::TOKEN_KEY)),
            handled_rotate: live.and_then(secret::handled_rotate),
            status_hashes: previous.map_or(&[], |p| &p.token_sha256),
            last_rotation: previous.and_then(|p| p.last_rotation),
        },
        t.spec
            .credentials
            .as_ref()
            .and_then(|c| c.rotate.as_deref()),
        now,
        seconds_annotation(t, ROTATION_GRACE_ANNOTATION, DEFAULT_ROTATION_GRACE),
        token::generate,
    )
}

async fn apply_tenant(t: &Tenant, state: &State, ns: &str) -> Result<Action, ReconcileError> {
    let ctx = &state.ctx;
    if let Some(holder) = state.id_holder(t).await? {
        let verdict = Verdict::BackendDegraded(
            duplicate::REASON.to_string(),
            duplicate::message(t, &holder),
        );
        let first = t.status.as_ref().is_none_or(|s| {
            !s.conditions
                .iter()
                .any(|c| c.type_ == crate::api::CONDITION_DEGRADED && c.reason == duplicate::REASON)
        });
        // No digest of this Tenant may reach the registry.
        let facts = Facts {
            token_sha256: Some(Vec::new()),
            ..Facts::default()
        };
        if write_status(t, ctx, ns, status::compute(t, &verdict, facts)).await? && first {
            ctx.publish(
                t,
                EventType::Warning,
                duplicate::REASON,
                "Reconcile",
                duplicate::message(t, &holder),
            )
            .await;
        }
        return Ok(Action::requeue(DUPLICATE_RECHECK));
    }
    let es_name = &t.spec.event_store_ref.name;
    let Some(es) = state.event_store(ns, es_name).await? else {
        let st = status::compute(
            t,
            &Verdict::EventStoreNotFound(es_name.clone()),
            Facts::default(),
        );
        write_status(t, ctx, ns, st).await?;
        return Ok(Action::requeue(MISSING_RECHECK));
    };

    // Credentials (pure plan over what the Secret and the status hold).
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = secret::secret_name(t);
    let live = secrets.get_opt(&name).await?;
    // A Secret of that name that is not this Tenant's is never taken over (nor read for a
    // token): the tenant gets no credentials, and no digest reaches the registry, until it is
    // renamed or deleted.
    if let Some(holder) = live
        .as_ref()
        .and_then(|l| owned_by(l, t.metadata.uid.as_deref().unwrap_or_default()).err())
    {
        let message = format!(
            "Secret {name} already exists and is not owned by this Tenant ({holder}); the \
             Tenant's credentials go to that name: delete or rename the Secret"
        );
        let facts = Facts {
            token_sha256: Some(Vec::new()),
            ..Facts::default()
        };
        return park(t, ctx, ns, "ResourceConflict", message, facts).await;
    }
    let now = now();
    let mut plan = plan_credentials(t, live.as_ref(), now);
    // A new token is decided on the apiserver's copy of the Tenant, never on the cached one: the
    // cache may not have our own last status write yet while the Secret (read from the API)
    // already holds the token of that write, and the stale digests would make its token look
    // foreign and issue another, again and again while the cache lags.
    let fresh;
    let t = if plan.action == token::TokenAction::Keep {
        t
    } else {
        match Api::<Tenant>::namespaced(ctx.client.clone(), ns)
            .get_opt(&t.name_any())
            .await?
        {
            None => return Ok(Action::await_change()),
            Some(f) if f.resource_version() != t.resource_version() => {
                fresh = f;
                plan = plan_credentials(&fresh, live.as_ref(), now);
                &fresh
            }
            Some(_) => t,
        }
    };
    let previous = t.status.clone().unwrap_or_default();
    // The CA of a store whose nodes serve HTTPS: applications get it in the credentials Secret,
    // and the operator verifies the nodes with it. Unreadable: the Secret goes without it (the
    // EventStore reports the TLS Secret's problem) and usage is not read.
    let tls_ca = match crate::controllers::nodetls::store_ca(&ctx.client, &es, ns).await {
        Ok(ca) => ca,
        Err(e) => {
            tracing::warn!(error = %e, tenant = %t.name_any(), "store CA unavailable");
            None
        }
    };
    // What the backend says.
    let outcome = match es.spec.backend {
        Backend::SelfHosted => {
            let reg = state.registry(&es, ns).await?;
            selfhosted::judge(t, &es, reg.as_ref(), &plan.hashes)
        }
        _ => cloud::reconcile(t, &es, ctx, ns).await?,
    };
    let desired = secret::build(
        t,
        &secret::Connection {
            endpoint: tenant_endpoint(&es, outcome.usage_url.as_deref()),
            tenant_id: t.spec.tenant_id.clone(),
            token: plan.token.clone(),
            backend: es.spec.backend.as_str().to_string(),
            ca: tls_ca.clone(),
        },
        plan.handled_rotate.as_deref(),
    );

    // Usage, at most every interval, only from a store that accepts the tenant. A tenant that is
    // not Ready yet is read at once: Ready means its node accepts its token, measured, not only
    // that the registry lists it (the node learns the registry when the kubelet refreshes its
    // Secret volume, up to a minute later).
    let mut outcome = outcome;
    let interval = seconds_annotation(t, USAGE_INTERVAL_ANNOTATION, DEFAULT_USAGE_INTERVAL);
    let confirming =
        previous.phase != Some(crate::api::Phase::Ready) || previous.token_sha256 != plan.hashes;
    let usage = match (&outcome.usage_url, outcome.verdict == Verdict::Ready) {
        (Some(url), true) if confirming || usage_due(state, t, &previous, interval) => {
            match read_usage(state, t, &es, tls_ca.as_deref(), url, &plan.token, now).await {
                UsageRead::Got(u) => Some(u),
                UsageRead::TokenUnknown if confirming => {
                    state.usage_tried.lock().remove(&key(t));
                    outcome.verdict = Verdict::RegistryPending(format!(
                        "node {} has not loaded the tenant's token yet (it answers 401); nodes \
                         read the registry when the kubelet refreshes their Secret volume",
                        outcome.location.as_ref().map_or("?", |l| l.name.as_str())
                    ));
                    outcome.requeue = Some(selfhosted::PENDING_RECHECK);
                    None
                }
                UsageRead::TokenUnknown | UsageRead::Failed => None,
            }
        }
        _ => None,
    };

    // Status first: the registry must know a digest before a client can hold its token.
    let st = status::compute(
        t,
        &outcome.verdict,
        Facts {
            token_sha256: Some(plan.hashes.clone()),
            last_rotation: plan.last_rotation,
            secret_name: Some(name.clone()),
            location: outcome.location.clone(),
            usage,
        },
    );
    write_status(t, ctx, ns, st).await?;
    if !live
        .as_ref()
        .is_some_and(|l| secret::up_to_date(l, &desired))
    {
        ctx.metrics.wrote("Secret", "PATCH");
        secrets
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await?;
    }
    match plan.action {
        token::TokenAction::Rotate => {
            let grace = plan.recheck_after.unwrap_or_default().as_secs();
            ctx.publish(
                t,
                EventType::Normal,
                "TokenRotated",
                "Rotate",
                format!("new token in Secret {name}; the previous one stays valid for {grace}s"),
            )
            .await;
        }
        token::TokenAction::Issue if live.is_some() => {
            ctx.publish(
                t,
                EventType::Warning,
                "TokenReissued",
                "Issue",
                format!("Secret {name} held no valid token; a new one was issued"),
            )
            .await;
        }
        _ => {}
    }

    let mut next = RESYNC;
    for d in [plan.recheck_after, outcome.requeue].into_iter().flatten() {
        next = next.min(d);
    }
    if outcome.verdict == Verdict::Ready && outcome.usage_url.is_some() && state.http.is_some() {
        next = next.min(interval.max(Duration::from_secs(1)));
    }
    Ok(Action::requeue(next))
}

fn usage_due(state: &State, t: &Tenant, previous: &TenantStatus, interval: Duration) -> bool {
    if state.http.is_none() {
        return false;
    }
    let fresh = previous
        .usage
        .as_ref()
        .and_then(|u| u.updated_at)
        .and_then(|at| (Utc::now() - at).to_std().ok())
        .is_some_and(|age| age < interval);
    let tried_recently = state
        .usage_tried
        .lock()
        .get(&key(t))
        .is_some_and(|at| at.elapsed() < interval);
    !fresh && !tried_recently
}

/// What a usage read found.
enum UsageRead {
    /// The node's figures.
    Got(crate::api::tenant::TenantUsage),
    /// The node answered 401: it does not know the token (yet).
    TokenUnknown,
    /// No client, no answer, or another error: nothing is concluded.
    Failed,
}

async fn read_usage(
    state: &State,
    t: &Tenant,
    es: &EventStore,
    tls_ca: Option<&str>,
    url: &str,
    token: &str,
    now: DateTime<Utc>,
) -> UsageRead {
    let Some(plain) = state.http.as_ref() else {
        return UsageRead::Failed;
    };
    state.usage_tried.lock().insert(key(t), Instant::now());
    let http = match crate::resources::tls_secret_name(es) {
        None => plain.clone(),
        // HTTPS nodes are only ever called verified with the store's own CA.
        Some(name) => {
            let Some(ca) = tls_ca else {
                return UsageRead::Failed;
            };
            match crate::controllers::nodetls::client_for(Some(ca), name) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read tenant usage over HTTPS");
                    return UsageRead::Failed;
                }
            }
        }
    };
    match usage::fetch(&http, &state.ctx.node_url(url), token, now).await {
        Ok(u) => UsageRead::Got(u),
        Err(usage::UsageError::Node(e)) if e.status() == Some(401) => UsageRead::TokenUnknown,
        Err(e) => {
            // Unreachable nodes are normal while pods start; keep the old figures, no flapping.
            tracing::debug!(error = %e, url, "cannot read tenant usage");
            UsageRead::Failed
        }
    }
}

/// Writes `status` with server-side apply when it differs from the live status.
async fn write_status(
    t: &Tenant,
    ctx: &Context,
    ns: &str,
    status: TenantStatus,
) -> Result<bool, ReconcileError> {
    if t.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": "allsource.io/v1alpha1",
        "kind": KIND,
        "status": status,
    });
    ctx.metrics.wrote("Tenant/status", "PATCH");
    Api::<Tenant>::namespaced(ctx.client.clone(), ns)
        .patch_status(
            &t.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(true)
}

/// Cleanup of a deleted Tenant; Ok(true) when the finalizer may go.
/// `holds_id` false: another Tenant holds this one's id ([`duplicate`]); nothing of the backend
/// or the registry is this Tenant's, so only its Secret is removed.
async fn cleanup(
    t: &Tenant,
    ctx: &Context,
    ns: &str,
    holds_id: bool,
) -> Result<bool, ReconcileError> {
    let es = if holds_id {
        Api::<EventStore>::namespaced(ctx.client.clone(), ns)
            .get_opt(&t.spec.event_store_ref.name)
            .await?
    } else {
        None
    };
    if let Some(es) = &es {
        match es.spec.backend {
            // Retain: wait until the registry drops the tenant ("Tenant gone" means "access
            // gone"); Delete: until its node erased the data ([`purge`]).
            Backend::SelfHosted => {
                if !purge::cleanup(t, es, ctx, ns).await? {
                    return Ok(false);
                }
            }
            _ => {
                let erased = cloud::cleanup(t, es, ctx, ns).await?;
                if t.spec.deletion_policy == DeletionPolicy::Delete && !erased {
                    ctx.publish(
                        t,
                        EventType::Warning,
                        "DataRetained",
                        "Cleanup",
                        format!(
                            "deletionPolicy Delete: EventStore {} has no provisioned place for this tenant; nothing was erased",
                            es.name_any()
                        ),
                    )
                    .await;
                }
            }
        }
    }
    if let Some(es) = &es {
        // Delete erases the archived copies too, once the store's copy is gone.
        if !archives::erase(t, es, ctx, ns).await? {
            return Ok(false);
        }
    } else if holds_id && t.spec.deletion_policy == DeletionPolicy::Delete {
        ctx.publish(
            t,
            EventType::Warning,
            "DataRetained",
            "Cleanup",
            format!(
                "deletionPolicy Delete: EventStore {} is gone, so the tenant's data could not be erased here; the store's own deletionPolicy decided what happened to it",
                t.spec.event_store_ref.name
            ),
        )
        .await;
    }
    // Only our own credentials Secret goes: one of that name that is not ours stays.
    if let Some(uid) = t.metadata.uid.as_deref() {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        delete_owned(&secrets, &ctx.metrics, &secret::secret_name(t), uid).await?;
    }
    Ok(true)
}
