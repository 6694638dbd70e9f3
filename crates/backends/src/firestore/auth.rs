//! Where the Firestore REST client's bearer token comes from: none, a fixed token, the
//! emulator's `owner` token, or a Google OAuth access token minted by `google-cloud-auth` from a
//! service-account key (`key.json`, a self-signed JWT with the datastore scope) or from the
//! metadata server (GKE workload identity). `google-cloud-auth` caches a token and refreshes it
//! shortly before it expires, so [`TokenSource::token`] may be called for every request. Shared
//! by the gateway and the operator's provisioner. A token or a key is only ever returned to the
//! caller: never logged, printed by `Debug` or put in an error.

use std::path::Path;

use google_cloud_auth::credentials::{mds, service_account, AccessTokenCredentials};
use thiserror::Error;

/// OAuth scope of the Firestore data and Admin APIs.
pub const DATASTORE_SCOPE: &str = "https://www.googleapis.com/auth/datastore";
/// Name of the service-account key file (and its key in a credentials Secret).
pub const KEY_FILE: &str = "key.json";
/// The token the emulator accepts.
pub const EMULATOR_TOKEN: &str = "owner";

/// How a Firestore client authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No Authorization header.
    None,
    /// A fixed bearer token (refreshed by whoever starts the process).
    Static(String),
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
            Credentials::None => "None",
            Credentials::Static(_) => "Static([redacted])",
            Credentials::Emulator => "Emulator",
            Credentials::ServiceAccountKey(_) => "ServiceAccountKey([redacted])",
            Credentials::WorkloadIdentity => "WorkloadIdentity",
        })
    }
}

/// Why no token could be had. Never carries a token or key material.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The credentials cannot work as given (not a service-account key, unreadable file).
    #[error("firestore credentials unusable: {0}")]
    Invalid(String),
    /// The token endpoint or metadata server is unreachable for now (retryable).
    #[error("no firestore access token yet: {0}")]
    Transient(String),
    /// Google refused to issue a token.
    #[error("no firestore access token: {0}")]
    Refused(String),
}

/// Checks that `json` is a service-account key; `source` names it in errors.
pub fn parse_key(json: &str, source: &str) -> Result<Credentials, AuthError> {
    let parsed: serde_json::Value = serde_json::from_str(json)
        .map_err(|_| AuthError::Invalid(format!("{source} is not JSON")))?;
    if parsed.get("type").and_then(|t| t.as_str()) != Some("service_account") {
        return Err(AuthError::Invalid(format!(
            "{source} is not a service-account key (type service_account)"
        )));
    }
    Ok(Credentials::ServiceAccountKey(json.to_string()))
}

/// Reads and checks the service-account key at `path`.
pub fn key_from_file(path: &Path) -> Result<Credentials, AuthError> {
    let shown = path.display().to_string();
    let json = std::fs::read_to_string(path)
        .map_err(|e| AuthError::Invalid(format!("reading {shown}: {e}")))?;
    parse_key(&json, &shown)
}

/// Hands out bearer tokens for one set of [`Credentials`]. Cheap to clone (shares the cache).
#[derive(Clone)]
pub struct TokenSource {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    None,
    Fixed(String),
    Google(AccessTokenCredentials),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            Kind::None => "TokenSource(none)",
            Kind::Fixed(_) => "TokenSource(static, [redacted])",
            Kind::Google(_) => "TokenSource(google)",
        })
    }
}

impl TokenSource {
    /// A source for `creds`; builds Google credentials without any call.
    pub fn new(creds: &Credentials) -> Result<Self, AuthError> {
        let kind = match creds {
            Credentials::None => Kind::None,
            Credentials::Static(t) => Kind::Fixed(t.clone()),
            Credentials::Emulator => Kind::Fixed(EMULATOR_TOKEN.to_string()),
            Credentials::ServiceAccountKey(json) => {
                let key: serde_json::Value = serde_json::from_str(json)
                    .map_err(|_| AuthError::Invalid(format!("{KEY_FILE} is not JSON")))?;
                Kind::Google(
                    service_account::Builder::new(key)
                        .with_access_specifier(service_account::AccessSpecifier::from_scopes([
                            DATASTORE_SCOPE,
                        ]))
                        .build_access_token_credentials()
                        .map_err(|e| AuthError::Invalid(e.to_string()))?,
                )
            }
            Credentials::WorkloadIdentity => Kind::Google(
                mds::Builder::default()
                    .with_scopes([DATASTORE_SCOPE])
                    .build_access_token_credentials()
                    .map_err(|e| AuthError::Invalid(e.to_string()))?,
            ),
        };
        Ok(Self { kind })
    }

    /// A fixed token, or none.
    pub fn fixed(token: Option<String>) -> Self {
        Self {
            kind: token.map_or(Kind::None, Kind::Fixed),
        }
    }

    /// The bearer token to send now (None: send no Authorization header). Google tokens come
    /// from `google-cloud-auth`'s cache, refreshed before they expire.
    pub async fn token(&self) -> Result<Option<String>, AuthError> {
        match &self.kind {
            Kind::None => Ok(None),
            Kind::Fixed(t) => Ok(Some(t.clone())),
            Kind::Google(c) => match c.access_token().await {
                Ok(t) => Ok(Some(t.token)),
                Err(e) if e.is_transient() => Err(AuthError::Transient(e.to_string())),
                Err(e) => Err(AuthError::Refused(e.to_string())),
            },
        }
    }
}

/// One token for `creds` (None: send no Authorization header).
pub async fn token(creds: &Credentials) -> Result<Option<String>, AuthError> {
    TokenSource::new(creds)?.token().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_never_printed() {
        let key = r#"{"type":"service_account","private_key":"-----BEGIN PRIVATE KEY-----hush"}"#;
        let c = parse_key(key, KEY_FILE).unwrap();
        assert!(!format!("{c:?}").contains("hush"));
        assert!(matches!(
            parse_key(r#"{"type":"authorized_user"}"#, KEY_FILE),
            Err(AuthError::Invalid(_))
        ));
        let e = parse_key("hush-not-json", KEY_FILE).unwrap_err();
        assert!(!e.to_string().contains("hush"));
        assert!(!format!("{e:?}").contains("hush"));
    }

    #[tokio::test]
    async fn tokens_never_appear_in_debug_output() {
        let secret = "ya29.secret-token-value";
        let creds = Credentials::Static(secret.to_string());
        assert!(!format!("{creds:?}").contains(secret));
        let src = TokenSource::new(&creds).unwrap();
        assert!(!format!("{src:?}").contains(secret));
        assert_eq!(src.token().await.unwrap().as_deref(), Some(secret));
        assert!(!format!("{:?}", TokenSource::fixed(Some(secret.into()))).contains(secret));
        assert_eq!(TokenSource::fixed(None).token().await.unwrap(), None);
        assert_eq!(
            token(&Credentials::Emulator).await.unwrap().as_deref(),
            Some(EMULATOR_TOKEN)
        );
    }

    #[test]
    fn a_missing_key_file_is_invalid() {
        assert!(matches!(
            key_from_file(Path::new("no/such/key.json")),
            Err(AuthError::Invalid(_))
        ));
    }
}
