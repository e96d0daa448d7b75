//! Prometheus metrics: Istio's standard request and TCP metrics with Istio's names,
//! labels and buckets, as an Istio gateway reports them (`reporter="source"`, the
//! gateway as `source_workload`), and wasmgate's own (plugin calls, listeners, upstream
//! clusters, reloads). Rendered in Prometheus' text format on the admin port.
//!
//! The request path pays a few atomic additions: each destination's series live in a
//! [`RequestStats`] found once when a cluster is built (and kept across reloads, so
//! counters never go back), and each combination of response code, flags, protocol and
//! gRPC status takes a slot of a small lock-free table the first time it is seen. No
//! lock, no allocation per request; label strings are made only when Prometheus scrapes.
//! Istio's metrics a `Telemetry` turns off ([`Disabled`]) are neither recorded nor
//! rendered until a configuration turns them back on.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use wasmgate_config::IstioMetric;

/// Istio's buckets for `istio_request_duration_milliseconds`.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's buckets for `istio_request_bytes` and `istio_response_bytes` (1 to 10^8).
pub const BYTES_BUCKETS: [f64; 9] = [
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
];

/// Buckets for plugin call latency, in seconds (1 µs to 1 s).
pub const CALL_BUCKETS_S: [f64; 12] = [
    0.000001, 0.000002, 0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.00025, 0.001, 0.01, 0.1, 1.0,
];

/// Istio's duration buckets, in seconds, for wasmgate's own route histogram (Prometheus'
/// base unit; only Istio's own metric keeps Istio's milliseconds).
pub const DURATION_BUCKETS_S: [f64; 19] = [
    0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0, 1800.0, 3600.0,
];

/// Envoy's response flags, in the order Envoy prints them; each is one bit.
pub const FLAGS: [&str; 14] = [
    "DPE", "NR", "NC", "UH", "UF", "UR", "UT", "UO", "LR", "FI", "DI", "PF", "URX", "UC",
];

/// The bits of `flags` (unknown names are ignored).
pub fn flag_bits<'a>(flags: impl IntoIterator<Item = &'a str>) -> u16 {
    flags
        .into_iter()
        .filter_map(|f| FLAGS.iter().position(|k| *k == f))
        .fold(0, |bits, i| bits | (1 << i))
}

fn flags_label(bits: u16) -> String {
    let names: Vec<&str> = FLAGS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, f)| *f)
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// A cumulative histogram of fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    /// Sum in millionths of the unit (seconds keep microseconds).
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micro
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in self.bounds.iter().zip(self.buckets.iter()) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Istio's metrics turned off by `Telemetry` (`metrics[].overrides[].disabled`): one
/// bit per [`IstioMetric`], shared by every series, so recording pays one relaxed load.
/// Swapped when a configuration starts serving.
#[derive(Debug, Clone, Default)]
pub struct Disabled(Arc<AtomicU32>);

impl Disabled {
    fn bit(metric: IstioMetric) -> u32 {
        IstioMetric::ALL
            .iter()
            .position(|m| *m == metric)
            .map_or(0, |i| 1 << i)
    }

    fn mask(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Turn exactly these metrics off (the others on).
    pub fn set<'a>(&self, metrics: impl IntoIterator<Item = &'a IstioMetric>) {
        let mask = metrics.into_iter().fold(0, |m, x| m | Self::bit(*x));
        self.0.store(mask, Ordering::Relaxed);
    }

    pub fn contains(&self, metric: IstioMetric) -> bool {
        self.mask() & Self::bit(metric) != 0
    }
}

/// A counter of one of Istio's TCP metrics, used like an `AtomicU64`: while a Telemetry
/// disables its metric, additions are dropped.
#[derive(Debug)]
pub struct Counter {
    value: AtomicU64,
    bit: u32,
    disabled: Disabled,
}

impl Counter {
    fn new(metric: IstioMetric, disabled: &Disabled) -> Self {
        Counter {
            value: AtomicU64::new(0),
            bit: Disabled::bit(metric),
            disabled: disabled.clone(),
        }
    }

    /// Add `n` (unless the metric is off); returns the previous value.
    pub fn fetch_add(&self, n: u64, order: Ordering) -> u64 {
        if self.disabled.mask() & self.bit != 0 {
            return self.value.load(order);
        }
        self.value.fetch_add(n, order)
    }

    pub fn load(&self, order: Ordering) -> u64 {
        self.value.load(order)
    }
}

/// Where requests went, as Istio labels it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The FQDN, or `unknown` when nothing was routed.
    pub service: String,
    pub name: String,
    pub namespace: String,
    /// The subset's `version` label, or `unknown`.
    pub version: String,
}

impl Destination {
    pub fn unknown() -> Self {
        Destination {
            service: "unknown".into(),
            name: "unknown".into(),
            namespace: "unknown".into(),
            version: "unknown".into(),
        }
    }

    /// `name.ns.svc.cluster.local` gives name and namespace; other hosts are their own
    /// name, in the namespace of the ServiceEntry that declares them.
    pub fn new(host: &str, entry_namespace: &str, version: Option<&str>) -> Self {
        let (name, namespace) = match host
            .strip_suffix(".svc.cluster.local")
            .and_then(|b| b.split_once('.'))
        {
            Some((name, ns)) if !ns.contains('.') => (name.to_string(), ns.to_string()),
            _ => (host.to_string(), entry_namespace.to_string()),
        };
        Destination {
            service: host.to_string(),
            name,
            namespace,
            version: version.unwrap_or("unknown").to_string(),
        }
    }
}

/// One request's facts for Istio's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub code: u16,
    pub flags: u16,
    pub grpc: bool,
    /// `grpc-status`, when the response carried one or (gRPC proper) one was inferred
    /// from the HTTP code.
    pub grpc_status: Option<u8>,
}

impl Outcome {
    fn key(&self) -> u64 {
        let grpc_status = self.grpc_status.map_or(0, |s| u64::from(s) + 1);
        (1 << 63)
            | u64::from(self.code)
            | (u64::from(self.flags) << 16)
            | (u64::from(self.grpc) << 32)
            | (grpc_status << 33)
    }

    fn from_key(key: u64) -> Self {
        // Nine bits: a status of 255 is kept as 256.
        let grpc_status = (key >> 33) & 0x1ff;
        Outcome {
            code: (key & 0xffff) as u16,
            flags: ((key >> 16) & 0xffff) as u16,
            grpc: (key >> 32) & 1 == 1,
            grpc_status: (grpc_status > 0).then(|| (grpc_status - 1) as u8),
        }
    }
}

/// Distinct (code, flags, protocol, gRPC status) combinations kept per destination; more
/// fold into the last slot's series (label `response_code="other"` is never needed in
/// practice: a destination sees a handful of codes).
const SLOTS: usize = 64;

#[derive(Debug)]
struct Series {
    requests: AtomicU64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

#[derive(Debug, Default)]
struct Slot {
    key: AtomicU64,
    series: OnceLock<Box<Series>>,
}

/// The request metrics of one destination.
#[derive(Debug)]
pub struct RequestStats {
    pub destination: Destination,
    slots: Box<[Slot]>,
    /// Connection-level (TCP and TLS passthrough) traffic.
    pub tcp: TcpStats,
    disabled: Disabled,
}

/// `istio_tcp_*` of one destination.
#[derive(Debug)]
pub struct TcpStats {
    pub opened: Counter,
    pub closed: Counter,
    pub sent: Counter,
    pub received: Counter,
}

impl TcpStats {
    fn new(disabled: &Disabled) -> Self {
        TcpStats {
            opened: Counter::new(IstioMetric::TcpOpenedConnections, disabled),
            closed: Counter::new(IstioMetric::TcpClosedConnections, disabled),
            sent: Counter::new(IstioMetric::TcpSentBytes, disabled),
            received: Counter::new(IstioMetric::TcpReceivedBytes, disabled),
        }
    }
}

/// The bits of the metrics a request records.
fn http_bits() -> [u32; 4] {
    [
        IstioMetric::RequestCount,
        IstioMetric::RequestDuration,
        IstioMetric::RequestSize,
        IstioMetric::ResponseSize,
    ]
    .map(Disabled::bit)
}

impl RequestStats {
    fn new(destination: Destination, disabled: &Disabled) -> Self {
        RequestStats {
            destination,
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            tcp: TcpStats::new(disabled),
            disabled: disabled.clone(),
        }
    }

    /// Count one request.
    pub fn record(
        &self,
        outcome: Outcome,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let off = self.disabled.mask();
        let [count, duration, req_size, resp_size] = http_bits();
        let all = count | duration | req_size | resp_size;
        if off & all == all {
            return;
        }
        let series = self.series(outcome.key());
        if off & count == 0 {
            series.requests.fetch_add(1, Ordering::Relaxed);
        }
        if off & duration == 0 {
            series.duration.observe(duration_ms);
        }
        if off & req_size == 0 {
            series.request_bytes.observe(request_bytes as f64);
        }
        if off & resp_size == 0 {
            series.response_bytes.observe(response_bytes as f64);
        }
    }

    fn series(&self, key: u64) -> &Series {
        let start = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SLOTS;
        let mut chosen = SLOTS - 1;
        for probe in 0..SLOTS {
            let i = (start + probe) % SLOTS;
            let slot = &self.slots[i];
            let seen = slot.key.load(Ordering::Acquire);
            if seen == key {
                chosen = i;
                break;
            }
            if seen == 0 {
                match slot
                    .key
                    .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => {
                        chosen = i;
                        break;
                    }
                    Err(other) if other == key => {
                        chosen = i;
                        break;
                    }
                    Err(_) => {}
                }
            }
        }
        self.slots[chosen].series.get_or_init(|| {
            Box::new(Series {
                requests: AtomicU64::new(0),
                duration: Histogram::new(&DURATION_BUCKETS_MS),
                request_bytes: Histogram::new(&BYTES_BUCKETS),
                response_bytes: Histogram::new(&BYTES_BUCKETS),
            })
        })
    }
}

/// Per plugin binding (plugin x VirtualService): what its calls did.
#[derive(Debug)]
pub struct PluginStats {
    pub plugin: String,
    pub virtual_service: String,
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub traps: AtomicU64,
    pub deadline_kills: AtomicU64,
    pub memory_kills: AtomicU64,
    pub latency_s: Histogram,
}

impl PluginStats {
    /// One call's result and time.
    pub fn record<T>(
        &self,
        result: &Result<T, crate::plugin::CallError>,
        took: std::time::Duration,
    ) {
        // Not a call: its breaker's counters (`wasmgate_plugin_breaker_*`) say it.
        if let Err(crate::plugin::CallError::Quarantined(_)) = result {
            return;
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.latency_s.observe(took.as_secs_f64());
        match result {
            Ok(_) => {}
            Err(crate::plugin::CallError::Returned(_)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(crate::plugin::CallError::Trap(m)) => {
                self.traps.fetch_add(1, Ordering::Relaxed);
                if m.contains("time budget") {
                    self.deadline_kills.fetch_add(1, Ordering::Relaxed);
                } else if m.contains("out of memory") {
                    self.memory_kills.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(crate::plugin::CallError::Unavailable(_) | crate::plugin::CallError::Lost(_)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(crate::plugin::CallError::Quarantined(_)) => {}
        }
    }
}

/// Per VirtualService route: requests by status class and their duration (Istio's
/// metrics have no route label; dashboards want one).
#[derive(Debug)]
pub struct RouteStats {
    pub virtual_service: String,
    /// The route's `name`, else `http[i]`.
    pub route: String,
    /// 1xx to 5xx.
    pub by_class: [AtomicU64; 5],
    pub duration_s: Histogram,
}

impl RouteStats {
    pub fn record(&self, code: u16, duration_ms: f64) {
        let class = usize::from((code / 100).clamp(1, 5)) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.duration_s.observe(duration_ms / 1000.0);
    }
}

/// Per listener: connections and TLS handshakes.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub active: AtomicI64,
    pub total: AtomicU64,
    pub handshakes: AtomicU64,
    pub handshake_failures: AtomicU64,
}

/// Per upstream cluster (`outbound|port|subset|host`).
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub timeouts: AtomicU64,
    pub connect_failures: AtomicU64,
    pub in_flight: AtomicI64,
    /// Upstream connections this cluster's requests opened ([`ClusterStats::opened`]).
    connections: AtomicU64,
    /// Of those, the ones still open.
    connections_active: AtomicI64,
    /// Endpoints ejected by outlier detection.
    pub ejections: AtomicU64,
    /// Requests refused by the cluster's circuit breakers (503 `UO`).
    pub overflows: AtomicU64,
    /// Retries not made because `maxRetries` were in flight.
    pub retry_overflows: AtomicU64,
}

impl ClusterStats {
    /// Count a new upstream connection as open until the guard is dropped (with the
    /// connection).
    pub fn opened(self: &Arc<Self>) -> OpenConnection {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_active.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }
}

/// One open upstream connection, from [`ClusterStats::opened`].
#[derive(Debug)]
pub struct OpenConnection(Arc<ClusterStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reloads and what is loaded.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Unix seconds of the last good load.
    pub last_success: AtomicU64,
    pub resources: std::sync::Mutex<Vec<(&'static str, u64)>>,
}

impl ReloadStats {
    /// A configuration now serves: count it, stamp it, keep its resource counts.
    pub fn serving(&self, kinds: Vec<(&'static str, u64)>) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_success.store(now, Ordering::Relaxed);
        if let Ok(mut resources) = self.resources.lock() {
            *resources = kinds;
        }
    }
}

/// Every metric of the process. Series are created when first needed and live as long as
/// the process, so counters survive reloads.
#[derive(Debug)]
pub struct Metrics {
    /// `--metrics off`: nothing is recorded on the request path.
    pub enabled: bool,
    /// Istio's metrics a Telemetry turned off.
    pub disabled: Disabled,
    /// A Telemetry's `accessLogging` turned access lines off
    /// (`crate::telemetry::access_log_enabled`).
    pub access_log_disabled: AtomicBool,
    pub source_workload: String,
    pub source_namespace: String,
    destinations: DashMap<Destination, Arc<RequestStats>>,
    unknown: Arc<RequestStats>,
    plugins: DashMap<(String, String), Arc<PluginStats>>,
    routes: DashMap<(String, String), Arc<RouteStats>>,
    listeners: DashMap<String, Arc<ListenerStats>>,
    clusters: DashMap<String, Arc<ClusterStats>>,
    pub reloads: ReloadStats,
    /// The metrics plugins define (`wasmgate_plugin_<name>`), handed to the plugin host.
    plugin_defined: Arc<crate::plugin::metrics::Registry>,
    /// Extra families rendered as they are (tracing counters and the like).
    extra: std::sync::Mutex<Families>,
}

/// Renderers of metric families other modules own.
#[derive(Default)]
struct Families(Vec<Render>);

/// Writes one metric family into the exposition.
type Render = Box<dyn Fn(&mut String) + Send + Sync>;

impl std::fmt::Debug for Families {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} metric families", self.0.len())
    }
}

impl Metrics {
    pub fn new(enabled: bool, source_workload: &str, source_namespace: &str) -> Self {
        let disabled = Disabled::default();
        Metrics {
            enabled,
            unknown: Arc::new(RequestStats::new(Destination::unknown(), &disabled)),
            disabled,
            access_log_disabled: AtomicBool::new(false),
            source_workload: source_workload.to_string(),
            source_namespace: source_namespace.to_string(),
            destinations: DashMap::new(),
            plugins: DashMap::new(),
            routes: DashMap::new(),
            listeners: DashMap::new(),
            clusters: DashMap::new(),
            reloads: ReloadStats::default(),
            plugin_defined: Arc::new(crate::plugin::metrics::Registry::new(enabled)),
            extra: std::sync::Mutex::new(Families::default()),
        }
    }

    /// The series of a destination (created on first use; call when building clusters,
    /// not per request).
    pub fn destination(&self, d: Destination) -> Arc<RequestStats> {
        if let Some(s) = self.destinations.get(&d) {
            return s.clone();
        }
        self.destinations
            .entry(d.clone())
            .or_insert_with(|| Arc::new(RequestStats::new(d, &self.disabled)))
            .clone()
    }

    /// Requests that reached no destination (`destination_service="unknown"`).
    pub fn unknown(&self) -> &Arc<RequestStats> {
        &self.unknown
    }

    pub fn plugin(&self, plugin: &str, virtual_service: &str) -> Arc<PluginStats> {
        let key = (plugin.to_string(), virtual_service.to_string());
        self.plugins
            .entry(key)
            .or_insert_with(|| {
                Arc::new(PluginStats {
                    plugin: plugin.to_string(),
                    virtual_service: virtual_service.to_string(),
                    calls: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    traps: AtomicU64::new(0),
                    deadline_kills: AtomicU64::new(0),
                    memory_kills: AtomicU64::new(0),
                    latency_s: Histogram::new(&CALL_BUCKETS_S),
                })
            })
            .clone()
    }

    pub fn route(&self, virtual_service: &str, route: &str) -> Arc<RouteStats> {
        let key = (virtual_service.to_string(), route.to_string());
        self.routes
            .entry(key)
            .or_insert_with(|| {
                Arc::new(RouteStats {
                    virtual_service: virtual_service.to_string(),
                    route: route.to_string(),
                    by_class: Default::default(),
                    duration_s: Histogram::new(&DURATION_BUCKETS_S),
                })
            })
            .clone()
    }

    pub fn listener(&self, addr: &str) -> Arc<ListenerStats> {
        self.listeners.entry(addr.to_string()).or_default().clone()
    }

    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        self.clusters.entry(name.to_string()).or_default().clone()
    }

    /// Where the plugin host puts the metrics plugins define
    /// ([`crate::plugin::PluginHost::report_metrics_to`]); rendered with the rest.
    pub fn plugin_defined(&self) -> &Arc<crate::plugin::metrics::Registry> {
        &self.plugin_defined
    }

    /// Add a family rendered by `render` at every scrape.
    pub fn add_family(&self, render: impl Fn(&mut String) + Send + Sync + 'static) {
        if let Ok(mut extra) = self.extra.lock() {
            extra.0.push(Box::new(render));
        }
    }

    /// Everything, in Prometheus' text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        self.render_istio(&mut out);
        self.render_own(&mut out);
        self.plugin_defined.render(&mut out);
        if let Ok(extra) = self.extra.lock() {
            for render in extra.0.iter() {
                render(&mut out);
            }
        }
        out
    }

    fn destinations_sorted(&self) -> Vec<Arc<RequestStats>> {
        let mut all: Vec<Arc<RequestStats>> = self
            .destinations
            .iter()
            .map(|e| e.value().clone())
            .collect();
        all.push(self.unknown.clone());
        all.sort_by(|a, b| a.destination.service.cmp(&b.destination.service));
        all
    }

    fn istio_labels(&self, d: &Destination, o: &Outcome) -> String {
        let protocol = if o.grpc { "grpc" } else { "http" };
        let grpc = o.grpc_status.map(|s| s.to_string()).unwrap_or_default();
        format!(
            "reporter=\"source\",source_workload=\"{}\",source_workload_namespace=\"{}\",\
             source_canonical_service=\"{}\",destination_service=\"{}\",\
             destination_service_name=\"{}\",destination_service_namespace=\"{}\",\
             destination_version=\"{}\",destination_workload=\"unknown\",\
             request_protocol=\"{protocol}\",response_code=\"{}\",response_flags=\"{}\",\
             grpc_response_status=\"{grpc}\"",
            escape(&self.source_workload),
            escape(&self.source_namespace),
            escape(&self.source_workload),
            escape(&d.service),
            escape(&d.name),
            escape(&d.namespace),
            escape(&d.version),
            o.code,
            flags_label(o.flags),
        )
    }

    fn render_istio(&self, out: &mut String) {
        let all = self.destinations_sorted();
        let each = |out: &mut String, f: &dyn Fn(&mut String, &str, &Series)| {
            for stats in &all {
                for slot in stats.slots.iter() {
                    let key = slot.key.load(Ordering::Acquire);
                    let Some(series) = slot.series.get() else {
                        continue;
                    };
                    let labels = self.istio_labels(&stats.destination, &Outcome::from_key(key));
                    f(out, &labels, series);
                }
            }
        };
        let on = |m: IstioMetric| !self.disabled.contains(m);
        if on(IstioMetric::RequestCount) {
            header(
                out,
                "istio_requests_total",
                "counter",
                "Requests, by destination and response.",
            );
            each(out, &|out, labels, s| {
                let _ = writeln!(
                    out,
                    "istio_requests_total{{{labels}}} {}",
                    s.requests.load(Ordering::Relaxed)
                );
            });
        }
        for (metric, name, help, pick) in [
            (
                IstioMetric::RequestDuration,
                "istio_request_duration_milliseconds",
                "Request duration, from the first request byte to the last response byte.",
                (|s: &Series| &s.duration) as fn(&Series) -> &Histogram,
            ),
            (
                IstioMetric::RequestSize,
                "istio_request_bytes",
                "Request sizes: headers and body.",
                |s: &Series| &s.request_bytes,
            ),
            (
                IstioMetric::ResponseSize,
                "istio_response_bytes",
                "Response sizes: headers and body.",
                |s: &Series| &s.response_bytes,
            ),
        ] {
            if !on(metric) {
                continue;
            }
            header(out, name, "histogram", help);
            each(out, &|out, labels, s| pick(s).render(out, name, labels));
        }
        let counters = |t: &TcpStats| {
            [&t.opened, &t.closed, &t.sent, &t.received].map(|c| c.load(Ordering::Relaxed))
        };
        let tcp: Vec<&Arc<RequestStats>> = all
            .iter()
            .filter(|s| counters(&s.tcp).iter().any(|n| *n > 0))
            .collect();
        if tcp.is_empty() {
            return;
        }
        for (metric, name, help, pick) in [
            (
                IstioMetric::TcpOpenedConnections,
                "istio_tcp_connections_opened_total",
                "TCP connections opened.",
                (|t: &TcpStats| &t.opened) as fn(&TcpStats) -> &Counter,
            ),
            (
                IstioMetric::TcpClosedConnections,
                "istio_tcp_connections_closed_total",
                "TCP connections closed.",
                |t: &TcpStats| &t.closed,
            ),
            (
                IstioMetric::TcpSentBytes,
                "istio_tcp_sent_bytes_total",
                "Bytes sent to clients on TCP connections.",
                |t: &TcpStats| &t.sent,
            ),
            (
                IstioMetric::TcpReceivedBytes,
                "istio_tcp_received_bytes_total",
                "Bytes received from clients on TCP connections.",
                |t: &TcpStats| &t.received,
            ),
        ] {
            if !on(metric) {
                continue;
            }
            header(out, name, "counter", help);
            for stats in &tcp {
                let d = &stats.destination;
                let _ = writeln!(
                    out,
                    "{name}{{reporter=\"source\",source_workload=\"{}\",source_workload_namespace=\"{}\",destination_service=\"{}\",destination_service_name=\"{}\",destination_service_namespace=\"{}\",destination_version=\"{}\",request_protocol=\"tcp\",response_flags=\"-\"}} {}",
                    escape(&self.source_workload),
                    escape(&self.source_namespace),
                    escape(&d.service),
                    escape(&d.name),
                    escape(&d.namespace),
                    escape(&d.version),
                    pick(&stats.tcp).load(Ordering::Relaxed)
                );
            }
        }
    }

    fn render_own(&self, out: &mut String) {
        let mut plugins: Vec<Arc<PluginStats>> =
            self.plugins.iter().map(|e| e.value().clone()).collect();
        plugins
            .sort_by(|a, b| (&a.plugin, &a.virtual_service).cmp(&(&b.plugin, &b.virtual_service)));
        let plugin_labels = |p: &PluginStats| {
            format!(
                "plugin=\"{}\",virtual_service=\"{}\"",
                escape(&p.plugin),
                escape(&p.virtual_service)
            )
        };
        for (name, help, pick) in [
            (
                "wasmgate_plugin_calls_total",
                "Policy calls.",
                (|p: &PluginStats| &p.calls) as fn(&PluginStats) -> &AtomicU64,
            ),
            (
                "wasmgate_plugin_errors_total",
                "Policy calls that returned an error.",
                |p: &PluginStats| &p.errors,
            ),
            (
                "wasmgate_plugin_traps_total",
                "Policy calls that trapped (panic, deadline, memory limit).",
                |p: &PluginStats| &p.traps,
            ),
            (
                "wasmgate_plugin_deadline_kills_total",
                "Policy calls stopped at the time limit.",
                |p: &PluginStats| &p.deadline_kills,
            ),
            (
                "wasmgate_plugin_memory_kills_total",
                "Policy calls stopped at the memory limit.",
                |p: &PluginStats| &p.memory_kills,
            ),
        ] {
            header(out, name, "counter", help);
            for p in &plugins {
                let _ = writeln!(
                    out,
                    "{name}{{{}}} {}",
                    plugin_labels(p),
                    pick(p).load(Ordering::Relaxed)
                );
            }
        }
        let name = "wasmgate_plugin_call_duration_seconds";
        header(out, name, "histogram", "Time of one policy call.");
        for p in &plugins {
            p.latency_s.render(out, name, &plugin_labels(p));
        }

        let mut routes: Vec<Arc<RouteStats>> =
            self.routes.iter().map(|e| e.value().clone()).collect();
        routes.sort_by(|a, b| (&a.virtual_service, &a.route).cmp(&(&b.virtual_service, &b.route)));
        let route_labels = |r: &RouteStats| {
            format!(
                "virtual_service=\"{}\",route=\"{}\"",
                escape(&r.virtual_service),
                escape(&r.route)
            )
        };
        let name = "wasmgate_route_requests_total";
        header(
            out,
            name,
            "counter",
            "Requests a VirtualService route served, by status class.",
        );
        for r in &routes {
            for (i, n) in r.by_class.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "{name}{{{},response_code_class=\"{}xx\"}} {n}",
                        route_labels(r),
                        i + 1
                    );
                }
            }
        }
        let name = "wasmgate_route_request_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "Duration of the requests a VirtualService route served.",
        );
        for r in &routes {
            r.duration_s.render(out, name, &route_labels(r));
        }

        let mut listeners: Vec<(String, Arc<ListenerStats>)> = self
            .listeners
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        listeners.sort_by(|a, b| a.0.cmp(&b.0));
        header(
            out,
            "wasmgate_listener_connections_active",
            "gauge",
            "Open downstream connections.",
        );
        for (addr, l) in &listeners {
            let _ = writeln!(
                out,
                "wasmgate_listener_connections_active{{listener=\"{addr}\"}} {}",
                l.active.load(Ordering::Relaxed)
            );
        }
        for (name, help, pick) in [
            (
                "wasmgate_listener_connections_total",
                "Downstream connections accepted.",
                (|l: &ListenerStats| &l.total) as fn(&ListenerStats) -> &AtomicU64,
            ),
            (
                "wasmgate_listener_tls_handshakes_total",
                "TLS handshakes completed.",
                |l: &ListenerStats| &l.handshakes,
            ),
            (
                "wasmgate_listener_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
                |l: &ListenerStats| &l.handshake_failures,
            ),
        ] {
            header(out, name, "counter", help);
            for (addr, l) in &listeners {
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{addr}\"}} {}",
                    pick(l).load(Ordering::Relaxed)
                );
            }
        }

        let mut clusters: Vec<(String, Arc<ClusterStats>)> = self
            .clusters
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        clusters.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, help, pick) in [
            (
                "wasmgate_upstream_requests_total",
                "Requests sent to the cluster (attempts, retries included).",
                (|c: &ClusterStats| &c.requests) as fn(&ClusterStats) -> &AtomicU64,
            ),
            (
                "wasmgate_upstream_retries_total",
                "Retried attempts.",
                |c: &ClusterStats| &c.retries,
            ),
            (
                "wasmgate_upstream_timeouts_total",
                "Requests that ran out of their route or per-try timeout.",
                |c: &ClusterStats| &c.timeouts,
            ),
            (
                "wasmgate_upstream_connect_failures_total",
                "Attempts whose connection failed.",
                |c: &ClusterStats| &c.connect_failures,
            ),
            (
                "wasmgate_upstream_connections_total",
                "Upstream connections opened for the cluster's requests.",
                |c: &ClusterStats| &c.connections,
            ),
            (
                "wasmgate_upstream_ejections_total",
                "Endpoints ejected by outlier detection.",
                |c: &ClusterStats| &c.ejections,
            ),
            (
                "wasmgate_upstream_overflows_total",
                "Requests refused by the cluster's circuit breakers (503 UO).",
                |c: &ClusterStats| &c.overflows,
            ),
            (
                "wasmgate_upstream_retry_overflows_total",
                "Retries not made because maxRetries retries were in flight.",
                |c: &ClusterStats| &c.retry_overflows,
            ),
        ] {
            header(out, name, "counter", help);
            for (cluster, c) in &clusters {
                let _ = writeln!(
                    out,
                    "{name}{{cluster=\"{}\"}} {}",
                    escape(cluster),
                    pick(c).load(Ordering::Relaxed)
                );
            }
        }
        header(
            out,
            "wasmgate_upstream_requests_active",
            "gauge",
            "Requests in flight to the cluster.",
        );
        for (cluster, c) in &clusters {
            let _ = writeln!(
                out,
                "wasmgate_upstream_requests_active{{cluster=\"{}\"}} {}",
                escape(cluster),
                c.in_flight.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "wasmgate_upstream_connections_active",
            "gauge",
            "Open upstream connections, by the cluster whose request opened them (the connection pool).",
        );
        for (cluster, c) in &clusters {
            let _ = writeln!(
                out,
                "wasmgate_upstream_connections_active{{cluster=\"{}\"}} {}",
                escape(cluster),
                c.connections_active.load(Ordering::Relaxed).max(0)
            );
        }

        let r = &self.reloads;
        header(
            out,
            "wasmgate_config_reloads_total",
            "counter",
            "Configuration loads, by result.",
        );
        let _ = writeln!(
            out,
            "wasmgate_config_reloads_total{{result=\"success\"}} {}",
            r.succeeded.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "wasmgate_config_reloads_total{{result=\"failure\"}} {}",
            r.failed.load(Ordering::Relaxed)
        );
        header(
            out,
            "wasmgate_config_last_success_timestamp_seconds",
            "gauge",
            "When the configuration last loaded.",
        );
        let _ = writeln!(
            out,
            "wasmgate_config_last_success_timestamp_seconds {}",
            r.last_success.load(Ordering::Relaxed)
        );
        header(
            out,
            "wasmgate_config_resources",
            "gauge",
            "Resources in the serving configuration, by kind.",
        );
        if let Ok(kinds) = r.resources.lock() {
            for (kind, n) in kinds.iter() {
                let _ = writeln!(out, "wasmgate_config_resources{{kind=\"{kind}\"}} {n}");
            }
        }
    }
}

/// A family's `# HELP` and `# TYPE` lines; the help escaped as the text format wants
/// (plugins write their own).
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let help: std::borrow::Cow<'_, str> = if help.contains(['\\', '\n']) {
        help.replace('\\', "\\\\").replace('\n', "\\n").into()
    } else {
        help.into()
    };
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as Prometheus' text format wants it.
pub(crate) fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_keys_round_trip() {
        for o in [
            Outcome {
                code: 200,
                flags: 0,
                grpc: false,
                grpc_status: None,
            },
            Outcome {
                code: 503,
                flags: flag_bits(["UF", "URX"]),
                grpc: true,
                grpc_status: Some(14),
            },
            Outcome {
                code: 200,
                flags: 0,
                grpc: true,
                grpc_status: Some(0),
            },
            Outcome {
                code: 200,
                flags: 0,
                grpc: true,
                grpc_status: Some(u8::MAX),
            },
        ] {
            assert_eq!(Outcome::from_key(o.key()), o);
        }
        assert_eq!(flags_label(flag_bits(["URX", "UF"])), "UF,URX");
        assert_eq!(flags_label(0), "-");
    }

    #[test]
    fn requests_render_with_istio_labels_and_buckets() {
        let m = Metrics::new(true, "wasmgate", "istio-system");
        let d = m.destination(Destination::new(
            "reviews.default.svc.cluster.local",
            "default",
            Some("v2"),
        ));
        let ok = Outcome {
            code: 200,
            flags: 0,
            grpc: false,
            grpc_status: None,
        };
        d.record(ok, 3.2, 120, 4000);
        d.record(ok, 70.0, 120, 4000);
        m.unknown().record(
            Outcome {
                code: 404,
                flags: flag_bits(["NR"]),
                grpc: false,
                grpc_status: None,
            },
            0.1,
            80,
            0,
        );
        let text = m.render();
        assert!(text.contains("istio_requests_total{reporter=\"source\",source_workload=\"wasmgate\",source_workload_namespace=\"istio-system\",source_canonical_service=\"wasmgate\",destination_service=\"reviews.default.svc.cluster.local\",destination_service_name=\"reviews\",destination_service_namespace=\"default\",destination_version=\"v2\",destination_workload=\"unknown\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",grpc_response_status=\"\"} 2"), "{text}");
        assert!(text.contains("destination_service=\"unknown\""), "{text}");
        assert!(text.contains("response_code=\"404\",response_flags=\"NR\""));
        assert!(text.contains("le=\"5\"} 1"), "{text}");
        assert!(text.contains("le=\"100\"} 2"), "{text}");
        assert!(
            text.contains("istio_request_duration_milliseconds_sum{"),
            "{text}"
        );
        assert!(
            !text.contains("istio_tcp_"),
            "no TCP families without TCP traffic"
        );
    }

    #[test]
    fn disabled_metrics_are_neither_recorded_nor_rendered() {
        let m = Metrics::new(true, "wasmgate", "istio-system");
        let d = m.destination(Destination::new("a.example.com", "default", None));
        let ok = Outcome {
            code: 200,
            flags: 0,
            grpc: false,
            grpc_status: None,
        };
        m.disabled
            .set(&[IstioMetric::RequestCount, IstioMetric::TcpSentBytes]);
        d.record(ok, 1.0, 10, 10);
        d.tcp.opened.fetch_add(1, Ordering::Relaxed);
        d.tcp.sent.fetch_add(100, Ordering::Relaxed);
        let text = m.render();
        assert!(!text.contains("istio_requests_total"), "{text}");
        assert!(!text.contains("istio_tcp_sent_bytes_total"), "{text}");
        assert!(
            text.contains("istio_request_duration_milliseconds_count{"),
            "{text}"
        );
        assert!(
            text.contains("istio_tcp_connections_opened_total{"),
            "{text}"
        );
        // Back on: only what was recorded since counts.
        m.disabled.set(&[]);
        d.record(ok, 1.0, 10, 10);
        let text = m.render();
        assert!(
            text.contains("response_flags=\"-\",grpc_response_status=\"\"} 1\n"),
            "{text}"
        );
        assert_eq!(d.tcp.sent.load(Ordering::Relaxed), 0);
        assert!(!m.disabled.contains(IstioMetric::RequestCount));
        // Everything off: not even a slot is taken.
        m.disabled.set(&IstioMetric::ALL);
        let e = m.destination(Destination::new("b.example.com", "default", None));
        e.record(ok, 1.0, 10, 10);
        assert!(e.slots.iter().all(|s| s.series.get().is_none()));
        assert!(!m.render().contains("istio_"));
    }

    #[test]
    fn slots_are_shared_by_concurrent_writers() {
        let m = Arc::new(Metrics::new(true, "w", "ns"));
        let d = m.destination(Destination::new("a.example.com", "default", None));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let d = d.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u16 {
                        d.record(
                            Outcome {
                                code: 200 + (i + t) % 3,
                                flags: 0,
                                grpc: false,
                                grpc_status: None,
                            },
                            1.0,
                            1,
                            1,
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
        let total: u64 = d
            .slots
            .iter()
            .filter_map(|s| s.series.get())
            .map(|s| s.requests.load(Ordering::Relaxed))
            .sum();
        assert_eq!(total, 40_000);
        assert_eq!(
            d.slots.iter().filter(|s| s.series.get().is_some()).count(),
            3
        );
    }
}
