//! Compiled `HTTPMatchRequest`s and their evaluation against a request.

use std::cell::{OnceCell, RefCell};

use regex::Regex;
use wasmgate_config::raw::{HTTPMatchRequest, StringMatch};
use wasmgate_plugin_sdk::{ConfigError, Request};

/// One compiled `StringMatch`.
#[derive(Debug, Clone)]
pub enum Matcher {
    Exact(String),
    Prefix(String),
    /// Anchored: the whole value must match.
    Regex(Regex),
    /// An empty match (`{}`): the header or parameter must be present.
    Present,
}

impl Matcher {
    /// Compile; `lowercase` folds exact and prefix values (for `ignoreUriCase`).
    pub fn compile(m: &StringMatch, field: &str, lowercase: bool) -> Result<Self, ConfigError> {
        let fold = |s: &str| {
            if lowercase {
                s.to_lowercase()
            } else {
                s.to_string()
            }
        };
        Ok(match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), _, _) => Matcher::Exact(fold(e)),
            (None, Some(p), _) => Matcher::Prefix(fold(p)),
            // Istio reads `regex: "*"` on a header as "present".
            (None, None, Some(r)) if r == "*" => Matcher::Present,
            (None, None, Some(r)) => {
                let anchored = format!("^(?:{r})$");
                Matcher::Regex(Regex::new(&anchored).map_err(|e| ConfigError {
                    field: format!("{field}.regex"),
                    message: format!("invalid regex: {e}"),
                })?)
            }
            (None, None, None) => Matcher::Present,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(e) => crate::text::eq(value, e),
            Matcher::Prefix(p) => crate::text::starts_with(value, p),
            Matcher::Regex(r) => r.is_match(value),
            Matcher::Present => true,
        }
    }
}

/// The literal text every path the URI regex `pattern` fully matches starts with, read by
/// regex's own parser and prefix extractor from the anchored form the matcher compiles
/// (`^(?:pattern)$`); `None` when there is none (a leading class, alternatives that
/// start differently, `(?i)`, ...) or when `pattern` does not parse on its own (then
/// the anchored form could be other than one anchored pattern: `a)|(b`). A regex route
/// is indexed under it, so a path without it never runs the regex.
pub fn regex_prefix(pattern: &str) -> Option<String> {
    use regex_syntax::hir::literal::Extractor;
    regex_syntax::Parser::new().parse(pattern).ok()?;
    let hir = regex_syntax::Parser::new()
        .parse(&format!("^(?:{pattern})$"))
        .ok()?;
    let literals = Extractor::new().extract(&hir);
    let prefix = literals.longest_common_prefix()?;
    // A common prefix may end inside a character (`/café|/cafê`): keep whole ones.
    let prefix = match std::str::from_utf8(prefix) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(prefix.get(..e.valid_up_to())?).ok()?,
    };
    (!prefix.is_empty()).then(|| prefix.to_string())
}

/// How the URI matched: a prefix match reports its length, so `rewrite.uri` can replace
/// just the prefix (Istio's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched {
    pub uri_prefix_len: Option<usize>,
}

/// A URI condition the route index can look up instead of testing route by route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriKey<'a> {
    Exact(&'a str),
    Prefix(&'a str),
}

/// One compiled `HTTPMatchRequest`: every field set must match.
#[derive(Debug)]
pub struct CompiledMatch {
    uri: Option<Matcher>,
    /// The literal text every path a `uri` regex matches starts with, when it has one
    /// (`/static/` of `/static/.*[.]css`): the route index looks it up as a prefix.
    uri_regex_prefix: Option<String>,
    ignore_uri_case: bool,
    scheme: Option<Matcher>,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    headers: Vec<(String, Matcher)>,
    without_headers: Vec<(String, Matcher)>,
    query_params: Vec<(String, Matcher)>,
    port: Option<u16>,
    /// `namespace/name`; empty means any gateway.
    gateways: Vec<String>,
}

fn opt(
    m: &Option<StringMatch>,
    field: &str,
    lowercase: bool,
) -> Result<Option<Matcher>, ConfigError> {
    m.as_ref()
        .map(|m| Matcher::compile(m, field, lowercase))
        .transpose()
}

fn map(
    entries: &std::collections::BTreeMap<String, StringMatch>,
    field: &str,
    lowercase_keys: bool,
) -> Result<Vec<(String, Matcher)>, ConfigError> {
    entries
        .iter()
        .map(|(k, m)| {
            let key = if lowercase_keys {
                k.to_ascii_lowercase()
            } else {
                k.clone()
            };
            Ok((key, Matcher::compile(m, &format!("{field}.{k}"), false)?))
        })
        .collect()
}

/// `ns/name` for a gateway reference written in a VirtualService of `namespace`;
/// `mesh` (the sidecars, wasmgate's mesh listener) stays as it is.
pub fn gateway_ref(name: &str, namespace: &str) -> String {
    if name.contains('/') || name == "mesh" {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

impl CompiledMatch {
    pub fn compile(
        m: &HTTPMatchRequest,
        field: &str,
        namespace: &str,
    ) -> Result<Self, ConfigError> {
        let uri = opt(&m.uri, &format!("{field}.uri"), m.ignore_uri_case)?;
        let uri_regex_prefix = match (&uri, m.uri.as_ref().and_then(|u| u.regex.as_deref())) {
            (Some(Matcher::Regex(_)), Some(pattern)) => regex_prefix(pattern),
            _ => None,
        };
        Ok(CompiledMatch {
            uri,
            uri_regex_prefix,
            ignore_uri_case: m.ignore_uri_case,
            scheme: opt(&m.scheme, &format!("{field}.scheme"), false)?,
            method: opt(&m.method, &format!("{field}.method"), false)?,
            authority: opt(&m.authority, &format!("{field}.authority"), false)?,
            headers: map(&m.headers, &format!("{field}.headers"), true)?,
            without_headers: map(&m.without_headers, &format!("{field}.withoutHeaders"), true)?,
            query_params: map(&m.query_params, &format!("{field}.queryParams"), false)?,
            port: u16::try_from(m.port).ok().filter(|p| *p != 0),
            gateways: m
                .gateways
                .iter()
                .map(|g| gateway_ref(g, namespace))
                .collect(),
        })
    }

    /// The header names this match reads (`headers`, `withoutHeaders`), lowercase.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .chain(&self.without_headers)
            .map(|(name, _)| name.as_str())
    }

    /// What the path must look like for this match to fit, for the route index: `None`
    /// when any path may (no `uri`, a regex without a literal prefix, or
    /// `ignoreUriCase`).
    pub fn uri_key(&self) -> Option<UriKey<'_>> {
        if self.ignore_uri_case {
            return None;
        }
        match &self.uri {
            Some(Matcher::Exact(e)) => Some(UriKey::Exact(e)),
            Some(Matcher::Prefix(p)) => Some(UriKey::Prefix(p)),
            Some(Matcher::Regex(_)) => self.uri_regex_prefix.as_deref().map(UriKey::Prefix),
            _ => None,
        }
    }

    /// Does the request satisfy every field?
    pub fn matches<'r>(&'r self, req: &RequestView<'r>) -> Option<Matched> {
        let mut matched = Matched {
            uri_prefix_len: None,
        };
        if let Some(uri) = &self.uri {
            // Istio ignores case for exact and prefix URI matches only.
            let folded;
            let path = if self.ignore_uri_case && !matches!(uri, Matcher::Regex(_)) {
                folded = req.path().to_lowercase();
                folded.as_str()
            } else {
                req.path()
            };
            if !uri.matches(path) {
                return None;
            }
            if let Matcher::Prefix(p) = uri {
                matched.uri_prefix_len = Some(p.len());
            }
        }
        if let Some(m) = &self.scheme
            && !m.matches(req.scheme())
        {
            return None;
        }
        if let Some(m) = &self.method
            && !m.matches(req.method())
        {
            return None;
        }
        if let Some(m) = &self.authority
            && !m.matches(req.authority())
        {
            return None;
        }
        if let Some(port) = self.port
            && port != req.port()
        {
            return None;
        }
        if !self.gateways.is_empty() && !self.gateways.iter().any(|g| g == req.gateway()) {
            return None;
        }
        for (name, m) in &self.headers {
            if !req.with_header(name, |v| v.is_some_and(|v| m.matches(v))) {
                return None;
            }
        }
        for (name, m) in &self.without_headers {
            let inner = req.with_header(name, |value| match m {
                Matcher::Present => value.is_some(),
                // A missing header counts as empty.
                _ => m.matches(value.unwrap_or("")),
            });
            if inner {
                return None;
            }
        }
        if !self.query_params.is_empty() {
            let query = req.query_pairs();
            for (name, m) in &self.query_params {
                match query.iter().find(|(k, _)| k == name) {
                    Some((_, v)) if m.matches(v) => {}
                    _ => return None,
                }
            }
        }
        Some(matched)
    }
}

/// The request as the routes read it. Every field is asked of the host at most once per
/// request, however many routes test it: the SDK keeps the request line (method, path,
/// query, authority); this keeps the rest the matches read (scheme, port, gateway, the
/// parsed query and each header they name).
pub struct RequestView<'r> {
    request: &'r Request<'r>,
    scheme: OnceCell<String>,
    port: OnceCell<u16>,
    gateway: OnceCell<String>,
    query: OnceCell<Vec<(String, String)>>,
    /// Header name (lowercase, as compiled; the route's own text, not a copy) -> its
    /// values joined, `None` when absent.
    headers: RefCell<ReadHeaders<'r>>,
}

/// The headers the routes of one request have read: the first [`HEADERS_IN_PLACE`] in
/// place, so that most requests allocate nothing for them, the others in a list made
/// when one is needed.
#[derive(Default)]
struct ReadHeaders<'r> {
    in_place: [(&'r str, Option<String>); HEADERS_IN_PLACE],
    len: usize,
    more: Vec<(&'r str, Option<String>)>,
    /// Whether the first header was read with the path, before any route asked
    /// ([`RequestView::read_header_with_path`]), and whether a route read it.
    guessed: bool,
    guess_read: bool,
}

const HEADERS_IN_PLACE: usize = 4;

impl std::fmt::Debug for RequestView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestView")
            .field("request", self.request)
            .finish_non_exhaustive()
    }
}

impl<'r> RequestView<'r> {
    pub fn new(request: &'r Request<'r>) -> Self {
        RequestView {
            request,
            scheme: OnceCell::new(),
            port: OnceCell::new(),
            gateway: OnceCell::new(),
            query: OnceCell::new(),
            headers: RefCell::new(ReadHeaders::default()),
        }
    }

    pub fn request(&self) -> &Request<'r> {
        self.request
    }

    pub fn method(&self) -> &str {
        self.request.method()
    }

    pub fn path(&self) -> &str {
        self.request.path()
    }

    /// The raw query string without `?`.
    pub fn query(&self) -> &str {
        self.request.query()
    }

    pub fn authority(&self) -> &str {
        self.request.authority()
    }

    pub fn scheme(&self) -> &str {
        self.scheme.get_or_init(|| self.request.scheme())
    }

    pub fn port(&self) -> u16 {
        *self.port.get_or_init(|| self.request.port())
    }

    pub fn gateway(&self) -> &str {
        self.gateway.get_or_init(|| self.request.gateway())
    }

    /// The query string as percent-decoded (name, value) pairs.
    pub fn query_pairs(&self) -> &[(String, String)] {
        self.query.get_or_init(|| parse_query(self.request.query()))
    }

    /// Call `f` with every value of header `name` (lowercase) joined with `,`, as Envoy
    /// matches them; `None` when the request has none.
    pub fn with_header<R>(&self, name: &'r str, f: impl FnOnce(Option<&str>) -> R) -> R {
        let mut read = self.headers.borrow_mut();
        if let Some(value) = read.known(name) {
            return f(value);
        }
        let value = read.remember(name, self.request.header_joined(name));
        f(value)
    }

    /// Read header `name` (lowercase) before the path, with it in one host call
    /// ([`Request::header_joined_with_path`]): the router's guess at the header the
    /// routes will read. Call before anything else is read.
    pub fn read_header_with_path(&self, name: &'r str) {
        let value = self.request.header_joined_with_path(name);
        let mut read = self.headers.borrow_mut();
        // The guess is the first header read: `known` and `better_read_with_path` look
        // for it in the first slot.
        debug_assert_eq!(read.len, 0, "a header was read before the guess");
        read.remember(name, value);
        read.guessed = true;
    }

    /// The header a better guess would have read with the path: the first one the routes
    /// read separately, when they did not read the guessed one.
    pub fn better_read_with_path(&self) -> Option<&'r str> {
        let read = self.headers.borrow();
        if read.guess_read {
            return None;
        }
        let first_separate = usize::from(read.guessed);
        read.in_place[..read.len]
            .get(first_separate)
            .map(|(name, _)| *name)
    }
}

impl<'r> ReadHeaders<'r> {
    /// `Some` with the value of header `name` when it has been read.
    fn known(&mut self, name: &str) -> Option<Option<&str>> {
        let (at, (_, value)) = self.in_place[..self.len]
            .iter()
            .chain(&self.more)
            .enumerate()
            .find(|(_, (n, _))| crate::text::eq(n, name))?;
        // The guess is the first header read.
        self.guess_read |= self.guessed && at == 0;
        Some(value.as_deref())
    }

    /// Keep the value of header `name`, in place while there is room.
    fn remember(&mut self, name: &'r str, value: Option<String>) -> Option<&str> {
        let entry = (name, value);
        match self.in_place.get_mut(self.len) {
            Some(slot) => {
                self.len += 1;
                *slot = entry;
                slot.1.as_deref()
            }
            None => {
                self.more.push(entry);
                self.more.last().and_then(|(_, v)| v.as_deref())
            }
        }
    }
}

/// Split a raw query string into percent-decoded (name, value) pairs.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    // Most requests have none: no splitting for them.
    if query.is_empty() {
        return Vec::new();
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
