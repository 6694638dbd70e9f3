//! Rules shared by the cloud backends (PostgreSQL, DynamoDB, Firestore): the expected-version
//! check, the stream-head model, idempotent-retry resolution and the polling subscription.
//!
//! Semantics every cloud backend follows (and the conformance suite checks):
//! - a stream's *current version* is `None` when it never had an event or is deleted;
//! - appending to a deleted stream (with `Any` or `NoStream`) reopens it: versions continue after
//!   the old last version and reads start at the reopened version, so old events stay hidden;
//! - an append whose event ids are *all* stored in the stream returns the original result with
//!   `deduplicated: true` before any expected-version check; a batch mixing stored and new ids is
//!   a `Conflict`;
//! - reading a stream that never existed is `NotFound`, a deleted one `StreamDeleted`.
//!
//! This module must never do I/O except through the `EventStore` it is given.

use std::time::Duration;

use futures::StreamExt;

use allsource_core::error::StoreError;
use allsource_core::model::{
    AppendResult, Direction, ExpectedVersion, ReadFrom, StreamId, TenantId,
};
use allsource_core::store::{EventStore, EventSubscription, StoreResult, SubscriptionTarget};

/// Default interval between two polls of a subscription.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The head record of a stream as every cloud backend stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHead {
    /// Version of the last event ever appended.
    pub last_version: u64,
    /// First version visible to reads (moves on reopen after delete).
    pub start_version: u64,
    /// Tombstone flag.
    pub deleted: bool,
}

impl StreamHead {
    /// The current version for expected-version checks.
    pub fn current(head: Option<&StreamHead>) -> Option<u64> {
        head.filter(|h| !h.deleted).map(|h| h.last_version)
    }

    /// Version the next appended event gets, and the start version after that append.
    pub fn next(head: Option<&StreamHead>) -> (u64, u64) {
        match head {
            None => (0, 0),
            Some(h) if h.deleted => (h.last_version + 1, h.last_version + 1),
            Some(h) => (h.last_version + 1, h.start_version),
        }
    }

    /// Checks a stream read against the head: missing is `NotFound`, deleted `StreamDeleted`.
    pub fn readable(head: Option<&StreamHead>, stream: &StreamId) -> StoreResult<StreamHead> {
        match head {
            None => Err(StoreError::NotFound(format!("stream {stream}"))),
            Some(h) if h.deleted => Err(StoreError::StreamDeleted(stream.to_string())),
            Some(h) => Ok(*h),
        }
    }
}

/// Checks `expected` against the stream's current version.
pub fn check_expected(expected: ExpectedVersion, current: Option<u64>) -> StoreResult<()> {
    let ok = match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => current.is_none(),
        ExpectedVersion::StreamExists => current.is_some(),
        ExpectedVersion::Exact(v) => current == Some(v),
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::Conflict { current })
    }
}

/// The inclusive version range a stream read covers, or None when it is empty.
pub fn read_range(
    head: &StreamHead,
    from: ReadFrom,
    direction: Direction,
    limit: usize,
) -> Option<(u64, u64)> {
    let limit = limit.max(1) as u64;
    let (lo, hi) = (head.start_version, head.last_version);
    if lo > hi {
        return None;
    }
    match direction {
        Direction::Forwards => {
            let start = match from {
                ReadFrom::Edge => lo,
                ReadFrom::Version(v) => v.max(lo),
            };
            (start <= hi).then(|| (start, hi.min(start.saturating_add(limit - 1))))
        }
        Direction::Backwards => {
            let end = match from {
                ReadFrom::Edge => hi,
                ReadFrom::Version(v) => v.min(hi),
            };
            (end >= lo).then(|| (lo.max(end.saturating_sub(limit - 1)), end))
        }
    }
}

pub use allsource_core::archived::{check_page_not_archived, check_tenant_not_archived};

/// Builds the result of an idempotent retry from the stored (version, position) pairs of the
/// batch's event ids; `found` must be non-empty.
pub fn dedup_result(found: &[(u64, u64)]) -> AppendResult {
    let first_version = found.iter().map(|f| f.0).min().unwrap_or(0);
    let last_version = found.iter().map(|f| f.0).max().unwrap_or(0);
    let first_position = found.iter().map(|f| f.1).min().unwrap_or(0);
    let last_position = found.iter().map(|f| f.1).max().unwrap_or(0);
    AppendResult {
        first_version,
        last_version,
        first_position,
        last_position,
        deduplicated: true,
    }
}

/// Resolves the idempotency check: Some(result) when every id of the batch is stored, an error
/// when only some are, None when none are.
pub fn resolve_dedup(
    batch_len: usize,
    found: &[(u64, u64)],
    current: Option<u64>,
) -> StoreResult<Option<AppendResult>> {
    if found.is_empty() {
        Ok(None)
    } else if found.len() == batch_len {
        Ok(Some(dedup_result(found)))
    } else {
        Err(StoreError::Conflict { current })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A subscription implemented by polling `read_all` (tenant) or `read_stream` (stream) after the
/// last delivered position/version every `interval`. Because every cloud backend assigns
/// positions in commit order, polling never skips an event. A stream that does not exist yet is
/// waited for; a deleted stream ends the subscription with `StreamDeleted`.
pub fn poll_subscription<S: EventStore + Clone>(
    store: S,
    tenant: TenantId,
    target: SubscriptionTarget,
    after: Option<u64>,
    interval: Duration,
) -> EventSubscription {
    const PAGE: usize = 500;
    let next = after.map_or(0, |a| a.saturating_add(1));
    let state = (store, tenant, target, next, Vec::new().into_iter(), false);
    futures::stream::unfold(
        state,
        move |(store, tenant, target, mut next, mut buf, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(ev) = buf.next() {
                    return Some((Ok(ev), (store, tenant, target, next, buf, false)));
                }
                let page = match &target {
                    SubscriptionTarget::Tenant => store.read_all(&tenant, next, PAGE).await,
                    SubscriptionTarget::Stream(s) => {
                        store
                            .read_stream(
                                &tenant,
                                s,
                                ReadFrom::Version(next),
                                Direction::Forwards,
                                PAGE,
                            )
                            .await
                    }
                };
                let page = match page {
                    Ok(p) => p,
                    Err(StoreError::NotFound(_)) => Vec::new(),
                    Err(e) => return Some((Err(e), (store, tenant, target, next, buf, true))),
                };
                if page.is_empty() {
                    tokio::time::sleep(interval).await;
                    continue;
                }
                let key = |e: &allsource_core::model::RecordedEvent| match target {
                    SubscriptionTarget::Tenant => e.position,
                    SubscriptionTarget::Stream(_) => e.version,
                };
                if let Some(last) = page.last() {
                    next = key(last) + 1;
                }
                buf = page.into_iter();
            }
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_versions() {
        assert!(check_expected(ExpectedVersion::Any, None).is_ok());
        assert!(check_expected(ExpectedVersion::NoStream, None).is_ok());
        assert_eq!(
            check_expected(ExpectedVersion::NoStream, Some(3)),
            Err(StoreError::Conflict { current: Some(3) })
        );
        assert!(check_expected(ExpectedVersion::StreamExists, None).is_err());
        assert!(check_expected(ExpectedVersion::Exact(3), Some(3)).is_ok());
        assert!(check_expected(ExpectedVersion::Exact(2), Some(3)).is_err());
    }

    #[test]
    fn ranges() {
        let h = StreamHead {
            last_version: 9,
            start_version: 2,
            deleted: false,
        };
        assert_eq!(
            read_range(&h, ReadFrom::Edge, Direction::Forwards, 3),
            Some((2, 4))
        );
        assert_eq!(
            read_range(&h, ReadFrom::Version(8), Direction::Forwards, 5),
            Some((8, 9))
        );
        assert_eq!(
            read_range(&h, ReadFrom::Version(10), Direction::Forwards, 5),
            None
        );
        assert_eq!(
            read_range(&h, ReadFrom::Edge, Direction::Backwards, 3),
            Some((7, 9))
        );
        assert_eq!(
            read_range(&h, ReadFrom::Version(3), Direction::Backwards, 5),
            Some((2, 3))
        );
        assert_eq!(
            read_range(&h, ReadFrom::Version(1), Direction::Backwards, 5),
            None
        );
    }

    #[test]
    fn reopen_after_delete() {
        let h = StreamHead {
            last_version: 4,
            start_version: 0,
            deleted: true,
        };
        assert_eq!(StreamHead::current(Some(&h)), None);
        assert_eq!(StreamHead::next(Some(&h)), (5, 5));
        assert_eq!(StreamHead::next(None), (0, 0));
    }
}
