//! The bare quinn datagram sink: what receiving a driver's fix costs with nothing else done.
//!
//! Same quinn, rustls and ring as the edge, quinn's default transport settings, one task per
//! connection reading datagrams and counting them. Nothing is decoded, checked or forwarded:
//! the floor any QUIC ingest sits on.

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// ALPN the sink accepts (and the load generator offers in raw mode).
pub const ALPN_SINK: &[u8] = b"trackline-sink/1";

/// `trackline-baseline quic-sink`.
#[derive(clap::Args, Debug, Clone)]
pub struct SinkArgs {
    /// UDP address to accept QUIC connections on.
    #[arg(long, default_value = "127.0.0.1:4500")]
    pub listen: SocketAddr,
    /// TCP address of the admin server (`/metrics`).
    #[arg(long, default_value = "127.0.0.1:4501")]
    pub admin: SocketAddr,
    /// Certificate chain (PEM), e.g. from `certs issue`.
    #[arg(long)]
    pub cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
}

/// The sink's counters.
#[derive(Clone, Debug, Default)]
pub struct SinkMetrics {
    pub datagrams: Counter,
    pub bytes: Counter,
    pub connections: Gauge,
}

impl SinkMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "baseline_sink_datagrams",
            "Datagrams read",
            self.datagrams.clone(),
        );
        registry.register(
            "baseline_sink_bytes",
            "Datagram payload bytes read",
            self.bytes.clone(),
        );
        registry.register(
            "baseline_sink_connections",
            "Open connections",
            self.connections.clone(),
        );
    }
}

/// A running sink.
#[derive(Debug)]
pub struct SinkHandle {
    pub quic_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: SinkMetrics,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl SinkHandle {
    /// Stops accepting, closes every connection and waits for the tasks.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Binds the QUIC endpoint and the admin server (port 0 works) and starts accepting.
pub async fn spawn_sink(args: &SinkArgs) -> anyhow::Result<SinkHandle> {
    let m = certs::TlsMaterial::load(&args.cert, &args.key, None).context("loading TLS files")?;
    let tls = certs::server_tls_config(m.chain, m.key, &[ALPN_SINK], certs::TlsFor::Quic)?;
    let endpoint = quinn::Endpoint::server(certs::quinn_server_config(tls)?, args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    let quic_addr = endpoint.local_addr()?;
    let admin = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("binding {}", args.admin))?;
    let admin_addr = admin.local_addr()?;

    let metrics = SinkMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let router = nodekit::admin_router(Arc::new(registry), Arc::new(AtomicBool::new(true)));
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    let admin_task = tokio::spawn(async move {
        if let Err(e) = nodekit::serve_http(admin, router, sd).await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    let m = metrics.clone();
    let sd = shutdown.clone();
    let accept_task = tokio::spawn(async move {
        loop {
            let incoming = tokio::select! {
                _ = sd.cancelled() => break,
                i = endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            tokio::spawn(read_datagrams(incoming, m.clone()));
        }
        endpoint.close(0u32.into(), b"sink stopping");
        endpoint.wait_idle().await;
    });
    Ok(SinkHandle {
        quic_addr,
        admin_addr,
        metrics,
        shutdown,
        tasks: vec![accept_task, admin_task],
    })
}

/// The whole per-connection work of the sink.
async fn read_datagrams(incoming: quinn::Incoming, m: SinkMetrics) {
    let Ok(conn) = incoming.await else { return };
    m.connections.inc();
    while let Ok(d) = conn.read_datagram().await {
        m.datagrams.inc();
        m.bytes.inc_by(d.len() as u64);
    }
    m.connections.dec();
}
