//! The CRDs generated from the operator's Rust types, served by the env's real kube-apiserver:
//! every manifest in `tests/manifests/invalid/` is rejected with the message its `# expect:` line
//! names, every sample in `config/samples/` is accepted (with schema defaults filled in), updates
//! of immutable fields are rejected, the scale subresource works, and `kubectl explain` prints
//! the field descriptions.

use allsource_operator::api::{ArchivePolicy, EventStore, Tenant};
use allsource_tests::operator::{install_crds, repo_root};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::Client;
use serde::Deserialize;

fn resource_for(kind: &str) -> ApiResource {
    match kind {
        "EventStore" => ApiResource::erase::<EventStore>(&()),
        "Tenant" => ApiResource::erase::<Tenant>(&()),
        "ArchivePolicy" => ApiResource::erase::<ArchivePolicy>(&()),
        other => panic!("unexpected kind {other}"),
    }
}

/// Creates `text` in `ns` with a server-side dry run.
async fn dry_run_create(
    client: &Client,
    ns: &str,
    text: &str,
) -> Result<DynamicObject, kube::Error> {
    let obj: DynamicObject = serde_yaml::from_str(text).unwrap();
    let kind = obj.types.as_ref().unwrap().kind.clone();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource_for(&kind));
    api.create(
        &PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        &obj,
    )
    .await
}

#[tokio::test]
async fn invalid_manifests_are_rejected_with_their_reason() {
    let Some(env) = allsource_tests::env::require("kube") else {
        return;
    };
    let ns = env.test_namespace("crd-invalid").await.unwrap();
    install_crds(ns.client()).await;
    let dir = repo_root().join("tests/manifests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 20, "corpus too small: {}", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", f.display()));
        assert!(
            text.lines().any(|l| l.starts_with("# invalid: ")),
            "{} says not what is wrong",
            f.display()
        );
        match dry_run_create(ns.client(), ns.name(), &text).await {
            Ok(_) => failures.push(format!("{}: accepted", f.display())),
            Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains(expect) => {}
            Err(e) => failures.push(format!("{}: wrong rejection: {e}", f.display())),
        }
    }
    ns.cleanup().await.unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn samples_are_accepted_and_defaulted() {
    let Some(env) = allsource_tests::env::require("kube") else {
        return;
    };
    let ns = env.test_namespace("crd-samples").await.unwrap();
    install_crds(ns.client()).await;
    let dir = repo_root().join("config/samples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            if value.get("apiVersion").and_then(|v| v.as_str()) != Some("allsource.io/v1alpha1") {
                continue; // e.g. the Secret a sample references
            }
            let doc_text = serde_yaml::to_string(&value).unwrap();
            let obj = dry_run_create(ns.client(), ns.name(), &doc_text)
                .await
                .unwrap_or_else(|e| panic!("{} rejected: {e}", path.display()));
            seen += 1;
            check_defaults(&path, &obj);
        }
    }
    ns.cleanup().await.unwrap();
    assert!(seen >= 8, "only {seen} samples");
}

fn check_defaults(path: &std::path::Path, obj: &DynamicObject) {
    {
        if path.file_name().unwrap() == "eventstore-selfhosted.yaml" {
            // Defaults come from the schema, so what the apiserver stores is what Argo CD expects.
            let spec = &obj.data["spec"];
            assert_eq!(spec["suspend"], false);
            assert_eq!(spec["selfHosted"]["imagePullPolicy"], "IfNotPresent");
            assert_eq!(spec["selfHosted"]["storage"]["keepOnDelete"], false);
        }
    }
}

#[tokio::test]
async fn immutable_fields_cannot_change() {
    let Some(env) = allsource_tests::env::require("kube") else {
        return;
    };
    let ns = env.test_namespace("crd-immutable").await.unwrap();
    let client = ns.client().clone();
    install_crds(&client).await;
    let es: Api<EventStore> = Api::namespaced(client.clone(), ns.name());
    let tn: Api<Tenant> = Api::namespaced(client.clone(), ns.name());
    let pp = PatchParams::default();
    let store: EventStore = serde_yaml::from_str(
        "apiVersion: allsource.io/v1alpha1\nkind: EventStore\nmetadata: {name: pg}\nspec:\n  backend: postgres\n  postgres:\n    connectionSecretRef: {name: pg-admin}\n    schema: events_pg\n",
    )
    .unwrap();
    es.create(&PostParams::default(), &store).await.unwrap();
    let tenant: Tenant = serde_yaml::from_str(
        "apiVersion: allsource.io/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  eventStoreRef: {name: pg}\n  tenantId: acme\n",
    )
    .unwrap();
    tn.create(&PostParams::default(), &tenant).await.unwrap();

    let cases: Vec<(&str, Result<(), kube::Error>, &str)> = vec![
        (
            "backend",
            es.patch("pg", &pp, &Patch::Merge(serde_json::json!({"spec": {"backend": "dynamodb", "postgres": null, "dynamodb": {"region": "eu-west-1"}}})))
                .await
                .map(|_| ()),
            "spec.backend is immutable",
        ),
        (
            "postgres.schema",
            es.patch("pg", &pp, &Patch::Merge(serde_json::json!({"spec": {"postgres": {"schema": "other"}}})))
                .await
                .map(|_| ()),
            "spec.postgres.schema is immutable once set",
        ),
        (
            "tenantId",
            tn.patch("acme", &pp, &Patch::Merge(serde_json::json!({"spec": {"tenantId": "other"}})))
                .await
                .map(|_| ()),
            "spec.tenantId is immutable",
        ),
        (
            "placement",
            tn.patch("acme", &pp, &Patch::Merge(serde_json::json!({"spec": {"placement": "siloed"}})))
                .await
                .map(|_| ()),
            "spec.placement is immutable",
        ),
    ];
    // A mutable field still changes.
    es.patch(
        "pg",
        &pp,
        &Patch::Merge(serde_json::json!({"spec": {"deletionPolicy": "Delete"}})),
    )
    .await
    .unwrap();
    ns.cleanup().await.unwrap();
    for (field, result, expect) in cases {
        match result {
            Err(kube::Error::Api(e)) => {
                assert!(e.message.contains(expect), "{field}: {}", e.message)
            }
            other => panic!("{field}: update was not rejected: {other:?}"),
        }
    }
}

#[tokio::test]
async fn scale_subresource_reads_and_writes_self_hosted_replicas() {
    let Some(env) = allsource_tests::env::require("kube") else {
        return;
    };
    let ns = env.test_namespace("crd-scale").await.unwrap();
    let client = ns.client().clone();
    install_crds(&client).await;
    let es: Api<EventStore> = Api::namespaced(client.clone(), ns.name());
    let store: EventStore = serde_yaml::from_str(
        "apiVersion: allsource.io/v1alpha1\nkind: EventStore\nmetadata: {name: s}\nspec:\n  backend: selfHosted\n  selfHosted: {}\n",
    )
    .unwrap();
    es.create(&PostParams::default(), &store).await.unwrap();
    let scale = es.get_scale("s").await.unwrap();
    assert_eq!(
        scale.spec.unwrap().replicas,
        Some(3),
        "default replicas from the schema"
    );
    es.patch_scale(
        "s",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 5}})),
    )
    .await
    .unwrap();
    assert_eq!(
        es.get("s")
            .await
            .unwrap()
            .spec
            .self_hosted
            .unwrap()
            .replicas,
        5
    );
    let too_many = es
        .patch_scale(
            "s",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 100}})),
        )
        .await;
    ns.cleanup().await.unwrap();
    assert!(
        too_many.is_err(),
        "scale above the schema maximum must be rejected"
    );
}

#[tokio::test]
async fn kubectl_explain_prints_descriptions() {
    let Some(env) = allsource_tests::env::require("kube") else {
        return;
    };
    let client = env.kube_client().await.unwrap();
    install_crds(&client).await;
    let out = std::process::Command::new("kubectl")
        .args([
            "explain",
            "eventstore.spec.selfHosted.storage",
            "--kubeconfig",
        ])
        .arg(env.kubeconfig())
        .output()
        .expect("kubectl on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("The persistent volume of each node"),
        "{text}"
    );
    assert!(text.contains("Size of each node's volume"), "{text}");
    assert!(text.contains("keepOnDelete"), "{text}");
}
