//! Cloud EventStores (backend postgres and dynamodb) against the env's real kube-apiserver,
//! PostgreSQL and DynamoDB Local, the operator's controllers running in-process, one namespace
//! and unique schema / table names per test: create -> resources exist with the shared layout
//! (pg_catalog: tables, indexes, RLS policies; DescribeTable: keys, indexes, streams, TTL,
//! deletion protection) -> Ready; drift made by hand is corrected; what DynamoDB Local refuses
//! (point-in-time recovery) becomes a Degraded FeatureUnsupported condition; deletion under
//! Retain keeps and under Delete drops; an outage (closed port) is Degraded with the service's
//! error and recovers by itself once a listener appears on that port. Prints time to Ready.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use allsource_operator::api::eventstore::EventStoreStatus;
use allsource_operator::api::{EventStore, Phase};
use allsource_tests::ddb::{describe, index_names};
use allsource_tests::env::{TestEnv, AWS_TEST_ACCESS_KEY, AWS_TEST_SECRET_KEY};
use allsource_tests::operator::{install_crds, suffix, wait_for, wait_status, Operator};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;

const DEADLINE: Duration = Duration::from_secs(60);

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
    let op = Operator::start_with_drift(&client, ns.name(), Duration::from_secs(2));
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

fn ready(es: &EventStore, st: &EventStoreStatus) -> bool {
    st.phase == Some(Phase::Ready) && st.observed_generation == es.metadata.generation
}

fn condition(st: &EventStoreStatus, t: &str) -> Option<(bool, String, String)> {
    allsource_tests::operator::condition(&st.conditions, t)
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
    let reg = Api::<Secret>::namespaced(client.clone(), &n)
        .get("orders-registry")
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&reg.data.unwrap()["registry.json"].0).contains("\"version\": 1")
    );
    // The registry left its ConfigMap: none is created for the gateway.
    assert!(Api::<ConfigMap>::namespaced(client.clone(), &n)
        .get_opt("orders-gateway")
        .await
        .unwrap()
        .is_none());
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

    // HTTPS for the gateway: a TLS Secret that does not exist is Degraded / TLSSecretInvalid and
    // the Deployment is left as it was; a usable one is mounted and the endpoint turns https.
    es.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"spec": {"gateway": {"tlsSecretRef": {"name": "orders-gw-tls"}}}}),
        ),
    )
    .await
    .unwrap();
    let st = wait_status(&es, "orders", "gateway TLSSecretInvalid", |e, s| {
        s.observed_generation == e.metadata.generation
            && condition(s, "Degraded").is_some_and(|(on, r, m)| {
                on && r == "TLSSecretInvalid" && m.contains("does not exist")
            })
    })
    .await;
    assert_eq!(st.phase, Some(Phase::Degraded));
    let tls_env = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .any(|e| e.name == "ALLSOURCE_TLS_DIR")
    };
    assert!(
        !tls_env(&deployments.get("orders-gateway").await.unwrap()),
        "the gateway was rolled out with a TLS Secret it cannot use"
    );
    let pki = tempfile::tempdir().unwrap();
    allsource_tests::certs::make_ca(pki.path(), "ca");
    let file = |f: &str| k8s_openapi::ByteString(std::fs::read(pki.path().join(f)).unwrap());
    let tls: Secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("orders-gw-tls".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), file("ca.crt")),
            ("tls.key".to_string(), file("ca.key")),
            ("ca.crt".to_string(), file("ca.crt")),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &n)
        .create(&PostParams::default(), &tls)
        .await
        .unwrap();
    let st = wait_status(&es, "orders", "gateway over https", |_, s| {
        condition(s, "Degraded").is_some_and(|(on, _, _)| !on)
            && s.endpoint
                .as_ref()
                .is_some_and(|e| e.url.starts_with("https://"))
    })
    .await;
    assert_eq!(
        st.endpoint.unwrap().url,
        format!("https://orders.{n}.svc:8080")
    );
    wait_for(
        "the gateway Deployment with the TLS volume",
        DEADLINE,
        || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get("orders-gateway").await.ok()?;
                tls_env(&d).then_some(())
            }
        },
    )
    .await;

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
    // The operator's DriftCorrected Event proves the restore is its doing. (Waiting to see the
    // index gone first raced the operator: on a loaded machine it put the index back between two
    // of the test's looks, and the test waited for a state that had come and gone.)
    drift_event(&client, &n, "by-position").await;
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

    // A second, different drift of the same store gets its own Event: the recorder folds
    // repeats of one note into a series, never a new note into an old one.
    ddb.update_table()
        .table_name(&table)
        .global_secondary_index_updates(
            aws_sdk_dynamodb::types::GlobalSecondaryIndexUpdate::builder()
                .delete(
                    aws_sdk_dynamodb::types::DeleteGlobalSecondaryIndexAction::builder()
                        .index_name("by-tenant")
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    drift_event(&client, &n, "by-tenant").await;
    wait_for("by-tenant restored", DEADLINE, || {
        let (ddb, table) = (&ddb, &table);
        async move {
            let t = describe(ddb, table).await?;
            (index_names(&t) == vec!["by-position", "by-tenant"]).then_some(())
        }
    })
    .await;

    // Drift: the whole table deleted by hand is recreated (protection off first, as a user must).
    // The operator's drift loop (every 2 s) may turn protection back on between the two calls:
    // then the delete is refused, and done again as a user would.
    wait_for("the table deleted by hand", DEADLINE, || {
        let (ddb, table) = (&ddb, &table);
        async move {
            ddb.update_table()
                .table_name(table)
                .deletion_protection_enabled(false)
                .send()
                .await
                .ok()?;
            ddb.delete_table()
                .table_name(table)
                .send()
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
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
    assert_eq!(login_a["sslmode"], "disable", "the store's sslMode");
    let url = format!(
        "postgres://{}:{}@{}:{}/{}?sslmode={}",
        login_a["user"],
        login_a["password"],
        login_a["host"],
        login_a["port"],
        login_a["database"],
        login_a["sslmode"]
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

/// Waits until the Tenant `name` has condition `type_` with `status`, and returns (reason, message).
async fn tenant_condition(
    api: &Api<allsource_operator::api::Tenant>,
    name: &str,
    type_: &str,
    status: bool,
) -> (String, String) {
    wait_for(&format!("{name} {type_}={status}"), DEADLINE, || {
        let api = api.clone();
        async move {
            let t = api.get_opt(name).await.ok()??;
            let c = t
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == type_ && c.is_true() == status)?;
            Some((c.reason, c.message))
        }
    })
    .await
}

/// Issue 19 defect 1: on a store with a 50-character name (default schema, 63 bytes), two
/// tenants whose ids share a 40-character prefix get two roles, and the first one's login reads
/// none of the second's rows; RLS is forced; a role already mapped to another tenant is refused
/// (Degraded / ResourceConflict), never re-mapped; a tenant provisioned under the old role name
/// moves to its new role (same password) and the old role is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pooled_tenants_never_share_a_login_role() {
    let Some((env, ns, client, op)) = setup("tn-role", &["postgres"]).await else {
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
    let store = format!("orders-{}", "x".repeat(43));
    assert_eq!(store.len(), 50);
    let mut spec = pg_store(&store, "unused", "Delete", false);
    if let Some(pg) = spec.spec.postgres.as_mut() {
        pg.schema = None;
    }
    let es: Api<EventStore> = Api::namespaced(client.clone(), &n);
    es.create(&PostParams::default(), &spec).await.unwrap();
    let st = wait_status(&es, &store, "postgres store Ready", ready).await;
    let schema = st.provisioned["schema"].clone();
    assert_eq!(schema.len(), 63, "{schema}");

    // RLS is forced on every tenant table.
    let admin = pg(env.pg_url()).await;
    let forced: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relforcerowsecurity",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(forced, 4, "FORCE ROW LEVEL SECURITY on the 4 tenant tables");

    // Tenant ids unique per run (roles are cluster-wide), sharing a 40-character prefix.
    let prefix = format!("p{}{}", suffix(), "q".repeat(31));
    assert_eq!(prefix.len(), 40);
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let tenants: Api<allsource_operator::api::Tenant> = Api::namespaced(client.clone(), &n);
    for t in [&a, &b] {
        tenants
            .create(&PostParams::default(), &pooled_tenant(t, &store))
            .await
            .unwrap();
    }
    tenant_condition(&tenants, &a, "Ready", true).await;
    tenant_condition(&tenants, &b, "Ready", true).await;
    let login_a = login(&client, &n, &a).await;
    let login_b = login(&client, &n, &b).await;
    assert_ne!(
        login_a["user"], login_b["user"],
        "two tenants share the login role {}",
        login_a["user"]
    );
    admin
        .batch_execute(&format!(
            "INSERT INTO \"{schema}\".tenants (tenant, events) VALUES ('{a}', 1), ('{b}', 2)"
        ))
        .await
        .unwrap();
    // Tenant a's credentials read its row and none of b's; b's likewise.
    for (login, me) in [(&login_a, &a), (&login_b, &b)] {
        let c = pg(&login["url"]).await;
        let seen: Vec<String> = c
            .query(&format!("SELECT tenant FROM \"{schema}\".tenants"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            &seen,
            &vec![me.clone()],
            "{} must see only {me}",
            login["user"]
        );
    }

    // A role already mapped to another tenant is refused, and its mapping is left alone.
    let c = format!("{prefix}-c");
    let role_c = allsource_operator::controllers::tenant::cloud::role_name(&schema, &c);
    admin
        .batch_execute(&format!(
            "INSERT INTO \"{schema}\".tenant_roles (role, tenant) VALUES ('{role_c}', '{a}')"
        ))
        .await
        .unwrap();
    tenants
        .create(&PostParams::default(), &pooled_tenant(&c, &store))
        .await
        .unwrap();
    let (reason, message) = tenant_condition(&tenants, &c, "Degraded", true).await;
    assert_eq!(reason, "ResourceConflict", "{message}");
    assert!(message.contains("mapped to another tenant"), "{message}");
    let mapped: String = admin
        .query_one(
            &format!("SELECT tenant FROM \"{schema}\".tenant_roles WHERE role = $1"),
            &[&role_c],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        mapped, a,
        "the mapping of another tenant's role was rewritten"
    );

    // Migration: a tenant whose role still has the pre-hash name (`<schema>_<tenant>` cut to 63
    // bytes, made here as the old operator made it) moves to its new role with the same password;
    // the old role is dropped.
    let d = format!("d{}", suffix());
    let legacy = {
        let mut r = format!("{schema}_{}", d.replace('-', "_"));
        r.truncate(63);
        r
    };
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{legacy}\" LOGIN PASSWORD 'old'; \
             INSERT INTO \"{schema}\".tenant_roles (role, tenant) VALUES ('{legacy}', '{d}')"
        ))
        .await
        .unwrap();
    tenants
        .create(&PostParams::default(), &pooled_tenant(&d, &store))
        .await
        .unwrap();
    tenant_condition(&tenants, &d, "Ready", true).await;
    let login_d = login(&client, &n, &d).await;
    assert_ne!(login_d["user"], legacy);
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1",
            &[&legacy],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the pre-hash role {legacy} was not retired");

    for t in [&a, &b, &c, &d] {
        tenants.delete(t, &DeleteParams::default()).await.unwrap();
    }
    for t in [&a, &b, &c, &d] {
        wait_for(&format!("tenant {t} gone"), DEADLINE, || {
            let tenants = tenants.clone();
            async move { tenants.get_opt(t).await.ok()?.is_none().then_some(()) }
        })
        .await;
    }
    // c's refused role was never created; the mapping made by hand goes with the schema.
    delete_and_wait_gone(&es, &store).await;
    op.stop().await;
    ns.cleanup().await.unwrap();
}

// ---- Firestore (the env's emulator; a project id per test isolates its documents) ----

mod firestore_cases {
    //! Firestore EventStores on the env's emulator: create -> marker document and Ready with the
    //! emulator's Admin API limit in the Ready message and a NotVerified event; pooled tenants in
    //! `tenants/<id>` (events appended through store-node's backend), a siloed one in its own
    //! database; tenant and store deletion under Delete remove exactly their documents,
    //! Retain keeps them. The outage runs through a loopback forwarder the test can cut (the
    //! shared emulator must keep running; a private gcloud emulator takes a JVM start); the Admin
    //! API flow runs against a recording server that serves the Admin API from memory and
    //! forwards the data API to the emulator.

    use super::*;
    use allsource_operator::api::tenant::{LocationKind, TenantStatus};
    use allsource_operator::api::Tenant;
    use allsource_tests::firestore_admin::{recording_server, writes, Forwarder, Seen};
    use store_node::backend::firestore::{admin, FirestoreConfig, FirestoreStore};
    use store_node::backend::EventStore as _;
    use store_node::model::{ExpectedVersion, NewEvent, StreamId, TenantId};

    /// A project id of its own (the emulator keeps projects apart).
    fn project(env: &TestEnv) -> String {
        format!("{}-{}", env.firestore_project(), suffix())
    }

    fn fs_store(name: &str, project: &str, endpoint: &str, policy: &str) -> EventStore {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "EventStore",
            "metadata": {"name": name},
            "spec": {
                "backend": "firestore",
                "firestore": {"projectId": project, "endpoint": endpoint, "emulator": true, "ttlField": "expires_at"},
                "deletionPolicy": policy,
            }
        }))
        .unwrap()
    }

    fn tenant(name: &str, store: &str, placement: &str, policy: &str) -> Tenant {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name},
            "spec": {"eventStoreRef": {"name": store}, "tenantId": name,
                     "placement": placement, "deletionPolicy": policy},
        }))
        .unwrap()
    }

    fn backend(env: &TestEnv, project: &str) -> FirestoreStore {
        FirestoreStore::connect(FirestoreConfig::emulator(
            project,
            env.firestore_emulator_host(),
        ))
        .unwrap()
    }

    async fn append(b: &FirestoreStore, tenant: &str, n: usize) {
        let events = (0..n)
            .map(|i| NewEvent {
                event_id: uuid::Uuid::new_v4(),
                event_type: "Created".into(),
                payload: format!("{{\"i\":{i}}}").into_bytes(),
                metadata: Default::default(),
            })
            .collect();
        b.append(
            &TenantId::new(tenant).unwrap(),
            &StreamId::new("order-1").unwrap(),
            ExpectedVersion::Any,
            events,
        )
        .await
        .unwrap();
    }

    async fn events_of(b: &FirestoreStore, tenant: &str) -> u64 {
        let t = TenantId::new(tenant).unwrap();
        b.read_all(&t, 0, 1000).await.unwrap().len() as u64
    }

    /// Whether a document exists, read over the emulator's REST API.
    async fn doc_exists(env: &TestEnv, project: &str, path: &str) -> bool {
        let url = format!(
            "http://{}/v1/projects/{project}/databases/(default)/documents/{path}",
            env.firestore_emulator_host()
        );
        let r = reqwest::Client::new()
            .get(url)
            .bearer_auth("owner")
            .send()
            .await
            .unwrap();
        r.status().is_success()
    }

    async fn wait_tenant(
        api: &Api<Tenant>,
        name: &str,
        what: &str,
        pred: impl Fn(&TenantStatus) -> bool,
    ) -> TenantStatus {
        wait_for(what, DEADLINE, || {
            let api = api.clone();
            let pred = &pred;
            async move {
                let st = api.get(name).await.ok()?.status?;
                pred(&st).then_some(st)
            }
        })
        .await
    }

    async fn delete_tenant(api: &Api<Tenant>, name: &str) {
        api.delete(name, &DeleteParams::default()).await.unwrap();
        wait_for(&format!("tenant {name} gone"), DEADLINE, || {
            let api = api.clone();
            async move { api.get_opt(name).await.ok()?.is_none().then_some(()) }
        })
        .await;
    }

    /// Two stores of one Firestore database registering the same tenant id at the same moment:
    /// exactly one may hold it (they would share `tenants/<id>`), the other is refused with a
    /// conflict, and each round's loser stays refused afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn firestore_one_tenant_id_registered_by_two_stores_at_once_goes_to_one() {
        use allsource_operator::provision::firestore::{plan, Credentials, FirestoreProvisioner};
        use allsource_operator::provision::{ProvisionError, Provisioner};
        let Some(env) = allsource_tests::env::require("firestore") else {
            return;
        };
        let project = project(env);
        let spec = allsource_operator::api::eventstore::FirestoreSpec {
            project_id: project.clone(),
            database_id: "(default)".into(),
            endpoint: Some(format!("http://{}", env.firestore_emulator_host())),
            emulator: true,
            credentials_secret_ref: None,
            ttl_field: Some("expires_at".into()),
        };
        let connect = |ns: &str| {
            let p = plan(ns, "orders", &spec).unwrap();
            async move {
                FirestoreProvisioner::connect(p, &Credentials::Emulator)
                    .await
                    .unwrap()
            }
        };
        let (a, b) = (connect("shop-a").await, connect("shop-b").await);
        a.ensure().await.unwrap();
        b.ensure().await.unwrap();
        let (mut both, mut a_won) = (Vec::new(), 0);
        const ROUNDS: usize = 20;
        for round in 0..ROUNDS {
            let id = format!("race{round}");
            let (ra, rb) = tokio::join!(
                a.register_tenant(&id, "shop-a/acme"),
                b.register_tenant(&id, "shop-b/acme")
            );
            match (&ra, &rb) {
                (Ok(()), Ok(())) => both.push(id.clone()),
                (Ok(()), Err(ProvisionError::Conflict(_))) => a_won += 1,
                (Err(ProvisionError::Conflict(_)), Ok(())) => {}
                other => panic!("round {round}: unexpected {other:?}"),
            }
            // Registering again changes nothing: the holder stays, the other is refused.
            let (again_a, again_b) = (
                a.register_tenant(&id, "shop-a/acme").await,
                b.register_tenant(&id, "shop-b/acme").await,
            );
            if both.last() != Some(&id) {
                assert_eq!(
                    again_a.is_ok(),
                    ra.is_ok(),
                    "round {round}: a's second registration"
                );
                assert_eq!(
                    again_b.is_ok(),
                    rb.is_ok(),
                    "round {round}: b's second registration"
                );
            }
        }
        println!(
            "firestore registration race: {ROUNDS} rounds, store a won {a_won}, both held the id in {}",
            both.len()
        );
        assert!(
            both.is_empty(),
            "both stores hold tenant ids {both:?}: they would share tenants/<id>"
        );
        // The loser may register the id once the holder let it go.
        let id = "race0";
        let holder = if a.register_tenant(id, "shop-a/acme").await.is_ok() {
            &a
        } else {
            &b
        };
        let other = if std::ptr::eq(holder, &a) { &b } else { &a };
        holder.unregister_tenant(id).await.unwrap();
        other.register_tenant(id, "shop/acme").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn firestore_provision_tenants_and_deletion_policies() {
        let Some((env, ns, client, op)) = setup("es-fs", &["firestore"]).await else {
            return;
        };
        let n = ns.name().to_string();
        let project = project(env);
        let host = env.firestore_emulator_host().to_string();
        let es: Api<EventStore> = Api::namespaced(client.clone(), &n);

        let t0 = Instant::now();
        es.create(
            &PostParams::default(),
            &fs_store("orders", &project, &host, "Delete"),
        )
        .await
        .unwrap();
        let st = wait_status(&es, "orders", "firestore store Ready", ready).await;
        println!("firestore: apply -> Ready: {:?}", t0.elapsed());
        assert_eq!(st.provisioned.get("projectId"), Some(&project));
        assert_eq!(
            st.provisioned.get("databaseId").map(String::as_str),
            Some("(default)")
        );
        assert_eq!(
            st.provisioned.get("rootCollection").map(String::as_str),
            Some("tenants")
        );
        // The emulator answers 404 to the Admin API: said, and Ready anyway (emulator rule).
        assert_eq!(
            st.provisioned.get("indexes").map(String::as_str),
            Some("not verified")
        );
        let (ready_on, _, msg) = condition(&st, "Ready").unwrap();
        assert!(ready_on);
        let note = format!("admin API unavailable at http://{host}: indexes and TTL not verified");
        assert!(msg.contains(&note), "{msg}");
        assert_eq!(condition(&st, "Degraded").map(|c| c.0), Some(false));
        let marker = format!("allsource/{n}.orders");
        assert!(doc_exists(env, &project, &marker).await, "marker document");
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &n);
        let all = events.list(&Default::default()).await.unwrap().items;
        assert!(
            all.iter()
                .any(|e| e.reason.as_deref() == Some("NotVerified")
                    && e.note.as_deref() == Some(note.as_str())),
            "NotVerified event"
        );

        // Pooled tenants live in tenants/<id>; a siloed one in a database of its own (its
        // isolation is operator_siloed.rs's).
        let tenants: Api<Tenant> = Api::namespaced(client.clone(), &n);
        for (name, placement, policy) in [
            ("acme", "pooled", "Retain"),
            ("beta", "pooled", "Delete"),
            ("solo", "siloed", "Delete"),
        ] {
            tenants
                .create(
                    &PostParams::default(),
                    &tenant(name, "orders", placement, policy),
                )
                .await
                .unwrap();
        }
        for name in ["acme", "beta"] {
            let st = wait_tenant(&tenants, name, "pooled tenant Ready", |s| {
                s.phase == Some(Phase::Ready)
            })
            .await;
            let loc = st.location.unwrap();
            assert_eq!(loc.kind, LocationKind::Collection);
            assert_eq!(loc.name, format!("tenants/{name}"));
            assert!(doc_exists(env, &project, &format!("{marker}/members/{name}")).await);
        }
        let solo = wait_tenant(&tenants, "solo", "siloed tenant Ready", |s| {
            s.phase == Some(Phase::Ready)
        })
        .await;
        let loc = solo.location.unwrap();
        assert_eq!(loc.kind, LocationKind::Database);
        assert_eq!(
            loc.name,
            allsource_operator::provision::firestore::silo_database_name(
                "(default)",
                &n,
                "orders",
                "solo"
            )
        );
        assert!(!doc_exists(env, &project, &format!("{marker}/members/solo")).await);

        // The data path: store-node's Firestore backend writes both tenants' events.
        let b = backend(env, &project);
        append(&b, "acme", 3).await;
        append(&b, "beta", 2).await;
        assert_eq!(events_of(&b, "acme").await, 3);
        assert_eq!(events_of(&b, "beta").await, 2);

        // Tenant beta under Delete: its documents go, acme's stay.
        delete_tenant(&tenants, "beta").await;
        assert_eq!(events_of(&b, "beta").await, 0);
        assert!(!doc_exists(env, &project, "tenants/beta").await);
        assert!(!doc_exists(env, &project, "tenants/beta/streams/order-1").await);
        assert!(!doc_exists(env, &project, &format!("{marker}/members/beta")).await);
        assert_eq!(events_of(&b, "acme").await, 3);

        // A second store with Retain in its own project keeps its documents.
        let kept_project = project_of_retained(env);
        es.create(
            &PostParams::default(),
            &fs_store("kept", &kept_project, &host, "Retain"),
        )
        .await
        .unwrap();
        wait_status(&es, "kept", "retained store Ready", ready).await;
        tenants
            .create(
                &PostParams::default(),
                &tenant("keep", "kept", "pooled", "Retain"),
            )
            .await
            .unwrap();
        wait_tenant(&tenants, "keep", "keep Ready", |s| {
            s.phase == Some(Phase::Ready)
        })
        .await;
        let kb = backend(env, &kept_project);
        append(&kb, "keep", 2).await;
        delete_tenant(&tenants, "keep").await;
        delete_and_wait_gone(&es, "kept").await;
        assert_eq!(events_of(&kb, "keep").await, 2, "Retain keeps the events");
        assert!(doc_exists(env, &kept_project, &format!("allsource/{n}.kept")).await);

        // The store under Delete removes its tenants' documents (acme's Retain is the tenant's
        // own policy; the store's Delete takes its data with it) and the marker.
        delete_tenant(&tenants, "solo").await;
        delete_and_wait_gone(&es, "orders").await;
        assert_eq!(events_of(&b, "acme").await, 0);
        assert!(!doc_exists(env, &project, "tenants/acme").await);
        assert!(!doc_exists(env, &project, &marker).await);
        let _ = tenants.delete("acme", &DeleteParams::default()).await;

        op.stop().await;
        ns.cleanup().await.unwrap();
    }

    fn project_of_retained(env: &TestEnv) -> String {
        format!("{}-k{}", env.firestore_project(), &suffix()[..6])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn firestore_outage_is_degraded_then_recovers() {
        let Some((env, ns, client, op)) = setup("es-fs-outage", &["firestore"]).await else {
            return;
        };
        let n = ns.name().to_string();
        let project = project(env);
        let port = closed_port();
        let es: Api<EventStore> = Api::namespaced(client.clone(), &n);
        es.create(
            &PostParams::default(),
            &fs_store("fs", &project, &format!("127.0.0.1:{port}"), "Delete"),
        )
        .await
        .unwrap();
        let down = |_: &EventStore, s: &EventStoreStatus| {
            condition(s, "Degraded").is_some_and(|c| c.0 && c.1 == "BackendUnavailable")
        };
        let st = wait_status(&es, "fs", "Degraded before the emulator is reachable", down).await;
        println!("firestore: closed port -> {:?}", condition(&st, "Degraded"));

        let mut fwd = Forwarder::new(port, env.firestore_emulator_host().to_string());
        let t0 = Instant::now();
        fwd.start().await;
        wait_status(&es, "fs", "Ready once reachable", ready).await;
        println!("firestore: listener up -> Ready: {:?}", t0.elapsed());

        // The emulator "stops": the store becomes Degraded with the error, then Ready by itself.
        fwd.stop().await;
        let st = wait_status(&es, "fs", "Degraded during the outage", down).await;
        let (_, _, msg) = condition(&st, "Degraded").unwrap();
        println!("firestore: outage -> Degraded: {msg}");
        assert!(msg.contains("firestore unavailable"), "{msg}");
        assert_eq!(st.phase, Some(Phase::Degraded));
        let t1 = Instant::now();
        fwd.start().await;
        wait_status(&es, "fs", "Ready after the outage", ready).await;
        println!("firestore: emulator back -> Ready: {:?}", t1.elapsed());

        delete_and_wait_gone(&es, "fs").await;
        fwd.stop().await;
        op.stop().await;
        ns.cleanup().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn firestore_admin_requests_of_ensure_and_drift() {
        let Some((env, ns, client, op)) = setup("es-fs-admin", &["firestore"]).await else {
            return;
        };
        let n = ns.name().to_string();
        let project = project(env);
        let (endpoint, seen, state) =
            recording_server(env.firestore_emulator_host().to_string()).await;
        let es: Api<EventStore> = Api::namespaced(client.clone(), &n);
        es.create(
            &PostParams::default(),
            &fs_store("orders", &project, &endpoint, "Delete"),
        )
        .await
        .unwrap();
        let st = wait_status(&es, "orders", "Ready with the Admin API served", ready).await;
        assert_eq!(
            st.provisioned.get("indexes").map(String::as_str),
            Some("ready")
        );
        assert_eq!(
            st.provisioned.get("ttlField").map(String::as_str),
            Some("expires_at")
        );
        let (_, _, msg) = condition(&st, "Ready").unwrap();
        assert!(!msg.contains("not verified"), "{msg}");

        // Exactly store-node's requests were sent to create what was missing, once each, with
        // the emulator token; everything else was a GET.
        let want: Vec<(String, String, serde_json::Value)> = admin::requests(&project, "(default)")
            .into_iter()
            .map(|r| {
                let m = match r.method {
                    admin::Method::Post => "POST",
                    admin::Method::Patch => "PATCH",
                    admin::Method::Delete => "DELETE",
                };
                (m.to_string(), format!("/v1/{}", r.path), r.body)
            })
            .collect();
        assert_eq!(writes(&seen), want);
        assert!(seen
            .lock()
            .unwrap()
            .iter()
            .all(|(_, _, auth, _)| auth == "Bearer owner"));
        let gets: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, ..)| m == "GET")
            .map(|(_, p, ..)| p.clone())
            .collect();
        assert!(gets.contains(&format!(
            "/v1/projects/{project}/databases/(default)/collectionGroups/events/indexes"
        )));

        // Steady state: two more full rounds of reads (every item each) write nothing.
        let before = writes(&seen).len();
        let reads = |seen: &Seen| {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|(m, ..)| m == "GET")
                .count()
        };
        let target = reads(&seen) + 2 * want.len();
        wait_for("two more observe rounds", DEADLINE, || {
            let n = reads(&seen);
            async move { (n >= target).then_some(()) }
        })
        .await;
        assert_eq!(writes(&seen).len(), before, "no admin write without drift");

        // Drift: the composite index is deleted by hand -> recreated, with an Event.
        state.lock().unwrap().indexes.clear();
        drift_event(&client, &n, "composite index events(tenant ASCENDING").await;
        let after = writes(&seen);
        assert_eq!(after.len(), before + 1);
        assert_eq!(after.last(), want.first());
        assert_eq!(state.lock().unwrap().indexes.len(), 1);

        // A TTL policy removed by hand comes back too.
        let ttl_path = format!(
            "/v1/projects/{project}/databases/(default)/collectionGroups/eventIds/fields/expires_at"
        );
        state.lock().unwrap().fields.remove(&ttl_path);
        wait_for("TTL policy on eventIds restored", DEADLINE, || {
            let back = state
                .lock()
                .unwrap()
                .fields
                .get(&ttl_path)
                .is_some_and(|f| f["ttlConfig"]["state"] == "ACTIVE");
            async move { back.then_some(()) }
        })
        .await;
        // Recorded as a second PATCH of store-node's TTL request (the Event recorder folds a
        // second DriftCorrected into the first one's series, so the request is the evidence).
        let ttl_patches = writes(&seen)
            .iter()
            .filter(|w| Some(*w) == want.last())
            .count();
        assert_eq!(ttl_patches, 2);

        delete_and_wait_gone(&es, "orders").await;
        op.stop().await;
        ns.cleanup().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn firestore_sample_reaches_ready_on_the_emulator() {
        let Some((env, ns, client, op)) = setup("es-fs-sample", &["firestore"]).await else {
            return;
        };
        let n = ns.name().to_string();
        let path =
            allsource_tests::operator::repo_root().join("config/samples/eventstore-firestore.yaml");
        let mut doc: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        // As the chart's sample test points it: the emulator's host:port and project.
        let project = project(env);
        doc["spec"]["firestore"]["endpoint"] = env.firestore_emulator_host().into();
        doc["spec"]["firestore"]["emulator"] = true.into();
        doc["spec"]["firestore"]["projectId"] = project.clone().into();
        let sample: EventStore = serde_json::from_value(doc).unwrap();
        let name = sample.metadata.name.clone().unwrap();
        let es: Api<EventStore> = Api::namespaced(client.clone(), &n);
        es.create(&PostParams::default(), &sample).await.unwrap();
        let t0 = Instant::now();
        let st = wait_status(&es, &name, "the Firestore sample Ready", ready).await;
        println!(
            "firestore sample: apply -> Ready ({}): {:?}",
            st.ready_text.clone().unwrap_or_default(),
            t0.elapsed()
        );
        // Its gateway runs store-node against the emulator; no credential in the pod spec.
        let d = Api::<Deployment>::namespaced(client.clone(), &n)
            .get(&format!("{name}-gateway"))
            .await
            .unwrap();
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(
            c.args.as_ref().unwrap()[..3],
            ["gateway", "--backend", "firestore"]
        );
        let env_of = |k: &str| {
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .find(|e| e.name == k)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            env_of("FIRESTORE_EMULATOR_HOST").as_deref(),
            Some(env.firestore_emulator_host())
        );
        assert_eq!(env_of("STORE_NODE_FIRESTORE_PROJECT"), Some(project));
        delete_and_wait_gone(&es, &name).await;
        op.stop().await;
        ns.cleanup().await.unwrap();
    }
}
