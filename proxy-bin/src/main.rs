//! The `needle` binary: the sidecar, its configuration check, and the
//! iptables set-up of a pod.
//!
//! - `needle` (or `needle run`): runs the sidecar with the embedded
//!   defaults, overridden by a TOML file, `NEEDLE_*` variables and flags.
//! - `needle check-config [FILE]`: loads the configuration as `run` would,
//!   prints every setting with where its value came from, and exits 0, or
//!   exits 2 naming the bad setting.
//! - `needle demo`: a whole mesh on loopback for a few seconds, explained.
//! - `needle settings`: lists every setting with its variable and default.
//! - `needle init`: installs the iptables rules that send the pod's traffic
//!   through the sidecar (an init container runs it).
//!
//! All proxy logic lives in `needle-io` and `needle-core`; this crate reads
//! configuration, starts things and stops them.

mod admin;
mod config;
mod demo;
mod discovery_file;
mod init;
mod logging;
mod sidecar;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Layers};

/// Needle: a small, fast, secure service-mesh sidecar proxy.
///
/// With no arguments it runs the sidecar on its standard ports: outbound
/// 127.0.0.1:4140 (the application's connections, redirected by iptables),
/// inbound 0.0.0.0:4143 (connections to the application, mutual TLS between
/// sidecars) and admin 0.0.0.0:4191 (/metrics /ready /live /config
/// /log-level /shutdown). Every setting has a default; override it in a
/// TOML file (--config), with its NEEDLE_* environment variable, or with
/// --set NAME=VALUE, in increasing order of precedence. `needle
/// check-config` shows the result; docs/configuration.md lists every
/// setting.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// A TOML configuration file.
    #[arg(short, long, env = "NEEDLE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Sets one setting, e.g. `--set proxy.idle_timeout=10m` (repeatable;
    /// overrides the file and the environment).
    #[arg(long = "set", value_name = "NAME=VALUE", global = true)]
    set: Vec<String>,
    /// Shortcut for `--set log.filter=FILTER` (RUST_LOG syntax).
    #[arg(long, value_name = "FILTER", global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the sidecar (the default).
    Run,
    /// Checks a configuration and prints every setting with its source.
    CheckConfig {
        /// The file to check (default: --config / NEEDLE_CONFIG).
        file: Option<PathBuf>,
    },
    /// Runs a whole mesh on loopback for a few seconds and shows what it
    /// does: mTLS between two sidecars, a 90/10 split, retries, latencies.
    Demo {
        /// Seconds of traffic.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// Lists every setting: name, environment variable, default, meaning.
    Settings,
    /// Installs the iptables rules that redirect a pod's TCP traffic
    /// through Needle (run once per pod, as root with NET_ADMIN).
    Init {
        /// User id the proxy runs as: its own connections are not redirected.
        #[arg(long, default_value_t = 2102)]
        proxy_uid: u32,
        /// Where inbound connections are redirected.
        #[arg(long, default_value_t = 4143)]
        inbound_port: u16,
        /// Where outbound connections are redirected.
        #[arg(long, default_value_t = 4140)]
        outbound_port: u16,
        /// Inbound ports not redirected (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "4191")]
        skip_inbound_ports: Vec<u16>,
        /// Outbound ports not redirected (comma-separated).
        #[arg(long, value_delimiter = ',')]
        skip_outbound_ports: Vec<u16>,
        /// Prints the iptables commands instead of running them.
        #[arg(long)]
        dry_run: bool,
        /// The iptables binary.
        #[arg(long, default_value = "iptables")]
        iptables: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Init {
            proxy_uid,
            inbound_port,
            outbound_port,
            skip_inbound_ports,
            skip_outbound_ports,
            dry_run,
            iptables,
        }) => {
            let rules = init::Rules {
                proxy_uid,
                inbound_port,
                outbound_port,
                skip_inbound_ports,
                skip_outbound_ports,
            };
            if dry_run {
                for args in rules.commands() {
                    println!("{iptables} {}", args.join(" "));
                }
                return ExitCode::SUCCESS;
            }
            match rules.apply(&iptables) {
                Ok(()) => {
                    eprintln!("needle init: iptables rules installed");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("needle init: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Some(Command::Demo { seconds }) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("needle demo: starting the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            runtime.block_on(demo::run(seconds))
        }
        Some(Command::Settings) => {
            let defaults = Layers::load(None, Vec::new(), &[]);
            let defaults: Vec<_> = match &defaults {
                Ok(l) => l.iter().map(|(n, v, _)| (n, v.to_owned())).collect(),
                Err(_) => Vec::new(),
            };
            for setting in config::SETTINGS {
                let default = defaults
                    .iter()
                    .find(|(n, _)| *n == setting.name)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("");
                println!(
                    "{} ({}, default {default:?})\n    {}\n",
                    setting.name,
                    config::env_name(setting.name),
                    setting.doc
                );
            }
            ExitCode::SUCCESS
        }
        Some(Command::CheckConfig { ref file }) => {
            let file = file.clone().or(cli.config.clone());
            match load(file.as_deref(), &cli) {
                Ok((_, layers)) => {
                    print!("{}", sidecar::render(&layers));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("needle: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Run) | None => {
            let (config, layers) = match load(cli.config.as_deref(), &cli) {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("needle: {e}");
                    return ExitCode::from(2);
                }
            };
            let log = logging::init(&config.log_filter, config.log_format);
            // One thread by default: a sidecar shares its pod's CPU with the
            // application, and one thread measured cheaper per request
            // (docs/benchmarks.md, "Runtime").
            let mut builder = match config.runtime_threads {
                1 => tokio::runtime::Builder::new_current_thread(),
                n => {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    b.worker_threads(n);
                    b
                }
            };
            let runtime = match builder.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("needle: starting the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            runtime.block_on(sidecar::run(config, &layers, log))
        }
    }
}

/// The configuration from `file`, the environment and the flags.
fn load(
    file: Option<&std::path::Path>,
    cli: &Cli,
) -> Result<(Config, Layers), config::ConfigError> {
    let mut flags = cli.set.clone();
    if let Some(filter) = &cli.log {
        flags.push(format!("log.filter={filter}"));
    }
    let layers = Layers::load(file, std::env::vars(), &flags)?;
    let config = Config::from_layers(&layers)?;
    Ok((config, layers))
}
