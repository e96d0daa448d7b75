//! Bodies buffered for the plugins that read them: up to a limit, then either whole (the
//! plugins read it, and it goes upstream as one piece) or, past the limit, the part read
//! so far followed by the rest, still streaming. Plugins that do not ask cost nothing:
//! nothing here runs for them.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::{Body, BoxError};

/// What [`read_up_to`] read.
#[derive(Debug, Default, Clone)]
pub struct Read {
    pub data: Bytes,
    /// Trailers of a body read whole (gRPC's `grpc-status` travels in them).
    pub trailers: Option<http::HeaderMap>,
    /// The body is larger than the limit: the rest is still in the body read from.
    pub over: bool,
}

/// Read `body` up to `limit` bytes (and its trailers, when it ends within them).
pub async fn read_up_to<B>(body: &mut B, limit: u32) -> Result<Read, BoxError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut data = BytesMut::new();
    let mut trailers: Option<http::HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > limit as usize {
                    return Ok(Read {
                        data: data.freeze(),
                        trailers: None,
                        over: true,
                    });
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.get_or_insert_with(http::HeaderMap::new).extend(t);
                }
            }
        }
    }
    Ok(Read {
        data: data.freeze(),
        trailers,
        over: false,
    })
}

/// A body read whole, sent again: its data, then its trailers.
pub struct Replay {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl Replay {
    pub fn new(data: Bytes, trailers: Option<http::HeaderMap>) -> Self {
        Replay {
            data: (!data.is_empty()).then_some(data),
            trailers,
        }
    }
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// A body whose first bytes were already read: they come first, then the rest.
pub struct Prefixed<B> {
    prefix: Option<Bytes>,
    rest: B,
}

impl<B> Prefixed<B> {
    pub fn new(prefix: Bytes, rest: B) -> Self {
        Prefixed {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest,
        }
    }
}

impl<B> HttpBody for Prefixed<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = SizeHint::new();
        // The upper bound first: a lower one above the current upper panics.
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(extra));
        }
        hint.set_lower(rest.lower().saturating_add(extra));
        hint
    }
}

/// What a request body that went quiet fails with (`--stream-idle-timeout-seconds`).
#[derive(Debug)]
pub struct StreamIdle(pub std::time::Duration);

impl std::fmt::Display for StreamIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{STREAM_IDLE}: nothing arrived for {:?}", self.0)
    }
}

impl std::error::Error for StreamIdle {}

/// The words [`StreamIdle`] starts with, to tell it in an error's chain.
pub const STREAM_IDLE: &str = "request body idle timeout";

/// What a request that is not received whole in time fails with
/// (`--request-timeout-seconds`).
#[derive(Debug)]
pub struct RequestTimeout(pub std::time::Duration);

impl std::fmt::Display for RequestTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{REQUEST_TIMEOUT}: the request was not received within {:?}",
            self.0
        )
    }
}

impl std::error::Error for RequestTimeout {}

/// The words [`RequestTimeout`] starts with, to tell it in an error's chain.
pub const REQUEST_TIMEOUT: &str = "downstream request timeout";

/// `at + wait`, or a century on when a flag's seconds do not fit an instant.
fn later(at: tokio::time::Instant, wait: std::time::Duration) -> tokio::time::Instant {
    at.checked_add(wait)
        .unwrap_or_else(|| at + std::time::Duration::from_secs(100 * 365 * 24 * 3600))
}

/// How long a request body may go quiet, and when it must have ended.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub idle: std::time::Duration,
    /// The request's arrival plus `--request-timeout-seconds` (`None`: unbounded).
    pub deadline: Option<(tokio::time::Instant, std::time::Duration)>,
}

impl Bounds {
    /// The bounds of a request whose head arrived at `started`.
    pub fn of(settings: &crate::limits::Settings, started: std::time::Instant) -> Bounds {
        Bounds {
            idle: settings.stream_idle,
            deadline: settings
                .request_timeout
                .map(|t| (later(tokio::time::Instant::from_std(started), t), t)),
        }
    }
}

/// A downstream request body that fails with [`StreamIdle`] when no frame arrives for
/// `bounds.idle`, and with [`RequestTimeout`] when it has not ended by
/// `bounds.deadline` (Envoy's `stream_idle_timeout` and `request_timeout`): a client
/// that stops sending halfway, or trickles a byte now and then, holds neither its
/// request nor an upstream connection for longer. The idle clock starts when the body
/// is first polled (time spent waiting for a connection is not the client's), its timer
/// is reset lazily (when it fires early), not per frame, and both stop once `answered`
/// is set: when the response has started, a stream whose client sends rarely (gRPC
/// streaming) is the route's to time out, not this.
pub struct Idle<B> {
    inner: B,
    bounds: Bounds,
    last: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    answered: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl<B> Idle<B> {
    pub fn new(
        inner: B,
        bounds: Bounds,
        answered: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    ) -> Self {
        Idle {
            inner,
            bounds,
            last: tokio::time::Instant::now(),
            timer: None,
            answered,
        }
    }

    /// When the timer must next look: the idle limit from the last frame, or the
    /// deadline if that is sooner.
    fn due(&self) -> tokio::time::Instant {
        let idle = later(self.last, self.bounds.idle);
        match self.bounds.deadline {
            Some((deadline, _)) => idle.min(deadline),
            None => idle,
        }
    }
}

impl<B> HttpBody for Idle<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.last = tokio::time::Instant::now();
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this
            .answered
            .as_ref()
            .is_some_and(|a| a.load(std::sync::atomic::Ordering::Relaxed))
        {
            this.timer = None;
            return Poll::Pending;
        }
        if this.timer.is_none() {
            // The first wait: the idle clock starts now.
            this.last = tokio::time::Instant::now();
            this.timer = Some(Box::pin(tokio::time::sleep_until(this.due())));
        }
        loop {
            let due = this.due();
            let Some(timer) = this.timer.as_mut() else {
                return Poll::Pending;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = tokio::time::Instant::now();
            if let Some((deadline, total)) = this.bounds.deadline
                && deadline <= now
            {
                return Poll::Ready(Some(Err(RequestTimeout(total).into())));
            }
            if later(this.last, this.bounds.idle) <= now {
                return Poll::Ready(Some(Err(StreamIdle(this.bounds.idle).into())));
            }
            // A frame came since the timer was set: wait from that one.
            timer.as_mut().reset(due);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body read by [`read_up_to`], to send on: the bytes read, then the rest (`over`),
/// or then its trailers.
pub fn resend<B>(read: Read, rest: B) -> Body
where
    B: HttpBody<Data = Bytes> + Unpin + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    if read.over {
        Prefixed::new(read.data, rest).boxed()
    } else if read.trailers.is_some() {
        Replay::new(read.data, read.trailers).boxed()
    } else {
        super::full(read.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn a_body_within_the_limit_is_whole_and_a_larger_one_keeps_every_byte() {
        let mut body = Full::new(Bytes::from_static(b"hello"));
        let read = read_up_to(&mut body, 5).await.expect("read");
        assert_eq!((read.data.as_ref(), read.over), (&b"hello"[..], false));
        let mut body = Chunks(
            vec![
                Bytes::from_static(b"hel"),
                Bytes::from_static(b"lo"),
                Bytes::from_static(b"!"),
            ]
            .into_iter(),
        );
        let read = read_up_to(&mut body, 4).await.expect("read");
        assert_eq!((read.data.as_ref(), read.over), (&b"hello"[..], true));
        let resent = resend(read, body);
        assert_eq!(resent.size_hint().lower(), 5, "what was read counts");
        let all = resent.collect().await.expect("body").to_bytes();
        assert_eq!(all, "hello!");
    }

    #[tokio::test]
    async fn trailers_of_a_body_read_whole_are_sent_again() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let mut body = Replay::new(Bytes::from_static(b"msg"), Some(trailers));
        let read = read_up_to(&mut body, 10).await.expect("read");
        assert!(!read.over);
        let resent = resend(read, Full::new(Bytes::new()))
            .collect()
            .await
            .expect("body");
        assert_eq!(
            resent.trailers().and_then(|t| t.get("grpc-status")),
            Some(&http::HeaderValue::from_static("0"))
        );
        assert_eq!(resent.to_bytes(), "msg");
    }

    /// A body of these data frames.
    struct Chunks(std::vec::IntoIter<Bytes>);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.next().map(|b| Ok(Frame::data(b))))
        }
    }
}
