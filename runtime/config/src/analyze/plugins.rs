//! Analyzers about what WasmPlugins bind to: `targetRefs` naming resources that are not
//! loaded, and selectors no Gateway carries (both IST0101). Such a plugin runs nowhere.
//!
//! Gateway selectors themselves are never reported: Istio reports a Gateway whose
//! selector matches no pod, but wasmgate is the workload of every Gateway and serves them
//! all. A Gateway's selector still matters as the labels of its workload, which is what a
//! WasmPlugin `selector` matches (docs/plugins.md), so the finding is on the plugin.

use super::{Code, Findings, gateway, selector_string, virtual_service};
use crate::model::Config;
use crate::yaml::FieldPath;

/// Istio's root namespace: a WasmPlugin there applies in every namespace.
const ROOT_NAMESPACE: &str = "istio-system";

/// IST0101: a `targetRef`/`targetRefs` entry names a VirtualService or Gateway that is not
/// loaded.
pub(super) fn target_refs(cfg: &Config, f: &mut Findings<'_>) {
    for wp in &cfg.wasm_plugins {
        let spec = FieldPath::root("spec");
        let refs = wp
            .spec
            .target_ref
            .iter()
            .map(|t| (spec.key("targetRef"), t))
            .chain(
                wp.spec
                    .target_refs
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (spec.key("targetRefs").index(i), t)),
            );
        for (path, t) in refs {
            if t.group != "networking.istio.io" {
                continue;
            }
            let ns = if t.namespace.is_empty() {
                wp.meta.id.namespace.as_str()
            } else {
                t.namespace.as_str()
            };
            let found = match t.kind.as_str() {
                "VirtualService" => virtual_service(cfg, ns, &t.name).is_some(),
                "Gateway" => gateway(cfg, ns, &t.name).is_some(),
                _ => continue,
            };
            if !found {
                f.report(
                    &wp.meta,
                    &path,
                    Code::ReferencedResourceNotFound,
                    format!(
                        "Referenced {} not found: \"{ns}/{}\" (the plugin does not run there)",
                        t.kind, t.name
                    ),
                );
            }
        }
    }
}

/// IST0101: a WasmPlugin without `targetRefs` whose `selector` no Gateway in its scope
/// (its namespace, or every namespace from `istio-system`) carries in its own selector.
pub(super) fn selectors(cfg: &Config, f: &mut Findings<'_>) {
    for wp in cfg.wasm_plugins.iter().filter(|w| w.targets.is_empty()) {
        if wp.selector.is_empty() {
            continue;
        }
        let everywhere = wp.meta.id.namespace == ROOT_NAMESPACE;
        let selected = cfg.gateways.iter().any(|gw| {
            (everywhere || gw.meta.id.namespace == wp.meta.id.namespace)
                && wp
                    .selector
                    .iter()
                    .all(|(k, v)| gw.selector.get(k) == Some(v))
        });
        if selected {
            continue;
        }
        let scope = if everywhere {
            "any namespace".to_string()
        } else {
            format!("namespace {}", wp.meta.id.namespace)
        };
        f.report(
            &wp.meta,
            &FieldPath::root("spec").key("selector"),
            Code::ReferencedResourceNotFound,
            format!(
                "Referenced selector not found: {:?} (no Gateway in {scope} has these labels in its selector, so the plugin runs nowhere)",
                selector_string(&wp.selector)
            ),
        );
    }
}
