//! The plugin host: compiles Wasm policy components once, checks they speak
//! `wasmgate:policy@0.3.0`, prepares them per binding (plugin x VirtualService) and runs
//! them per request from a pool of ready instances (one pool per plugin and namespace).
//! Knows nothing of listeners: the proxy hands it a [`RequestView`] (holding the decision
//! so far) and gets an edit back; likewise for the response and log phases.
//!
//! Always on: the pooling allocator, a per-call epoch deadline, a per-instance memory
//! limit, and a WASI context that grants nothing (stdout/stderr go to the log). A trap
//! discards the instance it happened in; the next request gets a fresh one.
//!
//! One plugin cannot starve the others: a call still running after its first slice
//! finishes on the [`lane`] (a low-priority thread), not on a thread that serves
//! connections, and a binding that keeps trapping is quarantined by its [`breaker`].

mod bindings;
pub mod breaker;
pub mod budget;
pub mod builtin;
/// The epoch thread's millisecond clock, for times a millisecond or two of lag cannot hurt.
pub(crate) mod coarse;
pub mod context;
pub mod diskcache;
mod edits;
mod host;
mod lane;
mod load;
pub mod metrics;
pub mod ops;
pub mod redis;
pub mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use wasmtime::component::{
    Component, ComponentExportIndex, Linker, Resource, ResourceAny, TypedFunc,
};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};

pub use bindings::wasmgate::policy::types;
pub use bindings::{Edit, SharedBox};
use bindings::{Plugin, PluginPre};
pub use breaker::Breaker;
use breaker::{Admit, DEFAULT_COOLDOWN, DEFAULT_FAILURES};
use context::{RequestCtx, ResponseCtx};
pub use context::{RequestView, ResponseView};
use host::{Direct, StoreState, Tick};
pub use host::{Grants, OUTBOUND_MAX, OUTBOUND_MAX_BODY, Random};
use lane::{Lane, Priority};
pub use load::{PluginBytes, WIT_PACKAGE, is_component};

/// How long one call into a plugin may run before it is stopped.
pub const DEFAULT_CALL_BUDGET: Duration = Duration::from_millis(100);
/// The largest linear memory one plugin instance may grow to.
pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;
/// Instances the engine's pool holds for all plugins together, by default.
pub const DEFAULT_POOL_INSTANCES: u32 = 1000;
/// Instances one plugin may have alive at once, by default: far more than calls run at
/// once on a gateway's few threads, even with outbound calls waiting.
pub const DEFAULT_MAX_INSTANCES_PER_PLUGIN: u32 = 256;
/// Memory all instances of one plugin may hold together, by default.
pub const DEFAULT_MEMORY_TOTAL: usize = 512 << 20;
/// CPU one plugin may use per second, by default: one core.
pub const DEFAULT_CPU_PER_SECOND: Duration = Duration::from_secs(1);
/// Epoch tick: the deadline's resolution, and the slice a call may run on its request's
/// thread (between one and two ticks) before it moves to the slow lane.
const TICK: Duration = Duration::from_millis(1);
/// How long a binding's calls start on the slow lane after one ran past its first slice
/// or trapped, and on the faulty lane after one spun and faulted ([`SPUN_TICKS`]).
const SLOW_FOR_MS: u64 = 1000;
/// Ticks (about milliseconds of CPU) a call that faulted must have run for its binding to
/// go to the faulty lane: spinning to a deadline or allocating to a memory limit takes
/// tens of them, a panic none.
const SPUN_TICKS: u32 = 5;
/// Idle instances kept per plugin and snapshot; more are dropped when returned.
const MAX_IDLE: usize = 16;

/// Errors while loading or preparing plugins. Each names the plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{plugin}: {message}")]
    Load { plugin: String, message: String },
    #[error("{plugin}: pluginConfig{field}: {message}")]
    Config {
        plugin: String,
        field: String,
        message: String,
    },
}

/// Why one call failed; the proxy turns it into a response per the failStrategy.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin returned its error value.
    #[error("plugin error: {0}")]
    Returned(String),
    /// The plugin trapped, ran out of time or memory; its instance was discarded.
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// No instance could be made (the instance limit is reached): the gateway is
    /// overloaded, the plugin is not at fault.
    #[error("no plugin instance available: {0}")]
    Unavailable(String),
    /// Not called: the binding's breaker is open after consecutive traps.
    #[error("quarantined after repeated traps: {0}")]
    Quarantined(String),
    /// The call's task was lost (it panicked in the host, or the runtime is shutting
    /// down), and the request's decision with it: the request cannot go on, whatever the
    /// fail strategy.
    #[error("plugin call lost: {0}")]
    Lost(String),
}

impl CallError {
    /// A fault of the plugin's own (trap, deadline, memory), which its breaker counts.
    fn is_fault(&self) -> bool {
        matches!(self, CallError::Trap(_))
    }
}

/// One outbound call a plugin makes, for the gateway to send.
#[derive(Debug, Clone)]
pub struct OutboundCall {
    pub method: String,
    /// As the plugin wrote it: `host` or `host:port`.
    pub authority: String,
    /// The host part, lowercase, expanded in the namespace (already checked against the
    /// grants).
    pub host: String,
    /// The port, when the authority has one.
    pub port: Option<u16>,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The whole exchange, response body included, must end within this; the client
    /// stops it (and lets its connection go) at the deadline.
    pub timeout: Duration,
}

/// Its answer.
#[derive(Debug, Clone)]
pub struct OutboundAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Who sends plugins' outbound calls (the gateway, through its upstream machinery).
pub trait OutboundClient: Send + Sync + 'static {
    fn call(
        &self,
        call: OutboundCall,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<OutboundAnswer, String>> + Send>>;
}

/// Engine, linker and shared host state. One per process; cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<HostInner>,
}

struct HostInner {
    engine: Engine,
    linker: Linker<StoreState>,
    random: Random,
    /// The host's own picks: load balancing, weighted destinations, mirrors.
    balancing: Random,
    call_budget: Duration,
    /// Budget for `prepare`, which parses a whole config (and compiles its regexes).
    prepare_budget: Duration,
    memory_limit: usize,
    compile_cache: Option<diskcache::DiskCache>,
    /// Where calls that outlast their first slice finish.
    lane: Lane,
    /// Where the calls of a binding that faulted within [`SLOW_FOR_MS`] run.
    faulty_lane: Lane,
    breaker_failures: u32,
    breaker_cooldown: Duration,
    /// One breaker per binding (plugin, VirtualService), kept across reloads.
    breakers: DashMap<(String, String), Arc<Breaker>>,
    /// Where plugin-defined metrics go: the process's, once [`PluginHost::report_metrics_to`]
    /// is called; until then one of the host's own that nothing renders.
    metrics: ArcSwap<metrics::Registry>,
    /// The `state` stores, by (plugin, namespace), for the life of the process.
    stores: state::Stores,
    /// Where granted outbound calls go ([`PluginHost::send_outbound_with`]).
    outbound: std::sync::RwLock<Option<Arc<dyn OutboundClient>>>,
    /// `--redis`: where `state:global` stores live.
    redis: Option<Arc<redis::Redis>>,
    /// Each plugin's instances, memory and CPU, by name, kept across reloads.
    budgets: DashMap<String, Arc<budget::Budget>>,
    max_instances_per_plugin: u32,
    memory_total: usize,
    cpu_ticks: u32,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").finish_non_exhaustive()
    }
}

/// Settings for [`PluginHost::new`].
#[derive(Debug, Clone)]
pub struct HostSettings {
    pub random_seed: Option<u64>,
    pub call_budget: Duration,
    pub memory_limit: usize,
    /// Most plugin instances alive at once, across all plugins (the engine's pool).
    pub max_instances: u32,
    /// Most instances one plugin may have alive at once (all its namespaces).
    pub max_instances_per_plugin: u32,
    /// Most linear memory all instances of one plugin may hold together.
    pub memory_total: usize,
    /// CPU one plugin's calls may use per second, all together; zero: unbounded.
    pub cpu_per_second: Duration,
    /// Keep compiled components here between runs ([`diskcache`]); `None` compiles
    /// every time.
    pub compile_cache: Option<std::path::PathBuf>,
    /// How large and old the compile cache may grow.
    pub compile_cache_limits: diskcache::Limits,
    /// Compile cache misses are compiled by a child process (`wasmgate
    /// compile-entry`), so Cranelift's memory is never this process's.
    pub compile_in_child: bool,
    /// Consecutive traps of one binding that open its breaker; 0 never opens it.
    pub breaker_failures: u32,
    /// How long an open breaker keeps its binding out before one request probes it.
    pub breaker_cooldown: Duration,
    /// `--redis` and `--redis-timeout-ms`: where `state:global` lives, and how long one
    /// command may take.
    pub redis: Option<(redis::RedisUrl, Duration)>,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            random_seed: None,
            call_budget: DEFAULT_CALL_BUDGET,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            max_instances: DEFAULT_POOL_INSTANCES,
            max_instances_per_plugin: DEFAULT_MAX_INSTANCES_PER_PLUGIN,
            memory_total: DEFAULT_MEMORY_TOTAL,
            cpu_per_second: DEFAULT_CPU_PER_SECOND,
            compile_cache: None,
            compile_cache_limits: diskcache::Limits::default(),
            compile_in_child: false,
            breaker_failures: DEFAULT_FAILURES,
            breaker_cooldown: DEFAULT_COOLDOWN,
            redis: None,
        }
    }
}

/// The engine plugins run in: pooling allocator sized by `settings`, epoch
/// interruption, the component model. The compile cache's child process (`wasmgate
/// compile-entry`) builds the same one, so what it compiles loads here.
pub fn engine(settings: &HostSettings) -> Result<Engine, String> {
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(settings.max_instances)
        .total_core_instances(settings.max_instances * 4)
        .total_memories(settings.max_instances)
        .total_tables(settings.max_instances * 2)
        .total_stacks(settings.max_instances)
        .max_memory_size(settings.memory_limit);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .wasm_component_model(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    // `WASMGATE_PERF_MAP=1`: name the plugins' compiled functions for `perf`
    // (/tmp/perf-PID.map), for profiling the Wasm side of a call.
    if std::env::var_os("WASMGATE_PERF_MAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Engine::new(&config).map_err(|e| format!("starting wasmtime: {e:#}"))
}

impl PluginHost {
    /// Build the engine (pooling allocator, epochs, async) and the linker with the
    /// host imports and a deny-all WASI. Starts the epoch ticker thread.
    pub fn new(settings: &HostSettings) -> Result<Self, String> {
        let engine = engine(settings)?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| format!("linking host: {e:#}"))?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn(move || {
                let clock = coarse::Ticker::start();
                while let Some(engine) = weak.upgrade() {
                    clock.tick();
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| format!("starting the epoch thread: {e}"))?;

        Ok(PluginHost {
            inner: Arc::new(HostInner {
                engine,
                linker,
                random: Random::new(settings.random_seed),
                // Its own sequence: what plugins draw neither shifts nor reveals the
                // host's picks (and a seed still replays both).
                balancing: Random::new(settings.random_seed.map(|s| s ^ 0x6a09_e667_f3bc_c908)),
                call_budget: settings.call_budget,
                prepare_budget: (settings.call_budget * 10).max(Duration::from_secs(1)),
                memory_limit: settings.memory_limit,
                compile_cache: settings.compile_cache.clone().map(|dir| {
                    let child = settings.compile_in_child.then(|| {
                        diskcache::ChildCompiler::new(
                            &dir,
                            settings.max_instances,
                            settings.memory_limit,
                        )
                    });
                    diskcache::DiskCache::open(dir, settings.compile_cache_limits, child.flatten())
                }),
                lane: Lane::start("wasmgate-slow", Priority::BelowNormal)?,
                faulty_lane: Lane::start("wasmgate-faulty", Priority::Idle)?,
                breaker_failures: settings.breaker_failures,
                breaker_cooldown: settings.breaker_cooldown,
                breakers: DashMap::new(),
                metrics: ArcSwap::from_pointee(metrics::Registry::new(true)),
                stores: state::Stores::default(),
                outbound: std::sync::RwLock::new(None),
                // Its connections live on the runtime that makes the host (the gateway's).
                redis: settings
                    .redis
                    .clone()
                    .zip(tokio::runtime::Handle::try_current().ok())
                    .map(|((url, timeout), rt)| redis::Redis::new(url, timeout, rt)),
                budgets: DashMap::new(),
                max_instances_per_plugin: settings.max_instances_per_plugin,
                memory_total: settings.memory_total,
                cpu_ticks: u32::try_from(settings.cpu_per_second.as_millis() / TICK.as_millis())
                    .unwrap_or(u32::MAX),
            }),
        })
    }

    /// Send plugins' outbound calls with `client`. Pools made before keep the one they had.
    pub fn send_outbound_with(&self, client: Arc<dyn OutboundClient>) {
        if let Ok(mut o) = self.inner.outbound.write() {
            *o = Some(client);
        }
    }

    /// The Redis client `state:global` stores use (`--redis`).
    pub fn global_state(&self) -> Option<Arc<redis::Redis>> {
        self.inner.redis.clone()
    }

    /// Whether `state:global` can be granted (`--redis` was given).
    pub fn has_global_state(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// What a WasmPlugin's capabilities grant its instances serving `namespace`.
    pub fn grants(
        &self,
        plugin: &str,
        namespace: &str,
        caps: &wasmgate_config::model::Capabilities,
    ) -> Grants {
        Grants {
            clock: caps.clock,
            state: caps.state.then(|| match self.inner.redis.clone() {
                Some(redis) if caps.global_state => state::StateStore::Global(Arc::new(
                    redis::RedisStore::new(redis, plugin, namespace),
                )),
                _ => state::StateStore::Local(self.inner.stores.of(plugin, namespace)),
            }),
            outbound: caps.outbound.clone(),
            namespace: namespace.to_string(),
            client: if caps.outbound.is_empty() {
                None
            } else {
                self.inner.outbound.read().ok().and_then(|o| o.clone())
            },
            identity: false,
        }
    }

    /// Put the metrics plugins define into `registry` (the process's, which
    /// `/stats/prometheus` renders). Bindings prepared before keep where they were.
    pub fn report_metrics_to(&self, registry: Arc<metrics::Registry>) {
        self.inner.metrics.store(registry);
    }

    /// Prune the compile cache (when there is one): after the first load, so what the
    /// gateway serves is marked as used first.
    pub fn prune_compile_cache(&self) {
        if let Some(cache) = &self.inner.compile_cache {
            cache.prune();
        }
    }

    /// Where plugin-defined metrics go.
    pub fn metrics(&self) -> Arc<metrics::Registry> {
        self.inner.metrics.load_full()
    }

    /// Every binding's breaker, as ((plugin, VirtualService), breaker), sorted.
    pub fn breakers(&self) -> Vec<((String, String), Arc<Breaker>)> {
        let mut all: Vec<_> = self
            .inner
            .breakers
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The random numbers the host draws for itself (endpoint and weighted destination
    /// picks, mirror percentages), separate from the plugins' [`PluginHost::random`].
    pub fn balancing(&self) -> &Random {
        &self.inner.balancing
    }

    /// The random numbers plugins draw (`random-u64`).
    pub fn random(&self) -> &Random {
        &self.inner.random
    }

    /// Compile a plugin from bytes: a component, or a core module carrying
    /// wit-bindgen's component-type section (made into a component here, with the
    /// WASI preview1 adapter when it imports WASI). `name` is used in errors and logs.
    /// Copies and hashes `bytes` (tests and tools; the gateway's own loads go through
    /// [`PluginHost::compile_bytes`] with the digest computed once).
    pub fn compile(&self, name: &str, bytes: &[u8]) -> Result<CompiledPlugin, PluginError> {
        self.compile_bytes(name, &PluginBytes::new(bytes.to_vec()))
    }

    /// [`PluginHost::compile`] with the digest already known: found in the compile
    /// cache, an embedded component's bytes are not read at all.
    pub fn compile_bytes(
        &self,
        name: &str,
        plugin: &PluginBytes,
    ) -> Result<CompiledPlugin, PluginError> {
        let load_err = |message: String| PluginError::Load {
            plugin: name.to_string(),
            message,
        };
        let (component_bytes, sha256) = plugin.component().map_err(load_err)?;
        let engine = &self.inner.engine;
        let component = match &self.inner.compile_cache {
            Some(cache) => cache.load_or_compile(engine, &sha256, &component_bytes),
            None => Component::new(engine, &component_bytes),
        }
        .map_err(|e| load_err(format!("not a valid Wasm component: {e:#}")))?;
        load::check_world(&self.inner.engine, &component).map_err(load_err)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| load_err(load::explain_link_error(&e)))?;
        let pre = PluginPre::new(pre).map_err(|e| load_err(format!("{e:#}")))?;
        // Only WASI imports can block inside the host (a sleep, a poll); our own imports
        // return at once. Components without them need no timer per call: the epoch
        // deadline alone stops them.
        let may_block = component
            .component_type()
            .imports(&self.inner.engine)
            .any(|(name, _)| name.starts_with("wasi:"));
        let calls_out = component
            .component_type()
            .imports(&self.inner.engine)
            .any(|(name, _)| name.starts_with(&format!("{WIT_PACKAGE}/outbound")));
        let direct = direct_on_request(&self.inner.engine, &component);
        let embedded = builtin::is_embedded(plugin.sha256());
        let direct_mode = match direct {
            None => Direct::No,
            Some(_) if embedded => Direct::Trusted,
            Some(_) => Direct::Restartable,
        };
        Ok(CompiledPlugin {
            inner: Arc::new(CompiledInner {
                name: name.to_string(),
                build: {
                    static BUILDS: AtomicU64 = AtomicU64::new(1);
                    BUILDS.fetch_add(1, Ordering::Relaxed)
                },
                pre,
                may_block,
                calls_out,
                direct,
                direct_mode,
                embedded,
            }),
        })
    }

    /// A fresh pool of instances of `plugin`. A snapshot makes one per plugin and
    /// prepares every binding of that plugin in it.
    pub fn pool(&self, plugin: &CompiledPlugin) -> PolicyPool {
        self.pool_with(plugin.name(), plugin, Vec::new(), Grants::default())
    }

    /// [`PluginHost::pool`] whose instances see `env` (a WasmPlugin's `vmConfig.env`) as
    /// their WASI environment, and nothing else of the host's, and may use what `grants`
    /// allows. A WasmPlugin gets one pool per namespace it serves: no instance (and so no
    /// guest global) is shared across namespaces. `name` (the WasmPlugin's `ns/name`)
    /// keys its budgets and its log lines: two WasmPlugins of one module share nothing.
    pub fn pool_with(
        &self,
        name: &str,
        plugin: &CompiledPlugin,
        env: Vec<(String, String)>,
        grants: Grants,
    ) -> PolicyPool {
        let budget = self
            .inner
            .budgets
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(budget::Budget::new(
                    self.inner.max_instances_per_plugin,
                    self.inner.memory_total,
                    self.inner.cpu_ticks,
                ))
            })
            .clone();
        PolicyPool {
            inner: Arc::new(PoolInner {
                host: self.clone(),
                name: Arc::from(name),
                budget,
                plugin: plugin.clone(),
                idle: (0..crate::workers::slots())
                    .map(|_| Mutex::new(Vec::new()))
                    .collect(),
                idle_per_slot: (MAX_IDLE / crate::workers::slots().max(1)).max(2),
                next_binding: AtomicU32::new(0),
                env,
                waits: plugin.inner.calls_out
                    || matches!(grants.state, Some(state::StateStore::Global(_))),
                grants,
            }),
        }
    }

    /// Prepare one binding (plugin x VirtualService) with its JSON config in `pool`:
    /// calls `prepare` and `interest` in an instance that is then kept as the pool's
    /// first. A config the plugin rejects is a [`PluginError::Config`] naming `name`.
    pub async fn prepare(
        &self,
        pool: &PolicyPool,
        name: &str,
        binding: types::Binding,
        config: String,
    ) -> Result<PreparedPolicy, PluginError> {
        let id = pool.inner.next_binding.fetch_add(1, Ordering::Relaxed);
        let breaker = self
            .inner
            .breakers
            .entry((name.to_string(), binding.virtual_service.clone()))
            .or_insert_with(|| {
                Arc::new(Breaker::new(
                    self.inner.breaker_failures,
                    self.inner.breaker_cooldown,
                ))
            })
            .clone();
        breaker.judge_build(pool.inner.plugin.inner.build);
        let mut policy = PreparedPolicy {
            inner: Arc::new(PreparedInner {
                pool: pool.clone(),
                id,
                name: name.to_string(),
                binding,
                config,
                interest: types::Interest {
                    response: false,
                    log: false,
                    request_body: None,
                    response_body: None,
                },
                metrics: self.inner.metrics.load().plugin(name),
                breaker,
                slow_until: AtomicU64::new(0),
                faulted_until: AtomicU64::new(0),
            }),
        };
        let load_err = |message: String| PluginError::Load {
            plugin: name.to_string(),
            message,
        };
        let mut slot = match pool.inner.take() {
            Some(slot) => slot,
            None => pool
                .inner
                .new_slot(&policy.inner.metrics)
                .await
                .map_err(load_err)?,
        };
        let resource = slot.prepare(&policy.inner).await.map_err(|e| match e {
            SlotError::Config(c) => PluginError::Config {
                plugin: name.to_string(),
                field: if c.field.is_empty() {
                    String::new()
                } else {
                    format!(".{}", c.field)
                },
                message: c.message,
            },
            SlotError::Other(message) => load_err(message),
        })?;
        let budget = self.inner.call_budget;
        slot.begin(budget);
        let guest = slot.plugin.wasmgate_policy_policy().prepared();
        let call = guest.call_interest(&mut slot.store, resource);
        let interest = bounded(budget, call)
            .await
            .map_err(|e| load_err(format!("interest: {e}")))?;
        // Freshly built: no other reference exists yet.
        if let Some(inner) = Arc::get_mut(&mut policy.inner) {
            inner.interest = interest;
        }
        pool.inner.put_back(slot);
        Ok(policy)
    }
}

/// A compiled component, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct CompiledPlugin {
    inner: Arc<CompiledInner>,
}

struct CompiledInner {
    name: String,
    /// Which compile this is, unique in the process: a breaker resets when its binding
    /// gets another build (an address could be reused once the old build is dropped).
    build: u64,
    pre: PluginPre<StoreState>,
    /// Imports WASI, whose host calls may block: each call also gets a timer.
    may_block: bool,
    /// Imports `outbound`: a call may wait up to [`OUTBOUND_MAX`] on the host.
    calls_out: bool,
    /// `on-request`'s export, for a component whose `on-request` is called directly
    /// ([`direct_on_request`]); `None`: through wasmtime's async calls and the slow lane.
    direct: Option<ComponentExportIndex>,
    /// How: run to its end (the embedded first-party components), or for its first
    /// slice only (a user's plugin); [`Direct::No`] when `direct` is `None`.
    direct_mode: Direct,
    /// Exactly one of the embedded components' bytes ([`builtin::is_embedded`]).
    embedded: bool,
}

impl CompiledPlugin {
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Is it one of the embedded components, byte for byte (not a user's replacement)?
    pub fn is_embedded(&self) -> bool {
        self.inner.embedded
    }

    /// Does it import WASI? Only then can it read the environment `vmConfig.env` sets.
    pub fn imports_wasi(&self) -> bool {
        self.inner.may_block
    }
}

impl std::fmt::Debug for CompiledPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPlugin")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// Instances of one plugin, shared by all its bindings in one snapshot. Each instance
/// prepares a binding the first time it serves it and keeps the prepared resource, so a
/// VirtualService's config is parsed once per instance, never per request.
#[derive(Clone)]
pub struct PolicyPool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for PolicyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyPool")
            .field("plugin", &self.inner.plugin.name())
            .finish_non_exhaustive()
    }
}

struct PoolInner {
    host: PluginHost,
    /// The WasmPlugin's `ns/name` (or `wasmgate/<builtin>`).
    name: Arc<str>,
    /// The plugin's instances, memory and CPU, shared with its other pools.
    budget: Arc<budget::Budget>,
    plugin: CompiledPlugin,
    /// Idle instances per worker slot (`workers::slot`): a worker takes its own and
    /// gives them back to its own, so an instance stays on one thread while it is warm.
    /// Boxed: a call takes and returns one, and moving a pointer is cheaper than moving
    /// the instance's handles (measured in the chain's memcpy share).
    #[allow(clippy::vec_box)]
    idle: Box<[Mutex<Vec<Box<Slot>>>]>,
    /// Idle instances a slot keeps at most: [`MAX_IDLE`] for the pool in all, shared
    /// out over the slots (at least two each), worked out once.
    idle_per_slot: usize,
    next_binding: AtomicU32,
    /// The WASI environment of every instance (`vmConfig.env`).
    env: Vec<(String, String)>,
    /// The capabilities every instance has.
    grants: Grants,
    /// Calls may wait on the host's I/O (outbound calls, `state:global`): the wall-clock
    /// guard allows for it, and a waiting call stays on its request's task.
    waits: bool,
}

/// One plugin prepared for one binding. Cheap to clone.
#[derive(Clone)]
pub struct PreparedPolicy {
    inner: Arc<PreparedInner>,
}

impl std::fmt::Debug for PreparedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedPolicy")
            .field("plugin", &self.inner.name)
            .field("binding", &self.inner.binding.virtual_service)
            .finish_non_exhaustive()
    }
}

struct PreparedInner {
    pool: PolicyPool,
    /// Index of this binding within its pool.
    id: u32,
    /// `ns/name` of the WasmPlugin, or `wasmgate/<builtin>`.
    name: String,
    binding: types::Binding,
    config: String,
    interest: types::Interest,
    /// The metrics of the plugin `name`, shared with its other bindings.
    metrics: Arc<metrics::PluginMetrics>,
    breaker: Arc<Breaker>,
    /// Until when (`coarse::millis`) calls start on the slow lane: a call that ran past
    /// its first slice, or trapped (the next call then makes a fresh instance), sends
    /// the binding's calls there for [`SLOW_FOR_MS`]. Not just the
    /// next call: a client that alternates a spinning path with a quick one (a trap, a
    /// plain request) would otherwise have every spin start on a request thread and hold
    /// it for a slice.
    slow_until: AtomicU64,
    /// Until when calls start on the faulty lane (under `SCHED_IDLE`): a call that spun
    /// and then faulted (ran out of time or memory after [`SPUN_TICKS`] of CPU) sends
    /// the binding's calls there for [`SLOW_FOR_MS`], renewed by each such fault, so a
    /// plugin that keeps spinning takes only the CPU that requests leave.
    faulted_until: AtomicU64,
}

impl PreparedInner {
    /// The binding's calls start on the slow lane for the next [`SLOW_FOR_MS`]: when
    /// that ends (`coarse::millis`).
    fn slow_for_a_while(&self) -> u64 {
        let until = coarse::millis().saturating_add(SLOW_FOR_MS);
        self.slow_until.fetch_max(until, Ordering::Relaxed);
        until
    }

    fn quarantined(&self) -> CallError {
        CallError::Quarantined(format!(
            "{} for {}",
            self.name, self.binding.virtual_service
        ))
    }
}

/// One live instance and the bindings it has prepared.
struct Slot {
    store: Store<StoreState>,
    plugin: Plugin,
    /// `on-request` as a synchronous function, for a plugin called directly.
    direct: Option<OnRequest>,
    /// By binding id, which the pool numbers itself ([`crate::int_hash`]).
    prepared: HashMap<u32, ResourceAny, crate::int_hash::BuildIntHasher>,
    /// Counts it in `wasmgate_plugin_instances` while it lives.
    counted: metrics::Instance,
}

impl Slot {
    /// `on-request` called synchronously (`direct_on_request`). It cannot yield: the
    /// epoch callback lets a [`Direct::Trusted`] call run on past its first tick (its
    /// deadline still stops it) and stops a [`Direct::Restartable`] one there
    /// ([`host::StoreState::sliced`]).
    fn call_direct(
        &mut self,
        mode: Direct,
        on_request: OnRequest,
        prepared: ResourceAny,
        request: Resource<RequestCtx>,
    ) -> Result<Result<Edit, types::PluginError>, String> {
        self.store.data_mut().direct = mode;
        let called = on_request.call(&mut self.store, (prepared, request));
        self.store.data_mut().direct = Direct::No;
        self.answered(called.map(|(r,)| r).map_err(|e| load::describe_trap(&e)))
    }

    /// `on-request` answered: the prepared edit it named (`request.use-edit`), if any,
    /// goes under the edit it returned.
    fn answered(
        &mut self,
        result: Result<Result<Edit, types::PluginError>, String>,
    ) -> Result<Result<Edit, types::PluginError>, String> {
        let edits = &mut self.store.data_mut().edits;
        let answer = result.map(|r| r.map(|edit| edits.answer(edit)));
        edits.calling(None);
        answer
    }
}

/// `on-request`'s signature: (prepared, borrow<request>) -> result<edit, plugin-error>.
type OnRequest =
    TypedFunc<(ResourceAny, Resource<RequestCtx>), (Result<Edit, types::PluginError>,)>;

enum SlotError {
    Config(types::ConfigError),
    Other(String),
}

impl PreparedPolicy {
    /// The plugin's name (`ns/name` of its WasmPlugin or `wasmgate/<builtin>`).
    pub fn plugin_name(&self) -> &str {
        &self.inner.name
    }

    /// What this policy takes part in beyond `on-request`.
    pub fn interest(&self) -> &types::Interest {
        &self.inner.interest
    }

    /// This binding's breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.inner.breaker
    }

    /// Decide for one request: the edit to apply to the decision in `view`.
    pub async fn on_request(&self, view: &Arc<RequestView>) -> Result<Edit, CallError> {
        match self.on_request_now(view) {
            Some(now) => now,
            None => self.on_request_called(view).await,
        }
    }

    /// [`PreparedPolicy::on_request`] the way that awaits: after
    /// [`PreparedPolicy::on_request_now`] answered `None` (the chain tries that first,
    /// so it builds no future when it need not).
    pub async fn on_request_called(&self, view: &Arc<RequestView>) -> Result<Edit, CallError> {
        match self.call(view.clone(), Phase::Request).await? {
            Answer::Request(edit) => Ok(edit),
            _ => Err(CallError::Lost("a call answered for another phase".into())),
        }
    }

    /// [`PreparedPolicy::on_request`] without awaiting, for a policy called directly
    /// (`direct_on_request`) that has a ready instance: `None` otherwise, or when a
    /// user's plugin is to start over on the slow lane, and then
    /// [`PreparedPolicy::on_request_called`] is the way.
    pub fn on_request_now(&self, view: &Arc<RequestView>) -> Option<Result<Edit, CallError>> {
        call_now(&self.inner, view)
    }

    /// The response phase (only for a policy whose interest asks for it).
    pub async fn on_response(
        &self,
        view: &Arc<RequestView>,
        response: &Arc<ResponseView>,
    ) -> Result<types::ResponseEdit, CallError> {
        match self
            .call(view.clone(), Phase::Response(response.clone()))
            .await?
        {
            Answer::Response(edit) => Ok(edit),
            _ => Err(CallError::Lost("a call answered for another phase".into())),
        }
    }

    /// The log phase (only for a policy whose interest asks for it).
    pub async fn on_log(
        &self,
        view: &Arc<RequestView>,
        entry: types::LogEntry,
    ) -> Result<(), CallError> {
        self.call(view.clone(), Phase::Log(entry)).await.map(|_| ())
    }

    /// One call. It starts on the caller's task and, if it runs past its first slice,
    /// finishes on the slow lane (so it owns what it reads); for a second after one of
    /// the binding's calls ran long or trapped it starts on the slow lane, and after one
    /// spun and faulted, on the faulty lane ([`SLOW_FOR_MS`], [`SPUN_TICKS`]). An open
    /// breaker answers [`CallError::Quarantined`] without calling.
    async fn call(&self, view: Arc<RequestView>, phase: Phase) -> Result<Answer, CallError> {
        let admit = self.inner.breaker.admit();
        if admit == Admit::Skip {
            return Err(self.inner.quarantined());
        }
        let inner = self.inner.clone();
        // Set while the call waits on an outbound call: it stays on its request's task.
        let waiting = self
            .inner
            .pool
            .inner
            .waits
            .then(|| Arc::new(AtomicBool::new(false)));
        let flag = waiting.clone();
        let call: lane::Call<_> = Box::pin(async move {
            let (result, ticks) = call_once(&inner, view, phase, flag).await;
            // A trap costs the next call a fresh instance: made on the lane too.
            let trapped = result.as_ref().err().is_some_and(CallError::is_fault);
            if ticks > 1 || trapped {
                let until = inner.slow_for_a_while();
                // Spun and then faulted (its deadline, its memory): the faulty lane. Not
                // a quick trap, and not a call that the kernel starved to its deadline
                // there (it saw few ticks): those would keep a plugin that merely
                // panicked once, or a busy machine, on idle CPU.
                if trapped && ticks >= SPUN_TICKS {
                    inner.faulted_until.fetch_max(until, Ordering::Relaxed);
                }
            }
            settle(&inner, admit, result)
        });
        let now = coarse::millis();
        let host = &self.inner.pool.inner.host.inner;
        let (lane, inline) = if now < self.inner.faulted_until.load(Ordering::Relaxed) {
            (&host.faulty_lane, false)
        } else {
            let inline = now >= self.inner.slow_until.load(Ordering::Relaxed);
            (&host.lane, inline)
        };
        let breaker = self.inner.breaker.clone();
        let lost = move |why: String| {
            breaker.abandon(admit);
            Err(CallError::Lost(why))
        };
        lane.run(call, inline, waiting.as_deref(), lost).await
    }
}

/// A call's outcome, counted by its binding's breaker.
fn settle<A>(
    inner: &PreparedInner,
    admit: Admit,
    result: Result<A, CallError>,
) -> Result<A, CallError> {
    let trapped = result.as_ref().err().is_some_and(CallError::is_fault);
    if inner.breaker.record(admit, trapped) {
        tracing::warn!(
            plugin = &*inner.name,
            virtual_service = &*inner.binding.virtual_service,
            "breaker open: calls trapped repeatedly; not called for {:?}",
            inner.pool.inner.host.inner.breaker_cooldown
        );
    } else if admit == Admit::Probe && !trapped {
        tracing::info!(
            plugin = &*inner.name,
            virtual_service = &*inner.binding.virtual_service,
            "breaker closed: the probe call succeeded"
        );
    }
    result
}

/// Which export a call is for, and what it carries beyond the request.
enum Phase {
    Request,
    Response(Arc<ResponseView>),
    Log(types::LogEntry),
}

/// What a call answered. Lives for one call on the stack: not worth a box per call.
#[allow(clippy::large_enum_variant)]
enum Answer {
    Request(Edit),
    Response(types::ResponseEdit),
    Log,
}

/// Does the policy read the body (`limit`), and is it there (whole) and within it?
pub fn fits(limit: Option<u32>, body: Option<&bytes::Bytes>) -> bool {
    match (limit, body) {
        (Some(l), Some(b)) => b.len() <= l as usize,
        _ => false,
    }
}

/// One call into an instance of `binding`'s plugin (prepared on demand); the epoch ticks
/// it saw running ([`host::StoreState::ticks`]).
async fn call_once(
    binding: &PreparedInner,
    view: Arc<RequestView>,
    phase: Phase,
    waiting: Option<Arc<AtomicBool>>,
) -> (Result<Answer, CallError>, u32) {
    let pool = &binding.pool.inner;
    if let Err(why) = pool.budget.may_run() {
        return (Err(CallError::Unavailable(why)), 0);
    }
    // Held until the call ends, whatever way it ends.
    let _occupied = match pool.budget.occupy() {
        Ok(o) => o,
        Err(why) => return (Err(CallError::Unavailable(why)), 0),
    };
    let mut slot = match pool.take() {
        Some(slot) => slot,
        None => {
            let waiting = std::time::Instant::now();
            // Boxed: rare, and its future (instantiation) is large; inline, every call's
            // future would carry (and copy) its size.
            let made = Box::pin(pool.new_slot(&binding.metrics)).await;
            binding.metrics.waited(waiting.elapsed());
            match made {
                Ok(slot) => slot,
                Err(e) => return (Err(CallError::Unavailable(e)), 0),
            }
        }
    };
    let resource = match slot.prepared.get(&binding.id) {
        Some(r) => *r,
        // This instance has not served the binding yet (boxed, as above).
        None => match Box::pin(slot.prepare(binding)).await {
            Ok(r) => r,
            Err(SlotError::Config(c)) => {
                let ticks = slot.store.data().ticks();
                return (
                    Err(CallError::Trap(format!("prepare: {}", c.message))),
                    ticks,
                );
            }
            Err(SlotError::Other(m)) => {
                let ticks = slot.store.data().ticks();
                return (Err(CallError::Trap(m)), ticks);
            }
        },
    };
    let budget = pool.host.inner.call_budget;
    slot.begin(budget);
    slot.store.data_mut().enter(&binding.metrics, false);
    slot.store.data_mut().waiting = waiting;
    let naming = matches!(phase, Phase::Request).then_some(binding.id);
    slot.store.data_mut().edits.calling(naming);
    let body = match &phase {
        Phase::Response(_) => false,
        _ => fits(binding.interest.request_body, view.body.as_ref()),
    };
    let request = slot
        .store
        .data_mut()
        .push_request(RequestCtx { view, body });
    let guest = slot.plugin.wasmgate_policy_policy().prepared();
    // Outbound calls and Redis wait on the host; the wall-clock guard allows for them.
    let wall = budget
        + if pool.waits {
            OUTBOUND_MAX
        } else {
            Duration::ZERO
        };
    let bounded_call = pool.plugin.inner.may_block || pool.waits;
    // Each call is awaited where it is made (not passed to a helper): a future moved into
    // another is copied, and this one is the size of a wasmtime call.
    macro_rules! invoke {
        ($call:expr) => {
            if bounded_call {
                match tokio::time::timeout(wall + TICK * 4, $call).await {
                    Ok(r) => r.map_err(|e| load::describe_trap(&e)),
                    Err(_) => Err("ran past its time budget and was stopped".to_string()),
                }
            } else {
                $call.await.map_err(|e| load::describe_trap(&e))
            }
        };
    }
    let result = match phase {
        Phase::Request => {
            let borrowed = Resource::new_borrow(request.rep());
            // A user's plugin that is called directly runs here (when no idle instance
            // was ready, on the slow lane, or after its direct call was stopped) the
            // async way, which can yield.
            let trusted = pool.plugin.inner.direct_mode == Direct::Trusted;
            match slot.direct.filter(|_| trusted) {
                Some(on_request) => slot
                    .call_direct(Direct::Trusted, on_request, resource, borrowed)
                    .map(|r| r.map(Answer::Request)),
                None => {
                    let called =
                        invoke!(guest.call_on_request(&mut slot.store, resource, borrowed))
                            .map(|r| r.map(Edit::from));
                    slot.answered(called).map(|r| r.map(Answer::Request))
                }
            }
        }
        Phase::Response(r) => {
            let body = fits(binding.interest.response_body, r.body.as_ref());
            let handle = slot
                .store
                .data_mut()
                .push_response(ResponseCtx { view: r, body });
            let borrowed = Resource::new_borrow(handle.rep());
            let req = Resource::new_borrow(request.rep());
            invoke!(guest.call_on_response(&mut slot.store, resource, req, borrowed))
                .map(|r| r.map(Answer::Response))
        }
        Phase::Log(entry) => {
            let borrowed = Resource::new_borrow(request.rep());
            invoke!(guest.call_on_log(&mut slot.store, resource, borrowed, &entry))
                .map(|()| Ok(Answer::Log))
        }
    };
    slot.store.data_mut().drop_call_context();
    let ticks = slot.store.data().ticks();
    (pool.finish(slot, result), ticks)
}

/// The request phase of a policy called directly (`direct_on_request`), made at once on
/// the caller's thread: `None` when it cannot be (the policy is not called directly, no
/// idle instance has its binding prepared: the async way makes or prepares one; a
/// user's plugin within a second of a slow or faulted call) or was stopped to start
/// over (`restart`).
fn call_now(binding: &PreparedInner, view: &Arc<RequestView>) -> Option<Result<Edit, CallError>> {
    let pool = &binding.pool.inner;
    pool.plugin.inner.direct.as_ref()?;
    let mode = pool.plugin.inner.direct_mode;
    // A user's plugin whose call ran long or faulted within the last second starts its
    // calls on a lane, as the async way decides.
    if mode == Direct::Restartable {
        let now = coarse::millis();
        if now < binding.slow_until.load(Ordering::Relaxed)
            || now < binding.faulted_until.load(Ordering::Relaxed)
        {
            return None;
        }
    }
    let mut slot = pool.take()?;
    let Some(&resource) = slot.prepared.get(&binding.id) else {
        pool.put_back(slot);
        return None;
    };
    let Some(on_request) = slot.direct else {
        pool.put_back(slot);
        return None;
    };
    let admit = binding.breaker.admit();
    if admit == Admit::Skip {
        pool.put_back(slot);
        return Some(Err(binding.quarantined()));
    }
    let ready = pool.budget.may_run().and_then(|()| pool.budget.occupy());
    let _occupied = match ready {
        Ok(o) => o,
        Err(why) => {
            pool.put_back(slot);
            return Some(settle(binding, admit, Err(CallError::Unavailable(why))));
        }
    };
    slot.begin(pool.host.inner.call_budget);
    let state = slot.store.data_mut();
    state.enter(&binding.metrics, false);
    state.waiting = None;
    state.edits.calling(Some(binding.id));
    let body = fits(binding.interest.request_body, view.body.as_ref());
    let request = state.push_request(RequestCtx {
        view: view.clone(),
        body,
    });
    let borrowed = Resource::new_borrow(request.rep());
    let result = slot.call_direct(mode, on_request, resource, borrowed);
    let state = slot.store.data_mut();
    state.drop_call_context();
    if mode == Direct::Restartable {
        if state.sliced() {
            return restart(binding, admit, view, slot);
        }
        state.commit();
        // A trap costs the next call a fresh instance: made on the slow lane.
        if result.is_err() {
            binding.slow_for_a_while();
        }
    }
    let result = pool.finish(slot, result);
    Some(settle(binding, admit, result))
}

/// A user's plugin's direct call ran out of its first slice and was stopped: as if it
/// had never been made (its instance is dropped, the properties it set are put back, its
/// log lines and metric updates are dropped, its breaker does not count it), it is made
/// again the async way, which starts it on the slow lane, as it does the binding's
/// calls for the next second. `None`, so the caller makes that call.
fn restart(
    binding: &PreparedInner,
    admit: Admit,
    view: &Arc<RequestView>,
    mut slot: Box<Slot>,
) -> Option<Result<Edit, CallError>> {
    if let Some(before) = slot.store.data_mut().roll_back() {
        view.restore_properties(before);
    }
    drop(slot);
    binding.breaker.abandon(admit);
    binding.metrics.restarted();
    binding.slow_for_a_while();
    None
}

impl PoolInner {
    /// A call ended: the instance goes back to the pool unless it trapped (its state is
    /// unknown then: it is dropped).
    fn finish<A>(
        &self,
        slot: Box<Slot>,
        result: Result<Result<A, types::PluginError>, String>,
    ) -> Result<A, CallError> {
        match result {
            Ok(Ok(answer)) => {
                self.put_back(slot);
                Ok(answer)
            }
            Ok(Err(e)) => {
                self.put_back(slot);
                Err(CallError::Returned(e.message))
            }
            // Not the plugin's fault (its budget was spent by all its calls together):
            // not counted by its breaker; the instance is dropped all the same.
            Err(_) if slot.store.data().out_of_cpu() => Err(CallError::Unavailable(
                "stopped: the plugin used its CPU for this second (--plugin-cpu-ms-per-second)"
                    .into(),
            )),
            Err(trap) => Err(CallError::Trap(trap)),
        }
    }

    /// This thread's share of the idle instances.
    fn own_idle(&self) -> usize {
        let (slot, slots) = (crate::workers::slot(), self.idle.len().max(1));
        // A worker's slot is below the count in the usual case: no division then (one
        // is tens of cycles, and every call takes and gives back an instance).
        if slot < slots { slot } else { slot % slots }
    }

    /// An idle instance: this worker's own, else one another worker (or the snapshot
    /// build, which prepared every binding in one) left idle.
    fn take(&self) -> Option<Box<Slot>> {
        let own = self.own_idle();
        let pop = |i: usize| self.idle[i].lock().ok().and_then(|mut idle| idle.pop());
        let mut slot = pop(own).or_else(|| {
            (1..self.idle.len()).find_map(|step| pop((own + step) % self.idle.len()))
        })?;
        slot.counted.set_idle(false);
        Some(slot)
    }

    fn put_back(&self, mut slot: Box<Slot>) {
        if let Ok(mut idle) = self.idle[self.own_idle()].lock()
            && idle.len() < self.idle_per_slot
        {
            slot.counted.set_idle(true);
            idle.push(slot);
        }
    }

    /// A new instance, counted in the pool metrics of `metrics`' plugin.
    async fn new_slot(&self, metrics: &Arc<metrics::PluginMetrics>) -> Result<Box<Slot>, String> {
        let host = &self.host.inner;
        let limits = self.budget.admit(host.memory_limit)?;
        let state = StoreState::new(
            &self.name,
            host.random.clone(),
            limits,
            &self.env,
            self.grants.clone(),
        );
        let mut store = Store::new(&host.engine, state);
        store.limiter(|s| &mut s.limits);
        // Past its first tick an async call yields at every tick (on the slow lane,
        // where it then finishes, to the other slow calls), a trusted direct call runs
        // on, a restartable one stops to start over; once its budget is spent, any stops.
        store.epoch_deadline_callback(|mut ctx| {
            Ok(match ctx.data_mut().on_tick() {
                Tick::Stop => UpdateDeadline::Interrupt,
                Tick::Continue => UpdateDeadline::Continue(1),
                Tick::Yield => UpdateDeadline::Yield(1),
            })
        });
        store.set_epoch_deadline(1);
        store.data_mut().start_call(host.prepare_budget);
        let instance = self
            .plugin
            .inner
            .pre
            .instance_pre()
            .instantiate_async(&mut store)
            .await
            .map_err(|e| format!("instantiating: {}", load::describe_trap(&e)))?;
        let plugin = Plugin::new(&mut store, &instance)
            .map_err(|e| format!("instantiating: {}", load::describe_trap(&e)))?;
        let direct = match &self.plugin.inner.direct {
            Some(index) => Some(
                instance
                    .get_typed_func::<_, _>(&mut store, index)
                    .map_err(|e| format!("instantiating: on-request: {e:#}"))?,
            ),
            None => None,
        };
        Ok(Box::new(Slot {
            store,
            plugin,
            direct,
            prepared: HashMap::default(),
            counted: metrics::Instance::new(metrics),
        }))
    }
}

/// `on-request`'s export, when the component's `on-request` calls are made directly: a
/// synchronous call on the request's own task, without wasmtime's fiber, a boxed future
/// or the slow lane. Only when nothing the component imports can wait on the host (no
/// WASI, no outbound calls, no shared state). The embedded first-party components (the
/// bytes this binary carries, whoever names them) run to their end that way
/// ([`Direct::Trusted`]): their work is bounded by their config (matching a
/// VirtualService's routes, a percentage draw, a weighted pick), and the epoch deadline
/// and the plugin's CPU budget still stop them. Any other plugin gets its first slice
/// that way ([`Direct::Restartable`]): a call still running then is stopped and made
/// again on the slow lane (`restart`), so a plugin the gateway did not write keeps the
/// slow lane's fairness.
fn direct_on_request(engine: &Engine, component: &Component) -> Option<ComponentExportIndex> {
    let ty = component.component_type();
    // An allow-list: an interface added later is called the async way until someone
    // decides whether its effects can wait, or be undone, when a call starts over.
    let answers_at_once = ty.imports(engine).all(|(name, _)| {
        ["types", "host", "metrics", "clock"]
            .iter()
            .any(|i| name.starts_with(&format!("{WIT_PACKAGE}/{i}@")))
    });
    if !answers_at_once {
        return None;
    }
    let interface = ty
        .exports(engine)
        .map(|(name, _)| name)
        .find(|name| name.starts_with(&format!("{WIT_PACKAGE}/policy")))?;
    let instance = component.get_export_index(None, interface)?;
    component.get_export_index(Some(&instance), "[method]prepared.on-request")
}

/// Await one call into an instance for at most `budget`. The epoch callback stops Wasm
/// code that runs past it; the timeout stops a call blocked in a host import (a WASI
/// sleep). Either way the caller drops the instance.
async fn bounded<R>(
    budget: Duration,
    call: impl std::future::Future<Output = wasmtime::Result<R>>,
) -> Result<R, String> {
    match tokio::time::timeout(budget + TICK * 4, call).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(load::describe_trap(&e)),
        Err(_) => Err("ran past its time budget and was stopped".into()),
    }
}

impl Slot {
    /// Start the clock for one call.
    fn begin(&mut self, budget: Duration) {
        self.store.data_mut().start_call(budget);
        self.store.set_epoch_deadline(1);
    }

    /// Prepare `binding` in this instance and remember its resource.
    async fn prepare(&mut self, binding: &PreparedInner) -> Result<ResourceAny, SlotError> {
        let budget = binding.pool.inner.host.inner.prepare_budget;
        self.begin(budget);
        self.store.data_mut().enter(&binding.metrics, true);
        self.store.data_mut().edits.preparing(binding.id);
        let guest = self.plugin.wasmgate_policy_policy().prepared();
        let call = guest.call_prepare(&mut self.store, &binding.binding, &binding.config);
        let resource = bounded(budget, call).await;
        self.store.data_mut().leave_prepare();
        self.store.data_mut().edits.calling(None);
        let resource = resource
            .map_err(|e| SlotError::Other(format!("prepare trapped: {e}")))?
            .map_err(SlotError::Config)?;
        self.prepared.insert(binding.id, resource);
        Ok(resource)
    }
}
