//! Errors: one enum for building a sender, one for sending.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigError;
use crate::registry::Platform;

/// Why a sender could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The config does not validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key or credentials file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A private key could not be parsed or used.
    #[error("unusable private key in {path}: {reason}")]
    Key {
        /// The file it came from.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The service account JSON lacks a field or does not parse.
    #[error("bad service account file {path}: {reason}")]
    ServiceAccount {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The TLS client config could not be built (bad trust roots file).
    #[error("cannot build TLS client config: {0}")]
    Tls(#[from] certs::CertError),
    /// rustls refused the client config.
    #[error("cannot build TLS client config: {0}")]
    Rustls(rustls::Error),
}

/// Why a notification could not be sent to a device.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The device belongs to another push service than this sender.
    #[error("the {sender} sender cannot send to a {device} device")]
    WrongPlatform {
        /// The sender's platform.
        sender: Platform,
        /// The device's platform.
        device: Platform,
    },
    /// The device token does not validate (it bypassed [`crate::DeviceToken::new`]).
    #[error("invalid device token: {0}")]
    InvalidDevice(#[from] crate::registry::RegistryError),
    /// The request could not be built (a config value is not a valid header value).
    #[error("cannot build the {platform} request: {reason}")]
    InvalidRequest {
        /// Which service.
        platform: Platform,
        /// What http refused.
        reason: String,
    },
    /// No sender is configured for the device's platform.
    #[error("no {0} sender is configured")]
    NotConfigured(Platform),
    /// The TCP connection could not be opened.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// `host:port`.
        endpoint: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (untrusted certificate, protocol mismatch).
    #[error("TLS handshake with {endpoint} failed: {source}")]
    Tls {
        /// `host:port`.
        endpoint: String,
        /// The I/O error carrying the rustls error.
        #[source]
        source: std::io::Error,
    },
    /// The server did not agree to HTTP/2 in ALPN.
    #[error("{endpoint} did not negotiate HTTP/2 (ALPN answered {alpn})")]
    NotHttp2 {
        /// `host:port`.
        endpoint: String,
        /// What the server chose, or "nothing".
        alpn: String,
    },
    /// The HTTP/2 exchange failed (connection reset, GOAWAY, protocol error).
    #[error("HTTP/2 exchange with {endpoint} failed: {source}")]
    Http {
        /// `host:port`.
        endpoint: String,
        /// The hyper error.
        #[source]
        source: hyper::Error,
    },
    /// No complete answer within the request timeout.
    #[error("no answer from {endpoint} within {timeout:?}")]
    Timeout {
        /// `host:port`.
        endpoint: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The push service answered with a status this crate does not retry.
    #[error("{platform} answered {status}: {reason}")]
    Rejected {
        /// Which service.
        platform: Platform,
        /// The HTTP status.
        status: u16,
        /// The service's reason (`BadTopic`, `INVALID_ARGUMENT: ...`).
        reason: String,
    },
    /// The provider credentials were refused, even after renewing them once.
    #[error("{platform} refused the credentials ({status}: {reason}); check the key id, team id, key file or service account")]
    Auth {
        /// Which service (the OAuth2 token endpoint counts as FCM).
        platform: Platform,
        /// The HTTP status.
        status: u16,
        /// The service's reason.
        reason: String,
    },
    /// The server asked to wait longer than `retry.max_delay_ms`.
    #[error(
        "{platform} asked to retry after {retry_after:?}, longer than the configured max delay"
    )]
    Throttled {
        /// Which service.
        platform: Platform,
        /// The requested pause.
        retry_after: Duration,
    },
    /// Every attempt failed retryably.
    #[error("gave up after {attempts} attempts, last error: {last}")]
    RetriesExhausted {
        /// How many tries were made.
        attempts: u32,
        /// The error of the last try.
        #[source]
        last: Box<PushError>,
    },
    /// ring refused to sign (should not happen with a key that loaded).
    #[error("cannot sign the {what}")]
    Sign {
        /// Which token.
        what: &'static str,
    },
    /// The server's answer could not be understood.
    #[error("unexpected answer from {endpoint}: {reason}")]
    BadResponse {
        /// `host:port`.
        endpoint: String,
        /// What was wrong with it.
        reason: String,
    },
}
