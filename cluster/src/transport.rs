//! The nodes' authenticated gossip channel: QUIC with mutual TLS (ALPN `trackline-gossip/1`).
//!
//! One quinn endpoint per node, on its own UDP port, acts as both client and server, so a
//! connection's remote address is the peer's gossip address. Connections are opened lazily on
//! the first message to a peer, reused by both directions, and reopened (with backoff) after
//! they die. Both sides must present a certificate issued by the cluster CA: a node without
//! one fails the handshake and none of its packets reach foca or chitchat.
//!
//! Messages are tagged with one byte ([`Channel`]) and travel as QUIC datagrams when they fit
//! (`max_datagram_size`), else on a fresh unidirectional stream each. Sending never blocks the
//! caller: a bounded queue per peer drops the newest message when full (gossip tolerates
//! loss, and a stuck peer must not stall the rest).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use quinn::{Connection, Endpoint, TransportConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info_span, Instrument};

use crate::ClusterError;

/// ALPN of the gossip channel.
pub const GOSSIP_ALPN: &[u8] = b"trackline-gossip/1";

/// Which protocol a gossip message belongs to (its first byte on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Channel {
    /// foca (SWIM) packets.
    Membership = 1,
    /// chitchat (scuttlebutt) messages.
    Control = 2,
}

/// Who a peer's certificate says it is: subject CN (the node name) and OU (its role:
/// `edge`, `hub`, `client`). Empty strings when the certificate has no such field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerCert {
    /// Subject common name.
    pub common_name: String,
    /// Subject organizational unit.
    pub unit: String,
}

impl PeerCert {
    /// Reads the names from a connection's verified peer certificate chain.
    fn of(conn: &Connection) -> PeerCert {
        let Some(chain) = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        else {
            return PeerCert::default();
        };
        let Some(leaf) = chain.first() else {
            return PeerCert::default();
        };
        match x509_parser::parse_x509_certificate(leaf.as_ref()) {
            Ok((_, cert)) => {
                let subject = cert.subject();
                fn first<'a>(
                    mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
                ) -> String {
                    it.next()
                        .and_then(|a| a.as_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                }
                PeerCert {
                    common_name: first(subject.iter_common_name()),
                    unit: first(subject.iter_organizational_unit()),
                }
            }
            Err(e) => {
                debug!(error = %e, "unparsable peer certificate");
                PeerCert::default()
            }
        }
    }
}

/// Certificate material of a cluster node (same shape as `nodekit::LoadedTls`).
pub struct GossipTls {
    /// Node certificate chain, leaf first, issued by the cluster CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Cluster CA certificate(s): peers must chain to one of these.
    pub roots: Vec<CertificateDer<'static>>,
}

impl Clone for GossipTls {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
        }
    }
}

impl std::fmt::Debug for GossipTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipTls")
            .field("chain_len", &self.chain.len())
            .field("roots_len", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// Settings of the gossip endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GossipConfig {
    /// UDP address the gossip endpoint binds (port 0 picks a free port).
    pub bind_addr: SocketAddr,
    /// Address other nodes reach this node at; defaults to the bound address. Required when
    /// binding a wildcard address such as `0.0.0.0`.
    pub advertise_addr: Option<SocketAddr>,
    /// DNS name to verify in peers' certificates. Default: the peer's IP address, so node
    /// certificates must carry their gossip IP as a SAN.
    pub server_name: Option<String>,
    /// Largest message accepted on a stream, in bytes.
    pub max_message_bytes: usize,
    /// Messages queued per peer before new ones are dropped.
    pub peer_queue: usize,
    /// A connection with no traffic for this long is closed (keep-alives run at a third of it).
    pub idle_timeout_ms: u64,
    /// Wait after a failed connection attempt before trying that peer again.
    pub reconnect_backoff_ms: u64,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            bind_addr: SocketAddr::from(([127, 0, 0, 1], 7946)),
            advertise_addr: None,
            server_name: None,
            max_message_bytes: 1 << 20,
            peer_queue: 256,
            idle_timeout_ms: 10_000,
            reconnect_backoff_ms: 500,
        }
    }
}

impl GossipConfig {
    /// Checks the settings; says what is wrong.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |reason: String| Err(ClusterError::Config(reason));
        if self.bind_addr.ip().is_unspecified() && self.advertise_addr.is_none() {
            return bad(format!(
                "gossip bind_addr {} is a wildcard address: set advertise_addr to the address peers reach this node at",
                self.bind_addr
            ));
        }
        if let Some(a) = self.advertise_addr {
            if a.ip().is_unspecified() || a.port() == 0 {
                return bad(format!(
                    "gossip advertise_addr {a} must be a concrete ip:port"
                ));
            }
        }
        if self.max_message_bytes < 2048 {
            return bad(format!(
                "gossip max_message_bytes {} is too small (min 2048)",
                self.max_message_bytes
            ));
        }
        if self.peer_queue == 0 {
            return bad("gossip peer_queue must be at least 1".into());
        }
        if self.idle_timeout_ms < 300 {
            return bad(format!(
                "gossip idle_timeout_ms {} is too small (min 300)",
                self.idle_timeout_ms
            ));
        }
        Ok(())
    }
}

/// Counters of the gossip channel (registered under `cluster_gossip_*`).
#[derive(Debug, Clone, Default)]
pub struct GossipMetrics {
    /// Messages handed to QUIC.
    pub sent: Counter,
    /// Messages received and dispatched.
    pub received: Counter,
    /// Messages dropped: peer queue full, peer unreachable, or inbox full.
    pub dropped: Counter,
    /// Outgoing connection attempts that failed (unreachable or TLS rejected).
    pub connect_failures: Counter,
    /// Incoming connections whose handshake failed (e.g. no cluster certificate).
    pub rejected_handshakes: Counter,
}

impl GossipMetrics {
    /// Registers the counters in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("cluster_gossip");
        r.register("messages_sent", "Gossip messages sent", self.sent.clone());
        r.register(
            "messages_received",
            "Gossip messages received",
            self.received.clone(),
        );
        r.register(
            "messages_dropped",
            "Gossip messages dropped (queue full, peer unreachable)",
            self.dropped.clone(),
        );
        r.register(
            "connect_failures",
            "Outgoing gossip connections that failed",
            self.connect_failures.clone(),
        );
        r.register(
            "rejected_handshakes",
            "Incoming gossip connections whose TLS handshake failed",
            self.rejected_handshakes.clone(),
        );
    }
}

type ControlInbox = mpsc::Receiver<(SocketAddr, Bytes)>;
/// foca packets with the certificate names of the connection they came on.
type MembershipInbox = mpsc::Receiver<(Arc<PeerCert>, Bytes)>;
/// Inboxes not yet taken by their consumer.
type Inboxes = (Option<MembershipInbox>, Option<ControlInbox>);

struct Inner {
    endpoint: Endpoint,
    advertise: SocketAddr,
    config: GossipConfig,
    conns: Mutex<HashMap<SocketAddr, Connection>>,
    peers: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
    membership_tx: mpsc::Sender<(Arc<PeerCert>, Bytes)>,
    control_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    metrics: GossipMetrics,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// A running gossip endpoint. Cloning shares it.
#[derive(Clone)]
pub struct GossipHandle {
    inner: Arc<Inner>,
    inboxes: Arc<Mutex<Inboxes>>,
}

impl std::fmt::Debug for GossipHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipHandle")
            .field("advertise", &self.inner.advertise)
            .finish_non_exhaustive()
    }
}

/// Capacity of each inbox (foca, chitchat) towards its consumer.
const INBOX: usize = 1024;
/// A peer task with nothing to send for this long ends.
const PEER_IDLE: Duration = Duration::from_secs(120);

/// Binds the gossip endpoint and starts accepting peers; stops when `shutdown` fires.
pub fn spawn_gossip(
    config: GossipConfig,
    tls: GossipTls,
    shutdown: CancellationToken,
) -> Result<GossipHandle, ClusterError> {
    config.validate()?;
    let mut transport = TransportConfig::default();
    let idle = Duration::from_millis(config.idle_timeout_ms);
    transport.max_idle_timeout(Some(idle.try_into().map_err(|_| {
        ClusterError::Config(format!(
            "idle_timeout_ms {} too large",
            config.idle_timeout_ms
        ))
    })?));
    transport.keep_alive_interval(Some(idle / 3));
    let transport = Arc::new(transport);

    let server = certs::mtls_server_config(
        tls.chain.clone(),
        tls.key.clone_key(),
        tls.roots.clone(),
        &[GOSSIP_ALPN],
        certs::TlsFor::Quic,
    )?;
    let mut server = certs::quinn_server_config(server)?;
    server.transport_config(transport.clone());
    let client = certs::mtls_client_config(
        tls.chain,
        tls.key,
        tls.roots,
        &[GOSSIP_ALPN],
        certs::TlsFor::Quic,
    )?;
    let mut client = certs::quinn_client_config(client)?;
    client.transport_config(transport);

    let mut endpoint =
        Endpoint::server(server, config.bind_addr).map_err(|source| ClusterError::Bind {
            addr: config.bind_addr,
            source,
        })?;
    endpoint.set_default_client_config(client);
    let local = endpoint.local_addr().map_err(|source| ClusterError::Bind {
        addr: config.bind_addr,
        source,
    })?;
    let advertise = config.advertise_addr.unwrap_or(local);

    let (membership_tx, membership_rx) = mpsc::channel(INBOX);
    let (control_tx, control_rx) = mpsc::channel(INBOX);
    let inner = Arc::new(Inner {
        endpoint,
        advertise,
        config,
        conns: Mutex::new(HashMap::new()),
        peers: Mutex::new(HashMap::new()),
        membership_tx,
        control_tx,
        metrics: GossipMetrics::default(),
        shutdown,
        tasks: TaskTracker::new(),
    });
    inner.tasks.spawn(
        accept_loop(inner.clone()).instrument(info_span!("gossip_accept", local = %advertise)),
    );
    let closer = inner.clone();
    tokio::spawn(async move {
        closer.shutdown.cancelled().await;
        closer.endpoint.close(0u32.into(), b"shutdown");
        closer.tasks.close();
    });
    Ok(GossipHandle {
        inner,
        inboxes: Arc::new(Mutex::new((Some(membership_rx), Some(control_rx)))),
    })
}

impl GossipHandle {
    /// The address peers reach this node at.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.inner.advertise
    }

    /// The counters of this endpoint.
    pub fn metrics(&self) -> &GossipMetrics {
        &self.inner.metrics
    }

    /// Takes the receiver of foca packets (once).
    pub fn take_membership_inbox(&self) -> Option<MembershipInbox> {
        self.inboxes.lock().0.take()
    }

    /// Takes the receiver of chitchat messages with the sender's gossip address (once).
    pub fn take_control_inbox(&self) -> Option<ControlInbox> {
        self.inboxes.lock().1.take()
    }

    /// Queues `payload` for `to` on `channel`; never blocks, drops when the peer's queue is full.
    pub fn send(&self, channel: Channel, to: SocketAddr, payload: &[u8]) {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return;
        }
        let mut msg = Vec::with_capacity(payload.len() + 1);
        msg.push(channel as u8);
        msg.extend_from_slice(payload);
        let msg = Bytes::from(msg);
        let mut peers = inner.peers.lock();
        if peers.get(&to).is_some_and(|tx| tx.is_closed()) {
            // Its task ended after being idle; start a new one.
            peers.remove(&to);
        }
        let tx = peers.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(inner.config.peer_queue);
            inner.tasks.spawn(
                peer_task(self.inner.clone(), to, rx)
                    .instrument(info_span!("gossip_peer", local = %inner.advertise, peer = %to)),
            );
            tx
        });
        if tx.try_send(msg).is_err() {
            inner.metrics.dropped.inc();
        }
    }

    /// Waits until every peer queue is empty (messages handed to QUIC), at most `limit`;
    /// used before shutdown so leave announcements go out.
    pub async fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let pending = {
                let peers = self.inner.peers.lock();
                peers.values().any(|tx| tx.capacity() < tx.max_capacity())
            };
            if !pending || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Resolves when the endpoint has shut down and all its tasks have ended.
    pub async fn closed(&self) {
        self.inner.shutdown.cancelled().await;
        self.inner.tasks.wait().await;
        // Bounded: a peer that never acknowledges the close would hold this for the idle
        // timeout.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            i = inner.endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let inner2 = inner.clone();
        let remote = incoming.remote_address();
        inner.tasks.spawn(
            async move {
                match incoming.await {
                    Ok(conn) => {
                        debug!("accepted gossip connection");
                        register(&inner2, conn);
                    }
                    Err(e) => {
                        inner2.metrics.rejected_handshakes.inc();
                        debug!(error = %e, "rejected gossip connection");
                    }
                }
            }
            .instrument(info_span!("gossip_incoming", local = %inner.advertise, peer = %remote)),
        );
    }
}

/// Records a live connection for reuse by senders and starts reading from it.
fn register(inner: &Arc<Inner>, conn: Connection) {
    let remote = conn.remote_address();
    inner.conns.lock().insert(remote, conn.clone());
    inner.tasks.spawn(
        read_loop(inner.clone(), conn)
            .instrument(info_span!("gossip_conn", local = %inner.advertise, peer = %remote)),
    );
}

fn live_conn(inner: &Inner, to: SocketAddr) -> Option<Connection> {
    let conns = inner.conns.lock();
    conns
        .get(&to)
        .filter(|c| c.close_reason().is_none())
        .cloned()
}

async fn peer_task(inner: Arc<Inner>, to: SocketAddr, mut rx: mpsc::Receiver<Bytes>) {
    let backoff = Duration::from_millis(inner.config.reconnect_backoff_ms);
    let server_name = inner
        .config
        .server_name
        .clone()
        .unwrap_or_else(|| to.ip().to_string());
    let mut retry_at = Instant::now();
    loop {
        let msg = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
            // Nothing to send for a while (e.g. the peer is gone for good): end the task;
            // `send` starts a new one if needed.
            _ = tokio::time::sleep(PEER_IDLE) => return,
        };
        let conn = match live_conn(&inner, to) {
            Some(c) => c,
            None if Instant::now() < retry_at => {
                inner.metrics.dropped.inc();
                continue;
            }
            None => match connect(&inner, to, &server_name).await {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "gossip connect failed");
                    inner.metrics.connect_failures.inc();
                    inner.metrics.dropped.inc();
                    retry_at = Instant::now() + backoff;
                    continue;
                }
            },
        };
        send_on(&inner, &conn, msg);
    }
}

async fn connect(
    inner: &Arc<Inner>,
    to: SocketAddr,
    server_name: &str,
) -> Result<Connection, String> {
    let connecting = inner
        .endpoint
        .connect(to, server_name)
        .map_err(|e| e.to_string())?;
    let conn = tokio::select! {
        _ = inner.shutdown.cancelled() => return Err("shutting down".into()),
        c = connecting => c.map_err(|e| e.to_string())?,
    };
    debug!("opened gossip connection");
    register(inner, conn.clone());
    Ok(conn)
}

fn send_on(inner: &Arc<Inner>, conn: &Connection, msg: Bytes) {
    let fits = conn.max_datagram_size().is_some_and(|max| msg.len() <= max);
    if fits {
        match conn.send_datagram(msg) {
            Ok(()) => {
                inner.metrics.sent.inc();
            }
            Err(e) => {
                debug!(error = %e, "gossip datagram not sent");
                inner.metrics.dropped.inc();
            }
        }
        return;
    }
    // Too big for a datagram: one unidirectional stream per message.
    let conn = conn.clone();
    let inner2 = inner.clone();
    inner.tasks.spawn(async move {
        let result = async {
            let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
            s.write_all(&msg).await.map_err(|e| e.to_string())?;
            s.finish().map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(()) => {
                inner2.metrics.sent.inc();
            }
            Err(e) => {
                debug!(error = %e, "gossip stream not sent");
                inner2.metrics.dropped.inc();
            }
        }
    });
}

async fn read_loop(inner: Arc<Inner>, conn: Connection) {
    let from = conn.remote_address();
    let peer = Arc::new(PeerCert::of(&conn));
    let max = inner.config.max_message_bytes;
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            d = conn.read_datagram() => match d {
                Ok(d) => dispatch(&inner, from, &peer, d),
                Err(e) => {
                    debug!(error = %e, "gossip connection ended");
                    break;
                }
            },
            s = conn.accept_uni() => match s {
                Ok(mut s) => {
                    let (inner2, peer2) = (inner.clone(), peer.clone());
                    inner.tasks.spawn(async move {
                        match s.read_to_end(max).await {
                            Ok(buf) => dispatch(&inner2, from, &peer2, Bytes::from(buf)),
                            Err(e) => {
                                debug!(error = %e, "gossip stream read failed");
                                inner2.metrics.dropped.inc();
                            }
                        }
                    });
                }
                Err(e) => {
                    debug!(error = %e, "gossip connection ended");
                    break;
                }
            },
        }
    }
    let mut conns = inner.conns.lock();
    if conns
        .get(&from)
        .is_some_and(|c| c.stable_id() == conn.stable_id())
    {
        conns.remove(&from);
    }
}

fn dispatch(inner: &Inner, from: SocketAddr, peer: &Arc<PeerCert>, msg: Bytes) {
    let Some(&tag) = msg.first() else {
        inner.metrics.dropped.inc();
        return;
    };
    let body = msg.slice(1..);
    let delivered = if tag == Channel::Membership as u8 {
        inner.membership_tx.try_send((peer.clone(), body)).is_ok()
    } else if tag == Channel::Control as u8 {
        inner.control_tx.try_send((from, body)).is_ok()
    } else {
        debug!(tag, "unknown gossip channel");
        false
    };
    if delivered {
        inner.metrics.received.inc();
    } else {
        inner.metrics.dropped.inc();
    }
}
