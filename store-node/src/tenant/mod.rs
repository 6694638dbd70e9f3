//! The tenant registry: which bearer tokens belong to which tenant, whether the tenant is active,
//! its quotas and which node owns it. The operator writes the registry file into a ConfigMap or
//! Secret mounted into the pod; this module parses it, validates it, authenticates tokens against
//! it in constant time and reloads it without a restart when its content changes. It must never
//! log or store a bearer token (only SHA-256 digests are kept) and never decide about data: the
//! HTTP layer applies what it answers.
//!
//! # File format (version 1)
//!
//! JSON (YAML with the same keys is accepted too):
//!
//! ```json
//! {"version": 1,
//!  "tenants": [{"id": "acme",
//!               "tokenSha256": ["<hex sha256 of bearer token>", "<second during rotation>"],
//!               "state": "active",
//!               "quotas": {"eventsPerSecond": 1000, "storageBytes": 1073741824, "maxStreams": 100000},
//!               "node": "es-0"}],
//!  "nodes": {"es-0": "http://es-0.es-nodes.ns.svc:8080"}}
//! ```
//!
//! - `id`: a tenant id (DNS label). Ids must be unique.
//! - `tokenSha256`: lowercase or uppercase hex SHA-256 digests of the bearer tokens; every listed
//!   token is valid (two during a rotation). A digest may belong to one tenant only.
//! - `state`: `active` (default), `suspended` (every request answers 403) or `purging` (the
//!   tenant is being deleted with its data: the node erases everything of the tenant once, and
//!   every request with its token answers **410 Gone**, code `tenant_purging` until the data is
//!   erased, then `tenant_purged`; the operator polls `GET /v1/stats` for that code).
//! - `quotas`: each key optional; an absent key means unlimited.
//! - `node` / `nodes`: placement. When a tenant names a node and this process runs as a different
//!   node (`--node-name` / `POD_NAME`), requests answer **421 Misdirected Request** with the owner's
//!   base URL in the JSON body (`owner`, `location`) and in a `Location` header. A `node` must be a
//!   key of `nodes`.
//!
//! - `location`: optional, for a siloed tenant of a cloud store: `{"schema": "<schema>"}`
//!   (PostgreSQL), `{"table": "<table>"}` (DynamoDB) or `{"database": "<database id>"}`
//!   (Firestore, same project), exactly one key. The gateway serves the tenant's calls from that
//!   schema, table or database; without it the tenant is pooled (the gateway's own).
//!
//! Unknown keys are ignored so that newer operators can add fields. A file that fails to parse or
//! validate is rejected as a whole and the previous registry stays in force.

pub use allsource_core::registry as file;
pub mod quota;
pub mod registry;

pub use file::{
    Location, LocationEntry, Quotas, RegistryError, RegistryFile, TenantEntry, TenantState,
};
pub use quota::RateLimiter;
pub use registry::{sha256_hex, Registry, RegistrySnapshot, TenantInfo};
