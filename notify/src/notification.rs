//! What a customer is told at each delivery milestone: the platform-neutral notification.

use std::collections::BTreeMap;

use protocol::status::DeliveryStatus;
use serde::{Deserialize, Serialize};

/// Key in [`Notification::data`] holding the delivery id (decimal).
pub const DATA_DELIVERY_ID: &str = "delivery_id";
/// Key in [`Notification::data`] holding the status name (`picked_up`, ...).
pub const DATA_STATUS: &str = "status";
/// Key in [`Notification::data`] holding the ETA in whole seconds, when one was known.
pub const DATA_ETA_S: &str = "eta_s";

/// One push notification about one delivery, before it is shaped for APNs or FCM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The delivery the notification is about.
    pub delivery_id: u64,
    /// The milestone that was reached.
    pub status: DeliveryStatus,
    /// Short headline shown in bold.
    pub title: String,
    /// One or two sentences shown under the title.
    pub body: String,
    /// String key/values the app receives with the notification (FCM `data`, APNs custom keys).
    pub data: BTreeMap<String, String>,
}

/// The notification for a status change, or `None` if the status is not a milestone.
///
/// Milestones are `driver_assigned`, `picked_up`, `arriving` and `delivered`
/// ([`DeliveryStatus::is_milestone`]). `eta_s` (seconds until arrival) is mentioned in the
/// text of `picked_up` and `arriving` and passed as `data["eta_s"]` when it is finite and
/// not negative; other values are ignored.
pub fn milestone_notification(
    delivery_id: u64,
    status: DeliveryStatus,
    eta_s: Option<f64>,
) -> Option<Notification> {
    let eta_s = eta_s.filter(|e| e.is_finite() && *e >= 0.0);
    let (title, body) = match status {
        DeliveryStatus::DriverAssigned => (
            "Driver assigned",
            "A driver has been assigned and is heading to pick up your order.".to_string(),
        ),
        DeliveryStatus::PickedUp => (
            "Order picked up",
            match eta_s {
                Some(eta) => format!("Your order is on its way, arriving in {}.", minutes(eta)),
                None => "Your order is on its way.".to_string(),
            },
        ),
        DeliveryStatus::Arriving => (
            "Driver arriving",
            match eta_s {
                Some(eta) => format!("Your driver is almost there, about {} away.", minutes(eta)),
                None => "Your driver is almost there.".to_string(),
            },
        ),
        DeliveryStatus::Delivered => (
            "Order delivered",
            "Your order has been delivered. Enjoy!".to_string(),
        ),
        DeliveryStatus::Confirmed
        | DeliveryStatus::Preparing
        | DeliveryStatus::EnRoute
        | DeliveryStatus::Cancelled => return None,
    };
    let mut data = BTreeMap::new();
    data.insert(DATA_DELIVERY_ID.to_string(), delivery_id.to_string());
    data.insert(DATA_STATUS.to_string(), status.as_str().to_string());
    if let Some(eta) = eta_s {
        if matches!(status, DeliveryStatus::PickedUp | DeliveryStatus::Arriving) {
            data.insert(DATA_ETA_S.to_string(), format!("{}", eta.round() as u64));
        }
    }
    Some(Notification {
        delivery_id,
        status,
        title: title.to_string(),
        body,
        data,
    })
}

/// "1 min", "12 min": whole minutes rounded up, at least one.
fn minutes(eta_s: f64) -> String {
    let min = (eta_s / 60.0).ceil().max(1.0) as u64;
    format!("{min} min")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_is_rounded_up_to_whole_minutes_and_at_least_one() {
        assert_eq!(minutes(0.0), "1 min");
        assert_eq!(minutes(59.0), "1 min");
        assert_eq!(minutes(61.0), "2 min");
        assert_eq!(minutes(600.0), "10 min");
    }

    #[test]
    fn nonsense_eta_is_ignored() {
        for eta in [f64::NAN, f64::INFINITY, -5.0] {
            let n =
                milestone_notification(1, DeliveryStatus::Arriving, Some(eta)).expect("milestone");
            assert_eq!(n.body, "Your driver is almost there.");
            assert!(!n.data.contains_key(DATA_ETA_S));
        }
    }
}
