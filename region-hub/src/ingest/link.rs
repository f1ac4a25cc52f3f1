//! The QUIC endpoint edges connect to (mutual TLS, ALPN `trackline-hub/1`): Hello/Welcome,
//! then batches of fixes, each acknowledged once queued for the shard workers that apply it.

use crate::hub::Hub;
use crate::ingest::workers::FixQueues;
use protocol::framing::{frame_bytes, FrameDecoder, MAX_HUB_FRAME};
use protocol::wire::{CloseCode, EdgeToHub, HubToEdge};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// How long an edge has to open its stream and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the link's quinn server config from the node certificate and the cluster CA.
pub fn server_config(tls: &nodekit::LoadedTls) -> Result<quinn::ServerConfig, certs::CertError> {
    let rustls = certs::mtls_server_config(
        tls.chain.clone(),
        tls.key.clone_key(),
        tls.roots.clone(),
        &[protocol::ALPN_HUB, crate::replication::ALPN_REPLICA],
        certs::TlsFor::Quic,
    )?;
    let mut config = certs::quinn_server_config(rustls)?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Binds the link's endpoint on a socket with `buffer_bytes` of kernel buffer each way (an
/// edge's batches arrive in bursts; see [`nodekit::bind_udp`]).
pub fn bind(
    config: quinn::ServerConfig,
    addr: std::net::SocketAddr,
    buffer_bytes: usize,
) -> std::io::Result<quinn::Endpoint> {
    let (socket, buffers) = nodekit::bind_udp(addr, buffer_bytes)?;
    nodekit::udp::log_buffers("link", socket.local_addr()?, &buffers);
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Accepts edge connections until `shutdown`.
pub(crate) async fn run(
    endpoint: quinn::Endpoint,
    hub: Arc<Hub>,
    queues: FixQueues,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.cancelled() => break,
        };
        let span = tracing::info_span!("edge_link", remote = %incoming.remote_address(), edge_id = tracing::field::Empty);
        tokio::spawn(
            handle(incoming, hub.clone(), queues.clone(), shutdown.clone()).instrument(span),
        );
    }
    endpoint.close(
        quinn::VarInt::from_u32(CloseCode::ShuttingDown as u32),
        b"hub shutting down",
    );
    // Lets the close frames reach the peers, bounded: under packet loss a peer that never
    // acknowledges would otherwise hold the shutdown for quinn's idle timeout (30 s).
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("frame: {0}")]
    Frame(#[from] protocol::wire::WireError),
    #[error("no hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
    #[error("expected hello first")]
    NoHello,
}

async fn handle(
    incoming: quinn::Incoming,
    hub: Arc<Hub>,
    queues: FixQueues,
    shutdown: CancellationToken,
) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "edge handshake failed");
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    if alpn.as_deref() == Some(crate::replication::ALPN_REPLICA) {
        // A peer hub replicating to us; only hubs of a cluster may.
        if hub.cluster().is_some() && crate::replication::peer_is_hub(&conn) {
            crate::replication::spawn_serve(conn, hub);
        } else {
            conn.close(
                quinn::VarInt::from_u32(CloseCode::ProtocolViolation as u32),
                b"replication is for the hubs of a cluster only",
            );
        }
        return;
    }
    let gauge = hub.metrics().edge_links_active.clone();
    gauge.inc();
    let result = tokio::select! {
        r = serve(&conn, &hub, &queues) => r,
        _ = shutdown.cancelled() => Ok(()),
    };
    gauge.dec();
    match result {
        Ok(()) => conn.close(
            quinn::VarInt::from_u32(CloseCode::ShuttingDown as u32),
            b"hub shutting down",
        ),
        Err(LinkError::Connection(e)) => info!(reason = %e, "edge link closed"),
        Err(e) => {
            let code = match e {
                LinkError::HelloTimeout => CloseCode::HelloTimeout,
                _ => CloseCode::ProtocolViolation,
            };
            warn!(error = %e, "closing edge link");
            conn.close(
                quinn::VarInt::from_u32(code as u32),
                e.to_string().as_bytes(),
            );
        }
    }
}

async fn serve(conn: &quinn::Connection, hub: &Hub, queues: &FixQueues) -> Result<(), LinkError> {
    let (mut send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| LinkError::HelloTimeout)??;
    let mut decoder = FrameDecoder::new(MAX_HUB_FRAME);
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let edge_id = loop {
        if let Some(frame) = decoder.next_frame::<EdgeToHub>()? {
            match frame {
                EdgeToHub::Hello { edge_id } => break edge_id,
                EdgeToHub::Batch { .. } => return Err(LinkError::NoHello),
            }
        }
        let n = tokio::time::timeout_at(deadline, recv.read(&mut buf))
            .await
            .map_err(|_| LinkError::HelloTimeout)??;
        match n {
            Some(n) => decoder.push(&buf[..n]),
            None => return Ok(()),
        }
    };
    tracing::Span::current().record("edge_id", edge_id.as_str());
    info!("edge connected");
    let mut redirected = false;
    send.write_all(&frame_bytes(&HubToEdge::Welcome {
        hub_id: hub.hub_id().to_owned(),
    }))
    .await?;
    loop {
        let mut acked = None;
        while let Some(frame) = decoder.next_frame::<EdgeToHub>()? {
            match frame {
                EdgeToHub::Batch { batch_seq, fixes } => {
                    if !queues.dispatch(hub, &fixes).await {
                        return Ok(()); // the hub is stopping
                    }
                    acked = Some(batch_seq);
                }
                EdgeToHub::Hello { .. } => return Err(LinkError::NoHello),
            }
        }
        if let Some(batch_seq) = acked {
            // One cumulative ack for everything applied from this read.
            send.write_all(&frame_bytes(&HubToEdge::Ack { batch_seq }))
                .await?;
        }
        let read = tokio::select! {
            r = recv.read(&mut buf) => r?,
            _ = hub.draining().cancelled(), if !redirected => {
                redirected = true;
                let key = edge_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                if let Some(peer) = hub.cluster().and_then(|c| c.peer_for(key)) {
                    info!(to = %peer.link_addr, "hub draining: redirecting the edge");
                    send.write_all(&frame_bytes(&HubToEdge::Redirect {
                        addr: peer.link_addr,
                    }))
                    .await?;
                }
                continue;
            }
        };
        match read {
            Some(n) => decoder.push(&buf[..n]),
            None => {
                info!("edge finished its stream");
                return Ok(());
            }
        }
    }
}
