//! A clock for the plugin calls' own bookkeeping (a call's deadline, a plugin's CPU
//! second) that costs one atomic load: each epoch thread stores the time at each tick
//! (1 ms, rounded down to the millisecond), so it is a millisecond or two behind (more
//! only while the epoch thread waits for a CPU), never ahead. Reading the system clock
//! twice per plugin call was about a twentieth of a first-party call. While no epoch
//! thread runs it reads the system clock. The upstream HTTP/1.1 pool's idle times and
//! hyper's request head deadline (`listener/head_timer.rs`) read it too: a millisecond
//! or two is nothing to either, and each was a system clock read per request (about
//! 29 ns on the benchmark machine).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since [`start`] at the latest tick of any epoch thread.
static MS: AtomicU64 = AtomicU64::new(0);
/// Epoch threads running.
static TICKERS: AtomicUsize = AtomicUsize::new(0);

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// One epoch thread's share of the clock: it calls [`Ticker::tick`] at its ticks, and
/// once the last one is dropped the clock reads the system clock again.
pub struct Ticker(());

impl Ticker {
    pub fn start() -> Ticker {
        let ticker = Ticker(());
        ticker.tick();
        // Release: a reader that counts this ticker also sees the tick just stored.
        TICKERS.fetch_add(1, Ordering::Release);
        ticker
    }

    /// A tick. Several threads may tick: the clock never goes back.
    pub fn tick(&self) {
        let ms = u64::try_from(start().elapsed().as_millis()).unwrap_or(u64::MAX);
        MS.fetch_max(ms, Ordering::Relaxed);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        TICKERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Milliseconds since the process's first reading, to the last tick.
pub fn millis() -> u64 {
    if TICKERS.load(Ordering::Acquire) == 0 {
        return u64::try_from(start().elapsed().as_millis()).unwrap_or(u64::MAX);
    }
    MS.load(Ordering::Relaxed)
}

/// Now, to the last tick.
pub fn now() -> Instant {
    if TICKERS.load(Ordering::Acquire) == 0 {
        return Instant::now();
    }
    start() + Duration::from_millis(MS.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_brings_it_to_now_and_it_never_goes_back() {
        let ticker = Ticker::start();
        std::thread::sleep(Duration::from_millis(5));
        let before = Instant::now();
        ticker.tick();
        // Truncated to the millisecond.
        assert!(now() + Duration::from_millis(1) >= before);
        let seen = millis();
        ticker.tick();
        assert!(millis() >= seen);
        assert!(now() <= Instant::now());
    }
}
