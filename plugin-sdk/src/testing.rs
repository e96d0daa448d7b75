//! Native test helpers: prepare a policy from JSON config, build requests and
//! responses, run the request, response and log phases as the host would, grant
//! capabilities, serve outbound calls, fix the clock and the random sequence, and read
//! the metrics a policy emitted. For `cargo test` on the host, where a policy is plain
//! Rust; the same code then runs unchanged inside wasmgate.
//!
//! As in the gateway: the request body is visible only under a request-body interest
//! and within its limit; capabilities are denied until [`grant`]ed (the WasmPlugin's
//! `wasmgate.io/capabilities`); properties set by one policy are seen by the next that
//! runs on the same [`TestRequest`]; an edit is applied to the request's decision the way
//! the host applies it ([`run`]).
//!
//! ```
//! use wasmgate_plugin_sdk::testing::{prepare, request, run};
//! # use wasmgate_plugin_sdk::{Binding, ConfigError, Edit, Policy, PluginError, Request};
//! # struct Deny;
//! # impl Policy for Deny {
//! #     fn prepare(_: &Binding, _: &str) -> Result<Self, ConfigError> { Ok(Deny) }
//! #     fn on_request(&self, r: &Request) -> Result<Edit, PluginError> {
//! #         Ok(if r.header("x-deny").is_some() { Edit::respond(403, "no") } else { Edit::keep() })
//! #     }
//! # }
//! let deny: Deny = prepare("null");
//! let req = request("GET", "/").header("X-Deny", "1").build();
//! assert!(run(&deny, &req).is_final());
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use crate::{Binding, Decision, Edit, Header, LogEntry, Policy, Request, Response, ResponseEdit};

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

/// A request as the gateway hands it to a chain: its head, body, the decision so far
/// and the properties policies set. Build one with [`request`].
#[derive(Debug)]
pub struct TestRequest {
    pub id: String,
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<Header>,
    pub client_address: String,
    pub port: u16,
    pub sni: Option<String>,
    pub gateway: String,
    pub virtual_service: String,
    pub body: Vec<u8>,
    /// The decision so far; [`run`] applies each edit to it.
    pub decision: RefCell<Decision>,
    pub properties: RefCell<BTreeMap<String, String>>,
    /// Response header operations edits made for a local reply (the decision is not a
    /// forward): the host applies them, in order, to the reply it makes.
    pub reply_headers: RefCell<Vec<crate::HeaderMutation>>,
    /// What the policy last held with [`crate::Request::hold_fault`]: the delay and the
    /// abort (the host applies them where fault injection runs; see the WIT).
    pub held_fault: RefCell<Option<(Option<u64>, Option<crate::Abort>)>>,
    /// The header names the policy asked for with the path, in order
    /// ([`crate::Request::header_joined_with_path`]; in the gateway, one host call while
    /// the path has not been read).
    pub read_with_path: RefCell<Vec<String>>,
    /// The body limit of the policy being called (its interest), set by the runners.
    body_limit: Cell<Option<u32>>,
}

impl TestRequest {
    pub(crate) fn visible_body(&self) -> Option<Vec<u8>> {
        let limit = self.body_limit.get()?;
        (self.body.len() <= limit as usize).then(|| self.body.clone())
    }
}

/// Start a request: `request("GET", "/path?x=1")`. It carries the headers the test adds
/// and no others (in the gateway it also carries `host`, `x-request-id` and
/// `x-forwarded-for`/`-proto`); the client is `10.0.0.1`, the decision "no route".
pub fn request(method: &str, path_and_query: &str) -> RequestBuilder {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_and_query, ""),
    };
    RequestBuilder(TestRequest {
        id: "test-request".into(),
        method: method.into(),
        scheme: "http".into(),
        authority: "example.com".into(),
        path: path.into(),
        query: query.into(),
        headers: Vec::new(),
        client_address: "10.0.0.1".into(),
        port: 80,
        sni: None,
        gateway: "default/test-gateway".into(),
        virtual_service: "default/test".into(),
        body: Vec::new(),
        decision: RefCell::new(Decision::no_route()),
        properties: RefCell::new(BTreeMap::new()),
        reply_headers: RefCell::new(Vec::new()),
        held_fault: RefCell::new(None),
        read_with_path: RefCell::new(Vec::new()),
        body_limit: Cell::new(None),
    })
}

/// Builder for a [`TestRequest`].
#[derive(Debug)]
pub struct RequestBuilder(TestRequest);

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
    pub fn client(mut self, address: &str) -> Self {
        self.0.client_address = address.into();
        self
    }
    pub fn sni(mut self, sni: &str) -> Self {
        self.0.sni = Some(sni.into());
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.0.body = body.into();
        self
    }
    /// The decision so far (e.g. what the router decided).
    pub fn decision(self, decision: Decision) -> Self {
        *self.0.decision.borrow_mut() = decision;
        self
    }
    /// A property an earlier policy set.
    pub fn property(self, name: &str, value: &str) -> Self {
        self.0
            .properties
            .borrow_mut()
            .insert(name.into(), value.into());
        self
    }
    pub fn build(self) -> TestRequest {
        self.0
    }
}

/// A response for [`respond`]: `response(200).header("content-type", "text/plain")`.
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: u16,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    pub local: bool,
    body_limit: Cell<Option<u32>>,
}

impl TestResponse {
    pub(crate) fn visible_body(&self) -> Option<Vec<u8>> {
        let limit = self.body_limit.get()?;
        (self.body.len() <= limit as usize).then(|| self.body.clone())
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    /// Made by the gateway rather than the upstream.
    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }
}

/// Start a response with this status.
pub fn response(status: u16) -> TestResponse {
    TestResponse {
        status,
        headers: Vec::new(),
        body: Vec::new(),
        local: false,
        body_limit: Cell::new(None),
    }
}

/// Call `policy`'s `on-request` for `request` as the host does (the body visible per its
/// interest) and return its edit; panics on a plugin error. The request's decision is
/// not changed: [`run`] does that.
pub fn decide<P: Policy>(policy: &P, request: &TestRequest) -> Edit {
    match try_decide(policy, request) {
        Ok(edit) => edit,
        Err(e) => panic!("policy failed: {}", e.message),
    }
}

/// [`decide`], returning the plugin's error instead of panicking.
pub fn try_decide<P: Policy>(
    policy: &P,
    request: &TestRequest,
) -> Result<Edit, crate::PluginError> {
    let interest = phase(Phase::Request, || policy.interest());
    request.body_limit.set(interest.request_body);
    let edit = phase(Phase::Request, || {
        policy.on_request(&Request::test(request))
    });
    request.body_limit.set(None);
    edit
}

/// Call `on-request` and apply the edit to the request's decision, as the host does;
/// return the decision now. Run several policies on one request for a chain. Response
/// header operations meant for a local reply are kept in
/// [`TestRequest::reply_headers`].
pub fn run<P: Policy>(policy: &P, request: &TestRequest) -> Decision {
    let edit = decide(policy, request);
    let left = edit.apply(&mut request.decision.borrow_mut());
    request
        .reply_headers
        .borrow_mut()
        .extend(left.response_headers);
    request.decision.borrow().clone()
}

/// Call `on-response` as the host does (the body visible per the interest); panics on
/// a plugin error, and when the policy did not ask for the response phase (the host
/// would not call it).
pub fn respond<P: Policy>(
    policy: &P,
    request: &TestRequest,
    response: &TestResponse,
) -> ResponseEdit {
    let interest = phase(Phase::Request, || policy.interest());
    assert!(
        interest.response,
        "the policy's interest has no response phase: the gateway never calls on_response"
    );
    response.body_limit.set(interest.response_body);
    let edit = phase(Phase::Request, || {
        policy.on_response(&Request::test(request), &Response::test(response))
    });
    response.body_limit.set(None);
    if let Ok(e) = &edit
        && e.body.is_some()
        && interest.response_body.is_none()
    {
        panic!("the edit replaces the body without a response-body interest: the gateway fails it");
    }
    match edit {
        Ok(e) => e,
        Err(e) => panic!("policy failed: {}", e.message),
    }
}

/// Call `on-log` as the host does; panics when the policy did not ask for the log phase.
pub fn log<P: Policy>(policy: &P, request: &TestRequest, entry: &LogEntry) {
    let interest = phase(Phase::Request, || policy.interest());
    assert!(
        interest.log,
        "the policy's interest has no log phase: the gateway never calls on_log"
    );
    phase(Phase::Request, || {
        policy.on_log(&Request::test(request), entry)
    })
}

/// A log entry for [`log`]: this status, nothing else.
pub fn log_entry(status: u16) -> LogEntry {
    LogEntry {
        status,
        request_bytes: 0,
        response_bytes: 0,
        duration_ns: 0,
        upstream_ns: None,
        response_flags: String::new(),
        upstream_host: String::new(),
        upstream_cluster: String::new(),
    }
}

/// Grant capabilities on this thread, as a WasmPlugin's `wasmgate.io/capabilities`
/// does: `clock`, `state`, `outbound:<host>`. Replaces earlier grants.
#[cfg(not(target_arch = "wasm32"))]
pub fn grant(capabilities: &[&str]) {
    native::GRANTS.with(|g| *g.borrow_mut() = capabilities.iter().map(|c| c.to_string()).collect());
}

/// Fix the wall clock ([`crate::clock::now`]) and state expiry on this thread at
/// `unix_nanos`; `None` follows the real clock again.
#[cfg(not(target_arch = "wasm32"))]
pub fn set_clock(unix_nanos: Option<u64>) {
    native::CLOCK.with(|c| c.set(unix_nanos));
}

/// Serve this thread's outbound calls with `handler` (after [`grant`]ing the hosts).
#[cfg(not(target_arch = "wasm32"))]
pub fn serve_outbound(
    handler: impl Fn(
        &crate::outbound::OutboundRequest,
    ) -> Result<crate::outbound::OutboundResponse, String>
    + 'static,
) {
    native::OUTBOUND.with(|o| *o.borrow_mut() = Some(Box::new(handler)));
}

/// Forget this thread's state store.
#[cfg(not(target_arch = "wasm32"))]
pub fn clear_state() {
    native::STORE.with(|s| s.borrow_mut().clear());
}

/// Most properties per request, their largest value and name (as the host's).
pub const MAX_PROPERTIES: usize = 64;
pub const MAX_PROPERTY_VALUE: usize = 4096;
/// The gateway's identity properties (`request.auth.*`, `source.*`) may be larger.
pub const MAX_IDENTITY_PROPERTY_VALUE: usize = 64 << 10;
pub const MAX_PROPERTY_NAME: usize = 128;

pub(crate) fn set_property(t: &TestRequest, name: &str, value: Option<&str>) -> Result<(), String> {
    let mut props = t.properties.borrow_mut();
    match value {
        None => {
            props.remove(name);
            Ok(())
        }
        Some(v) => {
            if name.is_empty() || name.len() > MAX_PROPERTY_NAME {
                return Err(format!(
                    "property name of {} bytes (1 to {MAX_PROPERTY_NAME})",
                    name.len()
                ));
            }
            let max = if name.starts_with("request.auth.") || name.starts_with("source.") {
                MAX_IDENTITY_PROPERTY_VALUE
            } else {
                MAX_PROPERTY_VALUE
            };
            if v.len() > max {
                return Err(format!("property {name:?}: {} bytes, over {max}", v.len()));
            }
            if !props.contains_key(name) && props.len() >= MAX_PROPERTIES {
                return Err(format!(
                    "property {name:?}: already {MAX_PROPERTIES} properties"
                ));
            }
            props.insert(name.to_string(), v.to_string());
            Ok(())
        }
    }
}

/// The first value of `name` in `query`, percent-decoded (`+` is a space), as the host
/// decodes it.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .find(|(k, _)| decode(k) == name)
        .map(|(_, v)| decode(v))
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// What the host's capabilities do, natively: grants, the clock, the state store and
/// outbound calls, per thread.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod native {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use crate::outbound::{OutboundRequest, OutboundResponse};

    type Handler = Box<dyn Fn(&OutboundRequest) -> Result<OutboundResponse, String>>;
    /// Key -> (value, expiry in Unix nanoseconds).
    type Store = HashMap<String, (Vec<u8>, Option<u64>)>;

    thread_local! {
        pub static GRANTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
        pub static CLOCK: Cell<Option<u64>> = const { Cell::new(None) };
        pub static STORE: RefCell<Store> = RefCell::new(HashMap::new());
        pub static OUTBOUND: RefCell<Option<Handler>> = RefCell::new(None);
    }

    /// As the host matches grants: `outbound:*.example.com` grants its subdomains.
    fn matches(grant: &str, capability: &str) -> bool {
        if grant == capability {
            return true;
        }
        match (
            grant.strip_prefix("outbound:*."),
            capability.strip_prefix("outbound:"),
        ) {
            (Some(suffix), Some(host)) => {
                host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}"))
            }
            _ => false,
        }
    }

    fn granted(capability: &str) -> Result<(), String> {
        if GRANTS.with(|g| g.borrow().iter().any(|c| matches(c, capability))) {
            Ok(())
        } else {
            Err(format!(
                "not granted: add `{capability}` to the WasmPlugin's \
                 wasmgate.io/capabilities annotation (natively: testing::grant)"
            ))
        }
    }

    fn now() -> u64 {
        CLOCK.with(Cell::get).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        })
    }

    pub fn clock_now() -> Result<u64, String> {
        granted("clock")?;
        Ok(now())
    }

    pub fn outbound_call(request: &OutboundRequest) -> Result<OutboundResponse, String> {
        let host = crate::testing::authority_host(&request.authority);
        granted(&format!("outbound:{host}"))?;
        OUTBOUND.with(|o| match &*o.borrow() {
            Some(handler) => handler(request),
            None => Err("no outbound handler: call testing::serve_outbound".into()),
        })
    }

    pub mod state {
        use super::{STORE, granted, now};

        const MAX_KEY: usize = 256;
        const MAX_VALUE: usize = 64 << 10;
        const MAX_KEYS: usize = 10_000;
        const MAX_BYTES: usize = 16 << 20;

        fn expiry(ttl: Option<u64>) -> Option<u64> {
            ttl.map(|ms| now().saturating_add(ms.saturating_mul(1_000_000)))
        }

        fn live(key: &str) -> Option<Vec<u8>> {
            let t = now();
            STORE.with(|s| {
                let mut s = s.borrow_mut();
                match s.get(key) {
                    Some((_, Some(exp))) if *exp <= t => {
                        s.remove(key);
                        None
                    }
                    Some((v, _)) => Some(v.clone()),
                    None => None,
                }
            })
        }

        fn check(key: &str, value: Option<&[u8]>) -> Result<(), String> {
            granted("state")?;
            if key.len() > MAX_KEY {
                return Err(format!("key of {} bytes, over {MAX_KEY}", key.len()));
            }
            if let Some(v) = value
                && v.len() > MAX_VALUE
            {
                return Err(format!("value of {} bytes, over {MAX_VALUE}", v.len()));
            }
            Ok(())
        }

        fn write(key: &str, value: Vec<u8>, ttl: Option<u64>) -> Result<(), String> {
            let t = now();
            STORE.with(|s| {
                let mut s = s.borrow_mut();
                let held: usize = s
                    .iter()
                    .filter(|(k, _)| k.as_str() != key)
                    .map(|(_, (v, _))| v.len())
                    .sum();
                if held + value.len() > MAX_BYTES {
                    return Err(format!(
                        "the store holds {} MiB of values, its limit",
                        MAX_BYTES >> 20
                    ));
                }
                if !s.contains_key(key) && s.len() >= MAX_KEYS {
                    s.retain(|_, (_, e)| e.is_none_or(|e| e > t));
                    if s.len() >= MAX_KEYS {
                        return Err(format!("the store is full ({MAX_KEYS} keys)"));
                    }
                }
                s.insert(key.to_string(), (value, expiry(ttl)));
                Ok(())
            })
        }

        pub fn get(key: &str) -> Result<Option<Vec<u8>>, String> {
            check(key, None)?;
            Ok(live(key))
        }

        pub fn set(key: &str, value: &[u8], ttl: Option<u64>) -> Result<(), String> {
            check(key, Some(value))?;
            write(key, value.to_vec(), ttl)
        }

        pub fn delete(key: &str) -> Result<bool, String> {
            check(key, None)?;
            let existed = live(key).is_some();
            STORE.with(|s| s.borrow_mut().remove(key));
            Ok(existed)
        }

        pub fn increment(key: &str, delta: i64, ttl: Option<u64>) -> Result<i64, String> {
            check(key, None)?;
            match live(key) {
                None => {
                    write(key, delta.to_le_bytes().to_vec(), ttl)?;
                    Ok(delta)
                }
                Some(v) => {
                    let n = crate::state::counter_value(&v).ok_or_else(|| {
                        format!("key {key:?} holds {} bytes, not a counter", v.len())
                    })?;
                    let n = n.wrapping_add(delta);
                    STORE.with(|s| {
                        if let Some(entry) = s.borrow_mut().get_mut(key) {
                            entry.0 = n.to_le_bytes().to_vec();
                        }
                    });
                    Ok(n)
                }
            }
        }

        pub fn compare_and_swap(
            key: &str,
            expected: Option<&[u8]>,
            value: Option<&[u8]>,
            ttl: Option<u64>,
        ) -> Result<bool, String> {
            check(key, value)?;
            if live(key).as_deref() != expected {
                return Ok(false);
            }
            match value {
                Some(v) => write(key, v.to_vec(), ttl)?,
                None => {
                    STORE.with(|s| s.borrow_mut().remove(key));
                }
            }
            Ok(true)
        }
    }
}

/// The host part of an authority (`host`, `host:port`, `[v6]:port`), lowercase.
pub fn authority_host(authority: &str) -> String {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        }
    };
    host.to_ascii_lowercase()
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
    use crate::{ConfigError, Interest, PluginError};

    /// Answers with the body it saw, under the body limit its config gives.
    struct Echo(Interest);

    impl Policy for Echo {
        fn prepare(_: &Binding, config: &str) -> Result<Self, ConfigError> {
            let limit: Option<u32> = serde_json::from_str(config).map_err(|e| ConfigError {
                field: String::new(),
                message: e.to_string(),
            })?;
            Ok(Echo(Interest {
                request_body: limit,
                ..Interest::default()
            }))
        }

        fn interest(&self) -> Interest {
            self.0
        }

        fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
            request
                .set_property("echo.saw", Some("yes"))
                .map_err(|message| PluginError { message })?;
            Ok(match request.body() {
                Some(body) => Edit::respond(200, body),
                None => Edit::respond(204, ""),
            })
        }
    }

    fn status(d: &Decision) -> u16 {
        match &d.action {
            crate::Action::Respond(r) => r.status,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_body_is_seen_only_under_an_interest_and_within_its_limit() {
        let req = || request("POST", "/").body("hello").build();
        assert_eq!(status(&run(&prepare::<Echo>("null"), &req())), 204);
        assert_eq!(status(&run(&prepare::<Echo>("5"), &req())), 200);
        assert_eq!(status(&run(&prepare::<Echo>("4"), &req())), 204);
    }

    /// Sets a response header on whatever the decision is, and answers `/deny` itself.
    struct Tag;

    impl Policy for Tag {
        fn prepare(_: &Binding, _: &str) -> Result<Self, ConfigError> {
            Ok(Tag)
        }

        fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
            let mut edit = if request.path() == "/deny" {
                Edit::respond(403, "no")
            } else {
                Edit::keep()
            };
            edit.set_response_header("x-tag", "1");
            Ok(edit)
        }
    }

    #[test]
    fn header_operations_for_a_local_reply_are_kept() {
        let req = request("GET", "/deny").build();
        assert!(run(&Tag, &req).is_final());
        let kept = req.reply_headers.borrow();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].set, vec![Header::new("x-tag", "1")]);
    }

    #[test]
    fn properties_outlive_the_call() {
        let req = request("GET", "/").build();
        run(&prepare::<Echo>("null"), &req);
        assert_eq!(
            req.properties.borrow().get("echo.saw").map(String::as_str),
            Some("yes")
        );
        assert!(set_property(&req, "", Some("x")).is_err());
        assert!(set_property(&req, "big", Some(&"x".repeat(MAX_PROPERTY_VALUE + 1))).is_err());
    }

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            query_param("a=1&b=x+y%21&b=2", "b").as_deref(),
            Some("x y!")
        );
        assert_eq!(query_param("flag&a=1", "flag").as_deref(), Some(""));
        assert_eq!(query_param("a=%zz%4", "a").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("", "a"), None);
    }

    #[test]
    fn capabilities_are_denied_until_granted() {
        grant(&[]);
        assert!(crate::clock::now().is_err());
        assert!(
            crate::state::get("k")
                .expect_err("denied")
                .contains("wasmgate.io/capabilities")
        );
        grant(&["clock", "state"]);
        set_clock(Some(1_000_000_000));
        assert_eq!(crate::clock::now_secs(), Ok(1));
        crate::state::set("k", b"v", Some(std::time::Duration::from_millis(10))).expect("set");
        assert_eq!(crate::state::get("k"), Ok(Some(b"v".to_vec())));
        set_clock(Some(1_010_000_000));
        assert_eq!(crate::state::get("k"), Ok(None), "expired");
        assert!(crate::state::increment("k", 1, None).is_ok());
        crate::state::set("s", b"text", None).expect("set");
        assert!(crate::state::increment("s", 1, None).is_err());
        let call = crate::outbound::OutboundRequest::get("auth.example.com:8080", "/check");
        assert!(crate::outbound::call(&call).is_err(), "host not granted");
        grant(&["outbound:auth.example.com"]);
        serve_outbound(|r| {
            Ok(crate::outbound::OutboundResponse {
                status: 200,
                headers: vec![Header::new("x-path", &r.path)],
                body: Vec::new(),
            })
        });
        let answer = crate::outbound::call(&call).expect("served");
        assert_eq!(answer.header("X-Path"), Some("/check"));
        // As the host: a wildcard grants subdomains, not the domain itself.
        grant(&["outbound:*.example.com"]);
        assert!(crate::outbound::call(&call).is_ok());
        let apex = crate::outbound::OutboundRequest::get("example.com", "/");
        assert!(crate::outbound::call(&apex).is_err());
        set_clock(None);
        clear_state();
    }
}
