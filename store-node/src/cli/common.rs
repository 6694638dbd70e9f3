//! Flags shared by every subcommand that serves the HTTP API (`serve`, `gateway`): listen
//! address, registry file, node name, request limits, HTTPS; plus the SIGTERM/SIGINT handler. Flatten
//! [`HttpArgs`] into a subcommand's args to get the same flags and environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use store_node::model::Limits;
use store_node::server::tls::ReloadingCert;
use store_node::server::ServerConfig;
use store_node::tenant::Registry;
use tokio_util::sync::CancellationToken;

/// HTTP server flags.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address to listen on.
    #[arg(long, env = "STORE_NODE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of the Prometheus `/metrics` listener (its labels name tenants, so it is never
    /// served on the API port; keep it off the client Service).
    #[arg(long, env = "STORE_NODE_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Open connections per listener; past it, a connection that has not sent a request yet is
    /// closed for the new one, else the new one is refused. Keep it below the open-files limit.
    #[arg(long, env = "STORE_NODE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Time a connection has to send a complete request head, in milliseconds; also how long an
    /// idle keep-alive connection stays open.
    #[arg(
        long,
        env = "STORE_NODE_HEADER_READ_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub header_read_timeout_ms: u64,
    /// Tenant registry file (JSON or YAML), reloaded when its content changes.
    #[arg(long, env = "STORE_NODE_REGISTRY")]
    pub registry: PathBuf,
    /// This node's name (tenants placed on other nodes answer 421).
    #[arg(long, env = "POD_NAME")]
    pub node_name: Option<String>,
    /// Registry poll interval in milliseconds.
    #[arg(long, env = "STORE_NODE_REGISTRY_POLL_MS", default_value_t = 1000)]
    pub registry_poll_ms: u64,
    /// Largest request body in bytes.
    #[arg(long, env = "STORE_NODE_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Request time limit until the response head, in milliseconds.
    #[arg(long, env = "STORE_NODE_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Requests handled at once (more answer 503).
    #[arg(
        long,
        env = "STORE_NODE_MAX_CONCURRENT_REQUESTS",
        default_value_t = 1024
    )]
    pub max_concurrent_requests: usize,
    /// Open subscriptions at once (more answer 503).
    #[arg(long, env = "STORE_NODE_MAX_SUBSCRIPTIONS", default_value_t = 1024)]
    pub max_subscriptions: usize,
    /// Tenants with their own metric labels (the rest are `other`).
    #[arg(long, env = "STORE_NODE_MAX_TENANT_LABELS", default_value_t = 100)]
    pub max_tenant_labels: usize,
    /// Seconds to drain in-flight requests on shutdown.
    #[arg(long, env = "STORE_NODE_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    /// Largest event (payload + metadata) in bytes.
    #[arg(long, env = "STORE_NODE_MAX_EVENT_BYTES")]
    pub max_event_bytes: Option<usize>,
    /// Most events per append.
    #[arg(long, env = "STORE_NODE_MAX_BATCH_EVENTS")]
    pub max_batch_events: Option<usize>,
    /// Largest append in bytes.
    #[arg(long, env = "STORE_NODE_MAX_BATCH_BYTES")]
    pub max_batch_bytes: Option<usize>,
    /// Largest read page.
    #[arg(long, env = "STORE_NODE_MAX_READ_LIMIT")]
    pub max_read_limit: Option<usize>,
    /// Most bytes of events in one read page (default 16 MiB; one event is always returned).
    #[arg(long, env = "STORE_NODE_MAX_READ_BYTES")]
    pub max_read_bytes: Option<usize>,
    /// Most subscriptions one tenant holds open at once (default 32; more answer 429).
    #[arg(long, env = "STORE_NODE_MAX_SUBSCRIPTIONS_PER_TENANT")]
    pub max_subscriptions_per_tenant: Option<usize>,
    /// Most bytes of events one subscription holds queued for a slow client (default 1 MiB;
    /// a larger event still goes through, alone).
    #[arg(long, env = "STORE_NODE_MAX_SUBSCRIPTION_BUFFER_BYTES")]
    pub max_subscription_buffer_bytes: Option<usize>,
    /// Bytes of decoded row groups cached for cold reads (default 64 MiB; engine backend).
    #[arg(long, env = "STORE_NODE_CACHE_BYTES")]
    pub cache_bytes: Option<usize>,
    /// Serve the API over HTTPS with `tls.crt` and `tls.key` of this directory (the keys of a
    /// `kubernetes.io/tls` Secret). The files are checked every --tls-reload-interval-ms and a
    /// new valid pair is used for new connections; an invalid one is logged and the old kept.
    /// Unset: plain HTTP. The metrics listener always serves plain HTTP.
    #[arg(long, env = "ALLSOURCE_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Interval of the TLS files' check, in milliseconds.
    #[arg(
        long,
        env = "STORE_NODE_TLS_RELOAD_INTERVAL_MS",
        default_value_t = 5000
    )]
    pub tls_reload_interval_ms: u64,
}

impl HttpArgs {
    /// The server configuration these flags describe, with the TLS pair loaded (so a missing
    /// or bad file fails the start with its name).
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let mut cfg = ServerConfig {
            listen: self.listen,
            metrics_listen: Some(self.metrics_addr),
            max_connections: self.max_connections.max(1),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            node_name: self.node_name.clone().filter(|n| !n.is_empty()),
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            max_concurrent_requests: self.max_concurrent_requests,
            max_subscriptions: self.max_subscriptions,
            max_tenant_labels: self.max_tenant_labels,
            registry_poll: Duration::from_millis(self.registry_poll_ms.max(10)),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            ..ServerConfig::default()
        };
        if let Some(dir) = self.tls_dir.as_ref().filter(|d| !d.as_os_str().is_empty()) {
            let cert = ReloadingCert::load(dir).with_context(|| {
                format!(
                    "loading the API listener's TLS certificate from {} (--tls-dir / ALLSOURCE_TLS_DIR)",
                    dir.display()
                )
            })?;
            let st = cert.status();
            tracing::info!(dir = %dir.display(), serial = st.serial.as_deref().unwrap_or("?"), not_after = ?st.not_after, "TLS certificate loaded");
            cfg.tls = Some(cert);
            cfg.tls_reload_interval = Duration::from_millis(self.tls_reload_interval_ms.max(100));
        }
        Ok(cfg)
    }

    /// `base` (for `serve`: the defaults with the node configuration file applied) overridden by
    /// the flags that were given.
    pub fn limits_over(&self, base: Limits) -> Limits {
        Limits {
            max_event_bytes: self.max_event_bytes.unwrap_or(base.max_event_bytes),
            max_batch_events: self.max_batch_events.unwrap_or(base.max_batch_events),
            max_batch_bytes: self.max_batch_bytes.unwrap_or(base.max_batch_bytes),
            max_read_limit: self.max_read_limit.unwrap_or(base.max_read_limit),
            max_read_bytes: self.max_read_bytes.unwrap_or(base.max_read_bytes),
            max_subscriptions_per_tenant: self
                .max_subscriptions_per_tenant
                .unwrap_or(base.max_subscriptions_per_tenant),
            max_subscription_buffer_bytes: self
                .max_subscription_buffer_bytes
                .unwrap_or(base.max_subscription_buffer_bytes),
            cache_bytes: self.cache_bytes.unwrap_or(base.cache_bytes),
            ..base
        }
    }

    /// Loads the registry file (fails fast when missing or invalid).
    pub fn load_registry(&self) -> anyhow::Result<Arc<Registry>> {
        let r = Registry::load(&self.registry)
            .with_context(|| format!("loading tenant registry {}", self.registry.display()))?;
        Ok(Arc::new(r))
    }
}

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
                        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the node");
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        token.cancel();
    });
}
