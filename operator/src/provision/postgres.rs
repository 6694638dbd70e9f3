//! PostgreSQL provisioner: one schema per EventStore with store-node's layout (tables, indexes,
//! the tenant role map and the row-level-security policies of
//! `allsource_backends::postgres::sql::schema_ddl`, the DDL `store-node gateway --init` runs).
//! The expected objects are read out of that DDL, so drift detection can never disagree with the
//! layout. Drift is corrected by re-running the idempotent DDL; a steady state only reads
//! `pg_catalog`. RLS is enabled and forced; the owning admin role (the gateway connects as it and
//! filters by tenant itself) keeps every row through store-node's owner policy, while tenant login
//! roles are confined by the isolation policy. This module must never build tenant roles (the
//! Tenant controller does) nor print connection secrets.

use std::collections::{BTreeMap, BTreeSet};

use allsource_backends::postgres::sql;
use allsource_backends::postgres::tls::{self, PgTls, CA_KEY, CLIENT_CERT_KEY, CLIENT_KEY_KEY};
use async_trait::async_trait;
use tokio_postgres::error::SqlState;

use super::{Deleted, EnsureAction, Ensured, Observed, ProvisionError, Provisioner, CALL_TIMEOUT};
use crate::api::eventstore::SslMode;
use crate::api::DeletionPolicy;

const SERVICE: &str = "postgres";
/// Advisory lock store-node's `execute_all` takes too: concurrent idempotent DDL serializes.
const DDL_LOCK: i64 = 7_406_251;
/// Columns of the events table's primary key in the shared layout.
pub const EVENTS_PRIMARY_KEY: [&str; 3] = ["tenant", "stream", "version"];

/// Schema of an EventStore: `spec.postgres.schema`, else `allsource_<namespace>_<name>` with
/// `-` and `.` as `_`, cut to 54 bytes, then `_` and [`super::identity_suffix`] (63 bytes at most).
pub fn schema_name(
    namespace: &str,
    name: &str,
    explicit: Option<&str>,
) -> Result<String, ProvisionError> {
    let s = match explicit {
        Some(s) => s.to_string(),
        None => {
            let mut s = format!("allsource_{namespace}_{name}")
                .to_ascii_lowercase()
                .replace(['-', '.'], "_");
            s.truncate(63 - 9);
            s.push('_');
            s.push_str(&super::identity_suffix(namespace, name));
            s
        }
    };
    sql::ident(&s).map_err(|e| ProvisionError::InvalidSpec(e.to_string()))?;
    Ok(s)
}

/// Schema of a siloed tenant of the store whose schema is `store_schema`, also the name of the
/// tenant's login role: `<store schema>__<tenant id with '-' as '_'>`, cut to 54 bytes, then `_`
/// and the hash of `<store schema>/<tenant id>` ([`super::identity_suffix`]), 63 bytes at most.
/// The `__` keeps it apart from pooled login roles (`<store schema>_<tenant>`, and a tenant id
/// never starts with `-`), the hash from any other store's or tenant's cut name.
pub fn silo_schema_name(store_schema: &str, tenant_id: &str) -> String {
    let mut s =
        format!("{store_schema}__{}", tenant_id.replace(['-', '.'], "_")).to_ascii_lowercase();
    s.truncate(63 - 9);
    s.push('_');
    s.push_str(&super::identity_suffix(store_schema, tenant_id));
    s
}

/// An admin connection: where and as whom ([`tokio_postgres::Config`]) and how TLS is done
/// ([`PgTls`]); kept together so no connection can lose the spec's `sslMode`.
#[derive(Debug, Clone)]
pub struct AdminConnection {
    config: tokio_postgres::Config,
    tls: PgTls,
}

impl AdminConnection {
    /// Host, port, user, database (and the negotiation of the TLS mode).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The libpq `sslmode` connections use.
    pub fn ssl_mode(&self) -> tls::SslMode {
        self.tls.mode()
    }

    async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, tls::PgConnection), tokio_postgres::Error> {
        self.tls.connect(&self.config).await
    }
}

/// store-node's TLS mode of the spec's `sslMode` (the same libpq names).
pub fn tls_mode(ssl_mode: SslMode) -> tls::SslMode {
    match ssl_mode {
        SslMode::Disable => tls::SslMode::Disable,
        SslMode::Prefer => tls::SslMode::Prefer,
        SslMode::Require => tls::SslMode::Require,
        SslMode::VerifyCa => tls::SslMode::VerifyCa,
        SslMode::VerifyFull => tls::SslMode::VerifyFull,
    }
}

/// Connection settings from the admin Secret's (decoded) data: key `url`, or keys `host`,
/// `port`, `user`, `password`, `database`; optional key `ca.crt` (PEM) is the CA of
/// `verify-ca` / `verify-full`; optional keys `tls.crt` and `tls.key` (PEM, both or neither)
/// are a client certificate presented to the server (pg_hba `cert` authentication, where the
/// password may be left out). The `sslMode` of the spec is applied on top.
pub fn connection_config(
    data: &BTreeMap<String, String>,
    ssl_mode: SslMode,
) -> Result<AdminConnection, ProvisionError> {
    let mut cfg: tokio_postgres::Config = match data.get("url") {
        // A libpq `sslmode=verify-full` in the URL would not parse; the spec's mode applies.
        Some(url) => tls::strip_sslmode(url).0.parse().map_err(|_| {
            // The parser's message may quote the URL, password included: never pass it on.
            ProvisionError::InvalidSpec(
                "key url of the connection Secret is not a PostgreSQL URL".to_string(),
            )
        })?,
        None => {
            let host = data.get("host").ok_or_else(|| {
                ProvisionError::InvalidSpec(
                    "the connection Secret needs key url, or keys host, user, password (port, database optional)"
                        .to_string(),
                )
            })?;
            let mut c = tokio_postgres::Config::new();
            c.host(host);
            if let Some(port) = data.get("port") {
                let port: u16 = port.trim().parse().map_err(|_| {
                    ProvisionError::InvalidSpec(
                        "key port of the connection Secret is not a port number".to_string(),
                    )
                })?;
                c.port(port);
            }
            if let Some(user) = data.get("user") {
                c.user(user);
            }
            if let Some(pw) = data.get("password") {
                c.password(pw);
            }
            if let Some(db) = data.get("database") {
                c.dbname(db);
            }
            c
        }
    };
    let ca = data.get(CA_KEY).map(String::as_str);
    let client = tls::client_identity_from(
        data.get(CLIENT_CERT_KEY).map(String::as_str),
        data.get(CLIENT_KEY_KEY).map(String::as_str),
    )
    .map_err(|e| ProvisionError::InvalidSpec(format!("connection Secret: {e}")))?;
    let tls = PgTls::with_client(tls_mode(ssl_mode), ca, client)
        .map_err(|e| ProvisionError::InvalidSpec(format!("connection Secret: {e}")))?;
    tls.apply(&mut cfg);
    cfg.connect_timeout(CALL_TIMEOUT);
    Ok(AdminConnection { config: cfg, tls })
}

/// The objects the shared DDL creates in a schema, read out of the DDL itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Tables (`CREATE TABLE IF NOT EXISTS <schema>.<table>`).
    pub tables: BTreeSet<String>,
    /// Named secondary indexes (`CREATE [UNIQUE] INDEX IF NOT EXISTS <name>`).
    pub indexes: BTreeSet<String>,
    /// Tables with row-level security enabled.
    pub rls_tables: BTreeSet<String>,
    /// Tables with row-level security forced (applied to the owner too).
    pub forced_tables: BTreeSet<String>,
    /// (table, policy) pairs.
    pub policies: BTreeSet<(String, String)>,
    /// Functions (`CREATE OR REPLACE FUNCTION <schema>.<name>(`).
    pub functions: BTreeSet<String>,
}

/// Identifier after `prefix` in `stmt` (quotes and a `<schema>.` qualifier removed).
fn object_after(stmt: &str, prefix: &str) -> Option<String> {
    let rest = stmt.trim_start().strip_prefix(prefix)?.trim_start();
    let word: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '(')
        .collect();
    let name = word.rsplit('.').next().unwrap_or(&word).trim_matches('"');
    (!name.is_empty()).then(|| name.to_string())
}

/// The objects `ddl` (store-node's `schema_ddl`) creates.
pub fn expected_from_ddl(ddl: &[String]) -> Expected {
    let mut e = Expected::default();
    for stmt in ddl {
        if let Some(t) = object_after(stmt, "CREATE TABLE IF NOT EXISTS") {
            e.tables.insert(t);
        } else if let Some(i) = object_after(stmt, "CREATE UNIQUE INDEX IF NOT EXISTS")
            .or_else(|| object_after(stmt, "CREATE INDEX IF NOT EXISTS"))
        {
            e.indexes.insert(i);
        } else if let Some(f) = object_after(stmt, "CREATE OR REPLACE FUNCTION") {
            e.functions.insert(f);
        } else if let Some(t) = object_after(stmt, "ALTER TABLE") {
            if stmt.contains("ENABLE ROW LEVEL SECURITY") {
                e.rls_tables.insert(t);
            } else if stmt.contains("FORCE ROW LEVEL SECURITY") {
                e.forced_tables.insert(t);
            }
        } else if let Some(p) = object_after(stmt, "CREATE POLICY") {
            if let Some((_, on)) = stmt.split_once(" ON ") {
                if let Some(t) = object_after(on, "") {
                    e.policies.insert((t, p));
                }
            }
        }
    }
    e
}

/// What `pg_catalog` says about a schema.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// The schema exists.
    pub schema_exists: bool,
    /// Table name to (row security enabled, row security forced).
    pub tables: BTreeMap<String, (bool, bool)>,
    /// Index names.
    pub indexes: BTreeSet<String>,
    /// (table, policy) pairs.
    pub policies: BTreeSet<(String, String)>,
    /// Function names.
    pub functions: BTreeSet<String>,
    /// Primary-key columns of the events table in key order (empty when it has none).
    pub events_primary_key: Vec<String>,
}

/// Drift items between the expected objects and the catalog, in a stable order.
pub fn drift(expected: &Expected, live: &Catalog, schema: &str) -> Vec<String> {
    if !live.schema_exists {
        return vec![format!("schema {schema} missing")];
    }
    let mut d = Vec::new();
    for t in &expected.tables {
        if !live.tables.contains_key(t) {
            d.push(format!("table {schema}.{t} missing"));
        }
    }
    for i in &expected.indexes {
        if !live.indexes.contains(i) {
            d.push(format!("index {schema}.{i} missing"));
        }
    }
    for t in &expected.rls_tables {
        if live.tables.get(t).is_some_and(|(enabled, _)| !enabled) {
            d.push(format!("row-level security disabled on {schema}.{t}"));
        }
    }
    for t in &expected.forced_tables {
        if live.tables.get(t).is_some_and(|(_, forced)| !forced) {
            d.push(format!("row-level security not forced on {schema}.{t}"));
        }
    }
    for (t, p) in &expected.policies {
        if !live.policies.contains(&(t.clone(), p.clone())) {
            d.push(format!("policy {p} missing on {schema}.{t}"));
        }
    }
    for f in &expected.functions {
        if !live.functions.contains(f) {
            d.push(format!("function {schema}.{f} missing"));
        }
    }
    d
}

/// A conflict that forbids adopting the schema: an events table with another primary key.
pub fn conflict(live: &Catalog, schema: &str) -> Option<String> {
    if !live.tables.contains_key("events") {
        return None;
    }
    let want: Vec<String> = EVENTS_PRIMARY_KEY.iter().map(|s| s.to_string()).collect();
    (live.events_primary_key != want).then(|| {
        format!(
            "table {schema}.events exists with primary key ({}), not (tenant, stream, version); it is left untouched",
            live.events_primary_key.join(", ")
        )
    })
}

/// Statement dropping the schema and everything in it (deletionPolicy Delete).
pub fn drop_ddl(schema: &str) -> Result<String, ProvisionError> {
    let s = sql::ident(schema).map_err(|e| ProvisionError::InvalidSpec(e.to_string()))?;
    Ok(format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
}

fn pg_err(e: tokio_postgres::Error) -> ProvisionError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let message = format!("{}: {}", code.code(), db.message());
        if code.code().starts_with("28") || *code == SqlState::INSUFFICIENT_PRIVILEGE {
            return ProvisionError::Permission {
                service: SERVICE,
                message,
            };
        }
        if code.code() == sql::ROLE_CONFLICT {
            return ProvisionError::Conflict(db.message().to_string());
        }
        if *code == SqlState::INVALID_CATALOG_NAME {
            return ProvisionError::InvalidSpec(format!("postgres {message}"));
        }
        if code.code().starts_with("53")
            || code.code().starts_with("57")
            || code.code().starts_with("08")
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            return ProvisionError::Unavailable {
                service: SERVICE,
                message,
            };
        }
        return ProvisionError::Conflict(format!("postgres {message}"));
    }
    // "error connecting to server" alone hides the cause (refused, timed out, DNS ...).
    let message = match std::error::Error::source(&e) {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    };
    ProvisionError::Unavailable {
        service: SERVICE,
        message,
    }
}

/// The PostgreSQL provisioner of one EventStore.
pub struct PostgresProvisioner {
    config: AdminConnection,
    schema: String,
}

impl PostgresProvisioner {
    /// A provisioner for `schema` over the admin connection `config` (no connection yet).
    pub fn new(config: AdminConnection, schema: String) -> Self {
        Self { config, schema }
    }

    /// The schema this provisioner manages.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, ProvisionError> {
        let fut = self.config.connect();
        let (client, conn) = tokio::time::timeout(CALL_TIMEOUT, fut)
            .await
            .map_err(|_| ProvisionError::Unavailable {
                service: SERVICE,
                message: format!("no connection within {}s", CALL_TIMEOUT.as_secs()),
            })?
            .map_err(pg_err)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "postgres admin connection ended");
            }
        });
        Ok(client)
    }

    async fn catalog(&self, c: &tokio_postgres::Client) -> Result<Catalog, ProvisionError> {
        let s = self.schema.as_str();
        let q = |stmt: &'static str| async move {
            tokio::time::timeout(CALL_TIMEOUT, c.query(stmt, &[&s]))
                .await
                .map_err(|_| ProvisionError::Unavailable {
                    service: SERVICE,
                    message: "catalog query timed out".to_string(),
                })?
                .map_err(pg_err)
        };
        let mut cat = Catalog {
            schema_exists: !q("SELECT 1 FROM pg_namespace WHERE nspname = $1")
                .await?
                .is_empty(),
            ..Catalog::default()
        };
        if !cat.schema_exists {
            return Ok(cat);
        }
        for r in q("SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c \
                    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'")
        .await?
        {
            cat.tables.insert(r.get(0), (r.get(1), r.get(2)));
        }
        for r in q("SELECT indexname::text FROM pg_indexes WHERE schemaname = $1").await? {
            cat.indexes.insert(r.get(0));
        }
        for r in
            q("SELECT tablename::text, policyname::text FROM pg_policies WHERE schemaname = $1")
                .await?
        {
            cat.policies.insert((r.get(0), r.get(1)));
        }
        for r in q(
            "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                    WHERE n.nspname = $1",
        )
        .await?
        {
            cat.functions.insert(r.get(0));
        }
        for r in q("SELECT a.attname::text FROM pg_index i \
                    JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
                    WHERE n.nspname = $1 AND c.relname = 'events' AND i.indisprimary ORDER BY k.ord")
        .await?
        {
            cat.events_primary_key.push(r.get(0));
        }
        Ok(cat)
    }

    fn ddl(&self) -> Result<Vec<String>, ProvisionError> {
        sql::schema_ddl(&self.schema).map_err(|e| ProvisionError::InvalidSpec(e.to_string()))
    }

    async fn run_ddl(&self, c: &mut tokio_postgres::Client) -> Result<(), ProvisionError> {
        let ddl = self.ddl()?;
        run(c, &ddl).await
    }

    fn resources(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("schema".to_string(), self.schema.clone())])
    }

    /// Creates (or, with `force`, updates the password of) a pooled tenant's login role with
    /// store-node's `tenant_role_ddl`: privileges on the tenant tables, mapped to `tenant` in
    /// `tenant_roles`, confined to its rows by the RLS policies. Returns whether it ran DDL
    /// (without `force`, only when the role or its mapping is missing).
    pub async fn ensure_tenant_role(
        &self,
        role: &str,
        tenant: &str,
        password: &str,
        force: bool,
    ) -> Result<bool, ProvisionError> {
        let ddl = sql::tenant_role_ddl(&self.schema, role, tenant, password)
            .map_err(|e| ProvisionError::InvalidSpec(e.to_string()))?;
        let mut c = self.connect().await?;
        if !force {
            let s =
                sql::ident(&self.schema).map_err(|e| ProvisionError::InvalidSpec(e.to_string()))?;
            let mapped = format!(
                "SELECT 1 FROM pg_roles r JOIN {s}.tenant_roles t ON t.role = r.rolname \
                 WHERE r.rolname = $1 AND t.tenant = $2"
            );
            let rows = tokio::time::timeout(CALL_TIMEOUT, c.query(&mapped, &[&role, &tenant]))
                .await
                .map_err(|_| ProvisionError::Unavailable {
                    service: SERVICE,
                    message: "role lookup timed out".to_string(),
                })?
                .map_err(pg_err)?;
            if !rows.is_empty() {
                return Ok(false);
            }
        }
        run(&mut c, &ddl).await?;
        Ok(true)
    }

    /// Retires a login role `tenant` had under an older naming (see `sql::legacy_tenant_role`):
    /// dropped with its mapping when, and only when, it is mapped to `tenant` in this schema (a
    /// role mapped to another tenant is that tenant's to retire). Its open sessions see no row
    /// from the moment the mapping is gone. Returns whether a role was retired.
    pub async fn retire_legacy_role(
        &self,
        legacy: &str,
        tenant: &str,
    ) -> Result<bool, ProvisionError> {
        let mut c = self.connect().await?;
        if !self.catalog(&c).await?.schema_exists {
            return Ok(false);
        }
        let s = sql::ident(&self.schema).map_err(|e| ProvisionError::InvalidSpec(e.to_string()))?;
        let mapped = format!("SELECT 1 FROM {s}.tenant_roles WHERE role = $1 AND tenant = $2");
        let rows = tokio::time::timeout(CALL_TIMEOUT, c.query(&mapped, &[&legacy, &tenant]))
            .await
            .map_err(|_| ProvisionError::Unavailable {
                service: SERVICE,
                message: "role lookup timed out".to_string(),
            })?
            .map_err(pg_err)?;
        if rows.is_empty() {
            return Ok(false);
        }
        let ddl = sql::drop_tenant_role_ddl(&self.schema, legacy, tenant, false)
            .map_err(|e| ProvisionError::InvalidSpec(e.to_string()))?;
        run(&mut c, &ddl).await?;
        Ok(true)
    }

    /// Removes a pooled tenant's login role and its mapping (its rows too when `drop_data`).
    /// Without the schema (already dropped) only the role is dropped.
    pub async fn drop_tenant_role(
        &self,
        role: &str,
        tenant: &str,
        drop_data: bool,
    ) -> Result<(), ProvisionError> {
        let mut c = self.connect().await?;
        let ddl = if self.catalog(&c).await?.schema_exists {
            sql::drop_tenant_role_ddl(&self.schema, role, tenant, drop_data)
                .map_err(|e| ProvisionError::InvalidSpec(e.to_string()))?
        } else {
            let r = sql::ident(role).map_err(|e| ProvisionError::InvalidSpec(e.to_string()))?;
            vec![format!("DROP ROLE IF EXISTS {r}")]
        };
        run(&mut c, &ddl).await
    }
}

/// Runs `statements` in one transaction under store-node's DDL advisory lock.
async fn run(c: &mut tokio_postgres::Client, statements: &[String]) -> Result<(), ProvisionError> {
    let work = async {
        let tx = c.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
            .await
            .map_err(pg_err)?;
        for s in statements {
            tx.batch_execute(s).await.map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    };
    tokio::time::timeout(CALL_TIMEOUT * 3, work)
        .await
        .map_err(|_| ProvisionError::Unavailable {
            service: SERVICE,
            message: "DDL timed out".to_string(),
        })?
}

/// What a pooled tenant's own PostgreSQL login needs (the keys of its `<tenant>-postgres`
/// Secret): `host`, `port`, `database`, `schema`, `user`, `password`, `sslmode` and `url` (with
/// `?sslmode=`). Host, port, database and sslmode are the admin connection's.
pub fn tenant_login(
    admin_connection: &AdminConnection,
    schema: &str,
    role: &str,
    password: &str,
) -> BTreeMap<String, String> {
    let admin = admin_connection.config();
    let sslmode = admin_connection.ssl_mode().as_str();
    let host = admin
        .get_hosts()
        .iter()
        .find_map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => Some(h.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "localhost".to_string());
    let port = admin.get_ports().first().copied().unwrap_or(5432);
    let db = admin
        .get_dbname()
        .map(str::to_string)
        .or_else(|| admin.get_user().map(str::to_string))
        .unwrap_or_else(|| "postgres".to_string());
    BTreeMap::from([
        ("host".to_string(), host.clone()),
        ("port".to_string(), port.to_string()),
        ("database".to_string(), db.clone()),
        ("schema".to_string(), schema.to_string()),
        ("user".to_string(), role.to_string()),
        ("password".to_string(), password.to_string()),
        ("sslmode".to_string(), sslmode.to_string()),
        (
            "url".to_string(),
            format!("postgres://{role}:{password}@{host}:{port}/{db}?sslmode={sslmode}"),
        ),
    ])
}

#[async_trait]
impl Provisioner for PostgresProvisioner {
    async fn ensure(&self) -> Result<Ensured, ProvisionError> {
        let mut c = self.connect().await?;
        let live = self.catalog(&c).await?;
        if let Some(msg) = conflict(&live, &self.schema) {
            return Err(ProvisionError::Conflict(msg));
        }
        let action = if live.schema_exists {
            EnsureAction::Adopted
        } else {
            self.run_ddl(&mut c).await?;
            EnsureAction::Created
        };
        Ok(Ensured {
            action,
            resources: self.resources(),
        })
    }

    async fn observe(&self) -> Result<Observed, ProvisionError> {
        let expected = expected_from_ddl(&self.ddl()?);
        let mut c = self.connect().await?;
        let live = self.catalog(&c).await?;
        let found = drift(&expected, &live, &self.schema);
        let mut out = Observed {
            resources: self.resources(),
            ..Observed::default()
        };
        if !found.is_empty() {
            self.run_ddl(&mut c).await?;
            let after = self.catalog(&c).await?;
            let left = drift(&expected, &after, &self.schema);
            out.corrected = found
                .iter()
                .filter(|d| !left.contains(d))
                .cloned()
                .collect();
            out.pending = !left.is_empty();
            out.drift = found;
        }
        let forced = live.tables.values().filter(|(_, f)| *f).count();
        out.resources.insert(
            "rowLevelSecurity".to_string(),
            format!(
                "enabled on {} tables ({} forced)",
                expected.rls_tables.len(),
                forced
            ),
        );
        Ok(out)
    }

    async fn delete(&self, policy: DeletionPolicy) -> Result<Deleted, ProvisionError> {
        if policy == DeletionPolicy::Retain {
            return Ok(Deleted::Retained);
        }
        let c = self.connect().await?;
        if !self.catalog(&c).await?.schema_exists {
            return Ok(Deleted::AlreadyGone);
        }
        let stmt = drop_ddl(&self.schema)?;
        tokio::time::timeout(CALL_TIMEOUT * 3, c.batch_execute(&stmt))
            .await
            .map_err(|_| ProvisionError::Unavailable {
                service: SERVICE,
                message: "DROP SCHEMA timed out".to_string(),
            })?
            .map_err(pg_err)?;
        Ok(Deleted::Deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Expected {
        expected_from_ddl(&sql::schema_ddl("es1").unwrap())
    }

    fn healthy() -> Catalog {
        let e = expected();
        Catalog {
            schema_exists: true,
            tables: e
                .tables
                .iter()
                .map(|t| (t.clone(), (true, e.forced_tables.contains(t))))
                .collect(),
            indexes: e.indexes.clone(),
            policies: e.policies.clone(),
            functions: e.functions.clone(),
            events_primary_key: EVENTS_PRIMARY_KEY.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn expected_objects_come_from_the_shared_ddl() {
        let e = expected();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            e.tables,
            set(&["tenants", "streams", "events", "snapshots", "tenant_roles"])
        );
        assert_eq!(
            e.indexes,
            set(&["events_tenant_position", "events_tenant_stream_event_id"])
        );
        assert_eq!(e.rls_tables, set(&sql::TENANT_TABLES));
        assert_eq!(e.forced_tables, set(&sql::TENANT_TABLES));
        assert_eq!(e.policies.len(), 2 * sql::TENANT_TABLES.len());
        assert!(e
            .policies
            .contains(&("events".to_string(), sql::OWNER_POLICY.to_string())));
        assert!(e
            .policies
            .contains(&("events".to_string(), sql::POLICY.to_string())));
        assert_eq!(e.functions, set(&["tenant_of"]));
    }

    #[test]
    fn healthy_schema_has_no_drift() {
        assert!(drift(&expected(), &healthy(), "es1").is_empty());
        assert_eq!(conflict(&healthy(), "es1"), None);
    }

    #[test]
    fn drift_lists_each_missing_piece() {
        let mut live = healthy();
        live.indexes.remove("events_tenant_position");
        live.tables.insert("streams".into(), (false, true));
        live.tables.insert("events".into(), (true, false));
        live.policies
            .remove(&("snapshots".to_string(), sql::POLICY.to_string()));
        assert_eq!(
            drift(&expected(), &live, "es1"),
            vec![
                "index es1.events_tenant_position missing".to_string(),
                "row-level security disabled on es1.streams".to_string(),
                "row-level security not forced on es1.events".to_string(),
                "policy allsource_tenant_isolation missing on es1.snapshots".to_string(),
            ]
        );
        let gone = Catalog::default();
        assert_eq!(
            drift(&expected(), &gone, "es1"),
            vec!["schema es1 missing".to_string()]
        );
    }

    #[test]
    fn foreign_events_table_is_a_conflict() {
        let mut live = healthy();
        live.events_primary_key = vec!["id".into()];
        let msg = conflict(&live, "es1").unwrap();
        assert!(msg.contains("primary key (id)"), "{msg}");
    }

    #[test]
    fn schema_names() {
        let derived = schema_name("team-a", "orders.v2", None).unwrap();
        assert!(
            derived.starts_with("allsource_team_a_orders_v2_"),
            "{derived}"
        );
        assert_ne!(
            schema_name("a", "b-c", None).unwrap(),
            schema_name("a-b", "c", None).unwrap(),
            "two stores must never share a derived schema"
        );
        assert_eq!(schema_name("x", "y", Some("mine")).unwrap(), "mine");
        assert!(matches!(
            schema_name("x", "y", Some("Bad-Name")),
            Err(ProvisionError::InvalidSpec(_))
        ));
        let long = "n".repeat(80);
        assert_eq!(schema_name("ns", &long, None).unwrap().len(), 63);
        assert_eq!(
            drop_ddl("es1").unwrap(),
            "DROP SCHEMA IF EXISTS \"es1\" CASCADE"
        );
    }

    #[test]
    fn silo_schema_names() {
        let s = silo_schema_name("allsource_shop_orders_1a2b3c4d", "acme-1");
        assert!(
            s.starts_with("allsource_shop_orders_1a2b3c4d__acme_1_"),
            "{s}"
        );
        assert!(sql::ident(&s).is_ok(), "{s}");
        assert_eq!(
            s,
            silo_schema_name("allsource_shop_orders_1a2b3c4d", "acme-1")
        );
        // Never a pooled tenant's role name in the same store (`<schema>_<tenant>`, the tenant
        // starting with a letter or digit), whatever that tenant's id.
        let store = "allsource_shop_orders_1a2b3c4d";
        assert_eq!(&s[store.len()..store.len() + 2], "__");
        assert!(sql::tenant_role(store, "x")
            .as_bytes()
            .get(store.len() + 1)
            .is_some_and(u8::is_ascii_alphanumeric));
        // Cut names stay apart: long store schema, tenants differing only past the cut.
        let long = "s".repeat(63);
        let (a, b) = (
            silo_schema_name(&long, &format!("{}-a", "t".repeat(40))),
            silo_schema_name(&long, &format!("{}-b", "t".repeat(40))),
        );
        assert_eq!((a.len(), b.len()), (63, 63));
        assert_ne!(a, b);
        assert!(sql::ident(&a).is_ok());
        // A pooled role is never a silo's name, even when only the hashes are left.
        let t = format!("{}-a", "t".repeat(40));
        assert_ne!(sql::tenant_role(&long, &t), silo_schema_name(&long, &t));
        // Two stores never share a tenant's silo.
        assert_ne!(silo_schema_name("a", "t"), silo_schema_name("b", "t"));
    }

    #[test]
    fn connection_from_secret_keys() {
        let url = BTreeMap::from([(
            "url".to_string(),
            "postgres://admin:s3cret@db:5433/events".to_string(),
        )]);
        let c = connection_config(&url, SslMode::Prefer).unwrap();
        assert_eq!(c.config().get_dbname(), Some("events"));
        let libpq = BTreeMap::from([(
            "url".to_string(),
            "postgres://admin:s3cret@db:5433/events?sslmode=verify-full".to_string(),
        )]);
        let c = connection_config(&libpq, SslMode::Require).unwrap();
        assert_eq!(c.ssl_mode(), tls::SslMode::Require, "the spec's mode wins");
        assert_eq!(c.config().get_ports(), &[5433]);
        let parts = BTreeMap::from([
            ("host".to_string(), "db".to_string()),
            ("port".to_string(), "5432".to_string()),
            ("user".to_string(), "admin".to_string()),
            ("password".to_string(), "pw".to_string()),
        ]);
        let c = connection_config(&parts, SslMode::Disable).unwrap();
        assert_eq!(c.config().get_user(), Some("admin"));
        let bad = BTreeMap::from([(
            "url".to_string(),
            "postgres://u:topsecret@".to_string() + "%zz",
        )]);
        if let Err(e) = connection_config(&bad, SslMode::Prefer) {
            assert!(!e.to_string().contains("topsecret"));
        }
        assert!(matches!(
            connection_config(&BTreeMap::new(), SslMode::Prefer),
            Err(ProvisionError::InvalidSpec(_))
        ));
    }

    #[test]
    fn every_ssl_mode_connects_with_its_tls() {
        let parts = BTreeMap::from([
            ("host".to_string(), "db".to_string()),
            ("user".to_string(), "admin".to_string()),
        ]);
        let modes = [
            (SslMode::Disable, "disable"),
            (SslMode::Prefer, "prefer"),
            (SslMode::Require, "require"),
            (SslMode::VerifyCa, "verify-ca"),
            (SslMode::VerifyFull, "verify-full"),
        ];
        for (mode, libpq) in modes {
            // The CRD's spelling is libpq's, which is store-node's.
            assert_eq!(
                serde_json::to_value(mode).unwrap(),
                serde_json::json!(libpq)
            );
            let c = connection_config(&parts, mode).unwrap();
            assert_eq!(c.ssl_mode().as_str(), libpq);
            assert_eq!(c.config().get_ssl_mode(), tls_mode(mode).negotiation());
        }
        // ca.crt is parsed where it is used, and its problem is a spec problem.
        let mut with_ca = parts.clone();
        with_ca.insert(CA_KEY.to_string(), "not a certificate".to_string());
        match connection_config(&with_ca, SslMode::VerifyFull) {
            Err(ProvisionError::InvalidSpec(m)) => assert!(m.contains("ca.crt"), "{m}"),
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
        assert!(connection_config(&with_ca, SslMode::Require).is_ok());
    }

    #[test]
    fn tenant_login_carries_the_ssl_mode() {
        let admin = BTreeMap::from([(
            "url".to_string(),
            "postgres://admin:x@db.example:5433/events".to_string(),
        )]);
        let c = connection_config(&admin, SslMode::VerifyFull).unwrap();
        let l = tenant_login(&c, "s", "s_acme", "pw");
        assert_eq!(l["sslmode"], "verify-full");
        assert_eq!(
            l["url"],
            "postgres://s_acme:pw@db.example:5433/events?sslmode=verify-full"
        );
    }
}
