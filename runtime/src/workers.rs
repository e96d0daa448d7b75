//! Worker threads. The gateway serves connections on `--workers` threads (by default one
//! per core the process may use), each running its own current-thread tokio runtime:
//! every listener has one socket per worker (`SO_REUSEPORT`, so each worker has its own
//! accept queue and the kernel spreads new connections across them), and a connection
//! lives on the worker that accepted it, with that worker's upstream connection pools
//! (`Shared::upstream`) and its own idle instances of each plugin (`PolicyPool`). A
//! request stays on its worker; only a plugin's Redis commands and outbound calls (the
//! I/O thread, [`io_thread`]) and calls that moved to the plugin host's slow lane cross
//! threads.
//!
//! The main thread's runtime is the control plane: the admin endpoint, reloads, the
//! watchers, the span exporter. Redis and the plugins' outbound calls have a thread of
//! their own, so a reload's work never delays them. Per-worker state
//! is kept in [`slots`] slots: one per worker and a last one for every other thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;

thread_local! {
    /// This thread's worker index; `usize::MAX` on threads that are not workers.
    static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// How many workers the process runs (set once, when they start).
static COUNT: OnceLock<usize> = OnceLock::new();

/// How many slots per-worker state needs: one per worker, one for other threads.
pub fn slots() -> usize {
    COUNT.get().copied().unwrap_or(1) + 1
}

/// This thread's slot: its worker index, or the last slot on any other thread.
pub fn slot() -> usize {
    match INDEX.with(Cell::get) {
        usize::MAX => slots() - 1,
        i => i,
    }
}

/// The cores this process may use (its CPU affinity and cgroup quota): the default
/// number of workers.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A thread running a current-thread runtime until the process exits; `index`: the
/// worker it is, if it is one.
fn runtime_thread(name: String, index: Option<usize>) -> Result<Handle, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Some(index) = index {
                INDEX.with(|i| i.set(index));
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(Ok(runtime.handle().clone()));
            // Runs the tasks spawned onto this thread until the process exits.
            runtime.block_on(std::future::pending::<()>());
        })
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    match rx.recv() {
        Ok(Ok(handle)) => Ok(handle),
        Ok(Err(e)) => Err(format!("cannot start {name}: {e}")),
        Err(_) => Err(format!("{name} stopped while starting")),
    }
}

/// The calling thread (the control plane's, once every other thread is started) runs at
/// nice 10 from now on: a reload's work (parsing, preparing bindings, swapping) takes the
/// CPU the workers leave instead of an equal share of it, so traffic does not notice a
/// reload. Threads it starts later inherit it (they are control work: watchers' reads,
/// compiles). Not nice 19, so that a saturated gateway still reloads.
pub fn control_below_requests() {
    crate::priority::below_normal("the control thread");
}

/// The I/O thread: Redis commands and plugins' outbound calls run here, so they never
/// wait behind a reload's work on the control thread (parsing, preparing bindings).
pub fn io_thread() -> Result<Handle, String> {
    runtime_thread("wasmgate-io".into(), None)
}

/// The running workers: a runtime handle each. Their threads live as long as the process.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    /// Connections each worker accepted (`wasmgate_worker_connections_accepted_total`).
    accepted: Arc<[AtomicU64]>,
}

impl Workers {
    /// Start `count` workers (at least one). Once per process: a second call starts as
    /// many as the first did, so per-worker slots always match.
    pub fn start(count: usize) -> Result<Workers, String> {
        let count = *COUNT.get_or_init(|| count.max(1));
        let handles = (0..count)
            .map(|index| runtime_thread(format!("wasmgate-worker-{index}"), Some(index)))
            .collect::<Result<Vec<_>, _>>()?;
        let accepted = (0..count).map(|_| AtomicU64::new(0)).collect();
        Ok(Workers { handles, accepted })
    }

    /// Count a connection accepted by the calling worker.
    pub fn accepted(counts: &[AtomicU64]) {
        if let Some(count) = counts.get(slot()) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The per-worker accept counters, for the accept loops and the metrics.
    pub fn accept_counts(&self) -> &Arc<[AtomicU64]> {
        &self.accepted
    }

    /// How many workers run.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never empty; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Each worker's runtime.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_know_their_slot_and_other_threads_share_the_last() {
        let workers = Workers::start(2).expect("workers start");
        let n = workers.len();
        assert_eq!(slots(), n + 1);
        assert_eq!(
            slot(),
            n,
            "a thread that is not a worker uses the last slot"
        );
        let mut seen = Vec::new();
        for handle in workers.handles() {
            let (tx, rx) = std::sync::mpsc::channel();
            handle.spawn(async move {
                let _ = tx.send((slot(), std::thread::current().name().map(String::from)));
            });
            seen.push(rx.recv().expect("the worker runs the task"));
        }
        let indexes: Vec<usize> = seen.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, (0..n).collect::<Vec<_>>());
        assert_eq!(seen[0].1.as_deref(), Some("wasmgate-worker-0"));
    }
}
