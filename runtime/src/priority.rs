//! Scheduling of the threads that are not on a request's path, so that traffic gets the
//! CPU first. Linux schedules per thread; a thread (and a process) started from one
//! inherits its setting.
//!
//! - [`idle`]: `SCHED_IDLE`, for work that should take only the CPU the request threads
//!   leave: a reload's compiles, and the plugin host's faulty lane (the calls of a
//!   binding whose call spun to its deadline or memory limit within the last second).
//!   The kernel
//!   preempts an idle-policy thread as soon as a normal one wakes. Nice 10 did not do
//!   that with the kernel's EEVDF scheduler (6.x): a niced thread kept the CPU it ran on
//!   when a worker woke, and the requests' p99 beside it doubled or tripled (measured in
//!   `tests/plugin_reload.rs`). The idle policy still gets a sliver of a saturated CPU,
//!   so such work is slow there, never stuck. The risk it carries: an idle-policy
//!   thread preempted while it holds a lock a request thread then needs (an allocator
//!   arena, wasmtime's engine-wide registries) makes that thread wait; the waiter
//!   sleeps, so the CPU frees and the holder runs, but on a saturated machine the wait
//!   can be long. Measured: no failed request in the reload test; the p99 beside
//!   the swaps in `bench/run.py --scenarios reload` 2.47x the p99 without, above the
//!   2x target (`docs/benchmarks.md`).
//! - [`below_normal`]: nice 10, for work that must keep going on a busy machine: the
//!   control thread (reloads' parsing and preparing, the admin endpoint) and the plugin
//!   host's slow lane. The slow lane stays at nice 10 on purpose: a plugin call that
//!   legitimately needs a few milliseconds of CPU must still finish before its
//!   wall-clock deadline on a saturated gateway, which the idle policy's sliver would
//!   not allow. Only a binding that faulted goes to the idle policy.

/// `SCHED_IDLE` for the calling thread; nice 10 where that cannot be set.
pub fn idle(what: &str) {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct SchedParam {
            sched_priority: i32,
        }
        const SCHED_IDLE: i32 = 5;
        #[allow(unsafe_code)]
        // SAFETY: `sched_setscheduler` on the calling thread (0) with a valid parameter
        // block; lowering one's own policy needs no privilege and reads nothing of ours
        // beyond `param`.
        let set = unsafe {
            unsafe extern "C" {
                fn sched_setscheduler(pid: i32, policy: i32, param: *const SchedParam) -> i32;
            }
            let param = SchedParam { sched_priority: 0 };
            sched_setscheduler(0, SCHED_IDLE, &param) == 0
        };
        if !set {
            tracing::debug!("{what}: SCHED_IDLE refused; nice 10 instead");
            below_normal(what);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = what;
}

/// Nice 10 for the calling thread.
pub fn below_normal(what: &str) {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, 10) {
        tracing::debug!("{what} keeps its priority: {e}");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = what;
}
