//! Breadcrumb copying: after the fact and best effort (positions may be shed, status events
//! may not). Each batch the breadcrumb writer committed goes to each delivery's successor (the
//! owner, if this hub is not it); a hand-off carries a delivery's newest breadcrumbs; a
//! takeover fetches those peers hold.

use super::host::Host;
use super::node::{HubCluster, ReplicaSlot};
use super::wire::{crumb_is_valid, ReplicaFrame, MAX_CRUMBS_PER_HANDOFF, MAX_FETCH_IDS};
use crate::durable::history::Breadcrumb;
use crate::metrics::HubMetrics;
use cluster::HubInfo;
use protocol::DeliveryId;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

/// Starts the breadcrumb replicator: copies each batch the breadcrumb writer committed to the
/// successor of each delivery (the owner, if this hub is not it), after the fact and best
/// effort: positions may be shed, status events may not (they replicate before they are
/// acknowledged). So the history survives a failover with at most the last moments missing.
/// Copies that cannot be sent are counted in `hub_breadcrumbs_unreplicated_total`.
pub(crate) fn spawn_breadcrumb_replicator(
    slot: Arc<ReplicaSlot>,
    metrics: Arc<HubMetrics>,
    queue: usize,
    shutdown: CancellationToken,
) -> (
    tokio::sync::mpsc::Sender<Vec<Breadcrumb>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Breadcrumb>>(queue.max(1));
    let task = tokio::spawn(
        async move {
            let mut batches = Vec::new();
            let mut peers: HashMap<String, tokio::sync::mpsc::Sender<Vec<Breadcrumb>>> =
                HashMap::new();
            loop {
                tokio::select! {
                    n = rx.recv_many(&mut batches, 64) => if n == 0 { break },
                    _ = shutdown.cancelled() => break,
                }
                let crumbs: Vec<Breadcrumb> = batches.drain(..).flatten().collect();
                let total = crumbs.len() as u64;
                let Some(cluster) = slot.0.get() else {
                    metrics.breadcrumbs_unreplicated.inc_by(total);
                    continue;
                };
                let mut by_target: BTreeMap<String, (HubInfo, Vec<Breadcrumb>)> = BTreeMap::new();
                for c in crumbs {
                    match cluster.replica_target(c.delivery_id) {
                        Some(t) => by_target
                            .entry(t.id.clone())
                            .or_insert_with(|| (t, Vec::new()))
                            .1
                            .push(c),
                        None => {
                            metrics.breadcrumbs_unreplicated.inc();
                        }
                    }
                }
                // One sender task per peer, so a peer that stopped answering (dead, not yet
                // out of the view) holds up only its own copies.
                for (to, crumbs) in by_target.into_values() {
                    let n = crumbs.len() as u64;
                    // Keyed by address too: a peer that comes back elsewhere gets a new task.
                    let key = format!("{}@{}", to.id, to.link_addr);
                    let peer = peers.entry(key).or_insert_with(|| {
                        spawn_peer_copier(cluster.clone(), metrics.clone(), to.clone())
                    });
                    if peer.try_send(crumbs).is_err() {
                        metrics.breadcrumbs_unreplicated.inc_by(n);
                    }
                }
            }
        }
        .instrument(tracing::info_span!("breadcrumb_replicator")),
    );
    (tx, task)
}

/// A task copying breadcrumbs to one peer, one frame at a time; what queues up while the peer
/// is slow is sent together (a full queue sheds, counted as unreplicated).
fn spawn_peer_copier(
    cluster: Arc<HubCluster>,
    metrics: Arc<HubMetrics>,
    to: HubInfo,
) -> tokio::sync::mpsc::Sender<Vec<Breadcrumb>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Breadcrumb>>(32);
    tokio::spawn(
        async move {
            let mut batches = Vec::new();
            while rx.recv_many(&mut batches, 32).await > 0 {
                let crumbs: Vec<Breadcrumb> = batches.drain(..).flatten().collect();
                copy_breadcrumbs(&cluster, &metrics, &to, &crumbs).await;
            }
        }
        .instrument(tracing::info_span!("breadcrumb_copier")),
    );
    tx
}

/// Stores breadcrumbs a peer sent or answered with (idempotent); implausible ones are counted
/// in `hub_breadcrumbs_received_rejected_total` and dropped. Returns how many were stored.
pub(crate) async fn keep_peer_breadcrumbs(
    hub: &Arc<dyn Host>,
    crumbs: Vec<Breadcrumb>,
) -> Result<u64, String> {
    let n = crumbs.len();
    let crumbs: Vec<Breadcrumb> = crumbs.into_iter().filter(crumb_is_valid).collect();
    hub.metrics()
        .breadcrumbs_received_rejected
        .inc_by((n - crumbs.len()) as u64);
    if crumbs.is_empty() {
        return Ok(0);
    }
    let stored = crumbs.len() as u64;
    let store = hub.store().clone();
    match tokio::task::spawn_blocking(move || store.append_breadcrumbs(&crumbs)).await {
        Ok(Ok(())) => {
            hub.metrics().breadcrumbs_received.inc_by(stored);
            Ok(stored)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Answers a peer's `Breadcrumbs` frame.
pub(crate) async fn store_breadcrumbs(
    hub: &Arc<dyn Host>,
    from: &str,
    crumbs: Vec<Breadcrumb>,
) -> ReplicaFrame {
    match keep_peer_breadcrumbs(hub, crumbs).await {
        Ok(stored) => {
            debug!(%from, breadcrumbs = stored, "stored replica breadcrumbs");
            ReplicaFrame::Ack
        }
        Err(reason) => ReplicaFrame::Refused { reason },
    }
}

/// Copies breadcrumbs to `to` and counts them as replicated or not (best effort).
pub(crate) async fn copy_breadcrumbs(
    cluster: &HubCluster,
    metrics: &HubMetrics,
    to: &HubInfo,
    crumbs: &[Breadcrumb],
) {
    let n = crumbs.len() as u64;
    match cluster.send_breadcrumbs(to, crumbs).await {
        Ok(()) => {
            metrics.breadcrumbs_replicated.inc_by(n);
        }
        Err(e) => {
            metrics.breadcrumbs_unreplicated.inc_by(n);
            debug!(to = %to.id, breadcrumbs = n, error = %e, "breadcrumbs not copied");
        }
    }
}

/// A delivery's newest breadcrumbs (at most [`MAX_CRUMBS_PER_HANDOFF`]), sent after its log
/// in a hand-off or a successor copy.
pub(crate) async fn handoff_breadcrumbs(hub: &Arc<dyn Host>, id: DeliveryId) -> Vec<Breadcrumb> {
    let store = hub.store().clone();
    let read =
        tokio::task::spawn_blocking(move || store.latest_breadcrumbs(id, MAX_CRUMBS_PER_HANDOFF))
            .await;
    match read {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            warn!(delivery_id = %id, error = %e, "breadcrumbs not read for a hand-off");
            Vec::new()
        }
        Err(e) => {
            warn!(delivery_id = %id, error = %e, "breadcrumbs not read for a hand-off");
            Vec::new()
        }
    }
}

/// Merges the breadcrumbs every peer holds of `ids` into the local history (after a takeover:
/// the positions stored by whoever served the deliveries while this hub did not).
pub(crate) async fn fetch_history(
    hub: Arc<dyn Host>,
    cluster: Arc<HubCluster>,
    peers: Vec<HubInfo>,
    ids: Vec<DeliveryId>,
) {
    for peer in &peers {
        for chunk in ids.chunks(MAX_FETCH_IDS) {
            let crumbs = match cluster.fetch_breadcrumbs(peer, chunk).await {
                Ok(c) => c,
                Err(e) => {
                    debug!(peer = %peer.id, error = %e, "breadcrumbs not fetched for a takeover");
                    continue;
                }
            };
            if let Err(e) = keep_peer_breadcrumbs(&hub, crumbs).await {
                warn!(peer = %peer.id, error = %e, "fetched breadcrumbs not stored");
            }
        }
    }
}
