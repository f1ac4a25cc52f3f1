//! The one-command demo: a hub and an edge in this process, on the dev PKI, plus the scenario.

use crate::consumer::HubTarget;
use crate::driver::EdgeTarget;
use crate::report::Report;
use crate::scenario::{self, ScenarioConfig, Targets};
use anyhow::Context;
use certs::{DevPki, NodeCert, NodeRole};
use protocol::token::{encode_public_key, Subject, TokenSigner};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Key id of the demo's token signing key.
pub const DEMO_KID: u32 = 1;

/// Files the demo makes on first run in its data dir and reuses afterwards.
#[derive(Debug, Clone)]
pub struct DemoEnv {
    pub data_dir: PathBuf,
    pub certs_dir: PathBuf,
    pub ca_pem: PathBuf,
    pub hub_tls: nodekit::TlsFiles,
    pub edge_tls: nodekit::TlsFiles,
    pub token_key: PathBuf,
    pub token_public_key: String,
}

impl DemoEnv {
    /// Creates (or reuses) the dev CA, the hub and edge certificates and the token key.
    pub fn prepare(data_dir: &Path) -> anyhow::Result<Self> {
        let certs_dir = data_dir.join("certs");
        std::fs::create_dir_all(&certs_dir)
            .with_context(|| format!("creating {}", certs_dir.display()))?;
        let pki = DevPki::load_or_create(&certs_dir).context("dev certificate authority")?;
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let tls_for = |stem: &str, role: NodeRole| -> anyhow::Result<nodekit::TlsFiles> {
            NodeCert::load_or_issue(&pki, &certs_dir, stem, &sans, role)
                .with_context(|| format!("{stem} certificate"))?;
            let (cert, key) = NodeCert::paths(&certs_dir, stem);
            Ok(nodekit::TlsFiles {
                cert,
                key,
                ca: certs_dir.join("ca.pem"),
            })
        };
        let hub_tls = tls_for("hub", NodeRole::Hub)?;
        let edge_tls = tls_for("edge", NodeRole::Edge)?;
        let token_key = data_dir.join("token-signing.pk8");
        if !token_key.exists() {
            let pkcs8 =
                TokenSigner::generate_pkcs8().context("generating the token signing key")?;
            write_private(&token_key, &pkcs8)?;
        }
        let signer = load_signer(&token_key)?;
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            ca_pem: certs_dir.join("ca.pem"),
            certs_dir,
            hub_tls,
            edge_tls,
            token_key,
            token_public_key: encode_public_key(&signer.public_key()),
        })
    }

    pub fn signer(&self) -> anyhow::Result<TokenSigner> {
        load_signer(&self.token_key)
    }

    /// Trust roots for talking to the demo's nodes.
    pub fn roots(&self) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
        Ok(certs::load_certs_pem(&self.ca_pem)?)
    }
}

fn load_signer(path: &Path) -> anyhow::Result<TokenSigner> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    TokenSigner::from_pkcs8(DEMO_KID, &bytes).with_context(|| format!("loading {}", path.display()))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Listen addresses of the in-process nodes.
#[derive(Debug, Clone, Copy)]
pub struct DemoPorts {
    pub ip: std::net::IpAddr,
    /// Use the nodes' default ports instead of ephemeral ones.
    pub fixed: bool,
}

fn addr(ports: DemoPorts, fixed: u16) -> SocketAddr {
    SocketAddr::new(ports.ip, if ports.fixed { fixed } else { 0 })
}

/// Hub config for the demo: the scenario's road network and the run's clock.
pub fn hub_config(
    env: &DemoEnv,
    ports: DemoPorts,
    cfg: &ScenarioConfig,
    clock: nodekit::ClockConfig,
) -> region_hub::HubConfig {
    region_hub::HubConfig {
        map: cfg.map.clone(),
        map_pbf: cfg.map_pbf.clone(),
        clock,
        hub_id: "hub-demo".into(),
        link_listen: addr(ports, 7443),
        webtransport_listen: addr(ports, 4434),
        https_listen: addr(ports, 9443),
        http_listen: Some(addr(ports, 8080)),
        admin_listen: addr(ports, 9102),
        data_dir: env.data_dir.join("hub"),
        tls: env.hub_tls.clone(),
        token_signing_key: env.token_key.clone(),
        token_kid: DEMO_KID,
        ..Default::default()
    }
}

/// Edge config for the demo, pointed at the hub's link address, on the run's clock.
pub fn edge_config(
    env: &DemoEnv,
    ports: DemoPorts,
    hub_link: SocketAddr,
    clock: nodekit::ClockConfig,
) -> edge_node::EdgeConfig {
    edge_node::EdgeConfig {
        clock,
        edge_id: "edge-demo".into(),
        quic_listen: addr(ports, 4433),
        https_listen: addr(ports, 8443),
        admin_listen: addr(ports, 9101),
        tls: env.edge_tls.clone(),
        hubs: vec![edge_node::config::HubConfig {
            addr: hub_link,
            server_name: "localhost".into(),
            ..Default::default()
        }],
        token_keys: vec![nodekit::TokenKeyConfig {
            kid: DEMO_KID,
            public_key: env.token_public_key.clone(),
        }],
        ..Default::default()
    }
}

/// Where the nodes of a run listen.
#[derive(Debug, Clone, Copy)]
pub struct NodeAddrs {
    pub edge_quic: SocketAddr,
    pub edge_https: SocketAddr,
    pub edge_admin: SocketAddr,
    pub hub_https: SocketAddr,
    pub hub_wt: SocketAddr,
    /// SHA-256 of the hub's WebTransport certificate.
    pub hub_wt_hash: [u8; 32],
    pub hub_http: Option<SocketAddr>,
}

/// Builds what the scenario needs to reach the in-process (or any dev-PKI) nodes, on `clock`
/// (the nodes' clock: simulated time in a time-compressed run).
pub fn targets(env: &DemoEnv, a: NodeAddrs, clock: nodekit::Clock) -> anyhow::Result<Targets> {
    let NodeAddrs {
        edge_quic,
        edge_https,
        edge_admin,
        hub_https,
        hub_wt,
        hub_wt_hash,
        hub_http,
    } = a;
    let roots = env.roots()?;
    let tcp_tls =
        certs::client_config_with_roots(roots.clone(), &[b"h2", b"http/1.1"], certs::TlsFor::Tcp)?;
    let ws_tls =
        certs::client_config_with_roots(roots.clone(), &[b"http/1.1"], certs::TlsFor::Tcp)?;
    let quic_tls =
        certs::client_config_with_roots(roots, &[protocol::ALPN_DRIVER], certs::TlsFor::Quic)?;
    let mut quic = certs::quinn_client_config(quic_tls)?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    quic.transport_config(Arc::new(transport));
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tcp_tls)
        .build()
        .context("building the HTTPS client")?;
    let signer = Arc::new(env.signer()?);
    let operator_token = signer.sign(Subject::Operator, nodekit::unix_s(), 24 * 3600);
    Ok(Targets {
        edge: EdgeTarget {
            quic_addr: edge_quic,
            https_authority: format!("localhost:{}", edge_https.port()),
            server_name: "localhost".into(),
            http: http.clone(),
        },
        edge_admin_url: format!("http://{edge_admin}"),
        hub: HubTarget {
            https_addr: hub_https,
            webtransport_addr: hub_wt,
            server_name: "localhost".into(),
            webtransport_cert_sha256: hub_wt_hash,
            tls: Arc::new(ws_tls),
        },
        hub_url: format!("https://localhost:{}", hub_https.port()),
        hub_page_url: hub_http.map(|a| format!("http://127.0.0.1:{}", a.port())),
        hub_http: http,
        edge_quic_config: quic,
        operator_token,
        driver_signer: signer,
        clock,
    })
}

/// Starts a hub and an edge, runs the scenario, stops them and returns the report.
pub async fn run_demo(
    data_dir: &Path,
    ports: DemoPorts,
    cfg: &ScenarioConfig,
) -> anyhow::Result<Report> {
    let env = DemoEnv::prepare(data_dir)?;
    // One simulated clock for the hub, the edge and the simulator.
    let clock = nodekit::ClockConfig {
        speedup: cfg.speedup,
        epoch_ms: Some(nodekit::unix_ms()),
    };
    clock.validate().map_err(anyhow::Error::msg)?;
    let hub = region_hub::spawn(hub_config(&env, ports, cfg, clock))
        .await
        .context("starting the hub")?;
    let edge = edge_node::spawn(edge_config(&env, ports, hub.link_addr(), clock))
        .await
        .context("starting the edge")?;
    let loopback = |a: SocketAddr| SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), a.port());
    println!(
        "hub:  https://localhost:{}  (WebTransport udp/{}, edges udp/{}, admin http://{})",
        hub.https_addr().port(),
        hub.webtransport_addr().port(),
        hub.link_addr().port(),
        hub.admin_addr()
    );
    println!(
        "edge: quic udp/{}  https://localhost:{}  (admin http://{})",
        edge.quic_addr().port(),
        edge.https_addr().port(),
        edge.admin_addr()
    );
    let addrs = NodeAddrs {
        edge_quic: loopback(edge.quic_addr()),
        edge_https: loopback(edge.https_addr()),
        edge_admin: loopback(edge.admin_addr()),
        hub_https: loopback(hub.https_addr()),
        hub_wt: loopback(hub.webtransport_addr()),
        hub_wt_hash: hub.webtransport_cert_hash(),
        hub_http: hub.http_addr(),
    };
    let targets = targets(&env, addrs, clock.clock())?;
    let report = scenario::run(cfg, &targets, "demo").await;
    edge.shutdown();
    hub.shutdown();
    edge.join().await;
    hub.join().await;
    report
}
