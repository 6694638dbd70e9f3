//! DynamoDB helpers shared by the operator tests: what a table looks like from outside.

use aws_sdk_dynamodb::types::TableDescription;
use aws_sdk_dynamodb::Client;

/// The table's description (None: no such table, or the call failed).
pub async fn describe(ddb: &Client, table: &str) -> Option<TableDescription> {
    ddb.describe_table()
        .table_name(table)
        .send()
        .await
        .ok()
        .and_then(|o| o.table().cloned())
}

/// Names of the table's global secondary indexes, sorted.
pub fn index_names(t: &TableDescription) -> Vec<String> {
    let mut v: Vec<String> = t
        .global_secondary_indexes()
        .iter()
        .filter_map(|g| g.index_name().map(str::to_string))
        .collect();
    v.sort();
    v
}
