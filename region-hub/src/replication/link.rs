//! The seam between the cluster logic and the network: a [`ReplicaLink`] carries one request
//! frame to a peer hub and brings back its answer. [`super::quic::QuicLink`] is the real one
//! (mTLS QUIC, one bidirectional stream per exchange); [`super::local::LocalNet`] is an
//! in-memory one that can partition links, for tests.

use super::wire::ReplicaFrame;
use cluster::HubInfo;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Why a frame did not reach a replica (or its answer did not come back).
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("no link address published by {0}")]
    NoAddress(String),
    #[error("resolve {0}: {1}")]
    Resolve(String, String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error("replica refused: {0}")]
    Refused(String),
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
}

/// The answer to one exchange, when it comes.
pub type Exchange<'a> =
    Pin<Box<dyn Future<Output = Result<ReplicaFrame, ReplicaError>> + Send + 'a>>;

/// One request and its answer with a peer hub, bounded by the link's own timeout.
pub trait ReplicaLink: Send + Sync + std::fmt::Debug {
    /// Sends `frame` to `to` and returns its answer.
    fn exchange<'a>(&'a self, to: &'a HubInfo, frame: ReplicaFrame) -> Exchange<'a>;

    /// Closes the link's connections (the hub is shutting down).
    fn close(&self) {}
}
