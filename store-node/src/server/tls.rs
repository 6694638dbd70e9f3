//! HTTPS for the API listener: the certificate and key come from a directory holding `tls.crt`
//! and `tls.key` (the keys of a `kubernetes.io/tls` Secret mounted as a volume), and are reloaded
//! while the node runs. A pair that fails to load at start stops the node with an error naming
//! the file; a new pair that fails to load later is logged and reported (metric, `/v1/info`) and
//! the pair in use is kept, so a bad rotation never takes a serving node down.
//!
//! Reloading polls the files' content (the kubelet replaces a Secret volume's files by swapping
//! the `..data` symlink, which no inotify watch on the files themselves would see) and installs a
//! new pair for the handshakes that follow; established connections keep the certificate they
//! negotiated. Sessions are not resumed, so every new connection gets the pair in use. Key
//! material is never logged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// File name of the certificate chain (PEM, leaf first) in the TLS directory.
pub const CERT_FILE: &str = "tls.crt";
/// File name of the private key (PEM: PKCS#8, PKCS#1 or SEC1) in the TLS directory.
pub const KEY_FILE: &str = "tls.key";
/// File name of the CA certificate clients verify the node with (not read by the node).
pub const CA_FILE: &str = "ca.crt";

/// Why a certificate/key pair could not be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file holds no usable PEM object of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The key does not match the certificate, or rustls refuses it.
    #[error("{cert} and {key} do not form a usable pair: {source}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Cause.
        source: rustls::Error,
    },
    /// The server configuration could not be built.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// What is known about the certificate in use, for `/v1/info` and the metrics.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// Serial number of the leaf certificate in use, lower-case hex.
    pub serial: Option<String>,
    /// End of validity of the leaf certificate in use.
    pub not_after: Option<DateTime<Utc>>,
    /// When the pair in use was loaded.
    pub loaded_at: Option<DateTime<Utc>>,
    /// Successful reloads since start (the first load not counted).
    pub reloads: u64,
    /// The error of the last reload attempt that failed, cleared by the next successful one.
    pub last_reload_error: Option<String>,
    /// When that failure happened.
    pub last_reload_error_at: Option<DateTime<Utc>>,
}

/// A loaded pair.
struct Loaded {
    key: Arc<CertifiedKey>,
    serial: Option<String>,
    not_after: Option<DateTime<Utc>>,
}

/// The certificate of the API listener, replaced in place when the files change. Implements
/// rustls' [`ResolvesServerCert`], so every new handshake uses the pair loaded last.
pub struct ReloadingCert {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    status: RwLock<TlsStatus>,
    /// Digest of the file contents last tried (loaded or refused), so a bad pair is reported
    /// once per change and not on every poll.
    last_seen: RwLock<[u8; 32]>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("dir", &self.dir)
            .field("status", &*self.status.read())
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads `dir/tls.crt` and `dir/tls.key`; an error names the file at fault.
    pub fn load(dir: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (bytes, digest) = read_pair(dir)?;
        let loaded = parse_pair(dir, &bytes, &provider)?;
        let status = TlsStatus {
            serial: loaded.serial.clone(),
            not_after: loaded.not_after,
            loaded_at: Some(Utc::now()),
            ..TlsStatus::default()
        };
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            provider,
            current: RwLock::new(loaded.key),
            status: RwLock::new(status),
            last_seen: RwLock::new(digest),
        }))
    }

    /// The directory the pair is read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state of the certificate in use and of the last reload.
    pub fn status(&self) -> TlsStatus {
        self.status.read().clone()
    }

    /// Reads the files again and installs the pair when their content changed and it is valid.
    /// Returns Ok(true) when a new pair was installed, Ok(false) when nothing changed, and the
    /// error (also kept in [`TlsStatus::last_reload_error`]) when the new content is refused.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let result = read_pair(&self.dir).and_then(|(bytes, digest)| {
            if *self.last_seen.read() == digest {
                return Ok(None);
            }
            *self.last_seen.write() = digest;
            parse_pair(&self.dir, &bytes, &self.provider).map(Some)
        });
        let mut status = self.status.write();
        match result {
            Ok(None) => Ok(false),
            Ok(Some(loaded)) => {
                *self.current.write() = loaded.key;
                status.serial = loaded.serial;
                status.not_after = loaded.not_after;
                status.loaded_at = Some(Utc::now());
                status.reloads += 1;
                status.last_reload_error = None;
                status.last_reload_error_at = None;
                Ok(true)
            }
            Err(e) => {
                status.last_reload_error = Some(e.to_string());
                status.last_reload_error_at = Some(Utc::now());
                Err(e)
            }
        }
    }

    /// The rustls server configuration of the API listener (HTTP/2 and HTTP/1.1 by ALPN).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // No session resumption: a resumed session skips the certificate, so after a reload a
        // client could go on resuming into the old certificate's session until it expired. Every
        // new connection makes a full handshake with the pair in use (keep-alive amortizes it).
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Ok(Arc::new(cfg))
    }

    /// Polls the files every `interval` until `shutdown`, logging each reload and each refusal
    /// (a read failure of a file that is being replaced is retried at the next poll).
    pub async fn poll(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let me = self.clone();
            let outcome = tokio::task::spawn_blocking(move || me.reload()).await;
            match outcome {
                Ok(Ok(true)) => {
                    let s = self.status();
                    tracing::info!(
                        dir = %self.dir.display(),
                        serial = s.serial.as_deref().unwrap_or("?"),
                        not_after = ?s.not_after,
                        "TLS certificate reloaded; new connections use it"
                    );
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!(
                    error = %e,
                    "TLS certificate reload refused; keeping the certificate in use"
                ),
                Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The bytes of `tls.crt` and `tls.key`.
type PairBytes = (Vec<u8>, Vec<u8>);

/// Checks a certificate chain and key exactly as a node loads them from `tls.crt` and
/// `tls.key` (the operator checks a store's TLS Secret with this before mounting it, so a bad
/// Secret is reported in status instead of a node that cannot start). Returns the leaf's end of
/// validity. Error texts name the file (`tls.crt`, `tls.key`) and never quote key bytes.
pub fn check_pair(cert: &[u8], key: &[u8]) -> Result<Option<DateTime<Utc>>, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    parse_pair(Path::new(""), &(cert.to_vec(), key.to_vec()), &provider).map(|l| l.not_after)
}

/// Checks that `pem` holds at least one certificate (a `ca.crt`).
pub fn check_ca(pem: &[u8]) -> Result<(), String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("holds no CERTIFICATE block".into());
    }
    Ok(())
}

/// Both files' bytes and a digest of them.
fn read_pair(dir: &Path) -> Result<(PairBytes, [u8; 32]), TlsError> {
    let cert = read_file(&dir.join(CERT_FILE))?;
    let key = read_file(&dir.join(KEY_FILE))?;
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_le_bytes());
    h.update(&cert);
    h.update(&key);
    Ok(((cert, key), h.finalize().into()))
}

fn parse_pair(
    dir: &Path,
    (cert, key): &PairBytes,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_path.clone(),
            what: format!("not a PEM certificate chain: {e}"),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Pem {
            path: cert_path,
            what: "holds no CERTIFICATE block".into(),
        });
    };
    let (serial, not_after) = match leaf_facts(leaf.as_ref()) {
        Some(facts) => facts,
        None => {
            return Err(TlsError::Pem {
                path: cert_path,
                what: "the first CERTIFICATE block is not an X.509 certificate".into(),
            })
        }
    };
    // Never put the key's parse error text in the message: it could quote key bytes.
    let key_der = PrivateKeyDer::from_pem_slice(key).map_err(|_| TlsError::Pem {
        path: key_path.clone(),
        what: "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".into(),
    })?;
    let certified =
        CertifiedKey::from_der(chain, key_der, provider).map_err(|source| TlsError::Pair {
            cert: cert_path,
            key: key_path,
            source,
        })?;
    Ok(Loaded {
        key: Arc::new(certified),
        serial: Some(serial),
        not_after,
    })
}

/// One DER element: (tag, content, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Serial number (hex) and notAfter of a DER X.509 certificate; None when it is not one.
pub fn leaf_facts(cert: &[u8]) -> Option<(String, Option<DateTime<Utc>>)> {
    let (0x30, certificate, _) = der(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = der(certificate)? else {
        return None;
    };
    let (mut tag, mut value, mut rest) = der(tbs)?;
    if tag == 0xa0 {
        // [0] EXPLICIT version
        (tag, value, rest) = der(rest)?;
    }
    if tag != 0x02 {
        return None;
    }
    let serial = hex::encode(value.strip_prefix(&[0u8]).unwrap_or(value));
    let (0x30, _signature, rest) = der(rest)? else {
        return None;
    };
    let (0x30, _issuer, rest) = der(rest)? else {
        return None;
    };
    let (0x30, validity, _) = der(rest)? else {
        return None;
    };
    let (_, _not_before, validity) = der(validity)?;
    let (tag, not_after, _) = der(validity)?;
    Some((serial, asn1_time(tag, not_after)))
}

/// UTCTime (0x17, YYMMDDHHMMSSZ) or GeneralizedTime (0x18, YYYYMMDDHHMMSSZ).
fn asn1_time(tag: u8, v: &[u8]) -> Option<DateTime<Utc>> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i32 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 if s.len() == 14 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let n = |i: usize| -> Option<u32> { rest.get(i..i + 2)?.parse().ok() };
    Utc.with_ymd_and_hms(year, n(0)?, n(2)?, n(4)?, n(6)?, n(8)?)
        .single()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asn1_times() {
        let t = asn1_time(0x17, b"270102030405Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2027-01-02T03:04:05+00:00");
        let t = asn1_time(0x18, b"20501231235959Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2050-12-31T23:59:59+00:00");
        assert!(asn1_time(0x17, b"2701020304Z").is_none());
        assert!(asn1_time(0x02, b"270102030405Z").is_none());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(leaf_facts(b"").is_none());
        assert!(leaf_facts(&[0x30, 0x82, 0xff]).is_none());
        assert!(leaf_facts(&[0x30, 0x03, 0x02, 0x01, 0x05]).is_none());
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = ReloadingCert::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tls.crt"), "{e}");
        std::fs::write(dir.path().join(CERT_FILE), "not pem").unwrap();
        let e = ReloadingCert::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tls.key"), "{e}");
        std::fs::write(dir.path().join(KEY_FILE), "not pem").unwrap();
        let e = ReloadingCert::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tls.crt") && e.contains("no CERTIFICATE"), "{e}");
    }
}
