//! Locality-aware load balancing, as Istio sets it up for Envoy: where this gateway is
//! (`--locality region/zone/subzone`) against where each endpoint is (a ServiceEntry
//! endpoint's `locality`), under the DestinationRule's `localityLbSetting`.
//!
//! - `distribute`: the first rule whose `from` matches this gateway's locality gives
//!   each endpoint locality its share of the traffic (`to`, in percent); endpoints in
//!   localities it does not name get none.
//! - Failover (the default, and `failover`): only with `outlierDetection`, as in Istio.
//!   Endpoints get priorities: same region, zone and subzone 0; same zone 1; same region
//!   2; the region `failover` names for this one 3; any other 4 (empty levels are
//!   dropped). Traffic goes to the best priority while it is healthy enough; see the
//!   runtime's `cluster.rs` for the spill-over.
//! - No plan without `--locality`, with `enabled: false`, or when every endpoint would
//!   land alike.

use crate::raw::LocalityLoadBalancerSetting;

/// A `region/zone/subzone` triple; a missing part is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn parse(text: &str) -> Locality {
        let mut parts = text.splitn(3, '/').map(str::to_string);
        Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// Does pattern `pattern` (`region/zone/subzone`, `*` for any part; missing parts
    /// match anything) match this locality? Returns how many parts it names (its
    /// specificity) when it does.
    fn matched_by(&self, pattern: &str) -> Option<usize> {
        let mut named = 0;
        for (want, have) in pattern
            .split('/')
            .zip([&self.region, &self.zone, &self.subzone])
        {
            if want == "*" {
                break;
            }
            if want != have {
                return None;
            }
            named += 1;
        }
        Some(named)
    }
}

/// How a cluster's endpoints are used by locality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Each endpoint's priority level, 0 the best, without gaps.
    Priorities(Vec<u8>),
    /// Each endpoint's `to` entry (an index) and that entry's share in percent; `None`:
    /// the endpoint gets no traffic. An entry's share is split over every endpoint it
    /// matches, by endpoint weight, as Istio splits it over the localities it matches.
    Distribute(Vec<Option<(usize, u32)>>),
}

/// The plan for endpoints at `endpoints` (their `locality` strings) seen from `proxy`.
pub fn plan(
    setting: Option<&LocalityLoadBalancerSetting>,
    has_outlier: bool,
    proxy: &Locality,
    endpoints: &[&str],
) -> Option<Plan> {
    if proxy.is_empty() || setting.and_then(|s| s.enabled) == Some(false) {
        return None;
    }
    let at: Vec<Locality> = endpoints.iter().map(|e| Locality::parse(e)).collect();
    let distribute = setting.map_or(&[][..], |s| s.distribute.as_slice());
    if !distribute.is_empty() {
        // `distribute` and failover never both apply (Istio): no entry for this
        // gateway's locality means no locality balancing at all.
        let rule = distribute
            .iter()
            .find(|d| proxy.matched_by(&d.from).is_some())?;
        let shares = at
            .iter()
            .map(|l| {
                rule.to
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (pattern, weight))| {
                        l.matched_by(pattern).map(|n| (n, i, *weight))
                    })
                    .max_by_key(|(n, i, _)| (*n, std::cmp::Reverse(*i)))
                    .map(|(_, i, w)| (i, w))
            })
            .collect();
        return Some(Plan::Distribute(shares));
    }
    if !has_outlier {
        return None;
    }
    // The first `failover` entry for this gateway's region, as Istio takes it.
    let failover_to: Vec<&str> = setting
        .into_iter()
        .flat_map(|s| s.failover.iter())
        .find(|f| f.from == proxy.region)
        .map(|f| f.to.as_str())
        .into_iter()
        .collect();
    let raw: Vec<u8> = at
        .iter()
        .map(|l| {
            if l.region == proxy.region {
                match (l.zone == proxy.zone, l.subzone == proxy.subzone) {
                    (true, true) => 0,
                    (true, false) => 1,
                    (false, _) => 2,
                }
            } else if failover_to.contains(&l.region.as_str()) {
                3
            } else {
                4
            }
        })
        .collect();
    // Compact: the levels that have endpoints, renumbered from 0.
    let mut used: Vec<u8> = raw.clone();
    used.sort_unstable();
    used.dedup();
    if used.len() < 2 {
        return None;
    }
    let ranks = raw
        .iter()
        .map(|p| used.iter().position(|u| u == p).unwrap_or(0) as u8)
        .collect();
    Some(Plan::Priorities(ranks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::{LocalityDistribute, LocalityFailover};

    const EPS: [&str; 5] = [
        "us-west/zone1/a",
        "us-west/zone1/b",
        "us-west/zone2/a",
        "us-east/zone1/a",
        "eu-west/zone1/a",
    ];

    #[test]
    fn failover_ranks_by_proximity_only_with_outlier_detection() {
        let me = Locality::parse("us-west/zone1/a");
        assert_eq!(plan(None, false, &me, &EPS), None);
        assert_eq!(
            plan(None, true, &me, &EPS),
            Some(Plan::Priorities(vec![0, 1, 2, 3, 3]))
        );
        let failover = LocalityLoadBalancerSetting {
            failover: vec![LocalityFailover {
                from: "us-west".into(),
                to: "eu-west".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            plan(Some(&failover), true, &me, &EPS),
            Some(Plan::Priorities(vec![0, 1, 2, 4, 3]))
        );
        let off = LocalityLoadBalancerSetting {
            enabled: Some(false),
            ..Default::default()
        };
        assert_eq!(plan(Some(&off), true, &me, &EPS), None);
        assert_eq!(plan(None, true, &Locality::default(), &EPS), None);
        // All in one place: nothing to rank.
        assert_eq!(plan(None, true, &me, &["us-west/zone1/a"; 3]), None);
    }

    #[test]
    fn distribute_gives_each_locality_its_share() {
        let me = Locality::parse("us-west/zone1/a");
        let setting = LocalityLoadBalancerSetting {
            distribute: vec![
                LocalityDistribute {
                    from: "us-east/*".into(),
                    to: [("us-east/*".to_string(), 100)].into(),
                },
                LocalityDistribute {
                    from: "us-west/zone1/*".into(),
                    to: [
                        ("us-west/zone1/*".to_string(), 80),
                        ("us-west/zone2/*".to_string(), 20),
                    ]
                    .into(),
                },
            ],
            ..Default::default()
        };
        // `to` entries in key order: 0 us-west/zone1/*, 1 us-west/zone2/*. Both zone1
        // endpoints split entry 0's 80 %.
        assert_eq!(
            plan(Some(&setting), false, &me, &EPS),
            Some(Plan::Distribute(vec![
                Some((0, 80)),
                Some((0, 80)),
                Some((1, 20)),
                None,
                None
            ]))
        );
        // No rule for this gateway's locality: no locality balancing, not even failover.
        let other = Locality::parse("ap-south/zone1");
        assert_eq!(plan(Some(&setting), false, &other, &EPS), None);
        assert_eq!(plan(Some(&setting), true, &other, &EPS), None);
    }
}
