//! Quota arithmetic: a per-tenant token bucket for the append rate and the pure storage/stream
//! checks. Takes the clock as an argument so it can be tested without sleeping; it never touches
//! the store itself.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

use super::file::Quotas;
use crate::error::StoreError;
use crate::model::{TenantId, TenantStats};

/// Seconds a client is told to wait after a storage or stream-count breach: those only clear
/// when the tenant deletes data or its quota is raised.
pub const CAPACITY_RETRY_AFTER_SECS: u64 = 60;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by tenant. Capacity is one second of the tenant's rate; a batch larger
/// than the capacity is admitted when the bucket is full and drives it negative, so big batches
/// are never refused forever but still pay for their size.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<TenantId, Bucket>>,
}

impl RateLimiter {
    /// Takes `n` events from `tenant`'s bucket refilled at `rate` per second, or tells how many
    /// whole seconds to wait.
    pub fn check(&self, tenant: &TenantId, rate: u64, n: u64, now: Instant) -> Result<(), u64> {
        if rate == 0 {
            return Err(CAPACITY_RETRY_AFTER_SECS);
        }
        let rate = rate as f64;
        let mut map = self.buckets.lock();
        let b = map.entry(tenant.clone()).or_insert(Bucket {
            tokens: rate,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.last = now;
        let need = (n as f64).min(rate);
        if b.tokens >= need {
            b.tokens -= n as f64;
            Ok(())
        } else {
            Err(((need - b.tokens) / rate).ceil().max(1.0) as u64)
        }
    }

    /// Forgets tenants that are no longer registered.
    pub fn retain(&self, keep: impl Fn(&TenantId) -> bool) {
        self.buckets.lock().retain(|t, _| keep(t));
    }
}

/// Checks the storage quota for a write (append or snapshot) of `incoming` bytes: events and
/// snapshots stored both count.
pub fn check_storage(
    quotas: &Quotas,
    stats: &TenantStats,
    incoming: u64,
) -> Result<(), StoreError> {
    let stored = stats.bytes.saturating_add(stats.snapshot_bytes);
    match quotas.storage_bytes {
        Some(max) if stored.saturating_add(incoming) > max => Err(StoreError::QuotaExceeded {
            message: format!(
                "storage quota of {max} bytes reached ({stored} stored, {incoming} more requested)"
            ),
            retry_after_secs: CAPACITY_RETRY_AFTER_SECS,
        }),
        _ => Ok(()),
    }
}

/// Checks the stream-count quota before an append that would create a new stream.
pub fn check_new_stream(quotas: &Quotas, streams: u64) -> Result<(), StoreError> {
    match quotas.max_streams {
        Some(max) if streams >= max => Err(StoreError::QuotaExceeded {
            message: format!("stream quota of {max} streams reached"),
            retry_after_secs: CAPACITY_RETRY_AFTER_SECS,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_refills_at_the_rate() {
        let l = RateLimiter::default();
        let t = TenantId::new("a").unwrap();
        let t0 = Instant::now();
        assert!(l.check(&t, 10, 10, t0).is_ok());
        assert_eq!(l.check(&t, 10, 5, t0), Err(1));
        assert!(l.check(&t, 10, 5, t0 + Duration::from_millis(500)).is_ok());
        assert!(l.check(&t, 10, 1, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn oversize_batch_admitted_when_full_then_pays() {
        let l = RateLimiter::default();
        let t = TenantId::new("a").unwrap();
        let t0 = Instant::now();
        assert!(l.check(&t, 10, 30, t0).is_ok());
        assert_eq!(l.check(&t, 10, 10, t0 + Duration::from_secs(1)), Err(2));
        assert!(l.check(&t, 10, 10, t0 + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn capacity_checks() {
        let q = Quotas {
            events_per_second: None,
            storage_bytes: Some(100),
            max_streams: Some(2),
        };
        let s = TenantStats {
            bytes: 90,
            ..Default::default()
        };
        assert!(check_storage(&q, &s, 10).is_ok());
        assert!(check_storage(&q, &s, 11).is_err());
        assert!(check_new_stream(&q, 1).is_ok());
        assert!(check_new_stream(&q, 2).is_err());
        assert!(check_storage(&Quotas::default(), &s, u64::MAX).is_ok());
        // Snapshots stored count as well.
        let s = TenantStats {
            bytes: 50,
            snapshot_bytes: 40,
            ..Default::default()
        };
        assert!(check_storage(&q, &s, 10).is_ok());
        assert!(check_storage(&q, &s, 11).is_err());
    }
}
