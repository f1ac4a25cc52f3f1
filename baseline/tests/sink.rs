//! The bare sink counts every datagram the QUIC load generator sends it, over real QUIC on
//! loopback.

use std::time::Duration;
use tokio_util::sync::CancellationToken;
use trackline_baseline::{quic_load, sink};

#[tokio::test]
async fn the_sink_counts_every_datagram_the_generator_sent() {
    certs::install_default_crypto_provider();
    let dir = std::env::temp_dir().join(format!("trackline-baseline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = certs::DevPki::load_or_create(&dir.join("ca")).expect("dev ca");
    let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let (cert, key) = pki
        .issue_node("sink", &sans, certs::NodeRole::Edge)
        .expect("cert")
        .write_to(&dir, "sink")
        .expect("write cert");
    let sink = sink::spawn_sink(&sink::SinkArgs {
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin: "127.0.0.1:0".parse().expect("addr"),
        cert,
        key,
    })
    .await
    .expect("sink starts");
    let args = quic_load::QuicLoadArgs {
        target: sink.quic_addr,
        server_name: "localhost".into(),
        ca: dir.join("ca").join(certs::pki::CA_CERT_FILE),
        connections: 20,
        interval: Duration::from_millis(20),
        ramp: Duration::from_millis(100),
        duration: Duration::from_millis(1500),
        token_key: None,
        token_kid: 1,
        first_driver: 1,
        on_duty: false,
        endpoints: 2,
        keep_alive: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(10),
        progress_every: Duration::from_secs(60),
        report: None,
        stats_file: None,
    };
    let report = quic_load::run(args, CancellationToken::new())
        .await
        .expect("load runs");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.connected_max, 20);
    assert!(report.datagrams_sent > 0);
    // Everything sent on loopback arrives (the generator paces far below any limit).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sink.metrics.datagrams.get() < report.datagrams_sent {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sink got {} of {}",
            sink.metrics.datagrams.get(),
            report.datagrams_sent
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.metrics.datagrams.get(), report.datagrams_sent);
    let text = get_metrics(sink.admin_addr).await;
    assert!(
        text.contains(&format!(
            "baseline_sink_datagrams_total {}",
            report.datagrams_sent
        )),
        "{text}"
    );
    sink.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `GET /metrics` over a plain TCP socket (HTTP/1.0, the admin server closes after it).
async fn get_metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}
