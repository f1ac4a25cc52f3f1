//! Draining: stop taking drivers, send the connected ones to a peer edge, let them leave,
//! flush the hub links, then stop.
//!
//! [`DrainState`] is what the ingest paths consult (is the edge draining, where to send a
//! driver); [`Drainer::run`] is the procedure behind `EdgeHandle::drain`, `POST /drain` on the
//! admin listener and SIGTERM.

use crate::config::DrainConfig;
use crate::metrics::EdgeMetrics;
use crate::routes::Routes;
use cluster::{placement, ClusterNode, Role};
use parking_lot::RwLock;
use protocol::{DeliveryId, DriverId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Keys an edge writes into its own chitchat state.
pub mod keys {
    /// `host:port` of the edge's driver QUIC endpoint (where peers redirect drivers to).
    pub const ADDR_DRIVER: &str = "edge.addr_driver";
    /// `true` while the edge drains: peers do not redirect drivers to it.
    pub const DRAINING: &str = "edge.draining";
}

/// How often the drain procedure re-checks sessions and hub queues.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A peer edge drivers can be sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEdge {
    /// Node id (or the address itself for a configured or hinted target).
    pub id: String,
    /// Its driver QUIC address, `host:port`.
    pub addr: String,
}

impl AsRef<str> for PeerEdge {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

/// Whether the edge drains, and where drivers go meanwhile.
#[derive(Debug)]
pub struct DrainState {
    draining: watch::Sender<bool>,
    targets: RwLock<Vec<PeerEdge>>,
}

impl Default for DrainState {
    fn default() -> Self {
        Self {
            draining: watch::channel(false).0,
            targets: RwLock::new(Vec::new()),
        }
    }
}

impl DrainState {
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// A receiver that sees the switch to draining.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// The edge `driver` should reconnect to: spread over the targets by rendezvous hashing
    /// on the driver id, so every driver of this edge does not land on the same peer.
    pub fn redirect_for(&self, driver: DriverId) -> Option<String> {
        let targets = self.targets.read();
        placement::owner(DeliveryId(driver.0), &targets).map(|p| p.addr.clone())
    }

    /// A target for someone not identified yet (a refused connection, an HTTP request).
    pub fn any_target(&self) -> Option<String> {
        self.targets.read().first().map(|p| p.addr.clone())
    }

    /// Switches to draining with `targets`; `false` if it already was.
    fn start(&self, targets: Vec<PeerEdge>) -> bool {
        if self.is_draining() {
            return false;
        }
        *self.targets.write() = targets;
        !self.draining.send_replace(true)
    }
}

/// Everything the drain procedure touches.
#[derive(Debug)]
pub struct Drainer {
    pub edge_id: String,
    pub state: Arc<DrainState>,
    pub config: DrainConfig,
    pub cluster: Option<ClusterNode>,
    pub routes: watch::Receiver<Arc<Routes>>,
    pub metrics: Arc<EdgeMetrics>,
    pub ready: Arc<AtomicBool>,
    pub shutdown: CancellationToken,
}

impl Drainer {
    /// Drains and then stops the edge (cancels its shutdown token). `peer_hint` overrides the
    /// redirect target. A second call waits for the first to finish.
    pub async fn run(&self, peer_hint: Option<String>) {
        let targets = match peer_hint {
            Some(addr) => vec![PeerEdge {
                id: addr.clone(),
                addr,
            }],
            None => self.targets().await,
        };
        info!(targets = ?targets, "edge draining");
        if !self.state.start(targets) {
            self.shutdown.cancelled().await;
            return;
        }
        self.ready.store(false, Ordering::Relaxed);
        self.metrics.draining().set(1);
        if let Some(node) = &self.cluster {
            node.control.set(keys::DRAINING, "true").await;
        }
        let sessions_deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.config.timeout_s);
        while self.metrics.sessions_active().get() > 0 {
            if tokio::time::Instant::now() >= sessions_deadline {
                info!(
                    left = self.metrics.sessions_active().get(),
                    "drain timeout: closing the remaining sessions"
                );
                break;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(DRAIN_POLL) => {}
            }
        }
        let flush_deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.flush_timeout_ms);
        while !self.routes.borrow().is_flushed() && tokio::time::Instant::now() < flush_deadline {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(DRAIN_POLL) => {}
            }
        }
        info!(
            flushed = self.routes.borrow().is_flushed(),
            "edge drained, stopping"
        );
        self.shutdown.cancel();
    }

    /// Healthy peer edges of the region from the cluster view, else the configured target.
    async fn targets(&self) -> Vec<PeerEdge> {
        let mut peers = Vec::new();
        if let Some(node) = &self.cluster {
            let region = node.membership.identity().region;
            for m in node.membership.members() {
                if m.role != Role::Edge || m.region != region || m.id == self.edge_id {
                    continue;
                }
                let draining = node.control.get(&m.id, keys::DRAINING).await;
                if draining.as_deref() == Some("true") {
                    continue;
                }
                if let Some(addr) = node.control.get(&m.id, keys::ADDR_DRIVER).await {
                    peers.push(PeerEdge { id: m.id, addr });
                }
            }
            peers.sort_by(|a, b| a.id.cmp(&b.id));
        }
        if peers.is_empty() {
            if let Some(addr) = &self.config.redirect_to {
                peers.push(PeerEdge {
                    id: addr.clone(),
                    addr: addr.clone(),
                });
            }
        }
        peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_are_spread_over_the_peer_edges_and_draining_starts_once() {
        let state = DrainState::default();
        assert!(!state.is_draining());
        assert_eq!(state.redirect_for(DriverId(1)), None);
        let peers: Vec<PeerEdge> = ["edge-a", "edge-b", "edge-c"]
            .iter()
            .map(|id| PeerEdge {
                id: (*id).to_owned(),
                addr: format!("{id}:4433"),
            })
            .collect();
        assert!(state.start(peers));
        assert!(state.is_draining());
        let chosen: std::collections::HashSet<String> = (0..100)
            .filter_map(|d| state.redirect_for(DriverId(d)))
            .collect();
        assert_eq!(chosen.len(), 3, "{chosen:?}");
        assert_eq!(
            state.redirect_for(DriverId(5)),
            state.redirect_for(DriverId(5))
        );
        assert!(!state.start(Vec::new()), "already draining");
        assert!(state.any_target().is_some(), "targets kept");
    }
}
