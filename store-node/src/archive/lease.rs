//! The archiver's lease: one object per store in the destination
//! (`_leases/store=<store uid>.json`), taken and renewed with conditional writes (S3
//! `If-None-Match`/`If-Match`, GCS `ifGenerationMatch`), so that two archivers of one store on one
//! destination never run at once. The holder renews it before every commit; a run whose renewal
//! fails (another run took an expired lease) stops before committing anything, so a paused or
//! partitioned run cannot move a watermark it no longer owns (the lease version is the fencing
//! token). Clocks of the archivers only need to agree to within the TTL.
//!
//! This module only decides who holds the lease; it must never read or write archive data.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::objstore::{Destination, ObjectStore, PutCondition};
use super::{ArchiveError, ArchiveResult};

/// Key (relative) of a store's lease object.
pub fn lease_key(store_uid: &str) -> String {
    format!("_leases/store={store_uid}.json")
}

/// Content of the lease object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseBody {
    /// Run id of the holder.
    pub holder: String,
    /// Uid of the store the lease is for.
    pub store_uid: String,
    /// When the lease lapses unless renewed (ms since the epoch).
    pub expires_at_ms: i64,
    /// True once the holder let it go.
    #[serde(default)]
    pub released: bool,
}

impl LeaseBody {
    /// True when someone else than `holder` may take the lease at `now_ms`.
    pub fn is_free_for(&self, holder: &str, now_ms: i64) -> bool {
        self.released || self.holder == holder || self.expires_at_ms <= now_ms
    }
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    key: String,
    version: String,
    body: LeaseBody,
    ttl: Duration,
    renewed_at_ms: i64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

fn encode(key: &str, body: &LeaseBody) -> ArchiveResult<Bytes> {
    serde_json::to_vec_pretty(body)
        .map(Bytes::from)
        .map_err(|e| ArchiveError::Manifest {
            key: key.to_string(),
            message: e.to_string(),
        })
}

impl Lease {
    /// Takes the store's lease for `holder`, or fails with [`ArchiveError::LeaseHeld`] when
    /// another run holds it and it has not expired.
    pub async fn acquire(
        objects: &dyn ObjectStore,
        dest: &Destination,
        store_uid: &str,
        holder: &str,
        ttl: Duration,
    ) -> ArchiveResult<Self> {
        let key = dest.key(&lease_key(store_uid));
        // A few tries: each lost race means another run wrote the lease in between.
        for _ in 0..3 {
            let now = now_ms();
            let body = LeaseBody {
                holder: holder.to_string(),
                store_uid: store_uid.to_string(),
                expires_at_ms: now.saturating_add(ttl_ms(ttl)),
                released: false,
            };
            let cond = match objects.get_versioned(&key).await? {
                None => PutCondition::Absent,
                Some(current) => {
                    let held: LeaseBody = serde_json::from_slice(&current.body).map_err(|e| {
                        ArchiveError::Manifest {
                            key: key.clone(),
                            message: format!("lease object not understood: {e}"),
                        }
                    })?;
                    if !held.is_free_for(holder, now) {
                        return Err(ArchiveError::LeaseHeld {
                            key,
                            holder: held.holder,
                            expires_at_ms: held.expires_at_ms,
                        });
                    }
                    PutCondition::Version(current.version)
                }
            };
            if let Some(version) = objects.put_if(&key, encode(&key, &body)?, &cond).await? {
                return Ok(Self {
                    key,
                    version,
                    body,
                    ttl,
                    renewed_at_ms: now,
                });
            }
        }
        Err(ArchiveError::LeaseHeld {
            key,
            holder: "another run (lost the race three times)".into(),
            expires_at_ms: 0,
        })
    }

    /// Extends the lease by its TTL; [`ArchiveError::LeaseLost`] when another run took it (the
    /// caller must stop before committing anything).
    pub async fn renew(&mut self, objects: &dyn ObjectStore) -> ArchiveResult<()> {
        let now = now_ms();
        let mut body = self.body.clone();
        body.expires_at_ms = now.saturating_add(ttl_ms(self.ttl));
        let cond = PutCondition::Version(self.version.clone());
        match objects
            .put_if(&self.key, encode(&self.key, &body)?, &cond)
            .await?
        {
            Some(version) => {
                self.version = version;
                self.body = body;
                self.renewed_at_ms = now;
                Ok(())
            }
            None => Err(ArchiveError::LeaseLost(self.key.clone())),
        }
    }

    /// Renews when a third of the TTL has passed since the last renewal (called between files
    /// of a long upload).
    pub async fn keep(&mut self, objects: &dyn ObjectStore) -> ArchiveResult<()> {
        if now_ms().saturating_sub(self.renewed_at_ms) >= ttl_ms(self.ttl) / 3 {
            self.renew(objects).await?;
        }
        Ok(())
    }

    /// Lets the lease go (a conditional write of `released: true`); a failure only means the
    /// lease lapses at its expiry, so it is logged, not returned.
    pub async fn release(self, objects: &dyn ObjectStore) {
        let mut body = self.body.clone();
        body.released = true;
        let cond = PutCondition::Version(self.version.clone());
        let result = match encode(&self.key, &body) {
            Ok(b) => objects.put_if(&self.key, b, &cond).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(Some(_)) => {}
            Ok(None) => tracing::warn!(key = %self.key, "lease was taken over before release"),
            Err(e) => tracing::warn!(key = %self.key, error = %e, "releasing the lease failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_take_a_lease() {
        let held = LeaseBody {
            holder: "run-a".into(),
            store_uid: "uid".into(),
            expires_at_ms: 1_000,
            released: false,
        };
        assert!(!held.is_free_for("run-b", 999), "unexpired lease taken");
        assert!(held.is_free_for("run-b", 1_000), "expired lease kept");
        assert!(held.is_free_for("run-a", 0), "holder refused its own lease");
        let released = LeaseBody {
            released: true,
            ..held
        };
        assert!(released.is_free_for("run-b", 0), "released lease kept");
        assert_eq!(lease_key("uid-1"), "_leases/store=uid-1.json");
    }
}
