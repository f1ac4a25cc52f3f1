//! The driver session as a sans-IO core: what a driver app does to keep its fixes flowing to
//! an edge, over QUIC datagrams or the HTTPS fallback, through failures, drains and redirects.
//!
//! Feed it events (`handle_*`, `send_fix`, `set_on_duty`) with `now`; take what it wants done
//! from [`DriverSession::poll_action`] (connect, write on the control stream, send a datagram,
//! upload a batch, close) and what happened from [`DriverSession::poll_event`]; wake it at
//! [`DriverSession::poll_timeout`]. No sockets, no clock: `crate::io` drives it over tokio.

use crate::backoff::{Backoff, BackoffConfig};
use crate::failure::Failure;
use protocol::api::JsonFix;
use protocol::framing::{frame_bytes, FrameDecoder, MAX_DRIVER_FRAME};
use protocol::wire::{
    encode_fix_datagram, encode_fixes_datagram, CloseCode, DriverToEdge, EdgeToDriver, Fix,
    MAX_ON_DUTY_DELIVERIES,
};
use protocol::DeliveryId;
use rand::SeedableRng;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Fixes per datagram when a backlog is flushed after a reconnect: 40 x ~26 bytes stays under
/// QUIC's initial 1200-byte datagram limit.
const BACKLOG_FIXES_PER_DATAGRAM: usize = 40;
/// Fixes per HTTPS upload (the edge's limit per request is 48).
const FIXES_PER_UPLOAD: usize = protocol::wire::MAX_FIXES_PER_DATAGRAM;

/// How the driver reaches the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DriverTransport {
    /// A QUIC session (ALPN `trackline-driver/1`): control on a stream, fixes as datagrams.
    Quic,
    /// `POST /api/v1/tracking/locations` over HTTPS (networks that block UDP).
    Https,
}

impl DriverTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverTransport::Quic => "quic",
            DriverTransport::Https => "https",
        }
    }
}

/// What a driver session needs to know.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The driver's signed token.
    pub token: String,
    /// Sent in `Hello`.
    pub app_version: String,
    /// Edges as `host:port` (QUIC addresses, or HTTPS addresses for [`DriverTransport::Https`]),
    /// tried in turn: after a failure the session moves to the next one.
    pub edges: Vec<String>,
    pub transport: DriverTransport,
    pub backoff: BackoffConfig,
    /// Longest wait for the edge's `Welcome` (QUIC) or an upload's answer (HTTPS).
    pub handshake_timeout: Duration,
    /// Most fixes kept while disconnected (the oldest are dropped first); they are sent as
    /// one batch when the session is back, as a phone does after a tunnel.
    pub backlog: usize,
    /// Seeds the jitter (give each driver its own).
    pub seed: u64,
}

impl DriverConfig {
    pub fn new(token: String, edges: Vec<String>, transport: DriverTransport) -> Self {
        Self {
            token,
            app_version: concat!("trackline-client/", env!("CARGO_PKG_VERSION")).into(),
            edges,
            transport,
            backoff: BackoffConfig::default(),
            handshake_timeout: Duration::from_secs(5),
            backlog: 16,
            seed: 0,
        }
    }
}

/// What the core wants the IO layer to do.
#[derive(Clone, Debug, PartialEq)]
pub enum DriverAction {
    /// Open a QUIC connection to `edge` and a bidirectional stream on it, then call
    /// [`DriverSession::handle_connected`].
    Connect { edge: String },
    /// Write these bytes on the control stream.
    SendControl(Vec<u8>),
    /// Send this QUIC datagram.
    SendDatagram(Vec<u8>),
    /// `POST /api/v1/tracking/locations` at `edge` with these fixes (and the deliveries
    /// header); answer with [`DriverSession::handle_upload`].
    Upload {
        edge: String,
        fixes: Vec<JsonFix>,
        deliveries: Vec<DeliveryId>,
    },
    /// Close the current connection (redirect, timeout, protocol error).
    Close {
        code: CloseCode,
        reason: &'static str,
    },
}

/// What happened, for the app and its counters.
#[derive(Clone, Debug, PartialEq)]
pub enum DriverEvent {
    /// The edge welcomed the driver (QUIC), or the first upload after a failure went through
    /// (HTTPS). `handshake` runs from the start of the attempt.
    Connected {
        edge: String,
        handshake: Duration,
        reconnect: bool,
    },
    /// The edge drains and named another one; the session moves there at once.
    Redirected { to: String },
    /// An attempt failed or the connection ended; the next attempt is in `retry_in`.
    Failed {
        failure: Failure,
        retry_in: Duration,
        was_connected: bool,
    },
    /// Refused for good (bad or expired token): the session stopped.
    Stopped { failure: Failure },
    /// Fixes handed to the transport (datagrams queued, or an upload accepted).
    FixesSent { count: usize },
    /// Fixes dropped from a full backlog while disconnected.
    FixesDropped { count: usize },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Waiting to (re)connect until then.
    Waiting { until: Instant },
    /// An attempt is under way (QUIC: handshake and hello; HTTPS: first upload after a wait).
    Connecting { since: Instant, deadline: Instant },
    /// Welcomed (QUIC) or uploading fine (HTTPS).
    Active,
    /// Refused for good.
    Stopped,
}

/// One driver's session with the edges (sans-IO).
#[derive(Debug)]
pub struct DriverSession {
    config: DriverConfig,
    state: State,
    backoff: Backoff,
    rng: rand::rngs::SmallRng,
    edge_ix: usize,
    /// Where a `Redirect` sent us (used for the next attempt only).
    redirect: Option<String>,
    current_edge: String,
    decoder: Option<FrameDecoder>,
    on_duty: Vec<DeliveryId>,
    seq: u32,
    backlog: VecDeque<Fix>,
    /// HTTPS: fixes at the front of `backlog` in the upload under way, and its deadline.
    uploading: Option<(usize, Instant)>,
    ever_connected: bool,
    actions: VecDeque<DriverAction>,
    events: VecDeque<DriverEvent>,
}

impl DriverSession {
    /// A session that will connect at the first [`poll_action`](Self::poll_action).
    pub fn new(config: DriverConfig, now: Instant) -> Self {
        let rng = rand::rngs::SmallRng::seed_from_u64(config.seed);
        Self {
            backoff: Backoff::new(config.backoff.clone()),
            edge_ix: (config.seed as usize) % config.edges.len().max(1),
            config,
            state: State::Waiting { until: now },
            rng,
            redirect: None,
            current_edge: String::new(),
            decoder: None,
            on_duty: Vec::new(),
            seq: 0,
            backlog: VecDeque::new(),
            uploading: None,
            ever_connected: false,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    /// True while welcomed by an edge (QUIC) or uploading fine (HTTPS).
    pub fn is_connected(&self) -> bool {
        self.state == State::Active
    }

    /// True once refused for good.
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// True while a connection attempt is under way (not yet connected).
    pub fn is_connecting(&self) -> bool {
        matches!(self.state, State::Connecting { .. })
    }

    /// Whether the session was ever connected (a later connect is a reconnect).
    pub fn ever_connected(&self) -> bool {
        self.ever_connected
    }

    /// The edge of the current or last attempt.
    pub fn edge(&self) -> &str {
        &self.current_edge
    }

    /// The deliveries the driver is on duty for.
    pub fn on_duty(&self) -> &[DeliveryId] {
        &self.on_duty
    }

    /// The next thing to do, if any; starts an attempt when its wait is over.
    pub fn poll_action(&mut self, now: Instant) -> Option<DriverAction> {
        if let State::Waiting { until } = self.state {
            if now >= until {
                self.start_attempt(now);
            }
        }
        self.actions.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<DriverEvent> {
        self.events.pop_front()
    }

    /// When the core next needs [`handle_timeout`](Self::handle_timeout) (or a
    /// [`poll_action`](Self::poll_action) that starts an attempt).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { until } => Some(until),
            State::Connecting { deadline, .. } => match self.config.transport {
                DriverTransport::Quic => Some(deadline),
                DriverTransport::Https => self.uploading.map(|(_, d)| d),
            },
            State::Active => self.uploading.map(|(_, d)| d),
            State::Stopped => None,
        }
    }

    /// Time passed: gives up on an attempt or an upload that took too long.
    pub fn handle_timeout(&mut self, now: Instant) {
        let upload_late = self.uploading.is_some_and(|(_, d)| now >= d);
        match self.state {
            State::Connecting { deadline, .. }
                if upload_late
                    || (self.config.transport == DriverTransport::Quic && now >= deadline) =>
            {
                if self.config.transport == DriverTransport::Quic {
                    self.actions.push_back(DriverAction::Close {
                        code: CloseCode::Normal,
                        reason: "no welcome in time",
                    });
                }
                self.uploading = None;
                self.fail(now, Failure::Timeout("edge handshake"));
            }
            State::Active if upload_late => {
                self.uploading = None;
                self.fail(now, Failure::Timeout("location upload"));
            }
            _ => {}
        }
    }

    /// QUIC: the connection and its control stream are open: say hello and what we are on
    /// duty for.
    pub fn handle_connected(&mut self, _now: Instant) {
        let mut bytes = frame_bytes(&DriverToEdge::Hello {
            token: self.config.token.clone(),
            app_version: self.config.app_version.clone(),
        });
        protocol::framing::encode_frame(
            &DriverToEdge::OnDuty {
                deliveries: self.on_duty.clone(),
            },
            &mut bytes,
        );
        self.decoder = Some(FrameDecoder::new(MAX_DRIVER_FRAME));
        self.actions.push_back(DriverAction::SendControl(bytes));
    }

    /// QUIC: bytes arrived on the control stream.
    pub fn handle_control(&mut self, now: Instant, bytes: &[u8]) {
        let Some(decoder) = self.decoder.as_mut() else {
            return;
        };
        decoder.push(bytes);
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return;
            };
            match decoder.next_frame::<EdgeToDriver>() {
                Ok(None) => return,
                Ok(Some(EdgeToDriver::Welcome { .. })) => self.on_welcome(now),
                Ok(Some(EdgeToDriver::Redirect { addr, .. })) => {
                    self.follow_redirect(now, addr);
                    return;
                }
                Err(e) => {
                    self.actions.push_back(DriverAction::Close {
                        code: CloseCode::ProtocolViolation,
                        reason: "undecodable control frame",
                    });
                    self.fail(now, Failure::Protocol(format!("control stream: {e}")));
                    return;
                }
            }
        }
    }

    /// The connection attempt failed or the connection ended.
    pub fn handle_closed(&mut self, now: Instant, failure: Failure) {
        if matches!(self.state, State::Waiting { .. } | State::Stopped) {
            return; // already accounted for (e.g. we closed it after a redirect)
        }
        self.fail(now, failure);
    }

    /// HTTPS: the answer to the last [`DriverAction::Upload`].
    pub fn handle_upload(&mut self, now: Instant, result: Result<(), Failure>) {
        let Some((n, deadline)) = self.uploading.take() else {
            return;
        };
        match result {
            Ok(()) => {
                let n = n.min(self.backlog.len());
                self.backlog.drain(..n);
                self.events.push_back(DriverEvent::FixesSent { count: n });
                if let State::Connecting { .. } = self.state {
                    // The handshake of the fallback is the first upload that goes through.
                    self.connected(now, deadline - self.config.handshake_timeout);
                }
                self.maybe_upload(now);
            }
            Err(failure) => self.fail(now, failure),
        }
    }

    /// The deliveries the driver is on duty for changed (at most
    /// [`MAX_ON_DUTY_DELIVERIES`]; the rest are ignored). Sent at once when connected, and
    /// with every hello.
    pub fn set_on_duty(&mut self, deliveries: Vec<DeliveryId>) {
        let mut d = deliveries;
        d.truncate(MAX_ON_DUTY_DELIVERIES);
        if d == self.on_duty {
            return;
        }
        self.on_duty = d;
        if self.config.transport == DriverTransport::Quic && self.state == State::Active {
            self.actions
                .push_back(DriverAction::SendControl(frame_bytes(
                    &DriverToEdge::OnDuty {
                        deliveries: self.on_duty.clone(),
                    },
                )));
        }
    }

    /// A new fix from the phone's GPS; its `seq` is set here (counting from 1 for the life of
    /// the session object). Sent at once when connected, kept in the backlog otherwise.
    pub fn send_fix(&mut self, now: Instant, mut fix: Fix) {
        self.seq = self.seq.wrapping_add(1).max(1);
        fix.seq = self.seq;
        match self.config.transport {
            DriverTransport::Quic if self.state == State::Active => {
                self.actions
                    .push_back(DriverAction::SendDatagram(encode_fix_datagram(&fix)));
                self.events.push_back(DriverEvent::FixesSent { count: 1 });
            }
            _ => {
                self.backlog.push_back(fix);
                let over = self
                    .backlog
                    .len()
                    .saturating_sub(self.config.backlog.max(1));
                if over > 0 {
                    self.backlog.drain(..over);
                    if let Some((n, d)) = self.uploading {
                        self.uploading = Some((n.saturating_sub(over), d));
                    }
                    self.events
                        .push_back(DriverEvent::FixesDropped { count: over });
                }
                if self.config.transport == DriverTransport::Https {
                    self.maybe_upload(now);
                }
            }
        }
    }

    fn start_attempt(&mut self, now: Instant) {
        let edge = match self.redirect.take() {
            Some(r) => r,
            None => self
                .config
                .edges
                .get(self.edge_ix % self.config.edges.len().max(1))
                .cloned()
                .unwrap_or_default(),
        };
        self.current_edge = edge.clone();
        self.state = State::Connecting {
            since: now,
            deadline: now + self.config.handshake_timeout,
        };
        match self.config.transport {
            DriverTransport::Quic => {
                self.decoder = None;
                self.actions.push_back(DriverAction::Connect { edge });
            }
            DriverTransport::Https => self.maybe_upload(now),
        }
    }

    fn maybe_upload(&mut self, now: Instant) {
        if self.uploading.is_some()
            || self.backlog.is_empty()
            || matches!(self.state, State::Waiting { .. } | State::Stopped)
        {
            return;
        }
        let n = self.backlog.len().min(FIXES_PER_UPLOAD);
        let fixes = self.backlog.iter().take(n).map(JsonFix::from_fix).collect();
        self.uploading = Some((n, now + self.config.handshake_timeout));
        self.actions.push_back(DriverAction::Upload {
            edge: self.current_edge.clone(),
            fixes,
            deliveries: self.on_duty.clone(),
        });
    }

    fn on_welcome(&mut self, now: Instant) {
        let State::Connecting { since, .. } = self.state else {
            return;
        };
        self.connected(now, since);
        // The fixes measured while away, oldest first, a few per datagram.
        let backlog: Vec<Fix> = self.backlog.drain(..).collect();
        for chunk in backlog.chunks(BACKLOG_FIXES_PER_DATAGRAM) {
            self.actions
                .push_back(DriverAction::SendDatagram(encode_fixes_datagram(chunk)));
            self.events
                .push_back(DriverEvent::FixesSent { count: chunk.len() });
        }
    }

    fn connected(&mut self, now: Instant, since: Instant) {
        self.state = State::Active;
        self.backoff.on_connected(now);
        self.events.push_back(DriverEvent::Connected {
            edge: self.current_edge.clone(),
            handshake: now.saturating_duration_since(since),
            reconnect: self.ever_connected,
        });
        self.ever_connected = true;
    }

    fn follow_redirect(&mut self, now: Instant, addr: String) {
        self.actions.push_back(DriverAction::Close {
            code: CloseCode::Normal,
            reason: "redirected",
        });
        self.events
            .push_back(DriverEvent::Redirected { to: addr.clone() });
        // Not a failure: go at once (the backlog keeps what is measured meanwhile).
        self.backoff.on_connected(now);
        self.backoff.reset();
        self.redirect = Some(addr);
        self.decoder = None;
        self.state = State::Waiting { until: now };
    }

    fn fail(&mut self, now: Instant, failure: Failure) {
        let was_connected = self.state == State::Active;
        self.decoder = None;
        self.uploading = None;
        if failure.is_fatal() {
            self.state = State::Stopped;
            self.events.push_back(DriverEvent::Stopped { failure });
            return;
        }
        // The next attempt goes to the next edge (a redirect target is used once).
        self.redirect = None;
        self.edge_ix = self.edge_ix.wrapping_add(1);
        let retry_after = match &failure {
            Failure::RetryLater { retry_after, .. } => *retry_after,
            _ => None,
        };
        let retry_in = self.backoff.on_failure(now, retry_after, &mut self.rng);
        self.state = State::Waiting {
            until: now + retry_in,
        };
        self.events.push_back(DriverEvent::Failed {
            failure,
            retry_in,
            was_connected,
        });
    }
}

/// Classifies the application close code of a QUIC connection the edge closed.
pub fn classify_close(code: u64, reason: &[u8]) -> Failure {
    let message = String::from_utf8_lossy(reason).into_owned();
    match CloseCode::from_u64(code) {
        Some(CloseCode::BadToken | CloseCode::TokenExpired | CloseCode::WrongTokenKind) => {
            Failure::Refused { code, message }
        }
        Some(CloseCode::Draining | CloseCode::ShuttingDown) => Failure::RetryLater {
            retry_after: None,
            message,
        },
        _ => Failure::Closed(format!("code 0x{code:x}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::wire::decode_driver_datagram;
    use protocol::DriverId;

    fn cfg(transport: DriverTransport) -> DriverConfig {
        let mut c = DriverConfig::new(
            "tl1.token".into(),
            vec!["edge-a:4433".into(), "edge-b:4433".into()],
            transport,
        );
        c.seed = 0;
        c
    }

    fn fix() -> Fix {
        Fix::from_units(0, 1_700_000_000_000, 60.17, 24.94, 90.0, 8.0, 5.0)
    }

    fn welcome() -> Vec<u8> {
        frame_bytes(&EdgeToDriver::Welcome {
            driver_id: DriverId(7),
            session_id: 1,
            server_time_ms: 0,
            max_datagram: 1200,
        })
    }

    fn drain(s: &mut DriverSession, now: Instant) -> Vec<DriverAction> {
        std::iter::from_fn(|| s.poll_action(now)).collect()
    }

    fn events(s: &mut DriverSession) -> Vec<DriverEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    #[test]
    fn connects_says_hello_and_on_duty_then_sends_fixes_as_datagrams() {
        let t = Instant::now();
        let mut s = DriverSession::new(cfg(DriverTransport::Quic), t);
        s.set_on_duty(vec![DeliveryId(12)]);
        assert_eq!(
            drain(&mut s, t),
            vec![DriverAction::Connect {
                edge: "edge-a:4433".into()
            }]
        );
        s.handle_connected(t);
        let DriverAction::SendControl(bytes) = &drain(&mut s, t)[0] else {
            panic!("hello expected");
        };
        let mut dec = FrameDecoder::new(MAX_DRIVER_FRAME);
        dec.push(bytes);
        assert!(matches!(
            dec.next_frame::<DriverToEdge>(),
            Ok(Some(DriverToEdge::Hello { .. }))
        ));
        assert_eq!(
            dec.next_frame::<DriverToEdge>(),
            Ok(Some(DriverToEdge::OnDuty {
                deliveries: vec![DeliveryId(12)]
            }))
        );
        // A fix before the welcome waits in the backlog and leaves right after it.
        s.send_fix(t, fix());
        assert!(drain(&mut s, t).is_empty());
        s.handle_control(t + Duration::from_millis(30), &welcome());
        let ev = events(&mut s);
        assert!(ev.contains(&DriverEvent::Connected {
            edge: "edge-a:4433".into(),
            handshake: Duration::from_millis(30),
            reconnect: false
        }));
        let sent = drain(&mut s, t);
        let [DriverAction::SendDatagram(d)] = &sent[..] else {
            panic!("{sent:?}");
        };
        assert_eq!(decode_driver_datagram(d).expect("decodes")[0].seq, 1);
        s.send_fix(t, fix());
        let [DriverAction::SendDatagram(d)] = &drain(&mut s, t)[..] else {
            panic!("datagram expected");
        };
        assert_eq!(decode_driver_datagram(d).expect("decodes")[0].seq, 2);
        // A new assignment goes out on the control stream at once.
        s.set_on_duty(vec![DeliveryId(13)]);
        assert!(matches!(
            drain(&mut s, t)[..],
            [DriverAction::SendControl(_)]
        ));
    }

    #[test]
    fn a_lost_connection_backs_off_moves_to_the_next_edge_and_counts_a_reconnect() {
        let t = Instant::now();
        let mut s = DriverSession::new(cfg(DriverTransport::Quic), t);
        drain(&mut s, t);
        s.handle_connected(t);
        s.handle_control(t, &welcome());
        drain(&mut s, t);
        events(&mut s);
        let t1 = t + Duration::from_secs(60);
        s.handle_closed(t1, Failure::Network("reset".into()));
        let ev = events(&mut s);
        let Some(DriverEvent::Failed {
            retry_in,
            was_connected: true,
            ..
        }) = ev.first()
        else {
            panic!("{ev:?}");
        };
        assert!(*retry_in >= Duration::from_millis(250) && *retry_in <= Duration::from_millis(500));
        // Nothing before the backoff is over; fixes meanwhile are kept.
        s.send_fix(t1, fix());
        assert!(drain(&mut s, t1).is_empty());
        assert_eq!(s.poll_timeout(), Some(t1 + *retry_in));
        let t2 = t1 + *retry_in;
        assert_eq!(
            drain(&mut s, t2),
            vec![DriverAction::Connect {
                edge: "edge-b:4433".into()
            }]
        );
        s.handle_connected(t2);
        s.handle_control(t2, &welcome());
        assert!(events(&mut s).iter().any(|e| matches!(
            e,
            DriverEvent::Connected {
                reconnect: true,
                ..
            }
        )));
    }

    #[test]
    fn a_redirect_closes_and_goes_to_the_named_edge_at_once() {
        let t = Instant::now();
        let mut s = DriverSession::new(cfg(DriverTransport::Quic), t);
        drain(&mut s, t);
        s.handle_connected(t);
        let mut bytes = welcome();
        bytes.extend(frame_bytes(&EdgeToDriver::Redirect {
            addr: "edge-c:4433".into(),
            reason: "draining".into(),
        }));
        s.handle_control(t, &bytes);
        // The old connection's end, reported before its close is done, is not a failure.
        s.handle_closed(t, Failure::Closed("redirected".into()));
        assert!(!events(&mut s)
            .iter()
            .any(|e| matches!(e, DriverEvent::Failed { .. })));
        let acts = drain(&mut s, t);
        assert!(acts.contains(&DriverAction::Close {
            code: CloseCode::Normal,
            reason: "redirected"
        }));
        assert_eq!(
            acts.last(),
            Some(&DriverAction::Connect {
                edge: "edge-c:4433".into()
            })
        );
    }

    #[test]
    fn no_welcome_in_time_is_a_timeout_and_a_bad_token_stops_the_session() {
        let t = Instant::now();
        let mut s = DriverSession::new(cfg(DriverTransport::Quic), t);
        drain(&mut s, t);
        s.handle_connected(t);
        drain(&mut s, t);
        let deadline = s.poll_timeout().expect("deadline");
        assert_eq!(deadline, t + Duration::from_secs(5));
        s.handle_timeout(deadline);
        assert!(events(&mut s).iter().any(|e| matches!(
            e,
            DriverEvent::Failed {
                failure: Failure::Timeout(_),
                ..
            }
        )));
        let t2 = s.poll_timeout().expect("retry");
        drain(&mut s, t2);
        s.handle_closed(t2, classify_close(0x11, b"token expired"));
        assert!(s.is_stopped());
        assert_eq!(s.poll_timeout(), None);
        assert!(drain(&mut s, t2 + Duration::from_secs(100)).is_empty());
    }

    #[test]
    fn the_backlog_keeps_the_newest_fixes_and_leaves_in_few_datagrams() {
        let t = Instant::now();
        let mut c = cfg(DriverTransport::Quic);
        c.backlog = 100;
        let mut s = DriverSession::new(c, t);
        drain(&mut s, t);
        for _ in 0..130 {
            s.send_fix(t, fix());
        }
        assert!(events(&mut s)
            .iter()
            .any(|e| matches!(e, DriverEvent::FixesDropped { .. })));
        s.handle_connected(t);
        drain(&mut s, t);
        s.handle_control(t, &welcome());
        let grams: Vec<Vec<Fix>> = drain(&mut s, t)
            .into_iter()
            .filter_map(|a| match a {
                DriverAction::SendDatagram(d) => decode_driver_datagram(&d).ok(),
                _ => None,
            })
            .collect();
        assert_eq!(grams.len(), 3);
        let seqs: Vec<u32> = grams.iter().flatten().map(|f| f.seq).collect();
        assert_eq!(seqs, (31..=130).collect::<Vec<_>>());
        assert!(grams.iter().all(|g| encode_fixes_datagram(g).len() <= 1200));
    }

    #[test]
    fn https_uploads_one_batch_at_a_time_and_retries_after_retry_after() {
        let t = Instant::now();
        let mut s = DriverSession::new(cfg(DriverTransport::Https), t);
        s.set_on_duty(vec![DeliveryId(5)]);
        assert!(drain(&mut s, t).is_empty()); // nothing to upload yet
        s.send_fix(t, fix());
        s.send_fix(t, fix()); // queued behind the upload under way
        let acts = drain(&mut s, t);
        let [DriverAction::Upload {
            fixes, deliveries, ..
        }] = &acts[..]
        else {
            panic!("{acts:?}");
        };
        assert_eq!((fixes.len(), deliveries.clone()), (1, vec![DeliveryId(5)]));
        s.handle_upload(t + Duration::from_millis(20), Ok(()));
        assert!(s.is_connected());
        let acts = drain(&mut s, t);
        let [DriverAction::Upload { fixes, .. }] = &acts[..] else {
            panic!("{acts:?}");
        };
        assert_eq!(fixes[0].seq, 2);
        s.handle_upload(
            t,
            Err(Failure::RetryLater {
                retry_after: Some(Duration::from_secs(2)),
                message: "draining".into(),
            }),
        );
        let ev = events(&mut s);
        let retry = ev
            .iter()
            .find_map(|e| match e {
                DriverEvent::Failed { retry_in, .. } => Some(*retry_in),
                _ => None,
            })
            .expect("failed");
        assert!(retry >= Duration::from_secs(2));
        // The unsent fix is uploaded again after the wait, to the next edge.
        let acts = drain(&mut s, t + retry);
        let [DriverAction::Upload { edge, fixes, .. }] = &acts[..] else {
            panic!("{acts:?}");
        };
        assert_eq!((edge.as_str(), fixes[0].seq), ("edge-b:4433", 2));
    }
}
