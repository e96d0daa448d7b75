//! The plugin host: compiles Wasm policy components once, checks they speak
//! `wasmgate:policy@0.1.x`, prepares them per binding (plugin x VirtualService) and runs
//! them per request from a pool of ready instances. Knows nothing of listeners: the proxy
//! hands it a request head and a decision and gets a decision back.
//!
//! Always on: the pooling allocator, a per-call epoch deadline, a per-instance memory
//! limit, and a WASI context that grants nothing (stdout/stderr go to the log). A trap
//! discards the instance it happened in; the next request gets a fresh one.

mod bindings;
pub mod builtin;
mod host;
mod load;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceAny};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

pub use bindings::wasmgate::policy::types;
use bindings::{Plugin, PluginPre};
pub use host::Random;
use host::StoreState;
pub use load::{WIT_PACKAGE, is_component};

/// How long one call into a plugin may run before it is stopped.
pub const DEFAULT_CALL_BUDGET: Duration = Duration::from_millis(100);
/// The largest linear memory one plugin instance may grow to.
pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;
/// Epoch tick: the deadline's resolution.
const TICK: Duration = Duration::from_millis(5);
/// Idle instances kept per binding; more are dropped when returned.
const MAX_IDLE: usize = 32;

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
    call_budget_ticks: u64,
    memory_limit: usize,
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
    /// Most plugin instances alive at once, across all bindings.
    pub max_instances: u32,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            random_seed: None,
            call_budget: DEFAULT_CALL_BUDGET,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            max_instances: 1000,
        }
    }
}

impl PluginHost {
    /// Build the engine (pooling allocator, epochs, async) and the linker with the
    /// host imports and a deny-all WASI. Starts the epoch ticker thread.
    pub fn new(settings: &HostSettings) -> Result<Self, String> {
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
        let engine = Engine::new(&config).map_err(|e| format!("starting wasmtime: {e:#}"))?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| format!("linking host: {e:#}"))?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| format!("starting the epoch thread: {e}"))?;

        let ticks = settings.call_budget.as_millis() / TICK.as_millis() + 1;
        Ok(PluginHost {
            inner: Arc::new(HostInner {
                engine,
                linker,
                random: Random::new(settings.random_seed),
                call_budget_ticks: u64::try_from(ticks).unwrap_or(u64::MAX),
                memory_limit: settings.memory_limit,
            }),
        })
    }

    /// The host's random source (shared with the proxy for request ids).
    pub fn random(&self) -> &Random {
        &self.inner.random
    }

    /// Compile a plugin from bytes: a component, or a core module carrying
    /// wit-bindgen's component-type section (made into a component here, with the
    /// WASI preview1 adapter when it imports WASI). `name` is used in errors and logs.
    pub fn compile(&self, name: &str, bytes: &[u8]) -> Result<CompiledPlugin, PluginError> {
        let load_err = |message: String| PluginError::Load {
            plugin: name.to_string(),
            message,
        };
        let component_bytes = load::to_component(bytes).map_err(load_err)?;
        let component = Component::new(&self.inner.engine, &component_bytes)
            .map_err(|e| load_err(format!("not a valid Wasm component: {e:#}")))?;
        load::check_world(&self.inner.engine, &component).map_err(load_err)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| load_err(load::explain_link_error(&e)))?;
        let pre = PluginPre::new(pre).map_err(|e| load_err(format!("{e:#}")))?;
        Ok(CompiledPlugin {
            inner: Arc::new(CompiledInner {
                name: name.to_string(),
                pre,
            }),
        })
    }

    /// Prepare `plugin` for one binding with its JSON config: instantiates once, calls
    /// `prepare` and `interest`, and keeps that instance as the first of the pool. A
    /// config the plugin rejects is a [`PluginError::Config`].
    pub async fn prepare(
        &self,
        plugin: &CompiledPlugin,
        binding: types::Binding,
        config: String,
    ) -> Result<PreparedPolicy, PluginError> {
        let mut policy = PreparedPolicy {
            inner: Arc::new(PreparedInner {
                host: self.clone(),
                plugin: plugin.clone(),
                binding,
                config,
                interest: types::HeaderInterest::None,
                idle: Mutex::new(Vec::new()),
            }),
        };
        let mut slot = policy.inner.new_slot().await.map_err(|e| match e {
            SlotError::Config(c) => PluginError::Config {
                plugin: plugin.name().to_string(),
                field: if c.field.is_empty() {
                    String::new()
                } else {
                    format!(".{}", c.field)
                },
                message: c.message,
            },
            SlotError::Other(message) => PluginError::Load {
                plugin: plugin.name().to_string(),
                message,
            },
        })?;
        let interest = slot
            .interest(self.inner.call_budget_ticks)
            .await
            .map_err(|e| PluginError::Load {
                plugin: plugin.name().to_string(),
                message: format!("interest: {e}"),
            })?;
        // Freshly built: no other reference exists yet.
        if let Some(inner) = Arc::get_mut(&mut policy.inner) {
            inner.interest = interest.headers;
        }
        policy.inner.put_back(slot);
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
    pre: PluginPre<StoreState>,
}

impl CompiledPlugin {
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

impl std::fmt::Debug for CompiledPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPlugin")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// One plugin prepared for one binding, with its pool of instances. Cheap to clone.
#[derive(Clone)]
pub struct PreparedPolicy {
    inner: Arc<PreparedInner>,
}

impl std::fmt::Debug for PreparedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedPolicy")
            .field("plugin", &self.inner.plugin.name())
            .field("binding", &self.inner.binding.virtual_service)
            .finish_non_exhaustive()
    }
}

struct PreparedInner {
    host: PluginHost,
    plugin: CompiledPlugin,
    binding: types::Binding,
    config: String,
    interest: types::HeaderInterest,
    idle: Mutex<Vec<Slot>>,
}

/// One live instance with the binding's prepared resource.
struct Slot {
    store: Store<StoreState>,
    plugin: Plugin,
    prepared: ResourceAny,
}

enum SlotError {
    Config(types::ConfigError),
    Other(String),
}

impl PreparedPolicy {
    /// The plugin's name (`ns/name` of its WasmPlugin or `wasmgate/<builtin>`).
    pub fn plugin_name(&self) -> &str {
        self.inner.plugin.name()
    }

    /// Which request headers this policy reads.
    pub fn header_interest(&self) -> &types::HeaderInterest {
        &self.inner.interest
    }

    /// Decide for one request. `Ok(None)` keeps `current`.
    pub async fn on_request(
        &self,
        request: &types::RequestHead,
        current: &types::Decision,
    ) -> Result<Option<types::Decision>, CallError> {
        let inner = &self.inner;
        let taken = inner.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut slot = match taken {
            Some(slot) => slot,
            None => inner.new_slot().await.map_err(|e| match e {
                SlotError::Config(c) => CallError::Trap(format!("prepare: {}", c.message)),
                SlotError::Other(m) => CallError::Trap(m),
            })?,
        };
        slot.store
            .set_epoch_deadline(inner.host.inner.call_budget_ticks);
        let policy = slot.plugin.wasmgate_policy_policy().prepared();
        let result = policy
            .call_on_request(&mut slot.store, slot.prepared, request, current)
            .await;
        match result {
            Ok(Ok(decision)) => {
                inner.put_back(slot);
                Ok(decision)
            }
            Ok(Err(e)) => {
                inner.put_back(slot);
                Err(CallError::Returned(e.message))
            }
            // The instance's state is unknown after a trap: drop it.
            Err(trap) => Err(CallError::Trap(load::describe_trap(&trap))),
        }
    }
}

impl PreparedInner {
    async fn new_slot(&self) -> Result<Slot, SlotError> {
        let host = &self.host.inner;
        let state = StoreState::new(
            self.plugin.name(),
            &self.binding.virtual_service,
            host.random.clone(),
            host.memory_limit,
        );
        let mut store = Store::new(&host.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(host.call_budget_ticks);
        let plugin = self
            .plugin
            .inner
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| SlotError::Other(format!("instantiating: {}", load::describe_trap(&e))))?;
        store.set_epoch_deadline(host.call_budget_ticks);
        let prepared = plugin
            .wasmgate_policy_policy()
            .prepared()
            .call_prepare(&mut store, &self.binding, &self.config)
            .await
            .map_err(|e| SlotError::Other(format!("prepare trapped: {}", load::describe_trap(&e))))?
            .map_err(SlotError::Config)?;
        Ok(Slot {
            store,
            plugin,
            prepared,
        })
    }

    fn put_back(&self, slot: Slot) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(slot);
        }
    }
}

impl Slot {
    async fn interest(&mut self, budget: u64) -> Result<types::Interest, String> {
        self.store.set_epoch_deadline(budget);
        self.plugin
            .wasmgate_policy_policy()
            .prepared()
            .call_interest(&mut self.store, self.prepared)
            .await
            .map_err(|e| load::describe_trap(&e))
    }
}
