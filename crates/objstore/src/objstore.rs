//! Object storage behind one small trait, with an S3 implementation (aws-sdk-s3: endpoint
//! override, path-style addressing, static credentials or the default chain, multipart upload for
//! large objects) and a GCS implementation over the GCS JSON API with reqwest (anonymous for
//! fake-gcs-server, a static bearer token, or the GCE/GKE metadata server).
//!
//! Why the JSON API and not the `google-cloud-storage` crate: its `Storage` client needs
//! `google-cloud-auth` and a gRPC stack for the control plane, which fake-gcs-server does not
//! speak; the JSON API is small, is what fake-gcs-server implements best, and keeps one HTTP
//! client in the binary. This module moves bytes only: it must never interpret object contents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Mutex;

use crate::{ArchiveError, ArchiveResult};

/// Size above which S3 uploads use multipart upload.
pub const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;
/// Part size of S3 multipart uploads (S3 minimum is 5 MiB).
pub const MULTIPART_PART_SIZE: usize = 8 * 1024 * 1024;

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Full key inside the bucket.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time (ms since the epoch), when the provider lists it.
    pub modified_ms: Option<i64>,
}

/// An object read together with the version a conditional write can be made against (the S3
/// ETag or the GCS generation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The object's bytes.
    pub body: Bytes,
    /// Opaque version of exactly these bytes.
    pub version: String,
}

/// The precondition of [`ObjectStore::put_if`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    /// Only if no object exists under the key (S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`).
    Absent,
    /// Only if the object is still at this version (S3 `If-Match`, GCS `ifGenerationMatch`).
    Version(String),
}

/// The operations the archiver needs from a bucket. Keys are full keys inside the bucket.
/// A `put` replaces the object atomically (readers see the old or the new object, never a mix).
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Writes (or overwrites) an object.
    async fn put(&self, key: &str, body: Bytes) -> ArchiveResult<()>;
    /// Reads a whole object; [`ArchiveError::NotFound`] when absent.
    async fn get(&self, key: &str) -> ArchiveResult<Bytes>;
    /// Size of an object, or None when absent.
    async fn head(&self, key: &str) -> ArchiveResult<Option<u64>>;
    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> ArchiveResult<Vec<ObjectMeta>>;
    /// Deletes an object; deleting an absent object is not an error.
    async fn delete(&self, key: &str) -> ArchiveResult<()>;
    /// Reads an object with its version, or None when absent.
    async fn get_versioned(&self, key: &str) -> ArchiveResult<Option<Versioned>>;
    /// Writes an object only if `cond` holds at the server, atomically; returns the new version,
    /// or `None` when the condition did not hold (another writer got there first). Small objects
    /// only (no multipart).
    async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        cond: &PutCondition,
    ) -> ArchiveResult<Option<String>>;
    /// The bucket name (for reports and manifests).
    fn bucket(&self) -> &str;
}

/// Which provider a destination lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Amazon S3 or an S3-compatible server.
    S3,
    /// Google Cloud Storage.
    Gcs,
}

/// A parsed destination: `s3://bucket/prefix` or `gs://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Provider.
    pub provider: Provider,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl Destination {
    /// Parses `s3://bucket[/prefix]` or `gs://bucket[/prefix]`.
    pub fn parse(url: &str) -> ArchiveResult<Self> {
        let (provider, rest) = if let Some(r) = url.strip_prefix("s3://") {
            (Provider::S3, r)
        } else if let Some(r) = url.strip_prefix("gs://") {
            (Provider::Gcs, r)
        } else {
            return Err(ArchiveError::Config(format!(
                "destination {url:?} must start with s3:// or gs://"
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !bucket_ok {
            return Err(ArchiveError::Config(format!(
                "bucket name {bucket:?} must be 3-63 characters of a-z, 0-9, '-', '.', '_'"
            )));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|s| s == "." || s == "..") {
            return Err(ArchiveError::Config(format!(
                "prefix {prefix:?} must not contain '.' or '..' segments"
            )));
        }
        Ok(Self {
            provider,
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// Joins the prefix and a relative key.
    pub fn key(&self, relative: &str) -> String {
        if self.prefix.is_empty() {
            relative.to_string()
        } else {
            format!("{}/{}", self.prefix, relative)
        }
    }

    /// The destination as a URL.
    pub fn url(&self) -> String {
        let scheme = match self.provider {
            Provider::S3 => "s3",
            Provider::Gcs => "gs",
        };
        if self.prefix.is_empty() {
            format!("{scheme}://{}", self.bucket)
        } else {
            format!("{scheme}://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// How to reach and authenticate against the object store; every field optional.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Endpoint override (moto, MinIO, fake-gcs-server, a private endpoint).
    pub endpoint: Option<String>,
    /// S3 region (default: the SDK chain, else us-east-1).
    pub region: Option<String>,
    /// S3 path-style addressing (needed by most S3-compatible servers).
    pub force_path_style: bool,
    /// S3 static access key id and secret (else the default credential chain).
    pub s3_static_credentials: Option<(String, String)>,
    /// GCS authentication.
    pub gcs_auth: GcsAuth,
}

/// Opens the object store of a destination.
pub async fn connect(
    dest: &Destination,
    opts: &ConnectOptions,
) -> ArchiveResult<Arc<dyn ObjectStore>> {
    Ok(match dest.provider {
        Provider::S3 => Arc::new(S3Store::connect(&dest.bucket, opts).await),
        Provider::Gcs => Arc::new(GcsStore::new(
            &dest.bucket,
            opts.endpoint.as_deref(),
            opts.gcs_auth.clone(),
        )?),
    })
}

fn store_err(op: &'static str, key: &str, e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::ObjectStore {
        op,
        key: key.to_string(),
        message: e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// S3

/// An S3 bucket through aws-sdk-s3.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

/// Builds an S3 client from connection options (shared with [`crate::lifecycle`]).
pub async fn s3_client(opts: &ConnectOptions) -> aws_sdk_s3::Client {
    use aws_config::meta::region::RegionProviderChain;
    use aws_sdk_s3::config::Region;

    let region = RegionProviderChain::first_try(opts.region.clone().map(Region::new))
        .or_default_provider()
        .or_else(Region::new("us-east-1"));
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).region(region);
    if let Some(ep) = &opts.endpoint {
        loader = loader.endpoint_url(ep);
    }
    if let Some((ak, sk)) = &opts.s3_static_credentials {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            ak.clone(),
            sk.clone(),
            None,
            None,
            "allsource-static",
        ));
    }
    let sdk = loader.load().await;
    let conf = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(opts.force_path_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

impl S3Store {
    /// Connects to `bucket` with the given options.
    pub async fn connect(bucket: &str, opts: &ConnectOptions) -> Self {
        Self::from_client(s3_client(opts).await, bucket)
    }

    /// Wraps an existing client.
    pub fn from_client(client: aws_sdk_s3::Client, bucket: &str) -> Self {
        Self {
            client,
            bucket: bucket.to_string(),
        }
    }

    /// The underlying SDK client.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    async fn put_multipart(&self, key: &str, body: Bytes) -> ArchiveResult<()> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let ctx = |e| store_err("put (multipart)", key, e);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| ctx(sdk_msg(e)))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| ctx("no upload id in CreateMultipartUpload answer".into()))?
            .to_string();
        let mut parts = Vec::new();
        let result: ArchiveResult<()> = async {
            for (i, start) in (0..body.len()).step_by(MULTIPART_PART_SIZE).enumerate() {
                let end = (start + MULTIPART_PART_SIZE).min(body.len());
                let number = i32::try_from(i + 1).map_err(|e| ctx(e.to_string()))?;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(body.slice(start..end).into())
                    .send()
                    .await
                    .map_err(|e| ctx(sdk_msg(e)))?;
                parts.push(
                    CompletedPart::builder()
                        .set_e_tag(part.e_tag().map(str::to_string))
                        .part_number(number)
                        .build(),
                );
            }
            let done = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await;
            match done {
                Ok(_) => Ok(()),
                // Some S3-compatible servers (moto) answer 200 with a body the SDK cannot
                // parse; the upload did complete, so confirm it by size. The archiver's verify
                // step re-reads and checksums every object anyway.
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 200) => {
                    match self.head(key).await? {
                        Some(size) if size == body.len() as u64 => Ok(()),
                        other => Err(ctx(format!(
                            "completion answer unreadable and object size is {other:?}: {}",
                            sdk_msg(e)
                        ))),
                    }
                }
                Err(e) => Err(ctx(sdk_msg(e))),
            }
        }
        .await;
        if result.is_err() {
            // Best effort: an abandoned upload only costs storage until the bucket's
            // AbortIncompleteMultipartUpload rule (or an operator) removes it.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

fn sdk_msg<E: std::error::Error + 'static>(e: E) -> String {
    aws_sdk_s3::error::DisplayErrorContext(e).to_string()
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes) -> ArchiveResult<()> {
        if body.len() > MULTIPART_THRESHOLD {
            return self.put_multipart(key, body).await;
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body.into())
            .send()
            .await
            .map_err(|e| store_err("put", key, sdk_msg(e)))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> ArchiveResult<Bytes> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    return Err(ArchiveError::NotFound(key.to_string()));
                }
                return Err(store_err("get", key, sdk_msg(e)));
            }
        };
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| store_err("get", key, e))?;
        Ok(data.into_bytes())
    }

    async fn head(&self, key: &str) -> ArchiveResult<Option<u64>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => Ok(Some(
                o.content_length()
                    .and_then(|l| u64::try_from(l).ok())
                    .unwrap_or(0),
            )),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(store_err("head", key, sdk_msg(e))),
        }
    }

    async fn list(&self, prefix: &str) -> ArchiveResult<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| store_err("list", prefix, sdk_msg(e)))?;
            for o in page.contents() {
                if let Some(key) = o.key() {
                    out.push(ObjectMeta {
                        key: key.to_string(),
                        size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                        modified_ms: o.last_modified().and_then(|t| t.to_millis().ok()),
                    });
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> ArchiveResult<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| store_err("delete", key, sdk_msg(e)))?;
        Ok(())
    }

    async fn get_versioned(&self, key: &str) -> ArchiveResult<Option<Versioned>> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(store_err("get", key, sdk_msg(e))),
        };
        let Some(version) = out.e_tag().map(str::to_string) else {
            return Err(store_err("get", key, "the answer carries no ETag"));
        };
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| store_err("get", key, e))?
            .into_bytes();
        Ok(Some(Versioned { body, version }))
    }

    async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        cond: &PutCondition,
    ) -> ArchiveResult<Option<String>> {
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body.into());
        let req = match cond {
            PutCondition::Absent => req.if_none_match("*"),
            PutCondition::Version(etag) => req.if_match(etag),
        };
        match req.send().await {
            Ok(out) => match out.e_tag() {
                Some(etag) => Ok(Some(etag.to_string())),
                None => Err(store_err(
                    "conditional put",
                    key,
                    "the answer carries no ETag",
                )),
            },
            // 412 Precondition Failed; 409 ConditionalRequestConflict (a concurrent write won).
            Err(e)
                if matches!(
                    e.raw_response().map(|r| r.status().as_u16()),
                    Some(412 | 409)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(store_err("conditional put", key, sdk_msg(e))),
        }
    }

    fn bucket(&self) -> &str {
        &self.bucket
    }
}

// ---------------------------------------------------------------------------------------------
// GCS

/// Public endpoint of the GCS JSON API.
pub const GCS_DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
const GCE_METADATA_TOKEN_URL: &str =
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token";

/// How the GCS client authenticates.
#[derive(Debug, Clone, Default)]
pub enum GcsAuth {
    /// No credentials (fake-gcs-server, public buckets).
    #[default]
    Anonymous,
    /// A fixed OAuth2 bearer token.
    Token(String),
    /// Tokens from the GCE/GKE metadata server (Workload Identity). Not testable locally.
    MetadataServer,
}

/// A GCS bucket through the JSON API.
pub struct GcsStore {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    bucket: String,
    auth: GcsAuth,
    cached_token: Mutex<Option<(String, Instant)>>,
}

#[derive(serde::Deserialize)]
struct GcsList {
    #[serde(default)]
    items: Vec<GcsObject>,
    #[serde(rename = "nextPageToken")]
    next_page_token: Option<String>,
}

#[derive(serde::Deserialize)]
struct GcsObject {
    name: String,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    updated: Option<String>,
    #[serde(default)]
    generation: Option<String>,
}

#[derive(serde::Deserialize)]
struct MetadataToken {
    access_token: String,
    expires_in: u64,
}

impl GcsStore {
    /// A client for `bucket` at `endpoint` (default: the public GCS endpoint).
    pub fn new(bucket: &str, endpoint: Option<&str>, auth: GcsAuth) -> ArchiveResult<Self> {
        let ep = endpoint.unwrap_or(GCS_DEFAULT_ENDPOINT);
        let endpoint = reqwest::Url::parse(ep)
            .map_err(|e| ArchiveError::Config(format!("GCS endpoint {ep:?}: {e}")))?;
        if endpoint.cannot_be_a_base() {
            return Err(ArchiveError::Config(format!(
                "GCS endpoint {ep:?} is not a base URL"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| ArchiveError::Config(format!("http client: {e}")))?;
        Ok(Self {
            http,
            endpoint,
            bucket: bucket.to_string(),
            auth,
            cached_token: Mutex::new(None),
        })
    }

    /// `endpoint` + path segments, each percent-encoded (object names may contain `/`).
    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.endpoint.clone();
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        url
    }

    async fn token(&self) -> ArchiveResult<Option<String>> {
        match &self.auth {
            GcsAuth::Anonymous => Ok(None),
            GcsAuth::Token(t) => Ok(Some(t.clone())),
            GcsAuth::MetadataServer => {
                let mut cached = self.cached_token.lock().await;
                if let Some((t, until)) = cached.as_ref() {
                    if Instant::now() < *until {
                        return Ok(Some(t.clone()));
                    }
                }
                let tok: MetadataToken = self
                    .http
                    .get(GCE_METADATA_TOKEN_URL)
                    .header("Metadata-Flavor", "Google")
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| store_err("token", "metadata server", e))?
                    .json()
                    .await
                    .map_err(|e| store_err("token", "metadata server", e))?;
                let ttl = Duration::from_secs(tok.expires_in.saturating_sub(60));
                *cached = Some((tok.access_token.clone(), Instant::now() + ttl));
                Ok(Some(tok.access_token))
            }
        }
    }

    async fn send(
        &self,
        op: &'static str,
        key: &str,
        req: reqwest::RequestBuilder,
    ) -> ArchiveResult<reqwest::Response> {
        let req = match self.token().await? {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| store_err(op, key, e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(ArchiveError::NotFound(key.to_string()));
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(store_err(op, key, format!("HTTP {status}: {body}")));
        }
        Ok(resp)
    }

    /// Creates the bucket (used by tests and local setups; real buckets come from IaC).
    pub async fn create_bucket(&self, project: &str) -> ArchiveResult<()> {
        let mut url = self.url(&["storage", "v1", "b"]);
        url.query_pairs_mut().append_pair("project", project);
        let body = serde_json::json!({ "name": self.bucket });
        match self
            .send(
                "create bucket",
                &self.bucket,
                self.http.post(url).json(&body),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(ArchiveError::ObjectStore { message, .. }) if message.contains("409") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Patches the bucket's lifecycle configuration (JSON API `PATCH /storage/v1/b/{bucket}`).
    /// fake-gcs-server accepts and drops this field, so it is not verifiable locally.
    pub async fn patch_bucket(&self, body: &serde_json::Value) -> ArchiveResult<()> {
        let url = self.url(&["storage", "v1", "b", &self.bucket]);
        self.send(
            "patch bucket",
            &self.bucket,
            self.http.patch(url).json(body),
        )
        .await?;
        Ok(())
    }

    /// Reads the bucket resource (JSON API `GET /storage/v1/b/{bucket}`).
    pub async fn get_bucket(&self) -> ArchiveResult<serde_json::Value> {
        let url = self.url(&["storage", "v1", "b", &self.bucket]);
        self.send("get bucket", &self.bucket, self.http.get(url))
            .await?
            .json()
            .await
            .map_err(|e| store_err("get bucket", &self.bucket, e))
    }
}

#[async_trait]
impl ObjectStore for GcsStore {
    async fn put(&self, key: &str, body: Bytes) -> ArchiveResult<()> {
        // A simple media upload is a single request: the object appears whole or not at all.
        let mut url = self.url(&["upload", "storage", "v1", "b", &self.bucket, "o"]);
        url.query_pairs_mut()
            .append_pair("uploadType", "media")
            .append_pair("name", key);
        let req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        self.send("put", key, req).await?;
        Ok(())
    }

    async fn get(&self, key: &str) -> ArchiveResult<Bytes> {
        let mut url = self.url(&["storage", "v1", "b", &self.bucket, "o", key]);
        url.query_pairs_mut().append_pair("alt", "media");
        self.send("get", key, self.http.get(url))
            .await?
            .bytes()
            .await
            .map_err(|e| store_err("get", key, e))
    }

    async fn head(&self, key: &str) -> ArchiveResult<Option<u64>> {
        let url = self.url(&["storage", "v1", "b", &self.bucket, "o", key]);
        match self.send("head", key, self.http.get(url)).await {
            Ok(resp) => {
                let o: GcsObject = resp.json().await.map_err(|e| store_err("head", key, e))?;
                Ok(Some(o.size.and_then(|s| s.parse().ok()).unwrap_or(0)))
            }
            Err(ArchiveError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> ArchiveResult<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = self.url(&["storage", "v1", "b", &self.bucket, "o"]);
            url.query_pairs_mut().append_pair("prefix", prefix);
            if let Some(t) = &token {
                url.query_pairs_mut().append_pair("pageToken", t);
            }
            let page: GcsList = self
                .send("list", prefix, self.http.get(url))
                .await?
                .json()
                .await
                .map_err(|e| store_err("list", prefix, e))?;
            out.extend(page.items.into_iter().map(|o| {
                ObjectMeta {
                    size: o.size.and_then(|s| s.parse().ok()).unwrap_or(0),
                    modified_ms: o
                        .updated
                        .and_then(|u| chrono::DateTime::parse_from_rfc3339(&u).ok())
                        .map(|t| t.timestamp_millis()),
                    key: o.name,
                }
            }));
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> ArchiveResult<()> {
        let url = self.url(&["storage", "v1", "b", &self.bucket, "o", key]);
        match self.send("delete", key, self.http.delete(url)).await {
            Ok(_) | Err(ArchiveError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn get_versioned(&self, key: &str) -> ArchiveResult<Option<Versioned>> {
        let mut url = self.url(&["storage", "v1", "b", &self.bucket, "o", key]);
        url.query_pairs_mut().append_pair("alt", "media");
        let resp = match self.send("get", key, self.http.get(url)).await {
            Ok(r) => r,
            Err(ArchiveError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(version) = resp
            .headers()
            .get("x-goog-generation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return Err(store_err(
                "get",
                key,
                "the answer carries no x-goog-generation",
            ));
        };
        let body = resp.bytes().await.map_err(|e| store_err("get", key, e))?;
        Ok(Some(Versioned { body, version }))
    }

    async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        cond: &PutCondition,
    ) -> ArchiveResult<Option<String>> {
        let mut url = self.url(&["upload", "storage", "v1", "b", &self.bucket, "o"]);
        let generation = match cond {
            PutCondition::Absent => "0",
            PutCondition::Version(g) => g.as_str(),
        };
        url.query_pairs_mut()
            .append_pair("uploadType", "media")
            .append_pair("name", key)
            .append_pair("ifGenerationMatch", generation);
        let req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let req = match self.token().await? {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| store_err("conditional put", key, e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::PRECONDITION_FAILED {
            return Ok(None);
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(store_err(
                "conditional put",
                key,
                format!("HTTP {status}: {body}"),
            ));
        }
        let o: GcsObject = resp
            .json()
            .await
            .map_err(|e| store_err("conditional put", key, e))?;
        match o.generation {
            Some(g) => Ok(Some(g)),
            None => Err(store_err(
                "conditional put",
                key,
                "the answer carries no generation",
            )),
        }
    }

    fn bucket(&self) -> &str {
        &self.bucket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_destinations() {
        let d = Destination::parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!(d.provider, Provider::S3);
        assert_eq!(d.bucket, "my-bucket");
        assert_eq!(d.prefix, "a/b");
        assert_eq!(d.key("x.json"), "a/b/x.json");
        assert_eq!(d.url(), "s3://my-bucket/a/b");
        let g = Destination::parse("gs://bkt").unwrap();
        assert_eq!(g.provider, Provider::Gcs);
        assert_eq!(g.key("x"), "x");
        for bad in [
            "http://b/p",
            "s3://",
            "s3://B/x",
            "gs://ab",
            "s3://bkt/../x",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn gcs_urls_encode_object_names() {
        let s = GcsStore::new("bkt", Some("http://127.0.0.1:1"), GcsAuth::Anonymous).unwrap();
        let u = s.url(&["storage", "v1", "b", "bkt", "o", "p/tenant=a/x y.json"]);
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:1/storage/v1/b/bkt/o/p%2Ftenant=a%2Fx%20y.json"
        );
    }
}
