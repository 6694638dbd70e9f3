//! Builds the two Services of a selfHosted EventStore: `<name>-nodes` (headless, one DNS name per
//! node, publishes not-ready addresses so nodes can be reached while starting) and `<name>` (the
//! client Service over ready nodes). Pure: no I/O.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{child_meta, headless_service_name, selector_labels, HTTP_PORT, METRICS_PORT};
use crate::api::EventStore;

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}

/// The client Service carries the API only; `/metrics` (whose labels name tenants) is reached
/// per pod through the headless Service, by a ServiceMonitor or PodMonitor.
fn ports() -> Vec<ServicePort> {
    vec![port("http", HTTP_PORT)]
}

/// Headless Service `<name>-nodes` used as the StatefulSet's serviceName.
pub fn headless(es: &EventStore) -> Service {
    Service {
        metadata: child_meta(es, headless_service_name(es)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(es)),
            ports: Some(vec![port("http", HTTP_PORT), port("metrics", METRICS_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Client Service `<name>`.
pub fn client(es: &EventStore) -> Service {
    Service {
        metadata: child_meta(es, es.name_any()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector_labels(es)),
            ports: Some(ports()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// In-cluster DNS name of the client Service.
pub fn client_dns(es: &EventStore) -> String {
    format!(
        "{}.{}.svc",
        es.name_any(),
        es.namespace().unwrap_or_else(|| "default".to_string())
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn snapshots() {
        let es = super::super::fixtures::selfhosted();
        insta::assert_yaml_snapshot!("headless", super::headless(&es));
        insta::assert_yaml_snapshot!("client", super::client(&es));
    }
}
