//! ServiceEntry rules (Istio's `ValidateServiceEntry` and the CRD's CEL rules): hosts,
//! addresses, ports, resolution modes, endpoints and workload selectors; builds
//! [`model::ServiceEntry`].

use std::collections::{BTreeMap, BTreeSet};

use super::{Report, port_u16, validate_export_to, validate_labels, validate_port};
use crate::host::{
    expand_host, is_dns_label, is_ip, validate_fqdn, validate_ip_subnet, validate_partial_wildcard,
    validate_wildcard_domain,
};
use crate::model::{self, Location, Resolution};
use crate::raw::{self, ServiceEntryLocation, ServiceEntryResolution as Res};
use crate::validate::gateway::validate_unix_address;
use crate::yaml::FieldPath;

const PROTOCOLS: [&str; 12] = [
    "tcp",
    "udp",
    "grpc",
    "grpc-web",
    "http",
    "http_proxy",
    "http2",
    "https",
    "tls",
    "mongo",
    "redis",
    "mysql",
];

fn is_http_protocol(p: &str) -> bool {
    matches!(
        p.to_ascii_lowercase().as_str(),
        "http" | "http2" | "http_proxy" | "grpc" | "grpc-web"
    )
}

fn is_tls_protocol(p: &str) -> bool {
    matches!(p.to_ascii_lowercase().as_str(), "https" | "tls")
}

pub(crate) fn validate(
    meta: &model::Meta,
    spec: &raw::ServiceEntrySpec,
    r: &mut Report,
) -> model::ServiceEntry {
    let p = FieldPath::root("spec");
    let ns = &meta.id.namespace;
    let resolution = spec.resolution.unwrap_or_default();

    if let Some(ws) = &spec.workload_selector {
        let wp = p.key("workloadSelector");
        for (k, v) in &ws.labels {
            if k.is_empty() {
                r.err(&wp.key("labels"), "empty key is not supported in selector");
            }
            if k.contains('*') || v.contains('*') {
                r.err(
                    &wp.key("labels").key(k),
                    format!("wildcard is not supported in selector: \"{k}={v}\""),
                );
            }
        }
        if ws.labels.is_empty() {
            r.warn(&wp, "workload selector specified without labels; it will be applied to all services in namespace");
        }
        if !spec.endpoints.is_empty() {
            r.err(&p, "only one of WorkloadSelector or Endpoints can be set");
        }
    }

    if spec.hosts.is_empty() {
        r.err(&p.key("hosts"), "service entry must have at least one host");
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        let hp = p.key("hosts").index(i);
        if h == "*" {
            r.err(&hp, "hostname cannot be wildcard");
            continue;
        }
        r.check(&hp, validate_wildcard_domain(h));
        if resolution != Res::DynamicDns
            && let Err(e) = validate_partial_wildcard(h)
        {
            r.warn(&hp, e);
        }
    }

    let mut cidr = false;
    for (i, a) in spec.addresses.iter().enumerate() {
        cidr |= a.contains('/');
        r.check(&p.key("addresses").index(i), validate_ip_subnet(a));
    }
    if cidr && !matches!(resolution, Res::None | Res::Static) {
        r.err(
            &p.key("addresses"),
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }

    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    let mut ports = Vec::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let pp = p.key("ports").index(i);
        if !names.insert(port.name.as_str()) {
            r.err(
                &pp.key("name"),
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        if !numbers.insert(port.number) {
            r.err(
                &pp.key("number"),
                format!("service entry port {} already defined", port.number),
            );
        }
        if !is_dns_label(&port.name) {
            r.err(
                &pp.key("name"),
                format!("invalid port name: {:?}", port.name),
            );
        }
        if !port.protocol.is_empty()
            && !PROTOCOLS.contains(&port.protocol.to_ascii_lowercase().as_str())
        {
            r.err(
                &pp.key("protocol"),
                format!("unsupported protocol: {}", port.protocol),
            );
        }
        r.check(&pp.key("number"), validate_port(port.number));
        if port.target_port != 0 {
            r.check(&pp.key("targetPort"), validate_port(port.target_port));
        }
        ports.push(model::ServicePort {
            number: port_u16(port.number),
            name: port.name.clone(),
            protocol: port.protocol.clone(),
            target_port: (port.target_port != 0).then(|| port_u16(port.target_port)),
        });
    }

    match resolution {
        Res::None => {
            if !spec.endpoints.is_empty() {
                r.err(&p.key("endpoints"), "NONE mode cannot set endpoints");
            }
            if spec.workload_selector.is_some() {
                r.warn(
                    &p.key("workloadSelector"),
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
        }
        Res::Static => {
            for (i, e) in spec.endpoints.iter().enumerate() {
                validate_endpoint(e, &names, false, &p.key("endpoints").index(i), r);
            }
        }
        Res::Dns | Res::DnsRoundRobin => {
            if spec.endpoints.is_empty()
                && let Some((i, e)) = spec
                    .hosts
                    .iter()
                    .enumerate()
                    .find_map(|(i, h)| validate_fqdn(h).err().map(|e| (i, e)))
            {
                r.err(
                        &p.key("hosts").index(i),
                        format!("hosts must be FQDN if no endpoints are provided for resolution mode {}: {e}", resolution.as_str()),
                    );
            }
            if resolution == Res::DnsRoundRobin && spec.endpoints.len() > 1 {
                r.err(
                    &p.key("endpoints"),
                    "DNS_ROUND_ROBIN mode cannot have multiple endpoints",
                );
            }
            for (i, e) in spec.endpoints.iter().enumerate() {
                validate_endpoint(e, &names, true, &p.key("endpoints").index(i), r);
            }
            if !spec.addresses.is_empty()
                && spec.hosts.len() > 1
                && spec.ports.iter().any(|port| {
                    let l = port.protocol.to_ascii_lowercase();
                    matches!(
                        l.as_str(),
                        "tcp" | "https" | "tls" | "mongo" | "redis" | "mysql"
                    )
                })
            {
                r.warn(&p.key("hosts"), "service entry can not have more than one host specified simultaneously with address and tcp port");
            }
        }
        Res::DynamicDns => {
            for (i, h) in spec.hosts.iter().enumerate() {
                if !h.starts_with('*') {
                    r.err(
                        &p.key("hosts").index(i),
                        "host must be wildcarded for resolution mode DYNAMIC_DNS",
                    );
                }
            }
            if !spec.addresses.is_empty() {
                r.err(
                    &p.key("addresses"),
                    "addresses cannot be set for resolution type DYNAMIC_DNS",
                );
            }
            if !spec.endpoints.is_empty() {
                r.err(
                    &p.key("endpoints"),
                    "endpoints cannot be set for resolution type DYNAMIC_DNS",
                );
            }
            for (i, port) in spec.ports.iter().enumerate() {
                let l = port.protocol.to_ascii_lowercase();
                if !matches!(l.as_str(), "http" | "tls" | "grpc" | "http2") {
                    r.err(
                        &p.key("ports").index(i).key("protocol"),
                        "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type DYNAMIC_DNS",
                    );
                }
            }
        }
    }

    if resolution != Res::None
        && spec.hosts.len() > 1
        && let Some(i) = spec
            .ports
            .iter()
            .position(|port| !is_http_protocol(&port.protocol) && !is_tls_protocol(&port.protocol))
    {
        r.err(
            &p.key("ports").index(i),
            "multiple hosts provided with non-HTTP, non-TLS ports",
        );
    }
    validate_export_to(r, &p.key("exportTo"), ns, &spec.export_to, true, false);

    model::ServiceEntry {
        meta: meta.clone(),
        hosts: spec.hosts.iter().map(|h| expand_host(h, ns)).collect(),
        ports,
        endpoints: spec
            .endpoints
            .iter()
            .map(|e| model::Endpoint {
                address: e.address.clone(),
                ports: e
                    .ports
                    .iter()
                    .map(|(k, v)| (k.clone(), port_u16(*v)))
                    .collect::<BTreeMap<_, _>>(),
                labels: e.labels.clone(),
                weight: e.weight.max(1),
                locality: e.locality.clone(),
                network: e.network.clone(),
            })
            .collect(),
        resolution: match resolution {
            Res::None => Resolution::None,
            Res::Static => Resolution::Static,
            Res::Dns => Resolution::Dns,
            Res::DnsRoundRobin => Resolution::DnsRoundRobin,
            Res::DynamicDns => Resolution::DynamicDns,
        },
        location: match spec.location.unwrap_or_default() {
            ServiceEntryLocation::MeshExternal => Location::MeshExternal,
            ServiceEntryLocation::MeshInternal => Location::MeshInternal,
        },
        spec: spec.clone(),
    }
}

/// An endpoint (`WorkloadEntry`): an IP (or `unix://` path; DNS names only for DNS
/// resolutions), ports that name declared service ports, and valid labels.
fn validate_endpoint(
    e: &raw::WorkloadEntry,
    service_ports: &BTreeSet<&str>,
    allow_fqdn: bool,
    p: &FieldPath,
    r: &mut Report,
) {
    let ap = p.key("address");
    if e.address.is_empty() {
        if e.network.is_empty() {
            r.err(&ap, "address is required");
        } else {
            r.warn(
                &ap,
                format!("address is unset with network {:?}", e.network),
            );
        }
    } else if let Some(path) = e.address.strip_prefix("unix://") {
        r.check(&ap, validate_unix_address(path));
        if !e.ports.is_empty() {
            r.err(
                &p.key("ports"),
                format!("unix endpoint {} must not include ports", e.address),
            );
        }
        if service_ports.len() != 1 {
            r.err(&ap, "exactly 1 service port required for unix endpoints");
        }
    } else if !is_ip(&e.address) {
        if !allow_fqdn {
            r.err(
                &ap,
                format!("endpoint address {:?} is not a valid IP address", e.address),
            );
        } else if validate_fqdn(&e.address).is_err() {
            r.err(
                &ap,
                format!(
                    "endpoint address {:?} is not a valid FQDN or an IP address",
                    e.address
                ),
            );
        }
    }
    for (name, port) in &e.ports {
        let pp = p.key("ports").key(name);
        if !service_ports.contains(name.as_str()) {
            r.err(
                &pp,
                format!("endpoint port {name:?} is not defined by the service entry"),
            );
        }
        if !is_dns_label(name) {
            r.err(&pp, format!("invalid port name: {name:?}"));
        }
        r.check(&pp, validate_port(*port));
    }
    validate_labels(r, &p.key("labels"), &e.labels);
}
