//! Cost per fix of the edge's hot path: decode a driver datagram, then run the filter.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edge_node::filter::{FilterConfig, FixFilter};
use protocol::geo::{destination, LatLng};
use protocol::wire::{decode_driver_datagram, encode_fix_datagram, Fix};
use protocol::DriverId;
use std::hint::black_box;

const DRIVERS: u64 = 1_000;
const FIXES_PER_DRIVER: u32 = 100;
const T0_MS: u64 = 1_764_000_000_000;

/// 1,000 drivers driving 1 Hz tracks around Helsinki at ~40 km/h, interleaved as they arrive.
fn datagrams() -> Vec<(DriverId, Vec<u8>, u64)> {
    let mut positions: Vec<LatLng> = (0..DRIVERS)
        .map(|d| {
            LatLng::new(
                60.16 + (d % 40) as f64 * 0.0005,
                24.93 + (d / 40) as f64 * 0.0005,
            )
        })
        .collect();
    let mut out = Vec::with_capacity((DRIVERS * u64::from(FIXES_PER_DRIVER)) as usize);
    for i in 1..=FIXES_PER_DRIVER {
        let ts = T0_MS + u64::from(i) * 1000;
        for (d, pos) in positions.iter_mut().enumerate() {
            *pos = destination(*pos, (d * 37 % 360) as f64, 11.0);
            let fix = Fix::from_units(i, ts, pos.lat, pos.lng, 90.0, 11.0, 6.0);
            out.push((DriverId(d as u64), encode_fix_datagram(&fix), ts + 120));
        }
    }
    out
}

fn decode_filter(c: &mut Criterion) {
    let track = datagrams();
    let mut group = c.benchmark_group("edge");
    group.throughput(Throughput::Elements(track.len() as u64));
    group.bench_function("decode_and_filter_per_fix", |b| {
        b.iter(|| {
            let mut filter = FixFilter::new(FilterConfig::default());
            let mut accepted = 0u32;
            for (driver, bytes, now_ms) in &track {
                for fix in decode_driver_datagram(black_box(bytes)).unwrap_or_default() {
                    if filter.check(*driver, &fix, *now_ms).is_ok() {
                        accepted += 1;
                    }
                }
            }
            assert_eq!(accepted as usize, track.len());
            accepted
        })
    });
    group.finish();
}

criterion_group!(benches, decode_filter);
criterion_main!(benches);
