//! Outlier detection (`outlierDetection`), as Envoy's consecutive-error detectors: an
//! endpoint that answers `consecutive5xxErrors` 5xx in a row (or
//! `consecutiveGatewayErrors` 502/503/504, or with `splitExternalLocalOriginErrors`
//! `consecutiveLocalOriginFailures` connect failures, resets and timeouts) is ejected:
//! it gets no requests for `baseEjectionTime` times its number of ejections (at most
//! 300 s, or the base when longer), returning on the next `interval` tick after that.
//! An ejection that would take the ejected share past `maxEjectionPercent` is not made
//! (Envoy's rule: with the default 10 %, fewer than ten endpoints are never ejected).
//! Below `minHealthPercent` healthy, every endpoint is used (Envoy's panic mode).
//!
//! Un-ejection is lazy: the first pick after the earliest ejection is over sweeps the
//! endpoints whose time is up back in, so no timer runs per cluster.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use wasmgate_config::model::traffic::{MAX_EJECTION_TIME, Outlier};

/// What one attempt to an endpoint came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status.
    Response(u16),
    /// No connection could be made.
    ConnectFailure,
    /// The connection was reset before a response.
    Reset,
    /// A TCP route's connection was made (a success, as Envoy counts it).
    Connected,
    /// No response within the (per-try) timeout.
    Timeout,
}

#[derive(Debug, Default)]
struct Health {
    five_xx: u32,
    gateway: u32,
    local: u32,
    /// Ejections so far, less one for each interval spent healthy since.
    backoff: u32,
    /// When it last came back (ms since the detector started).
    returned_ms: u64,
}

#[derive(Debug)]
pub struct Detector {
    config: Outlier,
    started: Instant,
    health: Box<[Mutex<Health>]>,
    /// Until when each endpoint is ejected (ms since `started`); 0: it is not.
    ejected_until: Box<[AtomicU64]>,
    ejected: AtomicUsize,
    /// The earliest `ejected_until` (ms); `u64::MAX` with nothing ejected.
    next_return: AtomicU64,
}

impl Detector {
    pub fn new(config: Outlier, endpoints: usize) -> Detector {
        Detector {
            config,
            started: Instant::now(),
            health: (0..endpoints).map(|_| Mutex::default()).collect(),
            ejected_until: (0..endpoints).map(|_| AtomicU64::new(0)).collect(),
            ejected: AtomicUsize::new(0),
            next_return: AtomicU64::new(u64::MAX),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether any endpoint is (or was, until a request notices) ejected.
    pub fn any_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire) > 0
    }

    /// `minHealthPercent`: below it, a set of endpoints is in panic (all are used).
    pub fn min_health_percent(&self) -> usize {
        self.config.min_health_percent as usize
    }

    /// Fewer endpoints are healthy than `minHealthPercent` asks: use them all.
    pub fn panicking(&self) -> bool {
        let n = self.health.len();
        let healthy = n.saturating_sub(self.ejected.load(Ordering::Acquire));
        healthy * 100 < self.config.min_health_percent as usize * n
    }

    /// Bring back every endpoint whose ejection is over, once the earliest is; cheap
    /// (one atomic load) until then.
    pub fn refresh(&self) {
        if self.ejected.load(Ordering::Acquire) == 0 {
            return;
        }
        let now = self.now_ms();
        if now < self.next_return.load(Ordering::Acquire) {
            return;
        }
        let mut next = u64::MAX;
        for (i, until) in self.ejected_until.iter().enumerate() {
            let at = until.load(Ordering::Acquire);
            if at == 0 {
                continue;
            }
            if now < at {
                next = next.min(at);
                continue;
            }
            if let Some(health) = self.health.get(i) {
                let mut h = health.lock().unwrap_or_else(|e| e.into_inner());
                self.bring_back(&mut h, until, at, now);
            }
        }
        self.next_return.store(next, Ordering::Release);
        // An ejection made during the sweep may be earlier than what was seen.
        for until in self.ejected_until.iter() {
            let at = until.load(Ordering::Acquire);
            if at != 0 {
                self.next_return.fetch_min(at, Ordering::AcqRel);
            }
        }
    }

    /// Whether endpoint `i` is ejected (as of the last [`Detector::refresh`]).
    pub fn is_ejected(&self, i: usize) -> bool {
        self.ejected_until
            .get(i)
            .is_some_and(|u| u.load(Ordering::Acquire) != 0)
    }

    /// End endpoint `until`'s ejection (made until `at`), with its health locked: it
    /// starts again with clean counts, as in Envoy.
    fn bring_back(&self, h: &mut Health, until: &AtomicU64, at: u64, now: u64) {
        if until
            .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            h.returned_ms = now;
            h.five_xx = 0;
            h.gateway = 0;
            h.local = 0;
            tracing::info!("outlier detection returned an endpoint to its cluster");
        }
    }

    /// Count an attempt's outcome for endpoint `i`; true when it got the endpoint
    /// ejected.
    pub fn report(&self, i: usize, outcome: Outcome) -> bool {
        let (Some(health), Some(until)) = (self.health.get(i), self.ejected_until.get(i)) else {
            return false;
        };
        let c = &self.config;
        let mut h = health.lock().unwrap_or_else(|e| e.into_inner());
        let at = until.load(Ordering::Acquire);
        if at != 0 {
            let now = self.now_ms();
            if now < at {
                // Ejected: what its last requests come to does not count.
                return false;
            }
            self.bring_back(&mut h, until, at, now);
        }
        // Without the split, a failure to get a response counts as the status Envoy
        // gives it: 503 for connect failures and resets, 504 for timeouts.
        let status = match (outcome, c.split_local_origin) {
            (Outcome::Response(s), _) => {
                h.local = 0;
                Some(s)
            }
            (Outcome::Connected, true) => {
                h.local = 0;
                None
            }
            (Outcome::Connected, false) => Some(200),
            (Outcome::Timeout, false) => Some(504),
            (Outcome::ConnectFailure | Outcome::Reset, false) => Some(503),
            (_, true) => {
                h.local += 1;
                None
            }
        };
        let tripped = match status {
            None => c.consecutive_local_origin > 0 && h.local >= c.consecutive_local_origin,
            Some(s) if s >= 500 => {
                h.five_xx += 1;
                // Envoy: a 5xx that is not a gateway error ends a run of gateway errors.
                if matches!(s, 502..=504) {
                    h.gateway += 1;
                } else {
                    h.gateway = 0;
                }
                (c.consecutive_5xx > 0 && h.five_xx >= c.consecutive_5xx)
                    || (c.consecutive_gateway > 0 && h.gateway >= c.consecutive_gateway)
            }
            Some(_) => {
                h.five_xx = 0;
                h.gateway = 0;
                false
            }
        };
        if !tripped || until.load(Ordering::Acquire) != 0 {
            return false;
        }
        h.five_xx = 0;
        h.gateway = 0;
        h.local = 0;
        // Envoy's cap: the ejected share may not pass maxEjectionPercent.
        let n = self.health.len();
        let admitted = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                ((e + 1) * 100 <= c.max_ejection_percent as usize * n).then_some(e + 1)
            })
            .is_ok();
        if !admitted {
            return false;
        }
        let now = self.now_ms();
        let interval = u64::try_from(c.interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        // Each interval spent healthy since it last came back takes one off.
        let healthy_ticks = now.saturating_sub(h.returned_ms) / interval;
        h.backoff = h
            .backoff
            .saturating_sub(u32::try_from(healthy_ticks).unwrap_or(u32::MAX))
            + 1;
        let base = c.base_ejection_time;
        let cap = MAX_EJECTION_TIME.max(base);
        let length = base.saturating_mul(h.backoff).min(cap);
        let end = now.saturating_add(u64::try_from(length.as_millis()).unwrap_or(u64::MAX));
        // It returns on the interval tick at or after the end, as Envoy's timer.
        let at = end.div_ceil(interval).saturating_mul(interval).max(1);
        until.store(at, Ordering::Release);
        self.next_return.fetch_min(at, Ordering::AcqRel);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn detector(n: usize, f: impl FnOnce(&mut Outlier)) -> Detector {
        let mut c = Outlier {
            max_ejection_percent: 100,
            ..Outlier::default()
        };
        f(&mut c);
        Detector::new(c, n)
    }

    #[test]
    fn consecutive_5xx_eject_and_a_success_resets_the_count() {
        let d = detector(4, |c| c.consecutive_5xx = 3);
        assert!(!d.report(0, Outcome::Response(500)));
        assert!(!d.report(0, Outcome::Response(503)));
        assert!(!d.report(0, Outcome::Response(200)));
        assert!(!d.report(0, Outcome::Response(500)));
        assert!(!d.report(0, Outcome::ConnectFailure));
        assert!(d.report(0, Outcome::Timeout), "a timeout counts as a 504");
        assert!(d.is_ejected(0) && !d.is_ejected(1));
        assert!(d.any_ejected());
    }

    #[test]
    fn gateway_errors_and_local_origin_failures() {
        let d = detector(2, |c| {
            c.consecutive_5xx = 0;
            c.consecutive_gateway = 2;
        });
        assert!(!d.report(0, Outcome::Response(500)));
        assert!(
            !d.report(0, Outcome::Response(500)),
            "500 is not a gateway error"
        );
        assert!(!d.report(0, Outcome::Response(502)));
        assert!(d.report(0, Outcome::Response(504)));
        let d = detector(2, |c| {
            c.split_local_origin = true;
            c.consecutive_local_origin = 2;
            c.consecutive_5xx = 0;
        });
        assert!(!d.report(1, Outcome::Reset));
        assert!(!d.report(1, Outcome::Response(503)), "a response resets it");
        assert!(!d.report(1, Outcome::ConnectFailure));
        assert!(d.report(1, Outcome::Timeout));
    }

    #[test]
    fn max_ejection_percent_caps_and_panic_uses_all() {
        let d = detector(4, |c| {
            c.consecutive_5xx = 1;
            c.max_ejection_percent = 50;
            c.min_health_percent = 60;
        });
        assert!(d.report(0, Outcome::Response(500)));
        assert!(!d.panicking(), "3 of 4 healthy");
        assert!(d.report(1, Outcome::Response(500)));
        assert!(d.panicking(), "2 of 4 is below 60 %");
        assert!(
            !d.report(2, Outcome::Response(500)),
            "a third would pass 50 %"
        );
        let ten = detector(9, |c| {
            c.consecutive_5xx = 1;
            c.max_ejection_percent = 10;
        });
        assert!(
            !ten.report(0, Outcome::Response(500)),
            "1 of 9 is over 10 %"
        );
    }

    #[test]
    fn ejections_end_on_an_interval_tick_and_grow() {
        let d = detector(2, |c| {
            c.consecutive_5xx = 1;
            c.interval = Duration::from_millis(20);
            c.base_ejection_time = Duration::from_millis(50);
        });
        assert!(d.report(0, Outcome::Response(500)));
        let first = d.ejected_until[0].load(Ordering::Acquire);
        assert_eq!(first % 20, 0, "on a tick");
        std::thread::sleep(Duration::from_millis(first + 5 - d.now_ms().min(first)));
        assert!(d.is_ejected(0), "until a pick looks");
        d.refresh();
        assert!(!d.is_ejected(0), "back after its time");
        assert!(!d.any_ejected());
        assert!(d.report(0, Outcome::Response(500)));
        let second = d.ejected_until[0].load(Ordering::Acquire);
        assert!(
            second.saturating_sub(d.now_ms()) > 60,
            "twice the base the second time"
        );
    }
}
