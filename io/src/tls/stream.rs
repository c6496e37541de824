//! An established mutual-TLS connection as an async byte stream.
//!
//! The handshake is the core's business ([`needle_core::tls::Session`]):
//! [`super::handshake`] drives it and, once the peer is verified, takes the
//! rustls connection out of the session and wraps it here. From then on
//! nothing is decided any more; this type only moves records between the
//! transport and rustls:
//!
//! - reading: plaintext rustls already holds first, else read TLS records
//!   from the transport, process them, and try again;
//! - writing: plaintext into rustls, records out to the transport; when
//!   rustls's send buffer is full the write waits for the transport (the
//!   back-pressure a proxy needs, so a slow peer cannot grow our memory);
//! - shutdown: a close_notify, then the transport's own shutdown. TLS 1.3
//!   closes each direction on its own, so an opaque half-close keeps its
//!   meaning through the mesh.
//!
//! Records are written straight into the transport (no intermediate
//! buffer per write), through the small adapters at the end of the file.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A TLS connection over transport `S`, after the handshake.
#[derive(Debug)]
pub struct TlsStream<S> {
    io: S,
    conn: rustls::Connection,
    /// The transport reached end of stream.
    eof: bool,
    /// Our close_notify was queued.
    closing: bool,
}

impl<S> TlsStream<S> {
    /// Wraps an established `conn` over `io`.
    pub(crate) fn new(io: S, conn: rustls::Connection) -> Self {
        TlsStream {
            io,
            conn,
            eof: false,
            closing: false,
        }
    }

    /// The transport underneath.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The rustls connection (negotiated ALPN, peer certificates...).
    pub fn rustls(&self) -> &rustls::Connection {
        &self.conn
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Writes queued records to the transport until rustls has none left
    /// (`Ready(Ok)`) or the transport is full (`Pending`, waker registered).
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut writer = SyncWriter {
                io: &mut self.io,
                cx,
            };
            match self.conn.write_tls(&mut writer) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads and processes records from the transport: `Ready(Ok)` when
    /// something changed (plaintext may be available, or end of stream).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut reader = SyncReader {
            io: &mut self.io,
            cx,
        };
        match self.conn.read_tls(&mut reader) {
            Ok(0) => self.eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        }
        if let Err(e) = self.conn.process_new_packets() {
            // Send the alert rustls queued, if the transport takes it now.
            let _ = self.poll_flush_tls(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    // n == 0 with room in `buf`: the peer's close_notify.
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The transport ended without close_notify: a truncation,
                // reported as such rather than as a clean end.
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.eof {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            // Records rustls wants to send in answer (a key update) go out
            // while we wait; a full transport is no reason not to read.
            if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let n = this.conn.writer().write(data)?;
            // Push what is queued; a transport that is full applies
            // back-pressure only when rustls took nothing.
            let flushed = this.poll_flush_tls(cx)?;
            if n > 0 || data.is_empty() {
                return Poll::Ready(Ok(n));
            }
            if flushed.is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.writer().flush()?;
        std::task::ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.conn.send_close_notify();
            this.closing = true;
        }
        std::task::ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The transport as `io::Read` for rustls: `Pending` becomes `WouldBlock`
/// (the waker is registered by the poll underneath).
struct SyncReader<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for SyncReader<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// The transport as `io::Write` for rustls, likewise.
struct SyncWriter<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncWrite + Unpin> Write for SyncWriter<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}
