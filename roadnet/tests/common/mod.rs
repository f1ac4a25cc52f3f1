//! Helpers shared by the integration tests.
#![allow(dead_code)]

use roadnet::{LatLng, LocalProjection, RoadClass, Route, RoutePiece};

pub const ORIGIN: LatLng = LatLng::new(60.17, 24.94);

/// A point `x_m` east and `y_m` north of [`ORIGIN`].
pub fn at(x_m: f64, y_m: f64) -> LatLng {
    LocalProjection::new(ORIGIN).unproject([x_m, y_m])
}

/// A route through the given (x, y) metre offsets from ORIGIN, all at `speed_mps`.
pub fn route_through(xy: &[(f64, f64)], speed_mps: f64) -> Route {
    let start = at(xy[0].0, xy[0].1);
    Route::from_pieces(
        start,
        xy[1..].iter().map(|&(x, y)| RoutePiece {
            to: at(x, y),
            class: RoadClass::Residential,
            free_speed_mps: speed_mps,
        }),
    )
}

/// Deterministic pseudo-random numbers (splitmix64) so tests need no extra crate.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
