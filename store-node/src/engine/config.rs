//! Configuration of the embedded engine, deserializable from the store-node config file or
//! flags (camelCase keys, every field optional with a default). Pure data: never does I/O.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::Limits;
use crate::wal::{CorruptionPolicy, Durability};

/// Settings of [`super::Engine`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EngineConfig {
    /// Directory holding `wal/`, `segments/` and `manifest.json`.
    pub data_dir: PathBuf,
    /// When appends are acknowledged (see [`crate::wal`]).
    pub durability: Durability,
    /// Input limits.
    pub limits: Limits,
    /// A WAL file is closed and a new one started past this size.
    pub wal_segment_bytes: u64,
    /// What opening does when the WAL is damaged in a way a crash cannot explain: refuse to
    /// open (default) or keep a copy of the damaged file and serve what precedes the damage.
    pub wal_on_corruption: CorruptionPolicy,
    /// A checkpoint (flush of hot events to Parquet, manifest, WAL trim) starts once this many
    /// WAL bytes were written since the last one. Past twice as many (hot events and pending
    /// snapshots are held in memory until a checkpoint), appends and snapshots wait for the
    /// flusher's next checkpoint before they are taken (at most 30 s), so that memory stays
    /// bounded whatever the write rate.
    pub checkpoint_wal_bytes: u64,
    /// A checkpoint also starts once the snapshots saved since the last one (held in memory
    /// until a checkpoint writes their files) reach this many bytes, node-wide; a tenant
    /// holding that many itself makes its next snapshot wait for that checkpoint.
    pub checkpoint_snapshot_bytes: u64,
    /// How often the background flusher checks whether a checkpoint or compaction is due, in
    /// milliseconds; 0 disables the flusher (checkpoints then only run on `checkpoint()` and
    /// `close()`).
    pub checkpoint_interval_ms: u64,
    /// Most rows per Parquet row group (the unit a cold read decodes).
    pub row_group_rows: usize,
    /// Most bytes of events per Parquet row group (at least one event), so that what one cold
    /// read decodes stays small whatever the size of the events.
    pub row_group_bytes: u64,
    /// Compaction merges a tenant's segments smaller than this many bytes...
    pub compact_small_bytes: u64,
    /// ...once it has more than this many of them.
    pub compact_min_segments: usize,
    /// Committed batches buffered per tenant for live subscribers; a slower subscriber falls
    /// back to a catch-up read (no gap, no duplicate).
    pub subscription_buffer: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            durability: Durability::default(),
            limits: Limits::default(),
            wal_segment_bytes: 64 * 1024 * 1024,
            wal_on_corruption: CorruptionPolicy::Refuse,
            checkpoint_wal_bytes: 256 * 1024 * 1024,
            checkpoint_snapshot_bytes: 32 * 1024 * 1024,
            checkpoint_interval_ms: 1000,
            row_group_rows: 8192,
            row_group_bytes: 4 * 1024 * 1024,
            compact_small_bytes: 16 * 1024 * 1024,
            compact_min_segments: 8,
            subscription_buffer: 1024,
        }
    }
}

impl EngineConfig {
    /// Defaults with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_json_uses_defaults() {
        let c: EngineConfig = serde_json::from_str(
            r#"{"dataDir":"/x","durability":{"mode":"periodic","intervalMs":5}}"#,
        )
        .unwrap();
        assert_eq!(c.durability, Durability::Periodic { interval_ms: 5 });
        assert_eq!(c.row_group_rows, EngineConfig::default().row_group_rows);
        let none: EngineConfig = serde_json::from_str(r#"{"durability":{"mode":"none"}}"#).unwrap();
        assert_eq!(none.durability, Durability::None);
    }
}
