//! Fans a milestone out to every device of a delivery through the right sender, counts the
//! results in Prometheus metrics, and drops devices the services report as gone.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use protocol::status::DeliveryStatus;

use crate::apns::ApnsSender;
use crate::clock::Clock;
use crate::config::NotifyConfig;
use crate::error::{PushError, SetupError};
use crate::fcm::FcmSender;
use crate::notification::{milestone_notification, Notification};
use crate::registry::{DeviceRegistry, DeviceToken, Platform};
use crate::sender::{PushSender, SendOutcome};

/// The `platform` label of every push metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlatformLabel {
    /// `apns` or `fcm`.
    pub platform: Platform,
}

type HistogramFamily = Family<PlatformLabel, Histogram, fn() -> Histogram>;

fn send_seconds_histogram() -> Histogram {
    // 5 ms .. ~10 s
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// Push counters and latencies by platform.
#[derive(Clone, Debug)]
pub struct NotifyMetrics {
    sent: Family<PlatformLabel, Counter>,
    failed: Family<PlatformLabel, Counter>,
    device_gone: Family<PlatformLabel, Counter>,
    send_seconds: HistogramFamily,
}

impl Default for NotifyMetrics {
    fn default() -> Self {
        Self {
            sent: Family::default(),
            failed: Family::default(),
            device_gone: Family::default(),
            send_seconds: Family::new_with_constructor(send_seconds_histogram),
        }
    }
}

impl NotifyMetrics {
    /// Creates the metrics and registers them: `push_sent_total`, `push_failed_total`,
    /// `push_device_gone_total` and `push_send_seconds`, each labelled by `platform`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "push_sent",
            "Notifications accepted by the push service",
            metrics.sent.clone(),
        );
        registry.register(
            "push_failed",
            "Notifications that could not be sent after retries",
            metrics.failed.clone(),
        );
        registry.register(
            "push_device_gone",
            "Sends answered with an unregistered or invalid device token",
            metrics.device_gone.clone(),
        );
        registry.register(
            "push_send_seconds",
            "Time to send one notification, retries included",
            metrics.send_seconds.clone(),
        );
        metrics
    }

    fn label(platform: Platform) -> PlatformLabel {
        PlatformLabel { platform }
    }

    /// Notifications sent so far on `platform`.
    pub fn sent(&self, platform: Platform) -> u64 {
        self.sent.get_or_create(&Self::label(platform)).get()
    }

    /// Notifications that failed so far on `platform`.
    pub fn failed(&self, platform: Platform) -> u64 {
        self.failed.get_or_create(&Self::label(platform)).get()
    }

    /// Devices reported gone so far on `platform`.
    pub fn device_gone(&self, platform: Platform) -> u64 {
        self.device_gone.get_or_create(&Self::label(platform)).get()
    }
}

/// What happened to each device of one fan-out.
#[derive(Debug, Default)]
pub struct FanOutReport {
    /// Devices the service accepted the notification for.
    pub sent: Vec<DeviceToken>,
    /// Devices the service says are gone (already unregistered by
    /// [`Notifier::handle_status_change`]).
    pub gone: Vec<DeviceToken>,
    /// Devices the notification could not be sent to, with the reason.
    pub failed: Vec<(DeviceToken, PushError)>,
}

/// Sends notifications to devices through the sender of each device's platform.
#[derive(Clone, Default)]
pub struct Notifier {
    apns: Option<Arc<dyn PushSender>>,
    fcm: Option<Arc<dyn PushSender>>,
    metrics: NotifyMetrics,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("apns", &self.apns.is_some())
            .field("fcm", &self.fcm.is_some())
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier without senders, counting into `metrics`.
    pub fn new(metrics: NotifyMetrics) -> Self {
        Self {
            apns: None,
            fcm: None,
            metrics,
        }
    }

    /// Builds the configured senders and registers the metrics into `registry`.
    pub fn from_config(
        config: &NotifyConfig,
        clock: Arc<dyn Clock>,
        registry: &mut Registry,
    ) -> Result<Self, SetupError> {
        config.validate()?;
        let mut notifier = Self::new(NotifyMetrics::register(registry));
        if let Some(apns) = &config.apns {
            notifier =
                notifier.with_sender(Arc::new(ApnsSender::new(apns.clone(), clock.clone())?));
        }
        if let Some(fcm) = &config.fcm {
            notifier = notifier.with_sender(Arc::new(FcmSender::new(fcm.clone(), clock)?));
        }
        Ok(notifier)
    }

    /// Uses `sender` for devices of its platform (replacing any previous one).
    pub fn with_sender(mut self, sender: Arc<dyn PushSender>) -> Self {
        match sender.platform() {
            Platform::Apns => self.apns = Some(sender),
            Platform::Fcm => self.fcm = Some(sender),
        }
        self
    }

    /// The metrics this notifier counts into.
    pub fn metrics(&self) -> &NotifyMetrics {
        &self.metrics
    }

    fn sender(&self, platform: Platform) -> Option<&Arc<dyn PushSender>> {
        match platform {
            Platform::Apns => self.apns.as_ref(),
            Platform::Fcm => self.fcm.as_ref(),
        }
    }

    /// Sends `notification` to every device concurrently and reports each result.
    pub async fn send_all(
        &self,
        devices: &[DeviceToken],
        notification: &Notification,
    ) -> FanOutReport {
        let sends = devices.iter().map(|device| async move {
            let started = Instant::now();
            let result = match self.sender(device.platform) {
                Some(sender) => sender.send(device, notification).await,
                None => Err(PushError::NotConfigured(device.platform)),
            };
            let label = NotifyMetrics::label(device.platform);
            self.metrics
                .send_seconds
                .get_or_create(&label)
                .observe(started.elapsed().as_secs_f64());
            (device, result)
        });
        let mut report = FanOutReport::default();
        for (device, result) in futures::future::join_all(sends).await {
            let label = NotifyMetrics::label(device.platform);
            match result {
                Ok(SendOutcome::Sent { attempts, .. }) => {
                    tracing::debug!(delivery_id = notification.delivery_id, device = ?device, attempts, "push sent");
                    self.metrics.sent.get_or_create(&label).inc();
                    report.sent.push(device.clone());
                }
                Ok(SendOutcome::DeviceGone { reason, .. }) => {
                    tracing::info!(delivery_id = notification.delivery_id, device = ?device, %reason, "push device gone");
                    self.metrics.device_gone.get_or_create(&label).inc();
                    report.gone.push(device.clone());
                }
                Err(error) => {
                    tracing::warn!(delivery_id = notification.delivery_id, device = ?device, %error, "push failed");
                    self.metrics.failed.get_or_create(&label).inc();
                    report.failed.push((device.clone(), error));
                }
            }
        }
        report
    }

    /// On a status change: builds the milestone notification (none for other statuses, which
    /// return `None`), sends it to the delivery's registered devices and unregisters the
    /// devices reported gone from every delivery.
    ///
    /// The registry lock is held only to read the devices and to remove gone ones, never
    /// across a send.
    pub async fn handle_status_change(
        &self,
        registry: &Mutex<DeviceRegistry>,
        delivery_id: u64,
        status: DeliveryStatus,
        eta_s: Option<f64>,
    ) -> Option<FanOutReport> {
        let notification = milestone_notification(delivery_id, status, eta_s)?;
        let devices = registry.lock().devices(delivery_id).to_vec();
        let report = self.send_all(&devices, &notification).await;
        if !report.gone.is_empty() {
            let mut registry = registry.lock();
            for device in &report.gone {
                registry.unregister_everywhere(device);
            }
        }
        Some(report)
    }
}
