//! The FCM HTTP v1 sender: an OAuth2 access token from a service-account JWT (RS256), then
//! HTTP/2 POST `/v1/projects/{project_id}/messages:send`.

use std::path::Path;
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::clock::Clock;
use crate::config::{ConfigError, FcmConfig};
use crate::error::{PushError, SetupError};
use crate::jwt::{AccessTokenCache, Rs256Signer};
use crate::notification::Notification;
use crate::registry::{DeviceToken, Platform};
use crate::retry::{retry_after, RetryPolicy};
use crate::sender::{
    device_for, send_with_retries, transport_failure, BoxFuture, PushSender, SendOutcome, Verdict,
};
use crate::transport::{tls_client_config, Endpoint, H2Client, HttpResponse};

/// The fields of a Google service account key file this crate uses.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    /// The account's e-mail address (JWT `iss`).
    pub client_email: String,
    /// PKCS#8 PEM RSA private key.
    pub private_key: String,
    /// OAuth2 token endpoint (JWT `aud`, where the assertion is POSTed).
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("private_key", &"<redacted>")
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

impl ServiceAccount {
    /// Reads and parses the JSON key file.
    pub fn load(path: &Path) -> Result<Self, SetupError> {
        let text = std::fs::read_to_string(path).map_err(|source| SetupError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| SetupError::ServiceAccount {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// Sends notifications through FCM HTTP v1.
pub struct FcmSender {
    project_id: String,
    http: H2Client,
    token_http: H2Client,
    token_uri: String,
    signer: Rs256Signer,
    access: tokio::sync::Mutex<AccessTokenCache>,
    clock: Arc<dyn Clock>,
    policy: RetryPolicy,
}

impl std::fmt::Debug for FcmSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmSender")
            .field("project_id", &self.project_id)
            .field("endpoint", self.http.endpoint())
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl FcmSender {
    /// Validates `config`, loads the service account and trust roots. Connects lazily.
    pub fn new(config: FcmConfig, clock: Arc<dyn Clock>) -> Result<Self, SetupError> {
        config.validate()?;
        let path = &config.service_account_path;
        let account = ServiceAccount::load(path)?;
        let signer = Rs256Signer::from_pem(&account.private_key, path, &account.client_email)?;
        let bad_account = |reason: String| SetupError::ServiceAccount {
            path: path.clone(),
            reason,
        };
        if account.client_email.is_empty() {
            return Err(bad_account("client_email is empty".to_string()));
        }
        let (token_endpoint, _) = Endpoint::parse_url(&account.token_uri)
            .map_err(|e| bad_account(format!("token_uri: {e}")))?;
        let endpoint = Endpoint::parse(&config.endpoint).map_err(|reason| ConfigError {
            key: "fcm.endpoint",
            reason,
        })?;
        let tls = tls_client_config(config.trust_roots.as_deref())?;
        Ok(Self {
            project_id: config.project_id.clone(),
            http: H2Client::new(endpoint, tls.clone(), config.request_timeout()),
            token_http: H2Client::new(token_endpoint, tls, config.request_timeout()),
            token_uri: account.token_uri,
            signer,
            access: tokio::sync::Mutex::new(AccessTokenCache::default()),
            clock,
            policy: RetryPolicy::new(config.retry),
        })
    }

    /// The JSON body of `messages:send` for one device.
    pub fn message(device: &DeviceToken, notification: &Notification) -> Value {
        json!({
            "message": {
                "token": device.token,
                "notification": { "title": notification.title, "body": notification.body },
                "data": notification.data,
                "android": { "priority": "high" },
            }
        })
    }

    /// A valid access token, fetched with a fresh assertion when the cached one is missing,
    /// about to expire, or `renew` is set.
    async fn access_token(&self, renew: bool) -> Result<String, Verdict> {
        let mut cache = self.access.lock().await;
        if renew {
            cache.invalidate();
        }
        let now_s = self.clock.unix_s();
        if let Some(token) = cache.valid(now_s) {
            return Ok(token.to_string());
        }
        let assertion = self
            .signer
            .assertion(&self.token_uri, now_s)
            .map_err(Verdict::Fail)?;
        let form = format!(
            "grant_type={}&assertion={assertion}",
            "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
        );
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form)
            .map_err(|e| {
                Verdict::Fail(PushError::InvalidRequest {
                    platform: Platform::Fcm,
                    reason: e.to_string(),
                })
            })?;
        let resp = self
            .token_http
            .send(request)
            .await
            .map_err(transport_failure)?;
        let grant = classify_token_response(&resp, &self.token_http.endpoint().authority())?;
        tracing::debug!(expires_in_s = grant.expires_in, "fetched fcm access token");
        cache.store(grant.access_token.clone(), now_s, grant.expires_in);
        Ok(grant.access_token)
    }

    async fn attempt(
        &self,
        device: &DeviceToken,
        notification: &Notification,
        renew: bool,
    ) -> Verdict {
        let token = match self.access_token(renew).await {
            Ok(token) => token,
            Err(verdict) => return verdict,
        };
        let url = self
            .http
            .endpoint()
            .url(&format!("/v1/projects/{}/messages:send", self.project_id));
        let request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json; charset=utf-8")
            .body(Self::message(device, notification).to_string());
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                return Verdict::Fail(PushError::InvalidRequest {
                    platform: Platform::Fcm,
                    reason: e.to_string(),
                })
            }
        };
        match self.http.send(request).await {
            Ok(resp) => classify(&resp),
            Err(e) => transport_failure(e),
        }
    }
}

impl PushSender for FcmSender {
    fn platform(&self) -> Platform {
        Platform::Fcm
    }

    fn send<'a>(
        &'a self,
        device: &'a DeviceToken,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<SendOutcome, PushError>> {
        Box::pin(async move {
            let device = device_for(Platform::Fcm, device)?;
            send_with_retries(Platform::Fcm, &self.policy, |renew| {
                self.attempt(&device, notification, renew)
            })
            .await
        })
    }
}

#[derive(Deserialize)]
struct TokenGrant {
    access_token: String,
    #[serde(default = "default_expires_in")]
    expires_in: u64,
}

fn default_expires_in() -> u64 {
    3600
}

#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Maps the token endpoint's answer to a grant or to what the retry loop does next.
fn classify_token_response(resp: &HttpResponse, endpoint: &str) -> Result<TokenGrant, Verdict> {
    let status = resp.status;
    if status == StatusCode::OK {
        return serde_json::from_slice::<TokenGrant>(&resp.body).map_err(|e| {
            Verdict::Fail(PushError::BadResponse {
                endpoint: endpoint.to_string(),
                reason: format!("token response: {e}"),
            })
        });
    }
    let body: OAuthError = serde_json::from_slice(&resp.body).unwrap_or_default();
    let reason = format!("token endpoint: {} {}", body.error, body.error_description)
        .trim()
        .to_string();
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(Verdict::Retry {
            error: PushError::Rejected {
                platform: Platform::Fcm,
                status: status.as_u16(),
                reason,
            },
            retry_after: retry_after(&resp.headers),
        });
    }
    Err(Verdict::Fail(PushError::Auth {
        platform: Platform::Fcm,
        status: status.as_u16(),
        reason,
    }))
}

#[derive(Deserialize, Default)]
struct FcmErrorBody {
    #[serde(default)]
    error: FcmError,
}

#[derive(Deserialize, Default)]
struct FcmError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

impl FcmError {
    /// `details[].errorCode` of the `google.firebase.fcm.v1.FcmError` entry.
    fn error_code(&self) -> Option<&str> {
        self.details
            .iter()
            .find_map(|d| d.get("errorCode").and_then(Value::as_str))
    }

    /// Whether an INVALID_ARGUMENT is about the registration token (not the payload).
    fn is_about_token(&self) -> bool {
        let field_is_token = self.details.iter().any(|d| {
            d.get("fieldViolations")
                .and_then(Value::as_array)
                .is_some_and(|v| {
                    v.iter()
                        .any(|f| f.get("field").and_then(Value::as_str) == Some("message.token"))
                })
        });
        field_is_token
            || self
                .message
                .to_ascii_lowercase()
                .contains("registration token")
    }

    fn reason(&self) -> String {
        match self.error_code() {
            Some(code) => format!("{code}: {}", self.message),
            None => format!("{}: {}", self.status, self.message),
        }
    }
}

/// Maps an FCM answer to what the retry loop does next.
pub(crate) fn classify(resp: &HttpResponse) -> Verdict {
    let status = resp.status;
    if status == StatusCode::OK {
        let name = serde_json::from_slice::<Value>(&resp.body)
            .ok()
            .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string));
        return Verdict::Sent { message_id: name };
    }
    let error = serde_json::from_slice::<FcmErrorBody>(&resp.body)
        .unwrap_or_default()
        .error;
    let reason = error.reason();
    let rejected = |reason: String| PushError::Rejected {
        platform: Platform::Fcm,
        status: status.as_u16(),
        reason,
    };
    match status {
        StatusCode::NOT_FOUND if error.error_code() == Some("UNREGISTERED") => {
            Verdict::Gone { reason }
        }
        StatusCode::BAD_REQUEST if error.status == "INVALID_ARGUMENT" && error.is_about_token() => {
            Verdict::Gone { reason }
        }
        StatusCode::UNAUTHORIZED => Verdict::RenewCredentials {
            error: PushError::Auth {
                platform: Platform::Fcm,
                status: status.as_u16(),
                reason,
            },
        },
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

    fn resp(status: u16, body: Value) -> HttpResponse {
        HttpResponse {
            status: StatusCode::from_u16(status).expect("status"),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    fn fcm_error(code: u16, status: &str, message: &str, error_code: &str) -> Value {
        json!({"error": {"code": code, "message": message, "status": status, "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}
        ]}})
    }

    #[test]
    fn answers_are_classified_as_firebase_documents_them() {
        let sent = classify(&resp(200, json!({"name": "projects/p/messages/1"})));
        assert!(
            matches!(sent, Verdict::Sent { message_id: Some(ref m) } if m == "projects/p/messages/1")
        );
        let gone = classify(&resp(
            404,
            fcm_error(
                404,
                "NOT_FOUND",
                "Requested entity was not found.",
                "UNREGISTERED",
            ),
        ));
        assert!(matches!(gone, Verdict::Gone { ref reason } if reason.starts_with("UNREGISTERED")));
        let bad_token = fcm_error(
            400,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            "INVALID_ARGUMENT",
        );
        assert!(matches!(
            classify(&resp(400, bad_token)),
            Verdict::Gone { .. }
        ));
        let bad_payload = fcm_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received.",
            "INVALID_ARGUMENT",
        );
        assert!(matches!(
            classify(&resp(400, bad_payload)),
            Verdict::Fail(PushError::Rejected { status: 400, .. })
        ));
        let wrong_project = fcm_error(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            "NOT_FOUND",
        );
        assert!(matches!(
            classify(&resp(404, wrong_project)),
            Verdict::Fail(_)
        ));
        assert!(matches!(
            classify(&resp(401, json!({}))),
            Verdict::RenewCredentials { .. }
        ));
        assert!(matches!(
            classify(&resp(429, json!({}))),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(&resp(503, json!({}))),
            Verdict::Retry { .. }
        ));
        let mismatch = fcm_error(
            403,
            "PERMISSION_DENIED",
            "SenderId mismatch",
            "SENDER_ID_MISMATCH",
        );
        assert!(
            matches!(classify(&resp(403, mismatch)), Verdict::Fail(_)),
            "a config error must not unregister devices"
        );
    }

    #[test]
    fn token_endpoint_refusal_is_an_auth_error_and_overload_is_retried() {
        let refused = resp(
            400,
            json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        );
        match classify_token_response(&refused, "oauth2:443") {
            Err(Verdict::Fail(PushError::Auth { reason, .. })) => {
                assert!(reason.contains("invalid_grant"), "{reason}")
            }
            other => panic!(
                "expected auth failure, got {:?}",
                other.map(|g| g.access_token)
            ),
        }
        assert!(matches!(
            classify_token_response(&resp(503, json!({})), "o"),
            Err(Verdict::Retry { .. })
        ));
        let ok = classify_token_response(
            &resp(
                200,
                json!({"access_token": "ya29", "expires_in": 3599, "token_type": "Bearer"}),
            ),
            "o",
        );
        assert!(
            matches!(ok, Ok(TokenGrant { ref access_token, expires_in: 3599 }) if access_token == "ya29")
        );
    }
}
