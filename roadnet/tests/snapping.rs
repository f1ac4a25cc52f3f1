//! Snapping behaviour on routes that double back or pass close to themselves.

mod common;

use common::{at, route_through};
use roadnet::RouteSnapper;

/// East 500 m along a street, U-turn, and back west on the same street to the start.
fn out_and_back() -> roadnet::Route {
    let mut xy: Vec<(f64, f64)> = (0..=5).map(|i| (f64::from(i) * 100.0, 0.0)).collect();
    xy.extend((0..5).rev().map(|i| (f64::from(i) * 100.0, 0.0)));
    route_through(&xy, 10.0)
}

#[test]
fn snapping_on_a_route_that_doubles_back_does_not_jump() {
    let route = out_and_back();
    assert!((route.length_m - 1000.0).abs() < 1.0);
    let snapper = RouteSnapper::new(&route);
    let mut progress = 0.0;
    // A fix every 20 m of driving, with 4 m of GPS noise across the street.
    for step in 0..=50 {
        let true_m = f64::from(step) * 20.0;
        let x = if true_m <= 500.0 {
            true_m
        } else {
            1000.0 - true_m
        };
        let noise = if step % 2 == 0 { 4.0 } else { -4.0 };
        let snap = snapper
            .snap(at(x, noise), progress)
            .expect("non-empty route");
        assert!(
            (snap.progress_m - true_m).abs() < 2.0,
            "fix {step}: true progress {true_m} m, snapped {} m",
            snap.progress_m
        );
        assert!((snap.offset_m - 4.0).abs() < 0.5);
        assert!((snap.remaining_m - (route.length_m - snap.progress_m)).abs() < 1e-9);
        progress = snap.progress_m;
    }
}

#[test]
fn fixes_on_the_return_leg_snap_to_it_even_after_a_gap() {
    let route = out_and_back();
    let snapper = RouteSnapper::new(&route);
    // The same place is 400 m and 600 m along the route: without history it is the first pass.
    let fresh = snapper.snap(at(400.0, 3.0), 0.0).expect("snap");
    assert!(
        (fresh.progress_m - 400.0).abs() < 1.0,
        "{}",
        fresh.progress_m
    );
    // Last fix at the turnaround; the next one arrives 100 m into the return leg.
    let snap = snapper.snap(at(400.0, 3.0), 500.0).expect("snap");
    assert!((snap.progress_m - 600.0).abs() < 1.0, "{}", snap.progress_m);
    assert!(snap.segment_index >= 5);
    // Just after the U-turn, where the outbound leg is within tolerance behind.
    let snap = snapper.snap(at(490.0, -2.0), 500.0).expect("snap");
    assert!((snap.progress_m - 510.0).abs() < 1.0, "{}", snap.progress_m);
}

#[test]
fn outbound_fixes_do_not_jump_to_the_return_leg() {
    let route = out_and_back();
    let snapper = RouteSnapper::new(&route);
    let snap = snapper.snap(at(300.0, 2.0), 280.0).expect("snap");
    assert!((snap.progress_m - 300.0).abs() < 1.0, "{}", snap.progress_m);
    // GPS noise a few metres backwards while standing still stays on the outbound leg.
    let snap = snapper.snap(at(297.0, 2.0), 300.0).expect("snap");
    assert!((snap.progress_m - 297.0).abs() < 1.0, "{}", snap.progress_m);
}

#[test]
fn a_later_part_of_the_route_nearby_does_not_steal_the_fix() {
    // East 300 m, north 40 m, and back west 300 m on a parallel street 40 m away.
    let route = route_through(
        &[(0.0, 0.0), (300.0, 0.0), (300.0, 40.0), (0.0, 40.0)],
        10.0,
    );
    let snapper = RouteSnapper::new(&route);
    // On the first street, slightly behind the last snap: the parallel street is "forward"
    // but fits 35 m worse.
    let snap = snapper.snap(at(148.0, 3.0), 150.0).expect("snap");
    assert!((snap.progress_m - 148.0).abs() < 1.0, "{}", snap.progress_m);
}

#[test]
fn far_from_the_route_snaps_to_the_nearest_segment() {
    let route = out_and_back();
    let snapper = RouteSnapper::new(&route);
    let snap = snapper.snap(at(250.0, 400.0), 0.0).expect("snap");
    assert!((snap.offset_m - 400.0).abs() < 1.0);
    assert!((snap.progress_m - 250.0).abs() < 1.0 || (snap.progress_m - 750.0).abs() < 1.0);
}

#[test]
fn an_imprecise_snap_at_the_turnaround_does_not_drag_progress_backwards() {
    let route = out_and_back();
    let snapper = RouteSnapper::new(&route);
    // The turnaround fix snapped 2 m short of it; the driver then heads back west.
    let mut progress = 498.0;
    for step in 1..=10 {
        let true_m = 500.0 + f64::from(step) * 10.0 - 5.0;
        let snap = snapper
            .snap(at(1000.0 - true_m, 1.0), progress)
            .expect("snap");
        assert!(
            (snap.progress_m - true_m).abs() < 1.0,
            "step {step}: {} vs {true_m}",
            snap.progress_m
        );
        progress = snap.progress_m;
    }
}
