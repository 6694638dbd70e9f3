//! Manifest objects: the per-tenant manifest
//! (`tenant=<t>/store=<store uid>/incarnation=<n>/_watermark.json`), which is the source of truth
//! of what is archived, and the per-run manifest (`_runs/<run-id>.json`), which records what one
//! run did.
//!
//! A tenant manifest belongs to one [`ArchiveScope`]: one tenant id, on one store (the
//! EventStore's uid), in one incarnation of that id (one more after every purge, when positions
//! start again at 0). Two stores sharing a destination prefix, or a tenant purged and created
//! again, therefore never read, trim to or garbage-collect each other's archive.
//!
//! The tenant manifest lists every committed data file (key, rows, first/last position, SHA-256,
//! size) and the watermark: every event with a position below it is in exactly one listed file.
//! It is replaced by a single PUT, which is atomic on S3 and GCS, so a reader sees the old or the
//! new manifest. A data file not listed in the committed tenant manifest is garbage from an
//! interrupted run. This module only (de)serializes and names these objects; it must never decide
//! what to archive or trim.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::objstore::{Destination, ObjectStore};
use super::{ArchiveError, ArchiveResult};
use crate::model::TenantId;

/// Version of the manifest format. Format 1 (`tenant=<t>/_watermark.json`, no store identity) is
/// never read or changed: its files stay where they are, and the store's events after its
/// watermark are archived again under the new layout from what the store still holds.
pub const FORMAT_VERSION: u32 = 2;

/// Longest store uid accepted (a Kubernetes uid is 36 bytes).
pub const MAX_STORE_UID_BYTES: usize = 64;

/// Whose archive a tenant manifest and its files are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArchiveScope {
    /// Tenant id.
    pub tenant: TenantId,
    /// Uid of the store the events come from (validated by [`ArchiveScope::new`]).
    pub store_uid: String,
    /// Incarnation of the tenant id on that store ([`crate::model::TenantStats::incarnation`]).
    pub incarnation: u64,
}

impl ArchiveScope {
    /// A scope; the store uid must be 1..=64 bytes of ASCII letters, digits, `-`, `_` or `.`.
    pub fn new(tenant: TenantId, store_uid: &str, incarnation: u64) -> ArchiveResult<Self> {
        validate_store_uid(store_uid)?;
        Ok(Self {
            tenant,
            store_uid: store_uid.to_string(),
            incarnation,
        })
    }

    /// Directory (relative) of the scope's manifest and data files, ending in `/`.
    pub fn dir(&self) -> String {
        format!(
            "tenant={}/store={}/incarnation={}/",
            self.tenant, self.store_uid, self.incarnation
        )
    }

    /// Key (relative) of the scope's tenant manifest.
    pub fn manifest_key(&self) -> String {
        format!("{}_watermark.json", self.dir())
    }
}

/// Checks a store uid for use in object keys.
pub fn validate_store_uid(uid: &str) -> ArchiveResult<()> {
    let ok = !uid.is_empty()
        && uid.len() <= MAX_STORE_UID_BYTES
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && uid != "."
        && uid != "..";
    if ok {
        Ok(())
    } else {
        Err(ArchiveError::Config(format!(
            "store uid {uid:?}: expected 1 to {MAX_STORE_UID_BYTES} letters, digits, '-', '_' or '.'"
        )))
    }
}

/// One committed data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// Key relative to the destination prefix.
    pub key: String,
    /// Rows (events) in the file.
    pub rows: u64,
    /// Position of the first row.
    pub first_position: u64,
    /// Position of the last row.
    pub last_position: u64,
    /// Smallest event timestamp (ms since the epoch, UTC).
    pub min_timestamp_ms: i64,
    /// Largest event timestamp.
    pub max_timestamp_ms: i64,
    /// Size of the object in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the object.
    pub sha256: String,
}

/// The per-tenant manifest and watermark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantManifest {
    /// Manifest format version.
    pub format: u32,
    /// Tenant id.
    pub tenant: TenantId,
    /// Uid of the store whose events these are.
    pub store_uid: String,
    /// Incarnation of the tenant id on that store.
    pub incarnation: u64,
    /// Every event with position < watermark is archived in exactly one file below.
    pub watermark: u64,
    /// Committed files in position order.
    pub files: Vec<FileEntry>,
    /// Run that last changed this manifest.
    pub run_id: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
}

impl TenantManifest {
    /// The manifest of a scope that has nothing archived yet.
    pub fn empty(scope: &ArchiveScope) -> Self {
        Self {
            format: FORMAT_VERSION,
            tenant: scope.tenant.clone(),
            store_uid: scope.store_uid.clone(),
            incarnation: scope.incarnation,
            watermark: 0,
            files: Vec::new(),
            run_id: String::new(),
            updated_at: String::new(),
        }
    }

    /// True when this manifest is the one of `scope`.
    pub fn belongs_to(&self, scope: &ArchiveScope) -> bool {
        self.tenant == scope.tenant
            && self.store_uid == scope.store_uid
            && self.incarnation == scope.incarnation
    }

    /// Total archived events.
    pub fn events(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    /// Total archived bytes.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// What one run did for one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantRunEntry {
    /// Tenant id.
    pub tenant: String,
    /// Incarnation of the tenant id the run archived.
    #[serde(default)]
    pub incarnation: u64,
    /// Watermark before the run.
    pub previous_watermark: u64,
    /// Watermark after the run.
    pub watermark: u64,
    /// Files written and committed by this run.
    pub files: Vec<FileEntry>,
    /// Events removed from the hot store after commit.
    pub trimmed: u64,
    /// Error, when the tenant failed (other tenants still run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The per-run manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunManifest {
    /// Manifest format version.
    pub format: u32,
    /// Run id (time-ordered UUID v7).
    pub run_id: String,
    /// Uid of the store the run archived.
    pub store_uid: String,
    /// Destination URL.
    pub destination: String,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time.
    pub finished_at: String,
    /// Events newer than this (ms since the epoch) stayed hot.
    pub cutoff_ms: i64,
    /// Per-tenant results.
    pub tenants: Vec<TenantRunEntry>,
}

/// Key (relative) of a run manifest.
pub fn run_manifest_key(run_id: &str) -> String {
    format!("_runs/{run_id}.json")
}

fn merr(key: &str, e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Manifest {
        key: key.to_string(),
        message: e.to_string(),
    }
}

/// Loads a scope's manifest, or an empty one when the scope was never archived. A manifest
/// under the scope's key that names another scope is refused (it was copied or forged).
pub async fn load_tenant(
    store: &dyn ObjectStore,
    dest: &Destination,
    scope: &ArchiveScope,
) -> ArchiveResult<TenantManifest> {
    let key = dest.key(&scope.manifest_key());
    match store.get(&key).await {
        Ok(data) => {
            let m: TenantManifest = serde_json::from_slice(&data).map_err(|e| merr(&key, e))?;
            if m.format != FORMAT_VERSION || !m.belongs_to(scope) {
                return Err(merr(
                    &key,
                    format!(
                        "format {} of tenant {} store {} incarnation {} is not this scope's",
                        m.format, m.tenant, m.store_uid, m.incarnation
                    ),
                ));
            }
            Ok(m)
        }
        Err(ArchiveError::NotFound(_)) => Ok(TenantManifest::empty(scope)),
        Err(e) => Err(e),
    }
}

/// Writes a tenant manifest with one PUT (the commit point of a run for that tenant).
pub async fn save_tenant(
    store: &dyn ObjectStore,
    dest: &Destination,
    manifest: &TenantManifest,
) -> ArchiveResult<()> {
    let scope = ArchiveScope {
        tenant: manifest.tenant.clone(),
        store_uid: manifest.store_uid.clone(),
        incarnation: manifest.incarnation,
    };
    let key = dest.key(&scope.manifest_key());
    let data = serde_json::to_vec_pretty(manifest).map_err(|e| merr(&key, e))?;
    store.put(&key, Bytes::from(data)).await
}

/// Writes a run manifest.
pub async fn save_run(
    store: &dyn ObjectStore,
    dest: &Destination,
    manifest: &RunManifest,
) -> ArchiveResult<()> {
    let key = dest.key(&run_manifest_key(&manifest.run_id));
    let data = serde_json::to_vec_pretty(manifest).map_err(|e| merr(&key, e))?;
    store.put(&key, Bytes::from(data)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_json_shape() {
        let scope = ArchiveScope::new(TenantId::new("acme").unwrap(), "uid-1", 2).unwrap();
        let mut m = TenantManifest::empty(&scope);
        m.watermark = 10;
        m.files.push(FileEntry {
            key: "tenant=acme/date=2026-01-01/part-1-9.parquet".into(),
            rows: 10,
            first_position: 0,
            last_position: 9,
            min_timestamp_ms: 1,
            max_timestamp_ms: 2,
            bytes: 100,
            sha256: "ab".into(),
        });
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["watermark"], 10);
        assert_eq!(v["files"][0]["firstPosition"], 0);
        assert_eq!(v["files"][0]["sha256"], "ab");
        assert_eq!(v["storeUid"], "uid-1");
        assert_eq!(v["incarnation"], 2);
        let back: TenantManifest = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.events(), 10);
        assert_eq!(
            scope.manifest_key(),
            "tenant=acme/store=uid-1/incarnation=2/_watermark.json"
        );
    }

    #[test]
    fn store_uids_are_safe_in_keys() {
        for good in ["0b6f7c1e-3c9a-4d0e-9d55-6c3a2f1e9b00", "a", "store_1.x"] {
            assert!(validate_store_uid(good).is_ok(), "{good} refused");
        }
        let long = "a".repeat(MAX_STORE_UID_BYTES + 1);
        for bad in ["", ".", "..", "a/b", "a=b", "ü", long.as_str()] {
            assert!(validate_store_uid(bad).is_err(), "{bad:?} accepted");
        }
    }
}
