//! One connection's life through a Needle port, over real loopback sockets:
//! opaque forwarding with half-close, a server-speaks-first protocol with no
//! stall, a silent client, HTTP handed to the HTTP proxy, the idle timeout,
//! and the error paths.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use needle_core::detect::{self, OpaqueReason, Protocol};
use needle_io::detect::DetectSettings;
use needle_io::net::TokioNet;
use needle_io::proxy::{ConnectionError, Port, PortConfig, Served};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A server that reads everything until the client half-closes, then
/// answers with what it read, upper-cased, and closes.
async fn upper_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut got = Vec::new();
                conn.read_to_end(&mut got).await.unwrap();
                conn.write_all(&got.to_ascii_uppercase()).await.unwrap();
                conn.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// A server that greets first, like SMTP, then echoes lines.
async fn banner_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                conn.write_all(b"220 mail.test ESMTP ready\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    conn.write_all(&buf[..n]).await.unwrap();
                }
            });
        }
    });
    addr
}

/// A Needle port forwarding to `target`; returns its address and a handle
/// on the outcome of the first connection it serves.
async fn port(
    config: PortConfig,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<Served, ConnectionError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let port = Port::new(TokioNet, config);
    let first = tokio::spawn(async move {
        let (conn, _) = listener.accept().await.unwrap();
        port.serve(conn).await
    });
    (addr, first)
}

fn to(target: SocketAddr) -> PortConfig {
    PortConfig {
        target: Some(target),
        ..PortConfig::default()
    }
}

#[tokio::test]
async fn opaque_bytes_pass_both_ways_with_half_close() {
    let server = upper_server().await;
    let (proxy, served) = port(to(server)).await;
    let mut client = TcpStream::connect(proxy).await.unwrap();
    client.write_all(b"\x00binary payload").await.unwrap();
    // Half-close: the server only answers once it sees our FIN.
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"\x00BINARY PAYLOAD");
    let served = served.await.unwrap().unwrap();
    assert!(matches!(
        served.protocol,
        Protocol::Opaque(OpaqueReason::Unrecognized(_))
    ));
    assert_eq!(served.transferred.unwrap().client_to_server, 15);
    assert_eq!(served.transferred.unwrap().server_to_client, 15);
}

#[tokio::test]
async fn a_server_speaking_first_is_not_stalled_by_detection() {
    let server = banner_server().await;
    // The detection timeout is long: only the server-first path can be fast.
    let mut config = to(server);
    config.detect.detect.timeout = Duration::from_secs(30);
    let (proxy, served) = port(config).await;

    let started = tokio::time::Instant::now();
    let mut client = TcpStream::connect(proxy).await.unwrap();
    let mut banner = [0u8; 27];
    tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut banner))
        .await
        .expect("the banner must not wait for the 30 s detection timeout")
        .unwrap();
    let delay = started.elapsed();
    assert_eq!(&banner, b"220 mail.test ESMTP ready\r\n");
    println!("server-first banner arrived {delay:?} after connect");

    // The conversation carries on through the same upstream connection.
    client.write_all(b"EHLO client.test\r\n").await.unwrap();
    let mut echo = [0u8; 18];
    client.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"EHLO client.test\r\n");
    drop(client);
    let served = served.await.unwrap().unwrap();
    assert_eq!(served.protocol, Protocol::Opaque(OpaqueReason::ServerFirst));
}

#[tokio::test]
async fn a_silent_client_and_silent_server_become_opaque_at_the_deadline() {
    let server = upper_server().await;
    let mut config = to(server);
    config.detect = DetectSettings {
        detect: detect::Config {
            timeout: Duration::from_millis(100),
            ..detect::Config::default()
        },
        ..DetectSettings::default()
    };
    let (proxy, served) = port(config).await;
    let mut client = TcpStream::connect(proxy).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.write_all(b"late").await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"LATE");
    assert_eq!(
        served.await.unwrap().unwrap().protocol,
        Protocol::Opaque(OpaqueReason::Timeout)
    );
}

/// A minimal, old-fashioned origin: reads one request head, answers in
/// HTTP/1.0 with the request line it saw, and closes.
async fn http_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).await.unwrap() == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let line = head.split(|&b| b == b'\r').next().unwrap().to_vec();
                let mut response = format!(
                    "HTTP/1.0 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    line.len()
                )
                .into_bytes();
                response.extend_from_slice(&line);
                conn.write_all(&response).await.unwrap();
                conn.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// Sends one raw HTTP/1.1 request and returns the whole response.
async fn http_get(proxy: SocketAddr, path: &str) -> String {
    let mut client = TcpStream::connect(proxy).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n");
    client.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    String::from_utf8(answer).unwrap()
}

#[tokio::test]
async fn an_http_client_goes_through_the_http_proxy() {
    let origin = http_origin().await;
    let (proxy, served) = port(to(origin)).await;
    let answer = http_get(proxy, "/hello?x=1").await;
    // Our client hears HTTP/1.1 from us, whatever the origin spoke.
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("GET /hello?x=1 HTTP/1.1"), "{answer}");
    let served = served.await.unwrap().unwrap();
    assert!(matches!(served.protocol, Protocol::Http1 { .. }));
    assert_eq!(
        served.transferred, None,
        "HTTP is accounted per request, not as bytes"
    );
}

#[tokio::test]
async fn an_http_request_to_a_refused_destination_gets_502_with_a_reason() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (proxy, _served) = port(to(closed)).await;
    let answer = http_get(proxy, "/").await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("needle-error:"),
        "{answer}"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let server = banner_server().await;
    let mut config = to(server);
    config.idle_timeout = Duration::from_millis(200);
    let (proxy, served) = port(config).await;
    let mut client = TcpStream::connect(proxy).await.unwrap();
    let mut banner = [0u8; 27];
    client.read_exact(&mut banner).await.unwrap();
    // Say nothing; the proxy closes us after the idle timeout.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
        .await
        .expect("closed by the idle timeout")
        .unwrap();
    let error = served.await.unwrap().unwrap_err();
    assert!(
        matches!(
            error,
            ConnectionError::Forward(needle_io::opaque::ForwardError::Idle { .. })
        ),
        "{error}"
    );
}

#[tokio::test]
async fn without_a_destination_the_connection_is_refused_with_a_reason() {
    let (proxy, served) = port(PortConfig::default()).await;
    let mut client = TcpStream::connect(proxy).await.unwrap();
    client.write_all(b"\x00").await.unwrap();
    let error = served.await.unwrap().unwrap_err();
    assert!(matches!(error, ConnectionError::NoDestination), "{error}");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "closed without a byte");
}

#[tokio::test]
async fn a_refused_destination_is_reported() {
    // Bind then drop: nothing listens there any more.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (proxy, served) = port(to(closed)).await;
    let mut client = TcpStream::connect(proxy).await.unwrap();
    client.write_all(b"\x00").await.unwrap();
    let error = served.await.unwrap().unwrap_err();
    assert!(matches!(error, ConnectionError::Connect { .. }), "{error}");
}

#[tokio::test]
async fn the_accept_loop_serves_many_connections_and_stops() {
    let server = upper_server().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let port = Port::new(TokioNet, to(server));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(Arc::clone(&port).run(listener, async {
        let _ = stopped.await;
    }));
    let mut clients = Vec::new();
    for i in 0..20u8 {
        clients.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&[b'a' + i; 100]).await.unwrap();
            c.shutdown().await.unwrap();
            let mut answer = Vec::new();
            c.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, vec![b'A' + i; 100]);
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    stop.send(()).unwrap();
    running.await.unwrap();
}

/// A destination discovery marks opaque is forwarded without detection:
/// the server's greeting arrives without the dial delay, and bytes that
/// look like HTTP are not parsed as HTTP.
#[tokio::test]
async fn an_opaque_hint_skips_detection() {
    use needle_io::discovery::{Endpoint, ProtocolHint, Service, StaticDiscovery};
    use needle_io::http::{HttpConfig, HttpProxy};
    use needle_io::net::Network;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"hello\n").await.unwrap();
        let mut got = vec![0u8; 18];
        s.read_exact(&mut got).await.unwrap();
        s.write_all(&got).await.unwrap();
    });
    let discovery = StaticDiscovery::new();
    discovery.set(
        server,
        Service {
            protocol: ProtocolHint::Opaque,
            ..Service::with_endpoints([Endpoint::new(server)])
        },
    );
    let http = HttpProxy::new(needle_io::net::TokioNet, HttpConfig::default(), discovery);
    let port = Port::with_http(
        needle_io::net::TokioNet,
        PortConfig {
            target: Some(server),
            ..PortConfig::default()
        },
        http,
    );
    let listener = needle_io::net::TokioNet
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = needle_io::net::Listener::local_addr(&listener).unwrap();
    let metrics = port.metrics().clone();
    tokio::spawn(port.run(listener, std::future::pending()));
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 6];
    client.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"hello\n");
    // HTTP-looking bytes go through untouched, not to an HTTP proxy.
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut echoed = [0u8; 18];
    client.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"GET / HTTP/1.1\r\n\r\n");
    assert!(
        metrics
            .encode()
            .lines()
            .any(|l| l.starts_with("detect_total") && l.contains("reason=\"configured\"")),
        "{}",
        metrics.encode()
    );
}
