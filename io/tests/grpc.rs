//! gRPC through the proxy: a real tonic client and a tonic-codec server
//! (served by hyper's HTTP/2), unary and bidirectional streaming calls,
//! statuses in trailers, and Needle's own gRPC-shaped errors.

#![allow(clippy::result_large_err)] // tonic::Status is large; these are tests.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use needle_io::discovery::{Backend as SvcBackend, Service, StaticDiscovery};
use needle_io::http::{HttpConfig, HttpVersion};
use tonic::codec::{ProstCodec, Streaming};
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

fn msg(text: &str) -> Msg {
    Msg {
        text: text.to_owned(),
    }
}

/// Unary: echoes, fails with NOT_FOUND for "missing", and with UNAVAILABLE
/// for the first "flaky" call of each server.
#[derive(Clone)]
struct Unary(Arc<AtomicUsize>);

impl tonic::codegen::Service<Request<Msg>> for Unary {
    type Response = Response<Msg>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Msg>, Status>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let flaky = self.0.clone();
        Box::pin(async move {
            let m = req.into_inner();
            if m.text == "missing" {
                return Err(Status::not_found("no such thing"));
            }
            if m.text == "flaky" && flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(Status::unavailable("warming up"));
            }
            Ok(Response::new(msg(&format!("unary:{}", m.text))))
        })
    }
}

/// Bidirectional: echoes each message as it arrives.
#[derive(Clone)]
struct Bidi;

struct Echo(Streaming<Msg>);

impl Stream for Echo {
    type Item = Result<Msg, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|o| o.map(|r| r.map(|m| msg(&format!("echo:{}", m.text)))))
    }
}

impl tonic::codegen::Service<Request<Streaming<Msg>>> for Bidi {
    type Response = Response<Echo>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Echo>, Status>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move { Ok(Response::new(Echo(req.into_inner()))) })
    }
}

/// A gRPC server: tonic's server codec under hyper's HTTP/2.
async fn grpc_server() -> SocketAddr {
    grpc_server_counting().await.0
}

/// A gRPC server, and how many unary calls it has received.
async fn grpc_server_counting() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flaky = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let (flaky, c) = (flaky.clone(), c.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (flaky, c) = (flaky.clone(), c.clone());
                        async move {
                            let mut grpc =
                                tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
                            let res = match req.uri().path() {
                                "/test.Echo/Unary" => {
                                    c.fetch_add(1, Ordering::SeqCst);
                                    grpc.unary(Unary(flaky), req).await
                                }
                                "/test.Echo/Bidi" => grpc.streaming(Bidi, req).await,
                                _ => Status::unimplemented("no").into_http(),
                            };
                            Ok::<_, Infallible>(res)
                        }
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, calls)
}

async fn channel(addr: SocketAddr) -> tonic::client::Grpc<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(ch)
}

async fn unary(client: &mut tonic::client::Grpc<Channel>, text: &str) -> Result<Msg, Status> {
    client.ready().await.unwrap();
    client
        .unary(
            Request::new(msg(text)),
            PathAndQuery::from_static("/test.Echo/Unary"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .map(Response::into_inner)
}

#[tokio::test]
async fn grpc_unary_calls_and_statuses_in_trailers_pass_through() {
    let server = grpc_server().await;
    let (addr, _, _) = proxy_to(&[server], HttpConfig::default(), HttpVersion::Http2).await;
    let mut client = channel(addr).await;
    for i in 0..10 {
        let got = unary(&mut client, &format!("hi{i}")).await.unwrap();
        assert_eq!(got.text, format!("unary:hi{i}"));
    }
    let err = unary(&mut client, "missing").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such thing");
}

/// A client stream fed one message at a time.
struct Feed(tokio::sync::mpsc::Receiver<Msg>);

impl Stream for Feed {
    type Item = Msg;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Msg>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test]
async fn grpc_bidirectional_stream_is_not_buffered() {
    let server = grpc_server().await;
    let (addr, _, _) = proxy_to(&[server], HttpConfig::default(), HttpVersion::Http2).await;
    let mut client = channel(addr).await;
    client.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(msg("one")).await.unwrap();
    let mut replies = client
        .streaming(
            Request::new(Feed(rx)),
            PathAndQuery::from_static("/test.Echo/Bidi"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    // Each reply arrives before the next message is sent: nothing waits for
    // the end of either stream.
    for next in ["two", "three", ""] {
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("reply held back")
            .unwrap()
            .unwrap();
        assert!(reply.text.starts_with("echo:"), "{reply:?}");
        if next.is_empty() {
            drop(tx);
            break;
        }
        tx.send(msg(next)).await.unwrap();
    }
    assert_eq!(
        replies.message().await.unwrap(),
        None,
        "clean end: status OK in trailers"
    );
}

#[tokio::test]
async fn grpc_client_sees_unavailable_when_no_endpoints() {
    let discovery = StaticDiscovery::new();
    let dst = "127.0.0.1:5".parse().unwrap();
    discovery.set(
        dst,
        Service {
            backends: vec![SvcBackend {
                name: "default".into(),
                endpoints: vec![],
            }],
            ..Service::default()
        },
    );
    let (addr, _) = proxy(
        discovery.clone(),
        HttpConfig::default(),
        HttpVersion::Http2,
        dst,
    )
    .await;
    let mut client = channel(addr).await;
    let err = unary(&mut client, "x").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "no-endpoints");
    assert_eq!(
        err.metadata()
            .get("needle-error")
            .unwrap()
            .to_str()
            .unwrap(),
        "no-endpoints"
    );
}

#[tokio::test]
async fn grpc_unavailable_is_retried_on_a_grpc_route() {
    let (server, calls) = grpc_server_counting().await;
    let discovery = StaticDiscovery::new();
    let dst = "127.0.0.1:6".parse().unwrap();
    let mut svc = Service::with_endpoints([needle_io::discovery::Endpoint::new(server)]);
    svc.routes = vec![needle_core::route::Route {
        namespace: "ns".into(),
        name: "grpc".into(),
        created: 0,
        rules: vec![needle_core::route::Rule {
            matches: vec![],
            timeouts: needle_core::retry::Timeouts::default(),
            // gRPC calls are all POSTs: the route vouches they may be retried.
            retry: needle_core::retry::RetryPolicy::grpc(),
            backends: needle_core::route::Split::single("default".to_owned()),
        }],
    }];
    discovery.set(dst, svc);
    let (addr, _) = proxy(
        discovery.clone(),
        HttpConfig::default(),
        HttpVersion::Http2,
        dst,
    )
    .await;
    let mut client = channel(addr).await;
    let got = unary(&mut client, "flaky").await.unwrap();
    assert_eq!(got.text, "unary:flaky");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "UNAVAILABLE, then the retry"
    );
}

#[tokio::test]
async fn grpc_unavailable_is_not_retried_by_default() {
    let (server, calls) = grpc_server_counting().await;
    let (addr, _, _) = proxy_to(&[server], HttpConfig::default(), HttpVersion::Http2).await;
    let mut client = channel(addr).await;
    let err = unary(&mut client, "flaky").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.metadata().get("needle-error").is_none(),
        "the server's own status"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn grpc_calls_through_a_port_are_counted_with_their_status() {
    use needle_io::meta::Direction;
    use needle_io::net::TokioNet;
    use needle_io::proxy::{Port, PortConfig};

    let server = grpc_server().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = PortConfig {
        direction: Direction::Inbound,
        target: Some(server),
        ..PortConfig::default()
    };
    let port = Port::new(TokioNet, config);
    let metrics = port.metrics().clone();
    tokio::spawn(port.run(listener, std::future::pending()));

    let mut client = channel(addr).await;
    for i in 0..3 {
        unary(&mut client, &format!("hi{i}")).await.unwrap();
    }
    let err = unary(&mut client, "missing").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    drop(client);
    all_closed(&metrics).await;

    let req =
        format!("authority={server},direction=inbound,route=default,tls=not_provided_by_remote");
    expect(&metrics, "request_total", &[(&req, 4.0)]);
    expect(
        &metrics,
        "response_total",
        &[
            (
                &format!("{req},classification=success,grpc_status=0,status_code=200"),
                3.0,
            ),
            (
                &format!("{req},classification=failure,grpc_status=5,status_code=200"),
                1.0,
            ),
        ],
    );
    expect(
        &metrics,
        "detect_total",
        &[("direction=inbound,protocol=h2,reason=detected", 1.0)],
    );
    let tcp = format!("direction=inbound,peer=src,target_addr={server},tls=not_provided_by_remote");
    expect(&metrics, "tcp_close_total", &[(&tcp, 1.0)]);
    expect(&metrics, "tcp_open_connections", &[(&tcp, 0.0)]);
}
