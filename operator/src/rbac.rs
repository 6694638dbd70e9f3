//! Every Kubernetes API verb and resource the operator uses, as data. The chart's ClusterRole and
//! `config/rbac/role.yaml` are generated from [`policy_rules`] by `crdgen`, so a controller that
//! starts calling a new API adds one line here. Pure data: it must never call the API server.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::ObjectMeta;

const READ: &[&str] = &["get", "list", "watch"];
const MANAGE: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// One rule: API group, resources, verbs.
fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// The least-privilege rules of the operator's ServiceAccount (cluster-wide or per watched namespace).
pub fn policy_rules() -> Vec<PolicyRule> {
    vec![
        // Our own kinds: watch, add/remove finalizers, write status.
        rule(
            "allsource.io",
            &["eventstores", "tenants", "archivepolicies"],
            &["get", "list", "watch", "patch", "update"],
        ),
        rule(
            "allsource.io",
            &[
                "eventstores/status",
                "tenants/status",
                "archivepolicies/status",
            ],
            &["get", "patch", "update"],
        ),
        rule(
            "allsource.io",
            &[
                "eventstores/finalizers",
                "tenants/finalizers",
                "archivepolicies/finalizers",
            ],
            &["update"],
        ),
        // Objects the EventStore controller owns.
        rule("apps", &["statefulsets", "deployments"], MANAGE),
        rule(
            "",
            &["services", "configmaps", "serviceaccounts", "secrets"],
            MANAGE,
        ),
        rule("policy", &["poddisruptionbudgets"], MANAGE),
        // Volumes: grown (patch) when storage.size grows, deleted only for deletionPolicy
        // Delete; never created (the StatefulSet controller makes them).
        rule(
            "",
            &["persistentvolumeclaims"],
            &["get", "list", "watch", "patch", "delete"],
        ),
        rule("", &["pods"], READ),
        // Archive runs.
        rule("batch", &["cronjobs", "jobs"], MANAGE),
        // Kubernetes Events for notable actions.
        rule("events.k8s.io", &["events"], &["create", "patch"]),
    ]
}

/// The rules of leader election: Leases, granted by a Role in the operator's own namespace
/// only, never with [`policy_rules`] (cluster-wide or in watched namespaces).
pub fn leader_election_rules() -> Vec<PolicyRule> {
    vec![rule(
        "coordination.k8s.io",
        &["leases"],
        &["get", "create", "update", "patch"],
    )]
}

/// The leader-election Role built from [`leader_election_rules`] (kustomize layout: namespace
/// `system`, replaced by the overlay).
pub fn leader_election_role(name: &str) -> k8s_openapi::api::rbac::v1::Role {
    k8s_openapi::api::rbac::v1::Role {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("system".to_string()),
            ..ObjectMeta::default()
        },
        rules: Some(leader_election_rules()),
    }
}

/// The operator's ClusterRole built from [`policy_rules`].
pub fn cluster_role(name: &str) -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                [(
                    "app.kubernetes.io/name".to_string(),
                    "allsource-operator".to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        rules: Some(policy_rules()),
        ..ClusterRole::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_election_and_status_writes_are_allowed() {
        let rules = policy_rules();
        let allows = |group: &str, resource: &str, verb: &str| {
            rules.iter().any(|r| {
                r.api_groups
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|g| g == group)
                    && r.resources
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .any(|x| x == resource)
                    && r.verbs.iter().any(|v| v == verb)
            })
        };
        // Leases only through the leader-election Role of the operator's namespace.
        assert!(!allows("coordination.k8s.io", "leases", "update"));
        assert!(leader_election_rules()
            .iter()
            .all(|r| r.api_groups.as_deref() == Some(&["coordination.k8s.io".to_string()][..])));
        assert!(allows("allsource.io", "eventstores/status", "patch"));
        assert!(allows("apps", "statefulsets", "patch"));
        assert!(!allows("", "persistentvolumeclaims", "create"));
        assert!(!allows("", "pods", "delete"));
    }
}
