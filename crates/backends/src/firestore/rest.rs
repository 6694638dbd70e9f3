//! A thin client of the Firestore REST API v1 (`batchGet`, `commit`, `rollback`, `runQuery`)
//! over reqwest, with Firestore's error statuses mapped to [`RestError`]. It speaks to
//! production Firestore (`https://firestore.googleapis.com`, a Google OAuth bearer token from a
//! [`TokenSource`], asked for each request) and to the emulator
//! (`http://{FIRESTORE_EMULATOR_HOST}`, which accepts `Bearer owner`). It must never know about
//! the store's layout (document names and bodies come from [`super::layout`]) and never log a
//! token.

use std::collections::HashMap;

use serde_json::{json, Value};
use thiserror::Error;

use super::auth::{AuthError, TokenSource};
use allsource_core::error::StoreError;

/// A failed Firestore call.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RestError {
    /// The transaction lost a lock or a race (`ABORTED`): retry it from the start.
    #[error("firestore aborted the transaction: {0}")]
    Aborted(String),
    /// A write precondition failed (`FAILED_PRECONDITION`, `ALREADY_EXISTS`, `NOT_FOUND`):
    /// someone else wrote first; re-read and decide again.
    #[error("firestore precondition failed: {0}")]
    Precondition(String),
    /// A document or request exceeds a Firestore limit (1 MiB document, 10 MiB request).
    #[error("firestore limit exceeded: {0}")]
    TooLarge(String),
    /// Firestore is unreachable, overloaded or timed out (retryable by the caller).
    #[error("firestore unavailable: {0}")]
    Unavailable(String),
    /// Firestore refused the request (bad credentials, missing database, bad argument).
    #[error("firestore refused the request ({status}): {message}")]
    Refused {
        /// gRPC status name or HTTP status.
        status: String,
        /// Firestore's message.
        message: String,
    },
    /// The answer could not be decoded.
    #[error("firestore answer unreadable: {0}")]
    Decode(String),
    /// No bearer token could be had (the call was not sent).
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl From<RestError> for StoreError {
    fn from(e: RestError) -> Self {
        match e {
            RestError::TooLarge(m) => StoreError::TooLarge(m),
            RestError::Aborted(_)
            | RestError::Unavailable(_)
            | RestError::Precondition(_)
            | RestError::Auth(AuthError::Transient(_)) => StoreError::Unavailable(e.to_string()),
            RestError::Refused { .. } | RestError::Decode(_) | RestError::Auth(_) => {
                StoreError::Internal(e.to_string())
            }
        }
    }
}

/// Classifies a Firestore error answer (HTTP status + body `{error: {status, message}}`).
pub fn classify(http: u16, body: &str) -> RestError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let status = err
        .and_then(|e| e.get("status"))
        .and_then(Value::as_str)
        .map_or_else(|| format!("HTTP {http}"), str::to_string);
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map_or_else(|| body.chars().take(300).collect(), str::to_string);
    let lower = message.to_ascii_lowercase();
    // Production says "exceeds the maximum allowed size", the emulator "is longer than".
    let too_big = [
        "too big",
        "too large",
        "exceeds the maximum",
        "longer than",
        "writes allowed",
        "maximum size",
    ]
    .iter()
    .any(|m| lower.contains(m));
    match status.as_str() {
        "ABORTED" => RestError::Aborted(message),
        "FAILED_PRECONDITION" | "ALREADY_EXISTS" | "NOT_FOUND" => RestError::Precondition(message),
        "INVALID_ARGUMENT" if too_big => RestError::TooLarge(message),
        "RESOURCE_EXHAUSTED" | "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "INTERNAL" => {
            RestError::Unavailable(format!("{status}: {message}"))
        }
        _ if http == 413 => RestError::TooLarge(message),
        _ if http >= 500 || http == 429 => RestError::Unavailable(format!("{status}: {message}")),
        _ => RestError::Refused { status, message },
    }
}

/// How a `batchGet` relates to a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode<'a> {
    /// A plain strongly consistent read.
    Plain,
    /// Start a read-write transaction with this read (saves a `beginTransaction` round trip).
    NewTransaction,
    /// Read inside this transaction.
    In(&'a str),
}

/// Documents found by a `batchGet`, by name (missing names are absent).
pub type Found = HashMap<String, Value>;

/// The REST client: base URL, token source, connection pool.
#[derive(Debug, Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base: String,
    tokens: TokenSource,
}

impl RestClient {
    /// A client of `base_url` (`https://firestore.googleapis.com` or `http://127.0.0.1:8080`)
    /// sending the fixed `token` as bearer token when given.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, RestError> {
        Self::with_tokens(base_url, TokenSource::fixed(token))
    }

    /// A client of `base_url` sending a bearer token from `tokens` with every request.
    pub fn with_tokens(base_url: &str, tokens: TokenSource) -> Result<Self, RestError> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| RestError::Refused {
                status: "client".into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            http,
            base: format!("{}/v1", base_url.trim_end_matches('/')),
            tokens,
        })
    }

    /// The bearer token the next request sends (None: no Authorization header).
    pub async fn token(&self) -> Result<Option<String>, AuthError> {
        self.tokens.token().await
    }

    /// POSTs `body` to `{base}/{path}` and decodes the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, RestError> {
        let mut req = self.http.post(format!("{}/{}", self.base, path)).json(body);
        if let Some(t) = self.tokens.token().await? {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| RestError::Unavailable(format!("request: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| RestError::Unavailable(format!("answer: {e}")))?;
        if !(200..300).contains(&status) {
            return Err(classify(status, &text));
        }
        serde_json::from_str(&text).map_err(|e| RestError::Decode(e.to_string()))
    }

    /// Reads documents by name; returns the transaction id when `mode` started one.
    pub async fn batch_get(
        &self,
        root: &str,
        names: &[String],
        mode: ReadMode<'_>,
    ) -> Result<(Option<String>, Found), RestError> {
        let mut body = json!({ "documents": names });
        match mode {
            ReadMode::Plain => {}
            ReadMode::NewTransaction => body["newTransaction"] = json!({ "readWrite": {} }),
            ReadMode::In(tx) => body["transaction"] = json!(tx),
        }
        let answer = self.post(&format!("{root}:batchGet"), &body).await?;
        let items = answer
            .as_array()
            .ok_or_else(|| RestError::Decode("batchGet answer is not an array".into()))?;
        let mut tx = None;
        let mut found = Found::new();
        for it in items {
            if let Some(t) = it.get("transaction").and_then(Value::as_str) {
                tx = Some(t.to_string());
            }
            if let Some(doc) = it.get("found") {
                let name = doc.get("name").and_then(Value::as_str).unwrap_or_default();
                found.insert(name.to_string(), doc.clone());
            }
        }
        if mode == ReadMode::NewTransaction && tx.is_none() {
            return Err(RestError::Decode("batchGet started no transaction".into()));
        }
        Ok((tx, found))
    }

    /// Reads one document.
    pub async fn get(&self, root: &str, name: String) -> Result<Option<Value>, RestError> {
        let (_, mut found) = self
            .batch_get(root, std::slice::from_ref(&name), ReadMode::Plain)
            .await?;
        Ok(found.remove(&name))
    }

    /// Commits `writes` atomically, inside `tx` when given.
    pub async fn commit(
        &self,
        root: &str,
        writes: Vec<Value>,
        tx: Option<&str>,
    ) -> Result<(), RestError> {
        let mut body = json!({ "writes": writes });
        if let Some(t) = tx {
            body["transaction"] = json!(t);
        }
        self.post(&format!("{root}:commit"), &body)
            .await
            .map(|_| ())
    }

    /// Releases a transaction's locks without writing (best effort: the locks also expire).
    pub async fn rollback(&self, root: &str, tx: &str) {
        let body = json!({ "transaction": tx });
        if let Err(e) = self.post(&format!("{root}:rollback"), &body).await {
            tracing::debug!(error = %e, "firestore rollback failed");
        }
    }

    /// Runs a structured query under `parent` (a document name or the database root) and
    /// returns the documents in query order.
    pub async fn run_query(&self, parent: &str, query: &Value) -> Result<Vec<Value>, RestError> {
        let answer = self
            .post(&format!("{}:runQuery", encode_path(parent)), query)
            .await?;
        let items = answer
            .as_array()
            .ok_or_else(|| RestError::Decode("runQuery answer is not an array".into()))?;
        Ok(items
            .iter()
            .filter_map(|it| it.get("document").cloned())
            .collect())
    }
}

/// Percent-encodes the characters of a document path that URL parsers or Google's routing
/// treat specially (`:` separates the custom method, `+` may read as a space).
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            ':' => out.push_str("%3A"),
            '+' => out.push_str("%2B"),
            '@' => out.push_str("%40"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_firestore_errors() {
        let body = |s: &str, m: &str| json!({"error": {"status": s, "message": m}}).to_string();
        assert!(matches!(
            classify(409, &body("ABORTED", "Transaction lock timeout.")),
            RestError::Aborted(_)
        ));
        assert!(matches!(
            classify(409, &body("ALREADY_EXISTS", "entity already exists")),
            RestError::Precondition(_)
        ));
        assert!(matches!(
            classify(
                400,
                &body("INVALID_ARGUMENT", "Document exceeds the maximum size")
            ),
            RestError::TooLarge(_)
        ));
        let emulator = r#"{"error":{"code":400,"message":"The value of property \"p\" is longer than 1048487 bytes.","status":"INVALID_ARGUMENT"}}"#;
        assert!(matches!(classify(400, emulator), RestError::TooLarge(_)));
        assert!(matches!(
            classify(503, "gateway down"),
            RestError::Unavailable(_)
        ));
        assert!(matches!(
            classify(401, &body("UNAUTHENTICATED", "bad token")),
            RestError::Refused { .. }
        ));
        assert_eq!(
            StoreError::from(RestError::TooLarge("x".into())).code(),
            "too_large"
        );
    }

    #[test]
    fn encodes_path_specials() {
        assert_eq!(encode_path("a/s:b+c@d=e"), "a/s%3Ab%2Bc%40d%3De");
    }
}
