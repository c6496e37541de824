//! Forwarding opaque TCP: bytes both ways, half-close, idle timeout, counts.
//!
//! Each direction is copied until its reader reaches end of stream, and
//! then the writer on the other side is shut down (a half-close), so
//! protocols that signal "done sending" with a FIN keep working through the
//! proxy. The connection ends when both directions have, when either side
//! fails, or when no byte has moved either way for the idle timeout.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How many bytes moved each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the client to the server.
    pub client_to_server: u64,
    /// From the server to the client.
    pub server_to_client: u64,
}

/// Why forwarding ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// Nothing moved either way for the idle timeout.
    #[error("idle for {timeout:?}; closed ({moved:?} moved)")]
    Idle {
        /// The idle timeout.
        timeout: Duration,
        /// What had moved until then.
        moved: Transferred,
    },
    /// Reading or writing one side failed.
    #[error("forwarding failed after {moved:?}: {source}")]
    Io {
        /// The error.
        source: io::Error,
        /// What had moved until then.
        moved: Transferred,
    },
}

/// Copies between `client` and `server` until both directions end.
pub async fn forward<C, S>(
    client: C,
    server: S,
    idle_timeout: Duration,
) -> Result<Transferred, ForwardError>
where
    C: AsyncRead + AsyncWrite + Send,
    S: AsyncRead + AsyncWrite + Send,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    // Bumped on every chunk either way; the watchdog reads it.
    let activity = AtomicU64::new(0);
    let moved = || Transferred {
        client_to_server: up.load(Ordering::Relaxed),
        server_to_client: down.load(Ordering::Relaxed),
    };

    let copy = async {
        tokio::try_join!(
            copy_then_shutdown(&mut client_read, &mut server_write, &up, &activity),
            copy_then_shutdown(&mut server_read, &mut client_write, &down, &activity),
        )
    };
    let idle = async {
        let mut seen = activity.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(idle_timeout).await;
            let now = activity.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    };
    tokio::select! {
        copied = copy => match copied {
            Ok(_) => Ok(moved()),
            Err(source) => Err(ForwardError::Io { source, moved: moved() }),
        },
        () = idle => Err(ForwardError::Idle { timeout: idle_timeout, moved: moved() }),
    }
}

/// The copy buffer's first size, per direction.
const MIN_BUF: usize = 2 * 1024;
/// The size it may grow to under bulk transfer.
const MAX_BUF: usize = 64 * 1024;

/// One direction: copy until end of stream, then half-close the writer.
async fn copy_then_shutdown<R, W>(
    reader: &mut R,
    writer: &mut W,
    count: &AtomicU64,
    activity: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Small while the connection is quiet or chatty, large when it moves
    // bulk: a read that fills the buffer doubles it, up to the maximum. A
    // thousand idle connections then hold a few MiB, not tens.
    let mut buf = vec![0u8; MIN_BUF];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            // The peer may already be gone; its close is not our error.
            let _ = writer.shutdown().await;
            return Ok(());
        }
        writer.write_all(&buf[..n]).await?;
        if n == buf.len() && buf.len() < MAX_BUF {
            buf.resize(buf.len() * 2, 0);
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        activity.fetch_add(1, Ordering::Relaxed);
    }
}
