//! File I/O of the embedded engine behind a small trait, so that tests can simulate a machine
//! crash (every byte not yet fsynced is lost, every rename not yet made durable by a directory
//! fsync is undone) without killing processes.
//!
//! [`OsFs`] is the real implementation on `std::fs`; [`SimFs`] keeps files in memory and tracks
//! what an fsync made durable. This module owns durability primitives only: it must never know
//! about record formats, WAL layout or Parquet.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// A file opened for appending (the active WAL segment).
pub trait AppendFile: Send {
    /// Appends all of `buf` at the end of the file.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes the data durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Makes data and metadata durable (fsync).
    fn sync_all(&mut self) -> io::Result<()>;
}

/// A file opened for reading at any offset (a Parquet segment read one row group at a time).
pub trait ReadAt: Send + Sync {
    /// Length of the file when it was opened.
    fn len(&self) -> u64;
    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// The file-system operations the engine needs.
pub trait FileSystem: Send + Sync + 'static {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) directly inside `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether a file exists.
    fn exists(&self, path: &Path) -> bool;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens a file for reads at offsets, so that a reader fetches only the bytes it needs.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>>;
    /// Creates (or truncates) a file, writes `data` and fsyncs it. Not durable in the directory
    /// until [`FileSystem::sync_dir`].
    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Opens a file for appending, creating it if missing.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Cuts a file to `len` bytes and fsyncs it.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Renames a file (atomic replace).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Fsyncs a directory so that creations, renames and removals in it are durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// Writes a file atomically and durably: tmp file + fsync + rename + directory fsync.
pub fn write_atomic(fs: &dyn FileSystem, path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs.write_synced(&tmp, data)?;
    fs.rename(&tmp, path)?;
    fs.sync_dir(dir)
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

struct OsAppendFile(File);

impl AppendFile for OsAppendFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}

struct OsReadAt {
    file: File,
    len: u64,
}

impl ReadAt for OsReadAt {
    fn len(&self) -> u64 {
        self.len
    }
    #[cfg(unix)]
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
    #[cfg(not(unix))]
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = self.file.try_clone()?;
        f.seek(SeekFrom::Start(offset))?;
        let mut done = 0;
        while done < buf.len() {
            match f.read(&mut buf[done..])? {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }
}

impl FileSystem for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            out.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Arc::new(OsReadAt { file, len }))
    }
    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(data)?;
        f.sync_all()
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Box::new(OsAppendFile(f)))
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

#[derive(Default)]
struct SimFile {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Default)]
struct SimState {
    next_id: u64,
    files: HashMap<u64, SimFile>,
    /// The namespace as processes see it.
    names: HashMap<PathBuf, u64>,
    /// The namespace as a crash would leave it (updated by directory fsyncs).
    durable_names: HashMap<PathBuf, u64>,
    fail_syncs: bool,
}

/// Called with the path of every [`FileSystem::write_synced`] before it happens (no lock of the
/// file system is held, so the hook may block to pause the writer at that point).
pub type WriteHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// Called before every fsync of an append file (the WAL), with no lock of the file system held,
/// so the hook may block to hold the WAL writer between its write and its fsync.
pub type SyncHook = Arc<dyn Fn() + Send + Sync>;

/// An in-memory file system that remembers what was made durable, for crash tests.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
    write_hook: Arc<Mutex<Option<WriteHook>>>,
    sync_hook: Arc<Mutex<Option<SyncHook>>>,
}

impl SimFs {
    /// A new empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power loss: unsynced bytes and non-durable directory changes disappear.
    pub fn crash(&self) {
        let mut st = self.state.lock();
        st.names = st.durable_names.clone();
        for f in st.files.values_mut() {
            f.data = f.synced.clone();
        }
    }

    /// Installs (or with `None` removes) a hook run before every `write_synced`, so that a test
    /// can stop a checkpoint at a precise point and interleave other work deterministically.
    pub fn set_write_hook(&self, hook: Option<WriteHook>) {
        *self.write_hook.lock() = hook;
    }

    /// Installs (or with `None` removes) a hook run before every fsync of an append file.
    pub fn set_sync_hook(&self, hook: Option<SyncHook>) {
        *self.sync_hook.lock() = hook;
    }

    /// Makes every following fsync fail (like EIO on a dying disk).
    pub fn fail_syncs(&self, fail: bool) {
        self.state.lock().fail_syncs = fail;
    }

    /// The current length of a file as processes see it.
    pub fn len(&self, path: &Path) -> Option<usize> {
        let st = self.state.lock();
        st.names
            .get(path)
            .and_then(|id| st.files.get(id))
            .map(|f| f.data.len())
    }

    /// Overwrites bytes of a file in place (durably), to simulate corruption.
    pub fn corrupt(&self, path: &Path, offset: usize, bytes: &[u8]) {
        let mut st = self.state.lock();
        if let Some(id) = st.names.get(path).copied() {
            if let Some(f) = st.files.get_mut(&id) {
                let end = (offset + bytes.len()).min(f.data.len());
                if offset < end {
                    f.data[offset..end].copy_from_slice(&bytes[..end - offset]);
                    f.synced = f.data.clone();
                }
            }
        }
    }
}

/// A SimFs file as it was when opened.
struct SimReadAt(Vec<u8>);

impl ReadAt for SimReadAt {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

fn sync_failed() -> io::Error {
    io::Error::other("simulated fsync failure")
}

struct SimAppendFile {
    fs: SimFs,
    id: u64,
}

impl AppendFile for SimAppendFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut st = self.fs.state.lock();
        let f = st.files.entry(self.id).or_default();
        f.data.extend_from_slice(buf);
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        let hook = self.fs.sync_hook.lock().clone();
        if let Some(hook) = hook {
            hook();
        }
        let mut st = self.fs.state.lock();
        if st.fail_syncs {
            return Err(sync_failed());
        }
        let f = st.files.entry(self.id).or_default();
        f.synced = f.data.clone();
        Ok(())
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

impl SimState {
    fn parent_durable(&mut self, dir: &Path) {
        let current: Vec<(PathBuf, u64)> = self
            .names
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        self.durable_names.retain(|p, _| p.parent() != Some(dir));
        self.durable_names.extend(current);
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn exists(&self, path: &Path) -> bool {
        self.state.lock().names.contains_key(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.state.lock();
        let id = st.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(st.files.get(id).map(|f| f.data.clone()).unwrap_or_default())
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadAt>> {
        Ok(Arc::new(SimReadAt(self.read(path)?)))
    }
    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let hook = self.write_hook.lock().clone();
        if let Some(hook) = hook {
            hook(path);
        }
        let mut st = self.state.lock();
        if st.fail_syncs {
            return Err(sync_failed());
        }
        st.next_id += 1;
        let id = st.next_id;
        st.files.insert(
            id,
            SimFile {
                data: data.to_vec(),
                synced: data.to_vec(),
            },
        );
        st.names.insert(path.to_path_buf(), id);
        Ok(())
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let mut st = self.state.lock();
        let id = match st.names.get(path) {
            Some(id) => *id,
            None => {
                st.next_id += 1;
                let id = st.next_id;
                st.files.insert(id, SimFile::default());
                st.names.insert(path.to_path_buf(), id);
                id
            }
        };
        Ok(Box::new(SimAppendFile {
            fs: self.clone(),
            id,
        }))
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        let id = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let f = st.files.entry(id).or_default();
        f.data.truncate(len as usize);
        f.synced = f.data.clone();
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        let id = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), id);
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.fail_syncs {
            return Err(sync_failed());
        }
        st.parent_durable(dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_drops_unsynced_bytes_and_undurable_names() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        let a = dir.join("a");
        let mut f = fs.open_append(&a).unwrap();
        f.append(b"hello").unwrap();
        f.sync_data().unwrap();
        f.append(b" world").unwrap();
        fs.sync_dir(dir).unwrap();
        fs.write_synced(&dir.join("b"), b"x").unwrap();
        fs.crash();
        assert_eq!(fs.read(&a).unwrap(), b"hello");
        assert!(!fs.exists(&dir.join("b")), "b was never made durable");
    }

    #[test]
    fn write_atomic_survives_crash() {
        let fs = SimFs::new();
        let p = Path::new("/d/manifest");
        write_atomic(&fs, p, b"v1").unwrap();
        fs.crash();
        assert_eq!(fs.read(p).unwrap(), b"v1");
        assert!(!fs.exists(Path::new("/d/manifest.tmp")));
    }
}
