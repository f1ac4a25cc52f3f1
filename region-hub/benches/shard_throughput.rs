//! How fast the hub's fix path runs, and how it scales with cores.
//!
//! Builds the hub's sharded delivery state ([`Shards`], the same code the shard workers run)
//! on the Helsinki road graph with `BENCH_DELIVERIES` deliveries, each watched by one
//! datagram consumer, and drivers that follow their planned routes (a fix every 4 s of
//! simulated time, ~10 m/s). The fixes are split by shard beforehand, as the edge links do;
//! then `BENCH_THREADS` worker threads apply them, each owning the shards `k` with
//! `k % threads == t`, as fast as they can. Prints fixes per second of wall time and per
//! second of the process's CPU (from /proc), for one run.
//!
//! The figure of issue 11 point 4 is the ratio of two runs of the same binary:
//!
//! ```text
//! taskset -c 0   target/release/deps/shard_throughput-*    # 1 core
//! taskset -c 0,1 target/release/deps/shard_throughput-*    # 2 cores
//! ```
//!
//! `scripts/bench-cores.sh` builds it, runs both and prints the ratio. Network I/O (quinn,
//! the kernel, WebSocket writes) is not in this figure: it measures the part of the hub that
//! used to run under one lock.

use protocol::api::CreateDelivery;
use protocol::geo::LatLng;
use protocol::wire::{Fix, RoutedFix};
use protocol::DriverId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use region_hub::tracking::deliveries::{CoreConfig, Deliveries, LogEntry};
use region_hub::tracking::fanout::{DatagramOut, DatagramSent};
use region_hub::tracking::shards::{FixEffects, ShardBatch, Shards};
use roadnet::{RoadGraph, SpeedModel};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

const T0_MS: u64 = 1_764_000_000_000;
const FIX_EVERY_MS: u64 = 4_000;
const DRIVER_SPEED_MPS: f64 = 10.0;
/// Fixes per batch from one edge link (the edge flushes every few ms).
const BATCH: usize = 64;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A consumer that takes every position as a datagram and only counts the bytes.
#[derive(Debug, Default)]
struct CountingConsumer(AtomicU64);

impl DatagramOut for CountingConsumer {
    fn send(&self, payload: &[u8]) -> DatagramSent {
        self.0.fetch_add(payload.len() as u64, Ordering::Relaxed);
        DatagramSent::Sent
    }
}

/// Process CPU seconds (user + system) from /proc/self/stat.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime), counted after the ')' as 12 and 13.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let deliveries = env("BENCH_DELIVERIES", 2_000);
    let shard_count = env("BENCH_SHARDS", 2);
    let threads = env("BENCH_THREADS", shard_count).max(1);
    let fixes_each = env("BENCH_FIXES_PER_DRIVER", 150);
    let graph = Arc::new(RoadGraph::default_city().expect("the embedded Helsinki graph loads"));
    let shards = Shards::new(
        shard_count,
        || {
            let mut core = Deliveries::new(CoreConfig::default());
            core.eta_model_mut().set_graph(graph.clone());
            core
        },
        4_096,
        SpeedModel::default(),
    );

    // Deliveries between random road nodes 1.5-5 km apart; each driver starts at its pickup.
    let mut rng = StdRng::seed_from_u64(7);
    let nodes = graph.nodes();
    let mut tracks = Vec::with_capacity(deliveries);
    let mut subscriptions = Vec::with_capacity(deliveries);
    while tracks.len() < deliveries {
        let a = nodes[rng.random_range(0..nodes.len())];
        let b = nodes[rng.random_range(0..nodes.len())];
        let Ok(route) = graph.route(a, b) else {
            continue;
        };
        if !(1_500.0..5_000.0).contains(&route.length_m) {
            continue;
        }
        let driver = DriverId(tracks.len() as u64 + 1);
        let req = CreateDelivery {
            delivery_id: None,
            pickup: LatLng::new(a.lat, a.lng),
            dropoff: LatLng::new(b.lat, b.lng),
            driver_id: Some(driver),
        };
        let (entry, queued) = shards
            .create(T0_MS, &req, |_: &LogEntry| Ok::<(), String>(()))
            .expect("created");
        queued.expect("queued");
        shards.commit(&entry);
        // One consumer per delivery, as each has its own connection.
        let consumer = Arc::new(CountingConsumer::default());
        let (_, sub) = shards
            .open(
                entry.delivery_id,
                T0_MS,
                "webtransport",
                Some(consumer.clone()),
            )
            .expect("subscribed");
        subscriptions.push((sub, consumer));
        tracks.push((driver, route));
    }

    // Every driver's fixes along its route, round by round, cut into edge-sized batches and
    // split by shard (the edge link's job, outside the timed part).
    let mut per_shard: Vec<Vec<(u64, ShardBatch)>> =
        (0..shards.count()).map(|_| Vec::new()).collect();
    let mut pending: Vec<RoutedFix> = Vec::with_capacity(BATCH);
    let mut total_fixes = 0u64;
    for round in 0..fixes_each as u64 {
        let ts_ms = T0_MS + round * FIX_EVERY_MS;
        for (i, (driver, route)) in tracks.iter().enumerate() {
            let along = (round as f64 * FIX_EVERY_MS as f64 / 1000.0 * DRIVER_SPEED_MPS)
                .min(route.length_m);
            let here = route.point_at(along).unwrap_or(route.points[0]);
            // Drivers report a little apart in time, as real phones do.
            let ts = ts_ms + (i as u64 * 7) % FIX_EVERY_MS;
            pending.push(RoutedFix {
                driver_id: *driver,
                fix: Fix::from_units(
                    round as u32,
                    ts,
                    here.lat,
                    here.lng,
                    0.0,
                    DRIVER_SPEED_MPS,
                    5.0,
                ),
                edge_rx_ms: ts,
            });
            if pending.len() == BATCH {
                total_fixes += pending.len() as u64;
                let routed = shards.route(&pending);
                for (k, b) in routed.batches.into_iter().enumerate() {
                    if !b.fixes.is_empty() {
                        per_shard[k].push((ts, b));
                    }
                }
                pending.clear();
            }
        }
    }

    let before_cpu = cpu_s();
    let started = Instant::now();
    let applied: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (shards, per_shard) = (&shards, &per_shard);
                s.spawn(move || {
                    let mut effects = FixEffects::default();
                    let mine: Vec<usize> =
                        (0..shards.count()).filter(|k| k % threads == t).collect();
                    let mut applied = 0u64;
                    // Interleave this thread's shards batch by batch, as a worker per shard
                    // sharing one thread would.
                    let longest = mine.iter().map(|&k| per_shard[k].len()).max().unwrap_or(0);
                    for i in 0..longest {
                        for &k in &mine {
                            if let Some((now_ms, batch)) = per_shard[k].get(i) {
                                shards.apply_fixes(
                                    k,
                                    *now_ms,
                                    batch,
                                    |_| Ok::<(), String>(()),
                                    &mut effects,
                                );
                                applied += batch.fixes.len() as u64;
                                effects.positions.clear();
                            }
                        }
                    }
                    applied
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker")).sum()
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_s() - before_cpu;
    let datagram_bytes: u64 = subscriptions
        .iter()
        .map(|(_, c)| c.0.load(Ordering::Relaxed))
        .sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "shard_throughput deliveries={deliveries} shards={} threads={threads} cores_allowed={cores} \
         fixes={applied} of {total_fixes} wall_s={wall:.3} cpu_s={cpu:.3} \
         fixes_per_s={:.0} fixes_per_cpu_s={:.0} datagram_bytes={}",
        shards.count(),
        applied as f64 / wall,
        applied as f64 / cpu.max(1e-9),
        datagram_bytes,
    );
}
