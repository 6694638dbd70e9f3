//! The in-memory state of one tenant and the only code that changes it: reservation of
//! versions/positions for a write (expected-version and idempotency checks against the view
//! that includes writes still waiting for their fsync), and application of durable WAL records
//! (live commits and recovery replay share the same code). It must never do I/O and never make
//! a write visible to readers before the WAL acknowledged it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::snapshots::{SnapshotRef, SnapshotSlot};
use crate::error::StoreError;
use crate::index::{dedup, Dedup, StreamEntry, StreamMap};
use crate::model::{
    AppendResult, ExpectedVersion, NewEvent, RecordedEvent, Snapshot, StreamId, TenantId,
    TenantStats,
};
use crate::segment::SegmentMeta;
use crate::wal::WalRecord;

/// Latest snapshot per stream, persistent like [`StreamMap`] so that a checkpoint copies it in
/// O(1) under the tenant's lock.
pub type SnapshotMap = imbl::OrdMap<StreamId, SnapshotSlot>;

/// A batch of committed events, as broadcast to subscribers.
pub type CommittedBatch = Arc<[Arc<RecordedEvent>]>;

/// What a reservation decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Write a new batch at these coordinates.
    New {
        /// Version of the first event.
        first_version: u64,
        /// Position of the first event.
        first_position: u64,
    },
    /// Every id is already stored and committed: answer with the original result.
    Done(AppendResult),
    /// Every id is already reserved but not yet durable: wait for this LSN, then retry.
    WaitFor(u64),
}

/// The persisted part of a tenant (manifest entry).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantManifest {
    /// Incarnation of the tenant id on this node: 0 at first, one more after each purge.
    /// Segment files carry it in their names, and data of an older incarnation is never
    /// attached to a newer one.
    #[serde(default)]
    pub incarnation: u64,
    /// LSN of the last record applied.
    pub applied_lsn: u64,
    /// Next position to commit.
    pub next_position: u64,
    /// Positions below are trimmed.
    pub trimmed_before: u64,
    /// Visible events (approximate after trims).
    pub events: u64,
    /// Approximate bytes of visible events.
    pub bytes: u64,
    /// Streams.
    pub streams: StreamMap,
    /// Snapshots inline, as manifests before snapshot files carried them: read (and moved to
    /// files at the next checkpoint), always written empty, so that an older node still parses
    /// the manifest.
    #[serde(default)]
    pub snapshots: BTreeMap<StreamId, Snapshot>,
    /// Latest snapshot per stream, each in its file under `snapshots/<tenant>/`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshot_files: BTreeMap<StreamId, SnapshotRef>,
    /// Parquet segments, in position order.
    pub segments: Vec<SegmentMeta>,
}

/// A tenant's committed state as [`TenantState::capture`] copied it under the tenant's lock; it
/// becomes a manifest entry outside the lock.
#[derive(Debug, Clone)]
pub struct TenantCapture {
    /// See [`TenantManifest::incarnation`].
    pub incarnation: u64,
    applied_lsn: u64,
    next_position: u64,
    trimmed_before: u64,
    events: u64,
    bytes: u64,
    streams: StreamMap,
    snapshots: SnapshotMap,
    /// Parquet segments, in position order.
    pub segments: Vec<SegmentMeta>,
}

impl TenantCapture {
    /// Snapshots still only in the WAL and in memory: (stream, lsn, ordinal, snapshot).
    pub fn pending_snapshots(&self) -> Vec<(StreamId, u64, u64, Arc<Snapshot>)> {
        self.snapshots
            .iter()
            .filter_map(|(k, v)| match v {
                SnapshotSlot::Pending {
                    lsn,
                    ordinal,
                    snapshot,
                } => Some((k.clone(), *lsn, *ordinal, snapshot.clone())),
                SnapshotSlot::Stored(_) => None,
            })
            .collect()
    }

    /// The manifest entry. Pending snapshots are not in it: the checkpoint adds them once their
    /// files are written.
    pub fn into_manifest(self) -> TenantManifest {
        TenantManifest {
            incarnation: self.incarnation,
            applied_lsn: self.applied_lsn,
            next_position: self.next_position,
            trimmed_before: self.trimmed_before,
            events: self.events,
            bytes: self.bytes,
            streams: self.streams,
            snapshots: BTreeMap::new(),
            snapshot_files: self
                .snapshots
                .iter()
                .filter_map(|(k, v)| match v {
                    SnapshotSlot::Stored(r) => Some((k.clone(), r.clone())),
                    SnapshotSlot::Pending { .. } => None,
                })
                .collect(),
            segments: self.segments,
        }
    }
}

/// The live state of a tenant.
#[derive(Debug)]
pub struct TenantState {
    /// Tenant id.
    pub id: TenantId,
    /// Incarnation of the tenant id (see [`TenantManifest::incarnation`]).
    pub incarnation: u64,
    /// LSN of the last record applied.
    pub applied_lsn: u64,
    /// Next position to hand out (counting writes not yet durable).
    pub next_position: u64,
    /// Every position below is committed and readable.
    pub committed_position: u64,
    /// Positions below are trimmed (archived).
    pub trimmed_before: u64,
    /// Streams.
    pub streams: StreamMap,
    /// Streams that exist (committed view).
    pub live_streams: u64,
    /// Committed events not yet in a segment: `hot[i].position == hot_base + i`.
    pub hot: VecDeque<Arc<RecordedEvent>>,
    /// Position of `hot[0]`.
    pub hot_base: u64,
    /// Parquet segments, in position order; they hold every position in
    /// `[trimmed_before, hot_base)` that is not hidden.
    pub segments: Vec<SegmentMeta>,
    /// Latest snapshot per stream: in its file, or pending (in the WAL and in memory) until
    /// the next checkpoint writes it.
    pub snapshots: SnapshotMap,
    /// Sum of the sizes of `snapshots` (stats and storage quota).
    pub snapshot_bytes: u64,
    /// Sum of the sizes of the pending `snapshots` (held in memory).
    pub pending_snapshot_bytes: u64,
    /// Visible events.
    pub events: u64,
    /// Approximate bytes of visible events.
    pub bytes: u64,
    /// A purge record is in the WAL but not applied yet: new reservations are refused, so
    /// nothing reserved against the old state can be applied after the reset.
    pub purge_pending: bool,
    /// A purge was applied: the tenant's segment directory may hold files of the erased data,
    /// which the next checkpoint deletes before it writes any new segment of the tenant.
    pub sweep: bool,
}

impl TenantState {
    /// A tenant with no data.
    pub fn new(id: TenantId) -> Self {
        Self::from_manifest(id, TenantManifest::default())
    }

    /// Restores a tenant from its manifest entry.
    pub fn from_manifest(id: TenantId, m: TenantManifest) -> Self {
        let mut live = 0;
        let streams: StreamMap = m
            .streams
            .into_iter()
            .map(|(k, mut e)| {
                e.reset_reserved();
                live += u64::from(e.live());
                (k, e)
            })
            .collect();
        let mut snapshots: SnapshotMap = m
            .snapshot_files
            .into_iter()
            .map(|(k, r)| (k, SnapshotSlot::Stored(r)))
            .collect();
        // Inline snapshots of an old manifest: pending until the next checkpoint writes them.
        for (i, (k, snap)) in m.snapshots.into_iter().enumerate() {
            snapshots.insert(
                k,
                SnapshotSlot::Pending {
                    lsn: m.applied_lsn,
                    ordinal: i as u64 + 1,
                    snapshot: Arc::new(snap),
                },
            );
        }
        let snapshot_bytes = snapshots.values().map(SnapshotSlot::size).sum();
        let pending_snapshot_bytes = snapshots.values().map(SnapshotSlot::resident).sum();
        Self {
            id,
            incarnation: m.incarnation,
            applied_lsn: m.applied_lsn,
            next_position: m.next_position,
            committed_position: m.next_position,
            trimmed_before: m.trimmed_before,
            streams,
            live_streams: live,
            hot: VecDeque::new(),
            hot_base: m.next_position,
            segments: m.segments,
            snapshots,
            snapshot_bytes,
            pending_snapshot_bytes,
            events: m.events,
            bytes: m.bytes,
            purge_pending: false,
            sweep: false,
        }
    }

    /// A copy of the committed state for a manifest entry: O(1) for the stream and snapshot
    /// maps (persistent), O(segments) for the segment list, so that taking it under the
    /// tenant's lock never stalls the tenant's appends, whatever the number of its streams.
    pub fn capture(&self) -> TenantCapture {
        TenantCapture {
            incarnation: self.incarnation,
            applied_lsn: self.applied_lsn,
            next_position: self.committed_position,
            trimmed_before: self.trimmed_before,
            events: self.events,
            bytes: self.bytes,
            streams: self.streams.clone(),
            snapshots: self.snapshots.clone(),
            segments: self.segments.clone(),
        }
    }

    /// Usage figures.
    pub fn stats(&self) -> TenantStats {
        TenantStats {
            events: self.events,
            streams: self.live_streams,
            bytes: self.bytes,
            snapshot_bytes: self.snapshot_bytes,
            next_position: self.committed_position,
            incarnation: self.incarnation,
            trimmed_before: self.trimmed_before,
        }
    }

    /// Refuses new work while a purge of the tenant waits for its fsync.
    pub fn check_not_purging(&self) -> Result<(), StoreError> {
        if self.purge_pending {
            return Err(StoreError::Unavailable(format!(
                "tenant {} is being purged",
                self.id
            )));
        }
        Ok(())
    }

    /// Checks idempotency and the expected version, and reserves coordinates for `events`.
    pub fn reserve_append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Reservation, StoreError> {
        self.check_not_purging()?;
        let n = events.len() as u64;
        let entry = self.streams.get(stream);
        if let Some(e) = entry {
            match dedup(e, events.iter().map(|x| x.event_id)) {
                Dedup::New => {}
                Dedup::Mismatch => {
                    return Err(StoreError::Conflict {
                        current: e.reserved_current(),
                    })
                }
                Dedup::Retry { first_version } => {
                    if first_version + n > e.next_version {
                        return Ok(Reservation::WaitFor(e.last_lsn));
                    }
                    let first_position = e.positions.position_of(first_version);
                    let last_position = e.positions.position_of(first_version + n - 1);
                    if let (Some(fp), Some(lp)) = (first_position, last_position) {
                        return Ok(Reservation::Done(AppendResult {
                            first_version,
                            last_version: first_version + n - 1,
                            first_position: fp,
                            last_position: lp,
                            deduplicated: true,
                        }));
                    }
                    return Err(StoreError::Conflict {
                        current: e.reserved_current(),
                    });
                }
            }
        }
        let current = entry.and_then(StreamEntry::reserved_current);
        let ok = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::StreamExists => current.is_some(),
            ExpectedVersion::Exact(v) => current == Some(v),
        };
        if !ok {
            return Err(StoreError::Conflict { current });
        }
        let first_position = self.next_position;
        let e = self.streams.entry(stream.clone()).or_default();
        let first_version = e.reserved_next;
        for (i, ev) in events.iter().enumerate() {
            e.recent_ids.insert(ev.event_id, first_version + i as u64);
        }
        e.reserved_next += n;
        e.reserved_deleted = false;
        self.next_position += n;
        Ok(Reservation::New {
            first_version,
            first_position,
        })
    }

    /// Applies a durable record. `replay` is true during recovery, where no reservation was
    /// made beforehand. Returns the events to broadcast, if any.
    pub fn apply(&mut self, lsn: u64, rec: WalRecord, replay: bool) -> Option<CommittedBatch> {
        if lsn <= self.applied_lsn {
            return None;
        }
        self.applied_lsn = lsn;
        match rec {
            WalRecord::Append {
                tenant: _,
                stream,
                first_version,
                first_position,
                timestamp_ms,
                events,
            } => {
                if first_position != self.committed_position {
                    tracing::error!(
                        tenant = %self.id,
                        expected = self.committed_position,
                        got = first_position,
                        "append record out of position order; skipped"
                    );
                    return None;
                }
                let n = events.len() as u64;
                let e = self.streams.entry(stream.clone()).or_default();
                let was_live = e.live();
                if replay {
                    for (i, ev) in events.iter().enumerate() {
                        e.recent_ids.insert(ev.event_id, first_version + i as u64);
                    }
                }
                e.positions.push(first_version, first_position, n);
                e.next_version = first_version + n;
                e.deleted = false;
                if replay {
                    e.reset_reserved();
                    e.last_lsn = lsn;
                }
                let live_now = e.live();
                let mut batch = Vec::with_capacity(events.len());
                let mut bytes = 0;
                for (i, ev) in events.into_iter().enumerate() {
                    let rec = Arc::new(RecordedEvent {
                        tenant: self.id.clone(),
                        stream: stream.clone(),
                        version: first_version + i as u64,
                        position: first_position + i as u64,
                        event_id: ev.event_id,
                        event_type: ev.event_type,
                        payload: ev.payload,
                        metadata: ev.metadata,
                        timestamp_ms,
                    });
                    bytes += rec.size_bytes();
                    self.hot.push_back(rec.clone());
                    batch.push(rec);
                }
                if !was_live && live_now {
                    self.live_streams += 1;
                }
                self.committed_position = first_position + n;
                if replay {
                    self.next_position = self.committed_position;
                }
                self.events += n;
                self.bytes += bytes;
                Some(batch.into())
            }
            WalRecord::Delete { stream, .. } => {
                if let Some(e) = self.streams.get(&stream) {
                    let until = e.next_version;
                    self.hide_below(&stream, until);
                }
                if let Some(e) = self.streams.get_mut(&stream) {
                    if e.live() {
                        self.live_streams -= 1;
                    }
                    e.deleted = true;
                    e.recent_ids.clear();
                    if replay {
                        e.reset_reserved();
                    }
                }
                None
            }
            WalRecord::Truncate { stream, before, .. } => {
                self.hide_below(&stream, before);
                if let Some(e) = self.streams.get_mut(&stream) {
                    let floor = e.first_version;
                    e.recent_ids.retain(|_, v| *v >= floor);
                }
                None
            }
            WalRecord::TrimTenant { before, .. } => {
                self.trim(before);
                None
            }
            WalRecord::Snapshot { snapshot, .. } => {
                let size = snapshot.size_bytes();
                let stream = snapshot.stream.clone();
                let slot = SnapshotSlot::Pending {
                    lsn,
                    ordinal: 0,
                    snapshot: Arc::new(snapshot),
                };
                if let Some(old) = self.snapshots.insert(stream, slot) {
                    self.snapshot_bytes = self.snapshot_bytes.saturating_sub(old.size());
                    self.pending_snapshot_bytes =
                        self.pending_snapshot_bytes.saturating_sub(old.resident());
                }
                self.snapshot_bytes += size;
                self.pending_snapshot_bytes += size;
                None
            }
            WalRecord::PurgeTenant { .. } => {
                self.purge();
                None
            }
        }
    }

    /// Forgets everything of the tenant: streams, indexes, hot events, snapshots, segments and
    /// counters; positions start again at 0 in a new incarnation. Reservations cannot be
    /// outstanding here (they are refused while `purge_pending`), so restarting the numbering
    /// is safe; a checkpoint that read the old incarnation cannot attach its segment to the
    /// new one (see [`TenantState::evict_flushed`]).
    fn purge(&mut self) {
        let applied_lsn = self.applied_lsn;
        let incarnation = self.incarnation + 1;
        *self = Self::new(self.id.clone());
        self.applied_lsn = applied_lsn;
        self.incarnation = incarnation;
        self.sweep = true;
    }

    /// Hides a stream's versions below `before` and updates the counters.
    fn hide_below(&mut self, stream: &StreamId, before: u64) {
        let trimmed = self.trimmed_before;
        let Some(e) = self.streams.get_mut(stream) else {
            return;
        };
        let before = before.min(e.next_version);
        if before <= e.first_version {
            return;
        }
        let lo = e.first_version.max(
            e.positions
                .first_version_at_or_after(trimmed)
                .unwrap_or(u64::MAX),
        );
        let hidden = e.positions.count_between(lo, before);
        let old = self.events;
        self.events = self.events.saturating_sub(hidden);
        if old > 0 {
            self.bytes = (self.bytes as u128 * self.events as u128 / old as u128) as u64;
        }
        e.first_version = before;
        e.positions.forget_below(before);
    }

    /// Drops every position below `before` (after archival).
    fn trim(&mut self, before: u64) {
        let before = before.min(self.committed_position);
        if before <= self.trimmed_before {
            return;
        }
        let old_trim = self.trimmed_before;
        let mut dropped = 0;
        // Rare (once per archive run): rebuilding the persistent map is O(streams log streams).
        self.streams = std::mem::take(&mut self.streams)
            .into_iter()
            .map(|(k, mut e)| {
                let lo = e.first_version.max(
                    e.positions
                        .first_version_at_or_after(old_trim)
                        .unwrap_or(u64::MAX),
                );
                let hi = e
                    .positions
                    .first_version_at_or_after(before)
                    .unwrap_or(e.next_version);
                dropped += e.positions.count_between(lo, hi);
                e.positions.forget_below(hi);
                (k, e)
            })
            .collect();
        while self.hot.front().is_some_and(|h| h.position < before) {
            if let Some(h) = self.hot.pop_front() {
                if let Some(e) = self.streams.get_mut(&h.stream) {
                    e.recent_ids.remove(&h.event_id);
                }
            }
        }
        self.hot_base = self.hot_base.max(before);
        let old = self.events;
        self.events = self.events.saturating_sub(dropped);
        if old > 0 {
            self.bytes = (self.bytes as u128 * self.events as u128 / old as u128) as u64;
        }
        self.trimmed_before = before;
    }

    /// [`StoreError::Archived`] when a tenant read or subscription starting at `from` would
    /// begin in the archived (trimmed) range.
    pub fn check_not_archived(&self, from: u64) -> Result<(), crate::error::StoreError> {
        if from < self.trimmed_before {
            return Err(crate::error::StoreError::Archived {
                first_available: self.trimmed_before,
                incarnation: self.incarnation,
                of_stream: false,
            });
        }
        Ok(())
    }

    /// Whether a committed event is visible to readers.
    pub fn visible(&self, ev: &RecordedEvent) -> bool {
        ev.position >= self.trimmed_before
            && ev.position < self.committed_position
            && self
                .streams
                .get(&ev.stream)
                .is_some_and(|s| ev.version >= s.first_version)
    }

    /// The hot event at a position, if it is still in memory.
    pub fn hot_event(&self, position: u64) -> Option<&Arc<RecordedEvent>> {
        position
            .checked_sub(self.hot_base)
            .and_then(|i| self.hot.get(i as usize))
    }

    /// Marks a pending snapshot as written to its file, unless a newer one (or a purge)
    /// replaced it meanwhile.
    pub fn snapshot_stored(
        &mut self,
        incarnation: u64,
        stream: &StreamId,
        lsn: u64,
        r: SnapshotRef,
    ) {
        if incarnation != self.incarnation {
            return;
        }
        if let Some(slot) = self.snapshots.get_mut(stream) {
            if matches!(slot, SnapshotSlot::Pending { lsn: l, .. } if *l == lsn) {
                self.pending_snapshot_bytes =
                    self.pending_snapshot_bytes.saturating_sub(slot.resident());
                *slot = SnapshotSlot::Stored(r);
            }
        }
    }

    /// Moves the hot window past `upto` after those events were flushed to `segment`, which
    /// holds events of `incarnation`. Returns false, changing nothing, when the tenant was
    /// purged since they were read: the segment holds erased data and must be deleted.
    #[must_use]
    pub fn evict_flushed(&mut self, incarnation: u64, segment: SegmentMeta, upto: u64) -> bool {
        if incarnation != self.incarnation {
            return false;
        }
        self.segments.push(segment);
        while self.hot.front().is_some_and(|h| h.position < upto) {
            if let Some(h) = self.hot.pop_front() {
                if let Some(e) = self.streams.get_mut(&h.stream) {
                    e.recent_ids.remove(&h.event_id);
                }
            }
        }
        self.hot_base = self.hot_base.max(upto);
        true
    }
}
