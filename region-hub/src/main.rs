//! `region-hub`: run a region hub, check or print its config, make a token signing key, mint
//! tokens.

use anyhow::Context;
use clap::{Parser, Subcommand};
use protocol::token::Subject;
use protocol::{DeliveryId, DriverId};
use region_hub::HubConfig;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "region-hub",
    version,
    about = "Trackline region hub",
    after_help = "Config layers, later wins: the --config file, then TRACKLINE_HUB_<FIELD> \
                  variables (`__` between nesting levels: TRACKLINE_HUB_CLUSTER_HUB__MIN_COPIES=1), \
                  then --set. Values are TOML; anything else is a plain string."
)]
struct Cli {
    /// Config file (TOML); defaults apply when omitted.
    #[arg(long, env = "TRACKLINE_HUB_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Set one config field over the file and the environment, e.g.
    /// `--set cluster_hub.min_copies=1` (repeatable; the last one of a key wins).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
    /// Validate the config (and read the TLS files it names) and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the effective config (file, environment and --set merged) as TOML, secret
    /// values redacted, and exit; with --check-config, after validating it.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new PKCS#8 Ed25519 token signing key and print its public key.
    Keygen {
        /// Where to write the key (default: `token_signing_key` from the config).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overwrite an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// Print a token signed with the configured key, e.g. a driver's:
    /// `region-hub mint-token --driver 7 --ttl 1h`.
    MintToken {
        #[arg(long, conflicts_with_all = ["delivery", "operator"])]
        driver: Option<u64>,
        #[arg(long, conflicts_with = "operator")]
        delivery: Option<u64>,
        #[arg(long)]
        operator: bool,
        /// Lifetime, e.g. `1h`, `30m`, `7d`.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        ttl: Duration,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    nodekit::init_tracing("info");
    certs::install_default_crypto_provider();
    let config: HubConfig =
        region_hub::config::CONFIG_LAYERS.load_from_process(cli.config.as_deref(), &cli.set)?;
    if cli.print_config && !cli.check_config {
        print!(
            "{}",
            nodekit::redacted_toml(&config).context("printing config")?
        );
        return Ok(());
    }
    config.validate().context("invalid config")?;
    match cli.command {
        Some(Command::Keygen { out, force }) => {
            let path = out.unwrap_or_else(|| config.token_signing_key.clone());
            anyhow::ensure!(
                force || !path.exists(),
                "{} exists (use --force to replace it)",
                path.display()
            );
            let der = protocol::token::TokenSigner::generate_pkcs8()?;
            region_hub::write_private(&path, &der)?;
            let signer = protocol::token::TokenSigner::from_pkcs8(config.token_kid, &der)?;
            println!("wrote {}", path.display());
            println!("kid = {}", config.token_kid);
            println!(
                "public_key = \"{}\"",
                protocol::token::encode_public_key(&signer.public_key())
            );
            return Ok(());
        }
        Some(Command::MintToken {
            driver,
            delivery,
            operator,
            ttl,
        }) => {
            let sub = match (driver, delivery, operator) {
                (Some(d), _, _) => Subject::Driver(DriverId(d)),
                (_, Some(d), _) => Subject::Tracking(DeliveryId(d)),
                (_, _, true) => Subject::Operator,
                _ => anyhow::bail!(
                    "say who the token is for: --driver N, --delivery N or --operator"
                ),
            };
            let signer = region_hub::load_or_create_signing_key(
                &config.token_signing_key,
                config.token_kid,
            )?;
            println!("{}", signer.sign(sub, nodekit::unix_s(), ttl.as_secs()));
            return Ok(());
        }
        None => {}
    }
    if cli.check_config {
        config.tls.load().context("checking tls files")?;
        if let Some(t) = &config.webtransport_tls {
            certs::TlsMaterial::load(&t.cert, &t.key, None)
                .context("checking webtransport_tls files")?;
        }
        if cli.print_config {
            print!(
                "{}",
                nodekit::redacted_toml(&config).context("printing config")?
            );
        } else {
            println!("config ok");
        }
        return Ok(());
    }
    let hub = region_hub::spawn(config).await?;
    tokio::select! {
        _ = nodekit::shutdown_signal() => {
            // SIGTERM / Ctrl-C: hand the deliveries over first (a second signal stops at once).
            tracing::info!("draining, then shutting down");
            tokio::select! {
                all = hub.drain(hub.drain_limit()) => tracing::info!(handed_off = all, "drained"),
                _ = nodekit::shutdown_signal() => tracing::warn!("second signal: stopping now"),
            }
        }
        _ = hub.stopping() => {}
    }
    tracing::info!("shutting down");
    hub.shutdown();
    hub.join().await;
    Ok(())
}
