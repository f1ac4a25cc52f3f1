//! The hubs' control plane: chitchat (scuttlebutt) key-value state per node, gossiped over the
//! authenticated QUIC channel.
//!
//! Each node writes only its own keys ([`keys`]); every node of the region sees everyone's.
//! Hubs publish where they listen, their load and whether they drain; edges join the same
//! chitchat cluster without hub keys, to read them.
//!
//! chitchat 0.13 keeps its wire codec private (`ChitchatEnvelope::serialize` is
//! `pub(crate)`), so a custom [`chitchat::transport::Transport`] cannot encode messages
//! itself. [`QuicTransport`] therefore lets chitchat's own public `UdpSocket` do the encoding
//! and decoding through a private loopback socket pair, and carries the resulting bytes over
//! the mTLS QUIC gossip channel ([`crate::transport`]). Nothing of chitchat ever leaves the
//! host unauthenticated; see [`LoopbackCodec`] for how stray local datagrams are rejected.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatEnvelope, ChitchatId, ChitchatMessage,
    FailureDetectorConfig, NodeState, ProtocolVersion,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};

use crate::membership::{NodeIdentity, Role};
use crate::transport::{Channel, GossipHandle};
use crate::ClusterError;

/// Keys a node writes into its own chitchat state.
///
/// They carry no node id: chitchat state is already per node and a node can only write its
/// own, so an id in the key would be redundant and could be forged.
pub mod keys {
    /// `edge` or `hub`.
    pub const ROLE: &str = "role";
    /// Region the node serves.
    pub const REGION: &str = "region";
    /// Hub: `host:port` of the edge link (QUIC, ALPN `trackline-hub/1`).
    pub const ADDR_LINK: &str = "hub.addr_link";
    /// Hub: `host:port` of the consumer WebTransport endpoint.
    pub const ADDR_WT: &str = "hub.addr_wt";
    /// Hub: `host:port` of the HTTPS API.
    pub const ADDR_HTTPS: &str = "hub.addr_https";
    /// Hub: load, an unsigned integer (e.g. deliveries owned); higher is busier.
    pub const LOAD: &str = "hub.load";
    /// Hub: `true` while draining; draining hubs get no new deliveries.
    pub const DRAINING: &str = "hub.draining";
}

/// A hub as the control plane describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubInfo {
    /// Node id (same as in membership).
    pub id: String,
    /// Region it serves.
    pub region: String,
    /// Its gossip address.
    pub gossip_addr: SocketAddr,
    /// Its process incarnation (same value as `NodeIdentity::generation` in membership).
    pub generation: u64,
    /// Edge link address (`host:port`), empty if not published yet.
    pub link_addr: String,
    /// WebTransport address (`host:port`), empty if not published yet.
    pub wt_addr: String,
    /// HTTPS address (`host:port`), empty if not published yet.
    pub https_addr: String,
    /// Published load.
    pub load: u64,
    /// Whether the hub drains (takes no new deliveries).
    pub draining: bool,
}

impl AsRef<str> for HubInfo {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl HubInfo {
    /// Reads a hub from a chitchat node state; `None` if the node is not a hub.
    fn from_state(id: &ChitchatId, state: &NodeState) -> Option<HubInfo> {
        if state.get(keys::ROLE) != Some("hub") {
            return None;
        }
        let s = |k: &str| state.get(k).unwrap_or_default().to_owned();
        Some(HubInfo {
            id: id.node_id.to_string(),
            region: s(keys::REGION),
            gossip_addr: id.gossip_advertise_addr,
            generation: id.generation_id,
            link_addr: s(keys::ADDR_LINK),
            wt_addr: s(keys::ADDR_WT),
            https_addr: s(keys::ADDR_HTTPS),
            load: state
                .get(keys::LOAD)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            draining: state.get(keys::DRAINING) == Some("true"),
        })
    }
}

/// Settings of the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// chitchat cluster id; nodes with another id are refused. One per region, e.g.
    /// `trackline-eu-north`.
    pub cluster_id: String,
    /// Interval between gossip rounds, in milliseconds.
    pub gossip_interval_ms: u64,
    /// Phi-accrual threshold above which chitchat considers a node dead.
    pub phi_threshold: f64,
    /// How long a dead node's state is kept before it is forgotten, in seconds.
    pub dead_node_grace_period_s: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            cluster_id: "trackline-dev".into(),
            gossip_interval_ms: 500,
            phi_threshold: 8.0,
            dead_node_grace_period_s: 3600,
        }
    }
}

impl ControlConfig {
    /// Checks the settings; says what is wrong.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.cluster_id.is_empty() {
            return Err(ClusterError::Config(
                "control cluster_id must not be empty".into(),
            ));
        }
        if !(10..=60_000).contains(&self.gossip_interval_ms) {
            return Err(ClusterError::Config(format!(
                "control gossip_interval_ms {} must be within 10..=60000",
                self.gossip_interval_ms
            )));
        }
        if !self.phi_threshold.is_finite() || self.phi_threshold <= 0.0 {
            return Err(ClusterError::Config(format!(
                "control phi_threshold {} must be positive",
                self.phi_threshold
            )));
        }
        Ok(())
    }
}

/// Encodes and decodes chitchat envelopes with chitchat's own (public) `UdpSocket`, through a
/// private pair of loopback sockets.
///
/// Encoding: chitchat's socket sends the envelope to our raw socket, which is `connect`ed to
/// it and so only accepts datagrams from it. Decoding: our raw socket (connected to chitchat's)
/// sends the bytes and then a sentinel (an encoded `BadCluster` message); chitchat's socket
/// skips undecodable datagrams by itself, so if the sentinel comes first the bytes were
/// invalid. Datagrams from any other local socket are ignored by source address. Calls are
/// strictly sequential (`&mut self`), so loopback order is preserved.
pub struct LoopbackCodec {
    enc_chitchat: UdpSocket,
    enc_raw: tokio::net::UdpSocket,
    enc_raw_addr: SocketAddr,
    dec_raw: tokio::net::UdpSocket,
    dec_raw_addr: SocketAddr,
    dec_chitchat: UdpSocket,
    sentinel: Vec<u8>,
    buf: Vec<u8>,
}

/// chitchat's wire magic number (first two bytes, little endian).
const CHITCHAT_MAGIC: u16 = 45_139;
/// chitchat's message type code of `BadCluster`.
const BAD_CLUSTER_TYPE: u8 = 3;

/// Largest chitchat message (chitchat's UDP payload limit).
pub const MAX_CHITCHAT_MESSAGE: usize = 65_507;

impl LoopbackCodec {
    /// Opens the four loopback sockets.
    pub async fn open() -> anyhow::Result<Self> {
        let lo: SocketAddr = ([127, 0, 0, 1], 0).into();
        let enc_chitchat = UdpSocket::open(lo).await?;
        let enc_raw = tokio::net::UdpSocket::bind(lo).await?;
        enc_raw.connect(enc_chitchat.local_addr()?).await?;
        let dec_chitchat = UdpSocket::open(lo).await?;
        let dec_raw = tokio::net::UdpSocket::bind(lo).await?;
        dec_raw.connect(dec_chitchat.local_addr()?).await?;
        let mut codec = Self {
            enc_raw_addr: enc_raw.local_addr()?,
            dec_raw_addr: dec_raw.local_addr()?,
            enc_chitchat,
            enc_raw,
            dec_raw,
            dec_chitchat,
            sentinel: Vec::new(),
            buf: vec![0u8; MAX_CHITCHAT_MESSAGE + 1],
        };
        codec.sentinel = codec
            .encode(ChitchatEnvelope {
                version: ProtocolVersion::V0,
                message: ChitchatMessage::BadCluster,
            })
            .await?;
        Ok(codec)
    }

    /// Serializes an envelope to chitchat's wire format.
    pub async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Vec<u8>> {
        self.enc_chitchat.send(self.enc_raw_addr, envelope).await?;
        let n = self
            .enc_raw
            .recv(&mut self.buf)
            .await
            .context("read encoded chitchat message")?;
        Ok(self.buf[..n].to_vec())
    }

    async fn recv_ours(&mut self) -> anyhow::Result<ChitchatEnvelope> {
        loop {
            let r = self.dec_chitchat.recv().await?;
            if r.from_addr == self.dec_raw_addr {
                return Ok(r.envelope);
            }
            debug!(from = %r.from_addr, "ignored stray datagram on the chitchat codec socket");
        }
    }

    /// Parses chitchat's wire format; `Ok(None)` if the bytes are not a valid message.
    pub async fn decode(&mut self, bytes: &[u8]) -> anyhow::Result<Option<ChitchatEnvelope>> {
        if bytes.len() > MAX_CHITCHAT_MESSAGE {
            return Ok(None);
        }
        // A `BadCluster` payload would be indistinguishable from the sentinel: decode that
        // body-less message here (header: magic u16 LE, version, type) and never loop it back.
        if bytes.get(3) == Some(&BAD_CLUSTER_TYPE) {
            let magic_ok = bytes[..2] == CHITCHAT_MAGIC.to_le_bytes();
            return Ok(match ProtocolVersion::from_code(bytes[2]) {
                Some(version) if magic_ok && bytes.len() == 4 => Some(ChitchatEnvelope {
                    version,
                    message: ChitchatMessage::BadCluster,
                }),
                _ => None,
            });
        }
        self.dec_raw.send(bytes).await?;
        self.dec_raw.send(&self.sentinel).await?;
        let first = self.recv_ours().await?;
        if first.message == ChitchatMessage::BadCluster {
            // The sentinel came first: the payload was skipped as invalid.
            return Ok(None);
        }
        // `first` is the payload; consume the sentinel.
        let _sentinel = self.recv_ours().await?;
        Ok(Some(first))
    }
}

/// chitchat transport over the mTLS QUIC gossip channel. `open` may be called once.
pub struct QuicTransport {
    gossip: GossipHandle,
}

impl QuicTransport {
    /// A transport on `gossip`; the socket it opens takes the endpoint's control inbox.
    pub fn new(gossip: GossipHandle) -> Self {
        Self { gossip }
    }
}

#[async_trait::async_trait]
impl Transport for QuicTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        if listen_addr != self.gossip.advertise_addr() {
            bail!(
                "chitchat listen_addr {listen_addr} differs from the gossip endpoint's address {}",
                self.gossip.advertise_addr()
            );
        }
        let Some(inbox) = self.gossip.take_control_inbox() else {
            bail!("the gossip endpoint's control inbox is already taken");
        };
        Ok(Box::new(QuicSocket {
            gossip: self.gossip.clone(),
            inbox,
            codec: LoopbackCodec::open().await?,
        }))
    }
}

struct QuicSocket {
    gossip: GossipHandle,
    inbox: mpsc::Receiver<(SocketAddr, Bytes)>,
    codec: LoopbackCodec,
}

#[async_trait::async_trait]
impl Socket for QuicSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.gossip.advertise_addr())
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let bytes = self.codec.encode(envelope).await?;
        self.gossip.send(Channel::Control, to, &bytes);
        Ok(SendOutcome {
            num_bytes_sent: bytes.len(),
        })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let Some((from_addr, bytes)) = self.inbox.recv().await else {
                bail!("gossip endpoint closed");
            };
            match self.codec.decode(&bytes).await? {
                Some(envelope) => {
                    return Ok(RecvOutcome {
                        from_addr,
                        envelope,
                        num_bytes_received: bytes.len(),
                    })
                }
                None => debug!(from = %from_addr, len = bytes.len(), "invalid chitchat message"),
            }
        }
    }
}

/// A running control-plane node. Cloning shares it.
#[derive(Clone)]
pub struct ControlHandle {
    chitchat: Arc<Mutex<Chitchat>>,
    hubs: watch::Receiver<Vec<HubInfo>>,
}

impl std::fmt::Debug for ControlHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlHandle")
            .field("hubs", &*self.hubs.borrow())
            .finish_non_exhaustive()
    }
}

fn hubs_of(live: &BTreeMap<ChitchatId, NodeState>) -> Vec<HubInfo> {
    let mut hubs: Vec<HubInfo> = live
        .iter()
        .filter_map(|(id, state)| HubInfo::from_state(id, state))
        .collect();
    hubs.sort_by(|a, b| a.id.cmp(&b.id));
    hubs
}

/// Starts chitchat for `me` over `gossip` with `initial` own keys (plus `role` and
/// `region`, set from `me`), gossiping with `seeds` first. Stops when `shutdown` fires.
pub async fn spawn_control(
    me: &NodeIdentity,
    config: ControlConfig,
    gossip: GossipHandle,
    seeds: Vec<SocketAddr>,
    initial: Vec<(String, String)>,
    shutdown: CancellationToken,
) -> Result<ControlHandle, ClusterError> {
    config.validate()?;
    let advertise = gossip.advertise_addr();
    let interval = Duration::from_millis(config.gossip_interval_ms);
    let chitchat_config = ChitchatConfig {
        chitchat_id: ChitchatId::new(me.id.clone(), me.generation, advertise),
        cluster_id: config.cluster_id.clone(),
        gossip_interval: interval,
        listen_addr: advertise,
        seed_nodes: seeds
            .iter()
            .filter(|s| **s != advertise)
            .map(|s| s.to_string())
            .collect(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: config.phi_threshold,
            initial_interval: interval * 2,
            dead_node_grace_period: Duration::from_secs(config.dead_node_grace_period_s),
            ..FailureDetectorConfig::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(config.dead_node_grace_period_s),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V1,
    };
    let role = match me.role {
        Role::Hub => "hub",
        Role::Edge => "edge",
    };
    let mut kv = vec![
        (keys::ROLE.to_owned(), role.to_owned()),
        (keys::REGION.to_owned(), me.region.clone()),
    ];
    kv.extend(initial);
    let transport = QuicTransport::new(gossip);
    let handle = spawn_chitchat(chitchat_config, kv, &transport)
        .await
        .map_err(|e| ClusterError::Control(format!("{e:#}")))?;
    let chitchat = handle.chitchat();
    let mut live = chitchat.lock().await.live_nodes_watcher();
    let (hubs_tx, hubs) = watch::channel(hubs_of(&live.borrow_and_update()));
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = live.changed() => {
                        if r.is_err() {
                            break;
                        }
                        let hubs = hubs_of(&live.borrow_and_update());
                        hubs_tx.send_if_modified(|old| {
                            let changed = *old != hubs;
                            *old = hubs;
                            changed
                        });
                    }
                }
            }
            let _ = handle.shutdown().await;
        }
        .instrument(info_span!("control", node = %me.id, addr = %advertise)),
    );
    Ok(ControlHandle { chitchat, hubs })
}

impl ControlHandle {
    /// Sets one of our own keys; peers see it after a gossip round or two.
    pub async fn set(&self, key: &str, value: &str) {
        self.chitchat.lock().await.self_node_state().set(key, value);
    }

    /// Publishes our load.
    pub async fn set_load(&self, load: u64) {
        self.set(keys::LOAD, &load.to_string()).await;
    }

    /// Marks us draining (or not); draining hubs get no new deliveries.
    pub async fn set_draining(&self, draining: bool) {
        self.set(keys::DRAINING, if draining { "true" } else { "false" })
            .await;
    }

    /// Reads a key of a live node by id.
    pub async fn get(&self, node_id: &str, key: &str) -> Option<String> {
        let chitchat = self.chitchat.lock().await;
        let id = chitchat
            .live_nodes()
            .find(|id| &*id.node_id == node_id)?
            .clone();
        chitchat.node_state(&id)?.get(key).map(str::to_owned)
    }

    /// Live hubs (chitchat's view, including ourselves if we are a hub), sorted by id.
    pub fn hubs(&self) -> Vec<HubInfo> {
        self.hubs.borrow().clone()
    }

    /// Watch of [`Self::hubs`]; changes when a hub appears, disappears or changes a key.
    pub fn watch_hubs(&self) -> watch::Receiver<Vec<HubInfo>> {
        self.hubs.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn(cluster: &str) -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: ProtocolVersion::V1,
            message: ChitchatMessage::Syn {
                cluster_id: cluster.into(),
                digest: Default::default(),
            },
        }
    }

    #[tokio::test]
    async fn loopback_codec_round_trips_envelopes() {
        let mut codec = LoopbackCodec::open().await.expect("open");
        for env in [
            syn("a"),
            syn("trackline-eu"),
            ChitchatEnvelope {
                version: ProtocolVersion::V0,
                message: ChitchatMessage::BadCluster,
            },
        ] {
            let bytes = codec.encode(clone_env(&env)).await.expect("encode");
            let back = codec.decode(&bytes).await.expect("decode");
            assert_eq!(back, Some(env));
        }
    }

    fn clone_env(e: &ChitchatEnvelope) -> ChitchatEnvelope {
        match &e.message {
            ChitchatMessage::Syn { cluster_id, .. } => ChitchatEnvelope {
                version: e.version,
                message: ChitchatMessage::Syn {
                    cluster_id: cluster_id.clone(),
                    digest: Default::default(),
                },
            },
            _ => ChitchatEnvelope {
                version: e.version,
                message: ChitchatMessage::BadCluster,
            },
        }
    }

    #[tokio::test]
    async fn bad_cluster_is_decoded_without_the_loopback_and_matches_chitchat() {
        let mut codec = LoopbackCodec::open().await.expect("open");
        for version in [ProtocolVersion::V0, ProtocolVersion::V1] {
            let env = ChitchatEnvelope {
                version,
                message: ChitchatMessage::BadCluster,
            };
            let bytes = codec.encode(clone_env(&env)).await.expect("encode");
            assert_eq!(bytes.len(), 4);
            assert_eq!(codec.decode(&bytes).await.expect("decode"), Some(env));
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(codec.decode(&longer).await.expect("decode"), None);
        }
        // The codec is still in step afterwards.
        let bytes = codec.encode(syn("x")).await.expect("encode");
        assert_eq!(codec.decode(&bytes).await.expect("decode"), Some(syn("x")));
    }

    #[tokio::test]
    async fn loopback_codec_rejects_garbage_and_keeps_working() {
        let mut codec = LoopbackCodec::open().await.expect("open");
        assert_eq!(codec.decode(b"garbage").await.expect("decode"), None);
        assert_eq!(codec.decode(&[]).await.expect("decode"), None);
        let mut truncated = codec.encode(syn("trackline-eu")).await.expect("encode");
        truncated.truncate(truncated.len() - 3);
        assert_eq!(codec.decode(&truncated).await.expect("decode"), None);
        let bytes = codec.encode(syn("after")).await.expect("encode");
        assert_eq!(
            codec.decode(&bytes).await.expect("decode"),
            Some(syn("after"))
        );
    }

    #[tokio::test]
    async fn loopback_codec_ignores_datagrams_from_other_local_sockets() {
        let mut codec = LoopbackCodec::open().await.expect("open");
        let intruder = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let forged = codec.encode(syn("forged")).await.expect("encode");
        let target = codec.dec_chitchat.local_addr().expect("addr");
        intruder.send_to(&forged, target).await.expect("send");
        let bytes = codec.encode(syn("real")).await.expect("encode");
        assert_eq!(
            codec.decode(&bytes).await.expect("decode"),
            Some(syn("real"))
        );
    }

    #[test]
    fn config_validation_names_the_bad_field() {
        let bad = ControlConfig {
            cluster_id: String::new(),
            ..ControlConfig::default()
        };
        assert!(bad
            .validate()
            .expect_err("empty id")
            .to_string()
            .contains("cluster_id"));
        let bad = ControlConfig {
            gossip_interval_ms: 0,
            ..ControlConfig::default()
        };
        assert!(bad
            .validate()
            .expect_err("interval")
            .to_string()
            .contains("gossip_interval_ms"));
        ControlConfig::default()
            .validate()
            .expect("default is valid");
    }
}
