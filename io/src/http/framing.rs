//! The HTTP/1 framing guard: the core's request-framing validator
//! (`needle_core::http1`) in front of hyper's HTTP/1 server.
//!
//! hyper resolves some framing ambiguities instead of refusing them (a
//! request with both `Content-Length` and `Transfer-Encoding` is framed as
//! chunked; a bare LF ends a line), which is safe for hyper but not a
//! promise Needle wants to depend on: the request smuggling defence is that
//! such a request never reaches any parser. [`Guarded`] wraps the client's
//! connection and feeds every byte the client sends to the validator before
//! hyper may read it:
//!
//! - bytes of requests that passed, and body bytes as they are checked, are
//!   handed to hyper unchanged (directly in hyper's read buffer: no copy
//!   unless a head spans reads);
//! - an incomplete head is held back until it is complete and valid, so
//!   hyper never sees a byte of a head that turns out to be refused;
//! - after a refused head, hyper answers the requests before it, then reads
//!   EOF (only once every one of them has been answered: a read that returns
//!   EOF while hyper is still answering makes it drop the response), goes
//!   idle and shuts the connection down; [`Guarded`]'s `poll_shutdown` first
//!   writes a canned `400` (or `431` for an oversized head) with
//!   `needle-error` and `connection: close`. hyper calls `poll_shutdown`
//!   when it closes an idle connection (`Dispatcher::poll_inner`, hyper 1.x),
//!   which `refused_head_after_pipelined_requests_gets_a_400` pins;
//! - a refused chunked body (its head is already forwarded) fails the read:
//!   hyper aborts the forwarded request, so the endpoint never receives a
//!   complete body, and the connection is closed;
//! - a request that may switch protocols (`CONNECT`, `Upgrade`) pauses
//!   reading after its end until the proxy's response to it is known
//!   ([`Signals::responded`]): a `101` (or `2xx` to `CONNECT`) makes the rest
//!   a tunnel that passes unchecked, anything else resumes validation.
//!
//! The service tells the guard two things through [`Signals`]: the status
//! of each response (to resolve upgrades) and when each response body is
//! done (so EOF is reported only once hyper is idle).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use needle_core::http1::{Config, Feed, FramingError, Stage, Validator};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::errors::ProxyError;

/// How much is read from the client at once when a head spans reads.
const READ_CHUNK: usize = 8 * 1024;

/// What the service tells the guard.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    state: Mutex<SignalState>,
}

#[derive(Debug, Default)]
struct SignalState {
    /// The last request (counted from 1) whose response status is known,
    /// and whether that response switched protocols.
    responded: u64,
    upgraded: bool,
    /// Response bodies finished (or dropped) by hyper.
    answered: u64,
    /// The guard's reader, waiting for one of the above.
    waker: Option<Waker>,
}

impl Signals {
    fn lock(&self) -> std::sync::MutexGuard<'_, SignalState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Request number `request` (from 1) is answered with a response that
    /// does (`upgraded`) or does not switch protocols.
    pub(crate) fn responded(&self, request: u64, upgraded: bool) {
        let mut s = self.lock();
        s.responded = request;
        s.upgraded = upgraded;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    fn answered_one(&self) {
        let mut s = self.lock();
        s.answered += 1;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// Whether `request`'s response is known, and if it upgraded.
    fn decision(&self, request: u64, cx: &Context<'_>) -> Option<bool> {
        let mut s = self.lock();
        if s.responded >= request {
            return Some(s.upgraded);
        }
        s.waker = Some(cx.waker().clone());
        None
    }

    /// Whether `requests` responses have been written out.
    fn all_answered(&self, requests: u64, cx: &Context<'_>) -> bool {
        let mut s = self.lock();
        if s.answered >= requests {
            return true;
        }
        s.waker = Some(cx.waker().clone());
        false
    }
}

/// A response body that tells [`Signals`] when hyper is done with it.
#[derive(Debug)]
pub(crate) struct Answered<B> {
    body: B,
    signals: Arc<Signals>,
}

impl<B> Answered<B> {
    pub(crate) fn new(body: B, signals: Arc<Signals>) -> Self {
        Answered { body, signals }
    }
}

impl<B> Drop for Answered<B> {
    fn drop(&mut self) {
        self.signals.answered_one();
    }
}

impl<B: Body + Unpin> Body for Answered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client connection whose bytes reach hyper only once the framing
/// validator has passed them. See the [module documentation](self).
#[derive(Debug)]
pub(crate) struct Guarded<I: AsyncWrite + Unpin> {
    io: I,
    validator: Validator,
    /// Bytes read from the client and not handed to hyper yet: a head in
    /// progress, or what followed a request that may upgrade.
    held: Vec<u8>,
    /// Stream offset of `held[0]`.
    base: u64,
    /// `held[..fed]` has been fed to the validator.
    fed: usize,
    eof: bool,
    signals: Arc<Signals>,
    /// The answer to a refused head and how much of it is written.
    canned: Option<(Bytes, usize)>,
    /// EOF was reported to hyper because of a refused head: hyper has
    /// answered everything before it, so the canned answer comes next.
    refused_eof: bool,
}

impl<I: AsyncWrite + Unpin> Guarded<I> {
    /// Guards `io`; heads and trailers longer than `max_head_bytes` are
    /// refused with 431.
    pub(crate) fn new(io: I, max_head_bytes: usize, signals: Arc<Signals>) -> Self {
        let config = Config {
            max_head_bytes,
            ..Config::default()
        };
        Guarded {
            io,
            validator: Validator::new(config),
            held: Vec::new(),
            base: 0,
            fed: 0,
            eof: false,
            signals,
            canned: None,
            refused_eof: false,
        }
    }

    /// Feeds held bytes not fed yet; true if the validator took any.
    fn feed_held(&mut self) -> bool {
        if self.fed >= self.held.len() || self.validator.violation().is_some() {
            return false;
        }
        let before = self.fed;
        match self.validator.feed(&self.held[self.fed..]) {
            Feed::Accepted => self.fed = self.held.len(),
            Feed::AwaitingUpgrade { taken } => self.fed += taken,
            Feed::Rejected { taken, .. } => {
                self.fed += taken;
                self.refused();
            }
        }
        self.fed > before || self.validator.violation().is_some()
    }

    /// How many held bytes may go to hyper.
    fn releasable_held(&self) -> usize {
        let releasable = self.validator.releasable().saturating_sub(self.base);
        usize::try_from(releasable)
            .unwrap_or(usize::MAX)
            .min(self.fed)
    }

    /// The validator refused the stream: prepare the answer.
    fn refused(&mut self) {
        let Some(violation) = self.validator.violation().copied() else {
            return;
        };
        tracing::debug!(error = %violation.error, offset = violation.offset, "refused HTTP/1 request framing");
        if violation.stage == Stage::Head && self.canned.is_none() {
            self.canned = Some((canned_response(violation.error), 0));
        }
    }
}

/// The response to a refused head, written by the guard itself: hyper never
/// saw the request.
fn canned_response(error: FramingError) -> Bytes {
    let (status, reason) = match error {
        FramingError::HeadTooLarge => (
            "431 Request Header Fields Too Large",
            ProxyError::HeadersTooLarge.reason(),
        ),
        _ => ("400 Bad Request", ProxyError::InvalidFraming.reason()),
    };
    let body = format!("{error}\n");
    Bytes::from(format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n{}: {reason}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        super::errors::NEEDLE_ERROR,
        body.len()
    ))
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // 1. Hand over what the validator has passed.
            let ready = this.releasable_held().min(out.remaining());
            if ready > 0 {
                out.put_slice(&this.held[..ready]);
                this.held.drain(..ready);
                this.base += ready as u64;
                this.fed -= ready;
                return Poll::Ready(Ok(()));
            }
            // 2. Check what is held and not checked yet.
            if this.feed_held() {
                continue;
            }
            // 3. Refused: EOF once hyper answered everything before (a head),
            //    or fail the body being read.
            if let Some(violation) = this.validator.violation() {
                return match violation.stage {
                    Stage::Head => {
                        if this.signals.all_answered(this.validator.heads(), cx) {
                            this.refused_eof = true;
                            Poll::Ready(Ok(()))
                        } else {
                            Poll::Pending
                        }
                    }
                    _ => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        violation.error,
                    ))),
                };
            }
            // 4. A request that may upgrade: wait for its response.
            if this.validator.awaits_upgrade() {
                match this.signals.decision(this.validator.heads(), cx) {
                    Some(upgraded) => {
                        this.validator.resolve_upgrade(upgraded);
                        continue;
                    }
                    None => return Poll::Pending,
                }
            }
            if this.eof {
                // A partial head at EOF is dropped: hyper sees a clean EOF.
                return Poll::Ready(Ok(()));
            }
            // 5. Read more. With nothing held, straight into hyper's buffer.
            if this.held.is_empty() && out.remaining() > 0 {
                let before = out.filled().len();
                match Pin::new(&mut this.io).poll_read(cx, out) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                let n = out.filled().len() - before;
                if n == 0 {
                    this.eof = true;
                    continue;
                }
                let fresh = &out.filled()[before..];
                let taken = match this.validator.feed(fresh) {
                    Feed::Accepted => n,
                    Feed::AwaitingUpgrade { taken } => taken,
                    Feed::Rejected { taken, .. } => {
                        this.refused();
                        taken
                    }
                };
                let released =
                    usize::try_from(this.validator.releasable().saturating_sub(this.base))
                        .unwrap_or(usize::MAX)
                        .min(taken);
                this.held.extend_from_slice(&fresh[released..]);
                this.fed = taken - released;
                this.base += released as u64;
                out.set_filled(before + released);
                if released > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let start = this.held.len();
            this.held.resize(start + READ_CHUNK, 0);
            let mut buf = ReadBuf::new(&mut this.held[start..]);
            let polled = Pin::new(&mut this.io).poll_read(cx, &mut buf);
            let n = buf.filled().len();
            this.held.truncate(start + n);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if n == 0 => this.eof = true,
                Poll::Ready(Ok(())) => {}
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> Guarded<I> {
    /// Writes what is left of the canned answer.
    fn poll_write_canned(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((canned, written)) = &mut self.canned {
            while *written < canned.len() {
                let n =
                    std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &canned[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// hyper does not always shut the connection down: after a *declined*
/// upgrade it keeps the upgrade pending and, once the connection is done,
/// hands the io to an upgrade nobody waits for, which drops it. The canned
/// answer is then written here, without waiting: a few hundred bytes into a
/// socket whose send buffer is empty by then (hyper flushed everything
/// before going idle), so in practice it all goes; if it does not, the
/// client sees the connection close, which is still a refusal.
impl<I: AsyncWrite + Unpin> Drop for Guarded<I> {
    fn drop(&mut self) {
        if self.refused_eof {
            let mut cx = Context::from_waker(Waker::noop());
            let _ = self.poll_write_canned(&mut cx);
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.refused_eof {
            std::task::ready!(this.poll_write_canned(cx))?;
            std::task::ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
