//! A clock for the plugin calls' own bookkeeping (a call's deadline, a plugin's CPU
//! second) that costs one atomic load: the epoch thread stores the time at each tick
//! (1 ms), so it is at most a tick behind. Reading the system clock twice per plugin
//! call was about a twentieth of a first-party call. Until an epoch thread runs (or
//! after the last one stopped) it reads the system clock.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since [`start`] at the last tick; `u64::MAX`: no epoch thread runs.
static MS: AtomicU64 = AtomicU64::new(u64::MAX);

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// The epoch thread's tick.
pub fn tick() {
    let ms = u64::try_from(start().elapsed().as_millis()).unwrap_or(u64::MAX - 1);
    MS.store(ms, Ordering::Relaxed);
}

/// The epoch thread stops (its host is gone); another one still running sets it again
/// at its next tick.
pub fn stop() {
    MS.store(u64::MAX, Ordering::Relaxed);
}

/// Now, to the last tick.
pub fn now() -> Instant {
    match MS.load(Ordering::Relaxed) {
        u64::MAX => Instant::now(),
        ms => start() + Duration::from_millis(ms),
    }
}

/// Milliseconds since the process's first reading, to the last tick.
pub fn millis() -> u64 {
    match MS.load(Ordering::Relaxed) {
        u64::MAX => u64::try_from(start().elapsed().as_millis()).unwrap_or(u64::MAX - 1),
        ms => ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_ticks_and_the_system_clock_without_them() {
        tick();
        let ticked = now();
        std::thread::sleep(Duration::from_millis(5));
        // No tick since: the same time.
        assert_eq!(now(), ticked);
        tick();
        assert!(now() >= ticked + Duration::from_millis(5));
        stop();
        let before = Instant::now();
        assert!(now() >= before);
    }
}
