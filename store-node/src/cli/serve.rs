//! `store-node serve`: open the store in a data directory, serve the HTTP API, and on
//! SIGTERM/SIGINT stop accepting, drain, then flush and close the store so a restart recovers
//! every acknowledged event. The listener is bound before the store opens, so `/healthz`
//! answers during recovery while `/readyz` and `/v1/` answer 503 until it is done.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use store_node::backend::memory::MemoryStore;
use store_node::backend::EventStore;
use store_node::metrics::Metrics;
use store_node::server::{self, AppState};
use tokio_util::sync::CancellationToken;

use super::common::{cancel_on_signal, HttpArgs};

/// Which store `serve` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// In-memory, nothing persisted (development and tests only).
    Memory,
}

/// Flags of `store-node serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// HTTP flags.
    #[command(flatten)]
    pub http: HttpArgs,
    /// Data directory (WAL, segments, manifest).
    #[arg(long, env = "STORE_NODE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Store implementation.
    #[arg(long, env = "STORE_NODE_BACKEND", value_enum, default_value_t = BackendKind::Memory)]
    pub backend: BackendKind,
}

/// The opened store, kept concrete so it can be closed cleanly.
enum Opened {
    Memory(Arc<MemoryStore>),
}

impl Opened {
    fn as_dyn(&self) -> Arc<dyn EventStore> {
        match self {
            Self::Memory(m) => m.clone(),
        }
    }

    async fn close(self) -> anyhow::Result<()> {
        match self {
            Self::Memory(_) => Ok(()),
        }
    }
}

async fn open(args: &ServeArgs, _metrics: &Metrics) -> anyhow::Result<Opened> {
    match args.backend {
        BackendKind::Memory => {
            tracing::warn!("serving the in-memory store: nothing is persisted");
            Ok(Opened::Memory(Arc::new(MemoryStore::new(
                args.http.limits(),
            ))))
        }
    }
}

/// Runs `serve` until a signal, then closes the store.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let registry = args.http.load_registry()?;
    let config = args.http.server_config();
    let metrics = Arc::new(Metrics::new(config.max_tenant_labels)?);
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let listener = server::bind(config.listen).await?;
    let state = AppState::new(registry, config, metrics.clone(), shutdown.clone());
    let opener = {
        let (state, shutdown, args) = (state.clone(), shutdown.clone(), args.clone());
        tokio::spawn(async move {
            match open(&args, &metrics).await {
                Ok(opened) => {
                    state.set_store(opened.as_dyn());
                    tracing::info!(data_dir = %args.data_dir.display(), "store open; ready");
                    Ok(opened)
                }
                Err(e) => {
                    shutdown.cancel();
                    Err(e)
                }
            }
        })
    };
    let served = server::run(state, listener).await;
    let opened = opener.await.context("store open task")??;
    tracing::info!("HTTP server stopped; closing the store");
    opened.close().await?;
    tracing::info!("store closed");
    served.map_err(Into::into)
}
