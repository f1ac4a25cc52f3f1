//! One call to join the cluster: gossip endpoint + membership + control plane + view.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::control::{spawn_control, ControlConfig, ControlHandle};
use crate::driver::{spawn_membership, MembershipHandle};
use crate::membership::{foca_config, Membership, NodeIdentity, Profile, Role};
use crate::transport::{spawn_gossip, GossipConfig, GossipHandle, GossipTls};
use crate::view::ClusterView;
use crate::ClusterError;

/// How long shutdown waits for queued gossip (the leave announcement) to reach QUIC.
const LEAVE_FLUSH: Duration = Duration::from_millis(500);
/// How long the endpoint stays open after that, for QUIC to put the last datagrams on the wire.
const LEAVE_LINGER: Duration = Duration::from_millis(50);

/// Cluster settings of a node (a section of the edge's or hub's config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Node name, unique in the fleet; must match the node certificate's purpose.
    pub node_id: String,
    /// Edge or hub.
    pub role: Role,
    /// Region the node serves; placement only considers hubs of this region.
    pub region: String,
    /// Gossip addresses of a few nodes to join through (others' `gossip.advertise_addr`).
    pub seeds: Vec<SocketAddr>,
    /// foca timing profile: `lan`, `wan` or `fast` (tests).
    pub profile: Profile,
    /// Expected number of nodes, tunes foca's dissemination and suspicion times.
    pub expected_nodes: u32,
    /// The gossip endpoint.
    pub gossip: GossipConfig,
    /// The chitchat control plane.
    pub control: ControlConfig,
    /// Accept a foca packet only when its sender id and role match the subject CN and OU of
    /// the connection's certificate (node certificates are issued per node name).
    pub bind_identity_to_certificate: bool,
    /// Keys to publish at start (hubs: `hub.addr_link`, `hub.addr_wt`, `hub.addr_https`).
    pub publish: BTreeMap<String, String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: "node-1".into(),
            role: Role::Hub,
            region: "dev".into(),
            seeds: Vec::new(),
            profile: Profile::Lan,
            expected_nodes: 8,
            gossip: GossipConfig::default(),
            control: ControlConfig::default(),
            bind_identity_to_certificate: true,
            publish: BTreeMap::new(),
        }
    }
}

impl ClusterConfig {
    /// Checks the settings; says what is wrong.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.node_id.is_empty() {
            return Err(ClusterError::Config(
                "cluster node_id must not be empty".into(),
            ));
        }
        if self.region.is_empty() {
            return Err(ClusterError::Config(
                "cluster region must not be empty".into(),
            ));
        }
        if self.expected_nodes == 0 {
            return Err(ClusterError::Config(
                "cluster expected_nodes must be at least 1".into(),
            ));
        }
        self.gossip.validate()?;
        self.control.validate()
    }
}

/// A node's handles into the cluster.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// The authenticated gossip endpoint.
    pub gossip: GossipHandle,
    /// foca membership.
    pub membership: MembershipHandle,
    /// chitchat control plane.
    pub control: ControlHandle,
    /// Combined view for placement.
    pub view: ClusterView,
}

/// Binds the gossip endpoint and starts membership and the control plane; everything stops
/// (after announcing our departure) when `shutdown` fires.
pub async fn spawn_node(
    config: ClusterConfig,
    tls: GossipTls,
    shutdown: CancellationToken,
) -> Result<ClusterNode, ClusterError> {
    config.validate()?;
    // The gossip channel outlives membership by a moment, so our leave announcement is sent.
    let gossip_shutdown = CancellationToken::new();
    let gossip = spawn_gossip(config.gossip.clone(), tls, gossip_shutdown.clone())?;
    // The incarnation of this process: a restart must get a later one (wall clock, IO edge).
    let generation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let me = NodeIdentity::new(
        config.node_id.clone(),
        gossip.advertise_addr(),
        config.role,
        config.region.clone(),
        generation,
    );
    let core = Membership::new(
        me.clone(),
        foca_config(config.profile, config.expected_nodes),
        rand::random(),
    );
    // Membership and control stop on `shutdown`, or here if starting one of them fails.
    let local = shutdown.child_token();
    let started = async {
        let membership = spawn_membership(
            core,
            gossip.clone(),
            config.seeds.clone(),
            config.bind_identity_to_certificate,
            local.clone(),
        )?;
        let control = spawn_control(
            &me,
            config.control.clone(),
            gossip.clone(),
            config.seeds.clone(),
            config.publish.clone().into_iter().collect(),
            local.clone(),
        )
        .await?;
        Ok::<_, ClusterError>((membership, control))
    }
    .await;
    let (membership, control) = match started {
        Ok(started) => started,
        Err(e) => {
            local.cancel();
            gossip_shutdown.cancel();
            return Err(e);
        }
    };
    let (m, g) = (membership.clone(), gossip.clone());
    tokio::spawn(async move {
        shutdown.cancelled().await;
        m.stopped().await;
        g.flush(LEAVE_FLUSH).await;
        // Datagrams handed to QUIC go out within a few ms; closing drops what is still queued.
        tokio::time::sleep(LEAVE_LINGER).await;
        gossip_shutdown.cancel();
    });
    let view = ClusterView::new(membership.clone(), control.clone(), config.region);
    Ok(ClusterNode {
        gossip,
        membership,
        control,
        view,
    })
}

impl ClusterNode {
    /// Registers the gossip (`cluster_gossip_*`) and membership (`cluster_membership_*`)
    /// metrics in the node's registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.gossip.metrics().register(registry);
        self.membership.metrics().register(registry);
    }

    /// Resolves once the node has left and its gossip endpoint has closed (after `shutdown`).
    pub async fn closed(&self) {
        self.membership.stopped().await;
        self.gossip.closed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_config_example_parses_and_validates() {
        let text = r#"
node_id = "hub-eu-1"
role = "hub"
region = "eu-north"
seeds = ["10.0.0.11:7946", "10.0.0.12:7946"]
profile = "lan"
expected_nodes = 16

[publish]
"hub.addr_link" = "hub-eu-1.example:7443"
"hub.addr_https" = "hub-eu-1.example:9443"

[gossip]
bind_addr = "0.0.0.0:7946"
advertise_addr = "10.0.0.11:7946"

[control]
cluster_id = "trackline-eu-north"
"#;
        let config: ClusterConfig = toml::from_str(text).expect("parse");
        config.validate().expect("valid");
        assert_eq!(config.role, Role::Hub);
        assert_eq!(config.publish.len(), 2);
        ClusterConfig::default()
            .validate()
            .expect("default is valid");
    }

    #[test]
    fn wildcard_bind_without_advertise_address_is_refused() {
        let mut config = ClusterConfig::default();
        config.gossip.bind_addr = "0.0.0.0:7946".parse().expect("addr");
        let err = config.validate().expect_err("must be refused").to_string();
        assert!(err.contains("advertise_addr"), "{err}");
    }
}
