//! Cost of planning a delivery: route driver -> pickup -> dropoff between random points in Helsinki.

use criterion::{criterion_group, criterion_main, Criterion};
use roadnet::{LatLng, RoadGraph, Route};
use std::hint::black_box;

/// splitmix64, so the bench needs no extra crate.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn bench(c: &mut Criterion) {
    let g = RoadGraph::default_city().expect("embedded map");
    let bbox = g.bbox();
    let mut rng = SplitMix(1);
    let mut point = || {
        LatLng::new(
            bbox.min.lat + rng.next_f64() * (bbox.max.lat - bbox.min.lat),
            bbox.min.lng + rng.next_f64() * (bbox.max.lng - bbox.min.lng),
        )
    };
    let trips: Vec<[LatLng; 3]> = (0..256).map(|_| [point(), point(), point()]).collect();
    eprintln!("graph: {} nodes, {} edges", g.node_count(), g.edge_count());
    let mut i = 0usize;
    c.bench_function("route_dispatch/driver_pickup_dropoff", |b| {
        b.iter(|| {
            let [driver, pickup, dropoff] = trips[i % trips.len()];
            i += 1;
            let to_pickup = g.route(driver, pickup).expect("connected");
            let to_dropoff = g.route(pickup, dropoff).expect("connected");
            black_box(Route::concat(&[to_pickup, to_dropoff]))
        });
    });
    // Scale: a 100 x 100 grid city (10,000 intersections, 10 km x 10 km at 100 m spacing).
    let grid = RoadGraph::grid_city(100, 100, 100.0, LatLng::new(60.1, 24.8)).expect("grid city");
    let gb = grid.bbox();
    let grid_trips: Vec<[LatLng; 2]> = (0..256)
        .map(|_| {
            let mut p = || {
                LatLng::new(
                    gb.min.lat + rng.next_f64() * (gb.max.lat - gb.min.lat),
                    gb.min.lng + rng.next_f64() * (gb.max.lng - gb.min.lng),
                )
            };
            [p(), p()]
        })
        .collect();
    let mut j = 0usize;
    c.bench_function("route_dispatch/grid_city_100x100_one_leg", |b| {
        b.iter(|| {
            let [from, to] = grid_trips[j % grid_trips.len()];
            j += 1;
            black_box(grid.route(from, to).expect("connected").length_m)
        });
    });
    c.bench_function("route_dispatch/load_helsinki_pbf", |b| {
        b.iter(|| {
            black_box(
                RoadGraph::default_city()
                    .expect("embedded map")
                    .node_count(),
            )
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
