//! The APNs sender: HTTP/2 POST `/3/device/{token}` authenticated with an ES256 provider token.

use std::sync::Arc;

use http::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::clock::Clock;
use crate::config::{ApnsConfig, ConfigError};
use crate::error::{PushError, SetupError};
use crate::jwt::{Es256Signer, ProviderTokenCache};
use crate::notification::{Notification, DATA_DELIVERY_ID, DATA_STATUS};
use crate::registry::{DeviceToken, Platform};
use crate::retry::{retry_after, RetryPolicy};
use crate::sender::{
    device_for, send_with_retries, transport_failure, BoxFuture, PushSender, SendOutcome, Verdict,
};
use crate::transport::{tls_client_config, Endpoint, H2Client, HttpResponse};

/// Sends alert notifications through APNs.
pub struct ApnsSender {
    config: ApnsConfig,
    http: H2Client,
    signer: Es256Signer,
    token: parking_lot::Mutex<ProviderTokenCache>,
    clock: Arc<dyn Clock>,
    policy: RetryPolicy,
}

impl std::fmt::Debug for ApnsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsSender")
            .field("endpoint", &self.config.endpoint)
            .field("bundle_id", &self.config.bundle_id)
            .finish_non_exhaustive()
    }
}

impl ApnsSender {
    /// Validates `config`, loads the `.p8` key and the trust roots. Connects lazily.
    pub fn new(config: ApnsConfig, clock: Arc<dyn Clock>) -> Result<Self, SetupError> {
        config.validate()?;
        let pem = std::fs::read_to_string(&config.key_path).map_err(|source| SetupError::Read {
            path: config.key_path.clone(),
            source,
        })?;
        let signer =
            Es256Signer::from_pem(&pem, &config.key_path, &config.key_id, &config.team_id)?;
        let endpoint = Endpoint::parse(&config.endpoint).map_err(|reason| ConfigError {
            key: "apns.endpoint",
            reason,
        })?;
        let tls = tls_client_config(config.trust_roots.as_deref())?;
        Ok(Self {
            http: H2Client::new(endpoint, tls, config.request_timeout()),
            signer,
            token: parking_lot::Mutex::new(ProviderTokenCache::default()),
            clock,
            policy: RetryPolicy::new(config.retry.clone()),
            config,
        })
    }

    /// The JSON body APNs receives: `aps.alert` with title and body, the default sound,
    /// `delivery_id` (number), `status`, and the other `data` entries as strings.
    pub fn payload(notification: &Notification) -> Value {
        let mut root = Map::new();
        for (key, value) in &notification.data {
            if key != "aps" {
                root.insert(key.clone(), Value::String(value.clone()));
            }
        }
        root.insert(
            "aps".to_string(),
            json!({
                "alert": { "title": notification.title, "body": notification.body },
                "sound": "default",
            }),
        );
        root.insert(
            DATA_DELIVERY_ID.to_string(),
            json!(notification.delivery_id),
        );
        root.insert(DATA_STATUS.to_string(), json!(notification.status.as_str()));
        Value::Object(root)
    }

    fn request(
        &self,
        device: &DeviceToken,
        notification: &Notification,
        jwt: &str,
        now_s: u64,
    ) -> Result<Request<String>, PushError> {
        let expiration = match self.config.expiration_s {
            0 => 0,
            ttl => now_s + ttl,
        };
        Request::builder()
            .method(Method::POST)
            .uri(
                self.http
                    .endpoint()
                    .url(&format!("/3/device/{}", device.token)),
            )
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", self.config.bundle_id.as_str())
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-expiration", expiration.to_string())
            .header(
                "apns-collapse-id",
                format!("delivery-{}", notification.delivery_id),
            )
            .header("content-type", "application/json")
            .body(Self::payload(notification).to_string())
            .map_err(|e| PushError::InvalidRequest {
                platform: Platform::Apns,
                reason: e.to_string(),
            })
    }

    async fn attempt(
        &self,
        device: &DeviceToken,
        notification: &Notification,
        renew: bool,
    ) -> Verdict {
        let now_s = self.clock.unix_s();
        let jwt = {
            let mut cache = self.token.lock();
            if renew {
                cache.invalidate();
            }
            cache.token(now_s, &self.signer)
        };
        let request = match jwt.and_then(|jwt| self.request(device, notification, &jwt, now_s)) {
            Ok(request) => request,
            Err(e) => return Verdict::Fail(e),
        };
        match self.http.send(request).await {
            Ok(resp) => classify(&resp),
            Err(e) => transport_failure(e),
        }
    }
}

impl PushSender for ApnsSender {
    fn platform(&self) -> Platform {
        Platform::Apns
    }

    fn send<'a>(
        &'a self,
        device: &'a DeviceToken,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<SendOutcome, PushError>> {
        Box::pin(async move {
            let device = device_for(Platform::Apns, device)?;
            send_with_retries(Platform::Apns, &self.policy, |renew| {
                self.attempt(&device, notification, renew)
            })
            .await
        })
    }
}

#[derive(Deserialize)]
struct ApnsErrorBody {
    #[serde(default)]
    reason: String,
}

/// Maps an APNs answer to what the retry loop does next.
pub(crate) fn classify(resp: &HttpResponse) -> Verdict {
    let reason = serde_json::from_slice::<ApnsErrorBody>(&resp.body)
        .map(|b| b.reason)
        .unwrap_or_default();
    let status = resp.status;
    let rejected = |reason: String| PushError::Rejected {
        platform: Platform::Apns,
        status: status.as_u16(),
        reason,
    };
    match status {
        StatusCode::OK => Verdict::Sent {
            message_id: resp
                .headers
                .get("apns-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        },
        StatusCode::GONE => Verdict::Gone {
            reason: if reason.is_empty() {
                "Unregistered".to_string()
            } else {
                reason
            },
        },
        StatusCode::BAD_REQUEST if reason == "BadDeviceToken" => Verdict::Gone { reason },
        StatusCode::FORBIDDEN => {
            let error = PushError::Auth {
                platform: Platform::Apns,
                status: status.as_u16(),
                reason: reason.clone(),
            };
            if reason == "ExpiredProviderToken" {
                Verdict::RenewCredentials { error }
            } else {
                Verdict::Fail(error)
            }
        }
        StatusCode::TOO_MANY_REQUESTS => Verdict::Retry {
            error: rejected(reason),
            retry_after: retry_after(&resp.headers),
        },
        s if s.is_server_error() => Verdict::Retry {
            error: rejected(reason),
            retry_after: retry_after(&resp.headers),
        },
        _ => Verdict::Fail(rejected(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Bytes;
    use hyper::HeaderMap;

    fn resp(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status: StatusCode::from_u16(status).expect("status"),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn answers_are_classified_as_apple_documents_them() {
        assert!(matches!(classify(&resp(200, "")), Verdict::Sent { .. }));
        assert!(
            matches!(classify(&resp(410, r#"{"reason":"Unregistered","timestamp":1}"#)), Verdict::Gone { reason } if reason == "Unregistered")
        );
        assert!(matches!(
            classify(&resp(400, r#"{"reason":"BadDeviceToken"}"#)),
            Verdict::Gone { .. }
        ));
        assert!(matches!(
            classify(&resp(400, r#"{"reason":"BadTopic"}"#)),
            Verdict::Fail(PushError::Rejected { status: 400, .. })
        ));
        assert!(matches!(
            classify(&resp(403, r#"{"reason":"ExpiredProviderToken"}"#)),
            Verdict::RenewCredentials { .. }
        ));
        assert!(matches!(
            classify(&resp(403, r#"{"reason":"InvalidProviderToken"}"#)),
            Verdict::Fail(PushError::Auth { .. })
        ));
        assert!(matches!(
            classify(&resp(429, r#"{"reason":"TooManyRequests"}"#)),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(&resp(503, "not json")),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(&resp(413, r#"{"reason":"PayloadTooLarge"}"#)),
            Verdict::Fail(_)
        ));
    }
}
