//! Wire types of the HTTP API and their pure conversions to and from the model: request bodies,
//! query strings, payload encoding (JSON value or base64) and response shapes. Every field name
//! is camelCase; request types reject unknown fields, so a client cannot smuggle a tenant id or
//! a typo past the server. Nothing here does I/O; the fuzz/property tests live here too.
//!
//! Payload rule: an event's payload is opaque bytes. A request gives it either as `data` (any
//! JSON value, stored as the exact bytes of that value) or as `dataBase64`. A response returns
//! `data` when the stored bytes are one JSON value with no surrounding whitespace, else
//! `dataBase64`; `?encoding=base64` forces `dataBase64`. Either way the bytes round-trip exactly.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::StoreError;
use crate::model::{
    AppendResult, Direction, ExpectedVersion, NewEvent, RecordedEvent, Snapshot, StreamId,
    StreamInfo, TenantId, TenantStats,
};
use crate::registry::Quotas;

/// The body of every error answer: `{code, message}` (some codes add fields, e.g.
/// `currentVersion`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorOut {
    /// Stable machine-readable code ([`crate::StoreError::code`] for store errors).
    #[serde(default)]
    pub code: String,
    /// Human-readable explanation.
    #[serde(default)]
    pub message: String,
}

/// A request the server answers 400 `invalid_input` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

impl BadRequest {
    /// A 400 with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Page size when a read gives no `limit`.
pub const DEFAULT_LIMIT: usize = 100;

/// Header carrying the expected version of an append (alternative to the body field).
pub const EXPECTED_VERSION_HEADER: &str = "expected-version";

/// How payloads are rendered in responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Encoding {
    /// `data` when the bytes are a JSON value, else `dataBase64`.
    #[default]
    Auto,
    /// Always `dataBase64`.
    Base64,
}

/// An expected version as written by a client: a number or one of the keywords.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExpectedWire {
    /// Exact version.
    Version(u64),
    /// `any`, `noStream`, `streamExists` (kebab-case accepted).
    Keyword(String),
}

impl ExpectedWire {
    /// Converts to the model.
    pub fn to_model(&self) -> Result<ExpectedVersion, BadRequest> {
        match self {
            Self::Version(v) => Ok(ExpectedVersion::Exact(*v)),
            Self::Keyword(k) => parse_expected(k),
        }
    }
}

/// Parses the header form of an expected version.
pub fn parse_expected(s: &str) -> Result<ExpectedVersion, BadRequest> {
    match s.trim() {
        "any" => Ok(ExpectedVersion::Any),
        "noStream" | "no-stream" => Ok(ExpectedVersion::NoStream),
        "streamExists" | "stream-exists" => Ok(ExpectedVersion::StreamExists),
        n => n.parse::<u64>().map(ExpectedVersion::Exact).map_err(|_| {
            BadRequest::new(
                "expected version must be a version number, any, noStream or streamExists",
            )
        }),
    }
}

/// Resolves the expected version from the header and the body; they must agree when both are
/// given. Neither means `any`.
pub fn resolve_expected(
    header: Option<&str>,
    body: Option<&ExpectedWire>,
) -> Result<ExpectedVersion, BadRequest> {
    let h = header.map(parse_expected).transpose()?;
    let b = body.map(ExpectedWire::to_model).transpose()?;
    match (h, b) {
        (Some(h), Some(b)) if h != b => Err(BadRequest::new(
            "the Expected-Version header and the body's expectedVersion differ",
        )),
        (h, b) => Ok(h.or(b).unwrap_or(ExpectedVersion::Any)),
    }
}

/// One event in an append request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventIn {
    /// Idempotency key.
    pub event_id: Uuid,
    /// Application type.
    pub event_type: String,
    /// Payload as a JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// Payload as base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl EventIn {
    /// An event whose payload is `payload`'s exact bytes (sent as `dataBase64`).
    pub fn from_bytes(event_id: Uuid, event_type: impl Into<String>, payload: &[u8]) -> Self {
        Self {
            event_id,
            event_type: event_type.into(),
            data: None,
            data_base64: Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            metadata: BTreeMap::new(),
        }
    }
}

/// Body of `POST /v1/streams/{stream}/events`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppendRequest {
    /// Optional expected version (also accepted as a header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<ExpectedWire>,
    /// The batch.
    pub events: Vec<EventIn>,
}

/// Decodes a payload given as `data` or `dataBase64` (at most one).
pub fn decode_payload(
    data: Option<Box<RawValue>>,
    b64: Option<String>,
    what: &str,
) -> Result<Vec<u8>, BadRequest> {
    match (data, b64) {
        (Some(_), Some(_)) => Err(BadRequest::new(format!(
            "{what}: give data or dataBase64, not both"
        ))),
        (Some(raw), None) => Ok(raw.get().as_bytes().to_vec()),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map_err(|e| BadRequest::new(format!("{what}: dataBase64 is not base64: {e}"))),
        (None, None) => Ok(Vec::new()),
    }
}

impl AppendRequest {
    /// Converts the batch to model events (size limits are checked by the caller/store).
    pub fn into_events(self) -> Result<(Option<ExpectedWire>, Vec<NewEvent>), BadRequest> {
        let events = self
            .events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                Ok(NewEvent {
                    event_id: e.event_id,
                    event_type: e.event_type,
                    payload: decode_payload(e.data, e.data_base64, &format!("event {i}"))?,
                    metadata: e.metadata,
                })
            })
            .collect::<Result<Vec<_>, BadRequest>>()?;
        Ok((self.expected_version, events))
    }
}

/// A payload rendered for a response.
#[derive(Debug, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PayloadOut {
    /// The payload as a JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// The payload as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

impl PayloadOut {
    /// The payload's bytes, exactly as stored (the inverse of [`encode_payload`]).
    pub fn into_bytes(self) -> Result<Vec<u8>, BadRequest> {
        match (self.data_base64, self.data) {
            (Some(b), _) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| BadRequest::new(format!("dataBase64 is not base64: {e}"))),
            (None, Some(raw)) => Ok(raw.get().as_bytes().to_vec()),
            (None, None) => Ok(Vec::new()),
        }
    }
}

/// Renders payload bytes per [`Encoding`], so that they round-trip exactly.
pub fn encode_payload(payload: Vec<u8>, encoding: Encoding) -> PayloadOut {
    let payload = if encoding == Encoding::Auto {
        match String::from_utf8(payload) {
            Ok(s) => {
                let raw = serde_json::from_str::<&RawValue>(&s)
                    .ok()
                    .filter(|r| r.get().len() == s.len())
                    .map(|r| r.to_owned());
                if let Some(raw) = raw {
                    return PayloadOut {
                        data: Some(raw),
                        data_base64: None,
                    };
                }
                s.into_bytes()
            }
            Err(e) => e.into_bytes(),
        }
    } else {
        payload
    };
    PayloadOut {
        data: None,
        data_base64: Some(base64::engine::general_purpose::STANDARD.encode(payload)),
    }
}

/// An event in a response.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventOut {
    /// Stream id.
    pub stream: String,
    /// Version in the stream.
    pub version: u64,
    /// Position in the tenant.
    pub position: u64,
    /// Idempotency key.
    pub event_id: Uuid,
    /// Application type.
    pub event_type: String,
    /// Payload.
    #[serde(flatten)]
    pub payload: PayloadOut,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Commit time, ms since the epoch.
    pub timestamp: i64,
}

impl EventOut {
    /// The stored event of `tenant` this renders (the inverse of [`EventOut::new`]).
    pub fn into_recorded(self, tenant: &TenantId) -> Result<RecordedEvent, StoreError> {
        Ok(RecordedEvent {
            tenant: tenant.clone(),
            stream: StreamId::new(self.stream)?,
            version: self.version,
            position: self.position,
            event_id: self.event_id,
            event_type: self.event_type,
            payload: self
                .payload
                .into_bytes()
                .map_err(|e| StoreError::Internal(e.0))?,
            metadata: self.metadata,
            timestamp_ms: self.timestamp,
        })
    }

    /// Renders a stored event.
    pub fn new(e: RecordedEvent, encoding: Encoding) -> Self {
        Self {
            stream: e.stream.into(),
            version: e.version,
            position: e.position,
            event_id: e.event_id,
            event_type: e.event_type,
            payload: encode_payload(e.payload, encoding),
            metadata: e.metadata,
            timestamp: e.timestamp_ms,
        }
    }
}

/// Response of an append.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppendOut {
    /// First version written.
    pub first_version: u64,
    /// Last version written (the stream's version now).
    pub last_version: u64,
    /// First position written.
    pub first_position: u64,
    /// Last position written.
    pub last_position: u64,
    /// True for an idempotent retry that wrote nothing.
    pub deduplicated: bool,
}

impl From<AppendResult> for AppendOut {
    fn from(r: AppendResult) -> Self {
        Self {
            first_version: r.first_version,
            last_version: r.last_version,
            first_position: r.first_position,
            last_position: r.last_position,
            deduplicated: r.deduplicated,
        }
    }
}

/// Query of `GET /v1/streams/{stream}/events`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadStreamQuery {
    /// First version to return (inclusive); absent: the edge in `direction`.
    pub from: Option<u64>,
    /// `forwards` (default) or `backwards`.
    pub direction: Option<Direction>,
    /// Page size.
    pub limit: Option<usize>,
    /// Payload encoding.
    pub encoding: Option<Encoding>,
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadAllQuery {
    /// First position (inclusive), default 0.
    pub from: Option<u64>,
    /// Page size.
    pub limit: Option<usize>,
    /// Payload encoding.
    pub encoding: Option<Encoding>,
}

/// Query of `GET /v1/subscribe`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscribeQuery {
    /// Follow one stream (versions) instead of the whole tenant (positions).
    pub stream: Option<String>,
    /// Start after this version/position (exclusive); also read from `Last-Event-ID`.
    pub after: Option<u64>,
    /// Payload encoding.
    pub encoding: Option<Encoding>,
}

/// Query of `GET /v1/streams`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListStreamsQuery {
    /// Start after this stream id (exclusive).
    pub after: Option<String>,
    /// Page size.
    pub limit: Option<usize>,
}

/// A page of events.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsPage {
    /// The events.
    pub events: Vec<EventOut>,
    /// Where the next page starts (`from` of the next call). Forwards (and `/v1/events`): the
    /// version (position) after the page's last event, or the `from` asked for when the page is
    /// empty: an empty page is the end for now, and calling again with it later follows the
    /// stream. Backwards: the version before the page's last event; None once version 0 was
    /// read or for an empty page.
    pub next: Option<u64>,
}

/// A listed stream.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamOut {
    /// Stream id.
    pub stream: String,
    /// Version of the last event.
    pub last_version: u64,
    /// Tombstoned.
    pub deleted: bool,
}

impl From<StreamInfo> for StreamOut {
    fn from(s: StreamInfo) -> Self {
        Self {
            stream: s.stream.into(),
            last_version: s.last_version,
            deleted: s.deleted,
        }
    }
}

/// A page of streams.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamsPage {
    /// The streams.
    pub streams: Vec<StreamOut>,
    /// `after` of the next call, when the page was full.
    pub next: Option<String>,
}

/// Body of `PUT /v1/streams/{stream}/snapshot`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotIn {
    /// Stream version the state includes.
    pub version: u64,
    /// State as JSON.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    /// State as base64.
    #[serde(default)]
    pub data_base64: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A snapshot in a response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotOut {
    /// Stream id.
    pub stream: String,
    /// Stream version the state includes.
    pub version: u64,
    /// State.
    #[serde(flatten)]
    pub payload: PayloadOut,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Save time, ms since the epoch.
    pub timestamp: i64,
}

impl SnapshotOut {
    /// Renders a stored snapshot.
    pub fn new(s: Snapshot, encoding: Encoding) -> Self {
        Self {
            stream: s.stream.into(),
            version: s.version,
            payload: encode_payload(s.payload, encoding),
            metadata: s.metadata,
            timestamp: s.timestamp_ms,
        }
    }
}

/// Body of truncate calls.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BeforeIn {
    /// Drop everything strictly before this version/position.
    pub before: u64,
}

/// Body of `POST /v1/trim`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrimIn {
    /// Drop the tenant's events strictly before this position.
    pub before: u64,
    /// Only if the tenant is still at this incarnation (see `/v1/stats`); otherwise 409
    /// `incarnation_changed` and nothing is dropped.
    #[serde(default)]
    pub incarnation: Option<u64>,
}

/// Response of truncate and trim calls.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DroppedOut {
    /// How many events were dropped.
    pub dropped: u64,
}

/// Response of `GET /v1/stats` (the operator reads a tenant's usage from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsOut {
    /// Tenant id.
    pub tenant: String,
    /// Events stored.
    pub events: u64,
    /// Streams that exist.
    pub streams: u64,
    /// Approximate bytes of events stored.
    pub bytes: u64,
    /// Approximate bytes of the streams' latest snapshots (in the storage quota with `bytes`).
    pub snapshot_bytes: u64,
    /// Next position to be assigned.
    pub next_position: u64,
    /// Incarnation of the tenant id (one more after each purge; positions restart at 0).
    pub incarnation: u64,
    /// Positions below were archived and trimmed (0: none); reads starting below answer 410
    /// `archived`.
    pub trimmed_before: u64,
    /// Quotas in force.
    pub quotas: Quotas,
}

impl StatsOut {
    /// Combines usage and quotas.
    pub fn new(tenant: String, s: TenantStats, quotas: Quotas) -> Self {
        Self {
            tenant,
            events: s.events,
            streams: s.streams,
            bytes: s.bytes,
            snapshot_bytes: s.snapshot_bytes,
            next_position: s.next_position,
            incarnation: s.incarnation,
            trimmed_before: s.trimmed_before,
            quotas,
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::Query;
    use axum::http::Uri;
    use proptest::prelude::*;

    use super::*;

    fn decode_out(p: &PayloadOut) -> Vec<u8> {
        match (&p.data, &p.data_base64) {
            (Some(d), None) => d.get().as_bytes().to_vec(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
            _ => panic!("exactly one of data/dataBase64"),
        }
    }

    #[test]
    fn expected_versions_from_header_and_body() {
        assert_eq!(resolve_expected(None, None).unwrap(), ExpectedVersion::Any);
        assert_eq!(
            resolve_expected(Some("no-stream"), None).unwrap(),
            ExpectedVersion::NoStream
        );
        assert_eq!(
            resolve_expected(None, Some(&ExpectedWire::Version(3))).unwrap(),
            ExpectedVersion::Exact(3)
        );
        assert!(resolve_expected(Some("2"), Some(&ExpectedWire::Version(3))).is_err());
        assert!(resolve_expected(Some("-1"), None).is_err());
        assert!(resolve_expected(Some("99999999999999999999999"), None).is_err());
    }

    #[test]
    fn append_body_rejects_unknown_fields_and_double_payloads() {
        let tenant_smuggled = r#"{"tenant":"b","events":[]}"#;
        assert!(serde_json::from_str::<AppendRequest>(tenant_smuggled).is_err());
        let both = r#"{"events":[{"eventId":"00000000-0000-0000-0000-000000000001","eventType":"t","data":1,"dataBase64":"AA=="}]}"#;
        let req: AppendRequest = serde_json::from_str(both).unwrap();
        assert!(req.into_events().is_err());
    }

    #[test]
    fn json_payload_keeps_exact_bytes() {
        let body = r#"{"events":[{"eventId":"00000000-0000-0000-0000-000000000001","eventType":"t","data": {"b":1, "a":[1.50,"x"]} }]}"#;
        let req: AppendRequest = serde_json::from_str(body).unwrap();
        let (_, evs) = req.into_events().unwrap();
        assert_eq!(evs[0].payload, br#"{"b":1, "a":[1.50,"x"]}"#);
    }

    #[test]
    fn huge_and_malformed_queries_are_errors_not_panics() {
        for q in [
            "limit=99999999999999999999999999",
            "from=-1",
            "direction=sideways",
            "tenant=b",
            "limit=1&limit=2",
        ] {
            let uri: Uri = format!("/x?{q}").parse().unwrap();
            assert!(Query::<ReadStreamQuery>::try_from_uri(&uri).is_err(), "{q}");
        }
        let uri: Uri = "/x?from=3&direction=backwards&limit=5&encoding=base64"
            .parse()
            .unwrap();
        let q = Query::<ReadStreamQuery>::try_from_uri(&uri).unwrap().0;
        assert_eq!(q.direction, Some(Direction::Backwards));
        assert_eq!(q.encoding, Some(Encoding::Base64));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512), ..ProptestConfig::default() })]

        #[test]
        fn payload_bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64), json in "[ ]?(\\{\\}|\\[1, 2\\]|\"[a-z]*\"|-?[0-9]{1,5}(\\.[0-9]+)?|null|true)[ ]?") {
            for p in [bytes.clone(), json.clone().into_bytes()] {
                for enc in [Encoding::Auto, Encoding::Base64] {
                    prop_assert_eq!(decode_out(&encode_payload(p.clone(), enc)), p.clone());
                }
            }
        }

        #[test]
        fn append_body_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(req) = serde_json::from_slice::<AppendRequest>(&body) {
                let _ = req.into_events();
            }
        }

        #[test]
        fn structured_append_bodies_never_panic(
            ev in "\\{\"eventId\":\"[0-9a-f-]{0,40}\",\"eventType\":\"[ -~]{0,8}\"(,\"data(Base64)?\":(\"[A-Za-z0-9+/=]{0,12}\"|[0-9]{1,3}|\\{\\}))?\\}",
            exp in "(,\"expectedVersion\":(\"[a-zA-Z-]{0,14}\"|-?[0-9]{1,22}))?",
        ) {
            let body = format!("{{\"events\":[{ev}]{exp}}}");
            if let Ok(req) = serde_json::from_str::<AppendRequest>(&body) {
                if let Ok((e, _)) = req.into_events() {
                    let _ = resolve_expected(None, e.as_ref());
                }
            }
        }

        #[test]
        fn query_parsing_never_panics(q in "[a-zA-Z=&%0-9._+-]{0,64}") {
            if let Ok(uri) = format!("/x?{q}").parse::<Uri>() {
                let _ = Query::<ReadStreamQuery>::try_from_uri(&uri);
                let _ = Query::<ReadAllQuery>::try_from_uri(&uri);
                let _ = Query::<SubscribeQuery>::try_from_uri(&uri);
                let _ = Query::<ListStreamsQuery>::try_from_uri(&uri);
            }
            let _ = parse_expected(&q);
        }
    }
}
