//! The edge node's one typed config: listeners, TLS files, hubs, token keys, filter and batching.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

pub use crate::filter::FilterConfig;

/// Everything an edge node needs to run. Every field has a laptop-friendly default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Name of this edge in logs and in the hub's `Hello` (e.g. `edge-hel-1`).
    pub edge_id: String,
    /// UDP address of the QUIC endpoint (driver sessions, ALPN `trackline-driver/1`, and HTTP/3).
    pub quic_listen: SocketAddr,
    /// TCP address of the HTTPS driver API fallback (h2, http/1.1).
    pub https_listen: SocketAddr,
    /// TCP address of the admin server (`/metrics`, `/healthz`, `/readyz`); keep it on loopback.
    pub admin_listen: SocketAddr,
    /// This node's certificate chain and key (served to drivers, presented to hubs) and the cluster CA.
    pub tls: nodekit::TlsFiles,
    /// Hubs this edge forwards accepted fixes to; the first one is used for now.
    pub hubs: Vec<HubConfig>,
    /// Public keys driver tokens are verified against (tokens are checked locally, no round trip).
    pub token_keys: Vec<nodekit::TokenKeyConfig>,
    /// Fix plausibility filter limits.
    pub filter: FilterConfig,
    /// Batching and queue bounds between ingest and the hub link.
    pub batch: BatchConfig,
    /// How long a new driver session may take to send its `Hello`, milliseconds.
    pub hello_timeout_ms: u64,
    /// Verified tokens kept in the auth cache.
    pub auth_cache_capacity: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            edge_id: "edge-1".to_owned(),
            quic_listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            https_listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9101)),
            tls: nodekit::TlsFiles::default(),
            hubs: vec![HubConfig::default()],
            token_keys: Vec::new(),
            filter: FilterConfig::default(),
            batch: BatchConfig::default(),
            hello_timeout_ms: 5_000,
            auth_cache_capacity: 100_000,
        }
    }
}

/// Where a hub listens and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// UDP address of the hub's edge link (QUIC, mTLS, ALPN `trackline-hub/1`).
    pub addr: SocketAddr,
    /// Name the hub's certificate must carry (a SAN of its node certificate).
    pub server_name: String,
    /// Give up one connection attempt after this long, milliseconds.
    pub connect_timeout_ms: u64,
    /// First reconnect delay after a failure, milliseconds (doubles up to `backoff_max_ms`).
    pub backoff_min_ms: u64,
    /// Longest reconnect delay, milliseconds.
    pub backoff_max_ms: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 7443)),
            server_name: "localhost".to_owned(),
            connect_timeout_ms: 3_000,
            backoff_min_ms: 100,
            backoff_max_ms: 5_000,
        }
    }
}

/// Batching towards the hub and the bounds of the queues on the way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// A pending fix waits at most this long before its batch is sent, milliseconds.
    pub flush_interval_ms: u64,
    /// A batch is sent as soon as it holds this many fixes.
    pub max_batch_fixes: usize,
    /// Capacity of the ingest queue (messages from sessions and HTTP requests) and the most
    /// drivers whose newest fix is kept while the hub is unreachable.
    pub queue_capacity: usize,
    /// Batches waiting for the hub link; when full, they collapse to the newest fix per driver.
    pub uplink_queue_batches: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 20,
            max_batch_fixes: 2048,
            queue_capacity: 65_536,
            uplink_queue_batches: 64,
        }
    }
}

/// A config value that cannot work, with the field it concerns.
#[derive(Debug, thiserror::Error)]
#[error("invalid edge config: {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

fn bad(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

impl EdgeConfig {
    /// The hub used by this version (the first configured).
    pub fn primary_hub(&self) -> Option<&HubConfig> {
        self.hubs.first()
    }

    /// Checks ranges and cross-field rules; the message names the field and what is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.edge_id.trim().is_empty() {
            return Err(bad("edge_id", "must not be empty"));
        }
        let Some(hub) = self.primary_hub() else {
            return Err(bad("hubs", "at least one hub is required"));
        };
        if hub.server_name.trim().is_empty() {
            return Err(bad("hubs[0].server_name", "must not be empty"));
        }
        if hub.backoff_min_ms == 0 || hub.backoff_min_ms > hub.backoff_max_ms {
            return Err(bad(
                "hubs[0].backoff_min_ms",
                "must be > 0 and <= backoff_max_ms",
            ));
        }
        if hub.connect_timeout_ms == 0 {
            return Err(bad("hubs[0].connect_timeout_ms", "must be > 0"));
        }
        if self.token_keys.is_empty() {
            return Err(bad(
                "token_keys",
                "at least one public key is needed to verify driver tokens",
            ));
        }
        for k in &self.token_keys {
            protocol::token::decode_public_key(&k.public_key)
                .map_err(|e| bad("token_keys", format!("kid {}: {e}", k.kid)))?;
        }
        let f = &self.filter;
        if !positive(f.max_accuracy_m) {
            return Err(bad("filter.max_accuracy_m", "must be > 0"));
        }
        if !positive(f.max_speed_kmh) {
            return Err(bad("filter.max_speed_kmh", "must be > 0"));
        }
        if f.max_age_s == 0 {
            return Err(bad("filter.max_age_s", "must be > 0"));
        }
        if !(positive(f.rate_limit_per_s)
            && f.rate_limit_burst.is_finite()
            && f.rate_limit_burst >= 1.0)
        {
            return Err(bad(
                "filter.rate_limit_per_s",
                "rate must be > 0 and burst >= 1",
            ));
        }
        let b = &self.batch;
        if b.flush_interval_ms == 0 || b.flush_interval_ms > 20 {
            return Err(bad(
                "batch.flush_interval_ms",
                "must be between 1 and 20 (the flush promise)",
            ));
        }
        if b.max_batch_fixes == 0 || b.max_batch_fixes > protocol::wire::MAX_FIXES_PER_BATCH {
            return Err(bad(
                "batch.max_batch_fixes",
                format!(
                    "must be between 1 and {}",
                    protocol::wire::MAX_FIXES_PER_BATCH
                ),
            ));
        }
        if b.queue_capacity == 0 || b.uplink_queue_batches == 0 {
            return Err(bad("batch.queue_capacity", "queue capacities must be > 0"));
        }
        if self.hello_timeout_ms == 0 {
            return Err(bad("hello_timeout_ms", "must be > 0"));
        }
        if self.auth_cache_capacity == 0 {
            return Err(bad("auth_cache_capacity", "must be > 0"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key() -> EdgeConfig {
        EdgeConfig {
            token_keys: vec![nodekit::TokenKeyConfig {
                kid: 1,
                public_key: protocol::token::encode_public_key(&[7u8; 32]),
            }],
            ..EdgeConfig::default()
        }
    }

    #[test]
    fn defaults_with_a_token_key_validate() {
        with_key().validate().expect("valid");
    }

    #[test]
    fn validation_names_the_bad_field() {
        let err = EdgeConfig::default().validate().expect_err("no keys");
        assert!(err.to_string().contains("token_keys"), "{err}");
        let mut c = with_key();
        c.batch.flush_interval_ms = 50;
        assert!(c
            .validate()
            .expect_err("slow flush")
            .to_string()
            .contains("flush_interval_ms"));
    }

    #[test]
    fn config_round_trips_through_toml_and_rejects_unknown_keys() {
        let c = with_key();
        let text = toml::to_string(&c).expect("serialize");
        let back: EdgeConfig = toml::from_str(&text).expect("parse");
        assert_eq!(back, c);
        assert!(toml::from_str::<EdgeConfig>("edge_idd = \"x\"").is_err());
        let partial: EdgeConfig =
            toml::from_str("edge_id = \"e2\"\n[filter]\nmax_speed_kmh = 150.0").expect("partial");
        assert_eq!(partial.filter.max_speed_kmh, 150.0);
        assert_eq!(partial.filter.max_accuracy_m, 100.0);
    }
}
