//! The write-ahead log: CRC32C-framed records in numbered files (`wal/<first-lsn>.wal`), one
//! record per atomic batch, a group-commit writer thread, and recovery that stops at the first
//! torn or corrupt record. The WAL owns durability of acknowledged writes; it must never
//! interpret what it stores beyond framing and the record codec.
//!
//! Durability modes (what an acknowledged append survives):
//! - `fsync` (default): the group's bytes are written and `fsync`ed (data + metadata) before any
//!   append of the group is acknowledged. Survives process crash, kernel panic and power loss.
//! - `fdatasync`: same, with `fdatasync` (file size is still flushed by Linux when it changes);
//!   the same guarantee on Linux filesystems, slightly cheaper.
//! - `periodic` (`intervalMs`): acknowledged after `write(2)`; the writer fsyncs at most every
//!   interval. Survives a process crash (SIGKILL); a power loss can lose up to one interval.
//! - `none`: acknowledged after `write(2)`, never fsynced except when a file is full and on
//!   shutdown. Survives a process crash; a power loss can lose anything the OS had not written.
//!
//! In every mode a batch is all-or-nothing after any crash, and after a failed fsync the log is
//! poisoned: it refuses further writes instead of retrying on pages the kernel may have dropped.

pub mod reader;
pub mod record;
pub mod writer;

use serde::{Deserialize, Serialize};

/// When an append is acknowledged relative to the disk. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", tag = "mode")]
pub enum Durability {
    /// fsync every group before acknowledging it.
    #[default]
    Fsync,
    /// fdatasync every group before acknowledging it.
    Fdatasync,
    /// Acknowledge after write(2); fsync at most every `interval_ms`.
    Periodic {
        /// Milliseconds between fsyncs.
        #[serde(rename = "intervalMs")]
        interval_ms: u64,
    },
    /// Acknowledge after write(2); leave syncing to the OS.
    None,
}

pub use reader::{recover, scan, CorruptionPolicy, RecoverError, Recovery, WalFile};
pub use record::{DecodeError, WalRecord};
pub use writer::{WalError, WalStatus, WalWriter, WriterConfig};
