//! The dev cluster PKI: one CA on disk that issues node certificates for mTLS and HTTPS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::inspect::CertSummary;
use crate::load::{parse_certs_pem, parse_key_pem};
use crate::CertError;

/// Common name of the dev cluster CA.
pub const CA_COMMON_NAME: &str = "Trackline dev cluster CA";
/// Organization put into every certificate this PKI makes.
pub const ORGANIZATION: &str = "Trackline";
/// File name of the CA certificate inside the PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the PKI directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Validity of the dev CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of node certificates issued by the dev CA.
pub const NODE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far into the past `not_before` is set, to tolerate clock skew between machines.
const BACKDATE: Duration = Duration::from_secs(3600);

/// What a node certificate is for; written into the subject's OU so it shows up in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum NodeRole {
    /// An edge node (drivers connect to it, it connects to hubs).
    Edge,
    /// A region hub.
    Hub,
    /// A client tool (simulator, admin CLI) authenticating with mTLS.
    Client,
}

impl NodeRole {
    /// Lower-case name used in the certificate OU and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Edge => "edge",
            NodeRole::Hub => "hub",
            NodeRole::Client => "client",
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cluster CA loaded from (or created in) a directory, able to issue node certificates.
pub struct DevPki {
    dir: PathBuf,
    ca_cert_pem: String,
    ca_cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for DevPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevPki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DevPki {
    /// Loads `dir/ca.pem` + `dir/ca.key`, or creates a new ECDSA P-256 CA there if neither exists.
    ///
    /// The key is written with mode 0600. If only one of the two files exists this fails
    /// rather than overwrite it.
    pub fn load_or_create(dir: &Path) -> Result<DevPki, CertError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(dir),
            (false, false) => Self::create(dir),
            (true, false) => Err(CertError::IncompleteCa {
                dir: dir.to_path_buf(),
                present: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(CertError::IncompleteCa {
                dir: dir.to_path_buf(),
                present: key_path,
                missing: cert_path,
            }),
        }
    }

    /// Loads an existing CA from `dir`; fails if the files are missing or do not match.
    pub fn load(dir: &Path) -> Result<DevPki, CertError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let ca_cert_pem = read_string(&cert_path)?;
        let key_pem = read_string(&key_path)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| CertError::generate(format!("parse CA key {}", key_path.display()), e))?;
        let ca_cert_der = parse_certs_pem(&ca_cert_pem, &cert_path.display().to_string())?
            .into_iter()
            .next()
            .ok_or_else(|| CertError::NoCertificates {
                path: cert_path.clone(),
            })?;
        check_key_matches(&ca_cert_der, &key, &cert_path, &key_path)?;
        let issuer = Issuer::from_ca_cert_der(&ca_cert_der, key).map_err(|e| {
            CertError::generate(format!("use {} as issuer", cert_path.display()), e)
        })?;
        tracing::debug!(dir = %dir.display(), "loaded dev cluster ca");
        Ok(DevPki {
            dir: dir.to_path_buf(),
            ca_cert_pem,
            ca_cert_der,
            issuer,
        })
    }

    fn create(dir: &Path) -> Result<DevPki, CertError> {
        create_dir(dir)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CertError::generate("generate the CA key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(CA_COMMON_NAME, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CertError::generate("self-sign the cluster CA", e))?;
        let ca_cert_pem = cert.pem();
        write_private(&dir.join(CA_KEY_FILE), &key.serialize_pem())?;
        write_public(&dir.join(CA_CERT_FILE), &ca_cert_pem)?;
        tracing::info!(dir = %dir.display(), "created dev cluster ca");
        Ok(DevPki {
            dir: dir.to_path_buf(),
            ca_cert_pem,
            ca_cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The directory the CA lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate as PEM (what nodes use as `tls.ca`).
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The CA certificate as DER, ready to use as a trust root.
    pub fn ca_cert_der(&self) -> CertificateDer<'static> {
        self.ca_cert_der.clone()
    }

    /// Issues an ECDSA P-256 leaf for `name` with serverAuth + clientAuth EKUs.
    ///
    /// `sans` may mix DNS names (`localhost`) and IP addresses (`127.0.0.1`). The subject is
    /// `CN=<name>, OU=<role>, O=Trackline`. The returned chain is leaf then CA.
    pub fn issue_node(
        &self,
        name: &str,
        sans: &[String],
        role: NodeRole,
    ) -> Result<NodeCert, CertError> {
        for san in sans {
            check_san(san)?;
        }
        let mut params =
            CertificateParams::new(sans.to_vec()).map_err(|e| CertError::InvalidSan {
                san: sans.join(","),
                reason: e.to_string(),
            })?;
        params.distinguished_name = distinguished_name(name, Some(role));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_VALIDITY);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CertError::generate(format!("generate key for node {name}"), e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CertError::generate(format!("issue node certificate {name}"), e))?;
        tracing::info!(node = %name, role = %role, "issued node certificate");
        Ok(NodeCert {
            cert_chain_pem: format!("{}{}", cert.pem(), self.ca_cert_pem),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A node's certificate chain and private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCert {
    /// Leaf certificate followed by the CA certificate.
    pub cert_chain_pem: String,
    /// PKCS#8 private key of the leaf.
    pub key_pem: String,
}

impl fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCert")
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl NodeCert {
    /// Paths `dir/stem.pem` and `dir/stem.key`.
    pub fn paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        )
    }

    /// Writes `dir/stem.pem` and `dir/stem.key` (0600) and returns their paths.
    pub fn write_to(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), CertError> {
        create_dir(dir)?;
        let (cert_path, key_path) = Self::paths(dir, stem);
        write_private(&key_path, &self.key_pem)?;
        write_public(&cert_path, &self.cert_chain_pem)?;
        Ok((cert_path, key_path))
    }

    /// Reads `dir/stem.pem` and `dir/stem.key` and checks that both parse.
    pub fn read_from(dir: &Path, stem: &str) -> Result<NodeCert, CertError> {
        let (cert_path, key_path) = Self::paths(dir, stem);
        let node = NodeCert {
            cert_chain_pem: read_string(&cert_path)?,
            key_pem: read_string(&key_path)?,
        };
        parse_certs_pem(&node.cert_chain_pem, &cert_path.display().to_string())?;
        parse_key_pem(&node.key_pem, &key_path.display().to_string())?;
        Ok(node)
    }

    /// Reuses `dir/<name>.pem`/`.key` if both exist and the leaf is still valid; otherwise
    /// issues a new certificate from `pki` and writes it there.
    ///
    /// Existing files are reused as they are, even if their SANs differ from `sans`.
    pub fn load_or_issue(
        pki: &DevPki,
        dir: &Path,
        name: &str,
        sans: &[String],
        role: NodeRole,
    ) -> Result<NodeCert, CertError> {
        let (cert_path, key_path) = Self::paths(dir, name);
        if cert_path.exists() && key_path.exists() {
            let existing = Self::read_from(dir, name)?;
            if existing.leaf_summary()?.is_valid_at(SystemTime::now()) {
                return Ok(existing);
            }
            tracing::info!(node = %name, "existing node certificate expired, issuing a new one");
        }
        let node = pki.issue_node(name, sans, role)?;
        node.write_to(dir, name)?;
        Ok(node)
    }

    /// The chain as DER, leaf first.
    pub fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>, CertError> {
        parse_certs_pem(&self.cert_chain_pem, "node certificate chain")
    }

    /// The private key as DER.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, CertError> {
        parse_key_pem(&self.key_pem, "node private key")
    }

    /// Subject, SANs and validity of the leaf certificate.
    pub fn leaf_summary(&self) -> Result<CertSummary, CertError> {
        let chain = self.cert_chain()?;
        let leaf = chain.first().ok_or_else(|| CertError::NoCertificates {
            path: PathBuf::from("node certificate chain"),
        })?;
        CertSummary::from_der(leaf, "node leaf certificate")
    }
}

/// Accepts IP addresses, DNS names and `*.`-wildcard DNS names; rejects anything a TLS
/// client could never match (spaces, empty labels, non-ASCII).
fn check_san(san: &str) -> Result<(), CertError> {
    let name = san.strip_prefix("*.").unwrap_or(san);
    rustls::pki_types::ServerName::try_from(name)
        .map(|_| ())
        .map_err(|e| CertError::InvalidSan {
            san: san.to_owned(),
            reason: e.to_string(),
        })
}

fn distinguished_name(common_name: &str, role: Option<NodeRole>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(role) = role {
        dn.push(DnType::OrganizationalUnitName, role.as_str());
    }
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
}

fn check_key_matches(
    cert: &CertificateDer<'_>,
    key: &KeyPair,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), CertError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| CertError::X509 {
            what: cert_path.display().to_string(),
            reason: e.to_string(),
        })?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(CertError::X509 {
            what: cert_path.display().to_string(),
            reason: format!("its public key does not match {}", key_path.display()),
        });
    }
    Ok(())
}

pub(crate) fn read_string(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|e| CertError::io("read", path, e))
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|e| CertError::io("create directory", dir, e))
}

pub(crate) fn write_public(path: &Path, contents: &str) -> Result<(), CertError> {
    std::fs::write(path, contents).map_err(|e| CertError::io("write", path, e))
}

/// Writes a secret file readable only by its owner (mode 0600 on Unix).
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), CertError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| CertError::io("create", path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| CertError::io("restrict permissions of", path, e))?;
    }
    file.write_all(contents.as_bytes())
        .map_err(|e| CertError::io("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sans() -> Vec<String> {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    }

    #[test]
    fn ca_created_then_reloaded_is_the_same_ca() {
        let dir = crate::test_dir("ca-reload");
        let created = DevPki::load_or_create(&dir).expect("create");
        let reloaded = DevPki::load_or_create(&dir).expect("reload");
        assert_eq!(created.ca_cert_pem(), reloaded.ca_cert_pem());
        assert_eq!(created.ca_cert_der(), reloaded.ca_cert_der());
        let summary = CertSummary::from_der(&reloaded.ca_cert_der(), "ca").expect("parse");
        assert!(summary.is_ca);
        assert!(summary.subject.contains(CA_COMMON_NAME), "{summary:?}");
        assert!(summary.validity() >= Duration::from_secs(9 * 365 * 24 * 3600));
    }

    #[cfg(unix)]
    #[test]
    fn ca_key_is_written_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::test_dir("ca-perms");
        DevPki::load_or_create(&dir).expect("create");
        let mode = std::fs::metadata(dir.join(CA_KEY_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_to_overwrite_half_a_ca() {
        let dir = crate::test_dir("ca-half");
        DevPki::load_or_create(&dir).expect("create");
        std::fs::remove_file(dir.join(CA_KEY_FILE)).expect("remove key");
        let err = DevPki::load_or_create(&dir).expect_err("half a CA");
        assert!(matches!(err, CertError::IncompleteCa { .. }), "{err}");
        assert!(dir.join(CA_CERT_FILE).exists(), "ca.pem must be left alone");
    }

    #[test]
    fn rejects_ca_key_that_does_not_match_certificate() {
        let dir_a = crate::test_dir("ca-mismatch-a");
        let dir_b = crate::test_dir("ca-mismatch-b");
        DevPki::load_or_create(&dir_a).expect("create a");
        DevPki::load_or_create(&dir_b).expect("create b");
        std::fs::copy(dir_b.join(CA_KEY_FILE), dir_a.join(CA_KEY_FILE)).expect("copy");
        let err = DevPki::load(&dir_a).expect_err("mismatched key");
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn node_cert_shows_role_sans_and_ca_issuer() {
        let dir = crate::test_dir("node-fields");
        let pki = DevPki::load_or_create(&dir).expect("pki");
        let node = pki
            .issue_node("hub-eu-1", &sans(), NodeRole::Hub)
            .expect("issue");
        let leaf = node.leaf_summary().expect("leaf");
        assert!(leaf.subject.contains("CN=hub-eu-1"), "{leaf:?}");
        assert!(leaf.subject.contains("OU=hub"), "{leaf:?}");
        assert!(leaf.issuer.contains(CA_COMMON_NAME), "{leaf:?}");
        assert_eq!(leaf.sans, sans());
        assert!(!leaf.is_ca);
        let chain = node.cert_chain().expect("chain");
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], pki.ca_cert_der());
        node.private_key().expect("key parses");
    }

    #[test]
    fn node_cert_from_reloaded_ca_chains_to_the_same_issuer() {
        let dir = crate::test_dir("node-reloaded");
        let created = DevPki::load_or_create(&dir).expect("create");
        drop(created);
        let pki = DevPki::load(&dir).expect("load");
        let node = pki
            .issue_node("edge-1", &sans(), NodeRole::Edge)
            .expect("issue");
        let leaf = node.leaf_summary().expect("leaf");
        let ca = CertSummary::from_der(&pki.ca_cert_der(), "ca").expect("ca");
        assert_eq!(leaf.issuer, ca.subject);
    }

    #[test]
    fn load_or_issue_reuses_existing_files() {
        let dir = crate::test_dir("node-reuse");
        let pki = DevPki::load_or_create(&dir).expect("pki");
        let first =
            NodeCert::load_or_issue(&pki, &dir, "edge-1", &sans(), NodeRole::Edge).expect("issue");
        let second =
            NodeCert::load_or_issue(&pki, &dir, "edge-1", &sans(), NodeRole::Edge).expect("reuse");
        assert_eq!(first, second);
        let fresh = pki
            .issue_node("edge-1", &sans(), NodeRole::Edge)
            .expect("issue");
        assert_ne!(first, fresh, "a new issue makes a new key");
    }

    #[test]
    fn invalid_san_is_reported_with_its_value() {
        let dir = crate::test_dir("node-bad-san");
        let pki = DevPki::load_or_create(&dir).expect("pki");
        let err = pki
            .issue_node(
                "edge-1",
                &["localhost".to_owned(), "bad name".to_owned()],
                NodeRole::Edge,
            )
            .expect_err("DNS name with a space");
        assert!(err.to_string().contains("\"bad name\""), "{err}");
        pki.issue_node(
            "edge-1",
            &["*.edge.local".to_owned(), "::1".to_owned()],
            NodeRole::Edge,
        )
        .expect("wildcard and IPv6 are fine");
    }
}
