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
//! resolved once per connection (plus an acquire load that finds the
//! series: a connection may be labelled after it is accepted). The alternatives (plain per-connection
//! counters flushed on close and on a timer) save that atomic but need a
//! timer per connection or a registry of live connections, and a scrape
//! between flushes would see a long-lived connection stand still. A relaxed
//! add costs nanoseconds; the read or write call around it is a system call
//! of a microsecond or more, so the counting is lost in the noise (see
//! `docs/metrics.md` for the measurement), and a scrape always sees exact
//! progress.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Metrics, PeerLabels, TcpLabels};
use crate::meta::TlsStatus;

/// An accepted connection's series. Clones share them; the connection
/// counts as closed when the last clone, and the last [`Counted`] stream
/// made from one, are dropped.
///
/// A connection may be labelled later than it is accepted: an inbound
/// connection's `tls` and `client_id` are known only once its TLS handshake
/// (over the counted stream) has finished. Until [`set_tls`](Self::set_tls)
/// it counts its bytes aside; they are added to its series when it is
/// labelled, and it counts as opened then.
#[derive(Debug, Clone)]
pub struct TcpConn {
    state: Arc<ConnState>,
}

#[derive(Debug)]
struct ConnState {
    metrics: Metrics,
    labels: TcpLabels,
    series: OnceLock<Series>,
    /// Bytes moved before the connection was labelled.
    pending_read: AtomicU64,
    pending_write: AtomicU64,
}

/// The handles of a labelled connection's series.
#[derive(Debug)]
struct Series {
    close: Counter,
    open_connections: Gauge,
    read: Counter,
    write: Counter,
}

impl TcpConn {
    /// A connection labelled `labels.peer` (provisionally: `set_tls` may
    /// still change it, until it is opened).
    pub(super) fn accept(metrics: &Metrics, labels: TcpLabels) -> Self {
        TcpConn {
            state: Arc::new(ConnState {
                metrics: metrics.clone(),
                labels,
                series: OnceLock::new(),
                pending_read: AtomicU64::new(0),
                pending_write: AtomicU64::new(0),
            }),
        }
    }

    /// A connection opened now with `labels`.
    pub(super) fn open(metrics: &Metrics, labels: TcpLabels) -> Self {
        let conn = TcpConn::accept(metrics, labels);
        conn.state.open(None);
        conn
    }

    /// Labels the connection with `tls` and counts it open, if it was not
    /// yet (a connection from [`Metrics::tcp_open`] already is). Returns
    /// whether this call labelled it.
    pub fn set_tls(&self, tls: &TlsStatus) -> bool {
        let mut applied = false;
        self.state.open_with(|| {
            applied = true;
            Some(PeerLabels::new(tls))
        });
        applied
    }

    /// Counts `n` bytes read from the connection outside [`Counted`] (the
    /// bytes protocol detection read before the stream was wrapped).
    pub fn count_read(&self, n: usize) {
        self.state.add(n as u64, Direction::Read);
    }

    /// Wraps the connection's stream so that every byte read from or
    /// written to it is counted. Wrap the accepted socket itself (below any
    /// TLS), so bytes are the ones on the wire.
    pub fn wrap<S>(&self, stream: S) -> Counted<S> {
        Counted {
            stream,
            conn: self.clone(),
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

impl ConnState {
    /// Opens the series (once) with the provisional labels, or `peer`.
    fn open(&self, peer: Option<PeerLabels>) -> &Series {
        self.open_with(|| peer)
    }

    fn open_with(&self, peer: impl FnOnce() -> Option<PeerLabels>) -> &Series {
        let series = self.series.get_or_init(|| {
            let mut labels = self.labels.clone();
            if let Some(peer) = peer() {
                labels.peer = peer;
            }
            let m = &self.metrics;
            let inner = &*m.inner;
            let index = |s: &mut super::Series| s.tcp.insert(labels.clone());
            m.with(&inner.tcp_open, &labels, index, |c| {
                c.inc();
            });
            let open_connections = m.owned(&inner.tcp_open_connections, &labels, |_| false);
            open_connections.inc();
            Series {
                close: m.owned(&inner.tcp_close, &labels, |_| false),
                open_connections,
                read: m.owned(&inner.tcp_read, &labels, |_| false),
                write: m.owned(&inner.tcp_write, &labels, |_| false),
            }
        });
        self.flush(series);
        series
    }

    /// Adds the bytes counted before labelling to the series.
    fn flush(&self, series: &Series) {
        let read = self.pending_read.swap(0, Ordering::SeqCst);
        let write = self.pending_write.swap(0, Ordering::SeqCst);
        if read > 0 {
            series.read.inc_by(read);
        }
        if write > 0 {
            series.write.inc_by(write);
        }
    }

    /// Counts `n` bytes: one relaxed add once labelled. Before, aside; a
    /// count racing with the labelling flushes itself, so no byte is lost
    /// or counted twice (`swap` hands each pending byte to one flush).
    fn add(&self, n: u64, way: Direction) {
        if let Some(series) = self.series.get() {
            match way {
                Direction::Read => series.read.inc_by(n),
                Direction::Write => series.write.inc_by(n),
            };
            return;
        }
        let pending = match way {
            Direction::Read => &self.pending_read,
            Direction::Write => &self.pending_write,
        };
        pending.fetch_add(n, Ordering::SeqCst);
        if let Some(series) = self.series.get() {
            self.flush(series);
        }
    }
}

impl Drop for ConnState {
    /// Closes the series; a connection never labelled closes under its
    /// provisional labels (it is opened and closed at once).
    fn drop(&mut self) {
        let series = self.open(None);
        series.close.inc();
        series.open_connections.dec();
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

    /// The connection's series.
    pub fn conn(&self) -> &TcpConn {
        &self.conn
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
            self.conn.state.add(n as u64, Direction::Read);
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
            self.conn.state.add(n as u64, Direction::Write);
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
            self.conn.state.add(n as u64, Direction::Write);
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
