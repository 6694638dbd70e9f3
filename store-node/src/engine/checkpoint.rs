//! Checkpoints and compaction: flush each tenant's hot events into a Parquet segment (write,
//! fsync, rename, fsync directory), then record segments and index state in the manifest
//! (tmp + fsync + rename + directory fsync), and only then delete WAL files the manifest covers
//! and evict the flushed events from memory. Compaction merges a tenant's small segments the
//! same way. A purged tenant's segment files are deleted at the start of the next checkpoint.
//! Its positions restart at 0 in a new incarnation, which every segment file name carries, so
//! a file of the new incarnation never takes the name (or the cached row groups) of an erased
//! one; a checkpoint that read the tenant before a purge applied never attaches what it wrote
//! to the purged tenant, and deletes that file instead. Nothing here may delete a file the
//! current manifest still names, or trim WAL records the manifest does not cover.
//!
//! Snapshots saved since the last checkpoint are written to their own files (see
//! [`super::snapshots`]) before the manifest that names them; files a new manifest no longer
//! names are deleted at the checkpoint after it, like replaced segments.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::snapshots::{self, SnapshotRef, SnapshotSlot};
use super::tenant::{TenantCapture, TenantManifest};
use super::{EngineError, Inner, Tenant};
use crate::fsio::{write_atomic, FileSystem};
use crate::model::{RecordedEvent, Snapshot, StreamId, TenantId};
use crate::segment::{self, SegmentMeta};

/// Directory layout of the data directory.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// `wal/`
    pub wal: PathBuf,
    /// `segments/` (one sub-directory per tenant)
    pub segments: PathBuf,
    /// `snapshots/` (one sub-directory per tenant)
    pub snapshots: PathBuf,
    /// `manifest.json`
    pub manifest: PathBuf,
}

impl Dirs {
    /// The layout under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            wal: data_dir.join("wal"),
            segments: data_dir.join("segments"),
            snapshots: data_dir.join("snapshots"),
            manifest: data_dir.join("manifest.json"),
        }
    }

    /// Path of a tenant's snapshot file.
    pub fn snapshot_path(&self, tenant: &TenantId, file: &str) -> PathBuf {
        self.snapshots.join(tenant.as_str()).join(file)
    }

    /// Path of a tenant's segment file.
    pub fn segment_path(&self, tenant: &TenantId, file: &str) -> PathBuf {
        self.segments.join(tenant.as_str()).join(file)
    }
}

/// The manifest: everything the WAL no longer has to remember.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// Every WAL record with LSN <= this is reflected here.
    pub checkpoint_lsn: u64,
    /// Tenants.
    pub tenants: BTreeMap<TenantId, TenantManifest>,
}

/// Loads the manifest (an empty one when the data directory is new).
pub fn load_manifest(fs: &dyn FileSystem, dirs: &Dirs) -> Result<Manifest, EngineError> {
    if !fs.exists(&dirs.manifest) {
        return Ok(Manifest {
            format: 1,
            ..Default::default()
        });
    }
    let bytes = fs.read(&dirs.manifest)?;
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| EngineError::Manifest(e.to_string()))?;
    if m.format != 1 {
        return Err(EngineError::Manifest(format!(
            "unsupported manifest format {}",
            m.format
        )));
    }
    Ok(m)
}

/// Deletes the files under `root/<tenant>/` that `keep` does not name (left by a crash
/// mid-checkpoint). `what` names the kind of file in the log.
fn remove_unnamed(
    fs: &dyn FileSystem,
    root: &Path,
    tenants: &HashMap<TenantId, Arc<Tenant>>,
    what: &str,
    keep: impl Fn(&TenantId, &str) -> bool,
) -> Result<(), EngineError> {
    // Known tenants too: a file system may not list directories (SimFs does not).
    let mut names: BTreeSet<String> = fs.list(root).unwrap_or_default().into_iter().collect();
    names.extend(tenants.keys().map(|t| t.as_str().to_string()));
    for name in names {
        let Ok(id) = TenantId::new(name.clone()) else {
            continue;
        };
        let dir = root.join(&name);
        for f in fs.list(&dir).unwrap_or_default() {
            if !keep(&id, &f) {
                tracing::info!(file = %f, tenant = %name, "removing {what} file not in the manifest");
                fs.remove(&dir.join(&f))?;
            }
        }
    }
    Ok(())
}

/// Deletes segment files the manifest does not name (left by a crash mid-checkpoint).
pub fn remove_orphans(
    fs: &dyn FileSystem,
    dirs: &Dirs,
    tenants: &HashMap<TenantId, Arc<Tenant>>,
) -> Result<(), EngineError> {
    remove_unnamed(fs, &dirs.segments, tenants, "segment", |id, f| {
        tenants
            .get(id)
            .is_some_and(|t| t.state.read().segments.iter().any(|s| s.file == f))
    })
}

/// Snapshot files each tenant's manifest entry names.
pub fn snapshot_files(m: &Manifest) -> HashMap<TenantId, BTreeSet<String>> {
    m.tenants
        .iter()
        .map(|(id, t)| {
            let files = t.snapshot_files.values().map(|r| r.file.clone()).collect();
            (id.clone(), files)
        })
        .collect()
}

/// Deletes snapshot files the manifest does not name (written by a checkpoint that did not
/// get to write its manifest).
pub fn remove_orphan_snapshots(
    fs: &dyn FileSystem,
    dirs: &Dirs,
    named: &HashMap<TenantId, BTreeSet<String>>,
    tenants: &HashMap<TenantId, Arc<Tenant>>,
) -> Result<(), EngineError> {
    remove_unnamed(fs, &dirs.snapshots, tenants, "snapshot", |id, f| {
        named.get(id).is_some_and(|k| k.contains(f))
    })
}

/// Bookkeeping of the checkpointer.
pub(crate) struct CheckpointState {
    /// Files no longer in the manifest, deleted at the next checkpoint (readers that fetched
    /// the old segment list may still be reading them).
    graveyard: Vec<PathBuf>,
    /// Snapshot files the last manifest written names, per tenant.
    snapshot_files: HashMap<TenantId, BTreeSet<String>>,
}

impl CheckpointState {
    pub(crate) fn new(snapshot_files: HashMap<TenantId, BTreeSet<String>>) -> Self {
        Self {
            graveyard: Vec::new(),
            snapshot_files,
        }
    }
}

/// A pending snapshot a checkpoint wrote to its file.
struct WrittenSnapshot {
    stream: StreamId,
    lsn: u64,
    r: SnapshotRef,
}

/// What a checkpoint did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    /// WAL LSN covered by the manifest.
    pub checkpoint_lsn: u64,
    /// Segment files written.
    pub segments_written: usize,
    /// Events flushed to Parquet.
    pub events_flushed: u64,
    /// WAL files deleted.
    pub wal_files_removed: usize,
}

/// The file name of a segment of `incarnation` holding positions `first..=last`. Names of
/// incarnation 0 keep the format of nodes that predate incarnations (their files are still
/// named in manifests); later incarnations are prefixed, so no two incarnations share a name.
fn segment_name(incarnation: u64, first: u64, last: u64) -> String {
    if incarnation == 0 {
        format!("{first:020}-{last:020}.parquet")
    } else {
        format!("i{incarnation:020}-{first:020}-{last:020}.parquet")
    }
}

impl Inner {
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.wal_bytes_since_checkpoint() >= self.cfg.checkpoint_wal_bytes
            || self.pending_snapshot_bytes() >= self.cfg.checkpoint_snapshot_bytes
    }

    /// Bytes of snapshots every tenant holds in memory until the next checkpoint.
    pub(crate) fn pending_snapshot_bytes(&self) -> u64 {
        self.tenants
            .read()
            .values()
            .map(|t| t.state.read().pending_snapshot_bytes)
            .sum()
    }

    /// Writes a tenant's pending snapshots to their files (fsynced, then the directory once)
    /// and returns their references. The files are named in no manifest yet, so a crash
    /// before the manifest leaves orphans that the next open deletes.
    fn write_snapshots(
        &self,
        dirs: &Dirs,
        tenant: &TenantId,
        pending: Vec<(StreamId, u64, u64, Arc<Snapshot>)>,
    ) -> Result<Vec<WrittenSnapshot>, EngineError> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let dir = dirs.snapshots.join(tenant.as_str());
        if !self.fs.exists(&dir) {
            self.fs.create_dir_all(&dir)?;
            self.fs.sync_dir(&dirs.snapshots)?;
        }
        let mut out = Vec::with_capacity(pending.len());
        for (stream, lsn, ordinal, snap) in pending {
            let (bytes, r) =
                snapshots::encode(tenant, &snap, snapshots::file_name(lsn, ordinal))
                    .map_err(|e| EngineError::Manifest(format!("snapshot of {stream}: {e}")))?;
            drop(snap);
            self.fs.write_synced(&dir.join(&r.file), &bytes)?;
            out.push(WrittenSnapshot { stream, lsn, r });
        }
        self.fs.sync_dir(&dir)?;
        Ok(out)
    }

    /// The byte bound of a row group: the configured one, and at most a quarter of the cache,
    /// so that row groups of any size of events still fit the cache a few at a time.
    fn row_group_bytes(&self) -> u64 {
        let cache = self.cfg.limits.cache_bytes as u64;
        self.cfg.row_group_bytes.min(cache / 4).max(1)
    }

    /// Writes a segment file durably and returns its manifest entry.
    fn write_segment(
        &self,
        dirs: &Dirs,
        tenant: &TenantId,
        incarnation: u64,
        events: &[Arc<RecordedEvent>],
    ) -> Result<Option<SegmentMeta>, EngineError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(None);
        };
        let (bytes, row_groups) =
            segment::encode(events, self.cfg.row_group_rows, self.row_group_bytes())?;
        let dir = dirs.segments.join(tenant.as_str());
        if !self.fs.exists(&dir) {
            self.fs.create_dir_all(&dir)?;
            self.fs.sync_dir(&dirs.segments)?;
        }
        let file = segment_name(incarnation, first.position, last.position);
        write_atomic(self.fs.as_ref(), &dir.join(&file), &bytes)?;
        Ok(Some(SegmentMeta {
            file,
            first_position: first.position,
            last_position: last.position,
            rows: events.len() as u64,
            bytes: bytes.len() as u64,
            row_groups,
        }))
    }

    /// Deletes the segment files of a purged tenant (every file its state no longer names),
    /// before the checkpoint writes new ones. Deleting before the manifest drops them is safe:
    /// the purge record is durable, so a restart replays it and never reads them.
    fn sweep_purged(
        &self,
        dirs: &Dirs,
        id: &TenantId,
        t: &Tenant,
        ck: &mut CheckpointState,
    ) -> Result<(), EngineError> {
        let (keep, keep_snapshots): (Vec<String>, Vec<String>) = {
            let mut st = t.state.write();
            if !std::mem::take(&mut st.sweep) {
                return Ok(());
            }
            let snaps = st
                .snapshots
                .values()
                .filter_map(|s| match s {
                    SnapshotSlot::Stored(r) => Some(r.file.clone()),
                    SnapshotSlot::Pending { .. } => None,
                })
                .collect();
            (st.segments.iter().map(|s| s.file.clone()).collect(), snaps)
        };
        let dir = dirs.segments.join(id.as_str());
        let snap_dir = dirs.snapshots.join(id.as_str());
        let result = (|| -> Result<usize, EngineError> {
            let mut removed = 0;
            for (dir, keep) in [(&dir, &keep), (&snap_dir, &keep_snapshots)] {
                let mut here = 0;
                for f in self.fs.list(dir).unwrap_or_default() {
                    if !keep.contains(&f) {
                        self.fs.remove(&dir.join(&f))?;
                        here += 1;
                    }
                }
                if here > 0 {
                    self.fs.sync_dir(dir)?;
                }
                removed += here;
            }
            Ok(removed)
        })();
        match result {
            Ok(removed) => {
                ck.graveyard
                    .retain(|p| !p.starts_with(&dir) && !p.starts_with(&snap_dir));
                self.cache.forget_under(&dir);
                tracing::info!(tenant = %id, files = removed, "purged tenant's segment files deleted");
                Ok(())
            }
            Err(e) => {
                t.state.write().sweep = true;
                Err(e)
            }
        }
    }

    /// Deletes a segment a checkpoint wrote for an incarnation purged meanwhile; when that
    /// fails, the next checkpoint's sweep deletes it (it is named in no live state).
    fn remove_erased_segment(&self, dirs: &Dirs, id: &TenantId, t: &Tenant, file: &str) {
        let path = dirs.segment_path(id, file);
        let removed = self
            .fs
            .remove(&path)
            .and_then(|()| self.fs.sync_dir(&dirs.segments.join(id.as_str())));
        match removed {
            Ok(()) => {
                tracing::info!(tenant = %id, %file, "segment of a tenant purged during the checkpoint deleted");
            }
            Err(e) => {
                tracing::warn!(tenant = %id, %file, error = %e, "could not delete a purged tenant's segment; the next checkpoint retries");
                t.state.write().sweep = true;
            }
        }
    }

    pub(crate) fn checkpoint(&self) -> Result<CheckpointReport, EngineError> {
        let mut ck = self.ckpt.lock();
        self.checkpoint_locked(&mut ck)
    }

    /// Runs a checkpoint if `due` still holds once no other checkpoint runs (writers that
    /// found memory over its bound call this; the first one checkpoints, the others find
    /// room once it is done).
    pub(crate) fn checkpoint_if(&self, due: impl Fn(&Self) -> bool) -> Result<(), EngineError> {
        let mut ck = self.ckpt.lock();
        if due(self) {
            self.checkpoint_locked(&mut ck)?;
        }
        Ok(())
    }

    /// WAL bytes written since the last checkpoint started: what hot events and pending
    /// snapshots in memory add up to at most.
    pub(crate) fn wal_bytes_since_checkpoint(&self) -> u64 {
        self.wal.bytes_written().saturating_sub(
            self.wal_at_checkpoint
                .load(std::sync::atomic::Ordering::Acquire),
        )
    }

    fn checkpoint_locked(&self, ck: &mut CheckpointState) -> Result<CheckpointReport, EngineError> {
        let dirs = self.dirs.clone();
        let bytes_now = self.wal.bytes_written();
        // Capture the durable LSN first: every tenant state read afterwards includes it (its
        // records were applied before the WAL published it, or deferred and are applied by
        // `capture`).
        let lsn = self.wal.status().borrow().durable_lsn;
        self.wal.request_roll();
        let tenants: Vec<(TenantId, Arc<Tenant>)> = self
            .tenants
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut manifest = Manifest {
            format: 1,
            checkpoint_lsn: lsn,
            tenants: BTreeMap::new(),
        };
        for (id, t) in &tenants {
            self.sweep_purged(&dirs, id, t, ck)?;
        }
        let mut flushed = Vec::new();
        let mut report = CheckpointReport {
            checkpoint_lsn: lsn,
            ..Default::default()
        };
        let mut snapshots_written = Vec::new();
        for (id, t) in tenants {
            let (captured, hot) = capture(&t);
            let pending = captured.pending_snapshots();
            let mut state = captured.into_manifest();
            let written = self.write_snapshots(&dirs, &id, pending)?;
            for w in &written {
                state.snapshot_files.insert(w.stream.clone(), w.r.clone());
            }
            if !written.is_empty() {
                snapshots_written.push((t.clone(), state.incarnation, written));
            }
            let meta = self.write_segment(&dirs, &id, state.incarnation, &hot)?;
            if let Some(m) = &meta {
                state.segments.push(m.clone());
                report.segments_written += 1;
                report.events_flushed += hot.len() as u64;
                flushed.push((
                    id.clone(),
                    t.clone(),
                    state.incarnation,
                    m.clone(),
                    m.last_position + 1,
                ));
            }
            manifest.tenants.insert(id, state);
        }
        let json =
            serde_json::to_vec(&manifest).map_err(|e| EngineError::Manifest(e.to_string()))?;
        write_atomic(self.fs.as_ref(), &dirs.manifest, &json)?;
        // The manifest names the files now: the snapshots leave memory.
        for (t, incarnation, written) in snapshots_written {
            let mut st = t.state.write();
            for w in written {
                st.snapshot_stored(incarnation, &w.stream, w.lsn, w.r);
            }
        }
        // Snapshot files the previous manifest named and this one does not: replaced, or of a
        // purged tenant. Buried until the next checkpoint, as readers may hold a reference.
        let named = snapshot_files(&manifest);
        let mut buried = Vec::new();
        for (id, old) in std::mem::take(&mut ck.snapshot_files) {
            let now = named.get(&id);
            for f in old {
                if !now.is_some_and(|n| n.contains(&f)) {
                    buried.push(dirs.snapshot_path(&id, &f));
                }
            }
        }
        ck.snapshot_files = named;
        for (id, t, incarnation, meta, upto) in flushed {
            let mut st = t.state.write();
            if st.evict_flushed(incarnation, meta.clone(), upto) {
                continue;
            }
            // Purged while this checkpoint ran: the file holds erased events. The manifest just
            // written still names it, but the purge record is durable after `lsn` (it was not
            // applied when the tenant was read), so a restart replays it and never reads it.
            drop(st);
            self.remove_erased_segment(&dirs, &id, &t, &meta.file);
        }
        report.wal_files_removed = self.wal.remove_files_upto(self.fs.as_ref(), lsn)?;
        for f in std::mem::take(&mut ck.graveyard) {
            match self.fs.remove(&f) {
                Ok(()) => {}
                // A purged tenant's files go with the sweep already.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "could not delete an old file");
                }
            }
        }
        ck.graveyard.extend(buried);
        // Segments trimmed away are no longer in the manifest: bury them.
        for (id, t) in self.tenants.read().iter() {
            let mut st = t.state.write();
            let trimmed = st.trimmed_before;
            let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.segments)
                .into_iter()
                .partition(|s| s.last_position < trimmed);
            st.segments = keep;
            ck.graveyard
                .extend(gone.iter().map(|s| dirs.segment_path(id, &s.file)));
        }
        self.wal_at_checkpoint
            .store(bytes_now, std::sync::atomic::Ordering::Release);
        tracing::debug!(?report, "checkpoint written");
        Ok(report)
    }

    /// Merges each tenant's small segments into one; returns how many segments were merged.
    pub(crate) fn compact(&self) -> Result<usize, EngineError> {
        let tenants: Vec<(TenantId, Arc<Tenant>)> = self
            .tenants
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut merged_total = 0;
        for (id, t) in tenants {
            let (incarnation, small): (u64, Vec<SegmentMeta>) = {
                let st = t.state.read();
                let small: Vec<SegmentMeta> = st
                    .segments
                    .iter()
                    .filter(|s| s.bytes < self.cfg.compact_small_bytes)
                    .cloned()
                    .collect();
                if small.len() <= self.cfg.compact_min_segments.max(1) {
                    continue;
                }
                // Merge a contiguous run of small segments only, to keep position order.
                let first = st.segments.iter().position(|s| s == &small[0]);
                let Some(first) = first else { continue };
                // At most about two small segments' worth of file bytes per merge: what the
                // merge holds in memory is the merged file image and one row group.
                let cap = self.cfg.compact_small_bytes.saturating_mul(2);
                let mut total = 0u64;
                let run = st.segments[first..]
                    .iter()
                    .take_while(|s| s.bytes < self.cfg.compact_small_bytes)
                    .take_while(|s| {
                        total = total.saturating_add(s.bytes);
                        total <= cap
                    })
                    .cloned()
                    .collect();
                (st.incarnation, run)
            };
            if small.len() < 2 {
                continue;
            }
            let _ck = self.ckpt.lock();
            let dirs = self.dirs.clone();
            let first_position = small[0].first_position;
            let last_position = small[small.len() - 1].last_position;
            let name = format!(
                "c{}",
                segment_name(incarnation, first_position, last_position)
            );
            // One row group at a time: decode, keep the visible rows, encode.
            let mut w =
                segment::SegmentWriter::new(self.cfg.row_group_rows, self.row_group_bytes())?;
            let mut rows = 0u64;
            for s in &small {
                let file = self.fs.open_read(&dirs.segment_path(&id, &s.file))?;
                for g in 0..s.row_groups.len() {
                    let mut group = segment::decode_row_group(file.clone(), g)?;
                    {
                        let st = t.state.read();
                        group.retain(|r| st.visible(r));
                    }
                    for r in group {
                        w.push(r)?;
                        rows += 1;
                    }
                }
            }
            let new_meta = if w.is_empty() {
                None
            } else {
                let (bytes, mut row_groups) = w.finish()?;
                write_atomic(self.fs.as_ref(), &dirs.segment_path(&id, &name), &bytes)?;
                // Keep the covered range even when hidden rows at the edges were dropped.
                if let Some(g) = row_groups.first_mut() {
                    *g = first_position;
                }
                Some(SegmentMeta {
                    file: name,
                    first_position,
                    last_position,
                    rows,
                    bytes: bytes.len() as u64,
                    row_groups,
                })
            };
            // Swap in memory, then persist a manifest naming the new file. The entry on disk
            // must be of the same incarnation (a checkpoint writes it before attaching any
            // segment of a new incarnation, under the lock held here).
            let mut m = load_manifest(self.fs.as_ref(), &dirs)?;
            let on_disk = m.tenants.get(&id).map(|o| o.incarnation);
            let manifest_tenants;
            {
                let mut st = t.state.write();
                let start = st.segments.iter().position(|s| s == &small[0]);
                let end = start.map(|s| s + small.len());
                match (start, end) {
                    (Some(start), Some(end))
                        if st.incarnation == incarnation
                            && on_disk.is_none_or(|i| i == incarnation)
                            && st.segments.get(start..end) == Some(&small[..]) =>
                    {
                        st.segments.splice(start..end, new_meta.clone());
                        manifest_tenants = st.capture();
                    }
                    _ => {
                        // The segments changed meanwhile (a trim or a purge): the merged copy
                        // must not stay behind as an unlisted file holding their rows.
                        drop(st);
                        if let Some(m) = &new_meta {
                            self.fs.remove(&dirs.segment_path(&id, &m.file))?;
                        }
                        continue;
                    }
                }
            }
            m.tenants.insert(
                id.clone(),
                manifest_tenants_only_segments(
                    m.tenants.get(&id),
                    manifest_tenants.into_manifest(),
                ),
            );
            let json = serde_json::to_vec(&m).map_err(|e| EngineError::Manifest(e.to_string()))?;
            write_atomic(self.fs.as_ref(), &dirs.manifest, &json)?;
            drop(_ck);
            let mut ck = self.ckpt.lock();
            ck.graveyard
                .extend(small.iter().map(|s| dirs.segment_path(&id, &s.file)));
            merged_total += small.len();
        }
        Ok(merged_total)
    }
}

/// Hot events copied per hold of a tenant's read lock by [`capture`].
const HOT_COPY_CHUNK: u64 = 4096;

/// A tenant's committed state and its hot events, for a checkpoint. Deferred records are applied
/// first (so the state includes every record the WAL acknowledged before the call). The state is
/// copied in O(1) under the read lock; hot events are copied a chunk at a time, each chunk
/// under a short hold of the lock, so that a tenant with a large hot window or many streams
/// never holds off its own appends for long. Hot events are immutable and only leave the front
/// of the window, so the chunks stay consistent with the state copied first; a purge or a trim
/// that took events not yet copied makes it start again.
fn capture(t: &Tenant) -> (TenantCapture, Vec<Arc<RecordedEvent>>) {
    t.apply_deferred();
    'again: loop {
        let (captured, base, end) = {
            let st = t.state.read();
            (st.capture(), st.hot_base, st.committed_position)
        };
        let mut hot = Vec::with_capacity(end.saturating_sub(base) as usize);
        let mut p = base;
        while p < end {
            let st = t.state.read();
            if st.incarnation != captured.incarnation || st.hot_base > p {
                continue 'again;
            }
            let stop = end.min(p + HOT_COPY_CHUNK);
            while p < stop {
                let Some(ev) = st.hot_event(p) else {
                    continue 'again;
                };
                hot.push(ev.clone());
                p += 1;
            }
        }
        return (captured, hot);
    }
}

/// Compaction only changes the segment list: keep the rest of the manifest entry as the last
/// checkpoint wrote it (the WAL after that checkpoint still replays onto it).
fn manifest_tenants_only_segments(
    old: Option<&TenantManifest>,
    live: TenantManifest,
) -> TenantManifest {
    match old {
        Some(o) => TenantManifest {
            segments: live
                .segments
                .into_iter()
                .filter(|s| s.last_position < o.next_position)
                .collect(),
            ..o.clone()
        },
        None => TenantManifest {
            segments: Vec::new(),
            ..live
        },
    }
}
