//! A socket that remembers it had nothing to read, so that hyper's reads of it, until
//! the socket wakes its reader, are answered without asking tokio.
//!
//! hyper's HTTP/1 dispatcher reads its connection on every pass of its loop: to find
//! the next message head, and, between messages, to notice a peer that closed. Once a
//! read has found the socket empty (tokio cleared its readiness and keeps the reader's
//! waker), each further read before the socket becomes ready again returns `Pending`
//! too, after tokio's task budget, readiness check and waiters' lock: about 150
//! instructions, five times per proxied keep-alive request (docs/benchmarks.md).
//!
//! [`ReadMemo`] gives the socket a waker of its own, made once per connection. A read
//! that comes back `Pending` leaves the stream idle; while idle, and until that waker
//! is woken, a read registers the caller's waker and returns `Pending` itself. Every
//! wake-up tokio gives the socket's reader (readiness, a closed or failed socket, the
//! task budget, the runtime's shutdown) comes through that waker, marks the stream
//! woken and passes to the caller's waker, so the next read asks tokio again: no
//! `Pending` is returned without a wake-up to follow. (Between tokio setting the
//! socket's readiness and delivering that wake-up, a read is answered `Pending` where
//! tokio would have read; the wake-up follows.) Writes pass through untouched.
//!
//! It wraps a tokio `TcpStream` only, and owns it: the memo holds because that stream
//! stays `Pending` until the waker it was given is woken, and nothing else polls its
//! reads. An inner stream shared with other readers (a split half), or one that could
//! become readable without waking its reader, would break it.
//!
//! Every proxied HTTP connection is read through one: a client's (`listener.rs`,
//! plain and under TLS) and an upstream's (`upstream::connect::dial`, both pools). A
//! TLS-terminated `tcp` route reads its client through one too, outside hyper
//! (`tcp::pipe`, both directions in one task).
//! hyper reads the client's through `Rewind::read_ahead`, `framing::Watched` and, for
//! TLS, rustls and the ClientHello's `Rewind`, then this, then the socket.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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

/// A socket whose reads, after one found nothing, wait for the socket's own wake-up.
pub struct ReadMemo<S = TcpStream> {
    inner: S,
    /// The last read of `inner` returned `Pending`.
    idle: bool,
    reader: Arc<Reader>,
    /// `reader` as a waker, made once: `inner` keeps it between reads and a waker made
    /// per read would be cloned by tokio each time.
    waker: Waker,
}

impl ReadMemo {
    /// `socket`, its empty reads remembered.
    pub fn new(socket: TcpStream) -> ReadMemo {
        ReadMemo::over(socket)
    }
}

impl<S> ReadMemo<S> {
    /// Over any stream: for the tests' streams, which keep the contract above.
    fn over(inner: S) -> ReadMemo<S> {
        let reader = Arc::new(Reader::default());
        let waker = Waker::from(reader.clone());
        ReadMemo {
            inner,
            idle: false,
            reader,
            waker,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadMemo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.idle {
            // Registered before the mark is read: a wake-up after the read finds this
            // caller's waker; one before it leaves the mark set. (That this ordering
            // holds is `AtomicWaker`'s doing: its registration and wake-up are
            // read-modify-writes of one state, and a wake-up racing a registration
            // wakes the waker registered.)
            this.reader.task.register(cx.waker());
            if !this.reader.woken.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        // Cleared before `inner` is asked: a wake-up while it is asked marks it again.
        // `Relaxed` is enough: a wake-up that takes the waker `inner` registers now
        // comes after tokio's waiters' lock is released, so its mark lands after this.
        this.reader.woken.store(false, Ordering::Relaxed);
        let polled =
            Pin::new(&mut this.inner).poll_read(&mut Context::from_waker(&this.waker), buf);
        if polled.is_pending() && !this.idle {
            this.idle = true;
            // A wake-up given while `inner` was asked (tokio's task budget, or another
            // thread) went to the waker registered before, if any; this caller's is
            // woken for it here.
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

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadMemo<S> {
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
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Woken(AtomicUsize);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn woken(waker: &Arc<Woken>) -> usize {
        waker.0.load(Ordering::Relaxed)
    }

    /// What a scripted stream does when read, and what it saw.
    #[derive(Default)]
    struct Script {
        reads: usize,
        /// The next read gets a byte.
        data: bool,
        /// The next empty read wakes the waker it is given before it returns, as
        /// tokio's task budget does, or a wake-up from another thread at that moment.
        wake_while_read: bool,
        /// The waker the last empty read was given: waking it is the socket's wake-up.
        given: Option<Waker>,
    }

    /// A stream that keeps the contract `ReadMemo` relies on: empty until its test
    /// says otherwise and wakes the waker it was given.
    struct Scripted(Arc<Mutex<Script>>);

    impl AsyncRead for Scripted {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let mut script = self.0.lock().expect("the script");
            script.reads += 1;
            if std::mem::take(&mut script.data) {
                buf.put_slice(b"x");
                return Poll::Ready(Ok(()));
            }
            script.given = Some(cx.waker().clone());
            if std::mem::take(&mut script.wake_while_read) {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    }

    fn scripted() -> (ReadMemo<Scripted>, Arc<Mutex<Script>>) {
        let script = Arc::new(Mutex::new(Script::default()));
        (ReadMemo::over(Scripted(script.clone())), script)
    }

    fn read(memo: &mut ReadMemo<Scripted>, waker: &Arc<Woken>) -> Poll<std::io::Result<()>> {
        let waker = Waker::from(waker.clone());
        let mut bytes = [0u8; 4];
        Pin::new(memo).poll_read(
            &mut Context::from_waker(&waker),
            &mut ReadBuf::new(&mut bytes),
        )
    }

    fn reads(script: &Arc<Mutex<Script>>) -> usize {
        script.lock().expect("the script").reads
    }

    fn socket_wakes(script: &Arc<Mutex<Script>>, data: bool) {
        let given = {
            let mut script = script.lock().expect("the script");
            script.data = data;
            script.given.take().expect("an empty read left a waker")
        };
        given.wake();
    }

    /// After an empty read, reads are answered without the stream until it wakes;
    /// then it is asked again, and after its next empty read the memo holds again.
    #[test]
    fn empty_reads_are_remembered_until_the_stream_wakes() {
        let (mut memo, script) = scripted();
        let task = Arc::new(Woken::default());
        for _ in 0..3 {
            assert!(read(&mut memo, &task).is_pending());
        }
        assert_eq!(reads(&script), 1, "one empty read asked the stream");
        socket_wakes(&script, true);
        assert_eq!(woken(&task), 1, "the stream's wake-up reaches the reader");
        assert!(read(&mut memo, &task).is_ready(), "the byte is read");
        assert_eq!(reads(&script), 2);
        // A read after a byte asks the stream (it may hold more); the empty one after
        // it is remembered again.
        for _ in 0..3 {
            assert!(read(&mut memo, &task).is_pending());
        }
        assert_eq!(reads(&script), 3, "the wake-up's mark was cleared");
    }

    /// A wake-up given while the stream is asked, before the reader's waker is
    /// registered, still reaches the reader, and the next read asks the stream.
    #[test]
    fn a_wake_up_while_the_stream_is_asked_reaches_the_reader() {
        let (mut memo, script) = scripted();
        script.lock().expect("the script").wake_while_read = true;
        let task = Arc::new(Woken::default());
        assert!(read(&mut memo, &task).is_pending());
        assert_eq!(woken(&task), 1, "woken for the wake-up it did not see");
        assert!(read(&mut memo, &task).is_pending());
        assert_eq!(reads(&script), 2, "the stream is asked again");
        assert!(read(&mut memo, &task).is_pending());
        assert_eq!(reads(&script), 2, "and remembered again");
    }

    /// The first empty read registers the reader, so the stream's wake-up reaches it
    /// with no read in between (the usual path: one empty read, then the wake-up).
    #[test]
    fn the_first_empty_read_registers_the_reader() {
        let (mut memo, script) = scripted();
        let task = Arc::new(Woken::default());
        assert!(read(&mut memo, &task).is_pending());
        socket_wakes(&script, true);
        assert_eq!(woken(&task), 1);
        assert!(read(&mut memo, &task).is_ready());
    }

    /// The stream's wake-up goes to whoever read last (an upgraded connection's new
    /// task), not to the reader that found it empty.
    #[test]
    fn the_wake_up_goes_to_the_last_reader() {
        let (mut memo, script) = scripted();
        let (first, last) = (Arc::new(Woken::default()), Arc::new(Woken::default()));
        assert!(read(&mut memo, &first).is_pending());
        assert!(read(&mut memo, &last).is_pending());
        socket_wakes(&script, false);
        assert_eq!((woken(&first), woken(&last)), (0, 1));
    }

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
    async fn pending_once<S: AsyncRead + Unpin>(memo: &mut ReadMemo<S>) -> bool {
        let mut bytes = [0u8; 16];
        std::future::poll_fn(|cx| {
            let polled = Pin::new(&mut *memo).poll_read(cx, &mut ReadBuf::new(&mut bytes));
            Poll::Ready(polled.is_pending())
        })
        .await
    }

    const IN_TIME: Duration = Duration::from_secs(5);

    /// On a real socket: reads after an empty one do not ask it; the bytes the peer
    /// then sends, and its close, are read.
    #[tokio::test]
    async fn a_socket_s_empty_reads_are_remembered_and_its_bytes_and_close_still_read() {
        let (mut peer, accepted) = pair().await;
        let count = Arc::new(AtomicUsize::new(0));
        let mut memo = ReadMemo::over(Counting {
            inner: accepted,
            reads: count.clone(),
        });
        let asked = || count.load(Ordering::Relaxed);
        for _ in 0..3 {
            assert!(pending_once(&mut memo).await);
        }
        assert_eq!(asked(), 1, "one read asked the socket");

        peer.write_all(b"ping").await.expect("write");
        let mut bytes = [0u8; 16];
        let n = tokio::time::timeout(IN_TIME, memo.read(&mut bytes))
            .await
            .expect("the socket's wake-up reaches the reader")
            .expect("read");
        assert_eq!(&bytes[..n], b"ping");
        let before = asked();
        for _ in 0..3 {
            assert!(pending_once(&mut memo).await);
        }
        assert_eq!(asked(), before + 1, "remembered again after the bytes");

        drop(peer);
        let n = tokio::time::timeout(IN_TIME, memo.read(&mut bytes))
            .await
            .expect("the close reaches the reader")
            .expect("read");
        assert_eq!(n, 0, "end of stream");
    }

    /// A socket idled by one task and then read by another (an upgraded connection
    /// handed on) wakes the new one.
    #[tokio::test]
    async fn a_socket_read_by_another_task_wakes_that_task() {
        let (mut peer, accepted) = pair().await;
        let mut memo = ReadMemo::new(accepted);
        assert!(pending_once(&mut memo).await);
        let reader = tokio::spawn(async move {
            let mut bytes = [0u8; 16];
            let n = memo.read(&mut bytes).await.expect("read");
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

    /// Round trips between two remembering ends on a runtime of two threads, so that
    /// wake-ups can cross threads: none is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trips_across_threads_lose_no_wake_up() {
        let (dialled, accepted) = pair().await;
        let mut echo = ReadMemo::new(accepted);
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
        let mut client = ReadMemo::new(dialled);
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
