//! Who moves a delivery's status during a run, the photo-proof upload at the door, and the
//! end-of-run check of every delivery's event log.

use protocol::api::ApiError;
use protocol::consumer::StatusEvent;
use protocol::status::DeliveryStatus;
use protocol::DeliveryId;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Who makes the status changes after the driver is assigned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleMode {
    /// The order service calls the status API as the driver reaches each stage (the hub's
    /// geofences may get there first; their 409s are counted, not errors).
    #[default]
    Api,
    /// No status API call after `driver_assigned`: the hub's geofences move the order to
    /// picked_up / en_route / arriving, and the driver's photo proof at the door to delivered.
    Geofence,
}

/// A 1x1 PNG: what the simulated driver photographs at the door.
pub const PROOF_PNG: [u8; 69] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53,
    0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xd0, 0xeb, 0x0e, 0x07,
    0x00, 0x01, 0xfb, 0x01, 0x11, 0x74, 0x26, 0x14, 0xe9, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e,
    0x44, 0xae, 0x42, 0x60, 0x82,
];

/// The hub's answer to a proof upload (the fields the simulator uses).
#[derive(Clone, Debug, Deserialize)]
pub struct ProofAnswer {
    pub event_seq: u64,
    pub status: DeliveryStatus,
}

/// Uploads the proof photo with the driver's token and position; the hub marks the delivery
/// delivered. Retried on network errors (the hub replays a repeated image).
pub async fn upload_proof(
    http: &reqwest::Client,
    hub_url: &str,
    delivery: DeliveryId,
    driver_token: &str,
    lat: f64,
    lng: f64,
) -> anyhow::Result<ProofAnswer> {
    let url = format!("{hub_url}/api/v1/tracking/{delivery}/proof");
    let mut last = None;
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        let image = reqwest::multipart::Part::bytes(PROOF_PNG.to_vec())
            .file_name("door.png")
            .mime_str("image/png")?;
        let form = reqwest::multipart::Form::new()
            .part("image", image)
            .text("lat", lat.to_string())
            .text("lng", lng.to_string());
        match http
            .post(&url)
            .bearer_auth(driver_token)
            .multipart(form)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(r.json().await?),
            Ok(r) => {
                let status = r.status();
                let body: Option<ApiError> = r.json().await.ok();
                anyhow::bail!(
                    "proof for delivery {delivery}: {status} {}",
                    body.map(|b| b.message).unwrap_or_default()
                )
            }
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!("proof for delivery {delivery}: {last:?}"))
}

/// Fetches every status event of a delivery from its history, oldest first.
pub async fn fetch_events(
    http: &reqwest::Client,
    hub_url: &str,
    delivery: DeliveryId,
    token: &str,
) -> anyhow::Result<Vec<StatusEvent>> {
    #[derive(Deserialize)]
    struct Page {
        events: Vec<StatusEvent>,
        next_after_ts: Option<u64>,
    }
    let mut events = Vec::new();
    let mut after: Option<u64> = None;
    for _ in 0..10_000 {
        let mut url =
            format!("{hub_url}/api/v1/tracking/{delivery}/history?limit=5000&token={token}");
        if let Some(a) = after {
            url.push_str(&format!("&after_ts={a}"));
        }
        let page: Page = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        events.extend(page.events);
        match page.next_after_ts {
            Some(a) if Some(a) != after => after = Some(a),
            _ => break,
        }
    }
    events.sort_by_key(|e| e.event_seq);
    events.dedup_by_key(|e| e.event_seq);
    Ok(events)
}

/// What the end-of-run check found in the deliveries' logs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LifecycleSummary {
    pub mode: Option<LifecycleMode>,
    /// Deliveries whose driver reached the drop-off within the run.
    pub trips_completed: u64,
    /// Of those, how many logs end in `delivered`.
    pub delivered: u64,
    /// Logs whose sequence numbers are not 1..n or whose statuses break the status machine.
    pub logs_out_of_order: u64,
    /// Events after `driver_assigned` whose source is the API (0 in geofence mode).
    pub api_changes_after_assignment: u64,
    /// Events by source over all checked logs.
    pub events_by_source: std::collections::BTreeMap<String, u64>,
}

/// Checks one delivery's log: contiguous sequence numbers from 1, every transition allowed.
/// Returns (in order, ends delivered, API changes after assignment).
pub fn check_log(events: &[StatusEvent]) -> (bool, bool, u64) {
    let mut in_order = true;
    let mut assigned = false;
    let mut api_after = 0;
    for (i, e) in events.iter().enumerate() {
        if e.event_seq != i as u64 + 1 {
            in_order = false;
        }
        if i > 0 && events[i - 1].status.check_transition(e.status).is_err() {
            in_order = false;
        }
        if assigned && e.source == "api" {
            api_after += 1;
        }
        if e.status == DeliveryStatus::DriverAssigned {
            assigned = true;
        }
    }
    let delivered = events
        .last()
        .is_some_and(|e| e.status == DeliveryStatus::Delivered);
    (in_order, delivered, api_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, status: DeliveryStatus, source: &str) -> StatusEvent {
        StatusEvent {
            delivery_id: DeliveryId(1),
            event_seq: seq,
            status,
            ts_ms: seq,
            source: source.into(),
            metadata: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_geofence_driven_log_is_in_order_and_has_no_api_changes_after_assignment() {
        use DeliveryStatus::*;
        let log = [
            ev(1, Confirmed, "api"),
            ev(2, DriverAssigned, "api"),
            ev(3, PickedUp, "geofence"),
            ev(4, EnRoute, "geofence"),
            ev(5, Arriving, "geofence"),
            ev(6, Delivered, "driver"),
        ];
        assert_eq!(check_log(&log), (true, true, 0));
    }

    #[test]
    fn gaps_illegal_transitions_and_api_changes_are_reported() {
        use DeliveryStatus::*;
        let gap = [ev(1, Confirmed, "api"), ev(3, Preparing, "api")];
        assert!(!check_log(&gap).0);
        let backwards = [
            ev(1, Confirmed, "api"),
            ev(2, DriverAssigned, "api"),
            ev(3, Preparing, "api"),
        ];
        assert_eq!(check_log(&backwards), (false, false, 1));
    }

    #[test]
    fn the_proof_image_is_a_png() {
        assert_eq!(&PROOF_PNG[..8], b"\x89PNG\r\n\x1a\n");
    }
}
