//! Road trips for the load generators (`load` and `scale`): endpoints on the road network and
//! the timed path a driver follows, computed as the hub plans it (`roadnet`, driver ->
//! pickup -> drop-off), so drivers stay on the hub's route except for the wrong turns asked for.

use crate::truth::{plan_trip, Timeline, TruthConfig, TruthModel};
use anyhow::Context;
use rand::Rng;
use roadnet::{haversine_m, LatLng, RoadGraph};
use std::sync::Arc;

/// A wrong turn heads for a road node at least this far from the plan, metres (the hub
/// re-routes beyond 500 m).
pub const MIN_DETOUR_M: f64 = 650.0;

/// The road network and the true speeds on it.
pub struct TripPlanner {
    graph: RoadGraph,
    truth: TruthModel,
}

impl std::fmt::Debug for TripPlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TripPlanner({} nodes)", self.graph.node_count())
    }
}

impl TripPlanner {
    /// The hub's default city (central Helsinki from OpenStreetMap).
    pub fn helsinki(seed: u64, dwell_mean_s: f64) -> anyhow::Result<Self> {
        let graph = RoadGraph::default_city().context("loading the built-in road network")?;
        Ok(Self::new(graph, seed, dwell_mean_s))
    }

    pub fn new(graph: RoadGraph, seed: u64, dwell_mean_s: f64) -> Self {
        let truth = TruthModel::new(
            TruthConfig {
                seed,
                dwell_mean_s,
                dwell_jitter_s: dwell_mean_s / 4.0,
                ..TruthConfig::default()
            },
            &graph,
        );
        Self { graph, truth }
    }

    pub fn graph(&self) -> &RoadGraph {
        &self.graph
    }

    /// A random road node.
    pub fn random_node(&self, rng: &mut impl Rng) -> LatLng {
        let nodes = self.graph.nodes();
        nodes[rng.random_range(0..nodes.len())]
    }

    /// A pickup and a drop-off for a driver at `from`: each leg (straight line) between
    /// `min_leg_m` and `max_leg_m` long when the city allows it.
    pub fn pick_stops(
        &self,
        rng: &mut impl Rng,
        from: LatLng,
        min_leg_m: f64,
        max_leg_m: f64,
    ) -> (LatLng, LatLng) {
        let ok = |a: LatLng, b: LatLng| (min_leg_m..=max_leg_m).contains(&haversine_m(a, b));
        let mut best = (self.random_node(rng), self.random_node(rng));
        for _ in 0..200 {
            let (p, d) = (self.random_node(rng), self.random_node(rng));
            best = (p, d);
            if ok(from, p) && ok(p, d) {
                break;
            }
        }
        best
    }

    /// The timed trip from `from` via `pickup` to `dropoff` (the hub's plan, or with a wrong
    /// turn more than [`MIN_DETOUR_M`] off it), starting at `start_unix_s`.
    pub fn plan(
        &self,
        rng: &mut impl Rng,
        from: LatLng,
        pickup: LatLng,
        dropoff: LatLng,
        start_unix_s: f64,
        wrong_turn: bool,
    ) -> anyhow::Result<Arc<Timeline>> {
        let plan = plan_trip(
            &self.graph,
            &self.truth,
            rng,
            from,
            pickup,
            dropoff,
            start_unix_s,
            wrong_turn,
            MIN_DETOUR_M,
        )?;
        Ok(Arc::new(plan.timeline))
    }
}

/// The fix a driver on `timeline` sends at `rel_s` seconds into it (exact position: the
/// hub's plan starts where the first fix is).
pub fn fix_at(timeline: &Timeline, rel_s: f64, ts_ms: u64) -> protocol::wire::Fix {
    let p = timeline.at(rel_s.max(0.0));
    protocol::wire::Fix::from_units(
        0,
        ts_ms,
        p.pos.lat,
        p.pos.lng,
        p.heading_deg,
        p.speed_mps,
        5.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_planned_trip_starts_at_the_driver_and_ends_at_the_dropoff_on_the_hubs_route() {
        let g = RoadGraph::grid_city(20, 20, 100.0, LatLng::new(60.164, 24.935)).expect("grid");
        let planner = TripPlanner::new(g, 3, 60.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let from = planner.random_node(&mut rng);
        let (pickup, dropoff) = planner.pick_stops(&mut rng, from, 300.0, f64::MAX);
        let tl = planner
            .plan(&mut rng, from, pickup, dropoff, 1.7e9, false)
            .expect("trip");
        let first = fix_at(&tl, 0.0, 1);
        assert!(haversine_m(first.position(), from) < 0.1);
        assert!(haversine_m(tl.at(tl.duration_s + 1.0).pos, dropoff) < 1.0);
        // Every fix is on the hub's route (driver -> pickup -> drop-off): never far from it.
        let route = roadnet::Route::concat(&[
            planner.graph().route(from, pickup).expect("leg"),
            planner.graph().route(pickup, dropoff).expect("leg"),
        ]);
        let snapper = roadnet::RouteSnapper::new(&route);
        let worst = (0..tl.duration_s as u64)
            .step_by(4)
            .map(|t| {
                let p = fix_at(&tl, t as f64, 0).position();
                snapper
                    .snap(LatLng::new(p.lat, p.lng), 0.0)
                    .map_or(f64::MAX, |s| s.offset_m)
            })
            .fold(0.0, f64::max);
        assert!(worst < 1.0, "{worst} m off the planned route");
    }
}
