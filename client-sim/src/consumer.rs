//! Simulated consumers: the client library's consumer session (WebTransport or WebSocket)
//! with a checker of order and latency on top.

use crate::quality::QualityBook;
use crate::stats::SimStats;
use anyhow::Context;
use protocol::DeliveryId;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use trackline_client::io::{run_consumer as drive, ConsumerApp, ConsumerIo, WsConnector};
use trackline_client::{ConsumerConfig, ConsumerEvent, ConsumerSession};

pub use trackline_client::ConsumerTransport;

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

/// The transports consumers share: one WebTransport endpoint (pinning the hub's certificate
/// hash, as browsers do) and the WebSocket connector.
#[derive(Clone, Debug)]
pub struct ConsumerIos {
    pub webtransport: ConsumerIo,
    pub websocket: ConsumerIo,
}

impl HubTarget {
    /// Builds the consumers' transports (call inside the tokio runtime).
    pub fn consumer_ios(&self) -> anyhow::Result<ConsumerIos> {
        use wtransport::tls::Sha256Digest;
        let config = wtransport::ClientConfig::builder()
            .with_bind_default()
            .with_server_certificate_hashes([Sha256Digest::new(self.webtransport_cert_sha256)])
            .keep_alive_interval(Some(Duration::from_secs(5)))
            .build();
        let wt = wtransport::Endpoint::client(config).context("WebTransport client endpoint")?;
        let mut ws = WsConnector::new(self.tls.clone());
        ws.server_name = Some(self.server_name.clone());
        Ok(ConsumerIos {
            webtransport: ConsumerIo::WebTransport(Arc::new(wt)),
            websocket: ConsumerIo::WebSocket(ws),
        })
    }
}

/// Checks what one consumer receives; survives reconnects.
struct SimConsumer<'a> {
    spec: &'a ConsumerSpec,
    stats: &'a SimStats,
    book: &'a QualityBook,
    clock: nodekit::Clock,
    last_position_seq: u64,
}

impl ConsumerApp for SimConsumer<'_> {
    fn on_event(
        &mut self,
        _now: Instant,
        event: ConsumerEvent,
        _session: &mut ConsumerSession,
    ) -> ControlFlow<()> {
        let stats = self.stats;
        match event {
            ConsumerEvent::Position(p) => {
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
            ConsumerEvent::Status { event, .. } => {
                stats.event_seen(self.spec.index, self.spec.delivery_id, event.event_seq)
            }
            ConsumerEvent::Snapshot { snapshot, .. } => {
                if let Some(p) = snapshot.position {
                    self.last_position_seq = self.last_position_seq.max(p.seq);
                }
                if let Some(e) = &snapshot.eta {
                    self.book.eta_received(e, self.clock.now_s_f64(), true);
                }
            }
            ConsumerEvent::Eta(e) => {
                SimStats::add(&stats.etas_received, 1);
                self.book.eta_received(&e, self.clock.now_s_f64(), false);
            }
            ConsumerEvent::Failed { failure, .. } => {
                stats.error(format!(
                    "consumer {}: {failure}",
                    self.spec.transport.as_str()
                ));
                SimStats::add(&stats.consumer_reconnects, 1);
            }
            ConsumerEvent::Stopped { failure } => {
                stats.error(format!("hub refused consumer: {failure}"))
            }
            ConsumerEvent::Skipped { detail } => {
                stats.error(format!("unparsable consumer frame: {detail}"))
            }
            ConsumerEvent::Connected { .. }
            | ConsumerEvent::LocationUnavailable { .. }
            | ConsumerEvent::Redirected { .. } => {}
        }
        ControlFlow::Continue(())
    }
}

/// Runs a consumer until `stop`, reconnecting (and resuming from its last event) on failure.
pub async fn run_consumer(
    spec: ConsumerSpec,
    hub: HubTarget,
    ios: ConsumerIos,
    stats: Arc<SimStats>,
    book: Arc<QualityBook>,
    clock: nodekit::Clock,
    stop: CancellationToken,
) {
    stats.consumer_watches(spec.index, spec.delivery_id);
    let (authority, io) = match spec.transport {
        ConsumerTransport::WebTransport => (hub.webtransport_addr.to_string(), &ios.webtransport),
        ConsumerTransport::WebSocket => (hub.https_addr.to_string(), &ios.websocket),
    };
    let mut config = ConsumerConfig::new(
        DeliveryId(spec.delivery_id),
        spec.token.clone(),
        spec.transport,
        vec![authority],
    );
    config.seed = spec.index as u64;
    config.backoff.initial = Duration::from_millis(200);
    config.backoff.max = Duration::from_secs(2);
    let mut session = ConsumerSession::new(config, Instant::now());
    let mut app = SimConsumer {
        spec: &spec,
        stats: &stats,
        book: &book,
        clock,
        last_position_seq: 0,
    };
    drive(&mut session, io, &mut app, &stop).await;
}
