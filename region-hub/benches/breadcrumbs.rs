//! Breadcrumbs stored per second: batches of fixes committed to a temp history file, one durable
//! (fsync) write transaction per batch, with the minute compaction the hub's breadcrumb writer
//! runs after its commits (so the figure includes moving every breadcrumb into its chunk).
//!
//! `cargo bench -p region-hub --bench breadcrumbs` (criterion reports elements/s).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use protocol::DeliveryId;
use region_hub::durable::history::Breadcrumb;
use region_hub::durable::store::Store;
use std::time::Duration;

/// One writer commit: `size` breadcrumbs, the next deliveries in turn (of `deliveries`),
/// measured over the `span_ms` after `start_ts`.
fn batch(
    deliveries: u64,
    next: &mut u64,
    size: u64,
    start_ts: u64,
    span_ms: u64,
) -> Vec<Breadcrumb> {
    let v = (0..size)
        .map(|i| {
            let d = 1 + (*next + i) % deliveries;
            Breadcrumb {
                delivery_id: DeliveryId(d),
                ts_ms: start_ts + i * span_ms / size,
                lat: 60.17 + (d % 1000) as f64 * 1e-5,
                lng: 24.94,
                heading_deg: 90.0,
                speed_mps: 8.0,
                accuracy_m: 5.0,
            }
        })
        .collect();
    *next += size;
    v
}

fn breadcrumbs(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("trackline-bench-crumbs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir.join("hub.redb")).expect("open");
    store.ensure_history_tables().expect("tables");
    let mut group = c.benchmark_group("breadcrumbs_commit");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    let mut ts = 1_764_000_000_000u64;
    let mut next = 0u64;
    // (active deliveries, breadcrumbs per commit): the writer commits every 100 ms, so 1,250
    // per commit is the seed's 12,500 fixes/s (50,000 deliveries, a fix every 4 s each).
    for (deliveries, size) in [
        (1_000u64, 256u64),
        (1_000, 2_048),
        (50_000, 1_250),
        (50_000, 8_192),
    ] {
        group.throughput(Throughput::Elements(size));
        let id = BenchmarkId::new(format!("{deliveries}_deliveries"), size);
        group.bench_with_input(id, &size, |b, &size| {
            b.iter(|| {
                let crumbs = batch(deliveries, &mut next, size, ts, 100);
                ts += 100;
                store.append_breadcrumbs(&crumbs).expect("append");
                store.compact_breadcrumbs().expect("compact");
            })
        });
    }
    group.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, breadcrumbs);
criterion_main!(benches);
