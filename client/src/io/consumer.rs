//! Tokio transports of the consumer session: WebTransport (datagrams + a line stream) and
//! WebSocket over TLS. They move bytes and timers; every decision is the core's.

use crate::consumer::{split_url, ConsumerAction, ConsumerEvent, ConsumerSession};
use crate::failure::Failure;
use crate::io::driver::classify_http;
use futures::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The app side of a running consumer.
pub trait ConsumerApp {
    /// Every event of the session; `Break` ends it (the delivery is done for this app). The
    /// session is there to adjust (e.g. [`ConsumerSession::set_next_authority`]).
    fn on_event(
        &mut self,
        now: Instant,
        event: ConsumerEvent,
        session: &mut ConsumerSession,
    ) -> ControlFlow<()>;
}

/// How a consumer reaches the hubs.
#[derive(Clone)]
pub enum ConsumerIo {
    /// A WebTransport client endpoint (shared by many consumers).
    WebTransport(Arc<wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>>),
    /// WebSocket over TLS over TCP.
    WebSocket(WsConnector),
}

impl std::fmt::Debug for ConsumerIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsumerIo::WebTransport(_) => f.write_str("ConsumerIo::WebTransport"),
            ConsumerIo::WebSocket(c) => write!(f, "ConsumerIo::WebSocket({:?})", c.bind),
        }
    }
}

/// What a WebSocket connection is opened with.
#[derive(Clone)]
pub struct WsConnector {
    /// TLS trusting the hubs, ALPN `http/1.1`.
    pub tls: Arc<rustls::ClientConfig>,
    /// Source address to bind before connecting (spreads many connections over loopback
    /// addresses and their ephemeral ports); `None`: the system's choice.
    pub bind: Option<IpAddr>,
    /// Name checked in the hub's certificate (and sent as SNI); `None`: the authority's host.
    pub server_name: Option<String>,
    /// Buffers of the WebSocket layer (consumers receive small frames: small buffers).
    pub config: WebSocketConfig,
}

impl WsConnector {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            tls,
            bind: None,
            server_name: None,
            config: WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0)
                .max_message_size(Some(1 << 20))
                .max_frame_size(Some(1 << 20)),
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

enum Conn {
    Wt {
        conn: wtransport::Connection,
        lines: tokio::io::Lines<tokio::io::BufReader<wtransport::RecvStream>>,
    },
    Ws(Box<Ws>),
}

/// Drives `session` over `io` until the app or `stop` ends it or the hub refuses it.
pub async fn run_consumer<A: ConsumerApp>(
    session: &mut ConsumerSession,
    io: &ConsumerIo,
    app: &mut A,
    stop: &CancellationToken,
) {
    let mut conn: Option<Conn> = None;
    let timeout = session.config().handshake_timeout;
    'run: loop {
        while let Some(action) = session.poll_action(Instant::now()) {
            match action {
                ConsumerAction::Connect { authority, url } => {
                    let r = tokio::select! {
                        r = tokio::time::timeout(timeout, connect(io, &authority, &url)) => {
                            r.unwrap_or(Err(Failure::Timeout("hub handshake")))
                        }
                        _ = stop.cancelled() => break 'run,
                    };
                    match r {
                        Ok(c) => {
                            conn = Some(c);
                            session.handle_connected(Instant::now());
                        }
                        Err(f) => session.handle_closed(Instant::now(), f),
                    }
                }
                ConsumerAction::Close { .. } => close(conn.take()).await,
            }
        }
        let now = Instant::now();
        while let Some(e) = session.poll_event() {
            if app.on_event(now, e, session).is_break() {
                break 'run;
            }
        }
        if session.is_stopped() {
            break;
        }
        let wake_at = session.poll_timeout();
        let sleep = async {
            match wake_at {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = sleep => session.handle_timeout(Instant::now()),
            r = next_text(conn.as_mut()) => {
                let now = Instant::now();
                match r {
                    Ok(text) => session.handle_text(now, &text),
                    Err(f) => {
                        conn = None;
                        session.handle_closed(now, f);
                    }
                }
            }
        }
    }
    close(conn).await;
}

async fn close(conn: Option<Conn>) {
    match conn {
        Some(Conn::Wt { conn, .. }) => conn.close(wtransport::VarInt::from_u32(0), b"done"),
        Some(Conn::Ws(mut ws)) => {
            let _ = tokio::time::timeout(Duration::from_millis(200), ws.close()).await;
        }
        None => {}
    }
}

/// The next text frame of the connection (pending forever without one).
async fn next_text(conn: Option<&mut Conn>) -> Result<String, Failure> {
    match conn {
        None => std::future::pending().await,
        Some(Conn::Wt { conn, lines }) => tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) => Ok(l),
                Ok(None) => Err(Failure::Closed("hub closed the event stream".into())),
                Err(e) => Err(Failure::Network(format!("event stream: {e}"))),
            },
            dg = conn.receive_datagram() => match dg {
                Ok(d) => Ok(String::from_utf8_lossy(&d.payload()).into_owned()),
                Err(e) => Err(wt_failure(&e)),
            },
        },
        Some(Conn::Ws(ws)) => loop {
            match ws.next().await {
                None => return Err(Failure::Closed("hub closed the WebSocket".into())),
                Some(Err(e)) => return Err(Failure::Network(format!("WebSocket: {e}"))),
                Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                Some(Ok(Message::Close(c))) => {
                    return Err(Failure::Closed(match c {
                        Some(f) => format!("WebSocket close {}: {}", u16::from(f.code), f.reason),
                        None => "WebSocket close".into(),
                    }))
                }
                Some(Ok(_)) => continue,
            }
        },
    }
}

fn wt_failure(e: &wtransport::error::ConnectionError) -> Failure {
    use wtransport::error::ConnectionError as E;
    match e {
        E::TimedOut => Failure::Timeout("WebTransport idle timeout"),
        E::ApplicationClosed(c) => Failure::Closed(format!("WebTransport closed: {c}")),
        other => Failure::Network(other.to_string()),
    }
}

async fn connect(io: &ConsumerIo, authority: &str, url: &str) -> Result<Conn, Failure> {
    match io {
        ConsumerIo::WebTransport(endpoint) => {
            use wtransport::error::ConnectingError as E;
            let conn = endpoint.connect(url).await.map_err(|e| match e {
                // wtransport does not say which status the hub answered (403, 404, 429):
                // retry with backoff, as for a hub that is joining.
                E::SessionRejected => Failure::RetryLater {
                    retry_after: None,
                    message: "WebTransport session rejected".into(),
                },
                E::ConnectionError(c) => wt_failure(&c),
                other => Failure::Network(other.to_string()),
            })?;
            let stream = conn.accept_uni().await.map_err(|e| wt_failure(&e))?;
            Ok(Conn::Wt {
                conn,
                lines: tokio::io::BufReader::with_capacity(2048, stream).lines(),
            })
        }
        ConsumerIo::WebSocket(c) => {
            let addr = resolve(authority).await?;
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(|e| Failure::Network(format!("socket: {e}")))?;
            if let Some(ip) = c.bind {
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .map_err(|e| Failure::Network(format!("binding {ip}: {e}")))?;
            }
            let tcp = socket
                .connect(addr)
                .await
                .map_err(|e| Failure::Network(format!("connecting to {authority}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let host = match &c.server_name {
                Some(n) => n.as_str(),
                None => authority
                    .rsplit_once(':')
                    .map_or(authority, |(h, _)| h)
                    .trim_matches(['[', ']']),
            };
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| Failure::Network(format!("server name {host}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(c.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| Failure::Network(format!("TLS: {e}")))?;
            let (ws, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(c.config))
                .await
                .map_err(ws_failure)?;
            Ok(Conn::Ws(Box::new(ws)))
        }
    }
}

fn ws_failure(e: tokio_tungstenite::tungstenite::Error) -> Failure {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(resp) => {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            classify_http(
                resp.status().as_u16(),
                retry_after,
                format!("{} {body}", resp.status()),
            )
        }
        other => Failure::Network(format!("WebSocket handshake: {other}")),
    }
}

async fn resolve(authority: &str) -> Result<SocketAddr, Failure> {
    if let Ok(a) = authority.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host(authority)
        .await
        .map_err(|e| Failure::Network(format!("resolving {authority}: {e}")))?
        .next()
        .ok_or_else(|| Failure::Network(format!("{authority} resolves to nothing")))
}

/// `host:port` of a redirect URL (for apps mapping a redirect to their own address book).
pub fn redirect_authority(url: &str) -> &str {
    split_url(url).1
}
