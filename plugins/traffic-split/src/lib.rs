//! First-party traffic splitting. When the decision forwards to several weighted
//! destinations, pick one: weights are proportions of their sum (Istio >= 1.13), so
//! 80/20, 4/1 and 8000/2000 split alike. A single destination needs no weight. The random
//! number comes from the host, so a seeded gateway splits reproducibly.
//!
//! The first-party router picks among its own route's weighted destinations when it
//! matches (as Envoy draws a weighted cluster when it resolves the route), so the host
//! calls this component only while a decision still forwards to several destinations: a
//! router of the user's own that leaves the pick, or a plugin that rewrote the forward.
//! (A build of it in the plugins directory replaces it and is called for every such
//! forward, the router's pick dropped.)

use wasmgate_plugin_sdk::host::pick_weighted;
use wasmgate_plugin_sdk::{
    Binding, ConfigError, Edit, PluginError, Policy, Request, export_policy,
};

/// Needs no config: it works on the decision the router made.
#[derive(Debug)]
pub struct TrafficSplit;

impl Policy for TrafficSplit {
    fn prepare(_binding: &Binding, _config: &str) -> Result<Self, ConfigError> {
        Ok(TrafficSplit)
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        // Empty unless the decision forwards.
        let weights = request.destination_weights();
        if weights.len() <= 1 {
            return Ok(Edit::keep());
        }
        let chosen = pick_weighted(&weights).ok_or_else(|| PluginError {
            message: "every destination has weight 0".into(),
        })?;
        Ok(Edit {
            pick: u32::try_from(chosen).ok(),
            ..Edit::keep()
        })
    }
}

export_policy!(TrafficSplit);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_plugin_sdk::testing::{
        TestRequest, decide, prepare, request, run, seed_random, try_decide,
    };
    use wasmgate_plugin_sdk::{Action, Decision, Destination, Forward};

    fn dest(subset: &str, weight: u32) -> Destination {
        let mut d = Destination::new("reviews");
        d.subset = Some(subset.into());
        d.weight = weight;
        d
    }

    fn forward(dests: Vec<Destination>) -> Decision {
        Decision::no_route().with_action(Action::Forward(Forward::to(dests)))
    }

    /// A request whose decision so far is `decision`.
    fn req(decision: Decision) -> TestRequest {
        request("GET", "/").decision(decision).build()
    }

    #[test]
    fn eighty_twenty_over_many_draws() {
        seed_random(7);
        let split: TrafficSplit = prepare("null");
        let mut v1 = 0;
        for _ in 0..10_000 {
            let d = run(&split, &req(forward(vec![dest("v1", 80), dest("v2", 20)])));
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
        let one = forward(vec![dest("v1", 0)]);
        assert!(decide(&split, &req(one)).is_empty());
        assert!(decide(&split, &req(Decision::no_route())).is_empty());
        let zero = forward(vec![dest("v1", 0), dest("v2", 0)]);
        let e = try_decide(&split, &req(zero)).expect_err("all weights 0");
        assert_eq!(e.message, "every destination has weight 0");
    }
}
