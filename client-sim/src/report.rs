//! The run report (JSON) and the scrape of an edge's Prometheus counters that feeds it.

use crate::quality::{EtaSummary, RerouteSummary};
use crate::stats::{EventSummary, LatencySummary};
use serde::Serialize;
use std::collections::BTreeMap;

/// Consumers by transport.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConsumerCounts {
    pub webtransport: u64,
    pub websocket: u64,
}

/// What happened to the fixes of the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FixCounts {
    /// Fixes the simulated drivers sent (datagrams handed to QUIC, or acknowledged HTTPS posts).
    pub sent: u64,
    /// Of those, over the HTTPS fallback.
    pub sent_https: u64,
    /// Of those, made bad on purpose (accuracy beyond the limit).
    pub sent_bad: u64,
    /// Accepted by the edges' filters (from their `/metrics`).
    pub accepted: u64,
    /// Rejected by the edges, by reason (from their `/metrics`).
    pub rejected: BTreeMap<String, u64>,
    /// Position frames received by consumers (one fix reaches every consumer of its delivery).
    pub delivered_to_consumers: u64,
    /// Positions a consumer received after a newer one (must be 0).
    pub out_of_order_at_consumers: u64,
}

/// The JSON written by `--report`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub mode: String,
    pub duration_s: f64,
    pub drivers: u64,
    pub consumers: ConsumerCounts,
    pub fixes: FixCounts,
    pub latency_ms: LatencySummary,
    pub status_events: EventSummary,
    pub consumer_reconnects: u64,
    /// The simulation: clock, city, trips.
    pub sim: SimSummary,
    /// ETA quality against the ground truth.
    pub eta: EtaSummary,
    /// Deviations and how fast consumers got the new route.
    pub reroute: RerouteSummary,
    /// The completed deliveries' event logs, read back from the hub and checked.
    pub lifecycle: crate::lifecycle::LifecycleSummary,
    pub errors: Vec<String>,
}

/// How the run was simulated.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SimSummary {
    /// Simulated seconds per real second.
    pub speedup: f64,
    /// Simulated time the run covered, seconds.
    pub simulated_s: f64,
    /// Road network (`helsinki`, `grid RxC @ S m` or the extract's path).
    pub city: String,
    pub road_nodes: u64,
    /// Seed of the trips and the truth model (`--seed` repeats a run's trips).
    pub seed: u64,
    /// Trips (one delivery each) and how many reached the drop-off within the run.
    pub trips: u64,
    pub trips_completed: u64,
    /// Trips driven before the measured ones to teach the hub's speed model (not scored).
    pub warmup_trips: u64,
    /// Trips whose driver takes a wrong turn (> 500 m off the plan).
    pub wrong_turns: u64,
    /// Status changes the simulator skipped because the hub's geofence had made them (409).
    pub status_changes_made_by_hub_first: u64,
    /// ETA frames received by consumers (every consumer counted).
    pub eta_frames_received: u64,
}

/// Counters read from an edge's Prometheus text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EdgeCounters {
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
}

/// Extracts `edge_fixes_accepted_total` and `edge_fixes_rejected_total{reason=..}` from
/// Prometheus/OpenMetrics text. Zero-valued reasons are left out.
pub fn parse_edge_metrics(text: &str) -> EdgeCounters {
    let mut out = EdgeCounters::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let value = value as u64;
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (name_labels, ""),
        };
        match name {
            "edge_fixes_accepted_total" => out.accepted += value,
            "edge_fixes_rejected_total" if value > 0 => {
                let reason = labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("reason="))
                    .map(|v| v.trim_matches('"').to_string())
                    .unwrap_or_else(|| "unknown".into());
                *out.rejected.entry(reason).or_insert(0) += value;
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_accepted_and_rejected_by_reason() {
        let text = "# TYPE edge_fixes_accepted counter\nedge_fixes_accepted_total 120\n\
                    edge_fixes_rejected_total{reason=\"accuracy\"} 3\n\
                    edge_fixes_rejected_total{reason=\"speed\"} 0\n\
                    edge_fixes_rejected_total{reason=\"malformed\"} 1\n# EOF\n";
        let c = parse_edge_metrics(text);
        assert_eq!(c.accepted, 120);
        assert_eq!(c.rejected.get("accuracy"), Some(&3));
        assert_eq!(c.rejected.get("malformed"), Some(&1));
        assert!(!c.rejected.contains_key("speed"));
    }
}
