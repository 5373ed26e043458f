//! Body plumbing: one boxed body type for both directions, and the watched response body that feeds a
//! [`ResponseWatch`] chunk by chunk without buffering (SSE events reach the client as they arrive).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};

use super::stage::{BodyEnd, ResponseWatch};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Not `Sync`: watches hold parsers that need not be shared, and neither hyper side requires it.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Reads and discards what is left of a refused request's body (at most `max_bytes`, for at most
/// [`DRAIN_WAIT`]) before the answer goes out: a connection closed with the client's bytes still
/// unread is reset by the kernel, and the client may then see the reset instead of the answer
/// (seen as a status-less curl failure on a 400 sent before the body was read).
pub async fn drain(mut body: Body, max_bytes: usize) {
    let mut left = max_bytes;
    let _ = tokio::time::timeout(DRAIN_WAIT, async {
        while let Some(Ok(frame)) = body.frame().await {
            match frame.into_data() {
                Ok(d) if d.len() >= left => return,
                Ok(d) => left -= d.len(),
                Err(_) => {}
            }
        }
    })
    .await;
}

/// See [`drain`].
pub const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Wraps an upstream response body; reports every chunk and the end (also when dropped early, which
/// is how a client disconnect shows up) to the watch, exactly once.
pub struct Watched<B> {
    inner: B,
    watch: Option<Box<dyn ResponseWatch>>,
    eof_flushed: bool,
}

impl<B> Watched<B> {
    pub fn new(inner: B, watch: Box<dyn ResponseWatch>) -> Watched<B> {
        Watched {
            inner,
            watch: Some(watch),
            eof_flushed: false,
        }
    }
    fn end(&mut self, end: BodyEnd, err: Option<&str>) {
        if let Some(w) = self.watch.take() {
            w.on_end(end, err);
        }
    }
}

impl<B> HttpBody for Watched<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.eof_flushed {
                self.end(BodyEnd::Complete, None);
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let mut out = match self.watch.as_mut() {
                            Some(w) => w.on_data(data),
                            None => data,
                        };
                        // A body of known length is over with its last byte, and hyper stops
                        // polling once it has sent that many: end here, or the watch would only
                        // learn of the end from the drop, as if the client had gone away.
                        if self.inner.is_end_stream() {
                            self.eof_flushed = true;
                            let rest = self.watch.as_mut().map(|w| w.on_eof()).unwrap_or_default();
                            if !rest.is_empty() {
                                let mut joined = bytes::BytesMut::from(&out[..]);
                                joined.extend_from_slice(&rest);
                                out = joined.freeze();
                            }
                            self.end(BodyEnd::Complete, None);
                        }
                        if out.is_empty() {
                            continue; // held back by the watch; poll for more
                        }
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    // Trailers pass through untouched.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(e))) => {
                    let msg = e.to_string();
                    self.end(BodyEnd::Aborted, Some(&msg));
                    return Poll::Ready(Some(Err(msg.into())));
                }
                Poll::Ready(None) => {
                    self.eof_flushed = true;
                    let rest = self.watch.as_mut().map(|w| w.on_eof()).unwrap_or_default();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Never claim the end early: the watch must run `on_eof`/`on_end`.
        false
    }
}

impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        // Dropped before the end: the client went away (or the server gave up on it).
        if let Some(w) = self.watch.take() {
            w.on_end(BodyEnd::Aborted, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt as _;

    use super::*;
    use crate::proxy::stage::BodyEnd;

    struct Record(Arc<Mutex<Vec<BodyEnd>>>);
    impl ResponseWatch for Record {
        fn on_eof(&mut self) -> Bytes {
            Bytes::from_static(b"!")
        }
        fn on_end(self: Box<Self>, end: BodyEnd, _: Option<&str>) {
            self.0.lock().unwrap().push(end);
        }
    }

    #[tokio::test]
    async fn a_body_of_known_length_ends_complete_with_its_last_byte() {
        let ends = Arc::new(Mutex::new(Vec::new()));
        let mut body = Watched::new(
            http_body_util::Full::new(Bytes::from_static(b"{}")),
            Box::new(Record(ends.clone())),
        );
        // hyper stops after the last byte of a Content-Length body and drops it.
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"{}!"));
        drop(body);
        assert_eq!(*ends.lock().unwrap(), vec![BodyEnd::Complete]);
    }

    /// One SSE event, then nothing more yet (a stream in progress).
    struct Open(Option<Bytes>);
    impl HttpBody for Open {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn a_body_dropped_midway_ends_aborted() {
        let ends = Arc::new(Mutex::new(Vec::new()));
        let open = Open(Some(Bytes::from_static(b"data: 1\n\n")));
        let mut body = Watched::new(open, Box::new(Record(ends.clone())));
        let _ = body.frame().await;
        drop(body);
        assert_eq!(*ends.lock().unwrap(), vec![BodyEnd::Aborted]);
    }
}
