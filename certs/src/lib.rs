//! Certificates for Trackline: a dev cluster CA, node certificates for mTLS and HTTPS,
//! short-lived browser WebTransport certificates, PEM loading and rustls/quinn configs.
//!
//! Everything uses rustls' ring provider explicitly; binaries should still call
//! [`install_default_crypto_provider`] at start-up for libraries that use the default.

pub mod browser;
pub mod cli;
mod error;
pub mod inspect;
pub mod load;
pub mod pki;
pub mod tls;

pub use browser::{
    browser_webtransport_identity, certificate_sha256, sha256_base64, sha256_js_array,
    write_identity, BROWSER_CERT_VALIDITY_DAYS,
};
pub use error::CertError;
pub use inspect::CertSummary;
pub use load::{load_certs_pem, load_key_pem, parse_certs_pem, parse_key_pem, TlsMaterial};
pub use pki::{DevPki, NodeCert, NodeRole};
pub use tls::{
    client_config_with_roots, install_default_crypto_provider, mtls_client_config,
    mtls_server_config, quinn_client_config, quinn_server_config, ring_provider, root_store,
    server_tls_config, TlsFor,
};

/// A fresh, empty directory under the system temp dir for one test, removed on drop.
#[cfg(test)]
pub(crate) struct TestDir(std::path::PathBuf);

#[cfg(test)]
impl std::ops::Deref for TestDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> TestDir {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "trackline-certs-{}-{}-{name}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    TestDir(dir)
}
