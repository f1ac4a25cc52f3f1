//! Real TLS handshakes (tokio-rustls over loopback TCP, quinn over loopback UDP) with the
//! configs this crate builds from dev PKI certificates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certs::{
    client_config_with_roots, mtls_client_config, mtls_server_config, quinn_client_config,
    quinn_server_config, server_tls_config, CertSummary, DevPki, NodeCert, NodeRole, TlsFor,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use testkit::TestDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const ALPN: &[&[u8]] = &[b"trackline/1"];
const LIMIT: Duration = Duration::from_secs(10);

fn sans() -> Vec<String> {
    vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
}

struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn material(node: &NodeCert) -> Material {
    Material {
        chain: node.cert_chain().expect("chain"),
        key: node.private_key().expect("key"),
    }
}

/// The cluster: a CA, a hub (server) and an edge (client) certificate.
struct Cluster {
    _dir: TestDir,
    ca: CertificateDer<'static>,
    hub: Material,
    edge: Material,
}

fn cluster(name: &str) -> Cluster {
    let dir = TestDir::new(&format!("certs-{name}"));
    let pki = DevPki::load_or_create(&dir).expect("pki");
    let hub = pki
        .issue_node("hub-1", &sans(), NodeRole::Hub)
        .expect("hub");
    let edge = pki
        .issue_node("edge-1", &sans(), NodeRole::Edge)
        .expect("edge");
    Cluster {
        ca: pki.ca_cert_der(),
        hub: material(&hub),
        edge: material(&edge),
        _dir: dir,
    }
}

/// A client certificate from a different CA, and a bare self-signed one.
fn impostors(name: &str) -> Vec<(&'static str, Material)> {
    let dir = TestDir::new(&format!("certs-{name}"));
    let other_pki = DevPki::load_or_create(&dir).expect("other pki");
    let other = other_pki
        .issue_node("edge-1", &sans(), NodeRole::Edge)
        .expect("impostor");
    let self_signed = rcgen::generate_simple_self_signed(sans()).expect("self-signed");
    let self_signed = Material {
        chain: vec![self_signed.cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(self_signed.signing_key.serialize_der().into()),
    };
    vec![
        ("cert from another CA", material(&other)),
        ("self-signed cert", self_signed),
    ]
}

/// Runs one TLS-over-TCP exchange; returns (server result, client result).
/// The server reads "ping", answers "pong" and reports the client's leaf subject.
async fn tcp_exchange(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> (Result<Option<String>, String>, Result<Vec<u8>, String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        let subject = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|leaf| CertSummary::from_der(leaf, "peer").map(|s| s.subject))
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(subject)
    });
    let client_result = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(reply)
    };
    let client_result = tokio::time::timeout(LIMIT, client_result)
        .await
        .unwrap_or_else(|_| Err("client timed out".to_owned()));
    let server_result = match tokio::time::timeout(LIMIT, server_task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(join.to_string()),
        Err(_) => Err("server timed out".to_owned()),
    };
    (server_result, client_result)
}

#[tokio::test]
async fn mtls_tcp_accepts_client_with_cluster_cert() {
    let c = cluster("tcp-accept");
    let server = mtls_server_config(
        c.hub.chain,
        c.hub.key,
        vec![c.ca.clone()],
        ALPN,
        TlsFor::Tcp,
    )
    .expect("server config");
    let client = mtls_client_config(c.edge.chain, c.edge.key, vec![c.ca], ALPN, TlsFor::Tcp)
        .expect("client config");
    let (server_result, client_result) = tcp_exchange(server, client).await;
    let subject = server_result
        .expect("server side")
        .expect("client cert seen");
    assert!(
        subject.contains("CN=edge-1") && subject.contains("OU=edge"),
        "{subject}"
    );
    assert_eq!(client_result.expect("client side"), b"pong");
}

#[tokio::test]
async fn mtls_tcp_rejects_client_cert_not_from_cluster_ca() {
    let c = cluster("tcp-reject");
    for (what, impostor) in impostors("tcp-reject-other") {
        let server = mtls_server_config(
            c.hub.chain.clone(),
            c.hub.key.clone_key(),
            vec![c.ca.clone()],
            ALPN,
            TlsFor::Tcp,
        )
        .expect("server config");
        let client = mtls_client_config(
            impostor.chain,
            impostor.key,
            vec![c.ca.clone()],
            ALPN,
            TlsFor::Tcp,
        )
        .expect("client config");
        let (server_result, client_result) = tcp_exchange(server, client).await;
        let server_err = server_result.expect_err(what);
        // Same CA name but another key fails the signature check; no known issuer fails
        // path building. Either way the server names the client certificate as the reason.
        assert!(
            server_err.contains("invalid peer certificate"),
            "{what}: {server_err}"
        );
        assert!(
            client_result.is_err(),
            "{what}: client must not get a reply"
        );
    }
}

#[tokio::test]
async fn mtls_tcp_rejects_client_without_cert() {
    let c = cluster("tcp-no-client-cert");
    let server = mtls_server_config(
        c.hub.chain,
        c.hub.key,
        vec![c.ca.clone()],
        ALPN,
        TlsFor::Tcp,
    )
    .expect("server config");
    let client = client_config_with_roots(vec![c.ca], ALPN, TlsFor::Tcp).expect("client config");
    let (server_result, client_result) = tcp_exchange(server, client).await;
    let server_err = server_result.expect_err("server must require a certificate");
    assert!(server_err.contains("no certificates"), "{server_err}");
    let client_err = client_result.expect_err("client must be refused");
    assert!(client_err.contains("CertificateRequired"), "{client_err}");
}

#[tokio::test]
async fn client_rejects_server_cert_from_another_ca() {
    let c = cluster("tcp-server-impostor");
    let (_, impostor) = impostors("tcp-server-impostor-other").remove(0);
    let server =
        server_tls_config(impostor.chain, impostor.key, ALPN, TlsFor::Tcp).expect("server config");
    let client = client_config_with_roots(vec![c.ca], ALPN, TlsFor::Tcp).expect("client config");
    let (_, client_result) = tcp_exchange(server, client).await;
    let err = client_result.expect_err("client must refuse the server");
    assert!(
        err.contains("UnknownIssuer") || err.contains("invalid peer certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn https_server_config_negotiates_h2_alpn() {
    let c = cluster("tcp-alpn");
    let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];
    let server =
        server_tls_config(c.hub.chain, c.hub.key, alpn, TlsFor::Tcp).expect("server config");
    let client = client_config_with_roots(vec![c.ca], &[b"h2"], TlsFor::Tcp).expect("client");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor.accept(tcp).await.expect("handshake");
        tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("ip name");
    let tls = TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .expect("client handshake (IP SAN)");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let server_alpn = tokio::time::timeout(LIMIT, server_task)
        .await
        .expect("server in time")
        .expect("server task");
    assert_eq!(server_alpn.as_deref(), Some(&b"h2"[..]));
}

/// Runs one QUIC connection: the client sends "ping" on a bi stream, the server echoes it.
/// Returns (server result with client leaf subject, client result with echoed bytes).
async fn quic_exchange(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> (Result<String, String>, Result<Vec<u8>, String>) {
    let server_config = quinn_server_config(server).expect("quinn server config");
    let client_config = quinn_client_config(client).expect("quinn client config");
    let localhost: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server_endpoint = quinn::Endpoint::server(server_config, localhost).expect("server bind");
    let addr = server_endpoint.local_addr().expect("addr");
    let client_endpoint = quinn::Endpoint::client(localhost).expect("client bind");

    let accept_endpoint = server_endpoint.clone();
    let server_task = tokio::spawn(async move {
        let incoming = accept_endpoint
            .accept()
            .await
            .ok_or_else(|| "endpoint closed".to_owned())?;
        let conn = incoming.await.map_err(|e| e.to_string())?;
        let subject = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| certs.first().cloned())
            .ok_or_else(|| "no client certificate".to_owned())
            .and_then(|leaf| {
                CertSummary::from_der(&leaf, "peer")
                    .map(|s| s.subject)
                    .map_err(|e| e.to_string())
            })?;
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let data = recv.read_to_end(64).await.map_err(|e| e.to_string())?;
        send.write_all(&data).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        conn.closed().await;
        Ok::<_, String>(subject)
    });

    let client_result = async {
        let conn = client_endpoint
            .connect_with(client_config, addr, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(b"ping").await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let reply = recv.read_to_end(64).await.map_err(|e| e.to_string())?;
        conn.close(0u32.into(), b"done");
        Ok::<_, String>(reply)
    };
    let client_result = tokio::time::timeout(LIMIT, client_result)
        .await
        .unwrap_or_else(|_| Err("client timed out".to_owned()));
    let server_result = match tokio::time::timeout(LIMIT, server_task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(join.to_string()),
        Err(_) => Err("server timed out".to_owned()),
    };
    server_endpoint.close(0u32.into(), b"test over");
    client_endpoint.close(0u32.into(), b"test over");
    (server_result, client_result)
}

#[tokio::test]
async fn quinn_mtls_loopback_connects_with_cluster_certs() {
    let c = cluster("quic-accept");
    let server = mtls_server_config(
        c.hub.chain,
        c.hub.key,
        vec![c.ca.clone()],
        ALPN,
        TlsFor::Quic,
    )
    .expect("server config");
    let client = mtls_client_config(c.edge.chain, c.edge.key, vec![c.ca], ALPN, TlsFor::Quic)
        .expect("client config");
    let (server_result, client_result) = quic_exchange(server, client).await;
    assert_eq!(client_result.expect("client side"), b"ping");
    let subject = server_result.expect("server side");
    assert!(subject.contains("CN=edge-1"), "{subject}");
}

#[tokio::test]
async fn quinn_mtls_rejects_client_cert_from_another_ca() {
    let c = cluster("quic-reject");
    let (what, impostor) = impostors("quic-reject-other").remove(0);
    let server = mtls_server_config(
        c.hub.chain,
        c.hub.key,
        vec![c.ca.clone()],
        ALPN,
        TlsFor::Quic,
    )
    .expect("server config");
    let client = mtls_client_config(impostor.chain, impostor.key, vec![c.ca], ALPN, TlsFor::Quic)
        .expect("client config");
    let (server_result, client_result) = quic_exchange(server, client).await;
    let server_err = server_result.expect_err(what);
    assert!(
        server_err.contains("invalid peer certificate"),
        "{what}: {server_err}"
    );
    assert!(client_result.is_err(), "{what}: {client_result:?}");
}
