//! Handshake admission on the edge's QUIC endpoint over real sockets: a flood of concurrent
//! handshakes past the limit is refused before any crypto (counted; the clients see
//! CONNECTION_REFUSED) while every admitted session works; a busy edge asks unvalidated
//! clients to Retry first, and they still get through.

mod common;

use common::*;
use nodekit::handshake::RefuseReason;
use protocol::framing::{frame_bytes, FrameDecoder, MAX_DRIVER_FRAME};
use protocol::wire::{DriverToEdge, EdgeToDriver};
use protocol::{DriverId, ALPN_DRIVER};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// A UDP relay in front of the edge that forwards the clients' packets at once but holds the
/// edge's answers until released: every client's first packet reaches the edge before any
/// handshake can complete, so the handshakes really are in flight together.
struct HoldingRelay {
    addr: SocketAddr,
    release: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldingRelay {
    async fn start(target: SocketAddr) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind relay");
        let back = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind relay upstream");
        back.connect(target).await.expect("connect upstream");
        let addr = front.local_addr().expect("addr");
        let (release, mut released) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut held: Vec<Vec<u8>> = Vec::new();
            let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { break };
                        client = Some(from);
                        let _ = back.send(&a[..n]).await;
                    }
                    r = back.recv(&mut b) => {
                        let Ok(n) = r else { break };
                        let pass = *released.borrow();
                        match (client, pass) {
                            (Some(to), true) => { let _ = front.send_to(&b[..n], to).await; }
                            _ => held.push(b[..n].to_vec()),
                        }
                    }
                    r = released.changed() => {
                        if r.is_err() { break }
                        if let Some(to) = client {
                            for p in held.drain(..) {
                                let _ = front.send_to(&p, to).await;
                            }
                        }
                    }
                }
            }
        });
        Self {
            addr,
            release,
            task,
        }
    }
}

impl Drop for HoldingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client endpoint whose connections never retransmit their first flight during a test
/// (a 10 s initial RTT estimate), so each attempt is exactly one incoming connection.
fn patient_client(setup: &Setup) -> quinn::Endpoint {
    let tls = certs::client_config_with_roots(
        vec![setup.ca.clone()],
        &[ALPN_DRIVER],
        certs::TlsFor::Quic,
    )
    .expect("client tls");
    let mut cfg = certs::quinn_client_config(tls).expect("quinn client cfg");
    let mut transport = quinn::TransportConfig::default();
    transport.initial_rtt(Duration::from_secs(10));
    cfg.transport_config(Arc::new(transport));
    let mut ep =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    ep.set_default_client_config(cfg);
    ep
}

/// One driver over `conn`: Hello, Welcome, then one fix. Returns its id and the connection
/// (kept open by the caller until the fix is in).
async fn drive(
    conn: quinn::Connection,
    token: String,
    driver: u64,
) -> (DriverId, quinn::Connection) {
    let (mut send, mut recv) = conn.open_bi().await.expect("open control stream");
    let hello = DriverToEdge::Hello {
        token,
        app_version: "test/1".into(),
    };
    send.write_all(&frame_bytes(&hello)).await.expect("hello");
    let mut dec = FrameDecoder::new(MAX_DRIVER_FRAME);
    let welcome = loop {
        if let Some(f) = dec.next_frame::<EdgeToDriver>().expect("valid frame") {
            break f;
        }
        let chunk = tokio::time::timeout(WAIT, recv.read_chunk(MAX_DRIVER_FRAME, true))
            .await
            .expect("frame in time")
            .expect("read")
            .expect("stream open");
        dec.push(&chunk.bytes);
    };
    match welcome {
        EdgeToDriver::Welcome { driver_id, .. } => assert_eq!(driver_id, DriverId(driver)),
        other => panic!("expected welcome, got {other:?}"),
    }
    let fix = track(1, 1)[0];
    conn.send_datagram_wait(protocol::wire::encode_fix_datagram(&fix).into())
        .await
        .expect("send fix");
    (DriverId(driver), conn)
}

#[tokio::test]
async fn a_handshake_flood_past_the_limit_is_refused_and_every_admitted_session_works() {
    const LIMIT: usize = 4;
    const FLOOD: u64 = 12;
    let setup = Setup::new("flood");
    let mut hub = TestHub::start(&setup, "127.0.0.1:0".parse().expect("addr"));
    let mut config = setup.edge_config(hub.addr);
    config.quic_handshakes = nodekit::HandshakeGateConfig {
        max_in_flight: LIMIT,
        retry_above_in_flight: LIMIT,
        rate_per_s: 1000.0,
        burst: 1000.0,
    };
    let edge = edge_node::spawn(config).await.expect("edge starts");
    let m = edge.metrics();
    wait_until("hub link up", || m.hub_connected().get() == 1).await;
    let gate = edge.quic_gate().clone();
    let relay = HoldingRelay::start(edge.quic_addr()).await;
    let client = patient_client(&setup);

    let attempts: Vec<_> = (1..=FLOOD)
        .map(|driver| {
            let connecting = client.connect(relay.addr, "localhost").expect("connect");
            let token = setup.driver_token(driver);
            tokio::spawn(async move {
                match connecting.await {
                    Ok(conn) => Ok(drive(conn, token, driver).await),
                    Err(e) => Err(e),
                }
            })
        })
        .collect();
    // Every attempt reached the edge and was decided while none could finish.
    wait_until("every handshake decided", || {
        gate.admitted() + gate.refused(RefuseReason::InFlight) == FLOOD
    })
    .await;
    assert_eq!(gate.admitted(), LIMIT as u64);
    assert_eq!(gate.refused(RefuseReason::InFlight), FLOOD - LIMIT as u64);
    assert_eq!(gate.in_flight(), LIMIT as i64);
    assert_eq!(gate.retried(), 0);

    relay.release.send_replace(true);
    let mut admitted = BTreeSet::new();
    let mut open = Vec::new();
    let mut refused = 0;
    for a in attempts {
        match tokio::time::timeout(WAIT, a)
            .await
            .expect("attempt ends in time")
            .expect("join")
        {
            Ok((driver, conn)) => {
                admitted.insert(driver);
                open.push(conn);
            }
            Err(quinn::ConnectionError::ConnectionClosed(c))
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                refused += 1
            }
            Err(other) => panic!("expected a refusal, got {other}"),
        }
    }
    assert_eq!(admitted.len(), LIMIT, "every admitted session worked");
    assert_eq!(refused, FLOOD as usize - LIMIT);
    // Each admitted driver's fix reached the hub.
    let mut delivered = BTreeSet::new();
    while delivered.len() < LIMIT {
        delivered.insert(hub.next_fix().await.driver_id);
    }
    assert_eq!(delivered, admitted);
    wait_until("slots free after the handshakes", || gate.in_flight() == 0).await;
    let text = reqwest::get(format!("http://{}/metrics", edge.admin_addr()))
        .await
        .expect("admin reachable")
        .text()
        .await
        .expect("metrics");
    for line in [
        format!(
            "handshakes_refused_total{{listener=\"quic\",reason=\"in_flight\"}} {}",
            FLOOD - LIMIT as u64
        ),
        format!("handshakes_admitted_total{{listener=\"quic\"}} {LIMIT}"),
        "handshakes_in_flight{listener=\"quic\"} 0".to_owned(),
        format!("handshake_duration_seconds_count{{listener=\"quic\"}} {LIMIT}"),
    ] {
        assert!(text.contains(&line), "{line}\n{text}");
    }
    drop(open);
    client.close(0u32.into(), b"done");
    edge.shutdown();
    edge.join().await;
}

#[tokio::test]
async fn a_busy_edge_validates_addresses_with_a_retry_and_the_sessions_still_work() {
    let setup = Setup::new("retry");
    let mut hub = TestHub::start(&setup, "127.0.0.1:0".parse().expect("addr"));
    let mut config = setup.edge_config(hub.addr);
    // "Busy" from the first handshake on: every unvalidated client is retried.
    config.quic_handshakes.retry_above_in_flight = 0;
    let edge = edge_node::spawn(config).await.expect("edge starts");
    let m = edge.metrics();
    wait_until("hub link up", || m.hub_connected().get() == 1).await;
    for driver in 1..=3u64 {
        let mut d = DriverConn::hello(&setup, edge.quic_addr(), &setup.driver_token(driver)).await;
        assert!(matches!(d.welcome().await, EdgeToDriver::Welcome { .. }));
        d.send_fix(&track(1, 1)[0]).await;
        assert_eq!(hub.next_fix().await.driver_id, DriverId(driver));
    }
    let gate = edge.quic_gate();
    assert_eq!(gate.retried(), 3, "each client proved its address first");
    assert_eq!(gate.admitted(), 3);
    assert_eq!(
        gate.refused(RefuseReason::InFlight) + gate.refused(RefuseReason::Rate),
        0
    );
    edge.shutdown();
    edge.join().await;
}
