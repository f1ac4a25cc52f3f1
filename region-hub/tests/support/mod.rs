//! Helpers shared by the integration tests: a temp dir with a dev PKI, a hub on port 0, an
//! HTTPS client, a real mTLS edge, WebSocket and WebTransport consumers.
#![allow(dead_code)]

use futures::StreamExt;
use protocol::api::{ApiError, ChangeStatus, CreateDelivery, DeliveryCreated};
use protocol::consumer::{ConsumerFrame, Snapshot};
use protocol::framing::{frame_bytes, FrameDecoder, MAX_HUB_FRAME};
use protocol::geo::LatLng;
use protocol::status::DeliveryStatus;
use protocol::token::Subject;
use protocol::wire::{EdgeToHub, Fix, HubToEdge, RoutedFix};
use protocol::{DeliveryId, DriverId};
use region_hub::{HubConfig, HubHandle};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

pub const WAIT: Duration = Duration::from_secs(10);
pub const PICKUP: LatLng = LatLng::new(60.170, 24.940);
pub const DROPOFF: LatLng = LatLng::new(60.175, 24.950);

/// A temp directory (removed on drop) and a dev PKI in it: shared with the other crates' tests.
pub use testkit::{Pki, TestDir};

pub fn config(dir: &Path, pki: &Pki) -> HubConfig {
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

pub async fn start(dir: &Path, pki: &Pki) -> HubHandle {
    start_with(config(dir, pki)).await
}

pub async fn start_with(config: HubConfig) -> HubHandle {
    certs::install_default_crypto_provider();
    region_hub::spawn(config).await.expect("hub starts")
}

pub fn http_client(pki: &Pki) -> reqwest::Client {
    http_client_builder(pki).build().expect("client")
}

/// An HTTPS client that opens a new connection per request: a refusal sent before the body is
/// read closes its connection, which a pooled client could pick for the next request.
pub fn http_client_unpooled(pki: &Pki) -> reqwest::Client {
    http_client_builder(pki)
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

fn http_client_builder(pki: &Pki) -> reqwest::ClientBuilder {
    let tls =
        certs::client_config_with_roots(pki.ca(), &[b"http/1.1"], certs::TlsFor::Tcp).expect("tls");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(WAIT)
}

pub fn url(hub: &HubHandle, path: &str) -> String {
    format!("https://localhost:{}{path}", hub.https_addr().port())
}

pub async fn create(
    hub: &HubHandle,
    http: &reqwest::Client,
    driver: Option<u64>,
) -> DeliveryCreated {
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

pub async fn change(
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
pub struct Edge {
    _endpoint: quinn::Endpoint,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    batch_seq: u64,
    /// Time of the last fix [`Edge::send_fix`] sent: its fixes are a second apart (a fix no
    /// newer than the last one is dropped by the hub).
    last_ts_ms: u64,
}

impl Edge {
    pub async fn connect(hub: &HubHandle, pki: &Pki) -> Self {
        Self::connect_to(hub.link_addr(), pki).await
    }

    /// Connects to the hub link at `addr` (a hub in another process).
    pub async fn connect_to(addr: SocketAddr, pki: &Pki) -> Self {
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
            .connect(addr, "localhost")
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
            last_ts_ms: nodekit::unix_ms() - 120_000,
        };
        assert!(matches!(edge.next().await, HubToEdge::Welcome { .. }));
        edge
    }

    pub async fn next(&mut self) -> HubToEdge {
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
    pub async fn send_fixes(&mut self, fixes: Vec<RoutedFix>) {
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

    /// Sends one fix of `driver` at `at`, a second after the last one, and waits for its ack.
    pub async fn send_fix(&mut self, driver: u64, at: LatLng) {
        self.last_ts_ms += 1_000;
        let ts = self.last_ts_ms;
        let fix = RoutedFix {
            driver_id: DriverId(driver),
            fix: Fix::from_units(
                self.batch_seq as u32 + 1,
                ts,
                at.lat,
                at.lng,
                90.0,
                8.0,
                4.0,
            ),
            edge_rx_ms: ts,
        };
        self.send_fixes(vec![fix]).await;
    }
}

pub fn fix(driver: u64, i: u64) -> RoutedFix {
    let at = protocol::geo::destination(PICKUP, 45.0, 20.0 * i as f64);
    let ts = nodekit::unix_ms() - 1000 + i;
    RoutedFix {
        driver_id: DriverId(driver),
        fix: Fix::from_units(i as u32, ts, at.lat, at.lng, 45.0, 8.0, 4.0),
        edge_rx_ms: ts,
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens the consumer WebSocket over TLS; `Err(status)` when the hub refuses the upgrade.
pub async fn ws_connect(
    hub: &HubHandle,
    pki: &Pki,
    id: DeliveryId,
    query: &str,
) -> Result<Ws, u16> {
    ws_connect_addr(hub.https_addr(), pki, id, query).await
}

/// [`ws_connect`] to the HTTPS listener at `addr`.
pub async fn ws_connect_addr(
    addr: SocketAddr,
    pki: &Pki,
    id: DeliveryId,
    query: &str,
) -> Result<Ws, u16> {
    let tls =
        certs::client_config_with_roots(pki.ca(), &[b"http/1.1"], certs::TlsFor::Tcp).expect("tls");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let server_name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .expect("tls");
    let u = format!(
        "wss://localhost:{}/api/v1/tracking/{id}/connect{query}",
        addr.port()
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

pub async fn ws_next(ws: &mut Ws) -> ConsumerFrame {
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
pub struct Wt {
    pub conn: wtransport::Connection,
    pub lines: tokio::io::Lines<tokio::io::BufReader<wtransport::RecvStream>>,
    _endpoint: wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
}

pub async fn wt_connect(
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
    pub async fn reliable(&mut self) -> ConsumerFrame {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("line in time")
            .expect("read");
        ConsumerFrame::from_json(&line.expect("stream open")).expect("frame")
    }

    pub async fn datagram(&self) -> ConsumerFrame {
        let d = tokio::time::timeout(WAIT, self.conn.receive_datagram())
            .await
            .expect("datagram in time")
            .expect("dg");
        ConsumerFrame::from_json(std::str::from_utf8(&d.payload()).expect("utf8")).expect("frame")
    }
}

pub fn snapshot(f: ConsumerFrame) -> Snapshot {
    match f {
        ConsumerFrame::Snapshot(s) => s,
        other => panic!("expected a snapshot first, got {other:?}"),
    }
}

pub fn status_seq(f: &ConsumerFrame) -> Option<(u64, DeliveryStatus)> {
    match f {
        ConsumerFrame::Status(e) => Some((e.event_seq, e.status)),
        _ => None,
    }
}

/// The hub binary as a child process (`--config <path>`); SIGKILLed when dropped.
pub struct HubProcess {
    child: std::process::Child,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    /// The edge link (QUIC).
    pub link: SocketAddr,
}

impl HubProcess {
    /// Starts the binary and waits for its start line, which names its addresses.
    pub fn start(config: &Path) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_region-hub"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start region-hub");
        let log = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the log until the start line, then keeps draining it so the hub never blocks.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(log).lines() {
                let Ok(line) = line else { break };
                if line.contains("hub started") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(strip_ansi(&line));
                    }
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the hub logs its start");
        let addr = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {name} address in {line:?}"))
        };
        Self {
            https: addr("https="),
            admin: addr("admin="),
            link: addr("link="),
            child,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `s` without ANSI escape sequences (log lines may be coloured).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A clustered hub's config: `name` is its node id and certificate name, `seeds` the gossip
/// seeds, `cluster_id` keeps one test's cluster apart from another's. Every hub of a test
/// signs and trusts the same token key (one order service).
pub fn cluster_hub_config(
    dir: &Path,
    pki: &Pki,
    name: &str,
    seeds: Vec<SocketAddr>,
    cluster_id: &str,
) -> HubConfig {
    let mut c = config(&dir.join(name), pki);
    c.hub_id = name.into();
    c.tls = pki.node(name, certs::NodeRole::Hub);
    c.token_signing_key = dir.join("token.pk8");
    c.cluster = Some(cluster::ClusterConfig {
        node_id: name.into(),
        role: cluster::Role::Hub,
        region: "eu".into(),
        seeds,
        profile: cluster::Profile::Fast,
        expected_nodes: 4,
        gossip: cluster::GossipConfig {
            bind_addr: ([127, 0, 0, 1], 0).into(),
            reconnect_backoff_ms: 100,
            ..cluster::GossipConfig::default()
        },
        control: cluster::ControlConfig {
            cluster_id: cluster_id.into(),
            gossip_interval_ms: 50,
            ..cluster::ControlConfig::default()
        },
        ..cluster::ClusterConfig::default()
    });
    c.cluster_hub.rebalance_interval_ms = 200;
    c.cluster_hub.join_grace_ms = 100;
    c
}

/// A metric's value in a Prometheus text page (`name` with its labels, if any).
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The admin listener's /metrics page.
pub async fn metrics_page(admin: SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// How long [`wait_until`] waits.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` every 20 ms until it holds; panics with `what` after [`DEADLINE`].
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !cond().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A hub config for the binary (`HubProcess`): every listener on port 0, data under
/// `dir/data`, and the token key there (created now), changed by `edit`; written to
/// `dir/hub.toml`. Returns its path and an operator token signed with that key.
pub fn write_process_config(
    dir: &Path,
    pki: &Pki,
    edit: impl FnOnce(&mut HubConfig),
) -> (std::path::PathBuf, String) {
    let data = dir.join("data");
    let key_path = data.join("token.pk8");
    let signer = region_hub::load_or_create_signing_key(&key_path, 1).expect("signing key");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut config = HubConfig {
        link_listen: any,
        webtransport_listen: any,
        https_listen: any,
        admin_listen: any,
        data_dir: data,
        tls: pki.node("hub", certs::NodeRole::Hub),
        token_signing_key: key_path,
        ..HubConfig::default()
    };
    edit(&mut config);
    let config_path = dir.join("hub.toml");
    std::fs::write(&config_path, toml::to_string(&config).expect("toml")).expect("write config");
    let op = signer.sign(Subject::Operator, nodekit::unix_s(), 3_600);
    (config_path, op)
}
