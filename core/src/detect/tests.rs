//! Tests of the whole detector: tricky cases, properties over chunkings, and
//! real rustls ClientHellos as oracles.

use super::tls::{ClientHelloError, InvalidServerName, TlsError};
use super::*;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

const T0: Instant = Instant::ZERO;

/// Detects `input` fed in one piece, then closes the stream if undecided.
fn detect(input: &[u8]) -> Protocol {
    detect_with(Config::default(), input, &[])
}

/// Detects `input` split at `splits` (offsets, any order), then closes.
fn detect_with(config: Config, input: &[u8], splits: &[usize]) -> Protocol {
    let mut d = Detector::new(config, T0);
    let mut cuts: Vec<usize> = splits.iter().map(|&s| s.min(input.len())).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut from = 0;
    for to in cuts {
        d.handle_bytes(T0, &input[from..to]);
        from = to;
    }
    d.handle_eof(T0);
    d.protocol().cloned().expect("decided after eof")
}

// ---------------------------------------------------------------------------
// Hand-built ClientHellos, so each field can be made wrong on purpose.

fn vec8(body: &[u8]) -> Vec<u8> {
    let mut v = vec![u8::try_from(body.len()).unwrap()];
    v.extend_from_slice(body);
    v
}

fn vec16(body: &[u8]) -> Vec<u8> {
    let mut v = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut v = kind.to_be_bytes().to_vec();
    v.extend(vec16(data));
    v
}

fn sni_ext(name: &[u8]) -> Vec<u8> {
    let mut entry = vec![0];
    entry.extend(vec16(name));
    ext(0, &vec16(&entry))
}

fn alpn_ext(names: &[&[u8]]) -> Vec<u8> {
    let list: Vec<u8> = names.iter().flat_map(|n| vec8(n)).collect();
    ext(16, &vec16(&list))
}

fn versions_ext(versions: &[u16]) -> Vec<u8> {
    let list: Vec<u8> = versions.iter().flat_map(|v| v.to_be_bytes()).collect();
    ext(43, &vec8(&list))
}

/// A ClientHello body with the given extensions.
fn hello_body(extensions: &[Vec<u8>]) -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend([7u8; 32]);
    b.extend(vec8(&[1; 32]));
    b.extend(vec16(&[0x13, 0x01, 0x13, 0x02]));
    b.extend(vec8(&[0]));
    b.extend(vec16(&extensions.concat()));
    b
}

/// The handshake message wrapped in records of at most `fragment` bytes.
fn records(body: &[u8], fragment: usize) -> Vec<u8> {
    let mut msg = vec![1];
    msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    msg.extend_from_slice(body);
    let mut out = Vec::new();
    for chunk in msg.chunks(fragment) {
        out.extend([22, 3, 1]);
        out.extend(vec16(chunk));
    }
    out
}

fn standard_hello() -> Vec<u8> {
    records(
        &hello_body(&[
            sni_ext(b"api.example.com"),
            alpn_ext(&[b"h2", b"http/1.1"]),
            versions_ext(&[0x0a0a, 0x0304, 0x0303]),
        ]),
        1 << 14,
    )
}

// ---------------------------------------------------------------------------
// The table of tricky cases.

#[test]
fn http1_request_lines() {
    assert_eq!(
        detect(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        Protocol::Http1 {
            method: Method::Get,
            version: Version::Http11
        }
    );
    assert_eq!(
        detect(b"POST /x HTTP/1.0\r\n"),
        Protocol::Http1 {
            method: Method::Post,
            version: Version::Http10
        }
    );
    // Lower-case methods are valid (unknown) tokens; methods are case-sensitive.
    assert_eq!(
        detect(b"get / HTTP/1.1\r\n"),
        Protocol::Http1 {
            method: Method::Extension("get".into()),
            version: Version::Http11
        }
    );
    // Empty lines before the request line are skipped (RFC 9112 §2.2).
    assert!(matches!(
        detect(b"\r\nGET / HTTP/1.1\r\n"),
        Protocol::Http1 { .. }
    ));
    // `PRI` with an HTTP/1.1 version is an HTTP/1 request, not the h2 preface.
    assert_eq!(
        detect(b"PRI * HTTP/1.1\r\n"),
        Protocol::Http1 {
            method: Method::Extension("PRI".into()),
            version: Version::Http11
        }
    );
}

#[test]
fn http1_decides_as_soon_as_the_line_is_proven() {
    let mut d = Detector::new(Config::default(), T0);
    d.handle_bytes(T0, b"GET / HTTP/1.1\r");
    assert!(matches!(d.poll(), Detection::NeedMore { .. }));
    d.handle_bytes(T0, b"\n");
    assert!(matches!(
        d.poll(),
        Detection::Decided(Protocol::Http1 { .. })
    ));
}

#[test]
fn not_quite_http1_is_opaque() {
    for input in [
        &b"GET /\r\n"[..],      // HTTP/0.9
        b"GET / HTTP/1.1\n",    // bare LF
        b"GET / HTTP/2.0\r\n",  // not 1.x
        b"GET  / HTTP/1.1\r\n", // two spaces
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00\x00\x00\x01",
        b"{\"json\":1}",
    ] {
        assert!(
            matches!(
                detect(input),
                Protocol::Opaque(OpaqueReason::Unrecognized(_))
            ),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn binary_protocols_are_opaque_at_their_first_byte() {
    let mut d = Detector::new(Config::default(), T0);
    d.handle_bytes(T0, b"\x00");
    assert!(matches!(
        d.poll(),
        Detection::Decided(Protocol::Opaque(OpaqueReason::Unrecognized(_)))
    ));
}

#[test]
fn http2_preface_and_pri_without_it() {
    assert_eq!(detect(h2::PREFACE), Protocol::Http2);
    let mut with_settings = h2::PREFACE.to_vec();
    with_settings.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    assert_eq!(detect(&with_settings), Protocol::Http2);
    let Protocol::Opaque(OpaqueReason::Unrecognized(why)) =
        detect(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    else {
        panic!("PRI without the full preface must be opaque");
    };
    assert_eq!(why.h2_mismatch_at, 18);
    // A truncated preface is undecided until the client closes.
    assert_eq!(
        detect(&h2::PREFACE[..20]),
        Protocol::Opaque(OpaqueReason::ClientClosed)
    );
}

#[test]
fn tls_client_hello_fields() {
    let Protocol::Tls(hello) = detect(&standard_hello()) else {
        panic!("not TLS")
    };
    assert_eq!(hello.dns_name(), Some("api.example.com"));
    assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(
        hello.versions,
        vec![TlsVersion(0x0a0a), TlsVersion::TLS13, TlsVersion::TLS12]
    );
    assert!(hello.offers(TlsVersion::TLS13));
}

#[test]
fn tls_hello_spanning_many_records() {
    let body = hello_body(&[sni_ext(b"a.test"), alpn_ext(&[b"h2"])]);
    for fragment in [1, 2, 3, 4, 5, 17, 100] {
        let Protocol::Tls(hello) = detect(&records(&body, fragment)) else {
            panic!("fragment size {fragment}: not TLS")
        };
        assert_eq!(hello.dns_name(), Some("a.test"));
    }
}

#[test]
fn tls_without_extensions_uses_the_legacy_version() {
    let mut body = hello_body(&[]);
    body.truncate(body.len() - 2); // drop the empty extensions block entirely
    let Protocol::Tls(hello) = detect(&records(&body, 1 << 14)) else {
        panic!("not TLS")
    };
    assert_eq!(hello.versions, vec![TlsVersion::TLS12]);
    assert_eq!(hello.server_name, None);
    assert!(hello.alpn.is_empty());
}

#[test]
fn tls_server_name_edge_cases() {
    let name = |raw: &[u8]| {
        let Protocol::Tls(hello) = detect(&records(&hello_body(&[sni_ext(raw)]), 1 << 14)) else {
            panic!("not TLS")
        };
        hello.server_name
    };
    // A trailing dot names the same host; case does not matter in DNS.
    assert_eq!(
        name(b"Example.COM."),
        Some(ServerName::Dns("example.com".into()))
    );
    // Non-UTF-8 (and non-ASCII) names are TLS, but with an unusable name.
    assert_eq!(
        name(b"\xff\xfe.test"),
        Some(ServerName::Invalid(InvalidServerName::NotAscii))
    );
    assert_eq!(
        name(b"127.0.0.1"),
        Some(ServerName::Invalid(InvalidServerName::IpLiteral))
    );
}

fn tls_rejection(input: &[u8]) -> TlsError {
    match detect(input) {
        Protocol::Opaque(OpaqueReason::Unrecognized(why)) => why.tls,
        other => panic!("expected opaque, got {other:?}"),
    }
}

#[test]
fn malformed_tls_is_opaque_with_the_reason() {
    // An empty ALPN list is malformed (RFC 7301 requires at least one name).
    let empty_alpn = records(&hello_body(&[ext(16, &vec16(&[]))]), 1 << 14);
    assert_eq!(
        tls_rejection(&empty_alpn),
        TlsError::ClientHello(ClientHelloError::Invalid("empty ALPN protocol_name_list"))
    );
    // Records of length 0 are forbidden for handshake messages.
    assert_eq!(tls_rejection(&[22, 3, 1, 0, 0]), TlsError::EmptyRecord);
    // ...also between two fragments of one hello.
    let mut split = records(&hello_body(&[]), 10);
    split.splice(15..15, [22, 3, 1, 0, 0]);
    assert_eq!(tls_rejection(&split), TlsError::EmptyRecord);
    // An SSLv2-style hello starts with the high bit set.
    assert_eq!(
        tls_rejection(&[0x80, 0x2e, 0x01, 0x00, 0x02]),
        TlsError::NotHandshake { content_type: 0x80 }
    );
    assert_eq!(
        tls_rejection(&[22, 2, 0]),
        TlsError::RecordVersion { major: 2 }
    );
    assert_eq!(
        tls_rejection(&[22, 3, 1, 0x40, 0x01]),
        TlsError::RecordOverflow { len: 16385 }
    );
    assert_eq!(
        tls_rejection(&[22, 3, 1, 0, 4, 2]),
        TlsError::NotClientHello { msg_type: 2 }
    );
    let twice = records(
        &hello_body(&[sni_ext(b"a.test"), sni_ext(b"b.test")]),
        1 << 14,
    );
    assert_eq!(
        tls_rejection(&twice),
        TlsError::ClientHello(ClientHelloError::DuplicateExtension(0))
    );
    // A record from another content type after the first fragment.
    let mut alert = records(&hello_body(&[]), 10);
    alert[15] = 21;
    assert_eq!(
        tls_rejection(&alert),
        TlsError::NotHandshake { content_type: 21 }
    );
}

#[test]
fn a_hello_too_large_for_the_limit_is_opaque_before_it_arrives() {
    let mut d = Detector::new(Config::default(), T0);
    // A ClientHello announcing 1 MiB: decided from its 9 header bytes.
    d.handle_bytes(T0, &[22, 3, 1, 0x40, 0x00, 1, 0x10, 0x00, 0x00]);
    assert_eq!(
        d.poll(),
        Detection::Decided(Protocol::Opaque(OpaqueReason::PeekLimit))
    );
}

#[test]
fn the_peek_limit_bounds_what_is_taken() {
    let config = Config {
        peek_limit: 100,
        ..Config::default()
    };
    let mut d = Detector::new(config, T0);
    let mut long = b"GET /".to_vec();
    long.resize(500, b'a');
    assert_eq!(d.handle_bytes(T0, &long), 100);
    assert_eq!(d.buffered(), &long[..100]);
    assert_eq!(
        d.poll(),
        Detection::Decided(Protocol::Opaque(OpaqueReason::PeekLimit))
    );
    assert_eq!(
        d.handle_bytes(T0, b"more"),
        0,
        "a decided detector takes nothing"
    );
}

#[test]
fn a_silent_client_times_out_at_the_deadline() {
    let config = Config {
        timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let mut d = Detector::new(config, Instant::from_secs(10));
    assert_eq!(
        d.poll(),
        Detection::NeedMore {
            deadline: Instant::from_secs(12)
        }
    );
    assert_eq!(d.poll_timeout(), Some(Instant::from_secs(12)));
    d.handle_timeout(Instant::from_millis(11_999));
    assert!(matches!(d.poll(), Detection::NeedMore { .. }));
    d.handle_timeout(Instant::from_secs(12));
    assert_eq!(
        d.poll(),
        Detection::Decided(Protocol::Opaque(OpaqueReason::Timeout))
    );
    assert_eq!(d.poll_timeout(), None);
}

#[test]
fn bytes_that_arrive_with_the_deadline_are_judged_first() {
    let config = Config {
        timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let mut d = Detector::new(config, T0);
    d.handle_bytes(Instant::from_secs(1), h2::PREFACE);
    assert_eq!(d.poll(), Detection::Decided(Protocol::Http2));
}

#[test]
fn a_server_speaking_first_makes_an_undecided_connection_opaque_at_once() {
    let mut d = Detector::new(Config::default(), T0);
    d.handle_server_bytes(Instant::from_millis(3));
    assert_eq!(
        d.poll(),
        Detection::Decided(Protocol::Opaque(OpaqueReason::ServerFirst))
    );
    // A decision already made stands.
    let mut d = Detector::new(Config::default(), T0);
    d.handle_bytes(T0, h2::PREFACE);
    d.handle_server_bytes(T0);
    assert_eq!(d.poll(), Detection::Decided(Protocol::Http2));
    // Partial client bytes do not hold it up.
    let mut d = Detector::new(Config::default(), T0);
    d.handle_bytes(T0, b"GE");
    d.handle_server_bytes(T0);
    assert_eq!(
        d.poll(),
        Detection::Decided(Protocol::Opaque(OpaqueReason::ServerFirst))
    );
}

#[test]
fn eof_before_a_decision_is_opaque() {
    assert_eq!(detect(b""), Protocol::Opaque(OpaqueReason::ClientClosed));
    assert_eq!(
        detect(b"GET / HTTP/1.1\r"),
        Protocol::Opaque(OpaqueReason::ClientClosed)
    );
    assert_eq!(
        detect(&standard_hello()[..40]),
        Protocol::Opaque(OpaqueReason::ClientClosed)
    );
}

#[test]
fn invalid_configs_are_reported_and_clamped() {
    let tiny = Config {
        peek_limit: 3,
        ..Config::default()
    };
    assert_eq!(
        tiny.validate(),
        Err(ConfigError::PeekLimitTooSmall { peek_limit: 3 })
    );
    let zero = Config {
        timeout: Duration::ZERO,
        ..Config::default()
    };
    assert_eq!(zero.validate(), Err(ConfigError::ZeroTimeout));
    assert_eq!(Config::default().validate(), Ok(()));
    // Clamped: the preface still fits, so HTTP/2 is still detected.
    assert_eq!(detect_with(tiny, h2::PREFACE, &[]), Protocol::Http2);
}

// ---------------------------------------------------------------------------
// Real rustls ClientHellos as oracles.

#[cfg(feature = "tls")]
fn rustls_client_hello(sni: &str, alpn: &[&[u8]], max_fragment: Option<usize>) -> Vec<u8> {
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.max_fragment_size = max_fragment;
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

#[cfg(feature = "tls")]
#[test]
fn a_real_rustls_client_hello_gives_its_sni_and_alpn() {
    for (sni, alpn) in [
        ("api.example.com", vec![&b"h2"[..], b"http/1.1"]),
        ("web.default.svc.cluster.local", vec![&b"needle/h2"[..]]),
        ("no-alpn.test", vec![]),
    ] {
        let bytes = rustls_client_hello(sni, &alpn, None);
        let Protocol::Tls(hello) = detect(&bytes) else {
            panic!("rustls hello not TLS")
        };
        assert_eq!(hello.dns_name(), Some(sni));
        assert_eq!(
            hello.alpn,
            alpn.iter().map(|p| p.to_vec()).collect::<Vec<_>>()
        );
        // The workspace builds rustls without TLS 1.2: it offers 1.3 alone.
        assert_eq!(hello.versions, vec![TlsVersion::TLS13]);
    }
}

#[cfg(feature = "tls")]
#[test]
fn a_real_rustls_client_hello_in_small_records() {
    // rustls splits its hello into records of at most 64 bytes here.
    let bytes = rustls_client_hello("frag.example.com", &[b"h2"], Some(64));
    assert!(bytes.len() > 64 * 3, "expected several records");
    let Protocol::Tls(hello) = detect(&bytes) else {
        panic!("fragmented rustls hello not TLS")
    };
    assert_eq!(hello.dns_name(), Some("frag.example.com"));
    assert_eq!(hello.alpn, vec![b"h2".to_vec()]);
}

// ---------------------------------------------------------------------------
// Properties.

/// Byte strings near the interesting boundaries: real-looking first packets,
/// their prefixes, and mutations of them, plus raw noise.
#[derive(Debug, Clone)]
struct FirstBytes(Vec<u8>);

fn samples() -> Vec<Vec<u8>> {
    let mut s = vec![
        b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        b"\r\n\r\nDELETE /x HTTP/1.0\r\n".to_vec(),
        b"OPTIONS * HTTP/1.1\r\n".to_vec(),
        b"PRI * HTTP/1.1\r\n".to_vec(),
        h2::PREFACE.to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04".to_vec(),
        standard_hello(),
        records(&hello_body(&[sni_ext(b"x.test"), alpn_ext(&[b"h2"])]), 7),
        records(&hello_body(&[sni_ext(b"Trailing.Dot.")]), 1 << 14),
        vec![22, 3, 1, 0x40, 0x00, 1, 0x10, 0x00, 0x00],
        b"SSH-2.0-x\r\n".to_vec(),
    ];
    #[cfg(feature = "tls")]
    s.push(rustls_client_hello("q.example", &[b"h2"], Some(50)));
    s
}

impl Arbitrary for FirstBytes {
    fn arbitrary(g: &mut Gen) -> Self {
        let samples = samples();
        let mut bytes = g.choose(&samples).cloned().unwrap_or_default();
        match u8::arbitrary(g) % 4 {
            0 => {}
            1 => bytes.truncate(usize::arbitrary(g) % (bytes.len() + 1)),
            2 => {
                for _ in 0..(u8::arbitrary(g) % 4) {
                    if !bytes.is_empty() {
                        let i = usize::arbitrary(g) % bytes.len();
                        bytes[i] = u8::arbitrary(g);
                    }
                }
            }
            _ => bytes = Vec::arbitrary(g),
        }
        FirstBytes(bytes)
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        Box::new(self.0.shrink().map(FirstBytes))
    }
}

fn quickcheck(tests: u64) -> QuickCheck {
    QuickCheck::new().tests(tests).max_tests(tests * 10)
}

#[test]
fn chunking_never_changes_the_answer() {
    fn prop(input: FirstBytes, splits: Vec<usize>, limit: u16) -> TestResult {
        let config = Config {
            peek_limit: 24 + usize::from(limit % 2048),
            ..Config::default()
        };
        let splits: Vec<usize> = splits.iter().map(|s| s % (input.0.len() + 1)).collect();
        let whole = detect_with(config, &input.0, &[]);
        let chunked = detect_with(config, &input.0, &splits);
        let byte_by_byte = detect_with(config, &input.0, &(0..input.0.len()).collect::<Vec<_>>());
        TestResult::from_bool(whole == chunked && whole == byte_by_byte)
    }
    quickcheck(2000).quickcheck(prop as fn(FirstBytes, Vec<usize>, u16) -> TestResult);
}

#[test]
fn once_decided_more_bytes_never_change_the_answer() {
    fn prop(input: FirstBytes, more: Vec<u8>) -> TestResult {
        let mut d = Detector::new(Config::default(), T0);
        d.handle_bytes(T0, &input.0);
        let Some(decided) = d.protocol().cloned() else {
            return TestResult::discard();
        };
        let buffered = d.buffered().to_vec();
        let taken = d.handle_bytes(T0, &more);
        d.handle_eof(T0);
        d.handle_timeout(Instant::MAX);
        TestResult::from_bool(
            taken == 0 && d.protocol() == Some(&decided) && d.buffered() == buffered,
        )
    }
    quickcheck(2000).quickcheck(prop as fn(FirstBytes, Vec<u8>) -> TestResult);
}

#[test]
fn the_peek_bound_always_holds() {
    fn prop(input: FirstBytes, chunks: Vec<Vec<u8>>, limit: u16) -> bool {
        let limit = 24 + usize::from(limit % 512);
        let mut d = Detector::new(
            Config {
                peek_limit: limit,
                ..Config::default()
            },
            T0,
        );
        let mut offered = input.0.clone();
        d.handle_bytes(T0, &input.0);
        for chunk in &chunks {
            d.handle_bytes(T0, chunk);
            offered.extend_from_slice(chunk);
        }
        // Never more than the limit, always a prefix of what was offered, and
        // when the limit is reached, a decision.
        d.buffered().len() <= limit
            && offered.starts_with(d.buffered())
            && (d.buffered().len() < limit || d.protocol().is_some())
    }
    quickcheck(1000).quickcheck(prop as fn(FirstBytes, Vec<Vec<u8>>, u16) -> bool);
}

// ---------------------------------------------------------------------------
// Fuzz seed corpora.

/// Writes the seed corpora under `fuzz/seeds/` from the samples above (run
/// with `cargo test -p needle-core write_fuzz_seeds -- --ignored` after
/// changing them). The detect target's inputs start with 4 control bytes.
#[test]
#[ignore = "writes files; run by hand to refresh fuzz/seeds"]
fn write_fuzz_seeds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let write = |target: &str, name: String, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    for (i, sample) in samples().iter().enumerate() {
        let mut framed = vec![0xff, 0x0f, 7, 1];
        framed.extend_from_slice(sample);
        write("detect_chunked", format!("seed-{i:02}"), &framed);
        if let Ok(Some(line)) = http1::parse_request_line(sample) {
            write("request_line", format!("seed-{i:02}"), &sample[..line.len]);
        }
        // ClientHello bodies, reassembled from their records.
        if sample.first() == Some(&22) && sample.len() > 9 {
            let mut message = Vec::new();
            let mut rest = &sample[..];
            while rest.len() >= 5 {
                let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
                let end = (5 + len).min(rest.len());
                message.extend_from_slice(&rest[5..end]);
                rest = &rest[end..];
            }
            write("client_hello", format!("seed-{i:02}"), &message[4..]);
        }
    }
    for (i, line) in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\r\nget * HTTP/1.0\r\n",
        b"GET /\r\n",
    ]
    .iter()
    .enumerate()
    {
        write("request_line", format!("seed-line-{i}"), line);
    }
}
