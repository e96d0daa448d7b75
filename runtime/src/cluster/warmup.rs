//! Slow start (`loadBalancer.warmup`, `warmupDurationSecs`), as Envoy has it for round
//! robin and least request: an endpoint that joined the cluster less than the window
//! ago gets a share of its weight that grows with its age
//! ([`wasmgate_config::model::traffic::Warmup::factor`]).
//!
//! When an endpoint joined is kept by the gateway across reloads ([`Arrivals`]): a
//! reload that keeps an endpoint keeps its age, one that adds an endpoint starts it
//! cold, and one that removes it forgets it (added again, it warms up again). At start
//! every endpoint is new, so all warm up alike, which changes no share (as in Envoy).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use wasmgate_config::model::Endpoint;
use wasmgate_config::model::traffic::Warmup;

use crate::plugin::Random;

/// When each endpoint (a host's endpoint: address and ports) joined, across reloads.
/// Only the serving config's endpoints are stamped ([`Arrivals::settle`], after a
/// reload has swapped in), so a config that fails to load leaves nothing behind.
#[derive(Debug, Default)]
pub struct Arrivals {
    joined: DashMap<u64, Instant>,
}

impl Arrivals {
    /// The key of `host`'s endpoint `ep` (its address and ports: endpoints may share an
    /// address).
    pub fn key(host: &str, ep: &Endpoint) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        host.hash(&mut h);
        ep.address.hash(&mut h);
        ep.ports.hash(&mut h);
        h.finish()
    }

    /// When the endpoint `key` joined; one the serving config has not stamped yet
    /// joins now.
    pub fn joined(&self, key: u64) -> Instant {
        self.joined.get(&key).map_or_else(Instant::now, |at| *at)
    }

    /// The serving config has the endpoints `keys`: stamp the new ones now, forget the
    /// rest (an endpoint removed and added again warms up again).
    pub fn settle(&self, keys: &HashSet<u64>) {
        self.joined.retain(|k, _| keys.contains(k));
        let now = Instant::now();
        for k in keys {
            self.joined.entry(*k).or_insert(now);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.joined.len()
    }
}

/// One balancer's endpoints while some of them warm up.
#[derive(Debug)]
pub struct Warming {
    policy: Warmup,
    joined: Box<[Instant]>,
    weights: Box<[u32]>,
    /// When the last of them is warm.
    until: Instant,
    /// Set once `until` has passed: the balancer's own choice stands from then on.
    warm: AtomicBool,
}

impl Warming {
    /// For endpoints that joined at `joined` with `weights`; `None` when all are warm
    /// already.
    pub fn new(policy: Warmup, joined: Vec<Instant>, weights: &[u32]) -> Option<Warming> {
        let until = joined.iter().max().copied()? + policy.window;
        if until <= Instant::now() {
            return None;
        }
        Some(Warming {
            policy,
            joined: joined.into_boxed_slice(),
            weights: weights.into(),
            until,
            warm: AtomicBool::new(false),
        })
    }

    /// For the cluster's endpoints `members` (indexes into `joined` and `weights`),
    /// when the cluster warms endpoints up (`policy`) and knows when they joined.
    pub fn of(
        policy: Option<Warmup>,
        joined: &[Instant],
        weights: &[u32],
        members: &[usize],
    ) -> Option<Warming> {
        let policy = policy?;
        let at: Option<Vec<Instant>> = members.iter().map(|i| joined.get(*i).copied()).collect();
        let own: Vec<u32> = members
            .iter()
            .map(|i| weights.get(*i).copied().unwrap_or(1))
            .collect();
        Warming::new(policy, at?, &own)
    }

    /// An endpoint index drawn by weights scaled for warmup, among those `healthy`
    /// allows; `None` once every endpoint is warm (or none is healthy).
    pub fn draw(&self, random: &Random, healthy: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.warm.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        if now >= self.until {
            self.warm.store(true, Ordering::Relaxed);
            return None;
        }
        let scaled = |i: usize| {
            if !healthy(i) {
                return 0.0;
            }
            let weight = self.weights.get(i).copied().unwrap_or(1);
            let age = self
                .joined
                .get(i)
                .map_or(self.policy.window, |at| now.saturating_duration_since(*at));
            f64::from(weight) * self.policy.factor(age)
        };
        let n = self.joined.len();
        let total: f64 = (0..n).map(scaled).sum();
        if total <= 0.0 || !total.is_finite() {
            return None;
        }
        // A ticket in [0, total): the endpoint whose span holds it.
        let mut ticket = (random.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut last = None;
        for i in 0..n {
            let share = scaled(i);
            if share > 0.0 {
                last = Some(i);
            }
            ticket -= share;
            if ticket < 0.0 && share > 0.0 {
                return Some(i);
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_new_endpoint_gets_a_small_share_until_warm() {
        let policy = Warmup {
            window: Duration::from_secs(60),
            min_fraction: 0.0,
            aggression: 1.0,
        };
        let now = Instant::now();
        let old = now.checked_sub(Duration::from_secs(30)).unwrap_or(now);
        let w = Warming::new(policy, vec![old, now], &[1, 1]).expect("warming");
        let random = Random::new(Some(7));
        let mut hits = [0usize; 2];
        for _ in 0..10_000 {
            if let Some(i) = w.draw(&random, &|_| true) {
                hits[i] += 1;
            }
        }
        // Factors 0.5 and 1/60: the new one gets about 3 %.
        assert!(hits[1] > 100 && hits[1] < 600, "{hits:?}");
        // An unhealthy endpoint is never drawn.
        assert!((0..100).all(|_| w.draw(&random, &|i| i == 1) == Some(1)));
        assert_eq!(w.draw(&random, &|_| false), None);
        // All warm: no warming at all.
        let long_ago = now.checked_sub(Duration::from_secs(120)).unwrap_or(now);
        assert!(Warming::new(policy, vec![long_ago, long_ago], &[1, 1]).is_none());
    }

    #[test]
    fn arrivals_are_stamped_when_served_and_forgotten_when_gone() {
        let a = Arrivals::default();
        a.settle(&HashSet::from([1, 2]));
        let first = a.joined(1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(a.joined(1), first, "kept by a config that keeps it");
        // Not stamped (a config that failed to load, say): asked, it joins now, and
        // nothing is recorded.
        assert!(a.joined(3) > first);
        assert_eq!(a.len(), 2);
        a.settle(&HashSet::from([1]));
        assert_eq!(a.len(), 1);
        assert_eq!(a.joined(1), first);
        a.settle(&HashSet::from([1, 2]));
        assert!(a.joined(2) > first, "removed and added again: new");
    }
}
