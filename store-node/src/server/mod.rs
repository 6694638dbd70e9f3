//! The HTTP API of a store node (axum): versioned JSON endpoints under `/v1/` for every
//! [`EventStore`] operation, authenticated by a per-tenant bearer token, plus `/healthz`,
//! `/readyz` and the OpenAPI document at `/openapi.yaml`; Prometheus `/metrics` (whose labels
//! name tenants) is served on a listener of its own, never on the API port. Both listeners cap
//! open connections and bound the time to a request head ([`conn`]). It serves any
//! `Arc<dyn EventStore>` (the embedded engine in `store-node serve`, a cloud backend in
//! `store-node gateway`). The tenant always comes from the token, never from the request, so no
//! id a client sends can reach another tenant's data. This module must never log a token or a
//! payload, and never let a bad request panic the process or reach the store unvalidated.

mod auth;
pub mod conn;
pub use allsource_core::wire as dto;
pub mod error;
mod handlers;
pub mod health;
mod middleware;
mod ops;
pub mod purge;
mod subscribe;
pub mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::Router;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backend::EventStore;
use crate::metrics::Metrics;
use crate::tenant::{RateLimiter, Registry};
pub use error::ApiError;
use health::POISONED_ACTION;

/// The OpenAPI document, kept in the repository as `store-node/openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// Tunables of the HTTP server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address of the Prometheus `/metrics` listener; None: metrics are not served over HTTP.
    pub metrics_listen: Option<SocketAddr>,
    /// Open connections per listener; past it, a connection that has sent nothing yet is
    /// evicted for the new one, else the new one is refused.
    pub max_connections: usize,
    /// Time a connection has to deliver a complete request head; also how long an idle
    /// keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Free-space reserve of the data volume (appends and snapshots answer 507 below it);
    /// None for stores without a local volume.
    pub disk_reserve: Option<health::DiskReserve>,
    /// This node's name; tenants placed on another node answer 421. None: serve every tenant.
    pub node_name: Option<String>,
    /// Largest request body; larger bodies answer 413 before they are read.
    pub max_body_bytes: usize,
    /// Time limit until the response head of a request (504 after it).
    pub request_timeout: Duration,
    /// Requests handled at once; more answer 503 with Retry-After.
    pub max_concurrent_requests: usize,
    /// Open subscriptions at once; more answer 503.
    pub max_subscriptions: usize,
    /// Tenants with their own metric labels; the rest share `other`.
    pub max_tenant_labels: usize,
    /// Registry file poll interval.
    pub registry_poll: Duration,
    /// How long shutdown waits for in-flight requests before giving up on them.
    pub shutdown_grace: Duration,
    /// Interval of SSE keep-alive comments.
    pub sse_keepalive: Duration,
    /// HTTPS on the API listener with this (reloading) certificate; None: plain HTTP.
    pub tls: Option<Arc<tls::ReloadingCert>>,
    /// How often the TLS files are checked for a new pair.
    pub tls_reload_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            disk_reserve: None,
            node_name: None,
            max_body_bytes: 32 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
            max_subscriptions: 1024,
            max_tenant_labels: 100,
            registry_poll: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(20),
            sse_keepalive: Duration::from_secs(15),
            tls: None,
            tls_reload_interval: Duration::from_secs(5),
        }
    }
}

/// Why the server stopped with an error.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The accept loop failed.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The TLS configuration of the API listener could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    store: OnceLock<Arc<dyn EventStore>>,
    registry: Arc<Registry>,
    config: ServerConfig,
    metrics: Arc<Metrics>,
    limiter: RateLimiter,
    shutdown: CancellationToken,
    requests: Arc<Semaphore>,
    subscriptions: Arc<Semaphore>,
    tenant_subscriptions: subscribe::TenantSubscriptions,
    purges: purge::Purges,
}

impl AppState {
    /// A state without a store yet: `/readyz` and `/v1/` answer 503 until [`AppState::set_store`]
    /// (used while the engine recovers).
    pub fn new(
        registry: Arc<Registry>,
        config: ServerConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        metrics
            .registry_tenants
            .set(registry.snapshot().len() as i64);
        if let Some(reserve) = config.disk_reserve.clone() {
            register_disk_gauges(&metrics, reserve);
        }
        if let Some(cert) = config.tls.clone() {
            register_tls_gauges(&metrics, cert);
        }
        Self {
            inner: Arc::new(Shared {
                store: OnceLock::new(),
                requests: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
                subscriptions: Arc::new(Semaphore::new(config.max_subscriptions)),
                tenant_subscriptions: subscribe::TenantSubscriptions::default(),
                registry,
                config,
                metrics,
                limiter: RateLimiter::default(),
                shutdown,
                purges: purge::Purges::default(),
            }),
        }
    }

    /// Installs the store (once); the node becomes ready.
    pub fn set_store(&self, store: Arc<dyn EventStore>) {
        let watched = Arc::downgrade(&store);
        if self.inner.store.set(store).is_err() {
            tracing::warn!("store was already set; keeping the first one");
            return;
        }
        let poisoned =
            move || watched.upgrade().is_some_and(|s| s.poisoned().is_some()) as u8 as f64;
        if let Err(e) = self.inner.metrics.register_gauge_fn(
            "allsource_wal_poisoned",
            "1 while the store refuses every write after a failed WAL write or fsync (restart the node)",
            poisoned,
        ) {
            tracing::error!(error = %e, "cannot register allsource_wal_poisoned");
        }
    }

    /// The store, or 503 while it is not ready.
    pub fn store(&self) -> Result<Arc<dyn EventStore>, ApiError> {
        self.inner
            .store
            .get()
            .cloned()
            .ok_or_else(|| ApiError::unavailable("not_ready", "the store is still starting"))
    }

    /// True once a store is installed, it takes writes and shutdown has not begun.
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Why the node is not ready (a code and an explanation), or None when it is.
    pub fn not_ready(&self) -> Option<(&'static str, String)> {
        if self.inner.shutdown.is_cancelled() {
            return Some(("shutting_down", "the node is shutting down".into()));
        }
        let Some(store) = self.inner.store.get() else {
            return Some((
                "starting",
                "the store is still starting (WAL recovery)".into(),
            ));
        };
        store.poisoned().map(|p| {
            (
                "wal_poisoned",
                format!("{p}; every write is refused. To recover, {POISONED_ACTION}"),
            )
        })
    }

    /// Why writes are refused right now (a code and an explanation), or None: a poisoned WAL
    /// (see [`AppState::not_ready`]) or a data volume at its free-space reserve.
    pub fn write_refusal(&self) -> Option<(&'static str, String)> {
        if let Some(r) = self.not_ready().filter(|(code, _)| *code == "wal_poisoned") {
            return Some(r);
        }
        let reserve = self.inner.config.disk_reserve.as_ref()?;
        reserve.refusal().map(|m| ("disk_reserve", m))
    }

    /// Refuses (507) a write of about `incoming` bytes that would eat into the free-space
    /// reserve of the data volume; nothing has been written when it does.
    pub fn admit_write(&self, incoming: u64) -> Result<(), ApiError> {
        match &self.inner.config.disk_reserve {
            Some(r) => r.admit(incoming),
            None => Ok(()),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The tenant registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// Outcomes of the purges of tenants marked `purging` in the registry.
    pub fn purges(&self) -> &purge::Purges {
        &self.inner.purges
    }

    fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
}

/// The complete router: `/v1/` API, operational endpoints, limits and metrics middleware.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/info", get(handlers::info))
        .route("/v1/streams", get(handlers::list_streams))
        .route(
            "/v1/streams/count",
            get(handlers::count_streams).delete(handlers::delete_stream_named_count),
        )
        .route("/v1/streams/{stream}", delete(handlers::delete_stream))
        .route(
            "/v1/streams/{stream}/events",
            get(handlers::read_stream).post(handlers::append),
        )
        .route(
            "/v1/streams/{stream}/snapshot",
            get(handlers::load_snapshot).put(handlers::save_snapshot),
        )
        .route("/v1/streams/{stream}/truncate", post(handlers::truncate))
        .route("/v1/events", get(handlers::read_all))
        .route("/v1/subscribe", get(subscribe::subscribe))
        .route("/v1/stats", get(handlers::stats))
        .route("/v1/trim", post(handlers::trim));
    let ops = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.yaml", get(ops::openapi))
        .route("/v1/openapi.yaml", get(ops::openapi));
    let max_body = state.config().max_body_bytes;
    api.merge(ops)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::guard,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// The Prometheus listener's router: `/metrics` only.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(state)
}

fn register_disk_gauges(metrics: &Metrics, reserve: health::DiskReserve) {
    let r2 = reserve.clone();
    let available = metrics.register_gauge_fn(
        "allsource_disk_available_bytes",
        "Bytes the node may still write on its data volume",
        move || r2.space().map_or(f64::NAN, |s| s.available as f64),
    );
    let kept = metrics.register_gauge_fn(
        "allsource_disk_reserve_bytes",
        "Free bytes kept on the data volume: appends and snapshots answer 507 below it",
        move || reserve.space().map_or(f64::NAN, |s| s.reserve as f64),
    );
    if let Err(e) = available.and(kept) {
        tracing::error!(error = %e, "cannot register the disk gauges");
    }
}

fn register_tls_gauges(metrics: &Metrics, cert: Arc<tls::ReloadingCert>) {
    let c2 = cert.clone();
    let not_after = metrics.register_gauge_fn(
        "allsource_tls_cert_not_after_seconds",
        "End of validity (Unix seconds) of the API listener's certificate in use",
        move || {
            c2.status()
                .not_after
                .map_or(f64::NAN, |t| t.timestamp() as f64)
        },
    );
    let c3 = cert.clone();
    let failing = metrics.register_gauge_fn(
        "allsource_tls_reload_failing",
        "1 while the last attempt to load a changed certificate/key pair failed (the previous pair is kept)",
        move || c3.status().last_reload_error.is_some() as u8 as f64,
    );
    let reloads = metrics.register_gauge_fn(
        "allsource_tls_reloads",
        "Certificate/key pairs installed since start without a restart",
        move || cert.status().reloads as f64,
    );
    if let Err(e) = not_after.and(failing).and(reloads) {
        tracing::error!(error = %e, "cannot register the TLS gauges");
    }
}

/// The bound listeners of a server.
pub struct Listeners {
    /// The API listener.
    pub api: TcpListener,
    /// The Prometheus listener, if metrics are served.
    pub metrics: Option<TcpListener>,
}

/// Serves `store` on `config.listen` (and metrics on `config.metrics_listen`) until `shutdown`
/// fires, then drains for at most `config.shutdown_grace`. The registry is polled for changes
/// meanwhile. The caller closes the store afterwards.
pub async fn serve(
    store: Arc<dyn EventStore>,
    registry: Arc<Registry>,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let metrics = Arc::new(Metrics::new(config.max_tenant_labels)?);
    let listeners = bind_all(&config).await?;
    let state = AppState::new(registry, config, metrics, shutdown);
    state.set_store(store);
    run(state, listeners).await
}

/// Binds a listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Binds the API listener and, when configured, the metrics listener.
pub async fn bind_all(config: &ServerConfig) -> Result<Listeners, ServerError> {
    let api = bind(config.listen).await?;
    let metrics = match config.metrics_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    Ok(Listeners { api, metrics })
}

/// Runs the server on already bound listeners with a prepared state (the store may be set
/// later). Returns after graceful shutdown.
pub async fn run(state: AppState, listeners: Listeners) -> Result<(), ServerError> {
    let shutdown = state.shutdown().clone();
    let poller = {
        let st = state.clone();
        state.registry().clone().spawn_poller(
            state.config().registry_poll,
            shutdown.clone(),
            move |res| match res {
                Ok(_) => {
                    let snap = st.registry().snapshot();
                    st.metrics().registry_tenants.set(snap.len() as i64);
                    st.metrics()
                        .registry_reloads
                        .with_label_values(&["ok"])
                        .inc();
                    let ids = snap.tenant_ids();
                    st.limiter().retain(|t| ids.contains(t));
                    tracing::info!(tenants = snap.len(), "tenant registry reloaded");
                }
                Err(e) => {
                    st.metrics()
                        .registry_reloads
                        .with_label_values(&["error"])
                        .inc();
                    tracing::error!(error = %e, "tenant registry reload failed; keeping the previous one");
                }
            },
        )
    };
    let purger = tokio::spawn(purge::run(state.clone(), shutdown.clone()));
    let cfg = state.config();
    let limits = conn::ConnLimits {
        max_connections: cfg.max_connections,
        header_read_timeout: cfg.header_read_timeout,
    };
    let grace = cfg.shutdown_grace;
    let (acceptor, tls_poller) = match &cfg.tls {
        None => (None, None),
        Some(cert) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config()?);
            let poller = tokio::spawn(cert.clone().poll(cfg.tls_reload_interval, shutdown.clone()));
            (Some(acceptor), Some(poller))
        }
    };
    let metrics_server = listeners.metrics.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "store-node metrics listening");
        }
        tokio::spawn(conn::serve(
            l,
            metrics_router(state.clone()),
            None,
            limits,
            state.metrics().clone(),
            shutdown.clone(),
            grace,
        ))
    });
    if let Ok(addr) = listeners.api.local_addr() {
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        tracing::info!(%addr, scheme, "store-node HTTP API listening");
    }
    conn::serve(
        listeners.api,
        router(state.clone()),
        acceptor,
        limits,
        state.metrics().clone(),
        shutdown.clone(),
        grace,
    )
    .await;
    shutdown.cancel();
    if let Some(m) = metrics_server {
        m.abort();
    }
    poller.abort();
    purger.abort();
    if let Some(p) = tls_poller {
        p.abort();
    }
    Ok(())
}

#[cfg(test)]
mod hostile_tests;

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::backend::memory::MemoryStore;
    use crate::tenant::{sha256_hex, RegistryFile};

    /// Every route of [`router`], as written in the OpenAPI document.
    const ROUTES: &[&str] = &[
        "/v1/info",
        "/v1/streams",
        "/v1/streams/count",
        "/v1/streams/{stream}",
        "/v1/streams/{stream}/events",
        "/v1/streams/{stream}/snapshot",
        "/v1/streams/{stream}/truncate",
        "/v1/events",
        "/v1/subscribe",
        "/v1/stats",
        "/v1/trim",
        "/healthz",
        "/readyz",
        "/openapi.yaml",
    ];

    #[test]
    fn openapi_documents_every_route() {
        let doc: serde_yaml::Value = serde_yaml::from_str(OPENAPI_YAML).unwrap();
        let paths = doc["paths"].as_mapping().unwrap();
        for r in ROUTES {
            assert!(paths.contains_key(*r), "openapi.yaml lacks {r}");
        }
        assert_eq!(
            paths.len(),
            ROUTES.len(),
            "openapi.yaml documents a route the router lacks"
        );
    }

    fn state(with_store: bool) -> AppState {
        state_with(with_store, ServerConfig::default())
    }

    fn state_with(with_store: bool, config: ServerConfig) -> AppState {
        let file = RegistryFile::parse(
            format!(
                r#"{{"version":1,"tenants":[{{"id":"a","tokenSha256":["{}"]}}]}}"#,
                sha256_hex("t")
            )
            .as_bytes(),
        )
        .unwrap();
        let st = AppState::new(
            Arc::new(Registry::fixed(&file).unwrap()),
            config,
            Arc::new(Metrics::new(10).unwrap()),
            CancellationToken::new(),
        );
        if with_store {
            st.set_store(Arc::new(MemoryStore::default()));
        }
        st
    }

    async fn status_of(st: AppState, req: Request<Body>) -> StatusCode {
        router(st).oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn not_ready_until_the_store_is_set() {
        let get = |p: &str| {
            Request::get(p)
                .header("authorization", "Bearer t")
                .body(Body::empty())
                .unwrap()
        };
        let st = state(false);
        assert_eq!(
            status_of(st.clone(), get("/readyz")).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status_of(st.clone(), get("/healthz")).await, StatusCode::OK);
        assert_eq!(
            status_of(st.clone(), get("/v1/stats")).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        st.set_store(Arc::new(MemoryStore::default()));
        assert_eq!(status_of(st.clone(), get("/readyz")).await, StatusCode::OK);
        assert_eq!(status_of(st, get("/v1/stats")).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn append_then_read_in_process() {
        let st = state(true);
        let body = r#"{"events":[{"eventId":"00000000-0000-0000-0000-000000000001","eventType":"t","data":{"x":1}}]}"#;
        let req = Request::post("/v1/streams/s/events")
            .header("authorization", "Bearer t")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        assert_eq!(status_of(st.clone(), req).await, StatusCode::CREATED);
        let req = Request::get("/v1/streams/s/events")
            .header("authorization", "Bearer t")
            .body(Body::empty())
            .unwrap();
        let resp = router(st).oneshot(req).await.unwrap();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["events"][0]["data"]["x"], 1);
    }

    fn get(p: &str) -> Request<Body> {
        Request::get(p)
            .header("authorization", "Bearer t")
            .body(Body::empty())
            .unwrap()
    }

    async fn error_of(st: AppState, req: Request<Body>) -> (StatusCode, Option<String>, String) {
        let resp = router(st).oneshot(req).await.unwrap();
        let status = resp.status();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        (status, retry, v["code"].as_str().unwrap().to_string())
    }

    #[tokio::test]
    async fn full_request_slots_answer_503_not_a_queue() {
        let st = state_with(
            true,
            ServerConfig {
                max_concurrent_requests: 1,
                ..ServerConfig::default()
            },
        );
        let held = st.inner.requests.clone().try_acquire_owned().unwrap();
        let (status, retry, code) = error_of(st.clone(), get("/v1/stats")).await;
        assert_eq!(
            (status, retry.as_deref(), code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("1"), "overloaded")
        );
        // operational endpoints stay reachable under overload
        assert_eq!(status_of(st.clone(), get("/readyz")).await, StatusCode::OK);
        drop(held);
        assert_eq!(status_of(st, get("/v1/stats")).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn subscription_cap_answers_503() {
        let st = state_with(
            true,
            ServerConfig {
                max_subscriptions: 0,
                ..ServerConfig::default()
            },
        );
        let (status, _, code) = error_of(st, get("/v1/subscribe")).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "too_many_subscriptions")
        );
    }

    /// A store whose stats never answer, to exercise the request time limit.
    struct Stuck(MemoryStore);

    #[async_trait::async_trait]
    impl EventStore for Stuck {
        fn capabilities(&self) -> crate::model::Capabilities {
            self.0.capabilities()
        }
        async fn append(
            &self,
            t: &crate::TenantId,
            s: &crate::StreamId,
            e: crate::ExpectedVersion,
            ev: Vec<crate::NewEvent>,
        ) -> crate::StoreResult<crate::AppendResult> {
            self.0.append(t, s, e, ev).await
        }
        async fn read_stream(
            &self,
            t: &crate::TenantId,
            s: &crate::StreamId,
            f: crate::ReadFrom,
            d: crate::Direction,
            l: usize,
        ) -> crate::StoreResult<Vec<crate::RecordedEvent>> {
            self.0.read_stream(t, s, f, d, l).await
        }
        async fn read_all(
            &self,
            t: &crate::TenantId,
            f: u64,
            l: usize,
        ) -> crate::StoreResult<Vec<crate::RecordedEvent>> {
            self.0.read_all(t, f, l).await
        }
        async fn subscribe(
            &self,
            t: &crate::TenantId,
            g: crate::SubscriptionTarget,
            a: Option<u64>,
        ) -> crate::StoreResult<crate::EventSubscription> {
            self.0.subscribe(t, g, a).await
        }
        async fn save_snapshot(
            &self,
            t: &crate::TenantId,
            s: crate::Snapshot,
        ) -> crate::StoreResult<()> {
            self.0.save_snapshot(t, s).await
        }
        async fn load_snapshot(
            &self,
            t: &crate::TenantId,
            s: &crate::StreamId,
        ) -> crate::StoreResult<Option<crate::Snapshot>> {
            self.0.load_snapshot(t, s).await
        }
        async fn list_streams(
            &self,
            t: &crate::TenantId,
            a: Option<&crate::StreamId>,
            l: usize,
        ) -> crate::StoreResult<Vec<crate::StreamInfo>> {
            self.0.list_streams(t, a, l).await
        }
        async fn count_streams(&self, t: &crate::TenantId) -> crate::StoreResult<u64> {
            self.0.count_streams(t).await
        }
        async fn delete_stream(
            &self,
            t: &crate::TenantId,
            s: &crate::StreamId,
        ) -> crate::StoreResult<()> {
            self.0.delete_stream(t, s).await
        }
        async fn truncate_before(
            &self,
            t: &crate::TenantId,
            s: &crate::StreamId,
            b: u64,
        ) -> crate::StoreResult<u64> {
            self.0.truncate_before(t, s, b).await
        }
        async fn trim_tenant_before(
            &self,
            t: &crate::TenantId,
            b: u64,
            i: Option<u64>,
        ) -> crate::StoreResult<u64> {
            self.0.trim_tenant_before(t, b, i).await
        }
        async fn stats(&self, _: &crate::TenantId) -> crate::StoreResult<crate::TenantStats> {
            futures::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_request_past_its_time_limit_answers_504() {
        let st = state_with(
            false,
            ServerConfig {
                request_timeout: Duration::from_millis(50),
                ..ServerConfig::default()
            },
        );
        st.set_store(Arc::new(Stuck(MemoryStore::default())));
        let (status, _, code) = error_of(st.clone(), get("/v1/stats")).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::GATEWAY_TIMEOUT, "timeout")
        );
        assert_eq!(
            status_of(st, get("/v1/streams/count")).await,
            StatusCode::OK
        );
    }
}
