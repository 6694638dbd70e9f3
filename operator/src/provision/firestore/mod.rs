//! Firestore provisioner: prepares a Firestore database for store-node's layout
//! (`tenants/{tenant}/streams/{stream}/events/{version}` at the database root, see
//! `allsource_backends::firestore::layout`). `ensure` proves the database is reachable with a
//! real data-API call (read, and on first use create, the store's marker document
//! `allsource/<namespace>.<name>`); `observe` lists the Admin API's composite indexes and field
//! configurations and creates what is missing (store-node's request builders), which is also how
//! an index deleted by hand comes back; `delete` under `deletionPolicy: Delete` removes the
//! documents of the store's member tenants, their member documents and the marker. A siloed
//! tenant gets a database of its own ([`silo_database_name`], [`silo::SiloProvisioner`]) that
//! this same provisioner prepares, with the same layout.
//!
//! **Emulator rule.** Only `spec.firestore.emulator: true` makes an endpoint an emulator
//! (`host:port` as in `FIRESTORE_EMULATOR_HOST`, or `http://...`): the provisioner sends the
//! emulator's `owner` token and, when the Admin API answers "not served" (the gcloud emulator's
//! plain-text 404, or 501 / `UNIMPLEMENTED`), reports "admin API unavailable at <endpoint>:
//! indexes and TTL not verified" as a note that does not block Ready. Any other endpoint must be
//! `https://`, and the same answer from it is a Degraded `FeatureUnsupported` condition.
//!
//! It must never read Kubernetes objects, and never log or return a token.

pub mod admin;
pub mod auth;
pub mod data;
pub mod silo;

use std::collections::BTreeMap;

use allsource_backends::firestore::admin::{send, AdminError, AdminRequest, Outcome};
use allsource_backends::firestore::layout::{Layout, TENANTS, TTL_FIELD};
use allsource_backends::firestore::rest::{RestClient, RestError};
use allsource_backends::firestore::{DEFAULT_DATABASE, FIRESTORE_ENDPOINT};
use async_trait::async_trait;
use serde_json::Value;

use super::{
    Deleted, EnsureAction, Ensured, Observed, ProvisionError, Provisioner, Unsupported,
    CALL_TIMEOUT,
};
use crate::api::eventstore::FirestoreSpec;
use crate::api::DeletionPolicy;
use admin::{Item, Presence};
pub use auth::Credentials;

const SERVICE: &str = "firestore";

/// The database an EventStore uses and how it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Google Cloud project id.
    pub project: String,
    /// Database id.
    pub database: String,
    /// Base URL of the REST API (`https://firestore.googleapis.com` or `http://host:port`).
    pub endpoint: String,
    /// The endpoint is an emulator (see the module's rule).
    pub emulator: bool,
    /// TTL policies are wanted (`spec.firestore.ttlField` set).
    pub ttl: bool,
    /// Id of the store's marker document.
    pub marker: String,
    /// `namespace` and `name` of the EventStore.
    pub owner: (String, String),
}

/// Base URL of `spec.firestore.endpoint` (`emulator`: `spec.firestore.emulator`). Pure.
pub fn endpoint(spec: Option<&str>, emulator: bool) -> Result<String, ProvisionError> {
    match (spec.map(str::trim).filter(|s| !s.is_empty()), emulator) {
        (None, false) => Ok(FIRESTORE_ENDPOINT.to_string()),
        (None, true) => Err(ProvisionError::InvalidSpec(
            "spec.firestore.emulator needs spec.firestore.endpoint (the emulator's host:port)"
                .to_string(),
        )),
        (Some(e), false) if e.starts_with("https://") => Ok(e.trim_end_matches('/').to_string()),
        (Some(e), false) => Err(ProvisionError::InvalidSpec(format!(
            "spec.firestore.endpoint {e} is not https://; set spec.firestore.emulator: true for \
             an emulator"
        ))),
        (Some(e), true) if e.starts_with("http://") || e.starts_with("https://") => {
            Ok(e.trim_end_matches('/').to_string())
        }
        (Some(e), true) => Ok(format!("http://{}", e.trim_end_matches('/'))),
    }
}

/// `host:port` of an emulator base URL (what store-node's `FIRESTORE_EMULATOR_HOST` takes).
pub fn emulator_host(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// The plan of an EventStore's database from its spec.
pub fn plan(namespace: &str, name: &str, spec: &FirestoreSpec) -> Result<Plan, ProvisionError> {
    let ttl = match spec.ttl_field.as_deref().filter(|f| !f.is_empty()) {
        None => false,
        Some(f) if f == TTL_FIELD => true,
        Some(f) => {
            return Err(ProvisionError::InvalidSpec(format!(
                "ttlField {f}: store-node writes event expiry to {TTL_FIELD}, so the TTL policy \
                 can only be on {TTL_FIELD}"
            )))
        }
    };
    let endpoint = endpoint(spec.endpoint.as_deref(), spec.emulator)?;
    Ok(Plan {
        project: spec.project_id.clone(),
        database: spec.database_id.clone(),
        endpoint,
        emulator: spec.emulator,
        ttl,
        marker: data::marker_id(namespace, name),
        owner: (namespace.to_string(), name.to_string()),
    })
}

/// Firestore's longest database id.
const DATABASE_ID_MAX: usize = 63;

/// Database of a siloed tenant of the store `namespace/store` whose database is
/// `store_database`: `<store database, or the store's name for (default)>-<tenant id>`, folded to
/// Firestore's id alphabet (lowercase letters, digits, `-`; `db-` in front when it would not start
/// with a letter), cut to 54 characters without a trailing `-`, then `-` and the hash of
/// `<namespace>/<store>/<tenant id>` ([`super::identity_suffix`]): 63 characters at most, unique
/// per namespace, store and tenant even when the cut or the folding makes two prefixes equal.
/// Pure.
pub fn silo_database_name(
    store_database: &str,
    namespace: &str,
    store: &str,
    tenant_id: &str,
) -> String {
    let base = if store_database == DEFAULT_DATABASE {
        store
    } else {
        store_database
    };
    let mut s: String = format!("{base}-{tenant_id}")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s.insert_str(0, "db-");
    }
    let hash = super::identity_suffix(&format!("{namespace}/{store}"), tenant_id);
    s.truncate(DATABASE_ID_MAX - hash.len() - 1);
    let mut name = s.trim_end_matches('-').to_string();
    name.push('-');
    name.push_str(&hash);
    name
}

/// The plan of a siloed tenant's database: the store's plan (project, endpoint, TTL, marker)
/// on the tenant's own database ([`silo_database_name`]). Pure.
pub fn silo_plan(store: &Plan, tenant_id: &str) -> Plan {
    let (namespace, name) = &store.owner;
    Plan {
        database: silo_database_name(&store.database, namespace, name, tenant_id),
        ..store.clone()
    }
}

/// The message of an Admin API that is not served.
pub fn admin_unavailable(endpoint: &str) -> String {
    format!("admin API unavailable at {endpoint}: indexes and TTL not verified")
}

/// Provisioner of one EventStore's Firestore database. Holds a bearer token: no `Debug`.
pub struct FirestoreProvisioner {
    plan: Plan,
    layout: Layout,
    rest: RestClient,
    http: reqwest::Client,
    token: Option<String>,
}

/// What one round over the Admin API found.
#[derive(Debug, Default)]
struct AdminRound {
    drift: Vec<String>,
    corrected: Vec<String>,
    pending: bool,
    not_served: bool,
}

/// What a `GET` of the Admin API found.
#[derive(Debug)]
enum Probe {
    /// The server does not serve the Admin API (the emulator).
    NotServed,
    /// Firestore answered NOT_FOUND (message for errors).
    Missing(String),
    /// The resource, as Firestore describes it.
    Found(Value),
}

/// What an Admin API write got.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    /// Accepted, or already so (409 on a create).
    Applied,
    /// The server does not serve the Admin API (the emulator).
    NotServed,
    /// Firestore answered NOT_FOUND (message for errors).
    Missing(String),
}

impl FirestoreProvisioner {
    /// Obtains a token for `creds` and builds the clients (the token call is the only I/O).
    pub async fn connect(plan: Plan, creds: &Credentials) -> Result<Self, ProvisionError> {
        let token = auth::token(creds).await?;
        let rest = RestClient::new(&plan.endpoint, token.clone()).map_err(data::rest_err)?;
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| ProvisionError::InvalidSpec(format!("http client: {e}")))?;
        Ok(Self {
            layout: Layout::new(&plan.project, &plan.database),
            plan,
            rest,
            http,
            token,
        })
    }

    /// The plan this provisioner serves.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// A provisioner of another database (`plan`), with this one's token and HTTP client; no
    /// call is made.
    pub fn with_plan(&self, plan: Plan) -> Result<Self, ProvisionError> {
        let rest = RestClient::new(&plan.endpoint, self.token.clone()).map_err(data::rest_err)?;
        Ok(Self {
            layout: Layout::new(&plan.project, &plan.database),
            plan,
            rest,
            http: self.http.clone(),
            token: self.token.clone(),
        })
    }

    fn root(&self) -> &str {
        self.layout.root()
    }

    fn resources(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("projectId".to_string(), self.plan.project.clone()),
            ("databaseId".to_string(), self.plan.database.clone()),
            ("rootCollection".to_string(), TENANTS.to_string()),
            (
                "marker".to_string(),
                format!("{}/{}", data::MARKERS, self.plan.marker),
            ),
        ])
    }

    fn unavailable(message: String) -> ProvisionError {
        ProvisionError::Unavailable {
            service: SERVICE,
            message,
        }
    }

    /// Runs a data-API call with the call timeout; the inner result is store-node's.
    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, RestError>>,
    ) -> Result<Result<T, RestError>, ProvisionError> {
        tokio::time::timeout(CALL_TIMEOUT, f).await.map_err(|_| {
            Self::unavailable(format!(
                "no answer from {} within {CALL_TIMEOUT:?}",
                self.plan.endpoint
            ))
        })
    }

    /// Runs a data-API call with the call timeout.
    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, RestError>>,
    ) -> Result<T, ProvisionError> {
        self.call(f).await?.map_err(data::rest_err)
    }

    /// Commits `w`, which creates a document; Ok when it exists already (a racing reconcile).
    async fn create_doc(&self, w: Value) -> Result<bool, ProvisionError> {
        let root = self.root().to_string();
        match self.call(self.rest.commit(&root, vec![w], None)).await? {
            Ok(()) => Ok(true),
            Err(RestError::Precondition(_)) => Ok(false),
            Err(e) => Err(data::rest_err(e)),
        }
    }

    /// `GET` of an Admin API path: Ok(None) when the Admin API is not served; NOT_FOUND is an
    /// error.
    async fn admin_get(&self, path: &str) -> Result<Option<Value>, ProvisionError> {
        match self.admin_probe(path).await? {
            Probe::NotServed => Ok(None),
            Probe::Found(v) => Ok(Some(v)),
            Probe::Missing(m) => Err(ProvisionError::InvalidSpec(m)),
        }
    }

    /// `GET` of an Admin API path.
    async fn admin_probe(&self, path: &str) -> Result<Probe, ProvisionError> {
        let url = format!("{}/v1/{}", self.plan.endpoint, path);
        let mut req = self.http.get(url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Self::unavailable(format!("admin API: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if admin::not_served(status, &body) {
            return Ok(Probe::NotServed);
        }
        match status {
            200..=299 => serde_json::from_str(&body)
                .map(Probe::Found)
                .map_err(|e| Self::unavailable(format!("admin API answer unreadable: {e}"))),
            401 | 403 => Err(ProvisionError::Permission {
                service: SERVICE,
                message: format!(
                    "admin API refused GET {path} (HTTP {status}): {}",
                    cut(&body)
                ),
            }),
            404 => Ok(Probe::Missing(format!(
                "admin API refused GET {path} (HTTP {status}): {}",
                cut(&body)
            ))),
            429 | 500.. => Err(Self::unavailable(format!(
                "admin API GET {path} (HTTP {status}): {}",
                cut(&body)
            ))),
            _ => Err(ProvisionError::InvalidSpec(format!(
                "admin API refused GET {path} (HTTP {status}): {}",
                cut(&body)
            ))),
        }
    }

    /// Sends store-node's request of `item`; Ok(false) when the Admin API is not served.
    async fn admin_create(&self, item: &Item) -> Result<bool, ProvisionError> {
        match self.admin_call(&item.request).await? {
            Sent::Applied => Ok(true),
            Sent::NotServed => Ok(false),
            Sent::Missing(m) => Err(ProvisionError::InvalidSpec(m)),
        }
    }

    /// Sends one Admin API request (with store-node's [`send`]) and reads its answer.
    async fn admin_call(&self, request: &AdminRequest) -> Result<Sent, ProvisionError> {
        let sent = tokio::time::timeout(
            CALL_TIMEOUT,
            send(
                &self.plan.endpoint,
                self.token.as_deref(),
                std::slice::from_ref(request),
            ),
        )
        .await
        .map_err(|_| Self::unavailable(format!("admin API: no answer within {CALL_TIMEOUT:?}")))?;
        match sent {
            Ok(outcomes)
                if outcomes
                    .iter()
                    .any(|o| matches!(o, Outcome::NotServed { .. })) =>
            {
                Ok(Sent::NotServed)
            }
            Ok(_) => Ok(Sent::Applied),
            Err(AdminError::Unreachable(m)) => Err(Self::unavailable(m)),
            // A 404 here carried Google's JSON error (the emulator's plain one is NotServed).
            Err(AdminError::Refused { status, body, .. })
                if status != 404 && admin::not_served(status, &body) =>
            {
                Ok(Sent::NotServed)
            }
            Err(AdminError::Refused { path, status, body }) => {
                let message = format!("admin API refused {path} (HTTP {status}): {body}");
                Err(match status {
                    404 => return Ok(Sent::Missing(message)),
                    401 | 403 => ProvisionError::Permission {
                        service: SERVICE,
                        message,
                    },
                    429 | 500.. => Self::unavailable(message),
                    _ => ProvisionError::InvalidSpec(message),
                })
            }
        }
    }

    /// Checks every item of the desired admin state and creates what is missing.
    async fn admin_round(&self) -> Result<AdminRound, ProvisionError> {
        let mut out = AdminRound::default();
        for item in admin::desired(&self.plan.project, &self.plan.database, self.plan.ttl) {
            let Some(live) = self.admin_get(&item.probe).await? else {
                out.not_served = true;
                return Ok(out);
            };
            match admin::presence(&item, &live) {
                Presence::Present => {}
                Presence::Building => out.pending = true,
                Presence::Missing => {
                    let d = format!("{} missing", item.label);
                    out.drift.push(d.clone());
                    if !self.admin_create(&item).await? {
                        out.not_served = true;
                        return Ok(out);
                    }
                    tracing::info!(
                        request = %format!("{} {}", admin::verb(&item.request), item.request.path),
                        "firestore admin request sent"
                    );
                    out.corrected.push(d);
                    // A new index is built before queries can use it.
                    if matches!(item.kind, admin::ItemKind::Index { .. }) {
                        out.pending = true;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Names of the member tenants of this store.
    pub async fn members(&self) -> Result<Vec<String>, ProvisionError> {
        let parent = data::marker_doc(self.root(), &self.plan.marker);
        let q = data::names_query(data::MEMBERS, false, 10_000);
        let docs = self.timed(self.rest.run_query(&parent, &q)).await?;
        Ok(data::names(&docs)
            .iter()
            .map(|n| data::doc_id(n).to_string())
            .collect())
    }

    /// Registers `tenant_id` (held by the Tenant `tenant`, `<namespace>/<name>`) as a member
    /// of this store. The id's claim document ([`data::CLAIMS`]) is created with an
    /// exists=false precondition in the same commit as the member document, so of two stores
    /// registering one id at the same moment exactly one succeeds; the other, and any later
    /// one, gets [`ProvisionError::Conflict`]. Idempotent for the holder.
    pub async fn register_tenant(
        &self,
        tenant_id: &str,
        tenant: &str,
    ) -> Result<(), ProvisionError> {
        let root = self.root().to_string();
        let claim = data::claim_doc(&root, tenant_id);
        let conflict = |holder: &str| {
            ProvisionError::Conflict(format!(
                "tenant id {tenant_id} is already used by EventStore {} in Firestore database \
                 {}/{}: both would share tenants/{tenant_id}",
                holder.replacen('.', "/", 1),
                self.plan.project,
                self.plan.database
            ))
        };
        if let Some(doc) = self.timed(self.rest.get(&root, claim.clone())).await? {
            return match data::claim_holder(&doc) {
                Some(m) if m == self.plan.marker => Ok(()),
                Some(m) => Err(conflict(m)),
                None => Err(conflict("unknown")),
            };
        }
        // Registrations made before claims existed: a member document of another store.
        let markers = self
            .timed(
                self.rest
                    .run_query(&root, &data::names_query(data::MARKERS, false, 10_000)),
            )
            .await?;
        for other in data::names(&markers) {
            let id = data::doc_id(&other);
            if id == self.plan.marker {
                continue;
            }
            let theirs = data::member_doc(&root, id, tenant_id);
            if self.timed(self.rest.get(&root, theirs)).await?.is_some() {
                return Err(conflict(id));
            }
        }
        let writes = data::claim_member(&root, &self.plan.marker, tenant_id, tenant);
        match self.call(self.rest.commit(&root, writes, None)).await? {
            Ok(()) => Ok(()),
            // Claimed meanwhile: ours (a racing reconcile of this store) or another store's.
            Err(RestError::Precondition(_)) => {
                match self.timed(self.rest.get(&root, claim)).await? {
                    Some(doc) if data::claim_holder(&doc) == Some(self.plan.marker.as_str()) => {
                        Ok(())
                    }
                    Some(doc) => Err(conflict(data::claim_holder(&doc).unwrap_or("unknown"))),
                    None => Err(Self::unavailable(format!(
                        "the claim of tenant id {tenant_id} changed during registration; retrying"
                    ))),
                }
            }
            Err(e) => Err(data::rest_err(e)),
        }
    }

    /// Deletes a tenant's documents (`tenants/<id>` and store-node's collections under it);
    /// returns how many documents went.
    pub async fn delete_tenant_documents(&self, tenant_id: &str) -> Result<u64, ProvisionError> {
        let root = self.root().to_string();
        let parent = data::tenant_doc(&root, tenant_id);
        let mut deleted = 0u64;
        for collection in data::TENANT_SUBTREE {
            let q = data::names_query(collection, true, data::DELETE_PAGE);
            loop {
                let docs = self.timed(self.rest.run_query(&parent, &q)).await?;
                let names = data::names(&docs);
                if names.is_empty() {
                    break;
                }
                let writes: Vec<Value> = names.iter().map(|n| data::delete(n)).collect();
                self.timed(self.rest.commit(&root, writes, None)).await?;
                deleted += names.len() as u64;
            }
        }
        if self
            .timed(self.rest.get(&root, parent.clone()))
            .await?
            .is_some()
        {
            deleted += 1;
        }
        self.timed(self.rest.commit(&root, vec![data::delete(&parent)], None))
            .await?;
        Ok(deleted)
    }

    /// Removes a tenant's membership (its documents stay unless deleted first).
    pub async fn unregister_tenant(&self, tenant_id: &str) -> Result<(), ProvisionError> {
        let root = self.root().to_string();
        let mut writes = vec![data::delete(&data::member_doc(
            &root,
            &self.plan.marker,
            tenant_id,
        ))];
        // The claim goes only if it is this store's, and still the one read.
        let claim = data::claim_doc(&root, tenant_id);
        if let Some(doc) = self.timed(self.rest.get(&root, claim.clone())).await? {
            if data::claim_holder(&doc) == Some(self.plan.marker.as_str()) {
                if let Some(t) = doc["updateTime"].as_str() {
                    writes.push(data::delete_unchanged(&claim, t));
                }
            }
        }
        self.timed(self.rest.commit(&root, writes, None)).await
    }
}

fn cut(s: &str) -> String {
    s.chars().take(300).collect()
}

#[async_trait]
impl Provisioner for FirestoreProvisioner {
    async fn ensure(&self) -> Result<Ensured, ProvisionError> {
        let root = self.root().to_string();
        let marker = data::marker_doc(&root, &self.plan.marker);
        if self.timed(self.rest.get(&root, marker)).await?.is_some() {
            return Ok(Ensured {
                action: EnsureAction::Adopted,
                resources: self.resources(),
            });
        }
        let (ns, name) = &self.plan.owner;
        let w = data::create_marker(&root, &self.plan.marker, ns, name);
        // Not created: another reconcile created it between the read and the write.
        let action = if self.create_doc(w).await? {
            EnsureAction::Created
        } else {
            EnsureAction::Adopted
        };
        Ok(Ensured {
            action,
            resources: self.resources(),
        })
    }

    async fn observe(&self) -> Result<Observed, ProvisionError> {
        let round = self.admin_round().await?;
        let mut out = Observed {
            drift: round.drift,
            corrected: round.corrected,
            pending: round.pending,
            resources: self.resources(),
            ..Observed::default()
        };
        if round.not_served {
            let msg = admin_unavailable(&self.plan.endpoint);
            out.resources
                .insert("indexes".to_string(), "not verified".to_string());
            if self.plan.emulator {
                out.notes.push(msg);
            } else {
                out.unsupported.push(Unsupported {
                    feature: "indexes".to_string(),
                    message: msg,
                });
            }
        } else {
            let state = if out.pending { "building" } else { "ready" };
            out.resources
                .insert("indexes".to_string(), state.to_string());
            if self.plan.ttl {
                out.resources
                    .insert("ttlField".to_string(), TTL_FIELD.to_string());
            }
        }
        Ok(out)
    }

    async fn delete(&self, policy: DeletionPolicy) -> Result<Deleted, ProvisionError> {
        if policy == DeletionPolicy::Retain {
            return Ok(Deleted::Retained);
        }
        let root = self.root().to_string();
        let marker = data::marker_doc(&root, &self.plan.marker);
        let members = self.members().await?;
        let exists = self
            .timed(self.rest.get(&root, marker.clone()))
            .await?
            .is_some();
        if !exists && members.is_empty() {
            return Ok(Deleted::AlreadyGone);
        }
        for m in &members {
            self.delete_tenant_documents(m).await?;
            self.unregister_tenant(m).await?;
        }
        self.timed(self.rest.commit(&root, vec![data::delete(&marker)], None))
            .await?;
        Ok(Deleted::Deleted)
    }
}

/// The tenant's location name: its collection path in store-node's layout.
pub fn tenant_collection(tenant_id: &str) -> String {
    format!("{TENANTS}/{tenant_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(endpoint: Option<&str>, ttl: Option<&str>) -> FirestoreSpec {
        FirestoreSpec {
            project_id: "proj".into(),
            database_id: "(default)".into(),
            endpoint: endpoint.map(str::to_string),
            // An endpoint that is not https:// is the emulator in these tests.
            emulator: endpoint.is_some_and(|e| !e.starts_with("https://")),
            credentials_secret_ref: None,
            ttl_field: ttl.map(str::to_string),
        }
    }

    #[test]
    fn endpoint_rule() {
        let ok = |e: Result<String, ProvisionError>| e.unwrap();
        assert_eq!(
            ok(endpoint(None, false)),
            "https://firestore.googleapis.com"
        );
        assert_eq!(
            ok(endpoint(Some("127.0.0.1:8080"), true)),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            ok(endpoint(Some("http://emu:8080/"), true)),
            "http://emu:8080"
        );
        assert_eq!(
            ok(endpoint(Some("https://firestore.example"), false)),
            "https://firestore.example"
        );
        // No emulator by accident: a plain endpoint without the flag is a spec error.
        for e in ["127.0.0.1:8080", "http://emu:8080"] {
            assert!(matches!(
                endpoint(Some(e), false),
                Err(ProvisionError::InvalidSpec(_))
            ));
        }
        assert!(matches!(
            endpoint(None, true),
            Err(ProvisionError::InvalidSpec(_))
        ));
        assert_eq!(emulator_host("http://127.0.0.1:8080"), "127.0.0.1:8080");
    }

    #[test]
    fn silo_database_names_are_valid_unique_and_bounded() {
        use allsource_backends::firestore::layout::check_database_id;
        let h = |ns: &str, store: &str, t: &str| {
            crate::provision::identity_suffix(&format!("{ns}/{store}"), t)
        };
        // (default) is shared by every store of a project: the store's name leads.
        assert_eq!(
            silo_database_name("(default)", "shop", "orders", "acme"),
            format!("orders-acme-{}", h("shop", "orders", "acme"))
        );
        assert_eq!(
            silo_database_name("events-eu", "shop", "orders", "acme"),
            format!("events-eu-acme-{}", h("shop", "orders", "acme"))
        );
        // Folded into Firestore's alphabet, and made to start with a letter.
        assert!(silo_database_name("Events_EU", "shop", "orders", "acme")
            .starts_with("events-eu-acme-"));
        assert!(silo_database_name("(default)", "shop", "orders.v2", "acme")
            .starts_with("orders-v2-acme-"));
        assert!(silo_database_name("(default)", "shop", "1orders", "acme")
            .starts_with("db-1orders-acme-"));
        // Long names are cut, never with a '-' left before the hash, and keep the hash.
        let long = "t".repeat(63);
        let cut = silo_database_name("(default)", "shop", "orders", &long);
        assert_eq!(cut.len(), 63);
        assert!(cut.ends_with(&format!("-{}", h("shop", "orders", &long))));
        let dash = format!("{}-{}", "a".repeat(46), "b".repeat(16));
        let cut = silo_database_name("(default)", "shop", "orders", &dash);
        assert!(!cut.contains("--"), "{cut}");
        // Names that fold or cut alike stay apart by namespace, store and tenant.
        let all = [
            silo_database_name("(default)", "shop", "orders", "a-b"),
            silo_database_name("(default)", "shop", "orders-a", "b"),
            silo_database_name("(default)", "shop-2", "orders", "a-b"),
            silo_database_name("(default)", "shop", "orders.a", "b"),
            silo_database_name("(default)", "shop", "orders", &format!("{long}x")),
            silo_database_name("(default)", "shop", "orders", &format!("{long}y")),
        ];
        let distinct: std::collections::BTreeSet<&String> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "{all:?}");
        for n in all.iter().chain([&cut]) {
            assert_eq!(check_database_id(n), Ok(()), "{n}");
        }
        // The plan is the store's on that database.
        let store = plan("shop", "orders", &spec(Some("127.0.0.1:1"), None)).unwrap();
        let silo = silo_plan(&store, "acme");
        assert_eq!(
            silo.database,
            silo_database_name("(default)", "shop", "orders", "acme")
        );
        assert_eq!(
            Plan {
                database: store.database.clone(),
                ..silo
            },
            store
        );
    }

    #[test]
    fn plan_from_spec() {
        let p = plan(
            "shop",
            "orders",
            &spec(Some("127.0.0.1:1"), Some("expires_at")),
        )
        .unwrap();
        assert!(p.emulator && p.ttl);
        assert_eq!(p.marker, "shop.orders");
        assert!(!plan("shop", "orders", &spec(None, None)).unwrap().ttl);
        assert!(matches!(
            plan("shop", "orders", &spec(None, Some("expireAt"))),
            Err(ProvisionError::InvalidSpec(_))
        ));
        assert_eq!(tenant_collection("acme"), "tenants/acme");
        assert_eq!(
            admin_unavailable("http://127.0.0.1:1"),
            "admin API unavailable at http://127.0.0.1:1: indexes and TTL not verified"
        );
    }
}
