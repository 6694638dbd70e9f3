//! How the operator calls a store's API (its nodes, or the gateway of a cloud store): plain
//! HTTP, or, when the store has a TLS Secret (`spec.selfHosted.tlsSecretRef`,
//! `spec.gateway.tlsSecretRef`), HTTPS verified against `ca.crt` of that same Secret
//! (and only that CA: the public roots are not trusted for a store's nodes). Clients are cached
//! per CA, so a rotated CA gets a new client and an unchanged one reuses its connections.

use std::collections::HashMap;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::tenant::usage;
use crate::api::EventStore;
use crate::resources::{secret, tls_secret_name, TLS_CA_KEY, TLS_CERT_KEY, TLS_KEY_KEY};

/// Why the operator cannot call a store's nodes over HTTPS.
#[derive(Debug, thiserror::Error)]
pub enum NodeTlsError {
    /// The TLS Secret does not exist.
    #[error(
        "TLS Secret {0} (spec.selfHosted.tlsSecretRef or spec.gateway.tlsSecretRef) does not exist"
    )]
    SecretMissing(String),
    /// The TLS Secret has no `ca.crt`.
    #[error("TLS Secret {0} has no ca.crt; the operator needs it to verify the store nodes")]
    NoCa(String),
    /// Reading the Secret failed.
    #[error("reading TLS Secret {name}: {source}")]
    Api {
        /// The Secret.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// The CA is not a PEM certificate, or the client could not be built.
    #[error("TLS Secret {name}: ca.crt is not usable: {what}")]
    BadCa {
        /// The Secret.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// The plain client could not be built.
    #[error("HTTP client: {0}")]
    Client(#[from] usage::UsageError),
}

/// PEM of `ca.crt` of the store's TLS Secret; None when the store serves plain HTTP.
pub async fn store_ca(
    client: &kube::Client,
    es: &EventStore,
    ns: &str,
) -> Result<Option<String>, NodeTlsError> {
    let Some(name) = tls_secret_name(es) else {
        return Ok(None);
    };
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|source| NodeTlsError::Api {
            name: name.to_string(),
            source,
        })?
        .ok_or_else(|| NodeTlsError::SecretMissing(name.to_string()))?;
    secret::value(&s, TLS_CA_KEY)
        .filter(|v| !v.trim().is_empty())
        .map(|v| Some(v.to_string()))
        .ok_or_else(|| NodeTlsError::NoCa(name.to_string()))
}

/// What keeps the store's TLS Secret `name` (None: absent) from serving its nodes, in words
/// for status; None when it is usable: `tls.crt` and `tls.key` form a pair the node loads
/// (checked by the node's own loader) and `ca.crt` holds a certificate, which the operator,
/// the archiver and the tenants' Secrets use to verify the nodes. Pure.
pub fn tls_secret_problem(name: &str, secret: Option<&Secret>) -> Option<String> {
    let Some(s) = secret else {
        return Some(format!(
            "TLS Secret {name} (the store's tlsSecretRef) does not exist"
        ));
    };
    let bytes = |key: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.0.as_slice())
            .filter(|v| !v.is_empty())
    };
    let missing: Vec<&str> = [TLS_CERT_KEY, TLS_KEY_KEY, TLS_CA_KEY]
        .into_iter()
        .filter(|k| bytes(k).is_none())
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "TLS Secret {name} has no {} (it needs tls.crt, tls.key and ca.crt)",
            missing.join(", ")
        ));
    }
    let (cert, key, ca) = (
        bytes(TLS_CERT_KEY).unwrap_or_default(),
        bytes(TLS_KEY_KEY).unwrap_or_default(),
        bytes(TLS_CA_KEY).unwrap_or_default(),
    );
    if let Err(e) = allsource_core::tls::check_pair(cert, key) {
        return Some(format!("TLS Secret {name}: {e}"));
    }
    if let Err(e) = allsource_core::tls::check_ca(ca) {
        return Some(format!("TLS Secret {name}: ca.crt {e}"));
    }
    None
}

/// An HTTP client for nodes verified with `ca` (PEM), or the plain client when None.
pub fn client_for(ca: Option<&str>, secret_name: &str) -> Result<reqwest::Client, NodeTlsError> {
    static CLIENTS: OnceLock<Mutex<HashMap<Option<[u8; 32]>, reqwest::Client>>> = OnceLock::new();
    let key = ca.map(|c| <[u8; 32]>::from(Sha256::digest(c.as_bytes())));
    let clients = CLIENTS.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(c) = clients.lock().get(&key) {
        return Ok(c.clone());
    }
    let client = match ca {
        None => usage::client()?,
        Some(pem) => {
            let bad = |what: String| NodeTlsError::BadCa {
                name: secret_name.to_string(),
                what,
            };
            allsource_client::builder(usage::TIMEOUT, Some(pem.as_bytes()))
                .map_err(|e| bad(e.to_string()))?
                .build()
                .map_err(|e| bad(e.to_string()))?
        }
    };
    let mut clients = clients.lock();
    // A handful of stores per operator; forget old CAs rather than grow without bound.
    if clients.len() > 64 {
        clients.clear();
    }
    clients.insert(key, client.clone());
    Ok(client)
}

/// The client to call the nodes of `es` with (reads the CA from the API when TLS is on).
pub async fn node_client(
    client: &kube::Client,
    es: &EventStore,
    ns: &str,
) -> Result<reqwest::Client, NodeTlsError> {
    let ca = store_ca(client, es, ns).await?;
    client_for(ca.as_deref(), tls_secret_name(es).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_that_is_not_pem_is_refused_with_the_secret_name() {
        let e = client_for(Some("-----BEGIN CERTIFICATE-----\nnope\n"), "orders-tls")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("orders-tls") && e.contains("ca.crt"), "{e}");
        assert!(client_for(None, "").is_ok());
    }

    fn tls_secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn tls_secret_problems_name_the_secret_and_the_key() {
        let p = tls_secret_problem("orders-tls", None).unwrap();
        assert!(
            p.contains("orders-tls") && p.contains("does not exist"),
            "{p}"
        );
        let p = tls_secret_problem("orders-tls", Some(&tls_secret(&[("tls.crt", "x")]))).unwrap();
        assert!(p.contains("tls.key, ca.crt"), "{p}");
        let junk = tls_secret(&[("tls.crt", "junk"), ("tls.key", "junk"), ("ca.crt", "junk")]);
        let p = tls_secret_problem("orders-tls", Some(&junk)).unwrap();
        assert!(p.contains("orders-tls") && p.contains("tls.crt"), "{p}");
        // A key's bytes never reach the message.
        let secretive = tls_secret(&[
            ("tls.crt", "junk"),
            (
                "tls.key",
                "-----BEGIN PRIVATE KEY-----\nS3CR3T\n-----END PRIVATE KEY-----\n",
            ),
            ("ca.crt", "junk"),
        ]);
        let p = tls_secret_problem("orders-tls", Some(&secretive)).unwrap();
        assert!(!p.contains("S3CR3T"), "{p}");
    }
}
