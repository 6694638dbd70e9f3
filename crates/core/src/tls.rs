//! TLS material as store nodes load it: the file names of a `kubernetes.io/tls` Secret mounted
//! as a directory, and the pure checks both sides run on a certificate chain and key (the node
//! when it loads or reloads them, the operator before it mounts a store's Secret). No I/O: the
//! caller reads the bytes. Error texts name the file and never quote key bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use thiserror::Error;

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

/// A certificate chain and key that rustls accepts, with facts about the leaf.
pub struct LoadedPair {
    /// The signing key with its chain, ready for a resolver.
    pub key: Arc<CertifiedKey>,
    /// Serial number of the leaf, lower-case hex.
    pub serial: Option<String>,
    /// End of validity of the leaf.
    pub not_after: Option<DateTime<Utc>>,
}

/// Checks a certificate chain and key exactly as a node loads them from `tls.crt` and
/// `tls.key` (the operator checks a store's TLS Secret with this before mounting it, so a bad
/// Secret is reported in status instead of a node that cannot start). Returns the leaf's end of
/// validity. Error texts name the file (`tls.crt`, `tls.key`) and never quote key bytes.
pub fn check_pair(cert: &[u8], key: &[u8]) -> Result<Option<DateTime<Utc>>, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    parse_pair(Path::new(""), cert, key, &provider).map(|l| l.not_after)
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

/// Parses `cert` (the content of `dir/tls.crt`) and `key` (of `dir/tls.key`) into a pair rustls
/// accepts; an error names the file at fault.
pub fn parse_pair(
    dir: &Path,
    cert: &[u8],
    key: &[u8],
    provider: &CryptoProvider,
) -> Result<LoadedPair, TlsError> {
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
    Ok(LoadedPair {
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
}
