//! The embedded event engine: tenants' state in memory behind one lock per tenant, every write
//! through the group-commit WAL, sealed data checkpointed into Parquet segments with a manifest,
//! reads that span hot memory and segments. `Engine` implements [`crate::EventStore`].
//!
//! Lifecycle: [`Engine::open`] is blocking (it replays the WAL; call it before serving or inside
//! `spawn_blocking`); it starts the WAL writer thread and the background flusher thread.
//! [`Engine::close`] drains the WAL, writes a final checkpoint and stops both threads (it is also
//! run on drop of the last handle). A write is visible to readers only after the WAL
//! acknowledged it; readers never wait for an fsync. Purging a tenant is a WAL record too
//! (replayed on recovery, so nothing purged comes back), followed by a checkpoint that deletes
//! the tenant's segment files. This module must never bypass the WAL to change state, nor
//! expose events of one tenant to another.

mod apply;
mod cache;
mod checkpoint;
pub mod config;
mod read;
pub mod snapshots;
mod subscribe;
pub mod tenant;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex, RwLock};

pub(crate) use self::apply::Tenant;
pub use self::checkpoint::CheckpointReport;
pub use self::config::EngineConfig;
use self::snapshots::SnapshotSlot;
use self::tenant::{Reservation, TenantState};
use crate::backend::{EventSubscription, StoreResult, SubscriptionTarget};
use crate::error::StoreError;
use crate::fsio::{FileSystem, OsFs};
use crate::model::{
    AppendResult, Capabilities, Direction, ExpectedVersion, NewEvent, ReadFrom, RecordedEvent,
    Snapshot, StreamId, StreamInfo, TenantId, TenantStats,
};
pub use crate::wal::Durability;
use crate::wal::{record, WalError, WalRecord, WalWriter, WriterConfig};

/// Errors of opening or checkpointing the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// File I/O failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The manifest is unreadable.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A Parquet segment could not be written or read.
    #[error(transparent)]
    Segment(#[from] crate::segment::SegmentError),
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// The WAL is damaged in a way a crash cannot explain (see [`crate::wal::recover`]).
    #[error(transparent)]
    Recover(crate::wal::RecoverError),
}

impl From<crate::wal::RecoverError> for EngineError {
    fn from(e: crate::wal::RecoverError) -> Self {
        match e {
            crate::wal::RecoverError::Io(io) => Self::Io(io),
            other => Self::Recover(other),
        }
    }
}

impl From<EngineError> for StoreError {
    fn from(e: EngineError) -> Self {
        StoreError::Internal(e.to_string())
    }
}

/// A record the WAL format cannot hold: refused before anything is reserved or written.
fn encode_err(e: record::EncodeError) -> StoreError {
    StoreError::TooLarge(e.to_string())
}

impl From<WalError> for StoreError {
    fn from(e: WalError) -> Self {
        match e {
            WalError::Poisoned(m) => StoreError::Poisoned(m),
            WalError::Closed => StoreError::Unavailable("the engine is shut down".into()),
            WalError::Undecodable(m) => StoreError::Internal(m),
        }
    }
}

type Tenants = Arc<RwLock<HashMap<TenantId, Arc<Tenant>>>>;

pub(crate) struct Inner {
    pub(crate) cfg: EngineConfig,
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) tenants: Tenants,
    pub(crate) wal: WalWriter<(Arc<Tenant>, WalRecord)>,
    pub(crate) cache: cache::RowGroupCache,
    pub(crate) ckpt: Mutex<checkpoint::CheckpointState>,
    /// File layout (immutable; read without any lock).
    pub(crate) dirs: checkpoint::Dirs,
    /// WAL bytes written when the last checkpoint started.
    pub(crate) wal_at_checkpoint: AtomicU64,
    closed: AtomicBool,
    flusher_stop: Arc<(Mutex<bool>, Condvar)>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

/// The embedded engine. Cheap to share: wrap it in an `Arc` (it is `Send + Sync`).
pub struct Engine {
    inner: Arc<Inner>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Refuses a write taken for an incarnation of the tenant that was purged since.
fn check_incarnation(st: &TenantState, incarnation: u64) -> StoreResult<()> {
    if st.incarnation != incarnation {
        return Err(StoreError::Unavailable(format!(
            "tenant {} was purged while this write waited",
            st.id
        )));
    }
    Ok(())
}

impl Engine {
    /// Opens (or creates) the engine in `config.data_dir` on the real file system. Blocking.
    pub fn open(config: EngineConfig) -> Result<Self, EngineError> {
        Self::open_with_fs(config, Arc::new(OsFs))
    }

    /// Opens the engine on a given file system (tests use [`crate::fsio::SimFs`]). Blocking.
    pub fn open_with_fs(
        config: EngineConfig,
        fs: Arc<dyn FileSystem>,
    ) -> Result<Self, EngineError> {
        if config.row_group_rows == 0 {
            return Err(EngineError::Config("rowGroupRows must be > 0".into()));
        }
        config.limits.check().map_err(EngineError::Config)?;
        let started = std::time::Instant::now();
        let dirs = checkpoint::Dirs::new(&config.data_dir);
        fs.create_dir_all(&dirs.wal)?;
        fs.create_dir_all(&dirs.segments)?;
        fs.create_dir_all(&dirs.snapshots)?;
        let manifest = checkpoint::load_manifest(fs.as_ref(), &dirs)?;
        let checkpoint_lsn = manifest.checkpoint_lsn;
        let snapshot_files = checkpoint::snapshot_files(&manifest);
        let buffer = config.subscription_buffer;
        let mut map: HashMap<TenantId, Arc<Tenant>> = HashMap::new();
        for (id, tm) in manifest.tenants {
            let st = TenantState::from_manifest(id.clone(), tm);
            map.insert(id, Tenant::new(st, buffer));
        }
        let policy = config.wal_on_corruption;
        let rec = crate::wal::recover(fs.as_ref(), &dirs.wal, checkpoint_lsn, policy, |lsn, r| {
            let t = map
                .entry(r.tenant().clone())
                .or_insert_with(|| Tenant::new(TenantState::new(r.tenant().clone()), buffer))
                .clone();
            t.replay(lsn, r);
        })?;
        // After replay, so that the files of tenants purged since the manifest go too.
        checkpoint::remove_orphans(fs.as_ref(), &dirs, &map)?;
        checkpoint::remove_orphan_snapshots(fs.as_ref(), &dirs, &snapshot_files, &map)?;
        tracing::info!(
            tenants = map.len(),
            replayed_records = rec.records,
            truncated_bytes = rec.truncated_bytes,
            dropped_files = rec.dropped_files.len(),
            corrupt_copy = ?rec.corrupt_copy,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "engine recovered"
        );
        let tenants: Tenants = Arc::new(RwLock::new(map));
        let wal = WalWriter::start(
            fs.clone(),
            WriterConfig {
                dir: dirs.wal.clone(),
                durability: config.durability,
                segment_bytes: config.wal_segment_bytes,
            },
            rec.files,
            rec.next_lsn,
            |group: Vec<(u64, (Arc<Tenant>, WalRecord))>| {
                // A busy tenant lock defers that tenant's records, never the group's others.
                for (lsn, (t, r)) in group {
                    t.commit(lsn, r);
                }
            },
        )?;
        let inner = Arc::new(Inner {
            cache: cache::RowGroupCache::new(config.limits.cache_bytes as u64),
            ckpt: Mutex::new(checkpoint::CheckpointState::new(snapshot_files)),
            dirs,
            cfg: config,
            fs,
            tenants,
            wal,
            wal_at_checkpoint: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            flusher_stop: Arc::new((Mutex::new(false), Condvar::new())),
            flusher: Mutex::new(None),
        });
        if inner.cfg.checkpoint_interval_ms > 0 {
            let weak = Arc::downgrade(&inner);
            let stop = inner.flusher_stop.clone();
            let every = Duration::from_millis(inner.cfg.checkpoint_interval_ms);
            let h = std::thread::Builder::new()
                .name("engine-flusher".into())
                .spawn(move || flusher_loop(weak, stop, every))?;
            *inner.flusher.lock() = Some(h);
        }
        Ok(Self { inner })
    }

    /// The configuration in use.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    /// Flushes hot events to Parquet, writes the manifest and trims the WAL. Blocking.
    pub fn checkpoint(&self) -> Result<CheckpointReport, EngineError> {
        self.inner.checkpoint()
    }

    /// Merges small segments (as the flusher does). Blocking; returns segments merged.
    pub fn compact(&self) -> Result<usize, EngineError> {
        self.inner.compact()
    }

    /// Drains the WAL, writes a final checkpoint and stops the background threads. Blocking;
    /// later writes answer `Unavailable`. Idempotent.
    pub fn close(&self) -> Result<(), EngineError> {
        self.inner.close()
    }

    /// Stops the engine the way a process death would (no final fsync, no checkpoint), for
    /// crash tests with [`crate::fsio::SimFs`].
    pub fn halt(self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.stop_flusher();
        self.inner.wal.abort();
    }

    /// Calls `f` on up to `limit` events of a stream, forwards from `from`, without cloning
    /// hot events (the allocation-free read path used by the benchmark). The tenant's read lock
    /// is held while `f` runs: the tenant's own writes wait for it, other tenants' do not.
    pub fn visit_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        from: u64,
        limit: usize,
        f: impl FnMut(&RecordedEvent),
    ) -> StoreResult<usize> {
        self.inner.visit_stream(tenant, stream, from, limit, f)
    }

    /// Number of WAL bytes written since open.
    pub fn wal_bytes_written(&self) -> u64 {
        self.inner.wal.bytes_written()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.inner.close() {
            tracing::error!(error = %e, "closing the engine on drop failed");
        }
    }
}

fn flusher_loop(weak: Weak<Inner>, stop: Arc<(Mutex<bool>, Condvar)>, every: Duration) {
    loop {
        {
            let mut s = stop.0.lock();
            if !*s {
                stop.1.wait_for(&mut s, every);
            }
            if *s {
                return;
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        if inner.checkpoint_due() {
            if let Err(e) = inner.checkpoint() {
                tracing::error!(error = %e, "checkpoint failed; the WAL still holds the data");
            }
        }
        if let Err(e) = inner.compact() {
            tracing::error!(error = %e, "compaction failed");
        }
    }
}

impl Inner {
    fn close(&self) -> Result<(), EngineError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_flusher();
        self.wal.shutdown();
        if self.wal.poisoned().is_some() {
            return Ok(());
        }
        self.checkpoint().map(|_| ())
    }

    fn stop_flusher(&self) {
        {
            let mut s = self.flusher_stop.0.lock();
            *s = true;
            self.flusher_stop.1.notify_all();
        }
        if let Some(h) = self.flusher.lock().take() {
            if h.thread().id() != std::thread::current().id() && h.join().is_err() {
                tracing::error!("flusher thread panicked");
            }
        }
    }

    pub(crate) fn tenant(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        self.tenants.read().get(id).cloned()
    }

    fn tenant_or_create(&self, id: &TenantId) -> Arc<Tenant> {
        if let Some(t) = self.tenant(id) {
            return t;
        }
        self.tenants
            .write()
            .entry(id.clone())
            .or_insert_with(|| {
                Tenant::new(TenantState::new(id.clone()), self.cfg.subscription_buffer)
            })
            .clone()
    }

    fn check_writable(&self) -> StoreResult<()> {
        if let Some(p) = self.wal.poisoned() {
            return Err(StoreError::Poisoned(p));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the engine is shut down".into()));
        }
        Ok(())
    }

    fn check_stream(&self, stream: &StreamId) -> StoreResult<()> {
        StreamId::with_limits(stream.as_str(), &self.cfg.limits).map(|_| ())
    }

    /// Waits until the record at `lsn` of tenant `t` is durable and applied: only then may a
    /// write be acknowledged (readers see it, a retry finds it).
    async fn wait_applied(&self, t: &Tenant, lsn: u64) -> StoreResult<()> {
        self.wal.wait(lsn).await?;
        t.wait_applied(lsn).await;
        Ok(())
    }

    /// Submits a non-append record after `check` accepted it under the tenant lock.
    async fn submit_other(
        &self,
        tenant: &TenantId,
        rec: WalRecord,
        check: impl FnOnce(&TenantState) -> StoreResult<()>,
    ) -> StoreResult<()> {
        self.check_writable()?;
        let body = record::encode_record(&rec).map_err(encode_err)?;
        let t = self.tenant_or_create(tenant);
        let lsn = {
            let mut st = t.state.write();
            st.check_not_purging()?;
            check(&st)?;
            if let WalRecord::Delete { stream, .. } = &rec {
                if let Some(e) = st.streams.get_mut(stream) {
                    e.reserved_deleted = true;
                }
            }
            self.wal.submit(Vec::new(), body, (t.clone(), rec))?
        };
        self.wait_applied(&t, lsn).await?;
        Ok(())
    }

    /// Makes a purge of `tenant` durable (see [`WalRecord::PurgeTenant`]); false when this
    /// node holds nothing of the tenant. The files go with the next checkpoint.
    /// Whether what the WAL wrote since the last checkpoint (hot events and pending snapshots,
    /// all in memory) is past twice `checkpoint_wal_bytes`: writes then wait for a checkpoint.
    fn over_memory_bound(&self) -> bool {
        self.wal_bytes_since_checkpoint() >= self.cfg.checkpoint_wal_bytes.saturating_mul(2)
    }

    /// Before a write: while memory waiting for a checkpoint is over its bound (or `also`
    /// holds), wakes the flusher and waits for its checkpoint (at most 30 s, then the write
    /// goes ahead), so that this memory stays bounded whatever the write rate. Checkpoints stay
    /// the flusher's (and purges'); only an engine without a flusher checkpoints here.
    async fn make_room(
        self: &Arc<Self>,
        also: impl Fn(&Inner) -> bool + Send + 'static,
    ) -> StoreResult<()> {
        self.check_writable()?;
        if !self.over_memory_bound() && !also(self) {
            return Ok(());
        }
        if self.cfg.checkpoint_interval_ms == 0 {
            let inner = self.clone();
            tokio::task::spawn_blocking(move || {
                inner.checkpoint_if(|i| {
                    !i.closed.load(Ordering::Acquire) && (i.over_memory_bound() || also(i))
                })
            })
            .await
            .map_err(|e| StoreError::Internal(format!("checkpoint task: {e}")))??;
            return Ok(());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while (self.over_memory_bound() || also(self)) && std::time::Instant::now() < deadline {
            self.check_writable()?;
            {
                let _s = self.flusher_stop.0.lock();
                self.flusher_stop.1.notify_all();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// A stream's latest snapshot: from memory while pending, else read from its file.
    fn load_snapshot(
        &self,
        t: &Tenant,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> StoreResult<Option<Snapshot>> {
        let mut last_err = None;
        // A checkpoint may replace the file between the lookup and the read: look again.
        for _ in 0..3 {
            let slot = {
                let st = t.state.read();
                match st.streams.get(stream) {
                    Some(e) if e.deleted => return Ok(None),
                    _ => st.snapshots.get(stream).cloned(),
                }
            };
            let r = match slot {
                None => return Ok(None),
                Some(SnapshotSlot::Pending { snapshot, .. }) => {
                    return Ok(Some(Snapshot::clone(&snapshot)))
                }
                Some(SnapshotSlot::Stored(r)) => r,
            };
            let path = self.dirs.snapshot_path(tenant, &r.file);
            match self.fs.read(&path) {
                Ok(bytes) => {
                    return snapshots::decode(&bytes, &r)
                        .map(Some)
                        .map_err(StoreError::Internal)
                }
                Err(e) => last_err = Some(format!("reading snapshot {}: {e}", r.file)),
            }
        }
        Err(StoreError::Internal(last_err.unwrap_or_default()))
    }

    async fn submit_purge(&self, tenant: &TenantId) -> StoreResult<bool> {
        self.check_writable()?;
        let Some(t) = self.tenant(tenant) else {
            return Ok(false);
        };
        let rec = WalRecord::PurgeTenant {
            tenant: tenant.clone(),
        };
        let body = record::encode_record(&rec).map_err(encode_err)?;
        let lsn = {
            let mut st = t.state.write();
            // Under the tenant lock, like every reservation: a write reserved before this
            // point has a lower LSN and is applied (then erased) before the purge.
            let lsn = self.wal.submit(Vec::new(), body, (t.clone(), rec))?;
            st.purge_pending = true;
            lsn
        };
        self.wait_applied(&t, lsn).await?;
        Ok(true)
    }

    /// A retry whose events were already flushed out of the idempotency window: with an
    /// exact (or no-stream) expected version, the stored events right after it carry the
    /// same ids in the same order.
    fn retry_of_flushed(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> StoreResult<Option<AppendResult>> {
        let from = match expected {
            ExpectedVersion::NoStream => 0,
            // A client's u64::MAX: nothing can follow it, so no earlier append to retry.
            ExpectedVersion::Exact(v) => match v.checked_add(1) {
                Some(next) => next,
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let stored = match self.read_stream(
            tenant,
            stream,
            ReadFrom::Version(from),
            Direction::Forwards,
            events.len(),
        ) {
            Ok(s) => s,
            Err(_) => return Ok(None),
        };
        let same = stored.len() == events.len()
            && stored.first().is_some_and(|f| f.version == from)
            && stored
                .iter()
                .zip(events)
                .all(|(a, b)| a.event_id == b.event_id);
        Ok(match (same, stored.first(), stored.last()) {
            (true, Some(f), Some(l)) => Some(AppendResult {
                first_version: f.version,
                last_version: l.version,
                first_position: f.position,
                last_position: l.position,
                deduplicated: true,
            }),
            _ => None,
        })
    }

    /// The tenant's incarnation now (0 for a tenant this node does not hold yet).
    fn incarnation(&self, tenant: &TenantId) -> u64 {
        self.tenant(tenant)
            .map_or(0, |t| t.state.read().incarnation)
    }

    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        incarnation: u64,
    ) -> StoreResult<AppendResult> {
        self.check_stream(stream)?;
        self.cfg.limits.validate_batch(&events)?;
        self.check_writable()?;
        let mut body = record::encode_events(&events).map_err(encode_err)?;
        let n = events.len() as u64;
        let t = self.tenant_or_create(tenant);
        let mut events = Some(events);
        loop {
            let Some(evs) = events.take() else {
                return Err(StoreError::Internal("append retried without events".into()));
            };
            let outcome = {
                let mut st = t.state.write();
                check_incarnation(&st, incarnation)?;
                let r = match st.reserve_append(stream, expected, &evs) {
                    Ok(r) => r,
                    Err(StoreError::Conflict { current }) => {
                        drop(st);
                        return match self.retry_of_flushed(tenant, stream, expected, &evs)? {
                            Some(res) => Ok(res),
                            None => Err(StoreError::Conflict { current }),
                        };
                    }
                    Err(e) => return Err(e),
                };
                match r {
                    Reservation::New {
                        first_version,
                        first_position,
                    } => {
                        let ts = now_ms();
                        let head = record::encode_append_head(
                            tenant,
                            stream,
                            first_version,
                            first_position,
                            ts,
                        );
                        let rec = WalRecord::Append {
                            tenant: tenant.clone(),
                            stream: stream.clone(),
                            first_version,
                            first_position,
                            timestamp_ms: ts,
                            events: evs,
                        };
                        // Submitted under the tenant lock: LSN order is position order.
                        let lsn =
                            self.wal
                                .submit(head, std::mem::take(&mut body), (t.clone(), rec))?;
                        if let Some(e) = st.streams.get_mut(stream) {
                            e.last_lsn = lsn;
                        }
                        Ok((
                            lsn,
                            AppendResult {
                                first_version,
                                last_version: first_version + n - 1,
                                first_position,
                                last_position: first_position + n - 1,
                                deduplicated: false,
                            },
                        ))
                    }
                    Reservation::Done(res) => return Ok(res),
                    Reservation::WaitFor(lsn) => Err((lsn, evs)),
                }
            };
            match outcome {
                Ok((lsn, res)) => {
                    self.wait_applied(&t, lsn).await?;
                    return Ok(res);
                }
                Err((lsn, evs)) => {
                    self.wait_applied(&t, lsn).await?;
                    events = Some(evs);
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl crate::backend::EventStore for Engine {
    fn capabilities(&self) -> Capabilities {
        crate::model::BackendKind::Engine.capabilities()
    }

    fn limits(&self) -> crate::model::Limits {
        self.inner.cfg.limits.clone()
    }

    fn poisoned(&self) -> Option<String> {
        self.inner.wal.poisoned()
    }

    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> StoreResult<AppendResult> {
        // A write that waited for room must not land in a tenant purged (and re-created)
        // meanwhile: it was accepted for the incarnation it found here.
        let incarnation = self.inner.incarnation(tenant);
        self.inner.make_room(|_| false).await?;
        self.inner
            .append(tenant, stream, expected, events, incarnation)
            .await
    }

    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        from: ReadFrom,
        direction: Direction,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        self.inner.cfg.limits.validate_read_limit(limit)?;
        self.inner
            .read_stream(tenant, stream, from, direction, limit)
    }

    async fn read_all(
        &self,
        tenant: &TenantId,
        from_position: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        self.inner.cfg.limits.validate_read_limit(limit)?;
        self.inner.read_all(tenant, from_position, limit)
    }

    async fn subscribe(
        &self,
        tenant: &TenantId,
        target: SubscriptionTarget,
        after: Option<u64>,
    ) -> StoreResult<EventSubscription> {
        if let SubscriptionTarget::Stream(s) = &target {
            self.inner.check_stream(s)?;
        }
        if let Some(t) = self.inner.tenant(tenant) {
            subscribe::check_start(&t.state.read(), &target, after)?;
        }
        Ok(subscribe::subscribe(
            self.inner.clone(),
            tenant,
            target,
            after,
        ))
    }

    async fn save_snapshot(&self, tenant: &TenantId, snapshot: Snapshot) -> StoreResult<()> {
        self.inner.check_stream(&snapshot.stream)?;
        self.inner.cfg.limits.validate_snapshot(&snapshot)?;
        let stream = snapshot.stream.clone();
        let version = snapshot.version;
        let rec = WalRecord::Snapshot {
            tenant: tenant.clone(),
            snapshot: Snapshot {
                timestamp_ms: if snapshot.timestamp_ms == 0 {
                    now_ms()
                } else {
                    snapshot.timestamp_ms
                },
                ..snapshot
            },
        };
        // Snapshots wait in memory for the checkpoint that writes their files: past the bound,
        // that checkpoint runs now, before this one is taken.
        let incarnation = self.inner.incarnation(tenant);
        let t = tenant.clone();
        self.inner
            .make_room(move |inner| {
                inner.tenant(&t).is_some_and(|t| {
                    t.state.read().pending_snapshot_bytes >= inner.cfg.checkpoint_snapshot_bytes
                })
            })
            .await?;
        self.inner
            .submit_other(tenant, rec, |st| match st.streams.get(&stream) {
                _ if st.incarnation != incarnation => check_incarnation(st, incarnation),
                Some(e) if e.reserved_deleted => Err(StoreError::StreamDeleted(stream.to_string())),
                Some(e) => match e.reserved_current() {
                    Some(cur) if version <= cur => Ok(()),
                    _ => Err(StoreError::invalid(
                        "version",
                        format!("snapshot version {version} is past the stream's last version"),
                    )),
                },
                None => Err(StoreError::NotFound(format!("stream {stream}"))),
            })
            .await
    }

    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> StoreResult<Option<Snapshot>> {
        let Some(t) = self.inner.tenant(tenant) else {
            return Ok(None);
        };
        self.inner.load_snapshot(&t, tenant, stream)
    }

    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> StoreResult<Vec<StreamInfo>> {
        self.inner.cfg.limits.validate_read_limit(limit)?;
        let Some(t) = self.inner.tenant(tenant) else {
            return Ok(Vec::new());
        };
        let st = t.state.read();
        let range = match after {
            Some(a) => st
                .streams
                .range::<_, StreamId>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => st.streams.range::<_, StreamId>(..),
        };
        Ok(range
            .filter(|(_, e)| e.next_version > 0)
            .take(limit)
            .map(|(id, e)| StreamInfo {
                stream: id.clone(),
                last_version: e.next_version - 1,
                deleted: e.deleted,
            })
            .collect())
    }

    async fn count_streams(&self, tenant: &TenantId) -> StoreResult<u64> {
        Ok(self
            .inner
            .tenant(tenant)
            .map_or(0, |t| t.state.read().live_streams))
    }

    async fn delete_stream(&self, tenant: &TenantId, stream: &StreamId) -> StoreResult<()> {
        self.inner.check_stream(stream)?;
        let rec = WalRecord::Delete {
            tenant: tenant.clone(),
            stream: stream.clone(),
        };
        self.inner
            .submit_other(tenant, rec, |st| match st.streams.get(stream) {
                Some(e) if e.reserved_next > 0 => Ok(()),
                _ => Err(StoreError::NotFound(format!("stream {stream}"))),
            })
            .await
    }

    async fn truncate_before(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> StoreResult<u64> {
        self.inner.check_stream(stream)?;
        let rec = WalRecord::Truncate {
            tenant: tenant.clone(),
            stream: stream.clone(),
            before,
        };
        let dropped = Arc::new(Mutex::new(0u64));
        let d = dropped.clone();
        self.inner
            .submit_other(tenant, rec, move |st| match st.streams.get(stream) {
                Some(e) if e.reserved_deleted => Err(StoreError::StreamDeleted(stream.to_string())),
                Some(e) if e.reserved_next > 0 => {
                    let to = before.min(e.reserved_next);
                    *d.lock() = to.saturating_sub(e.first_version);
                    Ok(())
                }
                _ => Err(StoreError::NotFound(format!("stream {stream}"))),
            })
            .await?;
        let n = *dropped.lock();
        Ok(n)
    }

    async fn trim_tenant_before(
        &self,
        tenant: &TenantId,
        before: u64,
        incarnation: Option<u64>,
    ) -> StoreResult<u64> {
        let rec = WalRecord::TrimTenant {
            tenant: tenant.clone(),
            before,
        };
        let dropped = Arc::new(Mutex::new(0u64));
        let d = dropped.clone();
        self.inner
            .submit_other(tenant, rec, move |st| {
                // Under the tenant lock: a purge (which bumps the incarnation) is ordered
                // either before this check or after this record.
                if let Some(expected) = incarnation {
                    if st.incarnation != expected {
                        return Err(StoreError::IncarnationChanged {
                            expected,
                            current: st.incarnation,
                        });
                    }
                }
                *d.lock() = before
                    .min(st.next_position)
                    .saturating_sub(st.trimmed_before);
                Ok(())
            })
            .await?;
        let n = *dropped.lock();
        Ok(n)
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> StoreResult<()> {
        if !self.inner.submit_purge(tenant).await? {
            return Ok(());
        }
        // The checkpoint deletes the tenant's segment files, writes a manifest without its
        // data and drops the WAL files that held it.
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.checkpoint())
            .await
            .map_err(|e| StoreError::Internal(format!("purge checkpoint task: {e}")))??;
        tracing::info!(%tenant, "tenant purged");
        Ok(())
    }

    async fn stats(&self, tenant: &TenantId) -> StoreResult<TenantStats> {
        Ok(self
            .inner
            .tenant(tenant)
            .map_or_else(TenantStats::default, |t| t.state.read().stats()))
    }
}

/// Where the engine keeps its files, relative to the data directory.
pub fn layout(data_dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let d = checkpoint::Dirs::new(data_dir);
    (d.wal, d.segments, d.manifest)
}

#[cfg(test)]
mod apply_tests;
#[cfg(test)]
mod purge_tests;
#[cfg(test)]
mod tests;
