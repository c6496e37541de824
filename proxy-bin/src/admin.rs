//! The admin server (port 4191): what Kubernetes probes and Prometheus
//! scrape, and the few knobs an operator turns at run time.
//!
//! | path | method | answers |
//! |---|---|---|
//! | `/live` | GET | 200 while the process serves at all |
//! | `/ready` | GET | 200 once listeners are bound and credentials loaded, else 503 |
//! | `/metrics` | GET | the golden metrics, Prometheus text format |
//! | `/config` | GET | the effective configuration, each value with its source |
//! | `/log-level` | GET / PUT | the log filter; PUT sets a new one (localhost only) |
//! | `/shutdown` | POST | graceful shutdown, when `admin.enable_shutdown` (localhost only) |
//!
//! Endpoints that change state answer only to connections from a loopback
//! address: the admin port is reachable from the pod network for probes
//! and scrapes, and nobody there should be able to stop the proxy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{debug, info};

use crate::logging::LogControl;

/// What the admin server shows and controls.
pub(crate) struct Admin {
    /// Set once the sidecar can serve.
    pub(crate) ready: AtomicBool,
    /// Renders the metrics.
    pub(crate) metrics: Box<dyn Fn() -> String + Send + Sync>,
    /// The effective configuration, rendered.
    pub(crate) config: String,
    /// The log filter.
    pub(crate) log: LogControl,
    /// Whether POST /shutdown is allowed.
    pub(crate) enable_shutdown: bool,
    /// Notified by POST /shutdown.
    pub(crate) shutdown: Arc<Notify>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

/// Serves the admin API on `listener` until the process ends.
pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            // Set by POST /shutdown; acted on once this connection is done,
            // so the caller gets its whole `200` before the process exits
            // (exiting first could reset the connection under the answer).
            let requested = Arc::new(AtomicBool::new(false));
            let service = {
                let (admin, requested) = (admin.clone(), requested.clone());
                hyper::service::service_fn(move |req| {
                    let (admin, requested) = (admin.clone(), requested.clone());
                    async move { Ok::<_, Infallible>(handle(&admin, peer, req, &requested).await) }
                })
            };
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                debug!(%peer, %error, "admin connection failed");
            }
            if requested.load(Ordering::Relaxed) {
                admin.shutdown.notify_one();
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

async fn handle(
    admin: &Admin,
    peer: SocketAddr,
    req: Request<Incoming>,
    shutdown_requested: &AtomicBool,
) -> Response<Full<Bytes>> {
    let local = peer.ip().is_loopback();
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") => match admin.ready.load(Ordering::Acquire) {
            true => text(StatusCode::OK, "ready\n"),
            false => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        },
        (&Method::GET, "/metrics") => {
            let mut res = text(StatusCode::OK, (admin.metrics)());
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(needle_io::metrics::CONTENT_TYPE),
            );
            res
        }
        (&Method::GET, "/config") => text(StatusCode::OK, admin.config.clone()),
        (&Method::GET, "/log-level") => text(StatusCode::OK, format!("{}\n", admin.log.current())),
        (&Method::PUT, "/log-level") if !local => {
            text(StatusCode::FORBIDDEN, "only from localhost\n")
        }
        (&Method::PUT, "/log-level") => {
            // A filter is a short line; anything longer is refused unread.
            let body = match Limited::new(req.into_body(), 4096).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "at most 4096 bytes\n"),
            };
            let filter = String::from_utf8_lossy(&body).trim().to_owned();
            match admin.log.set(&filter) {
                Ok(()) => {
                    info!(%filter, "log filter changed");
                    text(StatusCode::OK, format!("{filter}\n"))
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (&Method::POST, "/shutdown") if !admin.enable_shutdown => text(
            StatusCode::NOT_FOUND,
            "shutdown is disabled (admin.enable_shutdown)\n",
        ),
        (&Method::POST, "/shutdown") if !local => {
            text(StatusCode::FORBIDDEN, "only from localhost\n")
        }
        (&Method::POST, "/shutdown") => {
            info!("shutdown requested through the admin server");
            shutdown_requested.store(true, Ordering::Relaxed);
            let mut res = text(StatusCode::OK, "shutting down\n");
            // The connection ends with this answer; then the shutdown starts.
            res.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            res
        }
        (_, "/live" | "/ready" | "/metrics" | "/config" | "/log-level" | "/shutdown") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /live /ready /metrics /config /log-level /shutdown\n",
        ),
    }
}
