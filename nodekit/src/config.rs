//! Config files (TOML), TLS file sets and token verification keys shared by both node binaries.

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Reads a TOML config file, or returns the defaults when no file is given. Unknown keys are
/// an error (a typo should not silently fall back to a default). The binaries layer the
/// environment and `--set` on top with [`crate::ConfigLayers`]; this is the file alone.
pub fn load_config<T: serde::de::DeserializeOwned + Default>(
    path: Option<&Path>,
) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    Ok(crate::ConfigLayers::new("", &[]).load(Some(path), std::iter::empty(), &[])?)
}

/// The PEM files a node's TLS needs: its certificate chain and key, and the cluster CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf (PEM, PKCS#8 or SEC1).
    pub key: PathBuf,
    /// Cluster CA certificate(s) (PEM): peers must chain to it.
    pub ca: PathBuf,
}

impl Default for TlsFiles {
    fn default() -> Self {
        Self {
            cert: PathBuf::from("certs/node.pem"),
            key: PathBuf::from("certs/node.key"),
            ca: PathBuf::from("certs/ca.pem"),
        }
    }
}

/// Loaded TLS material.
#[derive(Debug)]
pub struct LoadedTls {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
}

impl Clone for LoadedTls {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
        }
    }
}

impl TlsFiles {
    /// Loads the three files; the error names the file that failed.
    pub fn load(&self) -> anyhow::Result<LoadedTls> {
        let m = certs::TlsMaterial::load(&self.cert, &self.key, Some(&self.ca))?;
        anyhow::ensure!(
            !m.ca_roots.is_empty(),
            "no CA certificate found in {}",
            self.ca.display()
        );
        Ok(LoadedTls {
            chain: m.chain,
            key: m.key,
            roots: m.ca_roots,
        })
    }
}

/// One public key that token signatures are checked against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyConfig {
    /// Key id carried in the token (`kid`).
    pub kid: u32,
    /// Ed25519 public key, base64url (as printed by `region-hub keygen`).
    pub public_key: String,
}

/// Builds a verifier from configured keys.
pub fn to_verifier(keys: &[TokenKeyConfig]) -> anyhow::Result<protocol::token::TokenVerifier> {
    let mut v = protocol::token::TokenVerifier::new();
    for k in keys {
        let key = protocol::token::decode_public_key(&k.public_key)
            .with_context(|| format!("token key kid={} is not a valid public key", k.kid))?;
        v.add_key(k.kid, key);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_and_token_keys_refuse_unknown_keys() {
        let tls = "cert = \"a.pem\"\nkey = \"a.key\"\nca = \"ca.pem\"\n";
        toml::from_str::<TlsFiles>(tls).expect("the three files");
        let err = toml::from_str::<TlsFiles>(&format!("{tls}chain = \"b.pem\"\n"))
            .expect_err("unknown key");
        assert!(err.to_string().contains("chain"), "{err}");
        let err = toml::from_str::<TokenKeyConfig>("kid = 1\npublic_key = \"x\"\nkey_id = 2\n")
            .expect_err("unknown key");
        assert!(err.to_string().contains("key_id"), "{err}");
    }
}
