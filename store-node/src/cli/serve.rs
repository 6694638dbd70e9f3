//! `store-node serve`: open the store in a data directory, serve the HTTP API, and on
//! SIGTERM/SIGINT stop accepting, drain, then flush and close the store so a restart recovers
//! every acknowledged event. The listener is bound before the store opens, so `/healthz`
//! answers during recovery while `/readyz` and `/v1/` answer 503 until it is done.
//!
//! Durability and input limits come from, in increasing precedence: the built-in defaults, the
//! node configuration file (`--node-config`, env `STORE_NODE_CONFIG`: the `node.json` the
//! operator writes, see [`store_node::nodeconfig`]), then explicit flags or their `STORE_NODE_*`
//! environment variables. A file that is missing, malformed or has an unknown field stops the
//! node at start.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use store_node::backend::memory::MemoryStore;
use store_node::backend::EventStore;
use store_node::engine::{Engine, EngineConfig};
use store_node::metrics::Metrics;
use store_node::model::Limits;
use store_node::nodeconfig::{NodeConfig, NodeDurability, NODE_CONFIG_ENV};
use store_node::server::health::DiskReserve;
use store_node::server::{self, AppState, ServerConfig};
use store_node::wal::{CorruptionPolicy, Durability};
use tokio_util::sync::CancellationToken;

use super::common::{cancel_on_signal, HttpArgs};

/// Which store `serve` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The embedded engine: WAL + Parquet segments in `--data-dir`.
    Engine,
    /// In-memory, nothing persisted (development and tests only).
    Memory,
}

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityKind {
    /// fsync the WAL before acknowledging.
    Fsync,
    /// fdatasync the WAL before acknowledging.
    Fdatasync,
    /// Acknowledge after write(2); fsync every `--fsync-interval-ms`.
    Periodic,
    /// Acknowledge after write(2); the OS syncs when it likes.
    None,
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
    #[arg(long, env = "STORE_NODE_BACKEND", value_enum, default_value_t = BackendKind::Engine)]
    pub backend: BackendKind,
    /// When appends are acknowledged (default: the node configuration file's, else fsync).
    #[arg(long, env = "STORE_NODE_DURABILITY", value_enum)]
    pub durability: Option<DurabilityKind>,
    /// fsync interval of `--durability periodic`, in milliseconds.
    #[arg(long, env = "STORE_NODE_FSYNC_INTERVAL_MS", default_value_t = 10)]
    pub fsync_interval_ms: u64,
    /// Free bytes kept on the data volume: below them (or below --disk-reserve-percent, the
    /// larger), appends and snapshots answer 507 until space is back (engine backend only).
    #[arg(long, env = "STORE_NODE_DISK_RESERVE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub disk_reserve_bytes: u64,
    /// Free share of the data volume kept, in percent (see --disk-reserve-bytes). 0 by default:
    /// a node whose data directory is on a shared disk must not claim a share of space it does
    /// not own; the operator sets 1 because a store node's volume claim is its own.
    #[arg(long, env = "STORE_NODE_DISK_RESERVE_PERCENT", default_value_t = 0.0)]
    pub disk_reserve_percent: f64,
    /// What start-up does when the WAL is damaged in a way a crash cannot explain: `refuse`
    /// (do not start, say where) or `set-aside` (keep `<file>.corrupt`, serve what precedes).
    #[arg(long, env = "STORE_NODE_WAL_ON_CORRUPTION", value_enum, default_value_t = CorruptionKind::Refuse)]
    pub wal_on_corruption: CorruptionKind,
    /// How often the background flusher checks whether a checkpoint (or a compaction) is due,
    /// in milliseconds (engine backend only).
    #[arg(long, env = "STORE_NODE_CHECKPOINT_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_interval_ms: u64,
    /// WAL bytes written since the last checkpoint that make the next one due (engine backend
    /// only): Parquet segments, manifest, WAL trim.
    #[arg(long, env = "STORE_NODE_CHECKPOINT_WAL_BYTES", default_value_t = 256 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_wal_bytes: u64,
    /// Node configuration file (JSON, the operator's `node.json`): durability and limits. Flags
    /// given explicitly override its values.
    #[arg(long, env = NODE_CONFIG_ENV)]
    pub node_config: Option<PathBuf>,
}

/// `--wal-on-corruption` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CorruptionKind {
    /// Refuse to start.
    Refuse,
    /// Keep a copy of the damaged file and serve the records before the damage.
    SetAside,
}

impl ServeArgs {
    /// Reads the node configuration file, if one is named (an empty configuration otherwise).
    pub fn load_node_config(&self) -> anyhow::Result<NodeConfig> {
        let Some(path) = &self.node_config else {
            return Ok(NodeConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the node configuration {}", path.display()))?;
        let cfg = NodeConfig::parse(&text)
            .with_context(|| format!("node configuration {}", path.display()))?;
        tracing::info!(path = %path.display(), config = ?cfg, "node configuration loaded");
        Ok(cfg)
    }

    /// The store limits: defaults, then the file's, then the flags'.
    pub fn limits(&self, file: &NodeConfig) -> anyhow::Result<Limits> {
        let base = file.limits.apply(Limits::default())?;
        Ok(self.http.limits_over(base))
    }

    /// The engine configuration these flags and the node configuration file describe.
    pub fn engine_config(&self, file: &NodeConfig) -> anyhow::Result<EngineConfig> {
        let mut cfg = EngineConfig::new(&self.data_dir);
        let kind = self.durability.unwrap_or(match file.durability {
            None | Some(NodeDurability::Fsync) => DurabilityKind::Fsync,
            Some(NodeDurability::Fdatasync) => DurabilityKind::Fdatasync,
            Some(NodeDurability::Interval) => DurabilityKind::Periodic,
            Some(NodeDurability::None) => DurabilityKind::None,
        });
        cfg.durability = match kind {
            DurabilityKind::Fsync => Durability::Fsync,
            DurabilityKind::Fdatasync => Durability::Fdatasync,
            DurabilityKind::Periodic => Durability::Periodic {
                interval_ms: self.fsync_interval_ms.max(1),
            },
            DurabilityKind::None => Durability::None,
        };
        cfg.limits = self.limits(file)?;
        cfg.checkpoint_interval_ms = self.checkpoint_interval_ms;
        cfg.checkpoint_wal_bytes = self.checkpoint_wal_bytes;
        cfg.wal_on_corruption = match self.wal_on_corruption {
            CorruptionKind::Refuse => CorruptionPolicy::Refuse,
            CorruptionKind::SetAside => CorruptionPolicy::SetAside,
        };
        Ok(cfg)
    }

    /// The server configuration: the HTTP flags, the data volume's reserve and the TLS pair
    /// (loaded here, so a missing or bad file fails the start with its name).
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let mut cfg = self.http.server_config()?;
        if self.backend == BackendKind::Engine {
            cfg.disk_reserve = Some(DiskReserve {
                path: self.data_dir.clone(),
                min_free_bytes: self.disk_reserve_bytes,
                min_free_percent: self.disk_reserve_percent,
            });
        }
        Ok(cfg)
    }
}

/// The opened store, kept concrete so it can be closed cleanly.
enum Opened {
    Engine(Arc<Engine>),
    Memory(Arc<MemoryStore>),
}

impl Opened {
    fn as_dyn(&self) -> Arc<dyn EventStore> {
        match self {
            Self::Engine(e) => e.clone(),
            Self::Memory(m) => m.clone(),
        }
    }

    async fn close(self) -> anyhow::Result<()> {
        match self {
            Self::Engine(e) => tokio::task::spawn_blocking(move || e.close())
                .await
                .context("engine close task")?
                .context("closing the engine"),
            Self::Memory(_) => Ok(()),
        }
    }
}

async fn open(args: &ServeArgs, file: &NodeConfig, metrics: &Metrics) -> anyhow::Result<Opened> {
    match args.backend {
        BackendKind::Engine => {
            let cfg = args.engine_config(file)?;
            tracing::info!(data_dir = %cfg.data_dir.display(), durability = ?cfg.durability, limits = ?cfg.limits, "opening the engine (recovery)");
            let engine = tokio::task::spawn_blocking(move || Engine::open(cfg))
                .await
                .context("engine open task")?
                .with_context(|| format!("opening the engine in {}", args.data_dir.display()))?;
            let engine = Arc::new(engine);
            let e = engine.clone();
            metrics.register_gauge_fn(
                "allsource_wal_bytes_written",
                "Bytes written to the WAL since the engine opened",
                move || e.wal_bytes_written() as f64,
            )?;
            Ok(Opened::Engine(engine))
        }
        BackendKind::Memory => {
            tracing::warn!("serving the in-memory store: nothing is persisted");
            Ok(Opened::Memory(Arc::new(MemoryStore::new(
                args.limits(file)?,
            ))))
        }
    }
}

/// Runs `serve` until a signal, then closes the store.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Read and check the node configuration before binding, so a bad file fails the start.
    let file = args.load_node_config()?;
    args.engine_config(&file)?;
    let registry = args.http.load_registry()?;
    let config = args.server_config()?;
    let metrics = Arc::new(Metrics::new(config.max_tenant_labels)?);
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    if args.backend == BackendKind::Engine {
        // The reserve's statvfs needs the data directory before the engine creates it.
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating {}", args.data_dir.display()))?;
    }
    let listeners = server::bind_all(&config).await?;
    let state = AppState::new(registry, config, metrics.clone(), shutdown.clone());
    let opener = {
        let (state, shutdown, args) = (state.clone(), shutdown.clone(), args.clone());
        tokio::spawn(async move {
            match open(&args, &file, &metrics).await {
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
    let served = server::run(state, listeners).await;
    let opened = opener.await.context("store open task")??;
    tracing::info!("HTTP server stopped; closing the store");
    opened.close().await?;
    tracing::info!("store closed");
    served.map_err(Into::into)
}
