//! Where the provisioner's Firestore bearer token comes from: the emulator's fixed `owner`
//! token (store-node's [`EMULATOR_TOKEN`]), an OAuth access token from a service-account key
//! (`key.json` of `spec.firestore.credentialsSecretRef`, signed JWT) or from the GKE metadata
//! server (workload identity), both through Google's `google-cloud-auth`. A token is only ever
//! returned to the caller: never logged, put in an error, an Event or status.

use google_cloud_auth::credentials::{mds, service_account};
use store_node::backend::firestore::EMULATOR_TOKEN;

use crate::provision::ProvisionError;

/// OAuth scope of the Firestore data and Admin APIs.
pub const DATASTORE_SCOPE: &str = "https://www.googleapis.com/auth/datastore";
/// Key of the service-account key in the credentials Secret.
pub const KEY_FILE: &str = "key.json";

const SERVICE: &str = "firestore";

/// How the provisioner authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// The emulator: the fixed `owner` token, no Google call.
    Emulator,
    /// A service-account key (the JSON of `key.json`).
    ServiceAccountKey(String),
    /// The metadata server of the node (GKE workload identity).
    WorkloadIdentity,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::Emulator => "Emulator",
            Credentials::ServiceAccountKey(_) => "ServiceAccountKey([redacted])",
            Credentials::WorkloadIdentity => "WorkloadIdentity",
        })
    }
}

/// The service-account key of a credentials Secret's data (key [`KEY_FILE`]).
pub fn key_from_secret(
    data: &std::collections::BTreeMap<String, String>,
    secret: &str,
) -> Result<Credentials, ProvisionError> {
    let key = data.get(KEY_FILE).ok_or_else(|| {
        ProvisionError::InvalidSpec(format!("Secret {secret} has no key {KEY_FILE}"))
    })?;
    let parsed: serde_json::Value = serde_json::from_str(key).map_err(|_| {
        ProvisionError::InvalidSpec(format!("{KEY_FILE} of Secret {secret} is not JSON"))
    })?;
    if parsed.get("type").and_then(|t| t.as_str()) != Some("service_account") {
        return Err(ProvisionError::InvalidSpec(format!(
            "{KEY_FILE} of Secret {secret} is not a service-account key (type service_account)"
        )));
    }
    Ok(Credentials::ServiceAccountKey(key.clone()))
}

/// A bearer token for `creds` (None: send no Authorization header).
pub async fn token(creds: &Credentials) -> Result<Option<String>, ProvisionError> {
    let built = match creds {
        Credentials::Emulator => return Ok(Some(EMULATOR_TOKEN.to_string())),
        Credentials::ServiceAccountKey(json) => {
            let key: serde_json::Value = serde_json::from_str(json)
                .map_err(|_| ProvisionError::InvalidSpec(format!("{KEY_FILE} is not JSON")))?;
            service_account::Builder::new(key)
                .with_access_specifier(service_account::AccessSpecifier::from_scopes([
                    DATASTORE_SCOPE,
                ]))
                .build_access_token_credentials()
        }
        Credentials::WorkloadIdentity => mds::Builder::default()
            .with_scopes([DATASTORE_SCOPE])
            .build_access_token_credentials(),
    };
    let creds = built
        .map_err(|e| ProvisionError::InvalidSpec(format!("firestore credentials unusable: {e}")))?;
    match creds.access_token().await {
        Ok(t) => Ok(Some(t.token)),
        Err(e) if e.is_transient() => Err(ProvisionError::Unavailable {
            service: SERVICE,
            message: format!("no access token yet: {e}"),
        }),
        Err(e) => Err(ProvisionError::Permission {
            service: SERVICE,
            message: format!("no access token: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn key_json_is_checked_and_never_printed() {
        let key = r#"{"type":"service_account","private_key":"-----BEGIN PRIVATE KEY-----hush"}"#;
        let data = BTreeMap::from([(KEY_FILE.to_string(), key.to_string())]);
        let c = key_from_secret(&data, "gcp").unwrap();
        assert!(!format!("{c:?}").contains("hush"));
        assert!(key_from_secret(&BTreeMap::new(), "gcp").is_err());
        let user = BTreeMap::from([(KEY_FILE.to_string(), r#"{"type":"authorized_user"}"#.into())]);
        assert!(matches!(
            key_from_secret(&user, "gcp"),
            Err(ProvisionError::InvalidSpec(_))
        ));
    }

    #[tokio::test]
    async fn emulator_token_needs_no_call() {
        assert_eq!(
            token(&Credentials::Emulator).await.unwrap().as_deref(),
            Some(EMULATOR_TOKEN)
        );
    }
}
