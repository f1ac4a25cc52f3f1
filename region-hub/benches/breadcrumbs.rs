//! Breadcrumbs stored per second: batches of fixes committed to a temp redb file, one durable
//! (fsync) write transaction per batch, as the hub's breadcrumb writer does.
//!
//! `cargo bench -p region-hub --bench breadcrumbs` (criterion reports elements/s).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use protocol::DeliveryId;
use region_hub::durable::history::Breadcrumb;
use region_hub::durable::store::Store;
use std::time::Duration;

fn batch(deliveries: u64, size: u64, start_ts: u64) -> Vec<Breadcrumb> {
    (0..size)
        .map(|i| Breadcrumb {
            delivery_id: DeliveryId(1 + i % deliveries),
            ts_ms: start_ts + i / deliveries,
            lat: 60.17 + (i % 1000) as f64 * 1e-5,
            lng: 24.94,
            heading_deg: 90.0,
            speed_mps: 8.0,
            accuracy_m: 5.0,
        })
        .collect()
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
    // 1,000 active deliveries; a batch is what the writer gathers in one flush.
    for size in [256u64, 2_048, 8_192] {
        group.throughput(Throughput::Elements(size));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter(|| {
                let crumbs = batch(1_000, size, ts);
                ts += size;
                store.append_breadcrumbs(&crumbs).expect("append");
            })
        });
    }
    group.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, breadcrumbs);
criterion_main!(benches);
