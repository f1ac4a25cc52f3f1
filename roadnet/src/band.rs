//! The ETA's confidence band: how far off past estimates turned out to be, learnt from
//! finished trips, turned into a low and a high bound around a new estimate.
//!
//! Each finished trip contributes pairs (what was predicted as time left, what time was left
//! in fact). [`EtaBand`] keeps, per bucket of predicted time left (an estimate of 2 minutes is
//! relatively less certain than one of 20), a histogram of the log of the ratio true / predicted.
//! The band of a new estimate is that bucket's `low_quantile` and `high_quantile` ratios (p10
//! and p90 by default: the true arrival falls inside the band 8 times in 10) times the
//! estimate. Until a bucket has seen `min_samples`, its quantiles are blended with a prior
//! (`prior_low`, `prior_high`), so a fresh hub shows a plausible band from the first fix.
//! Counts are halved once a bucket holds `max_samples`, so the band follows traffic that
//! changes over days. Sans-IO: fed pairs, asked for bands.

use serde::{Deserialize, Serialize};

/// Upper bounds of the buckets of predicted time left, seconds (the last is open).
const BUCKET_UPPER_S: [f64; 5] = [120.0, 300.0, 600.0, 1200.0, 2400.0];
const BUCKETS: usize = BUCKET_UPPER_S.len() + 1;
/// Histogram of ln(true / predicted) over [-LN_SPAN, LN_SPAN] (ratios ~0.2 to ~5).
const BINS: usize = 64;
const LN_SPAN: f64 = 1.6;

/// Knobs of [`EtaBand`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BandConfig {
    /// Quantile of true / predicted taken as the band's low end.
    pub low_quantile: f64,
    /// Quantile taken as the band's high end.
    pub high_quantile: f64,
    /// Ratios used while a bucket has no data (blended out as it fills).
    pub prior_low: f64,
    pub prior_high: f64,
    /// Samples after which a bucket's own quantiles are used alone.
    pub min_samples: u32,
    /// Samples at which a bucket's counts are halved (older trips weigh less).
    pub max_samples: u32,
    /// The band is at least this wide on each side, seconds (a GPS fix's worth of jitter).
    pub min_half_width_s: f64,
}

impl Default for BandConfig {
    fn default() -> Self {
        Self {
            low_quantile: 0.10,
            high_quantile: 0.90,
            prior_low: 0.85,
            prior_high: 1.30,
            min_samples: 50,
            max_samples: 20_000,
            min_half_width_s: 15.0,
        }
    }
}

#[derive(Clone, Debug)]
struct Bucket {
    bins: [u32; BINS],
    total: u32,
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            bins: [0; BINS],
            total: 0,
        }
    }
}

impl Bucket {
    fn add(&mut self, ln_ratio: f64, max: u32) {
        let x = (ln_ratio + LN_SPAN) / (2.0 * LN_SPAN) * BINS as f64;
        let i = (x.floor().max(0.0) as usize).min(BINS - 1);
        self.bins[i] += 1;
        self.total += 1;
        if self.total >= max {
            self.total = 0;
            for b in &mut self.bins {
                *b /= 2;
                self.total += *b;
            }
        }
    }

    /// The ratio at quantile `q` (linear within the bin).
    fn ratio_at(&self, q: f64) -> f64 {
        let target = q * f64::from(self.total);
        let mut seen = 0.0;
        for (i, &n) in self.bins.iter().enumerate() {
            let n = f64::from(n);
            if n > 0.0 && seen + n >= target {
                let within = ((target - seen) / n).clamp(0.0, 1.0);
                let ln = -LN_SPAN + (i as f64 + within) * (2.0 * LN_SPAN) / BINS as f64;
                return ln.exp();
            }
            seen += n;
        }
        LN_SPAN.exp()
    }
}

/// The learnt band (see the module docs).
#[derive(Clone, Debug)]
pub struct EtaBand {
    config: BandConfig,
    buckets: [Bucket; BUCKETS],
}

impl Default for EtaBand {
    fn default() -> Self {
        Self::new(BandConfig::default())
    }
}

fn bucket_of(predicted_s: f64) -> usize {
    BUCKET_UPPER_S
        .iter()
        .position(|&u| predicted_s < u)
        .unwrap_or(BUCKETS - 1)
}

impl EtaBand {
    pub fn new(config: BandConfig) -> Self {
        Self {
            config,
            buckets: Default::default(),
        }
    }

    /// One estimate of a finished trip: `predicted_s` was shown as time left, `actual_s` is
    /// what it took. Pairs with a non-positive side are ignored.
    pub fn record(&mut self, predicted_s: f64, actual_s: f64) {
        if !(predicted_s > 0.0 && actual_s > 0.0 && predicted_s.is_finite() && actual_s.is_finite())
        {
            return;
        }
        let max = self.config.max_samples.max(2);
        self.buckets[bucket_of(predicted_s)].add((actual_s / predicted_s).ln(), max);
    }

    /// Samples the bucket of `predicted_s` holds.
    pub fn samples(&self, predicted_s: f64) -> u32 {
        self.buckets[bucket_of(predicted_s)].total
    }

    /// The band around an estimate of `predicted_s` left: (low, high) seconds, at least
    /// `2 * min_half_width_s` wide. It is skewed the way past estimates erred (a model that is
    /// often late gets a long high side), and a model that is always late gets a band above
    /// its estimate: the band is calibrated, the estimate is the smoothed prediction.
    pub fn band(&self, predicted_s: f64) -> (f64, f64) {
        let p = predicted_s.max(0.0);
        let c = &self.config;
        let b = &self.buckets[bucket_of(p)];
        let weight = (f64::from(b.total) / f64::from(c.min_samples.max(1))).min(1.0);
        let (mut lo, mut hi) = (c.prior_low, c.prior_high);
        if b.total > 0 {
            lo = (1.0 - weight) * lo + weight * b.ratio_at(c.low_quantile);
            hi = (1.0 - weight) * hi + weight * b.ratio_at(c.high_quantile);
        }
        let (mut low, mut high) = (p * lo, p * hi);
        if high - low < 2.0 * c.min_half_width_s {
            let mid = (low + high) / 2.0;
            (low, high) = (mid - c.min_half_width_s, mid + c.min_half_width_s);
        }
        (low.max(0.0), high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_model_gives_the_prior_with_a_minimum_width() {
        let band = EtaBand::default();
        let (lo, hi) = band.band(1000.0);
        assert!(
            (lo - 850.0).abs() < 1e-9 && (hi - 1300.0).abs() < 1e-9,
            "{lo} {hi}"
        );
        let (lo, hi) = band.band(20.0);
        // 17-26 s widened to the 30 s minimum around its midpoint.
        assert_eq!((lo, hi), (6.5, 36.5));
    }

    #[test]
    fn learnt_quantiles_cover_the_share_they_promise() {
        // Trips that take 0.9x to 1.5x what was predicted, uniformly.
        let mut band = EtaBand::default();
        let mut x: u64 = 7;
        let mut ratio = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            0.9 + 0.6 * ((x >> 11) as f64 / (1u64 << 53) as f64)
        };
        for _ in 0..5_000 {
            band.record(900.0, 900.0 * ratio());
        }
        let (lo, hi) = band.band(900.0);
        // p10 ~ 0.96, p90 ~ 1.44, within a bin's width (~5 %).
        assert!((lo / 900.0 - 0.96).abs() < 0.05, "{lo}");
        assert!((hi / 900.0 - 1.44).abs() < 0.07, "{hi}");
        let inside = (0..5_000)
            .map(|_| 900.0 * ratio())
            .filter(|t| (lo..=hi).contains(t))
            .count();
        let share = inside as f64 / 5_000.0;
        assert!((share - 0.8).abs() < 0.05, "{share}");
        // Another bucket is untouched.
        assert_eq!(band.samples(60.0), 0);
    }

    #[test]
    fn halving_keeps_the_shape_and_bad_pairs_are_ignored() {
        let mut band = EtaBand::new(BandConfig {
            max_samples: 100,
            min_samples: 10,
            ..BandConfig::default()
        });
        for _ in 0..1_000 {
            band.record(400.0, 400.0);
        }
        assert!(band.samples(400.0) < 100);
        let (lo, hi) = band.band(400.0);
        assert!(lo <= 400.0 && hi >= 400.0 && hi - lo <= 100.0, "{lo} {hi}");
        for (p, a) in [
            (0.0, 10.0),
            (10.0, -1.0),
            (f64::NAN, 5.0),
            (5.0, f64::INFINITY),
        ] {
            band.record(p, a);
        }
        assert!(band.samples(400.0) < 100);
        assert_eq!(band.samples(10.0), 0);
    }
}
