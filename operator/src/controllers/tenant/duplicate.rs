//! Two Tenants with one `spec.tenantId` on one store: the store nodes refuse a registry that
//! lists an id twice (which would freeze every rotation, revocation, suspension and purge), and
//! on pooled PostgreSQL both would map to one login role. The first Tenant keeps the id — the
//! earliest `metadata.creationTimestamp`, a tie broken by namespace/name, so the choice is the
//! same after any operator restart — and every later one is `Degraded` / [`REASON`], gets no
//! token, no backend resources and no registry entry, and its deletion touches nothing of the
//! first one's. Pure.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::Tenant;

/// Condition reason of a Tenant whose id another Tenant of the store holds.
pub const REASON: &str = "DuplicateTenantId";

/// Order of precedence among Tenants sharing an id: creation time, then namespace/name.
fn rank(t: &Tenant) -> (Timestamp, String, String) {
    (
        t.metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::MAX, |c| c.0),
        t.namespace().unwrap_or_default(),
        t.name_any(),
    )
}

/// Whether `a` and `b` are distinct Tenants of one store with one tenant id.
fn same_id(a: &Tenant, b: &Tenant) -> bool {
    a.namespace() == b.namespace()
        && a.spec.event_store_ref.name == b.spec.event_store_ref.name
        && a.spec.tenant_id == b.spec.tenant_id
        && (a.namespace(), a.name_any()) != (b.namespace(), b.name_any())
}

/// The Tenant among `all` that holds `t`'s id on its store, when that is another Tenant (None:
/// `t` holds it). Tenants being deleted still hold their id until they are gone, so a newcomer
/// never takes over an id whose data or registry entry is still being removed.
pub fn holder<'a>(t: &Tenant, all: impl IntoIterator<Item = &'a Tenant>) -> Option<&'a Tenant> {
    let own = rank(t);
    all.into_iter()
        .filter(|o| same_id(t, o) && rank(o) < own)
        .min_by_key(|o| rank(o))
}

/// The Tenants of `all` that hold their id (every later duplicate left out), in `all`'s order.
pub fn holders(all: &[Tenant]) -> Vec<&Tenant> {
    all.iter().filter(|t| holder(t, all).is_none()).collect()
}

/// The Degraded message of a Tenant whose id `holder` holds.
pub fn message(t: &Tenant, holder: &Tenant) -> String {
    format!(
        "spec.tenantId {:?} is already used on EventStore {} by Tenant {}, created earlier; this \
         Tenant gets no token, no backend resources and no registry entry until that one is gone \
         (change spec.tenantId by re-creating this Tenant)",
        t.spec.tenant_id,
        t.spec.event_store_ref.name,
        holder.name_any()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(name: &str, id: &str, store: &str, created: i64) -> Tenant {
        let mut t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"eventStoreRef": {"name": store}, "tenantId": id},
        }))
        .unwrap();
        t.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        t
    }

    #[test]
    fn the_earliest_tenant_holds_the_id() {
        let first = t("zeta", "acme", "orders", 10);
        let later = t("alpha", "acme", "orders", 20);
        let other_store = t("beta", "acme", "billing", 5);
        let all = vec![later.clone(), first.clone(), other_store.clone()];
        assert_eq!(
            holder(&later, &all).map(|h| h.name_any()),
            Some("zeta".into())
        );
        assert!(holder(&first, &all).is_none());
        assert!(holder(&other_store, &all).is_none());
        let names: Vec<String> = holders(&all).iter().map(|t| t.name_any()).collect();
        assert_eq!(names, vec!["zeta".to_string(), "beta".to_string()]);
        assert!(message(&later, &first).contains("Tenant zeta"));
    }

    #[test]
    fn a_tie_goes_to_the_smaller_name_whatever_the_order() {
        let a = t("a", "acme", "orders", 10);
        let b = t("b", "acme", "orders", 10);
        for all in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
            assert!(holder(&a, &all).is_none());
            assert_eq!(holder(&b, &all).map(|h| h.name_any()), Some("a".into()));
        }
    }
}
