//! First-party fault injection: Istio's `HTTPFaultInjection` for the route the router
//! chose. `delay` adds `fixedDelay` (the host sleeps; the plugin never blocks) and `abort`
//! answers `httpStatus` (or a gRPC status), each for `percentage` of requests, drawn from
//! the host's random numbers. A fault without `percentage` never fires (Istio's rule; the
//! deprecated integer `percent` of a delay still counts).
//!
//! Config: the VirtualService `spec` as JSON, the same as the router's. The embedded
//! router draws its matched route's fault itself, the same way
//! (`wasmgate_config::fault`), and the host applies that in this component's place; so
//! this is called only when a plugin changed the route after the router, or when a
//! `router.wasm` replaces the embedded router.

use wasmgate_config::fault::{self, RouteFault, compile};
use wasmgate_config::raw::VirtualServiceSpec;
use wasmgate_plugin_sdk::host::chance;
use wasmgate_plugin_sdk::{
    Abort, Action, ActionKind, Binding, ConfigError, Edit, PluginError, Policy, Request,
    export_policy,
};

/// Faults by route index.
#[derive(Debug)]
pub struct Fault {
    routes: Vec<Option<RouteFault>>,
}

impl Policy for Fault {
    fn prepare(_binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        let spec: VirtualServiceSpec = serde_json::from_str(config).map_err(|e| ConfigError {
            field: String::new(),
            message: format!("not a VirtualService spec: {e}"),
        })?;
        let routes = spec
            .http
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let fault = r
                    .fault
                    .as_ref()
                    .map(|f| compile(i, f))
                    .transpose()
                    .map_err(|e| ConfigError {
                        field: e.field,
                        message: e.message,
                    })?;
                Ok::<_, ConfigError>(fault.filter(RouteFault::can_fire))
            })
            .collect::<Result<_, _>>()?;
        Ok(Fault { routes })
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        // Each question is a host call: the route first, as most routes have no fault.
        let Some(index) = request.route_index() else {
            return Ok(Edit::keep());
        };
        let Some(Some(route_fault)) = self.routes.get(index as usize) else {
            return Ok(Edit::keep());
        };
        if request.action_kind() != ActionKind::Forward {
            return Ok(Edit::keep());
        }
        let drawn = route_fault.draw(chance);
        let mut edit = Edit::keep();
        if let Some(ms) = drawn.delay_ms {
            edit.delay_ms = Some(ms);
            edit.log_field(fault::LOG_FIELD, fault::LOG_DELAY);
        }
        if let Some(a) = drawn.abort {
            edit.action = Some(Action::Abort(Abort {
                status: a.status,
                grpc_status: a.grpc_status.clone(),
            }));
            edit.log_field(fault::LOG_FIELD, fault::LOG_ABORT);
        }
        Ok(edit)
    }
}

export_policy!(Fault);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_plugin_sdk::testing::{TestRequest, decide, prepare, request, run, seed_random};
    use wasmgate_plugin_sdk::{Decision, Destination, Forward, RouteRef};

    fn routed(index: u32) -> Decision {
        let mut d = Decision::no_route()
            .with_action(Action::Forward(Forward::to(vec![Destination::new("a")])));
        d.route = Some(RouteRef {
            index,
            name: String::new(),
        });
        d
    }

    const SPEC: &str = r#"{"hosts":["ratings"],"http":[
      {"fault":{"abort":{"httpStatus":500,"percentage":{"value":100}}},"route":[{"destination":{"host":"ratings"}}]},
      {"fault":{"delay":{"fixedDelay":"7s","percentage":{"value":100}}},"route":[{"destination":{"host":"ratings"}}]},
      {"fault":{"abort":{"httpStatus":500}},"route":[{"destination":{"host":"ratings"}}]},
      {"fault":{"delay":{"fixedDelay":"1s","percent":100}},"route":[{"destination":{"host":"ratings"}}]},
      {"fault":{"abort":{"httpStatus":503,"percentage":{"value":25}}},"route":[{"destination":{"host":"ratings"}}]},
      {"route":[{"destination":{"host":"ratings"}}]}]}"#;

    /// A request whose decision so far is `decision`.
    fn req(decision: Decision) -> TestRequest {
        request("GET", "/").decision(decision).build()
    }

    #[test]
    fn abort_delay_and_the_no_percentage_rule() {
        let f: Fault = prepare(SPEC);
        let d = run(&f, &req(routed(0)));
        assert!(matches!(d.action, Action::Abort(ref a) if a.status == 500));
        assert_eq!(d.log_fields[0].value, "abort");
        let d = run(&f, &req(routed(1)));
        assert_eq!(d.delay_ms, Some(7000));
        assert!(matches!(d.action, Action::Forward(_)));
        assert_eq!(d.log_fields[0].value, "delay");
        // No percentage: never fires.
        assert!(decide(&f, &req(routed(2))).is_empty());
        // The deprecated integer percent still works for delays.
        assert_eq!(run(&f, &req(routed(3))).delay_ms, Some(1000));
        // A route without a fault, an unrouted request, and a route that no longer
        // forwards are untouched.
        assert!(decide(&f, &req(routed(5))).is_empty());
        assert!(decide(&f, &req(Decision::no_route())).is_empty());
        let answered = routed(0).with_action(Decision::respond(200, "done"));
        assert!(decide(&f, &req(answered)).is_empty());
    }

    #[test]
    fn a_fault_that_cannot_fire_is_dropped_at_prepare() {
        let spec = r#"{"hosts":["r"],"http":[
          {"fault":{"delay":{"fixedDelay":"1s","percentage":{"value":0}},
                    "abort":{"httpStatus":500,"percentage":{"value":0}}},
           "route":[{"destination":{"host":"r"}}]},
          {"fault":{"delay":{"fixedDelay":"1s","percentage":{"value":0}},
                    "abort":{"httpStatus":500,"percentage":{"value":0.001}}},
           "route":[{"destination":{"host":"r"}}]},
          {"fault":{"delay":{"fixedDelay":"1s","percent":0}},
           "route":[{"destination":{"host":"r"}}]}]}"#;
        let f: Fault = prepare(spec);
        assert_eq!(f.routes[0], None, "0 % delay and 0 % abort");
        let kept = f.routes[1].as_ref().expect("a 0.001 % abort can fire");
        assert!(kept.abort.is_some() && kept.delay.is_some());
        assert_eq!(f.routes[2], None, "percent 0 is no percentage");
        assert!(decide(&f, &req(routed(0))).is_empty());
    }

    #[test]
    fn percentage_is_honoured() {
        seed_random(3);
        let f: Fault = prepare(SPEC);
        let req = req(routed(4));
        let aborted = (0..10_000)
            .filter(|_| matches!(decide(&f, &req).action, Some(Action::Abort(_))))
            .count();
        assert!(
            (2_200..=2_800).contains(&aborted),
            "aborted {aborted} of 10000 at 25%"
        );
    }
}
