//! Operational endpoints: liveness, readiness, Prometheus metrics (on the metrics listener only)
//! and the OpenAPI document. None of them needs a token or touches tenant data.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::{AppState, OPENAPI_YAML};

/// Liveness: the process answers.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Readiness: the store is open (recovery done), its WAL takes writes and shutdown has not
/// begun. 503 names the reason (`starting`, `shutting_down`, `wal_poisoned`) and what to do. A
/// data volume at its free-space reserve keeps the node ready (reads and the calls that free
/// space still work) and is reported in `writes`.
pub async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    match st.not_ready() {
        None => {
            let writes = match st.write_refusal() {
                None => json!({"accepted": true}),
                Some((reason, message)) => {
                    json!({"accepted": false, "reason": reason, "message": message})
                }
            };
            (
                StatusCode::OK,
                Json(json!({"status": "ready", "writes": writes})),
            )
        }
        Some((reason, message)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason, "message": message})),
        ),
    }
}

/// Prometheus text exposition.
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics().render(),
    )
}

/// The OpenAPI document.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}
