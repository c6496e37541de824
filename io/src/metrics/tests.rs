//! The exposition, parsed back: exact series, labels and values.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::http::{HeaderMap, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use needle_core::detect::{OpaqueReason, Protocol};
use needle_core::identity::SpiffeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::http::ProxyBody;
use crate::meta::NoTls;

/// One sample line: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the samples of a text exposition (labels here never hold `,`,
/// `"` or `}` in their values).
pub(crate) fn parse(text: &str) -> Vec<Sample> {
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

/// The value of the one sample named `name` whose labels include `want`;
/// panics if there is not exactly one.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {want:?} in {samples:#?}");
    found[0].2
}

fn labels_of<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a BTreeMap<String, String>> {
    samples
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, l, _)| l)
        .collect()
}

fn body(b: &'static str) -> ProxyBody {
    crate::http::body_full(b)
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[test]
fn every_family_is_described_with_its_type() {
    let metrics = Metrics::new();
    let text = metrics.encode();
    // Nothing recorded, nothing shown: in particular no expiry at 0, which
    // an "expires soon" alert would take for an expired certificate.
    assert_eq!(text, "");
    let tls = TlsStatus::Plain(NoTls::Disabled);
    let authority: Arc<str> = Arc::from("10.0.0.1:80");
    let conn = metrics.http_conn(Direction::Outbound, authority.clone(), &tls);
    let observed = Observed {
        route: Some(Arc::from("default")),
        retries: 1,
        budget_exhausted: true,
        ..Observed::default()
    };
    drop(conn.record(1.0, observed, Response::new(body(""))));
    metrics.endpoint_ejected(&authority, "default");
    drop(metrics.tcp_open(Direction::Outbound, None, &tls));
    metrics.detected(Direction::Outbound, &Protocol::Http2);
    metrics.set_identity_cert_expiration(SystemTime::UNIX_EPOCH);
    let text = metrics.encode();
    for (name, kind) in [
        ("request_total", "counter"),
        ("response_total", "counter"),
        ("response_latency_ms", "histogram"),
        ("retry_total", "counter"),
        ("retry_budget_exhausted_total", "counter"),
        ("endpoint_ejections_total", "counter"),
        ("tcp_open_total", "counter"),
        ("tcp_close_total", "counter"),
        ("tcp_open_connections", "gauge"),
        ("tcp_read_bytes_total", "counter"),
        ("tcp_write_bytes_total", "counter"),
        ("detect_total", "counter"),
        ("identity_cert_expiration_timestamp_seconds", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind} in\n{text}"
        );
    }
    assert!(!text.contains("# EOF"), "Prometheus 0.0.4, not OpenMetrics");
}

#[tokio::test]
async fn an_outbound_request_is_labelled_by_its_endpoint_and_route() {
    let metrics = Metrics::new();
    let conn = metrics.http_conn(
        Direction::Outbound,
        Arc::from("10.0.0.1:80"),
        &TlsStatus::Plain(NoTls::NotProvidedByRemote),
    );
    let endpoint = PeerLabels::new(&TlsStatus::Mutual(id("spiffe://td/ns/a/sa/web")));
    let observed = Observed {
        route: Some(Arc::from("shop/checkout")),
        endpoint: Some(endpoint),
        retries: 2,
        budget_exhausted: false,
    };
    let mut res = Response::new(body("hello"));
    *res.status_mut() = ::http::StatusCode::SERVICE_UNAVAILABLE;
    let res = conn.record(7.0, observed, res);
    let samples = parse(&metrics.encode());
    // Recorded at the head: the request and its latency, not the response.
    let request = [
        ("direction", "outbound"),
        ("authority", "10.0.0.1:80"),
        ("tls", "true"),
        ("server_id", "spiffe://td/ns/a/sa/web"),
        ("route", "shop/checkout"),
    ];
    assert_eq!(value(&samples, "request_total", &request), 1.0);
    let want: BTreeMap<String, String> = request
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(labels_of(&samples, "request_total"), vec![&want]);
    assert!(labels_of(&samples, "response_total").is_empty());
    let bucket = |le: &str| {
        let mut l = request.to_vec();
        l.push(("le", le));
        value(&samples, "response_latency_ms_bucket", &l)
    };
    assert_eq!(bucket("5"), 0.0);
    assert_eq!(bucket("10"), 1.0);
    assert_eq!(bucket("+Inf"), 1.0);
    assert_eq!(value(&samples, "response_latency_ms_sum", &request), 7.0);
    let route = [
        ("direction", "outbound"),
        ("authority", "10.0.0.1:80"),
        ("route", "shop/checkout"),
    ];
    assert_eq!(value(&samples, "retry_total", &route), 2.0);

    // The response is recorded when its body ends.
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "hello");
    let samples = parse(&metrics.encode());
    let mut response = request.to_vec();
    response.extend([("status_code", "503"), ("classification", "failure")]);
    assert_eq!(value(&samples, "response_total", &response), 1.0);
    assert!(
        !labels_of(&samples, "response_total")[0].contains_key("grpc_status"),
        "no grpc_status on a plain HTTP response"
    );
}

#[tokio::test]
async fn a_grpc_status_in_trailers_classifies_the_response() {
    let metrics = Metrics::new();
    let conn = metrics.http_conn(
        Direction::Inbound,
        Arc::from("127.0.0.1:8080"),
        &TlsStatus::Mutual(id("spiffe://td/ns/b/sa/client")),
    );
    let observed = Observed {
        route: Some(Arc::from("default")),
        endpoint: Some(PeerLabels::new(&TlsStatus::Plain(NoTls::NotMeshed))),
        ..Observed::default()
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "5".parse().unwrap());
    let frames = Frames(
        [
            Frame::data(Bytes::from_static(b"msg")),
            Frame::trailers(trailers),
        ]
        .into(),
    );
    let res = conn.record(
        0.5,
        observed,
        Response::new(crate::http::body_boxed(frames)),
    );
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "5");
    let samples = parse(&metrics.encode());
    // Inbound: the client's identity, never the local endpoint's status.
    let response = [
        ("direction", "inbound"),
        ("tls", "true"),
        ("client_id", "spiffe://td/ns/b/sa/client"),
        ("route", "default"),
        ("status_code", "200"),
        ("grpc_status", "5"),
        ("classification", "failure"),
    ];
    assert_eq!(value(&samples, "response_total", &response), 1.0);
    assert!(!labels_of(&samples, "request_total")[0].contains_key("server_id"));
}

/// A body of ready frames.
struct Frames(std::collections::VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[test]
fn a_response_dropped_unread_is_still_recorded_and_needle_answers_have_no_tls() {
    let metrics = Metrics::new();
    let conn = metrics.http_conn(
        Direction::Outbound,
        Arc::from("10.0.0.2:80"),
        &TlsStatus::Plain(NoTls::NotProvidedByRemote),
    );
    // Rejected before routing (431): no route; never reached an endpoint:
    // no tls. The grpc-status of a trailers-only answer counts.
    let mut res = Response::new(body(""));
    res.headers_mut()
        .insert("grpc-status", "14".parse().unwrap());
    drop(conn.record(0.1, Observed::default(), res));
    let samples = parse(&metrics.encode());
    let labels = labels_of(&samples, "response_total");
    assert_eq!(labels.len(), 1);
    let keys: Vec<&str> = labels[0].keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "authority",
            "classification",
            "direction",
            "grpc_status",
            "status_code"
        ]
    );
    assert_eq!(labels[0]["classification"], "failure");
    assert_eq!(labels[0]["grpc_status"], "14");
}

#[tokio::test]
async fn bytes_opens_and_closes_are_counted_per_connection() {
    let metrics = Metrics::new();
    let target: std::net::SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let tls = TlsStatus::Plain(NoTls::NotProvidedByRemote);
    let conn = metrics.tcp_open(Direction::Inbound, Some(target), &tls);
    conn.count_read(3);
    let (near, mut far) = tokio::io::duplex(64);
    let mut counted = conn.wrap(near);
    far.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    counted.read_exact(&mut buf).await.unwrap();
    counted.write_all(b"0123456789").await.unwrap();
    let labels = [
        ("direction", "inbound"),
        ("peer", "src"),
        ("target_addr", "127.0.0.1:9000"),
        ("tls", "not_provided_by_remote"),
    ];
    let samples = parse(&metrics.encode());
    // Progress is visible while the connection is open.
    assert_eq!(value(&samples, "tcp_open_total", &labels), 1.0);
    assert_eq!(value(&samples, "tcp_open_connections", &labels), 1.0);
    assert_eq!(value(&samples, "tcp_close_total", &labels), 0.0);
    assert_eq!(value(&samples, "tcp_read_bytes_total", &labels), 8.0);
    assert_eq!(value(&samples, "tcp_write_bytes_total", &labels), 10.0);
    drop((counted, conn));
    let samples = parse(&metrics.encode());
    assert_eq!(value(&samples, "tcp_open_connections", &labels), 0.0);
    assert_eq!(value(&samples, "tcp_close_total", &labels), 1.0);
}

#[test]
fn forgetting_a_destination_removes_its_series_but_not_open_connections() {
    let metrics = Metrics::new();
    let tls = TlsStatus::Plain(NoTls::NotProvidedByRemote);
    let a: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
    let b: std::net::SocketAddr = "10.0.0.2:80".parse().unwrap();
    let conn = metrics.http_conn(Direction::Outbound, Arc::from(a.to_string()), &tls);
    drop(conn.record(1.0, Observed::default(), Response::new(body(""))));
    metrics.endpoint_ejected(&Arc::from(a.to_string()), "default");
    drop(metrics.tcp_open(Direction::Outbound, Some(a), &tls));
    let open_b = metrics.tcp_open(Direction::Outbound, Some(b), &tls);
    let conn_b = metrics.http_conn(Direction::Outbound, Arc::from(b.to_string()), &tls);
    drop(conn_b.record(1.0, Observed::default(), Response::new(body(""))));

    metrics.forget_authority("10.0.0.1:80");
    metrics.forget_authority("10.0.0.2:80");
    let text = metrics.encode();
    assert!(!text.contains("10.0.0.1:80"), "{text}");
    let samples = parse(&text);
    // b's HTTP series are gone; its open connection's series stay.
    assert!(labels_of(&samples, "request_total").is_empty());
    assert_eq!(
        value(
            &samples,
            "tcp_open_connections",
            &[("target_addr", "10.0.0.2:80")]
        ),
        1.0
    );
    drop(open_b);
    metrics.forget_authority("10.0.0.2:80");
    assert!(!metrics.encode().contains("10.0.0.2:80"));
}

#[test]
fn detection_outcomes_and_certificate_expiry() {
    let metrics = Metrics::new();
    metrics.detected(Direction::Inbound, &Protocol::Http2);
    metrics.detected(Direction::Inbound, &Protocol::Opaque(OpaqueReason::Timeout));
    metrics.detected(Direction::Inbound, &Protocol::Opaque(OpaqueReason::Timeout));
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    metrics.set_identity_cert_expiration(not_after);
    let samples = parse(&metrics.encode());
    let h2 = [("protocol", "h2"), ("reason", "detected")];
    assert_eq!(value(&samples, "detect_total", &h2), 1.0);
    let timeout = [
        ("direction", "inbound"),
        ("protocol", "opaque"),
        ("reason", "timeout"),
    ];
    assert_eq!(value(&samples, "detect_total", &timeout), 2.0);
    assert_eq!(
        value(&samples, "identity_cert_expiration_timestamp_seconds", &[]),
        1.8e9
    );
}

/// The cost of recording one request (request, latency, response on drop)
/// and of counting one read and one write. A measurement, not a check:
/// `cargo test --release -p needle-io --lib record_cost -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement; run in release"]
async fn record_cost() {
    let metrics = Metrics::new();
    let conn = metrics.http_conn(
        Direction::Outbound,
        Arc::from("10.0.0.1:80"),
        &TlsStatus::Plain(NoTls::NotProvidedByRemote),
    );
    let endpoint = PeerLabels::new(&TlsStatus::Mutual(id("spiffe://td/ns/a/sa/web")));
    let route: Arc<str> = Arc::from("shop/checkout");
    let n = 200_000u32;
    // The response the proxy would forward anyway; only recording differs.
    let started = std::time::Instant::now();
    for _ in 0..n {
        drop(std::hint::black_box(Response::new(body(""))));
    }
    let baseline = started.elapsed();
    let started = std::time::Instant::now();
    for i in 0..n {
        let observed = Observed {
            route: Some(route.clone()),
            endpoint: Some(endpoint.clone()),
            ..Observed::default()
        };
        drop(std::hint::black_box(conn.record(
            f64::from(i % 100),
            observed,
            Response::new(body("")),
        )));
    }
    let recorded = started.elapsed();
    let per = |d: Duration| d.as_nanos() as f64 / f64::from(n);
    println!(
        "record a request: {:.0} ns (response alone {:.0} ns)",
        per(recorded) - per(baseline),
        per(baseline)
    );

    let tls = TlsStatus::Plain(NoTls::NotProvidedByRemote);
    let target = "127.0.0.1:9000".parse().unwrap();
    let (near, mut far) = tokio::io::duplex(1 << 16);
    let (mut plain, mut plain_far) = tokio::io::duplex(1 << 16);
    let mut counted = metrics
        .tcp_open(Direction::Inbound, Some(target), &tls)
        .wrap(near);
    let mut buf = [0u8; 64];
    let rounds = 100_000u32;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        plain_far.write_all(&buf).await.unwrap();
        plain.read_exact(&mut buf).await.unwrap();
    }
    let plain_t = started.elapsed();
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        far.write_all(&buf).await.unwrap();
        counted.read_exact(&mut buf).await.unwrap();
    }
    let counted_t = started.elapsed();
    let per = |d: Duration| d.as_nanos() as f64 / f64::from(rounds);
    println!(
        "count a read: {:.1} ns (an in-memory 64-byte read alone {:.0} ns)",
        per(counted_t) - per(plain_t),
        per(plain_t)
    );
}

#[test]
fn grpc_codes_outside_the_spec_are_unknown() {
    use super::request::grpc_label;
    assert_eq!(grpc_label(0), 0);
    assert_eq!(grpc_label(16), 16);
    assert_eq!(grpc_label(17), 2);
    assert_eq!(grpc_label(u32::MAX), 2);
}

#[tokio::test]
async fn a_connection_labelled_after_its_handshake_keeps_its_earlier_bytes() {
    let metrics = Metrics::new();
    let target: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let conn = metrics.tcp_accept(Direction::Inbound, Some(target));
    conn.count_read(7);
    let (near, mut far) = tokio::io::duplex(64);
    let mut counted = conn.wrap(near);
    far.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    counted.read_exact(&mut buf).await.unwrap();
    counted.write_all(b"abc").await.unwrap();
    // Not labelled yet: nothing shown, nothing lost.
    assert_eq!(metrics.encode(), "");
    let client = TlsStatus::Mutual(id("spiffe://td/ns/b/sa/client"));
    assert!(conn.set_tls(&client));
    assert!(
        !conn.set_tls(&TlsStatus::Plain(NoTls::Passthrough)),
        "first wins"
    );
    counted.write_all(b"de").await.unwrap();
    let labels = [
        ("direction", "inbound"),
        ("target_addr", "127.0.0.1:8080"),
        ("tls", "true"),
        ("client_id", "spiffe://td/ns/b/sa/client"),
    ];
    let samples = parse(&metrics.encode());
    assert_eq!(value(&samples, "tcp_open_total", &labels), 1.0);
    assert_eq!(value(&samples, "tcp_read_bytes_total", &labels), 12.0);
    assert_eq!(value(&samples, "tcp_write_bytes_total", &labels), 5.0);
    // Closed when the last handle (the port's and the stream's) goes.
    drop(conn);
    let samples = parse(&metrics.encode());
    assert_eq!(value(&samples, "tcp_open_connections", &labels), 1.0);
    drop(counted);
    let samples = parse(&metrics.encode());
    assert_eq!(value(&samples, "tcp_open_connections", &labels), 0.0);
    assert_eq!(value(&samples, "tcp_close_total", &labels), 1.0);

    // Never labelled (closed during detection): opened and closed as plain.
    drop(metrics.tcp_accept(Direction::Inbound, Some(target)));
    let samples = parse(&metrics.encode());
    let plain = [("tls", "not_provided_by_remote"), ("direction", "inbound")];
    assert_eq!(value(&samples, "tcp_open_total", &plain), 1.0);
    assert_eq!(value(&samples, "tcp_close_total", &plain), 1.0);
    assert_eq!(value(&samples, "tcp_open_connections", &plain), 0.0);
}
