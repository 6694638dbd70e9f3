//! The ArchivePolicy controller against the env's real control plane (kube-apiserver,
//! kube-controller-manager with the Job, CronJob and garbage-collector controllers, scheduler,
//! kwok nodes), moto S3 and fake-gcs-server, with the operator's controllers running in-process
//! for one namespace per test: a policy becomes a CronJob with its schedule, time zone and
//! suspend; schedule and suspend changes follow; the S3 bucket gets lifecycle rules matching the
//! tiers while a foreign rule stays, and deleting the policy removes only its own rule; a missing
//! bucket degrades the policy until the bucket exists; run-now creates exactly one Job per
//! annotation value, which the real Job controller runs (on kwok) to completion and the status
//! reports, and a run-now is refused under Forbid while another run is active; a GCS policy
//! applies its lifecycle through the JSON API; a run of the CronJob's template, the test playing
//! the kubelet with the real `store-node archive` against a real `store-node serve` and moto S3,
//! ends in the status (events, bytes, watermark) from the pod's termination message, with the
//! Parquet rows in the bucket equal to the events.
//! Not covered here: fake-gcs-server accepts and drops bucket lifecycle, so GCS rules cannot be
//! read back (only that the apply succeeded).

use std::time::Duration;

use allsource_operator::api::archivepolicy::{ArchivePolicyStatus, RunResult};
use allsource_operator::api::{ArchivePolicy, EventStore, Phase, Tenant, FINALIZER};
use allsource_tests::operator::{install_crds, wait_for, Operator};
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
    LifecycleRuleFilter,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(90);

struct Setup {
    ns: allsource_tests::env::TestNamespace,
    client: Client,
    op: Operator,
}

impl Setup {
    fn name(&self) -> String {
        self.ns.name().to_string()
    }

    async fn finish(self) {
        self.op.stop().await;
        self.ns.cleanup().await.unwrap();
    }
}

/// A namespace with the CRDs, the operator, an EventStore `orders`, a Tenant `acme` (label
/// `archive=true`) whose credentials the Tenant controller has issued, and the S3/GCS secrets.
async fn setup(prefix: &str) -> Option<Setup> {
    let env = allsource_tests::env::require("kube")?;
    allsource_tests::env::require("s3")?;
    let ns = env.test_namespace(prefix).await.unwrap();
    let client = ns.client().clone();
    install_crds(&client).await;
    let n = ns.name().to_string();
    let op = Operator::start(&client, &n);
    let es: EventStore = serde_json::from_value(json!({
        "apiVersion": "allsource.io/v1alpha1", "kind": "EventStore",
        "metadata": {"name": "orders"},
        "spec": {"backend": "selfHosted",
                 "selfHosted": {"replicas": 1, "image": "ghcr.io/allsource/store-node:0.1.0",
                                "storage": {"size": "1Gi"}}},
    }))
    .unwrap();
    Api::<EventStore>::namespaced(client.clone(), &n)
        .create(&PostParams::default(), &es)
        .await
        .unwrap();
    let tn: Tenant = serde_json::from_value(json!({
        "apiVersion": "allsource.io/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "acme", "labels": {"archive": "true"}},
        "spec": {"eventStoreRef": {"name": "orders"}, "tenantId": "acme"},
    }))
    .unwrap();
    let tenants = Api::<Tenant>::namespaced(client.clone(), &n);
    tenants.create(&PostParams::default(), &tn).await.unwrap();
    wait_for("tenant credentials issued", DEADLINE, || {
        let tenants = tenants.clone();
        async move { tenants.get("acme").await.ok()?.status?.secret_name }
    })
    .await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &n);
    let s3: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s3-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": env.s3_access_key(),
                       "AWS_SECRET_ACCESS_KEY": env.s3_secret_key()},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &s3).await.unwrap();
    let gcs: Secret = serde_json::from_value(json!({
        "metadata": {"name": "gcs-creds"},
        // fake-gcs-server ignores the token; a real one comes from Workload Identity or a key.
        "stringData": {"GCS_OAUTH_TOKEN": "test-token"},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &gcs).await.unwrap();
    Some(Setup { ns, client, op })
}

fn s3_policy(name: &str, bucket: &str) -> ArchivePolicy {
    let env = allsource_tests::env::require("s3").unwrap();
    serde_json::from_value(json!({
        "apiVersion": "allsource.io/v1alpha1", "kind": "ArchivePolicy",
        "metadata": {"name": name},
        "spec": {
            "eventStoreRef": {"name": "orders"},
            "schedule": "0 2 * * *",
            "timeZone": "Europe/Berlin",
            "hotRetention": "30d",
            "tenantSelector": {"matchLabels": {"archive": "true"}},
            "destination": {"s3": {"bucket": bucket, "prefix": "orders/",
                "endpoint": env.s3_endpoint(), "region": "us-east-1", "forcePathStyle": true,
                "credentialsSecretRef": {"name": "s3-creds"}}},
            "tiers": [{"after": "90d", "storageClass": "GLACIER_IR"},
                      {"after": "365d", "storageClass": "DEEP_ARCHIVE"}],
            "expireAfter": "3650d",
        }
    }))
    .unwrap()
}

async fn wait_status(
    api: &Api<ArchivePolicy>,
    name: &str,
    what: &str,
    pred: impl Fn(&ArchivePolicy, &ArchivePolicyStatus) -> bool,
) -> ArchivePolicyStatus {
    wait_for(what, DEADLINE, || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let p = api.get(name).await.ok()?;
            let st = p.status.clone()?;
            pred(&p, &st).then_some(st)
        }
    })
    .await
}

fn degraded(st: &ArchivePolicyStatus) -> Option<(bool, String, String)> {
    st.conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| (c.is_true(), c.reason.clone(), c.message.clone()))
}

async fn cron_job_where(
    api: &Api<CronJob>,
    name: &str,
    what: &str,
    pred: impl Fn(&k8s_openapi::api::batch::v1::CronJobSpec) -> bool,
) -> CronJob {
    wait_for(what, DEADLINE, || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let cj = api.get(name).await.ok()?;
            pred(cj.spec.as_ref()?).then_some(cj)
        }
    })
    .await
}

/// The bucket's rules by id (empty when the bucket has no lifecycle configuration).
async fn s3_rules(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<LifecycleRule> {
    match s3
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(o) => o.rules().to_vec(),
        Err(_) => Vec::new(),
    }
}

fn rule<'a>(rules: &'a [LifecycleRule], id: &str) -> Option<&'a LifecycleRule> {
    rules.iter().find(|r| r.id() == Some(id))
}

fn transitions(r: &LifecycleRule) -> Vec<(i32, String)> {
    r.transitions()
        .iter()
        .map(|t| {
            (
                t.days().unwrap_or_default(),
                t.storage_class()
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

async fn delete_bucket(s3: &aws_sdk_s3::Client, bucket: &str) {
    let _ = s3.delete_bucket_lifecycle().bucket(bucket).send().await;
    let _ = s3.delete_bucket().bucket(bucket).send().await;
}

/// Writes of the ArchivePolicy controller (its status, CronJob, Jobs, bucket lifecycle) and its
/// reconcile count, from the operator's metrics.
fn ap_counts(m: &allsource_operator::telemetry::Metrics) -> (u64, u64) {
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok());
    let text = m.render();
    let writes = text
        .lines()
        .filter(|l| l.starts_with("allsource_operator_api_writes_total{"))
        .filter(|l| {
            [
                "resource=\"ArchivePolicy/status\"",
                "resource=\"CronJob\"",
                "resource=\"Job\"",
                "resource=\"BucketLifecycle\"",
            ]
            .iter()
            .any(|r| l.contains(r))
        })
        .filter_map(value)
        .sum();
    let reconciles = text
        .lines()
        .find(|l| l.starts_with("allsource_operator_reconciles_total{kind=\"ArchivePolicy\"}"))
        .and_then(value)
        .unwrap_or(0);
    (writes, reconciles)
}

#[tokio::test]
async fn policy_drives_cron_job_and_s3_lifecycle_keeping_foreign_rules() {
    let Some(t) = setup("ap-s3").await else {
        return;
    };
    let n = t.name();
    let env = allsource_tests::env::require("s3").unwrap();
    let s3 = env.s3_client();
    let bucket = allsource_tests::env::unique_name("ap-archive");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    // A rule someone else owns on the same bucket.
    let foreign = LifecycleRule::builder()
        .id("team-logs")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("logs/").build())
        .expiration(LifecycleExpiration::builder().days(7).build())
        .build()
        .unwrap();
    s3.put_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(foreign.clone())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let aps: Api<ArchivePolicy> = Api::namespaced(t.client.clone(), &n);
    aps.create(&PostParams::default(), &s3_policy("nightly", &bucket))
        .await
        .unwrap();
    let st = wait_status(&aps, "nightly", "policy Ready", |p, s| {
        s.phase == Some(Phase::Ready) && s.observed_generation == p.metadata.generation
    })
    .await;
    assert_eq!(st.cron_job_name.as_deref(), Some("nightly-archive"));
    // 02:00 in Berlin is 01:00 UTC in winter and 00:00 UTC in summer.
    let next = st.next_run_time.expect("nextRunTime");
    assert!(next > chrono::Utc::now());
    assert!(
        next.format("%M:%S").to_string() == "00:00"
            && ["00", "01"].contains(&next.format("%H").to_string().as_str()),
        "nextRunTime {next} is not 02:00 Europe/Berlin"
    );
    let live = aps.get("nightly").await.unwrap();
    assert!(live.finalizers().iter().any(|f| f == FINALIZER));

    // The CronJob: schedule, zone, suspend, concurrency, owner, the selected tenant.
    let cjs: Api<CronJob> = Api::namespaced(t.client.clone(), &n);
    let cj = cjs.get("nightly-archive").await.unwrap();
    let spec = cj.spec.clone().unwrap();
    assert_eq!(spec.schedule, "0 2 * * *");
    assert_eq!(spec.time_zone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(spec.suspend, Some(false));
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    assert_eq!(cj.owner_references()[0].uid, live.uid().unwrap());
    let args = spec
        .job_template
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap()
        .join(" ");
    assert!(args.contains("--tenant acme "), "{args}");
    assert!(
        args.contains(&format!("--destination s3://{bucket}/orders ")),
        "{args}"
    );
    assert!(
        args.contains(&format!("--source http://orders.{n}.svc:8080 ")),
        "{args}"
    );
    // The tokens Secret holds the tenant's token under its id.
    let tokens = Api::<Secret>::namespaced(t.client.clone(), &n)
        .get("nightly-archive-tokens")
        .await
        .unwrap();
    assert!(!tokens.data.unwrap()["acme"].0.is_empty());

    // Lifecycle: ours matches the tiers, the foreign rule is untouched.
    let our_id = format!("allsource-{n}.nightly-archive");
    let rules = s3_rules(&s3, &bucket).await;
    assert_eq!(rule(&rules, "team-logs"), Some(&foreign));
    let ours = rule(&rules, &our_id).expect("our lifecycle rule");
    assert_eq!(
        ours.filter().and_then(|f| f.prefix()),
        Some("orders/"),
        "rule scoped to the prefix"
    );
    assert_eq!(
        transitions(ours),
        vec![(90, "GLACIER_IR".into()), (365, "DEEP_ARCHIVE".into())]
    );
    assert_eq!(ours.expiration().and_then(|e| e.days()), Some(3650));

    // Steady state: a reconcile with nothing to change writes nothing (no status, no CronJob,
    // no bucket call that writes).
    let (writes_before, reconciles_before) = ap_counts(&t.op.metrics);
    aps.patch(
        "nightly",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"example.com/touch": "1"}}})),
    )
    .await
    .unwrap();
    wait_for("a reconcile after the touch", DEADLINE, || {
        let m = t.op.metrics.clone();
        async move { (ap_counts(&m).1 > reconciles_before).then_some(()) }
    })
    .await;
    assert_eq!(
        ap_counts(&t.op.metrics).0,
        writes_before,
        "no-op reconcile wrote:\n{}",
        t.op.metrics.render()
    );

    // Change schedule and tiers: the CronJob and our rule follow.
    aps.patch(
        "nightly",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"schedule": "30 3 * * 1",
            "tiers": [{"after": "60d", "storageClass": "STANDARD_IA"}]}})),
    )
    .await
    .unwrap();
    cron_job_where(&cjs, "nightly-archive", "schedule updated", |s| {
        s.schedule == "30 3 * * 1"
    })
    .await;
    wait_for("tiers applied to the bucket", DEADLINE, || {
        let s3 = s3.clone();
        let (bucket, our_id) = (bucket.clone(), our_id.clone());
        async move {
            let rules = s3_rules(&s3, &bucket).await;
            let ours = rule(&rules, &our_id)?;
            (transitions(ours) == vec![(60, "STANDARD_IA".to_string())]).then_some(())
        }
    })
    .await;
    assert_eq!(
        rule(&s3_rules(&s3, &bucket).await, "team-logs"),
        Some(&foreign)
    );

    // Suspend: the CronJob is suspended, no next run.
    aps.patch(
        "nightly",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .unwrap();
    cron_job_where(&cjs, "nightly-archive", "CronJob suspended", |s| {
        s.suspend == Some(true)
    })
    .await;
    let st = wait_status(&aps, "nightly", "phase Suspended", |p, s| {
        s.phase == Some(Phase::Suspended) && s.observed_generation == p.metadata.generation
    })
    .await;
    assert_eq!(st.next_run_time, None);

    // Delete: our rule leaves the bucket, the foreign one stays, the CronJob is collected.
    aps.delete("nightly", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("policy gone", DEADLINE, || {
        let aps = aps.clone();
        async move { aps.get_opt("nightly").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let rules = s3_rules(&s3, &bucket).await;
    assert!(rule(&rules, &our_id).is_none(), "our rule removed");
    assert_eq!(rule(&rules, "team-logs"), Some(&foreign));
    wait_for("CronJob garbage-collected", DEADLINE, || {
        let cjs = cjs.clone();
        async move {
            cjs.get_opt("nightly-archive")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;

    delete_bucket(&s3, &bucket).await;
    t.finish().await;
}

#[tokio::test]
async fn missing_bucket_degrades_until_it_exists() {
    let Some(t) = setup("ap-nobucket").await else {
        return;
    };
    let n = t.name();
    let env = allsource_tests::env::require("s3").unwrap();
    let s3 = env.s3_client();
    let bucket = allsource_tests::env::unique_name("ap-late");
    let aps: Api<ArchivePolicy> = Api::namespaced(t.client.clone(), &n);
    aps.create(&PostParams::default(), &s3_policy("late", &bucket))
        .await
        .unwrap();
    let st = wait_status(&aps, "late", "Degraded LifecycleFailed", |_, s| {
        degraded(s).is_some_and(|(on, reason, _)| on && reason == "LifecycleFailed")
    })
    .await;
    assert_eq!(st.phase, Some(Phase::Degraded));
    let (_, _, message) = degraded(&st).unwrap();
    assert!(message.contains(&bucket), "{message}");
    // The CronJob exists anyway: runs do not depend on the lifecycle rules.
    Api::<CronJob>::namespaced(t.client.clone(), &n)
        .get("late-archive")
        .await
        .unwrap();

    // The bucket appears: the policy recovers by itself (backoff retry), rules in place.
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    wait_status(&aps, "late", "recovered", |_, s| {
        s.phase == Some(Phase::Ready) && degraded(s).is_some_and(|(on, _, _)| !on)
    })
    .await;
    let rules = s3_rules(&s3, &bucket).await;
    assert!(rule(&rules, &format!("allsource-{n}.late-archive")).is_some());

    aps.delete("late", &DeleteParams::default()).await.unwrap();
    wait_for("policy gone", DEADLINE, || {
        let aps = aps.clone();
        async move { aps.get_opt("late").await.ok()?.is_none().then_some(()) }
    })
    .await;
    delete_bucket(&s3, &bucket).await;
    t.finish().await;
}

#[tokio::test]
async fn run_now_creates_one_job_per_value_and_respects_forbid() {
    let Some(t) = setup("ap-runnow").await else {
        return;
    };
    let n = t.name();
    let env = allsource_tests::env::require("s3").unwrap();
    let s3 = env.s3_client();
    let bucket = allsource_tests::env::unique_name("ap-runnow");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let aps: Api<ArchivePolicy> = Api::namespaced(t.client.clone(), &n);
    aps.create(&PostParams::default(), &s3_policy("nightly", &bucket))
        .await
        .unwrap();
    wait_status(&aps, "nightly", "policy Ready", |_, s| {
        s.phase == Some(Phase::Ready)
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(t.client.clone(), &n);
    let by_policy = ListParams::default().labels("allsource.io/archive-policy=nightly");
    let annotate = |v: &str| {
        let aps = aps.clone();
        let v = v.to_string();
        async move {
            aps.patch(
                "nightly",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"allsource.io/run-now": v}}})),
            )
            .await
            .unwrap();
        }
    };

    // run-now: one Job, which the real Job controller runs (kwok completes the pod); the status
    // records the run as the last one, succeeded.
    annotate("first").await;
    let st = wait_status(&aps, "nightly", "run-now recorded as succeeded", |_, s| {
        s.run_now_handled.as_deref() == Some("first") && s.last_result == Some(RunResult::Succeeded)
    })
    .await;
    let listed = jobs.list(&by_policy).await.unwrap().items;
    assert_eq!(listed.len(), 1, "exactly one Job for one value");
    let job = &listed[0];
    assert!(job.name_any().starts_with("nightly-archive-now-"));
    assert_eq!(st.last_job_name.as_deref(), Some(job.name_any().as_str()));
    assert!(st.last_success_time.is_some() && st.last_run_time.is_some());
    assert!(st.active_jobs.is_empty());
    let cond = st.conditions.iter().find(|c| c.type_ == "RunNow").unwrap();
    assert_eq!((cond.is_true(), cond.reason.as_str()), (true, "JobCreated"));

    // A run that is still going (a Job of this policy that has not finished) blocks a new
    // run-now under concurrencyPolicy Forbid: refused, no Job.
    let mut blocker: Job = serde_json::from_value(json!({
        "metadata": {"name": "nightly-archive-manual",
                     "labels": {"allsource.io/archive-policy": "nightly"}},
        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "archiver", "image": "ghcr.io/allsource/store-node:0.1.0"}]}}},
    }))
    .unwrap();
    blocker.metadata.namespace = Some(n.clone());
    jobs.create(&PostParams::default(), &blocker).await.unwrap();
    annotate("second").await;
    let st = wait_status(&aps, "nightly", "run-now refused", |_, s| {
        s.run_now_handled.as_deref() == Some("second")
    })
    .await;
    let cond = st.conditions.iter().find(|c| c.type_ == "RunNow").unwrap();
    assert_eq!((cond.is_true(), cond.reason.as_str()), (false, "Refused"));
    assert!(
        cond.message.contains("nightly-archive-manual"),
        "{}",
        cond.message
    );
    assert_eq!(st.active_jobs, vec!["nightly-archive-manual".to_string()]);
    let names: Vec<String> = jobs
        .list(&by_policy)
        .await
        .unwrap()
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    assert_eq!(names.len(), 2, "no Job for a refused run-now: {names:?}");

    aps.delete("nightly", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("policy gone", DEADLINE, || {
        let aps = aps.clone();
        async move { aps.get_opt("nightly").await.ok()?.is_none().then_some(()) }
    })
    .await;
    delete_bucket(&s3, &bucket).await;
    t.finish().await;
}

#[tokio::test]
async fn gcs_policy_applies_its_lifecycle_and_schedules() {
    let Some(t) = setup("ap-gcs").await else {
        return;
    };
    let Some(env) = allsource_tests::env::require("gcs") else {
        return;
    };
    let n = t.name();
    let bucket = allsource_tests::env::unique_name("ap-gcs");
    let http = reqwest::Client::new();
    http.post(format!(
        "{}/storage/v1/b?project=allsource-test",
        env.gcs_endpoint()
    ))
    .json(&json!({"name": bucket}))
    .send()
    .await
    .unwrap()
    .error_for_status()
    .unwrap();
    let policy: ArchivePolicy = serde_json::from_value(json!({
        "apiVersion": "allsource.io/v1alpha1", "kind": "ArchivePolicy",
        "metadata": {"name": "to-gcs"},
        "spec": {
            "eventStoreRef": {"name": "orders"},
            "schedule": "@daily",
            "hotRetention": "720h",
            "destination": {"gcs": {"bucket": bucket, "prefix": "orders",
                "endpoint": env.gcs_endpoint(), "credentialsSecretRef": {"name": "gcs-creds"}}},
            "tiers": [{"after": "90d", "storageClass": "COLDLINE"},
                      {"after": "365d", "storageClass": "ARCHIVE"}],
        }
    }))
    .unwrap();
    let aps: Api<ArchivePolicy> = Api::namespaced(t.client.clone(), &n);
    aps.create(&PostParams::default(), &policy).await.unwrap();
    let st = wait_status(&aps, "to-gcs", "GCS policy Ready", |_, s| {
        s.phase == Some(Phase::Ready) && s.lifecycle_hash.is_some()
    })
    .await;
    assert_eq!(degraded(&st).map(|d| d.0), Some(false));
    let cj = Api::<CronJob>::namespaced(t.client.clone(), &n)
        .get("to-gcs-archive")
        .await
        .unwrap();
    let spec = cj.spec.unwrap();
    assert_eq!(spec.schedule, "@daily");
    assert_eq!(spec.time_zone.as_deref(), Some("UTC"));
    let args = spec
        .job_template
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap()
        .join(" ");
    assert!(
        args.contains(&format!("--destination gs://{bucket}/orders ")),
        "{args}"
    );
    assert!(args.ends_with("--gcs-auth token"), "{args}");

    aps.delete("to-gcs", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("policy gone", DEADLINE, || {
        let aps = aps.clone();
        async move { aps.get_opt("to-gcs").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let _ = http
        .delete(format!("{}/storage/v1/b/{bucket}", env.gcs_endpoint()))
        .send()
        .await;
    t.finish().await;
}

/// Kills the child process on drop.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real `store-node serve` (engine) on loopback whose registry admits `tenant` with `token`.
async fn store_node_serving(dir: &std::path::Path, tenant: &str, token: &str) -> (Kill, String) {
    let registry = json!({"version": 1, "tenants": [{"id": tenant,
        "tokenSha256": [store_node::tenant::sha256_hex(token)], "state": "active"}]});
    std::fs::write(dir.join("registry.json"), registry.to_string()).unwrap();
    let port = allsource_tests::bins::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = std::process::Command::new(allsource_tests::bins::store_node())
        // metrics on a free port: parallel nodes would all claim the default
        .env("STORE_NODE_METRICS_ADDR", "127.0.0.1:0")
        .args(["--log-format", "text", "serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--registry")
        .arg(dir.join("registry.json"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("POD_NAME")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Kill(child);
    let http = reqwest::Client::new();
    wait_for("store-node serve ready", DEADLINE, || {
        let http = http.clone();
        let url = format!("{base}/readyz");
        async move {
            let r = http.get(url).send().await.ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    assert!(
        guard.0.try_wait().unwrap().is_none(),
        "store-node serve exited"
    );
    (guard, base)
}

/// Registers a Node nobody else runs pods on (tainted NoSchedule, not managed by kwok): the test
/// plays its kubelet for the archiver pod bound to it.
async fn test_node(client: &Client, name: &str) {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"allsource.io/test-kubelet": "true"}},
        "spec": {"taints": [{"key": "allsource.io/test-kubelet", "effect": "NoSchedule"}]},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap()
        .to_string();
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                "reason": "TestKubelet", "lastHeartbeatTime": now, "lastTransitionTime": now}]}}),
            ),
        )
        .await
        .unwrap();
}

/// The value following `flag` in `args` replaced by `value`.
fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} missing from {args:?}"));
    args[i + 1] = value.to_string();
}

/// Run of the policy's CronJob end to end, the test playing the kubelet: a Job made from the
/// CronJob's template (as `kubectl create job --from=cronjob/...` does) is run by the real Job
/// controller; its pod's `store-node archive` runs for real with the pod's own arguments (source,
/// tokens dir and report file pointed at loopback / local files), the tokens from the operator's
/// tokens Secret and the credentials from the destination Secret, against a real store node and
/// moto S3; the report goes into the pod's termination message; the operator reads it into status.
#[tokio::test]
async fn scheduled_run_reports_its_result_from_the_termination_message() {
    let Some(t) = setup("ap-e2e").await else {
        return;
    };
    let n = t.name();
    let env = allsource_tests::env::require("s3").unwrap();
    let s3 = env.s3_client();
    let bucket = allsource_tests::env::unique_name("ap-e2e");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let mut policy = s3_policy("nightly", &bucket);
    policy.spec.hot_retention = "0h".into();
    policy.spec.tiers.clear();
    policy.spec.expire_after = None;
    let aps: Api<ArchivePolicy> = Api::namespaced(t.client.clone(), &n);
    aps.create(&PostParams::default(), &policy).await.unwrap();
    wait_status(&aps, "nightly", "policy Ready", |_, s| {
        s.phase == Some(Phase::Ready)
    })
    .await;

    // The tenant's token as the operator delivered it to the archiver.
    let secrets = Api::<Secret>::namespaced(t.client.clone(), &n);
    let tokens = secrets.get("nightly-archive-tokens").await.unwrap();
    let token = String::from_utf8(tokens.data.unwrap()["acme"].0.clone()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (_server, base) = store_node_serving(tmp.path(), "acme", &token).await;
    let http = reqwest::Client::new();
    for i in 0..50u64 {
        let body = json!({"events": [{"eventId": uuid::Uuid::new_v4(), "eventType": "OrderPlaced",
            "data": {"n": i}}]});
        let r = http
            .post(format!("{base}/v1/streams/order-{}/events", i % 4))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "append: {}", r.status());
    }

    // A run of the CronJob, bound to the test's node.
    let node = format!("kubelet-{n}");
    test_node(&t.client, &node).await;
    let cjs: Api<CronJob> = Api::namespaced(t.client.clone(), &n);
    let cj = cjs.get("nightly-archive").await.unwrap();
    let tmpl = cj.spec.clone().unwrap().job_template;
    let mut spec = tmpl.spec.unwrap();
    spec.template.spec.as_mut().unwrap().node_name = Some(node.clone());
    let job = Job {
        metadata: kube::api::ObjectMeta {
            name: Some("nightly-archive-manual".into()),
            labels: tmpl.metadata.and_then(|m| m.labels),
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "CronJob".into(),
                    name: cj.name_any(),
                    uid: cj.uid().unwrap(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    let jobs: Api<Job> = Api::namespaced(t.client.clone(), &n);
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(t.client.clone(), &n);
    let pod = wait_for("the Job's pod", DEADLINE, || {
        let pods = pods.clone();
        async move {
            let lp = ListParams::default().labels("job-name=nightly-archive-manual");
            pods.list(&lp).await.ok()?.items.into_iter().next()
        }
    })
    .await;

    // Play the kubelet: the pod's command with loopback source and local files.
    let c = &pod.spec.as_ref().unwrap().containers[0];
    let mut args = c.args.clone().unwrap();
    let tokens_dir = tmp.path().join("tokens");
    std::fs::create_dir(&tokens_dir).unwrap();
    std::fs::write(tokens_dir.join("acme"), &token).unwrap();
    let report = tmp.path().join("termination-log");
    set_flag(&mut args, "--source", &base);
    set_flag(&mut args, "--tokens-dir", tokens_dir.to_str().unwrap());
    set_flag(&mut args, "--report-file", report.to_str().unwrap());
    let creds = secrets.get("s3-creds").await.unwrap();
    let cred = |k: &str| String::from_utf8(creds.data.as_ref().unwrap()[k].0.clone()).unwrap();
    let started = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap()
        .to_string();
    let out = std::process::Command::new(allsource_tests::bins::store_node())
        .args(["--log-format", "text"])
        .args(&args)
        .env("AWS_ACCESS_KEY_ID", cred("AWS_ACCESS_KEY_ID"))
        .env("AWS_SECRET_ACCESS_KEY", cred("AWS_SECRET_ACCESS_KEY"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "store-node archive failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let message = std::fs::read_to_string(&report).unwrap();
    let finished = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap()
        .to_string();
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"phase": "Succeeded", "containerStatuses": [{
            "name": "archiver", "image": c.image, "imageID": "", "ready": false,
            "restartCount": 0, "started": false,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message,
                "startedAt": started, "finishedAt": finished}}}]}}),
        ),
    )
    .await
    .unwrap();

    // The Job controller completes the Job; the operator reports the run.
    let st = wait_status(&aps, "nightly", "run recorded", |_, s| {
        s.last_job_name.as_deref() == Some("nightly-archive-manual")
    })
    .await;
    assert_eq!(st.last_result, Some(RunResult::Succeeded), "{st:?}");
    assert_eq!(st.events_archived, Some(50));
    assert!(st.bytes_archived.unwrap() > 0);
    assert!(st.last_success_time.is_some());
    assert_eq!(st.last_error, None);
    let acme = st.tenants.iter().find(|x| x.tenant_id == "acme").unwrap();
    assert_eq!(acme.watermark, 50);

    // The bucket holds Parquet files with exactly the 50 events.
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("orders/")
        .send()
        .await
        .unwrap();
    let mut rows = 0usize;
    for o in listed.contents() {
        let key = o.key().unwrap();
        if !key.ends_with(".parquet") {
            continue;
        }
        let body = s3
            .get_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body).unwrap();
        rows += usize::try_from(reader.metadata().file_metadata().num_rows()).unwrap();
    }
    assert_eq!(rows, 50, "Parquet rows in the bucket");

    let _ = Api::<k8s_openapi::api::core::v1::Node>::all(t.client.clone())
        .delete(&node, &DeleteParams::default())
        .await;
    aps.delete("nightly", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("policy gone", DEADLINE, || {
        let aps = aps.clone();
        async move { aps.get_opt("nightly").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    for o in listed.contents() {
        let _ = s3
            .delete_object()
            .bucket(&bucket)
            .key(o.key().unwrap())
            .send()
            .await;
    }
    delete_bucket(&s3, &bucket).await;
    t.finish().await;
}

/// The archive Job would run the store's image with the tenants' tokens mounted: an operator
/// limited to other repositories makes no CronJob and says why (Degraded / ImageNotAllowed).
#[tokio::test]
async fn a_store_image_outside_the_allowed_repositories_gets_no_archive_job() {
    let Some(t) = setup("ap-images").await else {
        return;
    };
    let n = t.name();
    let Setup { ns, client, op } = t;
    op.stop().await;
    let op = Operator::start_allowing_images(&client, &n, &["registry.example.com/store-node"]);
    let aps: Api<ArchivePolicy> = Api::namespaced(client.clone(), &n);
    aps.create(
        &PostParams::default(),
        &s3_policy("nightly", "no-bucket-needed"),
    )
    .await
    .unwrap();
    let st = wait_status(&aps, "nightly", "Degraded ImageNotAllowed", |_, s| {
        degraded(s).is_some_and(|(d, r, _)| d && r == "ImageNotAllowed")
    })
    .await;
    let (_, _, msg) = degraded(&st).unwrap();
    assert!(msg.contains("ghcr.io/allsource/store-node:0.1.0"), "{msg}");
    let cjs: Api<CronJob> = Api::namespaced(client.clone(), &n);
    assert!(
        cjs.get_opt("nightly-archive").await.unwrap().is_none(),
        "a CronJob was made for a refused image"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &n);
    assert!(
        secrets
            .get_opt("nightly-archive-tokens")
            .await
            .unwrap()
            .is_none(),
        "tenant tokens were handed over for a refused image"
    );
    Setup { ns, client, op }.finish().await;
}
