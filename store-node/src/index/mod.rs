//! In-memory indexes of the engine: per stream, version -> tenant position as run-length
//! encoded runs (a batch is one run, so the index stays small and is cheap to persist in the
//! manifest); per tenant, the ordered map of streams (so `list_streams` and `count_streams`
//! never scan events); per stream, recent event ids -> version for idempotent retries.
//! This module is pure data structure code: it must never do I/O or know about files.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::StreamId;

/// Consecutive versions stored at consecutive positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// First version of the run.
    pub v: u64,
    /// Position of that version.
    pub p: u64,
    /// Number of events.
    pub n: u64,
}

/// Version -> position map of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Positions {
    runs: Vec<Run>,
}

impl Positions {
    /// Adds `n` versions from `version` at positions from `position` (versions only grow).
    pub fn push(&mut self, version: u64, position: u64, n: u64) {
        if let Some(last) = self.runs.last_mut() {
            if last.v + last.n == version && last.p + last.n == position {
                last.n += n;
                return;
            }
        }
        self.runs.push(Run {
            v: version,
            p: position,
            n,
        });
    }

    /// Position of a version, if indexed.
    pub fn position_of(&self, version: u64) -> Option<u64> {
        let i = self.runs.partition_point(|r| r.v + r.n <= version);
        let r = self.runs.get(i)?;
        (r.v <= version).then(|| r.p + (version - r.v))
    }

    /// Forgets versions below `version` (whole runs only; reads filter the rest).
    pub fn forget_below(&mut self, version: u64) {
        let i = self.runs.partition_point(|r| r.v + r.n <= version);
        self.runs.drain(..i);
    }

    /// Smallest version whose position is >= `position` (None: all positions are below).
    pub fn first_version_at_or_after(&self, position: u64) -> Option<u64> {
        // Positions grow with versions, so runs are sorted by position too.
        let i = self.runs.partition_point(|r| r.p + r.n <= position);
        let r = self.runs.get(i)?;
        Some(if r.p >= position {
            r.v
        } else {
            r.v + (position - r.p)
        })
    }

    /// Number of runs (index size).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Number of indexed versions in `[from, to)`.
    pub fn count_between(&self, from: u64, to: u64) -> u64 {
        self.runs
            .iter()
            .map(|r| {
                let lo = r.v.max(from);
                let hi = (r.v + r.n).min(to);
                hi.saturating_sub(lo)
            })
            .sum()
    }
}

/// State of one stream. Fields without `serde(skip)` are the committed (acknowledged) view and
/// go into the manifest; `reserved_*` include appends still waiting for their fsync.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamEntry {
    /// Next version to commit (0: no event yet).
    pub next_version: u64,
    /// Events with a lower version are hidden (truncated or deleted).
    pub first_version: u64,
    /// Soft-deleted.
    pub deleted: bool,
    /// Version -> position.
    pub positions: Positions,
    /// Next version to hand out, counting appends not yet durable.
    #[serde(skip)]
    pub reserved_next: u64,
    /// Deleted, counting a delete not yet durable (an append clears it).
    #[serde(skip)]
    pub reserved_deleted: bool,
    /// LSN of the last record reserved for this stream.
    #[serde(skip)]
    pub last_lsn: u64,
    /// Event id -> version for events still in hot memory (the idempotency window).
    #[serde(skip)]
    pub recent_ids: HashMap<Uuid, u64>,
}

impl StreamEntry {
    /// Restores the reserved view after loading the committed view from a manifest.
    pub fn reset_reserved(&mut self) {
        self.reserved_next = self.next_version;
        self.reserved_deleted = self.deleted;
    }

    /// The current version as seen by expected-version checks (None: no stream).
    pub fn reserved_current(&self) -> Option<u64> {
        (!self.reserved_deleted && self.reserved_next > 0).then(|| self.reserved_next - 1)
    }

    /// Whether the stream exists in the committed view (has an event and is not deleted).
    pub fn live(&self) -> bool {
        !self.deleted && self.next_version > 0
    }
}

/// What the idempotency check found for a batch of event ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedup {
    /// None of the ids is known.
    New,
    /// All ids are known, at consecutive versions from this one.
    Retry {
        /// Version of the first event.
        first_version: u64,
    },
    /// Some ids are known and some are not, or they are not in batch order.
    Mismatch,
}

/// Checks a batch's ids against the stream's idempotency window.
pub fn dedup(entry: &StreamEntry, ids: impl Iterator<Item = Uuid>) -> Dedup {
    let mut first = None;
    let mut known = 0usize;
    let mut total = 0usize;
    let mut ordered = true;
    for (i, id) in ids.enumerate() {
        total += 1;
        if let Some(v) = entry.recent_ids.get(&id) {
            known += 1;
            match first {
                None if i == 0 => first = Some(*v),
                Some(f) if f + i as u64 == *v => {}
                _ => ordered = false,
            }
        }
    }
    match (known, first) {
        (0, _) => Dedup::New,
        (k, Some(first_version)) if k == total && ordered => Dedup::Retry { first_version },
        _ => Dedup::Mismatch,
    }
}

/// Streams of a tenant in id order. A persistent map: a clone is O(1) and shares the tree, and a
/// change after a clone copies only the path to the changed entry, so a checkpoint copies a
/// tenant with a million streams under its lock as fast as one with a single stream.
pub type StreamMap = imbl::OrdMap<StreamId, StreamEntry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_and_look_up() {
        let mut p = Positions::default();
        p.push(0, 10, 3);
        p.push(3, 13, 2);
        p.push(5, 40, 1);
        assert_eq!(p.runs(), 2);
        assert_eq!(p.position_of(0), Some(10));
        assert_eq!(p.position_of(4), Some(14));
        assert_eq!(p.position_of(5), Some(40));
        assert_eq!(p.position_of(6), None);
        assert_eq!(p.first_version_at_or_after(12), Some(2));
        assert_eq!(p.first_version_at_or_after(20), Some(5));
        assert_eq!(p.first_version_at_or_after(41), None);
        assert_eq!(p.count_between(2, 6), 4);
        p.forget_below(5);
        assert_eq!(p.position_of(0), None);
        assert_eq!(p.position_of(5), Some(40));
    }

    #[test]
    fn dedup_classifies_batches() {
        let mut e = StreamEntry::default();
        let ids: Vec<Uuid> = (1..=3).map(Uuid::from_u128).collect();
        e.recent_ids.insert(ids[0], 7);
        e.recent_ids.insert(ids[1], 8);
        assert_eq!(
            dedup(&e, ids[..2].iter().copied()),
            Dedup::Retry { first_version: 7 }
        );
        assert_eq!(dedup(&e, ids.iter().copied()), Dedup::Mismatch);
        assert_eq!(dedup(&e, ids[2..].iter().copied()), Dedup::New);
        assert_eq!(dedup(&e, [ids[1], ids[0]].into_iter()), Dedup::Mismatch);
    }
}
