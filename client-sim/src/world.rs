//! Where simulated drivers drive: paths with cumulative distances, and trips through a city.

use protocol::geo::{bearing_deg, haversine_m, LatLng};

/// A polyline a driver follows, with cumulative distance for position lookups.
#[derive(Clone, Debug)]
pub struct PathLine {
    points: Vec<LatLng>,
    cum_m: Vec<f64>,
}

impl PathLine {
    /// Builds a path; consecutive duplicate points are dropped. Needs at least one point.
    pub fn new(points: Vec<LatLng>) -> Option<Self> {
        let mut pts: Vec<LatLng> = Vec::with_capacity(points.len());
        for p in points {
            if pts.last().is_none_or(|q| haversine_m(*q, p) > 0.01) {
                pts.push(p);
            }
        }
        if pts.is_empty() {
            return None;
        }
        let mut cum = Vec::with_capacity(pts.len());
        let mut total = 0.0;
        cum.push(0.0);
        for w in pts.windows(2) {
            total += haversine_m(w[0], w[1]);
            cum.push(total);
        }
        Some(Self {
            points: pts,
            cum_m: cum,
        })
    }

    pub fn length_m(&self) -> f64 {
        self.cum_m.last().copied().unwrap_or(0.0)
    }

    pub fn points(&self) -> &[LatLng] {
        &self.points
    }

    pub fn start(&self) -> LatLng {
        self.points[0]
    }

    pub fn end(&self) -> LatLng {
        self.points[self.points.len() - 1]
    }

    /// Position and heading after `distance_m` along the path (clamped to its ends).
    pub fn at(&self, distance_m: f64) -> (LatLng, f64) {
        if self.points.len() == 1 {
            return (self.points[0], 0.0);
        }
        let d = distance_m.clamp(0.0, self.length_m());
        // Index of the segment containing d.
        let i = match self.cum_m.binary_search_by(|c| c.total_cmp(&d)) {
            Ok(i) => i.min(self.points.len() - 2),
            Err(i) => i.saturating_sub(1).min(self.points.len() - 2),
        };
        let (a, b) = (self.points[i], self.points[i + 1]);
        let seg = self.cum_m[i + 1] - self.cum_m[i];
        let t = if seg > 0.0 {
            (d - self.cum_m[i]) / seg
        } else {
            0.0
        };
        let p = LatLng::new(a.lat + (b.lat - a.lat) * t, a.lng + (b.lng - a.lng) * t);
        (p, bearing_deg(a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_along_a_path_interpolates_and_clamps() {
        let a = LatLng::new(60.0, 24.0);
        let b = protocol::geo::destination(a, 90.0, 1000.0);
        let c = protocol::geo::destination(b, 0.0, 500.0);
        let p = PathLine::new(vec![a, a, b, c]).expect("path");
        assert!((p.length_m() - 1500.0).abs() < 1.0);
        let (mid, h) = p.at(500.0);
        assert!((haversine_m(a, mid) - 500.0).abs() < 1.0);
        assert!((h - 90.0).abs() < 0.5);
        let (after, h2) = p.at(1250.0);
        assert!((haversine_m(b, after) - 250.0).abs() < 1.0);
        assert!(h2.abs() < 0.5 || (h2 - 360.0).abs() < 0.5);
        assert_eq!(p.at(1e9).0, c);
        assert_eq!(p.at(-5.0).0, a);
    }
}
