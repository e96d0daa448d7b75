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
use http::{HeaderMap, Request, Response};
use hyper::body::{Body, Frame, SizeHint};

use super::metrics::{Metrics, Outcome, RequestStats, RouteStats, flag_bits};
use super::trace::Span;

/// What the proxy learns about a request for telemetry.
#[derive(Debug)]
pub struct Observation {
    started: Instant,
    grpc: bool,
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
    pub fn start<B>(started: Instant, req: &Request<B>, span: Option<Span>) -> Self {
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let body = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Observation {
            started,
            grpc,
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

    /// The response head is ready: end the span; with metrics on, record the request
    /// when its body is done.
    pub fn finish<B>(
        mut self,
        metrics: &Metrics,
        flags: &[&str],
        response: Response<B>,
    ) -> Response<Observed<B>> {
        let status = response.status().as_u16();
        if let Some(span) = self.span.take() {
            span.finish(status);
        }
        let (parts, body) = response.into_parts();
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
                grpc_status: grpc_status(&parts.headers),
            },
            started: self.started,
            request_bytes: self.request_bytes,
            response_bytes: head_size(&parts.headers) + 16,
        });
        Response::from_parts(
            parts,
            Observed {
                inner: body,
                record,
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

fn grpc_status(headers: &HeaderMap) -> Option<u8> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[derive(Debug)]
struct Record {
    destination: Arc<RequestStats>,
    route: Option<Arc<RouteStats>>,
    outcome: Outcome,
    started: Instant,
    request_bytes: u64,
    response_bytes: u64,
}

impl Record {
    fn done(self) {
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.destination
            .record(self.outcome, ms, self.request_bytes, self.response_bytes);
        if let Some(route) = &self.route {
            route.record(self.outcome.code, ms);
        }
    }
}

/// A response body that records its request's metrics once it has all gone out (or is
/// dropped half-way, when the client leaves).
#[derive(Debug)]
pub struct Observed<B> {
    inner: B,
    record: Option<Record>,
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
        if let Some(record) = self.record.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        record.response_bytes += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref() {
                        record.response_bytes += head_size(trailers);
                        if let Some(s) = grpc_status(trailers) {
                            record.outcome.grpc_status = Some(s);
                        }
                    }
                }
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                    if let Some(r) = self.record.take() {
                        r.done();
                    }
                }
                Poll::Pending => {}
            }
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
        if let Some(r) = self.record.take() {
            r.done();
        }
    }
}
