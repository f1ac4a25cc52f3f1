//! Routing behaviour: A* optimality and one-ways, the embedded Helsinki map, grid cities.

mod common;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use common::{at, SplitMix};
use roadnet::{haversine_m, polyline, GraphBuilder, NodeId, RoadClass, RoadGraph, Route};

/// A(0,0) -B(100,0)- C(200,0) along a slow residential street, and a fast primary detour
/// A - D(100,100) - C. `d_to_a_only` makes A-D one-way from D to A.
fn diamond(d_to_a_only: bool) -> (RoadGraph, [NodeId; 4]) {
    let mut b = GraphBuilder::new();
    let a = b.add_node(at(0.0, 0.0));
    let bb = b.add_node(at(100.0, 0.0));
    let c = b.add_node(at(200.0, 0.0));
    let d = b.add_node(at(100.0, 100.0));
    let slow = RoadClass::Residential.default_speed_mps();
    let fast = RoadClass::Primary.default_speed_mps();
    b.add_road(a, bb, RoadClass::Residential, slow, false);
    b.add_road(bb, c, RoadClass::Residential, slow, false);
    b.add_road(c, d, RoadClass::Primary, fast, false);
    if d_to_a_only {
        b.add_road(d, a, RoadClass::Primary, fast, true);
    } else {
        b.add_road(a, d, RoadClass::Primary, fast, false);
    }
    (
        b.build().expect("diamond is strongly connected"),
        [a, bb, c, d],
    )
}

fn route_nodes_visited(g: &RoadGraph, r: &Route) -> Vec<NodeId> {
    r.points.iter().map(|p| g.nearest_node(*p)).collect()
}

#[test]
fn a_star_prefers_the_faster_longer_detour() {
    let (g, [a, _, c, d]) = diamond(false);
    let r = g.route_nodes(a, c).expect("route");
    assert_eq!(route_nodes_visited(&g, &r), vec![a, d, c]);
    // 2 x 141.4 m at 50 km/h = 20.4 s, beating 200 m at 30 km/h = 24 s.
    assert!((r.length_m - 282.8).abs() < 1.0, "{}", r.length_m);
    assert!(
        (r.free_flow_time_s - 20.36).abs() < 0.1,
        "{}",
        r.free_flow_time_s
    );
}

#[test]
fn a_star_respects_one_ways() {
    let (g, [a, b, c, d]) = diamond(true);
    let there = g.route_nodes(a, c).expect("route");
    assert_eq!(route_nodes_visited(&g, &there), vec![a, b, c]);
    let back = g.route_nodes(c, a).expect("route");
    assert_eq!(route_nodes_visited(&g, &back), vec![c, d, a]);
}

#[test]
fn route_between_coordinates_snaps_to_nearest_nodes() {
    let (g, [a, _, c, _]) = diamond(false);
    let r = g.route(at(-10.0, 5.0), at(210.0, -3.0)).expect("route");
    assert_eq!(r.start(), Some(g.node(a)));
    assert_eq!(r.end(), Some(g.node(c)));
    let same = g.route(at(0.0, 0.0), at(1.0, 1.0)).expect("route");
    assert!(same.segments.is_empty() && same.length_m == 0.0);
}

/// Plain Dijkstra on free-flow time, as the reference for A*.
fn dijkstra_time_s(g: &RoadGraph, from: NodeId, to: NodeId) -> f64 {
    let mut dist = vec![f64::INFINITY; g.node_count()];
    let mut heap = BinaryHeap::new();
    dist[from.index()] = 0.0;
    heap.push(Reverse((0u64, from.0)));
    while let Some(Reverse((d_bits, u))) = heap.pop() {
        let d = f64::from_bits(d_bits);
        if d > dist[u as usize] {
            continue;
        }
        for e in g.edges_from(NodeId(u)) {
            let nd = d + e.travel_time_s();
            if nd < dist[e.to.index()] {
                dist[e.to.index()] = nd;
                heap.push(Reverse((nd.to_bits(), e.to.0)));
            }
        }
    }
    dist[to.index()]
}

#[test]
fn a_star_matches_dijkstra_on_a_grid_city() {
    let g = RoadGraph::grid_city(15, 15, 120.0, at(0.0, 0.0)).expect("grid");
    let mut rng = SplitMix(7);
    for _ in 0..40 {
        let a = NodeId(rng.below(g.node_count()) as u32);
        let b = NodeId(rng.below(g.node_count()) as u32);
        let r = g.route_nodes(a, b).expect("route");
        let best = dijkstra_time_s(&g, a, b);
        assert!(
            (r.free_flow_time_s - best).abs() < 1e-6,
            "{a:?}->{b:?}: {} vs {best}",
            r.free_flow_time_s
        );
    }
}

#[test]
fn grid_city_is_strongly_connected_with_one_ways_and_arterials() {
    let (rows, cols) = (20, 30);
    let g = RoadGraph::grid_city(rows, cols, 100.0, at(0.0, 0.0)).expect("grid");
    // Nothing was pruned as outside the largest strongly connected component.
    assert_eq!(g.node_count(), rows * cols);
    assert_eq!(g.pruned_node_count(), 0);
    assert!(g.edges().iter().any(|e| e.oneway));
    assert!(g.edges().iter().any(|e| e.class == RoadClass::Secondary));
    assert!(g.edges().iter().any(|e| e.class == RoadClass::Residential));
    let corners = [0, cols - 1, (rows - 1) * cols, rows * cols - 1];
    for &a in &corners {
        for &b in &corners {
            g.route_nodes(NodeId(a as u32), NodeId(b as u32))
                .expect("corner to corner");
        }
    }
}

#[test]
fn embedded_helsinki_map_loads_and_random_routes_succeed() {
    let g = RoadGraph::default_city().expect("embedded map loads");
    assert!(g.node_count() > 500, "only {} nodes", g.node_count());
    eprintln!(
        "helsinki: {} nodes, {} edges, {} nodes pruned",
        g.node_count(),
        g.edge_count(),
        g.pruned_node_count()
    );
    assert!(
        g.pruned_node_count() < g.node_count() / 4,
        "most of the map is connected"
    );
    assert!(g.edge_count() > g.node_count());
    let bbox = g.bbox();
    assert!(
        bbox.min.lng > 24.9 && bbox.max.lng < 25.0 && bbox.min.lat > 60.15 && bbox.max.lat < 60.19,
        "{bbox:?}"
    );
    assert!(
        g.edges().iter().any(|e| e.oneway),
        "Helsinki centre has one-way streets"
    );
    assert!(g.edges_geometry().count() < g.edge_count());
    let mut rng = SplitMix(42);
    for _ in 0..100 {
        let a = NodeId(rng.below(g.node_count()) as u32);
        let b = NodeId(rng.below(g.node_count()) as u32);
        let r = g
            .route_nodes(a, b)
            .expect("strongly connected: every pair routes");
        assert_eq!(r.start(), Some(g.node(a)));
        assert_eq!(r.end(), Some(g.node(b)));
        assert!(r.length_m + 1e-6 >= haversine_m(g.node(a), g.node(b)));
        let total: f64 = r.segments.iter().map(|s| s.length_m).sum();
        assert!((total - r.length_m).abs() < 1e-6);
    }
}

#[test]
fn concat_joins_legs_and_keeps_cumulative_distances() {
    let g = RoadGraph::default_city().expect("embedded map loads");
    let n = |i: usize| g.node(NodeId(i as u32));
    let leg1 = g.route(n(0), n(200)).expect("leg 1");
    let leg2 = g.route(n(200), n(400)).expect("leg 2");
    let plan = Route::concat(&[leg1.clone(), leg2.clone()]);
    assert_eq!(
        plan.segments.len(),
        leg1.segments.len() + leg2.segments.len()
    );
    assert!((plan.length_m - leg1.length_m - leg2.length_m).abs() < 1e-6);
    let pickup = &plan.segments[leg1.segments.len()];
    assert!((pickup.cum_start_m - leg1.length_m).abs() < 1e-6);
    assert_eq!(pickup.start, n(200));
    let encoded = polyline::encode(&plan.points);
    assert_eq!(
        polyline::decode(&encoded).map(|p| p.len()),
        Ok(plan.points.len())
    );
}
