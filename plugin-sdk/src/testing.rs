//! Native test helpers: build request heads, prepare a policy from JSON config, run a
//! small chain, fix the random sequence, and read the metrics a policy emitted. For
//! `cargo test` on the host, where a policy is plain Rust; the same code then runs
//! unchanged inside wasmgate.

use std::collections::BTreeMap;

use crate::{Binding, Decision, Header, Policy, RequestHead};

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

/// Start a request head: `request("GET", "/path?x=1")`.
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

/// Run `current` through `policy` the way the host does: `None` keeps the decision. As in
/// the host, defining a metric here returns an error.
pub fn decide<P: Policy>(policy: &P, request: &RequestHead, current: Decision) -> Decision {
    let kept = current.clone();
    match phase(Phase::Request, || policy.on_request(request, current)) {
        Ok(Some(d)) => d,
        Ok(None) => kept,
        Err(e) => panic!("policy failed: {}", e.message),
    }
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
