//! DynamoDB provisioner: the pooled table of an EventStore with store-node's layout (key schema,
//! attribute definitions and the `by-tenant` / `by-position` global secondary indexes of
//! `allsource_backends::dynamodb::table`), DynamoDB Streams (new and old images), TTL on the
//! spec's attribute, point-in-time recovery, deletion protection, tags and the billing mode of
//! the spec. The plan ([`TablePlan`], [`create_table_input`], [`table_drift`]) is pure; the
//! provisioner makes one call per correction because UpdateTable takes one kind of change at a
//! time. A feature the endpoint refuses with `UnknownOperationException` (DynamoDB Local has no
//! point-in-time recovery and no tag listing) is reported as unsupported, never as done. This
//! module must never create per-tenant tables (the Tenant controller does) nor log credentials.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use allsource_backends::dynamodb::table;
use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::create_table::CreateTableInput;
use aws_sdk_dynamodb::types::{
    BillingMode as SdkBilling, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndexUpdate,
    PointInTimeRecoverySpecification, ProvisionedThroughput, StreamSpecification, StreamViewType,
    Tag, TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;

use super::{
    Deleted, EnsureAction, Ensured, Observed, ProvisionError, Provisioner, Unsupported,
    CALL_TIMEOUT,
};
use crate::api::eventstore::{BillingMode, DynamoDbSpec};
use crate::api::DeletionPolicy;

const SERVICE: &str = "dynamodb";

/// Capacity of the table (and of its indexes in provisioned mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Billing {
    /// PAY_PER_REQUEST.
    OnDemand,
    /// PROVISIONED with read and write capacity units.
    Provisioned {
        /// Read capacity units.
        read: i64,
        /// Write capacity units.
        write: i64,
    },
}

/// The desired table of an EventStore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    /// Table name.
    pub table: String,
    /// Capacity mode.
    pub billing: Billing,
    /// Deletion protection on.
    pub deletion_protection: bool,
    /// Point-in-time recovery on.
    pub point_in_time_recovery: bool,
    /// TTL attribute, when the spec asks for TTL.
    pub ttl_attribute: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// Table of an EventStore: `spec.dynamodb.tableName`, else `allsource-<namespace>-<name>-<hash>`
/// ([`super::identity_suffix`], so no two stores derive the same table).
pub fn table_name(namespace: &str, name: &str, explicit: Option<&str>) -> String {
    match explicit {
        Some(t) => t.to_string(),
        None => {
            let mut t = format!("allsource-{namespace}-{name}");
            t.truncate(255 - 9);
            t.push('-');
            t.push_str(&super::identity_suffix(namespace, name));
            t
        }
    }
}

/// Table of a siloed tenant of the store whose table is `store_table`:
/// `<store table>--<tenant id>`, cut to 246 bytes, then `-` and the hash of
/// `<store table>/<tenant id>` ([`super::identity_suffix`]), 255 bytes at most.
pub fn silo_table_name(store_table: &str, tenant_id: &str) -> String {
    let mut t = format!("{store_table}--{tenant_id}");
    t.truncate(255 - 9);
    t.push('-');
    t.push_str(&super::identity_suffix(store_table, tenant_id));
    t
}

/// The plan of a siloed tenant's table: the store's plan (billing, deletion protection,
/// point-in-time recovery, TTL, tags) under the tenant's table name. Pure.
pub fn silo_plan(store: &TablePlan, tenant_id: &str) -> TablePlan {
    TablePlan {
        table: silo_table_name(&store.table, tenant_id),
        ..store.clone()
    }
}

/// The plan of an EventStore's table from its spec.
pub fn plan(namespace: &str, name: &str, spec: &DynamoDbSpec) -> Result<TablePlan, ProvisionError> {
    let billing = match spec.billing_mode {
        BillingMode::OnDemand => Billing::OnDemand,
        BillingMode::Provisioned => match (spec.read_capacity, spec.write_capacity) {
            (Some(read), Some(write)) if read > 0 && write > 0 => {
                Billing::Provisioned { read, write }
            }
            _ => {
                return Err(ProvisionError::InvalidSpec(
                    "billingMode provisioned needs positive readCapacity and writeCapacity"
                        .to_string(),
                ))
            }
        },
    };
    Ok(TablePlan {
        table: table_name(namespace, name, spec.table_name.as_deref()),
        billing,
        deletion_protection: spec.deletion_protection,
        point_in_time_recovery: spec.point_in_time_recovery,
        ttl_attribute: spec.ttl_attribute.clone().filter(|a| !a.is_empty()),
        tags: spec.tags.clone(),
    })
}

fn build_err(e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::InvalidSpec(format!("dynamodb request: {e}"))
}

fn throughput(read: i64, write: i64) -> Result<ProvisionedThroughput, ProvisionError> {
    ProvisionedThroughput::builder()
        .read_capacity_units(read)
        .write_capacity_units(write)
        .build()
        .map_err(build_err)
}

fn streams() -> Result<StreamSpecification, ProvisionError> {
    StreamSpecification::builder()
        .stream_enabled(true)
        .stream_view_type(StreamViewType::NewAndOldImages)
        .build()
        .map_err(build_err)
}

/// The CreateTable input of a plan: store-node's keys and indexes plus the spec's settings.
pub fn create_table_input(p: &TablePlan) -> Result<CreateTableInput, ProvisionError> {
    let layout = |e: allsource_core::error::StoreError| ProvisionError::InvalidSpec(e.to_string());
    let mut gsis = table::global_secondary_indexes().map_err(layout)?;
    let mut b = CreateTableInput::builder()
        .table_name(&p.table)
        .set_attribute_definitions(Some(table::attribute_definitions().map_err(layout)?))
        .set_key_schema(Some(table::key_schema().map_err(layout)?))
        .stream_specification(streams()?)
        .deletion_protection_enabled(p.deletion_protection)
        .set_tags(Some(tags(&p.tags)?).filter(|t: &Vec<Tag>| !t.is_empty()));
    match p.billing {
        Billing::OnDemand => b = b.billing_mode(SdkBilling::PayPerRequest),
        Billing::Provisioned { read, write } => {
            for g in &mut gsis {
                g.provisioned_throughput = Some(throughput(read, write)?);
            }
            b = b
                .billing_mode(SdkBilling::Provisioned)
                .provisioned_throughput(throughput(read, write)?);
        }
    }
    b.set_global_secondary_indexes(Some(gsis))
        .build()
        .map_err(build_err)
}

fn tags(t: &BTreeMap<String, String>) -> Result<Vec<Tag>, ProvisionError> {
    t.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build().map_err(build_err))
        .collect()
}

/// What DescribeTable says about the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveTable {
    /// Table status (ACTIVE, CREATING, UPDATING, DELETING ...).
    pub status: String,
    /// Key schema as (attribute, HASH|RANGE).
    pub key_schema: Vec<(String, String)>,
    /// Global secondary index names (without those being deleted).
    pub indexes: BTreeSet<String>,
    /// Global secondary indexes being deleted (recreated once they are gone).
    pub indexes_deleting: BTreeSet<String>,
    /// Streams on with NEW_AND_OLD_IMAGES.
    pub streams: bool,
    /// Deletion protection on.
    pub deletion_protection: bool,
    /// Capacity mode.
    pub billing: Option<Billing>,
    /// Table ARN.
    pub arn: Option<String>,
    /// Latest stream ARN.
    pub stream_arn: Option<String>,
}

/// One difference between the plan and the live table, corrected by one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableDrift {
    /// A global secondary index of the layout is missing.
    MissingIndex(String),
    /// Streams off or with another view type.
    StreamsOff,
    /// Deletion protection differs from the spec (the wanted value).
    DeletionProtection(bool),
    /// Billing mode or capacity differs from the spec.
    Billing,
}

impl std::fmt::Display for TableDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableDrift::MissingIndex(i) => write!(f, "global secondary index {i} missing"),
            TableDrift::StreamsOff => write!(f, "DynamoDB Streams not on (NEW_AND_OLD_IMAGES)"),
            TableDrift::DeletionProtection(want) => {
                write!(f, "deletion protection should be {}", on_off(*want))
            }
            TableDrift::Billing => write!(f, "billing mode differs from the spec"),
        }
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The expected primary key: store-node's key schema as (attribute, key type).
pub fn expected_key_schema() -> Vec<(String, String)> {
    table::key_schema()
        .unwrap_or_default()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_string(),
                k.key_type().as_str().to_string(),
            )
        })
        .collect()
}

/// Differences between the plan and a live table, in the order they are corrected.
pub fn table_drift(p: &TablePlan, live: &LiveTable) -> Vec<TableDrift> {
    let mut d: Vec<TableDrift> = table::global_secondary_indexes()
        .unwrap_or_default()
        .iter()
        .map(|g| g.index_name().to_string())
        .filter(|n| !live.indexes.contains(n) && !live.indexes_deleting.contains(n))
        .map(TableDrift::MissingIndex)
        .collect();
    if !live.streams {
        d.push(TableDrift::StreamsOff);
    }
    if live.deletion_protection != p.deletion_protection {
        d.push(TableDrift::DeletionProtection(p.deletion_protection));
    }
    if live.billing.is_some_and(|b| b != p.billing) {
        d.push(TableDrift::Billing);
    }
    d
}

fn live_table(t: &aws_sdk_dynamodb::types::TableDescription) -> LiveTable {
    let billing = match t.billing_mode_summary().and_then(|b| b.billing_mode()) {
        Some(SdkBilling::PayPerRequest) => Some(Billing::OnDemand),
        _ => t.provisioned_throughput().map(|pt| Billing::Provisioned {
            read: pt.read_capacity_units().unwrap_or(0),
            write: pt.write_capacity_units().unwrap_or(0),
        }),
    };
    LiveTable {
        status: t
            .table_status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        key_schema: t
            .key_schema()
            .iter()
            .map(|k| {
                (
                    k.attribute_name().to_string(),
                    k.key_type().as_str().to_string(),
                )
            })
            .collect(),
        indexes: t
            .global_secondary_indexes()
            .iter()
            .filter(|g| g.index_status().map(|s| s.as_str()) != Some("DELETING"))
            .filter_map(|g| g.index_name().map(str::to_string))
            .collect(),
        indexes_deleting: t
            .global_secondary_indexes()
            .iter()
            .filter(|g| g.index_status().map(|s| s.as_str()) == Some("DELETING"))
            .filter_map(|g| g.index_name().map(str::to_string))
            .collect(),
        streams: t.stream_specification().is_some_and(|s| {
            s.stream_enabled() && s.stream_view_type() == Some(&StreamViewType::NewAndOldImages)
        }),
        deletion_protection: t.deletion_protection_enabled().unwrap_or(false),
        billing,
        arn: t.table_arn().map(str::to_string),
        stream_arn: t.latest_stream_arn().map(str::to_string),
    }
}

fn error_code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    match e {
        SdkError::ServiceError(se) => se.err().code(),
        _ => None,
    }
}

fn sdk_err<E, R>(e: SdkError<E, R>) -> ProvisionError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if let SdkError::ServiceError(se) = &e {
        let code = se.err().code().unwrap_or("Unknown").to_string();
        let message = format!("{code}: {}", se.err().message().unwrap_or(""));
        return match code.as_str() {
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "LimitExceededException"
            | "InternalServerError"
            | "ServiceUnavailable"
            | "ResourceInUseException" => ProvisionError::Unavailable {
                service: SERVICE,
                message,
            },
            "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "MissingAuthenticationTokenException"
            | "ExpiredTokenException" => ProvisionError::Permission {
                service: SERVICE,
                message,
            },
            "ValidationException" => ProvisionError::InvalidSpec(format!("dynamodb {message}")),
            _ => ProvisionError::Conflict(format!("dynamodb {message}")),
        };
    }
    ProvisionError::Unavailable {
        service: SERVICE,
        message: DisplayErrorContext(&e).to_string(),
    }
}

fn is_unknown_operation<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    error_code(e) == Some("UnknownOperationException")
}

/// Where and as whom the operator calls DynamoDB.
#[derive(Clone)]
pub struct Access {
    /// Region.
    pub region: String,
    /// Endpoint override (DynamoDB Local, VPC endpoint).
    pub endpoint: Option<String>,
    /// Static keys from the credentials Secret (access key id, secret key, session token);
    /// None: the default chain (IRSA web identity, instance role).
    pub keys: Option<(String, String, Option<String>)>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("keys", &self.keys.as_ref().map(|_| "<from Secret>"))
            .finish()
    }
}

/// Reads the static keys out of the credentials Secret's (decoded) data.
pub fn keys_from_secret(
    data: &BTreeMap<String, String>,
) -> Result<(String, String, Option<String>), ProvisionError> {
    match (
        data.get("AWS_ACCESS_KEY_ID"),
        data.get("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(k), Some(s)) if !k.is_empty() && !s.is_empty() => {
            Ok((k.clone(), s.clone(), data.get("AWS_SESSION_TOKEN").cloned()))
        }
        _ => Err(ProvisionError::InvalidSpec(
            "the credentials Secret needs keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                .to_string(),
        )),
    }
}

/// A client with short timeouts and one retry, so an outage surfaces as an error quickly.
pub async fn client(access: &Access) -> Client {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(CALL_TIMEOUT)
        .operation_timeout(CALL_TIMEOUT * 2)
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(access.region.clone()))
        .timeout_config(timeouts)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2));
    if let Some(ep) = &access.endpoint {
        loader = loader.endpoint_url(ep);
    }
    if let Some((k, s, t)) = &access.keys {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            k.clone(),
            s.clone(),
            t.clone(),
            None,
            "allsource-eventstore-secret",
        ));
    }
    Client::new(&loader.load().await)
}

/// The DynamoDB provisioner of one EventStore.
pub struct DynamoProvisioner {
    client: Client,
    plan: TablePlan,
}

impl DynamoProvisioner {
    /// A provisioner for `plan` using `client` (no call yet).
    pub fn new(client: Client, plan: TablePlan) -> Self {
        Self { client, plan }
    }

    async fn describe(&self) -> Result<Option<LiveTable>, ProvisionError> {
        match self
            .client
            .describe_table()
            .table_name(&self.plan.table)
            .send()
            .await
        {
            Ok(out) => Ok(out.table().map(live_table)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(sdk_err(e)),
        }
    }

    fn resources(&self, live: Option<&LiveTable>) -> BTreeMap<String, String> {
        let mut r = BTreeMap::from([("table".to_string(), self.plan.table.clone())]);
        if let Some(l) = live {
            if let Some(a) = &l.arn {
                r.insert("tableArn".to_string(), a.clone());
            }
            if let Some(a) = &l.stream_arn {
                r.insert("streamArn".to_string(), a.clone());
            }
        }
        r
    }

    /// Makes one UpdateTable call that corrects `d`.
    async fn correct(&self, d: &TableDrift) -> Result<(), ProvisionError> {
        let u = self.client.update_table().table_name(&self.plan.table);
        let layout =
            |e: allsource_core::error::StoreError| ProvisionError::InvalidSpec(e.to_string());
        let u = match d {
            TableDrift::MissingIndex(name) => {
                let Some(g) = table::global_secondary_indexes()
                    .map_err(layout)?
                    .into_iter()
                    .find(|g| g.index_name() == name)
                else {
                    return Ok(());
                };
                let mut create = CreateGlobalSecondaryIndexAction::builder()
                    .index_name(name)
                    .set_key_schema(Some(g.key_schema().to_vec()))
                    .set_projection(g.projection().cloned());
                if let Billing::Provisioned { read, write } = self.plan.billing {
                    create = create.provisioned_throughput(throughput(read, write)?);
                }
                u.set_attribute_definitions(Some(table::attribute_definitions().map_err(layout)?))
                    .global_secondary_index_updates(
                        GlobalSecondaryIndexUpdate::builder()
                            .create(create.build().map_err(build_err)?)
                            .build(),
                    )
            }
            TableDrift::StreamsOff => u.stream_specification(streams()?),
            TableDrift::DeletionProtection(want) => u.deletion_protection_enabled(*want),
            TableDrift::Billing => match self.plan.billing {
                Billing::OnDemand => u.billing_mode(SdkBilling::PayPerRequest),
                Billing::Provisioned { read, write } => u
                    .billing_mode(SdkBilling::Provisioned)
                    .provisioned_throughput(throughput(read, write)?),
            },
        };
        u.send().await.map(|_| ()).map_err(sdk_err)
    }

    /// Turns TTL on for the spec's attribute; Ok(None) when already so.
    async fn ensure_ttl(&self, attr: &str) -> Result<Option<String>, Unsupported> {
        let unsupported = |message: String| Unsupported {
            feature: "ttlAttribute".to_string(),
            message,
        };
        let d = self
            .client
            .describe_time_to_live()
            .table_name(&self.plan.table)
            .send()
            .await
            .map_err(|e| unsupported(DisplayErrorContext(&e).to_string()))?;
        let desc = d.time_to_live_description();
        let status = desc
            .and_then(|t| t.time_to_live_status())
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        let on = matches!(status.as_str(), "ENABLED" | "ENABLING")
            && desc.and_then(|t| t.attribute_name()) == Some(attr);
        if on {
            return Ok(None);
        }
        let spec = TimeToLiveSpecification::builder()
            .attribute_name(attr)
            .enabled(true)
            .build()
            .map_err(|e| unsupported(e.to_string()))?;
        self.client
            .update_time_to_live()
            .table_name(&self.plan.table)
            .time_to_live_specification(spec)
            .send()
            .await
            .map_err(|e| unsupported(DisplayErrorContext(&e).to_string()))?;
        Ok(Some(format!("TTL on attribute {attr} was off")))
    }

    /// Turns point-in-time recovery on; Ok(None) when already on.
    async fn ensure_pitr(&self) -> Result<Option<String>, ProvisionError> {
        let d = self
            .client
            .describe_continuous_backups()
            .table_name(&self.plan.table)
            .send()
            .await
            .map_err(pitr_err)?;
        let on = d
            .continuous_backups_description()
            .and_then(|c| c.point_in_time_recovery_description())
            .and_then(|p| p.point_in_time_recovery_status())
            .is_some_and(|s| s.as_str() == "ENABLED");
        if on {
            return Ok(None);
        }
        let spec = PointInTimeRecoverySpecification::builder()
            .point_in_time_recovery_enabled(true)
            .build()
            .map_err(build_err)?;
        self.client
            .update_continuous_backups()
            .table_name(&self.plan.table)
            .point_in_time_recovery_specification(spec)
            .send()
            .await
            .map_err(pitr_err)?;
        Ok(Some("point-in-time recovery was off".to_string()))
    }

    /// Puts the spec's tags on the table; Ok(None) when all are there.
    async fn ensure_tags(&self, arn: &str) -> Result<Option<String>, ProvisionError> {
        let live = self
            .client
            .list_tags_of_resource()
            .resource_arn(arn)
            .send()
            .await
            .map_err(tag_err)?;
        let have: BTreeMap<&str, &str> = live.tags().iter().map(|t| (t.key(), t.value())).collect();
        let missing: BTreeMap<String, String> = self
            .plan
            .tags
            .iter()
            .filter(|(k, v)| have.get(k.as_str()) != Some(&v.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if missing.is_empty() {
            return Ok(None);
        }
        self.client
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(tags(&missing)?))
            .send()
            .await
            .map_err(tag_err)?;
        Ok(Some(format!(
            "tags {} missing or different",
            missing.keys().cloned().collect::<Vec<_>>().join(", ")
        )))
    }
}

/// Marker message of a feature refused by the endpoint (mapped to [`Unsupported`]).
const UNSUPPORTED: &str = "unsupported by the endpoint";

fn pitr_err<E, R>(e: SdkError<E, R>) -> ProvisionError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if is_unknown_operation(&e) {
        return ProvisionError::Conflict(format!("{UNSUPPORTED}: {}", message_of(&e)));
    }
    sdk_err(e)
}

fn tag_err<E, R>(e: SdkError<E, R>) -> ProvisionError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    pitr_err(e)
}

fn message_of<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> String {
    match e {
        SdkError::ServiceError(se) => format!(
            "{}: {}",
            se.err().code().unwrap_or("Unknown"),
            se.err().message().unwrap_or("")
        ),
        _ => "no response".to_string(),
    }
}

/// Splits a feature call's result into a correction, an unsupported feature or a real error.
fn feature(
    name: &str,
    r: Result<Option<String>, ProvisionError>,
    out: &mut Observed,
) -> Result<(), ProvisionError> {
    match r {
        Ok(Some(d)) => {
            out.drift.push(d.clone());
            out.corrected.push(d);
            out.resources
                .insert(name.to_string(), "enabled".to_string());
            Ok(())
        }
        Ok(None) => {
            out.resources
                .insert(name.to_string(), "enabled".to_string());
            Ok(())
        }
        Err(ProvisionError::Conflict(m)) if m.starts_with(UNSUPPORTED) => {
            out.resources
                .insert(name.to_string(), UNSUPPORTED.to_string());
            out.unsupported.push(Unsupported {
                feature: name.to_string(),
                message: m,
            });
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[async_trait]
impl Provisioner for DynamoProvisioner {
    async fn ensure(&self) -> Result<Ensured, ProvisionError> {
        if let Some(live) = self.describe().await? {
            if live.key_schema != expected_key_schema() {
                return Err(ProvisionError::Conflict(format!(
                    "table {} exists with key schema {:?}, not pk HASH + sk RANGE; it is left untouched",
                    self.plan.table, live.key_schema
                )));
            }
            let action = if live.status == "CREATING" || live.status == "DELETING" {
                EnsureAction::Pending
            } else {
                EnsureAction::Adopted
            };
            return Ok(Ensured {
                action,
                resources: self.resources(Some(&live)),
            });
        }
        let input = create_table_input(&self.plan)?;
        let r = self
            .client
            .create_table()
            .set_table_name(input.table_name().map(str::to_string))
            .set_attribute_definitions(Some(input.attribute_definitions().to_vec()))
            .set_key_schema(Some(input.key_schema().to_vec()))
            .set_global_secondary_indexes(Some(input.global_secondary_indexes().to_vec()))
            .set_billing_mode(input.billing_mode().cloned())
            .set_provisioned_throughput(input.provisioned_throughput().cloned())
            .set_stream_specification(input.stream_specification().cloned())
            .set_deletion_protection_enabled(input.deletion_protection_enabled())
            .set_tags(Some(input.tags().to_vec()).filter(|t| !t.is_empty()))
            .send()
            .await;
        match r {
            Ok(out) => {
                let live = out.table_description().map(live_table);
                let action = if live.as_ref().is_some_and(|l| l.status == "ACTIVE") {
                    EnsureAction::Created
                } else {
                    EnsureAction::Pending
                };
                Ok(Ensured {
                    action,
                    resources: self.resources(live.as_ref()),
                })
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) =>
            {
                Ok(Ensured {
                    action: EnsureAction::Pending,
                    resources: self.resources(None),
                })
            }
            Err(e) => Err(sdk_err(e)),
        }
    }

    async fn observe(&self) -> Result<Observed, ProvisionError> {
        let Some(live) = self.describe().await? else {
            return Ok(Observed {
                drift: vec![format!("table {} missing", self.plan.table)],
                pending: true,
                resources: self.resources(None),
                ..Observed::default()
            });
        };
        let mut out = Observed {
            resources: self.resources(Some(&live)),
            ..Observed::default()
        };
        out.pending = live.status != "ACTIVE" || !live.indexes_deleting.is_empty();
        for d in table_drift(&self.plan, &live) {
            out.drift.push(d.to_string());
            match self.correct(&d).await {
                Ok(()) => out.corrected.push(d.to_string()),
                // The table is busy with an earlier change: the next round continues.
                Err(ProvisionError::Unavailable { message, .. })
                    if message.starts_with("ResourceInUseException") =>
                {
                    out.pending = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        // A new index is backfilled before it serves queries.
        if out
            .corrected
            .iter()
            .any(|c| c.starts_with("global secondary index"))
        {
            out.pending = true;
        }
        out.resources.insert(
            "deletionProtection".to_string(),
            on_off(self.plan.deletion_protection).to_string(),
        );
        out.resources
            .insert("streams".to_string(), "NEW_AND_OLD_IMAGES".to_string());
        if let Some(attr) = &self.plan.ttl_attribute {
            match self.ensure_ttl(attr).await {
                Ok(c) => {
                    if let Some(c) = c {
                        out.drift.push(c.clone());
                        out.corrected.push(c);
                    }
                    out.resources
                        .insert("ttlAttribute".to_string(), attr.clone());
                }
                Err(u) => {
                    out.resources
                        .insert("ttlAttribute".to_string(), UNSUPPORTED.to_string());
                    out.unsupported.push(u);
                }
            }
        }
        if self.plan.point_in_time_recovery {
            feature("pointInTimeRecovery", self.ensure_pitr().await, &mut out)?;
        }
        if !self.plan.tags.is_empty() {
            if let Some(arn) = live.arn.clone() {
                feature("tags", self.ensure_tags(&arn).await, &mut out)?;
            }
        }
        Ok(out)
    }

    async fn delete(&self, policy: DeletionPolicy) -> Result<Deleted, ProvisionError> {
        if policy == DeletionPolicy::Retain {
            return Ok(Deleted::Retained);
        }
        let Some(live) = self.describe().await? else {
            return Ok(Deleted::AlreadyGone);
        };
        if live.deletion_protection {
            self.correct(&TableDrift::DeletionProtection(false)).await?;
        }
        match self
            .client
            .delete_table()
            .table_name(&self.plan.table)
            .send()
            .await
        {
            Ok(_) => Ok(Deleted::Deleted),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(Deleted::AlreadyGone)
            }
            Err(e) => Err(sdk_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::KeyType;

    fn spec() -> DynamoDbSpec {
        serde_json::from_value(serde_json::json!({
            "region": "eu-west-1",
            "ttlAttribute": "expires_at",
            "tags": {"team": "payments"},
        }))
        .unwrap()
    }

    fn healthy(p: &TablePlan) -> LiveTable {
        LiveTable {
            status: "ACTIVE".into(),
            key_schema: expected_key_schema(),
            indexes: [table::BY_TENANT, table::BY_POSITION]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            streams: true,
            deletion_protection: p.deletion_protection,
            billing: Some(p.billing),
            indexes_deleting: BTreeSet::new(),
            arn: Some("arn:aws:dynamodb:eu-west-1:1:table/t".into()),
            stream_arn: None,
        }
    }

    #[test]
    fn plan_defaults_and_names() {
        let p = plan("shop", "orders", &spec()).unwrap();
        let want = format!(
            "allsource-shop-orders-{}",
            super::super::identity_suffix("shop", "orders")
        );
        assert_eq!(p.table, want);
        assert_ne!(
            plan("a", "b-c", &spec()).unwrap().table,
            plan("a-b", "c", &spec()).unwrap().table,
            "two stores must never share a derived table"
        );
        assert_eq!(p.billing, Billing::OnDemand);
        assert!(p.deletion_protection && p.point_in_time_recovery);
        assert_eq!(p.ttl_attribute.as_deref(), Some("expires_at"));
        let mut s = spec();
        s.billing_mode = BillingMode::Provisioned;
        assert!(matches!(
            plan("shop", "orders", &s),
            Err(ProvisionError::InvalidSpec(_))
        ));
        s.read_capacity = Some(5);
        s.write_capacity = Some(3);
        s.table_name = Some("mine".into());
        let p = plan("shop", "orders", &s).unwrap();
        assert_eq!(p.billing, Billing::Provisioned { read: 5, write: 3 });
        assert_eq!(p.table, "mine");
    }

    #[test]
    fn silo_plan_is_the_store_plan_under_the_tenant_table() {
        let store = plan("shop", "orders", &spec()).unwrap();
        let silo = silo_plan(&store, "acme");
        assert!(
            silo.table.starts_with(&format!("{}--acme-", store.table)),
            "{}",
            silo.table
        );
        assert_eq!(
            TablePlan {
                table: store.table.clone(),
                ..silo.clone()
            },
            store,
            "billing, protection, PITR, TTL and tags are the store's"
        );
        assert_ne!(silo.table, silo_plan(&store, "acme2").table);
        let long = "t".repeat(255);
        let (a, b) = (silo_table_name(&long, "a"), silo_table_name(&long, "b"));
        assert_eq!(a.len(), 255);
        assert_ne!(a, b, "cut names stay apart");
        assert_eq!(
            create_table_input(&silo)
                .unwrap()
                .global_secondary_indexes()
                .len(),
            2
        );
    }

    #[test]
    fn create_input_has_the_shared_layout() {
        let p = plan("shop", "orders", &spec()).unwrap();
        let i = create_table_input(&p).unwrap();
        assert_eq!(i.table_name(), Some(p.table.as_str()));
        assert!(p.table.starts_with("allsource-shop-orders-"));
        let keys: Vec<_> = i
            .key_schema()
            .iter()
            .map(|k| (k.attribute_name(), k.key_type().clone()))
            .collect();
        assert_eq!(keys, vec![("pk", KeyType::Hash), ("sk", KeyType::Range)]);
        let idx: Vec<_> = i
            .global_secondary_indexes()
            .iter()
            .map(|g| g.index_name())
            .collect();
        assert_eq!(idx, vec![table::BY_TENANT, table::BY_POSITION]);
        assert_eq!(i.billing_mode(), Some(&SdkBilling::PayPerRequest));
        assert_eq!(
            i.stream_specification().and_then(|s| s.stream_view_type()),
            Some(&StreamViewType::NewAndOldImages)
        );
        assert_eq!(i.deletion_protection_enabled(), Some(true));
        assert_eq!(i.tags().len(), 1);
        // Provisioned mode gives the indexes capacity too.
        let mut pp = p.clone();
        pp.billing = Billing::Provisioned { read: 4, write: 2 };
        let i = create_table_input(&pp).unwrap();
        assert!(i
            .global_secondary_indexes()
            .iter()
            .all(|g| g.provisioned_throughput().map(|t| t.read_capacity_units()) == Some(4)));
    }

    #[test]
    fn drift_items() {
        let p = plan("shop", "orders", &spec()).unwrap();
        assert!(table_drift(&p, &healthy(&p)).is_empty());
        let mut live = healthy(&p);
        live.indexes.remove(table::BY_POSITION);
        let mut deleting = live.clone();
        deleting
            .indexes_deleting
            .insert(table::BY_POSITION.to_string());
        // An index still being deleted is recreated only once it is gone.
        assert!(table_drift(&p, &deleting).is_empty());
        live.streams = false;
        live.deletion_protection = false;
        live.billing = Some(Billing::Provisioned { read: 1, write: 1 });
        let d = table_drift(&p, &live);
        assert_eq!(
            d,
            vec![
                TableDrift::MissingIndex(table::BY_POSITION.to_string()),
                TableDrift::StreamsOff,
                TableDrift::DeletionProtection(true),
                TableDrift::Billing,
            ]
        );
        assert_eq!(
            d[0].to_string(),
            "global secondary index by-position missing"
        );
    }

    #[test]
    fn secret_keys_and_redacted_debug() {
        let data = BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".to_string(), "AKIA".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "hush".to_string()),
        ]);
        let keys = keys_from_secret(&data).unwrap();
        assert_eq!(keys.0, "AKIA");
        let a = Access {
            region: "us-east-1".into(),
            endpoint: None,
            keys: Some(keys),
        };
        assert!(!format!("{a:?}").contains("hush"));
        assert!(keys_from_secret(&BTreeMap::new()).is_err());
    }
}
