//! The cluster: replication of the event log to successor hubs, fencing, rebalancing,
//! takeover and hand-off (`docs/cluster.md`).
//!
//! The decisions are plain structs and functions fed the view and `now`, with no I/O:
//! [`plan`] (who must hold a copy before an ack), [`fencing`], [`rebalance`], [`takeover`],
//! [`placement`]. The network is behind [`link::ReplicaLink`] ([`quic`] for real, [`local`]
//! in memory) and the membership behind [`view::View`] (gossip, or [`view::StaticView`]).
//! [`node`] and [`driver`] are the async code that drives them; [`crumbs`] copies breadcrumbs.

pub mod crumbs;
pub mod driver;
pub mod fencing;
pub mod host;
pub mod link;
pub mod local;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod plan;
pub mod quic;
pub mod rebalance;
pub mod takeover;
pub mod view;
pub mod wire;

pub use host::Host;
pub use link::ReplicaError;
pub use metrics::ClusterMetrics;
pub use node::HubCluster;
pub use wire::ALPN_REPLICA;

pub(crate) use crumbs::spawn_breadcrumb_replicator;
pub(crate) use driver::run_rebalancer;
pub(crate) use node::{join, Published, ReplicaSlot};
pub(crate) use quic::{peer_is_hub, spawn_serve};
