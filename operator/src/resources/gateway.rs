//! Builds the objects of the stateless gateway in front of a cloud EventStore: the Deployment
//! running `store-node gateway --backend <postgres|dynamodb|firestore>`, the client Service `<name>` and
//! the `<name>-gateway` ConfigMap with `registry.json` (the same registry format the selfHosted
//! nodes read; the gateway serves every tenant, so each entry's node is [`GATEWAY_NODE`]).
//! Connection secrets reach the pods only as `secretKeyRef` env vars or a Secret volume (a
//! Firestore `key.json`), never as literal values.
//! Pure: no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, KeyToPath, PodSecurityContext, PodSpec,
    PodTemplateSpec, SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::configmap::{RegistryFile, REGISTRY_KEY};
use super::{
    child_meta, common_labels, registry_secret_name, HTTP_PORT, METRICS_PORT, REGISTRY_MOUNT,
};
use crate::api::eventstore::{GatewaySpec, SslMode};
use crate::api::EventStore;
use crate::provision::postgres::tls_mode;
use allsource_backends::postgres::tls::{
    SslMode as SslModeWire, CA_KEY, CLIENT_CERT_KEY, CLIENT_KEY_KEY,
};

/// Component label value of gateway pods.
pub const COMPONENT_GATEWAY: &str = "gateway";
/// Node name of every tenant in the gateway's registry.
pub const GATEWAY_NODE: &str = "gateway";
/// Name of the gateway container.
pub const CONTAINER: &str = "gateway";
const RUN_AS: i64 = 65532;

/// How the gateway reaches its backend. Secrets are referenced by name and key only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayBackend {
    /// PostgreSQL: the admin Secret's `url` key, the EventStore's schema and TLS mode.
    Postgres {
        /// Name of the Secret with key `url` (and `ca.crt` for verify-ca / verify-full).
        url_secret: String,
        /// Schema of the pooled tenants.
        schema: String,
        /// `spec.postgres.sslMode`.
        ssl_mode: SslMode,
    },
    /// DynamoDB: table, region, endpoint override and optional keys Secret (else pod identity).
    Dynamodb {
        /// Table name.
        table: String,
        /// Region.
        region: String,
        /// Endpoint override.
        endpoint: Option<String>,
        /// Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; None uses IRSA.
        credentials_secret: Option<String>,
    },
    /// Firestore: project, database, endpoint and credentials (the emulator, a service-account
    /// Secret or workload identity).
    Firestore {
        /// Google Cloud project id.
        project: String,
        /// Database id.
        database: String,
        /// Emulator `host:port` (`FIRESTORE_EMULATOR_HOST`, the emulator's token); None for a
        /// real Firestore endpoint.
        emulator_host: Option<String>,
        /// `https://` base URL other than Google's default endpoint; None for the default.
        endpoint: Option<String>,
        /// Secret with `key.json`, mounted read-only at [`FIRESTORE_KEY_DIR`] and passed as
        /// `--firestore-credentials-file`; None (and no emulator) uses workload identity.
        credentials_secret: Option<String>,
    },
}

/// Where a Firestore gateway finds its service-account key (`key.json`).
pub const FIRESTORE_KEY_DIR: &str = "/var/run/secrets/allsource/firestore";
const FIRESTORE_KEY_VOLUME: &str = "firestore-credentials";

/// The Secret volume and its mount of a Firestore gateway's `key.json`, if any.
fn key_volume(backend: &GatewayBackend) -> Option<(Volume, VolumeMount)> {
    let GatewayBackend::Firestore {
        credentials_secret: Some(secret),
        ..
    } = backend
    else {
        return None;
    };
    Some((
        Volume {
            name: FIRESTORE_KEY_VOLUME.to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(vec![KeyToPath {
                    key: "key.json".to_string(),
                    path: "key.json".to_string(),
                    mode: None,
                }]),
                default_mode: Some(0o440),
                optional: Some(false),
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: FIRESTORE_KEY_VOLUME.to_string(),
            mount_path: FIRESTORE_KEY_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ))
}

/// Name of the gateway Deployment.
pub fn gateway_name(es: &EventStore) -> String {
    format!("{}-gateway", es.name_any())
}

/// Labels that select the gateway pods.
pub fn selector_labels(es: &EventStore) -> BTreeMap<String, String> {
    let mut l = super::selector_labels(es);
    l.insert(
        "app.kubernetes.io/component".to_string(),
        COMPONENT_GATEWAY.to_string(),
    );
    l
}

fn labels(es: &EventStore) -> BTreeMap<String, String> {
    let mut l = common_labels(es);
    l.extend(selector_labels(es));
    l
}

fn meta(es: &EventStore, name: String) -> ObjectMeta {
    let mut m = child_meta(es, name);
    m.labels = Some(labels(es));
    m
}

fn literal(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    }
}

fn from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Like [`from_secret`], for a key the Secret may leave out.
fn optional_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    let mut e = from_secret(name, secret, key);
    if let Some(r) = e
        .value_from
        .as_mut()
        .and_then(|v| v.secret_key_ref.as_mut())
    {
        r.optional = Some(true);
    }
    e
}

/// Arguments and environment of the gateway container for `backend`.
pub fn args_and_env(backend: &GatewayBackend) -> (Vec<String>, Vec<EnvVar>) {
    let name = match backend {
        GatewayBackend::Postgres { .. } => "postgres",
        GatewayBackend::Dynamodb { .. } => "dynamodb",
        GatewayBackend::Firestore { .. } => "firestore",
    };
    let args = [
        "gateway",
        "--backend",
        name,
        "--registry",
        &format!("{REGISTRY_MOUNT}/{REGISTRY_KEY}"),
        "--listen",
        &format!("0.0.0.0:{HTTP_PORT}"),
        "--metrics-addr",
        &format!("0.0.0.0:{METRICS_PORT}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env = match backend {
        GatewayBackend::Postgres {
            url_secret,
            schema,
            ssl_mode,
        } => {
            let mode = tls_mode(*ssl_mode);
            let mut env = vec![
                from_secret("STORE_NODE_PG_URL", url_secret, "url"),
                literal("STORE_NODE_PG_SCHEMA", schema),
                literal("STORE_NODE_PG_SSLMODE", mode.as_str()),
            ];
            if mode.verifies_chain() {
                // Optional: without `ca.crt` the gateway verifies against its built-in roots.
                env.push(optional_from_secret(
                    "STORE_NODE_PG_CA_CERT",
                    url_secret,
                    CA_KEY,
                ));
            }
            if mode != SslModeWire::Disable {
                // Optional: a client certificate for pg_hba `cert` authentication.
                env.push(optional_from_secret(
                    "STORE_NODE_PG_CLIENT_CERT",
                    url_secret,
                    CLIENT_CERT_KEY,
                ));
                env.push(optional_from_secret(
                    "STORE_NODE_PG_CLIENT_KEY",
                    url_secret,
                    CLIENT_KEY_KEY,
                ));
            }
            env
        }
        GatewayBackend::Dynamodb {
            table,
            region,
            endpoint,
            credentials_secret,
        } => {
            let mut env = vec![
                literal("STORE_NODE_DYNAMODB_TABLE", table),
                literal("AWS_REGION", region),
            ];
            if let Some(ep) = endpoint {
                env.push(literal("STORE_NODE_DYNAMODB_ENDPOINT", ep));
            }
            if let Some(s) = credentials_secret {
                env.push(from_secret(
                    "STORE_NODE_DYNAMODB_ACCESS_KEY_ID",
                    s,
                    "AWS_ACCESS_KEY_ID",
                ));
                env.push(from_secret(
                    "STORE_NODE_DYNAMODB_SECRET_ACCESS_KEY",
                    s,
                    "AWS_SECRET_ACCESS_KEY",
                ));
            }
            env
        }
        GatewayBackend::Firestore {
            project,
            database,
            emulator_host,
            endpoint,
            credentials_secret,
        } => {
            let mut env = vec![
                literal("STORE_NODE_FIRESTORE_PROJECT", project),
                literal("STORE_NODE_FIRESTORE_DATABASE", database),
            ];
            match (emulator_host, endpoint) {
                (Some(h), _) => env.push(literal("FIRESTORE_EMULATOR_HOST", h)),
                (None, Some(ep)) => env.push(literal("STORE_NODE_FIRESTORE_ENDPOINT", ep)),
                (None, None) => {}
            }
            if credentials_secret.is_some() {
                env.push(literal(
                    "STORE_NODE_FIRESTORE_CREDENTIALS_FILE",
                    &format!("{FIRESTORE_KEY_DIR}/key.json"),
                ));
            } else if emulator_host.is_none() {
                env.push(literal("STORE_NODE_FIRESTORE_WORKLOAD_IDENTITY", "true"));
            }
            env
        }
    };
    (args, env)
}

/// The gateway Deployment.
pub fn deployment(es: &EventStore, gw: &GatewaySpec, backend: &GatewayBackend) -> Deployment {
    let (args, mut env) = args_and_env(backend);
    let key = key_volume(backend);
    let mut mounts = vec![VolumeMount {
        name: "registry".to_string(),
        mount_path: REGISTRY_MOUNT.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "registry".to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(registry_secret_name(es)),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if let Some((v, m)) = key {
        volumes.push(v);
        mounts.push(m);
    }
    let tls = gw
        .tls_secret_ref
        .as_ref()
        .map(|r| super::tls_volume(&r.name));
    let https = tls.is_some();
    if let Some((v, m, var)) = tls {
        volumes.push(v);
        mounts.push(m);
        env.push(var);
    }
    let container = Container {
        name: CONTAINER.to_string(),
        image: Some(gw.image.clone()),
        image_pull_policy: Some(gw.image_pull_policy.as_str().to_string()),
        resources: gw.resources.clone(),
        args: Some(args),
        env: Some(env),
        ports: Some(super::container_ports()),
        readiness_probe: Some(super::http_probe("/readyz", 5, 3, https)),
        liveness_probe: Some(super::http_probe("/healthz", 10, 6, https)),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let overrides = gw.pod_template.clone().unwrap_or_default();
    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(labels(es));
    Deployment {
        metadata: meta(es, gateway_name(es)),
        spec: Some(DeploymentSpec {
            replicas: Some(gw.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(es)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!overrides.annotations.is_empty())
                        .then_some(overrides.annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    node_selector: (!overrides.node_selector.is_empty())
                        .then_some(overrides.node_selector),
                    tolerations: (!overrides.tolerations.is_empty())
                        .then_some(overrides.tolerations),
                    affinity: overrides.affinity,
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        // key.json is mode 0440: readable through the volume's group.
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    // Cloud identity (workload identity, IRSA) comes from the ServiceAccount the
                    // spec names; the Kubernetes API token is never needed.
                    service_account_name: gw.service_account_name.clone(),
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The client Service `<name>` over the ready gateway pods.
pub fn service(es: &EventStore) -> Service {
    Service {
        metadata: meta(es, es.name_any()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector_labels(es)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The `<name>-registry` Secret with `registry.json` (the gateway reloads it on change).
pub fn registry_secret(es: &EventStore, registry: &RegistryFile) -> Secret {
    // Every entry names GATEWAY_NODE, and store-node rejects a file whose tenants name a node
    // missing from `nodes` (the gateway would not start).
    let mut registry = registry.clone();
    registry
        .nodes
        .entry(GATEWAY_NODE.to_string())
        .or_insert_with(|| {
            format!(
                "{}://{}:{HTTP_PORT}",
                super::node_scheme(es),
                super::service::client_dns(es)
            )
        });
    super::configmap::registry_secret(es, &registry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::configmap::{Quotas, TenantEntry, TenantState};
    use allsource_core::model::TenantId;

    fn es(backend: &str) -> EventStore {
        let block = match backend {
            "postgres" => serde_json::json!({"connectionSecretRef": {"name": "pg-admin"}}),
            _ => {
                serde_json::json!({"region": "eu-west-1", "endpoint": "http://dynamodb.local:8000",
                                    "credentialsSecretRef": {"name": "aws-keys"}})
            }
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "allsource.io/v1alpha1",
            "kind": "EventStore",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "5b0c1f9e-0000-4000-8000-000000000002", "generation": 1},
            "spec": {"backend": backend, backend: block, "gateway": {"enabled": true, "replicas": 2, "image": "ghcr.io/allsource/store-node:0.1.0"}}
        }))
        .unwrap()
    }

    #[test]
    fn pods_run_as_the_named_service_account() {
        let es = es("dynamodb");
        let mut gw = es.spec.gateway.clone().unwrap();
        let backend = GatewayBackend::Postgres {
            url_secret: "pg".into(),
            schema: "s".into(),
            ssl_mode: SslMode::Disable,
        };
        let pod = |gw: &GatewaySpec| {
            deployment(&es, gw, &backend)
                .spec
                .unwrap()
                .template
                .spec
                .unwrap()
        };
        assert_eq!(pod(&gw).service_account_name, None);
        gw.service_account_name = Some("events-gateway".into());
        let p = pod(&gw);
        assert_eq!(p.service_account_name.as_deref(), Some("events-gateway"));
        assert_eq!(p.automount_service_account_token, Some(false));
    }

    /// `spec.gateway.tlsSecretRef` mounts the Secret where the gateway reads it, probes over
    /// HTTPS (an HTTP probe of a TLS-only listener never passes) and publishes an https URL.
    #[test]
    fn gateway_tls_secret_mounts_probes_and_publishes_https() {
        let mut es = es("postgres");
        let backend = GatewayBackend::Postgres {
            url_secret: "pg".into(),
            schema: "s".into(),
            ssl_mode: SslMode::Disable,
        };
        let plain = deployment(&es, es.spec.gateway.as_ref().unwrap(), &backend);
        let c = &plain.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(
            c.readiness_probe.clone().unwrap().http_get.unwrap().scheme,
            None
        );
        assert!(!c
            .env
            .clone()
            .unwrap()
            .iter()
            .any(|e| e.name == "ALLSOURCE_TLS_DIR"));

        es.spec.gateway.as_mut().unwrap().tls_secret_ref = Some(crate::api::SecretRef {
            name: "orders-gw-tls".into(),
        });
        assert_eq!(
            crate::resources::tls_secret_name(&es),
            Some("orders-gw-tls")
        );
        let pod = deployment(&es, es.spec.gateway.as_ref().unwrap(), &backend)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        crate::resources::fixtures::assert_serves_tls(&pod, "orders-gw-tls");
        let registry = RegistryFile {
            version: 1,
            tenants: vec![],
            nodes: BTreeMap::new(),
        };
        let secret = registry_secret(&es, &registry);
        let f =
            allsource_core::registry::RegistryFile::parse(&secret.data.unwrap()[REGISTRY_KEY].0)
                .unwrap();
        assert_eq!(
            f.nodes.get(GATEWAY_NODE).map(String::as_str),
            Some("https://orders.shop.svc:8080")
        );
        // A disabled gateway serves nothing, so its Secret names no listener.
        es.spec.gateway.as_mut().unwrap().enabled = false;
        assert_eq!(crate::resources::tls_secret_name(&es), None);
    }

    #[test]
    fn postgres_snapshot() {
        let es = es("postgres");
        let gw = es.spec.gateway.clone().unwrap();
        let backend = GatewayBackend::Postgres {
            url_secret: "pg-admin".into(),
            schema: "allsource_shop_orders".into(),
            ssl_mode: SslMode::VerifyFull,
        };
        insta::assert_yaml_snapshot!("postgres_deployment", deployment(&es, &gw, &backend));
        insta::assert_yaml_snapshot!("service", service(&es));
        let registry = RegistryFile {
            version: 1,
            tenants: vec![TenantEntry {
                id: TenantId::new("acme").unwrap(),
                token_sha256: vec![
                    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
                ],
                state: TenantState::Active,
                quotas: Quotas::default(),
                node: Some(GATEWAY_NODE.into()),
                location: None,
            }],
            nodes: BTreeMap::new(),
        };
        insta::assert_yaml_snapshot!("registry_secret", registry_secret(&es, &registry));
    }

    /// The gateway's scheduling, resources and pull policy come from the spec; the non-root
    /// pod reads its 0440 key.json through the volume's group.
    #[test]
    fn pod_template_resources_and_key_permissions() {
        let mut es = es("dynamodb");
        let gw = es.spec.gateway.as_mut().unwrap();
        gw.pod_template = Some(
            serde_json::from_value(serde_json::json!({
                "nodeSelector": {"pool": "gw"},
                "tolerations": [{"key": "gw", "operator": "Exists"}],
                "labels": {"team": "payments", "app.kubernetes.io/instance": "hijack"},
            }))
            .unwrap(),
        );
        gw.resources =
            Some(serde_json::from_value(serde_json::json!({"requests": {"cpu": "50m"}})).unwrap());
        let gw = gw.clone();
        let backend = GatewayBackend::Firestore {
            project: "p".into(),
            database: "(default)".into(),
            emulator_host: None,
            endpoint: None,
            credentials_secret: Some("gcp-key".into()),
        };
        let t = deployment(&es, &gw, &backend).spec.unwrap().template;
        let labels = t.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["team"], "payments");
        assert_eq!(labels["app.kubernetes.io/instance"], "orders");
        let pod = t.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["pool"], "gw");
        assert_eq!(pod.tolerations.unwrap().len(), 1);
        let c = &pod.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            c.resources.clone().unwrap().requests.unwrap()["cpu"].0,
            "50m"
        );
        let sc = pod.security_context.unwrap();
        assert_eq!((sc.run_as_user, sc.fs_group), (Some(RUN_AS), Some(RUN_AS)));
        let key = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == FIRESTORE_KEY_VOLUME)
            .unwrap();
        assert_eq!(key.secret.unwrap().default_mode, Some(0o440));
    }

    #[test]
    fn dynamodb_snapshot() {
        let es = es("dynamodb");
        let gw = es.spec.gateway.clone().unwrap();
        let backend = GatewayBackend::Dynamodb {
            table: "allsource-shop-orders".into(),
            region: "eu-west-1".into(),
            endpoint: Some("http://dynamodb.local:8000".into()),
            credentials_secret: Some("aws-keys".into()),
        };
        insta::assert_yaml_snapshot!("dynamodb_deployment", deployment(&es, &gw, &backend));
    }

    #[test]
    fn firestore_snapshot() {
        let es = es("postgres");
        let gw = es.spec.gateway.clone().unwrap();
        let backend = GatewayBackend::Firestore {
            project: "my-project".into(),
            database: "(default)".into(),
            emulator_host: None,
            endpoint: None,
            credentials_secret: Some("gcp-key".into()),
        };
        insta::assert_yaml_snapshot!("firestore_deployment", deployment(&es, &gw, &backend));
        let emulator = GatewayBackend::Firestore {
            project: "p".into(),
            database: "(default)".into(),
            emulator_host: Some("127.0.0.1:8080".into()),
            endpoint: None,
            credentials_secret: None,
        };
        let (args, env) = args_and_env(&emulator);
        assert_eq!(&args[..3], &["gateway", "--backend", "firestore"]);
        let host = env
            .iter()
            .find(|e| e.name == "FIRESTORE_EMULATOR_HOST")
            .unwrap();
        assert_eq!(host.value.as_deref(), Some("127.0.0.1:8080"));
        assert!(!env
            .iter()
            .any(|e| e.name.starts_with("STORE_NODE_FIRESTORE_CREDENTIALS")
                || e.name == "STORE_NODE_FIRESTORE_WORKLOAD_IDENTITY"));
        let wi = GatewayBackend::Firestore {
            project: "p".into(),
            database: "(default)".into(),
            emulator_host: None,
            endpoint: Some("https://eu-firestore.example.com".into()),
            credentials_secret: None,
        };
        let (_, env) = args_and_env(&wi);
        let value = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            value("STORE_NODE_FIRESTORE_WORKLOAD_IDENTITY").as_deref(),
            Some("true")
        );
        assert_eq!(
            value("STORE_NODE_FIRESTORE_ENDPOINT").as_deref(),
            Some("https://eu-firestore.example.com")
        );
        assert_eq!(value("FIRESTORE_EMULATOR_HOST"), None);
        let d = deployment(&es, &gw, &emulator);
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.volumes.unwrap().len(),
            1,
            "no key volume without a Secret"
        );
    }

    #[test]
    fn secrets_are_only_referenced() {
        let (_, env) = args_and_env(&GatewayBackend::Dynamodb {
            table: "t".into(),
            region: "r".into(),
            endpoint: None,
            credentials_secret: Some("aws-keys".into()),
        });
        for e in env.iter().filter(|e| e.name.contains("KEY")) {
            assert!(e.value.is_none(), "{} has a literal value", e.name);
            assert!(e.value_from.is_some());
        }
        let (args, env) = args_and_env(&GatewayBackend::Postgres {
            url_secret: "pg".into(),
            schema: "s".into(),
            ssl_mode: SslMode::VerifyCa,
        });
        assert_eq!(&args[..3], &["gateway", "--backend", "postgres"]);
        for name in ["STORE_NODE_PG_URL", "STORE_NODE_PG_CA_CERT"] {
            let e = env.iter().find(|e| e.name == name).unwrap();
            assert!(e.value.is_none(), "{name} has a literal value");
        }
    }

    #[test]
    fn postgres_tls_reaches_the_gateway() {
        let env_of = |ssl_mode| {
            args_and_env(&GatewayBackend::Postgres {
                url_secret: "pg".into(),
                schema: "s".into(),
                ssl_mode,
            })
            .1
        };
        let get = |env: &[EnvVar], name: &str| env.iter().find(|e| e.name == name).cloned();
        for (mode, libpq, ca) in [
            (SslMode::Disable, "disable", false),
            (SslMode::Prefer, "prefer", false),
            (SslMode::Require, "require", false),
            (SslMode::VerifyCa, "verify-ca", true),
            (SslMode::VerifyFull, "verify-full", true),
        ] {
            let env = env_of(mode);
            let sslmode = get(&env, "STORE_NODE_PG_SSLMODE").unwrap();
            assert_eq!(sslmode.value.as_deref(), Some(libpq));
            // What `store-node gateway --pg-sslmode` accepts.
            assert!(libpq
                .parse::<allsource_backends::postgres::tls::SslMode>()
                .is_ok());
            let ca_ref = get(&env, "STORE_NODE_PG_CA_CERT")
                .and_then(|e| e.value_from)
                .and_then(|v| v.secret_key_ref);
            assert_eq!(ca_ref.is_some(), ca, "{libpq}");
            if let Some(r) = ca_ref {
                assert_eq!((r.name.as_str(), r.key.as_str()), ("pg", "ca.crt"));
                assert_eq!(r.optional, Some(true));
            }
            // The client certificate goes wherever TLS may be used, from the Secret only.
            for (var, key) in [
                ("STORE_NODE_PG_CLIENT_CERT", "tls.crt"),
                ("STORE_NODE_PG_CLIENT_KEY", "tls.key"),
            ] {
                let e = get(&env, var);
                assert_eq!(e.is_some(), mode != SslMode::Disable, "{libpq} {var}");
                if let Some(e) = e {
                    assert!(e.value.is_none(), "{var} has a literal value");
                    let r = e.value_from.and_then(|v| v.secret_key_ref).unwrap();
                    assert_eq!(
                        (r.name.as_str(), r.key.as_str(), r.optional),
                        ("pg", key, Some(true))
                    );
                }
            }
        }
    }

    #[test]
    fn registry_loads_in_the_gateway() {
        // What store-node's gateway parses at start: the gateway node is listed, and a siloed
        // tenant's location comes through.
        let entry = |id: &str, location| TenantEntry {
            id: TenantId::new(id).unwrap(),
            token_sha256: vec![],
            state: TenantState::Active,
            quotas: Quotas::default(),
            node: Some(GATEWAY_NODE.into()),
            location: Some(location),
        };
        use crate::resources::configmap::LocationEntry;
        let registry = RegistryFile {
            version: 1,
            tenants: vec![
                entry(
                    "acme",
                    LocationEntry {
                        schema: Some("s__acme_1a2b3c4d".into()),
                        ..LocationEntry::default()
                    },
                ),
                entry(
                    "beta",
                    LocationEntry {
                        database: Some("orders-beta-1a2b3c4d".into()),
                        ..LocationEntry::default()
                    },
                ),
            ],
            nodes: BTreeMap::new(),
        };
        let secret = registry_secret(&es("postgres"), &registry);
        let text = secret.data.unwrap()[REGISTRY_KEY].0.clone();
        let f = allsource_core::registry::RegistryFile::parse(&text).unwrap();
        assert_eq!(
            f.nodes.get(GATEWAY_NODE).map(String::as_str),
            Some("http://orders.shop.svc:8080")
        );
        assert_eq!(
            f.tenants[0]
                .location
                .as_ref()
                .and_then(|l| l.schema.as_deref()),
            Some("s__acme_1a2b3c4d")
        );
        assert_eq!(
            f.tenants[1]
                .location
                .as_ref()
                .map(allsource_core::registry::Location::from_entry),
            Some(Ok(allsource_core::registry::Location::Database(
                "orders-beta-1a2b3c4d".into()
            )))
        );
    }
}
