//! Golden metrics through a real `Port` over loopback: HTTP/1.1, HTTP/2, a
//! gRPC call, a 503 (the endpoint's, and Needle's own) and opaque TCP, each
//! checked against the exact series `/metrics` would serve, byte counts
//! against what the client actually sent and received.

mod common;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use needle_io::discovery::{Backend as SvcBackend, Service, StaticDiscovery};
use needle_io::http::{HttpConfig, HttpProxy, ProxyBody};
use needle_io::meta::Direction;
use needle_io::metrics::Metrics;
use needle_io::net::TokioNet;
use needle_io::proxy::{Port, PortConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A port on loopback, forwarding to `target` through `http`.
async fn port_via(
    http: Arc<HttpProxy<TokioNet>>,
    direction: Direction,
    target: SocketAddr,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = PortConfig {
        direction,
        target: Some(target),
        ..PortConfig::default()
    };
    let port = Port::with_http(TokioNet, config, http);
    tokio::spawn(port.run(listener, std::future::pending()));
    addr
}

/// A port with its own metrics, every destination its own endpoint.
async fn port(target: SocketAddr) -> (SocketAddr, Metrics) {
    let http = HttpProxy::new(TokioNet, HttpConfig::default(), StaticDiscovery::new());
    let metrics = http.metrics().clone();
    (port_via(http, Direction::Outbound, target).await, metrics)
}

/// A client stream counting the bytes it reads and writes.
struct Counting {
    inner: TcpStream,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read
            .fetch_add((buf.filled().len() - before) as u64, Ordering::SeqCst);
        r
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written.fetch_add(n as u64, Ordering::SeqCst);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Bytes a client connection sent and received.
#[derive(Clone, Default)]
struct Counts {
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl Counts {
    async fn connect(&self, addr: SocketAddr) -> TokioIo<Counting> {
        TokioIo::new(Counting {
            inner: TcpStream::connect(addr).await.unwrap(),
            read: self.read.clone(),
            written: self.written.clone(),
        })
    }
    fn read(&self) -> f64 {
        self.read.load(Ordering::SeqCst) as f64
    }
    fn written(&self) -> f64 {
        self.written.load(Ordering::SeqCst) as f64
    }
}

/// A backend answering `/fail` with 503 and anything else with `hello`.
async fn http_backend() -> Backend {
    backend(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/fail" {
            let mut res = Response::new(full("down"));
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return res;
        }
        Response::new(full("hello"))
    })
    .await
}

fn tcp_labels(target: SocketAddr) -> String {
    format!("direction=outbound,peer=src,target_addr={target},tls=not_provided_by_remote")
}

fn request_labels(authority: SocketAddr) -> String {
    format!("authority={authority},direction=outbound,route=default,tls=not_meshed")
}

#[tokio::test]
async fn http1_requests_a_503_retries_and_bytes_are_counted_exactly() {
    let b = http_backend().await;
    let (addr, metrics) = port(b.addr).await;
    let counts = Counts::default();
    let (mut client, conn) = hyper::client::conn::http1::handshake(counts.connect(addr).await)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    for _ in 0..2 {
        let res = client.send_request(get("/ok")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(text(res).await, "hello");
    }
    let res = client.send_request(get("/fail")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(text(res).await, "down");
    drop(client);
    conn.await.unwrap().unwrap();
    all_closed(&metrics).await;

    // A GET answered 503 is retried twice (3 attempts): one request for the
    // client, two retries, three requests at the endpoint.
    assert_eq!(b.requests(), 5);
    let req = request_labels(b.addr);
    expect(&metrics, "request_total", &[(&req, 3.0)]);
    expect(
        &metrics,
        "response_total",
        &[
            (
                &format!("{req},classification=failure,status_code=503"),
                1.0,
            ),
            (
                &format!("{req},classification=success,status_code=200"),
                2.0,
            ),
        ],
    );
    expect(&metrics, "response_latency_ms_count", &[(&req, 3.0)]);
    expect(
        &metrics,
        "retry_total",
        &[(
            &format!("authority={},direction=outbound,route=default", b.addr),
            2.0,
        )],
    );
    let tcp = tcp_labels(b.addr);
    expect(&metrics, "tcp_open_total", &[(&tcp, 1.0)]);
    expect(&metrics, "tcp_close_total", &[(&tcp, 1.0)]);
    expect(&metrics, "tcp_open_connections", &[(&tcp, 0.0)]);
    expect(
        &metrics,
        "tcp_read_bytes_total",
        &[(&tcp, counts.written())],
    );
    expect(&metrics, "tcp_write_bytes_total", &[(&tcp, counts.read())]);
    expect(
        &metrics,
        "detect_total",
        &[("direction=outbound,protocol=http1,reason=detected", 1.0)],
    );
}

/// A body of ready frames (data, then trailers).
struct Frames(VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn grpc_body(status: Option<&str>) -> ProxyBody {
    // One length-prefixed message of 3 bytes, as gRPC frames it.
    let mut frames = VecDeque::from([Frame::data(Bytes::from_static(b"\0\0\0\0\x03abc"))]);
    if let Some(status) = status {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", status.parse().unwrap());
        frames.push_back(Frame::trailers(trailers));
    }
    Frames(frames)
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[tokio::test]
async fn http2_and_grpc_statuses_are_classified_and_bytes_counted() {
    // A gRPC server at the wire level: `/test.Echo/Missing` ends with
    // NOT_FOUND (5) in its trailers, everything else with OK (0).
    let b = backend(|req: Request<hyper::body::Incoming>| async move {
        let status = if req.uri().path() == "/test.Echo/Missing" {
            "5"
        } else {
            "0"
        };
        let grpc = req.headers().contains_key("content-type");
        let mut res = Response::new(if grpc {
            grpc_body(Some(status))
        } else {
            full("plain")
        });
        if grpc {
            res.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
        }
        res
    })
    .await;
    let (addr, metrics) = port(b.addr).await;
    let counts = Counts::default();
    let (mut client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), counts.connect(addr).await)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let call = |path: &str| {
        Request::post(path)
            .header("host", "svc.test")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(grpc_body(None))
            .unwrap()
    };
    let res = client
        .send_request(get("http://svc.test/plain"))
        .await
        .unwrap();
    assert_eq!(text(res).await, "plain");
    for (path, want) in [
        ("http://svc.test/test.Echo/Unary", "0"),
        ("http://svc.test/test.Echo/Missing", "5"),
    ] {
        let res = client.send_request(call(path)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], want);
    }
    drop(client);
    conn.await.unwrap().unwrap();
    all_closed(&metrics).await;

    let req = request_labels(b.addr);
    expect(&metrics, "request_total", &[(&req, 3.0)]);
    expect(
        &metrics,
        "response_total",
        &[
            (
                &format!("{req},classification=failure,grpc_status=5,status_code=200"),
                1.0,
            ),
            (
                &format!("{req},classification=success,grpc_status=0,status_code=200"),
                1.0,
            ),
            (
                &format!("{req},classification=success,status_code=200"),
                1.0,
            ),
        ],
    );
    let tcp = tcp_labels(b.addr);
    expect(&metrics, "tcp_open_total", &[(&tcp, 1.0)]);
    expect(&metrics, "tcp_close_total", &[(&tcp, 1.0)]);
    expect(&metrics, "tcp_open_connections", &[(&tcp, 0.0)]);
    expect(
        &metrics,
        "tcp_read_bytes_total",
        &[(&tcp, counts.written())],
    );
    expect(&metrics, "tcp_write_bytes_total", &[(&tcp, counts.read())]);
    expect(
        &metrics,
        "detect_total",
        &[("direction=outbound,protocol=h2,reason=detected", 1.0)],
    );
}

#[tokio::test]
async fn needles_own_503_has_no_endpoint_labels_and_ports_share_a_registry() {
    // One registry for two ports, as a sidecar has (inbound and outbound).
    let metrics = Metrics::new();
    let discovery = StaticDiscovery::new();
    let b = http_backend().await;
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    discovery.set(
        nowhere,
        Service {
            backends: vec![SvcBackend {
                name: "default".to_owned(),
                endpoints: Vec::new(),
            }],
            ..Service::default()
        },
    );
    let http = |m: &Metrics| {
        HttpProxy::with_metrics(
            TokioNet,
            HttpConfig::default(),
            discovery.clone(),
            m.clone(),
        )
    };
    let outbound = port_via(http(&metrics), Direction::Outbound, nowhere).await;
    let inbound = port_via(http(&metrics), Direction::Inbound, b.addr).await;

    let mut out_client = h1_client(outbound).await;
    let res = out_client.send_request(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(needle_error(&res).as_deref(), Some("no-endpoints"));
    let mut in_client = h1_client(inbound).await;
    let res = in_client.send_request(get("/ok")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop((out_client, in_client));
    all_closed(&metrics).await;

    // Needle answered without an endpoint: no `tls` on the outbound series.
    // Inbound is labelled by the client's side (plaintext here).
    let out = format!("authority={nowhere},direction=outbound,route=default");
    let inb = format!(
        "authority={},direction=inbound,route=default,tls=not_provided_by_remote",
        b.addr
    );
    expect(&metrics, "request_total", &[(&inb, 1.0), (&out, 1.0)]);
    expect(
        &metrics,
        "response_total",
        &[
            (
                &format!("{inb},classification=success,status_code=200"),
                1.0,
            ),
            (
                &format!("{out},classification=failure,status_code=503"),
                1.0,
            ),
        ],
    );
    let open = series(&metrics, "tcp_open_total");
    assert_eq!(open.len(), 2, "{open:?}");
    assert_eq!(open.values().sum::<f64>(), 2.0);
}

#[tokio::test]
async fn opaque_tcp_bytes_match_what_the_client_sent_and_received() {
    // Echoes everything upper-cased, then a trailer, once the client is done.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        conn.write_all(&got.to_ascii_uppercase()).await.unwrap();
        conn.write_all(b"+done").await.unwrap();
        conn.shutdown().await.unwrap();
    });
    let (addr, metrics) = port(server).await;
    let payload = vec![0x01u8; 100_000];
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&payload).await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer.len(), 100_005);
    drop(client);
    all_closed(&metrics).await;

    let tcp = tcp_labels(server);
    expect(&metrics, "tcp_open_total", &[(&tcp, 1.0)]);
    expect(&metrics, "tcp_close_total", &[(&tcp, 1.0)]);
    expect(&metrics, "tcp_open_connections", &[(&tcp, 0.0)]);
    expect(&metrics, "tcp_read_bytes_total", &[(&tcp, 100_000.0)]);
    expect(&metrics, "tcp_write_bytes_total", &[(&tcp, 100_005.0)]);
    expect(
        &metrics,
        "detect_total",
        &[(
            "direction=outbound,protocol=opaque,reason=unrecognized",
            1.0,
        )],
    );
    assert!(series(&metrics, "request_total").is_empty());
}

#[tokio::test]
async fn a_scrape_sees_a_long_lived_connection_progress() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let (addr, metrics) = port(server).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let tcp = tcp_labels(server);
    let mut buf = [0u8; 4];
    for round in 1..=3u32 {
        // Binary, so detection decides at once.
        client.write_all(b"\0abc").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        // The echo came back through the proxy, so it has been counted.
        let n = f64::from(round * 4);
        expect(&metrics, "tcp_read_bytes_total", &[(&tcp, n)]);
        expect(&metrics, "tcp_write_bytes_total", &[(&tcp, n)]);
        expect(&metrics, "tcp_open_connections", &[(&tcp, 1.0)]);
    }
    drop(client);
    all_closed(&metrics).await;
}

/// A proxy (no port: `serve` per connection) whose destination `dst` is
/// `endpoint`, and its metrics.
async fn http_proxy_to(
    endpoint: SocketAddr,
    config: HttpConfig,
) -> (SocketAddr, Metrics, SocketAddr) {
    let discovery = StaticDiscovery::new();
    let dst: SocketAddr = "127.0.0.1:1".parse().unwrap();
    discovery.set(
        dst,
        Service::with_endpoints([needle_io::discovery::Endpoint::new(endpoint)]),
    );
    let (addr, proxy) = proxy(discovery, config, needle_io::http::HttpVersion::Http1, dst).await;
    (addr, proxy.metrics().clone(), dst)
}

#[tokio::test]
async fn retries_and_budget_exhaustion_are_counted_per_route() {
    let always_busy = backend(|_req| async move {
        let mut res = Response::new(full("busy"));
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        res
    })
    .await;
    // No earned budget, a floor of 1 retry/s over 5 s: 5 retries to spend.
    let config = HttpConfig {
        retry_budget: needle_core::retry::BudgetConfig {
            ratio: 0.0,
            min_per_second: 1,
            window: Duration::from_secs(5),
        },
        balance: needle_core::balance::BalanceConfig {
            accrual: needle_core::accrual::AccrualConfig {
                mode: needle_core::accrual::AccrualMode::ConsecutiveFailures(1000),
                ..Default::default()
            },
            ..Default::default()
        },
        ..HttpConfig::default()
    };
    let (addr, metrics, dst) = http_proxy_to(always_busy.addr, config).await;
    let mut client = h1_client(addr).await;
    for _ in 0..10 {
        let res = client.send_request(get("/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        text(res).await;
    }
    // Requests 1 and 2 use their 3 attempts (4 retries), request 3 gets the
    // 5th retry and is refused its 6th; requests 4 to 10 are refused their
    // first: 8 refusals.
    assert_eq!(always_busy.requests(), 10 + 5);
    let route = format!("authority={dst},direction=outbound,route=default");
    expect(&metrics, "retry_total", &[(&route, 5.0)]);
    expect(&metrics, "retry_budget_exhausted_total", &[(&route, 8.0)]);
}

#[tokio::test]
async fn an_ejection_is_counted_for_its_backend() {
    let b = backend(|_req| async move {
        let mut res = Response::new(full("broken"));
        *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        res
    })
    .await;
    let (addr, metrics, dst) = http_proxy_to(b.addr, HttpConfig::default()).await;
    let mut client = h1_client(addr).await;
    // Seven consecutive failures eject the endpoint (the core's default);
    // POSTs are not retried, so each request is one attempt. The 8th is
    // the ejected endpoint's probe (sent at once: nothing else could serve
    // it), which fails and ejects it again.
    for _ in 0..8 {
        let req = Request::post("/")
            .header("host", "a")
            .body(full("x"))
            .unwrap();
        text(client.send_request(req).await.unwrap()).await;
    }
    expect(
        &metrics,
        "endpoint_ejections_total",
        &[(&format!("authority={dst},backend=default"), 2.0)],
    );
    let req = format!("authority={dst},direction=outbound,route=default");
    expect(
        &metrics,
        "response_total",
        &[(
            &format!("{req},tls=not_meshed,classification=failure,status_code=500"),
            8.0,
        )],
    );
}

#[tokio::test]
async fn a_forgotten_destination_takes_its_series_with_it() {
    let a = ok_backend("a", Duration::ZERO).await;
    let b = ok_backend("b", Duration::ZERO).await;
    let config = HttpConfig {
        destination_idle_timeout: Duration::from_millis(100),
        ..HttpConfig::default()
    };
    let http = HttpProxy::new(TokioNet, config, StaticDiscovery::new());
    let metrics = http.metrics().clone();
    let port_a = port_via(http.clone(), Direction::Outbound, a.addr).await;
    let port_b = port_via(http, Direction::Outbound, b.addr).await;
    let once = |addr: SocketAddr| async move {
        let mut client = h1_client(addr).await;
        let res = client.send_request(get("/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        text(res).await;
    };
    once(port_a).await;
    all_closed(&metrics).await;
    assert!(metrics.encode().contains(&a.addr.to_string()));
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The next destination looked up sweeps the idle one away.
    once(port_b).await;
    let text = metrics.encode();
    assert!(!text.contains(&a.addr.to_string()), "{text}");
    assert!(
        text.contains(&format!("authority=\"{}\"", b.addr)),
        "{text}"
    );
}
