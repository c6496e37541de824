//! `needle demo`: the whole mesh on loopback in one command, no set-up.
//!
//! It makes a throw-away CA and two workload identities (`web`, the
//! caller, and `shop`, the service), starts the `shop` sidecar's inbound
//! proxy in front of four applications (`v1`, `v2`, a flaky `v1` replica
//! that fails half its requests with 503, and a TCP echo), and the `web`
//! sidecar's outbound proxy with a route that splits 90/10 between the `v1`
//! backend (v1 and its flaky replica) and `v2`. Then it sends HTTP/1.1,
//! HTTP/2, gRPC-shaped and opaque traffic for a few seconds and prints what
//! a newcomer should see: the split, the retries that saved failed
//! requests, latencies, and that every hop was mutual TLS with the right
//! identities. Everything runs in this process and is gone when it exits.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use needle_core::identity::SpiffeId;
use needle_core::retry::{RetryPolicy, RetryableRequests, Timeouts};
use needle_core::route::{HttpMatch, Route, Rule, Split};
use needle_io::discovery::{Backend, Endpoint, Meshed, ProtocolHint, Service, StaticDiscovery};
use needle_io::http::{HttpConfig, HttpProxy};
use needle_io::meta::Direction;
use needle_io::metrics::Metrics;
use needle_io::net::{Network, TokioNet};
use needle_io::proxy::{Port, PortConfig};
use needle_io::tls::{MeshIdentity, WallClock};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WEB: &str = "spiffe://demo.local/ns/default/sa/web";
const SHOP: &str = "spiffe://demo.local/ns/default/sa/shop";

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// Runs the demo for `seconds` of traffic.
pub(crate) async fn run(seconds: u64) -> ExitCode {
    match demo(Duration::from_secs(seconds)).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("needle demo: {e}");
            ExitCode::from(1)
        }
    }
}

type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// What an application saw.
#[derive(Default)]
struct AppStats {
    requests: AtomicUsize,
    failed: AtomicUsize,
    /// `needle-client-id` values seen, counted.
    callers: Mutex<BTreeMap<String, usize>>,
}

async fn demo(traffic: Duration) -> Result<bool, DemoError> {
    println!("needle demo: a throw-away CA and identities for {WEB} and {SHOP}");
    let (web, shop) = identities()?;

    // The applications behind the shop sidecar.
    let v1 = app("v1", false).await?;
    let flaky = app("v1", true).await?;
    let v2 = app("v2", false).await?;
    let echo = echo_app().await?;

    // The shop sidecar's inbound proxy: mTLS required.
    let inbound = Port::with_http(
        TokioNet,
        PortConfig {
            direction: Direction::Inbound,
            policies: needle_core::authz::PortPolicies::new(
                needle_core::authz::Policy::RequireMtls,
            ),
            ..PortConfig::default()
        },
        HttpProxy::meshed(
            TokioNet,
            HttpConfig::default(),
            StaticDiscovery::new(),
            Some(shop),
            Metrics::new(),
        ),
    );
    let inbound_addr = serve(inbound.clone()).await?;

    // The web sidecar's outbound proxy, told by discovery where "shop" is.
    let shop_id = SpiffeId::parse(SHOP)?;
    let meshed = |addr| {
        Endpoint::meshed(
            addr,
            Meshed {
                identity: shop_id.clone(),
                proxy_addr: Some(inbound_addr),
            },
        )
    };
    let discovery = StaticDiscovery::new();
    let service_addr = v1.0;
    // The demo's calls are all safe to repeat (and its gRPC calls are
    // POSTs): retry any method.
    let retry = RetryPolicy {
        requests: RetryableRequests::Any,
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    discovery.set(
        service_addr,
        Service {
            backends: vec![
                Backend {
                    name: "v1".into(),
                    endpoints: vec![meshed(v1.0), meshed(flaky.0)],
                },
                Backend {
                    name: "v2".into(),
                    endpoints: vec![meshed(v2.0)],
                },
            ],
            routes: vec![Route {
                namespace: "default".into(),
                name: "shop-canary".into(),
                created: 0,
                rules: vec![Rule {
                    matches: vec![HttpMatch::default()],
                    timeouts: Timeouts {
                        request: Some(Duration::from_secs(5)),
                        per_try: None,
                    },
                    retry,
                    backends: Split::new([("v1".to_owned(), 90), ("v2".to_owned(), 10)]),
                }],
            }],
            protocol: ProtocolHint::Detect,
        },
    );
    discovery.set(echo, Service::with_endpoints([meshed(echo)]));
    let http = HttpProxy::meshed(
        TokioNet,
        HttpConfig::default(),
        discovery,
        Some(web),
        Metrics::new(),
    );
    let outbound_http = Port::with_http(
        TokioNet,
        PortConfig {
            target: Some(service_addr),
            ..PortConfig::default()
        },
        http.clone(),
    );
    let outbound_echo = Port::with_http(
        TokioNet,
        PortConfig {
            target: Some(echo),
            ..PortConfig::default()
        },
        http,
    );
    let shop_out = serve(outbound_http).await?;
    let echo_out = serve(outbound_echo).await?;
    println!(
        "needle demo: shop sidecar inbound on {inbound_addr}; web sidecar outbound on {shop_out} (HTTP) and {echo_out} (TCP)"
    );
    println!(
        "needle demo: route shop-canary splits 90/10 between v1 (v1 + a flaky replica failing 50%) and v2; sending traffic for {traffic:?}...\n"
    );

    let deadline = tokio::time::Instant::now() + traffic;
    let results = Arc::new(Mutex::new(Results::default()));
    let mut tasks = Vec::new();
    for kind in [Kind::Http1, Kind::Http1, Kind::Http2, Kind::Grpc] {
        let results = results.clone();
        tasks.push(tokio::spawn(http_client(kind, shop_out, deadline, results)));
    }
    tasks.push(tokio::spawn(tcp_client(
        echo_out,
        deadline,
        results.clone(),
    )));
    for t in tasks {
        t.await??;
    }

    let results = results.lock().map_err(|_| "poisoned")?;
    let mut ok = true;
    println!("traffic                 sent     ok   p50 ms   p99 ms");
    for (kind, r) in &results.by_kind {
        let (p50, p99) = percentiles(&r.latencies_us);
        println!(
            "{:<20} {:>7} {:>6} {:>8.2} {:>8.2}",
            kind,
            r.sent,
            r.ok,
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0
        );
        ok &= r.sent > 0 && r.ok == r.sent;
    }
    let v1_total = v1.1.requests.load(Ordering::SeqCst) + flaky.1.requests.load(Ordering::SeqCst);
    let v2_total = v2.1.requests.load(Ordering::SeqCst);
    let http_total = (v1_total + v2_total).max(1);
    let flaky_failed = flaky.1.failed.load(Ordering::SeqCst);
    println!(
        "\nsplit      v1 {:>5.1}%  v2 {:>5.1}%   (route weights 90/10; requests reaching each version, retries included)",
        100.0 * v1_total as f64 / http_total as f64,
        100.0 * v2_total as f64 / http_total as f64
    );
    let failed_http: usize = results
        .by_kind
        .iter()
        .filter(|(k, _)| **k != "opaque tcp")
        .map(|(_, r)| r.sent - r.ok)
        .sum();
    println!(
        "retries    the flaky replica answered 503 {flaky_failed} times; clients saw {failed_http} failures: retries saved {}",
        flaky_failed.saturating_sub(failed_http)
    );
    let mut callers = BTreeMap::new();
    for stats in [&v1.1, &flaky.1, &v2.1] {
        for (caller, n) in stats.callers.lock().map_err(|_| "poisoned")?.iter() {
            *callers.entry(caller.clone()).or_insert(0) += n;
        }
    }
    let all_mtls = callers.len() == 1 && callers.contains_key(WEB);
    println!("mTLS       callers the applications saw (needle-client-id): {callers:?}");
    println!(
        "           every hop mutual TLS with the right identities: {}",
        if all_mtls { "yes" } else { "NO" }
    );
    ok &= all_mtls && flaky_failed > 0 && v2_total > 0;
    println!(
        "\nneedle demo: {}",
        if ok {
            "all good; cleaning up"
        } else {
            "something is off (see above)"
        }
    );
    Ok(ok)
}

/// A throw-away CA and the two workloads' credentials, valid for an hour.
fn identities() -> Result<(Arc<MeshIdentity>, Arc<MeshIdentity>), DemoError> {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "needle demo CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::hours(2);
    let ca_pem = ca.clone().self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let wall = WallClock::system();
    let make = |id: &str| -> Result<Arc<MeshIdentity>, DemoError> {
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(Vec::<String>::new())?;
        leaf.subject_alt_names = vec![SanType::URI(id.try_into()?)];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf.not_before = now - time::Duration::minutes(5);
        leaf.not_after = now + time::Duration::hours(1);
        let cert = leaf.signed_by(&key, &issuer)?;
        let creds = needle_core::tls::Credentials::from_pem(
            Arc::new(rustls::crypto::ring::default_provider()),
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            ca_pem.as_bytes(),
            wall.now().unix,
        )?;
        Ok(MeshIdentity::fixed(creds, wall))
    };
    Ok((make(WEB)?, make(SHOP)?))
}

/// Runs `port` on a fresh loopback port.
async fn serve(port: Arc<Port<TokioNet>>) -> Result<SocketAddr, DemoError> {
    let listener = TokioNet.bind("127.0.0.1:0".parse()?).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(port.run(listener, std::future::pending()));
    Ok(addr)
}

/// An HTTP application (HTTP/1.1 and HTTP/2) answering its `version`;
/// `flaky`: every other request fails with 503. gRPC calls get their
/// answer in a gRPC frame with `grpc-status` in the trailers.
async fn app(version: &'static str, flaky: bool) -> Result<(SocketAddr, Arc<AppStats>), DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(AppStats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let stats = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let stats = stats.clone();
                    async move { Ok::<_, Infallible>(answer(version, flaky, &stats, req)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, stats))
}

fn answer(version: &str, flaky: bool, stats: &AppStats, req: Request<Incoming>) -> Response<Body> {
    let n = stats.requests.fetch_add(1, Ordering::SeqCst);
    let caller = req
        .headers()
        .get("needle-client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_owned();
    if let Ok(mut callers) = stats.callers.lock() {
        *callers.entry(caller).or_insert(0) += 1;
    }
    if flaky && n % 2 == 0 {
        stats.failed.fetch_add(1, Ordering::SeqCst);
        let mut res = Response::new(full(Bytes::from_static(b"flaky")));
        *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        return res;
    }
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return Response::new(full(Bytes::from(version.to_owned())));
    }
    let mut frame = vec![0u8, 0, 0, 0, version.len() as u8];
    frame.extend_from_slice(version.as_bytes());
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from(frame))
        .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) })
        .boxed_unsync();
    let mut res = Response::new(body);
    res.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    res
}

fn full(b: Bytes) -> Body {
    Full::new(b).boxed_unsync()
}

/// A TCP echo application.
async fn echo_app() -> Result<SocketAddr, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Http1,
    Http2,
    Grpc,
}

#[derive(Default)]
struct KindResults {
    sent: usize,
    ok: usize,
    latencies_us: Vec<u64>,
}

#[derive(Default)]
struct Results {
    by_kind: BTreeMap<&'static str, KindResults>,
}

impl Results {
    fn record(&mut self, kind: &'static str, ok: bool, latency: Duration) {
        let r = self.by_kind.entry(kind).or_default();
        r.sent += 1;
        r.ok += usize::from(ok);
        r.latencies_us
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }
}

/// A closed-loop client of one kind until `deadline`.
async fn http_client(
    kind: Kind,
    addr: SocketAddr,
    deadline: tokio::time::Instant,
    results: Arc<Mutex<Results>>,
) -> Result<(), DemoError> {
    let stream = TcpStream::connect(addr).await?;
    let label = match kind {
        Kind::Http1 => "HTTP/1.1",
        Kind::Http2 => "HTTP/2",
        Kind::Grpc => "gRPC (HTTP/2)",
    };
    enum Sender {
        H1(hyper::client::conn::http1::SendRequest<Body>),
        H2(hyper::client::conn::http2::SendRequest<Body>),
    }
    let mut sender = match kind {
        Kind::Http1 => {
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            Sender::H1(s)
        }
        _ => {
            let (s, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await?;
            tokio::spawn(conn);
            Sender::H2(s)
        }
    };
    while tokio::time::Instant::now() < deadline {
        let mut req = match kind {
            Kind::Grpc => Request::post("http://shop.demo/shop.Catalog/List")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(full(Bytes::from_static(b"\0\0\0\0\0")))?,
            _ => Request::get("http://shop.demo/items").body(full(Bytes::new()))?,
        };
        req.headers_mut()
            .insert("host", http::HeaderValue::from_static("shop.demo"));
        let start = tokio::time::Instant::now();
        let res = match &mut sender {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        };
        let ok = match res {
            Ok(res) => {
                let status = res.status();
                let collected = res.into_body().collect().await?;
                let grpc_ok = collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status"))
                    .is_none_or(|s| s == "0");
                status == 200 && grpc_ok && (kind != Kind::Grpc || collected.trailers().is_some())
            }
            Err(_) => false,
        };
        results
            .lock()
            .map_err(|_| "poisoned")?
            .record(label, ok, start.elapsed());
    }
    Ok(())
}

/// Opaque round trips on fresh connections until `deadline`.
async fn tcp_client(
    addr: SocketAddr,
    deadline: tokio::time::Instant,
    results: Arc<Mutex<Results>>,
) -> Result<(), DemoError> {
    while tokio::time::Instant::now() < deadline {
        let start = tokio::time::Instant::now();
        let mut s = TcpStream::connect(addr).await?;
        let msg = b"\x00needle-demo opaque bytes\n";
        s.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        let ok = s.read_exact(&mut back).await.is_ok() && back == msg;
        results
            .lock()
            .map_err(|_| "poisoned")?
            .record("opaque tcp", ok, start.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn percentiles(latencies: &[u64]) -> (u64, u64) {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    (at(0.5), at(0.99))
}
