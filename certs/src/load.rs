//! Loading certificate chains and private keys from PEM files or strings.
//!
//! Works for the dev PKI's files and for production certificates from a secret store alike.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::CertError;

/// Reads every certificate in the PEM file at `path` (leaf first, as written).
///
/// Fails if the file cannot be read, is not valid PEM, or holds no certificate.
pub fn load_certs_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = std::fs::read(path).map_err(|e| CertError::io("read", path, e))?;
    parse_certs(&bytes, path.to_path_buf())
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
///
/// Fails with [`CertError::NoPrivateKey`] naming the file if it holds none.
pub fn load_key_pem(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let bytes = std::fs::read(path).map_err(|e| CertError::io("read", path, e))?;
    parse_key(&bytes, path.to_path_buf())
}

/// Parses every certificate in a PEM string; `source` names it in errors.
pub fn parse_certs_pem(
    pem_text: &str,
    source: &str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    parse_certs(pem_text.as_bytes(), PathBuf::from(source))
}

/// Parses the first private key in a PEM string; `source` names it in errors.
pub fn parse_key_pem(pem_text: &str, source: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    parse_key(pem_text.as_bytes(), PathBuf::from(source))
}

fn parse_certs(bytes: &[u8], path: PathBuf) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e, &path))?;
    if certs.is_empty() {
        return Err(CertError::NoCertificates { path });
    }
    Ok(certs)
}

fn parse_key(bytes: &[u8], path: PathBuf) -> Result<PrivateKeyDer<'static>, CertError> {
    match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(CertError::NoPrivateKey { path }),
        Err(e) => Err(pem_error(e, &path)),
    }
}

fn pem_error(e: pem::Error, path: &Path) -> CertError {
    CertError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Certificate chain, key and optional CA roots loaded from the files a node's config names
/// (`tls.cert`, `tls.key`, `tls.ca`), whether from the dev PKI or a production secret store.
#[derive(Debug)]
pub struct TlsMaterial {
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key of the leaf.
    pub key: PrivateKeyDer<'static>,
    /// Trust roots for peers (empty if no CA file was given).
    pub ca_roots: Vec<CertificateDer<'static>>,
}

impl TlsMaterial {
    /// Loads `cert`, `key` and, if given, `ca`; errors name the file that failed.
    pub fn load(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<Self, CertError> {
        Ok(Self {
            chain: load_certs_pem(cert)?,
            key: load_key_pem(key)?,
            ca_roots: match ca {
                Some(ca) => load_certs_pem(ca)?,
                None => Vec::new(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_key_error_names_the_file() {
        let dir = crate::test_dir("load-missing-key");
        let path = dir.join("only-cert.key");
        let pki = crate::DevPki::load_or_create(&dir).expect("create pki");
        std::fs::write(&path, pki.ca_cert_pem()).expect("write");
        let err = load_key_pem(&path).expect_err("a certificate is not a key");
        let text = err.to_string();
        assert!(
            text.contains("no private key found in") && text.contains("only-cert.key"),
            "{text}"
        );
    }

    #[test]
    fn file_without_certificates_is_rejected() {
        let dir = crate::test_dir("load-no-certs");
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not pem at all\n").expect("write");
        let err = load_certs_pem(&path).expect_err("no certificates");
        assert!(matches!(err, CertError::NoCertificates { .. }), "{err}");
    }

    #[test]
    fn unreadable_file_error_names_the_path() {
        let path = Path::new("/nonexistent/trackline/x.pem");
        let err = load_certs_pem(path).expect_err("missing file");
        assert!(
            err.to_string().contains("/nonexistent/trackline/x.pem"),
            "{err}"
        );
    }
}
