//! Reading WAL files back: scan frames until the first torn or corrupt one, and recovery of a
//! WAL directory (truncate at the first bad record, set later files aside, report what was
//! dropped). Recovery must never hand back a record that failed its checksum or that follows one.

use std::path::{Path, PathBuf};

use super::record::{decode_record, read_frame, DecodeError, WalRecord};
use crate::fsio::FileSystem;

/// Result of scanning one buffer of frames.
#[derive(Debug)]
pub struct Scan {
    /// Decoded records with their LSNs, in file order.
    pub records: Vec<(u64, WalRecord)>,
    /// Bytes of valid frames at the start of the buffer.
    pub valid_len: usize,
    /// Why the scan stopped before the end (None: the buffer ended exactly after a frame).
    pub stop: Option<DecodeError>,
}

/// Scans frames from the start of `buf`. LSNs must strictly increase; a frame that breaks that
/// (stale bytes from an earlier use) ends the scan like a corrupt one.
pub fn scan(buf: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut off = 0usize;
    let mut last_lsn: Option<u64> = None;
    let mut stop = None;
    while off < buf.len() {
        match read_frame(&buf[off..]) {
            Ok((lsn, body, used)) => {
                if last_lsn.is_some_and(|l| lsn <= l) {
                    stop = Some(DecodeError::Malformed("LSN does not increase"));
                    break;
                }
                match decode_record(body) {
                    Ok(rec) => {
                        records.push((lsn, rec));
                        last_lsn = Some(lsn);
                        off += used;
                    }
                    Err(e) => {
                        stop = Some(e);
                        break;
                    }
                }
            }
            Err(e) => {
                stop = Some(e);
                break;
            }
        }
    }
    Scan {
        records,
        valid_len: off,
        stop,
    }
}

/// One WAL file: its path and the LSN of its first record (from its name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalFile {
    /// Path of the file.
    pub path: PathBuf,
    /// LSN of its first record.
    pub first_lsn: u64,
}

/// File name of the WAL file whose first record has `first_lsn`.
pub fn file_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.wal")
}

/// WAL files of `dir`, sorted by first LSN.
pub fn list_files(fs: &dyn FileSystem, dir: &Path) -> std::io::Result<Vec<WalFile>> {
    let mut files: Vec<WalFile> = fs
        .list(dir)?
        .into_iter()
        .filter_map(|n| {
            let stem = n.strip_suffix(".wal")?;
            let first_lsn = stem.parse().ok()?;
            Some(WalFile {
                path: dir.join(&n),
                first_lsn,
            })
        })
        .collect();
    files.sort_by_key(|f| f.first_lsn);
    Ok(files)
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Records recovered, in LSN order.
    pub records: usize,
    /// The LSN to give the next record.
    pub next_lsn: u64,
    /// The WAL files kept, in order.
    pub files: Vec<WalFile>,
    /// Bytes cut from the end of the damaged file (0 when the log was clean).
    pub truncated_bytes: u64,
    /// Files set aside (renamed `*.dropped`) because they followed a damaged record.
    pub dropped_files: Vec<PathBuf>,
    /// Why the log ended early, if it did.
    pub stop: Option<DecodeError>,
}

/// Replays every valid record of `dir` with LSN > `after` into `apply`, stopping at the first
/// torn or corrupt record: the damaged file is truncated there (and fsynced), later files are
/// renamed `*.dropped`, and the result says what was lost.
pub fn recover(
    fs: &dyn FileSystem,
    dir: &Path,
    after: u64,
    mut apply: impl FnMut(u64, WalRecord),
) -> std::io::Result<Recovery> {
    let files = list_files(fs, dir)?;
    let mut out = Recovery {
        next_lsn: after + 1,
        ..Default::default()
    };
    let mut last_lsn: Option<u64> = None;
    let mut damaged = false;
    for file in files {
        if damaged {
            let mut to = file.path.as_os_str().to_owned();
            to.push(".dropped");
            fs.rename(&file.path, Path::new(&to))?;
            tracing::error!(file = %file.path.display(), "WAL file follows a damaged record; set aside");
            out.dropped_files.push(PathBuf::from(to));
            continue;
        }
        let buf = fs.read(&file.path)?;
        let s = scan(&buf);
        let mut file_ok = true;
        for (lsn, rec) in s.records {
            if last_lsn.is_some_and(|l| lsn <= l) {
                file_ok = false;
                break;
            }
            last_lsn = Some(lsn);
            out.next_lsn = out.next_lsn.max(lsn + 1);
            if lsn > after {
                out.records += 1;
                apply(lsn, rec);
            }
        }
        if !file_ok || s.stop.is_some() {
            damaged = true;
            let cut = (buf.len() - s.valid_len) as u64;
            tracing::warn!(
                file = %file.path.display(),
                kept_bytes = s.valid_len,
                dropped_bytes = cut,
                reason = ?s.stop,
                "WAL ends with a torn or corrupt record; truncating (those writes were never acknowledged)"
            );
            fs.truncate(&file.path, s.valid_len as u64)?;
            out.truncated_bytes = cut;
            out.stop = s.stop;
        }
        out.files.push(file);
    }
    if damaged {
        fs.sync_dir(dir)?;
    }
    Ok(out)
}
