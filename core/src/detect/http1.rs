//! Recognising an HTTP/1.x request line (RFC 9112 §3).
//!
//! ```text
//! request-line = method SP request-target SP HTTP-version CRLF
//! ```
//!
//! The scanner walks the bytes once, in order, and decides at the first byte
//! that proves or disproves the grammar: that is what makes its answer
//! independent of how the bytes were chunked, and what lets a non-HTTP
//! protocol be turned away at its first byte.
//!
//! Where RFC 9112 lets a recipient be lenient, we are strict, because the
//! bytes we accept here are handed to an HTTP server and a proxy that reads a
//! request differently from the server behind it is how request smuggling
//! starts:
//! - exactly one SP between the three parts (no runs of whitespace, no tabs);
//! - the line ends in CRLF; a bare LF is refused;
//! - the version is `HTTP/1.0` or `HTTP/1.1`, spelled exactly; HTTP/0.9
//!   (no version at all) is refused.
//!
//! Two leniencies, both shared with the HTTP server that will parse the
//! request afterwards (hyper, through httparse):
//! - empty lines (CRLF) before the request line are skipped (§2.2);
//! - the request-target may hold obs-text (bytes 0x80–0xFF) besides visible
//!   ASCII, as some clients send raw UTF-8 paths.
//!
//! Methods are case-sensitive tokens: `get` is a valid (unknown) method, not
//! `GET`, and is reported as [`Method::Extension`].

use core::fmt;

/// The method of a recognised request line.
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `CONNECT`
    Connect,
    /// `OPTIONS`
    Options,
    /// `TRACE`
    Trace,
    /// `PATCH`
    Patch,
    /// Any other token, exactly as sent (methods are case-sensitive).
    Extension(String),
}

impl Method {
    fn from_token(token: &[u8]) -> Method {
        match token {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            // A token is ASCII by construction, so this never replaces a byte.
            other => Method::Extension(String::from_utf8_lossy(other).into_owned()),
        }
    }

    /// The method as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Extension(token) => token,
        }
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The HTTP version named by a request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Version {
    /// `HTTP/1.0`
    Http10,
    /// `HTTP/1.1`
    Http11,
}

/// A request line that was proven valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine<'a> {
    /// The method token, exactly as sent.
    pub method: &'a [u8],
    /// The request-target (origin, absolute, authority or asterisk form).
    pub target: &'a [u8],
    /// The protocol version.
    pub version: Version,
    /// How many bytes, including skipped empty lines and the final CRLF, the
    /// request line took.
    pub len: usize,
}

/// Why bytes are not an HTTP/1.x request line. Each names the first byte
/// that broke the grammar; `at` is its offset from the start of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Http1Error {
    /// A method must be a token (RFC 9110 §5.6.2) followed by one SP.
    #[error("byte {byte:#04x} at offset {at} cannot be part of a method token")]
    InvalidMethod {
        /// The offending byte.
        byte: u8,
        /// Its offset.
        at: usize,
    },
    /// The request-target must be visible ASCII or obs-text, followed by one SP.
    #[error("byte {byte:#04x} at offset {at} cannot be part of a request-target")]
    InvalidTarget {
        /// The offending byte.
        byte: u8,
        /// Its offset.
        at: usize,
    },
    /// The target ended the line without a version: HTTP/0.9, which we refuse.
    #[error("request line has no HTTP version (HTTP/0.9 is not supported) at offset {at}")]
    MissingVersion {
        /// Offset of the line terminator.
        at: usize,
    },
    /// The version is not `HTTP/1.0` or `HTTP/1.1`.
    #[error("unsupported or malformed HTTP version at offset {at}")]
    InvalidVersion {
        /// Offset of the first byte that differs.
        at: usize,
    },
    /// A line ended in LF without CR, or CR was not followed by LF.
    #[error("line terminator at offset {at} is not CRLF")]
    BadLineEnding {
        /// Offset of the offending byte.
        at: usize,
    },
}

/// `tchar` from RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes allowed in a request-target: visible ASCII and obs-text.
fn is_target_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7e | 0x80..=0xff)
}

const VERSION_PREFIX: &[u8] = b"HTTP/1.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the method; empty lines may come first.
    LineStart,
    /// After a CR of an empty leading line.
    LeadingLf,
    /// Inside the method token.
    Method,
    /// At the first byte of the target.
    TargetStart,
    /// Inside the target.
    Target,
    /// Matching `HTTP/1.` at this index.
    Version(usize),
    /// At the minor version digit.
    Minor,
    /// Expecting the CR that ends the line.
    Cr,
    /// Expecting the LF that ends the line.
    Lf,
}

/// What the scanner knows after the bytes it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// Everything seen so far can still begin a request line.
    Pending,
    /// A complete, valid request line.
    Matched,
    /// The bytes cannot be a request line.
    Rejected(Http1Error),
}

/// An incremental request-line scanner. It is handed the whole prefix seen so
/// far each time and resumes where it stopped, so each byte is looked at once.
#[derive(Debug, Clone)]
pub(crate) struct Scanner {
    state: State,
    pos: usize,
    method_start: usize,
    method_end: usize,
    target_end: usize,
    version: Version,
    result: Scan,
}

impl Scanner {
    pub(crate) fn new() -> Self {
        Scanner {
            state: State::LineStart,
            pos: 0,
            method_start: 0,
            method_end: 0,
            target_end: 0,
            version: Version::Http11,
            result: Scan::Pending,
        }
    }

    /// Looks at the bytes of `input` not yet seen. `input` must extend the
    /// input of earlier calls.
    pub(crate) fn advance(&mut self, input: &[u8]) -> Scan {
        while self.result == Scan::Pending {
            let Some(&b) = input.get(self.pos) else { break };
            let at = self.pos;
            self.pos += 1;
            self.state = match self.step(b, at) {
                Ok(Some(next)) => next,
                Ok(None) => {
                    self.result = Scan::Matched;
                    break;
                }
                Err(e) => {
                    self.result = Scan::Rejected(e);
                    break;
                }
            };
        }
        self.result
    }

    /// One byte of the grammar. `Ok(None)` means the line is complete.
    fn step(&mut self, b: u8, at: usize) -> Result<Option<State>, Http1Error> {
        let next = match self.state {
            State::LineStart if b == b'\r' => State::LeadingLf,
            State::LineStart if b == b'\n' => return Err(Http1Error::BadLineEnding { at }),
            State::LineStart | State::Method if is_tchar(b) => {
                if self.state == State::LineStart {
                    self.method_start = at;
                }
                State::Method
            }
            State::LineStart => return Err(Http1Error::InvalidMethod { byte: b, at }),
            State::LeadingLf if b == b'\n' => State::LineStart,
            State::LeadingLf => return Err(Http1Error::BadLineEnding { at }),
            State::Method if b == b' ' => {
                self.method_end = at;
                State::TargetStart
            }
            State::Method => return Err(Http1Error::InvalidMethod { byte: b, at }),
            State::TargetStart | State::Target if is_target_byte(b) => State::Target,
            State::Target if b == b' ' => {
                self.target_end = at;
                State::Version(0)
            }
            State::Target if b == b'\r' || b == b'\n' => {
                return Err(Http1Error::MissingVersion { at });
            }
            State::TargetStart | State::Target => {
                return Err(Http1Error::InvalidTarget { byte: b, at });
            }
            State::Version(i) if VERSION_PREFIX.get(i) == Some(&b) => {
                if i + 1 == VERSION_PREFIX.len() {
                    State::Minor
                } else {
                    State::Version(i + 1)
                }
            }
            State::Version(_) => return Err(Http1Error::InvalidVersion { at }),
            State::Minor => {
                self.version = match b {
                    b'0' => Version::Http10,
                    b'1' => Version::Http11,
                    _ => return Err(Http1Error::InvalidVersion { at }),
                };
                State::Cr
            }
            State::Cr if b == b'\r' => State::Lf,
            State::Cr if b == b'\n' => return Err(Http1Error::BadLineEnding { at }),
            State::Cr => return Err(Http1Error::InvalidVersion { at }),
            State::Lf if b == b'\n' => return Ok(None),
            State::Lf => return Err(Http1Error::BadLineEnding { at }),
        };
        Ok(Some(next))
    }

    /// The request line, once [`Scan::Matched`]; `input` is the same bytes
    /// the scanner was advanced over.
    pub(crate) fn request_line<'a>(&self, input: &'a [u8]) -> Option<RequestLine<'a>> {
        if self.result != Scan::Matched {
            return None;
        }
        Some(RequestLine {
            method: input.get(self.method_start..self.method_end)?,
            target: input.get(self.method_end + 1..self.target_end)?,
            version: self.version,
            len: self.pos,
        })
    }

    /// The method, once [`Scan::Matched`].
    pub(crate) fn method(&self, input: &[u8]) -> Option<(Method, Version)> {
        let line = self.request_line(input)?;
        Some((Method::from_token(line.method), line.version))
    }
}

/// Parses the request line at the start of `input`.
///
/// Returns `Ok(None)` when every byte so far could still begin a request line
/// but the line is not complete, and an error at the first byte that cannot.
pub fn parse_request_line(input: &[u8]) -> Result<Option<RequestLine<'_>>, Http1Error> {
    let mut scanner = Scanner::new();
    match scanner.advance(input) {
        Scan::Pending => Ok(None),
        Scan::Matched => Ok(scanner.request_line(input)),
        Scan::Rejected(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(input: &[u8]) -> RequestLine<'_> {
        parse_request_line(input).unwrap().unwrap()
    }

    #[test]
    fn origin_absolute_authority_and_asterisk_forms() {
        let l = line(b"GET /a?b=c HTTP/1.1\r\n");
        assert_eq!(
            (l.method, l.target, l.version),
            (&b"GET"[..], &b"/a?b=c"[..], Version::Http11)
        );
        assert_eq!(l.len, 21);
        assert_eq!(
            line(b"GET http://x.test/ HTTP/1.0\r\n").version,
            Version::Http10
        );
        assert_eq!(
            line(b"CONNECT x.test:443 HTTP/1.1\r\n").target,
            b"x.test:443"
        );
        assert_eq!(line(b"OPTIONS * HTTP/1.1\r\n").target, b"*");
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let l = line(b"\r\n\r\nPUT / HTTP/1.1\r\n");
        assert_eq!(l.method, b"PUT");
        assert_eq!(l.len, 20);
    }

    #[test]
    fn incomplete_lines_are_pending() {
        for prefix in [
            &b""[..],
            b"G",
            b"GET",
            b"GET ",
            b"GET /",
            b"GET / HTTP/1.",
            b"GET / HTTP/1.1\r",
        ] {
            assert_eq!(parse_request_line(prefix), Ok(None), "{prefix:?}");
        }
    }

    #[test]
    fn grammar_violations_name_the_first_bad_byte() {
        use Http1Error::*;
        let cases: &[(&[u8], Http1Error)] = &[
            (b"\x16\x03\x01", InvalidMethod { byte: 0x16, at: 0 }),
            (b"GET  / HTTP/1.1\r\n", InvalidTarget { byte: b' ', at: 4 }),
            (b"GET\t/ HTTP/1.1\r\n", InvalidMethod { byte: b'\t', at: 3 }),
            (b"GET /\r\n", MissingVersion { at: 5 }),
            (b"GET / HTTP/2.0\r\n", InvalidVersion { at: 11 }),
            (b"GET / HTTP/1.2\r\n", InvalidVersion { at: 13 }),
            (b"GET / http/1.1\r\n", InvalidVersion { at: 6 }),
            (b"GET / HTTP/1.1\n", BadLineEnding { at: 14 }),
            (b"GET / HTTP/1.1\rX", BadLineEnding { at: 15 }),
            (b"GET / HTTP/1.1 \r\n", InvalidVersion { at: 14 }),
            (b"\n", BadLineEnding { at: 0 }),
            (
                b"GET /\x7f HTTP/1.1\r\n",
                InvalidTarget { byte: 0x7f, at: 5 },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_request_line(input),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn methods_are_case_sensitive_tokens() {
        let mut s = Scanner::new();
        let input = b"get / HTTP/1.1\r\n";
        assert_eq!(s.advance(input), Scan::Matched);
        let (method, _) = s.method(input).unwrap();
        assert_eq!(method, Method::Extension("get".into()));
        assert_eq!(method.as_str(), "get");
    }
}
