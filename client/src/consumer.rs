//! The consumer session as a sans-IO core: what a tracking app does to stay on a delivery's
//! live feed (WebTransport or WebSocket) through failures, hand-offs and hub restarts.
//!
//! It builds each connection's URL with `last_event_seq` (so a reconnect resumes after the
//! last status event seen), follows in-band `redirect` frames, backs off with jitter, honours
//! `Retry-After`, gives up only on a refusal, and notices a silent connection. Frames are
//! parsed tolerantly ([`crate::frames`]). No sockets, no clock: `crate::io` drives it.

use crate::backoff::{Backoff, BackoffConfig};
use crate::failure::Failure;
use crate::frames::{parse_frame, Parsed};
use protocol::consumer::{ConsumerFrame, Eta, Position, Snapshot, StatusEvent};
use protocol::DeliveryId;
use rand::SeedableRng;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Consecutive redirects followed at once; more (a loop between hubs) wait out a backoff.
const MAX_QUICK_REDIRECTS: u32 = 3;

/// How the consumer reaches the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConsumerTransport {
    /// `https://host:port/api/v1/tracking/{id}/wt`: positions as datagrams, reliable frames as
    /// lines on a uni stream.
    WebTransport,
    /// `wss://host:port/api/v1/tracking/{id}/connect`: every frame a text message.
    WebSocket,
}

impl ConsumerTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerTransport::WebTransport => "webtransport",
            ConsumerTransport::WebSocket => "websocket",
        }
    }
}

/// What a consumer session needs to know.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    pub delivery_id: DeliveryId,
    /// The delivery's tracking token.
    pub token: String,
    pub transport: ConsumerTransport,
    /// Hubs as `host:port` for this transport (WebTransport or HTTPS addresses), tried in
    /// turn after failures.
    pub hubs: Vec<String>,
    pub backoff: BackoffConfig,
    /// Longest wait for a connection to open.
    pub handshake_timeout: Duration,
    /// A connection with no frame for this long is dropped and resumed (None: never).
    pub idle_timeout: Option<Duration>,
    /// The last status event already seen (0: none; the hub then sends the whole log).
    pub last_event_seq: u64,
    /// Seeds the jitter (give each consumer its own).
    pub seed: u64,
    /// Stop on a refusal (401/403/404): right for an app; a load generator that lives
    /// through failovers (where a hub may briefly not know a delivery) keeps retrying.
    pub stop_on_refusal: bool,
}

impl ConsumerConfig {
    pub fn new(
        delivery_id: DeliveryId,
        token: String,
        transport: ConsumerTransport,
        hubs: Vec<String>,
    ) -> Self {
        Self {
            delivery_id,
            token,
            transport,
            hubs,
            backoff: BackoffConfig::default(),
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: None,
            last_event_seq: 0,
            seed: 0,
            stop_on_refusal: true,
        }
    }
}

/// What the core wants the IO layer to do.
#[derive(Clone, Debug, PartialEq)]
pub enum ConsumerAction {
    /// Open `url` (on `authority`), then call [`ConsumerSession::handle_connected`].
    Connect { authority: String, url: String },
    /// Close the current connection.
    Close { reason: &'static str },
}

/// What happened, for the app.
#[derive(Clone, Debug, PartialEq)]
pub enum ConsumerEvent {
    /// A connection opened; `resumed_from` is the `last_event_seq` it asked for.
    Connected {
        authority: String,
        handshake: Duration,
        reconnect: bool,
        resumed_from: u64,
    },
    /// The state at (re)connection; `first` for the session's first one.
    Snapshot {
        snapshot: Snapshot,
        first: bool,
    },
    Position(Position),
    /// A status event; `new` is false for one at or below the last seen (a replay after a
    /// resume), `gap` is how many event numbers were skipped before a new one (0 normally).
    Status {
        event: StatusEvent,
        new: bool,
        gap: u64,
    },
    Eta(Eta),
    LocationUnavailable {
        last_ts_ms: u64,
        age_s: f64,
    },
    /// The hub named another hub (`url`); `wrong_transport` when the URL is the other
    /// transport's (the session keeps its own transport and uses the URL's authority unless
    /// the app calls [`ConsumerSession::set_next_authority`]).
    Redirected {
        url: String,
        wrong_transport: bool,
    },
    /// An attempt failed or the connection ended; the next attempt is in `retry_in`.
    Failed {
        failure: Failure,
        retry_in: Duration,
        was_connected: bool,
    },
    /// Refused for good (token, unknown delivery), or closed by the app.
    Stopped {
        failure: Failure,
    },
    /// A frame that was not understood (unknown type, or malformed): skipped.
    Skipped {
        detail: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Waiting { until: Instant },
    Connecting { since: Instant, deadline: Instant },
    Open { last_frame: Instant },
    Stopped,
}

/// One consumer's session with the hubs (sans-IO).
#[derive(Debug)]
pub struct ConsumerSession {
    config: ConsumerConfig,
    state: State,
    backoff: Backoff,
    rng: rand::rngs::SmallRng,
    hub_ix: usize,
    next_authority: Option<String>,
    current: String,
    last_event_seq: u64,
    resumed_from: u64,
    seen_snapshot: bool,
    ever_connected: bool,
    quick_redirects: u32,
    actions: VecDeque<ConsumerAction>,
    events: VecDeque<ConsumerEvent>,
}

impl ConsumerSession {
    pub fn new(config: ConsumerConfig, now: Instant) -> Self {
        Self {
            backoff: Backoff::new(config.backoff.clone()),
            rng: rand::rngs::SmallRng::seed_from_u64(config.seed),
            hub_ix: (config.seed as usize) % config.hubs.len().max(1),
            last_event_seq: config.last_event_seq,
            config,
            state: State::Waiting { until: now },
            next_authority: None,
            current: String::new(),
            resumed_from: 0,
            seen_snapshot: false,
            ever_connected: false,
            quick_redirects: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// The last status event seen (what the next connection resumes after).
    pub fn last_event_seq(&self) -> u64 {
        self.last_event_seq
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    pub fn is_connecting(&self) -> bool {
        matches!(self.state, State::Connecting { .. })
    }

    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    pub fn ever_connected(&self) -> bool {
        self.ever_connected
    }

    /// The hub of the current or last attempt.
    pub fn authority(&self) -> &str {
        &self.current
    }

    /// Overrides where the next attempt goes (e.g. the right address for a redirect that
    /// named the other transport).
    pub fn set_next_authority(&mut self, authority: String) {
        self.next_authority = Some(authority);
    }

    pub fn poll_action(&mut self, now: Instant) -> Option<ConsumerAction> {
        if let State::Waiting { until } = self.state {
            if now >= until {
                self.start_attempt(now);
            }
        }
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ConsumerEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { until } => Some(until),
            State::Connecting { deadline, .. } => Some(deadline),
            State::Open { last_frame } => self.config.idle_timeout.map(|d| last_frame + d),
            State::Stopped => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Connecting { deadline, .. } if now >= deadline => {
                self.actions.push_back(ConsumerAction::Close {
                    reason: "handshake timed out",
                });
                self.fail(now, Failure::Timeout("hub handshake"));
            }
            State::Open { last_frame }
                if self
                    .config
                    .idle_timeout
                    .is_some_and(|d| now >= last_frame + d) =>
            {
                self.actions.push_back(ConsumerAction::Close {
                    reason: "no frame in time",
                });
                self.fail(now, Failure::Timeout("silent connection"));
            }
            _ => {}
        }
    }

    /// The connection is open (WebSocket upgraded, or WebTransport session with its stream).
    pub fn handle_connected(&mut self, now: Instant) {
        let State::Connecting { since, .. } = self.state else {
            return;
        };
        self.state = State::Open { last_frame: now };
        self.backoff.on_connected(now);
        self.events.push_back(ConsumerEvent::Connected {
            authority: self.current.clone(),
            handshake: now.saturating_duration_since(since),
            reconnect: self.ever_connected,
            resumed_from: self.resumed_from,
        });
        self.ever_connected = true;
    }

    /// One text frame (a WebSocket message, a stream line or a datagram).
    pub fn handle_text(&mut self, now: Instant, text: &str) {
        if let State::Open { .. } = self.state {
            self.state = State::Open { last_frame: now };
        }
        match parse_frame(text) {
            Parsed::Frame(f) => self.handle_frame(now, f),
            Parsed::Unknown(kind) => self.events.push_back(ConsumerEvent::Skipped {
                detail: format!("unknown frame type `{kind}`"),
            }),
            Parsed::Malformed(detail) => self.events.push_back(ConsumerEvent::Skipped { detail }),
        }
    }

    /// The connection attempt failed or the connection ended.
    pub fn handle_closed(&mut self, now: Instant, failure: Failure) {
        if matches!(self.state, State::Waiting { .. } | State::Stopped) {
            return;
        }
        self.fail(now, failure);
    }

    /// The app is done with the delivery: close and stop.
    pub fn stop(&mut self) {
        if !matches!(self.state, State::Stopped | State::Waiting { .. }) {
            self.actions
                .push_back(ConsumerAction::Close { reason: "done" });
        }
        self.state = State::Stopped;
    }

    fn handle_frame(&mut self, now: Instant, frame: ConsumerFrame) {
        let ev = match frame {
            ConsumerFrame::Position(p) => ConsumerEvent::Position(p),
            ConsumerFrame::Status(event) => {
                let new = event.event_seq > self.last_event_seq;
                let gap = if new {
                    event.event_seq - self.last_event_seq - 1
                } else {
                    0
                };
                if new {
                    self.last_event_seq = event.event_seq;
                }
                ConsumerEvent::Status { event, new, gap }
            }
            ConsumerFrame::Snapshot(snapshot) => {
                let first = !self.seen_snapshot;
                self.seen_snapshot = true;
                // A first connection without history to resume from starts at the snapshot
                // (it covers the events before it); a later snapshot never moves the resume
                // point, so a status event lost in between cannot hide behind it.
                if first && self.last_event_seq == 0 {
                    self.last_event_seq = snapshot.last_event_seq;
                }
                ConsumerEvent::Snapshot { snapshot, first }
            }
            ConsumerFrame::Eta(e) => ConsumerEvent::Eta(e),
            ConsumerFrame::LocationUnavailable {
                last_ts_ms, age_s, ..
            } => ConsumerEvent::LocationUnavailable { last_ts_ms, age_s },
            ConsumerFrame::Redirect { url } => {
                self.follow_redirect(now, url);
                return;
            }
            ConsumerFrame::Error { code, message } => {
                let failure = match code {
                    401 | 403 | 404 => Failure::Refused {
                        code: u64::from(code),
                        message,
                    },
                    _ => Failure::RetryLater {
                        retry_after: None,
                        message: format!("{code} {message}"),
                    },
                };
                self.actions.push_back(ConsumerAction::Close {
                    reason: "hub sent an error",
                });
                self.fail(now, failure);
                return;
            }
        };
        self.quick_redirects = 0;
        self.events.push_back(ev);
    }

    fn follow_redirect(&mut self, now: Instant, url: String) {
        let (scheme, authority) = split_url(&url);
        let wrong_transport = match self.config.transport {
            ConsumerTransport::WebTransport => scheme != "https",
            ConsumerTransport::WebSocket => scheme != "wss" && scheme != "ws",
        };
        self.actions.push_back(ConsumerAction::Close {
            reason: "redirected",
        });
        self.events.push_back(ConsumerEvent::Redirected {
            url: url.clone(),
            wrong_transport,
        });
        self.next_authority = Some(authority.to_owned());
        self.quick_redirects += 1;
        let wait = if self.quick_redirects > MAX_QUICK_REDIRECTS {
            self.backoff.on_failure(now, None, &mut self.rng)
        } else {
            self.backoff.on_connected(now);
            self.backoff.reset();
            Duration::ZERO
        };
        self.state = State::Waiting { until: now + wait };
    }

    fn start_attempt(&mut self, now: Instant) {
        let authority = match self.next_authority.take() {
            Some(a) => a,
            None => self
                .config
                .hubs
                .get(self.hub_ix % self.config.hubs.len().max(1))
                .cloned()
                .unwrap_or_default(),
        };
        self.current = authority.clone();
        self.resumed_from = self.last_event_seq;
        let url = self.url(&authority);
        self.state = State::Connecting {
            since: now,
            deadline: now + self.config.handshake_timeout,
        };
        self.actions
            .push_back(ConsumerAction::Connect { authority, url });
    }

    /// The URL of a connection to `authority`, resuming after the last event seen.
    pub fn url(&self, authority: &str) -> String {
        let c = &self.config;
        let (scheme, path) = match c.transport {
            ConsumerTransport::WebTransport => ("https", "wt"),
            ConsumerTransport::WebSocket => ("wss", "connect"),
        };
        format!(
            "{scheme}://{authority}/api/v1/tracking/{}/{path}?token={}&last_event_seq={}",
            c.delivery_id,
            percent_encode(&c.token),
            self.last_event_seq
        )
    }

    fn fail(&mut self, now: Instant, failure: Failure) {
        let was_connected = matches!(self.state, State::Open { .. });
        if failure.is_fatal() && self.config.stop_on_refusal {
            self.state = State::Stopped;
            self.events.push_back(ConsumerEvent::Stopped { failure });
            return;
        }
        self.next_authority = None;
        self.hub_ix = self.hub_ix.wrapping_add(1);
        let retry_after = match &failure {
            Failure::RetryLater { retry_after, .. } => *retry_after,
            _ => None,
        };
        let retry_in = self.backoff.on_failure(now, retry_after, &mut self.rng);
        self.state = State::Waiting {
            until: now + retry_in,
        };
        self.events.push_back(ConsumerEvent::Failed {
            failure,
            retry_in,
            was_connected,
        });
    }
}

/// (scheme, authority) of `scheme://authority/path...`; the whole string as authority when
/// there is no scheme.
pub fn split_url(url: &str) -> (&str, &str) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    (scheme, authority)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::geo::LatLng;
    use protocol::status::DeliveryStatus;

    fn cfg(transport: ConsumerTransport) -> ConsumerConfig {
        let mut c = ConsumerConfig::new(
            DeliveryId(42),
            "tl1.a+b".into(),
            transport,
            vec!["hub-a:4434".into(), "hub-b:4434".into()],
        );
        c.idle_timeout = Some(Duration::from_secs(5));
        c
    }

    fn snapshot(last_event_seq: u64) -> String {
        ConsumerFrame::Snapshot(Snapshot {
            delivery_id: DeliveryId(42),
            status: DeliveryStatus::DriverAssigned,
            last_event_seq,
            pickup: LatLng::new(60.0, 24.0),
            dropoff: LatLng::new(60.1, 24.1),
            position: None,
            eta: None,
            position_age_s: None,
            server_time_ms: 0,
        })
        .to_json()
    }

    fn status(seq: u64) -> String {
        ConsumerFrame::Status(StatusEvent {
            delivery_id: DeliveryId(42),
            event_seq: seq,
            status: DeliveryStatus::PickedUp,
            ts_ms: 1,
            source: "api".into(),
            metadata: serde_json::Value::Null,
        })
        .to_json()
    }

    fn drain(s: &mut ConsumerSession, now: Instant) -> Vec<ConsumerAction> {
        std::iter::from_fn(|| s.poll_action(now)).collect()
    }

    fn events(s: &mut ConsumerSession) -> Vec<ConsumerEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn connect_url(acts: &[ConsumerAction]) -> String {
        acts.iter()
            .find_map(|a| match a {
                ConsumerAction::Connect { url, .. } => Some(url.clone()),
                _ => None,
            })
            .expect("a connect action")
    }

    #[test]
    fn urls_carry_the_token_and_resume_after_the_last_event_seen() {
        let t = Instant::now();
        let mut s = ConsumerSession::new(cfg(ConsumerTransport::WebTransport), t);
        assert_eq!(
            connect_url(&drain(&mut s, t)),
            "https://hub-a:4434/api/v1/tracking/42/wt?token=tl1.a%2Bb&last_event_seq=0"
        );
        s.handle_connected(t);
        s.handle_text(t, &snapshot(2));
        s.handle_text(t, &status(3));
        s.handle_closed(t, Failure::Network("reset".into()));
        let retry = s.poll_timeout().expect("retry");
        let url = connect_url(&drain(&mut s, retry));
        assert!(url.starts_with("https://hub-b:4434/"), "{url}");
        assert!(url.ends_with("last_event_seq=3"), "{url}");
        let mut ws = ConsumerSession::new(cfg(ConsumerTransport::WebSocket), t);
        assert!(connect_url(&drain(&mut ws, t))
            .starts_with("wss://hub-a:4434/api/v1/tracking/42/connect?"));
    }

    #[test]
    fn replayed_events_are_not_new_and_skipped_numbers_are_a_gap() {
        let t = Instant::now();
        let mut c = cfg(ConsumerTransport::WebSocket);
        c.last_event_seq = 4;
        let mut s = ConsumerSession::new(c, t);
        drain(&mut s, t);
        s.handle_connected(t);
        s.handle_text(t, &snapshot(6));
        s.handle_text(t, &status(4));
        s.handle_text(t, &status(5));
        s.handle_text(t, &status(7));
        let st: Vec<(u64, bool, u64)> = events(&mut s)
            .into_iter()
            .filter_map(|e| match e {
                ConsumerEvent::Status { event, new, gap } => Some((event.event_seq, new, gap)),
                _ => None,
            })
            .collect();
        assert_eq!(st, vec![(4, false, 0), (5, true, 0), (7, true, 1)]);
        // A resumed session's snapshot does not move the resume point.
        assert_eq!(s.last_event_seq(), 7);
    }

    #[test]
    fn a_redirect_reconnects_at_once_to_the_named_hub_and_flags_the_wrong_transport() {
        let t = Instant::now();
        let mut s = ConsumerSession::new(cfg(ConsumerTransport::WebTransport), t);
        drain(&mut s, t);
        s.handle_connected(t);
        let r = ConsumerFrame::Redirect {
            url: "wss://hub-c:9443/api/v1/tracking/42/connect".into(),
        }
        .to_json();
        s.handle_text(t, &r);
        let acts = drain(&mut s, t);
        assert_eq!(
            acts[0],
            ConsumerAction::Close {
                reason: "redirected"
            }
        );
        assert!(connect_url(&acts).starts_with("https://hub-c:9443/"));
        assert!(events(&mut s).contains(&ConsumerEvent::Redirected {
            url: "wss://hub-c:9443/api/v1/tracking/42/connect".into(),
            wrong_transport: true
        }));
        // The app may map it to the right address before the next attempt.
        s.handle_closed(t, Failure::Closed("x".into()));
        drain(&mut s, t + Duration::from_secs(60));
        s.handle_connected(t);
        s.handle_text(t, &r);
        let _ = s.poll_event();
        s.set_next_authority("hub-c:4434".into());
        assert!(connect_url(&drain(&mut s, t)).starts_with("https://hub-c:4434/"));
    }

    #[test]
    fn redirect_loops_back_off() {
        let t = Instant::now();
        let mut s = ConsumerSession::new(cfg(ConsumerTransport::WebSocket), t);
        let r = ConsumerFrame::Redirect {
            url: "wss://hub-b:9443/x".into(),
        }
        .to_json();
        let mut immediate = 0;
        for _ in 0..6 {
            let acts = drain(&mut s, t);
            if acts
                .iter()
                .any(|a| matches!(a, ConsumerAction::Connect { .. }))
            {
                immediate += 1;
                s.handle_connected(t);
                s.handle_text(t, &r);
            }
        }
        assert_eq!(immediate, MAX_QUICK_REDIRECTS as usize + 1);
        assert!(s.poll_timeout().expect("waiting") > t);
    }

    #[test]
    fn silence_times_out_joining_honours_retry_after_and_a_refusal_stops() {
        let t = Instant::now();
        let mut s = ConsumerSession::new(cfg(ConsumerTransport::WebSocket), t);
        drain(&mut s, t);
        s.handle_connected(t);
        assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(5)));
        s.handle_text(t + Duration::from_secs(3), &status(1));
        s.handle_timeout(t + Duration::from_secs(5));
        assert!(s.is_connected());
        s.handle_timeout(t + Duration::from_secs(8));
        assert!(!s.is_connected());
        let t2 = s.poll_timeout().expect("retry");
        drain(&mut s, t2);
        s.handle_closed(
            t2,
            Failure::RetryLater {
                retry_after: Some(Duration::from_secs(4)),
                message: "503 joining".into(),
            },
        );
        assert!(s.poll_timeout().expect("retry") >= t2 + Duration::from_secs(4));
        let t3 = s.poll_timeout().expect("retry");
        drain(&mut s, t3);
        s.handle_closed(
            t3,
            Failure::Refused {
                code: 403,
                message: "bad token".into(),
            },
        );
        assert!(s.is_stopped());
        assert!(drain(&mut s, t3 + Duration::from_secs(600)).is_empty());
    }

    #[test]
    fn unknown_frames_are_skipped_without_ending_the_session() {
        let t = Instant::now();
        let mut s = ConsumerSession::new(cfg(ConsumerTransport::WebSocket), t);
        drain(&mut s, t);
        s.handle_connected(t);
        s.handle_text(t, r#"{"type":"promo","text":"hi"}"#);
        assert!(s.is_connected());
        assert!(events(&mut s)
            .iter()
            .any(|e| matches!(e, ConsumerEvent::Skipped { .. })));
    }
}
