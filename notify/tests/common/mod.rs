//! Test support: a real HTTP/2-over-TLS server that records every request, the dev PKI it
//! uses, test signing keys, and JWT/form checks.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use certs::{DevPki, NodeRole, TlsFor};
use hyper::body::{Body, Incoming};
use hyper::{HeaderMap, Method, Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long a test waits for an expected event before failing.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(10);

pub use testkit::TestDir;

/// A fresh directory under the system temp dir, removed on drop.
pub fn test_dir(name: &str) -> TestDir {
    TestDir::new(&format!("notify-{name}"))
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Which accepted connection carried it (0, 1, ...).
    pub connection: u64,
    pub method: Method,
    pub version: Version,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("request has no {name} header: {:?}", self.headers))
            .to_str()
            .expect("ascii header")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// What the server answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

pub type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// Answers with `replies` in order, then with `fallback` forever.
pub fn script(replies: Vec<Reply>, fallback: Reply) -> Responder {
    let queue = parking_lot::Mutex::new(VecDeque::from(replies));
    Arc::new(move |_| queue.lock().pop_front().unwrap_or_else(|| fallback.clone()))
}

/// A local HTTP/2 TLS server (ALPN h2 only) with a certificate from a fresh dev CA.
pub struct TestServer {
    pub addr: SocketAddr,
    /// PEM of the CA that issued the server certificate (for `trust_roots`).
    pub ca_path: PathBuf,
    pub dir: TestDir,
    requests: mpsc::UnboundedReceiver<Recorded>,
    shutdown: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestServer {
    pub async fn start(name: &str, responder: Responder) -> Self {
        let dir = test_dir(name);
        let pki = DevPki::load_or_create(&dir.join("pki")).expect("dev CA");
        let node = pki
            .issue_node(
                "push-test-server",
                &["127.0.0.1".to_string(), "localhost".to_string()],
                NodeRole::Hub,
            )
            .expect("server certificate");
        let tls = certs::server_tls_config(
            node.cert_chain().expect("chain"),
            node.private_key().expect("key"),
            &[b"h2"],
            TlsFor::Tcp,
        )
        .expect("server TLS config");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, pki.ca_cert_pem()).expect("write CA");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, requests) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        tokio::spawn(accept_loop(
            listener,
            acceptor,
            responder,
            tx,
            shutdown.clone(),
        ));
        Self {
            addr,
            ca_path,
            dir,
            requests,
            shutdown,
        }
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The next recorded request; fails the test if none comes within the deadline.
    pub async fn next_request(&mut self) -> Recorded {
        tokio::time::timeout(EVENT_DEADLINE, self.requests.recv())
            .await
            .expect("a request within the deadline")
            .expect("server running")
    }

    /// Asserts that no further request has been recorded (call after the send returned).
    pub fn assert_no_more_requests(&mut self) {
        if let Ok(extra) = self.requests.try_recv() {
            panic!("unexpected extra request: {} {}", extra.method, extra.path);
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    responder: Responder,
    tx: mpsc::UnboundedSender<Recorded>,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(AtomicU64::new(0));
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let connection = connections.fetch_add(1, Ordering::SeqCst);
        let (acceptor, responder, tx, shutdown) = (
            acceptor.clone(),
            responder.clone(),
            tx.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (responder, tx) = (responder.clone(), tx.clone());
                async move {
                    let (parts, mut body) = req.into_parts();
                    let mut bytes = Vec::new();
                    while let Some(frame) =
                        std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                    {
                        if let Ok(data) = frame.expect("request body").into_data() {
                            bytes.extend_from_slice(&data);
                        }
                    }
                    let recorded = Recorded {
                        connection,
                        method: parts.method,
                        version: parts.version,
                        path: parts
                            .uri
                            .path_and_query()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_default(),
                        headers: parts.headers,
                        body: bytes,
                    };
                    let reply = responder(&recorded);
                    let _ = tx.send(recorded);
                    let mut resp = Response::builder().status(reply.status);
                    for (name, value) in &reply.headers {
                        resp = resp.header(name, value);
                    }
                    Ok::<_, Infallible>(resp.body(reply.body).expect("response"))
                }
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

/// A fresh P-256 key written as a `.p8` (PKCS#8 PEM) file; returns its path and public key.
pub fn write_p8(dir: &Path) -> (PathBuf, Vec<u8>) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .expect("generate P-256 key");
    let pair = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .expect("parse key");
    let path = dir.join("AuthKey_TEST.p8");
    std::fs::write(&path, pem("PRIVATE KEY", pkcs8.as_ref())).expect("write p8");
    (path, pair.public_key().as_ref().to_vec())
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The shipped test-only RSA key (PEM) and its public key (PKCS#1 DER) for verification.
pub fn rsa_fixture() -> (String, Vec<u8>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/TEST-ONLY-service-account-rsa2048.pem");
    let text = std::fs::read_to_string(&path).expect("read RSA fixture");
    let PrivateKeyDer::Pkcs8(der) = certs::parse_key_pem(&text, "rsa fixture").expect("PEM") else {
        panic!("fixture must be PKCS#8");
    };
    let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("RSA key");
    (text, pair.public().as_ref().to_vec())
}

/// Verifies a compact JWT's signature and returns its header and claims.
pub fn verify_jwt(
    jwt: &str,
    alg: &'static dyn signature::VerificationAlgorithm,
    public_key: &[u8],
) -> (Value, Value) {
    let (input, sig) = jwt.rsplit_once('.').expect("JWT has a signature");
    let (header, claims) = input.split_once('.').expect("JWT has header and claims");
    let sig = URL_SAFE_NO_PAD.decode(sig).expect("base64url signature");
    signature::UnparsedPublicKey::new(alg, public_key)
        .verify(input.as_bytes(), &sig)
        .expect("JWT signature verifies with the test public key");
    let decode = |part: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
    };
    (decode(header), decode(claims))
}

/// Parses an `application/x-www-form-urlencoded` body.
pub fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    let text = std::str::from_utf8(body).expect("utf-8 form");
    text.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("percent escape"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).expect("utf-8")
}
