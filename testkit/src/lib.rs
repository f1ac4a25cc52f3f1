//! What the workspace's integration tests share, so that each crate's tests do not carry their
//! own copy: a fresh directory per test ([`TestDir`]), a dev PKI inside it ([`Pki`]: a CA and
//! node certificates for loopback), tracing captured per test ([`init_tracing`]), and waiting
//! for a condition with a deadline ([`wait_until`], [`wait_until_async`]).
//!
//! Only dev-dependencies use this crate; it is not part of any binary.

use certs::{DevPki, NodeCert, NodeRole};
use rustls::pki_types::CertificateDer;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A fresh, empty directory under the system temp dir, removed on drop (kept when
/// `TESTKIT_KEEP` is set, to look at a failed test's files). The name holds the process id and
/// a counter, so parallel tests and test binaries never share one.
#[derive(Debug)]
pub struct TestDir(PathBuf);

impl TestDir {
    /// `trackline-<name>-<pid>-<n>` under the temp dir, emptied first.
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "trackline-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("TESTKIT_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A dev CA in `<dir>/pki` and node certificates issued by it for `localhost` and
/// `127.0.0.1`, written beside it.
pub struct Pki {
    pub pki: DevPki,
    pub dir: PathBuf,
}

impl Pki {
    /// Loads or creates the CA under `dir/pki`.
    pub fn new(dir: &Path) -> Self {
        let pki_dir = dir.join("pki");
        let pki = DevPki::load_or_create(&pki_dir).expect("dev pki");
        Self { pki, dir: pki_dir }
    }

    /// The names every test certificate is valid for.
    pub fn sans() -> Vec<String> {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    }

    /// A node certificate in memory (not written).
    pub fn node_cert(&self, name: &str, role: NodeRole) -> NodeCert {
        self.pki
            .issue_node(name, &Self::sans(), role)
            .expect("issue a node certificate")
    }

    /// The certificate files of node `name` (issued once, then reused), as a node's config
    /// names them.
    pub fn node(&self, name: &str, role: NodeRole) -> nodekit::TlsFiles {
        NodeCert::load_or_issue(&self.pki, &self.dir, name, &Self::sans(), role)
            .expect("issue a node certificate");
        let (cert, key) = NodeCert::paths(&self.dir, name);
        nodekit::TlsFiles {
            cert,
            key,
            ca: self.ca_file(),
        }
    }

    /// The CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(certs::pki::CA_CERT_FILE)
    }

    /// The CA certificate, as a client's root store takes it.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.pki.ca_cert_der()
    }

    /// The CA certificate as a list of roots.
    pub fn ca(&self) -> Vec<CertificateDer<'static>> {
        vec![self.ca_der()]
    }
}

/// Installs ring as the process's rustls provider and routes tracing to the test writer, so
/// output is captured per test (`RUST_LOG` to see more; `warn` by default). Safe to call from
/// every test.
pub fn init_tracing() {
    certs::install_default_crypto_provider();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Checks `cond` every 10 ms until it holds; panics naming `what` after `deadline`. For state
/// that has no event to wait on (a metric, a file); prefer awaiting the event where there is one.
pub async fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`wait_until`] for a condition that has to await (a request, a lock).
pub async fn wait_until_async<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_dirs_are_distinct_and_removed_on_drop() {
        let a = TestDir::new("testkit");
        let b = TestDir::new("testkit");
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("f"), b"x").expect("write");
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
    }

    #[test]
    fn node_certificates_chain_to_the_ca_file() {
        let dir = TestDir::new("testkit-pki");
        let pki = Pki::new(&dir);
        let files = pki.node("hub-1", NodeRole::Hub);
        assert!(files.cert.exists() && files.key.exists());
        assert_eq!(files.ca, pki.ca_file());
        assert!(files.ca.exists());
        // issued once: a second call reuses the files
        let again = pki.node("hub-1", NodeRole::Hub);
        assert_eq!(
            std::fs::read(&files.cert).expect("read"),
            std::fs::read(&again.cert).expect("read")
        );
    }
}
