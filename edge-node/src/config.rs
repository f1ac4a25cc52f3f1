//! The edge node's one typed config: listeners, TLS files, hubs (static or from the cluster),
//! token keys, filter, batching and draining.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

pub use crate::filter::FilterConfig;

/// Where the edge's config comes from, later layers winning: the TOML file (`--config` or
/// `EDGE_CONFIG`), then `TRACKLINE_EDGE_<FIELD>` variables with `__` between nesting levels
/// (`TRACKLINE_EDGE_BATCH__FLUSH_INTERVAL_MS=5`), then `--set key=value`
/// (`--set batch.flush_interval_ms=5`).
pub const CONFIG_LAYERS: nodekit::ConfigLayers = nodekit::ConfigLayers::new("TRACKLINE_EDGE_", &[]);

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
    /// Hubs this edge forwards accepted fixes to without a cluster; the first one is used.
    /// Ignored (may be empty) when `cluster` is set.
    pub hubs: Vec<HubConfig>,
    /// Join the region's cluster (foca membership + chitchat control plane over mTLS QUIC,
    /// with the node certificate from `tls`; `role` must be `edge`, `node_id` = `edge_id`).
    /// Hub link addresses then come from the hubs' published `hub.addr_link`, and each fix
    /// goes to the owning hub of each delivery its driver is on duty for. Absent: `hubs`.
    pub cluster: Option<cluster::ClusterConfig>,
    /// How to reach hubs found through the cluster: certificate name, timeouts, backoff.
    pub cluster_links: ClusterLinkConfig,
    /// `host:port` drivers can reach this edge's QUIC endpoint at, published in the cluster
    /// as `edge.addr_driver` so draining peers can redirect drivers here. Defaults to the
    /// bound QUIC address unless that is a wildcard (then nothing is published).
    pub advertise_quic_addr: Option<String>,
    /// Draining (SIGTERM or `POST /drain` on the admin listener).
    pub drain: DrainConfig,
    /// Public keys driver tokens are verified against (tokens are checked locally, no round trip).
    pub token_keys: Vec<nodekit::TokenKeyConfig>,
    /// Fix plausibility filter limits.
    pub filter: FilterConfig,
    /// Batching and queue bounds between ingest and the hub link.
    pub batch: BatchConfig,
    /// How long a new driver session may take to send its `Hello`, milliseconds.
    pub hello_timeout_ms: u64,
    /// Admission of QUIC handshakes (drivers and HTTP/3) on `quic_listen`, decided per
    /// incoming connection before any crypto: at most `max_in_flight` at once, at most
    /// `rate_per_s` new ones a second (beyond a `burst`), and past `retry_above_in_flight`
    /// a Retry first for clients whose address is not validated; the rest are refused
    /// (CONNECTION_REFUSED) and counted in `handshakes_refused_total{listener="quic"}`.
    pub quic_handshakes: nodekit::HandshakeGateConfig,
    /// Admission of TLS handshakes on `https_listen`: the same limits (no Retry on TCP); a
    /// refused connection is closed before TLS starts.
    pub https_handshakes: nodekit::HandshakeGateConfig,
    /// Kernel receive and send buffer of the UDP socket on `quic_listen`, bytes (0: the
    /// system default, ~208 KiB on Linux, which a burst of fixes or handshakes overflows at a
    /// few thousand sessions). Set with `SO_RCVBUFFORCE` when the process has CAP_NET_ADMIN,
    /// else capped by `net.core.rmem_max`/`wmem_max` (a warning says so at start).
    pub udp_buffer_bytes: usize,
    /// Verified tokens kept in the auth cache.
    pub auth_cache_capacity: usize,
    /// The clock the filter judges fix timestamps by. For simulations only: `speedup > 1`
    /// with the same `epoch_ms` as the hub and the simulator (batching stays in real time).
    pub clock: nodekit::ClockConfig,
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
            cluster: None,
            cluster_links: ClusterLinkConfig::default(),
            advertise_quic_addr: None,
            drain: DrainConfig::default(),
            token_keys: Vec::new(),
            filter: FilterConfig::default(),
            batch: BatchConfig::default(),
            hello_timeout_ms: 5_000,
            quic_handshakes: nodekit::HandshakeGateConfig::default(),
            https_handshakes: nodekit::HandshakeGateConfig {
                max_in_flight: 512,
                retry_above_in_flight: 512,
                rate_per_s: 1000.0,
                burst: 1000.0,
            },
            udp_buffer_bytes: 8 << 20,
            auth_cache_capacity: 100_000,
            clock: nodekit::ClockConfig::default(),
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

/// Links to hubs discovered through the cluster (their address is the published
/// `hub.addr_link`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterLinkConfig {
    /// Name every hub's certificate carries; absent: the host part of its `hub.addr_link`
    /// (an IP address or DNS name the hub's node certificate must list).
    pub server_name: Option<String>,
    /// Give up one connection attempt after this long, milliseconds.
    pub connect_timeout_ms: u64,
    /// First reconnect delay after a failure, milliseconds (doubles up to `backoff_max_ms`).
    pub backoff_min_ms: u64,
    /// Longest reconnect delay, milliseconds.
    pub backoff_max_ms: u64,
}

impl Default for ClusterLinkConfig {
    fn default() -> Self {
        let h = HubConfig::default();
        Self {
            server_name: None,
            connect_timeout_ms: h.connect_timeout_ms,
            backoff_min_ms: h.backoff_min_ms,
            backoff_max_ms: h.backoff_max_ms,
        }
    }
}

/// How the edge drains before it stops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    /// Longest wait for driver sessions to leave after they were told to, seconds.
    pub timeout_s: u64,
    /// Edge QUIC address (`host:port`) to send drivers to when the cluster names no healthy
    /// peer edge (and always without a cluster).
    pub redirect_to: Option<String>,
    /// `Retry-After` of the HTTP fallback's 503 answers while draining, seconds.
    pub retry_after_s: u64,
    /// Longest wait for the hub links to deliver what is queued, after the sessions left,
    /// milliseconds.
    pub flush_timeout_ms: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            timeout_s: 30,
            redirect_to: None,
            retry_after_s: 5,
            flush_timeout_ms: 5_000,
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
    /// The most drivers whose newest fix is kept while a hub is unreachable. (It also sized
    /// an ingest queue before ingest ran in place on the sessions' tasks; the name stays.)
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
        if let Some(c) = &self.cluster {
            c.validate().map_err(|e| bad("cluster", e.to_string()))?;
            if c.role != cluster::Role::Edge {
                return Err(bad("cluster.role", "must be \"edge\" for an edge node"));
            }
            if c.node_id != self.edge_id {
                return Err(bad(
                    "cluster.node_id",
                    format!(
                        "`{}` must equal edge_id `{}` (the node certificate names one node)",
                        c.node_id, self.edge_id
                    ),
                ));
            }
            let l = &self.cluster_links;
            if l.backoff_min_ms == 0 || l.backoff_min_ms > l.backoff_max_ms {
                return Err(bad(
                    "cluster_links.backoff_min_ms",
                    "must be > 0 and <= backoff_max_ms",
                ));
            }
            if l.connect_timeout_ms == 0 {
                return Err(bad("cluster_links.connect_timeout_ms", "must be > 0"));
            }
        } else {
            let Some(hub) = self.primary_hub() else {
                return Err(bad(
                    "hubs",
                    "at least one hub is required without a cluster",
                ));
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
        }
        if self.drain.timeout_s == 0 {
            return Err(bad("drain.timeout_s", "must be > 0"));
        }
        self.clock.validate().map_err(|e| bad("clock.speedup", e))?;
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
        self.quic_handshakes
            .validate()
            .map_err(|e| bad("quic_handshakes", e))?;
        self.https_handshakes
            .validate()
            .map_err(|e| bad("https_handshakes", e))?;
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
    fn a_cluster_section_must_name_this_edge_as_an_edge() {
        let mut c = with_key();
        c.hubs.clear();
        c.cluster = Some(cluster::ClusterConfig {
            node_id: c.edge_id.clone(),
            role: cluster::Role::Edge,
            ..cluster::ClusterConfig::default()
        });
        c.validate()
            .expect("an edge in a cluster needs no static hubs");
        c.cluster.as_mut().expect("set").role = cluster::Role::Hub;
        let err = c.validate().expect_err("hub role").to_string();
        assert!(err.contains("cluster.role"), "{err}");
        c.cluster = None;
        let err = c.validate().expect_err("no hubs").to_string();
        assert!(err.contains("hubs"), "{err}");
        let parsed: EdgeConfig = toml::from_str(
            "edge_id = \"e1\"\n[cluster]\nnode_id = \"e1\"\nrole = \"edge\"\n[drain]\nredirect_to = \"edge-2.example:4433\"",
        )
        .expect("parse");
        assert_eq!(parsed.cluster.expect("cluster").role, cluster::Role::Edge);
        assert_eq!(parsed.drain.timeout_s, 30);
    }

    #[test]
    fn documented_cluster_edge_example_parses_and_validates() {
        // The example of docs/cluster.md, "Placement of fixes".
        let text = r#"
edge_id = "edge-hel-1"
advertise_quic_addr = "edge-hel-1.example:4433"

[cluster]
node_id = "edge-hel-1"
role = "edge"
region = "eu-north"
seeds = ["10.0.0.11:7946", "10.0.0.12:7946"]

[cluster.gossip]
bind_addr = "0.0.0.0:7946"
advertise_addr = "10.0.1.21:7946"

[cluster.control]
cluster_id = "trackline-eu-north"

[drain]
timeout_s = 30
redirect_to = "edge-hel-2.example:4433"
"#;
        let mut c: EdgeConfig = toml::from_str(text).expect("parse");
        c.token_keys = with_key().token_keys;
        c.validate().expect("valid");
        // `--check-config` prints it back.
        let printed = toml::to_string_pretty(&c).expect("print");
        assert_eq!(toml::from_str::<EdgeConfig>(&printed).expect("reparse"), c);
        assert_eq!(c.cluster.expect("cluster").seeds.len(), 2);
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
        let mut full = EdgeConfig {
            cluster: Some(cluster::ClusterConfig::default()),
            ..with_key()
        };
        full.clock.epoch_ms = Some(1_764_000_000_000);
        let tree = toml::Value::try_from(&full).expect("serialize");
        let mut all = Vec::new();
        leaves(&tree, &mut Vec::new(), &mut all);
        let base = toml::to_string(&full).expect("print");
        let file = std::env::temp_dir().join(format!("edge-layers-{}.toml", std::process::id()));
        std::fs::write(&file, base).expect("write");
        let mut checked = 0;
        for (path, value) in &all {
            let Some(new) = changed(value) else { continue };
            let var = format!("TRACKLINE_EDGE_{}", path.join("__").to_uppercase());
            let from_env: EdgeConfig = CONFIG_LAYERS
                .load(
                    Some(&file),
                    [(var.clone().into(), new.to_string().into())],
                    &[],
                )
                .unwrap_or_else(|e| panic!("{var}: {e}"));
            let arg = format!("{}={new}", path.join("."));
            let from_set: EdgeConfig = CONFIG_LAYERS
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
        assert!(checked >= 25, "only {checked} fields checked");
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
