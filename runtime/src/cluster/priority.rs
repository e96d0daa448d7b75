//! Priority levels: locality failover (`wasmgate_config::model::locality`). As Envoy
//! does with the priorities Istio gives it, a level takes traffic in proportion to its
//! health times the overprovisioning factor 1.4, and what it cannot take spills to the
//! next: level 0 keeps everything while at least 5 of its 7 endpoints are healthy.

use wasmgate_config::model::traffic;

use super::Target;
use super::balance::Balancer;
use crate::plugin::Random;

/// Envoy's default overprovisioning factor (1.4), in percent.
const OVERPROVISIONING: usize = 140;

/// A cluster's endpoints by priority level, each level with a balancer of its own.
#[derive(Debug)]
pub struct Levels {
    levels: Vec<Level>,
}

#[derive(Debug)]
struct Level {
    /// The cluster's endpoint indexes on this level.
    members: Vec<usize>,
    balancer: Balancer,
}

impl Levels {
    /// `of[i]`: endpoint `i`'s level (0 the best, without gaps).
    pub fn new(
        of: &[u8],
        policy: &traffic::Balancer,
        targets: &[Target],
        weights: &[u32],
        warming: &dyn Fn(&[usize]) -> Option<super::warmup::Warming>,
    ) -> Levels {
        let count = of.iter().copied().max().map_or(0, |m| usize::from(m) + 1);
        let levels = (0..count)
            .map(|level| {
                let members: Vec<usize> = (0..targets.len())
                    .filter(|i| of.get(*i).is_some_and(|l| usize::from(*l) == level))
                    .collect();
                let own_targets: Vec<Target> = members
                    .iter()
                    .filter_map(|i| targets.get(*i).cloned())
                    .collect();
                let own_weights: Vec<u32> = members
                    .iter()
                    .map(|i| weights.get(*i).copied().unwrap_or(1))
                    .collect();
                Level {
                    balancer: Balancer::new(policy, &own_targets, &own_weights, warming(&members)),
                    members,
                }
            })
            .filter(|l| !l.members.is_empty())
            .collect();
        Levels { levels }
    }

    /// Each level's share of requests in percent, given which endpoints are healthy;
    /// `None` when nothing is healthy anywhere.
    pub fn shares(&self, healthy: &dyn Fn(usize) -> bool) -> Option<Vec<usize>> {
        let health: Vec<usize> = self
            .levels
            .iter()
            .map(|l| {
                let up = l.members.iter().filter(|i| healthy(**i)).count();
                (up * OVERPROVISIONING / l.members.len().max(1)).min(100)
            })
            .collect();
        let total: usize = health.iter().sum();
        if total == 0 {
            return None;
        }
        if total < 100 {
            // Too little health overall: scaled up so that the shares make 100.
            let mut shares: Vec<usize> = health.iter().map(|h| h * 100 / total).collect();
            let short = 100 - shares.iter().sum::<usize>();
            if let Some(first) = shares.iter_mut().find(|s| **s > 0) {
                *first += short;
            }
            return Some(shares);
        }
        let mut left = 100;
        Some(
            health
                .iter()
                .map(|h| {
                    let take = (*h).min(left);
                    left -= take;
                    take
                })
                .collect(),
        )
    }

    /// An endpoint: a level by the shares, then one of its endpoints by its balancer,
    /// passing over unhealthy ones. A level with fewer healthy endpoints than
    /// `min_health` percent is in panic (Envoy's, per priority): all of its endpoints
    /// are used. `None`: nothing is healthy and no level is in panic (503 `UH`).
    pub fn pick(
        &self,
        random: &Random,
        hash: Option<u64>,
        load: &dyn Fn(usize) -> usize,
        healthy: &dyn Fn(usize) -> bool,
        min_health: usize,
    ) -> Option<usize> {
        let chosen = match self.shares(healthy) {
            Some(shares) => {
                let mut ticket = (random.next_u64() % 100) as usize;
                let mut chosen = 0;
                for (i, share) in shares.iter().enumerate() {
                    if ticket < *share {
                        chosen = i;
                        break;
                    }
                    ticket -= share;
                }
                chosen
            }
            // Nothing healthy: only a level in panic still takes traffic.
            None if min_health > 0 => 0,
            None => return None,
        };
        let level = self.levels.get(chosen)?;
        let up = level.members.iter().filter(|i| healthy(**i)).count();
        let panic = up * 100 < min_health * level.members.len();
        let member = |m: usize| level.members.get(m).copied().unwrap_or(0);
        let own_load = |m: usize| load(member(m));
        let own_healthy = |m: usize| panic || healthy(member(m));
        for _ in 0..level.members.len() {
            let m = level.balancer.pick(random, hash, &own_load, own_healthy);
            if own_healthy(m) {
                return Some(member(m));
            }
        }
        // The balancer kept landing on unhealthy ones: the first healthy.
        level.members.iter().copied().find(|i| healthy(*i))
    }

    /// Where a retry after endpoint `previous` goes. By default (Istio's, with Envoy's
    /// `previous_hosts` predicate) it stays on the priority load: the next healthy
    /// endpoint of `previous`'s level, else `previous` itself, and another level only
    /// when that whole level is unhealthy. With `remote` (a route's
    /// `retryRemoteLocalities`, Envoy's `previous_priorities`) the levels after it are
    /// tried first.
    pub fn next_after(
        &self,
        previous: usize,
        healthy: &dyn Fn(usize) -> bool,
        remote: bool,
    ) -> Option<usize> {
        let at = self
            .levels
            .iter()
            .position(|l| l.members.contains(&previous))
            .unwrap_or(0);
        let others = |l: &Level| {
            let start = l
                .members
                .iter()
                .position(|m| *m == previous)
                .map_or(0, |p| p + 1);
            (0..l.members.len())
                .map(|k| l.members[(start + k) % l.members.len()])
                .find(|m| *m != previous && healthy(*m))
        };
        let own = self.levels.get(at);
        if !remote && let Some(level) = own {
            if let Some(found) = others(level) {
                return Some(found);
            }
            if healthy(previous) {
                return Some(previous);
            }
        }
        let order = (at + 1..self.levels.len()).chain(0..=at);
        order
            .filter_map(|i| self.levels.get(i))
            .find_map(others)
            .or_else(|| healthy(previous).then_some(previous))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(of: &[u8]) -> Levels {
        let targets: Vec<Target> = (0..of.len())
            .map(|i| Target::new("127.0.0.1".into(), 1000 + i as u16))
            .collect();
        Levels::new(
            of,
            &traffic::Balancer::default(),
            &targets,
            &vec![1; of.len()],
            &|_| None,
        )
    }

    #[test]
    fn a_level_keeps_all_while_healthy_enough_then_spills() {
        // Level 0: endpoints 0-4 (five), level 1: 5-6.
        let l = levels(&[0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(l.shares(&|_| true), Some(vec![100, 0]));
        // 4 of 5 healthy: 80% x 1.4 = 112%, still all of it.
        assert_eq!(l.shares(&|i| i != 0), Some(vec![100, 0]));
        // 2 of 5: 56% stays, 44% spills.
        assert_eq!(l.shares(&|i| i >= 3), Some(vec![56, 44]));
        // Level 0 gone: level 1 takes it all.
        assert_eq!(l.shares(&|i| i >= 5), Some(vec![0, 100]));
        // Little health anywhere: scaled to make 100.
        assert_eq!(l.shares(&|i| i == 0 || i == 6), Some(vec![29, 71]));
        // Nothing healthy: no shares.
        assert_eq!(l.shares(&|_| false), None);
    }

    #[test]
    fn picks_stay_on_the_best_level_and_on_healthy_endpoints() {
        let l = levels(&[1, 0, 0, 1]);
        let random = Random::new(Some(7));
        let none = |_: usize| 0;
        let pick = |healthy: &dyn Fn(usize) -> bool, min: usize| {
            l.pick(&random, None, &none, healthy, min)
        };
        for _ in 0..100 {
            let i = pick(&|_| true, 0).expect("an endpoint");
            assert!(i == 1 || i == 2, "{i}");
            // Half of level 0 is down: 70 % stays there (on the healthy one), 30 % spills.
            let i = pick(&|i| i != 1, 0).expect("an endpoint");
            assert_ne!(i, 1);
            let i = pick(&|i| i == 0 || i == 3, 0).expect("an endpoint");
            assert!(i == 0 || i == 3, "{i}");
            // Nothing healthy: no endpoint, unless panic is allowed (then level 0).
            assert_eq!(pick(&|_| false, 0), None);
            let i = pick(&|_| false, 50).expect("panic");
            assert!(i == 1 || i == 2, "{i}");
        }
    }

    #[test]
    fn retries_stay_on_the_level_unless_remote_localities() {
        let l = levels(&[1, 0, 0, 1]);
        let all = |_: usize| true;
        assert_eq!(l.next_after(1, &all, false), Some(2));
        assert_eq!(l.next_after(2, &all, false), Some(1));
        // The only healthy one of its level: retried itself, as Envoy's priority load.
        assert_eq!(l.next_after(1, &|i| i != 2, false), Some(1));
        // Its whole level unhealthy: the next level.
        assert_eq!(l.next_after(1, &|i| i == 0 || i == 3, false), Some(0));
        assert_eq!(l.next_after(0, &all, false), Some(3));
        // retryRemoteLocalities: another level first.
        assert_eq!(l.next_after(1, &all, true), Some(0));
        assert_eq!(l.next_after(0, &all, true), Some(1));
        assert_eq!(l.next_after(3, &|i| i == 3, true), Some(3));
        assert_eq!(l.next_after(3, &|_| false, true), None);
        assert_eq!(l.next_after(3, &|_| false, false), None);
    }
}
