//! Whether the node can take writes, as `/readyz`, `/v1/info` and the metrics report it: a
//! store that refuses every write after a failed WAL write or fsync (poisoned: permanent until
//! the node restarts), and the free-space reserve of the data volume. Below the reserve, appends
//! and snapshots answer 507 before anything is written, so a full disk can never poison the WAL
//! through them; they are accepted again by themselves as soon as space is back, which is safe
//! because a refused request wrote nothing. This module only reads state; it must never write
//! to the data volume.

use std::path::PathBuf;

use axum::http::StatusCode;

use super::error::ApiError;

/// What an operator does about a poisoned WAL (part of `/readyz` and `/v1/info`).
pub const POISONED_ACTION: &str = "restart the node: recovery keeps every acknowledged write and \
     drops the unacknowledged tail; free or grow the data volume first if it is full, and check \
     the kernel log for I/O errors of the volume";

/// The free-space reserve of the data volume.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskReserve {
    /// A path on the watched volume (the data directory).
    pub path: PathBuf,
    /// Free bytes always kept.
    pub min_free_bytes: u64,
    /// Free share of the volume always kept, in percent; the larger of the two applies.
    pub min_free_percent: f64,
}

/// Free space of the volume against its reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes available to the node (`f_bavail`: what a non-root process may still write).
    pub available: u64,
    /// Size of the volume.
    pub total: u64,
    /// Bytes that must stay free.
    pub reserve: u64,
}

impl DiskSpace {
    /// True when `incoming` more bytes still leave the reserve free.
    pub fn admits(&self, incoming: u64) -> bool {
        self.available.saturating_sub(incoming) >= self.reserve
    }
}

impl DiskReserve {
    /// The volume's free space now (one `statvfs`).
    pub fn space(&self) -> std::io::Result<DiskSpace> {
        let v = rustix::fs::statvfs(&self.path)?;
        let block = v.f_frsize.max(1);
        let total = v.f_blocks.saturating_mul(block);
        let share = (total as f64 * self.min_free_percent.clamp(0.0, 100.0) / 100.0) as u64;
        Ok(DiskSpace {
            available: v.f_bavail.saturating_mul(block),
            total,
            reserve: self.min_free_bytes.max(share),
        })
    }

    /// Ok when a write of about `incoming` bytes keeps the reserve, else the 507 to answer. A
    /// failing `statvfs` admits the write (the WAL still refuses what the disk cannot hold).
    pub fn admit(&self, incoming: u64) -> Result<(), ApiError> {
        match self.space() {
            Ok(s) if s.admits(incoming) => Ok(()),
            Ok(s) => {
                tracing::debug!(
                    available = s.available,
                    reserve = s.reserve,
                    incoming,
                    "write refused: the data volume is at its free-space reserve"
                );
                Err(insufficient_storage())
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "statvfs of the data volume failed; admitting the write");
                Ok(())
            }
        }
    }

    /// None when writes are admitted, else why not (for `/readyz` and `/v1/info`).
    pub fn refusal(&self) -> Option<String> {
        match self.space() {
            Ok(s) if !s.admits(0) => Some(format!(
                "the data volume has {} bytes free, below its reserve of {} bytes: appends and \
                 snapshots answer 507 until space is freed (trim archived events, delete streams \
                 or grow the volume); they resume by themselves",
                s.available, s.reserve
            )),
            _ => None,
        }
    }
}

/// 507 for a write refused by the reserve.
pub fn insufficient_storage() -> ApiError {
    let mut e = ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        "insufficient_storage",
        "the node's data volume is at its free-space reserve; nothing was written. Retry later: \
         writes resume by themselves once space is freed",
    );
    e.retry_after = Some(30);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserve(dir: &std::path::Path, bytes: u64) -> DiskReserve {
        DiskReserve {
            path: dir.to_path_buf(),
            min_free_bytes: bytes,
            min_free_percent: 0.0,
        }
    }

    #[test]
    fn admits_until_the_reserve_and_reports_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let s = reserve(dir.path(), 0).space().unwrap();
        assert!(s.total > 0 && s.available > 0);
        assert!(reserve(dir.path(), 0).admit(1).is_ok());
        assert!(reserve(dir.path(), 0).refusal().is_none());
        let above = reserve(dir.path(), s.available + (1 << 30));
        let e = above.admit(1).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
        );
        assert!(above.refusal().unwrap().contains("below its reserve"));
        // the percentage applies when it is the larger one
        let pct = DiskReserve {
            min_free_percent: 100.0,
            ..reserve(dir.path(), 0)
        };
        assert_eq!(pct.space().unwrap().reserve, s.total);
    }
}
