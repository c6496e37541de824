//! The `needle` binary.
//!
//! Provisional: until the data plane and sidecar work land, `needle` runs a
//! detection listener. It accepts connections (by default on the outbound
//! port, 127.0.0.1:4140), detects each one's protocol with the core detector
//! exactly as the proxy will, logs what it found, and closes the connection.
//! It is the smallest honest thing the binary can do today, and it exercises
//! the detector against whatever real clients you point at it.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use needle_core::detect::{self, Detector, Protocol};
use needle_core::time::Instant;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

/// Needle, a service-mesh sidecar proxy (provisional: a protocol-detection listener).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Address to accept connections on.
    #[arg(long, env = "NEEDLE_LISTEN_ADDR", default_value = "127.0.0.1:4140")]
    listen: SocketAddr,
    /// Most bytes read before deciding a connection is opaque.
    #[arg(long, env = "NEEDLE_DETECT_PEEK_LIMIT", default_value_t = detect::Config::default().peek_limit)]
    detect_peek_limit: usize,
    /// How long a client may take to show its protocol (e.g. "5s", "500ms").
    #[arg(long, env = "NEEDLE_DETECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    detect_timeout: Duration,
    /// Log filter, in RUST_LOG syntax.
    #[arg(long, env = "NEEDLE_LOG", default_value = "info")]
    log: String,
}

/// Parses "250ms", "5s" or "2m".
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} has unit {unit:?}; expected ms, s or m")),
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

    let config = detect::Config {
        peek_limit: args.detect_peek_limit,
        timeout: args.detect_timeout,
    };
    if let Err(e) = config.validate() {
        eprintln!("needle: invalid detection setting: {e}");
        return std::process::ExitCode::from(2);
    }
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "needle: cannot listen on {} (NEEDLE_LISTEN_ADDR / --listen): {e}",
                args.listen
            );
            return std::process::ExitCode::from(1);
        }
    };
    info!(addr = %args.listen, "needle (provisional) detecting protocols; Ctrl-C stops");
    let clock = tokio::time::Instant::now();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, peer)) => {
                    tokio::spawn(async move {
                        let protocol = detect_connection(conn, config, clock).await;
                        info!(%peer, ?protocol, "detected");
                    });
                }
                Err(e) => warn!(error = %e, "accept failed"),
            },
            _ = tokio::signal::ctrl_c() => {
                info!("stopping");
                return std::process::ExitCode::SUCCESS;
            }
        }
    }
}

/// Reads from `conn` until the detector decides (or its deadline passes).
async fn detect_connection(
    mut conn: TcpStream,
    config: detect::Config,
    clock: tokio::time::Instant,
) -> Protocol {
    let now = || Instant::from_duration(clock.elapsed());
    let mut detector = Detector::new(config, now());
    let mut buf = vec![0; 4096];
    while detector.protocol().is_none() {
        let deadline = detector.poll_timeout().unwrap_or(Instant::MAX);
        let sleep_for = deadline.saturating_duration_since(now());
        tokio::select! {
            read = conn.read(&mut buf) => match read {
                Ok(0) | Err(_) => detector.handle_eof(now()),
                Ok(n) => {
                    detector.handle_bytes(now(), &buf[..n]);
                }
            },
            _ = tokio::time::sleep(sleep_for) => detector.handle_timeout(now()),
        }
    }
    detector
        .into_parts()
        .0
        .unwrap_or(Protocol::Opaque(detect::OpaqueReason::ClientClosed))
}
