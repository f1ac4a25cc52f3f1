//! The edge's QUIC endpoint: routes connections by ALPN and runs driver sessions (token on a
//! stream, `OnDuty` declarations on it, fixes as datagrams; `Redirect` when the edge drains).

use crate::auth::{close_code, reject_label};
use crate::ingest::IngestContext;
use crate::metrics::Transport;
use nodekit::handshake::{Decision, HandshakePermit, ListenerGate, RefuseReason};
use protocol::framing::{frame_bytes, FrameDecoder, MAX_DRIVER_FRAME};
use protocol::wire::{CloseCode, DriverToEdge, EdgeToDriver, WireError, MAX_ON_DUTY_DELIVERIES};
use protocol::{ALPN_DRIVER, ALPN_H3};
use quinn::{Connection, Endpoint, TransportConfig, VarInt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, Instrument};

/// Datagram bytes buffered per connection before quinn drops the oldest: a driver sends a
/// ~25-byte fix every few seconds (a backlog is one datagram of at most 48 fixes).
const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;
/// A connection silent for this long is closed (drivers keep alive more often than this).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams an HTTP/3 connection may open (each direction), raised after its handshake.
const H3_MAX_STREAMS: u32 = 100;

/// Transport settings of the driver-facing endpoint: datagrams on, sane timeouts, and no
/// more than a driver session needs, because every connection pays for what it may use
/// (docs/operations.md, "Memory per driver session"): one bidirectional stream (the control
/// stream) and no unidirectional one; HTTP/3 connections get more after their handshake.
pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    // quinn sets up the receive state of every stream the peer may open at once, up front.
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    // The edge sends no datagrams to drivers.
    t.datagram_send_buffer_size(1024);
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

/// Accepts connections until `shutdown`, then closes the endpoint. Each incoming connection
/// first passes `gate` (before any crypto): admitted ones get a task each, the others a
/// Retry or a refusal.
pub async fn run_endpoint(
    endpoint: Endpoint,
    ctx: Arc<QuicContext>,
    gate: Arc<ListenerGate>,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let permit = match gate.admit(incoming.remote_address_validated()) {
            Decision::Admit(permit) => permit,
            Decision::Retry if incoming.may_retry() => {
                debug!(remote = %incoming.remote_address(), "busy: address validation first");
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
                continue;
            }
            Decision::Retry => {
                // Already retried once (so validated): cannot happen by the gate's rules,
                // but never admit without a slot.
                gate.count_refused(RefuseReason::InFlight);
                incoming.refuse();
                continue;
            }
            Decision::Refuse(reason) => {
                debug!(remote = %incoming.remote_address(), reason = reason.as_str(), "handshake refused");
                incoming.refuse();
                continue;
            }
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let span = tracing::debug_span!("quic_conn", remote = %incoming.remote_address());
        // The handshake (and the `Incoming`, ~1.7 KiB) lives in a box of its own that is
        // freed once the session is open: the task keeps only what a session needs.
        let opening = Box::pin(open_session(
            incoming,
            permit,
            ctx.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(handle_incoming(opening, ctx, shutdown).instrument(span));
    }
    endpoint.close(
        VarInt::from_u32(CloseCode::ShuttingDown as u32),
        b"edge shutting down",
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    info!("quic endpoint stopped");
}

/// The opening of a connection (handshake, hello, or a whole HTTP/3 connection), boxed.
type Opening = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Session>> + Send>>;

/// One connection's task: its `opening` (a box freed when done), then, for a driver session,
/// the session's control plane.
async fn handle_incoming(opening: Opening, ctx: Arc<QuicContext>, shutdown: CancellationToken) {
    let Some(session) = opening.await else {
        return;
    };
    let span = session.span.clone();
    run_session(session, &ctx, &shutdown).instrument(span).await
}

/// Completes the handshake and routes by ALPN: HTTP/3 connections are served here; driver
/// sessions are opened (hello, token, welcome, their datagram task) and returned.
async fn open_session(
    incoming: quinn::Incoming,
    permit: HandshakePermit,
    ctx: Arc<QuicContext>,
    shutdown: CancellationToken,
) -> Option<Session> {
    let handshake = incoming.await;
    // The handshake is over (either way): its admission slot is free.
    drop(permit);
    let conn = match handshake {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "handshake failed");
            return None;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    match alpn.as_deref() {
        Some(p) if p == ALPN_DRIVER => open_driver_session(conn, &ctx).await,
        Some(p) if p == ALPN_H3 => {
            // The driver endpoint starts every connection with one stream (a session's
            // control stream); an HTTP/3 client needs its control and QPACK streams and
            // a stream per request.
            conn.set_max_concurrent_uni_streams(VarInt::from_u32(H3_MAX_STREAMS));
            conn.set_max_concurrent_bi_streams(VarInt::from_u32(H3_MAX_STREAMS));
            crate::h3api::serve_connection(conn, ctx.ingest.clone(), shutdown).await;
            None
        }
        _ => {
            close(&conn, CloseCode::ProtocolViolation, "unsupported alpn");
            None
        }
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

/// An open driver session: what its control plane needs for the rest of its life.
struct Session {
    conn: Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    driver: protocol::DriverId,
    session_id: u64,
    /// Unix seconds the token expires.
    exp_s: u64,
    span: tracing::Span,
    datagrams: tokio::task::JoinHandle<()>,
    _active: ActiveSession,
}

/// Hello, token check and welcome; then the session is registered with ingest and its
/// datagram task started. `None` when the session was refused (and closed).
async fn open_driver_session(conn: Connection, ctx: &Arc<QuicContext>) -> Option<Session> {
    let metrics = ctx.ingest.metrics.clone();
    if ctx.ingest.drain.is_draining() {
        metrics.sessions_rejected("draining").inc();
        let reason = match ctx.ingest.drain.any_target() {
            Some(peer) => format!("edge draining; reconnect to {peer}"),
            None => "edge draining; reconnect later".to_owned(),
        };
        debug!("{reason}");
        close(&conn, CloseCode::Draining, &reason);
        return None;
    }
    let opened = match tokio::time::timeout(ctx.hello_timeout, read_hello(&conn)).await {
        Ok(Ok(o)) => o,
        Ok(Err(HelloError::Connection(e))) => {
            debug!(error = %e, "driver left before hello");
            return None;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "session refused");
            metrics.sessions_rejected("protocol").inc();
            close(&conn, CloseCode::ProtocolViolation, &e.to_string());
            return None;
        }
        Err(_) => {
            metrics.sessions_rejected("hello_timeout").inc();
            let reason = format!("no hello within {} ms", ctx.hello_timeout.as_millis());
            debug!("{reason}");
            close(&conn, CloseCode::HelloTimeout, &reason);
            return None;
        }
    };
    let Opened {
        mut send,
        recv,
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
            return None;
        }
    };
    let driver = auth.driver;
    let session_id = ctx.next_session_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("driver_session", driver_id = %driver, session_id, app_version = %app_version);
    let welcome = EdgeToDriver::Welcome {
        driver_id: driver,
        session_id,
        server_time_ms: now_ms,
        max_datagram: conn
            .max_datagram_size()
            .unwrap_or(0)
            .min(usize::from(u16::MAX)) as u16,
    };
    if let Err(e) = send
        .write_all(&frame_bytes(&welcome))
        .instrument(span.clone())
        .await
    {
        debug!(parent: &span, error = %e, "could not send welcome");
        return None;
    }
    metrics.sessions_active().inc();
    let active = ActiveSession(metrics.sessions_active().clone());
    let ingest = &ctx.ingest.pipeline;
    ingest.session_started(driver, session_id);
    info!(parent: &span, "driver session open");
    // Frames that arrived together with the Hello.
    if let Err(reason) = drain_frames(&mut decoder, ctx, driver, session_id) {
        metrics.sessions_rejected("protocol").inc();
        close(&conn, CloseCode::ProtocolViolation, &reason);
        ingest.session_ended(driver, session_id);
        return None;
    }
    // Fixes: a task of their own that does nothing but read datagrams and hand them to
    // ingest, as lean as a bare QUIC sink; the session's task keeps the control plane (the
    // stream, draining, shutdown, the token's expiry) and wakes only for it.
    let datagrams = tokio::spawn(read_datagrams(conn.clone(), ingest.clone(), driver));
    Some(Session {
        conn,
        send,
        recv,
        decoder,
        driver,
        session_id,
        exp_s: auth.exp_s,
        span,
        datagrams,
        _active: active,
    })
}

/// The session's life after the welcome, then its end: ingest forgets its deliveries.
async fn run_session(mut s: Session, ctx: &QuicContext, shutdown: &CancellationToken) {
    control_loop(ctx, &mut s, shutdown).await;
    // The connection is closed by now, so the datagram task ends.
    let _ = (&mut s.datagrams).await;
    ctx.ingest.pipeline.session_ended(s.driver, s.session_id);
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
async fn control_loop(ctx: &QuicContext, s: &mut Session, shutdown: &CancellationToken) {
    let metrics = &ctx.ingest.metrics;
    let (driver, exp_s) = (s.driver, s.exp_s);
    // The token's expiry ends the session even if the connection stays healthy.
    let expires_in = Duration::from_secs(exp_s.saturating_sub(nodekit::unix_s()));
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    let mut stream_open = true;
    let mut drain_rx = ctx.ingest.drain.subscribe();
    let mut redirected = false;
    if *drain_rx.borrow_and_update() {
        redirected = true;
        if !Box::pin(redirect(ctx, &s.conn, &mut s.send, driver)).await {
            return;
        }
    }
    let conn = s.conn.clone();
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
                if !Box::pin(redirect(ctx, &conn, &mut s.send, driver)).await {
                    return;
                }
            }
            _ = &mut cancelled => {
                close(&conn, CloseCode::ShuttingDown, "edge shutting down");
                return;
            }
            _ = &mut expiry => {
                metrics.sessions_rejected("expired").inc();
                let reason = format!("token expired for driver {driver} at {exp_s}");
                info!("{reason}");
                close(&conn, CloseCode::TokenExpired, &reason);
                return;
            }
            e = &mut closed => {
                debug!(reason = %e, "driver session closed");
                return;
            }
            r = s.recv.read_chunk(MAX_DRIVER_FRAME, true), if stream_open => match r {
                Ok(Some(chunk)) => {
                    s.decoder.push(&chunk.bytes);
                    if let Err(reason) = drain_frames(&mut s.decoder, ctx, driver, s.session_id) {
                        metrics.sessions_rejected("protocol").inc();
                        close(&conn, CloseCode::ProtocolViolation, &reason);
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
