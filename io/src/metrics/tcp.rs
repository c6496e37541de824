//! Accepted connections: open and close counts, and bytes each way.
//!
//! Bytes are counted by [`Counted`], a wrapper around the accepted stream,
//! so HTTP connections are counted like opaque ones, with every byte the
//! client sent or received (heads, bodies, framing), and a tunnel that
//! outlives its HTTP connection (an upgrade) is still counted until it
//! closes.
//!
//! **Why count straight into the shared counters**: each read or write call
//! that moved bytes does one relaxed `fetch_add` on the series' counter,
//! resolved once per connection. The alternatives (plain per-connection
//! counters flushed on close and on a timer) save that atomic but need a
//! timer per connection or a registry of live connections, and a scrape
//! between flushes would see a long-lived connection stand still. A relaxed
//! add costs nanoseconds; the read or write call around it is a system call
//! of a microsecond or more, so the counting is lost in the noise (see
//! `docs/metrics.md` for the measurement), and a scrape always sees exact
//! progress.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Metrics, TcpLabels};

/// An accepted connection's series, open until this is dropped (or the
/// [`Counted`] stream it became is).
#[derive(Debug)]
pub struct TcpConn {
    close: Counter,
    open_connections: Gauge,
    read: Counter,
    write: Counter,
}

impl TcpConn {
    pub(super) fn open(metrics: &Metrics, labels: TcpLabels) -> Self {
        let inner = &*metrics.inner;
        let index = |s: &mut super::Series| s.tcp.insert(labels.clone());
        metrics.with(&inner.tcp_open, &labels, index, |c| {
            c.inc();
        });
        let open_connections = metrics.owned(&inner.tcp_open_connections, &labels, |_| false);
        open_connections.inc();
        TcpConn {
            close: metrics.owned(&inner.tcp_close, &labels, |_| false),
            open_connections,
            read: metrics.owned(&inner.tcp_read, &labels, |_| false),
            write: metrics.owned(&inner.tcp_write, &labels, |_| false),
        }
    }

    /// Counts `n` bytes read from the connection outside [`Counted`] (the
    /// bytes protocol detection read before the stream was wrapped).
    pub fn count_read(&self, n: usize) {
        self.read.inc_by(n as u64);
    }

    /// Wraps the connection's stream so that every byte read from or
    /// written to it is counted; the connection counts as closed when the
    /// wrapper is dropped.
    pub fn wrap<S>(self, stream: S) -> Counted<S> {
        Counted { stream, conn: self }
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        self.close.inc();
        self.open_connections.dec();
    }
}

/// A stream whose bytes are counted into its connection's series.
#[derive(Debug)]
pub struct Counted<S> {
    stream: S,
    conn: TcpConn,
}

impl<S> Counted<S> {
    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.conn.read.inc_by(n as u64);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.conn.write.inc_by(n as u64);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.conn.write.inc_by(n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
