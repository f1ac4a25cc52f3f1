//! The `PushSender` trait both services implement, send outcomes, and the retry loop they share.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::PushError;
use crate::notification::Notification;
use crate::registry::{DeviceToken, Platform};
use crate::retry::{RetryDecision, RetryPolicy};

/// A boxed, sendable future, so `PushSender` can be used as `dyn PushSender`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What became of a send that did not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// The push service accepted the notification.
    Sent {
        /// HTTP requests made, the successful one included.
        attempts: u32,
        /// The service's id for the message (`apns-id` header, FCM message `name`).
        message_id: Option<String>,
        /// Total time spent waiting between attempts (as decided, not as measured).
        backoff: Duration,
    },
    /// The service says the token is no longer valid: the caller should unregister it.
    DeviceGone {
        /// The service's reason (`Unregistered`, `BadDeviceToken`, `UNREGISTERED`).
        reason: String,
        /// HTTP requests made.
        attempts: u32,
    },
}

/// Sends one notification to one device through one push service.
pub trait PushSender: Send + Sync {
    /// The service this sender talks to; it refuses devices of the other one.
    fn platform(&self) -> Platform;

    /// Sends `notification` to `device`, retrying throttled and failed attempts per the
    /// sender's retry config and renewing its credentials once if the service rejects them.
    fn send<'a>(
        &'a self,
        device: &'a DeviceToken,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<SendOutcome, PushError>>;
}

/// How one HTTP attempt ended, as classified by a sender.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Accepted.
    Sent { message_id: Option<String> },
    /// Token invalid or unregistered.
    Gone { reason: String },
    /// Throttled, server error or network failure: worth another try.
    Retry {
        error: PushError,
        retry_after: Option<Duration>,
    },
    /// Credentials expired: renew them, then try again (once).
    RenewCredentials { error: PushError },
    /// Nothing a retry would fix.
    Fail(PushError),
}

/// Checks that `device` belongs to `sender`'s platform and is well formed, before any request.
pub(crate) fn device_for(sender: Platform, device: &DeviceToken) -> Result<DeviceToken, PushError> {
    if device.platform != sender {
        return Err(PushError::WrongPlatform {
            sender,
            device: device.platform,
        });
    }
    Ok(device.clone().validated()?)
}

/// Runs `attempt(renew_credentials)` until it succeeds, fails for good or the policy gives
/// up, sleeping between tries.
pub(crate) async fn send_with_retries<F, Fut>(
    platform: Platform,
    policy: &RetryPolicy,
    mut attempt: F,
) -> Result<SendOutcome, PushError>
where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Verdict>,
{
    let mut attempts = 0u32;
    let mut failures = 0u32;
    let mut renewed = false;
    let mut renew_now = false;
    let mut backoff = Duration::ZERO;
    loop {
        attempts += 1;
        match attempt(renew_now).await {
            Verdict::Sent { message_id } => {
                return Ok(SendOutcome::Sent {
                    attempts,
                    message_id,
                    backoff,
                })
            }
            Verdict::Gone { reason } => return Ok(SendOutcome::DeviceGone { reason, attempts }),
            Verdict::Fail(error) => return Err(error),
            Verdict::RenewCredentials { error } => {
                if renewed {
                    return Err(error);
                }
                tracing::info!(%platform, error = %error, "renewing credentials and retrying");
                renewed = true;
                renew_now = true;
            }
            Verdict::Retry { error, retry_after } => {
                renew_now = false;
                failures += 1;
                match policy.handle_failure(failures, retry_after, rand::random::<f64>()) {
                    RetryDecision::After(delay) => {
                        tracing::debug!(%platform, attempt = attempts, delay_ms = delay.as_millis() as u64, error = %error, "retrying");
                        backoff += delay;
                        tokio::time::sleep(delay).await;
                    }
                    RetryDecision::GiveUp => {
                        return Err(PushError::RetriesExhausted {
                            attempts,
                            last: Box::new(error),
                        })
                    }
                    RetryDecision::TooLong(retry_after) => {
                        return Err(PushError::Throttled {
                            platform,
                            retry_after,
                        })
                    }
                }
            }
        }
    }
}

/// The verdict for an HTTP exchange that failed below HTTP (connect, TLS, timeout, reset).
pub(crate) fn transport_failure(error: PushError) -> Verdict {
    match error {
        // A certificate or ALPN problem will not fix itself within a few seconds.
        PushError::NotHttp2 { .. } => Verdict::Fail(error),
        PushError::Tls { ref source, .. }
            if source
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            Verdict::Fail(error)
        }
        _ => Verdict::Retry {
            error,
            retry_after: None,
        },
    }
}
