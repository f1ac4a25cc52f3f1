//! The hub in a cluster: joins it (foca + chitchat, `cluster::spawn_node`), and talks to its
//! peers through a [`ReplicaLink`]: typed requests (append, hand-off, fetch, breadcrumbs) and
//! the replication of every committed batch before it is acknowledged, as planned by
//! [`super::plan`].

use super::link::{ReplicaError, ReplicaLink};
use super::metrics::ClusterMetrics;
use super::plan::{settle, CopyOutcome, ReplicationPlan};
use super::takeover::InDoubt;
use super::view::View;
use super::wire::{ReplicaFrame, ALPN_REPLICA, MAX_CRUMBS_PER_FRAME};
use crate::config::ClusterHubConfig;
use crate::durable::copies::ReplicaEntry;
use crate::durable::history::Breadcrumb;
use crate::durable::store::Refusal;
use crate::tracking::deliveries::LogEntry;
use cluster::{ClusterNode, HubInfo};
use prometheus_client::registry::Registry;
use protocol::DeliveryId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// A hub's membership in the cluster, its replica link and its counters.
#[derive(Debug)]
pub struct HubCluster {
    /// The node (membership, control plane, view).
    pub node: ClusterNode,
    /// Our node id (the certificate's CN).
    pub me: String,
    link: Box<dyn ReplicaLink>,
    pub(crate) rebalance_interval: Duration,
    pub(crate) join_grace: Duration,
    /// `cluster_hub.min_copies`.
    min_copies: u8,
    /// Serialises takeovers (rebalancer, request paths, hand-offs received).
    pub(crate) takeover_lock: tokio::sync::Mutex<()>,
    pub metrics: ClusterMetrics,
    /// After each ownership pass: whether the view already shows us draining, and how many
    /// deliveries we hold that are not yet handed to their owner.
    pub(crate) handoff: tokio::sync::watch::Sender<(bool, usize)>,
    /// Set once the rebalancer has claimed the deliveries this hub owns (after `join_grace`):
    /// before that, the view may not show the peers yet, so a takeover could not fetch the
    /// newest copies and requests for deliveries it does not hold are refused (503).
    pub(crate) claimed: std::sync::atomic::AtomicBool,
    /// Deliveries whose copy went unanswered, and to which hubs (see [`InDoubt`]).
    pub(crate) in_doubt: parking_lot::Mutex<InDoubt>,
    /// Live copies since the rebalancer last looked: (delivery, hub), for
    /// `Rebalancer::handle_live_copy`.
    pub(crate) live_copies: parking_lot::Mutex<Vec<(DeliveryId, String)>>,
}

/// Addresses the hub publishes (`host:port`).
#[derive(Clone, Debug)]
pub(crate) struct Published {
    pub link: String,
    pub webtransport: String,
    pub https: String,
}

impl Published {
    /// Configured `advertise_*` values, else the bound addresses.
    pub fn new(
        c: &ClusterHubConfig,
        link: SocketAddr,
        webtransport: SocketAddr,
        https: SocketAddr,
    ) -> Self {
        let or = |a: &Option<String>, b: SocketAddr| a.clone().unwrap_or_else(|| b.to_string());
        Self {
            link: or(&c.advertise_link, link),
            webtransport: or(&c.advertise_webtransport, webtransport),
            https: or(&c.advertise_https, https),
        }
    }
}

/// Joins the cluster as a hub publishing `published`, and opens the replica client.
pub(crate) async fn join(
    config: cluster::ClusterConfig,
    hub_config: &ClusterHubConfig,
    tls: &nodekit::LoadedTls,
    published: &Published,
    registry: &mut Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<HubCluster> {
    use anyhow::Context;
    let mut config = config;
    for (k, v) in [
        (cluster::keys::ADDR_LINK, &published.link),
        (cluster::keys::ADDR_WT, &published.webtransport),
        (cluster::keys::ADDR_HTTPS, &published.https),
    ] {
        config.publish.insert(k.to_owned(), v.clone());
    }
    let me = config.node_id.clone();
    let bind: SocketAddr = if config.gossip.bind_addr.ip().is_loopback() {
        ([127, 0, 0, 1], 0).into()
    } else {
        ([0, 0, 0, 0], 0).into()
    };
    let gossip_tls = cluster::GossipTls {
        chain: tls.chain.clone(),
        key: tls.key.clone_key(),
        roots: tls.roots.clone(),
    };
    let node = cluster::spawn_node(config, gossip_tls, shutdown)
        .await
        .context("joining the cluster")?;
    node.register_metrics(registry);
    let rustls = certs::mtls_client_config(
        tls.chain.clone(),
        tls.key.clone_key(),
        tls.roots.clone(),
        &[ALPN_REPLICA],
        certs::TlsFor::Quic,
    )?;
    let mut client_config = certs::quinn_client_config(rustls)?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    client_config.transport_config(Arc::new(transport));
    let mut client = quinn::Endpoint::client(bind).context("binding the replica client")?;
    client.set_default_client_config(client_config);
    let link = super::quic::QuicLink::new(
        client,
        hub_config.replica_server_name.clone(),
        Duration::from_millis(hub_config.replica_ack_timeout_ms),
    );
    let metrics = ClusterMetrics::default();
    metrics.register(registry);
    Ok(HubCluster {
        node,
        me,
        link: Box::new(link),
        rebalance_interval: Duration::from_millis(hub_config.rebalance_interval_ms),
        join_grace: Duration::from_millis(hub_config.join_grace_ms),
        min_copies: hub_config.min_copies,
        takeover_lock: tokio::sync::Mutex::new(()),
        metrics,
        handoff: tokio::sync::watch::channel((false, usize::MAX)).0,
        claimed: std::sync::atomic::AtomicBool::new(false),
        in_doubt: parking_lot::Mutex::new(InDoubt::default()),
        live_copies: parking_lot::Mutex::new(Vec::new()),
    })
}

fn unexpected() -> ReplicaError {
    ReplicaError::Stream("unexpected answer".into())
}

impl HubCluster {
    /// This hub's current view of the cluster.
    pub fn view(&self) -> &dyn View {
        &self.node.view
    }

    /// The owner of `id` among live, non-draining hubs; `None` before any hub is known.
    pub fn owner_of(&self, id: DeliveryId) -> Option<HubInfo> {
        self.view().owner_of(id)
    }

    /// Whether this hub answers for `id`: it owns it, or no hub is placeable (then we serve
    /// rather than bounce requests around).
    pub fn is_mine(&self, id: DeliveryId) -> bool {
        self.owner_of(id).is_none_or(|h| h.id == self.me)
    }

    /// Whether the rebalancer has claimed the deliveries this hub owns.
    pub fn claimed(&self) -> bool {
        self.claimed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Where this hub's copy of `id` must go: the successor when we own it, else the owner.
    pub(crate) fn replica_target(&self, id: DeliveryId) -> Option<HubInfo> {
        super::plan::replica_target(&self.me, self.view(), id)
    }

    /// Sends whole committed logs to `to` (a hand-off, or a successor's copy) and waits for
    /// its ack (bounded by the ack timeout).
    pub async fn send(&self, to: &HubInfo, entries: &[ReplicaEntry]) -> Result<(), ReplicaError> {
        let json = serde_json::to_vec(entries).map_err(|e| ReplicaError::Stream(e.to_string()))?;
        let frame = ReplicaFrame::Handoff {
            from: self.me.clone(),
            entries: json,
        };
        match self.link.exchange(to, frame).await? {
            ReplicaFrame::Ack => Ok(()),
            ReplicaFrame::Refused { reason } => Err(ReplicaError::Refused(reason)),
            _ => Err(unexpected()),
        }
    }

    /// Copies breadcrumbs to `to`, in frames of at most [`MAX_CRUMBS_PER_FRAME`].
    pub(crate) async fn send_breadcrumbs(
        &self,
        to: &HubInfo,
        crumbs: &[Breadcrumb],
    ) -> Result<(), ReplicaError> {
        for chunk in crumbs.chunks(MAX_CRUMBS_PER_FRAME) {
            let frame = ReplicaFrame::Breadcrumbs {
                from: self.me.clone(),
                crumbs: chunk.to_vec(),
            };
            match self.link.exchange(to, frame).await? {
                ReplicaFrame::Ack => {}
                ReplicaFrame::Refused { reason } => return Err(ReplicaError::Refused(reason)),
                _ => return Err(unexpected()),
            }
        }
        Ok(())
    }

    /// Asks `to` for the newest breadcrumbs it holds of `ids` (at most `MAX_FETCH_IDS`).
    pub(crate) async fn fetch_breadcrumbs(
        &self,
        to: &HubInfo,
        ids: &[DeliveryId],
    ) -> Result<Vec<Breadcrumb>, ReplicaError> {
        let frame = ReplicaFrame::FetchBreadcrumbs {
            from: self.me.clone(),
            ids: ids.to_vec(),
        };
        match self.link.exchange(to, frame).await? {
            ReplicaFrame::Breadcrumbs { crumbs, .. } => Ok(crumbs),
            ReplicaFrame::Refused { reason } => Err(ReplicaError::Refused(reason)),
            _ => Err(unexpected()),
        }
    }

    /// Replicates new entries to `to`; returns the deliveries it fenced (not stored).
    pub(crate) async fn append(
        &self,
        to: &HubInfo,
        entries: &[ReplicaEntry],
    ) -> Result<Vec<DeliveryId>, ReplicaError> {
        let json = serde_json::to_vec(entries).map_err(|e| ReplicaError::Stream(e.to_string()))?;
        let frame = ReplicaFrame::Append {
            from: self.me.clone(),
            entries: json,
        };
        match self.link.exchange(to, frame).await? {
            ReplicaFrame::Ack => Ok(Vec::new()),
            ReplicaFrame::Fenced { ids } => Ok(ids),
            ReplicaFrame::Refused { reason } => Err(ReplicaError::Refused(reason)),
            _ => Err(unexpected()),
        }
    }

    /// Asks `to` for its whole log of `ids` (those it holds).
    pub async fn fetch(
        &self,
        to: &HubInfo,
        ids: &[DeliveryId],
    ) -> Result<Vec<ReplicaEntry>, ReplicaError> {
        let frame = ReplicaFrame::Fetch {
            from: self.me.clone(),
            ids: ids.to_vec(),
        };
        match self.link.exchange(to, frame).await? {
            ReplicaFrame::Entries { entries } => {
                serde_json::from_slice(&entries).map_err(|e| ReplicaError::Stream(e.to_string()))
            }
            ReplicaFrame::Refused { reason } => Err(ReplicaError::Refused(reason)),
            _ => Err(unexpected()),
        }
    }

    /// Copies entries to their replicas before they are committed here, one exchange per
    /// replica, concurrently. Returns the deliveries whose entries must fail: fenced by their
    /// replica, or (with `min_copies` 2) status changes no replica stored in time.
    /// `epochs`: the write epoch of each delivery, carried by its copy.
    pub async fn replicate(
        &self,
        entries: &[LogEntry],
        epochs: &HashMap<DeliveryId, u64>,
    ) -> Vec<(DeliveryId, Refusal)> {
        let plan = ReplicationPlan::new(&self.me, self.view(), self.min_copies, entries, epochs);
        let mut refused = plan.refused;
        if !refused.is_empty() {
            warn!(
                deliveries = refused.len(),
                "no live replica: status changes refused (min_copies = 2)"
            );
            self.metrics.no_replica.inc_by(refused.len() as u64);
        }
        if plan.alone > 0 {
            debug!(
                events = plan.alone,
                "no live replica: acknowledged unreplicated"
            );
            self.metrics.unreplicated.inc_by(plan.alone);
        }
        self.live_copies.lock().extend(
            plan.copies
                .iter()
                .flat_map(|c| c.entries.iter().map(|e| (e.delivery_id, c.to.id.clone()))),
        );
        let sends = plan.copies.into_iter().map(|copy| async move {
            let outcome = match self.append(&copy.to, &copy.entries).await {
                Ok(fenced) => CopyOutcome::Stored { fenced },
                Err(e) => {
                    warn!(replica = %copy.to.id, error = %e, events = copy.events, "replication failed");
                    self.in_doubt
                        .lock()
                        .handle_unanswered(&copy.to, copy.entries.iter().map(|e| e.delivery_id));
                    CopyOutcome::Failed
                }
            };
            let s = settle(&copy, &outcome, self.min_copies);
            self.metrics.replicated.inc_by(s.replicated);
            self.metrics.unreplicated.inc_by(s.unreplicated);
            self.metrics.no_replica.inc_by(s.no_replica);
            self.metrics.fenced.inc_by(s.fenced);
            if s.fenced > 0 {
                warn!(replica = %copy.to.id, deliveries = s.fenced, "replica fenced our entries: it serves those deliveries");
            }
            s.refused
        });
        refused.extend(futures::future::join_all(sends).await.into_iter().flatten());
        refused
    }

    /// Marks this hub draining (it then owns nothing; the rebalancer hands every delivery it
    /// holds to its new owner and redirects its consumers) and waits until all are handed off,
    /// at most `limit`. Returns whether they all were.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.node.control.set_draining(true).await;
        let mut rx = self.handoff.subscribe();
        rx.mark_changed();
        tokio::time::timeout(limit, async {
            while rx.changed().await.is_ok() {
                let (seen, outstanding) = *rx.borrow_and_update();
                if seen && outstanding == 0 {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false)
    }

    /// A healthy peer hub (live, not draining) for redirects, by rendezvous on `key`.
    pub fn peer_for(&self, key: u64) -> Option<HubInfo> {
        self.view()
            .owners_of(DeliveryId(key), 3)
            .into_iter()
            .find(|h| h.id != self.me)
    }

    /// Closes the replica link.
    pub fn close(&self) {
        self.link.close();
    }
}

/// The writer's replication hook; empty until the cluster is joined.
#[derive(Default)]
pub(crate) struct ReplicaSlot(pub OnceLock<Arc<HubCluster>>);

impl crate::durable::store::Replicate for ReplicaSlot {
    fn replicate<'a>(
        &'a self,
        entries: &'a [LogEntry],
        epochs: &'a HashMap<DeliveryId, u64>,
    ) -> crate::durable::store::Refused<'a> {
        Box::pin(async move {
            match self.0.get() {
                Some(c) => c.replicate(entries, epochs).await,
                None => Vec::new(),
            }
        })
    }
}
