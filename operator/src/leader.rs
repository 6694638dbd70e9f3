//! Leader election with a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! reconcile at the same time. The decision (take, renew, wait) is a pure function of the Lease
//! and the clock; the loop around it does the API calls with optimistic concurrency
//! (resourceVersion), so two candidates racing for an expired Lease cannot both win. A replica
//! that cannot renew before its Lease expires stops (the process exits and restarts as a
//! standby) rather than risk a split brain. It must never touch any other object.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
}

/// What a candidate should do with the Lease it just read.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it (or the holder expired): take it.
    Take,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a valid Lease: wait and retry.
    Wait,
}

/// Decides from the Lease spec and the current time.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Take;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => Decision::Renew,
        None | Some("") => Decision::Take,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0.as_second());
            match renewed {
                Some(at) if at + duration > now.as_second() => Decision::Wait,
                _ => Decision::Take,
            }
        }
    }
}

/// Errors of the election loop.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be renewed before it expired.
    #[error("lost the leader lease {0}")]
    Lost(String),
    /// An API call failed in a way retrying cannot fix.
    #[error("lease API: {0}")]
    Kube(#[from] kube::Error),
}

fn spec_for(cfg: &LeaseConfig, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(cfg.identity.as_str());
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(
            i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX),
        ),
        acquire_time: if ours {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours || previous.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    }
}

/// Tries once to take or renew the Lease; `Ok(true)` when we hold it afterwards.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec_for(cfg, None, now)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => match decide(lease.spec.as_ref(), &cfg.identity, now) {
            Decision::Wait => Ok(false),
            Decision::Take | Decision::Renew => {
                lease.spec = Some(spec_for(cfg, lease.spec.as_ref(), now));
                // resourceVersion from the read makes this a compare-and-swap.
                match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        },
    }
}

/// Blocks until this replica holds the Lease.
pub async fn acquire(client: Client, cfg: &LeaseConfig) -> Result<(), LeaderError> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    loop {
        match try_acquire(&api, cfg).await {
            Ok(true) => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "acquired leader lease");
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader lease attempt failed"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
}

/// Renews the Lease forever; returns an error when leadership is lost.
pub async fn hold(client: Client, cfg: &LeaseConfig) -> LeaderError {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew_every).await;
        match try_acquire(&api, cfg).await {
            Ok(true) => last_renewal = tokio::time::Instant::now(),
            Ok(false) => return LeaderError::Lost(cfg.name.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "leader lease renewal failed");
                // Stop before the Lease can expire, so another replica may take over safely.
                if last_renewal.elapsed() + cfg.renew_every >= cfg.lease_duration {
                    return LeaderError::Lost(cfg.name.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_at: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed_at).unwrap())),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(decide(None, "a", now), Decision::Take);
        assert_eq!(decide(Some(&spec("a", 999, 15)), "a", now), Decision::Renew);
        assert_eq!(decide(Some(&spec("b", 990, 15)), "a", now), Decision::Wait);
        assert_eq!(decide(Some(&spec("b", 980, 15)), "a", now), Decision::Take);
        assert_eq!(decide(Some(&spec("", 999, 15)), "a", now), Decision::Take);
    }

    #[test]
    fn taking_over_counts_a_transition() {
        let cfg = LeaseConfig {
            name: "l".into(),
            namespace: "n".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        let now = Timestamp::from_second(1_000).unwrap();
        let mut old = spec("b", 900, 15);
        old.lease_transitions = Some(2);
        let taken = spec_for(&cfg, Some(&old), now);
        assert_eq!(taken.lease_transitions, Some(3));
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        let renewed = spec_for(&cfg, Some(&taken), now);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time, taken.acquire_time);
    }
}
