//! Host matching for one listener port, with Envoy's virtual-host rules that Istio relies
//! on: an exact domain wins, then the longest `*.suffix` wildcard, then `*`. The `Host`
//! header's port is ignored and it is compared case-insensitively. Also the rule Istio
//! uses to join a VirtualService host with a Gateway server host.

use std::collections::HashMap;
use std::sync::Arc;

/// Strip the port and a trailing dot from a `Host` value and lowercase it.
pub fn normalize_host(authority: &str) -> String {
    normalized_host(authority).into_owned()
}

/// [`normalize_host`], borrowing from `authority` when it is already lowercase (what
/// the request path calls).
pub fn normalized_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((inner, _)) => inner,
            None => rest,
        }
    } else {
        // A port: the digits at the end, after a colon. Walked byte by byte, as a host
        // is short: `rsplit_once(':')` and a pass over the port took about 300
        // instructions a request with the trim and the case check below (callgrind,
        // scenario 1).
        let b = authority.as_bytes();
        let mut i = b.len();
        while i > 0 && b[i - 1].is_ascii_digit() {
            i -= 1;
        }
        if i > 0 && b[i - 1] == b':' {
            &authority[..i - 1]
        } else {
            authority
        }
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// Does pattern `pattern` (`*`, `*.suffix` or exact) match the concrete `host`?
pub fn matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// Istio's join of a VirtualService host with a Gateway server host: the more specific
/// of the two when one contains the other, `None` when they are disjoint.
pub fn intersect(vs_host: &str, server_host: &str) -> Option<String> {
    let vs_wild = vs_host.starts_with('*');
    let gw_wild = server_host.starts_with('*');
    match (vs_wild, gw_wild) {
        (false, false) => (vs_host == server_host).then(|| vs_host.to_string()),
        (false, true) => matches(server_host, vs_host).then(|| vs_host.to_string()),
        (true, false) => matches(vs_host, server_host).then(|| server_host.to_string()),
        (true, true) => {
            // The longer suffix is the narrower set.
            let (a, b) = (&vs_host[1..], &server_host[1..]);
            if a.ends_with(b) {
                Some(vs_host.to_string())
            } else if b.ends_with(a) {
                Some(server_host.to_string())
            } else {
                None
            }
        }
    }
}

/// Domain -> value, looked up by a request's host.
#[derive(Debug)]
pub struct HostTable<T> {
    exact: HashMap<String, Arc<T>>,
    /// (suffix starting with '.', value), longest suffix first.
    wildcards: Vec<(String, Arc<T>)>,
    any: Option<Arc<T>>,
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        HostTable {
            exact: HashMap::new(),
            wildcards: Vec::new(),
            any: None,
        }
    }
}

impl<T> HostTable<T> {
    /// Build from (domain pattern, value) pairs; domains are unique.
    pub fn new(entries: impl IntoIterator<Item = (String, T)>) -> Self {
        Self::from_shared(entries.into_iter().map(|(d, v)| (d, Arc::new(v))))
    }

    /// Like [`HostTable::new`], for values several domains share.
    pub fn from_shared(entries: impl IntoIterator<Item = (String, Arc<T>)>) -> Self {
        let mut table = HostTable::default();
        for (domain, value) in entries {
            if domain == "*" {
                table.any = Some(value);
            } else if let Some(suffix) = domain.strip_prefix('*') {
                table.wildcards.push((suffix.to_string(), value));
            } else {
                table.exact.insert(domain, value);
            }
        }
        table
            .wildcards
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        table
    }

    /// The most specific entry for `host` (already normalized).
    pub fn find(&self, host: &str) -> Option<&Arc<T>> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, v)| v)
            .or(self.any.as_ref())
    }

    /// Every entry: exact domains (sorted), then wildcards (most specific first), then `*`.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<T>> {
        let mut exact: Vec<(&String, &Arc<T>)> = self.exact.iter().collect();
        exact.sort_by(|a, b| a.0.cmp(b.0));
        exact
            .into_iter()
            .map(|(_, v)| v)
            .chain(self.wildcards.iter().map(|(_, v)| v))
            .chain(self.any.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_port_and_case_are_ignored() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("bookinfo"), "bookinfo");
        assert_eq!(normalize_host("bookinfo:"), "bookinfo");
        assert_eq!(normalize_host("host:8a"), "host:8a");
        assert_eq!(normalize_host("a:b:80"), "a:b");
        assert_eq!(normalize_host("8080"), "8080");
        assert!(matches!(
            normalized_host("shop.example.com:80"),
            std::borrow::Cow::Borrowed("shop.example.com")
        ));
    }

    #[test]
    fn exact_beats_longest_wildcard_beats_any() {
        let t = HostTable::new([
            ("*".to_string(), "any"),
            ("*.example.com".to_string(), "wild"),
            ("*.a.example.com".to_string(), "narrow"),
            ("foo.example.com".to_string(), "exact"),
        ]);
        assert_eq!(t.find("foo.example.com").map(|v| **v), Some("exact"));
        assert_eq!(t.find("x.a.example.com").map(|v| **v), Some("narrow"));
        assert_eq!(t.find("bar.example.com").map(|v| **v), Some("wild"));
        assert_eq!(t.find("example.com").map(|v| **v), Some("any"));
        let no_any = HostTable::new([("*.example.com".to_string(), 1)]);
        assert!(no_any.find("example.com").is_none());
    }

    #[test]
    fn istio_host_intersection() {
        assert_eq!(intersect("*", "*"), Some("*".into()));
        assert_eq!(
            intersect("*", "*.example.com"),
            Some("*.example.com".into())
        );
        assert_eq!(
            intersect("a.example.com", "*"),
            Some("a.example.com".into())
        );
        assert_eq!(
            intersect("a.example.com", "*.example.com"),
            Some("a.example.com".into())
        );
        assert_eq!(
            intersect("*.example.com", "a.example.com"),
            Some("a.example.com".into())
        );
        assert_eq!(
            intersect("*.b.example.com", "*.example.com"),
            Some("*.b.example.com".into())
        );
        assert_eq!(
            intersect("*.example.com", "*.b.example.com"),
            Some("*.b.example.com".into())
        );
        assert_eq!(intersect("a.example.com", "b.example.com"), None);
        assert_eq!(intersect("*.foo.com", "*.bar.com"), None);
        assert_eq!(intersect("example.com", "*.example.com"), None);
    }
}
