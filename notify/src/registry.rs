//! Device tokens and the in-memory registry of which devices follow which delivery.
//!
//! The registry is plain data with serde so the hub can persist it as it likes; it validates
//! tokens on the way in so senders only ever see well-formed ones.

use std::collections::BTreeMap;
use std::fmt;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use serde::{Deserialize, Serialize};

/// Shortest APNs device token accepted, in hex characters (32 bytes today).
pub const APNS_TOKEN_MIN_HEX: usize = 64;
/// Longest APNs device token accepted, in hex characters (Apple documents tokens as variable
/// length; this bound only stops abuse).
pub const APNS_TOKEN_MAX_HEX: usize = 200;
/// Longest FCM registration token accepted, in bytes.
pub const FCM_TOKEN_MAX_LEN: usize = 4096;
/// Most devices one delivery may have registered at once.
pub const MAX_DEVICES_PER_DELIVERY: usize = 16;

/// The push service a device token belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Platform {
    /// Apple Push Notification service (iOS, iPadOS, macOS apps).
    Apns,
    /// Firebase Cloud Messaging (Android, and apps that route iOS through Firebase).
    Fcm,
}

impl Platform {
    /// Lower-case name, as used in config, JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::Fcm => "fcm",
        }
    }
}

impl EncodeLabelValue for Platform {
    /// The metric label is the lower-case name (`platform="apns"`).
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device a notification can be sent to.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceToken {
    /// Which push service issued the token.
    pub platform: Platform,
    /// The token as the app reported it (APNs: hex, FCM: opaque string).
    pub token: String,
}

impl fmt::Debug for DeviceToken {
    /// Tokens are credentials of a kind: logs show only their start.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.platform, self.redacted())
    }
}

impl DeviceToken {
    /// Validates `token` for `platform` and returns it normalised (APNs tokens lower-cased).
    pub fn new(platform: Platform, token: impl Into<String>) -> Result<Self, RegistryError> {
        let token = token.into();
        let token = match platform {
            Platform::Apns => validate_apns(&token)?,
            Platform::Fcm => validate_fcm(&token)?,
        };
        Ok(Self { platform, token })
    }

    /// Re-checks a token that came from storage or the network (serde does not validate).
    pub fn validated(self) -> Result<Self, RegistryError> {
        Self::new(self.platform, self.token)
    }

    /// The first 8 characters followed by an ellipsis, for logs.
    pub fn redacted(&self) -> String {
        let head: String = self.token.chars().take(8).collect();
        format!("{head}…")
    }
}

fn validate_apns(token: &str) -> Result<String, RegistryError> {
    let len = token.len();
    if let Some((index, ch)) = token.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(RegistryError::ApnsNotHex { index, ch });
    }
    if !(APNS_TOKEN_MIN_HEX..=APNS_TOKEN_MAX_HEX).contains(&len) {
        return Err(RegistryError::ApnsLength { len });
    }
    Ok(token.to_ascii_lowercase())
}

fn validate_fcm(token: &str) -> Result<String, RegistryError> {
    if token.is_empty() {
        return Err(RegistryError::FcmEmpty);
    }
    if token.len() > FCM_TOKEN_MAX_LEN {
        return Err(RegistryError::FcmTooLong { len: token.len() });
    }
    if let Some(index) = token.find(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(RegistryError::FcmWhitespace { index });
    }
    Ok(token.to_string())
}

/// Why a device token or registration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// An APNs token held a character that is not a hex digit.
    #[error("APNs device token must be hex, found {ch:?} at position {index}")]
    ApnsNotHex {
        /// Byte offset of the offending character.
        index: usize,
        /// The offending character.
        ch: char,
    },
    /// An APNs token was too short or too long.
    #[error(
        "APNs device token must be {APNS_TOKEN_MIN_HEX} to {APNS_TOKEN_MAX_HEX} hex characters, got {len}"
    )]
    ApnsLength {
        /// Its length in characters.
        len: usize,
    },
    /// An FCM token was empty.
    #[error("FCM registration token is empty")]
    FcmEmpty,
    /// An FCM token was longer than [`FCM_TOKEN_MAX_LEN`].
    #[error("FCM registration token is {len} bytes, more than the {FCM_TOKEN_MAX_LEN} allowed")]
    FcmTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// An FCM token contained whitespace or a control character.
    #[error("FCM registration token contains whitespace at byte {index}")]
    FcmWhitespace {
        /// Byte offset of the first offending character.
        index: usize,
    },
    /// The delivery already has the most devices allowed.
    #[error("delivery {delivery_id} already has {MAX_DEVICES_PER_DELIVERY} devices registered")]
    TooManyDevices {
        /// The delivery.
        delivery_id: u64,
    },
}

/// Which devices follow which delivery. In memory; serde so the hub can persist it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRegistry {
    by_delivery: BTreeMap<u64, Vec<DeviceToken>>,
}

impl DeviceRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a device for a delivery after validating it (see [`DeviceToken::new`]).
    ///
    /// Returns `Ok(false)` if the device was already registered for that delivery.
    pub fn register(
        &mut self,
        delivery_id: u64,
        device: DeviceToken,
    ) -> Result<bool, RegistryError> {
        let device = device.validated()?;
        let devices = self.by_delivery.entry(delivery_id).or_default();
        if devices.contains(&device) {
            return Ok(false);
        }
        if devices.len() >= MAX_DEVICES_PER_DELIVERY {
            return Err(RegistryError::TooManyDevices { delivery_id });
        }
        devices.push(device);
        Ok(true)
    }

    /// Removes a device from one delivery; returns whether it was registered.
    pub fn unregister(&mut self, delivery_id: u64, device: &DeviceToken) -> bool {
        let Some(devices) = self.by_delivery.get_mut(&delivery_id) else {
            return false;
        };
        let before = devices.len();
        devices.retain(|d| d != device);
        let removed = devices.len() != before;
        if devices.is_empty() {
            self.by_delivery.remove(&delivery_id);
        }
        removed
    }

    /// Removes a device from every delivery (after the push service said it is gone);
    /// returns how many registrations were dropped.
    pub fn unregister_everywhere(&mut self, device: &DeviceToken) -> usize {
        let mut removed = 0;
        self.by_delivery.retain(|_, devices| {
            let before = devices.len();
            devices.retain(|d| d != device);
            removed += before - devices.len();
            !devices.is_empty()
        });
        removed
    }

    /// Forgets a delivery (when it is delivered or cancelled and nothing more will be sent).
    pub fn remove_delivery(&mut self, delivery_id: u64) -> Vec<DeviceToken> {
        self.by_delivery.remove(&delivery_id).unwrap_or_default()
    }

    /// The devices registered for a delivery, in registration order.
    pub fn devices(&self, delivery_id: u64) -> &[DeviceToken] {
        self.by_delivery
            .get(&delivery_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Number of (delivery, device) registrations.
    pub fn len(&self) -> usize {
        self.by_delivery.values().map(Vec::len).sum()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.by_delivery.is_empty()
    }
}
