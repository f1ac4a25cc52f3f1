//! What the node binaries share: HTTPS serving over rustls, the admin server, config, tracing,
//! clocks, and admission control of handshakes ([`handshake`]).

mod admin;
mod clock;
mod config;
pub mod handshake;
mod layered;
mod serve;
pub mod udp;

pub use admin::admin_router;
pub use clock::{Clock, ClockConfig};
pub use config::{load_config, to_verifier, LoadedTls, TlsFiles, TokenKeyConfig};
pub use handshake::{HandshakeGate, HandshakeGateConfig, HandshakeMetrics, ListenerGate};
pub use layered::{
    is_secret_field, redacted_toml, ConfigLayers, ConfigLoadError, FieldError, REDACTED,
};
pub use serve::{serve_http, serve_https, serve_https_gated};
pub use udp::{bind_udp, UdpBuffers};

use std::time::{SystemTime, UNIX_EPOCH};

/// Starts a `tracing` subscriber once per process; `RUST_LOG` overrides `default_directive`.
/// Colours only when stderr is a terminal (log files and journald get plain text).
pub fn init_tracing(default_directive: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directive));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Wall-clock milliseconds since the Unix epoch (only at the IO edge; cores take time as input).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Wall-clock seconds since the Unix epoch.
pub fn unix_s() -> u64 {
    unix_ms() / 1000
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
