//! The `/v1/` handlers: each one authenticates (via [`Authed`]), validates ids and limits,
//! applies quotas, calls the store and renders the result. Writes run in their own task so that
//! a client that disconnects or times out can never cancel a write half way.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Authed;
use super::dto::{
    decode_payload, resolve_expected, AppendOut, AppendRequest, BeforeIn, DroppedOut, Encoding,
    EventOut, EventsPage, ListStreamsQuery, ReadAllQuery, ReadStreamQuery, SnapshotIn, SnapshotOut,
    StatsOut, StreamOut, StreamsPage, TrimIn, DEFAULT_LIMIT, EXPECTED_VERSION_HEADER,
};
use super::error::ApiError;
use super::AppState;
use crate::backend::EventStore;
use crate::error::StoreError;
use crate::model::{Direction, Limits, NewEvent, ReadFrom, Snapshot, StreamId};
use crate::tenant::quota::{check_new_stream, check_storage};
use crate::tenant::TenantInfo;

type ApiResult<T> = Result<T, ApiError>;

/// Runs a store write in its own task: dropping the request future does not cancel it.
async fn detached<T: Send + 'static>(
    f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> ApiResult<T> {
    tokio::spawn(f)
        .await
        .map_err(|e| ApiError::from(StoreError::Internal(format!("write task failed: {e}"))))?
        .map_err(ApiError::from)
}

fn stream_id(raw: String, limits: &Limits) -> ApiResult<StreamId> {
    StreamId::with_limits(raw, limits).map_err(ApiError::from)
}

fn page_limit(limit: Option<usize>, limits: &Limits) -> ApiResult<usize> {
    let l = limit.unwrap_or(DEFAULT_LIMIT.min(limits.max_read_limit));
    limits.validate_read_limit(l)?;
    Ok(l)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Approximate stored size of a batch, the same formula as `RecordedEvent::size_bytes`.
fn batch_bytes(stream: &StreamId, events: &[NewEvent]) -> u64 {
    events
        .iter()
        .map(|e| {
            let meta: usize = e.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
            (e.payload.len() + e.event_type.len() + stream.as_str().len() + meta + 48) as u64
        })
        .sum()
}

fn quota_error(st: &AppState, t: &TenantInfo, quota: &str, e: StoreError) -> ApiError {
    let label = st.metrics().tenant_label(&t.id);
    st.metrics()
        .quota_rejections
        .with_label_values(&[&label, quota])
        .inc();
    ApiError::from(e)
}

/// Rate, storage and stream-count quotas for an append. The checks read usage just before the
/// write, so concurrent appends can overshoot a capacity quota by at most one batch each.
async fn enforce_append_quotas(
    st: &AppState,
    store: &Arc<dyn EventStore>,
    t: &TenantInfo,
    stream: &StreamId,
    events: &[NewEvent],
) -> ApiResult<()> {
    let q = t.quotas;
    if let Some(rate) = q.events_per_second {
        if let Err(secs) = st
            .limiter()
            .check(&t.id, rate, events.len() as u64, Instant::now())
        {
            let e = StoreError::QuotaExceeded {
                message: format!("append rate quota of {rate} events per second reached"),
                retry_after_secs: secs,
            };
            return Err(quota_error(st, t, "events_per_second", e));
        }
    }
    if q.storage_bytes.is_none() && q.max_streams.is_none() {
        return Ok(());
    }
    let stats = store.stats(&t.id).await?;
    check_storage(&q, &stats, batch_bytes(stream, events))
        .map_err(|e| quota_error(st, t, "storage_bytes", e))?;
    if let Some(max) = q.max_streams {
        if stats.streams >= max {
            let exists = match store
                .read_stream(&t.id, stream, ReadFrom::Edge, Direction::Backwards, 1)
                .await
            {
                Ok(_) => true,
                Err(StoreError::NotFound(_) | StoreError::StreamDeleted(_)) => false,
                Err(e) => return Err(e.into()),
            };
            if !exists {
                check_new_stream(&q, stats.streams)
                    .map_err(|e| quota_error(st, t, "max_streams", e))?;
            }
        }
    }
    Ok(())
}

/// `POST /v1/streams/{stream}/events`
pub async fn append(
    State(st): State<AppState>,
    Authed(t): Authed,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Json<AppendRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<AppendOut>)> {
    let store = st.store()?;
    let limits = store.limits();
    let stream = stream_id(path?.0, &limits)?;
    let header = match headers.get(EXPECTED_VERSION_HEADER) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Expected-Version header is not text"))?,
        ),
        None => None,
    };
    let (body_expected, events) = body?.0.into_events()?;
    let expected = resolve_expected(header, body_expected.as_ref())?;
    limits.validate_batch(&events)?;
    enforce_append_quotas(&st, &store, &t, &stream, &events).await?;
    let n = events.len() as u64;
    let bytes = batch_bytes(&stream, &events);
    st.admit_write(bytes)?;
    let started = Instant::now();
    let (tenant, s2, store2) = (t.id.clone(), stream.clone(), store.clone());
    let res = detached(async move { store2.append(&tenant, &s2, expected, events).await }).await?;
    let m = st.metrics();
    m.append_latency.observe(started.elapsed().as_secs_f64());
    let status = if res.deduplicated {
        StatusCode::OK
    } else {
        let label = m.tenant_label(&t.id);
        m.appends.with_label_values(&[&label]).inc();
        m.events.with_label_values(&[&label]).inc_by(n);
        m.bytes.with_label_values(&[&label]).inc_by(bytes);
        StatusCode::CREATED
    };
    Ok((status, Json(res.into())))
}

/// `GET /v1/streams/{stream}/events`
pub async fn read_stream(
    State(st): State<AppState>,
    Authed(t): Authed,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ReadStreamQuery>, QueryRejection>,
) -> ApiResult<Json<EventsPage>> {
    let store = st.store()?;
    let limits = store.limits();
    let stream = stream_id(path?.0, &limits)?;
    let q = query?.0;
    let limit = page_limit(q.limit, &limits)?;
    let direction = q.direction.unwrap_or_default();
    let from = q.from.map_or(ReadFrom::Edge, ReadFrom::Version);
    let mut events = store
        .read_stream(&t.id, &stream, from, direction, limit)
        .await?;
    // Every backend's page is cut to the byte budget (the engine already stops reading there).
    limits.read_budget().truncate(&mut events);
    let next = match (direction, events.last()) {
        (Direction::Forwards, Some(l)) => Some(l.version.saturating_add(1)),
        (Direction::Forwards, None) => q.from,
        (Direction::Backwards, Some(l)) => l.version.checked_sub(1),
        (Direction::Backwards, None) => None,
    };
    count_read(&st, &t, events.len());
    let enc = q.encoding.unwrap_or_default();
    Ok(Json(EventsPage {
        events: events.into_iter().map(|e| EventOut::new(e, enc)).collect(),
        next,
    }))
}

fn count_read(st: &AppState, t: &TenantInfo, n: usize) {
    let m = st.metrics();
    m.events_read
        .with_label_values(&[&m.tenant_label(&t.id)])
        .inc_by(n as u64);
}

/// `GET /v1/events`
pub async fn read_all(
    State(st): State<AppState>,
    Authed(t): Authed,
    query: Result<Query<ReadAllQuery>, QueryRejection>,
) -> ApiResult<Json<EventsPage>> {
    let store = st.store()?;
    let q = query?.0;
    let limits = store.limits();
    let limit = page_limit(q.limit, &limits)?;
    let from = q.from.unwrap_or(0);
    let mut events = store.read_all(&t.id, from, limit).await?;
    limits.read_budget().truncate(&mut events);
    let next = Some(events.last().map_or(from, |l| l.position.saturating_add(1)));
    count_read(&st, &t, events.len());
    let enc = q.encoding.unwrap_or_default();
    Ok(Json(EventsPage {
        events: events.into_iter().map(|e| EventOut::new(e, enc)).collect(),
        next,
    }))
}

/// `PUT /v1/streams/{stream}/snapshot`
pub async fn save_snapshot(
    State(st): State<AppState>,
    Authed(t): Authed,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<SnapshotIn>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let store = st.store()?;
    let stream = stream_id(path?.0, &store.limits())?;
    let b = body?.0;
    let payload = decode_payload(b.data, b.data_base64, "snapshot")?;
    let meta: usize = b.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    st.admit_write((payload.len() + meta + stream.as_str().len()) as u64)?;
    let snap = Snapshot {
        stream,
        version: b.version,
        payload,
        metadata: b.metadata,
        timestamp_ms: now_ms(),
    };
    store.limits().validate_snapshot(&snap)?;
    if t.quotas.storage_bytes.is_some() {
        // Snapshots count in the storage quota like events (a replaced snapshot is freed only
        // once the new one is stored, so the check counts both).
        let stats = store.stats(&t.id).await?;
        check_storage(&t.quotas, &stats, snap.size_bytes())
            .map_err(|e| quota_error(&st, &t, "storage_bytes", e))?;
    }
    let tenant = t.id.clone();
    detached(async move { store.save_snapshot(&tenant, snap).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of the snapshot read.
#[derive(Debug, serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EncodingQuery {
    /// Payload encoding.
    pub encoding: Option<Encoding>,
}

/// `GET /v1/streams/{stream}/snapshot`
pub async fn load_snapshot(
    State(st): State<AppState>,
    Authed(t): Authed,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<EncodingQuery>, QueryRejection>,
) -> ApiResult<Json<SnapshotOut>> {
    let store = st.store()?;
    let stream = stream_id(path?.0, &store.limits())?;
    let enc = query?.0.encoding.unwrap_or_default();
    match store.load_snapshot(&t.id, &stream).await? {
        Some(s) => Ok(Json(SnapshotOut::new(s, enc))),
        None => Err(StoreError::NotFound(format!("snapshot of stream {stream}")).into()),
    }
}

/// `GET /v1/streams`
pub async fn list_streams(
    State(st): State<AppState>,
    Authed(t): Authed,
    query: Result<Query<ListStreamsQuery>, QueryRejection>,
) -> ApiResult<Json<StreamsPage>> {
    let store = st.store()?;
    let limits = store.limits();
    let q = query?.0;
    let limit = page_limit(q.limit, &limits)?;
    let after = q.after.map(|a| stream_id(a, &limits)).transpose()?;
    let streams = store.list_streams(&t.id, after.as_ref(), limit).await?;
    let next = (streams.len() == limit)
        .then(|| streams.last().map(|s| s.stream.to_string()))
        .flatten();
    Ok(Json(StreamsPage {
        streams: streams.into_iter().map(StreamOut::from).collect(),
        next,
    }))
}

/// `GET /v1/streams/count`
pub async fn count_streams(
    State(st): State<AppState>,
    Authed(t): Authed,
) -> ApiResult<Json<Value>> {
    let store = st.store()?;
    Ok(Json(json!({"count": store.count_streams(&t.id).await?})))
}

async fn delete_named(st: AppState, t: &TenantInfo, raw: String) -> ApiResult<StatusCode> {
    let store = st.store()?;
    let stream = stream_id(raw, &store.limits())?;
    let tenant = t.id.clone();
    detached(async move { store.delete_stream(&tenant, &stream).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/streams/{stream}`
pub async fn delete_stream(
    State(st): State<AppState>,
    Authed(t): Authed,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    delete_named(st, &t, path?.0).await
}

/// `DELETE /v1/streams/count`: the stream literally named `count` (its path collides with the
/// count endpoint).
pub async fn delete_stream_named_count(
    State(st): State<AppState>,
    Authed(t): Authed,
) -> ApiResult<StatusCode> {
    delete_named(st, &t, "count".to_string()).await
}

/// `POST /v1/streams/{stream}/truncate` with `{"before": version}`
pub async fn truncate(
    State(st): State<AppState>,
    Authed(t): Authed,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<BeforeIn>, JsonRejection>,
) -> ApiResult<Json<DroppedOut>> {
    let store = st.store()?;
    let stream = stream_id(path?.0, &store.limits())?;
    let before = body?.0.before;
    let tenant = t.id.clone();
    let dropped =
        detached(async move { store.truncate_before(&tenant, &stream, before).await }).await?;
    Ok(Json(DroppedOut { dropped }))
}

/// `POST /v1/trim` with `{"before": position, "incarnation": n}`: drops the tenant's events
/// before a position (after archival), only while the tenant is at incarnation `n` when given.
pub async fn trim(
    State(st): State<AppState>,
    Authed(t): Authed,
    body: Result<Json<TrimIn>, JsonRejection>,
) -> ApiResult<Json<DroppedOut>> {
    let store = st.store()?;
    let TrimIn {
        before,
        incarnation,
    } = body?.0;
    let tenant = t.id.clone();
    let dropped =
        detached(async move { store.trim_tenant_before(&tenant, before, incarnation).await })
            .await?;
    Ok(Json(DroppedOut { dropped }))
}

/// `GET /v1/stats`
pub async fn stats(State(st): State<AppState>, Authed(t): Authed) -> ApiResult<Json<StatsOut>> {
    let store = st.store()?;
    let s = store.stats(&t.id).await?;
    Ok(Json(StatsOut::new(t.id.to_string(), s, t.quotas)))
}

/// `GET /v1/info`: the authenticated tenant, the backend's capabilities and limits, this node,
/// and whether it takes writes now (`writes.accepted`, else `reason` and `message`).
pub async fn info(State(st): State<AppState>, Authed(t): Authed) -> ApiResult<Json<Value>> {
    let store = st.store()?;
    let writes = match st.write_refusal() {
        None => json!({"accepted": true}),
        Some((reason, message)) => json!({"accepted": false, "reason": reason, "message": message}),
    };
    Ok(Json(json!({
        "tenant": t.id,
        "node": st.config().node_name,
        "version": env!("CARGO_PKG_VERSION"),
        "capabilities": store.capabilities(),
        "limits": store.limits(),
        "writes": writes,
        "tls": st.config().tls.as_ref().map(|c| c.status()),
    })))
}
