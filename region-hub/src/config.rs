//! The hub's typed configuration (TOML), with laptop-friendly defaults and `validate()`.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything a region hub needs to start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Name of this hub, sent to edges in `Welcome` and used in logs.
    pub hub_id: String,
    /// UDP address of the QUIC endpoint edges connect to (mutual TLS, ALPN `trackline-hub/1`).
    pub link_listen: SocketAddr,
    /// UDP address of the WebTransport (HTTP/3) endpoint for consumers.
    pub webtransport_listen: SocketAddr,
    /// TCP address of the HTTPS API (order API, WebSocket, REST).
    pub https_listen: SocketAddr,
    /// Optional TCP address serving the same API over plain HTTP (local development only).
    pub http_listen: Option<SocketAddr>,
    /// TCP address of the admin server (`/metrics`, `/healthz`, `/readyz`); keep it on loopback.
    pub admin_listen: SocketAddr,
    /// Directory of the hub's redb event log (`hub.redb`).
    pub data_dir: PathBuf,
    /// Certificate, key and cluster CA for the edge link (mTLS) and HTTPS.
    pub tls: nodekit::TlsFiles,
    /// Certificate and key for WebTransport; when absent a short-lived self-signed ECDSA
    /// identity is made at start (browsers pin it by hash, see `/api/v1/webtransport/info`).
    pub webtransport_tls: Option<WebTransportTls>,
    /// PKCS#8 Ed25519 key (DER) the hub signs tracking tokens with, standing in for the order
    /// service. Created on first start when missing (`region-hub keygen` writes one explicitly).
    pub token_signing_key: PathBuf,
    /// Key id put into tokens signed with `token_signing_key`.
    pub token_kid: u32,
    /// Extra public keys tokens may be signed with (the hub's own key is always trusted).
    pub token_keys: Vec<nodekit::TokenKeyConfig>,
    /// Lifetime of the tracking tokens minted for new deliveries, in seconds.
    pub tracking_token_ttl_s: u64,
    /// A delivery's live state is dropped this many seconds after its last update.
    pub state_ttl_s: u64,
    /// After this many seconds without a fix, consumers get a `location_unavailable` frame.
    pub location_unavailable_after_s: u64,
    /// Group commit of status events to redb.
    pub commit: CommitConfig,
    /// Bound of each consumer's queue of reliable frames; a consumer that falls this far
    /// behind is disconnected (it resumes with `last_event_seq`).
    pub consumer_queue: usize,
}

/// Certificate and key files (PEM) for the WebTransport endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebTransportTls {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// How status events are batched into redb write transactions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommitConfig {
    /// Most append requests committed in one write transaction.
    pub max_batch_events: usize,
    /// How long the writer waits for more requests after the first one, in milliseconds.
    pub max_delay_ms: u64,
    /// Bound of the queue of append requests; beyond it status changes get 503.
    pub queue: usize,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            max_batch_events: 512,
            max_delay_ms: 2,
            queue: 8192,
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            hub_id: "hub-1".into(),
            link_listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            webtransport_listen: SocketAddr::from(([0, 0, 0, 0], 4434)),
            https_listen: SocketAddr::from(([0, 0, 0, 0], 9443)),
            http_listen: None,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9102)),
            data_dir: PathBuf::from("./data/hub"),
            tls: nodekit::TlsFiles {
                cert: PathBuf::from("certs/dev/hub.pem"),
                key: PathBuf::from("certs/dev/hub.key"),
                ca: PathBuf::from("certs/dev/ca.pem"),
            },
            webtransport_tls: None,
            token_signing_key: PathBuf::from("./data/hub/token-signing.pk8"),
            token_kid: 1,
            token_keys: Vec::new(),
            tracking_token_ttl_s: 86_400,
            state_ttl_s: 7_200,
            location_unavailable_after_s: 30,
            commit: CommitConfig::default(),
            consumer_queue: 256,
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("hub_id must not be empty")]
    EmptyHubId,
    #[error("{field} must be greater than zero")]
    Zero { field: &'static str },
    #[error("{a} and {b} use the same address {addr}")]
    SameAddress {
        a: &'static str,
        b: &'static str,
        addr: SocketAddr,
    },
    #[error("token key kid={kid} is invalid: {reason}")]
    TokenKey { kid: u32, reason: String },
    #[error("token_keys lists kid={0}, which is the hub's own token_kid")]
    KidClash(u32),
}

impl HubConfig {
    /// Checks values that would otherwise fail later or behave absurdly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hub_id.trim().is_empty() {
            return Err(ConfigError::EmptyHubId);
        }
        for (field, v) in [
            ("tracking_token_ttl_s", self.tracking_token_ttl_s),
            ("state_ttl_s", self.state_ttl_s),
            (
                "location_unavailable_after_s",
                self.location_unavailable_after_s,
            ),
            (
                "commit.max_batch_events",
                self.commit.max_batch_events as u64,
            ),
            ("commit.queue", self.commit.queue as u64),
            ("consumer_queue", self.consumer_queue as u64),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        let mut tcp = vec![
            ("https_listen", self.https_listen),
            ("admin_listen", self.admin_listen),
        ];
        if let Some(h) = self.http_listen {
            tcp.push(("http_listen", h));
        }
        let udp = [
            ("link_listen", self.link_listen),
            ("webtransport_listen", self.webtransport_listen),
        ];
        for set in [&tcp[..], &udp[..]] {
            for (i, (a, x)) in set.iter().enumerate() {
                for (b, y) in &set[i + 1..] {
                    if x == y && x.port() != 0 {
                        return Err(ConfigError::SameAddress { a, b, addr: *x });
                    }
                }
            }
        }
        for k in &self.token_keys {
            if k.kid == self.token_kid {
                return Err(ConfigError::KidClash(k.kid));
            }
            protocol::token::decode_public_key(&k.public_key).map_err(|e| {
                ConfigError::TokenKey {
                    kid: k.kid,
                    reason: e.to_string(),
                }
            })?;
        }
        Ok(())
    }

    /// Path of the redb event log.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("hub.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_round_trip_through_toml() {
        let c = HubConfig::default();
        c.validate().expect("defaults are valid");
        let text = toml::to_string(&c).expect("serialize");
        let back: HubConfig = toml::from_str(&text).expect("parse");
        assert_eq!(back, c);
    }

    #[test]
    fn rejects_zero_ttl_and_shared_ports() {
        let c = HubConfig {
            state_ttl_s: 0,
            ..HubConfig::default()
        };
        assert_eq!(
            c.validate().expect_err("zero").to_string(),
            "state_ttl_s must be greater than zero"
        );
        let c = HubConfig {
            http_listen: Some(HubConfig::default().https_listen),
            ..HubConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::SameAddress { .. })));
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(toml::from_str::<HubConfig>("hub_idd = \"x\"").is_err());
    }
}
