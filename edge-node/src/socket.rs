//! The driver endpoint's UDP socket: quinn's own, except that it offers no segmentation
//! offload (GSO), so each connection's send buffer stays one packet long.
//!
//! quinn keeps, per connection, a send buffer as large as the largest batch of packets it
//! ever built for it; with GSO that is the handshake flight (the certificate chain, several
//! packets), ~9 KiB that a driver session then keeps for its whole life while it only ever
//! sends ACKs and the odd control frame. Without GSO the buffer is one MTU (~1.4 KiB).
//! Measured in docs/operations.md ("Memory per driver session").

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// An [`AsyncUdpSocket`] that sends one datagram per call (see the module docs).
#[derive(Debug)]
pub struct NoGso(pub Arc<dyn AsyncUdpSocket>);

impl AsyncUdpSocket for NoGso {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

/// A server endpoint on `addr` whose socket offers no GSO and has `buffer_bytes` of kernel
/// buffer each way (see [`nodekit::bind_udp`]).
pub fn server_endpoint(
    config: quinn::ServerConfig,
    addr: SocketAddr,
    buffer_bytes: usize,
) -> io::Result<quinn::Endpoint> {
    let (socket, buffers) = nodekit::bind_udp(addr, buffer_bytes)?;
    nodekit::udp::log_buffers("quic", socket.local_addr()?, &buffers);
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let socket = Arc::new(NoGso(runtime.wrap_udp_socket(socket)?));
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )
}
