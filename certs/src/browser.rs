//! Short-lived self-signed certificates for browsers' WebTransport `serverCertificateHashes`.
//!
//! Chromium accepts a certificate by hash only if it is ECDSA P-256 (no RSA) and valid for at
//! most 14 days, so these are re-made on every start (or at least every 10 days).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use wtransport::Identity;

use crate::pki::{create_dir, write_private, write_public};
use crate::CertError;

/// Validity of the browser WebTransport certificate, below Chromium's 14-day limit.
pub const BROWSER_CERT_VALIDITY_DAYS: u32 = 10;

/// Makes a self-signed ECDSA P-256 identity valid from now for
/// [`BROWSER_CERT_VALIDITY_DAYS`] days, for use with `serverCertificateHashes`.
pub fn browser_webtransport_identity(sans: &[String]) -> Result<Identity, CertError> {
    Identity::self_signed_builder()
        .subject_alt_names(sans)
        .from_now_utc()
        .validity_days(BROWSER_CERT_VALIDITY_DAYS)
        .build()
        .map_err(|e| CertError::InvalidSan {
            san: sans.join(","),
            reason: e.to_string(),
        })
}

/// SHA-256 of the identity's leaf certificate (DER), the value browsers pin.
pub fn certificate_sha256(identity: &Identity) -> [u8; 32] {
    // An Identity always holds at least one certificate; fall back to zeros defensively.
    identity
        .certificate_chain()
        .as_slice()
        .first()
        .map(|cert| *cert.hash().as_ref())
        .unwrap_or([0; 32])
}

/// Standard base64 of a certificate hash (for `Uint8Array.from(atob(..), c => c.charCodeAt(0))`).
pub fn sha256_base64(hash: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(hash)
}

/// A JavaScript array literal of the hash bytes, e.g. `[12, 255, ...]`, for
/// `new Uint8Array([...])` in `serverCertificateHashes`.
pub fn sha256_js_array(hash: &[u8; 32]) -> String {
    let parts: Vec<String> = hash.iter().map(u8::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Writes the identity as `dir/stem.pem` and `dir/stem.key` (0600) and returns the paths.
pub fn write_identity(
    identity: &Identity,
    dir: &Path,
    stem: &str,
) -> Result<(PathBuf, PathBuf), CertError> {
    create_dir(dir)?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    let chain_pem: String = identity
        .certificate_chain()
        .as_slice()
        .iter()
        .map(|c| c.to_pem())
        .collect();
    write_private(&key_path, &identity.private_key().to_secret_pem())?;
    write_public(&cert_path, &chain_pem)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::CertSummary;
    use rustls::pki_types::CertificateDer;
    use std::time::Duration;

    fn sans() -> Vec<String> {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    }

    #[test]
    fn browser_cert_is_valid_at_most_14_days() {
        let identity = browser_webtransport_identity(&sans()).expect("identity");
        let der = CertificateDer::from(identity.certificate_chain().as_slice()[0].der().to_vec());
        let summary = CertSummary::from_der(&der, "browser cert").expect("parse");
        assert!(summary.validity() <= Duration::from_secs(14 * 24 * 3600));
        assert!(summary.validity() >= Duration::from_secs(9 * 24 * 3600));
        assert!(
            summary.sans.contains(&"127.0.0.1".to_owned()),
            "{summary:?}"
        );
        assert!(
            summary.sans.contains(&"localhost".to_owned()),
            "{summary:?}"
        );
    }

    #[test]
    fn browser_cert_hash_is_stable_and_matches_der() {
        let identity = browser_webtransport_identity(&sans()).expect("identity");
        let first = certificate_sha256(&identity);
        assert_eq!(first, certificate_sha256(&identity));
        assert_eq!(first, certificate_sha256(&identity.clone_identity()));
        assert_ne!(first, [0; 32]);
        let other = browser_webtransport_identity(&sans()).expect("identity");
        assert_ne!(first, certificate_sha256(&other), "fresh key, fresh hash");
        assert_eq!(sha256_base64(&first).len(), 44);
        let js = sha256_js_array(&first);
        assert_eq!(js.matches(',').count(), 31, "{js}");
    }

    #[test]
    fn written_browser_cert_reloads_with_same_hash() {
        let dir = crate::test_dir("browser-write");
        let identity = browser_webtransport_identity(&sans()).expect("identity");
        let (cert_path, _key_path) =
            write_identity(&identity, &dir, "webtransport").expect("write");
        let chain = crate::load_certs_pem(&cert_path).expect("reload");
        let digest = wtransport::tls::Certificate::from_der(chain[0].to_vec()).expect("der");
        assert_eq!(*digest.hash().as_ref(), certificate_sha256(&identity));
    }
}
