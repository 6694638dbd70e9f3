//! Which Tenants a change of their EventStore or of its registry Secret concerns. A store
//! with 1,000 tenants writes its status and its registry once per tenant added; waking every
//! tenant each time would make tenant creation quadratic. So each watch remembers what it saw last
//! per object and wakes only the tenants whose part changed: a change of what every tenant reads
//! (spec, phase, endpoint, provisioned resources, node addresses) wakes all of them, a change of
//! one tenant's placement or registry entry wakes that tenant. Pure apart from the memory kept in
//! [`Memory`]; it must never do I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use crate::api::{EventStore, Tenant};
use crate::controllers::trigger::hash_json;
use crate::resources::configmap::{parse_registry, REGISTRY_KEY};
use crate::resources::REGISTRY_SUFFIX;

/// What a store means to its tenants: a hash of what all of them read, and the per-tenant part
/// (placement node, or registry entry hash), keyed by tenant id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Hash of what every tenant of the store reads.
    pub shared: u64,
    /// Per-tenant part, by tenant id.
    pub per_tenant: BTreeMap<String, u64>,
}

/// Which tenants of a store to wake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Every tenant of the store.
    All,
    /// The tenants with these ids.
    Ids(BTreeSet<String>),
}

/// Compares two views of the same store. Pure.
pub fn diff(old: Option<&View>, new: &View) -> Wake {
    let Some(old) = old else {
        return Wake::All;
    };
    if old.shared != new.shared {
        return Wake::All;
    }
    let ids: BTreeSet<String> = old
        .per_tenant
        .keys()
        .chain(new.per_tenant.keys())
        .filter(|id| old.per_tenant.get(*id) != new.per_tenant.get(*id))
        .cloned()
        .collect();
    Wake::Ids(ids)
}

/// The view of an EventStore: everything but `status.placement` is shared.
pub fn store_view(es: &EventStore) -> View {
    let mut status = es.status.clone().unwrap_or_default();
    let placement = std::mem::take(&mut status.placement);
    View {
        shared: hash_json(&(&es.spec, &status, es.metadata.deletion_timestamp.is_some())),
        per_tenant: placement
            .iter()
            .map(|(id, node)| (id.clone(), hash_json(node)))
            .collect(),
    }
}

/// The store a registry Secret (`<store>-registry`, selfHosted or gateway) belongs to.
pub fn registry_store(secret: &Secret) -> Option<String> {
    secret
        .name_any()
        .strip_suffix(REGISTRY_SUFFIX)
        .map(str::to_string)
}

/// The view of a registry Secret: node addresses are shared, entries are per tenant. An
/// unreadable registry is a shared change (every tenant re-judges it).
pub fn registry_view(secret: &Secret) -> View {
    let raw = secret.data.as_ref().and_then(|d| d.get(REGISTRY_KEY));
    match parse_registry(secret) {
        Some(reg) => View {
            shared: hash_json(&(reg.version, &reg.nodes)),
            per_tenant: reg
                .tenants
                .iter()
                .map(|t| (t.id.to_string(), hash_json(t)))
                .collect(),
        },
        None => View {
            shared: hash_json(&raw),
            per_tenant: BTreeMap::new(),
        },
    }
}

/// The Tenants (from `tenants`) of store `store` in namespace `ns` that `wake` selects.
pub fn select<'a>(
    tenants: impl Iterator<Item = &'a Tenant>,
    ns: Option<&str>,
    store: &str,
    wake: &Wake,
) -> Vec<ObjectRef<Tenant>> {
    tenants
        .filter(|t| t.namespace().as_deref() == ns && t.spec.event_store_ref.name == store)
        .filter(|t| match wake {
            Wake::All => true,
            Wake::Ids(ids) => ids.contains(&t.spec.tenant_id),
        })
        .map(ObjectRef::from_obj)
        .collect()
}

/// The last view seen per object of kind `K`.
pub struct Memory<K: kube::Resource<DynamicType = ()>> {
    seen: HashMap<ObjectRef<K>, View>,
}

impl<K: kube::Resource<DynamicType = ()>> Default for Memory<K> {
    fn default() -> Self {
        Self {
            seen: HashMap::new(),
        }
    }
}

impl<K: kube::Resource<DynamicType = ()>> Memory<K> {
    /// Records `view` for `obj` and says whom to wake. A deleted object wakes all its tenants
    /// and is forgotten.
    pub fn observe(&mut self, obj: &K, view: View) -> Wake {
        let key = ObjectRef::from_obj(obj);
        if obj.meta().deletion_timestamp.is_some() {
            self.seen.remove(&key);
            return Wake::All;
        }
        let wake = diff(self.seen.get(&key), &view);
        self.seen.insert(key, view);
        wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(phase: &str, placement: serde_json::Value) -> EventStore {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "EventStore",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"backend": "selfHosted", "selfHosted": {"replicas": 2, "storage": {"size": "1Gi"}}},
            "status": {"phase": phase, "placement": placement},
        }))
        .unwrap()
    }

    fn tenant(name: &str, id: &str, store: &str) -> Tenant {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"eventStoreRef": {"name": store}, "tenantId": id},
        }))
        .unwrap()
    }

    fn ids(v: &[&str]) -> Wake {
        Wake::Ids(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_new_placement_wakes_only_that_tenant() {
        let mut m = Memory::<EventStore>::default();
        let a = store("Ready", serde_json::json!({"a": "orders-0"}));
        assert_eq!(m.observe(&a, store_view(&a)), Wake::All);
        assert_eq!(m.observe(&a, store_view(&a)), ids(&[]));
        let ab = store(
            "Ready",
            serde_json::json!({"a": "orders-0", "b": "orders-1"}),
        );
        assert_eq!(m.observe(&ab, store_view(&ab)), ids(&["b"]));
        // A moved tenant and a removed one.
        let moved = store("Ready", serde_json::json!({"a": "orders-1"}));
        assert_eq!(m.observe(&moved, store_view(&moved)), ids(&["a", "b"]));
        // The phase is read by every tenant.
        let degraded = store("Degraded", serde_json::json!({"a": "orders-1"}));
        assert_eq!(m.observe(&degraded, store_view(&degraded)), Wake::All);
    }

    fn registry_cm(name: &str, reg: serde_json::Value) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                REGISTRY_KEY.to_string(),
                k8s_openapi::ByteString(reg.to_string().into_bytes()),
            )])),
            ..Secret::default()
        }
    }

    fn entry(id: &str, hash: &str) -> serde_json::Value {
        serde_json::json!({"id": id, "tokenSha256": [hash], "node": "orders-0"})
    }

    #[test]
    fn a_registry_entry_change_wakes_only_that_tenant() {
        let nodes = serde_json::json!({"orders-0": "http://orders-0:8080"});
        let one = registry_cm(
            "orders-registry",
            serde_json::json!({"version": 1, "tenants": [entry("a", "1")], "nodes": nodes}),
        );
        let two = registry_cm(
            "orders-registry",
            serde_json::json!({"version": 1, "tenants": [entry("a", "1"), entry("b", "1")], "nodes": nodes}),
        );
        let rotated = registry_cm(
            "orders-registry",
            serde_json::json!({"version": 1, "tenants": [entry("a", "2"), entry("b", "1")], "nodes": nodes}),
        );
        let moved_nodes = registry_cm(
            "orders-registry",
            serde_json::json!({"version": 1, "tenants": [entry("a", "2"), entry("b", "1")], "nodes": {"orders-0": "http://elsewhere:8080"}}),
        );
        let mut m = Memory::<Secret>::default();
        assert_eq!(m.observe(&one, registry_view(&one)), Wake::All);
        assert_eq!(m.observe(&two, registry_view(&two)), ids(&["b"]));
        assert_eq!(m.observe(&rotated, registry_view(&rotated)), ids(&["a"]));
        assert_eq!(
            m.observe(&moved_nodes, registry_view(&moved_nodes)),
            Wake::All
        );
        assert_eq!(registry_store(&one).as_deref(), Some("orders"));
        assert_eq!(
            registry_store(&registry_cm("x-gateway-registry", serde_json::json!({}))).as_deref(),
            Some("x-gateway")
        );
        assert_eq!(
            registry_store(&registry_cm("other", serde_json::json!({}))),
            None
        );
    }

    #[test]
    fn select_filters_by_namespace_store_and_id() {
        let ts = [
            tenant("a", "a", "orders"),
            tenant("b", "b", "orders"),
            tenant("c", "c", "other"),
        ];
        let got = select(ts.iter(), Some("shop"), "orders", &ids(&["b", "c"]));
        assert_eq!(got, vec![ObjectRef::new("b").within("shop")]);
        assert_eq!(
            select(ts.iter(), Some("shop"), "orders", &Wake::All).len(),
            2
        );
        assert!(select(ts.iter(), Some("elsewhere"), "orders", &Wake::All).is_empty());
    }
}
