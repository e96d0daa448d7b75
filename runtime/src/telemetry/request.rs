//! One request's telemetry, from its first byte to its last: where it went (the
//! destination's and the route's series, set by the proxy as it learns them) and the
//! trace span. When the response head is ready, the span ends and the body is wrapped
//! so Istio's metrics are recorded when the last byte has gone (or the client went
//! away): duration, sizes, and the gRPC status of the trailers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response};
use hyper::body::{Body, Frame, SizeHint};

use super::access::{AccessLog, Entry};
use super::metrics::{Metrics, Outcome, RequestStats, RouteStats, flag_bits};
use super::trace::Span;

/// What the proxy learns about a request for telemetry.
#[derive(Debug)]
pub struct Observation {
    started: Instant,
    grpc: bool,
    /// gRPC proper, not gRPC-Web ([`Observation::start`]): its status may be inferred.
    grpc_proper: bool,
    request_bytes: u64,
    /// The destination's series, once a cluster is chosen.
    pub destination: Option<Arc<RequestStats>>,
    /// The route's series, once a route is chosen.
    pub route: Option<Arc<RouteStats>>,
    /// The gateway's span (tracing on).
    pub span: Option<Span>,
}

impl Observation {
    /// Begin observing `req` (received at `started`).
    pub fn start<B: Body>(started: Instant, req: &Request<B>, span: Option<Span>) -> Self {
        // `request_protocol="grpc"` for any `application/grpc...` type: gRPC-Web too,
        // which Istio's gateways count as gRPC after their grpc-web filter translated it.
        // A status is inferred from the HTTP code only for gRPC proper (Envoy's rule:
        // `application/grpc`, alone or with `+`): a gRPC-Web answer carries its status
        // in its body, which is not read here.
        // What follows `application/grpc` in the content type, when it starts so.
        let after_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"));
        let grpc = after_grpc.is_some();
        let grpc_proper = after_grpc.is_some_and(|rest| rest.is_empty() || rest.starts_with(b"+"));
        // The declared length as hyper parsed it (`Content-Length`; none when chunked),
        // not looked up and parsed again.
        let body = req.body().size_hint().exact().unwrap_or(0);
        Observation {
            started,
            grpc,
            grpc_proper,
            request_bytes: head_size(req.headers())
                + req.uri().path_and_query().map_or(1, |p| p.as_str().len()) as u64
                + body,
            destination: None,
            route: None,
            span: None,
        }
        .with_span(span)
    }

    fn with_span(mut self, span: Option<Span>) -> Self {
        self.span = span;
        self
    }

    /// The span, when it records (attributes are worth setting).
    pub fn recording(&mut self) -> Option<&mut Span> {
        self.span.as_mut().filter(|s| s.is_recording())
    }

    /// Bytes of the request head and declared body.
    pub fn request_bytes(&self) -> u64 {
        self.request_bytes
    }

    /// The response head is ready: end the span; with metrics on, record the request
    /// when its body is done; with `log`, write its access line then.
    pub fn finish<B>(
        mut self,
        metrics: &Metrics,
        flags: &[&str],
        response: Response<B>,
        log: Option<(Arc<AccessLog>, Entry)>,
    ) -> Response<Observed<B>> {
        let status = response.status().as_u16();
        if let Some(span) = self.span.take() {
            span.finish(status);
        }
        let (parts, body) = response.into_parts();
        let head = head_size(&parts.headers) + 16;
        let record = metrics.enabled.then(|| Record {
            destination: self
                .destination
                .take()
                .unwrap_or_else(|| metrics.unknown().clone()),
            route: self.route.take(),
            outcome: Outcome {
                code: status,
                flags: flag_bits(flags.iter().copied()),
                grpc: self.grpc,
                // As Istio's stats filter: a request that is not gRPC has no
                // `grpc_response_status`, whatever its response carries (and its
                // response is not searched for one).
                grpc_status: self.grpc.then(|| grpc_status(&parts.headers)).flatten(),
            },
            started: self.started,
            request_bytes: self.request_bytes,
            infer_grpc_status: self.grpc_proper,
        });
        let log = log.map(|(log, entry)| {
            Box::new(Logged {
                log,
                entry,
                started: self.started,
            })
        });
        Response::from_parts(
            parts,
            Observed {
                inner: body,
                sent: head,
                record,
                log,
            },
        )
    }
}

/// Header bytes as they cross the wire (name, value and separators).
fn head_size(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64)
        .sum()
}

/// Looked up by a name made once: by `&str`, every response's lookup parsed and checked
/// the name first (about 340 instructions of callgrind's count, scenario 1).
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

fn grpc_status(headers: &HeaderMap) -> Option<u8> {
    headers
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The gRPC status an HTTP status code stands for (gRPC's HTTP to gRPC status mapping,
/// as Envoy's `httpToGrpcStatus`): 2 (`UNKNOWN`) for any code it does not name.
fn grpc_from_http(code: u16) -> u8 {
    match code {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

#[derive(Debug)]
struct Record {
    destination: Arc<RequestStats>,
    route: Option<Arc<RouteStats>>,
    outcome: Outcome,
    started: Instant,
    request_bytes: u64,
    /// Label a response that names no status from its HTTP code (gRPC proper).
    infer_grpc_status: bool,
}

impl Record {
    fn done(mut self, response_bytes: u64) {
        // A gRPC request whose response named no status (no `grpc-status` in its
        // trailers or head: an HTTP error, a local reply) is labelled with the status
        // its HTTP code maps to, as Envoy infers it for Istio's stats filter.
        if self.infer_grpc_status && self.outcome.grpc_status.is_none() {
            self.outcome.grpc_status = Some(grpc_from_http(self.outcome.code));
        }
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.destination
            .record(self.outcome, ms, self.request_bytes, response_bytes);
        if let Some(route) = &self.route {
            route.record(self.outcome.code, ms);
        }
    }
}

/// An access line waiting for its response to end.
#[derive(Debug)]
struct Logged {
    log: Arc<AccessLog>,
    entry: Entry,
    started: Instant,
}

/// A response body that records its request's metrics and writes its access line once
/// it has all gone out (or is dropped half-way, when the client leaves).
#[derive(Debug)]
pub struct Observed<B> {
    inner: B,
    /// Bytes sent so far, head included.
    sent: u64,
    record: Option<Record>,
    /// Boxed: the entry is large, and hyper moves the response (this body in it) several
    /// times per request; without the access log it would move for nothing.
    log: Option<Box<Logged>>,
}

impl<B> Observed<B> {
    /// `inner` as it is: nothing recorded or logged. Every response is an `Observed`, so
    /// observing one costs no second boxing of its body.
    pub fn plain(inner: B) -> Self {
        Observed {
            inner,
            sent: 0,
            record: None,
            log: None,
        }
    }

    fn done(&mut self) {
        if let Some(r) = self.record.take() {
            r.done(self.sent);
        }
        if let Some(mut l) = self.log.take() {
            l.entry.bytes_sent = self.sent;
            l.entry.duration_ms = l.started.elapsed().as_millis() as u64;
            l.log.request(&l.entry);
        }
    }
}

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    self.sent += head_size(trailers);
                    if let Some(record) = self.record.as_mut().filter(|r| r.outcome.grpc)
                        && let Some(s) = grpc_status(trailers)
                    {
                        record.outcome.grpc_status = Some(s);
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counts of the `istio_requests_total` series in `text` whose labels include
    /// every one of `labels`.
    fn requests_total<'t>(text: &'t str, labels: &[(&str, &str)]) -> Vec<&'t str> {
        text.lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{")
                    && labels
                        .iter()
                        .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next())
            .collect()
    }

    /// A trailers-only gRPC answer carries its status in the response head: Istio's
    /// `grpc_response_status` is read from there.
    #[test]
    fn a_grpc_status_in_the_head_labels_the_request() {
        let metrics = Metrics::new(true, "wasmgate", "istio-system");
        let req = Request::builder()
            .header("content-type", "application/grpc")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let response = Response::builder()
            .header("grpc-status", "14")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("response");
        let observed =
            Observation::start(Instant::now(), &req, None).finish(&metrics, &[], response, None);
        drop(observed);
        let text = metrics.render();
        assert_eq!(
            requests_total(&text, &[("grpc_response_status", "14")]),
            ["1"],
            "{text}"
        );
    }

    /// Istio's stats filter labels `grpc_response_status` for gRPC requests only: a
    /// plain HTTP request gets the empty label even when its response carries a
    /// `grpc-status`, in the head or in the trailers; a gRPC request's trailers do
    /// label it.
    #[tokio::test]
    async fn only_a_grpc_request_has_a_grpc_response_status() {
        use http_body_util::BodyExt;
        let metrics = Metrics::new(true, "wasmgate", "istio-system");
        for (content_type, in_head) in [
            ("text/plain", true),
            ("text/plain", false),
            ("application/grpc", false),
        ] {
            let req = Request::builder()
                .header("content-type", content_type)
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("request");
            let mut trailers = HeaderMap::new();
            trailers.insert(GRPC_STATUS.clone(), http::HeaderValue::from_static("7"));
            let mut response = Response::builder();
            if in_head {
                response = response.header("grpc-status", "7");
            }
            let body = http_body_util::Full::new(Bytes::from_static(b"x"))
                .with_trailers(std::future::ready(Some(Ok(trailers))));
            let response = response.body(body).expect("response");
            let observed = Observation::start(Instant::now(), &req, None).finish(
                &metrics,
                &[],
                response,
                None,
            );
            let collected = observed.into_body().collect().await.expect("body");
            assert!(collected.trailers().is_some(), "the trailers went through");
        }
        let text = metrics.render();
        let count = |protocol, status| {
            requests_total(
                &text,
                &[
                    ("request_protocol", protocol),
                    ("grpc_response_status", status),
                ],
            )
        };
        assert_eq!(count("http", ""), ["2"], "{text}");
        assert_eq!(count("http", "7"), Vec::<&str>::new(), "{text}");
        assert_eq!(count("grpc", "7"), ["1"], "{text}");
    }

    /// A gRPC request whose response carries no `grpc-status` (an HTTP error, a local
    /// reply) is labelled with the status its HTTP code maps to, as Envoy infers it;
    /// a gRPC-Web one and a plain HTTP one keep an empty label.
    #[test]
    fn a_grpc_request_without_a_status_is_labelled_from_its_http_code() {
        let metrics = Metrics::new(true, "wasmgate", "istio-system");
        for (content_type, code) in [
            ("application/grpc", 503),
            ("application/grpc+proto", 404),
            ("application/grpc", 200),
            ("application/grpc-web+proto", 502),
            ("text/plain", 503),
        ] {
            let req = Request::builder()
                .header("content-type", content_type)
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("request");
            let response = Response::builder()
                .status(code)
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("response");
            drop(Observation::start(Instant::now(), &req, None).finish(
                &metrics,
                &[],
                response,
                None,
            ));
        }
        let text = metrics.render();
        for (protocol, code, status) in [
            ("grpc", "503", "14"),
            ("grpc", "404", "12"),
            ("grpc", "200", "2"),
            // gRPC-Web counts as gRPC, but its status is in its body: none inferred.
            ("grpc", "502", ""),
            ("http", "503", ""),
        ] {
            let labels = [
                ("request_protocol", protocol),
                ("response_code", code),
                ("grpc_response_status", status),
            ];
            assert_eq!(
                requests_total(&text, &labels),
                ["1"],
                "{protocol} {code} {status}: {text}"
            );
        }
        assert_eq!(
            [400, 401, 403, 429, 502, 504, 500].map(grpc_from_http),
            [13, 16, 7, 14, 14, 14, 2]
        );
    }

    /// Every response's body is an `Observed`, and hyper moves the response several
    /// times per request: the access line's entry is boxed so those moves do not copy it
    /// (with the access log off, it is never there).
    #[test]
    fn an_observed_body_does_not_carry_the_access_line_inline() {
        let observed = size_of::<Observed<http_body_util::Empty<Bytes>>>();
        let entry = size_of::<Entry>();
        assert!(
            observed < entry,
            "Observed is {observed} bytes, the access line's entry {entry}"
        );
    }
}
