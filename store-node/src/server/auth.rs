//! Request authentication: bearer token -> tenant, then the tenant's state and placement. The
//! only way a handler learns its tenant is the [`Authed`] extractor, so a handler cannot act for
//! a tenant the token does not belong to. Never logs the token.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde_json::json;

use super::error::ApiError;
use super::purge::PurgeStatus;
use super::AppState;
use crate::tenant::{TenantInfo, TenantState};

/// Optional header a client may send to assert which tenant it acts for; a mismatch with the
/// token's tenant answers 403 instead of silently using the token's tenant.
pub const TENANT_HEADER: &str = "x-allsource-tenant";

/// The authenticated tenant of a request.
#[derive(Debug, Clone)]
pub struct Authed(pub Arc<TenantInfo>);

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// 410 for a tenant being deleted with its data; the code tells whether this node finished.
fn purging(st: &AppState, tenant: &TenantInfo) -> ApiError {
    let mark = st.registry().snapshot().purge_mark(&tenant.id);
    match st.purges().status(&tenant.id, mark) {
        PurgeStatus::Done => ApiError::new(
            StatusCode::GONE,
            "tenant_purged",
            format!(
                "tenant {} is deleted and its data erased on this node",
                tenant.id
            ),
        ),
        PurgeStatus::Pending(last_error) => ApiError::new(
            StatusCode::GONE,
            "tenant_purging",
            match last_error {
                Some(e) => format!(
                    "tenant {} is being deleted; erasing its data failed and is retried: {e}",
                    tenant.id
                ),
                None => format!(
                    "tenant {} is being deleted; its data is being erased",
                    tenant.id
                ),
            },
        ),
    }
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let metrics = st.metrics();
        let Some(token) = bearer(parts) else {
            metrics.auth_failure("missing");
            return Err(ApiError::unauthorized(
                "an Authorization: Bearer <token> header is required",
            ));
        };
        let Some(tenant) = st.registry().snapshot().authenticate(token) else {
            metrics.auth_failure("unknown");
            return Err(ApiError::unauthorized("unknown or revoked token"));
        };
        if tenant.state == TenantState::Suspended {
            metrics.auth_failure("suspended");
            return Err(ApiError::forbidden(
                "tenant_suspended",
                format!("tenant {} is suspended", tenant.id),
            ));
        }
        if let Some(claimed) = parts.headers.get(TENANT_HEADER) {
            if claimed.as_bytes() != tenant.id.as_str().as_bytes() {
                metrics.auth_failure("tenant_mismatch");
                return Err(ApiError::forbidden(
                    "tenant_mismatch",
                    "the token does not belong to the tenant named in X-AllSource-Tenant",
                ));
            }
        }
        if let (Some(me), Some(owner)) = (&st.config().node_name, &tenant.node) {
            if me != owner {
                let base = tenant.node_url.clone().unwrap_or_default();
                let location = format!(
                    "{}{}",
                    base.trim_end_matches('/'),
                    parts.uri.path_and_query().map_or("/", |p| p.as_str())
                );
                let mut e = ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    "wrong_node",
                    format!("tenant {} is served by node {owner}", tenant.id),
                )
                .with("owner", json!(owner))
                .with("location", json!(location));
                e.location = Some(location);
                return Err(e);
            }
        }
        if tenant.state == TenantState::Purging {
            metrics.auth_failure("purging");
            return Err(purging(st, &tenant));
        }
        Ok(Authed(tenant))
    }
}
