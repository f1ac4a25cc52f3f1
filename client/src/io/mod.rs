//! Thin tokio transports that drive the sans-IO sessions: QUIC and HTTPS for drivers,
//! WebTransport and WebSocket for consumers.

pub mod consumer;
pub mod driver;

pub use consumer::{run_consumer, ConsumerApp, ConsumerIo, WsConnector};
pub use driver::{run_driver, DriverApp, DriverIo};
