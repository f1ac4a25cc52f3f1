//! Small geodesy helpers: great-circle distance, bearings, validity of coordinates.

use serde::{Deserialize, Serialize};

/// Mean Earth radius used by the haversine formula, in metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A WGS-84 position in degrees.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LatLng {
    /// Latitude in degrees, positive north.
    pub lat: f64,
    /// Longitude in degrees, positive east.
    pub lng: f64,
}

impl LatLng {
    pub const fn new(lat: f64, lng: f64) -> Self {
        Self { lat, lng }
    }

    /// True when both coordinates are finite and inside their ranges.
    pub fn is_valid(&self) -> bool {
        self.lat.is_finite()
            && self.lng.is_finite()
            && (-90.0..=90.0).contains(&self.lat)
            && (-180.0..=180.0).contains(&self.lng)
    }
}

/// Great-circle distance between two points in metres.
pub fn haversine_m(a: LatLng, b: LatLng) -> f64 {
    let (p1, p2) = (a.lat.to_radians(), b.lat.to_radians());
    let dp = p2 - p1;
    let dl = (b.lng - a.lng).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Initial bearing from `a` to `b`, degrees clockwise from north in `[0, 360)`.
pub fn bearing_deg(a: LatLng, b: LatLng) -> f64 {
    let (p1, p2) = (a.lat.to_radians(), b.lat.to_radians());
    let dl = (b.lng - a.lng).to_radians();
    let y = dl.sin() * p2.cos();
    let x = p1.cos() * p2.sin() - p1.sin() * p2.cos() * dl.cos();
    let deg = y.atan2(x).to_degrees().rem_euclid(360.0);
    // rem_euclid can return exactly 360.0 for tiny negative inputs.
    if deg >= 360.0 {
        0.0
    } else {
        deg
    }
}

/// Moves `from` by `distance_m` along `bearing_deg` (spherical Earth).
pub fn destination(from: LatLng, bearing_deg: f64, distance_m: f64) -> LatLng {
    let d = distance_m / EARTH_RADIUS_M;
    let b = bearing_deg.to_radians();
    let p1 = from.lat.to_radians();
    let l1 = from.lng.to_radians();
    let p2 = (p1.sin() * d.cos() + p1.cos() * d.sin() * b.cos()).asin();
    let l2 = l1 + (b.sin() * d.sin() * p1.cos()).atan2(d.cos() - p1.sin() * p2.sin());
    LatLng::new(p2.to_degrees(), ((l2.to_degrees() + 540.0) % 360.0) - 180.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_known_distance_helsinki_to_tallinn() {
        let hel = LatLng::new(60.1699, 24.9384);
        let tll = LatLng::new(59.4370, 24.7536);
        let d = haversine_m(hel, tll);
        assert!((d - 82_300.0).abs() < 1_000.0, "{d}");
    }

    #[test]
    fn destination_then_distance_round_trips() {
        let a = LatLng::new(60.17, 24.94);
        let b = destination(a, 73.0, 1234.0);
        assert!((haversine_m(a, b) - 1234.0).abs() < 0.5);
        assert!((bearing_deg(a, b) - 73.0).abs() < 0.1);
    }

    #[test]
    fn rejects_out_of_range_and_nan_coordinates() {
        assert!(!LatLng::new(91.0, 0.0).is_valid());
        assert!(!LatLng::new(0.0, -180.5).is_valid());
        assert!(!LatLng::new(f64::NAN, 0.0).is_valid());
        assert!(LatLng::new(-90.0, 180.0).is_valid());
    }
}
