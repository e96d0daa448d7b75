//! An immutable, fully prepared view of one configuration: per listener port, the
//! virtual hosts and, per VirtualService and Gateway, the chain of prepared policies
//! (router -> fault -> traffic split -> user plugins by phase); plus the service registry
//! and the tracer its Telemetries call for. Building one loads and prepares every plugin, so a bad plugin or `pluginConfig` fails
//! the build and the running snapshot stays in place. The proxy only reads snapshots.

pub mod fetch;
pub mod listeners;
pub mod mesh;
pub mod registry;
pub mod route_clusters;
pub mod security;
pub mod vhosts;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use wasmgate_config::model::export;
use wasmgate_config::{
    Config, ConfigError, FailStrategy, Gateway, Meta, Phase, PluginMatch, PluginSource,
    VirtualService, WasmPlugin,
};

pub use crate::cluster::{Cluster, Target};
use crate::plugin::Grants;
use crate::plugin::builtin;
use crate::plugin::context::ChainNames;
use crate::plugin::types::{Binding, Header, HeaderMutation};
use crate::plugin::{
    CompiledPlugin, PluginBytes, PluginError, PluginHost, PolicyPool, PreparedPolicy,
};
use crate::telemetry::metrics::{Metrics, PluginStats, RouteStats};
use crate::telemetry::overrides::{self, TraceBase};
use crate::telemetry::trace::Tracer;
pub use listeners::{Listener, Serve};
pub use mesh::MeshListener;
pub use registry::{Registry, ResolveError};
pub use route_clusters::RouteClusters;

/// The namespace whose WasmPlugins without targets apply everywhere (Istio's root).
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Everything the proxy needs to serve one configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// One per socket address (a server's `bind`, else `--listen-address`, and port).
    pub listeners: BTreeMap<SocketAddr, Arc<Listener>>,
    pub registry: Registry,
    /// How many resources of each kind the configuration holds (for metrics).
    pub resources: Vec<(&'static str, u64)>,
    /// Tracing (`--otlp-endpoint`, tuned by Telemetry): `None` costs nothing per request.
    pub tracer: Option<Tracer>,
    /// What the Telemetries that apply add up to; the metrics and access-log switches are
    /// set from it when the snapshot starts serving (`telemetry::overrides::apply`).
    pub telemetry: wasmgate_config::TelemetrySettings,
    /// A RequestAuthentication names a `jwksUri`: the gateway reloads every
    /// `--jwks-refresh-seconds` to fetch the keys again (rotation).
    pub fetches_jwks: bool,
}

/// One domain on a listener (or HTTPS server) and the VirtualService chains that serve
/// it, in order: when a chain's router finds no route the next chain is tried (Istio
/// merges their routes).
#[derive(Debug)]
pub struct VirtualHost {
    pub domain: String,
    pub chains: Vec<Arc<Chain>>,
    /// The server has `tls.httpsRedirect`: every request gets a 301 to https.
    pub https_redirect: bool,
}

/// The policies run for requests that reach one VirtualService through one Gateway.
#[derive(Debug)]
pub struct Chain {
    /// `namespace/name` of the VirtualService.
    pub virtual_service: String,
    /// The VirtualService's namespace: short destination hosts expand in it.
    pub namespace: String,
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    /// Both names, as the chain's plugins read them.
    pub names: Arc<ChainNames>,
    pub links: Vec<Link>,
    /// Each `http` route's `headers.response` operations, by index: the proxy applies
    /// them to the replies a route makes itself (direct responses, redirects, aborts),
    /// as Envoy applies `response_headers_to_add`; forwards carry them in the decision.
    pub reply_headers: Vec<Option<HeaderMutation>>,
    /// Each `http` route's metrics, by index (`wasmgate_route_*`); empty with metrics off.
    pub route_stats: Vec<Arc<RouteStats>>,
    /// The clusters the routes' destinations resolved to, kept from their first request
    /// (one per VirtualService, shared by its chains).
    pub clusters: Arc<RouteClusters>,
    /// What the links' interests add up to (see [`Chain::wants`]).
    pub wants: Wants,
}

/// What a chain's policies ask for beyond `on-request`: the proxy does the work (buffers
/// a body, keeps the request for the response and log phases) only when one asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wants {
    /// The largest request-body limit of any link.
    pub request_body: Option<u32>,
    /// The largest response-body limit of any link.
    pub response_body: Option<u32>,
    /// Some link has a response phase.
    pub response: bool,
    /// Some link has a log phase.
    pub log: bool,
}

impl Wants {
    /// A phase after the decision runs: the request's view is kept for it.
    pub fn later(&self) -> bool {
        self.response || self.log
    }

    fn of(links: &[Link]) -> Wants {
        let mut w = Wants::default();
        for l in links {
            let i = l.policy.interest();
            w.request_body = w.request_body.max(i.request_body);
            w.response_body = w.response_body.max(i.response_body);
            w.response |= i.response || i.response_body.is_some();
            w.log |= i.log;
        }
        w
    }
}

/// One policy in a chain.
#[derive(Debug)]
pub struct Link {
    pub policy: PreparedPolicy,
    /// Router, fault or traffic split: after the router they act only on forwards.
    pub builtin: bool,
    /// Called only for requests whose matched route is marked here (by index): fault
    /// injection for routes with a `fault`. `None`: every request.
    pub routes: Option<Arc<[bool]>>,
    /// The traffic split's link, called only while the decision forwards to more than
    /// one destination. The router draws the pick among its own route's weighted
    /// destinations when it matches (as Envoy draws a weighted cluster when it resolves
    /// the route); the chain holds it back to this link's place and, for the embedded
    /// split, applies it in place of the call (`proxy::chain`).
    pub split: Option<Split>,
    /// The fault injection's link. The embedded router draws the fault of the route it
    /// matches in its own call (`request.hold-fault`); the chain holds it back to this
    /// link's place and applies it in place of the embedded fault's call (`proxy::chain`).
    pub fault: Option<Fault>,
    /// WasmPlugin `failStrategy: FAIL_OPEN`: a failing call is skipped, not a 500.
    pub fail_open: bool,
    /// A security component (RequestAuthentication, AuthorizationPolicy): it sees every
    /// routed request whatever the decision (a direct response is guarded too), and an
    /// answer of its own (401, 403) ends the chain.
    pub guard: bool,
    /// WasmPlugin `match[].ports`; empty means every port.
    pub ports: Vec<u16>,
    /// Calls, failures and latency of this plugin for this VirtualService (metrics on).
    pub stats: Option<Arc<PluginStats>>,
}

/// Which traffic split a chain's split link calls ([`Link::split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The embedded component: the router's pick stands in for its call.
    Embedded,
    /// A user's `traffic-split.wasm`: called, and the router's pick dropped.
    Replaced,
}

/// What a chain's fault link calls ([`Link::fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The embedded router and fault: the fault the router drew stands in for the call
    /// (the fault component is called only when a plugin set another route since).
    Drawn,
    /// A user's `router.wasm` or `fault.wasm`: the fault component is called.
    Called,
}

/// A first-party link as prepared, before it is put in a chain.
struct FirstLink {
    policy: PreparedPolicy,
    /// See [`Link::routes`].
    routes: Option<Arc<[bool]>>,
    split: Option<Split>,
    fault: Option<Fault>,
}

/// Each route's `headers.response` (see [`Chain::reply_headers`]).
fn reply_headers(vs: &VirtualService) -> Vec<Option<HeaderMutation>> {
    let pairs = |m: &std::collections::BTreeMap<String, String>| -> Vec<Header> {
        m.iter()
            .map(|(name, value)| Header {
                name: name.to_ascii_lowercase(),
                value: value.clone(),
            })
            .collect()
    };
    vs.http
        .iter()
        .map(|route| {
            let ops = route.headers.as_ref()?.response.as_ref()?;
            let m = HeaderMutation {
                set: pairs(&ops.set),
                add: pairs(&ops.add),
                remove: ops.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
            };
            (!m.set.is_empty() || !m.add.is_empty() || !m.remove.is_empty()).then_some(m)
        })
        .collect()
}

impl Link {
    fn new(
        policy: PreparedPolicy,
        builtin: bool,
        fail_open: bool,
        ports: Vec<u16>,
        stats: Option<Arc<PluginStats>>,
    ) -> Self {
        Link {
            policy,
            builtin,
            routes: None,
            split: None,
            fault: None,
            fail_open,
            guard: false,
            ports,
            stats,
        }
    }
}

/// Where user plugins come from.
#[derive(Debug, Clone, Default)]
pub struct PluginSources {
    /// `--plugins DIR`: WasmPlugin `url: name.wasm` resolves here, and `router.wasm`,
    /// `fault.wasm`, `traffic-split.wasm` here replace the embedded components.
    pub dir: Option<PathBuf>,
}

/// Compiled components by the SHA-256 of their bytes, kept across reloads so an
/// unchanged plugin is never compiled twice (nor, for an `http(s)://` url, downloaded
/// twice); and where downloaded modules are kept between runs. Only what the serving
/// snapshot uses is kept: [`CompileCache::begin`] before a build, then
/// [`CompileCache::keep_used`] once it serves, drops every other build (replaced plugins,
/// those of failed reloads), so hot reloads do not grow the process.
#[derive(Debug, Default, Clone)]
pub struct CompileCache {
    compiled: Arc<DashMap<[u8; 32], CompiledPlugin>>,
    /// The keys the build under way has asked for.
    used: Arc<std::sync::Mutex<std::collections::HashSet<[u8; 32]>>>,
    downloads: Option<PathBuf>,
    /// The gateway serves traffic: compiles from now on take only idle CPU.
    serving: Arc<std::sync::atomic::AtomicBool>,
    /// JWKS fetched for RequestAuthentications' `jwksUri`s.
    pub jwks: security::JwksCache,
}

impl CompileCache {
    /// A snapshot build starts: nothing is in use by it yet.
    pub fn begin(&self) {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The build since [`CompileCache::begin`] now serves: forget every other compiled
    /// component.
    pub fn keep_used(&self) {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        self.compiled.retain(|key, _| used.contains(key));
    }

    fn mark(&self, key: [u8; 32]) {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
    }

    /// The gateway serves traffic now: every later compile (a reload's) runs under
    /// `SCHED_IDLE`, Cranelift's worker threads included ([`below_requests`]). The
    /// compiles of the start keep nice 10: nothing is served yet, and a start should not
    /// wait for idle CPU.
    pub fn serving(&self) {
        if !self
            .serving
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            rayon::broadcast(|_| below_requests(true));
        }
    }

    /// How many compiled components are kept.
    pub fn len(&self) -> usize {
        self.compiled.len()
    }

    /// Nothing compiled is kept.
    pub fn is_empty(&self) -> bool {
        self.compiled.is_empty()
    }

    /// Keep downloaded plugins in `dir` ([`fetch`]); `None`: download on every start.
    /// JWKS fetched from a `jwksUri` are fetched again after `refresh`.
    pub fn with_jwks_refresh(mut self, refresh: Duration) -> Self {
        self.jwks = security::JwksCache::new(refresh);
        self
    }

    pub fn with_downloads(mut self, dir: Option<PathBuf>) -> Self {
        self.downloads = dir;
        self
    }

    /// The compiled component whose bytes have the SHA-256 `sha256` (hex), if any.
    fn by_digest(&self, sha256: &str) -> Option<CompiledPlugin> {
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(sha256.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        let hit = self.compiled.get(&key).map(|hit| hit.clone())?;
        self.mark(key);
        Some(hit)
    }

    /// The compiled component for `bytes`: from memory, or compiled on a thread of its
    /// own at a lower priority. Compiling (Cranelift, or reading the disk cache) takes
    /// from milliseconds to a second; on the runtime's own thread it would stall every
    /// connection that thread serves (all of them on one core), so a reload never
    /// compiles there.
    async fn get_or_compile(
        &self,
        host: &PluginHost,
        name: &str,
        plugin: PluginBytes,
    ) -> Result<CompiledPlugin, PluginError> {
        let key = *plugin.sha256();
        self.mark(key);
        if let Some(hit) = self.compiled.get(&key) {
            return Ok(hit.clone());
        }
        let (worker, owned) = (host.clone(), name.to_string());
        let serving = self.serving.load(std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lost = |e: String| PluginError::Load {
            plugin: name.to_string(),
            message: format!("the compiler thread failed: {e}"),
        };
        std::thread::Builder::new()
            .name("wasmgate-compile".into())
            .spawn(move || {
                below_requests(serving);
                let _ = tx.send(worker.compile_bytes(&owned, &plugin));
            })
            .map_err(|e| lost(e.to_string()))?;
        let compiled = rx.await.map_err(|e| lost(e.to_string()))??;
        self.compiled.insert(key, compiled.clone());
        Ok(compiled)
    }
}

/// Lower the calling thread (a compile) below the request threads: once the gateway
/// serves (`idle`), `SCHED_IDLE` ([`crate::priority`]): measured under load in
/// `tests/plugin_reload.rs`, 20 compiles at nice 10 took the requests' p99 beside them
/// from 1.4 to 4.8 ms; under `SCHED_IDLE`, 1.8–2.2 to 1.9–2.7 ms. The compile cache's
/// child process inherits it. Before that (the start's compiles: nothing is served
/// yet, and a start should not wait for idle CPU), nice 10.
fn below_requests(idle: bool) {
    if idle {
        crate::priority::idle("the compiler thread");
    } else {
        crate::priority::below_normal("the compiler thread");
    }
}

fn error(meta: &Meta, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: meta.file.clone(),
        line: None,
        resource: Some(meta.id.clone()),
        field: (!field.is_empty()).then(|| field.to_string()),
        message: message.into(),
    }
}

fn ns_name(meta: &Meta) -> String {
    format!("{}/{}", meta.id.namespace, meta.id.name)
}

impl Snapshot {
    /// Build a snapshot: resolve Gateway x VirtualService bindings, load and prepare
    /// every plugin, load every server's certificates. Servers without `bind` listen on
    /// `listening.address`; `listening.mesh` adds the mesh listener. With `tracing`, the
    /// snapshot gets a tracer tuned by the config's Telemetries. Binds no socket.
    /// All errors are returned together.
    pub async fn build(
        config: &Config,
        host: &PluginHost,
        sources: &PluginSources,
        cache: &CompileCache,
        listening: &Listening,
        metrics: &Arc<Metrics>,
        tracing: Option<&TraceBase>,
    ) -> Result<Snapshot, Vec<ConfigError>> {
        let mut errors = Vec::new();
        // `exportTo`: the Gateway listeners see what is exported to this gateway's
        // namespace, the mesh listener what is exported to its clients' namespace.
        let seen_by = |vs: &VirtualService, namespace: &str| {
            export::exported_to(&vs.spec.export_to, &vs.meta.id.namespace, namespace)
        };
        let on_mesh = |vs: &VirtualService| {
            vs.binds_mesh
                && listening
                    .mesh
                    .as_ref()
                    .is_some_and(|m| seen_by(vs, &m.namespace))
        };

        // Which Gateways each VirtualService is served through.
        let gateways: HashMap<(String, String), &Gateway> = config
            .gateways
            .iter()
            .map(|g| ((g.meta.id.namespace.clone(), g.meta.id.name.clone()), g))
            .collect();
        let bound: Vec<(&VirtualService, Vec<&Gateway>)> = config
            .virtual_services
            .iter()
            .map(|vs| {
                // Not exported to this gateway's namespace: bound to none of its Gateways.
                let seen = seen_by(vs, &listening.seat.namespace);
                let gws = vs
                    .gateways
                    .iter()
                    .filter(|_| seen)
                    .filter_map(|r| {
                        gateways
                            .get(&(r.namespace.clone(), r.name.clone()))
                            .copied()
                    })
                    .collect();
                (vs, gws)
            })
            .filter(|(vs, gws): &(&VirtualService, Vec<&Gateway>)| !gws.is_empty() || on_mesh(vs))
            .collect();

        // Compile the first-party components (or their replacements) once.
        let mut firsts = Vec::new();
        for b in builtin::CHAIN {
            match compile_builtin(b, host, sources, cache).await {
                Ok(c) => {
                    let pool = host.pool(&c);
                    firsts.push((c, pool));
                }
                Err(e) => errors.push(e),
            }
        }
        // Which of them are the embedded ones, not a user's file: the fault's link is
        // `Fault::Drawn` only with the embedded router and fault, and a `fault.wasm` gets
        // the faults the router is then not given.
        let embedded = |name: &str| {
            firsts
                .iter()
                .zip(builtin::CHAIN)
                .any(|((c, _), b)| b.name == name && c.is_embedded())
        };
        let fault_replaced = !embedded(builtin::FAULT);
        let fault_link = if embedded(builtin::ROUTER) && !fault_replaced {
            Fault::Drawn
        } else {
            Fault::Called
        };
        // The security components, only when a policy needs them.
        let mut guards = security::Guards::default();
        if !config.request_authentications.is_empty() {
            match compile_builtin(builtin::JWT_AUTHN, host, sources, cache).await {
                Ok(c) => {
                    // Clock for `exp` and `nbf`; the identity properties are its alone.
                    let grants = Grants {
                        clock: true,
                        identity: true,
                        ..Grants::default()
                    };
                    let pool = host.pool_with(c.name(), &c, Vec::new(), grants);
                    guards.authn = Some((c, pool));
                }
                Err(e) => errors.push(e),
            }
        }
        if !config.authorization_policies.is_empty() {
            match compile_builtin(builtin::AUTHZ, host, sources, cache).await {
                Ok(c) => {
                    let pool = host.pool(&c);
                    guards.authz = Some((c, pool));
                }
                Err(e) => errors.push(e),
            }
        }

        // Compile user plugins once each.
        let mut users: Vec<(&WasmPlugin, CompiledPlugin)> = Vec::new();
        for wp in &config.wasm_plugins {
            if wp.capabilities.global_state && !host.has_global_state() {
                let field = if matches!(wp.source, PluginSource::Builtin(_)) {
                    "spec.pluginConfig.scope"
                } else {
                    "metadata.annotations"
                };
                errors.push(error(
                    &wp.meta,
                    field,
                    "global state is kept in Redis: start wasmgate with --redis redis://HOST:PORT",
                ));
                continue;
            }
            match load_user_plugin(wp, host, sources, cache).await {
                Ok(c) => {
                    if !wp.env.is_empty() && !c.imports_wasi() {
                        tracing::warn!(
                            "{}: {}: spec.vmConfig.env: the plugin imports no WASI, so \
                             it cannot read the environment it is given (build it for \
                             wasm32-wasip1 or wasm32-wasip2)",
                            wp.meta.file.display(),
                            wp.meta.id
                        );
                    }
                    users.push((wp, c));
                }
                Err(e) => errors.push(*e),
            }
        }
        users.sort_by(|(a, _), (b, _)| {
            a.phase
                .cmp(&b.phase)
                .then(b.priority.cmp(&a.priority))
                .then(a.meta.id.cmp(&b.meta.id))
        });
        if !errors.is_empty() {
            return Err(errors);
        }

        // One pool per (WasmPlugin, namespace): instances, their globals and the plugin's
        // state are never shared across namespaces.
        let mut pools: HashMap<(usize, String), PolicyPool> = HashMap::new();
        // Prepare each (plugin, VirtualService) binding once; chains per gateway share them.
        let mut chains: HashMap<(String, String), Arc<Chain>> = HashMap::new();
        for (vs, gws) in &bound {
            let vs_name = ns_name(&vs.meta);
            let binding = |plugin: &str| Binding {
                plugin: plugin.to_string(),
                virtual_service: vs_name.clone(),
                namespace: vs.meta.id.namespace.clone(),
            };
            let vs_json = match serde_json::to_string(&vs.spec) {
                Ok(j) => j,
                Err(e) => {
                    errors.push(error(&vs.meta, "spec", format!("cannot encode: {e}")));
                    continue;
                }
            };
            let mut first_links = Vec::new();
            for ((compiled, pool), builtin) in firsts.iter().zip(builtin::CHAIN) {
                // Fault injection and traffic splitting are bound only where the
                // VirtualService has something for them to do, as Envoy adds its fault
                // filter config only where a route has one: each call not made is about
                // 3 µs per request (docs/benchmarks.md). Per request, likewise, the fault
                // only for the routes that have one, and not when the router drew it
                // (`Link::fault`); the split by what the decision holds (`Link::split`),
                // not by route: a forward a plugin rewrote to several destinations is
                // split too.
                let routes: Option<Arc<[bool]>> = match builtin.name {
                    builtin::FAULT => Some(vs.http.iter().map(|r| r.fault.is_some()).collect()),
                    _ => None,
                };
                let split = (builtin.name == builtin::TRAFFIC_SPLIT).then(|| {
                    if compiled.is_embedded() {
                        Split::Embedded
                    } else {
                        Split::Replaced
                    }
                });
                let fault = (builtin.name == builtin::FAULT).then_some(fault_link);
                if routes.as_ref().is_some_and(|r| !r.contains(&true))
                    || (split.is_some() && !vs.http.iter().any(|r| r.route.len() > 1))
                {
                    continue;
                }
                let config = if split.is_some() {
                    "null".to_string()
                } else if builtin.name == builtin::ROUTER && fault_replaced {
                    // A `fault.wasm` draws the faults itself: the router is not given them
                    // (it would draw for nothing, and shift a seeded run's draws).
                    let mut spec = vs.spec.clone();
                    spec.http.iter_mut().for_each(|r| r.fault = None);
                    match serde_json::to_string(&spec) {
                        Ok(j) => j,
                        Err(e) => {
                            errors.push(error(&vs.meta, "spec", format!("cannot encode: {e}")));
                            continue;
                        }
                    }
                } else {
                    vs_json.clone()
                };
                match host
                    .prepare(pool, compiled.name(), binding(compiled.name()), config)
                    .await
                {
                    Ok(policy) => first_links.push(FirstLink {
                        policy,
                        routes,
                        split,
                        fault,
                    }),
                    Err(e) => errors.push(error(
                        &vs.meta,
                        "spec",
                        format!("rejected by {}: {e}", compiled.name()),
                    )),
                }
            }
            let mut vias: Vec<Via<'_>> = gws.iter().map(|g| Via::Gateway(g)).collect();
            if on_mesh(vs) {
                vias.push(Via::Mesh);
            }
            let mut user_links: Vec<(&WasmPlugin, PreparedPolicy)> = Vec::new();
            for (at, (wp, compiled)) in users.iter().enumerate() {
                if !vias.iter().any(|v| applies(wp, vs, *v)) {
                    continue;
                }
                let namespace = &vs.meta.id.namespace;
                let pool = pools
                    .entry((at, namespace.clone()))
                    .or_insert_with(|| {
                        let name = ns_name(&wp.meta);
                        let grants = host.grants(&name, namespace, &wp.capabilities);
                        host.pool_with(&name, compiled, wp.env.clone(), grants)
                    })
                    .clone();
                let config = match serde_json::to_string(&wp.plugin_config) {
                    Ok(c) => c,
                    Err(e) => {
                        errors.push(error(&wp.meta, "spec.pluginConfig", e.to_string()));
                        continue;
                    }
                };
                let name = ns_name(&wp.meta);
                match host.prepare(&pool, &name, binding(&name), config).await {
                    Ok(p) => user_links.push((wp, p)),
                    Err(PluginError::Config { field, message, .. }) => errors.push(error(
                        &wp.meta,
                        &format!("spec.pluginConfig{field}"),
                        format!("{message} (for {})", vs.meta.id),
                    )),
                    Err(e) => errors.push(error(&wp.meta, "spec.url", e.to_string())),
                }
            }
            let clusters = Arc::new(RouteClusters::new(&vs.http));
            for via in vias {
                let stats = |p: &PreparedPolicy| {
                    metrics
                        .enabled
                        .then(|| metrics.plugin(p.plugin_name(), &vs_name))
                };
                let first = |f: &FirstLink| Link {
                    routes: f.routes.clone(),
                    split: f.split,
                    fault: f.fault,
                    ..Link::new(f.policy.clone(), true, false, Vec::new(), stats(&f.policy))
                };
                let user = |(wp, p): &&(&WasmPlugin, PreparedPolicy)| {
                    Link::new(
                        p.clone(),
                        false,
                        wp.fail_strategy == FailStrategy::FailOpen,
                        match &wp.traffic {
                            PluginMatch::Ports(ports) => ports.clone(),
                            PluginMatch::Everywhere | PluginMatch::Nowhere => Vec::new(),
                        },
                        stats(p),
                    )
                };
                // Not `builtin`: security sees every routed request (see `Link::guard`).
                let guard = |p: &PreparedPolicy| Link {
                    guard: true,
                    ..Link::new(p.clone(), false, false, Vec::new(), stats(p))
                };
                let (authn, authz) = match guards
                    .prepare(
                        host,
                        config,
                        vs,
                        via,
                        &cache.jwks,
                        listening.trusted_proxies,
                    )
                    .await
                {
                    Ok(links) => links,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                let applied: Vec<&(&WasmPlugin, PreparedPolicy)> = user_links
                    .iter()
                    .filter(|(wp, _)| applies(wp, vs, via))
                    .collect();
                let phase =
                    |want: Phase| move |(wp, _): &&&(&WasmPlugin, PreparedPolicy)| wp.phase == want;
                let early = |(wp, _): &&&(&WasmPlugin, PreparedPolicy)| {
                    matches!(wp.phase, Phase::Authn | Phase::Authz)
                };
                // router, AUTHN plugins, JWT authentication, AUTHZ plugins, authorization,
                // fault, traffic split, STATS/unset plugins: Istio's relative order of Wasm
                // phases, its security filters and its fault filter.
                let mut links = Vec::new();
                links.extend(first_links.first().map(first));
                links.extend(applied.iter().filter(phase(Phase::Authn)).map(user));
                links.extend(authn.as_ref().map(guard));
                links.extend(applied.iter().filter(phase(Phase::Authz)).map(user));
                links.extend(authz.as_ref().map(guard));
                links.extend(first_links.iter().skip(1).map(first));
                links.extend(applied.iter().filter(|l| !early(l)).map(user));
                let wants = Wants::of(&links);
                let chain = Chain {
                    wants,
                    names: Arc::new(ChainNames {
                        gateway: via.name(),
                        virtual_service: vs_name.clone(),
                    }),
                    virtual_service: vs_name.clone(),
                    namespace: vs.meta.id.namespace.clone(),
                    gateway: via.name(),
                    links,
                    reply_headers: reply_headers(vs),
                    route_stats: vs
                        .http
                        .iter()
                        .filter(|_| metrics.enabled)
                        .enumerate()
                        .map(|(i, r)| {
                            let route = if r.name.is_empty() {
                                format!("http[{i}]")
                            } else {
                                r.name.clone()
                            };
                            metrics.route(&vs_name, &route)
                        })
                        .collect(),
                    clusters: clusters.clone(),
                };
                chains.insert((vs_name.clone(), via.name()), Arc::new(chain));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let mut listeners = listeners::build(
            config,
            &bound,
            &chains,
            listening.address,
            unix_now(),
            &mut errors,
        );
        if let Some(mesh) = &listening.mesh {
            // Istio's default route for every declared service no VirtualService
            // covers: a router of its own, so the mesh listener has one path.
            let mesh_bound: Vec<&VirtualService> = bound
                .iter()
                .map(|(vs, _)| *vs)
                .filter(|vs| on_mesh(vs))
                .collect();
            let mut defaults = Vec::new();
            if let Some((router, pool)) = firsts.first() {
                for (fqdn, se) in mesh::uncovered(config, &mesh_bound, &listening.seat.namespace) {
                    let spec = mesh::default_route(se, &fqdn);
                    let json = serde_json::to_string(&spec).unwrap_or_default();
                    let name = format!("{}/{fqdn}", mesh::MESH);
                    let binding = Binding {
                        plugin: router.name().to_string(),
                        virtual_service: name.clone(),
                        namespace: se.meta.id.namespace.clone(),
                    };
                    match host.prepare(pool, router.name(), binding, json).await {
                        Ok(policy) => defaults.push((
                            fqdn.clone(),
                            Arc::new(Chain {
                                links: vec![Link::new(
                                    policy,
                                    true,
                                    false,
                                    Vec::new(),
                                    metrics
                                        .enabled
                                        .then(|| metrics.plugin(router.name(), &name)),
                                )],
                                names: Arc::new(ChainNames {
                                    gateway: mesh::MESH.to_string(),
                                    virtual_service: name.clone(),
                                }),
                                virtual_service: name,
                                namespace: se.meta.id.namespace.clone(),
                                gateway: mesh::MESH.to_string(),
                                reply_headers: Vec::new(),
                                route_stats: Vec::new(),
                                clusters: Arc::new(RouteClusters::new(&spec.http)),
                                wants: Wants::default(),
                            }),
                        )),
                        Err(e) => errors.push(error(
                            &se.meta,
                            "spec.hosts",
                            format!("default route for {fqdn}: {e}"),
                        )),
                    }
                }
            }
            let routes = mesh::routes(&mesh_bound, &chains, &defaults, &mesh.namespace);
            if listeners.contains_key(&mesh.addr) {
                errors.push(ConfigError {
                    file: PathBuf::from("--mesh-listener"),
                    line: None,
                    resource: None,
                    field: None,
                    message: format!("{} is also a Gateway server's address", mesh.addr),
                });
            }
            listeners.insert(
                mesh.addr,
                Arc::new(Listener {
                    addr: mesh.addr,
                    serve: Serve::Http(routes),
                    setup: Vec::new(),
                }),
            );
        }
        check_client_tls(config, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let resources = vec![
            ("Gateway", config.gateways.len() as u64),
            ("VirtualService", config.virtual_services.len() as u64),
            ("DestinationRule", config.destination_rules.len() as u64),
            ("ServiceEntry", config.service_entries.len() as u64),
            ("WasmPlugin", config.wasm_plugins.len() as u64),
            ("Secret", config.secrets.len() as u64),
            ("Ingress", config.ingresses.len() as u64),
            ("Telemetry", config.telemetries.len() as u64),
        ];
        Ok(Snapshot {
            listeners,
            registry: Registry::new(
                config,
                metrics.clone(),
                listening.registry,
                &listening.seat,
                listening.arrivals.clone(),
            ),
            resources,
            tracer: tracing.and_then(|base| overrides::tracer(base, &config.telemetry)),
            telemetry: config.telemetry.clone(),
            fetches_jwks: config
                .request_authentications
                .iter()
                .flat_map(|ra| &ra.jwt_rules)
                .any(|r| r.jwks.is_none() && !r.jwks_uri.is_empty()),
        })
    }
}

/// Where listeners go: Gateway servers without `bind` on `address`; the mesh listener,
/// when asked for.
#[derive(Debug, Clone)]
pub struct Listening {
    pub address: IpAddr,
    pub mesh: Option<MeshListener>,
    /// `--num-trusted-proxies` (for AuthorizationPolicy's `remote.ip`).
    pub trusted_proxies: u32,
    /// `--max-upstream-connections` and `--max-clusters`: what the registry's clusters
    /// default to and how many it keeps.
    pub registry: registry::Bounds,
    /// `--workload-namespace` (the namespace `exportTo` is read against for the Gateway
    /// listeners and the registry) and `--locality`.
    pub seat: registry::Seat,
    /// When endpoints joined, kept across reloads (slow start).
    pub arrivals: Arc<crate::cluster::warmup::Arrivals>,
}

/// Seconds since the Unix epoch: when certificates must be valid.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What a snapshot build checks of listeners (binds, protocols sharing an address),
/// certificates, keys and CAs (Gateway servers and DestinationRules), without plugins
/// or sockets: `wasmgate validate` runs it.
pub fn check_tls(config: &Config) -> Vec<ConfigError> {
    // Servers without `bind` are grouped as if on one address: which one does not
    // change whether they can share it.
    let mut errors = listeners::check_listeners(config, IpAddr::from([0, 0, 0, 0]));
    errors.extend(listeners::check_server_tls(config, unix_now()));
    check_client_tls(config, &mut errors);
    errors
}

/// Every DestinationRule's TLS origination settings must be usable (certificates,
/// keys, CAs), so a bad one fails the build instead of every request to its host.
fn check_client_tls(config: &Config, errors: &mut Vec<ConfigError>) {
    for dr in &config.destination_rules {
        let policy = |prefix: &str,
                      tls: &Option<wasmgate_config::ClientTls>,
                      ports: &BTreeMap<u16, wasmgate_config::ClientTls>| {
            let mut all: Vec<(String, wasmgate_config::ClientTls)> = Vec::new();
            if let Some(t) = tls {
                all.push((format!("{prefix}.tls"), t.clone()));
            }
            for (port, t) in ports {
                all.push((
                    format!("{prefix}.portLevelSettings[port {port}].tls"),
                    t.clone(),
                ));
            }
            all
        };
        let mut all = policy("spec.trafficPolicy", &dr.tls, &dr.port_tls);
        for (i, subset) in dr.subsets.iter().enumerate() {
            all.extend(policy(
                &format!("spec.subsets[{i}].trafficPolicy"),
                &subset.tls,
                &subset.port_tls,
            ));
        }
        for (field, tls) in all {
            if tls.mode == wasmgate_config::ClientTlsMode::IstioMutual {
                continue;
            }
            if let Err(e) = crate::tls::client::client_config(&tls, false) {
                let field = if e.field.starts_with("spec.") {
                    e.field.clone()
                } else if e.field.is_empty() {
                    field
                } else {
                    format!("{field}.{}", e.field)
                };
                errors.push(error(&dr.meta, &field, e.to_string()));
            }
        }
    }
}

/// Where a VirtualService's chain serves: through a Gateway, or on the mesh listener.
#[derive(Debug, Clone, Copy)]
pub enum Via<'a> {
    Gateway(&'a Gateway),
    Mesh,
}

impl Via<'_> {
    /// `namespace/name` of the Gateway, or `mesh`: what `match.gateways` compares.
    pub fn name(&self) -> String {
        match self {
            Via::Gateway(gw) => ns_name(&gw.meta),
            Via::Mesh => mesh::MESH.to_string(),
        }
    }
}

/// Does WasmPlugin `wp` apply to VirtualService `vs` served through `via`? Never when its
/// `match` selects only SERVER mode. With `targetRefs`: a named VirtualService, or every VirtualService of a named
/// Gateway. With a `selector`: Gateways whose own selector carries those labels (the
/// WasmPlugin selects the gateway workload, as in Istio; the mesh listener has no
/// labels). With neither: every VirtualService in its namespace, or everywhere from the
/// root namespace.
pub fn applies(wp: &WasmPlugin, vs: &VirtualService, via: Via<'_>) -> bool {
    // Only `mode: SERVER` entries: Istio never runs it on a gateway (a CLIENT workload).
    if wp.traffic == PluginMatch::Nowhere {
        return false;
    }
    if !wp.targets.is_empty() {
        return targeted(&wp.targets, vs, via);
    }
    if !wp.selector.is_empty() {
        return selected(&wp.meta.id.namespace, &wp.selector, via);
    }
    in_scope(&wp.meta.id.namespace, &vs.meta.id.namespace)
}

/// Does one of a policy's `targets` name `vs`, or the Gateway it is served through?
pub fn targeted(targets: &[wasmgate_config::TargetRef], vs: &VirtualService, via: Via<'_>) -> bool {
    targets.iter().any(|t| match (t.kind.as_str(), via) {
        ("VirtualService", _) => t.name == vs.meta.id.name && t.namespace == vs.meta.id.namespace,
        ("Gateway", Via::Gateway(gw)) => {
            t.name == gw.meta.id.name && t.namespace == gw.meta.id.namespace
        }
        _ => false,
    })
}

/// Does a policy of namespace `ns` with selector `labels` select the Gateway of `via` (its
/// own selector carries the labels; the mesh listener has none)?
pub fn selected(ns: &str, labels: &BTreeMap<String, String>, via: Via<'_>) -> bool {
    match via {
        Via::Gateway(gw) => {
            in_scope(ns, &gw.meta.id.namespace)
                && labels.iter().all(|(k, v)| gw.selector.get(k) == Some(v))
        }
        Via::Mesh => false,
    }
}

/// A policy of namespace `ns` covers workloads in `workload_ns`, or all from the root
/// namespace.
pub fn in_scope(ns: &str, workload_ns: &str) -> bool {
    ns == ROOT_NAMESPACE || ns == workload_ns
}

/// An embedded first-party component, or the file of the same name in `--plugins` that
/// replaces it, compiled (once: the cache keeps it across reloads).
async fn compile_builtin(
    b: builtin::Builtin,
    host: &PluginHost,
    sources: &PluginSources,
    cache: &CompileCache,
) -> Result<CompiledPlugin, ConfigError> {
    let replaced = sources
        .dir
        .as_ref()
        .map(|d| d.join(format!("{}.wasm", b.name)))
        .filter(|p| p.is_file());
    let at = |file: PathBuf, message: String| ConfigError {
        file,
        line: None,
        resource: None,
        field: None,
        message,
    };
    let plugin = match &replaced {
        Some(path) => PluginBytes::new(
            std::fs::read(path).map_err(|e| at(path.clone(), format!("cannot read: {e}")))?,
        ),
        None => PluginBytes::embedded(b),
    };
    let name = format!("wasmgate/{}", b.name);
    cache
        .get_or_compile(host, &name, plugin)
        .await
        .map_err(|e| {
            at(
                replaced.unwrap_or_else(|| PathBuf::from("<embedded>")),
                e.to_string(),
            )
        })
}

async fn load_user_plugin(
    wp: &WasmPlugin,
    host: &PluginHost,
    sources: &PluginSources,
    cache: &CompileCache,
) -> Result<CompiledPlugin, Box<ConfigError>> {
    let path = match &wp.source {
        PluginSource::Named(name) => {
            let Some(dir) = &sources.dir else {
                return Err(Box::new(error(
                    &wp.meta,
                    "spec.url",
                    format!(
                        "{name:?} names a file in the plugins directory, but no --plugins directory was given"
                    ),
                )));
            };
            let exact = dir.join(name);
            if exact.is_file() || Path::new(name).extension().is_some() {
                exact
            } else {
                dir.join(format!("{name}.wasm"))
            }
        }
        PluginSource::File(path) => path.clone(),
        PluginSource::Remote(url) => return remote_plugin(wp, url, host, cache).await,
        PluginSource::Builtin(name) => {
            let Some(b) = builtin::get(name) else {
                return Err(Box::new(error(
                    &wp.meta,
                    "spec.url",
                    format!("builtin://{name} is not in this build"),
                )));
            };
            return compile_builtin(b, host, sources, cache).await.map_err(|e| {
                Box::new(error(
                    &wp.meta,
                    "spec.url",
                    format!("builtin://{name}: {}", e.message),
                ))
            });
        }
    };
    let plugin = PluginBytes::new(std::fs::read(&path).map_err(|e| {
        Box::new(error(
            &wp.meta,
            "spec.url",
            format!("cannot read {}: {e}", path.display()),
        ))
    })?);
    if let Some(want) = &wp.sha256 {
        let got = crate::tls::cert::hex(plugin.sha256());
        if !got.eq_ignore_ascii_case(want) {
            return Err(Box::new(error(
                &wp.meta,
                "spec.sha256",
                format!("{} has sha256 {got}, not {want}", path.display()),
            )));
        }
    }
    cache
        .get_or_compile(host, &ns_name(&wp.meta), plugin)
        .await
        .map_err(|e| {
            Box::new(match e {
                PluginError::Load { message, .. } => error(
                    &wp.meta,
                    "spec.url",
                    format!("{}: {message}", path.display()),
                ),
                other => error(&wp.meta, "spec.url", other.to_string()),
            })
        })
}

/// A plugin named by an `http(s)://` url: compiled already (a reload that keeps it), or
/// downloaded and checked against its `sha256` ([`fetch`]), then compiled.
async fn remote_plugin(
    wp: &WasmPlugin,
    url: &str,
    host: &PluginHost,
    cache: &CompileCache,
) -> Result<CompiledPlugin, Box<ConfigError>> {
    // Validation refuses an http(s) url without a sha256, and an oci:// one.
    let Some(want) = wp.sha256.as_deref().map(str::to_ascii_lowercase) else {
        return Err(Box::new(error(
            &wp.meta,
            "spec.sha256",
            "sha256 is required with an http(s) url",
        )));
    };
    if let Some(hit) = cache.by_digest(&want) {
        return Ok(hit);
    }
    let bytes = fetch::module(url, &want, cache.downloads.as_deref())
        .await
        .map_err(|e| Box::new(error(&wp.meta, "spec.url", e)))?;
    cache
        .get_or_compile(host, &ns_name(&wp.meta), PluginBytes::new(bytes))
        .await
        .map_err(|e| {
            Box::new(match e {
                PluginError::Load { message, .. } => {
                    error(&wp.meta, "spec.url", format!("{url}: {message}"))
                }
                other => error(&wp.meta, "spec.url", other.to_string()),
            })
        })
}
