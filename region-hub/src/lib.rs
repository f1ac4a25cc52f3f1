//! Region hub: delivery state, the durable status event log (redb), a simple ETA, and the push
//! of every accepted fix to consumers over WebTransport, WebSocket and REST.
//!
//! [`spawn`] recovers the event log, binds every listener (use port 0 in tests) and returns a
//! [`HubHandle`]; the steps are in `start.rs`. The decisions live in sans-IO structs
//! ([`tracking`], [`replication`], [`webhooks`]); [`durable`] owns redb.

pub mod config;
pub mod durable;
mod hub;
pub mod ingest;
pub mod metrics;
pub mod replication;
pub mod serve;
#[cfg(test)]
mod sim;
mod start;
pub mod tracking;
pub mod webhooks;

use durable::store;
use replication as replica;

pub use config::{CommitConfig, ConfigError, HubConfig, MapConfig, WebTransportTls};
pub use hub::{ApiFailure, AuthRefusal};
pub use metrics::HubMetrics;

use anyhow::Context;
use protocol::token::{Subject, TokenSigner};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the hub checks for silent drivers and idle deliveries.
const TICK: Duration = Duration::from_secs(1);

/// Batches of fixes each shard worker's queue holds before the edge links wait.
const FIX_QUEUE_BATCHES: usize = 64;

/// After shutdown, a task still running this long is named in the log.
const SLOW_STOP: Duration = Duration::from_secs(3);

/// A running hub.
#[derive(Debug)]
pub struct HubHandle {
    hub: Arc<hub::Hub>,
    link_addr: SocketAddr,
    webtransport_addr: SocketAddr,
    https_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    shutdown: CancellationToken,
    writer_shutdown: CancellationToken,
    /// Background tasks, named for the shutdown log.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    writer: JoinHandle<()>,
    ready: Arc<AtomicBool>,
    drain_limit: Duration,
}

impl HubHandle {
    /// UDP address of the edge link (QUIC, mTLS).
    pub fn link_addr(&self) -> SocketAddr {
        self.link_addr
    }
    /// UDP address of the WebTransport endpoint.
    pub fn webtransport_addr(&self) -> SocketAddr {
        self.webtransport_addr
    }
    /// TCP address of the HTTPS API.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }
    /// TCP address of the plain-HTTP API, when configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }
    /// TCP address of the admin server.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }
    /// SHA-256 of the WebTransport certificate (for `serverCertificateHashes`).
    pub fn webtransport_cert_hash(&self) -> [u8; 32] {
        self.hub.webtransport().1
    }
    /// Signs a token with the hub's key (tests, demo, `mint-token`).
    pub fn mint_token(&self, sub: Subject, ttl_s: u64) -> String {
        self.hub.mint(sub, ttl_s)
    }
    /// The hub's metrics.
    pub fn metrics(&self) -> &HubMetrics {
        self.hub.metrics()
    }
    /// The hub's cluster node (membership, control plane, view), when `cluster` is set.
    pub fn cluster(&self) -> Option<&cluster::ClusterNode> {
        self.hub.cluster().map(|c| &c.node)
    }
    /// Replication, takeover and hand-off counters, when `cluster` is set.
    pub fn cluster_metrics(&self) -> Option<&replica::ClusterMetrics> {
        self.hub.cluster().map(|c| &c.metrics)
    }
    /// Drains the hub: `/readyz` turns 503, edges get `HubToEdge::Redirect` to a healthy peer,
    /// and in a cluster the hub marks itself draining, so every delivery moves to its next
    /// owner: each one's whole log is handed over, its consumers get a `redirect` frame, new
    /// requests are redirected. Returns once all are handed off (true) or after `limit`.
    /// Call [`HubHandle::shutdown`] afterwards.
    pub async fn drain(&self, limit: Duration) -> bool {
        drain(&self.hub, &self.ready, limit).await
    }
    /// Sends `entries` over the replica link to peer hub `hub_id` as live replication would,
    /// and returns the deliveries it fenced. For tests that play a hub with a stale view.
    pub async fn replicate_to(
        &self,
        hub_id: &str,
        entries: &[durable::copies::ReplicaEntry],
    ) -> Result<Vec<protocol::DeliveryId>, replica::ReplicaError> {
        let cluster = self
            .hub
            .cluster()
            .ok_or_else(|| replica::ReplicaError::NoAddress("no cluster configured".into()))?;
        let to = cluster
            .node
            .view
            .live_hubs()
            .into_iter()
            .find(|h| h.id == hub_id)
            .ok_or_else(|| replica::ReplicaError::NoAddress(hub_id.to_owned()))?;
        cluster.append(&to, entries).await
    }
    /// The hub's redb log (tests read replicated entries from it).
    pub fn store(&self) -> &store::Store {
        self.hub.store()
    }
    /// Resolves once the hub is stopping (after [`HubHandle::shutdown`] or an admin
    /// `POST /drain` has finished draining).
    pub async fn stopping(&self) {
        self.shutdown.cancelled().await;
    }
    /// How long [`HubHandle::drain`] may take, from `cluster_hub.drain_timeout_s`.
    pub fn drain_limit(&self) -> Duration {
        self.drain_limit
    }
    /// Stops accepting work; [`HubHandle::join`] waits for everything to end.
    pub fn shutdown(&self) {
        self.ready.store(false, Ordering::Relaxed);
        self.shutdown.cancel();
    }
    /// Waits until every task has ended (after [`HubHandle::shutdown`] or a fatal error). The
    /// event log writer stops last, after committing whatever was queued.
    pub async fn join(self) {
        for (name, mut t) in self.tasks {
            // A task that does not end promptly is named (a stuck shutdown is diagnosable),
            // then waited for.
            let r = match tokio::time::timeout(SLOW_STOP, &mut t).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                        task = name,
                        "task still running {SLOW_STOP:?} after shutdown"
                    );
                    t.await
                }
            };
            if let Err(e) = r {
                tracing::error!(task = name, error = %e, "hub task panicked");
            }
        }
        self.writer_shutdown.cancel();
        if let Err(e) = self.writer.await {
            tracing::error!(error = %e, "event log writer panicked");
        }
        self.hub.store().close().await;
    }
}

async fn drain(hub: &hub::Hub, ready: &AtomicBool, limit: Duration) -> bool {
    ready.store(false, Ordering::Relaxed);
    hub.draining().cancel();
    tracing::info!("draining");
    match hub.cluster() {
        Some(c) => c.drain(limit).await,
        None => true,
    }
}

/// Loads the PKCS#8 token signing key, creating it (mode 0600) when the file does not exist.
pub fn load_or_create_signing_key(path: &Path, kid: u32) -> anyhow::Result<TokenSigner> {
    let der = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let der = TokenSigner::generate_pkcs8()?;
            write_private(path, &der)?;
            tracing::info!(path = %path.display(), "created a token signing key");
            der
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading token signing key {}", path.display()))
        }
    };
    TokenSigner::from_pkcs8(kid, &der)
        .with_context(|| format!("loading token signing key {}", path.display()))
}

/// Writes `bytes` to `path` readable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Starts a hub: loads keys and certificates, recovers the event log, binds every listener.
pub async fn spawn(config: HubConfig) -> anyhow::Result<HubHandle> {
    spawn_with_notifier(config, None).await
}

/// [`spawn`] with push notifications sent through `notifier` instead of the senders built
/// from `config.push` (tests, or an embedding that brings its own senders).
///
/// The composition root, in four steps (see [`start`]): recover what the hub knew, bind every
/// listener (so a taken port fails before any task runs), assemble the hub from its parts, and
/// run its tasks.
pub async fn spawn_with_notifier(
    config: HubConfig,
    notifier: Option<notify::Notifier>,
) -> anyhow::Result<HubHandle> {
    config.validate()?;
    let mut registry = prometheus_client::registry::Registry::default();
    let recovered = start::recover(&config, notifier, &mut registry)?;
    let listeners = start::bind(&config, &recovered.tls).await?;
    let assembled = start::assemble(&config, recovered, &listeners, &mut registry).await?;
    Ok(start::run(&config, assembled, listeners, registry))
}
