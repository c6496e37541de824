//! The validator against hand-written requests, and properties over random
//! pipelined streams and random chunkings.

use super::*;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

/// What a whole stream came to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    violation: Option<Violation>,
    heads: u64,
    releasable: u64,
    tunnel: bool,
}

/// Feeds `input` cut at `cuts`; each request that may upgrade is answered
/// with `upgraded`.
fn run_with(config: Config, input: &[u8], cuts: &[usize], upgraded: bool) -> Outcome {
    let mut v = Validator::new(config);
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    bounds.push(input.len());
    bounds.sort_unstable();
    let mut from = 0;
    for to in bounds {
        let mut chunk = &input[from..to];
        while let Feed::AwaitingUpgrade { taken } = v.feed(chunk) {
            assert!(v.awaits_upgrade());
            v.resolve_upgrade(upgraded);
            chunk = &chunk[taken..];
            if chunk.is_empty() {
                break;
            }
        }
        from = to;
    }
    Outcome {
        violation: v.violation().copied(),
        heads: v.heads(),
        releasable: v.releasable(),
        tunnel: v.is_tunnel(),
    }
}

fn run(input: &[u8]) -> Outcome {
    run_with(Config::default(), input, &[], false)
}

/// The same stream fed byte by byte.
fn run_bytewise(input: &[u8]) -> Outcome {
    let cuts: Vec<usize> = (1..input.len()).collect();
    run_with(Config::default(), input, &cuts, false)
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

#[test]
fn plain_requests_pass_and_are_counted() {
    let o = run(GET);
    assert_eq!(o.violation, None);
    assert_eq!(o.heads, 1);
    assert_eq!(o.releasable, GET.len() as u64);
}

#[test]
fn pipelined_requests_with_bodies_pass() {
    let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
5;ext=1;q=\"x\"\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: t\r\n\r\n\
\r\nGET /c HTTP/1.0\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
    let o = run(stream);
    assert_eq!(o.violation, None, "{o:?}");
    assert_eq!(o.heads, 3);
    assert_eq!(o.releasable, stream.len() as u64);
    assert_eq!(run_bytewise(stream), o);
}

#[test]
fn an_incomplete_head_is_not_releasable() {
    let mut v = Validator::new(Config::default());
    assert_eq!(v.feed(GET), Feed::Accepted);
    assert_eq!(v.feed(b"GET /next HTTP/1.1\r\nHo"), Feed::Accepted);
    assert_eq!(v.releasable(), GET.len() as u64);
    assert_eq!(v.feed(b"st: a\r\n\r\n"), Feed::Accepted);
    assert_eq!(v.releasable(), v.offset());
}

#[test]
fn body_bytes_are_releasable_as_they_come() {
    let mut v = Validator::new(Config::default());
    let head = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
    v.feed(head);
    v.feed(b"abc");
    assert_eq!(v.releasable(), head.len() as u64 + 3);
}

#[test]
fn each_ambiguity_is_refused() {
    use FramingError as E;
    let cases: &[(&[u8], FramingError)] = &[
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            E::ContentLengthAndTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
            E::ContentLengthAndTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            E::MultipleContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
            E::MultipleContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n",
            E::InvalidContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n",
            E::InvalidContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4 4\r\n\r\n",
            E::InvalidContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            E::InvalidContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            E::InvalidContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            E::UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            E::UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            E::UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked;x=1\r\n\r\n",
            E::UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chun ked\r\n\r\n",
            E::UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            E::UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
            E::UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            E::TransferEncodingInHttp10,
        ),
        (b"GET / HTTP/1.1\r\nX: one\r\n two\r\n\r\n", E::ObsFold),
        (b"GET / HTTP/1.1\r\n X: one\r\n\r\n", E::ObsFold),
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", E::BareLf),
        (b"GET / HTTP/1.1\r\nHost: a\n\r\n", E::BareLf),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\n", E::BareLf),
        (b"\nGET / HTTP/1.1\r\n\r\n", E::BareLf),
        (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", E::BareCr),
        (b"GET / HTTP/1.1\rHost: a\r\n\r\n", E::BareCr),
        (b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", E::ControlByte(0)),
        (
            b"GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n",
            E::ControlByte(0x7f),
        ),
        (b"GET /\x01 HTTP/1.1\r\n\r\n", E::ControlByte(1)),
        (
            b"GET / HTTP/1.1\r\nContent-Length : 0\r\n\r\n",
            E::InvalidFieldName,
        ),
        (b"GET / HTTP/1.1\r\n: empty\r\n\r\n", E::InvalidFieldName),
        (b"GET / HTTP/1.1\r\nX(y): z\r\n\r\n", E::InvalidFieldName),
    ];
    for (input, expected) in cases {
        let o = run(input);
        let v = o
            .violation
            .unwrap_or_else(|| panic!("{:?} passed", String::from_utf8_lossy(input)));
        assert_eq!(v.error, *expected, "{:?}", String::from_utf8_lossy(input));
        assert_eq!(v.stage, Stage::Head);
        assert_eq!(o.releasable, 0, "no byte of a refused head is releasable");
        assert_eq!(o.heads, 0);
        assert_eq!(run_bytewise(input), o);
    }
}

#[test]
fn chunked_body_violations_are_refused_at_the_offending_byte() {
    use FramingError as E;
    let head: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases: &[(&[u8], FramingError, usize)] = &[
        (b"3\nabc\r\n0\r\n\r\n", E::BareLf, 1),
        (b"3\r\nabc\n0\r\n\r\n", E::BareLf, 6),
        (b"3\r\nabcd\r\n", E::InvalidChunkEnd, 6),
        (b"zz\r\n", E::InvalidChunkSize, 0),
        (b"\r\n", E::InvalidChunkSize, 0),
        (b"-1\r\n", E::InvalidChunkSize, 0),
        (b"3 x\r\n", E::InvalidChunkSize, 2),
        (b"11111111111111111\r\n", E::InvalidChunkSize, 16),
        (b"3;a\x00\r\n", E::ControlByte(0), 3),
        (b"3;a\rb\r\n", E::BareCr, 4),
        (b"0\r\nT: a\r\n b\r\n\r\n", E::ObsFold, 9),
        (b"0\r\nT: a\n\r\n", E::BareLf, 7),
    ];
    for (body, expected, at) in cases {
        let mut input = head.to_vec();
        input.extend_from_slice(body);
        let o = run(&input);
        let v = o
            .violation
            .unwrap_or_else(|| panic!("{:?} passed", String::from_utf8_lossy(body)));
        assert_eq!(v.error, *expected, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(v.stage, Stage::Body);
        assert_eq!(
            v.offset,
            (head.len() + at) as u64,
            "{:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(o.releasable, v.offset);
        assert_eq!(o.heads, 1);
        assert_eq!(run_bytewise(&input), o);
    }
}

#[test]
fn limits_bound_heads_and_chunk_lines() {
    let config = Config {
        max_head_bytes: 64,
        max_chunk_line_bytes: 8,
    };
    let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(64));
    let o = run_with(config, long.as_bytes(), &[], false);
    assert_eq!(
        o.violation.map(|v| v.error),
        Some(FramingError::HeadTooLarge)
    );
    let ext = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;aaaaaaaa\r\n";
    let o = run_with(config, ext, &[], false);
    assert_eq!(
        o.violation.map(|v| v.error),
        Some(FramingError::ChunkLineTooLong)
    );
    let ok = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;aaaaaa\r\nx\r\n0\r\n\r\n";
    assert_eq!(run_with(config, ok, &[], false).violation, None);
}

#[test]
fn a_refused_stream_stays_refused() {
    let mut v = Validator::new(Config::default());
    assert!(matches!(
        v.feed(b"GET / HTTP/1.1\n"),
        Feed::Rejected { taken: 14, .. }
    ));
    assert!(matches!(v.feed(GET), Feed::Rejected { taken: 0, .. }));
}

#[test]
fn a_refused_request_after_good_ones_keeps_them_releasable() {
    let mut stream = GET.to_vec();
    stream.extend_from_slice(GET);
    let bad_start = stream.len() as u64;
    stream.extend_from_slice(
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let o = run(&stream);
    assert_eq!(o.heads, 2);
    assert_eq!(o.releasable, bad_start);
    assert_eq!(o.violation.map(|v| v.request_start), Some(bad_start));
}

#[test]
fn upgrades_wait_for_the_response_then_tunnel_or_resume() {
    let upgrade: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    let mut stream = upgrade.to_vec();
    stream.extend_from_slice(b"\x81\x05hello\nanything\r\r\n");
    let accepted = run_with(Config::default(), &stream, &[], true);
    assert_eq!(accepted.violation, None);
    assert!(accepted.tunnel);
    // Declined: the tunnel bytes are read as the next head, and refused.
    let declined = run_with(Config::default(), &stream, &[], false);
    assert!(declined.violation.is_some());
    assert_eq!(declined.releasable, upgrade.len() as u64);

    let mut v = Validator::new(Config::default());
    assert_eq!(
        v.feed(&stream),
        Feed::AwaitingUpgrade {
            taken: upgrade.len()
        }
    );
    assert_eq!(v.feed(b"more"), Feed::AwaitingUpgrade { taken: 0 });
    v.resolve_upgrade(false);
    assert_eq!(v.feed(GET), Feed::Accepted);
    assert_eq!(v.heads(), 2);

    let connect: &[u8] = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n";
    let mut v = Validator::new(Config::default());
    assert_eq!(
        v.feed(connect),
        Feed::AwaitingUpgrade {
            taken: connect.len()
        }
    );
    // An Upgrade field on HTTP/1.0 asks for nothing (hyper ignores it too).
    let mut v = Validator::new(Config::default());
    assert_eq!(
        v.feed(b"GET / HTTP/1.0\r\nUpgrade: x\r\n\r\n"),
        Feed::Accepted
    );
}

// ---------------------------------------------------------------------------
// Properties.

/// One request of a random pipelined stream, valid or carrying a defect.
#[derive(Debug, Clone)]
struct Piece(Vec<u8>);

impl Arbitrary for Piece {
    fn arbitrary(g: &mut Gen) -> Piece {
        let body_len = usize::arbitrary(g) % 40;
        let body: Vec<u8> = (0..body_len).map(|_| u8::arbitrary(g)).collect();
        let mut out = Vec::new();
        if bool::arbitrary(g) && bool::arbitrary(g) {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"POST /p?q=1 HTTP/1.1\r\nHost: svc\r\nX-Any: v \t w\r\n");
        match u8::arbitrary(g) % 3 {
            0 => {
                out.extend_from_slice(format!("Content-Length: {body_len}\r\n\r\n").as_bytes());
                out.extend_from_slice(&body);
            }
            1 => {
                out.extend_from_slice(b"Transfer-Encoding: gzip, chunked\r\n\r\n");
                for part in body.chunks(1 + usize::arbitrary(g) % 7) {
                    out.extend_from_slice(format!("{:x};e=1\r\n", part.len()).as_bytes());
                    out.extend_from_slice(part);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\nT: 1\r\n\r\n");
            }
            _ => out.extend_from_slice(b"\r\n"),
        }
        Piece(out)
    }
}

/// A stream of requests, sometimes with a byte overwritten.
#[derive(Debug, Clone)]
struct Stream {
    pieces: Vec<Piece>,
    defect: Option<(usize, u8)>,
    cuts: Vec<usize>,
}

impl Stream {
    fn bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.pieces.iter().flat_map(|p| p.0.clone()).collect();
        if let Some((at, b)) = self.defect {
            if !out.is_empty() {
                let i = at % out.len();
                out[i] = b;
            }
        }
        out
    }
}

impl Arbitrary for Stream {
    fn arbitrary(g: &mut Gen) -> Stream {
        let n = 1 + usize::arbitrary(g) % 4;
        let defect_byte = *g.choose(b"\r\n\0 :,;\x7fa0").unwrap_or(&b'\n');
        Stream {
            pieces: (0..n).map(|_| Piece::arbitrary(g)).collect(),
            defect: bool::arbitrary(g).then(|| (usize::arbitrary(g), defect_byte)),
            cuts: Vec::arbitrary(g)
                .into_iter()
                .map(|c: u16| usize::from(c) % 600)
                .collect(),
        }
    }
}

#[test]
fn chunking_never_changes_the_verdict() {
    fn prop(s: Stream) -> TestResult {
        let bytes = s.bytes();
        let whole = run(&bytes);
        let cut = run_with(Config::default(), &bytes, &s.cuts, false);
        if whole != cut {
            return TestResult::error(format!("{whole:?} != {cut:?}"));
        }
        if whole != run_bytewise(&bytes) {
            return TestResult::error("byte by byte differs");
        }
        if whole.releasable > bytes.len() as u64 {
            return TestResult::error("released more than was fed");
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(Stream) -> TestResult);
}

#[test]
fn valid_pipelined_streams_pass_whole() {
    fn prop(pieces: Vec<Piece>, cuts: Vec<u16>) -> TestResult {
        let bytes: Vec<u8> = pieces.iter().flat_map(|p| p.0.clone()).collect();
        let cuts: Vec<usize> = cuts.into_iter().map(usize::from).collect();
        let o = run_with(Config::default(), &bytes, &cuts, false);
        if o.violation.is_some() {
            return TestResult::error(format!("{o:?}"));
        }
        if o.heads != pieces.len() as u64 || o.releasable != bytes.len() as u64 {
            return TestResult::error(format!("{o:?} for {} pieces", pieces.len()));
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Vec<Piece>, Vec<u16>) -> TestResult);
}
