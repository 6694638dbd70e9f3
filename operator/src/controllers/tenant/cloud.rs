//! Hook for Tenants of cloud-backed EventStores (dynamodb, firestore, postgres). The token and
//! connection Secret are handled by the caller for every backend (the gateway authenticates by
//! token too); this module decides what the backend itself says about the tenant.
//!
//! PostgreSQL, pooled placement: the tenant gets its own login role in the EventStore's schema
//! (store-node's `tenant_role_ddl`: data privileges on the tenant tables, mapped to the tenant in
//! `tenant_roles`, so the row-level-security policies confine it to its own rows) and a Secret
//! `<tenant>-postgres` owned by the Tenant with the keys of
//! [`crate::provision::postgres::tenant_login`]: `host`, `port`, `database`, `schema`, `user`,
//! `password`, `url`. The password is generated once and kept in that Secret. Siloed tenants of
//! PostgreSQL, DynamoDB and Firestore stores get their own schema, table or database in
//! [`siloed`]; pooled Firestore tenants are [`super::firestore`]'s. Other backends are reported
//! honestly as not provisioned (Degraded, reason ProvisionerMissing). It must never touch the
//! `<tenant>-credentials` Secret or the token, and never log a password.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;

use crate::controllers::apply::owned_by;
use allsource_backends::dynamodb::{DynamoConfig, DynamoStore};
use allsource_backends::postgres::sql;
use allsource_core::EventStore as _;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::status::Verdict;
use super::TenantOutcome;
use crate::api::eventstore::Backend;
use crate::api::tenant::{LocationKind, Placement, TenantLocation};
use crate::api::{DeletionPolicy, EventStore, Tenant, FIELD_MANAGER};
use crate::controllers::eventstore::cloud::secret_data;
use crate::controllers::{Context, ReconcileError};
use crate::provision::dynamodb;
use crate::provision::postgres::{self, PostgresProvisioner};
use crate::provision::ProvisionError;

pub mod siloed;

/// Reason used while no provisioner handles the backend.
pub const PROVISIONER_MISSING: &str = "ProvisionerMissing";
/// Re-check interval while the EventStore's schema is not there yet or the database is down.
const RETRY: Duration = Duration::from_secs(5);

/// Name of a PostgreSQL tenant's login Secret.
pub fn login_secret_name(t: &Tenant) -> String {
    format!("{}-postgres", t.name_any())
}

/// The `<tenant>-postgres` Secret with the tenant's login (owned by the Tenant). Pure.
pub fn login_secret(t: &Tenant, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(login_secret_name(t)),
            namespace: t.namespace(),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "allsource-operator".to_string(),
                ),
                (
                    "app.kubernetes.io/component".to_string(),
                    "tenant-postgres-login".to_string(),
                ),
                ("app.kubernetes.io/instance".to_string(), t.name_any()),
            ])),
            owner_references: t.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        string_data: Some(data),
        ..Secret::default()
    }
}

/// Login role of a pooled tenant: store-node's `tenant_role`, `<schema>_<tenant id>` cut to 54
/// bytes, then `_` and a hash of schema and tenant id, so no two tenants share one.
pub fn role_name(schema: &str, tenant_id: &str) -> String {
    sql::tenant_role(schema, tenant_id)
}

/// The role a pooled tenant got before role names carried a hash, when it differs from
/// [`role_name`]: retired (dropped with its mapping) once the tenant has its new role.
fn legacy_role_name(schema: &str, tenant_id: &str) -> Option<String> {
    let legacy = sql::legacy_tenant_role(schema, tenant_id);
    (legacy != role_name(schema, tenant_id)).then_some(legacy)
}

fn missing(es: &EventStore, what: &str) -> TenantOutcome {
    TenantOutcome {
        verdict: Verdict::BackendDegraded(
            PROVISIONER_MISSING.to_string(),
            format!(
                "this operator build has no provisioner for {what} on backend {}",
                es.spec.backend.as_str()
            ),
        ),
        location: None,
        usage_url: None,
        requeue: None,
    }
}

fn degraded(e: &ProvisionError) -> TenantOutcome {
    TenantOutcome {
        verdict: Verdict::BackendDegraded(e.reason().to_string(), e.to_string()),
        location: None,
        usage_url: None,
        requeue: e.is_retryable().then_some(RETRY),
    }
}

/// The admin provisioner of the store's schema and its connection settings.
type Admin = (PostgresProvisioner, postgres::AdminConnection);

/// The admin provisioner of the store's schema, or why there is none yet.
async fn admin(
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<Result<Admin, Result<TenantOutcome, ProvisionError>>, ReconcileError> {
    let Some(pg) = es.spec.postgres.as_ref() else {
        return Ok(Err(Err(ProvisionError::InvalidSpec(
            "backend postgres needs spec.postgres".to_string(),
        ))));
    };
    let Some(schema) = es
        .status
        .as_ref()
        .and_then(|s| s.provisioned.get("schema"))
        .cloned()
    else {
        return Ok(Err(Ok(TenantOutcome {
            verdict: Verdict::EventStoreNotReady(
                "the EventStore's schema is not provisioned yet".to_string(),
            ),
            location: None,
            usage_url: None,
            requeue: Some(RETRY),
        })));
    };
    let data = match secret_data(ctx, ns, &pg.connection_secret_ref.name).await? {
        Ok(d) => d,
        Err(e) => return Ok(Err(Err(e))),
    };
    Ok(postgres::connection_config(&data, pg.ssl_mode)
        .map(|cfg| (PostgresProvisioner::new(cfg.clone(), schema), cfg))
        .map_err(Err))
}

/// Ensures the tenant's place on a cloud backend exists and reports where it lives. Called on
/// every reconcile of a live Tenant; idempotent, and a steady state runs no DDL.
pub async fn reconcile(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<TenantOutcome, ReconcileError> {
    if tenant.spec.placement == Placement::Siloed
        && matches!(
            es.spec.backend,
            Backend::Postgres | Backend::DynamoDb | Backend::Firestore
        )
    {
        return siloed::reconcile(tenant, es, ctx, ns).await;
    }
    if es.spec.backend == Backend::Firestore {
        return super::firestore::reconcile(tenant, es, ctx, ns).await;
    }
    if es.spec.backend == Backend::DynamoDb && tenant.spec.placement == Placement::Pooled {
        return dynamodb_tenant(tenant, es, ctx, ns).await;
    }
    if es.spec.backend != Backend::Postgres {
        return Ok(missing(es, "tenants"));
    }
    let (prov, admin_cfg) = match admin(es, ctx, ns).await? {
        Ok(p) => p,
        Err(Ok(outcome)) => return Ok(outcome),
        Err(Err(e)) => return Ok(degraded(&e)),
    };
    let schema = prov.schema().to_string();
    let role = role_name(&schema, &tenant.spec.tenant_id);
    let (password, secret_changed) =
        ensure_login_secret(tenant, ctx, ns, &admin_cfg, &schema, &role).await?;
    // A new or changed Secret (re)sets the role's password; otherwise only a missing role or
    // mapping runs DDL.
    let ran = match prov
        .ensure_tenant_role(&role, &tenant.spec.tenant_id, &password, secret_changed)
        .await
    {
        Ok(ran) => ran,
        Err(e) => return Ok(degraded(&e)),
    };
    // Migration of a tenant provisioned before role names carried a hash: its Secret now names
    // the new role (same password) and the old one, when it is this tenant's, is dropped.
    if ran {
        if let Some(legacy) = legacy_role_name(&schema, &tenant.spec.tenant_id) {
            match prov
                .retire_legacy_role(&legacy, &tenant.spec.tenant_id)
                .await
            {
                Ok(true) => tracing::info!(tenant = %tenant.spec.tenant_id, role = %legacy,
                    "retired the pre-hash login role"),
                Ok(false) => {}
                Err(e) => return Ok(degraded(&e)),
            }
        }
    }
    Ok(TenantOutcome {
        verdict: Verdict::Ready,
        location: Some(TenantLocation {
            kind: LocationKind::Schema,
            name: schema,
        }),
        usage_url: es
            .status
            .as_ref()
            .and_then(|s| s.endpoint.as_ref())
            .map(|e| e.url.clone()),
        requeue: None,
    })
}

/// Reads the data of `tenant`'s Secret `name` as UTF-8 strings (empty when the Secret is
/// missing). A Secret of that name the Tenant does not own is neither read nor taken over:
/// [`ReconcileError::NotOwned`].
async fn live_secret(
    tenant: &Tenant,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, String>, ReconcileError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let live = secrets.get_opt(name).await?;
    if let Some(holder) = live
        .as_ref()
        .and_then(|l| owned_by(l, tenant.metadata.uid.as_deref().unwrap_or_default()).err())
    {
        return Err(ReconcileError::NotOwned(format!(
            "Secret {name} already exists and is not owned by this Tenant ({holder}); delete or \
             rename it"
        )));
    }
    Ok(live
        .and_then(|s| s.data)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
        .collect())
}

/// Keeps the tenant's `<tenant>-postgres` login Secret for `role` on `schema`: the password it
/// holds is kept (a new one is issued when it has none), the Secret is written only when its
/// content changed. Returns the password and whether the Secret was (re)written.
async fn ensure_login_secret(
    tenant: &Tenant,
    ctx: &Context,
    ns: &str,
    admin_cfg: &postgres::AdminConnection,
    schema: &str,
    role: &str,
) -> Result<(String, bool), ReconcileError> {
    let name = login_secret_name(tenant);
    let live = live_secret(tenant, ctx, ns, &name).await?;
    let password = live
        .get("password")
        .filter(|p| !p.is_empty())
        .cloned()
        .unwrap_or_else(super::token::generate);
    let desired = postgres::tenant_login(admin_cfg, schema, role, &password);
    let changed = live != desired;
    if changed {
        ctx.metrics.wrote("Secret", "PATCH");
        Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&login_secret(tenant, desired)),
            )
            .await?;
    }
    Ok((password, changed))
}

/// Keeps the tenant's `<tenant>-dynamodb` Secret at `desired` (written only when it differs).
async fn ensure_dynamodb_secret(
    tenant: &Tenant,
    ctx: &Context,
    ns: &str,
    desired: BTreeMap<String, String>,
) -> Result<(), ReconcileError> {
    let name = dynamodb_secret_name(tenant);
    if live_secret(tenant, ctx, ns, &name).await? == desired {
        return Ok(());
    }
    let mut secret = login_secret(tenant, desired);
    secret.metadata.name = Some(name.clone());
    if let Some(l) = secret.metadata.labels.as_mut() {
        l.insert(
            "app.kubernetes.io/component".to_string(),
            "tenant-dynamodb-access".to_string(),
        );
    }
    ctx.metrics.wrote("Secret", "PATCH");
    Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// Name of a DynamoDB tenant's access Secret.
pub fn dynamodb_secret_name(t: &Tenant) -> String {
    format!("{}-dynamodb", t.name_any())
}

/// Key of the IAM policy document in the `<tenant>-dynamodb` Secret.
pub const IAM_POLICY_KEY: &str = "iamPolicy.json";

/// What the platform's IAM tooling needs for a pooled DynamoDB tenant (keys of its
/// `<tenant>-dynamodb` Secret): `table`, `tableArn`, `region` and [`IAM_POLICY_KEY`], the policy
/// document whose `dynamodb:LeadingKeys` condition confines credentials to the tenant's items
/// (store-node's `tenant_iam_policy`). Pure.
pub fn dynamodb_access(
    table: &str,
    table_arn: &str,
    region: &str,
    tenant_id: &str,
) -> BTreeMap<String, String> {
    let policy = allsource_backends::dynamodb::table::tenant_iam_policy(table_arn, tenant_id);
    let mut policy = serde_json::to_string_pretty(&policy).unwrap_or_default();
    policy.push('\n');
    BTreeMap::from([
        ("table".to_string(), table.to_string()),
        ("tableArn".to_string(), table_arn.to_string()),
        ("region".to_string(), region.to_string()),
        (IAM_POLICY_KEY.to_string(), policy),
    ])
}

/// A pooled DynamoDB tenant lives in the store's table; its IAM policy document goes to the
/// Tenant-owned `<tenant>-dynamodb` Secret (written only when it changed).
async fn dynamodb_tenant(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<TenantOutcome, ReconcileError> {
    let provisioned = es.status.as_ref().map(|s| &s.provisioned);
    let (Some(table), Some(arn), Some(d)) = (
        provisioned.and_then(|p| p.get("table")),
        provisioned.and_then(|p| p.get("tableArn")),
        es.spec.dynamodb.as_ref(),
    ) else {
        return Ok(TenantOutcome {
            verdict: Verdict::EventStoreNotReady(
                "the EventStore's table is not provisioned yet".to_string(),
            ),
            location: None,
            usage_url: None,
            requeue: Some(RETRY),
        });
    };
    let desired = dynamodb_access(table, arn, &d.region, &tenant.spec.tenant_id);
    ensure_dynamodb_secret(tenant, ctx, ns, desired).await?;
    Ok(TenantOutcome {
        verdict: Verdict::Ready,
        location: Some(TenantLocation {
            kind: LocationKind::Table,
            name: table.clone(),
        }),
        usage_url: es
            .status
            .as_ref()
            .and_then(|s| s.endpoint.as_ref())
            .map(|e| e.url.clone()),
        requeue: None,
    })
}

/// Removes what [`reconcile`] provisioned when the Tenant is deleted: its access at once (login
/// role, table/schema grants), and its data under `deletionPolicy: Delete` (pooled PostgreSQL
/// rows, pooled DynamoDB items, pooled Firestore documents, the siloed schema, table or Firestore
/// database). Secrets go
/// with their owner reference. Ok(true) means the data is erased, Ok(false) that it is kept;
/// either way the finalizer may go. An outage is an error and retries.
pub async fn cleanup(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<bool, ReconcileError> {
    let delete = tenant.spec.deletion_policy == DeletionPolicy::Delete;
    if tenant.spec.placement == Placement::Siloed
        && matches!(
            es.spec.backend,
            Backend::Postgres | Backend::DynamoDb | Backend::Firestore
        )
    {
        siloed::cleanup(tenant, es, ctx, ns).await?;
        return Ok(delete);
    }
    if es.spec.backend == Backend::Firestore {
        super::firestore::cleanup(tenant, es, ctx, ns).await?;
        return Ok(delete);
    }
    match es.spec.backend {
        Backend::Postgres => {}
        Backend::DynamoDb if delete => {
            return purge_pooled_dynamodb(tenant, es, ctx, ns).await;
        }
        _ => return Ok(false),
    }
    let (prov, _) = match admin(es, ctx, ns).await? {
        Ok(p) => p,
        // Nothing was provisioned for a store without a schema.
        Err(Ok(_)) => return Ok(false),
        Err(Err(e)) => return Err(ReconcileError::Backend(e)),
    };
    let role = role_name(prov.schema(), &tenant.spec.tenant_id);
    prov.drop_tenant_role(&role, &tenant.spec.tenant_id, delete)
        .await?;
    if let Some(legacy) = legacy_role_name(prov.schema(), &tenant.spec.tenant_id) {
        prov.retire_legacy_role(&legacy, &tenant.spec.tenant_id)
            .await?;
    }
    Ok(delete)
}

/// Deletes a pooled tenant's items from the store's table (the gateway no longer lists the
/// tenant, so nothing writes them meanwhile). Ok(false) when the store's table is not known.
async fn purge_pooled_dynamodb(
    tenant: &Tenant,
    es: &EventStore,
    ctx: &Context,
    ns: &str,
) -> Result<bool, ReconcileError> {
    let (Some(d), Some(table)) = (
        es.spec.dynamodb.as_ref(),
        es.status.as_ref().and_then(|s| s.provisioned.get("table")),
    ) else {
        return Ok(false);
    };
    let keys = match &d.credentials_secret_ref {
        None => None,
        Some(r) => Some(
            secret_data(ctx, ns, &r.name)
                .await?
                .and_then(|data| dynamodb::keys_from_secret(&data))?,
        ),
    };
    let client = dynamodb::client(&dynamodb::Access {
        region: d.region.clone(),
        endpoint: d.endpoint.clone(),
        keys,
    })
    .await;
    let id = allsource_core::model::TenantId::new(&tenant.spec.tenant_id)
        .map_err(|e| ProvisionError::InvalidSpec(e.to_string()))?;
    let store = DynamoStore::with_client(client, DynamoConfig::new(table.clone(), &d.region));
    store
        .purge_tenant(&id)
        .await
        .map_err(|e| ProvisionError::Unavailable {
            service: "dynamodb",
            message: format!("erasing tenant {}: {e}", tenant.spec.tenant_id),
        })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_secret_is_owned_and_named() {
        let t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "namespace": "shop", "uid": "5b0c1f9e-0000-4000-8000-000000000003"},
            "spec": {"eventStoreRef": {"name": "orders"}, "tenantId": "acme-1"}
        }))
        .unwrap();
        let s = login_secret(&t, BTreeMap::from([("user".into(), "u".into())]));
        assert_eq!(s.metadata.name.as_deref(), Some("acme-postgres"));
        assert_eq!(s.metadata.owner_references.unwrap()[0].name, "acme");
        let role = role_name("allsource_shop_orders", "acme-1");
        assert!(role.starts_with("allsource_shop_orders_acme_1_"), "{role}");
        assert_eq!(
            legacy_role_name("allsource_shop_orders", "acme-1").as_deref(),
            Some("allsource_shop_orders_acme_1")
        );
    }

    #[test]
    fn dynamodb_policy_pins_the_tenant() {
        let a = dynamodb_access(
            "t",
            "arn:aws:dynamodb:us-east-1:1:table/t",
            "us-east-1",
            "acme",
        );
        let p: serde_json::Value = serde_json::from_str(&a[IAM_POLICY_KEY]).unwrap();
        assert_eq!(
            p["Statement"][0]["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"],
            serde_json::json!(["acme#*", "acme"])
        );
        assert_eq!(a["table"], "t");
    }

    #[test]
    fn tenant_login_keys() {
        let admin = postgres::connection_config(
            &BTreeMap::from([(
                "url".to_string(),
                "postgres://admin:x@db.example:5433/events".to_string(),
            )]),
            crate::api::eventstore::SslMode::Prefer,
        )
        .unwrap();
        let l = postgres::tenant_login(&admin, "s", "s_acme", "pw");
        assert_eq!(
            l.keys().cloned().collect::<Vec<_>>(),
            vec!["database", "host", "password", "port", "schema", "sslmode", "url", "user"]
        );
        assert_eq!(
            l["url"],
            "postgres://s_acme:pw@db.example:5433/events?sslmode=prefer"
        );
        assert!(!l.values().any(|v| v.contains("admin")));
    }
}
