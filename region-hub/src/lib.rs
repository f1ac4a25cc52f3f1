//! Region hub: delivery state, the durable status event log (redb), a simple ETA, and the push
//! of every accepted fix to consumers over WebTransport, WebSocket and REST.
//!
//! [`spawn`] binds every listener (use port 0 in tests), recovers the event log and returns a
//! [`HubHandle`]. The decision logic lives in the sans-IO [`core`] module; [`store`] owns redb.

pub mod config;
pub mod durable;
mod hub;
pub mod ingest;
pub mod metrics;
pub mod replication;
pub mod serve;
#[cfg(test)]
mod sim;
pub mod tracking;
pub mod webhooks;

use durable::{history, plans, store};
use ingest::link;
use replication as replica;
use serve::{http, wt};
use tracking::deliveries;

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
pub async fn spawn_with_notifier(
    config: HubConfig,
    notifier: Option<notify::Notifier>,
) -> anyhow::Result<HubHandle> {
    config.validate()?;
    let signer = load_or_create_signing_key(&config.token_signing_key, config.token_kid)?;
    let mut verifier = nodekit::to_verifier(&config.token_keys)?;
    verifier.add_key(config.token_kid, signer.public_key());
    let tls = config.tls.load().context("loading the hub's TLS files")?;

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(HubMetrics::new(&mut registry));
    let webhook_metrics = Arc::new(metrics::WebhookMetrics::new(&mut registry));
    let handshakes = nodekit::HandshakeMetrics::register(&mut registry);
    let wt_gate = handshakes.gate("webtransport", config.webtransport_handshakes.clone());
    let https_gate = handshakes.gate("https", config.https_handshakes.clone());

    let db_path = config.db_path();
    let store = store::Store::open_with_cache(
        &db_path,
        usize::try_from(config.store_cache_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
    )?;
    store.ensure_history_tables()?;
    plans::ensure_tables(&store)?;
    store.sync_configured_webhooks(&config.webhooks.subscriptions)?;
    let webhook_client = serve::webhook_sender::http_client(
        config.webhooks.ca.as_deref(),
        Duration::from_millis(config.webhooks.request_timeout_ms),
    )?;
    let clock = config.clock.clock();
    let now = clock.now_ms();
    // The one road graph of this hub: routes, ETAs and the browsers' map all use it.
    let started = std::time::Instant::now();
    let road =
        Arc::new(config.map.load(config.map_pbf.as_deref()).with_context(
            || match &config.map_pbf {
                Some(p) => format!("loading the road network from {}", p.display()),
                None => format!("building the road network {:?}", config.map),
            },
        )?);
    tracing::info!(
        nodes = road.node_count(),
        edges = road.edge_count(),
        ms = started.elapsed().as_millis() as u64,
        "road network loaded"
    );
    let core_config = deliveries::CoreConfig {
        state_ttl_ms: config.state_ttl_s.saturating_mul(1000),
        location_unavailable_after_ms: config.location_unavailable_after_s.saturating_mul(1000),
        geofence: config.geofence.clone(),
        anomaly: config.anomaly.clone(),
        ..deliveries::CoreConfig::default()
    };
    let mut speeds = roadnet::SpeedModel::new(core_config.eta.speed_model.clone());
    let speed_rows = plans::load_speeds(&store)?;
    if let Err(e) = speeds.import_historical(&speed_rows) {
        tracing::warn!(error = %e, "ignoring the stored speed table");
    }
    let shards = tracking::shards::Shards::new(
        config.shard_count(),
        || {
            let mut core = deliveries::Deliveries::new(core_config.clone());
            let m = core.eta_model_mut();
            m.set_graph(road.clone());
            m.set_timer(plans::monotonic_s);
            core
        },
        config.consumer_queue,
        speeds,
    );
    let notifier = match notifier {
        Some(n) => n,
        None => notify::Notifier::from_config(
            &config.push,
            Arc::new(notify::SystemClock),
            &mut registry,
        )
        .context("setting up push notifications")?,
    };
    let mut devices = notify::DeviceRegistry::new();
    for (id, device) in store.devices()? {
        if let Err(e) = devices.register(id.0, device) {
            tracing::warn!(delivery_id = %id, error = %e, "stored push device not registered");
        }
    }
    // In a cluster the log also holds other hubs' deliveries (replicas, older ownership):
    // the rebalancer loads the ones this hub owns once the view has settled.
    let recovered = if config.cluster.is_some() {
        Vec::new()
    } else {
        store.load_all()?
    };
    let n = recovered.len();
    for d in recovered {
        shards.restore(now, d);
    }
    let saved = plans::load_plans(&store)?;
    let n_plans = saved.len();
    for (id, plan) in saved {
        shards.restore_plan(id, plan);
    }
    shards.tick(now); // drops what expired while the hub was down
    tracing::info!(path = %db_path.display(), recovered = n, live = shards.len(), shards = shards.count(), "event log recovered");
    tracing::info!(
        speed_rows = speed_rows.len(),
        plans = n_plans,
        "ETA state recovered"
    );

    let state = hub::HubState::new(
        shards,
        metrics.clone(),
        hub::Push {
            notifier,
            devices: Arc::new(parking_lot::Mutex::new(devices)),
            store: store.clone(),
        },
    );
    let shutdown = CancellationToken::new();
    let writer_shutdown = CancellationToken::new();
    // Cluster mode: every committed batch goes to the replica before callers hear of it.
    let replica_slot = Arc::new(replica::ReplicaSlot::default());
    let (log, writer) = store::spawn_event_log_replicated(
        store.clone(),
        store::WriterConfig {
            max_batch: config.commit.max_batch_events,
            max_delay: Duration::from_millis(config.commit.max_delay_ms),
            queue: config.commit.queue,
        },
        state.sink(),
        config
            .cluster
            .is_some()
            .then(|| replica_slot.clone() as Arc<dyn store::Replicate>),
        metrics.clone(),
        writer_shutdown.clone(),
    );

    // Cluster mode: committed breadcrumbs are copied to each delivery's successor.
    let (crumb_copies, crumb_replicator) = config
        .cluster
        .is_some()
        .then(|| {
            replica::spawn_breadcrumb_replicator(
                replica_slot.clone(),
                metrics.clone(),
                64,
                shutdown.clone(),
            )
        })
        .unzip();
    let (crumbs, crumb_writer) = history::spawn_breadcrumb_writer(
        store.clone(),
        history::BreadcrumbWriterConfig {
            queue: config.history.queue,
            max_batch: config.history.max_batch,
            flush_interval: Duration::from_millis(config.history.flush_interval_ms),
        },
        metrics.clone(),
        crumb_copies,
        shutdown.clone(),
    );
    let purge = history::spawn_purge(
        store.clone(),
        config.history.retention_days,
        Duration::from_secs(config.history.purge_interval_s),
        metrics.clone(),
        shutdown.clone(),
    );

    let link_endpoint = link::bind(
        link::server_config(&tls)?,
        config.link_listen,
        config.udp_buffer_bytes,
    )
    .with_context(|| format!("binding the edge link on {}", config.link_listen))?;
    let identity = match &config.webtransport_tls {
        Some(t) => wtransport::Identity::load_pemfiles(&t.cert, &t.key)
            .await
            .with_context(|| {
                format!("loading the WebTransport certificate {}", t.cert.display())
            })?,
        None => {
            let sans = [
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            certs::browser_webtransport_identity(&sans)?
        }
    };
    let cert_hash = certs::certificate_sha256(&identity);
    let wt_endpoint = wt::bind(
        config.webtransport_listen,
        identity,
        config.udp_buffer_bytes,
    )
    .with_context(|| format!("binding WebTransport on {}", config.webtransport_listen))?;
    let https_listener = tokio::net::TcpListener::bind(config.https_listen)
        .await
        .with_context(|| format!("binding HTTPS on {}", config.https_listen))?;
    let http_listener = match config.http_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding HTTP on {a}"))?,
        ),
        None => None,
    };
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin server on {}", config.admin_listen))?;
    let https_tls = certs::server_tls_config(
        tls.chain.clone(),
        tls.key.clone_key(),
        &[b"h2", b"http/1.1"],
        certs::TlsFor::Tcp,
    )?;

    let link_addr = link_endpoint.local_addr()?;
    let webtransport_addr = wt_endpoint.local_addr()?;
    let https_addr = https_listener.local_addr()?;
    let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let admin_addr = admin_listener.local_addr()?;

    let cluster = match config.cluster.clone() {
        Some(c) => {
            let published = replica::Published::new(
                &config.cluster_hub,
                link_addr,
                webtransport_addr,
                https_addr,
            );
            let joined = Arc::new(
                replica::join(
                    c,
                    &config.cluster_hub,
                    &tls,
                    &published,
                    &mut registry,
                    shutdown.clone(),
                )
                .await?,
            );
            let _ = replica_slot.0.set(joined.clone());
            Some(joined)
        }
        None => None,
    };
    let eta_saver = plans::spawn_eta_saver(
        {
            let state = state.clone();
            move |speeds| state.take_eta_work(speeds)
        },
        metrics.clone(),
        store.clone(),
        shutdown.clone(),
    );
    let hub = Arc::new(hub::Hub::new(
        hub::HubParts {
            clock,
            store,
            proof: config.proof.clone(),
            proofs_dir: config.data_dir.join("proofs"),
            verifier,
            signer,
            hub_id: config.hub_id.clone(),
            tracking_token_ttl_s: config.tracking_token_ttl_s,
        },
        state,
        hub::HubLinks {
            log,
            crumbs,
            webtransport_port: webtransport_addr.port(),
            webtransport_cert_sha256: cert_hash,
            cluster: cluster.clone(),
        },
    ));
    let (fix_queues, shard_workers) =
        ingest::workers::spawn_workers(hub.clone(), FIX_QUEUE_BATCHES, shutdown.clone());

    let mut tasks = vec![
        ("breadcrumb writer", crumb_writer),
        ("history purge", purge),
        ("eta saver", eta_saver),
    ];
    if let Some(task) = crumb_replicator {
        tasks.push(("breadcrumb replicator", task));
    }
    {
        // Only the hub that owns a delivery sends its webhooks (a single hub owns all).
        let owner = hub.clone();
        let owns: serve::webhook_sender::Owns =
            Arc::new(move |id: protocol::DeliveryId| owner.cluster().is_none_or(|c| c.is_mine(id)));
        tasks.push((
            "webhook sender",
            serve::webhook_sender::spawn_webhook_sender(
                hub.store().clone(),
                serve::webhook_sender::SenderConfig::from_config(&config.webhooks),
                webhook_client,
                webhook_metrics,
                owns,
                shutdown.clone(),
            ),
        ));
    }
    tasks.extend(shard_workers.into_iter().map(|t| ("shard worker", t)));
    tasks.push((
        "edge link",
        tokio::spawn(link::run(
            link_endpoint,
            hub.clone(),
            fix_queues,
            shutdown.clone(),
        )),
    ));
    tasks.push((
        "webtransport",
        tokio::spawn(wt::run(wt_endpoint, hub.clone(), wt_gate, shutdown.clone())),
    ));
    // The browsers' map is drawn from the graph the hub routes on.
    let router = http::router(hub.clone(), road.clone(), shutdown.clone());
    {
        let (router, shutdown) = (router.clone(), shutdown.clone());
        tasks.push((
            "https server",
            tokio::spawn(async move {
                if let Err(e) = nodekit::serve_https_gated(
                    https_listener,
                    Arc::new(https_tls),
                    router,
                    shutdown,
                    https_gate,
                )
                .await
                {
                    tracing::error!(error = %e, "https server failed");
                }
            }),
        ));
    }
    if let Some(l) = http_listener {
        let (router, shutdown) = (router.clone(), shutdown.clone());
        tasks.push((
            "http server",
            tokio::spawn(async move {
                if let Err(e) = nodekit::serve_http(l, router, shutdown).await {
                    tracing::error!(error = %e, "http server failed");
                }
            }),
        ));
    }
    let ready = Arc::new(AtomicBool::new(false));
    {
        let drain_limit = Duration::from_secs(config.cluster_hub.drain_timeout_s);
        let admin = nodekit::admin_router(Arc::new(registry), ready.clone()).route(
            "/drain",
            axum::routing::post({
                let (hub, ready, shutdown) = (hub.clone(), ready.clone(), shutdown.clone());
                move || async move {
                    // Answers at once; the hub drains in the background, then stops.
                    if !hub.draining().is_cancelled() {
                        tokio::spawn(async move {
                            let all = drain(&hub, &ready, drain_limit).await;
                            tracing::info!(handed_off = all, "drained; stopping");
                            shutdown.cancel();
                        });
                    }
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        );
        let shutdown = shutdown.clone();
        tasks.push((
            "admin server",
            tokio::spawn(async move {
                if let Err(e) = nodekit::serve_http(admin_listener, admin, shutdown).await {
                    tracing::error!(error = %e, "admin server failed");
                }
            }),
        ));
    }
    {
        let (hub, shutdown) = (hub.clone(), shutdown.clone());
        tasks.push((
            "tick",
            tokio::spawn(async move {
                let mut every = tokio::time::interval(TICK);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = every.tick() => hub.tick(hub.clock().now_ms()),
                        _ = shutdown.cancelled() => break,
                    }
                }
            }),
        ));
    }
    if let Some(c) = &cluster {
        tasks.push((
            "rebalancer",
            tokio::spawn(replica::run_rebalancer(
                hub.clone(),
                c.clone(),
                shutdown.clone(),
                ready.clone(),
            )),
        ));
    } else {
        // In a cluster the rebalancer says ready once it has claimed what the hub owns.
        ready.store(true, Ordering::Relaxed);
    }
    tracing::info!(
        hub_id = %config.hub_id, link = %link_addr, webtransport = %webtransport_addr, https = %https_addr,
        admin = %admin_addr, "hub started"
    );
    Ok(HubHandle {
        hub,
        link_addr,
        webtransport_addr,
        https_addr,
        http_addr,
        admin_addr,
        shutdown,
        writer_shutdown,
        tasks,
        writer,
        ready,
        drain_limit: Duration::from_secs(config.cluster_hub.drain_timeout_s),
    })
}
