//! The archiver's view of a store node reached over HTTP: `read_all` through
//! `GET /v1/events?from=&limit=&encoding=base64` and `trim_tenant_before` through
//! `POST /v1/trim`, each with the tenant's bearer token (the tenant comes from the token on the
//! server side, so a token can only ever read or trim its own tenant).
//!
//! It implements [`EventStore`] so that [`super::run`] takes it like any other store, but only the
//! two calls the archiver makes (plus `stats`); every other call answers
//! [`StoreError::Unsupported`]. It must never be served to clients as a general store.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use serde::Deserialize;

use crate::backend::{EventStore, EventSubscription, StoreResult, SubscriptionTarget};
use crate::error::StoreError;
use crate::model::{
    AppendResult, Capabilities, Direction, ExpectedVersion, NewEvent, ReadFrom, RecordedEvent,
    Snapshot, StreamId, StreamInfo, TenantId, TenantStats,
};

/// A store node's HTTP API, with one bearer token per tenant.
pub struct HttpSource {
    http: reqwest::Client,
    base: reqwest::Url,
    tokens: HashMap<TenantId, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventWire {
    stream: String,
    version: u64,
    position: u64,
    event_id: uuid::Uuid,
    event_type: String,
    #[serde(default)]
    data_base64: Option<String>,
    #[serde(default)]
    data: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    timestamp: i64,
}

#[derive(Deserialize)]
struct PageWire {
    events: Vec<EventWire>,
}

#[derive(Deserialize)]
struct DroppedWire {
    dropped: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatsWire {
    #[serde(default)]
    events: u64,
    #[serde(default)]
    streams: u64,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    snapshot_bytes: u64,
    #[serde(default)]
    next_position: u64,
    #[serde(default)]
    incarnation: u64,
    #[serde(default)]
    trimmed_before: u64,
}

#[derive(Deserialize)]
struct ErrorWire {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn unsupported<T>(what: &str) -> StoreResult<T> {
    Err(StoreError::Unsupported(format!(
        "{what} is not available through the archiver's HTTP source"
    )))
}

impl HttpSource {
    /// A source for the store node at `base` (e.g. `http://es-0.es:8080`).
    pub fn new(base: &str, tokens: HashMap<TenantId, String>) -> Result<Self, StoreError> {
        Self::with_ca(base, tokens, None)
    }

    /// A source for the store node at `base`; with `ca_pem` (PEM certificates), an `https://`
    /// node is verified against those CAs only (the public roots are not trusted for it).
    pub fn with_ca(
        base: &str,
        tokens: HashMap<TenantId, String>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, StoreError> {
        let base = reqwest::Url::parse(base)
            .map_err(|e| StoreError::invalid("source", format!("{base:?}: {e}")))?;
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(120));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| StoreError::invalid("ca", format!("not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(StoreError::invalid("ca", "holds no PEM CERTIFICATE"));
            }
            builder = builder.tls_built_in_root_certs(false);
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        Ok(Self { http, base, tokens })
    }

    fn token(&self, tenant: &TenantId) -> StoreResult<&str> {
        self.tokens
            .get(tenant)
            .map(String::as_str)
            .ok_or_else(|| StoreError::invalid("tenant", format!("no token for tenant {tenant}")))
    }

    fn url(&self, path: &str) -> StoreResult<reqwest::Url> {
        self.base
            .join(path)
            .map_err(|e| StoreError::Internal(e.to_string()))
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        tenant: &TenantId,
        req: reqwest::RequestBuilder,
    ) -> StoreResult<T> {
        let resp = req
            .bearer_auth(self.token(tenant)?)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(format!("store node: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json()
                .await
                .map_err(|e| StoreError::Internal(format!("store node answer: {e}")));
        }
        let body: ErrorWire = resp.json().await.unwrap_or(ErrorWire {
            code: String::new(),
            message: String::new(),
        });
        let msg = format!(
            "store node answered {status}: {} {}",
            body.code, body.message
        );
        Err(match status.as_u16() {
            400 => StoreError::invalid("request", msg),
            404 => StoreError::NotFound(msg),
            501 => StoreError::Unsupported(msg),
            500 => StoreError::Internal(msg),
            _ => StoreError::Unavailable(msg),
        })
    }
}

fn decode(tenant: &TenantId, w: EventWire) -> StoreResult<RecordedEvent> {
    let payload = match (w.data_base64, w.data) {
        (Some(b), _) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| StoreError::Internal(format!("dataBase64: {e}")))?,
        (None, Some(raw)) => raw.get().as_bytes().to_vec(),
        (None, None) => Vec::new(),
    };
    Ok(RecordedEvent {
        tenant: tenant.clone(),
        stream: StreamId::new(w.stream)?,
        version: w.version,
        position: w.position,
        event_id: w.event_id,
        event_type: w.event_type,
        payload,
        metadata: w.metadata,
        timestamp_ms: w.timestamp,
    })
}

#[async_trait]
impl EventStore for HttpSource {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            subscriptions: false,
            snapshots: false,
            transactions: false,
            archival: true,
            gapless_positions: false,
        }
    }

    async fn append(
        &self,
        _: &TenantId,
        _: &StreamId,
        _: ExpectedVersion,
        _: Vec<NewEvent>,
    ) -> StoreResult<AppendResult> {
        unsupported("append")
    }

    async fn read_stream(
        &self,
        _: &TenantId,
        _: &StreamId,
        _: ReadFrom,
        _: Direction,
        _: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        unsupported("read_stream")
    }

    async fn read_all(
        &self,
        tenant: &TenantId,
        from_position: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        let mut url = self.url("v1/events")?;
        url.query_pairs_mut()
            .append_pair("from", &from_position.to_string())
            .append_pair("limit", &limit.to_string())
            .append_pair("encoding", "base64");
        let page: PageWire = self.call(tenant, self.http.get(url)).await?;
        page.events.into_iter().map(|w| decode(tenant, w)).collect()
    }

    async fn subscribe(
        &self,
        _: &TenantId,
        _: SubscriptionTarget,
        _: Option<u64>,
    ) -> StoreResult<EventSubscription> {
        unsupported("subscribe")
    }

    async fn save_snapshot(&self, _: &TenantId, _: Snapshot) -> StoreResult<()> {
        unsupported("save_snapshot")
    }

    async fn load_snapshot(&self, _: &TenantId, _: &StreamId) -> StoreResult<Option<Snapshot>> {
        unsupported("load_snapshot")
    }

    async fn list_streams(
        &self,
        _: &TenantId,
        _: Option<&StreamId>,
        _: usize,
    ) -> StoreResult<Vec<StreamInfo>> {
        unsupported("list_streams")
    }

    async fn count_streams(&self, _: &TenantId) -> StoreResult<u64> {
        unsupported("count_streams")
    }

    async fn delete_stream(&self, _: &TenantId, _: &StreamId) -> StoreResult<()> {
        unsupported("delete_stream")
    }

    async fn truncate_before(&self, _: &TenantId, _: &StreamId, _: u64) -> StoreResult<u64> {
        unsupported("truncate_before")
    }

    async fn trim_tenant_before(
        &self,
        tenant: &TenantId,
        before: u64,
        incarnation: Option<u64>,
    ) -> StoreResult<u64> {
        let url = self.url("v1/trim")?;
        let body = serde_json::json!({ "before": before, "incarnation": incarnation });
        let out: DroppedWire = self.call(tenant, self.http.post(url).json(&body)).await?;
        Ok(out.dropped)
    }

    async fn stats(&self, tenant: &TenantId) -> StoreResult<TenantStats> {
        let s: StatsWire = self
            .call(tenant, self.http.get(self.url("v1/stats")?))
            .await?;
        Ok(TenantStats {
            events: s.events,
            streams: s.streams,
            bytes: s.bytes,
            snapshot_bytes: s.snapshot_bytes,
            next_position: s.next_position,
            incarnation: s.incarnation,
            trimmed_before: s.trimmed_before,
        })
    }
}
