//! First-party traffic splitting. When the decision forwards to several weighted
//! destinations, pick one: weights are proportions of their sum (Istio >= 1.13), so
//! 80/20, 4/1 and 8000/2000 split alike. A single destination needs no weight. The random
//! number comes from the host, so a seeded gateway splits reproducibly.

use wasmgate_plugin_sdk::host::random_below;
use wasmgate_plugin_sdk::{
    Binding, ConfigError, Decision, Destination, PluginError, Policy, RequestHead, export_policy,
};

/// Needs no config: it works on the decision the router made.
#[derive(Debug)]
pub struct TrafficSplit;

impl Policy for TrafficSplit {
    fn prepare(_binding: &Binding, _config: &str) -> Result<Self, ConfigError> {
        Ok(TrafficSplit)
    }

    fn on_request(
        &self,
        _request: &RequestHead,
        mut current: Decision,
    ) -> Result<Option<Decision>, PluginError> {
        let Some(forward) = current.forward_mut() else {
            return Ok(None);
        };
        if forward.destinations.len() <= 1 {
            return Ok(None);
        }
        let chosen = pick(&forward.destinations, random_below).ok_or_else(|| PluginError {
            message: "every destination has weight 0".into(),
        })?;
        let kept = forward.destinations.swap_remove(chosen);
        forward.destinations = vec![kept];
        Ok(Some(current))
    }
}

/// Index of the destination that `draw(total)` lands on, weights as proportions.
/// `None` when every weight is 0.
pub fn pick(destinations: &[Destination], draw: impl FnOnce(u64) -> u64) -> Option<usize> {
    let total: u64 = destinations.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = draw(total);
    for (i, d) in destinations.iter().enumerate() {
        let w = u64::from(d.weight);
        if ticket < w {
            return Some(i);
        }
        ticket -= w;
    }
    None
}

export_policy!(TrafficSplit);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_plugin_sdk::testing::{decide, prepare, request, seed_random};
    use wasmgate_plugin_sdk::{Action, Forward};

    fn dest(subset: &str, weight: u32) -> Destination {
        let mut d = Destination::new("reviews");
        d.subset = Some(subset.into());
        d.weight = weight;
        d
    }

    fn forward(dests: Vec<Destination>) -> Decision {
        Decision::no_route().with_action(Action::Forward(Forward::to(dests)))
    }

    #[test]
    fn weights_are_proportions_of_their_sum() {
        let dests = [dest("v1", 4), dest("v2", 1)];
        assert_eq!(pick(&dests, |_| 0), Some(0));
        assert_eq!(pick(&dests, |_| 3), Some(0));
        assert_eq!(pick(&dests, |_| 4), Some(1));
        assert_eq!(pick(&dests, |t| t - 1), Some(1));
        assert_eq!(pick(&[dest("v1", 0), dest("v2", 0)], |_| 0), None);
    }

    #[test]
    fn eighty_twenty_over_many_draws() {
        seed_random(7);
        let split: TrafficSplit = prepare("null");
        let req = request("GET", "/").build();
        let mut v1 = 0;
        for _ in 0..10_000 {
            let d = decide(&split, &req, forward(vec![dest("v1", 80), dest("v2", 20)]));
            let Action::Forward(f) = d.action else {
                panic!("not a forward")
            };
            assert_eq!(f.destinations.len(), 1);
            if f.destinations[0].subset.as_deref() == Some("v1") {
                v1 += 1;
            }
        }
        assert!((7_700..=8_300).contains(&v1), "v1 got {v1} of 10000");
    }

    #[test]
    fn single_destination_and_non_forward_are_left_alone() {
        let split: TrafficSplit = prepare("null");
        let req = request("GET", "/").build();
        let one = forward(vec![dest("v1", 0)]);
        assert!(matches!(split.on_request(&req, one), Ok(None)));
        assert!(matches!(
            split.on_request(&req, Decision::no_route()),
            Ok(None)
        ));
        let zero = forward(vec![dest("v1", 0), dest("v2", 0)]);
        assert!(split.on_request(&req, zero).is_err());
    }
}
