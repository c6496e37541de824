//! A real tokio-rustls client completes mutual TLS with the core's server
//! driver over a real loopback TCP socket, then exchanges data through it.
//!
//! This is the seam the data plane will use: io reads and writes the socket,
//! the core's `Session` decides everything. The client side uses the core's
//! `client_config`, so it applies exactly the checks a Needle client does.

#[path = "../../core/tests/common/pki.rs"]
mod pki;

use std::sync::Arc;

use needle_core::identity::{SpiffeId, sni};
use needle_core::time::Instant;
use needle_core::tls::{Alpn, Credentials, InputClock, Now, Output, Received, Session};
use pki::{Ca, T0, unix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const DB: &str = "spiffe://cluster.local/ns/default/sa/db";

/// The test certificates are valid around `T0`; the wall clock is pinned
/// there, the monotonic one counts from the connection's start.
fn now(start: tokio::time::Instant) -> Now {
    Now::new(Instant::from_duration(start.elapsed()), unix(T0))
}

/// Serves one connection with the core's driver: handshake, then answer one
/// message with the client's identity, then close.
async fn serve(mut tcp: TcpStream, creds: Credentials) -> (Option<SpiffeId>, Vec<Output>) {
    let start = tokio::time::Instant::now();
    let deadline = Instant::from_secs(5);
    let mut session = Session::server(&creds, &Alpn::ALL, now(start), deadline).unwrap();
    let mut events = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut plain = [0u8; 1024];
    loop {
        while let Some(out) = session.poll_output() {
            match out {
                Output::Transmit(bytes) => tcp.write_all(&bytes).await.unwrap(),
                other => events.push(other),
            }
        }
        if session.error().is_some() {
            return (None, events);
        }
        if let Some(est) = session.established().cloned() {
            if let Received::Data(n) = session.recv(&mut plain) {
                let msg = String::from_utf8_lossy(&plain[..n]);
                let reply = format!("{} says {msg}", est.peer);
                session.send(reply.as_bytes()).unwrap();
                session.close();
                while let Some(Output::Transmit(bytes)) = session.poll_output() {
                    tcp.write_all(&bytes).await.unwrap();
                }
                return (Some(est.peer), events);
            }
        }
        let n = tcp.read(&mut buf).await.unwrap();
        if n == 0 {
            session.handle_eof(now(start));
        } else {
            let taken = session.handle_input(now(start), &buf[..n]);
            assert_eq!(taken, n);
        }
    }
}

#[tokio::test]
async fn tokio_rustls_client_handshakes_with_the_core_server_over_loopback() {
    let ca = Ca::new("mesh ca");
    let web = ca.credentials(WEB);
    let db = ca.credentials(DB);
    let web_id = SpiffeId::parse(WEB).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        serve(tcp, web).await
    });

    let clock = Arc::new(InputClock::new(unix(T0)));
    let config = needle_core::tls::client_config(&db, &web_id, &[Alpn::H2], clock).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(sni::server_name(&web_id).unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"needle/h2"[..]));

    tls.write_all(b"hello").await.unwrap();
    tls.flush().await.unwrap();
    let mut reply = String::new();
    tls.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, format!("{DB} says hello"));

    let (peer, events) = server.await.unwrap();
    assert_eq!(peer, Some(SpiffeId::parse(DB).unwrap()));
    assert!(
        matches!(events.as_slice(), [Output::Established(e)] if e.alpn == Alpn::H2),
        "{events:?}"
    );
}
