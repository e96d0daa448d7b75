//! Stage two: Istio's validation rules (pkg/config/validation and the CRD schemas) applied
//! to the raw types, one kind per submodule, each also building the model. Rules Istio
//! enforces are errors; things Istio accepts that wasmgate will not honour are warnings.
//! This module holds the collector and the checks several kinds share.

pub(crate) mod destination_rule;
pub(crate) mod gateway;
pub(crate) mod ingress;
pub(crate) mod secret;
pub(crate) mod security;
pub(crate) mod service_entry;
pub(crate) mod telemetry;
pub mod virtual_service;
pub(crate) mod wasm_plugin;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::host::{is_dns_label, is_k8s_label};
use crate::raw;
use crate::yaml::FieldPath;

/// A problem found at a field path (`None`: the resource as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub path: Option<FieldPath>,
    pub message: String,
}

/// Collects the errors and warnings of one resource.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub errors: Vec<Issue>,
    pub warnings: Vec<Issue>,
}

impl Report {
    pub fn err(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.errors.push(Issue {
            path: Some(path.clone()),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.warnings.push(Issue {
            path: Some(path.clone()),
            message: message.into(),
        });
    }

    /// Records `result`'s error, if any, at `path`.
    pub fn check(&mut self, path: &FieldPath, result: Result<(), String>) {
        if let Err(e) = result {
            self.err(path, e);
        }
    }
}

/// The port range every port field shares.
pub(crate) fn validate_port(port: u32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("port number {port} must be in the range 1..65535"))
    }
}

/// A port number known to be valid, as `u16`.
pub(crate) fn port_u16(port: u32) -> u16 {
    u16::try_from(port).unwrap_or(0)
}

/// Parses a duration field; reports a parse error and returns `None`.
pub(crate) fn duration(r: &mut Report, path: &FieldPath, value: &str) -> Option<Duration> {
    match crate::parse_duration(value) {
        Ok(d) => Some(d),
        Err(e) => {
            r.err(path, e);
            None
        }
    }
}

/// Istio's rule for most durations: at least 1ms, in whole milliseconds.
pub(crate) fn istio_duration(r: &mut Report, path: &FieldPath, value: &str) -> Option<Duration> {
    let d = duration(r, path, value)?;
    if d < Duration::from_millis(1) {
        r.err(path, format!("duration {value:?} must be at least 1ms"));
        return None;
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        r.err(
            path,
            format!("duration {value:?}: only millisecond precision is supported"),
        );
        return None;
    }
    Some(d)
}

/// [`istio_duration`] for an optional field.
pub(crate) fn opt_istio_duration(
    r: &mut Report,
    path: &FieldPath,
    value: &Option<String>,
) -> Option<Duration> {
    value.as_deref().and_then(|v| istio_duration(r, path, v))
}

/// Kubernetes label keys (`[prefix/]name`) and values, as Istio's `labels.Instance`.
pub(crate) fn validate_labels(r: &mut Report, path: &FieldPath, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if let Err(e) = validate_label_key(k) {
            r.err(&path.key(k), e);
        }
        if !is_label_value(v) {
            r.err(&path.key(k), format!("invalid label value {v:?}"));
        }
    }
}

fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

pub(crate) fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_qualified_name(v)
}

pub(crate) fn validate_label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !p.split('.').all(is_dns_label))
    {
        return Err(format!("invalid label key {k:?}"));
    }
    if !is_qualified_name(name) {
        return Err(format!("invalid label key {k:?}"));
    }
    Ok(())
}

/// `exportTo`: `.`, `*`, `~` (ServiceEntry only) or namespace names, without duplicates.
pub(crate) fn validate_export_to(
    r: &mut Report,
    path: &FieldPath,
    namespace: &str,
    export_to: &[String],
    is_service_entry: bool,
    dr_with_selector: bool,
) {
    let mut seen = BTreeSet::new();
    for (i, e) in export_to.iter().enumerate() {
        let p = path.index(i);
        let key = if e == "." { namespace } else { e.as_str() };
        if !seen.insert(key.to_string()) {
            if key != e {
                r.err(
                    &p,
                    format!("duplicate entries in exportTo: . and current namespace {namespace}"),
                );
            } else {
                r.err(&p, format!("duplicate entries in exportTo for entry {e}"));
            }
            continue;
        }
        let valid = key == "*" || (key == "~" && is_service_entry) || is_k8s_label(key);
        if !valid {
            r.err(
                &p,
                format!("invalid exportTo value {e:?}: must be \".\", \"*\" or a namespace"),
            );
        }
    }
    if dr_with_selector && !seen.is_empty() {
        if !seen.contains(namespace) {
            r.err(path, "destination rule with workload selector cannot have exportTo beyond current namespace");
        } else if seen.len() > 1 {
            r.err(
                path,
                "destination rule with workload selector cannot have multiple entries in exportTo",
            );
        }
    }
    if seen.contains("*") && export_to.len() > 1 {
        r.err(
            path,
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if seen.contains("~") && export_to.len() > 1 {
        r.err(
            path,
            "cannot export service entry to no one (~) and someone",
        );
    }
}

/// Istio's regex checks: not empty, at most 1024 bytes, compiles (RE2 syntax).
pub(crate) fn validate_regex(r: &mut Report, path: &FieldPath, re: &str) {
    if re.is_empty() {
        r.err(path, "regex must not be empty");
    } else if re.len() > 1024 {
        r.err(path, "regex is too large, max length allowed is 1024");
    } else if let Err(e) = regex::Regex::new(re) {
        let detail = e.to_string();
        let last = detail.lines().last().unwrap_or_default().trim();
        let last = last.strip_prefix("error: ").unwrap_or(last);
        r.err(path, format!("invalid regex {re:?}: {last}"));
    }
}

/// How a `StringMatch` is used: some places accept an empty prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MatchUse {
    /// `uri`: an empty prefix is allowed.
    Uri,
    /// headers, queryParams, scheme, method, authority.
    Value,
}

/// A `StringMatch`: at most one of exact/prefix/regex; a prefix other than on `uri` must
/// not be empty; a regex must compile.
pub(crate) fn validate_string_match(
    r: &mut Report,
    path: &FieldPath,
    m: &raw::StringMatch,
    use_: MatchUse,
) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set > 1 {
        r.err(path, "only one of exact, prefix or regex may be set");
        return;
    }
    if let Some(p) = &m.prefix
        && p.is_empty()
        && use_ == MatchUse::Value
    {
        r.err(
            &path.key("prefix"),
            "prefix string match should not be empty",
        );
    }
    if let Some(re) = &m.regex {
        validate_regex(r, &path.key("regex"), re);
    }
}

const TCHARS: &[u8] = b"!#$%&'*+-.^_`|~";

pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || TCHARS.contains(&b))
}

/// A header name in a match: a token, an HTTP/2 pseudo-header, or a JWT claim
/// (`@request.auth.claims.x`). Upper case is accepted (Istio's docs ask for lower case;
/// names match case-insensitively) with a warning.
pub(crate) fn validate_match_header_name(r: &mut Report, path: &FieldPath, name: &str) {
    if name.is_empty() {
        r.err(path, "header name cannot be empty");
        return;
    }
    if name.starts_with("@request.auth.claims") {
        return;
    }
    if matches!(
        name,
        ":method" | ":scheme" | ":authority" | ":path" | ":status"
    ) {
        return;
    }
    if !is_token(name) {
        r.err(
            path,
            format!("header name {name:?} is not a valid header name"),
        );
    } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
        r.warn(
            path,
            format!("header name {name:?} should be lowercase; headers match case-insensitively"),
        );
    }
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// Header values: no control characters, and `%` only as `%%` or around an Envoy
/// variable (`%HOSTNAME%`, `%REQ(x-foo)%`).
pub(crate) fn validate_header_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!(
            "header value {value:?} contains control characters"
        ));
    }
    let b = value.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'%') {
            i += 2;
            continue;
        }
        // A variable runs to the next '%' outside parentheses.
        let mut depth = 0usize;
        let mut j = i + 1;
        let mut closed = false;
        while j < b.len() {
            match b[j] {
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b'%' if depth == 0 => {
                    closed = true;
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        if !closed || j == i + 1 {
            return Err(format!(
                "header value {value:?} has an unescaped % (write %% for a literal %)"
            ));
        }
        i = j + 1;
    }
    Ok(())
}

/// Header manipulation (`headers.request` / `headers.response`).
pub(crate) fn validate_headers(r: &mut Report, path: &FieldPath, headers: &raw::Headers) {
    if let Some(req) = &headers.request {
        let p = path.key("request");
        for (op, map) in [("add", &req.add), ("set", &req.set)] {
            for (name, value) in map {
                let hp = p.key(op).key(name);
                if name.is_empty() {
                    r.err(&hp, "header name cannot be empty");
                } else if is_internal_header(name) && !is_authority_header(name) {
                    r.err(
                        &hp,
                        format!("invalid header {name:?}: header cannot have \":\" prefix"),
                    );
                }
                r.check(&hp, validate_header_value(value));
            }
        }
        for (i, name) in req.remove.iter().enumerate() {
            r.check(&p.key("remove").index(i), removable_header(name));
        }
    }
    if let Some(resp) = &headers.response {
        let p = path.key("response");
        for (op, map) in [("add", &resp.add), ("set", &resp.set)] {
            for (name, value) in map {
                let hp = p.key(op).key(name);
                r.check(&hp, removable_header(name));
                r.check(&hp, validate_header_value(value));
            }
        }
        for (i, name) in resp.remove.iter().enumerate() {
            r.check(&p.key("remove").index(i), removable_header(name));
        }
    }
}

fn removable_header(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("header name cannot be empty".into())
    } else if name.eq_ignore_ascii_case("host") {
        Err(format!("invalid header {name:?}: cannot set Host header"))
    } else if name.starts_with(':') {
        Err(format!(
            "invalid header {name:?}: header cannot have \":\" prefix"
        ))
    } else {
        Ok(())
    }
}

/// A percentage is 0, or between 0.0001 and 100.
pub(crate) fn validate_percentage(r: &mut Report, path: &FieldPath, p: &raw::Percent) {
    let v = p.value;
    if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) || v.is_nan() {
        r.err(
            &path.key("value"),
            format!("percentage {v} is neither 0.0, nor in range [0.0001, 100.0]"),
        );
    }
}

/// `istio.type.v1beta1.WorkloadSelector`: no empty keys, no wildcards.
pub(crate) fn validate_workload_selector(
    r: &mut Report,
    path: &FieldPath,
    s: &raw::WorkloadSelector,
) {
    let p = path.key("matchLabels");
    for (k, v) in &s.match_labels {
        if k.is_empty() {
            r.err(&p, "key must not be empty");
        }
        if k.contains('*') {
            r.err(&p.key(k), "wildcard not allowed in label key match");
        }
        if v.contains('*') {
            r.err(&p.key(k), "wildcard not allowed in label value match");
        }
        if v.len() > 63 {
            r.err(&p.key(k), "label value must be at most 63 characters");
        }
    }
    if s.match_labels.is_empty() {
        r.warn(path, "workload selector specified without labels");
    }
}

/// Gateway references in a VirtualService: `mesh`, `name`, `ns/name` (or legacy
/// `name.ns`, with a warning).
pub(crate) fn validate_gateway_names(r: &mut Report, path: &FieldPath, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        let p = path.index(i);
        match name.split_once('/') {
            None => {
                if let Some((gw, ns)) = name.split_once('.') {
                    r.warn(&p, format!("using legacy gatewayName format {name:?}; prefer the <namespace>/<name> format: \"{}/{gw}\"", ns.split('.').next().unwrap_or(ns)));
                }
                r.check(&p, crate::host::validate_fqdn(name));
            }
            Some((ns, gw)) => {
                if ns.is_empty() || gw.is_empty() {
                    r.err(&p, "config namespace and gateway name cannot be empty");
                    continue;
                }
                if !is_dns_label(ns) {
                    r.err(&p, format!("invalid value for namespace: {ns:?}"));
                }
                if !is_dns_label(gw) {
                    r.err(&p, format!("invalid value for gateway name: {gw:?}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values() {
        for ok in [
            "foo",
            "100%%",
            "%HOSTNAME%",
            "a %REQ(x-foo)% b",
            "%START_TIME(%s)%",
            "",
        ] {
            assert!(validate_header_value(ok).is_ok(), "{ok}");
        }
        for bad in ["abc%123", "%", "50%", "%%%", "a\nb"] {
            assert!(validate_header_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys() {
        assert!(validate_label_key("app").is_ok());
        assert!(validate_label_key("app.kubernetes.io/name").is_ok());
        assert!(validate_label_key("a_b.c").is_ok());
        assert!(validate_label_key("-a").is_err());
        assert!(validate_label_key("/a").is_err());
        assert!(validate_label_key("a/b/c").is_err());
        assert!(is_label_value(""));
        assert!(!is_label_value("a b"));
    }

    #[test]
    fn durations_follow_istio() {
        let mut r = Report::default();
        let p = FieldPath::root("spec");
        assert_eq!(
            istio_duration(&mut r, &p, "1ms"),
            Some(Duration::from_millis(1))
        );
        assert_eq!(istio_duration(&mut r, &p, "0s"), None);
        assert_eq!(istio_duration(&mut r, &p, "1500us"), None);
        assert_eq!(istio_duration(&mut r, &p, "x"), None);
        assert_eq!(r.errors.len(), 3);
    }

    #[test]
    fn string_matches() {
        let mut r = Report::default();
        let p = FieldPath::root("m");
        let both = raw::StringMatch {
            exact: Some("a".into()),
            prefix: Some("b".into()),
            regex: None,
        };
        validate_string_match(&mut r, &p, &both, MatchUse::Value);
        let bad_re = raw::StringMatch {
            regex: Some("(".into()),
            ..Default::default()
        };
        validate_string_match(&mut r, &p, &bad_re, MatchUse::Value);
        let empty_prefix = raw::StringMatch {
            prefix: Some(String::new()),
            ..Default::default()
        };
        validate_string_match(&mut r, &p, &empty_prefix, MatchUse::Uri);
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        validate_string_match(&mut r, &p, &empty_prefix, MatchUse::Value);
        assert_eq!(r.errors.len(), 3);
    }
}
