//! Archival of cold events to object storage (S3 or GCS) as Parquet, with manifests,
//! verify-then-trim and bucket lifecycle rules.
//!
//! This module owns everything between an [`EventStore`](crate::EventStore) and a bucket: the
//! object-store clients ([`objstore`]), the Parquet encoding of archived events ([`format`]), the
//! manifest and watermark objects ([`manifest`]), the archiver itself ([`archiver::run`]), reading
//! archived events back ([`reader`]) and the lifecycle rules of the destination ([`lifecycle`]).
//! It must never trim an event from a store before that event is in a verified file listed by a
//! committed tenant manifest, and it must never touch objects outside its destination prefix
//! (except the bucket lifecycle rules it owns, identified by id or prefix).

pub mod archiver;
pub mod format;
pub use allsource_client::source as http_source;
pub mod lease;
pub mod manifest;
pub mod reader;

pub use allsource_objstore::{lifecycle, objstore, ArchiveError, ArchiveResult};
pub use allsource_objstore::{Destination, ObjectStore};
pub use archiver::{run, ArchivePlan, ArchiveReport, CrashPoint, FaultAction, TenantReport};
pub use manifest::ArchiveScope;
pub use reader::{ArchiveAwareStore, ArchiveReader};
