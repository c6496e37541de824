//! The core detector against bytes written by real clients over real
//! loopback sockets: hyper's HTTP/1 client, the h2 client's preface, and a
//! rustls client's ClientHello (through tokio-rustls). If a client library
//! changes what it writes, these tests say whether detection still agrees.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use needle_core::detect::{Config, Detector, Method, Protocol, TlsVersion, Version};
use needle_core::time::Instant;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// Accepts one connection and detects its protocol from the bytes as they
/// arrive, read by read, the way the proxy will.
async fn detect_first_connection(listener: TcpListener) -> Protocol {
    let (mut conn, _) = listener.accept().await.expect("accept");
    let start = tokio::time::Instant::now();
    let now = || Instant::from_duration(start.elapsed());
    let mut detector = Detector::new(Config::default(), now());
    let mut buf = [0u8; 4096];
    loop {
        if let Some(decided) = detector.protocol() {
            return decided.clone();
        }
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("client wrote nothing for 5 s")
            .expect("read");
        if n == 0 {
            detector.handle_eof(now());
        } else {
            detector.handle_bytes(now(), &buf[..n]);
        }
    }
}

async fn loopback() -> (TcpListener, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

#[tokio::test]
async fn hyper_http1_requests_are_http1_with_their_method() {
    let cases = [
        (http::Method::GET, Method::Get),
        (http::Method::POST, Method::Post),
        (http::Method::DELETE, Method::Delete),
        (http::Method::PATCH, Method::Patch),
        (
            http::Method::from_bytes(b"PURGE").unwrap(),
            Method::Extension("PURGE".into()),
        ),
    ];
    for (method, expected) in cases {
        let (listener, addr) = loopback().await;
        let detected = tokio::spawn(detect_first_connection(listener));
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = http::Request::builder()
            .method(method.clone())
            .uri("/some/path?q=1")
            .header("host", "backend.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        // The response never comes (the detector's side never answers);
        // only the bytes hyper wrote matter.
        let _pending = tokio::spawn(async move { sender.send_request(request).await });
        assert_eq!(
            detected.await.unwrap(),
            Protocol::Http1 {
                method: expected,
                version: Version::Http11
            },
            "{method}"
        );
    }
}

#[tokio::test]
async fn an_h2_client_preface_is_http2() {
    let (listener, addr) = loopback().await;
    let detected = tokio::spawn(detect_first_connection(listener));
    let stream = TcpStream::connect(addr).await.unwrap();
    let (_client, conn): (h2::client::SendRequest<Bytes>, _) =
        h2::client::handshake(stream).await.unwrap();
    tokio::spawn(conn);
    assert_eq!(detected.await.unwrap(), Protocol::Http2);
}

#[tokio::test]
async fn a_hyper_http2_client_is_http2() {
    let (listener, addr) = loopback().await;
    let detected = tokio::spawn(detect_first_connection(listener));
    let stream = TcpStream::connect(addr).await.unwrap();
    let (_sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    assert_eq!(detected.await.unwrap(), Protocol::Http2);
}

#[tokio::test]
async fn a_tokio_rustls_client_is_tls_with_its_sni_and_alpn() {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let (listener, addr) = loopback().await;
    let detected = tokio::spawn(detect_first_connection(listener));
    let stream = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("Orders.Shop.example.").unwrap();
    // The handshake cannot finish (nobody answers); the hello is what counts.
    let _pending = tokio::spawn(async move { connector.connect(name, stream).await.map(|_| ()) });

    let Protocol::Tls(hello) = detected.await.unwrap() else {
        panic!("not TLS")
    };
    // Upper case and a trailing dot name the same host; the detector normalises.
    assert_eq!(hello.dns_name(), Some("orders.shop.example"));
    assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert!(hello.offers(TlsVersion::TLS13));
}
