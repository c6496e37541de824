//! Two sidecars on loopback: a client's outbound proxy ("web") and a
//! server's inbound proxy ("api"), each a real `Port` with its own identity,
//! and a real application behind the inbound one. Traffic crosses the mesh
//! in mutual TLS; refusals (foreign CA, wrong identity, plaintext where mTLS
//! is required) are checked, as are TLS passthrough, credential rotation
//! under traffic and connection sharing between the proxies.

#[path = "../../core/tests/common/pki.rs"]
mod pki;

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use needle_core::authz::{IdentityPattern, Policy, PortPolicies};
use needle_core::identity::SpiffeId;
use needle_io::discovery::{Endpoint, Meshed, Service, StaticDiscovery};
use needle_io::http::{HttpConfig, HttpProxy};
use needle_io::meta::{Direction, NoTls, TlsStatus};
use needle_io::metrics::Metrics;
use needle_io::net::TokioNet;
use needle_io::proxy::{Port, PortConfig, Served};
use needle_io::tls::{CredentialFiles, MeshIdentity, WallClock};
use pki::{Ca, T0, unix};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const API: &str = "spiffe://cluster.local/ns/default/sa/api";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// The test certificates are valid for a day around `T0`.
fn wall() -> WallClock {
    WallClock::starting_at(unix(T0))
}

/// What one port did with each connection it accepted.
#[derive(Clone, Default)]
struct Log {
    accepted: Arc<AtomicUsize>,
    ended: Arc<Mutex<Vec<Result<Served, String>>>>,
}

impl Log {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    fn ended(&self) -> Vec<Result<Served, String>> {
        self.ended.lock().unwrap().clone()
    }
    /// Waits until `n` connections have ended.
    async fn wait_ended(&self, n: usize) -> Vec<Result<Served, String>> {
        for _ in 0..500 {
            if self.ended.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.ended()
    }
}

/// Runs `port` on a fresh loopback listener, logging every connection.
async fn listen(port: Arc<Port<TokioNet>>) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let l = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            l.accepted.fetch_add(1, Ordering::SeqCst);
            let (port, l) = (port.clone(), l.clone());
            tokio::spawn(async move {
                let ended = port.serve(conn).await.map_err(|e| e.to_string());
                l.ended.lock().unwrap().push(ended);
            });
        }
    });
    (addr, log)
}

/// How to set up a mesh.
struct Setup {
    /// The outbound proxy's identity.
    web: Arc<MeshIdentity>,
    /// The inbound proxy's identity.
    api: Arc<MeshIdentity>,
    /// The identity discovery tells the outbound proxy to expect.
    expect: SpiffeId,
    /// The inbound port's policies.
    policies: PortPolicies,
    /// The outbound proxy's HTTP settings.
    http: HttpConfig,
    /// Whether the inbound port has a target for plaintext connections.
    inbound_target: bool,
}

impl Setup {
    fn new() -> Setup {
        let ca = Ca::new("mesh CA");
        Setup {
            web: MeshIdentity::fixed(ca.credentials(WEB), wall()),
            api: MeshIdentity::fixed(ca.credentials(API), wall()),
            expect: id(API),
            policies: PortPolicies::default(),
            http: HttpConfig::default(),
            inbound_target: true,
        }
    }
}

/// The two sidecars around an application at `app`.
struct Mesh {
    /// Where the client connects (the outbound proxy; its "original
    /// destination" is the application).
    outbound: SocketAddr,
    outbound_log: Log,
    outbound_metrics: Metrics,
    inbound: SocketAddr,
    inbound_log: Log,
    inbound_metrics: Metrics,
}

/// The value of the one series of `name` whose labels include all of
/// `labels` (`k=v`), or 0.
fn value(metrics: &Metrics, name: &str, labels: &[&str]) -> f64 {
    let matching: Vec<f64> = series(metrics, name)
        .into_iter()
        .filter(|(key, _)| labels.iter().all(|l| key.split(',').any(|kv| kv == *l)))
        .map(|(_, v)| v)
        .collect();
    assert!(matching.len() <= 1, "{name} {labels:?}: {matching:?}");
    matching.first().copied().unwrap_or(0.0)
}

async fn mesh(app: SocketAddr, setup: Setup) -> Mesh {
    let inbound_metrics = Metrics::new();
    let inbound_http = HttpProxy::meshed(
        TokioNet,
        HttpConfig::default(),
        StaticDiscovery::new(),
        Some(setup.api),
        inbound_metrics.clone(),
    );
    let inbound_port = Port::with_http(
        TokioNet,
        PortConfig {
            direction: Direction::Inbound,
            // Plaintext connections need a target; meshed ones name their
            // port in the transport header (the binary's inbound port has
            // no target at all).
            target: setup.inbound_target.then_some(app),
            policies: setup.policies,
            ..PortConfig::default()
        },
        inbound_http,
    );
    let (inbound, inbound_log) = listen(inbound_port).await;

    let discovery = StaticDiscovery::new();
    let meshed = Meshed {
        identity: setup.expect,
        proxy_addr: Some(inbound),
    };
    discovery.set(
        app,
        Service::with_endpoints([Endpoint::meshed(app, meshed)]),
    );
    let outbound_metrics = Metrics::new();
    let outbound_http = HttpProxy::meshed(
        TokioNet,
        setup.http,
        discovery,
        Some(setup.web),
        outbound_metrics.clone(),
    );
    let outbound_port = Port::with_http(
        TokioNet,
        PortConfig {
            direction: Direction::Outbound,
            target: Some(app),
            ..PortConfig::default()
        },
        outbound_http,
    );
    let (outbound, outbound_log) = listen(outbound_port).await;
    Mesh {
        outbound,
        outbound_log,
        outbound_metrics,
        inbound,
        inbound_log,
        inbound_metrics,
    }
}

/// An application answering with the version it saw and who called it.
async fn whoami_app() -> Backend {
    backend(|req: Request<Incoming>| async move {
        let caller = req
            .headers()
            .get("needle-client-id")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let orig = req.headers().contains_key("needle-orig-proto");
        Response::new(full(format!(
            "{:?} caller={caller} orig-proto-leaked={orig}",
            req.version()
        )))
    })
    .await
}

fn mutual(s: &str) -> TlsStatus {
    TlsStatus::Mutual(id(s))
}

#[tokio::test]
async fn http1_crosses_the_mesh_as_http2_and_arrives_as_http1() {
    let app = whoami_app().await;
    // No inbound target: meshed connections need none.
    let setup = Setup {
        inbound_target: false,
        ..Setup::new()
    };
    let mesh = mesh(app.addr, setup).await;
    let mut client = h1_client(mesh.outbound).await;
    for _ in 0..3 {
        let res = client.send_request(get("/who")).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), http::Version::HTTP_11);
        assert_eq!(
            text(res).await,
            format!("HTTP/1.1 caller={WEB} orig-proto-leaked=false")
        );
    }
    drop(client);
    assert_eq!(
        mesh.inbound_log.accepted(),
        1,
        "one connection between the proxies"
    );
    assert_eq!(app.requests(), 3);

    // Both sides' golden metrics say mutual TLS, with the right identities.
    let server_id = format!("server_id={API}");
    let client_id = format!("client_id={WEB}");
    let outbound = ["direction=outbound", "tls=true", server_id.as_str()];
    assert_eq!(
        value(&mesh.outbound_metrics, "request_total", &outbound),
        3.0,
        "{}",
        mesh.outbound_metrics.encode()
    );
    let inbound = ["direction=inbound", "tls=true", client_id.as_str()];
    assert_eq!(
        value(&mesh.inbound_metrics, "request_total", &inbound),
        3.0,
        "{}",
        mesh.inbound_metrics.encode()
    );
    assert_eq!(
        value(&mesh.inbound_metrics, "tcp_open_total", &inbound),
        1.0
    );
    // The client's own connection to the outbound proxy is plaintext.
    assert_eq!(
        value(
            &mesh.outbound_metrics,
            "tcp_open_total",
            &["direction=outbound", "tls=not_provided_by_remote"]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_client_cannot_claim_an_identity_or_a_version_marker() {
    let app = whoami_app().await;
    let mesh = mesh(app.addr, Setup::new()).await;
    let mut client = h1_client(mesh.outbound).await;
    let req = Request::get("/who")
        .header("host", "svc.test")
        .header(
            "needle-client-id",
            "spiffe://cluster.local/ns/kube-system/sa/admin",
        )
        .header("needle-orig-proto", "HTTP/1.1")
        .body(full(Bytes::new()))
        .unwrap();
    let res = client.send_request(req).await.unwrap();
    // The inbound proxy replaced the forged identity with the proven one.
    assert_eq!(
        text(res).await,
        format!("HTTP/1.1 caller={WEB} orig-proto-leaked=false")
    );

    // Straight to the inbound port in plaintext: no identity at all.
    let mut direct = h1_client(mesh.inbound).await;
    let req = Request::get("/who")
        .header("host", "svc.test")
        .header(
            "needle-client-id",
            "spiffe://cluster.local/ns/kube-system/sa/admin",
        )
        .body(full(Bytes::new()))
        .unwrap();
    let res = direct.send_request(req).await.unwrap();
    assert_eq!(text(res).await, "HTTP/1.1 caller= orig-proto-leaked=false");
}

#[tokio::test]
async fn h2_and_grpc_trailers_cross_the_mesh() {
    // A gRPC-shaped application: a streamed body, then trailers.
    let app = backend(|req: Request<Incoming>| async move {
        let caller = req.headers().get("needle-client-id").cloned();
        let frames = vec![
            Ok::<_, needle_io::http::BoxError>(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
            Ok(Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                if let Some(c) = caller {
                    t.insert("caller", c);
                }
                t
            })),
        ];
        let mut res = Response::new(StreamBody::new(futures_iter(frames)).boxed_unsync());
        res.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        res
    })
    .await;
    let mesh = mesh(app.addr, Setup::new()).await;
    let mut client = h2_client(mesh.outbound).await;
    let req = Request::post("http://svc.test/pkg.Svc/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(Bytes::from_static(b"\0\0\0\0\x02yo")))
        .unwrap();
    let res = client.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers crossed");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["caller"], WEB);
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");

    // The call is counted on both sides, mTLS with both identities and its
    // gRPC status (recorded when the response stream ends).
    let server_id = format!("server_id={API}");
    let client_id = format!("client_id={WEB}");
    let outbound = [
        "direction=outbound",
        "tls=true",
        "grpc_status=0",
        server_id.as_str(),
    ];
    let inbound = [
        "direction=inbound",
        "tls=true",
        "grpc_status=0",
        client_id.as_str(),
    ];
    for _ in 0..100 {
        if value(&mesh.inbound_metrics, "response_total", &inbound) == 1.0
            && value(&mesh.outbound_metrics, "response_total", &outbound) == 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        value(&mesh.outbound_metrics, "response_total", &outbound),
        1.0,
        "{}",
        mesh.outbound_metrics.encode()
    );
    assert_eq!(
        value(&mesh.inbound_metrics, "response_total", &inbound),
        1.0,
        "{}",
        mesh.inbound_metrics.encode()
    );
}

/// A stream over a vector of frames.
fn futures_iter<T: Send + 'static>(
    items: Vec<T>,
) -> impl tonic::codegen::tokio_stream::Stream<Item = T> + Send {
    tonic::codegen::tokio_stream::iter(items)
}

/// An application that echoes bytes, half-closing when the client does.
async fn echo_tcp_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn opaque_tcp_crosses_the_mesh_with_half_close() {
    let app = echo_tcp_app().await;
    let setup = Setup {
        inbound_target: false,
        ..Setup::new()
    };
    let mesh = mesh(app, setup).await;
    let mut client = TcpStream::connect(mesh.outbound).await.unwrap();
    // Not HTTP, not TLS: opaque.
    let payload = vec![0xABu8; 100_000];
    client.write_all(&payload).await.unwrap();
    client.shutdown().await.unwrap();
    let mut back = Vec::new();
    client.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, payload);

    let ended = mesh.inbound_log.wait_ended(1).await;
    let served = ended[0].as_ref().expect("inbound served the connection");
    assert_eq!(served.tls, mutual(WEB));
    assert_eq!(
        served.dst.port(),
        app.port(),
        "the header named the app port"
    );
    let moved = served.transferred.unwrap();
    assert_eq!(moved.client_to_server, 100_000);
    assert_eq!(moved.server_to_client, 100_000);
    // The inbound side counts the TLS records it read and wrote: more than
    // the payload, labelled with the peer's identity.
    let client_id = format!("client_id={WEB}");
    let inbound = ["direction=inbound", "tls=true", client_id.as_str()];
    let read = value(&mesh.inbound_metrics, "tcp_read_bytes_total", &inbound);
    assert!(read > 100_000.0, "{}", mesh.inbound_metrics.encode());
}

#[tokio::test]
async fn a_server_first_protocol_crosses_the_mesh_without_stalling() {
    // SMTP-like: the server greets before the client says anything.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"220 hello\r\n").await.unwrap();
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"221 bye\r\n").await.unwrap();
    });
    let mesh = mesh(app, Setup::new()).await;
    let start = tokio::time::Instant::now();
    let mut client = TcpStream::connect(mesh.outbound).await.unwrap();
    let mut greeting = [0u8; 11];
    client.read_exact(&mut greeting).await.unwrap();
    let delay = start.elapsed();
    assert_eq!(&greeting, b"220 hello\r\n");
    println!("server-first greeting through two sidecars and mTLS after {delay:?}");
    // The detection timeout is 5 s: well under it means no stall.
    assert!(delay < Duration::from_secs(1), "stalled for {delay:?}");
    client.write_all(b"QUIT\r\n").await.unwrap();
    client.shutdown().await.unwrap();
    let mut bye = Vec::new();
    client.read_to_end(&mut bye).await.unwrap();
    assert_eq!(bye, b"221 bye\r\n");
    let ended = mesh.inbound_log.wait_ended(1).await;
    assert_eq!(ended[0].as_ref().unwrap().tls, mutual(WEB));
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let app = whoami_app().await;
    let mut setup = Setup::new();
    setup.web = MeshIdentity::fixed(Ca::new("rogue CA").credentials(WEB), wall());
    let mesh = mesh(app.addr, setup).await;
    let mut client = h1_client(mesh.outbound).await;
    let res = client.send_request(get("/who")).await.unwrap();
    // The rogue client does not trust the server's CA either: its own
    // check fails first, with a 502 naming mTLS.
    assert_eq!(res.status(), 502);
    assert_eq!(needle_error(&res).as_deref(), Some("mtls-failed"));
    assert_eq!(app.requests(), 0, "nothing reached the application");
    let ended = mesh.inbound_log.wait_ended(1).await;
    assert!(ended.iter().all(|e| e.is_err()), "{ended:?}");
}

#[tokio::test]
async fn the_inbound_proxy_refuses_a_client_certificate_from_another_ca() {
    // A client that trusts the mesh CA (so it accepts the server) but
    // presents a certificate from another CA: only the inbound proxy's
    // check stands between it and the application. Built by hand with
    // rustls, since Needle's own credentials refuse such a mix.
    let app = whoami_app().await;
    let mesh_ca = Ca::new("mesh CA");
    let setup = Setup {
        api: MeshIdentity::fixed(mesh_ca.credentials(API), wall()),
        ..Setup::new()
    };
    let mesh = mesh(app.addr, setup).await;
    let rogue = Ca::new("rogue CA").leaf(WEB);
    // Needle's own server check, with the mesh CA's trust.
    let verifier =
        needle_core::tls::verify::SpiffeServerVerifier::new(&mesh_ca.credentials(WEB), id(API));
    let chain = vec![CertificateDer::from(rogue.der.clone())];
    let key = PrivateKeyDer::from_pem_slice(rogue.key_pem.as_bytes()).unwrap();
    // The client judges the server's certificate at the tests' time.
    let mut config = rustls::ClientConfig::builder_with_details(
        Arc::new(rustls::crypto::ring::default_provider()),
        Arc::new(needle_core::tls::InputClock::new(unix(T0))),
    )
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(verifier))
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"needle/h2".to_vec()];
    let config = Arc::new(config);
    let name = needle_core::identity::sni::server_name(&id(API)).unwrap();
    let name = rustls::pki_types::ServerName::try_from(name).unwrap();
    let tcp = TcpStream::connect(mesh.inbound).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    // Whatever the client thinks of the server, the server refuses it.
    let _ = connector.connect(name, tcp).await;
    let ended = mesh.inbound_log.wait_ended(1).await;
    assert!(
        ended
            .iter()
            .any(|e| matches!(e, Err(m) if m.contains("not issued by a trusted CA"))),
        "{ended:?}"
    );
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn plaintext_is_refused_where_mtls_is_required() {
    let app = whoami_app().await;
    let mut setup = Setup::new();
    setup.policies = PortPolicies::new(Policy::RequireMtls);
    let mesh = mesh(app.addr, setup).await;

    // Through the mesh: allowed.
    let mut client = h1_client(mesh.outbound).await;
    let res = client.send_request(get("/who")).await.unwrap();
    assert_eq!(res.status(), 200);

    // Straight to the inbound port in plaintext: the connection is closed
    // without an answer and the application sees nothing.
    let mut plain = TcpStream::connect(mesh.inbound).await.unwrap();
    plain
        .write_all(b"GET /who HTTP/1.1\r\nhost: svc.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    assert_eq!(app.requests(), 1);
    let ended = mesh.inbound_log.wait_ended(1).await;
    assert!(
        ended
            .iter()
            .any(|e| matches!(e, Err(m) if m.contains("requires mutual TLS"))),
        "{ended:?}"
    );
}

#[tokio::test]
async fn identities_outside_the_allow_list_are_refused() {
    let app = whoami_app().await;
    let mut setup = Setup::new();
    let allowed = IdentityPattern::parse("spiffe://cluster.local/ns/payments/*").unwrap();
    setup.policies = PortPolicies::new(Policy::AllowIdentities(vec![allowed]));
    let mesh = mesh(app.addr, setup).await;
    let mut client = h1_client(mesh.outbound).await;
    // The handshake succeeds (the identity is genuine), then the inbound
    // proxy refuses the connection: the client sees the stream fail.
    let res = client.send_request(get("/who")).await.unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(app.requests(), 0);
    let ended = mesh.inbound_log.wait_ended(1).await;
    assert!(
        ended
            .iter()
            .any(|e| matches!(e, Err(m) if m.contains("is not allowed on port"))),
        "{ended:?}"
    );
}

#[tokio::test]
async fn tls_for_the_application_passes_through_untouched() {
    // The application records the first bytes it receives.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        buf.truncate(n);
        let _ = tx.send(buf);
    });
    let mesh = mesh(app, Setup::new()).await;
    // A client speaking its own TLS to the application, straight at the
    // inbound port (as a redirected connection from outside the mesh would).
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            Ca::new("app CA").leaf("spiffe://x/y").der,
        ))
        .ok();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(mesh.inbound).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("shop.example.com").unwrap();
    let handshake = tokio::spawn(async move { connector.connect(name, tcp).await });
    let seen = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen[0], 0x16, "a TLS handshake record reached the app");
    assert!(
        seen.windows(16).any(|w| w == b"shop.example.com"),
        "with its SNI intact"
    );
    handshake.abort();
    let ended = mesh.inbound_log.wait_ended(1).await;
    let served = ended[0].as_ref().unwrap();
    assert_eq!(served.tls, TlsStatus::Plain(NoTls::Passthrough));
}

#[tokio::test]
async fn hundred_http1_clients_share_one_connection_between_the_proxies() {
    let app = ok_backend("ok", Duration::from_millis(20)).await;
    let mesh = mesh(app.addr, Setup::new()).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let outbound = mesh.outbound;
        tasks.push(tokio::spawn(async move {
            let mut client = h1_client(outbound).await;
            let res = client.send_request(get("/")).await.unwrap();
            (res.status(), text(res).await)
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "ok");
    }
    assert_eq!(mesh.outbound_log.accepted(), 100, "100 client connections");
    assert_eq!(app.requests(), 100);
    // A client slower than the dial delay (2 ms; common with 100 tasks on
    // two cores) gets an opaque mTLS connection dialled ahead in case its
    // server speaks first; it is dropped unused once the client's bytes
    // say HTTP. Every other inbound connection ends, and exactly one stays
    // open: the HTTP/2 connection that carried all 100 requests.
    let accepted = mesh.inbound_log.accepted();
    let mut ended = mesh.inbound_log.ended();
    for _ in 0..200 {
        if ended.len() + 1 >= accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        ended = mesh.inbound_log.ended();
    }
    println!(
        "inbound connections: {accepted} ({} dialled ahead, unused)",
        ended.len()
    );
    assert_eq!(
        accepted - ended.len(),
        1,
        "one TCP+TLS connection carried the requests: {ended:?}"
    );
    for served in ended.iter().flatten() {
        let moved = served
            .transferred
            .expect("dialled-ahead connections are opaque");
        assert_eq!(moved.client_to_server, 0, "{served:?}");
    }
}

/// Credentials on disk, rewritten in place.
struct Files {
    dir: std::path::PathBuf,
}

impl Files {
    fn new(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("needle-mesh-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }
    fn paths(&self) -> CredentialFiles {
        CredentialFiles {
            chain: self.dir.join("cert.pem"),
            key: self.dir.join("key.pem"),
            bundle: self.dir.join("ca.pem"),
        }
    }
    /// Writes a fresh certificate for `id` the way a rotator does: to a
    /// temporary name, then renamed over the old file.
    fn write(&self, ca: &Ca, id: &str) {
        let leaf = ca.leaf(id);
        let p = self.paths();
        for (path, contents) in [
            (&p.bundle, &ca.pem),
            (&p.chain, &leaf.chain_pem),
            (&p.key, &leaf.key_pem),
        ] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, contents).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn rotating_credentials_mid_traffic_loses_nothing() {
    let ca = Ca::new("mesh CA");
    let (web_files, api_files) = (Files::new("web"), Files::new("api"));
    web_files.write(&ca, WEB);
    api_files.write(&ca, API);
    let load = |files: &Files| {
        MeshIdentity::from_files(
            files.paths(),
            Arc::new(rustls::crypto::ring::default_provider()),
            Duration::from_millis(20),
            wall(),
        )
        .unwrap()
    };
    let (web, api) = (load(&web_files), load(&api_files));
    tokio::spawn(web.clone().watch());
    tokio::spawn(api.clone().watch());
    let app = whoami_app().await;
    // New connections for every request: each one is a new handshake with
    // whatever credentials are current.
    let http = HttpConfig {
        h2_keepalive_interval: Duration::from_secs(10),
        ..HttpConfig::default()
    };
    let mesh = mesh(
        app.addr,
        Setup {
            web: web.clone(),
            api: api.clone(),
            http,
            ..Setup::new()
        },
    )
    .await;

    let traffic = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for i in 0..200 {
            // Alternate kept-alive and fresh client connections.
            let mut client = h1_client(mesh.outbound).await;
            let res = client.send_request(get("/who")).await.unwrap();
            statuses.push(res.status().as_u16());
            let _ = text(res).await;
            if i % 2 == 0 {
                // Opaque connections handshake anew every time.
                let mut raw = TcpStream::connect(mesh.outbound).await.unwrap();
                drop(raw.shutdown().await);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        statuses
    });
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        web_files.write(&ca, WEB);
        api_files.write(&ca, API);
        let _ = round;
    }
    let statuses = traffic.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(web.generation() >= 1, "the client side rotated");
    assert!(api.generation() >= 1, "the server side rotated");
}

#[tokio::test]
async fn a_server_that_is_not_the_expected_workload_is_refused() {
    // The outbound proxy dials the right address but names a workload the
    // inbound proxy is not: refused by SNI before any certificate is shown.
    let app = whoami_app().await;
    let mut setup = Setup::new();
    let other = "spiffe://cluster.local/ns/default/sa/billing";
    setup.expect = id(other);
    let mesh = mesh(app.addr, setup).await;
    let mut client = h1_client(mesh.outbound).await;
    let res = client.send_request(get("/")).await.unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(needle_error(&res).as_deref(), Some("mtls-failed"));
    assert_eq!(app.requests(), 0);
    let ended = mesh.inbound_log.wait_ended(1).await;
    assert!(
        ended
            .iter()
            .any(|e| matches!(e, Err(m) if m.contains("reached the wrong workload"))),
        "{ended:?}"
    );
}
