//! The registry file's schema and its pure parse/validate step (no I/O, no clock).

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::model::TenantId;

/// Hex SHA-256 of a bearer token: the only form of a token the registry file (and the Tenant's
/// `status.tokenSha256`) ever holds.
pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Why a registry file was rejected.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The file could not be read.
    #[error("cannot read registry file {path}: {source}")]
    Io {
        /// Path of the file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Neither valid JSON nor valid YAML of the expected shape.
    #[error("registry file does not parse: {0}")]
    Parse(String),
    /// Parsed, but inconsistent.
    #[error("registry file is invalid: {0}")]
    Invalid(String),
}

/// Lifecycle state of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TenantState {
    /// Serves requests.
    #[default]
    Active,
    /// Every request answers 403.
    Suspended,
    /// The tenant is being deleted with its data: every request answers 410 Gone, and the
    /// node erases the tenant's data once (code `tenant_purging` until done, then
    /// `tenant_purged`).
    Purging,
}

/// Per-tenant quotas; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    /// Sustained append rate in events per second (burst: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<u64>,
    /// Stored bytes (as reported by the backend's stats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_bytes: Option<u64>,
    /// Streams that exist at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<u64>,
}

/// One tenant as written by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantEntry {
    /// Tenant id.
    pub id: TenantId,
    /// Hex SHA-256 digests of the valid bearer tokens.
    #[serde(default)]
    pub token_sha256: Vec<String>,
    /// Active or suspended.
    #[serde(default)]
    pub state: TenantState,
    /// Quotas.
    #[serde(default)]
    pub quotas: Quotas,
    /// Owning node (pod name, a key of `nodes`); the operator always names one. A node serves
    /// only the tenants it owns and redirects the others (absent: every node serves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Where a siloed tenant's data lives on a cloud backend (its own schema, table or Firestore
    /// database); absent for pooled tenants, which use the gateway's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<LocationEntry>,
}

/// A siloed tenant's own place as written in the file: exactly one key, `{"schema": "..."}`
/// (PostgreSQL), `{"table": "..."}` (DynamoDB) or `{"database": "..."}` (Firestore).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocationEntry {
    /// PostgreSQL schema of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// DynamoDB table of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Firestore database of the tenant (same project, endpoint and credentials as the
    /// gateway's own database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// A siloed tenant's own place, checked: what the gateway routes the tenant's calls to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Location {
    /// A PostgreSQL schema with the shared layout.
    Schema(String),
    /// A DynamoDB table with the shared layout.
    Table(String),
    /// A Firestore database with the shared layout.
    Database(String),
}

impl Location {
    /// The checked form of an entry: exactly one of `schema`/`table`/`database`, a name of 1 to
    /// 255 bytes of `[A-Za-z0-9_.-]` (the backend checks its own stricter rules when it opens
    /// it).
    pub fn from_entry(e: &LocationEntry) -> Result<Self, String> {
        let loc = match (&e.schema, &e.table, &e.database) {
            (Some(s), None, None) => Location::Schema(s.clone()),
            (None, Some(t), None) => Location::Table(t.clone()),
            (None, None, Some(d)) => Location::Database(d.clone()),
            _ => return Err("location needs exactly one of schema, table, database".to_string()),
        };
        let name = loc.name();
        let ok = !name.is_empty()
            && name.len() <= 255
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(loc)
        } else {
            Err(format!(
                "location name {name:?} is not a schema, table or database name"
            ))
        }
    }

    /// The schema, table or database name.
    pub fn name(&self) -> &str {
        match self {
            Location::Schema(n) | Location::Table(n) | Location::Database(n) => n,
        }
    }
}

/// The whole registry file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryFile {
    /// Format version; must be 1.
    pub version: u32,
    /// Tenants.
    #[serde(default)]
    pub tenants: Vec<TenantEntry>,
    /// Node name -> base URL.
    #[serde(default)]
    pub nodes: BTreeMap<String, String>,
}

impl RegistryFile {
    /// Parses JSON, or YAML when the content is not JSON, then validates.
    pub fn parse(bytes: &[u8]) -> Result<Self, RegistryError> {
        let file: Self = match serde_json::from_slice(bytes) {
            Ok(f) => f,
            Err(json_err) => {
                let looks_json = bytes
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_some_and(|b| *b == b'{');
                match serde_yaml::from_slice(bytes) {
                    Ok(f) => f,
                    Err(_) if looks_json => return Err(RegistryError::Parse(json_err.to_string())),
                    Err(e) => return Err(RegistryError::Parse(e.to_string())),
                }
            }
        };
        file.validate()?;
        Ok(file)
    }

    /// Checks version, digests, uniqueness and placement references.
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.version != 1 {
            return Err(RegistryError::Invalid(format!(
                "unsupported version {}; this node reads version 1",
                self.version
            )));
        }
        let mut ids = HashSet::new();
        let mut digests = HashSet::new();
        for t in &self.tenants {
            if !ids.insert(t.id.as_str()) {
                return Err(RegistryError::Invalid(format!(
                    "tenant {} is listed twice",
                    t.id
                )));
            }
            for d in &t.token_sha256 {
                let ok = d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit());
                if !ok {
                    return Err(RegistryError::Invalid(format!(
                        "tenant {}: tokenSha256 entries must be 64 hex characters",
                        t.id
                    )));
                }
                if !digests.insert(d.to_ascii_lowercase()) {
                    return Err(RegistryError::Invalid(format!(
                        "tenant {}: a token digest is listed twice",
                        t.id
                    )));
                }
            }
            if let Some(l) = &t.location {
                Location::from_entry(l)
                    .map_err(|e| RegistryError::Invalid(format!("tenant {}: {e}", t.id)))?;
            }
            if let Some(n) = &t.node {
                if !self.nodes.contains_key(n) {
                    return Err(RegistryError::Invalid(format!(
                        "tenant {}: node {n} is not in nodes",
                        t.id
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"version":1,"tenants":[{"id":"acme","tokenSha256":["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],"state":"active","quotas":{"eventsPerSecond":1000,"storageBytes":1073741824,"maxStreams":100000},"node":"es-0"}],"nodes":{"es-0":"http://es-0.es-nodes.ns.svc:8080"}}"#;

    #[test]
    fn parses_the_documented_sample() {
        let f = RegistryFile::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(f.tenants[0].quotas.events_per_second, Some(1000));
        assert_eq!(f.tenants[0].node.as_deref(), Some("es-0"));
    }

    #[test]
    fn parses_yaml() {
        let y = "version: 1\ntenants:\n- id: acme\n  tokenSha256: []\n  state: suspended\n- id: gone\n  state: purging\n";
        let f = RegistryFile::parse(y.as_bytes()).unwrap();
        assert_eq!(f.tenants[0].state, TenantState::Suspended);
        assert_eq!(f.tenants[1].state, TenantState::Purging);
        assert_eq!(f.tenants[0].quotas, Quotas::default());
    }

    #[test]
    fn location_is_optional_and_pooled_by_default() {
        // A file written before locations existed still parses; its tenants are pooled.
        let f = RegistryFile::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(f.tenants[0].location, None);
        let j = r#"{"version":1,"tenants":[{"id":"a","location":{"schema":"s_t_a"}},{"id":"b","location":{"table":"orders--b-1a2b3c4d"}},{"id":"c","location":{"database":"orders-c-1a2b3c4d"}}]}"#;
        let f = RegistryFile::parse(j.as_bytes()).unwrap();
        let locs: Vec<Location> = f
            .tenants
            .iter()
            .map(|t| Location::from_entry(t.location.as_ref().unwrap()).unwrap())
            .collect();
        assert_eq!(
            locs,
            vec![
                Location::Schema("s_t_a".into()),
                Location::Table("orders--b-1a2b3c4d".into()),
                Location::Database("orders-c-1a2b3c4d".into())
            ]
        );
        let y = "version: 1\ntenants:\n- id: a\n  location:\n    table: t1\n";
        let f = RegistryFile::parse(y.as_bytes()).unwrap();
        assert_eq!(
            f.tenants[0]
                .location
                .as_ref()
                .and_then(|l| l.table.as_deref()),
            Some("t1")
        );
        // Written back, a pooled entry has no location key at all.
        let pooled =
            serde_json::to_string(&RegistryFile::parse(SAMPLE.as_bytes()).unwrap()).unwrap();
        assert!(!pooled.contains("location"), "{pooled}");
    }

    #[test]
    fn rejects_inconsistent_files() {
        let d = "a".repeat(64);
        for bad in [
            r#"{"version":2,"tenants":[]}"#.to_string(),
            r#"{"version":1,"tenants":[{"id":"A"}]}"#.to_string(),
            r#"{"version":1,"tenants":[{"id":"a"},{"id":"a"}]}"#.to_string(),
            r#"{"version":1,"tenants":[{"id":"a","tokenSha256":["xyz"]}]}"#.to_string(),
            format!(
                r#"{{"version":1,"tenants":[{{"id":"a","tokenSha256":["{d}"]}},{{"id":"b","tokenSha256":["{d}"]}}]}}"#
            ),
            r#"{"version":1,"tenants":[{"id":"a","node":"n"}]}"#.to_string(),
            r#"{"version":1,"tenants":[{"id":"a","state":"gone"}]}"#.to_string(),
            r#"{"version":1,"tenants":[{"id":"a","location":{}}]}"#.to_string(),
            r#"{"version":1,"tenants":[{"id":"a","location":{"schema":"s","table":"t"}}]}"#
                .to_string(),
            r#"{"version":1,"tenants":[{"id":"a","location":{"table":"a b"}}]}"#.to_string(),
            r#"{"version":1,"tenants":[{"id":"a","location":{"table":"t","database":"d"}}]}"#
                .to_string(),
            r#"{"version":1,"tenants":[{"id":"a","location":{"database":"a/b"}}]}"#.to_string(),
            "{not json".to_string(),
        ] {
            assert!(
                RegistryFile::parse(bad.as_bytes()).is_err(),
                "{bad} accepted"
            );
        }
    }
}
