//! Manifest objects: the per-tenant manifest (`tenant=<t>/_watermark.json`), which is the source
//! of truth of what is archived, and the per-run manifest (`_runs/<run-id>.json`), which records
//! what one run did.
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

/// Version of the manifest format.
pub const FORMAT_VERSION: u32 = 1;

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
    /// The manifest of a tenant that has nothing archived yet.
    pub fn empty(tenant: TenantId) -> Self {
        Self {
            format: FORMAT_VERSION,
            tenant,
            watermark: 0,
            files: Vec::new(),
            run_id: String::new(),
            updated_at: String::new(),
        }
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

/// Key (relative) of a tenant manifest.
pub fn tenant_manifest_key(tenant: &TenantId) -> String {
    format!("tenant={tenant}/_watermark.json")
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

/// Loads a tenant's manifest, or an empty one when the tenant was never archived.
pub async fn load_tenant(
    store: &dyn ObjectStore,
    dest: &Destination,
    tenant: &TenantId,
) -> ArchiveResult<TenantManifest> {
    let key = dest.key(&tenant_manifest_key(tenant));
    match store.get(&key).await {
        Ok(data) => {
            let m: TenantManifest = serde_json::from_slice(&data).map_err(|e| merr(&key, e))?;
            if m.format != FORMAT_VERSION || &m.tenant != tenant {
                return Err(merr(
                    &key,
                    format!("format {} tenant {} not understood", m.format, m.tenant),
                ));
            }
            Ok(m)
        }
        Err(ArchiveError::NotFound(_)) => Ok(TenantManifest::empty(tenant.clone())),
        Err(e) => Err(e),
    }
}

/// Writes a tenant manifest with one PUT (the commit point of a run for that tenant).
pub async fn save_tenant(
    store: &dyn ObjectStore,
    dest: &Destination,
    manifest: &TenantManifest,
) -> ArchiveResult<()> {
    let key = dest.key(&tenant_manifest_key(&manifest.tenant));
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
        let mut m = TenantManifest::empty(TenantId::new("acme").unwrap());
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
        let back: TenantManifest = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.events(), 10);
        assert_eq!(
            tenant_manifest_key(&m.tenant),
            "tenant=acme/_watermark.json"
        );
    }
}
