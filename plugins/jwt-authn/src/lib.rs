//! First-party policy: Istio `RequestAuthentication`, enforced as Envoy's `jwt_authn`
//! filter enforces it when Istio configures it. The gateway gathers the jwtRules that
//! apply to a VirtualService into `pluginConfig` (JWKS fetched by the host):
//!
//! ```json
//! {"rules": [{"policy": "default/jwt-example", "issuer": "testing@secure.istio.io",
//!             "audiences": ["a"], "jwks": "{\"keys\":[...]}",
//!             "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}],
//!             "fromParams": ["token"], "fromCookies": ["session"],
//!             "outputPayloadToHeader": "x-jwt-payload",
//!             "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
//!             "forwardOriginalToken": false}]}
//! ```
//!
//! Istio asks Envoy for `requires_any: [each rule's provider..., allow_missing]`: a
//! request without a token passes (with no principal), one with a token passes only if
//! the token verifies. A failure is answered as Envoy answers it: 401 (403 for audiences)
//! with jwt_verify_lib's text. A verified token sets `request.auth.principal`
//! (`<iss>/<sub>`), `request.auth.audiences`, `request.auth.presenter` and
//! `request.auth.claims` for the policies after it (the AuthorizationPolicy component).

mod jwks;
mod jwt;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use wasmgate_plugin_sdk::host::{Level, log};
use wasmgate_plugin_sdk::{
    Action, Binding, ConfigError, DirectResponse, Edit, Header, PluginError, Policy, Request,
    clock, export_policy, parse_config,
};

pub use jwt::{CLOCK_SKEW_SECONDS, Failure};

/// Verified tokens kept per instance, so a repeated token costs no signature check.
pub const CACHE_CAPACITY: usize = 256;
/// The most tokens one request may carry (Envoy sets no bound; a request with more is
/// refused with 401 `Jwt verification fails`).
const MAX_TOKENS: usize = 8;
/// Larger tokens are verified every time rather than kept (bounds the cache's memory).
pub const CACHE_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Envoy's `MaximumUriLength`: the path in the `www-authenticate` realm is cut here.
const REALM_MAX_PATH: usize = 256;

/// The log field (and so the access log's `key=value`) naming why a token was refused.
pub const LOG_FIELD: &str = "jwt_authn";

#[derive(Debug, Default, Deserialize)]
struct Config {
    rules: Option<Vec<RuleConfig>>,
}

/// One jwtRule of a RequestAuthentication, in Istio's field names. Unknown fields are
/// ignored: the host validated the resource already.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleConfig {
    policy: Option<String>,
    issuer: String,
    audiences: Option<Vec<String>>,
    /// JWKS text; `null` when the host could not fetch `jwksUri`.
    jwks: Option<String>,
    /// The JWKS came from `jwksUri` (the host set it): keys an identity provider
    /// published that this component cannot use fail that issuer's tokens, as a fetch
    /// that failed does, instead of refusing the gateway's whole config.
    #[serde(default)]
    jwks_fetched: bool,
    from_headers: Option<Vec<FromHeader>>,
    from_params: Option<Vec<String>>,
    from_cookies: Option<Vec<String>>,
    output_payload_to_header: Option<String>,
    output_claim_to_headers: Option<Vec<ClaimToHeader>>,
    forward_original_token: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct FromHeader {
    name: String,
    prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ClaimToHeader {
    header: String,
    claim: String,
}

/// Where a rule looks for its token.
#[derive(Debug, Clone, PartialEq)]
enum Location {
    /// Header (lowercase) and the prefix its value must contain before the token.
    Header {
        name: String,
        prefix: String,
    },
    Param(String),
    Cookie(String),
}

/// A jwtRule ready to verify with.
#[derive(Debug)]
struct Rule {
    policy: String,
    issuer: String,
    audiences: Vec<String>,
    /// `None`: the host could not fetch the JWKS.
    jwks: Option<jwks::Jwks>,
    locations: Vec<Location>,
    payload_header: Option<String>,
    claim_headers: Vec<(String, String)>,
    forward: bool,
}

/// The policy: the rules of every RequestAuthentication bound to the VirtualService, and
/// the tokens this instance verified.
#[derive(Debug)]
pub struct JwtAuthn {
    rules: Vec<Rule>,
    cache: RefCell<Cache>,
}

impl Policy for JwtAuthn {
    fn prepare(_binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        let config: Config = parse_config(config)?;
        let rules = config
            .rules
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, r)| Rule::compile(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JwtAuthn {
            rules,
            cache: RefCell::new(Cache::default()),
        })
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        if self.rules.is_empty() {
            return Ok(Edit::keep());
        }
        let mut incoming = Incoming::new(request);
        let outcome = self.authenticate(&mut incoming)?;
        let mut edit = match outcome {
            Outcome::Failed(failure) => return Ok(reject(request, failure)),
            Outcome::NoToken => Edit::keep(),
            Outcome::Passed(good) => {
                let mut edit = Edit::keep();
                self.sanitize(&mut edit);
                self.forward_outputs(&good, &mut edit);
                set_properties(request, &good)?;
                return Ok(edit);
            }
        };
        self.sanitize(&mut edit);
        Ok(edit)
    }
}

export_policy!(JwtAuthn);

impl Rule {
    fn compile(index: usize, r: RuleConfig) -> Result<Rule, ConfigError> {
        let jwks = match &r.jwks {
            None => None,
            Some(text) => match jwks::Jwks::parse(text) {
                Ok(keys) => Some(keys),
                Err(f) if r.jwks_fetched => {
                    log(
                        Level::Warn,
                        &format!(
                            "jwt-authn: the JWKS fetched for issuer {}: {}; its tokens are refused",
                            r.issuer,
                            f.text()
                        ),
                    );
                    None
                }
                Err(f) => {
                    return Err(ConfigError {
                        field: format!("rules[{index}].jwks"),
                        message: f.text().to_string(),
                    });
                }
            },
        };
        let mut locations: Vec<Location> = Vec::new();
        for h in r.from_headers.unwrap_or_default() {
            locations.push(Location::Header {
                name: h.name.to_ascii_lowercase(),
                prefix: h.prefix.unwrap_or_default(),
            });
        }
        locations.extend(
            r.from_params
                .unwrap_or_default()
                .into_iter()
                .map(Location::Param),
        );
        locations.extend(
            r.from_cookies
                .unwrap_or_default()
                .into_iter()
                .map(Location::Cookie),
        );
        // Envoy's defaults when a rule names no location at all.
        if locations.is_empty() {
            locations.push(Location::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            });
            locations.push(Location::Param("access_token".into()));
        }
        Ok(Rule {
            policy: r.policy.unwrap_or_default(),
            issuer: r.issuer,
            audiences: r.audiences.unwrap_or_default(),
            jwks,
            locations,
            payload_header: r
                .output_payload_to_header
                .filter(|h| !h.is_empty())
                .map(|h| h.to_ascii_lowercase()),
            claim_headers: r
                .output_claim_to_headers
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.header.to_ascii_lowercase(), c.claim))
                .collect(),
            forward: r.forward_original_token.unwrap_or(false),
        })
    }
}

/// A token found in the request.
#[derive(Debug)]
struct Found {
    token: String,
    /// The header it came from (removed unless the rule forwards the token); `None` for a
    /// query parameter or cookie, which Envoy leaves in place.
    header: Option<String>,
    /// Rules (indexes) that look in this location: only their issuers may sign it.
    rules: Vec<usize>,
}

/// A token that verified, and the rule it verified under.
#[derive(Debug)]
struct Good {
    rule: usize,
    jwt: Rc<jwt::Jwt>,
    header: Option<String>,
}

#[derive(Debug)]
enum Outcome {
    NoToken,
    Passed(Vec<Good>),
    Failed(Failure),
}

impl JwtAuthn {
    /// Envoy's `requires_any` over each rule's provider, then `allow_missing`: the first
    /// rule all of whose tokens verify passes the request; otherwise `allow_missing`
    /// decides over the tokens of every rule: none passes, and else the status of the last
    /// token it checks (Envoy checks them last found first) is the answer.
    fn authenticate(&self, incoming: &mut Incoming) -> Result<Outcome, PluginError> {
        let all: Vec<usize> = (0..self.rules.len()).collect();
        let found = self.extract(incoming, &all);
        if found.is_empty() {
            return Ok(Outcome::NoToken);
        }
        // A request is no place for more tokens than this: many bad ones would cost a
        // signature check each, and a client could push the component past its time
        // budget (and its breaker open for everyone). Refused as a bad token is.
        if found.len() > MAX_TOKENS {
            return Ok(Outcome::Failed(Failure::VerificationFail));
        }
        let now = clock::now_secs().map_err(|message| PluginError {
            message: format!("jwt-authn needs the wall clock: {message}"),
        })?;
        let mut failed = Vec::new();
        for rule in 0..self.rules.len() {
            let tokens = self.extract(incoming, &[rule]);
            if tokens.is_empty() {
                continue;
            }
            let mut good = Vec::new();
            for f in tokens.iter().rev() {
                match self.verify(&f.token, &f.rules, now, &mut failed) {
                    Ok((rule, jwt)) => good.push(Good {
                        rule,
                        jwt,
                        header: f.header.clone(),
                    }),
                    Err(_) => break,
                }
            }
            if good.len() == tokens.len() {
                return Ok(Outcome::Passed(good));
            }
        }
        let mut good = Vec::new();
        let mut last = Ok(());
        for f in found.iter().rev() {
            last = self
                .verify(&f.token, &f.rules, now, &mut failed)
                .map(|(rule, jwt)| {
                    good.push(Good {
                        rule,
                        jwt,
                        header: f.header.clone(),
                    })
                });
        }
        Ok(match last {
            Ok(()) => Outcome::Passed(good),
            Err(failure) => Outcome::Failed(failure),
        })
    }

    /// The tokens in the locations of `rules`, in Envoy's order: headers, then query
    /// parameters, then cookies, each kind by name (and prefix).
    fn extract(&self, incoming: &mut Incoming, rules: &[usize]) -> Vec<Found> {
        let mut headers: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        let mut params: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut cookies: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in rules {
            for location in &self.rules[i].locations {
                let users = match location {
                    Location::Header { name, prefix } => {
                        headers.entry((name.clone(), prefix.clone())).or_default()
                    }
                    Location::Param(name) => params.entry(name.clone()).or_default(),
                    Location::Cookie(name) => cookies.entry(name.clone()).or_default(),
                };
                if !users.contains(&i) {
                    users.push(i);
                }
            }
        }
        let mut found = Vec::new();
        for ((name, prefix), users) in headers {
            for value in incoming.header_values(&name) {
                let token = if prefix.is_empty() {
                    value.as_str()
                } else {
                    match value.find(prefix.as_str()) {
                        Some(at) => token_after(&value, at + prefix.len()),
                        None => continue,
                    }
                };
                found.push(Found {
                    token: token.to_string(),
                    header: Some(name.clone()),
                    rules: users.clone(),
                });
            }
        }
        for (name, users) in params {
            if let Some(token) = incoming.request.query_param(&name) {
                found.push(Found {
                    token,
                    header: None,
                    rules: users,
                });
            }
        }
        for (name, users) in cookies {
            if let Some(token) = incoming.cookie(&name) {
                found.push(Found {
                    token,
                    header: None,
                    rules: users,
                });
            }
        }
        found
    }

    /// Verify one token found where `allowed` rules look, in Envoy's order: parse, issuer,
    /// time, audiences, JWKS, signature. A cached token skips parsing and the signature;
    /// `failed` remembers this request's signature failures (a token checked twice, by
    /// its rule and by `allow_missing`, costs one check).
    fn verify(
        &self,
        token: &str,
        allowed: &[usize],
        now: u64,
        failed: &mut Vec<(usize, [u8; 32], Failure)>,
    ) -> Result<(usize, Rc<jwt::Jwt>), Failure> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = {
            let mut cache = self.cache.borrow_mut();
            allowed
                .iter()
                .find_map(|&r| cache.get(r, &hash, now).map(|j| (r, j)))
        };
        let (jwt, cached_rule) = match cached {
            Some((r, jwt)) => (jwt, Some(r)),
            None => (Rc::new(jwt::Jwt::parse(token)?), None),
        };
        let rule_index = allowed
            .iter()
            .copied()
            .find(|&r| self.rules[r].issuer == jwt.iss)
            .ok_or(Failure::UnknownIssuer)?;
        let rule = &self.rules[rule_index];
        jwt.check_time(now)?;
        if !jwt::audience_allowed(&rule.audiences, &jwt.audiences) {
            return Err(Failure::AudienceNotAllowed);
        }
        if cached_rule != Some(rule_index) {
            if let Some((_, _, f)) = failed
                .iter()
                .find(|(r, h, _)| *r == rule_index && *h == hash)
            {
                return Err(*f);
            }
            let keys = rule.jwks.as_ref().ok_or(Failure::JwksFetchFail)?;
            if let Err(f) = keys.verify(&jwt) {
                failed.push((rule_index, hash, f));
                return Err(f);
            }
            if token.len() <= CACHE_MAX_TOKEN_BYTES {
                self.cache
                    .borrow_mut()
                    .insert(rule_index, hash, jwt.clone(), now);
            }
        }
        Ok((rule_index, jwt))
    }

    /// Remove the output headers of every rule from the request, as Envoy's extractor
    /// does (`sanitizePayloadHeaders`): a client cannot send what looks like a verified
    /// payload or claim.
    fn sanitize(&self, edit: &mut Edit) {
        let mut removed: Vec<&str> = Vec::new();
        for rule in &self.rules {
            let names = rule
                .payload_header
                .iter()
                .chain(rule.claim_headers.iter().map(|(h, _)| h));
            for name in names {
                if !removed.contains(&name.as_str()) {
                    removed.push(name);
                    edit.remove_request_header(name);
                }
            }
        }
    }

    /// What each verified token's rule sends upstream: the token removed from its header
    /// unless forwarded, the payload and the claims in their headers.
    fn forward_outputs(&self, good: &[Good], edit: &mut Edit) {
        for g in good {
            let rule = &self.rules[g.rule];
            if let Some(name) = &rule.payload_header {
                edit.add_request_header(name, &g.jwt.payload_base64url);
            }
            for (header, claim) in &rule.claim_headers {
                if let Some(value) = claim_text(&g.jwt.payload, claim) {
                    edit.add_request_header(header, &value);
                }
            }
            if !rule.forward
                && let Some(name) = &g.header
            {
                edit.remove_request_header(name);
            }
            log(
                Level::Debug,
                &format!(
                    "jwt-authn: token of {} verified by {}",
                    g.jwt.iss,
                    if rule.policy.is_empty() {
                        "a RequestAuthentication"
                    } else {
                        &rule.policy
                    }
                ),
            );
        }
    }
}

/// The request's `request.auth.*` properties from the verified token whose issuer sorts
/// first (as Istio picks one of several). One the host refuses fails the request (the
/// component fails closed): an authorization policy must never miss a claim.
fn set_properties(request: &Request, good: &[Good]) -> Result<(), PluginError> {
    let Some(g) = good.iter().min_by(|a, b| a.jwt.iss.cmp(&b.jwt.iss)) else {
        return Ok(());
    };
    let jwt = &g.jwt;
    let principal = format!("{}/{}", jwt.iss, jwt.sub);
    let mut properties = vec![
        ("request.auth.principal", principal.as_str()),
        ("request.auth.audiences", jwt.audiences_json.as_str()),
        ("request.auth.claims", jwt.claims_json.as_str()),
    ];
    if let Some(Value::String(azp)) = jwt.payload.get("azp") {
        properties.push(("request.auth.presenter", azp.as_str()));
    }
    for (name, value) in properties {
        request
            .set_property(name, Some(value))
            .map_err(|e| PluginError {
                message: format!("jwt-authn: {name} not set: {e}"),
            })?;
    }
    Ok(())
}

/// A claim's value as Envoy writes it into a header (`addJWTClaimToHeader`): a string
/// as it is, a bool as `true`/`false`, a number as an integer when it is a non-negative
/// whole one and otherwise as C's `%f`; anything else (object, array, null, empty
/// string) is no header. `a.b` names claim `b` inside claim `a`.
fn claim_text(payload: &serde_json::Map<String, Value>, claim: &str) -> Option<String> {
    let mut parts = claim.split('.');
    let mut value = payload.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u.to_string(),
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => {
                (f as u64).to_string()
            }
            (None, Some(f)) => format!("{f:.6}"),
            (None, None) => return None,
        },
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// Envoy's local reply for a refused token: the status text as the body, and
/// `www-authenticate: Bearer realm="<scheme>://<host><path>", error="invalid_token"`.
fn reject(request: &Request, failure: Failure) -> Edit {
    let mut path = request.path().to_string();
    if !request.query().is_empty() {
        path.push('?');
        path.push_str(request.query());
    }
    if path.len() > REALM_MAX_PATH {
        let mut cut = REALM_MAX_PATH;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path.truncate(cut);
    }
    let realm = format!(
        "Bearer realm=\"{}://{}{}\", error=\"invalid_token\"",
        request.scheme(),
        request.authority(),
        path
    );
    let text = failure.text();
    let mut edit = Edit::action(Action::Respond(DirectResponse {
        status: failure.http_status(),
        headers: vec![
            Header::new("www-authenticate", realm),
            Header::new("content-type", "text/plain"),
        ],
        body: text.as_bytes().to_vec(),
    }));
    edit.log_field(LOG_FIELD, text);
    edit
}

/// Envoy's `extractJWT`: from `after`, skip to the first base64url character (or dot)
/// and take the rest; when there is none, the whole value.
fn token_after(value: &str, after: usize) -> &str {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    match value.get(after..).and_then(|rest| rest.find(legal)) {
        Some(start) => &value[after + start..],
        None => value,
    }
}

/// The request as this policy reads it, each header and the cookies asked of the host
/// once.
struct Incoming<'r, 'a> {
    request: &'r Request<'a>,
    headers: HashMap<String, Vec<String>>,
    cookies: Option<HashMap<String, String>>,
}

impl<'r, 'a> Incoming<'r, 'a> {
    fn new(request: &'r Request<'a>) -> Self {
        Incoming {
            request,
            headers: HashMap::new(),
            cookies: None,
        }
    }

    fn header_values(&mut self, name: &str) -> Vec<String> {
        if let Some(v) = self.headers.get(name) {
            return v.clone();
        }
        let values = self.request.header_values(name);
        self.headers.insert(name.to_string(), values.clone());
        values
    }

    /// A cookie as Envoy's `parseCookies` reads `cookie` headers: `k=v` pairs split on
    /// `;`, leading spaces dropped, a quoted value unquoted, the first of a name kept.
    fn cookie(&mut self, name: &str) -> Option<String> {
        if self.cookies.is_none() {
            let mut cookies = HashMap::new();
            for header in self.header_values("cookie") {
                for pair in header.split(';') {
                    let Some((k, v)) = pair.trim_start().split_once('=') else {
                        continue;
                    };
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(v);
                    cookies
                        .entry(k.to_string())
                        .or_insert_with(|| v.to_string());
                }
            }
            self.cookies = Some(cookies);
        }
        self.cookies.as_ref()?.get(name).cloned()
    }
}

/// Tokens verified by this instance, by rule and token hash, each kept until it expires
/// (and at most [`CACHE_CAPACITY`], the oldest going first).
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<(usize, [u8; 32]), (Rc<jwt::Jwt>, u64)>,
    inserted: u64,
}

impl Cache {
    fn get(&mut self, rule: usize, hash: &[u8; 32], now: u64) -> Option<Rc<jwt::Jwt>> {
        let key = (rule, *hash);
        let (jwt, _) = self.entries.get(&key)?;
        if expired(jwt, now) {
            self.entries.remove(&key);
            return None;
        }
        Some(jwt.clone())
    }

    fn insert(&mut self, rule: usize, hash: [u8; 32], jwt: Rc<jwt::Jwt>, now: u64) {
        if self.entries.len() >= CACHE_CAPACITY {
            self.entries.retain(|_, (j, _)| !expired(j, now));
        }
        if self.entries.len() >= CACHE_CAPACITY
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k)
        {
            self.entries.remove(&oldest);
        }
        self.inserted += 1;
        self.entries.insert((rule, hash), (jwt, self.inserted));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

fn expired(jwt: &jwt::Jwt, now: u64) -> bool {
    jwt.exp != 0 && now > jwt.exp.saturating_add(CLOCK_SKEW_SECONDS)
}

#[cfg(test)]
mod tests;
