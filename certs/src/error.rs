//! The one error type of this crate, with the file, name or step that failed.

use std::path::PathBuf;

/// Everything that can go wrong while creating, loading or using certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading, writing or creating a file or directory failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "create directory").
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A PEM file could not be parsed.
    #[error("cannot parse PEM in {path}: {reason}")]
    Pem {
        /// The file (or a description of the in-memory source).
        path: PathBuf,
        /// What the PEM parser reported.
        reason: String,
    },

    /// A PEM file held no certificate.
    #[error("no certificate found in {path}")]
    NoCertificates {
        /// The file that was searched.
        path: PathBuf,
    },

    /// A PEM file held no private key.
    #[error("no private key found in {path}")]
    NoPrivateKey {
        /// The file that was searched.
        path: PathBuf,
    },

    /// Only one half of the CA (certificate or key) exists; refusing to overwrite it.
    #[error("incomplete CA in {dir}: {present} exists but {missing} does not; restore it or remove both")]
    IncompleteCa {
        /// The PKI directory.
        dir: PathBuf,
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },

    /// Generating or signing a certificate or key failed.
    #[error("cannot {what}: {source}")]
    Generate {
        /// What was being generated ("generate the cluster CA", "issue node edge-1").
        what: String,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },

    /// A subject alternative name is neither a valid DNS name nor an IP address.
    #[error("invalid subject alternative name {san:?}: {reason}")]
    InvalidSan {
        /// The name as given.
        san: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A certificate could not be parsed as X.509.
    #[error("cannot parse X.509 certificate {what}: {reason}")]
    X509 {
        /// Which certificate (file and index).
        what: String,
        /// What the parser reported.
        reason: String,
    },

    /// rustls rejected the configuration (bad key, unsupported protocol, bad root).
    #[error("cannot build TLS config ({context}): {source}")]
    Tls {
        /// Which step failed.
        context: &'static str,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },

    /// The client certificate verifier could not be built (for example, no usable CA roots).
    #[error("cannot build client certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),

    /// The rustls config cannot be used for QUIC (it must allow TLS 1.3 and an initial suite).
    #[error("TLS config cannot be used for QUIC (build it with TlsFor::Quic): {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

impl CertError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn generate(what: impl Into<String>, source: rcgen::Error) -> Self {
        Self::Generate {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn tls(context: &'static str, source: rustls::Error) -> Self {
        Self::Tls { context, source }
    }
}
