//! Push notifications for delivery milestones: APNs (HTTP/2, ES256 provider tokens) and FCM
//! HTTP v1 (OAuth2 service account, RS256) senders behind one [`PushSender`] trait, a device
//! registry, and a [`Notifier`] that fans a milestone out to a delivery's devices.
//!
//! Decisions are sans-IO and unit-tested (response classification, backoff, token lifetimes
//! with time passed in); the senders drive them over hyper HTTP/2 on tokio-rustls (ring).

pub mod apns;
pub mod clock;
pub mod config;
mod error;
pub mod fcm;
pub mod jwt;
pub mod notification;
pub mod notifier;
pub mod registry;
pub mod retry;
pub mod sender;
pub mod transport;

pub use apns::ApnsSender;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{ApnsConfig, ConfigError, FcmConfig, NotifyConfig, RetryConfig};
pub use error::{PushError, SetupError};
pub use fcm::{FcmSender, ServiceAccount};
pub use notification::{milestone_notification, Notification};
pub use notifier::{FanOutReport, Notifier, NotifyMetrics};
pub use registry::{DeviceRegistry, DeviceToken, Platform, RegistryError};
pub use sender::{BoxFuture, PushSender, SendOutcome};
