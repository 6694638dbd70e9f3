//! Object storage for the archive: S3 and GCS clients behind one [`ObjectStore`] trait, and the
//! bucket lifecycle rules an ArchivePolicy asks for ([`lifecycle`]). Shared by the archiver (in
//! store-node) and the operator (which applies lifecycle rules and checks destinations); it
//! knows nothing about Parquet or the engine.

pub mod lifecycle;
pub mod objstore;

pub use objstore::{Destination, ObjectStore};

use thiserror::Error;

use allsource_core::StoreError;

/// An error of the archival pipeline.
#[derive(Debug, Error)]
pub enum ArchiveError {
    /// A destination URL or a flag is malformed.
    #[error("invalid archive configuration: {0}")]
    Config(String),
    /// The object store answered with an error (network, auth, missing bucket ...).
    #[error("object store {op} {key}: {message}")]
    ObjectStore {
        /// The operation (put, get, list, ...).
        op: &'static str,
        /// The object key or prefix.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// The object does not exist.
    #[error("object not found: {0}")]
    NotFound(String),
    /// Reading from or trimming the event store failed.
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    /// Encoding or decoding Parquet failed.
    #[error("parquet: {0}")]
    Parquet(String),
    /// A manifest or watermark object could not be (de)serialized.
    #[error("manifest {key}: {message}")]
    Manifest {
        /// Object key of the manifest.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// An uploaded object did not read back as written: nothing was committed or trimmed.
    #[error("verification failed for {key}: {message}")]
    Verify {
        /// Object key that failed.
        key: String,
        /// What differed.
        message: String,
    },
    /// Lifecycle rules are invalid (e.g. data would expire inside the hot window).
    #[error("invalid lifecycle: {0}")]
    Lifecycle(String),
    /// Another archiver run of the same store holds the destination's lease.
    #[error("another archiver run holds the lease {key} (holder {holder}, expires at {expires_at_ms} ms); runs of one store never overlap")]
    LeaseHeld {
        /// Object key of the lease.
        key: String,
        /// Run id of the holder.
        holder: String,
        /// When it lapses unless renewed (ms since the epoch).
        expires_at_ms: i64,
    },
    /// This run's lease was taken over (it expired while the run was paused or slow): the run
    /// stopped before committing anything.
    #[error("the lease {0} was taken over by another run; nothing more was committed")]
    LeaseLost(String),
    /// The fault-injection hook stopped the run at this point (tests only).
    #[error("fault injection: stopped after {0}")]
    InjectedStop(&'static str),
}

impl From<ArchiveError> for StoreError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::Store(s) => s,
            ArchiveError::NotFound(m) => StoreError::NotFound(m),
            ArchiveError::ObjectStore { .. } => StoreError::Unavailable(e.to_string()),
            other => StoreError::Internal(other.to_string()),
        }
    }
}

/// Result alias of the archive module.
pub type ArchiveResult<T> = Result<T, ArchiveError>;
