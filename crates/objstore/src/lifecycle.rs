//! Bucket lifecycle rules for an archive destination: pure builders from an ArchivePolicy's tiers
//! and expiry to S3 `LifecycleRule`s and GCS lifecycle JSON, plus merge-and-apply calls.
//!
//! Ages are object ages (days since the archive file was written, which S3 and GCS count), so an
//! event is at least `hot retention + age` old when a rule acts on it. Validation refuses expiry
//! at or before the hot retention or the last tier, and expiry without a prefix (it would expire
//! the whole bucket). S3 rules are identified by id `allsource-<policy>-archive`; GCS rules have no
//! id and are identified by `matchesPrefix == [<prefix>/]`. Applying reads the bucket's rules,
//! keeps every rule it does not own, replaces its own, and writes nothing when nothing changed.
//! This module must never delete or change a rule it does not own.

use serde_json::{json, Value};

use crate::objstore::{GcsStore, Provider};
use crate::{ArchiveError, ArchiveResult};

/// S3 storage classes a tier may move to.
pub const S3_CLASSES: &[&str] = &[
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
];
/// GCS storage classes a tier may move to.
pub const GCS_CLASSES: &[&str] = &["NEARLINE", "COLDLINE", "ARCHIVE"];
/// Days after which an unfinished S3 multipart upload is aborted.
pub const ABORT_MULTIPART_DAYS: i32 = 2;

/// A storage-class transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Object age in days.
    pub after_days: u32,
    /// Target storage class.
    pub storage_class: String,
}

/// The lifecycle wanted for one ArchivePolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleSpec {
    /// ArchivePolicy name (rule ids are derived from it).
    pub policy: String,
    /// Destination prefix (without trailing `/`).
    pub prefix: String,
    /// Hot retention of the store, in days (rounded up).
    pub hot_retention_days: u32,
    /// Transitions, by increasing age.
    pub tiers: Vec<Tier>,
    /// Object age at which archive files are deleted.
    pub expire_after_days: Option<u32>,
}

/// Whole days of a duration, rounded up.
pub fn days_ceil(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_secs().div_ceil(86_400)).unwrap_or(u32::MAX)
}

impl LifecycleSpec {
    /// The prefix rules match (`<prefix>/`, or empty for the whole bucket).
    pub fn match_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix.trim_matches('/'))
        }
    }

    /// Id of the S3 rule this policy owns.
    pub fn rule_id(&self) -> String {
        format!("allsource-{}-archive", self.policy)
    }

    /// Checks the spec for `provider`.
    pub fn validate(&self, provider: Provider) -> ArchiveResult<()> {
        let bad = |m: String| Err(ArchiveError::Lifecycle(m));
        let classes = match provider {
            Provider::S3 => S3_CLASSES,
            Provider::Gcs => GCS_CLASSES,
        };
        let mut last = 0u32;
        for t in &self.tiers {
            if !classes.contains(&t.storage_class.as_str()) {
                return bad(format!(
                    "storage class {} is not one of {}",
                    t.storage_class,
                    classes.join(", ")
                ));
            }
            if t.after_days == 0 || t.after_days <= last {
                return bad(format!(
                    "tier {} after {} days: tiers need increasing ages of at least 1 day",
                    t.storage_class, t.after_days
                ));
            }
            last = t.after_days;
        }
        if let Some(exp) = self.expire_after_days {
            if exp <= last {
                return bad(format!(
                    "expireAfter ({exp} days) must exceed the last tier ({last} days)"
                ));
            }
            if exp <= self.hot_retention_days {
                return bad(format!(
                    "expireAfter ({exp} days) must exceed the hot retention ({} days)",
                    self.hot_retention_days
                ));
            }
            if self.prefix.trim_matches('/').is_empty() {
                return bad(
                    "expireAfter needs a destination prefix: it would expire the whole bucket"
                        .into(),
                );
            }
        }
        if self.policy.is_empty() || self.policy.len() > 200 {
            return bad("policy name must be 1-200 characters".into());
        }
        Ok(())
    }
}

/// The S3 rule of a policy, or None when it has neither tiers nor expiry (but an abort rule for
/// unfinished multipart uploads is always included when there is a rule).
pub fn s3_rules(spec: &LifecycleSpec) -> ArchiveResult<Vec<aws_sdk_s3::types::LifecycleRule>> {
    use aws_sdk_s3::types::{
        AbortIncompleteMultipartUpload, ExpirationStatus, LifecycleExpiration, LifecycleRule,
        LifecycleRuleFilter, Transition, TransitionStorageClass,
    };
    spec.validate(Provider::S3)?;
    if spec.tiers.is_empty() && spec.expire_after_days.is_none() {
        return Ok(Vec::new());
    }
    let days = |d: u32| i32::try_from(d).unwrap_or(i32::MAX);
    let mut rule = LifecycleRule::builder()
        .id(spec.rule_id())
        .status(ExpirationStatus::Enabled)
        .filter(
            LifecycleRuleFilter::builder()
                .prefix(spec.match_prefix())
                .build(),
        )
        .abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(ABORT_MULTIPART_DAYS)
                .build(),
        );
    for t in &spec.tiers {
        rule = rule.transitions(
            Transition::builder()
                .days(days(t.after_days))
                .storage_class(TransitionStorageClass::from(t.storage_class.as_str()))
                .build(),
        );
    }
    if let Some(exp) = spec.expire_after_days {
        rule = rule.expiration(LifecycleExpiration::builder().days(days(exp)).build());
    }
    let rule = rule
        .build()
        .map_err(|e| ArchiveError::Lifecycle(e.to_string()))?;
    Ok(vec![rule])
}

/// True when the S3 rule belongs to `policy`: its id is exactly the policy's rule id (a prefix
/// match would let policy `a` claim the rule of policy `a-b`).
pub fn owns_s3_rule(policy: &str, rule: &aws_sdk_s3::types::LifecycleRule) -> bool {
    rule.id() == Some(format!("allsource-{policy}-archive").as_str())
}

/// Merges: every existing rule not owned by `policy`, then `ours`.
pub fn merge_s3_rules(
    policy: &str,
    existing: &[aws_sdk_s3::types::LifecycleRule],
    ours: &[aws_sdk_s3::types::LifecycleRule],
) -> Vec<aws_sdk_s3::types::LifecycleRule> {
    existing
        .iter()
        .filter(|r| !owns_s3_rule(policy, r))
        .chain(ours)
        .cloned()
        .collect()
}

/// Reads the bucket's rules, replaces the ones `policy` owns by `ours` (an empty `ours` removes
/// them) and writes the result if it differs. Returns true when it wrote.
pub async fn apply_s3_lifecycle(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    policy: &str,
    ours: Vec<aws_sdk_s3::types::LifecycleRule>,
) -> ArchiveResult<bool> {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    use aws_sdk_s3::types::BucketLifecycleConfiguration;
    let err = |op: &'static str, m: String| ArchiveError::ObjectStore {
        op,
        key: bucket.to_string(),
        message: m,
    };
    let existing = match client
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(o) => o.rules().to_vec(),
        Err(e) if e.code() == Some("NoSuchLifecycleConfiguration") => Vec::new(),
        Err(e) => {
            return Err(err(
                "get lifecycle",
                aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
            ))
        }
    };
    let merged = merge_s3_rules(policy, &existing, &ours);
    let by_id = |v: &[aws_sdk_s3::types::LifecycleRule]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.id().cmp(&b.id()));
        v
    };
    if by_id(&merged) == by_id(&existing) {
        return Ok(false);
    }
    if merged.is_empty() {
        client
            .delete_bucket_lifecycle()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| {
                err(
                    "delete lifecycle",
                    aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
                )
            })?;
        return Ok(true);
    }
    let conf = BucketLifecycleConfiguration::builder()
        .set_rules(Some(merged))
        .build()
        .map_err(|e| ArchiveError::Lifecycle(e.to_string()))?;
    client
        .put_bucket_lifecycle_configuration()
        .bucket(bucket)
        .lifecycle_configuration(conf)
        .send()
        .await
        .map_err(|e| {
            err(
                "put lifecycle",
                aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
            )
        })?;
    Ok(true)
}

/// GCS lifecycle rules (JSON API `lifecycle.rule[]` entries) of a policy.
pub fn gcs_rules(spec: &LifecycleSpec) -> ArchiveResult<Vec<Value>> {
    spec.validate(Provider::Gcs)?;
    let prefix = spec.match_prefix();
    let condition = |age: u32| {
        if prefix.is_empty() {
            json!({ "age": age })
        } else {
            json!({ "age": age, "matchesPrefix": [prefix] })
        }
    };
    let mut rules: Vec<Value> = spec
        .tiers
        .iter()
        .map(|t| {
            json!({
                "action": { "type": "SetStorageClass", "storageClass": t.storage_class },
                "condition": condition(t.after_days),
            })
        })
        .collect();
    if let Some(exp) = spec.expire_after_days {
        rules.push(json!({ "action": { "type": "Delete" }, "condition": condition(exp) }));
    }
    Ok(rules)
}

/// True when a GCS rule belongs to the policy with this match prefix.
fn owns_gcs_rule(match_prefix: &str, rule: &Value) -> bool {
    let mp = &rule["condition"]["matchesPrefix"];
    if match_prefix.is_empty() {
        return mp.is_null();
    }
    mp.as_array()
        .is_some_and(|a| a.len() == 1 && a[0].as_str() == Some(match_prefix))
}

/// The bucket PATCH body that keeps the existing rules not owned by this prefix and adds `ours`.
pub fn merge_gcs_lifecycle(bucket: &Value, match_prefix: &str, ours: Vec<Value>) -> Value {
    let mut rules: Vec<Value> = bucket["lifecycle"]["rule"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| !owns_gcs_rule(match_prefix, r))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    rules.extend(ours);
    json!({ "lifecycle": { "rule": rules } })
}

/// Merges and PATCHes the GCS bucket lifecycle. Returns true when it wrote. Not verifiable
/// locally: fake-gcs-server accepts the PATCH but drops `lifecycle`.
pub async fn apply_gcs_lifecycle(store: &GcsStore, spec: &LifecycleSpec) -> ArchiveResult<bool> {
    let ours = gcs_rules(spec)?;
    let bucket = store.get_bucket().await?;
    let body = merge_gcs_lifecycle(&bucket, &spec.match_prefix(), ours);
    let current = bucket["lifecycle"]["rule"].clone();
    let current = if current.is_null() {
        json!([])
    } else {
        current
    };
    if body["lifecycle"]["rule"] == current {
        return Ok(false);
    }
    store.patch_bucket(&body).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LifecycleSpec {
        LifecycleSpec {
            policy: "nightly".into(),
            prefix: "archive/es1".into(),
            hot_retention_days: 30,
            tiers: vec![
                Tier {
                    after_days: 30,
                    storage_class: "STANDARD_IA".into(),
                },
                Tier {
                    after_days: 90,
                    storage_class: "GLACIER".into(),
                },
            ],
            expire_after_days: Some(365),
        }
    }

    #[test]
    fn builds_s3_rule() {
        let rules = s3_rules(&spec()).unwrap();
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!(r.id(), Some("allsource-nightly-archive"));
        assert_eq!(r.filter().and_then(|f| f.prefix()), Some("archive/es1/"));
        let t: Vec<_> = r
            .transitions()
            .iter()
            .map(|t| (t.days(), t.storage_class().map(|c| c.as_str().to_string())))
            .collect();
        assert_eq!(
            t,
            vec![
                (Some(30), Some("STANDARD_IA".to_string())),
                (Some(90), Some("GLACIER".to_string()))
            ]
        );
        assert_eq!(r.expiration().and_then(|e| e.days()), Some(365));
        let mut none = spec();
        none.tiers.clear();
        none.expire_after_days = None;
        assert!(s3_rules(&none).unwrap().is_empty());
    }

    #[test]
    fn validation_refuses_early_expiry() {
        let mut s = spec();
        s.expire_after_days = Some(60);
        assert!(s.validate(Provider::S3).is_err(), "expiry before last tier");
        s.tiers.clear();
        s.expire_after_days = Some(30);
        assert!(s.validate(Provider::S3).is_err(), "expiry at hot retention");
        s.expire_after_days = Some(31);
        assert!(s.validate(Provider::S3).is_ok());
        s.prefix = String::new();
        assert!(s.validate(Provider::S3).is_err(), "expiry of whole bucket");
        let mut c = spec();
        c.tiers[0].storage_class = "NEARLINE".into();
        assert!(c.validate(Provider::S3).is_err());
        let mut o = spec();
        o.tiers.swap(0, 1);
        assert!(o.validate(Provider::S3).is_err(), "decreasing tiers");
        assert!(gcs_rules(&spec()).is_err(), "S3 classes on GCS");
    }

    #[test]
    fn merges_s3_rules_keeping_foreign_ones() {
        use aws_sdk_s3::types::{ExpirationStatus, LifecycleRule};
        let foreign = LifecycleRule::builder()
            .id("team-logs")
            .status(ExpirationStatus::Enabled)
            .build()
            .unwrap();
        let old_ours = LifecycleRule::builder()
            .id("allsource-nightly-archive")
            .status(ExpirationStatus::Disabled)
            .build()
            .unwrap();
        let other_policy = LifecycleRule::builder()
            .id("allsource-weekly-archive")
            .status(ExpirationStatus::Enabled)
            .build()
            .unwrap();
        let ours = s3_rules(&spec()).unwrap();
        let merged = merge_s3_rules(
            "nightly",
            &[foreign.clone(), old_ours, other_policy.clone()],
            &ours,
        );
        assert_eq!(merged, vec![foreign, other_policy, ours[0].clone()]);
    }

    #[test]
    fn builds_and_merges_gcs_json() {
        let mut s = spec();
        s.tiers[0].storage_class = "NEARLINE".into();
        s.tiers[1].storage_class = "ARCHIVE".into();
        let rules = gcs_rules(&s).unwrap();
        assert_eq!(
            Value::Array(rules.clone()),
            json!([
                {"action": {"type": "SetStorageClass", "storageClass": "NEARLINE"},
                 "condition": {"age": 30, "matchesPrefix": ["archive/es1/"]}},
                {"action": {"type": "SetStorageClass", "storageClass": "ARCHIVE"},
                 "condition": {"age": 90, "matchesPrefix": ["archive/es1/"]}},
                {"action": {"type": "Delete"},
                 "condition": {"age": 365, "matchesPrefix": ["archive/es1/"]}},
            ])
        );
        let foreign = json!({"action": {"type": "Delete"}, "condition": {"age": 7, "matchesPrefix": ["tmp/"]}});
        let stale = json!({"action": {"type": "Delete"}, "condition": {"age": 10, "matchesPrefix": ["archive/es1/"]}});
        let bucket = json!({"name": "b", "lifecycle": {"rule": [foreign.clone(), stale]}});
        let body = merge_gcs_lifecycle(&bucket, "archive/es1/", rules.clone());
        let mut want = vec![foreign];
        want.extend(rules);
        assert_eq!(body, json!({"lifecycle": {"rule": want}}));
    }

    #[test]
    fn days_round_up() {
        assert_eq!(days_ceil(std::time::Duration::from_secs(86_400)), 1);
        assert_eq!(days_ceil(std::time::Duration::from_secs(86_401)), 2);
        assert_eq!(days_ceil(std::time::Duration::from_secs(720 * 3600)), 30);
    }

    #[test]
    fn a_policy_never_claims_the_rule_of_a_policy_whose_name_it_prefixes() {
        let rule = |id: &str| {
            aws_sdk_s3::types::LifecycleRule::builder()
                .id(id)
                .status(aws_sdk_s3::types::ExpirationStatus::Enabled)
                .filter(
                    aws_sdk_s3::types::LifecycleRuleFilter::builder()
                        .prefix("p/")
                        .build(),
                )
                .build()
                .unwrap()
        };
        assert!(owns_s3_rule("x-a", &rule("allsource-x-a-archive")));
        assert!(!owns_s3_rule("x-a", &rule("allsource-x-a-b-archive")));
        assert!(!owns_s3_rule("x-a-b", &rule("allsource-x-a-archive")));
        assert!(!owns_s3_rule("x-a", &rule("allsource-x-a-archive-old")));
    }
}
