//! Request bodies that can be sent more than once.
//!
//! A retry must send the same body again, but waiting for the whole body
//! before the first attempt would add latency and deadlock streaming calls
//! (a gRPC client stream waits for the server's replies). So the body is
//! *teed*: the first attempt streams it while a copy is kept, up to the
//! replay limit; a later attempt replays the copy and then continues with
//! whatever the client has not sent yet. Once the copy would exceed the
//! limit it is dropped and the request can no longer be retried
//! ([`ReplayBody::overflowed`]); bounded memory is the point.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::errors::BoxError;

/// The body type Needle hands to hyper in both directions.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body with no bytes.
pub(crate) fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// A body of exactly these bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Any body, boxed.
pub(crate) fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

#[derive(Debug)]
struct Shared<B> {
    /// The client's body, still being read; `None` once it ended.
    source: Option<B>,
    /// Data frames read so far, while they fit the limit.
    chunks: Vec<Bytes>,
    buffered: usize,
    limit: usize,
    /// The copy outgrew the limit and was dropped.
    overflowed: bool,
    /// Some of the client's body has been handed to an attempt.
    started: bool,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// The client's body as hyper first saw it.
    hint: SizeHint,
    empty: bool,
}

/// One attempt's view of a teed request body. Attempts must be sequential:
/// the next one is made only after the previous one's body was dropped.
#[derive(Debug)]
pub(crate) struct ReplayBody<B = Incoming> {
    shared: Arc<Mutex<Shared<B>>>,
    /// Next chunk of `chunks` to replay.
    pos: usize,
    trailers_sent: bool,
    /// This view started replaying after the copy was dropped: it cannot
    /// produce the body.
    broken: bool,
    /// This view was reading the client's body when the copy overflowed: it
    /// goes on passing frames through.
    passthrough: bool,
}

impl<B: Body> ReplayBody<B> {
    /// Wraps the client's body, keeping up to `limit` bytes for replay.
    pub(crate) fn new(body: B, limit: usize) -> Self {
        let hint = body.size_hint();
        let empty = body.is_end_stream();
        let shared = Shared {
            source: (!empty).then_some(body),
            chunks: Vec::new(),
            buffered: 0,
            limit,
            overflowed: hint.lower() > limit as u64,
            started: false,
            trailers: None,
            ended: empty,
            hint,
            empty,
        };
        ReplayBody {
            shared: Arc::new(Mutex::new(shared)),
            pos: 0,
            trailers_sent: false,
            broken: false,
            passthrough: false,
        }
    }

    /// A fresh view for another attempt, replaying from the first byte.
    /// Broken (it errors when polled) if part of the body was sent and not
    /// kept.
    pub(crate) fn replay(&self) -> Self {
        let shared = self.lock();
        let overflowed = shared.overflowed && shared.started;
        drop(shared);
        ReplayBody {
            shared: self.shared.clone(),
            pos: 0,
            trailers_sent: false,
            broken: overflowed,
            passthrough: false,
        }
    }

    /// Whether the body outgrew the replay limit (or announced a length
    /// over it): another attempt could not send it.
    pub(crate) fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared<B>> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Replaying a body whose copy was dropped was attempted.
#[derive(Debug, thiserror::Error)]
#[error("request body outgrew the replay buffer and cannot be sent again")]
pub(crate) struct NotReplayable;

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.broken {
            return Poll::Ready(Some(Err(Box::new(NotReplayable))));
        }
        let mut shared = this.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(chunk) = shared.chunks.get(this.pos) {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if shared.ended {
            if this.trailers_sent {
                return Poll::Ready(None);
            }
            this.trailers_sent = true;
            return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        if shared.overflowed && this.pos > 0 && !this.passthrough {
            // This view replayed a copy that has since been dropped (a
            // concurrent overflow): it cannot go on consistently.
            this.broken = true;
            return Poll::Ready(Some(Err(Box::new(NotReplayable))));
        }
        let Some(source) = shared.source.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(source).poll_frame(cx);
        if polled.is_ready() {
            shared.started = true;
        }
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.source = None;
                shared.ended = true;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // The client's body broke: no attempt can send it.
                shared.source = None;
                shared.overflowed = true;
                this.broken = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if !shared.overflowed {
                        if shared.buffered + data.len() <= shared.limit {
                            shared.buffered += data.len();
                            shared.chunks.push(data.clone());
                            this.pos += 1;
                        } else {
                            this.passthrough = true;
                            shared.overflowed = true;
                            shared.chunks = Vec::new();
                            shared.buffered = 0;
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        shared.trailers = Some(trailers.clone());
                        shared.ended = true;
                        shared.source = None;
                        this.trailers_sent = true;
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    // Unknown frame kinds are not forwarded.
                    Err(_) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.lock();
        shared.empty || (shared.ended && self.pos >= shared.chunks.len() && self.trailers_sent)
    }

    fn size_hint(&self) -> SizeHint {
        self.lock().hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::convert::Infallible;

    /// A client body of fixed frames.
    #[derive(Debug)]
    struct Frames {
        frames: VecDeque<Frame<Bytes>>,
        hint: SizeHint,
    }

    fn frames(data: &[&'static str], trailers: bool) -> Frames {
        let mut frames: VecDeque<_> = data
            .iter()
            .map(|d| Frame::data(Bytes::from_static(d.as_bytes())))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            frames.push_back(Frame::trailers(t));
        }
        Frames {
            frames,
            hint: SizeHint::default(),
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.frames.pop_front().map(Ok))
        }
        fn size_hint(&self) -> SizeHint {
            self.hint
        }
    }

    /// Reads a view to its end: data and whether trailers came.
    async fn read_all(mut body: ReplayBody<Frames>) -> Result<(String, bool), BoxError> {
        let mut data = String::new();
        let mut trailers = false;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Some(d) = frame.data_ref() {
                data.push_str(std::str::from_utf8(d).unwrap_or("?"));
            } else if frame.is_trailers() {
                trailers = true;
            }
        }
        Ok((data, trailers))
    }

    #[tokio::test]
    async fn a_retry_replays_the_same_bytes_and_trailers() {
        let body = ReplayBody::new(frames(&["ab", "cd"], true), 64);
        assert_eq!(
            read_all(body.replay()).await.unwrap(),
            ("abcd".into(), true)
        );
        assert_eq!(
            read_all(body.replay()).await.unwrap(),
            ("abcd".into(), true)
        );
        assert!(!body.overflowed());
    }

    #[tokio::test]
    async fn a_retry_after_a_partial_read_replays_then_continues_from_the_client() {
        let body = ReplayBody::new(frames(&["one,", "two,", "three"], false), 64);
        let mut first = body.replay();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "one,");
        drop(first); // the attempt failed with the body half sent
        assert_eq!(
            read_all(body.replay()).await.unwrap(),
            ("one,two,three".into(), false)
        );
    }

    #[tokio::test]
    async fn a_body_outgrowing_the_limit_streams_once_and_cannot_be_replayed() {
        let body = ReplayBody::new(frames(&["abc", "def", "ghi"], true), 4);
        assert_eq!(
            read_all(body.replay()).await.unwrap(),
            ("abcdefghi".into(), true)
        );
        assert!(body.overflowed());
        assert!(read_all(body.replay()).await.is_err());
    }

    #[tokio::test]
    async fn an_announced_length_over_the_limit_is_known_unreplayable_at_once() {
        let mut client = frames(&["abcdef"], false);
        client.hint = SizeHint::with_exact(6);
        let body = ReplayBody::new(client, 4);
        assert!(body.overflowed(), "known before a byte is read");
        // The first attempt still streams it whole.
        assert_eq!(
            read_all(body.replay()).await.unwrap(),
            ("abcdef".into(), false)
        );
        assert_eq!(body.size_hint().exact(), Some(6));
    }
}
