//! Cloud EventStores (backend postgres and dynamodb) against the env's real kube-apiserver,
//! PostgreSQL and DynamoDB Local, the operator's controllers running in-process, one namespace
//! and unique schema / table names per test: create -> resources exist with the shared layout
//! (pg_catalog: tables, indexes, RLS policies; DescribeTable: keys, indexes, streams, TTL,
//! deletion protection) -> Ready; drift made by hand is corrected; what DynamoDB Local refuses
//! (point-in-time recovery) becomes a Degraded FeatureUnsupported condition; deletion under
//! Retain keeps and under Delete drops; an outage (closed port) is Degraded with the service's
//! error and recovers by itself once a listener appears on that port. Prints time to Ready.

mod operator_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use allsource_operator::api::eventstore::EventStoreStatus;
use allsource_operator::api::{EventStore, Phase};
use allsource_operator::controllers::eventstore::cloud::set_drift_interval;
use allsource_tests::env::{TestEnv, AWS_TEST_ACCESS_KEY, AWS_TEST_SECRET_KEY};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use operator_support::{install_crds, wait_for, Operator};

const DEADLINE: Duration = Duration::from_secs(60);

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

async fn setup(
    prefix: &str,
    services: &[&str],
) -> Option<(
    &'static TestEnv,
    allsource_tests::env::TestNamespace,
    Client,
    Operator,
)> {
    for s in services {
        allsource_tests::env::require(s)?;
    }
    let env = allsource_tests::env::require("kube")?;
    let ns = env.test_namespace(prefix).await.unwrap();
    let client = ns.client().clone();
    install_crds(&client).await;
    // Drift is looked for every 2 s here (60 s by default).
    set_drift_interval(Duration::from_secs(2));
    let op = Operator::start(&client, ns.name());
    Some((env, ns, client, op))
}

async fn secret(client: &Client, ns: &str, name: &str, data: BTreeMap<&str, String>) {
    let s: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "stringData": data,
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

fn pg_store(name: &str, schema: &str, policy: &str, gateway: bool) -> EventStore {
    let mut spec = serde_json::json!({
        "backend": "postgres",
        "postgres": {"connectionSecretRef": {"name": "pg-admin"}, "schema": schema, "sslMode": "disable"},
        "deletionPolicy": policy,
    });
    if gateway {
        spec["gateway"] = serde_json::json!({"enabled": true, "replicas": 1});
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "allsource.io/v1alpha1", "kind": "EventStore",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

fn ddb_store(name: &str, table: &str, endpoint: &str, policy: &str) -> EventStore {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "allsource.io/v1alpha1", "kind": "EventStore",
        "metadata": {"name": name},
        "spec": {
            "backend": "dynamodb",
            "dynamodb": {
                "region": "us-east-1", "endpoint": endpoint, "tableName": table,
                "credentialsSecretRef": {"name": "aws-keys"},
                // DynamoDB Local has no point-in-time recovery; asked for separately below.
                "pointInTimeRecovery": false, "deletionProtection": true,
                "ttlAttribute": "expires_at",
            },
            "deletionPolicy": policy,
        }
    }))
    .unwrap()
}

async fn wait_status(
    api: &Api<EventStore>,
    name: &str,
    what: &str,
    pred: impl Fn(&EventStore, &EventStoreStatus) -> bool,
) -> EventStoreStatus {
    wait_for(what, DEADLINE, || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let es = api.get(name).await.ok()?;
            let st = es.status.clone()?;
            pred(&es, &st).then_some(st)
        }
    })
    .await
}

fn ready(es: &EventStore, st: &EventStoreStatus) -> bool {
    st.phase == Some(Phase::Ready) && st.observed_generation == es.metadata.generation
}

fn condition(st: &EventStoreStatus, t: &str) -> Option<(bool, String, String)> {
    st.conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.is_true(), c.reason.clone(), c.message.clone()))
}

async fn delete_and_wait_gone(api: &Api<EventStore>, name: &str) {
    api.delete(name, &DeleteParams::default()).await.unwrap();
    wait_for(&format!("{name} deleted"), DEADLINE, || {
        let api = api.clone();
        async move { api.get_opt(name).await.ok()?.is_none().then_some(()) }
    })
    .await;
}

/// Waits for a DriftCorrected Event whose note names `item`.
async fn drift_event(client: &Client, ns: &str, item: &str) {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("DriftCorrected event for {item}"),
        DEADLINE,
        || {
            let events = events.clone();
            async move {
                events
                    .list(&Default::default())
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .find(|e| {
                        e.reason.as_deref() == Some("DriftCorrected")
                            && e.note.as_deref().is_some_and(|m| m.contains(item))
                    })
                    .map(|_| ())
            }
        },
    )
    .await;
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

async fn pg_count(c: &tokio_postgres::Client, sql: &str, schema: &str) -> i64 {
    c.query_one(sql, &[&schema]).await.unwrap().get(0)
}

const Q_SCHEMA: &str = "SELECT count(*) FROM pg_namespace WHERE nspname = $1";
const Q_INDEX: &str = "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname = 'events_tenant_position'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_provision_drift_gateway_and_delete() {
    let Some((env, ns, client, op)) = setup("es-pg", &["postgres"]).await else {
        return;
    };
    let n = ns.name().to_string();
    secret(
        &client,
        &n,
        "pg-admin",
        BTreeMap::from([("url", env.pg_url().to_string())]),
    )
    .await;
    let schema = format!("allsource_t_{}", suffix());
    let kept = format!("allsource_k_{}", suffix());
    let es: Api<EventStore> = Api::namespaced(client.clone(), &n);

    let t0 = Instant::now();
    es.create(
        &PostParams::default(),
        &pg_store("orders", &schema, "Delete", false),
    )
    .await
    .unwrap();
    let st = wait_status(&es, "orders", "postgres store Ready", ready).await;
    println!("postgres: apply -> Ready: {:?}", t0.elapsed());
    assert_eq!(st.provisioned.get("schema"), Some(&schema));
    assert_eq!(
        st.provisioned.get("backend").map(String::as_str),
        Some("postgres")
    );
    assert!(st.capabilities.as_ref().is_some_and(|c| c.transactions));
    assert_eq!(condition(&st, "Degraded").map(|c| c.0), Some(false));

    // The shared layout exists, with row-level security on every tenant table.
    let db = pg(env.pg_url()).await;
    let tables: Vec<(String, bool)> = db
        .query(
            "SELECT c.relname::text, c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        tables,
        vec![
            ("events".to_string(), true),
            ("snapshots".to_string(), true),
            ("streams".to_string(), true),
            ("tenant_roles".to_string(), false),
            ("tenants".to_string(), true),
        ]
    );
    let indexes: Vec<String> = db
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for i in [
        "events_pkey",
        "events_tenant_position",
        "events_tenant_stream_event_id",
    ] {
        assert!(
            indexes.iter().any(|x| x == i),
            "index {i} missing: {indexes:?}"
        );
    }
    let pk: Vec<String> = db
        .query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
             WHERE n.nspname = $1 AND c.relname = 'events' AND i.indisprimary ORDER BY k.ord",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pk, vec!["tenant", "stream", "version"]);
    let policies = pg_count(
        &db,
        "SELECT count(*) FROM pg_policies WHERE schemaname = $1 AND policyname = 'allsource_tenant_isolation'",
        &schema,
    )
    .await;
    assert_eq!(policies, 4);

    // Drift by hand: an index dropped and RLS turned off are restored without any edit.
    db.batch_execute(&format!(
        "DROP INDEX \"{schema}\".events_tenant_position; ALTER TABLE \"{schema}\".events DISABLE ROW LEVEL SECURITY"
    ))
    .await
    .unwrap();
    let t1 = Instant::now();
    wait_for("index and RLS restored", DEADLINE, || {
        let db = &db;
        let schema = &schema;
        async move {
            let idx = pg_count(db, Q_INDEX, schema).await;
            let rls: bool = db
                .query_one(
                    "SELECT c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = 'events'",
                    &[schema],
                )
                .await
                .ok()?
                .get(0);
            (idx == 1 && rls).then_some(())
        }
    })
    .await;
    println!(
        "postgres: dropped index + RLS off -> restored: {:?}",
        t1.elapsed()
    );
    drift_event(&client, &n, "events_tenant_position").await;

    // Gateway: Deployment + Service + registry ConfigMap; the URL only as a secretKeyRef.
    es.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"gateway": {"enabled": true, "replicas": 1}}})),
    )
    .await
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &n);
    let d = wait_for("gateway Deployment", DEADLINE, || {
        let deployments = deployments.clone();
        async move { deployments.get_opt("orders-gateway").await.ok()? }
    })
    .await;
    let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        c.args.clone().unwrap()[..3],
        ["gateway".to_string(), "--backend".into(), "postgres".into()]
    );
    let env_vars = c.env.clone().unwrap();
    let url = env_vars
        .iter()
        .find(|e| e.name == "STORE_NODE_PG_URL")
        .unwrap();
    assert!(url.value.is_none(), "the URL must not be a literal");
    let key_ref = url
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (key_ref.name.as_str(), key_ref.key.as_str()),
        ("pg-admin", "url")
    );
    assert!(env_vars
        .iter()
        .any(|e| e.name == "STORE_NODE_PG_SCHEMA" && e.value.as_deref() == Some(schema.as_str())));
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &n)
        .get("orders-gateway")
        .await
        .unwrap();
    assert!(cm.data.unwrap()["registry.json"].contains("\"version\": 1"));
    Api::<Service>::namespaced(client.clone(), &n)
        .get("orders")
        .await
        .unwrap();
    let st = wait_status(&es, "orders", "gateway endpoint in status", |e, s| {
        s.endpoint.is_some() && s.observed_generation == e.metadata.generation
    })
    .await;
    assert_eq!(
        st.endpoint.unwrap().url,
        format!("http://orders.{n}.svc:8080")
    );
    let st = wait_status(&es, "orders", "Ready with the gateway", ready).await;
    println!(
        "postgres: gateway pods {}",
        st.ready_text.unwrap_or_default()
    );

    // Retain keeps the schema; Delete drops it.
    es.create(
        &PostParams::default(),
        &pg_store("kept", &kept, "Retain", false),
    )
    .await
    .unwrap();
    wait_status(&es, "kept", "second store Ready", ready).await;
    delete_and_wait_gone(&es, "kept").await;
    assert_eq!(
        pg_count(&db, Q_SCHEMA, &kept).await,
        1,
        "Retain dropped the schema"
    );
    delete_and_wait_gone(&es, "orders").await;
    assert_eq!(
        pg_count(&db, Q_SCHEMA, &schema).await,
        0,
        "Delete kept the schema"
    );

    db.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{kept}\" CASCADE"))
        .await
        .unwrap();
    op.stop().await;
    ns.cleanup().await.unwrap();
}

async fn describe(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Option<aws_sdk_dynamodb::types::TableDescription> {
    ddb.describe_table()
        .table_name(table)
        .send()
        .await
        .ok()
        .and_then(|o| o.table().cloned())
}

fn index_names(t: &aws_sdk_dynamodb::types::TableDescription) -> Vec<String> {
    let mut v: Vec<String> = t
        .global_secondary_indexes()
        .iter()
        .filter_map(|g| g.index_name().map(str::to_string))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_provision_drift_unsupported_and_delete() {
    let Some((env, ns, client, op)) = setup("es-ddb", &["dynamodb"]).await else {
        return;
    };
    let n = ns.name().to_string();
    secret(
        &client,
        &n,
        "aws-keys",
        BTreeMap::from([
            ("AWS_ACCESS_KEY_ID", AWS_TEST_ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", AWS_TEST_SECRET_KEY.to_string()),
        ]),
    )
    .await;
    let table = format!("allsource-t-{}", suffix());
    let kept = format!("allsource-k-{}", suffix());
    let ep = env.dynamodb_endpoint().to_string();
    let ddb = env.dynamodb_client();
    let es: Api<EventStore> = Api::namespaced(client.clone(), &n);

    let t0 = Instant::now();
    es.create(
        &PostParams::default(),
        &ddb_store("orders", &table, &ep, "Delete"),
    )
    .await
    .unwrap();
    let st = wait_status(&es, "orders", "dynamodb store Ready", ready).await;
    println!("dynamodb: apply -> Ready: {:?}", t0.elapsed());
    assert_eq!(st.provisioned.get("table"), Some(&table));
    assert!(
        st.provisioned.contains_key("streamArn"),
        "{:?}",
        st.provisioned
    );
    assert_eq!(
        st.provisioned.get("ttlAttribute").map(String::as_str),
        Some("expires_at")
    );

    // The table has store-node's keys and indexes, streams, deletion protection and TTL.
    let t = describe(&ddb, &table).await.unwrap();
    let keys: Vec<(String, String)> = t
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_string(),
                k.key_type().as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            ("pk".to_string(), "HASH".to_string()),
            ("sk".to_string(), "RANGE".to_string())
        ]
    );
    assert_eq!(index_names(&t), vec!["by-position", "by-tenant"]);
    let s = t.stream_specification().unwrap();
    assert!(s.stream_enabled());
    assert_eq!(
        s.stream_view_type().map(|v| v.as_str()),
        Some("NEW_AND_OLD_IMAGES")
    );
    assert_eq!(t.deletion_protection_enabled(), Some(true));
    assert_eq!(
        t.billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .map(|b| b.as_str()),
        Some("PAY_PER_REQUEST")
    );
    let ttl = ddb
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    assert_eq!(
        ttl.time_to_live_status().map(|s| s.as_str()),
        Some("ENABLED")
    );
    assert_eq!(ttl.attribute_name(), Some("expires_at"));

    // Drift: an index deleted by hand comes back.
    ddb.update_table()
        .table_name(&table)
        .global_secondary_index_updates(
            aws_sdk_dynamodb::types::GlobalSecondaryIndexUpdate::builder()
                .delete(
                    aws_sdk_dynamodb::types::DeleteGlobalSecondaryIndexAction::builder()
                        .index_name("by-position")
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let t1 = Instant::now();
    // DynamoDB Local drops the index shortly after the call returns; see it gone first (the
    // operator looks only every 2 s), so "restored" below is the operator's doing.
    wait_for("by-position gone", DEADLINE, || {
        let ddb = &ddb;
        let table = &table;
        async move {
            let t = describe(ddb, table).await?;
            (index_names(&t) == vec!["by-tenant"]).then_some(())
        }
    })
    .await;
    wait_for("by-position restored", DEADLINE, || {
        let ddb = &ddb;
        let table = &table;
        async move {
            let t = describe(ddb, table).await?;
            (index_names(&t) == vec!["by-position", "by-tenant"]).then_some(())
        }
    })
    .await;
    println!("dynamodb: deleted GSI -> restored: {:?}", t1.elapsed());
    // The operator saw the index missing and put it back (not a stale describe).
    drift_event(&client, &n, "by-position").await;

    // Drift: the whole table deleted by hand is recreated (protection off first, as a user must).
    ddb.update_table()
        .table_name(&table)
        .deletion_protection_enabled(false)
        .send()
        .await
        .unwrap();
    ddb.delete_table().table_name(&table).send().await.unwrap();
    let t2 = Instant::now();
    wait_for("table recreated with protection", DEADLINE, || {
        let ddb = &ddb;
        let table = &table;
        async move {
            let t = describe(ddb, table).await?;
            (index_names(&t).len() == 2 && t.deletion_protection_enabled() == Some(true))
                .then_some(())
        }
    })
    .await;
    println!("dynamodb: deleted table -> recreated: {:?}", t2.elapsed());
    wait_status(&es, "orders", "Ready after recreation", ready).await;

    // A pooled tenant gets its IAM policy document (LeadingKeys pinned to its keys).
    let tenants: Api<allsource_operator::api::Tenant> = Api::namespaced(client.clone(), &n);
    tenants
        .create(&PostParams::default(), &pooled_tenant("acme", "orders"))
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &n);
    let access = wait_for("acme-dynamodb Secret", DEADLINE, || {
        let secrets = secrets.clone();
        async move { secrets.get_opt("acme-dynamodb").await.ok()? }
    })
    .await;
    let data = access.data.unwrap();
    let policy: serde_json::Value = serde_json::from_slice(&data["iamPolicy.json"].0).unwrap();
    assert_eq!(
        policy["Statement"][0]["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"],
        serde_json::json!(["acme#*", "acme"])
    );
    assert_eq!(
        policy["Statement"][0]["Resource"][0].as_str(),
        st.provisioned.get("tableArn").map(String::as_str)
    );
    tenants
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("tenant acme gone", DEADLINE, || {
        let tenants = tenants.clone();
        async move { tenants.get_opt("acme").await.ok()?.is_none().then_some(()) }
    })
    .await;

    // Point-in-time recovery: DynamoDB Local refuses the call; the store says so.
    es.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"dynamodb": {"pointInTimeRecovery": true}}})),
    )
    .await
    .unwrap();
    let st = wait_status(&es, "orders", "FeatureUnsupported", |e, s| {
        s.observed_generation == e.metadata.generation && s.phase == Some(Phase::Degraded)
    })
    .await;
    let (on, reason, msg) = condition(&st, "Degraded").unwrap();
    assert!(on);
    assert_eq!(reason, "FeatureUnsupported");
    assert!(
        msg.contains("pointInTimeRecovery") && msg.contains("UnknownOperationException"),
        "{msg}"
    );
    println!("dynamodb: pointInTimeRecovery on DynamoDB Local -> Degraded: {msg}");
    assert_eq!(
        st.provisioned
            .get("pointInTimeRecovery")
            .map(String::as_str),
        Some("unsupported by the endpoint")
    );
    assert_eq!(condition(&st, "Ready").map(|c| c.0), Some(true));
    es.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"dynamodb": {"pointInTimeRecovery": false}}})),
    )
    .await
    .unwrap();
    wait_status(&es, "orders", "Ready without PITR", ready).await;

    // Retain keeps the table; Delete lifts deletion protection and drops it.
    es.create(
        &PostParams::default(),
        &ddb_store("kept", &kept, &ep, "Retain"),
    )
    .await
    .unwrap();
    wait_status(&es, "kept", "second store Ready", ready).await;
    delete_and_wait_gone(&es, "kept").await;
    assert!(
        describe(&ddb, &kept).await.is_some(),
        "Retain deleted the table"
    );
    delete_and_wait_gone(&es, "orders").await;
    assert!(
        describe(&ddb, &table).await.is_none(),
        "Delete kept the table"
    );

    ddb.update_table()
        .table_name(&kept)
        .deletion_protection_enabled(false)
        .send()
        .await
        .unwrap();
    ddb.delete_table().table_name(&kept).send().await.unwrap();
    op.stop().await;
    ns.cleanup().await.unwrap();
}

/// A loopback port nothing listens on (yet).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts forwarding `127.0.0.1:port` to `target` (host:port): the backend "comes back".
async fn forward(port: u16, target: String) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_degraded_then_recovers_without_action() {
    let Some((env, ns, client, op)) = setup("es-outage", &["postgres", "dynamodb"]).await else {
        return;
    };
    let n = ns.name().to_string();
    let pg_port = closed_port();
    let ddb_port = closed_port();
    // A password the operator must never echo into status or events.
    let password = format!("pw{}", suffix());
    let pg_url =
        env.pg_url()
            .replacen(&host_port(env.pg_url()), &format!("127.0.0.1:{pg_port}"), 1);
    let pg_url = pg_url.replacen("://postgres@", &format!("://postgres:{password}@"), 1);
    secret(&client, &n, "pg-admin", BTreeMap::from([("url", pg_url)])).await;
    secret(
        &client,
        &n,
        "aws-keys",
        BTreeMap::from([
            ("AWS_ACCESS_KEY_ID", AWS_TEST_ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", AWS_TEST_SECRET_KEY.to_string()),
        ]),
    )
    .await;
    let schema = format!("allsource_o_{}", suffix());
    let table = format!("allsource-o-{}", suffix());
    let es: Api<EventStore> = Api::namespaced(client.clone(), &n);
    es.create(
        &PostParams::default(),
        &pg_store("pg", &schema, "Delete", false),
    )
    .await
    .unwrap();
    es.create(
        &PostParams::default(),
        &ddb_store(
            "ddb",
            &table,
            &format!("http://127.0.0.1:{ddb_port}"),
            "Delete",
        ),
    )
    .await
    .unwrap();

    for name in ["pg", "ddb"] {
        let st = wait_status(&es, name, "Degraded BackendUnavailable", |_, s| {
            condition(s, "Degraded").is_some_and(|c| c.0 && c.1 == "BackendUnavailable")
        })
        .await;
        let (_, _, msg) = condition(&st, "Degraded").unwrap();
        println!("{name}: outage -> Degraded: {msg}");
        assert_eq!(st.phase, Some(Phase::Degraded));
        assert_eq!(condition(&st, "Ready").map(|c| c.0), Some(false));
        let json = serde_json::to_string(&st).unwrap();
        assert!(!json.contains(&password), "password leaked into status");
    }

    // The servers come back on the same ports: Ready without touching anything.
    let t0 = Instant::now();
    let fwd_pg = forward(pg_port, host_port(env.pg_url())).await;
    let fwd_ddb = forward(ddb_port, host_port(env.dynamodb_endpoint())).await;
    for name in ["pg", "ddb"] {
        wait_status(&es, name, "Ready after the outage", ready).await;
        println!("{name}: listener back -> Ready: {:?}", t0.elapsed());
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &n);
    let all = events.list(&Default::default()).await.unwrap().items;
    assert!(all
        .iter()
        .any(|e| e.reason.as_deref() == Some("BackendUnavailable")));
    for e in &all {
        assert!(
            !e.note.as_deref().unwrap_or_default().contains(&password),
            "password leaked into an event"
        );
    }

    delete_and_wait_gone(&es, "pg").await;
    delete_and_wait_gone(&es, "ddb").await;
    fwd_pg.abort();
    fwd_ddb.abort();
    op.stop().await;
    ns.cleanup().await.unwrap();
}

fn pooled_tenant(name: &str, store: &str) -> allsource_operator::api::Tenant {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "allsource.io/v1alpha1", "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {"eventStoreRef": {"name": store}, "tenantId": name, "placement": "pooled"},
    }))
    .unwrap()
}

/// Waits for a tenant's `<tenant>-postgres` login Secret and returns its data.
async fn login(client: &Client, ns: &str, tenant: &str) -> BTreeMap<String, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("{tenant}-postgres Secret"), DEADLINE, || {
        let secrets = secrets.clone();
        async move {
            let s = secrets
                .get_opt(&format!("{tenant}-postgres"))
                .await
                .ok()??;
            Some(
                s.data?
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
                    .collect(),
            )
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tenant_role_sees_only_its_rows() {
    let Some((env, ns, client, op)) = setup("tn-pg", &["postgres"]).await else {
        return;
    };
    let n = ns.name().to_string();
    secret(
        &client,
        &n,
        "pg-admin",
        BTreeMap::from([("url", env.pg_url().to_string())]),
    )
    .await;
    let schema = format!("allsource_r_{}", suffix());
    let es: Api<EventStore> = Api::namespaced(client.clone(), &n);
    es.create(
        &PostParams::default(),
        &pg_store("orders", &schema, "Delete", false),
    )
    .await
    .unwrap();
    wait_status(&es, "orders", "postgres store Ready", ready).await;
    // Tenant ids unique per run: login roles are cluster-wide in PostgreSQL.
    let (a, b) = (format!("acme-{}", suffix()), format!("globex-{}", suffix()));
    let tenants: Api<allsource_operator::api::Tenant> = Api::namespaced(client.clone(), &n);
    for t in [&a, &b] {
        tenants
            .create(&PostParams::default(), &pooled_tenant(t, "orders"))
            .await
            .unwrap();
    }
    let login_a = login(&client, &n, &a).await;
    let login_b = login(&client, &n, &b).await;
    assert_eq!(login_a["schema"], schema);
    assert_ne!(login_a["password"], login_b["password"]);
    let role_a = login_a["user"].clone();

    // Rows of both tenants, written by the admin.
    let admin = pg(env.pg_url()).await;
    admin
        .batch_execute(&format!(
            "INSERT INTO \"{schema}\".tenants (tenant, events) VALUES ('{a}', 1), ('{b}', 2)"
        ))
        .await
        .unwrap();

    // As tenant a's own login (host/port from the Secret, i.e. the admin's server).
    let url = format!(
        "postgres://{}:{}@{}:{}/{}",
        login_a["user"], login_a["password"], login_a["host"], login_a["port"], login_a["database"]
    );
    assert_eq!(url, login_a["url"]);
    let ca = pg(&url).await;
    let me: String = ca
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(me, role_a);
    let bypass: bool = admin
        .query_one(
            "SELECT rolbypassrls FROM pg_roles WHERE rolname = $1",
            &[&role_a],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!bypass);
    let seen: Vec<String> = ca
        .query(&format!("SELECT tenant FROM \"{schema}\".tenants"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, vec![a.clone()], "tenant a must see only its own row");
    // Writing another tenant's rows is refused or touches nothing.
    let insert = ca
        .batch_execute(&format!(
            "INSERT INTO \"{schema}\".tenants (tenant) VALUES ('{b}-2')"
        ))
        .await;
    let err = insert.expect_err("insert of another tenant's row was accepted");
    assert!(
        err.as_db_error()
            .is_some_and(|d| d.message().contains("row-level security")),
        "{err:?}"
    );
    let updated = ca
        .execute(
            &format!("UPDATE \"{schema}\".tenants SET events = 99 WHERE tenant = $1"),
            &[&b],
        )
        .await
        .unwrap();
    assert_eq!(updated, 0, "tenant a updated tenant b's row");
    let deleted = ca
        .execute(
            &format!("DELETE FROM \"{schema}\".tenants WHERE tenant = $1"),
            &[&b],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 0, "tenant a deleted tenant b's row");
    // The role map is not readable by tenants.
    assert!(ca
        .query(&format!("SELECT * FROM \"{schema}\".tenant_roles"), &[])
        .await
        .is_err());
    let b_events: i64 = admin
        .query_one(
            &format!("SELECT events FROM \"{schema}\".tenants WHERE tenant = $1"),
            &[&b],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(b_events, 2);
    drop(ca);

    // Deleting the tenant drops its login role.
    tenants.delete(&a, &DeleteParams::default()).await.unwrap();
    wait_for("role of a dropped", DEADLINE, || {
        let admin = &admin;
        let role_a = &role_a;
        async move {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_roles WHERE rolname = $1",
                    &[role_a],
                )
                .await
                .ok()?
                .get(0);
            (n == 0).then_some(())
        }
    })
    .await;
    tenants.delete(&b, &DeleteParams::default()).await.unwrap();
    wait_for("tenant b gone", DEADLINE, || {
        let tenants = tenants.clone();
        let b = b.clone();
        async move { tenants.get_opt(&b).await.ok()?.is_none().then_some(()) }
    })
    .await;
    delete_and_wait_gone(&es, "orders").await;
    op.stop().await;
    ns.cleanup().await.unwrap();
}
