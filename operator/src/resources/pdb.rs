//! Builds the PodDisruptionBudget of the store nodes: at most one node down by voluntary
//! disruption, since each node serves its own tenants. Pure: no I/O.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{child_meta, selector_labels};
use crate::api::EventStore;

/// The store nodes' PodDisruptionBudget (maxUnavailable 1).
pub fn build(es: &EventStore) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(es, es.name_any()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(es)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn snapshot() {
        let es = super::super::fixtures::selfhosted();
        insta::assert_yaml_snapshot!(super::build(&es));
    }
}
