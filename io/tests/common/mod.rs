//! Loopback harness for the HTTP proxy tests: real sockets on 127.0.0.1,
//! real hyper clients and servers, the proxy's `serve` called on each
//! accepted connection (standing in for the accept loop and detection).
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use needle_io::discovery::{Discovery, Endpoint, Service, StaticDiscovery};
use needle_io::http::{HttpConfig, HttpProxy, HttpVersion, ProxyBody};
use needle_io::meta::{ConnMeta, Direction};
use needle_io::metrics::Metrics;
use needle_io::net::TokioNet;
use tokio::net::{TcpListener, TcpStream};

pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>
        + Send
        + Sync,
>;

/// A body of these bytes.
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A test backend: a hyper server speaking HTTP/1 and HTTP/2 (with
/// upgrades), counting connections and requests.
#[derive(Clone)]
pub struct Backend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
}

impl Backend {
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

pub async fn backend<F, Fut>(handler: F) -> Backend
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let (c, r) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let r = r.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend {
        addr,
        connections,
        requests,
    }
}

/// A backend answering `200 ok` (after `delay`).
pub async fn ok_backend(name: &'static str, delay: std::time::Duration) -> Backend {
    backend(move |_req| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Response::new(full(name))
    })
    .await
}

/// A backend echoing the request body (and its trailers) back.
pub async fn echo_backend() -> Backend {
    backend(|req: Request<Incoming>| async move {
        let ct = req.headers().get("content-type").cloned();
        let mut res = Response::new(
            req.into_body()
                .map_err(|e| -> needle_io::http::BoxError { Box::new(e) })
                .boxed_unsync(),
        );
        if let Some(ct) = ct {
            res.headers_mut().insert("content-type", ct);
        }
        res
    })
    .await
}

/// A proxy serving `version` on a fresh loopback port, every connection
/// destined to `dst`.
pub async fn proxy(
    discovery: Arc<dyn Discovery>,
    config: HttpConfig,
    version: HttpVersion,
    dst: SocketAddr,
) -> (SocketAddr, Arc<HttpProxy<TokioNet>>) {
    let proxy = HttpProxy::new(TokioNet, config, discovery);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p = proxy.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let p = p.clone();
            tokio::spawn(async move {
                if let Err(e) = p
                    .serve(stream, version, dst, ConnMeta::plain(Direction::Outbound))
                    .await
                {
                    eprintln!("serve ended: {e:?}");
                }
            });
        }
    });
    (addr, proxy)
}

/// A proxy whose destination `dst` is served by `endpoints`.
pub async fn proxy_to(
    endpoints: &[SocketAddr],
    config: HttpConfig,
    version: HttpVersion,
) -> (SocketAddr, Arc<StaticDiscovery>, SocketAddr) {
    let discovery = StaticDiscovery::new();
    let dst: SocketAddr = "127.0.0.1:1".parse().unwrap();
    discovery.set(
        dst,
        Service::with_endpoints(endpoints.iter().map(|a| Endpoint::new(*a))),
    );
    let (addr, _) = proxy(discovery.clone(), config, version, dst).await;
    (addr, discovery, dst)
}

pub type H1 = hyper::client::conn::http1::SendRequest<ProxyBody>;
pub type H2 = hyper::client::conn::http2::SendRequest<ProxyBody>;

/// An HTTP/1.1 client connection to `addr`.
pub async fn h1_client(addr: SocketAddr) -> H1 {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
}

/// An HTTP/2 (prior knowledge) client connection to `addr`.
pub async fn h2_client(addr: SocketAddr) -> H2 {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

pub fn get(uri: &str) -> Request<ProxyBody> {
    Request::get(uri)
        .header("host", "svc.test")
        .body(full(Bytes::new()))
        .unwrap()
}

/// Reads a response's body to a string.
pub async fn text(res: Response<Incoming>) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The `needle-error` header, if any.
pub fn needle_error<B>(res: &Response<B>) -> Option<String> {
    res.headers()
        .get("needle-error")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// A loopback address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

// --- metrics: the text exposition, parsed back ---

pub type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of a text exposition.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().unwrap())
        })
        .collect()
}

/// The series named `name` as `label set (sorted "k=v" pairs) -> value`.
pub fn series(metrics: &Metrics, name: &str) -> BTreeMap<String, f64> {
    parse(&metrics.encode())
        .into_iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, labels, v)| {
            let key: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (key.join(","), v)
        })
        .collect()
}

/// `series`, expected to be exactly these.
pub fn expect(metrics: &Metrics, name: &str, want: &[(&str, f64)]) {
    // Labels in any order: sorted as `series` sorts them.
    let sorted = |k: &str| {
        let mut pairs: Vec<&str> = k.split(',').filter(|p| !p.is_empty()).collect();
        pairs.sort_unstable();
        pairs.join(",")
    };
    let want: BTreeMap<String, f64> = want.iter().map(|(k, v)| (sorted(k), *v)).collect();
    assert_eq!(series(metrics, name), want, "{name}");
}

/// Waits until every accepted connection has been closed (the proxy's side
/// of a close the client started lands a moment later).
pub async fn all_closed(metrics: &Metrics) {
    for _ in 0..500 {
        let open = series(metrics, "tcp_open_connections");
        if !open.is_empty() && open.values().all(|v| *v == 0.0) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("connections still open:\n{}", metrics.encode());
}
