//! The span exporter: a bounded queue that `Span::finish` never waits on, and one task
//! that batches what it holds and POSTs it as OTLP/HTTP protobuf to the collector.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Recording, otlp};

/// Where and how spans are exported.
#[derive(Clone, Debug, PartialEq)]
pub struct ExporterConfig {
    /// `--otlp-endpoint`: the collector's full OTLP/HTTP traces URL, such as
    /// `http://127.0.0.1:4318/v1/traces`; a URL without a path gets `/v1/traces`.
    pub endpoint: String,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Finished spans waiting for the exporter; when full, spans are dropped.
    pub queue_capacity: usize,
    /// Spans per POST at most.
    pub max_batch: usize,
    /// How long the first span of a batch waits for others.
    pub flush_interval: Duration,
    /// One POST, connecting included; then the batch is dropped.
    pub timeout: Duration,
}

impl ExporterConfig {
    /// The defaults: 2048 queued spans, batches of 512 or 1 s, 2 s per POST.
    pub fn new(endpoint: impl Into<String>, service_name: impl Into<String>) -> Self {
        ExporterConfig {
            endpoint: endpoint.into(),
            service_name: service_name.into(),
            queue_capacity: 2048,
            max_batch: 512,
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
        }
    }
}

/// A bad `--otlp-endpoint`.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("--otlp-endpoint {0:?}: not a URL: {1}")]
    Invalid(String, String),
    #[error("--otlp-endpoint {0:?}: only http:// collectors are supported")]
    Scheme(String),
}

/// The exporter's counters, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    exported: AtomicU64,
    dropped: AtomicU64,
    export_failures: AtomicU64,
    failed_spans: AtomicU64,
}

impl Stats {
    /// Spans the collector accepted (a 2xx answer).
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Spans dropped at `finish` because the queue was full (or the exporter gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// POSTs that failed: no connection, timeout, or a non-2xx answer.
    pub fn export_failures(&self) -> u64 {
        self.export_failures.load(Ordering::Relaxed)
    }

    /// Spans lost in those failed POSTs.
    pub fn failed_spans(&self) -> u64 {
        self.failed_spans.load(Ordering::Relaxed)
    }
}

/// The sending end: cheap to clone, one per [`super::Tracer`]. The task ends, after
/// sending what it still holds, once every clone is dropped.
#[derive(Clone, Debug)]
pub struct Exporter {
    tx: mpsc::Sender<Box<Recording>>,
    stats: Arc<Stats>,
}

impl Exporter {
    /// Start the exporter task on the current tokio runtime (it panics outside one, as
    /// `tokio::spawn` does). Fails only on a bad URL. The handle resolves when the task
    /// has sent what it held after the last `Exporter` clone was dropped.
    pub fn spawn(config: ExporterConfig) -> Result<(Exporter, JoinHandle<()>), EndpointError> {
        let uri = endpoint(&config.endpoint)?;
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let stats = Arc::new(Stats::default());
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let task = Task {
            rx,
            client,
            uri,
            config,
            stats: stats.clone(),
            failing: false,
        };
        let handle = tokio::spawn(task.run());
        Ok((Exporter { tx, stats }, handle))
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Spans waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// An exporter whose queue the caller reads (unit tests).
    #[cfg(test)]
    pub(super) fn channel(capacity: usize) -> (Exporter, mpsc::Receiver<Box<Recording>>) {
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::new(Stats::default());
        (Exporter { tx, stats }, rx)
    }

    /// Queue a finished span, or drop and count it.
    pub(super) fn send(&self, span: Box<Recording>) {
        if self.tx.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The collector's URL: http only, `/v1/traces` when no path is given (as OpenTelemetry
/// SDKs do with a base endpoint).
fn endpoint(raw: &str) -> Result<Uri, EndpointError> {
    let uri: Uri = raw.parse().map_err(|e: http::uri::InvalidUri| {
        EndpointError::Invalid(raw.to_string(), e.to_string())
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(EndpointError::Scheme(raw.to_string())),
        None => {
            return Err(EndpointError::Invalid(
                raw.to_string(),
                "no scheme (http://host:port/v1/traces)".to_string(),
            ));
        }
    }
    let Some(authority) = uri.authority().cloned() else {
        return Err(EndpointError::Invalid(
            raw.to_string(),
            "no host".to_string(),
        ));
    };
    match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("" | "/") => Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query("/v1/traces")
            .build()
            .map_err(|e| EndpointError::Invalid(raw.to_string(), e.to_string())),
        Some(_) => Ok(uri),
    }
}

struct Task {
    rx: mpsc::Receiver<Box<Recording>>,
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    config: ExporterConfig,
    stats: Arc<Stats>,
    /// The last POST failed: the next failure is logged at debug, not warn.
    failing: bool,
}

impl Task {
    async fn run(mut self) {
        let max = self.config.max_batch.max(1);
        let mut batch: Vec<Box<Recording>> = Vec::with_capacity(max);
        loop {
            // An idle exporter sleeps until a span comes: no timer ticks for nothing.
            if self.rx.recv_many(&mut batch, max).await == 0 {
                return;
            }
            let deadline = Instant::now() + self.config.flush_interval;
            let mut closed = false;
            while batch.len() < max {
                let room = max - batch.len();
                let more = tokio::time::timeout_at(deadline, self.rx.recv_many(&mut batch, room));
                match more.await {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let mut body = Vec::new();
            otlp::encode(&self.config.service_name, &batch, &mut body);
            let count = batch.len() as u64;
            batch.clear();
            self.post(Bytes::from(body), count).await;
            if closed {
                return;
            }
        }
    }

    async fn post(&mut self, body: Bytes, count: u64) {
        let sent = tokio::time::timeout(self.config.timeout, self.send(body)).await;
        let failure = match sent {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!(
                "no answer within {} ms",
                self.config.timeout.as_millis()
            )),
        };
        match failure {
            None => {
                self.stats.exported.fetch_add(count, Ordering::Relaxed);
                if self.failing {
                    tracing::info!(endpoint = %self.uri, "OTLP collector reachable again");
                }
                self.failing = false;
            }
            Some(e) => {
                self.stats.export_failures.fetch_add(1, Ordering::Relaxed);
                self.stats.failed_spans.fetch_add(count, Ordering::Relaxed);
                if self.failing {
                    tracing::debug!(endpoint = %self.uri, spans = count, "span export failed: {e}");
                } else {
                    tracing::warn!(endpoint = %self.uri, spans = count, "span export failed (spans dropped, not retried): {e}");
                }
                self.failing = true;
            }
        }
    }

    async fn send(&self, body: Bytes) -> Result<(), String> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        let resp = self.client.request(req).await.map_err(|e| format!("{e}"))?;
        let status = resp.status();
        // Read (a bounded amount of) the answer so the connection can be reused.
        let _ = Limited::new(resp.into_body(), 64 * 1024).collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_urls() {
        let ok = |s: &str| endpoint(s).map(|u| u.to_string()).unwrap_or_default();
        assert_eq!(
            ok("http://127.0.0.1:4318/v1/traces"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            ok("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            ok("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(ok("http://c/custom/path"), "http://c/custom/path");
        assert!(matches!(
            endpoint("https://c:4318/v1/traces"),
            Err(EndpointError::Scheme(_))
        ));
        assert!(matches!(
            endpoint("127.0.0.1:4318"),
            Err(EndpointError::Invalid(..) | EndpointError::Scheme(_))
        ));
        assert!(matches!(
            endpoint("not a url"),
            Err(EndpointError::Invalid(..))
        ));
    }
}
