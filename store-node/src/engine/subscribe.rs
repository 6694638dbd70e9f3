//! Subscriptions: catch-up from storage, then live events from the tenant's broadcast, with an
//! exact hand-off. Under the tenant's read lock the subscriber takes a broadcast receiver and
//! notes the committed position `P`; commits send their batch while holding the write lock, so
//! every event below `P` is in storage and every event from `P` on arrives on the receiver. A
//! subscriber that lags behind the broadcast buffer re-does the hand-off from its last event.
//! It must never deliver an event twice or skip one.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use super::tenant::TenantState;
use super::{Inner, Tenant};
use crate::backend::{EventSubscription, StoreResult, SubscriptionTarget};
use crate::error::StoreError;
use crate::model::{RecordedEvent, TenantId};

const PAGE: usize = 512;

/// Where the subscriber is: the last position (tenant) or version (stream) delivered.
struct Cursor {
    target: SubscriptionTarget,
    last: Option<u64>,
}

impl Cursor {
    fn wants(&self, e: &RecordedEvent) -> bool {
        match &self.target {
            SubscriptionTarget::Tenant => self.last.is_none_or(|l| e.position > l),
            SubscriptionTarget::Stream(s) => {
                &e.stream == s && self.last.is_none_or(|l| e.version > l)
            }
        }
    }
    fn advance(&mut self, e: &RecordedEvent) {
        self.last = Some(match self.target {
            SubscriptionTarget::Tenant => e.position,
            SubscriptionTarget::Stream(_) => e.version,
        });
    }
}

/// [`StoreError::Archived`] when the next event the subscriber wants is in the tenant's
/// archived (trimmed) range: delivering from after it would skip events silently.
pub(crate) fn check_start(
    st: &TenantState,
    target: &SubscriptionTarget,
    last: Option<u64>,
) -> StoreResult<()> {
    let next = last.map_or(0, |l| l.saturating_add(1));
    match target {
        SubscriptionTarget::Tenant => st.check_not_archived(next),
        SubscriptionTarget::Stream(s) => {
            let Some(e) = st.streams.get(s) else {
                return Ok(());
            };
            let next = next.max(e.first_version);
            let lo = e
                .positions
                .first_version_at_or_after(st.trimmed_before)
                .unwrap_or(e.next_version);
            if next < lo {
                return Err(StoreError::Archived {
                    first_available: lo,
                    incarnation: st.incarnation,
                    of_stream: true,
                });
            }
            Ok(())
        }
    }
}

/// Starts a subscription task and returns its stream of events.
pub(crate) fn subscribe(
    inner: Arc<Inner>,
    tenant: &TenantId,
    target: SubscriptionTarget,
    after: Option<u64>,
) -> EventSubscription {
    let (tx, rx) = mpsc::channel::<StoreResult<RecordedEvent>>(PAGE);
    let tenant = tenant.clone();
    tokio::spawn(async move {
        let t = inner.tenant_or_create(&tenant);
        let mut cur = Cursor {
            target,
            last: after,
        };
        if let Err(e) = run(&inner, &t, &mut cur, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Runs until the receiver is dropped (Ok) or an error ends the subscription.
async fn run(
    inner: &Inner,
    t: &Tenant,
    cur: &mut Cursor,
    tx: &mpsc::Sender<StoreResult<RecordedEvent>>,
) -> StoreResult<()> {
    loop {
        let (mut live, upto) = {
            let st = t.state.read();
            // A trim (archival) can overtake a subscriber that fell behind.
            check_start(&st, &cur.target, cur.last)?;
            (t.tx.subscribe(), st.committed_position)
        };
        // Catch-up: everything committed before the hand-off point, from storage.
        let mut from = match (&cur.target, cur.last) {
            // `after` comes from the client: u64::MAX must not wrap around to the start.
            (SubscriptionTarget::Tenant, Some(l)) => l.saturating_add(1),
            _ => 0,
        };
        if let SubscriptionTarget::Stream(s) = &cur.target {
            // Start from the first position that can hold the next version of the stream.
            let st = t.state.read();
            if let Some(e) = st.streams.get(s) {
                let next = cur
                    .last
                    .map_or(0, |l| l.saturating_add(1))
                    .max(e.first_version);
                from = e
                    .positions
                    .position_of(next)
                    .unwrap_or(st.committed_position);
            } else {
                from = upto;
            }
        }
        while from < upto {
            check_start(&t.state.read(), &cur.target, cur.last)?;
            let page = inner.read_all_upto(t, from, upto, PAGE)?;
            let Some(last) = page.last() else { break };
            from = last.position + 1;
            for e in page {
                if cur.wants(&e) {
                    cur.advance(&e);
                    if tx.send(Ok(RecordedEvent::clone(&e))).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        // Live: batches committed after the hand-off.
        loop {
            match live.recv().await {
                Ok(batch) => {
                    for e in batch.iter() {
                        if e.position >= upto && cur.wants(e) {
                            cur.advance(e);
                            if tx.send(Ok(RecordedEvent::clone(e))).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(StoreError::Unavailable("the engine is shut down".into()))
                }
            }
            if tx.is_closed() {
                return Ok(());
            }
        }
    }
}
