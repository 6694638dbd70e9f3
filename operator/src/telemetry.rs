//! Process-wide observability of the operator: JSON logs through `tracing`, and the Prometheus
//! metrics every controller reports (reconciles, errors, durations by kind). It owns the metric
//! registry; it must never decide anything about reconciliation.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Installs the global tracing subscriber: JSON lines on stdout, filter from `RUST_LOG` (default info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .try_init();
}

/// Operator metrics, registered in their own registry served at `/metrics`.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    writes: IntCounterVec,
    leader: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "allsource_operator_reconciles_total",
                "Reconciles run, by kind",
            ),
            &["kind"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "allsource_operator_reconcile_errors_total",
                "Reconciles that failed, by kind and error class",
            ),
            &["kind", "error"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "allsource_operator_reconcile_duration_seconds",
                "Duration of a reconcile, by kind",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["kind"],
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "allsource_operator_api_writes_total",
                "Write requests the reconcilers sent to the API server, by kind of child and verb",
            ),
            &["resource", "verb"],
        )?;
        let leader = IntGauge::new(
            "allsource_operator_leader",
            "1 while this replica holds the leader Lease",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            writes,
            leader,
        })
    }

    /// Records one finished reconcile.
    pub fn reconciled(&self, kind: &str, took: Duration, error: Option<&str>) {
        self.reconciles.with_label_values(&[kind]).inc();
        self.duration
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
        if let Some(class) = error {
            self.errors.with_label_values(&[kind, class]).inc();
        }
    }

    /// Records one write request (apply, status patch, delete...).
    pub fn wrote(&self, resource: &str, verb: &str) {
        self.writes.with_label_values(&[resource, verb]).inc();
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Total writes recorded so far (all resources and verbs).
    pub fn total_writes(&self) -> u64 {
        use prometheus::core::Collector;
        self.writes
            .collect()
            .iter()
            .flat_map(|mf| {
                mf.get_metric()
                    .iter()
                    .map(|m| m.get_counter().get_value() as u64)
            })
            .sum()
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_metrics_are_rendered_by_kind() {
        let m = Metrics::new().unwrap();
        m.reconciled("EventStore", Duration::from_millis(3), None);
        m.reconciled("EventStore", Duration::from_millis(4), Some("Kube"));
        m.wrote("StatefulSet", "PATCH");
        let text = m.render();
        assert!(text.contains("allsource_operator_reconciles_total{kind=\"EventStore\"} 2"));
        assert!(text.contains(
            "allsource_operator_reconcile_errors_total{error=\"Kube\",kind=\"EventStore\"} 1"
        ));
        assert_eq!(m.total_writes(), 1);
    }
}
