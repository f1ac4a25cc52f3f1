//! QUIC load generator: holds N connections and sends one fix datagram per connection per
//! interval, paced round robin. Raw connections for the bare sink; driver sessions (signed
//! token, `Hello`, `Welcome`, optional `OnDuty`) for an edge.
//!
//! Connections open over `--ramp` and come back with exponential backoff and jitter when they
//! fail or are refused, like a real app. Live progress on stderr; a JSON report at the end
//! (sent, connected, handshake latency, failures and closes by reason).

use crate::pace::Pacer;
use crate::report::{classify, Histogram, ReasonCounts};
use anyhow::Context;
use parking_lot::Mutex;
use protocol::framing::{frame_bytes, FrameDecoder, MAX_DRIVER_FRAME};
use protocol::token::{Subject, TokenSigner};
use protocol::wire::{encode_fix_datagram, DriverToEdge, EdgeToDriver, Fix};
use protocol::{DeliveryId, DriverId, ALPN_DRIVER};
use rand::Rng;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `trackline-baseline quic-load`.
#[derive(clap::Args, Debug, Clone)]
pub struct QuicLoadArgs {
    /// QUIC address of the sink or the edge.
    #[arg(long)]
    pub target: SocketAddr,
    /// Name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// CA certificate (PEM) the server's certificate chains to.
    #[arg(long)]
    pub ca: PathBuf,
    /// Connections (sessions) to hold.
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Time between two datagrams of one connection ("0s": send none, only hold sessions).
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Time over which the connections are opened, evenly spread.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,
    /// How long to run in total (ramp included); Ctrl-C stops earlier.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Driver sessions: the token signing key (PKCS#8 Ed25519, as `region-hub keygen` writes
    /// it). Each connection sends `Hello` with a token for its own driver id and waits for
    /// `Welcome` before its datagrams count. Without it: raw connections (the sink's ALPN).
    #[arg(long)]
    pub token_key: Option<PathBuf>,
    /// Key id of `token_key`.
    #[arg(long, default_value_t = 1)]
    pub token_kid: u32,
    /// Driver id of the first connection (the others count up from it).
    #[arg(long, default_value_t = 1_000_000)]
    pub first_driver: u64,
    /// Driver sessions also declare `OnDuty` for a delivery numbered like the driver.
    #[arg(long)]
    pub on_duty: bool,
    /// Client UDP sockets (quinn endpoints) the connections are spread over.
    #[arg(long, default_value_t = 4)]
    pub endpoints: usize,
    /// Client keep-alive interval ("0s": none).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub keep_alive: Duration,
    /// Client idle timeout.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Progress line interval on stderr.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub progress_every: Duration,
    /// Write the JSON report here (it is printed too).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Rewrite this file every second with the live counters (JSON), for harnesses.
    #[arg(long)]
    pub stats_file: Option<PathBuf>,
}

/// The live counters written to `--stats-file`.
#[derive(Debug, Serialize)]
struct LiveStats {
    unix_ms: u64,
    sent: u64,
    connected: i64,
    failures: u64,
    closes: u64,
}

/// What the generator did.
#[derive(Debug, Default, Serialize)]
pub struct QuicLoadReport {
    pub mode: &'static str,
    pub target: String,
    pub connections: usize,
    pub interval_ms: u64,
    pub elapsed_s: f64,
    pub datagrams_sent: u64,
    pub send_errors: u64,
    /// Sends that were due while their connection was not up (not made).
    pub skipped_not_connected: u64,
    pub connected_at_end: i64,
    pub connected_max: i64,
    pub connect_attempts: u64,
    /// Connection + `Hello`/`Welcome` latency of successful attempts, milliseconds.
    pub handshake_ms: crate::report::Percentiles,
    /// Attempts that failed, by reason.
    pub failures: std::collections::BTreeMap<String, u64>,
    /// Established connections that ended before the run did, by reason.
    pub closes: std::collections::BTreeMap<String, u64>,
}

/// Datagram bytes a connection may queue before quinn drops the oldest.
const DATAGRAM_SEND_BUFFER: usize = 64 * 1024;

/// One connection slot: the live connection (if any) and its next sequence number.
#[derive(Debug, Default)]
struct Slot {
    conn: Mutex<Option<quinn::Connection>>,
    seq: AtomicU32,
    /// The connection's datagram send space with nothing queued (quinn's own bookkeeping
    /// takes a little of the configured buffer).
    empty_space: AtomicUsize,
}

#[derive(Debug, Default)]
struct Stats {
    connected: AtomicI64,
    connected_max: AtomicI64,
    attempts: AtomicU64,
    sent: AtomicU64,
    send_errors: AtomicU64,
    skipped: AtomicU64,
    handshake: Histogram,
    failures: ReasonCounts,
    closes: ReasonCounts,
}

struct Shared {
    args: QuicLoadArgs,
    endpoints: Vec<quinn::Endpoint>,
    signer: Option<TokenSigner>,
    slots: Vec<Slot>,
    stats: Stats,
    stop: CancellationToken,
}

/// Runs the generator until `--duration` or `stop`; returns its report.
pub async fn run(args: QuicLoadArgs, stop: CancellationToken) -> anyhow::Result<QuicLoadReport> {
    anyhow::ensure!(args.connections > 0, "--connections must be > 0");
    let roots = certs::load_certs_pem(&args.ca).context("reading the CA")?;
    let signer = match &args.token_key {
        Some(path) => {
            let der = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Some(TokenSigner::from_pkcs8(args.token_kid, &der).context("loading the token key")?)
        }
        None => None,
    };
    let alpn: &[u8] = if signer.is_some() {
        ALPN_DRIVER
    } else {
        crate::sink::ALPN_SINK
    };
    let tls = certs::client_config_with_roots(roots, &[alpn], certs::TlsFor::Quic)?;
    let mut client = certs::quinn_client_config(tls)?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval((!args.keep_alive.is_zero()).then_some(args.keep_alive));
    transport.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(args.idle_timeout).context("--idle-timeout")?,
    ));
    client.transport_config(Arc::new(transport));
    let bind: SocketAddr = if args.target.ip().is_loopback() {
        ([127, 0, 0, 1], 0).into()
    } else {
        ([0, 0, 0, 0], 0).into()
    };
    let mut endpoints = Vec::new();
    for _ in 0..args.endpoints.max(1) {
        let mut ep = quinn::Endpoint::client(bind).context("binding a client UDP socket")?;
        ep.set_default_client_config(client.clone());
        endpoints.push(ep);
    }
    let shared = Arc::new(Shared {
        slots: (0..args.connections).map(|_| Slot::default()).collect(),
        args,
        endpoints,
        signer,
        stats: Stats::default(),
        stop: stop.clone(),
    });
    let start = Instant::now();
    let deadline = tokio::time::sleep(shared.args.duration);
    tokio::pin!(deadline);
    let mut sessions = Vec::with_capacity(shared.args.connections);
    for i in 0..shared.args.connections {
        let delay = shared
            .args
            .ramp
            .mul_f64(i as f64 / shared.args.connections as f64);
        sessions.push(tokio::spawn(run_slot(shared.clone(), i, delay)));
    }
    let pace_stop = CancellationToken::new();
    let pacer = tokio::spawn(run_pacer(shared.clone(), start, pace_stop.clone()));
    let mut progress = tokio::time::interval(shared.args.progress_every);
    progress.tick().await;
    let mut stats_tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_sent = 0;
    let mut last_t = start;
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = stop.cancelled() => break,
            _ = stats_tick.tick(), if shared.args.stats_file.is_some() => {
                let s = &shared.stats;
                let live = LiveStats {
                    unix_ms: nodekit::unix_ms(),
                    sent: s.sent.load(Ordering::Relaxed),
                    connected: s.connected.load(Ordering::Relaxed),
                    failures: s.failures.total(),
                    closes: s.closes.total(),
                };
                if let Some(path) = &shared.args.stats_file {
                    if let Err(e) = crate::report::write_stats(path, &live) {
                        tracing::warn!(error = %e, path = %path.display(), "writing the stats file");
                    }
                }
            }
            _ = progress.tick() => {
                let s = &shared.stats;
                let sent = s.sent.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (sent - last_sent) as f64 / now.duration_since(last_t).as_secs_f64();
                (last_sent, last_t) = (sent, now);
                eprintln!(
                    "[quic-load {:>5.0}s] connected {}/{} sent {} ({:.0}/s) failures {} closes {}",
                    start.elapsed().as_secs_f64(),
                    s.connected.load(Ordering::Relaxed),
                    shared.args.connections,
                    sent,
                    rate,
                    s.failures.total(),
                    s.closes.total(),
                );
            }
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let connected_at_end = shared.stats.connected.load(Ordering::Relaxed);
    // Stop sending, let every connection hand what it queued to the socket, then close: a
    // datagram counted as sent is one that left (closing drops queued datagrams).
    pace_stop.cancel();
    let _ = pacer.await;
    drain_datagrams(&shared).await;
    shared.stop.cancel();
    for s in sessions {
        let _ = s.await;
    }
    for ep in &shared.endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
    }
    let s = &shared.stats;
    Ok(QuicLoadReport {
        mode: if shared.signer.is_some() {
            "driver"
        } else {
            "raw"
        },
        target: shared.args.target.to_string(),
        connections: shared.args.connections,
        interval_ms: shared.args.interval.as_millis() as u64,
        elapsed_s,
        datagrams_sent: s.sent.load(Ordering::Relaxed),
        send_errors: s.send_errors.load(Ordering::Relaxed),
        skipped_not_connected: s.skipped.load(Ordering::Relaxed),
        connected_at_end,
        connected_max: s.connected_max.load(Ordering::Relaxed),
        connect_attempts: s.attempts.load(Ordering::Relaxed),
        handshake_ms: s.handshake.percentiles(),
        failures: s.failures.snapshot(),
        closes: s.closes.snapshot(),
    })
}

/// Keeps slot `i` connected until the run stops, reconnecting with backoff and jitter.
async fn run_slot(s: Arc<Shared>, i: usize, delay: Duration) {
    tokio::select! {
        _ = s.stop.cancelled() => return,
        _ = tokio::time::sleep(delay) => {}
    }
    let mut backoff = Duration::from_millis(250);
    let slot = &s.slots[i];
    loop {
        s.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let opened = tokio::select! {
            _ = s.stop.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(10), open(&s, i)) => r,
        };
        let (conn, _control) = match opened {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                s.stats.failures.add(&e);
                if !sleep_backoff(&s, &mut backoff).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                s.stats.failures.add("handshake_timeout");
                if !sleep_backoff(&s, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        s.stats.handshake.record(t0.elapsed());
        backoff = Duration::from_millis(250);
        slot.seq.store(0, Ordering::Relaxed);
        slot.empty_space
            .store(conn.datagram_send_buffer_space(), Ordering::Relaxed);
        *slot.conn.lock() = Some(conn.clone());
        let n = s.stats.connected.fetch_add(1, Ordering::Relaxed) + 1;
        s.stats.connected_max.fetch_max(n, Ordering::Relaxed);
        let stopped = tokio::select! {
            _ = s.stop.cancelled() => true,
            e = conn.closed() => {
                s.stats.closes.add(&classify(&e));
                false
            }
        };
        *slot.conn.lock() = None;
        s.stats.connected.fetch_sub(1, Ordering::Relaxed);
        if stopped {
            conn.close(0u32.into(), b"load done");
            return;
        }
        if !sleep_backoff(&s, &mut backoff).await {
            return;
        }
    }
}

/// Sleeps `backoff` with +-50 % jitter and doubles it (up to 10 s); `false` if the run stopped.
async fn sleep_backoff(s: &Shared, backoff: &mut Duration) -> bool {
    let jitter = rand::rng().random_range(0.5..1.5);
    let wait = backoff.mul_f64(jitter);
    *backoff = (*backoff * 2).min(Duration::from_secs(10));
    tokio::select! {
        _ = s.stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// The control stream of a driver session, kept open while the session lives.
type Control = Option<(quinn::SendStream, quinn::RecvStream)>;

/// One connection attempt (and, for drivers, `Hello` up to `Welcome`).
async fn open(s: &Shared, i: usize) -> Result<(quinn::Connection, Control), String> {
    let ep = &s.endpoints[i % s.endpoints.len()];
    let conn = ep
        .connect(s.args.target, &s.args.server_name)
        .map_err(|e| format!("connect: {e}"))?
        .await
        .map_err(|e| classify(&e))?;
    let Some(signer) = &s.signer else {
        return Ok((conn, None));
    };
    let driver = s.args.first_driver + i as u64;
    let ttl_s = s.args.duration.as_secs() + 3600;
    let token = signer.sign(Subject::Driver(DriverId(driver)), nodekit::unix_s(), ttl_s);
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| classify(&e))?;
    let mut out = frame_bytes(&DriverToEdge::Hello {
        token,
        app_version: "trackline-baseline".into(),
    });
    if s.args.on_duty {
        out.extend(frame_bytes(&DriverToEdge::OnDuty {
            deliveries: vec![DeliveryId(driver)],
        }));
    }
    send.write_all(&out)
        .await
        .map_err(|e| format!("hello: {e}"))?;
    let mut dec = FrameDecoder::new(MAX_DRIVER_FRAME);
    loop {
        match dec.next_frame::<EdgeToDriver>() {
            Ok(Some(EdgeToDriver::Welcome { .. })) => return Ok((conn, Some((send, recv)))),
            Ok(Some(other)) => return Err(format!("expected welcome, got {other:?}")),
            Ok(None) => {}
            Err(e) => return Err(format!("malformed frame from the edge: {e}")),
        }
        match recv.read_chunk(MAX_DRIVER_FRAME, true).await {
            Ok(Some(chunk)) => dec.push(&chunk.bytes),
            Ok(None) => return Err("control stream finished before welcome".into()),
            Err(quinn::ReadError::ConnectionLost(e)) => return Err(classify(&e)),
            Err(e) => return Err(format!("reading welcome: {e}")),
        }
    }
}

/// Sends every due datagram, round robin over the slots.
/// Waits (at most 2 s) until no connection has datagrams queued.
async fn drain_datagrams(s: &Shared) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let queued = s.slots.iter().any(|slot| {
            let empty = slot.empty_space.load(Ordering::Relaxed);
            slot.conn
                .lock()
                .as_ref()
                .is_some_and(|c| c.datagram_send_buffer_space() < empty)
        });
        if !queued {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run_pacer(s: Arc<Shared>, start: Instant, pace_stop: CancellationToken) {
    if s.args.interval.is_zero() {
        return;
    }
    let mut pacer = Pacer::new(s.slots.len(), s.args.interval);
    // Each driver moves from its own start, ~5 m/s to the north-east.
    let base = (60.17, 24.94);
    loop {
        let next = start
            + pacer
                .next_due()
                .max(start.elapsed() + Duration::from_millis(1));
        tokio::select! {
            _ = pace_stop.cancelled() => return,
            _ = s.stop.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        let now_ms = nodekit::unix_ms();
        for i in pacer.due(start.elapsed(), 4 * s.slots.len()) {
            let slot = &s.slots[i];
            let Some(conn) = slot.conn.lock().clone() else {
                s.stats.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let seq = slot.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let off = (i % 1000) as f64 * 0.0001;
            let step = 0.00003 * f64::from(seq);
            let fix = Fix::from_units(
                seq,
                now_ms,
                base.0 + off + step,
                base.1 + off + step,
                45.0,
                5.0,
                5.0,
            );
            match conn.send_datagram(encode_fix_datagram(&fix).into()) {
                Ok(()) => s.stats.sent.fetch_add(1, Ordering::Relaxed),
                Err(_) => s.stats.send_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}
