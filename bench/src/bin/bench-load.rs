//! The end-to-end benchmark's open-loop load generator.
//!
//! wrk keeps a fixed number of requests in flight (closed loop), which hides
//! latency: a slow answer delays the next request instead of being measured
//! (coordinated omission). This tool sends at a fixed rate whatever the
//! answers do, and measures each request from when it was *due*, if its
//! connection was still busy then, or from when it left otherwise (so the
//! tool's own timer lateness is not charged to the proxy).
//!
//! Usage: `bench-load ADDR --proto h1|h2 --rate R --seconds S
//! [--connections C] [--warmup S]`. HTTP/1.1 spreads the requests over C
//! keep-alive connections, round robin; HTTP/2 multiplexes them on one
//! connection (prior knowledge). Prints one JSON object: counts, the
//! achieved rate and the latency percentile curve in microseconds.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, Clone)]
struct Args {
    addr: SocketAddr,
    h2: bool,
    rate: f64,
    seconds: f64,
    warmup: f64,
    connections: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let addr = it
        .next()
        .ok_or("usage: bench-load ADDR --proto h1|h2 --rate R --seconds S [--connections C] [--warmup S]")?
        .parse()
        .map_err(|e| format!("ADDR: {e}"))?;
    let mut args = Args {
        addr,
        h2: false,
        rate: 1000.0,
        seconds: 10.0,
        warmup: 1.0,
        connections: 16,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--proto" => args.h2 = value == "h2",
            "--rate" => args.rate = number()?,
            "--seconds" => args.seconds = number()?,
            "--warmup" => args.warmup = number()?,
            "--connections" => args.connections = number()? as usize,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.rate <= 0.0 || args.seconds <= 0.0 || args.connections == 0 {
        return Err("rate, seconds and connections must be positive".into());
    }
    Ok(args)
}

/// What the run saw; shared by the connection tasks of one thread.
#[derive(Debug)]
struct Tally {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: u64,
    /// The first error seen, to say why a run failed.
    first_error: Option<String>,
    /// Only requests due after the warm-up are recorded.
    record_from: Instant,
}

impl Tally {
    fn note_status(&mut self, status: http::StatusCode) {
        if self.first_error.is_none() {
            self.first_error = Some(format!("answered {status}"));
        }
    }

    fn note_error(&mut self, e: &dyn std::error::Error) {
        if self.first_error.is_none() {
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            self.first_error = Some(text);
        }
    }

    fn record(&mut self, due: Instant, from: Instant, ok: bool) {
        if due < self.record_from {
            return;
        }
        if ok {
            self.ok += 1;
            let us = from.elapsed().as_micros().max(1) as u64;
            let _ = self.latency_us.record(us.min(self.latency_us.high()));
        } else {
            self.errors += 1;
        }
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-load: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, run(args.clone())) {
        Ok(tally) => print_json(&args, &tally),
        Err(e) => {
            eprintln!("bench-load: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> Result<Tally, Box<dyn std::error::Error>> {
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let total = ((args.warmup + args.seconds) * args.rate) as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let tally = Rc::new(RefCell::new(Tally {
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        ok: 0,
        errors: 0,
        first_error: None,
        record_from: start + Duration::from_secs_f64(args.warmup),
    }));
    let due = move |i: u64| start + interval * (i as u32);
    if args.h2 {
        let mut sender = h2_connect(args.addr).await?;
        let mut tasks = Vec::new();
        for i in 0..total {
            let at = due(i);
            tokio::time::sleep_until(at).await;
            // A server may end a connection after so many requests (GOAWAY):
            // the next request goes on a new one, like a real client.
            if sender.is_closed() {
                sender = h2_connect(args.addr).await?;
            }
            let mut sender = sender.clone();
            let tally = tally.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let sent = Instant::now();
                let ok = match sender.send_request(request(args.addr, true)).await {
                    Ok(resp) => {
                        if !resp.status().is_success() {
                            tally.borrow_mut().note_status(resp.status());
                        }
                        resp.status().is_success() && resp.into_body().collect().await.is_ok()
                    }
                    Err(e) => {
                        tally.borrow_mut().note_error(&e);
                        false
                    }
                };
                tally.borrow_mut().record(at, sent, ok);
            }));
        }
        for t in tasks {
            t.await?;
        }
    } else {
        let mut tasks = Vec::new();
        for k in 0..args.connections as u64 {
            let tally = tally.clone();
            let addr = args.addr;
            let step = args.connections as u64;
            tasks.push(tokio::task::spawn_local(async move {
                let mut sender = None;
                let mut prev_done = Instant::now();
                let mut i = k;
                while i < total {
                    let at = due(i);
                    tokio::time::sleep_until(at).await;
                    // Due while this connection was still busy: measured from
                    // when it was due (the wait is the system's, not ours).
                    // Otherwise from now: the timer's own lateness is ours.
                    let from = if prev_done > at { at } else { Instant::now() };
                    if sender.is_none() {
                        sender = h1_connect(addr).await.ok();
                    }
                    let ok = match sender.as_mut() {
                        Some(s) => match s.send_request(request(addr, false)).await {
                            Ok(resp) => {
                                if !resp.status().is_success() {
                                    tally.borrow_mut().note_status(resp.status());
                                }
                                resp.status().is_success()
                                    && resp.into_body().collect().await.is_ok()
                            }
                            Err(e) => {
                                tally.borrow_mut().note_error(&e);
                                false
                            }
                        },
                        None => false,
                    };
                    if !ok {
                        sender = None;
                    }
                    tally.borrow_mut().record(at, from, ok);
                    prev_done = Instant::now();
                    i += step;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
    }
    let tally = Rc::try_unwrap(tally).map_err(|_| "tasks still hold the tally")?;
    Ok(tally.into_inner())
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn h2_connect(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>, Box<dyn std::error::Error>> {
    let stream = connect(addr).await?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::task::spawn_local(conn);
    Ok(sender)
}

async fn h1_connect(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, Box<dyn std::error::Error>> {
    let stream = connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::task::spawn_local(conn);
    Ok(sender)
}

/// A GET of `/`. HTTP/1.1 needs `host`; HTTP/2 carries the authority in the
/// URI (nginx refuses an h2 request that has both).
fn request(addr: SocketAddr, h2: bool) -> Request<Empty<Bytes>> {
    let builder = Request::get(format!("http://{addr}/"));
    let builder = if h2 {
        builder
    } else {
        builder.header(http::header::HOST, addr.to_string())
    };
    builder.body(Empty::new()).expect("a valid request")
}

fn print_json(args: &Args, tally: &Tally) {
    let h = &tally.latency_us;
    let pcts = [
        50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
    ];
    let curve: Vec<String> = pcts
        .iter()
        .map(|p| format!("[{p}, {}]", h.value_at_quantile(p / 100.0)))
        .collect();
    if let Some(e) = &tally.first_error {
        eprintln!("bench-load: first error: {e}");
    }
    println!(
        "{{\"proto\": \"{}\", \"rate\": {}, \"seconds\": {}, \"ok\": {}, \"errors\": {}, \"achieved_rate\": {:.1}, \"p50_us\": {}, \"p99_us\": {}, \"p999_us\": {}, \"max_us\": {}, \"mean_us\": {:.1}, \"curve\": [{}]}}",
        if args.h2 { "h2" } else { "h1" },
        args.rate,
        args.seconds,
        tally.ok,
        tally.errors,
        tally.ok as f64 / args.seconds,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        h.mean(),
        curve.join(", ")
    );
}
