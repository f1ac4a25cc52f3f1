//! The HTTPS listener's handshake gate over real TCP and TLS on loopback: a connection past
//! the in-flight limit is closed before TLS starts and counted; the slot comes back when the
//! handshake holding it ends.

use nodekit::handshake::{HandshakeGateConfig, HandshakeMetrics, RefuseReason};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_tls_accept_past_the_limit_is_closed_before_tls_and_counted() {
    certs::install_default_crypto_provider();
    let dir = std::env::temp_dir().join(format!("trackline-nodekit-gate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = certs::DevPki::load_or_create(&dir).expect("dev ca");
    let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let node = pki
        .issue_node("edge-test", &sans, certs::NodeRole::Edge)
        .expect("cert");
    let tls = certs::server_tls_config(
        node.cert_chain().expect("chain"),
        node.private_key().expect("key"),
        &[b"http/1.1"],
        certs::TlsFor::Tcp,
    )
    .expect("tls");
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = HandshakeMetrics::register(&mut registry);
    let gate = metrics.gate(
        "https",
        HandshakeGateConfig {
            max_in_flight: 1,
            ..HandshakeGateConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = axum::Router::new().route("/ok", axum::routing::get(|| async { "ok" }));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(nodekit::serve_https_gated(
        listener,
        Arc::new(tls),
        router,
        shutdown.clone(),
        gate.clone(),
    ));

    // A client that opens TCP and never says hello holds the only slot.
    let holder = tokio::net::TcpStream::connect(addr).await.expect("connect");
    wait_until("first handshake in flight", || gate.in_flight() == 1).await;
    // The next one is closed without a byte of TLS.
    let mut refused = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(20), refused.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "no TLS bytes from a refused connection");
    assert_eq!(gate.refused(RefuseReason::InFlight), 1);
    // The holder gives up: its slot comes back and a real client gets through.
    drop(holder);
    wait_until("slot free again", || gate.in_flight() == 0).await;
    let client_tls = certs::client_config_with_roots(
        vec![pki.ca_cert_der()],
        &[b"http/1.1"],
        certs::TlsFor::Tcp,
    )
    .expect("client tls");
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(client_tls)
        .build()
        .expect("client");
    let body = client
        .get(format!("https://localhost:{}/ok", addr.port()))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "ok");
    assert_eq!(gate.admitted(), 2);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains("handshakes_refused_total{listener=\"https\",reason=\"in_flight\"} 1"),
        "{text}"
    );
    shutdown.cancel();
    server.await.expect("join").expect("served");
    let _ = std::fs::remove_dir_all(&dir);
}
