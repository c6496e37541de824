//! turmoil's sockets, counted: the sidecar's network seam with a tally of
//! the connections it accepts and dials, so oracles can check that every
//! connection was closed and that no connection went where it must not.
//!
//! The wrapper only counts; every byte and every decision is
//! `needle_io::net::TurmoilNet`'s, so the proxy under test is the
//! production stack.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use needle_io::net::{Connection, Listener, Network, TurmoilNet};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::trace::now;

/// What the sidecar's sockets did.
#[derive(Clone, Debug, Default)]
pub struct ConnCounts {
    /// Client connections accepted and not yet closed.
    pub accepted_open: u64,
    /// Client connections accepted in total.
    pub accepted_total: u64,
    /// Connections dialled and not yet closed, by destination.
    pub dialled_open: BTreeMap<SocketAddr, u64>,
    /// Every successful dial: when, and to where.
    pub dials: Vec<(std::time::Duration, SocketAddr)>,
}

/// [`TurmoilNet`] with connection counting.
#[derive(Clone, Debug, Default)]
pub struct CountingNet {
    counts: Arc<Mutex<ConnCounts>>,
}

impl CountingNet {
    /// A counting network; the counts are shared with its clones.
    pub fn new() -> Self {
        CountingNet::default()
    }

    /// A snapshot of the counts.
    pub fn counts(&self) -> ConnCounts {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnCounts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Network for CountingNet {
    type Stream = Counted;
    type Listener = CountingListener;

    async fn bind(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        Ok(CountingListener {
            inner: TurmoilNet.bind(addr).await?,
            net: self.clone(),
        })
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        let inner = TurmoilNet.connect(addr).await?;
        let mut counts = self.lock();
        *counts.dialled_open.entry(addr).or_default() += 1;
        counts.dials.push((now(), addr));
        drop(counts);
        Ok(Counted {
            inner,
            net: self.clone(),
            side: Side::Dialled(addr),
        })
    }
}

/// A listener whose accepted connections are counted.
pub struct CountingListener {
    inner: turmoil::net::TcpListener,
    net: CountingNet,
}

impl std::fmt::Debug for CountingListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingListener").finish_non_exhaustive()
    }
}

impl Listener for CountingListener {
    type Stream = Counted;

    async fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (inner, peer) = Listener::accept(&self.inner).await?;
        let mut counts = self.net.lock();
        counts.accepted_open += 1;
        counts.accepted_total += 1;
        drop(counts);
        let stream = Counted {
            inner,
            net: self.net.clone(),
            side: Side::Accepted,
        };
        Ok((stream, peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Listener::local_addr(&self.inner)
    }
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Accepted,
    Dialled(SocketAddr),
}

/// A counted connection: uncounted when dropped (closed).
#[derive(Debug)]
pub struct Counted {
    inner: turmoil::net::TcpStream,
    net: CountingNet,
    side: Side,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = self.net.lock();
        match self.side {
            Side::Accepted => counts.accepted_open = counts.accepted_open.saturating_sub(1),
            Side::Dialled(addr) => {
                if let Some(open) = counts.dialled_open.get_mut(&addr) {
                    *open = open.saturating_sub(1);
                }
            }
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connection for Counted {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Connection::peer_addr(&self.inner)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Connection::local_addr(&self.inner)
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        Connection::set_nodelay(&self.inner, nodelay)
    }

    fn original_dst(&self) -> io::Result<Option<SocketAddr>> {
        Ok(None)
    }
}
