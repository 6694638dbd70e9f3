//! The one error shape of the HTTP API: a status plus a JSON body `{code, message, ...}`. Store
//! errors, axum's extractor rejections and the server's own refusals (auth, placement, overload)
//! all become an [`ApiError`], so a client never sees a non-JSON error from `/v1/`. Internal
//! details are logged, never echoed.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::error::StoreError;

/// An HTTP error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// Value for a `Location` header (placement).
    pub location: Option<String>,
    /// Extra body fields.
    pub extra: Map<String, Value>,
}

impl ApiError {
    /// A plain error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            location: None,
            extra: Map::new(),
        }
    }

    /// 400 invalid_input.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// 401 unauthorized.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 forbidden with a code.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 503 not ready / overloaded.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after = Some(1);
        e
    }

    /// Adds a body field.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }
}

impl From<allsource_core::wire::BadRequest> for ApiError {
    fn from(e: allsource_core::wire::BadRequest) -> Self {
        Self::bad_request(e.0)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if let StoreError::Internal(detail) = &e {
            tracing::error!(error = %detail, "internal store error");
        }
        let message = e.client_message();
        let mut out = Self::new(status, e.code(), message);
        match e {
            StoreError::Conflict { current } => {
                out = out.with("currentVersion", json!(current));
            }
            StoreError::QuotaExceeded {
                retry_after_secs, ..
            } => out.retry_after = Some(retry_after_secs.max(1)),
            StoreError::Unavailable(_) | StoreError::Poisoned(_) => out.retry_after = Some(1),
            StoreError::Archived {
                first_available,
                incarnation,
                of_stream,
            } => {
                let key = if of_stream {
                    "firstAvailableVersion"
                } else {
                    "firstAvailablePosition"
                };
                out = out
                    .with(key, json!(first_available))
                    .with("incarnation", json!(incarnation));
            }
            _ => {}
        }
        out
    }
}

fn from_rejection(status: StatusCode, text: String) -> ApiError {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "invalid_input",
    };
    // Everything but size and media type is "the request is malformed": one status, 400.
    let status = match status {
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE => status,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, code, text)
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        from_rejection(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        from_rejection(r.status(), r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        from_rejection(r.status(), r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        body.insert("code".into(), Value::from(self.code));
        body.insert("message".into(), Value::from(self.message));
        let mut resp = (self.status, axum::Json(Value::Object(body))).into_response();
        let headers = resp.headers_mut();
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(l) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            headers.insert(header::LOCATION, l);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_carries_current_version() {
        let e = ApiError::from(StoreError::Conflict { current: Some(4) });
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert_eq!(e.extra["currentVersion"], json!(4));
    }

    #[test]
    fn internal_details_are_not_echoed() {
        let e = ApiError::from(StoreError::Internal("disk /secret failed".into()));
        assert_eq!(e.message, "internal error");
    }

    #[test]
    fn quota_sets_retry_after() {
        let e = ApiError::from(StoreError::QuotaExceeded {
            message: "x".into(),
            retry_after_secs: 0,
        });
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
