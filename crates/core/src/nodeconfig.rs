//! The node configuration file, `node.json`: the one definition of what the operator writes into
//! a selfHosted store's ConfigMap and `store-node serve` reads at start (durability and input
//! limits). The operator builds this type and serializes it; the node parses it with
//! [`NodeConfig::parse`], which refuses unknown fields so that a field one side adds and the other
//! ignores fails the node's start instead of being silently dropped. Pure: no I/O, no
//! dependency on the engine or the server, so it can move to a contract crate as it is.
//!
//! Precedence on the node: built-in defaults, then this file, then explicit command-line flags
//! or their `STORE_NODE_*` environment variables (a flag given by hand wins over the file).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::Limits;

/// Environment variable (and `--node-config` flag) naming the node configuration file. The
/// operator sets it on every store-node container; `store-node serve` reads it.
pub const NODE_CONFIG_ENV: &str = "STORE_NODE_CONFIG";

/// File name of the node configuration inside the store's ConfigMap.
pub const NODE_CONFIG_FILE: &str = "node.json";

/// The content of `node.json`. Every field is optional: an absent one keeps the node's default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    /// When an append is acknowledged relative to the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<NodeDurability>,
    /// Input limits; an unset field keeps the node's default.
    #[serde(default)]
    pub limits: NodeLimits,
}

/// Durability mode of a node (`--durability` of `store-node serve`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum NodeDurability {
    /// fsync the WAL before acknowledging (group commit).
    Fsync,
    /// fdatasync the WAL before acknowledging.
    Fdatasync,
    /// Acknowledge after write(2); fsync on a timer (`--fsync-interval-ms`).
    Interval,
    /// Never fsync; the OS syncs when it likes.
    None,
}

/// Input limits of a node; `None` keeps the node's default ([`Limits::default`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeLimits {
    /// Largest payload plus metadata of one event, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_bytes: Option<u64>,
    /// Most events in one append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_events: Option<u64>,
    /// Largest total size of one append, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_bytes: Option<u64>,
    /// Largest page a read may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_read_limit: Option<u64>,
    /// Most bytes of events one read page holds (at least one event is always returned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_read_bytes: Option<u64>,
    /// Most subscriptions one tenant holds open at once (more answer 429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_subscriptions_per_tenant: Option<u64>,
    /// Most bytes of events one subscription holds queued for a client that does not read them
    /// (an event larger than this still goes through, alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_subscription_buffer_bytes: Option<u64>,
    /// Bytes of decoded row groups the engine caches for cold reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<u64>,
}

/// Why a node configuration was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NodeConfigError {
    /// Not JSON, or not this schema (unknown field, wrong type, negative number...).
    #[error("not a valid node configuration: {0}")]
    Syntax(String),
    /// A limit of zero would refuse every request.
    #[error("limits.{0} must be at least 1")]
    ZeroLimit(&'static str),
    /// A limit does not fit this machine's address size.
    #[error("limits.{0} is too large for this platform")]
    LimitTooLarge(&'static str),
}

impl NodeConfig {
    /// Parses and checks the text of a `node.json`.
    pub fn parse(text: &str) -> Result<Self, NodeConfigError> {
        let cfg: Self =
            serde_json::from_str(text).map_err(|e| NodeConfigError::Syntax(e.to_string()))?;
        cfg.limits.apply(Limits::default())?;
        Ok(cfg)
    }

    /// The JSON the operator writes: pretty, ending with a newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

impl NodeLimits {
    /// `base` with every limit this file sets replaced.
    pub fn apply(&self, base: Limits) -> Result<Limits, NodeConfigError> {
        fn pick(name: &'static str, v: Option<u64>, base: usize) -> Result<usize, NodeConfigError> {
            match v {
                None => Ok(base),
                Some(0) => Err(NodeConfigError::ZeroLimit(name)),
                Some(n) => usize::try_from(n).map_err(|_| NodeConfigError::LimitTooLarge(name)),
            }
        }
        Ok(Limits {
            max_event_bytes: pick("maxEventBytes", self.max_event_bytes, base.max_event_bytes)?,
            max_batch_events: pick(
                "maxBatchEvents",
                self.max_batch_events,
                base.max_batch_events,
            )?,
            max_batch_bytes: pick("maxBatchBytes", self.max_batch_bytes, base.max_batch_bytes)?,
            max_read_limit: pick("maxReadLimit", self.max_read_limit, base.max_read_limit)?,
            max_read_bytes: pick("maxReadBytes", self.max_read_bytes, base.max_read_bytes)?,
            max_subscriptions_per_tenant: pick(
                "maxSubscriptionsPerTenant",
                self.max_subscriptions_per_tenant,
                base.max_subscriptions_per_tenant,
            )?,
            max_subscription_buffer_bytes: pick(
                "maxSubscriptionBufferBytes",
                self.max_subscription_buffer_bytes,
                base.max_subscription_buffer_bytes,
            )?,
            cache_bytes: pick("cacheBytes", self.cache_bytes, base.cache_bytes)?,
            ..base
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_defaults() {
        let cfg = NodeConfig {
            durability: Some(NodeDurability::Interval),
            limits: NodeLimits {
                max_event_bytes: Some(1000),
                max_batch_events: Some(2),
                ..NodeLimits::default()
            },
        };
        let json = cfg.to_json();
        assert_eq!(NodeConfig::parse(&json).unwrap(), cfg);
        let l = cfg.limits.apply(Limits::default()).unwrap();
        assert_eq!((l.max_event_bytes, l.max_batch_events), (1000, 2));
        assert_eq!(l.max_batch_bytes, Limits::default().max_batch_bytes);
        assert_eq!(NodeConfig::parse("{}").unwrap(), NodeConfig::default());
    }

    #[test]
    fn refuses_drift_and_nonsense() {
        // Fields the operator used to write and the node never read.
        for text in [
            r#"{"httpPort": 8080}"#,
            r#"{"peers": ["orders-0.orders-nodes"]}"#,
            r#"{"limits": {"maxEventBytez": 1}}"#,
            r#"{"durability": "sometimes"}"#,
            r#"{"limits": {"maxEventBytes": -1}}"#,
        ] {
            let e = NodeConfig::parse(text).unwrap_err();
            assert!(matches!(e, NodeConfigError::Syntax(_)), "{text}: {e}");
        }
        assert_eq!(
            NodeConfig::parse(r#"{"limits": {"maxBatchEvents": 0}}"#).unwrap_err(),
            NodeConfigError::ZeroLimit("maxBatchEvents")
        );
    }
}
