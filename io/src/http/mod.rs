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
pub use config::HttpConfig;
pub use errors::{BoxError, HttpError, NEEDLE_ERROR, ProxyError};

use crate::discovery::Discovery;
use crate::meta::ConnMeta;
use crate::net::Network;
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
    shared: Arc<ProxyShared>,
    discovery: Arc<dyn Discovery>,
    destinations: Mutex<Destinations<N>>,
    /// Seeds each destination's RNG in the order destinations are first
    /// seen, so a simulation seed replays every draw.
    seeds: Mutex<StdRng>,
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
    /// A proxy connecting to endpoints over `network`.
    pub fn new(network: N, config: HttpConfig, discovery: Arc<dyn Discovery>) -> Arc<Self> {
        let seeds = StdRng::seed_from_u64(config.rng_seed);
        Arc::new(HttpProxy {
            network,
            shared: Arc::new(ProxyShared {
                config: Arc::new(config),
                clock: crate::clock::Clock::start(),
            }),
            discovery,
            destinations: Mutex::new(Destinations {
                by_addr: BTreeMap::new(),
                next_sweep: tokio::time::Instant::now(),
            }),
            seeds: Mutex::new(seeds),
        })
    }

    /// The proxy's configuration.
    pub fn config(&self) -> &HttpConfig {
        &self.shared.config
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
        // Not read yet: authorization and metrics label requests with it.
        let _meta = meta;
        let config = &self.shared.config;
        match version {
            HttpVersion::Http1 => {
                // Every byte passes the framing validator before hyper reads
                // it (`framing`); the service tells the guard each response's
                // status (upgrades) and when its body is done.
                let signals = Arc::new(framing::Signals::default());
                let io = framing::Guarded::new(io, config.max_header_bytes, signals.clone());
                let shared = self.shared.clone();
                let requests = Arc::new(AtomicU64::new(0));
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    let destination = destination.clone();
                    let signals = signals.clone();
                    let request = requests.fetch_add(1, Ordering::Relaxed) + 1;
                    let connect = req.method() == Method::CONNECT;
                    // hyper's rule for a request that may switch protocols.
                    let may_upgrade = connect
                        || (req.version() == http::Version::HTTP_11
                            && req.headers().contains_key(http::header::UPGRADE));
                    async move {
                        let res = forward::handle(shared, destination, version, req).await;
                        let status = res.status();
                        let upgraded = may_upgrade
                            && (status == StatusCode::SWITCHING_PROTOCOLS
                                || (connect && status.is_success()));
                        signals.responded(request, upgraded);
                        Ok::<_, Infallible>(res.map(|b| framing::Answered::new(b, signals)))
                    }
                });
                http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(config.header_read_timeout)
                    .max_headers(config.max_headers)
                    .max_header_size(config.max_header_bytes)
                    .auto_date_header(config.auto_date_header)
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades()
                    .await
            }
            HttpVersion::Http2 => {
                let shared = self.shared.clone();
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    let destination = destination.clone();
                    async move {
                        Ok::<_, Infallible>(
                            forward::handle(shared, destination, version, req).await,
                        )
                    }
                });
                http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(config.h2_max_concurrent_streams)
                    .max_header_list_size(
                        u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX),
                    )
                    .max_pending_accept_reset_streams(config.h2_max_pending_accept_reset_streams)
                    .max_local_error_reset_streams(config.h2_max_local_error_reset_streams)
                    .max_send_buf_size(config.h2_max_send_buf_size)
                    .auto_date_header(config.auto_date_header)
                    .serve_connection(TokioIo::new(io), service)
                    .await
            }
        }
        .map_err(HttpError::Serve)
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
                Arc::strong_count(&cached.destination) > 1
                    || now.saturating_duration_since(cached.last_used) < idle_timeout
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
                    self.network.clone(),
                    self.shared.config.clone(),
                    self.discovery.resolve(dst),
                    seed,
                    self.shared.now(),
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
