//! `GET /v1/subscribe`: server-sent events, catch-up then live, from the backend's
//! subscription. Each SSE event is `event: event`, `id: <position or version>`, `data: <event
//! JSON>`; a store error ends the stream with one `event: error` carrying `{code, message}`.
//! A reconnecting client resumes with `Last-Event-ID`. Subscriptions are capped per tenant
//! (`maxSubscriptionsPerTenant`, 429) and per node (`--max-subscriptions`, 503), and end when the
//! node shuts down, so they never hold a graceful shutdown open.
//!
//! Buffering: the backend's subscription queues at most `maxSubscriptionBufferBytes` of events
//! for a client that does not read (see the engine's subscribe module); this handler turns one
//! event at a time into its SSE frame, and hyper polls for the next frame only once its write
//! buffer has room (HTTP/1: a bounded buffer; HTTP/2: one frame per stream beyond the flow
//! control window). A client that stops reading therefore costs about one budget plus a few
//! events' frames, and the socket's kernel buffers, whatever is appended meanwhile.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;

use super::auth::Authed;
use super::dto::{EventOut, SubscribeQuery};
use super::error::ApiError;
use super::AppState;
use crate::backend::SubscriptionTarget;
use crate::model::{StreamId, TenantId};

/// Open subscriptions per tenant, so that one tenant cannot take every node-wide slot.
#[derive(Clone, Default)]
pub(super) struct TenantSubscriptions(Arc<parking_lot::Mutex<HashMap<TenantId, usize>>>);

impl TenantSubscriptions {
    /// Takes one of the tenant's `cap` slots, or None when all are taken.
    fn try_acquire(&self, tenant: &TenantId, cap: usize) -> Option<TenantSlot> {
        let mut open = self.0.lock();
        let n = open.entry(tenant.clone()).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(TenantSlot {
            counts: self.clone(),
            tenant: tenant.clone(),
        })
    }
}

/// One tenant's subscription slot; given back on drop.
struct TenantSlot {
    counts: TenantSubscriptions,
    tenant: TenantId,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut open = self.counts.0.lock();
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

/// Keeps the subscription gauge and slots for as long as the response body lives.
struct Slot {
    _tenant: TenantSlot,
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// `GET /v1/subscribe?stream=&after=&encoding=`
pub async fn subscribe(
    State(st): State<AppState>,
    Authed(t): Authed,
    headers: HeaderMap,
    query: Result<Query<SubscribeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let store = st.store()?;
    let q = query?.0;
    let target = match q.stream {
        Some(s) => SubscriptionTarget::Stream(StreamId::with_limits(s, &store.limits())?),
        None => SubscriptionTarget::Tenant,
    };
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a number"))?,
        ),
        None => None,
    };
    let after = q.after.or(last_event_id);
    let cap = store.limits().max_subscriptions_per_tenant;
    let tenant_slot = st
        .inner
        .tenant_subscriptions
        .try_acquire(&t.id, cap)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_subscriptions",
                format!("this tenant already holds its {cap} open subscriptions"),
            )
        })?;
    let permit = st
        .inner
        .subscriptions
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::unavailable("too_many_subscriptions", "subscription limit reached")
        })?;
    let by_stream = matches!(target, SubscriptionTarget::Stream(_));
    let sub = store.subscribe(&t.id, target, after).await?;
    let gauge = st.metrics().subscriptions.clone();
    gauge.inc();
    let slot = Slot {
        _tenant: tenant_slot,
        _permit: permit,
        gauge,
    };
    let enc = q.encoding.unwrap_or_default();
    let events = sub
        .take_until(st.shutdown().clone().cancelled_owned())
        .scan(false, |failed, item| {
            let out = if *failed {
                None
            } else {
                *failed = item.is_err();
                Some(item)
            };
            futures::future::ready(out)
        })
        .map(move |item| {
            let _keep = &slot;
            let ev = match item {
                Ok(e) => {
                    let id = if by_stream { e.version } else { e.position };
                    let data = serde_json::to_string(&EventOut::new(e, enc)).unwrap_or_default();
                    Event::default()
                        .event("event")
                        .id(id.to_string())
                        .data(data)
                }
                Err(e) => {
                    let api = ApiError::from(e);
                    Event::default()
                        .event("error")
                        .data(json!({"code": api.code, "message": api.message}).to_string())
                }
            };
            Ok::<_, Infallible>(ev)
        });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(st.config().sse_keepalive))
        .into_response())
}
