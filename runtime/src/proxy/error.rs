//! Data-path failures: each knows who failed (client, gateway, plugin, upstream), the
//! status and Envoy-style response flag it maps to, and whether a retry may help. One
//! function, [`ProxyError::into_response`], turns them into responses.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::headers::single_content_type;
use super::{Body, full};
use crate::plugin::ops::append_all;
use crate::plugin::types::Header;
use crate::snapshot::ResolveError;

/// Who caused a failure; used in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    Client,
    Gateway,
    Plugin,
    Upstream,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no route")]
    NoRoute,
    #[error("policy {plugin} failed: {message}")]
    Plugin { plugin: String, message: String },
    #[error("{0}")]
    NoCluster(ResolveError),
    #[error("upstream connect failure: {0}")]
    UpstreamConnect(String),
    #[error("upstream reset: {0}")]
    UpstreamReset(String),
    /// HTTP/2 `REFUSED_STREAM`: the upstream did not process the request at all.
    #[error("upstream refused the stream: {0}")]
    UpstreamRefused(String),
    /// The route's timeout: no retry left in it.
    #[error("upstream request timeout")]
    UpstreamTimeout,
    /// One attempt's `perTryTimeout`; retried under `5xx`, `gateway-error`, `reset`.
    #[error("upstream per-try timeout")]
    UpstreamPerTryTimeout,
    /// A policy rewrote the path into something that is not an origin-form path.
    #[error("rewritten path {0:?} does not start with '/'")]
    InvalidRewrite(String),
    /// No plugin instance could be made: the gateway is at its instance limit.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A FAIL_CLOSE plugin's breaker is open: it was not called.
    #[error("policy {0} quarantined after repeated traps")]
    Quarantined(String),
    /// A circuit breaker of the cluster refused the request (Envoy's overflow).
    #[error("cluster circuit breaker {0} overflowed")]
    Overflow(crate::cluster::Overflow),
    /// The request body sent nothing for `--stream-idle-timeout-seconds`.
    #[error("{0}")]
    StreamIdle(String),
    /// The request was not received whole within `--request-timeout-seconds`.
    #[error("{0}")]
    RequestTimeout(String),
    /// The request body failed while it was sent upstream (the client went away).
    #[error("request body failed: {0}")]
    DownstreamBody(String),
    /// Outlier detection ejected every endpoint of the cluster.
    #[error("every endpoint of the cluster is ejected")]
    NoHealthyUpstream,
    /// The request body is larger than a FAIL_CLOSE plugin's body interest allows.
    #[error("request body over the {limit} bytes policy {plugin} reads")]
    PayloadTooLarge { plugin: String, limit: u32 },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Plugin { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::NoCluster(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamRefused(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout | ProxyError::UpstreamPerTryTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::InvalidRewrite(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Overloaded(_)
            | ProxyError::Quarantined(_)
            | ProxyError::Overflow(_)
            | ProxyError::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::StreamIdle(_) | ProxyError::RequestTimeout(_) => {
                StatusCode::REQUEST_TIMEOUT
            }
            ProxyError::DownstreamBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Envoy's response flag for the access log.
    pub fn flag(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "DPE",
            ProxyError::NoRoute => "NR",
            ProxyError::Plugin { .. } => "PF",
            ProxyError::NoCluster(ResolveError::NoEndpoints(_)) => "UH",
            ProxyError::NoCluster(_) => "NC",
            ProxyError::UpstreamConnect(_) => "UF",
            ProxyError::UpstreamReset(_) | ProxyError::UpstreamRefused(_) => "UR",
            ProxyError::UpstreamTimeout | ProxyError::UpstreamPerTryTimeout => "UT",
            ProxyError::InvalidRewrite(_) => "PF",
            ProxyError::Overloaded(_) => "LR",
            ProxyError::Quarantined(_) => "PQ",
            ProxyError::Overflow(_) => "UO",
            ProxyError::NoHealthyUpstream => "UH",
            ProxyError::PayloadTooLarge { .. } => "DPE",
            ProxyError::StreamIdle(_) => "SI",
            // Envoy sets no flag when its `request_timeout` fires.
            ProxyError::RequestTimeout(_) => "",
            // Envoy's flag for a downstream connection that ended mid-request.
            ProxyError::DownstreamBody(_) => "DC",
        }
    }

    pub fn culprit(&self) -> Culprit {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::PayloadTooLarge { .. }
            | ProxyError::StreamIdle(_)
            | ProxyError::RequestTimeout(_)
            | ProxyError::DownstreamBody(_) => Culprit::Client,
            ProxyError::NoRoute | ProxyError::NoCluster(_) => Culprit::Gateway,
            ProxyError::Plugin { .. }
            | ProxyError::InvalidRewrite(_)
            | ProxyError::Quarantined(_) => Culprit::Plugin,
            ProxyError::Overloaded(_) => Culprit::Gateway,
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamRefused(_)
            | ProxyError::UpstreamTimeout
            | ProxyError::UpstreamPerTryTimeout
            | ProxyError::Overflow(_)
            | ProxyError::NoHealthyUpstream => Culprit::Upstream,
        }
    }

    /// Whether another attempt (to another endpoint) may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamConnect(_)
                | ProxyError::UpstreamReset(_)
                | ProxyError::UpstreamRefused(_)
                | ProxyError::UpstreamPerTryTimeout
        )
    }

    /// The response the client gets. Bodies follow Envoy's wording where Envoy has one.
    pub fn into_response(&self) -> Response<Body> {
        let body: &'static str = match self {
            ProxyError::BadRequest(_) => "bad request",
            ProxyError::NoRoute => "",
            ProxyError::Plugin { .. } => "policy failure",
            ProxyError::NoCluster(_) | ProxyError::NoHealthyUpstream => "no healthy upstream",
            ProxyError::Overflow(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow"
            }
            ProxyError::UpstreamConnect(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
            }
            ProxyError::UpstreamReset(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
            }
            ProxyError::UpstreamRefused(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset"
            }
            ProxyError::UpstreamTimeout | ProxyError::UpstreamPerTryTimeout => {
                "upstream request timeout"
            }
            ProxyError::InvalidRewrite(_) => "policy failure",
            ProxyError::Overloaded(_) => "overloaded",
            ProxyError::Quarantined(_) => "policy unavailable",
            // Envoy's buffer filter's words.
            ProxyError::PayloadTooLarge { .. } => "Payload Too Large",
            // Envoy's words for its stream idle timeout.
            ProxyError::StreamIdle(_) => "stream timeout",
            ProxyError::RequestTimeout(_) => "request timeout",
            ProxyError::DownstreamBody(_) => "bad request",
        };
        let overflow = matches!(self, ProxyError::Overflow(_));
        local_response(self.status(), Bytes::from_static(body.as_bytes()), |h| {
            if overflow {
                // Envoy marks a breaker's refusal so clients and proxies can tell.
                h.insert("x-envoy-overloaded", HeaderValue::from_static("true"));
            }
        })
    }
}

/// A policy's direct response (a route's `directResponse`, a plugin's reply): its status
/// (200 if it is not one), its headers, then `more`, as [`local_response`] makes it.
pub fn direct_response(
    status: u16,
    headers: &[Header],
    body: Bytes,
    more: impl FnOnce(&mut HeaderMap),
) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    local_response(status, body, |h| {
        append_all(h, headers);
        more(h);
    })
}

/// A response the gateway makes itself: errors, direct responses, redirects, aborts.
/// `headers` runs first (a direct response's headers, a `Location`, the route's
/// `headers.response` operations); a body then gets `content-type: text/plain` only if
/// they set none, as Envoy's local replies do, and no reply carries two content types.
pub fn local_response(
    status: StatusCode,
    body: Bytes,
    headers: impl FnOnce(&mut HeaderMap),
) -> Response<Body> {
    let empty = body.is_empty();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    headers(h);
    if !empty && !h.contains_key(header::CONTENT_TYPE) {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    single_content_type(h);
    h.insert(header::SERVER, HeaderValue::from_static("wasmgate"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_replies_have_one_content_type() {
        let plain = local_response(StatusCode::OK, Bytes::from_static(b"x"), |_| {});
        assert_eq!(plain.headers()[header::CONTENT_TYPE], "text/plain");
        let own = local_response(StatusCode::OK, Bytes::from_static(b"{}"), |h| {
            h.append(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            h.append(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        });
        let types: Vec<_> = own.headers().get_all(header::CONTENT_TYPE).iter().collect();
        assert_eq!(types, ["application/json"], "the last one set wins");
        let empty = local_response(StatusCode::NOT_FOUND, Bytes::new(), |_| {});
        assert!(!empty.headers().contains_key(header::CONTENT_TYPE));
        assert_eq!(empty.headers()[header::SERVER], "wasmgate");
    }
}
