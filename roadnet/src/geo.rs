//! Geographic primitives: coordinates, great-circle distance and bearing, and a local metric projection.

use serde::{Deserialize, Serialize};

// One coordinate type for the whole workspace: the wire crate's.
pub use protocol::geo::{bearing_deg, haversine_m, LatLng, EARTH_RADIUS_M};

/// An axis-aligned box of coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    /// South-west corner.
    pub min: LatLng,
    /// North-east corner.
    pub max: LatLng,
}

impl BBox {
    /// The smallest box holding all `points`, or `None` when there are none.
    pub fn from_points(points: impl IntoIterator<Item = LatLng>) -> Option<Self> {
        let mut it = points.into_iter();
        let first = it.next()?;
        let mut b = BBox {
            min: first,
            max: first,
        };
        for p in it {
            b.min.lat = b.min.lat.min(p.lat);
            b.min.lng = b.min.lng.min(p.lng);
            b.max.lat = b.max.lat.max(p.lat);
            b.max.lng = b.max.lng.max(p.lng);
        }
        Some(b)
    }

    /// The centre of the box.
    pub fn center(&self) -> LatLng {
        LatLng::new(
            (self.min.lat + self.max.lat) / 2.0,
            (self.min.lng + self.max.lng) / 2.0,
        )
    }

    /// True when `p` lies inside the box or on its edge.
    pub fn contains(&self, p: LatLng) -> bool {
        (self.min.lat..=self.max.lat).contains(&p.lat)
            && (self.min.lng..=self.max.lng).contains(&p.lng)
    }
}

/// Equirectangular projection around an origin: lat/lng to x (east) and y (north) in metres.
///
/// Accurate to well under 1% within a few tens of kilometres of the origin, which is what
/// the Euclidean distances of the R-trees need at city scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalProjection {
    origin: LatLng,
    m_per_deg_lat: f64,
    m_per_deg_lng: f64,
}

impl LocalProjection {
    /// A projection centred on `origin`.
    pub fn new(origin: LatLng) -> Self {
        let m_per_deg_lat = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        let m_per_deg_lng = m_per_deg_lat * origin.lat.to_radians().cos();
        Self {
            origin,
            m_per_deg_lat,
            m_per_deg_lng,
        }
    }

    /// The origin, which projects to `[0, 0]`.
    pub fn origin(&self) -> LatLng {
        self.origin
    }

    /// Project a coordinate to `[x_m, y_m]` relative to the origin.
    pub fn project(&self, p: LatLng) -> [f64; 2] {
        [
            (p.lng - self.origin.lng) * self.m_per_deg_lng,
            (p.lat - self.origin.lat) * self.m_per_deg_lat,
        ]
    }

    /// Inverse of [`LocalProjection::project`].
    pub fn unproject(&self, xy: [f64; 2]) -> LatLng {
        LatLng::new(
            self.origin.lat + xy[1] / self.m_per_deg_lat,
            self.origin.lng + xy[0] / self.m_per_deg_lng,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_degree_of_latitude_is_about_111_km() {
        let d = haversine_m(LatLng::new(60.0, 25.0), LatLng::new(61.0, 25.0));
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
    }

    #[test]
    fn bearing_points_east_and_south() {
        let o = LatLng::new(60.17, 24.94);
        assert!((bearing_deg(o, LatLng::new(60.17, 24.95)) - 90.0).abs() < 0.1);
        assert!((bearing_deg(o, LatLng::new(60.16, 24.94)) - 180.0).abs() < 1e-9);
        assert!(bearing_deg(o, LatLng::new(60.18, 24.94)).abs() < 1e-9);
    }

    #[test]
    fn projection_round_trips_and_matches_haversine_at_city_scale() {
        let proj = LocalProjection::new(LatLng::new(60.17, 24.94));
        let p = LatLng::new(60.19, 24.99);
        let back = proj.unproject(proj.project(p));
        assert!((back.lat - p.lat).abs() < 1e-12 && (back.lng - p.lng).abs() < 1e-12);
        let [x, y] = proj.project(p);
        let euclid = (x * x + y * y).sqrt();
        let great_circle = haversine_m(proj.origin(), p);
        assert!((euclid - great_circle).abs() / great_circle < 0.005);
    }
}
