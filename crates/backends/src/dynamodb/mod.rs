//! DynamoDB backend of the event-store API (aws-sdk-dynamodb), over the pooled table laid out
//! in [`table`].
//!
//! An append is one `TransactWriteItems`: the stream head (conditioned on the version read), the
//! tenant counter (conditioned on the `next_position` read, which makes positions gap-free and
//! commit-ordered), one item per event and one per event id (conditioned on not existing). A
//! cancelled transaction is re-read and retried: the re-read turns a lost race into either an
//! idempotent result or a `Conflict`. The batch limit follows from the 100-item transaction cap
//! and is declared in [`EventStore::limits`]. `read_all` and `list_streams` use global secondary
//! indexes, which AWS keeps eventually consistent: an event may appear there shortly after its
//! append returns (DynamoDB Local is immediate). This module owns the calls; it must never
//! build key strings or schemas itself (see [`table`]).

pub mod table;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, BillingMode, DeleteRequest, KeysAndAttributes, Put, TimeToLiveSpecification,
    TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;

use crate::cloud::{self, StreamHead};
use allsource_core::error::StoreError;
use allsource_core::model::{
    AppendResult, Capabilities, Direction, ExpectedVersion, Limits, NewEvent, ReadFrom,
    RecordedEvent, Snapshot, StreamId, StreamInfo, TenantId, TenantStats,
};
use allsource_core::store::{EventStore, EventSubscription, StoreResult, SubscriptionTarget};

type Item = HashMap<String, AttributeValue>;

/// Static credentials (otherwise the default AWS credential chain is used).
#[derive(Debug, Clone)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

/// Configuration of the DynamoDB backend.
#[derive(Debug, Clone)]
pub struct DynamoConfig {
    /// Table name.
    pub table: String,
    /// Region.
    pub region: String,
    /// Endpoint override (DynamoDB Local, VPC endpoints).
    pub endpoint: Option<String>,
    /// Static credentials; None = default chain.
    pub credentials: Option<StaticCredentials>,
    /// Expire events this long after their append (TTL attribute); None = keep.
    pub event_ttl: Option<Duration>,
    /// Poll interval of subscriptions.
    pub poll_interval: Duration,
}

impl DynamoConfig {
    /// A configuration with defaults for everything but the table and region.
    pub fn new(table: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            region: region.into(),
            endpoint: None,
            credentials: None,
            event_ttl: None,
            poll_interval: cloud::DEFAULT_POLL_INTERVAL,
        }
    }
}

/// The DynamoDB event store. Cheap to clone.
#[derive(Clone)]
pub struct DynamoStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    table: String,
    /// Index items skipped because their key belongs to another tenant (see
    /// [`table::event_item_belongs`]).
    foreign_items: std::sync::atomic::AtomicU64,
    event_ttl: Option<Duration>,
    poll_interval: Duration,
    limits: Limits,
}

const MAX_ATTEMPTS: usize = 64;

/// Whether a request failed only its condition expression.
fn is_condition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::ServiceError(se) if se.err().code() == Some("ConditionalCheckFailedException"))
}

/// Maps an SDK error to a store error whose message a tenant may read: the category only. The
/// service's own text (table names, ARNs, request ids, endpoint and connector details) is
/// logged here and never reaches the client.
fn sdk_err<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> StoreError {
    match &e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let code = err.code().unwrap_or("Unknown");
            let msg = err.message().unwrap_or("");
            tracing::warn!(code, message = msg, "dynamodb request failed");
            match code {
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded" => StoreError::Unavailable(
                    "the database is throttling requests; retry with backoff".into(),
                ),
                "InternalServerError"
                | "ServiceUnavailable"
                | "TransactionConflictException"
                | "TransactionInProgressException" => {
                    StoreError::Unavailable("the database is temporarily unavailable; retry".into())
                }
                "ResourceNotFoundException" => StoreError::Unavailable(
                    "the database table of this tenant is not available; retry later".into(),
                ),
                // Internal: the server logs it again and answers a bare "internal error".
                _ => StoreError::Internal(format!("dynamodb {code}: {msg}")),
            }
        }
        _ => {
            tracing::warn!(error = ?e, "dynamodb request failed before an answer");
            StoreError::Unavailable("the database cannot be reached; retry".into())
        }
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s<'a>(item: &'a Item, k: &str) -> StoreResult<&'a str> {
    match item.get(k) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(StoreError::Internal(format!("item lacks string {k}"))),
    }
}

fn get_n(item: &Item, k: &str) -> StoreResult<u64> {
    match item.get(k) {
        Some(AttributeValue::N(v)) => v
            .parse::<i64>()
            .map(|x| u64::try_from(x).unwrap_or(0))
            .map_err(|e| StoreError::Internal(format!("{k}: {e}"))),
        None => Ok(0),
        _ => Err(StoreError::Internal(format!("item lacks number {k}"))),
    }
}

fn get_i(item: &Item, k: &str) -> StoreResult<i64> {
    match item.get(k) {
        Some(AttributeValue::N(v)) => v
            .parse::<i64>()
            .map_err(|e| StoreError::Internal(format!("{k}: {e}"))),
        _ => Err(StoreError::Internal(format!("item lacks number {k}"))),
    }
}

fn get_b(item: &Item, k: &str) -> StoreResult<Vec<u8>> {
    match item.get(k) {
        Some(AttributeValue::B(v)) => Ok(v.as_ref().to_vec()),
        None => Ok(Vec::new()),
        _ => Err(StoreError::Internal(format!("item lacks bytes {k}"))),
    }
}

fn get_bool(item: &Item, k: &str) -> bool {
    matches!(item.get(k), Some(AttributeValue::Bool(true)))
}

fn meta_json(m: &BTreeMap<String, String>) -> StoreResult<String> {
    serde_json::to_string(m).map_err(|e| StoreError::Internal(format!("metadata: {e}")))
}

fn meta_parse(v: &str) -> StoreResult<BTreeMap<String, String>> {
    serde_json::from_str(v).map_err(|e| StoreError::Internal(format!("stored metadata: {e}")))
}

fn head_of(item: &Item) -> StoreResult<StreamHead> {
    Ok(StreamHead {
        last_version: get_n(item, "last_version")?,
        start_version: get_n(item, "start_version")?,
        deleted: get_bool(item, "deleted"),
    })
}

/// An event item of `tenant` (whose key the caller checked) as a recorded event.
fn event_of(tenant: &TenantId, item: &Item) -> StoreResult<RecordedEvent> {
    Ok(RecordedEvent {
        tenant: tenant.clone(),
        stream: StreamId::new(get_s(item, "stream")?)?,
        version: get_n(item, "version")?,
        position: get_n(item, "g2s")?,
        event_id: get_s(item, "event_id")?
            .parse()
            .map_err(|e| StoreError::Internal(format!("event id: {e}")))?,
        event_type: get_s(item, "event_type")?.to_string(),
        payload: get_b(item, "payload")?,
        metadata: meta_parse(get_s(item, "metadata")?)?,
        timestamp_ms: get_i(item, "ts")?,
    })
}

/// See [`table::event_item_belongs`].
fn event_belongs(tenant: &TenantId, item: &Item) -> bool {
    match (get_s(item, "pk"), get_s(item, "sk"), get_s(item, "stream")) {
        (Ok(pk), Ok(sk), Ok(stream)) => table::event_item_belongs(tenant.as_str(), pk, sk, stream),
        _ => false,
    }
}

/// See [`table::head_item_belongs`].
fn head_belongs(tenant: &TenantId, item: &Item) -> bool {
    match (get_s(item, "pk"), get_s(item, "sk"), get_s(item, "g1s")) {
        (Ok(pk), Ok(sk), Ok(g1s)) => table::head_item_belongs(tenant.as_str(), pk, sk, g1s),
        _ => false,
    }
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

fn event_size(stream: &StreamId, e: &NewEvent) -> u64 {
    let meta: usize = e.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    (e.payload.len() + e.event_type.len() + stream.as_str().len() + meta + 48) as u64
}

fn build_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("dynamodb request: {e}"))
}

impl DynamoStore {
    /// Builds a client from the configuration (no call is made).
    pub async fn connect(config: DynamoConfig) -> StoreResult<Self> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()));
        if let Some(ep) = &config.endpoint {
            loader = loader.endpoint_url(ep);
        }
        if let Some(c) = &config.credentials {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                None,
                None,
                "allsource-static",
            ));
        }
        let sdk = loader.load().await;
        Ok(Self::with_client(Client::new(&sdk), config))
    }

    /// Wraps an existing client.
    pub fn with_client(client: Client, config: DynamoConfig) -> Self {
        let limits = Limits {
            max_batch_events: table::MAX_BATCH_EVENTS,
            max_event_bytes: table::MAX_EVENT_BYTES,
            max_batch_bytes: table::MAX_BATCH_BYTES,
            ..Limits::default()
        };
        Self {
            inner: Arc::new(Inner {
                foreign_items: std::sync::atomic::AtomicU64::new(0),
                client,
                table: config.table,
                event_ttl: config.event_ttl,
                poll_interval: config.poll_interval,
                limits,
            }),
        }
    }

    /// The same store over another table with the shared layout (a siloed tenant's), sharing
    /// this store's client.
    pub fn with_table(&self, table: &str) -> Self {
        let mut config = DynamoConfig::new(table, "");
        config.event_ttl = self.inner.event_ttl;
        config.poll_interval = self.inner.poll_interval;
        Self::with_client(self.inner.client.clone(), config)
    }

    /// Creates the table and its indexes if missing, waits until it is active, enables TTL.
    pub async fn ensure_table(&self) -> StoreResult<()> {
        let c = &self.inner.client;
        let t = &self.inner.table;
        let exists = match c.describe_table().table_name(t).send().await {
            Ok(_) => true,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                false
            }
            Err(e) => return Err(sdk_err(e)),
        };
        if !exists {
            let r = c
                .create_table()
                .table_name(t)
                .set_attribute_definitions(Some(table::attribute_definitions()?))
                .set_key_schema(Some(table::key_schema()?))
                .set_global_secondary_indexes(Some(table::global_secondary_indexes()?))
                .billing_mode(BillingMode::PayPerRequest)
                .send()
                .await;
            if let Err(e) = r {
                if !e
                    .as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception())
                {
                    return Err(sdk_err(e));
                }
            }
        }
        for _ in 0..120 {
            let d = c
                .describe_table()
                .table_name(t)
                .send()
                .await
                .map_err(sdk_err)?;
            let active =
                d.table().and_then(|t| t.table_status()).map(|s| s.as_str()) == Some("ACTIVE");
            if active {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let spec = TimeToLiveSpecification::builder()
            .attribute_name(table::TTL_ATTRIBUTE)
            .enabled(true)
            .build()
            .map_err(build_err)?;
        // TTL is best effort: some emulators reject it, and enabling it twice is an error.
        let _ = c
            .update_time_to_live()
            .table_name(t)
            .time_to_live_specification(spec)
            .send()
            .await;
        Ok(())
    }

    async fn get(&self, pk: String, sk: &str) -> StoreResult<Option<Item>> {
        let out = self
            .inner
            .client
            .get_item()
            .table_name(&self.inner.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(out.item().cloned())
    }

    async fn head(&self, tenant: &TenantId, stream: &StreamId) -> StoreResult<Option<StreamHead>> {
        let pk = table::stream_pk(tenant.as_str(), stream.as_str());
        match self.get(pk, table::HEAD_SK).await? {
            Some(item) => Ok(Some(head_of(&item)?)),
            None => Ok(None),
        }
    }

    async fn find_ids(&self, pk: &str, events: &[NewEvent]) -> StoreResult<Vec<(u64, u64)>> {
        let keys: Vec<Item> = events
            .iter()
            .map(|e| key(pk.to_string(), &table::id_sk(&e.event_id)))
            .collect();
        let mut pending = KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .consistent_read(true)
            .build()
            .map_err(build_err)?;
        let mut found = Vec::new();
        for _ in 0..MAX_ATTEMPTS {
            let out = self
                .inner
                .client
                .batch_get_item()
                .request_items(&self.inner.table, pending.clone())
                .send()
                .await
                .map_err(sdk_err)?;
            if let Some(items) = out.responses().and_then(|r| r.get(&self.inner.table)) {
                for it in items {
                    found.push((get_n(it, "version")?, get_n(it, "position")?));
                }
            }
            match out
                .unprocessed_keys()
                .and_then(|u| u.get(&self.inner.table))
                .filter(|k| !k.keys().is_empty())
            {
                Some(rest) => pending = rest.clone(),
                None => return Ok(found),
            }
        }
        Err(StoreError::Unavailable("dynamodb: unprocessed keys".into()))
    }

    fn put(&self, item: Item, condition: &str, values: Item) -> StoreResult<TransactWriteItem> {
        let mut p = Put::builder()
            .table_name(&self.inner.table)
            .set_item(Some(item))
            .condition_expression(condition);
        if !values.is_empty() {
            p = p.set_expression_attribute_values(Some(values));
        }
        Ok(TransactWriteItem::builder()
            .put(p.build().map_err(build_err)?)
            .build())
    }

    async fn try_append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> StoreResult<Option<AppendResult>> {
        let (t, st) = (tenant.as_str(), stream.as_str());
        let pk = table::stream_pk(t, st);
        let (head, counters) = futures::try_join!(
            self.head(tenant, stream),
            self.get(table::tenant_pk(t), table::TENANT_SK)
        )?;
        let current = StreamHead::current(head.as_ref());
        let found = self.find_ids(&pk, events).await?;
        if let Some(done) = cloud::resolve_dedup(events.len(), &found, current)? {
            return Ok(Some(done));
        }
        cloud::check_expected(expected, current)?;

        let (first_version, start_version) = StreamHead::next(head.as_ref());
        let count = events.len() as u64;
        let last_version = first_version + count - 1;
        let first_position = match &counters {
            Some(c) => get_n(c, "next_position")?,
            None => 0,
        };
        let now = cloud::now_ms();
        let expires = self
            .inner
            .event_ttl
            .map(|ttl| now / 1000 + ttl.as_secs() as i64);
        let mut items = Vec::with_capacity(2 * events.len() + 2);

        // Stream head, conditioned on exactly what was read.
        let mut h = key(pk.clone(), table::HEAD_SK);
        h.insert("last_version".into(), n(last_version));
        h.insert("start_version".into(), n(start_version));
        h.insert("deleted".into(), AttributeValue::Bool(false));
        h.insert("g1p".into(), s(t));
        h.insert("g1s".into(), s(st));
        items.push(match &head {
            None => self.put(h, "attribute_not_exists(pk)", Item::new())?,
            // start_version too: a truncation moving it meanwhile must not be undone.
            Some(old) => self.put(
                h,
                "last_version = :lv AND deleted = :d AND start_version = :sv",
                HashMap::from([
                    (":lv".to_string(), n(old.last_version)),
                    (":d".to_string(), AttributeValue::Bool(old.deleted)),
                    (":sv".to_string(), n(old.start_version)),
                ]),
            )?,
        });

        // Tenant counters: positions reserved under a condition on the value read.
        let bytes: u64 = events.iter().map(|e| event_size(stream, e)).sum();
        let new_stream = u64::from(current.is_none());
        let mut vals = HashMap::from([
            (":np".to_string(), n(first_position + count)),
            (":n".to_string(), n(count)),
            (":b".to_string(), n(bytes)),
            (":s".to_string(), n(new_stream)),
        ]);
        let cond = if counters.is_some() {
            vals.insert(":old".into(), n(first_position));
            "next_position = :old"
        } else {
            "attribute_not_exists(pk)"
        };
        let upd = Update::builder()
            .table_name(&self.inner.table)
            .set_key(Some(key(table::tenant_pk(t), table::TENANT_SK)))
            .update_expression("SET next_position = :np ADD events :n, bytes :b, streams :s")
            .condition_expression(cond)
            .set_expression_attribute_values(Some(vals))
            .build()
            .map_err(build_err)?;
        items.push(TransactWriteItem::builder().update(upd).build());

        for (i, e) in events.iter().enumerate() {
            let v = first_version + i as u64;
            let p = first_position + i as u64;
            let mut it = key(pk.clone(), &table::event_sk(v));
            it.insert("stream".into(), s(st));
            it.insert("version".into(), n(v));
            it.insert("g2p".into(), s(t));
            it.insert("g2s".into(), n(p));
            it.insert("event_id".into(), s(e.event_id.to_string()));
            it.insert("event_type".into(), s(e.event_type.clone()));
            it.insert(
                "payload".into(),
                AttributeValue::B(Blob::new(e.payload.clone())),
            );
            it.insert("metadata".into(), s(meta_json(&e.metadata)?));
            it.insert("ts".into(), n(now));
            it.insert("size".into(), n(event_size(stream, e)));
            if let Some(x) = expires {
                it.insert(table::TTL_ATTRIBUTE.into(), n(x));
            }
            items.push(self.put(it, "attribute_not_exists(pk)", Item::new())?);
            let mut id = key(pk.clone(), &table::id_sk(&e.event_id));
            id.insert("version".into(), n(v));
            id.insert("position".into(), n(p));
            if let Some(x) = expires {
                id.insert(table::TTL_ATTRIBUTE.into(), n(x));
            }
            items.push(self.put(id, "attribute_not_exists(pk)", Item::new())?);
        }

        let r = self
            .inner
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match r {
            Ok(_) => Ok(Some(AppendResult {
                first_version,
                last_version,
                first_position,
                last_position: first_position + count - 1,
                deduplicated: false,
            })),
            Err(e) => match e.as_service_error() {
                // A condition failed (someone else committed first) or a concurrent transaction
                // touched the same items: re-read and decide again.
                Some(TransactWriteItemsError::TransactionCanceledException(_)) => Ok(None),
                _ => Err(sdk_err(e)),
            },
        }
    }

    async fn query_all(
        &self,
        index: Option<&str>,
        key_condition: &str,
        values: Item,
        forward: bool,
        limit: usize,
    ) -> StoreResult<Vec<Item>> {
        self.query_kept(index, key_condition, values, forward, limit, |_| true)
            .await
    }

    /// Like [`Self::query_all`], keeping only items `keep` accepts; skipped ones do not count
    /// toward `limit` (so foreign items cannot shorten or empty a page) and are counted in
    /// [`Self::foreign_items_ignored`].
    async fn query_kept(
        &self,
        index: Option<&str>,
        key_condition: &str,
        values: Item,
        forward: bool,
        limit: usize,
        keep: impl Fn(&Item) -> bool,
    ) -> StoreResult<Vec<Item>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        let mut skipped = 0u64;
        let result = loop {
            let mut q = self
                .inner
                .client
                .query()
                .table_name(&self.inner.table)
                .key_condition_expression(key_condition)
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(forward)
                .limit(i32::try_from(limit - out.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take());
            q = match index {
                Some(i) => q.index_name(i),
                None => q.consistent_read(true),
            };
            let page = match q.send().await {
                Ok(p) => p,
                Err(e) => break Err(sdk_err(e)),
            };
            for item in page.items() {
                if keep(item) {
                    out.push(item.clone());
                } else {
                    skipped += 1;
                }
            }
            match page.last_evaluated_key() {
                Some(k) if out.len() < limit && !k.is_empty() => start = Some(k.clone()),
                _ => break Ok(out),
            }
        };
        if skipped > 0 {
            self.inner
                .foreign_items
                .fetch_add(skipped, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                table = %self.inner.table,
                index = index.unwrap_or("-"),
                skipped,
                "ignored index items whose key belongs to another tenant (written directly to the table)"
            );
        }
        result
    }

    /// Index items ignored so far because their key belongs to another tenant than the index
    /// attributes claim (items written directly to the table by a tenant's own credentials).
    pub fn foreign_items_ignored(&self) -> u64 {
        self.inner
            .foreign_items
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Deletes every item whose partition key is `pk`.
    async fn delete_partition(&self, pk: &str) -> StoreResult<()> {
        let vals = HashMap::from([(":pk".to_string(), s(pk))]);
        let items = self
            .query_all(None, "pk = :pk", vals, true, usize::MAX)
            .await?;
        let keys = items
            .iter()
            .map(|i| Ok(key(get_s(i, "pk")?.to_string(), get_s(i, "sk")?)))
            .collect::<StoreResult<Vec<_>>>()?;
        self.delete_keys(keys).await
    }

    async fn delete_keys(&self, keys: Vec<Item>) -> StoreResult<()> {
        for chunk in keys.chunks(25) {
            let mut reqs: Vec<WriteRequest> = chunk
                .iter()
                .map(|k| {
                    Ok(WriteRequest::builder()
                        .delete_request(
                            DeleteRequest::builder()
                                .set_key(Some(k.clone()))
                                .build()
                                .map_err(build_err)?,
                        )
                        .build())
                })
                .collect::<StoreResult<_>>()?;
            for attempt in 0..MAX_ATTEMPTS {
                let out = self
                    .inner
                    .client
                    .batch_write_item()
                    .request_items(&self.inner.table, reqs.clone())
                    .send()
                    .await
                    .map_err(sdk_err)?;
                reqs = out
                    .unprocessed_items()
                    .and_then(|u| u.get(&self.inner.table))
                    .cloned()
                    .unwrap_or_default();
                if reqs.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10 * (attempt as u64 + 1))).await;
            }
        }
        Ok(())
    }

    /// Raises the number attribute `attr` of an existing item to `value`; never lowers it, and
    /// leaves a missing item alone.
    async fn raise(&self, pk: String, sk: &str, attr: &str, value: u64) -> StoreResult<()> {
        let raised = self
            .inner
            .client
            .update_item()
            .table_name(&self.inner.table)
            .set_key(Some(key(pk, sk)))
            .update_expression("SET #a = :v")
            .condition_expression("attribute_exists(pk) AND (attribute_not_exists(#a) OR #a < :v)")
            .expression_attribute_names("#a", attr)
            .expression_attribute_values(":v", n(value))
            .send()
            .await;
        match raised {
            Err(e) if !is_condition_failed(&e) => Err(sdk_err(e)),
            _ => Ok(()),
        }
    }

    async fn sub_usage(
        &self,
        tenant: &TenantId,
        events: u64,
        bytes: u64,
        streams: u64,
    ) -> StoreResult<()> {
        let neg = |x: u64| n(-(i64::try_from(x).unwrap_or(i64::MAX)));
        self.inner
            .client
            .update_item()
            .table_name(&self.inner.table)
            .set_key(Some(key(
                table::tenant_pk(tenant.as_str()),
                table::TENANT_SK,
            )))
            .update_expression("ADD events :e, bytes :b, streams :s")
            .expression_attribute_values(":e", neg(events))
            .expression_attribute_values(":b", neg(bytes))
            .expression_attribute_values(":s", neg(streams))
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(())
    }

    async fn drop_events(&self, tenant: &TenantId, items: Vec<Item>) -> StoreResult<u64> {
        let count = items.len() as u64;
        if count == 0 {
            return Ok(0);
        }
        let bytes: u64 = items.iter().map(|i| get_n(i, "size").unwrap_or(0)).sum();
        let keys = items
            .iter()
            .map(|i| Ok(key(get_s(i, "pk")?.to_string(), get_s(i, "sk")?)))
            .collect::<StoreResult<Vec<_>>>()?;
        self.delete_keys(keys).await?;
        self.sub_usage(tenant, count, bytes, 0).await?;
        Ok(count)
    }
}

#[async_trait::async_trait]
impl EventStore for DynamoStore {
    fn capabilities(&self) -> Capabilities {
        allsource_core::model::BackendKind::Dynamodb.capabilities()
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
        for attempt in 0..MAX_ATTEMPTS {
            if let Some(r) = self.try_append(tenant, stream, expected, &events).await? {
                return Ok(r);
            }
            let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 8);
            tokio::time::sleep(Duration::from_millis((attempt as u64).min(10) * 2 + jitter)).await;
        }
        Err(StoreError::Unavailable(
            "dynamodb: too much contention on this tenant; retry".into(),
        ))
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
        let head = StreamHead::readable(self.head(tenant, stream).await?.as_ref(), stream)?;
        let Some((lo, hi)) = cloud::read_range(&head, from, direction, limit) else {
            return Ok(Vec::new());
        };
        let vals = HashMap::from([
            (
                ":pk".to_string(),
                s(table::stream_pk(tenant.as_str(), stream.as_str())),
            ),
            (":lo".to_string(), s(table::event_sk(lo))),
            (":hi".to_string(), s(table::event_sk(hi))),
        ]);
        let items = self
            .query_all(
                None,
                "pk = :pk AND sk BETWEEN :lo AND :hi",
                vals,
                direction == Direction::Forwards,
                limit,
            )
            .await?;
        let page = items
            .iter()
            .map(|i| event_of(tenant, i))
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
        let vals = HashMap::from([
            (":t".to_string(), s(tenant.as_str())),
            (":p".to_string(), n(from_position)),
        ]);
        let items = self
            .query_kept(
                Some(table::BY_POSITION),
                "g2p = :t AND g2s >= :p",
                vals,
                true,
                limit,
                |i| event_belongs(tenant, i),
            )
            .await?;
        let page = items
            .iter()
            .map(|i| event_of(tenant, i))
            .collect::<StoreResult<Vec<_>>>()?;
        if page.first().is_none_or(|e| e.position > from_position) {
            // Something before the page is missing: archived, or only truncated or never there.
            if let Some(c) = self
                .get(table::tenant_pk(tenant.as_str()), table::TENANT_SK)
                .await?
            {
                let trimmed = match c.get("trimmed_before") {
                    Some(_) => get_n(&c, "trimmed_before")?,
                    None => 0,
                };
                cloud::check_tenant_not_archived(from_position, trimmed)?;
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
        let mut it = key(
            table::stream_pk(tenant.as_str(), snapshot.stream.as_str()),
            table::SNAPSHOT_SK,
        );
        it.insert("version".into(), n(snapshot.version));
        it.insert(
            "payload".into(),
            AttributeValue::B(Blob::new(snapshot.payload)),
        );
        it.insert("metadata".into(), s(meta_json(&snapshot.metadata)?));
        it.insert("ts".into(), n(snapshot.timestamp_ms));
        self.inner
            .client
            .put_item()
            .table_name(&self.inner.table)
            .set_item(Some(it))
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(())
    }

    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> StoreResult<Option<Snapshot>> {
        let pk = table::stream_pk(tenant.as_str(), stream.as_str());
        let Some(it) = self.get(pk, table::SNAPSHOT_SK).await? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            stream: stream.clone(),
            version: get_n(&it, "version")?,
            payload: get_b(&it, "payload")?,
            metadata: meta_parse(get_s(&it, "metadata")?)?,
            timestamp_ms: get_i(&it, "ts")?,
        }))
    }

    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> StoreResult<Vec<StreamInfo>> {
        self.inner.limits.validate_read_limit(limit)?;
        let mut vals = HashMap::from([(":t".to_string(), s(tenant.as_str()))]);
        let cond = match after {
            Some(a) => {
                vals.insert(":a".into(), s(a.as_str()));
                "g1p = :t AND g1s > :a"
            }
            None => "g1p = :t",
        };
        let items = self
            .query_kept(Some(table::BY_TENANT), cond, vals, true, limit, |i| {
                head_belongs(tenant, i)
            })
            .await?;
        items
            .iter()
            .map(|it| {
                let h = head_of(it)?;
                Ok(StreamInfo {
                    stream: StreamId::new(get_s(it, "g1s")?)?,
                    last_version: h.last_version,
                    deleted: h.deleted,
                })
            })
            .collect()
    }

    async fn count_streams(&self, tenant: &TenantId) -> StoreResult<u64> {
        Ok(self.stats(tenant).await?.streams)
    }

    async fn delete_stream(&self, tenant: &TenantId, stream: &StreamId) -> StoreResult<()> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(head) = self.head(tenant, stream).await? else {
                return Err(StoreError::NotFound(format!("stream {stream}")));
            };
            if head.deleted {
                return Ok(());
            }
            let pk = table::stream_pk(tenant.as_str(), stream.as_str());
            let mark = Update::builder()
                .table_name(&self.inner.table)
                .set_key(Some(key(pk, table::HEAD_SK)))
                .update_expression("SET deleted = :t")
                .condition_expression("last_version = :lv AND deleted = :f")
                .expression_attribute_values(":t", AttributeValue::Bool(true))
                .expression_attribute_values(":f", AttributeValue::Bool(false))
                .expression_attribute_values(":lv", n(head.last_version))
                .build()
                .map_err(build_err)?;
            let count = Update::builder()
                .table_name(&self.inner.table)
                .set_key(Some(key(
                    table::tenant_pk(tenant.as_str()),
                    table::TENANT_SK,
                )))
                .update_expression("ADD streams :m")
                .expression_attribute_values(":m", n(-1))
                .build()
                .map_err(build_err)?;
            let r = self
                .inner
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(mark).build())
                .transact_items(TransactWriteItem::builder().update(count).build())
                .send()
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) => match e.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(_)) => continue,
                    _ => return Err(sdk_err(e)),
                },
            }
        }
        Err(StoreError::Unavailable(
            "dynamodb: delete kept racing; retry".into(),
        ))
    }

    async fn truncate_before(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> StoreResult<u64> {
        let head = StreamHead::readable(self.head(tenant, stream).await?.as_ref(), stream)?;
        if before == 0 {
            return Ok(0);
        }
        // Reads start at the truncation point first (only a trim leaves a gap after the start);
        // a concurrent append conditions its head write on the start version it read.
        self.raise(
            table::stream_pk(tenant.as_str(), stream.as_str()),
            table::HEAD_SK,
            "start_version",
            before.min(head.last_version + 1),
        )
        .await?;
        let vals = HashMap::from([
            (
                ":pk".to_string(),
                s(table::stream_pk(tenant.as_str(), stream.as_str())),
            ),
            (":lo".to_string(), s(table::event_sk(0))),
            (":hi".to_string(), s(table::event_sk(before - 1))),
        ]);
        let items = self
            .query_all(
                None,
                "pk = :pk AND sk BETWEEN :lo AND :hi",
                vals,
                true,
                usize::MAX,
            )
            .await?;
        self.drop_events(tenant, items).await
    }

    async fn trim_tenant_before(
        &self,
        tenant: &TenantId,
        before: u64,
        incarnation: Option<u64>,
    ) -> StoreResult<u64> {
        allsource_core::store::check_fixed_incarnation(incarnation)?;
        // The watermark first: a read below it is answered `archived` as soon as anything of
        // the range may be gone.
        if let Some(c) = self
            .get(table::tenant_pk(tenant.as_str()), table::TENANT_SK)
            .await?
        {
            let mark = before.min(get_n(&c, "next_position")?);
            self.raise(
                table::tenant_pk(tenant.as_str()),
                table::TENANT_SK,
                "trimmed_before",
                mark,
            )
            .await?;
        }
        let vals = HashMap::from([
            (":t".to_string(), s(tenant.as_str())),
            (":p".to_string(), n(before)),
        ]);
        let items = self
            .query_kept(
                Some(table::BY_POSITION),
                "g2p = :t AND g2s < :p",
                vals,
                true,
                usize::MAX,
                |i| event_belongs(tenant, i),
            )
            .await?;
        self.drop_events(tenant, items).await
    }

    /// Deletes every item of the tenant in this table: each stream's items (head, events, event
    /// ids, snapshot), found through the by-tenant index, then the tenant's own items (counters).
    /// The index is eventually consistent, so it is read again until it lists no stream. Callers
    /// remove the tenant's access first (nothing writes while this runs). Idempotent.
    async fn purge_tenant(&self, tenant: &TenantId) -> StoreResult<()> {
        for _ in 0..MAX_ATTEMPTS {
            let vals = HashMap::from([(":t".to_string(), s(tenant.as_str()))]);
            let heads = self
                .query_kept(
                    Some(table::BY_TENANT),
                    "g1p = :t",
                    vals,
                    true,
                    usize::MAX,
                    |i| head_belongs(tenant, i),
                )
                .await?;
            if heads.is_empty() {
                break;
            }
            for head in &heads {
                self.delete_partition(get_s(head, "pk")?).await?;
            }
        }
        self.delete_partition(&table::tenant_pk(tenant.as_str()))
            .await
    }

    async fn stats(&self, tenant: &TenantId) -> StoreResult<TenantStats> {
        let Some(c) = self
            .get(table::tenant_pk(tenant.as_str()), table::TENANT_SK)
            .await?
        else {
            return Ok(TenantStats::default());
        };
        Ok(TenantStats {
            events: get_n(&c, "events")?,
            streams: get_n(&c, "streams")?,
            bytes: get_n(&c, "bytes")?,
            next_position: get_n(&c, "next_position")?,
            snapshot_bytes: 0,
            incarnation: 0,
            trimmed_before: match c.get("trimmed_before") {
                Some(_) => get_n(&c, "trimmed_before")?,
                None => 0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allsource_core::store::EventStore;

    /// What a tenant is shown of a failed request: the HTTP status and the body's `message`
    /// (the server renders both from the error, `StoreError::client_message`).
    struct ApiError {
        status: u16,
        message: String,
    }

    impl From<StoreError> for ApiError {
        fn from(e: StoreError) -> Self {
            Self {
                status: e.http_status(),
                message: e.client_message(),
            }
        }
    }

    async fn store_at(endpoint: String, table: &str) -> DynamoStore {
        let mut cfg = DynamoConfig::new(table, "us-east-1");
        cfg.endpoint = Some(endpoint);
        cfg.credentials = Some(StaticCredentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
        });
        DynamoStore::connect(cfg).await.unwrap()
    }

    /// What a tenant reads when a read fails, exactly as the HTTP API renders it.
    async fn tenant_sees(store: &DynamoStore) -> ApiError {
        let e = store
            .read_stream(
                &TenantId::new("acme").unwrap(),
                &StreamId::new("s").unwrap(),
                ReadFrom::Edge,
                Direction::Forwards,
                10,
            )
            .await
            .unwrap_err();
        ApiError::from(e)
    }

    fn assert_generic(e: &ApiError, leaks: &[&str]) {
        for l in leaks {
            assert!(
                !e.message.contains(l),
                "the tenant sees the database's own text ({l:?}): {}",
                e.message
            );
        }
    }

    /// A real SDK call that fails before any answer (nothing listens on the port): the
    /// connector's error, with the endpoint, stays in the log.
    #[tokio::test]
    async fn an_unreachable_database_is_reported_without_its_details() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = store_at(format!("http://127.0.0.1:{port}"), "allsource").await;
        let e = tenant_sees(&store).await;
        assert_eq!(e.status, 503, "{}", e.message);
        assert_generic(
            &e,
            &[
                "127.0.0.1",
                "DispatchFailure",
                "Connect",
                "dynamodb",
                "os error",
            ],
        );
    }

    /// DynamoDB Local (tests/env, `DYNAMODB_ENDPOINT`): a missing table answers with the
    /// service's text, which names the table; the tenant gets the category only.
    #[tokio::test]
    async fn a_service_error_is_reported_without_its_text() {
        let Ok(endpoint) = std::env::var("DYNAMODB_ENDPOINT") else {
            // CI starts DynamoDB Local (tests/run-tests.sh): there, a missing server fails.
            assert!(
                std::env::var("CI").is_err(),
                "DYNAMODB_ENDPOINT is not set (tests/env/up.sh dynamodb)"
            );
            eprintln!("SKIPPED: DYNAMODB_ENDPOINT is not set (tests/env/up.sh dynamodb)");
            return;
        };
        let table = format!("missing-{}", uuid::Uuid::new_v4().simple());
        let store = store_at(endpoint, &table).await;
        let e = tenant_sees(&store).await;
        assert_eq!(e.status, 503, "{}", e.message);
        assert_generic(
            &e,
            &[&table, "non-existent", "ResourceNotFound", "dynamodb"],
        );
    }
}
