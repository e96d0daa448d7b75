//! The data path: one hyper service per accepted connection, each request walked through
//! the phases below against the current [`Snapshot`], and one access log line per request.
//!
//! ```text
//! accept -> request edge (ambiguous Host / framing -> 400, path normalized, upgrades
//!   allowed or dropped) -> match port -> match host (virtual host)
//!   -> edge headers (x-request-id, xff, xfp)
//!   -> body read up to the largest limit a policy asked for (body.rs), if any
//!   -> for each VirtualService chain of the host: run policies (router, fault, split,
//!        user) over one request view, each answering an edit (chain.rs), until one
//!        routes; none routes -> 404
//!   -> decision: [delay] then forward | redirect | direct response | abort (act)
//!      (local replies get the route's and the edits' response header ops)
//!   -> forward: resolve cluster -> header ops, rewrite -> upstream (timeout, retries)
//!   -> response header ops -> response phase, when a policy asked (phases.rs)
//!   -> client; then the log phase, when a policy asked (phases.rs)
//! ```

mod body;
pub mod chain;
pub mod edge;
mod error;
pub mod framing;
pub mod headers;
pub mod normalize;
pub mod outbound;
mod phases;
pub(crate) mod read_memo;
/// Public for `cargo bench` (bench/micro.rs); not an interface for embedders.
#[doc(hidden)]
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Incoming};

pub use chain::run_chain;
pub use error::{Culprit, ProxyError};
use error::{direct_response, local_response};
use headers::{edge_headers, single_content_type, strip_hop_by_hop};
pub use upstream::Upstream;
use upstream::{Attempted, DEFAULT_RETRIES, Outbound, send};

use crate::plugin::context::{Current, Decided, Joined};
use crate::plugin::ops::{self, apply_mutation};
use crate::plugin::types::{Action, Destination, Forward, HeaderMutation};
use crate::plugin::{PluginHost, RequestView};
use crate::snapshot::{Chain, Snapshot, vhosts::normalized_host};
use crate::telemetry::access::{AccessLog, Entry};
use crate::telemetry::request::{Observation, Observed};
use crate::telemetry::trace::attr;

/// Errors of streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body type of every response (and of upstream requests).
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding `b`.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// What every connection shares: the current snapshot and the clients.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub host: PluginHost,
    /// Upstream connection pools, one per worker slot (`workers::slot`): a worker's
    /// requests reuse the connections it opened, on its own runtime.
    pub upstreams: Box<[Upstream]>,
    /// Request and trace ids come from the operating system's randomness: seeing one
    /// id must not tell anyone other ids or the numbers policies draw (which
    /// `--random-seed` may fix).
    pub ids: crate::entropy::OsRandom,
    /// Bounds on connections, quiet bodies and tunnels, mirrors and delays.
    pub limits: Arc<crate::limits::Limits>,
    /// Path normalization and allowed upgrades (`wasmgate run` flags).
    pub edge: edge::EdgeSettings,
    /// Every metric; series live as long as the process.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// Where access lines go (`--access-log`, `--access-log-format`).
    pub access_log: Arc<AccessLog>,
}

impl Shared {
    /// This thread's upstream pools.
    pub fn upstream(&self) -> &Upstream {
        let slot = crate::workers::slot();
        &self.upstreams[slot % self.upstreams.len().max(1)]
    }
}

/// Where a connection came in.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The listener's socket address (its key in the snapshot).
    pub listener: SocketAddr,
    pub port: u16,
    pub client: SocketAddr,
    /// Set when the gateway terminated TLS for this connection.
    pub tls: Option<Arc<TlsConn>>,
    /// HTTP connections: what the framing watcher under hyper found (`framing.rs`).
    pub framing: Option<Arc<framing::FramingLog>>,
    /// The connection's place under `--max-connections`: held by the connection and by
    /// any tunnel (upgrade, CONNECT) it turns into, so a tunnel keeps counting.
    pub place: Option<Arc<crate::limits::Held>>,
}

/// What a terminated TLS connection tells every request on it.
#[derive(Debug, Clone, Default)]
pub struct TlsConn {
    /// The ClientHello's SNI: picks the server whose virtual hosts apply.
    pub sni: Option<String>,
    /// `x-forwarded-client-cert` for the client's certificate, when it sent one.
    pub xfcc: Option<String>,
    /// The client certificate's identity, as AuthorizationPolicy `principals` name it.
    pub principal: Option<String>,
}

/// One access log line's worth of facts.
#[derive(Debug)]
struct Access {
    request_id: headers::RequestId,
    virtual_service: String,
    route: String,
    cluster: String,
    flags: Vec<&'static str>,
    extra: Vec<(String, String)>,
    attempted: Attempted,
    /// The path routed, when normalization changed the one received.
    normalized: Option<String>,
    /// Time from the upstream request to its response head.
    upstream_ms: Option<u64>,
    upstream_ns: Option<u64>,
    /// When the request's head arrived.
    started: Instant,
    /// Metrics, the trace span and the access line (when any is on).
    observe: Option<Observation>,
    /// The access log is on: fill the fields above.
    logged: bool,
}

/// What every request on one connection shares: one reference count per request to
/// raise and drop, not one per part (each is a locked instruction).
#[derive(Debug)]
pub struct ConnShared {
    pub shared: Arc<Shared>,
    pub info: ConnInfo,
}

/// Serve one request. Never fails: errors become responses.
pub async fn handle(
    connection: Arc<ConnShared>,
    req: Request<Incoming>,
) -> Result<Response<Observed<Body>>, Infallible> {
    let (shared, conn) = (&connection.shared, &connection.info);
    let started = Instant::now();
    // The access line's bookkeeping is skipped when nobody reads it: on a hot path that
    // is several allocations per request.
    let logged = shared.access_log.enabled() && crate::telemetry::access_log_enabled(shared);
    let authority = authority_of(&req);
    // The snapshot's tracer: Telemetry may change sampling and tags at a reload.
    let snapshot = shared.snapshot.load_full();
    let span = snapshot
        .tracer
        .as_ref()
        .map(|t| t.start(req.headers(), || shared.ids.next_u64()));
    let trace_id = span
        .as_ref()
        .filter(|_| logged)
        .map(|s| format!("{:032x}", s.trace_id().0));
    let observe = (shared.metrics.enabled || span.is_some() || logged)
        .then(|| Observation::start(started, &req, span));
    let head = logged.then(|| RequestFacts::of(&req));
    let mut access = Access {
        request_id: headers::RequestId::default(),
        virtual_service: String::new(),
        route: String::new(),
        cluster: String::new(),
        flags: Vec::new(),
        extra: Vec::new(),
        attempted: Attempted::default(),
        normalized: None,
        upstream_ms: None,
        upstream_ns: None,
        started,
        observe,
        logged,
    };
    let served = serve(
        shared,
        &snapshot,
        conn,
        req,
        authority.as_ref(),
        &mut access,
    );
    let response = match served.await {
        Ok(r) => r,
        Err(e) => {
            if let ProxyError::BadRequest(why) = &e
                && access.logged
            {
                access.extra.push(("details".into(), why.replace(' ', "_")));
            }
            failure_response(e, &mut access)
        }
    };
    let Some(observe) = access.observe.take() else {
        return Ok(response.map(Observed::plain));
    };
    let entry = head.map(|head| {
        let request_bytes = observe.request_bytes();
        access.entry(
            head,
            conn,
            authority
                .as_ref()
                .and_then(|a| a.to_str().ok())
                .map(str::to_string),
            trace_id,
            response.status().as_u16(),
            request_bytes,
        )
    });
    let log = entry.map(|e| (shared.access_log.clone(), e));
    Ok(observe.finish(&shared.metrics, &access.flags, response, log))
}

/// What the access line keeps of a request before it is consumed.
struct RequestFacts {
    method: String,
    path: String,
    protocol: String,
    x_forwarded_for: String,
    user_agent: String,
}

impl RequestFacts {
    fn of<B>(req: &Request<B>) -> Self {
        let header = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        RequestFacts {
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            protocol: format!("{:?}", req.version()),
            x_forwarded_for: header(headers::X_FORWARDED_FOR),
            user_agent: header(header::USER_AGENT),
        }
    }
}

impl Access {
    /// The access line's entry (sizes and duration are filled when the response ends).
    fn entry(
        &mut self,
        head: RequestFacts,
        conn: &ConnInfo,
        authority: Option<String>,
        trace_id: Option<String>,
        code: u16,
        bytes_received: u64,
    ) -> Entry {
        // The path routed; the one received follows as `raw_path` when they differ.
        let (path, raw_path) = match self.normalized.take() {
            Some(p) => {
                let raw = head.path.split('?').next().unwrap_or_default().to_string();
                (p, Some(raw))
            }
            None => (head.path, None),
        };
        Entry {
            start_time: Some(std::time::SystemTime::now()),
            method: head.method,
            path,
            raw_path,
            protocol: head.protocol,
            response_code: code,
            response_flags: self.flags.join(","),
            bytes_received,
            bytes_sent: 0,
            duration_ms: 0,
            upstream_service_time_ms: self.upstream_ms,
            x_forwarded_for: head.x_forwarded_for,
            user_agent: head.user_agent,
            request_id: self.request_id.as_str().to_string(),
            authority: authority.unwrap_or_default(),
            upstream_host: self.attempted.upstream_host(),
            upstream_cluster: std::mem::take(&mut self.cluster),
            route_name: std::mem::take(&mut self.route),
            virtual_service: std::mem::take(&mut self.virtual_service),
            trace_id: trace_id.unwrap_or_default(),
            attempts: self.attempted.attempts,
            client: conn.client.ip().to_string(),
            extra: std::mem::take(&mut self.extra),
        }
    }
}

/// The access line of a request hyper refused before `handle` could see it: its HTTP/1
/// parser answers invalid heads (header names or values with forbidden bytes, a bad
/// request line, a bad `Content-Length` or `Transfer-Encoding`) with 400, oversized
/// ones with 431 or 414, and closes the connection. Logged when that connection ends,
/// with flag `DPE`; the method, host and path are unknown (`-`).
pub fn log_refused_by_hyper(
    log: &AccessLog,
    client: SocketAddr,
    e: &(dyn std::error::Error + 'static),
) {
    let Some(e) = e.downcast_ref::<hyper::Error>().filter(|e| e.is_parse()) else {
        return;
    };
    if !log.enabled() {
        return;
    }
    let status = if !e.is_parse_too_large() {
        400
    } else if e.to_string().contains("URI") {
        414
    } else {
        431
    };
    log.request(&Entry {
        start_time: Some(std::time::SystemTime::now()),
        response_code: status,
        response_flags: "DPE".into(),
        client: client.ip().to_string(),
        extra: vec![("details".into(), e.to_string().replace(' ', "_"))],
        ..Entry::default()
    });
}

/// The port of a `Host`/`:authority` value, if it has one.
fn authority_port(authority: &str) -> Option<u16> {
    let (_, port) = authority.rsplit_once(':')?;
    if authority.starts_with('[') && !authority.contains("]:") {
        return None;
    }
    port.parse().ok()
}

/// The request's authority: the URI's (HTTP/2, absolute form), else `Host` (shared with
/// the header, not copied). `None` when there is none or it is not text.
fn authority_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req
            .headers()
            .get(header::HOST)
            .filter(|h| h.to_str().is_ok())
            .cloned(),
    }
}

async fn serve(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    authority: Option<&HeaderValue>,
    access: &mut Access,
) -> Result<Response<Body>, ProxyError> {
    // `authority_of` keeps only values that are text.
    let authority_value = authority.ok_or(ProxyError::BadRequest("no Host header"))?;
    let authority = authority_value.to_str().unwrap_or_default();
    // The request edge: nothing below sees an ambiguous request or a raw path.
    edge::check_head(&req, conn.framing.as_deref())?;
    if req.method() != http::Method::CONNECT
        && edge::normalize_path(&mut req, shared.edge.path_normalization)?.is_some()
        && access.logged
    {
        access.normalized = req.uri().path_and_query().map(|p| p.as_str().to_string());
    }
    let host = normalized_host(authority);
    let routes = snapshot
        .listeners
        .get(&conn.listener)
        .and_then(|l| l.http_routes(conn.tls.as_ref().map(|t| t.sni.as_deref())))
        .ok_or(ProxyError::NoRoute)?;
    if req.method() == http::Method::CONNECT {
        // A tunnel: only the mesh listener opens them (Envoy's gateways refuse CONNECT
        // unless configured for it).
        let tunnels = routes.mesh.as_ref().ok_or(ProxyError::NoRoute)?;
        return crate::tcp::connect(shared, snapshot, conn, tunnels, req);
    }
    let vhost = routes.hosts.find(&host).ok_or(ProxyError::NoRoute)?;
    // On the mesh listener a request is for a service's port, as a sidecar sees it.
    let port = if routes.mesh.is_some() {
        authority_port(authority).unwrap_or(80)
    } else {
        conn.port
    };
    if vhost.https_redirect {
        return Ok(https_redirect(authority, req.uri()));
    }

    let scheme = if conn.tls.is_some() { "https" } else { "http" };
    // Only allowed protocols are tunnelled; any other `Upgrade` goes with the hop-by-hop
    // headers and the request is proxied as a plain one.
    // Hop-by-hop headers go first, so a client's `Connection: x-forwarded-for` cannot
    // remove what the gateway adds next.
    let seen = headers::Seen::scan(req.headers());
    let upgrade =
        headers::upgrade_request(req.headers(), seen).filter(|p| shared.edge.allows_upgrade(p));
    headers::strip_seen_hop_by_hop(req.headers_mut(), seen);
    if let Some(a) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        // Absolute-form (and HTTP/2 :authority) wins over Host (RFC 9112 3.2.2): the
        // upstream sees the host that was routed.
        req.headers_mut().insert(header::HOST, v);
    }
    access.request_id = edge_headers(
        req.headers_mut(),
        seen,
        conn.client.ip(),
        scheme,
        &shared.ids,
    );
    headers::client_cert_header(
        req.headers_mut(),
        seen,
        conn.tls.as_ref().and_then(|t| t.xfcc.as_deref()),
    );
    if let Some(span) = access.observe.as_mut().and_then(Observation::recording) {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        span.set_str(attr::HTTP_METHOD, req.method().as_str());
        span.set_str(attr::HTTP_URL, &format!("{scheme}://{authority}{pq}"));
        span.set_str(attr::HTTP_PROTOCOL, &format!("{:?}", req.version()));
        span.set_str(attr::REQUEST_ID, access.request_id.as_str());
        span.set_str(attr::PEER_ADDRESS, &conn.client.ip().to_string());
        if let Some(ua) = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            span.set_str(attr::USER_AGENT, ua);
        }
    }

    // The body, read for the policies that asked (up to the largest limit of the host's
    // chains); nothing is read for the others.
    let mut read = None;
    if let Some(limit) = vhost
        .chains
        .iter()
        .filter_map(|c| c.wants.request_body)
        .max()
    {
        let bounds = body::Bounds::of(&shared.limits.settings, access.started);
        let mut quiet = body::Idle::new(req.body_mut(), bounds, None);
        let got = body::read_up_to(&mut quiet, limit).await.map_err(|e| {
            tracing::debug!("reading the request body for plugins: {e}");
            if e.is::<body::StreamIdle>() {
                ProxyError::StreamIdle(e.to_string())
            } else if e.is::<body::RequestTimeout>() {
                ProxyError::RequestTimeout(e.to_string())
            } else {
                ProxyError::BadRequest("the request body could not be read")
            }
        })?;
        read = Some(got);
    }
    let view = request_view(
        &mut req,
        access
            .request_id
            .value()
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("")),
        scheme,
        authority_value.clone(),
        conn,
        port,
        read.as_ref().filter(|r| !r.over).map(|r| r.data.clone()),
    );
    // The chain that routed and what it decided (taken in the lock that saw it route:
    // each lock is two locked instructions). The view keeps a copy only for the phases
    // that read it later.
    let mut routed: Option<(&Arc<Chain>, Decided)> = None;
    // A chain that failed (a plugin that fails closed) whose policies still want the
    // response or log phase: they see the failure's response.
    let mut failure = None;
    for chain in &vhost.chains {
        let span = access.observe.as_mut().and_then(Observation::recording);
        match run_chain(chain, &view, span).await {
            Ok(()) => {}
            Err(e) if chain.wants.later() => {
                routed = Some((chain, view.state().decided(true)));
                failure = Some(e);
                break;
            }
            Err(e) => return Err(e),
        }
        let decided = {
            let mut state = view.state();
            (!matches!(*state.decision.action, Action::NoRoute))
                .then(|| state.decided(chain.wants.later()))
        };
        if let Some(decided) = decided {
            routed = Some((chain, decided));
            break;
        }
    }
    let Some((
        chain,
        Decided {
            decision,
            reply_ops,
            joined,
        },
    )) = routed
    else {
        return Err(ProxyError::NoRoute);
    };
    // The request goes on with its headers.
    let later = chain.wants.later();
    let view = if later {
        *req.headers_mut() = view.headers.clone();
        Some(view)
    } else {
        // Taken in place: moving the whole view out of its `Arc` copies it.
        let mut view = view;
        match Arc::get_mut(&mut view) {
            Some(v) => *req.headers_mut() = std::mem::take(&mut v.headers),
            None => *req.headers_mut() = view.headers.clone(),
        }
        None
    };
    if let Some(o) = access.observe.as_mut() {
        let index = decision
            .route
            .as_ref()
            .and_then(|r| usize::try_from(r.index).ok());
        o.route = index.and_then(|i| chain.route_stats.get(i)).cloned();
        if let Some(span) = o.recording() {
            span.set_str(attr::VIRTUAL_SERVICE, &chain.virtual_service);
            if let Some(r) = &decision.route {
                let route = if r.name.is_empty() {
                    format!("http[{}]", r.index)
                } else {
                    r.name.clone()
                };
                span.set_str(attr::ROUTE, &route);
            }
        }
    }
    if access.logged {
        access.virtual_service = chain.virtual_service.clone();
        if let Some(r) = &decision.route {
            access.route = if r.name.is_empty() {
                format!("http[{}]", r.index)
            } else {
                r.name.clone()
            };
        }
        access.extra.extend(
            decision
                .log_fields
                .iter()
                .map(|h| (h.name.clone(), h.value.clone())),
        );
    }

    if failure.is_none()
        && let Some(ms) = decision.delay_ms.filter(|ms| *ms > 0)
    {
        access.flags.push("DI");
        tokio::time::sleep(shared.limits.delay(Duration::from_millis(ms))).await;
    }
    let local = decision.forward().is_none();
    let made = match failure {
        Some(e) => Err(e),
        None => match decision.forward() {
            Some(_) => {
                forward_upstream(
                    shared, snapshot, conn, chain, req, upgrade, &decision, joined, read, access,
                )
                .await
            }
            None => {
                // What a forward would have taken goes now, not after the later phases.
                drop((req, upgrade, joined, read));
                reply_locally(chain, &decision, &reply_ops, access)
            }
        },
    };
    let Some(view) = view else {
        return made;
    };
    // The phases after the decision see the gateway's own failures as responses too.
    let (response, local) = match made {
        Ok(r) => (r, local),
        Err(e) => (failure_response(e, access), true),
    };
    let response = if chain.wants.response {
        match phases::respond(chain, &view, response, local, &mut access.extra).await {
            Ok(r) => r,
            Err(e) => failure_response(e, access),
        }
    } else {
        response
    };
    if !chain.wants.log {
        return Ok(response);
    }
    let facts = phases::LogFacts {
        chain: chain.clone(),
        view,
        started: access.started,
        upstream_ns: access.upstream_ns,
        flags: access.flags.join(","),
        upstream_host: access.attempted.upstream_host(),
        upstream_cluster: access.cluster.clone(),
    };
    Ok(phases::log_when_done(response, facts))
}

/// The request as the chain's policies see it; its headers move into the view for the
/// time of the chain. Returned in its `Arc`: the view is large, and each move of it is a
/// copy.
fn request_view(
    req: &mut Request<Incoming>,
    id: HeaderValue,
    scheme: &'static str,
    authority: HeaderValue,
    conn: &ConnInfo,
    port: u16,
    body: Option<Bytes>,
) -> Arc<RequestView> {
    // Made whole in `Arc::new`'s argument: setting a field afterwards cost one more copy
    // of the 720-byte view in a release build.
    Arc::new(RequestView::new(
        id,
        req.method().clone(),
        scheme,
        authority,
        req.uri().clone(),
        std::mem::take(req.headers_mut()),
        conn.client.ip(),
        port,
        conn.tls.as_ref().and_then(|t| t.sni.clone()),
        conn.tls.as_ref().and_then(|t| t.principal.clone()),
        body,
    ))
}

/// A failure after the decision, as the response the client gets (with its flag logged).
fn failure_response(e: ProxyError, access: &mut Access) -> Response<Body> {
    if !e.flag().is_empty() {
        access.flags.push(e.flag());
    }
    match e.culprit() {
        Culprit::Client | Culprit::Gateway => {
            tracing::debug!(request_id = %access.request_id, "{e}")
        }
        Culprit::Plugin | Culprit::Upstream => {
            tracing::warn!(request_id = %access.request_id, "{e}")
        }
    }
    e.into_response()
}

/// Carry out a decision that is not a forward: the gateway's own reply. Not async (the
/// forward is awaited where the decision is made), so the request's future does not
/// carry a level of its own for it.
fn reply_locally(
    chain: &Chain,
    decision: &Current,
    reply_ops: &[HeaderMutation],
    access: &mut Access,
) -> Result<Response<Body>, ProxyError> {
    // The route's `headers.response` apply to the replies it makes itself too, as
    // Envoy's `response_headers_to_add` do (a forward carries them in the decision).
    let route_ops: Option<&HeaderMutation> = decision
        .route
        .as_ref()
        .and_then(|r| chain.reply_headers.get(usize::try_from(r.index).ok()?))
        .and_then(Option::as_ref);
    let reply = |h: &mut http::HeaderMap| {
        apply_mutation(h, route_ops);
        phases::reply_ops(h, reply_ops);
    };
    match &*decision.action {
        // A forward is the caller's to send; it never comes here.
        Action::NoRoute | Action::Forward(_) => Err(ProxyError::NoRoute),
        Action::Abort(abort) => {
            access.flags.push("FI");
            if let Some(grpc) = &abort.grpc_status {
                // gRPC "trailers-only": 200, application/grpc, the status in headers.
                return Ok(local_response(StatusCode::OK, Bytes::new(), |h| {
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    if let Ok(v) = HeaderValue::from_str(&grpc_code(grpc)) {
                        h.insert("grpc-status", v);
                    }
                    h.insert(
                        "grpc-message",
                        HeaderValue::from_static("fault filter abort"),
                    );
                    reply(h);
                }));
            }
            let status =
                StatusCode::from_u16(abort.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            Ok(local_response(
                status,
                Bytes::from_static(b"fault filter abort"),
                reply,
            ))
        }
        Action::Respond(direct) => Ok(direct_response(
            direct.status,
            &direct.headers,
            Bytes::copy_from_slice(&direct.body),
            reply,
        )),
        Action::Redirect(redirect) => {
            let status =
                StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            Ok(local_response(status, Bytes::new(), |h| {
                if let Ok(v) = HeaderValue::from_str(&redirect.location) {
                    h.insert(header::LOCATION, v);
                }
                reply(h);
            }))
        }
    }
}

/// Pick one destination by weight when several remain: its index, and it.
fn choose<'a>(
    destinations: &'a [Destination],
    shared: &Shared,
) -> Option<(usize, &'a Destination)> {
    match destinations {
        [] => None,
        [one] => Some((0, one)),
        _ => {
            let index = shared
                .host
                .balancing()
                .pick_weighted(destinations.iter().map(|d| d.weight));
            debug_assert!(index < destinations.len(), "a weighted pick in range");
            destinations.get(index).map(|d| (index, d))
        }
    }
}

/// Send the request upstream to one of the decision's destinations as they stand (the
/// one a policy picked, or the forward's own), so `forward.destinations` is not read
/// here. `read`: the body's first bytes, already read for the policies, and whether more
/// follows in `req`.
#[allow(clippy::too_many_arguments)]
async fn forward_upstream(
    shared: &Shared,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    chain: &Chain,
    mut req: Request<Incoming>,
    upgrade: Option<HeaderValue>,
    decision: &Current,
    joined: Joined,
    read: Option<body::Read>,
    access: &mut Access,
) -> Result<Response<Body>, ProxyError> {
    let forward = decision.forward().ok_or(ProxyError::NoRoute)?;
    let (index, destination) =
        choose(decision.destinations(), shared).ok_or(ProxyError::NoRoute)?;
    // Taken before the request is torn apart: resolves once we answer 101.
    let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    // By the destination's place in the route's own list (the pick's, when one was made).
    let cluster = chain
        .clusters
        .resolve(
            &snapshot.registry,
            &chain.namespace,
            decision.route.as_ref().map(|r| r.index),
            decision.picked.unwrap_or(0) + index,
            destination,
        )
        .map_err(ProxyError::NoCluster)?;
    if access.logged || chain.wants.log {
        access.cluster = cluster.name.clone();
    }

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    if let Some(o) = access.observe.as_mut() {
        o.destination = Some(cluster.stats.clone());
        if let Some(span) = o.span.as_mut() {
            // The gateway's span is the parent of the upstream request.
            span.inject(&mut headers);
            if span.is_recording() {
                span.set_str(attr::UPSTREAM_CLUSTER, &cluster.name);
            }
        }
    }
    if let Some(authority) = &forward.rewrite_authority
        && let Ok(v) = HeaderValue::from_str(authority)
    {
        headers.insert(header::HOST, v);
    }
    ops::apply(
        &mut headers,
        forward.request_headers.as_ref(),
        &joined.request,
    );
    apply_mutation(&mut headers, destination.request_headers.as_ref());
    let path_and_query = match &forward.rewrite_path {
        Some(p) if p.starts_with('/') => {
            http::uri::PathAndQuery::from_maybe_shared(Bytes::from(p.clone()))
                .map_err(|_| ProxyError::InvalidRewrite(p.clone()))?
        }
        Some(p) => return Err(ProxyError::InvalidRewrite(p.clone())),
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    };
    // A body still streaming from the client goes quiet at most the stream idle time,
    // and ends within the request timeout, until the response starts.
    let bounds = body::Bounds::of(&shared.limits.settings, access.started);
    let streaming = match &read {
        Some(read) => read.over,
        None => !body.is_end_stream(),
    };
    let answered = streaming.then(|| Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let quiet = |body| body::Idle::new(body, bounds, answered.clone());
    let body = match read {
        Some(read) if read.over => Some(body::resend(read, quiet(body))),
        Some(read) if !read.data.is_empty() || read.trailers.is_some() => {
            Some(body::resend(read, body))
        }
        Some(_) => None,
        None if body.is_end_stream() => None,
        None => Some(quiet(body).boxed()),
    };
    if let Some(protocol) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    let hashed = cluster
        .hash_key()
        .map(|key| {
            crate::cluster::hash::request_hash(
                key,
                &headers,
                path_and_query.query(),
                conn.client,
                conn.listener,
            )
        })
        .unwrap_or_default();
    let out = Outbound {
        method: parts.method,
        version: parts.version,
        path_and_query,
        headers,
        body,
    };
    if out.body.is_none() {
        mirror(shared, snapshot, chain, forward, &out);
    }
    let retries = forward.retries.as_ref().unwrap_or(&DEFAULT_RETRIES);
    let timeout = forward.timeout_ms.map(Duration::from_millis);
    let sent_at = (access.logged || chain.wants.log).then(Instant::now);
    let resp = send(
        shared.upstream(),
        &cluster,
        shared.host.balancing(),
        hashed.hash,
        out,
        timeout,
        retries,
        &mut access.attempted,
    )
    .await;
    if access.attempted.retry_overflow {
        access.flags.push("UO");
    }
    let mut resp = resp?;
    if let Some(a) = &answered {
        a.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(t) = sent_at {
        let took = t.elapsed();
        access.upstream_ms = Some(took.as_millis() as u64);
        access.upstream_ns = Some(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upstream_upgrade = match (switching, downstream_upgrade) {
        (true, Some(down)) => Some((down, hyper::upgrade::on(&mut resp))),
        // A switch nobody asked for (the client's `Upgrade` was not allowed, or there
        // was none): the connection would leave HTTP behind the gateway's back.
        (true, None) => {
            return Err(ProxyError::UpstreamReset(
                "upstream switched protocols without an allowed upgrade".into(),
            ));
        }
        _ => None,
    };
    let (mut parts, mut body) = resp.into_parts();
    // Read before the hop-by-hop headers go, and only for a switch (a lookup a
    // response otherwise makes for nothing).
    let protocol = upstream_upgrade
        .is_some()
        .then(|| parts.headers.get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(&mut parts.headers);
    let edited = forward.response_headers.is_some()
        || !joined.response.is_empty()
        || destination.response_headers.is_some();
    if edited {
        ops::apply(
            &mut parts.headers,
            forward.response_headers.as_ref(),
            &joined.response,
        );
        apply_mutation(&mut parts.headers, destination.response_headers.as_ref());
        // Operations may have left a second type (an `add` on a set one); what the
        // upstream sent goes on as it is, as through Envoy.
        single_content_type(&mut parts.headers);
    }
    if let Some(cookie) = hashed.set_cookie {
        // The consistent-hash cookie the client did not have yet.
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    if let (Some((down, up)), Some(protocol)) = (upstream_upgrade, protocol) {
        // 101: hand both connections to a byte pipe once each side has switched.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
        let idle = shared.limits.settings.tunnel_idle;
        // The tunnel keeps the connection's place and the upstream exchange's slots
        // (the 101's body holds them) until it ends; the client's 101 has no body.
        let place = conn.place.clone();
        let held = std::mem::replace(&mut body, empty());
        tokio::spawn(async move {
            let _held = (place, held);
            let (down, up) = tokio::join!(down, up);
            match down.map_err(|e| format!("client side: {e}")).and_then(|d| {
                up.map(|u| (d, u))
                    .map_err(|e| format!("upstream side: {e}"))
            }) {
                Ok((down, up)) => {
                    let mut down = hyper_util::rt::TokioIo::new(down);
                    let mut up = hyper_util::rt::TokioIo::new(up);
                    if let Err(e) = crate::tcp::pipe(&mut down, &mut up, idle).await {
                        tracing::debug!("upgraded connection ended: {e}");
                    }
                }
                Err(e) => tracing::debug!("upgrade failed: {e}"),
            }
        });
    }
    Ok(Response::from_parts(parts, body))
}

/// Send a copy of a bodiless request to each mirror (by its percentage), with `-shadow`
/// appended to the Host as Envoy does; the answers are dropped. Requests with a body are
/// not mirrored: the body streams once, to the real upstream.
fn mirror(shared: &Shared, snapshot: &Snapshot, chain: &Chain, forward: &Forward, out: &Outbound) {
    for m in &forward.mirrors {
        let roll = (shared.host.balancing().next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        if roll * 100.0 >= m.percentage {
            continue;
        }
        let host = wasmgate_config::host::expanded(&m.destination.host, &chain.namespace);
        let cluster = match snapshot.registry.resolve(
            &host,
            m.destination.port,
            m.destination.subset.as_deref(),
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("mirror skipped: {e}");
                continue;
            }
        };
        // Past `--max-mirrors` in flight, the copy is not sent (and is counted).
        let Some(place) = shared.limits.mirror() else {
            tracing::debug!(cluster = %cluster.name, "mirror dropped: --max-mirrors in flight");
            continue;
        };
        let mut headers = out.headers.clone();
        if let Some(shadow) = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| match h.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("{name}-shadow:{port}")
                }
                _ => format!("{h}-shadow"),
            })
            && let Ok(v) = HeaderValue::from_str(&shadow)
        {
            headers.insert(header::HOST, v);
        }
        let copy = Outbound {
            method: out.method.clone(),
            version: out.version,
            path_and_query: out.path_and_query.clone(),
            headers,
            body: None,
        };
        let upstream = shared.upstream().clone();
        let random = shared.host.balancing().clone();
        tokio::spawn(async move {
            let no_retries = crate::plugin::types::RetryPolicy {
                attempts: 0,
                per_try_timeout_ms: None,
                retry_on: String::new(),
                retry_remote_localities: false,
            };
            let mut attempted = Attempted::default();
            let sent = send(
                &upstream,
                &cluster,
                &random,
                None,
                copy,
                Some(Duration::from_secs(30)),
                &no_retries,
                &mut attempted,
            )
            .await;
            // The answer is dropped unread: a mirror never holds memory for it.
            if let Err(e) = sent {
                tracing::debug!(cluster = %cluster.name, "mirror failed: {e}");
            }
            drop(place);
        });
    }
}

/// `httpsRedirect`: 301 to the same Host, path and query over https (Envoy's
/// `require_tls`, which keeps the Host as the client sent it).
fn https_redirect(authority: &str, uri: &http::Uri) -> Response<Body> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    local_response(StatusCode::MOVED_PERMANENTLY, Bytes::new(), |h| {
        if let Ok(v) = HeaderValue::from_str(&format!("https://{authority}{path}")) {
            h.insert(header::LOCATION, v);
        }
    })
}

/// gRPC status name -> numeric code, as Envoy's fault filter sends it.
fn grpc_code(name: &str) -> String {
    wasmgate_config::grpc_status_code(name).map_or_else(|| name.to_string(), |c| c.to_string())
}
