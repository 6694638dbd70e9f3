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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::tenant::TenantManifest;
use super::{EngineError, Inner, Tenant};
use crate::fsio::{write_atomic, FileSystem};
use crate::model::{RecordedEvent, TenantId};
use crate::segment::{self, SegmentMeta};

/// Directory layout of the data directory.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// `wal/`
    pub wal: PathBuf,
    /// `segments/` (one sub-directory per tenant)
    pub segments: PathBuf,
    /// `manifest.json`
    pub manifest: PathBuf,
}

impl Dirs {
    /// The layout under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            wal: data_dir.join("wal"),
            segments: data_dir.join("segments"),
            manifest: data_dir.join("manifest.json"),
        }
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

/// Deletes segment files the manifest does not name (left by a crash mid-checkpoint).
pub fn remove_orphans(
    fs: &dyn FileSystem,
    dirs: &Dirs,
    tenants: &HashMap<TenantId, Arc<Tenant>>,
) -> Result<(), EngineError> {
    // Known tenants too: a file system may not list directories (SimFs does not).
    let mut names: std::collections::BTreeSet<String> = fs
        .list(&dirs.segments)
        .unwrap_or_default()
        .into_iter()
        .collect();
    names.extend(tenants.keys().map(|t| t.as_str().to_string()));
    for name in names {
        let Ok(id) = TenantId::new(name.clone()) else {
            continue;
        };
        let dir = dirs.segments.join(&name);
        let known: Vec<String> = tenants
            .get(&id)
            .map(|t| {
                t.state
                    .read()
                    .segments
                    .iter()
                    .map(|s| s.file.clone())
                    .collect()
            })
            .unwrap_or_default();
        for f in fs.list(&dir).unwrap_or_default() {
            if !known.contains(&f) {
                tracing::info!(file = %f, tenant = %name, "removing segment file not in the manifest");
                fs.remove(&dir.join(&f))?;
            }
        }
    }
    Ok(())
}

/// Bookkeeping of the checkpointer.
pub(crate) struct CheckpointState {
    wal_bytes_at_last: u64,
    /// Files no longer in the manifest, deleted at the next checkpoint (readers that fetched
    /// the old segment list may still be reading them).
    graveyard: Vec<PathBuf>,
}

impl CheckpointState {
    pub(crate) fn new() -> Self {
        Self {
            wal_bytes_at_last: 0,
            graveyard: Vec::new(),
        }
    }
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
        let written = self.wal.bytes_written();
        written.saturating_sub(self.ckpt.lock().wal_bytes_at_last) >= self.cfg.checkpoint_wal_bytes
    }

    /// Writes a segment file durably and returns its manifest entry.
    fn write_segment(
        &self,
        dirs: &Dirs,
        tenant: &TenantId,
        incarnation: u64,
        events: &[Arc<RecordedEvent>],
        name: Option<String>,
    ) -> Result<Option<SegmentMeta>, EngineError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(None);
        };
        let (bytes, row_groups) = segment::encode(events, self.cfg.row_group_rows)?;
        let dir = dirs.segments.join(tenant.as_str());
        if !self.fs.exists(&dir) {
            self.fs.create_dir_all(&dir)?;
            self.fs.sync_dir(&dirs.segments)?;
        }
        let file = name.unwrap_or_else(|| segment_name(incarnation, first.position, last.position));
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
        let keep: Vec<String> = {
            let mut st = t.state.write();
            if !std::mem::take(&mut st.sweep) {
                return Ok(());
            }
            st.segments.iter().map(|s| s.file.clone()).collect()
        };
        let dir = dirs.segments.join(id.as_str());
        let result = (|| -> Result<usize, EngineError> {
            let mut removed = 0;
            for f in self.fs.list(&dir).unwrap_or_default() {
                if !keep.contains(&f) {
                    self.fs.remove(&dir.join(&f))?;
                    removed += 1;
                }
            }
            if removed > 0 {
                self.fs.sync_dir(&dir)?;
            }
            Ok(removed)
        })();
        match result {
            Ok(removed) => {
                ck.graveyard.retain(|p| !p.starts_with(&dir));
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
        let dirs = self.dirs.clone();
        let bytes_now = self.wal.bytes_written();
        // Capture the durable LSN first: every tenant state read afterwards includes it.
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
            self.sweep_purged(&dirs, id, t, &mut ck)?;
        }
        let mut flushed = Vec::new();
        let mut report = CheckpointReport {
            checkpoint_lsn: lsn,
            ..Default::default()
        };
        for (id, t) in tenants {
            let (hot, state) = {
                let st = t.state.read();
                let hot: Vec<Arc<RecordedEvent>> = st.hot.iter().cloned().collect();
                (hot, st.to_manifest(None))
            };
            let meta = self.write_segment(&dirs, &id, state.incarnation, &hot, None)?;
            let mut state = state;
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
            if let Err(e) = self.fs.remove(&f) {
                tracing::warn!(file = %f.display(), error = %e, "could not delete old segment");
            }
        }
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
        ck.wal_bytes_at_last = bytes_now;
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
                let run = st.segments[first..]
                    .iter()
                    .take_while(|s| s.bytes < self.cfg.compact_small_bytes)
                    .cloned()
                    .collect();
                (st.incarnation, run)
            };
            if small.len() < 2 {
                continue;
            }
            let _ck = self.ckpt.lock();
            let dirs = self.dirs.clone();
            let mut rows = Vec::new();
            for s in &small {
                let bytes = self.fs.read(&dirs.segment_path(&id, &s.file))?;
                rows.extend(segment::decode(bytes::Bytes::from(bytes), None)?);
            }
            {
                let st = t.state.read();
                rows.retain(|r| st.visible(r));
            }
            let first_position = small[0].first_position;
            let last_position = small[small.len() - 1].last_position;
            let name = format!(
                "c{}",
                segment_name(incarnation, first_position, last_position)
            );
            let new_meta = self
                .write_segment(&dirs, &id, incarnation, &rows, Some(name))?
                .map(|mut m| {
                    // Keep the covered range even when hidden rows at the edges were dropped.
                    m.first_position = first_position;
                    m.last_position = last_position;
                    if let Some(g) = m.row_groups.first_mut() {
                        *g = first_position;
                    }
                    m
                });
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
                        manifest_tenants = st.to_manifest(None);
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
                manifest_tenants_only_segments(m.tenants.get(&id), manifest_tenants),
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
