//! One hub link: QUIC with mutual TLS, `Hello`/`Welcome`, then batches and their acks; it
//! reconnects with exponential backoff while the batcher keeps the newest fix per driver.
//! The edge runs one per live hub ([`crate::routes`]), all on one client endpoint.

use crate::config::HubConfig;
use crate::metrics::EdgeMetrics;
use crate::pipeline::BatchQueue;
use protocol::framing::{encode_frame, frame_bytes, FrameDecoder, MAX_HUB_FRAME};
use protocol::wire::{CloseCode, EdgeToHub, HubToEdge, RoutedFix, WireError, MAX_FIXES_PER_BATCH};
use quinn::{Connection, Endpoint, TransportConfig, VarInt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// Transport settings of the hub link: keep-alives so a dead hub is noticed within seconds.
pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(5)).ok());
    t
}

/// Why one hub connection ended.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("connecting to hub {addr}: {reason}")]
    Connect {
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error("hub did not answer within {0:?}")]
    Timeout(Duration),
    #[error("hub link lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("writing to hub: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("reading from hub: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("malformed frame from hub: {0}")]
    Wire(#[from] WireError),
    #[error("hub closed the link stream")]
    Finished,
    #[error("hub sent {0} instead of Welcome")]
    Unexpected(&'static str),
    #[error("hub redirected this edge to {0}")]
    Redirected(String),
}

/// The parts of the hub link that `spawn_uplink` needs.
#[derive(Debug)]
pub struct UplinkParams {
    pub edge_id: String,
    /// The hub's id (cluster node id, or its address without a cluster), for logs.
    pub hub_id: String,
    pub hub: HubConfig,
    /// A client endpoint with the mTLS client config as its default.
    pub endpoint: Endpoint,
}

/// Runs the hub link until `shutdown`, taking batches from `rx`. When it stops, whatever was
/// not written (including batches still in `rx`) is left in `queue`'s batcher, newest per
/// driver, for the caller to route elsewhere. The shared endpoint stays open.
pub fn spawn_uplink(
    params: UplinkParams,
    mut rx: mpsc::Receiver<Vec<RoutedFix>>,
    queue: Arc<BatchQueue>,
    metrics: Arc<EdgeMetrics>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("uplink", hub_id = %params.hub_id, hub = %params.hub.addr);
    tokio::spawn(
        async move {
            let min = Duration::from_millis(params.hub.backoff_min_ms);
            let max = Duration::from_millis(params.hub.backoff_max_ms);
            let mut backoff = min;
            loop {
                let mut link = Link { params: &params, rx: &mut rx, queue: &queue, metrics: &metrics, connected: false, conn: None, unacked: 0 };
                let result = tokio::select! {
                    _ = shutdown.cancelled() => None,
                    r = link.run() => Some(r),
                };
                let was_connected = link.connected;
                link.set_unacked(0);
                if was_connected {
                    metrics.hub_connected().dec();
                }
                if let Some(conn) = link.conn.take() {
                    conn.close(VarInt::from_u32(CloseCode::ShuttingDown as u32), b"edge shutting down");
                }
                queue.handle_hub_down(&mut rx, nodekit::unix_ms());
                let Some(result) = result else { break };
                match result {
                    Ok(()) => break, // the batch queue closed: the edge is stopping
                    Err(e) if was_connected => {
                        warn!(error = %e, "hub link lost, keeping the newest fix per driver");
                        backoff = min;
                    }
                    Err(e) => info!(error = %e, retry_in_ms = backoff.as_millis() as u64, "hub unreachable"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(max);
            }
            info!("uplink stopped");
        }
        .instrument(span),
    )
}

struct Link<'a> {
    params: &'a UplinkParams,
    rx: &'a mut mpsc::Receiver<Vec<RoutedFix>>,
    queue: &'a BatchQueue,
    metrics: &'a EdgeMetrics,
    connected: bool,
    conn: Option<Connection>,
    /// Unacked batches as last added to the shared gauge.
    unacked: u64,
}

impl Link<'_> {
    /// Updates this link's share of the unacked gauge and its queue's count.
    fn set_unacked(&mut self, n: u64) {
        let delta =
            i64::try_from(n).unwrap_or(i64::MAX) - i64::try_from(self.unacked).unwrap_or(i64::MAX);
        self.metrics.hub_unacked_batches().inc_by(delta);
        self.unacked = n;
        self.queue.set_unacked(n);
    }

    /// One connection: handshake, then send batches and read acks until something fails.
    /// `Ok(())` only when the batch queue closed.
    async fn run(&mut self) -> Result<(), UplinkError> {
        let hub = &self.params.hub;
        let timeout = Duration::from_millis(hub.connect_timeout_ms);
        let connecting = self
            .params
            .endpoint
            .connect(hub.addr, &hub.server_name)
            .map_err(|e| UplinkError::Connect {
                addr: hub.addr,
                reason: e.to_string(),
            })?;
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| UplinkError::Timeout(timeout))??;
        self.conn = Some(conn.clone());
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&frame_bytes(&EdgeToHub::Hello {
            edge_id: self.params.edge_id.clone(),
        }))
        .await?;
        let mut decoder = FrameDecoder::new(MAX_HUB_FRAME);
        let first = tokio::time::timeout(timeout, read_frame(&mut recv, &mut decoder))
            .await
            .map_err(|_| UplinkError::Timeout(timeout))??;
        match first {
            HubToEdge::Welcome { hub_id } => info!(hub_id = %hub_id, "hub link up"),
            HubToEdge::Ack { .. } => return Err(UplinkError::Unexpected("Ack")),
            HubToEdge::Redirect { addr } => return Err(UplinkError::Redirected(addr)),
        }
        self.connected = true;
        self.metrics.hub_connected().inc();
        let mut next_seq: u64 = 1;
        let mut acked: u64 = 0;
        let mut buf = Vec::new();
        // What was kept while the hub was away goes first.
        if let Some(kept) = self.queue.take_with(|b| b.handle_hub_up()) {
            self.send_batch(&mut send, &mut buf, &mut next_seq, acked, kept)
                .await?;
        }
        loop {
            tokio::select! {
                batch = self.rx.recv() => match batch {
                    Some(batch) => self.send_batch(&mut send, &mut buf, &mut next_seq, acked, batch).await?,
                    None => {
                        conn.close(VarInt::from_u32(CloseCode::ShuttingDown as u32), b"edge shutting down");
                        return Ok(());
                    }
                },
                chunk = recv.read_chunk(MAX_HUB_FRAME, true) => {
                    let chunk = chunk?.ok_or(UplinkError::Finished)?;
                    decoder.push(&chunk.bytes);
                    while let Some(msg) = decoder.next_frame::<HubToEdge>()? {
                        match msg {
                            HubToEdge::Ack { batch_seq } => acked = acked.max(batch_seq),
                            HubToEdge::Welcome { .. } => {}
                            HubToEdge::Redirect { addr } => return Err(UplinkError::Redirected(addr)),
                        }
                    }
                }
            }
            self.set_unacked((next_seq - 1).saturating_sub(acked));
        }
    }

    async fn send_batch(
        &mut self,
        send: &mut quinn::SendStream,
        buf: &mut Vec<u8>,
        next_seq: &mut u64,
        acked: u64,
        fixes: Vec<RoutedFix>,
    ) -> Result<(), UplinkError> {
        // The kept set after an outage can exceed one frame: split it.
        for part in fixes.chunks(MAX_FIXES_PER_BATCH) {
            // Counted before it is written, so a flushing edge never sees it as delivered.
            self.set_unacked(next_seq.saturating_sub(acked));
            buf.clear();
            encode_frame(
                &EdgeToHub::Batch {
                    batch_seq: *next_seq,
                    fixes: part.to_vec(),
                },
                buf,
            );
            send.write_all(buf).await?;
            *next_seq += 1;
            self.metrics.batches_sent().inc();
            self.metrics.batch_fixes().observe(part.len() as f64);
        }
        Ok(())
    }
}

async fn read_frame(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<HubToEdge, UplinkError> {
    loop {
        if let Some(msg) = decoder.next_frame::<HubToEdge>()? {
            return Ok(msg);
        }
        let chunk = recv
            .read_chunk(MAX_HUB_FRAME, true)
            .await?
            .ok_or(UplinkError::Finished)?;
        decoder.push(&chunk.bytes);
    }
}
