//! Reconciles a cloud-backed EventStore (postgres, dynamodb, firestore): reads the admin
//! credentials from the Secret the spec references, runs the backend's provisioner
//! (`crate::provision`: ensure, then observe, which corrects drift), applies the optional gateway
//! (Deployment, Service, registry ConfigMap) and writes status only when it changed. A healthy store is re-observed
//! every [`Context::drift_interval`] for drift; an outage is written to status (Degraded, reason
//! BackendUnavailable, the service's error) and retried with the controller's backoff until it
//! recovers by itself. What a provisioner could not verify without it blocking Ready (a Firestore
//! emulator without the Admin API) is a note in the Ready message and one Warning Event. It must
//! never log, event or store a credential.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::controllers::tenant::duplicate;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::super::apply::{apply_for, delete_owned};
use super::super::{Context, ReconcileError};
use super::write_status;
use crate::api::eventstore::{Backend, Endpoint, EventStoreStatus};
use crate::api::{
    find_condition, set_condition, Condition, EventStore, Phase, Tenant, CONDITION_DEGRADED,
    CONDITION_PROGRESSING, CONDITION_READY,
};
use crate::provision::dynamodb::{self, Access, DynamoProvisioner};
use crate::provision::firestore::{self, FirestoreProvisioner};
use crate::provision::postgres::{self, PostgresProvisioner};
use crate::provision::{Deleted, EnsureAction, Ensured, Observed, ProvisionError, Provisioner};
use crate::resources::gateway::{self, GatewayBackend};
use crate::resources::{configmap, registry_secret_name, service, HTTP_PORT};
use allsource_backends::firestore::FIRESTORE_ENDPOINT;

/// Default interval between drift checks of a healthy cloud store (reads only).
pub const DEFAULT_DRIFT_INTERVAL: Duration = Duration::from_secs(60);
/// Re-check interval while a table or index is still being built.
const PENDING_INTERVAL: Duration = Duration::from_secs(3);

/// State of the gateway Deployment, when the spec enables it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayState {
    /// Desired pods.
    pub desired: i32,
    /// Available pods.
    pub available: i32,
    /// Why the gateway cannot be built: the Degraded reason and message (e.g. `GatewayBlocked`
    /// when the Secret lacks `url`, `TLSSecretInvalid` for an unusable TLS Secret).
    pub blocked: Option<(&'static str, String)>,
}

/// The backend, its provisioner and what the gateway needs to reach it.
struct Target {
    provisioner: Box<dyn Provisioner>,
    gateway: Result<GatewayBackend, String>,
}

/// Reads a Secret's data as UTF-8 strings (never logged); Ok(Err) when it is missing or not
/// text, Err when the API call failed.
pub(crate) async fn secret_data(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Result<BTreeMap<String, String>, ProvisionError>, ReconcileError> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(s) = api.get_opt(name).await? else {
        return Ok(Err(ProvisionError::InvalidSpec(format!(
            "Secret {name} not found in namespace {ns}"
        ))));
    };
    let mut out = BTreeMap::new();
    for (k, v) in s.data.unwrap_or_default() {
        match String::from_utf8(v.0) {
            Ok(v) => {
                out.insert(k, v);
            }
            Err(_) => {
                return Ok(Err(ProvisionError::InvalidSpec(format!(
                    "key {k} of Secret {name} is not UTF-8"
                ))))
            }
        }
    }
    Ok(Ok(out))
}

/// Builds the provisioner of `es` (Ok(Err) for a spec problem, Err for an API failure).
async fn target(
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<Result<Target, ProvisionError>, ReconcileError> {
    let name = es.name_any();
    match es.spec.backend {
        Backend::Postgres => {
            let Some(pg) = es.spec.postgres.as_ref() else {
                return Ok(Err(ProvisionError::InvalidSpec(
                    "backend postgres needs spec.postgres".to_string(),
                )));
            };
            let data = match secret_data(ctx, ns, &pg.connection_secret_ref.name).await? {
                Ok(d) => d,
                Err(e) => return Ok(Err(e)),
            };
            let built = postgres::schema_name(ns, &name, pg.schema.as_deref()).and_then(|schema| {
                let cfg = postgres::connection_config(&data, pg.ssl_mode)?;
                Ok((schema, cfg))
            });
            let (schema, cfg) = match built {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            let gateway = if data.contains_key("url") {
                Ok(GatewayBackend::Postgres {
                    url_secret: pg.connection_secret_ref.name.clone(),
                    schema: schema.clone(),
                    ssl_mode: pg.ssl_mode,
                })
            } else {
                Err(format!(
                    "the gateway needs key url in Secret {}",
                    pg.connection_secret_ref.name
                ))
            };
            Ok(Ok(Target {
                provisioner: Box::new(PostgresProvisioner::new(cfg, schema)),
                gateway,
            }))
        }
        Backend::DynamoDb => {
            let Some(d) = es.spec.dynamodb.as_ref() else {
                return Ok(Err(ProvisionError::InvalidSpec(
                    "backend dynamodb needs spec.dynamodb".to_string(),
                )));
            };
            let keys = match &d.credentials_secret_ref {
                None => None,
                Some(r) => match secret_data(ctx, ns, &r.name).await? {
                    Ok(data) => match dynamodb::keys_from_secret(&data) {
                        Ok(k) => Some(k),
                        Err(e) => return Ok(Err(e)),
                    },
                    Err(e) => return Ok(Err(e)),
                },
            };
            let plan = match dynamodb::plan(ns, &name, d) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let access = Access {
                region: d.region.clone(),
                endpoint: d.endpoint.clone(),
                keys,
            };
            let gateway = Ok(GatewayBackend::Dynamodb {
                table: plan.table.clone(),
                region: d.region.clone(),
                endpoint: d.endpoint.clone(),
                credentials_secret: d.credentials_secret_ref.as_ref().map(|r| r.name.clone()),
            });
            let client = dynamodb::client(&access).await;
            Ok(Ok(Target {
                provisioner: Box::new(DynamoProvisioner::new(client, plan)),
                gateway,
            }))
        }
        Backend::Firestore => {
            let prov = match firestore_provisioner(es, ctx, ns).await? {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let gateway = Ok(firestore_gateway(es, prov.plan()));
            Ok(Ok(Target {
                provisioner: Box::new(prov),
                gateway,
            }))
        }
        Backend::SelfHosted => Ok(Err(ProvisionError::InvalidSpec(
            "no provisioner for this backend".to_string(),
        ))),
    }
}

/// The Firestore provisioner of `es` with its credentials: the emulator's token for an emulator
/// endpoint, else `key.json` of `spec.firestore.credentialsSecretRef`, else workload identity.
/// Ok(Err) for a spec or credentials problem, Err for an API failure.
pub(crate) async fn firestore_provisioner(
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<Result<FirestoreProvisioner, ProvisionError>, ReconcileError> {
    let Some(f) = es.spec.firestore.as_ref() else {
        return Ok(Err(ProvisionError::InvalidSpec(
            "backend firestore needs spec.firestore".to_string(),
        )));
    };
    let plan = match firestore::plan(ns, &es.name_any(), f) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let creds = match (&f.credentials_secret_ref, plan.emulator) {
        (_, true) => firestore::Credentials::Emulator,
        (Some(r), false) => match secret_data(ctx, ns, &r.name).await? {
            Ok(data) => match firestore::auth::key_from_secret(&data, &r.name) {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            },
            Err(e) => return Ok(Err(e)),
        },
        (None, false) => firestore::Credentials::WorkloadIdentity,
    };
    Ok(FirestoreProvisioner::connect(plan, &creds).await)
}

/// The gateway of a Firestore store, with the provisioner's credentials: the emulator's token
/// for an emulator endpoint, else `key.json` of `spec.firestore.credentialsSecretRef` (mounted
/// and passed as `--firestore-credentials-file`), else workload identity.
fn firestore_gateway(es: &EventStore, plan: &firestore::Plan) -> GatewayBackend {
    let f = es.spec.firestore.as_ref();
    GatewayBackend::Firestore {
        project: plan.project.clone(),
        database: plan.database.clone(),
        emulator_host: plan
            .emulator
            .then(|| firestore::emulator_host(&plan.endpoint)),
        endpoint: (!plan.emulator && plan.endpoint != FIRESTORE_ENDPOINT)
            .then(|| plan.endpoint.clone()),
        credentials_secret: f
            .and_then(|f| f.credentials_secret_ref.as_ref())
            .filter(|_| !plan.emulator)
            .map(|r| r.name.clone()),
    }
}

/// Reconciles a cloud-backed EventStore.
pub async fn reconcile(es: &EventStore, ctx: &Context, ns: &str) -> Result<Action, ReconcileError> {
    if !matches!(
        es.spec.backend,
        Backend::Postgres | Backend::DynamoDb | Backend::Firestore
    ) {
        return provisioner_missing(es, ctx, ns).await;
    }
    let previous = es.status.clone().unwrap_or_default();
    let outcome = match target(es, ctx, ns).await? {
        Err(e) => Err(e),
        Ok(t) => match t.provisioner.ensure().await {
            Err(e) => Err(e),
            Ok(ensured) => {
                let observed = if ensured.action == EnsureAction::Pending {
                    Ok(Observed {
                        pending: true,
                        ..Observed::default()
                    })
                } else {
                    t.provisioner.observe().await
                };
                observed.map(|o| (ensured, o, t.gateway))
            }
        },
    };
    let (result, gw_state) = match outcome {
        Err(e) => (Err(e), None),
        Ok((ensured, observed, gw_backend)) => {
            let gw_state = apply_gateway(es, ctx, ns, gw_backend).await?;
            (Ok((ensured, observed)), gw_state)
        }
    };
    let status = compute(es, &result, gw_state.as_ref());
    let changed = write_status(es, ctx, ns, status.clone()).await?;
    publish_transitions(es, ctx, changed, &previous, &status, &result).await;
    match result {
        Err(e) if e.is_retryable() => Err(ReconcileError::Backend(e)),
        Err(_) => Ok(Action::requeue(ctx.drift_interval())),
        Ok(_) if status.phase == Some(Phase::Provisioning) => Ok(Action::requeue(PENDING_INTERVAL)),
        Ok(_) => Ok(Action::requeue(ctx.drift_interval())),
    }
}

/// Events for notable transitions (status changes) and for every drift correction (which may
/// leave the status as it was).
async fn publish_transitions(
    es: &EventStore,
    ctx: &Context,
    changed: bool,
    previous: &EventStoreStatus,
    status: &EventStoreStatus,
    result: &Result<(Ensured, Observed), ProvisionError>,
) {
    let was = |t: &str| find_condition(&previous.conditions, t).map(|c| c.reason.clone());
    match result {
        Err(e) => {
            if changed && was(CONDITION_DEGRADED).as_deref() != Some(e.reason()) {
                ctx.publish(
                    es,
                    EventType::Warning,
                    e.reason(),
                    "Provision",
                    e.to_string(),
                )
                .await;
            }
        }
        Ok((ensured, observed)) => {
            if ensured.action == EnsureAction::Created {
                ctx.publish(
                    es,
                    EventType::Normal,
                    "Created",
                    "Provision",
                    format!("created {}", summary(&ensured.resources)),
                )
                .await;
            }
            if !observed.corrected.is_empty() && ensured.action != EnsureAction::Created {
                ctx.publish(
                    es,
                    EventType::Warning,
                    "DriftCorrected",
                    "Provision",
                    observed.corrected.join("; "),
                )
                .await;
            }
            let ready_before = find_condition(&previous.conditions, CONDITION_READY)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            for note in &observed.notes {
                if changed && !ready_before.contains(note.as_str()) {
                    ctx.publish(
                        es,
                        EventType::Warning,
                        "NotVerified",
                        "Provision",
                        note.clone(),
                    )
                    .await;
                }
            }
            if changed && previous.phase != Some(Phase::Ready) && status.phase == Some(Phase::Ready)
            {
                ctx.publish(
                    es,
                    EventType::Normal,
                    "Ready",
                    "Reconcile",
                    format!("{} provisioned", es.spec.backend.as_str()),
                )
                .await;
            }
        }
    }
}

fn summary(r: &BTreeMap<String, String>) -> String {
    r.iter()
        .filter(|(k, _)| matches!(k.as_str(), "schema" | "table" | "projectId" | "databaseId"))
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies (or removes) the gateway objects; None when the gateway is disabled.
async fn apply_gateway(
    es: &EventStore,
    ctx: &Context,
    ns: &str,
    backend: Result<GatewayBackend, String>,
) -> Result<Option<GatewayState>, ReconcileError> {
    let c = &ctx.client;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), ns);
    let Some(gw) = es.spec.gateway.as_ref().filter(|g| g.enabled) else {
        // Disabled: remove what an earlier enabled spec created (owned objects only).
        if let Some(uid) = es.metadata.uid.as_deref() {
            let m = &ctx.metrics;
            delete_owned(&deployments, m, &gateway::gateway_name(es), uid).await?;
            let services = Api::<Service>::namespaced(c.clone(), ns);
            delete_owned(&services, m, &es.name_any(), uid).await?;
            let secrets = Api::<Secret>::namespaced(c.clone(), ns);
            delete_owned(&secrets, m, &registry_secret_name(es), uid).await?;
        }
        return Ok(None);
    };
    let backend = match backend {
        Ok(b) => b,
        Err(msg) => {
            return Ok(Some(GatewayState {
                desired: gw.replicas,
                available: 0,
                blocked: Some(("GatewayBlocked", msg)),
            }))
        }
    };
    // A TLS Secret the gateway cannot serve from would leave its pods failing at start with
    // nothing in the store's status: say so, and roll nothing out until it is fixed.
    if let Some(name) = crate::resources::tls_secret_name(es) {
        let secret = Api::<Secret>::namespaced(c.clone(), ns)
            .get_opt(name)
            .await?;
        if let Some(problem) =
            crate::controllers::nodetls::tls_secret_problem(name, secret.as_ref())
        {
            return Ok(Some(GatewayState {
                desired: gw.replicas,
                available: 0,
                blocked: Some(("TLSSecretInvalid", problem)),
            }));
        }
    }
    let of_store: Vec<Tenant> = Api::<Tenant>::namespaced(c.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|t| t.spec.event_store_ref.name == es.name_any())
        .collect();
    // One entry per tenant id: a later duplicate never enters ([`duplicate`]).
    let tenants: Vec<Tenant> = duplicate::holders(&of_store)
        .into_iter()
        .filter(|t| t.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    let registry = gateway_registry(&tenants, &backend);
    apply_for(
        ctx,
        es,
        &Api::<Secret>::namespaced(c.clone(), ns),
        gateway::registry_secret(es, &registry),
    )
    .await?;
    // Before the registry moved to a Secret it was the `<name>-gateway` ConfigMap: remove ours.
    if let Some(uid) = es.metadata.uid.as_deref() {
        let legacy = Api::<ConfigMap>::namespaced(c.clone(), ns);
        delete_owned(&legacy, &ctx.metrics, &gateway::gateway_name(es), uid).await?;
    }
    apply_for(
        ctx,
        es,
        &Api::<Service>::namespaced(c.clone(), ns),
        gateway::service(es),
    )
    .await?;
    let d = apply_for(ctx, es, &deployments, gateway::deployment(es, gw, &backend)).await?;
    let available = d
        .object
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    Ok(Some(GatewayState {
        desired: gw.replicas,
        available,
        blocked: None,
    }))
}

/// The gateway's registry: every tenant of the store, served by the gateway; siloed tenants
/// with the location of their own schema, table or Firestore database
/// ([`configmap::silo_location`]), so their calls never reach the pooled place.
pub fn gateway_registry(tenants: &[Tenant], backend: &GatewayBackend) -> configmap::RegistryFile {
    let mut entries: Vec<configmap::TenantEntry> = tenants
        .iter()
        .filter_map(|t| {
            Some(configmap::TenantEntry {
                location: configmap::silo_location(t, backend),
                ..configmap::registry_tenant(t, gateway::GATEWAY_NODE.to_string())?
            })
        })
        .collect();
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    configmap::RegistryFile {
        version: 1,
        tenants: entries,
        nodes: BTreeMap::new(),
    }
}

/// Status of a cloud store from the provisioner's result and the gateway's state. Pure: the
/// same observation gives an equal status (conditions keep their transition times).
pub fn compute(
    es: &EventStore,
    result: &Result<(Ensured, Observed), ProvisionError>,
    gw: Option<&GatewayState>,
) -> EventStoreStatus {
    let previous = es.status.clone().unwrap_or_default();
    let mut conditions = previous.conditions.clone();
    let mut provisioned = previous.provisioned.clone();
    let phase;
    match result {
        Err(e) => {
            let msg = e.to_string();
            set_condition(
                &mut conditions,
                Condition::new(CONDITION_READY, false, e.reason(), msg.clone()),
            );
            set_condition(
                &mut conditions,
                Condition::new(
                    CONDITION_PROGRESSING,
                    false,
                    e.reason(),
                    if e.is_retryable() {
                        "retrying with backoff"
                    } else {
                        "waiting for a change of the spec, Secret or backend"
                    },
                ),
            );
            set_condition(
                &mut conditions,
                Condition::new(CONDITION_DEGRADED, true, e.reason(), msg),
            );
            phase = Phase::Degraded;
        }
        Ok((ensured, observed)) => {
            provisioned = ensured.resources.clone();
            provisioned.extend(observed.resources.clone());
            provisioned.insert("backend".to_string(), es.spec.backend.as_str().to_string());
            let backend_ready = ensured.action != EnsureAction::Pending && !observed.pending;
            let gw_blocked = gw.and_then(|g| g.blocked.clone());
            let gw_ready =
                gw.is_none_or(|g| g.blocked.is_none() && (g.desired == 0 || g.available > 0));
            let ready = backend_ready && gw_ready;
            let (reason, msg) = if !backend_ready {
                (
                    "Provisioning",
                    "the backend is being created or corrected".to_string(),
                )
            } else if !gw_ready {
                (
                    "GatewayNotReady",
                    gw.map(|g| format!("{}/{} gateway pods available", g.available, g.desired))
                        .unwrap_or_default(),
                )
            } else {
                let mut msg = format!("{} provisioned", summary(&provisioned));
                for n in &observed.notes {
                    msg.push_str("; ");
                    msg.push_str(n);
                }
                ("Provisioned", msg)
            };
            set_condition(
                &mut conditions,
                Condition::new(CONDITION_READY, ready, reason, msg.clone()),
            );
            set_condition(
                &mut conditions,
                Condition::new(
                    CONDITION_PROGRESSING,
                    !ready && gw_blocked.is_none(),
                    if ready { "Provisioned" } else { reason },
                    if ready { String::new() } else { msg },
                ),
            );
            let degraded = if !observed.unsupported.is_empty() {
                Some((
                    "FeatureUnsupported",
                    observed
                        .unsupported
                        .iter()
                        .map(|u| format!("{}: {}", u.feature, u.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                ))
            } else {
                gw_blocked
            };
            match &degraded {
                Some((reason, msg)) => set_condition(
                    &mut conditions,
                    Condition::new(CONDITION_DEGRADED, true, reason, msg.clone()),
                ),
                None => set_condition(
                    &mut conditions,
                    Condition::new(CONDITION_DEGRADED, false, "AsExpected", ""),
                ),
            }
            phase = if degraded.is_some() {
                Phase::Degraded
            } else if ready {
                Phase::Ready
            } else {
                Phase::Provisioning
            };
        }
    }
    for c in &mut conditions {
        c.observed_generation = es.metadata.generation;
    }
    let gw_on = es.spec.gateway.as_ref().is_some_and(|g| g.enabled);
    let dns = service::client_dns(es);
    EventStoreStatus {
        observed_generation: es.metadata.generation,
        conditions,
        phase: Some(phase),
        endpoint: gw_on.then(|| Endpoint {
            url: format!("{}://{dns}:{HTTP_PORT}", crate::resources::node_scheme(es)),
            service: dns,
            port: HTTP_PORT,
        }),
        replicas: gw.map(|g| g.desired),
        ready_replicas: gw.map(|g| g.available),
        ready_text: gw.map(|g| format!("{}/{}", g.available, g.desired)),
        selector: None,
        capabilities: Some(super::status::capabilities(es)),
        placement: BTreeMap::new(),
        provisioned,
        image: gw_on
            .then(|| es.spec.gateway.as_ref().map(|g| g.image.clone()))
            .flatten(),
    }
}

async fn provisioner_missing(
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<Action, ReconcileError> {
    let mut status = es.status.clone().unwrap_or_default();
    status.observed_generation = es.metadata.generation;
    status.phase = Some(Phase::Degraded);
    let msg = format!(
        "this operator build has no provisioner for backend {}",
        es.spec.backend.as_str()
    );
    set_condition(
        &mut status.conditions,
        Condition::new(CONDITION_READY, false, "ProvisionerMissing", msg.clone()),
    );
    set_condition(
        &mut status.conditions,
        Condition::new(CONDITION_DEGRADED, true, "ProvisionerMissing", msg),
    );
    write_status(es, ctx, ns, status).await?;
    Ok(Action::await_change())
}

/// Cleans up a cloud-backed EventStore: under deletionPolicy Delete the schema or table is
/// dropped (DynamoDB: deletion protection lifted first); under Retain nothing is touched. The
/// gateway objects go with their owner reference. An outage keeps the finalizer and retries.
pub async fn cleanup(es: &EventStore, ctx: &Context, ns: &str) -> Result<Action, ReconcileError> {
    if !matches!(
        es.spec.backend,
        Backend::Postgres | Backend::DynamoDb | Backend::Firestore
    ) {
        return Ok(Action::await_change());
    }
    let policy = es.spec.deletion_policy;
    if policy == crate::api::DeletionPolicy::Retain {
        ctx.publish(
            es,
            EventType::Normal,
            "BackendRetained",
            "Cleanup",
            format!(
                "deletionPolicy Retain: {} kept",
                summary(&es.status.clone().unwrap_or_default().provisioned)
            ),
        )
        .await;
        return Ok(Action::await_change());
    }
    let t = match target(es, ctx, ns).await? {
        Ok(t) => t,
        Err(e) => return Err(ReconcileError::Backend(e)),
    };
    let deleted = t.provisioner.delete(policy).await?;
    let note = match deleted {
        Deleted::Deleted => "deletionPolicy Delete: dropped",
        Deleted::AlreadyGone => "deletionPolicy Delete: already gone",
        Deleted::Retained => "deletionPolicy Retain: kept",
    };
    ctx.publish(
        es,
        EventType::Normal,
        "BackendDeleted",
        "Cleanup",
        format!(
            "{note} {}",
            summary(&es.status.clone().unwrap_or_default().provisioned)
        ),
    )
    .await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::Unsupported;

    fn es() -> EventStore {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1",
            "kind": "EventStore",
            "metadata": {"name": "orders", "namespace": "shop", "generation": 2},
            "spec": {"backend": "postgres", "postgres": {"connectionSecretRef": {"name": "pg"}}}
        }))
        .unwrap()
    }

    fn ok(pending: bool) -> Result<(Ensured, Observed), ProvisionError> {
        Ok((
            Ensured {
                action: EnsureAction::Adopted,
                resources: BTreeMap::from([("schema".into(), "allsource_shop_orders".into())]),
            },
            Observed {
                pending,
                ..Observed::default()
            },
        ))
    }

    fn cond(st: &EventStoreStatus, t: &str) -> (bool, String) {
        let c = find_condition(&st.conditions, t).unwrap();
        (c.is_true(), c.reason.clone())
    }

    #[test]
    fn provisioned_store_is_ready_and_stable() {
        let mut es = es();
        let st = compute(&es, &ok(false), None);
        assert_eq!(st.phase, Some(Phase::Ready));
        assert_eq!(cond(&st, CONDITION_READY), (true, "Provisioned".into()));
        assert_eq!(cond(&st, CONDITION_DEGRADED), (false, "AsExpected".into()));
        assert_eq!(
            st.provisioned.get("schema").unwrap(),
            "allsource_shop_orders"
        );
        assert_eq!(st.endpoint, None);
        es.status = Some(st.clone());
        assert_eq!(compute(&es, &ok(false), None), st);
    }

    #[test]
    fn outage_is_degraded_with_the_service_error_and_recovers() {
        let mut es = es();
        es.status = Some(compute(&es, &ok(false), None));
        let down = Err(ProvisionError::Unavailable {
            service: "postgres",
            message: "connection refused".into(),
        });
        let st = compute(&es, &down, None);
        assert_eq!(st.phase, Some(Phase::Degraded));
        let d = find_condition(&st.conditions, CONDITION_DEGRADED).unwrap();
        assert_eq!(d.reason, "BackendUnavailable");
        assert!(d.message.contains("connection refused"));
        // What was provisioned stays visible during the outage.
        assert!(st.provisioned.contains_key("schema"));
        es.status = Some(st);
        assert_eq!(compute(&es, &ok(false), None).phase, Some(Phase::Ready));
    }

    #[test]
    fn unsupported_feature_and_gateway_states() {
        let es = es();
        let mut r = ok(false);
        if let Ok((_, o)) = &mut r {
            o.unsupported.push(Unsupported {
                feature: "pointInTimeRecovery".into(),
                message: "UnknownOperationException".into(),
            });
        }
        let st = compute(&es, &r, None);
        assert_eq!(st.phase, Some(Phase::Degraded));
        assert_eq!(
            cond(&st, CONDITION_DEGRADED),
            (true, "FeatureUnsupported".into())
        );
        assert!(cond(&st, CONDITION_READY).0);

        let waiting = GatewayState {
            desired: 2,
            available: 0,
            blocked: None,
        };
        let st = compute(&es, &ok(false), Some(&waiting));
        assert_eq!(st.phase, Some(Phase::Provisioning));
        assert_eq!(
            cond(&st, CONDITION_READY),
            (false, "GatewayNotReady".into())
        );
        assert_eq!(st.ready_text.as_deref(), Some("0/2"));
        assert_eq!(
            compute(&es, &ok(true), None).phase,
            Some(Phase::Provisioning)
        );
    }

    #[test]
    fn notes_do_not_block_ready_and_are_said() {
        let es = es();
        let mut r = ok(false);
        if let Ok((_, o)) = &mut r {
            o.notes
                .push(firestore::admin_unavailable("http://127.0.0.1:8080"));
        }
        let st = compute(&es, &r, None);
        assert_eq!(st.phase, Some(Phase::Ready));
        let (ready, reason) = cond(&st, CONDITION_READY);
        assert!(ready, "{reason}");
        let msg = &find_condition(&st.conditions, CONDITION_READY)
            .unwrap()
            .message;
        assert!(
            msg.ends_with(
                "; admin API unavailable at http://127.0.0.1:8080: indexes and TTL not verified"
            ),
            "{msg}"
        );
        assert!(!cond(&st, CONDITION_DEGRADED).0);
    }

    #[test]
    fn firestore_gateway_for_emulator_key_and_workload_identity() {
        let mut es = es();
        let spec = |endpoint: Option<&str>| crate::api::eventstore::FirestoreSpec {
            project_id: "p".into(),
            database_id: "(default)".into(),
            endpoint: endpoint.map(str::to_string),
            emulator: endpoint.is_some_and(|e| !e.starts_with("https://")),
            ..Default::default()
        };
        let emu = firestore::plan("shop", "orders", &spec(Some("127.0.0.1:8080"))).unwrap();
        assert_eq!(
            firestore_gateway(&es, &emu),
            GatewayBackend::Firestore {
                project: "p".into(),
                database: "(default)".into(),
                emulator_host: Some("127.0.0.1:8080".into()),
                endpoint: None,
                credentials_secret: None,
            }
        );
        let prod = firestore::plan("shop", "orders", &spec(None)).unwrap();
        assert_eq!(
            firestore_gateway(&es, &prod),
            GatewayBackend::Firestore {
                project: "p".into(),
                database: "(default)".into(),
                emulator_host: None,
                endpoint: None,
                credentials_secret: None,
            },
            "workload identity"
        );
        let mut keyed = spec(Some("https://eu-firestore.example.com"));
        keyed.credentials_secret_ref = Some(crate::api::SecretRef { name: "gcp".into() });
        es.spec.firestore = Some(keyed.clone());
        let regional = firestore::plan("shop", "orders", &keyed).unwrap();
        assert_eq!(
            firestore_gateway(&es, &regional),
            GatewayBackend::Firestore {
                project: "p".into(),
                database: "(default)".into(),
                emulator_host: None,
                endpoint: Some("https://eu-firestore.example.com".into()),
                credentials_secret: Some("gcp".into()),
            }
        );
    }

    #[test]
    fn gateway_registry_serves_every_tenant_from_the_gateway() {
        let t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "namespace": "shop"},
            "spec": {"eventStoreRef": {"name": "orders"}, "tenantId": "acme"}
        }))
        .unwrap();
        let backend = GatewayBackend::Postgres {
            url_secret: "pg".into(),
            schema: "s".into(),
            ssl_mode: crate::api::eventstore::SslMode::default(),
        };
        let r = gateway_registry(std::slice::from_ref(&t), &backend);
        assert_eq!(r.tenants.len(), 1);
        assert_eq!(r.tenants[0].node.as_deref(), Some(gateway::GATEWAY_NODE));
        assert_eq!(r.tenants[0].location, None, "pooled");
        let mut siloed = t.clone();
        siloed.spec.placement = crate::api::tenant::Placement::Siloed;
        let fs = GatewayBackend::Firestore {
            project: "p".into(),
            database: "(default)".into(),
            emulator_host: None,
            endpoint: None,
            credentials_secret: None,
        };
        siloed.spec.tenant_id = "solo".into();
        let r = gateway_registry(&[siloed, t], &fs);
        let ids: Vec<&str> = r.tenants.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, vec!["acme", "solo"], "sorted, siloed ones included");
        assert_eq!(r.tenants[0].location, None, "pooled");
        assert_eq!(
            r.tenants[1]
                .location
                .as_ref()
                .and_then(|l| l.database.clone()),
            Some(crate::provision::firestore::silo_database_name(
                "(default)",
                "shop",
                "orders",
                "solo"
            ))
        );
    }
}
