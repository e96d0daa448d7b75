//! DestinationRule rules (Istio's `ValidateDestinationRule`): host, subsets, and traffic
//! policies (load balancer, warmup, locality, connection pool, outlier detection, client
//! TLS, port-level settings, tunnel); builds [`model::DestinationRule`]. Client
//! certificates and CAs are read later, once every Secret is known
//! (`crate::credentials`).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Report, duration, istio_duration, opt_istio_duration, validate_export_to, validate_labels,
    validate_port, validate_workload_selector,
};
use crate::host::{expand_host, is_dns_label, is_ip, validate_fqdn, validate_wildcard_domain};
use crate::model::{self, ClientTls, LoadBalancer};
use crate::raw::{self, ClientTLSMode, H2UpgradePolicy, SimpleLB};
use crate::yaml::FieldPath;

pub(crate) fn validate(
    meta: &model::Meta,
    spec: &raw::DestinationRuleSpec,
    r: &mut Report,
) -> model::DestinationRule {
    let p = FieldPath::root("spec");
    let ns = &meta.id.namespace;
    if spec.host.is_empty() {
        r.err(&p.key("host"), "host is required");
    } else {
        r.check(&p.key("host"), validate_wildcard_domain(&spec.host));
    }
    let policy = match &spec.traffic_policy {
        Some(tp) => validate_traffic_policy(tp, &p.key("trafficPolicy"), r),
        None => Policy::default(),
    };
    let load_balancer = policy.load_balancer;
    let mut names = BTreeSet::new();
    let mut subsets = Vec::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let sp = p.key("subsets").index(i);
        if !names.insert(s.name.as_str()) {
            r.err(
                &sp.key("name"),
                format!("duplicate subset names: {}", s.name),
            );
        }
        if s.name.is_empty() {
            r.err(&sp.key("name"), "subset name cannot be empty");
        } else if !is_dns_label(&s.name) {
            r.err(
                &sp.key("name"),
                format!("subset name is invalid: {}", s.name),
            );
        }
        validate_labels(r, &sp.key("labels"), &s.labels);
        let own = match &s.traffic_policy {
            Some(tp) => {
                let own = validate_traffic_policy(tp, &sp.key("trafficPolicy"), r);
                if tp.load_balancer.is_some() {
                    own
                } else {
                    Policy {
                        load_balancer,
                        ..own
                    }
                }
            }
            None => Policy {
                load_balancer,
                ..Policy::default()
            },
        };
        subsets.push(model::Subset {
            name: s.name.clone(),
            labels: s.labels.clone(),
            load_balancer: own.load_balancer,
            tls: own.tls,
            port_tls: own.port_tls,
        });
    }
    validate_export_to(
        r,
        &p.key("exportTo"),
        ns,
        &spec.export_to,
        false,
        spec.workload_selector.is_some(),
    );
    if let Some(ws) = &spec.workload_selector {
        validate_workload_selector(r, &p.key("workloadSelector"), ws);
    }
    model::DestinationRule {
        meta: meta.clone(),
        host: expand_host(&spec.host, ns),
        load_balancer,
        tls: policy.tls,
        port_tls: policy.port_tls,
        subsets,
        spec: spec.clone(),
    }
}

/// What one traffic policy contributes to the model.
#[derive(Debug, Default)]
struct Policy {
    load_balancer: LoadBalancer,
    tls: Option<ClientTls>,
    port_tls: BTreeMap<u16, ClientTls>,
}

/// The port-level TLS settings that take effect, as `(index in portLevelSettings, port,
/// settings)`: Istio uses the first entry for a port, so a later one for the same port
/// is ignored even when the first has no `tls`.
pub(crate) fn port_tls_settings(
    tp: &raw::TrafficPolicy,
) -> Vec<(usize, u16, &raw::ClientTLSSettings)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let Some(port) = pl
            .port
            .and_then(|p| p.number)
            .and_then(|n| u16::try_from(n).ok())
        else {
            continue;
        };
        if port == 0 || !seen.insert(port) {
            continue;
        }
        if let Some(t) = &pl.tls {
            out.push((i, port, t));
        }
    }
    out
}

/// Validates a traffic policy; returns its load balancer and TLS settings.
fn validate_traffic_policy(tp: &raw::TrafficPolicy, p: &FieldPath, r: &mut Report) -> Policy {
    if tp.outlier_detection.is_none()
        && tp.connection_pool.is_none()
        && tp.load_balancer.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        r.err(p, "traffic policy must have at least one field");
        return Policy::default();
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        r.err(p, "tunnel and proxyProtocol must not be set together");
    }
    if let Some(o) = &tp.outlier_detection {
        validate_outlier(o, &p.key("outlierDetection"), r);
    }
    if let Some(c) = &tp.connection_pool {
        validate_connection_pool(c, &p.key("connectionPool"), r);
    }
    let lb = match &tp.load_balancer {
        Some(lb) => validate_load_balancer(
            lb,
            tp.outlier_detection.is_some(),
            &p.key("loadBalancer"),
            r,
        ),
        None => LoadBalancer::default(),
    };
    if let Some(t) = &tp.tls {
        validate_client_tls(t, &p.key("tls"), r);
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = p.key("portLevelSettings").index(i);
        match &pl.port {
            None => r.err(&pp.key("port"), "portTrafficPolicy must have valid port"),
            Some(port) => r.check(
                &pp.key("port").key("number"),
                validate_port(port.number.unwrap_or(0)),
            ),
        }
        if pl.outlier_detection.is_none()
            && pl.connection_pool.is_none()
            && pl.load_balancer.is_none()
            && pl.tls.is_none()
        {
            r.err(&pp, "port traffic policy must have at least one field");
            continue;
        }
        if let Some(o) = &pl.outlier_detection {
            validate_outlier(o, &pp.key("outlierDetection"), r);
        }
        if let Some(c) = &pl.connection_pool {
            validate_connection_pool(c, &pp.key("connectionPool"), r);
        }
        if let Some(lb) = &pl.load_balancer {
            validate_load_balancer(
                lb,
                pl.outlier_detection.is_some(),
                &pp.key("loadBalancer"),
                r,
            );
        }
        if let Some(t) = &pl.tls {
            validate_client_tls(t, &pp.key("tls"), r);
        }
    }
    if let Some(t) = &tp.tunnel {
        let tp_ = p.key("tunnel");
        if !t.protocol.is_empty() && t.protocol != "CONNECT" && t.protocol != "POST" {
            r.err(
                &tp_.key("protocol"),
                "tunnel protocol must be \"CONNECT\" or \"POST\"",
            );
        }
        if validate_fqdn(&t.target_host).is_err() && !is_ip(&t.target_host) {
            r.err(
                &tp_.key("targetHost"),
                "tunnel target host must be valid FQDN or IP address",
            );
        }
        if let Err(e) = validate_port(t.target_port) {
            r.err(
                &tp_.key("targetPort"),
                format!("tunnel target port is invalid: {e}"),
            );
        }
    }
    if let Some(b) = &tp.retry_budget {
        let bp = p.key("retryBudget");
        if let Some(pc) = b.percent
            && !(0.0..=100.0).contains(&pc)
        {
            r.err(
                &bp.key("percent"),
                format!("percent {pc} must be in range 0..=100"),
            );
        }
        if let Some(d) = &b.budget_interval {
            duration(r, &bp.key("budgetInterval"), d);
        }
    }
    Policy {
        load_balancer: lb,
        tls: tp.tls.as_ref().map(client_tls),
        port_tls: port_tls_settings(tp)
            .into_iter()
            .map(|(_, port, t)| (port, client_tls(t)))
            .collect(),
    }
}

const ISTIO_MUTUAL_CLIENT: &str =
    "ISTIO_MUTUAL needs Istio's mesh certificates; requests to this destination will fail with 503";

/// The model of a client TLS setting, without its certificates (read once every Secret
/// is loaded).
fn client_tls(t: &raw::ClientTLSSettings) -> ClientTls {
    let mode = match t.mode() {
        ClientTLSMode::Disable => return ClientTls::mode_only(model::ClientTlsMode::Disable),
        ClientTLSMode::IstioMutual => {
            return ClientTls::mode_only(model::ClientTlsMode::IstioMutual);
        }
        ClientTLSMode::Simple => model::ClientTlsMode::Simple,
        ClientTLSMode::Mutual => model::ClientTlsMode::Mutual,
    };
    ClientTls {
        mode,
        client_cert: None,
        ca: None,
        crl: None,
        sni: (!t.sni.is_empty()).then(|| t.sni.clone()),
        subject_alt_names: t.subject_alt_names.clone(),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
    }
}

fn validate_outlier(o: &raw::OutlierDetection, p: &FieldPath, r: &mut Report) {
    opt_istio_duration(r, &p.key("baseEjectionTime"), &o.base_ejection_time);
    opt_istio_duration(r, &p.key("interval"), &o.interval);
    if o.consecutive_errors != 0 {
        r.warn(
            &p.key("consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    if !o.split_external_local_origin_errors && o.consecutive_local_origin_failures.unwrap_or(0) > 0
    {
        r.err(
            &p.key("consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    for (field, v) in [
        ("maxEjectionPercent", o.max_ejection_percent),
        ("minHealthPercent", o.min_health_percent),
    ] {
        if !(0..=100).contains(&v) {
            r.err(
                &p.key(field),
                format!("percentage {v} is not in range 0..100"),
            );
        }
    }
    for (i, c) in o.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(c) {
            r.err(
                &p.key("outlierDetectionHttpErrorCodes").index(i),
                format!("{c} is not an HTTP status code (100-599)"),
            );
        }
    }
}

/// How a warning starts for a setting wasmgate accepts but does not carry out.
const NOT_APPLIED: &str = "accepted but not applied by wasmgate yet";

fn validate_connection_pool(c: &raw::ConnectionPoolSettings, p: &FieldPath, r: &mut Report) {
    if c.http.is_none() && c.tcp.is_none() {
        r.err(p, "connection pool must have at least one field");
        return;
    }
    if let Some(h) = &c.http {
        let hp = p.key("http");
        for (field, v) in [
            ("http1MaxPendingRequests", h.http1_max_pending_requests),
            ("http2MaxRequests", h.http2_max_requests),
            ("maxRequestsPerConnection", h.max_requests_per_connection),
            ("maxRetries", h.max_retries),
            ("maxConcurrentStreams", h.max_concurrent_streams),
        ] {
            if v < 0 {
                r.err(&hp.key(field), format!("{field} must be non-negative"));
            }
        }
        opt_istio_duration(r, &hp.key("idleTimeout"), &h.idle_timeout);
        if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && h.use_client_protocol {
            r.err(
                &hp.key("useClientProtocol"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(ka) = &h.http2_keep_alive {
            let kp = hp.key("http2KeepAlive");
            match &ka.interval {
                None => r.err(&kp.key("interval"), "http2 keepalive interval is required"),
                Some(d) => {
                    istio_duration(r, &kp.key("interval"), d);
                }
            }
            match &ka.timeout {
                None => r.err(&kp.key("timeout"), "http2 keepalive timeout is required"),
                Some(d) => {
                    istio_duration(r, &kp.key("timeout"), d);
                }
            }
        }
    }
    if let Some(t) = &c.tcp {
        let tp = p.key("tcp");
        if t.max_connections < 0 {
            r.err(
                &tp.key("maxConnections"),
                "max connections must be non-negative",
            );
        }
        opt_istio_duration(r, &tp.key("connectTimeout"), &t.connect_timeout);
        opt_istio_duration(
            r,
            &tp.key("maxConnectionDuration"),
            &t.max_connection_duration,
        );
        if let Some(idle) = &t.idle_timeout {
            // 0s turns the idle timeout off.
            if let Some(d) = duration(r, &tp.key("idleTimeout"), idle)
                && d.as_millis() != 0
            {
                istio_duration(r, &tp.key("idleTimeout"), idle);
            }
        }
        if let Some(ka) = &t.tcp_keepalive {
            opt_istio_duration(r, &tp.key("tcpKeepalive").key("time"), &ka.time);
            opt_istio_duration(r, &tp.key("tcpKeepalive").key("interval"), &ka.interval);
        }
    }
}

const TOPOLOGY_LABELS: [&str; 3] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

fn is_prime(x: u64) -> bool {
    if x < 2 {
        return false;
    }
    if x < 4 {
        return true;
    }
    if x.is_multiple_of(2) {
        return false;
    }
    let mut f = 3;
    while f * f <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

fn validate_load_balancer(
    lb: &raw::LoadBalancerSettings,
    has_outlier: bool,
    p: &FieldPath,
    r: &mut Report,
) -> LoadBalancer {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        r.err(p, "only one of simple or consistentHash may be set");
    }
    let mut chosen = match lb.simple {
        None | Some(SimpleLB::Unspecified) | Some(SimpleLB::RoundRobin) => LoadBalancer::RoundRobin,
        Some(SimpleLB::LeastConn) | Some(SimpleLB::LeastRequest) => LoadBalancer::LeastRequest,
        Some(SimpleLB::Random) => LoadBalancer::Random,
        Some(SimpleLB::Passthrough) => LoadBalancer::Passthrough,
    };
    if let Some(ch) = &lb.consistent_hash {
        let cp = p.key("consistentHash");
        chosen = LoadBalancer::RoundRobin;
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip.is_some(),
            ch.http_query_parameter_name.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if keys > 1 {
            r.err(&cp, "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set");
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            r.err(&cp, "only one of ringHash or maglev may be set");
        }
        if let Some(c) = &ch.http_cookie {
            let hp = cp.key("httpCookie");
            if c.name.is_empty() {
                r.err(&hp.key("name"), "name required for HttpCookie");
            }
            let mut names = BTreeSet::new();
            for (i, a) in c.attributes.iter().enumerate() {
                let ap = hp.key("attributes").index(i);
                if a.name.is_empty() {
                    r.err(&ap.key("name"), "cookie attribute name cannot be empty");
                } else if !names.insert(a.name.as_str()) {
                    r.err(
                        &ap.key("name"),
                        format!("duplicate cookie attribute name: {}", a.name),
                    );
                }
            }
            if let Some(ttl) = &c.ttl {
                duration(r, &hp.key("ttl"), ttl);
            }
        }
        if ch.minimum_ring_size != 0 {
            r.warn(
                &cp.key("minimumRingSize"),
                "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
            );
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                r.err(
                    &cp,
                    "only one of MinimumRingSize or Maglev/Ringhash can be specified",
                );
            }
        }
        if let Some(m) = &ch.maglev {
            let tp = cp.key("maglev").key("tableSize");
            if m.table_size == 0 {
                r.err(&tp, "tableSize must be set for maglev");
            } else if m.table_size >= 5_000_011 {
                r.err(&tp, "tableSize must be less than 5000011 for maglev");
            } else if !is_prime(m.table_size) {
                r.err(&tp, "tableSize must be a prime number for maglev");
            }
        }
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        r.err(
            p,
            "only one of localityLbSetting and zoneAwareLbSetting can be set",
        );
    }
    if let Some(l) = &lb.locality_lb_setting {
        validate_locality(l, has_outlier, &p.key("localityLbSetting"), r);
    }
    if let Some(z) = &lb.zone_aware_lb_setting {
        let zp = p.key("zoneAwareLbSetting");
        r.warn(
            &zp,
            format!("{NOT_APPLIED}: use localityLbSetting (with --locality) for locality-aware balancing"),
        );
        for (i, label) in z.failover_priority.iter().enumerate() {
            if TOPOLOGY_LABELS.contains(&label.as_str()) {
                r.err(
                    &zp.key("failoverPriority").index(i),
                    format!("'failover_priority' for zone aware lb must not use topology label '{label}'; region- and zone-level routing are handled automatically"),
                );
            }
        }
        if (!z.failover.is_empty() || !z.failover_priority.is_empty()) && !has_outlier {
            r.warn(
                &zp,
                "outlier detection policy must be provided for failover",
            );
        }
        for (i, f) in z.failover.iter().enumerate() {
            validate_failover(f, "zone aware lb", &zp.key("failover").index(i), r);
        }
        if z.min_cluster_size == Some(0) {
            r.err(
                &zp.key("minClusterSize"),
                "minClusterSize must be at least 1",
            );
        }
    }
    if (lb.warmup.is_some() || lb.warmup_duration_secs.is_some())
        && !crate::model::traffic::warms_up(lb)
    {
        r.warn(
            p,
            format!("{NOT_APPLIED}: warmup applies to ROUND_ROBIN and LEAST_REQUEST only (Envoy's slow start); new endpoints get their full share at once"),
        );
    }
    if lb.warmup.is_some() && lb.warmup_duration_secs.is_some() {
        r.err(p, "only one of warmupDurationSecs or warmup can be set");
    }
    opt_istio_duration(r, &p.key("warmupDurationSecs"), &lb.warmup_duration_secs);
    if let Some(w) = &lb.warmup {
        let wp = p.key("warmup");
        match &w.duration {
            None => r.err(&wp.key("duration"), "duration is required"),
            Some(d) => {
                istio_duration(r, &wp.key("duration"), d);
            }
        }
        if let Some(mp) = w.minimum_percent
            && !(0.0..=100.0).contains(&mp)
        {
            r.err(
                &wp.key("minimumPercent"),
                format!("minimumPercent {mp} must be in range 0..=100"),
            );
        }
        if let Some(a) = w.aggression
            && (a.is_nan() || a <= 0.0)
        {
            r.err(
                &wp.key("aggression"),
                format!("aggression {a} should be greater than 0"),
            );
        }
    }
    chosen
}

fn validate_failover(f: &raw::LocalityFailover, what: &str, p: &FieldPath, r: &mut Report) {
    if f.from == f.to {
        r.err(
            p,
            format!("{what} failover settings must specify different regions"),
        );
    }
    if f.from.contains('/') || f.to.contains('/') {
        r.err(p, format!("{what} failover only specify region"));
    }
    if f.from.contains('*') || f.to.contains('*') {
        r.err(
            p,
            format!("{what} failover region should not contain '*' wildcard"),
        );
    }
}

fn validate_locality(
    l: &raw::LocalityLoadBalancerSetting,
    has_outlier: bool,
    p: &FieldPath,
    r: &mut Report,
) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        r.err(
            p,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
        return;
    }
    if !l.failover.is_empty()
        && let Some(label) = l
            .failover_priority
            .iter()
            .find(|x| TOPOLOGY_LABELS.contains(&x.as_str()))
    {
        r.err(
                &p.key("failoverPriority"),
                format!("can not simultaneously set 'failover' and topology label '{label}' in 'failover_priority'"),
            );
        return;
    }
    let mut sources = Vec::new();
    for (i, d) in l.distribute.iter().enumerate() {
        let dp = p.key("distribute").index(i);
        sources.push(d.from.clone());
        if d.to.values().any(|w| *w == 0 || *w > 100) {
            r.err(&dp.key("to"), "locality weight must be in range [1, 100]");
            return;
        }
        let total: u32 = d.to.values().sum();
        if total != 100 {
            r.err(
                &dp.key("to"),
                format!("total locality weight {total} != 100"),
            );
            return;
        }
        let dests: Vec<String> = d.to.keys().cloned().collect();
        r.check(&dp.key("to"), validate_localities(&dests));
    }
    r.check(&p.key("distribute"), validate_localities(&sources));
    if (!l.failover.is_empty() || !l.failover_priority.is_empty()) && !has_outlier {
        r.warn(p, "outlier detection policy must be provided for failover");
    }
    for (i, f) in l.failover.iter().enumerate() {
        validate_failover(f, "locality lb", &p.key("failover").index(i), r);
    }
}

/// Localities are `region[/zone[/subzone]]`, a trailing `*` allowed, without overlaps.
fn validate_localities(localities: &[String]) -> Result<(), String> {
    let mut seen: Vec<Vec<&str>> = Vec::new();
    for loc in localities {
        let stars = loc.matches('*').count();
        if stars > 1 || (stars == 1 && !loc.ends_with('*')) {
            return Err(format!(
                "locality {loc} wildcard '*' number can not exceed 1 and must be in the end"
            ));
        }
        let parts: Vec<&str> = loc.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "locality {loc} must not contain empty region/zone/subzone info"
            ));
        }
        // Two localities overlap when one is a prefix of the other (with `*` as "any").
        let overlaps = seen.iter().any(|other| {
            let n = parts.len().min(other.len());
            (0..n).all(|i| parts[i] == other[i] || parts[i] == "*" || other[i] == "*")
        });
        if overlaps {
            return Err(format!(
                "locality {loc} overlap with previous specified ones"
            ));
        }
        seen.push(parts);
    }
    Ok(())
}

fn validate_client_tls(t: &raw::ClientTLSSettings, p: &FieldPath, r: &mut Report) {
    let mode = t.mode();
    if mode == ClientTLSMode::IstioMutual {
        r.warn(&p.key("mode"), ISTIO_MUTUAL_CLIENT);
    }
    if t.insecure_skip_verify == Some(true) {
        if mode == ClientTLSMode::Simple
            && (!t.ca_certificates.is_empty()
                || !t.credential_name.is_empty()
                || !t.subject_alt_names.is_empty())
        {
            r.err(p, "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true");
        }
        if mode == ClientTLSMode::Mutual
            && (!t.ca_certificates.is_empty() || !t.subject_alt_names.is_empty())
        {
            r.err(p, "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true");
        }
    }
    if matches!(mode, ClientTLSMode::Simple | ClientTLSMode::Mutual)
        && !t.credential_name.is_empty()
    {
        if !t.client_certificate.is_empty()
            || !t.ca_certificates.is_empty()
            || !t.private_key.is_empty()
            || !t.ca_crl.is_empty()
        {
            r.err(p, "cannot specify client certificates or CA certificate or CA CRL If credentialName is set");
        }
        return;
    }
    if mode == ClientTLSMode::Mutual {
        if t.client_certificate.is_empty() {
            r.err(
                &p.key("clientCertificate"),
                "client certificate required for mutual tls",
            );
        }
        if t.private_key.is_empty() {
            r.err(&p.key("privateKey"), "private key required for mutual tls");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localities() {
        let v =
            |l: &[&str]| validate_localities(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(v(&["us-east/zone1", "us-west/*"]).is_ok());
        assert!(v(&["us-east/*", "us-east/zone1"]).is_err());
        assert!(v(&["*/a"]).is_err());
        assert!(v(&["a//b"]).is_err());
        assert!(v(&["a", "a"]).is_err());
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert!(is_prime(2));
        assert!(!is_prime(1));
    }
}
