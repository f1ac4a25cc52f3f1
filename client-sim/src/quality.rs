//! ETA and re-routing quality against the ground truth: every ETA frame a consumer receives is
//! a sample (predicted arrival vs the trip's true arrival), deviations are timed by the driver
//! and closed by the first frame carrying a new route.

use crate::truth::Timeline;
use parking_lot::Mutex;
use protocol::consumer::Eta;
use roadnet::{haversine_m, LatLng, LocalProjection};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Speed of the straight-line baseline, m/s.
pub const BASELINE_SPEED_MPS: f64 = 8.0;
/// A fix this far from the plan consumers were last sent has deviated (the hub's threshold).
pub const DEVIATION_M: f64 = 500.0;
/// A new route that arrives with no deviation seen, right after a fix at least this far from
/// the old plan, is the hub's answer to that fix (its distance, computed on the rounded
/// polyline, was just over the threshold for the hub and just under it here).
const BORDERLINE_M: f64 = DEVIATION_M - 5.0;

/// The plan consumers were sent, projected for distance checks.
#[derive(Debug)]
struct KnownPlan {
    polyline: String,
    projection: LocalProjection,
    xy: Vec<[f64; 2]>,
}

impl KnownPlan {
    fn new(polyline: &str) -> Option<Self> {
        let pts = roadnet::polyline::decode(polyline).ok()?;
        let origin = *pts.first()?;
        let projection = LocalProjection::new(origin);
        Some(Self {
            polyline: polyline.to_owned(),
            projection,
            xy: pts.iter().map(|p| projection.project(*p)).collect(),
        })
    }

    fn distance_m(&self, p: LatLng) -> f64 {
        let q = self.projection.project(p);
        if self.xy.len() == 1 {
            return ((q[0] - self.xy[0][0]).powi(2) + (q[1] - self.xy[0][1]).powi(2)).sqrt();
        }
        self.xy
            .windows(2)
            .map(|w| {
                let (a, b) = (w[0], w[1]);
                let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
                let l2 = dx * dx + dy * dy;
                let t = if l2 > 0.0 {
                    (((q[0] - a[0]) * dx + (q[1] - a[1]) * dy) / l2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                ((q[0] - a[0] - t * dx).powi(2) + (q[1] - a[1] - t * dy).powi(2)).sqrt()
            })
            .fold(f64::INFINITY, f64::min)
    }
}

#[derive(Debug)]
struct TripRecord {
    timeline: Arc<Timeline>,
    /// Simulated Unix seconds when the driver started.
    start_s: Option<f64>,
    plan: Option<KnownPlan>,
    /// Simulated time of the first fix that was more than 500 m off the known plan.
    pending_deviation_s: Option<f64>,
    /// The last fix's time and its distance from the known plan.
    last_fix: Option<(f64, f64)>,
    deviations: u64,
    latencies_s: Vec<f64>,
    /// New routes consumers got with no deviation seen by the simulator.
    unprompted: u64,
    /// ETA frame seq -> (frame time, predicted arrival), both simulated Unix seconds.
    samples: BTreeMap<u64, (f64, f64)>,
    /// ETA frame seq -> the band's (earliest, latest) arrival, simulated Unix seconds (frames
    /// that carry one).
    bands: BTreeMap<u64, (f64, f64)>,
}

/// The ETA section of the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EtaSummary {
    /// ETA frames received before their trip's true arrival (one per frame, not per consumer).
    pub samples: u64,
    /// Mean |predicted - true arrival| over all samples, seconds.
    pub mae_s: f64,
    /// Trips with a sample near their midpoint (within 10% of the true trip duration).
    pub trips_at_50pct: u64,
    /// Mean over those trips of |predicted - true remaining| / true remaining at the sample
    /// nearest to 50% of the true trip duration.
    pub mape_at_50pct: f64,
    /// The same for the baseline: straight-line distance to the remaining stop(s) at
    /// `baseline_speed_mps`, at the same moments.
    pub baseline_mape_at_50pct: f64,
    pub baseline_speed_mps: f64,
    /// Samples that carried a confidence band (`eta_low_s`/`eta_high_s`).
    pub band_samples: u64,
    /// Share of those whose true arrival fell inside the band (the hub aims at p10-p90: 0.8).
    pub band_coverage: f64,
    /// The same by trip progress at the sample: 0-25 %, 25-50 %, 50-75 %, 75-100 % of the
    /// true trip duration.
    pub band_coverage_by_progress: [f64; 4],
    /// Mean band width relative to the true time left (how much the band says).
    pub band_mean_relative_width: f64,
}

/// The re-routing section of the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RerouteSummary {
    /// Deviations (driver > 500 m off the plan consumers had) that consumers then got a new
    /// route for.
    pub count: u64,
    /// Deviations seen by the simulator.
    pub deviations: u64,
    /// Deviations for which no new route arrived before the run ended.
    pub missed: u64,
    /// New routes consumers got without a deviation seen by the simulator.
    pub unprompted: u64,
    /// Time from the deviating fix to the first consumer frame with the new route, simulated s.
    pub latency_s_p50: f64,
    pub latency_s_max: f64,
}

/// Per-delivery measurements shared by drivers and consumers.
#[derive(Debug, Default)]
pub struct QualityBook {
    trips: Mutex<HashMap<u64, TripRecord>>,
}

impl QualityBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a trip's ground truth.
    pub fn add_trip(&self, delivery: u64, timeline: Arc<Timeline>) {
        self.trips.lock().insert(
            delivery,
            TripRecord {
                timeline,
                start_s: None,
                plan: None,
                pending_deviation_s: None,
                last_fix: None,
                deviations: 0,
                latencies_s: Vec::new(),
                unprompted: 0,
                samples: BTreeMap::new(),
                bands: BTreeMap::new(),
            },
        );
    }

    /// The driver of `delivery` set off at simulated time `start_s`.
    pub fn driver_started(&self, delivery: u64, start_s: f64) {
        if let Some(t) = self.trips.lock().get_mut(&delivery) {
            t.start_s = Some(start_s);
        }
    }

    /// A fix the driver sent at simulated time `now_s`, at the position it reports (what the
    /// hub sees; deliberately bad fixes, which the edge drops, are not passed here).
    pub fn driver_at(&self, delivery: u64, now_s: f64, pos: LatLng) {
        let mut trips = self.trips.lock();
        let Some(t) = trips.get_mut(&delivery) else {
            return;
        };
        let Some(d) = t.plan.as_ref().map(|p| p.distance_m(pos)) else {
            return;
        };
        t.last_fix = Some((now_s, d));
        if t.pending_deviation_s.is_none() && d > DEVIATION_M {
            t.pending_deviation_s = Some(now_s);
            t.deviations += 1;
        }
    }

    /// A consumer received an ETA (in a frame or a snapshot) at simulated time `now_s`.
    pub fn eta_received(&self, eta: &Eta, now_s: f64, in_snapshot: bool) {
        let mut trips = self.trips.lock();
        let Some(t) = trips.get_mut(&eta.delivery_id.0) else {
            return;
        };
        if !in_snapshot {
            let ts = eta.ts_ms as f64 / 1000.0;
            t.samples.entry(eta.seq).or_insert((ts, ts + eta.eta_s));
            if eta.eta_high_s > 0.0 {
                t.bands
                    .entry(eta.seq)
                    .or_insert((ts + eta.eta_low_s, ts + eta.eta_high_s));
            }
        }
        let Some(poly) = &eta.route_polyline else {
            return;
        };
        if t.plan.as_ref().is_some_and(|p| &p.polyline == poly) {
            return;
        }
        let had_plan = t.plan.is_some();
        t.plan = KnownPlan::new(poly);
        let borderline = t.last_fix.filter(|(_, d)| *d >= BORDERLINE_M);
        t.last_fix = None;
        match (t.pending_deviation_s.take(), borderline) {
            (Some(dev_s), _) => t.latencies_s.push((now_s - dev_s).max(0.0)),
            (None, Some((fix_s, _))) if had_plan => {
                t.deviations += 1;
                t.latencies_s.push((now_s - fix_s).max(0.0));
            }
            (None, _) if had_plan => t.unprompted += 1,
            (None, _) => {}
        }
    }

    /// ETA quality over every trip, counting only samples before the true arrival.
    pub fn eta_summary(&self) -> EtaSummary {
        let trips = self.trips.lock();
        let (mut n, mut abs_sum) = (0u64, 0.0);
        let (mut mid_n, mut ape_sum, mut base_sum) = (0u64, 0.0, 0.0);
        let (mut band_n, mut band_in, mut width_sum) = (0u64, 0u64, 0.0);
        let (mut by_n, mut by_in) = ([0u64; 4], [0u64; 4]);
        for t in trips.values() {
            let Some(start) = t.start_s else { continue };
            let tl = &t.timeline;
            let arrival = start + tl.duration_s;
            for (seq, &(lo, hi)) in &t.bands {
                let Some(&(ts, _)) = t.samples.get(seq) else {
                    continue;
                };
                if ts < start || ts >= arrival {
                    continue;
                }
                let inside = (lo..=hi).contains(&arrival);
                let q = (((ts - start) / tl.duration_s) * 4.0).clamp(0.0, 3.0) as usize;
                band_n += 1;
                by_n[q] += 1;
                if inside {
                    band_in += 1;
                    by_in[q] += 1;
                }
                width_sum += (hi - lo) / (arrival - ts).max(1.0);
            }
            let valid: Vec<(f64, f64)> = t
                .samples
                .values()
                .copied()
                .filter(|(ts, _)| *ts >= start && *ts < arrival)
                .collect();
            for (_, pred) in &valid {
                n += 1;
                abs_sum += (pred - arrival).abs();
            }
            let mid = start + tl.duration_s / 2.0;
            let Some(&(ts, pred)) = valid
                .iter()
                .min_by(|a, b| (a.0 - mid).abs().total_cmp(&(b.0 - mid).abs()))
            else {
                continue;
            };
            if (ts - mid).abs() > 0.1 * tl.duration_s {
                continue;
            }
            let truth_left = arrival - ts;
            if truth_left <= 0.0 {
                continue;
            }
            let here = tl.at(ts - start);
            let straight = if here.picked_up {
                haversine_m(here.pos, tl.dropoff)
            } else {
                haversine_m(here.pos, tl.pickup) + haversine_m(tl.pickup, tl.dropoff)
            };
            let baseline_left = straight / BASELINE_SPEED_MPS;
            mid_n += 1;
            ape_sum += ((pred - ts) - truth_left).abs() / truth_left;
            base_sum += (baseline_left - truth_left).abs() / truth_left;
        }
        let mean = |s: f64, k: u64| if k == 0 { 0.0 } else { s / k as f64 };
        EtaSummary {
            samples: n,
            mae_s: mean(abs_sum, n),
            trips_at_50pct: mid_n,
            mape_at_50pct: mean(ape_sum, mid_n),
            baseline_mape_at_50pct: mean(base_sum, mid_n),
            baseline_speed_mps: BASELINE_SPEED_MPS,
            band_samples: band_n,
            band_coverage: mean(band_in as f64, band_n),
            band_coverage_by_progress: std::array::from_fn(|q| mean(by_in[q] as f64, by_n[q])),
            band_mean_relative_width: mean(width_sum, band_n),
        }
    }

    /// Per-trip midpoint figures, for analysis: (start, duration, ETA error, baseline error,
    /// when the driver reached and left the pickup, the moment scored,
    /// at the pickup, deviations), sorted by start.
    pub fn trip_details(&self) -> Vec<serde_json::Value> {
        let trips = self.trips.lock();
        let mut out: Vec<(f64, serde_json::Value)> = Vec::new();
        for (id, t) in trips.iter() {
            let Some(start) = t.start_s else { continue };
            let tl = &t.timeline;
            let arrival = start + tl.duration_s;
            let mid = start + tl.duration_s / 2.0;
            let best = t
                .samples
                .values()
                .filter(|(ts, _)| *ts >= start && *ts < arrival)
                .min_by(|a, b| (a.0 - mid).abs().total_cmp(&(b.0 - mid).abs()));
            let Some(&(ts, pred)) = best else { continue };
            let here = tl.at(ts - start);
            let left = arrival - ts;
            out.push((
                start,
                serde_json::json!({
                    "delivery": id, "start_s": start, "duration_s": tl.duration_s,
                    "truth_left_s": left, "pred_left_s": pred - ts,
                    "dwell_s": tl.pickup_departure_s - tl.pickup_arrival_s,
                    "pickup_arrival_s": tl.pickup_arrival_s,
                    "pickup_departure_s": tl.pickup_departure_s,
                    "at_s": ts - start,
                    "at_pickup": ts - start >= tl.pickup_arrival_s && ts - start < tl.pickup_departure_s,
                    "picked_up": here.picked_up, "deviations": t.deviations,
                    "reroute_latencies_s": t.latencies_s, "unprompted": t.unprompted,
                }),
            ));
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// Re-routing counts and latencies.
    pub fn reroute_summary(&self) -> RerouteSummary {
        let trips = self.trips.lock();
        let mut lat: Vec<f64> = trips
            .values()
            .flat_map(|t| t.latencies_s.iter().copied())
            .collect();
        lat.sort_by(f64::total_cmp);
        RerouteSummary {
            count: lat.len() as u64,
            deviations: trips.values().map(|t| t.deviations).sum(),
            missed: trips
                .values()
                .filter(|t| t.pending_deviation_s.is_some())
                .count() as u64,
            unprompted: trips.values().map(|t| t.unprompted).sum(),
            latency_s_p50: lat.get(lat.len() / 2).copied().unwrap_or(0.0),
            latency_s_max: lat.last().copied().unwrap_or(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::truth::{plan_trip, TruthConfig, TruthModel};
    use protocol::DeliveryId;
    use roadnet::RoadGraph;

    fn eta(seq: u64, ts_s: f64, eta_s: f64, poly: Option<String>) -> Eta {
        Eta {
            delivery_id: DeliveryId(1),
            seq,
            eta_s,
            eta_low_s: 0.0,
            eta_high_s: 0.0,
            remaining_m: 0.0,
            ts_ms: (ts_s * 1000.0) as u64,
            route_polyline: poly,
        }
    }

    #[test]
    fn samples_are_scored_against_the_true_arrival_and_deviations_are_timed() {
        let g = RoadGraph::grid_city(10, 10, 100.0, LatLng::new(60.164, 24.935)).expect("grid");
        let truth = TruthModel::new(TruthConfig::default(), &g);
        let n = g.nodes();
        let trip = plan_trip(
            &g,
            &truth,
            &mut rand::rng(),
            n[0],
            n[9],
            n[99],
            1.7e9,
            false,
            650.0,
        )
        .expect("trip");
        let d = trip.timeline.duration_s;
        let book = QualityBook::new();
        book.add_trip(1, Arc::new(trip.timeline.clone()));
        let t0 = 1_000_000.0;
        book.driver_started(1, t0);
        let poly = roadnet::polyline::encode(&trip.planned.points);
        // Exact at the start, 10% early at the midpoint.
        book.eta_received(&eta(1, t0, d, Some(poly.clone())), t0, false);
        book.eta_received(
            &eta(2, t0 + d / 2.0, 0.9 * d / 2.0, None),
            t0 + d / 2.0,
            false,
        );
        book.eta_received(
            &eta(2, t0 + d / 2.0, 0.9 * d / 2.0, None),
            t0 + d / 2.0,
            false,
        );
        let s = book.eta_summary();
        assert_eq!(s.samples, 2, "duplicates from a second consumer count once");
        assert!((s.mae_s - 0.025 * d).abs() < 0.01, "{s:?}");
        assert!((s.mape_at_50pct - 0.1).abs() < 1e-4, "{s:?}");
        assert_eq!(s.trips_at_50pct, 1);
        // 2 km away from the plan: a deviation, closed by the next new route 3 s later.
        book.driver_at(1, t0 + 10.0, LatLng::new(60.19, 24.935));
        book.driver_at(1, t0 + 11.0, LatLng::new(60.19, 24.935));
        book.eta_received(
            &eta(3, t0 + 13.0, d, Some("_p~iF~ps|U".into())),
            t0 + 13.0,
            false,
        );
        let r = book.reroute_summary();
        assert_eq!(
            (r.count, r.deviations, r.missed, r.unprompted),
            (1, 1, 0, 0)
        );
        assert!((r.latency_s_max - 3.0).abs() < 1e-9);
    }
}
