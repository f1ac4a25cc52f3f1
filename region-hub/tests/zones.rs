//! Tracking state that must outlive the hub holding a delivery (issue 13, part 3):
//!
//! - the real hub binary, SIGKILLed while the driver is inside the pickup zone and restarted on
//!   the same data directory, still logs `picked_up` (once, then `en_route`) when the driver
//!   leaves the zone;
//! - three hubs in one process: after the owner goes away, the successor serves the next fixes
//!   with the plan the owner made (no re-plan storm after a takeover).

mod support;

use futures::StreamExt;
use protocol::api::{CreateDelivery, DeliveryCreated};
use protocol::consumer::{ConsumerFrame, Snapshot};
use protocol::geo::{destination, LatLng};
use protocol::status::DeliveryStatus::{self, *};
use protocol::DriverId;
use region_hub::{HubConfig, HubHandle};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::{http_client, wait_until, Edge, HubProcess, Pki, TestDir, DROPOFF, PICKUP, WAIT};
use tokio_tungstenite::tungstenite::Message;

async fn snapshot_of(http: &reqwest::Client, url: &str, token: &str) -> Option<Snapshot> {
    let r = http.get(url).bearer_auth(token).send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json().await.ok()
}

/// The delivery's whole status log, read over the consumer WebSocket from seq 0.
async fn status_log(
    pki: &Pki,
    https: SocketAddr,
    d: &DeliveryCreated,
    last: u64,
) -> Vec<(u64, DeliveryStatus)> {
    let tls =
        certs::client_config_with_roots(pki.ca(), &[b"http/1.1"], certs::TlsFor::Tcp).expect("tls");
    let tcp = tokio::net::TcpStream::connect(https).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("tls");
    let u = format!(
        "wss://localhost:{}/api/v1/tracking/{}/connect?token={}&last_event_seq=0",
        https.port(),
        d.delivery_id,
        d.tracking_token
    );
    let (mut ws, _) = tokio_tungstenite::client_async(u, stream)
        .await
        .expect("websocket");
    let mut log = Vec::new();
    while log.last().is_none_or(|(seq, _)| *seq < last) {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("ws");
        let Message::Text(t) = msg else { continue };
        if let ConsumerFrame::Status(e) = ConsumerFrame::from_json(&t).expect("frame") {
            log.push((e.event_seq, e.status));
        }
    }
    log
}

/// Creates a delivery (a write through the hub's event log, answered once durable).
async fn create_delivery(
    http: &reqwest::Client,
    hub: &HubProcess,
    op: &str,
    driver: Option<u64>,
) -> DeliveryCreated {
    let r = http
        .post(hub.url("/api/v1/deliveries"))
        .bearer_auth(op)
        .json(&CreateDelivery {
            delivery_id: None,
            pickup: PICKUP,
            dropoff: DROPOFF,
            driver_id: driver.map(DriverId),
        })
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    r.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_the_driver_is_inside_the_pickup_zone_still_gives_picked_up_once() {
    certs::install_default_crypto_provider();
    let dir = TestDir::new("zones-crash");
    let pki = Pki::new(&dir);
    let (config_path, op) = support::write_process_config(&dir, &pki, |_| {});
    let http = http_client(&pki);
    let driver = 42;
    let inside = |m: f64| destination(PICKUP, 200.0, m);

    let hub = HubProcess::start(&config_path);
    let d = create_delivery(&http, &hub, &op, Some(driver)).await;
    assert_eq!(d.status, DriverAssigned);
    let status_url = hub.url(&format!("/api/v1/tracking/{}/status", d.delivery_id));
    // The driver arrives at the pickup: two fixes inside the zone (its enter radius is 50 m).
    let mut edge = Edge::connect_to(hub.link, &pki).await;
    edge.send_fix(driver, inside(300.0)).await;
    edge.send_fix(driver, inside(20.0)).await;
    edge.send_fix(driver, inside(10.0)).await;
    wait_until("the hub to apply the last fix", || {
        let s = snapshot_of(&http, &status_url, &d.tracking_token);
        async move { s.await.and_then(|s| s.position).is_some_and(|p| p.seq == 3) }
    })
    .await;
    // The zone entry was queued to the log while that fix was applied; a write queued after
    // it and answered durable means it is durable too (one writer, in queue order).
    create_delivery(&http, &hub, &op, None).await;
    let before = snapshot_of(&http, &status_url, &d.tracking_token)
        .await
        .expect("snapshot");
    assert_eq!(before.status, DriverAssigned, "still waiting at the pickup");
    hub.kill();

    // Restart on the same data directory; the driver, still inside, then leaves the zone.
    let hub = HubProcess::start(&config_path);
    let status_url = hub.url(&format!("/api/v1/tracking/{}/status", d.delivery_id));
    let mut edge = Edge::connect_to(hub.link, &pki).await;
    edge.send_fix(driver, inside(15.0)).await;
    for m in [150.0, 200.0, 300.0, 400.0] {
        edge.send_fix(driver, inside(m)).await;
    }
    wait_until("the zone exit to move the delivery on", || {
        let s = snapshot_of(&http, &status_url, &d.tracking_token);
        async move { s.await.is_some_and(|s| s.status == EnRoute) }
    })
    .await;
    // The driver wanders back in and out again: nothing more.
    for m in [20.0, 10.0, 200.0, 300.0] {
        edge.send_fix(driver, inside(m)).await;
    }
    create_delivery(&http, &hub, &op, None).await;
    let snap = snapshot_of(&http, &status_url, &d.tracking_token)
        .await
        .expect("snapshot");
    let log = status_log(&pki, hub.https, &d, snap.last_event_seq).await;
    assert_eq!(
        log,
        vec![
            (1, Confirmed),
            (2, DriverAssigned),
            (3, PickedUp),
            (4, EnRoute)
        ],
        "picked_up exactly once, then en_route"
    );
    hub.kill();
}

// ---- three hubs in one process

fn hub_config(dir: &Path, pki: &Pki, name: &str, seeds: Vec<SocketAddr>) -> HubConfig {
    support::cluster_hub_config(dir, pki, name, seeds, "trackline-eu-zones")
}

/// The same plan, give or take the last bit of a coordinate (copies travel as JSON).
fn same_plan(
    a: Option<&region_hub::tracking::eta::StoredPlan>,
    b: &region_hub::tracking::eta::StoredPlan,
) -> bool {
    a.is_some_and(|a| {
        a.version == b.version
            && a.pickup_segment == b.pickup_segment
            && roadnet::polyline::encode(&a.route.points)
                == roadnet::polyline::encode(&b.route.points)
            && (a.route.length_m - b.route.length_m).abs() < 1e-6
    })
}

fn hub_index(hubs: &[Option<HubHandle>], id: &str) -> usize {
    hubs.iter()
        .position(|h| {
            h.as_ref()
                .and_then(|h| h.cluster())
                .is_some_and(|c| c.membership.identity().id == id)
        })
        .expect("hub by id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_takeover_the_successor_follows_the_owners_plans_without_planning_again() {
    let dir = TestDir::new("zones-takeover");
    let pki = Pki::new(&dir);
    let a = support::start_with(hub_config(&dir, &pki, "hub-a", vec![])).await;
    let seed = a.cluster().expect("cluster").gossip.advertise_addr();
    let b = support::start_with(hub_config(&dir, &pki, "hub-b", vec![seed])).await;
    let c = support::start_with(hub_config(&dir, &pki, "hub-c", vec![seed])).await;
    let mut hubs = vec![Some(a), Some(b), Some(c)];
    wait_until("three hubs to see each other", || {
        let ok = hubs.iter().flatten().all(|h| {
            let live = h.cluster().expect("cluster").view.live_hubs();
            live.len() == 3 && live.iter().all(|l| !l.https_addr.is_empty())
        });
        async move { ok }
    })
    .await;
    let http = http_client(&pki);
    let owner = 0;
    let owner_hub = hubs[owner].as_ref().expect("owner");

    // Deliveries created at hub a (it picks ids it owns), one driver each, on their way to
    // the pickup: the first fix plans each route at the owner.
    let drivers = [7u64, 8, 9];
    let mut created = Vec::new();
    let mut edge = Edge::connect_to(owner_hub.link_addr(), &pki).await;
    for &driver in &drivers {
        let d = support::create(owner_hub, &http, Some(driver)).await;
        edge.send_fix(driver, destination(PICKUP, 200.0, 800.0))
            .await;
        created.push((driver, d));
    }
    let view = &owner_hub.cluster().expect("cluster").view;
    let mut plans = Vec::new();
    for (driver, d) in &created {
        let id = d.delivery_id;
        let owners = view.owners_of(id, 2);
        assert_eq!(hub_index(&hubs, &owners[0].id), owner);
        let succ = hub_index(&hubs, &owners[1].id);
        // The plan is in the owner's log and copied to the successor with it.
        let stored = |i: usize| {
            region_hub::durable::plans::load_plan(hubs[i].as_ref().expect("hub").store(), id)
                .expect("read plan")
        };
        // (The copy is stored before the owner's own commit: wait for both.)
        wait_until("the owner and its successor to hold the plan", || {
            let ok = stored(succ).is_some() && stored(owner).is_some();
            async move { ok }
        })
        .await;
        let plan = stored(owner).expect("the owner stored its plan");
        assert!(
            same_plan(stored(succ).as_ref(), &plan),
            "the copy is the owner's plan"
        );
        plans.push((*driver, d.clone(), succ, plan));
    }
    // The owner goes away (without draining).
    let gone = hubs[owner].take().expect("owner");
    gone.shutdown();
    gone.join().await;

    // Each successor serves its deliveries; the drivers' next fixes, further along the
    // planned route, reach it.
    for (driver, d, succ, plan) in &plans {
        let succ_hub = hubs[*succ].as_ref().expect("successor");
        let status_url = support::url(
            succ_hub,
            &format!("/api/v1/tracking/{}/status", d.delivery_id),
        );
        wait_until("the successor to serve the delivery", || {
            let s = snapshot_of(&http, &status_url, &d.tracking_token);
            async move { s.await.is_some() }
        })
        .await;
        let along = plan.route.point_at(150.0).expect("a point on the route");
        let mut edge = Edge::connect_to(succ_hub.link_addr(), &pki).await;
        edge.send_fix(*driver, LatLng::new(along.lat, along.lng))
            .await;
        let snap = loop {
            let s = snapshot_of(&http, &status_url, &d.tracking_token)
                .await
                .expect("snapshot");
            if s.position.is_some() {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let eta = snap.eta.expect("an ETA from the successor");
        assert_eq!(
            eta.route_polyline,
            Some(roadnet::polyline::encode(&plan.route.points)),
            "delivery {}: the successor follows the owner's plan (no re-plan)",
            d.delivery_id
        );
        assert!(
            eta.remaining_m < plan.route.length_m,
            "measured along the old plan: {} of {}",
            eta.remaining_m,
            plan.route.length_m
        );
        // Its stored plan is still the owner's: nothing new was planned for it.
        assert!(same_plan(
            region_hub::durable::plans::load_plan(succ_hub.store(), d.delivery_id)
                .expect("read plan")
                .as_ref(),
            plan
        ));
    }
}
