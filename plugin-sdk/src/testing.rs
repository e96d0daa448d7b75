//! Native test helpers: build request heads, prepare a policy from JSON config, run a
//! small chain, and fix the random sequence. For `cargo test` on the host, where a policy
//! is plain Rust; the same code then runs unchanged inside wasmgate.

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
pub fn prepare<P: Policy>(config: &str) -> P {
    match P::prepare(&binding(), config) {
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

/// Run `current` through `policy` the way the host does: `None` keeps the decision.
pub fn decide<P: Policy>(policy: &P, request: &RequestHead, current: Decision) -> Decision {
    let kept = current.clone();
    match policy.on_request(request, current) {
        Ok(Some(d)) => d,
        Ok(None) => kept,
        Err(e) => panic!("policy failed: {}", e.message),
    }
}
