//! The ArchivePolicy controller: validates the policy (pure, [`validate`]), fetches its EventStore
//! and the selected Tenants, gathers the tenants' tokens into the policy's tokens Secret, applies
//! the CronJob that runs `store-node archive` ([`build`]), starts a one-off Job for the
//! `allsource.io/run-now` annotation, reads finished runs from their pods' termination messages,
//! keeps the bucket lifecycle rules in line with tiers/expireAfter ([`lifecycle`]), and writes
//! status only when it changed ([`status`]). Deletion runs behind the `allsource.io/cleanup`
//! finalizer: the policy's own bucket rules are removed, the CronJob, Jobs and Secret go with their
//! owner reference. It must never read or write archived objects itself; runs happen in Jobs.

pub mod build;
pub mod erase;
pub mod lifecycle;
pub mod schedule;
pub mod status;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use parking_lot::Mutex;
use tracing::Instrument;

use super::apply::apply_for;
use super::{error_action, Context, ReconcileError, CONFLICT_RECHECK};
use crate::api::archivepolicy::{ArchivePolicyStatus, ConcurrencyPolicy};
use crate::api::{
    set_condition, ArchivePolicy, Condition, EventStore, Tenant, FIELD_MANAGER, FINALIZER,
    RUN_NOW_ANNOTATION,
};
use build::ArchiverInputs;
use status::{Observed, Problem};

const KIND: &str = "ArchivePolicy";
/// Label every object of a policy carries (set by [`build`]).
pub const POLICY_LABEL: &str = "allsource.io/archive-policy";
/// Key of the bearer token in a Tenant's credentials Secret (`status.secretName`).
pub const TENANT_TOKEN_KEY: &str = "token";
/// Condition type reporting the last run-now request.
pub const CONDITION_RUN_NOW: &str = "RunNow";
/// Periodic re-check of a healthy policy (reads only).
const RESYNC: Duration = Duration::from_secs(300);
/// Re-read the bucket lifecycle this often even when nothing changed (someone may have edited it).
const DRIFT_CHECK: Duration = Duration::from_secs(3600);
/// Retry while the EventStore is missing or has no endpoint yet.
const WAIT_FOR_STORE: Duration = Duration::from_secs(30);

/// The controller's state: the shared context plus when each policy's bucket was last checked.
struct State {
    ctx: Arc<Context>,
    checked: Mutex<HashMap<String, (String, Instant)>>,
}

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

/// Maps an object carrying the policy label to its policy.
fn by_label<K: Resource>(o: K) -> Option<ObjectRef<ArchivePolicy>> {
    let ns = o.meta().namespace.clone()?;
    let name = o.meta().labels.as_ref()?.get(POLICY_LABEL)?.clone();
    Some(ObjectRef::new(&name).within(&ns))
}

/// Runs the ArchivePolicy controller (one per watched namespace) until it stops.
pub async fn run(ctx: Arc<Context>) {
    let namespaces: Vec<Option<String>> = match &ctx.scope {
        super::Scope::All => vec![None],
        super::Scope::Namespaces(ns) => ns.iter().cloned().map(Some).collect(),
    };
    let state = Arc::new(State {
        ctx: ctx.clone(),
        checked: Mutex::new(HashMap::new()),
    });
    let mut controllers = Vec::new();
    for ns in namespaces {
        let c = &ctx.client;
        let ns = ns.as_deref();
        let labelled = watcher::Config::default().labels(POLICY_LABEL);
        // CronJob-made Jobs are owned by the CronJob, so Jobs and Pods map back through the label.
        let controller =
            Controller::new(scoped::<ArchivePolicy>(c, ns), watcher::Config::default());
        // A Tenant change (new tenant, token issued or rotated) wakes the policies of its store.
        let policies = controller.store();
        let to_policies = move |t: Tenant| {
            let ns = t.namespace();
            policies
                .state()
                .into_iter()
                .filter(|p| {
                    p.namespace() == ns
                        && p.spec.event_store_ref.name == t.spec.event_store_ref.name
                })
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        };
        let controller = controller
            .owns(scoped::<CronJob>(c, ns), labelled.clone())
            .watches(scoped::<Job>(c, ns), labelled.clone(), by_label)
            .watches(scoped::<Pod>(c, ns), labelled, by_label)
            .watches(
                scoped::<Tenant>(c, ns),
                watcher::Config::default(),
                to_policies,
            )
            .shutdown_on_signal()
            .run(reconcile, on_error, state.clone())
            .for_each(|_| futures::future::ready(()));
        controllers.push(controller);
    }
    futures::future::join_all(controllers).await;
}

fn key(p: &ArchivePolicy) -> String {
    // The kind is part of the key: a Tenant and an EventStore may share a name, not a backoff.
    format!(
        "{KIND}/{}/{}",
        p.namespace().unwrap_or_default(),
        p.name_any()
    )
}

fn on_error(p: Arc<ArchivePolicy>, err: &ReconcileError, st: Arc<State>) -> Action {
    error_action(&st.ctx, &key(&p), err)
}

async fn reconcile(p: Arc<ArchivePolicy>, st: Arc<State>) -> Result<Action, ReconcileError> {
    let span = tracing::info_span!("reconcile", kind = KIND, namespace = %p.namespace().unwrap_or_default(), name = %p.name_any(), generation = p.metadata.generation.unwrap_or(0));
    let started = Instant::now();
    let ctx = st.ctx.clone();
    let result = reconcile_inner(p.clone(), st).instrument(span).await;
    ctx.metrics.reconciled(
        KIND,
        started.elapsed(),
        result.as_ref().err().map(ReconcileError::class),
    );
    if result.is_ok() {
        ctx.succeeded(&key(&p));
    }
    result
}

async fn reconcile_inner(p: Arc<ArchivePolicy>, st: Arc<State>) -> Result<Action, ReconcileError> {
    let ns = p.namespace().ok_or(ReconcileError::NoNamespace)?;
    let api: Api<ArchivePolicy> = Api::namespaced(st.ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, p, |event| async {
        match event {
            FinalizerEvent::Apply(p) => match apply_policy(&p, &st, &ns).await {
                Err(ReconcileError::NotOwned(m)) => {
                    let problem = Problem::new("ResourceConflict", m);
                    park(&p, &st.ctx, &ns, problem, Action::requeue(CONFLICT_RECHECK)).await
                }
                Err(ReconcileError::Invalid(m)) => {
                    let problem = Problem::new("InvalidSpec", m);
                    park(&p, &st.ctx, &ns, problem, Action::await_change()).await
                }
                other => other,
            },
            FinalizerEvent::Cleanup(p) => cleanup(&p, &st, &ns).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => ReconcileError::Finalizer(other.to_string()),
    })
}

/// Writes `status` with server-side apply when it differs from the live status.
async fn write_status(
    p: &ArchivePolicy,
    ctx: &Context,
    ns: &str,
    status: &ArchivePolicyStatus,
) -> Result<bool, ReconcileError> {
    if p.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let api: Api<ArchivePolicy> = Api::namespaced(ctx.client.clone(), ns);
    // The cached object can predate our own last write (a watch event of a child arrives first):
    // compare with the live status so that the same status is never written twice.
    if let Some(live) = api.get_opt(&p.name_any()).await? {
        if live.status.as_ref() == Some(status) {
            return Ok(false);
        }
    }
    let patch = serde_json::json!({
        "apiVersion": "allsource.io/v1alpha1",
        "kind": KIND,
        "status": status,
    });
    ctx.metrics.wrote("ArchivePolicy/status", "PATCH");
    api.patch_status(
        &p.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}

/// Writes a status that only reports `problem` (nothing could be scheduled).
async fn park(
    p: &ArchivePolicy,
    ctx: &Context,
    ns: &str,
    problem: Problem,
    then: Action,
) -> Result<Action, ReconcileError> {
    let previous = p.status.clone().unwrap_or_default();
    let (status, _) = status::compute(
        p,
        &Observed {
            cron_job_name: None,
            runs: Vec::new(),
            next_run: None,
            lifecycle_hash: previous.lifecycle_hash.clone(),
            run_now_handled: previous.run_now_handled.clone(),
            problem: Some(problem.clone()),
            suspended: None,
        },
    );
    let degraded_before = previous
        .conditions
        .iter()
        .any(|c| c.type_ == crate::api::CONDITION_DEGRADED && c.reason == problem.reason);
    if write_status(p, ctx, ns, &status).await? && !degraded_before {
        ctx.publish(
            p,
            EventType::Warning,
            &problem.reason,
            "Reconcile",
            problem.message,
        )
        .await;
    }
    Ok(then)
}

/// The selected tenants and their tokens; tenants without a readable token are listed apart.
async fn tenant_tokens(
    p: &ArchivePolicy,
    ctx: &Context,
    ns: &str,
) -> Result<Result<(BTreeMap<String, String>, Vec<String>), Problem>, ReconcileError> {
    let mut lp = ListParams::default();
    if let Some(sel) = &p.spec.tenant_selector {
        match kube::core::Selector::try_from(sel.clone()) {
            Ok(s) => lp = lp.labels_from(&s),
            Err(e) => {
                return Ok(Err(Problem::new(
                    "InvalidSpec",
                    format!("tenantSelector: {e}"),
                )))
            }
        }
    }
    let tenants = Api::<Tenant>::namespaced(ctx.client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), ns);
    let mut tokens = BTreeMap::new();
    let mut missing = Vec::new();
    for t in tenants.iter().filter(|t| {
        t.spec.event_store_ref.name == p.spec.event_store_ref.name
            && t.metadata.deletion_timestamp.is_none()
    }) {
        let id = t.spec.tenant_id.clone();
        let secret_name = t.status.as_ref().and_then(|s| s.secret_name.clone());
        let token = match secret_name {
            Some(name) => secrets.get_opt(&name).await?.and_then(|s| {
                s.data?
                    .get(TENANT_TOKEN_KEY)
                    .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
            }),
            None => None,
        };
        match token.filter(|t| !t.is_empty()) {
            Some(tok) => {
                tokens.insert(id, tok);
            }
            None => missing.push(id),
        }
    }
    missing.sort();
    Ok(Ok((tokens, missing)))
}

async fn apply_policy(p: &ArchivePolicy, st: &State, ns: &str) -> Result<Action, ReconcileError> {
    let ctx = st.ctx.as_ref();
    let previous = p.status.clone().unwrap_or_default();

    // Validate (pure): a bad spec waits for a change.
    let valid = match validate::validate(p) {
        Ok(v) => v,
        Err(m) => {
            return park(
                p,
                ctx,
                ns,
                Problem::new("InvalidSpec", m),
                Action::await_change(),
            )
            .await
        }
    };

    // Fetch: the EventStore and the tenants' tokens.
    let store_name = &p.spec.event_store_ref.name;
    let Some(es) = Api::<EventStore>::namespaced(ctx.client.clone(), ns)
        .get_opt(store_name)
        .await?
    else {
        let pr = Problem::new(
            "EventStoreNotFound",
            format!("EventStore {store_name} does not exist in namespace {ns}"),
        );
        return park(p, ctx, ns, pr, Action::requeue(WAIT_FOR_STORE)).await;
    };
    let Some(source) = es
        .status
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| e.url.clone())
    else {
        let pr = Problem::new(
            "EventStoreNotReady",
            format!("EventStore {store_name} has no endpoint yet"),
        );
        return park(p, ctx, ns, pr, Action::requeue(WAIT_FOR_STORE)).await;
    };
    let Some(store_uid) = es.metadata.uid.clone() else {
        let pr = Problem::new(
            "EventStoreNotReady",
            format!("EventStore {store_name} has no uid yet"),
        );
        return park(p, ctx, ns, pr, Action::requeue(WAIT_FOR_STORE)).await;
    };
    let image = es
        .self_hosted()
        .map(|s| s.image.clone())
        .or_else(|| es.spec.gateway.as_ref().map(|g| g.image.clone()))
        .unwrap_or_else(crate::api::eventstore::default_image);
    // The archive pods get the tenants' tokens: they run only an allowed image.
    if let Err(ReconcileError::Refused { reason, message }) =
        ctx.check_image("the EventStore's store-node image", &image)
    {
        return park(
            p,
            ctx,
            ns,
            Problem::new(reason, message),
            Action::await_change(),
        )
        .await;
    }
    let (tokens, missing) = match tenant_tokens(p, ctx, ns).await? {
        Ok(t) => t,
        Err(pr) => return park(p, ctx, ns, pr, Action::await_change()).await,
    };
    let inputs = ArchiverInputs {
        image,
        image_pull_policy: es
            .self_hosted()
            .map(|s| s.image_pull_policy.as_str().to_string()),
        source,
        store_uid,
        tenants: tokens.keys().cloned().collect(),
        tokens_secret: build::tokens_secret_name(p),
        ca_secret: crate::resources::tls_secret_name(&es).map(str::to_string),
    };

    // Apply: tokens Secret and CronJob. With no tenant to archive the CronJob stays suspended,
    // so that no run fails every night.
    let c = &ctx.client;
    apply_for(
        ctx,
        p,
        &Api::<Secret>::namespaced(c.clone(), ns),
        build::tokens_secret(p, &tokens),
    )
    .await?;
    let suspended = if p.spec.suspend {
        Some("spec.suspend is true: no new runs start".to_string())
    } else if tokens.is_empty() {
        Some(if missing.is_empty() {
            "no Tenant of the EventStore matches tenantSelector".to_string()
        } else {
            format!("no token yet for tenants {}", missing.join(", "))
        })
    } else {
        None
    };
    let mut cj = build::cron_job(p, &inputs);
    if let Some(spec) = cj.spec.as_mut() {
        spec.suspend = Some(suspended.is_some());
    }
    let cj = apply_for(ctx, p, &Api::<CronJob>::namespaced(c.clone(), ns), cj).await?;

    // Observe the runs.
    let by_policy = ListParams::default().labels(&format!("{POLICY_LABEL}={}", p.name_any()));
    let jobs_api = Api::<Job>::namespaced(c.clone(), ns);
    let jobs = jobs_api.list(&by_policy).await?.items;
    let pods = Api::<Pod>::namespaced(c.clone(), ns)
        .list(&by_policy)
        .await?
        .items;
    let mut runs: Vec<status::JobRun> = jobs.iter().map(|j| status::job_run(j, &pods)).collect();

    // Run now.
    let mut conditions_extra: Option<Condition> = None;
    let mut run_now_handled = previous.run_now_handled.clone();
    if let Some(value) = p.annotations().get(RUN_NOW_ANNOTATION).cloned() {
        let job = build::run_now_job(p, &inputs, &value);
        // The Job of this value exists already: a reconcile on a cached policy older than our
        // status write sees the value as new, and must neither create a second Job nor refuse
        // because of the very run it started.
        let started = jobs.iter().any(|j| j.name_any() == job.name_any());
        if started && previous.run_now_handled.as_deref() != Some(value.as_str()) {
            conditions_extra = Some(Condition::new(
                CONDITION_RUN_NOW,
                true,
                "JobCreated",
                format!("Job {}", job.name_any()),
            ));
            run_now_handled = Some(value.clone());
        } else if previous.run_now_handled.as_deref() != Some(value.as_str()) {
            let active: Vec<&status::JobRun> = runs.iter().filter(|r| r.active()).collect();
            let refusal = if tokens.is_empty() {
                suspended.clone()
            } else if !active.is_empty() && p.spec.concurrency_policy == ConcurrencyPolicy::Forbid {
                Some(format!(
                    "run {} is still active and concurrencyPolicy is Forbid",
                    active[0].name
                ))
            } else {
                None
            };
            match refusal {
                Some(why) => {
                    ctx.publish(
                        p,
                        EventType::Warning,
                        "RunNowRefused",
                        "RunNow",
                        why.clone(),
                    )
                    .await;
                    conditions_extra =
                        Some(Condition::new(CONDITION_RUN_NOW, false, "Refused", why));
                }
                None => {
                    if p.spec.concurrency_policy == ConcurrencyPolicy::Replace {
                        for r in &active {
                            ctx.metrics.wrote("Job", "DELETE");
                            jobs_api
                                .delete(&r.name, &DeleteParams::background())
                                .await?;
                        }
                    }
                    let name = job.name_any();
                    ctx.metrics.wrote("Job", "POST");
                    match jobs_api.create(&PostParams::default(), &job).await {
                        Ok(created) => {
                            runs.push(status::job_run(&created, &[]));
                            ctx.publish(
                                p,
                                EventType::Normal,
                                "RunNowStarted",
                                "RunNow",
                                format!("started Job {name}"),
                            )
                            .await;
                        }
                        // The same value was acted on before the status write: one Job only.
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                    conditions_extra = Some(Condition::new(
                        CONDITION_RUN_NOW,
                        true,
                        "JobCreated",
                        format!("Job {name}"),
                    ));
                }
            }
            run_now_handled = Some(value);
        }
    }

    // Bucket lifecycle: only when the desired rules changed or the drift check is due.
    let key = key(p);
    let lc_key = format!("{key}/lifecycle");
    let hash = lifecycle::desired_hash(p, &valid);
    let due = previous.lifecycle_hash.as_deref() != Some(hash.as_str())
        || st
            .checked
            .lock()
            .get(&key)
            .is_none_or(|(h, at)| h != &hash || at.elapsed() > DRIFT_CHECK);
    let mut problem = None;
    let mut lifecycle_hash = previous.lifecycle_hash.clone();
    let mut requeue = RESYNC;
    if previous.lifecycle_hash.as_deref() == Some(hash.as_str())
        && !st.checked.lock().contains_key(&key)
    {
        // After a restart: the status says it was applied; check for drift an interval from now.
        st.checked
            .lock()
            .insert(key.clone(), (hash.clone(), Instant::now()));
    } else if due {
        match lifecycle::apply(c, ns, p, &valid).await {
            Ok(wrote) => {
                ctx.succeeded(&lc_key);
                st.checked
                    .lock()
                    .insert(key.clone(), (hash.clone(), Instant::now()));
                lifecycle_hash = Some(hash);
                if wrote {
                    ctx.metrics.wrote("BucketLifecycle", "PUT");
                    ctx.publish(
                        p,
                        EventType::Normal,
                        "LifecycleApplied",
                        "Lifecycle",
                        format!("lifecycle rules set on bucket {}", valid.bucket),
                    )
                    .await;
                }
            }
            Err(e) => {
                requeue = ctx.backoff(&lc_key);
                tracing::warn!(error = %e, backoff_s = requeue.as_secs(), "bucket lifecycle");
                problem = Some(Problem::new("LifecycleFailed", e.to_string()));
            }
        }
    }

    // Status.
    let next_run = if suspended.is_some() {
        None
    } else {
        valid.schedule.next_after(Utc::now()).ok()
    };
    let observed = Observed {
        cron_job_name: Some(cj.object.name_any()),
        runs,
        next_run,
        lifecycle_hash,
        run_now_handled,
        problem: problem.clone(),
        suspended,
    };
    let (mut new_status, finished) = status::compute(p, &observed);
    if let Some(c) = conditions_extra {
        set_condition(&mut new_status.conditions, c);
        for c in &mut new_status.conditions {
            c.observed_generation = p.metadata.generation;
        }
    }
    let degraded_before = previous
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::CONDITION_DEGRADED)
        .map(|c| (c.is_true(), c.reason.clone()));
    let changed = write_status(p, ctx, ns, &new_status).await?;
    if changed {
        if let Some(f) = finished {
            let t = if f.reason == "ArchiveSucceeded" {
                EventType::Normal
            } else {
                EventType::Warning
            };
            ctx.publish(p, t, f.reason, "Archive", f.note).await;
        }
        if let Some(pr) = &problem {
            if degraded_before != Some((true, pr.reason.clone())) {
                ctx.publish(
                    p,
                    EventType::Warning,
                    &pr.reason,
                    "Lifecycle",
                    pr.message.clone(),
                )
                .await;
            }
        }
    }
    // Wake up for the next run's status (nextRunTime moves on), at the latest after RESYNC.
    if let Some(next) = next_run {
        let until = (next - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(5);
        requeue = requeue.min(until);
    }
    Ok(Action::requeue(requeue))
}

async fn cleanup(p: &ArchivePolicy, st: &State, ns: &str) -> Result<Action, ReconcileError> {
    let ctx = st.ctx.as_ref();
    st.checked.lock().remove(&key(p));
    // CronJob, Jobs and the tokens Secret carry an owner reference: the garbage collector removes
    // them. The bucket rules are ours to remove; other rules stay.
    if let Ok(valid) = validate::validate(p) {
        if p.status
            .as_ref()
            .and_then(|s| s.lifecycle_hash.as_ref())
            .is_some()
        {
            match lifecycle::remove(&ctx.client, ns, p, &valid).await {
                Ok(_) => {}
                Err(e) if e.secret_missing() => {
                    // Without credentials the rules cannot be removed; do not block deletion forever.
                    ctx.publish(
                        p,
                        EventType::Warning,
                        "LifecycleNotRemoved",
                        "Cleanup",
                        format!("lifecycle rules left on bucket {}: {e}", valid.bucket),
                    )
                    .await;
                }
                // An error keeps the finalizer; the retry backs off like any failed reconcile.
                Err(e) => {
                    return Err(ReconcileError::Finalizer(format!(
                        "removing the lifecycle rules from bucket {}: {e}",
                        valid.bucket
                    )))
                }
            }
        }
    }
    Ok(Action::await_change())
}
