//! Which `Telemetry` resources apply to wasmgate, and what they add up to. Istio applies
//! a workload's Telemetries in three levels, each overriding the fields the one before
//! set: the root namespace's (`istio-system`, mesh-wide), its namespace's, then those
//! that select the workload. wasmgate is one workload serving every Gateway, so:
//!
//! - **mesh-wide**: the first Telemetry in `istio-system` without `selector` labels or
//!   `targetRefs`;
//! - **namespace-wide**: in every other namespace that holds a Gateway, the first
//!   Telemetry without `selector` labels or `targetRefs` (a Gateway's namespace is where
//!   wasmgate, as that Gateway's workload, lives);
//! - **workload-selected**: a Telemetry whose `selector` labels a Gateway in its
//!   namespace (any namespace from `istio-system`) carries in its own `selector` (the
//!   labels of the workload that serves it), as WasmPlugin selectors bind; or whose
//!   `targetRefs` name a loaded networking.istio.io Gateway.
//!
//! Within a level, Telemetries merge in load order. Merging keeps, per field, the value
//! of the last Telemetry that sets it: `randomSamplingPercentage`,
//! `disableSpanReporting`, `customTags` (replaced as a whole, as in Istio), each metric's
//! `disabled`, and `accessLogging`'s `disabled`. The settings are the process's: the
//! mesh listener follows them too.

use std::collections::BTreeSet;

use crate::model::{Config, PolicyScope, Telemetry, TelemetrySettings, TracingOverride};

/// Istio's root namespace: mesh-wide Telemetry lives here.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// How a Telemetry applies to wasmgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Mesh,
    Namespace,
    Workload,
}

/// Whether a workload-scoped Telemetry (`selector` or `targetRefs`) selects wasmgate.
pub fn selects(cfg: &Config, t: &Telemetry) -> bool {
    match &t.scope {
        PolicyScope::Namespace => false,
        PolicyScope::Selector(labels) => {
            let everywhere = t.meta.id.namespace == ROOT_NAMESPACE;
            cfg.gateways.iter().any(|gw| {
                (everywhere || gw.meta.id.namespace == t.meta.id.namespace)
                    && labels.iter().all(|(k, v)| gw.selector.get(k) == Some(v))
            })
        }
        PolicyScope::Targets(targets) => targets.iter().any(|r| {
            r.kind == "Gateway"
                && cfg
                    .gateways
                    .iter()
                    .any(|gw| gw.meta.id.namespace == r.namespace && gw.meta.id.name == r.name)
        }),
    }
}

/// The Telemetries that apply, in the order they merge: mesh-wide, namespace-wide (load
/// order), workload-selected (load order).
pub fn applicable(cfg: &Config) -> Vec<(&Telemetry, Level)> {
    let mut out = Vec::new();
    let mut seen_namespaces = BTreeSet::new();
    let mut namespace_wide = Vec::new();
    for t in &cfg.telemetries {
        if t.scope != PolicyScope::Namespace {
            continue;
        }
        let ns = t.meta.id.namespace.as_str();
        // The first namespace-wide Telemetry of a namespace counts (IST0160 reports the
        // others), as in Istio.
        if !seen_namespaces.insert(ns) {
            continue;
        }
        if ns == ROOT_NAMESPACE {
            out.push((t, Level::Mesh));
        } else if cfg.gateways.iter().any(|gw| gw.meta.id.namespace == ns) {
            namespace_wide.push((t, Level::Namespace));
        }
    }
    out.extend(namespace_wide);
    out.extend(
        cfg.telemetries
            .iter()
            .filter(|t| selects(cfg, t))
            .map(|t| (t, Level::Workload)),
    );
    out
}

/// Merge Telemetries, most general first: each field keeps the value of the last one
/// that sets it.
pub fn merge<'a>(telemetries: impl IntoIterator<Item = &'a Telemetry>) -> TelemetrySettings {
    let mut tracing = TracingOverride::default();
    let mut disabled = BTreeSet::new();
    let mut access_log_disabled = false;
    let mut applied = Vec::new();
    for t in telemetries {
        applied.push(t.meta.id.clone());
        if let Some(o) = &t.tracing {
            tracing.overlay(o);
        }
        for (metric, off) in &t.metrics {
            if *off {
                disabled.insert(*metric);
            } else {
                disabled.remove(metric);
            }
        }
        if let Some(off) = t.access_logging {
            access_log_disabled = off;
        }
    }
    TelemetrySettings {
        applied,
        tracing,
        disabled_metrics: disabled,
        access_log_disabled,
    }
}

/// The settings of the Telemetries that apply to wasmgate.
pub fn settings(cfg: &Config) -> TelemetrySettings {
    merge(applicable(cfg).into_iter().map(|(t, _)| t))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::{CustomTag, IstioMetric};

    fn load(yaml: &str) -> Config {
        match crate::load_sources(&[(PathBuf::from("t.yaml"), yaml.to_string())]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    const GATEWAY: &str = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
";

    fn telemetry(name: &str, ns: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
        )
    }

    fn names(s: &TelemetrySettings) -> Vec<String> {
        s.applied
            .iter()
            .map(|id| format!("{}/{}", id.namespace, id.name))
            .collect()
    }

    #[test]
    fn root_then_namespace_then_selected() {
        let mut yaml = GATEWAY.to_string();
        // Listed most specific first: the order in the files does not matter.
        yaml += &telemetry(
            "selected",
            "shop",
            "  selector: {matchLabels: {istio: ingressgateway}}\n  tracing: [{randomSamplingPercentage: 50}]\n  metrics: [{overrides: [{match: {metric: REQUEST_DURATION}, disabled: false}]}]",
        );
        yaml += &telemetry(
            "ns",
            "shop",
            "  tracing: [{randomSamplingPercentage: 10, disableSpanReporting: true}]\n  accessLogging: [{disabled: false}]",
        );
        yaml += &telemetry(
            "mesh",
            "istio-system",
            "  tracing:\n  - randomSamplingPercentage: 1\n    customTags: {env: {literal: {value: prod}}}\n  metrics: [{overrides: [{match: {metric: ALL_METRICS}, disabled: true}]}]\n  accessLogging: [{disabled: true}]",
        );
        let cfg = load(&yaml);
        let s = &cfg.telemetry;
        assert_eq!(
            names(s),
            vec!["istio-system/mesh", "shop/ns", "shop/selected"]
        );
        // Sampling: the selected one's; span reporting: the namespace's; tags: the root's.
        assert_eq!(s.tracing.sampling, Some(50.0));
        assert_eq!(s.tracing.disable_span_reporting, Some(true));
        assert_eq!(
            s.tracing.custom_tags,
            Some(vec![("env".to_string(), CustomTag::Literal("prod".into()))])
        );
        // Every metric off at the root, REQUEST_DURATION back on for the workload.
        let mut off: BTreeSet<IstioMetric> = IstioMetric::ALL.into_iter().collect();
        off.remove(&IstioMetric::RequestDuration);
        assert_eq!(s.disabled_metrics, off);
        // The namespace turns access logs back on explicitly.
        assert!(!s.access_log_disabled);
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn what_does_not_apply() {
        let mut yaml = GATEWAY.to_string();
        // A namespace without Gateways, a selector no Gateway carries, a second
        // namespace-wide Telemetry in one namespace, a Gateway API target.
        yaml += &telemetry("other", "web", "  accessLogging: [{disabled: true}]");
        yaml += &telemetry(
            "nobody",
            "shop",
            "  selector: {matchLabels: {app: web}}\n  accessLogging: [{disabled: true}]",
        );
        yaml += &telemetry(
            "first",
            "shop",
            "  tracing: [{randomSamplingPercentage: 5}]",
        );
        yaml += &telemetry(
            "second",
            "shop",
            "  tracing: [{randomSamplingPercentage: 7}]",
        );
        yaml += &telemetry(
            "api",
            "shop",
            "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n  accessLogging: [{disabled: true}]",
        );
        // A selector in the root namespace selects Gateways anywhere.
        yaml += &telemetry(
            "rooted",
            "istio-system",
            "  selector: {matchLabels: {istio: ingressgateway}}\n  metrics: [{overrides: [{match: {metric: REQUEST_COUNT, mode: SERVER}, disabled: true}]}]",
        );
        let cfg = load(&yaml);
        let s = &cfg.telemetry;
        assert_eq!(names(s), vec!["shop/first", "istio-system/rooted"]);
        assert_eq!(s.tracing.sampling, Some(5.0));
        assert!(!s.access_log_disabled);
        // SERVER mode never applies to a gateway.
        assert!(s.disabled_metrics.is_empty());
    }

    #[test]
    fn target_refs_name_gateways() {
        let mut yaml = GATEWAY.to_string();
        yaml += &telemetry(
            "by-ref",
            "shop",
            "  targetRef: {group: networking.istio.io, kind: Gateway, name: gw}\n  metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, disabled: true}]}]",
        );
        yaml += &telemetry(
            "missing",
            "shop",
            "  targetRefs: [{group: networking.istio.io, kind: Gateway, name: nope}]\n  accessLogging: [{disabled: true}]",
        );
        let cfg = load(&yaml);
        assert_eq!(names(&cfg.telemetry), vec!["shop/by-ref"]);
        assert_eq!(
            cfg.telemetry.disabled_metrics,
            [IstioMetric::RequestCount].into_iter().collect()
        );
        assert!(!cfg.telemetry.access_log_disabled);
    }

    #[test]
    fn merging_keeps_the_last_value_set() {
        let cfg = load(&format!(
            "{}{}{}",
            telemetry(
                "a",
                "istio-system",
                "  tracing: [{randomSamplingPercentage: 20, customTags: {a: {literal: {value: x}}}}]\n  accessLogging: [{disabled: true}]"
            ),
            telemetry(
                "b",
                "x",
                "  tracing: [{customTags: {}}]\n  accessLogging: [{}]"
            ),
            telemetry("c", "y", "  tracing: [{disableSpanReporting: false}]"),
        ));
        let [a, b, c] = [0, 1, 2].map(|i| &cfg.telemetries[i]);
        let s = merge([a, b, c]);
        assert_eq!(s.tracing.sampling, Some(20.0));
        // Present and empty: the parent's tags are gone.
        assert_eq!(s.tracing.custom_tags, Some(Vec::new()));
        assert_eq!(s.tracing.disable_span_reporting, Some(false));
        // An entry without `disabled` leaves the parent's `disabled: true`.
        assert!(s.access_log_disabled);
        let none = merge([]);
        assert!(none.tracing.is_empty() && none.applied.is_empty());
    }
}
