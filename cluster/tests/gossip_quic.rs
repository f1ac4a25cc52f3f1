//! Real nodes on 127.0.0.1 port 0: foca and chitchat over the mTLS QUIC gossip channel, with
//! certificates from a dev cluster CA; a node with another CA's certificate (or none) cannot
//! join; control-plane keys reach the other hubs and drive placement.

use std::future::Future;
use std::time::Duration;

use certs::{DevPki, NodeRole};
use cluster::{
    spawn_node, ClusterConfig, ClusterNode, ControlConfig, GossipConfig, GossipTls, Profile, Role,
    GOSSIP_ALPN,
};
use protocol::DeliveryId;
use testkit::TestDir;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(15);

fn tls(pki: &DevPki, name: &str) -> GossipTls {
    tls_as(pki, name, NodeRole::Hub)
}

fn tls_as(pki: &DevPki, name: &str, role: NodeRole) -> GossipTls {
    let node = pki
        .issue_node(
            name,
            &["127.0.0.1".to_owned(), "localhost".to_owned()],
            role,
        )
        .expect("issue node cert");
    GossipTls {
        chain: node.cert_chain().expect("chain"),
        key: node.private_key().expect("key"),
        roots: vec![pki.ca_cert_der()],
    }
}

fn config(id: &str, role: Role, seeds: Vec<std::net::SocketAddr>) -> ClusterConfig {
    config_with(id, role, seeds, Profile::Fast)
}

fn config_with(
    id: &str,
    role: Role,
    seeds: Vec<std::net::SocketAddr>,
    profile: Profile,
) -> ClusterConfig {
    ClusterConfig {
        node_id: id.into(),
        role,
        region: "eu".into(),
        seeds,
        profile,
        expected_nodes: 4,
        gossip: GossipConfig {
            bind_addr: ([127, 0, 0, 1], 0).into(),
            reconnect_backoff_ms: 100,
            ..GossipConfig::default()
        },
        control: ControlConfig {
            cluster_id: "trackline-eu".into(),
            gossip_interval_ms: 50,
            ..ControlConfig::default()
        },
        bind_identity_to_certificate: true,
        publish: [(
            cluster::keys::ADDR_LINK.to_owned(),
            format!("{id}.example:7443"),
        )]
        .into(),
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after [`DEADLINE`].
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !cond().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn member_ids(node: &ClusterNode) -> Vec<String> {
    let mut ids: Vec<String> = node
        .membership
        .members()
        .into_iter()
        .map(|m| m.id)
        .collect();
    ids.sort();
    ids
}

fn hub_ids(node: &ClusterNode) -> Vec<String> {
    node.view.live_hubs().into_iter().map(|h| h.id).collect()
}

struct Cluster {
    _dir: TestDir,
    pki: DevPki,
    shutdown: CancellationToken,
    hubs: Vec<(ClusterNode, CancellationToken)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Three hubs joined through the first one, converged on membership and control state.
async fn three_hubs(name: &str) -> Cluster {
    let dir = TestDir::new(&format!("cluster-{name}"));
    let pki = DevPki::load_or_create(&dir).expect("pki");
    let shutdown = CancellationToken::new();
    let mut hubs = Vec::new();
    let mut seeds = Vec::new();
    for i in 1..=3 {
        let id = format!("hub-{i}");
        let token = shutdown.child_token();
        let node = spawn_node(
            config(&id, Role::Hub, seeds.clone()),
            tls(&pki, &id),
            token.clone(),
        )
        .await
        .expect("spawn node");
        if seeds.is_empty() {
            seeds.push(node.gossip.advertise_addr());
        }
        hubs.push((node, token));
    }
    let want = ["hub-1", "hub-2", "hub-3"];
    for (node, _) in &hubs {
        let me = node.membership.identity().id;
        let others: Vec<&str> = want.iter().copied().filter(|h| *h != me).collect();
        wait_until(
            &format!("{me} sees the other hubs in membership and control"),
            || async { member_ids(node) == others && hub_ids(node) == want },
        )
        .await;
    }
    Cluster {
        _dir: dir,
        pki,
        shutdown,
        hubs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_join_over_mtls_quic_and_see_each_other() {
    let c = three_hubs("join").await;
    let (h1, _) = &c.hubs[0];
    // Control-plane info travelled too.
    let h3 = h1
        .control
        .hubs()
        .into_iter()
        .find(|h| h.id == "hub-3")
        .expect("hub-3 in control plane");
    assert_eq!(h3.link_addr, "hub-3.example:7443");
    assert_eq!(h3.region, "eu");
    assert_eq!(h3.gossip_addr, c.hubs[2].0.gossip.advertise_addr());
    assert!(h1.gossip.metrics().sent.get() > 0);
    assert_eq!(h1.gossip.metrics().rejected_handshakes.get(), 0);

    let mut registry = prometheus_client::registry::Registry::default();
    h1.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode metrics");
    assert!(text.contains("cluster_membership_members 2"), "{text}");
    assert!(
        text.contains("cluster_membership_up_events_total 2"),
        "{text}"
    );
    assert!(
        text.contains("cluster_gossip_messages_sent_total"),
        "{text}"
    );
    assert!(
        text.contains("cluster_gossip_rejected_handshakes_total 0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_a_certificate_from_another_ca_cannot_join() {
    let c = three_hubs("rogue").await;
    let (h1, _) = &c.hubs[0];
    let rogue_dir = TestDir::new("rogue-ca");
    let rogue_pki = DevPki::load_or_create(&rogue_dir).expect("rogue pki");
    let rogue = spawn_node(
        config("rogue", Role::Hub, vec![h1.gossip.advertise_addr()]),
        tls(&rogue_pki, "rogue"),
        c.shutdown.child_token(),
    )
    .await
    .expect("spawn rogue");

    // The rogue keeps trying (seed announces, chitchat gossip) and keeps failing.
    wait_until(
        "the rogue's handshakes fail and hub-1 refuses them",
        || async {
            rogue.gossip.metrics().connect_failures.get() >= 2
                && h1.gossip.metrics().rejected_handshakes.get() >= 1
        },
    )
    .await;
    // hub-1 cannot reach the rogue either: the rogue's server certificate is not trusted.
    let before = h1.gossip.metrics().connect_failures.get();
    h1.gossip.send(
        cluster::Channel::Membership,
        rogue.gossip.advertise_addr(),
        b"hello",
    );
    wait_until("hub-1 fails to connect to the rogue", || async {
        h1.gossip.metrics().connect_failures.get() > before
    })
    .await;

    assert!(
        member_ids(&rogue).is_empty(),
        "rogue sees {:?}",
        member_ids(&rogue)
    );
    assert!(rogue.control.hubs().iter().all(|h| h.id == "rogue"));
    assert_eq!(rogue.gossip.metrics().received.get(), 0);
    for (node, _) in &c.hubs {
        assert!(!member_ids(node).contains(&"rogue".to_owned()));
        assert!(!hub_ids(node).contains(&"rogue".to_owned()));
        assert!(node.control.hubs().iter().all(|h| h.id != "rogue"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_a_certificate_is_refused() {
    let c = three_hubs("nocert").await;
    let h1 = &c.hubs[0].0;
    let client = certs::client_config_with_roots(
        vec![c.pki.ca_cert_der()],
        &[GOSSIP_ALPN],
        certs::TlsFor::Quic,
    )
    .expect("client config");
    let client = certs::quinn_client_config(client).expect("quinn client");
    let mut endpoint =
        quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("client endpoint");
    endpoint.set_default_client_config(client);
    let before = h1.gossip.metrics().rejected_handshakes.get();
    let outcome = async {
        let conn = endpoint
            .connect(h1.gossip.advertise_addr(), "127.0.0.1")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3: the client may finish first; the server then closes the connection.
        let mut packet = vec![cluster::Channel::Membership as u8];
        packet.extend_from_slice(b"not a member");
        let _ = conn.send_datagram(packet.into());
        Err::<(), String>(conn.closed().await.to_string())
    };
    let err = tokio::time::timeout(DEADLINE, outcome)
        .await
        .expect("connection should be refused within the deadline")
        .expect_err("connection must not succeed");
    assert!(!err.is_empty());
    wait_until("hub-1 counts the refused handshake", || async {
        h1.gossip.metrics().rejected_handshakes.get() > before
    })
    .await;
    endpoint.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_set_on_one_hub_is_seen_by_the_others() {
    let c = three_hubs("load").await;
    c.hubs[1].0.control.set_load(42).await;
    for (node, _) in &c.hubs {
        wait_until("hub-2's load reaches every hub", || async {
            node.control
                .hubs()
                .iter()
                .any(|h| h.id == "hub-2" && h.load == 42)
        })
        .await;
    }
    assert_eq!(
        c.hubs[0]
            .0
            .control
            .get("hub-2", cluster::keys::LOAD)
            .await
            .as_deref(),
        Some("42")
    );
}

/// A delivery whose owner is `hub` in `node`'s view.
fn delivery_owned_by(node: &ClusterNode, hub: &str) -> DeliveryId {
    (0..10_000)
        .map(DeliveryId)
        .find(|d| node.view.owner_of(*d).is_some_and(|h| h.id == hub))
        .expect("some delivery is owned by the hub")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_hub_gets_no_new_deliveries_and_gets_them_back_when_it_stops() {
    let c = three_hubs("drain").await;
    let d = delivery_owned_by(&c.hubs[0].0, "hub-2");
    // Every node agrees on the owner.
    for (node, _) in &c.hubs {
        assert_eq!(
            node.view.owner_of(d).map(|h| h.id).as_deref(),
            Some("hub-2")
        );
    }
    c.hubs[1].0.control.set_draining(true).await;
    for (node, _) in &c.hubs {
        wait_until("delivery moves off the draining hub", || async {
            node.view.owner_of(d).is_some_and(|h| h.id != "hub-2")
        })
        .await;
        // Still live (it finishes its work), just not placeable.
        assert!(hub_ids(node).contains(&"hub-2".to_owned()));
        assert!(node.view.owners_of(d, 3).iter().all(|h| h.id != "hub-2"));
    }
    c.hubs[1].0.control.set_draining(false).await;
    for (node, _) in &c.hubs {
        wait_until("delivery returns after draining stops", || async {
            node.view.owner_of(d).is_some_and(|h| h.id == "hub-2")
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_that_leaves_loses_its_deliveries_to_the_others_and_peers_get_down_events() {
    let c = three_hubs("leave").await;
    let d = delivery_owned_by(&c.hubs[0].0, "hub-3");
    let mut events = c.hubs[0].0.membership.subscribe();
    c.hubs[2].1.cancel();
    for (node, _) in &c.hubs[..2] {
        wait_until("hub-3 leaves the live hubs", || async {
            !hub_ids(node).contains(&"hub-3".to_owned())
        })
        .await;
        let owner = node.view.owner_of(d).expect("an owner");
        assert_ne!(owner.id, "hub-3");
    }
    let down = tokio::time::timeout(DEADLINE, async {
        loop {
            match events.recv().await {
                Ok(cluster::MemberEvent::Down(n)) if n.id == "hub-3" => return n,
                Ok(_) => continue,
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("down event for hub-3");
    assert_eq!(down.role, Role::Hub);
    tokio::time::timeout(DEADLINE, c.hubs[2].0.closed())
        .await
        .expect("hub-3 shuts down completely");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_is_announced_not_left_to_failure_detection() {
    let dir = TestDir::new("graceful");
    let pki = DevPki::load_or_create(&dir).expect("pki");
    let shutdown = CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    let a = spawn_node(
        config_with("hub-a", Role::Hub, vec![], Profile::Lan),
        tls(&pki, "hub-a"),
        shutdown.child_token(),
    )
    .await
    .expect("hub-a");
    let b_token = shutdown.child_token();
    let b = spawn_node(
        config_with(
            "hub-b",
            Role::Hub,
            vec![a.gossip.advertise_addr()],
            Profile::Lan,
        ),
        tls(&pki, "hub-b"),
        b_token.clone(),
    )
    .await
    .expect("hub-b");
    wait_until("hub-a and hub-b see each other", || async {
        member_ids(&a) == ["hub-b"] && member_ids(&b) == ["hub-a"]
    })
    .await;
    let mut events = a.membership.subscribe();
    let left_at = tokio::time::Instant::now();
    b_token.cancel();
    loop {
        match tokio::time::timeout(DEADLINE, events.recv()).await {
            Ok(Ok(cluster::MemberEvent::Down(n))) if n.id == "hub-b" => break,
            Ok(Ok(_)) => continue,
            other => panic!("no down event for hub-b: {other:?}"),
        }
    }
    // With the LAN profile, failure detection needs a probe period (1 s) plus the suspicion
    // timeout (4 s); an announced leave arrives in one message.
    let took = left_at.elapsed();
    assert!(took < Duration::from_secs(3), "down after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_whose_certificate_names_another_node_or_role_is_not_a_member() {
    let c = three_hubs("impersonate").await;
    let (h1, _) = &c.hubs[0];
    // A valid cluster certificate, but for "mallory", used by a node calling itself hub-9;
    // and an edge certificate used by a node claiming to be a hub.
    let mallory = spawn_node(
        config("hub-9", Role::Hub, vec![h1.gossip.advertise_addr()]),
        tls(&c.pki, "mallory"),
        c.shutdown.child_token(),
    )
    .await
    .expect("spawn mallory");
    let fake_hub = spawn_node(
        config("hub-8", Role::Hub, vec![h1.gossip.advertise_addr()]),
        tls_as(&c.pki, "hub-8", NodeRole::Edge),
        c.shutdown.child_token(),
    )
    .await
    .expect("spawn fake hub");
    wait_until("hub-1 drops the impersonators' packets", || async {
        h1.membership.rejected_packets() >= 2
    })
    .await;
    // chitchat has no sender binding (it relays everyone's state), so the impostors' keys may
    // be there; placement still ignores them because foca does not list them.
    for (node, _) in &c.hubs {
        let members = member_ids(node);
        assert!(!members.contains(&"hub-9".to_owned()), "{members:?}");
        assert!(!members.contains(&"hub-8".to_owned()), "{members:?}");
        assert_eq!(hub_ids(node), ["hub-1", "hub-2", "hub-3"]);
    }
    assert!(member_ids(&mallory).is_empty());
    assert!(member_ids(&fake_hub).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restarted_on_the_same_address_is_routed_to_as_its_new_incarnation() {
    let mut c = three_hubs("restart").await;
    let (old, old_token) = c.hubs.pop().expect("hub-3");
    let h1 = &c.hubs[0].0;
    let addr = old.gossip.advertise_addr();
    let old_generation = old.membership.identity().generation;
    old_token.cancel();
    tokio::time::timeout(DEADLINE, old.closed())
        .await
        .expect("old hub-3 shuts down");
    // Dropping the last handle releases the UDP port.
    drop(old);
    wait_until("the fleet notices hub-3 left", || async {
        !hub_ids(h1).contains(&"hub-3".to_owned())
    })
    .await;

    let mut cfg = config("hub-3", Role::Hub, vec![h1.gossip.advertise_addr()]);
    cfg.gossip.bind_addr = addr;
    cfg.publish.insert(
        cluster::keys::ADDR_LINK.into(),
        "hub-3-new.example:7443".into(),
    );
    // The old endpoint's driver may take a moment to release the port.
    let start = tokio::time::Instant::now();
    let new = loop {
        match spawn_node(cfg.clone(), tls(&c.pki, "hub-3"), c.shutdown.child_token()).await {
            Ok(node) => break node,
            Err(cluster::ClusterError::Bind { .. }) if start.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("restart hub-3: {e}"),
        }
    };
    // The generation is the start time in ms, later than the old one's.
    assert!(new.membership.identity().generation > old_generation);
    for (node, _) in &c.hubs {
        wait_until("the new hub-3 is live with its new address", || async {
            node.view
                .live_hubs()
                .iter()
                .filter(|h| h.id == "hub-3")
                .map(|h| h.link_addr.clone())
                .collect::<Vec<_>>()
                == ["hub-3-new.example:7443"]
        })
        .await;
    }
}
