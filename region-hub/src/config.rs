//! The hub's typed configuration (TOML), with laptop-friendly defaults and `validate()`.

pub use crate::tracking::anomaly::AnomalyConfig;
pub use crate::tracking::geofence::GeofenceConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where the hub's config comes from, later layers winning: the TOML file (`--config` or
/// `TRACKLINE_HUB_CONFIG`), then `TRACKLINE_HUB_<FIELD>` variables with `__` between nesting
/// levels (`TRACKLINE_HUB_CLUSTER_HUB__MIN_COPIES=1`), then `--set key=value`
/// (`--set cluster_hub.min_copies=1`). `TRACKLINE_HUB_CONFIG` is the file's path, not a field.
pub const CONFIG_LAYERS: nodekit::ConfigLayers =
    nodekit::ConfigLayers::new("TRACKLINE_HUB_", &["TRACKLINE_HUB_CONFIG"]);

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
    /// Shards of the delivery state, each applying its deliveries' fixes on a worker of its
    /// own (a hub uses at most this many cores for fixes); 0 = one per available core.
    pub shards: usize,
    /// Admission of WebTransport (QUIC) handshakes on `webtransport_listen`, decided per
    /// incoming connection before any crypto: at most `max_in_flight` at once, at most
    /// `rate_per_s` new ones a second (beyond a `burst`), a Retry first past
    /// `retry_above_in_flight` for clients whose address is not validated; the rest are
    /// refused and counted in `handshakes_refused_total{listener="webtransport"}`. Browsers
    /// that are refused fall back to WebSocket or retry with backoff.
    pub webtransport_handshakes: nodekit::HandshakeGateConfig,
    /// Admission of TLS handshakes on `https_listen` (order API, WebSocket consumers): the
    /// same limits, no Retry on TCP; a refused connection is closed before TLS starts.
    pub https_handshakes: nodekit::HandshakeGateConfig,
    /// Kernel receive and send buffer of the UDP sockets on `link_listen` and
    /// `webtransport_listen`, bytes (0: the system default, ~208 KiB on Linux, which a
    /// reconnect burst of consumers overflows). Set with `SO_RCVBUFFORCE` when the process has
    /// CAP_NET_ADMIN, else capped by `net.core.rmem_max`/`wmem_max` (a warning says so).
    pub udp_buffer_bytes: usize,
    /// redb page cache of the hub's store (event log, breadcrumbs, plans), MiB.
    pub store_cache_mib: u64,
    /// OpenStreetMap extract (PBF) drawn by the tracking page and the operator view; the
    /// city built into `roadnet` (central Helsinki) when absent.
    pub map_pbf: Option<PathBuf>,
    /// Road network for routes and ETAs when `map_pbf` is not set: `"helsinki"` (built in) or
    /// a generated grid city for scale tests, `map = { grid = { rows = 40, cols = 40,
    /// spacing_m = 150.0 } }` (south-west corner at [`GRID_ORIGIN`]). The map, the routes and
    /// the simulator (`client-sim --city grid`) must use the same network.
    pub map: MapConfig,
    /// The hub's clock. For simulations only: `speedup > 1` runs fix times, ETAs and timeouts
    /// on a compressed simulated time shared with the edges and the simulator.
    pub clock: nodekit::ClockConfig,
    /// Pickup and drop-off zones that move the status (`picked_up`, `en_route`, `arriving`).
    pub geofence: GeofenceConfig,
    /// Thresholds of the stationary and moving-away anomalies.
    pub anomaly: AnomalyConfig,
    /// Breadcrumb storage (every accepted fix) and its retention.
    pub history: HistoryConfig,
    /// Photo proof of delivery uploads.
    pub proof: ProofConfig,
    /// Push notification senders for milestones (`[push.apns]`, `[push.fcm]`); a platform
    /// without a section is not used.
    pub push: notify::NotifyConfig,
    /// Joins a cluster of hubs (`[cluster]`, see `docs/cluster.md`): placement by delivery,
    /// replication to the successor before acknowledging, takeover and draining. Absent: a
    /// single hub that owns every delivery (`role` must be `hub`; `node_id` is the name in the
    /// node certificate).
    pub cluster: Option<cluster::ClusterConfig>,
    /// Addresses published to the cluster and used in redirects (`[cluster_hub]`); only read
    /// when `cluster` is set.
    pub cluster_hub: ClusterHubConfig,
    /// Signed webhooks of status changes, anomalies and proofs (`[webhooks]`, subscriptions in
    /// `[[webhooks.subscriptions]]` or through `POST /api/v1/webhooks`).
    pub webhooks: WebhookConfig,
}

/// Webhook delivery (`docs/operations.md`, *Webhooks*).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// A webhook still failing this many seconds after its event was committed goes to the
    /// dead letters.
    pub dead_letter_after_s: u64,
    /// One attempt may take this long (connect, TLS, answer), milliseconds.
    pub request_timeout_ms: u64,
    /// First retry delay, doubled on each failure, milliseconds.
    pub backoff_base_ms: u64,
    /// Longest retry delay (before jitter), milliseconds; a longer `Retry-After` still wins.
    pub backoff_max_ms: u64,
    /// Requests in flight at once, over all subscriptions.
    pub max_in_flight: usize,
    /// Extra CA certificates (PEM) trusted for receivers, beside the public web roots.
    pub ca: Option<PathBuf>,
    /// Subscriptions from the config file (replaced in the store at every start; ones created
    /// through the API are kept).
    pub subscriptions: Vec<crate::webhooks::Subscription>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            dead_letter_after_s: 86_400,
            request_timeout_ms: 10_000,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            max_in_flight: 16,
            ca: None,
            subscriptions: Vec::new(),
        }
    }
}

impl WebhookConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("webhooks.dead_letter_after_s", self.dead_letter_after_s),
            ("webhooks.request_timeout_ms", self.request_timeout_ms),
            ("webhooks.backoff_base_ms", self.backoff_base_ms),
            ("webhooks.max_in_flight", self.max_in_flight as u64),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.backoff_max_ms < self.backoff_base_ms {
            return Err(ConfigError::Invalid(format!(
                "webhooks.backoff_max_ms ({}) must be at least webhooks.backoff_base_ms ({})",
                self.backoff_max_ms, self.backoff_base_ms
            )));
        }
        for (i, s) in self.subscriptions.iter().enumerate() {
            s.validate().map_err(ConfigError::Invalid)?;
            if self.subscriptions[..i].iter().any(|o| o.id == s.id) {
                return Err(ConfigError::Invalid(format!(
                    "webhooks.subscriptions: the id {:?} is used twice",
                    s.id
                )));
            }
        }
        Ok(())
    }
}

/// Breadcrumb storage: a writer separate from the status event log, fed by a bounded queue
/// (positions are shed and counted when it is full; status events never are).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Breadcrumbs (and anomalies) older than this many days are purged.
    pub retention_days: u32,
    /// Bound of the queue in front of the breadcrumb writer.
    pub queue: usize,
    /// Most breadcrumbs committed in one write transaction.
    pub max_batch: usize,
    /// How long the writer gathers breadcrumbs before a commit, in milliseconds.
    pub flush_interval_ms: u64,
    /// How often the retention purge runs, in seconds.
    pub purge_interval_s: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            retention_days: 90,
            queue: 65_536,
            max_batch: 8_192,
            flush_interval_ms: 100,
            purge_interval_s: 3_600,
        }
    }
}

/// Photo proof of delivery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProofConfig {
    /// Largest accepted image, in bytes.
    pub max_bytes: usize,
    /// A proof taken farther than this from the drop-off (metres) is flagged.
    pub far_from_dropoff_m: f64,
}

impl Default for ProofConfig {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            far_from_dropoff_m: 100.0,
        }
    }
}

/// South-west corner of the generated grid city.
pub const GRID_ORIGIN: roadnet::LatLng = roadnet::LatLng::new(60.164, 24.935);

/// Which road network the hub routes on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MapConfig {
    /// The OpenStreetMap extract of central Helsinki built into `roadnet`.
    #[default]
    Helsinki,
    /// A generated grid city (`roadnet::RoadGraph::grid_city`) starting at [`GRID_ORIGIN`].
    Grid {
        /// Rows of intersections (at least 2).
        rows: usize,
        /// Columns of intersections (at least 2).
        cols: usize,
        /// Distance between neighbouring intersections, metres.
        spacing_m: f64,
    },
}

impl MapConfig {
    /// Builds the road graph, or reads `pbf` when given (a user's own extract).
    pub fn load(
        &self,
        pbf: Option<&std::path::Path>,
    ) -> Result<roadnet::RoadGraph, roadnet::RoadError> {
        match (pbf, self) {
            (Some(path), _) => roadnet::RoadGraph::from_pbf_path(path),
            (None, MapConfig::Helsinki) => roadnet::RoadGraph::default_city(),
            (
                None,
                MapConfig::Grid {
                    rows,
                    cols,
                    spacing_m,
                },
            ) => roadnet::RoadGraph::grid_city(*rows, *cols, *spacing_m, GRID_ORIGIN),
        }
    }
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
            shards: 0,
            webtransport_handshakes: nodekit::HandshakeGateConfig::default(),
            https_handshakes: nodekit::HandshakeGateConfig {
                max_in_flight: 512,
                retry_above_in_flight: 512,
                rate_per_s: 1000.0,
                burst: 1000.0,
            },
            udp_buffer_bytes: 8 << 20,
            store_cache_mib: 64,
            map_pbf: None,
            map: MapConfig::default(),
            clock: nodekit::ClockConfig::default(),
            geofence: GeofenceConfig::default(),
            anomaly: AnomalyConfig::default(),
            history: HistoryConfig::default(),
            proof: ProofConfig::default(),
            push: notify::NotifyConfig::default(),
            cluster: None,
            cluster_hub: ClusterHubConfig::default(),
            webhooks: WebhookConfig::default(),
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
    #[error("map: {0}")]
    Map(String),
    #[error("{0}")]
    Clock(String),
    #[error("{0}")]
    Invalid(String),
}

impl HubConfig {
    /// Checks values that would otherwise fail later or behave absurdly.
    /// Number of shards: `shards`, or one per available core when 0.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(crate::tracking::shards::MAX_SHARDS)
    }

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
            ("store_cache_mib", self.store_cache_mib),
            (
                "history.retention_days",
                u64::from(self.history.retention_days),
            ),
            ("history.queue", self.history.queue as u64),
            ("history.max_batch", self.history.max_batch as u64),
            ("history.purge_interval_s", self.history.purge_interval_s),
            ("proof.max_bytes", self.proof.max_bytes as u64),
            (
                "anomaly.stationary_after_s",
                self.anomaly.stationary_after_s,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        for (field, gate) in [
            ("webtransport_handshakes", &self.webtransport_handshakes),
            ("https_handshakes", &self.https_handshakes),
        ] {
            gate.validate()
                .map_err(|e| ConfigError::Invalid(format!("{field}: {e}")))?;
        }
        if self.shards > crate::tracking::shards::MAX_SHARDS {
            return Err(ConfigError::Invalid(format!(
                "shards is {}; at most {} (0 = one per core)",
                self.shards,
                crate::tracking::shards::MAX_SHARDS
            )));
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
        if let Some(c) = &self.cluster {
            c.validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if c.role != cluster::Role::Hub {
                return Err(ConfigError::Invalid(
                    "cluster.role must be \"hub\" in a hub's config".into(),
                ));
            }
            self.cluster_hub.validate()?;
        }
        let g = &self.geofence;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(g.enter_radius_m) || !positive(g.exit_radius_m - g.enter_radius_m) {
            return Err(ConfigError::Invalid(format!(
                "geofence.exit_radius_m ({}) must be greater than geofence.enter_radius_m ({}), and both positive",
                g.exit_radius_m, g.enter_radius_m
            )));
        }
        if !positive(self.anomaly.stationary_radius_m) || !positive(self.anomaly.moving_away_m) {
            return Err(ConfigError::Invalid(
                "anomaly.stationary_radius_m and anomaly.moving_away_m must be positive".into(),
            ));
        }
        if !positive(self.proof.far_from_dropoff_m) {
            return Err(ConfigError::Invalid(
                "proof.far_from_dropoff_m must be positive".into(),
            ));
        }
        if let MapConfig::Grid {
            rows,
            cols,
            spacing_m,
        } = self.map
        {
            if rows < 2 || cols < 2 || !(spacing_m.is_finite() && spacing_m > 0.0) {
                return Err(ConfigError::Map(format!(
                    "a grid city needs rows and cols >= 2 and spacing_m > 0, got {rows} x {cols} at {spacing_m} m"
                )));
            }
        }
        self.clock.validate().map_err(ConfigError::Clock)?;
        self.webhooks.validate()?;
        self.push
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("push: {e}")))?;
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
    fn webhook_subscriptions_parse_validate_and_their_secrets_are_redacted() {
        let c: HubConfig = toml::from_str(
            "[webhooks]\ndead_letter_after_s = 60\n\
             [[webhooks.subscriptions]]\nid = \"orders\"\nurl = \"https://orders.example/hook\"\n\
             secret = \"0123456789abcdef-very-secret\"\nkinds = [\"status\", \"proof\"]\n",
        )
        .expect("parse");
        c.validate().expect("valid");
        assert_eq!(c.webhooks.subscriptions[0].kinds.len(), 2);
        let printed = nodekit::redacted_toml(&c).expect("print");
        assert!(!printed.contains("very-secret"), "{printed}");
        assert!(printed.contains("orders.example"), "{printed}");
        let twice = HubConfig {
            webhooks: WebhookConfig {
                subscriptions: vec![
                    c.webhooks.subscriptions[0].clone(),
                    c.webhooks.subscriptions[0].clone(),
                ],
                ..WebhookConfig::default()
            },
            ..HubConfig::default()
        };
        assert!(twice
            .validate()
            .expect_err("duplicate")
            .to_string()
            .contains("used twice"));
    }

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
    fn rejects_a_geofence_whose_exit_radius_is_not_beyond_its_enter_radius() {
        let c = HubConfig {
            geofence: GeofenceConfig {
                enter_radius_m: 80.0,
                exit_radius_m: 50.0,
                ..GeofenceConfig::default()
            },
            ..HubConfig::default()
        };
        assert!(c
            .validate()
            .expect_err("refused")
            .to_string()
            .contains("exit_radius_m"));
    }

    #[test]
    fn parses_a_grid_city_and_a_simulation_clock() {
        let c: HubConfig = toml::from_str(
            "map = { grid = { rows = 40, cols = 30, spacing_m = 150.0 } }\n\
             clock = { speedup = 20.0, epoch_ms = 1764000000000 }\n",
        )
        .expect("parse");
        assert_eq!(
            c.map,
            MapConfig::Grid {
                rows: 40,
                cols: 30,
                spacing_m: 150.0
            }
        );
        assert_eq!(c.clock.speedup, 20.0);
        c.validate().expect("valid");
        let g = c.map.load(None).expect("grid city");
        assert_eq!(g.node_count(), 1200);
        let h: HubConfig = toml::from_str("map = \"helsinki\"").expect("parse");
        assert_eq!(h.map, MapConfig::Helsinki);
        let bad = HubConfig {
            map: MapConfig::Grid {
                rows: 1,
                cols: 5,
                spacing_m: 100.0,
            },
            ..HubConfig::default()
        };
        assert!(matches!(bad.validate(), Err(ConfigError::Map(_))));
    }

    /// Every leaf of `value` with its dotted path (arrays are leaves).
    fn leaves(
        value: &toml::Value,
        path: &mut Vec<String>,
        out: &mut Vec<(Vec<String>, toml::Value)>,
    ) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    path.push(k.clone());
                    leaves(v, path, out);
                    path.pop();
                }
            }
            leaf => out.push((path.clone(), leaf.clone())),
        }
    }

    /// Another value of the same type, or `None` for strings and arrays.
    fn changed(v: &toml::Value) -> Option<toml::Value> {
        match v {
            toml::Value::Integer(i) => Some(toml::Value::Integer(i + 1)),
            toml::Value::Float(f) => Some(toml::Value::Float(f + 0.5)),
            toml::Value::Boolean(b) => Some(toml::Value::Boolean(!b)),
            _ => None,
        }
    }

    #[test]
    fn every_number_and_flag_can_be_overridden_from_env_and_set() {
        let mut full = HubConfig {
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9080))),
            webtransport_tls: Some(WebTransportTls {
                cert: "wt.pem".into(),
                key: "wt.key".into(),
            }),
            cluster: Some(cluster::ClusterConfig::default()),
            push: notify::NotifyConfig {
                apns: Some(notify::ApnsConfig::default()),
                fcm: Some(notify::FcmConfig::default()),
            },
            ..HubConfig::default()
        };
        full.clock.epoch_ms = Some(1_764_000_000_000);
        let tree = toml::Value::try_from(&full).expect("serialize");
        let mut all = Vec::new();
        leaves(&tree, &mut Vec::new(), &mut all);
        let base = toml::to_string(&full).expect("print");
        let file = std::env::temp_dir().join(format!("hub-layers-{}.toml", std::process::id()));
        std::fs::write(&file, base).expect("write");
        let mut checked = 0;
        for (path, value) in &all {
            let Some(new) = changed(value) else { continue };
            let var = format!("TRACKLINE_HUB_{}", path.join("__").to_uppercase());
            let from_env: HubConfig = CONFIG_LAYERS
                .load(
                    Some(&file),
                    [(var.clone().into(), new.to_string().into())],
                    &[],
                )
                .unwrap_or_else(|e| panic!("{var}: {e}"));
            let arg = format!("{}={new}", path.join("."));
            let from_set: HubConfig = CONFIG_LAYERS
                .load(Some(&file), std::iter::empty(), std::slice::from_ref(&arg))
                .unwrap_or_else(|e| panic!("{arg}: {e}"));
            for (layer, got) in [(&var, from_env), (&arg, from_set)] {
                let tree = toml::Value::try_from(&got).expect("serialize");
                let at = path.iter().try_fold(&tree, |v, k| v.get(k)).expect("path");
                assert_eq!(at, &new, "{layer} did not reach {}", path.join("."));
            }
            checked += 1;
        }
        let _ = std::fs::remove_file(&file);
        assert!(checked >= 45, "only {checked} fields checked");
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(toml::from_str::<HubConfig>("hub_idd = \"x\"").is_err());
    }
}

/// Hub settings that only matter in a cluster (`[cluster_hub]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterHubConfig {
    /// `host:port` published as `hub.addr_link` (edges and peer hubs connect to it); default:
    /// the bound link address (set it when binding a wildcard address).
    pub advertise_link: Option<String>,
    /// `host:port` published as `hub.addr_wt` (WebTransport redirects); default: bound address.
    pub advertise_webtransport: Option<String>,
    /// `host:port` published as `hub.addr_https` (API and WebSocket redirects); default: bound
    /// address.
    pub advertise_https: Option<String>,
    /// How long the owner waits for the successor's acknowledgement of a batch, in
    /// milliseconds; past it the batch is acknowledged unreplicated (and counted).
    pub replica_ack_timeout_ms: u64,
    /// DNS name checked in a peer hub's certificate on the replica link; default: the host
    /// part of its `hub.addr_link`.
    pub replica_server_name: Option<String>,
    /// How often the hub publishes its load and re-checks ownership, in milliseconds.
    pub rebalance_interval_ms: u64,
    /// Longest a drain (`POST /drain`, SIGTERM) waits for every delivery to be handed off
    /// before the hub stops anyway, in seconds.
    pub drain_timeout_s: u64,
    /// After start, the hub waits this long (milliseconds) for the cluster view to fill
    /// before it claims deliveries from its log; until then it serves only what it creates
    /// or is handed. A few foca probe periods (`lan`: 1 s each).
    pub join_grace_ms: u64,
    /// Copies of a status change that must be durable before it is acknowledged: 2 (default;
    /// the owner's and its successor's, so an acknowledged event survives the loss of any one
    /// hub; with no successor reachable changes are refused with 503 until membership picks
    /// another) or 1 (acknowledge on the owner's copy alone when the successor is
    /// unreachable, counted in `hub_events_unreplicated_total`: available, not durable).
    pub min_copies: u8,
}

impl Default for ClusterHubConfig {
    fn default() -> Self {
        Self {
            advertise_link: None,
            advertise_webtransport: None,
            advertise_https: None,
            replica_ack_timeout_ms: 2_000,
            replica_server_name: None,
            rebalance_interval_ms: 1_000,
            drain_timeout_s: 30,
            join_grace_ms: 3_000,
            min_copies: 2,
        }
    }
}

impl ClusterHubConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            (
                "cluster_hub.replica_ack_timeout_ms",
                self.replica_ack_timeout_ms,
            ),
            (
                "cluster_hub.rebalance_interval_ms",
                self.rebalance_interval_ms,
            ),
            ("cluster_hub.drain_timeout_s", self.drain_timeout_s),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if !(1..=2).contains(&self.min_copies) {
            return Err(ConfigError::Invalid(format!(
                "cluster_hub.min_copies is {}; it must be 1 or 2",
                self.min_copies
            )));
        }
        Ok(())
    }
}
