//! Pure layout of the Firestore backend: document names, the Firestore REST encoding of every
//! document this backend stores, the structured queries it runs, and Firestore's limits mapped to
//! the store's [`Limits`]. Nothing here does I/O.
//!
//! Documents (under `projects/{p}/databases/{d}/documents`):
//! - `tenants/{tenant}`: tenant counters `next_position`, `events`, `bytes`, `streams`;
//! - `tenants/{tenant}/streams/{stream}`: the stream head `last_version`, `start_version`,
//!   `deleted` (tombstone), `events` (events currently stored) and `stream` (the id);
//! - `tenants/{tenant}/streams/{stream}/events/{version:020}`: one event; the zero-padded id makes
//!   lexical order equal version order. Fields `tenant`, `stream`, `version`, `position`,
//!   `event_id`, `event_type`, `payload` (bytes), `metadata` (map), `ts`, `size`, and
//!   [`TTL_FIELD`] when a TTL is configured;
//! - `tenants/{tenant}/streams/{stream}/eventIds/{event id}`: `version`, `position`
//!   (idempotent retries);
//! - `tenants/{tenant}/snapshots/{stream}`: the latest snapshot.
//!
//! `read_all` is a collection-group query over `events` with `tenant == t` ordered by
//! `position`: the emulator (and Firestore) only allow collection-group queries at the root
//! parent, so the `tenant` field, written from the document path, is what scopes it. In
//! production that query needs the composite index built in [`super::admin`].

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::cloud::StreamHead;
use allsource_core::error::StoreError;
use allsource_core::model::{
    Limits, RecordedEvent, Snapshot, StreamId, StreamInfo, TenantId, TenantStats,
};

/// Collection of tenant documents.
pub const TENANTS: &str = "tenants";
/// Sub-collection of stream heads under a tenant.
pub const STREAMS: &str = "streams";
/// Sub-collection (and collection group) of events under a stream.
pub const EVENTS: &str = "events";
/// Sub-collection (and collection group) of event-id documents under a stream.
pub const EVENT_IDS: &str = "eventIds";
/// Sub-collection of snapshots under a tenant.
pub const SNAPSHOTS: &str = "snapshots";
/// Timestamp field read by the TTL policy.
pub const TTL_FIELD: &str = "expires_at";

/// Firestore: most writes in one commit (or transaction).
pub const MAX_COMMIT_WRITES: usize = 500;
/// Events per append: each event is two writes (event + event id), plus head and tenant.
pub const MAX_BATCH_EVENTS: usize = (MAX_COMMIT_WRITES - 2) / 2;
const _: () = assert!(2 * MAX_BATCH_EVENTS + 2 <= MAX_COMMIT_WRITES);
/// Firestore: largest document, including its name and field names.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Largest payload + metadata of one event: a document also holds the name (up to ~400 bytes
/// here), the event type (256) and the other fields; 16 KiB stays clear of all of them.
pub const MAX_EVENT_BYTES: usize = MAX_DOCUMENT_BYTES - 16 * 1024;
/// Firestore: largest API request. Payloads travel base64-encoded (4/3) inside JSON.
pub const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;
/// Largest append in payload bytes, so that the base64 commit request stays under the limit.
pub const MAX_BATCH_BYTES: usize = MAX_REQUEST_BYTES / 4 * 3 - 256 * 1024;

/// The limits this backend declares (lower than the defaults where Firestore is smaller).
pub fn limits() -> Limits {
    Limits {
        max_batch_events: MAX_BATCH_EVENTS,
        max_event_bytes: MAX_EVENT_BYTES,
        max_batch_bytes: MAX_BATCH_BYTES,
        ..Limits::default()
    }
}

/// Checks a Firestore database id: `(default)`, or 4 to 63 characters of lowercase letters,
/// digits and hyphens that start with a letter and do not end with a hyphen (Firestore's rule;
/// it also refuses UUID-shaped ids). Keeps a registry location from naming a path.
pub fn check_database_id(id: &str) -> Result<(), String> {
    if id == super::DEFAULT_DATABASE {
        return Ok(());
    }
    let b = id.as_bytes();
    let shaped = (4..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    let uuid_like = b.len() == 36 && uuid::Uuid::parse_str(id).is_ok();
    if shaped && !uuid_like {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a Firestore database id (4-63 of a-z, 0-9, '-', starting with a \
             letter, not ending with '-', not a UUID)"
        ))
    }
}

/// Document names of one Firestore database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    database: String,
    root: String,
}

impl Layout {
    /// Layout of `projects/{project}/databases/{database}`.
    pub fn new(project: &str, database: &str) -> Self {
        let database = format!("projects/{project}/databases/{database}");
        let root = format!("{database}/documents");
        Self { database, root }
    }

    /// `projects/{p}/databases/{d}`.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// `projects/{p}/databases/{d}/documents`, the parent of every collection.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The tenant counter document.
    pub fn tenant_doc(&self, t: &TenantId) -> String {
        format!("{}/{TENANTS}/{t}", self.root)
    }

    /// A stream head document.
    pub fn stream_doc(&self, t: &TenantId, s: &StreamId) -> String {
        format!("{}/{STREAMS}/{s}", self.tenant_doc(t))
    }

    /// An event document.
    pub fn event_doc(&self, t: &TenantId, s: &StreamId, version: u64) -> String {
        format!("{}/{EVENTS}/{}", self.stream_doc(t, s), version_id(version))
    }

    /// An event-id document.
    pub fn event_id_doc(&self, t: &TenantId, s: &StreamId, id: &uuid::Uuid) -> String {
        format!("{}/{EVENT_IDS}/{id}", self.stream_doc(t, s))
    }

    /// A snapshot document.
    pub fn snapshot_doc(&self, t: &TenantId, s: &StreamId) -> String {
        format!("{}/{SNAPSHOTS}/{s}", self.tenant_doc(t))
    }
}

/// Document id of a version: zero-padded so that lexical order is version order.
pub fn version_id(version: u64) -> String {
    format!("{version:020}")
}

// ---- value encoding (Firestore REST `Value`) ----

/// An `integerValue` (Firestore integers are i64; larger values saturate).
pub fn int(v: u64) -> Value {
    json!({ "integerValue": i64::try_from(v).unwrap_or(i64::MAX).to_string() })
}

/// A signed `integerValue`.
pub fn sint(v: i64) -> Value {
    json!({ "integerValue": v.to_string() })
}

/// A `stringValue`.
pub fn string(v: &str) -> Value {
    json!({ "stringValue": v })
}

/// A `booleanValue`.
pub fn boolean(v: bool) -> Value {
    json!({ "booleanValue": v })
}

/// A `bytesValue` (base64).
pub fn bytes(v: &[u8]) -> Value {
    json!({ "bytesValue": base64::engine::general_purpose::STANDARD.encode(v) })
}

/// A `mapValue` of strings.
pub fn string_map(m: &BTreeMap<String, String>) -> Value {
    let fields: Map<String, Value> = m.iter().map(|(k, v)| (k.clone(), string(v))).collect();
    json!({ "mapValue": { "fields": fields } })
}

/// A `timestampValue` from milliseconds since the epoch.
pub fn timestamp_ms(ms: i64) -> Value {
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    json!({ "timestampValue": t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true) })
}

/// A `referenceValue` (a document name).
pub fn reference(name: &str) -> Value {
    json!({ "referenceValue": name })
}

/// A document body (`name` + `fields`) for a write.
pub fn document(name: &str, fields: Map<String, Value>) -> Value {
    json!({ "name": name, "fields": fields })
}

fn bad(field: &str) -> StoreError {
    StoreError::Internal(format!("firestore document lacks a valid field {field}"))
}

fn field<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
    doc.get("fields").and_then(|f| f.get(name))
}

/// Reads an integer field; missing is 0, negative is 0.
pub fn get_u64(doc: &Value, name: &str) -> StoreResult<u64> {
    Ok(u64::try_from(get_i64(doc, name)?).unwrap_or(0))
}

/// Reads a signed integer field; missing is 0.
pub fn get_i64(doc: &Value, name: &str) -> StoreResult<i64> {
    match field(doc, name) {
        None => Ok(0),
        Some(v) => v
            .get("integerValue")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(name)),
    }
}

/// Reads a string field.
pub fn get_str<'a>(doc: &'a Value, name: &str) -> StoreResult<&'a str> {
    field(doc, name)
        .and_then(|v| v.get("stringValue"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad(name))
}

/// Reads a boolean field; missing is false.
pub fn get_bool(doc: &Value, name: &str) -> bool {
    field(doc, name)
        .and_then(|v| v.get("booleanValue"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Reads a bytes field; missing (Firestore omits empty bytes in some paths) is empty.
pub fn get_bytes(doc: &Value, name: &str) -> StoreResult<Vec<u8>> {
    match field(doc, name).and_then(|v| v.get("bytesValue")) {
        None => Ok(Vec::new()),
        Some(v) => v
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or_else(|| bad(name)),
    }
}

/// Reads a map-of-strings field; missing is empty.
pub fn get_string_map(doc: &Value, name: &str) -> StoreResult<BTreeMap<String, String>> {
    let Some(fields) = field(doc, name)
        .and_then(|v| v.get("mapValue"))
        .and_then(|m| m.get("fields"))
        .and_then(Value::as_object)
    else {
        return Ok(BTreeMap::new());
    };
    fields
        .iter()
        .map(|(k, v)| {
            let s = v.get("stringValue").and_then(Value::as_str);
            Ok((k.clone(), s.ok_or_else(|| bad(name))?.to_string()))
        })
        .collect()
}

type StoreResult<T> = Result<T, StoreError>;

// ---- documents ----

/// A stream head as stored, with its event count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDoc {
    /// The head shared with the other cloud backends.
    pub head: StreamHead,
    /// Events currently stored in the stream (truncation lowers it).
    pub events: u64,
}

/// Fields of a stream head document.
pub fn stream_fields(stream: &StreamId, d: &StreamDoc) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("stream".into(), string(stream.as_str()));
    f.insert("last_version".into(), int(d.head.last_version));
    f.insert("start_version".into(), int(d.head.start_version));
    f.insert("deleted".into(), boolean(d.head.deleted));
    f.insert("events".into(), int(d.events));
    f
}

/// Decodes a stream head document.
pub fn stream_of(doc: &Value) -> StoreResult<StreamDoc> {
    Ok(StreamDoc {
        head: StreamHead {
            last_version: get_u64(doc, "last_version")?,
            start_version: get_u64(doc, "start_version")?,
            deleted: get_bool(doc, "deleted"),
        },
        events: get_u64(doc, "events")?,
    })
}

/// Decodes a stream head document into a listing entry.
pub fn stream_info_of(doc: &Value) -> StoreResult<StreamInfo> {
    let d = stream_of(doc)?;
    Ok(StreamInfo {
        stream: StreamId::new(get_str(doc, "stream")?)?,
        last_version: d.head.last_version,
        deleted: d.head.deleted,
    })
}

/// Fields of a tenant counter document.
pub fn tenant_fields(s: &TenantStats) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("next_position".into(), int(s.next_position));
    f.insert("events".into(), int(s.events));
    f.insert("bytes".into(), int(s.bytes));
    f.insert("streams".into(), int(s.streams));
    f.insert("trimmed_before".into(), int(s.trimmed_before));
    f
}

/// Decodes a tenant counter document.
pub fn tenant_of(doc: &Value) -> StoreResult<TenantStats> {
    Ok(TenantStats {
        events: get_u64(doc, "events")?,
        streams: get_u64(doc, "streams")?,
        bytes: get_u64(doc, "bytes")?,
        next_position: get_u64(doc, "next_position")?,
        snapshot_bytes: 0,
        incarnation: 0,
        // Absent (0) in documents written before trims were recorded.
        trimmed_before: get_u64(doc, "trimmed_before")?,
    })
}

/// Fields of an event document; `expires_ms` sets the TTL field.
pub fn event_fields(e: &RecordedEvent, expires_ms: Option<i64>) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("tenant".into(), string(e.tenant.as_str()));
    f.insert("stream".into(), string(e.stream.as_str()));
    f.insert("version".into(), int(e.version));
    f.insert("position".into(), int(e.position));
    f.insert("event_id".into(), string(&e.event_id.to_string()));
    f.insert("event_type".into(), string(&e.event_type));
    f.insert("payload".into(), bytes(&e.payload));
    f.insert("metadata".into(), string_map(&e.metadata));
    f.insert("ts".into(), sint(e.timestamp_ms));
    f.insert("size".into(), int(e.size_bytes()));
    if let Some(x) = expires_ms {
        f.insert(TTL_FIELD.into(), timestamp_ms(x));
    }
    f
}

/// Decodes an event document.
pub fn event_of(doc: &Value) -> StoreResult<RecordedEvent> {
    Ok(RecordedEvent {
        tenant: TenantId::new(get_str(doc, "tenant")?)?,
        stream: StreamId::new(get_str(doc, "stream")?)?,
        version: get_u64(doc, "version")?,
        position: get_u64(doc, "position")?,
        event_id: get_str(doc, "event_id")?
            .parse()
            .map_err(|_| bad("event_id"))?,
        event_type: get_str(doc, "event_type")?.to_string(),
        payload: get_bytes(doc, "payload")?,
        metadata: get_string_map(doc, "metadata")?,
        timestamp_ms: get_i64(doc, "ts")?,
    })
}

/// Fields of an event-id document.
pub fn event_id_fields(version: u64, position: u64, expires_ms: Option<i64>) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("version".into(), int(version));
    f.insert("position".into(), int(position));
    if let Some(x) = expires_ms {
        f.insert(TTL_FIELD.into(), timestamp_ms(x));
    }
    f
}

/// Fields of a snapshot document.
pub fn snapshot_fields(s: &Snapshot) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("version".into(), int(s.version));
    f.insert("payload".into(), bytes(&s.payload));
    f.insert("metadata".into(), string_map(&s.metadata));
    f.insert("ts".into(), sint(s.timestamp_ms));
    f
}

/// Decodes a snapshot document.
pub fn snapshot_of(stream: &StreamId, doc: &Value) -> StoreResult<Snapshot> {
    Ok(Snapshot {
        stream: stream.clone(),
        version: get_u64(doc, "version")?,
        payload: get_bytes(doc, "payload")?,
        metadata: get_string_map(doc, "metadata")?,
        timestamp_ms: get_i64(doc, "ts")?,
    })
}

// ---- writes ----

/// A write that creates `name` and fails the commit when it exists.
pub fn create(name: &str, fields: Map<String, Value>) -> Value {
    json!({ "update": document(name, fields), "currentDocument": { "exists": false } })
}

/// A write that replaces (or creates) `name`.
pub fn set(name: &str, fields: Map<String, Value>) -> Value {
    json!({ "update": document(name, fields) })
}

/// A write that deletes `name` and fails the commit when it is already gone.
pub fn delete_existing(name: &str) -> Value {
    json!({ "delete": name, "currentDocument": { "exists": true } })
}

// ---- queries ----

fn field_filter(path: &str, op: &str, value: Value) -> Value {
    json!({ "fieldFilter": { "field": { "fieldPath": path }, "op": op, "value": value } })
}

fn and(filters: Vec<Value>) -> Value {
    json!({ "compositeFilter": { "op": "AND", "filters": filters } })
}

fn order(path: &str, forward: bool) -> Value {
    let dir = if forward { "ASCENDING" } else { "DESCENDING" };
    json!({ "field": { "fieldPath": path }, "direction": dir })
}

fn limit_i32(limit: usize) -> i32 {
    i32::try_from(limit).unwrap_or(i32::MAX)
}

/// Events of one stream (run with the stream document as parent) with version in `[lo, hi]`.
pub fn stream_range_query(lo: u64, hi: u64, forward: bool, limit: usize) -> Value {
    json!({ "structuredQuery": {
        "from": [{ "collectionId": EVENTS }],
        "where": and(vec![
            field_filter("version", "GREATER_THAN_OR_EQUAL", int(lo)),
            field_filter("version", "LESS_THAN_OR_EQUAL", int(hi)),
        ]),
        "orderBy": [order("version", forward)],
        "limit": limit_i32(limit),
    }})
}

/// Events of one stream (parent: the stream document) with version below `before`.
pub fn stream_before_query(before: u64, limit: usize) -> Value {
    json!({ "structuredQuery": {
        "from": [{ "collectionId": EVENTS }],
        "where": field_filter("version", "LESS_THAN", int(before)),
        "orderBy": [order("version", true)],
        "limit": limit_i32(limit),
    }})
}

/// A tenant's events by position (parent: the database root; collection group `events`):
/// `position >= from` when `at_least`, else `position < from`.
pub fn tenant_position_query(t: &TenantId, from: u64, at_least: bool, limit: usize) -> Value {
    let op = if at_least {
        "GREATER_THAN_OR_EQUAL"
    } else {
        "LESS_THAN"
    };
    json!({ "structuredQuery": {
        "from": [{ "collectionId": EVENTS, "allDescendants": true }],
        "where": and(vec![
            field_filter("tenant", "EQUAL", string(t.as_str())),
            field_filter("position", op, int(from)),
        ]),
        "orderBy": [order("position", true)],
        "limit": limit_i32(limit),
    }})
}

/// A tenant's stream heads (parent: the tenant document) in id order after `after`.
pub fn streams_query(after: Option<&str>, limit: usize) -> Value {
    let mut q = json!({
        "from": [{ "collectionId": STREAMS }],
        "orderBy": [order("__name__", true)],
        "limit": limit_i32(limit),
    });
    if let Some(a) = after {
        q["where"] = field_filter("__name__", "GREATER_THAN", reference(a));
    }
    json!({ "structuredQuery": q })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> TenantId {
        TenantId::new("acme").unwrap_or_else(|e| panic!("{e}"))
    }

    fn s() -> StreamId {
        StreamId::new("order:1").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn names() {
        let l = Layout::new("p", "(default)");
        assert_eq!(l.root(), "projects/p/databases/(default)/documents");
        assert_eq!(
            l.event_doc(&t(), &s(), 7),
            "projects/p/databases/(default)/documents/tenants/acme/streams/order:1/events/00000000000000000007"
        );
        assert!(version_id(9) < version_id(10));
        assert!(version_id(u64::MAX).len() == 20);
    }

    #[test]
    fn database_ids_follow_firestore_rules() {
        for ok in ["(default)", "abcd", "orders-acme-1a2b3c4d", &"a".repeat(63)] {
            assert_eq!(check_database_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "abc",
            &"a".repeat(64),
            "1abc",
            "-abc",
            "abc-",
            "Abcd",
            "ab_cd",
            "ab.cd",
            "../x",
            "a/bc",
            "",
            "(other)",
            "abcdefab-1234-4abc-8def-0123456789ab",
        ] {
            assert!(check_database_id(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn limits_fit_firestore() {
        assert_eq!(MAX_BATCH_EVENTS, 249);
        let l = limits();
        assert!(l.max_batch_bytes / 3 * 4 < MAX_REQUEST_BYTES);
        assert!(l.max_event_bytes < MAX_DOCUMENT_BYTES);
    }

    #[test]
    fn event_round_trip() {
        let e = RecordedEvent {
            tenant: t(),
            stream: s(),
            version: 3,
            position: 12,
            event_id: uuid::Uuid::from_u128(5),
            event_type: "Placed".into(),
            payload: (0u8..=255).collect(),
            metadata: BTreeMap::from([("k-ü".to_string(), "v\"'\n".to_string())]),
            timestamp_ms: 1_700_000_000_123,
        };
        let doc = document("x", event_fields(&e, Some(1_700_000_100_000)));
        assert_eq!(event_of(&doc).ok(), Some(e));
        assert_eq!(
            doc["fields"][TTL_FIELD]["timestampValue"],
            "2023-11-14T22:15:00.000Z"
        );
    }

    #[test]
    fn stream_and_tenant_round_trip() {
        let d = StreamDoc {
            head: StreamHead {
                last_version: 9,
                start_version: 4,
                deleted: true,
            },
            events: 6,
        };
        let doc = document("x", stream_fields(&s(), &d));
        assert_eq!(stream_of(&doc).ok(), Some(d));
        assert_eq!(stream_info_of(&doc).map(|i| i.stream).ok(), Some(s()));
        let st = TenantStats {
            events: 1,
            streams: 2,
            bytes: 3,
            next_position: 4,
            snapshot_bytes: 0,
            incarnation: 0,
            trimmed_before: 2,
        };
        assert_eq!(tenant_of(&document("t", tenant_fields(&st))).ok(), Some(st));
        assert_eq!(
            tenant_of(&json!({})).ok(),
            Some(TenantStats::default()),
            "a missing counter reads as zero"
        );
    }

    #[test]
    fn queries() {
        let q = tenant_position_query(&t(), 5, true, 10);
        let f = &q["structuredQuery"]["where"]["compositeFilter"]["filters"];
        assert_eq!(f[0]["fieldFilter"]["value"]["stringValue"], "acme");
        assert_eq!(f[1]["fieldFilter"]["op"], "GREATER_THAN_OR_EQUAL");
        assert_eq!(q["structuredQuery"]["from"][0]["allDescendants"], true);
        let q = streams_query(Some("n"), 3);
        assert_eq!(
            q["structuredQuery"]["where"]["fieldFilter"]["op"],
            "GREATER_THAN"
        );
        assert_eq!(
            stream_range_query(1, 2, false, 4)["structuredQuery"]["orderBy"][0]["direction"],
            "DESCENDING"
        );
    }
}
