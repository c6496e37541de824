//! The application servers of a world.
//!
//! - **HTTP servers** (`server0`, `server1`, ...) on port 80, HTTP/1.1 and
//!   HTTP/2 on the same port (the sidecar speaks to an endpoint in the
//!   protocol the request arrived in). Each answers with the request's
//!   `x-sim-id` echoed, its name and version, and records every attempt
//!   that reaches it, and when each attempt leaves (answered, or cancelled
//!   by the sidecar). A gRPC request (`content-type: application/grpc`)
//!   gets a gRPC answer: one length-prefixed message and `grpc-status: 0`
//!   in the trailers, or, when failing, a trailers-only `UNAVAILABLE`. How
//!   it behaves (extra delay, share of failures) is a [`ServerCtl`] the
//!   fault schedule changes during the run; it survives a crash and
//!   restart, as a deployment's configuration would, and so does its
//!   capacity (how many requests it works on at once; the others queue),
//!   unlimited unless a scenario sets one.
//! - **The legacy host** (`legacy`): an opaque echo on port 7 and an
//!   SMTP-like banner service on port 25 that greets first. Faults never
//!   target it: an opaque connection has no request-level answer the
//!   sidecar could give, so under faults its only defined outcome is a
//!   timeout (see docs/simulation.md).

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::grpc;
use crate::ledger::{Arrival, Departure, Ledger};

/// The HTTP servers' port.
pub const HTTP_PORT: u16 = 80;
/// The legacy host's echo port.
pub const ECHO_PORT: u16 = 7;
/// The legacy host's banner (server-speaks-first) port.
pub const BANNER_PORT: u16 = 25;
/// Header carrying the request id both ways.
pub const ID_HEADER: &str = "x-sim-id";
/// Header naming the server that answered.
pub const SERVER_HEADER: &str = "x-sim-server";

/// How a server behaves right now.
#[derive(Debug)]
pub struct Behaviour {
    /// Added before every answer.
    pub delay: Duration,
    /// Share of requests answered 503 (gRPC: `UNAVAILABLE`).
    pub fail_ratio: f64,
    rng: StdRng,
    /// Requests worked on at once, when limited; the others wait, first
    /// come first served. Not a fault: healing leaves it.
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

/// One HTTP server's identity and behaviour, shared with the driver.
#[derive(Debug, Clone)]
pub struct ServerCtl {
    /// Index in the topology.
    pub index: usize,
    /// Host name (`server{index}`).
    pub name: String,
    /// Version label, answered in every body.
    pub version: String,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl ServerCtl {
    /// A healthy server; its 503 draws come from `seed`.
    pub fn new(index: usize, version: &str, seed: u64) -> Self {
        ServerCtl {
            index,
            name: format!("server{index}"),
            version: version.to_owned(),
            behaviour: Arc::new(Mutex::new(Behaviour {
                delay: Duration::ZERO,
                fail_ratio: 0.0,
                rng: StdRng::seed_from_u64(seed),
                slots: None,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        self.behaviour
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every answer take `delay` longer.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Makes `ratio` of the answers 503.
    pub fn set_fail_ratio(&self, ratio: f64) {
        self.lock().fail_ratio = ratio;
    }

    /// Works on at most `n` requests at once; the others queue.
    pub fn set_capacity(&self, n: usize) {
        self.lock().slots = Some(Arc::new(tokio::sync::Semaphore::new(n)));
    }

    /// Back to healthy.
    pub fn heal(&self) {
        let mut b = self.lock();
        b.delay = Duration::ZERO;
        b.fail_ratio = 0.0;
    }

    /// This request's delay, whether it fails, and the slots it must
    /// queue for.
    fn draw(&self) -> (Duration, bool, Option<Arc<tokio::sync::Semaphore>>) {
        let mut b = self.lock();
        let ratio = b.fail_ratio;
        let fail = ratio > 0.0 && b.rng.random_bool(ratio.min(1.0));
        (b.delay, fail, b.slots.clone())
    }
}

/// Spawns a server's tasks on the host's `LocalSet`, never with
/// `tokio::spawn`.
///
/// Why: turmoil crashes a host by dropping its runtime, which drops the
/// tasks spawned with `tokio::spawn` in an order that depends on tokio's
/// task ids, a process-wide counter, so it differs between two runs of a
/// seed in one process; each dropped connection sends its FIN or RST then,
/// and the sidecar sees them in that order. The `LocalSet`'s tasks are
/// dropped in the order they were spawned. (Found by
/// `sweep chaos --seeds 200..600 --twice`: 14 seeds, all with a crash,
/// replayed differently.)
#[derive(Debug, Clone, Copy)]
struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

fn any(port: u16) -> std::net::SocketAddr {
    (IpAddr::V4(Ipv4Addr::UNSPECIFIED), port).into()
}

/// An HTTP server's software: what runs on its host, again after a bounce.
pub async fn http_server(ctl: ServerCtl, ledger: Ledger) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(any(HTTP_PORT)).await?;
    ledger.trace.record(&ctl.name, "up");
    loop {
        let (stream, _) = listener.accept().await?;
        let ctl = ctl.clone();
        let ledger = ledger.clone();
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctl = ctl.clone();
                let ledger = ledger.clone();
                async move { Ok::<_, Infallible>(answer(&ctl, &ledger, req).await) }
            });
            let mut builder = auto::Builder::new(LocalExec);
            // tokio's (virtual) clock for hyper's timeouts, and no `date`
            // header: nothing from the system clock.
            builder
                .http1()
                .timer(TokioTimer::new())
                .auto_date_header(false);
            builder
                .http2()
                .timer(TokioTimer::new())
                .auto_date_header(false);
            // A connection the sidecar drops, or a partition, ends it.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A server's answers: whole bodies, or a gRPC message then trailers.
type Reply = Either<Full<Bytes>, grpc::WithTrailers>;

/// Records an attempt's departure when its answer is done or dropped.
struct Leaving<'a> {
    ledger: &'a Ledger,
    arrived: Duration,
    server: usize,
    id: u64,
    answered: bool,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.ledger.departure(Departure {
            arrived: self.arrived,
            at: turmoil::sim_elapsed(),
            server: self.server,
            id: self.id,
            answered: self.answered,
        });
    }
}

async fn answer(ctl: &ServerCtl, ledger: &Ledger, req: Request<Incoming>) -> Response<Reply> {
    let id = req
        .headers()
        .get(ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let method = req.method().as_str().to_owned();
    let arrived = crate::trace::now();
    ledger.arrival(Arrival {
        at: arrived,
        server: ctl.index,
        id,
        method: method.clone(),
    });
    let mut leaving = Leaving {
        ledger,
        arrived,
        server: ctl.index,
        id,
        answered: false,
    };
    let is_grpc = grpc::is_grpc(req.headers());
    ledger
        .trace
        .record(&ctl.name, format!("arrival {method} #{id}"));
    let (delay, fail, slots) = ctl.draw();
    // The body is read whole: a POST's body must have arrived to count.
    let body = req.into_body().collect().await;
    let _slot = match &slots {
        Some(slots) => slots.acquire().await.ok(),
        None => None,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let text = format!("{} {} #{id}", ctl.name, ctl.version);
    let mut res = if is_grpc {
        let message = body
            .map_err(|e| e.to_string())
            .and_then(|b| grpc::unframe(&b.to_bytes()).map(<[u8]>::to_vec));
        grpc_answer(fail, message, text)
    } else {
        let mut res = Response::new(Either::Left(Full::new(Bytes::from(text))));
        if fail {
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        res
    };
    res.headers_mut().insert(ID_HEADER, id.into());
    if let Ok(name) = http::HeaderValue::from_str(&ctl.name) {
        res.headers_mut().insert(SERVER_HEADER, name);
    }
    leaving.answered = true;
    res
}

/// A unary gRPC answer: the message and `OK` in the trailers;
/// trailers-only `UNAVAILABLE` when failing; `INVALID_ARGUMENT` for a
/// request that is not one framed message.
fn grpc_answer(fail: bool, message: Result<Vec<u8>, String>, text: String) -> Response<Reply> {
    let trailers_only = |code: u32, why: &str| {
        let mut res = Response::new(Either::Left(Full::new(Bytes::new())));
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(grpc::CONTENT_TYPE),
        );
        h.insert("grpc-status", code.into());
        if let Ok(why) = http::HeaderValue::from_str(why) {
            h.insert("grpc-message", why);
        }
        res
    };
    if fail {
        return trailers_only(grpc::UNAVAILABLE, "failing");
    }
    if let Err(e) = message {
        return trailers_only(3, &e);
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", grpc::OK.into());
    let mut res = Response::new(Either::Right(grpc::WithTrailers::new(
        grpc::frame(text.as_bytes()),
        trailers,
    )));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(grpc::CONTENT_TYPE),
    );
    res
}

/// The legacy host's software: an echo and a server-first banner service.
pub async fn legacy_server() -> turmoil::Result {
    let echo = turmoil::net::TcpListener::bind(any(ECHO_PORT)).await?;
    let banner = turmoil::net::TcpListener::bind(any(BANNER_PORT)).await?;
    let echoes = async {
        loop {
            let (stream, _) = echo.accept().await?;
            tokio::task::spawn_local(echo_conn(stream, None));
        }
        #[allow(unreachable_code)]
        Ok::<_, std::io::Error>(())
    };
    let banners = async {
        let mut n = 0u64;
        loop {
            let (stream, _) = banner.accept().await?;
            n += 1;
            tokio::task::spawn_local(echo_conn(stream, Some(format!("220 legacy ready {n}\r\n"))));
        }
        #[allow(unreachable_code)]
        Ok::<_, std::io::Error>(())
    };
    tokio::try_join!(echoes, banners)?;
    Ok(())
}

/// Greets (if told to), then echoes until the client finishes, then
/// finishes too.
async fn echo_conn(
    mut stream: turmoil::net::TcpStream,
    greeting: Option<String>,
) -> std::io::Result<()> {
    if let Some(greeting) = greeting {
        stream.write_all(greeting.as_bytes()).await?;
    }
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            stream.shutdown().await?;
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}
