//! Graceful shutdown of a port: it stops accepting, requests in flight get
//! their responses (HTTP/1 with `connection: close`, HTTP/2 after GOAWAY),
//! and `Port::drained` reports when every connection has ended.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use needle_io::net::{Network, TokioNet};
use needle_io::proxy::{Port, PortConfig};

async fn port_to(
    app: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    Arc<Port<TokioNet>>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let port = Port::new(
        TokioNet,
        PortConfig {
            target: Some(app),
            ..PortConfig::default()
        },
    );
    let listener = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = needle_io::net::Listener::local_addr(&listener).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(port.clone().run(listener, async move {
        let _ = stopped.await;
    }));
    (addr, port, stop, run)
}

#[tokio::test]
async fn in_flight_requests_finish_and_connections_close_on_drain() {
    let app = ok_backend("slow", Duration::from_millis(300)).await;
    let (addr, port, stop, run) = port_to(app.addr).await;
    let mut h1 = h1_client(addr).await;
    let mut h2 = h2_client(addr).await;
    let h1_req = tokio::spawn(async move {
        let res = h1.send_request(get("/")).await.unwrap();
        let close = res.headers().get("connection").cloned();
        (res.status(), close, text(res).await, h1)
    });
    let h2_req = tokio::spawn(async move {
        let res = h2.send_request(get("http://svc.test/")).await.unwrap();
        (res.status(), text(res).await, h2)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(port.open_connections(), 2);

    stop.send(()).unwrap();
    run.await.unwrap();
    // No new connections once the port stopped accepting.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );

    let (status, close, body, mut h1) = h1_req.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "slow"));
    assert_eq!(close.unwrap(), "close", "HTTP/1 told to close");
    let (status, body, mut h2) = h2_req.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "slow"));
    assert_eq!(port.drained(Duration::from_secs(5)).await, 0, "all ended");
    // Neither connection takes another request.
    assert!(h1.send_request(get("/")).await.is_err());
    assert!(h2.send_request(get("http://svc.test/")).await.is_err());
}

#[tokio::test]
async fn drained_reports_connections_still_open_at_the_end_of_the_grace_period() {
    // An opaque connection that never ends by itself.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (_s, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
    });
    let (addr, port, stop, run) = port_to(app).await;
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut client, b"\x00\x01opaque")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(port.drained(Duration::from_millis(200)).await, 1);
}
