//! Locality-aware load balancing, as Istio sets it up for Envoy: where this gateway is
//! (`--locality region/zone/subzone`, `--network`, `--workload-labels`) against where
//! each endpoint is (a ServiceEntry endpoint's `locality`, `network` and `labels`),
//! under the DestinationRule's `localityLbSetting`.
//!
//! - `distribute`: the first rule whose `from` matches this gateway's locality gives
//!   each endpoint locality its share of the traffic (`to`, in percent); endpoints in
//!   localities it does not name get none.
//! - Failover (the default, and `failover`): only with `outlierDetection`, as in Istio.
//!   Endpoints get priorities: same region, zone and subzone 0; same zone 1; same region
//!   2; the region `failover` names for this one 3; any other 4 (empty levels are
//!   dropped). Traffic goes to the best priority while it is healthy enough; see the
//!   runtime's `cluster.rs` for the spill-over.
//! - `failoverPriority` (also only with `outlierDetection`): an ordered list of labels.
//!   An endpoint matching the gateway on all of them is priority 0; one whose first
//!   mismatch is the `j`-th label (from 0) gets `n - j`. `label=value` compares the
//!   endpoint with `value` instead of the gateway. The topology labels
//!   (`topology.istio.io/network`, `topology.kubernetes.io/region`,
//!   `topology.kubernetes.io/zone`, `topology.istio.io/subzone`) are read from network
//!   and locality, as Istio adds them to both sides. With `failover` as well, each
//!   label priority is split by locality (label priority × 5 + locality priority, as
//!   Istio does); without it, locality plays no part.
//! - No plan with `enabled: false`, without `--locality` (unless `failoverPriority`
//!   has labels to compare), or when every endpoint would land alike.

use std::collections::BTreeMap;

use crate::raw::LocalityLoadBalancerSetting;

/// `failoverPriority`'s `label=value` separator.
const OVERRIDE: char = '=';

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

/// Where the gateway or an endpoint is: locality, network and labels.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub locality: &'a Locality,
    pub network: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl Place<'_> {
    /// Label `key` as `failoverPriority` reads it: the topology labels come from
    /// network and locality when those are set (Istio adds them to proxy and endpoint
    /// labels alike), any other from the labels.
    fn label(&self, key: &str) -> Option<&str> {
        let topology = match key {
            "topology.istio.io/network" => self.network,
            "topology.kubernetes.io/region" => &self.locality.region,
            "topology.kubernetes.io/zone" => &self.locality.zone,
            "topology.istio.io/subzone" => &self.locality.subzone,
            _ => "",
        };
        if topology.is_empty() {
            self.labels.get(key).map(String::as_str)
        } else {
            Some(topology)
        }
    }

    /// Has the gateway anything `failoverPriority` could compare?
    fn has_labels(&self) -> bool {
        !self.labels.is_empty() || !self.network.is_empty() || !self.locality.is_empty()
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

/// The plan for `endpoints` seen from `proxy` (this gateway).
pub fn plan(
    setting: Option<&LocalityLoadBalancerSetting>,
    has_outlier: bool,
    proxy: &Place<'_>,
    endpoints: &[Place<'_>],
) -> Option<Plan> {
    if setting.and_then(|s| s.enabled) == Some(false) {
        return None;
    }
    let distribute = setting.map_or(&[][..], |s| s.distribute.as_slice());
    if !distribute.is_empty() {
        if proxy.locality.is_empty() {
            return None;
        }
        // `distribute` and failover never both apply (Istio): no entry for this
        // gateway's locality means no locality balancing at all.
        let rule = distribute
            .iter()
            .find(|d| proxy.locality.matched_by(&d.from).is_some())?;
        let shares = endpoints
            .iter()
            .map(|e| {
                rule.to
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (pattern, weight))| {
                        e.locality.matched_by(pattern).map(|n| (n, i, *weight))
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
    let failover = setting.map_or(&[][..], |s| s.failover.as_slice());
    let by_labels = setting.map_or(&[][..], |s| s.failover_priority.as_slice());
    let raw: Vec<usize> = if by_labels.is_empty() {
        if proxy.locality.is_empty() {
            return None;
        }
        endpoints
            .iter()
            .map(|e| locality_rank(proxy.locality, e.locality, failover))
            .collect()
    } else {
        let with_locality = !failover.is_empty() && !proxy.locality.is_empty();
        endpoints
            .iter()
            .map(|e| {
                // Istio ranks by labels only when the proxy has labels to compare.
                let by_label = if proxy.has_labels() {
                    label_rank(by_labels, proxy, e)
                } else {
                    0
                };
                if with_locality {
                    by_label * 5 + locality_rank(proxy.locality, e.locality, failover)
                } else {
                    by_label
                }
            })
            .collect()
    };
    // Compact: the levels that have endpoints, renumbered from 0.
    let mut used = raw.clone();
    used.sort_unstable();
    used.dedup();
    if used.len() < 2 {
        return None;
    }
    let ranks = raw
        .iter()
        .map(|p| used.iter().position(|u| u == p).unwrap_or(0))
        .map(|r| u8::try_from(r).unwrap_or(u8::MAX))
        .collect();
    Some(Plan::Priorities(ranks))
}

/// Istio's locality priority of an endpoint at `at` seen from `proxy`: 0 same
/// subzone, 1 same zone, 2 same region, 3 the region `failover` names for the proxy's
/// (or any other when no entry is for the proxy's region), 4 the rest.
fn locality_rank(
    proxy: &Locality,
    at: &Locality,
    failover: &[crate::raw::LocalityFailover],
) -> usize {
    if at.region == proxy.region {
        return match (at.zone == proxy.zone, at.subzone == proxy.subzone) {
            (true, true) => 0,
            (true, false) => 1,
            (false, _) => 2,
        };
    }
    // The first `failover` entry for this gateway's region, as Istio takes it.
    match failover.iter().find(|f| f.from == proxy.region) {
        Some(f) if f.to != at.region => 4,
        _ => 3,
    }
}

/// `failoverPriority`'s rank of `endpoint`: 0 when it matches on every label, else
/// `n - j` for its first mismatch at label `j`.
fn label_rank(labels: &[String], proxy: &Place<'_>, endpoint: &Place<'_>) -> usize {
    for (j, entry) in labels.iter().enumerate() {
        let (key, wanted) = match entry.split_once(OVERRIDE) {
            Some((key, value)) => (key, Some(value)),
            None => (entry.as_str(), proxy.label(entry)),
        };
        if wanted.unwrap_or_default() != endpoint.label(key).unwrap_or_default() {
            return labels.len() - j;
        }
    }
    0
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

    /// The plan for endpoints at `eps` (no labels, no network) seen from `me`.
    fn at(
        setting: Option<&LocalityLoadBalancerSetting>,
        outlier: bool,
        me: &Locality,
        eps: &[&str],
    ) -> Option<Plan> {
        let none = BTreeMap::new();
        let localities: Vec<Locality> = eps.iter().map(|e| Locality::parse(e)).collect();
        let places: Vec<Place<'_>> = localities
            .iter()
            .map(|locality| Place {
                locality,
                network: "",
                labels: &none,
            })
            .collect();
        let proxy = Place {
            locality: me,
            network: "",
            labels: &none,
        };
        plan(setting, outlier, &proxy, &places)
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn failover_priority_ranks_by_labels_then_locality() {
        let here = Locality::parse("us-west/zone1/a");
        let nowhere = Locality::default();
        let me = labels(&[("tier", "gold"), ("rack", "r1")]);
        let eps = [
            labels(&[("tier", "gold"), ("rack", "r1")]),
            labels(&[("tier", "gold"), ("rack", "r2")]),
            labels(&[("tier", "silver"), ("rack", "r1")]),
            labels(&[]),
        ];
        let setting = LocalityLoadBalancerSetting {
            failover_priority: vec!["tier".into(), "rack".into()],
            ..Default::default()
        };
        let endpoints: Vec<Place<'_>> = eps
            .iter()
            .map(|labels| Place {
                locality: &here,
                network: "net1",
                labels,
            })
            .collect();
        let proxy = Place {
            locality: &nowhere,
            network: "",
            labels: &me,
        };
        // All of them 0; the first mismatch on `rack` (j = 1) 1; on `tier` 2.
        assert_eq!(
            plan(Some(&setting), true, &proxy, &endpoints),
            Some(Plan::Priorities(vec![0, 1, 2, 2]))
        );
        assert_eq!(plan(Some(&setting), false, &proxy, &endpoints), None);
        // `label=value` compares endpoints with the value, not with the gateway.
        let pinned = LocalityLoadBalancerSetting {
            failover_priority: vec!["tier=silver".into()],
            ..Default::default()
        };
        assert_eq!(
            plan(Some(&pinned), true, &proxy, &endpoints),
            Some(Plan::Priorities(vec![1, 1, 0, 1]))
        );
        // Topology labels come from the network and locality on both sides.
        let by_network = LocalityLoadBalancerSetting {
            failover_priority: vec!["topology.istio.io/network".into()],
            ..Default::default()
        };
        let none = BTreeMap::new();
        let on_net1 = Place {
            locality: &nowhere,
            network: "net1",
            labels: &none,
        };
        let elsewhere = [
            endpoints[0],
            Place {
                network: "net2",
                ..endpoints[1]
            },
        ];
        assert_eq!(
            plan(Some(&by_network), true, &on_net1, &elsewhere),
            Some(Plan::Priorities(vec![0, 1]))
        );
        // A gateway with nothing to compare: no label priorities (as in Istio).
        let bare = Place {
            locality: &nowhere,
            network: "",
            labels: &none,
        };
        assert_eq!(plan(Some(&setting), true, &bare, &endpoints), None);
        // With `failover` too, each label level is split by locality.
        let far = Locality::parse("eu-west/zone1/a");
        let mixed = [
            endpoints[0],
            Place {
                locality: &far,
                ..endpoints[0]
            },
            endpoints[2],
        ];
        let proxy_here = Place {
            locality: &here,
            ..proxy
        };
        let both = LocalityLoadBalancerSetting {
            failover_priority: vec!["tier".into()],
            failover: vec![LocalityFailover {
                from: "us-west".into(),
                to: "eu-west".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            plan(Some(&both), true, &proxy_here, &mixed),
            Some(Plan::Priorities(vec![0, 1, 2]))
        );
    }

    #[test]
    fn failover_ranks_by_proximity_only_with_outlier_detection() {
        let me = Locality::parse("us-west/zone1/a");
        assert_eq!(at(None, false, &me, &EPS), None);
        assert_eq!(
            at(None, true, &me, &EPS),
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
            at(Some(&failover), true, &me, &EPS),
            Some(Plan::Priorities(vec![0, 1, 2, 4, 3]))
        );
        let off = LocalityLoadBalancerSetting {
            enabled: Some(false),
            ..Default::default()
        };
        assert_eq!(at(Some(&off), true, &me, &EPS), None);
        assert_eq!(at(None, true, &Locality::default(), &EPS), None);
        // All in one place: nothing to rank.
        assert_eq!(at(None, true, &me, &["us-west/zone1/a"; 3]), None);
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
            at(Some(&setting), false, &me, &EPS),
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
        assert_eq!(at(Some(&setting), false, &other, &EPS), None);
        assert_eq!(at(Some(&setting), true, &other, &EPS), None);
    }
}
