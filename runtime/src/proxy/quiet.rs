//! A socket that remembers it had nothing to read, so that hyper's reads of it, until
//! the socket wakes its reader, are answered without asking tokio.
//!
//! hyper's HTTP/1 dispatcher reads its connection on every pass of its loop: to find
//! the next message head, and, between messages, to notice a peer that closed. Once a
//! read has found the socket empty (tokio cleared its readiness and keeps the reader's
//! waker), each further read before the socket becomes ready again returns `Pending`
//! too, after tokio's task budget, readiness check and waiters' lock: about 150
//! instructions, five times per proxied request (docs/benchmarks.md).
//!
//! [`Quiet`] gives the socket a waker of its own, made once per connection. A read that
//! comes back `Pending` leaves the stream idle; while idle, and until that waker is
//! woken, a read registers the caller's waker and returns `Pending` itself. Every
//! wake-up tokio gives the socket's reader (readiness, a closed or failed socket, the
//! task budget, the runtime's shutdown) comes through that waker, marks the stream
//! woken and passes to the caller's waker, so the next read asks tokio again: no read
//! the socket would have answered is ever skipped. Writes pass through untouched.
//!
//! Every HTTP connection hyper reads is one: a client's (`listener.rs`, under TLS too)
//! and an upstream's (`upstream::connect::dial`, both pools).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The socket's reader: the waker of whoever reads it last, and whether the socket
/// woke it since.
#[derive(Debug, Default)]
struct Reader {
    task: AtomicWaker,
    woken: AtomicBool,
}

impl Wake for Reader {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A stream whose reads, after one found nothing, wait for the stream's own wake-up.
pub struct Quiet<S> {
    inner: S,
    /// The last read of `inner` returned `Pending`.
    idle: bool,
    reader: Arc<Reader>,
    /// `reader` as a waker, made once: `inner` keeps it between reads and a waker made
    /// per read would be cloned by tokio each time.
    waker: Waker,
}

impl<S> Quiet<S> {
    /// `inner`, read quietly.
    pub fn new(inner: S) -> Quiet<S> {
        let reader = Arc::new(Reader::default());
        let waker = Waker::from(reader.clone());
        Quiet {
            inner,
            idle: false,
            reader,
            waker,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Quiet<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.idle {
            // Registered before the mark is read: a wake-up after the read finds this
            // caller's waker; one before it leaves the mark set.
            this.reader.task.register(cx.waker());
            if !this.reader.woken.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        // Cleared before `inner` is asked: a wake-up while it is asked marks it again.
        this.reader.woken.store(false, Ordering::Relaxed);
        let polled =
            Pin::new(&mut this.inner).poll_read(&mut Context::from_waker(&this.waker), buf);
        if polled.is_pending() && !this.idle {
            this.idle = true;
            // A wake-up from another thread while `inner` was asked went to the waker
            // registered before; this caller's is woken for it here.
            this.reader.task.register(cx.waker());
            if this.reader.woken.load(Ordering::Acquire) {
                cx.waker().wake_by_ref();
            }
        } else if polled.is_ready() {
            this.idle = false;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Quiet<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A stream that counts the reads it is asked for.
    struct Counting {
        inner: TcpStream,
        reads: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    /// Both ends of a loopback connection: (dialled, accepted).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (dialled.expect("connect"), accepted.expect("accept").0)
    }

    /// One poll of a read: whether it was pending.
    async fn pending_once<S: AsyncRead + Unpin>(quiet: &mut Quiet<S>) -> bool {
        let mut bytes = [0u8; 16];
        std::future::poll_fn(|cx| {
            let polled = Pin::new(&mut *quiet).poll_read(cx, &mut ReadBuf::new(&mut bytes));
            Poll::Ready(polled.is_pending())
        })
        .await
    }

    const IN_TIME: Duration = Duration::from_secs(5);

    /// Reads after one found nothing are answered without asking the socket; the bytes
    /// the peer then sends, and its close, are read.
    #[tokio::test]
    async fn reads_after_an_empty_one_wait_for_the_socket_to_wake() {
        let (mut peer, accepted) = pair().await;
        let reads = Arc::new(AtomicUsize::new(0));
        let mut quiet = Quiet::new(Counting {
            inner: accepted,
            reads: reads.clone(),
        });
        for _ in 0..3 {
            assert!(pending_once(&mut quiet).await);
        }
        assert_eq!(
            reads.load(Ordering::Relaxed),
            1,
            "one read asked the socket"
        );

        peer.write_all(b"ping").await.expect("write");
        let mut bytes = [0u8; 16];
        let n = tokio::time::timeout(IN_TIME, quiet.read(&mut bytes))
            .await
            .expect("the socket's wake-up reaches the reader")
            .expect("read");
        assert_eq!(&bytes[..n], b"ping");

        drop(peer);
        let n = tokio::time::timeout(IN_TIME, quiet.read(&mut bytes))
            .await
            .expect("the close reaches the reader")
            .expect("read");
        assert_eq!(n, 0, "end of stream");
    }

    /// A stream idled by one task and then read by another (an upgraded connection
    /// handed on) wakes the task that reads it now.
    #[tokio::test]
    async fn the_wake_up_goes_to_the_task_reading_now() {
        let (mut peer, accepted) = pair().await;
        let mut quiet = Quiet::new(accepted);
        assert!(pending_once(&mut quiet).await);
        let reader = tokio::spawn(async move {
            let mut bytes = [0u8; 16];
            let n = quiet.read(&mut bytes).await.expect("read");
            bytes[..n].to_vec()
        });
        tokio::task::yield_now().await;
        peer.write_all(b"handed on").await.expect("write");
        let read = tokio::time::timeout(IN_TIME, reader)
            .await
            .expect("the new reader is woken")
            .expect("the reading task");
        assert_eq!(read, b"handed on");
    }

    /// Round trips between two quiet ends on a runtime of two threads, so that
    /// wake-ups cross threads: none is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trips_across_threads_lose_no_wake_up() {
        let (dialled, accepted) = pair().await;
        let mut echo = Quiet::new(accepted);
        let echoing = tokio::spawn(async move {
            let mut bytes = [0u8; 64];
            loop {
                let n = echo.read(&mut bytes).await.expect("read");
                if n == 0 {
                    return;
                }
                echo.write_all(&bytes[..n]).await.expect("write");
            }
        });
        let mut client = Quiet::new(dialled);
        let trips = async {
            let mut bytes = [0u8; 8];
            for i in 0u64..2_000 {
                client.write_all(&i.to_le_bytes()).await.expect("write");
                client.read_exact(&mut bytes).await.expect("read");
                assert_eq!(u64::from_le_bytes(bytes), i);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), trips)
            .await
            .expect("every reply read in time");
        client.shutdown().await.expect("shutdown");
        drop(client);
        echoing.await.expect("the echo ends");
    }
}
