//! The edge in a cluster, over real sockets: fixes reach the owning hub of each declared
//! delivery (rendezvous placement), move when a hub leaves, and a draining edge redirects its
//! drivers to a peer edge and refuses new ones.

mod common;

use common::*;
use protocol::api::{ApiError, IngestResult, DELIVERIES_HEADER};
use protocol::wire::{CloseCode, DriverToEdge, EdgeToDriver, Fix, RoutedFix};
use protocol::{DeliveryId, DriverId};

const LOCATIONS: &str = "/api/v1/tracking/locations";

/// The first delivery id from `from` that `owner` owns among `hubs`.
fn delivery_owned_by(owner: &str, hubs: &[&str], from: u64) -> DeliveryId {
    (from..)
        .map(DeliveryId)
        .find(|d| cluster::placement::owner(*d, hubs) == Some(&owner))
        .expect("some delivery")
}

/// Starts the edge in the cluster of `hubs` and waits until it has an uplink up to each.
async fn edge_in_cluster(setup: &Setup, hubs: &[ClusterHub]) -> edge_node::EdgeHandle {
    let config = setup.cluster_edge_config("edge-test", vec![hubs[0].gossip_addr()]);
    let edge = edge_node::spawn(config).await.expect("edge starts");
    let m = edge.metrics();
    let n = hubs.len() as i64;
    wait_until("an uplink up to every hub", || {
        m.uplinks_active().get() == n && m.hub_connected().get() == n
    })
    .await;
    edge
}

/// Receives the next fix at `hub`, checking it is `driver`'s.
async fn next_of(hub: &mut ClusterHub, driver: u64) -> Fix {
    let f: RoutedFix = hub.hub.next_fix().await;
    assert_eq!(f.driver_id, DriverId(driver), "at {}", hub.id);
    f.fix
}

#[tokio::test]
async fn each_fix_reaches_exactly_the_owner_hubs_of_the_drivers_deliveries() {
    let setup = Setup::new("cluster-owners");
    let mut hubs = three_cluster_hubs(&setup).await;
    let edge = edge_in_cluster(&setup, &hubs).await;
    let ids = ["hub-a", "hub-b", "hub-c"];
    let (d_a, d_b, d_c) = (
        delivery_owned_by("hub-a", &ids, 1000),
        delivery_owned_by("hub-b", &ids, 1000),
        delivery_owned_by("hub-c", &ids, 1000),
    );

    // A QUIC driver on duty for a delivery of hub-a and one of hub-b.
    let mut driver = DriverConn::hello(&setup, edge.quic_addr(), &setup.driver_token(42)).await;
    assert!(matches!(
        driver.welcome().await,
        EdgeToDriver::Welcome { .. }
    ));
    let fixes = track(6, 1);
    driver
        .send_frame(&DriverToEdge::OnDuty {
            deliveries: vec![d_a, d_b],
        })
        .await;
    // The first fix on the stream, after the declaration: its arrival at both owners proves
    // the declaration applies (datagrams could overtake the stream).
    driver
        .send_frame(&DriverToEdge::Fixes(vec![fixes[0]]))
        .await;
    for i in [0, 1] {
        assert_eq!(next_of(&mut hubs[i], 42).await, fixes[0]);
    }
    for f in &fixes[1..] {
        driver.send_fix(f).await;
    }
    for i in [0, 1] {
        let mut got = vec![fixes[0]];
        while got.len() < fixes.len() {
            got.push(next_of(&mut hubs[i], 42).await);
        }
        assert_eq!(got, fixes, "every fix, in order, at {}", hubs[i].id);
    }
    let m = edge.metrics();
    assert_eq!(m.routed("hub-a").get(), 6);
    assert_eq!(m.routed("hub-b").get(), 6);
    assert_eq!(m.routed("hub-c").get(), 0, "hub-c owns neither delivery");
    assert!(hubs[2].hub.fixes.try_recv().is_err());

    // The HTTPS fallback routes by the deliveries header the same way.
    let client = https_client(&setup);
    let url = format!("https://127.0.0.1:{}{LOCATIONS}", edge.https_addr().port());
    let posted = track(2, 0);
    let resp = client
        .post(&url)
        .bearer_auth(setup.driver_token(43))
        .header(DELIVERIES_HEADER, format!("{d_c}"))
        .body(json_fixes(&posted))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.json::<IngestResult>().await.expect("json").accepted, 2);
    for f in &posted {
        assert_eq!(next_of(&mut hubs[2], 43).await, *f);
    }
    assert_eq!(m.routed("hub-a").get(), 6);
    assert_eq!(m.routed("hub-b").get(), 6);
    let resp = client
        .post(&url)
        .bearer_auth(setup.driver_token(43))
        .header(DELIVERIES_HEADER, "12,not-an-id")
        .body(json_fixes(&posted))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), http::StatusCode::BAD_REQUEST);
    let err: ApiError = resp.json().await.expect("api error");
    assert!(err.message.contains("not-an-id"), "{err:?}");

    // A driver that declared nothing is placed by its own id.
    let fallback = ids
        .iter()
        .position(|h| cluster::placement::owner(DeliveryId(44), &ids) == Some(h))
        .expect("owner");
    let lone = track(1, 0)[0];
    let resp = client
        .post(&url)
        .bearer_auth(setup.driver_token(44))
        .body(json_fixes(&[lone]))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.json::<IngestResult>().await.expect("json").accepted, 1);
    assert_eq!(next_of(&mut hubs[fallback], 44).await, lone);
    edge.shutdown();
    edge.join().await;
}

#[tokio::test]
async fn when_a_hub_leaves_its_deliveries_and_kept_fixes_move_to_the_new_owner() {
    let setup = Setup::new("cluster-leave");
    let mut hubs = three_cluster_hubs(&setup).await;
    let edge = edge_in_cluster(&setup, &hubs).await;
    let m = edge.metrics();
    let ids = ["hub-a", "hub-b", "hub-c"];
    let d = delivery_owned_by("hub-b", &ids, 1);
    let rest = ["hub-a", "hub-c"];
    let heir = if cluster::placement::owner(d, &rest) == Some(&"hub-a") {
        0
    } else {
        2
    };

    let mut driver = DriverConn::hello(&setup, edge.quic_addr(), &setup.driver_token(7)).await;
    assert!(matches!(
        driver.welcome().await,
        EdgeToDriver::Welcome { .. }
    ));
    let fixes = track(5, 1);
    driver
        .send_frame(&DriverToEdge::OnDuty {
            deliveries: vec![d],
        })
        .await;
    driver
        .send_frame(&DriverToEdge::Fixes(vec![fixes[0]]))
        .await;
    assert_eq!(next_of(&mut hubs[1], 7).await, fixes[0]);

    // hub-b's link server dies first: the edge keeps the newest fix for it.
    hubs[1].hub.close();
    wait_until("hub-b's link down", || m.hub_connected().get() == 2).await;
    for f in &fixes[1..4] {
        driver.send_fix(f).await;
    }
    wait_until("three more fixes accepted", || m.accepted().get() == 4).await;

    // Then it leaves the cluster: what was kept goes to the delivery's new owner.
    hubs[1].leave().await;
    assert_eq!(
        next_of(&mut hubs[heir], 7).await,
        fixes[3],
        "the newest kept fix, re-routed"
    );
    assert!(m.reroutes().get() >= 1);
    wait_until("hub-b's uplink gone", || m.uplinks_active().get() == 2).await;
    driver.send_fix(&fixes[4]).await;
    assert_eq!(next_of(&mut hubs[heir], 7).await, fixes[4]);
    let other = 2 - heir;
    assert!(hubs[other].hub.fixes.try_recv().is_err(), "not the heir");
    edge.shutdown();
    edge.join().await;
}

#[tokio::test]
async fn a_draining_edge_redirects_drivers_to_a_peer_edge_and_refuses_new_ones() {
    let setup = Setup::new("cluster-drain");
    let hub = ClusterHub::start(&setup, "hub-a", Vec::new()).await;
    let seeds = vec![hub.gossip_addr()];
    let edge = edge_in_cluster(&setup, std::slice::from_ref(&hub)).await;
    let peer = edge_node::spawn(setup.cluster_edge_config("edge-2", seeds))
        .await
        .expect("peer edge starts");
    let peer_addr = peer.quic_addr().to_string();
    let node = edge.cluster().expect("in a cluster").clone();
    wait_until_async("the edge sees its peer's driver address", || {
        let node = node.clone();
        let want = peer_addr.clone();
        async move {
            node.control
                .get("edge-2", edge_node::drain::keys::ADDR_DRIVER)
                .await
                == Some(want)
        }
    })
    .await;

    let mut driver = DriverConn::hello(&setup, edge.quic_addr(), &setup.driver_token(9)).await;
    assert!(matches!(
        driver.welcome().await,
        EdgeToDriver::Welcome { .. }
    ));
    let admin = format!("http://{}", edge.admin_addr());
    let resp = reqwest::Client::new()
        .post(format!("{admin}/drain"))
        .send()
        .await
        .expect("post /drain");
    assert_eq!(resp.status(), http::StatusCode::ACCEPTED);

    match driver.next_frame().await {
        EdgeToDriver::Redirect { addr, reason } => {
            assert_eq!(addr, peer_addr);
            assert!(reason.contains("draining"), "{reason}");
        }
        other => panic!("expected a redirect, got {other:?}"),
    }
    let (code, reason) = DriverConn::hello(&setup, edge.quic_addr(), &setup.driver_token(10))
        .await
        .closed()
        .await;
    assert_eq!(code, CloseCode::Draining as u64);
    assert!(reason.contains(&peer_addr), "{reason}");
    assert_eq!(edge.metrics().sessions_rejected("draining").get(), 1);

    let resp = https_client(&setup)
        .post(format!(
            "https://127.0.0.1:{}{LOCATIONS}",
            edge.https_addr().port()
        ))
        .bearer_auth(setup.driver_token(9))
        .body(json_fixes(&track(1, 0)))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key(http::header::RETRY_AFTER));
    let err: ApiError = resp.json().await.expect("api error");
    assert_eq!(err.error, "draining");
    assert!(err.message.contains(&peer_addr), "{err:?}");
    let ready = reqwest::get(format!("{admin}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(edge.metrics().draining().get(), 1);
    let hub_node = hub.node.clone();
    wait_until_async("the cluster sees the edge draining", || {
        let n = hub_node.clone();
        async move {
            n.control
                .get("edge-test", edge_node::drain::keys::DRAINING)
                .await
                .as_deref()
                == Some("true")
        }
    })
    .await;

    // The driver moves on; with no session left the edge flushes and stops by itself.
    driver.conn.close(0u32.into(), b"moving to the peer");
    tokio::time::timeout(WAIT, edge.stopped())
        .await
        .expect("the drained edge stops");
    edge.join().await;
    peer.shutdown();
    peer.join().await;
}
