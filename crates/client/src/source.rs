//! The archiver's view of a store node reached over HTTP: `read_all` through
//! `GET /v1/events?from=&limit=&encoding=base64` and `trim_tenant_before` through
//! `POST /v1/trim`, each with the tenant's bearer token (the tenant comes from the token on the
//! server side, so a token can only ever read or trim its own tenant).
//!
//! It implements [`EventStore`] so that the archiver (`store_node::archive::run`) takes it like any other store, but only the
//! two calls the archiver makes (plus `stats`); every other call answers
//! [`StoreError::Unsupported`]. It must never be served to clients as a general store.

use std::collections::HashMap;
use std::time::Duration;

use allsource_core::model::{
    AppendResult, Capabilities, Direction, ExpectedVersion, NewEvent, ReadFrom, RecordedEvent,
    Snapshot, StreamId, StreamInfo, TenantId, TenantStats,
};
use allsource_core::store::{EventStore, EventSubscription, StoreResult, SubscriptionTarget};
use allsource_core::wire::TrimIn;
use allsource_core::StoreError;
use async_trait::async_trait;

use crate::NodeClient;

/// Time limit of one call (a page of events can be large).
const TIMEOUT: Duration = Duration::from_secs(120);

/// A store node's HTTP API, with one bearer token per tenant.
pub struct HttpSource {
    node: NodeClient,
    tokens: HashMap<TenantId, String>,
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
        let http = crate::builder(TIMEOUT, ca_pem)?
            .build()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let node = NodeClient::new(http, base)?;
        Ok(Self { node, tokens })
    }

    fn token(&self, tenant: &TenantId) -> StoreResult<&str> {
        self.tokens
            .get(tenant)
            .map(String::as_str)
            .ok_or_else(|| StoreError::invalid("tenant", format!("no token for tenant {tenant}")))
    }
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
        let page = self
            .node
            .read_all(self.token(tenant)?, from_position, limit)
            .await?;
        page.events
            .into_iter()
            .map(|e| e.into_recorded(tenant))
            .collect()
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
        let body = TrimIn {
            before,
            incarnation,
        };
        Ok(self.node.trim(self.token(tenant)?, &body).await?.dropped)
    }

    async fn stats(&self, tenant: &TenantId) -> StoreResult<TenantStats> {
        let s = self.node.stats(self.token(tenant)?).await?;
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
