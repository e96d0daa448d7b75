//! Analyzers about where routes send traffic: destination hosts no ServiceEntry declares,
//! ports a service does not have or a destination must name (IST0101, IST0112), subsets
//! no DestinationRule defines (IST0101), mesh subsets a gateway route bypasses (IST0140),
//! DestinationRules for hosts no ServiceEntry declares (IST0174), subsets that select no
//! endpoint (IST0173) and ServiceEntries that disagree on a port's protocol (IST0177).
//!
//! Hosts are looked up as the runtime looks them up (`snapshot/registry.rs`): wasmgate
//! has no Kubernetes registry, so a ServiceEntry is the only way a host exists. The
//! analyzers do not read `exportTo` (the runtime does, `model::export`): a finding
//! considers every resource.

use super::{Code, Findings, destination_rule, go_list, ns_name, service};
use crate::host::{expand_host, hosts_overlap};
use crate::model::{Config, ServiceEntry, VirtualService};
use crate::raw;
use crate::yaml::FieldPath;

/// What carries traffic to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// An HTTP route's `route[].destination`.
    HttpRoute,
    /// `mirror` or `mirrors[].destination`.
    Mirror,
    /// A `tcp` or `tls` route's `route[].destination`.
    Connection,
}

impl Via {
    /// What becomes of traffic sent to a destination that cannot be resolved.
    fn consequence(self) -> &'static str {
        match self {
            Via::HttpRoute => "; requests routed there get 503",
            Via::Mirror => "; no copies are sent",
            Via::Connection => "; connections routed there are closed",
        }
    }
}

/// One destination of a VirtualService, with the path of its `destination` (or
/// `mirror`) field.
struct Dest<'a> {
    dest: &'a raw::Destination,
    path: FieldPath,
    via: Via,
}

/// Every destination of `vs`, in document order.
fn destinations(vs: &VirtualService) -> Vec<Dest<'_>> {
    let spec = FieldPath::root("spec");
    let mut out = Vec::new();
    for (i, h) in vs.spec.http.iter().enumerate() {
        let hp = spec.key("http").index(i);
        for (j, r) in h.route.iter().enumerate() {
            if let Some(dest) = &r.destination {
                out.push(Dest {
                    dest,
                    path: hp.key("route").index(j).key("destination"),
                    via: Via::HttpRoute,
                });
            }
        }
        if let Some(dest) = &h.mirror {
            out.push(Dest {
                dest,
                path: hp.key("mirror"),
                via: Via::Mirror,
            });
        }
        for (j, m) in h.mirrors.iter().enumerate() {
            if let Some(dest) = &m.destination {
                out.push(Dest {
                    dest,
                    path: hp.key("mirrors").index(j).key("destination"),
                    via: Via::Mirror,
                });
            }
        }
    }
    for (field, routes) in [
        (
            "tls",
            vs.spec.tls.iter().map(|t| &t.route).collect::<Vec<_>>(),
        ),
        (
            "tcp",
            vs.spec.tcp.iter().map(|t| &t.route).collect::<Vec<_>>(),
        ),
    ] {
        for (i, route) in routes.into_iter().enumerate() {
            for (j, r) in route.iter().enumerate() {
                if let Some(dest) = &r.destination {
                    out.push(Dest {
                        dest,
                        path: spec
                            .key(field)
                            .index(i)
                            .key("route")
                            .index(j)
                            .key("destination"),
                        via: Via::Connection,
                    });
                }
            }
        }
    }
    out
}

/// IST0101 and IST0112: a destination host no ServiceEntry declares; a port the
/// ServiceEntry does not have; no port where the ServiceEntry has several (the runtime
/// cannot choose one).
pub(super) fn destination_hosts(cfg: &Config, f: &mut Findings<'_>) {
    for vs in &cfg.virtual_services {
        let ns = vs.meta.id.namespace.as_str();
        for d in destinations(vs) {
            let host = expand_host(&d.dest.host, ns);
            let what = if d.via == Via::Mirror {
                "mirror host"
            } else {
                "host"
            };
            let Some(se) = service(cfg, &host) else {
                f.report(
                    &vs.meta,
                    &d.path.key("host"),
                    Code::ReferencedResourceNotFound,
                    format!(
                        "Referenced {what} not found: {:?} (no ServiceEntry declares {host}{})",
                        d.dest.host,
                        d.via.consequence()
                    ),
                );
                continue;
            };
            check_port(vs, &d, se, f);
        }
    }
}

fn check_port(vs: &VirtualService, d: &Dest<'_>, se: &ServiceEntry, f: &mut Findings<'_>) {
    if se.ports.is_empty() {
        // Any port goes: the runtime uses the destination's (or 80).
        return;
    }
    let ports: Vec<u16> = se.ports.iter().map(|p| p.number).collect();
    match d.dest.port.as_ref().and_then(|p| p.number) {
        None if ports.len() > 1 => f.report(
            &vs.meta,
            &d.path,
            Code::VirtualServiceDestinationPortSelectorRequired,
            format!(
                "This VirtualService routes to a service {:?} that exposes multiple ports {}. Specifying a port in the destination is required to disambiguate. (ServiceEntry {}{})",
                d.dest.host,
                go_list(&ports),
                ns_name(&se.meta),
                d.via.consequence()
            ),
        ),
        Some(n) if !ports.iter().any(|p| u32::from(*p) == n) => f.report(
            &vs.meta,
            &d.path.key("port").key("number"),
            Code::ReferencedResourceNotFound,
            format!(
                "Referenced host:port not found: \"{}:{n}\" (ServiceEntry {} declares ports {}{})",
                d.dest.host,
                ns_name(&se.meta),
                go_list(&ports),
                d.via.consequence()
            ),
        ),
        _ => {}
    }
}

/// IST0101: a destination names a subset that the DestinationRule for its host does not
/// define, or there is no DestinationRule for the host at all.
pub(super) fn destination_subsets(cfg: &Config, f: &mut Findings<'_>) {
    for vs in &cfg.virtual_services {
        let ns = vs.meta.id.namespace.as_str();
        for d in destinations(vs) {
            let subset = d.dest.subset.as_str();
            if subset.is_empty() {
                continue;
            }
            let host = expand_host(&d.dest.host, ns);
            let detail = match destination_rule(cfg, &host) {
                Some(dr) if dr.subsets.iter().any(|s| s.name == subset) => continue,
                Some(dr) => format!(
                    "DestinationRule {} defines no subset {subset:?}",
                    ns_name(&dr.meta)
                ),
                None => format!("no DestinationRule for {host}"),
            };
            let what = if d.via == Via::Mirror {
                "mirror+subset"
            } else {
                "host+subset"
            };
            f.report(
                &vs.meta,
                &d.path.key("subset"),
                Code::ReferencedResourceNotFound,
                format!(
                    "Referenced {what} in destinationrule not found: \"{}+{subset}\" ({detail}{})",
                    d.dest.host,
                    d.via.consequence()
                ),
            );
        }
    }
}

/// IST0140: a route of a gateway-bound VirtualService sends to a host without a subset,
/// while a mesh VirtualService for that host splits it by subset. The split never applies
/// to the gateway's requests: wasmgate, like Istio's gateways, sends them straight to the
/// service (mesh VirtualServices route on the mesh listener only).
pub(super) fn ingress_route_subsets(cfg: &Config, f: &mut Findings<'_>) {
    let mesh_subsets = |host: &str| -> Vec<&VirtualService> {
        cfg.virtual_services
            .iter()
            .filter(|m| m.binds_mesh && m.hosts.iter().any(|h| h == host))
            .filter(|m| {
                let ns = m.meta.id.namespace.as_str();
                m.http.iter().flat_map(|r| &r.route).any(|r| {
                    r.destination
                        .as_ref()
                        .is_some_and(|d| !d.subset.is_empty() && expand_host(&d.host, ns) == host)
                })
            })
            .collect()
    };
    for vs in cfg
        .virtual_services
        .iter()
        .filter(|v| !v.gateways.is_empty())
    {
        let ns = vs.meta.id.namespace.as_str();
        for d in destinations(vs) {
            if d.via != Via::HttpRoute || !d.dest.subset.is_empty() {
                continue;
            }
            for m in mesh_subsets(&expand_host(&d.dest.host, ns)) {
                f.report(
                    &vs.meta,
                    &d.path.key("host"),
                    Code::IngressRouteRulesNotAffected,
                    format!(
                        "Subset in virtual service {} has no effect on ingress gateway {} requests",
                        ns_name(&m.meta),
                        ns_name(&vs.meta)
                    ),
                );
            }
        }
    }
}

/// IST0174: a DestinationRule whose host no ServiceEntry declares: its policy applies to
/// nothing.
pub(super) fn destination_rule_hosts(cfg: &Config, f: &mut Findings<'_>) {
    for dr in &cfg.destination_rules {
        let known = cfg
            .service_entries
            .iter()
            .any(|se| se.hosts.iter().any(|h| hosts_overlap(&dr.host, h)));
        if !known {
            f.report(
                &dr.meta,
                &FieldPath::root("spec").key("host"),
                Code::UnknownDestinationRuleHost,
                format!(
                    "The host {} defined in the DestinationRule does not match any services in the mesh. (no ServiceEntry declares {})",
                    dr.spec.host, dr.host
                ),
            );
        }
    }
}

/// IST0173: a subset whose labels no endpoint of the host's ServiceEntry carries (Istio
/// looks at Pods; wasmgate's endpoints are the ServiceEntry's). Requests routed to the
/// subset find no endpoint: 503 `UH`.
pub(super) fn destination_rule_subsets(cfg: &Config, f: &mut Findings<'_>) {
    for dr in cfg
        .destination_rules
        .iter()
        .filter(|d| !d.host.starts_with('*'))
    {
        let Some(se) = service(cfg, &dr.host) else {
            continue;
        };
        for (i, subset) in dr.subsets.iter().enumerate() {
            if subset.labels.is_empty()
                || se.endpoints.iter().any(|e| {
                    subset
                        .labels
                        .iter()
                        .all(|(k, v)| e.labels.get(k) == Some(v))
                })
            {
                continue;
            }
            f.report(
                &dr.meta,
                &FieldPath::root("spec").key("subsets").index(i),
                Code::DestinationRuleSubsetNotSelectPods,
                format!(
                    "The Subset {} defined in the DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream). (no endpoint of ServiceEntry {} has labels {})",
                    subset.name,
                    ns_name(&se.meta),
                    super::selector_string(&subset.labels)
                ),
            );
        }
    }
}

/// IST0177: ServiceEntries that declare one host and port with different protocols. The
/// runtime uses the first ServiceEntry for a host, so the others' protocol never applies.
pub(super) fn conflicting_service_entries(cfg: &Config, f: &mut Findings<'_>) {
    /// The ServiceEntries declaring one (host, port), with the protocol each gives it.
    type Declared<'c> = Vec<(&'c ServiceEntry, String)>;
    let mut index: Vec<((&str, u16), Declared<'_>)> = Vec::new();
    for se in &cfg.service_entries {
        for h in &se.hosts {
            for p in &se.ports {
                let key = (h.as_str(), p.number);
                let entry = (se, p.protocol.to_ascii_uppercase());
                match index.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, list)) => list.push(entry),
                    None => index.push((key, vec![entry])),
                }
            }
        }
    }
    let mut reported: Vec<&crate::ResourceId> = Vec::new();
    for ((host, port), entries) in &index {
        let mut protocols: Vec<&str> = entries.iter().map(|(_, p)| p.as_str()).collect();
        protocols.sort_unstable();
        protocols.dedup();
        let mut names: Vec<String> = entries.iter().map(|(se, _)| ns_name(&se.meta)).collect();
        names.sort();
        names.dedup();
        if protocols.len() < 2 || names.len() < 2 {
            continue;
        }
        let first = ns_name(&entries[0].0.meta);
        for (se, _) in entries {
            if reported.contains(&&se.meta.id) {
                continue;
            }
            reported.push(&se.meta.id);
            f.report(
                &se.meta,
                &FieldPath::root("metadata").key("name"),
                Code::ConflictingServiceEntryProtocol,
                format!(
                    "Multiple ServiceEntries ({}) define the same host {host:?} and port {port} with conflicting protocols ({}). (wasmgate uses ServiceEntry {first})",
                    names.join(", "),
                    protocols.join(", ")
                ),
            );
        }
    }
}
