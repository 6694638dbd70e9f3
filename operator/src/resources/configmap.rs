//! Builds the `<name>-config` ConfigMap the store nodes read: `node.json` (durability, limits,
//! peers) and `registry.json` (which tenant lives on which node). The operator configures nodes
//! only through this file and never calls into pods. Pure: no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Deserialize, Serialize};

use super::{child_meta, config_map_name, headless_service_name, HTTP_PORT};
use crate::api::eventstore::{NodeLimits, SelfHostedSpec};
use crate::api::EventStore;

/// File name of the node configuration inside the ConfigMap.
pub const NODE_CONFIG_KEY: &str = "node.json";
/// File name of the tenant registry inside the ConfigMap.
pub const REGISTRY_KEY: &str = "registry.json";

/// Node configuration shared by every node of the StatefulSet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    /// fsync, interval or none.
    pub durability: String,
    /// Input limits; unset fields use the node's defaults.
    pub limits: NodeLimits,
    /// HTTP port the node listens on.
    pub http_port: i32,
    /// DNS names of every node (`<pod>.<name>-nodes`), in ordinal order.
    pub peers: Vec<String>,
}

/// One tenant entry of the registry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegistryTenant {
    /// Tenant id.
    pub tenant_id: String,
    /// Node (pod name) that owns the tenant's data.
    pub node: String,
    /// pooled or siloed.
    pub placement: String,
    /// The node rejects appends and reads while true.
    #[serde(default)]
    pub suspended: bool,
    /// Appends per second allowed; unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<i64>,
    /// Bytes allowed; unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_bytes: Option<String>,
    /// Streams allowed; unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<i64>,
}

/// The tenant registry every node reads (and re-reads when the mounted file changes).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Registry {
    /// Format version.
    pub version: u32,
    /// Tenants sorted by id.
    pub tenants: Vec<RegistryTenant>,
}

/// Node configuration of an EventStore with `replicas` nodes.
pub fn node_config(es: &EventStore, sh: &SelfHostedSpec, replicas: i32) -> NodeConfig {
    let svc = headless_service_name(es);
    NodeConfig {
        durability: sh.durability.as_str().to_string(),
        limits: sh.limits.clone(),
        http_port: HTTP_PORT,
        peers: (0..replicas)
            .map(|i| format!("{}.{svc}", super::node_name(es, i)))
            .collect(),
    }
}

/// Pretty JSON ending with a newline, like a file written by hand.
fn pretty_json<T: Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_default();
    s.push('\n');
    s
}

/// The ConfigMap holding `node.json` and `registry.json`.
pub fn build(es: &EventStore, node: &NodeConfig, registry: &Registry) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(es, config_map_name(es)),
        data: Some(BTreeMap::from([
            (NODE_CONFIG_KEY.to_string(), pretty_json(node)),
            (REGISTRY_KEY.to_string(), pretty_json(registry)),
        ])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot() {
        let es = super::super::fixtures::selfhosted();
        let sh = es.spec.self_hosted.clone().unwrap();
        let registry = Registry {
            version: 1,
            tenants: vec![RegistryTenant {
                tenant_id: "acme".into(),
                node: "orders-1".into(),
                placement: "pooled".into(),
                suspended: false,
                events_per_second: Some(500),
                storage_bytes: None,
                max_streams: None,
            }],
        };
        insta::assert_yaml_snapshot!(build(&es, &node_config(&es, &sh, 3), &registry));
    }
}
