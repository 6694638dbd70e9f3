//! Subscriptions: catch-up from storage, then live events from the tenant's broadcast, with an
//! exact hand-off. Under the tenant's read lock the subscriber takes a broadcast receiver and
//! notes the committed position `P`; commits send their batch while holding the write lock, so
//! every event below `P` is in storage and every event from `P` on arrives on the receiver. A
//! subscriber that lags behind the broadcast buffer re-does the hand-off from its last event.
//! It must never deliver an event twice or skip one.
//!
//! Memory: what one subscription holds is bounded in bytes, not in events. Every queued event
//! holds permits of a per-subscription semaphore of `maxSubscriptionBufferBytes` (its
//! [`RecordedEvent::size_bytes`], at most the whole budget, so a larger event goes through
//! alone), given back when the consumer takes it. Catch-up pages are read with the same byte
//! budget. When the queue is full the task lets go of its broadcast receiver (a receiver that
//! is not read pins up to the whole broadcast buffer of the tenant's batches) and, once the
//! consumer took something, re-does the hand-off from storage like a lagging subscriber. So a
//! client that never reads holds at most one budget queued, one page and one event in flight.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};

use super::tenant::TenantState;
use super::{Inner, Tenant};
use crate::backend::{EventSubscription, StoreResult, SubscriptionTarget};
use crate::error::StoreError;
use crate::model::{RecordedEvent, TenantId};

/// Most events of one catch-up page (the page also stops at the byte budget).
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

/// One queued item and the bytes of the budget it holds until the consumer takes it.
struct Queued {
    item: StoreResult<RecordedEvent>,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// The producing side of one subscription: its queue and its byte budget.
struct Queue {
    tx: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
    /// The budget in permits (bytes, at most `u32::MAX`).
    cap: u32,
}

/// What pushing an event found.
enum Push {
    Queued,
    /// The budget is spent: nothing was queued.
    Full,
    /// The consumer is gone.
    Closed,
}

impl Queue {
    fn permits(&self, e: &RecordedEvent) -> u32 {
        u32::try_from(e.size_bytes())
            .unwrap_or(u32::MAX)
            .clamp(1, self.cap)
    }

    fn queue(&self, e: &RecordedEvent, permit: OwnedSemaphorePermit) -> Push {
        let q = Queued {
            item: Ok(e.clone()),
            _bytes: Some(permit),
        };
        if self.tx.send(q).is_err() {
            return Push::Closed;
        }
        Push::Queued
    }

    /// Queues `e` if the budget has room for it now.
    fn try_push(&self, e: &RecordedEvent) -> Push {
        if self.tx.is_closed() {
            return Push::Closed;
        }
        match self.budget.clone().try_acquire_many_owned(self.permits(e)) {
            Ok(p) => self.queue(e, p),
            Err(_) => Push::Full,
        }
    }

    /// Queues `e`, waiting until the consumer made room (or went away: its queued items are
    /// dropped with the receiver, which gives their permits back).
    async fn push(&self, e: &RecordedEvent) -> Push {
        match self.try_push(e) {
            Push::Full => {}
            other => return other,
        }
        let n = self.permits(e);
        let acquire = self.budget.clone().acquire_many_owned(n);
        let closed = self.tx.closed();
        tokio::select! {
            p = acquire => match p {
                Ok(p) => self.queue(e, p),
                Err(_) => Push::Closed,
            },
            () = closed => Push::Closed,
        }
    }

    fn fail(&self, e: StoreError) {
        let _ = self.tx.send(Queued {
            item: Err(e),
            _bytes: None,
        });
    }
}

/// Starts a subscription task and returns its stream of events.
pub(crate) fn subscribe(
    inner: Arc<Inner>,
    tenant: &TenantId,
    target: SubscriptionTarget,
    after: Option<u64>,
) -> EventSubscription {
    let (tx, rx) = mpsc::unbounded_channel::<Queued>();
    let cap = u32::try_from(inner.cfg.limits.max_subscription_buffer_bytes)
        .unwrap_or(u32::MAX)
        .max(1);
    let q = Queue {
        tx,
        budget: Arc::new(Semaphore::new(cap as usize)),
        cap,
    };
    let tenant = tenant.clone();
    tokio::spawn(async move {
        let t = inner.tenant_or_create(&tenant);
        let mut cur = Cursor {
            target,
            last: after,
        };
        if let Err(e) = run(&inner, &t, &mut cur, &q).await {
            q.fail(e);
        }
    });
    // The permits of an item go back when the consumer takes it.
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|q| (q.item, rx))
    }))
}

/// Runs until the receiver is dropped (Ok) or an error ends the subscription.
async fn run(inner: &Inner, t: &Tenant, cur: &mut Cursor, q: &Queue) -> StoreResult<()> {
    let budget = inner.cfg.limits.max_subscription_buffer_bytes;
    loop {
        let (live, upto) = {
            let st = t.state.read();
            // A trim (archival) can overtake a subscriber that fell behind.
            check_start(&st, &cur.target, cur.last)?;
            (t.tx.subscribe(), st.committed_position)
        };
        // Let go of the receiver as soon as the queue is full, so that a consumer that does
        // not read never pins the tenant's broadcast buffer; the hand-off is then re-done.
        let mut live = Some(live);
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
            let page = inner.read_all_upto(t, from, upto, PAGE, budget)?;
            let Some(last) = page.last() else { break };
            from = last.position + 1;
            for e in page {
                if cur.wants(&e) {
                    match q.try_push(&e) {
                        Push::Queued => {}
                        Push::Closed => return Ok(()),
                        Push::Full => {
                            live = None;
                            if let Push::Closed = q.push(&e).await {
                                return Ok(());
                            }
                        }
                    }
                    cur.advance(&e);
                }
            }
        }
        let Some(mut live) = live else { continue };
        // Live: batches committed after the hand-off.
        loop {
            match live.recv().await {
                Ok(batch) => {
                    let mut stalled = None;
                    for e in batch.iter() {
                        if e.position >= upto && cur.wants(e) {
                            match q.try_push(e) {
                                Push::Queued => cur.advance(e),
                                Push::Closed => return Ok(()),
                                Push::Full => {
                                    stalled = Some(e.clone());
                                    break;
                                }
                            }
                        }
                    }
                    if let Some(e) = stalled {
                        // Hold neither the batch nor the receiver while the consumer is slow.
                        drop(batch);
                        drop(live);
                        if let Push::Closed = q.push(&e).await {
                            return Ok(());
                        }
                        cur.advance(&e);
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(StoreError::Unavailable("the engine is shut down".into()))
                }
            }
            if q.tx.is_closed() {
                return Ok(());
            }
        }
    }
}
