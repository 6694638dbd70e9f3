//! The archiver: moves a tenant's events older than the hot window from an event store to
//! Parquet files in a bucket, verifies them, commits them in the tenant manifest and only then
//! trims them from the store.
//!
//! A run first takes the store's lease in the destination ([`super::lease`]): a second archiver
//! of the same store fails with `LeaseHeld` instead of racing the first. Then, per tenant: read
//! the tenant's incarnation from the store; load the committed manifest of this store and
//! incarnation ([`ArchiveScope`]; watermark W); trim the store below W, only while the tenant is
//! still at that incarnation (finishes a run that crashed after its commit); delete data files in
//! the scope's own directory that no committed manifest lists and that are older than the GC
//! grace (garbage of a crashed run; a run still uploading is younger); read events from W in
//! position order up to the first one newer than `now - hot_retention`; write them as files
//! named by their first and last position (a rerun over the same events writes the same keys);
//! read every file back and check checksum, size, row count and positions; check that the tenant
//! is still at the same incarnation and renew the lease (a run that lost it stops here); write the
//! new manifest with one PUT (the commit point); trim the store below the new watermark, again
//! only for that incarnation. A crash anywhere therefore leaves every event in exactly one
//! committed file or still hot, and never trims unverified data. Another store sharing the
//! prefix, or an earlier incarnation of the tenant id, has its own directory and manifest and is
//! never read, trimmed to or collected. This module must never trim above a committed watermark
//! of its own scope.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::format;
use super::lease::Lease;
use super::manifest::{self, ArchiveScope, FileEntry, RunManifest, TenantManifest, TenantRunEntry};
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

/// Default of [`ArchivePlan::gc_grace`].
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Default of [`ArchivePlan::lease_ttl`].
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(300);

/// What to archive and how.
#[derive(Debug, Clone)]
pub struct ArchivePlan {
    /// Uid of the store the events come from (the EventStore's `metadata.uid`); the archive's
    /// manifests, files and lease are keyed by it.
    pub store_uid: String,
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
    /// An uncommitted data file is deleted only when older than this (a run still uploading
    /// it is younger).
    pub gc_grace: Duration,
    /// How long the store's lease lasts unless renewed (renewed between files and before each
    /// commit).
    pub lease_ttl: Duration,
    /// Fault-injection hook.
    pub fault: Option<(CrashPoint, FaultAction)>,
}

impl ArchivePlan {
    /// A plan with defaults for the given store, tenants and hot retention.
    pub fn new(store_uid: &str, tenants: Vec<TenantId>, hot_retention: Duration) -> Self {
        Self {
            store_uid: store_uid.to_string(),
            tenants,
            hot_retention,
            now_ms: None,
            file_bounds: format::FileBounds::default(),
            read_page: 1_000,
            max_events_per_tenant: None,
            trim: true,
            gc_grace: DEFAULT_GC_GRACE,
            lease_ttl: DEFAULT_LEASE_TTL,
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

/// Parses durations like `720h`, `30d`, `1h30m`, `45s` ([`allsource_core::duration`]).
pub fn parse_duration(s: &str) -> ArchiveResult<Duration> {
    allsource_core::duration::parse_duration(s).map_err(|e| ArchiveError::Config(e.to_string()))
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
/// Returns `Err` for an invalid store uid, when another run holds the lease, for a
/// fault-injection stop or when the run manifest cannot be written. A run whose lease was taken
/// over stops at the tenant where it noticed (reported), committing nothing more.
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
    manifest::validate_store_uid(&plan.store_uid)?;
    let mut lease = Lease::acquire(objects, dest, &plan.store_uid, &run_id, plan.lease_ttl).await?;
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
        let mut lost = false;
        match archive_tenant(&ctx, &mut lease, tenant, &mut entry).await {
            Ok(()) => {}
            // A crash: the lease stays held until it expires.
            Err(e @ ArchiveError::InjectedStop(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "archiving tenant failed");
                lost = matches!(e, ArchiveError::LeaseLost(_));
                entry.error = Some(e.to_string());
            }
        }
        tenants.push(entry);
        if lost {
            break;
        }
    }
    lease.release(objects).await;
    let events_archived = tenants.iter().flat_map(|t| &t.files).map(|f| f.rows).sum();
    let bytes_archived = tenants.iter().flat_map(|t| &t.files).map(|f| f.bytes).sum();
    let run = RunManifest {
        format: manifest::FORMAT_VERSION,
        run_id: run_id.clone(),
        store_uid: plan.store_uid.clone(),
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

/// Trims the scope's tenant below `before`, only while it is at the scope's incarnation.
async fn trim(ctx: &RunCtx<'_>, scope: &ArchiveScope, before: u64) -> ArchiveResult<u64> {
    if !ctx.plan.trim || before == 0 {
        return Ok(0);
    }
    match ctx
        .store
        .trim_tenant_before(&scope.tenant, before, Some(scope.incarnation))
        .await
    {
        Ok(n) => Ok(n),
        // A backend without trim keeps its copy; the archive is still complete.
        Err(StoreError::Unsupported(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// The tenant's incarnation on the store (0 for a store that cannot tell).
async fn incarnation(ctx: &RunCtx<'_>, tenant: &TenantId) -> ArchiveResult<u64> {
    match ctx.store.stats(tenant).await {
        Ok(s) => Ok(s.incarnation),
        Err(StoreError::Unsupported(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

async fn archive_tenant(
    ctx: &RunCtx<'_>,
    lease: &mut Lease,
    tenant: &TenantId,
    entry: &mut TenantRunEntry,
) -> ArchiveResult<()> {
    let scope = ArchiveScope::new(
        tenant.clone(),
        &ctx.plan.store_uid,
        incarnation(ctx, tenant).await?,
    )?;
    entry.incarnation = scope.incarnation;
    let committed = manifest::load_tenant(ctx.objects, ctx.dest, &scope).await?;
    entry.previous_watermark = committed.watermark;
    entry.watermark = committed.watermark;
    // Finish the trim of a run that crashed after its commit: the data is verified and listed.
    entry.trimmed += trim(ctx, &scope, committed.watermark).await?;
    remove_garbage(ctx, &scope, &committed).await?;

    let new_files = upload_cold_events(ctx, lease, &scope, committed.watermark).await?;
    if new_files.is_empty() {
        return Ok(());
    }
    fire(ctx.plan, CrashPoint::Upload)?;

    verify(ctx, tenant, committed.watermark, &new_files).await?;
    fire(ctx.plan, CrashPoint::Verify)?;

    // The events must still be those of this incarnation (a purge in between restarted the
    // positions), and this run must still hold the lease: else commit nothing.
    let current = incarnation(ctx, tenant).await?;
    if current != scope.incarnation {
        return Err(StoreError::IncarnationChanged {
            expected: scope.incarnation,
            current,
        }
        .into());
    }
    lease.renew(ctx.objects).await?;

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

    entry.trimmed += trim(ctx, &scope, watermark).await?;
    Ok(())
}

/// Deletes `.parquet` objects in the scope's own directory that the committed manifest does not
/// list and that are older than the GC grace; an object without a modification time is kept.
async fn remove_garbage(
    ctx: &RunCtx<'_>,
    scope: &ArchiveScope,
    committed: &TenantManifest,
) -> ArchiveResult<()> {
    let listed: BTreeSet<String> = committed
        .files
        .iter()
        .map(|f| ctx.dest.key(&f.key))
        .collect();
    let grace_ms = i64::try_from(ctx.plan.gc_grace.as_millis()).unwrap_or(i64::MAX);
    let older_than = chrono::Utc::now()
        .timestamp_millis()
        .saturating_sub(grace_ms);
    let dir = ctx.dest.key(&scope.dir());
    for obj in ctx.objects.list(&dir).await? {
        if !obj.key.ends_with(".parquet") || listed.contains(&obj.key) {
            continue;
        }
        match obj.modified_ms {
            Some(m) if m <= older_than => {
                tracing::info!(key = %obj.key, "removing uncommitted archive file");
                ctx.objects.delete(&obj.key).await?;
            }
            _ => tracing::debug!(key = %obj.key, "uncommitted archive file kept (within grace)"),
        }
    }
    Ok(())
}

/// Reads cold events from `from` and uploads them as files; returns their entries.
async fn upload_cold_events(
    ctx: &RunCtx<'_>,
    lease: &mut Lease,
    scope: &ArchiveScope,
    from: u64,
) -> ArchiveResult<Vec<FileEntry>> {
    let tenant = &scope.tenant;
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
                    lease.keep(ctx.objects).await?;
                    files.push(upload_file(ctx, scope, &current).await?);
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
        lease.keep(ctx.objects).await?;
        files.push(upload_file(ctx, scope, &current).await?);
    }
    Ok(files)
}

async fn upload_file(
    ctx: &RunCtx<'_>,
    scope: &ArchiveScope,
    events: &[RecordedEvent],
) -> ArchiveResult<FileEntry> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Err(ArchiveError::Parquet("empty file".into()));
    };
    let date = format::utc_date(first.timestamp_ms);
    let key = format::part_key(scope, &date, first.position, last.position);
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
    fn crash_points_parse() {
        assert_eq!("verify".parse::<CrashPoint>().unwrap(), CrashPoint::Verify);
        assert!("later".parse::<CrashPoint>().is_err());
    }
}
