//! A small LRU cache of decoded Parquet row groups (and of the file images they come from) for
//! cold reads. It owns no durability and must never be the only copy of anything.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::fsio::FileSystem;
use crate::model::RecordedEvent;
use crate::segment::{self, SegmentError};

/// Decoded rows of one row group, in position order.
pub type Rows = Arc<Vec<Arc<RecordedEvent>>>;

struct Lru<K, V> {
    cap: usize,
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Lru<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
    fn get(&mut self, k: &K) -> Option<V> {
        let v = self.map.get(k)?.clone();
        if let Some(i) = self.order.iter().position(|x| x == k) {
            self.order.remove(i);
        }
        self.order.push_back(k.clone());
        Some(v)
    }
    fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.map.retain(|k, _| keep(k));
        self.order.retain(|k| keep(k));
    }
    fn put(&mut self, k: K, v: V) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
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
    groups: Mutex<Lru<(PathBuf, usize), Rows>>,
    files: Mutex<Lru<PathBuf, Bytes>>,
}

impl RowGroupCache {
    /// A cache holding `cap` decoded row groups.
    pub fn new(cap: usize) -> Self {
        Self {
            groups: Mutex::new(Lru::new(cap)),
            files: Mutex::new(Lru::new(2)),
        }
    }

    /// Drops everything cached from files under `dir` (a purged tenant's segment directory,
    /// whose file names are reused once its positions start again at 0).
    pub fn forget_under(&self, dir: &Path) {
        self.groups.lock().retain(|(p, _)| !p.starts_with(dir));
        self.files.lock().retain(|p| !p.starts_with(dir));
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
        let file = self.files.lock().get(&key.0);
        let file = match file {
            Some(f) => f,
            None => {
                let b = Bytes::from(fs.read(path).map_err(|source| ColdError::Io {
                    path: path.display().to_string(),
                    source,
                })?);
                self.files.lock().put(key.0.clone(), b.clone());
                b
            }
        };
        let rows: Rows = Arc::new(segment::decode(file, Some(vec![group]))?);
        self.groups.lock().put(key, rows.clone());
        Ok(rows)
    }
}
