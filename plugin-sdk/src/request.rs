//! [`Request`] and [`Response`]: what a policy reads, asked of the host one field at a
//! time (inside Wasm each answer is one call, so a policy pays only for what it reads),
//! or of a [`crate::testing::TestRequest`] in native tests. Fields of the request line
//! are fetched once per call and kept.

use std::cell::OnceCell;

use crate::__bindings::wasmgate::policy::types as wit;
use crate::testing::{TestRequest, TestResponse};
use crate::{ActionKind, Decision, Header};

/// The request a policy is deciding for. Header names compare case-insensitively.
pub struct Request<'a> {
    source: RequestSource<'a>,
    method: OnceCell<String>,
    /// The host's `path-and-query` and where its path ends: one call gives both.
    target: OnceCell<(String, usize)>,
    authority: OnceCell<String>,
}

/// The host's `path-and-query` and where its path ends: at the first `?`.
fn split_target(target: String) -> (String, usize) {
    // A byte loop: `find('?')` is a `memchr` behind a call in Wasm (148 instructions
    // for scenario 1's `/bench`, bench/instructions.py --wasm).
    let end = target
        .bytes()
        .position(|b| b == b'?')
        .unwrap_or(target.len());
    (target, end)
}

enum RequestSource<'a> {
    Host(&'a wit::Request),
    Test(&'a TestRequest),
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl<'a> Request<'a> {
    pub(crate) fn host(request: &'a wit::Request) -> Self {
        Request::with(RequestSource::Host(request))
    }

    pub(crate) fn test(request: &'a TestRequest) -> Self {
        Request::with(RequestSource::Test(request))
    }

    fn with(source: RequestSource<'a>) -> Self {
        Request {
            source,
            method: OnceCell::new(),
            target: OnceCell::new(),
            authority: OnceCell::new(),
        }
    }

    fn kept<'s>(
        &'s self,
        cell: &'s OnceCell<String>,
        host: impl FnOnce(&wit::Request) -> String,
        test: impl FnOnce(&'a TestRequest) -> &'a str,
    ) -> &'s str {
        match self.source {
            RequestSource::Host(r) => cell.get_or_init(|| host(r)),
            RequestSource::Test(t) => test(t),
        }
    }

    /// `GET`, `POST`, ... as received.
    pub fn method(&self) -> &str {
        self.kept(&self.method, |r| r.method(), |t| &t.method)
    }

    /// The path without the query, normalized as the gateway's `--path-normalization`
    /// says (Istio's BASE by default).
    pub fn path(&self) -> &str {
        match self.source {
            RequestSource::Host(r) => {
                let (target, end) = self.target(r);
                target.get(..end).unwrap_or_default()
            }
            RequestSource::Test(t) => &t.path,
        }
    }

    /// The raw query string without `?`; empty when there is none.
    pub fn query(&self) -> &str {
        match self.source {
            RequestSource::Host(r) => {
                let (target, end) = self.target(r);
                target.get(end + 1..).unwrap_or_default()
            }
            RequestSource::Test(t) => &t.query,
        }
    }

    /// The path and query, fetched once in one host call (the first `?` splits them).
    fn target(&self, r: &wit::Request) -> (&str, usize) {
        let (target, end) = self.target.get_or_init(|| split_target(r.path_and_query()));
        (target, *end)
    }

    /// The `Host` / `:authority` as received.
    pub fn authority(&self) -> &str {
        self.kept(&self.authority, |r| r.authority(), |t| &t.authority)
    }

    /// Name the host's prepared edit `id` as this call's answer (see
    /// [`crate::PreparedEdit::answer`]). Only a host-kept edit has an `id`, and only a
    /// host's request comes with one.
    pub(crate) fn use_edit(&self, id: u32) {
        if let RequestSource::Host(r) = self.source {
            r.use_edit(id);
        }
    }

    /// The first-party router's: hold the fault drawn for the route it matched
    /// (Istio's `fault`), for the host to apply where fault injection runs in the chain,
    /// in place of the fault policy's call (WIT `request.hold-fault`). The host takes it
    /// from the embedded router alone; a test request keeps it in
    /// [`TestRequest::held_fault`] (`None` when neither part fired, as the host does).
    #[doc(hidden)]
    pub fn hold_fault(&self, delay_ms: Option<u64>, abort: Option<&crate::Abort>) {
        match self.source {
            RequestSource::Host(r) => r.hold_fault(delay_ms, abort),
            RequestSource::Test(t) => {
                *t.held_fault.borrow_mut() =
                    (delay_ms.is_some() || abort.is_some()).then(|| (delay_ms, abort.cloned()));
            }
        }
    }

    /// The `x-request-id`.
    pub fn id(&self) -> String {
        match self.source {
            RequestSource::Host(r) => r.id(),
            RequestSource::Test(t) => t.id.clone(),
        }
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> String {
        match self.source {
            RequestSource::Host(r) => r.scheme(),
            RequestSource::Test(t) => t.scheme.clone(),
        }
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        match self.source {
            RequestSource::Host(r) => r.query_param(name),
            RequestSource::Test(t) => crate::testing::query_param(&t.query, name),
        }
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<String> {
        match self.source {
            RequestSource::Host(r) => r.header(name),
            RequestSource::Test(t) => t
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.clone()),
        }
    }

    /// Every value of header `name` (any case) joined with `,`, as Envoy matches a
    /// repeated header; `None` when the request has none. Cheaper than
    /// [`Self::header_values`] when the header is missing: nothing crosses.
    pub fn header_joined(&self, name: &str) -> Option<String> {
        match self.source {
            RequestSource::Host(r) => r.header_joined(name),
            RequestSource::Test(t) => {
                let mut values = t
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| h.value.as_str());
                let mut joined = values.next()?.to_string();
                for v in values {
                    joined.push(',');
                    joined.push_str(v);
                }
                Some(joined)
            }
        }
    }

    /// [`Self::header_joined`], with the path and the query fetched in the same host call
    /// when neither has been read yet (WIT `request.path-and-query-with-header`): a
    /// policy that reads both for most requests, as a router matching a header does,
    /// crosses into the host once instead of twice. A 0.3.0 addition: the plugin needs
    /// a gateway that has it.
    pub fn header_joined_with_path(&self, name: &str) -> Option<String> {
        match self.source {
            RequestSource::Host(r) if self.target.get().is_none() => {
                let (target, value) = r.path_and_query_with_header(name);
                // Nothing else filled the cell in between: one request, one thread.
                let _ = self.target.set(split_target(target));
                value
            }
            RequestSource::Test(t) => {
                t.read_with_path.borrow_mut().push(name.to_string());
                self.header_joined(name)
            }
            RequestSource::Host(_) => self.header_joined(name),
        }
    }

    /// Every value of header `name` (any case), in the order received.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        match self.source {
            RequestSource::Host(r) => r.header_values(name),
            RequestSource::Test(t) => t
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.clone())
                .collect(),
        }
    }

    /// Every header, names lowercase.
    pub fn headers(&self) -> Vec<Header> {
        match self.source {
            RequestSource::Host(r) => r.headers(),
            RequestSource::Test(t) => t.headers.clone(),
        }
    }

    /// The client's IP address (the TCP peer).
    pub fn client_address(&self) -> String {
        match self.source {
            RequestSource::Host(r) => r.client_address(),
            RequestSource::Test(t) => t.client_address.clone(),
        }
    }

    /// The listener port that accepted the connection.
    pub fn port(&self) -> u16 {
        match self.source {
            RequestSource::Host(r) => r.port(),
            RequestSource::Test(t) => t.port,
        }
    }

    /// The SNI the client sent, when the gateway terminated TLS.
    pub fn sni(&self) -> Option<String> {
        match self.source {
            RequestSource::Host(r) => r.sni(),
            RequestSource::Test(t) => t.sni.clone(),
        }
    }

    /// `namespace/name` of the matched Gateway.
    pub fn gateway(&self) -> String {
        match self.source {
            RequestSource::Host(r) => r.gateway(),
            RequestSource::Test(t) => t.gateway.clone(),
        }
    }

    /// `namespace/name` of the VirtualService whose chain runs.
    pub fn virtual_service(&self) -> String {
        match self.source {
            RequestSource::Host(r) => r.virtual_service(),
            RequestSource::Test(t) => t.virtual_service.clone(),
        }
    }

    /// The request body, when [`crate::Policy::interest`] asked for it and it fit.
    pub fn body(&self) -> Option<Vec<u8>> {
        match self.source {
            RequestSource::Host(r) => r.body(),
            RequestSource::Test(t) => t.visible_body(),
        }
    }

    /// The decision so far, in brief.
    pub fn action_kind(&self) -> ActionKind {
        match self.source {
            RequestSource::Host(r) => r.action_kind(),
            RequestSource::Test(t) => t.decision.borrow().kind(),
        }
    }

    /// Index of the matched route, once a router matched one.
    pub fn route_index(&self) -> Option<u32> {
        match self.source {
            RequestSource::Host(r) => r.route_index(),
            RequestSource::Test(t) => t.decision.borrow().route.as_ref().map(|r| r.index),
        }
    }

    /// The weights of a forward's destinations (empty for other actions).
    pub fn destination_weights(&self) -> Vec<u32> {
        match self.source {
            RequestSource::Host(r) => r.destination_weights(),
            RequestSource::Test(t) => match &t.decision.borrow().action {
                crate::Action::Forward(f) => f.destinations.iter().map(|d| d.weight).collect(),
                _ => Vec::new(),
            },
        }
    }

    /// The whole decision so far.
    pub fn decision(&self) -> Decision {
        match self.source {
            RequestSource::Host(r) => r.decision(),
            RequestSource::Test(t) => t.decision.borrow().clone(),
        }
    }

    /// A property an earlier policy (or this one) set for this request.
    pub fn property(&self, name: &str) -> Option<String> {
        match self.source {
            RequestSource::Host(r) => r.property(name),
            RequestSource::Test(t) => t.properties.borrow().get(name).cloned(),
        }
    }

    /// Set a property later policies (and the response and log phases) can read;
    /// `None` removes it. Bounded: at most 64 properties of at most 4 KiB, names at most
    /// 128 bytes.
    pub fn set_property(&self, name: &str, value: Option<&str>) -> Result<(), String> {
        match self.source {
            RequestSource::Host(r) => r.set_property(name, value),
            RequestSource::Test(t) => crate::testing::set_property(t, name, value),
        }
    }
}

/// A response on its way to the client (the response phase).
pub struct Response<'a> {
    source: ResponseSource<'a>,
}

enum ResponseSource<'a> {
    Host(&'a wit::Response),
    Test(&'a TestResponse),
}

impl std::fmt::Debug for Response<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl<'a> Response<'a> {
    pub(crate) fn host(response: &'a wit::Response) -> Self {
        Response {
            source: ResponseSource::Host(response),
        }
    }

    pub(crate) fn test(response: &'a TestResponse) -> Self {
        Response {
            source: ResponseSource::Test(response),
        }
    }

    pub fn status(&self) -> u16 {
        match self.source {
            ResponseSource::Host(r) => r.status(),
            ResponseSource::Test(t) => t.status,
        }
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<String> {
        match self.source {
            ResponseSource::Host(r) => r.header(name),
            ResponseSource::Test(t) => t
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.clone()),
        }
    }

    /// Every header, names lowercase.
    pub fn headers(&self) -> Vec<Header> {
        match self.source {
            ResponseSource::Host(r) => r.headers(),
            ResponseSource::Test(t) => t.headers.clone(),
        }
    }

    /// The body, when [`crate::Policy::interest`] asked for it and it fit.
    pub fn body(&self) -> Option<Vec<u8>> {
        match self.source {
            ResponseSource::Host(r) => r.body(),
            ResponseSource::Test(t) => t.visible_body(),
        }
    }

    /// Made by the gateway (a direct response, redirect, fault or error).
    pub fn local(&self) -> bool {
        match self.source {
            ResponseSource::Host(r) => r.local(),
            ResponseSource::Test(t) => t.local,
        }
    }
}
