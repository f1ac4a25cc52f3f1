//! Trackline's client library: how a driver app and a tracking app speak the protocol.
//!
//! Each session is a sans-IO core ([`driver::DriverSession`], [`consumer::ConsumerSession`]):
//! a plain struct fed events with `now`, returning actions (connect, send, close), timers and
//! events (connected, failed, frames). Reconnects use exponential backoff with jitter
//! ([`backoff`]), honour `Retry-After`, follow redirects and resume consumers after the last
//! status event seen. [`io`] holds the thin tokio transports that drive them: QUIC datagrams
//! and HTTPS for drivers, WebTransport and WebSocket for consumers. See `client/README.md`.

pub mod backoff;
pub mod consumer;
pub mod driver;
pub mod failure;
pub mod frames;
pub mod io;

pub use backoff::{Backoff, BackoffConfig};
pub use consumer::{
    ConsumerAction, ConsumerConfig, ConsumerEvent, ConsumerSession, ConsumerTransport,
};
pub use driver::{DriverAction, DriverConfig, DriverEvent, DriverSession, DriverTransport};
pub use failure::Failure;
