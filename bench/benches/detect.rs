//! How long detection takes on a realistic first packet of each protocol:
//! a whole `Detector` created, fed the packet in one read, and asked for
//! its answer, as the proxy does for every accepted connection.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use needle_core::detect::{Config, Detector, Protocol};
use needle_core::time::Instant;

/// What curl sends for `curl http://api.example.com/v1/orders?limit=20`.
const HTTP1: &[u8] = b"GET /v1/orders?limit=20 HTTP/1.1\r\nHost: api.example.com\r\n\
User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";

/// The HTTP/2 preface followed by a typical client SETTINGS frame.
fn http2() -> Vec<u8> {
    let mut packet = needle_core::detect::h2::PREFACE.to_vec();
    packet.extend_from_slice(&[0, 0, 18, 4, 0, 0, 0, 0, 0]);
    packet.extend_from_slice(&[0, 2, 0, 0, 0, 0, 0, 4, 0, 0x60, 0, 0, 0, 6, 0, 0, 0x40, 0]);
    packet
}

/// A real rustls ClientHello (TLS 1.3, X25519 and more key shares, SNI, ALPN).
fn tls() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS 1.3 is supported")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from("api.example.com").expect("valid name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

/// A PostgreSQL StartupMessage: a binary protocol, opaque at its first byte.
const OPAQUE: &[u8] = b"\x00\x00\x00\x29\x00\x03\x00\x00user\x00app\x00database\x00orders\x00\x00";

fn detect(packet: &[u8]) -> Protocol {
    let mut detector = Detector::new(Config::default(), Instant::ZERO);
    detector.handle_bytes(Instant::ZERO, packet);
    detector.into_parts().0.expect("a first packet decides")
}

fn bench_detect(c: &mut Criterion) {
    let tls = tls();
    let http2 = http2();
    let mut group = c.benchmark_group("detect");
    for (name, packet) in [
        ("http1", HTTP1),
        ("http2", &http2[..]),
        ("tls", &tls[..]),
        ("opaque", OPAQUE),
    ] {
        group.throughput(Throughput::Bytes(packet.len() as u64));
        group.bench_function(name, |b| b.iter(|| detect(black_box(packet))));
    }
    group.finish();
}

criterion_group!(benches, bench_detect);
criterion_main!(benches);
