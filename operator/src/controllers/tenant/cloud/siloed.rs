//! Siloed Tenants of PostgreSQL, DynamoDB and Firestore EventStores: each gets its own schema,
//! table or database with the store's layout, provisioned by the store's own provisioners
//! ([`crate::provision::postgres::PostgresProvisioner`],
//! [`crate::provision::dynamodb::DynamoProvisioner`],
//! [`crate::provision::firestore::silo::SiloProvisioner`] over the store's Firestore
//! provisioner: ensure, then observe, which corrects drift, every [`Context::drift_interval`] like the
//! store's), under the names [`postgres::silo_schema_name`] / [`dynamodb::silo_table_name`] /
//! [`crate::provision::firestore::silo_database_name`] that the gateway's registry routes the
//! tenant to ([`crate::resources::configmap::silo_location`]).
//!
//! PostgreSQL: the schema carries the full DDL (tables, indexes, row-level security), and the
//! tenant's login role, named like the schema, gets data privileges on that schema only; the
//! `<tenant>-postgres` Secret has the pooled keys (`host`, `port`, `database`, `schema` = its
//! own schema, `user`, `password`, `url`). DynamoDB: the table has the store's key schema,
//! indexes, streams, TTL, point-in-time recovery, deletion protection, tags and billing; the
//! `<tenant>-dynamodb` Secret carries `table`, `tableArn`, `region` and an IAM policy for that
//! table. Firestore: a database in the store's project and location with the store's composite
//! index, exemptions and TTL policies (on an emulator endpoint, which has no Admin API, the
//! first write creates the database and a `NotVerified` Event says that indexes and TTL were not
//! checked, as for the store); the gateway reaches it with the store's credentials. On deletion
//! the login role goes at once (the gateway drops the registry entry); the schema, table or
//! database is dropped under `deletionPolicy: Delete` (deletion protection turned off first;
//! Firestore: the tenant's documents, then the database) and kept under `Retain`, each said in
//! an Event. An outage is Degraded with the service's error and retried until it recovers.
//! Never logs or publishes a password or token.

use std::time::Duration;

use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::super::status::Verdict;
use super::super::TenantOutcome;
use super::{admin, degraded, dynamodb_access, ensure_dynamodb_secret, ensure_login_secret, RETRY};
use crate::api::eventstore::Backend;
use crate::api::tenant::{LocationKind, TenantLocation};
use crate::api::{DeletionPolicy, EventStore, Tenant};
use crate::controllers::eventstore::cloud::{firestore_provisioner, secret_data};
use crate::controllers::tenant::firestore::{store_not_provisioned, store_provisioned, tenant_ref};
use crate::controllers::{Context, ReconcileError};
use crate::provision::dynamodb::{self, Access, DynamoProvisioner};
use crate::provision::firestore::silo::SiloProvisioner;
use crate::provision::postgres::{self, PostgresProvisioner};
use crate::provision::{Deleted, EnsureAction, Ensured, Observed, ProvisionError, Provisioner};

/// Re-check interval while the tenant's table or an index is being built.
const PENDING: Duration = Duration::from_secs(3);

/// The verdict and next check after one ensure + observe round of `what` (`schema x`,
/// `table y`). Pure.
pub fn settle(
    what: &str,
    ensured: &Ensured,
    observed: &Observed,
    drift: Duration,
) -> (Verdict, Duration) {
    if ensured.action == EnsureAction::Pending || observed.pending {
        return (
            Verdict::BackendPending(format!("{what} is being created or repaired")),
            PENDING,
        );
    }
    if !observed.unsupported.is_empty() {
        let list = observed
            .unsupported
            .iter()
            .map(|u| format!("{}: {}", u.feature, u.message))
            .collect::<Vec<_>>()
            .join("; ");
        return (
            Verdict::BackendDegraded(
                "FeatureUnsupported".to_string(),
                format!("{what}: the endpoint refuses {list}"),
            ),
            drift,
        );
    }
    (Verdict::Ready, drift)
}

/// Ensures the tenant's place, then observes it (drift is corrected there).
async fn round(prov: &dyn Provisioner) -> Result<(Ensured, Observed), ProvisionError> {
    let ensured = prov.ensure().await?;
    let observed = if ensured.action == EnsureAction::Pending {
        Observed {
            pending: true,
            ..Observed::default()
        }
    } else {
        prov.observe().await?
    };
    Ok((ensured, observed))
}

/// Events for a creation and for every drift correction (like the store's); what could not be
/// verified at creation (an emulator's missing Admin API) is said once, as for the store.
async fn publish(tenant: &Tenant, ctx: &Context, what: &str, e: &Ensured, o: &Observed) {
    if e.action == EnsureAction::Created {
        let note = format!("created {what}");
        ctx.publish(tenant, EventType::Normal, "Created", "Provision", note)
            .await;
        for note in &o.notes {
            let note = format!("{what}: {note}");
            ctx.publish(tenant, EventType::Warning, "NotVerified", "Provision", note)
                .await;
        }
    } else if !o.corrected.is_empty() {
        let note = o.corrected.join("; ");
        ctx.publish(
            tenant,
            EventType::Warning,
            "DriftCorrected",
            "Provision",
            note,
        )
        .await;
    }
}

/// Degraded with the service's error; an outage is retried soon, anything else at the next
/// drift check (like the store's), so a state that clears by itself is not stuck for long.
fn failed(e: &ProvisionError, drift: Duration) -> TenantOutcome {
    let mut o = degraded(e);
    o.requeue = Some(o.requeue.unwrap_or(drift));
    o
}

fn outcome(
    es: &EventStore,
    verdict: Verdict,
    requeue: Duration,
    at: TenantLocation,
) -> TenantOutcome {
    let ready = verdict == Verdict::Ready;
    TenantOutcome {
        verdict,
        location: Some(at),
        usage_url: ready
            .then(|| es.status.as_ref().and_then(|s| s.endpoint.as_ref()))
            .flatten()
            .map(|e| e.url.clone()),
        requeue: Some(requeue),
    }
}

/// Ensures a siloed tenant's own schema, table or database, its access Secret and (PostgreSQL)
/// its login role; reports where it lives.
pub async fn reconcile(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<TenantOutcome, ReconcileError> {
    match es.spec.backend {
        Backend::Postgres => postgres_tenant(tenant, es, ctx, ns).await,
        Backend::Firestore => firestore_tenant(tenant, es, ctx, ns).await,
        _ => dynamodb_tenant(tenant, es, ctx, ns).await,
    }
}

async fn postgres_tenant(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<TenantOutcome, ReconcileError> {
    let (store, admin_cfg) = match admin(es, ctx, ns).await? {
        Ok(p) => p,
        Err(Ok(outcome)) => return Ok(outcome),
        Err(Err(e)) => return Ok(failed(&e, ctx.drift_interval())),
    };
    let schema = postgres::silo_schema_name(store.schema(), &tenant.spec.tenant_id);
    let prov = PostgresProvisioner::new(admin_cfg.clone(), schema.clone());
    let what = format!("schema {schema}");
    let (ensured, observed) = match round(&prov).await {
        Ok(r) => r,
        Err(e) => return Ok(failed(&e, ctx.drift_interval())),
    };
    publish(tenant, ctx, &what, &ensured, &observed).await;
    // The login role is named like the schema (unique per store and tenant, see
    // silo_schema_name) and may use that schema only.
    let (password, secret_changed) =
        ensure_login_secret(tenant, ctx, ns, &admin_cfg, &schema, &schema).await?;
    if let Err(e) = prov
        .ensure_tenant_role(&schema, &tenant.spec.tenant_id, &password, secret_changed)
        .await
    {
        return Ok(failed(&e, ctx.drift_interval()));
    }
    let (verdict, requeue) = settle(&what, &ensured, &observed, ctx.drift_interval());
    let at = TenantLocation {
        kind: LocationKind::Schema,
        name: schema,
    };
    Ok(outcome(es, verdict, requeue, at))
}

/// The DynamoDB provisioner of the tenant's own table (Ok(Err) for a spec or Secret problem).
async fn table_provisioner(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<Result<(DynamoProvisioner, String), ProvisionError>, ReconcileError> {
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
    let store = match dynamodb::plan(ns, &es.name_any(), d) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let plan = dynamodb::silo_plan(&store, &tenant.spec.tenant_id);
    let table = plan.table.clone();
    let client = dynamodb::client(&Access {
        region: d.region.clone(),
        endpoint: d.endpoint.clone(),
        keys,
    })
    .await;
    Ok(Ok((DynamoProvisioner::new(client, plan), table)))
}

async fn dynamodb_tenant(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<TenantOutcome, ReconcileError> {
    let store_ready = es
        .status
        .as_ref()
        .is_some_and(|s| s.provisioned.contains_key("table"));
    if !store_ready {
        return Ok(TenantOutcome {
            verdict: Verdict::EventStoreNotReady(
                "the EventStore's table is not provisioned yet".to_string(),
            ),
            location: None,
            usage_url: None,
            requeue: Some(RETRY),
        });
    }
    let (prov, table) = match table_provisioner(tenant, es, ctx, ns).await? {
        Ok(p) => p,
        Err(e) => return Ok(failed(&e, ctx.drift_interval())),
    };
    let what = format!("table {table}");
    let (ensured, observed) = match round(&prov).await {
        Ok(r) => r,
        Err(e) => return Ok(failed(&e, ctx.drift_interval())),
    };
    publish(tenant, ctx, &what, &ensured, &observed).await;
    let (mut verdict, mut requeue) = settle(&what, &ensured, &observed, ctx.drift_interval());
    let arn = observed
        .resources
        .get("tableArn")
        .or_else(|| ensured.resources.get("tableArn"));
    match (arn, es.spec.dynamodb.as_ref()) {
        (Some(arn), Some(d)) => {
            let access = dynamodb_access(&table, arn, &d.region, &tenant.spec.tenant_id);
            ensure_dynamodb_secret(tenant, ctx, ns, access).await?;
        }
        _ if verdict == Verdict::Ready => {
            verdict = Verdict::BackendPending(format!("{what} has no ARN yet"));
            requeue = PENDING;
        }
        _ => {}
    }
    let at = TenantLocation {
        kind: LocationKind::Table,
        name: table,
    };
    Ok(outcome(es, verdict, requeue, at))
}

/// The provisioner of the tenant's own Firestore database, with the store's credentials
/// (Ok(Err) for a spec or credentials problem).
async fn database_provisioner(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<Result<SiloProvisioner, ProvisionError>, ReconcileError> {
    Ok(firestore_provisioner(es, ctx, ns).await?.and_then(|store| {
        SiloProvisioner::new(&store, &tenant.spec.tenant_id, &tenant_ref(tenant))
    }))
}

async fn firestore_tenant(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<TenantOutcome, ReconcileError> {
    // The tenant's database is created where the store's database is.
    if !store_provisioned(es) {
        return Ok(store_not_provisioned());
    }
    let prov = match database_provisioner(tenant, es, ctx, ns).await? {
        Ok(p) => p,
        Err(e) => return Ok(failed(&e, ctx.drift_interval())),
    };
    let database = prov.database().to_string();
    let what = format!("database {database}");
    let (ensured, observed) = match round(&prov).await {
        Ok(r) => r,
        Err(e) => return Ok(failed(&e, ctx.drift_interval())),
    };
    publish(tenant, ctx, &what, &ensured, &observed).await;
    let (verdict, requeue) = settle(&what, &ensured, &observed, ctx.drift_interval());
    let at = TenantLocation {
        kind: LocationKind::Database,
        name: database,
    };
    Ok(outcome(es, verdict, requeue, at))
}

/// Removes a deleted siloed tenant's access at once (PostgreSQL: its login role), then drops
/// its schema, table or database under `deletionPolicy: Delete` or keeps it under `Retain`, with
/// an Event either way. Ok means done; an outage retries.
pub async fn cleanup(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<(), ReconcileError> {
    let (prov, what): (Box<dyn Provisioner>, String) = match es.spec.backend {
        Backend::Postgres => {
            let (store, cfg) = match admin(es, ctx, ns).await? {
                Ok(p) => p,
                // Nothing was provisioned for a store without a schema.
                Err(Ok(_)) => return Ok(()),
                Err(Err(e)) => return Err(ReconcileError::Backend(e)),
            };
            let schema = postgres::silo_schema_name(store.schema(), &tenant.spec.tenant_id);
            let prov = PostgresProvisioner::new(cfg, schema.clone());
            prov.drop_tenant_role(&schema, &tenant.spec.tenant_id, false)
                .await?;
            (Box::new(prov), format!("schema {schema}"))
        }
        Backend::Firestore => return firestore_cleanup(tenant, es, ctx, ns).await,
        _ => match table_provisioner(tenant, es, ctx, ns).await? {
            Ok((prov, table)) => (Box::new(prov), format!("table {table}")),
            Err(e) => return Err(ReconcileError::Backend(e)),
        },
    };
    let deleted = prov.delete(tenant.spec.deletion_policy).await?;
    announce(tenant, ctx, deleted, &what, format!("{what} was dropped")).await;
    Ok(())
}

/// The Event of a cleanup: what was kept, or `done` (what was erased).
async fn announce(tenant: &Tenant, ctx: &Context, deleted: Deleted, what: &str, done: String) {
    let (reason, note) = match deleted {
        Deleted::AlreadyGone => return,
        Deleted::Retained => (
            "DataRetained",
            format!("deletionPolicy Retain: {what} is kept with the tenant's events"),
        ),
        Deleted::Deleted => ("DataDeleted", format!("deletionPolicy Delete: {done}")),
    };
    ctx.publish(tenant, EventType::Normal, reason, "Cleanup", note)
        .await;
}

/// [`cleanup`] of a siloed Firestore tenant: under Delete its documents, then its database
/// where the Admin API is served (an emulator has none: there the documents are what goes).
async fn firestore_cleanup(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<(), ReconcileError> {
    // Nothing was provisioned for a store without a database.
    if !store_provisioned(es) {
        return Ok(());
    }
    let prov = database_provisioner(tenant, es, ctx, ns)
        .await?
        .map_err(ReconcileError::Backend)?;
    let what = format!("database {}", prov.database());
    if tenant.spec.deletion_policy != DeletionPolicy::Delete {
        let kept = prov.delete(tenant.spec.deletion_policy).await?;
        announce(tenant, ctx, kept, &what, String::new()).await;
        return Ok(());
    }
    let erased = prov.erase().await?;
    let done = if erased.database {
        format!("{what} was dropped")
    } else {
        format!(
            "the tenant's documents in {what} were deleted (the endpoint serves no Admin API \
             to delete the database)"
        )
    };
    announce(tenant, ctx, erased.deleted(), &what, done).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::Unsupported;

    const DRIFT: Duration = Duration::from_secs(60);

    fn ensured(action: EnsureAction) -> Ensured {
        Ensured {
            action,
            resources: Default::default(),
        }
    }

    #[test]
    fn settle_reports_pending_unsupported_and_ready() {
        let ok = Observed::default();
        let (v, _) = settle("table t", &ensured(EnsureAction::Created), &ok, DRIFT);
        assert_eq!(v, Verdict::Ready);
        let (v, again) = settle("table t", &ensured(EnsureAction::Pending), &ok, DRIFT);
        assert_eq!(v.reason(), "BackendPending");
        assert_eq!(again, PENDING);
        let repairing = Observed {
            pending: true,
            ..Observed::default()
        };
        let (v, _) = settle(
            "table t",
            &ensured(EnsureAction::Adopted),
            &repairing,
            DRIFT,
        );
        assert_eq!(v.reason(), "BackendPending");
        let refused = Observed {
            unsupported: vec![Unsupported {
                feature: "pointInTimeRecovery".into(),
                message: "UnknownOperationException".into(),
            }],
            ..Observed::default()
        };
        let (v, again) = settle("table t", &ensured(EnsureAction::Adopted), &refused, DRIFT);
        assert_eq!(v.reason(), "FeatureUnsupported");
        assert_eq!(again, DRIFT);
    }
}
