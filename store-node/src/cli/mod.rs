//! The store-node command line: one clap subcommand per module of this directory. Flags can also
//! come from environment variables (shown in `--help`), which is how the operator configures a
//! pod. This module only parses, sets up logging and the runtime, and dispatches; each
//! subcommand owns its behaviour. To add a subcommand: a module here, one variant in
//! [`Command`] and one arm in [`dispatch`].

#[cfg(feature = "archive")]
pub mod archive;
pub mod common;
pub mod gateway;
pub mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// AllSource store node.
#[derive(Debug, Parser)]
#[command(name = "store-node", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "STORE_NODE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
    /// Subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API over the embedded engine (WAL + Parquet) in a data directory.
    Serve(serve::ServeArgs),
    /// Serve the HTTP API over a cloud backend (PostgreSQL, DynamoDB, Firestore) as a stateless gateway.
    Gateway(Box<gateway::GatewayArgs>),
    /// Archive cold events of tenants to S3 or GCS as Parquet, verify, then trim the store.
    #[cfg(feature = "archive")]
    Archive(archive::ArchiveArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = res {
        eprintln!("logging setup failed: {e}");
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve::run(args).await,
        Command::Gateway(args) => gateway::run(*args).await,
        #[cfg(feature = "archive")]
        Command::Archive(args) => archive::run(args).await,
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "store-node failed");
            ExitCode::FAILURE
        }
    }
}
