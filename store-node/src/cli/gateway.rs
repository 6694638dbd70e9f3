//! `store-node gateway`: serves the same HTTP API as `serve` (same router, tenant registry,
//! bearer tokens, quotas and metrics) over a cloud backend (PostgreSQL, DynamoDB, Firestore)
//! instead of the embedded engine. The gateway is stateless: any number of replicas can run in
//! front of one database. Tenant
//! isolation is the server's (the tenant comes from the token) plus the backend's (every key or
//! row is prefixed by the tenant). A siloed tenant (registry entry with a `location`) is served
//! from its own schema, table or Firestore database through [`RoutingStore`]; the rest share the
//! flags' schema, table or database. A siloed Firestore database is opened with the flags'
//! project, endpoint and credentials. This module only turns flags into a backend; it must never
//! hold event data itself.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use store_node::backend::routing::{Opener, RoutingStore};
use store_node::backend::EventStore;
use store_node::error::StoreError;
use store_node::server;
use store_node::tenant::{Location, Registry};
use tokio_util::sync::CancellationToken;

use super::common::{cancel_on_signal, HttpArgs};

/// Which cloud backend the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GatewayBackend {
    /// PostgreSQL (`--pg-url`, `--pg-schema`).
    Postgres,
    /// DynamoDB (`--dynamodb-table`, `--dynamodb-region`, optional endpoint and keys).
    Dynamodb,
    /// Firestore (`--firestore-project`, optional database; credentials from a key file,
    /// workload identity, the emulator or a bearer token).
    Firestore,
}

/// Flags of `store-node gateway`.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// HTTP flags.
    #[command(flatten)]
    pub http: HttpArgs,
    /// Backend to serve.
    #[arg(long, env = "STORE_NODE_GATEWAY_BACKEND", value_enum)]
    pub backend: GatewayBackend,
    /// Create missing tables/schemas at start (otherwise the operator provisions them).
    #[arg(long, env = "STORE_NODE_GATEWAY_INIT", default_value_t = false)]
    pub init: bool,
    /// Subscription poll interval in milliseconds.
    #[arg(long, env = "STORE_NODE_GATEWAY_POLL_MS", default_value_t = 100)]
    pub poll_ms: u64,
    /// PostgreSQL connection URL.
    #[arg(long, env = "STORE_NODE_PG_URL")]
    pub pg_url: Option<String>,
    /// PostgreSQL schema of the pooled tenants.
    #[arg(long, env = "STORE_NODE_PG_SCHEMA", default_value = "allsource")]
    pub pg_schema: String,
    /// PostgreSQL pool size.
    #[arg(long, env = "STORE_NODE_PG_POOL_SIZE", default_value_t = 16)]
    pub pg_pool_size: usize,
    /// PostgreSQL TLS, libpq's `sslmode`: disable, prefer, require, verify-ca, verify-full
    /// (overrides an `sslmode` in the URL).
    #[arg(long, env = "STORE_NODE_PG_SSLMODE", default_value = "prefer")]
    pub pg_sslmode: store_node::backend::postgres::tls::SslMode,
    /// PEM CA bundle (the content, not a path) that verify-ca / verify-full check the server's
    /// certificate against; the built-in Mozilla roots when unset.
    #[arg(long, env = "STORE_NODE_PG_CA_CERT", hide_env_values = true)]
    pub pg_ca_cert: Option<String>,
    /// PEM client certificate (the content) presented to PostgreSQL, with --pg-client-key.
    #[arg(long, env = "STORE_NODE_PG_CLIENT_CERT", hide_env_values = true)]
    pub pg_client_cert: Option<String>,
    /// PEM private key (the content) of --pg-client-cert; never logged.
    #[arg(long, env = "STORE_NODE_PG_CLIENT_KEY", hide_env_values = true)]
    pub pg_client_key: Option<String>,
    /// DynamoDB table.
    #[arg(long, env = "STORE_NODE_DYNAMODB_TABLE", default_value = "allsource")]
    pub dynamodb_table: String,
    /// DynamoDB region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub dynamodb_region: String,
    /// DynamoDB endpoint override (e.g. DynamoDB Local).
    #[arg(long, env = "STORE_NODE_DYNAMODB_ENDPOINT")]
    pub dynamodb_endpoint: Option<String>,
    /// Static access key id (otherwise the default AWS credential chain).
    #[arg(long, env = "STORE_NODE_DYNAMODB_ACCESS_KEY_ID")]
    pub dynamodb_access_key_id: Option<String>,
    /// Static secret access key.
    #[arg(
        long,
        env = "STORE_NODE_DYNAMODB_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub dynamodb_secret_access_key: Option<String>,
    /// Firestore project id.
    #[arg(long, env = "STORE_NODE_FIRESTORE_PROJECT")]
    pub firestore_project: Option<String>,
    /// Firestore database id.
    #[arg(
        long,
        env = "STORE_NODE_FIRESTORE_DATABASE",
        default_value = "(default)"
    )]
    pub firestore_database: String,
    /// Firestore REST base URL (default `https://firestore.googleapis.com`; e.g. a regional or
    /// private endpoint). Ignored with `--firestore-emulator-host`.
    #[arg(long, env = "STORE_NODE_FIRESTORE_ENDPOINT")]
    pub firestore_endpoint: Option<String>,
    /// Firestore emulator `host:port`; when set, calls go there over plain HTTP with the
    /// emulator's `owner` token (unless credentials or `--firestore-token` are given).
    #[arg(long, env = "FIRESTORE_EMULATOR_HOST")]
    pub firestore_emulator_host: Option<String>,
    /// Real Firestore with a service account: path of its `key.json`. The gateway signs its own
    /// OAuth access tokens (scope datastore), cached and refreshed before they expire.
    #[arg(
        long,
        env = "STORE_NODE_FIRESTORE_CREDENTIALS_FILE",
        conflicts_with_all = ["firestore_workload_identity", "firestore_token"]
    )]
    pub firestore_credentials_file: Option<std::path::PathBuf>,
    /// Real Firestore with the node's identity (GKE workload identity): access tokens from the
    /// metadata server, cached and refreshed before they expire.
    #[arg(
        long,
        env = "STORE_NODE_FIRESTORE_WORKLOAD_IDENTITY",
        default_value_t = false,
        conflicts_with = "firestore_token"
    )]
    pub firestore_workload_identity: bool,
    /// Fixed bearer token for Firestore (refreshed by whoever starts the gateway; prefer
    /// `--firestore-credentials-file` or `--firestore-workload-identity`).
    #[arg(long, env = "STORE_NODE_FIRESTORE_TOKEN", hide_env_values = true)]
    pub firestore_token: Option<String>,
}

/// Builds the backend the flags describe, routing siloed tenants (registry `location`) to their
/// own schema (PostgreSQL), table (DynamoDB) or database (Firestore).
pub async fn open_routed(
    args: &GatewayArgs,
    registry: Arc<Registry>,
) -> anyhow::Result<Arc<dyn EventStore>> {
    let poll = Duration::from_millis(args.poll_ms.max(10));
    let (pooled, open): (Arc<dyn EventStore>, Opener) = match args.backend {
        GatewayBackend::Postgres => {
            let base = postgres_store(args, poll)?;
            if args.init {
                base.init_schema().await.context("creating the schema")?;
            }
            let pooled = Arc::new(base.clone());
            let open: Opener = Arc::new(move |loc: &Location| match loc {
                Location::Schema(s) => Ok(Arc::new(base.with_schema(s)?) as Arc<dyn EventStore>),
                _ => Err(unroutable(loc, "postgres")),
            });
            (pooled, open)
        }
        GatewayBackend::Dynamodb => {
            let base = dynamodb_store(args, poll).await?;
            let pooled = Arc::new(base.clone());
            let open: Opener = Arc::new(move |loc: &Location| match loc {
                Location::Table(t) => Ok(Arc::new(base.with_table(t)) as Arc<dyn EventStore>),
                _ => Err(unroutable(loc, "dynamodb")),
            });
            (pooled, open)
        }
        GatewayBackend::Firestore => {
            let base = firestore_store(args, poll).await?;
            let pooled = Arc::new(base.clone());
            let open: Opener = Arc::new(move |loc: &Location| match loc {
                Location::Database(d) => {
                    Ok(Arc::new(base.with_database(d)?) as Arc<dyn EventStore>)
                }
                _ => Err(unroutable(loc, "firestore")),
            });
            (pooled, open)
        }
    };
    Ok(Arc::new(RoutingStore::new(pooled, registry, open)))
}

fn unroutable(loc: &Location, backend: &str) -> StoreError {
    StoreError::Internal(format!(
        "the registry places this tenant in {loc:?}, which a {backend} gateway cannot serve"
    ))
}

fn postgres_store(
    args: &GatewayArgs,
    poll: Duration,
) -> anyhow::Result<store_node::backend::postgres::PostgresStore> {
    use store_node::backend::postgres::{PostgresConfig, PostgresStore};
    let url = args
        .pg_url
        .clone()
        .context("--pg-url is required for --backend postgres")?;
    let mut cfg = PostgresConfig::new(url, args.pg_schema.clone());
    cfg.pool_size = args.pg_pool_size;
    cfg.poll_interval = poll;
    cfg.ssl_mode = args.pg_sslmode;
    cfg.ca_pem = args.pg_ca_cert.clone().filter(|p| !p.trim().is_empty());
    cfg.client_cert_pem = args.pg_client_cert.clone().filter(|p| !p.trim().is_empty());
    cfg.client_key_pem = args.pg_client_key.clone().filter(|p| !p.trim().is_empty());
    Ok(PostgresStore::connect(cfg)?)
}

async fn dynamodb_store(
    args: &GatewayArgs,
    poll: Duration,
) -> anyhow::Result<store_node::backend::dynamodb::DynamoStore> {
    use store_node::backend::dynamodb::{DynamoConfig, DynamoStore, StaticCredentials};
    let mut cfg = DynamoConfig::new(args.dynamodb_table.clone(), args.dynamodb_region.clone());
    cfg.endpoint = args.dynamodb_endpoint.clone();
    cfg.poll_interval = poll;
    if let (Some(k), Some(s)) = (
        &args.dynamodb_access_key_id,
        &args.dynamodb_secret_access_key,
    ) {
        cfg.credentials = Some(StaticCredentials {
            access_key_id: k.clone(),
            secret_access_key: s.clone(),
        });
    }
    let store = DynamoStore::connect(cfg).await?;
    if args.init {
        store.ensure_table().await.context("creating the table")?;
    }
    Ok(store)
}

/// The Firestore store of the flags' project, database, endpoint and credentials (`--init`:
/// its indexes and TTL policies are requested first).
async fn firestore_store(
    args: &GatewayArgs,
    poll: Duration,
) -> anyhow::Result<store_node::backend::firestore::FirestoreStore> {
    use store_node::backend::firestore::{FirestoreConfig, FirestoreStore};
    let project = args
        .firestore_project
        .clone()
        .context("--firestore-project is required for --backend firestore")?;
    let mut cfg = FirestoreConfig::new(project, firestore_credentials(args)?);
    if let Some(host) = &args.firestore_emulator_host {
        cfg.endpoint = format!("http://{host}");
    } else if let Some(ep) = &args.firestore_endpoint {
        cfg.endpoint = ep.trim_end_matches('/').to_string();
    }
    cfg.database = args.firestore_database.clone();
    cfg.poll_interval = poll;
    let store = FirestoreStore::connect(cfg)?;
    if args.init {
        let outcomes = store
            .ensure_indexes()
            .await
            .context("creating the indexes and TTL policies")?;
        for o in outcomes {
            tracing::info!(outcome = ?o, "firestore admin request");
        }
    }
    Ok(store)
}

/// The Firestore credentials the flags name: a key file, workload identity, a fixed token, or
/// the emulator's token when only `--firestore-emulator-host` is given.
fn firestore_credentials(
    args: &GatewayArgs,
) -> anyhow::Result<store_node::backend::firestore::Credentials> {
    use store_node::backend::firestore::{auth, Credentials};
    Ok(if let Some(path) = &args.firestore_credentials_file {
        auth::key_from_file(path)?
    } else if args.firestore_workload_identity {
        Credentials::WorkloadIdentity
    } else if let Some(t) = &args.firestore_token {
        Credentials::Static(t.clone())
    } else if args.firestore_emulator_host.is_some() {
        Credentials::Emulator
    } else {
        anyhow::bail!(
            "real Firestore needs --firestore-credentials-file, --firestore-workload-identity \
             or --firestore-token (or --firestore-emulator-host for the emulator)"
        )
    })
}

/// Runs the gateway until SIGTERM/SIGINT.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let registry = args.http.load_registry()?;
    let config = args.http.server_config()?;
    let store = open_routed(&args, registry.clone()).await?;
    tracing::info!(backend = ?args.backend, "gateway backend ready");
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    server::serve(store, registry, config, shutdown)
        .await
        .map_err(Into::into)
}
