//! Gateway rules (Istio's `ValidateGateway`): servers, ports, protocols, hosts, bind
//! addresses and server TLS settings, plus what wasmgate's TLS cannot do (mesh modes,
//! TLS below 1.2); builds [`model::Gateway`]. Certificates are read later, once every
//! Secret is known (`crate::credentials`).

use std::collections::BTreeSet;

use super::{Report, port_u16, validate_labels, validate_port};
use crate::host::{is_dns_label, is_ip, validate_partial_wildcard, validate_wildcard_domain};
use crate::model::{self, GatewayHost, NamespaceSelector, Protocol, ServerTls, ServerTlsMode};
use crate::raw::{self, ServerTLSMode, TLSProtocol};
use crate::yaml::FieldPath;

/// What Istio's `protocol.Parse` makes of a server protocol.
enum Parsed {
    Supported(Protocol),
    /// Valid Istio, not implemented by wasmgate.
    NotImplemented,
    Invalid,
}

fn parse_protocol(p: &str) -> Parsed {
    match p.to_ascii_lowercase().as_str() {
        "http" => Parsed::Supported(Protocol::Http),
        "https" => Parsed::Supported(Protocol::Https),
        "grpc" => Parsed::Supported(Protocol::Grpc),
        "grpc-web" => Parsed::Supported(Protocol::GrpcWeb),
        "http2" => Parsed::Supported(Protocol::Http2),
        "mongo" => Parsed::Supported(Protocol::Mongo),
        "tcp" => Parsed::Supported(Protocol::Tcp),
        "tls" => Parsed::Supported(Protocol::Tls),
        "udp" | "http_proxy" | "redis" | "mysql" => Parsed::NotImplemented,
        _ => Parsed::Invalid,
    }
}

pub(crate) fn validate(
    meta: &model::Meta,
    spec: &raw::GatewaySpec,
    r: &mut Report,
) -> model::Gateway {
    if !is_dns_label(&meta.id.name) {
        r.err(
            &FieldPath::root("metadata").key("name"),
            format!(
                "invalid gateway name {:?}: must be a DNS label (no dots)",
                meta.id.name
            ),
        );
    }
    let spec_path = FieldPath::root("spec");
    validate_labels(r, &spec_path.key("selector"), &spec.selector);
    let servers_path = spec_path.key("servers");
    if spec.servers.is_empty() {
        r.err(&servers_path, "gateway must have at least one server");
    }
    let mut port_names = BTreeSet::new();
    let mut servers = Vec::new();
    for (i, server) in spec.servers.iter().enumerate() {
        let p = servers_path.index(i);
        if let Some(port) = &server.port
            && !port_names.insert(port.name.clone())
        {
            r.err(
                &p.key("port").key("name"),
                format!(
                    "port names in servers must be unique: duplicate name {}",
                    port.name
                ),
            );
        }
        if let Some(s) = validate_server(meta, server, &p, r) {
            servers.push(model::Server { index: i, ..s });
        }
    }
    model::Gateway {
        meta: meta.clone(),
        selector: spec.selector.clone(),
        servers,
        spec: spec.clone(),
    }
}

fn validate_server(
    meta: &model::Meta,
    server: &raw::Server,
    p: &FieldPath,
    r: &mut Report,
) -> Option<model::Server> {
    let mut hosts = Vec::new();
    if server.hosts.is_empty() {
        r.err(
            &p.key("hosts"),
            "server config must contain at least one host",
        );
    }
    for (i, h) in server.hosts.iter().enumerate() {
        let hp = p.key("hosts").index(i);
        if let Some(host) = gateway_host(h, &meta.id.namespace, &hp, r) {
            hosts.push(host);
        }
    }
    let unix_bind = server.bind.starts_with("unix://");
    let mut protocol = None;
    let mut port_ok = false;
    match &server.port {
        None => r.err(&p.key("port"), "port is required"),
        Some(port) => {
            let pp = p.key("port");
            port_ok = true;
            match parse_protocol(&port.protocol) {
                Parsed::Supported(proto) => protocol = Some(proto),
                Parsed::NotImplemented => r.warn(
                    &pp.key("protocol"),
                    format!(
                        "server ignored: wasmgate does not implement protocol {:?}",
                        port.protocol
                    ),
                ),
                Parsed::Invalid => {
                    port_ok = false;
                    r.err(
                        &pp.key("protocol"),
                        format!(
                            "invalid protocol {:?}, supported protocols are HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP, TLS",
                            port.protocol
                        ),
                    );
                }
            }
            if (port.number > 0 || !unix_bind)
                && let Err(e) = validate_port(port.number)
            {
                port_ok = false;
                r.err(&pp.key("number"), e);
            }
            if port.target_port > 0 {
                r.err(
                    &pp.key("targetPort"),
                    "targetPort has no impact on Gateways",
                );
            }
            if port.name.is_empty() {
                r.err(&pp.key("name"), "port name must be set");
            }
            if unix_bind && port.number != 0 {
                r.err(
                    &pp.key("number"),
                    "port number must be 0 for unix domain socket",
                );
            }
        }
    }
    if let Some(path) = server.bind.strip_prefix("unix://") {
        if let Err(e) = validate_unix_address(path) {
            r.err(&p.key("bind"), e);
        }
    } else if !server.bind.is_empty() && !is_ip(&server.bind) {
        r.err(&p.key("bind"), format!("{} is not a valid IP", server.bind));
    }
    if let Some(tls) = &server.tls {
        validate_server_tls(tls, &p.key("tls"), r);
    }
    if let (true, Some(port)) = (port_ok, &server.port) {
        let raw_proto = port.protocol.to_ascii_lowercase();
        let is_tls = raw_proto == "https" || raw_proto == "tls";
        let is_http = matches!(
            raw_proto.as_str(),
            "http" | "http2" | "grpc" | "grpc-web" | "http_proxy"
        );
        match &server.tls {
            None if is_tls => r.err(
                &p.key("tls"),
                "server must have TLS settings for HTTPS/TLS protocols",
            ),
            Some(tls) if !is_tls => {
                let passthrough = matches!(
                    tls.mode(),
                    ServerTLSMode::Passthrough | ServerTLSMode::AutoPassthrough
                );
                if is_http {
                    if !passthrough
                        || !tls.ca_certificates.is_empty()
                        || !tls.private_key.is_empty()
                        || !tls.server_certificate.is_empty()
                    {
                        r.err(
                            &p.key("tls"),
                            "server cannot have TLS settings for plain text HTTP ports",
                        );
                    }
                } else {
                    r.err(
                        &p.key("tls"),
                        "server cannot have TLS settings for non HTTPS/TLS ports",
                    );
                }
            }
            _ => {}
        }
        if !is_http && server.tls.as_ref().is_some_and(|t| t.https_redirect) {
            r.warn(
                &p.key("tls").key("httpsRedirect"),
                "tls.httpsRedirect should only be used with http servers",
            );
        }
    }
    if !server.default_endpoint.is_empty() {
        r.warn(
            &p.key("defaultEndpoint"),
            "ignored: wasmgate does not implement defaultEndpoint",
        );
    }
    let port = server.port.as_ref()?;
    let protocol = protocol?;
    // On HTTP servers only `httpsRedirect` means something (the rest is rejected above or
    // is PASSTHROUGH, which has nothing to pass through on plain text).
    let tls = match &server.tls {
        Some(t) if protocol.is_tls() => server_tls(t, &p.key("tls"), r),
        _ => None,
    };
    let https_redirect =
        protocol.is_http() && server.tls.as_ref().is_some_and(|t| t.https_redirect);
    Some(model::Server {
        index: 0,
        name: (!server.name.is_empty()).then(|| server.name.clone()),
        port: port_u16(port.number),
        port_name: port.name.clone(),
        protocol,
        hosts,
        bind: (!server.bind.is_empty()).then(|| server.bind.clone()),
        https_redirect,
        tls,
    })
}

const AUTO_PASSTHROUGH: &str = "AUTO_PASSTHROUGH is for multi-cluster mesh traffic (SNI-DNAT with mesh identities); wasmgate does not serve it — use PASSTHROUGH with tls routes";
const ISTIO_MUTUAL: &str = "ISTIO_MUTUAL needs Istio's mesh certificates, which wasmgate does not have; use MUTUAL with credentialName";
const MIN_RAISED: &str =
    "TLS 1.2 is the lowest version wasmgate speaks; minProtocolVersion raised to TLSV1_2";

/// The name Istio writes for a protocol version.
fn version_name(v: TLSProtocol) -> &'static str {
    match v {
        TLSProtocol::TlsAuto => "TLS_AUTO",
        TLSProtocol::Tlsv10 => "TLSV1_0",
        TLSProtocol::Tlsv11 => "TLSV1_1",
        TLSProtocol::Tlsv12 => "TLSV1_2",
        TLSProtocol::Tlsv13 => "TLSV1_3",
    }
}

fn version_rank(v: TLSProtocol) -> u8 {
    match v {
        TLSProtocol::TlsAuto => 0,
        TLSProtocol::Tlsv10 => 10,
        TLSProtocol::Tlsv11 => 11,
        TLSProtocol::Tlsv12 => 12,
        TLSProtocol::Tlsv13 => 13,
    }
}

/// The resolved settings of an HTTPS or TLS server, without its certificates (read once
/// every Secret is loaded). Rejects what wasmgate cannot serve.
fn server_tls(t: &raw::ServerTLSSettings, p: &FieldPath, r: &mut Report) -> Option<ServerTls> {
    let mode = match t.mode() {
        ServerTLSMode::Passthrough => return Some(ServerTls::passthrough()),
        ServerTLSMode::AutoPassthrough => {
            r.err(&p.key("mode"), AUTO_PASSTHROUGH);
            return None;
        }
        ServerTLSMode::IstioMutual => {
            r.err(&p.key("mode"), ISTIO_MUTUAL);
            return None;
        }
        ServerTLSMode::Simple => ServerTlsMode::Simple,
        ServerTLSMode::Mutual => ServerTlsMode::Mutual,
        ServerTLSMode::OptionalMutual => ServerTlsMode::OptionalMutual,
    };
    let min_version = match t.min_protocol_version {
        Some(TLSProtocol::Tlsv10 | TLSProtocol::Tlsv11) => {
            r.warn(&p.key("minProtocolVersion"), MIN_RAISED);
            Some(TLSProtocol::Tlsv12)
        }
        Some(TLSProtocol::TlsAuto) | None => None,
        v => v,
    };
    let max_version = match t.max_protocol_version {
        Some(v @ (TLSProtocol::Tlsv10 | TLSProtocol::Tlsv11)) => {
            r.err(
                &p.key("maxProtocolVersion"),
                format!(
                    "maxProtocolVersion {}: wasmgate's TLS library speaks TLS 1.2 and 1.3 only",
                    version_name(v)
                ),
            );
            None
        }
        Some(TLSProtocol::TlsAuto) | None => None,
        v => v,
    };
    if let (Some(lo), Some(hi)) = (min_version, max_version)
        && version_rank(lo) > version_rank(hi)
    {
        r.err(
            &p.key("minProtocolVersion"),
            format!(
                "minProtocolVersion {} is higher than maxProtocolVersion {}",
                version_name(lo),
                version_name(hi)
            ),
        );
    }
    let mut cipher_suites: Vec<String> = Vec::new();
    for c in &t.cipher_suites {
        if !cipher_suites.contains(c) {
            cipher_suites.push(c.clone());
        }
    }
    Some(ServerTls {
        mode,
        certificates: Vec::new(),
        client_ca: None,
        crl: None,
        min_version,
        max_version,
        cipher_suites,
        subject_alt_names: t.subject_alt_names.clone(),
        verify_certificate_spki: t.verify_certificate_spki.clone(),
        verify_certificate_hash: t.verify_certificate_hash.clone(),
    })
}

/// `[namespace/]host` where the namespace is `*`, `.` or a name, and the host is a
/// wildcard domain (or an IP) but not a short name or a partial wildcard.
fn gateway_host(h: &str, own_ns: &str, p: &FieldPath, r: &mut Report) -> Option<GatewayHost> {
    let (ns, host) = match h.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, h),
    };
    let before = r.errors.len();
    let namespace = match ns {
        None | Some("*") => NamespaceSelector::Any,
        Some(".") => NamespaceSelector::Named(own_ns.to_string()),
        Some("") => {
            r.err(
                p,
                "config namespace and dnsName in host entry cannot be empty",
            );
            NamespaceSelector::Any
        }
        Some(ns) => {
            if !is_dns_label(ns) {
                r.err(p, format!("invalid namespace value {ns:?} in gateway"));
            }
            NamespaceSelector::Named(ns.to_string())
        }
    };
    if host.is_empty() {
        r.err(
            p,
            "config namespace and dnsName in host entry cannot be empty",
        );
    } else {
        if host != "*" && !host.contains('.') {
            r.err(
                p,
                format!("short names (non FQDN) are not allowed: {host:?}"),
            );
        }
        if let Err(e) = validate_wildcard_domain(host)
            && !is_ip(host)
        {
            r.err(p, e);
        }
        r.check(p, validate_partial_wildcard(host));
    }
    (r.errors.len() == before).then(|| GatewayHost {
        namespace,
        host: host.to_ascii_lowercase(),
    })
}

pub(crate) fn validate_unix_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("unix address must not be empty".into());
    }
    if addr.starts_with('@') {
        return Ok(());
    }
    if !addr.starts_with('/') || addr.ends_with('/') {
        return Err(format!("{addr} is not an absolute path to a file"));
    }
    Ok(())
}

fn validate_server_tls(tls: &raw::ServerTLSSettings, p: &FieldPath, r: &mut Report) {
    let mode = tls.mode();
    let terminating = matches!(
        mode,
        ServerTLSMode::Simple | ServerTLSMode::Mutual | ServerTLSMode::OptionalMutual
    );
    // A terminating server raises the version to TLS 1.2 instead (see `server_tls`).
    if matches!(
        tls.min_protocol_version,
        Some(TLSProtocol::Tlsv10) | Some(TLSProtocol::Tlsv11)
    ) && tls.cipher_suites.is_empty()
        && !terminating
    {
        r.warn(
            &p.key("minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, c) in tls.cipher_suites.iter().enumerate() {
        if !seen.insert(c) {
            r.warn(
                &p.key("cipherSuites").index(i),
                format!("ignoring duplicate cipher suite {c}"),
            );
            continue;
        }
        // Envoy ignores cipher suites where it does not terminate.
        if !terminating {
            continue;
        }
        for name in raw::cipher_suite_names(c) {
            if !raw::IMPLEMENTED_CIPHER_SUITES.contains(&name) {
                r.warn(
                    &p.key("cipherSuites").index(i),
                    format!(
                        "cipher suite {name} is not implemented by wasmgate's TLS library; ignored"
                    ),
                );
            }
        }
    }
    // Envoy refuses a pin that is not a SHA-256 digest (the listener is not served); here
    // it is an error too, since a pin that can never match would refuse every client.
    if terminating {
        for (i, spki) in tls.verify_certificate_spki.iter().enumerate() {
            if !super::secret::decode_base64(spki).is_ok_and(|d| d.len() == 32) {
                r.err(
                    &p.key("verifyCertificateSpki").index(i),
                    format!("{spki:?} is not a base64-encoded SHA-256 digest (44 characters)"),
                );
            }
        }
        for (i, hash) in tls.verify_certificate_hash.iter().enumerate() {
            let digits: Vec<char> = hash.chars().filter(|c| *c != ':').collect();
            if digits.len() != 64 || !digits.iter().all(char::is_ascii_hexdigit) {
                r.err(
                    &p.key("verifyCertificateHash").index(i),
                    format!(
                        "{hash:?} is not a hex-encoded SHA-256 digest (64 hex digits, colons allowed)"
                    ),
                );
            }
        }
    }
    for (field, list) in [
        ("credentialNames", tls.credential_names.len()),
        ("tlsCertificates", tls.tls_certificates.len()),
    ] {
        if list > 2 {
            r.err(&p.key(field), format!("{field} may have at most 2 items"));
        }
    }
    if mode == ServerTLSMode::IstioMutual {
        for (set, what) in [
            (!tls.server_certificate.is_empty(), "server certificate"),
            (!tls.private_key.is_empty(), "private key"),
            (!tls.ca_certificates.is_empty(), "CA bundle"),
            (!tls.tls_certificates.is_empty(), "tlsCertificates"),
            (!tls.credential_name.is_empty(), "credentialName"),
            (!tls.credential_names.is_empty(), "credentialNames"),
        ] {
            if set {
                r.err(p, format!("ISTIO_MUTUAL TLS cannot have associated {what}"));
            }
        }
        return;
    }
    if matches!(
        mode,
        ServerTLSMode::Passthrough | ServerTLSMode::AutoPassthrough
    ) && (!tls.ca_crl.is_empty()
        || !tls.server_certificate.is_empty()
        || !tls.private_key.is_empty()
        || !tls.ca_certificates.is_empty()
        || !tls.tls_certificates.is_empty()
        || !tls.credential_name.is_empty()
        || !tls.credential_names.is_empty())
    {
        r.warn(
            p,
            "PASSTHROUGH mode does not use certificates, they will be ignored",
        );
    }
    let sources = [
        !tls.server_certificate.is_empty() && !tls.private_key.is_empty(),
        !tls.credential_name.is_empty(),
        !tls.credential_names.is_empty(),
        !tls.tls_certificates.is_empty(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources > 1 {
        r.err(
            p,
            "only one of credentialName, credentialNames, serverCertificate/privateKey, tlsCertificates should be specified",
        );
    }
    let remote_credentials = !tls.credential_name.is_empty() || !tls.credential_names.is_empty();
    if terminating && remote_credentials {
        // Credentials are fetched remotely; Istio checks nothing further.
        return;
    }
    if terminating {
        let what = if mode == ServerTLSMode::Simple {
            "SIMPLE TLS"
        } else {
            "MUTUAL TLS"
        };
        if mode != ServerTLSMode::Simple && tls.ca_certificates.is_empty() {
            r.err(
                &p.key("caCertificates"),
                format!("{what} requires a client CA bundle"),
            );
        }
        if tls.tls_certificates.is_empty() {
            if tls.server_certificate.is_empty() {
                r.err(
                    &p.key("serverCertificate"),
                    format!("{what} requires a server certificate"),
                );
            }
            if tls.private_key.is_empty() {
                r.err(
                    &p.key("privateKey"),
                    format!("{what} requires a private key"),
                );
            }
        }
        for (i, c) in tls.tls_certificates.iter().enumerate() {
            let cp = p.key("tlsCertificates").index(i);
            if c.server_certificate.is_empty() {
                r.err(
                    &cp.key("serverCertificate"),
                    format!("{what} requires a server certificate"),
                );
            }
            if c.private_key.is_empty() {
                r.err(
                    &cp.key("privateKey"),
                    format!("{what} requires a private key"),
                );
            }
        }
    }
    if !tls.ca_crl.is_empty() {
        if !tls.credential_name.is_empty() {
            r.err(
                &p.key("caCrl"),
                "CRL is not supported with credentialName. CRL has to be specified in the credential",
            );
        }
        if mode == ServerTLSMode::Simple {
            r.err(&p.key("caCrl"), "CRL is not supported with SIMPLE TLS");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::model::{Config, ServerTls, ServerTlsMode};
    use crate::raw::TLSProtocol;
    use crate::{ConfigError, Errors};

    fn try_load(yaml: String) -> Result<Config, Errors> {
        crate::load_sources(&[(PathBuf::from("gw.yaml"), yaml)])
    }

    /// A Gateway with one server of `protocol` and these `tls` lines, and a Secret `web`
    /// with a certificate and key.
    fn gateway(protocol: &str, tls: &[&str]) -> String {
        let mut out = format!(
            "apiVersion: networking.istio.io/v1\n\
             kind: Gateway\n\
             metadata: {{name: gw}}\n\
             spec:\n  servers:\n  - port: {{number: 443, name: p, protocol: {protocol}}}\n    \
             hosts: [web.example.com]\n    tls:\n"
        );
        for line in tls {
            out.push_str(&format!("      {line}\n"));
        }
        out.push_str("---\napiVersion: v1\nkind: Secret\nmetadata: {name: web}\nstringData: {tls.crt: C, tls.key: K}\n");
        out
    }

    fn load(protocol: &str, tls: &[&str]) -> Config {
        try_load(gateway(protocol, tls)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn errors(protocol: &str, tls: &[&str]) -> Vec<String> {
        match try_load(gateway(protocol, tls)) {
            Ok(_) => panic!("should fail: {tls:?}"),
            Err(Errors(e)) => e.iter().map(ConfigError::to_string).collect(),
        }
    }

    fn server_tls(c: &Config) -> ServerTls {
        c.gateways[0].servers[0]
            .tls
            .clone()
            .unwrap_or_else(|| panic!("no tls"))
    }

    #[test]
    fn mesh_modes_are_rejected() {
        assert_eq!(
            errors("TLS", &["mode: AUTO_PASSTHROUGH"]),
            vec![
                "gw.yaml:9: Gateway default/gw: spec.servers[0].tls.mode: AUTO_PASSTHROUGH is for multi-cluster mesh traffic (SNI-DNAT with mesh identities); wasmgate does not serve it — use PASSTHROUGH with tls routes"
            ]
        );
        assert_eq!(
            errors("HTTPS", &["mode: ISTIO_MUTUAL"]),
            vec![
                "gw.yaml:9: Gateway default/gw: spec.servers[0].tls.mode: ISTIO_MUTUAL needs Istio's mesh certificates, which wasmgate does not have; use MUTUAL with credentialName"
            ]
        );
    }

    #[test]
    fn passthrough_has_no_certificates() {
        let c = load("TLS", &["mode: PASSTHROUGH"]);
        assert_eq!(server_tls(&c), ServerTls::passthrough());
        // Absent mode is PASSTHROUGH, Istio's default.
        let c = load("TLS", &["minProtocolVersion: TLSV1_3"]);
        assert_eq!(server_tls(&c).mode, ServerTlsMode::Passthrough);
    }

    #[test]
    fn protocol_versions() {
        let c = load(
            "HTTPS",
            &[
                "mode: SIMPLE",
                "credentialName: web",
                "minProtocolVersion: TLSV1_0",
            ],
        );
        let t = server_tls(&c);
        assert_eq!(
            (t.min_version, t.max_version),
            (Some(TLSProtocol::Tlsv12), None)
        );
        let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            w,
            vec![
                "gw.yaml:11: Gateway default/gw: spec.servers[0].tls.minProtocolVersion: TLS 1.2 is the lowest version wasmgate speaks; minProtocolVersion raised to TLSV1_2"
            ]
        );
        let c = load(
            "HTTPS",
            &[
                "mode: SIMPLE",
                "credentialName: web",
                "minProtocolVersion: TLS_AUTO",
                "maxProtocolVersion: TLSV1_3",
            ],
        );
        let t = server_tls(&c);
        assert_eq!(
            (t.min_version, t.max_version),
            (None, Some(TLSProtocol::Tlsv13))
        );
        assert_eq!(
            errors(
                "HTTPS",
                &[
                    "mode: SIMPLE",
                    "credentialName: web",
                    "maxProtocolVersion: TLSV1_1"
                ]
            ),
            vec![
                "gw.yaml:11: Gateway default/gw: spec.servers[0].tls.maxProtocolVersion: maxProtocolVersion TLSV1_1: wasmgate's TLS library speaks TLS 1.2 and 1.3 only"
            ]
        );
        assert_eq!(
            errors(
                "HTTPS",
                &[
                    "mode: SIMPLE",
                    "credentialName: web",
                    "minProtocolVersion: TLSV1_3",
                    "maxProtocolVersion: TLSV1_2"
                ]
            ),
            vec![
                "gw.yaml:11: Gateway default/gw: spec.servers[0].tls.minProtocolVersion: minProtocolVersion TLSV1_3 is higher than maxProtocolVersion TLSV1_2"
            ]
        );
    }

    #[test]
    fn settings_carried_over() {
        let c = load(
            "HTTPS",
            &[
                "mode: SIMPLE",
                "credentialName: web",
                "cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256, AES256-GCM-SHA384, ECDHE-RSA-AES128-GCM-SHA256]",
                "subjectAltNames: [client.example.com]",
                &format!("verifyCertificateSpki: [{SPKI}]"),
                &format!("verifyCertificateHash: [\"{HASH}\"]"),
            ],
        );
        let t = server_tls(&c);
        assert_eq!(
            t.cipher_suites,
            vec!["ECDHE-RSA-AES128-GCM-SHA256", "AES256-GCM-SHA384"]
        );
        assert_eq!(t.subject_alt_names, vec!["client.example.com"]);
        assert_eq!(t.verify_certificate_spki, vec![SPKI]);
        assert_eq!(t.verify_certificate_hash, vec![HASH]);
        let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            warnings,
            vec![
                "gw.yaml:11: Gateway default/gw: spec.servers[0].tls.cipherSuites[1]: cipher suite AES256-GCM-SHA384 is not implemented by wasmgate's TLS library; ignored",
                "gw.yaml:11: Gateway default/gw: spec.servers[0].tls.cipherSuites[2]: ignoring duplicate cipher suite ECDHE-RSA-AES128-GCM-SHA256",
            ]
        );
    }

    const SPKI: &str = "2IEpPESU/mmC30tPsnOfbGKdwKdQAB3vxuOTY2Kv2nI=";
    const HASH: &str = "DF:6F:F7:2F:E9:11:65:21:26:8F:67:78:EF:6A:1A:5E:55:20:F0:D6:4B:0C:17:4E:D7:6D:AF:88:04:17:A8:35";

    #[test]
    fn certificate_pins_must_be_sha256_digests() {
        assert_eq!(
            errors(
                "HTTPS",
                &[
                    "mode: MUTUAL",
                    "credentialName: web",
                    &format!("verifyCertificateSpki: [{SPKI}, abc, \"{}\"]", &SPKI[4..]),
                    &format!("verifyCertificateHash: [{}, \"{HASH}:00\", xyz]", HASH.replace(':', "").to_lowercase()),
                ]
            ),
            vec![
                "gw.yaml:11: Gateway default/gw: spec.servers[0].tls.verifyCertificateSpki[1]: \"abc\" is not a base64-encoded SHA-256 digest (44 characters)".to_string(),
                format!("gw.yaml:11: Gateway default/gw: spec.servers[0].tls.verifyCertificateSpki[2]: {:?} is not a base64-encoded SHA-256 digest (44 characters)", &SPKI[4..]),
                format!("gw.yaml:12: Gateway default/gw: spec.servers[0].tls.verifyCertificateHash[1]: \"{HASH}:00\" is not a hex-encoded SHA-256 digest (64 hex digits, colons allowed)"),
                "gw.yaml:12: Gateway default/gw: spec.servers[0].tls.verifyCertificateHash[2]: \"xyz\" is not a hex-encoded SHA-256 digest (64 hex digits, colons allowed)".to_string(),
            ]
        );
    }

    #[test]
    fn cipher_suite_groups_and_passthrough() {
        let c = load(
            "HTTPS",
            &[
                "mode: SIMPLE",
                "credentialName: web",
                "cipherSuites: [\"[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-AES128-SHA]\", TLS_AES_128_GCM_SHA256]",
            ],
        );
        let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            warnings,
            vec![
                "gw.yaml:11: Gateway default/gw: spec.servers[0].tls.cipherSuites[0]: cipher suite ECDHE-ECDSA-AES128-SHA is not implemented by wasmgate's TLS library; ignored",
            ]
        );
        let c = load("TLS", &["mode: PASSTHROUGH", "cipherSuites: [AES128-SHA]"]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn https_redirect_on_http_servers() {
        let c = load("HTTP", &["httpsRedirect: true"]);
        let s = &c.gateways[0].servers[0];
        assert!(s.https_redirect);
        assert_eq!(s.tls, None);
        let c = load(
            "HTTPS",
            &["mode: SIMPLE", "credentialName: web", "httpsRedirect: true"],
        );
        let s = &c.gateways[0].servers[0];
        assert!(!s.https_redirect, "a no-op on HTTPS");
        assert!(s.tls.is_some());
    }
}
