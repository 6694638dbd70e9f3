//! An LRU cache of decoded Parquet row groups for cold reads, bounded in bytes (`cacheBytes`,
//! counted as the [`RecordedEvent::size_bytes`] of the rows it holds). A row group larger than
//! the whole budget is decoded, used by the read that asked for it and not kept. A miss reads
//! only the file's footer and that row group's column chunks (no file image is read or kept),
//! and row groups are bounded in bytes when they are written, so what one cold read decodes is
//! bounded too. It owns no durability and must never be the only copy of anything.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::fsio::FileSystem;
use crate::model::RecordedEvent;
use crate::segment::{self, SegmentError};

/// Decoded rows of one row group, in position order.
pub type Rows = Arc<Vec<Arc<RecordedEvent>>>;

type Key = (PathBuf, usize);

/// Least recently used entries first; `bytes` is the sum of the entries' weights.
struct Lru {
    budget: u64,
    bytes: u64,
    map: HashMap<Key, (Rows, u64)>,
    order: VecDeque<Key>,
}

impl Lru {
    fn get(&mut self, k: &Key) -> Option<Rows> {
        let v = self.map.get(k)?.0.clone();
        if let Some(i) = self.order.iter().position(|x| x == k) {
            self.order.remove(i);
        }
        self.order.push_back(k.clone());
        Some(v)
    }

    fn retain(&mut self, keep: impl Fn(&Key) -> bool) {
        let mut freed = 0;
        self.map.retain(|k, (_, w)| {
            let kept = keep(k);
            if !kept {
                freed += *w;
            }
            kept
        });
        self.bytes -= freed;
        self.order.retain(|k| keep(k));
    }

    fn put(&mut self, k: Key, v: Rows, weight: u64) {
        if weight > self.budget {
            return;
        }
        if let Some((_, old)) = self.map.insert(k.clone(), (v, weight)) {
            self.bytes -= old;
        } else {
            self.order.push_back(k);
        }
        self.bytes += weight;
        while self.bytes > self.budget {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, w)) = self.map.remove(&old) {
                self.bytes -= w;
            }
        }
    }
}

/// Error of a cold read.
#[derive(Debug, thiserror::Error)]
pub enum ColdError {
    /// Reading the file failed.
    #[error("reading segment {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Decoding failed.
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

/// Cache of row groups keyed by (file, row group).
pub struct RowGroupCache {
    groups: Mutex<Lru>,
}

impl RowGroupCache {
    /// A cache holding at most `budget` bytes of decoded rows.
    pub fn new(budget: u64) -> Self {
        Self {
            groups: Mutex::new(Lru {
                budget,
                bytes: 0,
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// Bytes of rows held now (at most the budget).
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.groups.lock().bytes
    }

    /// Drops everything cached from files under `dir` (a purged tenant's segment directory,
    /// whose file names are reused once its positions start again at 0).
    pub fn forget_under(&self, dir: &Path) {
        self.groups.lock().retain(|(p, _)| !p.starts_with(dir));
    }

    /// The rows of one row group of a segment file.
    pub fn row_group(
        &self,
        fs: &dyn FileSystem,
        path: &Path,
        group: usize,
    ) -> Result<Rows, ColdError> {
        let key = (path.to_path_buf(), group);
        if let Some(r) = self.groups.lock().get(&key) {
            return Ok(r);
        }
        let file = fs.open_read(path).map_err(|source| ColdError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let rows: Rows = Arc::new(segment::decode_row_group(file, group)?);
        let weight = rows.iter().map(|r| r.size_bytes()).sum();
        self.groups.lock().put(key, rows.clone(), weight);
        Ok(rows)
    }
}
