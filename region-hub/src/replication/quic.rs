//! The real [`ReplicaLink`]: mutual-TLS QUIC (ALPN `trackline-replica/1`) on the edge link's
//! endpoint, one bidirectional stream per exchange, connections cached per peer address. And
//! the serving side: each stream's frame is answered by `driver::answer`.

use super::host::Host;
use super::link::{Exchange, ReplicaError, ReplicaLink};
use super::wire::{ReplicaFrame, MAX_REPLICA_FRAME};
use cluster::HubInfo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, Instrument};

/// The replica client of one hub.
#[derive(Debug)]
pub struct QuicLink {
    client: quinn::Endpoint,
    conns: tokio::sync::Mutex<HashMap<String, quinn::Connection>>,
    server_name: Option<String>,
    ack_timeout: Duration,
}

impl QuicLink {
    /// A link over `client` (a client endpoint with the mTLS client config set), answering
    /// within `ack_timeout`; `server_name` overrides the name checked in peer certificates.
    pub fn new(
        client: quinn::Endpoint,
        server_name: Option<String>,
        ack_timeout: Duration,
    ) -> Self {
        Self {
            client,
            conns: tokio::sync::Mutex::new(HashMap::new()),
            server_name,
            ack_timeout,
        }
    }

    async fn connection(&self, to: &HubInfo) -> Result<quinn::Connection, ReplicaError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&to.link_addr) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        if to.link_addr.is_empty() {
            return Err(ReplicaError::NoAddress(to.id.clone()));
        }
        let (host, _) = to
            .link_addr
            .rsplit_once(':')
            .ok_or_else(|| ReplicaError::Resolve(to.link_addr.clone(), "no port".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addr = tokio::net::lookup_host(&to.link_addr)
            .await
            .map_err(|e| ReplicaError::Resolve(to.link_addr.clone(), e.to_string()))?
            .next()
            .ok_or_else(|| ReplicaError::Resolve(to.link_addr.clone(), "no address".into()))?;
        let name = self.server_name.as_deref().unwrap_or(host);
        let conn = self
            .client
            .connect(addr, name)
            .map_err(|e| ReplicaError::Connect(e.to_string()))?
            .await
            .map_err(|e| ReplicaError::Connect(e.to_string()))?;
        conns.insert(to.link_addr.clone(), conn.clone());
        Ok(conn)
    }
}

impl ReplicaLink for QuicLink {
    fn exchange<'a>(&'a self, to: &'a HubInfo, frame: ReplicaFrame) -> Exchange<'a> {
        Box::pin(async move {
            let bytes = frame.encode();
            let exchange = async {
                let conn = self.connection(to).await?;
                let (mut send, mut recv) = conn
                    .open_bi()
                    .await
                    .map_err(|e| ReplicaError::Stream(e.to_string()))?;
                send.write_all(&bytes)
                    .await
                    .map_err(|e| ReplicaError::Stream(e.to_string()))?;
                let _ = send.finish();
                let answer = recv
                    .read_to_end(MAX_REPLICA_FRAME + 16)
                    .await
                    .map_err(|e| ReplicaError::Stream(e.to_string()))?;
                ReplicaFrame::decode(&answer).map_err(ReplicaError::Stream)
            };
            match tokio::time::timeout(self.ack_timeout, exchange).await {
                Ok(r) => r,
                Err(_) => {
                    // A connection that stopped answering is not reused.
                    self.conns.lock().await.remove(&to.link_addr);
                    Err(ReplicaError::Timeout(self.ack_timeout))
                }
            }
        })
    }

    fn close(&self) {
        self.client
            .close(quinn::VarInt::from_u32(0), b"hub shutting down");
    }
}

/// Serves one peer hub's replica connection: each bidirectional stream carries one request
/// frame, answered by `driver::answer`.
pub(crate) async fn serve(conn: quinn::Connection, hub: Arc<dyn Host>) {
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(reason = %e, "replica link closed");
                return;
            }
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let answer = match recv.read_to_end(MAX_REPLICA_FRAME + 16).await {
                Ok(bytes) => match ReplicaFrame::decode(&bytes) {
                    Ok(frame) => super::driver::answer(&hub, frame).await,
                    Err(reason) => ReplicaFrame::Refused { reason },
                },
                Err(e) => ReplicaFrame::Refused {
                    reason: e.to_string(),
                },
            };
            let _ = send.write_all(&answer.encode()).await;
            let _ = send.finish();
        });
    }
}

/// Whether the connection's (CA-verified) client certificate is a hub's (`OU=hub`): edges
/// hold cluster certificates too, but only hubs may write into another hub's log.
pub(crate) fn peer_is_hub(conn: &quinn::Connection) -> bool {
    conn.peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| {
            let leaf = chain.first()?;
            certs::CertSummary::from_der(leaf, "peer hub").ok()
        })
        .is_some_and(|c| c.subject.split(", ").any(|part| part == "OU=hub"))
}

/// Tracing span for a replica connection.
pub(crate) fn span(remote: SocketAddr) -> tracing::Span {
    tracing::info_span!("replica_link", remote = %remote)
}

/// Runs [`serve`] in its own span.
pub(crate) fn spawn_serve(conn: quinn::Connection, hub: Arc<dyn Host>) {
    let span = span(conn.remote_address());
    tokio::spawn(serve(conn, hub).instrument(span));
}
