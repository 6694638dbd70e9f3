//! Checks an ArchivePolicy beyond what the CRD schema and its CEL rules can: the cron expression
//! and the IANA time zone parse, the hot retention parses, and the bucket lifecycle (tiers,
//! expireAfter) is valid for the destination's provider (storage classes per provider, strictly
//! increasing ages, no expiry inside the hot window or of a whole bucket), using the archiver's own
//! rules in `allsource_objstore::lifecycle`. The CRD's CEL rules repeat the cheap checks so the
//! apiserver refuses most mistakes; this is the second line for apiservers without CEL and for the
//! checks CEL cannot express. Pure: it must never do I/O.

use allsource_core::duration::parse_duration;
use allsource_objstore::lifecycle::{days_ceil, LifecycleSpec, Tier};
use allsource_objstore::objstore::Provider;
use kube::ResourceExt;

use super::schedule::Schedule;
use crate::api::ArchivePolicy;

/// What a valid policy resolves to.
#[derive(Debug, Clone)]
pub struct Valid {
    /// The schedule in its time zone.
    pub schedule: Schedule,
    /// The destination's provider.
    pub provider: Provider,
    /// The bucket.
    pub bucket: String,
    /// The lifecycle the policy wants on the bucket.
    pub lifecycle: LifecycleSpec,
}

/// Name the policy's lifecycle rules are derived from: `<namespace>.<name>`, so that two policies
/// of the same name in different namespaces writing to one bucket never claim each other's rule.
pub fn lifecycle_owner(p: &ArchivePolicy) -> String {
    // A namespace is a DNS label (no dot): `<namespace>.<name>` can never be the owner of
    // another policy (with `-`, namespace `x` policy `a-b` and namespace `x-a` policy `b` clash).
    format!("{}.{}", p.namespace().unwrap_or_default(), p.name_any())
}

/// Days of a `<n>d` field.
fn days(field: &str, v: &str) -> Result<u32, String> {
    v.strip_suffix('d')
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| format!("{field} {v:?}: expected days, e.g. 90d"))
}

/// Validates `p` and resolves what the controller needs; the error is a message for the
/// Degraded condition (the spec must change before the policy can work).
pub fn validate(p: &ArchivePolicy) -> Result<Valid, String> {
    let s = &p.spec;
    let schedule = Schedule::parse(&s.schedule, &s.time_zone).map_err(|e| e.to_string())?;
    let hot = parse_duration(&s.hot_retention).map_err(|e| format!("hotRetention: {e}"))?;
    let (provider, bucket, prefix) = match (&s.destination.s3, &s.destination.gcs) {
        (Some(d), None) => (Provider::S3, d.bucket.clone(), d.prefix.clone()),
        (None, Some(d)) => (Provider::Gcs, d.bucket.clone(), d.prefix.clone()),
        _ => return Err("destination needs exactly one of s3 or gcs".into()),
    };
    let tiers = s
        .tiers
        .iter()
        .map(|t| {
            Ok(Tier {
                after_days: days("tier after", &t.after)?,
                storage_class: t.storage_class.clone(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let lifecycle = LifecycleSpec {
        policy: lifecycle_owner(p),
        prefix: prefix.trim_matches('/').to_string(),
        hot_retention_days: days_ceil(hot),
        tiers,
        expire_after_days: s
            .expire_after
            .as_deref()
            .map(|v| days("expireAfter", v))
            .transpose()?,
    };
    lifecycle.validate(provider).map_err(|e| e.to_string())?;
    Ok(Valid {
        schedule,
        provider,
        bucket,
        lifecycle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ArchivePolicySpec;

    fn policy(dest: serde_json::Value, tiers: serde_json::Value) -> ArchivePolicy {
        let spec: ArchivePolicySpec = serde_json::from_value(serde_json::json!({
            "eventStoreRef": {"name": "orders"},
            "schedule": "0 2 * * *",
            "timeZone": "Europe/Berlin",
            "hotRetention": "30d",
            "destination": dest,
            "tiers": tiers,
            "expireAfter": "3650d",
        }))
        .unwrap();
        let mut p = ArchivePolicy::new("nightly", spec);
        p.metadata.namespace = Some("team-a".into());
        p
    }

    #[test]
    fn resolves_the_lifecycle_of_a_valid_policy() {
        let p = policy(
            serde_json::json!({"s3": {"bucket": "arch", "prefix": "/orders/"}}),
            serde_json::json!([{"after": "90d", "storageClass": "GLACIER_IR"},
                               {"after": "365d", "storageClass": "DEEP_ARCHIVE"}]),
        );
        let v = validate(&p).unwrap();
        assert_eq!(v.provider, Provider::S3);
        assert_eq!(v.bucket, "arch");
        assert_eq!(v.lifecycle.policy, "team-a.nightly");
        assert_eq!(v.lifecycle.prefix, "orders");
        assert_eq!(v.lifecycle.hot_retention_days, 30);
        assert_eq!(v.lifecycle.tiers[1].after_days, 365);
        assert_eq!(v.lifecycle.expire_after_days, Some(3650));
    }

    #[test]
    fn refuses_classes_of_the_other_provider_and_bad_zones() {
        let p = policy(
            serde_json::json!({"gcs": {"bucket": "arch", "prefix": "orders"}}),
            serde_json::json!([{"after": "90d", "storageClass": "GLACIER"}]),
        );
        assert!(validate(&p).unwrap_err().contains("storage class GLACIER"));
        let mut p = policy(
            serde_json::json!({"gcs": {"bucket": "arch", "prefix": "orders"}}),
            serde_json::json!([{"after": "90d", "storageClass": "COLDLINE"}]),
        );
        assert!(validate(&p).is_ok());
        p.spec.time_zone = "Europe/Atlantis".into();
        assert!(validate(&p).unwrap_err().contains("timeZone"));
    }

    #[test]
    fn refuses_expiry_of_a_whole_bucket() {
        let p = policy(
            serde_json::json!({"s3": {"bucket": "arch"}}),
            serde_json::json!([]),
        );
        assert!(validate(&p).unwrap_err().contains("prefix"));
    }
}
