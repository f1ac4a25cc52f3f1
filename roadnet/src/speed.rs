//! Expected road speeds, learnt from fleet fixes.
//!
//! What the ETA reads is a *speed ratio*: observed speed / the free speed of the road the fix
//! was snapped to. Ratios are learnt at several levels, from coarse to fine: the whole city, an
//! area (H3 resolution 8, ~0.7 km²), a cell (resolution 9, ~0.1 km²), a (cell, road class), the
//! road segment itself, and a (cell, road class, hour of week). Each level's estimate is its own
//! mean shrunk towards the level above it (`n / (n + ratio_prior_weight)`), so a segment nobody
//! drove yet gets its area's congestion and a well-driven one its own. Time of week enters as a
//! city-wide factor per hour (its ratio over the all-hours ratio) applied
//! to the segment's estimate, itself adjusted by the (cell, road class, hour of week) level:
//! that hour's ratio there over its all-hours ratio. So a new hour is not a cold start.
//!
//! Also kept: the older table of mean speeds per (H3 cell, hour of week), persisted by the hub
//! and used only while no ratio has been learnt, and a live correction factor per cell.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::hash::{Hash, Hasher};

use h3o::{CellIndex, Resolution};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::geo::LatLng;
use crate::graph::RoadClass;

/// H3 resolution of the speed cells (~0.1 km², edge ~200 m).
pub const SPEED_CELL_RESOLUTION: Resolution = Resolution::Nine;
/// Hours in a week: hour-of-week values are `0..HOURS_PER_WEEK`.
pub const HOURS_PER_WEEK: u8 = 168;
const LIVE_BUCKETS: usize = 6;

/// The H3 cell (resolution 9) holding `pos`, as its `u64` index; `None` for invalid coordinates.
pub fn cell_of(pos: LatLng) -> Option<u64> {
    let ll = h3o::LatLng::new(pos.lat, pos.lng).ok()?;
    Some(u64::from(ll.to_cell(SPEED_CELL_RESOLUTION)))
}

/// Hour of the week, 0 = Monday 00:00-01:00 local time, for a Unix time in seconds and the
/// local offset from UTC in seconds (Helsinki: 7200 in winter, 10800 in summer).
pub fn hour_of_week(unix_s: f64, utc_offset_s: i32) -> u8 {
    let local_h = ((unix_s + f64::from(utc_offset_s)) / 3600.0).floor() as i64;
    // 1970-01-01 was a Thursday: 3 days after Monday.
    (local_h + 3 * 24).rem_euclid(i64::from(HOURS_PER_WEEK)) as u8
}

/// Tuning of the [`SpeedModel`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeedModelConfig {
    /// Samples after which the historical mean is trusted fully; below it, the expected speed
    /// is blended linearly with the road-class default by `count / min_samples`.
    pub min_samples: u32,
    /// Cap on the sample count used for the running mean: past it the mean becomes an
    /// exponential average with weight `1 / max_weight`, so it follows slow changes.
    pub max_weight: u32,
    /// Length of the live window, in seconds.
    pub live_window_s: f64,
    /// Live samples needed in a cell's window before its live factor departs from 1.0.
    pub live_min_samples: u32,
    /// Lower clamp of the live factor.
    pub live_factor_min: f64,
    /// Upper clamp of the live factor.
    pub live_factor_max: f64,
    /// Local offset from UTC for the hour of week of live samples, in seconds.
    pub utc_offset_s: i32,
    /// Weight, in samples, of the level above when a ratio level is judged (see the module
    /// documentation): a level with `n` samples counts `n / (n + ratio_prior_weight)`.
    pub ratio_prior_weight: f64,
}

impl Default for SpeedModelConfig {
    fn default() -> Self {
        Self {
            min_samples: 20,
            max_weight: 1000,
            live_window_s: 300.0,
            live_min_samples: 3,
            live_factor_min: 0.3,
            live_factor_max: 1.5,
            utc_offset_s: 0,
            ratio_prior_weight: 5.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Mean {
    mean_mps: f32,
    count: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct LiveBucket {
    /// Which time slot (`floor(now / bucket_s)`) this bucket holds.
    slot: i64,
    observed_mps_sum: f64,
    expected_mps_sum: f64,
    count: u32,
}

/// Where a road segment's speed ratio is learnt: the segment itself and the places it lies in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SegmentKey {
    /// The segment (a hash of its end points, in driving order).
    pub segment: u64,
    /// H3 cell (resolution 9) of its midpoint; 0 when unknown.
    pub cell: u64,
    /// The cell's parent at resolution 8; 0 when unknown.
    pub area: u64,
    /// Road class (`RoadClass as u8`).
    pub class: u8,
}

impl SegmentKey {
    /// The key of the segment from `start` to `end` of road class `class`.
    pub fn of(start: LatLng, end: LatLng, class: RoadClass) -> Self {
        let mid = LatLng::new((start.lat + end.lat) / 2.0, (start.lng + end.lng) / 2.0);
        let cell = cell_of(mid).unwrap_or(0);
        let area = CellIndex::try_from(cell)
            .ok()
            .and_then(|c| c.parent(Resolution::Eight))
            .map_or(0, u64::from);
        let q = |v: f64| (v * 1e6).round() as i64 as u64;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (q(start.lat), q(start.lng), q(end.lat), q(end.lng)).hash(&mut h);
        Self {
            segment: h.finish(),
            cell,
            area,
            class: class as u8,
        }
    }
}

/// A level of the ratio tables (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RatioLevel {
    Area(u64),
    Cell(u64),
    CellClass(u64, u8),
    Segment(u64),
    CellClassHour(u64, u8, u8),
}

/// A running mean of ratios (an exponential average past `max_weight` samples).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct RatioMean {
    mean: f32,
    count: u32,
}

impl RatioMean {
    fn add(&mut self, ratio: f64, max_weight: u32) {
        self.count = self.count.saturating_add(1);
        let w = self.count.min(max_weight.max(1));
        self.mean += ((ratio as f32) - self.mean) / w as f32;
    }

    /// This level's mean shrunk towards `prior` by its sample count.
    fn shrink(self, prior: f64, prior_weight: f64) -> f64 {
        let n = f64::from(self.count);
        if n <= 0.0 {
            return prior;
        }
        (n * f64::from(self.mean) + prior_weight * prior) / (n + prior_weight)
    }
}

/// Ratios observed / free speed outside this range are snapping or GPS mistakes.
const RATIO_RANGE: std::ops::RangeInclusive<f64> = 0.05..=2.5;

/// One row of the exported historical table: (H3 cell, hour of week, mean speed m/s, samples).
pub type SpeedRow = (u64, u8, f32, u32);

/// Why a historical table could not be imported.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SpeedImportError {
    /// A row's cell is not a valid H3 cell index.
    #[error("row {row}: {cell:#x} is not an H3 cell index")]
    InvalidCell {
        /// Row number in the input.
        row: usize,
        /// The offending value.
        cell: u64,
    },
    /// A row's hour is not below 168.
    #[error("row {row}: hour of week {hour} is not below 168")]
    InvalidHour {
        /// Row number in the input.
        row: usize,
        /// The offending value.
        hour: u8,
    },
    /// A row's mean speed is negative or not finite.
    #[error("row {row}: mean speed {mean_mps} m/s is not a finite non-negative number")]
    InvalidSpeed {
        /// Row number in the input.
        row: usize,
        /// The offending value.
        mean_mps: f32,
    },
}

/// One observation for a [`SpeedModel`], taken where the model is only read and applied
/// later with [`SpeedModel::apply`]. The cell is resolved by the taker, so applying is cheap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpeedSample {
    /// See [`SpeedModel::observe`].
    Historical {
        /// H3 cell index (resolution [`SPEED_CELL_RESOLUTION`]).
        cell: u64,
        /// Hour of week, `0..168`.
        hour_of_week: u8,
        /// Observed speed.
        speed_mps: f64,
    },
    /// See [`SpeedModel::observe_ratio`].
    Ratio {
        /// The segment the fix was snapped to.
        key: SegmentKey,
        /// Hour of week, `0..168`.
        hour_of_week: u8,
        /// Observed speed / the segment's free speed.
        ratio: f64,
    },
    /// See [`SpeedModel::observe_live`].
    Live {
        /// H3 cell index (resolution [`SPEED_CELL_RESOLUTION`]).
        cell: u64,
        /// When, Unix seconds.
        now_s: f64,
        /// Observed speed.
        speed_mps: f64,
        /// What the ETA expected there before the live factor.
        expected_mps: f64,
    },
}

/// Historical and live speeds per H3 cell. Sans-IO: time is always an argument.
#[derive(Debug, Clone, Default)]
pub struct SpeedModel {
    config: SpeedModelConfig,
    // foldhash, not SipHash: the ETA reads up to five of these per road segment of a route
    // each refresh, and the keys come from the road graph and H3, seeded per process.
    historical: HashMap<(u64, u8), Mean, RandomState>,
    live: HashMap<u64, [LiveBucket; LIVE_BUCKETS], RandomState>,
    /// Speed ratios per level (see the module documentation).
    ratios: HashMap<RatioLevel, RatioMean, RandomState>,
    /// City-wide ratio per hour of week, and over all hours.
    ratio_hours: Vec<RatioMean>,
    ratio_all: RatioMean,
}

/// Speeds above this (250 km/h) are GPS glitches, not traffic.
const MAX_PLAUSIBLE_SPEED_MPS: f64 = 70.0;

fn plausible(speed_mps: f64) -> bool {
    speed_mps.is_finite() && (0.0..=MAX_PLAUSIBLE_SPEED_MPS).contains(&speed_mps)
}

impl SpeedModel {
    /// An empty model.
    pub fn new(config: SpeedModelConfig) -> Self {
        Self {
            config,
            historical: HashMap::default(),
            live: HashMap::default(),
            ratios: HashMap::default(),
            ratio_hours: vec![RatioMean::default(); usize::from(HOURS_PER_WEEK)],
            ratio_all: RatioMean::default(),
        }
    }

    /// Record a fix on the segment `key` at `ratio` = its speed / the segment's free speed,
    /// during `hour_of_week`. Ratios outside 0.05-2.5 and hours >= 168 are ignored.
    pub fn observe_ratio(&mut self, key: &SegmentKey, hour_of_week: u8, ratio: f64) {
        if !(ratio.is_finite() && RATIO_RANGE.contains(&ratio)) || hour_of_week >= HOURS_PER_WEEK {
            return;
        }
        let max = self.config.max_weight;
        if self.ratio_hours.len() != usize::from(HOURS_PER_WEEK) {
            self.ratio_hours = vec![RatioMean::default(); usize::from(HOURS_PER_WEEK)];
        }
        self.ratio_all.add(ratio, max);
        self.ratio_hours[usize::from(hour_of_week)].add(ratio, max);
        for level in Self::levels(key, hour_of_week).into_iter().flatten() {
            self.ratios.entry(level).or_default().add(ratio, max);
        }
    }

    /// The levels of `key` that exist, coarse to fine.
    fn levels(key: &SegmentKey, hour_of_week: u8) -> [Option<RatioLevel>; 5] {
        let known = |v: u64| v != 0;
        [
            known(key.area).then_some(RatioLevel::Area(key.area)),
            known(key.cell).then_some(RatioLevel::Cell(key.cell)),
            known(key.cell).then_some(RatioLevel::CellClass(key.cell, key.class)),
            Some(RatioLevel::Segment(key.segment)),
            known(key.cell).then_some(RatioLevel::CellClassHour(key.cell, key.class, hour_of_week)),
        ]
    }

    /// True once any speed ratio was learnt (the ETA then reads ratios, not the older table).
    pub fn has_ratios(&self) -> bool {
        self.ratio_all.count > 0
    }

    /// Expected speed ratio (speed / free speed) of the segment `key` during `hour_of_week`:
    /// 1.0 with nothing learnt; see the module documentation for how levels combine.
    pub fn expected_ratio(&self, key: &SegmentKey, hour_of_week: u8) -> f64 {
        let k = self.config.ratio_prior_weight.max(0.0);
        let all = self.ratio_all.shrink(1.0, k);
        let hour = self
            .ratio_hours
            .get(usize::from(hour_of_week))
            .map_or(all, |m| m.shrink(all, k));
        let time_factor = if all > 0.0 { hour / all } else { 1.0 };
        let levels = Self::levels(key, hour_of_week);
        let mut est = all;
        for level in levels[..4].iter().flatten() {
            if let Some(m) = self.ratios.get(level) {
                est = m.shrink(est, k);
            }
        }
        // The hour: this (cell, class)'s own ratio in that hour over its all-hours ratio,
        // shrunk towards the city's factor for the hour.
        let local = levels[2]
            .and_then(|l| self.ratios.get(&l))
            .zip(levels[4].and_then(|l| self.ratios.get(&l)))
            .filter(|(cc, _)| cc.mean > 0.0)
            .map(|(cc, cch)| RatioMean {
                mean: cch.mean / cc.mean,
                count: cch.count,
            });
        let time_factor = local.map_or(time_factor, |m| m.shrink(time_factor, k));
        est * time_factor
    }

    /// The expected speed on a segment with free speed `free_speed_mps` before the live
    /// factor: free speed x [`SpeedModel::expected_ratio`] once ratios are learnt, otherwise
    /// the older (cell, hour) table ([`SpeedModel::expected_speed_mps`]).
    pub fn segment_speed_mps(
        &self,
        key: &SegmentKey,
        hour_of_week: u8,
        free_speed_mps: f64,
    ) -> f64 {
        if self.has_ratios() {
            free_speed_mps * self.expected_ratio(key, hour_of_week)
        } else {
            self.expected_speed_mps(key.cell, hour_of_week, free_speed_mps)
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SpeedModelConfig {
        &self.config
    }

    /// Record a fleet speed for `cell` during `hour_of_week`. Implausible speeds (negative,
    /// not finite, above 70 m/s) and hours >= 168 are ignored.
    pub fn observe(&mut self, cell: u64, hour_of_week: u8, speed_mps: f64) {
        if !plausible(speed_mps) || hour_of_week >= HOURS_PER_WEEK {
            return;
        }
        let m = self.historical.entry((cell, hour_of_week)).or_default();
        let weight = m.count.saturating_add(1).min(self.config.max_weight.max(1));
        m.mean_mps += ((speed_mps as f32) - m.mean_mps) / weight as f32;
        m.count = m.count.saturating_add(1);
    }

    /// [`SpeedModel::observe`] for the cell holding `pos`.
    pub fn observe_at(&mut self, pos: LatLng, hour_of_week: u8, speed_mps: f64) {
        if let Some(cell) = cell_of(pos) {
            self.observe(cell, hour_of_week, speed_mps);
        }
    }

    /// The historical (mean m/s, sample count) of a cell and hour, if any sample was seen.
    pub fn historical(&self, cell: u64, hour_of_week: u8) -> Option<(f64, u32)> {
        self.historical
            .get(&(cell, hour_of_week))
            .map(|m| (f64::from(m.mean_mps), m.count))
    }

    /// `(w, mean)` of a cell and hour: the expected speed on a road whose class default is
    /// `d` is `w * mean + (1 - w) * d` ([`SpeedModel::expected_speed_mps`]); `w` is 0 without
    /// samples.
    pub fn historical_weight(&self, cell: u64, hour_of_week: u8) -> (f64, f64) {
        match self.historical.get(&(cell, hour_of_week)) {
            None => (0.0, 0.0),
            Some(m) => {
                let w = if self.config.min_samples == 0 {
                    1.0
                } else {
                    (f64::from(m.count) / f64::from(self.config.min_samples)).min(1.0)
                };
                (w, f64::from(m.mean_mps))
            }
        }
    }

    /// Expected speed without live correction: the historical mean blended with
    /// `class_default_mps` by `min(count / min_samples, 1)`.
    pub fn expected_speed_mps(&self, cell: u64, hour_of_week: u8, class_default_mps: f64) -> f64 {
        match self.historical.get(&(cell, hour_of_week)) {
            None => class_default_mps,
            Some(m) => {
                let w = if self.config.min_samples == 0 {
                    1.0
                } else {
                    (f64::from(m.count) / f64::from(self.config.min_samples)).min(1.0)
                };
                w * f64::from(m.mean_mps) + (1.0 - w) * class_default_mps
            }
        }
    }

    fn bucket_s(&self) -> f64 {
        (self.config.live_window_s / LIVE_BUCKETS as f64).max(1e-3)
    }

    /// Record a fleet speed seen at `now_s` (Unix seconds) for the live factor of the cell holding
    /// `pos`, compared with the expected speed there from the (cell, hour) table blended with
    /// `class_default_mps`, the free speed of the road the fix was snapped to. (The hub uses
    /// [`SpeedModel::observe_live_in`] with the speed its ETA expected on that segment.)
    pub fn observe_live(
        &mut self,
        pos: LatLng,
        now_s: f64,
        speed_mps: f64,
        class_default_mps: f64,
    ) {
        if let Some(cell) = cell_of(pos) {
            let hour = hour_of_week(now_s, self.config.utc_offset_s);
            let expected = self.expected_speed_mps(cell, hour, class_default_mps);
            self.observe_live_in(cell, now_s, speed_mps, expected);
        }
    }

    /// Record a fleet speed seen at `now_s` in `cell`, where the ETA expected `expected_mps`
    /// (before the live factor), for the live factor.
    pub fn observe_live_in(&mut self, cell: u64, now_s: f64, speed_mps: f64, expected_mps: f64) {
        if !plausible(speed_mps) || !now_s.is_finite() {
            return;
        }
        let expected = expected_mps;
        if !(expected.is_finite() && expected > 0.0) {
            return;
        }
        let slot = (now_s / self.bucket_s()).floor() as i64;
        let buckets = self.live.entry(cell).or_default();
        let b = &mut buckets[slot.rem_euclid(LIVE_BUCKETS as i64) as usize];
        if b.slot != slot || b.count == 0 {
            *b = LiveBucket {
                slot,
                ..LiveBucket::default()
            };
        }
        b.observed_mps_sum += speed_mps;
        b.expected_mps_sum += expected;
        b.count += 1;
    }

    /// Live correction for `cell` at `now_s`: mean observed / mean expected speed over the live
    /// window, clamped to `[live_factor_min, live_factor_max]`; 1.0 with too few recent samples.
    pub fn live_factor(&self, cell: u64, now_s: f64) -> f64 {
        let Some(buckets) = self.live.get(&cell) else {
            return 1.0;
        };
        let now_slot = (now_s / self.bucket_s()).floor() as i64;
        let oldest = now_slot - (LIVE_BUCKETS as i64 - 1);
        let (mut obs, mut exp, mut n) = (0.0, 0.0, 0u32);
        for b in buckets
            .iter()
            .filter(|b| b.count > 0 && (oldest..=now_slot).contains(&b.slot))
        {
            obs += b.observed_mps_sum;
            exp += b.expected_mps_sum;
            n += b.count;
        }
        if n < self.config.live_min_samples.max(1) || exp <= 0.0 {
            return 1.0;
        }
        (obs / exp).clamp(self.config.live_factor_min, self.config.live_factor_max)
    }

    /// The speed the ETA uses: expected speed x live factor.
    pub fn speed_mps(
        &self,
        cell: u64,
        hour_of_week: u8,
        now_s: f64,
        class_default_mps: f64,
    ) -> f64 {
        self.expected_speed_mps(cell, hour_of_week, class_default_mps)
            * self.live_factor(cell, now_s)
    }

    /// Applies samples taken elsewhere (for example by the shards of a hub, each holding a
    /// read-only view of this model while it works): see [`SpeedSample`].
    pub fn apply(&mut self, samples: &[SpeedSample]) {
        for s in samples {
            match *s {
                SpeedSample::Historical {
                    cell,
                    hour_of_week,
                    speed_mps,
                } => self.observe(cell, hour_of_week, speed_mps),
                SpeedSample::Ratio {
                    key,
                    hour_of_week,
                    ratio,
                } => self.observe_ratio(&key, hour_of_week, ratio),
                SpeedSample::Live {
                    cell,
                    now_s,
                    speed_mps,
                    expected_mps,
                } => self.observe_live_in(cell, now_s, speed_mps, expected_mps),
            }
        }
    }

    /// Drop live data older than the window (call now and then to bound memory).
    pub fn prune_live(&mut self, now_s: f64) {
        let oldest = (now_s / self.bucket_s()).floor() as i64 - (LIVE_BUCKETS as i64 - 1);
        self.live
            .retain(|_, buckets| buckets.iter().any(|b| b.count > 0 && b.slot >= oldest));
    }

    /// Number of (cell, hour) entries in the historical table.
    pub fn historical_len(&self) -> usize {
        self.historical.len()
    }

    /// The historical table as plain rows, sorted by (cell, hour), for persistence.
    pub fn export_historical(&self) -> Vec<SpeedRow> {
        let mut rows: Vec<SpeedRow> = self
            .historical
            .iter()
            .map(|(&(cell, hour), m)| (cell, hour, m.mean_mps, m.count))
            .collect();
        rows.sort_by_key(|r| (r.0, r.1));
        rows
    }

    /// Replace the historical table with `rows` (as made by [`SpeedModel::export_historical`]).
    /// Nothing changes when a row is invalid.
    pub fn import_historical(&mut self, rows: &[SpeedRow]) -> Result<(), SpeedImportError> {
        let mut table = HashMap::with_capacity_and_hasher(rows.len(), RandomState::default());
        for (row, &(cell, hour, mean_mps, count)) in rows.iter().enumerate() {
            if CellIndex::try_from(cell).is_err() {
                return Err(SpeedImportError::InvalidCell { row, cell });
            }
            if hour >= HOURS_PER_WEEK {
                return Err(SpeedImportError::InvalidHour { row, hour });
            }
            if !(mean_mps.is_finite() && mean_mps >= 0.0) {
                return Err(SpeedImportError::InvalidSpeed { row, mean_mps });
            }
            table.insert((cell, hour), Mean { mean_mps, count });
        }
        self.historical = table;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELSINKI: LatLng = LatLng::new(60.1699, 24.9384);

    fn cell() -> u64 {
        cell_of(HELSINKI).expect("valid coordinate")
    }

    #[test]
    fn hour_of_week_starts_monday_midnight_local() {
        // 2024-01-01 00:00 UTC was a Monday.
        assert_eq!(hour_of_week(1_704_067_200.0, 0), 0);
        assert_eq!(hour_of_week(1_704_067_200.0 + 3599.0, 0), 0);
        assert_eq!(hour_of_week(1_704_067_200.0 + 3600.0, 0), 1);
        // Sunday 23:00 UTC is Monday 01:00 in Helsinki (UTC+2).
        assert_eq!(hour_of_week(1_704_067_200.0 - 3600.0, 0), 167);
        assert_eq!(hour_of_week(1_704_067_200.0 - 3600.0, 7200), 1);
        // The epoch was a Thursday.
        assert_eq!(hour_of_week(0.0, 0), 72);
    }

    #[test]
    fn historical_update_moves_the_mean_and_blends_with_the_class_default() {
        let mut m = SpeedModel::new(SpeedModelConfig {
            min_samples: 10,
            ..SpeedModelConfig::default()
        });
        let default_mps = 10.0;
        assert_eq!(m.expected_speed_mps(cell(), 8, default_mps), 10.0);
        for _ in 0..5 {
            m.observe(cell(), 8, 4.0);
        }
        let (mean, count) = m.historical(cell(), 8).unwrap_or((0.0, 0));
        assert_eq!(count, 5);
        assert!((mean - 4.0).abs() < 1e-6);
        // 5 of 10 samples: halfway between the mean (4) and the default (10).
        assert!((m.expected_speed_mps(cell(), 8, default_mps) - 7.0).abs() < 1e-6);
        for _ in 0..5 {
            m.observe(cell(), 8, 6.0);
        }
        // Running mean of 5 x 4 and 5 x 6, trusted fully at 10 samples.
        assert!((m.expected_speed_mps(cell(), 8, default_mps) - 5.0).abs() < 1e-5);
        // Other hours are untouched.
        assert_eq!(m.expected_speed_mps(cell(), 9, default_mps), 10.0);
    }

    #[test]
    fn running_mean_turns_into_an_exponential_average_past_max_weight() {
        let mut m = SpeedModel::new(SpeedModelConfig {
            max_weight: 4,
            ..SpeedModelConfig::default()
        });
        for _ in 0..4 {
            m.observe(cell(), 0, 10.0);
        }
        m.observe(cell(), 0, 2.0);
        let (mean, count) = m.historical(cell(), 0).unwrap_or((0.0, 0));
        assert_eq!(count, 5);
        assert!((mean - 8.0).abs() < 1e-6, "{mean}");
    }

    #[test]
    fn ignores_implausible_speeds() {
        let mut m = SpeedModel::default();
        m.observe(cell(), 0, f64::NAN);
        m.observe(cell(), 0, -1.0);
        m.observe(cell(), 0, 120.0);
        m.observe(cell(), 200, 10.0);
        assert_eq!(m.historical_len(), 0);
    }

    #[test]
    fn live_factor_is_observed_over_expected_clamped_and_expires() {
        let mut m = SpeedModel::new(SpeedModelConfig::default());
        let now = 1_704_067_200.0;
        assert_eq!(m.live_factor(cell(), now), 1.0);
        m.observe_live(HELSINKI, now, 5.0, 10.0);
        m.observe_live(HELSINKI, now + 1.0, 5.0, 10.0);
        // Too few samples yet.
        assert_eq!(m.live_factor(cell(), now + 2.0), 1.0);
        m.observe_live(HELSINKI, now + 2.0, 5.0, 10.0);
        assert!((m.live_factor(cell(), now + 3.0) - 0.5).abs() < 1e-9);
        // A jam: clamped at 0.3.
        for i in 0..20 {
            m.observe_live(HELSINKI, now + 10.0 + f64::from(i), 0.0, 10.0);
        }
        assert!((m.live_factor(cell(), now + 40.0) - 0.3).abs() < 1e-9);
        // Ten minutes later the window is empty again.
        assert_eq!(m.live_factor(cell(), now + 600.0), 1.0);
        m.prune_live(now + 600.0);
        assert!(m.live.is_empty());
    }

    #[test]
    fn export_import_round_trips_and_rejects_bad_rows() {
        let mut m = SpeedModel::default();
        m.observe(cell(), 3, 7.5);
        m.observe(cell(), 100, 12.0);
        let rows = m.export_historical();
        assert_eq!(rows.len(), 2);
        let mut n = SpeedModel::default();
        assert_eq!(n.import_historical(&rows), Ok(()));
        assert_eq!(n.export_historical(), rows);
        assert!(matches!(
            n.import_historical(&[(1, 0, 1.0, 1)]),
            Err(SpeedImportError::InvalidCell { row: 0, .. })
        ));
        assert!(matches!(
            n.import_historical(&[(cell(), 168, 1.0, 1)]),
            Err(SpeedImportError::InvalidHour { .. })
        ));
        assert_eq!(n.export_historical(), rows);
    }

    fn key_at(lat: f64, lng: f64, class: RoadClass) -> SegmentKey {
        SegmentKey::of(LatLng::new(lat, lng), LatLng::new(lat + 0.0003, lng), class)
    }

    #[test]
    fn a_segment_nobody_drove_gets_its_neighbours_ratio_and_a_driven_one_its_own() {
        let mut m = SpeedModel::default();
        let driven = key_at(60.1699, 24.9384, RoadClass::Primary);
        let next_door = key_at(60.1702, 24.9384, RoadClass::Primary);
        assert_eq!(driven.cell, next_door.cell, "same H3 cell");
        assert_ne!(driven.segment, next_door.segment);
        assert_eq!(
            m.expected_ratio(&driven, 10),
            1.0,
            "nothing learnt: free speed"
        );
        for _ in 0..50 {
            m.observe_ratio(&driven, 10, 0.6);
        }
        let own = m.expected_ratio(&driven, 10);
        assert!((own - 0.6).abs() < 0.02, "{own}");
        // The neighbour shares the cell's (and class's) slowness.
        let near = m.expected_ratio(&next_door, 10);
        assert!((near - 0.6).abs() < 0.05, "{near}");
        // Far away, only the city-wide ratio is known.
        let far = key_at(60.20, 24.90, RoadClass::Residential);
        let city = m.expected_ratio(&far, 10);
        assert!((city - 0.6).abs() < 0.05, "{city}");
        // A fast segment next door pulls its own estimate up, not the driven one's much.
        for _ in 0..50 {
            m.observe_ratio(&next_door, 10, 1.0);
        }
        assert!(m.expected_ratio(&next_door, 10) > 0.9);
        assert!(m.expected_ratio(&driven, 10) < 0.7);
        // Speeds: free speed x ratio.
        let v = m.segment_speed_mps(&driven, 10, 10.0);
        assert!((v - 10.0 * m.expected_ratio(&driven, 10)).abs() < 1e-9);
    }

    #[test]
    fn a_new_hour_starts_from_the_city_wide_factor_of_that_hour_not_from_scratch() {
        let mut m = SpeedModel::default();
        let here = key_at(60.1699, 24.9384, RoadClass::Secondary);
        let elsewhere = key_at(60.19, 24.95, RoadClass::Secondary);
        // Hour 10: this segment is at 0.8 of free speed, the city at 0.8 too.
        for _ in 0..200 {
            m.observe_ratio(&here, 10, 0.8);
            m.observe_ratio(&elsewhere, 10, 0.8);
        }
        // Hour 11: rush hour elsewhere, 0.6 (three quarters of hour 10).
        for _ in 0..200 {
            m.observe_ratio(&elsewhere, 11, 0.6);
        }
        // Nobody drove here in hour 11: its own ratio x the city's hour-11 factor.
        let r = m.expected_ratio(&here, 11);
        assert!((0.55..0.7).contains(&r), "{r}");
        assert!(m.expected_ratio(&here, 10) > r);
    }

    #[test]
    fn implausible_ratios_are_ignored() {
        let mut m = SpeedModel::default();
        let k = key_at(60.1699, 24.9384, RoadClass::Primary);
        m.observe_ratio(&k, 1, f64::NAN);
        m.observe_ratio(&k, 1, 9.0);
        m.observe_ratio(&k, 200, 0.5);
        assert!(!m.has_ratios());
        m.observe_ratio(&k, 1, 0.5);
        assert!(m.has_ratios());
    }
}
