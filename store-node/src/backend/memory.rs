//! An in-memory [`EventStore`]: a small, obviously-correct implementation of the whole trait,
//! used by fast unit tests of the HTTP layer and as the reference the conformance suite compares
//! the real backends against. It follows the semantics of `backend::cloud` (deleted streams have
//! no current version and reopen on append, idempotent retries are checked before the expected
//! version). It must never be the only test of a feature and never persists anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;
use uuid::Uuid;

use crate::backend::{EventStore, EventSubscription, StoreResult, SubscriptionTarget};
use crate::error::StoreError;
use crate::model::{
    AppendResult, Capabilities, Direction, ExpectedVersion, Limits, NewEvent, ReadFrom,
    RecordedEvent, Snapshot, StreamId, StreamInfo, TenantId, TenantStats,
};

/// One stream of one tenant.
#[derive(Debug, Default)]
struct StreamData {
    /// version -> position of the events still stored.
    versions: BTreeMap<u64, u64>,
    /// Version of the last event ever appended (None: never appended).
    last_version: Option<u64>,
    /// First version visible to reads (moves when a deleted stream is reopened).
    start_version: u64,
    deleted: bool,
    /// event id -> (version, position), for idempotent retries.
    ids: HashMap<Uuid, (u64, u64)>,
}

impl StreamData {
    fn current(&self) -> Option<u64> {
        if self.deleted {
            None
        } else {
            self.last_version
        }
    }
}

/// Everything one tenant owns.
#[derive(Debug, Default)]
struct TenantData {
    streams: BTreeMap<StreamId, StreamData>,
    log: BTreeMap<u64, RecordedEvent>,
    next_position: u64,
    bytes: u64,
    snapshots: HashMap<StreamId, Snapshot>,
    /// Positions below were trimmed (archived).
    trimmed_before: u64,
}

#[derive(Debug)]
struct Inner {
    tenants: HashMap<TenantId, TenantData>,
    /// Wakes subscriptions of a tenant when it gets new events (value: next position).
    notify: HashMap<TenantId, watch::Sender<u64>>,
}

/// The in-memory store. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    limits: Limits,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl MemoryStore {
    /// An empty store enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                tenants: HashMap::new(),
                notify: HashMap::new(),
            })),
            limits,
        }
    }

    fn watcher(&self, tenant: &TenantId) -> watch::Receiver<u64> {
        let mut inner = self.inner.lock();
        inner
            .notify
            .entry(tenant.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn dedup(found: &[(u64, u64)]) -> AppendResult {
    AppendResult {
        first_version: found.iter().map(|f| f.0).min().unwrap_or(0),
        last_version: found.iter().map(|f| f.0).max().unwrap_or(0),
        first_position: found.iter().map(|f| f.1).min().unwrap_or(0),
        last_position: found.iter().map(|f| f.1).max().unwrap_or(0),
        deduplicated: true,
    }
}

#[async_trait::async_trait]
impl EventStore for MemoryStore {
    fn capabilities(&self) -> Capabilities {
        crate::model::BackendKind::Memory.capabilities()
    }

    fn limits(&self) -> Limits {
        self.limits.clone()
    }

    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> StoreResult<AppendResult> {
        self.limits.validate_batch(&events)?;
        let mut inner = self.inner.lock();
        let t = inner.tenants.entry(tenant.clone()).or_default();
        let s = t.streams.entry(stream.clone()).or_default();
        let found: Vec<(u64, u64)> = events
            .iter()
            .filter_map(|e| s.ids.get(&e.event_id).copied())
            .collect();
        if !found.is_empty() {
            return if found.len() == events.len() {
                Ok(dedup(&found))
            } else {
                Err(StoreError::Conflict {
                    current: s.current(),
                })
            };
        }
        let current = s.current();
        let ok = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::StreamExists => current.is_some(),
            ExpectedVersion::Exact(v) => current == Some(v),
        };
        if !ok {
            if s.last_version.is_none() {
                t.streams.remove(stream);
            }
            return Err(StoreError::Conflict { current });
        }
        let first_version = s.last_version.map_or(0, |v| v + 1);
        if s.deleted {
            s.deleted = false;
            s.start_version = first_version;
        }
        let first_position = t.next_position;
        let timestamp_ms = now_ms();
        let n = events.len() as u64;
        let mut added_bytes = 0;
        for (i, e) in events.into_iter().enumerate() {
            let version = first_version + i as u64;
            let position = first_position + i as u64;
            let rec = RecordedEvent {
                tenant: tenant.clone(),
                stream: stream.clone(),
                version,
                position,
                event_id: e.event_id,
                event_type: e.event_type,
                payload: e.payload,
                metadata: e.metadata,
                timestamp_ms,
            };
            added_bytes += rec.size_bytes();
            s.ids.insert(rec.event_id, (version, position));
            s.versions.insert(version, position);
            t.log.insert(position, rec);
        }
        s.last_version = Some(first_version + n - 1);
        t.next_position += n;
        t.bytes += added_bytes;
        let next = t.next_position;
        if let Some(tx) = inner.notify.get(tenant) {
            tx.send_replace(next);
        }
        Ok(AppendResult {
            first_version,
            last_version: first_version + n - 1,
            first_position,
            last_position: first_position + n - 1,
            deduplicated: false,
        })
    }

    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        from: ReadFrom,
        direction: Direction,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        self.limits.validate_read_limit(limit)?;
        let inner = self.inner.lock();
        let t = inner
            .tenants
            .get(tenant)
            .ok_or_else(|| StoreError::NotFound(format!("stream {stream}")))?;
        let s = t
            .streams
            .get(stream)
            .filter(|s| s.last_version.is_some())
            .ok_or_else(|| StoreError::NotFound(format!("stream {stream}")))?;
        if s.deleted {
            return Err(StoreError::StreamDeleted(stream.to_string()));
        }
        let lo = s.start_version;
        let last = s.last_version.unwrap_or(0);
        // Versions in [lo, first_kept) were archived and trimmed.
        let first_kept = s.versions.range(lo..).next().map_or(last + 1, |(v, _)| *v);
        let start = match (direction, from) {
            (Direction::Forwards, ReadFrom::Edge) => lo,
            (Direction::Forwards, ReadFrom::Version(v)) => v.max(lo),
            (Direction::Backwards, ReadFrom::Edge) => last,
            (Direction::Backwards, ReadFrom::Version(v)) => v.min(last),
        };
        if first_kept > lo && (lo..first_kept).contains(&start) {
            return Err(StoreError::Archived {
                first_available: first_kept,
                incarnation: 0,
                of_stream: true,
            });
        }
        let range: Box<dyn Iterator<Item = (&u64, &u64)>> = match (direction, from) {
            (Direction::Forwards, ReadFrom::Edge) => Box::new(s.versions.range(lo..)),
            (Direction::Forwards, ReadFrom::Version(v)) => Box::new(s.versions.range(v.max(lo)..)),
            (Direction::Backwards, ReadFrom::Edge) => Box::new(s.versions.range(lo..).rev()),
            (Direction::Backwards, ReadFrom::Version(v)) if v < lo => Box::new(std::iter::empty()),
            (Direction::Backwards, ReadFrom::Version(v)) => {
                Box::new(s.versions.range(lo..=v).rev())
            }
        };
        Ok(range
            .take(limit)
            .filter_map(|(_, pos)| t.log.get(pos).cloned())
            .collect())
    }

    async fn read_all(
        &self,
        tenant: &TenantId,
        from_position: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        self.limits.validate_read_limit(limit)?;
        let inner = self.inner.lock();
        if let Some(t) = inner.tenants.get(tenant) {
            crate::backend::archived::check_tenant_not_archived(from_position, t.trimmed_before)?;
        }
        Ok(inner.tenants.get(tenant).map_or_else(Vec::new, |t| {
            t.log
                .range(from_position..)
                .take(limit)
                .map(|(_, e)| e.clone())
                .collect()
        }))
    }

    async fn subscribe(
        &self,
        tenant: &TenantId,
        target: SubscriptionTarget,
        after: Option<u64>,
    ) -> StoreResult<EventSubscription> {
        const PAGE: usize = 500;
        let rx = self.watcher(tenant);
        let state = (
            self.clone(),
            tenant.clone(),
            target,
            after.map_or(0, |a| a.saturating_add(1)),
            Vec::new().into_iter(),
            rx,
            false,
        );
        Ok(futures::stream::unfold(
            state,
            |(store, tenant, target, mut next, mut buf, mut rx, done)| async move {
                if done {
                    return None;
                }
                loop {
                    if let Some(ev) = buf.next() {
                        return Some((Ok(ev), (store, tenant, target, next, buf, rx, false)));
                    }
                    // Mark the current value seen before reading, so an append that lands
                    // after the read wakes us up.
                    rx.borrow_and_update();
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
                        Err(e) => {
                            return Some((Err(e), (store, tenant, target, next, buf, rx, true)))
                        }
                    };
                    if let Some(last) = page.last() {
                        next = match target {
                            SubscriptionTarget::Tenant => last.position + 1,
                            SubscriptionTarget::Stream(_) => last.version + 1,
                        };
                        buf = page.into_iter();
                        continue;
                    }
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            },
        )
        .boxed())
    }

    async fn save_snapshot(&self, tenant: &TenantId, snapshot: Snapshot) -> StoreResult<()> {
        self.limits.validate_snapshot(&snapshot)?;
        if snapshot.payload.len() > self.limits.max_event_bytes {
            return Err(StoreError::TooLarge(format!(
                "snapshot is {} bytes; the limit is {}",
                snapshot.payload.len(),
                self.limits.max_event_bytes
            )));
        }
        let mut inner = self.inner.lock();
        let t = inner.tenants.entry(tenant.clone()).or_default();
        t.snapshots.insert(snapshot.stream.clone(), snapshot);
        Ok(())
    }

    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> StoreResult<Option<Snapshot>> {
        let inner = self.inner.lock();
        Ok(inner
            .tenants
            .get(tenant)
            .and_then(|t| t.snapshots.get(stream).cloned()))
    }

    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> StoreResult<Vec<StreamInfo>> {
        self.limits.validate_read_limit(limit)?;
        let inner = self.inner.lock();
        let Some(t) = inner.tenants.get(tenant) else {
            return Ok(Vec::new());
        };
        let iter: Box<dyn Iterator<Item = (&StreamId, &StreamData)>> =
            match after {
                Some(a) => Box::new(t.streams.range::<StreamId, _>((
                    std::ops::Bound::Excluded(a),
                    std::ops::Bound::Unbounded,
                ))),
                None => Box::new(t.streams.iter()),
            };
        Ok(iter
            .filter_map(|(id, s)| {
                s.last_version.map(|v| StreamInfo {
                    stream: id.clone(),
                    last_version: v,
                    deleted: s.deleted,
                })
            })
            .take(limit)
            .collect())
    }

    async fn count_streams(&self, tenant: &TenantId) -> StoreResult<u64> {
        let inner = self.inner.lock();
        Ok(inner.tenants.get(tenant).map_or(0, |t| {
            t.streams.values().filter(|s| s.current().is_some()).count() as u64
        }))
    }

    async fn delete_stream(&self, tenant: &TenantId, stream: &StreamId) -> StoreResult<()> {
        let mut inner = self.inner.lock();
        let s = inner
            .tenants
            .get_mut(tenant)
            .and_then(|t| t.streams.get_mut(stream))
            .filter(|s| s.last_version.is_some())
            .ok_or_else(|| StoreError::NotFound(format!("stream {stream}")))?;
        if s.deleted {
            return Err(StoreError::StreamDeleted(stream.to_string()));
        }
        s.deleted = true;
        Ok(())
    }

    async fn truncate_before(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> StoreResult<u64> {
        let mut inner = self.inner.lock();
        let t = inner
            .tenants
            .get_mut(tenant)
            .ok_or_else(|| StoreError::NotFound(format!("stream {stream}")))?;
        let s = t
            .streams
            .get_mut(stream)
            .filter(|s| s.last_version.is_some())
            .ok_or_else(|| StoreError::NotFound(format!("stream {stream}")))?;
        if s.deleted {
            return Err(StoreError::StreamDeleted(stream.to_string()));
        }
        let keep = s.versions.split_off(&before);
        let dropped = std::mem::replace(&mut s.versions, keep);
        // Reads start at the truncation point (only a trim leaves a gap after the start).
        let next = s.last_version.map_or(0, |l| l + 1);
        s.start_version = s.start_version.max(before.min(next));
        for pos in dropped.values() {
            if let Some(e) = t.log.remove(pos) {
                t.bytes = t.bytes.saturating_sub(e.size_bytes());
            }
        }
        Ok(dropped.len() as u64)
    }

    async fn trim_tenant_before(
        &self,
        tenant: &TenantId,
        before: u64,
        incarnation: Option<u64>,
    ) -> StoreResult<u64> {
        crate::backend::check_fixed_incarnation(incarnation)?;
        let mut inner = self.inner.lock();
        let Some(t) = inner.tenants.get_mut(tenant) else {
            return Ok(0);
        };
        let keep = t.log.split_off(&before);
        let dropped = std::mem::replace(&mut t.log, keep);
        t.trimmed_before = t.trimmed_before.max(before.min(t.next_position));
        for e in dropped.values() {
            t.bytes = t.bytes.saturating_sub(e.size_bytes());
            if let Some(s) = t.streams.get_mut(&e.stream) {
                s.versions.remove(&e.version);
            }
        }
        Ok(dropped.len() as u64)
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> StoreResult<()> {
        self.inner.lock().tenants.remove(tenant);
        Ok(())
    }

    async fn stats(&self, tenant: &TenantId) -> StoreResult<TenantStats> {
        let inner = self.inner.lock();
        Ok(inner
            .tenants
            .get(tenant)
            .map_or_else(TenantStats::default, |t| TenantStats {
                events: t.log.len() as u64,
                streams: t.streams.values().filter(|s| s.current().is_some()).count() as u64,
                bytes: t.bytes,
                snapshot_bytes: t.snapshots.values().map(Snapshot::size_bytes).sum(),
                next_position: t.next_position,
                incarnation: 0,
                trimmed_before: t.trimmed_before,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: u128) -> NewEvent {
        NewEvent {
            event_id: Uuid::from_u128(id),
            event_type: "t".into(),
            payload: b"{}".to_vec(),
            metadata: BTreeMap::new(),
        }
    }

    fn ids() -> (TenantId, TenantId, StreamId) {
        (
            TenantId::new("a").unwrap(),
            TenantId::new("b").unwrap(),
            StreamId::new("s").unwrap(),
        )
    }

    #[tokio::test]
    async fn append_read_conflict_dedup() {
        let m = MemoryStore::default();
        let (a, b, s) = ids();
        let r = m
            .append(&a, &s, ExpectedVersion::NoStream, vec![ev(1), ev(2)])
            .await
            .unwrap();
        assert_eq!((r.first_version, r.last_version), (0, 1));
        let again = m
            .append(&a, &s, ExpectedVersion::NoStream, vec![ev(1), ev(2)])
            .await
            .unwrap();
        assert!(again.deduplicated);
        assert_eq!(
            m.append(&a, &s, ExpectedVersion::Exact(0), vec![ev(3)])
                .await,
            Err(StoreError::Conflict { current: Some(1) })
        );
        let back = m
            .read_stream(&a, &s, ReadFrom::Edge, Direction::Backwards, 10)
            .await
            .unwrap();
        assert_eq!(back.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 0]);
        assert!(matches!(
            m.read_stream(&b, &s, ReadFrom::Edge, Direction::Forwards, 10)
                .await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(m.read_all(&b, 0, 10).await.unwrap().len(), 0);
    }

    #[tokio::test]
    async fn delete_reopen_truncate() {
        let m = MemoryStore::default();
        let (a, _, s) = ids();
        m.append(&a, &s, ExpectedVersion::Any, vec![ev(1), ev(2)])
            .await
            .unwrap();
        m.delete_stream(&a, &s).await.unwrap();
        assert!(matches!(
            m.read_stream(&a, &s, ReadFrom::Edge, Direction::Forwards, 10)
                .await,
            Err(StoreError::StreamDeleted(_))
        ));
        assert_eq!(m.count_streams(&a).await.unwrap(), 0);
        let r = m
            .append(&a, &s, ExpectedVersion::NoStream, vec![ev(3), ev(4)])
            .await
            .unwrap();
        assert_eq!(r.first_version, 2);
        let all = m
            .read_stream(&a, &s, ReadFrom::Edge, Direction::Forwards, 10)
            .await
            .unwrap();
        assert_eq!(all.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
        // Versions 0 and 1 were hidden by the delete; truncation drops them too.
        assert_eq!(m.truncate_before(&a, &s, 3).await.unwrap(), 3);
        assert_eq!(m.stats(&a).await.unwrap().events, 1);
    }

    #[tokio::test]
    async fn subscription_catches_up_then_follows() {
        let m = MemoryStore::default();
        let (a, _, s) = ids();
        m.append(&a, &s, ExpectedVersion::Any, vec![ev(1)])
            .await
            .unwrap();
        let mut sub = m
            .subscribe(&a, SubscriptionTarget::Tenant, None)
            .await
            .unwrap();
        assert_eq!(sub.next().await.unwrap().unwrap().position, 0);
        let m2 = m.clone();
        let (a2, s2) = (a.clone(), s.clone());
        tokio::spawn(async move {
            m2.append(&a2, &s2, ExpectedVersion::Any, vec![ev(2)])
                .await
                .unwrap();
        });
        assert_eq!(sub.next().await.unwrap().unwrap().position, 1);
    }
}
