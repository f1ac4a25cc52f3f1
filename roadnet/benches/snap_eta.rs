//! Cost of one fix in the hub: snap + ETA along a real Helsinki route.

use criterion::{criterion_group, criterion_main, Criterion};
use roadnet::{EtaConfig, EtaEngine, NodeId, RoadGraph, Route, SpeedModel};
use std::hint::black_box;

fn longest_of_some_routes(g: &RoadGraph) -> Route {
    let n = g.node_count() as u32;
    let mut best: Option<Route> = None;
    for i in 0..20u32 {
        let a = NodeId((i * 7919) % n);
        let b = NodeId((i * 104_729 + n / 2) % n);
        if let Ok(r) = g.route_nodes(a, b) {
            if best.as_ref().is_none_or(|x| r.length_m > x.length_m) {
                best = Some(r);
            }
        }
    }
    best.expect("Helsinki routes exist")
}

fn bench(c: &mut Criterion) {
    let g = RoadGraph::default_city().expect("embedded map");
    let route = longest_of_some_routes(&g);
    let pickup = route.segments.len() / 2;
    // Fixes every 10 m along the route, 5 m off to one side.
    let fixes: Vec<_> = (0..)
        .map(|i| f64::from(i) * 10.0)
        .take_while(|m| *m <= route.length_m)
        .filter_map(|m| route.point_at(m))
        .map(|p| roadnet::LatLng::new(p.lat + 0.000_045, p.lng))
        .collect();
    let model = SpeedModel::default();
    eprintln!(
        "route: {:.0} m, {} segments, {} fixes per pass",
        route.length_m,
        route.segments.len(),
        fixes.len()
    );
    // A model that has learnt every cell of the city for every hour, with live traffic.
    let mut trained = SpeedModel::default();
    let now0 = 1_704_067_200.0;
    for p in g.nodes() {
        for hour in 0..roadnet::speed::HOURS_PER_WEEK {
            trained.observe_at(*p, hour, 7.0);
        }
        for k in 0..5 {
            trained.observe_live(*p, now0 + f64::from(k), 5.0, 8.0);
        }
    }
    eprintln!(
        "trained model: {} (cell, hour) rows",
        trained.historical_len()
    );
    c.bench_function("snap_eta/handle_fix_trained_model", |b| {
        let mut eta = EtaEngine::new(route.clone(), Some(pickup), EtaConfig::default());
        let mut i = 0usize;
        let mut now = now0 + 10.0;
        b.iter(|| {
            if i == fixes.len() {
                eta = EtaEngine::new(route.clone(), Some(pickup), EtaConfig::default());
                i = 0;
            }
            now += 0.001;
            let u = eta.handle_fix(now, fixes[i], &trained);
            i += 1;
            black_box(u)
        });
    });
    c.bench_function("snap_eta/handle_fix", |b| {
        let mut eta = EtaEngine::new(route.clone(), Some(pickup), EtaConfig::default());
        let mut i = 0usize;
        let mut now = 1_704_067_200.0;
        b.iter(|| {
            if i == fixes.len() {
                eta = EtaEngine::new(route.clone(), Some(pickup), EtaConfig::default());
                i = 0;
            }
            now += 1.0;
            let u = eta.handle_fix(now, fixes[i], &model);
            i += 1;
            black_box(u)
        });
    });
    c.bench_function("snap_eta/engine_new", |b| {
        b.iter(|| {
            black_box(EtaEngine::new(
                route.clone(),
                Some(pickup),
                EtaConfig::default(),
            ))
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
