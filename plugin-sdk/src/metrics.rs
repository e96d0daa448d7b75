//! Metrics a policy defines once, in [`crate::Policy::prepare`], and updates per request
//! (`wasmgate:policy/metrics`, WIT 0.3.0). The gateway shows them on `/stats/prometheus`
//! as `wasmgate_plugin_<name>{plugin="<namespace>/<name>",<labels>}`.
//!
//! ```
//! # use wasmgate_plugin_sdk::{Binding, ConfigError, Edit, PluginError, Policy, Request};
//! use wasmgate_plugin_sdk::metrics::{Counter, Histogram};
//!
//! struct Guard {
//!     blocked: Counter,
//!     path_bytes: Histogram,
//! }
//!
//! impl Policy for Guard {
//!     fn prepare(_: &Binding, _config: &str) -> Result<Self, ConfigError> {
//!         // `?`: a definition the host refuses is a config error, with its reason.
//!         Ok(Guard {
//!             blocked: Counter::define("blocked_total", "Requests blocked.", &["reason"])?,
//!             path_bytes: Histogram::define(
//!                 "path_bytes",
//!                 "Request path lengths.",
//!                 &["method"],
//!                 &[8.0, 32.0, 128.0],
//!             )?,
//!         })
//!     }
//!
//!     fn on_request(&self, req: &Request) -> Result<Edit, PluginError> {
//!         self.path_bytes.observe(&[req.method()], req.path().len() as f64);
//!         if req.path().starts_with("/admin") {
//!             self.blocked.inc(&["admin-path"]);
//!             return Ok(Edit::respond(403, "no"));
//!         }
//!         Ok(Edit::keep())
//!     }
//! }
//!
//! // In a unit test: what the policy emitted on this thread.
//! use wasmgate_plugin_sdk::testing::{decide, prepare, recorded_metrics, request};
//!
//! let guard: Guard = prepare("null");
//! decide(&guard, &request("GET", "/admin/users").build());
//! let emitted = recorded_metrics();
//! assert_eq!(emitted.counter("blocked_total", &["admin-path"]), 1);
//! assert_eq!(emitted.observations("path_bytes", &["GET"]), &[12.0]);
//! ```
//!
//! A definition is checked by the host (names `[a-z_][a-z0-9_]*`, at most 8 labels, not
//! `le` or `plugin`, at most 32 metrics per plugin, 1 to 32 increasing buckets); an error
//! converts into a [`ConfigError`], so `?` in `prepare` rejects the configuration with
//! the reason. Defining again with the same name, labels and buckets returns the same
//! metric: each instance of a plugin prepares its bindings, and all share the series.
//! Updates are cheap and never fail: the host drops (and counts) one it cannot apply.
//!
//! In native `cargo test` runs nothing leaves the process: definitions and updates are
//! recorded per thread and [`crate::testing::recorded_metrics`] shows them. Native runs
//! are stricter than the host: an update with the wrong number of label values, or a
//! histogram value that is not finite, panics, so the test that makes one fails.

use crate::ConfigError;

/// A counter this plugin defined. Cheap to copy; valid in every instance of the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    id: u32,
}

/// A histogram this plugin defined. Cheap to copy; valid in every instance of the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histogram {
    id: u32,
}

/// Why the host refused a definition (one sentence naming the metric).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricError {
    pub message: String,
}

impl std::fmt::Display for MetricError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MetricError {}

impl From<MetricError> for ConfigError {
    fn from(e: MetricError) -> Self {
        ConfigError {
            field: String::new(),
            message: e.message,
        }
    }
}

impl Counter {
    /// Define a counter shown as `wasmgate_plugin_<name>`, with these label names (fixed;
    /// each update gives one value per name, in this order). In `prepare` only.
    /// Counters conventionally end in `_total`.
    pub fn define(name: &str, help: &str, label_names: &[&str]) -> Result<Counter, MetricError> {
        imp::define_counter(name, help, label_names)
            .map(|id| Counter { id })
            .map_err(|message| MetricError { message })
    }

    /// Add `value` to the series of these label values. Adding 0 makes the series
    /// appear, at 0.
    pub fn add(&self, label_values: &[&str], value: u64) {
        imp::counter_add(self.id, label_values, value)
    }

    /// Add 1.
    pub fn inc(&self, label_values: &[&str]) {
        self.add(label_values, 1)
    }
}

impl Histogram {
    /// Define a histogram shown as `wasmgate_plugin_<name>` with these upper bucket
    /// bounds (increasing; `+Inf` is implied). In `prepare` only.
    pub fn define(
        name: &str,
        help: &str,
        label_names: &[&str],
        buckets: &[f64],
    ) -> Result<Histogram, MetricError> {
        imp::define_histogram(name, help, label_names, buckets)
            .map(|id| Histogram { id })
            .map_err(|message| MetricError { message })
    }

    /// Record one observation in the series of these label values.
    pub fn observe(&self, label_values: &[&str], value: f64) {
        imp::histogram_observe(self.id, label_values, value)
    }
}

#[cfg(target_arch = "wasm32")]
pub(crate) use imp::{Phase, phase};

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::__bindings::wasmgate::policy::metrics as wit;

    /// Inside Wasm the host knows the phase; the testing helpers' marks do nothing.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Phase {
        Prepare,
        Request,
    }

    pub fn phase<R>(_: Phase, f: impl FnOnce() -> R) -> R {
        f()
    }

    pub fn define_counter(name: &str, help: &str, labels: &[&str]) -> Result<u32, String> {
        wit::define_counter(name, help, labels)
    }

    pub fn define_histogram(
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<u32, String> {
        wit::define_histogram(name, help, labels, buckets)
    }

    pub fn counter_add(id: u32, labels: &[&str], value: u64) {
        wit::counter_add(id, labels, value)
    }

    pub fn histogram_observe(id: u32, labels: &[&str], value: f64) {
        wit::histogram_observe(id, labels, value)
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use native::{Phase, phase, recorded, reset};

#[cfg(not(target_arch = "wasm32"))]
use native as imp;

/// Names of wasmgate's own `wasmgate_plugin_*` families, which a plugin cannot define
/// (the gateway refuses them at `prepare`; so do native tests). The gateway's own test
/// keeps this list equal to the host's.
pub const RESERVED: [&str; 15] = [
    "calls_total",
    "errors_total",
    "traps_total",
    "deadline_kills_total",
    "memory_kills_total",
    "call_duration_seconds",
    "metric_overflow_total",
    "metric_updates_dropped_total",
    "instances",
    "instance_waits_total",
    "instance_wait_seconds_total",
    "calls_restarted_total",
    "breaker_open",
    "breaker_opened_total",
    "quarantined_total",
];

/// The host's rules and a per-thread record, for native tests. The rules mirror
/// `runtime/src/plugin/metrics.rs` (the host's word is final: it also refuses a name
/// another plugin took for another type).
#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use crate::testing::{MetricKind, RecordedMetric, RecordedMetrics};

    const MAX_METRICS: usize = 32;
    const MAX_LABELS: usize = 8;
    const MAX_BUCKETS: usize = 32;
    const MAX_NAME: usize = 64;
    const MAX_HELP: usize = 256;
    use super::RESERVED as OWN;

    /// Which policy call is running, as [`crate::testing`] runs them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Phase {
        /// Called directly, not through the testing helpers: anything goes.
        Any,
        Prepare,
        Request,
    }

    #[derive(Debug)]
    struct Record {
        phase: Phase,
        metrics: Vec<RecordedMetric>,
    }

    thread_local! {
        static RECORD: RefCell<Record> = const {
            RefCell::new(Record { phase: Phase::Any, metrics: Vec::new() })
        };
    }

    /// Run `f` as the host runs `phase`.
    pub fn phase<R>(phase: Phase, f: impl FnOnce() -> R) -> R {
        let before = RECORD.with(|r| std::mem::replace(&mut r.borrow_mut().phase, phase));
        let out = f();
        RECORD.with(|r| r.borrow_mut().phase = before);
        out
    }

    pub fn recorded() -> RecordedMetrics {
        RECORD.with(|r| RecordedMetrics {
            metrics: r.borrow().metrics.clone(),
        })
    }

    pub fn reset() {
        RECORD.with(|r| r.borrow_mut().metrics.clear());
    }

    fn valid_name(name: &str) -> bool {
        let mut bytes = name.bytes();
        name.len() <= MAX_NAME
            && bytes
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }

    fn check(
        call: &str,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Option<&[f64]>,
    ) -> Result<(), String> {
        if RECORD.with(|r| r.borrow().phase) == Phase::Request {
            return Err(format!(
                "metric {name:?}: {call} is allowed in prepare only"
            ));
        }
        if !valid_name(name) {
            return Err(format!(
                "metric {name:?}: a name matches [a-z_][a-z0-9_]* and has at most {MAX_NAME} bytes"
            ));
        }
        let samples = |n: &str, histogram: bool| -> Vec<String> {
            if histogram {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{n}{s}"))
                    .collect()
            } else {
                vec![n.to_string()]
            }
        };
        let mine = samples(name, buckets.is_some());
        for own in OWN {
            let theirs = samples(own, own == "call_duration_seconds");
            if own == name || mine.iter().any(|s| theirs.contains(s)) {
                return Err(format!(
                    "metric {name:?} would collide with wasmgate_plugin_{own} on /stats/prometheus"
                ));
            }
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
                    "metric {name:?}: label {label:?}: a label name matches [a-z_][a-z0-9_]*, \
                     has at most {MAX_NAME} bytes and does not start with __"
                ));
            }
            if *label == "le" || *label == "plugin" {
                return Err(format!(
                    "metric {name:?}: label {label:?} is reserved (the host sets it)"
                ));
            }
            if labels[..i].contains(label) {
                return Err(format!("metric {name:?}: label {label:?} appears twice"));
            }
        }
        if let Some(buckets) = buckets {
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

    fn define(
        call: &str,
        name: &str,
        help: &str,
        labels: &[&str],
        kind: MetricKind,
    ) -> Result<u32, String> {
        let buckets = match &kind {
            MetricKind::Counter => None,
            MetricKind::Histogram { buckets } => Some(buckets.as_slice()),
        };
        check(call, name, help, labels, buckets)?;
        RECORD.with(|r| {
            let mut r = r.borrow_mut();
            if let Some(id) = r.metrics.iter().position(|m| m.name == name) {
                let m = &r.metrics[id];
                if m.kind == kind && m.labels == labels {
                    return u32::try_from(id).map_err(|e| e.to_string());
                }
                return Err(format!(
                    "metric {name:?} is already defined by this plugin as {:?} with labels {:?}; \
                     a metric keeps its type, labels and buckets until the gateway restarts \
                     (define a new name)",
                    m.kind, m.labels
                ));
            }
            if r.metrics.len() >= MAX_METRICS {
                return Err(format!(
                    "metric {name:?}: this plugin already defines {MAX_METRICS} metrics, the \
                     most a plugin may"
                ));
            }
            r.metrics.push(RecordedMetric {
                name: name.to_string(),
                help: help.to_string(),
                labels: labels.iter().map(|l| l.to_string()).collect(),
                kind,
                counters: BTreeMap::new(),
                observations: BTreeMap::new(),
            });
            u32::try_from(r.metrics.len() - 1).map_err(|e| e.to_string())
        })
    }

    pub fn define_counter(name: &str, help: &str, labels: &[&str]) -> Result<u32, String> {
        define("define-counter", name, help, labels, MetricKind::Counter)
    }

    pub fn define_histogram(
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<u32, String> {
        let kind = MetricKind::Histogram {
            buckets: buckets.to_vec(),
        };
        define("define-histogram", name, help, labels, kind)
    }

    /// The metric `id`, checked the way the host checks an update, except that a native
    /// test fails instead of the update being dropped.
    fn update(id: u32, labels: &[&str], histogram: bool, f: impl FnOnce(&mut RecordedMetric)) {
        RECORD.with(|r| {
            let mut r = r.borrow_mut();
            let Some(m) = r.metrics.get_mut(id as usize) else {
                panic!("metric id {id} was not defined on this thread (define it in prepare)");
            };
            let is_histogram = matches!(m.kind, MetricKind::Histogram { .. });
            assert_eq!(
                is_histogram,
                histogram,
                "metric {:?} is not a {}",
                m.name,
                if histogram { "histogram" } else { "counter" }
            );
            assert_eq!(
                labels.len(),
                m.labels.len(),
                "metric {:?} has labels {:?}; an update gives one value per label, not {:?} \
                 (the host drops such an update)",
                m.name,
                m.labels,
                labels
            );
            f(m)
        })
    }

    fn key(labels: &[&str]) -> Vec<String> {
        labels.iter().map(|l| l.to_string()).collect()
    }

    pub fn counter_add(id: u32, labels: &[&str], value: u64) {
        update(id, labels, false, |m| {
            let n = m.counters.entry(key(labels)).or_default();
            *n = n.wrapping_add(value);
        })
    }

    pub fn histogram_observe(id: u32, labels: &[&str], value: f64) {
        update(id, labels, true, |m| {
            assert!(
                value.is_finite(),
                "metric {:?}: observed {value}, which is not finite (the host drops it)",
                m.name
            );
            m.observations.entry(key(labels)).or_default().push(value);
        })
    }
}
