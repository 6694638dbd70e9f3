//! Pure side of the Firestore Admin API: what a store's database must have (the composite index,
//! the single-field index exemptions of event bodies, the TTL policies), each as store-node's
//! request ([`allsource_backends::firestore::admin`], never a second copy of the layout) plus
//! the `GET` that tells whether it is there, and how a live answer reads (present, building,
//! missing); and the database requests of a siloed tenant's own database
//! (`projects.databases.get` / `create` / `delete`). Nothing here does I/O.

use allsource_backends::firestore::admin::{self as sn, AdminRequest, Method};
use serde_json::Value;

/// What an item of the desired admin state is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemKind {
    /// A composite index; listed with `GET .../indexes`, matched by scope and fields.
    Index {
        /// Query scope (`COLLECTION_GROUP`).
        scope: String,
        /// (field path, order) in order, without Firestore's implicit `__name__`.
        fields: Vec<(String, String)>,
    },
    /// A field whose single-field indexes are exempted (`indexConfig.indexes` empty).
    Exemption,
    /// A TTL policy on a field (`ttlConfig` present).
    Ttl,
}

/// One thing the database must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Human label, used in drift messages and Events.
    pub label: String,
    /// What it is and how its `GET` answer is read.
    pub kind: ItemKind,
    /// Path under `/v1/` to `GET` (the index list, or the field).
    pub probe: String,
    /// store-node's request that creates it.
    pub request: AdminRequest,
}

/// How a live answer relates to an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// There and serving.
    Present,
    /// There but still being built (`CREATING`): check again soon.
    Building,
    /// Not there (or broken, `NEEDS_REPAIR`): create it.
    Missing,
}

/// `collectionGroups/{g}/...` → `g`, for labels.
fn group_of(path: &str) -> &str {
    path.split("/collectionGroups/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("?")
}

/// `.../fields/{f}?updateMask=...` → `f`.
fn field_of(path: &str) -> &str {
    path.split("/fields/")
        .nth(1)
        .and_then(|r| r.split('?').next())
        .unwrap_or("?")
}

fn index_fields(v: &Value) -> Vec<(String, String)> {
    v.get("fields")
        .and_then(Value::as_array)
        .map(|fs| {
            fs.iter()
                .filter_map(|f| {
                    let path = f.get("fieldPath")?.as_str()?;
                    let order = f
                        .get("order")
                        .or_else(|| f.get("arrayConfig"))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    (path != "__name__").then(|| (path.to_string(), order.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn index_item(r: AdminRequest) -> Item {
    let scope = r.body["queryScope"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let fields = index_fields(&r.body);
    let label = format!(
        "composite index {}({})",
        group_of(&r.path),
        fields
            .iter()
            .map(|(f, o)| format!("{f} {o}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Item {
        label,
        kind: ItemKind::Index { scope, fields },
        probe: r.path.clone(),
        request: r,
    }
}

fn field_item(r: AdminRequest, kind: ItemKind) -> Item {
    let (group, field) = (group_of(&r.path), field_of(&r.path));
    let label = match kind {
        ItemKind::Ttl => format!("TTL policy on {group}.{field}"),
        _ => format!("index exemption of {group}.{field}"),
    };
    Item {
        label,
        kind,
        probe: r.path.split('?').next().unwrap_or_default().to_string(),
        request: r,
    }
}

/// Everything the database of a store needs, in the order it is checked: the composite
/// index, the exemptions, and the TTL policies when `ttl` is on.
pub fn desired(project: &str, database: &str, ttl: bool) -> Vec<Item> {
    let mut items: Vec<Item> = sn::composite_indexes(project, database)
        .into_iter()
        .map(index_item)
        .collect();
    items.extend(
        sn::index_exemptions(project, database)
            .into_iter()
            .map(|r| field_item(r, ItemKind::Exemption)),
    );
    if ttl {
        items.extend(
            sn::ttl_policies(project, database)
                .into_iter()
                .map(|r| field_item(r, ItemKind::Ttl)),
        );
    }
    items
}

/// Reads the `GET` answer of `item`'s probe.
pub fn presence(item: &Item, answer: &Value) -> Presence {
    match &item.kind {
        ItemKind::Index { scope, fields } => {
            let found = answer
                .get("indexes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|i| {
                    i.get("queryScope").and_then(Value::as_str) == Some(scope.as_str())
                        && index_fields(i) == *fields
                        && i.get("state").and_then(Value::as_str) != Some("NEEDS_REPAIR")
                });
            match found.and_then(|i| i.get("state")).and_then(Value::as_str) {
                None if found.is_none() => Presence::Missing,
                Some("CREATING") => Presence::Building,
                _ => Presence::Present,
            }
        }
        ItemKind::Exemption => {
            let cfg = answer.get("indexConfig");
            let inherits = cfg
                .and_then(|c| c.get("usesAncestorConfig"))
                .and_then(Value::as_bool)
                .unwrap_or(cfg.is_none());
            let indexes = cfg
                .and_then(|c| c.get("indexes"))
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            if inherits || indexes {
                Presence::Missing
            } else {
                Presence::Present
            }
        }
        ItemKind::Ttl => match answer
            .get("ttlConfig")
            .map(|t| t.get("state").and_then(Value::as_str).unwrap_or("ACTIVE"))
        {
            None | Some("NEEDS_REPAIR") => Presence::Missing,
            Some("CREATING") => Presence::Building,
            Some(_) => Presence::Present,
        },
    }
}

/// HTTP verb of a request, for logs and the recording test.
pub fn verb(r: &AdminRequest) -> &'static str {
    match r.method {
        Method::Post => "POST",
        Method::Patch => "PATCH",
        Method::Delete => "DELETE",
    }
}

/// Type of the databases the operator creates (store-node speaks the Native mode API).
pub const DATABASE_TYPE: &str = "FIRESTORE_NATIVE";

/// Path under `/v1/` of a database (its `GET`, and its `DELETE`).
pub fn database_path(project: &str, database: &str) -> String {
    format!("projects/{project}/databases/{database}")
}

/// `projects.databases.create` of `database` in `location` (the store database's
/// `locationId`): a Native mode database.
pub fn create_database(project: &str, database: &str, location: &str) -> AdminRequest {
    AdminRequest {
        method: Method::Post,
        path: format!("projects/{project}/databases?databaseId={database}"),
        body: serde_json::json!({ "type": DATABASE_TYPE, "locationId": location }),
    }
}

/// `projects.databases.delete` of `database` (its documents go with it).
pub fn delete_database(project: &str, database: &str) -> AdminRequest {
    AdminRequest {
        method: Method::Delete,
        path: database_path(project, database),
        body: Value::Null,
    }
}

/// The `locationId` of a database `GET` answer.
pub fn location_of(answer: &Value) -> Option<&str> {
    answer
        .get("locationId")
        .and_then(Value::as_str)
        .filter(|l| !l.is_empty())
}

/// Whether an answer to an Admin API call means "this server does not serve the Admin API":
/// the emulator's plain-text 404 (store-node's `NotServed` rule), or 501 / `UNIMPLEMENTED`.
pub fn not_served(status: u16, body: &str) -> bool {
    let json: Option<Value> = serde_json::from_str(body).ok();
    let grpc = json
        .as_ref()
        .and_then(|v| v.pointer("/error/status"))
        .and_then(Value::as_str);
    match status {
        404 => json.as_ref().is_none_or(|v| v.get("error").is_none()),
        501 => true,
        _ => grpc == Some("UNIMPLEMENTED"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn desired_items_follow_store_node_requests() {
        let items = desired("p", "(default)", true);
        let labels: Vec<&str> = items.iter().map(|i| i.label.as_str()).collect();
        assert_eq!(
            labels,
            vec![
                "composite index events(tenant ASCENDING, position ASCENDING)",
                "index exemption of events.payload",
                "index exemption of events.metadata",
                "TTL policy on events.expires_at",
                "TTL policy on eventIds.expires_at",
            ]
        );
        assert_eq!(
            items[0].probe,
            "projects/p/databases/(default)/collectionGroups/events/indexes"
        );
        assert_eq!(
            items[3].probe,
            "projects/p/databases/(default)/collectionGroups/events/fields/expires_at"
        );
        assert_eq!(items[3].request, sn::ttl_policies("p", "(default)")[0]);
        assert_eq!(desired("p", "(default)", false).len(), 3);
    }

    #[test]
    fn reads_live_answers() {
        let items = desired("p", "d", true);
        let (index, exempt, ttl) = (&items[0], &items[1], &items[3]);
        let listed = |state: &str| {
            json!({"indexes": [
                {"queryScope": "COLLECTION", "fields": [{"fieldPath": "tenant", "order": "ASCENDING"}], "state": "READY"},
                {"queryScope": "COLLECTION_GROUP", "state": state, "fields": [
                    {"fieldPath": "tenant", "order": "ASCENDING"},
                    {"fieldPath": "position", "order": "ASCENDING"},
                    {"fieldPath": "__name__", "order": "ASCENDING"}]}
            ]})
        };
        assert_eq!(presence(index, &listed("READY")), Presence::Present);
        assert_eq!(presence(index, &listed("CREATING")), Presence::Building);
        assert_eq!(presence(index, &listed("NEEDS_REPAIR")), Presence::Missing);
        assert_eq!(presence(index, &json!({})), Presence::Missing);

        let inherited = json!({"indexConfig": {"usesAncestorConfig": true, "indexes": [{"order": "ASCENDING"}]}});
        assert_eq!(presence(exempt, &inherited), Presence::Missing);
        assert_eq!(
            presence(exempt, &json!({"indexConfig": {}})),
            Presence::Present
        );
        assert_eq!(presence(exempt, &json!({"name": "x"})), Presence::Missing);

        assert_eq!(presence(ttl, &json!({"name": "x"})), Presence::Missing);
        assert_eq!(
            presence(ttl, &json!({"ttlConfig": {"state": "CREATING"}})),
            Presence::Building
        );
        assert_eq!(
            presence(ttl, &json!({"ttlConfig": {"state": "ACTIVE"}})),
            Presence::Present
        );
    }

    #[test]
    fn database_requests() {
        let c = create_database("p", "orders-acme-1a2b3c4d", "eur3");
        assert_eq!(c.method, Method::Post);
        assert_eq!(
            c.path,
            "projects/p/databases?databaseId=orders-acme-1a2b3c4d"
        );
        assert_eq!(
            c.body,
            json!({"type": "FIRESTORE_NATIVE", "locationId": "eur3"})
        );
        let d = delete_database("p", "orders-acme-1a2b3c4d");
        assert_eq!((verb(&d), d.body.clone()), ("DELETE", Value::Null));
        assert_eq!(d.path, database_path("p", "orders-acme-1a2b3c4d"));
        assert_eq!(d.path, "projects/p/databases/orders-acme-1a2b3c4d");
        let live = json!({"name": "projects/p/databases/(default)", "locationId": "nam5"});
        assert_eq!(location_of(&live), Some("nam5"));
        assert_eq!(location_of(&json!({"locationId": ""})), None);
        assert_eq!(location_of(&json!({})), None);
    }

    #[test]
    fn emulator_answers_are_not_served() {
        assert!(not_served(404, "Not Found"));
        assert!(!not_served(404, r#"{"error":{"status":"NOT_FOUND"}}"#));
        assert!(not_served(501, ""));
        assert!(not_served(400, r#"{"error":{"status":"UNIMPLEMENTED"}}"#));
        assert!(!not_served(
            403,
            r#"{"error":{"status":"PERMISSION_DENIED"}}"#
        ));
    }
}
