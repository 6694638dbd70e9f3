//! The request guard every route passes through: bounded concurrency (503 + Retry-After when
//! full, never an unbounded queue), a time limit until the response head (504), and the HTTP
//! metrics labelled by route template (never by raw path, which would be unbounded).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// Applies the concurrency limit, the timeout and the metrics.
pub async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH") => m,
        _ => "other",
    }
    .to_string();
    let start = Instant::now();
    let ops = matches!(route.as_str(), "/healthz" | "/readyz");
    let permit = if ops {
        None
    } else {
        match st.inner.requests.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let resp = ApiError::unavailable("overloaded", "too many requests in flight")
                    .into_response();
                record(&st, &route, &method, resp.status(), start);
                return resp;
            }
        }
    };
    let timeout = st.config().request_timeout;
    let resp = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "no response within {} ms; writes already started still complete, retry with the same event ids",
                timeout.as_millis()
            ),
        )
        .into_response(),
    };
    drop(permit);
    record(&st, &route, &method, resp.status(), start);
    resp
}

fn record(st: &AppState, route: &str, method: &str, status: StatusCode, start: Instant) {
    let m = st.metrics();
    m.http_requests
        .with_label_values(&[route, method, status.as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[route])
        .observe(start.elapsed().as_secs_f64());
}
