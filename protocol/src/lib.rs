//! Sans-IO core shared by every Trackline node: wire format, tokens, consumer frames, geo math.
//!
//! Nothing in this crate touches a socket, a file or a clock: callers pass time in as
//! arguments. Every decoder of untrusted bytes is bounds-checked and returns an error instead
//! of panicking; `fuzz/` holds a cargo-fuzz target per decoder.

pub mod api;
pub mod consumer;
pub mod framing;
pub mod geo;
pub mod ids;
pub mod reject;
pub mod status;
pub mod token;
pub mod wire;

pub use ids::{DeliveryId, DriverId};

/// ALPN a driver app uses for its QUIC session (fixes as datagrams, control on a stream).
pub const ALPN_DRIVER: &[u8] = b"trackline-driver/1";
/// ALPN of the HTTP/3 driver API on the same edge endpoint.
pub const ALPN_H3: &[u8] = b"h3";
/// ALPN of the mutually authenticated edge <-> hub link.
pub const ALPN_HUB: &[u8] = b"trackline-hub/1";

/// Version byte at the front of every binary envelope this crate writes.
pub const WIRE_VERSION: u8 = 1;
