//! The Firestore Admin API side of the backend: pure builders of the requests that prepare a
//! database (the composite index `read_all` and trims need, single-field index exemptions for
//! payloads, TTL policies on the TTL field) and [`send`], which issues them. Nothing but [`send`]
//! does I/O, and [`send`] never touches documents.
//!
//! Requests (Firestore Admin API v1, same host as the data API):
//! - `POST projects/{p}/databases/{d}/collectionGroups/events/indexes` with a
//!   `COLLECTION_GROUP` index `tenant ASC, position ASC` (the collection-group query of
//!   `read_all` / `trim_tenant_before`; stream reads use the automatic single-field indexes);
//! - `PATCH .../collectionGroups/events/fields/{payload,metadata}?updateMask=indexConfig` with
//!   `{"indexConfig": {"indexes": []}}`: never index event bodies (write cost, 1500-byte entries);
//! - `PATCH .../collectionGroups/{events,eventIds}/fields/expires_at?updateMask=ttlConfig` with
//!   `{"ttlConfig": {}}`: Firestore deletes documents once `expires_at` has passed.
//!
//! **Emulator limit (checked with the gcloud Firestore emulator of tests/env):** the emulator
//! does not serve the Admin API: both the index `POST` and the field `PATCH` answer HTTP 404
//! with the plain-text body `Not Found`, and it never enforces indexes or TTL. [`send`] reports
//! that answer as [`Outcome::NotServed`] (a production 404 carries a JSON `error` and is an
//! error), so a gateway started with `--init` on the emulator keeps running. What is sent is
//! tested against a local recording HTTP server instead of the emulator.

use serde_json::{json, Value};
use thiserror::Error;

use super::layout::{EVENTS, EVENT_IDS, TTL_FIELD};

/// HTTP method of an admin request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Create (indexes).
    Post,
    /// Update with an update mask (field configuration).
    Patch,
    /// Delete (a database; sent without a body).
    Delete,
}

/// One Admin API request: method, path under `/v1/` (query string included) and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRequest {
    /// HTTP method.
    pub method: Method,
    /// Path under `/v1/`, e.g. `projects/p/databases/(default)/collectionGroups/events/indexes`.
    pub path: String,
    /// JSON body.
    pub body: Value,
}

fn group(project: &str, database: &str, cg: &str) -> String {
    format!("projects/{project}/databases/{database}/collectionGroups/{cg}")
}

/// The composite indexes this backend's queries need.
pub fn composite_indexes(project: &str, database: &str) -> Vec<AdminRequest> {
    vec![AdminRequest {
        method: Method::Post,
        path: format!("{}/indexes", group(project, database, EVENTS)),
        body: json!({
            "queryScope": "COLLECTION_GROUP",
            "fields": [
                { "fieldPath": "tenant", "order": "ASCENDING" },
                { "fieldPath": "position", "order": "ASCENDING" },
            ],
        }),
    }]
}

/// Single-field index exemptions for event bodies.
pub fn index_exemptions(project: &str, database: &str) -> Vec<AdminRequest> {
    ["payload", "metadata"]
        .iter()
        .map(|f| AdminRequest {
            method: Method::Patch,
            path: format!(
                "{}/fields/{f}?updateMask=indexConfig",
                group(project, database, EVENTS)
            ),
            body: json!({ "indexConfig": { "indexes": [] } }),
        })
        .collect()
}

/// TTL policies on the TTL field of events and event-id documents.
pub fn ttl_policies(project: &str, database: &str) -> Vec<AdminRequest> {
    [EVENTS, EVENT_IDS]
        .iter()
        .map(|cg| AdminRequest {
            method: Method::Patch,
            path: format!(
                "{}/fields/{TTL_FIELD}?updateMask=ttlConfig",
                group(project, database, cg)
            ),
            body: json!({ "ttlConfig": {} }),
        })
        .collect()
}

/// Every request that prepares a database for this backend, in the order they are sent.
pub fn requests(project: &str, database: &str) -> Vec<AdminRequest> {
    let mut all = composite_indexes(project, database);
    all.extend(index_exemptions(project, database));
    all.extend(ttl_policies(project, database));
    all
}

/// What one admin request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (Firestore answers a long-running operation).
    Applied {
        /// The request path.
        path: String,
    },
    /// The index already exists (HTTP 409): nothing to do.
    AlreadyExists {
        /// The request path.
        path: String,
    },
    /// The server does not serve the Admin API (the emulator: plain-text 404).
    NotServed {
        /// The request path.
        path: String,
    },
}

/// A failed admin call.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// The server could not be reached.
    #[error("firestore admin API unreachable: {0}")]
    Unreachable(String),
    /// The server refused a request.
    #[error("firestore admin API refused {path} (HTTP {status}): {body}")]
    Refused {
        /// The request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// Answer body (truncated).
        body: String,
    },
}

/// Classifies the answer to one admin request.
pub fn outcome(path: &str, status: u16, body: &str) -> Result<Outcome, AdminError> {
    let path = path.to_string();
    let google_error = serde_json::from_str::<Value>(body)
        .ok()
        .is_some_and(|v| v.get("error").is_some());
    match status {
        200..=299 => Ok(Outcome::Applied { path }),
        409 => Ok(Outcome::AlreadyExists { path }),
        404 if !google_error => Ok(Outcome::NotServed { path }),
        _ => Err(AdminError::Refused {
            path,
            status,
            body: body.chars().take(500).collect(),
        }),
    }
}

/// Sends `requests` to `endpoint` (`https://firestore.googleapis.com` or an emulator) with
/// `token` as bearer token; stops at the first refusal.
pub async fn send(
    endpoint: &str,
    token: Option<&str>,
    requests: &[AdminRequest],
) -> Result<Vec<Outcome>, AdminError> {
    let http = reqwest::Client::new();
    let base = format!("{}/v1", endpoint.trim_end_matches('/'));
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        let url = format!("{base}/{}", r.path);
        let mut req = match r.method {
            Method::Post => http.post(url).json(&r.body),
            Method::Patch => http.patch(url).json(&r.body),
            Method::Delete => http.delete(url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| AdminError::Unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        out.push(outcome(&r.path, status, &body)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_index_exemptions_and_ttl() {
        let all = requests("p", "(default)");
        let paths: Vec<&str> = all.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "projects/p/databases/(default)/collectionGroups/events/indexes",
                "projects/p/databases/(default)/collectionGroups/events/fields/payload?updateMask=indexConfig",
                "projects/p/databases/(default)/collectionGroups/events/fields/metadata?updateMask=indexConfig",
                "projects/p/databases/(default)/collectionGroups/events/fields/expires_at?updateMask=ttlConfig",
                "projects/p/databases/(default)/collectionGroups/eventIds/fields/expires_at?updateMask=ttlConfig",
            ]
        );
        assert_eq!(all[0].body["fields"][1]["fieldPath"], "position");
        assert_eq!(all[0].body["queryScope"], "COLLECTION_GROUP");
        assert_eq!(all[4].body, json!({"ttlConfig": {}}));
    }

    /// What the recording server saw: method, path with query, authorization, body.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String, Value)>>>;

    /// A real HTTP server on loopback that records every request and answers `index_status`
    /// to index creation (`POST`) and 200 to field updates.
    async fn recording_server(index_status: u16) -> (String, Seen) {
        use axum::http::{HeaderMap, Method as M, StatusCode, Uri};
        let seen: Seen = Default::default();
        let rec = seen.clone();
        let app = axum::Router::new().fallback(
            move |method: M, uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let rec = rec.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let path = uri.path_and_query().map(|p| p.to_string());
                    let post = method == M::POST;
                    if let Ok(mut r) = rec.lock() {
                        r.push((method.to_string(), path.unwrap_or_default(), auth, body));
                    }
                    let status = if post { index_status } else { 200 };
                    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                    (code, r#"{"name":"operations/op-1"}"#)
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn sends_exactly_the_built_requests() {
        let (endpoint, seen) = recording_server(200).await;
        let built = requests("proj-1", "(default)");
        let out = send(&endpoint, Some("tok-1"), &built).await.unwrap();
        assert_eq!(out.len(), built.len());
        assert!(out.iter().all(|o| matches!(o, Outcome::Applied { .. })));
        // reqwest may percent-encode the parentheses of "(default)"; compare decoded paths.
        let norm = |p: &str| p.replace("%28", "(").replace("%29", ")");
        let seen: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(m, p, a, b)| (m.clone(), norm(p), a.clone(), b.clone()))
            .collect();
        let want: Vec<_> = built
            .iter()
            .map(|r| {
                let m = match r.method {
                    Method::Post => "POST",
                    Method::Patch => "PATCH",
                    Method::Delete => "DELETE",
                };
                let path = format!("/v1/{}", r.path);
                (
                    m.to_string(),
                    path,
                    "Bearer tok-1".to_string(),
                    r.body.clone(),
                )
            })
            .collect();
        assert_eq!(seen, want);
    }

    #[tokio::test]
    async fn existing_index_is_fine_refusal_stops() {
        let (endpoint, _) = recording_server(409).await;
        let out = send(&endpoint, None, &requests("p", "(default)"))
            .await
            .unwrap();
        assert!(matches!(out[0], Outcome::AlreadyExists { .. }));
        let (endpoint, seen) = recording_server(403).await;
        let err = send(&endpoint, None, &requests("p", "(default)")).await;
        assert!(matches!(err, Err(AdminError::Refused { status: 403, .. })));
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "nothing is sent after a refusal"
        );
    }

    #[test]
    fn classifies_answers() {
        assert_eq!(
            outcome("x", 404, "Not Found"),
            Ok(Outcome::NotServed { path: "x".into() })
        );
        assert!(outcome("x", 404, r#"{"error":{"status":"NOT_FOUND"}}"#).is_err());
        assert_eq!(
            outcome("x", 409, "{}"),
            Ok(Outcome::AlreadyExists { path: "x".into() })
        );
        assert!(outcome("x", 403, "{}").is_err());
    }
}
