//! Analyzers about which Telemetries apply (`crate::telemetry`): a `selector` no Gateway
//! carries or a `targetRef` naming a Gateway that is not loaded (IST0101, as Istio's
//! `telemetry.SelectorAnalyzer` reports a selector matching no pod), several
//! namespace-wide Telemetries in one namespace (IST0160), and a namespace-wide
//! Telemetry in a namespace without Gateways, which applies to nothing.

use std::collections::BTreeMap;

use super::{Code, Findings, gateway, go_list, selector_string};
use crate::model::{Config, PolicyScope, Telemetry};
use crate::telemetry::{ROOT_NAMESPACE, selects};
use crate::yaml::FieldPath;

/// IST0101: a `selector` no Gateway in the Telemetry's scope carries, or a `targetRef`
/// to a networking.istio.io Gateway that is not loaded.
pub(super) fn references(cfg: &Config, f: &mut Findings<'_>) {
    let spec = FieldPath::root("spec");
    for t in &cfg.telemetries {
        match &t.scope {
            PolicyScope::Selector(labels) if !selects(cfg, t) => {
                let scope = if t.meta.id.namespace == ROOT_NAMESPACE {
                    "any namespace".to_string()
                } else {
                    format!("namespace {}", t.meta.id.namespace)
                };
                f.report(
                    &t.meta,
                    &spec.key("selector"),
                    Code::ReferencedResourceNotFound,
                    format!(
                        "Referenced selector not found: {:?} (no Gateway in {scope} has these labels in its selector, so the Telemetry applies to nothing)",
                        selector_string(labels)
                    ),
                );
            }
            PolicyScope::Targets(_) => {
                let refs = t
                    .spec
                    .target_ref
                    .iter()
                    .map(|r| (spec.key("targetRef"), r))
                    .chain(
                        t.spec
                            .target_refs
                            .iter()
                            .enumerate()
                            .map(|(i, r)| (spec.key("targetRefs").index(i), r)),
                    );
                for (path, r) in refs {
                    if r.group != "networking.istio.io" || r.kind != "Gateway" {
                        continue;
                    }
                    let ns = &t.meta.id.namespace;
                    if gateway(cfg, ns, &r.name).is_none() {
                        f.report(
                            &t.meta,
                            &path,
                            Code::ReferencedResourceNotFound,
                            format!(
                                "Referenced Gateway not found: \"{ns}/{}\" (the Telemetry does not apply through it)",
                                r.name
                            ),
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

/// IST0160: more than one namespace-wide Telemetry in a namespace (wasmgate, as Istio,
/// applies the first); and a namespace-wide Telemetry outside `istio-system` in a
/// namespace where no Gateway is, which applies to nothing.
pub(super) fn namespace_wide(cfg: &Config, f: &mut Findings<'_>) {
    let mut by_namespace: BTreeMap<&str, Vec<&Telemetry>> = BTreeMap::new();
    for t in &cfg.telemetries {
        if t.scope == PolicyScope::Namespace {
            by_namespace
                .entry(t.meta.id.namespace.as_str())
                .or_default()
                .push(t);
        }
    }
    let name = FieldPath::root("metadata").key("name");
    for (ns, list) in by_namespace {
        if list.len() > 1 {
            let mut names: Vec<&str> = list.iter().map(|t| t.meta.id.name.as_str()).collect();
            names.sort_unstable();
            for t in &list {
                f.report(
                    &t.meta,
                    &name,
                    Code::MultipleTelemetriesWithoutWorkloadSelectors,
                    format!(
                        "The Telemetries {} in namespace {ns:?} have no workload selector, which can lead to undefined behavior. (wasmgate applies {ns}/{}, the first loaded)",
                        go_list(&names),
                        list[0].meta.id.name
                    ),
                );
            }
        }
        if ns != ROOT_NAMESPACE && !cfg.gateways.iter().any(|g| g.meta.id.namespace == ns) {
            for t in list {
                f.note(
                    &t.meta,
                    &name,
                    format!(
                        "applies to nothing: no Gateway is in namespace {ns} (a Telemetry without selector applies to wasmgate from istio-system, or from a namespace holding one of its Gateways)"
                    ),
                );
            }
        }
    }
}
