//! First-party component: Istio's `AuthorizationPolicy` (security.istio.io/v1), enforced
//! as the Envoy RBAC filters Istio configures at a gateway enforce it. The gateway
//! gathers the policies that apply to a VirtualService's chain, validates them, and
//! hands them over as `pluginConfig`, each policy's `action` and `rules` as written in
//! Istio YAML:
//!
//! ```json
//! {"numTrustedProxies": 1,
//!  "policies": [{"name": "default/deny-admin", "action": "DENY",
//!                "rules": [{"to": [{"operation": {"paths": ["/admin/{**}"]}}]}]}]}
//! ```
//!
//! A matching DENY policy denies; otherwise, when there is an ALLOW policy, one of them
//! must match; AUDIT policies only add `rbac_audit=<policy>` to the access log. A denied
//! request gets Envoy's `403 RBAC: access denied` and `rbac=denied by <policy>` (or
//! `rbac=denied: no ALLOW policy matched`).
//!
//! Where Envoy and Istio decide details, this follows what they do:
//! `hosts` match the authority as received, port included (`example.com` does not match
//! `example.com:8080`; write `example.com:*` too, as Istio's docs advise);
//! `request.headers[..]` match the header's values joined with `,`, as Envoy's header
//! matcher sees several lines; claims match when they are a string or a list holding a
//! matching string, never a number or a boolean; `requestPrincipals` match the JWT's
//! `iss` and `sub` separately, split at the last `/`; `remoteIpBlocks` take the address
//! `numTrustedProxies` hops from the right of `x-forwarded-for` (Envoy's
//! `xff_num_trusted_hops` with `use_remote_address`), the peer when there is none.
//! `destination.ip` and `experimental.envoy.filters.*` conditions cannot be evaluated
//! here: they never match in an ALLOW policy and always do in a DENY or AUDIT one.
//! When several policies match, the log names the first in config order.

mod pattern;
#[cfg(test)]
mod tests;

use std::cell::{OnceCell, RefCell};
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;
use wasmgate_plugin_sdk::{
    Action, Binding, ConfigError, DirectResponse, Edit, Header, PluginError, Policy, Request,
    export_policy, parse_config,
};

use pattern::{Cidr, JwtPrincipal, PathPattern, Str, parse_ip};

/// Envoy's local reply for a request its RBAC filter denied.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// `pluginConfig`, as the gateway writes it. Unknown fields are ignored: the gateway
/// validated the policies, and Istio fields this component does not read (`selector`,
/// `targetRefs`) are the gateway's business.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Config {
    num_trusted_proxies: u32,
    policies: Vec<PolicySpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PolicySpec {
    name: String,
    action: Option<String>,
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RuleSpec {
    from: Vec<FromSpec>,
    to: Vec<ToSpec>,
    when: Vec<ConditionSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FromSpec {
    source: Option<SourceSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ToSpec {
    operation: Option<OperationSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct SourceSpec {
    principals: Vec<String>,
    not_principals: Vec<String>,
    request_principals: Vec<String>,
    not_request_principals: Vec<String>,
    namespaces: Vec<String>,
    not_namespaces: Vec<String>,
    service_accounts: Vec<String>,
    not_service_accounts: Vec<String>,
    trust_domains: Vec<String>,
    not_trust_domains: Vec<String>,
    ip_blocks: Vec<String>,
    not_ip_blocks: Vec<String>,
    remote_ip_blocks: Vec<String>,
    not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct OperationSpec {
    hosts: Vec<String>,
    not_hosts: Vec<String>,
    ports: Vec<String>,
    not_ports: Vec<String>,
    methods: Vec<String>,
    not_methods: Vec<String>,
    paths: Vec<String>,
    not_paths: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ConditionSpec {
    key: String,
    values: Vec<String>,
    not_values: Vec<String>,
}

/// What a policy does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Allow,
    Deny,
    Audit,
}

/// The prepared policies of one VirtualService's chain.
#[derive(Debug)]
pub struct Authz {
    trusted_hops: u32,
    deny: Vec<Compiled>,
    allow: Vec<Compiled>,
    audit: Vec<Compiled>,
}

/// One policy: it matches when any of its rules does (none: it matches nothing).
#[derive(Debug)]
struct Compiled {
    name: String,
    rules: Vec<Rule>,
}

/// At least one `from` alternative, one `to` alternative and every `when` condition;
/// an absent `from` or `to` is one alternative that checks nothing.
#[derive(Debug)]
struct Rule {
    from: Vec<Vec<Check>>,
    to: Vec<Vec<Check>>,
    when: Vec<Check>,
}

/// One field of a source or operation, or one condition: its values (any matches) or
/// its `not` values (none may match).
#[derive(Debug)]
struct Check {
    test: Test,
    negated: bool,
}

/// The attribute a check reads and the values it compares it with.
#[derive(Debug)]
enum Test {
    Host(Vec<Str>),
    Method(Vec<Str>),
    Path(Vec<PathPattern>),
    Port(Vec<u16>),
    SourceIp(Vec<Cidr>),
    RemoteIp(Vec<Cidr>),
    Principal(Vec<Str>),
    Namespace(Vec<String>),
    ServiceAccount(Vec<(String, String)>),
    TrustDomain(Vec<Str>),
    RequestPrincipal(Vec<JwtPrincipal>),
    Audiences(Vec<Str>),
    Presenter(Vec<Str>),
    Claim(Vec<String>, Vec<Str>),
    Header(String, Vec<Str>),
    Sni(Vec<Str>),
    /// A condition that cannot be evaluated here: matches or not by the policy's action.
    Always(bool),
}

impl Policy for Authz {
    fn prepare(binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        let config: Config = parse_config(config)?;
        let mut authz = Authz {
            trusted_hops: config.num_trusted_proxies,
            deny: Vec::new(),
            allow: Vec::new(),
            audit: Vec::new(),
        };
        for (i, spec) in config.policies.iter().enumerate() {
            let at = format!("policies[{i}]");
            let kind = match spec.action.as_deref() {
                None | Some("ALLOW") => Kind::Allow,
                Some("DENY") => Kind::Deny,
                Some("AUDIT") => Kind::Audit,
                Some(other) => {
                    return Err(error(
                        format!("{at}.action"),
                        format!("{other:?} is not enforced here (ALLOW, DENY or AUDIT)"),
                    ));
                }
            };
            // `sa` alone in `serviceAccounts` is in the policy's own namespace.
            let namespace = spec
                .name
                .split_once('/')
                .map_or(binding.namespace.as_str(), |(ns, _)| ns);
            let rules = spec
                .rules
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    compile_rule(
                        r,
                        &format!("{at}.rules[{j}]"),
                        namespace,
                        kind != Kind::Allow,
                    )
                })
                .collect::<Result<_, _>>()?;
            let compiled = Compiled {
                name: spec.name.clone(),
                rules,
            };
            match kind {
                Kind::Allow => authz.allow.push(compiled),
                Kind::Deny => authz.deny.push(compiled),
                Kind::Audit => authz.audit.push(compiled),
            }
        }
        Ok(authz)
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        let facts = Facts::new(request, self.trusted_hops);
        let mut edit = Edit::keep();
        // AUDIT is its own filter in Istio: it logs whatever the others decide.
        if let Some(audited) = self.audit.iter().find(|p| p.matches(&facts)) {
            edit.log_field("rbac_audit", &audited.name);
        }
        let denied = match self.deny.iter().find(|p| p.matches(&facts)) {
            Some(p) => Some(format!("denied by {}", p.name)),
            None if !self.allow.is_empty() && !self.allow.iter().any(|p| p.matches(&facts)) => {
                Some("denied: no ALLOW policy matched".to_string())
            }
            None => None,
        };
        if let Some(reason) = denied {
            edit.action = Some(Action::Respond(DirectResponse {
                status: 403,
                headers: vec![Header::new("content-type", "text/plain")],
                body: DENIED_BODY.as_bytes().to_vec(),
            }));
            edit.log_field("rbac", &reason);
        }
        Ok(edit)
    }
}

export_policy!(Authz);

fn error(field: String, message: String) -> ConfigError {
    ConfigError { field, message }
}

/// Parse each value with `parse`, naming the value's field on error.
fn each<T>(
    values: &[String],
    field: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| parse(v).map_err(|m| error(format!("{field}[{i}]"), m)))
        .collect()
}

fn strs(values: &[String], star: &Str) -> Vec<Str> {
    values.iter().map(|v| Str::new(v, star.clone())).collect()
}

fn port(value: &str) -> Result<u16, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not a port (0 to 65535)"))
}

/// A field's checks: one for its values, one for its `not` values, each only when set.
fn push(
    checks: &mut Vec<Check>,
    values: &[String],
    not_values: &[String],
    field: &str,
    not_field: &str,
    make: impl Fn(&[String], &str) -> Result<Test, ConfigError>,
) -> Result<(), ConfigError> {
    if !values.is_empty() {
        checks.push(Check {
            test: make(values, field)?,
            negated: false,
        });
    }
    if !not_values.is_empty() {
        checks.push(Check {
            test: make(not_values, not_field)?,
            negated: true,
        });
    }
    Ok(())
}

/// `fail_closed`: what a condition this component cannot evaluate does (see
/// [`condition`]): in an ALLOW policy it never matches, in a DENY or AUDIT policy it
/// always does, as Istio drops what it cannot generate from an ALLOW policy and ignores
/// it in a DENY one. Either way nothing is let through on a guess.
fn compile_rule(
    spec: &RuleSpec,
    at: &str,
    namespace: &str,
    fail_closed: bool,
) -> Result<Rule, ConfigError> {
    let mut from = Vec::new();
    for (i, f) in spec.from.iter().enumerate() {
        let mut checks = Vec::new();
        if let Some(s) = &f.source {
            compile_source(s, &format!("{at}.from[{i}].source"), namespace, &mut checks)?;
        }
        from.push(checks);
    }
    if from.is_empty() {
        from.push(Vec::new());
    }
    let mut to = Vec::new();
    for (i, t) in spec.to.iter().enumerate() {
        let mut checks = Vec::new();
        if let Some(o) = &t.operation {
            compile_operation(o, &format!("{at}.to[{i}].operation"), &mut checks)?;
        }
        to.push(checks);
    }
    if to.is_empty() {
        to.push(Vec::new());
    }
    let mut when = Vec::new();
    for (i, c) in spec.when.iter().enumerate() {
        let at = format!("{at}.when[{i}]");
        let Some(make) = condition(&c.key, &format!("{at}.key"), namespace)? else {
            when.push(Check {
                test: Test::Always(fail_closed),
                negated: false,
            });
            continue;
        };
        push(
            &mut when,
            &c.values,
            &c.not_values,
            &format!("{at}.values"),
            &format!("{at}.notValues"),
            make,
        )?;
    }
    Ok(Rule { from, to, when })
}

fn compile_source(
    s: &SourceSpec,
    at: &str,
    namespace: &str,
    checks: &mut Vec<Check>,
) -> Result<(), ConfigError> {
    let f = |name: &str| format!("{at}.{name}");
    push(
        checks,
        &s.principals,
        &s.not_principals,
        &f("principals"),
        &f("notPrincipals"),
        |v, _| Ok(Test::Principal(strs(v, &Str::NonEmpty))),
    )?;
    push(
        checks,
        &s.request_principals,
        &s.not_request_principals,
        &f("requestPrincipals"),
        &f("notRequestPrincipals"),
        |v, _| {
            Ok(Test::RequestPrincipal(
                v.iter().map(|p| JwtPrincipal::new(p)).collect(),
            ))
        },
    )?;
    push(
        checks,
        &s.namespaces,
        &s.not_namespaces,
        &f("namespaces"),
        &f("notNamespaces"),
        |v, _| Ok(Test::Namespace(v.to_vec())),
    )?;
    push(
        checks,
        &s.service_accounts,
        &s.not_service_accounts,
        &f("serviceAccounts"),
        &f("notServiceAccounts"),
        |v, field| service_accounts(v, field, namespace),
    )?;
    push(
        checks,
        &s.trust_domains,
        &s.not_trust_domains,
        &f("trustDomains"),
        &f("notTrustDomains"),
        |v, _| Ok(Test::TrustDomain(strs(v, &Str::NonEmpty))),
    )?;
    push(
        checks,
        &s.ip_blocks,
        &s.not_ip_blocks,
        &f("ipBlocks"),
        &f("notIpBlocks"),
        |v, field| Ok(Test::SourceIp(each(v, field, Cidr::parse)?)),
    )?;
    push(
        checks,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        &f("remoteIpBlocks"),
        &f("notRemoteIpBlocks"),
        |v, field| Ok(Test::RemoteIp(each(v, field, Cidr::parse)?)),
    )
}

fn compile_operation(
    o: &OperationSpec,
    at: &str,
    checks: &mut Vec<Check>,
) -> Result<(), ConfigError> {
    let f = |name: &str| format!("{at}.{name}");
    push(
        checks,
        &o.hosts,
        &o.not_hosts,
        &f("hosts"),
        &f("notHosts"),
        |v, _| Ok(Test::Host(v.iter().map(|h| Str::lowered(h)).collect())),
    )?;
    push(
        checks,
        &o.ports,
        &o.not_ports,
        &f("ports"),
        &f("notPorts"),
        |v, field| Ok(Test::Port(each(v, field, port)?)),
    )?;
    push(
        checks,
        &o.methods,
        &o.not_methods,
        &f("methods"),
        &f("notMethods"),
        |v, _| Ok(Test::Method(strs(v, &Str::Present))),
    )?;
    push(
        checks,
        &o.paths,
        &o.not_paths,
        &f("paths"),
        &f("notPaths"),
        |v, field| Ok(Test::Path(each(v, field, PathPattern::new)?)),
    )
}

fn service_accounts(values: &[String], field: &str, namespace: &str) -> Result<Test, ConfigError> {
    let accounts = each(values, field, |v| match v.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
            Ok((ns.to_string(), sa.to_string()))
        }
        None if !v.is_empty() => Ok((namespace.to_string(), v.to_string())),
        _ => Err(format!(
            "{v:?} is not `serviceAccount` or `namespace/serviceAccount`"
        )),
    })?;
    Ok(Test::ServiceAccount(accounts))
}

/// How a `when` condition's values are compiled, by its key.
type MakeTest<'a> = Box<dyn Fn(&[String], &str) -> Result<Test, ConfigError> + 'a>;

/// The compiler of a `when` key's values; `None` for the keys Istio knows that a gateway
/// cannot evaluate here (`destination.ip`: the listener's own address is not in the
/// request; `experimental.envoy.filters.*`: Envoy's metadata); an unknown key is a
/// config error, as in Istio.
fn condition<'a>(
    key: &str,
    field: &str,
    namespace: &'a str,
) -> Result<Option<MakeTest<'a>>, ConfigError> {
    let named = |prefix: &str| {
        key.strip_prefix(prefix)
            .and_then(|k| k.strip_prefix('['))
            .and_then(|k| k.strip_suffix(']'))
    };
    if key == "destination.ip" || key.starts_with("experimental.envoy.filters.") {
        return Ok(None);
    }
    Ok(Some(match key {
        "source.ip" => Box::new(|v, f| Ok(Test::SourceIp(each(v, f, Cidr::parse)?))),
        "remote.ip" => Box::new(|v, f| Ok(Test::RemoteIp(each(v, f, Cidr::parse)?))),
        "source.namespace" => Box::new(|v, _| Ok(Test::Namespace(v.to_vec()))),
        "source.principal" => Box::new(|v, _| Ok(Test::Principal(strs(v, &Str::NonEmpty)))),
        "source.serviceAccount" => Box::new(move |v, f| service_accounts(v, f, namespace)),
        "source.trustDomain" => Box::new(|v, _| Ok(Test::TrustDomain(strs(v, &Str::NonEmpty)))),
        "request.auth.principal" => Box::new(|v, _| {
            Ok(Test::RequestPrincipal(
                v.iter().map(|p| JwtPrincipal::new(p)).collect(),
            ))
        }),
        "request.auth.audiences" => Box::new(|v, _| Ok(Test::Audiences(strs(v, &Str::NonEmpty)))),
        "request.auth.presenter" => Box::new(|v, _| Ok(Test::Presenter(strs(v, &Str::NonEmpty)))),
        "destination.port" => Box::new(|v, f| Ok(Test::Port(each(v, f, port)?))),
        "connection.sni" => Box::new(|v, _| Ok(Test::Sni(strs(v, &Str::NonEmpty)))),
        _ if key.starts_with("request.headers[") => {
            let name = named("request.headers")
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    error(
                        field.into(),
                        format!("{key:?}: expected request.headers[<name>]"),
                    )
                })?
                .to_ascii_lowercase();
            Box::new(move |v, _| Ok(Test::Header(name.clone(), strs(v, &Str::Present))))
        }
        _ if key.starts_with("request.auth.claims[") => {
            let path = claim_path(&key["request.auth.claims".len()..]).ok_or_else(|| {
                error(
                    field.into(),
                    format!("{key:?}: expected request.auth.claims[<name>] or [<a>][<b>]"),
                )
            })?;
            Box::new(move |v, _| Ok(Test::Claim(path.clone(), strs(v, &Str::NonEmpty))))
        }
        _ => {
            return Err(error(field.into(), format!("unknown attribute {key:?}")));
        }
    }))
}

/// `[a][b]` as `["a", "b"]`; a name that holds brackets itself (`[a[b]`) is one name,
/// as Istio reads it.
fn claim_path(s: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let nested = rest.strip_prefix('[').and_then(|r| {
            r.find(['[', ']'])
                .filter(|&e| r.as_bytes()[e] == b']')
                .map(|e| (r, e))
        });
        match nested {
            Some((r, end)) => {
                names.push(r[..end].to_string());
                rest = &r[end + 1..];
            }
            None => {
                let whole = s.strip_prefix('[')?.strip_suffix(']')?;
                names = vec![whole.to_string()];
                break;
            }
        }
    }
    (!names.is_empty() && names.iter().all(|n| !n.is_empty())).then_some(names)
}

impl Compiled {
    fn matches(&self, facts: &Facts) -> bool {
        self.rules.iter().any(|r| r.matches(facts))
    }
}

impl Rule {
    /// The operation first: the request line is what most rules look at and costs the
    /// least to read; the JWT's claims (parsed JSON) last.
    fn matches(&self, facts: &Facts) -> bool {
        let all = |checks: &Vec<Check>| checks.iter().all(|c| c.passes(facts));
        self.to.iter().any(all)
            && self.from.iter().any(all)
            && self.when.iter().all(|c| c.passes(facts))
    }
}

impl Check {
    fn passes(&self, facts: &Facts) -> bool {
        self.test.matches(facts) != self.negated
    }
}

fn any_str(patterns: &[Str], value: Option<&str>) -> bool {
    value.is_some_and(|v| patterns.iter().any(|p| p.matches(v)))
}

fn any_ip(blocks: &[Cidr], ip: Option<IpAddr>) -> bool {
    ip.is_some_and(|ip| blocks.iter().any(|b| b.contains(ip)))
}

/// A claim as Envoy's metadata matcher sees it: a string, or a list with a matching
/// string; any other type never matches.
fn any_claim(patterns: &[Str], value: Option<&Value>) -> bool {
    let one = |v: &Value| {
        v.as_str()
            .is_some_and(|s| patterns.iter().any(|p| p.matches(s)))
    };
    match value {
        Some(Value::Array(items)) => items.iter().any(one),
        Some(v) => one(v),
        None => false,
    }
}

impl Test {
    /// Whether any value matches; an attribute the request lacks matches none.
    fn matches(&self, facts: &Facts) -> bool {
        match self {
            Test::Host(p) => any_str(p, Some(facts.host())),
            Test::Method(p) => any_str(p, Some(facts.request.method())),
            Test::Path(p) => {
                let path = facts.request.path();
                p.iter().any(|p| p.matches(path))
            }
            Test::Port(ports) => ports.contains(&facts.port()),
            Test::SourceIp(b) => any_ip(b, facts.peer()),
            Test::RemoteIp(b) => any_ip(b, facts.remote()),
            Test::Principal(p) => any_str(p, facts.principal()),
            Test::Namespace(n) => facts
                .spiffe()
                .is_some_and(|uri| n.iter().any(|n| pattern::namespace_matches(n, uri))),
            Test::ServiceAccount(a) => facts.principal().is_some_and(|principal| {
                a.iter()
                    .any(|(ns, sa)| pattern::service_account_matches(ns, sa, principal))
            }),
            // The trust domain: the principal up to its first `/`.
            Test::TrustDomain(p) => any_str(
                p,
                facts.principal().map(|p| match p.split_once('/') {
                    Some((domain, _)) => domain,
                    None => p,
                }),
            ),
            Test::RequestPrincipal(p) => facts
                .request_principal()
                .is_some_and(|rp| p.iter().any(|p| p.matches(rp))),
            Test::Audiences(p) => any_claim(p, facts.audiences()),
            Test::Presenter(p) => any_str(p, facts.presenter()),
            Test::Claim(path, p) => any_claim(p, facts.claim(path)),
            Test::Header(name, p) => facts.with_header(name, |v| any_str(p, v)),
            Test::Sni(p) => any_str(p, facts.sni()),
            Test::Always(matches) => *matches,
        }
    }
}

/// What the policies read of one request, each asked of the host at most once and only
/// when a check needs it (every read is a call across the Wasm boundary).
struct Facts<'a, 'r> {
    request: &'a Request<'r>,
    trusted_hops: u32,
    host: OnceCell<String>,
    port: OnceCell<u16>,
    peer: OnceCell<Option<IpAddr>>,
    remote: OnceCell<Option<IpAddr>>,
    principal: OnceCell<Option<String>>,
    spiffe: OnceCell<Option<String>>,
    request_principal: OnceCell<Option<String>>,
    audiences: OnceCell<Option<Value>>,
    presenter: OnceCell<Option<String>>,
    claims: OnceCell<Option<Value>>,
    sni: OnceCell<Option<String>>,
    headers: RefCell<Vec<(String, Option<String>)>>,
}

impl<'a, 'r> Facts<'a, 'r> {
    fn new(request: &'a Request<'r>, trusted_hops: u32) -> Self {
        Facts {
            request,
            trusted_hops,
            host: OnceCell::new(),
            port: OnceCell::new(),
            peer: OnceCell::new(),
            remote: OnceCell::new(),
            principal: OnceCell::new(),
            spiffe: OnceCell::new(),
            request_principal: OnceCell::new(),
            audiences: OnceCell::new(),
            presenter: OnceCell::new(),
            claims: OnceCell::new(),
            sni: OnceCell::new(),
            headers: RefCell::new(Vec::new()),
        }
    }

    /// The authority, lower-cased for `hosts`.
    fn host(&self) -> &str {
        self.host
            .get_or_init(|| self.request.authority().to_ascii_lowercase())
    }

    fn port(&self) -> u16 {
        *self.port.get_or_init(|| self.request.port())
    }

    fn peer(&self) -> Option<IpAddr> {
        *self
            .peer
            .get_or_init(|| parse_ip(&self.request.client_address()))
    }

    /// Envoy's trusted client address: with `use_remote_address` and N trusted hops, the
    /// Nth address from the right of the `x-forwarded-for` the client sent, else the
    /// peer. The gateway has appended the peer already, so that is N + 1 from the right
    /// of the header read here. An entry that is not an address gives the peer, as in
    /// Envoy.
    fn remote(&self) -> Option<IpAddr> {
        *self.remote.get_or_init(|| {
            if self.trusted_hops == 0 {
                return self.peer();
            }
            let xff = self
                .request
                .header_joined("x-forwarded-for")
                .unwrap_or_default();
            let mut rest = xff.as_str();
            for _ in 0..self.trusted_hops {
                match rest.rfind(',') {
                    Some(i) => rest = &rest[..i],
                    None => return self.peer(),
                }
            }
            let last = rest.rfind(',').map_or(rest, |i| &rest[i + 1..]);
            parse_ip(last.trim()).or_else(|| self.peer())
        })
    }

    fn principal(&self) -> Option<&str> {
        self.principal
            .get_or_init(|| self.request.property("source.principal"))
            .as_deref()
            .filter(|p| !p.is_empty())
    }

    /// The peer's SPIFFE URI, which Istio's namespace regex runs over.
    fn spiffe(&self) -> Option<&str> {
        self.spiffe
            .get_or_init(|| self.principal().map(|p| format!("spiffe://{p}")))
            .as_deref()
    }

    fn request_principal(&self) -> Option<&str> {
        self.request_principal
            .get_or_init(|| self.request.property("request.auth.principal"))
            .as_deref()
    }

    /// `request.auth.audiences`: a JSON list (a plain string is taken as one audience).
    fn audiences(&self) -> Option<&Value> {
        self.audiences
            .get_or_init(|| {
                let text = self.request.property("request.auth.audiences")?;
                Some(serde_json::from_str(&text).unwrap_or(Value::String(text)))
            })
            .as_ref()
    }

    fn presenter(&self) -> Option<&str> {
        self.presenter
            .get_or_init(|| self.request.property("request.auth.presenter"))
            .as_deref()
    }

    /// A claim at `path` of the JWT payload (`request.auth.claims`, a JSON object).
    fn claim(&self, path: &[String]) -> Option<&Value> {
        let claims = self
            .claims
            .get_or_init(|| {
                let text = self.request.property("request.auth.claims")?;
                serde_json::from_str(&text).ok()
            })
            .as_ref()?;
        path.iter()
            .try_fold(claims, |v, name| v.as_object()?.get(name.as_str()))
    }

    fn sni(&self) -> Option<&str> {
        self.sni.get_or_init(|| self.request.sni()).as_deref()
    }

    /// Header `name` (lower case) as Envoy's header matcher sees it: every value, joined
    /// with `,`; `None` when absent.
    fn with_header<T>(&self, name: &str, f: impl FnOnce(Option<&str>) -> T) -> T {
        let mut cache = self.headers.borrow_mut();
        let index = match cache.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                cache.push((name.to_string(), self.request.header_joined(name)));
                cache.len() - 1
            }
        };
        f(cache[index].1.as_deref())
    }
}
