//! Map-matching a GPS fix onto a route, preferring forward progress so that routes which double
//! back on the same street do not make the driver jump.

use rstar::primitives::{GeomWithData, Line};
use rstar::RTree;
use serde::{Deserialize, Serialize};

use crate::geo::{LatLng, LocalProjection};
use crate::route::Route;

/// Tuning of the [`RouteSnapper`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapConfig {
    /// Segments within this distance of a fix are candidates, in metres.
    pub radius_m: f64,
    /// A candidate this far behind the hint still counts as on track (GPS noise), in metres.
    pub back_tolerance_m: f64,
    /// Candidates whose offset is within this margin of the best one fit equally well; among
    /// them the first one at or after the hint wins, in metres.
    pub offset_margin_m: f64,
    /// A forward candidate farther ahead than this loses to one just behind the hint, in metres:
    /// a driver standing still on an out-and-back street stays on the leg they are on.
    pub max_forward_jump_m: f64,
}

impl Default for SnapConfig {
    fn default() -> Self {
        Self {
            radius_m: 60.0,
            back_tolerance_m: 25.0,
            offset_margin_m: 15.0,
            max_forward_jump_m: 250.0,
        }
    }
}

/// Where a fix lies relative to the route.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Snap {
    /// Distance along the route to the snapped point, in metres.
    pub progress_m: f64,
    /// Distance left to the end of the route, in metres.
    pub remaining_m: f64,
    /// Distance from the fix to the snapped point, in metres.
    pub offset_m: f64,
    /// Index of the segment snapped to.
    pub segment_index: usize,
    /// The snapped point on the route.
    pub point: LatLng,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    segment_index: usize,
    progress_m: f64,
    offset_m: f64,
    xy: [f64; 2],
}

/// Snaps fixes to one route. Build it once per route; snapping is a few R-tree look-ups.
#[derive(Debug, Clone)]
pub struct RouteSnapper {
    config: SnapConfig,
    projection: LocalProjection,
    tree: RTree<GeomWithData<Line<[f64; 2]>, usize>>,
    /// (cum_start_m, length_m) per segment.
    spans: Vec<(f64, f64)>,
    length_m: f64,
}

impl RouteSnapper {
    /// A snapper with the default [`SnapConfig`].
    pub fn new(route: &Route) -> Self {
        Self::with_config(route, SnapConfig::default())
    }

    /// A snapper with explicit tuning.
    pub fn with_config(route: &Route, config: SnapConfig) -> Self {
        let origin = route.start().unwrap_or(LatLng::new(0.0, 0.0));
        let projection = LocalProjection::new(origin);
        let tree = RTree::bulk_load(
            route
                .segments
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let line = Line::new(projection.project(s.start), projection.project(s.end));
                    GeomWithData::new(line, i)
                })
                .collect(),
        );
        let spans = route
            .segments
            .iter()
            .map(|s| (s.cum_start_m, s.length_m))
            .collect();
        Self {
            config,
            projection,
            tree,
            spans,
            length_m: route.length_m,
        }
    }

    /// The tuning in use.
    pub fn config(&self) -> &SnapConfig {
        &self.config
    }

    fn candidate(&self, seg: &GeomWithData<Line<[f64; 2]>, usize>, p: [f64; 2]) -> Candidate {
        let line = seg.geom();
        let (a, b) = (line.from, line.to);
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let len2 = dx * dx + dy * dy;
        let t = if len2 > 0.0 {
            (((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let xy = [a[0] + t * dx, a[1] + t * dy];
        let offset_m = ((p[0] - xy[0]).powi(2) + (p[1] - xy[1]).powi(2)).sqrt();
        let (cum, len) = self.spans[seg.data];
        Candidate {
            segment_index: seg.data,
            progress_m: cum + t * len,
            offset_m,
            xy,
        }
    }

    /// Snap `pos` given the progress of the previous snap (`hint_progress_m`, 0 at the start).
    ///
    /// Candidates are segments within `radius_m` that are not more than `back_tolerance_m`
    /// behind the hint and that fit about as well as the best of them (`offset_margin_m`). The
    /// first candidate at or after the hint picks the pass of the route the driver is on, unless
    /// it is more than `max_forward_jump_m` ahead and a candidate lies behind the hint, which
    /// then picks it; within `radius_m` of route distance from that one, the closest segment
    /// wins. With no candidate the nearest segment wins, wherever it is on the route. Returns
    /// `None` for an empty route.
    pub fn snap(&self, pos: LatLng, hint_progress_m: f64) -> Option<Snap> {
        let p = self.projection.project(pos);
        let r2 = self.config.radius_m * self.config.radius_m;
        let floor_m = hint_progress_m - self.config.back_tolerance_m;
        let qualifying: Vec<Candidate> = self
            .tree
            .locate_within_distance(p, r2)
            .map(|seg| self.candidate(seg, p))
            .filter(|c| c.progress_m >= floor_m)
            .collect();
        let chosen = if qualifying.is_empty() {
            let seg = self.tree.nearest_neighbor(p)?;
            self.candidate(seg, p)
        } else {
            let best = qualifying
                .iter()
                .map(|c| c.offset_m)
                .fold(f64::INFINITY, f64::min);
            let good = qualifying
                .iter()
                .filter(|c| c.offset_m <= best + self.config.offset_margin_m);
            // The pass of the route the driver is on: the first good candidate at or after the
            // hint, unless it is an implausible jump ahead and one lies just behind (noise
            // while standing still); else the last one behind the hint.
            let forward = good
                .clone()
                .filter(|c| c.progress_m >= hint_progress_m)
                .min_by(|a, b| a.progress_m.total_cmp(&b.progress_m));
            let backward = good
                .clone()
                .filter(|c| c.progress_m < hint_progress_m)
                .max_by(|a, b| a.progress_m.total_cmp(&b.progress_m));
            let anchor = match (forward, backward) {
                (Some(f), Some(b))
                    if f.progress_m - hint_progress_m > self.config.max_forward_jump_m =>
                {
                    Some(b)
                }
                (Some(f), _) => Some(f),
                (None, b) => b,
            };
            let (lo, hi) = match anchor {
                Some(c) if c.progress_m >= hint_progress_m => {
                    (c.progress_m, c.progress_m + self.config.radius_m)
                }
                Some(c) => (c.progress_m - self.config.radius_m, c.progress_m),
                None => (f64::NEG_INFINITY, f64::INFINITY),
            };
            // Within that pass, the best fit (adjacent segments meet at a vertex; the segment
            // the fix is really on fits better than the clamped end of its neighbour).
            *good
                .filter(|c| (lo..=hi).contains(&c.progress_m))
                .min_by(|a, b| {
                    a.offset_m
                        .total_cmp(&b.offset_m)
                        .then(a.progress_m.total_cmp(&b.progress_m))
                })
                .unwrap_or(&qualifying[0])
        };
        Some(Snap {
            progress_m: chosen.progress_m,
            remaining_m: (self.length_m - chosen.progress_m).max(0.0),
            offset_m: chosen.offset_m,
            segment_index: chosen.segment_index,
            point: self.projection.unproject(chosen.xy),
        })
    }
}
