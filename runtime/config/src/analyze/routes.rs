//! Analyzers about a VirtualService's routes: rules that can never be reached and matches
//! an earlier one always takes first (IST0130, IST0131, Istio's
//! `analyzeUnreachable*Rules` with its prefix-overlap check), mesh VirtualServices that
//! claim the same host (IST0109), and routing on JWT claims nothing provides (IST0149).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Code, Findings, gateway, ns_name};
use crate::model::{Config, VirtualService};
use crate::raw::{self, StringMatch};
use crate::validate::virtual_service::{MESH, gateway_ref};
use crate::yaml::FieldPath;

/// `"name"` when the rule has one, else `#i` (Istio's `routeName`).
fn rule_name(name: &str, i: usize) -> String {
    if name.is_empty() {
        format!("#{i}")
    } else {
        format!("{name:?}")
    }
}

/// What one rule looks like to the analysis: its name and its matches as comparable
/// keys (the JSON of the match without its `name`, Istio's `asJSON`), with the match
/// names.
struct Rule {
    name: String,
    matches: Vec<(String, String)>,
}

/// One HTTP match with a URI prefix, as Istio's `OverlappingMatchValidationForHTTPRoute`.
struct PrefixMatch {
    /// The rule's and the match's index.
    at: (usize, usize),
    rule: String,
    request: String,
    prefix: String,
    port: u32,
    method: String,
    authority: String,
    headers: BTreeMap<String, String>,
    query_params: BTreeMap<String, String>,
    without_headers: BTreeMap<String, String>,
}

/// `exact:v` or `prefix:v` (Istio's `assignExactOrPrefix`); empty for regex or nothing.
fn exact_or_prefix(m: Option<&StringMatch>) -> String {
    let Some(m) = m else {
        return String::new();
    };
    match (m.exact.as_deref(), m.prefix.as_deref()) {
        (Some(e), _) if !e.is_empty() => format!("exact:{e}"),
        (_, Some(p)) if !p.is_empty() => format!("prefix:{p}"),
        _ => String::new(),
    }
}

fn prefix_match(
    at: (usize, usize),
    rule: &str,
    request: &str,
    m: &raw::HTTPMatchRequest,
) -> Option<PrefixMatch> {
    let prefix = m
        .uri
        .as_ref()?
        .prefix
        .as_deref()
        .filter(|p| !p.is_empty())?;
    let method = match exact_or_prefix(m.method.as_ref()) {
        // Istio's analysis treats a match without a method as GET.
        s if s.is_empty() => "exact:GET".to_string(),
        s => s,
    };
    let map = |source: &BTreeMap<String, StringMatch>| {
        source
            .iter()
            .map(|(k, v)| (k.clone(), exact_or_prefix(Some(v))))
            .collect()
    };
    Some(PrefixMatch {
        at,
        rule: rule.to_string(),
        request: request.to_string(),
        prefix: prefix.to_string(),
        port: m.port,
        method,
        authority: exact_or_prefix(m.authority.as_ref()),
        headers: map(&m.headers),
        query_params: map(&m.query_params),
        without_headers: map(&m.without_headers),
    })
}

/// Istio's `coveredValidation`: every request `b` matches, the earlier `a` matches too.
fn covered(a: &PrefixMatch, b: &PrefixMatch) -> bool {
    let within = |x: &str, y: &str| x == y || x.starts_with(y);
    let maps = |x: &BTreeMap<String, String>, y: &BTreeMap<String, String>| {
        x.len() == y.len()
            && x.iter()
                .all(|(k, v)| y.get(k).is_some_and(|w| within(v, w)))
    };
    b.prefix.starts_with(&a.prefix)
        && a.port == b.port
        && within(&a.method, &b.method)
        && within(&a.authority, &b.authority)
        && maps(&a.headers, &b.headers)
        && maps(&a.query_params, &b.query_params)
        && maps(&a.without_headers, &b.without_headers)
}

fn json_key<T: Serialize>(m: &T) -> String {
    serde_json::to_string(m).unwrap_or_default()
}

/// Reports the rules of one kind (`http`, `tls`, `tcp`) of `vs`.
fn analyze_rules(
    vs: &VirtualService,
    field: &str,
    rules: &[Rule],
    prefixes: &[Option<PrefixMatch>],
    f: &mut Findings<'_>,
) {
    let p = FieldPath::root("spec").key(field);
    let unused = |f: &mut Findings<'_>, i: usize, reason: &str| {
        f.report(
            &vs.meta,
            &p.index(i),
            Code::VirtualServiceUnreachableRule,
            format!("VirtualService rule {} not used ({reason}).", rules[i].name),
        );
    };
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut catch_all: Option<usize> = None;
    let mut candidates: Vec<&PrefixMatch> = Vec::new();
    let mut k = 0;
    for (i, rule) in rules.iter().enumerate() {
        if rule.matches.is_empty() {
            if catch_all.is_some() {
                unused(f, i, "only the last rule can have no matches");
            }
            catch_all = Some(i);
            continue;
        }
        if catch_all.is_some() {
            unused(f, i, "route without matches defined before");
            k += rule.matches.len();
            continue;
        }
        let mut duplicates = 0;
        for (j, (key, request)) in rule.matches.iter().enumerate() {
            let prefix = prefixes.get(k).and_then(Option::as_ref);
            k += 1;
            match seen.get(key.as_str()) {
                Some(first) => {
                    duplicates += 1;
                    f.report(
                        &vs.meta,
                        &p.index(i).key("match").index(j),
                        Code::VirtualServiceIneffectiveMatch,
                        format!(
                            "VirtualService rule {} match {request} is not used (duplicate/overlapping match in rule {}).",
                            rule.name, rules[*first].name
                        ),
                    );
                }
                None => {
                    seen.insert(key, i);
                    candidates.extend(prefix);
                }
            }
        }
        if duplicates == rule.matches.len() {
            unused(f, i, "all matches used by prior rules");
        }
    }
    // Istio's prefix-overlap check: an earlier prefix match that takes every request a
    // later one would (paths are not tracked here; reported on the later rule).
    for (x, a) in candidates.iter().enumerate() {
        for b in &candidates[x + 1..] {
            if b.prefix == a.prefix || !covered(a, b) {
                continue;
            }
            f.report(
                &vs.meta,
                &p.index(b.at.0).key("match").index(b.at.1),
                Code::VirtualServiceIneffectiveMatch,
                format!(
                    "VirtualService rule {} match {} of prefix {} is not used (duplicate/overlapping match in rule {} of prefix {} on {}).",
                    b.rule, b.request, b.prefix, a.request, a.prefix, a.rule
                ),
            );
        }
    }
}

/// IST0130 and IST0131: a rule after a catch-all rule (one without matches), a rule all
/// of whose matches an earlier rule already has, a match identical to an earlier one
/// (match names aside), and an HTTP prefix match an earlier, shorter prefix match
/// with the same other conditions always takes first. Routes are tried in order and the
/// first match wins, so none of these ever sees a request.
pub(super) fn unreachable_rules(cfg: &Config, f: &mut Findings<'_>) {
    for vs in &cfg.virtual_services {
        let mut rules = Vec::new();
        let mut prefixes = Vec::new();
        for (i, h) in vs.spec.http.iter().enumerate() {
            let name = rule_name(&h.name, i);
            let mut matches = Vec::new();
            for (j, m) in h.match_.iter().enumerate() {
                let request = rule_name(&m.name, j);
                let unnamed = raw::HTTPMatchRequest {
                    name: String::new(),
                    ..m.clone()
                };
                prefixes.push(prefix_match((i, j), &name, &request, m));
                matches.push((json_key(&unnamed), request));
            }
            rules.push(Rule { name, matches });
        }
        analyze_rules(vs, "http", &rules, &prefixes, f);
        let l4 = |keys: Vec<Vec<String>>| -> Vec<Rule> {
            keys.into_iter()
                .enumerate()
                .map(|(i, keys)| Rule {
                    name: format!("#{i}"),
                    matches: keys
                        .into_iter()
                        .enumerate()
                        .map(|(j, k)| (k, format!("#{j}")))
                        .collect(),
                })
                .collect()
        };
        let tcp = vs
            .spec
            .tcp
            .iter()
            .map(|t| t.match_.iter().map(json_key).collect())
            .collect();
        analyze_rules(vs, "tcp", &l4(tcp), &[], f);
        let tls = vs
            .spec
            .tls
            .iter()
            .map(|t| t.match_.iter().map(json_key).collect())
            .collect();
        analyze_rules(vs, "tls", &l4(tls), &[], f);
    }
}

/// IST0109: VirtualServices bound to the mesh that declare the same host. Istio's
/// sidecars pick one (undefined which); wasmgate's mesh listener tries their routes in
/// load order, so the first one's catch-all hides the rest. The analyzers do not read
/// `exportTo`, so every pair counts.
pub(super) fn mesh_host_conflicts(cfg: &Config, f: &mut Findings<'_>) {
    let mut by_host: Vec<(&str, Vec<&VirtualService>)> = Vec::new();
    for vs in cfg.virtual_services.iter().filter(|v| v.binds_mesh) {
        for h in &vs.hosts {
            match by_host.iter_mut().find(|(k, _)| *k == h.as_str()) {
                Some((_, list)) => {
                    if !list.iter().any(|v| v.meta.id == vs.meta.id) {
                        list.push(vs);
                    }
                }
                None => by_host.push((h.as_str(), vec![vs])),
            }
        }
    }
    let mut reported: Vec<&crate::ResourceId> = Vec::new();
    for (host, list) in &by_host {
        if list.len() < 2 {
            continue;
        }
        let mut names: Vec<String> = list.iter().map(|v| ns_name(&v.meta)).collect();
        names.sort();
        for vs in list {
            if reported.contains(&&vs.meta.id) {
                continue;
            }
            reported.push(&vs.meta.id);
            f.report(
                &vs.meta,
                &FieldPath::root("metadata").key("name"),
                Code::ConflictingMeshGatewayVirtualServiceHosts,
                format!(
                    "The VirtualServices {} associated with mesh gateway define the same host {host} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource. (wasmgate tries their routes in load order: {})",
                    names.join(","),
                    list.iter()
                        .map(|v| ns_name(&v.meta))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
}

/// IST0149: a gateway-bound VirtualService routes on `@request.auth.claims.*`. Istio needs
/// a RequestAuthentication on the gateway for the claims to exist; wasmgate verifies
/// JWTs after the router (docs/security.md), so such a match never matches (and `withoutHeaders` on a claim always does).
pub(super) fn jwt_claim_routes(cfg: &Config, f: &mut Findings<'_>) {
    for vs in &cfg.virtual_services {
        let claim = vs.spec.http.iter().enumerate().find_map(|(i, h)| {
            h.match_.iter().enumerate().find_map(|(j, m)| {
                let p = FieldPath::root("spec")
                    .key("http")
                    .index(i)
                    .key("match")
                    .index(j);
                let key = |map: &BTreeMap<String, StringMatch>, field: &str| {
                    map.keys()
                        .find(|k| k.starts_with("@request.auth.claims"))
                        .map(|k| (k.clone(), p.key(field).key(k)))
                };
                key(&m.headers, "headers").or_else(|| key(&m.without_headers, "withoutHeaders"))
            })
        });
        let Some((key, path)) = claim else {
            continue;
        };
        let ns = vs.meta.id.namespace.as_str();
        for g in vs.spec.gateways.iter().filter(|g| *g != MESH) {
            let r = gateway_ref(g, ns);
            let Some(gw) = gateway(cfg, &r.namespace, &r.name) else {
                continue;
            };
            f.report(
                &vs.meta,
                &path,
                Code::JwtClaimBasedRoutingWithoutRequestAuthN,
                format!(
                    "The virtual service uses the JWT claim based routing (key: {key}) but found no request authentication for the gateway ({}) pod (wasmgate). The request authentication must first be applied for the gateway pods to validate the JWT token and make the claims available for routing. (wasmgate verifies JWTs after routing, so its router never sees claims: this match never matches)",
                    ns_name(&gw.meta)
                ),
            );
        }
    }
}
