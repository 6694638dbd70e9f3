//! Computes the status of an ArchivePolicy from what the controller observed: the archiver Jobs of
//! the policy, the report each finished run left in its pod's termination message (the compact
//! JSON `store-node archive --report-file` writes), the next scheduled run, the lifecycle hash and
//! the first problem of this reconcile. A run is recorded once (by Job name), so the same
//! observation gives an equal status and the reconciler writes nothing; conditions keep their
//! lastTransitionTime while their status holds. Pure: no I/O, the clock comes in.

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;

use crate::api::archivepolicy::{ArchivePolicyStatus, RunResult, TenantArchiveStatus};
use crate::api::{
    set_condition, ArchivePolicy, Condition, Phase, CONDITION_DEGRADED, CONDITION_READY,
};

/// Name of the archiver container (see `build`).
pub const CONTAINER: &str = "archiver";

/// The summary `store-node archive --report-file` writes (see store-node `cli/archive.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Run id.
    #[serde(default)]
    pub run_id: String,
    /// Events committed by the run.
    #[serde(default)]
    pub events_archived: u64,
    /// Bytes committed by the run.
    #[serde(default)]
    pub bytes_archived: u64,
    /// Whether every tenant succeeded.
    #[serde(default)]
    pub ok: bool,
    /// Per-tenant results.
    #[serde(default)]
    pub tenants: Vec<TenantSummary>,
}

/// One tenant of a [`RunSummary`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TenantSummary {
    /// Tenant id.
    pub tenant: String,
    /// Position up to which the tenant is archived and verified.
    #[serde(default)]
    pub watermark: Option<i64>,
    /// Events of this tenant committed by the run.
    #[serde(default)]
    pub events: u64,
    /// Error of this tenant, empty on success.
    #[serde(default)]
    pub error: String,
}

/// What a Job says about one run.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRun {
    /// Job name.
    pub name: String,
    /// When the run started (Job start time, else creation).
    pub started: Option<DateTime<Utc>>,
    /// When it finished; None while it runs.
    pub finished: Option<DateTime<Utc>>,
    /// Whether it succeeded (meaningful once finished).
    pub succeeded: bool,
    /// The archiver's termination message, when a pod of the Job left one (the newest pod's).
    pub message: Option<String>,
    /// The termination messages of the Job's earlier attempts (pods the Job retried), oldest
    /// first: what they archived counts for the run too.
    pub earlier: Vec<String>,
}

impl JobRun {
    /// Still running.
    pub fn active(&self) -> bool {
        self.finished.is_none()
    }
}

/// A Kubernetes time as a chrono UTC time.
fn utc(t: &Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().try_into().ok()?)
}

/// Reads a Job and the pods of that Job.
pub fn job_run(job: &Job, pods: &[Pod]) -> JobRun {
    let st = job.status.clone().unwrap_or_default();
    let cond = |t: &str| {
        st.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
            .map(|c| c.last_transition_time.as_ref().and_then(utc))
    };
    let created = job.metadata.creation_timestamp.as_ref().and_then(utc);
    // A finished Job always gets a time, so that it never looks active.
    let when = |t: Option<DateTime<Utc>>| Some(t.or(created).unwrap_or(DateTime::UNIX_EPOCH));
    let (finished, succeeded) = match (cond("Complete"), cond("Failed")) {
        (Some(t), _) => (when(st.completion_time.as_ref().and_then(utc).or(t)), true),
        (None, Some(t)) => (when(t), false),
        (None, None) => (None, false),
    };
    let name = job.metadata.name.clone().unwrap_or_default();
    // The newest pod of the Job with a terminated archiver container holds the final report.
    let mut terminated: Vec<(Option<DateTime<Utc>>, String)> = pods
        .iter()
        .filter(|p| {
            p.metadata.labels.as_ref().and_then(|l| l.get("job-name")) == Some(&name)
                || p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "Job" && o.name == name)
        })
        .filter_map(|p| {
            let cs = p.status.as_ref()?.container_statuses.as_ref()?;
            let c = cs.iter().find(|c| c.name == CONTAINER)?;
            let t = c.state.as_ref()?.terminated.as_ref()?;
            let msg = t.message.clone().filter(|m| !m.trim().is_empty())?;
            Some((t.finished_at.as_ref().and_then(utc), msg))
        })
        .collect();
    terminated.sort_by_key(|t| t.0);
    let message = terminated.pop().map(|(_, m)| m);
    JobRun {
        started: st.start_time.as_ref().and_then(utc).or(created),
        finished,
        succeeded,
        message,
        earlier: terminated.into_iter().map(|(_, m)| m).collect(),
        name,
    }
}

/// The first problem found while reconciling (sets Degraded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl Problem {
    /// A problem with this reason and message.
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Everything [`compute`] needs besides the policy.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The CronJob's name once it exists.
    pub cron_job_name: Option<String>,
    /// The policy's Jobs.
    pub runs: Vec<JobRun>,
    /// Next scheduled run (None when suspended or unknown).
    pub next_run: Option<DateTime<Utc>>,
    /// Hash of the lifecycle last applied.
    pub lifecycle_hash: Option<String>,
    /// The run-now value acted on.
    pub run_now_handled: Option<String>,
    /// First problem of this reconcile.
    pub problem: Option<Problem>,
    /// The CronJob is suspended (spec.suspend, or no tenant to archive).
    pub suspended: Option<String>,
}

/// A run finished since the last status: the Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// ArchiveSucceeded or ArchiveFailed.
    pub reason: &'static str,
    /// Event note.
    pub note: String,
}

/// The status to write and the newly finished run, if any.
pub fn compute(p: &ArchivePolicy, o: &Observed) -> (ArchivePolicyStatus, Option<Finished>) {
    let prev = p.status.clone().unwrap_or_default();
    let mut st = prev.clone();
    st.observed_generation = p.metadata.generation;
    st.cron_job_name = o.cron_job_name.clone().or(prev.cron_job_name.clone());
    st.next_run_time = o.next_run;
    st.lifecycle_hash = o.lifecycle_hash.clone().or(prev.lifecycle_hash.clone());
    st.run_now_handled = o.run_now_handled.clone().or(prev.run_now_handled.clone());
    let mut active: Vec<String> = o
        .runs
        .iter()
        .filter(|r| r.active())
        .map(|r| r.name.clone())
        .collect();
    active.sort();
    st.active_jobs = active;

    let mut finished_event = None;
    let newest = o
        .runs
        .iter()
        .max_by(|a, b| (a.started, &a.name).cmp(&(b.started, &b.name)));
    if let Some(run) = newest {
        if run.active() {
            st.last_run_time = run.started;
            st.last_result = Some(RunResult::Running);
        } else if prev.last_job_name.as_deref() != Some(run.name.as_str())
            || prev.last_result == Some(RunResult::Running)
        {
            finished_event = Some(record(&mut st, run));
        }
    }

    let mut conditions = prev.conditions.clone();
    let failed_run = st.last_result == Some(RunResult::Failed);
    let degraded = o.problem.clone().or_else(|| {
        failed_run.then(|| {
            Problem::new(
                "LastRunFailed",
                st.last_error
                    .clone()
                    .unwrap_or_else(|| "the last run failed".into()),
            )
        })
    });
    match &degraded {
        Some(pr) => set_condition(
            &mut conditions,
            Condition::new(CONDITION_DEGRADED, true, &pr.reason, pr.message.clone()),
        ),
        None => set_condition(
            &mut conditions,
            Condition::new(CONDITION_DEGRADED, false, "AsExpected", ""),
        ),
    }
    let scheduled = o.cron_job_name.is_some();
    let ready = match (&o.suspended, scheduled) {
        (Some(why), _) => Condition::new(CONDITION_READY, false, "Suspended", why.clone()),
        (None, true) => Condition::new(
            CONDITION_READY,
            o.problem.is_none(),
            if o.problem.is_none() {
                "Scheduled"
            } else {
                "NotScheduled"
            },
            match o.next_run {
                Some(t) => format!("next run at {}", t.to_rfc3339()),
                None => String::new(),
            },
        ),
        (None, false) => Condition::new(CONDITION_READY, false, "NotScheduled", "no CronJob yet"),
    };
    set_condition(&mut conditions, ready);
    for c in &mut conditions {
        c.observed_generation = p.metadata.generation;
    }
    st.conditions = conditions;
    st.phase = Some(if degraded.is_some() {
        Phase::Degraded
    } else if o.suspended.is_some() {
        Phase::Suspended
    } else if scheduled {
        Phase::Ready
    } else {
        Phase::Pending
    });
    (st, finished_event)
}

/// Copies the result of a finished run into the status.
fn record(st: &mut ArchivePolicyStatus, run: &JobRun) -> Finished {
    st.last_job_name = Some(run.name.clone());
    st.last_run_time = run.started;
    let summary: Option<RunSummary> = run
        .message
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok());
    let ok = run.succeeded && summary.as_ref().is_none_or(|s| s.ok);
    st.last_result = Some(if ok {
        RunResult::Succeeded
    } else {
        RunResult::Failed
    });
    if ok {
        st.last_success_time = run.finished;
    }
    if let Some(s) = &summary {
        // A Job that retried: what its failed attempts committed was archived by this run too.
        let earlier: Vec<RunSummary> = run
            .earlier
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect();
        let events = earlier.iter().map(|e| e.events_archived).sum::<u64>() + s.events_archived;
        let bytes = earlier.iter().map(|e| e.bytes_archived).sum::<u64>() + s.bytes_archived;
        st.events_archived = Some(i64::try_from(events).unwrap_or(i64::MAX));
        st.bytes_archived = Some(i64::try_from(bytes).unwrap_or(i64::MAX));
        // Keep the watermarks of tenants this run did not report (e.g. cut from a long summary).
        for t in &s.tenants {
            let entry = TenantArchiveStatus {
                tenant_id: t.tenant.clone(),
                watermark: t.watermark.unwrap_or(0),
                last_error: (!t.error.is_empty()).then(|| t.error.clone()),
            };
            match st.tenants.iter_mut().find(|x| x.tenant_id == t.tenant) {
                Some(x) => {
                    x.watermark = x.watermark.max(entry.watermark);
                    x.last_error = entry.last_error;
                }
                None => st.tenants.push(entry),
            }
        }
        st.tenants.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
    } else if ok {
        st.events_archived = None;
        st.bytes_archived = None;
    }
    st.last_error = if ok {
        None
    } else {
        Some(match (&summary, &run.message) {
            (Some(s), _) => {
                let failed: Vec<String> = s
                    .tenants
                    .iter()
                    .filter(|t| !t.error.is_empty())
                    .map(|t| format!("{}: {}", t.tenant, t.error))
                    .collect();
                if failed.is_empty() {
                    "the archiver Job failed".to_string()
                } else {
                    failed.join("; ")
                }
            }
            (None, Some(m)) => m.chars().take(500).collect(),
            (None, None) => "the archiver Job failed without a report".to_string(),
        })
    };
    if ok {
        Finished {
            reason: "ArchiveSucceeded",
            note: format!(
                "run {} archived {} events ({} bytes)",
                run.name,
                st.events_archived.unwrap_or(0),
                st.bytes_archived.unwrap_or(0)
            ),
        }
    } else {
        Finished {
            reason: "ArchiveFailed",
            note: format!(
                "run {} failed: {}",
                run.name,
                st.last_error.clone().unwrap_or_default()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ArchivePolicySpec;

    fn policy() -> ArchivePolicy {
        let spec: ArchivePolicySpec = serde_json::from_value(serde_json::json!({
            "eventStoreRef": {"name": "orders"},
            "schedule": "0 2 * * *",
            "hotRetention": "30d",
            "destination": {"s3": {"bucket": "arch", "prefix": "orders"}},
        }))
        .unwrap();
        let mut p = ArchivePolicy::new("nightly", spec);
        p.metadata.generation = Some(1);
        p
    }

    fn job(name: &str, done: Option<&str>) -> Job {
        let mut v = serde_json::json!({
            "metadata": {"name": name, "creationTimestamp": "2026-11-24T10:00:00Z"},
            "status": {"startTime": "2026-11-24T10:00:01Z"},
        });
        if let Some(kind) = done {
            v["status"]["conditions"] = serde_json::json!([{"type": kind, "status": "True",
                "lastTransitionTime": "2026-11-24T10:00:09Z"}]);
            if kind == "Complete" {
                v["status"]["completionTime"] = serde_json::json!("2026-11-24T10:00:08Z");
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn pod(job: &str, message: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{job}-x"), "labels": {"job-name": job}},
            "status": {"containerStatuses": [{"name": "archiver", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "message": message,
                    "finishedAt": "2026-11-24T10:00:07Z"}}}]},
        }))
        .unwrap()
    }

    const REPORT: &str = r#"{"runId":"r1","eventsArchived":120,"bytesArchived":4096,"ok":true,"tenants":[{"tenant":"acme","watermark":119,"events":120,"error":""}]}"#;

    #[test]
    fn a_finished_run_is_recorded_once() {
        let mut p = policy();
        let j = job("nightly-archive-now-1", Some("Complete"));
        let run = job_run(&j, &[pod("nightly-archive-now-1", REPORT)]);
        assert!(!run.active() && run.succeeded);
        let o = Observed {
            cron_job_name: Some("nightly-archive".into()),
            runs: vec![run],
            ..Observed::default()
        };
        let (st, ev) = compute(&p, &o);
        assert_eq!(ev.unwrap().reason, "ArchiveSucceeded");
        assert_eq!(st.last_result, Some(RunResult::Succeeded));
        assert_eq!(st.events_archived, Some(120));
        assert_eq!(st.bytes_archived, Some(4096));
        assert_eq!(st.tenants[0].watermark, 119);
        assert_eq!(
            st.last_success_time.unwrap().to_rfc3339(),
            "2026-11-24T10:00:08+00:00"
        );
        assert_eq!(st.phase, Some(Phase::Ready));
        p.status = Some(st.clone());
        let (again, ev) = compute(&p, &o);
        assert_eq!(again, st);
        assert!(ev.is_none());
    }

    /// A Job whose first pod failed for one tenant and whose retry finished the rest: the run
    /// archived what both attempts committed.
    #[test]
    fn a_retried_run_counts_every_attempt() {
        let p = policy();
        let first = r#"{"runId":"r1","eventsArchived":40,"bytesArchived":1000,"ok":false,"tenants":[{"tenant":"acme","watermark":40,"events":40,"error":""},{"tenant":"globex","watermark":0,"events":0,"error":"store node answered HTTP 401"}]}"#;
        let second = r#"{"runId":"r2","eventsArchived":20,"bytesArchived":500,"ok":true,"tenants":[{"tenant":"acme","watermark":40,"events":0,"error":""},{"tenant":"globex","watermark":20,"events":20,"error":""}]}"#;
        let mut failed = pod("j4", first);
        failed.metadata.name = Some("j4-a".into());
        if let Some(t) = failed
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
            .and_then(|c| c[0].state.as_mut())
            .and_then(|s| s.terminated.as_mut())
        {
            t.finished_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-24T10:00:03Z".parse().unwrap(),
            ));
        }
        let run = job_run(&job("j4", Some("Complete")), &[pod("j4", second), failed]);
        assert_eq!(run.earlier.len(), 1);
        let (st, _) = compute(
            &p,
            &Observed {
                cron_job_name: Some("c".into()),
                runs: vec![run],
                ..Observed::default()
            },
        );
        assert_eq!(st.last_result, Some(RunResult::Succeeded));
        assert_eq!(st.events_archived, Some(60));
        assert_eq!(st.bytes_archived, Some(1500));
        let globex = st.tenants.iter().find(|t| t.tenant_id == "globex").unwrap();
        assert_eq!((globex.watermark, globex.last_error.as_deref()), (20, None));
    }

    #[test]
    fn a_failed_run_degrades_and_keeps_the_last_success() {
        let p = policy();
        let report = r#"{"runId":"r2","eventsArchived":0,"bytesArchived":0,"ok":false,"tenants":[{"tenant":"acme","watermark":119,"events":0,"error":"object store put: HTTP 403"}]}"#;
        let run = job_run(&job("j2", Some("Failed")), &[pod("j2", report)]);
        let (st, ev) = compute(
            &p,
            &Observed {
                cron_job_name: Some("c".into()),
                runs: vec![run],
                ..Observed::default()
            },
        );
        assert_eq!(ev.unwrap().reason, "ArchiveFailed");
        assert_eq!(st.last_result, Some(RunResult::Failed));
        assert_eq!(st.phase, Some(Phase::Degraded));
        assert!(st.last_error.unwrap().contains("acme: object store put"));
        assert!(st.last_success_time.is_none());
    }

    #[test]
    fn a_running_job_shows_running_and_active() {
        let p = policy();
        let run = job_run(&job("j3", None), &[]);
        let (st, ev) = compute(
            &p,
            &Observed {
                cron_job_name: Some("c".into()),
                runs: vec![run],
                ..Observed::default()
            },
        );
        assert!(ev.is_none());
        assert_eq!(st.last_result, Some(RunResult::Running));
        assert_eq!(st.active_jobs, vec!["j3".to_string()]);
    }
}
