//! Plugins' outbound calls (the `outbound` capability), sent the way routed traffic is:
//! the host is looked up among the current snapshot's ServiceEntries (an unknown host is
//! an error), an endpoint is picked, DestinationRule TLS applies, and the request runs
//! on the gateway's I/O thread (`workers::io_thread`; never on the plugin host's slow
//! lane, nor behind a reload on the control thread). The plugin host
//! has already checked the grant and bounds the wait.

use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};

use super::upstream::{Attempted, Outbound, send};
use super::{Shared, body, full};
use crate::plugin::types::RetryPolicy;
use crate::plugin::{OUTBOUND_MAX_BODY, OutboundAnswer, OutboundCall, OutboundClient};

/// The gateway's [`OutboundClient`]. Made before the first snapshot (pools take it
/// then) and attached to the gateway once it exists.
#[derive(Debug)]
pub struct PluginOutbound {
    shared: OnceLock<Weak<Shared>>,
    runtime: tokio::runtime::Handle,
}

impl PluginOutbound {
    /// On the current tokio runtime (the gateway's).
    pub fn new() -> Arc<Self> {
        Arc::new(PluginOutbound {
            shared: OnceLock::new(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Send through this gateway from now on.
    pub fn attach(&self, shared: &Arc<Shared>) {
        let _ = self.shared.set(Arc::downgrade(shared));
    }
}

impl OutboundClient for PluginOutbound {
    fn call(
        &self,
        call: OutboundCall,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<OutboundAnswer, String>> + Send>>
    {
        let shared = self.shared.get().and_then(Weak::upgrade);
        let runtime = self.runtime.clone();
        Box::pin(async move {
            let shared = shared.ok_or("the gateway is not serving yet")?;
            let timeout = call.timeout;
            let task = Abort(runtime.spawn(async move {
                tokio::time::timeout(timeout, send_call(shared, call))
                    .await
                    .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
            }));
            task.await.map_err(|e| format!("outbound call lost: {e}"))?
        })
    }
}

/// A spawned call that is stopped when its waiter goes away (the plugin's call was
/// stopped, or the request with it): its connection is let go at once.
struct Abort<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for Abort<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Abort<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send_call(shared: Arc<Shared>, call: OutboundCall) -> Result<OutboundAnswer, String> {
    let port = call.port;
    let snapshot = shared.snapshot.load_full();
    let cluster = snapshot
        .registry
        .resolve(&call.host, port, None)
        .map_err(|e| format!("{}: {e}", call.authority))?;
    // The Host the service sees: as the plugin wrote it.
    let method = Method::from_bytes(call.method.as_bytes())
        .map_err(|_| format!("{:?} is not an HTTP method", call.method))?;
    if !call.path.starts_with('/') {
        return Err(format!("path {:?} does not start with '/'", call.path));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &call.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("header {name}: the value is not valid"))?;
        headers.append(name, value);
    }
    let host = HeaderValue::from_str(&call.authority)
        .map_err(|_| format!("{:?} is not an authority", call.authority))?;
    headers.insert(header::HOST, host);
    let path_and_query = http::uri::PathAndQuery::from_maybe_shared(Bytes::from(call.path.clone()))
        .map_err(|_| format!("path {:?} is not a valid path", call.path))?;
    let out = Outbound {
        method,
        version: http::Version::HTTP_11,
        path_and_query,
        headers,
        body: (!call.body.is_empty()).then(|| full(Bytes::from(call.body))),
    };
    let no_retries = RetryPolicy {
        attempts: 0,
        per_try_timeout_ms: None,
        retry_on: String::new(),
        retry_remote_localities: false,
    };
    let response = send(
        shared.upstream(),
        &cluster,
        shared.host.balancing(),
        None,
        out,
        None,
        &no_retries,
        &mut Attempted::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let (parts, mut rest) = response.into_parts();
    let limit = u32::try_from(OUTBOUND_MAX_BODY).unwrap_or(u32::MAX);
    let read = body::read_up_to(&mut rest, limit)
        .await
        .map_err(|e| format!("reading the response: {e}"))?;
    if read.over {
        return Err(format!("response body over {OUTBOUND_MAX_BODY} bytes"));
    }
    Ok(OutboundAnswer {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: read.data.to_vec(),
    })
}
