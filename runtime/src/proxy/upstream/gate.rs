//! A gate between an HTTP/1.1 upstream connection and the task that drives it, so that
//! the wake-up hyper gives that task for nothing, once per content-length response,
//! can be dropped.
//!
//! hyper's response body channel (hyper 1.12, `body/chan.rs`) holds one chunk. Each
//! time the body's reader takes a chunk it wakes the connection's task, to read the
//! next. When that chunk ends a content-length body, hyper's dispatcher has already
//! read the whole response and dropped its end of the channel (in the poll that sent
//! the chunk), so the task wakes and polls for nothing (the gate saves 931
//! instructions per request, docs/benchmarks.md). A chunked or close-delimited body's
//! end shows only when the channel is found closed, which wakes nobody; the wake-up
//! for its last chunk is needed and passes.
//!
//! The connection's task polls hyper with a waker of its own ([`Gated`]). It passes
//! every wake-up on, except those given on the reading thread while a body of this
//! connection is read through [`Gate::read`]: those are held, then dropped if the
//! read ended the body and passed on if not (a longer body's reader wakes the
//! connection for more, as before). Wake-ups from the socket, a timer or another
//! thread are never held.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

thread_local! {
    /// The gate whose wake-ups this thread holds back, while it reads a body through
    /// [`Gate::read`]. Compared, never dereferenced.
    static HOLDING: Cell<*const Gate> = const { Cell::new(std::ptr::null()) };
}

/// One connection's gate: the waker of the task that drives it, and whether a wake-up
/// was held back.
#[derive(Debug, Default)]
pub struct Gate {
    task: AtomicWaker,
    /// Set and read by the reading thread only (a wake-up is held only on the thread
    /// that holds): atomic because a waker must be `Sync`.
    held: AtomicBool,
}

/// Restores [`HOLDING`] when a read ends, by return or by panic.
struct Holding(*const Gate);

impl Drop for Holding {
    fn drop(&mut self) {
        HOLDING.set(self.0);
    }
}

impl Gate {
    /// Run `read`, a poll of a response body of this gate's connection, which says
    /// what it polled and whether the body is over. A wake-up `read` gives the
    /// connection's task is dropped if the body is over, else passed on.
    pub fn read<R>(&self, read: impl FnOnce() -> (R, bool)) -> (R, bool) {
        let holding = Holding(HOLDING.replace(std::ptr::from_ref(self)));
        let (polled, over) = read();
        drop(holding);
        if self.held.swap(false, Ordering::Relaxed) && !over {
            self.task.wake();
        }
        (polled, over)
    }
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if std::ptr::eq(HOLDING.get(), Arc::as_ptr(self)) {
            self.held.store(true, Ordering::Relaxed);
        } else {
            self.task.wake();
        }
    }
}

/// A connection's future (hyper's), polled with its gate's waker.
pub struct Gated<F> {
    inner: F,
    gate: Arc<Gate>,
    /// The gate as a waker, made once: one made at each poll would cost a reference
    /// count taken and given back per poll.
    waker: Waker,
}

impl<F> Gated<F> {
    /// `inner` gated, and its gate.
    pub fn new(inner: F) -> (Gated<F>, Arc<Gate>) {
        let gate = Arc::new(Gate::default());
        let waker = Waker::from(gate.clone());
        let gated = Gated {
            inner,
            gate: gate.clone(),
            waker,
        };
        (gated, gate)
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.gate.task.register(cx.waker());
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A task's waker that counts its wake-ups.
    #[derive(Default)]
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A gate whose task is `task`: the gated future registered it at its last poll,
    /// and the waker it gave hyper.
    fn gate(task: &Arc<Counted>) -> (Arc<Gate>, Waker) {
        let (mut gated, gate) = Gated::new(std::future::pending::<()>());
        let task_waker = Waker::from(task.clone());
        assert!(
            Pin::new(&mut gated)
                .poll(&mut Context::from_waker(&task_waker))
                .is_pending()
        );
        let given = gated.waker.clone();
        (gate, given)
    }

    /// Outside a read every wake-up passes; inside one it is dropped when the body is
    /// over and passed on when it is not; a read of another gate's body holds nothing
    /// of this one's.
    #[test]
    fn a_wake_up_given_while_a_body_is_read_is_dropped_only_when_the_body_is_over() {
        let task = Arc::new(Counted::default());
        let woken = || task.0.load(Ordering::Relaxed);
        let (gate, given) = gate(&task);
        given.wake_by_ref();
        assert_eq!(woken(), 1, "outside a read");
        // The task was woken, so its waker was taken: the gated future registers it
        // again at its next poll; here, by hand.
        gate.task.register(&Waker::from(task.clone()));
        let ((), over) = gate.read(|| {
            given.wake_by_ref();
            ((), true)
        });
        assert!(over);
        assert_eq!(woken(), 1, "held and dropped: the body is over");
        gate.read(|| {
            given.wake_by_ref();
            ((), false)
        });
        assert_eq!(woken(), 2, "held and passed on: more to read");
        gate.task.register(&Waker::from(task.clone()));
        let other = Gate::default();
        other.read(|| {
            given.wake_by_ref();
            ((), true)
        });
        assert_eq!(
            woken(),
            3,
            "another connection's read holds nothing of this one"
        );
        gate.task.register(&Waker::from(task.clone()));
        gate.read(|| ((), true));
        given.wake_by_ref();
        assert_eq!(woken(), 4, "after a read, wake-ups pass again");
    }

    /// A wake-up from another thread while this one reads is never held.
    #[test]
    fn a_wake_up_from_another_thread_passes_during_a_read() {
        let task = Arc::new(Counted::default());
        let (gate, given) = gate(&task);
        gate.read(|| {
            let from = given.clone();
            std::thread::spawn(move || from.wake())
                .join()
                .expect("the waking thread");
            ((), true)
        });
        assert_eq!(task.0.load(Ordering::Relaxed), 1);
    }

    /// A read that panics stops holding: later wake-ups on its thread pass.
    #[test]
    fn a_read_that_panics_stops_holding() {
        let task = Arc::new(Counted::default());
        let (gate, given) = gate(&task);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gate.read(|| -> ((), bool) { panic!("a body's poll panicked") })
        }));
        assert!(panicked.is_err());
        given.wake_by_ref();
        assert_eq!(task.0.load(Ordering::Relaxed), 1);
    }
}
