//! Serving an axum router over TLS (HTTPS, h2 + http/1.1, WebSocket upgrades) or plain HTTP.

use crate::handshake::{Decision, ListenerGate};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` over TLS until `shutdown` fires. Each connection (handshake included) runs
/// in its own task so a slow client cannot stall the accept loop.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    serve_loop(listener, router, shutdown, Some(acceptor), None).await
}

/// [`serve_https`] with admission control: each accepted TCP connection asks `gate` first;
/// a refused one is closed at once, before any TLS work (counted in
/// `handshakes_refused_total`), and an admitted one holds its slot until its TLS handshake
/// is over.
pub async fn serve_https_gated(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
    gate: Arc<ListenerGate>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    serve_loop(listener, router, shutdown, Some(acceptor), Some(gate)).await
}

/// Serves `router` over plain HTTP (admin endpoints, local development pages).
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_loop(listener, router, shutdown, None, None).await
}

async fn serve_loop(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    tls: Option<TlsAcceptor>,
    gate: Option<Arc<ListenerGate>>,
) -> std::io::Result<()> {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly instead of spinning.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The TCP handshake validated the address: admit or refuse (dropping the stream
        // closes it before TLS starts).
        let permit = match gate.as_ref().map(|g| g.admit(true)) {
            None => None,
            Some(Decision::Admit(p)) => Some(p),
            Some(Decision::Retry | Decision::Refuse(_)) => {
                debug!(%peer, "handshake refused: too many in flight or too fast");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let span = tracing::debug_span!("http_conn", peer = %peer);
        tokio::spawn(
            async move {
                match tls {
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                        drop(permit);
                        match handshake {
                            Ok(Ok(stream)) => serve_connection(stream, service, shutdown).await,
                            Ok(Err(e)) => debug!(error = %e, "tls handshake failed"),
                            Err(_) => debug!("tls handshake timed out"),
                        }
                    }
                    None => serve_connection(tcp, service, shutdown).await,
                }
            }
            .instrument(span),
        );
    }
}

/// Drives one HTTP connection; on shutdown lets in-flight requests finish for a few seconds.
async fn serve_connection<I>(
    io: I,
    service: TowerToHyperService<Router>,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(error = %e, "connection ended with error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
        }
    }
}
