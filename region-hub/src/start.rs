//! The composition root: how [`crate::spawn`] builds a running hub, in four steps.
//!
//! 1. [`recover`]: keys and certificates, metrics, the store (redb), the road graph, and the
//!    delivery state recovered from the log (plans and the speed table too).
//! 2. [`bind`]: every listener, before any task runs, so a taken port is an error and not a
//!    half-started hub.
//! 3. [`assemble`]: the durable log's writer, breadcrumbs, the cluster (replication and
//!    gossip) and the [`Hub`] that the transports share.
//! 4. [`run`]: the tasks that move bytes (edge link, WebTransport, HTTPS, admin, shard
//!    workers, tick, rebalancer, webhook sender) and the [`HubHandle`] that stops them.

use crate::durable::{history, plans, store};
use crate::hub::{self, Hub};
use crate::ingest::link;
use crate::metrics::{HubMetrics, WebhookMetrics};
use crate::replication as replica;
use crate::serve::{http, webhook_sender, wt};
use crate::tracking::{deliveries, shards::Shards};
use crate::{drain, load_or_create_signing_key, HubConfig, HubHandle};
use crate::{FIX_QUEUE_BATCHES, TICK};
use anyhow::Context;
use nodekit::{Clock, HandshakeMetrics, LoadedTls};
use prometheus_client::registry::Registry;
use protocol::token::{TokenSigner, TokenVerifier};
use roadnet::RoadGraph;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the hub knew before it stopped, and what it needs to know to start.
pub(crate) struct Recovered {
    signer: TokenSigner,
    verifier: TokenVerifier,
    pub(crate) tls: LoadedTls,
    metrics: Arc<HubMetrics>,
    webhook_metrics: Arc<WebhookMetrics>,
    handshakes: HandshakeMetrics,
    store: store::Store,
    webhook_client: reqwest::Client,
    clock: Clock,
    road: Arc<RoadGraph>,
    state: hub::HubState,
}

/// Step 1: loads keys, opens the store and recovers the delivery state from it.
pub(crate) fn recover(
    config: &HubConfig,
    notifier: Option<notify::Notifier>,
    registry: &mut Registry,
) -> anyhow::Result<Recovered> {
    let signer = load_or_create_signing_key(&config.token_signing_key, config.token_kid)?;
    let mut verifier = nodekit::to_verifier(&config.token_keys)?;
    verifier.add_key(config.token_kid, signer.public_key());
    let tls = config.tls.load().context("loading the hub's TLS files")?;

    let metrics = Arc::new(HubMetrics::new(registry));
    let webhook_metrics = Arc::new(WebhookMetrics::new(registry));
    let handshakes = HandshakeMetrics::register(registry);

    let db_path = config.db_path();
    let store = store::Store::open_with_cache(
        &db_path,
        usize::try_from(config.store_cache_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
    )?;
    store.ensure_history_tables()?;
    plans::ensure_tables(&store)?;
    store.sync_configured_webhooks(&config.webhooks.subscriptions)?;
    let webhook_client = webhook_sender::http_client(
        config.webhooks.ca.as_deref(),
        Duration::from_millis(config.webhooks.request_timeout_ms),
    )?;
    let clock = config.clock.clock();
    let now = clock.now_ms();
    let road = load_road(config)?;
    let shards = recover_shards(config, &store, &road, now)?;
    tracing::info!(path = %db_path.display(), live = shards.len(), shards = shards.count(), "event log recovered");

    let notifier = match notifier {
        Some(n) => n,
        None => {
            notify::Notifier::from_config(&config.push, Arc::new(notify::SystemClock), registry)
                .context("setting up push notifications")?
        }
    };
    let mut devices = notify::DeviceRegistry::new();
    for (id, device) in store.devices()? {
        if let Err(e) = devices.register(id.0, device) {
            tracing::warn!(delivery_id = %id, error = %e, "stored push device not registered");
        }
    }
    let state = hub::HubState::new(
        shards,
        metrics.clone(),
        hub::Push {
            notifier,
            devices: Arc::new(parking_lot::Mutex::new(devices)),
            store: store.clone(),
        },
    );
    Ok(Recovered {
        signer,
        verifier,
        tls,
        metrics,
        webhook_metrics,
        handshakes,
        store,
        webhook_client,
        clock,
        road,
        state,
    })
}

/// The one road graph of this hub: routes, ETAs and the browsers' map all use it.
fn load_road(config: &HubConfig) -> anyhow::Result<Arc<RoadGraph>> {
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
    Ok(road)
}

/// The sharded delivery state with what the log, the plans and the speed table hold.
fn recover_shards(
    config: &HubConfig,
    store: &store::Store,
    road: &Arc<RoadGraph>,
    now: u64,
) -> anyhow::Result<Shards> {
    let core_config = deliveries::CoreConfig {
        state_ttl_ms: config.state_ttl_s.saturating_mul(1000),
        location_unavailable_after_ms: config.location_unavailable_after_s.saturating_mul(1000),
        geofence: config.geofence.clone(),
        anomaly: config.anomaly.clone(),
        ..deliveries::CoreConfig::default()
    };
    let mut speeds = roadnet::SpeedModel::new(core_config.eta.speed_model.clone());
    let speed_rows = plans::load_speeds(store)?;
    if let Err(e) = speeds.import_historical(&speed_rows) {
        tracing::warn!(error = %e, "ignoring the stored speed table");
    }
    let shards = Shards::new(
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
    let saved = plans::load_plans(store)?;
    let n_plans = saved.len();
    for (id, plan) in saved {
        shards.restore_plan(id, plan);
    }
    shards.tick(now); // drops what expired while the hub was down
    tracing::info!(
        recovered = n,
        speed_rows = speed_rows.len(),
        plans = n_plans,
        "delivery and ETA state recovered"
    );
    Ok(shards)
}

/// Every listener of the hub, bound.
pub(crate) struct Listeners {
    link: quinn::Endpoint,
    webtransport: wtransport::Endpoint<wtransport::endpoint::endpoint_side::Server>,
    webtransport_cert_sha256: [u8; 32],
    https: tokio::net::TcpListener,
    https_tls: rustls::ServerConfig,
    http: Option<tokio::net::TcpListener>,
    admin: tokio::net::TcpListener,
    link_addr: SocketAddr,
    webtransport_addr: SocketAddr,
    https_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
}

/// Step 2: binds the edge link, WebTransport, HTTPS, plain HTTP (if configured) and admin.
pub(crate) async fn bind(config: &HubConfig, tls: &LoadedTls) -> anyhow::Result<Listeners> {
    let link = link::bind(
        link::server_config(tls)?,
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
    let webtransport_cert_sha256 = certs::certificate_sha256(&identity);
    let webtransport = wt::bind(
        config.webtransport_listen,
        identity,
        config.udp_buffer_bytes,
    )
    .with_context(|| format!("binding WebTransport on {}", config.webtransport_listen))?;
    let https = tokio::net::TcpListener::bind(config.https_listen)
        .await
        .with_context(|| format!("binding HTTPS on {}", config.https_listen))?;
    let http = match config.http_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding HTTP on {a}"))?,
        ),
        None => None,
    };
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin server on {}", config.admin_listen))?;
    let https_tls = certs::server_tls_config(
        tls.chain.clone(),
        tls.key.clone_key(),
        &[b"h2", b"http/1.1"],
        certs::TlsFor::Tcp,
    )?;
    Ok(Listeners {
        link_addr: link.local_addr()?,
        webtransport_addr: webtransport.local_addr()?,
        https_addr: https.local_addr()?,
        http_addr: http.as_ref().map(|l| l.local_addr()).transpose()?,
        admin_addr: admin.local_addr()?,
        link,
        webtransport,
        webtransport_cert_sha256,
        https,
        https_tls,
        http,
        admin,
    })
}

/// The hub and the tasks that keep its durable state, before the transports run.
pub(crate) struct Assembled {
    hub: Arc<Hub>,
    road: Arc<RoadGraph>,
    cluster: Option<Arc<replica::HubCluster>>,
    handshakes: HandshakeMetrics,
    webhook_client: reqwest::Client,
    webhook_metrics: Arc<WebhookMetrics>,
    shutdown: CancellationToken,
    writer_shutdown: CancellationToken,
    writer: JoinHandle<()>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

/// Step 3: the log writer (replicated in a cluster), breadcrumbs, the cluster and the hub.
pub(crate) async fn assemble(
    config: &HubConfig,
    recovered: Recovered,
    listeners: &Listeners,
    registry: &mut Registry,
) -> anyhow::Result<Assembled> {
    let Recovered {
        signer,
        verifier,
        tls,
        metrics,
        webhook_metrics,
        handshakes,
        store,
        webhook_client,
        clock,
        road,
        state,
    } = recovered;
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

    let cluster = match config.cluster.clone() {
        Some(c) => {
            let published = replica::Published::new(
                &config.cluster_hub,
                listeners.link_addr,
                listeners.webtransport_addr,
                listeners.https_addr,
            );
            let joined = Arc::new(
                replica::join(
                    c,
                    &config.cluster_hub,
                    &tls,
                    &published,
                    registry,
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
    let hub = Arc::new(Hub::new(
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
            webtransport_port: listeners.webtransport_addr.port(),
            webtransport_cert_sha256: listeners.webtransport_cert_sha256,
            cluster: cluster.clone(),
        },
    ));
    let mut tasks = vec![
        ("breadcrumb writer", crumb_writer),
        ("history purge", purge),
        ("eta saver", eta_saver),
    ];
    if let Some(task) = crumb_replicator {
        tasks.push(("breadcrumb replicator", task));
    }
    Ok(Assembled {
        hub,
        road,
        cluster,
        handshakes,
        webhook_client,
        webhook_metrics,
        shutdown,
        writer_shutdown,
        writer,
        tasks,
    })
}

/// Step 4: starts the tasks that move bytes and returns the handle that stops them.
pub(crate) fn run(
    config: &HubConfig,
    assembled: Assembled,
    listeners: Listeners,
    registry: Registry,
) -> HubHandle {
    let Assembled {
        hub,
        road,
        cluster,
        handshakes,
        webhook_client,
        webhook_metrics,
        shutdown,
        writer_shutdown,
        writer,
        mut tasks,
    } = assembled;
    let Listeners {
        link: link_endpoint,
        webtransport: wt_endpoint,
        https: https_listener,
        https_tls,
        http: http_listener,
        admin: admin_listener,
        link_addr,
        webtransport_addr,
        https_addr,
        http_addr,
        admin_addr,
        ..
    } = listeners;
    let wt_gate = handshakes.gate("webtransport", config.webtransport_handshakes.clone());
    let https_gate = handshakes.gate("https", config.https_handshakes.clone());
    let (fix_queues, shard_workers) =
        crate::ingest::workers::spawn_workers(hub.clone(), FIX_QUEUE_BATCHES, shutdown.clone());
    {
        // Only the hub that owns a delivery sends its webhooks (a single hub owns all).
        let owner = hub.clone();
        let owns: webhook_sender::Owns =
            Arc::new(move |id: protocol::DeliveryId| owner.cluster().is_none_or(|c| c.is_mine(id)));
        tasks.push((
            "webhook sender",
            webhook_sender::spawn_webhook_sender(
                hub.store().clone(),
                webhook_sender::SenderConfig::from_config(&config.webhooks),
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
    let router = http::router(hub.clone(), road, shutdown.clone());
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
    let drain_limit = Duration::from_secs(config.cluster_hub.drain_timeout_s);
    {
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
    HubHandle {
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
        drain_limit,
    }
}
