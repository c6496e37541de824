//! Just enough gRPC for the simulator's unary calls, written out rather
//! than pulled from tonic (its codecs spawn nothing, but its channel does,
//! on its own executor): the length-prefixed message framing, the status
//! headers, and a response body that ends with trailers.
//!
//! A unary call is a `POST` of one framed message with `content-type:
//! application/grpc` and `te: trailers`; a successful answer is HTTP 200
//! with one framed message and `grpc-status: 0` in the trailers; a failed
//! one is *trailers-only*: HTTP 200 and `grpc-status` in the head, no body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame};

/// The content type of gRPC requests and answers.
pub const CONTENT_TYPE: &str = "application/grpc";
/// `OK`.
pub const OK: u32 = 0;
/// `DEADLINE_EXCEEDED`: Needle's answer when the deadline passed.
pub const DEADLINE_EXCEEDED: u32 = 4;
/// `UNAVAILABLE`: transient; what failing servers answer, and Needle's
/// answer for connection failures and missing or ejected endpoints.
pub const UNAVAILABLE: u32 = 14;

/// One message, length-prefixed: a compression flag (0), a big-endian
/// 32-bit length, the bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).expect("a small message"));
    out.put_slice(message);
    out.freeze()
}

/// The one uncompressed message of a unary body, or what is wrong with it.
pub fn unframe(body: &[u8]) -> Result<&[u8], String> {
    let Some((head, rest)) = body.split_first_chunk::<5>() else {
        return Err(format!("{} bytes, no message prefix", body.len()));
    };
    if head[0] != 0 {
        return Err(format!("compression flag {}", head[0]));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if rest.len() != len {
        return Err(format!("prefix says {len} bytes, {} follow", rest.len()));
    }
    Ok(rest)
}

/// Whether `headers` say gRPC.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(CONTENT_TYPE))
}

/// The `grpc-status` in `headers` (a head or trailers), if any.
pub fn status_of(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A response body: some data, then trailers.
#[derive(Debug)]
pub struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl WithTrailers {
    /// `data`, then `trailers`.
    pub fn new(data: Bytes, trailers: HeaderMap) -> Self {
        WithTrailers {
            data: Some(data),
            trailers: Some(trailers),
        }
    }
}

impl Body for WithTrailers {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips_and_rejects_bad_prefixes() {
        let framed = frame(b"hello");
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(unframe(&framed), Ok(&b"hello"[..]));
        assert!(unframe(&framed[..7]).is_err(), "short");
        assert!(unframe(b"\x01\0\0\0\0").is_err(), "compressed");
        assert!(unframe(b"").is_err(), "empty");
    }
}
