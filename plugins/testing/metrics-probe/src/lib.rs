//! Test plugin for plugin-defined metrics. At `prepare` it defines a counter
//! `requests_total{method,tenant}` (the tenant from the `x-tenant` header, `none` without
//! one: a label a client controls, so its label sets hit the host's cap) and a histogram
//! `path_bytes{method}` of path lengths. Per request it adds to both, and on a few paths
//! it misbehaves on purpose: `/define` tries to define a metric at request time and
//! answers with the error it got, `/arity` adds with the wrong number of label values,
//! `/quiet` emits nothing. `/spin` also logs, adds one to the request property
//! `probe.spins` (answered in the response header `x-probe-spins`) and then runs for
//! `x-spin-ms` milliseconds (default 10): longer than a first slice, so a test sees that
//! what a call did before the gateway stopped it and made it again is done once.
//! Config: `counterName` and `counterLabels` replace the counter's, so a test can make
//! an invalid definition fail `prepare`.

use serde::Deserialize;
use wasmgate_plugin_sdk::host::{Level, log, monotonic_now};
use wasmgate_plugin_sdk::metrics::{Counter, Histogram};
use wasmgate_plugin_sdk::{
    Binding, ConfigError, Edit, PluginError, Policy, Request, export_policy, parse_config,
};

/// The histogram's bucket bounds, in bytes.
pub const PATH_BUCKETS: [f64; 4] = [1.0, 4.0, 16.0, 64.0];

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    counter_name: String,
    counter_labels: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            counter_name: "requests_total".into(),
            counter_labels: vec!["method".into(), "tenant".into()],
        }
    }
}

#[derive(Debug)]
pub struct Probe {
    requests: Counter,
    path_bytes: Histogram,
}

impl Policy for Probe {
    fn prepare(_binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        let config: Config = parse_config(config)?;
        let labels: Vec<&str> = config.counter_labels.iter().map(String::as_str).collect();
        Ok(Probe {
            requests: Counter::define(
                &config.counter_name,
                "Requests the probe saw, by method and tenant.",
                &labels,
            )?,
            path_bytes: Histogram::define(
                "path_bytes",
                "Length of the request path, in bytes.",
                &["method"],
                &PATH_BUCKETS,
            )?,
        })
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        // Read for every request, so `/quiet` differs from the others by the updates only.
        let tenant = request.header("x-tenant");
        let tenant = tenant.as_deref().unwrap_or("none");
        let method = request.method();
        let path = request.path();
        match path {
            // Nothing emitted: the baseline for timing the updates.
            "/quiet" => return Ok(Edit::keep()),
            "/define" => {
                let message = match Counter::define("late_total", "Too late.", &[]) {
                    Ok(_) => "defined".to_string(),
                    Err(e) => e.message,
                };
                return Ok(Edit::respond(200, message));
            }
            "/arity" => self.requests.add(&[method], 1),
            _ => self.requests.add(&[method, tenant], 1),
        }
        self.path_bytes.observe(&[method], path.len() as f64);
        if path == "/spin" {
            return Ok(spin(request));
        }
        Ok(Edit::keep())
    }
}

/// `/spin`: every effect a call can have, then a wait past a first slice.
fn spin(request: &Request) -> Edit {
    let spins = request
        .property("probe.spins")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let spins = spins.to_string();
    let mut edit = Edit::keep();
    if let Err(e) = request.set_property("probe.spins", Some(&spins)) {
        return Edit::respond(500, e);
    }
    log(Level::Info, &format!("probe spun ({spins})"));
    let ms = request
        .header("x-spin-ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(10);
    let start = monotonic_now();
    while monotonic_now().saturating_sub(start) < ms * 1_000_000 {
        std::hint::spin_loop();
    }
    edit.set_response_header("x-probe-spins", &spins);
    edit
}

export_policy!(Probe);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_plugin_sdk::Header;
    use wasmgate_plugin_sdk::testing::{decide, prepare, recorded_metrics, request, run};

    #[test]
    fn counts_requests_and_observes_path_lengths() {
        let probe: Probe = prepare("null");
        for (method, tenant) in [("GET", "a"), ("GET", "a"), ("POST", "b")] {
            let req = request(method, "/items").header("x-tenant", tenant).build();
            decide(&probe, &req);
        }
        decide(&probe, &request("GET", "/").build());
        let m = recorded_metrics();
        assert_eq!(m.counter("requests_total", &["GET", "a"]), 2);
        assert_eq!(m.counter("requests_total", &["POST", "b"]), 1);
        assert_eq!(m.counter("requests_total", &["GET", "none"]), 1);
        assert_eq!(m.observations("path_bytes", &["GET"]), &[6.0, 6.0, 1.0]);
        let def = m.get("path_bytes").expect("defined");
        assert_eq!(def.labels, vec!["method".to_string()]);
        assert_eq!(def.help, "Length of the request path, in bytes.");
    }

    #[test]
    fn spin_counts_in_a_property_and_answers_it() {
        let probe: Probe = prepare("null");
        let req = request("GET", "/spin").header("x-spin-ms", "1").build();
        run(&probe, &req);
        assert_eq!(
            req.properties
                .borrow()
                .get("probe.spins")
                .map(String::as_str),
            Some("1")
        );
        let kept = req.reply_headers.borrow();
        assert_eq!(kept[0].set, vec![Header::new("x-probe-spins", "1")]);
    }

    #[test]
    fn defining_at_request_time_is_an_error_value() {
        let probe: Probe = prepare("{}");
        let d = run(&probe, &request("GET", "/define").build());
        let wasmgate_plugin_sdk::Action::Respond(r) = d.action else {
            panic!("no answer: {d:?}")
        };
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            "metric \"late_total\": define-counter is allowed in prepare only"
        );
    }

    #[test]
    fn preparing_again_reuses_the_definitions() {
        let a: Probe = prepare("null");
        let b: Probe = prepare("null");
        assert_eq!(a.requests, b.requests);
        assert_eq!(recorded_metrics().metrics.len(), 2);
    }

    #[test]
    fn an_invalid_definition_is_a_config_error() {
        let e = Probe::prepare(
            &wasmgate_plugin_sdk::testing::binding(),
            r#"{"counterLabels": ["le"]}"#,
        )
        .expect_err("le accepted");
        assert_eq!(
            e.message,
            "metric \"requests_total\": label \"le\" is reserved (the host sets it)"
        );
    }

    #[test]
    #[should_panic(expected = "an update gives one value per label")]
    fn a_wrong_number_of_label_values_fails_a_native_test() {
        let probe: Probe = prepare("null");
        decide(&probe, &request("GET", "/arity").build());
    }
}
