//! Bytes to and from the outside: consumer transports (WebSocket, WebTransport), the HTTP API,
//! the web pages, and the webhook sender (the order service's side of the outbox).

pub mod api;
pub mod hooks;
pub(crate) mod http;
pub(crate) mod respond;
pub mod web;
pub mod webhook_sender;
pub mod wt;
