//! The live registry: a compiled, immutable snapshot of the file swapped atomically on reload,
//! token authentication in constant time, and the poller that reloads on content change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::model::TenantId;
use allsource_core::registry::{Location, Quotas, RegistryError, RegistryFile, TenantState};

pub use allsource_core::registry::sha256_hex;

/// What the server needs to know about an authenticated tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    /// Tenant id.
    pub id: TenantId,
    /// Active or suspended.
    pub state: TenantState,
    /// Quotas.
    pub quotas: Quotas,
    /// Owning node name, if placed.
    pub node: Option<String>,
    /// Base URL of the owning node, if placed.
    pub node_url: Option<String>,
    /// A siloed tenant's own schema or table (None: pooled).
    pub location: Option<Location>,
}

/// One immutable version of the registry.
#[derive(Debug, Default)]
pub struct RegistrySnapshot {
    tenants: Vec<Arc<TenantInfo>>,
    /// (digest, index into `tenants`), scanned in full on every lookup.
    digests: Vec<([u8; 32], usize)>,
    /// For each tenant marked `purging`: which marking this is. It stays the same over
    /// reloads that keep the tenant `purging` and changes when the tenant is marked again after
    /// having been unmarked, so a purge finished for an earlier marking never counts for a
    /// later one (the tenant may have written again in between).
    purge_marks: HashMap<TenantId, u64>,
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    diff == 0
}

impl RegistrySnapshot {
    /// Compiles a validated file.
    pub fn compile(file: &RegistryFile) -> Result<Self, RegistryError> {
        file.validate()?;
        let mut tenants = Vec::with_capacity(file.tenants.len());
        let mut digests = Vec::new();
        for (i, t) in file.tenants.iter().enumerate() {
            tenants.push(Arc::new(TenantInfo {
                id: t.id.clone(),
                state: t.state,
                quotas: t.quotas,
                node: t.node.clone(),
                node_url: t.node.as_ref().and_then(|n| file.nodes.get(n).cloned()),
                location: t
                    .location
                    .as_ref()
                    .map(Location::from_entry)
                    .transpose()
                    .map_err(|e| RegistryError::Invalid(format!("tenant {}: {e}", t.id)))?,
            }));
            for d in &t.token_sha256 {
                let mut raw = [0u8; 32];
                hex::decode_to_slice(d, &mut raw)
                    .map_err(|e| RegistryError::Invalid(format!("tenant {}: {e}", t.id)))?;
                digests.push((raw, i));
            }
        }
        let purge_marks = tenants
            .iter()
            .filter(|t| t.state == TenantState::Purging)
            .map(|t| (t.id.clone(), 1))
            .collect();
        Ok(Self {
            tenants,
            digests,
            purge_marks,
        })
    }

    /// Takes over the markings of tenants that `previous` already marked `purging`; tenants
    /// newly marked get `mark`.
    fn inherit_purge_marks(&mut self, previous: &RegistrySnapshot, mark: u64) {
        for (id, m) in self.purge_marks.iter_mut() {
            *m = previous.purge_marks.get(id).copied().unwrap_or(mark);
        }
    }

    /// Which marking of `purging` the tenant is under (None: not marked).
    pub fn purge_mark(&self, id: &TenantId) -> Option<u64> {
        self.purge_marks.get(id).copied()
    }

    /// The tenants marked `purging`, in file order, with their marking.
    pub fn purging_marked(&self) -> Vec<(TenantId, u64)> {
        self.purging()
            .into_iter()
            .filter_map(|id| self.purge_mark(&id).map(|m| (id, m)))
            .collect()
    }

    /// The tenant a bearer token belongs to. Compares the token's digest with every stored
    /// digest without an early exit, so timing does not reveal how close a guess was.
    pub fn authenticate(&self, token: &str) -> Option<Arc<TenantInfo>> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (d, i) in &self.digests {
            if ct_eq(d, &presented) {
                found = Some(*i);
            }
        }
        found.and_then(|i| self.tenants.get(i).cloned())
    }

    /// A tenant by id.
    pub fn tenant(&self, id: &TenantId) -> Option<Arc<TenantInfo>> {
        self.tenants.iter().find(|t| &t.id == id).cloned()
    }

    /// Number of tenants.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// True when no tenant is registered.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Ids of the tenants marked `purging`, in file order.
    pub fn purging(&self) -> Vec<TenantId> {
        self.tenants
            .iter()
            .filter(|t| t.state == TenantState::Purging)
            .map(|t| t.id.clone())
            .collect()
    }

    /// Tenant ids, in file order.
    pub fn tenant_ids(&self) -> Vec<TenantId> {
        self.tenants.iter().map(|t| t.id.clone()).collect()
    }
}

/// The registry handle shared by request handlers and the reload poller.
#[derive(Debug)]
pub struct Registry {
    current: RwLock<Arc<RegistrySnapshot>>,
    path: Option<PathBuf>,
    last_digest: Mutex<[u8; 32]>,
    /// The last purge marking handed out (see [`RegistrySnapshot::purge_mark`]).
    last_mark: AtomicU64,
}

impl Registry {
    /// A registry that never reloads (tests, embedded use).
    pub fn fixed(file: &RegistryFile) -> Result<Self, RegistryError> {
        Ok(Self {
            current: RwLock::new(Arc::new(RegistrySnapshot::compile(file)?)),
            path: None,
            last_digest: Mutex::new([0; 32]),
            last_mark: AtomicU64::new(1),
        })
    }

    /// Loads the registry from a file; fails when the file is missing or invalid.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, RegistryError> {
        let path = path.into();
        let bytes = read(&path)?;
        let snap = RegistrySnapshot::compile(&RegistryFile::parse(&bytes)?)?;
        Ok(Self {
            current: RwLock::new(Arc::new(snap)),
            path: Some(path),
            last_digest: Mutex::new(Sha256::digest(&bytes).into()),
            last_mark: AtomicU64::new(1),
        })
    }

    /// The registry in force now.
    pub fn snapshot(&self) -> Arc<RegistrySnapshot> {
        self.current.read().clone()
    }

    /// Re-reads the file; swaps the snapshot when the content changed and is valid. Returns
    /// whether a new snapshot was installed. An invalid file leaves the old snapshot in force.
    pub fn reload_if_changed(&self) -> Result<bool, RegistryError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let bytes = read(path)?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let mut last = self.last_digest.lock();
        if *last == digest {
            return Ok(false);
        }
        let snap = RegistrySnapshot::compile(&RegistryFile::parse(&bytes)?);
        // Remember the digest even when invalid, so a bad file is reported once, not every poll.
        *last = digest;
        let mut snap = snap?;
        let mark = self.last_mark.fetch_add(1, Ordering::Relaxed) + 1;
        let mut current = self.current.write();
        snap.inherit_purge_marks(&current, mark);
        *current = Arc::new(snap);
        Ok(true)
    }

    /// Polls the file every `interval` until `cancel` fires. ConfigMap volumes swap a symlink,
    /// so the content is compared rather than the mtime of the path. `on_result` sees every
    /// reload attempt that changed something or failed (for metrics and logs).
    pub fn spawn_poller(
        self: Arc<Self>,
        interval: Duration,
        cancel: CancellationToken,
        on_result: impl Fn(&Result<bool, RegistryError>) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let me = self.clone();
                let res = tokio::task::spawn_blocking(move || me.reload_if_changed())
                    .await
                    .unwrap_or_else(|e| Err(RegistryError::Parse(format!("reload task: {e}"))));
                if !matches!(res, Ok(false)) {
                    on_result(&res);
                }
            }
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|source| RegistryError::Io {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::file::TenantEntry;

    fn file(tokens: &[(&str, &[&str])]) -> RegistryFile {
        RegistryFile {
            version: 1,
            tenants: tokens
                .iter()
                .map(|(id, toks)| TenantEntry {
                    id: TenantId::new(*id).unwrap(),
                    token_sha256: toks.iter().map(|t| sha256_hex(t)).collect(),
                    state: TenantState::Active,
                    quotas: Quotas::default(),
                    node: None,
                    location: None,
                })
                .collect(),
            nodes: Default::default(),
        }
    }

    #[test]
    fn authenticates_every_listed_token_and_nothing_else() {
        let snap =
            RegistrySnapshot::compile(&file(&[("a", &["t1", "t2"]), ("b", &["t3"])])).unwrap();
        assert_eq!(snap.authenticate("t1").unwrap().id.as_str(), "a");
        assert_eq!(snap.authenticate("t2").unwrap().id.as_str(), "a");
        assert_eq!(snap.authenticate("t3").unwrap().id.as_str(), "b");
        assert!(snap.authenticate("t4").is_none());
        assert!(snap.authenticate("").is_none());
    }

    #[test]
    fn reload_swaps_on_change_and_keeps_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        std::fs::write(&p, serde_json::to_vec(&file(&[("a", &["t1"])])).unwrap()).unwrap();
        let r = Registry::load(&p).unwrap();
        assert!(!r.reload_if_changed().unwrap());
        std::fs::write(&p, serde_json::to_vec(&file(&[("a", &["t2"])])).unwrap()).unwrap();
        assert!(r.reload_if_changed().unwrap());
        assert!(r.snapshot().authenticate("t1").is_none());
        assert!(r.snapshot().authenticate("t2").is_some());
        std::fs::write(&p, b"{broken").unwrap();
        assert!(r.reload_if_changed().is_err());
        assert!(r.snapshot().authenticate("t2").is_some());
    }
}
