//! Tenant bearer tokens and the rotation state machine. A token is 32 random bytes, hex encoded;
//! only its SHA-256 digest ever leaves the connection Secret (into `status.tokenSha256` and from
//! there into the store nodes' registry). [`plan`] decides, from what the Secret and the status
//! hold, whether to keep the token, issue a first one or rotate, and which digests stay valid.
//! Pure apart from [`generate`] (which reads the OS-seeded CSPRNG): no API calls, no clock, and it
//! must never log or format a token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngCore;

/// Bytes of randomness in a token.
pub const TOKEN_BYTES: usize = 32;

/// A fresh random token (64 hex characters).
pub fn generate() -> String {
    let mut raw = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

/// Hex SHA-256 of a token: the form the status and the registry store.
pub use allsource_core::registry::sha256_hex;

/// What the controller currently observes about a tenant's credentials.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The token in the connection Secret, if the Secret exists and holds one.
    pub secret_token: Option<&'a str>,
    /// The `spec.credentials.rotate` value the Secret was last issued for.
    pub handled_rotate: Option<&'a str>,
    /// `status.tokenSha256` as last written.
    pub status_hashes: &'a [String],
    /// `status.lastRotation`.
    pub last_rotation: Option<DateTime<Utc>>,
}

/// What [`plan`] decided to do with the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenAction {
    /// The Secret's token is valid and no rotation is asked for.
    Keep,
    /// No valid token exists (new tenant, Secret lost, or its token unknown to the status).
    Issue,
    /// `spec.credentials.rotate` changed: a new token, the old one valid for the grace period.
    Rotate,
}

/// The credentials the tenant should have after this reconcile.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenPlan {
    /// Keep, issue or rotate.
    pub action: TokenAction,
    /// The token the Secret must hold.
    pub token: String,
    /// The rotate value to record on the Secret.
    pub handled_rotate: Option<String>,
    /// Digests for `status.tokenSha256`, the current token's first.
    pub hashes: Vec<String>,
    /// `status.lastRotation`.
    pub last_rotation: Option<DateTime<Utc>>,
    /// When the previous token's digest must be dropped (None: nothing pending).
    pub recheck_after: Option<Duration>,
}

// Hand-written so that a plan printed in a log or a test failure never shows the token.
impl std::fmt::Debug for TokenPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPlan")
            .field("action", &self.action)
            .field("token", &"<redacted>")
            .field("handled_rotate", &self.handled_rotate)
            .field("hashes", &self.hashes)
            .field("last_rotation", &self.last_rotation)
            .field("recheck_after", &self.recheck_after)
            .finish()
    }
}

/// Decides the tenant's credentials. `rotate` is `spec.credentials.rotate`, `grace` how long a
/// rotated-out token stays valid, `fresh` makes a new token (called at most once).
///
/// - a Secret token whose digest is in the status is kept; an unknown one is replaced, so a
///   Secret written by someone else never becomes a credential;
/// - a changed `rotate` value issues a new token and keeps the current one valid until
///   `lastRotation + grace` (only the newest previous token: rotating twice within the grace
///   period ends the oldest at once);
/// - digests of earlier tokens are dropped once the grace period is over.
pub fn plan(
    obs: Observed<'_>,
    rotate: Option<&str>,
    now: DateTime<Utc>,
    grace: Duration,
    fresh: impl FnOnce() -> String,
) -> TokenPlan {
    let valid = obs
        .secret_token
        .filter(|t| !t.is_empty())
        .map(|t| (t, sha256_hex(t)))
        .filter(|(_, h)| obs.status_hashes.contains(h));
    let grace_chrono = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    match valid {
        None => {
            let token = fresh();
            TokenPlan {
                action: TokenAction::Issue,
                hashes: vec![sha256_hex(&token)],
                token,
                handled_rotate: rotate.map(String::from),
                last_rotation: obs.last_rotation,
                recheck_after: None,
            }
        }
        Some((_, current_hash)) if obs.handled_rotate != rotate => {
            let token = fresh();
            TokenPlan {
                action: TokenAction::Rotate,
                hashes: vec![sha256_hex(&token), current_hash],
                token,
                handled_rotate: rotate.map(String::from),
                last_rotation: Some(now),
                recheck_after: Some(grace),
            }
        }
        Some((current, current_hash)) => {
            let ends = obs.last_rotation.map(|t| t + grace_chrono);
            let in_grace = ends.is_some_and(|e| e > now);
            let mut hashes = vec![current_hash.clone()];
            if in_grace {
                hashes.extend(
                    obs.status_hashes
                        .iter()
                        .filter(|h| **h != current_hash)
                        .take(1)
                        .cloned(),
                );
            }
            let recheck_after = match ends {
                Some(e) if in_grace && hashes.len() > 1 => {
                    // Round up so the recheck lands after the end, not a hair before it.
                    (e - now).to_std().ok().map(|d| d + Duration::from_secs(1))
                }
                _ => None,
            };
            TokenPlan {
                action: TokenAction::Keep,
                token: current.to_string(),
                handled_rotate: obs.handled_rotate.map(String::from),
                hashes,
                last_rotation: obs.last_rotation,
                recheck_after,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    const GRACE: Duration = Duration::from_secs(300);

    #[test]
    fn tokens_are_random_and_hashed_like_the_store_node() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 2 * TOKEN_BYTES);
        assert_ne!(a, b);
        // sha256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn first_reconcile_issues_then_keeps() {
        let obs = Observed {
            secret_token: None,
            handled_rotate: None,
            status_hashes: &[],
            last_rotation: None,
        };
        let p = plan(obs, None, t0(), GRACE, || "tok-1".into());
        assert_eq!(p.action, TokenAction::Issue);
        assert_eq!(p.hashes, vec![sha256_hex("tok-1")]);

        let obs = Observed {
            secret_token: Some("tok-1"),
            status_hashes: &p.hashes,
            ..obs
        };
        let again = plan(obs, None, t0(), GRACE, || panic!("no new token"));
        assert_eq!(again.action, TokenAction::Keep);
        assert_eq!(
            again,
            TokenPlan {
                action: TokenAction::Keep,
                ..p
            }
        );
    }

    #[test]
    fn a_token_unknown_to_the_status_is_replaced() {
        let obs = Observed {
            secret_token: Some("planted"),
            handled_rotate: None,
            status_hashes: &[sha256_hex("other")],
            last_rotation: None,
        };
        let p = plan(obs, None, t0(), GRACE, || "tok-2".into());
        assert_eq!(p.action, TokenAction::Issue);
        assert_eq!(p.hashes, vec![sha256_hex("tok-2")]);
    }

    #[test]
    fn rotation_keeps_the_old_token_for_the_grace_period_only() {
        let hashes = vec![sha256_hex("old")];
        let obs = Observed {
            secret_token: Some("old"),
            handled_rotate: None,
            status_hashes: &hashes,
            last_rotation: None,
        };
        // An initial rotate value set together with the tenant does not rotate...
        let p = plan(obs, None, t0(), GRACE, || panic!("no new token"));
        assert_eq!(p.action, TokenAction::Keep);
        // ...a changed one does.
        let p = plan(obs, Some("2026-11-24"), t0(), GRACE, || "new".into());
        assert_eq!(p.action, TokenAction::Rotate);
        assert_eq!(p.token, "new");
        assert_eq!(p.hashes, vec![sha256_hex("new"), sha256_hex("old")]);
        assert_eq!(p.last_rotation, Some(t0()));
        assert_eq!(p.recheck_after, Some(GRACE));
        assert_eq!(p.handled_rotate.as_deref(), Some("2026-11-24"));

        let during = Observed {
            secret_token: Some("new"),
            handled_rotate: Some("2026-11-24"),
            status_hashes: &p.hashes,
            last_rotation: p.last_rotation,
        };
        let mid = t0() + chrono::Duration::seconds(100);
        let q = plan(during, Some("2026-11-24"), mid, GRACE, || panic!("no"));
        assert_eq!(q.hashes, p.hashes);
        assert_eq!(q.recheck_after, Some(Duration::from_secs(201)));

        let after = t0() + chrono::Duration::seconds(300);
        let r = plan(during, Some("2026-11-24"), after, GRACE, || panic!("no"));
        assert_eq!(r.action, TokenAction::Keep);
        assert_eq!(r.hashes, vec![sha256_hex("new")]);
        assert_eq!(r.recheck_after, None);
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let obs = Observed {
            secret_token: None,
            handled_rotate: None,
            status_hashes: &[],
            last_rotation: None,
        };
        let p = plan(obs, None, t0(), GRACE, || "s3cr3t-token".into());
        assert!(!format!("{p:?}").contains("s3cr3t"));
    }
}
