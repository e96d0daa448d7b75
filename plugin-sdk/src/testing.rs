//! Native test helpers: build request heads, prepare a policy from JSON config, run it
//! as the host would, fix the random sequence, and read the metrics a policy emitted.
//! For `cargo test` on the host, where a policy is plain Rust; the same code then runs
//! unchanged inside wasmgate.
//!
//! [`decide`] hands the policy what the gateway would: the request head with only the
//! headers its [`Policy::interest`] names (see [`seen_by`]), so a policy that reads a
//! header it did not ask for fails its native test as it would fail in the gateway.

use std::collections::BTreeMap;

use crate::{Binding, Decision, Header, HeaderInterest, Interest, Policy, RequestHead};

/// Fix the random numbers [`crate::host::random_u64`] returns on this thread (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn seed_random(seed: u64) {
    crate::host::seed(seed)
}

/// A binding for tests: plugin `test/plugin`, VirtualService `default/test`.
pub fn binding() -> Binding {
    Binding {
        plugin: "test/plugin".into(),
        virtual_service: "default/test".into(),
        namespace: "default".into(),
    }
}

/// Prepare `P` with `config` (JSON text) for [`binding`]; panics with the config error.
/// Metrics may be defined meanwhile, as in the host's `prepare`.
pub fn prepare<P: Policy>(config: &str) -> P {
    let prepared = phase(Phase::Prepare, || P::prepare(&binding(), config));
    match prepared {
        Ok(p) => p,
        Err(e) => panic!("prepare failed: {}: {}", e.field, e.message),
    }
}

/// Start a request head: `request("GET", "/path?x=1")`. It carries the headers the test
/// adds and no others; in the gateway the request also carries `host`, `x-request-id`
/// and `x-forwarded-for`/`-proto`, and no hop-by-hop headers.
pub fn request(method: &str, path_and_query: &str) -> RequestBuilder {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_and_query, ""),
    };
    RequestBuilder(RequestHead {
        id: "test-request".into(),
        method: method.into(),
        scheme: "http".into(),
        authority: "example.com".into(),
        path: path.into(),
        query: query.into(),
        headers: Vec::new(),
        port: 80,
        gateway: "default/test-gateway".into(),
        virtual_service: "default/test".into(),
    })
}

/// Builder for a [`RequestHead`].
#[derive(Debug)]
pub struct RequestBuilder(RequestHead);

impl RequestBuilder {
    /// Add a header (the name is lowercased, as the gateway passes names); repeat a name
    /// for several values.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.0.headers.push(Header::new(name, value));
        self
    }
    pub fn authority(mut self, authority: &str) -> Self {
        self.0.authority = authority.into();
        self
    }
    pub fn scheme(mut self, scheme: &str) -> Self {
        self.0.scheme = scheme.into();
        self
    }
    pub fn port(mut self, port: u16) -> Self {
        self.0.port = port;
        self
    }
    pub fn gateway(mut self, gateway: &str) -> Self {
        self.0.gateway = gateway.into();
        self
    }
    pub fn build(self) -> RequestHead {
        self.0
    }
}

/// Run `current` through `policy` the way the host does: the policy sees the request
/// head as [`seen_by`] makes it (the headers it asked for, nothing else), and `None`
/// keeps the decision. As in the host, defining a metric here (or in `interest`) returns
/// an error.
pub fn decide<P: Policy>(policy: &P, request: &RequestHead, current: Decision) -> Decision {
    let seen = seen_by(policy, request);
    let kept = current.clone();
    match phase(Phase::Request, || policy.on_request(&seen, current)) {
        Ok(Some(d)) => d,
        Ok(None) => kept,
        Err(e) => panic!("policy failed: {}", e.message),
    }
}

/// The request head the gateway hands `policy` for `request`: every field as is, and of
/// the headers only those its [`Policy::interest`] names.
pub fn seen_by<P: Policy>(policy: &P, request: &RequestHead) -> RequestHead {
    let interest = phase(Phase::Request, || policy.interest());
    visible(&interest, request)
}

/// `request` with only the headers `interest` names, copied the way the host copies
/// them from the HTTP request:
///
/// - `none` (or `named` with no names): no headers;
/// - `all`: every header, grouped by name, each name's values in the order received;
///   names in the order they first appear here (in the gateway, the order of its header
///   map: do not depend on it);
/// - `named`: the names lowercased, sorted and deduplicated; for each in that order,
///   every value the request carries under it, in order. A name that is not a valid
///   HTTP header name matches nothing.
///
/// Header names come out lowercase, as HTTP/2 and the host's header map keep them.
pub fn visible(interest: &Interest, request: &RequestHead) -> RequestHead {
    let lower = |h: &Header| Header {
        name: h.name.to_ascii_lowercase(),
        value: h.value.clone(),
    };
    let headers = match &interest.headers {
        HeaderInterest::None => Vec::new(),
        HeaderInterest::All => {
            let mut order: Vec<String> = Vec::new();
            for h in &request.headers {
                let name = h.name.to_ascii_lowercase();
                if !order.contains(&name) {
                    order.push(name);
                }
            }
            order
                .iter()
                .flat_map(|name| {
                    request
                        .headers
                        .iter()
                        .filter(move |h| h.name.eq_ignore_ascii_case(name))
                        .map(lower)
                })
                .collect()
        }
        HeaderInterest::Named(names) => {
            let mut names: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
            names.sort();
            names.dedup();
            names
                .iter()
                .filter(|n| is_header_name(n))
                .flat_map(|name| {
                    request
                        .headers
                        .iter()
                        .filter(move |h| h.name.eq_ignore_ascii_case(name))
                        .map(move |h| Header {
                            name: name.clone(),
                            value: h.value.clone(),
                        })
                })
                .collect()
        }
    };
    RequestHead {
        headers,
        ..request.clone()
    }
}

/// An HTTP field name: one or more token characters (RFC 9110 5.1).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

use crate::metrics::{Phase, phase};

/// A metric's type, as defined.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricKind {
    Counter,
    Histogram { buckets: Vec<f64> },
}

/// One metric a policy defined on this thread, and what it was given since.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedMetric {
    pub name: String,
    pub help: String,
    pub labels: Vec<String>,
    pub kind: MetricKind,
    /// Counter totals by label values.
    pub counters: BTreeMap<Vec<String>, u64>,
    /// Every histogram observation, in order, by label values.
    pub observations: BTreeMap<Vec<String>, Vec<f64>>,
}

/// The metrics a policy defined and updated on this thread (native only): what
/// `/stats/prometheus` would show, before the host's caps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordedMetrics {
    pub metrics: Vec<RecordedMetric>,
}

impl RecordedMetrics {
    /// The metric defined as `name`.
    pub fn get(&self, name: &str) -> Option<&RecordedMetric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// A counter's total for these label values; 0 when never added to.
    pub fn counter(&self, name: &str, labels: &[&str]) -> u64 {
        let key: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        self.get(name)
            .and_then(|m| m.counters.get(&key))
            .copied()
            .unwrap_or(0)
    }

    /// A histogram's observations for these label values, in order.
    pub fn observations(&self, name: &str, labels: &[&str]) -> &[f64] {
        let key: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        self.get(name)
            .and_then(|m| m.observations.get(&key))
            .map_or(&[], Vec::as_slice)
    }
}

/// What the policies on this thread defined and emitted so far (native only; each test
/// runs on a thread of its own, so a test sees its own).
#[cfg(not(target_arch = "wasm32"))]
pub fn recorded_metrics() -> RecordedMetrics {
    crate::metrics::recorded()
}

/// Forget this thread's metric definitions and values (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn clear_metrics() {
    crate::metrics::reset()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConfigError, PluginError};

    /// Answers with the headers it saw, `name=value` per line, under the interest its
    /// config gives: `null` none, `"*"` all, a list of names.
    struct Echo(Interest);

    impl Policy for Echo {
        fn prepare(_: &Binding, config: &str) -> Result<Self, ConfigError> {
            let wanted: serde_json::Value = crate::parse_config(config)?;
            Ok(Echo(match wanted {
                serde_json::Value::String(s) if s == "*" => Interest {
                    headers: HeaderInterest::All,
                },
                serde_json::Value::Array(names) => Interest {
                    // Not through `Interest::headers`: as a plugin may, unnormalized.
                    headers: HeaderInterest::Named(
                        names
                            .iter()
                            .filter_map(|n| n.as_str().map(String::from))
                            .collect(),
                    ),
                },
                _ => Interest {
                    headers: HeaderInterest::None,
                },
            }))
        }

        fn interest(&self) -> Interest {
            self.0.clone()
        }

        fn on_request(
            &self,
            request: &RequestHead,
            current: Decision,
        ) -> Result<Option<Decision>, PluginError> {
            let seen: Vec<String> = request
                .headers
                .iter()
                .map(|h| format!("{}={}", h.name, h.value))
                .collect();
            let body = seen.join("\n");
            Ok(Some(current.with_action(Decision::respond(200, body))))
        }
    }

    fn seen(config: &str, request: &RequestHead) -> String {
        let policy: Echo = prepare(config);
        match decide(&policy, request, Decision::no_route()).action {
            crate::Action::Respond(r) => String::from_utf8_lossy(&r.body).into_owned(),
            other => panic!("{other:?}"),
        }
    }

    fn sample() -> RequestHead {
        request("GET", "/")
            .header("X-B", "1")
            .header("x-a", "2")
            .header("x-b", "3")
            .header("End-User", "jason")
            .build()
    }

    #[test]
    fn a_policy_without_interest_sees_no_headers() {
        assert_eq!(seen("null", &sample()), "");
    }

    #[test]
    fn named_interest_shows_those_headers_only_sorted_and_lowercase() {
        // As the host normalizes an interest: lowercased, sorted, deduplicated; each
        // name's values in the order received.
        assert_eq!(
            seen(r#"["X-B", "end-user", "x-b", "missing"]"#, &sample()),
            "end-user=jason\nx-b=1\nx-b=3"
        );
        assert_eq!(seen("[]", &sample()), "");
        assert_eq!(seen(r#"["not a name", ""]"#, &sample()), "");
    }

    #[test]
    fn all_interest_groups_values_by_name() {
        assert_eq!(
            seen(r#""*""#, &sample()),
            "x-b=1\nx-b=3\nx-a=2\nend-user=jason"
        );
    }

    #[test]
    fn the_rest_of_the_head_is_unchanged() {
        let req = request("POST", "/p?q=1").port(8080).build();
        let policy: Echo = prepare("null");
        assert_eq!(seen_by(&policy, &req), req);
    }
}
