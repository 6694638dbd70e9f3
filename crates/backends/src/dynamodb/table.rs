//! Pure builders for the DynamoDB backend: the pooled table's key schema and indexes, the item
//! keys, and the per-tenant IAM policy document. Nothing here calls AWS.
//!
//! One table holds every pooled tenant. Items (partition key `pk`, sort key `sk`):
//! - stream head: `pk = {tenant}#{stream}`, `sk = head` (`last_version`, `start_version`,
//!   `deleted`; `g1p = {tenant}`, `g1s = {stream}` put it in the `by-tenant` index for listing);
//! - event: `pk = {tenant}#{stream}`, `sk = v#{version:020}` (`g2p = {tenant}`,
//!   `g2s = position` put it in the `by-position` index for `read_all`);
//! - event-id item: `pk = {tenant}#{stream}`, `sk = i#{event id}` (idempotency);
//! - snapshot: `pk = {tenant}#{stream}`, `sk = snap`;
//! - tenant counters: `pk = {tenant}#`, `sk = tenant` (`next_position`, `events`, `bytes`,
//!   `streams`).
//!
//! Stream ids never contain `#` and are never empty, and tenant ids never contain `#`, so keys
//! cannot collide across tenants, and every key of a tenant starts with `{tenant}#` (or equals
//! `{tenant}` in an index), which is what the IAM policy's `dynamodb:LeadingKeys` condition pins.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};

use allsource_core::error::StoreError;

/// Index listing a tenant's stream heads in stream-id order.
pub const BY_TENANT: &str = "by-tenant";
/// Index listing a tenant's events in position order.
pub const BY_POSITION: &str = "by-position";
/// Attribute holding the expiry time (epoch seconds) of items with a TTL.
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// Items per `TransactWriteItems` call (the DynamoDB limit).
pub const MAX_TRANSACTION_ITEMS: usize = 100;
/// Events per append: every event takes two items (event + id), plus head and tenant counter.
pub const MAX_BATCH_EVENTS: usize = (MAX_TRANSACTION_ITEMS - 2) / 2;
const _: () = assert!(2 * MAX_BATCH_EVENTS + 2 <= MAX_TRANSACTION_ITEMS);

/// Largest event payload + metadata: an item is at most 400 KB including names and type.
pub const MAX_EVENT_BYTES: usize = 350 * 1024;
/// Largest append: a transaction carries at most 4 MB.
pub const MAX_BATCH_BYTES: usize = 3 * 1024 * 1024 + 512 * 1024;

/// Partition key of a stream's items.
pub fn stream_pk(tenant: &str, stream: &str) -> String {
    format!("{tenant}#{stream}")
}

/// Partition key of a tenant's counter item.
pub fn tenant_pk(tenant: &str) -> String {
    format!("{tenant}#")
}

/// Sort key of an event.
pub fn event_sk(version: u64) -> String {
    format!("v#{version:020}")
}

/// Sort key of an event-id item.
pub fn id_sk(id: &uuid::Uuid) -> String {
    format!("i#{id}")
}

/// True when an event item found through the `by-position` index of `tenant` really is one of
/// the tenant's events: its key is in the tenant's partition of its stream. Index attributes
/// are written by whoever writes the item, and a tenant with direct table access (its IAM
/// policy pins only the base-table key) could set them to another tenant's id; the key it
/// cannot forge.
pub fn event_item_belongs(tenant: &str, pk: &str, sk: &str, stream: &str) -> bool {
    sk.starts_with("v#") && pk == stream_pk(tenant, stream)
}

/// True when a stream head found through the `by-tenant` index of `tenant` really is the head
/// of the tenant's stream `g1s` (see [`event_item_belongs`]).
pub fn head_item_belongs(tenant: &str, pk: &str, sk: &str, g1s: &str) -> bool {
    sk == HEAD_SK && pk == stream_pk(tenant, g1s)
}

/// Sort key of a stream head.
pub const HEAD_SK: &str = "head";
/// Sort key of a snapshot.
pub const SNAPSHOT_SK: &str = "snap";
/// Sort key of a tenant counter item.
pub const TENANT_SK: &str = "tenant";

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| StoreError::Internal(format!("key schema: {e}")))
}

fn attr(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(|e| StoreError::Internal(format!("attribute definition: {e}")))
}

/// Attribute definitions of the table and its indexes.
pub fn attribute_definitions() -> Result<Vec<AttributeDefinition>, StoreError> {
    use ScalarAttributeType::{N, S};
    Ok(vec![
        attr("pk", S)?,
        attr("sk", S)?,
        attr("g1p", S)?,
        attr("g1s", S)?,
        attr("g2p", S)?,
        attr("g2s", N)?,
    ])
}

/// Primary key schema of the table.
pub fn key_schema() -> Result<Vec<KeySchemaElement>, StoreError> {
    Ok(vec![key("pk", KeyType::Hash)?, key("sk", KeyType::Range)?])
}

/// The two global secondary indexes (both project all attributes).
pub fn global_secondary_indexes() -> Result<Vec<GlobalSecondaryIndex>, StoreError> {
    let gsi = |name: &str, h: &str, r: &str| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(h, KeyType::Hash)?)
            .key_schema(key(r, KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(|e| StoreError::Internal(format!("index {name}: {e}")))
    };
    Ok(vec![
        gsi(BY_TENANT, "g1p", "g1s")?,
        gsi(BY_POSITION, "g2p", "g2s")?,
    ])
}

/// The IAM policy document that confines a tenant's credentials to its own items of the table
/// (`table_arn` like `arn:aws:dynamodb:us-east-1:123456789012:table/allsource`).
pub fn tenant_iam_policy(table_arn: &str, tenant: &str) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AllSourceTenantItems",
            "Effect": "Allow",
            "Action": [
                "dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query",
                "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                "dynamodb:BatchWriteItem", "dynamodb:ConditionCheckItem"
            ],
            "Resource": [table_arn, format!("{table_arn}/index/*")],
            "Condition": {
                "ForAllValues:StringLike": {
                    "dynamodb:LeadingKeys": [format!("{tenant}#*"), tenant]
                }
            }
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_do_not_collide_across_tenants() {
        assert_eq!(stream_pk("acme", "order-1"), "acme#order-1");
        assert_eq!(tenant_pk("acme"), "acme#");
        assert_eq!(event_sk(7), "v#00000000000000000007");
        // Sort keys of events order like their versions.
        assert!(event_sk(9) < event_sk(10));
    }

    #[test]
    fn batch_fits_one_transaction() {
        assert_eq!(MAX_BATCH_EVENTS, 49);
    }

    #[test]
    fn schema_has_both_indexes() {
        let idx = global_secondary_indexes().unwrap_or_default();
        let names: Vec<_> = idx.iter().map(|i| i.index_name().to_string()).collect();
        assert_eq!(names, vec![BY_TENANT, BY_POSITION]);
        assert_eq!(attribute_definitions().map(|a| a.len()).ok(), Some(6));
    }

    #[test]
    fn iam_policy_pins_leading_keys() {
        let p = tenant_iam_policy("arn:aws:dynamodb:us-east-1:1:table/t", "acme");
        let keys =
            &p["Statement"][0]["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"];
        assert_eq!(keys, &serde_json::json!(["acme#*", "acme"]));
        assert_eq!(
            p["Statement"][0]["Resource"][1],
            "arn:aws:dynamodb:us-east-1:1:table/t/index/*"
        );
    }
}
