//! PostgreSQL backend of the event-store API (tokio-postgres + deadpool-postgres).
//!
//! Owns the data path over the layout built by [`sql`]: one schema per EventStore, plus one per
//! siloed tenant. Appends run in one transaction: lock (or create) the stream head row, resolve
//! idempotent retries, check the expected version, reserve gap-free positions from the tenant's
//! counter row (its row lock orders a tenant's commits, so positions follow commit order and a
//! polling subscriber never skips an event), insert the events, update the head. Tenant isolation
//! on this path is by `WHERE tenant = $1` on every statement (the gateway connects as the admin);
//! direct tenant logins are confined by the row-level-security policies. This module must never
//! build SQL text itself: statements come from [`sql`].

pub mod sql;
pub mod tls;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool, Runtime};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::cloud::{self, StreamHead};
use allsource_core::error::StoreError;
use allsource_core::model::{
    AppendResult, Capabilities, Direction, ExpectedVersion, Limits, NewEvent, ReadFrom,
    RecordedEvent, Snapshot, StreamId, StreamInfo, TenantId, TenantStats,
};
use allsource_core::store::{EventStore, EventSubscription, StoreResult, SubscriptionTarget};
use sql::Queries;
use tls::{PgTls, SslMode};

/// Configuration of the PostgreSQL backend.
#[derive(Clone)]
pub struct PostgresConfig {
    /// Connection URL (`postgres://user:pass@host:port/db`).
    pub url: String,
    /// Schema of the pooled tenants.
    pub schema: String,
    /// Siloed tenants and their own schema.
    pub siloed: BTreeMap<TenantId, String>,
    /// Largest number of pooled connections.
    pub pool_size: usize,
    /// Poll interval of subscriptions.
    pub poll_interval: Duration,
    /// libpq `sslmode` of the connections; overrides any `sslmode` of the URL.
    pub ssl_mode: SslMode,
    /// PEM CA bundle the server's certificate is verified against (`verify-ca`,
    /// `verify-full`); the built-in Mozilla roots when unset.
    pub ca_pem: Option<String>,
    /// PEM client certificate presented to the server (with [`PostgresConfig::client_key_pem`]).
    pub client_cert_pem: Option<String>,
    /// PEM private key of the client certificate (never logged).
    pub client_key_pem: Option<String>,
}

// Hand-written: the URL may carry a password and the client key is secret; neither is printed.
impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"<redacted>")
            .field("schema", &self.schema)
            .field("siloed", &self.siloed)
            .field("pool_size", &self.pool_size)
            .field("poll_interval", &self.poll_interval)
            .field("ssl_mode", &self.ssl_mode)
            .field("ca_pem", &self.ca_pem.is_some())
            .field("client_cert", &self.client_cert_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// A configuration with defaults for everything but the URL and schema (TLS: `prefer`,
    /// like libpq).
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: schema.into(),
            siloed: BTreeMap::new(),
            pool_size: 16,
            poll_interval: cloud::DEFAULT_POLL_INTERVAL,
            ssl_mode: SslMode::default(),
            ca_pem: None,
            client_cert_pem: None,
            client_key_pem: None,
        }
    }
}

/// The PostgreSQL event store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    schema: String,
    queries: Queries,
    silos: BTreeMap<TenantId, (String, Queries)>,
    limits: Limits,
    poll_interval: Duration,
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            return StoreError::Conflict { current: None };
        }
        if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::TOO_MANY_CONNECTIONS
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
        {
            return StoreError::Unavailable(format!("postgres: {}", db.message()));
        }
        return StoreError::Internal(format!("postgres {}: {}", code.code(), db.message()));
    }
    if e.is_closed() {
        return StoreError::Unavailable(format!("postgres connection closed: {e}"));
    }
    StoreError::Unavailable(format!("postgres: {}", with_causes(&e)))
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("postgres pool: {}", with_causes(&e)))
}

/// `e` and its sources: "error performing TLS handshake" alone hides which check failed.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_str = c.to_string();
        if !s.ends_with(&c_str) {
            s.push_str(": ");
            s.push_str(&c_str);
        }
        cause = c.source();
    }
    s
}

fn to_i64(v: u64) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::invalid("version", "value out of range"))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn meta_json(m: &BTreeMap<String, String>) -> StoreResult<String> {
    serde_json::to_string(m).map_err(|e| StoreError::Internal(format!("metadata: {e}")))
}

fn meta_parse(s: &str) -> StoreResult<BTreeMap<String, String>> {
    serde_json::from_str(s).map_err(|e| StoreError::Internal(format!("stored metadata: {e}")))
}

fn event_size(stream: &StreamId, e: &NewEvent) -> u64 {
    let meta: usize = e.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    (e.payload.len() + e.event_type.len() + stream.as_str().len() + meta + 48) as u64
}

fn row_event(row: &tokio_postgres::Row) -> StoreResult<RecordedEvent> {
    let tenant: String = row.try_get(0).map_err(pg_err)?;
    let stream: String = row.try_get(1).map_err(pg_err)?;
    let meta: String = row.try_get(7).map_err(pg_err)?;
    Ok(RecordedEvent {
        tenant: TenantId::new(tenant)?,
        stream: StreamId::new(stream)?,
        version: to_u64(row.try_get(2).map_err(pg_err)?),
        position: to_u64(row.try_get(3).map_err(pg_err)?),
        event_id: row.try_get(4).map_err(pg_err)?,
        event_type: row.try_get(5).map_err(pg_err)?,
        payload: row.try_get(6).map_err(pg_err)?,
        metadata: meta_parse(&meta)?,
        timestamp_ms: row.try_get(8).map_err(pg_err)?,
    })
}

fn row_head(row: &tokio_postgres::Row) -> StoreResult<Option<StreamHead>> {
    let last: i64 = row.try_get(0).map_err(pg_err)?;
    if last < 0 {
        // A head row created by this very transaction: the stream has no event yet.
        return Ok(None);
    }
    Ok(Some(StreamHead {
        last_version: to_u64(last),
        start_version: to_u64(row.try_get(1).map_err(pg_err)?),
        deleted: row.try_get(2).map_err(pg_err)?,
    }))
}

impl PostgresStore {
    /// Connects a pool (lazily: the first query opens connections).
    pub fn connect(config: PostgresConfig) -> StoreResult<Self> {
        let mut pg = deadpool_postgres::Config::new();
        pg.url = Some(tls::strip_sslmode(&config.url).0);
        pg.pool = Some(deadpool_postgres::PoolConfig::new(config.pool_size.max(1)));
        let client = tls::client_identity_from(
            config.client_cert_pem.as_deref(),
            config.client_key_pem.as_deref(),
        )
        .map_err(|e| StoreError::invalid("client certificate", e.to_string()))?;
        let tls = PgTls::with_client(config.ssl_mode, config.ca_pem.as_deref(), client)
            .map_err(|e| StoreError::invalid("sslmode", e.to_string()))?;
        // Negotiation as in `PgTls::apply`; the connector does the verification.
        pg.ssl_mode = Some(match config.ssl_mode {
            SslMode::Disable => deadpool_postgres::SslMode::Disable,
            SslMode::Prefer => deadpool_postgres::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                deadpool_postgres::SslMode::Require
            }
        });
        let pool = pg
            .create_pool(Some(Runtime::Tokio1), tls.connector())
            .map_err(|e| StoreError::invalid("url", format!("postgres pool: {e}")))?;
        let queries = Queries::new(&config.schema)?;
        let mut silos = BTreeMap::new();
        for (t, s) in &config.siloed {
            silos.insert(t.clone(), (s.clone(), Queries::new(s)?));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                schema: config.schema,
                queries,
                silos,
                limits: Limits::default(),
                poll_interval: config.poll_interval,
            }),
        })
    }

    /// The same store over another schema with the shared layout (a siloed tenant's), sharing
    /// this store's connection pool.
    pub fn with_schema(&self, schema: &str) -> StoreResult<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                pool: self.inner.pool.clone(),
                schema: schema.to_string(),
                queries: Queries::new(schema)?,
                silos: BTreeMap::new(),
                limits: self.inner.limits.clone(),
                poll_interval: self.inner.poll_interval,
            }),
        })
    }

    fn q(&self, tenant: &TenantId) -> &Queries {
        self.inner
            .silos
            .get(tenant)
            .map_or(&self.inner.queries, |(_, q)| q)
    }

    /// Schemas this store uses (pooled first, then the siloed ones).
    pub fn schemas(&self) -> Vec<String> {
        let mut v = vec![self.inner.schema.clone()];
        v.extend(self.inner.silos.values().map(|(s, _)| s.clone()));
        v
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.inner.pool.get().await.map_err(pool_err)
    }

    /// Runs statements in one transaction under an advisory lock (idempotent DDL may race).
    pub async fn execute_all(&self, statements: &[String]) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock(7406251)", &[])
            .await
            .map_err(pg_err)?;
        for s in statements {
            tx.batch_execute(s).await.map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }

    /// Creates (idempotently) every schema this store uses: tables, indexes, role map, RLS.
    pub async fn init_schema(&self) -> StoreResult<()> {
        let mut all = Vec::new();
        for s in self.schemas() {
            all.extend(sql::schema_ddl(&s)?);
        }
        self.execute_all(&all).await
    }

    /// Creates or updates the login role of a pooled tenant and maps it to the tenant.
    pub async fn ensure_tenant_role(
        &self,
        tenant: &TenantId,
        role: &str,
        password: &str,
    ) -> StoreResult<()> {
        let schema = self
            .inner
            .silos
            .get(tenant)
            .map_or(self.inner.schema.as_str(), |(s, _)| s.as_str());
        let ddl = sql::tenant_role_ddl(schema, role, tenant.as_str(), password)?;
        self.execute_all(&ddl).await
    }

    async fn head(
        &self,
        c: &impl GenericClient,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> StoreResult<Option<StreamHead>> {
        let st = c
            .prepare_cached(&self.q(tenant).get_stream)
            .await
            .map_err(pg_err)?;
        let row = c
            .query_opt(&st, &[&tenant.as_str(), &stream.as_str()])
            .await
            .map_err(pg_err)?;
        match row {
            Some(r) => row_head(&r),
            None => Ok(None),
        }
    }

    async fn try_append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> StoreResult<AppendResult> {
        let q = self.q(tenant);
        let (t, s) = (tenant.as_str(), stream.as_str());
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        // A placeholder head (last_version -1) makes concurrent first appends queue on its lock;
        // it only survives if this transaction commits, and then carries real values.
        let ins = tx.prepare_cached(&q.insert_stream).await.map_err(pg_err)?;
        tx.execute(&ins, &[&t, &s, &-1i64, &0i64])
            .await
            .map_err(pg_err)?;
        let lock = tx.prepare_cached(&q.lock_stream).await.map_err(pg_err)?;
        let row = tx.query_one(&lock, &[&t, &s]).await.map_err(pg_err)?;
        let head = row_head(&row)?;
        let current = StreamHead::current(head.as_ref());

        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let find = tx.prepare_cached(&q.find_ids).await.map_err(pg_err)?;
        let found: Vec<(u64, u64)> = tx
            .query(&find, &[&t, &s, &ids])
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| {
                Ok((
                    to_u64(r.try_get(0).map_err(pg_err)?),
                    to_u64(r.try_get(1).map_err(pg_err)?),
                ))
            })
            .collect::<StoreResult<_>>()?;
        if let Some(done) = cloud::resolve_dedup(events.len(), &found, current)? {
            return Ok(done);
        }
        cloud::check_expected(expected, current)?;

        let (first_version, start_version) = StreamHead::next(head.as_ref());
        let n = events.len() as u64;
        let sizes: Vec<i64> = events
            .iter()
            .map(|e| event_size(stream, e) as i64)
            .collect();
        let bytes: i64 = sizes.iter().sum();
        let new_stream: i64 = if current.is_none() { 1 } else { 0 };
        let ens = tx.prepare_cached(&q.ensure_tenant).await.map_err(pg_err)?;
        tx.execute(&ens, &[&t]).await.map_err(pg_err)?;
        let res = tx.prepare_cached(&q.reserve).await.map_err(pg_err)?;
        let first_position: i64 = tx
            .query_one(&res, &[&t, &to_i64(n)?, &bytes, &new_stream])
            .await
            .map_err(pg_err)?
            .try_get(0)
            .map_err(pg_err)?;
        let first_position = to_u64(first_position);

        let now = cloud::now_ms();
        let versions: Vec<i64> = (0..n)
            .map(|i| to_i64(first_version + i))
            .collect::<StoreResult<_>>()?;
        let positions: Vec<i64> = (0..n)
            .map(|i| to_i64(first_position + i))
            .collect::<StoreResult<_>>()?;
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
        let metas: Vec<String> = events
            .iter()
            .map(|e| meta_json(&e.metadata))
            .collect::<StoreResult<_>>()?;
        let ins_ev = tx.prepare_cached(&q.insert_events).await.map_err(pg_err)?;
        tx.execute(
            &ins_ev,
            &[
                &t, &s, &now, &versions, &positions, &ids, &types, &payloads, &metas, &sizes,
            ],
        )
        .await
        .map_err(pg_err)?;
        let last_version = first_version + n - 1;
        let upd = tx.prepare_cached(&q.update_stream).await.map_err(pg_err)?;
        tx.execute(
            &upd,
            &[&t, &s, &to_i64(last_version)?, &to_i64(start_version)?],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(AppendResult {
            first_version,
            last_version,
            first_position,
            last_position: first_position + n - 1,
            deduplicated: false,
        })
    }
}

#[async_trait::async_trait]
impl EventStore for PostgresStore {
    fn capabilities(&self) -> Capabilities {
        allsource_core::model::BackendKind::Postgres.capabilities()
    }

    fn limits(&self) -> Limits {
        self.inner.limits.clone()
    }

    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> StoreResult<AppendResult> {
        self.inner.limits.validate_batch(&events)?;
        StreamId::with_limits(stream.as_str(), &self.inner.limits)?;
        self.try_append(tenant, stream, expected, &events).await
    }

    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        from: ReadFrom,
        direction: Direction,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        self.inner.limits.validate_read_limit(limit)?;
        let c = self.client().await?;
        let head = StreamHead::readable(self.head(&c, tenant, stream).await?.as_ref(), stream)?;
        let Some((lo, hi)) = cloud::read_range(&head, from, direction, limit) else {
            return Ok(Vec::new());
        };
        let q = self.q(tenant);
        let text = match direction {
            Direction::Forwards => &q.read_forwards,
            Direction::Backwards => &q.read_backwards,
        };
        let st = c.prepare_cached(text).await.map_err(pg_err)?;
        let page = c
            .query(
                &st,
                &[
                    &tenant.as_str(),
                    &stream.as_str(),
                    &to_i64(lo)?,
                    &to_i64(hi)?,
                ],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(row_event)
            .collect::<StoreResult<Vec<_>>>()?;
        cloud::check_page_not_archived((lo, hi), direction, &page)?;
        Ok(page)
    }

    async fn read_all(
        &self,
        tenant: &TenantId,
        from_position: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        self.inner.limits.validate_read_limit(limit)?;
        let c = self.client().await?;
        let q = self.q(tenant);
        let st = c.prepare_cached(&q.read_all).await.map_err(pg_err)?;
        let page = c
            .query(
                &st,
                &[&tenant.as_str(), &to_i64(from_position)?, &(limit as i64)],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(row_event)
            .collect::<StoreResult<Vec<_>>>()?;
        if page.first().is_none_or(|e| e.position > from_position) {
            // Something before the page is missing: archived, or only truncated or never there.
            let st = c.prepare_cached(&q.trimmed_before).await.map_err(pg_err)?;
            if let Some(r) = c
                .query_opt(&st, &[&tenant.as_str()])
                .await
                .map_err(pg_err)?
            {
                let trimmed: i64 = r.try_get(0).map_err(pg_err)?;
                cloud::check_tenant_not_archived(from_position, to_u64(trimmed))?;
            }
        }
        Ok(page)
    }

    async fn subscribe(
        &self,
        tenant: &TenantId,
        target: SubscriptionTarget,
        after: Option<u64>,
    ) -> StoreResult<EventSubscription> {
        Ok(cloud::poll_subscription(
            self.clone(),
            tenant.clone(),
            target,
            after,
            self.inner.poll_interval,
        ))
    }

    async fn save_snapshot(&self, tenant: &TenantId, snapshot: Snapshot) -> StoreResult<()> {
        if snapshot.payload.len() > self.inner.limits.max_event_bytes {
            return Err(StoreError::TooLarge(format!(
                "snapshot is {} bytes; the limit is {}",
                snapshot.payload.len(),
                self.inner.limits.max_event_bytes
            )));
        }
        let c = self.client().await?;
        let st = c
            .prepare_cached(&self.q(tenant).save_snapshot)
            .await
            .map_err(pg_err)?;
        c.execute(
            &st,
            &[
                &tenant.as_str(),
                &snapshot.stream.as_str(),
                &to_i64(snapshot.version)?,
                &snapshot.payload,
                &meta_json(&snapshot.metadata)?,
                &snapshot.timestamp_ms,
            ],
        )
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> StoreResult<Option<Snapshot>> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(&self.q(tenant).load_snapshot)
            .await
            .map_err(pg_err)?;
        let Some(r) = c
            .query_opt(&st, &[&tenant.as_str(), &stream.as_str()])
            .await
            .map_err(pg_err)?
        else {
            return Ok(None);
        };
        let meta: String = r.try_get(2).map_err(pg_err)?;
        Ok(Some(Snapshot {
            stream: stream.clone(),
            version: to_u64(r.try_get(0).map_err(pg_err)?),
            payload: r.try_get(1).map_err(pg_err)?,
            metadata: meta_parse(&meta)?,
            timestamp_ms: r.try_get(3).map_err(pg_err)?,
        }))
    }

    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> StoreResult<Vec<StreamInfo>> {
        self.inner.limits.validate_read_limit(limit)?;
        let c = self.client().await?;
        let st = c
            .prepare_cached(&self.q(tenant).list_streams)
            .await
            .map_err(pg_err)?;
        let after = after.map_or("", |s| s.as_str());
        c.query(&st, &[&tenant.as_str(), &after, &(limit as i64)])
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| {
                let s: String = r.try_get(0).map_err(pg_err)?;
                Ok(StreamInfo {
                    stream: StreamId::new(s)?,
                    last_version: to_u64(r.try_get(1).map_err(pg_err)?),
                    deleted: r.try_get(2).map_err(pg_err)?,
                })
            })
            .collect()
    }

    async fn count_streams(&self, tenant: &TenantId) -> StoreResult<u64> {
        Ok(self.stats(tenant).await?.streams)
    }

    async fn delete_stream(&self, tenant: &TenantId, stream: &StreamId) -> StoreResult<()> {
        let q = self.q(tenant);
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        if self.head(&tx, tenant, stream).await?.is_none() {
            return Err(StoreError::NotFound(format!("stream {stream}")));
        }
        let del = tx.prepare_cached(&q.delete_stream).await.map_err(pg_err)?;
        let n = tx
            .execute(&del, &[&tenant.as_str(), &stream.as_str()])
            .await
            .map_err(pg_err)?;
        if n > 0 {
            let sub = tx.prepare_cached(&q.sub_usage).await.map_err(pg_err)?;
            tx.execute(&sub, &[&tenant.as_str(), &0i64, &0i64, &1i64])
                .await
                .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }

    async fn truncate_before(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> StoreResult<u64> {
        let q = self.q(tenant);
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        StreamHead::readable(self.head(&tx, tenant, stream).await?.as_ref(), stream)?;
        let tr = tx.prepare_cached(&q.truncate).await.map_err(pg_err)?;
        let row = tx
            .query_one(&tr, &[&tenant.as_str(), &stream.as_str(), &to_i64(before)?])
            .await
            .map_err(pg_err)?;
        let (n, bytes): (i64, i64) = (
            row.try_get(0).map_err(pg_err)?,
            row.try_get(1).map_err(pg_err)?,
        );
        let sub = tx.prepare_cached(&q.sub_usage).await.map_err(pg_err)?;
        tx.execute(&sub, &[&tenant.as_str(), &n, &bytes, &0i64])
            .await
            .map_err(pg_err)?;
        // Reads start at the truncation point: a page missing its first versions then means
        // archived (trimmed), never truncated.
        let set = tx.prepare_cached(&q.set_start).await.map_err(pg_err)?;
        tx.execute(
            &set,
            &[&tenant.as_str(), &stream.as_str(), &to_i64(before)?],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(to_u64(n))
    }

    async fn trim_tenant_before(
        &self,
        tenant: &TenantId,
        before: u64,
        incarnation: Option<u64>,
    ) -> StoreResult<u64> {
        allsource_core::store::check_fixed_incarnation(incarnation)?;
        let q = self.q(tenant);
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let tr = tx.prepare_cached(&q.trim).await.map_err(pg_err)?;
        let row = tx
            .query_one(&tr, &[&tenant.as_str(), &to_i64(before)?])
            .await
            .map_err(pg_err)?;
        let (n, bytes): (i64, i64) = (
            row.try_get(0).map_err(pg_err)?,
            row.try_get(1).map_err(pg_err)?,
        );
        let sub = tx.prepare_cached(&q.sub_usage).await.map_err(pg_err)?;
        tx.execute(&sub, &[&tenant.as_str(), &n, &bytes, &0i64])
            .await
            .map_err(pg_err)?;
        let set = tx.prepare_cached(&q.set_trimmed).await.map_err(pg_err)?;
        tx.execute(&set, &[&tenant.as_str(), &to_i64(before)?])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(to_u64(n))
    }

    async fn stats(&self, tenant: &TenantId) -> StoreResult<TenantStats> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(&self.q(tenant).tenant_row)
            .await
            .map_err(pg_err)?;
        let Some(r) = c
            .query_opt(&st, &[&tenant.as_str()])
            .await
            .map_err(pg_err)?
        else {
            return Ok(TenantStats::default());
        };
        Ok(TenantStats {
            next_position: to_u64(r.try_get(0).map_err(pg_err)?),
            events: to_u64(r.try_get(1).map_err(pg_err)?),
            bytes: to_u64(r.try_get(2).map_err(pg_err)?),
            streams: to_u64(r.try_get(3).map_err(pg_err)?),
            snapshot_bytes: 0,
            incarnation: 0,
            trimmed_before: to_u64(r.try_get(4).map_err(pg_err)?),
        })
    }
}
