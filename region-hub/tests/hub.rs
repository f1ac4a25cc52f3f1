//! End-to-end tests of the hub over real sockets: a quinn mTLS edge, WebSocket and
//! WebTransport consumers, the REST API, and restarts on the same redb file.

use futures::StreamExt;
use protocol::api::{ApiError, ChangeStatus, CreateDelivery, DeliveryCreated, StatusChanged};
use protocol::consumer::{ConsumerFrame, Snapshot};
use protocol::framing::{frame_bytes, FrameDecoder, MAX_HUB_FRAME};
use protocol::geo::LatLng;
use protocol::status::DeliveryStatus;
use protocol::token::Subject;
use protocol::wire::{EdgeToHub, Fix, HubToEdge, RoutedFix};
use protocol::{DeliveryId, DriverId};
use region_hub::{HubConfig, HubHandle};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);
const PICKUP: LatLng = LatLng::new(60.170, 24.940);
const DROPOFF: LatLng = LatLng::new(60.175, 24.950);

/// A temp directory with a dev PKI, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "trackline-hub-it-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        Self(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Pki {
    pki: certs::DevPki,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let pki_dir = dir.join("pki");
        let pki = certs::DevPki::load_or_create(&pki_dir).expect("dev pki");
        Self { pki, dir: pki_dir }
    }

    fn sans() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into()]
    }

    fn node(&self, name: &str, role: certs::NodeRole) -> nodekit::TlsFiles {
        let (cert, key) =
            certs::NodeCert::load_or_issue(&self.pki, &self.dir, name, &Self::sans(), role)
                .map(|_| certs::NodeCert::paths(&self.dir, name))
                .expect("issue");
        nodekit::TlsFiles {
            cert,
            key,
            ca: self.dir.join("ca.pem"),
        }
    }

    fn ca(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        vec![self.pki.ca_cert_der()]
    }
}

fn config(dir: &Path, pki: &Pki) -> HubConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    HubConfig {
        link_listen: any,
        webtransport_listen: any,
        https_listen: any,
        admin_listen: any,
        data_dir: dir.join("data"),
        tls: pki.node("hub", certs::NodeRole::Hub),
        token_signing_key: dir.join("data/token.pk8"),
        ..HubConfig::default()
    }
}

async fn start(dir: &Path, pki: &Pki) -> HubHandle {
    start_with(config(dir, pki)).await
}

async fn start_with(config: HubConfig) -> HubHandle {
    certs::install_default_crypto_provider();
    region_hub::spawn(config).await.expect("hub starts")
}

fn http_client(pki: &Pki) -> reqwest::Client {
    let tls =
        certs::client_config_with_roots(pki.ca(), &[b"http/1.1"], certs::TlsFor::Tcp).expect("tls");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(WAIT)
        .build()
        .expect("client")
}

fn url(hub: &HubHandle, path: &str) -> String {
    format!("https://localhost:{}{path}", hub.https_addr().port())
}

async fn create(hub: &HubHandle, http: &reqwest::Client, driver: Option<u64>) -> DeliveryCreated {
    let op = hub.mint_token(Subject::Operator, 600);
    let r = http
        .post(url(hub, "/api/v1/deliveries"))
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
    r.json().await.expect("created json")
}

async fn change(
    hub: &HubHandle,
    http: &reqwest::Client,
    id: DeliveryId,
    status: DeliveryStatus,
    driver: Option<u64>,
    key: Option<&str>,
) -> reqwest::Response {
    let op = hub.mint_token(Subject::Operator, 600);
    http.post(url(hub, &format!("/api/v1/deliveries/{id}/status")))
        .bearer_auth(op)
        .json(&ChangeStatus {
            status,
            idempotency_key: key.map(str::to_owned),
            driver_id: driver.map(DriverId),
            metadata: serde_json::Value::Null,
        })
        .send()
        .await
        .expect("change status")
}

/// A real edge: quinn client with a cluster certificate, Hello then batches.
struct Edge {
    _endpoint: quinn::Endpoint,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    batch_seq: u64,
}

impl Edge {
    async fn connect(hub: &HubHandle, pki: &Pki) -> Self {
        let files = pki.node("edge-1", certs::NodeRole::Edge);
        let tls = files.load().expect("edge tls");
        let client = certs::mtls_client_config(
            tls.chain,
            tls.key,
            tls.roots,
            &[protocol::ALPN_HUB],
            certs::TlsFor::Quic,
        )
        .expect("client tls");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint
            .set_default_client_config(certs::quinn_client_config(client).expect("quinn config"));
        let conn = endpoint
            .connect(hub.link_addr(), "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, recv) = conn.open_bi().await.expect("open bi");
        send.write_all(&frame_bytes(&EdgeToHub::Hello {
            edge_id: "edge-1".into(),
        }))
        .await
        .expect("hello");
        let mut edge = Self {
            _endpoint: endpoint,
            send,
            recv,
            decoder: FrameDecoder::new(MAX_HUB_FRAME),
            batch_seq: 0,
        };
        assert!(matches!(edge.next().await, HubToEdge::Welcome { .. }));
        edge
    }

    async fn next(&mut self) -> HubToEdge {
        let mut buf = vec![0u8; 4096];
        loop {
            if let Some(f) = self.decoder.next_frame::<HubToEdge>().expect("frame") {
                return f;
            }
            let n = tokio::time::timeout(WAIT, self.recv.read(&mut buf))
                .await
                .expect("hub answers")
                .expect("read");
            self.decoder.push(&buf[..n.expect("stream open")]);
        }
    }

    /// Sends one batch and waits for its ack.
    async fn send_fixes(&mut self, fixes: Vec<RoutedFix>) {
        self.batch_seq += 1;
        let seq = self.batch_seq;
        self.send
            .write_all(&frame_bytes(&EdgeToHub::Batch {
                batch_seq: seq,
                fixes,
            }))
            .await
            .expect("batch");
        assert_eq!(self.next().await, HubToEdge::Ack { batch_seq: seq });
    }
}

fn fix(driver: u64, i: u64) -> RoutedFix {
    let at = protocol::geo::destination(PICKUP, 45.0, 20.0 * i as f64);
    let ts = nodekit::unix_ms() - 1000 + i;
    RoutedFix {
        driver_id: DriverId(driver),
        fix: Fix::from_units(i as u32, ts, at.lat, at.lng, 45.0, 8.0, 4.0),
        edge_rx_ms: ts,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens the consumer WebSocket over TLS; `Err(status)` when the hub refuses the upgrade.
async fn ws_connect(hub: &HubHandle, pki: &Pki, id: DeliveryId, query: &str) -> Result<Ws, u16> {
    let tls =
        certs::client_config_with_roots(pki.ca(), &[b"http/1.1"], certs::TlsFor::Tcp).expect("tls");
    let tcp = tokio::net::TcpStream::connect(hub.https_addr())
        .await
        .expect("tcp");
    let server_name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .expect("tls");
    let u = format!(
        "wss://localhost:{}/api/v1/tracking/{id}/connect{query}",
        hub.https_addr().port()
    );
    match tokio_tungstenite::client_async(u, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            assert!(
                serde_json::from_slice::<ApiError>(body).is_ok(),
                "refusal is an ApiError: {body:?}"
            );
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("websocket handshake failed: {e}"),
    }
}

async fn ws_next(ws: &mut Ws) -> ConsumerFrame {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("ws");
        if let Message::Text(t) = msg {
            return ConsumerFrame::from_json(&t).expect("consumer frame");
        }
    }
}

/// A WebTransport consumer: the reliable uni stream and the datagrams.
struct Wt {
    conn: wtransport::Connection,
    lines: tokio::io::Lines<tokio::io::BufReader<wtransport::RecvStream>>,
    _endpoint: wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
}

async fn wt_connect(
    hub: &HubHandle,
    id: DeliveryId,
    query: &str,
) -> Result<Wt, wtransport::error::ConnectingError> {
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(
            hub.webtransport_cert_hash(),
        )])
        .build();
    let endpoint = wtransport::Endpoint::client(config).expect("wt client");
    let u = format!(
        "https://127.0.0.1:{}/api/v1/tracking/{id}/wt{query}",
        hub.webtransport_addr().port()
    );
    let conn = tokio::time::timeout(WAIT, endpoint.connect(u))
        .await
        .expect("wt connect in time")?;
    let stream = tokio::time::timeout(WAIT, conn.accept_uni())
        .await
        .expect("uni stream in time")
        .expect("uni");
    Ok(Wt {
        conn,
        lines: tokio::io::BufReader::new(stream).lines(),
        _endpoint: endpoint,
    })
}

impl Wt {
    async fn reliable(&mut self) -> ConsumerFrame {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("line in time")
            .expect("read");
        ConsumerFrame::from_json(&line.expect("stream open")).expect("frame")
    }

    async fn datagram(&self) -> ConsumerFrame {
        let d = tokio::time::timeout(WAIT, self.conn.receive_datagram())
            .await
            .expect("datagram in time")
            .expect("dg");
        ConsumerFrame::from_json(std::str::from_utf8(&d.payload()).expect("utf8")).expect("frame")
    }
}

fn snapshot(f: ConsumerFrame) -> Snapshot {
    match f {
        ConsumerFrame::Snapshot(s) => s,
        other => panic!("expected a snapshot first, got {other:?}"),
    }
}

fn status_seq(f: &ConsumerFrame) -> Option<(u64, DeliveryStatus)> {
    match f {
        ConsumerFrame::Status(e) => Some((e.event_seq, e.status)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_fixes_reach_websocket_webtransport_and_rest_consumers_in_order() {
    let dir = TestDir::new("push");
    let pki = Pki::new(&dir.0);
    let hub = start(&dir.0, &pki).await;
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
    let pki = Pki::new(&dir.0);
    let hub = start(&dir.0, &pki).await;
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
    let pki = Pki::new(&dir.0);
    let hub = start(&dir.0, &pki).await;
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
    let pki = Pki::new(&dir.0);
    let hub = start(&dir.0, &pki).await;
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

    let hub = start(&dir.0, &pki).await;
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
    let pki = Pki::new(&dir.0);
    let hub = start(&dir.0, &pki).await;
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
    let pki = Pki::new(&dir.0);
    let hub = start_with(HubConfig {
        location_unavailable_after_s: 1,
        ..config(&dir.0, &pki)
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
