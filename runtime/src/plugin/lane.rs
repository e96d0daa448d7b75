//! The slow lane: where a plugin call that runs longer than a slice finishes, so that it
//! never holds a thread that serves connections.
//!
//! Why: a call runs on the task of its request. Wasm code yields at each epoch tick, but
//! a yield only returns the thread to tokio for a moment: the spinning task wakes itself
//! at once, and on the one-core (current-thread) runtime the run queue is then never
//! empty, so tokio polls the sockets only every 61 task polls; with two workers the
//! spinning task comes back through the LIFO slot. One client looping a call to the
//! 100 ms deadline took an unrelated VirtualService from 14.6k to 1.2k requests per
//! second (p99 6 ms to 107 ms, one core). Yielding more often does not help either: a
//! request's work is microseconds, a slice milliseconds, so the spinning call still gets
//! nearly all of the CPU.
//!
//! So every call starts on its request's task (no hand-off for the calls that take
//! microseconds) and one that is still running after its first slice moves, as a whole
//! future, to this lane: one thread at a low scheduling priority (nice 10) running its
//! own current-thread runtime, where slow calls share time tick by tick. When both want
//! the CPU, the kernel gives the threads that serve connections about nine tenths of it
//! (nice 10 weighs 110 against nice 0's 1024); a plugin that spins gets the rest, until
//! its deadline stops it. Not nice 19: a legitimately slow call on a machine busy with
//! other processes would then get almost nothing before its wall-clock deadline. After a
//! call of a binding moved, its calls start here directly for a second (see
//! `SLOW_FOR_MS` in [`super`]).
//!
//! A second lane, [`Priority::Idle`], is for a binding whose call spun and then faulted
//! (ran to its deadline or its memory limit, using several milliseconds of CPU) less
//! than a second ago: all its calls start there for that second, under `SCHED_IDLE`, so
//! a plugin that keeps spinning runs only on the CPU the request threads leave. Nice 10
//! was not enough for that: with the kernel's EEVDF scheduler a niced thread that is
//! running keeps its CPU for its slice when a worker wakes, and a spinning plugin there
//! cost the other VirtualServices' p99 1.6–1.7x at `bench/run.py --scenarios isolation`;
//! on the idle lane 1.02–1.32x (docs/benchmarks.md). A call that is slow without
//! faulting, or that traps at once (a panic), does not send its binding there; a call
//! starved there to its deadline (few ticks seen) does not keep it there.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// A boxed call, movable between threads between polls.
pub type Call<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How a lane's thread is scheduled (see [`crate::priority`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Nice 10: calls that ran past their first slice.
    BelowNormal,
    /// `SCHED_IDLE`: calls of a binding that faulted within the last second.
    Idle,
}

/// A lane's runtime (the slow lane's or the faulty lane's). Its thread ends when the
/// last handle is dropped.
#[derive(Debug)]
pub struct Lane {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Lane {
    /// Start the lane's thread, named `name` (at most 15 bytes show).
    pub fn start(name: &str, priority: Priority) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting {name}: {e}"))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let what = name.to_string();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                match priority {
                    Priority::BelowNormal => crate::priority::below_normal(&what),
                    Priority::Idle => crate::priority::idle(&what),
                }
                // Returns when the host (and with it `stop`) is dropped.
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Lane {
            handle,
            _stop: stop,
        })
    }

    /// Run `call`: here first when `inline`, for one poll (a call that does not yield
    /// in its first slice finishes in it); on the lane otherwise. While `waiting` says
    /// the call is waiting on the host's I/O (an outbound call), it stays here: it
    /// yielded to wait, not because it ran long. `lost` is what the caller gets if the
    /// lane is gone or the call panicked there.
    pub async fn run<T: Send + 'static>(
        &self,
        mut call: Call<T>,
        inline: bool,
        waiting: Option<&std::sync::atomic::AtomicBool>,
        lost: impl FnOnce(String) -> T,
    ) -> T {
        if inline {
            let mut first = true;
            let done = std::future::poll_fn(|cx| {
                let waits = waiting.is_some_and(|w| w.load(std::sync::atomic::Ordering::Relaxed));
                if !first && !waits {
                    // It ran on (or yielded at a tick) after its wait: to the lane.
                    return Poll::Ready(None);
                }
                first = false;
                match call.as_mut().poll(cx) {
                    Poll::Ready(v) => Poll::Ready(Some(v)),
                    Poll::Pending
                        if waiting
                            .is_some_and(|w| w.load(std::sync::atomic::Ordering::Relaxed)) =>
                    {
                        Poll::Pending
                    }
                    Poll::Pending => Poll::Ready(None),
                }
            })
            .await;
            if let Some(v) = done {
                return v;
            }
        }
        // Dropping the handle (the request went away) does not cancel the call: it ends
        // at its deadline at the latest, and its outcome still counts for the breaker.
        match self.handle.spawn(call).await {
            Ok(v) => v,
            Err(e) => lost(format!("slow lane: {e}")),
        }
    }
}
