//! The one client of a store node's HTTP API. Every caller of the API in the project goes
//! through [`NodeClient`]: the operator (a tenant's usage, the purge probe), the archiver
//! ([`source::HttpSource`]) and the tests. Requests and answers are the wire types of
//! `allsource_core::wire`, the ones the server renders, so a change on one side that the other
//! does not follow does not compile. It never logs a token.

pub mod source;

use std::time::Duration;

use allsource_core::wire::{
    AppendOut, AppendRequest, DroppedOut, ErrorOut, EventsPage, StatsOut, TrimIn,
};
use allsource_core::StoreError;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// Why a call to a node failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The base URL or a path does not form a URL.
    #[error("node URL {url:?}: {message}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it is not one.
        message: String,
    },
    /// The CA bundle for an `https://` node holds no usable certificate.
    #[error("node CA: {0}")]
    Ca(String),
    /// No answer: connection refused, TLS handshake, timeout.
    #[error("store node request: {0}")]
    Transport(reqwest::Error),
    /// The node answered with an error status and body `{code, message}`.
    #[error("store node answered HTTP {status}: {} {}", .body.code, .body.message)]
    Status {
        /// HTTP status.
        status: u16,
        /// The error body (empty fields when the body was not one).
        body: ErrorOut,
    },
    /// A success answer whose body is not the expected type.
    #[error("store node answer: {0}")]
    Decode(reqwest::Error),
}

impl ClientError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<ClientError> for StoreError {
    /// The store error a caller sees of a failed call: the node's 400, 404, 501 and 500 keep
    /// their meaning; anything else (no answer, overload, 503) is `Unavailable`, to retry.
    fn from(e: ClientError) -> Self {
        let msg = e.to_string();
        match &e {
            ClientError::Url { .. } | ClientError::Ca(_) => StoreError::invalid("node", msg),
            ClientError::Status { status: 400, .. } => StoreError::invalid("request", msg),
            ClientError::Status { status: 404, .. } => StoreError::NotFound(msg),
            ClientError::Status { status: 501, .. } => StoreError::Unsupported(msg),
            ClientError::Status { status: 500, .. } | ClientError::Decode(_) => {
                StoreError::Internal(msg)
            }
            ClientError::Status { .. } | ClientError::Transport(_) => StoreError::Unavailable(msg),
        }
    }
}

/// A `reqwest` client builder with `timeout` for the whole request and for connecting; with
/// `ca_pem` (PEM certificates), `https://` nodes are verified against those CAs only (the
/// public roots are not trusted for them).
pub fn builder(
    timeout: Duration,
    ca_pem: Option<&[u8]>,
) -> Result<reqwest::ClientBuilder, ClientError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout);
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| ClientError::Ca(format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::Ca("holds no PEM CERTIFICATE".into()));
        }
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    Ok(b)
}

/// How many 421 answers one call follows to the tenant's owning node (one is enough when the
/// nodes agree on the placement; a second covers a placement read while it changed).
pub const MAX_HOPS: usize = 2;

/// The URL a 421 from `from` sends the request to, when `location` is one the client may follow:
/// absolute, the same scheme as `from` (never https to http), and the same path and query (the
/// owner is asked the same thing, nothing else). Pure.
pub fn owner_url(from: &reqwest::Url, location: &str) -> Option<reqwest::Url> {
    let to = reqwest::Url::parse(location).ok()?;
    (to.scheme() == from.scheme()
        && to.has_host()
        && to.username().is_empty()
        && to.password().is_none()
        && to.path() == from.path()
        && to.query() == from.query()
        && to.fragment().is_none())
    .then_some(to)
}

/// One store node (or gateway) at a base URL, reached with a shared `reqwest` client. Every
/// call carries a tenant's bearer token: the server takes the tenant from the token, so a
/// token can only ever reach its own tenant. The base may be any node of the store (its
/// Service): a node that does not own the tenant answers 421 and the call follows it to the
/// owner ([`owner_url`]).
#[derive(Debug, Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    base: reqwest::Url,
}

impl NodeClient {
    /// A client of the node at `base` (e.g. `http://es-0.es:8080`).
    pub fn new(http: reqwest::Client, base: &str) -> Result<Self, ClientError> {
        // A base without a trailing slash would lose its last path segment in `join`.
        let with_slash = if base.ends_with('/') {
            base.to_string()
        } else {
            format!("{base}/")
        };
        let base = reqwest::Url::parse(&with_slash).map_err(|e| ClientError::Url {
            url: base.to_string(),
            message: e.to_string(),
        })?;
        Ok(Self { http, base })
    }

    /// The base URL.
    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, ClientError> {
        self.base.join(path).map_err(|e| ClientError::Url {
            url: format!("{}{path}", self.base),
            message: e.to_string(),
        })
    }

    /// Sends `req` with the bearer token. A node that does not own the token's tenant answers
    /// 421 with the owner's URL of the same request in `Location`; the call follows it, at most
    /// [`MAX_HOPS`] times, and only to a URL of the same scheme and the same path and query (a
    /// 421 can send the token to the owning node, never elsewhere or over plain HTTP).
    async fn call<T: DeserializeOwned>(
        &self,
        token: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let mut req = req
            .bearer_auth(token)
            .build()
            .map_err(ClientError::Transport)?;
        let mut hops = 0;
        loop {
            let next = req.try_clone();
            let resp = self
                .http
                .execute(req)
                .await
                .map_err(ClientError::Transport)?;
            let status = resp.status();
            if status.is_success() {
                return resp.json().await.map_err(ClientError::Decode);
            }
            if status == reqwest::StatusCode::MISDIRECTED_REQUEST && hops < MAX_HOPS {
                let to = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|l| owner_url(resp.url(), l));
                if let (Some(to), Some(mut again)) = (to, next) {
                    *again.url_mut() = to;
                    req = again;
                    hops += 1;
                    continue;
                }
            }
            let body = resp.json::<ErrorOut>().await.unwrap_or_default();
            return Err(ClientError::Status {
                status: status.as_u16(),
                body,
            });
        }
    }

    /// `GET /v1/stats`: the usage, position, incarnation and quotas of the token's tenant.
    pub async fn stats(&self, token: &str) -> Result<StatsOut, ClientError> {
        self.call(token, self.http.get(self.url("v1/stats")?)).await
    }

    /// `GET /v1/events?from=&limit=&encoding=base64`: the tenant's events from `from` in
    /// position order, payloads as base64 so the bytes come back exactly.
    pub async fn read_all(
        &self,
        token: &str,
        from: u64,
        limit: usize,
    ) -> Result<EventsPage, ClientError> {
        let mut url = self.url("v1/events")?;
        url.query_pairs_mut()
            .append_pair("from", &from.to_string())
            .append_pair("limit", &limit.to_string())
            .append_pair("encoding", "base64");
        self.call(token, self.http.get(url)).await
    }

    /// `POST /v1/streams/{stream}/events`: appends `body`'s batch to `stream` (atomically, at
    /// `body.expected_version` when given). A version conflict is `Status { status: 409 }`
    /// with code `wrong_expected_version`.
    pub async fn append(
        &self,
        token: &str,
        stream: &str,
        body: &AppendRequest,
    ) -> Result<AppendOut, ClientError> {
        let url = self.stream_url(stream, "events")?;
        self.call(token, self.http.post(url).json(body)).await
    }

    /// `GET /v1/streams/{stream}/events?from=&limit=&encoding=base64`: the stream's events
    /// from version `from`, forwards, payloads as base64.
    pub async fn read_stream(
        &self,
        token: &str,
        stream: &str,
        from: u64,
        limit: usize,
    ) -> Result<EventsPage, ClientError> {
        let mut url = self.stream_url(stream, "events")?;
        url.query_pairs_mut()
            .append_pair("from", &from.to_string())
            .append_pair("limit", &limit.to_string())
            .append_pair("encoding", "base64");
        self.call(token, self.http.get(url)).await
    }

    /// `v1/streams/{stream}/{tail}`, the stream id as one percent-encoded path segment (a `/`
    /// or `?` in an id cannot reach another route).
    fn stream_url(&self, stream: &str, tail: &str) -> Result<reqwest::Url, ClientError> {
        let mut url = self.url("v1/streams/")?;
        url.path_segments_mut()
            .map_err(|()| ClientError::Url {
                url: self.base.to_string(),
                message: "cannot be a base".into(),
            })?
            .pop_if_empty()
            .push(stream)
            .push(tail);
        Ok(url)
    }

    /// `POST /v1/trim`: drops the tenant's events before `body.before` (only at
    /// `body.incarnation`, when given).
    pub async fn trim(&self, token: &str, body: &TrimIn) -> Result<DroppedOut, ClientError> {
        let req = self.http.post(self.url("v1/trim")?).json(body);
        self.call(token, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_421_is_followed_only_to_the_same_request_on_another_node() {
        let from = reqwest::Url::parse("http://orders.shop.svc:8080/v1/events?from=3").unwrap();
        let owner = "http://orders-1.orders-nodes.shop.svc:8080/v1/events?from=3";
        assert_eq!(owner_url(&from, owner).unwrap().as_str(), owner);
        for refused in [
            // another scheme, another request, credentials, a relative or broken location
            "https://orders-1.orders-nodes.shop.svc:8080/v1/events?from=3",
            "http://orders-1.orders-nodes.shop.svc:8080/v1/trim?from=3",
            "http://orders-1.orders-nodes.shop.svc:8080/v1/events?from=0",
            "http://user:pw@orders-1.orders-nodes.shop.svc:8080/v1/events?from=3",
            "/v1/events?from=3",
            "not a url",
        ] {
            assert!(owner_url(&from, refused).is_none(), "{refused}");
        }
        let tls = reqwest::Url::parse("https://orders.shop.svc:8080/v1/stats").unwrap();
        assert!(owner_url(&tls, "http://orders-0.orders-nodes.shop.svc:8080/v1/stats").is_none());
    }
}
