//! The test environment contract, Rust side: reads the env file `tests/env/up.sh` writes (the
//! file named by `ALLSOURCE_ENV_FILE`, else `tests/env/.env` in the workspace), says which real
//! servers are up, and builds clients for them (kube, PostgreSQL, DynamoDB, S3, GCS, Firestore)
//! plus per-test isolation (a namespace, a database, unique names). It never starts or stops a
//! server and never substitutes a fake: a test that needs a server the env lacks either fails
//! with instructions or, only with `ALLSOURCE_ALLOW_NO_ENV=1`, is skipped loudly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::Api;

/// Access key of the static AWS test credentials: letters and digits only, as DynamoDB Local
/// requires.
pub const AWS_TEST_ACCESS_KEY: &str = "allsourcetest";
/// Secret key of the static AWS test credentials.
pub const AWS_TEST_SECRET_KEY: &str = "allsourcetestsecret";
/// Region every AWS test client uses.
pub const AWS_TEST_REGION: &str = "us-east-1";
/// Label put on every namespace [`TestEnv::test_namespace`] creates, to find leftovers.
pub const TEST_NAMESPACE_LABEL: &str = "allsource.io/test";

/// Set to `1` to skip (loudly) tests whose servers are not up instead of failing them.
pub const ALLOW_NO_ENV_VAR: &str = "ALLSOURCE_ALLOW_NO_ENV";
/// Overrides the location of the env file.
pub const ENV_FILE_VAR: &str = "ALLSOURCE_ENV_FILE";

/// Errors of loading the env file or of building a client from it.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("cannot read the test env file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("line {line} of {path} is not KEY=VALUE")]
    Syntax { path: PathBuf, line: usize },
    #[error("the test env has no {0}: start that service with tests/env/up.sh")]
    Missing(&'static str),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid apiserver URL {0}")]
    Url(String),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("firestore: {0}")]
    Firestore(String),
    #[error("gcs: {0}")]
    Gcs(String),
}

/// The parsed env file: which servers are up and where.
#[derive(Debug, Clone)]
pub struct TestEnv {
    path: PathBuf,
    vars: BTreeMap<String, String>,
}

/// The service names [`require`] understands, with the env key that proves each is up.
const SERVICES: &[(&str, &str)] = &[
    ("kube", "KUBECONFIG"),
    ("postgres", "PG_URL"),
    ("dynamodb", "DYNAMODB_ENDPOINT"),
    ("s3", "S3_ENDPOINT"),
    ("gcs", "GCS_ENDPOINT"),
    ("firestore", "FIRESTORE_EMULATOR_HOST"),
    ("helm", "HELM"),
    ("kwok", "KWOK"),
    ("node", "NODE_NAME"),
];

impl TestEnv {
    /// Parses `KEY=VALUE` lines; blank lines and `#` comments are ignored.
    pub fn parse(path: &Path, text: &str) -> Result<Self, EnvError> {
        let mut vars = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(|| EnvError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
            })?;
            vars.insert(key.trim().to_string(), value.trim().to_string());
        }
        Ok(Self {
            path: path.to_path_buf(),
            vars,
        })
    }

    /// Reads and parses the env file at `path`.
    pub fn load_from(path: &Path) -> Result<Self, EnvError> {
        let text = std::fs::read_to_string(path).map_err(|source| EnvError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Where the env file was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A raw value of the env file.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// All `KEY=VALUE` pairs, e.g. to pass to a child process.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    fn must(&self, key: &'static str) -> &str {
        match self.get(key) {
            Some(v) => v,
            None => panic!(
                "{key} is not in the test env file {}: start its service with tests/env/up.sh",
                self.path.display()
            ),
        }
    }

    /// Whether `service` (see [`require`]) is up in this env.
    pub fn has(&self, service: &str) -> bool {
        SERVICES
            .iter()
            .find(|(name, _)| *name == service)
            .is_some_and(|(_, key)| self.get(key).is_some())
    }

    /// Directory holding the servers' state and logs.
    pub fn env_dir(&self) -> &Path {
        Path::new(self.must("ALLSOURCE_ENV_DIR"))
    }
    /// Admin kubeconfig (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        Path::new(self.must("KUBECONFIG"))
    }
    /// `https://127.0.0.1:<port>` of the kube-apiserver.
    pub fn kube_apiserver(&self) -> &str {
        self.must("KUBE_APISERVER")
    }
    /// CA certificate that signed the apiserver's serving certificate.
    pub fn kube_ca_file(&self) -> &Path {
        Path::new(self.must("KUBE_CA_FILE"))
    }
    /// PostgreSQL superuser URL (`postgres://postgres@127.0.0.1:<port>/postgres`).
    pub fn pg_url(&self) -> &str {
        self.must("PG_URL")
    }
    /// DynamoDB Local endpoint URL.
    pub fn dynamodb_endpoint(&self) -> &str {
        self.must("DYNAMODB_ENDPOINT")
    }
    /// S3 (moto) endpoint URL.
    pub fn s3_endpoint(&self) -> &str {
        self.must("S3_ENDPOINT")
    }
    /// Access key the S3 server accepts.
    pub fn s3_access_key(&self) -> &str {
        self.get("S3_ACCESS_KEY").unwrap_or(AWS_TEST_ACCESS_KEY)
    }
    /// Secret key the S3 server accepts.
    pub fn s3_secret_key(&self) -> &str {
        self.get("S3_SECRET_KEY").unwrap_or(AWS_TEST_SECRET_KEY)
    }
    /// fake-gcs-server endpoint URL (JSON API at `/storage/v1`).
    pub fn gcs_endpoint(&self) -> &str {
        self.must("GCS_ENDPOINT")
    }
    /// `127.0.0.1:<port>` of the Firestore emulator.
    pub fn firestore_emulator_host(&self) -> &str {
        self.must("FIRESTORE_EMULATOR_HOST")
    }
    /// Project id to use with the Firestore emulator.
    pub fn firestore_project(&self) -> &str {
        self.get("FIRESTORE_PROJECT").unwrap_or("allsource-test")
    }
    /// Path of the helm v3 binary.
    pub fn helm(&self) -> &Path {
        Path::new(self.must("HELM"))
    }
    /// Path of the kwok binary.
    pub fn kwok(&self) -> &Path {
        Path::new(self.must("KWOK"))
    }

    /// Client config of the admin identity, from the env's kubeconfig.
    pub async fn kube_config(&self) -> Result<kube::Config, EnvError> {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig())?;
        Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
    }

    /// A kube client acting as the admin (`system:masters`).
    pub async fn kube_client(&self) -> Result<kube::Client, EnvError> {
        install_crypto_provider();
        Ok(kube::Client::try_from(self.kube_config().await?)?)
    }

    /// A kube client for the same apiserver (same CA) that authenticates with `token`, e.g. a
    /// ServiceAccount token from the TokenRequest API, to act as another identity.
    pub async fn kube_client_for_token(&self, token: &str) -> Result<kube::Client, EnvError> {
        let mut config = self.kube_config().await?;
        config.auth_info = AuthInfo {
            token: Some(token.to_string().into()),
            ..AuthInfo::default()
        };
        install_crypto_provider();
        Ok(kube::Client::try_from(config)?)
    }

    /// Creates a namespace with a unique name starting with `prefix` (labelled
    /// [`TEST_NAMESPACE_LABEL`]). It is deleted when the returned guard drops, or by
    /// [`TestNamespace::cleanup`].
    pub async fn test_namespace(&self, prefix: &str) -> Result<TestNamespace, EnvError> {
        let client = self.kube_client().await?;
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(TestNamespace {
            name,
            client,
            kubeconfig: self.kubeconfig().to_path_buf(),
            deleted: false,
        })
    }

    /// Creates a fresh, empty database (`t_<random>`) on the env's PostgreSQL and returns it.
    pub async fn pg_test_database(&self) -> Result<TestDatabase, EnvError> {
        let (client, connection) =
            tokio_postgres::connect(self.pg_url(), tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(connection);
        let name = format!("t_{}", unique_suffix(12));
        client
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .await?;
        drop(client);
        let _ = conn.await;
        let base = self.pg_url();
        let url = match base.rsplit_once('/') {
            Some((server, _db)) => format!("{server}/{name}"),
            None => format!("{base}/{name}"),
        };
        Ok(TestDatabase { name, url })
    }

    /// AWS SDK config for the env's DynamoDB Local.
    pub fn dynamodb_sdk_config(&self) -> SdkConfig {
        aws_sdk_config(self.dynamodb_endpoint())
    }

    /// A DynamoDB client for the env's DynamoDB Local.
    pub fn dynamodb_client(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.dynamodb_sdk_config())
    }

    /// An S3 client (path-style addressing) for the env's S3 server.
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        let base = aws_sdk_config_with_keys(
            self.s3_endpoint(),
            self.s3_access_key(),
            self.s3_secret_key(),
        );
        let config = aws_sdk_s3::config::Builder::from(&base)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Creates the bucket `name` on the env's S3 server and one of the same name on its GCS
    /// server (fake-gcs-server, project `allsource-test`), panicking when either fails.
    pub async fn create_buckets(&self, s3: &str, gcs: &str) {
        self.s3_client()
            .create_bucket()
            .bucket(s3)
            .send()
            .await
            .unwrap_or_else(|e| panic!("S3 bucket {s3}: {e}"));
        reqwest::Client::new()
            .post(format!(
                "{}/storage/v1/b?project=allsource-test",
                self.gcs_endpoint()
            ))
            .json(&serde_json::json!({"name": gcs}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GCS bucket {gcs}: {e}"));
    }

    /// A `google-cloud-storage` data-plane client (JSON API) for fake-gcs-server, with
    /// anonymous credentials. The gRPC control plane (`StorageControl`) has no local server.
    /// Upload with `send_buffered()`: fake-gcs-server (1.56) appends the checksum trailer of
    /// `send_unbuffered()` uploads to the object, and the crate then reports a CRC32C mismatch.
    pub async fn gcs_storage(&self) -> Result<google_cloud_storage::client::Storage, EnvError> {
        install_crypto_provider();
        google_cloud_storage::client::Storage::builder()
            .with_endpoint(self.gcs_endpoint())
            .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
            .build()
            .await
            .map_err(|e| EnvError::Gcs(e.to_string()))
    }

    /// A Firestore client for the emulator, without reading `FIRESTORE_EMULATOR_HOST` from
    /// the process environment (the emulator ignores credentials; anonymous ones are sent).
    pub async fn firestore_db(&self) -> Result<firestore::FirestoreDb, EnvError> {
        install_crypto_provider();
        let options = firestore::FirestoreDbOptions::new(self.firestore_project().to_string())
            .with_firebase_api_url(format!("http://{}", self.firestore_emulator_host()));
        firestore::FirestoreDb::with_options_auth(
            options,
            google_cloud_auth::credentials::anonymous::Builder::new().build(),
        )
        .await
        .map_err(|e| EnvError::Firestore(e.to_string()))
    }
}

/// A database created by [`TestEnv::pg_test_database`]; it lives until the env goes down.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// Database name (`t_<random>`).
    pub name: String,
    /// Superuser URL of this database.
    pub url: String,
}

/// A namespace created for one test; deleted on drop unless already cleaned up.
pub struct TestNamespace {
    name: String,
    client: kube::Client,
    kubeconfig: PathBuf,
    deleted: bool,
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin client the namespace was created with.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Deletes the namespace now (asynchronously; the namespace controller finishes it).
    pub async fn cleanup(mut self) -> Result<(), EnvError> {
        self.deleted = true;
        delete_namespace(self.client.clone(), &self.name).await
    }
}

/// The operator's kinds (plural names), whose finalizers a test namespace's deletion removes.
const ALLSOURCE_KINDS: [(&str, &str); 3] = [
    ("EventStore", "eventstores"),
    ("Tenant", "tenants"),
    ("ArchivePolicy", "archivepolicies"),
];

/// Deletes the namespace, then drops the `allsource.io` finalizers of what is left in it: a test
/// has usually stopped its in-process operator by then, and nothing else would ever remove
/// them (the namespace would stay Terminating). Objects are already marked deleted at that
/// point, so a still-running operator can no longer add a finalizer back.
async fn delete_namespace(client: kube::Client, name: &str) -> Result<(), EnvError> {
    match Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    for (kind, plural) in ALLSOURCE_KINDS {
        let resource = kube::discovery::ApiResource {
            group: "allsource.io".into(),
            version: "v1alpha1".into(),
            api_version: "allsource.io/v1alpha1".into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        let api: Api<kube::core::DynamicObject> =
            Api::namespaced_with(client.clone(), name, &resource);
        // The CRDs may not be installed (404): nothing to do then.
        let Ok(list) = api.list(&Default::default()).await else {
            continue;
        };
        for obj in list.items {
            if obj.metadata.finalizers.as_ref().is_none_or(Vec::is_empty) {
                continue;
            }
            let Some(obj_name) = obj.metadata.name.as_deref() else {
                continue;
            };
            let patch = serde_json::json!({"metadata": {"finalizers": null}});
            if let Err(e) = api
                .patch(
                    obj_name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
            {
                eprintln!(
                    "warning: could not drop the finalizers of {kind} {name}/{obj_name}: {e}"
                );
            }
        }
    }
    // A pod runner of this namespace's test registers Node `runner-<namespace>`; a test that
    // failed before removing it would leave a NotReady Node behind (and enough of them put the
    // node lifecycle controller into full-disruption mode for the whole test cluster).
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
    match nodes
        .delete(&format!("runner-{name}"), &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => eprintln!("warning: could not delete the runner Node of {name}: {e}"),
    }
    Ok(())
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        // The test's runtime may be a blocked current-thread runtime, and the client's
        // connection task lives on it: delete from a fresh thread, runtime and client instead.
        let name = std::mem::take(&mut self.name);
        let kubeconfig = self.kubeconfig.clone();
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(kc) = Kubeconfig::read_from(&kubeconfig) else {
                    return;
                };
                let Ok(config) =
                    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await
                else {
                    return;
                };
                install_crypto_provider();
                if let Ok(client) = kube::Client::try_from(config) {
                    if let Err(e) = delete_namespace(client, &name).await {
                        eprintln!("warning: could not delete test namespace {name}: {e}");
                    }
                }
            });
        });
        let _ = worker.join();
    }
}

/// Installs rustls' ring crypto provider for the process. The test binaries link both ring and
/// aws-lc-rs (through different clients), and rustls then refuses to pick one by itself.
pub fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Err means another provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// AWS SDK config for a local endpoint: static test credentials, region `us-east-1`.
/// For S3 also set `force_path_style(true)` (see [`TestEnv::s3_client`]).
pub fn aws_sdk_config(endpoint: &str) -> SdkConfig {
    aws_sdk_config_with_keys(endpoint, AWS_TEST_ACCESS_KEY, AWS_TEST_SECRET_KEY)
}

fn aws_sdk_config_with_keys(endpoint: &str, access_key: &str, secret_key: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(AWS_TEST_REGION))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "allsource-tests",
            )),
        )
        .build()
}

/// `prefix-<8 random [a-z0-9]>`: unique enough for parallel tests, valid as a Kubernetes name
/// (when `prefix` is), bucket name, table name or database name suffix.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", unique_suffix(8))
}

/// `len` random characters of `[a-z0-9]`.
pub fn unique_suffix(len: usize) -> String {
    let mut s = uuid::Uuid::new_v4().simple().to_string();
    s.truncate(len);
    s
}

/// Where the env file is: `$ALLSOURCE_ENV_FILE`, else `tests/env/.env` in the workspace.
pub fn env_file_path() -> PathBuf {
    match std::env::var_os(ENV_FILE_VAR) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("env")
            .join(".env"),
    }
}

/// The env file, read once per test binary.
pub fn load() -> Result<&'static TestEnv, &'static EnvError> {
    static ENV: OnceLock<Result<TestEnv, EnvError>> = OnceLock::new();
    ENV.get_or_init(|| TestEnv::load_from(&env_file_path()))
        .as_ref()
}

/// Whether tests may skip when a server or tool they need is missing (`ALLSOURCE_ALLOW_NO_ENV=1`);
/// otherwise (and always in CI) a missing one fails the test.
pub fn allow_no_env() -> bool {
    std::env::var(ALLOW_NO_ENV_VAR).is_ok_and(|v| v == "1")
}

/// The env, when `service` (`kube`, `postgres`, `dynamodb`, `s3`, `gcs`, `firestore`, `helm`,
/// `kwok`) is up in it. Panics with instructions when it is not, unless
/// `ALLSOURCE_ALLOW_NO_ENV=1`: then prints a loud SKIPPED line and returns `None`.
///
/// ```ignore
/// let Some(env) = allsource_tests::env::require("postgres") else { return };
/// ```
pub fn require(service: &str) -> Option<&'static TestEnv> {
    if !SERVICES.iter().any(|(name, _)| *name == service) {
        panic!("unknown test env service {service:?}");
    }
    let problem = match load() {
        Ok(env) if env.has(service) => return Some(env),
        Ok(env) => format!(
            "service {service:?} is not up in {} (services: {})",
            env.path().display(),
            env.get("ALLSOURCE_SERVICES").unwrap_or("?")
        ),
        Err(e) => e.to_string(),
    };
    if allow_no_env() {
        let test = std::thread::current()
            .name()
            .unwrap_or("<unnamed>")
            .to_string();
        eprintln!("SKIPPED {test}: {problem} ({ALLOW_NO_ENV_VAR}=1)");
        return None;
    }
    panic!(
        "this test needs the real {service:?} server: {problem}.\n\
         Start the environment with `make env-up` (or `tests/env/up.sh {service}`), or run \
         everything with `make test`. Set {ALLOW_NO_ENV_VAR}=1 to skip such tests instead."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_comments_and_blank_lines() {
        let env = TestEnv::parse(
            Path::new("x.env"),
            "# c\nPG_URL=postgres://postgres@127.0.0.1:5/postgres\n\nHELM=/h/helm\nEMPTY=\n",
        )
        .unwrap();
        assert_eq!(env.pg_url(), "postgres://postgres@127.0.0.1:5/postgres");
        assert!(env.has("postgres"));
        assert!(env.has("helm"));
        assert!(!env.has("kube"));
        assert_eq!(env.get("EMPTY"), None);
    }

    #[test]
    fn rejects_lines_without_equals() {
        let err = TestEnv::parse(Path::new("x.env"), "A=1\nbroken\n").unwrap_err();
        assert!(matches!(err, EnvError::Syntax { line: 2, .. }), "{err}");
    }

    #[test]
    fn unique_names_are_dns_labels_and_differ() {
        let a = unique_name("ns");
        let b = unique_name("ns");
        assert_ne!(a, b);
        assert_eq!(a.len(), "ns-".len() + 8);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }

    #[test]
    #[should_panic(expected = "unknown test env service")]
    fn require_rejects_unknown_services() {
        let _ = require("nope");
    }
}
