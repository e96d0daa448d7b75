//! Data-path failures: each knows who failed (client, gateway, plugin, upstream), the
//! status and Envoy-style response flag it maps to, and whether a retry may help. One
//! function, [`ProxyError::into_response`], turns them into responses.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::{Body, full};
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
    #[error("upstream request timeout")]
    UpstreamTimeout,
    /// A policy rewrote the path into something that is not an origin-form path.
    #[error("rewritten path {0:?} does not start with '/'")]
    InvalidRewrite(String),
    /// No plugin instance could be made: the gateway is at its instance limit.
    #[error("overloaded: {0}")]
    Overloaded(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Plugin { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::NoCluster(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamReset(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::InvalidRewrite(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            ProxyError::UpstreamReset(_) => "UR",
            ProxyError::UpstreamTimeout => "UT",
            ProxyError::InvalidRewrite(_) => "PF",
            ProxyError::Overloaded(_) => "LR",
        }
    }

    pub fn culprit(&self) -> Culprit {
        match self {
            ProxyError::BadRequest(_) => Culprit::Client,
            ProxyError::NoRoute | ProxyError::NoCluster(_) => Culprit::Gateway,
            ProxyError::Plugin { .. } | ProxyError::InvalidRewrite(_) => Culprit::Plugin,
            ProxyError::Overloaded(_) => Culprit::Gateway,
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamTimeout => Culprit::Upstream,
        }
    }

    /// Whether another attempt (to another endpoint) may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamReset(_)
        )
    }

    /// The response the client gets. Bodies follow Envoy's wording where Envoy has one.
    pub fn into_response(&self) -> Response<Body> {
        let body: &'static str = match self {
            ProxyError::BadRequest(_) => "bad request",
            ProxyError::NoRoute => "",
            ProxyError::Plugin { .. } => "policy failure",
            ProxyError::NoCluster(_) => "no healthy upstream",
            ProxyError::UpstreamConnect(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
            }
            ProxyError::UpstreamReset(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
            }
            ProxyError::UpstreamTimeout => "upstream request timeout",
            ProxyError::InvalidRewrite(_) => "policy failure",
            ProxyError::Overloaded(_) => "overloaded",
        };
        local_response(self.status(), Bytes::from_static(body.as_bytes()))
    }
}

/// A response the gateway makes itself.
pub fn local_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(full(body.clone()));
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("wasmgate"));
    resp
}
