//! The accept loop: one connection's life from accept to close.
//!
//! 1. Learn where the client meant to go: the original destination of a
//!    redirected connection (`SO_ORIGINAL_DST`), else the port's configured
//!    target.
//! 2. Detect the protocol (the core decides; [`crate::detect`] drives it and
//!    keeps server-speaks-first protocols from stalling).
//! 3. Hand the connection, with the detected bytes put back in front, to
//!    the handler for its protocol: HTTP/1 and HTTP/2 to the HTTP proxy
//!    (request-level routing, balancing and retries), everything else
//!    forwarded byte for byte.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use needle_core::detect::Protocol;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::detect::{DetectSettings, Detected, detect};
use crate::discovery::StaticDiscovery;
use crate::http::{HttpConfig, HttpError, HttpProxy, HttpVersion};
use crate::meta::{ConnMeta, Direction};
use crate::metrics::Metrics;
use crate::net::{Connection, Listener, Network};
use crate::opaque::{self, ForwardError, Transferred};
use crate::prefixed::Prefixed;

/// How a proxy port behaves.
#[derive(Debug, Clone)]
pub struct PortConfig {
    /// Which side of the pod the port serves.
    pub direction: Direction,
    /// Detection bounds and the server-first dial delay.
    pub detect: DetectSettings,
    /// Where connections go when they were not redirected (no
    /// `SO_ORIGINAL_DST`); without one such connections are closed.
    pub target: Option<SocketAddr>,
    /// How long dialling the destination may take.
    pub connect_timeout: Duration,
    /// How long an opaque connection may carry nothing before it is closed.
    pub idle_timeout: Duration,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            direction: Direction::Outbound,
            detect: DetectSettings::default(),
            target: None,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// Why a connection ended without being served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// Neither `SO_ORIGINAL_DST` nor a configured target says where to go.
    #[error("no destination: the connection was not redirected and the port has no target")]
    NoDestination,
    /// Reading the client during detection failed.
    #[error("reading the client during detection: {0}")]
    Detect(io::Error),
    /// The destination could not be reached.
    #[error("connecting to {dst}: {source}")]
    Connect {
        /// The destination.
        dst: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Dialling the destination took longer than the connect timeout.
    #[error("connecting to {dst} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The destination.
        dst: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// Forwarding ended with an error.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// Serving an HTTP connection failed at the HTTP layer.
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// How a served connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// What detection decided.
    pub protocol: Protocol,
    /// Where it went.
    pub dst: SocketAddr,
    /// Bytes moved, for connections forwarded byte for byte; `None` for
    /// HTTP connections, whose requests are accounted one by one.
    pub transferred: Option<Transferred>,
}

/// A proxy port: accepts connections and serves each on its own task.
#[derive(Debug)]
pub struct Port<N: Network> {
    network: N,
    config: PortConfig,
    clock: Clock,
    http: Arc<HttpProxy<N>>,
    metrics: Metrics,
}

impl<N: Network> Port<N> {
    /// A port that dials through `network`, proxying HTTP with default
    /// settings to each destination itself (no discovery).
    pub fn new(network: N, config: PortConfig) -> Arc<Self> {
        let http = HttpProxy::new(
            network.clone(),
            HttpConfig::default(),
            StaticDiscovery::new(),
        );
        Port::with_http(network, config, http)
    }

    /// A port whose HTTP connections go to `http` (its configuration and
    /// discovery decide routes, balancing and retries). The port records
    /// into `http`'s [`Metrics`].
    pub fn with_http(network: N, config: PortConfig, http: Arc<HttpProxy<N>>) -> Arc<Self> {
        Arc::new(Port {
            network,
            config,
            clock: Clock::start(),
            metrics: http.metrics().clone(),
            http,
        })
    }

    /// Where the port records its metrics (shared with its HTTP proxy).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Accepts connections from `listener` until `shutdown` completes.
    pub async fn run(
        self: Arc<Self>,
        listener: N::Listener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((conn, peer)) => {
                        let port = Arc::clone(&self);
                        tokio::spawn(async move {
                            match port.serve(conn).await {
                                Ok(served) => debug!(%peer, dst = %served.dst, protocol = ?served.protocol,
                                    transferred = ?served.transferred, "connection closed"),
                                Err(error) => info!(%peer, %error, "connection failed"),
                            }
                        });
                    }
                    // Running out of descriptors or a reset before accept:
                    // log, pause briefly so a persistent error cannot spin.
                    Err(error) => {
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                () = &mut shutdown => return,
            }
        }
    }

    /// Serves one accepted connection to its end.
    pub async fn serve(&self, mut conn: N::Stream) -> Result<Served, ConnectionError> {
        // A proxy forwards what it has at once; failing to set it is harmless.
        let _ = conn.set_nodelay(true);
        let dst = match conn.original_dst() {
            Ok(Some(dst)) => Some(dst),
            _ => self.config.target,
        };
        let meta = ConnMeta::plain(self.config.direction);
        // Counted closed when dropped: on every early return below, or when
        // the wrapped stream is (which may outlive `serve` for an upgrade).
        let tcp = self.metrics.tcp_open(meta.direction, dst, &meta.client_tls);
        let Detected {
            protocol,
            buffered,
            upstream,
        } = detect(
            &self.network,
            &mut conn,
            dst,
            &self.config.detect,
            &self.clock,
        )
        .await
        .map_err(ConnectionError::Detect)?;
        self.metrics.detected(meta.direction, &protocol);
        tcp.count_read(buffered.len());
        let dst = dst.ok_or(ConnectionError::NoDestination)?;
        debug!(%dst, ?protocol, "detected");
        let client = Prefixed::new(buffered, tcp.wrap(conn));
        let version = match protocol {
            Protocol::Http1 { .. } => Some(HttpVersion::Http1),
            Protocol::Http2 => Some(HttpVersion::Http2),
            _ => None,
        };
        if let Some(version) = version {
            // Requests are balanced per request: a connection dialled ahead
            // for a server-first protocol is not needed, so it is closed.
            drop(upstream);
            self.http.serve(client, version, dst, meta).await?;
            return Ok(Served {
                protocol,
                dst,
                transferred: None,
            });
        }
        let upstream = match upstream {
            Some(upstream) => upstream,
            None => self.connect(dst).await?,
        };
        let transferred = opaque::forward(client, upstream, self.config.idle_timeout).await?;
        Ok(Served {
            protocol,
            dst,
            transferred: Some(transferred),
        })
    }

    async fn connect(&self, dst: SocketAddr) -> Result<N::Stream, ConnectionError> {
        let timeout = self.config.connect_timeout;
        match tokio::time::timeout(timeout, self.network.connect(dst)).await {
            Ok(Ok(conn)) => {
                let _ = conn.set_nodelay(true);
                Ok(conn)
            }
            Ok(Err(source)) => Err(ConnectionError::Connect { dst, source }),
            Err(_) => Err(ConnectionError::ConnectTimeout { dst, timeout }),
        }
    }
}
