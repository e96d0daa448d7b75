//! What the host gives a plugin instance: the `wasmgate:policy/host` imports (log,
//! random, monotonic time), the `wasmgate:policy/metrics` imports (into the plugin's
//! [`PluginMetrics`]), the `request`/`response` resources ([`super::context`]), the
//! capabilities its WasmPlugin grants ([`Grants`]: wall clock, state, outbound calls;
//! each call of one not granted returns an error saying so), a memory limit, and a WASI
//! context that grants nothing — no files, arguments or sockets, no environment but the
//! WasmPlugin's `vmConfig.env`; stdout and stderr become log lines.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWrite;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use wasmtime::component::Resource;

use super::bindings::wasmgate::policy::{clock, host, metrics, outbound, state, types};
use super::budget::Limiter;
use super::context::{self, RequestCtx, ResponseCtx};
use super::edits::PreparedEdits;
use super::metrics::{Definition, PluginMetrics};
use super::state::StateStore;
use super::{OutboundAnswer, OutboundCall, OutboundClient};

/// What one pool's instances (one WasmPlugin in one namespace) may use beyond the
/// basics: its `wasmgate.io/capabilities`.
#[derive(Clone, Default)]
pub struct Grants {
    pub clock: bool,
    /// The store, when `state` is granted.
    pub state: Option<StateStore>,
    /// Hosts granted with `outbound:<host>` (lowercase; `*.suffix` matches subdomains).
    pub outbound: Vec<String>,
    /// Where outbound calls go (the gateway's upstream machinery).
    pub client: Option<Arc<dyn OutboundClient>>,
    /// The namespace the pool serves: a short outbound host expands in it, as a
    /// VirtualService's destination hosts do.
    pub namespace: String,
    /// May set the identity properties (`request.auth.*`): only the gateway's own JWT
    /// component, so no plugin can forge the principal an AuthorizationPolicy checks.
    pub identity: bool,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants")
            .field("clock", &self.clock)
            .field("state", &self.state.is_some())
            .field("outbound", &self.outbound)
            .finish()
    }
}

/// The longest an outbound call may take, whatever the plugin asks.
pub const OUTBOUND_MAX: std::time::Duration = std::time::Duration::from_secs(10);
/// The largest outbound response body handed to a plugin.
pub const OUTBOUND_MAX_BODY: usize = 1 << 20;

fn denied(capability: &str) -> String {
    format!(
        "not granted: add `{capability}` to the WasmPlugin's wasmgate.io/capabilities annotation"
    )
}

/// The data of one plugin instance's store.
pub struct StoreState {
    /// The instance's memory, counted in its plugin's [`super::budget::Budget`].
    pub limits: Limiter,
    wasi: WasiCtx,
    table: ResourceTable,
    plugin: Arc<str>,
    random: Random,
    /// When the current call must end.
    deadline: Instant,
    /// Epoch ticks the current call has seen (see [`StoreState::on_tick`]).
    ticks: u32,
    /// How the current call is made (synchronously or not; see [`Direct`]).
    pub direct: Direct,
    /// The current call (a [`Direct::Restartable`] one) ran out of its first slice and
    /// was stopped, to be made again on the slow lane.
    sliced: bool,
    /// What a [`Direct::Restartable`] call did that others see (log lines, metric
    /// updates), held until it ends: dropped if it is made again.
    effects: Vec<Effect>,
    /// The request's properties as they were before a [`Direct::Restartable`] call
    /// first set one: put back if it is made again.
    undo: Option<Vec<(String, String)>>,
    /// The current call was stopped because its plugin spent its CPU for this second.
    out_of_cpu: bool,
    /// How long the current call has waited on outbound calls.
    outbound_waited: std::time::Duration,
    /// Set while the current call waits on an outbound call (see the slow lane).
    pub waiting: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The metrics of the binding being called (set per call; every binding of an
    /// instance belongs to one plugin, so this rarely changes).
    metrics: Option<Arc<PluginMetrics>>,
    /// In `prepare`: the only time a plugin may define metrics.
    defining: bool,
    /// The plugin's log lines, shared by all its instances.
    log_budget: Arc<LogBudget>,
    grants: Grants,
    /// The edits the plugin prepared (`host.prepare-edit`) and the one the current call
    /// named.
    pub edits: PreparedEdits,
    /// The current call's request and response, behind the handles its arguments carry
    /// ([`CALL_REP`]); `None` between calls.
    call_request: Option<RequestCtx>,
    call_response: Option<ResponseCtx>,
}

/// The rep of a call's `request` handle and of its `response` handle. A call carries at
/// most one of each, held by the store instead of its resource table: a table entry was
/// an allocation made and freed per call (about 330 instructions, callgrind, scenario
/// 1). A guest only ever borrows them, and a borrow ends with the call.
const CALL_REP: u32 = 1;

impl StoreState {
    /// `env`: the WasmPlugin's `vmConfig.env`, the only environment the instance sees.
    pub fn new(
        plugin: &str,
        random: Random,
        limits: Limiter,
        env: &[(String, String)],
        grants: Grants,
    ) -> Self {
        let plugin: Arc<str> = Arc::from(plugin);
        let log_budget = LogBudget::of(&plugin);
        let wasi = WasiCtxBuilder::new()
            .envs(env)
            .stdout(LogStream::new(plugin.clone(), "stdout", log_budget.clone()))
            .stderr(LogStream::new(plugin.clone(), "stderr", log_budget.clone()))
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        StoreState {
            limits,
            wasi,
            table: ResourceTable::new(),
            plugin,
            random,
            deadline: Instant::now(),
            ticks: 0,
            direct: Direct::No,
            sliced: false,
            effects: Vec::new(),
            undo: None,
            out_of_cpu: false,
            outbound_waited: std::time::Duration::ZERO,
            waiting: None,
            metrics: None,
            defining: false,
            log_budget,
            grants,
            edits: PreparedEdits::default(),
            call_request: None,
            call_response: None,
        }
    }

    /// This call's request (and response): the handle to pass (as a borrow).
    pub fn push_request(&mut self, ctx: RequestCtx) -> Resource<RequestCtx> {
        self.call_request = Some(ctx);
        Resource::new_own(CALL_REP)
    }

    pub fn push_response(&mut self, ctx: ResponseCtx) -> Resource<ResponseCtx> {
        self.call_response = Some(ctx);
        Resource::new_own(CALL_REP)
    }

    /// Let the call's request and response (if it had one) go once the call returned.
    pub fn drop_call_context(&mut self) {
        self.call_request = None;
        self.call_response = None;
    }

    fn request(&self, r: &Resource<RequestCtx>) -> wasmtime::Result<&RequestCtx> {
        match &self.call_request {
            Some(ctx) if r.rep() == CALL_REP => Ok(ctx),
            _ => Err(wasmtime::format_err!("no such request in this call")),
        }
    }

    fn response(&self, r: &Resource<ResponseCtx>) -> wasmtime::Result<&ResponseCtx> {
        match &self.call_response {
            Some(ctx) if r.rep() == CALL_REP => Ok(ctx),
            _ => Err(wasmtime::format_err!("no such response in this call")),
        }
    }

    /// A call for a binding whose plugin's metrics are `metrics` starts; `defining` in
    /// `prepare`.
    pub fn enter(&mut self, metrics: &Arc<PluginMetrics>, defining: bool) {
        if !self
            .metrics
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, metrics))
        {
            self.metrics = Some(metrics.clone());
        }
        self.defining = defining;
    }

    /// The current call may no longer define metrics.
    pub fn leave_prepare(&mut self) {
        self.defining = false;
    }

    fn define(
        &self,
        call: &str,
        name: &str,
        help: &str,
        labels: &[String],
        definition: Definition<'_>,
    ) -> Result<u32, String> {
        if !self.defining {
            return Err(format!(
                "metric {name:?}: {call} is allowed in prepare only"
            ));
        }
        match &self.metrics {
            Some(m) => m.define(name, help, labels, definition),
            None => Err("no metrics for this call".into()),
        }
    }

    /// A call starts now and may run for `budget`.
    pub fn start_call(&mut self, budget: std::time::Duration) {
        self.deadline = super::coarse::now() + budget;
        self.ticks = 0;
        self.sliced = false;
        self.effects.clear();
        self.undo = None;
        self.out_of_cpu = false;
        self.outbound_waited = std::time::Duration::ZERO;
    }

    /// Was the last call stopped for its plugin's CPU per second?
    pub fn out_of_cpu(&self) -> bool {
        self.out_of_cpu
    }

    /// An epoch tick reached the running call: stop it once its budget is spent; let it
    /// run through its first tick (a call that takes microseconds and happens to span a
    /// tick must not leave its thread); yield at every later one.
    pub fn on_tick(&mut self) -> Tick {
        self.ticks = self.ticks.saturating_add(1);
        // `prepare` runs at load: a reload must not fail on traffic's CPU budget.
        if !self.defining && !self.limits.budget().tick() {
            self.out_of_cpu = true;
            Tick::Stop
        } else if super::coarse::now() >= self.deadline {
            Tick::Stop
        } else if self.ticks == 1 || self.direct == Direct::Trusted {
            Tick::Continue
        } else if self.direct == Direct::Restartable {
            // It cannot yield, and must not hold its request's thread past a slice: stop
            // it, to be made again where a slow call belongs.
            self.sliced = true;
            Tick::Stop
        } else {
            Tick::Yield
        }
    }

    /// Was the current (or last) call stopped at the end of its first slice, to be made
    /// again on the slow lane ([`Direct::Restartable`])?
    pub fn sliced(&self) -> bool {
        self.sliced
    }

    /// A restartable direct call ended for good: what it did takes effect now.
    pub fn commit(&mut self) {
        self.undo = None;
        for effect in std::mem::take(&mut self.effects) {
            self.apply(effect);
        }
    }

    /// A restartable direct call is made again: its log lines and metric updates are
    /// dropped; the request's properties as they were before it set one, to put back
    /// (`None`: it set none).
    pub fn roll_back(&mut self) -> Option<Vec<(String, String)>> {
        self.effects.clear();
        self.undo.take()
    }

    /// Is what the current call does held until it ends ([`StoreState::commit`])?
    fn held(&self) -> bool {
        self.direct == Direct::Restartable
    }

    /// A log line or metric update: done now, or held while a restartable call runs
    /// (its line cut as it would be logged); past [`MAX_HELD`] held ones are dropped (a
    /// first slice that logs or counts more than that is a plugin flooding the host).
    fn emit(&mut self, mut effect: Effect) {
        if !self.held() {
            self.apply(effect);
            return;
        }
        if let Effect::Log(_, message) = &mut effect {
            message.truncate(cut(message).len());
        }
        if self.effects.len() < MAX_HELD {
            self.effects.push(effect);
        }
    }

    fn apply(&self, effect: Effect) {
        match effect {
            Effect::Log(level, message) => self.log_now(level, &message),
            Effect::Counter(metric, labels, value) => {
                if let Some(m) = &self.metrics {
                    m.counter_add(metric, labels, value);
                }
            }
            Effect::Histogram(metric, labels, value) => {
                if let Some(m) = &self.metrics {
                    m.histogram_observe(metric, labels, value);
                }
            }
        }
    }

    fn log_now(&self, level: host::LogLevel, message: &str) {
        let plugin = &*self.plugin;
        if !self.log_budget.admit(plugin, Instant::now()) {
            return;
        }
        let message = cut(message);
        match level {
            host::LogLevel::Trace => {
                tracing::trace!(target: "wasmgate::plugin", plugin, "{message}")
            }
            host::LogLevel::Debug => {
                tracing::debug!(target: "wasmgate::plugin", plugin, "{message}")
            }
            host::LogLevel::Info => {
                tracing::info!(target: "wasmgate::plugin", plugin, "{message}")
            }
            host::LogLevel::Warn => {
                tracing::warn!(target: "wasmgate::plugin", plugin, "{message}")
            }
            host::LogLevel::Error => {
                tracing::error!(target: "wasmgate::plugin", plugin, "{message}")
            }
        }
    }

    /// Epoch ticks the current (or last) call saw while it ran: about the milliseconds of
    /// CPU it used (a call the kernel kept waiting sees one tick when it resumes, not
    /// one per tick it missed). More than one: it ran past its first slice.
    pub fn ticks(&self) -> u32 {
        self.ticks
    }
}

/// How a call of `on-request` is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// Through wasmtime's async calls: it yields at each tick past its first, and may
    /// move to the slow lane.
    No,
    /// Synchronously, and run to its end or deadline: a first-party component.
    Trusted,
    /// Synchronously for its first slice only: a user's plugin. Past it, the call is
    /// stopped and made again on the slow lane, so what others could see of the first
    /// try (log lines, metric updates, properties) is held until the call ends.
    Restartable,
}

/// The most log lines and metric updates one restartable call's effects hold.
const MAX_HELD: usize = 256;

/// What a [`Direct::Restartable`] call did, held until it ends.
enum Effect {
    Log(host::LogLevel, String),
    Counter(metrics::MetricId, Vec<String>, u64),
    Histogram(metrics::MetricId, Vec<String>, f64),
}

/// What the epoch callback does at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    Continue,
    Yield,
    Stop,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StoreState {}

impl host::Host for StoreState {
    fn log(&mut self, level: host::LogLevel, message: String) {
        self.emit(Effect::Log(level, message));
    }

    fn random_u64(&mut self) -> u64 {
        self.random.next_u64()
    }

    fn random_u64s(&mut self, max: u32) -> Vec<u64> {
        self.random.next_many(max)
    }

    fn monotonic_now(&mut self) -> u64 {
        monotonic_nanos()
    }

    fn prepare_edit(&mut self, edit: types::Edit) -> Result<u32, String> {
        let bytes = self.edits.admit(&edit)?;
        self.limits.charge(bytes)?;
        self.edits.add(edit, bytes)
    }
}

impl metrics::Host for StoreState {
    fn define_counter(
        &mut self,
        name: String,
        help: String,
        label_names: Vec<String>,
    ) -> Result<metrics::MetricId, String> {
        self.define(
            "define-counter",
            &name,
            &help,
            &label_names,
            Definition::Counter,
        )
    }

    fn define_histogram(
        &mut self,
        name: String,
        help: String,
        label_names: Vec<String>,
        buckets: Vec<f64>,
    ) -> Result<metrics::MetricId, String> {
        self.define(
            "define-histogram",
            &name,
            &help,
            &label_names,
            Definition::Histogram { buckets: &buckets },
        )
    }

    fn counter_add(&mut self, metric: metrics::MetricId, label_values: Vec<String>, value: u64) {
        self.emit(Effect::Counter(metric, label_values, value));
    }

    fn histogram_observe(
        &mut self,
        metric: metrics::MetricId,
        label_values: Vec<String>,
        value: f64,
    ) {
        self.emit(Effect::Histogram(metric, label_values, value));
    }
}

/// A header value the gateway checked is text, as a string.
fn text(value: &http::HeaderValue) -> String {
    value.to_str().unwrap_or_default().to_string()
}

impl types::HostRequest for StoreState {
    fn id(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<String> {
        Ok(text(&self.request(&r)?.view.id))
    }

    fn method(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.view.method.as_str().to_string())
    }

    fn scheme(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.view.scheme.to_string())
    }

    fn authority(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<String> {
        Ok(text(&self.request(&r)?.view.authority))
    }

    fn path(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.view.path().to_string())
    }

    fn query(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.view.query().to_string())
    }

    fn path_and_query(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.view.path_and_query())
    }

    fn query_param(
        &mut self,
        r: Resource<RequestCtx>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.request(&r)?.view.query_param(&name))
    }

    fn header(
        &mut self,
        r: Resource<RequestCtx>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.request(&r)?.view.header(&name))
    }

    fn header_values(
        &mut self,
        r: Resource<RequestCtx>,
        name: String,
    ) -> wasmtime::Result<Vec<String>> {
        Ok(self.request(&r)?.view.header_values(&name))
    }

    fn header_joined(
        &mut self,
        r: Resource<RequestCtx>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.request(&r)?.view.header_joined(&name))
    }

    fn path_and_query_with_header(
        &mut self,
        r: Resource<RequestCtx>,
        name: String,
    ) -> wasmtime::Result<(String, Option<String>)> {
        let view = &self.request(&r)?.view;
        Ok((view.path_and_query(), view.header_joined(&name)))
    }

    fn headers(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(context::all_headers(&self.request(&r)?.view.headers))
    }

    fn client_address(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.view.client.to_string())
    }

    fn port(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<u16> {
        Ok(self.request(&r)?.view.port)
    }

    fn sni(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<Option<String>> {
        Ok(self.request(&r)?.view.sni.clone())
    }

    fn gateway(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.view.state().names.gateway.clone())
    }

    fn virtual_service(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.view.state().names.virtual_service.clone())
    }

    fn body(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<Option<Vec<u8>>> {
        let ctx = self.request(&r)?;
        Ok(if ctx.body {
            Some(
                ctx.view
                    .body
                    .as_ref()
                    .map(|b| b.to_vec())
                    .unwrap_or_default(),
            )
        } else {
            None
        })
    }

    fn action_kind(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<types::ActionKind> {
        Ok(context::kind(&self.request(&r)?.view.state().decision))
    }

    fn route_index(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<Option<u32>> {
        Ok(self
            .request(&r)?
            .view
            .state()
            .decision
            .route
            .as_ref()
            .map(|r| r.index))
    }

    fn destination_weights(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<Vec<u32>> {
        Ok(self
            .request(&r)?
            .view
            .state()
            .decision
            .destinations()
            .iter()
            .map(|d| d.weight)
            .collect())
    }

    fn decision(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<types::Decision> {
        Ok(self.request(&r)?.view.state().decision())
    }

    fn property(
        &mut self,
        r: Resource<RequestCtx>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.request(&r)?.view.property(&name))
    }

    fn set_property(
        &mut self,
        r: Resource<RequestCtx>,
        name: String,
        value: Option<String>,
    ) -> wasmtime::Result<Result<(), String>> {
        if !self.grants.identity && super::context::is_identity_property(&name) {
            return Ok(Err(format!(
                "property {name:?} is the gateway's: only its RequestAuthentication sets it"
            )));
        }
        if self.held() && self.undo.is_none() {
            self.undo = Some(self.request(&r)?.view.properties());
        }
        Ok(self.request(&r)?.view.set_property(name, value))
    }

    fn use_edit(&mut self, r: Resource<RequestCtx>, id: u32) -> wasmtime::Result<()> {
        self.request(&r)?;
        self.edits.choose(id)
    }

    fn hold_fault(
        &mut self,
        r: Resource<RequestCtx>,
        delay_ms: Option<u64>,
        abort: Option<types::Abort>,
    ) -> wasmtime::Result<()> {
        // Kept for the chain to take after its router's call (`proxy::chain`); from any
        // other link nobody takes it.
        self.request(&r)?.view.state().hold_fault(delay_ms, abort);
        Ok(())
    }

    fn drop(&mut self, r: Resource<RequestCtx>) -> wasmtime::Result<()> {
        // The host owns every handle and deletes it after the call; a guest never owns
        // one, so there is nothing to drop here.
        let _ = r;
        Ok(())
    }
}

impl types::HostResponse for StoreState {
    fn status(&mut self, r: Resource<ResponseCtx>) -> wasmtime::Result<u16> {
        Ok(self.response(&r)?.view.status)
    }

    fn header(
        &mut self,
        r: Resource<ResponseCtx>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(context::first(&self.response(&r)?.view.headers, &name))
    }

    fn headers(&mut self, r: Resource<ResponseCtx>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(context::all_headers(&self.response(&r)?.view.headers))
    }

    fn body(&mut self, r: Resource<ResponseCtx>) -> wasmtime::Result<Option<Vec<u8>>> {
        let ctx = self.response(&r)?;
        Ok(if ctx.body {
            Some(
                ctx.view
                    .body
                    .as_ref()
                    .map(|b| b.to_vec())
                    .unwrap_or_default(),
            )
        } else {
            None
        })
    }

    fn local(&mut self, r: Resource<ResponseCtx>) -> wasmtime::Result<bool> {
        Ok(self.response(&r)?.view.local)
    }

    fn drop(&mut self, r: Resource<ResponseCtx>) -> wasmtime::Result<()> {
        let _ = r;
        Ok(())
    }
}

impl clock::Host for StoreState {
    fn now(&mut self) -> Result<u64, String> {
        if !self.grants.clock {
            return Err(denied("clock"));
        }
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }
}

impl StoreState {
    fn store(&self) -> Result<StateStore, String> {
        self.grants.state.clone().ok_or_else(|| denied("state"))
    }

    /// Wait on `op`, host I/O (an outbound call, Redis): waiting is not running, so the
    /// call's deadline moves by the time waited (returned too), and the call stays on
    /// its request's task meanwhile.
    async fn waited<T>(
        &mut self,
        op: impl std::future::Future<Output = T>,
    ) -> (T, std::time::Duration) {
        let started = Instant::now();
        let flag = self.waiting.clone();
        if let Some(f) = &flag {
            f.store(true, Ordering::Relaxed);
        }
        let out = op.await;
        if let Some(f) = &flag {
            f.store(false, Ordering::Relaxed);
        }
        let waited = started.elapsed();
        self.deadline += waited;
        (out, waited)
    }
}

impl state::Host for StoreState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        match self.store()? {
            StateStore::Local(s) => s.get(&key, Instant::now()),
            StateStore::Global(s) => self.waited(s.get(&key)).await.0,
        }
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), String> {
        match self.store()? {
            StateStore::Local(s) => s.set(&key, value, ttl_ms, Instant::now()),
            StateStore::Global(s) => self.waited(s.set(&key, value, ttl_ms)).await.0,
        }
    }

    async fn delete(&mut self, key: String) -> Result<bool, String> {
        match self.store()? {
            StateStore::Local(s) => s.delete(&key, Instant::now()),
            StateStore::Global(s) => self.waited(s.delete(&key)).await.0,
        }
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, String> {
        match self.store()? {
            StateStore::Local(s) => s.increment(&key, delta, ttl_ms, Instant::now()),
            StateStore::Global(s) => self.waited(s.increment(&key, delta, ttl_ms)).await.0,
        }
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, String> {
        match self.store()? {
            StateStore::Local(s) => {
                s.compare_and_swap(&key, expected.as_deref(), value, ttl_ms, Instant::now())
            }
            StateStore::Global(s) => {
                self.waited(s.compare_and_swap(&key, expected, value, ttl_ms))
                    .await
                    .0
            }
        }
    }
}

/// Is `host` (lowercase) among `grants`? `*.example.com` grants its subdomains.
pub fn host_granted(grants: &[String], host: &str) -> bool {
    grants.iter().any(|g| match g.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => g == host,
    })
}

impl outbound::Host for StoreState {
    async fn call(
        &mut self,
        request: outbound::OutboundRequest,
    ) -> Result<outbound::OutboundResponse, String> {
        let authority: http::uri::Authority = match request.authority.parse() {
            Ok(a) if !request.authority.contains('@') => a,
            _ => {
                return Err(format!(
                    "{:?} is not an authority (host or host:port)",
                    request.authority
                ));
            }
        };
        let written = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        // `backend` means `backend.<namespace>.svc.cluster.local`; either may be granted.
        let host = wasmgate_config::expand_host(&written, &self.grants.namespace);
        if !host_granted(&self.grants.outbound, &written)
            && !host_granted(&self.grants.outbound, &host)
        {
            return Err(denied(&format!("outbound:{written}")));
        }
        let Some(client) = self.grants.client.clone() else {
            return Err("outbound calls are not available in this gateway".into());
        };
        // At most OUTBOUND_MAX of waiting per plugin call, all its outbound calls
        // together: past it the call would be stopped by its wall-clock guard.
        let left = OUTBOUND_MAX.saturating_sub(self.outbound_waited);
        if left.is_zero() {
            return Err(format!(
                "this call already waited {OUTBOUND_MAX:?} on outbound calls, its limit"
            ));
        }
        let timeout = match request.timeout_ms {
            0 => left,
            ms => std::time::Duration::from_millis(u64::from(ms)).min(left),
        };
        let call = OutboundCall {
            method: request.method,
            port: authority.port_u16(),
            authority: request.authority,
            host,
            path: request.path,
            headers: request
                .headers
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect(),
            body: request.body,
            timeout,
        };
        // Waiting is not running: the call's CPU budget does not count it.
        let (answer, waited) = self
            .waited(tokio::time::timeout(timeout, client.call(call)))
            .await;
        self.outbound_waited += waited;
        let answer: OutboundAnswer = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(format!("timed out after {timeout:?}")),
        };
        Ok(outbound::OutboundResponse {
            status: answer.status,
            headers: answer
                .headers
                .into_iter()
                .map(|(name, value)| types::Header { name, value })
                .collect(),
            body: answer.body,
        })
    }
}

/// Nanoseconds since the first call in this process.
pub fn monotonic_nanos() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Add the host imports and WASI (p2, async) to `linker`.
pub fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    super::bindings::Plugin::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)?;
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    Ok(())
}

/// The host's random numbers: splitmix64 over an atomic counter, so it is lock-free,
/// and a fixed seed replays the same sequence for the same order of calls.
#[derive(Clone, Debug)]
pub struct Random {
    state: Arc<AtomicU64>,
    /// `--random-seed` given: [`Random::next_many`] hands out one number at a time.
    seeded: bool,
}

/// splitmix64's increment.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The most numbers one `host.random-u64s` answer carries.
pub const RANDOM_BATCH_MAX: u32 = 64;

/// splitmix64's output for counter value `z`.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Random {
    /// Seeded when `seed` is given, otherwise from the process's hash randomness.
    pub fn new(seed: Option<u64>) -> Self {
        let seeded = seed.is_some();
        let seed = seed.unwrap_or_else(|| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(Instant::now().elapsed().as_nanos());
            h.finish()
        });
        Random {
            state: Arc::new(AtomicU64::new(seed)),
            seeded,
        }
    }

    pub fn next_u64(&self) -> u64 {
        mix(self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA))
    }

    /// `host.random-u64s`: the next numbers of the sequence, as many as `max` (1 to
    /// [`RANDOM_BATCH_MAX`]) in one step of the counter, the same numbers in the same
    /// order as that many [`Random::next_u64`]; one when seeded, so that a seeded run
    /// hands each number to the request that uses it, whichever instance kept others.
    pub fn next_many(&self, max: u32) -> Vec<u64> {
        let n = if self.seeded {
            1
        } else {
            u64::from(max.clamp(1, RANDOM_BATCH_MAX))
        };
        let before = self
            .state
            .fetch_add(GAMMA.wrapping_mul(n), Ordering::Relaxed);
        (1..=n)
            .map(|i| mix(before.wrapping_add(GAMMA.wrapping_mul(i))))
            .collect()
    }

    /// An index drawn in proportion to `weights` (0 when they are all zero or empty).
    pub fn pick_weighted(&self, weights: impl Iterator<Item = u32> + Clone) -> usize {
        let total: u64 = weights.clone().map(u64::from).sum();
        if total == 0 {
            return 0;
        }
        let mut ticket = self.next_u64() % total;
        weights
            .into_iter()
            .position(|w| {
                let w = u64::from(w);
                if ticket < w {
                    true
                } else {
                    ticket -= w;
                    false
                }
            })
            .unwrap_or(0)
    }
}

/// Log lines one plugin may write per second, all its instances, its `log` import and
/// its stdout/stderr together. Past it lines are dropped and counted; the count is
/// logged once the next second starts. A plugin that logs on every request cannot
/// flood the gateway's log (or its disk) at the request rate.
pub const LOG_LINES_PER_SECOND: u32 = 100;

/// One plugin's log budget: a one-second window.
#[derive(Debug)]
pub struct LogBudget {
    /// (window start, lines logged in it, lines dropped in it).
    window: std::sync::Mutex<(Instant, u32, u64)>,
}

impl LogBudget {
    fn new(now: Instant) -> Self {
        LogBudget {
            window: std::sync::Mutex::new((now, 0, 0)),
        }
    }

    /// The budget of the plugin `plugin`, one per name for the life of the process (so
    /// reloads and new instances share it).
    fn of(plugin: &str) -> Arc<LogBudget> {
        static ALL: std::sync::OnceLock<dashmap::DashMap<String, Arc<LogBudget>>> =
            std::sync::OnceLock::new();
        ALL.get_or_init(dashmap::DashMap::new)
            .entry(plugin.to_string())
            .or_insert_with(|| Arc::new(LogBudget::new(Instant::now())))
            .clone()
    }

    /// May `plugin` log a line at `now`? Logs how many were dropped in the window that
    /// just ended, if any.
    fn admit(&self, plugin: &str, now: Instant) -> bool {
        let Ok(mut w) = self.window.lock() else {
            return true;
        };
        if now.duration_since(w.0) >= std::time::Duration::from_secs(1) {
            let dropped = w.2;
            *w = (now, 0, 0);
            if dropped > 0 {
                tracing::warn!(
                    target: "wasmgate::plugin",
                    plugin,
                    "dropped {dropped} log lines (over {LOG_LINES_PER_SECOND} a second)"
                );
            }
        }
        if w.1 < LOG_LINES_PER_SECOND {
            w.1 += 1;
            true
        } else {
            w.2 += 1;
            false
        }
    }
}

/// A guest's stdout or stderr: each line becomes one log event.
struct LogStream {
    plugin: Arc<str>,
    stream: &'static str,
    budget: Arc<LogBudget>,
}

impl LogStream {
    fn new(plugin: Arc<str>, stream: &'static str, budget: Arc<LogBudget>) -> Self {
        LogStream {
            plugin,
            stream,
            budget,
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger {
            plugin: self.plugin.clone(),
            stream: self.stream,
            buf: Vec::new(),
            budget: self.budget.clone(),
        })
    }
}

/// Longest partial line kept before it is logged anyway, and the longest line (from the
/// `log` import or stdout/stderr) written to the gateway's log: longer ones are cut.
const MAX_LINE: usize = 8 << 10;

/// `text` cut to at most [`MAX_LINE`] bytes, at a character boundary.
fn cut(text: &str) -> &str {
    if text.len() <= MAX_LINE {
        return text;
    }
    let mut end = MAX_LINE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

struct LineLogger {
    plugin: Arc<str>,
    stream: &'static str,
    buf: Vec<u8>,
    budget: Arc<LogBudget>,
}

impl LineLogger {
    fn emit(&mut self, upto: usize) {
        let line: Vec<u8> = self.buf.drain(..upto).collect();
        if !self.budget.admit(&self.plugin, Instant::now()) {
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let text = cut(text.trim_end_matches(['\n', '\r']));
        tracing::info!(
            target: "wasmgate::plugin",
            plugin = &*self.plugin,
            stream = self.stream,
            "{text}"
        );
    }
}

impl AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.buf.extend_from_slice(data);
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            self.emit(pos + 1);
        }
        if self.buf.len() > MAX_LINE {
            let len = self.buf.len();
            self.emit(len);
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() {
            let len = self.buf.len();
            self.emit(len);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let len = self.buf.len();
            self.emit(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LOG_LINES_PER_SECOND, LogBudget, MAX_LINE, RANDOM_BATCH_MAX, Random, cut};
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    #[test]
    fn long_lines_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(MAX_LINE);
        let kept = cut(&long);
        assert!(kept.len() <= MAX_LINE && kept.len() > MAX_LINE - 2);
        assert!(kept.chars().all(|c| c == 'é'));
    }

    #[test]
    fn log_lines_past_the_budget_are_dropped_until_the_next_second() {
        let t0 = Instant::now();
        let budget = LogBudget::new(t0);
        let admitted = (0..LOG_LINES_PER_SECOND * 3)
            .filter(|_| budget.admit("ns/p", t0 + Duration::from_millis(10)))
            .count();
        assert_eq!(admitted, LOG_LINES_PER_SECOND as usize);
        assert!(!budget.admit("ns/p", t0 + Duration::from_millis(999)));
        assert!(budget.admit("ns/p", t0 + Duration::from_millis(1000)));
        // Shared by every instance of one plugin, not across plugins.
        assert!(Arc::ptr_eq(&LogBudget::of("ns/a"), &LogBudget::of("ns/a")));
        assert!(!Arc::ptr_eq(&LogBudget::of("ns/a"), &LogBudget::of("ns/b")));
    }

    /// `random-u64s` hands out the sequence `random-u64` would, in its order: a batch
    /// when unseeded (at least one, at most 64), one number at a time when seeded.
    /// Started where the counter wraps around.
    #[test]
    fn random_batches_continue_the_sequence() {
        let start = 0u64.wrapping_sub(3u64.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let unseeded = |state: u64| Random {
            state: Arc::new(AtomicU64::new(state)),
            seeded: false,
        };
        let (one_by_one, batched) = (unseeded(start), unseeded(start));
        let singles: Vec<u64> = (0..100).map(|_| one_by_one.next_u64()).collect();
        let batch = batched.next_many(32);
        assert_eq!(batch[..], singles[..32]);
        assert_eq!(
            batched.next_u64(),
            singles[32],
            "the batch moved the sequence on"
        );
        assert_eq!(batched.next_many(0), singles[33..34], "at least one");
        let most = batched.next_many(u32::MAX);
        assert_eq!(most.len(), RANDOM_BATCH_MAX as usize);
        assert_eq!(most[..], singles[34..34 + RANDOM_BATCH_MAX as usize]);

        let (seeded, reference) = (Random::new(Some(7)), Random::new(Some(7)));
        for _ in 0..3 {
            assert_eq!(seeded.next_many(32), [reference.next_u64()]);
        }
    }

    #[test]
    fn seeded_random_replays() {
        let a = Random::new(Some(42));
        let b = Random::new(Some(42));
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
        assert_ne!(
            Random::new(Some(1)).next_u64(),
            Random::new(Some(2)).next_u64()
        );
    }
}
