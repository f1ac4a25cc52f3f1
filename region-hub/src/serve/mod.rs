//! Consumer transports and the HTTP API: WebSocket, WebTransport, REST, the web pages.

pub mod api;
pub mod hooks;
pub(crate) mod http;
pub(crate) mod respond;
pub mod web;
pub mod wt;
