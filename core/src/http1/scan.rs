//! The byte-level state machine behind [`Validator`](super::Validator): one
//! byte in, one state change out, and the few facts about the current
//! request that framing depends on (its version, method, `Content-Length`,
//! `Transfer-Encoding` codings, whether it may upgrade).

use super::{Config, FramingError};

/// Where in a request the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Before a request line: empty lines (CRLF) are skipped.
    Start,
    /// After the CR of an empty line before a request line.
    StartCr,
    /// Inside the request line.
    RequestLine,
    /// After the request line's CR.
    RequestLineCr,
    /// At the start of a field line, or of the empty line ending the section.
    FieldStart,
    /// After the CR of the empty line ending the head or the trailers.
    FinalCr,
    /// Inside a field name.
    Name,
    /// Inside a field value.
    Value,
    /// After a field line's CR.
    ValueCr,
    /// Inside a `Content-Length` body (`remaining` bytes left).
    Length,
    /// Inside a chunk size's hex digits.
    ChunkSize,
    /// Whitespace after a chunk size, before extensions or CRLF.
    ChunkSizeWs,
    /// Inside chunk extensions.
    ChunkExt,
    /// After a chunk-size line's CR.
    ChunkLineCr,
    /// Inside chunk data (`remaining` bytes left).
    ChunkData,
    /// After chunk data, expecting CR.
    ChunkDataCr,
    /// After chunk data's CR, expecting LF.
    ChunkDataLf,
    /// After a request that may switch protocols, until told whether it did.
    AwaitUpgrade,
    /// After an accepted switch: not HTTP any more.
    Tunnel,
    /// After a violation.
    Rejected,
}

/// What a byte completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    None,
    /// A request head, valid; `body` says whether a body follows.
    HeadEnd {
        body: bool,
    },
    /// The trailers, and so a chunked request.
    RequestEnd,
}

/// Which field a field line is, for the ones framing depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Other,
    ContentLength,
    TransferEncoding,
}

/// Where a `Content-Length` value is: `OWS 1*DIGIT OWS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digits {
    Leading,
    Inside,
    Trailing,
}

/// Where a `Transfer-Encoding` list element is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    /// Before a coding's first byte.
    Empty,
    /// Inside a coding's name.
    Name,
    /// Whitespace after a coding's name.
    AfterName,
    /// In the coding's parameters (after `;`).
    Params,
}

/// Longest field name we need to recognise: `transfer-encoding`.
const NAME_CAP: usize = 17;
/// A name longer than any we recognise.
const LONG: u8 = u8::MAX;

#[derive(Debug, Clone)]
pub(super) struct Scan {
    pub(super) state: State,
    /// Bytes left of a `Content-Length` body or of a chunk's data; while in
    /// a chunk-size line, the size read so far.
    pub(super) remaining: u64,
    /// Whether the current request may switch protocols (known at its head's end).
    pub(super) upgrade: bool,
    /// Whether the field lines being read are trailers.
    trailers: bool,
    /// Bytes of the current head or trailer section.
    section_bytes: usize,
    /// Bytes of the current chunk-size line.
    line_bytes: usize,
    chunk_digits: u8,
    /// The request line's first 8 bytes (for `CONNECT `) and last 8 (for
    /// the version).
    first: [u8; 8],
    last: [u8; 8],
    line_len: usize,
    http10: bool,
    connect: bool,
    upgrade_field: bool,
    /// The current field's name, lowercased, if short enough to matter.
    name: [u8; NAME_CAP],
    name_len: u8,
    field: Field,
    cl_seen: bool,
    cl: u64,
    cl_digits: Digits,
    te_seen: bool,
    te_chunked: u8,
    te_last_chunked: bool,
    coding: Coding,
    coding_name: [u8; 7],
    coding_len: u8,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ctl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

impl Scan {
    pub(super) fn new() -> Scan {
        Scan {
            state: State::Start,
            remaining: 0,
            upgrade: false,
            trailers: false,
            section_bytes: 0,
            line_bytes: 0,
            chunk_digits: 0,
            first: [0; 8],
            last: [0; 8],
            line_len: 0,
            http10: false,
            connect: false,
            upgrade_field: false,
            name: [0; NAME_CAP],
            name_len: 0,
            field: Field::Other,
            cl_seen: false,
            cl: 0,
            cl_digits: Digits::Leading,
            te_seen: false,
            te_chunked: 0,
            te_last_chunked: false,
            coding: Coding::Empty,
            coding_name: [0; 7],
            coding_len: 0,
        }
    }

    /// Forgets the request that ended and waits for the next one.
    pub(super) fn next_request(&mut self) {
        *self = Scan::new();
    }

    /// Whether the next byte belongs to a request head.
    pub(super) fn in_head(&self) -> bool {
        !self.trailers
            && matches!(
                self.state,
                State::Start
                    | State::StartCr
                    | State::RequestLine
                    | State::RequestLineCr
                    | State::FieldStart
                    | State::FinalCr
                    | State::Name
                    | State::Value
                    | State::ValueCr
            )
    }

    /// Takes the run of plain bytes at the start of `bytes` inside a value
    /// of a field framing does not depend on (the bulk of any head): bytes
    /// that cannot end the line or be refused, in one tight loop. Returns how
    /// many were taken; the caller passes the next byte to [`byte`](Self::byte).
    pub(super) fn plain_value_run(&mut self, bytes: &[u8], config: &Config) -> usize {
        if self.state != State::Value || self.field != Field::Other {
            return 0;
        }
        let room = config.max_head_bytes.saturating_sub(self.section_bytes);
        let limit = bytes.len().min(room);
        let n = bytes[..limit]
            .iter()
            .position(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
            .unwrap_or(limit);
        self.section_bytes += n;
        n
    }

    /// Takes one byte. Body bytes (`Length`, `ChunkData`) are skipped by the
    /// caller, never passed here.
    pub(super) fn byte(&mut self, b: u8, config: &Config) -> Result<Event, FramingError> {
        use FramingError as E;
        if self.in_head() || self.trailers {
            self.section_bytes += 1;
            if self.section_bytes > config.max_head_bytes {
                return Err(E::HeadTooLarge);
            }
        }
        match self.state {
            State::Start => match b {
                b'\r' => self.state = State::StartCr,
                b'\n' => return Err(E::BareLf),
                _ if is_ctl(b) => return Err(E::ControlByte(b)),
                _ => {
                    self.state = State::RequestLine;
                    self.request_line_byte(b);
                }
            },
            State::StartCr => match b {
                b'\n' => self.state = State::Start,
                _ => return Err(E::BareCr),
            },
            State::RequestLine => match b {
                b'\r' => self.state = State::RequestLineCr,
                b'\n' => return Err(E::BareLf),
                _ if is_ctl(b) => return Err(E::ControlByte(b)),
                _ => self.request_line_byte(b),
            },
            State::RequestLineCr => match b {
                b'\n' => {
                    self.connect = self.line_len >= 8 && &self.first == b"CONNECT ";
                    self.http10 = &self.last == b"HTTP/1.0";
                    self.state = State::FieldStart;
                }
                _ => return Err(E::BareCr),
            },
            State::FieldStart => match b {
                b'\r' => self.state = State::FinalCr,
                b'\n' => return Err(E::BareLf),
                b' ' | b'\t' => return Err(E::ObsFold),
                _ if is_ctl(b) => return Err(E::ControlByte(b)),
                _ if is_tchar(b) => {
                    self.state = State::Name;
                    self.name_len = 0;
                    self.name_byte(b);
                }
                _ => return Err(E::InvalidFieldName),
            },
            State::Name => match b {
                b':' => self.name_end()?,
                b'\n' => return Err(E::BareLf),
                _ if is_tchar(b) => self.name_byte(b),
                _ if is_ctl(b) && b != b'\t' && b != b'\r' => return Err(E::ControlByte(b)),
                _ => return Err(E::InvalidFieldName),
            },
            State::Value => match b {
                b'\r' => self.state = State::ValueCr,
                b'\n' => return Err(E::BareLf),
                b'\t' => self.value_byte(b)?,
                _ if is_ctl(b) => return Err(E::ControlByte(b)),
                _ => self.value_byte(b)?,
            },
            State::ValueCr => match b {
                b'\n' => {
                    self.value_end()?;
                    self.state = State::FieldStart;
                }
                _ => return Err(E::BareCr),
            },
            State::FinalCr => match b {
                b'\n' if self.trailers => return Ok(Event::RequestEnd),
                b'\n' => return self.head_end(),
                _ => return Err(E::BareCr),
            },
            State::ChunkSize | State::ChunkSizeWs | State::ChunkExt => {
                if b != b'\r' && b != b'\n' {
                    self.line_bytes += 1;
                    if self.line_bytes > config.max_chunk_line_bytes {
                        return Err(E::ChunkLineTooLong);
                    }
                }
                self.chunk_line_byte(b)?;
            }
            State::ChunkLineCr => match b {
                b'\n' if self.remaining == 0 => {
                    self.trailers = true;
                    self.section_bytes = 0;
                    self.state = State::FieldStart;
                }
                b'\n' => self.state = State::ChunkData,
                _ => return Err(E::BareCr),
            },
            State::ChunkDataCr => match b {
                b'\r' => self.state = State::ChunkDataLf,
                b'\n' => return Err(E::BareLf),
                _ => return Err(E::InvalidChunkEnd),
            },
            State::ChunkDataLf => match b {
                b'\n' => {
                    self.state = State::ChunkSize;
                    self.remaining = 0;
                    self.chunk_digits = 0;
                    self.line_bytes = 0;
                }
                _ => return Err(E::BareCr),
            },
            // The validator never hands these states a byte.
            State::Length
            | State::ChunkData
            | State::AwaitUpgrade
            | State::Tunnel
            | State::Rejected => {}
        }
        Ok(Event::None)
    }

    fn request_line_byte(&mut self, b: u8) {
        if self.line_len < 8 {
            self.first[self.line_len] = b;
        }
        self.line_len += 1;
        self.last.copy_within(1.., 0);
        self.last[7] = b;
    }

    fn name_byte(&mut self, b: u8) {
        let len = usize::from(self.name_len);
        if self.name_len == LONG {
            return;
        }
        if len < NAME_CAP {
            self.name[len] = b.to_ascii_lowercase();
            self.name_len += 1;
        } else {
            self.name_len = LONG;
        }
    }

    /// The colon after a field name: which field is it?
    fn name_end(&mut self) -> Result<(), FramingError> {
        self.state = State::Value;
        self.field = Field::Other;
        if self.trailers || self.name_len == LONG {
            return Ok(());
        }
        let name = &self.name[..usize::from(self.name_len)];
        match name {
            b"content-length" => {
                if self.cl_seen {
                    return Err(FramingError::MultipleContentLength);
                }
                self.cl_seen = true;
                self.cl_digits = Digits::Leading;
                self.field = Field::ContentLength;
            }
            b"transfer-encoding" => {
                self.te_seen = true;
                self.coding = Coding::Empty;
                self.coding_len = 0;
                self.field = Field::TransferEncoding;
            }
            b"upgrade" => self.upgrade_field = true,
            _ => {}
        }
        Ok(())
    }

    fn value_byte(&mut self, b: u8) -> Result<(), FramingError> {
        match self.field {
            Field::Other => Ok(()),
            Field::ContentLength => self.length_byte(b),
            Field::TransferEncoding => {
                self.coding_byte(b);
                Ok(())
            }
        }
    }

    fn length_byte(&mut self, b: u8) -> Result<(), FramingError> {
        match (b, self.cl_digits) {
            (b' ' | b'\t', Digits::Leading | Digits::Trailing) => {}
            (b' ' | b'\t', Digits::Inside) => self.cl_digits = Digits::Trailing,
            (b'0'..=b'9', Digits::Leading | Digits::Inside) => {
                self.cl_digits = Digits::Inside;
                self.cl = self
                    .cl
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(b - b'0')))
                    .ok_or(FramingError::InvalidContentLength)?;
            }
            _ => return Err(FramingError::InvalidContentLength),
        }
        Ok(())
    }

    fn coding_byte(&mut self, b: u8) {
        match b {
            b',' => self.coding_end(),
            b' ' | b'\t' => {
                if self.coding == Coding::Name {
                    self.coding = Coding::AfterName;
                }
            }
            b';' => {
                // `chunked;x` is not exactly `chunked`; a parameter with no
                // coding is no coding we know either.
                self.coding = Coding::Params;
                self.coding_len = LONG;
            }
            _ => match self.coding {
                Coding::Params => {}
                Coding::AfterName => self.coding_len = LONG,
                Coding::Empty | Coding::Name => {
                    self.coding = Coding::Name;
                    let len = usize::from(self.coding_len);
                    if len < self.coding_name.len() {
                        self.coding_name[len] = b.to_ascii_lowercase();
                        self.coding_len += 1;
                    } else {
                        self.coding_len = LONG;
                    }
                }
            },
        }
    }

    /// The end of one element of the `Transfer-Encoding` list.
    fn coding_end(&mut self) {
        if self.coding != Coding::Empty {
            let chunked = usize::from(self.coding_len) == self.coding_name.len()
                && &self.coding_name == b"chunked";
            self.te_last_chunked = chunked;
            if chunked {
                self.te_chunked = self.te_chunked.saturating_add(1);
            }
        }
        self.coding = Coding::Empty;
        self.coding_len = 0;
    }

    fn value_end(&mut self) -> Result<(), FramingError> {
        match self.field {
            Field::Other => {}
            Field::ContentLength => {
                if self.cl_digits == Digits::Leading {
                    return Err(FramingError::InvalidContentLength);
                }
            }
            Field::TransferEncoding => self.coding_end(),
        }
        self.field = Field::Other;
        Ok(())
    }

    /// The empty line after a head: decide how its body is framed.
    fn head_end(&mut self) -> Result<Event, FramingError> {
        use FramingError as E;
        self.upgrade = self.connect || (self.upgrade_field && !self.http10);
        if self.te_seen {
            if self.cl_seen {
                return Err(E::ContentLengthAndTransferEncoding);
            }
            if self.http10 {
                return Err(E::TransferEncodingInHttp10);
            }
            if !self.te_last_chunked || self.te_chunked != 1 {
                return Err(E::UnsupportedTransferEncoding);
            }
            self.state = State::ChunkSize;
            self.remaining = 0;
            self.chunk_digits = 0;
            self.line_bytes = 0;
            return Ok(Event::HeadEnd { body: true });
        }
        if self.cl_seen && self.cl > 0 {
            self.state = State::Length;
            self.remaining = self.cl;
            return Ok(Event::HeadEnd { body: true });
        }
        Ok(Event::HeadEnd { body: false })
    }

    fn chunk_line_byte(&mut self, b: u8) -> Result<(), FramingError> {
        use FramingError as E;
        match (self.state, b) {
            (_, b'\n') => return Err(E::BareLf),
            (State::ChunkSize, _) if b.is_ascii_hexdigit() => {
                let digit = match b {
                    b'0'..=b'9' => b - b'0',
                    _ => b.to_ascii_lowercase() - b'a' + 10,
                };
                self.remaining = self
                    .remaining
                    .checked_mul(16)
                    .and_then(|n| n.checked_add(u64::from(digit)))
                    .ok_or(E::InvalidChunkSize)?;
                self.chunk_digits = self.chunk_digits.saturating_add(1);
            }
            (State::ChunkSize, _) if self.chunk_digits == 0 => return Err(E::InvalidChunkSize),
            (State::ChunkSize | State::ChunkSizeWs, b' ' | b'\t') => {
                self.state = State::ChunkSizeWs;
            }
            (State::ChunkSize | State::ChunkSizeWs, b';') => self.state = State::ChunkExt,
            (State::ChunkSize | State::ChunkSizeWs | State::ChunkExt, b'\r') => {
                self.state = State::ChunkLineCr;
            }
            (State::ChunkSize | State::ChunkSizeWs, _) => return Err(E::InvalidChunkSize),
            (_, b'\t') => {}
            (_, _) if is_ctl(b) => return Err(E::ControlByte(b)),
            (_, _) => {}
        }
        Ok(())
    }
}
