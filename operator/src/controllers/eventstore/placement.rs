//! Which store node owns which tenant of a selfHosted EventStore, and whether a requested
//! replica count is safe. Placement is sticky: a tenant never moves once placed, because moving
//! data between nodes is not implemented yet. So a scale-down that would remove a node owning
//! tenants is refused (the StatefulSet keeps enough replicas) until those tenants are deleted.
//! Pure functions only: no I/O, no clock.

use std::collections::BTreeMap;

use crate::api::tenant::Placement;

/// A tenant as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRequest {
    /// Tenant id.
    pub tenant_id: String,
    /// pooled or siloed.
    pub placement: Placement,
}

/// Outcome of planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Tenant id to node (pod) name, for every tenant that could be placed.
    pub placement: BTreeMap<String, String>,
    /// Replicas the StatefulSet gets (at least the spec's unless a scale-down is refused).
    pub replicas: i32,
    /// Why the requested scale-down was refused, if it was.
    pub refused: Option<String>,
    /// Tenants that could not be placed (no nodes).
    pub unplaced: Vec<String>,
}

fn ordinal(es_name: &str, node: &str) -> Option<i32> {
    node.strip_prefix(es_name)?.strip_prefix('-')?.parse().ok()
}

/// Plans placement for `tenants` on `<es_name>-<i>` nodes given the previous placement.
pub fn plan(
    es_name: &str,
    desired_replicas: i32,
    previous: &BTreeMap<String, String>,
    tenants: &[TenantRequest],
) -> Plan {
    let mut placement: BTreeMap<String, String> = BTreeMap::new();
    for t in tenants {
        if let Some(node) = previous.get(&t.tenant_id) {
            if ordinal(es_name, node).is_some() {
                placement.insert(t.tenant_id.clone(), node.clone());
            }
        }
    }

    // Nodes that must survive: every node that owns a tenant.
    let mut blocking: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (tenant, node) in &placement {
        if let Some(i) = ordinal(es_name, node) {
            if i >= desired_replicas {
                blocking.entry(i).or_default().push(tenant.clone());
            }
        }
    }
    let (replicas, refused) = match blocking.keys().next_back() {
        Some(highest) => {
            let detail: Vec<String> = blocking
                .iter()
                .map(|(i, ts)| format!("{es_name}-{i} owns {}", ts.join(", ")))
                .collect();
            (
                highest + 1,
                Some(format!(
                    "scale-down to {desired_replicas} refused: {}; delete or move those tenants first",
                    detail.join("; ")
                )),
            )
        }
        None => (desired_replicas, None),
    };

    let mut load: BTreeMap<i32, usize> = (0..replicas).map(|i| (i, 0)).collect();
    for node in placement.values() {
        if let Some(i) = ordinal(es_name, node) {
            *load.entry(i).or_insert(0) += 1;
        }
    }
    let mut unplaced = Vec::new();
    let mut new: Vec<&TenantRequest> = tenants
        .iter()
        .filter(|t| !placement.contains_key(&t.tenant_id))
        .collect();
    new.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
    for t in new {
        // Siloed tenants prefer an empty node; everyone else the least loaded (lowest ordinal on ties).
        let pick = match t.placement {
            Placement::Siloed => load
                .iter()
                .find(|(_, n)| **n == 0)
                .or_else(|| load.iter().min_by_key(|(i, n)| (**n, **i))),
            Placement::Pooled => load.iter().min_by_key(|(i, n)| (**n, **i)),
        }
        .map(|(i, _)| *i);
        match pick {
            Some(i) => {
                *load.entry(i).or_insert(0) += 1;
                placement.insert(t.tenant_id.clone(), format!("{es_name}-{i}"));
            }
            None => unplaced.push(t.tenant_id.clone()),
        }
    }
    Plan {
        placement,
        replicas,
        refused,
        unplaced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled(id: &str) -> TenantRequest {
        TenantRequest {
            tenant_id: id.into(),
            placement: Placement::Pooled,
        }
    }

    #[test]
    fn spreads_new_tenants_and_keeps_old_ones() {
        let prev = BTreeMap::from([("a".to_string(), "es-2".to_string())]);
        let p = plan(
            "es",
            3,
            &prev,
            &[pooled("a"), pooled("b"), pooled("c"), pooled("d")],
        );
        assert_eq!(p.placement["a"], "es-2");
        assert_eq!(p.placement["b"], "es-0");
        assert_eq!(p.placement["c"], "es-1");
        assert_eq!(p.placement["d"], "es-0");
        assert_eq!(p.replicas, 3);
        assert!(p.refused.is_none());
    }

    #[test]
    fn scale_down_removing_an_owner_is_refused() {
        let prev = BTreeMap::from([
            ("a".to_string(), "es-0".to_string()),
            ("b".to_string(), "es-2".to_string()),
        ]);
        let p = plan("es", 1, &prev, &[pooled("a"), pooled("b")]);
        assert_eq!(p.replicas, 3);
        let msg = p.refused.unwrap();
        assert!(msg.contains("es-2 owns b"), "{msg}");
        // Once b is gone the scale-down goes through.
        let p = plan("es", 1, &prev, &[pooled("a")]);
        assert_eq!(p.replicas, 1);
        assert!(p.refused.is_none());
    }

    #[test]
    fn siloed_prefers_an_empty_node_and_zero_replicas_places_nothing() {
        let prev = BTreeMap::from([("a".to_string(), "es-0".to_string())]);
        let s = TenantRequest {
            tenant_id: "s".into(),
            placement: Placement::Siloed,
        };
        let p = plan("es", 2, &prev, &[pooled("a"), s.clone()]);
        assert_eq!(p.placement["s"], "es-1");
        let p = plan("es", 0, &BTreeMap::new(), &[s]);
        assert_eq!(p.unplaced, vec!["s".to_string()]);
    }
}
