//! TLS to PostgreSQL with libpq's `sslmode` semantics, shared by the gateway's backend and the
//! operator's provisioners (one rustls client, ring as crypto provider, chosen explicitly so it
//! never depends on a process-wide default):
//!
//! | mode          | TLS                          | certificate                               |
//! |---------------|------------------------------|-------------------------------------------|
//! | `disable`     | never                        | -                                         |
//! | `prefer`      | when the server offers it    | not verified                              |
//! | `require`     | always                       | not verified                              |
//! | `verify-ca`   | always                       | chain verified against the CA, any name   |
//! | `verify-full` | always                       | chain and host name verified              |
//!
//! A client certificate ([`ClientIdentity`]: the Secret's [`CLIENT_CERT_KEY`] and
//! [`CLIENT_KEY_KEY`], PEM) is presented when given, in every TLS mode, for servers that
//! authenticate with `cert` in pg_hba (or demand `clientcert=verify-full`).
//!
//! The CA is the PEM bundle of the connection Secret's [`CA_KEY`] when given, else the Mozilla
//! roots compiled in (webpki-roots). Unlike libpq, a CA given with `require` does not upgrade it
//! to `verify-ca`: the mode says what is checked. "Not verified" still checks the handshake
//! signatures (the peer holds the key of the certificate it sent), so it stops a passive
//! listener but not an active man in the middle. This module owns the connector; it must never
//! log or return connection secrets (a CA bundle is public, a password never reaches it, a
//! client key is never printed, not even in errors).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Key of a connection Secret holding the PEM CA bundle of the server's certificate.
pub const CA_KEY: &str = "ca.crt";
/// Key of a connection Secret holding the PEM client certificate (chain) to present.
pub const CLIENT_CERT_KEY: &str = "tls.crt";
/// Key of a connection Secret holding the PEM private key of [`CLIENT_CERT_KEY`].
pub const CLIENT_KEY_KEY: &str = "tls.key";

/// A client certificate and its key, both PEM (the key: PKCS#8, PKCS#1 or SEC1).
#[derive(Clone, Copy)]
pub struct ClientIdentity<'a> {
    /// The certificate, then any intermediates.
    pub cert_pem: &'a str,
    /// Its private key.
    pub key_pem: &'a str,
}

// Hand-written so that the key never reaches a log.
impl fmt::Debug for ClientIdentity<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// libpq `sslmode` (`allow` is not offered: it only differs from `prefer` on servers that
/// demand TLS after refusing it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, certificate not verified.
    #[default]
    Prefer,
    /// TLS, certificate not verified.
    Require,
    /// TLS, certificate chain verified against the CA, host name not checked.
    VerifyCa,
    /// TLS, certificate chain and host name verified.
    VerifyFull,
}

impl SslMode {
    /// Every mode, in libpq's order.
    pub const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// libpq's spelling (`verify-full`), as in a `sslmode=` URL parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres negotiates: whether TLS is skipped, tried or demanded (verification
    /// is the connector's job).
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// Whether the server's certificate chain is checked against a CA.
    pub fn verifies_chain(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SslMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| TlsError::UnknownMode(s.chars().take(32).collect()))
    }
}

/// Why no TLS connector could be built. Messages never quote certificate bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Not one of libpq's `sslmode` values.
    #[error("unknown sslmode {0:?}: expected disable, prefer, require, verify-ca or verify-full")]
    UnknownMode(String),
    /// The CA bundle holds no PEM `CERTIFICATE` block.
    #[error("the CA bundle ({CA_KEY}) holds no PEM certificate")]
    NoCaCertificate,
    /// A PEM block of the CA bundle cannot be read.
    #[error("the CA bundle ({CA_KEY}) is not valid PEM: {0}")]
    CaPem(String),
    /// A certificate of the CA bundle is not usable as a trust anchor.
    #[error("certificate {index} of the CA bundle ({CA_KEY}) is not a usable CA: {reason}")]
    CaCertificate {
        /// Position in the bundle, from 1.
        index: usize,
        /// rustls' reason.
        reason: String,
    },
    /// The client certificate ([`CLIENT_CERT_KEY`]) holds no PEM certificate or cannot be read.
    #[error("the client certificate ({CLIENT_CERT_KEY}) holds no readable PEM certificate")]
    ClientCertificate,
    /// The client key ([`CLIENT_KEY_KEY`]) holds no readable PEM private key (never quoted).
    #[error("the client key ({CLIENT_KEY_KEY}) holds no readable PEM private key")]
    ClientKey,
    /// Only one of the client certificate and its key was given.
    #[error("a client certificate needs both {CLIENT_CERT_KEY} and {CLIENT_KEY_KEY}")]
    ClientPairIncomplete,
    /// rustls refused the client configuration.
    #[error("TLS client configuration: {0}")]
    Config(String),
}

/// The TLS side of a PostgreSQL connection: the mode and a connector that implements it.
/// Cheap to clone.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    custom_ca: bool,
    client_cert: bool,
    connector: MakeRustlsConnect,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("custom_ca", &self.custom_ca)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

/// The connection type [`PgTls::connect`] returns, to be polled (spawned) by the caller.
pub type PgConnection = Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

impl PgTls {
    /// The connector of `mode`; `ca_pem` (a PEM bundle, the Secret's [`CA_KEY`]) replaces the
    /// built-in roots for the verifying modes and is ignored by the others.
    pub fn new(mode: SslMode, ca_pem: Option<&str>) -> Result<Self, TlsError> {
        Self::with_client(mode, ca_pem, None)
    }

    /// Like [`PgTls::new`], presenting `client` (a certificate and its key) to the server.
    pub fn with_client(
        mode: SslMode,
        ca_pem: Option<&str>,
        client: Option<ClientIdentity<'_>>,
    ) -> Result<Self, TlsError> {
        let identity = client.map(client_identity).transpose()?;
        let client_cert = identity.is_some();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = if mode.verifies_chain() {
            let roots = Arc::new(match ca_pem {
                Some(pem) => roots_from_pem(pem)?,
                None => RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                },
            });
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            if mode == SslMode::VerifyFull {
                builder.with_webpki_verifier(webpki)
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly { webpki }))
            }
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
        };
        let config = match identity {
            // rustls' message names the problem (e.g. a key that does not match), never the key.
            Some((chain, key)) => verifier
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Config(e.to_string()))?,
            None => verifier.with_no_client_auth(),
        };
        Ok(Self {
            mode,
            client_cert,
            custom_ca: ca_pem.is_some() && mode.verifies_chain(),
            connector: MakeRustlsConnect::new(config),
        })
    }

    /// The mode this connector implements.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The connector, for `tokio_postgres::Config::connect` or a connection pool. Pair it with
    /// [`PgTls::apply`] on the configuration, or `prefer` and `require` are not negotiated.
    pub fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }

    /// Sets the negotiation of this mode on `config` (overriding any `sslmode` it had).
    pub fn apply(&self, config: &mut tokio_postgres::Config) {
        config.ssl_mode(self.mode.negotiation());
    }

    /// Connects `config` with this mode (the configuration's own `sslmode` is overridden).
    pub async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(Client, PgConnection), tokio_postgres::Error> {
        let mut config = config.clone();
        self.apply(&mut config);
        config.connect(self.connector()).await
    }
}

/// `url` without its `sslmode` query parameters, and the last one's value. libpq URLs may say
/// `sslmode=verify-full`, which tokio-postgres' parser refuses (it knows disable, prefer and
/// require); the mode is this module's to apply anyway.
pub fn strip_sslmode(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut mode = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("sslmode=") {
            Some(v) => {
                mode = Some(v.to_string());
                false
            }
            None => !kv.is_empty(),
        })
        .collect();
    if kept.is_empty() {
        (base.to_string(), mode)
    } else {
        (format!("{base}?{}", kept.join("&")), mode)
    }
}

/// The certificate chain and key of `c`, parsed. Errors never quote the PEM.
fn client_identity(
    c: ClientIdentity<'_>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::ClientCertificate)?;
    if chain.is_empty() {
        return Err(TlsError::ClientCertificate);
    }
    let key =
        PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).map_err(|_| TlsError::ClientKey)?;
    Ok((chain, key))
}

/// The client identity from a connection Secret's two keys: both or neither.
pub fn client_identity_from<'a>(
    cert_pem: Option<&'a str>,
    key_pem: Option<&'a str>,
) -> Result<Option<ClientIdentity<'a>>, TlsError> {
    match (cert_pem, key_pem) {
        (Some(cert_pem), Some(key_pem)) => Ok(Some(ClientIdentity { cert_pem, key_pem })),
        (None, None) => Ok(None),
        _ => Err(TlsError::ClientPairIncomplete),
    }
}

/// The trust anchors of a PEM bundle (every `CERTIFICATE` block; other blocks are skipped).
pub fn roots_from_pem(pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let cert = cert.map_err(|e| TlsError::CaPem(e.to_string()))?;
        roots.add(cert).map_err(|e| TlsError::CaCertificate {
            index: i + 1,
            reason: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCaCertificate);
    }
    Ok(roots)
}

/// `prefer` / `require`: accepts any certificate chain and name (libpq does not verify in these
/// modes), but still verifies the handshake signatures with the certificate's key.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: webpki's verification with a name mismatch forgiven. webpki checks the chain
/// (trust anchor, validity, usage) before the name, so a name error means the chain passed.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A self-signed CA certificate (openssl req -x509 -newkey ec -pkeyopt
    // ec_paramgen_curve:prime256v1 -subj /CN=test-ca -days 3650), public material only.
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBeTCCAR+gAwIBAgIUYp4r/3ryCyXUT+8Wt1kKO2RJgxUwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHdGVzdC1jYTAeFw0yNjExMjQyMDA0MTBaFw0zNjExMjEyMDA0
MTBaMBIxEDAOBgNVBAMMB3Rlc3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAQPO0A8Oaw95LmUuXVfh2h9843rM/M/TY0nBdWKWZ19nAlbEIv99mydQpgY3HM7
KQIaxrRJo68vmU/yTWia4qz1o1MwUTAdBgNVHQ4EFgQUNfVXyCFa4j9+WnoF54M8
rFbgP7wwHwYDVR0jBBgwFoAUNfVXyCFa4j9+WnoF54M8rFbgP7wwDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAnMD7rZZrP06eGZ+P2e/hjLziVepg
rO8zjuLyTDbW6SYCIBbrCYmVs3L0+q98Ha5FK3m+wmw1BpiE8rkx65OeeRPa
-----END CERTIFICATE-----
";

    #[test]
    fn modes_round_trip_with_libpq_spelling() {
        for m in SslMode::ALL {
            assert_eq!(m.as_str().parse::<SslMode>().unwrap(), m);
        }
        assert_eq!(SslMode::default(), SslMode::Prefer);
        assert!(matches!(
            "verify_full".parse::<SslMode>(),
            Err(TlsError::UnknownMode(_))
        ));
        assert!("allow".parse::<SslMode>().is_err());
    }

    #[test]
    fn negotiation_and_verification_per_mode() {
        use tokio_postgres::config::SslMode as Wire;
        let got: Vec<(Wire, bool)> = SslMode::ALL
            .iter()
            .map(|m| (m.negotiation(), m.verifies_chain()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Wire::Disable, false),
                (Wire::Prefer, false),
                (Wire::Require, false),
                (Wire::Require, true),
                (Wire::Require, true),
            ]
        );
    }

    #[test]
    fn sslmode_is_taken_out_of_urls() {
        assert_eq!(
            strip_sslmode("postgres://u:p@db:5432/app?sslmode=verify-full"),
            (
                "postgres://u:p@db:5432/app".to_string(),
                Some("verify-full".to_string())
            )
        );
        assert_eq!(
            strip_sslmode("postgres://db/app?application_name=x&sslmode=require&connect_timeout=5"),
            (
                "postgres://db/app?application_name=x&connect_timeout=5".to_string(),
                Some("require".to_string())
            )
        );
        assert_eq!(
            strip_sslmode("postgres://db/app"),
            ("postgres://db/app".to_string(), None)
        );
        let (url, _) = strip_sslmode("postgres://db/app?sslmode=verify-ca");
        assert!(url.parse::<tokio_postgres::Config>().is_ok());
    }

    #[test]
    fn ca_bundle_parsing() {
        assert_eq!(roots_from_pem(CA).unwrap().len(), 1);
        let two = format!("# comment\n{CA}{CA}");
        assert_eq!(roots_from_pem(&two).unwrap().len(), 2);
        assert!(matches!(roots_from_pem(""), Err(TlsError::NoCaCertificate)));
        assert!(matches!(
            roots_from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(TlsError::NoCaCertificate)
        ));
        let broken = CA.replace("-----END CERTIFICATE-----", "");
        assert!(roots_from_pem(&broken).is_err());
    }

    #[test]
    fn client_identity_errors_never_quote_the_key() {
        assert!(matches!(
            client_identity_from(Some(CA), None),
            Err(TlsError::ClientPairIncomplete)
        ));
        assert!(matches!(client_identity_from(None, None), Ok(None)));
        let key =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
        let no_cert = ClientIdentity {
            cert_pem: "not pem",
            key_pem: key,
        };
        let e = PgTls::with_client(SslMode::Require, None, Some(no_cert)).unwrap_err();
        assert!(matches!(e, TlsError::ClientCertificate), "{e}");
        let no_key = ClientIdentity {
            cert_pem: CA,
            key_pem: "secret-key-bytes",
        };
        let e = PgTls::with_client(SslMode::Require, None, Some(no_key)).unwrap_err();
        assert!(matches!(e, TlsError::ClientKey), "{e}");
        assert!(!e.to_string().contains("secret-key-bytes"));
        // A key that is not the certificate's is refused by rustls, without the key in the text.
        let e = PgTls::with_client(
            SslMode::Require,
            None,
            Some(ClientIdentity {
                cert_pem: CA,
                key_pem: key,
            }),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        assert!(!format!("{no_key:?}").contains("secret-key-bytes"));
    }

    #[test]
    fn connector_per_mode() {
        for m in SslMode::ALL {
            let tls = PgTls::new(m, None).unwrap();
            assert_eq!(tls.mode(), m);
            let mut cfg = tokio_postgres::Config::new();
            tls.apply(&mut cfg);
            assert_eq!(cfg.get_ssl_mode(), m.negotiation());
        }
        let with_ca = PgTls::new(SslMode::VerifyFull, Some(CA)).unwrap();
        assert!(format!("{with_ca:?}").contains("custom_ca: true"));
        // A bad bundle is refused only where it is used.
        assert!(PgTls::new(SslMode::VerifyCa, Some("nope")).is_err());
        assert!(PgTls::new(SslMode::Require, Some("nope")).is_ok());
    }
}
