//! The one event-store API: a trait implemented by the embedded engine and by the PostgreSQL,
//! DynamoDB and Firestore backends (the cloud ones behind cargo features). The HTTP server and
//! the gateway serve any `dyn EventStore`. This module defines the contract; it must never know
//! about a concrete backend's storage layout.

use futures::stream::BoxStream;

use crate::error::StoreError;
use crate::model::{
    AppendResult, Capabilities, Direction, ExpectedVersion, Limits, NewEvent, ReadFrom,
    RecordedEvent, Snapshot, StreamId, StreamInfo, TenantId, TenantStats,
};

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionTarget {
    /// Every event of the tenant, in position order.
    Tenant,
    /// One stream, in version order.
    Stream(StreamId),
}

/// A live subscription: catch-up events, then live ones, without gaps or duplicates.
pub type EventSubscription = BoxStream<'static, StoreResult<RecordedEvent>>;

/// The event-store contract. Every method validates its input with [`crate::model::Limits`] and
/// is isolated per tenant: no call for tenant A can observe or change tenant B's data.
#[async_trait::async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// The input limits this backend enforces (a backend may declare lower ones than the
    /// defaults, e.g. DynamoDB's transaction size caps the batch).
    fn limits(&self) -> Limits {
        Limits::default()
    }

    /// Why this store refuses every write until it is restarted (the embedded engine after a
    /// failed WAL write or fsync), or None. Reported by `/readyz`, `/v1/info` and the metric
    /// `allsource_wal_poisoned`.
    fn poisoned(&self) -> Option<String> {
        None
    }

    /// Appends a batch atomically if `expected` matches. Retrying with the same event ids
    /// returns the first result with `deduplicated: true`.
    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> StoreResult<AppendResult>;

    /// Reads up to `limit` events of a stream from `from` in `direction`.
    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        from: ReadFrom,
        direction: Direction,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>>;

    /// Reads up to `limit` events of a tenant with position >= `from_position`, in position order.
    async fn read_all(
        &self,
        tenant: &TenantId,
        from_position: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>>;

    /// Follows a tenant or a stream, starting after `after` (exclusive; None = from the start).
    /// For a stream target `after` is a version, for a tenant target a position.
    async fn subscribe(
        &self,
        tenant: &TenantId,
        target: SubscriptionTarget,
        after: Option<u64>,
    ) -> StoreResult<EventSubscription>;

    /// Stores the latest snapshot of a stream (replaces the previous one).
    async fn save_snapshot(&self, tenant: &TenantId, snapshot: Snapshot) -> StoreResult<()>;

    /// Loads the latest snapshot of a stream.
    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> StoreResult<Option<Snapshot>>;

    /// Lists a tenant's streams in id order, after `after` (exclusive), at most `limit`.
    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> StoreResult<Vec<StreamInfo>>;

    /// Counts a tenant's (non-deleted) streams.
    async fn count_streams(&self, tenant: &TenantId) -> StoreResult<u64>;

    /// Soft-deletes a stream: a tombstone makes reads answer `StreamDeleted`.
    async fn delete_stream(&self, tenant: &TenantId, stream: &StreamId) -> StoreResult<()>;

    /// Drops a stream's events with version < `before`; returns how many were dropped.
    async fn truncate_before(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> StoreResult<u64>;

    /// Drops a tenant's events with position < `before` (after archival); returns the count.
    /// With `incarnation`, only while the tenant is at that incarnation ([`TenantStats::incarnation`]),
    /// checked atomically with the trim; else [`StoreError::IncarnationChanged`] and nothing is
    /// dropped. Backends without archival answer [`StoreError::Unsupported`].
    async fn trim_tenant_before(
        &self,
        tenant: &TenantId,
        before: u64,
        incarnation: Option<u64>,
    ) -> StoreResult<u64>;

    /// Usage of a tenant.
    async fn stats(&self, tenant: &TenantId) -> StoreResult<TenantStats>;

    /// Erases every stream, event, snapshot and counter of a tenant, durably: once this
    /// returns, no restart brings any of it back and the files that held it are deleted.
    /// Idempotent; a tenant with no data is a no-op. Backends whose tenants are erased by the
    /// operator (the cloud gateways) answer [`StoreError::Unsupported`].
    async fn purge_tenant(&self, tenant: &TenantId) -> StoreResult<()> {
        Err(StoreError::Unsupported(format!(
            "purging tenant {tenant} is not supported by this backend"
        )))
    }
}

/// The incarnation check of [`EventStore::trim_tenant_before`] for backends whose tenant ids are
/// never purged in place (their incarnation is always 0).
pub fn check_fixed_incarnation(expected: Option<u64>) -> StoreResult<()> {
    match expected {
        Some(e) if e != 0 => Err(StoreError::IncarnationChanged {
            expected: e,
            current: 0,
        }),
        _ => Ok(()),
    }
}
