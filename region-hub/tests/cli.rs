//! The `region-hub` binary's helper commands: keygen, mint-token, --check-config.

use std::path::PathBuf;
use std::process::Command;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trackline-hub-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create dir");
    dir
}

fn hub(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_region-hub"))
        .args(args)
        .output()
        .expect("run region-hub")
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
