//! One compiled HTTPRoute: its matches and the edit it makes when one matches.

use regex::Regex;
use wasmgate_config::fault::{self, RouteFault};
use wasmgate_config::parse_duration;
use wasmgate_config::raw::{
    CorsPolicy, Destination as RawDestination, HTTPRoute, HeaderOperations, Headers,
    RedirectPortSelection,
};
use wasmgate_plugin_sdk::host::{chance, pick_weighted};
use wasmgate_plugin_sdk::{
    Abort, Action, ConfigError, Destination, DirectResponse, Edit, Forward, Header, HeaderMutation,
    Mirror, PreparedEdit, Redirect, RetryPolicy, RouteRef,
};

use crate::matching::{CompiledMatch, Matched, Matcher, RequestView, UriKey};

/// Istio's retry conditions when a route sets `retries` without `retryOn`.
const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

#[derive(Debug)]
pub struct CompiledRoute {
    index: u32,
    name: String,
    /// Empty: the route matches every request.
    matches: Vec<CompiledMatch>,
    action: RouteAction,
    cors: Option<Cors>,
    /// The edit of a route whose answer does not depend on the request (a forward
    /// without a URI rewrite, a direct response), kept by the host: without a CORS
    /// origin to answer, a match answers with it.
    prepared: Option<PreparedEdit>,
    /// A forward's weights when it has several destinations: the router picks one when
    /// the route matches, as Envoy draws a weighted cluster when it resolves the route,
    /// and the host calls no traffic split for a decision left with one destination.
    weights: Option<Box<[u32]>>,
    /// The route's fault when it can fire: drawn when the route forwards, in this call
    /// (as Envoy's fault filter reads the route's config), and held for the host to apply
    /// where fault injection runs (`request.hold-fault`). The fault component compiles
    /// the same and reports what does not compile.
    fault: Option<RouteFault>,
}

#[derive(Debug)]
enum RouteAction {
    Forward {
        template: Box<Forward>,
        rewrite_uri: Option<String>,
        regex_rewrite: Option<(Regex, String)>,
    },
    Redirect {
        status: u16,
        uri: Option<String>,
        prefix_rewrite: Option<String>,
        authority: Option<String>,
        scheme: Option<String>,
        port: Option<u16>,
        derive_port: Option<RedirectPortSelection>,
    },
    Respond {
        status: u16,
        body: Vec<u8>,
    },
    /// `delegate` routes are not supported by wasmgate: they never match.
    Unsupported,
}

#[derive(Debug)]
struct Cors {
    origins: Vec<Matcher>,
    allow_methods: String,
    allow_headers: String,
    expose_headers: String,
    max_age: Option<u64>,
    allow_credentials: bool,
}

fn config_err(field: String, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        message: message.into(),
    }
}

fn mutation(ops: Option<&HeaderOperations>) -> HeaderMutation {
    let Some(ops) = ops else {
        return HeaderMutation::default();
    };
    HeaderMutation {
        set: ops.set.iter().map(|(k, v)| Header::new(k, v)).collect(),
        add: ops.add.iter().map(|(k, v)| Header::new(k, v)).collect(),
        remove: ops.remove.iter().map(|k| k.to_ascii_lowercase()).collect(),
    }
}

/// `None` when there is nothing to do: cheaper for every plugin after the router.
fn request_ops(h: Option<&Headers>) -> Option<HeaderMutation> {
    mutation(h.and_then(|h| h.request.as_ref())).non_empty()
}

fn response_ops(h: Option<&Headers>) -> Option<HeaderMutation> {
    mutation(h.and_then(|h| h.response.as_ref())).non_empty()
}

fn destination(d: &RawDestination, weight: i32, headers: Option<&Headers>) -> Destination {
    Destination {
        host: d.host.clone(),
        subset: d.subset_name().map(str::to_string),
        port: d.port_number(),
        weight: u32::try_from(weight).unwrap_or(0),
        request_headers: request_ops(headers),
        response_headers: response_ops(headers),
    }
}

fn millis(field: String, text: &str) -> Result<u64, ConfigError> {
    let d = parse_duration(text).map_err(|e| config_err(field, e))?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// RE2 substitutions write `\1`; the regex crate writes `${1}`.
fn re2_substitution(rewrite: &str) -> String {
    let mut out = String::with_capacity(rewrite.len());
    let mut chars = rewrite.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    n.push(d);
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            '$' => out.push_str("$$"),
            other => out.push(other),
        }
    }
    out
}

impl CompiledRoute {
    pub fn compile(index: usize, http: &HTTPRoute, namespace: &str) -> Result<Self, ConfigError> {
        let field = format!("http[{index}]");
        let matches = http
            .match_
            .iter()
            .enumerate()
            .map(|(j, m)| CompiledMatch::compile(m, &format!("{field}.match[{j}]"), namespace))
            .collect::<Result<Vec<_>, _>>()?;
        let action = if http.delegate.is_some() {
            RouteAction::Unsupported
        } else if let Some(r) = &http.redirect {
            let code = if r.redirect_code == 0 {
                301
            } else {
                r.redirect_code
            };
            RouteAction::Redirect {
                status: u16::try_from(code).map_err(|_| {
                    config_err(
                        format!("{field}.redirect.redirectCode"),
                        "not an HTTP status",
                    )
                })?,
                uri: (!r.uri.is_empty()).then(|| r.uri.clone()),
                prefix_rewrite: (!r.prefix_rewrite.is_empty()).then(|| r.prefix_rewrite.clone()),
                authority: (!r.authority.is_empty()).then(|| r.authority.clone()),
                scheme: (!r.scheme.is_empty()).then(|| r.scheme.clone()),
                port: r.port.and_then(|p| u16::try_from(p).ok()),
                derive_port: r.derive_port,
            }
        } else if let Some(d) = &http.direct_response {
            RouteAction::Respond {
                status: u16::try_from(d.status).map_err(|_| {
                    config_err(
                        format!("{field}.directResponse.status"),
                        "not an HTTP status",
                    )
                })?,
                body: d
                    .body
                    .as_ref()
                    .map(|b| b.to_bytes())
                    .unwrap_or(Some(Vec::new()))
                    .ok_or_else(|| {
                        config_err(format!("{field}.directResponse.body.bytes"), "not base64")
                    })?,
            }
        } else {
            Self::forward(http, &field)?
        };
        let cors = http
            .cors_policy
            .as_ref()
            .map(|c| Cors::compile(c, &format!("{field}.corsPolicy")))
            .transpose()?;
        let route = RouteRef {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            name: http.name.clone(),
        };
        let fixed = match &action {
            RouteAction::Forward {
                template,
                rewrite_uri: None,
                regex_rewrite: None,
            } => Some(Action::Forward((**template).clone())),
            RouteAction::Respond { status, body } => Some(respond(*status, body)),
            _ => None,
        };
        let prepared = fixed.map(|action| {
            PreparedEdit::new(Edit {
                route: Some(route.clone()),
                action: Some(action),
                ..Edit::keep()
            })
        });
        let weights = match &action {
            RouteAction::Forward { template, .. } if template.destinations.len() > 1 => {
                Some(template.destinations.iter().map(|d| d.weight).collect())
            }
            _ => None,
        };
        let fault = http
            .fault
            .as_ref()
            .and_then(|f| fault::compile(index, f).ok())
            .filter(RouteFault::can_fire);
        Ok(CompiledRoute {
            index: route.index,
            name: route.name,
            matches,
            action,
            cors,
            prepared,
            weights,
            fault,
        })
    }

    fn forward(http: &HTTPRoute, field: &str) -> Result<RouteAction, ConfigError> {
        let destinations = http
            .route
            .iter()
            .filter_map(|r| {
                r.destination
                    .as_ref()
                    .map(|d| destination(d, r.weight, r.headers.as_ref()))
            })
            .collect();
        let mut template = Forward::to(destinations);
        template.request_headers = request_ops(http.headers.as_ref());
        template.response_headers = response_ops(http.headers.as_ref());
        if let Some(t) = &http.timeout {
            template.timeout_ms = Some(millis(format!("{field}.timeout"), t)?).filter(|ms| *ms > 0);
        }
        if let Some(r) = &http.retries {
            template.retries = Some(RetryPolicy {
                attempts: u32::try_from(r.attempts).unwrap_or(0),
                per_try_timeout_ms: r
                    .per_try_timeout
                    .as_deref()
                    .map(|t| millis(format!("{field}.retries.perTryTimeout"), t))
                    .transpose()?,
                retry_on: if r.retry_on.is_empty() {
                    DEFAULT_RETRY_ON.to_string()
                } else {
                    r.retry_on.clone()
                },
                retry_remote_localities: r.retry_remote_localities.unwrap_or(false),
            });
        }
        if let Some(m) = &http.mirror {
            let percentage = http
                .mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .or(http.mirror_percent.map(f64::from))
                .unwrap_or(100.0);
            template.mirrors.push(Mirror {
                destination: destination(m, 0, None),
                percentage,
            });
        }
        for m in &http.mirrors {
            if let Some(d) = &m.destination {
                template.mirrors.push(Mirror {
                    destination: destination(d, 0, None),
                    percentage: m.percentage.as_ref().map_or(100.0, |p| p.value),
                });
            }
        }
        let mut rewrite_uri = None;
        let mut regex_rewrite = None;
        if let Some(rw) = &http.rewrite {
            if !rw.authority.is_empty() {
                template.rewrite_authority = Some(rw.authority.clone());
            }
            if !rw.uri.is_empty() {
                rewrite_uri = Some(rw.uri.clone());
            }
            if let Some(rr) = &rw.uri_regex_rewrite {
                let re = Regex::new(&rr.match_).map_err(|e| {
                    config_err(
                        format!("{field}.rewrite.uriRegexRewrite.match"),
                        format!("invalid regex: {e}"),
                    )
                })?;
                regex_rewrite = Some((re, re2_substitution(&rr.rewrite)));
            }
        }
        Ok(RouteAction::Forward {
            template: Box::new(template),
            rewrite_uri,
            regex_rewrite,
        })
    }

    /// The URI conditions of which one must hold for this route to match; `None` when
    /// the route may match any path.
    pub fn uri_keys(&self) -> Option<Vec<UriKey<'_>>> {
        if self.never_matches() {
            return Some(Vec::new());
        }
        if self.matches.is_empty() {
            return None;
        }
        self.matches.iter().map(CompiledMatch::uri_key).collect()
    }

    /// The header names the route's matches read, lowercase (with repeats); none for a
    /// route that never matches.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        let matches: &[CompiledMatch] = if self.never_matches() {
            &[]
        } else {
            &self.matches
        };
        matches.iter().flat_map(CompiledMatch::header_names)
    }

    /// A `delegate` route (not supported) never matches.
    fn never_matches(&self) -> bool {
        matches!(self.action, RouteAction::Unsupported)
    }

    /// `Some` when one of the route's matches (or its absence of matches) fits.
    pub fn matches<'r>(&'r self, req: &RequestView<'r>) -> Option<Matched> {
        if self.never_matches() {
            return None;
        }
        if self.matches.is_empty() {
            return Some(Matched {
                uri_prefix_len: None,
            });
        }
        self.matches.iter().find_map(|m| m.matches(req))
    }

    /// The edit for a request this route matched: this route, and its action in place of
    /// the decision's (delay and log fields are kept).
    pub fn decide(&self, req: &RequestView<'_>, matched: Matched) -> Edit {
        let mut edit = self.edit(req, matched);
        // `None`: the answer is this route's prepared edit, kept by the host (a forward or
        // a direct response: the route's own action says which).
        let forwards = match &edit.action {
            Some(action) => matches!(action, Action::Forward(_)),
            None => matches!(self.action, RouteAction::Forward { .. }),
        };
        if !forwards {
            return edit;
        }
        // All weights 0: no pick, and the traffic split answers the error it answers.
        if let Some(weights) = &self.weights {
            edit.pick = pick_weighted(weights).and_then(|i| u32::try_from(i).ok());
        }
        // Then the fault, drawn as the fault component draws it (after the pick, as the
        // chain called them).
        if let Some(fault) = &self.fault {
            let drawn = fault.draw(chance);
            if !drawn.is_none() {
                let abort = drawn.abort.map(|a| Abort {
                    status: a.status,
                    grpc_status: a.grpc_status.clone(),
                });
                req.request().hold_fault(drawn.delay_ms, abort.as_ref());
            }
        }
        edit
    }

    /// [`CompiledRoute::decide`] before the pick.
    fn edit(&self, req: &RequestView<'_>, matched: Matched) -> Edit {
        let request = req.request();
        let origin = self.cors.as_ref().and_then(|c| {
            request
                .header("origin")
                .filter(|o| c.allows(o))
                .map(|o| (c, o))
        });
        if let (Some(prepared), None) = (&self.prepared, &origin) {
            return prepared.answer(request);
        }
        Edit {
            route: Some(RouteRef {
                index: self.index,
                name: self.name.clone(),
            }),
            action: Some(self.action(req, matched, origin)),
            ..Edit::keep()
        }
    }

    fn action(
        &self,
        req: &RequestView<'_>,
        matched: Matched,
        origin: Option<(&Cors, String)>,
    ) -> Action {
        let request = req.request();
        if let Some((cors, origin)) = &origin
            && req.method() == "OPTIONS"
            && request.header("access-control-request-method").is_some()
        {
            return Action::Respond(cors.preflight(origin));
        }
        match &self.action {
            RouteAction::Forward {
                template,
                rewrite_uri,
                regex_rewrite,
            } => {
                let mut forward = (**template).clone();
                let new_path = if let Some(uri) = rewrite_uri {
                    let rest = matched
                        .uri_prefix_len
                        .and_then(|n| req.path().get(n..))
                        .unwrap_or("");
                    let mut p = format!("{uri}{rest}");
                    // Envoy: a prefix rewrite of "/" must not leave "//".
                    if p.starts_with("//") {
                        p.remove(0);
                    }
                    Some(p)
                } else {
                    regex_rewrite
                        .as_ref()
                        .map(|(re, with)| re.replace_all(req.path(), with.as_str()).into_owned())
                };
                forward.rewrite_path = new_path.map(|p| with_query(p, req.query()));
                if let Some((cors, origin)) = &origin {
                    cors.actual(origin, forward.response_headers_mut());
                }
                Action::Forward(forward)
            }
            RouteAction::Redirect {
                status,
                uri,
                prefix_rewrite,
                authority,
                scheme,
                port,
                derive_port,
            } => {
                let path = match (uri, prefix_rewrite, matched.uri_prefix_len) {
                    (Some(u), _, _) => u.clone(),
                    (None, Some(p), Some(n)) => {
                        format!("{p}{}", req.path().get(n..).unwrap_or(""))
                    }
                    (None, Some(p), None) => p.clone(),
                    (None, None, _) => req.path().to_string(),
                };
                let scheme = scheme.as_deref().unwrap_or_else(|| req.scheme());
                let host_only = |a: &str| match a.rsplit_once(':') {
                    Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
                    _ => a.to_string(),
                };
                let base = authority
                    .clone()
                    .unwrap_or_else(|| req.authority().to_string());
                let authority = match (port, derive_port) {
                    (Some(p), _) => format!("{}:{p}", host_only(&base)),
                    (None, Some(RedirectPortSelection::FromProtocolDefault)) => host_only(&base),
                    (None, Some(RedirectPortSelection::FromRequestPort)) => {
                        format!("{}:{}", host_only(&base), req.port())
                    }
                    (None, None) => base,
                };
                Action::Redirect(Redirect {
                    status: *status,
                    location: with_query(format!("{scheme}://{authority}{path}"), req.query()),
                })
            }
            RouteAction::Respond { status, body } => respond(*status, body),
            RouteAction::Unsupported => Action::NoRoute,
        }
    }
}

fn respond(status: u16, body: &[u8]) -> Action {
    Action::Respond(DirectResponse {
        status,
        headers: Vec::new(),
        body: body.to_vec(),
    })
}

fn with_query(path: String, query: &str) -> String {
    if query.is_empty() || path.contains('?') {
        path
    } else {
        format!("{path}?{query}")
    }
}

impl Cors {
    fn compile(c: &CorsPolicy, field: &str) -> Result<Self, ConfigError> {
        let mut origins = Vec::new();
        for o in &c.allow_origin {
            origins.push(if o == "*" {
                Matcher::Present
            } else {
                Matcher::Exact(o.clone())
            });
        }
        for (i, m) in c.allow_origins.iter().enumerate() {
            origins.push(Matcher::compile(
                m,
                &format!("{field}.allowOrigins[{i}]"),
                false,
            )?);
        }
        Ok(Cors {
            origins,
            allow_methods: c.allow_methods.join(","),
            allow_headers: c.allow_headers.join(","),
            expose_headers: c.expose_headers.join(","),
            max_age: c
                .max_age
                .as_deref()
                .map(|t| millis(format!("{field}.maxAge"), t).map(|ms| ms / 1000))
                .transpose()?,
            allow_credentials: c.allow_credentials.unwrap_or(false),
        })
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|m| m.matches(origin))
    }

    fn preflight(&self, origin: &str) -> DirectResponse {
        let mut headers = vec![Header::new("access-control-allow-origin", origin)];
        if !self.allow_methods.is_empty() {
            headers.push(Header::new(
                "access-control-allow-methods",
                &self.allow_methods,
            ));
        }
        if !self.allow_headers.is_empty() {
            headers.push(Header::new(
                "access-control-allow-headers",
                &self.allow_headers,
            ));
        }
        if let Some(age) = self.max_age {
            headers.push(Header::new("access-control-max-age", age.to_string()));
        }
        if self.allow_credentials {
            headers.push(Header::new("access-control-allow-credentials", "true"));
        }
        DirectResponse {
            status: 200,
            headers,
            body: Vec::new(),
        }
    }

    fn actual(&self, origin: &str, response: &mut HeaderMutation) {
        response
            .set
            .push(Header::new("access-control-allow-origin", origin));
        if !self.expose_headers.is_empty() {
            response.set.push(Header::new(
                "access-control-expose-headers",
                &self.expose_headers,
            ));
        }
        if self.allow_credentials {
            response
                .set
                .push(Header::new("access-control-allow-credentials", "true"));
        }
    }
}
