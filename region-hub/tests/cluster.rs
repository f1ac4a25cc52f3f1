//! Three hubs in one process, each with its own data dir, certificate and cluster config on
//! 127.0.0.1 port 0: they see each other and agree on owners, redirect requests to the owner,
//! replicate acknowledged events to the successor, and the successor takes over when the owner
//! goes away.

mod support;

use protocol::api::{ChangeStatus, StatusChanged};
use protocol::consumer::ConsumerFrame;
use protocol::status::DeliveryStatus;
use protocol::token::Subject;
use protocol::DeliveryId;
use region_hub::{HubConfig, HubHandle};
use std::net::SocketAddr;
use support::*;

fn hub_config(dir: &std::path::Path, pki: &Pki, name: &str, seeds: Vec<SocketAddr>) -> HubConfig {
    cluster_hub_config(dir, pki, name, seeds, "trackline-eu-test")
}

struct Three {
    _dir: TestDir,
    pki: Pki,
    hubs: Vec<Option<HubHandle>>,
}

impl Three {
    fn hub(&self, i: usize) -> &HubHandle {
        self.hubs[i].as_ref().expect("hub running")
    }

    fn by_id(&self, id: &str) -> usize {
        self.hubs
            .iter()
            .position(|h| {
                h.as_ref()
                    .and_then(|h| h.cluster())
                    .is_some_and(|c| c.membership.identity().id == id)
            })
            .expect("hub by id")
    }

    /// Index of the owner and of the successor of `id`, as hub `via` sees them.
    fn owners(&self, via: usize, id: DeliveryId) -> (usize, usize) {
        let view = &self.hub(via).cluster().expect("cluster").view;
        let o = view.owners_of(id, 2);
        (self.by_id(&o[0].id), self.by_id(&o[1].id))
    }
}

async fn three_hubs(name: &str) -> Three {
    let dir = TestDir::new(name);
    let pki = Pki::new(&dir);
    let a = start_with(hub_config(&dir, &pki, "hub-a", vec![])).await;
    let seed = a.cluster().expect("cluster").gossip.advertise_addr();
    let b = start_with(hub_config(&dir, &pki, "hub-b", vec![seed])).await;
    let c = start_with(hub_config(&dir, &pki, "hub-c", vec![seed])).await;
    let t = Three {
        _dir: dir,
        pki,
        hubs: vec![Some(a), Some(b), Some(c)],
    };
    wait_until("three hubs to see each other with their addresses", || {
        let ok = t.hubs.iter().flatten().all(|h| {
            let live = h.cluster().expect("cluster").view.live_hubs();
            live.len() == 3 && live.iter().all(|l| !l.https_addr.is_empty())
        });
        async move { ok }
    })
    .await;
    t
}

fn no_redirect_client(pki: &Pki) -> reqwest::Client {
    let tls =
        certs::client_config_with_roots(pki.ca(), &[b"http/1.1"], certs::TlsFor::Tcp).expect("tls");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .expect("client")
}

/// Creates a delivery at hub `i` (which picks an id it owns).
async fn create_at(t: &Three, i: usize) -> protocol::api::DeliveryCreated {
    create(t.hub(i), &http_client(&t.pki), Some(7)).await
}

async fn change_at(
    t: &Three,
    i: usize,
    id: DeliveryId,
    status: DeliveryStatus,
    key: &str,
) -> reqwest::Response {
    let hub = t.hub(i);
    no_redirect_client(&t.pki)
        .post(url(hub, &format!("/api/v1/deliveries/{id}/status")))
        .bearer_auth(hub.mint_token(Subject::Operator, 600))
        .json(&ChangeStatus {
            status,
            idempotency_key: Some(key.into()),
            driver_id: None,
            metadata: serde_json::Value::Null,
        })
        .send()
        .await
        .expect("change status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_agree_on_owners_and_redirect_requests_to_the_owner() {
    let t = three_hubs("agree").await;
    for d in 1..200 {
        let id = DeliveryId(d);
        let owners: Vec<String> = (0..3)
            .map(|i| {
                t.hub(i)
                    .cluster()
                    .expect("c")
                    .view
                    .owner_of(id)
                    .expect("owner")
                    .id
            })
            .collect();
        assert!(owners.windows(2).all(|w| w[0] == w[1]), "{id}: {owners:?}");
    }
    // A hub creates deliveries it owns.
    let created = create_at(&t, 1).await;
    let id = created.delivery_id;
    let (owner, succ) = t.owners(0, id);
    assert_eq!(owner, 1, "the creating hub owns the id it chose");
    assert_ne!(succ, owner);
    let other = (0..3).find(|i| *i != owner).expect("non-owner");

    // REST status at a non-owner: 307 to the same path and query at the owner.
    let http = no_redirect_client(&t.pki);
    let path = format!(
        "/api/v1/tracking/{id}/status?token={}",
        created.tracking_token
    );
    let r = http
        .get(url(t.hub(other), &path))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert_eq!(
        location,
        format!("https://{}{path}", t.hub(owner).https_addr())
    );
    let r = http.get(&location).send().await.expect("follow");
    assert_eq!(r.status(), 200);

    // Order API at a non-owner: 307 too (the client re-sends method, body and token).
    let r = change_at(&t, other, id, DeliveryStatus::PickedUp, "k1").await;
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"].to_str().expect("location"),
        format!(
            "https://{}/api/v1/deliveries/{id}/status",
            t.hub(owner).https_addr()
        )
    );
    let r = change_at(&t, owner, id, DeliveryStatus::PickedUp, "k1").await;
    assert_eq!(r.status(), 200);

    // WebTransport at a non-owner: one redirect frame naming the owner's WebTransport address.
    let mut wt = wt_connect(
        t.hub(other),
        id,
        &format!("?token={}", created.tracking_token),
    )
    .await
    .expect("session");
    match wt.reliable().await {
        ConsumerFrame::Redirect { url } => assert_eq!(
            url,
            format!(
                "https://{}/api/v1/tracking/{id}/wt",
                t.hub(owner).webtransport_addr()
            )
        ),
        f => panic!("expected a redirect, got {f:?}"),
    }
    drop(wt);

    // WebSocket at a non-owner: one in-band redirect frame naming the owner, then close.
    let mut ws = ws_connect_addr(
        t.hub(other).https_addr(),
        &t.pki,
        id,
        &format!("?token={}", created.tracking_token),
    )
    .await
    .expect("upgrade");
    match ws_next(&mut ws).await {
        ConsumerFrame::Redirect { url } => assert_eq!(
            url,
            format!(
                "wss://{}/api/v1/tracking/{id}/connect",
                t.hub(owner).https_addr()
            )
        ),
        f => panic!("expected a redirect, got {f:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_are_in_the_successors_log() {
    let t = three_hubs("replicate").await;
    let created = create_at(&t, 0).await;
    let id = created.delivery_id;
    let (owner, succ) = t.owners(0, id);
    assert_eq!(owner, 0);
    for (status, key) in [
        (DeliveryStatus::PickedUp, "p"),
        (DeliveryStatus::EnRoute, "r"),
    ] {
        let r = change_at(&t, owner, id, status, key).await;
        assert_eq!(r.status(), 200);
        let changed: StatusChanged = r.json().await.expect("json");
        // Acknowledged => already durable on the successor (no waiting here).
        let copy = t
            .hub(succ)
            .store()
            .load_delivery(id)
            .expect("read")
            .expect("replicated record");
        assert_eq!(
            copy.events.last().map(|e| (e.event_seq, e.status)),
            Some((changed.event_seq, status))
        );
        assert!(copy
            .idempotency
            .iter()
            .any(|(k, s)| k == key && *s == changed.event_seq));
    }
    let third = 3 - owner - succ;
    assert!(t
        .hub(third)
        .store()
        .load_delivery(id)
        .expect("read")
        .is_none());
    let m = t.hub(owner).cluster_metrics().expect("metrics");
    assert!(m.replicated.get() >= 4, "create (2 events) + 2 changes");
    assert_eq!(m.unreplicated.get(), 0);
}

/// A hub whose view is stale writes for a delivery another hub serves: the replica fences
/// it (the serving owner refuses, and so does a copy holding another event under that seq),
/// and nothing of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fence_writes_from_a_hub_that_does_not_serve_the_delivery() {
    const NAMES: [&str; 3] = ["hub-a", "hub-b", "hub-c"];
    let t = three_hubs("fence").await;
    let created = create_at(&t, 0).await;
    let id = created.delivery_id;
    let (owner, succ) = t.owners(0, id);
    let third = 3 - owner - succ;
    let r = change_at(&t, owner, id, DeliveryStatus::PickedUp, "p").await;
    assert_eq!(r.status(), 200);
    let acked: StatusChanged = r.json().await.expect("json");
    let log = |i: usize| {
        t.hub(i)
            .store()
            .load_delivery(id)
            .expect("read")
            .map(|d| d.events)
            .unwrap_or_default()
    };
    let event = |seq: u64, status: DeliveryStatus| protocol::consumer::StatusEvent {
        delivery_id: id,
        event_seq: seq,
        status,
        ts_ms: 1,
        source: "api".into(),
        metadata: serde_json::Value::Null,
    };
    let entry = |events| region_hub::durable::copies::ReplicaEntry {
        delivery_id: id,
        record: None,
        events,
        idempotency: Vec::new(),
        proofs: Vec::new(),
        devices: Vec::new(),
        tracking: None,
        plan: None,
        epochs: Vec::new(),
        epoch: 0,
    };

    // The owner serves it: the next seq written by another hub is refused.
    let next = entry(vec![event(acked.event_seq + 1, DeliveryStatus::EnRoute)]);
    let fenced = t
        .hub(third)
        .replicate_to(NAMES[owner], std::slice::from_ref(&next))
        .await
        .expect("exchange");
    assert_eq!(fenced, vec![id]);
    assert_eq!(
        log(owner).last().map(|e| e.event_seq),
        Some(acked.event_seq)
    );

    // The successor holds `picked_up` under that seq: another event under it is refused.
    let other = entry(vec![event(acked.event_seq, DeliveryStatus::Cancelled)]);
    let fenced = t
        .hub(third)
        .replicate_to(NAMES[succ], &[other])
        .await
        .expect("exchange");
    assert_eq!(fenced, vec![id]);
    let copy = log(succ);
    assert_eq!(
        copy.last().map(|e| (e.event_seq, e.status)),
        Some((acked.event_seq, DeliveryStatus::PickedUp))
    );
    // The same event again is no conflict (a retried replication).
    let same = entry(copy.clone());
    let fenced = t
        .hub(third)
        .replicate_to(NAMES[succ], &[same])
        .await
        .expect("exchange");
    assert!(fenced.is_empty(), "{fenced:?}");
    assert!(
        t.hub(succ)
            .cluster_metrics()
            .expect("metrics")
            .conflicts
            .get()
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_owner_goes_away_the_successor_serves_and_consumers_resume_without_gaps() {
    let mut t = three_hubs("takeover").await;
    let created = create_at(&t, 2).await;
    let id = created.delivery_id;
    let (owner, succ) = t.owners(0, id);
    assert_eq!(owner, 2);
    // A consumer watches at the owner, then drops off.
    let token = created.tracking_token.clone();
    let mut ws = ws_connect_addr(
        t.hub(owner).https_addr(),
        &t.pki,
        id,
        &format!("?token={token}"),
    )
    .await
    .expect("ws");
    let seen = snapshot(ws_next(&mut ws).await).last_event_seq;
    drop(ws);
    // Events it misses, acknowledged by the owner.
    let mut acked = Vec::new();
    for (status, key) in [
        (DeliveryStatus::PickedUp, "p"),
        (DeliveryStatus::EnRoute, "r"),
    ] {
        let r = change_at(&t, owner, id, status, key).await;
        assert_eq!(r.status(), 200);
        acked.push(r.json::<StatusChanged>().await.expect("json").event_seq);
    }
    // The owner goes away (without draining).
    let gone = t.hubs[owner].take().expect("owner");
    gone.shutdown();
    gone.join().await;

    // Within the deadline the successor owns the delivery and serves it.
    let http = no_redirect_client(&t.pki);
    let succ_https = t.hub(succ).https_addr();
    let status_url = format!(
        "https://localhost:{}/api/v1/tracking/{id}/status?token={token}",
        succ_https.port()
    );
    wait_until("the successor to serve the delivery", || {
        let r = http.get(&status_url).send();
        async move { matches!(r.await, Ok(r) if r.status() == 200) }
    })
    .await;
    assert!(
        t.hub(succ).cluster_metrics().expect("m").takeovers.get() >= 1,
        "taken over from the replica copy"
    );
    // The consumer resumes at the successor with its last seq and gets every missed event.
    let mut ws = ws_connect_addr(
        succ_https,
        &t.pki,
        id,
        &format!("?token={token}&last_event_seq={seen}"),
    )
    .await
    .expect("resume");
    let snap = snapshot(ws_next(&mut ws).await);
    assert_eq!(snap.last_event_seq, *acked.last().expect("acked"));
    let mut got = Vec::new();
    while got.len() < acked.len() {
        if let Some((seq, _)) = status_seq(&ws_next(&mut ws).await) {
            got.push(seq);
        }
    }
    assert_eq!(got, acked, "no gaps, no duplicates");
    // A retried request is replayed, not applied twice; the log continues at the next seq.
    let r = change_at(&t, succ, id, DeliveryStatus::EnRoute, "r").await;
    assert_eq!(r.status(), 200);
    let replay: StatusChanged = r.json().await.expect("json");
    assert!(replay.replayed);
    assert_eq!(replay.event_seq, acked[1]);
    let r = change_at(&t, succ, id, DeliveryStatus::Cancelled, "c").await;
    assert_eq!(r.status(), 200);
    let next: StatusChanged = r.json().await.expect("json");
    assert_eq!(next.event_seq, acked[1] + 1);
    let (live, _) = ws_next_status(&mut ws).await;
    assert_eq!(live, next.event_seq);
}

async fn ws_next_status(ws: &mut Ws) -> (u64, DeliveryStatus) {
    loop {
        if let Some(s) = status_seq(&ws_next(ws).await) {
            return s;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_hub_hands_its_deliveries_over_and_redirects_its_consumers() {
    let mut t = three_hubs("drain").await;
    let created = create_at(&t, 0).await;
    let id = created.delivery_id;
    let token = created.tracking_token.clone();
    let (owner, succ) = t.owners(1, id);
    assert_eq!(owner, 0);
    let r = change_at(&t, owner, id, DeliveryStatus::PickedUp, "p").await;
    assert_eq!(r.status(), 200);
    let picked: StatusChanged = r.json().await.expect("json");
    let mut ws = ws_connect_addr(
        t.hub(owner).https_addr(),
        &t.pki,
        id,
        &format!("?token={token}"),
    )
    .await
    .expect("ws");
    let seen = snapshot(ws_next(&mut ws).await).last_event_seq;
    assert_eq!(seen, picked.event_seq);

    let mut edge = Edge::connect(t.hub(owner), &t.pki).await;
    // The owner's rebalancer has sent the successor its copy of the whole log (load changes
    // are view changes): the hand-off below goes to the same hub and must still redirect.
    wait_until("the successor copy to be sent", || {
        let sent = t.hub(owner).cluster_metrics().expect("m").handoffs.get() >= 1;
        async move { sent }
    })
    .await;

    assert!(
        t.hub(owner).drain(DEADLINE).await,
        "every delivery handed off"
    );
    // The edge is told to go to a healthy peer.
    match edge.next().await {
        protocol::wire::HubToEdge::Redirect { addr } => {
            let peers: Vec<String> = [1, 2]
                .iter()
                .map(|i| t.hub((owner + i) % 3).link_addr().to_string())
                .collect();
            assert!(peers.contains(&addr), "{addr} not in {peers:?}");
        }
        f => panic!("expected a redirect, got {f:?}"),
    }
    // The connected consumer is sent to the new owner (the former successor).
    let url = loop {
        if let ConsumerFrame::Redirect { url } = ws_next(&mut ws).await {
            break url;
        }
    };
    let new_https = t.hub(succ).https_addr();
    assert_eq!(
        url,
        format!("wss://{new_https}/api/v1/tracking/{id}/connect")
    );
    // Requests reaching the draining hub are redirected there too.
    let r = change_at(&t, owner, id, DeliveryStatus::EnRoute, "e").await;
    assert_eq!(r.status(), 307);
    assert!(r.headers()["location"]
        .to_str()
        .expect("location")
        .starts_with(&format!("https://{new_https}/")));
    // The new owner has the whole log and continues it; the consumer resumes without gaps.
    // (Peers learn of the drain by gossip, a round or two after the drained hub itself.)
    wait_until("the new owner to know it owns the delivery", || {
        let ok = t
            .hub(succ)
            .cluster()
            .expect("cluster")
            .view
            .owner_of(id)
            .is_some_and(|h| h.https_addr == new_https.to_string());
        async move { ok }
    })
    .await;
    let mut ws = ws_connect_addr(
        new_https,
        &t.pki,
        id,
        &format!("?token={token}&last_event_seq={seen}"),
    )
    .await
    .expect("resume");
    assert_eq!(snapshot(ws_next(&mut ws).await).last_event_seq, seen);
    let r = change_at(&t, succ, id, DeliveryStatus::EnRoute, "e").await;
    assert_eq!(r.status(), 200);
    let next: StatusChanged = r.json().await.expect("json");
    assert_eq!(next.event_seq, seen + 1);
    assert_eq!(ws_next_status(&mut ws).await.0, next.event_seq);
    // The drained hub stops; nothing acknowledged is lost.
    let drained = t.hubs[owner].take().expect("hub");
    drained.shutdown();
    drained.join().await;
    let log = t
        .hub(succ)
        .store()
        .load_delivery(id)
        .expect("read")
        .expect("record");
    let seqs: Vec<u64> = log.events.iter().map(|e| e.event_seq).collect();
    assert_eq!(seqs, (1..=next.event_seq).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_restarted_after_draining_gets_its_deliveries_back_with_the_events_it_missed() {
    let mut t = three_hubs("restart").await;
    let created = create_at(&t, 0).await;
    let id = created.delivery_id;
    let (owner, succ) = t.owners(1, id);
    assert_eq!(owner, 0);
    let name = "hub-a";
    // Rolling restart, step one: hub-a drains and stops.
    assert!(t.hub(owner).drain(DEADLINE).await);
    let drained = t.hubs[owner].take().expect("hub");
    drained.shutdown();
    drained.join().await;
    wait_until("the successor to own the delivery", || {
        let ok = t.owners(succ, id).0 == succ;
        async move { ok }
    })
    .await;
    // Events hub-a does not have, and positions it did not store.
    let mut acked = Vec::new();
    for (status, key) in [
        (DeliveryStatus::PickedUp, "p"),
        (DeliveryStatus::EnRoute, "e"),
    ] {
        let r = change_at(&t, succ, id, status, key).await;
        assert_eq!(r.status(), 200);
        acked.push(r.json::<StatusChanged>().await.expect("json").event_seq);
    }
    let mut edge = Edge::connect(t.hub(succ), &t.pki).await;
    let fixes = 10u64;
    for i in 1..=fixes {
        edge.send_fixes(vec![fix(7, i)]).await;
    }
    drop(edge);
    let while_away: Vec<u64> = {
        let mut crumbs = Vec::new();
        wait_until("the successor to store the positions", || {
            crumbs = t
                .hub(succ)
                .store()
                .breadcrumbs(id, 0, 1_000)
                .expect("crumbs");
            let n = crumbs.len() as u64;
            async move { n == fixes }
        })
        .await;
        crumbs.iter().map(|c| c.ts_ms).collect()
    };
    // hub-a comes back on the same data dir: it owns the delivery again, and must serve the
    // newest state (fetched from its peers), not its stale copy.
    let seed = t.hub(succ).cluster().expect("c").gossip.advertise_addr();
    let mut config = hub_config(&t._dir, &t.pki, name, vec![seed]);
    // Long enough that the first request surely comes before the hub claims its deliveries.
    config.cluster_hub.join_grace_ms = 2_000;
    t.hubs[owner] = Some(start_with(config).await);
    let http = no_redirect_client(&t.pki);
    let status_url = url(
        t.hub(owner),
        &format!(
            "/api/v1/tracking/{id}/status?token={}",
            created.tracking_token
        ),
    );
    // Before it has claimed its deliveries it does not answer from its stale copy: 503, retry.
    let early = http.get(&status_url).send().await.expect("early request");
    assert_eq!(early.status(), 503);
    assert_eq!(
        early
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let last = *acked.last().expect("acked");
    wait_until("the restarted hub to serve the newest state", || {
        let r = http.get(&status_url).send();
        async move {
            match r.await {
                Ok(r) if r.status() == 200 => r
                    .json::<protocol::consumer::Snapshot>()
                    .await
                    .is_ok_and(|s| s.last_event_seq == last),
                _ => false,
            }
        }
    })
    .await;
    // Every hub agrees again, and the log continues without a gap or a duplicate seq.
    wait_until("every hub to route to the restarted hub", || {
        let ok = (0..3).all(|i| t.owners(i, id).0 == owner);
        async move { ok }
    })
    .await;
    let r = change_at(&t, owner, id, DeliveryStatus::Arriving, "a").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<StatusChanged>().await.expect("json").event_seq,
        last + 1
    );
    let log = t
        .hub(owner)
        .store()
        .load_delivery(id)
        .expect("read")
        .expect("record");
    let seqs: Vec<u64> = log.events.iter().map(|e| e.event_seq).collect();
    assert_eq!(seqs, (1..=last + 1).collect::<Vec<_>>());
    // The positions stored while it was away are in its history too (fetched at the
    // takeover, or handed over with the log).
    wait_until(
        "the restarted hub to hold the history written while it was away",
        || {
            let have: Vec<u64> = t
                .hub(owner)
                .store()
                .breadcrumbs(id, 0, 1_000)
                .expect("crumbs")
                .iter()
                .map(|c| c.ts_ms)
                .collect();
            let ok = have == while_away;
            async move { ok }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_hubs_may_open_the_replica_link() {
    let t = three_hubs("replica-auth").await;
    let edge = t
        .pki
        .node("edge-1", certs::NodeRole::Edge)
        .load()
        .expect("tls");
    let client = certs::mtls_client_config(
        edge.chain,
        edge.key,
        edge.roots,
        &[region_hub::replication::ALPN_REPLICA],
        certs::TlsFor::Quic,
    )
    .expect("client tls");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(certs::quinn_client_config(client).expect("quinn"));
    let conn = endpoint
        .connect(t.hub(0).link_addr(), "localhost")
        .expect("connect")
        .await
        .expect("the TLS handshake itself succeeds (cluster CA)");
    let reason = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed by the hub");
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == quinn::VarInt::from_u32(protocol::wire::CloseCode::ProtocolViolation as u32)),
        "{reason:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_answers_at_once_then_the_hub_drains_and_stops() {
    let mut t = three_hubs("admin-drain").await;
    let created = create_at(&t, 2).await;
    let id = created.delivery_id;
    let (_, succ) = t.owners(0, id);
    let admin = format!("http://{}", t.hub(2).admin_addr());
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{admin}/drain"))
        .send()
        .await
        .expect("drain");
    assert_eq!(r.status(), 202);
    let hub = t.hubs[2].take().expect("hub");
    tokio::time::timeout(DEADLINE, hub.stopping())
        .await
        .expect("the hub stops after draining");
    hub.join().await;
    // Its delivery lives on at the former successor, with its whole log.
    let log = t
        .hub(succ)
        .store()
        .load_delivery(id)
        .expect("read")
        .expect("record");
    assert_eq!(log.events.len() as u64, created.last_event_seq);
    // ... and is served there.
    let client = no_redirect_client(&t.pki);
    let status_url = url(
        t.hub(succ),
        &format!(
            "/api/v1/tracking/{id}/status?token={}",
            created.tracking_token
        ),
    );
    wait_until("the former successor to serve the delivery", || {
        let r = client.get(&status_url).send();
        async move { matches!(r.await, Ok(r) if r.status() == 200) }
    })
    .await;
}

/// In a cluster `/readyz` waits for the hub to claim what it owns (after `join_grace_ms`), so a
/// rolling restart that waits for it does not move on while the hub serves nothing yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clustered_hub_is_ready_only_after_claiming_its_deliveries() {
    let dir = TestDir::new("ready-after-claim");
    let pki = Pki::new(&dir);
    let mut config = hub_config(&dir, &pki, "hub-a", vec![]);
    config.cluster_hub.join_grace_ms = 3_000;
    let hub = start_with(config).await;
    let readyz = format!("http://{}/readyz", hub.admin_addr());
    let status = || async {
        reqwest::get(&readyz)
            .await
            .expect("readyz answers")
            .status()
            .as_u16()
    };
    assert_eq!(status().await, 503, "ready before the join grace ended");
    wait_until("the hub to turn ready", || async { status().await == 200 }).await;
}

/// With `min_copies` 2 (the default) a hub left without any peer refuses status changes (503,
/// nothing stored) instead of acknowledging them on its copy alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_without_a_live_replica_refuses_status_changes() {
    let mut t = three_hubs("no-replica").await;
    let created = create_at(&t, 0).await;
    let id = created.delivery_id;
    for i in [1, 2] {
        let gone = t.hubs[i].take().expect("hub");
        gone.shutdown();
        gone.join().await;
    }
    wait_until("the last hub to see itself alone", || {
        let alone = t.hub(0).cluster().expect("cluster").view.live_hubs().len() == 1;
        async move { alone }
    })
    .await;
    let r = change_at(&t, 0, id, DeliveryStatus::PickedUp, "p").await;
    assert_eq!(r.status(), 503);
    let body = r.text().await.expect("body");
    assert!(body.contains("no replica"), "{body}");
    let log = t
        .hub(0)
        .store()
        .load_delivery(id)
        .expect("read")
        .expect("record");
    assert!(
        log.events
            .iter()
            .all(|e| e.status != DeliveryStatus::PickedUp),
        "a refused change is not stored"
    );
    assert!(t.hub(0).cluster_metrics().expect("m").no_replica.get() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breadcrumbs_are_copied_to_the_successor_and_the_history_survives_the_owner() {
    let mut t = three_hubs("crumbs").await;
    let created = create_at(&t, 0).await;
    let id = created.delivery_id;
    let (owner, succ) = t.owners(0, id);
    assert_eq!(owner, 0);
    // The driver (7, assigned at creation) sends fixes through an edge to the owner.
    let mut edge = Edge::connect(t.hub(owner), &t.pki).await;
    let sent = 20u64;
    for i in 1..=sent {
        edge.send_fixes(vec![fix(7, i)]).await;
    }
    let owner_crumbs = || {
        t.hub(owner)
            .store()
            .breadcrumbs(id, 0, 1_000)
            .expect("owner's breadcrumbs")
    };
    wait_until("the owner to store every fix", || {
        let n = owner_crumbs().len() as u64;
        async move { n == sent }
    })
    .await;
    wait_until("the successor to hold a copy of every breadcrumb", || {
        let n = t
            .hub(succ)
            .store()
            .breadcrumbs(id, 0, 1_000)
            .map_or(0, |c| c.len() as u64);
        async move { n == sent }
    })
    .await;
    assert_eq!(
        t.hub(succ).store().breadcrumbs(id, 0, 1_000).expect("copy"),
        owner_crumbs(),
        "the copy is the owner's breadcrumbs, field for field"
    );
    // The owner counts a copy once the successor's ack is back, a moment after the store.
    wait_until("the owner to count every breadcrumb replicated", || {
        let n = t.hub(owner).metrics().breadcrumbs_replicated.get();
        async move { n >= sent }
    })
    .await;
    assert_eq!(t.hub(owner).metrics().breadcrumbs_unreplicated.get(), 0);
    assert!(t.hub(succ).metrics().breadcrumbs_received.get() >= sent);
    // The third hub is neither owner nor successor: it got nothing.
    let third = 3 - owner - succ;
    assert!(t
        .hub(third)
        .store()
        .breadcrumbs(id, 0, 1_000)
        .expect("third")
        .is_empty());

    // The owner goes away; the successor takes over and serves the whole history.
    let gone = t.hubs[owner].take().expect("owner");
    gone.shutdown();
    gone.join().await;
    let http = no_redirect_client(&t.pki);
    let history_url = format!(
        "https://localhost:{}/api/v1/tracking/{id}/history?limit=1000",
        t.hub(succ).https_addr().port()
    );
    let token = created.tracking_token.clone();
    wait_until("the successor to serve the history", || {
        let r = http.get(&history_url).bearer_auth(&token).send();
        async move { matches!(r.await, Ok(r) if r.status() == 200) }
    })
    .await;
    let page: region_hub::serve::api::HistoryPage = http
        .get(&history_url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    assert_eq!(page.breadcrumbs.len() as u64, sent);
    assert!(!page.events.is_empty(), "the events are there too");
}
