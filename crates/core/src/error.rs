//! Typed errors of the event-store API, shared by every backend, with their HTTP mapping.

use thiserror::Error;

/// An error from any event-store operation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Expected-version check failed; carries the stream's current version (None: no stream).
    #[error("wrong expected version: stream is at {}", current.map_or_else(|| "no stream".to_string(), |v| v.to_string()))]
    Conflict {
        /// The stream's current version, or None when the stream does not exist.
        current: Option<u64>,
    },
    /// Input failed validation.
    #[error("invalid {field}: {message}")]
    InvalidInput {
        /// Which input was wrong.
        field: String,
        /// Why.
        message: String,
    },
    /// An event or batch exceeds a size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The stream (or snapshot) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The stream was deleted.
    #[error("stream deleted: {0}")]
    StreamDeleted(String),
    /// A tenant quota was exceeded; retry after this many seconds.
    #[error("quota exceeded: {message}")]
    QuotaExceeded {
        /// Which quota.
        message: String,
        /// Seconds to wait before retrying.
        retry_after_secs: u64,
    },
    /// The operation is not supported by this backend (see capabilities).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The backend is temporarily unavailable (retryable).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The store refuses writes after an unrecoverable I/O failure (e.g. failed fsync).
    #[error("store is read-only after an I/O failure: {0}")]
    Poisoned(String),
    /// The tenant id was purged and re-created since the caller looked (its positions started
    /// again): an operation meant for the old incarnation must not touch the new one's data.
    #[error("tenant incarnation changed: expected {expected}, the tenant is at {current}")]
    IncarnationChanged {
        /// The incarnation the caller acted for.
        expected: u64,
        /// The tenant's incarnation now.
        current: u64,
    },
    /// The events asked for were archived (an ArchivePolicy copied them to object storage and
    /// then trimmed them from the store): the store holds the range from `first_available` on,
    /// and the older ones are read from the archive. Never answered as an empty or shortened
    /// page, which would look like "no events".
    #[error("{}", archived_text(*first_available, *incarnation, *of_stream))]
    Archived {
        /// The first position (tenant reads and subscriptions) or version (stream reads, when
        /// `of_stream`) the store still holds.
        first_available: u64,
        /// The tenant's incarnation, which names the archive folder the events are in.
        incarnation: u64,
        /// Whether `first_available` is a stream version rather than a tenant position.
        of_stream: bool,
    },
    /// Any other internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

fn archived_text(first_available: u64, incarnation: u64, of_stream: bool) -> String {
    let what = if of_stream {
        "versions of this stream"
    } else {
        "positions"
    };
    format!(
        "{what} before {first_available} were archived and trimmed from the store: read them \
         from the archive (the ArchivePolicy destination, under \
         tenant=<id>/store=<store uid>/incarnation={incarnation}/), or read from {first_available}"
    )
}

impl StoreError {
    /// Shorthand for an [`StoreError::InvalidInput`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Stable machine-readable code used in HTTP error bodies `{code, message}`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Conflict { .. } => "wrong_expected_version",
            Self::InvalidInput { .. } => "invalid_input",
            Self::TooLarge(_) => "too_large",
            Self::NotFound(_) => "not_found",
            Self::StreamDeleted(_) => "stream_deleted",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::Unsupported(_) => "unsupported",
            Self::Unavailable(_) => "unavailable",
            Self::Poisoned(_) => "read_only",
            Self::IncarnationChanged { .. } => "incarnation_changed",
            Self::Archived { .. } => "archived",
            Self::Internal(_) => "internal",
        }
    }

    /// The `message` of the HTTP error body: an internal error's detail (a database's own
    /// text, a path) is for the log only, so a client sees `internal error`.
    pub fn client_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }

    /// HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Conflict { .. } => 409,
            Self::InvalidInput { .. } => 400,
            Self::TooLarge(_) => 413,
            Self::NotFound(_) => 404,
            Self::StreamDeleted(_) => 410,
            Self::QuotaExceeded { .. } => 429,
            Self::Unsupported(_) => 501,
            Self::Unavailable(_) => 503,
            Self::Poisoned(_) => 503,
            Self::IncarnationChanged { .. } => 409,
            Self::Archived { .. } => 410,
            Self::Internal(_) => 500,
        }
    }
}
