//! Fleet-wide liveness: a sans-IO wrapper around foca (SWIM) with Trackline node identities.
//!
//! [`Membership`] owns a `foca::Foca` and collects everything foca wants done (packets to send,
//! timers to arm, membership changes) into [`Outputs`]; the caller drains them with
//! [`Membership::drain_outputs`] and does the IO. Foca itself keeps no clock: timers are
//! relative ("fire `after` from now"), so a simulated clock in tests and tokio's clock in
//! [`crate::driver`] drive the same code.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use foca::{Codec, Config, Foca, Notification, PostcardCodec, Runtime, Timer};
use rand_foca::rngs::StdRng;
use rand_foca::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::transport::PeerCert;
use crate::ClusterError;

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An edge PoP: accepts drivers, forwards fixes to owning hubs.
    Edge,
    /// A region hub: owns deliveries.
    Hub,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Edge => "edge",
            Role::Hub => "hub",
        })
    }
}

/// A node as the membership layer knows it.
///
/// `addr` is the node's gossip address (its mTLS QUIC gossip endpoint). `generation` and `bump`
/// tell incarnations of the same node apart: a restarted process gets a later `generation`
/// (its start time in unix milliseconds), and foca renews `bump` (`+ 1`) when the node must
/// rejoin after being declared down. When two identities claim one address, the later
/// generation wins, then the later bump, so a restarted or rejoining node always replaces the
/// incarnation the cluster remembers (foca discards the loser).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Node name, unique in the fleet (e.g. `hub-eu-1`).
    pub id: String,
    /// Gossip address other nodes reach this node at.
    pub addr: SocketAddr,
    /// Edge or hub.
    pub role: Role,
    /// Region the node serves (e.g. `eu-north`).
    pub region: String,
    /// Process incarnation: start time in unix milliseconds (see the type docs).
    pub generation: u64,
    /// Rejoin counter within a generation (see the type docs).
    pub bump: u16,
}

impl NodeIdentity {
    /// A new identity; `generation` must grow across restarts of the node (use the start
    /// time in unix milliseconds).
    pub fn new(
        id: impl Into<String>,
        addr: SocketAddr,
        role: Role,
        region: impl Into<String>,
        generation: u64,
    ) -> Self {
        Self {
            id: id.into(),
            addr,
            role,
            region: region.into(),
            generation,
            bump: 0,
        }
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        if self.generation != adversary.generation {
            return self.generation > adversary.generation;
        }
        // Serial-number arithmetic, so a wrapped bump still wins over the old one.
        let diff = self.bump.wrapping_sub(adversary.bump);
        diff != 0 && diff < u16::MAX / 2
    }
}

/// A change in who is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// The node is (again) a live member.
    Up(NodeIdentity),
    /// The node was declared down (failed or left).
    Down(NodeIdentity),
}

/// Timer event foca asks to be handed back later.
pub type MembershipTimer = Timer<NodeIdentity>;

/// Work produced by the core, for the driver to carry out.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Packets to send: destination and payload.
    pub packets: Vec<(NodeIdentity, Vec<u8>)>,
    /// Timers to arm: fire `.1` after `.0` has elapsed.
    pub timers: Vec<(Duration, MembershipTimer)>,
    /// Membership changes, in order.
    pub events: Vec<MemberEvent>,
    /// Changes in how the cluster sees this node, in order.
    pub self_events: Vec<SelfEvent>,
}

/// A change in how the cluster sees this node (foca's notifications about itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfEvent {
    /// Known by at least one active member.
    Active,
    /// No active member knows it (alone, or cut off).
    Idle,
    /// Declared down and unable to rejoin (not with [`NodeIdentity`], which renews itself).
    Defunct,
    /// The cluster had declared this node down (it was unreachable, or falsely suspected);
    /// it rejoined with a renewed identity.
    Rejoined,
}

/// Foca's timing profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Same datacenter / low latency: 1 s probe period.
    #[default]
    Lan,
    /// Across regions: 5 s probe period, longer suspicion.
    Wan,
    /// For tests: 100 ms probe period, ~0.6 s to declare a node down.
    Fast,
}

/// Largest foca packet; kept under QUIC's minimum datagram size (1200 bytes minus headers)
/// so every packet fits one datagram even before path MTU discovery.
pub const MAX_PACKET_BYTES: usize = 1100;

/// Builds foca's config for `profile` and an expected cluster size.
pub fn foca_config(profile: Profile, expected_nodes: u32) -> Config {
    let size = NonZeroU32::new(expected_nodes.max(1)).unwrap_or(NonZeroU32::MIN);
    let mut config = match profile {
        Profile::Lan => Config::new_lan(size),
        Profile::Wan => Config::new_wan(size),
        Profile::Fast => {
            let mut c = Config::new_lan(size);
            c.probe_period = Duration::from_millis(100);
            c.probe_rtt = Duration::from_millis(50);
            c.suspect_to_down_after = Duration::from_millis(500);
            if let Some(p) = c.periodic_gossip.as_mut() {
                p.frequency = Duration::from_millis(50);
            }
            if let Some(p) = c.periodic_announce.as_mut() {
                p.frequency = Duration::from_millis(500);
            }
            if let Some(p) = c.periodic_announce_to_down_members.as_mut() {
                p.frequency = Duration::from_millis(1000);
            }
            c
        }
    };
    config.max_packet_size =
        std::num::NonZeroUsize::new(MAX_PACKET_BYTES).unwrap_or(config.max_packet_size);
    config
}

#[derive(Default)]
struct Collect {
    out: Outputs,
    rejoined_as: Option<NodeIdentity>,
}

impl Runtime<NodeIdentity> for Collect {
    fn notify(&mut self, notification: Notification<'_, NodeIdentity>) {
        match notification {
            Notification::MemberUp(id) => self.out.events.push(MemberEvent::Up(id.clone())),
            Notification::MemberDown(id) => self.out.events.push(MemberEvent::Down(id.clone())),
            Notification::Rename(old, new) => {
                self.out.events.push(MemberEvent::Down(old.clone()));
                self.out.events.push(MemberEvent::Up(new.clone()));
            }
            Notification::Rejoin(me) => {
                self.rejoined_as = Some(me.clone());
                self.out.self_events.push(SelfEvent::Rejoined);
            }
            Notification::Active => self.out.self_events.push(SelfEvent::Active),
            Notification::Idle => self.out.self_events.push(SelfEvent::Idle),
            Notification::Defunct => self.out.self_events.push(SelfEvent::Defunct),
        }
    }

    fn send_to(&mut self, to: NodeIdentity, data: &[u8]) {
        self.out.packets.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<NodeIdentity>, after: Duration) {
        self.out.timers.push((after, event));
    }
}

/// The sans-IO SWIM core of one node.
pub struct Membership {
    foca: Foca<NodeIdentity, PostcardCodec, StdRng, foca::NoCustomBroadcast>,
    rt: Collect,
    me: NodeIdentity,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("me", &self.me)
            .field("members", &self.foca.num_members())
            .finish()
    }
}

fn foca_err(what: &'static str) -> impl FnOnce(foca::Error) -> ClusterError {
    move |e| ClusterError::Membership {
        what,
        reason: e.to_string(),
    }
}

impl Membership {
    /// A core for `me`; `seed` makes foca's random choices reproducible (tests).
    pub fn new(me: NodeIdentity, config: Config, seed: u64) -> Self {
        let foca = Foca::new(
            me.clone(),
            config,
            StdRng::seed_from_u64(seed),
            PostcardCodec,
        );
        Self {
            foca,
            rt: Collect::default(),
            me,
        }
    }

    /// This node's current identity (it changes if foca had to rejoin with a renewed one).
    pub fn identity(&self) -> &NodeIdentity {
        &self.me
    }

    fn after_call(&mut self) {
        if let Some(me) = self.rt.rejoined_as.take() {
            self.me = me;
        }
    }

    /// Feeds a packet received from the network.
    pub fn handle_data(&mut self, data: &[u8]) -> Result<(), ClusterError> {
        let r = self
            .foca
            .handle_data(data, &mut self.rt)
            .map_err(foca_err("handle packet"));
        self.after_call();
        r
    }

    /// Feeds a packet that arrived on a connection authenticated as `peer`, after checking
    /// that the packet's sender is that node: its id must be the certificate's common name and
    /// its role the certificate's unit (`edge` / `hub`). Stops a node with a valid cluster
    /// certificate from speaking for another one.
    pub fn handle_data_from(&mut self, peer: &PeerCert, data: &[u8]) -> Result<(), ClusterError> {
        let header: foca::Header<NodeIdentity> =
            PostcardCodec
                .decode_header(data)
                .map_err(|e| ClusterError::Membership {
                    what: "decode packet header",
                    reason: e.to_string(),
                })?;
        let src = &header.src;
        if src.id != peer.common_name || src.role.to_string() != peer.unit {
            return Err(ClusterError::Impersonation {
                claimed: format!("{} ({})", src.id, src.role),
                certificate: format!("{} ({})", peer.common_name, peer.unit),
            });
        }
        self.handle_data(data)
    }

    /// Feeds a timer that came due.
    pub fn handle_timer(&mut self, timer: MembershipTimer) -> Result<(), ClusterError> {
        let r = self
            .foca
            .handle_timer(timer, &mut self.rt)
            .map_err(foca_err("handle timer"));
        self.after_call();
        r
    }

    /// Asks `peer` to let us join (a seed node, or anyone already in the cluster).
    pub fn announce(&mut self, peer: NodeIdentity) -> Result<(), ClusterError> {
        self.foca
            .announce(peer, &mut self.rt)
            .map_err(foca_err("announce"))
    }

    /// Declares ourselves down and tells a few members, for a clean exit.
    pub fn leave(&mut self) -> Result<(), ClusterError> {
        self.foca
            .leave_cluster(&mut self.rt)
            .map_err(foca_err("leave cluster"))
    }

    /// The other nodes foca currently considers active (alive or suspect).
    pub fn members(&self) -> Vec<NodeIdentity> {
        self.foca.iter_members().map(|m| m.id().clone()).collect()
    }

    /// Takes what the core produced since the last call.
    pub fn drain_outputs(&mut self) -> Outputs {
        std::mem::take(&mut self.rt.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn id(bump: u16) -> NodeIdentity {
        NodeIdentity {
            id: "hub-1".into(),
            addr: "127.0.0.1:7000".parse().expect("addr"),
            role: Role::Hub,
            region: "eu".into(),
            generation: 1_700_000_000_000,
            bump,
        }
    }

    #[test]
    fn renewed_identity_wins_the_address_conflict_even_across_wraparound() {
        for bump in [0u16, 1, 1000, u16::MAX - 1, u16::MAX] {
            let old = id(bump);
            let new = old.renew().expect("renew");
            assert!(new.win_addr_conflict(&old), "bump {bump}");
            assert!(!old.win_addr_conflict(&new), "bump {bump}");
        }
    }

    #[test]
    fn later_generation_wins_whatever_the_bumps() {
        let old = id(5);
        let mut restarted = id(0);
        restarted.generation += 1;
        assert!(restarted.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&restarted));
        let renewed_old = old.renew().expect("renew");
        assert!(restarted.win_addr_conflict(&renewed_old));
    }

    #[test]
    fn packet_from_a_node_whose_certificate_names_someone_else_is_refused() {
        let mut a = Membership::new(id(1), foca_config(Profile::Fast, 3), 1);
        let mut b_id = id(1);
        b_id.id = "hub-2".into();
        b_id.addr = "127.0.0.1:7001".parse().expect("addr");
        let mut b = Membership::new(b_id, foca_config(Profile::Fast, 3), 2);
        b.announce(a.identity().clone()).expect("announce");
        let packet = b.drain_outputs().packets.remove(0).1;
        let cert = |cn: &str, ou: &str| PeerCert {
            common_name: cn.into(),
            unit: ou.into(),
        };
        for wrong in [
            cert("hub-3", "hub"),
            cert("hub-2", "edge"),
            cert("hub-2", "client"),
        ] {
            let err = a
                .handle_data_from(&wrong, &packet)
                .expect_err("must refuse");
            assert!(matches!(err, ClusterError::Impersonation { .. }), "{err}");
            assert!(a.drain_outputs().packets.is_empty());
        }
        a.handle_data_from(&cert("hub-2", "hub"), &packet)
            .expect("matching certificate");
        assert_eq!(a.members().len(), 1);
    }

    #[test]
    fn identity_round_trips_through_postcard() {
        let me = id(7);
        let bytes = postcard::to_allocvec(&me).expect("encode");
        let back: NodeIdentity = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, me);
    }

    #[test]
    fn announce_produces_a_packet_to_the_peer() {
        let mut m = Membership::new(id(1), foca_config(Profile::Fast, 3), 1);
        let mut peer = id(2);
        peer.id = "hub-2".into();
        peer.addr = "127.0.0.1:7001".parse().expect("addr");
        m.announce(peer.clone()).expect("announce");
        let out = m.drain_outputs();
        assert_eq!(out.packets.len(), 1);
        assert_eq!(out.packets[0].0, peer);
        assert!(out.packets[0].1.len() <= MAX_PACKET_BYTES);
    }
}
