//! HTTP/2 against misbehaving peers, over loopback: a client flooding the
//! proxy with CONTINUATION, PING or SETTINGS frames (written by hand, frame
//! by frame), and an endpoint that stops answering keepalive PINGs.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::StatusCode;
use needle_io::http::{HttpConfig, HttpVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One HTTP/2 frame: 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// How a flooded connection ended, seen from the flooder.
#[derive(Debug, Default)]
struct Ending {
    /// The GOAWAY error code, if the proxy sent one.
    goaway: Option<u32>,
    /// The proxy closed (EOF or reset) within the time limit.
    closed: bool,
}

/// Reads frames from the proxy until it closes, or until `limit`.
async fn read_until_closed(mut r: tokio::net::tcp::OwnedReadHalf, limit: Duration) -> Ending {
    let mut ending = Ending::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    ending.closed = true;
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while buf.len() >= 9 {
                let len =
                    usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                if buf[3] == GOAWAY && len >= 8 {
                    ending.goaway = Some(u32::from_be_bytes(buf[13..17].try_into().unwrap()));
                }
                buf.drain(..9 + len);
            }
        }
    })
    .await;
    ending
}

/// A proxy for HTTP/2 clients in front of one `ok` endpoint.
async fn h2_proxy() -> SocketAddr {
    let b = ok_backend("ok", Duration::ZERO).await;
    proxy_to(&[b.addr], HttpConfig::default(), HttpVersion::Http2)
        .await
        .0
}

/// A well-behaved client gets its answer within a second.
async fn well_behaved_request_is_served(proxy: SocketAddr) {
    let served = tokio::time::timeout(Duration::from_secs(2), async {
        let mut client = h2_client(proxy).await;
        let res = client.send_request(get("http://svc.test/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        text(res).await
    })
    .await
    .expect("a well-behaved client was not served during the flood");
    assert_eq!(served, "ok");
}

/// CONTINUATION flood (2024, CVE-2024-27316 and friends): HEADERS without
/// END_HEADERS, then CONTINUATION frames forever, each a little more of a
/// header block the server has to keep. h2 caps the frames of one block
/// (1.25 × header list size / frame size, at least 5) and the decoded size,
/// and answers GOAWAY(ENHANCE_YOUR_CALM): the proxy holds at most one
/// bounded header block, however long the flood.
#[tokio::test]
async fn continuation_flood_closes_the_connection() {
    let proxy = h2_proxy().await;
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (r, mut w) = stream.into_split();
    let reader = tokio::spawn(read_until_closed(r, Duration::from_secs(5)));

    w.write_all(PREFACE).await.unwrap();
    w.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    // :method GET, :scheme http, :path / (HPACK static table), no END_HEADERS.
    w.write_all(&frame(HEADERS, END_STREAM, 1, &[0x82, 0x86, 0x84]))
        .await
        .unwrap();
    // Each CONTINUATION: a literal field `x-flood: aaa…` (not indexed).
    let mut field = vec![0x00, 7];
    field.extend_from_slice(b"x-flood");
    field.push(100);
    field.extend_from_slice(&[b'a'; 100]);
    let continuation = frame(CONTINUATION, 0, 1, &field);
    let mut sent = 0usize;
    let total = 100_000;
    for _ in 0..total {
        if w.write_all(&continuation).await.is_err() {
            break;
        }
        sent += 1;
    }
    let ending = reader.await.unwrap();
    println!(
        "CONTINUATION flood: the proxy closed the connection after the client had written {sent} frames ({} KiB, most of them still in socket buffers), {ending:?}",
        sent * continuation.len() / 1024
    );
    assert!(ending.closed, "the connection stayed open");
    assert_eq!(ending.goaway, Some(ENHANCE_YOUR_CALM), "{ending:?}");
    assert!(sent < total, "the proxy kept reading the whole flood");
    well_behaved_request_is_served(proxy).await;
}

/// Floods the proxy with `frame_bytes` without ever reading what it sends
/// back (with a small receive buffer, so the proxy's acknowledgements fill
/// it quickly); returns how many frames could be written before writing
/// stalled for 300 ms (the proxy stopped reading), or `None` if it never
/// did within 20 s.
async fn flood_without_reading(proxy: SocketAddr, frame_bytes: Vec<u8>) -> Option<usize> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(proxy).await.unwrap();
    stream.write_all(PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let batch: Vec<u8> = frame_bytes.repeat(64);
    let sent = Arc::new(AtomicUsize::new(0));
    let s2 = sent.clone();
    let writer = tokio::spawn(async move {
        while stream.write_all(&batch).await.is_ok() {
            s2.fetch_add(64, Ordering::SeqCst);
        }
        // Keep the connection open (and unread) until aborted.
        std::future::pending::<()>().await;
    });
    let mut last = 0;
    let mut stalled = None;
    for _ in 0..(20_000 / 300) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = sent.load(Ordering::SeqCst);
        if now > 0 && now == last {
            stalled = Some(now);
            break;
        }
        last = now;
    }
    writer.abort();
    stalled
}

/// PING flood: every PING owes an ACK. h2 keeps at most one unsent ACK and
/// stops reading the connection until it is written, so a flooder that does
/// not read its ACKs is throttled by its own receive window: the proxy's
/// memory stays bounded, its writes to that socket block, and other
/// connections are served meanwhile.
#[tokio::test]
async fn ping_flood_is_throttled_and_others_are_served() {
    let proxy = h2_proxy().await;
    let ping = frame(PING, 0, 0, b"12345678");
    let flood = tokio::spawn(flood_without_reading(proxy, ping));
    tokio::time::sleep(Duration::from_millis(300)).await;
    well_behaved_request_is_served(proxy).await;
    let sent = flood
        .await
        .unwrap()
        .expect("the proxy kept reading PINGs whose ACKs nobody read");
    println!(
        "PING flood: {sent} PINGs ({} KiB) written before the proxy stopped reading",
        sent * 17 / 1024
    );
}

/// SETTINGS flood: every SETTINGS owes an ACK too, with the same single
/// pending ACK in h2 and the same throttling.
#[tokio::test]
async fn settings_flood_is_throttled_and_others_are_served() {
    let proxy = h2_proxy().await;
    // SETTINGS_HEADER_TABLE_SIZE = 4096: a change the server must apply.
    let settings = frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]);
    let flood = tokio::spawn(flood_without_reading(proxy, settings));
    tokio::time::sleep(Duration::from_millis(300)).await;
    well_behaved_request_is_served(proxy).await;
    let sent = flood
        .await
        .unwrap()
        .expect("the proxy kept reading SETTINGS whose ACKs nobody read");
    println!(
        "SETTINGS flood: {sent} SETTINGS ({} KiB) written before the proxy stopped reading",
        sent * 15 / 1024
    );
}

/// A TCP relay to `backend` whose connections can be frozen: while frozen,
/// nothing is forwarded either way (what the proxy sends is read and
/// dropped, so its close is still seen). Counts connections and closes.
struct Relay {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    closed_by_proxy: Arc<AtomicUsize>,
}

async fn relay(backend: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed_by_proxy = Arc::new(AtomicUsize::new(0));
    let (f, a, c) = (frozen.clone(), accepted.clone(), closed_by_proxy.clone());
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let up = TcpStream::connect(backend).await.unwrap();
            let (mut dr, mut dw) = down.into_split();
            let (mut ur, mut uw) = up.into_split();
            let (f1, f2, c) = (f.clone(), f.clone(), c.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match dr.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(n) if !f1.load(Ordering::SeqCst) => {
                            if uw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match ur.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) if !f2.load(Ordering::SeqCst) => {
                            if dw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    Relay {
        addr,
        frozen,
        accepted,
        closed_by_proxy,
    }
}

/// An endpoint that stops answering (a frozen relay: the TCP connection
/// stays up, nothing comes back) is found dead by the keepalive PINGs: the
/// proxy closes that connection after `h2_keepalive_timeout`, and the next
/// request dials a fresh one instead of waiting on the dead one.
#[tokio::test]
async fn an_endpoint_that_stops_answering_pings_is_redialled() {
    let b = ok_backend("alive", Duration::ZERO).await;
    let relay = relay(b.addr).await;
    let config = HttpConfig {
        h2_keepalive_interval: Duration::from_millis(100),
        h2_keepalive_timeout: Duration::from_millis(200),
        ..HttpConfig::default()
    };
    let (proxy, _, _) = proxy_to(&[relay.addr], config, HttpVersion::Http2).await;
    let mut client = h2_client(proxy).await;
    let res = client.send_request(get("http://svc.test/")).await.unwrap();
    assert_eq!(text(res).await, "alive");
    assert_eq!(relay.accepted.load(Ordering::SeqCst), 1);

    relay.frozen.store(true, Ordering::SeqCst);
    let frozen_at = tokio::time::Instant::now();
    // The next PING is due within 100 ms; unanswered, it times out 200 ms
    // later. Wait for the proxy to close the connection.
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        while relay.closed_by_proxy.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let after = frozen_at.elapsed();
    assert!(closed.is_ok(), "the dead endpoint connection was kept");
    println!("keepalive: the silent endpoint's connection was closed {after:?} after it froze");
    assert!(
        after >= Duration::from_millis(150),
        "closed too early: {after:?}"
    );

    // New connections through the relay are not frozen.
    relay.frozen.store(false, Ordering::SeqCst);
    let res = tokio::time::timeout(
        Duration::from_secs(2),
        client.send_request(get("http://svc.test/")),
    )
    .await
    .expect("the request waited on the dead connection")
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "alive");
    assert_eq!(
        relay.accepted.load(Ordering::SeqCst),
        2,
        "the second request did not dial a fresh connection"
    );
}
