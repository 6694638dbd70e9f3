//! Builds what the store nodes read: the `<name>-config` ConfigMap with `node.json` (durability
//! and input limits, store-node's own [`NodeConfig`] type, so the node parses exactly what is
//! written) and the `<name>-registry` Secret with `registry.json` (which tenant lives on which
//! node, its token digests and state; a Secret, because whoever could edit it could add a token,
//! trigger a purge or redirect the operator's calls). The operator configures nodes only through
//! these files and never calls into pods. Pure: no I/O.

use std::collections::BTreeMap;

pub use allsource_core::model::TenantId;
pub use allsource_core::nodeconfig::NodeConfig;
use allsource_core::nodeconfig::{NodeDurability, NodeLimits, NODE_CONFIG_FILE};
pub use allsource_core::registry::{LocationEntry, Quotas, RegistryFile, TenantEntry, TenantState};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::ResourceExt;
use serde::Serialize;

use super::gateway::GatewayBackend;
use super::{
    child_meta, config_map_name, headless_service_name, registry_secret_name, HTTP_PORT,
    REGISTRY_ROLE, ROLE_LABEL,
};
use crate::api::eventstore::{Durability, SelfHostedSpec};
use crate::api::tenant::Placement;
use crate::api::{EventStore, Tenant};
use crate::provision::{dynamodb, firestore, postgres};

/// File name of the node configuration inside the ConfigMap.
pub const NODE_CONFIG_KEY: &str = NODE_CONFIG_FILE;
/// File name of the tenant registry inside the ConfigMap.
pub const REGISTRY_KEY: &str = "registry.json";

/// The registry location of a siloed tenant of a cloud store served by `backend`: the schema
/// ([`postgres::silo_schema_name`]), table ([`dynamodb::silo_table_name`]) or Firestore database
/// ([`firestore::silo_database_name`]) the Tenant controller provisions for it. None for pooled
/// tenants. Pure: derived from the spec alone, so the gateway routes a tenant the same way from
/// its first registry entry on.
pub fn silo_location(t: &Tenant, backend: &GatewayBackend) -> Option<LocationEntry> {
    if t.spec.placement != Placement::Siloed {
        return None;
    }
    let id = &t.spec.tenant_id;
    Some(match backend {
        GatewayBackend::Postgres { schema, .. } => LocationEntry {
            schema: Some(postgres::silo_schema_name(schema, id)),
            ..LocationEntry::default()
        },
        GatewayBackend::Dynamodb { table, .. } => LocationEntry {
            table: Some(dynamodb::silo_table_name(table, id)),
            ..LocationEntry::default()
        },
        GatewayBackend::Firestore { database, .. } => LocationEntry {
            database: Some(firestore::silo_database_name(
                database,
                &t.namespace().unwrap_or_default(),
                &t.spec.event_store_ref.name,
                id,
            )),
            ..LocationEntry::default()
        },
    })
}

/// Node name to base URL for `replicas` nodes.
/// The scheme is `https` when the store has a TLS Secret.
pub fn node_urls(es: &EventStore, replicas: i32) -> BTreeMap<String, String> {
    let scheme = super::node_scheme(es);
    let svc = headless_service_name(es);
    let ns = es
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    (0..replicas)
        .map(|i| {
            let pod = super::node_name(es, i);
            let url = format!("{scheme}://{pod}.{svc}.{ns}.svc:{HTTP_PORT}");
            (pod, url)
        })
        .collect()
}

/// Bytes of a Kubernetes quantity such as `10Gi`, `500M` or `1.5Ti` (None when malformed).
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    let bytes = (n * mult).round();
    (bytes.is_finite() && bytes >= 0.0 && bytes <= u64::MAX as f64).then_some(bytes as u64)
}

/// Whether a Tenant is deleted with its data (`deletionPolicy: Delete`): it keeps a registry
/// entry in state `purging` until its finalizer saw the nodes erase the data.
pub fn purging(t: &Tenant) -> bool {
    t.metadata.deletion_timestamp.is_some()
        && t.spec.deletion_policy == crate::api::DeletionPolicy::Delete
        && t.finalizers().iter().any(|f| f == crate::api::FINALIZER)
}

/// The registry entry of a Tenant served by `node`: token digests from its status, state and
/// quotas from its spec. None for a tenant id the nodes would refuse (the CRD's pattern admits
/// none), so one bad entry never makes the nodes refuse the whole file.
pub fn registry_tenant(t: &Tenant, node: String) -> Option<TenantEntry> {
    let q = t.spec.quotas.clone().unwrap_or_default();
    let positive = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    Some(TenantEntry {
        id: TenantId::new(&t.spec.tenant_id).ok()?,
        token_sha256: t
            .status
            .as_ref()
            .map(|s| s.token_sha256.clone())
            .unwrap_or_default(),
        state: if purging(t) {
            TenantState::Purging
        } else if t.spec.suspend {
            TenantState::Suspended
        } else {
            TenantState::Active
        },
        quotas: Quotas {
            events_per_second: positive(q.events_per_second),
            storage_bytes: q.storage_bytes.as_deref().and_then(quantity_bytes),
            max_streams: positive(q.max_streams),
        },
        node: Some(node),
        location: None,
    })
}

/// The node configuration (`node.json`) every node of a selfHosted store reads at start:
/// `spec.selfHosted.durability` and `spec.selfHosted.limits`. Nothing else goes in: the node's
/// address comes from its flags and the other nodes' addresses from the registry.
pub fn node_config(sh: &SelfHostedSpec) -> NodeConfig {
    // The CRD allows only positive limits; anything else keeps the node's default.
    let positive = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0);
    let l = &sh.limits;
    NodeConfig {
        durability: Some(match sh.durability {
            Durability::Fsync => NodeDurability::Fsync,
            Durability::Interval => NodeDurability::Interval,
            Durability::None => NodeDurability::None,
        }),
        limits: NodeLimits {
            max_event_bytes: positive(l.max_event_bytes),
            max_batch_events: positive(l.max_batch_events),
            max_batch_bytes: positive(l.max_batch_bytes),
            max_read_limit: positive(l.max_read_limit),
            max_read_bytes: positive(l.max_read_bytes),
            max_subscriptions_per_tenant: positive(l.max_subscriptions_per_tenant),
            max_subscription_buffer_bytes: positive(l.max_subscription_buffer_bytes),
            cache_bytes: positive(l.cache_bytes),
        },
    }
}

/// Pretty JSON ending with a newline, like a file written by hand.
fn pretty_json<T: Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_default();
    s.push('\n');
    s
}

/// The ConfigMap holding `node.json`.
pub fn build(es: &EventStore, node: &NodeConfig) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(es, config_map_name(es)),
        data: Some(BTreeMap::from([(
            NODE_CONFIG_KEY.to_string(),
            node.to_json(),
        )])),
        ..ConfigMap::default()
    }
}

/// The Secret holding `registry.json` ([`registry_secret_name`]), labelled for the Tenant
/// controller's watch.
pub fn registry_secret(es: &EventStore, registry: &RegistryFile) -> Secret {
    let mut metadata = child_meta(es, registry_secret_name(es));
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(ROLE_LABEL.to_string(), REGISTRY_ROLE.to_string());
    Secret {
        metadata,
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            REGISTRY_KEY.to_string(),
            ByteString(pretty_json(registry).into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// The registry a registry Secret carries (None: unreadable content). Pure.
pub fn parse_registry(secret: &Secret) -> Option<RegistryFile> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(REGISTRY_KEY))
        .and_then(|raw| serde_json::from_slice(&raw.0).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot() {
        let es = super::super::fixtures::selfhosted();
        let sh = es.spec.self_hosted.clone().unwrap();
        let registry = RegistryFile {
            version: 1,
            tenants: vec![TenantEntry {
                id: TenantId::new("acme").unwrap(),
                token_sha256: vec![
                    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
                ],
                state: TenantState::Active,
                quotas: Quotas {
                    events_per_second: Some(500),
                    storage_bytes: quantity_bytes("10Gi"),
                    max_streams: None,
                },
                node: Some("orders-1".into()),
                location: None,
            }],
            nodes: node_urls(&es, 3),
        };
        insta::assert_yaml_snapshot!(build(&es, &node_config(&sh)));
        let secret = registry_secret(&es, &registry);
        assert_eq!(
            secret.metadata.labels.as_ref().unwrap()[ROLE_LABEL],
            REGISTRY_ROLE
        );
        assert_eq!(parse_registry(&secret), Some(registry.clone()));
        insta::assert_yaml_snapshot!("registry_secret", secret);
    }

    /// The node.json the operator writes is what store-node's own parser accepts, with every
    /// field of the spec carried over: a field added on one side only fails here.
    #[test]
    fn node_json_round_trips_through_the_node_parser() {
        let mut es = super::super::fixtures::selfhosted();
        let sh = es.spec.self_hosted.as_mut().unwrap();
        sh.durability = Durability::Interval;
        sh.limits = crate::api::eventstore::NodeLimits {
            max_event_bytes: Some(1000),
            max_batch_events: Some(2),
            max_batch_bytes: Some(5000),
            max_read_limit: Some(7),
            max_read_bytes: Some(9000),
            max_subscriptions_per_tenant: Some(3),
            max_subscription_buffer_bytes: Some(4096),
            cache_bytes: Some(8192),
        };
        let sh = sh.clone();
        let cm = build(&es, &node_config(&sh));
        let text = &cm.data.unwrap()[NODE_CONFIG_KEY];
        let parsed = NodeConfig::parse(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(parsed, node_config(&sh));
        assert_eq!(parsed.durability, Some(NodeDurability::Interval));
        let l = parsed
            .limits
            .apply(allsource_core::model::Limits::default())
            .unwrap();
        assert_eq!(
            (
                l.max_event_bytes,
                l.max_batch_events,
                l.max_batch_bytes,
                l.max_read_limit,
                l.max_read_bytes,
                l.max_subscriptions_per_tenant,
                l.max_subscription_buffer_bytes,
                l.cache_bytes
            ),
            (1000, 2, 5000, 7, 9000, 3, 4096, 8192)
        );
        // Unset limits stay out of the file, so the node keeps its defaults.
        let bare = node_config(&crate::api::eventstore::SelfHostedSpec::default());
        assert_eq!(bare.limits, NodeLimits::default());
        assert!(NodeConfig::parse(&bare.to_json()).is_ok());
    }

    fn tenant(placement: &str) -> Tenant {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "namespace": "shop"},
            "spec": {"eventStoreRef": {"name": "orders"}, "tenantId": "acme", "placement": placement},
        }))
        .unwrap()
    }

    #[test]
    fn siloed_tenants_get_their_own_location() {
        let pg = GatewayBackend::Postgres {
            url_secret: "pg".into(),
            schema: "allsource_shop_orders_1a2b3c4d".into(),
            ssl_mode: crate::api::eventstore::SslMode::default(),
        };
        let ddb = GatewayBackend::Dynamodb {
            table: "orders".into(),
            region: "us-east-1".into(),
            endpoint: None,
            credentials_secret: None,
        };
        assert_eq!(silo_location(&tenant("pooled"), &pg), None);
        assert_eq!(silo_location(&tenant("pooled"), &ddb), None);
        let l = silo_location(&tenant("siloed"), &pg).unwrap();
        assert_eq!(
            l.schema.as_deref(),
            Some(postgres::silo_schema_name("allsource_shop_orders_1a2b3c4d", "acme").as_str())
        );
        assert_eq!(l.table, None);
        let l = silo_location(&tenant("siloed"), &ddb).unwrap();
        assert_eq!(l.table, Some(dynamodb::silo_table_name("orders", "acme")));
        let fs = GatewayBackend::Firestore {
            project: "p".into(),
            database: "(default)".into(),
            emulator_host: None,
            endpoint: None,
            credentials_secret: None,
        };
        assert_eq!(silo_location(&tenant("pooled"), &fs), None);
        let db = silo_location(&tenant("siloed"), &fs).unwrap();
        assert_eq!(
            db,
            LocationEntry {
                database: Some(firestore::silo_database_name(
                    "(default)",
                    "shop",
                    "orders",
                    "acme"
                )),
                ..LocationEntry::default()
            }
        );
        let mut fe = registry_tenant(&tenant("siloed"), "gateway".into()).unwrap();
        fe.location = Some(db);
        let json = serde_json::to_string(&fe).unwrap();
        assert!(
            json.contains(r#""location":{"database":"orders-acme-"#),
            "{json}"
        );
        // The entry as store-node reads it: one key, absent for pooled tenants.
        let mut e = registry_tenant(&tenant("siloed"), "gateway".into()).unwrap();
        let pooled = serde_json::to_string(&e).unwrap();
        assert!(!pooled.contains("location"), "{pooled}");
        e.location = Some(l);
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            json.contains(r#""location":{"table":"orders--acme-"#),
            "{json}"
        );
    }

    #[test]
    fn deleted_tenant_is_purging_only_under_delete() {
        let mut t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "namespace": "shop", "finalizers": [crate::api::FINALIZER],
                         "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"eventStoreRef": {"name": "orders"}, "tenantId": "acme", "suspend": true,
                     "deletionPolicy": "Delete"},
        }))
        .unwrap();
        assert_eq!(
            registry_tenant(&t, "orders-0".into()).unwrap().state,
            TenantState::Purging
        );
        let json = serde_json::to_string(&registry_tenant(&t, "orders-0".into()).unwrap()).unwrap();
        assert!(json.contains(r#""state":"purging""#), "{json}");
        t.spec.deletion_policy = crate::api::DeletionPolicy::Retain;
        assert_eq!(
            registry_tenant(&t, "orders-0".into()).unwrap().state,
            TenantState::Suspended
        );
        t.spec.deletion_policy = crate::api::DeletionPolicy::Delete;
        t.metadata.deletion_timestamp = None;
        assert_eq!(
            registry_tenant(&t, "orders-0".into()).unwrap().state,
            TenantState::Suspended
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("10Gi"), Some(10 * 1024 * 1024 * 1024));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("1.5Ki"), Some(1536));
        assert_eq!(quantity_bytes("12"), Some(12));
        assert_eq!(quantity_bytes("3Xi"), None);
        assert_eq!(quantity_bytes("Gi"), None);
    }

    #[test]
    fn registry_parses_with_the_store_nodes_reader() {
        let es = super::super::fixtures::selfhosted();
        let registry = RegistryFile {
            version: 1,
            tenants: vec![TenantEntry {
                id: TenantId::new("acme").unwrap(),
                token_sha256: vec![],
                state: TenantState::Suspended,
                quotas: Quotas::default(),
                node: Some("orders-0".into()),
                location: None,
            }],
            nodes: node_urls(&es, 1),
        };
        let mut tls = es.clone();
        tls.spec.self_hosted.as_mut().unwrap().tls_secret_ref = Some(crate::api::SecretRef {
            name: "orders-tls".into(),
        });
        assert_eq!(
            node_urls(&tls, 1)["orders-0"],
            "https://orders-0.orders-nodes.shop.svc:8080",
            "a store with a TLS Secret publishes https node URLs"
        );
        let json = serde_json::to_string(&registry).unwrap();
        // The exact shape store-node's RegistryFile expects (camelCase keys, lower-case state).
        assert!(json.contains(r#""tokenSha256":[]"#), "{json}");
        assert!(json.contains(r#""state":"suspended""#), "{json}");
        assert!(
            json.contains(r#""orders-0":"http://orders-0.orders-nodes.shop.svc:8080""#),
            "{json}"
        );
    }
}
