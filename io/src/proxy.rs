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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use needle_core::authz::{Peer, PortPolicies, Refusal};
use needle_core::detect::{OpaqueReason, Protocol};
use needle_core::identity::SpiffeId;
use needle_core::identity::sni::{self, SniTarget};
use needle_core::tls::Alpn;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::detect::{DetectSettings, Detected, Dial, detect};
use crate::discovery::{Meshed, ProtocolHint, StaticDiscovery};
use crate::http::{HttpConfig, HttpError, HttpProxy, HttpVersion};
use crate::meta::{ConnMeta, Direction, NoTls, TlsStatus};
use crate::metrics::{Counted, Metrics};
use crate::net::{Connection, Listener, Network};
use crate::opaque::{self, ForwardError, Transferred};
use crate::prefixed::Prefixed;
use crate::tls::{self, MaybeTls, MeshError, MeshIdentity};

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
    /// How long the mutual-TLS handshake and transport header may take, on
    /// either side (default 5 s).
    pub handshake_timeout: Duration,
    /// Inbound: which peers may reach which application port (default:
    /// everyone, meshed or not, so adding the proxy breaks nothing).
    pub policies: PortPolicies,
    /// Inbound: the address the application listens on; a meshed
    /// connection goes to this address and the port its transport header
    /// names (default 127.0.0.1).
    pub app_ip: IpAddr,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            direction: Direction::Outbound,
            detect: DetectSettings::default(),
            target: None,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3600),
            handshake_timeout: Duration::from_secs(5),
            policies: PortPolicies::default(),
            app_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
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
    /// Mutual TLS failed: with a meshed destination's proxy (outbound), or
    /// with a calling proxy (inbound).
    #[error("mutual TLS with {peer}: {source}")]
    Mesh {
        /// The other side's address.
        peer: SocketAddr,
        /// Why.
        source: MeshError,
    },
    /// Inbound: a meshed connection addressed to another workload reached
    /// this one (stale discovery, a reused IP): refused.
    #[error("meshed connection for {0} reached the wrong workload")]
    WrongWorkload(SpiffeId),
    /// Inbound: the port's policy refused the peer.
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
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
    /// What detection decided (for a meshed inbound connection, of the
    /// outer stream: TLS).
    pub protocol: Protocol,
    /// Where it went.
    pub dst: SocketAddr,
    /// Who the client proved to be, or why it is not mutual TLS.
    pub tls: TlsStatus,
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
    /// Connections accepted by [`Port::run`] and not yet ended.
    open: Arc<OpenConnections>,
    metrics: Metrics,
}

/// A count of open connections that can be waited on to reach zero.
#[derive(Debug, Default)]
struct OpenConnections {
    count: std::sync::atomic::AtomicUsize,
    closed: tokio::sync::Notify,
}

/// Counts one connection open while it lives.
struct OpenGuard(Arc<OpenConnections>);

impl OpenGuard {
    fn new(open: &Arc<OpenConnections>) -> Self {
        open.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenGuard(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.closed.notify_waiters();
    }
}

impl<N: Network> Port<N> {
    /// A port that dials through `network`, proxying HTTP with default
    /// settings to each destination itself (no discovery, no mTLS).
    pub fn new(network: N, config: PortConfig) -> Arc<Self> {
        let http = HttpProxy::new(
            network.clone(),
            HttpConfig::default(),
            StaticDiscovery::new(),
        );
        Port::with_http(network, config, http)
    }

    /// A port whose HTTP connections go to `http` (its configuration and
    /// discovery decide routes, balancing and retries; its identity, if
    /// any, is the port's: inbound it terminates mTLS addressed to it,
    /// outbound it originates mTLS to meshed destinations). The port
    /// records into `http`'s [`Metrics`].
    pub fn with_http(network: N, config: PortConfig, http: Arc<HttpProxy<N>>) -> Arc<Self> {
        Arc::new(Port {
            network,
            config,
            clock: Clock::start(),
            metrics: http.metrics().clone(),
            http,
            open: Arc::default(),
        })
    }

    /// Where the port records its metrics (shared with its HTTP proxy).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Connections accepted by [`Port::run`] that are still open.
    pub fn open_connections(&self) -> usize {
        self.open.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// After [`Port::run`] returned: waits until every connection it
    /// accepted has ended, or `grace` has passed. Returns how many were
    /// still open then (opaque connections, long streams), which the caller
    /// is about to cut.
    pub async fn drained(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let closed = self.open.closed.notified();
            let open = self.open_connections();
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return self.open_connections();
            }
        }
    }

    /// Accepts connections from `listener` until `shutdown` completes, then
    /// stops accepting and starts draining the HTTP connections it serves
    /// (see [`HttpProxy::drain`]); [`Port::drained`] waits for them.
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
                        let open = OpenGuard::new(&self.open);
                        tokio::spawn(async move {
                            let _open = open;
                            match port.serve(conn).await {
                                Ok(served) => debug!(%peer, dst = %served.dst, protocol = ?served.protocol,
                                    tls = served.tls.label(), transferred = ?served.transferred, "connection closed"),
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
                () = &mut shutdown => {
                    self.http.drain();
                    return;
                }
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
        // Outbound, discovery says whether the destination is meshed (then
        // it is dialled over mTLS, even when dialled ahead for a
        // server-first protocol) and whether it is known to be opaque.
        let (mesh, hint) = match (self.config.direction, dst) {
            (Direction::Outbound, Some(dst)) => self.lookup(dst),
            _ => (None, ProtocolHint::Detect),
        };
        // Counted closed when dropped: on every early return below, or when
        // the wrapped stream is (which may outlive `serve` for an upgrade).
        // Labelled with its TLS status once that is known.
        let tcp = self.metrics.tcp_accept(self.config.direction, dst);
        if let (ProtocolHint::Opaque, Some(dst)) = (hint, dst) {
            // Nothing to detect: forward at once.
            let protocol = Protocol::Opaque(OpaqueReason::Configured);
            self.metrics.detected(self.config.direction, &protocol);
            let client_tls = TlsStatus::Plain(NoTls::NotProvidedByRemote);
            tcp.set_tls(&client_tls);
            let client = Prefixed::new(bytes::Bytes::new(), tcp.wrap(conn));
            let meta = ConnMeta {
                direction: self.config.direction,
                client_tls,
            };
            return self.forward(client, protocol, dst, meta, None, mesh).await;
        }
        let dial = dst.map(|dst| self.dialer(dst, mesh.clone()));
        let Detected {
            protocol,
            buffered,
            upstream,
        } = detect(&mut conn, dial, &self.config.detect, &self.clock)
            .await
            .map_err(ConnectionError::Detect)?;
        self.metrics.detected(self.config.direction, &protocol);
        tcp.count_read(buffered.len());
        debug!(?dst, ?protocol, "detected");
        let peer = conn
            .peer_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let client = Prefixed::new(buffered, tcp.wrap(conn));

        let client_tls = match (self.config.direction, &protocol) {
            (Direction::Inbound, Protocol::Tls(hello)) => match self.http.identity() {
                Some(identity) => match sni::classify(hello.dns_name(), &identity.id()) {
                    SniTarget::Local => {
                        drop(upstream);
                        return self.serve_meshed(client, peer, protocol, identity).await;
                    }
                    SniTarget::OtherWorkload(id) => return Err(ConnectionError::WrongWorkload(id)),
                    _ => TlsStatus::Plain(NoTls::Passthrough),
                },
                None => TlsStatus::Plain(NoTls::Disabled),
            },
            _ => TlsStatus::Plain(NoTls::NotProvidedByRemote),
        };
        // A meshed connection names its port in its header; anything else
        // needs to know where it was going.
        let dst = dst.ok_or(ConnectionError::NoDestination)?;
        if self.config.direction == Direction::Inbound {
            // Plaintext, or TLS for the application: nobody proved anything.
            self.config
                .policies
                .authorize(dst.port(), &Peer::Unauthenticated)?;
        }
        client.get_ref().conn().set_tls(&client_tls);
        let meta = ConnMeta {
            direction: self.config.direction,
            client_tls,
        };
        self.forward(client, protocol, dst, meta, upstream, mesh)
            .await
    }

    /// Inbound mTLS addressed to this workload: terminate it, authorize the
    /// peer for the port its header names, and serve what is inside.
    async fn serve_meshed(
        &self,
        client: Prefixed<Counted<N::Stream>>,
        peer: SocketAddr,
        outer: Protocol,
        identity: &Arc<MeshIdentity>,
    ) -> Result<Served, ConnectionError> {
        let accepted = tls::accept(client, identity, self.config.handshake_timeout)
            .await
            .map_err(|source| ConnectionError::Mesh { peer, source })?;
        let peer_id = accepted.established.peer.clone();
        let tls = TlsStatus::Mutual(peer_id.clone());
        accepted.stream.get_ref().get_ref().conn().set_tls(&tls);
        let dst = SocketAddr::new(self.config.app_ip, accepted.header.port);
        self.config
            .policies
            .authorize(dst.port(), &Peer::Mtls(peer_id.clone()))?;
        debug!(%dst, peer = %peer_id, alpn = %accepted.established.alpn, "mTLS accepted");
        let meta = ConnMeta {
            direction: Direction::Inbound,
            client_tls: TlsStatus::Mutual(peer_id),
        };
        let stream = accepted.stream;
        if accepted.established.alpn == Alpn::H2 {
            // HTTP from the peer proxy: HTTP/2 whatever the application
            // spoke; requests marked HTTP/1 go to it as HTTP/1.1.
            self.http
                .serve(stream, HttpVersion::Http2, dst, meta.clone())
                .await?;
            return Ok(Served {
                protocol: outer,
                dst,
                tls: meta.client_tls,
                transferred: None,
            });
        }
        // Opaque: the peer already detected (and found nothing to parse),
        // so the bytes go to the application as they are, at once (a
        // server-first application greets as soon as it is dialled).
        let upstream = self.connect(dst).await?;
        let transferred = opaque::forward(stream, upstream, self.config.idle_timeout).await?;
        Ok(Served {
            protocol: outer,
            dst,
            tls: meta.client_tls,
            transferred: Some(transferred),
        })
    }

    /// Hands a detected connection to HTTP or forwards it byte for byte.
    async fn forward(
        &self,
        client: Prefixed<Counted<N::Stream>>,
        protocol: Protocol,
        dst: SocketAddr,
        meta: ConnMeta,
        upstream: Option<Prefixed<MaybeTls<N::Stream>>>,
        mesh: Option<Meshed>,
    ) -> Result<Served, ConnectionError> {
        let version = match protocol {
            Protocol::Http1 { .. } => Some(HttpVersion::Http1),
            Protocol::Http2 => Some(HttpVersion::Http2),
            _ => None,
        };
        if let Some(version) = version {
            // Requests are balanced per request: a connection dialled ahead
            // for a server-first protocol is not needed, so it is closed.
            drop(upstream);
            self.http.serve(client, version, dst, meta.clone()).await?;
            return Ok(Served {
                protocol,
                dst,
                tls: meta.client_tls,
                transferred: None,
            });
        }
        let upstream = match upstream {
            Some(upstream) => upstream,
            None => Prefixed::new(bytes::Bytes::new(), self.dial(dst, mesh).await?),
        };
        let transferred = opaque::forward(client, upstream, self.config.idle_timeout).await?;
        Ok(Served {
            protocol,
            dst,
            tls: meta.client_tls,
            transferred: Some(transferred),
        })
    }

    /// What discovery says of `dst`: how it is meshed, if it is and mTLS
    /// is on (`dst` must be one of its service's endpoints: opaque traffic
    /// goes where the client pointed, only HTTP is balanced per request),
    /// and what protocol it speaks, if configured.
    fn lookup(&self, dst: SocketAddr) -> (Option<Meshed>, ProtocolHint) {
        let service = self.http.discovery().resolve(dst).borrow().clone();
        let mesh = self.http.identity().and_then(|_| {
            service
                .backends
                .iter()
                .flat_map(|b| &b.endpoints)
                .find(|e| e.addr == dst)
                .and_then(|e| e.mesh.clone())
        });
        (mesh, service.protocol)
    }

    /// The dial detection may start ahead of time.
    fn dialer(
        &self,
        dst: SocketAddr,
        mesh: Option<Meshed>,
    ) -> impl FnOnce() -> Dial<MaybeTls<N::Stream>> + use<N> {
        let network = self.network.clone();
        let identity = self.http.identity().cloned();
        let handshake_timeout = self.config.handshake_timeout;
        move || {
            Box::pin(async move {
                dial_with(&network, identity.as_deref(), dst, mesh, handshake_timeout)
                    .await
                    .map_err(io::Error::other)
            })
        }
    }

    /// Dials `dst` now: plain, or mTLS with `Alpn::Opaque` when meshed.
    async fn dial(
        &self,
        dst: SocketAddr,
        mesh: Option<Meshed>,
    ) -> Result<MaybeTls<N::Stream>, ConnectionError> {
        let connect = dial_with(
            &self.network,
            self.http.identity().map(|i| &**i),
            dst,
            mesh,
            self.config.handshake_timeout,
        );
        let timeout = self.config.connect_timeout + self.config.handshake_timeout;
        match tokio::time::timeout(timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(ConnectionError::ConnectTimeout { dst, timeout }),
        }
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

/// Connects to `dst`, over mTLS to its proxy when `mesh` says so.
async fn dial_with<N: Network>(
    network: &N,
    identity: Option<&MeshIdentity>,
    dst: SocketAddr,
    mesh: Option<Meshed>,
    handshake_timeout: Duration,
) -> Result<MaybeTls<N::Stream>, ConnectionError> {
    let tcp_addr = mesh.as_ref().and_then(|m| m.proxy_addr).unwrap_or(dst);
    let conn = network
        .connect(tcp_addr)
        .await
        .map_err(|source| ConnectionError::Connect {
            dst: tcp_addr,
            source,
        })?;
    let _ = conn.set_nodelay(true);
    match (mesh, identity) {
        (Some(mesh), Some(identity)) => {
            let connected = tls::connect(
                conn,
                identity,
                &mesh.identity,
                Alpn::Opaque,
                dst.port(),
                handshake_timeout,
            )
            .await
            .map_err(|source| ConnectionError::Mesh {
                peer: tcp_addr,
                source,
            })?;
            Ok(MaybeTls::Tls(Box::new(connected.stream)))
        }
        _ => Ok(MaybeTls::Plain(conn)),
    }
}
