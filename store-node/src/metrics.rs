//! Prometheus metrics of the store node: HTTP traffic, appends/events/bytes per tenant, quota
//! and auth rejections, registry reloads, live subscriptions. Per-tenant series are capped: the
//! first `max_tenant_labels` tenants seen get their own label, later ones are folded into
//! [`OTHER_TENANT`] (`_other`, which no tenant id can be: ids are DNS labels), so a node with many
//! tenants cannot blow up the scrape. Metrics are served on their own listener
//! (`--metrics-addr`), never on the API port, because their labels name tenants. Backends that measure more
//! (fsync latency, WAL size, segments) register their own collectors into [`Metrics::registry`].
//! This module must never label a series with a token, a stream id or any other unbounded value.

use std::collections::HashSet;

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::model::TenantId;

/// Label used for tenants beyond the cap. The underscore keeps it apart from every real tenant
/// id (a DNS label cannot hold one).
pub const OTHER_TENANT: &str = "_other";

/// All metrics of one store node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route template, method and status code.
    pub http_requests: IntCounterVec,
    /// HTTP request latency by route template.
    pub http_duration: HistogramVec,
    /// Successful append calls per tenant.
    pub appends: IntCounterVec,
    /// Events written per tenant.
    pub events: IntCounterVec,
    /// Payload bytes written per tenant.
    pub bytes: IntCounterVec,
    /// Events returned by reads per tenant.
    pub events_read: IntCounterVec,
    /// Requests refused by a quota, per tenant and quota.
    pub quota_rejections: IntCounterVec,
    /// Requests refused for a missing, unknown or suspended credential, by reason.
    pub auth_failures: IntCounterVec,
    /// Registry reload attempts by result (`ok`, `error`).
    pub registry_reloads: IntCounterVec,
    /// Tenants in the registry in force.
    pub registry_tenants: IntGauge,
    /// Open subscriptions.
    pub subscriptions: IntGauge,
    /// Open HTTP connections (API and metrics listeners).
    pub connections_open: IntGauge,
    /// Connections closed by the server before a response, by reason (`header_timeout`,
    /// `evicted`, `refused`).
    pub connections_closed: IntCounterVec,
    /// Append latency as seen by the server (store call only).
    pub append_latency: Histogram,
    max_tenant_labels: usize,
    labelled: Mutex<HashSet<TenantId>>,
}

/// Errors registering metrics (only on a programming error such as a duplicate name).
pub type MetricsError = prometheus::Error;

impl Metrics {
    /// Creates and registers every metric.
    pub fn new(max_tenant_labels: usize) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, MetricsError>(c)
        };
        let http_requests = counter_vec(
            "allsource_http_requests_total",
            "HTTP requests by route, method and status",
            &["route", "method", "status"],
        )?;
        let appends = counter_vec("allsource_appends_total", "Successful appends", &["tenant"])?;
        let events = counter_vec(
            "allsource_events_appended_total",
            "Events written",
            &["tenant"],
        )?;
        let bytes = counter_vec(
            "allsource_bytes_appended_total",
            "Payload and metadata bytes written",
            &["tenant"],
        )?;
        let events_read = counter_vec(
            "allsource_events_read_total",
            "Events returned by reads",
            &["tenant"],
        )?;
        let quota_rejections = counter_vec(
            "allsource_quota_rejections_total",
            "Requests refused by a quota",
            &["tenant", "quota"],
        )?;
        let auth_failures = counter_vec(
            "allsource_auth_failures_total",
            "Requests refused for credentials",
            &["reason"],
        )?;
        let connections_closed = counter_vec(
            "allsource_http_connections_closed_total",
            "Connections closed by the server before a response: header_timeout, evicted, refused",
            &["reason"],
        )?;
        let registry_reloads = counter_vec(
            "allsource_registry_reloads_total",
            "Tenant registry reloads",
            &["result"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "allsource_http_request_duration_seconds",
                "HTTP request latency until the response head",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["route"],
        )?;
        registry.register(Box::new(http_duration.clone()))?;
        let append_latency = Histogram::with_opts(
            HistogramOpts::new(
                "allsource_append_duration_seconds",
                "Store append latency (includes the backend's durability wait)",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )?;
        registry.register(Box::new(append_latency.clone()))?;
        let registry_tenants =
            IntGauge::new("allsource_registry_tenants", "Tenants in the registry")?;
        registry.register(Box::new(registry_tenants.clone()))?;
        let subscriptions = IntGauge::new("allsource_subscriptions", "Open subscriptions")?;
        registry.register(Box::new(subscriptions.clone()))?;
        let connections_open =
            IntGauge::new("allsource_http_connections", "Open HTTP connections")?;
        registry.register(Box::new(connections_open.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            appends,
            events,
            bytes,
            events_read,
            quota_rejections,
            auth_failures,
            registry_reloads,
            registry_tenants,
            subscriptions,
            connections_open,
            connections_closed,
            append_latency,
            max_tenant_labels,
            labelled: Mutex::new(HashSet::new()),
        })
    }

    /// The registry, for backends that add their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Registers a gauge whose value is read from `read` at every scrape (for backend figures
    /// such as WAL size or segment count that live in the backend).
    pub fn register_gauge_fn(
        &self,
        name: &str,
        help: &str,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Result<(), MetricsError> {
        let gauge = Gauge::new(name, help)?;
        self.registry.register(Box::new(FnGauge {
            gauge,
            read: Box::new(read),
        }))
    }

    /// The label value for a tenant: its id while under the cap, else [`OTHER_TENANT`].
    pub fn tenant_label(&self, tenant: &TenantId) -> String {
        let mut set = self.labelled.lock();
        if set.contains(tenant) {
            return tenant.to_string();
        }
        if set.len() < self.max_tenant_labels {
            set.insert(tenant.clone());
            return tenant.to_string();
        }
        OTHER_TENANT.to_string()
    }

    /// Counts one refused credential.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// The text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric data, which registration prevents.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A gauge evaluated at scrape time.
struct FnGauge {
    gauge: Gauge,
    read: Box<dyn Fn() -> f64 + Send + Sync>,
}

impl Collector for FnGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauge.set((self.read)());
        self.gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_are_capped() {
        let m = Metrics::new(2).unwrap();
        let t = |s: &str| TenantId::new(s).unwrap();
        assert_eq!(m.tenant_label(&t("a")), "a");
        assert_eq!(m.tenant_label(&t("b")), "b");
        assert_eq!(m.tenant_label(&t("c")), OTHER_TENANT);
        assert_eq!(m.tenant_label(&t("a")), "a");
        m.appends
            .with_label_values(&[&m.tenant_label(&t("d"))])
            .inc();
        assert!(m
            .render()
            .contains("allsource_appends_total{tenant=\"_other\"} 1"));
    }

    #[test]
    fn the_fallback_label_cannot_be_a_tenant_id() {
        assert!(
            TenantId::new(OTHER_TENANT).is_err(),
            "{OTHER_TENANT:?} is a valid tenant id, so its series would mix with the fallback"
        );
        let m = Metrics::new(1).unwrap();
        let other = TenantId::new("other").unwrap();
        assert_eq!(m.tenant_label(&other), "other");
        assert_ne!(
            m.tenant_label(&TenantId::new("late").unwrap()),
            m.tenant_label(&other)
        );
    }

    #[test]
    fn gauge_fns_are_read_at_scrape_time() {
        let m = Metrics::new(1).unwrap();
        let v = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(7));
        let v2 = v.clone();
        m.register_gauge_fn("allsource_test_gauge", "test", move || {
            v2.load(std::sync::atomic::Ordering::Relaxed) as f64
        })
        .unwrap();
        assert!(m.render().contains("allsource_test_gauge 7"));
        v.store(9, std::sync::atomic::Ordering::Relaxed);
        assert!(m.render().contains("allsource_test_gauge 9"));
    }
}
