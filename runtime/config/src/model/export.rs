//! Istio's `exportTo`: which namespaces' proxies see a VirtualService, ServiceEntry or
//! DestinationRule, and which DestinationRule a proxy applies to a host.
//!
//! wasmgate is one proxy with a namespace of its own: `--workload-namespace` (Istio's
//! ingress gateway runs in `istio-system`, the default) for the Gateway listeners and the
//! registry, `--mesh-namespace` for VirtualServices bound to `mesh`. A resource is seen
//! when its `exportTo` is empty (Istio's default, `*`), holds `*`, names the viewer's
//! namespace, or holds `.` and lives in the viewer's namespace; `~` (ServiceEntry only)
//! hides it from every proxy.

/// Istio's root namespace (`meshConfig.rootNamespace` defaults to `istio-system`): its
/// DestinationRules are defaults for every namespace that sees them.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Does a resource of namespace `own` with `export_to` reach a proxy in `viewer`?
pub fn exported_to(export_to: &[String], own: &str, viewer: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == viewer || (e == "." && own == viewer))
}

/// Istio's order for the DestinationRule a proxy in `viewer` applies to a service of
/// namespace `service_ns` (its `PushContext.destinationRule`): a rule of the proxy's
/// own namespace that the namespace sees first; then one the service's namespace
/// exports to it; then one the root namespace exports to it. Rules of any other
/// namespace never apply. In the root namespace itself, as Istio's index keeps it,
/// only rules exported to that namespace alone (`.` or its name) are its own: its
/// public rules are mesh-wide defaults, so a service's own rule beats them even for a
/// gateway there. Lower ranks win; `None`: the rule does not apply.
pub fn rule_rank(
    rule_ns: &str,
    export_to: &[String],
    viewer: &str,
    service_ns: &str,
) -> Option<u8> {
    if !exported_to(export_to, rule_ns, viewer) {
        return None;
    }
    let private = !export_to.is_empty() && export_to.iter().all(|e| e == "." || e == rule_ns);
    if rule_ns == viewer && (viewer != ROOT_NAMESPACE || private) {
        Some(0)
    } else if rule_ns == service_ns && rule_ns != ROOT_NAMESPACE {
        Some(1)
    } else if rule_ns == ROOT_NAMESPACE {
        Some(2)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn export_to_follows_istio() {
        assert!(exported_to(&[], "app", "istio-system"));
        assert!(exported_to(&v(&["*"]), "app", "istio-system"));
        assert!(exported_to(&v(&["istio-system"]), "app", "istio-system"));
        assert!(exported_to(&v(&["."]), "istio-system", "istio-system"));
        assert!(!exported_to(&v(&["."]), "app", "istio-system"));
        assert!(!exported_to(&v(&["other"]), "app", "istio-system"));
        assert!(!exported_to(&v(&["~"]), "istio-system", "istio-system"));
    }

    #[test]
    fn rules_rank_own_namespace_then_service_then_root() {
        let root = "istio-system";
        // A gateway in its own namespace `edge`.
        assert_eq!(rule_rank("edge", &[], "edge", "app"), Some(0));
        assert_eq!(rule_rank("edge", &v(&["."]), "edge", "app"), Some(0));
        assert_eq!(rule_rank("edge", &v(&["other"]), "edge", "app"), None);
        assert_eq!(rule_rank("app", &[], "edge", "app"), Some(1));
        assert_eq!(rule_rank("app", &v(&["."]), "edge", "app"), None);
        assert_eq!(rule_rank("other", &[], "edge", "app"), None);
        assert_eq!(rule_rank(root, &[], "edge", "app"), Some(2));
        assert_eq!(rule_rank(root, &v(&["."]), "edge", "app"), None);
        // A gateway in the root namespace: its private rules first, its public ones
        // are defaults after the service's.
        assert_eq!(rule_rank(root, &v(&["."]), root, "app"), Some(0));
        assert_eq!(rule_rank(root, &v(&[root]), root, "app"), Some(0));
        assert_eq!(rule_rank(root, &[], root, "app"), Some(2));
        assert_eq!(rule_rank(root, &v(&["*"]), root, "app"), Some(2));
        assert_eq!(rule_rank("app", &[], root, "app"), Some(1));
    }
}
