//! Metrics that plugins define through `wasmgate:policy/metrics` (WIT 0.2.1): the
//! registry the host imports write into and `/stats/prometheus` renders, as
//! `wasmgate_plugin_<name>{plugin="<ns>/<name>",<labels>}`.
//!
//! One [`Registry`] per process (owned by the telemetry `Metrics`, handed to the plugin
//! host), one [`PluginMetrics`] per plugin name in it. Definitions are keyed by plugin
//! and metric name, so every instance of a plugin, and the same plugin after a reload,
//! gets the same ids and the same series. The request path is an index into a fixed
//! array of definitions, a read-locked lookup of the label values among at most
//! [`MAX_SERIES`] series, and an atomic addition; a new label set takes the write lock
//! once. Everything a plugin can grow is capped: metrics per plugin, labels per metric,
//! label sets per metric (further ones fold into one overflow series), label value and
//! help lengths, buckets.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use crate::telemetry::metrics::{escape, header};

/// What every plugin-defined family's name starts with.
pub const PREFIX: &str = "wasmgate_plugin_";
/// Most metrics one plugin may define.
pub const MAX_METRICS: usize = 32;
/// Most label names one metric may have.
pub const MAX_LABELS: usize = 8;
/// Most label sets (series) one metric keeps; further sets fold into the overflow series.
pub const MAX_SERIES: usize = 100;
/// Most bucket bounds one histogram may have (`+Inf` not counted).
pub const MAX_BUCKETS: usize = 32;
/// Longest metric or label name, in bytes.
pub const MAX_NAME: usize = 64;
/// Longest help text, in bytes.
pub const MAX_HELP: usize = 256;
/// Label values longer than this many bytes are cut (at a character boundary).
pub const MAX_VALUE: usize = 128;
/// Every label value of the series that collects the updates beyond [`MAX_SERIES`].
pub const OVERFLOW: &str = "__overflow__";

/// wasmgate's own `wasmgate_plugin_*` families, whose names plugins cannot take.
const OWN: [(&str, Kind); 15] = [
    ("calls_total", Kind::Counter),
    ("errors_total", Kind::Counter),
    ("traps_total", Kind::Counter),
    ("deadline_kills_total", Kind::Counter),
    ("memory_kills_total", Kind::Counter),
    ("call_duration_seconds", Kind::Histogram),
    ("metric_overflow_total", Kind::Counter),
    ("metric_updates_dropped_total", Kind::Counter),
    // Gauges write one sample per series, as counters do.
    ("instances", Kind::Counter),
    ("instance_waits_total", Kind::Counter),
    ("instance_wait_seconds_total", Kind::Counter),
    ("calls_restarted_total", Kind::Counter),
    // A gauge, refused to plugins as a counter name too.
    ("breaker_open", Kind::Counter),
    ("breaker_opened_total", Kind::Counter),
    ("quarantined_total", Kind::Counter),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Histogram,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }

    /// The sample names a family of this kind writes.
    fn samples(self, name: &str) -> Vec<String> {
        match self {
            Kind::Counter => vec![name.to_string()],
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect(),
        }
    }
}

/// Why an update was dropped; the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    /// No metric of that kind has this id in this plugin.
    UnknownMetric = 0,
    /// Not one label value per label name.
    LabelCount = 1,
    /// A histogram observation that is NaN or infinite.
    NotFinite = 2,
}

const DROPPED: [&str; 3] = ["unknown_metric", "label_count", "not_finite"];

/// One family as the process knows it: a name keeps its type, and its help is the first
/// definer's.
#[derive(Debug)]
struct Family {
    kind: Kind,
    help: String,
}

type Families = Arc<Mutex<BTreeMap<String, Family>>>;

/// Every plugin's metrics in the process.
#[derive(Debug)]
pub struct Registry {
    /// `--metrics off`: definitions work (plugins behave the same), updates are ignored
    /// and nothing is rendered.
    enabled: bool,
    families: Families,
    plugins: Mutex<BTreeMap<String, Arc<PluginMetrics>>>,
}

impl Registry {
    pub fn new(enabled: bool) -> Self {
        Registry {
            enabled,
            families: Arc::default(),
            plugins: Mutex::default(),
        }
    }

    /// The metrics of `plugin` (`ns/name`), made on first use. Called when a binding is
    /// prepared, not per request.
    pub fn plugin(&self, plugin: &str) -> Arc<PluginMetrics> {
        let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        plugins
            .entry(plugin.to_string())
            .or_insert_with(|| {
                Arc::new(PluginMetrics {
                    plugin: plugin.to_string(),
                    enabled: self.enabled,
                    families: self.families.clone(),
                    metrics: (0..MAX_METRICS).map(|_| OnceLock::new()).collect(),
                    defined: Mutex::new(0),
                    dropped: Default::default(),
                    warned: Default::default(),
                    pool: PoolStats::default(),
                })
            })
            .clone()
    }

    /// Every plugin-defined family, then the overflow and dropped-update counters, in
    /// Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        if !self.enabled {
            return;
        }
        let plugins: Vec<Arc<PluginMetrics>> = self
            .plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut by_family: BTreeMap<&str, Vec<(&str, &Metric)>> = BTreeMap::new();
        for p in &plugins {
            for m in p.metrics.iter().filter_map(OnceLock::get) {
                by_family
                    .entry(m.name.as_str())
                    .or_default()
                    .push((p.plugin.as_str(), m));
            }
        }
        {
            let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
            for (name, metrics) in &by_family {
                let Some(family) = families.get(*name) else {
                    continue;
                };
                let full = format!("{PREFIX}{name}");
                header(out, &full, family.kind.word(), &family.help);
                for (plugin, m) in metrics {
                    m.render(out, &full, plugin);
                }
            }
        }

        render_pools(out, &plugins);

        let name = "wasmgate_plugin_metric_overflow_total";
        header(
            out,
            name,
            "counter",
            "Plugin metric updates folded into the overflow series: the metric had all the label sets it may keep.",
        );
        for (plugin, m) in by_family.values().flatten() {
            let n = m.overflowed.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{name}{{plugin=\"{}\",metric=\"{}\"}} {n}",
                    escape(plugin),
                    m.name
                );
            }
        }
        let name = "wasmgate_plugin_metric_updates_dropped_total";
        header(
            out,
            name,
            "counter",
            "Plugin metric updates the host could not apply, by reason.",
        );
        for p in &plugins {
            for (reason, n) in DROPPED.iter().zip(&p.dropped) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "{name}{{plugin=\"{}\",reason=\"{reason}\"}} {n}",
                        escape(&p.plugin)
                    );
                }
            }
        }
    }
}

/// The metrics one plugin defined. Shared by all its instances and bindings.
#[derive(Debug)]
pub struct PluginMetrics {
    plugin: String,
    enabled: bool,
    families: Families,
    /// By id; filled in order, never emptied.
    metrics: Box<[OnceLock<Metric>]>,
    /// How many are defined; held while defining.
    defined: Mutex<usize>,
    dropped: [AtomicU64; 3],
    /// The first drop of each reason is logged; later ones are only counted.
    warned: [AtomicBool; 3],
    /// Its instance pools (one per snapshot), summed.
    pool: PoolStats,
}

/// One plugin's instances, summed over the pools of every live snapshot (a reload's new
/// pool and the old one its in-flight requests still use). Kept per plugin name, so the
/// counters survive reloads. Atomics only: a call flips its instance out of and back
/// into `idle`; the rest moves only when an instance is made or dropped.
#[derive(Debug, Default)]
struct PoolStats {
    /// Instances alive: idle, or in a call.
    live: AtomicI64,
    /// Instances waiting in a pool for a call.
    idle: AtomicI64,
    /// Calls that found no idle instance and waited while one was instantiated.
    waits: AtomicU64,
    /// The time those waits took, in microseconds.
    wait_micros: AtomicU64,
    /// Direct calls stopped after their first slice and made again on the slow lane.
    restarts: AtomicU64,
}

/// Counts one plugin instance in its plugin's pool gauges while it lives (held by the
/// instance; dropping the instance drops it). Counts nothing under `--metrics off`.
#[derive(Debug)]
pub struct Instance {
    metrics: Option<Arc<PluginMetrics>>,
    idle: bool,
}

impl Instance {
    /// A new, busy instance of the plugin of `metrics`.
    pub fn new(metrics: &Arc<PluginMetrics>) -> Self {
        let metrics = metrics.enabled.then(|| metrics.clone());
        if let Some(m) = &metrics {
            m.pool.live.fetch_add(1, Ordering::Relaxed);
        }
        Instance {
            metrics,
            idle: false,
        }
    }

    /// The instance went back into its pool (`true`) or out of it for a call.
    pub fn set_idle(&mut self, idle: bool) {
        if let Some(m) = &self.metrics
            && self.idle != idle
        {
            m.pool
                .idle
                .fetch_add(if idle { 1 } else { -1 }, Ordering::Relaxed);
        }
        self.idle = idle;
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.set_idle(false);
        if let Some(m) = &self.metrics {
            m.pool.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A definition as a plugin asks for it.
#[derive(Debug, Clone, Copy)]
pub enum Definition<'a> {
    Counter,
    Histogram { buckets: &'a [f64] },
}

impl PluginMetrics {
    /// A call found no idle instance and waited `took` for a new one.
    pub fn waited(&self, took: Duration) {
        if !self.enabled {
            return;
        }
        let pool = &self.pool;
        pool.waits.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        pool.wait_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// A direct call ran out of its first slice and is made again on the slow lane.
    pub fn restarted(&self) {
        if self.enabled {
            self.pool.restarts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The plugin's name (`ns/name`).
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Define a metric, or find the one defined before with the same name, labels and
    /// buckets. The error is the sentence the plugin gets back.
    pub fn define(
        &self,
        name: &str,
        help: &str,
        labels: &[String],
        definition: Definition<'_>,
    ) -> Result<u32, String> {
        let kind = match definition {
            Definition::Counter => Kind::Counter,
            Definition::Histogram { .. } => Kind::Histogram,
        };
        let buckets = match definition {
            Definition::Counter => &[][..],
            Definition::Histogram { buckets } => buckets,
        };
        check_definition(name, help, labels, kind, buckets)?;
        let mut defined = self.defined.lock().unwrap_or_else(|e| e.into_inner());
        let earlier = self.metrics[..*defined].iter().enumerate();
        for (id, m) in earlier.filter_map(|(id, m)| Some((id, m.get()?))) {
            if m.name != name {
                continue;
            }
            let same_buckets = match &m.kind {
                Shape::Counter => kind == Kind::Counter,
                Shape::Histogram(b) => kind == Kind::Histogram && **b == *buckets,
            };
            if same_buckets && *m.labels == *labels {
                return u32::try_from(id).map_err(|e| e.to_string());
            }
            return Err(format!(
                "metric {name:?} is already defined by this plugin as {}; a metric keeps its \
                 type, labels and buckets until the gateway restarts (define a new name)",
                m.describe()
            ));
        }
        if *defined >= MAX_METRICS {
            return Err(format!(
                "metric {name:?}: this plugin already defines {MAX_METRICS} metrics, the most \
                 a plugin may"
            ));
        }
        self.claim_family(name, kind, help)?;
        let metric = Metric::new(name, labels, kind, buckets);
        let id = *defined;
        // The slot is empty: ids are only handed out here, under `defined`.
        let _ = self.metrics[id].set(metric);
        *defined += 1;
        u32::try_from(id).map_err(|e| e.to_string())
    }

    /// Check `name` against every family in the process and take it for `kind`.
    fn claim_family(&self, name: &str, kind: Kind, help: &str) -> Result<(), String> {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = families.get(name) {
            if f.kind == kind {
                return Ok(());
            }
            return Err(format!(
                "metric {name:?} is a {} in this gateway (another plugin defined it); a name \
                 keeps its type",
                f.kind.word()
            ));
        }
        let own = OWN.iter().map(|(n, k)| (*n, *k));
        let plugins = families.iter().map(|(n, f)| (n.as_str(), f.kind));
        let mine = kind.samples(name);
        for (other, other_kind) in own.chain(plugins) {
            let theirs = other_kind.samples(other);
            if other == name || mine.iter().any(|s| theirs.contains(s)) {
                return Err(format!(
                    "metric {name:?} would collide with {PREFIX}{other} on /stats/prometheus"
                ));
            }
        }
        families.insert(
            name.to_string(),
            Family {
                kind,
                help: help.to_string(),
            },
        );
        Ok(())
    }

    /// Add `value` to counter `id`'s series for `labels`.
    pub fn counter_add(&self, id: u32, labels: Vec<String>, value: u64) {
        if !self.enabled {
            return;
        }
        let Some(m) = self.metric(id, Kind::Counter) else {
            return;
        };
        if let Some(labels) = self.checked(m, labels) {
            m.update(labels, |s| s.add(value));
        }
    }

    /// Record `value` in histogram `id`'s series for `labels`.
    pub fn histogram_observe(&self, id: u32, labels: Vec<String>, value: f64) {
        if !self.enabled {
            return;
        }
        let Some(m) = self.metric(id, Kind::Histogram) else {
            return;
        };
        if !value.is_finite() {
            self.drop_update(Dropped::NotFinite, &m.name);
            return;
        }
        if let Some(labels) = self.checked(m, labels) {
            let Shape::Histogram(bounds) = &m.kind else {
                return;
            };
            m.update(labels, |s| s.observe(bounds, value));
        }
    }

    fn metric(&self, id: u32, kind: Kind) -> Option<&Metric> {
        let m = self
            .metrics
            .get(id as usize)
            .and_then(OnceLock::get)
            .filter(|m| m.kind.kind() == kind);
        if m.is_none() {
            self.drop_update(Dropped::UnknownMetric, &format!("id {id}"));
        }
        m
    }

    fn checked(&self, m: &Metric, labels: Vec<String>) -> Option<Vec<String>> {
        if labels.len() == m.labels.len() {
            Some(labels)
        } else {
            self.drop_update(Dropped::LabelCount, &m.name);
            None
        }
    }

    fn drop_update(&self, why: Dropped, metric: &str) {
        let i = why as usize;
        self.dropped[i].fetch_add(1, Ordering::Relaxed);
        if !self.warned[i].swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: "wasmgate::plugin",
                plugin = %self.plugin,
                "metric update dropped ({}, metric {metric}); further drops are only counted \
                 in wasmgate_plugin_metric_updates_dropped_total",
                DROPPED[i]
            );
        }
    }
}

/// The rules every definition follows (see the WIT's `metrics` interface).
fn check_definition(
    name: &str,
    help: &str,
    labels: &[String],
    kind: Kind,
    buckets: &[f64],
) -> Result<(), String> {
    if !valid_name(name) {
        return Err(format!(
            "metric {name:?}: a name matches [a-z_][a-z0-9_]* and has at most {MAX_NAME} bytes"
        ));
    }
    if help.len() > MAX_HELP {
        return Err(format!(
            "metric {name:?}: help has {} bytes, more than {MAX_HELP}",
            help.len()
        ));
    }
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "metric {name:?}: {} labels, more than {MAX_LABELS}",
            labels.len()
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        if !valid_name(label) || label.starts_with("__") {
            return Err(format!(
                "metric {name:?}: label {label:?}: a label name matches [a-z_][a-z0-9_]*, has \
                 at most {MAX_NAME} bytes and does not start with __"
            ));
        }
        if label == "le" || label == "plugin" {
            return Err(format!(
                "metric {name:?}: label {label:?} is reserved (the host sets it)"
            ));
        }
        if labels[..i].contains(label) {
            return Err(format!("metric {name:?}: label {label:?} appears twice"));
        }
    }
    if kind == Kind::Histogram {
        if buckets.is_empty() || buckets.len() > MAX_BUCKETS {
            return Err(format!(
                "metric {name:?}: a histogram has 1 to {MAX_BUCKETS} buckets, not {}",
                buckets.len()
            ));
        }
        if buckets.iter().any(|b| !b.is_finite()) || buckets.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "metric {name:?}: bucket bounds must be finite and increasing ({buckets:?}); \
                 +Inf is implied"
            ));
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_NAME
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[derive(Debug)]
enum Shape {
    Counter,
    /// Upper bounds, shared by every series of the metric.
    Histogram(Box<[f64]>),
}

impl Shape {
    fn kind(&self) -> Kind {
        match self {
            Shape::Counter => Kind::Counter,
            Shape::Histogram(_) => Kind::Histogram,
        }
    }
}

/// One defined metric and its series.
#[derive(Debug)]
struct Metric {
    name: String,
    labels: Box<[String]>,
    kind: Shape,
    series: RwLock<HashMap<Vec<String>, Series>>,
    /// Where the updates of label sets beyond [`MAX_SERIES`] go.
    overflow: Series,
    overflowed: AtomicU64,
}

impl Metric {
    fn new(name: &str, labels: &[String], kind: Kind, buckets: &[f64]) -> Self {
        let kind = match kind {
            Kind::Counter => Shape::Counter,
            Kind::Histogram => Shape::Histogram(buckets.into()),
        };
        let mut series = HashMap::new();
        // A metric without labels has one series: shown at 0 from its definition on.
        if labels.is_empty() {
            series.insert(Vec::new(), Series::new(&kind));
        }
        Metric {
            name: name.to_string(),
            labels: labels.into(),
            overflow: Series::new(&kind),
            kind,
            series: RwLock::new(series),
            overflowed: AtomicU64::new(0),
        }
    }

    fn describe(&self) -> String {
        match &self.kind {
            Shape::Counter => format!("a counter with labels {:?}", self.labels),
            Shape::Histogram(b) => {
                format!(
                    "a histogram with labels {:?} and buckets {b:?}",
                    self.labels
                )
            }
        }
    }

    /// Apply `f` to the series of `labels`, made when new and there is room.
    fn update(&self, mut labels: Vec<String>, f: impl Fn(&Series)) {
        {
            let series = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = series.get(&labels) {
                return f(s);
            }
            if series.len() >= MAX_SERIES {
                drop(series);
                return self.fold(labels, f);
            }
        }
        for value in &mut labels {
            cut(value);
        }
        if labels.iter().all(|v| v == OVERFLOW) {
            return f(&self.overflow);
        }
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = series.get(&labels) {
            return f(s);
        }
        if series.len() >= MAX_SERIES {
            drop(series);
            return self.fold(labels, f);
        }
        let s = Series::new(&self.kind);
        f(&s);
        series.insert(labels, s);
    }

    /// An update for a label set there is no room for (or one cut to an existing set).
    fn fold(&self, mut labels: Vec<String>, f: impl Fn(&Series)) {
        for value in &mut labels {
            cut(value);
        }
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = series.get(&labels) {
            return f(s);
        }
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        f(&self.overflow);
    }

    fn render(&self, out: &mut String, full: &str, plugin: &str) {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        let mut sorted: Vec<(&Vec<String>, &Series)> = series.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let overflow: Vec<String> = self.labels.iter().map(|_| OVERFLOW.to_string()).collect();
        let folded = (self.overflowed.load(Ordering::Relaxed) > 0 || self.overflow.count() > 0)
            .then_some((&overflow, &self.overflow));
        for (values, s) in sorted.into_iter().chain(folded) {
            let mut labels = format!("plugin=\"{}\"", escape(plugin));
            for (name, value) in self.labels.iter().zip(values) {
                let _ = write!(labels, ",{name}=\"{}\"", escape(value));
            }
            match (s, &self.kind) {
                (Series::Counter(n), _) => {
                    let _ = writeln!(out, "{full}{{{labels}}} {}", n.load(Ordering::Relaxed));
                }
                (Series::Histogram(h), Shape::Histogram(bounds)) => {
                    h.render(out, full, &labels, bounds);
                }
                (Series::Histogram(_), Shape::Counter) => {}
            }
        }
    }
}

/// Cut a label value to [`MAX_VALUE`] bytes at a character boundary.
fn cut(value: &mut String) {
    if value.len() > MAX_VALUE {
        let mut end = MAX_VALUE;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
}

#[derive(Debug)]
enum Series {
    Counter(AtomicU64),
    Histogram(HistogramSeries),
}

impl Series {
    fn new(kind: &Shape) -> Self {
        match kind {
            Shape::Counter => Series::Counter(AtomicU64::new(0)),
            Shape::Histogram(bounds) => Series::Histogram(HistogramSeries {
                buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0f64.to_bits()),
                count: AtomicU64::new(0),
            }),
        }
    }

    fn add(&self, value: u64) {
        if let Series::Counter(n) = self {
            n.fetch_add(value, Ordering::Relaxed);
        }
    }

    fn observe(&self, bounds: &[f64], value: f64) {
        if let Series::Histogram(h) = self {
            h.observe(bounds, value);
        }
    }

    fn count(&self) -> u64 {
        match self {
            Series::Counter(n) => n.load(Ordering::Relaxed),
            Series::Histogram(h) => h.count.load(Ordering::Relaxed),
        }
    }
}

/// A histogram series over its metric's bounds. Unlike the host's own histograms the
/// values have no known unit or sign, so the sum is a whole `f64`.
#[derive(Debug)]
struct HistogramSeries {
    /// Per bound, not cumulative; observations above the last bound are only in `count`.
    buckets: Box<[AtomicU64]>,
    /// `f64` bits.
    sum: AtomicU64,
    count: AtomicU64,
}

impl HistogramSeries {
    fn observe(&self, bounds: &[f64], value: f64) {
        if let Some(i) = bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, full: &str, labels: &str, bounds: &[f64]) {
        let mut cumulative = 0;
        for (bound, n) in bounds.iter().zip(self.buckets.iter()) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{full}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{full}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed));
        let _ = writeln!(out, "{full}_sum{{{labels}}} {}", float(sum));
        let _ = writeln!(out, "{full}_count{{{labels}}} {count}");
    }
}

/// A float as Prometheus writes one.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

/// A per-plugin counter of the instance pools: name, help, value.
type PoolCounter = (&'static str, &'static str, fn(&PoolStats) -> f64);

/// The instance pools of every plugin that has prepared a binding.
fn render_pools(out: &mut String, plugins: &[Arc<PluginMetrics>]) {
    let name = "wasmgate_plugin_instances";
    header(
        out,
        name,
        "gauge",
        "Plugin instances alive, by state: idle in a pool, or busy in a call.",
    );
    for p in plugins {
        let live = p.pool.live.load(Ordering::Relaxed).max(0);
        let idle = p.pool.idle.load(Ordering::Relaxed).clamp(0, live);
        let plugin = escape(&p.plugin);
        let _ = writeln!(out, "{name}{{plugin=\"{plugin}\",state=\"idle\"}} {idle}");
        let _ = writeln!(
            out,
            "{name}{{plugin=\"{plugin}\",state=\"busy\"}} {}",
            live - idle
        );
    }
    let counters: [PoolCounter; 3] = [
        (
            "wasmgate_plugin_instance_waits_total",
            "Plugin calls that found no idle instance and waited while one was instantiated.",
            |pool| pool.waits.load(Ordering::Relaxed) as f64,
        ),
        (
            "wasmgate_plugin_instance_wait_seconds_total",
            "Time plugin calls waited for a new instance.",
            |pool| pool.wait_micros.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "wasmgate_plugin_calls_restarted_total",
            "Direct plugin calls stopped after their first slice and made again on the slow lane.",
            |pool| pool.restarts.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, help, value) in counters {
        header(out, name, "counter", help);
        for p in plugins {
            let v = value(&p.pool);
            let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {v}", escape(&p.plugin));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDK refuses in native tests exactly the names the host refuses, so a plugin
    /// that passes its tests is not refused at `prepare`.
    #[test]
    fn the_sdk_reserves_the_hosts_own_names() {
        assert_eq!(
            OWN.map(|(name, _)| name),
            wasmgate_plugin_sdk::metrics::RESERVED
        );
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn rendered(r: &Registry) -> String {
        let mut out = String::new();
        r.render(&mut out);
        out
    }

    #[test]
    fn counters_and_histograms_render_with_the_plugin_label() {
        let r = Registry::new(true);
        let p = r.plugin("default/probe");
        let c = p
            .define(
                "blocked_total",
                "Requests blocked.",
                &strings(&["reason"]),
                Definition::Counter,
            )
            .expect("counter");
        let h = p
            .define(
                "size",
                "Sizes.",
                &strings(&["method"]),
                Definition::Histogram {
                    buckets: &[1.0, 10.0],
                },
            )
            .expect("histogram");
        p.counter_add(c, strings(&["header"]), 2);
        p.counter_add(c, strings(&["path \"x\""]), 1);
        p.histogram_observe(h, strings(&["GET"]), 0.5);
        p.histogram_observe(h, strings(&["GET"]), 5.0);
        p.histogram_observe(h, strings(&["GET"]), -50.0);
        p.histogram_observe(h, strings(&["GET"]), 500.0);
        let text = rendered(&r);
        for line in [
            "# HELP wasmgate_plugin_blocked_total Requests blocked.",
            "# TYPE wasmgate_plugin_blocked_total counter",
            "wasmgate_plugin_blocked_total{plugin=\"default/probe\",reason=\"header\"} 2",
            "wasmgate_plugin_blocked_total{plugin=\"default/probe\",reason=\"path \\\"x\\\"\"} 1",
            "# TYPE wasmgate_plugin_size histogram",
            "wasmgate_plugin_size_bucket{plugin=\"default/probe\",method=\"GET\",le=\"1\"} 2",
            "wasmgate_plugin_size_bucket{plugin=\"default/probe\",method=\"GET\",le=\"10\"} 3",
            "wasmgate_plugin_size_bucket{plugin=\"default/probe\",method=\"GET\",le=\"+Inf\"} 4",
            "wasmgate_plugin_size_sum{plugin=\"default/probe\",method=\"GET\"} 455.5",
            "wasmgate_plugin_size_count{plugin=\"default/probe\",method=\"GET\"} 4",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn the_same_definition_gets_the_same_id_and_series() {
        let r = Registry::new(true);
        let labels = strings(&["a"]);
        let first = r
            .plugin("ns/p")
            .define("n_total", "", &labels, Definition::Counter)
            .expect("define");
        // Another instance, or the same plugin after a reload.
        let again = r
            .plugin("ns/p")
            .define("n_total", "", &labels, Definition::Counter)
            .expect("define again");
        assert_eq!(first, again);
        r.plugin("ns/p").counter_add(first, strings(&["x"]), 1);
        r.plugin("ns/p").counter_add(again, strings(&["x"]), 1);
        assert!(rendered(&r).contains("wasmgate_plugin_n_total{plugin=\"ns/p\",a=\"x\"} 2"));
        // Another plugin may use the name too, as a counter.
        let other = r.plugin("ns/q");
        let id = other
            .define("n_total", "", &strings(&["b"]), Definition::Counter)
            .expect("other plugin");
        assert_eq!(id, 0);
        let err = other
            .define("n_total", "", &strings(&["c"]), Definition::Counter)
            .expect_err("changed labels");
        assert!(err.contains("already defined by this plugin"), "{err}");
    }

    #[test]
    fn definitions_are_checked() {
        let r = Registry::new(true);
        let p = r.plugin("ns/p");
        let counter =
            |name: &str, labels: &[&str]| p.define(name, "", &strings(labels), Definition::Counter);
        for (name, labels, says) in [
            ("Bad", &[][..], "[a-z_][a-z0-9_]*"),
            ("1x", &[], "[a-z_][a-z0-9_]*"),
            ("", &[], "[a-z_][a-z0-9_]*"),
            ("ok", &["le"], "reserved"),
            ("ok", &["plugin"], "reserved"),
            ("ok", &["__x"], "does not start with __"),
            ("ok", &["a", "a"], "twice"),
            (
                "ok",
                &["a", "b", "c", "d", "e", "f", "g", "h", "i"],
                "more than 8",
            ),
            ("calls_total", &[], "collide"),
            ("call_duration_seconds_count", &[], "collide"),
        ] {
            let err = counter(name, labels).expect_err(name);
            assert!(err.contains(says), "{name} {labels:?}: {err}");
        }
        let long = "x".repeat(MAX_NAME + 1);
        assert!(counter(&long, &[]).is_err());
        assert!(
            p.define("h", &"?".repeat(MAX_HELP + 1), &[], Definition::Counter)
                .is_err()
        );
        for buckets in [&[][..], &[1.0, 1.0], &[2.0, 1.0], &[f64::NAN], &[0.0; 33]] {
            let err = p
                .define("h", "", &[], Definition::Histogram { buckets })
                .expect_err("bad buckets");
            assert!(err.contains("bucket"), "{buckets:?}: {err}");
        }
        // A histogram's samples and a counter's name may not meet.
        counter("lat_count", &[]).expect("counter");
        let err = p
            .define("lat", "", &[], Definition::Histogram { buckets: &[1.0] })
            .expect_err("collides");
        assert!(err.contains("wasmgate_plugin_lat_count"), "{err}");
        // A name keeps its type across plugins.
        r.plugin("ns/other")
            .define("t", "", &[], Definition::Histogram { buckets: &[1.0] })
            .expect("histogram");
        let err = counter("t", &[]).expect_err("type changed");
        assert!(err.contains("is a histogram"), "{err}");
        // The cap on metrics per plugin.
        let q = r.plugin("ns/many");
        for i in 0..MAX_METRICS {
            q.define(&format!("m{i}"), "", &[], Definition::Counter)
                .expect("under the cap");
        }
        let err = q
            .define("one_more", "", &[], Definition::Counter)
            .expect_err("over the cap");
        assert!(err.contains("already defines 32 metrics"), "{err}");
    }

    #[test]
    fn label_sets_are_capped_and_the_rest_folds_into_one_series() {
        let r = Registry::new(true);
        let p = r.plugin("ns/p");
        let c = p
            .define(
                "by_user_total",
                "",
                &strings(&["user"]),
                Definition::Counter,
            )
            .expect("define");
        for i in 0..MAX_SERIES + 5 {
            p.counter_add(c, vec![format!("u{i}")], 1);
        }
        // A set kept before the cap still counts on its own.
        p.counter_add(c, strings(&["u0"]), 1);
        // A value cut to an existing one after the cap lands on it.
        let long = format!("u1{}", "x".repeat(MAX_VALUE));
        p.counter_add(c, vec![long], 1);
        let text = rendered(&r);
        let series = text
            .lines()
            .filter(|l| l.starts_with("wasmgate_plugin_by_user_total{"))
            .count();
        assert_eq!(series, MAX_SERIES + 1, "{text}");
        assert!(text.contains("wasmgate_plugin_by_user_total{plugin=\"ns/p\",user=\"u0\"} 2"));
        assert!(
            text.contains("wasmgate_plugin_by_user_total{plugin=\"ns/p\",user=\"__overflow__\"} 6")
        );
        assert!(text.contains(
            "wasmgate_plugin_metric_overflow_total{plugin=\"ns/p\",metric=\"by_user_total\"} 6"
        ));
        let cut_series = format!("user=\"u1{}\"", "x".repeat(MAX_VALUE - 2));
        assert!(
            !text.contains(&cut_series),
            "u1... was not kept before the cap"
        );
    }

    #[test]
    fn long_values_are_cut() {
        let r = Registry::new(true);
        let p = r.plugin("ns/p");
        let c = p
            .define("v_total", "", &strings(&["v"]), Definition::Counter)
            .expect("define");
        // 'é' is two bytes: the cut keeps whole characters.
        p.counter_add(c, vec!["é".repeat(MAX_VALUE)], 1);
        p.counter_add(c, vec!["é".repeat(MAX_VALUE + 1)], 1);
        let text = rendered(&r);
        let want = format!("v=\"{}\"}} 2", "é".repeat(MAX_VALUE / 2));
        assert!(text.contains(&want), "{text}");
    }

    #[test]
    fn bad_updates_are_dropped_and_counted() {
        let r = Registry::new(true);
        let p = r.plugin("ns/p");
        let c = p
            .define("c_total", "", &strings(&["a"]), Definition::Counter)
            .expect("define");
        let h = p
            .define("h", "", &[], Definition::Histogram { buckets: &[1.0] })
            .expect("define");
        p.counter_add(c, vec![], 1);
        p.counter_add(c + 7, strings(&["x"]), 1);
        p.counter_add(h, vec![], 1);
        p.histogram_observe(c, strings(&["x"]), 1.0);
        p.histogram_observe(h, vec![], f64::NAN);
        p.histogram_observe(h, vec![], f64::INFINITY);
        let text = rendered(&r);
        for line in [
            "wasmgate_plugin_metric_updates_dropped_total{plugin=\"ns/p\",reason=\"unknown_metric\"} 3",
            "wasmgate_plugin_metric_updates_dropped_total{plugin=\"ns/p\",reason=\"label_count\"} 1",
            "wasmgate_plugin_metric_updates_dropped_total{plugin=\"ns/p\",reason=\"not_finite\"} 2",
            // A metric without labels shows its one series from the start.
            "wasmgate_plugin_h_count{plugin=\"ns/p\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("wasmgate_plugin_c_total{"), "{text}");
    }

    #[test]
    fn off_means_nothing_recorded_or_rendered() {
        let r = Registry::new(false);
        let p = r.plugin("ns/p");
        let c = p
            .define("c_total", "", &[], Definition::Counter)
            .expect("definitions still work");
        p.counter_add(c, vec![], 1);
        assert_eq!(rendered(&r), "");
    }

    #[test]
    fn concurrent_writers_share_series() {
        let r = Registry::new(true);
        let p = r.plugin("ns/p");
        let c = p
            .define("n_total", "", &strings(&["k"]), Definition::Counter)
            .expect("define");
        std::thread::scope(|s| {
            for t in 0..4 {
                let p = &p;
                s.spawn(move || {
                    for i in 0..5_000u32 {
                        p.counter_add(c, vec![format!("k{}", (i + t) % 150)], 1);
                    }
                });
            }
        });
        let text = rendered(&r);
        let total: u64 = text
            .lines()
            .filter(|l| l.starts_with("wasmgate_plugin_n_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(total, 20_000);
        let series = text
            .lines()
            .filter(|l| l.starts_with("wasmgate_plugin_n_total{"))
            .count();
        assert_eq!(series, MAX_SERIES + 1);
    }
}
