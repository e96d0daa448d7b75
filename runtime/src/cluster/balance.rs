//! Choosing an endpoint: round robin, random and least request (power of two choices),
//! each weighted by the ServiceEntry endpoints' `weight`, or a consistent hash.

use std::sync::atomic::{AtomicUsize, Ordering};

use wasmgate_config::model::LoadBalancer;
use wasmgate_config::model::traffic::{self, HashTable};

use super::Target;
use super::hash::{Maglev, Ring};
use super::warmup::Warming;
use crate::plugin::Random;

/// The longest weighted round-robin schedule; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 4096;

/// One cluster's load balancer over its `n` endpoints.
#[derive(Debug)]
pub struct Balancer {
    n: usize,
    kind: Kind,
    /// Slow start while some endpoints warm up (round robin and least request only).
    warming: Option<Warming>,
}

#[derive(Debug)]
enum Kind {
    /// `schedule`: endpoint indexes interleaved by weight; `None` when weights are
    /// equal (then the counter is the index).
    RoundRobin {
        schedule: Option<Box<[u32]>>,
        next: AtomicUsize,
    },
    /// `cumulative`: running weight totals; `None` when weights are equal.
    Random {
        cumulative: Option<Box<[u64]>>,
    },
    LeastRequest {
        cumulative: Option<Box<[u64]>>,
    },
    Ring(Ring),
    Maglev(Maglev),
}

impl Balancer {
    pub fn new(
        policy: &traffic::Balancer,
        targets: &[Target],
        weights: &[u32],
        warming: Option<Warming>,
    ) -> Balancer {
        let uneven = weights.windows(2).any(|w| w[0] != w[1]);
        let cumulative = || {
            uneven.then(|| {
                weights
                    .iter()
                    .scan(0u64, |total, w| {
                        *total += u64::from(*w);
                        Some(*total)
                    })
                    .collect()
            })
        };
        let kind = match policy {
            traffic::Balancer::Simple(LoadBalancer::Random) => Kind::Random {
                cumulative: cumulative(),
            },
            traffic::Balancer::Simple(LoadBalancer::LeastRequest) => Kind::LeastRequest {
                cumulative: cumulative(),
            },
            traffic::Balancer::Simple(LoadBalancer::RoundRobin | LoadBalancer::Passthrough) => {
                Kind::RoundRobin {
                    schedule: uneven.then(|| schedule(weights)),
                    next: AtomicUsize::new(0),
                }
            }
            traffic::Balancer::Hash(h) => match h.table {
                HashTable::Ring { minimum_size } => {
                    Kind::Ring(Ring::new(targets, weights, minimum_size))
                }
                HashTable::Maglev { table_size } => {
                    Kind::Maglev(Maglev::new(targets, weights, table_size))
                }
            },
        };
        let warming =
            warming.filter(|_| matches!(kind, Kind::RoundRobin { .. } | Kind::LeastRequest { .. }));
        Balancer {
            n: targets.len().max(1),
            kind,
            warming,
        }
    }

    /// An endpoint index below the number of endpoints. `load` is an endpoint's
    /// requests in flight; `healthy` tells which endpoints a consistent hash may land
    /// on (it walks on past the others, so the keys of healthy endpoints stay put).
    pub fn pick(
        &self,
        random: &Random,
        hash: Option<u64>,
        load: &dyn Fn(usize) -> usize,
        healthy: impl Fn(usize) -> bool,
    ) -> usize {
        if let Some(w) = &self.warming
            && let Some(a) = w.draw(random, &healthy)
        {
            // Warming up: a draw by scaled weights (least request: the less loaded of
            // two such draws), instead of the schedule.
            if matches!(self.kind, Kind::LeastRequest { .. })
                && let Some(b) = w.draw(random, &healthy)
                && load(b) < load(a)
            {
                return b;
            }
            return a;
        }
        match &self.kind {
            Kind::RoundRobin { schedule, next } => {
                let tick = next.fetch_add(1, Ordering::Relaxed);
                match schedule {
                    Some(s) => s.get(tick % s.len().max(1)).map_or(0, |i| *i as usize),
                    None => tick % self.n,
                }
            }
            Kind::Random { cumulative } => self.draw(random, cumulative.as_deref()),
            Kind::LeastRequest { cumulative } => {
                let a = self.draw(random, cumulative.as_deref());
                let b = self.draw(random, cumulative.as_deref());
                if load(b) < load(a) { b } else { a }
            }
            // A request without a hash key lands anywhere, as Envoy's.
            Kind::Ring(ring) => ring.pick(hash.unwrap_or_else(|| random.next_u64()), healthy),
            Kind::Maglev(m) => m.pick(hash.unwrap_or_else(|| random.next_u64()), healthy),
        }
    }

    /// A weighted random endpoint.
    fn draw(&self, random: &Random, cumulative: Option<&[u64]>) -> usize {
        match cumulative {
            Some(c) => {
                let total = c.last().copied().unwrap_or(1).max(1);
                let ticket = random.next_u64() % total;
                c.partition_point(|t| *t <= ticket)
            }
            None => (random.next_u64() % self.n as u64) as usize,
        }
    }
}

/// Endpoint indexes, each as often as its weight (scaled so the schedule stays short),
/// interleaved as smooth weighted round robin does: no endpoint gets a run of
/// requests while others wait.
fn schedule(weights: &[u32]) -> Box<[u32]> {
    // 80:20 is 4:1: the shortest schedule with the same shares.
    let common = weights.iter().fold(0u32, |a, b| gcd(a, *b)).max(1);
    let weights: Vec<u32> = weights.iter().map(|w| w / common).collect();
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let scaled: Vec<i64> = weights
        .iter()
        .map(|w| {
            if total > MAX_SCHEDULE {
                ((u64::from(*w) * MAX_SCHEDULE) / total).max(1) as i64
            } else {
                i64::from(*w)
            }
        })
        .collect();
    let sum: i64 = scaled.iter().sum();
    let mut current = vec![0i64; scaled.len()];
    let mut out = Vec::with_capacity(usize::try_from(sum).unwrap_or(0));
    for _ in 0..sum {
        for (c, w) in current.iter_mut().zip(&scaled) {
            *c += w;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, usize::MAX - i))
        else {
            break;
        };
        current[best] -= sum;
        out.push(best as u32);
    }
    out.into_boxed_slice()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_interleaves_by_weight() {
        let s = schedule(&[3, 1]);
        assert_eq!(&*s, &[0, 0, 1, 0]);
        let s = schedule(&[1, 2, 1]);
        assert_eq!(s.iter().filter(|i| **i == 1).count(), 2);
        assert_eq!(s.len(), 4);
        let big = schedule(&[100_000, 1]);
        assert!(big.len() as u64 <= MAX_SCHEDULE + 1);
        assert!(big.contains(&1), "a small weight keeps at least one turn");
    }
}
