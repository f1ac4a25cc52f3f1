//! The `edge-node` binary's config layers: file, `TRACKLINE_EDGE_*` variables and `--set`,
//! `--check-config` on the merged config, `--print-config`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("trackline-edge-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create dir");
    dir
}

/// Runs the binary with only the given `TRACKLINE_EDGE_*` / `EDGE_CONFIG` variables (those
/// of the environment running the tests are removed).
fn edge(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-node"));
    for (k, _) in std::env::vars_os() {
        if k.to_str()
            .is_some_and(|k| k.starts_with("TRACKLINE_EDGE_") || k == "EDGE_CONFIG")
        {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run edge-node")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf8")
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn printed(out: &Output) -> edge_node::EdgeConfig {
    toml::from_str(&stdout(out)).expect("--print-config prints a loadable config")
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).expect("write config");
    path.display().to_string()
}

#[test]
fn env_overrides_the_file_and_set_overrides_env() {
    let dir = temp_dir("precedence");
    let config = write(
        &dir.join("edge.toml"),
        "edge_id = \"edge-file\"\nhello_timeout_ms = 1000\n[batch]\nflush_interval_ms = 10\nmax_batch_fixes = 100\n",
    );
    let c = printed(&edge(&[], &["--config", &config, "--print-config"]));
    assert_eq!(
        (c.edge_id.as_str(), c.batch.flush_interval_ms),
        ("edge-file", 10)
    );

    let env = [
        ("TRACKLINE_EDGE_BATCH__FLUSH_INTERVAL_MS", "5"),
        ("TRACKLINE_EDGE_EDGE_ID", "edge-env"),
        ("TRACKLINE_EDGE_HELLO_TIMEOUT_MS", "2000"),
    ];
    let c = printed(&edge(&env, &["--config", &config, "--print-config"]));
    assert_eq!(c.batch.flush_interval_ms, 5, "env beats the file");
    assert_eq!(c.edge_id, "edge-env");
    assert_eq!(c.batch.max_batch_fixes, 100, "the file's other values stay");

    let c = printed(&edge(
        &env,
        &[
            "--config",
            &config,
            "--set",
            "batch.flush_interval_ms=7",
            "--set",
            "edge_id=edge-set",
            "--print-config",
        ],
    ));
    assert_eq!(c.batch.flush_interval_ms, 7, "--set beats env");
    assert_eq!(c.edge_id, "edge-set", "a bare string is a string");
    assert_eq!(
        c.hello_timeout_ms, 2000,
        "env values --set leaves alone stay"
    );

    // EDGE_CONFIG still names the file and is not read as a field.
    let c = printed(&edge(&[("EDGE_CONFIG", &config)], &["--print-config"]));
    assert_eq!(c.edge_id, "edge-file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_name_the_variable_or_argument_and_the_field() {
    let out = edge(
        &[("TRACKLINE_EDGE_BATCH__FLUSH_INTERVAL_MS", "soon")],
        &["--print-config"],
    );
    let err = stderr(&out);
    assert!(
        err.contains("env TRACKLINE_EDGE_BATCH__FLUSH_INTERVAL_MS: invalid type: found string \"soon\", expected u64"),
        "{err}"
    );
    let err = stderr(&edge(&[], &["--set", "batch.flush=5", "--print-config"]));
    assert!(
        err.contains(
            "--set batch.flush: unknown field `flush`, expected one of: flush_interval_ms"
        ),
        "{err}"
    );
    let err = stderr(&edge(&[("TRACKLINE_EDGE_FILTRE__MAX_AGE_S", "5")], &[]));
    assert!(
        err.contains("env TRACKLINE_EDGE_FILTRE__MAX_AGE_S: key `filtre`: unknown field"),
        "{err}"
    );
}

#[test]
fn check_config_validates_the_merged_config() {
    let dir = temp_dir("check");
    let pki = certs::DevPki::load_or_create(&dir.join("ca")).expect("dev ca");
    let node = pki
        .issue_node("edge-1", &["localhost".to_owned()], certs::NodeRole::Edge)
        .expect("edge cert");
    let (cert, key) = node.write_to(&dir, "edge").expect("write cert");
    let ca = dir.join("ca").join(certs::pki::CA_CERT_FILE);
    let public_key = protocol::token::encode_public_key(&[7u8; 32]);
    // The file alone lacks TLS files and token keys; env and --set supply them.
    let config = write(&dir.join("edge.toml"), "edge_id = \"edge-1\"\n");
    let tls_env = [
        (
            "TRACKLINE_EDGE_TLS__CERT",
            cert.to_str().expect("utf8 path"),
        ),
        ("TRACKLINE_EDGE_TLS__KEY", key.to_str().expect("utf8 path")),
        ("TRACKLINE_EDGE_TLS__CA", ca.to_str().expect("utf8 path")),
    ];
    let keys = format!("token_keys=[{{ kid = 1, public_key = \"{public_key}\" }}]");
    let err = stderr(&edge(&tls_env, &["--config", &config, "--check-config"]));
    assert!(err.contains("token_keys"), "{err}");
    let out = edge(
        &tls_env,
        &["--config", &config, "--set", &keys, "--check-config"],
    );
    assert_eq!(stdout(&out).trim(), "config ok");
    let err = stderr(&edge(
        &tls_env,
        &[
            "--config",
            &config,
            "--set",
            &keys,
            "--set",
            "batch.flush_interval_ms=50",
            "--check-config",
        ],
    ));
    assert!(err.contains("batch.flush_interval_ms"), "{err}");
    // Both flags: validated, then printed.
    let c = printed(&edge(
        &tls_env,
        &[
            "--config",
            &config,
            "--set",
            &keys,
            "--check-config",
            "--print-config",
        ],
    ));
    assert_eq!(c.token_keys.len(), 1);
    assert_eq!(
        c.tls.key, key,
        "a path to a key file is printed, not redacted"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn print_config_redacts_secret_values() {
    // The edge config has no secret field today; values under a secret-sounding name are
    // redacted wherever they are, here in the cluster's published keys.
    let out = edge(
        &[],
        &[
            "--set",
            "cluster={ node_id = \"edge-1\", role = \"edge\" }",
            "--set",
            "cluster.publish={ \"edge.webhook_secret\" = \"hunter2\", \"edge.addr_driver\" = \"10.0.1.21:4433\" }",
            "--print-config",
        ],
    );
    let text = stdout(&out);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("\"edge.webhook_secret\" = \"<redacted>\""),
        "{text}"
    );
    assert!(text.contains("10.0.1.21:4433"), "{text}");
}
