//! # HTTP/1 request framing: where does each request end?
//!
//! Request smuggling needs two HTTP parsers that disagree about where a
//! request ends: a front end that frames a message one way and a back end
//! that frames it another, so the tail of one request becomes a second,
//! hidden one. The ambiguities they disagree on are few and well known
//! (RFC 9112 §6.1, §6.3, §11.2): `Content-Length` together with
//! `Transfer-Encoding`, several or malformed lengths, codings other than a
//! final `chunked`, a `Transfer-Encoding` on HTTP/1.0, obs-fold, bare LF or
//! bare CR line endings, control bytes inside fields, and chunk-size lines
//! that some parsers read differently (extensions, whitespace, overlong
//! sizes). Each of them is legal enough that *some* parser accepts it.
//!
//! The [`Validator`] follows a client's byte stream request by request, in
//! front of the HTTP server that will parse it, and refuses every one of
//! those ambiguities instead of resolving it. It does not parse requests
//! (the server does that); it only tracks boundaries: head → body (by
//! `Content-Length`, or by the chunked coding, chunk-size lines, extensions
//! and trailers) → the next head, so pipelined requests are followed too.
//!
//! ```
//! use needle_core::http1::{Config, Feed, FramingError, Validator};
//!
//! let mut v = Validator::new(Config::default());
//! assert_eq!(v.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Feed::Accepted);
//! let smuggle = b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
//! let Feed::Rejected { violation, .. } = v.feed(smuggle) else { panic!() };
//! assert_eq!(violation.error, FramingError::ContentLengthAndTransferEncoding);
//! // The offending request starts where the first one ended: everything
//! // before it may be handed to the server, nothing after.
//! assert_eq!(v.releasable(), 27);
//! ```
//!
//! ## The rules it keeps
//!
//! - **Chunking never matters.** Each byte is looked at once, in order, and
//!   the state between bytes is a handful of integers: the verdict, and the
//!   offset it names, are functions of the byte stream alone.
//! - **No allocation.** A byte scan over fixed-size state; the cost is the
//!   same per byte whatever the request.
//! - **Strict where RFC 9112 lets a recipient choose.** Every field line and
//!   the request line end in CRLF; a bare LF or a CR not followed by LF is
//!   refused, in a head, a chunk-size line or trailers. Exactly one
//!   `Content-Length` field, whose value is digits only; `Transfer-Encoding`
//!   only on HTTP/1.1, never with `Content-Length`, with `chunked` exactly
//!   once and last. No obs-fold, no control bytes (other than HTAB) in field
//!   values, field names made of token characters only.
//! - **Bounded.** A head (and the trailers) longer than
//!   [`Config::max_head_bytes`], or a chunk-size line longer than
//!   [`Config::max_chunk_line_bytes`], is refused; lengths and chunk sizes
//!   that overflow 64 bits are malformed.
//! - **A verdict is final.** After a violation every further byte is refused.
//!
//! ## Upgrades and CONNECT
//!
//! A request that asks for a protocol switch (`CONNECT`, or any `Upgrade`
//! field on HTTP/1.1: the same rule hyper uses to decide that a request
//! *may* upgrade) is followed to its end like any other, then the validator
//! stops and waits ([`Feed::AwaitingUpgrade`]): whether the bytes after it
//! are the next request or a tunnel depends on the response, which only the
//! caller sees. The caller reports it with [`Validator::resolve_upgrade`]:
//! `true` (a `101`, or a `2xx` to `CONNECT`) makes the rest of the stream a
//! tunnel that is no longer HTTP and no longer checked; `false` resumes
//! validation at the next request head.
//!
//! ## What the caller does with a verdict
//!
//! [`Validator::releasable`] names the stream offset before which bytes may
//! be handed to the server. While a head is incomplete it stays at the
//! head's first byte, so a caller that holds back the rest never lets the
//! server see any part of a head that turns out to be ambiguous; body bytes
//! are releasable as they are checked (they are streamed, not buffered).
//! After a violation it stays where the offending request began (a head
//! violation) or at the offending byte (a violation inside a chunked body,
//! whose head was already released).

mod scan;
#[cfg(test)]
mod tests;

use scan::{Scan, State};

/// How far the validator lets a request's framing go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The longest request head, request line and empty lines before it
    /// included, and the longest trailer section (default 16 KiB).
    pub max_head_bytes: usize,
    /// The longest chunk-size line, extensions included, CRLF excluded
    /// (default 4 KiB; real clients send a few hex digits).
    pub max_chunk_line_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_head_bytes: 16 * 1024,
            max_chunk_line_bytes: 4 * 1024,
        }
    }
}

/// Why a request's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// Both `Content-Length` and `Transfer-Encoding`: the classic CL.TE /
    /// TE.CL desync.
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthAndTransferEncoding,
    /// More than one `Content-Length` field (equal or not).
    #[error("more than one Content-Length field")]
    MultipleContentLength,
    /// A `Content-Length` that is not a plain decimal number fitting 64 bits
    /// (a list, a sign, spaces inside, empty).
    #[error("malformed Content-Length")]
    InvalidContentLength,
    /// `Transfer-Encoding` whose final coding is not exactly `chunked`, or
    /// that applies `chunked` more than once.
    #[error("Transfer-Encoding whose final coding is not chunked")]
    UnsupportedTransferEncoding,
    /// `Transfer-Encoding` in an HTTP/1.0 request, which cannot have it.
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    /// A field line continued on the next line (obs-fold).
    #[error("obs-fold (a field line continued on the next line)")]
    ObsFold,
    /// A line ending in LF without CR.
    #[error("bare LF line ending")]
    BareLf,
    /// A CR not followed by LF.
    #[error("bare CR")]
    BareCr,
    /// A control byte (other than HTAB) in the request line, a field or a
    /// chunk extension.
    #[error("control byte {0:#04x}")]
    ControlByte(u8),
    /// A field name with a byte that is not a token character, empty, or
    /// with whitespace before the colon.
    #[error("invalid field name")]
    InvalidFieldName,
    /// The head or the trailers are longer than the limit.
    #[error("request head or trailers too large")]
    HeadTooLarge,
    /// A chunk-size line longer than the limit.
    #[error("chunk-size line too long")]
    ChunkLineTooLong,
    /// A chunk size that is not hexadecimal, or overflows 64 bits.
    #[error("malformed chunk size")]
    InvalidChunkSize,
    /// Chunk data not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    InvalidChunkEnd,
}

/// Where in a request a violation was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// In a request head (none of it is releasable).
    Head,
    /// In a body: a chunk-size line, chunk data's CRLF or the trailers. The
    /// head was complete and valid, and may already have been forwarded.
    Body,
}

/// A refused request: what, where, and in which part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Violation {
    /// What was wrong.
    pub error: FramingError,
    /// The stream offset of the byte that proved it (for errors that need
    /// the whole head, such as CL with TE, the head's last byte).
    pub offset: u64,
    /// Whether it was in a head or a body.
    pub stage: Stage,
    /// The stream offset where the offending request began.
    pub request_start: u64,
}

/// What one [`Validator::feed`] did with its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Every byte was checked and is fine so far.
    Accepted,
    /// The first `taken` bytes complete a request that may switch protocols;
    /// the rest were not looked at. Call [`Validator::resolve_upgrade`], then
    /// feed the rest again.
    AwaitingUpgrade {
        /// Bytes of this feed that were checked.
        taken: usize,
    },
    /// The stream is refused; `taken` bytes of this feed came before the
    /// byte that proved it.
    Rejected {
        /// Bytes of this feed before the offending byte.
        taken: usize,
        /// What was wrong, and where.
        violation: Violation,
    },
}

/// Follows one client connection's HTTP/1 requests and refuses ambiguous
/// framing. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Validator {
    config: Config,
    scan: Scan,
    /// Stream offset of the next byte to be fed.
    offset: u64,
    /// Stream offset of the current request's first byte.
    request_start: u64,
    /// Request heads seen complete and valid.
    heads: u64,
    violation: Option<Violation>,
}

impl Validator {
    /// A validator at the start of a connection.
    pub fn new(config: Config) -> Validator {
        Validator {
            config,
            scan: Scan::new(),
            offset: 0,
            request_start: 0,
            heads: 0,
            violation: None,
        }
    }

    /// Checks the next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) -> Feed {
        if let Some(violation) = self.violation {
            return Feed::Rejected {
                taken: 0,
                violation,
            };
        }
        let mut i = 0;
        while i < bytes.len() {
            match self.scan.state {
                State::Tunnel => {
                    self.offset += (bytes.len() - i) as u64;
                    return Feed::Accepted;
                }
                State::AwaitUpgrade => return Feed::AwaitingUpgrade { taken: i },
                State::Length | State::ChunkData => {
                    // Body bytes are not looked at: skip them in one step.
                    let n = usize::try_from(self.scan.remaining)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - i);
                    self.scan.remaining -= n as u64;
                    self.offset += n as u64;
                    i += n;
                    if self.scan.remaining == 0 {
                        if self.scan.state == State::Length {
                            self.end_request(self.offset);
                        } else {
                            self.scan.state = State::ChunkDataCr;
                        }
                    }
                    continue;
                }
                State::Value => {
                    let n = self.scan.plain_value_run(&bytes[i..], &self.config);
                    if n > 0 {
                        self.offset += n as u64;
                        i += n;
                        continue;
                    }
                }
                _ => {}
            }
            let step = self.scan.byte(bytes[i], &self.config);
            match step {
                Ok(scan::Event::None) => {}
                Ok(scan::Event::HeadEnd { body }) => {
                    self.heads += 1;
                    if !body {
                        self.end_request(self.offset + 1);
                    }
                }
                Ok(scan::Event::RequestEnd) => self.end_request(self.offset + 1),
                Err(error) => {
                    let stage = if self.scan.in_head() {
                        Stage::Head
                    } else {
                        Stage::Body
                    };
                    let violation = Violation {
                        error,
                        offset: self.offset,
                        stage,
                        request_start: self.request_start,
                    };
                    self.violation = Some(violation);
                    self.scan.state = State::Rejected;
                    return Feed::Rejected {
                        taken: i,
                        violation,
                    };
                }
            }
            self.offset += 1;
            i += 1;
        }
        if self.scan.state == State::AwaitUpgrade {
            return Feed::AwaitingUpgrade { taken: i };
        }
        Feed::Accepted
    }

    /// The request just ended; the next one starts at `next_start`.
    fn end_request(&mut self, next_start: u64) {
        if self.scan.upgrade {
            self.scan.state = State::AwaitUpgrade;
        } else {
            self.scan.next_request();
        }
        self.request_start = next_start;
    }

    /// Reports the response to the request that asked to switch protocols:
    /// `true` if the switch happened (the rest of the stream is a tunnel,
    /// not checked), `false` if it was declined (the next bytes are a new
    /// request head). Does nothing unless [`Feed::AwaitingUpgrade`] was
    /// returned.
    pub fn resolve_upgrade(&mut self, upgraded: bool) {
        if self.scan.state != State::AwaitUpgrade {
            return;
        }
        if upgraded {
            self.scan.state = State::Tunnel;
        } else {
            self.scan.next_request();
        }
    }

    /// The stream offset before which bytes may be handed to the server:
    /// the start of an incomplete (or refused) head, the offending byte of a
    /// refused body, else everything fed so far.
    pub fn releasable(&self) -> u64 {
        match self.violation {
            Some(Violation {
                stage: Stage::Head,
                request_start,
                ..
            }) => request_start,
            Some(Violation { offset, .. }) => offset,
            None if self.scan.in_head() => self.request_start,
            None => self.offset,
        }
    }

    /// How many request heads were complete and valid so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// The violation that refused the stream, if any.
    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    /// Whether the stream became a tunnel after an accepted upgrade.
    pub fn is_tunnel(&self) -> bool {
        self.scan.state == State::Tunnel
    }

    /// Whether the validator waits for [`resolve_upgrade`](Self::resolve_upgrade).
    pub fn awaits_upgrade(&self) -> bool {
        self.scan.state == State::AwaitUpgrade
    }

    /// Stream offset of the next byte to be fed.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}
