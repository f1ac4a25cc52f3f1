//! The delivery status machine: which status may follow which.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a delivery is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeliveryStatus {
    Confirmed,
    Preparing,
    DriverAssigned,
    PickedUp,
    EnRoute,
    Arriving,
    Delivered,
    Cancelled,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 8] = [
        Self::Confirmed,
        Self::Preparing,
        Self::DriverAssigned,
        Self::PickedUp,
        Self::EnRoute,
        Self::Arriving,
        Self::Delivered,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Preparing => "preparing",
            Self::DriverAssigned => "driver_assigned",
            Self::PickedUp => "picked_up",
            Self::EnRoute => "en_route",
            Self::Arriving => "arriving",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
        }
    }

    /// Delivered and cancelled deliveries take no further transitions.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Delivered | Self::Cancelled)
    }

    /// Milestones that trigger a push notification.
    pub fn is_milestone(self) -> bool {
        matches!(
            self,
            Self::DriverAssigned | Self::PickedUp | Self::Arriving | Self::Delivered
        )
    }

    /// Statuses that may directly follow `self`.
    pub fn successors(self) -> &'static [DeliveryStatus] {
        use DeliveryStatus::*;
        match self {
            Confirmed => &[Preparing, DriverAssigned, Cancelled],
            Preparing => &[DriverAssigned, Cancelled],
            DriverAssigned => &[PickedUp, EnRoute, Cancelled],
            PickedUp => &[EnRoute, Arriving, Delivered, Cancelled],
            EnRoute => &[Arriving, Delivered, Cancelled],
            Arriving => &[Delivered, Cancelled],
            Delivered | Cancelled => &[],
        }
    }

    /// Checks a transition, with a message fit for a 409 response.
    pub fn check_transition(self, to: DeliveryStatus) -> Result<(), TransitionError> {
        if self.successors().contains(&to) {
            Ok(())
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

/// A transition the status machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot move a delivery from {from} to {to}")]
pub struct TransitionError {
    pub from: DeliveryStatus,
    pub to: DeliveryStatus,
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown status {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::DeliveryStatus::*;
    use super::*;

    #[test]
    fn the_happy_path_is_allowed() {
        let path = [
            Confirmed,
            Preparing,
            DriverAssigned,
            PickedUp,
            EnRoute,
            Arriving,
            Delivered,
        ];
        for w in path.windows(2) {
            assert_eq!(w[0].check_transition(w[1]), Ok(()), "{} -> {}", w[0], w[1]);
        }
    }

    #[test]
    fn terminal_states_accept_nothing_and_backwards_moves_are_refused() {
        for to in DeliveryStatus::ALL {
            assert!(Delivered.check_transition(to).is_err());
            assert!(Cancelled.check_transition(to).is_err());
        }
        assert!(EnRoute.check_transition(Preparing).is_err());
        assert!(Confirmed.check_transition(Delivered).is_err());
        assert!(Arriving.check_transition(Arriving).is_err());
    }

    #[test]
    fn every_open_state_can_be_cancelled() {
        for s in DeliveryStatus::ALL.into_iter().filter(|s| !s.is_terminal()) {
            assert_eq!(s.check_transition(Cancelled), Ok(()));
        }
    }

    #[test]
    fn names_round_trip() {
        for s in DeliveryStatus::ALL {
            assert_eq!(s.as_str().parse::<DeliveryStatus>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).expect("json"),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
