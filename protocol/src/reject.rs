//! Why a fix was not accepted: one stable label per reason, used by metrics and reports.

use serde::{Deserialize, Serialize};

/// Reasons the edge's filter (or its decoders) turn a fix away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Accuracy worse than the limit (100 m by default).
    Accuracy,
    /// Reported or implied speed above the limit (200 km/h by default).
    Speed,
    /// Timestamp further in the future than the allowed clock skew.
    FutureTimestamp,
    /// Timestamp older than the maximum age.
    StaleTimestamp,
    /// Latitude or longitude out of range, or not finite.
    Coordinates,
    /// Same sequence number as an accepted fix.
    Duplicate,
    /// Sequence number (or timestamp) older than the last accepted fix.
    OutOfOrder,
    /// More fixes per second than the driver's rate limit.
    RateLimited,
    /// Bytes that did not decode.
    Malformed,
    /// The sending driver is not authorized.
    Unauthorized,
    /// Dropped under overload (bounded queue full).
    Overload,
}

impl RejectReason {
    pub const ALL: [RejectReason; 11] = [
        Self::Accuracy,
        Self::Speed,
        Self::FutureTimestamp,
        Self::StaleTimestamp,
        Self::Coordinates,
        Self::Duplicate,
        Self::OutOfOrder,
        Self::RateLimited,
        Self::Malformed,
        Self::Unauthorized,
        Self::Overload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accuracy => "accuracy",
            Self::Speed => "speed",
            Self::FutureTimestamp => "future_timestamp",
            Self::StaleTimestamp => "stale_timestamp",
            Self::Coordinates => "coordinates",
            Self::Duplicate => "duplicate",
            Self::OutOfOrder => "out_of_order",
            Self::RateLimited => "rate_limited",
            Self::Malformed => "malformed",
            Self::Unauthorized => "unauthorized",
            Self::Overload => "overload",
        }
    }
}
