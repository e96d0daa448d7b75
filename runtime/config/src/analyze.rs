//! `istioctl analyze` for wasmgate: checks between resources, run by the loader once every
//! document is valid on its own, so `wasmgate validate`, `wasmgate run` and a reload all
//! report them. Every finding is a warning (Istio accepts these configurations; the
//! runtime answers 404/503 where they bite), and its message starts with the code of the
//! Istio analyzer message it corresponds to, then Istio's wording:
//! `IST0101: Referenced gateway not found: "bookinfo-gateway"`; what wasmgate adds (the
//! resolved name, what happens to requests) follows in parentheses. One function per
//! analyzer, in the submodules by the kind they look at. The analyzers see the
//! resources as written; afterwards [`delegate`] replaces each `delegate` route by its
//! delegate's routes, as Istio merges them.

mod delegate;
mod destinations;
mod gateways;
mod plugins;
mod routes;
mod telemetry;

use std::collections::BTreeMap;
use std::fmt;

use crate::host::host_within;
use crate::model::{Config, DestinationRule, Gateway, Meta, ServiceEntry, VirtualService};
use crate::yaml::{FieldPath, Outline};
use crate::{ConfigWarning, ResourceId};

/// The Istio analysis message types wasmgate reports (`pkg/config/analysis/msg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Code {
    /// IST0101 ReferencedResourceNotFound: `Referenced %s not found: %q`.
    ReferencedResourceNotFound,
    /// IST0109 ConflictingMeshGatewayVirtualServiceHosts.
    ConflictingMeshGatewayVirtualServiceHosts,
    /// IST0112 VirtualServiceDestinationPortSelectorRequired.
    VirtualServiceDestinationPortSelectorRequired,
    /// IST0130 VirtualServiceUnreachableRule.
    VirtualServiceUnreachableRule,
    /// IST0131 VirtualServiceIneffectiveMatch.
    VirtualServiceIneffectiveMatch,
    /// IST0132 VirtualServiceHostNotFoundInGateway.
    VirtualServiceHostNotFoundInGateway,
    /// IST0138 GatewayDuplicateCertificate.
    GatewayDuplicateCertificate,
    /// IST0140 IngressRouteRulesNotAffected.
    IngressRouteRulesNotAffected,
    /// IST0145 ConflictingGateways.
    ConflictingGateways,
    /// IST0149 JwtClaimBasedRoutingWithoutRequestAuthN.
    JwtClaimBasedRoutingWithoutRequestAuthN,
    /// IST0160 MultipleTelemetriesWithoutWorkloadSelectors.
    MultipleTelemetriesWithoutWorkloadSelectors,
    /// IST0173 DestinationRuleSubsetNotSelectPods.
    DestinationRuleSubsetNotSelectPods,
    /// IST0174 UnknownDestinationRuleHost.
    UnknownDestinationRuleHost,
    /// IST0177 ConflictingServiceEntryProtocol.
    ConflictingServiceEntryProtocol,
}

impl Code {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Code::ReferencedResourceNotFound => "IST0101",
            Code::ConflictingMeshGatewayVirtualServiceHosts => "IST0109",
            Code::VirtualServiceDestinationPortSelectorRequired => "IST0112",
            Code::VirtualServiceUnreachableRule => "IST0130",
            Code::VirtualServiceIneffectiveMatch => "IST0131",
            Code::VirtualServiceHostNotFoundInGateway => "IST0132",
            Code::GatewayDuplicateCertificate => "IST0138",
            Code::IngressRouteRulesNotAffected => "IST0140",
            Code::ConflictingGateways => "IST0145",
            Code::JwtClaimBasedRoutingWithoutRequestAuthN => "IST0149",
            Code::MultipleTelemetriesWithoutWorkloadSelectors => "IST0160",
            Code::DestinationRuleSubsetNotSelectPods => "IST0173",
            Code::UnknownDestinationRuleHost => "IST0174",
            Code::ConflictingServiceEntryProtocol => "IST0177",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Collects findings with the line of their field, in the order the resources were read.
pub(crate) struct Findings<'a> {
    outlines: &'a BTreeMap<ResourceId, &'a Outline>,
    order: &'a BTreeMap<&'a ResourceId, usize>,
    found: Vec<(usize, Option<usize>, ConfigWarning)>,
}

impl<'a> Findings<'a> {
    fn new(
        outlines: &'a BTreeMap<ResourceId, &'a Outline>,
        order: &'a BTreeMap<&'a ResourceId, usize>,
    ) -> Self {
        Findings {
            outlines,
            order,
            found: Vec::new(),
        }
    }

    /// A finding with an Istio code: `CODE: message`.
    pub(crate) fn report(&mut self, meta: &Meta, path: &FieldPath, code: Code, message: String) {
        self.push(meta, path, format!("{code}: {message}"));
    }

    /// A finding Istio has no analyzer message for.
    pub(crate) fn note(&mut self, meta: &Meta, path: &FieldPath, message: String) {
        self.push(meta, path, message);
    }

    fn push(&mut self, meta: &Meta, path: &FieldPath, message: String) {
        // Resources generated from Ingresses have no document: no line.
        let line = self.outlines.get(&meta.id).map(|o| o.line_of(&path.0));
        let index = self.order.get(&meta.id).copied().unwrap_or(usize::MAX);
        self.found.push((
            index,
            line,
            ConfigWarning {
                file: meta.file.clone(),
                line,
                resource: Some(meta.id.clone()),
                field: Some(path.to_string()),
                message,
            },
        ));
    }

    /// The findings by document, then line; a stable sort keeps one line's in the order
    /// the analyzers found them.
    fn into_warnings(mut self) -> Vec<ConfigWarning> {
        self.found.sort_by_key(|(index, line, _)| (*index, *line));
        self.found.into_iter().map(|(_, _, w)| w).collect()
    }
}

/// Runs every analyzer on `cfg` as loaded, then resolves `delegate` routes (which
/// changes `cfg`). `order` is each resource's place among the documents.
pub(crate) fn run(
    cfg: &mut Config,
    outlines: &BTreeMap<ResourceId, &Outline>,
    order: &BTreeMap<&ResourceId, usize>,
) -> Vec<ConfigWarning> {
    let mut f = Findings::new(outlines, order);
    gateways::gateway_refs(cfg, &mut f);
    gateways::gateway_hosts(cfg, &mut f);
    gateways::conflicting_gateways(cfg, &mut f);
    gateways::duplicate_certificates(cfg, &mut f);
    destinations::destination_hosts(cfg, &mut f);
    destinations::destination_subsets(cfg, &mut f);
    destinations::ingress_route_subsets(cfg, &mut f);
    destinations::destination_rule_hosts(cfg, &mut f);
    destinations::destination_rule_subsets(cfg, &mut f);
    destinations::conflicting_service_entries(cfg, &mut f);
    routes::unreachable_rules(cfg, &mut f);
    routes::mesh_host_conflicts(cfg, &mut f);
    routes::jwt_claim_routes(cfg, &mut f);
    plugins::target_refs(cfg, &mut f);
    plugins::selectors(cfg, &mut f);
    telemetry::references(cfg, &mut f);
    telemetry::namespace_wide(cfg, &mut f);
    delegate::merge(cfg, &mut f);
    f.into_warnings()
}

/// The Gateway `namespace/name`, if loaded.
pub(crate) fn gateway<'c>(cfg: &'c Config, namespace: &str, name: &str) -> Option<&'c Gateway> {
    cfg.gateways
        .iter()
        .find(|g| g.meta.id.namespace == namespace && g.meta.id.name == name)
}

/// The VirtualService `namespace/name`, if loaded.
pub(crate) fn virtual_service<'c>(
    cfg: &'c Config,
    namespace: &str,
    name: &str,
) -> Option<&'c VirtualService> {
    cfg.virtual_services
        .iter()
        .find(|v| v.meta.id.namespace == namespace && v.meta.id.name == name)
}

/// The ServiceEntry the runtime sends traffic for fully qualified `host` to: the first
/// that declares it exactly, else the one with the longest wildcard host covering it.
pub(crate) fn service<'c>(cfg: &'c Config, host: &str) -> Option<&'c ServiceEntry> {
    if let Some(se) = cfg
        .service_entries
        .iter()
        .find(|se| se.hosts.iter().any(|h| h == host))
    {
        return Some(se);
    }
    let mut best: Option<(usize, &ServiceEntry)> = None;
    for se in &cfg.service_entries {
        for h in se.hosts.iter().filter(|h| h.starts_with('*')) {
            if host_within(host, h) && best.is_none_or(|(len, _)| h.len() > len) {
                best = Some((h.len(), se));
            }
        }
    }
    best.map(|(_, se)| se)
}

/// The DestinationRule the runtime applies to fully qualified `host`: the first for that
/// exact host, else the one with the most specific wildcard host covering it.
pub(crate) fn destination_rule<'c>(cfg: &'c Config, host: &str) -> Option<&'c DestinationRule> {
    if let Some(dr) = cfg.destination_rules.iter().find(|dr| dr.host == host) {
        return Some(dr);
    }
    let mut best: Option<(usize, &DestinationRule)> = None;
    for dr in cfg
        .destination_rules
        .iter()
        .filter(|dr| dr.host.starts_with('*'))
    {
        if host_within(host, &dr.host) && best.is_none_or(|(len, _)| dr.host.len() > len) {
            best = Some((dr.host.len(), dr));
        }
    }
    best.map(|(_, dr)| dr)
}

/// A list as Go's `%v` prints a slice: `[a b c]`.
pub(crate) fn go_list<T: fmt::Display>(items: &[T]) -> String {
    let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("[{}]", parts.join(" "))
}

/// Labels as a Kubernetes selector string (`app=web,version=v1`), as Istio prints them.
pub(crate) fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `namespace/name` of a resource.
pub(crate) fn ns_name(meta: &Meta) -> String {
    format!("{}/{}", meta.id.namespace, meta.id.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_selectors_print_as_istio_does() {
        assert_eq!(go_list(&["a", "b"]), "[a b]");
        assert_eq!(go_list::<u16>(&[]), "[]");
        let labels: BTreeMap<String, String> = [("version", "v1"), ("app", "web")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(selector_string(&labels), "app=web,version=v1");
        assert_eq!(Code::ConflictingGateways.to_string(), "IST0145");
    }
}
