//! Kubernetes `Ingress` and `IngressClass` (networking.k8s.io/v1): the API server's
//! validation of the shape (hosts, paths and their types, backends), then the model the
//! Ingress translation (`crate::ingress`) turns into a Gateway and VirtualServices.

use super::Report;
use crate::host::{is_ip, validate_wildcard_domain};
use crate::model;
use crate::raw;
use crate::yaml::FieldPath;

/// The annotation older Ingresses name their class with.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

pub(crate) fn validate(
    meta: &model::Meta,
    spec: &raw::IngressSpec,
    r: &mut Report,
) -> model::Ingress {
    let p = FieldPath::root("spec");
    if spec.rules.is_empty() && spec.default_backend.is_none() {
        r.err(&p, "either `defaultBackend` or `rules` must be specified");
    }
    if let Some(b) = &spec.default_backend {
        backend(b, &p.key("defaultBackend"), r);
    }
    for (i, tls) in spec.tls.iter().enumerate() {
        let tp = p.key("tls").index(i);
        for (j, h) in tls.hosts.iter().enumerate() {
            host(h, &tp.key("hosts").index(j), r);
        }
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let rp = p.key("rules").index(i);
        if !rule.host.is_empty() {
            host(&rule.host, &rp.key("host"), r);
        }
        let Some(http) = &rule.http else {
            continue;
        };
        if http.paths.is_empty() {
            r.err(&rp.key("http").key("paths"), "Required value");
        }
        for (j, path) in http.paths.iter().enumerate() {
            let pp = rp.key("http").key("paths").index(j);
            match path.path_type.as_str() {
                "Exact" | "Prefix" => {
                    if !path.path.starts_with('/') {
                        r.err(&pp.key("path"), "must be an absolute path");
                    }
                }
                "ImplementationSpecific" => {
                    if !path.path.is_empty() && !path.path.starts_with('/') {
                        r.err(&pp.key("path"), "must be an absolute path");
                    }
                }
                "" => r.err(&pp.key("pathType"), "Required value: pathType must be specified"),
                other => r.err(
                    &pp.key("pathType"),
                    format!(
                        "Unsupported value: {other:?}: supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\""
                    ),
                ),
            }
            match &path.backend {
                Some(b) => backend(b, &pp.key("backend"), r),
                None => r.err(&pp.key("backend"), "Required value"),
            }
        }
    }
    let class = spec
        .ingress_class_name
        .clone()
        .or_else(|| meta.annotations.get(CLASS_ANNOTATION).cloned());
    model::Ingress {
        meta: meta.clone(),
        class,
        spec: spec.clone(),
    }
}

pub(crate) fn validate_class(
    meta: &model::Meta,
    spec: &raw::IngressClassSpec,
    r: &mut Report,
) -> model::IngressClass {
    if spec.controller.is_empty() {
        r.err(&FieldPath::root("spec").key("controller"), "Required value");
    }
    model::IngressClass {
        meta: meta.clone(),
        controller: spec.controller.clone(),
    }
}

/// A rule or TLS host: a DNS name, with at most a leading `*.` (never an IP).
fn host(h: &str, p: &FieldPath, r: &mut Report) {
    if is_ip(h) {
        r.err(p, format!("{h:?}: must be a DNS name, not an IP address"));
        return;
    }
    if h.contains(':') {
        r.err(p, format!("{h:?}: a host has no port"));
        return;
    }
    if let Err(e) = validate_wildcard_domain(h) {
        r.err(p, e);
    } else if h.contains('*') && !h.starts_with("*.") {
        r.err(
            p,
            format!("{h:?}: a wildcard is allowed only as the first label (*.)"),
        );
    }
}

fn backend(b: &raw::IngressBackend, p: &FieldPath, r: &mut Report) {
    match (&b.service, &b.resource) {
        (Some(_), Some(_)) => r.err(p, "cannot set both service and resource backends"),
        (None, None) => r.err(p, "one backend (service or resource) must be specified"),
        (None, Some(_)) => r.warn(
            &p.key("resource"),
            "resource backends are not routable by wasmgate; requests for this path get 404",
        ),
        (Some(svc), None) => {
            let sp = p.key("service");
            if svc.name.is_empty() {
                r.err(&sp.key("name"), "Required value");
            }
            match &svc.port {
                None => r.err(
                    &sp.key("port"),
                    "Required value: port name or number is required",
                ),
                Some(port) => match (port.name.is_empty(), port.number) {
                    (false, n) if n > 0 => {
                        r.err(&sp.key("port"), "cannot set both port name and port number")
                    }
                    (true, 0) => r.err(
                        &sp.key("port"),
                        "Required value: port name or number is required",
                    ),
                    (true, n) if n > 65535 => r.err(
                        &sp.key("port").key("number"),
                        format!("{n}: must be between 1 and 65535, inclusive"),
                    ),
                    _ => {}
                },
            }
        }
    }
}
