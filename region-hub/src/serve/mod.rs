//! Consumer transports and the HTTP API: WebSocket, WebTransport, REST, the web pages.

pub mod api;
pub(crate) mod http;
pub mod web;
pub mod wt;
