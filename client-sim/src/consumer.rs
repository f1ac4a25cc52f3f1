//! Simulated consumers: a WebTransport or WebSocket session that checks order and measures latency.

use crate::quality::QualityBook;
use crate::stats::SimStats;
use anyhow::{bail, Context};
use futures::StreamExt;
use protocol::consumer::ConsumerFrame;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

/// How a consumer reaches the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerTransport {
    WebTransport,
    WebSocket,
}

/// One simulated consumer.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub index: usize,
    pub delivery_id: u64,
    pub token: String,
    pub transport: ConsumerTransport,
}

/// Where the hub is and how to trust it.
#[derive(Clone)]
pub struct HubTarget {
    pub https_addr: SocketAddr,
    pub webtransport_addr: SocketAddr,
    pub server_name: String,
    /// Hash of the hub's WebTransport certificate (browsers' `serverCertificateHashes`).
    pub webtransport_cert_sha256: [u8; 32],
    /// TLS config trusting the hub's HTTPS certificate (dev CA).
    pub tls: Arc<rustls::ClientConfig>,
}

/// What one consumer has seen so far; survives reconnects.
#[derive(Debug)]
struct Seen {
    last_event_seq: u64,
    last_position_seq: u64,
    book: Arc<QualityBook>,
    clock: nodekit::Clock,
}

impl Seen {
    fn handle(&mut self, spec: &ConsumerSpec, stats: &SimStats, frame: ConsumerFrame) {
        match frame {
            ConsumerFrame::Position(p) => {
                SimStats::add(&stats.positions_received, 1);
                // Fix timestamps are simulated time: scale the age back to real time.
                let age_sim_ms = (self.clock.now_ms_f64() - p.ts_ms as f64).max(0.0);
                stats.record_latency_us((age_sim_ms / self.clock.speedup() * 1000.0) as u64);
                if p.seq <= self.last_position_seq {
                    SimStats::add(&stats.positions_out_of_order, 1);
                } else {
                    self.last_position_seq = p.seq;
                }
            }
            ConsumerFrame::Status(e) => {
                stats.event_seen(spec.index, spec.delivery_id, e.event_seq);
                self.last_event_seq = self.last_event_seq.max(e.event_seq);
            }
            ConsumerFrame::Snapshot(s) => {
                if let Some(p) = s.position {
                    self.last_position_seq = self.last_position_seq.max(p.seq);
                }
                if let Some(e) = &s.eta {
                    self.book.eta_received(e, self.clock.now_s_f64(), true);
                }
            }
            ConsumerFrame::Eta(e) => {
                SimStats::add(&stats.etas_received, 1);
                self.book.eta_received(&e, self.clock.now_s_f64(), false);
            }
            ConsumerFrame::Error { code, message } => {
                stats.error(format!("hub refused consumer: {code} {message}"))
            }
            ConsumerFrame::LocationUnavailable { .. } | ConsumerFrame::Redirect { .. } => {}
        }
    }
}

/// Runs a consumer until `stop`, reconnecting (and resuming from its last event) on failure.
pub async fn run_consumer(
    spec: ConsumerSpec,
    hub: HubTarget,
    stats: Arc<SimStats>,
    book: Arc<QualityBook>,
    clock: nodekit::Clock,
    stop: CancellationToken,
) {
    stats.consumer_watches(spec.index, spec.delivery_id);
    let mut seen = Seen {
        last_event_seq: 0,
        last_position_seq: 0,
        book,
        clock,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let r = match spec.transport {
            ConsumerTransport::WebSocket => run_ws(&spec, &hub, &stats, &stop, &mut seen).await,
            ConsumerTransport::WebTransport => run_wt(&spec, &hub, &stats, &stop, &mut seen).await,
        };
        if stop.is_cancelled() {
            return;
        }
        if let Err(e) = r {
            stats.error(format!("consumer {:?}: {e:#}", spec.transport));
        }
        SimStats::add(&stats.consumer_reconnects, 1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn parse(stats: &SimStats, text: &str) -> Option<ConsumerFrame> {
    match ConsumerFrame::from_json(text) {
        Ok(f) => Some(f),
        Err(e) => {
            stats.error(format!("unparsable consumer frame: {e}"));
            None
        }
    }
}

async fn run_ws(
    spec: &ConsumerSpec,
    hub: &HubTarget,
    stats: &SimStats,
    stop: &CancellationToken,
    seen: &mut Seen,
) -> anyhow::Result<()> {
    let url = format!(
        "wss://{}:{}/api/v1/tracking/{}/connect?token={}&last_event_seq={}",
        hub.server_name,
        hub.https_addr.port(),
        spec.delivery_id,
        spec.token,
        seen.last_event_seq
    );
    let tcp = tokio::net::TcpStream::connect(hub.https_addr)
        .await
        .context("connecting to the hub")?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(hub.tls.clone());
    let name = rustls::pki_types::ServerName::try_from(hub.server_name.clone())
        .context("hub server name")?;
    let tls = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake with the hub")?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .context("WebSocket handshake")?;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = ws.next() => m,
        };
        match msg {
            None => bail!("hub closed the WebSocket"),
            Some(Err(e)) => bail!("WebSocket error: {e}"),
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                if let Some(f) = parse(stats, t.as_str()) {
                    seen.handle(spec, stats, f);
                }
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(c))) => {
                bail!("hub closed the WebSocket: {c:?}")
            }
            Some(Ok(_)) => {}
        }
    }
}

async fn run_wt(
    spec: &ConsumerSpec,
    hub: &HubTarget,
    stats: &SimStats,
    stop: &CancellationToken,
    seen: &mut Seen,
) -> anyhow::Result<()> {
    use wtransport::tls::Sha256Digest;
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([Sha256Digest::new(hub.webtransport_cert_sha256)])
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .build();
    let endpoint = wtransport::Endpoint::client(config).context("WebTransport client endpoint")?;
    let url = format!(
        "https://{}:{}/api/v1/tracking/{}/wt?token={}&last_event_seq={}",
        hub.webtransport_addr.ip(),
        hub.webtransport_addr.port(),
        spec.delivery_id,
        spec.token,
        seen.last_event_seq
    );
    let conn = endpoint
        .connect(url)
        .await
        .context("WebTransport session")?;
    let stream = conn
        .accept_uni()
        .await
        .context("waiting for the event stream")?;
    let mut lines = tokio::io::BufReader::new(stream).lines();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            line = lines.next_line() => match line {
                Ok(Some(l)) => {
                    if let Some(f) = parse(stats, &l) {
                        seen.handle(spec, stats, f);
                    }
                }
                Ok(None) => bail!("hub closed the event stream"),
                Err(e) => bail!("event stream: {e}"),
            },
            dg = conn.receive_datagram() => match dg {
                Ok(d) => {
                    if let Some(f) = std::str::from_utf8(&d.payload()).ok().and_then(|t| parse(stats, t)) {
                        seen.handle(spec, stats, f);
                    }
                }
                Err(e) => bail!("WebTransport connection: {e}"),
            },
        }
    }
}
