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

use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use allsource_core::tls::{
    check_ca, check_pair, leaf_facts, parse_pair, TlsError, CA_FILE, CERT_FILE, KEY_FILE,
};

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
        let loaded = parse_pair(dir, &bytes.0, &bytes.1, &provider)?;
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
            parse_pair(&self.dir, &bytes.0, &bytes.1, &self.provider).map(Some)
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

#[cfg(test)]
mod tests {
    use super::*;

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
