//! allsource-operator: reconciles EventStore, Tenant and ArchivePolicy resources (`run`) and
//! generates the CRD and RBAC files from the Rust types (`crdgen`). Parsing and dispatch only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "allsource-operator",
    version,
    about = "Kubernetes operator for AllSource event stores"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the CRDs and RBAC rules generated from the Rust types (or check them with --check).
    Crdgen {
        /// Repository root to write under.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// Do not write; exit non-zero when a committed file differs from the generated one.
        #[arg(long)]
        check: bool,
    },
    /// Run the controllers.
    Run(RunArgs),
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Namespaces to watch, comma separated; all namespaces when empty.
    #[arg(long, env = "ALLSOURCE_NAMESPACES", default_value = "")]
    namespaces: String,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "ALLSOURCE_HTTP_ADDR", default_value = "0.0.0.0:8081")]
    http_addr: SocketAddr,
    /// Elect a leader through a Lease so that only one replica reconciles.
    #[arg(long, env = "ALLSOURCE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "allsource-operator-leader")]
    lease_name: String,
    /// Identity in the Lease; the pod name in a cluster, else host name and process id.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 30)]
    lease_duration_seconds: u64,
    /// Seconds between drift checks of a healthy cloud EventStore's table or schema (reads only).
    #[arg(long, env = "ALLSOURCE_DRIFT_INTERVAL_SECONDS", default_value_t = 60)]
    drift_interval_seconds: u64,
    /// Image repositories store nodes, gateways and archivers may run, comma separated (an
    /// entry ending in `/` allows everything below it); any image when empty.
    #[arg(long, env = "ALLSOURCE_ALLOWED_IMAGES", default_value = "")]
    allowed_images: String,
}

fn main() -> ExitCode {
    // Feature unification across the workspace can enable two rustls crypto backends (ring and
    // aws-lc-rs); rustls then refuses to pick one, so choose ring explicitly before any client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { root, check } => crdgen(&root, check),
        Command::Run(args) => run(args),
        Command::Version => {
            println!("allsource-operator {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

fn crdgen(root: &std::path::Path, check: bool) -> ExitCode {
    use allsource_operator::crdgen;
    if check {
        match crdgen::check(root) {
            Ok(drift) if drift.is_empty() => {
                println!("generated files are up to date");
                ExitCode::SUCCESS
            }
            Ok(drift) => {
                for d in &drift {
                    eprintln!("{}: {}", d.path.display(), d.summary);
                }
                eprintln!(
                    "{} generated file(s) differ; run `cargo run -p allsource-operator -- crdgen` and commit",
                    drift.len()
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("crdgen --check: {e}");
                ExitCode::from(2)
            }
        }
    } else {
        match crdgen::write(root) {
            Ok(files) => {
                for f in files {
                    println!("wrote {}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("crdgen: {e}");
                ExitCode::from(2)
            }
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    allsource_operator::telemetry::init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run_async(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    use allsource_operator::{controllers, http, leader, telemetry};
    let metrics = telemetry::Metrics::new()?;
    let ready = Arc::new(AtomicBool::new(false));
    let state = http::HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let addr = args.http_addr;
    tokio::spawn(async move {
        if let Err(e) = http::serve(addr, state).await {
            tracing::error!(error = %e, "http endpoint failed");
        }
    });
    let client = kube::Client::try_default().await?;
    let version = client.apiserver_version().await?;
    tracing::info!(apiserver = %version.git_version, namespaces = %args.namespaces, "connected");
    let identity = args.identity.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".to_string()),
            std::process::id()
        )
    });
    let scope = controllers::Scope::parse(&args.namespaces);
    let ctx = Arc::new(
        controllers::Context::new(
            client.clone(),
            metrics.clone(),
            scope,
            Some(identity.clone()),
        )
        .with_drift_interval(Duration::from_secs(args.drift_interval_seconds))
        .with_allowed_images(controllers::images::parse(&args.allowed_images)),
    );
    // A standby replica is healthy and ready: it serves metrics and waits for the Lease.
    ready.store(true, Ordering::Relaxed);
    if !args.leader_elect {
        controllers::run(ctx).await;
        return Ok(());
    }
    let cfg = leader::LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity,
        lease_duration: Duration::from_secs(args.lease_duration_seconds),
        renew_every: Duration::from_secs((args.lease_duration_seconds / 3).max(1)),
    };
    leader::acquire(client.clone(), &cfg).await?;
    metrics.set_leader(true);
    tokio::select! {
        _ = controllers::run(ctx) => Ok(()),
        lost = leader::hold(client, &cfg) => {
            metrics.set_leader(false);
            Err(Box::new(lost))
        }
    }
}
