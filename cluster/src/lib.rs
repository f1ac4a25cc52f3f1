//! Trackline's cluster layer: who is alive (foca, SWIM), what the hubs publish (chitchat
//! key-value control plane), and which hub owns each delivery (rendezvous hashing), all over
//! one mutually authenticated QUIC gossip channel per node. See `docs/cluster.md`.

pub mod control;
pub mod driver;
pub mod membership;
pub mod node;
pub mod placement;
pub mod transport;
pub mod view;

pub use control::{keys, spawn_control, ControlConfig, ControlHandle, HubInfo};
pub use driver::{spawn_membership, MembershipHandle, MembershipMetrics};
pub use membership::{
    foca_config, MemberEvent, Membership, NodeIdentity, Outputs, Profile, Role, SelfEvent,
};
pub use node::{spawn_node, ClusterConfig, ClusterNode};
pub use transport::{
    spawn_gossip, Channel, GossipConfig, GossipHandle, GossipMetrics, GossipTls, PeerCert,
    GOSSIP_ALPN,
};
pub use view::ClusterView;

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A setting is invalid; the message says which and why.
    #[error("invalid cluster config: {0}")]
    Config(String),
    /// TLS configuration could not be built from the node's certificates.
    #[error("cluster tls: {0}")]
    Tls(#[from] certs::CertError),
    /// The gossip UDP socket could not be bound.
    #[error("bind gossip endpoint on {addr}: {source}")]
    Bind {
        /// Address we tried.
        addr: std::net::SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// foca refused an input.
    #[error("membership: {what}: {reason}")]
    Membership {
        /// What we asked foca to do.
        what: &'static str,
        /// foca's error.
        reason: String,
    },
    /// chitchat failed to start.
    #[error("control plane: {0}")]
    Control(String),
    /// A packet's sender is not the node its connection's certificate names.
    #[error("gossip packet claims to be from {claimed} but its connection's certificate is for {certificate}")]
    Impersonation {
        /// Sender id and role written in the packet.
        claimed: String,
        /// Common name and unit of the peer certificate.
        certificate: String,
    },
    /// A gossip inbox was already taken by another consumer.
    #[error("the gossip endpoint's {0} inbox is already taken")]
    InboxTaken(&'static str),
}
