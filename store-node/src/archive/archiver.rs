//! The archiver: moves a tenant's events older than the hot window from an event store to
//! Parquet files in a bucket, verifies them, commits them in the tenant manifest and only then
//! trims them from the store.
//!
//! Per tenant the steps are: load the committed manifest (watermark W); trim the store below W
//! (finishes a run that crashed after its commit); delete data files under the tenant's directory
//! that no committed manifest lists (garbage of a crashed run); read events from W in position
//! order up to the first one newer than `now - hot_retention`; write them as files named by
//! their first and last position (a rerun over the same events writes the same keys); read every
//! file back and check checksum, size, row count and positions; write the new manifest with one
//! PUT (the commit point); trim the store below the new watermark. A crash anywhere therefore
//! leaves every event in exactly one committed file or still hot, and never trims unverified
//! data. One archiver per destination prefix at a time is assumed (the CronJob runs with
//! `concurrencyPolicy: Forbid`). This module must never trim above a committed watermark.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::format;
use super::manifest::{self, FileEntry, RunManifest, TenantManifest, TenantRunEntry};
use super::objstore::{Destination, ObjectStore};
use super::{ArchiveError, ArchiveResult};
use crate::backend::EventStore;
use crate::error::StoreError;
use crate::model::{RecordedEvent, TenantId};

/// Per-tenant result of a run.
pub type TenantReport = TenantRunEntry;

/// Environment variable of the fault-injection hook (`upload`, `verify` or `watermark`).
pub const CRASH_ENV: &str = "ALLSOURCE_ARCHIVE_CRASH_AFTER";

/// A point of the pipeline where the fault-injection hook can fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// After every file of the first tenant with work is uploaded, before verification.
    Upload,
    /// After verification, before the manifest (watermark) is written.
    Verify,
    /// After the manifest is written, before the store is trimmed.
    Watermark,
}

impl CrashPoint {
    fn name(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::Verify => "verify",
            Self::Watermark => "watermark",
        }
    }
}

impl FromStr for CrashPoint {
    type Err = ArchiveError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "upload" => Ok(Self::Upload),
            "verify" => Ok(Self::Verify),
            "watermark" => Ok(Self::Watermark),
            other => Err(ArchiveError::Config(format!(
                "{CRASH_ENV}={other:?}: expected upload, verify or watermark"
            ))),
        }
    }
}

/// What the hook does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// `std::process::abort()`: the process dies without cleanup (the real binary's crash tests).
    Abort,
    /// Return [`ArchiveError::InjectedStop`] (in-process tests of the same code path).
    Stop,
}

/// What to archive and how.
#[derive(Debug, Clone)]
pub struct ArchivePlan {
    /// Tenants to archive, in order.
    pub tenants: Vec<TenantId>,
    /// Events younger than this stay hot.
    pub hot_retention: Duration,
    /// "Now" in ms since the epoch; None = the system clock.
    pub now_ms: Option<i64>,
    /// How large one Parquet file may grow (rows and bytes).
    pub file_bounds: format::FileBounds,
    /// Page size of `read_all` calls.
    pub read_page: usize,
    /// Most events archived per tenant in one run (None = no limit).
    pub max_events_per_tenant: Option<u64>,
    /// Trim the store after commit (false: copy only).
    pub trim: bool,
    /// Fault-injection hook.
    pub fault: Option<(CrashPoint, FaultAction)>,
}

impl ArchivePlan {
    /// A plan with defaults for the given tenants and hot retention.
    pub fn new(tenants: Vec<TenantId>, hot_retention: Duration) -> Self {
        Self {
            tenants,
            hot_retention,
            now_ms: None,
            file_bounds: format::FileBounds::default(),
            read_page: 1_000,
            max_events_per_tenant: None,
            trim: true,
            fault: None,
        }
    }

    /// Reads the fault hook from [`CRASH_ENV`] (action: abort).
    pub fn with_fault_from_env(mut self) -> ArchiveResult<Self> {
        if let Ok(v) = std::env::var(CRASH_ENV) {
            if !v.is_empty() {
                self.fault = Some((v.parse()?, FaultAction::Abort));
            }
        }
        Ok(self)
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveReport {
    /// Run id.
    pub run_id: String,
    /// Destination URL.
    pub destination: String,
    /// Events at or after this time stayed hot.
    pub cutoff_ms: i64,
    /// Per-tenant results.
    pub tenants: Vec<TenantReport>,
    /// Events committed by this run.
    pub events_archived: u64,
    /// Bytes committed by this run.
    pub bytes_archived: u64,
    /// Wall time of the run in milliseconds.
    pub duration_ms: u64,
}

impl ArchiveReport {
    /// True when every tenant succeeded.
    pub fn ok(&self) -> bool {
        self.tenants.iter().all(|t| t.error.is_none())
    }
}

/// Parses durations like `720h`, `30d`, `1h30m`, `45s`.
pub fn parse_duration(s: &str) -> ArchiveResult<Duration> {
    let bad = || ArchiveError::Config(format!("duration {s:?}: expected e.g. 720h, 30d, 1h30m"));
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn fire(plan: &ArchivePlan, at: CrashPoint) -> ArchiveResult<()> {
    match plan.fault {
        Some((p, FaultAction::Abort)) if p == at => {
            eprintln!("{CRASH_ENV}: aborting after {}", at.name());
            std::process::abort()
        }
        Some((p, FaultAction::Stop)) if p == at => Err(ArchiveError::InjectedStop(at.name())),
        _ => Ok(()),
    }
}

/// Archives every tenant of the plan; a failing tenant is reported and the others still run.
/// Returns `Err` only for a fault-injection stop or when the run manifest cannot be written.
pub async fn run(
    store: &dyn EventStore,
    objects: &dyn ObjectStore,
    dest: &Destination,
    plan: &ArchivePlan,
) -> ArchiveResult<ArchiveReport> {
    let started = Instant::now();
    let started_at = now_rfc3339();
    let run_id = uuid::Uuid::now_v7().to_string();
    let now_ms = plan
        .now_ms
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let retention_ms = i64::try_from(plan.hot_retention.as_millis()).unwrap_or(i64::MAX);
    let cutoff_ms = now_ms.saturating_sub(retention_ms);
    let ctx = RunCtx {
        store,
        objects,
        dest,
        plan,
        run_id: &run_id,
        cutoff_ms,
    };
    let mut tenants = Vec::new();
    for tenant in &plan.tenants {
        let mut entry = TenantRunEntry {
            tenant: tenant.to_string(),
            ..Default::default()
        };
        match archive_tenant(&ctx, tenant, &mut entry).await {
            Ok(()) => {}
            Err(e @ ArchiveError::InjectedStop(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "archiving tenant failed");
                entry.error = Some(e.to_string());
            }
        }
        tenants.push(entry);
    }
    let events_archived = tenants.iter().flat_map(|t| &t.files).map(|f| f.rows).sum();
    let bytes_archived = tenants.iter().flat_map(|t| &t.files).map(|f| f.bytes).sum();
    let run = RunManifest {
        format: manifest::FORMAT_VERSION,
        run_id: run_id.clone(),
        destination: dest.url(),
        started_at,
        finished_at: now_rfc3339(),
        cutoff_ms,
        tenants: tenants.clone(),
    };
    manifest::save_run(objects, dest, &run).await?;
    Ok(ArchiveReport {
        run_id,
        destination: dest.url(),
        cutoff_ms,
        tenants,
        events_archived,
        bytes_archived,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

struct RunCtx<'a> {
    store: &'a dyn EventStore,
    objects: &'a dyn ObjectStore,
    dest: &'a Destination,
    plan: &'a ArchivePlan,
    run_id: &'a str,
    cutoff_ms: i64,
}

async fn trim(ctx: &RunCtx<'_>, tenant: &TenantId, before: u64) -> ArchiveResult<u64> {
    if !ctx.plan.trim || before == 0 {
        return Ok(0);
    }
    match ctx.store.trim_tenant_before(tenant, before).await {
        Ok(n) => Ok(n),
        // A backend without trim keeps its copy; the archive is still complete.
        Err(StoreError::Unsupported(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

async fn archive_tenant(
    ctx: &RunCtx<'_>,
    tenant: &TenantId,
    entry: &mut TenantRunEntry,
) -> ArchiveResult<()> {
    let committed = manifest::load_tenant(ctx.objects, ctx.dest, tenant).await?;
    entry.previous_watermark = committed.watermark;
    entry.watermark = committed.watermark;
    // Finish the trim of a run that crashed after its commit: the data is verified and listed.
    entry.trimmed += trim(ctx, tenant, committed.watermark).await?;
    remove_garbage(ctx, tenant, &committed).await?;

    let new_files = upload_cold_events(ctx, tenant, committed.watermark).await?;
    if new_files.is_empty() {
        return Ok(());
    }
    fire(ctx.plan, CrashPoint::Upload)?;

    verify(ctx, tenant, committed.watermark, &new_files).await?;
    fire(ctx.plan, CrashPoint::Verify)?;

    let watermark = new_files
        .last()
        .map_or(committed.watermark, |f| f.last_position + 1);
    let mut next: TenantManifest = committed;
    next.files.extend(new_files.iter().cloned());
    next.watermark = watermark;
    next.run_id = ctx.run_id.to_string();
    next.updated_at = now_rfc3339();
    manifest::save_tenant(ctx.objects, ctx.dest, &next).await?;
    entry.watermark = watermark;
    entry.files = new_files;
    fire(ctx.plan, CrashPoint::Watermark)?;

    entry.trimmed += trim(ctx, tenant, watermark).await?;
    Ok(())
}

/// Deletes `.parquet` objects of the tenant that the committed manifest does not list.
async fn remove_garbage(
    ctx: &RunCtx<'_>,
    tenant: &TenantId,
    committed: &TenantManifest,
) -> ArchiveResult<()> {
    let listed: BTreeSet<String> = committed
        .files
        .iter()
        .map(|f| ctx.dest.key(&f.key))
        .collect();
    let dir = ctx.dest.key(&format::tenant_dir(tenant));
    for obj in ctx.objects.list(&dir).await? {
        if obj.key.ends_with(".parquet") && !listed.contains(&obj.key) {
            tracing::info!(key = %obj.key, "removing uncommitted archive file");
            ctx.objects.delete(&obj.key).await?;
        }
    }
    Ok(())
}

/// Reads cold events from `from` and uploads them as files; returns their entries.
async fn upload_cold_events(
    ctx: &RunCtx<'_>,
    tenant: &TenantId,
    from: u64,
) -> ArchiveResult<Vec<FileEntry>> {
    let plan = ctx.plan;
    let bounds = plan.file_bounds;
    let limit = plan.max_events_per_tenant.unwrap_or(u64::MAX);
    let mut files = Vec::new();
    let mut current: Vec<RecordedEvent> = Vec::new();
    let mut current_bytes: u64 = 0;
    let mut taken: u64 = 0;
    let mut pos = from;
    'read: loop {
        let page = ctx
            .store
            .read_all(tenant, pos, plan.read_page.max(1))
            .await?;
        let Some(last) = page.last() else { break };
        pos = last.position + 1;
        for e in page {
            if e.timestamp_ms >= ctx.cutoff_ms || taken >= limit {
                break 'read;
            }
            if let Some(first) = current.first() {
                if bounds.starts_new_file(first.timestamp_ms, current.len(), current_bytes, &e) {
                    files.push(upload_file(ctx, tenant, &current).await?);
                    current.clear();
                    current_bytes = 0;
                }
            }
            taken += 1;
            current_bytes += e.size_bytes();
            current.push(e);
        }
    }
    if !current.is_empty() {
        files.push(upload_file(ctx, tenant, &current).await?);
    }
    Ok(files)
}

async fn upload_file(
    ctx: &RunCtx<'_>,
    tenant: &TenantId,
    events: &[RecordedEvent],
) -> ArchiveResult<FileEntry> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Err(ArchiveError::Parquet("empty file".into()));
    };
    let date = format::utc_date(first.timestamp_ms);
    let key = format::part_key(tenant, &date, first.position, last.position);
    let data = format::encode(events)?;
    let entry = FileEntry {
        key: key.clone(),
        rows: events.len() as u64,
        first_position: first.position,
        last_position: last.position,
        min_timestamp_ms: events.iter().map(|e| e.timestamp_ms).min().unwrap_or(0),
        max_timestamp_ms: events.iter().map(|e| e.timestamp_ms).max().unwrap_or(0),
        bytes: data.len() as u64,
        sha256: sha256_hex(&data),
    };
    ctx.objects.put(&ctx.dest.key(&key), data).await?;
    Ok(entry)
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Reads every new file back and checks it against its entry; positions must ascend strictly
/// from at least `from`, within and across files.
async fn verify(
    ctx: &RunCtx<'_>,
    tenant: &TenantId,
    from: u64,
    files: &[FileEntry],
) -> ArchiveResult<()> {
    let mut next_min = from;
    for f in files {
        let key = ctx.dest.key(&f.key);
        let fail = |message: String| ArchiveError::Verify {
            key: key.clone(),
            message,
        };
        let data: Bytes = ctx.objects.get(&key).await?;
        if data.len() as u64 != f.bytes {
            return Err(fail(format!("size {} != {}", data.len(), f.bytes)));
        }
        let sum = sha256_hex(&data);
        if sum != f.sha256 {
            return Err(fail(format!("sha256 {sum} != {}", f.sha256)));
        }
        let rows = format::decode(data)?;
        if rows.len() as u64 != f.rows {
            return Err(fail(format!(
                "{} rows, manifest says {}",
                rows.len(),
                f.rows
            )));
        }
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Err(fail("no rows".into()));
        };
        if first.position != f.first_position || last.position != f.last_position {
            return Err(fail(format!(
                "positions {}..={}, manifest says {}..={}",
                first.position, last.position, f.first_position, f.last_position
            )));
        }
        for r in &rows {
            if r.position < next_min || &r.tenant != tenant {
                return Err(fail(format!(
                    "row at position {} (tenant {}) out of order or foreign",
                    r.position, r.tenant
                )));
            }
            next_min = r.position + 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("720h").unwrap(),
            Duration::from_secs(720 * 3600)
        );
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "h", "10", "10x", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn crash_points_parse() {
        assert_eq!("verify".parse::<CrashPoint>().unwrap(), CrashPoint::Verify);
        assert!("later".parse::<CrashPoint>().is_err());
    }
}
