//! The matchers Istio's AuthorizationPolicy values turn into, each compiled once at
//! `prepare`: Istio's string forms (exact, `abc*`, `*abc`, `*`), IP blocks, URI path
//! templates, and the peer-identity forms (namespace globs, service accounts, JWT
//! `iss/sub`). Each mirrors the Envoy matcher Istio generates for it
//! (pilot/pkg/security/authz/{model,matcher}).

use std::net::IpAddr;

/// One string value of a policy, as Istio converts it for Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Str {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*` of a header matcher (`:method`, `:authority`, `request.headers[..]`): the
    /// header is there, even empty (Envoy's `present_match`).
    Present,
    /// `*` of a string matcher (paths, principals, claims, SNI): the regex `.+`.
    NonEmpty,
}

impl Str {
    /// Istio's conversion: `*` first (an empty prefix or suffix is invalid in Envoy), then
    /// a leading `*` (suffix), then a trailing one (prefix), else exact. `star` is what a
    /// lone `*` means where this value is used.
    pub fn new(value: &str, star: Str) -> Str {
        if value == "*" {
            star
        } else if let Some(suffix) = value.strip_prefix('*') {
            Str::Suffix(suffix.to_string())
        } else if let Some(prefix) = value.strip_suffix('*') {
            Str::Prefix(prefix.to_string())
        } else {
            Str::Exact(value.to_string())
        }
    }

    /// The same, lower-cased: `hosts` compare case-insensitively (Envoy's `ignore_case`),
    /// so the pattern is lowered here and the authority once per request.
    pub fn lowered(value: &str) -> Str {
        Str::new(&value.to_ascii_lowercase(), Str::Present)
    }

    pub fn matches(&self, text: &str) -> bool {
        match self {
            Str::Exact(v) => text == v,
            Str::Prefix(v) => text.starts_with(v.as_str()),
            Str::Suffix(v) => text.ends_with(v.as_str()),
            Str::Present => true,
            Str::NonEmpty => !text.is_empty(),
        }
    }
}

/// An IP block: a single address (a full-length prefix) or a CIDR, v4 or v6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `203.0.113.4`, `2001:db8::/32`, `::1`. Host bits past the prefix
    /// are ignored, as Envoy's `CidrRange` masks them.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, bits) = match text.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.parse::<u8>() {
                Ok(n) if n <= max && !b.starts_with('+') => n,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { addr, bits })
    }

    /// Whether `ip` is inside; an address of the other family never is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A request's address as text, IPv4-mapped IPv6 as IPv4 (the gateway writes
/// `x-forwarded-for` that way too); `None` when it is not an address.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    let ip: IpAddr = text.parse().ok()?;
    Some(ip.to_canonical())
}

/// A `paths` value: Istio's string forms, or a URI template when it holds `{*}` or `{**}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Str(Str),
    Template(Vec<Segment>),
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{*}`: exactly one segment, at least one character.
    One,
    /// `{**}`: the rest of the path, `/` included; the last segment only.
    Rest,
}

impl PathPattern {
    pub fn new(value: &str) -> Result<PathPattern, String> {
        if !value.contains("{*}") && !value.contains("{**}") {
            return Ok(PathPattern::Str(Str::new(value, Str::NonEmpty)));
        }
        let Some(body) = value.strip_prefix('/') else {
            return Err(format!("path template {value:?} must start with /"));
        };
        let mut segments = Vec::new();
        for (i, part) in body.split('/').enumerate() {
            if segments.last() == Some(&Segment::Rest) {
                return Err(format!("{{**}} must be the last segment of {value:?}"));
            }
            segments.push(match part {
                "{*}" => Segment::One,
                "{**}" => Segment::Rest,
                _ if part.contains(['{', '}']) => {
                    return Err(format!(
                        "segment {} of {value:?}: only whole segments {{*}} and {{**}} are templates",
                        i + 1
                    ));
                }
                _ => Segment::Literal(part.to_string()),
            });
        }
        Ok(PathPattern::Template(segments))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Str(s) => s.matches(path),
            PathPattern::Template(segments) => template_matches(segments, path),
        }
    }
}

/// The characters Envoy's URI template globs match: RFC 3986 pchar without `*` (its
/// `kLiteral`); `{**}` also takes `/`.
fn pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b)
}

/// Envoy's template regex, `/seg/seg...`, as a left-to-right scan: a `{*}` cannot take a
/// `/`, so nothing needs backtracking.
fn template_matches(segments: &[Segment], path: &str) -> bool {
    let Some(mut rest) = path.strip_prefix('/') else {
        return false;
    };
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Rest => return rest.bytes().all(|b| b == b'/' || pchar(b)),
            Segment::One => {
                let end = rest.find('/').unwrap_or(rest.len());
                if end == 0 || !rest.as_bytes()[..end].iter().all(|&b| pchar(b)) {
                    return false;
                }
                rest = &rest[end..];
            }
            Segment::Literal(text) => match rest.strip_prefix(text.as_str()) {
                Some(r) => rest = r,
                None => return false,
            },
        }
        if i + 1 < segments.len() {
            match rest.strip_prefix('/') {
                Some(r) => rest = r,
                None => return false,
            }
        }
    }
    rest.is_empty()
}

/// `*` globs (Istio turns a namespace's `*` into the regex `.*`).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// `namespaces`: Istio's regex `.*/ns/<value>/.*` over the peer's SPIFFE URI
/// (`spiffe://` + `principal`), `*` in the value as `.*`.
pub fn namespace_matches(pattern: &str, uri: &str) -> bool {
    uri.match_indices("/ns/").any(|(i, _)| {
        let rest = &uri[i + 4..];
        rest.match_indices('/')
            .any(|(j, _)| glob(pattern, &rest[..j]))
    })
}

/// `serviceAccounts` (`ns/sa`, or `sa` in the policy's namespace): Istio's regex
/// `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?` over the peer's SPIFFE URI; here over the
/// principal, which is that URI without `spiffe://`.
pub fn service_account_matches(namespace: &str, account: &str, principal: &str) -> bool {
    let ns = format!("/ns/{namespace}/");
    let sa = format!("sa/{account}");
    principal.match_indices(ns.as_str()).any(|(i, _)| {
        if i == 0 {
            return false; // `.+` before it
        }
        let rest = &principal[i + ns.len()..];
        rest.match_indices(sa.as_str()).any(|(q, _)| {
            let before_ok = q == 0 || (q >= 2 && rest.as_bytes()[q - 1] == b'/');
            let after = &rest[q + sa.len()..];
            before_ok && (after.is_empty() || (after.starts_with('/') && after.len() > 1))
        })
    })
}

/// A `requestPrincipals` value, split as Istio splits it at its last `/` into matchers
/// of the JWT's `iss` and `sub` claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtPrincipal {
    iss: Str,
    sub: Str,
}

impl JwtPrincipal {
    pub fn new(value: &str) -> JwtPrincipal {
        let split = value.rfind('/').map(|i| (&value[..i], &value[i + 1..]));
        let (iss, sub) = match (value, split) {
            ("*", _) => (Str::NonEmpty, Str::NonEmpty),
            (v, Some((iss, sub))) if v.starts_with('*') => {
                let iss = match iss {
                    "*" => Str::NonEmpty,
                    _ => Str::Suffix(iss[1..].to_string()),
                };
                (iss, Str::Exact(sub.to_string()))
            }
            (v, None) if v.starts_with('*') => (Str::NonEmpty, Str::Suffix(v[1..].to_string())),
            (v, Some((iss, sub))) if v.ends_with('*') => {
                let sub = match sub {
                    "*" => Str::NonEmpty,
                    _ => Str::Prefix(sub[..sub.len() - 1].to_string()),
                };
                (Str::Exact(iss.to_string()), sub)
            }
            (v, None) if v.ends_with('*') => {
                (Str::Prefix(v[..v.len() - 1].to_string()), Str::NonEmpty)
            }
            (_, Some((iss, sub))) => (Str::Exact(iss.to_string()), Str::Exact(sub.to_string())),
            (v, None) => (Str::Exact(v.to_string()), Str::Exact(String::new())),
        };
        JwtPrincipal { iss, sub }
    }

    /// `principal` is `iss/sub` as the JWT component sets it; split at its last `/` (an
    /// issuer is often a URL, a subject rarely holds a `/`). Without a `/` there is no
    /// subject, and Envoy's matcher of a missing claim fails.
    pub fn matches(&self, principal: &str) -> bool {
        match principal.rfind('/') {
            Some(i) => self.iss.matches(&principal[..i]) && self.sub.matches(&principal[i + 1..]),
            None => false,
        }
    }
}
