//! What the clients do: closed-loop HTTP workers and opaque sessions, each
//! recording every request and its answer in the [`Ledger`].
//!
//! A worker keeps one connection to the sidecar and sends one request at a
//! time (closed loop), a think time apart, until the run's traffic ends;
//! every request carries a unique id the server echoes. The client gives
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

use crate::ledger::{Answer, Ledger, Proto, RequestRecord, SessionKind, SessionRecord};
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
    /// Share of requests that are `POST` (never retried after they left).
    pub post_ratio: f64,
    /// Think time between a worker's requests, drawn uniformly.
    pub think: (Duration, Duration),
    /// Opaque echo sessions in a loop (client speaks first).
    pub echo_sessions: usize,
    /// Banner sessions in a loop (server speaks first).
    pub banner_sessions: usize,
    /// Sessions that stay silent past the detection timeout, then speak.
    pub silent_sessions: usize,
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
        ));
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
            Proto::H2 => {
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
        let id = base + seq;
        let method = if rng.random_bool(plan.workload.post_ratio) {
            "POST"
        } else {
            "GET"
        };
        let body = if method == "POST" {
            Bytes::from(format!("payload #{id}"))
        } else {
            Bytes::new()
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("http://svc/item/{id}"))
            .header("host", "svc")
            .header(ID_HEADER, id)
            .body(Full::new(body))
            .expect("a valid request");
        let sent_at = now();
        ledger
            .trace
            .record(&plan.name, format!("send {proto:?} {method} #{id}"));
        let exchange = async {
            let res = sender.send(req).await?;
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
            res.into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            Ok::<_, String>(Answer::Response {
                at: now(),
                status,
                needle_error,
                echoed,
                server,
            })
        };
        let answer = match tokio::time::timeout(deadline, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => Answer::Failed { at: now(), error },
            Err(_) => Answer::Late { at: now() },
        };
        let line = match &answer {
            Answer::Response {
                status,
                needle_error,
                server,
                ..
            } => format!(
                "answer #{id} {status} {} {}",
                server.as_deref().unwrap_or("-"),
                needle_error.as_deref().unwrap_or("")
            ),
            Answer::Failed { error, .. } => format!("failed #{id}: {error}"),
            Answer::Late { .. } => format!("late #{id}"),
        };
        ledger.trace.record(&plan.name, line);
        if !matches!(answer, Answer::Response { .. }) {
            // The connection's state is unknown: start afresh.
            if let Some((_, task)) = conn.take() {
                task.abort();
            }
        }
        ledger.request(RequestRecord {
            id,
            proto,
            method,
            sent_at,
            answer,
        });
        let think = rng.random_range(plan.workload.think.0..=plan.workload.think.1);
        tokio::time::sleep(think).await;
    }
    if let Some((sender, task)) = conn.take() {
        // Dropping the sender lets hyper close the connection cleanly.
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
