//! # Mutual TLS on the wire
//!
//! The core decides every question of a meshed connection (is this
//! certificate from our CA, is it the identity discovery promised, which
//! transport was agreed, which port does the header name); this module
//! carries the bytes:
//!
//! - [`MeshIdentity`]: the local workload's credentials, re-read from their
//!   files when they change, on a wall clock that follows `tokio::time`;
//! - [`connect`] / [`accept`]: drive the core's handshake over a socket and
//!   exchange the transport header;
//! - [`TlsStream`]: the established connection as an async byte stream;
//! - [`MaybeTls`]: a connection to an endpoint, plain or meshed, as one type.

mod handshake;
mod identity;
mod stream;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use handshake::{Accepted, Connected, MeshError, accept, connect};
pub use identity::{CredentialFiles, IdentityError, MeshIdentity, WallClock};
pub use stream::TlsStream;

/// A connection that is either plain or mutual TLS.
#[derive(Debug)]
pub enum MaybeTls<S> {
    /// Plain TCP.
    Plain(S),
    /// Mutual TLS to a meshed peer (boxed: a rustls connection is over a
    /// kilobyte, a socket a few words).
    Tls(Box<TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
