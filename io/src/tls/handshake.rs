//! Driving the core's handshake over a socket, and the transport header.
//!
//! [`connect`] and [`accept`] feed a [`Session`] the bytes the transport
//! delivers and the time, write what it asks to send, and wait for it to
//! decide: established (with the peer's verified identity and the agreed
//! transport) or failed (with the core's typed reason). The client then
//! names the application port it wants in the ten-byte transport header
//! ([`needle_core::transport_header`]) and the server reads it, so the
//! connection is ready for HTTP/2 or opaque bytes on both sides.

use std::time::Duration;

use needle_core::identity::SpiffeId;
use needle_core::tls::{Alpn, Established, HandshakeError, Output, Session, SetupError};
use needle_core::transport_header::{self, HeaderError, TransportHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::MeshIdentity;
use super::stream::TlsStream;

/// Why a meshed connection could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The TLS configuration could not be built.
    #[error("TLS setup: {0}")]
    Setup(#[from] SetupError),
    /// The handshake failed; the core says why (unknown CA, wrong identity,
    /// expired certificate...).
    #[error("mTLS handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The peer's first bytes after the handshake were not a transport
    /// header.
    #[error("transport header: {0}")]
    Header(#[from] HeaderError),
    /// Handshake and header took longer than allowed.
    #[error("mTLS handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The transport failed.
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
}

/// A meshed connection the client side set up.
#[derive(Debug)]
pub struct Connected<S> {
    /// The stream, past the transport header.
    pub stream: TlsStream<S>,
    /// Who the server proved to be, and the transport agreed.
    pub established: Established,
}

/// A meshed connection the server side accepted.
#[derive(Debug)]
pub struct Accepted<S> {
    /// The stream, past the transport header.
    pub stream: TlsStream<S>,
    /// Who the client proved to be, and the transport agreed.
    pub established: Established,
    /// The application port the client asked for.
    pub header: TransportHeader,
}

/// Dials the workload `target` over `io`: mutual TLS with the local
/// identity, `alpn` as transport, then the header naming `port`. Gives up
/// after `timeout`.
pub async fn connect<S>(
    io: S,
    identity: &MeshIdentity,
    target: &SpiffeId,
    alpn: Alpn,
    port: u16,
    timeout: Duration,
) -> Result<Connected<S>, MeshError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let now = identity.now();
    let deadline = now.instant.saturating_add(timeout);
    let session = Session::client(&identity.current(), target, &[alpn], now, deadline)?;
    let setup = async {
        let (mut stream, established) = drive(io, session, identity).await?;
        // Flushed at once: a server-speaks-first application is only dialled
        // by the peer once it knows the port.
        stream
            .write_all(&TransportHeader::new(port).encode())
            .await?;
        stream.flush().await?;
        Ok(Connected {
            stream,
            established,
        })
    };
    tokio::time::timeout(timeout, setup)
        .await
        .unwrap_or(Err(MeshError::Timeout(timeout)))
}

/// Answers a meshed connection addressed to the local identity over `io`
/// (whose first bytes are the ClientHello), accepting any of Needle's
/// transports, and reads its header. Gives up after `timeout`.
pub async fn accept<S>(
    io: S,
    identity: &MeshIdentity,
    timeout: Duration,
) -> Result<Accepted<S>, MeshError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let now = identity.now();
    let deadline = now.instant.saturating_add(timeout);
    let session = Session::server(&identity.current(), &Alpn::ALL, now, deadline)?;
    let setup = async {
        let (mut stream, established) = drive(io, session, identity).await?;
        // Fixed size: reading exactly the header never takes a byte of the
        // application's stream.
        let mut bytes = [0u8; transport_header::LEN];
        stream.read_exact(&mut bytes).await?;
        let header = TransportHeader::decode(&bytes)?.ok_or(HeaderError::BadMagic)?;
        Ok(Accepted {
            stream,
            established,
            header,
        })
    };
    tokio::time::timeout(timeout, setup)
        .await
        .unwrap_or(Err(MeshError::Timeout(timeout)))
}

/// Runs `session` over `io` until it is established or fails.
async fn drive<S>(
    mut io: S,
    mut session: Session,
    identity: &MeshIdentity,
) -> Result<(TlsStream<S>, Established), MeshError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Small on purpose: during the handshake the session takes every byte,
    // and a read this size can never carry more application data than
    // rustls's received-plaintext limit (16 KiB), so the session also takes
    // every byte of a read that completes the handshake. Nothing is left
    // over to hand to the stream.
    let mut buf = vec![0u8; 8 * 1024];
    let mut established = None;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(bytes) => io.write_all(&bytes).await?,
                Output::Established(e) => established = Some(e),
                // Queued alerts were transmitted just above.
                Output::Failed(e) => return Err(MeshError::Handshake(e)),
            }
        }
        if let Some(established) = established {
            io.flush().await?;
            return Ok((TlsStream::new(io, session.into_rustls()), established));
        }
        let deadline = session
            .poll_timeout()
            .map(|at| identity.wall().to_tokio(at));
        let deadline = deadline.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            read = io.read(&mut buf) => match read? {
                0 => session.handle_eof(identity.now()),
                n => {
                    let taken = session.handle_input(identity.now(), &buf[..n]);
                    debug_assert_eq!(taken, n, "a handshake read is always taken whole");
                }
            },
            () = tokio::time::sleep_until(deadline) => session.handle_timeout(identity.now()),
        }
    }
}
