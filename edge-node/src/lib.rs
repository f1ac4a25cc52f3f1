//! Trackline edge PoP: driver QUIC sessions, HTTP/3 and HTTPS ingest, auth cache, fix filter,
//! batching to the region hubs over mutually authenticated QUIC, draining.
//!
//! [`spawn`] binds every listener from an [`EdgeConfig`] (port 0 works), joins the cluster
//! when configured, and returns an [`EdgeHandle`]. The decision logic lives in sans-IO cores
//! ([`filter::FixFilter`], [`batcher::Batcher`], the placement functions of [`routes`]); the
//! async modules only drive them.

pub mod auth;
pub mod batcher;
pub mod config;
pub mod drain;
pub mod driver;
pub mod filter;
pub mod h3api;
pub mod https;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod routes;
pub mod socket;
pub mod uplink;

pub use config::{
    BatchConfig, ClusterLinkConfig, DrainConfig, EdgeConfig, FilterConfig, HubConfig,
};
pub use metrics::{EdgeMetrics, Transport};

use anyhow::Context;
use certs::TlsFor;
use prometheus_client::registry::Registry;
use protocol::{ALPN_DRIVER, ALPN_H3, ALPN_HUB};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running edge node.
#[derive(Debug)]
pub struct EdgeHandle {
    quic_addr: SocketAddr,
    https_addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics: Arc<EdgeMetrics>,
    quic_gate: Arc<nodekit::ListenerGate>,
    https_gate: Arc<nodekit::ListenerGate>,
    drainer: Arc<drain::Drainer>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl EdgeHandle {
    /// UDP address of the QUIC endpoint (driver sessions and HTTP/3).
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }
    /// TCP address of the HTTPS API.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }
    /// TCP address of the admin server (`/metrics`, `/healthz`, `/readyz`, `POST /drain`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }
    pub fn metrics(&self) -> Arc<EdgeMetrics> {
        self.metrics.clone()
    }
    /// The admission gate of QUIC handshakes (its counters).
    pub fn quic_gate(&self) -> &Arc<nodekit::ListenerGate> {
        &self.quic_gate
    }
    /// The admission gate of TLS handshakes on the HTTPS listener.
    pub fn https_gate(&self) -> &Arc<nodekit::ListenerGate> {
        &self.https_gate
    }
    /// The edge's cluster node, when it joined one.
    pub fn cluster(&self) -> Option<&cluster::ClusterNode> {
        self.drainer.cluster.as_ref()
    }
    /// Drains, then stops the edge: `/readyz` turns 503, new driver sessions are refused
    /// with `Draining`, open ones get `Redirect` to `peer_hint` (else a healthy peer edge
    /// from the cluster, else `drain.redirect_to`), HTTP answers 503; waits for the sessions
    /// to leave (at most `drain.timeout_s`) and for the hub links to deliver what is queued
    /// (at most `drain.flush_timeout_ms`), then shuts down. Call [`join`](Self::join) after.
    pub async fn drain(&self, peer_hint: Option<String>) {
        self.drainer.run(peer_hint).await;
    }
    /// Resolves once the edge is stopping (after [`shutdown`](Self::shutdown), or at the end
    /// of a drain started through `POST /drain`).
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await;
    }
    /// Asks every task to stop (sessions are closed with `ShuttingDown`).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
    /// Waits for every task to finish (call [`shutdown`](Self::shutdown) first).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(node) = &self.drainer.cluster {
            node.closed().await;
        }
    }
}

/// The advertised driver address: configured, else the bound one unless it is a wildcard.
fn driver_advertise_addr(config: &EdgeConfig, bound: SocketAddr) -> Option<String> {
    config
        .advertise_quic_addr
        .clone()
        .or_else(|| (!bound.ip().is_unspecified()).then(|| bound.to_string()))
}

/// Binds the QUIC endpoint, the HTTPS and admin listeners and the hub link client, joins the
/// cluster if configured, and starts ingest. Fails on an invalid config, unreadable TLS
/// files, a port in use or a cluster that cannot start.
pub async fn spawn(config: EdgeConfig) -> anyhow::Result<EdgeHandle> {
    config.validate()?;
    let tls = config.tls.load().context("loading the edge's TLS files")?;
    let verifier = nodekit::to_verifier(&config.token_keys)?;

    let mut registry = Registry::default();
    let metrics = Arc::new(EdgeMetrics::register(&mut registry));
    let handshakes = nodekit::HandshakeMetrics::register(&mut registry);
    let quic_gate = handshakes.gate("quic", config.quic_handshakes.clone());
    let https_gate = handshakes.gate("https", config.https_handshakes.clone());
    let auth = Arc::new(auth::AuthCache::new(
        verifier,
        config.auth_cache_capacity,
        metrics.auth_hits().clone(),
        metrics.auth_misses().clone(),
    ));
    let shutdown = CancellationToken::new();

    // QUIC endpoint: driver sessions and HTTP/3, told apart by ALPN.
    let quic_tls = certs::server_tls_config(
        tls.chain.clone(),
        tls.key.clone_key(),
        &[ALPN_DRIVER, ALPN_H3],
        TlsFor::Quic,
    )?;
    let mut server_config = certs::quinn_server_config(quic_tls)?;
    server_config.transport_config(Arc::new(driver::transport_config()));
    let endpoint =
        socket::server_endpoint(server_config, config.quic_listen, config.udp_buffer_bytes)
            .with_context(|| format!("binding the QUIC endpoint on {}", config.quic_listen))?;
    let quic_addr = endpoint.local_addr()?;

    // HTTPS and admin listeners.
    let https_tls = certs::server_tls_config(
        tls.chain.clone(),
        tls.key.clone_key(),
        &[b"h2", b"http/1.1"],
        TlsFor::Tcp,
    )?;
    let https_listener = tokio::net::TcpListener::bind(config.https_listen)
        .await
        .with_context(|| format!("binding HTTPS on {}", config.https_listen))?;
    let https_addr = https_listener.local_addr()?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin server on {}", config.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;

    // The cluster (membership + control plane), with the node certificate. It leaves when
    // the edge stops, after the hub links have flushed.
    let cluster_node = match &config.cluster {
        Some(cc) => {
            let mut cc = cc.clone();
            if let Some(addr) = driver_advertise_addr(&config, quic_addr) {
                cc.publish.insert(drain::keys::ADDR_DRIVER.to_owned(), addr);
            }
            let gossip_tls = cluster::GossipTls {
                chain: tls.chain.clone(),
                key: tls.key.clone_key(),
                roots: tls.roots.clone(),
            };
            let node = cluster::spawn_node(cc, gossip_tls, shutdown.child_token())
                .await
                .context("joining the cluster")?;
            node.register_metrics(&mut registry);
            Some(node)
        }
        None => None,
    };
    let registry = Arc::new(registry);

    // Hub link client (mutual TLS), one endpoint shared by every hub's uplink.
    let hub_tls =
        certs::mtls_client_config(tls.chain, tls.key, tls.roots, &[ALPN_HUB], TlsFor::Quic)?;
    let mut client_config = certs::quinn_client_config(hub_tls)?;
    client_config.transport_config(Arc::new(uplink::transport_config()));
    let v6 = config.cluster.is_none() && config.primary_hub().is_some_and(|h| h.addr.is_ipv6());
    let bind: SocketAddr = if v6 {
        ([0u16; 8], 0).into()
    } else {
        ([0, 0, 0, 0], 0).into()
    };
    let mut hub_endpoint =
        quinn::Endpoint::client(bind).context("binding the hub link's UDP socket")?;
    hub_endpoint.set_default_client_config(client_config);

    // Ingest: filter -> routing -> one batcher and uplink per hub, in place on each session's
    // task; the flusher sends batches whose time is up.
    let flush = Arc::new(pipeline::Flush::new());
    // Where fixes wait while no hub is known; never has an uplink of its own.
    let (orphan_tx, _orphan_rx) = tokio::sync::mpsc::channel(1);
    let orphans = Arc::new(pipeline::BatchQueue::new(
        batcher::Batcher::new((&config.batch).into()),
        orphan_tx,
        metrics.clone(),
        flush.clone(),
    ));
    let (routes_tx, routes_rx) =
        tokio::sync::watch::channel(Arc::new(routes::Routes::empty(orphans)));
    let pipeline = pipeline::Ingest::new(pipeline::IngestCore::new(
        config.filter.clone(),
        config.clock.clock(),
        routes_rx.clone(),
        metrics.clone(),
    ));
    let drain_state = Arc::new(drain::DrainState::default());
    let ingest = ingest::IngestContext {
        auth,
        pipeline: pipeline.clone(),
        metrics: metrics.clone(),
        drain: drain_state.clone(),
        retry_after_s: config.drain.retry_after_s,
    };

    let mut tasks = Vec::new();
    tasks.push(pipeline::spawn_flusher(
        pipeline.clone(),
        flush.clone(),
        routes_rx.clone(),
        shutdown.clone(),
    ));
    let source = match (&cluster_node, config.primary_hub()) {
        (Some(node), _) => routes::HubSource::Cluster {
            view: node.view.clone(),
            links: config.cluster_links.clone(),
        },
        (None, Some(hub)) => routes::HubSource::Static(hub.clone()),
        (None, None) => anyhow::bail!("no hub configured and no cluster to find one"),
    };
    tasks.push(
        routes::spawn_hub_set(
            source,
            routes::HubSetParams {
                edge_id: config.edge_id.clone(),
                endpoint: hub_endpoint,
                batch: config.batch.clone(),
                metrics: metrics.clone(),
                ingest: pipeline,
                flush,
            },
            routes_tx,
            shutdown.clone(),
        )
        .await,
    );
    let quic_ctx = Arc::new(driver::QuicContext::new(
        ingest.clone(),
        Duration::from_millis(config.hello_timeout_ms),
    ));
    tasks.push(tokio::spawn(driver::run_endpoint(
        endpoint,
        quic_ctx,
        quic_gate.clone(),
        shutdown.clone(),
    )));
    let https_router = https::router(ingest);
    let sd = shutdown.clone();
    let gate = https_gate.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) =
            nodekit::serve_https_gated(https_listener, Arc::new(https_tls), https_router, sd, gate)
                .await
        {
            tracing::error!(error = %e, "https server failed");
        }
    }));
    let ready = Arc::new(AtomicBool::new(false));
    let drainer = Arc::new(drain::Drainer {
        edge_id: config.edge_id.clone(),
        state: drain_state,
        config: config.drain.clone(),
        cluster: cluster_node,
        routes: routes_rx,
        metrics: metrics.clone(),
        ready: ready.clone(),
        shutdown: shutdown.clone(),
    });
    let admin = nodekit::admin_router(registry, ready.clone()).merge(drain_router(drainer.clone()));
    let sd = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = nodekit::serve_http(admin_listener, admin, sd).await {
            tracing::error!(error = %e, "admin server failed");
        }
    }));
    ready.store(true, Ordering::Relaxed);
    tracing::info!(edge_id = %config.edge_id, %quic_addr, %https_addr, %admin_addr, "edge node up");
    Ok(EdgeHandle {
        quic_addr,
        https_addr,
        admin_addr,
        metrics,
        quic_gate,
        https_gate,
        drainer,
        shutdown,
        tasks,
    })
}

/// Query of `POST /drain`.
#[derive(Debug, serde::Deserialize)]
struct DrainQuery {
    /// Edge QUIC address to redirect drivers to (overrides the cluster's choice).
    peer: Option<String>,
}

/// `POST /drain[?peer=host:port]` on the admin listener: starts draining and answers 202 at
/// once; the edge stops when the drain is over.
fn drain_router(drainer: Arc<drain::Drainer>) -> axum::Router {
    use axum::extract::{Query, State};
    axum::Router::new()
        .route(
            "/drain",
            axum::routing::post(
                |State(d): State<Arc<drain::Drainer>>, Query(q): Query<DrainQuery>| async move {
                    tokio::spawn(async move { d.run(q.peer).await });
                    (http::StatusCode::ACCEPTED, "draining\n")
                },
            ),
        )
        .with_state(drainer)
}
