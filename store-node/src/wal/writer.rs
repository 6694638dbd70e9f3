//! The group-commit writer: one dedicated thread takes every pending record, writes them with
//! one `write`, makes them durable with one fsync (per the durability mode), hands them to the
//! commit callback and only then publishes the new durable LSN that acknowledges them.
//!
//! Gathering: when the previous group held more records than are queued now (many writers that
//! were just acknowledged are still re-submitting), the writer waits a little for them before it
//! syncs, at most half the duration of the last sync and never more than [`GATHER_CAP`]: a lone
//! writer never waits, and many writers share one fsync instead of splitting into small groups.
//! It changes only how records are grouped, never what is acknowledged.
//!
//! After a failed write or fsync the writer is poisoned: it acknowledges nothing more and every
//! later submission fails; it never retries a sync on pages the kernel may have dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::reader::{file_name, WalFile};
use super::record::frame_into;
use super::Durability;
use crate::fsio::{AppendFile, FileSystem};

/// Longest wait for more records of a group (see the module docs).
pub const GATHER_CAP: Duration = Duration::from_micros(500);

/// Published after every group: what is acknowledged, and whether the log is dead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalStatus {
    /// Every record with LSN <= this is written per the durability mode and committed.
    pub durable_lsn: u64,
    /// Set once a write or fsync failed.
    pub poisoned: Option<String>,
}

/// Error of a submission.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    /// The log failed an fsync or write earlier and refuses writes.
    #[error("WAL is poisoned: {0}")]
    Poisoned(String),
    /// The writer was shut down.
    #[error("WAL is closed")]
    Closed,
    /// Debug builds decode every record before queueing it: this one would not read back.
    #[error("WAL record would not decode: {0}")]
    Undecodable(String),
}

struct Pending<P> {
    lsn: u64,
    head: Vec<u8>,
    body: Vec<u8>,
    payload: P,
}

struct Queue<P> {
    items: Vec<Pending<P>>,
    next_lsn: u64,
    shutdown: bool,
    abort: bool,
    poisoned: Option<String>,
    roll: bool,
}

struct Shared<P> {
    queue: Mutex<Queue<P>>,
    wake: Condvar,
    files: Mutex<Vec<WalFile>>,
    bytes_written: std::sync::atomic::AtomicU64,
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// WAL directory.
    pub dir: PathBuf,
    /// Durability mode.
    pub durability: Durability,
    /// Roll to a new file once the active one exceeds this size.
    pub segment_bytes: u64,
}

/// Handle to the writer thread.
pub struct WalWriter<P: Send + 'static> {
    shared: Arc<Shared<P>>,
    status: watch::Receiver<WalStatus>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<P: Send + 'static> WalWriter<P> {
    /// Starts the writer. `existing` are the files kept by recovery, `next_lsn` the first LSN to
    /// give out; a fresh file is always started (never appended after a truncation point).
    /// `commit` runs on the writer thread for every durable group, in LSN order, before the
    /// group is acknowledged.
    pub fn start(
        fs: Arc<dyn FileSystem>,
        cfg: WriterConfig,
        existing: Vec<WalFile>,
        next_lsn: u64,
        commit: impl FnMut(Vec<(u64, P)>) + Send + 'static,
    ) -> std::io::Result<Self> {
        fs.create_dir_all(&cfg.dir)?;
        let path = cfg.dir.join(file_name(next_lsn));
        let file = fs.open_append(&path)?;
        fs.sync_dir(&cfg.dir)?;
        let mut files = existing;
        files.retain(|f| f.path != path);
        files.push(WalFile {
            path,
            first_lsn: next_lsn,
        });
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: Vec::new(),
                next_lsn,
                shutdown: false,
                abort: false,
                poisoned: None,
                roll: false,
            }),
            wake: Condvar::new(),
            files: Mutex::new(files),
            bytes_written: std::sync::atomic::AtomicU64::new(0),
        });
        let (tx, rx) = watch::channel(WalStatus {
            durable_lsn: next_lsn.saturating_sub(1),
            poisoned: None,
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer_loop(fs, cfg, sh, file, tx, commit))?;
        Ok(Self {
            shared,
            status: rx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a record (`head` then `body` form its bytes) and returns its LSN. Callers that
    /// need a per-key order submit while holding that key's lock: LSN order is queue order.
    pub fn submit(&self, head: Vec<u8>, body: Vec<u8>, payload: P) -> Result<u64, WalError> {
        // Debug builds (every test) prove each record reads back before it can be acknowledged:
        // a codec bug then fails the write instead of corrupting recovery.
        #[cfg(debug_assertions)]
        {
            let mut whole = Vec::with_capacity(head.len() + body.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(&body);
            if let Err(e) = super::record::decode_record(&whole) {
                return Err(WalError::Undecodable(e.to_string()));
            }
        }
        let mut q = self.shared.queue.lock();
        if let Some(p) = &q.poisoned {
            return Err(WalError::Poisoned(p.clone()));
        }
        if q.shutdown {
            return Err(WalError::Closed);
        }
        let lsn = q.next_lsn;
        q.next_lsn += 1;
        q.items.push(Pending {
            lsn,
            head,
            body,
            payload,
        });
        drop(q);
        self.shared.wake.notify_one();
        Ok(lsn)
    }

    /// A receiver of the status, to await acknowledgement of an LSN.
    pub fn status(&self) -> watch::Receiver<WalStatus> {
        self.status.clone()
    }

    /// Waits until `lsn` is acknowledged (or fails if the log is poisoned or closed).
    pub async fn wait(&self, lsn: u64) -> Result<(), WalError> {
        let mut rx = self.status.clone();
        let st = rx
            .wait_for(|s| s.durable_lsn >= lsn || s.poisoned.is_some())
            .await
            .map_err(|_| WalError::Closed)?;
        if st.durable_lsn >= lsn {
            Ok(())
        } else {
            Err(WalError::Poisoned(st.poisoned.clone().unwrap_or_default()))
        }
    }

    /// Error message when poisoned.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.queue.lock().poisoned.clone()
    }

    /// The WAL files, oldest first (the last one is active).
    pub fn files(&self) -> Vec<WalFile> {
        self.shared.files.lock().clone()
    }

    /// Total bytes written since start.
    pub fn bytes_written(&self) -> u64 {
        self.shared
            .bytes_written
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks the writer to start a new file before its next write, so that a checkpoint can
    /// delete the current one later.
    pub fn request_roll(&self) {
        self.shared.queue.lock().roll = true;
    }

    /// Deletes every non-active file whose records all have LSN <= `lsn`; returns how many.
    pub fn remove_files_upto(&self, fs: &dyn FileSystem, lsn: u64) -> std::io::Result<usize> {
        let mut files = self.shared.files.lock();
        let mut removed = 0;
        while files.len() >= 2 && files[1].first_lsn <= lsn + 1 {
            let f = files.remove(0);
            fs.remove(&f.path)?;
            removed += 1;
        }
        if removed > 0 {
            if let Some(dir) = files.first().and_then(|f| f.path.parent()) {
                fs.sync_dir(dir)?;
            }
        }
        Ok(removed)
    }

    /// Stops the thread like a process death would: nothing queued is written and nothing more
    /// is synced. Used by crash tests.
    pub fn abort(&self) {
        {
            let mut q = self.shared.queue.lock();
            q.abort = true;
            q.items.clear();
        }
        self.shutdown();
    }

    /// Writes everything queued, syncs, and stops the thread.
    pub fn shutdown(&self) {
        self.shared.queue.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                tracing::error!("WAL writer thread panicked");
            }
        }
    }
}

impl<P: Send + 'static> Drop for WalWriter<P> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn sync(file: &mut Box<dyn AppendFile>, durability: Durability) -> std::io::Result<()> {
    match durability {
        Durability::Fsync => file.sync_all(),
        _ => file.sync_data(),
    }
}

fn writer_loop<P: Send + 'static>(
    fs: Arc<dyn FileSystem>,
    cfg: WriterConfig,
    shared: Arc<Shared<P>>,
    mut file: Box<dyn AppendFile>,
    status: watch::Sender<WalStatus>,
    mut commit: impl FnMut(Vec<(u64, P)>),
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut file_len: u64 = 0;
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    // Group gathering (module docs): size of the previous group and the cost of its sync.
    let gathers = matches!(cfg.durability, Durability::Fsync | Durability::Fdatasync);
    let mut last_group = 0usize;
    let mut last_sync_cost = Duration::ZERO;
    let period = match cfg.durability {
        Durability::Periodic { interval_ms } => Some(Duration::from_millis(interval_ms.max(1))),
        _ => None,
    };
    loop {
        let (items, shutdown, roll) = {
            let mut q = shared.queue.lock();
            while q.items.is_empty() && !q.shutdown {
                match period {
                    Some(p) if unsynced => {
                        let left = p.saturating_sub(last_sync.elapsed());
                        if left.is_zero() || shared.wake.wait_for(&mut q, left).timed_out() {
                            break;
                        }
                    }
                    _ => shared.wake.wait(&mut q),
                }
            }
            if gathers && q.items.len() < last_group && !q.shutdown {
                let deadline = Instant::now() + (last_sync_cost / 2).min(GATHER_CAP);
                while q.items.len() < last_group && !q.shutdown && !q.abort {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || shared.wake.wait_for(&mut q, left).timed_out() {
                        break;
                    }
                }
            }
            if q.abort {
                return;
            }
            let roll = std::mem::take(&mut q.roll);
            (std::mem::take(&mut q.items), q.shutdown, roll)
        };
        let result = (|| -> std::io::Result<()> {
            if items.is_empty() {
                if unsynced {
                    file.sync_data()?;
                    unsynced = false;
                    last_sync = Instant::now();
                }
                return Ok(());
            }
            buf.clear();
            for it in &items {
                frame_into(&mut buf, it.lsn, &[&it.head, &it.body]);
            }
            if file_len > 0 && (roll || file_len + buf.len() as u64 > cfg.segment_bytes) {
                // A full file is always synced before the next one starts, whatever the mode,
                // so that recovery never finds a hole before a later file.
                file.sync_all()?;
                let path = cfg.dir.join(file_name(items[0].lsn));
                file = fs.open_append(&path)?;
                fs.sync_dir(&cfg.dir)?;
                shared.files.lock().push(WalFile {
                    path,
                    first_lsn: items[0].lsn,
                });
                file_len = 0;
            }
            file.append(&buf)?;
            file_len += buf.len() as u64;
            shared
                .bytes_written
                .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
            match cfg.durability {
                Durability::Fsync | Durability::Fdatasync => {
                    let t = Instant::now();
                    sync(&mut file, cfg.durability)?;
                    last_sync_cost = t.elapsed();
                    last_group = items.len();
                }
                Durability::Periodic { .. } => {
                    unsynced = true;
                    if period.is_some_and(|p| last_sync.elapsed() >= p) {
                        file.sync_data()?;
                        unsynced = false;
                        last_sync = Instant::now();
                    }
                }
                Durability::None => {}
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if let Some(last) = items.last().map(|i| i.lsn) {
                    commit(items.into_iter().map(|i| (i.lsn, i.payload)).collect());
                    status.send_modify(|s| s.durable_lsn = last);
                }
            }
            Err(e) => {
                let msg = format!("WAL write or fsync failed: {e}");
                tracing::error!(error = %e, "WAL poisoned; refusing further writes");
                shared.queue.lock().poisoned = Some(msg.clone());
                status.send_modify(|s| s.poisoned = Some(msg));
                // Everything queued after the failure fails too.
                let q = std::mem::take(&mut shared.queue.lock().items);
                drop(q);
                if shutdown {
                    return;
                }
                continue;
            }
        }
        if shutdown {
            let q = shared.queue.lock();
            if q.items.is_empty() {
                drop(q);
                if let Err(e) = file.sync_all() {
                    tracing::error!(error = %e, "final WAL sync failed");
                }
                return;
            }
        }
    }
}

/// Directory of the WAL inside a data directory.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}
