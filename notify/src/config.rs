//! Typed, serde-loadable configuration of the push senders, with defaults and `validate()`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Production APNs endpoint (`https://api.sandbox.push.apple.com` for development builds).
pub const APNS_PRODUCTION_ENDPOINT: &str = "https://api.push.apple.com";
/// APNs endpoint for apps signed with a development provisioning profile.
pub const APNS_SANDBOX_ENDPOINT: &str = "https://api.sandbox.push.apple.com";
/// FCM HTTP v1 endpoint.
pub const FCM_ENDPOINT: &str = "https://fcm.googleapis.com";

/// Push notification settings of a node; a platform without a section is not used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Apple Push Notification service; `None` (the default) disables iOS pushes.
    pub apns: Option<ApnsConfig>,
    /// Firebase Cloud Messaging; `None` (the default) disables Android pushes.
    pub fcm: Option<FcmConfig>,
}

impl NotifyConfig {
    /// Checks every configured section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(apns) = &self.apns {
            apns.validate()?;
        }
        if let Some(fcm) = &self.fcm {
            fcm.validate()?;
        }
        Ok(())
    }
}

/// How to reach APNs and authenticate with a provider token (`.p8` signing key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApnsConfig {
    /// Base URL of the APNs HTTP/2 API (`https://host[:port]`, no path). Use
    /// `https://api.sandbox.push.apple.com` for development builds of the app.
    pub endpoint: String,
    /// The 10-character Team ID of the Apple developer account (JWT `iss`).
    pub team_id: String,
    /// The 10-character Key ID of the APNs auth key (JWT header `kid`).
    pub key_id: String,
    /// The app's bundle id, sent as `apns-topic`.
    pub bundle_id: String,
    /// The `AuthKey_<KEYID>.p8` file: a PKCS#8 PEM P-256 private key.
    pub key_path: PathBuf,
    /// Extra CA certificates (PEM) trusted besides the public web roots, for a private relay
    /// or a test server.
    pub trust_roots: Option<PathBuf>,
    /// How long APNs keeps trying to deliver to an offline device, in seconds
    /// (`apns-expiration` = now + this; 0 means deliver once or drop).
    pub expiration_s: u64,
    /// Timeout of one HTTP exchange (connect, TLS and response), in milliseconds.
    pub request_timeout_ms: u64,
    /// Retries of throttled (429) and failed (5xx, network) sends.
    pub retry: RetryConfig,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        Self {
            endpoint: APNS_PRODUCTION_ENDPOINT.to_string(),
            team_id: String::new(),
            key_id: String::new(),
            bundle_id: String::new(),
            key_path: PathBuf::from("AuthKey.p8"),
            trust_roots: None,
            expiration_s: 3600,
            request_timeout_ms: 10_000,
            retry: RetryConfig::default(),
        }
    }
}

impl ApnsConfig {
    /// Checks the endpoint, ids and retry settings (files are checked when the sender loads).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_endpoint("apns.endpoint", &self.endpoint)?;
        check_apple_id("apns.team_id", &self.team_id)?;
        check_apple_id("apns.key_id", &self.key_id)?;
        if self.bundle_id.trim().is_empty() || self.bundle_id.contains(char::is_whitespace) {
            return Err(ConfigError::invalid(
                "apns.bundle_id",
                format!(
                    "{:?} is not a bundle id (like com.example.app)",
                    self.bundle_id
                ),
            ));
        }
        check_timeout("apns.request_timeout_ms", self.request_timeout_ms)?;
        self.retry.validate("apns.retry")
    }

    /// [`Self::request_timeout_ms`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// How to reach FCM HTTP v1 and authenticate with a Google service account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FcmConfig {
    /// Base URL of the FCM API (`https://host[:port]`, no path).
    pub endpoint: String,
    /// The Firebase project id (`projects/{project_id}/messages:send`).
    pub project_id: String,
    /// The service account key JSON downloaded from the Firebase console; `client_email`,
    /// `private_key` (PKCS#8 PEM, RSA) and `token_uri` are used.
    pub service_account_path: PathBuf,
    /// Extra CA certificates (PEM) trusted besides the public web roots, for a private relay
    /// or a test server; they apply to the token endpoint too.
    pub trust_roots: Option<PathBuf>,
    /// Timeout of one HTTP exchange (connect, TLS and response), in milliseconds.
    pub request_timeout_ms: u64,
    /// Retries of throttled (429) and failed (5xx, network) sends.
    pub retry: RetryConfig,
}

impl Default for FcmConfig {
    fn default() -> Self {
        Self {
            endpoint: FCM_ENDPOINT.to_string(),
            project_id: String::new(),
            service_account_path: PathBuf::from("firebase-service-account.json"),
            trust_roots: None,
            request_timeout_ms: 10_000,
            retry: RetryConfig::default(),
        }
    }
}

impl FcmConfig {
    /// Checks the endpoint, project id and retry settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_endpoint("fcm.endpoint", &self.endpoint)?;
        let valid_project = !self.project_id.is_empty()
            && self
                .project_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid_project {
            return Err(ConfigError::invalid(
                "fcm.project_id",
                format!(
                    "{:?} is not a Firebase project id (letters, digits and '-')",
                    self.project_id
                ),
            ));
        }
        check_timeout("fcm.request_timeout_ms", self.request_timeout_ms)?;
        self.retry.validate("fcm.retry")
    }

    /// [`Self::request_timeout_ms`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Exponential backoff for retryable failures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Total tries of one send, the first included (1 = never retry).
    pub attempts: u32,
    /// Delay before the first retry in milliseconds; doubled for each further retry.
    pub base_delay_ms: u64,
    /// Upper bound of one delay in milliseconds. A `retry-after` longer than this makes the
    /// send fail as throttled instead of waiting.
    pub max_delay_ms: u64,
    /// Randomise each backoff delay between half and all of its value, so many senders do
    /// not retry in lock step. `retry-after` values are never shortened.
    pub jitter: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 4,
            base_delay_ms: 200,
            max_delay_ms: 5000,
            jitter: true,
        }
    }
}

impl RetryConfig {
    /// Checks that the numbers make sense; `section` names the config key in errors.
    pub fn validate(&self, section: &'static str) -> Result<(), ConfigError> {
        if self.attempts == 0 || self.attempts > 20 {
            return Err(ConfigError::invalid(
                section,
                format!("attempts must be 1..=20, got {}", self.attempts),
            ));
        }
        if self.max_delay_ms < self.base_delay_ms {
            return Err(ConfigError::invalid(
                section,
                format!(
                    "max_delay_ms ({}) is below base_delay_ms ({})",
                    self.max_delay_ms, self.base_delay_ms
                ),
            ));
        }
        Ok(())
    }
}

/// A config value that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {key}: {reason}")]
pub struct ConfigError {
    /// The config key, like `apns.team_id`.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn invalid(key: &'static str, reason: String) -> Self {
        Self { key, reason }
    }
}

fn check_endpoint(key: &'static str, endpoint: &str) -> Result<(), ConfigError> {
    crate::transport::Endpoint::parse(endpoint)
        .map(|_| ())
        .map_err(|reason| ConfigError::invalid(key, reason))
}

fn check_apple_id(key: &'static str, id: &str) -> Result<(), ConfigError> {
    if id.len() == 10 && id.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{id:?} is not a 10-character Apple id (see the developer account)"),
        ))
    }
}

fn check_timeout(key: &'static str, ms: u64) -> Result<(), ConfigError> {
    if (100..=120_000).contains(&ms) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("must be 100..=120000 ms, got {ms}"),
        ))
    }
}
