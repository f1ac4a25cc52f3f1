//! rustls and quinn config builders, all on the ring crypto provider.
//!
//! Use [`TlsFor::Quic`] for anything handed to quinn (QUIC requires TLS 1.3 only) and
//! [`TlsFor::Tcp`] for HTTPS / WebSocket over TCP (TLS 1.3 and 1.2).

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use crate::CertError;

/// Which transport a TLS config is for; decides the allowed protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFor {
    /// QUIC (quinn, WebTransport, HTTP/3): TLS 1.3 only.
    Quic,
    /// TCP (HTTPS, WebSocket): rustls' safe defaults, TLS 1.3 and 1.2.
    Tcp,
}

/// TLS 1.3 only, as QUIC requires (RFC 9001).
static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

impl TlsFor {
    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        match self {
            TlsFor::Quic => TLS13_ONLY,
            TlsFor::Tcp => rustls::DEFAULT_VERSIONS,
        }
    }
}

/// The ring crypto provider used by every config of this crate.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default rustls provider; call once at start-up of a
/// binary. Calling it again (or after someone else installed one) does nothing.
pub fn install_default_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds a root store from CA certificates; fails if one of them is not a usable root.
pub fn root_store(roots: Vec<CertificateDer<'static>>) -> Result<RootCertStore, CertError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root)
            .map_err(|e| CertError::tls("add CA certificate to root store", e))?;
    }
    Ok(store)
}

fn alpn_vec(alpn: &[&[u8]]) -> Vec<Vec<u8>> {
    alpn.iter().map(|p| p.to_vec()).collect()
}

/// A server config without client authentication (HTTPS, public QUIC endpoints).
///
/// `alpn` is in preference order, e.g. `&[b"h2", b"http/1.1"]`.
pub fn server_tls_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
    tls_for: TlsFor,
) -> Result<ServerConfig, CertError> {
    let mut config = ServerConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(tls_for.versions())
        .map_err(|e| CertError::tls("select protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| CertError::tls("use server certificate and key", e))?;
    config.alpn_protocols = alpn_vec(alpn);
    Ok(config)
}

/// A server config that requires a client certificate issued by one of `client_ca_roots`.
pub fn mtls_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca_roots: Vec<CertificateDer<'static>>,
    alpn: &[&[u8]],
    tls_for: TlsFor,
) -> Result<ServerConfig, CertError> {
    let provider = ring_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(client_ca_roots)?),
        provider.clone(),
    )
    .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(tls_for.versions())
        .map_err(|e| CertError::tls("select protocol versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| CertError::tls("use server certificate and key", e))?;
    config.alpn_protocols = alpn_vec(alpn);
    Ok(config)
}

/// A client config that presents `chain`/`key` and verifies the server against
/// `server_ca_roots` (node-to-node mTLS).
pub fn mtls_client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    server_ca_roots: Vec<CertificateDer<'static>>,
    alpn: &[&[u8]],
    tls_for: TlsFor,
) -> Result<ClientConfig, CertError> {
    let mut config = ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(tls_for.versions())
        .map_err(|e| CertError::tls("select protocol versions", e))?
        .with_root_certificates(root_store(server_ca_roots)?)
        .with_client_auth_cert(chain, key)
        .map_err(|e| CertError::tls("use client certificate and key", e))?;
    config.alpn_protocols = alpn_vec(alpn);
    Ok(config)
}

/// A client config that verifies the server against `roots` and presents no certificate.
pub fn client_config_with_roots(
    roots: Vec<CertificateDer<'static>>,
    alpn: &[&[u8]],
    tls_for: TlsFor,
) -> Result<ClientConfig, CertError> {
    let mut config = ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(tls_for.versions())
        .map_err(|e| CertError::tls("select protocol versions", e))?
        .with_root_certificates(root_store(roots)?)
        .with_no_client_auth();
    config.alpn_protocols = alpn_vec(alpn);
    Ok(config)
}

/// Wraps a rustls server config (built with [`TlsFor::Quic`]) for a quinn endpoint.
pub fn quinn_server_config(config: ServerConfig) -> Result<quinn::ServerConfig, CertError> {
    let crypto = QuicServerConfig::try_from(config)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// Wraps a rustls client config (built with [`TlsFor::Quic`]) for a quinn endpoint.
pub fn quinn_client_config(config: ClientConfig) -> Result<quinn::ClientConfig, CertError> {
    let crypto = QuicClientConfig::try_from(config)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}
