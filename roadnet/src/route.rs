//! Fastest-path routing (A* on free-flow travel time) and the `Route` a delivery follows.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use crate::geo::{haversine_m, LatLng};
use crate::graph::{NodeId, RoadClass, RoadGraph};
use crate::RoadError;

/// One straight piece of a route.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RouteSegment {
    /// Where the piece starts.
    pub start: LatLng,
    /// Where the piece ends.
    pub end: LatLng,
    /// Length in metres.
    pub length_m: f64,
    /// Distance along the route to `start`, in metres.
    pub cum_start_m: f64,
    /// Road class.
    pub class: RoadClass,
    /// Free-flow speed (tagged maxspeed or class default), in m/s.
    pub free_speed_mps: f64,
}

/// A driveable path: the polyline and its segments with cumulative distances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Polyline vertices: the start of every segment, then the end of the last one.
    pub points: Vec<LatLng>,
    /// The segments, in driving order.
    pub segments: Vec<RouteSegment>,
    /// Total length in metres.
    pub length_m: f64,
    /// Total travel time at free-flow speeds, in seconds.
    pub free_flow_time_s: f64,
}

/// A piece of road handed to [`Route::from_pieces`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutePiece {
    /// End of the piece (its start is the previous piece's end or the route start).
    pub to: LatLng,
    /// Road class.
    pub class: RoadClass,
    /// Free-flow speed in m/s.
    pub free_speed_mps: f64,
}

impl Route {
    /// A route that starts at `start` and follows `pieces`; zero-length pieces are dropped.
    pub fn from_pieces(start: LatLng, pieces: impl IntoIterator<Item = RoutePiece>) -> Route {
        let mut points = vec![start];
        let mut segments = Vec::new();
        let (mut length_m, mut free_flow_time_s) = (0.0, 0.0);
        let mut at = start;
        for piece in pieces {
            let seg_len = haversine_m(at, piece.to);
            if seg_len <= 0.0 {
                continue;
            }
            segments.push(RouteSegment {
                start: at,
                end: piece.to,
                length_m: seg_len,
                cum_start_m: length_m,
                class: piece.class,
                free_speed_mps: piece.free_speed_mps,
            });
            length_m += seg_len;
            free_flow_time_s += seg_len / piece.free_speed_mps;
            points.push(piece.to);
            at = piece.to;
        }
        Route {
            points,
            segments,
            length_m,
            free_flow_time_s,
        }
    }

    /// Join legs end to end (driver -> pickup -> dropoff). Segment indices of leg `k` start at
    /// the sum of the segment counts of the legs before it. A gap between a leg's end and the
    /// next leg's start is bridged by a straight unclassified segment.
    pub fn concat(legs: &[Route]) -> Route {
        let Some(first) = legs.first() else {
            return Route {
                points: Vec::new(),
                segments: Vec::new(),
                length_m: 0.0,
                free_flow_time_s: 0.0,
            };
        };
        let start = first
            .points
            .first()
            .copied()
            .unwrap_or(LatLng::new(0.0, 0.0));
        let bridge_speed = RoadClass::Unclassified.default_speed_mps();
        let pieces = legs.iter().enumerate().flat_map(|(i, leg)| {
            let bridge = (i > 0)
                .then(|| leg.points.first().copied())
                .flatten()
                .map(|to| RoutePiece {
                    to,
                    class: RoadClass::Unclassified,
                    free_speed_mps: bridge_speed,
                });
            bridge
                .into_iter()
                .chain(leg.segments.iter().map(|s| RoutePiece {
                    to: s.end,
                    class: s.class,
                    free_speed_mps: s.free_speed_mps,
                }))
        });
        Route::from_pieces(start, pieces)
    }

    /// Start of the route, if it has any point.
    pub fn start(&self) -> Option<LatLng> {
        self.points.first().copied()
    }

    /// End of the route, if it has any point.
    pub fn end(&self) -> Option<LatLng> {
        self.points.last().copied()
    }

    /// The index of the segment containing `progress_m` (clamped to the route).
    pub fn segment_at(&self, progress_m: f64) -> Option<usize> {
        if self.segments.is_empty() {
            return None;
        }
        let i = self
            .segments
            .partition_point(|s| s.cum_start_m <= progress_m);
        Some(i.saturating_sub(1))
    }

    /// The position `progress_m` metres along the route (clamped to its ends); simulators
    /// drive along a route with this.
    pub fn point_at(&self, progress_m: f64) -> Option<LatLng> {
        let Some(i) = self.segment_at(progress_m) else {
            return self.start();
        };
        let s = &self.segments[i];
        let t = ((progress_m - s.cum_start_m) / s.length_m).clamp(0.0, 1.0);
        Some(LatLng::new(
            s.start.lat + (s.end.lat - s.start.lat) * t,
            s.start.lng + (s.end.lng - s.start.lng) * t,
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct QueueEntry {
    f_s: f64,
    node: u32,
}

impl Eq for QueueEntry {}

impl Ord for QueueEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on f; ties broken by node id for determinism.
        other
            .f_s
            .total_cmp(&self.f_s)
            .then_with(|| other.node.cmp(&self.node))
    }
}

impl PartialOrd for QueueEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl RoadGraph {
    /// Fastest route between the nodes nearest to `from` and `to`.
    pub fn route(&self, from: LatLng, to: LatLng) -> Result<Route, RoadError> {
        if !from.is_valid() || !to.is_valid() {
            return Err(RoadError::InvalidCoordinate { from, to });
        }
        self.route_nodes(self.nearest_node(from), self.nearest_node(to))
    }

    /// Fastest route (free-flow travel time) between two nodes, by A* with the admissible
    /// heuristic great-circle distance / the graph's highest speed.
    pub fn route_nodes(&self, from: NodeId, to: NodeId) -> Result<Route, RoadError> {
        let n = self.node_count();
        if from.index() >= n || to.index() >= n {
            return Err(RoadError::UnknownNode {
                node: from.max(to).0,
                node_count: n,
            });
        }
        let goal = self.node(to);
        let inv_speed = 1.0 / self.max_speed_mps();
        let mut g_s = vec![f64::INFINITY; n];
        // Edge index used to reach each node.
        let mut via = vec![u32::MAX; n];
        let mut heap = BinaryHeap::new();
        g_s[from.index()] = 0.0;
        heap.push(QueueEntry {
            f_s: haversine_m(self.node(from), goal) * inv_speed,
            node: from.0,
        });
        let edges = self.edges();
        let mut found = from == to;
        while let Some(QueueEntry { f_s, node }) = heap.pop() {
            if node == to.0 {
                found = true;
                break;
            }
            let u = node as usize;
            let g = g_s[u];
            // Stale entry: a shorter path to `node` was already expanded.
            if f_s > g + haversine_m(self.nodes()[u], goal) * inv_speed + 1e-9 {
                continue;
            }
            for ei in self.out_edge_range(NodeId(node)) {
                let e = &edges[ei];
                let v = e.to.index();
                let cand = g + e.travel_time_s();
                if cand < g_s[v] {
                    g_s[v] = cand;
                    via[v] = ei as u32;
                    heap.push(QueueEntry {
                        f_s: cand + haversine_m(self.nodes()[v], goal) * inv_speed,
                        node: e.to.0,
                    });
                }
            }
        }
        if !found {
            return Err(RoadError::NoRoute {
                from: self.node(from),
                to: goal,
            });
        }
        let mut path = Vec::new();
        let mut at = to.index();
        while at != from.index() {
            let e = &edges[via[at] as usize];
            path.push(e);
            at = e.from.index();
        }
        path.reverse();
        Ok(Route::from_pieces(
            self.node(from),
            path.into_iter().map(|e| RoutePiece {
                to: self.node(e.to),
                class: e.class,
                free_speed_mps: e.speed_mps,
            }),
        ))
    }
}
