//! Snapshots on disk: the latest snapshot of each stream lives in a file of its own,
//! `snapshots/<tenant>/<lsn>-<n>.snap`, and the manifest holds only a reference to it (file,
//! length, crc32c, version, size), so neither the manifest nor the node's memory grows with the
//! size of the snapshots. `load_snapshot` reads the file (and checks length, checksum, stream
//! and version) every time.
//!
//! Why one file per snapshot rather than one per checkpoint: a snapshot replaces the stream's
//! previous one, so a file per checkpoint would keep a whole file alive for its one newest
//! snapshot and need compaction to reclaim the rest. One file per snapshot is freed the moment
//! a newer snapshot of the stream is checkpointed; the cost is one fsync per snapshot written,
//! paid by the checkpoint, not by the request. Names carry the LSN of the snapshot's WAL record
//! (plus an ordinal for snapshots migrated from an old manifest, which all share one LSN), so a
//! file is never rewritten in place: a file the manifest on disk names is only deleted after a
//! newer manifest that no longer names it is durable (one checkpoint later, as for segments, so
//! a reader that fetched the old reference can still read it).
//!
//! A snapshot saved since the last checkpoint is in the WAL and in memory ([`SnapshotSlot::
//! Pending`]) until the next checkpoint writes its file; the engine checkpoints once a tenant
//! holds `checkpoint_snapshot_bytes` of them, so that memory is bounded. The file holds the
//! snapshot's WAL record body ([`crate::wal::record::encode_record`]), one format for both.
//! Old manifests carried snapshots inline: they load as pending snapshots and go to files at
//! the next checkpoint.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Snapshot, TenantId};
use crate::wal::{record, WalRecord};

/// Where a stream's latest snapshot is stored (the manifest's entry for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    /// File name inside `snapshots/<tenant>/`.
    pub file: String,
    /// File length in bytes.
    pub len: u64,
    /// CRC-32C of the file.
    pub crc32c: u32,
    /// The stream version the snapshot includes.
    pub version: u64,
    /// [`Snapshot::size_bytes`] of the snapshot (stats and storage quota).
    pub size: u64,
}

/// A stream's latest snapshot.
#[derive(Debug, Clone)]
pub enum SnapshotSlot {
    /// Saved since the last checkpoint: in the WAL and here until a checkpoint writes its file.
    Pending {
        /// LSN of its WAL record.
        lsn: u64,
        /// 0, or the ordinal of a snapshot migrated from an inline manifest entry.
        ordinal: u64,
        /// The snapshot.
        snapshot: Arc<Snapshot>,
    },
    /// In its file.
    Stored(SnapshotRef),
}

impl SnapshotSlot {
    /// [`Snapshot::size_bytes`] of the snapshot.
    pub fn size(&self) -> u64 {
        match self {
            Self::Pending { snapshot, .. } => snapshot.size_bytes(),
            Self::Stored(r) => r.size,
        }
    }

    /// Bytes of the snapshot held in memory (0 once it is in its file).
    pub fn resident(&self) -> u64 {
        match self {
            Self::Pending { snapshot, .. } => snapshot.size_bytes(),
            Self::Stored(_) => 0,
        }
    }
}

/// The file name of a pending snapshot.
pub fn file_name(lsn: u64, ordinal: u64) -> String {
    format!("{lsn:020}-{ordinal}.snap")
}

/// The file content of a snapshot and its reference.
pub fn encode(
    tenant: &TenantId,
    snapshot: &Snapshot,
    file: String,
) -> Result<(Vec<u8>, SnapshotRef), record::EncodeError> {
    let body = record::encode_record(&WalRecord::Snapshot {
        tenant: tenant.clone(),
        snapshot: snapshot.clone(),
    })?;
    let r = SnapshotRef {
        file,
        len: body.len() as u64,
        crc32c: crc32c::crc32c(&body),
        version: snapshot.version,
        size: snapshot.size_bytes(),
    };
    Ok((body, r))
}

/// Decodes a snapshot file read back, checking it against its reference.
pub fn decode(bytes: &[u8], r: &SnapshotRef) -> Result<Snapshot, String> {
    if bytes.len() as u64 != r.len {
        return Err(format!(
            "snapshot file {} is {} bytes, the manifest says {}",
            r.file,
            bytes.len(),
            r.len
        ));
    }
    if crc32c::crc32c(bytes) != r.crc32c {
        return Err(format!("snapshot file {} fails its checksum", r.file));
    }
    match record::decode_record(bytes) {
        Ok(WalRecord::Snapshot { snapshot, .. }) if snapshot.version == r.version => Ok(snapshot),
        Ok(_) => Err(format!("snapshot file {} holds another record", r.file)),
        Err(e) => Err(format!("snapshot file {}: {e}", r.file)),
    }
}
