//! The `region-hub` binary's helper commands: keygen, mint-token, --check-config, and its
//! config layers: file, `TRACKLINE_HUB_*` variables and `--set`, `--print-config`.

use std::path::PathBuf;
use std::process::{Command, Output};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trackline-hub-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create dir");
    dir
}

fn hub(args: &[&str]) -> Output {
    hub_with_env(&[], args)
}

/// Runs the binary with only the given `TRACKLINE_HUB_*` variables (those of the environment
/// running the tests are removed).
fn hub_with_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_region-hub"));
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("TRACKLINE_HUB_")) {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run region-hub")
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

fn printed(out: &Output) -> region_hub::HubConfig {
    toml::from_str(&stdout(out)).expect("--print-config prints a loadable config")
}

#[test]
fn keygen_then_mint_token_prints_a_driver_token_that_verifies_with_the_printed_key() {
    let dir = temp_dir("mint");
    let key = dir.join("signing.pk8");
    let config = dir.join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "token_signing_key = {:?}\ntoken_kid = 4\n",
            key.display().to_string()
        ),
    )
    .expect("write config");
    let config = config.display().to_string();

    let out = hub(&["--config", &config, "keygen"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("public_key = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("public key line");
    let public = protocol::token::decode_public_key(public).expect("decode");
    assert!(
        !hub(&["--config", &config, "keygen"]).status.success(),
        "refuses to overwrite the key"
    );

    let out = hub(&[
        "--config",
        &config,
        "mint-token",
        "--driver",
        "7",
        "--ttl",
        "1h",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf8");
    let verifier = protocol::token::TokenVerifier::new().with_key(4, public);
    let (driver, claims) = verifier
        .verify_driver(token.trim(), nodekit::unix_s())
        .expect("verifies");
    assert_eq!(driver, protocol::DriverId(7));
    assert!(claims.exp_s - claims.iat_s == 3600);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_reports_an_invalid_value() {
    let dir = temp_dir("check");
    let config = dir.join("hub.toml");
    std::fs::write(&config, "state_ttl_s = 0\n").expect("write");
    let out = hub(&["--config", &config.display().to_string(), "--check-config"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state_ttl_s must be greater than zero"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn env_overrides_the_file_and_set_overrides_env() {
    let dir = temp_dir("precedence");
    let config = dir.join("hub.toml");
    std::fs::write(
        &config,
        "hub_id = \"hub-file\"\nstate_ttl_s = 100\n[commit]\nqueue = 10\nmax_delay_ms = 4\n[cluster_hub]\nmin_copies = 2\n",
    )
    .expect("write config");
    let config = config.display().to_string();
    let c = printed(&hub(&["--config", &config, "--print-config"]));
    assert_eq!((c.state_ttl_s, c.commit.queue), (100, 10));

    let env = [
        ("TRACKLINE_HUB_STATE_TTL_S", "200"),
        ("TRACKLINE_HUB_COMMIT__QUEUE", "20"),
        ("TRACKLINE_HUB_CLUSTER_HUB__MIN_COPIES", "1"),
    ];
    let c = printed(&hub_with_env(
        &env,
        &["--config", &config, "--print-config"],
    ));
    assert_eq!(c.state_ttl_s, 200, "env beats the file");
    assert_eq!(c.commit.queue, 20);
    assert_eq!(c.cluster_hub.min_copies, 1);
    assert_eq!(c.commit.max_delay_ms, 4, "the file's other values stay");
    assert_eq!(c.hub_id, "hub-file");

    let c = printed(&hub_with_env(
        &env,
        &[
            "--config",
            &config,
            "--set",
            "state_ttl_s=300",
            "--set",
            "https_listen=127.0.0.1:19443",
            "--set",
            "http_listen=\"127.0.0.1:19080\"",
            "--print-config",
        ],
    ));
    assert_eq!(c.state_ttl_s, 300, "--set beats env");
    assert_eq!(c.commit.queue, 20, "env values --set leaves alone stay");
    assert_eq!(c.https_listen.port(), 19443, "a bare address is a string");
    assert_eq!(c.http_listen.map(|a| a.port()), Some(19080));

    // TRACKLINE_HUB_CONFIG names the file and is not read as a field.
    let c = printed(&hub_with_env(
        &[("TRACKLINE_HUB_CONFIG", &config)],
        &["--print-config"],
    ));
    assert_eq!(c.hub_id, "hub-file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_name_the_variable_or_argument_and_the_field() {
    let err = stderr(&hub_with_env(
        &[("TRACKLINE_HUB_STATE_TTL_S", "2h")],
        &["--check-config"],
    ));
    assert!(
        err.contains(
            "env TRACKLINE_HUB_STATE_TTL_S: invalid type: found string \"2h\", expected u64"
        ),
        "{err}"
    );
    let err = stderr(&hub(&["--set", "foo.bar=1", "--print-config"]));
    assert!(
        err.contains("--set foo.bar: key `foo`: unknown field `foo`"),
        "{err}"
    );
    let err = stderr(&hub(&[
        "--set",
        "cluster_hub.min_copys=1",
        "--print-config",
    ]));
    assert!(
        err.contains("--set cluster_hub.min_copys: unknown field `min_copys`"),
        "{err}"
    );
    // Validation runs on the merged config, and the subcommands see it too.
    let err = stderr(&hub(&["--set", "state_ttl_s=0", "--check-config"]));
    assert!(
        err.contains("state_ttl_s must be greater than zero"),
        "{err}"
    );
    let err = stderr(&hub(&["mint-token", "--set", "token_kid=x", "--operator"]));
    assert!(err.contains("--set token_kid: invalid type"), "{err}");
}

#[test]
fn print_config_redacts_secret_values_and_prints_key_paths() {
    // The hub config has no secret field today (keys and push credentials are files); values
    // under a secret-sounding name are redacted wherever they are, here in published keys.
    let out = hub(&[
        "--set",
        "cluster={ node_id = \"hub-1\", publish = { \"hub.webhook_secret\" = \"hunter2\" } }",
        "--set",
        "token_signing_key=/etc/trackline/token-signing.pk8",
        "--print-config",
    ]);
    let text = stdout(&out);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("\"hub.webhook_secret\" = \"<redacted>\""),
        "{text}"
    );
    assert!(
        text.contains("token_signing_key = \"/etc/trackline/token-signing.pk8\""),
        "{text}"
    );
}
