//! Recognising a TLS ClientHello and reading what a proxy needs from it.
//!
//! A TLS client speaks first with a ClientHello handshake message inside one
//! or more handshake records (RFC 8446 §5.1, §4.1.2). The proxy needs three
//! things from it, before any key is exchanged: the server name (SNI, RFC
//! 6066 §3) to tell a meshed connection from TLS meant for the application,
//! the ALPN protocols (RFC 7301), and the versions offered.
//!
//! Two layers, as on the wire:
//! - [`Scanner`] walks the record layer byte by byte: every record must be a
//!   handshake record (type 22) of a TLS-family version, 1 to 2^14 bytes
//!   long, and the first handshake message must be a ClientHello. It rejects
//!   at the first byte that breaks those rules and, once the whole message is
//!   present (however many records it spans), hands it to the parser.
//! - [`parse_client_hello`] reads the message body strictly: every length
//!   must fit its container exactly, the three extensions we read must not be
//!   repeated, and lists the RFCs require to be non-empty must be.
//!
//! What is deliberately *not* TLS here (the connection is then opaque and
//! reaches the application unchanged, where its own TLS server decides):
//! SSLv2-style hellos (the first byte has its high bit set), records of
//! length 0 (RFC 8446 §5.1 forbids empty handshake fragments), a first
//! handshake message that is not a ClientHello, and any malformed hello.

use core::fmt;

/// Record content type of handshake records.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The largest record payload a client may send (RFC 8446 §5.1).
const MAX_RECORD_LEN: usize = 1 << 14;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// A TLS protocol version as it appears on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TlsVersion(pub u16);

impl TlsVersion {
    /// SSL 3.0
    pub const SSL3: TlsVersion = TlsVersion(0x0300);
    /// TLS 1.0
    pub const TLS10: TlsVersion = TlsVersion(0x0301);
    /// TLS 1.1
    pub const TLS11: TlsVersion = TlsVersion(0x0302);
    /// TLS 1.2
    pub const TLS12: TlsVersion = TlsVersion(0x0303);
    /// TLS 1.3
    pub const TLS13: TlsVersion = TlsVersion(0x0304);

    /// A GREASE value (RFC 8701): clients offer these to keep servers honest;
    /// they never name a real version.
    pub fn is_grease(self) -> bool {
        self.0 & 0x0f0f == 0x0a0a && (self.0 >> 8) == (self.0 & 0xff)
    }
}

impl fmt::Debug for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TlsVersion::SSL3 => f.write_str("SSLv3"),
            TlsVersion::TLS10 => f.write_str("TLSv1.0"),
            TlsVersion::TLS11 => f.write_str("TLSv1.1"),
            TlsVersion::TLS12 => f.write_str("TLSv1.2"),
            TlsVersion::TLS13 => f.write_str("TLSv1.3"),
            v if v.is_grease() => write!(f, "GREASE({:#06x})", v.0),
            v => write!(f, "Unknown({:#06x})", v.0),
        }
    }
}

/// The server name a ClientHello asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerName {
    /// A DNS host name, lower-cased and without a trailing dot, so that it
    /// compares equal to the same name however the client spelled it.
    Dns(String),
    /// The extension carried a host name that is not a usable DNS name. TLS
    /// servers ignore or refuse such names; the proxy treats the connection
    /// as not addressed to it.
    Invalid(InvalidServerName),
}

/// Why a host name in the SNI extension is not a usable DNS name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidServerName {
    /// A byte outside ASCII (RFC 6066 requires A-labels).
    #[error("server name is not ASCII")]
    NotAscii,
    /// An ASCII byte that no host name label may hold.
    #[error("server name holds the character {0:?}")]
    BadCharacter(char),
    /// An empty label (`a..b`, a leading dot, or only a dot).
    #[error("server name has an empty label")]
    EmptyLabel,
    /// A label longer than 63 bytes.
    #[error("server name has a label longer than 63 bytes")]
    LabelTooLong,
    /// A name longer than 253 bytes.
    #[error("server name is longer than 253 bytes")]
    TooLong,
    /// An IPv4 literal, which RFC 6066 does not permit in SNI.
    #[error("server name is an IP address literal")]
    IpLiteral,
}

/// What the proxy learns from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientHello {
    /// The SNI host name, if the extension was sent.
    pub server_name: Option<ServerName>,
    /// The ALPN protocol names in the client's order; empty when the
    /// extension was not sent (an empty list is malformed, so "absent" is the
    /// only way to have none).
    pub alpn: Vec<Vec<u8>>,
    /// The versions offered: the `supported_versions` list when present
    /// (GREASE included, in order), else the legacy version field.
    pub versions: Vec<TlsVersion>,
}

impl ClientHello {
    /// The SNI host name, if it is a valid DNS name.
    pub fn dns_name(&self) -> Option<&str> {
        match &self.server_name {
            Some(ServerName::Dns(name)) => Some(name),
            _ => None,
        }
    }

    /// Whether the client offers `version`.
    pub fn offers(&self, version: TlsVersion) -> bool {
        self.versions.contains(&version)
    }
}

/// Why a ClientHello message body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientHelloError {
    /// A field's length runs past the end of its container.
    #[error("ClientHello is truncated in {0}")]
    Truncated(&'static str),
    /// A container holds bytes after its last field.
    #[error("ClientHello has trailing bytes after {0}")]
    TrailingBytes(&'static str),
    /// A length or value outside what the RFCs permit.
    #[error("ClientHello has an invalid {0}")]
    Invalid(&'static str),
    /// An extension we read appears twice (RFC 8446 §4.2 forbids it).
    #[error("ClientHello repeats extension {0}")]
    DuplicateExtension(u16),
}

/// Why the bytes are not a TLS ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A record that is not a handshake record (for the first record: the
    /// bytes are not TLS at all; SSLv2-style hellos land here too).
    #[error("record content type {content_type} is not handshake (22)")]
    NotHandshake {
        /// The content type byte.
        content_type: u8,
    },
    /// A record version whose major byte is not 3.
    #[error("record version major byte {major} is not 3")]
    RecordVersion {
        /// The major version byte.
        major: u8,
    },
    /// A handshake record of length 0 (RFC 8446 §5.1 forbids it).
    #[error("empty handshake record")]
    EmptyRecord,
    /// A record longer than 2^14 bytes.
    #[error("record of {len} bytes exceeds 16384")]
    RecordOverflow {
        /// The declared length.
        len: usize,
    },
    /// The first handshake message is not a ClientHello.
    #[error("handshake message type {msg_type} is not ClientHello (1)")]
    NotClientHello {
        /// The message type byte.
        msg_type: u8,
    },
    /// The ClientHello itself is malformed.
    #[error(transparent)]
    ClientHello(#[from] ClientHelloError),
}

/// What the record scanner knows after the bytes it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// Everything seen so far can still begin a ClientHello.
    Pending,
    /// A complete ClientHello was parsed; see [`Scanner::take_hello`].
    Matched,
    /// The ClientHello announces more bytes than the peek limit allows.
    TooLarge,
    /// The bytes are not a ClientHello.
    Rejected(TlsError),
}

/// An incremental record-layer scanner. Like the HTTP/1 scanner it is handed
/// the whole prefix each time and looks at each byte once, in order, so it
/// rejects at the first bad byte whatever the chunking.
#[derive(Debug, Clone)]
pub(crate) struct Scanner {
    /// The next input byte to look at.
    pos: usize,
    /// Where the current record's header starts, while inside a header.
    header_at: Option<usize>,
    /// Payload bytes left in the current record.
    payload_left: usize,
    /// Handshake bytes seen across records.
    hs_seen: usize,
    /// The handshake header, filled as it arrives.
    hs_header: [u8; HANDSHAKE_HEADER_LEN],
    /// The handshake message's total length, once its header is complete.
    hs_total: Option<usize>,
    /// The most input bytes the caller will ever supply.
    limit: usize,
    result: Scan,
    hello: Option<ClientHello>,
}

impl Scanner {
    pub(crate) fn new(limit: usize) -> Self {
        Scanner {
            pos: 0,
            header_at: Some(0),
            payload_left: 0,
            hs_seen: 0,
            hs_header: [0; HANDSHAKE_HEADER_LEN],
            hs_total: None,
            limit,
            result: Scan::Pending,
            hello: None,
        }
    }

    /// Looks at the bytes of `input` not yet seen. `input` must extend the
    /// input of earlier calls.
    pub(crate) fn advance(&mut self, input: &[u8]) -> Scan {
        while self.result == Scan::Pending && self.pos < input.len() {
            self.result = match self.header_at {
                Some(start) => self.header_byte(input, start),
                None => self.payload_bytes(input),
            };
        }
        self.result
    }

    /// The parsed ClientHello, once [`Scan::Matched`].
    pub(crate) fn take_hello(&mut self) -> Option<ClientHello> {
        self.hello.take()
    }

    fn header_byte(&mut self, input: &[u8], start: usize) -> Scan {
        let at = self.pos;
        let Some(&b) = input.get(at) else {
            return Scan::Pending;
        };
        self.pos += 1;
        match at - start {
            0 if b != HANDSHAKE => Scan::Rejected(TlsError::NotHandshake { content_type: b }),
            1 if b != 3 => Scan::Rejected(TlsError::RecordVersion { major: b }),
            4 => {
                let hi = input.get(at - 1).copied().unwrap_or(0);
                let len = usize::from(u16::from_be_bytes([hi, b]));
                if len == 0 {
                    return Scan::Rejected(TlsError::EmptyRecord);
                }
                if len > MAX_RECORD_LEN {
                    return Scan::Rejected(TlsError::RecordOverflow { len });
                }
                self.header_at = None;
                self.payload_left = len;
                Scan::Pending
            }
            _ => Scan::Pending,
        }
    }

    fn payload_bytes(&mut self, input: &[u8]) -> Scan {
        if self.hs_seen < HANDSHAKE_HEADER_LEN {
            // The handshake header, byte by byte: its first byte can reject.
            let Some(&b) = input.get(self.pos) else {
                return Scan::Pending;
            };
            if self.hs_seen == 0 && b != CLIENT_HELLO {
                return Scan::Rejected(TlsError::NotClientHello { msg_type: b });
            }
            self.hs_header[self.hs_seen] = b;
            self.consume(1);
            if self.hs_seen == HANDSHAKE_HEADER_LEN {
                let [_, a, b, c] = self.hs_header;
                let body = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                let total = HANDSHAKE_HEADER_LEN + body;
                // Even if every remaining byte came in this record, the
                // message cannot end within the limit: give up now.
                if self.pos + body > self.limit {
                    return Scan::TooLarge;
                }
                self.hs_total = Some(total);
            }
        } else {
            // Inside the body: nothing to check until it is all here.
            let total = self.hs_total.unwrap_or(usize::MAX);
            let n = self
                .payload_left
                .min(total - self.hs_seen)
                .min(input.len() - self.pos);
            self.consume(n);
        }
        if self.hs_total == Some(self.hs_seen) {
            return self.complete(input);
        }
        Scan::Pending
    }

    /// Moves `n` payload bytes forward, entering the next record's header
    /// when this record ends.
    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.hs_seen += n;
        self.payload_left -= n;
        if self.payload_left == 0 {
            self.header_at = Some(self.pos);
        }
    }

    /// Reassembles the handshake message from its records and parses it.
    fn complete(&mut self, input: &[u8]) -> Scan {
        let total = self.hs_seen;
        let mut message = Vec::with_capacity(total);
        let mut record = 0;
        while message.len() < total {
            let Some(header) = input.get(record..record + RECORD_HEADER_LEN) else {
                break;
            };
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let start = record + RECORD_HEADER_LEN;
            let take = len.min(total - message.len());
            let Some(payload) = input.get(start..start + take) else {
                break;
            };
            message.extend_from_slice(payload);
            record = start + len;
        }
        let body = message.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default();
        match parse_client_hello(body) {
            Ok(hello) => {
                self.hello = Some(hello);
                Scan::Matched
            }
            Err(e) => Scan::Rejected(e.into()),
        }
    }
}

/// A bounds-checked reader over a length-prefixed TLS structure.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ClientHelloError> {
        if n > self.rest.len() {
            return Err(ClientHelloError::Truncated(field));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ClientHelloError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ClientHelloError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, field: &'static str) -> Result<Reader<'a>, ClientHelloError> {
        let n = usize::from(self.u8(field)?);
        Ok(Reader {
            rest: self.take(n, field)?,
        })
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, field: &'static str) -> Result<Reader<'a>, ClientHelloError> {
        let n = usize::from(self.u16(field)?);
        Ok(Reader {
            rest: self.take(n, field)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn finish(&self, field: &'static str) -> Result<(), ClientHelloError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ClientHelloError::TrailingBytes(field))
        }
    }
}

/// Parses a ClientHello handshake message body (after the 4-byte handshake
/// header), as defined in RFC 8446 §4.1.2 (and RFC 5246 §7.4.1.2, whose
/// hellos may omit the extensions block).
pub fn parse_client_hello(body: &[u8]) -> Result<ClientHello, ClientHelloError> {
    use ClientHelloError::{DuplicateExtension, Invalid};

    let mut r = Reader { rest: body };
    let legacy_version = TlsVersion(r.u16("legacy_version")?);
    r.take(32, "random")?;
    if r.vec8("legacy_session_id")?.rest.len() > 32 {
        return Err(Invalid("legacy_session_id length"));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.rest.len() % 2 != 0 {
        return Err(Invalid("cipher_suites length"));
    }
    if r.vec8("legacy_compression_methods")?.is_empty() {
        return Err(Invalid("legacy_compression_methods length"));
    }

    let mut hello = ClientHello {
        server_name: None,
        alpn: Vec::new(),
        versions: Vec::new(),
    };
    let (mut seen_sni, mut seen_alpn, mut seen_versions) = (false, false, false);
    if !r.is_empty() {
        let mut extensions = r.vec16("extensions")?;
        r.finish("extensions")?;
        while !extensions.is_empty() {
            let kind = extensions.u16("extension type")?;
            let mut data = extensions.vec16("extension data")?;
            let seen = match kind {
                EXT_SERVER_NAME => &mut seen_sni,
                EXT_ALPN => &mut seen_alpn,
                EXT_SUPPORTED_VERSIONS => &mut seen_versions,
                _ => continue,
            };
            if std::mem::replace(seen, true) {
                return Err(DuplicateExtension(kind));
            }
            match kind {
                EXT_SERVER_NAME => hello.server_name = parse_server_name(&mut data)?,
                EXT_ALPN => hello.alpn = parse_alpn(&mut data)?,
                _ => hello.versions = parse_supported_versions(&mut data)?,
            }
        }
    }
    r.finish("ClientHello")?;
    if !seen_versions {
        hello.versions.push(legacy_version);
    }
    Ok(hello)
}

/// RFC 6066 §3: a non-empty list of (name_type, name); one host_name at most.
fn parse_server_name(data: &mut Reader<'_>) -> Result<Option<ServerName>, ClientHelloError> {
    let mut list = data.vec16("server_name_list")?;
    data.finish("server_name extension")?;
    if list.is_empty() {
        return Err(ClientHelloError::Invalid("empty server_name_list"));
    }
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8("server name type")?;
        let name = list.vec16("server name")?.rest;
        if name_type != 0 {
            continue; // Unknown name types are skipped, as RFC 6066 allows.
        }
        if host.is_some() {
            return Err(ClientHelloError::Invalid(
                "repeated host_name in server_name_list",
            ));
        }
        if name.is_empty() {
            return Err(ClientHelloError::Invalid("empty host_name"));
        }
        host = Some(match normalize_host_name(name) {
            Ok(name) => ServerName::Dns(name),
            Err(e) => ServerName::Invalid(e),
        });
    }
    Ok(host)
}

/// Lower-cases a host name and strips one trailing dot, refusing anything
/// that is not a DNS name. Underscores are allowed: they appear in real
/// service names even though RFC 952 forbids them in host names.
fn normalize_host_name(raw: &[u8]) -> Result<String, InvalidServerName> {
    if !raw.is_ascii() {
        return Err(InvalidServerName::NotAscii);
    }
    let name = raw.strip_suffix(b".").unwrap_or(raw);
    if name.len() > 253 {
        return Err(InvalidServerName::TooLong);
    }
    let mut all_numeric = true;
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(InvalidServerName::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(InvalidServerName::LabelTooLong);
        }
        if let Some(&bad) = label
            .iter()
            .find(|&&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(InvalidServerName::BadCharacter(char::from(bad)));
        }
        all_numeric &= label.iter().all(u8::is_ascii_digit);
    }
    if all_numeric {
        return Err(InvalidServerName::IpLiteral);
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// RFC 7301 §3.1: a non-empty list of non-empty protocol names.
fn parse_alpn(data: &mut Reader<'_>) -> Result<Vec<Vec<u8>>, ClientHelloError> {
    let mut list = data.vec16("protocol_name_list")?;
    data.finish("ALPN extension")?;
    if list.is_empty() {
        return Err(ClientHelloError::Invalid("empty ALPN protocol_name_list"));
    }
    let mut names = Vec::new();
    while !list.is_empty() {
        let name = list.vec8("protocol name")?.rest;
        if name.is_empty() {
            return Err(ClientHelloError::Invalid("empty ALPN protocol name"));
        }
        names.push(name.to_vec());
    }
    Ok(names)
}

/// RFC 8446 §4.2.1: a non-empty list of two-byte versions.
fn parse_supported_versions(data: &mut Reader<'_>) -> Result<Vec<TlsVersion>, ClientHelloError> {
    let mut list = data.vec8("supported_versions")?;
    data.finish("supported_versions extension")?;
    if list.is_empty() || list.rest.len() % 2 != 0 {
        return Err(ClientHelloError::Invalid("supported_versions length"));
    }
    let mut versions = Vec::with_capacity(list.rest.len() / 2);
    while !list.is_empty() {
        versions.push(TlsVersion(list.u16("supported version")?));
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grease_versions_are_recognised() {
        assert!(TlsVersion(0x0a0a).is_grease());
        assert!(TlsVersion(0xfafa).is_grease());
        assert!(!TlsVersion(0x0a1a).is_grease());
        assert!(!TlsVersion::TLS13.is_grease());
        assert_eq!(format!("{:?}", TlsVersion::TLS13), "TLSv1.3");
    }

    #[test]
    fn host_names_are_normalised_or_refused() {
        assert_eq!(
            normalize_host_name(b"Api.Example.COM."),
            Ok("api.example.com".into())
        );
        assert_eq!(normalize_host_name(b"svc_a.ns"), Ok("svc_a.ns".into()));
        assert_eq!(
            normalize_host_name(b"caf\xc3\xa9.test"),
            Err(InvalidServerName::NotAscii)
        );
        assert_eq!(
            normalize_host_name(b"a..b"),
            Err(InvalidServerName::EmptyLabel)
        );
        assert_eq!(
            normalize_host_name(b"."),
            Err(InvalidServerName::EmptyLabel)
        );
        assert_eq!(
            normalize_host_name(b"a.b.."),
            Err(InvalidServerName::EmptyLabel)
        );
        assert_eq!(
            normalize_host_name(b"10.0.0.1"),
            Err(InvalidServerName::IpLiteral)
        );
        assert_eq!(
            normalize_host_name(b"a b"),
            Err(InvalidServerName::BadCharacter(' '))
        );
        assert_eq!(
            normalize_host_name(&[b'a'; 64]),
            Err(InvalidServerName::LabelTooLong)
        );
    }
}
