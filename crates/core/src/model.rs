//! The event model shared by every backend: identifiers, events, expected versions, limits.
//!
//! This module owns input validation. Every backend calls the same validators so that the
//! conformance suite sees the same limits and the same error codes everywhere. It must never do
//! I/O.
//!
//! Numbering (documented in the README): the first event of a stream has **version 0**; the
//! per-tenant global **position** of the first event of a tenant is **0** as well. A read "from"
//! a version or position includes it; a subscription "after" a position excludes it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::StoreError;

/// A validated tenant id: a DNS label (`[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 bytes), so
/// that it can name Kubernetes objects, PostgreSQL roles and table suffixes unchanged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// Validates and wraps a tenant id.
    pub fn new(id: impl Into<String>) -> Result<Self, StoreError> {
        let id = id.into();
        let ok_len = !id.is_empty() && id.len() <= 63;
        let ok_chars = id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ok_ends = !id.starts_with('-') && !id.ends_with('-');
        if ok_len && ok_chars && ok_ends {
            Ok(Self(id))
        } else {
            Err(StoreError::invalid(
                "tenant",
                "tenant id must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
            ))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = StoreError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0
    }
}

impl PartialEq<str> for TenantId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TenantId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for TenantId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl std::borrow::Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest stream id any configuration can allow: the WAL stores its length in 16 bits.
pub const MAX_STREAM_ID_BYTES: usize = u16::MAX as usize;

/// A validated stream id: 1 to `Limits::max_stream_id_len` bytes (never more than
/// [`MAX_STREAM_ID_BYTES`]) of `[A-Za-z0-9._:@=+-]`, not
/// `.` or `..` and not starting with `__` (reserved by Firestore), never containing `#` or `/`
/// (key delimiters in DynamoDB and Firestore).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    /// Validates a stream id against the default limits.
    pub fn new(id: impl Into<String>) -> Result<Self, StoreError> {
        Self::with_limits(id, &Limits::default())
    }

    /// Validates a stream id against the given limits.
    pub fn with_limits(id: impl Into<String>, limits: &Limits) -> Result<Self, StoreError> {
        let id = id.into();
        let max = limits.max_stream_id_len.min(MAX_STREAM_ID_BYTES);
        let ok_len = !id.is_empty() && id.len() <= max;
        let ok_chars = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:@=+".contains(&b));
        let reserved = id == "." || id == ".." || id.starts_with("__");
        if ok_len && ok_chars && !reserved {
            Ok(Self(id))
        } else {
            Err(StoreError::invalid(
                "stream",
                format!(
                    "stream id must be 1-{max} characters of A-Z, a-z, 0-9 and . _ : @ = + -, not '.', '..' or starting with '__'"
                ),
            ))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamId {
    type Error = StoreError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the writer expects the stream to look like before its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "version")]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist (no event ever appended, or it was deleted).
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The last event of the stream must have exactly this version.
    Exact(u64),
}

/// An event as submitted by a writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Idempotency key: an append whose events all carry ids already stored in that stream
    /// returns the original result instead of writing again.
    pub event_id: Uuid,
    /// Application-defined type, 1-256 printable characters.
    pub event_type: String,
    /// Opaque payload bytes (JSON or binary).
    pub payload: Vec<u8>,
    /// Free-form string metadata.
    pub metadata: BTreeMap<String, String>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Owning tenant.
    pub tenant: TenantId,
    /// Stream the event belongs to.
    pub stream: StreamId,
    /// Version inside the stream, starting at 0.
    pub version: u64,
    /// Global position inside the tenant, starting at 0, strictly increasing with commit order.
    pub position: u64,
    /// Idempotency key given by the writer.
    pub event_id: Uuid,
    /// Application-defined type.
    pub event_type: String,
    /// Opaque payload bytes.
    pub payload: Vec<u8>,
    /// Free-form string metadata.
    pub metadata: BTreeMap<String, String>,
    /// Commit time, milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: i64,
}

impl RecordedEvent {
    /// Approximate stored size used for quotas and stats.
    pub fn size_bytes(&self) -> u64 {
        let meta: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.payload.len() + self.event_type.len() + self.stream.as_str().len() + meta + 48) as u64
    }
}

/// The outcome of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// Version of the first event written (or found, for an idempotent retry).
    pub first_version: u64,
    /// Version of the last event written; the stream's current version after the append.
    pub last_version: u64,
    /// Tenant position of the first event.
    pub first_position: u64,
    /// Tenant position of the last event.
    pub last_position: u64,
    /// True when every event id was already stored and nothing new was written.
    pub deduplicated: bool,
}

/// Read direction for a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    /// Ascending versions.
    #[default]
    Forwards,
    /// Descending versions.
    Backwards,
}

/// Where a stream read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReadFrom {
    /// The first event (forwards) or the last event (backwards).
    Edge,
    /// This version, inclusive.
    Version(u64),
}

/// A snapshot of a stream's state, stored beside the stream; only the latest is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Stream the snapshot summarizes.
    pub stream: StreamId,
    /// The stream version the state includes.
    pub version: u64,
    /// Opaque state bytes.
    pub payload: Vec<u8>,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// Save time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl Snapshot {
    /// Approximate stored size, counted like [`RecordedEvent::size_bytes`] (storage quota and
    /// `snapshotBytes` of the tenant's stats).
    pub fn size_bytes(&self) -> u64 {
        let meta: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.payload.len() + self.stream.as_str().len() + meta + 48) as u64
    }
}

/// A stream as listed for a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// Stream id.
    pub stream: StreamId,
    /// Version of the last event.
    pub last_version: u64,
    /// True when the stream was soft-deleted (tombstoned).
    pub deleted: bool,
}

/// Usage of one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TenantStats {
    /// Events stored (hot, not archived or truncated).
    pub events: u64,
    /// Streams that exist (not deleted).
    pub streams: u64,
    /// Approximate bytes of events stored.
    pub bytes: u64,
    /// Approximate bytes of the latest snapshot of every stream (as [`Snapshot::size_bytes`]
    /// counts them); they count in the storage quota with `bytes`. 0 on backends that do not
    /// count them.
    #[serde(default)]
    pub snapshot_bytes: u64,
    /// Next position to be assigned.
    pub next_position: u64,
    /// Incarnation of the tenant id: 0 at first, one more each time the tenant is purged (its
    /// positions then start again at 0). Backends that never purge report 0. The archiver keys
    /// its manifests by it, so a re-created tenant never inherits an old watermark.
    #[serde(default)]
    pub incarnation: u64,
    /// Positions below were archived and trimmed from the store (0: nothing trimmed): a read or
    /// subscription of the tenant starting below it answers 410 `archived`.
    #[serde(default)]
    pub trimmed_before: u64,
}

/// What a backend supports; reported in EventStore status and checked by the conformance suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Push subscriptions (otherwise clients poll `read_all`).
    pub subscriptions: bool,
    /// Snapshots.
    pub snapshots: bool,
    /// Atomic multi-event batches.
    pub transactions: bool,
    /// Archival to object storage with trim.
    pub archival: bool,
    /// Positions are gap-free (otherwise strictly increasing but may skip numbers).
    pub gapless_positions: bool,
}

/// The implementations of the event-store trait. Each one's [`Capabilities`] are declared once,
/// here, so that the backend's `capabilities()` and the operator's EventStore status report the
/// same values; the conformance suite checks every declared capability against the real backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackendKind {
    /// The embedded engine (WAL + Parquet segments) of `store-node serve`.
    Engine,
    /// The in-memory store (development and tests).
    Memory,
    /// PostgreSQL behind `store-node gateway`.
    Postgres,
    /// DynamoDB behind `store-node gateway`.
    Dynamodb,
    /// Firestore behind `store-node gateway`.
    Firestore,
}

impl BackendKind {
    /// What this backend supports. Subscriptions of the cloud backends are served by polling the
    /// backend inside the node (clients still get a push stream); positions are gap-free on
    /// every backend because each reserves them from a per-tenant counter inside the append's
    /// transaction; archival means `trim_tenant_before` works.
    pub const fn capabilities(self) -> Capabilities {
        match self {
            Self::Engine | Self::Memory | Self::Postgres | Self::Dynamodb | Self::Firestore => {
                Capabilities {
                    subscriptions: true,
                    snapshots: true,
                    transactions: true,
                    archival: true,
                    gapless_positions: true,
                }
            }
        }
    }
}

/// Input limits, identical for every backend unless a backend declares a lower one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Limits {
    /// Largest payload + metadata of one event, in bytes.
    pub max_event_bytes: usize,
    /// Most events in one append.
    pub max_batch_events: usize,
    /// Largest total size of one append, in bytes.
    pub max_batch_bytes: usize,
    /// Longest stream id, in bytes.
    pub max_stream_id_len: usize,
    /// Longest event type, in bytes.
    pub max_event_type_len: usize,
    /// Most metadata entries per event or snapshot.
    pub max_metadata_entries: usize,
    /// Longest metadata key, in bytes.
    pub max_metadata_key_len: usize,
    /// Largest page a read may ask for.
    pub max_read_limit: usize,
    /// Most bytes of events (as [`RecordedEvent::size_bytes`] counts them) one read page
    /// holds; a page always holds at least one event, and `next` continues after the last one,
    /// so a page of fewer events than asked for does not mean the end.
    pub max_read_bytes: usize,
    /// Most subscriptions one tenant holds open at once; more answer 429
    /// `too_many_subscriptions` (the node-wide cap answers 503).
    pub max_subscriptions_per_tenant: usize,
    /// Most bytes of events (as [`RecordedEvent::size_bytes`] counts them) one subscription
    /// holds queued for a client that does not read them yet; an event larger than this still
    /// goes through, alone. A slow client stalls only its own subscription, which catches up
    /// from storage once it reads again.
    pub max_subscription_buffer_bytes: usize,
    /// Bytes of decoded Parquet row groups the embedded engine keeps in memory for cold reads
    /// (the engine backend only); a row group larger than this is used once and not kept.
    pub cache_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 1024 * 1024,
            max_batch_events: 10_000,
            max_batch_bytes: 16 * 1024 * 1024,
            max_stream_id_len: 256,
            max_event_type_len: 256,
            max_metadata_entries: 64,
            max_metadata_key_len: 256,
            max_read_limit: 10_000,
            max_read_bytes: 16 * 1024 * 1024,
            max_subscriptions_per_tenant: 32,
            max_subscription_buffer_bytes: 1024 * 1024,
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The largest value the WAL's 16-bit length fields can hold.
const U16_FIELD: usize = u16::MAX as usize;
/// Largest record the self-hosted engine's WAL accepts (its `len` field's bound; anything
/// bigger is treated as corruption). [`Limits::check`] keeps every admitted batch below it.
pub const MAX_WAL_RECORD_BYTES: usize = 256 * 1024 * 1024;
/// Bytes the WAL spends per event besides payload, type and metadata (id, length fields).
const WAL_EVENT_OVERHEAD: usize = 16 + 2 + 4 + 2;
/// Bytes the WAL spends per metadata entry besides key and value (their length fields).
const WAL_META_OVERHEAD: usize = 2 + 4;

impl Limits {
    /// Checks that the limits themselves are usable: every field they admit fits its length
    /// field in the WAL record format, and the largest batch they admit fits one record
    /// ([`MAX_WAL_RECORD_BYTES`]). A node refuses to start otherwise, so no
    /// configuration can make it acknowledge a write that recovery could not read back.
    pub fn check(&self) -> Result<(), String> {
        let sixteen_bit = [
            ("maxStreamIdLen", self.max_stream_id_len),
            ("maxEventTypeLen", self.max_event_type_len),
            ("maxMetadataEntries", self.max_metadata_entries),
            ("maxMetadataKeyLen", self.max_metadata_key_len),
        ];
        for (name, v) in sixteen_bit {
            if v == 0 || v > U16_FIELD {
                return Err(format!("{name} is {v}; it must be 1-{U16_FIELD}"));
            }
        }
        for (name, v) in [
            ("maxEventBytes", self.max_event_bytes),
            ("maxBatchEvents", self.max_batch_events),
            ("maxBatchBytes", self.max_batch_bytes),
            ("maxReadLimit", self.max_read_limit),
            ("maxReadBytes", self.max_read_bytes),
            (
                "maxSubscriptionsPerTenant",
                self.max_subscriptions_per_tenant,
            ),
            (
                "maxSubscriptionBufferBytes",
                self.max_subscription_buffer_bytes,
            ),
            ("cacheBytes", self.cache_bytes),
        ] {
            if v == 0 {
                return Err(format!("{name} must be > 0"));
            }
        }
        let per_event = WAL_EVENT_OVERHEAD
            + self.max_event_type_len
            + self.max_metadata_entries * WAL_META_OVERHEAD;
        let worst = self
            .max_batch_events
            .checked_mul(per_event)
            .and_then(|e| e.checked_add(self.max_batch_bytes))
            .and_then(|e| e.checked_add(128 + self.max_stream_id_len));
        let max = MAX_WAL_RECORD_BYTES - 8;
        match worst {
            Some(w) if w <= max => Ok(()),
            _ => Err(format!(
                "the largest batch these limits admit (maxBatchBytes {} plus {} events of up to \
                 {per_event} bytes of framing, type and metadata lengths) exceeds the WAL's \
                 record limit of {max} bytes; lower maxBatchBytes or maxBatchEvents",
                self.max_batch_bytes, self.max_batch_events
            )),
        }
    }

    /// Checks the metadata of an event or snapshot: entry count and key length (values are
    /// bounded by the size limits of what carries them).
    fn validate_metadata(
        &self,
        what: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        if metadata.len() > self.max_metadata_entries {
            return Err(StoreError::invalid(
                "metadata",
                format!(
                    "{what}: at most {} metadata entries",
                    self.max_metadata_entries
                ),
            ));
        }
        let max_key = self.max_metadata_key_len.min(U16_FIELD);
        if let Some(k) = metadata.keys().find(|k| k.is_empty() || k.len() > max_key) {
            return Err(StoreError::invalid(
                "metadata",
                format!(
                    "{what}: metadata key of {} bytes; keys must be 1-{max_key} bytes",
                    k.len()
                ),
            ));
        }
        Ok(())
    }

    /// Checks a snapshot before any backend sees it: its payload plus metadata is at most
    /// `max_batch_bytes` (the most one append may write), its metadata like an event's.
    pub fn validate_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.validate_metadata("snapshot", &snapshot.metadata)?;
        let size = snapshot.payload.len()
            + snapshot
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > self.max_batch_bytes {
            return Err(StoreError::TooLarge(format!(
                "snapshot is {size} bytes; the limit is {}",
                self.max_batch_bytes
            )));
        }
        Ok(())
    }

    /// Checks a batch before any backend sees it.
    pub fn validate_batch(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Err(StoreError::invalid(
                "events",
                "an append needs at least one event",
            ));
        }
        if events.len() > self.max_batch_events {
            return Err(StoreError::TooLarge(format!(
                "batch has {} events; the limit is {}",
                events.len(),
                self.max_batch_events
            )));
        }
        let mut total = 0usize;
        let mut seen = std::collections::HashSet::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            if !seen.insert(e.event_id) {
                return Err(StoreError::invalid(
                    "events",
                    format!("event {i} repeats event id {} within the batch", e.event_id),
                ));
            }
            let t = &e.event_type;
            let max_type = self.max_event_type_len.min(U16_FIELD);
            if t.is_empty() || t.len() > max_type || t.chars().any(char::is_control) {
                return Err(StoreError::invalid(
                    "eventType",
                    format!("event {i}: event type must be 1-{max_type} printable characters"),
                ));
            }
            self.validate_metadata(&format!("event {i}"), &e.metadata)?;
            let size = e.payload.len()
                + e.metadata
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
            if size > self.max_event_bytes {
                return Err(StoreError::TooLarge(format!(
                    "event {i} is {size} bytes; the limit is {}",
                    self.max_event_bytes
                )));
            }
            total += size;
        }
        if total > self.max_batch_bytes {
            return Err(StoreError::TooLarge(format!(
                "batch is {total} bytes; the limit is {}",
                self.max_batch_bytes
            )));
        }
        Ok(())
    }

    /// The byte budget of one read page.
    pub fn read_budget(&self) -> ReadBudget {
        ReadBudget::of(self.max_read_bytes)
    }

    /// Checks a read page size.
    pub fn validate_read_limit(&self, limit: usize) -> Result<(), StoreError> {
        if limit == 0 || limit > self.max_read_limit {
            return Err(StoreError::invalid(
                "limit",
                format!("limit must be 1-{}", self.max_read_limit),
            ));
        }
        Ok(())
    }
}

/// What is left of a read page's byte budget ([`Limits::max_read_bytes`]). The first event is
/// always admitted, so a page makes progress whatever the size of one event.
#[derive(Debug, Clone, Copy)]
pub struct ReadBudget {
    left: u64,
    taken: usize,
}

impl ReadBudget {
    /// A budget of `bytes` (one event is admitted whatever its size).
    pub fn of(bytes: usize) -> Self {
        Self {
            left: bytes as u64,
            taken: 0,
        }
    }

    /// Admits an event of `size` bytes into the page, or refuses it when the page is full.
    pub fn admit(&mut self, size: u64) -> bool {
        if self.taken > 0 && size > self.left {
            self.left = 0;
            return false;
        }
        self.left = self.left.saturating_sub(size);
        self.taken += 1;
        true
    }

    /// False once an event was refused or the budget is spent (more events would not fit).
    pub fn open(&self) -> bool {
        self.taken == 0 || self.left > 0
    }

    /// Cuts `events` to the longest prefix within the budget.
    pub fn truncate(mut self, events: &mut Vec<RecordedEvent>) {
        let keep = events
            .iter()
            .take_while(|e| self.admit(e.size_bytes()))
            .count();
        events.truncate(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        assert!(TenantId::new("acme-1").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a#b", &"x".repeat(64)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn stream_ids() {
        assert!(StreamId::new("order-42:v1@x=y+z.q_r").is_ok());
        for bad in ["", ".", "..", "__x", "a#b", "a/b", "a b", &"x".repeat(257)] {
            assert!(StreamId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn batch_limits() {
        let l = Limits::default();
        let ev = |id: u128, n: usize| NewEvent {
            event_id: Uuid::from_u128(id),
            event_type: "t".into(),
            payload: vec![0; n],
            metadata: BTreeMap::new(),
        };
        assert!(l.validate_batch(&[]).is_err());
        assert!(l.validate_batch(&[ev(1, 10)]).is_ok());
        assert!(matches!(
            l.validate_batch(&[ev(1, l.max_event_bytes + 1)]),
            Err(StoreError::TooLarge(_))
        ));
        assert!(l.validate_batch(&[ev(1, 1), ev(1, 1)]).is_err());
    }
}
