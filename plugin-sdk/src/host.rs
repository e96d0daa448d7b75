//! The host's functions: logging, randomness and monotonic time — all a policy gets.
//! Inside Wasm they call the host; in native `cargo test` runs they use local stand-ins
//! (random numbers from a seedable generator, see [`crate::testing::seed_random`]).

/// Log levels, as the host's `log` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Write `message` to the gateway's log at `level`.
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

/// A uniformly distributed random `u64` from the host.
pub fn random_u64() -> u64 {
    imp::random_u64()
}

/// A uniformly distributed number in `0..bound` (`bound > 0`), without modulo bias.
pub fn random_below(bound: u64) -> u64 {
    if bound <= 1 {
        return 0;
    }
    // Lemire's multiply-shift with rejection.
    let threshold = bound.wrapping_neg() % bound;
    loop {
        let m = u128::from(random_u64()) * u128::from(bound);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// True with probability `percent / 100` (clamped to 0..=100). 0 never fires.
pub fn chance(percent: f64) -> bool {
    if percent <= 0.0 || percent.is_nan() {
        return false;
    }
    if percent >= 100.0 {
        return true;
    }
    // 53 random bits give a uniform float in [0, 1).
    let unit = (random_u64() >> 11) as f64 / (1u64 << 53) as f64;
    unit * 100.0 < percent
}

/// The index of one of `weights` drawn at random by weight, the weights being
/// proportions of their sum (Istio >= 1.13: 80/20, 4/1 and 8000/2000 split alike).
/// `None` when every weight is 0. One draw of [`random_below`], so a seeded gateway picks
/// reproducibly.
pub fn pick_weighted(weights: &[u32]) -> Option<usize> {
    weighted_index(weights, random_below)
}

/// [`pick_weighted`] with the draw given: the index `draw(total)` lands on, counting each
/// index as many times as its weight. `None` when every weight is 0.
pub fn weighted_index(weights: &[u32], draw: impl FnOnce(u64) -> u64) -> Option<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = draw(total);
    for (i, &w) in weights.iter().enumerate() {
        let w = u64::from(w);
        if ticket < w {
            return Some(i);
        }
        ticket -= w;
    }
    None
}

/// Monotonic nanoseconds since a point fixed for the host process.
pub fn monotonic_now() -> u64 {
    imp::monotonic_now()
}

/// `host.prepare-edit`: the host's number for `edit`, or `None` where it does not keep
/// it (see [`crate::PreparedEdit`]).
pub(crate) fn prepare_edit(edit: &crate::Edit) -> Option<u32> {
    imp::prepare_edit(edit)
}

/// How many numbers the SDK asks the host for at once.
#[cfg(any(target_arch = "wasm32", test))]
const KEPT_DRAWS: u32 = 32;

/// Random numbers the host handed over in one call, used in the order given. State in
/// the plugin's own memory, but only a cache of the host's sequence: lost harmlessly
/// with the instance.
#[cfg(any(target_arch = "wasm32", test))]
#[derive(Debug, Default)]
struct Kept {
    /// What is left, last first.
    left: Vec<u64>,
    /// The host hands over one number at a time (it is seeded): draw them singly, which
    /// is one call without a list for the plugin to allocate.
    singly: bool,
}

#[cfg(any(target_arch = "wasm32", test))]
impl Kept {
    /// The next number: a kept one, else the first of `more(KEPT_DRAWS)` (the rest
    /// kept), else, when the host hands over one at a time or none, `one()`.
    fn next(&mut self, more: impl FnOnce(u32) -> Vec<u64>, one: impl FnOnce() -> u64) -> u64 {
        if let Some(n) = self.left.pop() {
            return n;
        }
        if self.singly {
            return one();
        }
        let mut fresh = more(KEPT_DRAWS);
        self.singly = fresh.len() <= 1;
        fresh.reverse();
        let first = fresh.pop();
        self.left = fresh;
        first.unwrap_or_else(one)
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::__bindings::wasmgate::policy::host as wit;

    pub fn prepare_edit(edit: &crate::Edit) -> Option<u32> {
        wit::prepare_edit(edit).ok()
    }

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wit::LogLevel::Trace,
            Level::Debug => wit::LogLevel::Debug,
            Level::Info => wit::LogLevel::Info,
            Level::Warn => wit::LogLevel::Warn,
            Level::Error => wit::LogLevel::Error,
        };
        wit::log(level, message)
    }

    thread_local! {
        static KEPT: std::cell::RefCell<super::Kept> =
            std::cell::RefCell::new(super::Kept::default());
    }

    /// From the numbers the host handed over last (`host.random-u64s`), asking for more
    /// when they run out: one call for many draws instead of one each.
    pub fn random_u64() -> u64 {
        KEPT.with(|kept| kept.borrow_mut().next(wit::random_u64s, wit::random_u64))
    }

    pub fn monotonic_now() -> u64 {
        wit::monotonic_now()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Level;
    use std::cell::Cell;
    use std::sync::OnceLock;
    use std::time::Instant;

    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0x853c_49e6_748f_ea9b) };
    }

    pub fn seed(seed: u64) {
        STATE.with(|s| s.set(seed));
    }

    /// No host to keep it: the policy does.
    pub fn prepare_edit(_: &crate::Edit) -> Option<u32> {
        None
    }

    pub fn log(level: Level, message: &str) {
        eprintln!("[plugin {level:?}] {message}");
    }

    /// splitmix64: small, fast and good enough for tests.
    pub fn random_u64() -> u64 {
        STATE.with(|s| {
            let next = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            s.set(next);
            let mut z = next;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    }

    pub fn monotonic_now() -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        let start = START.get_or_init(Instant::now);
        u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use imp::seed;

#[cfg(test)]
mod tests {
    use super::{KEPT_DRAWS, Kept, weighted_index};

    /// Kept numbers come out in the host's order; a refill happens only when none are
    /// left and asks for [`KEPT_DRAWS`]. A host that hands over one number (a seeded
    /// gateway) or none is asked singly from then on.
    #[test]
    fn kept_draws_come_in_the_hosts_order() {
        let mut kept = Kept::default();
        let mut asked = Vec::new();
        let mut counter = 0u64;
        let mut refill = |max: u32| {
            asked.push(max);
            let batch: Vec<u64> = (counter..counter + 3).collect();
            counter += 3;
            batch
        };
        let drawn: Vec<u64> = (0..7)
            .map(|_| kept.next(&mut refill, || unreachable!("the host answered")))
            .collect();
        assert_eq!(drawn, [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(asked, [KEPT_DRAWS; 3]);
        assert_eq!(kept.next(|_| unreachable!("two are kept"), || 0), 7);

        let mut seeded = Kept::default();
        assert_eq!(seeded.next(|_| vec![5], || unreachable!("one came")), 5);
        assert_eq!(seeded.next(|_| unreachable!("asked singly"), || 6), 6);
        assert_eq!(seeded.next(|_| unreachable!("asked singly"), || 7), 7);
        let mut empty = Kept::default();
        assert_eq!(empty.next(|_| Vec::new(), || 99), 99);
        assert_eq!(empty.next(|_| unreachable!("asked singly"), || 98), 98);
    }

    #[test]
    fn weights_are_proportions_of_their_sum() {
        let weights = [4, 1];
        assert_eq!(weighted_index(&weights, |_| 0), Some(0));
        assert_eq!(weighted_index(&weights, |_| 3), Some(0));
        assert_eq!(weighted_index(&weights, |_| 4), Some(1));
        assert_eq!(weighted_index(&weights, |t| t - 1), Some(1));
        assert_eq!(weighted_index(&[0, 3], |_| 0), Some(1));
        assert_eq!(weighted_index(&[0, 0], |_| 0), None);
        assert_eq!(weighted_index(&[], |_| 0), None);
    }
}
