//! Reads that span hot memory and Parquet segments. Hot events are copied out under the
//! tenant's read lock (never waiting on an fsync: the writer holds the lock only to apply an
//! already durable group); cold events are fetched after the lock is released, through the row
//! group cache. Reads must never show an event that is not committed or is hidden (truncated,
//! deleted, trimmed).

use std::sync::Arc;

use super::tenant::TenantState;
use super::Inner;
use crate::backend::StoreResult;
use crate::error::StoreError;
use crate::model::{Direction, ReadFrom, RecordedEvent, StreamId, TenantId};
use crate::segment::SegmentMeta;

fn segment_for(segments: &[SegmentMeta], position: u64) -> Option<&SegmentMeta> {
    let i = segments.partition_point(|s| s.last_position < position);
    segments.get(i).filter(|s| s.first_position <= position)
}

impl Inner {
    fn cold_rows(
        &self,
        tenant: &TenantId,
        seg: &SegmentMeta,
        position: u64,
    ) -> StoreResult<Option<(super::cache::Rows, usize)>> {
        let Some(g) = seg.row_group_of(position) else {
            return Ok(None);
        };
        let path = self.dirs.segment_path(tenant, &seg.file);
        let rows = self
            .cache
            .row_group(self.fs.as_ref(), &path, g)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let i = rows.partition_point(|r| r.position < position);
        Ok(Some((rows, i)))
    }

    fn cold_event(
        &self,
        tenant: &TenantId,
        seg: &SegmentMeta,
        position: u64,
    ) -> StoreResult<Arc<RecordedEvent>> {
        match self.cold_rows(tenant, seg, position)? {
            Some((rows, i)) if rows.get(i).is_some_and(|r| r.position == position) => {
                Ok(rows[i].clone())
            }
            _ => Err(StoreError::Internal(format!(
                "position {position} missing from segment {}",
                seg.file
            ))),
        }
    }

    /// Versions to read, in order, clamped to what is visible.
    fn stream_versions(
        st: &TenantState,
        stream: &StreamId,
        from: ReadFrom,
        direction: Direction,
        limit: usize,
    ) -> StoreResult<Vec<(u64, u64)>> {
        let e = st
            .streams
            .get(stream)
            .filter(|e| e.next_version > 0)
            .ok_or_else(|| StoreError::NotFound(format!("stream {stream}")))?;
        if e.deleted {
            return Err(StoreError::StreamDeleted(stream.to_string()));
        }
        let hi = e.next_version;
        let lo = e.first_version.max(
            e.positions
                .first_version_at_or_after(st.trimmed_before)
                .unwrap_or(hi),
        );
        // Versions in [first_version, lo) were archived and trimmed (truncation moves
        // first_version itself): a page starting there would silently skip them.
        let start = match (direction, from) {
            (Direction::Forwards, ReadFrom::Edge) => e.first_version,
            (Direction::Forwards, ReadFrom::Version(v)) => v.max(e.first_version),
            (Direction::Backwards, ReadFrom::Edge) => hi.saturating_sub(1),
            (Direction::Backwards, ReadFrom::Version(v)) => v.min(hi.saturating_sub(1)),
        };
        if lo > e.first_version && start < lo && start >= e.first_version {
            return Err(StoreError::Archived {
                first_available: lo,
                incarnation: st.incarnation,
                of_stream: true,
            });
        }
        let mut out = Vec::with_capacity(limit.min((hi - lo.min(hi)) as usize));
        let mut push = |v: u64| {
            if let Some(p) = e.positions.position_of(v) {
                out.push((v, p));
            }
        };
        match direction {
            Direction::Forwards => {
                let start = match from {
                    ReadFrom::Edge => lo,
                    ReadFrom::Version(v) => v.max(lo),
                };
                (start..hi).take(limit).for_each(&mut push);
            }
            Direction::Backwards => {
                if hi > lo {
                    let start = match from {
                        ReadFrom::Edge => hi - 1,
                        ReadFrom::Version(v) => v.min(hi - 1),
                    };
                    if start >= lo {
                        (lo..=start).rev().take(limit).for_each(&mut push);
                    }
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        from: ReadFrom,
        direction: Direction,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        let t = self
            .tenant(tenant)
            .ok_or_else(|| StoreError::NotFound(format!("stream {stream}")))?;
        // The versions to read are fixed under the lock; events are then taken in order until
        // the page's byte budget is spent. Hot ones are copied under the lock (a run at a
        // time), cold ones are fetched through the row-group cache with the lock released.
        let versions = Self::stream_versions(&t.state.read(), stream, from, direction, limit)?;
        let mut budget = self.cfg.limits.read_budget();
        let mut out: Vec<RecordedEvent> = Vec::new();
        let mut next = versions.iter().map(|(_, p)| *p).peekable();
        while budget.open() {
            let cold = {
                let st = t.state.read();
                let mut cold = None;
                while let Some(&p) = next.peek() {
                    match st.hot_event(p) {
                        Some(ev) => {
                            if !budget.admit(ev.size_bytes()) {
                                return Ok(out);
                            }
                            out.push(RecordedEvent::clone(ev));
                            next.next();
                        }
                        None => {
                            let seg = segment_for(&st.segments, p).cloned().ok_or_else(|| {
                                StoreError::Internal(format!("no segment holds position {p}"))
                            })?;
                            cold = Some((p, seg));
                            break;
                        }
                    }
                }
                cold
            };
            let Some((p, seg)) = cold else { break };
            let ev = self.cold_event(tenant, &seg, p)?;
            if !budget.admit(ev.size_bytes()) {
                break;
            }
            out.push(RecordedEvent::clone(&ev));
            next.next();
        }
        Ok(out)
    }

    pub(crate) fn visit_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        from: u64,
        limit: usize,
        mut f: impl FnMut(&RecordedEvent),
    ) -> StoreResult<usize> {
        let t = self
            .tenant(tenant)
            .ok_or_else(|| StoreError::NotFound(format!("stream {stream}")))?;
        let st = t.state.read();
        let e = st
            .streams
            .get(stream)
            .filter(|e| e.next_version > 0 && !e.deleted)
            .ok_or_else(|| StoreError::NotFound(format!("stream {stream}")))?;
        let lo = from.max(e.first_version);
        let mut n = 0;
        for v in (lo..e.next_version).take(limit) {
            let Some(p) = e.positions.position_of(v) else {
                continue;
            };
            if p < st.trimmed_before {
                continue;
            }
            match st.hot_event(p) {
                Some(ev) => f(ev),
                None => {
                    let seg = segment_for(&st.segments, p).cloned().ok_or_else(|| {
                        StoreError::Internal(format!("no segment holds position {p}"))
                    })?;
                    f(&*self.cold_event(tenant, &seg, p)?);
                }
            }
            n += 1;
        }
        Ok(n)
    }

    pub(crate) fn read_all(
        &self,
        tenant: &TenantId,
        from_position: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        let Some(t) = self.tenant(tenant) else {
            return Ok(Vec::new());
        };
        t.state.read().check_not_archived(from_position)?;
        let max_bytes = self.cfg.limits.max_read_bytes;
        self.read_all_upto(&t, from_position, u64::MAX, limit, max_bytes)
            .map(|v| v.into_iter().map(|e| RecordedEvent::clone(&e)).collect())
    }

    /// Visible events with `from <= position < upto`, at most `limit` and about `max_bytes`
    /// of them (at least one), in position order.
    pub(crate) fn read_all_upto(
        &self,
        t: &super::Tenant,
        from: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<Arc<RecordedEvent>>> {
        let mut out = Vec::new();
        let mut p = from;
        let id = t.state.read().id.clone();
        let mut budget = crate::model::ReadBudget::of(max_bytes);
        while out.len() < limit && budget.open() {
            let seg = {
                let st = t.state.read();
                p = p.max(st.trimmed_before);
                let end = st.committed_position.min(upto);
                if p >= end {
                    break;
                }
                if p >= st.hot_base {
                    while p < end && out.len() < limit {
                        if let Some(ev) = st.hot_event(p) {
                            if st.visible(ev) {
                                if !budget.admit(ev.size_bytes()) {
                                    break;
                                }
                                out.push(ev.clone());
                            }
                        }
                        p += 1;
                    }
                    break;
                }
                match segment_for(&st.segments, p).cloned() {
                    Some(s) => s,
                    None => {
                        // Nothing stored below the next segment (or the hot window).
                        let next = st
                            .segments
                            .iter()
                            .map(|s| s.first_position)
                            .find(|f| *f > p);
                        p = next.unwrap_or(st.hot_base).min(st.hot_base).max(p + 1);
                        continue;
                    }
                }
            };
            let Some((rows, i)) = self.cold_rows(&id, &seg, p)? else {
                p = seg.last_position + 1;
                continue;
            };
            let st = t.state.read();
            let end = st.committed_position.min(upto);
            for r in &rows[i..] {
                if out.len() >= limit || r.position >= end {
                    break;
                }
                if st.visible(r) {
                    if !budget.admit(r.size_bytes()) {
                        break;
                    }
                    out.push(r.clone());
                }
                p = r.position + 1;
            }
            if i >= rows.len() {
                // Nothing at or after p in this row group: continue with the next one.
                p = seg
                    .row_groups
                    .iter()
                    .copied()
                    .find(|f| *f > p)
                    .unwrap_or(seg.last_position + 1);
            }
        }
        Ok(out)
    }
}
