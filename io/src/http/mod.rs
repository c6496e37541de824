//! # HTTP proxying
//!
//! [`HttpProxy::serve`] takes one client connection whose protocol
//! detection has already decided (HTTP/1.x or HTTP/2 prior knowledge) and
//! serves it with hyper; an HTTP/1 connection's bytes first pass the
//! request framing validator ([`framing`], request smuggling defence).
//! Each request then goes through
//! [`forward`](self::forward):
//!
//! 1. **check**: limits and framing rules hyper leaves to us ([`headers`]);
//! 2. **route**: the destination's HTTPRoutes pick a rule (timeouts, retry
//!    policy) and a backend of its weighted split (`needle_core::route`);
//! 3. **balance**: the backend's balancer picks an endpoint
//!    (`needle_core::balance`, p2c over peak-EWMA with failure accrual);
//! 4. **send** on that endpoint's own connections ([`client`]): pooled
//!    HTTP/1, multiplexed HTTP/2, in the protocol the request came in;
//! 5. **retry** as the core's retry state says (`needle_core::retry`: policy,
//!    budget, deadlines), replaying the body from a bounded copy ([`body`]);
//! 6. **answer**: the endpoint's response, or an error response naming
//!    Needle's reason ([`errors`]).
//!
//! Upgrades (WebSocket) and allowed `CONNECT`s take a single-attempt path
//! that splices the connections ([`upgrade`]).
//!
//! Time is `tokio::time` only: the proxy keeps the `tokio` instant it started
//! at and hands the core nanoseconds since then.

mod body;
mod client;
mod config;
mod destination;
mod errors;
mod forward;
mod framing;
mod headers;
mod upgrade;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use body::ProxyBody;
#[cfg(test)]
pub(crate) use body::{boxed as body_boxed, full as body_full};
pub use config::HttpConfig;
pub use errors::{BoxError, HttpError, NEEDLE_ERROR, ProxyError};
pub(crate) use headers::grpc_status as grpc_status_of;

use crate::discovery::Discovery;
use crate::meta::ConnMeta;
use crate::metrics::{Metrics, Observed};
use crate::net::Network;
use crate::tls::MeshIdentity;
use destination::Destination;

/// The HTTP version detection found on a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (the connection preface).
    Http2,
}

/// What every request handler needs: configuration and the clock.
#[derive(Debug)]
pub(crate) struct ProxyShared {
    config: Arc<HttpConfig>,
    clock: crate::clock::Clock,
}

impl ProxyShared {
    /// Now, as the core counts time: since the proxy started.
    pub(crate) fn now(&self) -> needle_core::time::Instant {
        self.clock.now()
    }

    /// A core instant as a `tokio` instant, to sleep until it.
    pub(crate) fn tokio_instant(&self, at: needle_core::time::Instant) -> tokio::time::Instant {
        self.clock.to_tokio(at)
    }
}

/// The HTTP half of the data plane: serves client connections and forwards
/// their requests to the endpoints discovery names.
pub struct HttpProxy<N: Network> {
    network: N,
    /// The local mesh identity, for mTLS to meshed endpoints; `None`: mTLS
    /// is off and every endpoint is reached in plaintext.
    identity: Option<Arc<MeshIdentity>>,
    shared: Arc<ProxyShared>,
    discovery: Arc<dyn Discovery>,
    destinations: Mutex<Destinations<N>>,
    metrics: Metrics,
    /// Seeds each destination's RNG in the order destinations are first
    /// seen, so a simulation seed replays every draw.
    seeds: Mutex<StdRng>,
    /// Set once the proxy drains (see [`HttpProxy::drain`]).
    drain: tokio::sync::watch::Sender<bool>,
}

/// Completes once `drain` says the proxy is draining (at once if it
/// already is); never if the proxy is gone without draining.
async fn draining(drain: &mut tokio::sync::watch::Receiver<bool>) {
    if drain.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl<N: Network + fmt::Debug> fmt::Debug for HttpProxy<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProxy")
            .field("network", &self.network)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<N: Network> HttpProxy<N> {
    /// A proxy connecting to endpoints over `network` in plaintext,
    /// recording into a registry of its own ([`metrics`](Self::metrics)).
    pub fn new(network: N, config: HttpConfig, discovery: Arc<dyn Discovery>) -> Arc<Self> {
        HttpProxy::meshed(network, config, discovery, None, Metrics::new())
    }

    /// A plaintext proxy recording into `metrics`, which other proxies and
    /// ports may share (one registry for the whole sidecar).
    pub fn with_metrics(
        network: N,
        config: HttpConfig,
        discovery: Arc<dyn Discovery>,
        metrics: Metrics,
    ) -> Arc<Self> {
        HttpProxy::meshed(network, config, discovery, None, metrics)
    }

    /// A proxy that reaches meshed endpoints over mutual TLS as `identity`
    /// (and unmeshed ones in plaintext), recording into `metrics`.
    pub fn meshed(
        network: N,
        config: HttpConfig,
        discovery: Arc<dyn Discovery>,
        identity: Option<Arc<MeshIdentity>>,
        metrics: Metrics,
    ) -> Arc<Self> {
        let seeds = StdRng::seed_from_u64(config.rng_seed);
        Arc::new(HttpProxy {
            network,
            identity,
            shared: Arc::new(ProxyShared {
                config: Arc::new(config),
                clock: crate::clock::Clock::start(),
            }),
            discovery,
            destinations: Mutex::new(Destinations {
                by_addr: BTreeMap::new(),
                next_sweep: tokio::time::Instant::now(),
            }),
            metrics,
            seeds: Mutex::new(seeds),
            drain: tokio::sync::watch::channel(false).0,
        })
    }

    /// Where the proxy records its metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The proxy's configuration.
    pub fn config(&self) -> &HttpConfig {
        &self.shared.config
    }

    /// The local mesh identity, when mTLS is on.
    pub fn identity(&self) -> Option<&Arc<MeshIdentity>> {
        self.identity.as_ref()
    }

    /// Where destinations are looked up.
    pub fn discovery(&self) -> &Arc<dyn Discovery> {
        &self.discovery
    }

    /// Serves one client connection whose protocol detection already
    /// decided; `io` replays the detected bytes. `dst` is where the client
    /// meant to go: it selects the service. `meta` says which side of the
    /// pod the connection is on and who the client proved to be. Returns
    /// when the connection closes; every request on it has been answered.
    pub async fn serve<I>(
        self: &Arc<Self>,
        io: I,
        version: HttpVersion,
        dst: SocketAddr,
        meta: ConnMeta,
    ) -> Result<(), HttpError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let destination = self.destination(dst);
        // The peer's proven identity, told to the application per request.
        let client_id = meta
            .client_tls
            .peer()
            .and_then(|id| http::HeaderValue::from_str(id.as_str()).ok());
        let metrics = Arc::new(self.metrics.http_conn(
            meta.direction,
            destination.authority().clone(),
            &meta.client_tls,
        ));
        let shared = self.shared.clone();
        // One request's answer, recorded: the same for both versions.
        // Boxed: the forwarding future holds every state of a request (retry
        // buffers, endpoint pick, timeouts) and is large; hyper moves the
        // service's future into its dispatcher, and a pointer moves for free
        // where the whole future cost ~20k instructions of memcpy a request.
        let answer = move |req: Request<Incoming>| {
            let shared = shared.clone();
            let destination = destination.clone();
            let client_id = client_id.clone();
            let metrics = metrics.clone();
            Box::pin(async move {
                let started = tokio::time::Instant::now();
                let mut observed = Observed::default();
                let res =
                    forward::handle(shared, destination, version, client_id, req, &mut observed)
                        .await;
                let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
                metrics.record(elapsed_ms, observed, res)
            })
        };
        let config = &self.shared.config;
        let mut drain = self.drain.subscribe();
        match version {
            HttpVersion::Http1 => {
                // Every byte passes the framing validator before hyper reads
                // it (`framing`); the service tells the guard each response's
                // status (upgrades) and when its body is done.
                let signals = Arc::new(framing::Signals::default());
                let io = framing::Guarded::new(io, config.max_header_bytes, signals.clone());
                let requests = Arc::new(AtomicU64::new(0));
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let signals = signals.clone();
                    let request = requests.fetch_add(1, Ordering::Relaxed) + 1;
                    let connect = req.method() == Method::CONNECT;
                    // hyper's rule for a request that may switch protocols.
                    let may_upgrade = connect
                        || (req.version() == http::Version::HTTP_11
                            && req.headers().contains_key(http::header::UPGRADE));
                    let answered = answer(req);
                    async move {
                        let res = answered.await;
                        let status = res.status();
                        let upgraded = may_upgrade
                            && (status == StatusCode::SWITCHING_PROTOCOLS
                                || (connect && status.is_success()));
                        signals.responded(request, upgraded);
                        Ok::<_, Infallible>(res.map(|b| framing::Answered::new(b, signals)))
                    }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(config.header_read_timeout)
                    .max_headers(config.max_headers)
                    .max_header_size(config.max_header_bytes)
                    .auto_date_header(config.auto_date_header)
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades();
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    served = conn.as_mut() => served,
                    () = draining(&mut drain) => {
                        // Answer what is in flight with `connection: close`,
                        // then close.
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
            HttpVersion::Http2 => {
                let service = hyper::service::service_fn(move |req| {
                    let answered = answer(req);
                    async move { Ok::<_, Infallible>(answered.await) }
                });
                let conn = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(config.h2_max_concurrent_streams)
                    .max_header_list_size(
                        u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX),
                    )
                    .max_pending_accept_reset_streams(config.h2_max_pending_accept_reset_streams)
                    .max_local_error_reset_streams(config.h2_max_local_error_reset_streams)
                    .max_send_buf_size(config.h2_max_send_buf_size)
                    .auto_date_header(config.auto_date_header)
                    .serve_connection(TokioIo::new(io), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    served = conn.as_mut() => served,
                    () = draining(&mut drain) => {
                        // GOAWAY: streams already open finish, no new ones.
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
        }
        .map_err(HttpError::Serve)
    }

    /// Starts a graceful shutdown of every client connection, present and
    /// future: HTTP/1 connections answer their current request with
    /// `connection: close` and close, HTTP/2 connections send GOAWAY and
    /// close once their open streams finish.
    pub fn drain(&self) {
        self.drain.send_replace(true);
    }

    /// How many destinations the proxy currently keeps state for.
    pub fn destinations_cached(&self) -> usize {
        self.lock_destinations().by_addr.len()
    }

    fn lock_destinations(&self) -> std::sync::MutexGuard<'_, Destinations<N>> {
        self.destinations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The state of destination `dst`, created on first use. Destinations
    /// unused (no connection holds them) for `destination_idle_timeout` are
    /// forgotten, in a sweep at most twice per timeout.
    fn destination(&self, dst: SocketAddr) -> Arc<Destination<N>> {
        let now = tokio::time::Instant::now();
        let idle_timeout = self.shared.config.destination_idle_timeout;
        let mut destinations = self.lock_destinations();
        if now >= destinations.next_sweep {
            destinations.by_addr.retain(|_, cached| {
                let keep = Arc::strong_count(&cached.destination) > 1
                    || now.saturating_duration_since(cached.last_used) < idle_timeout;
                if !keep {
                    // Its series go with it, so label sets stay bounded by
                    // the destinations the proxy knows.
                    self.metrics
                        .forget_authority(cached.destination.authority());
                }
                keep
            });
            destinations.next_sweep = now + idle_timeout / 2;
        }
        let cached = destinations.by_addr.entry(dst).or_insert_with(|| {
            let seed = self
                .seeds
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .random();
            Cached {
                destination: Destination::new(
                    destination::Connector {
                        network: self.network.clone(),
                        identity: self.identity.clone(),
                        config: self.shared.config.clone(),
                    },
                    self.discovery.resolve(dst),
                    seed,
                    self.shared.now(),
                    self.metrics.clone(),
                    Arc::from(dst.to_string()),
                ),
                last_used: now,
            }
        });
        cached.last_used = now;
        cached.destination.clone()
    }
}

/// Every destination the proxy keeps state for.
struct Destinations<N: Network> {
    by_addr: BTreeMap<SocketAddr, Cached<N>>,
    /// When unused entries are next looked for.
    next_sweep: tokio::time::Instant,
}

/// One destination's state and when a connection last asked for it.
struct Cached<N: Network> {
    destination: Arc<Destination<N>>,
    last_used: tokio::time::Instant,
}
