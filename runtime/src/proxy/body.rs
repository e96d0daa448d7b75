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

/// Read `body` up to `limit` bytes: what was read, and whether there is more (then the
/// rest is still in `body`). Trailers of a body read whole are dropped.
pub async fn read_up_to<B>(body: &mut B, limit: u32) -> Result<(Bytes, bool), BoxError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        if let Ok(data) = frame.into_data() {
            read.extend_from_slice(&data);
            if read.len() > limit as usize {
                return Ok((read.freeze(), true));
            }
        }
    }
    Ok((read.freeze(), false))
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

/// A body read by [`read_up_to`], to send on: the bytes read, then (`over`) the rest.
pub fn resend<B>(read: Bytes, over: bool, rest: B) -> Body
where
    B: HttpBody<Data = Bytes> + Unpin + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    if over {
        Prefixed::new(read, rest).boxed()
    } else {
        super::full(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn a_body_within_the_limit_is_whole_and_a_larger_one_keeps_every_byte() {
        let mut body = Full::new(Bytes::from_static(b"hello"));
        let (read, over) = read_up_to(&mut body, 5).await.expect("read");
        assert_eq!((read.as_ref(), over), (&b"hello"[..], false));
        let mut body = Chunks(
            vec![
                Bytes::from_static(b"hel"),
                Bytes::from_static(b"lo"),
                Bytes::from_static(b"!"),
            ]
            .into_iter(),
        );
        let (read, over) = read_up_to(&mut body, 4).await.expect("read");
        assert_eq!((read.as_ref(), over), (&b"hello"[..], true));
        let resent = resend(read, over, body);
        assert_eq!(resent.size_hint().lower(), 5, "what was read counts");
        let all = resent.collect().await.expect("body").to_bytes();
        assert_eq!(all, "hello!");
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
