//! RequestAuthentication and AuthorizationPolicy rules (Istio's
//! `ValidateRequestAuthentication`, `ValidateAuthorizationPolicy` and
//! `pkg/config/security`, and the CRD schema); builds [`model::RequestAuthentication`] and
//! [`model::AuthorizationPolicy`]. Istio's messages are kept; the field path says where.

use std::net::IpAddr;
use std::time::Duration;

use super::wasm_plugin::{PLUGIN_TARGETS, policy_scope, scope};
use super::{Report, duration, is_token};
use crate::model::{self, AuthorizationAction, PolicyScope};
use crate::raw;
use crate::yaml::FieldPath;

/// Istio's default for fetching a `jwksUri`.
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// The scope of a security policy, as any policy resource's, except that a target
/// wasmgate cannot bind is an error.
fn security_scope(
    selector: Option<&raw::WorkloadSelector>,
    target_ref: Option<&raw::PolicyTargetReference>,
    target_refs: &[raw::PolicyTargetReference],
    ns: &str,
    r: &mut Report,
) -> PolicyScope {
    let before = r.errors.len();
    let targets = scope(selector, target_ref, target_refs, ns, r, PLUGIN_TARGETS);
    let given = usize::from(target_ref.is_some()) + target_refs.len();
    if targets.len() < given && r.errors.len() == before {
        // A security policy that binds nowhere would switch a DENY off unnoticed.
        let p = FieldPath::root("spec");
        r.err(
            &if target_ref.is_some() {
                p.key("targetRef")
            } else {
                p.key("targetRefs")
            },
            "wasmgate binds security policies only to networking.istio.io Gateways and \
             VirtualServices; a policy with a target it cannot bind would not apply there",
        );
    }
    policy_scope(selector, given > 0, targets)
}

pub(crate) fn validate_request_authentication(
    meta: &model::Meta,
    spec: &raw::RequestAuthenticationSpec,
    r: &mut Report,
) -> model::RequestAuthentication {
    let p = FieldPath::root("spec");
    let scope = security_scope(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
        &meta.id.namespace,
        r,
    );
    let mut fetch_timeouts = Vec::new();
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        fetch_timeouts.push(jwt_rule(rule, &p.key("jwtRules").index(i), r));
    }
    model::RequestAuthentication {
        meta: meta.clone(),
        scope,
        jwt_rules: spec.jwt_rules.clone(),
        fetch_timeouts,
    }
}

/// One `jwtRules` entry; returns its fetch timeout.
fn jwt_rule(rule: &raw::JwtRule, p: &FieldPath, r: &mut Report) -> Duration {
    for (i, aud) in rule.audiences.iter().enumerate() {
        if aud.is_empty() {
            r.err(
                &p.key("audiences").index(i),
                "audience must be non-empty string",
            );
        }
    }
    if rule.issuer.is_empty() {
        if rule.jwks_uri.is_empty() {
            r.err(
                &p.key("issuer"),
                "issuer or jwksUri must be non-empty string",
            );
        } else {
            // Istio lets the JWKS alone name the keys; wasmgate matches tokens to rules by
            // issuer, so a rule without one could never apply (docs/security.md).
            r.err(
                &p.key("issuer"),
                "issuer must be set: wasmgate matches tokens to rules by their issuer",
            );
        }
    }
    if !rule.jwks_uri.is_empty() {
        r.check(&p.key("jwksUri"), check_jwks_uri(&rule.jwks_uri));
    }
    if let Some(jwks) = &rule.jwks {
        r.check(&p.key("jwks"), check_jwks(jwks));
    }
    if rule.jwks.is_none() && rule.jwks_uri.is_empty() {
        // Istio would discover the keys from the issuer's OpenID configuration.
        r.err(
            &p.key("jwksUri"),
            "one of jwks or jwksUri must be set: wasmgate does not discover keys from the issuer",
        );
    }
    for (i, h) in rule.from_headers.iter().enumerate() {
        let hp = p.key("fromHeaders").index(i).key("name");
        if h.name.is_empty() {
            r.err(&hp, "location header name must be non-empty string");
        } else if !is_token(&h.name) {
            r.err(&hp, format!("{:?} is not a valid header name", h.name));
        }
    }
    for (i, q) in rule.from_params.iter().enumerate() {
        if q.is_empty() {
            r.err(
                &p.key("fromParams").index(i),
                "location query must be non-empty string",
            );
        }
    }
    for (i, c) in rule.from_cookies.iter().enumerate() {
        if c.is_empty() {
            r.err(
                &p.key("fromCookies").index(i),
                "cookie name must be non-empty string",
            );
        }
    }
    for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
        let cp = p.key("outputClaimToHeaders").index(i);
        if c.claim.is_empty() || c.header.is_empty() {
            r.err(
                &cp,
                "outputClaimToHeaders header and claim value must be non-empty string",
            );
        } else if !is_token(&c.header) {
            r.err(
                &cp.key("header"),
                format!("{:?} is not a valid header name", c.header),
            );
        }
    }
    if !rule.output_payload_to_header.is_empty() && !is_token(&rule.output_payload_to_header) {
        r.err(
            &p.key("outputPayloadToHeader"),
            format!(
                "{:?} is not a valid header name",
                rule.output_payload_to_header
            ),
        );
    }
    for (i, c) in rule.space_delimited_claims.iter().enumerate() {
        let cp = p.key("spaceDelimitedClaims").index(i);
        if c.is_empty() {
            r.err(
                &cp,
                "spaceDelimitedClaims entries must be non-empty strings",
            );
        }
    }
    if !rule.space_delimited_claims.is_empty() {
        r.warn(
            &p.key("spaceDelimitedClaims"),
            "ignored by wasmgate: claims are matched as the token carries them",
        );
    }
    let mut timeout = DEFAULT_JWKS_TIMEOUT;
    if let Some(t) = &rule.timeout {
        let tp = p.key("timeout");
        match duration(r, &tp, t) {
            Some(d) if d.is_zero() => {
                r.err(&tp, "must be a valid duration greater than 0s");
            }
            Some(d) => timeout = d,
            None => {}
        }
    }
    timeout
}

/// Istio's `ParseJwksURI` (http, https), and `file://` (wasmgate reads it from disk).
fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!("url must have scheme: {uri:?}"));
    };
    match scheme {
        "http" | "https" => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '\\') {
                return Err(format!("{uri:?} has no valid host"));
            }
            Ok(())
        }
        "file" if !rest.is_empty() => Ok(()),
        "file" => Err("file:// url has no path".into()),
        other => Err(format!("URI scheme {other:?} is not supported")),
    }
}

/// A JWKS is a JSON object with a `keys` list of objects, each with a `kty`.
fn check_jwks(text: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("jwks parse error: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("jwks parse error: no \"keys\" list")?;
    for (i, k) in keys.iter().enumerate() {
        if k.get("kty").and_then(serde_json::Value::as_str).is_none() {
            return Err(format!("jwks parse error: keys[{i}] has no \"kty\""));
        }
    }
    Ok(())
}

pub(crate) fn validate_authorization_policy(
    meta: &model::Meta,
    spec: &raw::AuthorizationPolicySpec,
    r: &mut Report,
) -> model::AuthorizationPolicy {
    let p = FieldPath::root("spec");
    let scope = security_scope(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
        &meta.id.namespace,
        r,
    );
    let action = match spec.action {
        None | Some(raw::AuthorizationAction::Allow) => AuthorizationAction::Allow,
        Some(raw::AuthorizationAction::Deny) => AuthorizationAction::Deny,
        Some(raw::AuthorizationAction::Audit) => AuthorizationAction::Audit,
        Some(raw::AuthorizationAction::Custom) => AuthorizationAction::Custom,
    };
    match action {
        AuthorizationAction::Custom => {
            if spec.rules.is_none() {
                r.err(
                    &p.key("rules"),
                    "CUSTOM action without `rules` is meaningless as it will never be triggered, \
                     add an empty rule `{}` if you want it be triggered for every request",
                );
            } else if spec.provider.as_ref().is_none_or(|pr| pr.name.is_empty()) {
                r.err(
                    &p.key("provider").key("name"),
                    "`provider.name` must not be empty",
                );
            }
            r.warn(
                &p.key("action"),
                "CUSTOM is not supported by wasmgate (no external authorizer is called): \
                 requests the policy's rules match are denied (403), so nothing it was meant \
                 to guard is let through",
            );
        }
        AuthorizationAction::Deny if spec.rules.is_none() => r.err(
            &p.key("rules"),
            "DENY action without `rules` is meaningless as it will never be triggered, \
             add an empty rule `{}` if you want it be triggered for every request",
        ),
        _ => {}
    }
    if spec.provider.is_some() && action != AuthorizationAction::Custom {
        r.err(
            &p.key("provider"),
            format!(
                "`provider` must not be with non CUSTOM action, found {}",
                action.as_str()
            ),
        );
    }
    let rules = spec.rules.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, rule)| self::rule(rule, &meta.id.namespace, &p.key("rules").index(i), r))
            .collect()
    });
    model::AuthorizationPolicy {
        meta: meta.clone(),
        scope,
        action,
        rules,
    }
}

/// One rule: Istio's checks, then `serviceAccounts` and `trustDomains` folded into
/// `principals` patterns.
fn rule(rule: &raw::Rule, ns: &str, p: &FieldPath, r: &mut Report) -> raw::Rule {
    let mut out = rule.clone();
    if rule.from.as_ref().is_some_and(Vec::is_empty) {
        r.err(&p.key("from"), "`from` must not be empty");
    }
    for (i, from) in out.from.iter_mut().flatten().enumerate() {
        let fp = p.key("from").index(i).key("source");
        match &mut from.source {
            None => r.err(&fp, "`from.source` must not be nil"),
            Some(src) => source(src, ns, &fp, r),
        }
    }
    if rule.to.as_ref().is_some_and(Vec::is_empty) {
        r.err(&p.key("to"), "`to` must not be empty");
    }
    for (i, to) in rule.to.iter().flatten().enumerate() {
        let op_path = p.key("to").index(i).key("operation");
        match &to.operation {
            None => r.err(&op_path, "`to.operation` must not be nil"),
            Some(op) => operation(op, &op_path, r),
        }
    }
    for (i, c) in rule.when.iter().enumerate() {
        condition(c, &p.key("when").index(i), r);
    }
    out
}

fn source(src: &mut raw::Source, ns: &str, p: &FieldPath, r: &mut Report) {
    let any_principal = !(src.principals.is_empty()
        && src.not_principals.is_empty()
        && src.namespaces.is_empty()
        && src.not_namespaces.is_empty());
    let any_sa = !(src.service_accounts.is_empty() && src.not_service_accounts.is_empty());
    if any_principal && any_sa {
        r.err(
            p,
            "cannot set serviceAccounts with namespaces or principals",
        );
    }
    let fields: [(&str, &Vec<String>); 14] = [
        ("principals", &src.principals),
        ("notPrincipals", &src.not_principals),
        ("requestPrincipals", &src.request_principals),
        ("notRequestPrincipals", &src.not_request_principals),
        ("namespaces", &src.namespaces),
        ("notNamespaces", &src.not_namespaces),
        ("serviceAccounts", &src.service_accounts),
        ("notServiceAccounts", &src.not_service_accounts),
        ("trustDomains", &src.trust_domains),
        ("notTrustDomains", &src.not_trust_domains),
        ("ipBlocks", &src.ip_blocks),
        ("notIpBlocks", &src.not_ip_blocks),
        ("remoteIpBlocks", &src.remote_ip_blocks),
        ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
    ];
    if fields.iter().all(|(_, v)| v.is_empty()) {
        r.err(p, "`from.source` must not be empty");
    }
    for (name, values) in fields {
        let fp = p.key(name);
        r.check(&fp, empty_values(name, values));
        match name {
            "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks" => {
                r.check(&fp, ips(values));
            }
            "serviceAccounts" | "notServiceAccounts" => {
                r.check(&fp, service_accounts(name, values));
            }
            "trustDomains" | "notTrustDomains" => r.check(&fp, trust_domains(name, values)),
            _ => {}
        }
    }
    // Istio matches both against the peer's principal (`<td>/ns/<ns>/sa/<sa>`). A list
    // is an OR, so folding keeps the meaning only where they are alone in the source.
    let any_td = !(src.trust_domains.is_empty() && src.not_trust_domains.is_empty());
    if any_td && (any_principal || any_sa) {
        r.err(
            p,
            "trustDomains together with principals, namespaces or serviceAccounts is not \
             supported by wasmgate; use principals patterns (\"<trust domain>/ns/<ns>/sa/<sa>\")",
        );
        return;
    }
    let sa = |v: &String| match v.split_once('/') {
        Some((ns, sa)) => format!("*/ns/{ns}/sa/{sa}"),
        None => format!("*/ns/{ns}/sa/{v}"),
    };
    let td = |v: &String| format!("{v}/*");
    let principals: Vec<String> = src
        .service_accounts
        .drain(..)
        .map(|v| sa(&v))
        .chain(src.trust_domains.drain(..).map(|v| td(&v)))
        .collect();
    src.principals.extend(principals);
    let not_principals: Vec<String> = src
        .not_service_accounts
        .drain(..)
        .map(|v| sa(&v))
        .chain(src.not_trust_domains.drain(..).map(|v| td(&v)))
        .collect();
    src.not_principals.extend(not_principals);
}

fn operation(op: &raw::Operation, p: &FieldPath, r: &mut Report) {
    let fields: [(&str, &Vec<String>); 8] = [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("ports", &op.ports),
        ("notPorts", &op.not_ports),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ];
    if fields.iter().all(|(_, v)| v.is_empty()) {
        r.err(p, "`to.operation` must not be empty");
    }
    for (name, values) in fields {
        let fp = p.key(name);
        r.check(&fp, empty_values(name, values));
        match name {
            "ports" | "notPorts" => r.check(&fp, ports(values)),
            "paths" | "notPaths" => r.check(&fp, path_templates(name, values)),
            _ => {}
        }
    }
}

fn condition(c: &raw::Condition, p: &FieldPath, r: &mut Report) {
    if c.key.is_empty() {
        r.err(&p.key("key"), "`key` must not be empty");
        return;
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        r.err(
            p,
            format!(
                "at least one of `values` or `notValues` must be set for key {}",
                c.key
            ),
        );
        return;
    }
    for (field, values, what) in [
        ("values", &c.values, "value"),
        ("notValues", &c.not_values, "notValue"),
    ] {
        if let Err(e) = attribute(&c.key, values) {
            r.err(
                &p.key(field),
                format!("invalid `{what}` for `key` {}: {e}", c.key),
            );
        }
    }
    if c.key == "destination.ip" || c.key.starts_with("experimental.envoy.filters.") {
        r.warn(
            &p.key("key"),
            format!(
                "{} cannot be evaluated by wasmgate's authorizer: it fails closed (never matches in an ALLOW policy, always in DENY and AUDIT)",
                c.key
            ),
        );
    }
}

/// Istio's `ValidateAttribute`: the `when` keys it knows and their values.
fn attribute(key: &str, values: &[String]) -> Result<(), String> {
    empty_values(key, values)?;
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => ips(values),
        "source.namespace"
        | "source.principal"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Ok(()),
        "source.serviceAccount" => service_accounts(key, values),
        "source.trustDomain" => trust_domains(key, values),
        "destination.port" => ports(values),
        "destination.namespace" => Err(format!(
            "attribute {key} is replaced by the metadata.namespace"
        )),
        "destination.name" | "destination.user" => Err(format!(
            "deprecated attribute {key}: only supported in v1alpha1"
        )),
        k if k.starts_with("destination.labels") => Err(format!(
            "attribute {key} is replaced by the workload selector"
        )),
        k if k.starts_with("request.headers")
            || k.starts_with("request.auth.claims")
            || k.starts_with("experimental.envoy.filters.") =>
        {
            map_key(key)
        }
        _ => Err(format!("unknown attribute: {key}")),
    }
}

fn empty_values(key: &str, values: &[String]) -> Result<(), String> {
    if values.iter().any(String::is_empty) {
        return Err(format!("empty value not allowed, found in {key}"));
    }
    Ok(())
}

fn ips(values: &[String]) -> Result<(), String> {
    for v in values {
        match v.split_once('/') {
            Some((addr, bits)) => {
                let ok = addr
                    .parse::<IpAddr>()
                    .ok()
                    .zip(bits.parse::<u8>().ok())
                    .is_some_and(|(a, b)| {
                        !bits.starts_with('+') && b <= if a.is_ipv4() { 32 } else { 128 }
                    });
                if !ok {
                    return Err(format!("bad CIDR range ({v})"));
                }
            }
            None => {
                if v.parse::<IpAddr>().is_err() {
                    return Err(format!("bad IP address ({v})"));
                }
            }
        }
    }
    Ok(())
}

fn ports(values: &[String]) -> Result<(), String> {
    for v in values {
        if !v.bytes().all(|b| b.is_ascii_digit()) || v.parse::<u32>().map_or(true, |p| p > 65535) {
            return Err(format!("bad port ({v})"));
        }
    }
    Ok(())
}

fn service_accounts(key: &str, values: &[String]) -> Result<(), String> {
    if values.len() > 16 {
        return Err("may not have more than 16 values".into());
    }
    for v in values {
        if v.contains('*') {
            return Err(format!("wildcard not allowed, found in {key}"));
        }
        if v.len() > 320 {
            return Err(format!(
                "value cannot exceed 320 characters, found {v:?} in {key}"
            ));
        }
        let format = "expected format 'serviceAccount' or 'namespace/serviceAccount'";
        match v.split_once('/') {
            Some((_, sa)) if sa.contains('/') => {
                return Err(format!("{format}, found {v:?} in {key}"));
            }
            Some(("", _)) => return Err(format!("{format}, found empty namespace {v:?} in {key}")),
            Some((_, "")) => {
                return Err(format!(
                    "{format}, found empty serviceAccount {v:?} in {key}"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn trust_domains(key: &str, values: &[String]) -> Result<(), String> {
    for v in values {
        let stars = v.matches('*').count();
        if stars > 1 {
            return Err(format!(
                "at most one wildcard is allowed, found in {key}: {v:?}"
            ));
        }
        if stars == 1 && v != "*" && !v.starts_with('*') && !v.ends_with('*') {
            return Err(format!(
                "wildcard is only allowed at the start or end, found in {key}: {v:?}"
            ));
        }
        if v.contains('/') {
            return Err(format!(
                "trust domain must not contain '/', found in {key}: {v:?}"
            ));
        }
    }
    Ok(())
}

/// Istio's `CheckValidPathTemplate`: `{*}` anywhere, `{**}` only last, no other braces,
/// and in a templated path only URL literal characters.
fn path_templates(key: &str, paths: &[String]) -> Result<(), String> {
    for path in paths {
        let templated = path.contains("{*}") || path.contains("{**}");
        let trimmed = path.trim_matches('/');
        let mut any_seen = false;
        for glob in trimmed.split('/') {
            match glob {
                "{*}" | "{**}" if any_seen => {
                    return Err(format!(
                        "invalid or unsupported path {trimmed}, found in {key}. {{**}} is not the last operator"
                    ));
                }
                "{*}" => continue,
                "{**}" => {
                    any_seen = true;
                    continue;
                }
                _ => {}
            }
            if glob.contains(['{', '}']) {
                return Err(format!(
                    "invalid or unsupported path {trimmed}, found in {key}. Contains '{{' or '}}' beyond a supported path template"
                ));
            }
            if templated && !is_literal(glob) {
                return Err(format!(
                    "invalid or unsupported path {trimmed}, found in {key}. Contains segment {glob} with invalid string literal"
                ));
            }
        }
    }
    Ok(())
}

fn is_literal(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b))
}

fn map_key(key: &str) -> Result<(), String> {
    match key.find('[') {
        Some(open) if key.ends_with(']') && open > 0 && open + 2 < key.len() => Ok(()),
        _ => Err(format!("bad key ({key}): should have format a[b]")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn doc(kind: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata:\n  name: p\n  namespace: foo\nspec:\n{spec}"
        )
    }

    /// The errors of one document as `field: message`.
    fn errors(kind: &str, spec: &str) -> Vec<String> {
        crate::validate_document(&PathBuf::from("p.yaml"), &doc(kind, spec))
            .iter()
            .map(|e| format!("{}: {}", e.field.as_deref().unwrap_or("-"), e.message))
            .collect()
    }

    fn authz(spec: &str) -> (model::AuthorizationPolicy, Vec<String>) {
        let cfg = match crate::load_sources(&[(
            PathBuf::from("p.yaml"),
            doc("AuthorizationPolicy", spec),
        )]) {
            Ok(c) => c,
            Err(e) => panic!("{e}\n---\n{spec}"),
        };
        let warnings = cfg
            .warnings
            .iter()
            .map(|w| format!("{}: {}", w.field.as_deref().unwrap_or("-"), w.message))
            .collect();
        (cfg.authorization_policies[0].clone(), warnings)
    }

    /// Istio's "JWT at ingress" task, as written there, loads.
    #[test]
    fn istio_task_loads() {
        let ra = doc(
            "RequestAuthentication",
            "  selector:\n    matchLabels:\n      istio: ingressgateway\n  jwtRules:\n  - issuer: \"testing@secure.istio.io\"\n    jwksUri: \"https://raw.githubusercontent.com/istio/istio/release-1.24/security/tools/jwt/samples/jwks.json\"\n",
        );
        let ap = doc(
            "AuthorizationPolicy",
            "  selector:\n    matchLabels:\n      istio: ingressgateway\n  action: DENY\n  rules:\n  - from:\n    - source:\n        notRequestPrincipals: [\"*\"]\n",
        );
        let cfg = crate::load_sources(&[
            (PathBuf::from("ra.yaml"), ra),
            (PathBuf::from("ap.yaml"), ap.replace("name: p", "name: q")),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.request_authentications.len(), 1);
        let ra = &cfg.request_authentications[0];
        assert_eq!(ra.fetch_timeouts, vec![DEFAULT_JWKS_TIMEOUT]);
        assert!(matches!(&ra.scope, PolicyScope::Selector(l) if l["istio"] == "ingressgateway"));
        let ap = &cfg.authorization_policies[0];
        assert_eq!(ap.action, AuthorizationAction::Deny);
        assert_eq!(ap.rules.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn jwt_rule_errors_name_the_field() {
        let e = errors(
            "RequestAuthentication",
            "  jwtRules:\n  - issuer: example\n    jwksUri: \"hTPp\\\\blah\"\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("spec.jwtRules[0].jwksUri: url must have scheme"),
            "{e:?}"
        );
        let e = errors(
            "RequestAuthentication",
            "  jwtRules:\n  - issuer: example\n    jwks: '{}'\n    audiences: [\"\"]\n    fromHeaders: [{name: \"\", prefix: baz}]\n    fromParams: [\"\"]\n    fromCookies: [\"\"]\n    outputClaimToHeaders: [{claim: x, header: \":authority\"}]\n    timeout: apple\n",
        );
        let want = [
            "spec.jwtRules[0].audiences[0]: audience must be non-empty string",
            "spec.jwtRules[0].jwks: jwks parse error: no \"keys\" list",
            "spec.jwtRules[0].fromHeaders[0].name: location header name must be non-empty string",
            "spec.jwtRules[0].fromParams[0]: location query must be non-empty string",
            "spec.jwtRules[0].fromCookies[0]: cookie name must be non-empty string",
            "spec.jwtRules[0].outputClaimToHeaders[0].header: \":authority\" is not a valid header name",
        ];
        for w in want {
            assert!(e.iter().any(|x| x == w), "missing {w:?} in {e:?}");
        }
        assert!(
            e.iter().any(|x| x.starts_with("spec.jwtRules[0].timeout:")),
            "{e:?}"
        );
        let e = errors(
            "RequestAuthentication",
            "  jwtRules:\n  - issuer: example\n",
        );
        assert_eq!(
            e,
            [
                "spec.jwtRules[0].jwksUri: one of jwks or jwksUri must be set: wasmgate does not discover keys from the issuer"
            ]
        );
        let e = errors(
            "RequestAuthentication",
            "  selector: {matchLabels: {a: b}}\n  targetRefs: [{kind: Gateway, group: networking.istio.io, name: gw}]\n",
        );
        assert!(
            e.iter()
                .any(|x| x.contains("only one of targetRefs or selector can be set")),
            "{e:?}"
        );
        let e = errors(
            "AuthorizationPolicy",
            "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]\n  action: DENY\n  rules: [{}]\n",
        );
        assert!(
            e.iter()
                .any(|x| x.starts_with("spec.targetRefs: wasmgate binds security policies only")),
            "{e:?}"
        );
        let e = errors(
            "RequestAuthentication",
            "  jwtRules:\n  - issuer: x\n    jwksUri: ftp://x/y\n",
        );
        assert_eq!(
            e,
            ["spec.jwtRules[0].jwksUri: URI scheme \"ftp\" is not supported"]
        );
    }

    #[test]
    fn authorization_policy_errors_as_istio() {
        let cases: [(&str, &str); 13] = [
            (
                "  action: DENY\n",
                "spec.rules: DENY action without `rules` is meaningless",
            ),
            (
                "  action: CUSTOM\n",
                "spec.rules: CUSTOM action without `rules` is meaningless",
            ),
            (
                "  action: CUSTOM\n  rules: [{}]\n",
                "spec.provider.name: `provider.name` must not be empty",
            ),
            (
                "  provider: {name: x}\n  rules: [{}]\n",
                "spec.provider: `provider` must not be with non CUSTOM action, found ALLOW",
            ),
            (
                "  rules:\n  - from: []\n",
                "spec.rules[0].from: `from` must not be empty",
            ),
            (
                "  rules:\n  - from: [{}]\n",
                "spec.rules[0].from[0].source: `from.source` must not be nil",
            ),
            (
                "  rules:\n  - from: [{source: {}}]\n",
                "spec.rules[0].from[0].source: `from.source` must not be empty",
            ),
            (
                "  rules:\n  - to: [{operation: {}}]\n",
                "spec.rules[0].to[0].operation: `to.operation` must not be empty",
            ),
            (
                "  rules:\n  - from: [{source: {ipBlocks: [\"1.2.3.4/33\"]}}]\n",
                "spec.rules[0].from[0].source.ipBlocks: bad CIDR range (1.2.3.4/33)",
            ),
            (
                "  rules:\n  - to: [{operation: {ports: [\"70000\"]}}]\n",
                "spec.rules[0].to[0].operation.ports: bad port (70000)",
            ),
            (
                "  rules:\n  - to: [{operation: {paths: [\"/{**}/a/{**}\"]}}]\n",
                "spec.rules[0].to[0].operation.paths: invalid or unsupported path {**}/a/{**}, found in paths. {**} is not the last operator",
            ),
            (
                "  rules:\n  - when: [{key: \"request.headers[x]\"}]\n",
                "spec.rules[0].when[0]: at least one of `values` or `notValues` must be set for key request.headers[x]",
            ),
            (
                "  rules:\n  - when: [{key: foo.bar, values: [x]}]\n",
                "spec.rules[0].when[0].values: invalid `value` for `key` foo.bar: unknown attribute: foo.bar",
            ),
        ];
        for (spec, want) in cases {
            let e = errors("AuthorizationPolicy", spec);
            assert!(
                e.iter().any(|x| x.starts_with(want)),
                "{spec}: want {want:?}, got {e:?}"
            );
        }
        let e = errors(
            "AuthorizationPolicy",
            "  rules:\n  - from: [{source: {serviceAccounts: [\"bar/sa\"], namespaces: [bar]}}]\n",
        );
        assert!(
            e.iter()
                .any(|x| x.contains("cannot set serviceAccounts with namespaces or principals")),
            "{e:?}"
        );
    }

    #[test]
    fn service_accounts_and_trust_domains_become_principal_patterns() {
        let (ap, w) = authz(
            "  rules:\n  - from:\n    - source: {serviceAccounts: [\"bar/sa\", \"own\"]}\n    - source: {trustDomains: [td.example], notTrustDomains: [bad.example]}\n    - source: {notServiceAccounts: [x/y]}\n",
        );
        assert!(w.is_empty(), "{w:?}");
        let rules = ap.rules.unwrap_or_default();
        let from = rules[0].from.clone().unwrap_or_default();
        let first = from[0].source.clone().unwrap_or_default();
        assert_eq!(first.principals, ["*/ns/bar/sa/sa", "*/ns/foo/sa/own"]);
        assert!(first.service_accounts.is_empty());
        let second = from[1].source.clone().unwrap_or_default();
        assert_eq!(second.principals, ["td.example/*"]);
        assert_eq!(second.not_principals, ["bad.example/*"]);
        let third = from[2].source.clone().unwrap_or_default();
        assert_eq!(third.not_principals, ["*/ns/x/sa/y"]);
        let e = errors(
            "AuthorizationPolicy",
            "  rules:\n  - from: [{source: {trustDomains: [td], principals: [a]}}]\n",
        );
        assert!(
            e.iter()
                .any(|x| x.contains("trustDomains together with principals")),
            "{e:?}"
        );
        assert_eq!(ap.action, AuthorizationAction::Allow);
        assert_eq!(ap.scope, PolicyScope::Namespace);
    }

    #[test]
    fn custom_warns_and_unknown_fields_are_errors() {
        let (ap, w) = authz("  action: CUSTOM\n  provider: {name: ext}\n  rules: [{}]\n");
        assert_eq!(ap.action, AuthorizationAction::Custom);
        assert!(
            w.iter()
                .any(|x| x.starts_with("spec.action: CUSTOM is not supported")),
            "{w:?}"
        );
        let e = errors(
            "AuthorizationPolicy",
            "  rules:\n  - to: [{operation: {pathz: [\"/\"]}}]\n",
        );
        assert!(e.iter().any(|x| x.contains("pathz")), "{e:?}");
        // Absent rules (deny all with ALLOW) and one empty rule (allow all) differ.
        assert_eq!(authz("  {}\n").0.rules, None);
        assert_eq!(
            authz("  rules: [{}]\n").0.rules,
            Some(vec![raw::Rule::default()])
        );
    }
}
