//! The operator's own HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (process alive) and
//! `/readyz` (API server reachable at start and, when leader election is on, either leading or a
//! healthy standby). It serves state others maintain and must never reconcile anything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::telemetry::Metrics;

/// Shared state of the endpoint.
#[derive(Clone)]
pub struct HttpState {
    /// Metrics to render.
    pub metrics: Metrics,
    /// Set once the controllers (or the standby loop) are running.
    pub ready: Arc<AtomicBool>,
}

async fn metrics(State(s): State<HttpState>) -> String {
    s.metrics.render()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// The router, separate from serving so it can be tested in-process.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the router on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, state: HttpState) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "http endpoint listening");
    axum::serve(listener, router(state)).await
}
