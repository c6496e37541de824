//! Recognising HTTP/2 with prior knowledge (RFC 9113 §3.4).
//!
//! A client that knows its server speaks HTTP/2 starts with a fixed 24-byte
//! preface. It begins like an HTTP/1 request line (`PRI * HTTP/2.0`), which
//! is why it is matched byte by byte alongside the HTTP/1 scanner: the two
//! part ways at the version, so they can never both match.

/// The client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the bytes can still be, are, or cannot be the preface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// A proper prefix of the preface.
    Pending,
    /// The whole preface.
    Matched,
    /// Byte `at` differs from the preface.
    Rejected {
        /// Offset of the first differing byte.
        at: usize,
    },
}

/// Compares `input` against the preface, byte by byte.
pub(crate) fn scan(input: &[u8]) -> Scan {
    let n = input.len().min(PREFACE.len());
    match input.iter().zip(PREFACE.iter()).position(|(a, b)| a != b) {
        Some(at) => Scan::Rejected { at },
        None if n == PREFACE.len() => Scan::Matched,
        None => Scan::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_and_its_prefixes() {
        assert_eq!(scan(PREFACE), Scan::Matched);
        assert_eq!(scan(&PREFACE[..23]), Scan::Pending);
        assert_eq!(scan(b""), Scan::Pending);
        let mut extra = PREFACE.to_vec();
        extra.extend_from_slice(b"\x00\x00\x00\x04");
        assert_eq!(scan(&extra), Scan::Matched);
    }

    #[test]
    fn pri_without_the_full_preface_is_rejected_where_it_differs() {
        assert_eq!(scan(b"PRI * HTTP/2.0\r\n\r\nXX"), Scan::Rejected { at: 18 });
        assert_eq!(scan(b"PRI * HTTP/1.1\r\n"), Scan::Rejected { at: 11 });
        assert_eq!(scan(b"pri"), Scan::Rejected { at: 0 });
    }
}
