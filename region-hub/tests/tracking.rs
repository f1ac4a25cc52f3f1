//! End-to-end tests of issue 4 over real sockets: the status machine's refusals, geofence
//! status changes, anomalies (list, stream, metrics), breadcrumb history, the ETA countdown
//! while the location is unavailable, and photo proof of delivery.

mod support;

use futures::StreamExt;
use protocol::api::{ApiError, ChangeStatus, StatusChanged};
use protocol::consumer::{ConsumerFrame, Snapshot, StatusEvent};
use protocol::geo::{destination, haversine_m, LatLng};
use protocol::status::DeliveryStatus::{self, *};
use protocol::token::Subject;
use protocol::wire::{Fix, RoutedFix};
use protocol::DriverId;
use region_hub::serve::api::{AnomalyFrame, AnomalyList, HistoryPage, ProofAccepted};
use region_hub::{HubConfig, HubHandle};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn fix_at(driver: u64, seq: u32, ts_ms: u64, at: LatLng) -> RoutedFix {
    RoutedFix {
        driver_id: DriverId(driver),
        fix: Fix::from_units(seq, ts_ms, at.lat, at.lng, 90.0, 8.0, 4.0),
        edge_rx_ms: ts_ms,
    }
}

async fn stop(hub: HubHandle) {
    hub.shutdown();
    tokio::time::timeout(WAIT, hub.join())
        .await
        .expect("hub stops");
}

/// The next status event on a consumer WebSocket, skipping positions and ETAs.
async fn next_status(ws: &mut Ws) -> StatusEvent {
    loop {
        match ws_next(ws).await {
            ConsumerFrame::Status(e) => return e,
            ConsumerFrame::Position(_)
            | ConsumerFrame::Eta(_)
            | ConsumerFrame::LocationUnavailable { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// How to reach each status from a new delivery without a driver.
fn path_to(s: DeliveryStatus) -> &'static [DeliveryStatus] {
    match s {
        Confirmed => &[],
        Preparing => &[Preparing],
        DriverAssigned => &[DriverAssigned],
        PickedUp => &[DriverAssigned, PickedUp],
        EnRoute => &[DriverAssigned, EnRoute],
        Arriving => &[DriverAssigned, EnRoute, Arriving],
        Delivered => &[DriverAssigned, PickedUp, Delivered],
        Cancelled => &[Cancelled],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_transition_is_refused_with_409_and_leaves_the_log_unchanged() {
    let dir = TestDir::new("transitions");
    let pki = Pki::new(&dir);
    let hub = start(&dir, &pki).await;
    let http = http_client(&pki);
    let mut refused = 0;
    for from in DeliveryStatus::ALL {
        let d = create(&hub, &http, None).await;
        let id = d.delivery_id;
        for s in path_to(from) {
            let r = change(&hub, &http, id, *s, Some(7), None).await;
            assert_eq!(r.status(), 200, "{s}");
        }
        let seq_before = 1 + path_to(from).len() as u64;
        for to in DeliveryStatus::ALL {
            if from.successors().contains(&to) {
                continue;
            }
            let r = change(&hub, &http, id, to, Some(7), None).await;
            assert_eq!(r.status(), 409, "{from} -> {to} must be refused");
            let e: ApiError = r.json().await.expect("api error");
            assert_eq!(
                (e.error.as_str(), e.message),
                (
                    "conflict",
                    format!("cannot move a delivery from {from} to {to}")
                )
            );
            refused += 1;
        }
        let snap: Snapshot = http
            .get(url(&hub, &format!("/api/v1/tracking/{id}/status")))
            .bearer_auth(&d.tracking_token)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        assert_eq!((snap.status, snap.last_event_seq), (from, seq_before));
    }
    // 64 pairs minus the 17 edges of the machine.
    assert_eq!(refused, 64 - 17);
    stop(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_keep_their_source_and_metadata_in_the_log_and_on_resume() {
    let dir = TestDir::new("metadata");
    let pki = Pki::new(&dir);
    let hub = start(&dir, &pki).await;
    let http = http_client(&pki);
    let d = create(&hub, &http, Some(7)).await;
    let op = hub.mint_token(Subject::Operator, 600);
    let r = http
        .post(url(
            &hub,
            &format!("/api/v1/deliveries/{}/status", d.delivery_id),
        ))
        .bearer_auth(&op)
        .json(&ChangeStatus {
            status: PickedUp,
            idempotency_key: Some("pick-1".into()),
            driver_id: None,
            metadata: serde_json::json!({"by": "restaurant", "bags": 2}),
        })
        .send()
        .await
        .expect("change");
    let changed: StatusChanged = r.json().await.expect("json");
    assert_eq!(changed.event_seq, 3);
    let mut ws = ws_connect(
        &hub,
        &pki,
        d.delivery_id,
        &format!("?token={}&last_event_seq=0", d.tracking_token),
    )
    .await
    .expect("ws");
    snapshot(ws_next(&mut ws).await);
    let events: Vec<StatusEvent> = vec![
        next_status(&mut ws).await,
        next_status(&mut ws).await,
        next_status(&mut ws).await,
    ];
    assert_eq!(
        events
            .iter()
            .map(|e| (e.event_seq, e.status))
            .collect::<Vec<_>>(),
        vec![(1, Confirmed), (2, DriverAssigned), (3, PickedUp)]
    );
    assert!(events.iter().all(|e| e.source == "api"));
    assert_eq!(
        events[2].metadata,
        serde_json::json!({"by": "restaurant", "bags": 2})
    );
    assert!(events[2].ts_ms > 0);
    // The history endpoint returns the same stored events.
    let page: HistoryPage = http
        .get(url(
            &hub,
            &format!("/api/v1/tracking/{}/history", d.delivery_id),
        ))
        .bearer_auth(&d.tracking_token)
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    assert_eq!(page.events, events);
    stop(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geofences_move_the_order_to_picked_up_en_route_and_arriving() {
    let dir = TestDir::new("geofence");
    let pki = Pki::new(&dir);
    let hub = start(&dir, &pki).await;
    let http = http_client(&pki);
    let d = create(&hub, &http, Some(7)).await;
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
    let t0 = nodekit::unix_ms() - 60_000;
    let away = 225.0; // away from the drop-off
    let plan = [
        (PICKUP, 300.0, away),
        (PICKUP, 30.0, away),
        (PICKUP, 20.0, away),
        // Noise at 60-75 m stays inside (exit radius 80 m).
        (PICKUP, 60.0, away),
        (PICKUP, 75.0, away),
        (PICKUP, 10.0, away),
        (PICKUP, 100.0, away),
        (PICKUP, 150.0, away),
        (DROPOFF, 45.0, 0.0),
        (DROPOFF, 20.0, 0.0),
    ];
    let fixes = plan
        .iter()
        .enumerate()
        .map(|(i, (c, m, b))| {
            fix_at(
                7,
                i as u32 + 1,
                t0 + i as u64 * 5_000,
                destination(*c, *b, *m),
            )
        })
        .collect();
    edge.send_fixes(fixes).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_status(&mut ws).await);
    }
    assert_eq!(
        got.iter()
            .map(|e| (e.event_seq, e.status, e.source.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (3, PickedUp, "geofence"),
            (4, EnRoute, "geofence"),
            (5, Arriving, "geofence")
        ]
    );
    assert_eq!(got[0].metadata["zone"], "pickup");
    assert_eq!(got[2].metadata["zone"], "dropoff");
    // The changes are durable: a resume from 2 replays them from redb.
    let mut again = ws_connect(
        &hub,
        &pki,
        d.delivery_id,
        &format!("?token={}&last_event_seq=2", d.tracking_token),
    )
    .await
    .expect("ws");
    assert_eq!(snapshot(ws_next(&mut again).await).status, Arriving);
    for seq in 3..=5 {
        assert_eq!(next_status(&mut again).await.event_seq, seq);
    }
    assert_eq!(
        hub.metrics()
            .status_events
            .get_or_create(&region_hub::metrics::SourceLabel {
                source: "geofence".into()
            })
            .get(),
        3
    );
    stop(hub).await;
}

type OpWs =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn ws_path(hub: &HubHandle, pki: &Pki, path: &str) -> Result<OpWs, u16> {
    let tls =
        certs::client_config_with_roots(pki.ca(), &[b"http/1.1"], certs::TlsFor::Tcp).expect("tls");
    let tcp = tokio::net::TcpStream::connect(hub.https_addr())
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("tls");
    let u = format!("wss://localhost:{}{path}", hub.https_addr().port());
    match tokio_tungstenite::client_async(u, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket handshake failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stationary_and_moving_away_drivers_are_stored_counted_listed_and_streamed() {
    let dir = TestDir::new("anomaly");
    let pki = Pki::new(&dir);
    let hub = start(&dir, &pki).await;
    let http = http_client(&pki);
    let d = create(&hub, &http, Some(8)).await;
    let op = hub.mint_token(Subject::Operator, 600);
    assert_eq!(
        ws_path(
            &hub,
            &pki,
            &format!("/api/v1/anomalies/stream?token={}", d.tracking_token)
        )
        .await
        .err(),
        Some(403),
        "a tracking token may not watch anomalies"
    );
    let mut stream = ws_path(&hub, &pki, &format!("/api/v1/anomalies/stream?token={op}"))
        .await
        .expect("operator stream");

    // Parked 600 m west of the pickup (far from both stops) for 5.5 minutes, then driving
    // further away from the pickup it should be heading to.
    let spot = destination(PICKUP, 270.0, 600.0);
    let t0 = nodekit::unix_ms() - 900_000;
    let mut fixes = Vec::new();
    for i in 0..=11u64 {
        let jitter = destination(spot, (i * 77 % 360) as f64, (i % 2) as f64 * 5.0);
        fixes.push(fix_at(8, i as u32 + 1, t0 + i * 30_000, jitter));
    }
    for j in 1..=8u64 {
        let here = destination(spot, 270.0, j as f64 * 60.0);
        fixes.push(fix_at(8, 20 + j as u32, t0 + 330_000 + j * 10_000, here));
    }
    let mut edge = Edge::connect(&hub, &pki).await;
    edge.send_fixes(fixes).await;

    let mut streamed = Vec::new();
    while streamed.len() < 2 {
        let msg = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("anomaly in time")
            .expect("open")
            .expect("ws");
        if let Message::Text(t) = msg {
            match serde_json::from_str::<AnomalyFrame>(&t).expect("anomaly frame") {
                AnomalyFrame::Anomaly(a) => streamed.push(a),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(
        streamed.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(),
        vec!["stationary", "moving_away"]
    );
    assert!(streamed.iter().all(|a| a.delivery_id == d.delivery_id));
    assert!(streamed[0].stationary_s.is_some_and(|s| s >= 300.0));
    assert!(streamed[1].grew_m.is_some_and(|g| g > 300.0));
    assert_eq!(hub.metrics().anomalies_total("stationary"), 1);
    assert_eq!(hub.metrics().anomalies_total("moving_away"), 1);

    let list = |q: String, tok: String| {
        let http = http.clone();
        let u = url(&hub, &format!("/api/v1/anomalies{q}"));
        async move { http.get(u).bearer_auth(tok).send().await.expect("list") }
    };
    let r = list(format!("?delivery={}", d.delivery_id), op.clone()).await;
    assert_eq!(r.status(), 200);
    let l: AnomalyList = r.json().await.expect("json");
    let mut newest_first = streamed.clone();
    newest_first.reverse();
    assert_eq!(l.anomalies, newest_first);
    let l: AnomalyList = list("?delivery=999999".into(), op.clone())
        .await
        .json()
        .await
        .expect("json");
    assert!(l.anomalies.is_empty());
    assert_eq!(
        list(String::new(), d.tracking_token.clone()).await.status(),
        403
    );
    let r = http
        .get(url(&hub, "/api/v1/anomalies"))
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 401);
    let metrics = reqwest::get(format!("http://{}/metrics", hub.admin_addr()))
        .await
        .expect("admin")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("hub_anomalies_total{kind=\"moving_away\"} 1"),
        "{metrics}"
    );
    let _ = stream.close(None).await;
    stop(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_fix_is_stored_and_history_pages_through_breadcrumbs_and_events() {
    let dir = TestDir::new("history");
    let pki = Pki::new(&dir);
    let hub = start(&dir, &pki).await;
    let http = http_client(&pki);
    let d = create(&hub, &http, Some(9)).await;
    let other = create(&hub, &http, None).await;
    let id = d.delivery_id;
    let mut edge = Edge::connect(&hub, &pki).await;
    let t0 = nodekit::unix_ms() - 100_000;
    let route: Vec<LatLng> = (0..30)
        .map(|i| destination(PICKUP, 200.0, 300.0 + i as f64 * 10.0))
        .collect();
    for (i, at) in route.iter().enumerate() {
        edge.send_fixes(vec![fix_at(9, i as u32 + 1, t0 + i as u64 * 1_000, *at)])
            .await;
    }
    assert_eq!(
        change(&hub, &http, id, PickedUp, None, None).await.status(),
        200
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.metrics().breadcrumbs_stored.get() < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "breadcrumbs stored in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.metrics().breadcrumbs_dropped.get(), 0);

    let get = |q: String, tok: Option<String>| {
        let http = http.clone();
        let u = url(&hub, &format!("/api/v1/tracking/{id}/history{q}"));
        async move {
            let mut r = http.get(u);
            if let Some(t) = tok {
                r = r.bearer_auth(t);
            }
            r.send().await.expect("history")
        }
    };
    assert_eq!(get(String::new(), None).await.status(), 401);
    assert_eq!(
        get(String::new(), Some(other.tracking_token.clone()))
            .await
            .status(),
        403
    );
    assert_eq!(
        get("?limit=x".into(), Some(d.tracking_token.clone()))
            .await
            .status(),
        400
    );

    let mut crumbs = Vec::new();
    let mut events = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let q = match after {
            Some(a) => format!("?limit=12&after_ts={a}"),
            None => "?limit=12".to_owned(),
        };
        let r = get(q, Some(d.tracking_token.clone())).await;
        assert_eq!(r.status(), 200);
        let page: HistoryPage = r.json().await.expect("json");
        pages += 1;
        assert!(page.breadcrumbs.len() <= 12);
        crumbs.extend(page.breadcrumbs);
        events.extend(page.events);
        match page.next_after_ts {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(crumbs.len(), 30);
    for (c, (i, at)) in crumbs.iter().zip(route.iter().enumerate()) {
        assert_eq!(c.ts_ms, t0 + i as u64 * 1_000);
        assert!(haversine_m(LatLng::new(c.lat, c.lng), *at) < 0.1);
    }
    let mut seqs: Vec<u64> = events.iter().map(|e| e.event_seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        vec![1, 2, 3],
        "every event exactly once over the pages"
    );

    // An operator may read it too; an unknown delivery is 404.
    let op = hub.mint_token(Subject::Operator, 600);
    assert_eq!(get(String::new(), Some(op.clone())).await.status(), 200);
    let r = http
        .get(url(&hub, "/api/v1/tracking/424242/history"))
        .bearer_auth(&op)
        .send()
        .await
        .expect("history");
    assert_eq!(r.status(), 404);
    stop(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eta_keeps_counting_down_while_the_location_is_unavailable() {
    let dir = TestDir::new("countdown");
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
    loop {
        if let ConsumerFrame::LocationUnavailable { .. } = ws_next(&mut ws).await {
            break;
        }
    }
    let mut etas = Vec::new();
    while etas.len() < 2 {
        match ws_next(&mut ws).await {
            ConsumerFrame::Eta(e) => etas.push(e),
            ConsumerFrame::LocationUnavailable { .. } => {}
            other => panic!("no position while unavailable: {other:?}"),
        }
    }
    let (a, b) = (&etas[0], &etas[1]);
    assert!(b.seq > a.seq && b.ts_ms > a.ts_ms, "{a:?} {b:?}");
    assert!(b.eta_s < a.eta_s, "{a:?} {b:?}");
    let elapsed_s = (b.ts_ms - a.ts_ms) as f64 / 1000.0;
    assert!(
        (a.eta_s - b.eta_s - elapsed_s).abs() < 0.5,
        "counts down by the elapsed time: {a:?} {b:?}"
    );
    stop(hub).await;
}

const JPEG_MAGIC: &[u8] = &[
    0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00,
];
const PNG_MAGIC: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

fn image(magic: &[u8], len: usize) -> Vec<u8> {
    let mut v = magic.to_vec();
    v.extend((0..len.saturating_sub(magic.len())).map(|i| (i * 31 % 251) as u8));
    v
}

/// One form field: name, `Some((file name, content type))` for a file, bytes.
type Part<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a [u8]);

/// A multipart/form-data body and its content type.
fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = "trackline-test-boundary-7c1e";
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some((fname, ct)) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{fname}\"\r\nContent-Type: {ct}\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photo_proof_is_checked_stored_and_marks_the_order_delivered() {
    let dir = TestDir::new("proof");
    let pki = Pki::new(&dir);
    let mut cfg = config(&dir, &pki);
    cfg.proof.max_bytes = 4096;
    let hub = start_with(cfg).await;
    // Uploads below are refused before their bodies are read: one connection each.
    let http = http_client_unpooled(&pki);
    let d = create(&hub, &http, Some(11)).await;
    let id = d.delivery_id;
    assert_eq!(
        change(&hub, &http, id, EnRoute, None, None).await.status(),
        200
    );
    let mut ws = ws_connect(&hub, &pki, id, &format!("?token={}", d.tracking_token))
        .await
        .expect("ws");
    snapshot(ws_next(&mut ws).await);

    let driver = hub.mint_token(Subject::Driver(DriverId(11)), 600);
    let post = |tok: String, parts: (String, Vec<u8>)| {
        let http = http.clone();
        let u = url(&hub, &format!("/api/v1/tracking/{id}/proof"));
        async move {
            http.post(u)
                .bearer_auth(tok)
                .header("content-type", parts.0)
                .body(parts.1)
                .send()
                .await
                .expect("upload")
        }
    };
    let near = destination(DROPOFF, 90.0, 30.0);
    let far = destination(DROPOFF, 90.0, 400.0);
    let (lat, lng) = (far.lat.to_string(), far.lng.to_string());
    let jpeg = image(JPEG_MAGIC, 3000);
    let form = |img: &[u8], ct: &str| {
        multipart(&[
            ("image", Some(("door.jpg", ct)), img),
            ("lat", None, lat.as_bytes()),
            ("lng", None, lng.as_bytes()),
        ])
    };
    async fn refusal(r: reqwest::Response) -> (u16, ApiError) {
        let status = r.status().as_u16();
        (status, r.json().await.expect("api error body"))
    }

    // Only the assigned driver.
    let other = hub.mint_token(Subject::Driver(DriverId(12)), 600);
    assert_eq!(post(other, form(&jpeg, "image/jpeg")).await.status(), 403);
    assert_eq!(
        post(d.tracking_token.clone(), form(&jpeg, "image/jpeg"))
            .await
            .status(),
        403
    );
    assert_eq!(
        post(String::new(), form(&jpeg, "image/jpeg"))
            .await
            .status(),
        401
    );
    // Mislabelled: PNG bytes sent as JPEG.
    let (status, e) =
        refusal(post(driver.clone(), form(&image(PNG_MAGIC, 500), "image/jpeg")).await).await;
    assert_eq!(status, 415);
    assert_eq!(
        e.message,
        "mislabelled image: declared image/jpeg but the bytes are PNG"
    );
    // Unsupported: a GIF.
    let (status, e) =
        refusal(post(driver.clone(), form(b"GIF89a\x01\x00\x01\x00", "image/gif")).await).await;
    assert_eq!(status, 415);
    assert!(
        e.message.contains("not JPEG, PNG, WebP or HEIC"),
        "{}",
        e.message
    );
    // Oversized: 5000 bytes against a 4096-byte limit.
    let (status, e) =
        refusal(post(driver.clone(), form(&image(JPEG_MAGIC, 5000), "image/jpeg")).await).await;
    assert_eq!(status, 413);
    assert!(e.message.contains("4096"), "{}", e.message);
    // Far past the body limit: refused before the body is read. Over HTTP/1.1 the hub may
    // answer 413 and close while the client is still writing, which the client sees as a
    // broken pipe instead of the answer; either way nothing may be recorded (checked below).
    let huge = image(JPEG_MAGIC, 200_000);
    let (ct, body) = form(&huge, "image/jpeg");
    let answer = http
        .post(url(&hub, &format!("/api/v1/tracking/{id}/proof")))
        .bearer_auth(driver.clone())
        .header("content-type", ct)
        .body(body)
        .send()
        .await;
    match answer {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(
            e.is_request() && format!("{e:?}").contains("BrokenPipe")
                || format!("{e:?}").contains("ConnectionReset"),
            "{e:?}"
        ),
    }
    // No position.
    let no_gps = multipart(&[("image", Some(("door.jpg", "image/jpeg")), &jpeg[..])]);
    assert_eq!(post(driver.clone(), no_gps).await.status(), 400);
    let snap: Snapshot = http
        .get(url(&hub, &format!("/api/v1/tracking/{id}/status")))
        .bearer_auth(&d.tracking_token)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (snap.status, snap.last_event_seq),
        (EnRoute, 3),
        "refused uploads record nothing"
    );

    // Accepted, far from the drop-off: flagged.
    let r = post(driver.clone(), form(&jpeg, "image/jpeg")).await;
    assert_eq!(r.status(), 201);
    let ok: ProofAccepted = r.json().await.expect("json");
    assert_eq!(
        (ok.status, ok.event_seq, ok.replayed),
        (Delivered, 4, false)
    );
    assert!(ok.far_from_dropoff);
    assert!((ok.distance_m - 400.0).abs() < 1.0, "{}", ok.distance_m);
    assert_eq!(ok.proof_url, format!("/api/v1/tracking/{id}/proof"));
    let ev = next_status(&mut ws).await;
    assert_eq!(
        (ev.event_seq, ev.status, ev.source.as_str()),
        (4, Delivered, "driver")
    );
    assert_eq!(ev.metadata["proof_url"], ok.proof_url);
    assert_eq!(ev.metadata["far_from_dropoff"], true);
    // A retry of the same upload replays; the file is stored once, under its hash.
    let r = post(driver.clone(), form(&jpeg, "image/jpeg")).await;
    assert_eq!(r.status(), 200);
    let again: ProofAccepted = r.json().await.expect("json");
    assert_eq!((again.event_seq, again.replayed), (4, true));
    let blob = dir.join(format!("data/proofs/{}.jpg", ok.sha256));
    assert_eq!(std::fs::read(&blob).expect("blob"), jpeg);
    // A different photo after delivery is a conflict.
    let (lat2, lng2) = (near.lat.to_string(), near.lng.to_string());
    let other_photo = image(JPEG_MAGIC, 2000);
    let late = multipart(&[
        ("image", Some(("x.jpg", "image/jpeg")), &other_photo[..]),
        ("lat", None, lat2.as_bytes()),
        ("lng", None, lng2.as_bytes()),
    ]);
    assert_eq!(post(driver.clone(), late).await.status(), 409);

    // The consumer fetches it with the right content type.
    let proof_url = url(&hub, &ok.proof_url);
    assert_eq!(
        http.get(&proof_url).send().await.expect("get").status(),
        401
    );
    let r = http
        .get(&proof_url)
        .bearer_auth(&d.tracking_token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/jpeg")
    );
    assert_eq!(r.bytes().await.expect("bytes").as_ref(), &jpeg[..]);
    let _ = ws.close(None).await;
    stop(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_taken_at_the_door_is_not_flagged_and_gps_may_come_as_json() {
    let dir = TestDir::new("proof-near");
    let pki = Pki::new(&dir);
    let hub = start(&dir, &pki).await;
    let http = http_client(&pki);
    let d = create(&hub, &http, Some(5)).await;
    let id = d.delivery_id;
    assert_eq!(
        change(&hub, &http, id, PickedUp, None, None).await.status(),
        200
    );
    let near = destination(DROPOFF, 0.0, 20.0);
    let gps = format!("{{\"lat\":{},\"lng\":{}}}", near.lat, near.lng);
    let png = image(PNG_MAGIC, 800);
    let (ct, body) = multipart(&[
        ("gps", None, gps.as_bytes()),
        ("image", Some(("door.png", "image/png")), &png[..]),
    ]);
    let r = http
        .post(url(&hub, &format!("/api/v1/tracking/{id}/proof")))
        .bearer_auth(hub.mint_token(Subject::Driver(DriverId(5)), 60))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201);
    let ok: ProofAccepted = r.json().await.expect("json");
    assert!(!ok.far_from_dropoff && ok.distance_m < 25.0, "{ok:?}");
    assert_eq!(ok.content_type, "image/png");
    let op = hub.mint_token(Subject::Operator, 60);
    let r = http
        .get(url(&hub, &ok.proof_url))
        .bearer_auth(op)
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/png")
    );
    stop(hub).await;
}

/// A push sender that records what it was asked to send (the notify crate's own tests cover
/// the APNs and FCM request shapes against a real HTTP/2 server).
struct Recorder {
    tx: tokio::sync::mpsc::UnboundedSender<(notify::DeviceToken, notify::Notification)>,
}

impl notify::PushSender for Recorder {
    fn platform(&self) -> notify::Platform {
        notify::Platform::Fcm
    }

    fn send<'a>(
        &'a self,
        device: &'a notify::DeviceToken,
        notification: &'a notify::Notification,
    ) -> notify::BoxFuture<'a, Result<notify::SendOutcome, notify::PushError>> {
        let _ = self.tx.send((device.clone(), notification.clone()));
        Box::pin(async {
            Ok(notify::SendOutcome::Sent {
                attempts: 1,
                message_id: None,
                backoff: Duration::ZERO,
            })
        })
    }
}

async fn start_recording(
    cfg: HubConfig,
) -> (
    HubHandle,
    tokio::sync::mpsc::UnboundedReceiver<(notify::DeviceToken, notify::Notification)>,
) {
    certs::install_default_crypto_provider();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut registry = prometheus_client::registry::Registry::default();
    let notifier = notify::Notifier::new(notify::NotifyMetrics::register(&mut registry))
        .with_sender(Arc::new(Recorder { tx }));
    let hub = region_hub::spawn_with_notifier(cfg, Some(notifier))
        .await
        .expect("hub starts");
    (hub, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_devices_get_a_push_at_each_milestone_and_survive_a_restart() {
    let dir = TestDir::new("push");
    let pki = Pki::new(&dir);
    let (hub, mut pushes) = start_recording(config(&dir, &pki)).await;
    let http = http_client(&pki);
    let a = create(&hub, &http, None).await;
    let b = create(&hub, &http, None).await;
    let register = |id: protocol::DeliveryId, tok: Option<String>, body: serde_json::Value| {
        let http = http.clone();
        let u = url(&hub, &format!("/api/v1/tracking/{id}/devices"));
        async move {
            let mut r = http.post(u).json(&body);
            if let Some(t) = tok {
                r = r.bearer_auth(t);
            }
            r.send().await.expect("register")
        }
    };
    let phone = serde_json::json!({"platform": "fcm", "token": "fcm-registration-token-1"});
    assert_eq!(
        register(a.delivery_id, None, phone.clone()).await.status(),
        401
    );
    assert_eq!(
        register(a.delivery_id, Some(b.tracking_token.clone()), phone.clone())
            .await
            .status(),
        403
    );
    let bad = serde_json::json!({"platform": "apns", "token": "not-hex"});
    let r = register(a.delivery_id, Some(a.tracking_token.clone()), bad).await;
    assert_eq!(r.status(), 400);
    let e: ApiError = r.json().await.expect("json");
    assert!(e.message.contains("hex"), "{}", e.message);
    let r = register(a.delivery_id, Some(a.tracking_token.clone()), phone.clone()).await;
    assert_eq!(r.status(), 201);
    let r = register(a.delivery_id, Some(a.tracking_token.clone()), phone.clone()).await;
    assert_eq!(r.status(), 200, "registering again is not an error");
    let r = register(b.delivery_id, Some(b.tracking_token.clone()), phone.clone()).await;
    assert_eq!(r.status(), 201);

    for s in [
        Preparing,
        DriverAssigned,
        PickedUp,
        EnRoute,
        Arriving,
        Delivered,
    ] {
        let driver = (s == DriverAssigned).then_some(4);
        assert_eq!(
            change(&hub, &http, a.delivery_id, s, driver, None)
                .await
                .status(),
            200
        );
    }
    let mut got = Vec::new();
    while got.len() < 4 {
        let (device, n) = tokio::time::timeout(WAIT, pushes.recv())
            .await
            .expect("push in time")
            .expect("sender alive");
        assert_eq!(device.token, "fcm-registration-token-1");
        assert_eq!(n.delivery_id, a.delivery_id.0);
        got.push(n.status);
    }
    got.sort();
    assert_eq!(got, vec![DriverAssigned, PickedUp, Arriving, Delivered]);
    stop(hub).await;

    // The registration of `b` is durable: after a restart its first milestone is pushed.
    let (hub, mut pushes) = start_recording(config(&dir, &pki)).await;
    assert_eq!(
        change(&hub, &http, b.delivery_id, DriverAssigned, Some(4), None)
            .await
            .status(),
        200
    );
    let (_, n) = tokio::time::timeout(WAIT, pushes.recv())
        .await
        .expect("push in time")
        .expect("sender alive");
    assert_eq!((n.delivery_id, n.status), (b.delivery_id.0, DriverAssigned));
    stop(hub).await;
}
