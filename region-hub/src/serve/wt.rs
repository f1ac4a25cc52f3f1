//! WebTransport endpoint for consumers: `/api/v1/tracking/{id}/wt?token=..&last_event_seq=N`;
//! reliable frames as newline-delimited JSON on one uni stream, positions as datagrams.

use crate::hub::{consumer_redirect_url, ConsumerCursor, Hub, Route};
use crate::tracking::fanout::{DatagramOut, DatagramSent, FrameKind};
use nodekit::handshake::{Decision, HandshakePermit, ListenerGate, RefuseReason};
use protocol::DeliveryId;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};
use wtransport::endpoint::endpoint_side::Server;
use wtransport::endpoint::IncomingSession;
use wtransport::error::SendDatagramError;
use wtransport::{Endpoint, Identity, ServerConfig};

/// A WebTransport session as the publisher's direct path for positions.
#[derive(Debug)]
struct Datagrams(wtransport::Connection);

impl DatagramOut for Datagrams {
    fn send(&self, payload: &[u8]) -> DatagramSent {
        match self.0.send_datagram(payload) {
            Ok(()) => DatagramSent::Sent,
            Err(SendDatagramError::NotConnected) => DatagramSent::Closed,
            Err(SendDatagramError::TooLarge | SendDatagramError::UnsupportedByPeer) => {
                DatagramSent::Unfit
            }
        }
    }
}

/// Label used in metrics.
pub const TRANSPORT: &str = crate::tracking::fanout::WEBTRANSPORT;

/// How long a consumer session may be silent both ways before a keep-alive is sent. Positions
/// (every fix) and countdown ETAs (every 2 s while a driver is silent) keep a session busy, so
/// keep-alives are for idle ones only; the idle timeout is quinn's (30 s).
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// QUIC transport settings for consumer sessions, which carry a few hundred bytes every few
/// seconds: no path MTU probing (positions are ~150-byte datagrams, far under the 1,200-byte
/// minimum), small receive windows (consumers send nothing but control frames), and few
/// streams (the WebTransport session's request, control and QPACK streams, and ours).
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE))
        .mtu_discovery_config(None)
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(4))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(8))
        .stream_receive_window(quinn::VarInt::from_u32(64 * 1024))
        .receive_window(quinn::VarInt::from_u32(256 * 1024))
        .send_window(256 * 1024)
        .datagram_receive_buffer_size(Some(16 * 1024))
        .datagram_send_buffer_size(64 * 1024);
    t
}

/// Binds the WebTransport endpoint on a socket with `buffer_bytes` of kernel buffer each way
/// (see [`nodekit::bind_udp`]).
pub fn bind(
    addr: std::net::SocketAddr,
    identity: Identity,
    buffer_bytes: usize,
) -> std::io::Result<Endpoint<Server>> {
    let (socket, buffers) = nodekit::bind_udp(addr, buffer_bytes)?;
    nodekit::udp::log_buffers("webtransport", socket.local_addr()?, &buffers);
    let config = ServerConfig::builder()
        .with_bind_socket(socket)
        .with_custom_transport(identity, transport_config())
        .build();
    Endpoint::server(config)
}

/// Accepts consumer sessions until `shutdown`. Each incoming connection first passes `gate`
/// (before any crypto): admitted ones get a task whose permit is held until the WebTransport
/// session request arrived (QUIC and HTTP/3 handshakes done), the others a Retry or a refusal.
pub(crate) async fn run(
    endpoint: Endpoint<Server>,
    hub: Arc<Hub>,
    gate: Arc<ListenerGate>,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.cancelled() => break,
        };
        let permit = match gate.admit(incoming.remote_address_validated()) {
            Decision::Admit(permit) => permit,
            Decision::Retry if !incoming.remote_address_validated() => {
                debug!(remote = %incoming.remote_address(), "busy: address validation first");
                incoming.retry();
                continue;
            }
            Decision::Retry => {
                gate.count_refused(RefuseReason::InFlight);
                incoming.refuse();
                continue;
            }
            Decision::Refuse(reason) => {
                debug!(remote = %incoming.remote_address(), reason = reason.as_str(), "webtransport handshake refused");
                incoming.refuse();
                continue;
            }
        };
        let span = tracing::info_span!("wt_consumer", delivery_id = tracing::field::Empty);
        tokio::spawn(session(incoming, permit, hub.clone(), shutdown.clone()).instrument(span));
    }
    endpoint.close(wtransport::VarInt::from_u32(0), b"hub shutting down");
}

/// Parses `/api/v1/tracking/{id}/wt?...` into the id and the query pairs.
fn parse_path(path: &str) -> Option<(DeliveryId, Vec<(String, String)>)> {
    let (p, q) = path.split_once('?').unwrap_or((path, ""));
    let id = p
        .strip_prefix("/api/v1/tracking/")?
        .strip_suffix("/wt")?
        .parse()
        .ok()?;
    let pairs = q
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Some((id, pairs))
}

/// Minimal `application/x-www-form-urlencoded` value decoding (invalid escapes kept as is).
fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn session(
    incoming: IncomingSession,
    permit: HandshakePermit,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) {
    // The handshake's future is boxed by wtransport and dropped here, so the session's task
    // does not keep its state.
    let request = match incoming.await {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "webtransport handshake failed");
            return;
        }
    };
    drop(permit);
    let Some((id, query)) = parse_path(request.path()) else {
        hub.metrics().reject("not_found");
        request.not_found().await;
        return;
    };
    tracing::Span::current().record("delivery_id", id.0);
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let token = param("token").or_else(|| {
        request
            .headers()
            .get("authorization")
            .and_then(|h| h.strip_prefix("Bearer ").map(str::to_owned))
    });
    if let Err(refusal) = hub.check_tracking(token.as_deref(), id) {
        // wtransport can answer 403, 404 or 429 only: a missing token is a 403 here too.
        debug!(reason = refusal.reason(), "refusing webtransport consumer");
        hub.metrics().reject(refusal.reason());
        request.forbidden().await;
        return;
    }
    let last_event_seq = match param("last_event_seq").map(|s| s.parse::<u64>()) {
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            hub.metrics().reject("bad_request");
            request.not_found().await;
            return;
        }
        None => None,
    };
    match hub.route(id).await {
        Route::Redirect(owner) => {
            redirect(request, consumer_redirect_url(&owner, id, true)).await;
            return;
        }
        Route::Joining => {
            // Joining the cluster: not yet able to serve it from the newest copy; retry.
            hub.metrics().reject("joining");
            request.too_many_requests().await;
            return;
        }
        Route::Serve | Route::TakeOver => {}
    }
    if hub.snapshot(id).is_none() {
        debug!("no such delivery");
        request.not_found().await;
        return;
    }
    let conn = match request.accept().await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "accepting webtransport session failed");
            return;
        }
    };
    let mut stream = match conn.open_uni().await {
        Ok(opening) => match opening.await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "opening uni stream failed");
                return;
            }
        },
        Err(e) => {
            debug!(error = %e, "opening uni stream failed");
            return;
        }
    };
    // Positions go out as datagrams straight from the publisher: this session sends only the
    // reliable frames (and positions too large for a datagram).
    let datagrams = Arc::new(Datagrams(conn.clone()));
    let start = match hub.open_consumer(id, last_event_seq, TRANSPORT, Some(datagrams)) {
        Ok(s) => s,
        Err(e) => {
            // Gone since the check above (expired or moved away): the client retries.
            debug!(error = %e, "no such delivery");
            conn.close(wtransport::VarInt::from_u32(4), b"delivery not found");
            return;
        }
    };
    let mut cursor = ConsumerCursor::new(&start);
    for frame in ConsumerCursor::opening_frames(&start) {
        if stream.write_all(frame.line()).await.is_err() {
            return;
        }
    }
    let crate::hub::ConsumerStart {
        subscription: mut sub,
        guard: _guard,
        ..
    } = start;
    debug!("webtransport consumer connected");
    let mut frames = Vec::new();
    'session: loop {
        let open = tokio::select! {
            open = cursor.next_batch(&mut sub, &mut frames) => open,
            _ = conn.closed() => break,
            _ = shutdown.cancelled() => break,
        };
        let mut positions = 0;
        for frame in frames.drain(..) {
            match frame.kind {
                FrameKind::Position { .. } => {
                    // A datagram where it fits; the stream otherwise (never dropped for size).
                    let json = frame.json();
                    let fits = conn.max_datagram_size().is_some_and(|m| json.len() <= m);
                    let sent = fits
                        && match conn.send_datagram(&json) {
                            Ok(()) => true,
                            Err(
                                SendDatagramError::TooLarge | SendDatagramError::UnsupportedByPeer,
                            ) => false,
                            Err(SendDatagramError::NotConnected) => break 'session,
                        };
                    if !sent && stream.write_all(frame.line()).await.is_err() {
                        break 'session;
                    }
                    positions += 1;
                }
                kind => {
                    if stream.write_all(frame.line()).await.is_err() {
                        break 'session;
                    }
                    // The delivery moved to another hub: the consumer reconnects there.
                    if kind == FrameKind::Redirect {
                        hub.metrics().add_pushed(TRANSPORT, positions);
                        break 'session;
                    }
                }
            }
        }
        hub.metrics().add_pushed(TRANSPORT, positions);
        if !open {
            debug!("consumer cut off by the hub");
            conn.close(
                wtransport::VarInt::from_u32(1),
                b"cut off: resume with last_event_seq",
            );
            break;
        }
    }
    let _ = stream.finish().await;
}

/// Accepts the session only to send one `redirect` frame (the delivery's owner), then closes.
async fn redirect(request: wtransport::endpoint::SessionRequest, url: String) {
    let Ok(conn) = request.accept().await else {
        return;
    };
    if let Ok(opening) = conn.open_uni().await {
        if let Ok(mut stream) = opening.await {
            let line = format!(
                "{}\n",
                protocol::consumer::ConsumerFrame::Redirect { url }.to_json()
            );
            let _ = stream.write_all(line.as_bytes()).await;
            let _ = stream.finish().await;
        }
    }
    // Leave the client time to read the stream before the session goes.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_session_path_and_query() {
        let (id, q) = parse_path("/api/v1/tracking/42/wt?token=tl1.a_b.c%2Dd&last_event_seq=3")
            .expect("parse");
        assert_eq!(id, DeliveryId(42));
        assert_eq!(
            q,
            vec![
                ("token".into(), "tl1.a_b.c-d".into()),
                ("last_event_seq".into(), "3".into())
            ]
        );
        assert!(parse_path("/api/v1/tracking/x/wt").is_none());
        assert!(parse_path("/api/v1/tracking/1/connect").is_none());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
