//! Pure side of the Firestore data API for the provisioner: the store's marker document
//! `allsource/<namespace>.<name>` (who provisioned this database for which EventStore), the
//! member documents `allsource/<store>/members/<tenantId>` (which tenants' documents the store
//! owns, so `deletionPolicy: Delete` removes exactly those), the queries that page through a
//! tenant's subtree (store-node's collections, [`allsource_backends::firestore::layout`]), and
//! the mapping of store-node's [`RestError`] to [`ProvisionError`]. Nothing here does I/O.

use allsource_backends::firestore::layout::{self, EVENTS, EVENT_IDS, SNAPSHOTS, STREAMS, TENANTS};
use allsource_backends::firestore::rest::RestError;
use serde_json::{json, Map, Value};

use crate::provision::ProvisionError;

/// Collection of the operator's marker documents (one per EventStore using the database).
pub const MARKERS: &str = "allsource";
/// Sub-collection of a marker with one document per tenant of the store.
pub const MEMBERS: &str = "members";
/// Collection with one document per tenant id used in the database, naming the store (marker)
/// that holds it: created with an exists=false precondition, it makes a tenant id belong to
/// exactly one store even when two register it at the same moment.
pub const CLAIMS: &str = "allsourceTenantClaims";
/// Field of a claim naming the marker of the store that holds the tenant id.
pub const CLAIM_MARKER: &str = "marker";
/// Documents deleted per commit (Firestore allows 500 writes).
pub const DELETE_PAGE: usize = 300;
/// store-node's collections under a tenant document, deepest first: deleting in this order
/// never leaves a page of children behind a deleted parent.
pub const TENANT_SUBTREE: [&str; 4] = [EVENTS, EVENT_IDS, SNAPSHOTS, STREAMS];

const SERVICE: &str = "firestore";

/// Document id of a store's marker: `<namespace>.<name>` (both DNS labels, so unique and free
/// of `/`).
pub fn marker_id(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

/// Full name of a store's marker document under `root` (`projects/p/databases/d/documents`).
pub fn marker_doc(root: &str, marker: &str) -> String {
    format!("{root}/{MARKERS}/{marker}")
}

/// Full name of a tenant's member document under a store's marker.
pub fn member_doc(root: &str, marker: &str, tenant_id: &str) -> String {
    format!("{}/{MEMBERS}/{tenant_id}", marker_doc(root, marker))
}

/// Full name of a tenant's root document in store-node's layout (`tenants/<id>`).
pub fn tenant_doc(root: &str, tenant_id: &str) -> String {
    format!("{root}/{TENANTS}/{tenant_id}")
}

fn strings(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), layout::string(v)))
        .collect()
}

/// The write creating a store's marker (fails when it exists).
pub fn create_marker(root: &str, marker: &str, namespace: &str, name: &str) -> Value {
    layout::create(
        &marker_doc(root, marker),
        strings(&[
            ("namespace", namespace),
            ("name", name),
            ("managedBy", "allsource-operator"),
            ("tenantsCollection", TENANTS),
        ]),
    )
}

/// Full name of the claim document of a tenant id ([`CLAIMS`]).
pub fn claim_doc(root: &str, tenant_id: &str) -> String {
    format!("{root}/{CLAIMS}/{tenant_id}")
}

/// The writes registering a tenant as a member of a store, in one commit: the claim of its id
/// (fails when any store holds it already) and the member document (replaced if present).
pub fn claim_member(root: &str, marker: &str, tenant_id: &str, tenant: &str) -> Vec<Value> {
    vec![
        layout::create(
            &claim_doc(root, tenant_id),
            strings(&[(CLAIM_MARKER, marker), ("tenant", tenant)]),
        ),
        layout::set(
            &member_doc(root, marker, tenant_id),
            strings(&[("tenantId", tenant_id), ("tenant", tenant)]),
        ),
    ]
}

/// The marker a claim document names (None: not a claim this operator wrote).
pub fn claim_holder(doc: &Value) -> Option<&str> {
    doc["fields"][CLAIM_MARKER]["stringValue"].as_str()
}

/// A delete of `name` that fails unless the document is still at `update_time` (so a claim
/// is only ever removed by the store that read it as its own).
pub fn delete_unchanged(name: &str, update_time: &str) -> Value {
    json!({ "delete": name, "currentDocument": { "updateTime": update_time } })
}

/// A plain delete (no precondition: a document already gone is fine).
pub fn delete(name: &str) -> Value {
    json!({ "delete": name })
}

/// Names only, `limit` at most, of `collection` documents at any depth under the query's parent.
pub fn names_query(collection: &str, all_descendants: bool, limit: usize) -> Value {
    json!({ "structuredQuery": {
        "from": [{ "collectionId": collection, "allDescendants": all_descendants }],
        "select": { "fields": [{ "fieldPath": "__name__" }] },
        "limit": i32::try_from(limit).unwrap_or(i32::MAX),
    }})
}

/// Document names of a query answer.
pub fn names(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .filter_map(|d| d.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The last path segment of a document name (its id).
pub fn doc_id(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Maps a data API failure to what the reconciler does about it. Tokens never appear in
/// store-node's errors (they carry only Firestore's status and message).
pub fn rest_err(e: RestError) -> ProvisionError {
    match e {
        RestError::Unavailable(m) | RestError::Aborted(m) => ProvisionError::Unavailable {
            service: SERVICE,
            message: m,
        },
        RestError::Refused { status, message }
            if matches!(
                status.as_str(),
                "UNAUTHENTICATED" | "PERMISSION_DENIED" | "HTTP 401" | "HTTP 403"
            ) =>
        {
            ProvisionError::Permission {
                service: SERVICE,
                message: format!("{status}: {message}"),
            }
        }
        // store-node files NOT_FOUND under preconditions; for the provisioner it means the
        // database (or project) does not exist.
        RestError::Precondition(m) => {
            ProvisionError::InvalidSpec(format!("firestore database not usable: {m}"))
        }
        RestError::Refused { status, message } => {
            ProvisionError::InvalidSpec(format!("firestore refused ({status}): {message}"))
        }
        RestError::TooLarge(m) | RestError::Decode(m) => ProvisionError::Unavailable {
            service: SERVICE,
            message: m,
        },
        RestError::Auth(e) => super::auth::auth_err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_writes() {
        let root = "projects/p/databases/(default)/documents";
        assert_eq!(marker_id("shop", "orders"), "shop.orders");
        assert_eq!(
            member_doc(root, "shop.orders", "acme"),
            "projects/p/databases/(default)/documents/allsource/shop.orders/members/acme"
        );
        assert_eq!(
            tenant_doc(root, "acme"),
            "projects/p/databases/(default)/documents/tenants/acme"
        );
        let w = create_marker(root, "shop.orders", "shop", "orders");
        assert_eq!(w["currentDocument"]["exists"], false);
        assert_eq!(w["update"]["fields"]["name"]["stringValue"], "orders");
        assert_eq!(
            w["update"]["fields"]["tenantsCollection"]["stringValue"],
            "tenants"
        );
        let q = names_query(EVENTS, true, 10);
        assert_eq!(q["structuredQuery"]["from"][0]["allDescendants"], true);
        assert_eq!(doc_id("a/b/members/acme"), "acme");
        assert_eq!(TENANT_SUBTREE.last(), Some(&STREAMS));
    }

    #[test]
    fn error_mapping() {
        assert!(rest_err(RestError::Unavailable("down".into())).is_retryable());
        assert!(matches!(
            rest_err(RestError::Refused {
                status: "PERMISSION_DENIED".into(),
                message: "no".into()
            }),
            ProvisionError::Permission { .. }
        ));
        assert!(matches!(
            rest_err(RestError::Precondition("database missing".into())),
            ProvisionError::InvalidSpec(_)
        ));
    }
}
