//! Pickup dwell learnt from the hub's own history: how long drivers actually stayed at a pickup
//! (first fix within the arrival radius to the last one before leaving), pooled over every
//! pickup and per pickup place, with a prior (a fixed dwell) while there is little data.
//!
//! What the ETA needs is not the mean dwell but the dwell still ahead of a driver who has
//! already waited `waited_s`: for a dwell spread over 90-150 s the remaining time after 100 s of
//! waiting is about 25 s, not 20, and after 120 s it is 15 s, not 0. [`DwellModel::remaining_s`]
//! is the median of `D - waited` over the learnt dwells `D > waited` (the median: the ETA is
//! scored by its absolute error). A place with its own history shifts the pooled distribution
//! by how far its mean is from the pooled mean, shrunk towards none while it has few samples.
//! Sans-IO: fed finished dwells, asked for estimates.

use std::collections::HashMap;

use h3o::{CellIndex, Resolution};
use serde::{Deserialize, Serialize};

use crate::geo::LatLng;

/// Width of a bin of the pooled dwell histogram, seconds.
const BIN_S: f64 = 5.0;
/// Bins of the pooled histogram: dwells up to `BINS * BIN_S` (30 min); longer ones go in the last.
const BINS: usize = 360;

/// Knobs of [`DwellModel`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DwellConfig {
    /// The dwell assumed without history, seconds (the prior).
    pub prior_s: f64,
    /// Weight of the prior, in dwells: with `n` dwells learnt the prior counts as this many more.
    pub prior_weight: f64,
    /// Weight of the pooled distribution when judging one place, in dwells: a place's own
    /// mean counts `n / (n + place_prior_weight)`.
    pub place_prior_weight: f64,
    /// A recorded dwell outside this range is not a pickup wait (a GPS glitch, a driver
    /// parked for lunch), seconds.
    pub min_dwell_s: f64,
    pub max_dwell_s: f64,
    /// Total dwells at which the pooled counts are halved (so it follows change).
    pub max_samples: u32,
}

impl Default for DwellConfig {
    fn default() -> Self {
        Self {
            prior_s: 120.0,
            prior_weight: 5.0,
            place_prior_weight: 5.0,
            min_dwell_s: 5.0,
            max_dwell_s: 1800.0,
            max_samples: 20_000,
        }
    }
}

/// H3 resolution of a pickup place (~0.015 km², edge ~66 m: one restaurant's doorstep).
const PLACE_RESOLUTION: Resolution = Resolution::Ten;

/// The place a pickup at `pos` is counted in (an H3 cell), `None` for invalid coordinates.
pub fn place_of(pos: LatLng) -> Option<u64> {
    let ll = h3o::LatLng::new(pos.lat, pos.lng).ok()?;
    let cell: CellIndex = ll.to_cell(PLACE_RESOLUTION);
    Some(u64::from(cell))
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct PlaceMean {
    mean_s: f64,
    count: u32,
}

/// Dwells learnt at pickups.
#[derive(Clone, Debug)]
pub struct DwellModel {
    config: DwellConfig,
    /// Pooled histogram of dwells (bin `i` holds `[i, i + 1) * BIN_S`), and its total weight.
    bins: Vec<f64>,
    total: f64,
    sum_s: f64,
    places: HashMap<u64, PlaceMean>,
}

impl Default for DwellModel {
    fn default() -> Self {
        Self::new(DwellConfig::default())
    }
}

impl DwellModel {
    /// A model with no history (it answers with the prior).
    pub fn new(config: DwellConfig) -> Self {
        Self {
            config,
            bins: vec![0.0; BINS],
            total: 0.0,
            sum_s: 0.0,
            places: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DwellConfig {
        &self.config
    }

    /// Dwells learnt (pooled, after any halving).
    pub fn samples(&self) -> f64 {
        self.total
    }

    /// A driver stayed `dwell_s` at the pickup at `place` (from [`place_of`]; `None` when
    /// unknown). Dwells outside `[min_dwell_s, max_dwell_s]` are ignored.
    pub fn record(&mut self, place: Option<u64>, dwell_s: f64) {
        let c = &self.config;
        if !dwell_s.is_finite() || dwell_s < c.min_dwell_s || dwell_s > c.max_dwell_s {
            return;
        }
        let i = ((dwell_s / BIN_S) as usize).min(BINS - 1);
        self.bins[i] += 1.0;
        self.total += 1.0;
        self.sum_s += dwell_s;
        if self.total >= f64::from(c.max_samples.max(2)) {
            for b in &mut self.bins {
                *b /= 2.0;
            }
            self.total /= 2.0;
            self.sum_s /= 2.0;
        }
        if let Some(place) = place {
            let m = self.places.entry(place).or_default();
            m.count = m.count.saturating_add(1);
            m.mean_s += (dwell_s - m.mean_s) / f64::from(m.count.min(1000));
        }
    }

    /// Mean pooled dwell learnt, seconds (the prior while none is).
    fn pooled_mean_s(&self) -> f64 {
        if self.total > 0.0 {
            self.sum_s / self.total
        } else {
            self.config.prior_s
        }
    }

    /// How far the dwells at `place` run from the pooled mean, shrunk by its sample count.
    fn place_shift_s(&self, place: Option<u64>) -> f64 {
        let Some(m) = place.and_then(|p| self.places.get(&p)) else {
            return 0.0;
        };
        let n = f64::from(m.count);
        let w = n / (n + self.config.place_prior_weight.max(0.0)).max(f64::MIN_POSITIVE);
        w * (m.mean_s - self.pooled_mean_s())
    }

    /// The dwell still ahead of a driver at `place` who has waited `waited_s` there (0 before
    /// arriving): the median of `D - waited` over dwells `D > waited` of the learnt
    /// distribution (the prior is a point at `prior_s` weighing `prior_weight` dwells), shifted
    /// for the place. 0 once the driver has waited longer than any dwell seen.
    pub fn remaining_s(&self, place: Option<u64>, waited_s: f64) -> f64 {
        // Waiting `waited` at a place whose dwells run `shift` longer is like waiting
        // `waited - shift` at the pooled one (before the pooled dwells start when negative).
        let eff = waited_s.max(0.0) - self.place_shift_s(place);
        let waited = eff.max(0.0);
        (self.pooled_remaining_s(waited) + (waited - eff)).max(0.0)
    }

    /// The median of `D - waited` over the pooled dwells (and the prior) `D > waited`.
    fn pooled_remaining_s(&self, waited: f64) -> f64 {
        let prior_s = self.config.prior_s;
        let prior_w = if prior_s > waited {
            self.config.prior_weight.max(0.0)
        } else {
            0.0
        };
        // Mass of dwells beyond `waited`: the rest of the bin holding it (uniform inside a
        // bin) and every bin after it.
        let first = ((waited / BIN_S) as usize).min(BINS - 1);
        let part = |i: usize| -> f64 {
            let lo = i as f64 * BIN_S;
            if i == first {
                self.bins[i] * ((lo + BIN_S - waited) / BIN_S).clamp(0.0, 1.0)
            } else {
                self.bins[i]
            }
        };
        let mass: f64 = (first..BINS).map(part).sum::<f64>() + prior_w;
        if mass <= 0.0 {
            return 0.0;
        }
        // Walk up to half the mass; the prior is a point at `prior_s`.
        let half = mass / 2.0;
        let mut acc = 0.0;
        let mut prior_left = prior_w;
        for i in first..BINS {
            let lo = (i as f64 * BIN_S).max(waited);
            let hi = (i + 1) as f64 * BIN_S;
            if prior_left > 0.0 && prior_s < hi {
                if acc + prior_left >= half {
                    return (prior_s - waited).max(0.0);
                }
                acc += prior_left;
                prior_left = 0.0;
            }
            let m = part(i);
            if m > 0.0 && acc + m >= half {
                let d = lo + (hi - lo) * ((half - acc) / m);
                return (d - waited).max(0.0);
            }
            acc += m;
        }
        (prior_s - waited).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place() -> Option<u64> {
        place_of(LatLng::new(60.17, 24.94))
    }

    #[test]
    fn without_history_the_prior_counts_down_like_a_fixed_dwell() {
        let m = DwellModel::default();
        assert!((m.remaining_s(None, 0.0) - 120.0).abs() < 1e-9);
        assert!((m.remaining_s(None, 50.0) - 70.0).abs() < 1e-9);
        assert_eq!(m.remaining_s(None, 130.0), 0.0);
    }

    #[test]
    fn learnt_uniform_dwells_give_the_median_of_what_is_left_after_waiting() {
        let mut m = DwellModel::new(DwellConfig {
            prior_weight: 0.0,
            ..DwellConfig::default()
        });
        // Dwells spread evenly over 90-150 s.
        for k in 0..600 {
            m.record(None, 90.0 + 60.0 * (f64::from(k) + 0.5) / 600.0);
        }
        // Before arriving: the median dwell, 120 s.
        assert!((m.remaining_s(None, 0.0) - 120.0).abs() < 1.0);
        // After 60 s: 60 s left (every dwell is still ahead).
        assert!((m.remaining_s(None, 60.0) - 60.0).abs() < 1.0);
        // After 120 s: the dwells left are 120-150, median 135: 15 s, where a fixed 120 s
        // dwell says 0.
        assert!((m.remaining_s(None, 120.0) - 15.0).abs() < 1.0);
        // After 140 s: 5 s.
        assert!((m.remaining_s(None, 140.0) - 5.0).abs() < 1.0);
        assert_eq!(m.remaining_s(None, 200.0), 0.0);
    }

    #[test]
    fn the_prior_is_blended_out_as_dwells_are_learnt() {
        let mut m = DwellModel::default(); // prior 120 s weighing 5 dwells
        for _ in 0..3 {
            m.record(None, 60.0);
        }
        // 3 dwells of 60 s against 5 of the prior: the median is still the prior.
        assert!((m.remaining_s(None, 0.0) - 120.0).abs() < 1e-9);
        for _ in 0..10 {
            m.record(None, 60.0);
        }
        // 13 against 5: the median is in the learnt bin (60-65 s).
        let r = m.remaining_s(None, 0.0);
        assert!((60.0..65.0).contains(&r), "{r}");
    }

    #[test]
    fn a_slow_place_is_expected_to_keep_its_drivers_longer() {
        let mut m = DwellModel::new(DwellConfig {
            prior_weight: 0.0,
            ..DwellConfig::default()
        });
        let slow = place_of(LatLng::new(60.18, 24.95));
        for _ in 0..200 {
            m.record(None, 100.0);
        }
        for _ in 0..20 {
            m.record(slow, 300.0);
        }
        let elsewhere = m.remaining_s(place(), 0.0);
        let there = m.remaining_s(slow, 0.0);
        assert!(elsewhere < 110.0, "{elsewhere}");
        // 20 of its own dwells against a pooled weight of 5: most of its +180 s shift.
        assert!(there > 230.0, "{there}");
        // Having waited 200 s there, it is not over yet.
        assert!(m.remaining_s(slow, 200.0) > 30.0);
    }

    #[test]
    fn implausible_dwells_are_ignored() {
        let mut m = DwellModel::default();
        m.record(None, 1.0);
        m.record(None, f64::NAN);
        m.record(None, 7200.0);
        assert_eq!(m.samples(), 0.0);
    }
}
