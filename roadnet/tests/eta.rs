//! ETA engine behaviour: smoothing with countdown, pickup dwell, deviation, re-routing, and
//! learnt speeds feeding the estimate.

mod common;

use common::{at, route_through};
use roadnet::{
    cell_of, hour_of_week, EtaConfig, EtaEngine, LatLng, NodeId, RoadGraph, SpeedModel,
    SpeedModelConfig,
};

const T0: f64 = 1_704_067_200.0; // Monday 2024-01-01 00:00 UTC

/// Three 100 m segments east at 10 m/s.
fn three_segments() -> roadnet::Route {
    route_through(
        &[(0.0, 0.0), (100.0, 0.0), (200.0, 0.0), (300.0, 0.0)],
        10.0,
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 0.05
}

#[test]
fn raw_eta_is_remaining_distance_over_expected_speed() {
    let mut eta = EtaEngine::new(three_segments(), None, EtaConfig::default());
    let model = SpeedModel::default();
    let u = eta.handle_fix(T0, at(50.0, 2.0), &model);
    assert!(close(u.progress_m, 50.0), "{u:?}");
    assert!(close(u.raw_eta_s, u.remaining_m / 10.0), "{u:?}");
    assert!(close(u.raw_eta_s, 25.0), "{u:?}");
    assert_eq!(u.smoothed_eta_s, u.raw_eta_s, "first fix is shown as is");
}

#[test]
fn smoothed_eta_is_ema_of_raw_and_the_advanced_previous_value() {
    let mut eta = EtaEngine::new(three_segments(), None, EtaConfig::default());
    let model = SpeedModel::default();
    let first = eta.handle_fix(T0, at(0.0, 0.0), &model);
    assert!(close(first.smoothed_eta_s, 30.0), "{first:?}");
    // 10 s later the driver has only covered 50 m: raw 25 s.
    // s = 0.3 * 25 + 0.7 * (30 - 10) = 21.5
    let second = eta.handle_fix(T0 + 10.0, at(50.0, 0.0), &model);
    assert!(close(second.raw_eta_s, 25.0), "{second:?}");
    assert!(close(second.smoothed_eta_s, 21.5), "{second:?}");
    // No fix for 2 s: the display counts down.
    let ticked = eta.tick(T0 + 12.0).expect("after a fix");
    assert!(close(ticked, 19.5), "{ticked}");
    // s = 0.3 * 20 + 0.7 * (19.5 - 3) = 17.55
    let third = eta.handle_fix(T0 + 15.0, at(100.0, 0.0), &model);
    assert!(close(third.smoothed_eta_s, 17.55), "{third:?}");
}

#[test]
fn tick_before_any_fix_has_nothing_to_count_down() {
    let mut eta = EtaEngine::new(three_segments(), None, EtaConfig::default());
    assert_eq!(eta.tick(T0), None);
}

#[test]
fn deviation_is_flagged_beyond_500_m_but_not_at_300_m() {
    let route = route_through(&[(0.0, 0.0), (1000.0, 0.0), (2000.0, 0.0)], 10.0);
    let mut eta = EtaEngine::new(route, None, EtaConfig::default());
    let model = SpeedModel::default();
    let on = eta.handle_fix(T0, at(200.0, 0.0), &model);
    assert!(!on.deviated);
    let near = eta.handle_fix(T0 + 30.0, at(500.0, 300.0), &model);
    assert!(close(near.off_route_m, 300.0), "{near:?}");
    assert!(!near.deviated);
    let far = eta.handle_fix(T0 + 60.0, at(800.0, 600.0), &model);
    assert!(close(far.off_route_m, 600.0), "{far:?}");
    assert!(far.deviated);
    // A deviated fix does not move progress.
    assert!(close(far.progress_m, near.progress_m), "{far:?}");
}

#[test]
fn reroute_keeps_the_smoothing_state() {
    let mut eta = EtaEngine::new(three_segments(), None, EtaConfig::default());
    let model = SpeedModel::default();
    let before = eta.handle_fix(T0, at(0.0, 0.0), &model);
    assert!(close(before.smoothed_eta_s, 30.0));
    // New route of 600 m at 10 m/s from where the driver is now.
    eta.reroute(route_through(&[(0.0, 600.0), (0.0, 0.0)], 10.0), None);
    let after = eta.handle_fix(T0 + 10.0, at(0.0, 600.0), &model);
    assert!(close(after.raw_eta_s, 60.0), "{after:?}");
    // 0.3 * 60 + 0.7 * (30 - 10) = 32, not a jump to 60.
    assert!(close(after.smoothed_eta_s, 32.0), "{after:?}");
    assert!(close(after.progress_m, 0.0));
}

#[test]
fn pickup_dwell_applies_until_the_pickup_is_passed_and_counts_down_while_waiting() {
    let config = EtaConfig::default();
    // Pickup at the start of segment 2, i.e. 200 m along.
    let mut eta = EtaEngine::new(three_segments(), Some(2), config);
    let model = SpeedModel::default();
    let start = eta.handle_fix(T0, at(0.0, 0.0), &model);
    assert!(!start.pickup_passed);
    assert!(close(start.raw_eta_s, 30.0 + 120.0), "{start:?}");
    let arrived = eta.handle_fix(T0 + 20.0, at(200.0, 0.0), &model);
    assert!(close(arrived.raw_eta_s, 10.0 + 120.0), "{arrived:?}");
    let waiting = eta.handle_fix(T0 + 80.0, at(201.0, 0.0), &model);
    assert!(close(waiting.raw_eta_s, 9.9 + 60.0), "{waiting:?}");
    let gone = eta.handle_fix(T0 + 150.0, at(250.0, 0.0), &model);
    assert!(gone.pickup_passed);
    assert!(close(gone.raw_eta_s, 5.0), "{gone:?}");
    // GPS noise pulls the snap back into the pickup zone: the dwell does not come back.
    let noisy = eta.handle_fix(T0 + 151.0, at(228.0, 0.0), &model);
    assert!(noisy.pickup_passed, "{noisy:?}");
    assert!(close(noisy.raw_eta_s, 7.2), "{noisy:?}");
}

#[test]
fn learnt_slow_speeds_and_live_congestion_lengthen_the_eta() {
    let route = three_segments();
    let midpoints: Vec<LatLng> = route
        .segments
        .iter()
        .map(|s| {
            LatLng::new(
                (s.start.lat + s.end.lat) / 2.0,
                (s.start.lng + s.end.lng) / 2.0,
            )
        })
        .collect();
    let cells: Vec<u64> = midpoints.iter().filter_map(|&p| cell_of(p)).collect();
    let mut model = SpeedModel::new(SpeedModelConfig {
        min_samples: 10,
        ..SpeedModelConfig::default()
    });
    let hour = hour_of_week(T0, 0);
    for &c in &cells {
        for _ in 0..10 {
            model.observe(c, hour, 5.0);
        }
    }
    let mut eta = EtaEngine::new(route.clone(), None, EtaConfig::default());
    let historical = eta.handle_fix(T0, at(0.0, 0.0), &model);
    assert!(
        close(historical.raw_eta_s, 60.0),
        "300 m at 5 m/s: {historical:?}"
    );
    // Live fleet at half the expected speed everywhere on the route.
    for &p in &midpoints {
        for i in 0..3 {
            model.observe_live(p, T0 + f64::from(i), 2.5, 10.0);
        }
    }
    let mut eta = EtaEngine::new(route, None, EtaConfig::default());
    let live = eta.handle_fix(T0 + 5.0, at(0.0, 0.0), &model);
    assert!(close(live.raw_eta_s, 120.0), "live factor 0.5: {live:?}");
}

#[test]
fn driving_a_helsinki_route_moves_progress_forward_and_the_eta_down_to_zero() {
    let g = RoadGraph::default_city().expect("embedded map");
    let n = g.node_count() as u32;
    let route = g.route_nodes(NodeId(3), NodeId(n / 2)).expect("route");
    assert!(route.length_m > 300.0, "{}", route.length_m);
    let mut eta = EtaEngine::new(route.clone(), None, EtaConfig::default());
    let model = SpeedModel::default();
    let speed_mps = 8.0;
    let (mut t, mut last_progress, mut first_eta) = (0.0, 0.0, None);
    let mut last = None;
    while t * speed_mps <= route.length_m + speed_mps {
        let pos = route.point_at(t * speed_mps).expect("non-empty");
        let u = eta.handle_fix(T0 + t, pos, &model);
        assert!(!u.deviated);
        assert!(u.off_route_m < 1.0, "{u:?}");
        assert!(
            u.progress_m + 1.0 >= last_progress,
            "progress went back at t={t}: {u:?}"
        );
        assert!(
            (u.progress_m - (t * speed_mps).min(route.length_m)).abs() < 1.0,
            "t={t}: {u:?}"
        );
        last_progress = u.progress_m;
        first_eta.get_or_insert(u.raw_eta_s);
        last = Some(u);
        t += 2.0;
    }
    let last = last.expect("some fixes");
    assert!(last.raw_eta_s < 0.5 && last.remaining_m < 0.5, "{last:?}");
    let free_flow = route.free_flow_time_s;
    // The engine keeps lengths and speeds as f32 (a delivery's route compactly): a millisecond.
    assert!(
        first_eta.is_some_and(|e| (e - free_flow).abs() < 1e-3),
        "empty model: free-flow ETA {first_eta:?} vs {free_flow}"
    );
}

/// The worked example of docs/eta.md, step by step.
#[test]
fn worked_example_in_docs_eta_md_holds() {
    use roadnet::{RoadClass, Route, RoutePiece};
    let kmh = |v: f64| v / 3.6;
    // Three segments east: A 120 m tertiary (40 km/h), B 300 m primary (maxspeed 50),
    // C 150 m residential (30 km/h). Slide the start until their midpoints are in three cells.
    let (route, cells) = (0..200)
        .find_map(|k| {
            let x0 = f64::from(k) * 37.0;
            let piece = |x: f64, class, v| RoutePiece {
                to: at(x0 + x, 0.0),
                class,
                free_speed_mps: v,
            };
            let route = Route::from_pieces(
                at(x0, 0.0),
                [
                    piece(120.0, RoadClass::Tertiary, kmh(40.0)),
                    piece(420.0, RoadClass::Primary, kmh(50.0)),
                    piece(570.0, RoadClass::Residential, kmh(30.0)),
                ],
            );
            let cells: Vec<u64> = [60.0, 270.0, 495.0]
                .iter()
                .filter_map(|&m| route.point_at(m).and_then(cell_of))
                .collect();
            (cells.len() == 3
                && cells[0] != cells[1]
                && cells[1] != cells[2]
                && cells[0] != cells[2])
                .then_some((route, cells))
        })
        .expect("some start puts the midpoints in three cells");
    // Tuesday 08:30 UTC: hour of week 32.
    let now = T0 + 32.0 * 3600.0 + 1800.0;
    let hour = hour_of_week(now, 0);
    assert_eq!(hour, 32);
    let mut model = SpeedModel::default();
    for _ in 0..30 {
        model.observe(cells[0], hour, 8.0);
    }
    for _ in 0..5 {
        model.observe(cells[1], hour, 10.0);
    }
    let mid = |m: f64| route.point_at(m).expect("point");
    for i in 0..3 {
        // A: 6.0 observed vs 8.0 expected -> 0.75; C: 10.0 vs 8.33 -> 1.2.
        model.observe_live(mid(60.0), now - 60.0 + f64::from(i), 6.0, kmh(40.0));
        model.observe_live(mid(495.0), now - 60.0 + f64::from(i), 10.0, kmh(30.0));
    }
    assert!((model.expected_speed_mps(cells[1], hour, kmh(50.0)) - 12.9167).abs() < 1e-3);
    assert!((model.live_factor(cells[0], now) - 0.75).abs() < 1e-9);
    assert!((model.live_factor(cells[1], now) - 1.0).abs() < 1e-9);
    assert!((model.live_factor(cells[2], now) - 1.2).abs() < 1e-9);

    // The pickup is at the end of C.
    let mut eta = EtaEngine::new(route.clone(), Some(3), EtaConfig::default());
    // 4 s earlier the driver was at the start of A: 120/6 + 300/12.9167 + 150/10 + 120 dwell.
    let first = eta.handle_fix(now - 4.0, route.points[0], &model);
    assert!((first.raw_eta_s - 178.23).abs() < 0.01, "{first:?}");
    let u = eta.handle_fix(now, mid(40.0), &model);
    // 80/6 + 300/12.9167 + 150/10 + 120 = 13.33 + 23.23 + 15.00 + 120
    assert!((u.raw_eta_s - 171.56).abs() < 0.01, "{u:?}");
    // 0.3 x 171.56 + 0.7 x (178.23 - 4)
    assert!((u.smoothed_eta_s - 173.42).abs() < 0.01, "{u:?}");
    assert!((eta.tick(now + 1.0).unwrap_or(0.0) - 172.42).abs() < 0.01);
}

#[test]
fn each_segment_ahead_is_read_for_the_hour_the_driver_will_reach_it() {
    // Three 1 km segments at 10 m/s free speed: 100 s each at free flow.
    let route = route_through(
        &[(0.0, 0.0), (1000.0, 0.0), (2000.0, 0.0), (3000.0, 0.0)],
        10.0,
    );
    let mut model = SpeedModel::default();
    // Learnt elsewhere in the city: free flow in hour 0, half speed in hour 1.
    let far = roadnet::SegmentKey::of(
        LatLng::new(60.30, 25.10),
        LatLng::new(60.301, 25.10),
        roadnet::RoadClass::Residential,
    );
    for _ in 0..500 {
        model.observe_ratio(&far, 0, 1.0);
        model.observe_ratio(&far, 1, 0.5);
    }
    // At the start of hour 0 the whole route is driven in hour 0: ~300 s.
    let mut early = EtaEngine::new(route.clone(), None, EtaConfig::default());
    let u = early.handle_fix(T0, at(0.0, 0.0), &model);
    assert!((295.0..=310.0).contains(&u.raw_eta_s), "{u:?}");
    // 150 s before hour 1 starts, the third segment is reached in hour 1, at half speed:
    // 100 + 100 + 200 s.
    let mut late = EtaEngine::new(route, None, EtaConfig::default());
    let u = late.handle_fix(T0 + 3600.0 - 150.0, at(0.0, 0.0), &model);
    assert!((390.0..=415.0).contains(&u.raw_eta_s), "{u:?}");
}

#[test]
fn a_fix_well_off_the_route_holds_progress_and_adds_the_way_back() {
    let mut eta = EtaEngine::new(three_segments(), None, EtaConfig::default());
    let model = SpeedModel::default();
    eta.handle_fix(T0, at(50.0, 0.0), &model);
    // A wrong turn: 150 m north of the route, level with its 250 m mark. The nearest point of
    // the route is 200 m ahead of the driver, who is not there.
    let u = eta.handle_fix(T0 + 10.0, at(250.0, 150.0), &model);
    assert!(!u.deviated, "{u:?}");
    assert!(close(u.progress_m, 50.0), "progress held: {u:?}");
    // 250 m along the route + 150 m back to it, at 10 m/s.
    assert!(close(u.raw_eta_s, 40.0), "{u:?}");
    // Back on the route, progress moves again.
    let u = eta.handle_fix(T0 + 30.0, at(260.0, 3.0), &model);
    assert!(close(u.progress_m, 260.0), "{u:?}");
}

#[test]
fn a_refresh_reads_the_segments_ahead_and_a_segment_behind_keeps_its_time() {
    let route = three_segments();
    let mut model = SpeedModel::default();
    let mut eta = EtaEngine::new(route.clone(), None, EtaConfig::default());
    // Free flow: 10 s a segment.
    let u = eta.handle_fix(T0, at(150.0, 0.0), &model);
    assert!(close(u.raw_eta_s, 15.0), "{u:?}");
    // The city turns out to be slower than free flow everywhere.
    let keys: Vec<_> = (0..3).map(|i| *eta.segment_key(i).expect("key")).collect();
    for _ in 0..500 {
        for k in &keys {
            model.observe_ratio(k, hour_of_week(T0, 0), 0.5);
        }
    }
    // Onto the third segment (no refresh yet), then 40 s on (past the 30 s refresh): what is
    // ahead of the driver's last position is read again, as a new engine reads it.
    eta.handle_fix(T0 + 5.0, at(205.0, 0.0), &model);
    let u = eta.handle_fix(T0 + 40.0, at(210.0, 0.0), &model);
    let mut fresh = EtaEngine::new(route, None, EtaConfig::default());
    let f = fresh.handle_fix(T0 + 40.0, at(210.0, 0.0), &model);
    assert!(close(u.raw_eta_s, f.raw_eta_s), "{u:?} vs {f:?}");
    assert!(f.raw_eta_s > 9.0 * 1.5, "slower than free flow: {f:?}");
    let third_s = f.raw_eta_s / 0.9;
    // Noise puts the driver 20 m back, on the second segment: its 10 m left count at the time
    // it had (1 s), then the third segment's new time.
    let u = eta.handle_fix(T0 + 41.0, at(190.0, 0.0), &model);
    assert_eq!(u.segment_index, Some(1), "{u:?}");
    assert!(close(u.raw_eta_s, 1.0 + third_s), "{u:?}, third {third_s}");
}
