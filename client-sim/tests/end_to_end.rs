//! End to end on loopback: simulated drivers -> a real edge -> a real hub -> WebTransport and
//! WebSocket consumers, with the order service's status changes in between; and a
//! time-compressed run that measures the ETA against the ground truth.

use client_sim::demo::{run_demo, DemoPorts};
use client_sim::lifecycle::LifecycleMode;
use client_sim::scenario::ScenarioConfig;
use std::time::Duration;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("trackline-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixes_and_events_reach_both_consumer_transports_in_order() {
    certs::install_default_crypto_provider();
    let dir = temp_dir("flow");
    let cfg = ScenarioConfig {
        drivers: 6,
        consumers: 8,
        websocket_share: 0.5,
        https_driver_share: 0.34,
        bad_fix_share: 0.0,
        duration: Duration::from_secs(4),
        fix_interval: Duration::from_millis(200),
        progress: false,
        drain: Duration::from_secs(10),
        ..ScenarioConfig::default()
    };
    let ports = DemoPorts {
        ip: std::net::Ipv4Addr::LOCALHOST.into(),
        fixed: false,
    };
    let r = run_demo(&dir, ports, &cfg).await.expect("demo run");
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    assert_eq!(r.consumers.webtransport, 4);
    assert_eq!(r.consumers.websocket, 4);
    assert!(r.fixes.sent_https > 0, "{:?}", r.fixes);
    assert!(r.fixes.sent > r.fixes.sent_https, "{:?}", r.fixes);
    assert!(r.fixes.accepted > 0, "{:?}", r.fixes);
    assert!(r.fixes.delivered_to_consumers > 0, "{:?}", r.fixes);
    assert_eq!(r.fixes.out_of_order_at_consumers, 0);
    assert!(r.status_events.sent >= 6 * 4, "{:?}", r.status_events);
    assert_eq!(r.status_events.lost, 0, "{:?}", r.status_events);
    // Every consumer saw every acknowledged event of its delivery.
    assert!(r.status_events.received >= r.status_events.sent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliberately_bad_fixes_are_rejected_and_counted_by_reason() {
    certs::install_default_crypto_provider();
    let dir = temp_dir("bad");
    let cfg = ScenarioConfig {
        drivers: 3,
        consumers: 2,
        websocket_share: 0.5,
        https_driver_share: 0.0,
        bad_fix_share: 0.5,
        duration: Duration::from_secs(3),
        fix_interval: Duration::from_millis(100),
        progress: false,
        drain: Duration::from_secs(10),
        ..ScenarioConfig::default()
    };
    let ports = DemoPorts {
        ip: std::net::Ipv4Addr::LOCALHOST.into(),
        fixed: false,
    };
    let r = run_demo(&dir, ports, &cfg).await.expect("demo run");
    assert!(r.fixes.sent_bad > 0);
    let rejected = r.fixes.rejected.get("accuracy").copied().unwrap_or(0);
    // Datagrams may be lost on the way, so at most as many as were sent bad, and some.
    assert!(
        rejected > 0 && rejected <= r.fixes.sent_bad,
        "{:?}",
        r.fixes
    );
    assert_eq!(r.status_events.lost, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_run_scores_etas_against_the_truth_and_reroutes_every_wrong_turn() {
    certs::install_default_crypto_provider();
    let dir = temp_dir("eta");
    let cfg = ScenarioConfig {
        drivers: 10,
        consumers: 10,
        websocket_share: 0.5,
        https_driver_share: 0.0,
        bad_fix_share: 0.0,
        duration: Duration::from_secs(15),
        fix_interval: Duration::from_secs(2),
        progress: false,
        drain: Duration::from_secs(10),
        speedup: 100.0,
        map: region_hub::MapConfig::Grid {
            rows: 20,
            cols: 20,
            spacing_m: 100.0,
        },
        wrong_turn_share: 0.3,
        seed: Some(7),
        ..ScenarioConfig::default()
    };
    let ports = DemoPorts {
        ip: std::net::Ipv4Addr::LOCALHOST.into(),
        fixed: false,
    };
    let r = run_demo(&dir, ports, &cfg).await.expect("demo run");
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    assert_eq!(r.sim.trips, 10);
    assert!(r.sim.trips_completed > 0, "{:?}", r.sim);
    // Every ETA frame before a true arrival is a sample; trips are scored at their midpoint
    // against the same moments' straight-line baseline.
    assert!(r.eta.samples > 0, "{:?}", r.eta);
    assert!(r.eta.trips_at_50pct > 0, "{:?}", r.eta);
    assert!(
        r.eta.mae_s.is_finite() && r.eta.mape_at_50pct.is_finite(),
        "{:?}",
        r.eta
    );
    assert!(r.eta.baseline_mape_at_50pct > 0.0, "{:?}", r.eta);
    // Wrong turns were taken, seen by the simulator as deviations, and re-routed by the hub.
    assert!(r.sim.wrong_turns > 0, "{:?}", r.sim);
    assert!(r.reroute.deviations > 0, "{:?}", r.reroute);
    assert!(r.reroute.count > 0, "{:?}", r.reroute);
    assert!(r.reroute.latency_s_max >= r.reroute.latency_s_p50);
    assert_eq!(r.status_events.lost, 0, "{:?}", r.status_events);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_reach_delivered_by_geofences_and_the_proof_photo_alone() {
    certs::install_default_crypto_provider();
    let dir = temp_dir("lifecycle");
    let cfg = ScenarioConfig {
        drivers: 6,
        consumers: 6,
        https_driver_share: 0.0,
        bad_fix_share: 0.0,
        duration: Duration::from_secs(15),
        fix_interval: Duration::from_secs(2),
        drain: Duration::from_secs(10),
        speedup: 60.0,
        wrong_turn_share: 0.0,
        seed: Some(11),
        lifecycle: LifecycleMode::Geofence,
        ..ScenarioConfig::default()
    };
    let ports = DemoPorts {
        ip: std::net::Ipv4Addr::LOCALHOST.into(),
        fixed: false,
    };
    let r = run_demo(&dir, ports, &cfg).await.expect("demo run");
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    let l = &r.lifecycle;
    assert!(l.trips_completed > 0, "{l:?}");
    // Every trip that reached the door ended delivered, with a log in order and no status
    // API call after the assignment: the hub's geofences and the driver's proof did it all.
    assert_eq!(l.delivered, l.trips_completed, "{l:?}");
    assert_eq!(l.logs_out_of_order, 0, "{l:?}");
    assert_eq!(l.api_changes_after_assignment, 0, "{l:?}");
    assert!(
        l.events_by_source.get("geofence").copied().unwrap_or(0) >= 3 * l.trips_completed,
        "{l:?}"
    );
    assert_eq!(
        l.events_by_source.get("driver").copied(),
        Some(l.trips_completed),
        "{l:?}"
    );
    // Every event of every log reached every consumer of its delivery.
    assert_eq!(r.status_events.lost, 0, "{:?}", r.status_events);
    let _ = std::fs::remove_dir_all(&dir);
}
