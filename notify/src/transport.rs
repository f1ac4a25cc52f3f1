//! A small HTTP/2-over-TLS client on hyper 1 + tokio-rustls (ring): one kept-alive connection
//! per endpoint, re-opened after it fails, every exchange bounded by a timeout.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Bytes, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::Instrument;

use crate::error::{PushError, SetupError};

/// Largest response body read; push services answer with a few hundred bytes.
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// HTTP/2 PING interval on an idle connection (keeps NATs and APNs from dropping it).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// `https://host[:port]` split into what the client needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    /// Parses a base URL (`https://host[:port]`, optionally with a trailing `/`).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (endpoint, path) = Self::parse_url(url)?;
        if path != "/" {
            return Err(format!(
                "{url:?} must be a base URL without a path (like https://api.push.apple.com)"
            ));
        }
        Ok(endpoint)
    }

    /// Parses a full URL (`https://host[:port]/path?query`) into endpoint and path+query.
    pub fn parse_url(url: &str) -> Result<(Self, String), String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!(
                "{url:?} must start with https:// (HTTP/2 over TLS only)"
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("{url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        ServerName::try_from(host.clone())
            .map_err(|e| format!("{url:?}: {host:?} is not a valid server name: {e}"))?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_string());
        Ok((
            Self {
                host,
                port: uri.port_u16().unwrap_or(443),
            },
            path,
        ))
    }

    /// `host:port` (IPv6 hosts in brackets), for the `:authority` and for errors.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The absolute URL of `path` (which starts with `/`) on this endpoint.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.authority())
    }
}

/// A TLS client config offering only `h2`, trusting the public web roots plus the CA
/// certificates in `extra_roots` (PEM), on the ring provider.
pub fn tls_client_config(extra_roots: Option<&Path>) -> Result<Arc<ClientConfig>, SetupError> {
    let extra = match extra_roots {
        Some(path) => certs::load_certs_pem(path)?,
        None => Vec::new(),
    };
    let mut roots = certs::root_store(extra)?;
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // The same provider and versions as certs' `TlsFor::Tcp` configs (ring; TLS 1.3 and 1.2).
    let mut config = ClientConfig::builder_with_provider(certs::ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(SetupError::Rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// An answer read in full.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body (at most 64 KiB).
    pub body: Bytes,
}

/// One HTTP/2 connection to one endpoint, shared by concurrent requests.
pub struct H2Client {
    endpoint: Endpoint,
    connector: TlsConnector,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<SendRequest<String>>>,
}

impl std::fmt::Debug for H2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Client")
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl H2Client {
    /// A client for `endpoint`; connects lazily on the first request.
    pub fn new(endpoint: Endpoint, tls: Arc<ClientConfig>, timeout: Duration) -> Self {
        Self {
            endpoint,
            connector: TlsConnector::from(tls),
            timeout,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends `req` (its URI absolute, from [`Endpoint::url`]) and reads the whole answer,
    /// within the timeout. After any failure the connection is dropped and re-opened on the
    /// next request.
    pub async fn send(&self, req: Request<String>) -> Result<HttpResponse, PushError> {
        match tokio::time::timeout(self.timeout, self.send_inner(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                self.forget().await;
                Err(e)
            }
            Err(_) => {
                self.forget().await;
                Err(PushError::Timeout {
                    endpoint: self.endpoint.authority(),
                    timeout: self.timeout,
                })
            }
        }
    }

    async fn send_inner(&self, req: Request<String>) -> Result<HttpResponse, PushError> {
        let mut sender = self.sender().await?;
        let http_err = |source| PushError::Http {
            endpoint: self.endpoint.authority(),
            source,
        };
        sender.ready().await.map_err(http_err)?;
        let resp = sender.send_request(req).await.map_err(http_err)?;
        let (parts, body) = resp.into_parts();
        let body = self.collect(body).await?;
        Ok(HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn forget(&self) {
        *self.conn.lock().await = None;
    }

    async fn sender(&self) -> Result<SendRequest<String>, PushError> {
        let mut guard = self.conn.lock().await;
        if let Some(sender) = guard.as_ref() {
            if !sender.is_closed() {
                return Ok(sender.clone());
            }
        }
        let sender = self.connect().await?;
        *guard = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(&self) -> Result<SendRequest<String>, PushError> {
        let authority = self.endpoint.authority();
        let tcp = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await
            .map_err(|source| PushError::Connect {
                endpoint: authority.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let server_name =
            ServerName::try_from(self.endpoint.host.clone()).map_err(|e| PushError::Tls {
                endpoint: authority.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
        let tls = self
            .connector
            .connect(server_name, tcp)
            .await
            .map_err(|source| PushError::Tls {
                endpoint: authority.clone(),
                source,
            })?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if alpn.as_deref() != Some(b"h2".as_slice()) {
            return Err(PushError::NotHttp2 {
                endpoint: authority,
                alpn: alpn.map_or_else(
                    || "nothing".to_string(),
                    |p| String::from_utf8_lossy(&p).into_owned(),
                ),
            });
        }
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| PushError::Http {
                endpoint: authority.clone(),
                source,
            })?;
        let span = tracing::debug_span!("push_connection", endpoint = %authority);
        tokio::spawn(
            async move {
                match conn.await {
                    Ok(()) => tracing::debug!("connection closed"),
                    Err(e) => tracing::debug!(error = %e, "connection failed"),
                }
            }
            .instrument(span),
        );
        tracing::debug!(endpoint = %authority, "opened http/2 connection");
        Ok(sender)
    }

    async fn collect(&self, mut body: Incoming) -> Result<Bytes, PushError> {
        let mut buf = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.map_err(|source| PushError::Http {
                endpoint: self.endpoint.authority(),
                source,
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_RESPONSE_BODY {
                    return Err(PushError::BadResponse {
                        endpoint: self.endpoint.authority(),
                        reason: format!("response body larger than {MAX_RESPONSE_BODY} bytes"),
                    });
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_base_urls() {
        let e = Endpoint::parse("https://api.push.apple.com").expect("valid");
        assert_eq!(e.authority(), "api.push.apple.com:443");
        assert_eq!(
            Endpoint::parse("https://127.0.0.1:8443/")
                .expect("valid")
                .url("/3/device/ab"),
            "https://127.0.0.1:8443/3/device/ab"
        );
        assert!(Endpoint::parse("http://api.push.apple.com").is_err());
        assert!(Endpoint::parse("https://api.push.apple.com/3/device").is_err());
        assert!(Endpoint::parse("api.push.apple.com").is_err());
        let (e, path) = Endpoint::parse_url("https://oauth2.googleapis.com/token").expect("valid");
        assert_eq!(
            (e.authority().as_str(), path.as_str()),
            ("oauth2.googleapis.com:443", "/token")
        );
        assert_eq!(
            Endpoint::parse("https://[::1]:9000")
                .expect("v6")
                .authority(),
            "[::1]:9000"
        );
    }
}
