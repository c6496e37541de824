//! # The network seam
//!
//! Needle's proxy code is written once, against [`Network`], and runs over
//! two implementations:
//! - [`TokioNet`]: the kernel's sockets, in production;
//! - [`TurmoilNet`] (feature `sim`): turmoil's simulated sockets, so the
//!   very same proxy stack runs inside a deterministic network simulator.
//!
//! The seam is deliberately small (bind, accept, connect, addresses,
//! and the original destination of a redirected connection): everything
//! above it is generic, and hyper, h2 and rustls already run over any
//! `AsyncRead + AsyncWrite`. Time is not part of the seam: the io layer uses
//! `tokio::time` only, which turmoil makes virtual.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

/// A way to make and accept connections.
pub trait Network: Clone + Send + Sync + 'static {
    /// A connected stream.
    type Stream: Connection;
    /// A bound listener.
    type Listener: Listener<Stream = Self::Stream>;

    /// Binds a listener to `addr` (port 0 picks a free port).
    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    /// Opens a connection to `addr`.
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// A bound listener.
pub trait Listener: Send + Sync + 'static {
    /// The streams it accepts.
    type Stream: Connection;

    /// Waits for the next connection and the address it came from.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// The address the listener is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A connected byte stream, with what the proxy needs to know about it.
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The remote address.
    fn peer_addr(&self) -> io::Result<SocketAddr>;

    /// The local address.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Disables Nagle's algorithm: a proxy forwards what it has at once.
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()>;

    /// Where the client meant to connect, when the kernel redirected the
    /// connection to us (iptables REDIRECT: `SO_ORIGINAL_DST`); `None` when
    /// the connection was not redirected or the platform cannot say.
    fn original_dst(&self) -> io::Result<Option<SocketAddr>>;
}

/// The kernel's TCP sockets, through tokio.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioNet;

impl Network for TokioNet {
    type Stream = tokio::net::TcpStream;
    type Listener = tokio::net::TcpListener;

    async fn bind(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::bind(addr).await
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        tokio::net::TcpStream::connect(addr).await
    }
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        tokio::net::TcpListener::accept(self).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }
}

impl Connection for tokio::net::TcpStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpStream::peer_addr(self)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpStream::local_addr(self)
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        tokio::net::TcpStream::set_nodelay(self, nodelay)
    }

    fn original_dst(&self) -> io::Result<Option<SocketAddr>> {
        crate::original_dst::original_dst(self)
    }
}

/// turmoil's simulated TCP: the same proxy code inside the simulator.
///
/// Must be used from inside a turmoil host (a `Sim::host` or `Sim::client`
/// closure). Simulated connections are never redirected, so
/// [`Connection::original_dst`] is always `None`.
#[cfg(feature = "sim")]
#[derive(Debug, Clone, Copy, Default)]
pub struct TurmoilNet;

#[cfg(feature = "sim")]
impl Network for TurmoilNet {
    type Stream = turmoil::net::TcpStream;
    type Listener = turmoil::net::TcpListener;

    async fn bind(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        turmoil::net::TcpListener::bind(addr).await
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        turmoil::net::TcpStream::connect(addr).await
    }
}

#[cfg(feature = "sim")]
impl Listener for turmoil::net::TcpListener {
    type Stream = turmoil::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        turmoil::net::TcpListener::accept(self).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        turmoil::net::TcpListener::local_addr(self)
    }
}

#[cfg(feature = "sim")]
impl Connection for turmoil::net::TcpStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        turmoil::net::TcpStream::peer_addr(self)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        turmoil::net::TcpStream::local_addr(self)
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        turmoil::net::TcpStream::set_nodelay(self, nodelay)
    }

    fn original_dst(&self) -> io::Result<Option<SocketAddr>> {
        Ok(None)
    }
}
