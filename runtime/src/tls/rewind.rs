//! A stream that replays bytes already read from it. The TLS listener reads the ClientHello
//! ([`client_hello::read`](super::client_hello::read)) to let SNI pick a Gateway server
//! before anything else touches the connection; then either rustls terminates TLS over a
//! `Rewind` of the connection, seeing the ClientHello as if it were never read, or, for an
//! Istio `PASSTHROUGH` server, the bytes are spliced to a backend, the replayed ones first.
//!
//! [`Rewind::read_ahead`] makes the replayed bytes itself: an HTTP connection's first read
//! asks for more than its reader wants (hyper-util's HTTP/1-or-h2c detection asks for 24
//! bytes), and the rest is replayed to hyper, which would otherwise read the socket again.

use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads serve `prefix` first, then `inner`; writes go straight to `inner`.
///
/// The impls ask for `S: Unpin` (as `TcpStream` and rustls' streams are) because pinning
/// through to `inner` would need `unsafe` or a pin-projection crate; `Rewind<S>` is then
/// `Unpin` too.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    /// How much of `prefix` reads have served.
    served: usize,
    inner: S,
    /// The first read is still to come, and reads [`READ_AHEAD`] bytes if its reader
    /// asks for fewer.
    ahead: bool,
}

/// How much [`Rewind::read_ahead`]'s first read asks for: most request heads fit.
pub const READ_AHEAD: usize = 1024;

impl<S> Rewind<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            served: 0,
            inner,
            ahead: false,
        }
    }

    /// Nothing to replay yet: the first read takes up to [`READ_AHEAD`] bytes from
    /// `inner` however few its reader asks for, and replays what the reader left.
    pub fn read_ahead(inner: S) -> Self {
        Self {
            ahead: true,
            ..Self::new(Vec::new(), inner)
        }
    }

    /// The part of the prefix no read has served yet, and the inner stream.
    pub fn into_inner(mut self) -> (Vec<u8>, S) {
        self.prefix.drain(..self.served);
        (self.prefix, self.inner)
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Reading through this skips whatever of the prefix is still unread.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ahead {
            if buf.remaining() < READ_AHEAD {
                let mut ahead = [0u8; READ_AHEAD];
                let mut into = ReadBuf::new(&mut ahead);
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut into))?;
                this.prefix = into.filled().to_vec();
                this.served = 0;
            }
            this.ahead = false;
        }
        let unread = this.prefix.get(this.served..).unwrap_or_default();
        if unread.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = unread.len().min(buf.remaining());
        buf.put_slice(&unread[..n]);
        this.served += n;
        if this.served == this.prefix.len() {
            // The prefix can be up to 64 KiB; a long-lived connection should not keep it.
            this.prefix = Vec::new();
            this.served = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Shows how much prefix is left rather than its bytes, which are a client's ClientHello.
impl<S: fmt::Debug> fmt::Debug for Rewind<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewind")
            .field("unread_prefix", &(self.prefix.len() - self.served))
            .field("inner", &self.inner)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn assert_unpin<T: Unpin>() {}

    #[test]
    fn unpin_when_inner_is() {
        assert_unpin::<Rewind<tokio::io::DuplexStream>>();
        assert_unpin::<Rewind<tokio::net::TcpStream>>();
    }

    /// Reads as a socket gives them: whatever is there, each read counted.
    struct Counted {
        data: Vec<u8>,
        reads: usize,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.reads += 1;
            let n = this.data.len().min(buf.remaining());
            buf.put_slice(&this.data[..n]);
            this.data.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn read_ahead_makes_a_small_first_read_large() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".repeat(10);
        let mut stream = Rewind::read_ahead(Counted {
            data: head.clone(),
            reads: 0,
        });
        let mut first = [0u8; 24];
        stream.read_exact(&mut first).await.expect("read");
        assert_eq!(stream.get_ref().reads, 1);
        let mut rest = vec![0u8; 8192];
        let n = stream.read(&mut rest).await.expect("read");
        assert_eq!([&first[..], &rest[..n]].concat(), head);
        assert_eq!(stream.get_ref().reads, 1, "the rest came from memory");
        assert_eq!(stream.read(&mut rest).await.expect("read"), 0);
        assert_eq!(stream.get_ref().reads, 2, "then the socket again");

        // More than READ_AHEAD: the first read takes that much, the next goes on.
        let long = vec![b'x'; READ_AHEAD + 100];
        let mut stream = Rewind::read_ahead(Counted {
            data: long.clone(),
            reads: 0,
        });
        let mut got = vec![0u8; 10];
        stream.read_exact(&mut got).await.expect("read");
        let mut all = got;
        stream.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, long);

        // A reader with room for it all reads straight through: one read.
        let mut stream = Rewind::read_ahead(Counted {
            data: head.clone(),
            reads: 0,
        });
        let mut big = vec![0u8; 8192];
        let n = stream.read(&mut big).await.expect("read");
        assert_eq!(&big[..n], &head[..]);
        assert_eq!(stream.get_ref().reads, 1);
    }

    #[tokio::test]
    async fn prefix_then_inner_in_order() {
        let (near, mut far) = duplex(64);
        far.write_all(b" world").await.expect("write");
        drop(far);
        let mut stream = Rewind::new(b"hello".to_vec(), near);
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"hello world");
    }

    #[tokio::test]
    async fn small_reads_cross_the_boundary() {
        let (near, mut far) = duplex(64);
        far.write_all(b"defgh").await.expect("write");
        drop(far);
        let mut stream = Rewind::new(b"abc".to_vec(), near);
        let mut got = Vec::new();
        let mut chunk = [0u8; 2];
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            assert!(n <= 2);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, b"abcdefgh");
    }

    #[tokio::test]
    async fn empty_prefix_reads_inner() {
        let (near, mut far) = duplex(64);
        far.write_all(b"only inner").await.expect("write");
        drop(far);
        let mut stream = Rewind::new(Vec::new(), near);
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"only inner");
    }

    #[tokio::test]
    async fn prefix_is_served_before_inner_is_polled() {
        // The far end writes nothing and stays open: the prefix must not wait on it.
        let (near, _far) = duplex(64);
        let mut stream = Rewind::new(b"ready".to_vec(), near);
        let mut got = [0u8; 16];
        let n = stream.read(&mut got).await.expect("read");
        assert_eq!(&got[..n], b"ready");
    }

    #[tokio::test]
    async fn writes_flush_and_shutdown_pass_through() {
        let (near, mut far) = duplex(64);
        let mut stream = Rewind::new(b"unrelated".to_vec(), near);
        stream.write_all(b"to the far end").await.expect("write");
        let written = stream
            .write_vectored(&[IoSlice::new(b", "), IoSlice::new(b"vectored")])
            .await
            .expect("write_vectored");
        assert!(written > 0);
        assert_eq!(
            stream.is_write_vectored(),
            stream.get_ref().is_write_vectored()
        );
        stream.flush().await.expect("flush");
        stream.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.expect("read");
        let expected = b"to the far end, vectored";
        assert_eq!(got, &expected[..14 + written]);
    }

    #[tokio::test]
    async fn into_inner_returns_the_unread_prefix() {
        let (near, mut far) = duplex(64);
        let mut stream = Rewind::new(b"abcdef".to_vec(), near);
        let mut first = [0u8; 4];
        stream.read_exact(&mut first).await.expect("read");
        assert_eq!(&first, b"abcd");
        assert!(format!("{stream:?}").contains("unread_prefix: 2"));
        let (rest, mut near) = stream.into_inner();
        assert_eq!(rest, b"ef");
        near.write_all(b"x").await.expect("write");
        let mut one = [0u8; 1];
        far.read_exact(&mut one).await.expect("read");
        assert_eq!(&one, b"x");

        let (rest, _) = Rewind::new(b"ab".to_vec(), far).into_inner();
        assert_eq!(rest, b"ab");
    }
}
