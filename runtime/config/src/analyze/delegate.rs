//! `delegate` routes, as Istio merges them (pilot `mergeVirtualServices` and
//! `MergeHTTPRoutes`): a root VirtualService's `http[i].delegate: {name, namespace}` is
//! replaced by the routes of that delegate VirtualService (one without `hosts`), each
//! merged with the root route. A delegate route's matches are ANDed with the root's: each
//! must fall within some root match (a URI prefix within the root's prefix, an exact URI
//! under it, equal ports, headers that do not contradict...), and one that fits none is
//! dropped. What the delegate route leaves unset (rewrite, timeout, retries, fault,
//! mirrors, CORS, headers...) comes from the root route. Short names in the delegate
//! (destination hosts, `match.gateways`) are resolved in the delegate's namespace first,
//! since the merged routes run as part of the root.
//!
//! The result replaces `http` and `spec.http` of the root, so the runtime and the router
//! plugin only ever see ordinary routes. A delegate is not served on its own (it has no
//! hosts); a delegate that delegates again is rejected by validation (Istio allows one
//! level). A delegate that does not exist, has hosts, or is not exported to the root's
//! namespace drops the root route, as in Istio, with a warning.

use std::collections::BTreeMap;

use super::{Code, Findings, ns_name};
use crate::host::expand_host;
use crate::model::{Config, VirtualService};
use crate::raw::{HTTPMatchRequest, HTTPRoute, StringMatch};
use crate::validate::virtual_service::{MESH, gateway_ref};
use crate::yaml::FieldPath;

/// Replaces every root VirtualService's `delegate` routes by the merged routes.
pub(super) fn merge(cfg: &mut Config, f: &mut Findings<'_>) {
    let mut merged_roots: Vec<(usize, Vec<HTTPRoute>)> = Vec::new();
    for (index, root) in cfg.virtual_services.iter().enumerate() {
        if root.spec.hosts.is_empty() || !root.spec.http.iter().any(|h| h.delegate.is_some()) {
            continue;
        }
        merged_roots.push((index, merge_root(cfg, root, f)));
    }
    for (index, http) in merged_roots {
        if let Some(vs) = cfg.virtual_services.get_mut(index) {
            vs.spec.http = http.clone();
            vs.http = http;
        }
    }
}

/// Does `delegate`'s `exportTo` let VirtualServices in `namespace` use it?
fn exported_to(delegate: &VirtualService, namespace: &str) -> bool {
    crate::model::export::exported_to(
        &delegate.spec.export_to,
        &delegate.meta.id.namespace,
        namespace,
    )
}

/// The routes of `root` with its delegate routes merged.
fn merge_root(cfg: &Config, root: &VirtualService, f: &mut Findings<'_>) -> Vec<HTTPRoute> {
    let ns = root.meta.id.namespace.as_str();
    let mut out = Vec::new();
    for (i, route) in root.spec.http.iter().enumerate() {
        let Some(d) = &route.delegate else {
            out.push(route.clone());
            continue;
        };
        let path = FieldPath::root("spec").key("http").index(i).key("delegate");
        let dns = if d.namespace.is_empty() {
            ns
        } else {
            d.namespace.as_str()
        };
        let target = cfg
            .virtual_services
            .iter()
            .find(|v| v.meta.id.namespace == dns && v.meta.id.name == d.name);
        let delegate = match target {
            Some(v) if v.spec.hosts.is_empty() => v,
            other => {
                let why = match other {
                    Some(_) => format!(
                        "VirtualService {dns}/{} has hosts, so it is not a delegate; this route is dropped",
                        d.name
                    ),
                    None => "this route is dropped".to_string(),
                };
                f.report(
                    &root.meta,
                    &path,
                    Code::ReferencedResourceNotFound,
                    format!(
                        "Referenced delegate VirtualService not found: \"{dns}/{}\" ({why})",
                        d.name
                    ),
                );
                continue;
            }
        };
        if !exported_to(delegate, ns) {
            f.note(
                &root.meta,
                &path,
                format!(
                    "delegate VirtualService {} is not exported to namespace {ns} (exportTo: {}); this route is dropped, as in Istio",
                    ns_name(&delegate.meta),
                    delegate.spec.export_to.join(", ")
                ),
            );
            continue;
        }
        for (j, leaf) in delegate.spec.http.iter().enumerate() {
            let leaf = resolve_short_names(leaf, dns);
            match merge_route(route, &leaf, ns) {
                Some(r) => out.push(r),
                None => f.note(
                    &root.meta,
                    &path,
                    format!(
                        "route spec.http[{j}] of delegate VirtualService {} is dropped: none of its matches falls within this route's matches (Istio drops it too)",
                        ns_name(&delegate.meta)
                    ),
                ),
            }
        }
    }
    out
}

/// A gateway reference as `namespace/name` (or `mesh`).
fn full_gateway(g: &str, ns: &str) -> String {
    if g == MESH {
        return g.to_string();
    }
    let r = gateway_ref(g, ns);
    format!("{}/{}", r.namespace, r.name)
}

/// Istio's `ResolveVirtualServiceShortnames` for one delegate route: destination and
/// mirror hosts to FQDNs and `match.gateways` to `namespace/name`, in namespace `ns`.
fn resolve_short_names(route: &HTTPRoute, ns: &str) -> HTTPRoute {
    let mut r = route.clone();
    for m in &mut r.match_ {
        for g in &mut m.gateways {
            *g = full_gateway(g, ns);
        }
    }
    for d in r.route.iter_mut().filter_map(|d| d.destination.as_mut()) {
        d.host = expand_host(&d.host, ns);
    }
    if let Some(m) = &mut r.mirror {
        m.host = expand_host(&m.host, ns);
    }
    for d in r.mirrors.iter_mut().filter_map(|m| m.destination.as_mut()) {
        d.host = expand_host(&d.host, ns);
    }
    r
}

/// `root-leaf`, or whichever is set.
fn joined_name(root: &str, leaf: &str) -> String {
    match (root.is_empty(), leaf.is_empty()) {
        (_, true) => root.to_string(),
        (true, false) => leaf.to_string(),
        (false, false) => format!("{root}-{leaf}"),
    }
}

/// Istio's `mergeHTTPRoute`: `None` when the leaf's matches conflict with the root's.
fn merge_route(root: &HTTPRoute, leaf: &HTTPRoute, root_ns: &str) -> Option<HTTPRoute> {
    if leaf.delegate.is_some() {
        return None;
    }
    let mut out = leaf.clone();
    out.match_ = merge_matches(&root.match_, &leaf.match_, root_ns)?;
    out.name = joined_name(&root.name, &leaf.name);
    fn fill<T: Clone>(slot: &mut Option<T>, from: &Option<T>) {
        if slot.is_none() {
            slot.clone_from(from);
        }
    }
    fill(&mut out.rewrite, &root.rewrite);
    fill(&mut out.direct_response, &root.direct_response);
    fill(&mut out.timeout, &root.timeout);
    fill(&mut out.retries, &root.retries);
    fill(&mut out.fault, &root.fault);
    fill(&mut out.mirror, &root.mirror);
    fill(&mut out.mirror_percent, &root.mirror_percent);
    fill(&mut out.mirror_percentage, &root.mirror_percentage);
    fill(&mut out.cors_policy, &root.cors_policy);
    fill(&mut out.headers, &root.headers);
    if out.mirrors.is_empty() {
        out.mirrors.clone_from(&root.mirrors);
    }
    Some(out)
}

/// Istio's `mergeHTTPMatchRequests`: every leaf match ANDed with each root match it does
/// not conflict with; `None` when some leaf match fits no root match.
fn merge_matches(
    root: &[HTTPMatchRequest],
    leaf: &[HTTPMatchRequest],
    root_ns: &str,
) -> Option<Vec<HTTPMatchRequest>> {
    if root.is_empty() {
        return Some(leaf.to_vec());
    }
    if leaf.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for sub in leaf {
        let mut found = false;
        for r in root {
            if has_conflict(r, sub, root_ns) {
                continue;
            }
            out.push(merge_match(r, sub));
            found = true;
        }
        if !found {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `root` entries, overridden by `leaf`'s.
fn merged_map(
    root: &BTreeMap<String, StringMatch>,
    leaf: &BTreeMap<String, StringMatch>,
) -> BTreeMap<String, StringMatch> {
    let mut out = root.clone();
    out.extend(leaf.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// Istio's `mergeHTTPMatchRequest`: the leaf's conditions, with the root's where the
/// leaf has none.
fn merge_match(root: &HTTPMatchRequest, leaf: &HTTPMatchRequest) -> HTTPMatchRequest {
    let mut out = leaf.clone();
    out.name = joined_name(&root.name, &leaf.name);
    for (slot, from) in [
        (&mut out.uri, &root.uri),
        (&mut out.scheme, &root.scheme),
        (&mut out.method, &root.method),
        (&mut out.authority, &root.authority),
    ] {
        if slot.is_none() {
            slot.clone_from(from);
        }
    }
    out.headers = merged_map(&root.headers, &leaf.headers);
    out.without_headers = merged_map(&root.without_headers, &leaf.without_headers);
    out.query_params = merged_map(&root.query_params, &leaf.query_params);
    if out.port == 0 {
        out.port = root.port;
    }
    let mut labels = root.source_labels.clone();
    labels.extend(leaf.source_labels.clone());
    out.source_labels = labels;
    if out.source_namespace.is_empty() {
        out.source_namespace.clone_from(&root.source_namespace);
    }
    if out.gateways.is_empty() {
        out.gateways.clone_from(&root.gateways);
    }
    if out.stat_prefix.is_empty() {
        out.stat_prefix.clone_from(&root.stat_prefix);
    }
    out
}

/// Istio's `hasConflict`: can no request match both `root` and `leaf`, or is `leaf` not
/// narrower than `root`? (`leaf`'s gateways are already `namespace/name`.)
fn has_conflict(root: &HTTPMatchRequest, leaf: &HTTPMatchRequest, root_ns: &str) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    let maps = [
        (&root.headers, &leaf.headers),
        (&root.without_headers, &leaf.without_headers),
        (&root.query_params, &leaf.query_params),
    ];
    for (r, l) in maps {
        if l.iter()
            .any(|(k, v)| string_match_conflict(r.get(k), Some(v)))
        {
            return true;
        }
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if root.port > 0 && leaf.port > 0 && root.port != leaf.port {
        return true;
    }
    if !root.source_namespace.is_empty() && leaf.source_namespace != root.source_namespace {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|r| r != v))
    {
        return true;
    }
    if !root.gateways.is_empty() && !leaf.gateways.is_empty() {
        if root.gateways.len() < leaf.gateways.len() {
            return true;
        }
        let roots: Vec<String> = root
            .gateways
            .iter()
            .map(|g| full_gateway(g, root_ns))
            .collect();
        if leaf.gateways.iter().any(|g| !roots.contains(g)) {
            return true;
        }
    }
    false
}

/// Istio's `stringMatchConflict`: `leaf` is not within `root`.
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    let get = |v: &Option<String>| v.as_deref().unwrap_or_default().to_string();
    let (r_exact, r_prefix, r_regex) = (get(&root.exact), get(&root.prefix), get(&root.regex));
    let (l_exact, l_prefix, l_regex) = (get(&leaf.exact), get(&leaf.prefix), get(&leaf.regex));
    let any = |e: &str, p: &str, r: &str| !e.is_empty() || !p.is_empty() || !r.is_empty();
    // A regex on either side cannot be compared with anything.
    if !r_regex.is_empty() && any(&l_exact, &l_prefix, &l_regex) {
        return true;
    }
    if !l_regex.is_empty() && any(&r_exact, &r_prefix, &r_regex) {
        return true;
    }
    if !r_exact.is_empty() {
        return !l_prefix.is_empty() || l_exact != r_exact;
    }
    if !r_prefix.is_empty() {
        if !l_prefix.is_empty() {
            return !l_prefix.starts_with(&r_prefix);
        }
        if !l_exact.is_empty() {
            return !l_exact.starts_with(&r_prefix);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(kind: &str, v: &str) -> Option<StringMatch> {
        let v = Some(v.to_string());
        Some(match kind {
            "exact" => StringMatch {
                exact: v,
                ..StringMatch::default()
            },
            "prefix" => StringMatch {
                prefix: v,
                ..StringMatch::default()
            },
            _ => StringMatch {
                regex: v,
                ..StringMatch::default()
            },
        })
    }

    fn on(kind: &str, v: &str) -> HTTPMatchRequest {
        HTTPMatchRequest {
            uri: uri(kind, v),
            ..HTTPMatchRequest::default()
        }
    }

    fn route(name: &str, matches: Vec<HTTPMatchRequest>) -> HTTPRoute {
        HTTPRoute {
            name: name.into(),
            match_: matches,
            ..HTTPRoute::default()
        }
    }

    #[test]
    fn a_prefix_within_the_root_prefix_is_kept_and_anded() {
        let root = route("root", vec![on("prefix", "/api")]);
        let leaf = route("v1", vec![on("prefix", "/api/v1")]);
        let merged = merge_route(&root, &leaf, "default").expect("merged");
        assert_eq!(merged.name, "root-v1");
        assert_eq!(merged.match_, vec![on("prefix", "/api/v1")]);
        // Outside the root's prefix: conflict.
        let outside = route("x", vec![on("prefix", "/other")]);
        assert_eq!(merge_route(&root, &outside, "default"), None);
        // Wider than the root's prefix: conflict too.
        let wider = route("x", vec![on("prefix", "/")]);
        assert_eq!(merge_route(&root, &wider, "default"), None);
    }

    #[test]
    fn an_exact_within_the_root_prefix_is_kept() {
        let root = route("", vec![on("prefix", "/api")]);
        let leaf = route("", vec![on("exact", "/api/health")]);
        let merged = merge_route(&root, &leaf, "default").expect("merged");
        assert_eq!(merged.match_, vec![on("exact", "/api/health")]);
        assert_eq!(merged.name, "");
        let elsewhere = route("", vec![on("exact", "/health")]);
        assert_eq!(merge_route(&root, &elsewhere, "default"), None);
        // An exact root takes only the same exact URI.
        let exact_root = route("", vec![on("exact", "/a")]);
        assert!(merge_route(&exact_root, &route("", vec![on("exact", "/a")]), "d").is_some());
        assert!(merge_route(&exact_root, &route("", vec![on("prefix", "/a")]), "d").is_none());
        // Regexes cannot be compared.
        assert!(merge_route(&root, &route("", vec![on("regex", "/api/.*")]), "d").is_none());
    }

    #[test]
    fn each_leaf_match_needs_a_root_match_and_takes_every_one_it_fits() {
        let root = route("", vec![on("prefix", "/a"), on("prefix", "/b")]);
        let both = route("", vec![on("prefix", "/a/x"), on("prefix", "/b/y")]);
        let merged = merge_route(&root, &both, "d").expect("merged");
        assert_eq!(
            merged.match_,
            vec![on("prefix", "/a/x"), on("prefix", "/b/y")]
        );
        let one_bad = route("", vec![on("prefix", "/a/x"), on("prefix", "/c")]);
        assert_eq!(merge_route(&root, &one_bad, "d"), None);
        // No leaf match: the root's matches.
        let any = route("", vec![]);
        assert_eq!(
            merge_route(&root, &any, "d").expect("m").match_,
            root.match_
        );
        // No root match: the leaf's.
        let open = route("", vec![]);
        assert_eq!(
            merge_route(&open, &one_bad, "d").expect("m").match_,
            one_bad.match_
        );
    }

    #[test]
    fn headers_and_other_fields_are_inherited_where_the_leaf_has_none() {
        let mut root_match = on("prefix", "/api");
        root_match.headers.insert(
            "x-team".into(),
            StringMatch {
                exact: Some("blue".into()),
                ..StringMatch::default()
            },
        );
        root_match.port = 8080;
        let mut root = route("root", vec![root_match]);
        root.timeout = Some("5s".into());
        root.headers = Some(crate::raw::Headers {
            request: Some(crate::raw::HeaderOperations {
                set: [("x-root".to_string(), "1".to_string())].into(),
                ..crate::raw::HeaderOperations::default()
            }),
            response: None,
        });
        let mut leaf_match = on("prefix", "/api/v2");
        leaf_match.headers.insert(
            "x-user".into(),
            StringMatch {
                prefix: Some("a".into()),
                ..StringMatch::default()
            },
        );
        let mut leaf = route("", vec![leaf_match]);
        leaf.timeout = Some("1s".into());
        let merged = merge_route(&root, &leaf, "d").expect("merged");
        let m = &merged.match_[0];
        assert_eq!(
            m.headers.keys().collect::<Vec<_>>(),
            vec!["x-team", "x-user"]
        );
        assert_eq!(m.port, 8080);
        assert_eq!(m.uri, uri("prefix", "/api/v2"));
        assert_eq!(merged.timeout.as_deref(), Some("1s"), "the leaf's own wins");
        assert_eq!(merged.headers, root.headers, "inherited");
        // A leaf header that contradicts the root's: conflict.
        let mut other = on("prefix", "/api/v2");
        other.headers.insert(
            "x-team".into(),
            StringMatch {
                exact: Some("red".into()),
                ..StringMatch::default()
            },
        );
        assert_eq!(merge_route(&root, &route("", vec![other]), "d"), None);
        // Another port: conflict.
        let mut port = on("prefix", "/api/v2");
        port.port = 9090;
        assert_eq!(merge_route(&root, &route("", vec![port]), "d"), None);
    }

    #[test]
    fn gateways_of_the_leaf_must_be_among_the_roots() {
        let mut r = on("prefix", "/");
        r.gateways = vec!["edge".into(), "mesh".into()];
        let root = route("", vec![r]);
        let mut l = on("prefix", "/x");
        l.gateways = vec!["prod/edge".into()];
        assert!(merge_route(&root, &route("", vec![l.clone()]), "prod").is_some());
        assert!(merge_route(&root, &route("", vec![l]), "other").is_none());
    }

    #[test]
    fn short_names_resolve_in_the_delegates_namespace() {
        let mut r = route("", vec![on("prefix", "/")]);
        r.match_[0].gateways = vec!["gw".into(), "mesh".into()];
        r.route = vec![crate::raw::HTTPRouteDestination {
            destination: Some(crate::raw::Destination {
                host: "reviews".into(),
                ..crate::raw::Destination::default()
            }),
            ..crate::raw::HTTPRouteDestination::default()
        }];
        let resolved = resolve_short_names(&r, "shop");
        assert_eq!(resolved.match_[0].gateways, vec!["shop/gw", "mesh"]);
        assert_eq!(
            resolved.route[0]
                .destination
                .as_ref()
                .map(|d| d.host.as_str()),
            Some("reviews.shop.svc.cluster.local")
        );
    }
}
