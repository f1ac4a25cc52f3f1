//! MQTT load generator for a broker used as a bare relay (mosquitto, QoS 0, no TLS): N
//! publishers each publish a fix-sized payload to a topic of their own every interval, paced
//! round robin, and N subscribers each subscribe to one publisher's topic, so every message is
//! relayed exactly once, like a driver's position to its consumer.
//!
//! Subscribers connect and subscribe first; publishers start once every subscription is
//! acknowledged. One more client reads the broker's `$SYS` publish counters for the report.

use crate::pace::Pacer;
use crate::report::ReasonCounts;
use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `trackline-baseline mqtt-load`.
#[derive(clap::Args, Debug, Clone)]
pub struct MqttLoadArgs {
    /// The broker's TCP address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: SocketAddr,
    /// Publishers, and as many subscribers (one per publisher's topic).
    #[arg(long, default_value_t = 2000)]
    pub publishers: usize,
    /// Time between two messages of one publisher.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Payload size in bytes (default: a typical fix datagram, `encode_fix_datagram`).
    #[arg(long)]
    pub payload_bytes: Option<usize>,
    /// Time over which the clients connect, evenly spread (subscribers, then publishers).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,
    /// How long to run in total (ramp included); Ctrl-C stops earlier.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Topic of publisher `i` is `<prefix>/<i>`.
    #[arg(long, default_value = "trackline/bench")]
    pub topic_prefix: String,
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
    published: u64,
    received: u64,
    errors: u64,
    broker_sys: BTreeMap<String, String>,
}

/// What the generator did.
#[derive(Debug, Default, Serialize)]
pub struct MqttLoadReport {
    pub publishers: usize,
    pub interval_ms: u64,
    pub payload_bytes: usize,
    pub elapsed_s: f64,
    pub published: u64,
    /// Publishes the client refused to queue (its request channel was full).
    pub publish_errors: u64,
    /// Messages the subscribers received.
    pub received: u64,
    pub subscriptions_acknowledged: u64,
    /// Client connection errors, by reason.
    pub errors: BTreeMap<String, u64>,
    /// The broker's last `$SYS/broker/publish/messages/{received,sent}` values.
    pub broker_sys: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Stats {
    published: AtomicU64,
    publish_errors: AtomicU64,
    received: AtomicU64,
    subacks: AtomicU64,
    errors: ReasonCounts,
    sys: parking_lot::Mutex<BTreeMap<String, String>>,
}

/// Runs the generator until `--duration` or `stop`; returns its report.
pub async fn run(args: MqttLoadArgs, stop: CancellationToken) -> anyhow::Result<MqttLoadReport> {
    anyhow::ensure!(args.publishers > 0, "--publishers must be > 0");
    let n = args.publishers;
    let payload = match args.payload_bytes {
        Some(len) => vec![0x5a; len],
        None => {
            let fix = protocol::wire::Fix::from_units(
                1,
                nodekit::unix_ms(),
                60.17,
                24.94,
                45.0,
                5.0,
                5.0,
            );
            protocol::wire::encode_fix_datagram(&fix)
        }
    };
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let host = args.broker.ip().to_string();
    let port = args.broker.port();
    let options = |id: String| {
        let mut o = MqttOptions::new(id, host.clone(), port);
        o.set_keep_alive(Duration::from_secs(60));
        o.set_clean_session(true);
        o
    };
    let mut tasks = Vec::new();
    // The broker's own counters.
    {
        let (client, eventloop) = AsyncClient::new(options("bench-sys".into()), 16);
        client
            .try_subscribe("$SYS/broker/publish/messages/+", QoS::AtMostOnce)
            .context("subscribing to $SYS")?;
        tasks.push(tokio::spawn(poll(
            eventloop,
            client,
            stats.clone(),
            Role::Sys,
            stop.clone(),
        )));
    }
    let half = args.ramp / 2;
    for i in 0..n {
        let (client, eventloop) = AsyncClient::new(options(format!("bench-sub-{i}")), 16);
        client
            .try_subscribe(format!("{}/{i}", args.topic_prefix), QoS::AtMostOnce)
            .context("queueing a subscription")?;
        tasks.push(tokio::spawn(poll(
            eventloop,
            client,
            stats.clone(),
            Role::Subscriber,
            stop.clone(),
        )));
        tokio::time::sleep(half / n as u32).await;
    }
    // Publishers wait for every subscription, so each message has its reader.
    while stats.subacks.load(Ordering::Relaxed) < n as u64 {
        if stop.is_cancelled() || start.elapsed() > args.duration {
            anyhow::bail!(
                "only {} of {n} subscriptions acknowledged",
                stats.subacks.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut publishers = Vec::with_capacity(n);
    for i in 0..n {
        let (client, eventloop) = AsyncClient::new(options(format!("bench-pub-{i}")), 64);
        tasks.push(tokio::spawn(poll(
            eventloop,
            client.clone(),
            stats.clone(),
            Role::Publisher,
            stop.clone(),
        )));
        publishers.push((client, format!("{}/{i}", args.topic_prefix)));
        tokio::time::sleep(half / n as u32).await;
    }
    eprintln!(
        "[mqtt-load {:>5.0}s] {n} subscribers and {n} publishers connected",
        start.elapsed().as_secs_f64()
    );
    let publishing = Instant::now();
    let mut pacer = Pacer::new(n, args.interval);
    let mut progress = tokio::time::interval(args.progress_every);
    let mut stats_tick = tokio::time::interval(Duration::from_secs(1));
    let (mut last_recv, mut last_t) = (0u64, Instant::now());
    let end = start + args.duration;
    loop {
        let next = publishing
            + pacer
                .next_due()
                .max(publishing.elapsed() + Duration::from_millis(1));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(end.into()) => break,
            _ = stats_tick.tick(), if args.stats_file.is_some() => {
                let live = LiveStats {
                    unix_ms: nodekit::unix_ms(),
                    published: stats.published.load(Ordering::Relaxed),
                    received: stats.received.load(Ordering::Relaxed),
                    errors: stats.errors.total(),
                    broker_sys: stats.sys.lock().clone(),
                };
                if let Some(path) = &args.stats_file {
                    if let Err(e) = crate::report::write_stats(path, &live) {
                        tracing::warn!(error = %e, path = %path.display(), "writing the stats file");
                    }
                }
            }
            _ = progress.tick() => {
                let recv = stats.received.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (recv - last_recv) as f64 / now.duration_since(last_t).as_secs_f64();
                (last_recv, last_t) = (recv, now);
                eprintln!(
                    "[mqtt-load {:>5.0}s] published {} received {} ({:.0}/s) errors {}",
                    start.elapsed().as_secs_f64(),
                    stats.published.load(Ordering::Relaxed),
                    recv,
                    rate,
                    stats.errors.total(),
                );
            }
            _ = tokio::time::sleep_until(next.into()) => {
                for i in pacer.due(publishing.elapsed(), 4 * n) {
                    let (client, topic) = &publishers[i];
                    match client.try_publish(topic.as_str(), QoS::AtMostOnce, false, payload.clone()) {
                        Ok(()) => stats.published.fetch_add(1, Ordering::Relaxed),
                        Err(_) => stats.publish_errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let broker_sys = stats.sys.lock().clone();
    Ok(MqttLoadReport {
        publishers: n,
        interval_ms: args.interval.as_millis() as u64,
        payload_bytes: payload.len(),
        elapsed_s,
        published: stats.published.load(Ordering::Relaxed),
        publish_errors: stats.publish_errors.load(Ordering::Relaxed),
        received: stats.received.load(Ordering::Relaxed),
        subscriptions_acknowledged: stats.subacks.load(Ordering::Relaxed),
        errors: stats.errors.snapshot(),
        broker_sys,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Publisher,
    Subscriber,
    Sys,
}

/// Drives one client's event loop until `stop`, counting what matters for its role. rumqttc
/// reconnects on the next poll after an error; the pause keeps a dead broker from a busy loop.
async fn poll(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    stats: Arc<Stats>,
    role: Role,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => match role {
                Role::Sys => {
                    let value = String::from_utf8_lossy(&p.payload).into_owned();
                    stats.sys.lock().insert(p.topic, value);
                }
                _ => {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                }
            },
            Ok(Event::Incoming(Packet::SubAck(_))) if role == Role::Subscriber => {
                stats.subacks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                stats.errors.add(&error_label(&e));
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

fn error_label(e: &rumqttc::ConnectionError) -> String {
    use rumqttc::ConnectionError as E;
    match e {
        E::Io(io) => format!("io_{:?}", io.kind()).to_lowercase(),
        E::ConnectionRefused(code) => format!("refused_{code:?}").to_lowercase(),
        E::NetworkTimeout => "network_timeout".into(),
        other => {
            let text = other.to_string();
            text.split(':')
                .next()
                .unwrap_or("error")
                .trim()
                .to_lowercase()
        }
    }
}
