//! Sending a request upstream: pooled keep-alive connections (HTTP/1.1, or HTTP/2 for
//! `HTTP2`/`GRPC` service ports), in clear text or with TLS originated per the
//! DestinationRule, endpoint choice per the cluster's load balancer, the route's
//! timeout, and retries when the request has no body to replay (Istio's default: 2
//! retries on connect failure, refused stream and 503).

mod connect;
mod gate;
mod http1;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::error::ProxyError;
use super::{Body, BoxError, empty};
use crate::cluster::{Admitted, Cluster, ConnectionSlot, InFlight, Outcome, RetrySlot};
use crate::plugin::Random;
use crate::plugin::types::RetryPolicy;
use connect::{H2Key, H2Pool, PoolKey};
use http1::{Failed, Http1Pool, Lease};

/// How long a pooled HTTP/1.1 connection may stay idle when the DestinationRule sets
/// no `idleTimeout` (Envoy's default is an hour; upstream servers close theirs sooner).
pub const POOL_IDLE: Duration = Duration::from_secs(60);

/// One worker's upstream connections: its HTTP/1.1 pool ([`http1`]) and its HTTP/2
/// connections ([`connect::H2Pool`]).
#[derive(Clone, Debug, Default)]
pub struct Upstream {
    http1: Http1Pool,
    http2: Arc<H2Pool>,
}

/// The idle timeout of a cluster's pooled connections.
fn pool_idle(cluster: &Cluster) -> Duration {
    if cluster.pool.idle_timeout == wasmgate_config::model::traffic::DEFAULT_IDLE_TIMEOUT {
        POOL_IDLE
    } else {
        cluster.pool.idle_timeout
    }
}

impl Upstream {
    pub fn new() -> Self {
        Self::default()
    }

    /// One attempt: `out` to the target at `index` of `cluster`, in HTTP/2 when `h2`
    /// ([`speaks_h2`], worked out once per request), with the cluster's TLS. Over
    /// HTTP/1.1, the lease of the connection it went on, when that may be pooled again.
    /// The socket always goes to the endpoint; the virtual host travels in `Host`
    /// (HTTP/1.1) or `:authority` (HTTP/2), and is the SNI unless the DestinationRule
    /// names one (Istio's auto SNI).
    async fn call(
        &self,
        cluster: &Arc<Cluster>,
        index: usize,
        out: &Outbound,
        mut headers: HeaderMap,
        body: Body,
        h2: bool,
    ) -> Result<(Response<Incoming>, Option<Lease>), Attempt> {
        let target = &cluster.targets[index];
        if !out.path_and_query.as_str().starts_with('/') {
            return Err(ProxyError::InvalidRewrite(out.path_and_query.as_str().to_string()).into());
        }
        let endpoint: &Arc<str> = target.authority();
        // The virtual host: `:authority` over HTTP/2, and the SNI unless the
        // DestinationRule names one (Istio's auto SNI).
        let host_header = headers.get(header::HOST);
        let has_host = host_header.is_some();
        let host = host_header
            .and_then(|h| h.to_str().ok())
            .unwrap_or(endpoint);
        let tls = cluster.tls.as_ref().map(|t| {
            let sni = t
                .sni
                .clone()
                .unwrap_or_else(|| crate::snapshot::vhosts::normalize_host(host));
            (t.key, sni)
        });
        if h2 {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let uri = Uri::builder()
                .scheme(scheme)
                .authority(host)
                .path_and_query(out.path_and_query.clone())
                .build()
                .map_err(|_| ProxyError::InvalidRewrite(out.path_and_query.as_str().to_string()))?;
            let key = H2Key {
                target: endpoint.to_string(),
                tls,
                retire: H2Key::retire(cluster),
            };
            headers.remove(header::HOST);
            let req = request(out, uri, Version::HTTP_2, headers, body);
            // Boxed, so that HTTP/1.1 requests do not carry (and move) its size.
            let sent = Box::pin(self.http2.send(key, req, cluster)).await?;
            return Ok((sent, None));
        }
        // HTTP/1.1: origin-form, the virtual host (or else the endpoint) in `Host`.
        let mut set_host = false;
        if !has_host && let Ok(v) = HeaderValue::from_str(endpoint) {
            headers.insert(header::HOST, v);
            set_host = true;
        }
        // `maxRequestsPerConnection: 1`: one request per connection, never pooled again
        // (hyper closes it after the response); an upgrade keeps its own `Connection`
        // header.
        let once = cluster.pool.max_requests_per_connection == 1;
        let set_close = once && !headers.contains_key(header::UPGRADE);
        if set_close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let req = request(
            out,
            Uri::from(out.path_and_query.clone()),
            Version::HTTP_11,
            headers,
            body,
        );
        let key = match tls {
            None => http1::Key::plain(cluster, index),
            tls => Some(http1::Key::new(endpoint.clone(), tls, PoolKey::of(cluster))),
        }
        .ok_or(ProxyError::NoHealthyUpstream)?;
        self.http1
            .send(key, req, cluster, !once)
            .await
            .map_err(|Failed { error, unsent }| Attempt {
                error,
                // Unsent: its headers as they came, for the next attempt.
                headers: unsent.map(|req| {
                    let mut headers = req.into_parts().0.headers;
                    if set_host {
                        headers.remove(header::HOST);
                    }
                    if set_close {
                        headers.remove(header::CONNECTION);
                    }
                    headers
                }),
            })
    }
}

/// An attempt that failed: why, and the request's headers when nothing was sent (no
/// connection to the endpoint could be made), so the next attempt can send them.
struct Attempt {
    error: ProxyError,
    headers: Option<HeaderMap>,
}

impl From<ProxyError> for Attempt {
    fn from(error: ProxyError) -> Self {
        Attempt {
            error,
            headers: None,
        }
    }
}

/// Whether `out` goes to `cluster` in HTTP/2: with `useClientProtocol` (in clear text;
/// over TLS the handshake's ALPN, set for the port, decides) when the client spoke it,
/// else when the port's protocol (or `h2UpgradePolicy: UPGRADE`) says so; never for
/// an upgrade.
fn speaks_h2(cluster: &Cluster, out: &Outbound) -> bool {
    h2_for(
        cluster.pool.use_client_protocol,
        cluster.tls.is_some(),
        cluster.http2,
        out.version,
        || out.headers.contains_key(header::UPGRADE),
    )
}

/// [`speaks_h2`] on its inputs. An HTTP/1.1 upgrade (WebSocket) has no meaning in
/// HTTP/2 (hyper's client strips the headers): it goes as HTTP/1.1 whatever the port.
/// `upgrade` is asked only when the answer would otherwise be HTTP/2: a header lookup
/// hashes the name.
fn h2_for(
    use_client_protocol: bool,
    tls: bool,
    http2: bool,
    version: Version,
    upgrade: impl FnOnce() -> bool,
) -> bool {
    let h2 = if use_client_protocol && !tls {
        version == Version::HTTP_2
    } else {
        http2
    };
    h2 && !upgrade()
}

/// Everything needed to (re)build the upstream request.
pub struct Outbound {
    pub method: Method,
    /// The client's HTTP version (`useClientProtocol` sends HTTP/2 clients' requests
    /// upstream in HTTP/2).
    pub version: Version,
    /// Shared with the downstream request's URI when not rewritten: cloned, not copied.
    pub path_and_query: http::uri::PathAndQuery,
    pub headers: HeaderMap,
    /// `None` when the body was empty: then the request can be retried.
    pub body: Option<Body>,
}

/// What happened upstream, for the access log.
#[derive(Debug, Default, Clone)]
pub struct Attempted {
    pub upstream: Option<Arc<str>>,
    pub attempts: u32,
    /// The endpoint (index in its cluster) of the attempt in flight, until its outcome
    /// is reported to outlier detection.
    in_flight: Option<usize>,
    /// A retry was wanted but `maxRetries` retries were in flight (flag `UO`).
    pub retry_overflow: bool,
}

impl Attempted {
    /// The endpoint last tried, for the access line (empty when none was).
    pub fn upstream_host(&self) -> String {
        self.upstream.as_deref().unwrap_or_default().to_string()
    }
}

/// Istio's default retry policy, applied when a route sets none. Built once, not per
/// request.
pub static DEFAULT_RETRIES: std::sync::LazyLock<RetryPolicy> =
    std::sync::LazyLock::new(|| RetryPolicy {
        attempts: 2,
        per_try_timeout_ms: None,
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        retry_remote_localities: false,
    });

/// [`DEFAULT_RETRIES`]' conditions, parsed once: most routes set no `retries`, or no
/// `retryOn` (the router then sends Istio's default string).
static DEFAULT_RETRY_ON: std::sync::LazyLock<RetryOn> =
    std::sync::LazyLock::new(|| RetryOn::parse(&DEFAULT_RETRIES.retry_on));

/// Envoy's `retry_on` conditions (Istio's `retryOn`), parsed once for the default
/// policy and, for a route's own `retries`, once per worker while requests keep naming
/// the same conditions ([`RetryOn::cached`]).
#[derive(Debug, Default, Clone, PartialEq)]
struct RetryOn {
    connect_failure: bool,
    reset: bool,
    refused_stream: bool,
    five_xx: bool,
    gateway_error: bool,
    /// HTTP statuses: `retriable-status-codes` (Istio's 503), `retriable-4xx` (409),
    /// and numbers (a set: parsing runs per request and allocates nothing).
    codes: StatusSet,
    /// gRPC statuses in the response headers, one bit each: `cancelled` (1),
    /// `deadline-exceeded` (4), `resource-exhausted` (8), `internal` (13),
    /// `unavailable` (14).
    grpc: u32,
}

/// A set of HTTP status codes (0 to 1023), one bit each.
#[derive(Debug, Default, Clone, PartialEq)]
struct StatusSet([u64; 16]);

impl StatusSet {
    fn insert(&mut self, code: u16) {
        if let Some(word) = self.0.get_mut(usize::from(code / 64)) {
            *word |= 1 << (code % 64);
        }
    }

    fn contains(&self, code: u16) -> bool {
        self.0
            .get(usize::from(code / 64))
            .is_some_and(|word| word & (1 << (code % 64)) != 0)
    }
}

thread_local! {
    /// The last `retryOn` this worker parsed, and what it parsed to.
    static LAST_RETRY_ON: std::cell::RefCell<Option<(Box<str>, RetryOn)>> =
        const { std::cell::RefCell::new(None) };
}

impl RetryOn {
    /// [`RetryOn::parse`], remembered per worker for the last spec: a route's `retryOn`
    /// comes with every request it decides, and parsing it each time cost about 570
    /// instructions (callgrind, scenario 1); a copy costs a tenth of that.
    fn cached(spec: &str) -> Self {
        LAST_RETRY_ON.with_borrow_mut(|last| match last {
            Some((text, parsed)) if **text == *spec => parsed.clone(),
            _ => {
                let parsed = RetryOn::parse(spec);
                *last = Some((spec.into(), parsed.clone()));
                parsed
            }
        })
    }

    fn parse(spec: &str) -> Self {
        let mut r = RetryOn::default();
        for item in spec.split(',').map(str::trim) {
            match item {
                "connect-failure" => r.connect_failure = true,
                "reset" => r.reset = true,
                "refused-stream" => r.refused_stream = true,
                "5xx" => r.five_xx = true,
                "gateway-error" => r.gateway_error = true,
                // Istio's default retriable status code.
                "retriable-status-codes" => r.codes.insert(503),
                "retriable-4xx" => r.codes.insert(409),
                "cancelled" => r.grpc |= 1 << 1,
                "deadline-exceeded" => r.grpc |= 1 << 4,
                "resource-exhausted" => r.grpc |= 1 << 8,
                "internal" => r.grpc |= 1 << 13,
                "unavailable" => r.grpc |= 1 << 14,
                other => {
                    if let Ok(code) = other.parse::<u16>() {
                        r.codes.insert(code);
                    }
                }
            }
        }
        r
    }

    /// Whether a failed attempt may be retried after the request went to the upstream
    /// (a reset, a timeout, a status): then each attempt but the last sends a copy of
    /// the headers. Otherwise (`connect-failure` alone, and over HTTP/1.1
    /// `refused-stream`, which only HTTP/2 has) a retry only follows a connection that
    /// could not be made, and the request comes back unsent: no copy is made.
    fn after_sending(&self, h2: bool) -> bool {
        h2 || self.reset
            || self.five_xx
            || self.gateway_error
            || self.grpc != 0
            || self.codes.0.iter().any(|w| *w != 0)
    }

    /// As Envoy: `5xx` and `gateway-error` count every failure to get a response (it
    /// becomes a 502/504) as one; `reset` covers resets and per-try timeouts;
    /// `refused-stream` an HTTP/2 REFUSED_STREAM; `connect-failure` a failed connect.
    fn on_error(&self, e: &ProxyError) -> bool {
        let any_5xx = self.five_xx || self.gateway_error;
        match e {
            ProxyError::UpstreamConnect(_) => self.connect_failure || any_5xx,
            ProxyError::UpstreamReset(_) | ProxyError::UpstreamPerTryTimeout => {
                self.reset || any_5xx
            }
            ProxyError::UpstreamRefused(_) => self.refused_stream || self.reset || any_5xx,
            _ => false,
        }
    }

    fn on_response(&self, status: u16, headers: &HeaderMap) -> bool {
        (self.five_xx && status >= 500)
            || (self.gateway_error && matches!(status, 502..=504))
            || self.codes.contains(status)
            || (self.grpc != 0
                && headers
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .is_some_and(|code| code < 32 && self.grpc & (1 << code) != 0))
    }
}

/// Send `out` to an endpoint of `cluster`, retrying per `retries` when the request has
/// no body, all within `timeout` — which, as Envoy's route timeout, runs until the
/// response body has been read, so the returned body carries the rest of it.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    upstream: &Upstream,
    cluster: &Arc<Cluster>,
    random: &Random,
    hash: Option<u64>,
    out: Outbound,
    timeout: Option<Duration>,
    retries: &RetryPolicy,
    attempted: &mut Attempted,
) -> Result<Response<Body>, ProxyError> {
    let deadline = timeout
        .filter(|t| !t.is_zero())
        .map(|t| tokio::time::Instant::now() + t);
    let work = attempt_all(upstream, cluster, random, hash, out, retries, attempted);
    let done = match deadline {
        Some(at) => tokio::time::timeout_at(at, work)
            .await
            .unwrap_or(Err(ProxyError::UpstreamTimeout)),
        None => work.await,
    };
    let stats = &cluster.upstream_stats;
    if let (Err(ProxyError::UpstreamTimeout), Some(i)) = (&done, attempted.in_flight.take()) {
        // The route's timeout ended an attempt in flight (not a wait for a connection
        // or a back-off): that endpoint timed out.
        cluster.report(i, Outcome::Timeout);
    }
    let (resp, lease, held) = done.inspect_err(|e| match e {
        ProxyError::UpstreamTimeout | ProxyError::UpstreamPerTryTimeout => {
            stats.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        ProxyError::UpstreamConnect(_) => {
            stats.connect_failures.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    })?;
    Ok(resp.map(|body| {
        UpstreamBody {
            inner: body,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            lease,
            _held: held,
        }
        .boxed()
    }))
}

/// What an upstream exchange holds until its response body is done: its place in the
/// cluster's counts and circuit breakers.
#[derive(Debug)]
struct Held {
    _in_flight: InFlight,
    _admitted: Admitted,
    _connection: Option<ConnectionSlot>,
    _retry: Option<RetrySlot>,
}

async fn attempt_all(
    upstream: &Upstream,
    cluster: &Arc<Cluster>,
    random: &Random,
    hash: Option<u64>,
    mut out: Outbound,
    retries: &RetryPolicy,
    attempted: &mut Attempted,
) -> Result<(Response<Incoming>, Option<Lease>, Held), ProxyError> {
    let admitted = cluster.admit().map_err(ProxyError::Overflow)?;
    let replayable = out.body.is_none();
    let max_attempts = if replayable { 1 + retries.attempts } else { 1 };
    let parsed;
    let retry_on: &RetryOn = if retries.retry_on == DEFAULT_RETRIES.retry_on {
        &DEFAULT_RETRY_ON
    } else {
        parsed = RetryOn::cached(&retries.retry_on);
        &parsed
    };
    let per_try = retries
        .per_try_timeout_ms
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    let mut index = cluster
        .pick(random, hash)
        .ok_or(ProxyError::NoHealthyUpstream)?;
    let mut retry: Option<RetrySlot> = None;
    // The protocol is the cluster's and the request's: the same for every attempt.
    let h2 = speaks_h2(cluster, &out);
    loop {
        attempted.attempts += 1;
        if attempted.attempts > 1 {
            cluster
                .upstream_stats
                .retries
                .fetch_add(1, Ordering::Relaxed);
            // Envoy's jittered exponential back-off: 25 ms base, 250 ms cap.
            let ceiling = (25u64 << (attempted.attempts - 2).min(4)).min(250);
            let ms = random.next_u64() % ceiling.max(1);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            // Later attempts move to the next endpoint that is not ejected.
            index = cluster
                .next_after(index, retries.retry_remote_localities)
                .ok_or(ProxyError::NoHealthyUpstream)?;
        }
        let target = &cluster.targets[index];
        attempted.upstream = Some(target.authority().clone());
        // HTTP/1.1: one connection per request in flight, within `maxConnections`.
        let connection = if h2 {
            None
        } else {
            cluster.connection().await.map_err(ProxyError::Overflow)?
        };
        let body = out.body.take().unwrap_or_else(empty);
        let in_flight = cluster.start(index);
        // The last attempt takes the headers; earlier ones send a copy, unless a retry
        // can only follow an attempt that gives them back unsent.
        let copied = attempted.attempts < max_attempts && retry_on.after_sending(h2);
        let headers = if copied {
            out.headers.clone()
        } else {
            std::mem::take(&mut out.headers)
        };
        let call = upstream.call(cluster, index, &out, headers, body, h2);
        attempted.in_flight = Some(index);
        let result = match per_try {
            // A try that overruns is dropped (its connection with it) and may be retried.
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or(Err(ProxyError::UpstreamPerTryTimeout.into())),
            None => call.await,
        };
        // Without a copy, a retry needs the headers back.
        let mut whole = copied;
        let result = result.map_err(|failed| {
            if let Some(headers) = failed.headers {
                out.headers = headers;
                whole = true;
            }
            failed.error
        });
        let outcome = match &result {
            Ok((resp, _)) => Some(Outcome::Response(resp.status().as_u16())),
            Err(ProxyError::UpstreamConnect(_)) => Some(Outcome::ConnectFailure),
            Err(ProxyError::UpstreamReset(_) | ProxyError::UpstreamRefused(_)) => {
                Some(Outcome::Reset)
            }
            Err(ProxyError::UpstreamPerTryTimeout) => Some(Outcome::Timeout),
            Err(_) => None,
        };
        attempted.in_flight = None;
        if let Some(outcome) = outcome {
            cluster.report(index, outcome);
        }
        let last = attempted.attempts >= max_attempts || !whole;
        let wanted = !last
            && match &result {
                Ok((resp, _)) => retry_on.on_response(resp.status().as_u16(), resp.headers()),
                Err(err) => retry_on.on_error(err),
            };
        if wanted {
            // This request's previous retry is over: its slot goes back first.
            retry = None;
            match cluster.retry() {
                Some(slot) => {
                    retry = Some(slot);
                    // The retried response is dropped unread: its connection goes back
                    // if hyper can drain it from what it has read (else it closes).
                    if let Ok((resp, Some(lease))) = result {
                        drop(resp);
                        lease.release();
                    }
                    continue;
                }
                // Past `maxRetries`, Envoy passes on what it has and flags `UO`.
                None => attempted.retry_overflow = true,
            }
        }
        return result.map(|(resp, lease)| {
            (
                resp,
                lease,
                Held {
                    _in_flight: in_flight,
                    _admitted: admitted,
                    _connection: connection,
                    _retry: retry,
                },
            )
        });
    }
}

/// An upstream response body: fails once the route's deadline passes, counts as in
/// flight (for LEAST_REQUEST and the circuit breakers) until it is done or dropped, and
/// gives its HTTP/1.1 connection back to the pool when read to its end or dropped
/// (not when it failed or ran out of time: hyper closes the connection then).
struct UpstreamBody {
    inner: Incoming,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    lease: Option<Lease>,
    _held: Held,
}

impl UpstreamBody {
    /// The body is over (read to its end, or dropped): the connection goes back.
    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            // The connection is dropped mid-response, not drained: hyper closes it.
            self.lease = None;
            return Poll::Ready(Some(Err("upstream request timeout".into())));
        }
        let this = &mut *self;
        let (polled, over) = poll_body(&mut this.inner, this.lease.as_ref(), cx);
        if over {
            self.release();
        } else if let Poll::Ready(Some(Err(_))) = polled {
            self.lease = None;
        }
        polled.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What a poll of hyper's response body gives.
type BodyPoll = std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>>;

/// Poll `body` for a frame, through its connection's gate when it has a `lease`
/// ([`Lease::read_body`]): what it polled, and whether that was the body's end.
fn poll_body(
    body: &mut Incoming,
    lease: Option<&Lease>,
    cx: &mut std::task::Context<'_>,
) -> (BodyPoll, bool) {
    use hyper::body::Body as _;
    use std::task::Poll;
    let mut read = move || {
        let polled = std::pin::Pin::new(&mut *body).poll_frame(cx);
        let over = match &polled {
            Poll::Ready(None) => true,
            // A reader may stop at the frame that ends the body, without asking again.
            Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
            _ => false,
        };
        (polled, over)
    };
    match lease {
        Some(lease) => lease.read_body(read),
        None => read(),
    }
}

impl Drop for UpstreamBody {
    /// A body dropped with nothing left to read, or unread (a mirror's answer, a client
    /// gone): its connection goes back too, when hyper can drain the rest from what it
    /// has read (else hyper closes it).
    fn drop(&mut self) {
        self.release();
    }
}

/// The upstream request: `uri` is origin-form for HTTP/1.1, with the virtual host as
/// authority for HTTP/2.
fn request(
    out: &Outbound,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Body,
) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = out.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    req
}

/// An HTTP/1.1 request's failure once its connection was open: the client's body
/// failing or going quiet (not the upstream's doing), else a reset.
fn classify_send(e: &hyper::Error) -> ProxyError {
    let text = chain(e);
    if text.contains(super::body::STREAM_IDLE) {
        // The client's body went quiet, not the upstream.
        ProxyError::StreamIdle(text)
    } else if text.contains(super::body::REQUEST_TIMEOUT) {
        ProxyError::RequestTimeout(text)
    } else if e.is_user() {
        // The client's body failed (it went away mid-upload).
        ProxyError::DownstreamBody(text)
    } else {
        ProxyError::UpstreamReset(text)
    }
}

/// An HTTP/2 request's failure. REFUSED_STREAM is told by the h2 error's text ("refused
/// stream before processing any application logic"): the `h2` crate, whose `Reason`
/// would say it typed, is not a direct dependency.
fn classify_hyper(e: &hyper::Error) -> ProxyError {
    let text = chain(e);
    if text.contains("refused stream") || text.contains("REFUSED_STREAM") {
        ProxyError::UpstreamRefused(text)
    } else {
        ProxyError::UpstreamReset(text)
    }
}

/// An error and its sources, `: `-joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1.1 request does not carry HTTP/2's future: it is boxed where it is
    /// awaited. Every level of the request's future above `Upstream::call` holds its
    /// size, and moves of it cost a `memmove` of that size (hundreds of bytes a level,
    /// several levels a request). Sizes as the test build lays them out.
    #[test]
    fn the_http1_call_does_not_carry_the_http2_future() {
        let call = future_size!(Upstream::call, A, B, C, D, E, F, G);
        let h2 = future_size!(H2Pool::send, A, B, C, D);
        assert!(
            call < h2,
            "Upstream::call's future is {call} bytes, HTTP/2's send {h2}"
        );
    }

    /// Every combination: the client's protocol in clear text with
    /// `useClientProtocol`, else the port's; never HTTP/2 for an upgrade; the Upgrade
    /// header looked up only where it decides.
    #[test]
    fn http2_upstream_as_configured_and_never_for_an_upgrade() {
        for client_protocol in [false, true] {
            for tls in [false, true] {
                for http2 in [false, true] {
                    for version in [Version::HTTP_11, Version::HTTP_2] {
                        let expected = if client_protocol && !tls {
                            version == Version::HTTP_2
                        } else {
                            http2
                        };
                        let asked = std::cell::Cell::new(0);
                        let asked = &asked;
                        let ask = |answer: bool| {
                            move || {
                                asked.set(asked.get() + 1);
                                answer
                            }
                        };
                        let case = (client_protocol, tls, http2, version);
                        assert_eq!(
                            h2_for(client_protocol, tls, http2, version, ask(false)),
                            expected,
                            "{case:?}"
                        );
                        assert!(
                            !h2_for(client_protocol, tls, http2, version, ask(true)),
                            "{case:?} with an upgrade"
                        );
                        assert_eq!(asked.get(), if expected { 2 } else { 0 }, "{case:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn retry_conditions_as_envoy() {
        let timeout = ProxyError::UpstreamPerTryTimeout;
        let reset = ProxyError::UpstreamReset(String::new());
        let refused = ProxyError::UpstreamRefused(String::new());
        let connect = ProxyError::UpstreamConnect(String::new());
        for spec in ["5xx", "gateway-error", "reset"] {
            let r = RetryOn::parse(spec);
            assert!(r.on_error(&timeout), "{spec}: per-try timeout");
            assert!(r.on_error(&reset), "{spec}: reset");
            assert!(r.on_error(&refused), "{spec}: refused stream");
        }
        let r = RetryOn::parse("refused-stream");
        assert!(r.on_error(&refused));
        assert!(!r.on_error(&reset) && !r.on_error(&timeout) && !r.on_error(&connect));
        let r = RetryOn::parse("connect-failure");
        assert!(r.on_error(&connect) && !r.on_error(&timeout));
        assert!(!RetryOn::parse("retriable-status-codes").on_error(&timeout));
        assert!(!RetryOn::parse("5xx").on_error(&ProxyError::UpstreamTimeout));
    }

    #[test]
    fn grpc_conditions_read_grpc_status() {
        let grpc = |code: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from_static(code));
            h
        };
        let none = HeaderMap::new();
        let r = RetryOn::parse("cancelled");
        assert!(r.on_response(200, &grpc("1")));
        assert!(!r.on_response(200, &grpc("14")));
        assert!(!r.on_response(503, &none), "cancelled is not a status code");
        let r = RetryOn::parse("unavailable,deadline-exceeded,internal,resource-exhausted");
        for code in ["14", "4", "13", "8"] {
            assert!(r.on_response(200, &grpc(code)), "{code}");
        }
        assert!(!r.on_response(200, &grpc("0")));
        // Istio's default policy still retries 503 through retriable-status-codes.
        let r = RetryOn::parse(&DEFAULT_RETRIES.retry_on);
        assert!(r.on_response(503, &none));
        assert!(r.on_response(200, &grpc("1")));
        assert!(r.on_response(200, &grpc("14")));
        assert!(!r.on_response(502, &none));
        let r = RetryOn::parse("retriable-4xx,429");
        assert!(r.on_response(409, &none) && r.on_response(429, &none));
        assert!(!r.on_response(404, &none));
    }

    #[test]
    fn retry_on_parses_envoy_names() {
        let r = RetryOn::parse(" 5xx , gateway-error,reset,connect-failure,refused-stream,502 ");
        assert!(r.five_xx && r.gateway_error && r.reset && r.connect_failure && r.refused_stream);
        let mut codes = StatusSet::default();
        codes.insert(502);
        assert_eq!(r.codes, codes);
        assert!(!r.codes.contains(503) && !r.codes.contains(2000));
    }

    #[test]
    fn a_cached_retry_on_follows_the_spec_it_is_asked_for() {
        for spec in [
            "5xx",
            "5xx",
            "connect-failure,503",
            "5xx",
            "connect-failure,503",
        ] {
            assert_eq!(RetryOn::cached(spec), RetryOn::parse(spec), "{spec}");
        }
    }
}
