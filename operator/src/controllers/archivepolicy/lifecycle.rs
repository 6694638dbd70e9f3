//! Bucket lifecycle of an ArchivePolicy's destination, from the operator process: reads the
//! destination's credentials Secret, connects to S3 (aws-sdk-s3, endpoint override, path style) or
//! GCS (JSON API), and applies or removes the policy's own rules through the archiver's
//! merge-and-apply functions in `allsource_objstore::lifecycle` (S3 rules by id
//! `allsource-<namespace>.<policy>-archive`, GCS rules by `matchesPrefix == [<prefix>/]`), which
//! keep every rule the policy does not own and write nothing when the bucket already matches.
//! [`desired_hash`] lets the controller skip bucket calls entirely in the steady state. This
//! module must never touch objects in the bucket, only its lifecycle configuration.

use std::time::Duration;

use allsource_objstore::lifecycle::{self, LifecycleSpec};
use allsource_objstore::objstore::{self, ConnectOptions, GcsAuth, GcsStore, Provider};
use allsource_objstore::ArchiveError;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use sha2::{Digest, Sha256};

use super::validate::Valid;
use crate::api::ArchivePolicy;

/// Secret keys of S3 credentials (the same the archiver pod gets through envFrom).
pub const S3_ACCESS_KEY: &str = "AWS_ACCESS_KEY_ID";
/// Secret key of the S3 secret access key.
pub const S3_SECRET_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// Secret key of a GCS OAuth2 bearer token.
pub const GCS_TOKEN_KEY: &str = "GCS_OAUTH_TOKEN";
/// Longest a bucket call may take before the reconcile reports the bucket unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the lifecycle could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The credentials Secret could not be read.
    #[error("credentials Secret {name}: {source}")]
    Secret {
        /// Secret name.
        name: String,
        /// API error.
        source: kube::Error,
    },
    /// The credentials Secret lacks a key.
    #[error("credentials Secret {name} has no key {key}")]
    MissingKey {
        /// Secret name.
        name: String,
        /// Missing key.
        key: &'static str,
    },
    /// The bucket API refused or failed.
    #[error("bucket {bucket}: {source}")]
    Bucket {
        /// Bucket name.
        bucket: String,
        /// What the object store said.
        source: ArchiveError,
    },
    /// The bucket did not answer in time.
    #[error("bucket {0}: no answer within 30s")]
    Timeout(String),
}

impl LifecycleError {
    /// True when the credentials Secret does not exist (cleanup then gives up on the bucket).
    pub fn secret_missing(&self) -> bool {
        matches!(self, LifecycleError::Secret { source: kube::Error::Api(e), .. } if e.code == 404)
    }
}

/// Hash of everything that decides the bucket's rules for this policy: provider, endpoint,
/// bucket, prefix, tiers, expiry. Equal hashes mean the bucket needs no call.
pub fn desired_hash(p: &ArchivePolicy, v: &Valid) -> String {
    let endpoint = match v.provider {
        Provider::S3 => p
            .spec
            .destination
            .s3
            .as_ref()
            .and_then(|d| d.endpoint.clone()),
        Provider::Gcs => p
            .spec
            .destination
            .gcs
            .as_ref()
            .and_then(|d| d.endpoint.clone()),
    };
    let text = format!(
        "{:?}|{:?}|{}|{:?}",
        v.provider, endpoint, v.bucket, v.lifecycle
    );
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn secret_value(s: &Secret, name: &str, key: &'static str) -> Result<String, LifecycleError> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .or_else(|| {
            s.string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| v.trim().to_string())
        })
        .ok_or_else(|| LifecycleError::MissingKey {
            name: name.to_string(),
            key,
        })
}

async fn read_secret(client: &Client, ns: &str, name: &str) -> Result<Secret, LifecycleError> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|source| LifecycleError::Secret {
            name: name.to_string(),
            source,
        })
}

/// How the operator connects to the policy's S3 destination (its credentials Secret's keys, or
/// the pod's own identity without one).
pub(super) async fn s3_options(
    client: &Client,
    ns: &str,
    p: &ArchivePolicy,
) -> Result<ConnectOptions, LifecycleError> {
    let d = p.spec.destination.s3.clone().unwrap_or_default();
    let creds = match &d.credentials_secret_ref {
        Some(r) => {
            let s = read_secret(client, ns, &r.name).await?;
            Some((
                secret_value(&s, &r.name, S3_ACCESS_KEY)?,
                secret_value(&s, &r.name, S3_SECRET_KEY)?,
            ))
        }
        None => None,
    };
    Ok(ConnectOptions {
        endpoint: d.endpoint.clone(),
        region: d.region.clone(),
        force_path_style: d.force_path_style,
        s3_static_credentials: creds,
        gcs_auth: GcsAuth::Anonymous,
    })
}

/// How the operator authenticates to the policy's GCS destination (a token from its credentials
/// Secret, or the metadata server without one).
pub(super) async fn gcs_auth(
    client: &Client,
    ns: &str,
    p: &ArchivePolicy,
) -> Result<GcsAuth, LifecycleError> {
    let d = p.spec.destination.gcs.clone().unwrap_or_default();
    Ok(match &d.credentials_secret_ref {
        Some(r) => {
            let s = read_secret(client, ns, &r.name).await?;
            GcsAuth::Token(secret_value(&s, &r.name, GCS_TOKEN_KEY)?)
        }
        None => GcsAuth::MetadataServer,
    })
}

/// Puts the policy's rules from `spec` on the bucket (an empty spec removes them), keeping
/// foreign rules. Returns true when the bucket was written.
async fn put(
    client: &Client,
    ns: &str,
    p: &ArchivePolicy,
    v: &Valid,
    spec: &LifecycleSpec,
) -> Result<bool, LifecycleError> {
    let bucket = v.bucket.clone();
    let wrap = |source: ArchiveError| LifecycleError::Bucket {
        bucket: bucket.clone(),
        source,
    };
    let call = async {
        match v.provider {
            Provider::S3 => {
                let opts = s3_options(client, ns, p).await?;
                let s3 = objstore::s3_client(&opts).await;
                let rules = lifecycle::s3_rules(spec).map_err(wrap)?;
                lifecycle::apply_s3_lifecycle(&s3, &v.bucket, &spec.policy, rules)
                    .await
                    .map_err(wrap)
            }
            Provider::Gcs => {
                let d = p.spec.destination.gcs.clone().unwrap_or_default();
                let auth = gcs_auth(client, ns, p).await?;
                let store = GcsStore::new(&v.bucket, d.endpoint.as_deref(), auth).map_err(wrap)?;
                lifecycle::apply_gcs_lifecycle(&store, spec)
                    .await
                    .map_err(wrap)
            }
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| LifecycleError::Timeout(v.bucket.clone()))?
}

/// Applies the policy's lifecycle rules; true when the bucket was written.
pub async fn apply(
    client: &Client,
    ns: &str,
    p: &ArchivePolicy,
    v: &Valid,
) -> Result<bool, LifecycleError> {
    put(client, ns, p, v, &v.lifecycle).await
}

/// Removes the policy's lifecycle rules (foreign rules stay); true when the bucket was written.
pub async fn remove(
    client: &Client,
    ns: &str,
    p: &ArchivePolicy,
    v: &Valid,
) -> Result<bool, LifecycleError> {
    let none = LifecycleSpec {
        tiers: Vec::new(),
        expire_after_days: None,
        ..v.lifecycle.clone()
    };
    put(client, ns, p, v, &none).await
}
