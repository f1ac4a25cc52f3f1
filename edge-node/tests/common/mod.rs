//! Shared setup for the edge's integration tests: a dev PKI, a token key, a real test hub, and
//! test hubs that join a real cluster as `Role::Hub` and publish their link address.
#![allow(dead_code)]

use bytes::{Buf, Bytes};
use certs::{DevPki, NodeCert, NodeRole, TlsFor};
use cluster::{ClusterConfig, ClusterNode, ControlConfig, GossipConfig, GossipTls, Profile, Role};
use edge_node::{EdgeConfig, EdgeHandle, HubConfig};
use protocol::api::JsonFix;
use protocol::framing::{frame_bytes, FrameDecoder, MAX_DRIVER_FRAME, MAX_HUB_FRAME};
use protocol::token::{Subject, TokenSigner};
use protocol::wire::{DriverToEdge, EdgeToDriver, EdgeToHub, Fix, HubToEdge, RoutedFix};
use protocol::{DriverId, ALPN_DRIVER, ALPN_H3, ALPN_HUB};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long any test waits for an event before failing.
pub const WAIT: Duration = Duration::from_secs(20);

/// Certificates for an edge and a hub from one dev CA, and a driver token signer.
pub struct Setup {
    /// Removed when the setup is dropped (kept with `TESTKIT_KEEP=1`).
    _tmp: testkit::TestDir,
    pub dir: PathBuf,
    pub ca: CertificateDer<'static>,
    pub hub_cert: NodeCert,
    pub edge_tls: nodekit::TlsFiles,
    pub signer: TokenSigner,
}

impl Setup {
    pub fn new(name: &str) -> Self {
        testkit::init_tracing();
        let tmp = testkit::TestDir::new(&format!("edge-{name}"));
        let dir = tmp.to_path_buf();
        let pki = DevPki::load_or_create(&dir.join("ca")).expect("dev ca");
        let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let edge = pki
            .issue_node("edge-test", &sans, NodeRole::Edge)
            .expect("edge cert");
        let (cert, key) = edge.write_to(&dir, "edge").expect("write edge cert");
        let hub_cert = pki
            .issue_node("hub-test", &sans, NodeRole::Hub)
            .expect("hub cert");
        let signer = TokenSigner::from_pkcs8(1, &TokenSigner::generate_pkcs8().expect("keygen"))
            .expect("signer");
        Self {
            edge_tls: nodekit::TlsFiles {
                cert,
                key,
                ca: dir.join("ca").join(certs::pki::CA_CERT_FILE),
            },
            ca: pki.ca_cert_der(),
            hub_cert,
            signer,
            dir,
            _tmp: tmp,
        }
    }

    /// An edge on loopback port 0 that forwards to `hub`, with quick reconnects.
    pub fn edge_config(&self, hub: SocketAddr) -> EdgeConfig {
        EdgeConfig {
            edge_id: "edge-test".to_owned(),
            quic_listen: "127.0.0.1:0".parse().expect("addr"),
            https_listen: "127.0.0.1:0".parse().expect("addr"),
            admin_listen: "127.0.0.1:0".parse().expect("addr"),
            tls: self.edge_tls.clone(),
            hubs: vec![HubConfig {
                addr: hub,
                server_name: "localhost".to_owned(),
                connect_timeout_ms: 1_000,
                backoff_min_ms: 50,
                backoff_max_ms: 300,
            }],
            token_keys: vec![nodekit::TokenKeyConfig {
                kid: self.signer.kid(),
                public_key: protocol::token::encode_public_key(&self.signer.public_key()),
            }],
            ..EdgeConfig::default()
        }
    }

    /// Starts an edge and waits until its hub link is up (before that, fixes collapse to the
    /// newest per driver, which only the hub-down test wants).
    pub async fn start_edge(&self, hub: SocketAddr) -> EdgeHandle {
        let edge = self.start_edge_without_hub(hub).await;
        let m = edge.metrics();
        wait_until("hub link up", || m.hub_connected().get() == 1).await;
        edge
    }

    pub async fn start_edge_without_hub(&self, hub: SocketAddr) -> EdgeHandle {
        edge_node::spawn(self.edge_config(hub))
            .await
            .expect("edge starts")
    }

    /// The dev CA (created by [`Setup::new`]).
    pub fn pki(&self) -> DevPki {
        DevPki::load_or_create(&self.dir.join("ca")).expect("dev ca")
    }

    /// A node certificate named `name` for `role`, valid for localhost and 127.0.0.1.
    pub fn node_cert(&self, name: &str, role: NodeRole) -> NodeCert {
        let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        self.pki().issue_node(name, &sans, role).expect("node cert")
    }

    /// TLS files of an edge named `name` (written under the test directory).
    pub fn edge_tls_for(&self, name: &str) -> nodekit::TlsFiles {
        let (cert, key) = self
            .node_cert(name, NodeRole::Edge)
            .write_to(&self.dir, name)
            .expect("write edge cert");
        nodekit::TlsFiles {
            cert,
            key,
            ca: self.edge_tls.ca.clone(),
        }
    }

    /// An edge named `edge_id` (with its own certificate) that joins the cluster through
    /// `seeds` and finds its hubs there.
    pub fn cluster_edge_config(&self, edge_id: &str, seeds: Vec<SocketAddr>) -> EdgeConfig {
        let mut config = self.edge_config(reserve_udp_port());
        config.edge_id = edge_id.to_owned();
        config.hubs.clear();
        if edge_id != "edge-test" {
            config.tls = self.edge_tls_for(edge_id);
        }
        config.cluster = Some(cluster_config(edge_id, Role::Edge, seeds));
        config.cluster_links = edge_node::ClusterLinkConfig {
            server_name: None,
            connect_timeout_ms: 1_000,
            backoff_min_ms: 50,
            backoff_max_ms: 300,
        };
        config
    }

    /// A driver token valid for an hour.
    pub fn driver_token(&self, driver: u64) -> String {
        self.signer
            .sign(Subject::Driver(DriverId(driver)), nodekit::unix_s(), 3600)
    }
}

/// Reserves a loopback UDP port (bound, then released) for a hub started later.
pub fn reserve_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr")
}

/// A real hub endpoint (mTLS, ALPN trackline-hub/1) that acks every batch and hands the fixes
/// to the test in the order received.
pub struct TestHub {
    pub addr: SocketAddr,
    pub fixes: mpsc::UnboundedReceiver<RoutedFix>,
    endpoint: quinn::Endpoint,
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"test over");
    }
}

impl TestHub {
    pub fn start(setup: &Setup, addr: SocketAddr) -> Self {
        Self::start_with_cert(setup, addr, &setup.hub_cert)
    }

    /// A test hub presenting `cert` on its edge link.
    pub fn start_with_cert(setup: &Setup, addr: SocketAddr, cert: &NodeCert) -> Self {
        let tls = certs::mtls_server_config(
            cert.cert_chain().expect("chain"),
            cert.private_key().expect("key"),
            vec![setup.ca.clone()],
            &[ALPN_HUB],
            TlsFor::Quic,
        )
        .expect("hub tls");
        let endpoint =
            quinn::Endpoint::server(certs::quinn_server_config(tls).expect("quinn cfg"), addr)
                .expect("bind hub");
        let (tx, fixes) = mpsc::unbounded_channel();
        let ep = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        let _ = serve_hub_conn(conn, tx).await;
                    }
                });
            }
        });
        Self {
            addr: endpoint.local_addr().expect("addr"),
            fixes,
            endpoint,
        }
    }

    /// Stops the link server: connections close, new ones fail.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"hub down");
    }

    /// The next fix the edge delivered; panics after [`WAIT`].
    pub async fn next_fix(&mut self) -> RoutedFix {
        tokio::time::timeout(WAIT, self.fixes.recv())
            .await
            .expect("hub got a fix in time")
            .expect("hub running")
    }
}

async fn serve_hub_conn(
    conn: quinn::Connection,
    tx: mpsc::UnboundedSender<RoutedFix>,
) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut dec = FrameDecoder::new(MAX_HUB_FRAME);
    while let Some(chunk) = recv.read_chunk(MAX_HUB_FRAME, true).await? {
        dec.push(&chunk.bytes);
        while let Some(msg) = dec.next_frame::<EdgeToHub>()? {
            match msg {
                EdgeToHub::Hello { .. } => {
                    send.write_all(&frame_bytes(&HubToEdge::Welcome {
                        hub_id: "hub-test".into(),
                    }))
                    .await?
                }
                EdgeToHub::Batch { batch_seq, fixes } => {
                    for f in fixes {
                        let _ = tx.send(f);
                    }
                    send.write_all(&frame_bytes(&HubToEdge::Ack { batch_seq }))
                        .await?;
                }
            }
        }
    }
    Ok(())
}

/// Cluster settings for tests: region `eu`, loopback port 0, fast failure detection.
pub fn cluster_config(id: &str, role: Role, seeds: Vec<SocketAddr>) -> ClusterConfig {
    ClusterConfig {
        node_id: id.into(),
        role,
        region: "eu".into(),
        seeds,
        profile: Profile::Fast,
        expected_nodes: 5,
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
        ..ClusterConfig::default()
    }
}

/// A test hub that is also a cluster member (`Role::Hub`) publishing its link address in
/// chitchat (`hub.addr_link`), like a real hub does.
pub struct ClusterHub {
    pub id: String,
    pub hub: TestHub,
    pub node: ClusterNode,
    stop: CancellationToken,
}

impl ClusterHub {
    /// Starts the link server and joins the cluster through `seeds` (none for the first).
    pub async fn start(setup: &Setup, id: &str, seeds: Vec<SocketAddr>) -> Self {
        let cert = setup.node_cert(id, NodeRole::Hub);
        let hub = TestHub::start_with_cert(setup, "127.0.0.1:0".parse().expect("addr"), &cert);
        let mut config = cluster_config(id, Role::Hub, seeds);
        config
            .publish
            .insert(cluster::keys::ADDR_LINK.to_owned(), hub.addr.to_string());
        let tls = GossipTls {
            chain: cert.cert_chain().expect("chain"),
            key: cert.private_key().expect("key"),
            roots: vec![setup.ca.clone()],
        };
        let stop = CancellationToken::new();
        let node = cluster::spawn_node(config, tls, stop.clone())
            .await
            .expect("hub joins the cluster");
        Self {
            id: id.to_owned(),
            hub,
            node,
            stop,
        }
    }

    /// The gossip address others join through.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.node.gossip.advertise_addr()
    }

    /// Leaves the cluster (peers see it go at once) and waits until it has.
    pub async fn leave(&self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.node.closed())
            .await
            .expect("hub left in time");
    }
}

impl Drop for ClusterHub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Three cluster hubs, joined through the first.
pub async fn three_cluster_hubs(setup: &Setup) -> Vec<ClusterHub> {
    let a = ClusterHub::start(setup, "hub-a", Vec::new()).await;
    let seeds = vec![a.gossip_addr()];
    let b = ClusterHub::start(setup, "hub-b", seeds.clone()).await;
    let c = ClusterHub::start(setup, "hub-c", seeds).await;
    vec![a, b, c]
}

/// Polls the async `cond` until it holds; panics after [`WAIT`].
pub async fn wait_until_async<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    testkit::wait_until_async(what, WAIT, cond).await
}

/// A QUIC client endpoint trusting the dev CA, offering `alpn`.
pub fn client_endpoint(setup: &Setup, alpn: &[u8]) -> quinn::Endpoint {
    let tls = certs::client_config_with_roots(vec![setup.ca.clone()], &[alpn], TlsFor::Quic)
        .expect("client tls");
    let mut ep =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    ep.set_default_client_config(certs::quinn_client_config(tls).expect("quinn client cfg"));
    ep
}

/// A driver's QUIC session, after sending its Hello.
pub struct DriverConn {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    dec: FrameDecoder,
}

impl DriverConn {
    /// Connects with ALPN trackline-driver/1 and sends `Hello { token }`.
    pub async fn hello(setup: &Setup, edge: SocketAddr, token: &str) -> Self {
        let endpoint = client_endpoint(setup, ALPN_DRIVER);
        let conn = endpoint
            .connect(edge, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, recv) = conn.open_bi().await.expect("open control stream");
        let hello = DriverToEdge::Hello {
            token: token.to_owned(),
            app_version: "test/1".into(),
        };
        send.write_all(&frame_bytes(&hello))
            .await
            .expect("send hello");
        Self {
            endpoint,
            conn,
            send,
            recv,
            dec: FrameDecoder::new(MAX_DRIVER_FRAME),
        }
    }

    /// Reads the edge's first control frame (Welcome on success).
    pub async fn welcome(&mut self) -> EdgeToDriver {
        self.next_frame().await
    }

    /// Reads the edge's next control frame.
    pub async fn next_frame(&mut self) -> EdgeToDriver {
        loop {
            if let Some(f) = self.dec.next_frame::<EdgeToDriver>().expect("valid frame") {
                return f;
            }
            let chunk = tokio::time::timeout(WAIT, self.recv.read_chunk(MAX_DRIVER_FRAME, true))
                .await
                .expect("control frame in time")
                .expect("read control stream")
                .expect("stream open");
            self.dec.push(&chunk.bytes);
        }
    }

    /// Sends a control frame (`OnDuty`, `Fixes`) on the stream.
    pub async fn send_frame(&mut self, frame: &DriverToEdge) {
        self.send
            .write_all(&frame_bytes(frame))
            .await
            .expect("send control frame");
    }

    /// Waits for the edge to close the connection; returns the application code and reason.
    pub async fn closed(&self) -> (u64, String) {
        match tokio::time::timeout(WAIT, self.conn.closed())
            .await
            .expect("closed in time")
        {
            quinn::ConnectionError::ApplicationClosed(c) => (
                c.error_code.into_inner(),
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            other => panic!("expected an application close, got {other}"),
        }
    }

    pub async fn send_fix(&self, fix: &Fix) {
        self.conn
            .send_datagram_wait(Bytes::from(protocol::wire::encode_fix_datagram(fix)))
            .await
            .expect("send datagram");
    }
}

/// A plausible 1 Hz track for one driver ending now: `n` fixes heading east at ~40 km/h.
pub fn track(n: u32, first_seq: u32) -> Vec<Fix> {
    let now = nodekit::unix_ms();
    let mut pos = protocol::geo::LatLng::new(60.17, 24.94);
    (0..n)
        .map(|i| {
            pos = protocol::geo::destination(pos, 90.0, 11.0);
            let seq = if first_seq == 0 { 0 } else { first_seq + i };
            Fix::from_units(
                seq,
                now - u64::from(n - i) * 1000,
                pos.lat,
                pos.lng,
                90.0,
                11.0,
                5.0,
            )
        })
        .collect()
}

pub fn json_fixes(fixes: &[Fix]) -> String {
    serde_json::to_string(&fixes.iter().map(JsonFix::from_fix).collect::<Vec<_>>()).expect("json")
}

/// reqwest over HTTPS trusting the dev CA.
pub fn https_client(setup: &Setup) -> reqwest::Client {
    let tls =
        certs::client_config_with_roots(vec![setup.ca.clone()], &[b"h2", b"http/1.1"], TlsFor::Tcp)
            .expect("client tls");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .expect("reqwest client")
}

/// One HTTP/3 request: returns status and body.
pub async fn h3_request(
    setup: &Setup,
    edge: SocketAddr,
    method: http::Method,
    path: &str,
    bearer: Option<&str>,
    body: Vec<u8>,
) -> (http::StatusCode, Vec<u8>) {
    let endpoint = client_endpoint(setup, ALPN_H3);
    let conn = endpoint
        .connect(edge, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let (mut driver, mut send_request) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .expect("h3 client");
    let drive =
        tokio::spawn(async move { futures::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    if let Some(t) = bearer {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let mut stream = send_request
        .send_request(req.body(()).expect("request"))
        .await
        .expect("send request");
    stream
        .send_data(Bytes::from(body))
        .await
        .expect("send body");
    stream.finish().await.expect("finish request");
    let resp = tokio::time::timeout(WAIT, stream.recv_response())
        .await
        .expect("response in time")
        .expect("response");
    let mut out = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.expect("body") {
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    drop(send_request);
    drive.abort();
    endpoint.close(0u32.into(), b"done");
    (resp.status(), out)
}

/// Polls `cond` until it holds; panics after [`WAIT`].
pub async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    testkit::wait_until(what, WAIT, cond).await
}
