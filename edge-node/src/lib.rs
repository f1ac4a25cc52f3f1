//! Trackline edge PoP: driver QUIC sessions, HTTP/3 and HTTPS ingest, auth cache, fix filter,
//! batching to the region hub over mutually authenticated QUIC.
//!
//! [`spawn`] binds every listener from an [`EdgeConfig`] (port 0 works) and returns an
//! [`EdgeHandle`]. The decision logic lives in sans-IO cores ([`filter::FixFilter`],
//! [`batcher::Batcher`]); the async modules only drive them.

pub mod auth;
pub mod batcher;
pub mod config;
pub mod driver;
pub mod filter;
pub mod h3api;
pub mod https;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod uplink;

pub use config::{BatchConfig, EdgeConfig, FilterConfig, HubConfig};
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
    /// TCP address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }
    pub fn metrics(&self) -> Arc<EdgeMetrics> {
        self.metrics.clone()
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
    }
}

/// Binds the QUIC endpoint, the HTTPS and admin listeners and the hub link client, and starts
/// the pipeline. Fails on an invalid config, unreadable TLS files or a port in use.
pub async fn spawn(config: EdgeConfig) -> anyhow::Result<EdgeHandle> {
    config.validate()?;
    let tls = config.tls.load().context("loading the edge's TLS files")?;
    let verifier = nodekit::to_verifier(&config.token_keys)?;
    let hub = config.primary_hub().context("no hub configured")?.clone();

    let mut registry = Registry::default();
    let metrics = Arc::new(EdgeMetrics::register(&mut registry));
    let registry = Arc::new(registry);
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
    let endpoint = quinn::Endpoint::server(server_config, config.quic_listen)
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

    // Hub link client (mutual TLS).
    let hub_tls =
        certs::mtls_client_config(tls.chain, tls.key, tls.roots, &[ALPN_HUB], TlsFor::Quic)?;
    let mut client_config = certs::quinn_client_config(hub_tls)?;
    client_config.transport_config(Arc::new(uplink::transport_config()));
    let bind: SocketAddr = if hub.addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut hub_endpoint =
        quinn::Endpoint::client(bind).context("binding the hub link's UDP socket")?;
    hub_endpoint.set_default_client_config(client_config);

    // Pipeline: ingest queue -> filter -> batcher -> uplink queue.
    let (batch_tx, batch_rx) = tokio::sync::mpsc::channel(config.batch.uplink_queue_batches);
    let queue = Arc::new(pipeline::BatchQueue::new(
        batcher::Batcher::new((&config.batch).into()),
        batch_tx,
        metrics.clone(),
    ));
    let (pipeline_tx, ingest_rx) =
        pipeline::ingest_channel(config.batch.queue_capacity, metrics.clone());
    let ingest = ingest::IngestContext {
        auth,
        pipeline: pipeline_tx,
        metrics: metrics.clone(),
    };

    let mut tasks = Vec::new();
    tasks.push(pipeline::spawn_pipeline(
        config.filter.clone(),
        ingest_rx,
        queue.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tasks.push(uplink::spawn_uplink(
        uplink::UplinkParams {
            edge_id: config.edge_id.clone(),
            hub,
            endpoint: hub_endpoint,
        },
        batch_rx,
        queue,
        metrics.clone(),
        shutdown.clone(),
    ));
    let quic_ctx = Arc::new(driver::QuicContext::new(
        ingest.clone(),
        Duration::from_millis(config.hello_timeout_ms),
    ));
    tasks.push(tokio::spawn(driver::run_endpoint(
        endpoint,
        quic_ctx,
        shutdown.clone(),
    )));
    let https_router = https::router(ingest);
    let sd = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) =
            nodekit::serve_https(https_listener, Arc::new(https_tls), https_router, sd).await
        {
            tracing::error!(error = %e, "https server failed");
        }
    }));
    let ready = Arc::new(AtomicBool::new(false));
    let admin = nodekit::admin_router(registry, ready.clone());
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
        shutdown,
        tasks,
    })
}
