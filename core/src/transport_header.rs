//! # The transport header between meshed proxies
//!
//! One inbound port (4143) serves every application port of a pod. When the
//! connection was redirected by iptables, the inbound proxy could learn the
//! port from `SO_ORIGINAL_DST`; when the client dialled the peer's inbound
//! port directly (discovery named it), that information is gone. So the
//! client proxy states it: right after the mutual-TLS handshake, before any
//! application byte, it sends a fixed ten-byte header naming the target port:
//!
//! ```text
//!  0               6     7     8           10
//!  +---------------+-----+-----+-----------+
//!  | "needle"      | 0x00| 0x01| port (BE) |   then the stream: HTTP/2
//!  +---------------+-----+-----+-----------+   (`needle/h2`) or opaque bytes
//!                   NUL   version               (`needle/opaque`)
//! ```
//!
//! The header travels inside the TLS stream, so only a peer that proved a
//! mesh identity can send it. It is fixed-size on purpose: the decoder needs
//! no allocation and no state, and decides from the bytes buffered so far,
//! so its answer cannot depend on how they were chunked.

use core::fmt;

/// The magic and version that open every header.
pub const MAGIC: [u8; 8] = *b"needle\x00\x01";

/// The header's length on the wire.
pub const LEN: usize = MAGIC.len() + 2;

/// A decoded transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TransportHeader {
    /// The application port the connection is for (never 0).
    pub port: u16,
}

/// Why bytes are not a transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The bytes do not start with Needle's magic and version: not a Needle
    /// peer, or a version this proxy does not speak.
    #[error("not a Needle transport header (bad magic or version)")]
    BadMagic,
    /// Port 0 names no application.
    #[error("transport header names port 0")]
    ZeroPort,
}

impl TransportHeader {
    /// The header for `port`.
    pub const fn new(port: u16) -> Self {
        TransportHeader { port }
    }

    /// The header's bytes.
    pub fn encode(self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..MAGIC.len()].copy_from_slice(&MAGIC);
        out[MAGIC.len()..].copy_from_slice(&self.port.to_be_bytes());
        out
    }

    /// Decodes a header from the start of `buf`, the bytes received so far.
    ///
    /// - `Ok(Some(header))`: the first [`LEN`] bytes are a header; the
    ///   stream continues after them;
    /// - `Ok(None)`: every byte so far fits a header; read more;
    /// - `Err(_)`: this is no header, whatever follows.
    pub fn decode(buf: &[u8]) -> Result<Option<TransportHeader>, HeaderError> {
        let magic_seen = buf.len().min(MAGIC.len());
        if buf[..magic_seen] != MAGIC[..magic_seen] {
            return Err(HeaderError::BadMagic);
        }
        let Some(port) = buf.get(MAGIC.len()..LEN) else {
            return Ok(None);
        };
        match u16::from_be_bytes([port[0], port[1]]) {
            0 => Err(HeaderError::ZeroPort),
            port => Ok(Some(TransportHeader { port })),
        }
    }
}

impl fmt::Display for TransportHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "needle transport header (port {})", self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{TestResult, quickcheck};

    #[test]
    fn encodes_the_documented_layout() {
        let bytes = TransportHeader::new(8080).encode();
        assert_eq!(&bytes, b"needle\x00\x01\x1f\x90");
    }

    #[test]
    fn refuses_what_is_not_a_header() {
        assert_eq!(
            TransportHeader::decode(b"GET / HTTP/1.1\r\n"),
            Err(HeaderError::BadMagic)
        );
        // Another version of the header.
        assert_eq!(
            TransportHeader::decode(b"needle\x00\x02\x00\x50"),
            Err(HeaderError::BadMagic)
        );
        assert_eq!(
            TransportHeader::decode(b"needle\x00\x01\x00\x00"),
            Err(HeaderError::ZeroPort)
        );
        // A prefix is undecided, not wrong.
        assert_eq!(TransportHeader::decode(b""), Ok(None));
        assert_eq!(TransportHeader::decode(b"need"), Ok(None));
        assert_eq!(TransportHeader::decode(b"needle\x00\x01\x1f"), Ok(None));
    }

    quickcheck! {
        /// Every port but 0 round-trips, and bytes after the header are not
        /// its business.
        fn round_trips(port: u16, tail: Vec<u8>) -> TestResult {
            if port == 0 {
                return TestResult::discard();
            }
            let mut bytes = TransportHeader::new(port).encode().to_vec();
            bytes.extend_from_slice(&tail);
            TestResult::from_bool(
                TransportHeader::decode(&bytes) == Ok(Some(TransportHeader::new(port))),
            )
        }

        /// Growing the buffer never turns a decision around: once decided
        /// (header or error), more bytes give the same answer, so chunking
        /// cannot change the outcome.
        fn decisions_are_final(bytes: Vec<u8>) -> bool {
            let mut decided = None;
            for end in 0..=bytes.len() {
                let now = TransportHeader::decode(&bytes[..end]);
                match (decided, now) {
                    (None, Ok(None)) => {}
                    (None, d) => decided = Some(d),
                    (Some(d), now) => {
                        if d != now {
                            return false;
                        }
                    }
                }
            }
            true
        }
    }
}
