//! Builds a Tenant's connection Secret `<tenant>-credentials`, the one place its bearer token is
//! kept. Keys (all plain strings):
//!
//! | key | value |
//! |---|---|
//! | `endpoint` | base URL of the EventStore's HTTP API, e.g. `http://orders.shop.svc:8080` |
//! | `tenantId` | the tenant id (`spec.tenantId`) |
//! | `token` | the bearer token (`Authorization: Bearer <token>`) |
//! | `backend` | the EventStore backend: `selfHosted`, `dynamodb`, `firestore` or `postgres` |
//! | `ca.crt` | only when the store's nodes serve HTTPS: the PEM CA to verify `endpoint` with |
//!
//! The Secret is owned by the Tenant (controller owner reference) and carries the
//! `allsource.io/rotate-handled` annotation: the `spec.credentials.rotate` value its token was
//! issued for. Pure: no I/O, no clock, no randomness (the token comes in from the caller).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::Tenant;

/// Key of the base URL.
pub const ENDPOINT_KEY: &str = "endpoint";
/// Key of the tenant id.
pub const TENANT_ID_KEY: &str = "tenantId";
/// Key of the bearer token.
pub const TOKEN_KEY: &str = "token";
/// Key of the backend name.
pub const BACKEND_KEY: &str = "backend";
/// Annotation with the `spec.credentials.rotate` value the token was issued for.
pub const ROTATE_HANDLED_ANNOTATION: &str = "allsource.io/rotate-handled";
/// Component label value of connection Secrets.
pub const COMPONENT_CREDENTIALS: &str = "tenant-credentials";

/// Name of a tenant's connection Secret.
pub fn secret_name(tenant: &Tenant) -> String {
    format!("{}-credentials", tenant.name_any())
}

/// What a client needs to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct Connection {
    /// Base URL of the HTTP API.
    pub endpoint: String,
    /// Tenant id.
    pub tenant_id: String,
    /// Bearer token.
    pub token: String,
    /// Backend name.
    pub backend: String,
    /// PEM CA certificate of an HTTPS endpoint (`ca.crt`); None for plain HTTP.
    pub ca: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .field("tenant_id", &self.tenant_id)
            .field("token", &"<redacted>")
            .field("backend", &self.backend)
            .field("ca", &self.ca.is_some())
            .finish()
    }
}

/// Labels of a tenant's connection Secret.
pub fn labels(tenant: &Tenant) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "allsource".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), tenant.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            COMPONENT_CREDENTIALS.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "allsource-operator".to_string(),
        ),
        (
            "app.kubernetes.io/part-of".to_string(),
            "allsource".to_string(),
        ),
    ])
}

/// The desired connection Secret.
pub fn build(tenant: &Tenant, conn: &Connection, handled_rotate: Option<&str>) -> Secret {
    let mut data = BTreeMap::from([
        (
            ENDPOINT_KEY.to_string(),
            ByteString(conn.endpoint.clone().into_bytes()),
        ),
        (
            TENANT_ID_KEY.to_string(),
            ByteString(conn.tenant_id.clone().into_bytes()),
        ),
        (
            TOKEN_KEY.to_string(),
            ByteString(conn.token.clone().into_bytes()),
        ),
        (
            BACKEND_KEY.to_string(),
            ByteString(conn.backend.clone().into_bytes()),
        ),
    ]);
    if let Some(ca) = &conn.ca {
        data.insert(
            super::TLS_CA_KEY.to_string(),
            ByteString(ca.clone().into_bytes()),
        );
    }
    let annotations = handled_rotate
        .map(|r| BTreeMap::from([(ROTATE_HANDLED_ANNOTATION.to_string(), r.to_string())]));
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(tenant)),
            namespace: tenant.namespace(),
            labels: Some(labels(tenant)),
            annotations,
            owner_references: tenant.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Secret::default()
    }
}

/// A string value of a Secret (None when absent or not UTF-8).
pub fn value<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| std::str::from_utf8(&v.0).ok())
}

/// The rotate value the live Secret's token was issued for.
pub fn handled_rotate(secret: &Secret) -> Option<&str> {
    secret
        .annotations()
        .get(ROTATE_HANDLED_ANNOTATION)
        .map(String::as_str)
}

/// Whether the live Secret already carries everything `desired` sets (data, labels, our
/// annotation, owner), so applying it would change nothing.
pub fn up_to_date(live: &Secret, desired: &Secret) -> bool {
    let labels_ok = desired
        .labels()
        .iter()
        .all(|(k, v)| live.labels().get(k) == Some(v));
    let owner_ok = desired
        .owner_references()
        .iter()
        .all(|o| live.owner_references().iter().any(|l| l.uid == o.uid));
    live.data == desired.data
        && labels_ok
        && owner_ok
        && handled_rotate(live) == handled_rotate(desired)
        && live.type_ == desired.type_
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> Tenant {
        serde_yaml::from_str(
            r#"
apiVersion: allsource.io/v1alpha1
kind: Tenant
metadata:
  name: acme
  namespace: shop
  uid: 5b0c1f9e-0000-4000-8000-000000000002
  generation: 1
spec:
  eventStoreRef: {name: orders}
  tenantId: acme
"#,
        )
        .unwrap()
    }

    fn conn(token: &str) -> Connection {
        Connection {
            endpoint: "http://orders.shop.svc:8080".into(),
            tenant_id: "acme".into(),
            token: token.into(),
            backend: "selfHosted".into(),
            ca: None,
        }
    }

    #[test]
    fn snapshot() {
        let s = build(&tenant(), &conn("0123abcd"), Some("2026-11-24"));
        insta::assert_yaml_snapshot!("tenant_credentials", s);
    }

    #[test]
    fn values_round_trip_and_change_is_detected() {
        let t = tenant();
        let s = build(&t, &conn("tok"), Some("r1"));
        assert_eq!(value(&s, TOKEN_KEY), Some("tok"));
        assert_eq!(value(&s, ENDPOINT_KEY), Some("http://orders.shop.svc:8080"));
        assert_eq!(handled_rotate(&s), Some("r1"));
        assert!(up_to_date(&s, &s));
        assert!(!up_to_date(&s, &build(&t, &conn("tok2"), Some("r1"))));
        assert!(!up_to_date(&s, &build(&t, &conn("tok"), Some("r2"))));
        assert!(!format!("{:?}", conn("s3cr3t")).contains("s3cr3t"));
    }

    /// A store serving HTTPS hands its CA to the tenant's applications next to the https
    /// endpoint; a plain store's Secret has no `ca.crt`.
    #[test]
    fn https_endpoint_comes_with_the_ca() {
        let t = tenant();
        let plain = build(&t, &conn("tok"), None);
        assert_eq!(value(&plain, crate::resources::TLS_CA_KEY), None);
        let mut c = conn("tok");
        c.endpoint = "https://orders.shop.svc:8080".into();
        c.ca = Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into());
        let s = build(&t, &c, None);
        assert_eq!(
            value(&s, crate::resources::TLS_CA_KEY),
            c.ca.as_deref(),
            "ca.crt"
        );
        assert_eq!(
            value(&s, ENDPOINT_KEY),
            Some("https://orders.shop.svc:8080")
        );
        assert!(!up_to_date(&plain, &s));
    }
}
