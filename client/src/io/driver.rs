//! Tokio transports of the driver session: QUIC (control stream + datagrams) and the HTTPS
//! fallback. They move bytes and timers; every decision is the core's.

use crate::driver::{classify_close, DriverAction, DriverEvent, DriverSession};
use crate::failure::Failure;
use protocol::wire::CloseCode;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The app side of a running driver: produces fixes and duty changes, sees events.
pub trait DriverApp {
    /// When the app next wants [`wake`](Self::wake) (its next fix, a duty change).
    fn next_wake(&self) -> Option<Instant>;
    /// Called at or after `next_wake`: feed the session (`send_fix`, `set_on_duty`).
    /// `Break` ends the session (the connection is closed).
    fn wake(&mut self, now: Instant, session: &mut DriverSession) -> ControlFlow<()>;
    /// Every event of the session, as it happens.
    fn on_event(&mut self, now: Instant, event: DriverEvent);
}

/// How a driver reaches the edges.
#[derive(Clone, Debug)]
pub enum DriverIo {
    /// A quinn client endpoint (shared by many drivers) whose default client config trusts
    /// the edges and offers ALPN `trackline-driver/1`; `server_name` is checked in their
    /// certificates.
    Quic {
        endpoint: quinn::Endpoint,
        server_name: String,
    },
    /// An HTTPS client (one per driver keeps one connection per phone, as apps do).
    Https { client: reqwest::Client },
}

/// Drives `session` over `io` until the app ends it, the session is refused for good, or
/// `stop` fires.
pub async fn run_driver<A: DriverApp>(
    session: &mut DriverSession,
    io: &DriverIo,
    app: &mut A,
    stop: &CancellationToken,
) {
    match io {
        DriverIo::Quic {
            endpoint,
            server_name,
        } => run_quic(session, endpoint, server_name, app, stop).await,
        DriverIo::Https { client } => run_https(session, client, app, stop).await,
    }
}

struct QuicConn {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

fn deadline(session: &DriverSession, app: &impl DriverApp) -> Option<Instant> {
    match (session.poll_timeout(), app.next_wake()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

fn flush_events<A: DriverApp>(session: &mut DriverSession, app: &mut A) {
    let now = Instant::now();
    while let Some(e) = session.poll_event() {
        app.on_event(now, e);
    }
}

/// Resolves `host:port` (an IP literal needs no lookup).
async fn resolve(addr: &str) -> Result<SocketAddr, Failure> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| Failure::Network(format!("resolving {addr}: {e}")))?
        .next()
        .ok_or_else(|| Failure::Network(format!("{addr} resolves to nothing")))
}

fn connection_failure(e: &quinn::ConnectionError) -> Failure {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            classify_close(c.error_code.into_inner(), &c.reason)
        }
        quinn::ConnectionError::TimedOut => Failure::Timeout("QUIC idle timeout"),
        other => Failure::Network(other.to_string()),
    }
}

async fn connect_quic(
    endpoint: &quinn::Endpoint,
    server_name: &str,
    edge: &str,
    timeout: Duration,
) -> Result<QuicConn, Failure> {
    let addr = resolve(edge).await?;
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|e| Failure::Network(format!("connecting to {edge}: {e}")))?;
    let attempt = async {
        let conn = connecting.await.map_err(|e| connection_failure(&e))?;
        let (send, recv) = conn.open_bi().await.map_err(|e| connection_failure(&e))?;
        Ok(QuicConn { conn, send, recv })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| Failure::Timeout("QUIC handshake"))?
}

async fn run_quic<A: DriverApp>(
    session: &mut DriverSession,
    endpoint: &quinn::Endpoint,
    server_name: &str,
    app: &mut A,
    stop: &CancellationToken,
) {
    let mut conn: Option<QuicConn> = None;
    let mut buf = [0u8; 256];
    let timeout = session.config().handshake_timeout;
    loop {
        while let Some(action) = session.poll_action(Instant::now()) {
            match action {
                DriverAction::Connect { edge } => {
                    let r = tokio::select! {
                        r = connect_quic(endpoint, server_name, &edge, timeout) => r,
                        _ = stop.cancelled() => return,
                    };
                    match r {
                        Ok(c) => {
                            conn = Some(c);
                            session.handle_connected(Instant::now());
                        }
                        Err(f) => session.handle_closed(Instant::now(), f),
                    }
                }
                DriverAction::SendControl(bytes) => {
                    if let Some(c) = conn.as_mut() {
                        if let Err(e) = c.send.write_all(&bytes).await {
                            session.handle_closed(
                                Instant::now(),
                                Failure::Network(format!("control stream: {e}")),
                            );
                        }
                    }
                }
                DriverAction::SendDatagram(bytes) => {
                    if let Some(c) = conn.as_ref() {
                        match c.conn.send_datagram(bytes.into()) {
                            Ok(()) => {}
                            Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                                session.handle_closed(Instant::now(), connection_failure(&e))
                            }
                            // Too large for the path or unsupported: this fix is lost, the
                            // session lives on (the next fixes are small).
                            Err(e) => tracing::debug!(error = %e, "datagram not sent"),
                        }
                    }
                }
                DriverAction::Close { code, reason } => {
                    if let Some(c) = conn.take() {
                        c.conn
                            .close(quinn::VarInt::from_u32(code as u32), reason.as_bytes());
                    }
                }
                DriverAction::Upload { .. } => {
                    tracing::warn!("upload action on a QUIC driver session ignored")
                }
            }
        }
        flush_events(session, app);
        if session.is_stopped() {
            break;
        }
        let wake_at = deadline(session, app);
        let watched = conn.as_ref().map(|c| c.conn.clone());
        let control = async {
            match conn.as_mut() {
                Some(c) => c.recv.read(&mut buf).await,
                None => std::future::pending().await,
            }
        };
        let closed = async {
            match watched {
                Some(c) => c.closed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = sleep_until(wake_at) => {
                let now = Instant::now();
                session.handle_timeout(now);
                if app.next_wake().is_some_and(|t| t <= now) && app.wake(now, session).is_break() {
                    break;
                }
            }
            r = control => {
                let now = Instant::now();
                match r {
                    Ok(Some(n)) => session.handle_control(now, &buf[..n]),
                    Ok(None) => {
                        conn = None;
                        session.handle_closed(now, Failure::Closed("edge closed the control stream".into()));
                    }
                    Err(quinn::ReadError::ConnectionLost(e)) => {
                        conn = None;
                        session.handle_closed(now, connection_failure(&e));
                    }
                    Err(e) => {
                        conn = None;
                        session.handle_closed(now, Failure::Network(format!("control stream: {e}")));
                    }
                }
            }
            e = closed => {
                conn = None;
                session.handle_closed(Instant::now(), connection_failure(&e));
            }
        }
    }
    if let Some(c) = conn {
        c.conn
            .close(quinn::VarInt::from_u32(CloseCode::Normal as u32), b"done");
    }
    flush_events(session, app);
}

async fn upload(
    client: &reqwest::Client,
    token: &str,
    edge: &str,
    fixes: &[protocol::api::JsonFix],
    deliveries: &[protocol::DeliveryId],
    timeout: Duration,
) -> Result<(), Failure> {
    let ids: Vec<String> = deliveries.iter().map(|d| d.to_string()).collect();
    let mut req = client
        .post(format!("https://{edge}/api/v1/tracking/locations"))
        .bearer_auth(token)
        .timeout(timeout)
        .json(fixes);
    if !ids.is_empty() {
        req = req.header(protocol::api::DELIVERIES_HEADER, ids.join(","));
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            Failure::Timeout("location upload")
        } else {
            Failure::Network(format!("{e}"))
        }
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let message = format!("{status} {}", resp.text().await.unwrap_or_default());
    Err(classify_http(status.as_u16(), retry_after, message))
}

/// Classifies an HTTP refusal (uploads and WebSocket upgrades alike).
pub fn classify_http(status: u16, retry_after: Option<Duration>, message: String) -> Failure {
    match status {
        401 | 403 | 404 => Failure::Refused {
            code: u64::from(status),
            message,
        },
        429 | 503 => Failure::RetryLater {
            retry_after,
            message,
        },
        400..=499 => Failure::Protocol(message),
        _ => Failure::Closed(message),
    }
}

async fn run_https<A: DriverApp>(
    session: &mut DriverSession,
    client: &reqwest::Client,
    app: &mut A,
    stop: &CancellationToken,
) {
    let token = session.config().token.clone();
    let timeout = session.config().handshake_timeout;
    loop {
        while let Some(action) = session.poll_action(Instant::now()) {
            if let DriverAction::Upload {
                edge,
                fixes,
                deliveries,
            } = action
            {
                let r = tokio::select! {
                    r = upload(client, &token, &edge, &fixes, &deliveries, timeout) => r,
                    _ = stop.cancelled() => return,
                };
                session.handle_upload(Instant::now(), r);
            }
        }
        flush_events(session, app);
        if session.is_stopped() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sleep_until(deadline(session, app)) => {
                let now = Instant::now();
                session.handle_timeout(now);
                if app.next_wake().is_some_and(|t| t <= now) && app.wake(now, session).is_break() {
                    return;
                }
            }
        }
    }
}
