//! Connections to one endpoint, owned by that endpoint.
//!
//! The balancer decides which endpoint a request goes to; this module only
//! keeps the connections to it. Keeping them per endpoint (rather than in a
//! pooled client keyed by authority, like hyper-util's legacy client) means
//! an endpoint removed by discovery takes its connections with it once its
//! last request finishes, and nothing here reads `std::time` or iterates a
//! `HashMap`, so the simulator replays it exactly.
//!
//! - **HTTP/1**: a stack of idle connections. A request takes the most
//!   recently used idle connection or dials a new one; the connection comes
//!   back when the response body has been read to its end. Idle connections
//!   expire after [`HttpConfig::h1_idle_timeout`], checked on use and by a
//!   reaper task that lives as long as the endpoint.
//! - **HTTP/2**: one multiplexed connection, dialled on first use and again
//!   when it closes, with keepalive PINGs so a dead endpoint is noticed even
//!   when idle.
//!
//! Requests to a plain endpoint are forwarded in the protocol they arrived
//! in: HTTP/1 as HTTP/1, HTTP/2 (and gRPC) as HTTP/2.
//!
//! A **meshed** endpoint (discovery names its identity) is reached over
//! mutual TLS to its sidecar, and every request, HTTP/1 included, travels
//! as a stream of one HTTP/2 connection (`needle/h2`): many HTTP/1 clients
//! cost one TCP+TLS connection between the proxies, not one each. An HTTP/1
//! request carries `needle-orig-proto` so the peer proxy hands it to the
//! application as HTTP/1.1 again. Upgrades (WebSocket) cannot ride an
//! HTTP/2 stream: they get a TLS connection of their own (`needle/opaque`)
//! that carries the HTTP/1 handshake and then the tunnel.

use std::error::Error as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tracing::debug;

use needle_core::tls::Alpn;

use super::HttpVersion;
use super::body::{ProxyBody, boxed};
use super::config::HttpConfig;
use super::headers;
use crate::discovery::Meshed;
use crate::meta::{NoTls, TlsStatus};
use crate::metrics::PeerLabels;
use crate::net::{Connection, Network};
use crate::tls::{self, MaybeTls, MeshError, MeshIdentity};

/// Why a request could not be sent to an endpoint, as the retry policy
/// needs to know it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection could be made: the request never left.
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Mutual TLS with the endpoint's proxy failed (wrong identity, unknown
    /// CA, ...): the request never left.
    #[error("mTLS with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: MeshError,
    },
    /// The HTTP handshake on a new connection failed: the request never left.
    #[error("handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// The connection was closed before the request was written.
    #[error("connection closed before the request was sent: {0}")]
    Unsent(#[source] hyper::Error),
    /// The HTTP/2 endpoint refused the stream (`REFUSED_STREAM`): it did not
    /// process the request.
    #[error("stream refused: {0}")]
    Refused(#[source] hyper::Error),
    /// The request may have reached the endpoint and then failed.
    #[error("request failed: {0}")]
    Failed(#[source] hyper::Error),
}

impl SendError {
    fn classify(e: hyper::Error) -> Self {
        if e.is_canceled() {
            return SendError::Unsent(e);
        }
        let mut source = e.source();
        while let Some(s) = source {
            if let Some(h2) = s.downcast_ref::<h2::Error>() {
                if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                    return SendError::Refused(e);
                }
                break;
            }
            source = s.source();
        }
        SendError::Failed(e)
    }

    /// Whether the endpoint provably did not see the request.
    pub(crate) fn unprocessed(&self) -> bool {
        !matches!(self, SendError::Failed(_))
    }
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

/// The connections to one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointClient<N: Network> {
    addr: SocketAddr,
    mesh: Option<Meshed>,
    /// The local identity, when mTLS is on; a meshed endpoint is reached in
    /// plaintext without one (its `tls` label says `disabled`).
    identity: Option<Arc<MeshIdentity>>,
    /// The endpoint side's metric labels, built once per endpoint.
    peer: PeerLabels,
    network: N,
    config: Arc<HttpConfig>,
    idle: Mutex<Vec<Idle>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

impl<N: Network> EndpointClient<N> {
    /// Connections to `addr`; starts the idle reaper (must run in a tokio
    /// runtime).
    pub(crate) fn new(
        addr: SocketAddr,
        mesh: Option<Meshed>,
        identity: Option<Arc<MeshIdentity>>,
        network: N,
        config: Arc<HttpConfig>,
    ) -> Arc<Self> {
        let client = Arc::new(EndpointClient {
            addr,
            peer: PeerLabels::new(&tls_status(&mesh, &identity)),
            mesh,
            identity,
            network,
            config,
            idle: Mutex::new(Vec::new()),
            h2: tokio::sync::Mutex::new(None),
        });
        tokio::spawn(reap(Arc::downgrade(&client)));
        client
    }

    /// The endpoint's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How the endpoint is meshed, if it is.
    pub(crate) fn mesh(&self) -> &Option<Meshed> {
        &self.mesh
    }

    /// The endpoint side's metric labels (`tls`, `server_id`).
    pub(crate) fn peer(&self) -> &PeerLabels {
        &self.peer
    }

    /// The endpoint's identity and ours, when connections to it are mTLS.
    fn meshed(&self) -> Option<(&Meshed, &Arc<MeshIdentity>)> {
        self.mesh.as_ref().zip(self.identity.as_ref())
    }

    /// Idle HTTP/1 connections right now.
    #[cfg(test)]
    pub(crate) fn idle_len(&self) -> usize {
        self.lock_idle().len()
    }

    /// Sends `req` in `version`. An HTTP/1 connection returns to the pool
    /// when the response body ends, unless `reusable` is false (upgrades:
    /// the connection becomes the tunnel).
    pub(crate) async fn send(
        self: &Arc<Self>,
        version: HttpVersion,
        req: Request<ProxyBody>,
        reusable: bool,
    ) -> Result<Response<ProxyBody>, SendError> {
        match version {
            HttpVersion::Http1 if reusable && self.meshed().is_some() => {
                self.send_h1_over_mesh(req).await
            }
            HttpVersion::Http1 => self.send_h1(req, reusable).await,
            HttpVersion::Http2 => self.send_h2(req).await,
        }
    }

    /// An HTTP/1 request to a meshed endpoint: a stream of the shared
    /// HTTP/2 connection, marked so the peer restores HTTP/1.1, answered to
    /// our client in HTTP/1.1.
    async fn send_h1_over_mesh(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        headers::upgrade_to_h2(&mut req, self.addr);
        let mut res = self.send_h2(req).await?;
        *res.version_mut() = http::Version::HTTP_11;
        Ok(res)
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
        reusable: bool,
    ) -> Result<Response<ProxyBody>, SendError> {
        *req.version_mut() = http::Version::HTTP_11;
        headers::to_h1_target(&mut req);
        let mut sender = match self.checkout() {
            // A pooled connection becomes ready once hyper has finished
            // reading the previous response; if it closed meanwhile, dial.
            Some(mut sender) => match sender.ready().await {
                Ok(()) => sender,
                Err(_) => self.connect_h1().await?,
            },
            None => self.connect_h1().await?,
        };
        let mut res = sender
            .send_request(req)
            .await
            .map_err(SendError::classify)?;
        // Versions are hop-by-hop: we answer our client in our own version
        // (hyper still speaks HTTP/1.0 to an HTTP/1.0 client), never in the
        // endpoint's, which would also switch off chunked framing.
        *res.version_mut() = http::Version::HTTP_11;
        let upgraded = res.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        let pool = (reusable && !upgraded).then(|| Arc::downgrade(self));
        Ok(res.map(|body| {
            boxed(Checkin {
                body,
                sender: Some(sender),
                pool,
            })
        }))
    }

    async fn send_h2(&self, mut req: Request<ProxyBody>) -> Result<Response<ProxyBody>, SendError> {
        *req.version_mut() = http::Version::HTTP_2;
        let mut sender = self.h2_sender().await?;
        let res = sender
            .send_request(req)
            .await
            .map_err(SendError::classify)?;
        Ok(res.map(boxed))
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still alive.
    fn checkout(&self) -> Option<http1::SendRequest<ProxyBody>> {
        let now = Instant::now();
        let ttl = self.config.h1_idle_timeout;
        let mut idle = self.lock_idle();
        while let Some(Idle { sender, since }) = idle.pop() {
            if now.saturating_duration_since(since) < ttl && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn checkin(&self, sender: http1::SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() < self.config.h1_max_idle_per_endpoint {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Drops idle connections older than the idle timeout; returns when the
    /// next one would expire.
    fn prune(&self) -> Duration {
        let now = Instant::now();
        let ttl = self.config.h1_idle_timeout;
        let mut idle = self.lock_idle();
        idle.retain(|i| now.saturating_duration_since(i.since) < ttl && !i.sender.is_closed());
        idle.iter()
            .map(|i| ttl.saturating_sub(now.saturating_duration_since(i.since)))
            .min()
            .unwrap_or(ttl)
    }

    /// A new connection to the endpoint: plain, or mutual TLS to its proxy
    /// carrying `alpn` when it is meshed.
    async fn dial(&self, alpn: Alpn) -> Result<TokioIo<MaybeTls<N::Stream>>, SendError> {
        let addr = self.addr;
        let Some((mesh, identity)) = self.meshed() else {
            let stream = self.dial_tcp(addr).await?;
            return Ok(TokioIo::new(MaybeTls::Plain(stream)));
        };
        let stream = self.dial_tcp(mesh.proxy_addr.unwrap_or(addr)).await?;
        let timeout = self.config.mesh_handshake_timeout;
        match tls::connect(stream, identity, &mesh.identity, alpn, addr.port(), timeout).await {
            Ok(connected) => Ok(TokioIo::new(MaybeTls::Tls(Box::new(connected.stream)))),
            Err(source) => Err(SendError::Tls { addr, source }),
        }
    }

    async fn dial_tcp(&self, addr: SocketAddr) -> Result<N::Stream, SendError> {
        let stream =
            match tokio::time::timeout(self.config.connect_timeout, self.network.connect(addr))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => return Err(SendError::Connect { addr, source }),
                Err(_) => {
                    let source =
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
                    return Err(SendError::Connect { addr, source });
                }
            };
        // Best effort: a proxy forwards what it has at once.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<ProxyBody>, SendError> {
        // Over the mesh only upgrades take this path: the tunnel is opaque.
        let io = self.dial(Alpn::Opaque).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| SendError::Handshake {
                addr: self.addr,
                source,
            })?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %e, "endpoint HTTP/1 connection ended");
            }
        });
        Ok(sender)
    }

    async fn h2_sender(&self) -> Result<http2::SendRequest<ProxyBody>, SendError> {
        let mut slot = self.h2.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let io = self.dial(Alpn::H2).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.config.h2_keepalive_interval)
            .keep_alive_timeout(self.config.h2_keepalive_timeout)
            .keep_alive_while_idle(true)
            .handshake(io)
            .await
            .map_err(|source| SendError::Handshake {
                addr: self.addr,
                source,
            })?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "endpoint HTTP/2 connection ended");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }
}

/// The endpoint side's TLS status, as metrics label it: mutual TLS when
/// the endpoint is meshed and mTLS is on here.
fn tls_status(mesh: &Option<Meshed>, identity: &Option<Arc<MeshIdentity>>) -> TlsStatus {
    match (mesh, identity) {
        (Some(mesh), Some(_)) => TlsStatus::Mutual(mesh.identity.clone()),
        (Some(_), None) => TlsStatus::Plain(NoTls::Disabled),
        (None, _) => TlsStatus::Plain(NoTls::NotMeshed),
    }
}

/// Closes expired idle connections until the endpoint is dropped.
async fn reap<N: Network>(client: Weak<EndpointClient<N>>) {
    let mut wait = match client.upgrade() {
        Some(c) => c.config.h1_idle_timeout,
        None => return,
    };
    loop {
        tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        let Some(client) = client.upgrade() else {
            return;
        };
        wait = client.prune();
    }
}

/// A response body that hands its HTTP/1 connection back to the pool once
/// it has been read to the end (a connection whose response was abandoned
/// midway is closed instead: its remaining bytes would corrupt the next
/// response).
#[derive(Debug)]
struct Checkin<N: Network> {
    body: Incoming,
    sender: Option<http1::SendRequest<ProxyBody>>,
    pool: Option<Weak<EndpointClient<N>>>,
}

impl<N: Network> Checkin<N> {
    fn release(&mut self) {
        if let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.take()) {
            if let Some(pool) = pool.upgrade() {
                pool.checkin(sender);
            }
        }
    }
}

impl<N: Network> Drop for Checkin<N> {
    /// A body that was complete but never polled to its end (an empty body
    /// hyper had no need to poll) still frees its connection.
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

impl<N: Network> Body for Checkin<N> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.sender = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::TokioNet;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP/1 server on loopback counting its open connections.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let o = open.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let o = o.clone();
                o.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(super::super::body::full(
                            "hi",
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, open)
    }

    fn get() -> Request<ProxyBody> {
        Request::get("/")
            .header("host", "a")
            .body(super::super::body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn h1_connections_return_to_the_pool_and_expire_when_idle() {
        let (addr, open) = server().await;
        let config = HttpConfig {
            h1_idle_timeout: Duration::from_millis(100),
            ..HttpConfig::default()
        };
        let client = EndpointClient::new(addr, None, None, TokioNet, Arc::new(config));
        for _ in 0..3 {
            let res = client.send(HttpVersion::Http1, get(), true).await.unwrap();
            assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "hi");
            assert_eq!(client.idle_len(), 1, "the connection came back");
        }
        assert_eq!(
            open.load(Ordering::SeqCst),
            1,
            "one connection served all three"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            client.idle_len(),
            0,
            "the reaper closed the idle connection"
        );
        assert_eq!(
            open.load(Ordering::SeqCst),
            0,
            "and the server saw it close"
        );
    }

    #[tokio::test]
    async fn an_abandoned_response_does_not_return_its_connection() {
        let (addr, _open) = server().await;
        let client =
            EndpointClient::new(addr, None, None, TokioNet, Arc::new(HttpConfig::default()));
        let res = client.send(HttpVersion::Http1, get(), true).await.unwrap();
        drop(res);
        assert_eq!(client.idle_len(), 0);
    }
}
