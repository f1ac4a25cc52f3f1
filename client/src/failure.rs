//! Why a connection attempt failed or a connection ended, as the sessions' cores see it.

use std::time::Duration;

/// One failure, classified the way the reconnect logic needs it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No answer in time (a handshake, or a connection that went silent).
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The server refused for good (bad or expired token, unknown delivery): no retry.
    #[error("refused ({code}): {message}")]
    Refused { code: u64, message: String },
    /// The server asked to come back later (`503`/`429` while it joins a cluster, an edge
    /// that drains), possibly with `Retry-After`.
    #[error("asked to retry later: {message}")]
    RetryLater {
        retry_after: Option<Duration>,
        message: String,
    },
    /// The server closed the connection or the stream.
    #[error("closed by the server: {0}")]
    Closed(String),
    /// A network or TLS error.
    #[error("network: {0}")]
    Network(String),
    /// The server sent bytes that do not decode.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl Failure {
    /// Short stable label for counters (`failures{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::Refused { .. } => "refused",
            Failure::RetryLater { .. } => "retry_later",
            Failure::Closed(_) => "closed",
            Failure::Network(_) => "network",
            Failure::Protocol(_) => "protocol",
        }
    }

    /// True when retrying cannot help.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Failure::Refused { .. })
    }
}
