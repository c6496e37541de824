//! The HTTP proxy inside turmoil: the same stack over simulated sockets and
//! virtual time. A partition between proxy and endpoint makes a request time
//! out with 504; once it heals, traffic resumes.
#![cfg(feature = "sim")]

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use needle_core::retry::Timeouts;
use needle_io::discovery::StaticDiscovery;
use needle_io::http::{HttpConfig, HttpProxy, ProxyBody};
use needle_io::net::{Network, TurmoilNet};
use needle_io::proxy::{Port, PortConfig};

const SEED: u64 = 5;

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[test]
fn partition_gives_504_then_traffic_resumes_after_heal() {
    println!("turmoil seed {SEED}");
    let mut sim = turmoil::Builder::new()
        .rng_seed(SEED)
        .epoch(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(Duration::from_secs(60))
        .enable_tokio_io()
        .build();

    sim.host("server", || async {
        let listener =
            turmoil::net::TcpListener::bind((IpAddr::from(Ipv4Addr::UNSPECIFIED), 80)).await?;
        loop {
            let (s, _) = listener.accept().await?;
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .auto_date_header(false)
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });

    sim.host("proxy", || async {
        let config = HttpConfig {
            auto_date_header: false,
            default_timeouts: Timeouts {
                request: Some(Duration::from_secs(1)),
                per_try: None,
            },
            rng_seed: SEED,
            ..HttpConfig::default()
        };
        // The whole production stack: accept, detection, HTTP proxying.
        let http = HttpProxy::new(TurmoilNet, config, StaticDiscovery::new());
        let target = SocketAddr::new(turmoil::lookup("server"), 80);
        let port = Port::with_http(
            TurmoilNet,
            PortConfig {
                target: Some(target),
                ..PortConfig::default()
            },
            http,
        );
        let listener = TurmoilNet
            .bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 4140))
            .await?;
        port.run(listener, std::future::pending()).await;
        Ok(())
    });

    sim.client("client", async {
        async fn get() -> Result<(StatusCode, Option<String>), Box<dyn std::error::Error>> {
            let s = turmoil::net::TcpStream::connect(("proxy", 4140)).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
            tokio::spawn(conn);
            let req = Request::get("/").header("host", "server").body(empty())?;
            let res = sender.send_request(req).await?;
            let reason = res
                .headers()
                .get("needle-error")
                .map(|v| v.to_str().unwrap_or("?").to_owned());
            let status = res.status();
            res.into_body().collect().await?;
            Ok((status, reason))
        }
        assert_eq!(get().await?, (StatusCode::OK, None));

        turmoil::partition("proxy", "server");
        let started = tokio::time::Instant::now();
        assert_eq!(
            get().await?,
            (StatusCode::GATEWAY_TIMEOUT, Some("timeout".into()))
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        println!("partitioned request answered 504 after {waited:?} (simulated)");

        turmoil::repair("proxy", "server");
        for _ in 0..3 {
            assert_eq!(get().await?, (StatusCode::OK, None));
        }
        Ok(())
    });

    sim.run().expect("simulation");
}
