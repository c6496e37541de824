//! What the HTTP/1 framing validator costs per request: a realistic head
//! alone, a head with a chunked body, and 16 pipelined heads in one read,
//! each through a fresh `Validator` as the guard uses it.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use needle_core::http1::{Config, Feed, Validator};

/// A browser-like GET: request line and eight fields (about 420 bytes).
const GET: &[u8] = b"GET /v1/orders?limit=20&cursor=abc HTTP/1.1\r\nHost: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n\
Connection: keep-alive\r\nCookie: session=0123456789abcdef0123456789abcdef\r\n\
Cache-Control: no-cache\r\n\r\n";

/// A POST with a 4 KiB body sent as four chunks, and a trailer.
fn chunked_post() -> Vec<u8> {
    let mut out = b"POST /upload HTTP/1.1\r\nHost: api.example.com\r\n\
Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for _ in 0..4 {
        out.extend_from_slice(b"400\r\n");
        out.extend_from_slice(&[b'x'; 1024]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nChecksum: 1234\r\n\r\n");
    out
}

fn validate(stream: &[u8]) -> u64 {
    let mut v = Validator::new(Config::default());
    assert_eq!(v.feed(stream), Feed::Accepted);
    v.heads()
}

fn bench_framing(c: &mut Criterion) {
    let post = chunked_post();
    let pipelined = GET.repeat(16);
    let mut group = c.benchmark_group("http1_framing");
    for (name, stream) in [
        ("get", GET),
        ("chunked_post_4k", &post[..]),
        ("pipelined_16_gets", &pipelined[..]),
    ] {
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(name, |b| b.iter(|| validate(black_box(stream))));
    }
    group.finish();
}

criterion_group!(benches, bench_framing);
criterion_main!(benches);
