//! The `certs` command line: init, issue, browser and show, as a library for the thin binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{
    browser_webtransport_identity, certificate_sha256, load_certs_pem, sha256_base64,
    sha256_js_array, write_identity, CertSummary, DevPki, NodeCert, NodeRole,
};

/// Dev certificates for a Trackline cluster.
#[derive(Debug, Parser)]
#[command(name = "certs", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the dev cluster CA (ca.pem, ca.key) in DIR unless it already exists.
    Init {
        /// PKI directory.
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
    },
    /// Issue a node certificate signed by the CA in DIR (creating the CA if missing).
    Issue {
        /// PKI directory holding ca.pem and ca.key.
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
        /// Node name: the certificate CN and the output file stem (NAME.pem, NAME.key).
        #[arg(long)]
        name: String,
        /// Role written into the certificate OU.
        #[arg(long, value_enum)]
        role: NodeRole,
        /// Subject alternative name (DNS name or IP address); repeatable.
        #[arg(long = "san", default_values = ["localhost", "127.0.0.1"])]
        sans: Vec<String>,
        /// Directory for the node files; defaults to DIR.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Issue a new certificate even if NAME.pem / NAME.key already exist.
        #[arg(long)]
        force: bool,
    },
    /// Write a short-lived self-signed WebTransport certificate and print its SHA-256.
    Browser {
        /// Output directory for STEM.pem and STEM.key.
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        /// Output file stem.
        #[arg(long, default_value = "webtransport")]
        stem: String,
        /// Subject alternative name; repeatable.
        #[arg(long = "san", default_values = ["localhost", "127.0.0.1", "::1"])]
        sans: Vec<String>,
    },
    /// Print subject, issuer, names and expiry of every certificate (*.pem) in DIR.
    Show {
        /// Directory to scan.
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
    },
}

/// Runs one command, writing human-readable output to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { dir } => {
            let existed = dir.join(crate::pki::CA_CERT_FILE).exists();
            let pki = DevPki::load_or_create(&dir)?;
            let verb = if existed { "using existing" } else { "created" };
            writeln!(
                out,
                "{verb} CA {}",
                pki.dir().join(crate::pki::CA_CERT_FILE).display()
            )?;
        }
        Command::Issue {
            dir,
            name,
            role,
            sans,
            out: out_dir,
            force,
        } => {
            let pki = DevPki::load_or_create(&dir)?;
            let out_dir = out_dir.unwrap_or(dir);
            let node = if force {
                let node = pki.issue_node(&name, &sans, role)?;
                node.write_to(&out_dir, &name)?;
                node
            } else {
                NodeCert::load_or_issue(&pki, &out_dir, &name, &sans, role)?
            };
            let (cert_path, key_path) = NodeCert::paths(&out_dir, &name);
            let leaf = node.leaf_summary()?;
            writeln!(out, "{}: {}", cert_path.display(), leaf.subject)?;
            writeln!(out, "  sans: {}", leaf.sans.join(", "))?;
            writeln!(out, "  not after: {}", leaf.not_after_text)?;
            writeln!(out, "{}: private key (0600)", key_path.display())?;
        }
        Command::Browser {
            out: dir,
            stem,
            sans,
        } => {
            let identity = browser_webtransport_identity(&sans)?;
            let (cert_path, key_path) = write_identity(&identity, &dir, &stem)?;
            let hash = certificate_sha256(&identity);
            writeln!(
                out,
                "wrote {} and {}",
                cert_path.display(),
                key_path.display()
            )?;
            writeln!(
                out,
                "valid {} days; restart with a new one before then",
                crate::BROWSER_CERT_VALIDITY_DAYS
            )?;
            writeln!(out, "sha256 base64: {}", sha256_base64(&hash))?;
            writeln!(out, "sha256 bytes: {}", sha256_js_array(&hash))?;
        }
        Command::Show { dir } => show(&dir, out)?,
    }
    Ok(())
}

fn show(dir: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "pem"))
        .collect();
    files.sort();
    if files.is_empty() {
        writeln!(out, "no *.pem files in {}", dir.display())?;
    }
    let now = SystemTime::now();
    for path in files {
        let chain = load_certs_pem(&path)?;
        for (i, der) in chain.iter().enumerate() {
            let what = format!("{} #{i}", path.display());
            let s = CertSummary::from_der(der, &what)?;
            let state = if s.is_valid_at(now) {
                "valid"
            } else {
                "EXPIRED or not yet valid"
            };
            writeln!(out, "{what}: {}", s.subject)?;
            writeln!(out, "  issuer: {}", s.issuer)?;
            if s.is_ca {
                writeln!(out, "  ca: yes")?;
            }
            if !s.sans.is_empty() {
                writeln!(out, "  sans: {}", s.sans.join(", "))?;
            }
            writeln!(out, "  not after: {} ({state})", s.not_after_text)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(args).expect("valid arguments");
        let mut out = Vec::new();
        run(cli, &mut out).expect("command succeeds");
        String::from_utf8(out).expect("utf-8 output")
    }

    #[test]
    fn init_issue_browser_show_round_trip() {
        let dir = crate::test_dir("cli");
        let d = dir.to_str().expect("utf-8 temp path");
        assert!(run_args(&["certs", "init", "--dir", d]).starts_with("created CA"));
        assert!(run_args(&["certs", "init", "--dir", d]).starts_with("using existing CA"));
        let issued = run_args(&[
            "certs",
            "issue",
            "--dir",
            d,
            "--name",
            "edge-1",
            "--role",
            "edge",
            "--san",
            "localhost",
            "--san",
            "10.0.0.7",
        ]);
        assert!(issued.contains("CN=edge-1"), "{issued}");
        assert!(issued.contains("10.0.0.7"), "{issued}");
        let browser = run_args(&["certs", "browser", "--out", d]);
        assert!(browser.contains("sha256 base64: "), "{browser}");
        let shown = run_args(&["certs", "show", "--dir", d]);
        assert!(shown.contains("ca.pem #0"), "{shown}");
        assert!(
            shown.contains("edge-1.pem #1"),
            "chain includes the CA: {shown}"
        );
        assert!(shown.contains("OU=edge"), "{shown}");
        assert!(shown.contains("webtransport.pem #0"), "{shown}");
        assert!(!shown.contains("EXPIRED"), "{shown}");
    }

    #[test]
    fn issue_rejects_unknown_role() {
        let err = Cli::try_parse_from(["certs", "issue", "--name", "x", "--role", "boss"])
            .expect_err("unknown role");
        assert!(err.to_string().contains("boss"), "{err}");
    }
}
