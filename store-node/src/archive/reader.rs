//! Reading archived events back, and a store wrapper that falls back to the archive for reads
//! below a tenant's watermark.
//!
//! [`ArchiveReader`] serves `read_all` and `read_stream` from the committed tenant manifest and its
//! Parquet files. [`ArchiveAwareStore`] wraps any [`EventStore`]: a read answered completely by the
//! hot store costs nothing extra; a read that starts below what the hot store still holds loads
//! the tenant manifest (one GET) and the needed files (one GET + decode each; a stream read scans
//! every file of the tenant, since files are partitioned by position and time, not by stream). This
//! is slower than a hot read but correct: archived events are returned exactly once, in order,
//! followed by the hot ones; a concurrent archiver run that moves the watermark during the read is
//! detected and the read retried. Known limit: events archived before a later `truncate_before`
//! of their stream are still returned from the archive. This module must never write or delete.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;

use super::manifest::{self, ArchiveScope, TenantManifest};
use super::objstore::{Destination, ObjectStore};
use super::{format, ArchiveResult};
use crate::backend::{EventStore, EventSubscription, StoreResult, SubscriptionTarget};
use crate::error::StoreError;
use crate::model::{
    AppendResult, Capabilities, Direction, ExpectedVersion, NewEvent, ReadFrom, RecordedEvent,
    Snapshot, StreamId, StreamInfo, TenantId, TenantStats,
};

/// Reads archived events of one store in a destination.
#[derive(Clone)]
pub struct ArchiveReader {
    objects: Arc<dyn ObjectStore>,
    dest: Destination,
    store_uid: String,
}

impl ArchiveReader {
    /// A reader of the archive of store `store_uid` in `dest` through `objects`.
    pub fn new(
        objects: Arc<dyn ObjectStore>,
        dest: Destination,
        store_uid: &str,
    ) -> ArchiveResult<Self> {
        manifest::validate_store_uid(store_uid)?;
        Ok(Self {
            objects,
            dest,
            store_uid: store_uid.to_string(),
        })
    }

    /// The committed manifest of a tenant's incarnation (empty when never archived).
    pub async fn manifest(
        &self,
        tenant: &TenantId,
        incarnation: u64,
    ) -> ArchiveResult<TenantManifest> {
        let scope = ArchiveScope::new(tenant.clone(), &self.store_uid, incarnation)?;
        manifest::load_tenant(self.objects.as_ref(), &self.dest, &scope).await
    }

    async fn file(&self, key: &str) -> ArchiveResult<Vec<RecordedEvent>> {
        let data = self.objects.get(&self.dest.key(key)).await?;
        format::decode(data)
    }

    /// Up to `limit` archived events with position >= `from`, in position order.
    pub async fn read_all(
        &self,
        manifest: &TenantManifest,
        from: u64,
        limit: usize,
    ) -> ArchiveResult<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        for f in manifest.files.iter().filter(|f| f.last_position >= from) {
            if out.len() >= limit {
                break;
            }
            let rows = self.file(&f.key).await?;
            out.extend(
                rows.into_iter()
                    .filter(|e| e.position >= from)
                    .take(limit - out.len()),
            );
        }
        Ok(out)
    }

    /// Every archived event of one stream, in version order.
    pub async fn stream_events(
        &self,
        manifest: &TenantManifest,
        stream: &StreamId,
    ) -> ArchiveResult<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        for f in &manifest.files {
            let rows = self.file(&f.key).await?;
            out.extend(rows.into_iter().filter(|e| &e.stream == stream));
        }
        out.sort_by_key(|e| e.version);
        Ok(out)
    }
}

/// An [`EventStore`] that answers reads below the hot data from the archive.
pub struct ArchiveAwareStore<S: EventStore> {
    inner: S,
    reader: ArchiveReader,
}

/// How many times a read is retried when the watermark moves under it.
const WATERMARK_RETRIES: usize = 3;

impl<S: EventStore> ArchiveAwareStore<S> {
    /// Wraps `inner`; archived data is read through `reader`.
    pub fn new(inner: S, reader: ArchiveReader) -> Self {
        Self { inner, reader }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The committed manifest of the tenant's current incarnation on the wrapped store.
    async fn manifest(&self, tenant: &TenantId) -> StoreResult<TenantManifest> {
        let incarnation = match self.inner.stats(tenant).await {
            Ok(s) => s.incarnation,
            Err(StoreError::Unsupported(_)) => 0,
            Err(e) => return Err(e),
        };
        Ok(self.reader.manifest(tenant, incarnation).await?)
    }

    async fn read_all_merged(
        &self,
        tenant: &TenantId,
        from: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        for _ in 0..WATERMARK_RETRIES {
            let m = self.manifest(tenant).await?;
            if from >= m.watermark {
                return self.inner.read_all(tenant, from, limit).await;
            }
            let mut out = self.reader.read_all(&m, from, limit).await?;
            if out.len() < limit {
                let hot_from = out.last().map_or(from, |e| e.position + 1).max(m.watermark);
                out.extend(
                    self.inner
                        .read_all(tenant, hot_from, limit - out.len())
                        .await?,
                );
            }
            if self.manifest(tenant).await?.watermark == m.watermark {
                return Ok(out);
            }
        }
        Err(StoreError::Unavailable(
            "archive watermark kept moving during the read; retry".into(),
        ))
    }

    async fn read_stream_merged(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        from: ReadFrom,
        direction: Direction,
        limit: usize,
        hot: StoreResult<Vec<RecordedEvent>>,
    ) -> StoreResult<Vec<RecordedEvent>> {
        let m = self.manifest(tenant).await?;
        if m.watermark == 0 {
            return hot;
        }
        let hot = match hot {
            Ok(h) => h,
            Err(StoreError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let archived = self.reader.stream_events(&m, stream).await?;
        if archived.is_empty() && hot.is_empty() {
            return Err(StoreError::NotFound(format!("stream {stream}")));
        }
        let out = match direction {
            Direction::Forwards => {
                let start = match from {
                    ReadFrom::Edge => 0,
                    ReadFrom::Version(v) => v,
                };
                let hot_min = hot.first().map_or(u64::MAX, |e| e.version);
                archived
                    .into_iter()
                    .filter(|e| e.version >= start && e.version < hot_min)
                    .chain(hot)
                    .take(limit)
                    .collect()
            }
            Direction::Backwards => {
                let start = match from {
                    ReadFrom::Edge => u64::MAX,
                    ReadFrom::Version(v) => v,
                };
                let hot_min = hot.last().map_or(u64::MAX, |e| e.version);
                let older = archived
                    .into_iter()
                    .rev()
                    .filter(|e| e.version <= start && e.version < hot_min);
                hot.into_iter().chain(older).take(limit).collect()
            }
        };
        Ok(out)
    }
}

#[async_trait]
impl<S: EventStore> EventStore for ArchiveAwareStore<S> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> StoreResult<AppendResult> {
        self.inner.append(tenant, stream, expected, events).await
    }

    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        from: ReadFrom,
        direction: Direction,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        let mut hot = self
            .inner
            .read_stream(tenant, stream, from, direction, limit)
            .await;
        if let Err(StoreError::Archived {
            first_available, ..
        }) = hot
        {
            // The store holds the stream from `first_available` on; what comes before is in
            // the archive. Backwards from below it, nothing the store holds is asked for.
            hot = match direction {
                Direction::Forwards => {
                    self.inner
                        .read_stream(
                            tenant,
                            stream,
                            ReadFrom::Version(first_available),
                            direction,
                            limit,
                        )
                        .await
                }
                Direction::Backwards => Ok(Vec::new()),
            };
            return self
                .read_stream_merged(tenant, stream, from, direction, limit, hot)
                .await;
        }
        let complete = match (&hot, direction) {
            (Ok(h), Direction::Forwards) => {
                let start = match from {
                    ReadFrom::Edge => 0,
                    ReadFrom::Version(v) => v,
                };
                h.first().is_some_and(|e| e.version == start)
            }
            (Ok(h), Direction::Backwards) => h.len() >= limit,
            (Err(StoreError::NotFound(_)), _) => false,
            (Err(_), _) => true,
        };
        if complete {
            return hot;
        }
        self.read_stream_merged(tenant, stream, from, direction, limit, hot)
            .await
    }

    async fn read_all(
        &self,
        tenant: &TenantId,
        from_position: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        match self.inner.read_all(tenant, from_position, limit).await {
            Ok(hot) if hot.first().is_some_and(|e| e.position == from_position) => Ok(hot),
            Ok(_) | Err(StoreError::Archived { .. }) => {
                self.read_all_merged(tenant, from_position, limit).await
            }
            Err(e) => Err(e),
        }
    }

    async fn subscribe(
        &self,
        tenant: &TenantId,
        target: SubscriptionTarget,
        after: Option<u64>,
    ) -> StoreResult<EventSubscription> {
        let SubscriptionTarget::Tenant = target else {
            return self.inner.subscribe(tenant, target, after).await;
        };
        let m = self.manifest(tenant).await?;
        let from = after.map_or(0, |a| a + 1);
        if from >= m.watermark {
            return self.inner.subscribe(tenant, target, after).await;
        }
        // Catch up from the archive, then hand over to the store after the watermark.
        let archived = self.reader.read_all(&m, from, usize::MAX).await?;
        let live = self
            .inner
            .subscribe(tenant, target, Some(m.watermark - 1))
            .await?;
        Ok(futures::stream::iter(archived.into_iter().map(Ok))
            .chain(live)
            .boxed())
    }

    async fn save_snapshot(&self, tenant: &TenantId, snapshot: Snapshot) -> StoreResult<()> {
        self.inner.save_snapshot(tenant, snapshot).await
    }

    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> StoreResult<Option<Snapshot>> {
        self.inner.load_snapshot(tenant, stream).await
    }

    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> StoreResult<Vec<StreamInfo>> {
        self.inner.list_streams(tenant, after, limit).await
    }

    async fn count_streams(&self, tenant: &TenantId) -> StoreResult<u64> {
        self.inner.count_streams(tenant).await
    }

    async fn delete_stream(&self, tenant: &TenantId, stream: &StreamId) -> StoreResult<()> {
        self.inner.delete_stream(tenant, stream).await
    }

    async fn truncate_before(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> StoreResult<u64> {
        self.inner.truncate_before(tenant, stream, before).await
    }

    async fn trim_tenant_before(
        &self,
        tenant: &TenantId,
        before: u64,
        incarnation: Option<u64>,
    ) -> StoreResult<u64> {
        self.inner
            .trim_tenant_before(tenant, before, incarnation)
            .await
    }

    async fn stats(&self, tenant: &TenantId) -> StoreResult<TenantStats> {
        self.inner.stats(tenant).await
    }
}
