//! `store-node archive`: one archival run (see `store_node::archive`) from a source store to an
//! S3 or GCS destination, printing the JSON report on stdout and, with `--report-file` (e.g. the
//! pod's `/dev/termination-log`), a compact summary for the operator. Exits non-zero when any
//! tenant failed. Sources: `engine:<data dir>` opens the embedded engine directly (the store node
//! must not be running on that directory) and `http(s)://<store node>` goes through the HTTP API
//! with each tenant's bearer token read from `--tokens-dir/<tenant>`. This module only wires flags
//! to the library; it must never contain archival logic.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use store_node::archive::archiver::parse_duration;
use store_node::archive::http_source::HttpSource;
use store_node::archive::objstore::{self, ConnectOptions, GcsAuth};
use store_node::archive::{self, ArchivePlan, ArchiveReport, Destination};
use store_node::engine::{Engine, EngineConfig};
use store_node::model::TenantId;

/// How to authenticate against GCS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GcsAuthKind {
    /// No credentials (fake-gcs-server).
    Anonymous,
    /// The GCE/GKE metadata server (Workload Identity).
    Metadata,
    /// A bearer token from `GCS_OAUTH_TOKEN`.
    Token,
}

/// Flags of `store-node archive`.
#[derive(Debug, Clone, Args)]
pub struct ArchiveArgs {
    /// Source store: `engine:<data dir>` or `http(s)://<store node address>`.
    #[arg(long, env = "ARCHIVE_SOURCE")]
    pub source: String,
    /// Tenants to archive (repeat the flag or separate with commas).
    #[arg(
        long = "tenant",
        env = "ARCHIVE_TENANTS",
        value_delimiter = ',',
        required = true
    )]
    pub tenants: Vec<String>,
    /// Destination: `s3://bucket/prefix` or `gs://bucket/prefix`.
    #[arg(long, env = "ARCHIVE_DESTINATION")]
    pub destination: String,
    /// Uid of the store (the EventStore's `metadata.uid`; the operator passes it). Manifests,
    /// files and the lease are keyed by it, so stores sharing a destination never touch each
    /// other's archive. 1 to 64 letters, digits, `-`, `_` or `.`.
    #[arg(long, env = "ARCHIVE_STORE_UID")]
    pub store_uid: String,
    /// An uncommitted data file of this store is deleted only when older than this.
    #[arg(long, env = "ARCHIVE_GC_GRACE", default_value = "24h")]
    pub gc_grace: String,
    /// How long the store's lease in the destination lasts unless renewed; a run that crashed
    /// holds it this long.
    #[arg(long, env = "ARCHIVE_LEASE_TTL", default_value = "5m")]
    pub lease_ttl: String,
    /// Events younger than this stay hot (e.g. 720h, 30d).
    #[arg(long, env = "ARCHIVE_HOT_RETENTION", default_value = "720h")]
    pub hot_retention: String,
    /// Object store endpoint override (S3-compatible server, fake-gcs-server).
    #[arg(long, env = "ARCHIVE_ENDPOINT")]
    pub endpoint: Option<String>,
    /// S3 region (default: the AWS chain, else us-east-1).
    #[arg(long, env = "ARCHIVE_REGION")]
    pub region: Option<String>,
    /// S3 path-style addressing.
    #[arg(long, env = "ARCHIVE_FORCE_PATH_STYLE")]
    pub force_path_style: bool,
    /// GCS authentication.
    #[arg(long, env = "ARCHIVE_GCS_AUTH", value_enum, default_value_t = GcsAuthKind::Metadata)]
    pub gcs_auth: GcsAuthKind,
    /// Directory with one file per tenant holding its bearer token (HTTP source).
    #[arg(long, env = "ARCHIVE_TOKENS_DIR")]
    pub tokens_dir: Option<PathBuf>,
    /// PEM CA certificate(s) an `https://` source is verified with, instead of the public roots
    /// (the `ca.crt` of the store's TLS Secret).
    #[arg(long, env = "ARCHIVE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Most rows per Parquet file.
    #[arg(long, env = "ARCHIVE_MAX_ROWS_PER_FILE", default_value_t = 50_000)]
    pub max_rows_per_file: usize,
    /// Most bytes of events per Parquet file (a file is buffered whole before upload, so this
    /// bounds the archiver's memory; an event larger than it gets a file of its own).
    #[arg(long, env = "ARCHIVE_MAX_BYTES_PER_FILE", default_value_t = 64 * 1024 * 1024)]
    pub max_bytes_per_file: u64,
    /// Most events per tenant in one run (default: no limit).
    #[arg(long, env = "ARCHIVE_MAX_EVENTS_PER_TENANT")]
    pub max_events_per_tenant: Option<u64>,
    /// Copy only: do not trim the store after commit.
    #[arg(long, env = "ARCHIVE_NO_TRIM")]
    pub no_trim: bool,
    /// Also write a compact summary here (e.g. /dev/termination-log).
    #[arg(long, env = "ARCHIVE_REPORT_FILE")]
    pub report_file: Option<PathBuf>,
}

fn read_tokens(
    dir: &std::path::Path,
    tenants: &[TenantId],
) -> anyhow::Result<HashMap<TenantId, String>> {
    let mut out = HashMap::new();
    for t in tenants {
        let path = dir.join(t.as_str());
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("token of tenant {t} ({})", path.display()))?;
        out.insert(t.clone(), token.trim().to_string());
    }
    Ok(out)
}

/// The summary written to `--report-file` (kept under the 4 KiB termination-message limit).
fn summary(report: &ArchiveReport) -> String {
    let mut tenants: Vec<serde_json::Value> = report
        .tenants
        .iter()
        .map(|t| {
            let mut err = t.error.clone().unwrap_or_default();
            err.truncate(200);
            serde_json::json!({
                "tenant": t.tenant,
                "watermark": t.watermark,
                "events": t.files.iter().map(|f| f.rows).sum::<u64>(),
                "error": err,
            })
        })
        .collect();
    loop {
        let v = serde_json::json!({
            "runId": report.run_id,
            "eventsArchived": report.events_archived,
            "bytesArchived": report.bytes_archived,
            "ok": report.ok(),
            "tenants": tenants,
        });
        let s = v.to_string();
        if s.len() < 4000 || tenants.is_empty() {
            return s;
        }
        tenants.pop();
    }
}

/// Runs `store-node archive`.
pub async fn run(args: ArchiveArgs) -> anyhow::Result<()> {
    let report_file = args.report_file.clone();
    let mut reported = false;
    let result = archive_and_report(args, &mut reported).await;
    if let (Err(e), Some(path), false) = (&result, &report_file, reported) {
        // Failed before any report (bad flags, unreachable bucket or store, missing token): the
        // operator still gets the reason, as plain text, in the termination message.
        if let Err(w) = std::fs::write(path, failure_message(e)) {
            tracing::warn!(error = %w, path = %path.display(), "could not write the failure report");
        }
    }
    result
}

/// Plain-text failure summary for `--report-file`, under the 4 KiB termination-message limit.
fn failure_message(e: &anyhow::Error) -> String {
    let mut m = format!("archival failed: {e:#}");
    if m.len() > 3000 {
        let mut cut = 3000;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
    }
    m
}

async fn archive_and_report(args: ArchiveArgs, reported: &mut bool) -> anyhow::Result<()> {
    let dest = Destination::parse(&args.destination)?;
    let tenants = args
        .tenants
        .iter()
        .map(|t| TenantId::new(t.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut plan = ArchivePlan::new(
        &args.store_uid,
        tenants.clone(),
        parse_duration(&args.hot_retention)?,
    )
    .with_fault_from_env()?;
    plan.gc_grace = parse_duration(&args.gc_grace).context("--gc-grace")?;
    plan.lease_ttl = parse_duration(&args.lease_ttl).context("--lease-ttl")?;
    if plan.lease_ttl.is_zero() {
        bail!("--lease-ttl must be longer than 0s");
    }
    plan.file_bounds = store_node::archive::format::FileBounds {
        max_rows: args.max_rows_per_file,
        max_bytes: args.max_bytes_per_file,
    };
    plan.max_events_per_tenant = args.max_events_per_tenant;
    plan.trim = !args.no_trim;
    let opts = ConnectOptions {
        endpoint: args.endpoint.clone(),
        region: args.region.clone(),
        force_path_style: args.force_path_style,
        s3_static_credentials: None,
        gcs_auth: match args.gcs_auth {
            GcsAuthKind::Anonymous => GcsAuth::Anonymous,
            GcsAuthKind::Metadata => GcsAuth::MetadataServer,
            GcsAuthKind::Token => GcsAuth::Token(
                std::env::var("GCS_OAUTH_TOKEN").context("GCS_OAUTH_TOKEN is not set")?,
            ),
        },
    };
    let objects = objstore::connect(&dest, &opts).await?;

    let report = if let Some(dir) = args.source.strip_prefix("engine:") {
        let cfg = EngineConfig::new(dir);
        let engine = tokio::task::spawn_blocking(move || Engine::open(cfg))
            .await
            .context("engine open task")?
            .with_context(|| format!("opening the engine in {dir}"))?;
        let engine = Arc::new(engine);
        let result = archive::run(engine.as_ref(), objects.as_ref(), &dest, &plan).await;
        let e = engine.clone();
        tokio::task::spawn_blocking(move || e.close())
            .await
            .context("engine close task")?
            .context("closing the engine")?;
        result?
    } else if args.source.starts_with("http://") || args.source.starts_with("https://") {
        let Some(dir) = &args.tokens_dir else {
            bail!("an HTTP source needs --tokens-dir with one token file per tenant");
        };
        let ca = match &args.ca_file {
            Some(p) => Some(
                std::fs::read(p).with_context(|| format!("reading --ca-file {}", p.display()))?,
            ),
            None => None,
        };
        let source = HttpSource::with_ca(&args.source, read_tokens(dir, &tenants)?, ca.as_deref())
            .with_context(|| format!("--ca-file {:?}", args.ca_file))?;
        archive::run(&source, objects.as_ref(), &dest, &plan).await?
    } else {
        bail!("--source must be engine:<data dir> or http(s)://<store node>");
    };

    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &args.report_file {
        std::fs::write(path, summary(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        *reported = true;
    }
    if !report.ok() {
        bail!("archival failed for some tenants (see the report)");
    }
    Ok(())
}
