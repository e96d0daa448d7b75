//! Analyzers about Gateways and the VirtualServices bound to them: references to
//! Gateways that do not exist (IST0101), VirtualService hosts no server accepts
//! (IST0132), servers that cannot share a listener (IST0145) and certificates shared
//! between Gateways of one listener (IST0138).
//!
//! wasmgate is the gateway workload and serves every Gateway, so where Istio compares
//! workload selectors, these compare listener addresses (`bind` and port): servers of
//! different Gateways meet when they share one.

use super::{Code, Findings, gateway, go_list, ns_name, selector_string};
use crate::host::hosts_overlap;
use crate::model::{Config, Gateway, NamespaceSelector, Protocol, Server, VirtualService};
use crate::validate::virtual_service::{MESH, gateway_ref};
use crate::yaml::FieldPath;

/// IST0101: a VirtualService names a Gateway that is not loaded, in `gateways` or in a
/// route's `match.gateways`. Its requests never reach it (a route whose matches all name
/// missing gateways never matches).
pub(super) fn gateway_refs(cfg: &Config, f: &mut Findings<'_>) {
    for vs in &cfg.virtual_services {
        let ns = vs.meta.id.namespace.as_str();
        let spec = FieldPath::root("spec");
        let check = |list: &[String], path: FieldPath, f: &mut Findings<'_>| {
            for (i, g) in list.iter().enumerate() {
                if g == MESH {
                    continue;
                }
                let r = gateway_ref(g, ns);
                if gateway(cfg, &r.namespace, &r.name).is_some() {
                    continue;
                }
                let full = format!("{}/{}", r.namespace, r.name);
                let detail = if *g == full {
                    String::new()
                } else {
                    format!(" (Gateway {full})")
                };
                f.report(
                    &vs.meta,
                    &path.index(i),
                    Code::ReferencedResourceNotFound,
                    format!("Referenced gateway not found: {g:?}{detail}"),
                );
            }
        };
        check(&vs.spec.gateways, spec.key("gateways"), f);
        for (i, h) in vs.spec.http.iter().enumerate() {
            for (j, m) in h.match_.iter().enumerate() {
                let p = spec.key("http").index(i).key("match").index(j);
                check(&m.gateways, p.key("gateways"), f);
            }
        }
        for (i, t) in vs.spec.tls.iter().enumerate() {
            for (j, m) in t.match_.iter().enumerate() {
                let p = spec.key("tls").index(i).key("match").index(j);
                check(&m.gateways, p.key("gateways"), f);
            }
        }
        for (i, t) in vs.spec.tcp.iter().enumerate() {
            for (j, m) in t.match_.iter().enumerate() {
                let p = spec.key("tcp").index(i).key("match").index(j);
                check(&m.gateways, p.key("gateways"), f);
            }
        }
    }
}

/// Does a server of `gw` accept VirtualService host `host` (expanded) of `vs`: a server
/// host that admits the VirtualService's namespace and overlaps it?
fn accepts(gw: &Gateway, vs: &VirtualService, host: &str) -> bool {
    gw.servers.iter().any(|s| {
        s.hosts.iter().any(|h| {
            let admitted = match &h.namespace {
                NamespaceSelector::Any => true,
                NamespaceSelector::Named(ns) => *ns == vs.meta.id.namespace,
            };
            admitted && hosts_overlap(host, &h.host)
        })
    })
}

/// IST0132: a Gateway a VirtualService is bound to accepts none of its hosts (Istio's
/// rule, reported on `spec.gateways[i]`); and, beyond Istio, a host none of its Gateways
/// accepts while another host is served (on `spec.hosts[j]`). Either way no request for
/// those hosts reaches the VirtualService through those Gateways. A Gateway that does not
/// exist is IST0101 alone.
pub(super) fn gateway_hosts(cfg: &Config, f: &mut Findings<'_>) {
    for vs in &cfg.virtual_services {
        let ns = vs.meta.id.namespace.as_str();
        let spec = FieldPath::root("spec");
        let mut bound: Vec<&Gateway> = Vec::new();
        for (i, g) in vs.spec.gateways.iter().enumerate() {
            if g == MESH {
                continue;
            }
            let r = gateway_ref(g, ns);
            let Some(gw) = gateway(cfg, &r.namespace, &r.name) else {
                continue;
            };
            bound.push(gw);
            if !vs.hosts.iter().any(|h| accepts(gw, vs, h)) {
                f.report(
                    &vs.meta,
                    &spec.key("gateways").index(i),
                    Code::VirtualServiceHostNotFoundInGateway,
                    format!(
                        "one or more host {} defined in VirtualService {} not found in Gateway {}.",
                        go_list(&vs.spec.hosts),
                        ns_name(&vs.meta),
                        ns_name(&gw.meta)
                    ),
                );
            }
        }
        let served = |h: &String| bound.iter().any(|gw| accepts(gw, vs, h));
        if !vs.hosts.iter().any(served) {
            continue;
        }
        let names: Vec<String> = bound.iter().map(|g| ns_name(&g.meta)).collect();
        for (j, h) in vs.hosts.iter().enumerate() {
            if !served(h) {
                f.report(
                    &vs.meta,
                    &spec.key("hosts").index(j),
                    Code::VirtualServiceHostNotFoundInGateway,
                    format!(
                        "one or more host {} defined in VirtualService {} not found in Gateway {}.",
                        go_list(&vs.spec.hosts[j..=j]),
                        ns_name(&vs.meta),
                        names.join(", ")
                    ),
                );
            }
        }
    }
}

/// How a listener serves connections; servers of one address must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Http,
    Tls,
    Tcp,
}

fn family(p: Protocol) -> Family {
    match p {
        Protocol::Https | Protocol::Tls => Family::Tls,
        Protocol::Tcp | Protocol::Mongo => Family::Tcp,
        Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb => Family::Http,
    }
}

fn same_address(a: &Server, b: &Server) -> bool {
    a.port == b.port && a.bind == b.bind
}

/// A host both servers list (namespace part aside).
fn shared_host<'s>(a: &'s Server, b: &Server) -> Option<&'s str> {
    a.hosts
        .iter()
        .find(|h| b.hosts.iter().any(|o| o.host == h.host))
        .map(|h| h.host.as_str())
}

/// Why servers `a` and `b` (of different Gateways, on one address) cannot both be served
/// as written; `None` when they can.
fn conflict(a: &Server, b: &Server) -> Option<String> {
    let (fa, fb) = (family(a.protocol), family(b.protocol));
    if fa != fb {
        return Some(format!(
            "{} and {} servers cannot share a listener: it serves plain HTTP, TLS or TCP, not a mix, so wasmgate run refuses it",
            a.protocol.as_str(),
            b.protocol.as_str()
        ));
    }
    let host = shared_host(a, b)?;
    match fa {
        Family::Tls => Some(format!(
            "both claim SNI {host}: the server read first keeps it, the other's routes never see it"
        )),
        Family::Http if a.https_redirect != b.https_redirect => Some(format!(
            "both serve {host} with different httpsRedirect: the server read first decides"
        )),
        Family::Http | Family::Tcp => None,
    }
}

/// IST0145: servers of two Gateways on one listener address that cannot both be served
/// as written: different kinds of listener (HTTP, TLS, TCP), one SNI name claimed twice,
/// or one host with different `httpsRedirect`. Reported on each Gateway's server, naming
/// the others, as Istio does.
pub(super) fn conflicting_gateways(cfg: &Config, f: &mut Findings<'_>) {
    for gw in &cfg.gateways {
        for s in &gw.servers {
            let mut others: Vec<String> = Vec::new();
            let mut reason = None;
            for other in cfg.gateways.iter().filter(|o| o.meta.id != gw.meta.id) {
                for t in other.servers.iter().filter(|t| same_address(s, t)) {
                    if let Some(why) = conflict(s, t) {
                        let name = ns_name(&other.meta);
                        if !others.contains(&name) {
                            others.push(name);
                        }
                        reason.get_or_insert(why);
                    }
                }
            }
            let Some(reason) = reason else {
                continue;
            };
            others.sort();
            let hosts = gw
                .spec
                .servers
                .get(s.index)
                .map(|w| w.hosts.join(","))
                .unwrap_or_default();
            f.report(
                &gw.meta,
                &FieldPath::root("spec").key("servers").index(s.index),
                Code::ConflictingGateways,
                format!(
                    "Conflict with gateways {} (workload selector {}, port {}, hosts {hosts}). ({reason})",
                    others.join(","),
                    selector_string(&gw.selector),
                    s.port,
                ),
            );
        }
    }
}

/// IST0138: HTTPS servers of two Gateways on one listener address serve the same
/// certificate: the same Secret (as resolved, so `web` in two namespaces may be one
/// Secret of the workload's namespace) or the same file, as Istio compares
/// `credentialName` and `serverCertificate` (two Secrets holding equal bytes are not
/// compared). A browser reuses an HTTP/2 connection for every host the certificate
/// covers, but after the handshake wasmgate answers only the hosts of the server the
/// connection was opened for: the others get 404.
pub(super) fn duplicate_certificates(cfg: &Config, f: &mut Findings<'_>) {
    fn certs(s: &Server) -> Vec<&str> {
        match (&s.tls, s.protocol) {
            (Some(tls), Protocol::Https) => tls
                .certificates
                .iter()
                .map(|k| k.cert.origin.as_str())
                .collect(),
            _ => Vec::new(),
        }
    }
    for gw in &cfg.gateways {
        for other in cfg.gateways.iter().filter(|o| o.meta.id != gw.meta.id) {
            let shared = gw.servers.iter().find(|s| {
                let mine = certs(s);
                other
                    .servers
                    .iter()
                    .filter(|t| same_address(s, t))
                    .any(|t| certs(t).iter().any(|c| mine.contains(c)))
            });
            if let Some(s) = shared {
                f.report(
                    &gw.meta,
                    &FieldPath::root("spec")
                        .key("servers")
                        .index(s.index)
                        .key("tls"),
                    Code::GatewayDuplicateCertificate,
                    format!(
                        "Duplicate certificate in multiple gateways {} may cause 404s if clients re-use HTTP2 connections. (wasmgate answers a connection only for the hosts of the server it was opened for)",
                        go_list(&[ns_name(&gw.meta), ns_name(&other.meta)])
                    ),
                );
            }
        }
    }
}
