//! The sidecar: the outbound and inbound proxies, the admin server, the
//! identity and discovery watchers, and the lifecycle around them.
//!
//! Start order: credentials (a sidecar that cannot prove its identity must
//! not pretend to be ready), discovery, listeners, admin server; `/ready`
//! turns 200 only then. Stop: on SIGTERM, SIGINT or `POST /shutdown`, both
//! ports stop accepting, HTTP connections drain (HTTP/1 `connection:
//! close`, HTTP/2 GOAWAY), and the process exits once every connection has
//! ended or `shutdown.grace_period` has passed.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use needle_io::detect::DetectSettings;
use needle_io::discovery::StaticDiscovery;
use needle_io::http::{HttpConfig, HttpProxy};
use needle_io::meta::Direction;
use needle_io::metrics::Metrics;
use needle_io::net::{Network, TokioNet};
use needle_io::proxy::{Port, PortConfig};
use needle_io::tls::{CredentialFiles, MeshIdentity, WallClock};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::admin::{self, Admin};
use crate::config::{Config, Layers};
use crate::discovery_file::FileSource;
use crate::logging::LogControl;

/// Runs the sidecar until it is told to stop.
pub(crate) async fn run(config: Config, layers: &Layers, log: LogControl) -> ExitCode {
    let identity = match &config.identity {
        Some(files) => {
            let files = CredentialFiles {
                chain: files.cert.clone(),
                key: files.key.clone(),
                bundle: files.trust_bundle.clone(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            match MeshIdentity::from_files(
                files,
                provider,
                config.identity_poll_interval,
                WallClock::system(),
            ) {
                Ok(identity) => {
                    info!(identity = %identity.id(), "mTLS on");
                    tokio::spawn(identity.clone().watch());
                    Some(identity)
                }
                Err(e) => {
                    error!("identity (identity.cert/key/trust_bundle): {e}");
                    return ExitCode::from(2);
                }
            }
        }
        None => {
            warn!("no identity configured (identity.cert/key/trust_bundle): mTLS is off");
            None
        }
    };

    let discovery = StaticDiscovery::new();
    if let Some(path) = &config.discovery_file {
        match FileSource::start(path.clone(), discovery.clone()) {
            Ok(source) => {
                tokio::spawn(source.watch(config.discovery_poll_interval));
            }
            Err(e) => {
                error!("discovery.file: {e}");
                return ExitCode::from(2);
            }
        }
    }

    let mut http = HttpConfig {
        connect_timeout: config.connect_timeout,
        mesh_handshake_timeout: config.handshake_timeout,
        ..HttpConfig::default()
    };
    http.default_timeouts.request = Some(config.request_timeout);
    let port_config = |direction, target| PortConfig {
        direction,
        detect: DetectSettings {
            detect: needle_core::detect::Config {
                peek_limit: config.detect_peek_limit,
                timeout: config.detect_timeout,
            },
            ..DetectSettings::default()
        },
        target,
        connect_timeout: config.connect_timeout,
        idle_timeout: config.idle_timeout,
        handshake_timeout: config.handshake_timeout,
        policies: config.policies.clone(),
        app_ip: config.app_ip,
    };
    // One registry for the whole sidecar: both directions, one /metrics.
    let metrics = Metrics::new();
    if let Some(identity) = &identity {
        tokio::spawn(cert_expiry(
            identity.clone(),
            metrics.clone(),
            config.identity_poll_interval,
        ));
    }
    let outbound = Port::with_http(
        TokioNet,
        port_config(Direction::Outbound, config.outbound_target),
        HttpProxy::meshed(
            TokioNet,
            http.clone(),
            discovery,
            identity.clone(),
            metrics.clone(),
        ),
    );
    // Inbound requests go to the local application: no discovery.
    let inbound = Port::with_http(
        TokioNet,
        port_config(Direction::Inbound, config.inbound_target),
        HttpProxy::meshed(
            TokioNet,
            http,
            StaticDiscovery::new(),
            identity.clone(),
            metrics.clone(),
        ),
    );

    let bind = |name: &'static str, addr| async move {
        TokioNet.bind(addr).await.map_err(|e| {
            error!("cannot listen on {addr} ({name}): {e}");
            ExitCode::from(1)
        })
    };
    let outbound_listener = match bind("outbound.listen", config.outbound_listen).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let inbound_listener = match bind("inbound.listen", config.inbound_listen).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let admin_listener = match tokio::net::TcpListener::bind(config.admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(
                "cannot listen on {} (admin.listen): {e}",
                config.admin_listen
            );
            return ExitCode::from(1);
        }
    };

    let shutdown = Arc::new(Notify::new());
    let admin = Arc::new(Admin {
        ready: AtomicBool::new(false),
        metrics: Box::new(move || metrics.encode()),
        config: render(layers),
        log,
        enable_shutdown: config.admin_enable_shutdown,
        shutdown: shutdown.clone(),
    });
    tokio::spawn(admin::serve(admin_listener, admin.clone()));

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let outbound_run = tokio::spawn(outbound.clone().run(outbound_listener, until(&stopped)));
    let inbound_run = tokio::spawn(inbound.clone().run(inbound_listener, until(&stopped)));
    admin.ready.store(true, Ordering::Release);
    info!(
        outbound = %config.outbound_listen, inbound = %config.inbound_listen,
        admin = %config.admin_listen, "needle ready"
    );

    let reason = tokio::select! {
        () = signal(tokio::signal::unix::SignalKind::terminate()) => "SIGTERM",
        () = signal(tokio::signal::unix::SignalKind::interrupt()) => "SIGINT",
        () = shutdown.notified() => "POST /shutdown",
    };
    info!(reason, grace = ?config.grace_period, "draining");
    admin.ready.store(false, Ordering::Release);
    stop.send_replace(true);
    let _ = tokio::join!(outbound_run, inbound_run);
    let (out_left, in_left) = tokio::join!(
        outbound.drained(config.grace_period),
        inbound.drained(config.grace_period)
    );
    if out_left + in_left > 0 {
        warn!(
            outbound = out_left,
            inbound = in_left,
            "grace period over; closing the connections still open"
        );
    } else {
        info!("every connection finished; bye");
    }
    ExitCode::SUCCESS
}

/// Keeps `identity_cert_expiration_timestamp_seconds` on the certificate
/// in force, across rotations.
async fn cert_expiry(identity: Arc<MeshIdentity>, metrics: Metrics, every: std::time::Duration) {
    loop {
        let not_after = std::time::Duration::from_secs(identity.not_after_secs());
        metrics.set_identity_cert_expiration(std::time::UNIX_EPOCH + not_after);
        tokio::time::sleep(every).await;
    }
}

/// Completes once `stopped` turns true.
fn until(
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut stopped = stopped.clone();
    async move {
        let _ = stopped.wait_for(|s| *s).await;
    }
}

/// Completes on the first delivery of `kind`; never if it cannot be
/// watched.
async fn signal(kind: tokio::signal::unix::SignalKind) {
    match tokio::signal::unix::signal(kind) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// The effective configuration as `/config` and `check-config` show it.
/// No setting holds secret material (the key is a path; its contents are
/// never shown), so nothing needs redacting.
pub(crate) fn render(layers: &Layers) -> String {
    let mut out = String::new();
    for (name, value, source) in layers.iter() {
        out.push_str(&format!("{name} = {value:?}  # {source}\n"));
    }
    out
}
