//! One real round trip per server of the test environment (tests/env/up.sh), so a broken
//! environment shows up as a failing smoke test instead of as confusing failures elsewhere.

use std::collections::BTreeMap;
use std::time::Duration;

use allsource_tests::env::{self, unique_name};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, PostParams,
};
use kube::Api;
use serde_json::json;

/// Polls `check` every 250 ms until it returns `Some`, panicking with `what` after `secs`.
async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn kube_crd_and_custom_object_round_trip() {
    let Some(env) = env::require("kube") else {
        return;
    };
    let client = env.kube_client().await.unwrap();
    let group = format!("{}.smoke.allsource.io", unique_name("g"));
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}
                }}}
            }]
        }
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let crd_name = format!("widgets.{group}");
    eventually("the CRD to be Established", 30, || async {
        let c = crds.get(&crd_name).await.ok()?;
        let established = c
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await;

    let ns = env.test_namespace("smoke-crd").await.unwrap();
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, "v1", "Widget"));
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &ar);
    let mut obj = DynamicObject::new("w1", &ar);
    obj.data = json!({"spec": {"size": 3}});
    // The API may take a moment to serve a freshly established CRD.
    eventually("the custom object to be created", 30, || async {
        widgets.create(&PostParams::default(), &obj).await.ok()
    })
    .await;
    let back = widgets.get("w1").await.unwrap();
    assert_eq!(back.data["spec"]["size"], 3);

    crds.delete(&crd_name, &DeleteParams::default())
        .await
        .unwrap();
    ns.cleanup().await.unwrap();
}

#[tokio::test]
async fn kube_statefulset_pods_become_ready_on_kwok_nodes() {
    let Some(env) = env::require("kube") else {
        return;
    };
    let ns = env.test_namespace("smoke-sts").await.unwrap();
    let client = ns.client().clone();
    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "serviceName": "web",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]}
            }
        }
    }))
    .unwrap();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns.name());
    sets.create(&PostParams::default(), &sts).await.unwrap();
    eventually("2 ready replicas", 90, || async {
        let s = sets.get("web").await.ok()?;
        (s.status?.ready_replicas? == 2).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client, ns.name());
    for pod in pods.list(&ListParams::default()).await.unwrap() {
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        assert!(node.starts_with("kwok-node-"), "pod scheduled on {node:?}");
    }
    ns.cleanup().await.unwrap();
}

#[tokio::test]
async fn kube_service_account_tokens_authenticate() {
    let Some(env) = env::require("kube") else {
        return;
    };
    let ns = env.test_namespace("smoke-sa").await.unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(ns.client().clone(), ns.name());
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("robot".into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let token = sas
        .create_token_request("robot", &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let robot = env.kube_client_for_token(&token).await.unwrap();
    let review: SelfSubjectReview = Api::all(robot.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let user = review.status.unwrap().user_info.unwrap().username.unwrap();
    assert_eq!(user, format!("system:serviceaccount:{}:robot", ns.name()));
    // RBAC applies to the new identity: it may not list pods without a grant.
    let err = Api::<Pod>::namespaced(robot, ns.name())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err}"
    );
    ns.cleanup().await.unwrap();
}

#[tokio::test]
async fn postgres_create_insert_select() {
    let Some(env) = env::require("postgres") else {
        return;
    };
    let db = env.pg_test_database().await.unwrap();
    assert!(db.name.starts_with("t_"));
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TABLE e (id bigint PRIMARY KEY, body jsonb NOT NULL)")
        .await
        .unwrap();
    let body = json!({"kind": "created"});
    client
        .execute("INSERT INTO e VALUES ($1, $2)", &[&7_i64, &body])
        .await
        .unwrap();
    let row = client
        .query_one("SELECT id, body, current_database() FROM e", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 7);
    assert_eq!(row.get::<_, serde_json::Value>(1), body);
    assert_eq!(row.get::<_, String>(2), db.name);
}

#[tokio::test]
async fn dynamodb_table_put_get_and_transact_write() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put,
        ScalarAttributeType, TransactWriteItem,
    };
    let Some(env) = env::require("dynamodb") else {
        return;
    };
    let ddb = env.dynamodb_client();
    let table = unique_name("smoke");
    ddb.create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    ddb.put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("a".into()))
        .item("n", AttributeValue::N("1".into()))
        .send()
        .await
        .unwrap();
    let put = |pk: &str| {
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&table)
                    .item("pk", AttributeValue::S(pk.into()))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .unwrap(),
            )
            .build()
    };
    ddb.transact_write_items()
        .transact_items(put("b"))
        .transact_items(put("c"))
        .send()
        .await
        .unwrap();
    // A transaction whose condition fails writes nothing.
    let err = ddb
        .transact_write_items()
        .transact_items(put("d"))
        .transact_items(put("a"))
        .send()
        .await;
    assert!(err.is_err(), "conditional transaction should be cancelled");
    let got = ddb
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("a".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.item.unwrap().get("n"),
        Some(&AttributeValue::N("1".into()))
    );
    let scan = ddb.scan().table_name(&table).send().await.unwrap();
    assert_eq!(scan.count, 3, "a, b, c but not d");
    ddb.delete_table().table_name(&table).send().await.unwrap();
}

#[tokio::test]
async fn s3_bucket_object_and_lifecycle_round_trip() {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, ExpirationStatus, LifecycleRule, LifecycleRuleFilter,
        StorageClass, Transition, TransitionStorageClass,
    };
    let Some(env) = env::require("s3") else {
        return;
    };
    let s3 = env.s3_client();
    let bucket = unique_name("smoke");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    s3.put_object()
        .bucket(&bucket)
        .key("a/b.txt")
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await
        .unwrap();
    let got = s3
        .get_object()
        .bucket(&bucket)
        .key("a/b.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        b"hello"
    );

    let rule = LifecycleRule::builder()
        .id("archive-tiers")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("archive/").build())
        .transitions(
            Transition::builder()
                .days(30)
                .storage_class(TransitionStorageClass::Glacier)
                .build(),
        )
        .build()
        .unwrap();
    s3.put_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(rule)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let lc = s3
        .get_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let rules = lc.rules();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].id(), Some("archive-tiers"));
    let t = &rules[0].transitions()[0];
    assert_eq!(t.days(), Some(30));
    assert_eq!(
        t.storage_class().map(|c| c.as_str()),
        Some(StorageClass::Glacier.as_str())
    );
}

/// Buckets over fake-gcs-server's JSON API with reqwest (the crate's bucket calls are gRPC v2,
/// which fake-gcs-server lacks); objects through the `google-cloud-storage` client.
#[tokio::test]
async fn gcs_bucket_and_object_round_trip() {
    let Some(env) = env::require("gcs") else {
        return;
    };
    let bucket = unique_name("smoke");
    let http = reqwest::Client::new();
    let resp = http
        .post(format!(
            "{}/storage/v1/b?project=allsource-test",
            env.gcs_endpoint()
        ))
        .json(&json!({"name": bucket}))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "create bucket: {}",
        resp.status()
    );

    // send_buffered: fake-gcs-server 1.56 stores the crate's single-shot (send_unbuffered)
    // uploads with their trailing checksum JSON appended, which the crate then rejects.
    let storage = env.gcs_storage().await.unwrap();
    let path = format!("projects/_/buckets/{bucket}");
    let written = storage
        .write_object(
            &path,
            "dir/obj.bin",
            bytes::Bytes::from_static(b"gcs-bytes"),
        )
        .send_buffered()
        .await
        .unwrap();
    assert_eq!(written.size, 9);
    let mut read = storage
        .read_object(&path, "dir/obj.bin")
        .send()
        .await
        .unwrap();
    let mut contents = Vec::new();
    while let Some(chunk) = read.next().await.transpose().unwrap() {
        contents.extend_from_slice(&chunk);
    }
    assert_eq!(contents, b"gcs-bytes");

    let listed: serde_json::Value = http
        .get(format!("{}/storage/v1/b/{bucket}/o", env.gcs_endpoint()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["name"], "dir/obj.bin");
}

#[tokio::test]
async fn firestore_document_round_trip() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Doc {
        tenant: String,
        position: i64,
    }
    let Some(env) = env::require("firestore") else {
        return;
    };
    let db = env.firestore_db().await.unwrap();
    let collection = unique_name("smoke");
    let doc = Doc {
        tenant: "t1".into(),
        position: 42,
    };
    let _: Doc = db
        .fluent()
        .insert()
        .into(&collection)
        .document_id("d1")
        .object(&doc)
        .execute()
        .await
        .unwrap();
    let back: Option<Doc> = db
        .fluent()
        .select()
        .by_id_in(&collection)
        .obj()
        .one("d1")
        .await
        .unwrap();
    assert_eq!(back, Some(doc));
}

#[tokio::test]
async fn helm_version_template_and_install() {
    let Some(env) = env::require("helm") else {
        return;
    };
    let helm = env.helm();
    let out = std::process::Command::new(helm)
        .args(["version", "--short"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("v3."));

    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("tiny");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: tiny\nversion: 0.1.0\nkubeVersion: \">=1.30.0-0\"\n",
    )
    .unwrap();
    std::fs::write(chart.join("values.yaml"), "greeting: hello\n").unwrap();
    std::fs::write(
        chart.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n\
         data:\n  greeting: {{ .Values.greeting | quote }}\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n",
    )
    .unwrap();
    let out = std::process::Command::new(helm)
        .args([
            "template",
            "rel",
            chart.to_str().unwrap(),
            "--set",
            "greeting=hi",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("name: rel-cm") && text.contains("greeting: \"hi\""),
        "{text}"
    );

    // Against the real apiserver too (its version must satisfy the chart's kubeVersion).
    if env.has("kube") {
        let ns = env.test_namespace("smoke-helm").await.unwrap();
        let out = std::process::Command::new(helm)
            .args([
                "install",
                "rel",
                chart.to_str().unwrap(),
                "--namespace",
                ns.name(),
            ])
            .env("KUBECONFIG", env.kubeconfig())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(ns.client().clone(), ns.name());
        let cm = cms.get("rel-cm").await.unwrap();
        let data: BTreeMap<String, String> = cm.data.unwrap();
        assert_eq!(data["greeting"], "hello");
        assert_eq!(
            data["kube"],
            env.get("KUBE_VERSION").unwrap_or_default(),
            "helm sees the stamped server version"
        );
        ns.cleanup().await.unwrap();
    }
}
