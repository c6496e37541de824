//! The `needle` binary.
//!
//! Provisional until the sidecar work lands: `needle` runs one proxy port
//! (by default the outbound port, 127.0.0.1:4140). Each connection's
//! destination is its original destination when iptables redirected it
//! (`SO_ORIGINAL_DST`), else `--target`; its protocol is detected by the
//! core (server-speaks-first protocols are not stalled) and its bytes are
//! forwarded. HTTP-aware proxying, mTLS, discovery and the admin server
//! arrive with the data-plane, mesh and sidecar work.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use needle_core::detect;
use needle_io::detect::DetectSettings;
use needle_io::net::{Network, TokioNet};
use needle_io::proxy::{Port, PortConfig};
use tracing::info;

/// Needle, a service-mesh sidecar proxy (provisional: one detecting TCP proxy port).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Address to accept connections on.
    #[arg(long, env = "NEEDLE_LISTEN_ADDR", default_value = "127.0.0.1:4140")]
    listen: SocketAddr,
    /// Where connections go when they were not redirected by iptables.
    #[arg(long, env = "NEEDLE_TARGET")]
    target: Option<SocketAddr>,
    /// Most bytes read before deciding a connection is opaque.
    #[arg(long, env = "NEEDLE_DETECT_PEEK_LIMIT", default_value_t = detect::Config::default().peek_limit)]
    detect_peek_limit: usize,
    /// How long a client may take to show its protocol (e.g. "5s", "500ms").
    #[arg(long, env = "NEEDLE_DETECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    detect_timeout: Duration,
    /// How long an opaque connection may stay silent before it is closed.
    #[arg(long, env = "NEEDLE_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Log filter, in RUST_LOG syntax (e.g. "info", "needle_io=debug").
    #[arg(long, env = "NEEDLE_LOG", default_value = "info")]
    log: String,
}

/// Parses "250ms", "5s", "2m" or "1h".
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s, 2m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?} has unit {unit:?}; expected ms, s, m or h")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!(
                "needle: NEEDLE_LOG / --log {:?} is not a valid filter: {e}",
                args.log
            );
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let detect = detect::Config {
        peek_limit: args.detect_peek_limit,
        timeout: args.detect_timeout,
    };
    if let Err(e) = detect.validate() {
        eprintln!("needle: invalid detection setting (NEEDLE_DETECT_*): {e}");
        return std::process::ExitCode::from(2);
    }
    let config = PortConfig {
        detect: DetectSettings {
            detect,
            ..DetectSettings::default()
        },
        target: args.target,
        idle_timeout: args.idle_timeout,
        ..PortConfig::default()
    };
    let listener = match TokioNet.bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "needle: cannot listen on {} (NEEDLE_LISTEN_ADDR / --listen): {e}",
                args.listen
            );
            return std::process::ExitCode::from(1);
        }
    };
    match args.target {
        Some(target) => {
            info!(listen = %args.listen, %target, "needle (provisional) proxying; Ctrl-C stops")
        }
        None => {
            info!(listen = %args.listen, "needle (provisional) proxying redirected connections; Ctrl-C stops")
        }
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        info!("stopping");
    };
    Port::new(TokioNet, config).run(listener, shutdown).await;
    std::process::ExitCode::SUCCESS
}
