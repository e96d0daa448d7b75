//! HTTP calls to hosts the WasmPlugin grants (`outbound:<host>` in its
//! `wasmgate.io/capabilities` annotation) and a ServiceEntry defines. The call suspends
//! the plugin while the gateway does the I/O; an error says why it failed (not granted,
//! unknown host, timeout, connection failure, a body over 1 MiB). Natively the test
//! serves the calls ([`crate::testing::serve_outbound`]) after granting the host.

pub use crate::__bindings::wasmgate::policy::outbound::OutboundResponse;
use crate::Header;

/// A request to send (the WIT `outbound-request`, owned).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRequest {
    pub method: String,
    /// `host` or `host:port`: a short host expands in the VirtualService's namespace;
    /// without a port the ServiceEntry's only port is used.
    pub authority: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    /// At most 10 s; 0 means 10 s.
    pub timeout_ms: u32,
}

impl OutboundRequest {
    /// A `GET` of `path` on `authority` (`host` or `host:port`), with a 1 s timeout.
    pub fn get(authority: &str, path: &str) -> Self {
        OutboundRequest {
            method: "GET".into(),
            authority: authority.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: 1000,
        }
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }
}

impl OutboundResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

/// Send `request` and wait for the response.
pub fn call(request: &OutboundRequest) -> Result<OutboundResponse, String> {
    imp::call(request)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{OutboundRequest, OutboundResponse};

    pub fn call(request: &OutboundRequest) -> Result<OutboundResponse, String> {
        use crate::__bindings::wasmgate::policy::outbound as wit;
        let headers: Vec<&crate::Header> = request.headers.iter().collect();
        wit::call(wit::OutboundRequest {
            method: &request.method,
            authority: &request.authority,
            path: &request.path,
            headers: &headers,
            body: &request.body,
            timeout_ms: request.timeout_ms,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub use crate::testing::native::outbound_call as call;
}
