//! Reading WAL files back: scan frames until the first torn or corrupt one, and recovery of a
//! WAL directory: a torn tail (the group being written at a crash) is cut off; any other damage
//! stops the node with an error that says where, unless the operator chose to set it aside.
//! Recovery must never hand back a record that failed its checksum or that follows one, and
//! never silently drop records that may have been acknowledged.

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

/// What recovery does with damage that a crash cannot explain (see [`recover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CorruptionPolicy {
    /// Refuse to open: the node does not start, and says which file, where and why.
    #[default]
    Refuse,
    /// Keep a full copy of the damaged file beside it (`<file>.corrupt`), then recover the
    /// clean prefix as for a torn tail and set later files aside. Records after the damage,
    /// which may have been acknowledged, are then not served: an explicit operator decision.
    SetAside,
}

/// Why recovery refused to open a WAL directory.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// Reading, truncating or renaming a file failed.
    #[error("WAL I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The log is damaged in a way a crash cannot explain, so records after the damage may
    /// have been acknowledged.
    #[error(
        "WAL file {file} is damaged at byte {offset} ({reason}); {detail}. Records after it may \
         have been acknowledged, so the node refuses to start rather than drop them. Keep a copy \
         of the data directory, then either restore the volume from a backup or restart with \
         --wal-on-corruption set-aside (STORE_NODE_WAL_ON_CORRUPTION=set-aside), which keeps the \
         damaged file as {file}.corrupt and serves only what precedes the damage"
    )]
    Corrupt {
        /// The damaged file.
        file: String,
        /// Offset of the first bad byte (end of the last good record).
        offset: usize,
        /// What the decoder found there.
        reason: DecodeError,
        /// Why this is not a torn write.
        detail: String,
    },
}

/// Damage that a crash explains (a torn tail) or not.
#[derive(Debug, PartialEq, Eq)]
enum Damage {
    /// The end of the last file holds part of a group whose sync had not completed.
    TornTail,
    /// Anything else; the string says why it is not a torn write.
    Corrupt(String),
}

/// Bytes of a disk sector: a write lost in a power failure leaves whole sectors unwritten
/// (zeros in a file that was extended), which bit rot or a bad encoder never does.
const SECTOR: usize = 512;

/// Classifies the damage at `s.valid_len` of `buf` (the contents of one file).
///
/// The writer syncs a file completely before it starts the next one, and acknowledges a group
/// only after its sync, so a crash can only damage the end of the *last* file, where the
/// bytes of the group being written can be missing or torn (process crash: a prefix of the
/// write; power loss: any of its pages). Therefore:
/// - damage in an earlier file is corruption;
/// - a frame whose checksum holds but whose body does not decode (or whose LSN goes back) was
///   written whole: corruption (an encoder bug or a foreign write), never a torn write;
/// - a cut frame, a bad checksum or a bad length is a torn tail unless a valid later frame
///   follows without a zeroed sector in between (then acknowledged records may follow the
///   damage: a flipped length can make a frame look cut by the end of the file).
fn classify(buf: &[u8], s: &Scan, last_file: bool, last_lsn: Option<u64>) -> Damage {
    let Some(stop) = &s.stop else {
        return Damage::TornTail;
    };
    if !last_file {
        return Damage::Corrupt(
            "it is not the last WAL file, and a file is synced whole before the next one starts"
                .into(),
        );
    }
    match stop {
        DecodeError::Malformed(_) => Damage::Corrupt(
            "the record's checksum is valid, so it was written whole: this is not a torn write"
                .into(),
        ),
        DecodeError::Truncated | DecodeError::Checksum | DecodeError::BadLength(_) => {
            match next_valid_frame(buf, s.valid_len, last_lsn) {
                None => Damage::TornTail,
                Some((at, lsn)) if has_zero_sector(buf, s.valid_len, at) => {
                    tracing::warn!(
                        valid_frame_at = at,
                        lsn,
                        "a valid WAL frame follows zeroed sectors: a write torn by power loss"
                    );
                    Damage::TornTail
                }
                Some((at, lsn)) => Damage::Corrupt(format!(
                    "a valid record (LSN {lsn}) follows at byte {at} with no unwritten sector in \
                     between, so this is not a torn write"
                )),
            }
        }
    }
}

/// The first offset after `from` where a frame with a valid checksum and an LSN above
/// `last_lsn` starts, with that LSN.
fn next_valid_frame(buf: &[u8], from: usize, last_lsn: Option<u64>) -> Option<(usize, u64)> {
    let floor = last_lsn.unwrap_or(0);
    (from + 1..buf.len().saturating_sub(super::record::FRAME_HEADER))
        .filter(|&o| {
            // Cheap pre-checks before a checksum: a plausible LSN in the frame header.
            let mut l = [0u8; 8];
            l.copy_from_slice(&buf[o + 8..o + 16]);
            let lsn = u64::from_le_bytes(l);
            lsn > floor && lsn - floor < (1 << 32)
        })
        .find_map(|o| match read_frame(&buf[o..]) {
            Ok((lsn, body, _)) if lsn > floor && decode_record(body).is_ok() => Some((o, lsn)),
            _ => None,
        })
}

/// True when a whole sector-aligned sector of `buf[from..to]` is zero.
fn has_zero_sector(buf: &[u8], from: usize, to: usize) -> bool {
    let first = from.div_ceil(SECTOR) * SECTOR;
    (first..to)
        .step_by(SECTOR)
        .take_while(|o| o + SECTOR <= to)
        .any(|o| buf[o..o + SECTOR].iter().all(|&b| b == 0))
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
    /// Under [`CorruptionPolicy::SetAside`], the full copy kept of a damaged file.
    pub corrupt_copy: Option<PathBuf>,
}

/// Replays every valid record of `dir` with LSN > `after` into `apply`, stopping at the first
/// torn or corrupt record. A torn tail of the last file (see [`classify`]) is cut off: the
/// damaged file is truncated there (and fsynced). Any other damage makes recovery fail with
/// [`RecoverError::Corrupt`] before anything is changed on disk, unless `policy` is
/// [`CorruptionPolicy::SetAside`]: then a copy of the damaged file is kept as `<file>.corrupt`,
/// the file is truncated and later files are renamed `*.dropped`. Nothing is applied from a
/// refused log.
pub fn recover(
    fs: &dyn FileSystem,
    dir: &Path,
    after: u64,
    policy: CorruptionPolicy,
    mut apply: impl FnMut(u64, WalRecord),
) -> Result<Recovery, RecoverError> {
    let files = list_files(fs, dir)?;
    // First pass: find the damage, if any, and decide before anything is applied or changed.
    let mut scans = Vec::with_capacity(files.len());
    let mut last_lsn: Option<u64> = None;
    let mut damage: Option<(usize, Damage)> = None;
    for (i, file) in files.iter().enumerate() {
        let buf = fs.read(&file.path)?;
        let mut s = scan(&buf);
        // Records must also increase across files.
        if let Some(pos) = s
            .records
            .iter()
            .position(|(lsn, _)| last_lsn.is_some_and(|l| *lsn <= l))
        {
            s.records.truncate(pos);
            s.valid_len = valid_len_of(&buf, pos);
            s.stop = Some(DecodeError::Malformed("LSN does not increase"));
        }
        if s.stop.is_none() {
            last_lsn = s.records.last().map(|(l, _)| *l).or(last_lsn);
            scans.push((buf, s));
            continue;
        }
        let last_file = i + 1 == files.len();
        let prev = s.records.last().map(|(l, _)| *l).or(last_lsn);
        let d = classify(&buf, &s, last_file, prev);
        if let Damage::Corrupt(detail) = &d {
            if policy == CorruptionPolicy::Refuse {
                return Err(RecoverError::Corrupt {
                    file: file.path.display().to_string(),
                    offset: s.valid_len,
                    reason: s.stop.clone().unwrap_or(DecodeError::Truncated),
                    detail: detail.clone(),
                });
            }
        }
        damage = Some((i, d));
        scans.push((buf, s));
        break;
    }
    let mut out = Recovery {
        next_lsn: after + 1,
        ..Default::default()
    };
    for (i, (file, (buf, s))) in files.iter().zip(scans).enumerate() {
        for (lsn, rec) in s.records {
            out.next_lsn = out.next_lsn.max(lsn + 1);
            if lsn > after {
                out.records += 1;
                apply(lsn, rec);
            }
        }
        if let Some((_, d)) = damage.as_ref().filter(|(at, _)| *at == i) {
            let cut = (buf.len() - s.valid_len) as u64;
            match d {
                Damage::TornTail => tracing::warn!(
                    file = %file.path.display(),
                    kept_bytes = s.valid_len,
                    dropped_bytes = cut,
                    reason = ?s.stop,
                    "WAL ends with a torn write (the group being written when the node stopped); \
                     truncating. Under fsync/fdatasync durability it was never acknowledged; under \
                     periodic/none durability it lies within the documented loss window"
                ),
                Damage::Corrupt(detail) => {
                    let mut copy = file.path.as_os_str().to_owned();
                    copy.push(".corrupt");
                    fs.write_synced(Path::new(&copy), &buf)?;
                    tracing::error!(
                        file = %file.path.display(),
                        copy = %Path::new(&copy).display(),
                        kept_bytes = s.valid_len,
                        set_aside_bytes = cut,
                        reason = ?s.stop,
                        detail = %detail,
                        "WAL damaged; as configured (set-aside), serving only the records before \
                         the damage. Records after it may have been acknowledged"
                    );
                    out.corrupt_copy = Some(PathBuf::from(copy));
                }
            }
            fs.truncate(&file.path, s.valid_len as u64)?;
            out.truncated_bytes = cut;
            out.stop = s.stop;
        }
        out.files.push(file.clone());
    }
    if let Some((at, _)) = damage {
        for file in &files[at + 1..] {
            let mut to = file.path.as_os_str().to_owned();
            to.push(".dropped");
            fs.rename(&file.path, Path::new(&to))?;
            tracing::error!(file = %file.path.display(), "WAL file follows a damaged record; set aside");
            out.dropped_files.push(PathBuf::from(to));
        }
        fs.sync_dir(dir)?;
    }
    Ok(out)
}

/// Bytes taken by the first `n` frames of `buf`.
fn valid_len_of(buf: &[u8], n: usize) -> usize {
    let mut off = 0;
    for _ in 0..n {
        match read_frame(&buf[off..]) {
            Ok((_, _, used)) => off += used,
            Err(_) => break,
        }
    }
    off
}
