//! Map-matching a GPS fix onto a route, preferring forward progress so that routes which double
//! back on the same street do not make the driver jump.

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
    /// The fix projects before the segment's start: the candidate is that vertex, which the
    /// previous segment also ends at.
    at_start: bool,
}

/// Segments per bounding box of the coarse index.
const BLOCK: usize = 16;

/// Snaps fixes to one route. Build it once per route. It keeps the route's vertices projected
/// to local metres as `f32` (millimetre precision over a city) with the distance along the route
/// to each, and a bounding box per [`BLOCK`] segments to skip most of them: ~12 bytes a segment,
/// where an R-tree of the segments took ~80. A hub holds one per active delivery.
#[derive(Debug, Clone)]
pub struct RouteSnapper {
    config: SnapConfig,
    projection: LocalProjection,
    /// Projected vertices: the start of every segment, then the end of the last one.
    xy: Vec<[f32; 2]>,
    /// Distance along the route to each vertex, in metres.
    cum_m: Vec<f32>,
    /// `[min x, min y, max x, max y]` of each block of segments.
    blocks: Vec<[f32; 4]>,
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
        let p32 = |p: LatLng| {
            let [x, y] = projection.project(p);
            [x as f32, y as f32]
        };
        let mut xy: Vec<[f32; 2]> = route.segments.iter().map(|s| p32(s.start)).collect();
        let mut cum_m: Vec<f32> = route
            .segments
            .iter()
            .map(|s| s.cum_start_m as f32)
            .collect();
        if let Some(last) = route.segments.last() {
            xy.push(p32(last.end));
            cum_m.push((last.cum_start_m + last.length_m) as f32);
        }
        xy.shrink_to_fit();
        cum_m.shrink_to_fit();
        let n = route.segments.len();
        let blocks = (0..n)
            .step_by(BLOCK)
            .map(|first| {
                let last = (first + BLOCK).min(n);
                xy[first..=last]
                    .iter()
                    .fold([f32::MAX, f32::MAX, f32::MIN, f32::MIN], |b, p| {
                        [
                            b[0].min(p[0]),
                            b[1].min(p[1]),
                            b[2].max(p[0]),
                            b[3].max(p[1]),
                        ]
                    })
            })
            .collect();
        Self {
            config,
            projection,
            xy,
            cum_m,
            blocks,
            length_m: route.length_m,
        }
    }

    /// Number of segments.
    pub fn segments(&self) -> usize {
        self.xy.len().saturating_sub(1)
    }

    /// Distance along the route to the start of segment `i`, and its length, in metres.
    pub fn span(&self, i: usize) -> Option<(f64, f64)> {
        let a = *self.cum_m.get(i)?;
        let b = *self.cum_m.get(i + 1)?;
        Some((f64::from(a), f64::from(b - a)))
    }

    /// The index of the segment containing `progress_m` (clamped to the route).
    pub fn segment_at(&self, progress_m: f64) -> Option<usize> {
        let n = self.segments();
        if n == 0 {
            return None;
        }
        let p = progress_m as f32;
        Some(self.cum_m[1..n].partition_point(|c| *c <= p))
    }

    /// Where the route starts.
    pub fn start(&self) -> Option<LatLng> {
        self.xy.first().map(|p| {
            self.projection
                .unproject([f64::from(p[0]), f64::from(p[1])])
        })
    }

    fn candidate(&self, i: usize, p: [f64; 2]) -> Candidate {
        let a = [f64::from(self.xy[i][0]), f64::from(self.xy[i][1])];
        let b = [f64::from(self.xy[i + 1][0]), f64::from(self.xy[i + 1][1])];
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let len2 = dx * dx + dy * dy;
        let t = if len2 > 0.0 {
            (((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let at_start = t <= 0.0;
        let xy = [a[0] + t * dx, a[1] + t * dy];
        let offset_m = ((p[0] - xy[0]).powi(2) + (p[1] - xy[1]).powi(2)).sqrt();
        let (cum, len) = self.span(i).unwrap_or((0.0, 0.0));
        Candidate {
            segment_index: i,
            progress_m: (cum + t * len).clamp(0.0, self.length_m),
            offset_m,
            xy,
            at_start,
        }
    }

    /// Squared distance from `p` to block `k`'s bounding box.
    fn block_dist2(&self, k: usize, p: [f64; 2]) -> f64 {
        let b = self.blocks[k];
        let dx = (f64::from(b[0]) - p[0])
            .max(p[0] - f64::from(b[2]))
            .max(0.0);
        let dy = (f64::from(b[1]) - p[1])
            .max(p[1] - f64::from(b[3]))
            .max(0.0);
        dx * dx + dy * dy
    }

    /// Segments within `r` metres of `p`, in route order. A segment whose candidate is its
    /// start vertex is left out when the previous segment is a candidate too: that vertex is
    /// the previous segment's to represent (its nearest point is at least as close), so that a
    /// fix just behind a vertex does not look like progress up to the vertex.
    fn within(&self, p: [f64; 2], r: f64) -> Vec<Candidate> {
        let n = self.segments();
        let mut out: Vec<Candidate> = Vec::with_capacity(8);
        for k in (0..self.blocks.len()).filter(|&k| self.block_dist2(k, p) <= r * r) {
            for i in k * BLOCK..((k + 1) * BLOCK).min(n) {
                let c = self.candidate(i, p);
                if c.offset_m > r {
                    continue;
                }
                let previous_too = out
                    .last()
                    .is_some_and(|prev| prev.segment_index + 1 == c.segment_index);
                if c.at_start && previous_too {
                    continue;
                }
                out.push(c);
            }
        }
        out
    }

    /// The segment nearest to `p`, wherever it is on the route.
    fn nearest(&self, p: [f64; 2]) -> Option<Candidate> {
        let n = self.segments();
        let mut order: Vec<(f64, usize)> = (0..self.blocks.len())
            .map(|k| (self.block_dist2(k, p), k))
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut best: Option<Candidate> = None;
        for (d2, k) in order {
            if best.is_some_and(|b| b.offset_m * b.offset_m < d2) {
                break;
            }
            for i in k * BLOCK..((k + 1) * BLOCK).min(n) {
                let c = self.candidate(i, p);
                if best.is_none_or(|b| c.offset_m < b.offset_m) {
                    best = Some(c);
                }
            }
        }
        best
    }

    /// The tuning in use.
    pub fn config(&self) -> &SnapConfig {
        &self.config
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
        let floor_m = hint_progress_m - self.config.back_tolerance_m;
        let mut qualifying = self.within(p, self.config.radius_m);
        qualifying.retain(|c| c.progress_m >= floor_m);
        let chosen = if qualifying.is_empty() {
            self.nearest(p)?
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
