//! The hub in a cluster: joins it (foca + chitchat, `cluster::spawn_node`), knows which
//! deliveries it owns (rendezvous over live hubs), copies every committed batch to the
//! delivery's successor before acknowledging it (synchronous primary-backup over mTLS QUIC,
//! ALPN `trackline-replica/1`), takes over the deliveries of a hub that left and hands off
//! those that moved away. See `docs/cluster.md`, *Hubs: ownership, replication, takeover*.

use crate::config::ClusterHubConfig;
use crate::durable::copies::ReplicaEntry;
use crate::durable::history::Breadcrumb;
use crate::durable::store::Refusal;
use crate::hub::Hub;
use crate::metrics::HubMetrics;
use crate::tracking::deliveries::LogEntry;
use cluster::{ClusterNode, HubInfo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use protocol::framing::{frame_bytes, FrameDecoder};
use protocol::DeliveryId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// ALPN of the hub-to-hub replication link (on the edge link's QUIC endpoint).
pub const ALPN_REPLICA: &[u8] = b"trackline-replica/1";

/// Largest replication frame (a hand-off carries a delivery's whole log).
const MAX_REPLICA_FRAME: usize = 16 * 1024 * 1024;

/// Frames of the replica link: one request and one answer per bidirectional stream.
#[derive(Debug, Serialize, Deserialize)]
enum ReplicaFrame {
    /// Store these entries durably, then ack. `entries` is JSON (`Vec<ReplicaEntry>`):
    /// status metadata is free-form JSON, which postcard cannot carry.
    Append { from: String, entries: Vec<u8> },
    /// Stored (`Durability::Immediate`).
    Ack,
    /// Not stored; the reason says why.
    Refused { reason: String },
    /// Send me your whole log of these deliveries (before a takeover).
    Fetch { from: String, ids: Vec<DeliveryId> },
    /// Answer to `Fetch`: JSON `Vec<ReplicaEntry>` of the deliveries the peer holds.
    Entries { entries: Vec<u8> },
    /// Store these committed logs (a hand-off or a successor's full copy): merged
    /// monotonically, never fenced. JSON like `Append`.
    Handoff { from: String, entries: Vec<u8> },
    /// Answer to `Append`: stored, except the entries of these deliveries (fenced: the
    /// receiver serves them as their owner, or holds other events under the same seqs).
    Fenced { ids: Vec<DeliveryId> },
    /// Store these breadcrumbs (a copy of what the sender committed; idempotent), then ack.
    /// Also the answer to `FetchBreadcrumbs`.
    Breadcrumbs {
        from: String,
        crumbs: Vec<Breadcrumb>,
    },
    /// Send me the newest breadcrumbs you hold of these deliveries (after a takeover; at most
    /// [`MAX_FETCH_IDS`] ids, [`MAX_CRUMBS_PER_HANDOFF`] breadcrumbs each).
    FetchBreadcrumbs { from: String, ids: Vec<DeliveryId> },
}

/// Most deliveries in one `FetchBreadcrumbs` (keeps the answer well under the frame limit).
const MAX_FETCH_IDS: usize = 64;

/// Most breadcrumbs in one `Breadcrumbs` frame (~40 bytes each): well under the frame limit.
const MAX_CRUMBS_PER_FRAME: usize = 100_000;

/// Most breadcrumbs of one delivery sent with a hand-off (its newest; ~2 h of fixes at 4 s).
const MAX_CRUMBS_PER_HANDOFF: usize = 2_000;

/// Whether a breadcrumb received from a peer is plausible enough to store.
fn crumb_is_valid(c: &Breadcrumb) -> bool {
    c.lat.is_finite()
        && c.lng.is_finite()
        && (-90.0..=90.0).contains(&c.lat)
        && (-180.0..=180.0).contains(&c.lng)
}

/// Why a batch did not reach a replica.
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

/// Counters of the cluster work (`hub_events_replicated_total`, ...).
#[derive(Clone, Debug, Default)]
pub struct ClusterMetrics {
    /// Status events copied to a replica before being acknowledged.
    pub replicated: Counter,
    /// Status events acknowledged without a replica (none live, or it did not answer).
    pub unreplicated: Counter,
    /// Deliveries loaded from the local copy because this hub became their owner.
    pub takeovers: Counter,
    /// Deliveries whose whole log was sent to a new owner or successor.
    pub handoffs: Counter,
    /// Entries stored on behalf of another hub.
    pub received: Counter,
    /// Log entries of ours a replica refused because another hub serves the delivery.
    pub fenced: Counter,
    /// Copies received holding other events under seqs we hold (two writers for one seq).
    pub conflicts: Counter,
    /// Deliveries whose status changes were refused because no replica stored them
    /// (`min_copies` 2).
    pub no_replica: Counter,
}

impl ClusterMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "hub_events_replicated",
            "Status events copied to the successor before being acknowledged",
            self.replicated.clone(),
        );
        r.register(
            "hub_events_unreplicated",
            "Status events acknowledged without a live replica having stored them",
            self.unreplicated.clone(),
        );
        r.register(
            "hub_takeovers",
            "Deliveries loaded from the local replica copy after becoming their owner",
            self.takeovers.clone(),
        );
        r.register(
            "hub_handoffs",
            "Deliveries whose whole log was sent to a new owner or successor",
            self.handoffs.clone(),
        );
        r.register(
            "hub_replica_entries_received",
            "Log entries stored on behalf of another hub",
            self.received.clone(),
        );
        r.register(
            "hub_replica_fenced",
            "Log entries a replica refused because another hub serves their delivery (not acknowledged; the client retries)",
            self.fenced.clone(),
        );
        r.register(
            "hub_events_refused_no_replica",
            "Deliveries whose status changes were refused (503) because no replica stored them in time (min_copies = 2)",
            self.no_replica.clone(),
        );
        r.register(
            "hub_replica_conflicts",
            "Copies received holding a different event under a seq already stored",
            self.conflicts.clone(),
        );
    }
}

/// A hub's membership in the cluster, its replica client and its counters.
#[derive(Debug)]
pub struct HubCluster {
    /// The node (membership, control plane, view).
    pub node: ClusterNode,
    /// Our node id (the certificate's CN).
    pub me: String,
    client: quinn::Endpoint,
    conns: tokio::sync::Mutex<HashMap<String, quinn::Connection>>,
    server_name: Option<String>,
    ack_timeout: Duration,
    rebalance_interval: Duration,
    join_grace: Duration,
    /// `cluster_hub.min_copies`.
    min_copies: u8,
    /// Serialises takeovers (rebalancer, request paths, hand-offs received).
    takeover_lock: tokio::sync::Mutex<()>,
    pub metrics: ClusterMetrics,
    /// After each ownership pass: whether the view already shows us draining, and how many
    /// deliveries we hold that are not yet handed to their owner.
    handoff: tokio::sync::watch::Sender<(bool, usize)>,
    /// Set once the rebalancer has claimed the deliveries this hub owns (after `join_grace`):
    /// before that, the view may not show the peers yet, so a takeover could not fetch the
    /// newest copies and requests for deliveries it does not hold are refused (503).
    claimed: std::sync::atomic::AtomicBool,
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
    let metrics = ClusterMetrics::default();
    metrics.register(registry);
    Ok(HubCluster {
        node,
        me,
        client,
        conns: tokio::sync::Mutex::new(HashMap::new()),
        server_name: hub_config.replica_server_name.clone(),
        ack_timeout: Duration::from_millis(hub_config.replica_ack_timeout_ms),
        rebalance_interval: Duration::from_millis(hub_config.rebalance_interval_ms),
        join_grace: Duration::from_millis(hub_config.join_grace_ms),
        min_copies: hub_config.min_copies,
        takeover_lock: tokio::sync::Mutex::new(()),
        metrics,
        handoff: tokio::sync::watch::channel((false, usize::MAX)).0,
        claimed: std::sync::atomic::AtomicBool::new(false),
    })
}

impl HubCluster {
    /// The owner of `id` among live, non-draining hubs; `None` before any hub is known.
    pub fn owner_of(&self, id: DeliveryId) -> Option<HubInfo> {
        self.node.view.owner_of(id)
    }

    /// Whether this hub answers for `id`: it owns it, or no hub is placeable (then we serve
    /// rather than bounce requests around).
    pub fn is_mine(&self, id: DeliveryId) -> bool {
        self.owner_of(id).is_none_or(|h| h.id == self.me)
    }

    /// The owner of `id` when it is another hub.
    pub fn other_owner(&self, id: DeliveryId) -> Option<HubInfo> {
        self.owner_of(id).filter(|h| h.id != self.me)
    }

    /// Where this hub's copy of `id` must go: the successor when we own it, else the owner.
    fn replica_target(&self, id: DeliveryId) -> Option<HubInfo> {
        self.node
            .view
            .owners_of(id, 2)
            .into_iter()
            .find(|h| h.id != self.me)
    }

    async fn connection(&self, to: &HubInfo) -> Result<quinn::Connection, ReplicaError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&to.link_addr) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        if to.link_addr.is_empty() {
            return Err(ReplicaError::NoAddress(to.id.clone()));
        }
        let (host, _) = to
            .link_addr
            .rsplit_once(':')
            .ok_or_else(|| ReplicaError::Resolve(to.link_addr.clone(), "no port".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addr = tokio::net::lookup_host(&to.link_addr)
            .await
            .map_err(|e| ReplicaError::Resolve(to.link_addr.clone(), e.to_string()))?
            .next()
            .ok_or_else(|| ReplicaError::Resolve(to.link_addr.clone(), "no address".into()))?;
        let name = self.server_name.as_deref().unwrap_or(host);
        let conn = self
            .client
            .connect(addr, name)
            .map_err(|e| ReplicaError::Connect(e.to_string()))?
            .await
            .map_err(|e| ReplicaError::Connect(e.to_string()))?;
        conns.insert(to.link_addr.clone(), conn.clone());
        Ok(conn)
    }

    /// Sends whole committed logs to `to` (a hand-off, or a successor's copy) and waits for
    /// its ack (bounded by the ack timeout).
    pub async fn send(&self, to: &HubInfo, entries: &[ReplicaEntry]) -> Result<(), ReplicaError> {
        let json = serde_json::to_vec(entries).map_err(|e| ReplicaError::Stream(e.to_string()))?;
        let frame = frame_bytes(&ReplicaFrame::Handoff {
            from: self.me.clone(),
            entries: json,
        });
        match self.exchange(to, &frame).await? {
            ReplicaFrame::Ack => Ok(()),
            ReplicaFrame::Refused { reason } => Err(ReplicaError::Refused(reason)),
            _ => Err(ReplicaError::Stream("unexpected answer".into())),
        }
    }

    /// Copies breadcrumbs to `to`, in frames of at most [`MAX_CRUMBS_PER_FRAME`].
    pub(crate) async fn send_breadcrumbs(
        &self,
        to: &HubInfo,
        crumbs: &[Breadcrumb],
    ) -> Result<(), ReplicaError> {
        for chunk in crumbs.chunks(MAX_CRUMBS_PER_FRAME) {
            let frame = frame_bytes(&ReplicaFrame::Breadcrumbs {
                from: self.me.clone(),
                crumbs: chunk.to_vec(),
            });
            match self.exchange(to, &frame).await? {
                ReplicaFrame::Ack => {}
                ReplicaFrame::Refused { reason } => return Err(ReplicaError::Refused(reason)),
                _ => return Err(ReplicaError::Stream("unexpected answer".into())),
            }
        }
        Ok(())
    }

    /// Asks `to` for the newest breadcrumbs it holds of `ids` (at most [`MAX_FETCH_IDS`]).
    pub(crate) async fn fetch_breadcrumbs(
        &self,
        to: &HubInfo,
        ids: &[DeliveryId],
    ) -> Result<Vec<Breadcrumb>, ReplicaError> {
        let frame = frame_bytes(&ReplicaFrame::FetchBreadcrumbs {
            from: self.me.clone(),
            ids: ids.to_vec(),
        });
        match self.exchange(to, &frame).await? {
            ReplicaFrame::Breadcrumbs { crumbs, .. } => Ok(crumbs),
            ReplicaFrame::Refused { reason } => Err(ReplicaError::Refused(reason)),
            _ => Err(ReplicaError::Stream("unexpected answer".into())),
        }
    }

    /// Replicates new entries to `to`; returns the deliveries it fenced (not stored).
    pub(crate) async fn append(
        &self,
        to: &HubInfo,
        entries: &[ReplicaEntry],
    ) -> Result<Vec<DeliveryId>, ReplicaError> {
        let json = serde_json::to_vec(entries).map_err(|e| ReplicaError::Stream(e.to_string()))?;
        let frame = frame_bytes(&ReplicaFrame::Append {
            from: self.me.clone(),
            entries: json,
        });
        match self.exchange(to, &frame).await? {
            ReplicaFrame::Ack => Ok(Vec::new()),
            ReplicaFrame::Fenced { ids } => Ok(ids),
            ReplicaFrame::Refused { reason } => Err(ReplicaError::Refused(reason)),
            _ => Err(ReplicaError::Stream("unexpected answer".into())),
        }
    }

    /// Copies entries to their replicas before they are committed here, one exchange per
    /// replica, concurrently. Returns the deliveries whose entries must fail: fenced by their
    /// replica, or (with `min_copies` 2) status changes no replica stored in time.
    pub async fn replicate(&self, entries: &[LogEntry]) -> Vec<(DeliveryId, Refusal)> {
        let mut by_target: BTreeMap<String, (HubInfo, Vec<ReplicaEntry>, u64)> = BTreeMap::new();
        let mut refused: Vec<(DeliveryId, Refusal)> = Vec::new();
        let mut alone = 0u64;
        for e in entries {
            let entry = ReplicaEntry::from(e);
            if entry.is_empty() {
                continue;
            }
            let n = e.events.len() as u64;
            match self.replica_target(e.delivery_id) {
                Some(h) => {
                    let slot = by_target
                        .entry(h.id.clone())
                        .or_insert_with(|| (h, Vec::new(), 0));
                    slot.1.push(entry);
                    slot.2 += n;
                }
                None if self.min_copies >= 2 && n > 0 => {
                    refused.push((e.delivery_id, Refusal::NoReplica));
                }
                None => alone += n,
            }
        }
        if !refused.is_empty() {
            warn!(
                deliveries = refused.len(),
                "no live replica: status changes refused (min_copies = 2)"
            );
            self.metrics.no_replica.inc_by(refused.len() as u64);
        }
        if alone > 0 {
            debug!(events = alone, "no live replica: acknowledged unreplicated");
            self.metrics.unreplicated.inc_by(alone);
        }
        let sends = by_target.into_values().map(|(h, batch, n)| async move {
            match self.append(&h, &batch).await {
                Ok(fenced) => {
                    let refused = batch
                        .iter()
                        .filter(|e| fenced.contains(&e.delivery_id))
                        .map(|e| e.events.len() as u64)
                        .sum::<u64>();
                    self.metrics.replicated.inc_by(n - refused.min(n));
                    if !fenced.is_empty() {
                        warn!(replica = %h.id, deliveries = ?fenced, "replica fenced our entries: it serves those deliveries");
                        self.metrics.fenced.inc_by(fenced.len() as u64);
                    }
                    fenced.into_iter().map(|id| (id, Refusal::Fenced)).collect::<Vec<_>>()
                }
                Err(e) if self.min_copies >= 2 => {
                    let ids: Vec<(DeliveryId, Refusal)> = batch
                        .iter()
                        .filter(|e| !e.events.is_empty())
                        .map(|e| (e.delivery_id, Refusal::NoReplica))
                        .collect();
                    warn!(replica = %h.id, error = %e, deliveries = ids.len(), "replication failed: status changes refused (min_copies = 2)");
                    self.metrics.no_replica.inc_by(ids.len() as u64);
                    ids
                }
                Err(e) => {
                    warn!(replica = %h.id, error = %e, events = n, "replication failed: acknowledged unreplicated");
                    self.metrics.unreplicated.inc_by(n);
                    Vec::new()
                }
            }
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
        self.node
            .view
            .owners_of(DeliveryId(key), 3)
            .into_iter()
            .find(|h| h.id != self.me)
    }

    /// Asks `to` for its whole log of `ids` (those it holds).
    pub async fn fetch(
        &self,
        to: &HubInfo,
        ids: &[DeliveryId],
    ) -> Result<Vec<ReplicaEntry>, ReplicaError> {
        let frame = frame_bytes(&ReplicaFrame::Fetch {
            from: self.me.clone(),
            ids: ids.to_vec(),
        });
        match self.exchange(to, &frame).await? {
            ReplicaFrame::Entries { entries } => {
                serde_json::from_slice(&entries).map_err(|e| ReplicaError::Stream(e.to_string()))
            }
            ReplicaFrame::Refused { reason } => Err(ReplicaError::Refused(reason)),
            _ => Err(ReplicaError::Stream("unexpected answer".into())),
        }
    }

    /// One request and its answer on a new stream, bounded by the ack timeout.
    async fn exchange(&self, to: &HubInfo, frame: &[u8]) -> Result<ReplicaFrame, ReplicaError> {
        let exchange = async {
            let conn = self.connection(to).await?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| ReplicaError::Stream(e.to_string()))?;
            send.write_all(frame)
                .await
                .map_err(|e| ReplicaError::Stream(e.to_string()))?;
            let _ = send.finish();
            let answer = recv
                .read_to_end(MAX_REPLICA_FRAME + 16)
                .await
                .map_err(|e| ReplicaError::Stream(e.to_string()))?;
            let mut dec = FrameDecoder::new(MAX_REPLICA_FRAME);
            dec.push(&answer);
            match dec.next_frame::<ReplicaFrame>() {
                Ok(Some(f)) => Ok(f),
                Ok(None) => Err(ReplicaError::Stream("no answer".into())),
                Err(e) => Err(ReplicaError::Stream(e.to_string())),
            }
        };
        match tokio::time::timeout(self.ack_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => {
                // A connection that stopped answering is not reused.
                self.conns.lock().await.remove(&to.link_addr);
                Err(ReplicaError::Timeout(self.ack_timeout))
            }
        }
    }

    /// Closes the replica client.
    pub fn close(&self) {
        self.client
            .close(quinn::VarInt::from_u32(0), b"hub shutting down");
    }
}

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

/// The writer's replication hook; empty until the cluster is joined.
#[derive(Default)]
pub(crate) struct ReplicaSlot(pub OnceLock<Arc<HubCluster>>);

impl crate::durable::store::Replicate for ReplicaSlot {
    fn replicate<'a>(&'a self, entries: &'a [LogEntry]) -> crate::durable::store::Refused<'a> {
        Box::pin(async move {
            match self.0.get() {
                Some(c) => c.replicate(entries).await,
                None => Vec::new(),
            }
        })
    }
}

/// Serves one peer hub's replica connection: each bidirectional stream carries one `Append`,
/// answered with `Ack` once stored with `Durability::Immediate`.
pub(crate) async fn serve(conn: quinn::Connection, hub: Arc<Hub>) {
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(reason = %e, "replica link closed");
                return;
            }
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let answer = match recv.read_to_end(MAX_REPLICA_FRAME + 16).await {
                Ok(bytes) => store_frame(&hub, &bytes).await,
                Err(e) => ReplicaFrame::Refused {
                    reason: e.to_string(),
                },
            };
            let _ = send.write_all(&frame_bytes(&answer)).await;
            let _ = send.finish();
        });
    }
}

async fn store_frame(hub: &Arc<Hub>, bytes: &[u8]) -> ReplicaFrame {
    let refused = |reason: String| ReplicaFrame::Refused { reason };
    let mut dec = FrameDecoder::new(MAX_REPLICA_FRAME);
    dec.push(bytes);
    let (from, entries, live) = match dec.next_frame::<ReplicaFrame>() {
        Ok(Some(ReplicaFrame::Append { from, entries })) => (from, entries, true),
        Ok(Some(ReplicaFrame::Handoff { from, entries })) => (from, entries, false),
        Ok(Some(ReplicaFrame::Breadcrumbs { from, crumbs })) => {
            return store_breadcrumbs(hub, &from, crumbs).await;
        }
        Ok(Some(ReplicaFrame::FetchBreadcrumbs { from, ids })) => {
            if ids.len() > MAX_FETCH_IDS {
                return refused(format!(
                    "{} deliveries asked for; at most {MAX_FETCH_IDS}",
                    ids.len()
                ));
            }
            let mut crumbs = Vec::new();
            for id in ids {
                crumbs.extend(handoff_breadcrumbs(hub, id).await);
            }
            debug!(%from, breadcrumbs = crumbs.len(), "sent breadcrumbs for a takeover");
            let me = hub.cluster().map_or_else(String::new, |c| c.me.clone());
            return ReplicaFrame::Breadcrumbs { from: me, crumbs };
        }
        Ok(Some(ReplicaFrame::Fetch { from, ids })) => {
            let mut out = Vec::new();
            for id in ids {
                if let Some(e) = full_log(hub, id).await {
                    out.push(e);
                }
            }
            debug!(%from, deliveries = out.len(), "sent copies for a takeover");
            return match serde_json::to_vec(&out) {
                Ok(entries) => ReplicaFrame::Entries { entries },
                Err(e) => refused(e.to_string()),
            };
        }
        Ok(_) => return refused("expected append or fetch".into()),
        Err(e) => return refused(e.to_string()),
    };
    let entries: Vec<ReplicaEntry> = match serde_json::from_slice(&entries) {
        Ok(e) => e,
        Err(e) => return refused(format!("entries: {e}")),
    };
    // Fencing (live replication only): a delivery this hub serves as its owner is not
    // written by another hub; the sender's view is stale (or ours is) and its write fails.
    let mut fenced: Vec<DeliveryId> = Vec::new();
    let entries: Vec<ReplicaEntry> = match hub.cluster() {
        Some(cluster) if live => entries
            .into_iter()
            .filter(|e| {
                let serving =
                    cluster.is_mine(e.delivery_id) && hub.snapshot(e.delivery_id).is_some();
                if serving {
                    fenced.push(e.delivery_id);
                }
                !serving
            })
            .collect(),
        _ => entries,
    };
    let store = hub.store().clone();
    let stored = {
        let entries = entries.clone();
        tokio::task::spawn_blocking(move || store.apply_replica_checked(&entries, live)).await
    };
    let conflicts = match stored {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return refused(e.to_string()),
        Err(e) => return refused(e.to_string()),
    };
    if !conflicts.is_empty() {
        warn!(%from, deliveries = ?conflicts, live, "copy holds other events under seqs we hold");
        if let Some(c) = hub.cluster() {
            c.metrics.conflicts.inc_by(conflicts.len() as u64);
        }
        if live {
            fenced.extend(conflicts.iter().copied());
        }
    }
    let entries: Vec<ReplicaEntry> = entries
        .into_iter()
        .filter(|e| !fenced.contains(&e.delivery_id))
        .collect();
    let n = entries.len() as u64;
    debug!(%from, entries = n, "stored replica entries");
    if let Some(c) = hub.cluster() {
        c.metrics.received.inc_by(n);
    }
    // A delivery we own but do not serve yet is loaded (a hand-off); one we serve is reloaded
    // only when the copy is newer than what we serve (we took over a stale copy).
    if let Some(cluster) = hub.cluster() {
        let reload = |e: &ReplicaEntry| {
            let newest = e.events.last().map_or(0, |ev| ev.event_seq);
            match hub.snapshot(e.delivery_id) {
                Some(s) => newest > s.last_event_seq,
                None => cluster.is_mine(e.delivery_id),
            }
        };
        // Plain replication (the common case) never waits for a takeover in progress.
        if entries.iter().any(reload) {
            let _one = cluster.takeover_lock.lock().await;
            for e in entries.iter().filter(|e| reload(e)) {
                if load_into_core(hub, e.delivery_id).await {
                    debug!(delivery_id = %e.delivery_id, "loaded a delivery handed to us");
                }
            }
        }
    }
    if fenced.is_empty() {
        ReplicaFrame::Ack
    } else {
        debug!(%from, deliveries = ?fenced, "fenced entries from another hub");
        ReplicaFrame::Fenced { ids: fenced }
    }
}

/// Stores breadcrumbs a peer sent or answered with (idempotent); implausible ones are counted
/// in `hub_breadcrumbs_received_rejected_total` and dropped. Returns how many were stored.
async fn keep_peer_breadcrumbs(hub: &Arc<Hub>, crumbs: Vec<Breadcrumb>) -> Result<u64, String> {
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
async fn store_breadcrumbs(hub: &Arc<Hub>, from: &str, crumbs: Vec<Breadcrumb>) -> ReplicaFrame {
    match keep_peer_breadcrumbs(hub, crumbs).await {
        Ok(stored) => {
            debug!(%from, breadcrumbs = stored, "stored replica breadcrumbs");
            ReplicaFrame::Ack
        }
        Err(reason) => ReplicaFrame::Refused { reason },
    }
}

/// Copies breadcrumbs to `to` and counts them as replicated or not (best effort).
async fn copy_breadcrumbs(
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
async fn handoff_breadcrumbs(hub: &Arc<Hub>, id: DeliveryId) -> Vec<Breadcrumb> {
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

/// Reads `id` from the local log into the live core (replacing what it held).
async fn load_into_core(hub: &Arc<Hub>, id: DeliveryId) -> bool {
    let store = hub.store().clone();
    match tokio::task::spawn_blocking(move || store.load_delivery(id)).await {
        Ok(Ok(Some(rec))) => {
            hub.restore(rec);
            true
        }
        Ok(Ok(None)) => false,
        Ok(Err(e)) => {
            warn!(delivery_id = %id, error = %e, "delivery not loaded");
            false
        }
        Err(e) => {
            warn!(delivery_id = %id, error = %e, "delivery not loaded");
            false
        }
    }
}

/// A delivery's whole durable state, as a hand-off entry.
async fn full_log(hub: &Arc<Hub>, id: DeliveryId) -> Option<ReplicaEntry> {
    let store = hub.store().clone();
    let read = tokio::task::spawn_blocking(move || {
        let rec = store.load_delivery(id)?;
        let proof = store.proof(id)?;
        let devices = store
            .devices()?
            .into_iter()
            .filter(|(d, _)| *d == id)
            .map(|(_, t)| t)
            .collect::<Vec<_>>();
        Ok::<_, crate::durable::store::StoreError>(rec.map(|r| ReplicaEntry {
            delivery_id: id,
            record: Some(r.record),
            events: r.events,
            idempotency: r.idempotency,
            proofs: proof.into_iter().collect(),
            devices,
        }))
    })
    .await;
    match read {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            warn!(delivery_id = %id, error = %e, "delivery log not read");
            None
        }
        Err(e) => {
            warn!(delivery_id = %id, error = %e, "delivery log not read");
            None
        }
    }
}

/// The URL a consumer of `id` should reconnect to at `owner`.
pub(crate) fn consumer_redirect_url(owner: &HubInfo, id: DeliveryId, webtransport: bool) -> String {
    if webtransport {
        format!("https://{}/api/v1/tracking/{id}/wt", owner.wt_addr)
    } else {
        format!("wss://{}/api/v1/tracking/{id}/connect", owner.https_addr)
    }
}

/// Keeps ownership in step with the cluster. Every `rebalance_interval` it publishes the load;
/// on every view change (and while some hand-off is still to be retried) it walks the
/// deliveries of the local log:
///
/// - newly ours (a hub left, or we joined): fetch the newest copy from every live peer,
///   merge it into the log, load the delivery into the live core (takeover);
/// - ours with a new successor: send it the whole log;
/// - held live but owned by another hub now (it joined, or we drain): send it the whole log,
///   then redirect our consumers of it there.
///
/// `/readyz` (`ready`) turns 200 after the first pass past `join_grace_ms`: the hub has claimed
/// the deliveries it owns, so a rolling restart that waits for it moves on only then.
pub(crate) async fn run_rebalancer(
    hub: Arc<Hub>,
    cluster: Arc<HubCluster>,
    shutdown: CancellationToken,
    ready: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut announced = false;
    let mut view = cluster.node.view.clone();
    let mut every = tokio::time::interval(cluster.rebalance_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A hub that just started waits for the view to fill before claiming deliveries.
    let settle = tokio::time::Instant::now() + cluster.join_grace;
    // Per delivery: the hub we last sent its whole log to, and whether as its new owner (a
    // hand-off, followed by redirecting our consumers) or as its successor (a copy). A copy
    // sent earlier does not stand for a hand-off to the same hub: the consumers must still be
    // redirected.
    let mut sent_to: HashMap<DeliveryId, (String, bool)> = HashMap::new();
    // Deliveries we owned at the last pass (a takeover happens on becoming the owner).
    let mut owned: std::collections::HashSet<DeliveryId> = Default::default();
    let mut dirty = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            alive = view.changed() => {
                if !alive { break }
                dirty = true;
            }
            _ = every.tick() => {}
        }
        let load = hub.deliveries_held() as u64;
        cluster.node.control.set_load(load).await;
        // Deliveries a replica fenced were unloaded: ours again at this pass (if the view
        // says so) means a fresh takeover, which merges the other hub's newer copy.
        let fenced: Vec<DeliveryId> = hub.take_fenced();
        if !fenced.is_empty() {
            for id in &fenced {
                owned.remove(id);
                sent_to.remove(id);
            }
            dirty = true;
        }
        if !dirty {
            continue;
        }
        let settled = tokio::time::Instant::now() >= settle;
        let draining_seen = cluster
            .node
            .view
            .live_hubs()
            .iter()
            .any(|h| h.id == cluster.me && h.draining);
        let store = hub.store().clone();
        let ids = match tokio::task::spawn_blocking(move || store.delivery_ids()).await {
            Ok(Ok(ids)) => ids,
            Ok(Err(e)) => {
                warn!(error = %e, "delivery ids not read");
                continue;
            }
            Err(_) => continue,
        };
        dirty = !settled;
        let mut outstanding = 0usize;
        let mut now_owned = std::collections::HashSet::new();
        let mut takeovers = Vec::new();
        let mut sends: Vec<(DeliveryId, HubInfo, HubInfo)> = Vec::new();
        for id in ids {
            let owners = cluster.node.view.owners_of(id, 2);
            let Some(owner) = owners.first() else {
                continue;
            };
            let live = hub.snapshot(id).is_some();
            if owner.id == cluster.me {
                if !settled {
                    continue;
                }
                now_owned.insert(id);
                if !owned.contains(&id) && !live {
                    takeovers.push(id);
                }
                if let Some(succ) = owners.get(1) {
                    sends.push((id, succ.clone(), owner.clone()));
                }
            } else if live {
                sends.push((id, owner.clone(), owner.clone()));
            }
        }
        owned = now_owned;
        if !takeovers.is_empty() {
            let _one = cluster.takeover_lock.lock().await;
            take_over(&hub, &cluster, &takeovers, false).await;
        }
        for (id, target, owner) in sends {
            let moving = owner.id != cluster.me;
            if sent_to.get(&id) == Some(&(target.id.clone(), moving)) {
                continue;
            }
            outstanding += usize::from(moving);
            let Some(entry) = full_log(&hub, id).await else {
                continue;
            };
            match cluster.send(&target, std::slice::from_ref(&entry)).await {
                Ok(()) => {
                    cluster.metrics.handoffs.inc();
                    sent_to.insert(id, (target.id.clone(), moving));
                    // The history goes along, best effort (the log is what must arrive).
                    let crumbs = handoff_breadcrumbs(&hub, id).await;
                    if !crumbs.is_empty() {
                        copy_breadcrumbs(&cluster, hub.metrics(), &target, &crumbs).await;
                    }
                    if moving {
                        outstanding -= 1;
                        info!(delivery_id = %id, to = %owner.id, "handed a delivery to its new owner");
                        hub.redirect_consumers(id, |transport| {
                            consumer_redirect_url(
                                &owner,
                                id,
                                transport == crate::tracking::fanout::WEBTRANSPORT,
                            )
                        });
                    }
                }
                Err(e) => {
                    dirty = true;
                    debug!(delivery_id = %id, to = %target.id, error = %e, "hand-off failed; retrying");
                }
            }
        }
        cluster.handoff.send_replace((draining_seen, outstanding));
        if settled && !announced {
            announced = true;
            cluster
                .claimed
                .store(true, std::sync::atomic::Ordering::Release);
            if !hub.draining().is_cancelled() {
                ready.store(true, std::sync::atomic::Ordering::Relaxed);
                info!(
                    owned = owned.len(),
                    "claimed the deliveries this hub owns; ready"
                );
            }
        }
    }
    cluster.close();
}

/// Becomes the serving hub of `ids`: merges the newest copy every live peer holds into the
/// local log (a peer may have written events while we were away), then loads each into the
/// live core.
async fn take_over(
    hub: &Arc<Hub>,
    cluster: &Arc<HubCluster>,
    ids: &[DeliveryId],
    await_history: bool,
) {
    let peers: Vec<HubInfo> = cluster
        .node
        .view
        .live_hubs()
        .into_iter()
        .filter(|h| h.id != cluster.me)
        .collect();
    let fetches = peers
        .iter()
        .map(|p| async move { (p, cluster.fetch(p, ids).await) });
    for (peer, fetched) in futures::future::join_all(fetches).await {
        match fetched {
            Ok(entries) if !entries.is_empty() => {
                let store = hub.store().clone();
                let n = entries.len();
                match tokio::task::spawn_blocking(move || {
                    store.apply_replica_checked(&entries, false)
                })
                .await
                {
                    Ok(Ok(conflicts)) => {
                        if !conflicts.is_empty() {
                            warn!(peer = %peer.id, deliveries = ?conflicts, "peer copy holds other events under seqs we hold; kept ours");
                            cluster.metrics.conflicts.inc_by(conflicts.len() as u64);
                        }
                        debug!(peer = %peer.id, deliveries = n, "merged peer copies");
                    }
                    Ok(Err(e)) => warn!(peer = %peer.id, error = %e, "peer copies not stored"),
                    Err(e) => warn!(peer = %peer.id, error = %e, "peer copies not stored"),
                }
            }
            Ok(_) => {}
            Err(e) => warn!(peer = %peer.id, error = %e, "could not fetch copies for a takeover"),
        }
    }
    for id in ids {
        if hub.snapshot(*id).is_none() && load_into_core(hub, *id).await {
            info!(delivery_id = %id, "took over a delivery");
            cluster.metrics.takeovers.inc();
        }
    }
    // The history comes after: in the background for the rebalancer's bulk takeovers (serving
    // the deliveries does not wait for it), before answering for a request's single one.
    let fetch = fetch_history(hub.clone(), cluster.clone(), peers, ids.to_vec());
    if await_history {
        fetch.await;
    } else {
        tokio::spawn(fetch);
    }
}

/// Merges the breadcrumbs every peer holds of `ids` into the local history (after a takeover:
/// the positions stored by whoever served the deliveries while this hub did not).
async fn fetch_history(
    hub: Arc<Hub>,
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

/// Request paths call this first: a delivery this hub owns but does not hold yet (ownership
/// just moved here) is taken over on the spot, so the request does not fail during the
/// moment between the view changing and the rebalancer's pass. `false`: this hub has just
/// started and not claimed its deliveries yet; the request should be answered with 503
/// (retry) rather than from a possibly stale local copy.
pub(crate) async fn ensure_loaded(hub: &Arc<Hub>, id: DeliveryId) -> bool {
    let Some(cluster) = hub.cluster() else {
        return true;
    };
    if hub.snapshot(id).is_some() || !cluster.is_mine(id) {
        return true;
    }
    // Just started: the peers that hold the newest copy may not be in the view yet.
    if !cluster.claimed.load(std::sync::atomic::Ordering::Acquire) {
        return false;
    }
    let _one = cluster.takeover_lock.lock().await;
    if hub.snapshot(id).is_none() {
        // A request is waiting (a tracking page, a history read): it gets the history too.
        take_over(hub, cluster, &[id], true).await;
    }
    true
}

/// Whether the connection's (CA-verified) client certificate is a hub's (`OU=hub`): edges
/// hold cluster certificates too, but only hubs may write into another hub's log.
pub(crate) fn peer_is_hub(conn: &quinn::Connection) -> bool {
    conn.peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| {
            let leaf = chain.first()?;
            certs::CertSummary::from_der(leaf, "peer hub").ok()
        })
        .is_some_and(|c| c.subject.split(", ").any(|part| part == "OU=hub"))
}

/// Tracing span for a replica connection.
pub(crate) fn span(remote: SocketAddr) -> tracing::Span {
    tracing::info_span!("replica_link", remote = %remote)
}

/// Runs [`serve`] in its own span.
pub(crate) fn spawn_serve(conn: quinn::Connection, hub: Arc<Hub>) {
    let span = span(conn.remote_address());
    tokio::spawn(serve(conn, hub).instrument(span));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::deliveries::SideRecord;
    use protocol::consumer::StatusEvent;

    #[test]
    fn a_hub_config_with_a_cluster_section_parses_and_validates() {
        let text = r#"
hub_id = "hub-eu-1"

[cluster]
node_id = "hub-eu-1"
role = "hub"
region = "eu-north"
seeds = ["10.0.0.11:7946"]

[cluster.gossip]
bind_addr = "0.0.0.0:7946"
advertise_addr = "10.0.0.11:7946"

[cluster_hub]
advertise_link = "hub-eu-1.example:7443"
advertise_webtransport = "hub-eu-1.example:4434"
advertise_https = "hub-eu-1.example:9443"
replica_ack_timeout_ms = 2000
"#;
        let config: crate::HubConfig = toml::from_str(text).expect("parse");
        config.validate().expect("valid");
        let published = Published::new(
            &config.cluster_hub,
            "0.0.0.0:7443".parse().expect("addr"),
            "0.0.0.0:4434".parse().expect("addr"),
            "0.0.0.0:9443".parse().expect("addr"),
        );
        assert_eq!(published.link, "hub-eu-1.example:7443");
        assert_eq!(published.https, "hub-eu-1.example:9443");
        let mut edge = config.clone();
        if let Some(c) = edge.cluster.as_mut() {
            c.role = cluster::Role::Edge;
        }
        assert!(edge.validate().is_err(), "a hub joins as a hub");
        let mut zero = config;
        zero.cluster_hub.replica_ack_timeout_ms = 0;
        assert!(zero.validate().is_err());
    }

    #[test]
    fn a_log_entry_replicates_its_idempotency_key_proof_and_devices() {
        let device = notify::DeviceToken::new(notify::Platform::Fcm, "phone").expect("token");
        let e = LogEntry {
            delivery_id: DeliveryId(4),
            record: None,
            events: vec![StatusEvent {
                delivery_id: DeliveryId(4),
                event_seq: 7,
                status: protocol::status::DeliveryStatus::Cancelled,
                ts_ms: 1,
                source: "api".into(),
                metadata: serde_json::json!({"why": "test"}),
            }],
            idempotency_key: Some("k".into()),
            side: vec![SideRecord::Device(device.clone())],
            generation: 1,
        };
        let r = ReplicaEntry::from(&e);
        assert_eq!(r.idempotency, vec![("k".to_owned(), 7)]);
        assert_eq!(r.devices, vec![device]);
        // JSON inside the postcard frame round-trips free-form metadata.
        let frame = frame_bytes(&ReplicaFrame::Append {
            from: "hub-a".into(),
            entries: serde_json::to_vec(std::slice::from_ref(&r)).expect("json"),
        });
        let mut dec = FrameDecoder::new(MAX_REPLICA_FRAME);
        dec.push(&frame);
        match dec.next_frame::<ReplicaFrame>().expect("decode") {
            Some(ReplicaFrame::Append { entries, .. }) => {
                let back: Vec<ReplicaEntry> = serde_json::from_slice(&entries).expect("json");
                assert_eq!(back, vec![r]);
            }
            other => panic!("{other:?}"),
        }
    }

    fn crumb(lat: f64, lng: f64) -> Breadcrumb {
        Breadcrumb {
            delivery_id: DeliveryId(9),
            ts_ms: 1_700_000_000_000,
            lat,
            lng,
            heading_deg: 90.0,
            speed_mps: 8.0,
            accuracy_m: 5.0,
        }
    }

    #[test]
    fn breadcrumb_frames_round_trip_and_implausible_crumbs_are_refused() {
        let crumbs = vec![crumb(60.17, 24.94), crumb(60.18, 24.95)];
        let frame = frame_bytes(&ReplicaFrame::Breadcrumbs {
            from: "hub-a".into(),
            crumbs: crumbs.clone(),
        });
        let mut dec = FrameDecoder::new(MAX_REPLICA_FRAME);
        dec.push(&frame);
        match dec.next_frame::<ReplicaFrame>().expect("decode") {
            Some(ReplicaFrame::Breadcrumbs { from, crumbs: back }) => {
                assert_eq!(from, "hub-a");
                assert_eq!(back, crumbs);
            }
            other => panic!("{other:?}"),
        }
        assert!(crumb_is_valid(&crumb(60.17, 24.94)));
        for (lat, lng) in [
            (f64::NAN, 0.0),
            (0.0, f64::INFINITY),
            (91.0, 0.0),
            (0.0, -180.5),
        ] {
            assert!(!crumb_is_valid(&crumb(lat, lng)), "{lat},{lng}");
        }
    }

    proptest::proptest! {
        /// The replica link's decoder (peers are authenticated, but a bug or a corrupted
        /// peer must not bring a hub down) never panics on arbitrary bytes, whole or split.
        #[test]
        fn replica_frame_decoding_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            split in 0usize..512,
        ) {
            let split = split.min(bytes.len());
            let mut dec = FrameDecoder::new(MAX_REPLICA_FRAME);
            for chunk in [&bytes[..split], &bytes[split..]] {
                dec.push(chunk);
                while let Ok(Some(_)) = dec.next_frame::<ReplicaFrame>() {}
            }
        }
    }
}
