//! The client library's transports against a real hub and edge started in this process on
//! 127.0.0.1 port 0: drivers over QUIC datagrams and the HTTPS fallback, consumers over
//! WebTransport and WebSocket, a status change, and a consumer resuming after a reconnect.

use certs::{DevPki, NodeCert, NodeRole};
use protocol::api::{ChangeStatus, CreateDelivery, DeliveryCreated, StatusChanged};
use protocol::geo::LatLng;
use protocol::status::DeliveryStatus;
use protocol::token::{encode_public_key, Subject, TokenSigner};
use protocol::wire::Fix;
use protocol::{DeliveryId, DriverId};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trackline_client::io::{
    run_consumer, run_driver, ConsumerApp, ConsumerIo, DriverApp, DriverIo, WsConnector,
};
use trackline_client::{
    ConsumerConfig, ConsumerEvent, ConsumerSession, ConsumerTransport, DriverConfig, DriverEvent,
    DriverSession, DriverTransport,
};

struct Nodes {
    hub: region_hub::HubHandle,
    edge: edge_node::EdgeHandle,
    ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    signer: TokenSigner,
    http: reqwest::Client,
    operator: String,
}

fn loopback(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), a.port())
}

async fn start(dir: &Path) -> Nodes {
    let certs_dir = dir.join("certs");
    std::fs::create_dir_all(&certs_dir).expect("certs dir");
    let pki = DevPki::load_or_create(&certs_dir).expect("dev CA");
    let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let tls = |stem: &str, role| {
        NodeCert::load_or_issue(&pki, &certs_dir, stem, &sans, role).expect("node cert");
        let (cert, key) = NodeCert::paths(&certs_dir, stem);
        nodekit::TlsFiles {
            cert,
            key,
            ca: certs_dir.join("ca.pem"),
        }
    };
    let pkcs8 = TokenSigner::generate_pkcs8().expect("token key");
    let key_path = dir.join("token.pk8");
    std::fs::write(&key_path, &pkcs8).expect("write key");
    let signer = TokenSigner::from_pkcs8(1, &pkcs8).expect("signer");
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let hub = region_hub::spawn(region_hub::HubConfig {
        hub_id: "hub-client-test".into(),
        link_listen: any,
        webtransport_listen: any,
        https_listen: any,
        http_listen: None,
        admin_listen: any,
        data_dir: dir.join("hub"),
        tls: tls("hub", NodeRole::Hub),
        token_signing_key: key_path,
        token_kid: 1,
        ..Default::default()
    })
    .await
    .expect("hub");
    let edge = edge_node::spawn(edge_node::EdgeConfig {
        edge_id: "edge-client-test".into(),
        quic_listen: any,
        https_listen: any,
        admin_listen: any,
        tls: tls("edge", NodeRole::Edge),
        hubs: vec![edge_node::config::HubConfig {
            addr: loopback(hub.link_addr()),
            server_name: "localhost".into(),
            ..Default::default()
        }],
        token_keys: vec![nodekit::TokenKeyConfig {
            kid: 1,
            public_key: encode_public_key(&signer.public_key()),
        }],
        ..Default::default()
    })
    .await
    .expect("edge");
    let ca = certs::load_certs_pem(&certs_dir.join("ca.pem")).expect("ca");
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(
            certs::client_config_with_roots(ca.clone(), &[b"http/1.1"], certs::TlsFor::Tcp)
                .expect("tls"),
        )
        .build()
        .expect("http client");
    let operator = signer.sign(Subject::Operator, nodekit::unix_s(), 3600);
    Nodes {
        hub,
        edge,
        ca,
        signer,
        http,
        operator,
    }
}

impl Nodes {
    async fn create(&self, driver: u64) -> DeliveryCreated {
        let body = CreateDelivery {
            delivery_id: None,
            pickup: LatLng::new(60.170, 24.940),
            dropoff: LatLng::new(60.175, 24.950),
            driver_id: Some(DriverId(driver)),
        };
        self.http
            .post(format!(
                "https://127.0.0.1:{}/api/v1/deliveries",
                self.hub.https_addr().port()
            ))
            .bearer_auth(&self.operator)
            .json(&body)
            .send()
            .await
            .expect("create")
            .error_for_status()
            .expect("created")
            .json()
            .await
            .expect("body")
    }

    async fn change(&self, id: DeliveryId, status: DeliveryStatus) -> StatusChanged {
        let body = ChangeStatus {
            status,
            idempotency_key: None,
            driver_id: None,
            metadata: serde_json::Value::Null,
        };
        self.http
            .post(format!(
                "https://127.0.0.1:{}/api/v1/deliveries/{id}/status",
                self.hub.https_addr().port()
            ))
            .bearer_auth(&self.operator)
            .json(&body)
            .send()
            .await
            .expect("change")
            .error_for_status()
            .expect("changed")
            .json()
            .await
            .expect("body")
    }
}

/// A driver app sending a fix every 100 ms near the pickup.
struct TestDriver {
    next: Instant,
    events: mpsc::UnboundedSender<DriverEvent>,
}

impl DriverApp for TestDriver {
    fn next_wake(&self) -> Option<Instant> {
        Some(self.next)
    }
    fn wake(&mut self, now: Instant, s: &mut DriverSession) -> ControlFlow<()> {
        let fix = Fix::from_units(0, nodekit::unix_ms(), 60.171, 24.941, 90.0, 5.0, 5.0);
        s.send_fix(now, fix);
        self.next = now + Duration::from_millis(100);
        ControlFlow::Continue(())
    }
    fn on_event(&mut self, _now: Instant, e: DriverEvent) {
        let _ = self.events.send(e);
    }
}

/// A consumer app forwarding its events to the test.
struct TestConsumer {
    events: mpsc::UnboundedSender<ConsumerEvent>,
}

impl ConsumerApp for TestConsumer {
    fn on_event(
        &mut self,
        _now: Instant,
        e: ConsumerEvent,
        _s: &mut ConsumerSession,
    ) -> ControlFlow<()> {
        let _ = self.events.send(e);
        ControlFlow::Continue(())
    }
}

/// Waits (at most 20 s, a hang guard) for an event matching `f`.
async fn wait_for<E: std::fmt::Debug>(
    rx: &mut mpsc::UnboundedReceiver<E>,
    what: &str,
    mut f: impl FnMut(&E) -> bool,
) -> E {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if f(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("{what}: the session ended"),
            Err(_) => panic!("{what}: not within 20 s"),
        }
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("trackline-client-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_on_both_transports_reach_consumers_on_both_transports_with_status_events() {
    certs::install_default_crypto_provider();
    let dir = temp_dir("flow");
    let n = start(&dir).await;
    let stop = CancellationToken::new();

    // Two deliveries: one driven over QUIC and watched over WebTransport, one driven over
    // HTTPS and watched over WebSocket.
    let quic_tls = certs::client_config_with_roots(
        n.ca.clone(),
        &[protocol::ALPN_DRIVER],
        certs::TlsFor::Quic,
    )
    .expect("tls");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("udp");
    endpoint.set_default_client_config(certs::quinn_client_config(quic_tls).expect("quinn"));
    // The hub's WebTransport certificate is its own self-signed one here: pinned by hash, as
    // browsers do.
    let wt = Arc::new(
        wtransport::Endpoint::client(
            wtransport::ClientConfig::builder()
                .with_bind_default()
                .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(
                    n.hub.webtransport_cert_hash(),
                )])
                .build(),
        )
        .expect("wt endpoint"),
    );
    let ws_tls = Arc::new(
        certs::client_config_with_roots(n.ca.clone(), &[b"http/1.1"], certs::TlsFor::Tcp)
            .expect("tls"),
    );
    let https_client = reqwest::Client::builder()
        .use_preconfigured_tls(
            certs::client_config_with_roots(
                n.ca.clone(),
                &[b"h2", b"http/1.1"],
                certs::TlsFor::Tcp,
            )
            .expect("tls"),
        )
        .build()
        .expect("client");

    let mut consumers = Vec::new();
    let mut drivers = Vec::new();
    for (i, (dt, ct)) in [
        (DriverTransport::Quic, ConsumerTransport::WebTransport),
        (DriverTransport::Https, ConsumerTransport::WebSocket),
    ]
    .into_iter()
    .enumerate()
    {
        let driver_id = 100 + i as u64;
        let created = n.create(driver_id).await;
        let (ctx, crx) = mpsc::unbounded_channel();
        let (io, hub) = match ct {
            ConsumerTransport::WebTransport => (
                ConsumerIo::WebTransport(wt.clone()),
                loopback(n.hub.webtransport_addr()).to_string(),
            ),
            ConsumerTransport::WebSocket => (
                ConsumerIo::WebSocket(WsConnector::new(ws_tls.clone())),
                loopback(n.hub.https_addr()).to_string(),
            ),
        };
        let mut session = ConsumerSession::new(
            ConsumerConfig::new(
                created.delivery_id,
                created.tracking_token.clone(),
                ct,
                vec![hub],
            ),
            Instant::now(),
        );
        let stop_c = stop.clone();
        consumers.push((
            created.delivery_id,
            crx,
            tokio::spawn(async move {
                run_consumer(
                    &mut session,
                    &io,
                    &mut TestConsumer { events: ctx },
                    &stop_c,
                )
                .await;
            }),
        ));
        let (dtx, drx) = mpsc::unbounded_channel();
        let (io, edge) = match dt {
            DriverTransport::Quic => (
                DriverIo::Quic {
                    endpoint: endpoint.clone(),
                    server_name: "localhost".into(),
                },
                loopback(n.edge.quic_addr()).to_string(),
            ),
            DriverTransport::Https => (
                DriverIo::Https {
                    client: https_client.clone(),
                },
                format!("localhost:{}", n.edge.https_addr().port()),
            ),
        };
        let token = n.signer.sign(
            Subject::Driver(DriverId(driver_id)),
            nodekit::unix_s(),
            3600,
        );
        let mut session =
            DriverSession::new(DriverConfig::new(token, vec![edge], dt), Instant::now());
        session.set_on_duty(vec![created.delivery_id]);
        let stop_d = stop.clone();
        drivers.push((
            drx,
            tokio::spawn(async move {
                let mut app = TestDriver {
                    next: Instant::now(),
                    events: dtx,
                };
                run_driver(&mut session, &io, &mut app, &stop_d).await;
            }),
        ));
    }
    for (rx, _) in &mut drivers {
        wait_for(rx, "driver connected", |e| {
            matches!(
                e,
                DriverEvent::Connected {
                    reconnect: false,
                    ..
                }
            )
        })
        .await;
    }
    for (id, rx, _) in &mut consumers {
        // The whole log so far, as status frames, then positions from the driver.
        wait_for(rx, "snapshot", |e| {
            matches!(e, ConsumerEvent::Snapshot { first: true, .. })
        })
        .await;
        wait_for(
            rx,
            "a position",
            |e| matches!(e, ConsumerEvent::Position(p) if p.delivery_id == *id),
        )
        .await;
        let ack = n.change(*id, DeliveryStatus::PickedUp).await;
        wait_for(rx, "the acknowledged event", |e| {
            matches!(e, ConsumerEvent::Status { event, new: true, gap: 0 } if event.event_seq == ack.event_seq)
        })
        .await;
    }
    stop.cancel();
    for (_, _, h) in consumers {
        h.await.expect("consumer task");
    }
    for (_, h) in drivers {
        h.await.expect("driver task");
    }
    n.edge.shutdown();
    n.hub.shutdown();
    n.edge.join().await;
    n.hub.join().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP relay in front of the hub whose connections the test can cut.
struct Relay {
    addr: SocketAddr,
    cut: Arc<parking_lot::Mutex<CancellationToken>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(parking_lot::Mutex::new(CancellationToken::new()));
        let c = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let token = c.lock().clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }

    /// Drops every connection relayed so far.
    fn cut(&self) {
        let mut t = self.cut.lock();
        t.cancel();
        *t = CancellationToken::new();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_cut_off_reconnects_and_resumes_after_the_last_event_it_saw() {
    certs::install_default_crypto_provider();
    let dir = temp_dir("resume");
    let n = start(&dir).await;
    let relay = Relay::start(loopback(n.hub.https_addr())).await;
    let created = n.create(7).await;
    let id = created.delivery_id;
    let ws_tls = Arc::new(
        certs::client_config_with_roots(n.ca.clone(), &[b"http/1.1"], certs::TlsFor::Tcp)
            .expect("tls"),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut session = ConsumerSession::new(
        ConsumerConfig::new(
            id,
            created.tracking_token.clone(),
            ConsumerTransport::WebSocket,
            vec![relay.addr.to_string()],
        ),
        Instant::now(),
    );
    let stop = CancellationToken::new();
    let stop_c = stop.clone();
    let io = ConsumerIo::WebSocket(WsConnector::new(ws_tls));
    let task = tokio::spawn(async move {
        run_consumer(&mut session, &io, &mut TestConsumer { events: tx }, &stop_c).await;
    });
    wait_for(&mut rx, "first connection", |e| {
        matches!(
            e,
            ConsumerEvent::Connected {
                reconnect: false,
                resumed_from: 0,
                ..
            }
        )
    })
    .await;
    let first = n.change(id, DeliveryStatus::PickedUp).await;
    wait_for(
        &mut rx,
        "first event",
        |e| matches!(e, ConsumerEvent::Status { event, .. } if event.event_seq == first.event_seq),
    )
    .await;
    // Cut the connection and make a change while the consumer is away.
    relay.cut();
    let missed = n.change(id, DeliveryStatus::EnRoute).await;
    let failed = wait_for(&mut rx, "the cut", |e| {
        matches!(e, ConsumerEvent::Failed { .. })
    })
    .await;
    let ConsumerEvent::Failed {
        retry_in,
        was_connected: true,
        ..
    } = failed
    else {
        panic!("{failed:?}");
    };
    // First failure after a short connection: half to all of the initial 500 ms ceiling.
    assert!(retry_in >= Duration::from_millis(250) && retry_in <= Duration::from_millis(500));
    wait_for(&mut rx, "resumed connection", |e| {
        matches!(e, ConsumerEvent::Connected { reconnect: true, resumed_from, .. } if *resumed_from == first.event_seq)
    })
    .await;
    wait_for(&mut rx, "the event missed while away", |e| {
        matches!(e, ConsumerEvent::Status { event, new: true, gap: 0 } if event.event_seq == missed.event_seq)
    })
    .await;
    stop.cancel();
    task.await.expect("consumer task");
    n.edge.shutdown();
    n.hub.shutdown();
    n.edge.join().await;
    n.hub.join().await;
    let _ = std::fs::remove_dir_all(&dir);
}
