//! End-to-end tests of the hub over real sockets: a quinn mTLS edge, WebSocket and
//! WebTransport consumers, the REST API, and restarts on the same redb file.

mod support;

use protocol::api::{ApiError, CreateDelivery, DeliveryCreated, StatusChanged};
use protocol::consumer::{ConsumerFrame, Snapshot};
use protocol::status::DeliveryStatus;
use protocol::token::Subject;
use protocol::DeliveryId;
use region_hub::{HubConfig, HubHandle};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_fixes_reach_websocket_webtransport_and_rest_consumers_in_order() {
    let dir = TestDir::new("push");
    let pki = Pki::new(&dir);
    let hub = start(&dir, &pki).await;
    let http = http_client(&pki);
    let created = create(&hub, &http, Some(7)).await;
    let id = created.delivery_id;
    assert_eq!(
        (created.status, created.last_event_seq),
        (DeliveryStatus::DriverAssigned, 2)
    );
    assert!(created
        .tracking_path
        .starts_with(&format!("/track/{id}?token=")));
    let token = created.tracking_token.clone();

    let mut ws = ws_connect(&hub, &pki, id, &format!("?token={token}"))
        .await
        .expect("ws accepted");
    let mut wt = wt_connect(&hub, id, &format!("?token={token}"))
        .await
        .expect("wt accepted");
    assert_eq!(snapshot(ws_next(&mut ws).await).last_event_seq, 2);
    assert_eq!(
        snapshot(wt.reliable().await).status,
        DeliveryStatus::DriverAssigned
    );
    assert_eq!(hub.metrics().consumers("websocket"), 1);
    assert_eq!(hub.metrics().consumers("webtransport"), 1);

    let mut edge = Edge::connect(&hub, &pki).await;
    // A fix of a driver without a delivery is counted and goes nowhere.
    edge.send_fixes(vec![fix(99, 1)]).await;
    assert_eq!(hub.metrics().fixes_unmatched.get(), 1);

    let mut ws_seqs = Vec::new();
    let mut wt_seqs = Vec::new();
    for i in 1..=5u64 {
        edge.send_fixes(vec![fix(7, i)]).await;
        // Each consumer sees this position (or a newer one), never an older one.
        while ws_seqs.last() != Some(&i) {
            match ws_next(&mut ws).await {
                ConsumerFrame::Position(p) => ws_seqs.push(p.seq),
                ConsumerFrame::Eta(e) => assert!(e.eta_s > 0.0),
                other => panic!("unexpected {other:?}"),
            }
        }
        while wt_seqs.last() != Some(&i) {
            if let ConsumerFrame::Position(p) = wt.datagram().await {
                wt_seqs.push(p.seq);
            }
        }
    }
    for seqs in [&ws_seqs, &wt_seqs] {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    }
    assert_eq!(hub.metrics().fixes_received.get(), 6);
    assert!(hub.metrics().pushed_total("websocket") >= 5);

    let r = change(&hub, &http, id, DeliveryStatus::PickedUp, None, None).await;
    assert_eq!(r.status(), 200);
    let changed: StatusChanged = r.json().await.expect("json");
    assert_eq!((changed.event_seq, changed.replayed), (3, false));
    let mut got_ws = None;
    while got_ws.is_none() {
        got_ws = status_seq(&ws_next(&mut ws).await);
    }
    let mut got_wt = None;
    while got_wt.is_none() {
        got_wt = status_seq(&wt.reliable().await);
    }
    assert_eq!(got_ws, Some((3, DeliveryStatus::PickedUp)));
    assert_eq!(got_wt, Some((3, DeliveryStatus::PickedUp)));

    let r = http
        .get(url(&hub, &format!("/api/v1/tracking/{id}/status")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("rest");
    assert_eq!(r.status(), 200);
    let snap: Snapshot = r.json().await.expect("snapshot");
    assert_eq!(snap.status, DeliveryStatus::PickedUp);
    assert_eq!(snap.position.map(|p| p.seq), Some(5));
    assert!(snap.eta.is_some() && snap.position_age_s.is_some());

    drop(ws);
    drop(wt);
    hub.shutdown();
    tokio::time::timeout(WAIT, hub.join())
        .await
        .expect("hub stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_without_a_valid_token_get_401_or_403_and_no_data() {
    let dir = TestDir::new("auth");
    let pki = Pki::new(&dir);
    let hub = start(&dir, &pki).await;
    let http = http_client(&pki);
    let a = create(&hub, &http, None).await;
    let b = create(&hub, &http, None).await;
    let other = b.tracking_token;

    assert_eq!(
        ws_connect(&hub, &pki, a.delivery_id, "").await.err(),
        Some(401)
    );
    assert_eq!(
        ws_connect(&hub, &pki, a.delivery_id, &format!("?token={other}"))
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        ws_connect(&hub, &pki, a.delivery_id, "?token=tl1.garbage.x")
            .await
            .err(),
        Some(403)
    );
    let stranger = protocol::token::TokenSigner::from_pkcs8(
        1,
        &protocol::token::TokenSigner::generate_pkcs8().expect("key"),
    )
    .expect("signer")
    .sign(Subject::Tracking(a.delivery_id), nodekit::unix_s(), 60);
    assert_eq!(
        ws_connect(&hub, &pki, a.delivery_id, &format!("?token={stranger}"))
            .await
            .err(),
        Some(403)
    );

    let status_url = url(&hub, &format!("/api/v1/tracking/{}/status", a.delivery_id));
    let r = http.get(&status_url).send().await.expect("rest");
    assert_eq!(r.status(), 401);
    assert!(r.json::<ApiError>().await.is_ok());
    let r = http
        .get(&status_url)
        .bearer_auth(&other)
        .send()
        .await
        .expect("rest");
    assert_eq!(r.status(), 403);
    let body = r.text().await.expect("body");
    assert!(
        !body.contains("pickup"),
        "no delivery data in a refusal: {body}"
    );
    let r = http
        .get(format!("{status_url}?token={}", a.tracking_token))
        .send()
        .await
        .expect("rest");
    assert_eq!(r.status(), 200, "query token works too");

    for q in [String::new(), format!("?token={other}")] {
        match wt_connect(&hub, a.delivery_id, &q).await {
            Err(wtransport::error::ConnectingError::SessionRejected) => {}
            Err(e) => panic!("expected a rejected session, got {e}"),
            Ok(_) => panic!("webtransport session with {q:?} must be refused"),
        }
    }
    assert_eq!(hub.metrics().rejected_total("missing_token"), 3);
    assert_eq!(hub.metrics().rejected_total("wrong_subject"), 3);
    assert_eq!(hub.metrics().consumers("websocket"), 0);

    // The order API wants an operator token.
    let r = http
        .post(url(&hub, "/api/v1/deliveries"))
        .bearer_auth(&a.tracking_token)
        .json(&CreateDelivery {
            delivery_id: None,
            pickup: PICKUP,
            dropoff: DROPOFF,
            driver_id: None,
        })
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 403);
    hub.shutdown();
    tokio::time::timeout(WAIT, hub.join())
        .await
        .expect("hub stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_transitions_are_409_unknown_deliveries_404_and_keys_replay() {
    let dir = TestDir::new("api");
    let pki = Pki::new(&dir);
    let hub = start(&dir, &pki).await;
    let http = http_client(&pki);
    let d = create(&hub, &http, None).await;
    let id = d.delivery_id;

    let r = change(&hub, &http, id, DeliveryStatus::Delivered, None, None).await;
    assert_eq!(r.status(), 409);
    let e: ApiError = r.json().await.expect("api error");
    assert_eq!(
        e.message,
        "cannot move a delivery from confirmed to delivered"
    );
    assert_eq!(
        change(
            &hub,
            &http,
            DeliveryId(9999),
            DeliveryStatus::Preparing,
            None,
            None
        )
        .await
        .status(),
        404
    );
    assert_eq!(
        change(&hub, &http, id, DeliveryStatus::DriverAssigned, None, None)
            .await
            .status(),
        400
    );

    let first: StatusChanged = change(
        &hub,
        &http,
        id,
        DeliveryStatus::Preparing,
        None,
        Some("k-1"),
    )
    .await
    .json()
    .await
    .expect("json");
    let again: StatusChanged = change(
        &hub,
        &http,
        id,
        DeliveryStatus::Preparing,
        None,
        Some("k-1"),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!((first.event_seq, first.replayed), (2, false));
    assert_eq!((again.event_seq, again.replayed), (2, true));
    assert_eq!(
        hub.metrics()
            .status_events
            .get_or_create(&region_hub::metrics::SourceLabel {
                source: "api".into()
            })
            .get(),
        2
    );

    let r = http
        .post(url(&hub, "/api/v1/deliveries"))
        .json(&CreateDelivery {
            delivery_id: None,
            pickup: PICKUP,
            dropoff: DROPOFF,
            driver_id: None,
        })
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 401, "creating needs a token");

    let info: serde_json::Value = http
        .get(url(&hub, "/api/v1/webtransport/info"))
        .send()
        .await
        .expect("info")
        .json()
        .await
        .expect("json");
    assert_eq!(info["port"], hub.webtransport_addr().port());
    assert_eq!(
        info["cert_sha256_b64"],
        certs::sha256_base64(&hub.webtransport_cert_hash())
    );

    let metrics = reqwest::get(format!("http://{}/metrics", hub.admin_addr()))
        .await
        .expect("admin")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("hub_status_events_total{source=\"api\"} 2"),
        "{metrics}"
    );
    hub.shutdown();
    tokio::time::timeout(WAIT, hub.join())
        .await
        .expect("hub stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_status_events_survive_a_restart_and_resume_after_last_event_seq() {
    let dir = TestDir::new("restart");
    let pki = Pki::new(&dir);
    let hub = start(&dir, &pki).await;
    let http = http_client(&pki);
    let d = create(&hub, &http, None).await;
    let id = d.delivery_id;
    for (s, driver) in [
        (DeliveryStatus::Preparing, None),
        (DeliveryStatus::DriverAssigned, Some(7)),
        (DeliveryStatus::PickedUp, None),
    ] {
        assert_eq!(change(&hub, &http, id, s, driver, None).await.status(), 200);
    }
    // Stop right after the last acknowledgement: it must already be on disk.
    hub.shutdown();
    tokio::time::timeout(WAIT, hub.join())
        .await
        .expect("hub stops");

    let hub = start(&dir, &pki).await;
    let r = http
        .get(url(&hub, &format!("/api/v1/tracking/{id}/status")))
        .bearer_auth(&d.tracking_token)
        .send()
        .await
        .expect("rest");
    assert_eq!(
        r.status(),
        200,
        "the tracking token and the delivery survive the restart"
    );
    let snap: Snapshot = r.json().await.expect("json");
    assert_eq!(
        (snap.status, snap.last_event_seq),
        (DeliveryStatus::PickedUp, 4)
    );

    let mut ws = ws_connect(
        &hub,
        &pki,
        id,
        &format!("?token={}&last_event_seq=2", d.tracking_token),
    )
    .await
    .expect("ws");
    let mut wt = wt_connect(
        &hub,
        id,
        &format!("?token={}&last_event_seq=1", d.tracking_token),
    )
    .await
    .expect("wt");
    assert_eq!(snapshot(ws_next(&mut ws).await).last_event_seq, 4);
    assert_eq!(snapshot(wt.reliable().await).last_event_seq, 4);
    assert_eq!(
        status_seq(&ws_next(&mut ws).await),
        Some((3, DeliveryStatus::DriverAssigned))
    );
    assert_eq!(
        status_seq(&ws_next(&mut ws).await),
        Some((4, DeliveryStatus::PickedUp))
    );
    for seq in 2..=4 {
        assert_eq!(status_seq(&wt.reliable().await).map(|s| s.0), Some(seq));
    }
    // The driver mapping survived too: the recovered delivery takes driver 7's fixes.
    let mut edge = Edge::connect(&hub, &pki).await;
    edge.send_fixes(vec![fix(7, 1)]).await;
    loop {
        match ws_next(&mut ws).await {
            ConsumerFrame::Position(p) => {
                assert_eq!(p.seq, 1);
                break;
            }
            ConsumerFrame::Eta(e) => assert!(e.remaining_m > 0.0),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Live events follow, without repeats.
    assert_eq!(
        change(&hub, &http, id, DeliveryStatus::EnRoute, None, None)
            .await
            .status(),
        200
    );
    loop {
        match ws_next(&mut ws).await {
            ConsumerFrame::Status(e) => {
                assert_eq!(e.event_seq, 5);
                break;
            }
            ConsumerFrame::Eta(_) | ConsumerFrame::Position(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        status_seq(&wt.reliable().await)
            .or(status_seq(&wt.reliable().await))
            .map(|s| s.0),
        Some(5)
    );
    ws.close(None).await.expect("close");
    drop(wt);
    hub.shutdown();
    tokio::time::timeout(WAIT, hub.join())
        .await
        .expect("hub stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_without_a_cluster_certificate_are_refused() {
    let dir = TestDir::new("mtls");
    let pki = Pki::new(&dir);
    let hub = start(&dir, &pki).await;
    let client =
        certs::client_config_with_roots(pki.ca(), &[protocol::ALPN_HUB], certs::TlsFor::Quic)
            .expect("tls");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(certs::quinn_client_config(client).expect("quinn"));
    let conn = endpoint
        .connect(hub.link_addr(), "localhost")
        .expect("connect")
        .await;
    // TLS 1.3: the client may finish its handshake before the server rejects the certificate.
    let refused = match conn {
        Err(_) => true,
        Ok(c) => tokio::time::timeout(WAIT, c.closed()).await.is_ok(),
    };
    assert!(refused);
    assert_eq!(hub.metrics().edge_links_active.get(), 0);
    hub.shutdown();
    tokio::time::timeout(WAIT, hub.join())
        .await
        .expect("hub stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_hear_when_the_driver_goes_silent() {
    let dir = TestDir::new("silent");
    let pki = Pki::new(&dir);
    let hub = start_with(HubConfig {
        location_unavailable_after_s: 1,
        ..config(&dir, &pki)
    })
    .await;
    let http = http_client(&pki);
    let d = create(&hub, &http, Some(3)).await;
    let mut ws = ws_connect(
        &hub,
        &pki,
        d.delivery_id,
        &format!("?token={}", d.tracking_token),
    )
    .await
    .expect("ws");
    snapshot(ws_next(&mut ws).await);
    let mut edge = Edge::connect(&hub, &pki).await;
    edge.send_fixes(vec![fix(3, 1)]).await;
    let mut positions = 0;
    let last_ts = loop {
        match ws_next(&mut ws).await {
            ConsumerFrame::Position(_) => positions += 1,
            ConsumerFrame::Eta(_) => {}
            ConsumerFrame::LocationUnavailable {
                delivery_id,
                last_ts_ms,
                age_s,
            } => {
                assert_eq!(delivery_id, d.delivery_id);
                assert!(age_s >= 1.0, "{age_s}");
                break last_ts_ms;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(positions, 1);
    assert_eq!(Some(last_ts), hub_snapshot_ts(&hub, &http, &d).await);
    hub.shutdown();
    tokio::time::timeout(WAIT, hub.join())
        .await
        .expect("hub stops");
}

async fn hub_snapshot_ts(
    hub: &HubHandle,
    http: &reqwest::Client,
    d: &DeliveryCreated,
) -> Option<u64> {
    let path = format!("/api/v1/tracking/{}/status", d.delivery_id);
    let snap: Snapshot = http
        .get(url(hub, &path))
        .bearer_auth(&d.tracking_token)
        .send()
        .await
        .expect("rest")
        .json()
        .await
        .expect("json");
    snap.position.map(|p| p.ts_ms)
}

/// Sends `req` and returns the status and the `ApiError` body (fails when the body is not one).
async fn api_error(req: reqwest::RequestBuilder) -> (u16, ApiError) {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = r.text().await.expect("body");
    assert!(ct.starts_with("application/json"), "{status} {ct}: {text}");
    let e: ApiError = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_paths_queries_bodies_routes_and_methods_answer_json_api_errors() {
    let dir = TestDir::new("api-errors");
    let pki = Pki::new(&dir);
    let hub = start(&dir, &pki).await;
    let http = http_client_unpooled(&pki);
    let op = hub.mint_token(Subject::Operator, 600);

    // A path segment that is not a delivery id (was axum's plain text).
    let (s, e) = api_error(
        http.get(url(&hub, "/api/v1/tracking/abc/status"))
            .bearer_auth(&op),
    )
    .await;
    assert_eq!((s, e.error.as_str()), (400, "bad_request"));
    assert!(e.message.contains("abc"), "{}", e.message);
    let (s, _) = api_error(
        http.post(url(&hub, "/api/v1/deliveries/-1/status"))
            .bearer_auth(&op)
            .json(&serde_json::json!({"status": "preparing"})),
    )
    .await;
    assert_eq!(s, 400);
    // A query value that is not a number.
    let (s, e) = api_error(
        http.get(url(&hub, "/api/v1/anomalies?limit=many"))
            .bearer_auth(&op),
    )
    .await;
    assert_eq!((s, e.error.as_str()), (400, "bad_request"));
    // Bodies: not JSON, the wrong content type, the wrong shape.
    let deliveries = url(&hub, "/api/v1/deliveries");
    let (s, _) = api_error(
        http.post(&deliveries)
            .bearer_auth(&op)
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(s, 400);
    let (s, e) = api_error(http.post(&deliveries).bearer_auth(&op).body("{}")).await;
    assert_eq!((s, e.error.as_str()), (415, "unsupported_media_type"));
    let (s, e) = api_error(
        http.post(&deliveries)
            .bearer_auth(&op)
            .json(&serde_json::json!({"pickup": 1})),
    )
    .await;
    assert_eq!((s, e.error.as_str()), (422, "unprocessable_entity"));
    // A WebSocket route asked without an upgrade.
    let (s, _) = api_error(
        http.get(url(&hub, "/api/v1/anomalies/stream"))
            .bearer_auth(&op),
    )
    .await;
    assert!(s == 400 || s == 426, "{s}");
    // Unknown routes and wrong methods.
    let (s, e) = api_error(http.get(url(&hub, "/api/v1/nothing-here"))).await;
    assert_eq!((s, e.error.as_str()), (404, "not_found"));
    let r = http
        .delete(&deliveries)
        .bearer_auth(&op)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let e: ApiError = r.json().await.expect("405 body is an ApiError");
    assert_eq!(e.error, "method_not_allowed");
    // An unknown static file.
    let (s, _) = api_error(http.get(url(&hub, "/web/nope.js"))).await;
    assert_eq!(s, 404);
    hub.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_description_lists_exactly_the_methods_each_path_takes() {
    let dir = TestDir::new("openapi");
    let pki = Pki::new(&dir);
    let hub = start(&dir, &pki).await;
    let http = http_client_unpooled(&pki);
    let r = http
        .get(url(&hub, "/api/v1/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().await.expect("json");
    assert!(doc["openapi"]
        .as_str()
        .unwrap_or_default()
        .starts_with("3."));
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 17, "{} paths", paths.len());
    let methods = ["get", "post", "put", "delete", "patch"];
    for (path, item) in paths {
        // Path parameters filled with a valid id (or file name).
        let concrete = path.replace("{id}", "1").replace("{file}", "style.css");
        for m in methods {
            let described = item.get(m).is_some();
            let method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).expect("method");
            let r = http
                .request(method, url(&hub, &concrete))
                .send()
                .await
                .expect("probe");
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            if described {
                assert!(
                    status != 405 && !body.contains("no route for"),
                    "{m} {path} is described but not served: {status} {body}"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{m} {path} is served but not described: {body}"
                );
            }
        }
    }
    hub.shutdown();
}

/// WebTransport handshakes pass the hub's gate before any crypto: past
/// `retry_above_in_flight` an unvalidated client is sent a Retry (and then admitted), and past
/// the rate it is refused, counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_handshakes_are_retried_then_refused_past_the_gate() {
    let dir = TestDir::new("wt-gate");
    let pki = Pki::new(&dir);
    let mut config = config(&dir, &pki);
    config.webtransport_handshakes = nodekit::HandshakeGateConfig {
        max_in_flight: 8,
        retry_above_in_flight: 0,
        // One handshake, then (practically) none for the rest of the test.
        rate_per_s: 0.001,
        burst: 1.0,
    };
    let hub = start_with(config).await;
    let http = http_client(&pki);
    let created = create(&hub, &http, Some(7)).await;
    let q = format!("?token={}", created.tracking_token);

    let mut first = wt_connect(&hub, created.delivery_id, &q)
        .await
        .expect("the first session is admitted after a Retry");
    assert_eq!(snapshot(first.reliable().await).last_event_seq, 2);
    match wt_connect(&hub, created.delivery_id, &q).await {
        Err(wtransport::error::ConnectingError::ConnectionError(e)) => {
            assert!(e.to_string().contains("refused"), "{e}")
        }
        Err(e) => panic!("expected a refused connection, got {e}"),
        Ok(_) => panic!("the second session is over the rate"),
    }
    let metrics = reqwest::get(format!("http://{}/metrics", hub.admin_addr()))
        .await
        .expect("admin")
        .text()
        .await
        .expect("text");
    for line in [
        "handshakes_retried_total{listener=\"webtransport\"} 2",
        "handshakes_admitted_total{listener=\"webtransport\"} 1",
        "handshakes_refused_total{listener=\"webtransport\",reason=\"rate\"} 1",
        "handshakes_in_flight{listener=\"webtransport\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
    hub.shutdown();
    tokio::time::timeout(WAIT, hub.join())
        .await
        .expect("hub stops");
}
