//! UDP sockets for QUIC listeners, with kernel buffers sized for bursts.
//!
//! Linux gives a UDP socket ~208 KiB of receive buffer by default: about 150 full-size QUIC
//! packets. One socket carries every driver (edge) or every consumer (hub) session, so a
//! reconnect burst of thousands of handshakes, or a scheduling hiccup of a few milliseconds at
//! 50,000 fixes per second, overflows it and the kernel drops packets before quinn sees them
//! (`RcvbufErrors` in `/proc/net/snmp`). [`bind_udp`] asks for `buffer_bytes` each way: with
//! `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` when the process may (root or `CAP_NET_ADMIN`), otherwise
//! with the plain options, which the kernel caps at `net.core.rmem_max`/`wmem_max`. What was
//! granted is returned so the caller can log it (and warn when it is short).

use std::io;
use std::net::SocketAddr;

/// The kernel buffers a socket ended up with, in bytes (as the kernel reports them: Linux
/// doubles the requested value to account for its bookkeeping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpBuffers {
    pub requested: usize,
    pub recv: usize,
    pub send: usize,
    /// Whether the `*FORCE` options were allowed (root or `CAP_NET_ADMIN`).
    pub forced: bool,
}

impl UdpBuffers {
    /// Whether the kernel granted less than asked (the reported size is twice the usable one).
    pub fn short(&self) -> bool {
        self.recv < self.requested || self.send < self.requested
    }
}

/// Binds a non-blocking UDP socket on `addr` with `buffer_bytes` of kernel buffer each way
/// (0 keeps the system defaults).
pub fn bind_udp(
    addr: SocketAddr,
    buffer_bytes: usize,
) -> io::Result<(std::net::UdpSocket, UdpBuffers)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Same as std's bind: the v6 socket takes v4-mapped traffic only if asked to.
        socket.set_only_v6(true)?;
    }
    let mut forced = false;
    if buffer_bytes > 0 {
        forced = force_buffers(&socket, buffer_bytes);
        if !forced {
            // Capped by net.core.rmem_max / wmem_max; failures here are not fatal.
            let _ = socket.set_recv_buffer_size(buffer_bytes);
            let _ = socket.set_send_buffer_size(buffer_bytes);
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let buffers = UdpBuffers {
        requested: buffer_bytes,
        recv: socket.recv_buffer_size()?,
        send: socket.send_buffer_size()?,
        forced,
    };
    Ok((socket.into(), buffers))
}

#[cfg(target_os = "linux")]
fn force_buffers(socket: &socket2::Socket, bytes: usize) -> bool {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(socket, sockopt::RcvBufForce, &bytes).is_ok()
        && setsockopt(socket, sockopt::SndBufForce, &bytes).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn force_buffers(_socket: &socket2::Socket, _bytes: usize) -> bool {
    false
}

/// Logs what [`bind_udp`] got, warning when the kernel granted less than asked.
pub fn log_buffers(listener: &str, addr: SocketAddr, b: &UdpBuffers) {
    if b.requested == 0 {
        return;
    }
    if b.short() {
        tracing::warn!(
            listener, %addr, requested = b.requested, recv = b.recv, send = b.send,
            "UDP socket buffers smaller than configured: raise net.core.rmem_max and \
             net.core.wmem_max, or run with CAP_NET_ADMIN (bursts will be dropped by the kernel)"
        );
    } else {
        tracing::info!(listener, %addr, recv = b.recv, send = b.send, forced = b.forced, "UDP socket buffers");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

    #[test]
    fn binds_with_at_least_the_system_default_and_reports_it() {
        let (socket, b) = bind_udp(ANY, 1 << 20).expect("bind");
        assert_ne!(socket.local_addr().expect("addr").port(), 0);
        assert_eq!(b.requested, 1 << 20);
        // Whatever the caps, the socket reports a real size, and a forced one is the asked
        // size (doubled by Linux).
        assert!(b.recv > 0 && b.send > 0);
        if b.forced {
            assert!(!b.short(), "{b:?}");
        }
    }

    #[test]
    fn zero_keeps_the_defaults() {
        let (_s, b) = bind_udp(ANY, 0).expect("bind");
        assert!(!b.forced);
        assert!(!b.short());
    }
}
