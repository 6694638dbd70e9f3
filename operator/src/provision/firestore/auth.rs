//! The provisioner's side of Firestore credentials: `key.json` of
//! `spec.firestore.credentialsSecretRef` read from the Secret's data, and store-node's token
//! source ([`allsource_backends::firestore::auth`], shared with the gateway) with its errors
//! mapped to [`ProvisionError`]. A token is only ever returned to the caller: never logged, put
//! in an error, an Event or status.

use allsource_backends::firestore::auth::{self as shared, AuthError};

use crate::provision::ProvisionError;

pub use shared::{Credentials, DATASTORE_SCOPE, KEY_FILE};

const SERVICE: &str = "firestore";

/// The service-account key of a credentials Secret's data (key [`KEY_FILE`]).
pub fn key_from_secret(
    data: &std::collections::BTreeMap<String, String>,
    secret: &str,
) -> Result<Credentials, ProvisionError> {
    let key = data.get(KEY_FILE).ok_or_else(|| {
        ProvisionError::InvalidSpec(format!("Secret {secret} has no key {KEY_FILE}"))
    })?;
    shared::parse_key(key, &format!("{KEY_FILE} of Secret {secret}")).map_err(auth_err)
}

/// A bearer token for `creds` (None: send no Authorization header).
pub async fn token(creds: &Credentials) -> Result<Option<String>, ProvisionError> {
    shared::token(creds).await.map_err(auth_err)
}

/// Maps store-node's credential error to the provisioner's.
pub fn auth_err(e: AuthError) -> ProvisionError {
    match e {
        AuthError::Invalid(m) => ProvisionError::InvalidSpec(format!("firestore credentials: {m}")),
        AuthError::Transient(m) => ProvisionError::Unavailable {
            service: SERVICE,
            message: format!("no access token yet: {m}"),
        },
        AuthError::Refused(m) => ProvisionError::Permission {
            service: SERVICE,
            message: format!("no access token: {m}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allsource_backends::firestore::EMULATOR_TOKEN;
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

    #[test]
    fn errors_map_to_provision_errors() {
        assert!(auth_err(AuthError::Transient("x".into())).is_retryable());
        assert!(matches!(
            auth_err(AuthError::Refused("x".into())),
            ProvisionError::Permission { .. }
        ));
    }
}
