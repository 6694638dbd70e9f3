//! Computes the status of a selfHosted EventStore from the spec, the placement plan and the live
//! StatefulSet. Conditions keep their lastTransitionTime while their status holds, so the same
//! observation gives an equal status and the reconciler writes nothing. Pure: no I/O.

use k8s_openapi::api::apps::v1::StatefulSet;

use super::placement::Plan;
use crate::api::eventstore::{
    Backend, Endpoint, EventStoreStatus, SelfHostedSpec, StatusCapabilities,
};
use crate::api::{
    set_condition, Condition, EventStore, Phase, CONDITION_DEGRADED, CONDITION_PROGRESSING,
    CONDITION_READY,
};
use crate::resources::{selector_string, service, HTTP_PORT};

/// The store-node implementation that serves a backend of `spec.backend`.
pub fn backend_kind(backend: Backend) -> allsource_core::model::BackendKind {
    use allsource_core::model::BackendKind;
    match backend {
        Backend::SelfHosted => BackendKind::Engine,
        Backend::Postgres => BackendKind::Postgres,
        Backend::DynamoDb => BackendKind::Dynamodb,
        Backend::Firestore => BackendKind::Firestore,
    }
}

/// `status.capabilities`: what store-node declares for the store's backend, with archival only
/// where an archiver can reach the store over HTTP (every selfHosted store; a cloud store only
/// with its gateway enabled, since the archive Job reads and trims through the endpoint).
pub fn capabilities(es: &EventStore) -> StatusCapabilities {
    let c = backend_kind(es.spec.backend).capabilities();
    let endpoint = match es.spec.backend {
        Backend::SelfHosted => true,
        _ => es.spec.gateway.as_ref().is_some_and(|g| g.enabled),
    };
    StatusCapabilities {
        subscriptions: c.subscriptions,
        snapshots: c.snapshots,
        transactions: c.transactions,
        archival: c.archival && endpoint,
        gapless_positions: c.gapless_positions,
    }
}

/// Rollout facts read from a live StatefulSet.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// Pods that exist.
    pub replicas: i32,
    /// Pods that are ready.
    pub ready: i32,
    /// Pods at the update revision.
    pub updated: i32,
    /// The StatefulSet controller has not caught up with the spec, or the revisions differ.
    pub rolling: bool,
}

/// Reads rollout facts from the StatefulSet (None: not created yet).
pub fn rollout(sts: Option<&StatefulSet>, want: i32) -> Rollout {
    let Some(sts) = sts else {
        return Rollout {
            rolling: want > 0,
            ..Rollout::default()
        };
    };
    let st = sts.status.clone().unwrap_or_default();
    let generation_seen =
        st.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0);
    let revisions_differ = match (&st.current_revision, &st.update_revision) {
        (Some(c), Some(u)) => c != u,
        _ => want > 0,
    };
    let updated = st.updated_replicas.unwrap_or(0);
    Rollout {
        replicas: st.replicas,
        ready: st.ready_replicas.unwrap_or(0),
        updated,
        rolling: !generation_seen || revisions_differ || updated < want || st.replicas != want,
    }
}

/// The status to write. `volumes_growing` is the Progressing message while node volumes are
/// being expanded ([`super::volumes`]).
pub fn compute(
    es: &EventStore,
    sh: &SelfHostedSpec,
    plan: &Plan,
    r: &Rollout,
    volumes_growing: Option<&str>,
) -> EventStoreStatus {
    let previous = es.status.clone().unwrap_or_default();
    let want = plan.replicas;
    let mut conditions = previous.conditions.clone();
    let ready = !r.rolling && r.ready >= want;
    let ready_msg = format!("{}/{} store nodes ready", r.ready, want);
    set_condition(
        &mut conditions,
        Condition::new(
            CONDITION_READY,
            ready,
            if ready { "NodesReady" } else { "NodesNotReady" },
            ready_msg,
        ),
    );
    let progressing = match (r.rolling, volumes_growing) {
        (true, _) => Condition::new(
            CONDITION_PROGRESSING,
            true,
            "RollingOut",
            format!("{}/{} nodes at the current revision", r.updated, want),
        ),
        (false, Some(m)) => Condition::new(CONDITION_PROGRESSING, true, "VolumeResizing", m),
        (false, None) => Condition::new(
            CONDITION_PROGRESSING,
            false,
            "RolloutComplete",
            format!("{}/{} nodes at the current revision", r.updated, want),
        ),
    };
    set_condition(&mut conditions, progressing);
    let degraded_msg = match (&plan.refused, plan.unplaced.is_empty()) {
        (Some(m), _) => Some(("ScaleDownRefused", m.clone())),
        (None, false) => Some((
            "TenantsUnplaced",
            format!("no store node for tenants {}", plan.unplaced.join(", ")),
        )),
        (None, true) => None,
    };
    match &degraded_msg {
        Some((reason, msg)) => set_condition(
            &mut conditions,
            Condition::new(CONDITION_DEGRADED, true, reason, msg.clone()),
        ),
        None => set_condition(
            &mut conditions,
            Condition::new(CONDITION_DEGRADED, false, "AsExpected", ""),
        ),
    }
    for c in &mut conditions {
        c.observed_generation = es.metadata.generation;
    }
    let phase = if degraded_msg.is_some() {
        Phase::Degraded
    } else if ready {
        Phase::Ready
    } else {
        Phase::Provisioning
    };
    let dns = service::client_dns(es);
    EventStoreStatus {
        observed_generation: es.metadata.generation,
        conditions,
        phase: Some(phase),
        endpoint: Some(Endpoint {
            url: format!("{}://{dns}:{HTTP_PORT}", crate::resources::node_scheme(es)),
            service: dns,
            port: HTTP_PORT,
        }),
        replicas: Some(r.replicas),
        ready_replicas: Some(r.ready),
        ready_text: Some(format!("{}/{}", r.ready, want)),
        selector: Some(selector_string(es)),
        capabilities: Some(capabilities(es)),
        placement: plan.placement.clone(),
        provisioned: previous.provisioned.clone(),
        image: if r.rolling {
            previous.image.clone()
        } else {
            Some(sh.image.clone())
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures;
    use std::collections::BTreeMap;

    fn plan(replicas: i32) -> Plan {
        Plan {
            placement: BTreeMap::new(),
            replicas,
            refused: None,
            unplaced: vec![],
        }
    }

    fn store(backend: &str, gateway: bool) -> EventStore {
        let mut spec = serde_json::json!({"backend": backend});
        if backend != "selfHosted" {
            spec["gateway"] = serde_json::json!({"enabled": gateway});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "EventStore",
            "metadata": {"name": "orders", "namespace": "shop"}, "spec": spec,
        }))
        .unwrap()
    }

    fn shown(c: allsource_core::model::Capabilities) -> StatusCapabilities {
        StatusCapabilities {
            subscriptions: c.subscriptions,
            snapshots: c.snapshots,
            transactions: c.transactions,
            archival: c.archival,
            gapless_positions: c.gapless_positions,
        }
    }

    /// Each backend's status shows exactly what a real instance of store-node's backend says
    /// about itself (`EventStore::capabilities`), not a constant of the operator's.
    #[tokio::test]
    async fn status_capabilities_are_the_backends_own_declaration() {
        use allsource_backends::dynamodb::{DynamoConfig, DynamoStore};
        use allsource_backends::firestore::{FirestoreConfig, FirestoreStore};
        use allsource_backends::postgres::{PostgresConfig, PostgresStore};
        use allsource_core::EventStore as _;
        // Built without any call to a server: the cloud clients connect lazily. The engine's
        // `capabilities()` returns `BackendKind::Engine.capabilities()` (store-node
        // engine/mod.rs); the operator does not link the engine.
        let pg = PostgresStore::connect(PostgresConfig::new("postgres://u@127.0.0.1:1/db", "s"))
            .unwrap();
        let mut ddb = DynamoConfig::new("orders", "us-east-1");
        ddb.endpoint = Some("http://127.0.0.1:1".into());
        let ddb = DynamoStore::connect(ddb).await.unwrap();
        let fs = FirestoreStore::connect(FirestoreConfig::emulator("p", "127.0.0.1:1")).unwrap();
        let declared = [
            (
                "selfHosted",
                allsource_core::model::BackendKind::Engine.capabilities(),
            ),
            ("postgres", pg.capabilities()),
            ("dynamodb", ddb.capabilities()),
            ("firestore", fs.capabilities()),
        ];
        for (backend, caps) in declared {
            let es = store(backend, true);
            assert_eq!(
                caps,
                backend_kind(es.spec.backend).capabilities(),
                "{backend}"
            );
            assert_eq!(capabilities(&es), shown(caps), "{backend}");
            // The selfHosted status carries the same value.
            if backend == "selfHosted" {
                let sh = fixtures::selfhosted().spec.self_hosted.unwrap();
                let st = compute(&es, &sh, &plan(3), &Rollout::default(), None);
                assert_eq!(st.capabilities, Some(shown(caps)));
            }
        }
    }

    /// A cloud store without a gateway has no endpoint, so no ArchivePolicy can archive it.
    #[test]
    fn cloud_store_without_gateway_cannot_archive() {
        for backend in ["postgres", "dynamodb", "firestore"] {
            let off = capabilities(&store(backend, false));
            assert!(!off.archival, "{backend}: {off:?}");
            assert!(
                off.transactions && off.gapless_positions,
                "{backend}: {off:?}"
            );
            assert!(capabilities(&store(backend, true)).archival, "{backend}");
        }
        assert!(capabilities(&store("selfHosted", false)).archival);
    }

    #[test]
    fn ready_when_all_nodes_ready_and_rolled() {
        let es = fixtures::selfhosted();
        let sh = es.spec.self_hosted.clone().unwrap();
        let r = Rollout {
            replicas: 3,
            ready: 3,
            updated: 3,
            rolling: false,
        };
        let st = compute(&es, &sh, &plan(3), &r, None);
        assert_eq!(st.phase, Some(Phase::Ready));
        assert_eq!(st.ready_text.as_deref(), Some("3/3"));
        assert_eq!(
            st.image.as_deref(),
            Some("ghcr.io/allsource/store-node:0.1.0")
        );
    }

    /// The published endpoint (credentials Secrets, the archiver's source) follows the nodes'
    /// scheme: https exactly when the store has a TLS Secret.
    #[test]
    fn endpoint_is_https_with_a_tls_secret() {
        let mut es = fixtures::selfhosted();
        let r = Rollout {
            replicas: 3,
            ready: 3,
            updated: 3,
            rolling: false,
        };
        let sh = es.spec.self_hosted.clone().unwrap();
        let url = |st: EventStoreStatus| st.endpoint.unwrap().url;
        assert_eq!(
            url(compute(&es, &sh, &plan(3), &r, None)),
            "http://orders.shop.svc:8080"
        );
        let sh = es.spec.self_hosted.as_mut().unwrap();
        sh.tls_secret_ref = Some(crate::api::SecretRef {
            name: "orders-tls".into(),
        });
        let sh = sh.clone();
        assert_eq!(
            url(compute(&es, &sh, &plan(3), &r, None)),
            "https://orders.shop.svc:8080"
        );
    }

    #[test]
    fn same_observation_gives_equal_status() {
        let mut es = fixtures::selfhosted();
        let sh = es.spec.self_hosted.clone().unwrap();
        let r = Rollout {
            replicas: 3,
            ready: 2,
            updated: 2,
            rolling: true,
        };
        let first = compute(&es, &sh, &plan(3), &r, None);
        es.status = Some(first.clone());
        let second = compute(&es, &sh, &plan(3), &r, None);
        assert_eq!(first, second);
        assert_eq!(second.phase, Some(Phase::Provisioning));
    }

    #[test]
    fn refused_scale_down_is_degraded() {
        let es = fixtures::selfhosted();
        let sh = es.spec.self_hosted.clone().unwrap();
        let mut p = plan(3);
        p.refused = Some("scale-down to 1 refused".into());
        let r = Rollout {
            replicas: 3,
            ready: 3,
            updated: 3,
            rolling: false,
        };
        let st = compute(&es, &sh, &p, &r, None);
        assert_eq!(st.phase, Some(Phase::Degraded));
        let d = st
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_DEGRADED)
            .unwrap();
        assert_eq!(d.reason, "ScaleDownRefused");
    }
}
