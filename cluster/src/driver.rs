//! The async driver of the membership core: feeds it gossip packets and due timers, sends its
//! packets over the gossip channel, and publishes the member list and events.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::membership::{MemberEvent, Membership, MembershipTimer, NodeIdentity, Role, SelfEvent};
use crate::transport::{Channel, GossipHandle};
use crate::ClusterError;

/// How often the driver re-announces to the seeds while it knows no other member.
const SEED_RETRY: Duration = Duration::from_millis(500);

/// A running membership node. Cloning shares it.
#[derive(Clone, Debug)]
pub struct MembershipHandle {
    me: Arc<RwLock<NodeIdentity>>,
    members: watch::Receiver<Vec<NodeIdentity>>,
    events: broadcast::Sender<MemberEvent>,
    stopped: CancellationToken,
    metrics: MembershipMetrics,
}

/// Metrics of the membership layer (registered under `cluster_membership_*`).
#[derive(Debug, Clone, Default)]
pub struct MembershipMetrics {
    /// Other nodes currently alive or suspect.
    pub members: Gauge,
    /// `Up` events seen.
    pub up: Counter,
    /// `Down` events seen.
    pub down: Counter,
    /// Packets dropped because the sender did not match its connection's certificate.
    pub rejected_packets: Counter,
    /// Times the cluster declared this node down while it was running (it then rejoins).
    pub declared_down: Counter,
}

impl MembershipMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("cluster_membership");
        r.register(
            "members",
            "Other nodes alive or suspect",
            self.members.clone(),
        );
        r.register("up_events", "Nodes that came up", self.up.clone());
        r.register("down_events", "Nodes declared down", self.down.clone());
        r.register(
            "rejected_packets",
            "Packets whose sender did not match its connection's certificate",
            self.rejected_packets.clone(),
        );
        r.register(
            "declared_down",
            "Times the cluster declared this running node down (unreachable or falsely suspected); it rejoins with a renewed identity",
            self.declared_down.clone(),
        );
    }
}

impl MembershipHandle {
    /// Packets dropped because their sender did not match its connection's certificate.
    pub fn rejected_packets(&self) -> u64 {
        self.metrics.rejected_packets.get()
    }

    /// The metrics of this membership node.
    pub fn metrics(&self) -> &MembershipMetrics {
        &self.metrics
    }

    /// Resolves when the driver has stopped (after handing its leave packets to the gossip
    /// channel, when it stopped because of shutdown).
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }

    /// Our own identity.
    pub fn identity(&self) -> NodeIdentity {
        self.me.read().clone()
    }

    /// Other nodes currently alive (or suspected but not yet down).
    pub fn members(&self) -> Vec<NodeIdentity> {
        self.members.borrow().clone()
    }

    /// Watch of [`Self::members`], for waiting on a change.
    pub fn watch_members(&self) -> watch::Receiver<Vec<NodeIdentity>> {
        self.members.clone()
    }

    /// Membership change notifications (Up / Down), from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    /// Live hubs, by identity.
    pub fn hubs(&self) -> Vec<NodeIdentity> {
        self.members
            .borrow()
            .iter()
            .filter(|m| m.role == Role::Hub)
            .cloned()
            .collect()
    }
}

/// An identity that only carries a seed's address: foca accepts an announce addressed to any
/// identity with its address.
fn seed_identity(addr: SocketAddr) -> NodeIdentity {
    NodeIdentity {
        id: String::new(),
        addr,
        role: Role::Edge,
        region: String::new(),
        generation: 0,
        bump: 0,
    }
}

struct Due {
    at: Instant,
    seq: u64,
    timer: MembershipTimer,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Driver {
    core: Membership,
    gossip: GossipHandle,
    timers: BinaryHeap<Reverse<Due>>,
    seq: u64,
    me: Arc<RwLock<NodeIdentity>>,
    members_tx: watch::Sender<Vec<NodeIdentity>>,
    events: broadcast::Sender<MemberEvent>,
    metrics: MembershipMetrics,
}

impl Driver {
    fn flush(&mut self) {
        let out = self.core.drain_outputs();
        let now = Instant::now();
        for (to, packet) in out.packets {
            self.gossip.send(Channel::Membership, to.addr, &packet);
        }
        for (after, timer) in out.timers {
            self.seq += 1;
            self.timers.push(Reverse(Due {
                at: now + after,
                seq: self.seq,
                timer,
            }));
        }
        for e in &out.self_events {
            match e {
                SelfEvent::Rejoined => {
                    self.metrics.declared_down.inc();
                    warn!("the cluster had declared this node down (unreachable, or falsely suspected); rejoined with a renewed identity");
                }
                SelfEvent::Defunct => {
                    self.metrics.declared_down.inc();
                    error!("the cluster declared this node down and it cannot rejoin");
                }
                SelfEvent::Idle => info!("no active member knows this node"),
                SelfEvent::Active => debug!("known by an active member"),
            }
        }
        if !out.events.is_empty() {
            for e in out.events {
                match &e {
                    MemberEvent::Up(n) => {
                        self.metrics.up.inc();
                        info!(node = %n.id, addr = %n.addr, role = %n.role, "member up");
                    }
                    MemberEvent::Down(n) => {
                        self.metrics.down.inc();
                        info!(node = %n.id, addr = %n.addr, role = %n.role, "member down");
                    }
                }
                let _ = self.events.send(e);
            }
            let mut members = self.core.members();
            members.sort_by(|a, b| a.id.cmp(&b.id));
            self.metrics.members.set(members.len() as i64);
            self.members_tx.send_replace(members);
        }
        let current = self.core.identity();
        if *self.me.read() != *current {
            *self.me.write() = current.clone();
        }
    }

    fn log(&self, r: Result<(), ClusterError>) {
        if let Err(e) = r {
            debug!(error = %e, "membership input ignored");
        }
    }
}

/// Starts the membership driver for `core` over `gossip`, announcing to `seeds` until some
/// member answers. Leaves the cluster (telling a few members) when `shutdown` fires.
///
/// With `verify_peers`, a packet is only accepted when its sender's id and role match the
/// certificate of the connection it came on ([`Membership::handle_data_from`]).
pub fn spawn_membership(
    core: Membership,
    gossip: GossipHandle,
    seeds: Vec<SocketAddr>,
    verify_peers: bool,
    shutdown: CancellationToken,
) -> Result<MembershipHandle, ClusterError> {
    let metrics = MembershipMetrics::default();
    let mut inbox = gossip
        .take_membership_inbox()
        .ok_or(ClusterError::InboxTaken("membership"))?;
    let me = Arc::new(RwLock::new(core.identity().clone()));
    let (members_tx, members) = watch::channel(Vec::new());
    let (events, _) = broadcast::channel(256);
    let stopped = CancellationToken::new();
    let stopped_handle = stopped.clone();
    let seeds: Vec<SocketAddr> = seeds
        .into_iter()
        .filter(|s| *s != core.identity().addr)
        .collect();
    let span = info_span!("membership", node = %core.identity().id, addr = %core.identity().addr);
    let mut d = Driver {
        core,
        gossip,
        timers: BinaryHeap::new(),
        seq: 0,
        me: me.clone(),
        members_tx,
        events: events.clone(),
        metrics: metrics.clone(),
    };
    tokio::spawn(
        async move {
            let mut seed_retry = tokio::time::interval(SEED_RETRY);
            loop {
                let next_timer = d.timers.peek().map(|Reverse(t)| t.at);
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let r = d.core.leave();
                        d.log(r);
                        d.flush();
                        break;
                    }
                    packet = inbox.recv() => match packet {
                        Some((peer, p)) => {
                            let r = if verify_peers {
                                d.core.handle_data_from(&peer, &p)
                            } else {
                                d.core.handle_data(&p)
                            };
                            if let Err(ClusterError::Impersonation { claimed, certificate }) = &r {
                                // Loud for the first few, then quiet: a misconfigured node repeats.
                                if d.metrics.rejected_packets.inc() < 10 {
                                    warn!(%claimed, %certificate, "dropped gossip packet from an impersonating peer");
                                } else {
                                    debug!(%claimed, %certificate, "dropped gossip packet from an impersonating peer");
                                }
                            } else {
                                d.log(r);
                            }
                        }
                        None => break,
                    },
                    _ = async {
                        match next_timer {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        let now = Instant::now();
                        while d.timers.peek().is_some_and(|Reverse(t)| t.at <= now) {
                            if let Some(Reverse(due)) = d.timers.pop() {
                                let r = d.core.handle_timer(due.timer);
                                d.log(r);
                            }
                        }
                    }
                    _ = seed_retry.tick(), if !seeds.is_empty() => {
                        if d.core.members().is_empty() {
                            for s in &seeds {
                                let r = d.core.announce(seed_identity(*s));
                                d.log(r);
                            }
                        }
                    }
                }
                d.flush();
            }
            info!("membership driver stopped");
            stopped.cancel();
        }
        .instrument(span),
    );
    Ok(MembershipHandle {
        me,
        members,
        events,
        stopped: stopped_handle,
        metrics,
    })
}
