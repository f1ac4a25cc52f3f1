//! The edge's QUIC endpoint: routes connections by ALPN and runs driver sessions (token on a
//! stream, `OnDuty` declarations on it, fixes as datagrams; `Redirect` when the edge drains).

use crate::auth::{close_code, reject_label};
use crate::ingest::IngestContext;
use crate::metrics::Transport;
use protocol::framing::{frame_bytes, FrameDecoder, MAX_DRIVER_FRAME};
use protocol::wire::{CloseCode, DriverToEdge, EdgeToDriver, WireError, MAX_ON_DUTY_DELIVERIES};
use protocol::{ALPN_DRIVER, ALPN_H3};
use quinn::{Connection, Endpoint, TransportConfig, VarInt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, Instrument};

/// Datagrams buffered per connection before quinn drops the oldest.
const DATAGRAM_RECEIVE_BUFFER: usize = 1024 * 1024;
/// A connection silent for this long is closed (drivers keep alive more often than this).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Transport settings of the driver-facing endpoint: datagrams on, sane timeouts.
pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    t.datagram_send_buffer_size(64 * 1024);
    // 30 s always fits in a VarInt of milliseconds.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    t.keep_alive_interval(Some(Duration::from_secs(10)));
    t
}

/// What every connection task needs.
#[derive(Debug)]
pub struct QuicContext {
    pub ingest: IngestContext,
    pub hello_timeout: Duration,
    next_session_id: AtomicU64,
}

impl QuicContext {
    pub fn new(ingest: IngestContext, hello_timeout: Duration) -> Self {
        Self {
            ingest,
            hello_timeout,
            next_session_id: AtomicU64::new(1),
        }
    }
}

/// Accepts connections until `shutdown`, one task each, then closes the endpoint.
pub async fn run_endpoint(endpoint: Endpoint, ctx: Arc<QuicContext>, shutdown: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let span = tracing::debug_span!("quic_conn", remote = %incoming.remote_address());
        tokio::spawn(handle_incoming(incoming, ctx, shutdown).instrument(span));
    }
    endpoint.close(
        VarInt::from_u32(CloseCode::ShuttingDown as u32),
        b"edge shutting down",
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    info!("quic endpoint stopped");
}

async fn handle_incoming(
    incoming: quinn::Incoming,
    ctx: Arc<QuicContext>,
    shutdown: CancellationToken,
) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "handshake failed");
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    match alpn.as_deref() {
        Some(p) if p == ALPN_DRIVER => run_driver_session(conn, ctx, shutdown).await,
        Some(p) if p == ALPN_H3 => {
            crate::h3api::serve_connection(conn, ctx.ingest.clone(), shutdown).await
        }
        _ => close(&conn, CloseCode::ProtocolViolation, "unsupported alpn"),
    }
}

fn close(conn: &Connection, code: CloseCode, reason: &str) {
    conn.close(VarInt::from_u32(code as u32), reason.as_bytes());
}

/// Why a session's opening failed before its token could be checked.
#[derive(Debug, thiserror::Error)]
enum HelloError {
    #[error("connection lost before hello: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("reading hello: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("malformed hello frame: {0}")]
    Wire(#[from] WireError),
    #[error("the first frame on the control stream must be Hello")]
    NotHello,
    #[error("control stream closed before hello")]
    Finished,
}

struct Opened {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    token: String,
    app_version: String,
}

async fn read_hello(conn: &Connection) -> Result<Opened, HelloError> {
    let (send, mut recv) = conn.accept_bi().await?;
    let mut decoder = FrameDecoder::new(MAX_DRIVER_FRAME);
    loop {
        match decoder.next_frame::<DriverToEdge>()? {
            Some(DriverToEdge::Hello { token, app_version }) => {
                return Ok(Opened {
                    send,
                    recv,
                    decoder,
                    token,
                    app_version,
                })
            }
            Some(DriverToEdge::Fixes(_) | DriverToEdge::OnDuty { .. }) => {
                return Err(HelloError::NotHello)
            }
            None => {}
        }
        match recv.read_chunk(MAX_DRIVER_FRAME, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes),
            None => return Err(HelloError::Finished),
        }
    }
}

/// Decrements the active-session gauge when the session ends, however it ends.
struct ActiveSession(prometheus_client::metrics::gauge::Gauge);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Tells a session's driver to move to a peer edge; without one, closes it with `Draining`.
/// Returns `false` when the session is over.
async fn redirect(
    ctx: &QuicContext,
    conn: &Connection,
    send: &mut quinn::SendStream,
    driver: protocol::DriverId,
) -> bool {
    let Some(addr) = ctx.ingest.drain.redirect_for(driver) else {
        close(
            conn,
            CloseCode::Draining,
            "edge draining; no peer edge known, reconnect later",
        );
        return false;
    };
    info!(to = %addr, "redirecting the driver: edge draining");
    let frame = EdgeToDriver::Redirect {
        addr,
        reason: "edge draining".to_owned(),
    };
    send.write_all(&frame_bytes(&frame)).await.is_ok()
}

async fn run_driver_session(conn: Connection, ctx: Arc<QuicContext>, shutdown: CancellationToken) {
    let metrics = ctx.ingest.metrics.clone();
    if ctx.ingest.drain.is_draining() {
        metrics.sessions_rejected("draining").inc();
        let reason = match ctx.ingest.drain.any_target() {
            Some(peer) => format!("edge draining; reconnect to {peer}"),
            None => "edge draining; reconnect later".to_owned(),
        };
        debug!("{reason}");
        close(&conn, CloseCode::Draining, &reason);
        return;
    }
    let opened = match tokio::time::timeout(ctx.hello_timeout, read_hello(&conn)).await {
        Ok(Ok(o)) => o,
        Ok(Err(HelloError::Connection(e))) => {
            debug!(error = %e, "driver left before hello");
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "session refused");
            metrics.sessions_rejected("protocol").inc();
            close(&conn, CloseCode::ProtocolViolation, &e.to_string());
            return;
        }
        Err(_) => {
            metrics.sessions_rejected("hello_timeout").inc();
            let reason = format!("no hello within {} ms", ctx.hello_timeout.as_millis());
            debug!("{reason}");
            close(&conn, CloseCode::HelloTimeout, &reason);
            return;
        }
    };
    let Opened {
        mut send,
        mut recv,
        mut decoder,
        token,
        app_version,
    } = opened;
    let now_ms = nodekit::unix_ms();
    let auth = match ctx.ingest.auth.verify_driver(&token, now_ms / 1000) {
        Ok(a) => a,
        Err(e) => {
            metrics.sessions_rejected(reject_label(&e)).inc();
            info!(error = %e, "driver token refused");
            close(&conn, close_code(&e), &e.to_string());
            return;
        }
    };
    drop(token);
    let driver = auth.driver;
    let session_id = ctx.next_session_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("driver_session", driver_id = %driver, session_id, app_version = %app_version);
    drop(app_version);
    async move {
        let welcome = EdgeToDriver::Welcome {
            driver_id: driver,
            session_id,
            server_time_ms: now_ms,
            max_datagram: conn
                .max_datagram_size()
                .unwrap_or(0)
                .min(usize::from(u16::MAX)) as u16,
        };
        if let Err(e) = send.write_all(&frame_bytes(&welcome)).await {
            debug!(error = %e, "could not send welcome");
            return;
        }
        metrics.sessions_active().inc();
        let _active = ActiveSession(metrics.sessions_active().clone());
        let ingest = &ctx.ingest.pipeline;
        ingest.session_started(driver, session_id);
        info!("driver session open");

        // Frames that arrived together with the Hello.
        if let Err(reason) = drain_frames(&mut decoder, &ctx, driver, session_id) {
            metrics.sessions_rejected("protocol").inc();
            close(&conn, CloseCode::ProtocolViolation, &reason);
            ingest.session_ended(driver, session_id);
            return;
        }
        // Fixes: a task of their own that does nothing but read datagrams and hand them to
        // ingest, as lean as a bare QUIC sink; this task keeps the control plane (the stream,
        // draining, shutdown, the token's expiry) and wakes only for it.
        let datagrams = tokio::spawn(read_datagrams(conn.clone(), ingest.clone(), driver));
        control_loop(
            &ctx,
            &conn,
            &mut send,
            &mut recv,
            &mut decoder,
            &shutdown,
            driver,
            session_id,
            auth.exp_s,
            now_ms,
        )
        .await;
        // The connection is closed by now, so the datagram task ends.
        let _ = datagrams.await;
        ingest.session_ended(driver, session_id);
    }
    .instrument(span)
    .await
}

/// A session's datagrams until its connection closes: decode, filter, route, batch, in place.
async fn read_datagrams(
    conn: Connection,
    ingest: crate::pipeline::Ingest,
    driver: protocol::DriverId,
) {
    while let Ok(bytes) = conn.read_datagram().await {
        ingest.handle_datagram(driver, &bytes, nodekit::unix_ms());
    }
}

/// The session's control plane until it ends: `OnDuty` (and `Fixes`) frames on the control
/// stream, `Redirect` when the edge drains, close on shutdown or token expiry. Returns once
/// the connection is closed (by either side).
#[allow(clippy::too_many_arguments)]
async fn control_loop(
    ctx: &QuicContext,
    conn: &Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
    shutdown: &CancellationToken,
    driver: protocol::DriverId,
    session_id: u64,
    exp_s: u64,
    now_ms: u64,
) {
    let metrics = &ctx.ingest.metrics;
    // The token's expiry ends the session even if the connection stays healthy.
    let expires_in = Duration::from_millis((exp_s * 1000).saturating_sub(now_ms));
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    let mut stream_open = true;
    let mut drain_rx = ctx.ingest.drain.subscribe();
    let mut redirected = false;
    if *drain_rx.borrow_and_update() {
        redirected = true;
        if !redirect(ctx, conn, send, driver).await {
            return;
        }
    }
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let closed = conn.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            r = drain_rx.changed(), if !redirected => {
                if r.is_err() {
                    redirected = true; // the edge is going away: nothing to watch
                    continue;
                }
                if !*drain_rx.borrow_and_update() {
                    continue;
                }
                redirected = true;
                if !redirect(ctx, conn, send, driver).await {
                    return;
                }
            }
            _ = &mut cancelled => {
                close(conn, CloseCode::ShuttingDown, "edge shutting down");
                return;
            }
            _ = &mut expiry => {
                metrics.sessions_rejected("expired").inc();
                let reason = format!("token expired for driver {driver} at {exp_s}");
                info!("{reason}");
                close(conn, CloseCode::TokenExpired, &reason);
                return;
            }
            e = &mut closed => {
                debug!(reason = %e, "driver session closed");
                return;
            }
            r = recv.read_chunk(MAX_DRIVER_FRAME, true), if stream_open => match r {
                Ok(Some(chunk)) => {
                    decoder.push(&chunk.bytes);
                    if let Err(reason) = drain_frames(decoder, ctx, driver, session_id) {
                        metrics.sessions_rejected("protocol").inc();
                        close(conn, CloseCode::ProtocolViolation, &reason);
                        return;
                    }
                }
                // The driver may finish its control stream and keep sending datagrams.
                Ok(None) | Err(_) => stream_open = false,
            },
        }
    }
}

/// Ingests every complete `Fixes` and `OnDuty` frame, in order (an `OnDuty` applies to the
/// fixes after it); an error is a reason to close the session.
fn drain_frames(
    decoder: &mut FrameDecoder,
    ctx: &QuicContext,
    driver: protocol::DriverId,
    session_id: u64,
) -> Result<(), String> {
    let ingest = &ctx.ingest.pipeline;
    loop {
        match decoder.next_frame::<DriverToEdge>() {
            Ok(Some(DriverToEdge::Fixes(fixes))) => {
                ingest.submit(driver, Transport::Quic, &fixes, nodekit::unix_ms());
            }
            Ok(Some(DriverToEdge::OnDuty { mut deliveries })) => {
                if deliveries.len() > MAX_ON_DUTY_DELIVERIES {
                    return Err(format!(
                        "on duty for {} deliveries, more than {MAX_ON_DUTY_DELIVERIES}",
                        deliveries.len()
                    ));
                }
                deliveries.sort_unstable();
                deliveries.dedup();
                ingest.on_duty(driver, session_id, deliveries);
            }
            Ok(Some(DriverToEdge::Hello { .. })) => {
                return Err("second hello on the control stream".to_owned())
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("malformed control frame: {e}")),
        }
    }
}
