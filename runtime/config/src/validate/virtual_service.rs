//! VirtualService rules (Istio's `ValidateVirtualService` and `validateHTTPRoute`): hosts,
//! gateways, HTTP/TLS/TCP routes with their matches, destinations, weights, faults,
//! redirects, rewrites, retries, mirrors, CORS and header operations; builds
//! [`model::VirtualService`].

use super::{
    MatchUse, Report, istio_duration, opt_istio_duration, validate_export_to,
    validate_gateway_names, validate_headers, validate_labels, validate_match_header_name,
    validate_percentage, validate_port, validate_regex, validate_string_match,
};
use crate::host::{
    expand_host, host_within, hosts_overlap, is_dns_label, is_ip, validate_ip_subnet,
    validate_wildcard_domain,
};
use crate::model::{self, GatewayRef};
use crate::raw;
use crate::yaml::FieldPath;

pub(crate) const MESH: &str = "mesh";

pub(crate) fn validate(
    meta: &model::Meta,
    spec: &raw::VirtualServiceSpec,
    r: &mut Report,
) -> model::VirtualService {
    let p = FieldPath::root("spec");
    let ns = &meta.id.namespace;
    let delegate = spec.hosts.is_empty();
    if delegate {
        if !spec.gateways.is_empty() {
            r.err(
                &p.key("gateways"),
                "delegate virtual service must have no gateways specified",
            );
        }
        if !spec.tls.is_empty() {
            r.err(
                &p.key("tls"),
                "delegate virtual service must have no tls route specified",
            );
        }
        if !spec.tcp.is_empty() {
            r.err(
                &p.key("tcp"),
                "delegate virtual service must have no tcp route specified",
            );
        }
    }
    validate_gateway_names(r, &p.key("gateways"), &spec.gateways);
    let applies_to_gateway = !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == MESH);
    let applies_to_mesh = !applies_to_gateway;

    if !applies_to_gateway {
        for (i, route) in spec.http.iter().enumerate() {
            for (j, m) in route.match_.iter().enumerate() {
                for (field, map) in [
                    ("headers", &m.headers),
                    ("withoutHeaders", &m.without_headers),
                ] {
                    for key in map.keys().filter(|k| k.starts_with("@request.auth.claims")) {
                        r.err(
                            &p.key("http")
                                .index(i)
                                .key("match")
                                .index(j)
                                .key(field)
                                .key(key),
                            "JWT claim based routing is only supported for gateways",
                        );
                    }
                }
            }
        }
    }

    let is_sni = spec
        .tls
        .iter()
        .any(|t| t.match_.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_hosts_valid = true;
    for (i, h) in spec.hosts.iter().enumerate() {
        let hp = p.key("hosts").index(i);
        let res = if applies_to_gateway {
            validate_gateway_bound_domain(is_sni, h)
        } else {
            validate_wildcard_domain(h)
        };
        match res {
            Err(e) if !is_ip(h) => {
                r.err(&hp, e);
                all_hosts_valid = false;
            }
            Ok(()) if applies_to_mesh && h == "*" => {
                r.err(
                    &hp,
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                );
                all_hosts_valid = false;
            }
            _ => {}
        }
    }
    if all_hosts_valid {
        for i in 0..spec.hosts.len() {
            for j in i + 1..spec.hosts.len() {
                let (a, b) = (&spec.hosts[i], &spec.hosts[j]);
                if hosts_overlap(a, b) {
                    r.err(
                        &p.key("hosts").index(j),
                        format!("duplicate hosts in virtual service: {a} & {b}"),
                    );
                }
            }
        }
    }
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        r.err(&p, "http, tcp or tls must be provided in virtual service");
    }
    for (i, route) in spec.http.iter().enumerate() {
        validate_http_route(route, delegate, &p.key("http").index(i), r);
    }
    for (i, route) in spec.tls.iter().enumerate() {
        validate_tls_route(route, spec, applies_to_gateway, &p.key("tls").index(i), r);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        validate_tcp_route(route, &p.key("tcp").index(i), r);
    }
    validate_export_to(r, &p.key("exportTo"), ns, &spec.export_to, false, false);
    // Unreachable rules and matches (Istio's warnings) are IST0130/IST0131 findings of
    // `crate::analyze`.

    let mut gateways = Vec::new();
    let mut binds_mesh = spec.gateways.is_empty();
    for g in &spec.gateways {
        if g == MESH {
            binds_mesh = true;
        } else {
            gateways.push(gateway_ref(g, ns));
        }
    }
    model::VirtualService {
        meta: meta.clone(),
        hosts: spec.hosts.iter().map(|h| expand_host(h, ns)).collect(),
        gateways,
        binds_mesh,
        http: spec.http.clone(),
        spec: spec.clone(),
    }
}

/// Resolves a gateway reference: `ns/name`, `name` (the VirtualService's namespace) or
/// the legacy `name.ns[.svc.cluster.local]`.
pub fn gateway_ref(g: &str, ns: &str) -> GatewayRef {
    if let Some((gns, name)) = g.split_once('/') {
        let gns = if gns == "." { ns } else { gns };
        return GatewayRef {
            namespace: gns.to_string(),
            name: name.to_string(),
        };
    }
    let mut parts = g.split('.');
    let name = parts.next().unwrap_or(g).to_string();
    let namespace = parts.next().unwrap_or(ns).to_string();
    GatewayRef { namespace, name }
}

/// Like [`validate_wildcard_domain`], but SNI hosts may also be Istio's auto-generated
/// `outbound_.<port>_._.<host>` names.
fn validate_gateway_bound_domain(sni: bool, domain: &str) -> Result<(), String> {
    if sni && domain.starts_with("outbound_") {
        let parts: Vec<&str> = domain.split('_').collect();
        let ok = parts.len() >= 4
            && parts[0] == "outbound"
            && parts[1]
                .trim_matches('.')
                .bytes()
                .any(|b| b.is_ascii_digit())
            && parts[3]
                .trim_matches('.')
                .bytes()
                .any(|b| b.is_ascii_alphabetic());
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "domain name {domain:?} invalid, should follow 'outbound_.<PORT>_._.<HOSTNAME>' format"
            ))
        };
    }
    validate_wildcard_domain(domain)
}

fn validate_http_route(route: &raw::HTTPRoute, delegate_vs: bool, p: &FieldPath, r: &mut Report) {
    // Conflicts between the ways a route can end.
    if route.delegate.is_some() && !delegate_vs {
        if route.redirect.is_some() {
            r.err(
                &p.key("redirect"),
                format!("root HTTP route {} must not specify redirect", route.name),
            );
        }
        if !route.route.is_empty() {
            r.err(
                &p.key("route"),
                format!("root HTTP route {} must not specify route", route.name),
            );
        }
    } else {
        if delegate_vs && route.delegate.is_some() {
            r.err(
                &p.key("delegate"),
                "delegate HTTP route cannot contain delegate",
            );
        }
        if route.redirect.is_some() {
            if !route.route.is_empty() {
                r.err(p, "HTTP route cannot contain both route and redirect");
            }
            if route.fault.is_some() {
                r.err(p, "HTTP route cannot contain both fault and redirect");
            }
            if route.rewrite.is_some() {
                r.err(
                    p,
                    "HTTP route rule cannot contain both rewrite and redirect",
                );
            }
            if route.direct_response.is_some() {
                r.err(
                    p,
                    "HTTP route rule cannot contain both directResponse and redirect",
                );
            }
        } else if route.direct_response.is_some() {
            if !route.route.is_empty() {
                r.err(p, "HTTP route cannot contain both route and directResponse");
            }
            if route.fault.is_some() {
                r.err(p, "HTTP route cannot contain both fault and directResponse");
            }
            if route.rewrite.is_some() {
                r.err(
                    p,
                    "HTTP route rule cannot contain both rewrite and directResponse",
                );
            }
        } else if route.route.is_empty() {
            r.err(p, "HTTP route, redirect or directResponse is required");
        }
    }
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        r.err(p, "HTTP route cannot contain both mirror and mirrors");
    }
    if let Some(d) = &route.delegate {
        let dp = p.key("delegate");
        if d.name.is_empty() {
            r.err(&dp.key("name"), "delegate name is required");
        } else if !crate::host::is_k8s_subdomain(&d.name) {
            r.err(
                &dp.key("name"),
                format!("invalid delegate name {:?}", d.name),
            );
        }
        if !d.namespace.is_empty() && !crate::host::is_k8s_label(&d.namespace) {
            r.err(
                &dp.key("namespace"),
                format!("invalid delegate namespace {:?}", d.namespace),
            );
        }
    }

    for (i, m) in route.match_.iter().enumerate() {
        validate_http_match(m, &p.key("match").index(i), r);
    }
    if let Some(h) = &route.headers {
        validate_headers(r, &p.key("headers"), h);
    }
    if let Some(c) = &route.cors_policy {
        validate_cors(c, &p.key("corsPolicy"), r);
    }
    if let Some(f) = &route.fault {
        validate_fault(f, &p.key("fault"), r);
    }
    if let Some(v) = route.mirror_percent {
        if v > 100 {
            r.err(
                &p.key("mirrorPercent"),
                format!("mirrorPercent must have a max value of 100 (it has {v})"),
            );
        }
        r.warn(
            &p.key("mirrorPercent"),
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
        );
    }
    if let Some(m) = &route.mirror_percentage
        && !(0.0..=100.0).contains(&m.value)
    {
        r.err(
            &p.key("mirrorPercentage").key("value"),
            format!(
                "mirrorPercentage must be in range 0..=100 (it has {})",
                m.value
            ),
        );
    }
    if let Some(d) = &route.mirror {
        validate_destination(d, &p.key("mirror"), r);
    }
    for (i, m) in route.mirrors.iter().enumerate() {
        let mp = p.key("mirrors").index(i);
        match &m.destination {
            None => r.err(
                &mp.key("destination"),
                "destination is required for mirrors",
            ),
            Some(d) => validate_destination(d, &mp.key("destination"), r),
        }
        if let Some(pc) = &m.percentage
            && !(0.0..=100.0).contains(&pc.value)
        {
            r.err(
                &mp.key("percentage").key("value"),
                format!(
                    "mirror percentage must be in range 0..=100 (it has {})",
                    pc.value
                ),
            );
        }
    }
    if let Some(rd) = &route.redirect {
        validate_redirect(rd, &route.match_, &p.key("redirect"), r);
    }
    if let Some(dr) = &route.direct_response {
        validate_direct_response(dr, &p.key("directResponse"), r);
    }
    if let Some(rt) = &route.retries {
        validate_retries(rt, &p.key("retries"), r);
    }
    if let Some(rw) = &route.rewrite {
        validate_rewrite(rw, &p.key("rewrite"), r);
    }
    validate_authority_rewrite(route, p, r);
    validate_http_destinations(&route.route, &p.key("route"), r);
    opt_istio_duration(r, &p.key("timeout"), &route.timeout);
}

fn validate_http_match(m: &raw::HTTPMatchRequest, p: &FieldPath, r: &mut Report) {
    for (name, sm) in &m.headers {
        let hp = p.key("headers").key(name);
        validate_match_header_name(r, &hp, name);
        validate_string_match(r, &hp, sm, MatchUse::Value);
    }
    for (name, sm) in &m.without_headers {
        let hp = p.key("withoutHeaders").key(name);
        validate_match_header_name(r, &hp, name);
        // `regex: "*"` means "present" here, not a regular expression.
        if sm.regex.as_deref() != Some("*") {
            validate_string_match(r, &hp, sm, MatchUse::Value);
        }
    }
    if let Some(u) = &m.uri {
        validate_string_match(r, &p.key("uri"), u, MatchUse::Uri);
    }
    for (field, sm) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            validate_string_match(r, &p.key(field), sm, MatchUse::Value);
        }
    }
    for (name, sm) in &m.query_params {
        validate_string_match(r, &p.key("queryParams").key(name), sm, MatchUse::Value);
    }
    if m.port != 0 {
        r.check(&p.key("port"), validate_port(m.port));
    }
    validate_labels(r, &p.key("sourceLabels"), &m.source_labels);
    validate_gateway_names(r, &p.key("gateways"), &m.gateways);
    if !m.source_namespace.is_empty() && !is_dns_label(&m.source_namespace) {
        r.err(
            &p.key("sourceNamespace"),
            format!("sourceNamespace match {} is invalid", m.source_namespace),
        );
    }
}

const CORS_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

fn validate_cors(c: &raw::CorsPolicy, p: &FieldPath, r: &mut Report) {
    for (i, o) in c.allow_origins.iter().enumerate() {
        let op = p.key("allowOrigins").index(i);
        let value = o.exact.as_ref().or(o.prefix.as_ref()).or(o.regex.as_ref());
        if value.is_none_or(|v| v.is_empty()) {
            r.err(
                &op,
                "allowOrigins entries must set a non-empty exact, prefix or regex",
            );
        } else {
            validate_string_match(r, &op, o, MatchUse::Value);
        }
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&m.as_str()) {
            r.err(
                &p.key("allowMethods").index(i),
                format!("{m:?} is not a supported HTTP method"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            let ok = h == "*"
                || (!h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)));
            if !ok {
                r.err(
                    &p.key(field).index(i),
                    format!("header name {h:?} is not a valid header name"),
                );
            }
        }
    }
    if let Some(d) = opt_istio_duration(r, &p.key("maxAge"), &c.max_age)
        && d.subsec_nanos() != 0
    {
        r.err(
            &p.key("maxAge"),
            "maxAge duration is accurate only to seconds precision",
        );
    }
}

/// gRPC status names, in code order (the index is the numeric code).
pub const GRPC_STATUSES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The numeric code of a gRPC status name (`UNAVAILABLE` -> 14), case-insensitively.
pub fn grpc_status_code(name: &str) -> Option<usize> {
    GRPC_STATUSES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
}

fn validate_http_status(status: i64) -> Result<(), String> {
    if (200..=599).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP status {status} is not in range 200-599"))
    }
}

fn validate_fault(f: &raw::HTTPFaultInjection, p: &FieldPath, r: &mut Report) {
    if f.abort.is_none() && f.delay.is_none() {
        r.err(p, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(a) = &f.abort {
        let ap = p.key("abort");
        if let Some(pc) = &a.percentage {
            validate_percentage(r, &ap.key("percentage"), pc);
        }
        let kinds = [
            a.http_status.is_some(),
            a.grpc_status.is_some(),
            a.http2_error.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if kinds > 1 {
            r.err(
                &ap,
                "only one of httpStatus, grpcStatus or http2Error may be set",
            );
        } else if let Some(s) = a.http_status {
            r.check(&ap.key("httpStatus"), validate_http_status(i64::from(s)));
        } else if let Some(g) = &a.grpc_status {
            if !GRPC_STATUSES.contains(&g.as_str()) {
                r.err(
                    &ap.key("grpcStatus"),
                    format!("gRPC status {g:?} is not supported; use a name such as NOT_FOUND"),
                );
            }
        } else if a.http2_error.is_some() {
            r.err(
                &ap.key("http2Error"),
                "HTTP/2 abort fault injection not supported yet",
            );
        } else {
            r.warn(
                &ap,
                "abort configured, but error type not set; it has no effect",
            );
        }
    }
    if let Some(d) = &f.delay {
        let dp = p.key("delay");
        if let Some(pc) = &d.percentage {
            validate_percentage(r, &dp.key("percentage"), pc);
        }
        if !(0..=100).contains(&d.percent) {
            r.err(
                &dp.key("percent"),
                format!("percentage {} is not in range 0..100", d.percent),
            );
        }
        match (&d.fixed_delay, &d.exponential_delay) {
            (Some(_), Some(_)) => {
                r.err(&dp, "only one of fixedDelay or exponentialDelay may be set")
            }
            (Some(fd), None) => {
                istio_duration(r, &dp.key("fixedDelay"), fd);
            }
            (None, Some(ed)) => {
                istio_duration(r, &dp.key("exponentialDelay"), ed);
                r.err(
                    &dp.key("exponentialDelay"),
                    "exponentialDelay not supported yet",
                );
            }
            (None, None) => r.warn(&dp, "delay has no fixedDelay; it has no effect"),
        }
    }
}

fn validate_destination(d: &raw::Destination, p: &FieldPath, r: &mut Report) {
    if d.host.is_empty() {
        r.err(&p.key("host"), "host is required");
    } else if d.host == "*" {
        r.err(
            &p.key("host"),
            format!("invalid destination host {}", d.host),
        );
    } else {
        r.check(&p.key("host"), validate_wildcard_domain(&d.host));
    }
    if !d.subset.is_empty() && !is_dns_label(&d.subset) {
        r.err(
            &p.key("subset"),
            format!("subset name is invalid: {}", d.subset),
        );
    }
    if let Some(port) = &d.port {
        r.check(
            &p.key("port").key("number"),
            validate_port(port.number.unwrap_or(0)),
        );
    }
}

/// Weights are relative: each must be non-negative, and with several destinations at
/// least one must be positive (Istio >= 1.13 dropped the sum-to-100 rule).
fn validate_http_destinations(dests: &[raw::HTTPRouteDestination], p: &FieldPath, r: &mut Report) {
    let mut total: i64 = 0;
    for (i, d) in dests.iter().enumerate() {
        let dp = p.index(i);
        match &d.destination {
            None => r.err(&dp.key("destination"), "destination is required"),
            Some(dest) => validate_destination(dest, &dp.key("destination"), r),
        }
        if let Some(h) = &d.headers {
            validate_headers(r, &dp.key("headers"), h);
        }
        if d.weight < 0 {
            r.err(
                &dp.key("weight"),
                format!("weight {} must not be negative", d.weight),
            );
        }
        total += i64::from(d.weight);
    }
    if dests.len() > 1 && total == 0 {
        r.err(
            p,
            "total destination weight = 0; at least one weight must be positive",
        );
    }
}

fn validate_route_destinations(dests: &[raw::RouteDestination], p: &FieldPath, r: &mut Report) {
    let mut total: i64 = 0;
    for (i, d) in dests.iter().enumerate() {
        let dp = p.index(i);
        match &d.destination {
            None => r.err(&dp.key("destination"), "destination is required"),
            Some(dest) => validate_destination(dest, &dp.key("destination"), r),
        }
        if d.weight < 0 {
            r.err(
                &dp.key("weight"),
                format!("weight {} must not be negative", d.weight),
            );
        }
        total += i64::from(d.weight);
    }
    if dests.len() > 1 && total == 0 {
        r.err(
            p,
            "total destination weight = 0; at least one weight must be positive",
        );
    }
}

fn validate_redirect(
    rd: &raw::HTTPRedirect,
    matches: &[raw::HTTPMatchRequest],
    p: &FieldPath,
    r: &mut Report,
) {
    if !rd.uri.is_empty() && !rd.prefix_rewrite.is_empty() {
        r.err(p, "redirect may only specify one of uri or prefixRewrite");
    }
    if !rd.prefix_rewrite.is_empty()
        && matches
            .iter()
            .any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none()))
    {
        r.err(
            &p.key("prefixRewrite"),
            "redirect prefixRewrite requires all URI matches to use prefix match type",
        );
    }
    if rd.port.is_some() && rd.derive_port.is_some() {
        r.err(p, "only one of port or derivePort may be set");
    }
    if rd.uri.is_empty()
        && rd.prefix_rewrite.is_empty()
        && rd.authority.is_empty()
        && rd.port.is_none()
        && rd.derive_port.is_none()
        && rd.scheme.is_empty()
    {
        r.err(p, "redirect must specify URI, authority, scheme, or port");
    }
    if rd.redirect_code != 0 && !(300..=399).contains(&rd.redirect_code) {
        r.err(
            &p.key("redirectCode"),
            format!(
                "{} is not a valid redirect code, must be 3xx",
                rd.redirect_code
            ),
        );
    }
    if !rd.scheme.is_empty() && rd.scheme != "http" && rd.scheme != "https" {
        r.err(
            &p.key("scheme"),
            "invalid redirect scheme, must be \"http\" or \"https\"",
        );
    }
    if let Some(port) = rd.port
        && port > 0
    {
        r.check(&p.key("port"), validate_port(port));
    }
}

fn validate_direct_response(dr: &raw::HTTPDirectResponse, p: &FieldPath, r: &mut Report) {
    if let Some(body) = &dr.body {
        let bp = p.key("body");
        let size = match (&body.string, &body.bytes) {
            (Some(_), Some(_)) => {
                r.err(&bp, "only one of string or bytes may be set");
                0
            }
            (Some(s), None) => s.len(),
            (None, Some(b)) => match raw::decode_base64(b) {
                Some(bytes) => bytes.len(),
                None => {
                    r.err(&bp.key("bytes"), "bytes must be base64");
                    0
                }
            },
            (None, None) => 0,
        };
        if size > 1024 * 1024 {
            r.err(&bp, "large direct_responses may impact control plane performance, must be less than 1MB");
        } else if size > 100 * 1024 {
            r.warn(
                &bp,
                "large direct_responses may impact control plane performance",
            );
        }
    }
    r.check(&p.key("status"), validate_http_status(i64::from(dr.status)));
}

const RETRY_ON: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Status codes Go's `net/http` names (Istio accepts these in `retryOn`).
fn is_known_status(code: u16) -> bool {
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429
        | 431 | 451 | 500..=508 | 510 | 511)
}

fn validate_retries(rt: &raw::HTTPRetry, p: &FieldPath, r: &mut Report) {
    if rt.attempts < 0 {
        r.err(&p.key("attempts"), "attempts cannot be negative");
    }
    if rt.attempts == 0
        && (rt.per_try_timeout.is_some()
            || !rt.retry_on.is_empty()
            || rt.retry_remote_localities.is_some())
    {
        r.err(
            p,
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    opt_istio_duration(r, &p.key("perTryTimeout"), &rt.per_try_timeout);
    if !rt.retry_on.is_empty() {
        for policy in rt.retry_on.split(',') {
            let known =
                RETRY_ON.contains(&policy) || policy.parse::<u16>().is_ok_and(is_known_status);
            if !known {
                r.err(
                    &p.key("retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
    opt_istio_duration(r, &p.key("backoff"), &rt.backoff);
}

fn validate_rewrite(rw: &raw::HTTPRewrite, p: &FieldPath, r: &mut Report) {
    if !rw.uri.is_empty() && rw.uri_regex_rewrite.is_some() {
        r.err(p, "rewrite may only contain one of uri or uriRegexRewrite");
    }
    if rw.uri.is_empty() && rw.uri_regex_rewrite.is_none() && rw.authority.is_empty() {
        r.err(
            p,
            "rewrite must specify at least one of uri, uriRegexRewrite, or authority",
        );
    }
    if let Some(rr) = &rw.uri_regex_rewrite {
        let rp = p.key("uriRegexRewrite");
        if rr.match_.is_empty() || rr.rewrite.is_empty() {
            r.err(
                &rp,
                "uriRegexRewrite requires both rewrite and match fields to be specified",
            );
        } else {
            validate_regex(r, &rp.key("match"), &rr.match_);
        }
    }
}

fn validate_authority_rewrite(route: &raw::HTTPRoute, p: &FieldPath, r: &mut Report) {
    let mut current = route
        .rewrite
        .as_ref()
        .map(|rw| rw.authority.clone())
        .unwrap_or_default();
    let Some(req) = route.headers.as_ref().and_then(|h| h.request.as_ref()) else {
        return;
    };
    for (op, map) in [("set", &req.set), ("add", &req.add)] {
        for (k, v) in map {
            if !(k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host")) {
                continue;
            }
            if !current.is_empty() {
                r.err(
                    &p.key("headers").key("request").key(op).key(k),
                    format!("authority header cannot be set multiple times: have {current:?}, attempting to set {v:?}"),
                );
                return;
            }
            current = v.clone();
        }
    }
}

fn validate_tls_route(
    route: &raw::TLSRoute,
    vs: &raw::VirtualServiceSpec,
    applies_to_gateway: bool,
    p: &FieldPath,
    r: &mut Report,
) {
    if route.match_.is_empty() {
        r.err(
            &p.key("match"),
            "TLS route must have at least one match condition",
        );
    }
    for (i, m) in route.match_.iter().enumerate() {
        let mp = p.key("match").index(i);
        if m.sni_hosts.is_empty() {
            r.err(
                &mp.key("sniHosts"),
                "TLS match must have at least one SNI host",
            );
        }
        for (j, sni) in m.sni_hosts.iter().enumerate() {
            let sp = mp.key("sniHosts").index(j);
            let res = if applies_to_gateway {
                validate_gateway_bound_domain(true, sni)
            } else {
                validate_wildcard_domain(sni)
            };
            if let Err(e) = res {
                if is_ip(sni) {
                    r.warn(&sp, format!("using an IP address ({sni:?}) goes against SNI spec and most clients do not support this"));
                } else {
                    r.err(&sp, e);
                }
                continue;
            }
            if !vs.hosts.iter().any(|h| host_within(sni, h)) {
                r.err(
                    &sp,
                    format!(
                        "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                        vs.hosts.join(", ")
                    ),
                );
            }
        }
        validate_l4_match(
            r,
            &mp,
            &m.destination_subnets,
            m.port,
            &m.source_labels,
            &m.gateways,
        );
    }
    if route.route.is_empty() {
        r.err(&p.key("route"), "TLS route is required");
    }
    validate_route_destinations(&route.route, &p.key("route"), r);
}

fn validate_tcp_route(route: &raw::TCPRoute, p: &FieldPath, r: &mut Report) {
    for (i, m) in route.match_.iter().enumerate() {
        let mp = p.key("match").index(i);
        validate_l4_match(
            r,
            &mp,
            &m.destination_subnets,
            m.port,
            &m.source_labels,
            &m.gateways,
        );
    }
    if route.route.is_empty() {
        r.err(&p.key("route"), "TCP route is required");
    }
    validate_route_destinations(&route.route, &p.key("route"), r);
}

/// The match fields TLS and TCP routes share.
fn validate_l4_match(
    r: &mut Report,
    mp: &FieldPath,
    destination_subnets: &[String],
    port: u32,
    source_labels: &std::collections::BTreeMap<String, String>,
    gateways: &[String],
) {
    for (j, s) in destination_subnets.iter().enumerate() {
        r.check(
            &mp.key("destinationSubnets").index(j),
            validate_ip_subnet(s),
        );
    }
    if port != 0 {
        r.check(&mp.key("port"), validate_port(port));
    }
    validate_labels(r, &mp.key("sourceLabels"), source_labels);
    validate_gateway_names(r, &mp.key("gateways"), gateways);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_refs() {
        let g = |s: &str| gateway_ref(s, "default");
        assert_eq!(
            g("gw"),
            GatewayRef {
                namespace: "default".into(),
                name: "gw".into()
            }
        );
        assert_eq!(
            g("istio-system/gw"),
            GatewayRef {
                namespace: "istio-system".into(),
                name: "gw".into()
            }
        );
        assert_eq!(
            g("gw.prod.svc.cluster.local"),
            GatewayRef {
                namespace: "prod".into(),
                name: "gw".into()
            }
        );
    }

    #[test]
    fn retry_on_codes() {
        assert!(is_known_status(503));
        assert!(!is_known_status(599));
        assert!(!is_known_status(306));
    }
}
