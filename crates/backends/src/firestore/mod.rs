//! Firestore backend of the event-store API, over the Firestore REST API v1 (reqwest; no gRPC),
//! laid out as documented in [`layout`]: `tenants/{tenant}/streams/{stream}/events/{version}`.
//!
//! Every write that changes counters is one read-write transaction: `batchGet` with
//! `newTransaction` reads the tenant document, the stream head and (for appends) the event-id
//! documents of the batch under Firestore's locks; the decision (idempotent retry, expected
//! version, next versions and positions) is made on what was read; `commit` writes the events,
//! the event-id documents (created with an `exists: false` precondition), the head and the tenant
//! counters together. `ABORTED` (a lost lock, a lock timeout) and failed preconditions are
//! retried from the start with bounded backoff; a decision that writes nothing rolls back so
//! locks are released at once.
//!
//! **Trade-off of this backend:** global positions come from the tenant document's
//! `next_position` counter, so every append of a tenant reads and writes that one document and a
//! tenant's appends are serialized (Firestore sustains on the order of one write per second per
//! document in production; the emulator serializes by lock). That is what gives the gap-free,
//! commit-ordered positions declared in [`Capabilities::gapless_positions`] and lets polling
//! subscriptions never skip an event. Throughput scales with the number of tenants, not within
//! one. Inside one process appends of a tenant also queue on a local lock, so they do not
//! deadlock on Firestore's locks (the emulator answers such deadlocks with a lock timeout).
//!
//! Firestore limits (1 MiB per document, 500 writes per commit, 10 MiB per request) are declared
//! in [`EventStore::limits`] (see [`layout::limits`]) and checked before any call; a limit hit
//! on the server anyway maps to `TooLarge`. Auth (see [`auth`]): a Google OAuth access token
//! minted from a service-account `key.json` or by the metadata server (GKE workload identity),
//! cached and refreshed by `google-cloud-auth`, or a static bearer token; the emulator accepts
//! `Bearer owner`. Events may carry a TTL field; Firestore's TTL deletion
//! does not update the counters (as with DynamoDB TTL). This module owns the calls; document
//! names, encodings and queries come from [`layout`], index and TTL policies from [`admin`].

pub mod admin;
pub mod auth;
pub mod layout;
pub mod rest;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::cloud::{self, StreamHead};
use allsource_core::error::StoreError;
use allsource_core::model::{
    AppendResult, Capabilities, Direction, ExpectedVersion, Limits, NewEvent, ReadFrom,
    RecordedEvent, Snapshot, StreamId, StreamInfo, TenantId, TenantStats,
};
use allsource_core::store::{EventStore, EventSubscription, StoreResult, SubscriptionTarget};
use layout::{Layout, StreamDoc};
use rest::{Found, ReadMode, RestClient, RestError};

/// Production endpoint of the Firestore REST API.
pub const FIRESTORE_ENDPOINT: &str = "https://firestore.googleapis.com";
/// The database every project has.
pub const DEFAULT_DATABASE: &str = "(default)";
pub use auth::{Credentials, EMULATOR_TOKEN};

/// Configuration of the Firestore backend.
#[derive(Debug, Clone)]
pub struct FirestoreConfig {
    /// Google Cloud project id.
    pub project: String,
    /// Database id (`(default)` unless a named database is used).
    pub database: String,
    /// Base URL of the REST API (production or `http://{emulator host}`).
    pub endpoint: String,
    /// Where the bearer token of every call comes from.
    pub credentials: Credentials,
    /// Expire events this long after their append (TTL field); None = keep.
    pub event_ttl: Option<Duration>,
    /// Poll interval of subscriptions.
    pub poll_interval: Duration,
}

impl FirestoreConfig {
    /// Production Firestore for `project`, authenticated by `credentials`.
    pub fn new(project: impl Into<String>, credentials: Credentials) -> Self {
        Self {
            project: project.into(),
            database: DEFAULT_DATABASE.into(),
            endpoint: FIRESTORE_ENDPOINT.into(),
            credentials,
            event_ttl: None,
            poll_interval: cloud::DEFAULT_POLL_INTERVAL,
        }
    }

    /// The emulator at `host` (`127.0.0.1:8080`, as in `FIRESTORE_EMULATOR_HOST`).
    pub fn emulator(project: impl Into<String>, host: &str) -> Self {
        Self {
            endpoint: format!("http://{host}"),
            ..Self::new(project, Credentials::Emulator)
        }
    }
}

/// The Firestore event store. Cheap to clone.
#[derive(Clone)]
pub struct FirestoreStore {
    inner: Arc<Inner>,
}

struct Inner {
    rest: RestClient,
    layout: Layout,
    config: FirestoreConfig,
    limits: Limits,
    tenant_locks: Vec<tokio::sync::Mutex<()>>,
}

/// Attempts of one transaction before answering `Unavailable`.
const MAX_ATTEMPTS: u32 = 16;
/// Stripes of the in-process tenant lock (bounded memory for any number of tenants).
const LOCK_STRIPES: usize = 64;
/// Events deleted per transaction by truncate and trim (each may touch its stream head too).
const DELETE_PAGE: usize = 200;
const _: () = assert!(2 * DELETE_PAGE < layout::MAX_COMMIT_WRITES);

/// What a transaction decided after its reads.
enum Decision<T> {
    /// Nothing to write: roll back and answer.
    Done(T),
    /// Commit these writes, then answer.
    Write(Vec<Value>, T),
}

fn backoff(attempt: u32) -> Duration {
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 16);
    Duration::from_millis((5u64 << attempt.min(6)) + jitter)
}

impl FirestoreStore {
    /// Builds the client (no call is made).
    pub fn connect(config: FirestoreConfig) -> StoreResult<Self> {
        let tokens = auth::TokenSource::new(&config.credentials).map_err(RestError::from)?;
        let rest = RestClient::with_tokens(&config.endpoint, tokens)?;
        Ok(Self {
            inner: Arc::new(Inner {
                rest,
                layout: Layout::new(&config.project, &config.database),
                config,
                limits: layout::limits(),
                tenant_locks: (0..LOCK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            }),
        })
    }

    /// The same store on another database of the same project (a siloed tenant's own): same
    /// endpoint, credentials and token cache, connection pool and settings; no call is made.
    /// Refuses an id that is not a Firestore database id ([`layout::check_database_id`]).
    pub fn with_database(&self, database: &str) -> StoreResult<Self> {
        layout::check_database_id(database).map_err(StoreError::Internal)?;
        let config = FirestoreConfig {
            database: database.to_string(),
            ..self.inner.config.clone()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                rest: self.inner.rest.clone(),
                layout: Layout::new(&config.project, &config.database),
                config,
                limits: self.inner.limits.clone(),
                tenant_locks: (0..LOCK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            }),
        })
    }

    /// The database id this store reads and writes.
    pub fn database(&self) -> &str {
        &self.inner.config.database
    }

    /// Creates the composite indexes and TTL policies this backend needs through the Firestore
    /// Admin API (see [`admin`]); returns what each request got.
    pub async fn ensure_indexes(&self) -> Result<Vec<admin::Outcome>, admin::AdminError> {
        let c = &self.inner.config;
        let requests = admin::requests(&c.project, &c.database);
        let token = self
            .inner
            .rest
            .token()
            .await
            .map_err(|e| admin::AdminError::Unreachable(e.to_string()))?;
        admin::send(&c.endpoint, token.as_deref(), &requests).await
    }

    fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    fn root(&self) -> &str {
        self.inner.layout.root()
    }

    fn tenant_lock(&self, t: &TenantId) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        t.hash(&mut h);
        let i = (h.finish() % LOCK_STRIPES as u64) as usize;
        &self.inner.tenant_locks[i]
    }

    /// Runs one read-write transaction: read `names`, `decide`, commit; retried on `ABORTED`
    /// and failed preconditions.
    async fn transact<T>(
        &self,
        names: &[String],
        decide: impl Fn(&Found) -> StoreResult<Decision<T>>,
    ) -> StoreResult<T> {
        let rest = &self.inner.rest;
        for attempt in 0..MAX_ATTEMPTS {
            let (tx, found) = match rest
                .batch_get(self.root(), names, ReadMode::NewTransaction)
                .await
            {
                Ok((Some(tx), found)) => (tx, found),
                Ok((None, _)) => return Err(RestError::Decode("no transaction".into()).into()),
                Err(RestError::Aborted(_)) => {
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match decide(&found) {
                Err(e) => {
                    rest.rollback(self.root(), &tx).await;
                    return Err(e);
                }
                Ok(Decision::Done(t)) => {
                    rest.rollback(self.root(), &tx).await;
                    return Ok(t);
                }
                Ok(Decision::Write(writes, t)) => {
                    match rest.commit(self.root(), writes, Some(&tx)).await {
                        Ok(()) => return Ok(t),
                        Err(RestError::Aborted(_) | RestError::Precondition(_)) => {
                            tokio::time::sleep(backoff(attempt)).await;
                        }
                        Err(e) => {
                            rest.rollback(self.root(), &tx).await;
                            return Err(e.into());
                        }
                    }
                }
            }
        }
        Err(StoreError::Unavailable(
            "firestore: the transaction kept aborting (contention on this tenant); retry".into(),
        ))
    }

    async fn stream_doc(&self, t: &TenantId, s: &StreamId) -> StoreResult<Option<StreamDoc>> {
        let name = self.layout().stream_doc(t, s);
        match self.inner.rest.get(self.root(), name).await? {
            Some(doc) => Ok(Some(layout::stream_of(&doc)?)),
            None => Ok(None),
        }
    }

    fn decide_append(
        &self,
        found: &Found,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> StoreResult<Decision<AppendResult>> {
        let l = self.layout();
        let (tname, sname) = (l.tenant_doc(tenant), l.stream_doc(tenant, stream));
        let stats = match found.get(&tname) {
            Some(d) => layout::tenant_of(d)?,
            None => TenantStats::default(),
        };
        let old = found.get(&sname).map(layout::stream_of).transpose()?;
        let head = old.map(|d| d.head);
        let current = StreamHead::current(head.as_ref());
        let stored = events
            .iter()
            .filter_map(|e| found.get(&l.event_id_doc(tenant, stream, &e.event_id)))
            .map(|d| {
                Ok((
                    layout::get_u64(d, "version")?,
                    layout::get_u64(d, "position")?,
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        if let Some(done) = cloud::resolve_dedup(events.len(), &stored, current)? {
            return Ok(Decision::Done(done));
        }
        cloud::check_expected(expected, current)?;

        let (first_version, start_version) = StreamHead::next(head.as_ref());
        let count = events.len() as u64;
        let first_position = stats.next_position;
        let now = cloud::now_ms();
        let expires = self
            .inner
            .config
            .event_ttl
            .map(|ttl| now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)));
        let mut writes = Vec::with_capacity(2 * events.len() + 2);
        let mut bytes = 0;
        for (i, e) in events.iter().enumerate() {
            let rec = RecordedEvent {
                tenant: tenant.clone(),
                stream: stream.clone(),
                version: first_version + i as u64,
                position: first_position + i as u64,
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                payload: e.payload.clone(),
                metadata: e.metadata.clone(),
                timestamp_ms: now,
            };
            bytes += rec.size_bytes();
            writes.push(layout::create(
                &l.event_doc(tenant, stream, rec.version),
                layout::event_fields(&rec, expires),
            ));
            writes.push(layout::create(
                &l.event_id_doc(tenant, stream, &e.event_id),
                layout::event_id_fields(rec.version, rec.position, expires),
            ));
        }
        let new_head = StreamDoc {
            head: StreamHead {
                last_version: first_version + count - 1,
                start_version,
                deleted: false,
            },
            events: old.map_or(0, |d| d.events) + count,
        };
        writes.push(layout::set(
            &sname,
            layout::stream_fields(stream, &new_head),
        ));
        let new_stats = TenantStats {
            events: stats.events + count,
            streams: stats.streams + u64::from(current.is_none()),
            bytes: stats.bytes + bytes,
            next_position: first_position + count,
            ..stats
        };
        writes.push(layout::set(&tname, layout::tenant_fields(&new_stats)));
        Ok(Decision::Write(
            writes,
            AppendResult {
                first_version,
                last_version: new_head.head.last_version,
                first_position,
                last_position: first_position + count - 1,
                deduplicated: false,
            },
        ))
    }

    /// Deletes the given event documents (all of one tenant) in one transaction, lowering the
    /// stream and tenant counters; documents already gone are skipped. Returns how many went.
    async fn delete_events(
        &self,
        tenant: &TenantId,
        docs: &[Value],
        mark: Mark,
    ) -> StoreResult<u64> {
        let l = self.layout();
        let tname = l.tenant_doc(tenant);
        let mut event_names = Vec::with_capacity(docs.len());
        let mut stream_names = std::collections::BTreeMap::new();
        for d in docs {
            let ev = layout::event_of(d)?;
            let sname = l.stream_doc(tenant, &ev.stream);
            event_names.push((l.event_doc(tenant, &ev.stream, ev.version), sname.clone()));
            stream_names.insert(sname, ev.stream);
        }
        let mut names = vec![tname.clone()];
        names.extend(stream_names.keys().cloned());
        names.extend(event_names.iter().map(|(e, _)| e.clone()));
        self.transact(&names, |found| {
            let mut stats = match found.get(&tname) {
                Some(d) => layout::tenant_of(d)?,
                None => TenantStats::default(),
            };
            let mut per_stream: std::collections::BTreeMap<&str, u64> = Default::default();
            let mut writes = Vec::new();
            for (name, sname) in &event_names {
                let Some(doc) = found.get(name) else { continue };
                stats.events = stats.events.saturating_sub(1);
                stats.bytes = stats.bytes.saturating_sub(layout::get_u64(doc, "size")?);
                *per_stream.entry(sname.as_str()).or_default() += 1;
                writes.push(layout::delete_existing(name));
            }
            let dropped = writes.len() as u64;
            if dropped == 0 {
                return Ok(Decision::Done(0));
            }
            for (sname, n) in per_stream {
                let (Some(doc), Some(stream)) = (found.get(sname), stream_names.get(sname)) else {
                    continue;
                };
                let mut d = layout::stream_of(doc)?;
                d.events = d.events.saturating_sub(n);
                if let Mark::StartAt(before) = mark {
                    // Reads start at the truncation point: only a trim leaves a gap after it.
                    d.head.start_version = d
                        .head
                        .start_version
                        .max(before.min(d.head.last_version + 1));
                }
                writes.push(layout::set(sname, layout::stream_fields(stream, &d)));
            }
            if let Mark::TrimmedBefore(before) = mark {
                stats.trimmed_before = stats.trimmed_before.max(before.min(stats.next_position));
            }
            writes.push(layout::set(&tname, layout::tenant_fields(&stats)));
            Ok(Decision::Write(writes, dropped))
        })
        .await
    }
}

/// What a deletion of events records besides the deletion.
#[derive(Debug, Clone, Copy)]
enum Mark {
    /// A truncation: the stream's reads start at this version.
    StartAt(u64),
    /// A trim (archival): the tenant's positions below this are archived.
    TrimmedBefore(u64),
}

#[async_trait::async_trait]
impl EventStore for FirestoreStore {
    fn capabilities(&self) -> Capabilities {
        allsource_core::model::BackendKind::Firestore.capabilities()
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
        let l = self.layout();
        let mut names = vec![l.tenant_doc(tenant), l.stream_doc(tenant, stream)];
        names.extend(
            events
                .iter()
                .map(|e| l.event_id_doc(tenant, stream, &e.event_id)),
        );
        let _guard = self.tenant_lock(tenant).lock().await;
        self.transact(&names, |found| {
            self.decide_append(found, tenant, stream, expected, &events)
        })
        .await
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
        let doc = self.stream_doc(tenant, stream).await?;
        let head = StreamHead::readable(doc.map(|d| d.head).as_ref(), stream)?;
        let Some((lo, hi)) = cloud::read_range(&head, from, direction, limit) else {
            return Ok(Vec::new());
        };
        let query = layout::stream_range_query(lo, hi, direction == Direction::Forwards, limit);
        let parent = self.layout().stream_doc(tenant, stream);
        let docs = self.inner.rest.run_query(&parent, &query).await?;
        let page = docs
            .iter()
            .map(layout::event_of)
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
        let query = layout::tenant_position_query(tenant, from_position, true, limit);
        let docs = self.inner.rest.run_query(self.root(), &query).await?;
        let page = docs
            .iter()
            .map(layout::event_of)
            .collect::<StoreResult<Vec<_>>>()?;
        if page.first().is_none_or(|e| e.position > from_position) {
            // Something before the page is missing: archived, or only truncated or never there.
            cloud::check_tenant_not_archived(
                from_position,
                self.stats(tenant).await?.trimmed_before,
            )?;
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
            self.inner.config.poll_interval,
        ))
    }

    async fn save_snapshot(&self, tenant: &TenantId, snapshot: Snapshot) -> StoreResult<()> {
        let size = snapshot.payload.len()
            + snapshot
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > self.inner.limits.max_event_bytes {
            return Err(StoreError::TooLarge(format!(
                "snapshot is {size} bytes; the limit is {} (one Firestore document)",
                self.inner.limits.max_event_bytes
            )));
        }
        let name = self.layout().snapshot_doc(tenant, &snapshot.stream);
        let write = layout::set(&name, layout::snapshot_fields(&snapshot));
        self.inner
            .rest
            .commit(self.root(), vec![write], None)
            .await?;
        Ok(())
    }

    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> StoreResult<Option<Snapshot>> {
        let name = self.layout().snapshot_doc(tenant, stream);
        match self.inner.rest.get(self.root(), name).await? {
            Some(doc) => Ok(Some(layout::snapshot_of(stream, &doc)?)),
            None => Ok(None),
        }
    }

    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> StoreResult<Vec<StreamInfo>> {
        self.inner.limits.validate_read_limit(limit)?;
        let after = after.map(|a| self.layout().stream_doc(tenant, a));
        let query = layout::streams_query(after.as_deref(), limit);
        let parent = self.layout().tenant_doc(tenant);
        let docs = self.inner.rest.run_query(&parent, &query).await?;
        docs.iter().map(layout::stream_info_of).collect()
    }

    async fn count_streams(&self, tenant: &TenantId) -> StoreResult<u64> {
        Ok(self.stats(tenant).await?.streams)
    }

    async fn delete_stream(&self, tenant: &TenantId, stream: &StreamId) -> StoreResult<()> {
        let l = self.layout();
        let (tname, sname) = (l.tenant_doc(tenant), l.stream_doc(tenant, stream));
        let names = [tname.clone(), sname.clone()];
        let _guard = self.tenant_lock(tenant).lock().await;
        self.transact(&names, |found| {
            let Some(doc) = found.get(&sname) else {
                return Err(StoreError::NotFound(format!("stream {stream}")));
            };
            let mut d = layout::stream_of(doc)?;
            if d.head.deleted {
                return Ok(Decision::Done(()));
            }
            d.head.deleted = true;
            let mut stats = match found.get(&tname) {
                Some(t) => layout::tenant_of(t)?,
                None => TenantStats::default(),
            };
            stats.streams = stats.streams.saturating_sub(1);
            Ok(Decision::Write(
                vec![
                    layout::set(&sname, layout::stream_fields(stream, &d)),
                    layout::set(&tname, layout::tenant_fields(&stats)),
                ],
                (),
            ))
        })
        .await
    }

    async fn truncate_before(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> StoreResult<u64> {
        let doc = self.stream_doc(tenant, stream).await?;
        StreamHead::readable(doc.map(|d| d.head).as_ref(), stream)?;
        let parent = self.layout().stream_doc(tenant, stream);
        let query = layout::stream_before_query(before, DELETE_PAGE);
        let _guard = self.tenant_lock(tenant).lock().await;
        let mut dropped = 0;
        loop {
            let docs = self.inner.rest.run_query(&parent, &query).await?;
            if docs.is_empty() {
                return Ok(dropped);
            }
            dropped += self
                .delete_events(tenant, &docs, Mark::StartAt(before))
                .await?;
        }
    }

    async fn trim_tenant_before(
        &self,
        tenant: &TenantId,
        before: u64,
        incarnation: Option<u64>,
    ) -> StoreResult<u64> {
        allsource_core::store::check_fixed_incarnation(incarnation)?;
        let query = layout::tenant_position_query(tenant, before, false, DELETE_PAGE);
        let _guard = self.tenant_lock(tenant).lock().await;
        let mut dropped = 0;
        loop {
            let docs = self.inner.rest.run_query(self.root(), &query).await?;
            if docs.is_empty() {
                return Ok(dropped);
            }
            dropped += self
                .delete_events(tenant, &docs, Mark::TrimmedBefore(before))
                .await?;
        }
    }

    async fn stats(&self, tenant: &TenantId) -> StoreResult<TenantStats> {
        let name = self.layout().tenant_doc(tenant);
        match self.inner.rest.get(self.root(), name).await? {
            Some(doc) => layout::tenant_of(&doc),
            None => Ok(TenantStats::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_database_keeps_endpoint_and_credentials() {
        let pooled = FirestoreStore::connect(FirestoreConfig::emulator("p", "127.0.0.1:1"))
            .unwrap_or_else(|e| panic!("{e}"));
        let silo = pooled
            .with_database("orders-acme-1a2b3c4d")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(silo.database(), "orders-acme-1a2b3c4d");
        assert_eq!(
            silo.root(),
            "projects/p/databases/orders-acme-1a2b3c4d/documents"
        );
        assert_eq!(pooled.root(), "projects/p/databases/(default)/documents");
        assert_eq!(silo.inner.config.endpoint, pooled.inner.config.endpoint);
        assert_eq!(
            silo.inner.config.credentials,
            pooled.inner.config.credentials
        );
        for bad in ["../x", "a/b/documents", "Orders", "(default)x"] {
            assert!(pooled.with_database(bad).is_err(), "{bad}");
        }
    }
}
