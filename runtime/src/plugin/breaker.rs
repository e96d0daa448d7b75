//! The breaker of one plugin binding (plugin x VirtualService): consecutive traps
//! (panics, deadline and memory kills) open it for a cool-down, during which the binding
//! is not called at all and the proxy applies its `failStrategy` (FAIL_CLOSE: 503 with
//! flag `PQ`; FAIL_OPEN: skipped). After the cool-down one request probes the plugin: a
//! clean call closes the breaker, another trap opens it again. The plugin host keeps one
//! per binding for the life of the process, so a reload does not let a broken plugin off
//! its quarantine; a reload that brings a different build of the plugin closes it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::host::monotonic_nanos;

/// Consecutive traps that open a breaker (`--plugin-breaker-failures`).
pub const DEFAULT_FAILURES: u32 = 5;
/// How long an open breaker keeps its binding out (`--plugin-breaker-cooldown-ms`).
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(10);

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: call.
    Call,
    /// The cool-down is over and this caller is the one probe.
    Probe,
    /// Open (or another request is probing): do not call.
    Skip,
}

/// What `/routes` and the metrics show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    /// Open for this much longer.
    Open(Duration),
    /// The cool-down is over; the next request probes.
    HalfOpen,
}

/// One binding's breaker. Lock-free: the closed path reads one atomic per call and
/// writes only when a failure streak starts or ends.
#[derive(Debug)]
pub struct Breaker {
    /// 0 disables the breaker.
    threshold: u32,
    cooldown_ns: u64,
    failures: AtomicU32,
    /// Monotonic nanos until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
    probing: AtomicBool,
    /// Times it opened (a failed probe counts again).
    opened: AtomicU64,
    /// Calls not made because it was open.
    skipped: AtomicU64,
    /// Which build of the plugin it judges (the compiled plugin's address).
    build: AtomicU64,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown_ns: u64::try_from(cooldown.as_nanos()).unwrap_or(u64::MAX),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            opened: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            build: AtomicU64::new(0),
        }
    }

    /// The binding is (re)prepared for the build `build`: a different build starts closed.
    pub fn judge_build(&self, build: u64) {
        if self.build.swap(build, Ordering::AcqRel) != build {
            self.failures.store(0, Ordering::Relaxed);
            self.open_until.store(0, Ordering::Release);
            self.probing.store(false, Ordering::Release);
        }
    }

    /// May a call go ahead?
    pub fn admit(&self) -> Admit {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Admit::Call;
        }
        if monotonic_nanos() >= until
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Admit::Probe;
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        Admit::Skip
    }

    /// The outcome of a call that `admit` let through; `trapped` for traps only (a
    /// plugin's own error value is a decision, not a fault). True when this opened it.
    pub fn record(&self, admit: Admit, trapped: bool) -> bool {
        match (admit, trapped) {
            (Admit::Skip, _) => false,
            (Admit::Call, false) => {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
                false
            }
            (Admit::Call, true) => {
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if self.threshold == 0 || n < self.threshold {
                    return false;
                }
                let until = monotonic_nanos().saturating_add(self.cooldown_ns).max(1);
                let opened = self
                    .open_until
                    .compare_exchange(0, until, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if opened {
                    self.opened.fetch_add(1, Ordering::Relaxed);
                }
                opened
            }
            (Admit::Probe, false) => {
                self.failures.store(0, Ordering::Relaxed);
                self.open_until.store(0, Ordering::Release);
                self.probing.store(false, Ordering::Release);
                false
            }
            (Admit::Probe, true) => {
                let until = monotonic_nanos().saturating_add(self.cooldown_ns).max(1);
                self.open_until.store(until, Ordering::Release);
                self.opened.fetch_add(1, Ordering::Relaxed);
                self.probing.store(false, Ordering::Release);
                true
            }
        }
    }

    /// A probe that ended without an outcome (its request went away first): the next
    /// request probes instead.
    pub fn abandon(&self, admit: Admit) {
        if admit == Admit::Probe {
            self.probing.store(false, Ordering::Release);
        }
    }

    pub fn state(&self) -> State {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return State::Closed;
        }
        let now = monotonic_nanos();
        if now >= until {
            State::HalfOpen
        } else {
            State::Open(Duration::from_nanos(until - now))
        }
    }

    /// Times it opened.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Calls not made because it was open.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_traps_and_a_probe_closes_it() {
        // Long enough that a descheduled test thread does not see it half-open early.
        let b = Breaker::new(3, Duration::from_millis(300));
        for _ in 0..2 {
            assert_eq!(b.admit(), Admit::Call);
            assert!(!b.record(Admit::Call, true));
        }
        // A clean call ends the streak.
        assert!(!b.record(Admit::Call, false));
        for _ in 0..2 {
            assert!(!b.record(Admit::Call, true));
        }
        assert!(b.record(Admit::Call, true));
        assert!(matches!(b.state(), State::Open(_)));
        assert_eq!(b.admit(), Admit::Skip);
        assert_eq!(b.skipped(), 1);
        std::thread::sleep(Duration::from_millis(320));
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.admit(), Admit::Probe);
        // Only one probe at a time.
        assert_eq!(b.admit(), Admit::Skip);
        // A failed probe opens it again.
        assert!(b.record(Admit::Probe, true));
        assert_eq!(b.opened(), 2);
        assert_eq!(b.admit(), Admit::Skip);
        std::thread::sleep(Duration::from_millis(320));
        assert_eq!(b.admit(), Admit::Probe);
        assert!(!b.record(Admit::Probe, false));
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.admit(), Admit::Call);
    }

    #[test]
    fn zero_threshold_never_opens_and_a_new_build_closes() {
        let off = Breaker::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            assert!(!off.record(Admit::Call, true));
        }
        assert_eq!(off.admit(), Admit::Call);

        let b = Breaker::new(1, Duration::from_secs(60));
        b.judge_build(1);
        assert!(b.record(Admit::Call, true));
        b.judge_build(1);
        assert_eq!(b.admit(), Admit::Skip);
        b.judge_build(2);
        assert_eq!(b.admit(), Admit::Call);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let b = Breaker::new(1, Duration::ZERO);
        assert!(b.record(Admit::Call, true));
        let a = b.admit();
        assert_eq!(a, Admit::Probe);
        b.abandon(a);
        assert_eq!(b.admit(), Admit::Probe);
    }
}
