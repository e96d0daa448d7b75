//! The phases after the decision, for the chains whose policies ask for them: the
//! response phase (each such policy, in the reverse of the request order, may change
//! the response's headers and body or replace it) and the log phase (once the response's
//! last byte went out, or the client went away, off the request's path).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::body::{Replay, read_up_to, resend};
use super::error::direct_response;
use super::{Body, BoxError, ProxyError, chain::failed};
use crate::plugin::ops::apply_mutation;
use crate::plugin::types::{HeaderMutation, LogEntry};
use crate::plugin::{RequestView, ResponseView, fits};
use crate::snapshot::Chain;

/// Run the response phase of `chain` on `response`. `local`: the gateway made it.
/// Log fields the policies add go to `extra`.
pub async fn respond(
    chain: &Chain,
    view: &Arc<RequestView>,
    response: Response<Body>,
    local: bool,
    extra: &mut Vec<(String, String)>,
) -> Result<Response<Body>, ProxyError> {
    let (parts, mut body) = response.into_parts();
    // The body, read once for every policy that asked.
    let mut trailers = None;
    let (mut read, mut rest): (Option<Bytes>, Option<Body>) = match chain.wants.response_body {
        Some(limit) => match read_up_to(&mut body, limit).await {
            Ok(whole) if !whole.over => {
                trailers = whole.trailers;
                (Some(whole.data), None)
            }
            Ok(prefix) => (None, Some(resend(prefix, body))),
            Err(e) => {
                return Err(ProxyError::UpstreamReset(format!(
                    "reading the response body: {e}"
                )));
            }
        },
        None => (None, Some(body)),
    };
    let mut current = Arc::new(ResponseView {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: read.clone(),
        local,
    });
    let mut body_changed = false;
    for (i, link) in chain.links.iter().enumerate().rev() {
        let interest = link.policy.interest();
        // Only the policies that ran on the request (its port, not skipped).
        if !(interest.response || interest.response_body.is_some()) || !view.state().ran(i) {
            continue;
        }
        if let Some(limit) = interest.response_body
            && !fits(Some(limit), current.body.as_ref())
        {
            if link.fail_open {
                continue;
            }
            return Err(ProxyError::Plugin {
                plugin: link.policy.plugin_name().to_string(),
                message: format!("the response body is over the {limit} bytes it reads"),
            });
        }
        let edit = match link.policy.on_response(view, &current).await {
            Ok(edit) => edit,
            Err(e) => {
                failed(link, e)?;
                continue;
            }
        };
        if edit.body.is_some() && interest.response_body.is_none() {
            let message = "replaced the response body without a response-body interest";
            if link.fail_open {
                tracing::warn!(
                    plugin = link.policy.plugin_name(),
                    "skipped (FAIL_OPEN): {message}"
                );
                continue;
            }
            return Err(ProxyError::Plugin {
                plugin: link.policy.plugin_name().to_string(),
                message: message.into(),
            });
        }
        extra.extend(edit.log_fields.into_iter().map(|h| (h.name, h.value)));
        let now = Arc::make_mut(&mut current);
        if let Some(reply) = edit.replace {
            let body = Bytes::from(reply.body);
            let (made, _) =
                direct_response(reply.status, &reply.headers, body.clone(), |_| {}).into_parts();
            *now = ResponseView {
                status: made.status.as_u16(),
                headers: made.headers,
                body: Some(body.clone()),
                local: true,
            };
            read = Some(body);
            rest = None;
            trailers = None;
            body_changed = true;
        }
        if let Some(ops) = edit.headers {
            apply_mutation(&mut now.headers, Some(&ops));
        }
        if let Some(body) = edit.body {
            let body = Bytes::from(body);
            now.body = Some(body.clone());
            read = Some(body);
            rest = None;
            body_changed = true;
        }
    }
    let view = Arc::try_unwrap(current).unwrap_or_else(|shared| (*shared).clone());
    let mut out = Response::new(match (rest, read) {
        (Some(streaming), _) => streaming,
        (None, Some(bytes)) if trailers.is_some() => Replay::new(bytes, trailers).boxed(),
        (None, Some(bytes)) => super::full(bytes),
        (None, None) => super::empty(),
    });
    *out.status_mut() = StatusCode::from_u16(view.status).unwrap_or(StatusCode::OK);
    *out.headers_mut() = view.headers;
    if body_changed {
        let len = view.body.as_ref().map_or(0, Bytes::len);
        let h = out.headers_mut();
        h.remove(header::TRANSFER_ENCODING);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(out)
}

/// Apply the response header operations edits made for a local reply.
pub fn reply_ops(headers: &mut HeaderMap, ops: &[HeaderMutation]) {
    for m in ops {
        apply_mutation(headers, Some(m));
    }
}

/// What the log phase is told besides what it counts itself.
pub struct LogFacts {
    pub chain: Arc<Chain>,
    pub view: Arc<RequestView>,
    pub started: Instant,
    pub upstream_ns: Option<u64>,
    pub flags: String,
    pub upstream_host: String,
    pub upstream_cluster: String,
}

/// Wrap `response`'s body so the chain's log phase runs once it ends (or is dropped).
pub fn log_when_done(response: Response<Body>, facts: LogFacts) -> Response<Body> {
    let status = response.status().as_u16();
    response.map(|body| {
        LogBody {
            inner: body,
            sent: 0,
            status,
            facts: Some(facts),
        }
        .boxed()
    })
}

struct LogBody {
    inner: Body,
    sent: u64,
    status: u16,
    facts: Option<LogFacts>,
}

impl LogBody {
    fn finish(&mut self) {
        let Some(f) = self.facts.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request_bytes = f.view.body.as_ref().map_or_else(
            || {
                f.view
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0)
            },
            |b| b.len() as u64,
        );
        let entry = LogEntry {
            status: self.status,
            request_bytes,
            response_bytes: self.sent,
            duration_ns: u64::try_from(f.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            upstream_ns: f.upstream_ns,
            response_flags: f.flags,
            upstream_host: f.upstream_host,
            upstream_cluster: f.upstream_cluster,
        };
        // Off the request's path: the response is already out.
        runtime.spawn(async move {
            for (i, link) in f.chain.links.iter().enumerate() {
                if !link.policy.interest().log || !f.view.state().ran(i) {
                    continue;
                }
                if let Err(e) = link.policy.on_log(&f.view, entry.clone()).await {
                    tracing::debug!(plugin = link.policy.plugin_name(), "log phase: {e}");
                }
            }
        });
    }
}

impl HttpBody for LogBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
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

impl Drop for LogBody {
    fn drop(&mut self) {
        self.finish();
    }
}
