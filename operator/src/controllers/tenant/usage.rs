//! Reads a tenant's usage from the store (`GET /v1/stats` with the tenant's own token, so the
//! operator needs no admin credential). One HTTP call, no retries: the caller keeps the old
//! figures when this fails. It must never log the token.

use std::time::Duration;

use allsource_client::{ClientError, NodeClient};
use allsource_core::wire::StatsOut;
use chrono::{DateTime, Utc};

use crate::api::tenant::TenantUsage;

/// Time limit of one stats request.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Why usage could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// No answer, an error answer, or a body that is not the stats.
    #[error(transparent)]
    Node(#[from] ClientError),
    /// The plain HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Build(#[from] reqwest::Error),
    /// A figure does not fit the status field.
    #[error("stats figure out of range")]
    Range,
}

/// Builds the HTTP client used for stats requests to plain-HTTP nodes.
pub fn client() -> Result<reqwest::Client, UsageError> {
    Ok(builder().build()?)
}

/// The settings of every client that calls store nodes (timeouts), before any TLS root.
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
}

fn to_usage(s: StatsOut, at: DateTime<Utc>) -> Result<TenantUsage, UsageError> {
    let conv = |v: u64| i64::try_from(v).map_err(|_| UsageError::Range);
    Ok(TenantUsage {
        events: conv(s.events)?,
        streams: conv(s.streams)?,
        bytes: conv(s.bytes)?,
        updated_at: Some(at),
    })
}

/// Reads the usage of the tenant owning `token` from the store at `base_url`.
pub async fn fetch(
    client: &reqwest::Client,
    base_url: &str,
    token: &str,
    at: DateTime<Utc>,
) -> Result<TenantUsage, UsageError> {
    let node = NodeClient::new(client.clone(), base_url)?;
    to_usage(node.stats(token).await?, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(events: u64, streams: u64, bytes: u64) -> StatsOut {
        let s = allsource_core::model::TenantStats {
            events,
            streams,
            bytes,
            snapshot_bytes: 0,
            next_position: events,
            incarnation: 0,
            trimmed_before: 0,
        };
        StatsOut::new("acme".into(), s, Default::default())
    }

    /// The node's own response type, through JSON as it travels.
    #[test]
    fn parses_the_store_nodes_stats() {
        let body = serde_json::to_string(&stats(12, 3, 4096)).unwrap();
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let u = to_usage(serde_json::from_str(&body).unwrap(), at).unwrap();
        assert_eq!((u.events, u.streams, u.bytes), (12, 3, 4096));
        assert_eq!(u.updated_at, Some(at));
        assert!(to_usage(stats(u64::MAX, 0, 0), at).is_err());
    }
}
