//! What the clients do: closed-loop HTTP and gRPC workers, an open-loop
//! generator and opaque sessions, each recording every request and its
//! answer in the [`Ledger`].
//!
//! A worker keeps one connection to the sidecar and sends one request at a
//! time (closed loop), a think time apart, until the run's traffic ends.
//! The open-loop generator sends requests at a seeded Poisson rate
//! whatever happens to them, over a few shared HTTP/2 connections. Every
//! request carries a unique id the server echoes. The client gives
//! up on a request at the sidecar's request timeout plus [`SLACK`]: an
//! answer later than that is a violation, not an answer.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::grpc;
use crate::ledger::{
    Answer, GRPC_GET, GRPC_PUT, Ledger, Proto, RequestRecord, SessionKind, SessionRecord,
};
use crate::servers::{ID_HEADER, SERVER_HEADER};
use crate::trace::now;

/// Time past the sidecar's request timeout within which an answer must
/// still arrive (links, backoff rounding, the body after the head).
pub const SLACK: Duration = Duration::from_millis(500);

/// The sidecar's ports, as clients see them.
#[derive(Debug, Clone, Copy)]
pub struct SidecarPorts {
    /// HTTP to the service.
    pub http: u16,
    /// Opaque, to the legacy echo.
    pub echo: u16,
    /// Opaque, to the legacy banner service (server speaks first).
    pub banner: u16,
}

/// What the clients send.
#[derive(Debug, Clone)]
pub struct Workload {
    /// HTTP/1.1 workers.
    pub h1_workers: usize,
    /// HTTP/2 workers.
    pub h2_workers: usize,
    /// Share of requests that are `POST` (never retried after they left);
    /// of gRPC calls, those no route retries ([`GRPC_PUT`]).
    pub post_ratio: f64,
    /// Think time between a worker's requests, drawn uniformly.
    pub think: (Duration, Duration),
    /// Opaque echo sessions in a loop (client speaks first).
    pub echo_sessions: usize,
    /// Banner sessions in a loop (server speaks first).
    pub banner_sessions: usize,
    /// Sessions that stay silent past the detection timeout, then speak.
    pub silent_sessions: usize,
    /// Closed-loop gRPC workers (unary calls over HTTP/2).
    pub grpc_workers: usize,
    /// The open-loop generator, if any.
    pub open_loop: Option<OpenLoop>,
}

/// Open-loop arrivals: HTTP/2 requests at a fixed rate, whatever happens
/// to them.
#[derive(Debug, Clone, Copy)]
pub struct OpenLoop {
    /// Mean arrivals per second (a Poisson process drawn from the seed).
    pub rate: f64,
    /// HTTP/2 connections the requests share, round robin.
    pub connections: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            h1_workers: 2,
            h2_workers: 2,
            post_ratio: 0.2,
            think: (Duration::from_millis(20), Duration::from_millis(60)),
            echo_sessions: 0,
            banner_sessions: 0,
            silent_sessions: 0,
            grpc_workers: 0,
            open_loop: None,
        }
    }
}

/// What one client host needs to know.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    /// The client's host name.
    pub name: String,
    /// The run's seed (each worker derives its own RNG from it).
    pub seed: u64,
    /// The workload.
    pub workload: Workload,
    /// The sidecar's ports.
    pub ports: SidecarPorts,
    /// When workers stop starting requests.
    pub stop_at: Duration,
    /// The sidecar's request timeout (the client's deadline is this plus
    /// [`SLACK`]).
    pub request_timeout: Duration,
    /// The sidecar's detection timeout (silent sessions outwait it).
    pub detect_timeout: Duration,
    /// How long the client waits, after closing everything, for the
    /// sidecar to close its side.
    pub drain: Duration,
}

/// A client host's software: runs every worker and session, then closes
/// everything and waits for the drain.
pub async fn client(plan: ClientPlan, ledger: Ledger) -> turmoil::Result {
    let mut tasks = Vec::new();
    let w = &plan.workload;
    let kinds = std::iter::repeat_n(Worker::Http(Proto::H1), w.h1_workers)
        .chain(std::iter::repeat_n(Worker::Http(Proto::H2), w.h2_workers))
        .chain(std::iter::repeat_n(
            Worker::Session(SessionKind::Echo),
            w.echo_sessions,
        ))
        .chain(std::iter::repeat_n(
            Worker::Session(SessionKind::Banner),
            w.banner_sessions,
        ))
        .chain(std::iter::repeat_n(
            Worker::Session(SessionKind::Silent),
            w.silent_sessions,
        ))
        // New kinds go last: the workers before them keep their indexes,
        // hence their ids and RNG seeds.
        .chain(std::iter::repeat_n(
            Worker::Http(Proto::Grpc),
            w.grpc_workers,
        ))
        .chain(w.open_loop.map(Worker::Open));
    for (index, kind) in kinds.enumerate() {
        let plan = plan.clone();
        let ledger = ledger.clone();
        // Ids are unique per run: worker index in the high digits.
        let base = (index as u64 + 1) * 1_000_000;
        let rng = StdRng::seed_from_u64(plan.seed ^ (0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(base)));
        tasks.push(tokio::spawn(async move {
            match kind {
                Worker::Http(proto) => http_worker(&plan, &ledger, proto, base, rng).await,
                Worker::Session(kind) => session_worker(&plan, &ledger, kind, base, rng).await,
                Worker::Open(open) => open_loop(&plan, &ledger, open, base, rng).await,
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    ledger.trace.record(&plan.name, "all connections closed");
    tokio::time::sleep(plan.drain).await;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Worker {
    Http(Proto),
    Session(SessionKind),
    Open(OpenLoop),
}

type Body = Full<Bytes>;

/// One HTTP connection to the sidecar, either version.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Sender {
    async fn connect(
        proto: Proto,
        port: u16,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), String> {
        let stream = turmoil::net::TcpStream::connect(("sidecar", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let io = TokioIo::new(stream);
        match proto {
            Proto::H1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok((Sender::H1(sender), task))
            }
            Proto::H2 | Proto::Grpc => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| format!("handshake: {e}"))?;
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok((Sender::H2(sender), task))
            }
        }
    }

    async fn send(
        &mut self,
        req: Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        match self {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| format!("not ready: {e}"))?;
                s.send_request(req).await.map_err(|e| format!("send: {e}"))
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| format!("not ready: {e}"))?;
                s.send_request(req).await.map_err(|e| format!("send: {e}"))
            }
        }
    }
}

/// One request: who sends it, and what it is.
#[derive(Debug, Clone, Copy)]
struct Call {
    id: u64,
    proto: Proto,
    method: &'static str,
    call: Option<&'static str>,
}

impl Call {
    /// Draws the next request's kind: one draw from `rng`, `post_ratio`
    /// of them `POST` (for gRPC, the call no route retries: [`GRPC_PUT`]).
    fn draw(rng: &mut StdRng, post_ratio: f64, proto: Proto, id: u64) -> Self {
        let post = rng.random_bool(post_ratio);
        let (method, call) = match proto {
            Proto::Grpc => ("POST", Some(if post { GRPC_PUT } else { GRPC_GET })),
            _ => (if post { "POST" } else { "GET" }, None),
        };
        Call {
            id,
            proto,
            method,
            call,
        }
    }

    fn request(&self) -> Request<Body> {
        let id = self.id;
        if let Some(path) = self.call {
            // A unary call: one framed message, and the headers a gRPC
            // client sends.
            return Request::builder()
                .method("POST")
                .uri(format!("http://svc{path}"))
                .header("host", "svc")
                .header(http::header::CONTENT_TYPE, grpc::CONTENT_TYPE)
                .header(http::header::TE, "trailers")
                .header(ID_HEADER, id)
                .body(Full::new(grpc::frame(format!("item #{id}").as_bytes())))
                .expect("a valid request");
        }
        let body = if self.method == "POST" {
            Bytes::from(format!("payload #{id}"))
        } else {
            Bytes::new()
        };
        Request::builder()
            .method(self.method)
            .uri(format!("http://svc/item/{id}"))
            .header("host", "svc")
            .header(ID_HEADER, id)
            .body(Full::new(body))
            .expect("a valid request")
    }

    fn sent_line(&self) -> String {
        match self.call {
            Some(path) => format!("send {:?} {} {path} #{}", self.proto, self.method, self.id),
            None => format!("send {:?} {} #{}", self.proto, self.method, self.id),
        }
    }

    /// Waits for `response` (sending included) until `deadline`, reads the
    /// whole answer, and says what came back.
    async fn answer(
        &self,
        deadline: Duration,
        response: impl std::future::Future<
            Output = Result<http::Response<hyper::body::Incoming>, String>,
        >,
    ) -> Answer {
        let grpc_call = self.call.is_some();
        let exchange = async {
            let res = response.await?;
            let status = res.status().as_u16();
            let header = |name: &str| {
                res.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let needle_error = header(needle_io::http::NEEDLE_ERROR.as_str());
            let echoed = header(ID_HEADER).and_then(|v| v.parse::<u64>().ok());
            let server = header(SERVER_HEADER);
            let head_status = grpc::status_of(res.headers());
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            let grpc_status = if grpc_call {
                let trailer_status = body.trailers().and_then(grpc::status_of);
                let bytes = body.to_bytes();
                match (head_status, trailer_status) {
                    // Trailers-only: the status in the head, nothing else.
                    (Some(g), None) if bytes.is_empty() => Some(g),
                    (Some(_), _) => return Err("trailers-only answer with a body".into()),
                    (None, Some(g)) => {
                        if g == grpc::OK {
                            grpc::unframe(&bytes)
                                .map_err(|e| format!("malformed gRPC message: {e}"))?;
                        }
                        Some(g)
                    }
                    (None, None) => None,
                }
            } else {
                None
            };
            Ok::<_, String>(Answer::Response {
                at: now(),
                status,
                needle_error,
                echoed,
                server,
                grpc_status,
            })
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => Answer::Failed { at: now(), error },
            Err(_) => Answer::Late { at: now() },
        }
    }

    /// Traces and records the answer.
    fn record(&self, plan: &ClientPlan, ledger: &Ledger, sent_at: Duration, answer: Answer) {
        let id = self.id;
        let line = match &answer {
            Answer::Response {
                status,
                needle_error,
                server,
                grpc_status,
                ..
            } => {
                let mut line = format!(
                    "answer #{id} {status} {} {}",
                    server.as_deref().unwrap_or("-"),
                    needle_error.as_deref().unwrap_or("")
                );
                if self.call.is_some() {
                    match grpc_status {
                        Some(g) => line.push_str(&format!(" grpc-status {g}")),
                        None => line.push_str(" no grpc-status"),
                    }
                }
                line
            }
            Answer::Failed { error, .. } => format!("failed #{id}: {error}"),
            Answer::Late { .. } => format!("late #{id}"),
        };
        ledger.trace.record(&plan.name, line);
        ledger.request(RequestRecord {
            id,
            proto: self.proto,
            method: self.method,
            call: self.call,
            sent_at,
            answer,
        });
    }
}

/// Closes a client connection at the end of the traffic: dropping its
/// sender lets hyper close it cleanly; one still open a second later is
/// traced (and `connections-closed` will say so).
async fn close<S>(
    plan: &ClientPlan,
    ledger: &Ledger,
    sender: S,
    task: tokio::task::JoinHandle<()>,
) {
    drop(sender);
    if tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .is_err()
    {
        ledger
            .trace
            .record(&plan.name, "client connection did not close");
    }
}

/// Sends requests one at a time until the traffic ends.
async fn http_worker(plan: &ClientPlan, ledger: &Ledger, proto: Proto, base: u64, mut rng: StdRng) {
    let mut conn: Option<(Sender, tokio::task::JoinHandle<()>)> = None;
    let mut seq = 0;
    let deadline = plan.request_timeout + SLACK;
    while now() < plan.stop_at {
        if conn.is_none() {
            match Sender::connect(proto, plan.ports.http).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    // The client's link is never faulted: this is news.
                    ledger
                        .trace
                        .record(&plan.name, format!("connect failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some((sender, _)) = conn.as_mut() else {
            continue;
        };
        seq += 1;
        let call = Call::draw(&mut rng, plan.workload.post_ratio, proto, base + seq);
        let req = call.request();
        let sent_at = now();
        ledger.trace.record(&plan.name, call.sent_line());
        let answer = call.answer(deadline, sender.send(req)).await;
        if !matches!(answer, Answer::Response { .. }) {
            // The connection's state is unknown: start afresh.
            if let Some((_, task)) = conn.take() {
                task.abort();
            }
        }
        call.record(plan, ledger, sent_at, answer);
        let think = rng.random_range(plan.workload.think.0..=plan.workload.think.1);
        tokio::time::sleep(think).await;
    }
    if let Some((sender, task)) = conn.take() {
        close(plan, ledger, sender, task).await;
    }
}

type H2Sender = hyper::client::conn::http2::SendRequest<Body>;

/// Open loop: requests arrive as a Poisson process at `open.rate` per
/// second until the traffic ends, whether or not earlier ones were
/// answered, each on its own task over a small pool of HTTP/2 connections
/// (round robin). Overload then builds queues, and nothing slows the
/// arrivals down.
async fn open_loop(plan: &ClientPlan, ledger: &Ledger, open: OpenLoop, base: u64, mut rng: StdRng) {
    let deadline = plan.request_timeout + SLACK;
    let (origin, from) = (tokio::time::Instant::now(), now());
    let mut pool: Vec<Option<(H2Sender, tokio::task::JoinHandle<()>)>> =
        (0..open.connections.max(1)).map(|_| None).collect();
    let mut tasks = Vec::new();
    let mut at = from;
    let mut seq = 0u64;
    loop {
        // Exponential gaps: 1 - u is in (0, 1], so the log is finite.
        let u: f64 = rng.random();
        at += Duration::from_secs_f64(-(1.0 - u).ln() / open.rate);
        if at >= plan.stop_at {
            break;
        }
        tokio::time::sleep_until(origin + (at - from)).await;
        seq += 1;
        let slot = &mut pool[seq as usize % open.connections.max(1)];
        if slot.as_ref().is_none_or(|(s, _)| s.is_closed()) {
            match Sender::connect(Proto::H2, plan.ports.http).await {
                Ok((Sender::H2(s), task)) => *slot = Some((s, task)),
                Ok(_) => unreachable!("an HTTP/2 connection"),
                Err(e) => {
                    // The client's link is never faulted: this is news.
                    ledger
                        .trace
                        .record(&plan.name, format!("connect failed: {e}"));
                    continue;
                }
            }
        }
        let Some((sender, _)) = slot.as_ref() else {
            continue;
        };
        let mut sender = sender.clone();
        let call = Call::draw(&mut rng, plan.workload.post_ratio, Proto::H2, base + seq);
        let (plan, ledger) = (plan.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            let req = call.request();
            let sent_at = now();
            ledger.trace.record(&plan.name, call.sent_line());
            let send = async {
                sender
                    .ready()
                    .await
                    .map_err(|e| format!("not ready: {e}"))?;
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| format!("send: {e}"))
            };
            let answer = call.answer(deadline, send).await;
            call.record(&plan, &ledger, sent_at, answer);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    for (sender, task) in pool.into_iter().flatten() {
        close(plan, ledger, sender, task).await;
    }
}

/// Opaque sessions, one after another, until the traffic ends.
async fn session_worker(
    plan: &ClientPlan,
    ledger: &Ledger,
    kind: SessionKind,
    base: u64,
    mut rng: StdRng,
) {
    let mut seq = 0;
    while now() < plan.stop_at {
        seq += 1;
        let id = base + seq;
        let started = now();
        let mut first_byte = None;
        let budget = match kind {
            SessionKind::Silent => plan.detect_timeout * 2 + Duration::from_secs(1),
            _ => Duration::from_secs(1),
        };
        let run = session(plan, kind, id, &mut first_byte);
        let outcome = match tokio::time::timeout(budget, run).await {
            Ok(Ok(())) => Ok(now()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no end within {budget:?}")),
        };
        ledger.trace.record(
            &plan.name,
            format!(
                "session {kind:?} #{id}: {:?}",
                outcome.as_ref().map(|_| "ok")
            ),
        );
        ledger.session(SessionRecord {
            id,
            kind,
            started,
            first_byte,
            outcome,
        });
        let think = rng.random_range(Duration::from_millis(50)..=Duration::from_millis(200));
        tokio::time::sleep(think).await;
    }
}

/// One opaque exchange; the far side must finish when the client does.
async fn session(
    plan: &ClientPlan,
    kind: SessionKind,
    id: u64,
    first_byte: &mut Option<Duration>,
) -> Result<(), String> {
    let port = match kind {
        SessionKind::Banner => plan.ports.banner,
        SessionKind::Echo | SessionKind::Silent => plan.ports.echo,
    };
    let mut stream = turmoil::net::TcpStream::connect(("sidecar", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if kind == SessionKind::Banner {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            let mut byte = [0u8; 1];
            let n = stream
                .read(&mut byte)
                .await
                .map_err(|e| format!("greeting: {e}"))?;
            if n == 0 {
                return Err("closed before the greeting".into());
            }
            first_byte.get_or_insert_with(now);
            line.push(byte[0]);
        }
        if !line.starts_with(b"220 legacy ready") {
            return Err(format!("greeting {:?}", String::from_utf8_lossy(&line)));
        }
    }
    if kind == SessionKind::Silent {
        // Outwait detection: the sidecar must forward the connection, not
        // close it.
        tokio::time::sleep(plan.detect_timeout + Duration::from_millis(300)).await;
    }
    // A NUL first byte is no HTTP method and no TLS record: opaque at once.
    let payload = format!("\0sim {kind:?} #{id}\n");
    stream
        .write_all(payload.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut echo = vec![0u8; payload.len()];
    stream
        .read_exact(&mut echo)
        .await
        .map_err(|e| format!("echo: {e}"))?;
    first_byte.get_or_insert_with(now);
    if echo != payload.as_bytes() {
        return Err(format!("echo {:?}", String::from_utf8_lossy(&echo)));
    }
    stream
        .shutdown()
        .await
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .await
        .map_err(|e| format!("end: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} unexpected bytes", rest.len()));
    }
    Ok(())
}
