//! Distributed tracing, as an Istio gateway does it with Envoy's OpenTelemetry tracer: the
//! request's trace context is read (W3C `traceparent`/`tracestate`, else B3), the gateway
//! opens one SERVER span per request, the span's context goes upstream, and sampled spans
//! are exported with OTLP over HTTP/protobuf by a task off the request path. The proxy
//! calls [`Tracer::start`] when a request arrives, [`Span::inject`] on the upstream
//! request's headers, [`Span::event`] after each plugin call, [`Span::set_str`] /
//! [`Span::set_int`] as facts become known, and [`Span::finish`] with the status.
//!
//! Decisions, and where they come from:
//!
//! - **Reading.** `traceparent` first (W3C Trace Context level 1: lowercase hex, version
//!   `ff` and all-zero ids invalid, version 00 exactly 55 characters, later versions may
//!   be longer after a `-`, two `traceparent` lines invalid), then the single `b3` header,
//!   then `x-b3-*` (B3 propagation: 16 or 32 hex trace id, 16 hex span id, `1`/`0`/`d`,
//!   `x-b3-sampled: true|false` tolerated, `x-b3-flags: 1` is debug). An invalid value is
//!   ignored and the next format is tried; with none valid the gateway starts a trace.
//!   B3 hex is read case-insensitively, as Envoy's Zipkin tracer does.
//! - **Sampling** is parent-based, exactly as Envoy's OpenTelemetry tracer (and its
//!   Zipkin tracer for `x-b3-sampled`) does without a configured sampler: a caller's
//!   decision wins both ways, so a sampled `traceparent` is exported at 0 % and an
//!   unsampled one is not at 100 %. Only a request without a decision (no context, or B3
//!   ids without a sampling state) rolls `--trace-sampling` (Istio's default: 1 %).
//!   Unsampled requests still get ids, and the upstream sees the gateway's span as its
//!   parent with the sampled flag off, so their traces stay consistent if they sample.
//! - **Writing.** `traceparent` always (version 00, the gateway span as parent-id, only
//!   the sampled flag), `tracestate` passed through unchanged when it came with a valid
//!   `traceparent` and removed otherwise (it would describe another trace). B3 is written
//!   in the format(s) the request came with (`b3` single and/or `x-b3-*`), replacing the
//!   caller's values so both header sets name the same span; a request without B3 gets
//!   none. This is Envoy's OpenTelemetry tracer (W3C only) plus what its Zipkin tracer
//!   would do for B3 callers, without adding four headers to every request for upstreams
//!   that never asked for them. 64-bit B3 trace ids stay 64-bit in B3 and are
//!   left-padded in `traceparent`. `x-request-id` is never touched here.
//! - **Cost.** An unsampled span allocates nothing but the `traceparent` value: ids and
//!   flags live in the [`Span`]; attributes, events and clocks exist only for a
//!   recording span (sampled, with an exporter, reporting on).
//! - **Export** ([`Exporter`]): `finish` does a `try_send` into a channel of 2048 spans;
//!   full means dropped and counted, never a wait. The task sends a batch when it holds
//!   512 spans or 1 s after the batch's first span, one POST at a time with a 2 s
//!   timeout, never retried: a failed batch is counted and dropped (OTLP allows retries
//!   on 429/503; a gateway must not buffer for a collector that is down). Memory is the
//!   queue plus one batch; each span holds at most 128 attributes and 128 events, string
//!   values cut at 1 KiB (`http.url` at 256 bytes, Envoy's `max_path_tag_length`).
//! - **Attributes** are Envoy's tag names as Istio exports them (`http.method`,
//!   `http.url`, `http.status_code`, `upstream_cluster`, `istio.canonical_service`, ...),
//!   plus wasmgate's `wasmgate.virtual_service` and `wasmgate.route`; a 5xx sets the
//!   span status to ERROR. Istio's `Telemetry` custom tags (literal, header, environment)
//!   come in through [`Settings`].

mod context;
mod export;
mod otlp;

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::HeaderName;

pub use context::{B3, Context, Format, Parent, TRACEPARENT, TRACESTATE};
pub use export::{EndpointError, Exporter, ExporterConfig, Stats};

/// A 128-bit trace id; printed as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

/// A 64-bit span id; printed as 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub u64);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Span attribute names: Envoy's tracing tags as Istio's gateways export them.
pub mod attr {
    pub const HTTP_METHOD: &str = "http.method";
    /// Cut at 256 bytes, Envoy's default `max_path_tag_length`.
    pub const HTTP_URL: &str = "http.url";
    /// Set by [`super::Span::finish`].
    pub const HTTP_STATUS_CODE: &str = "http.status_code";
    pub const HTTP_PROTOCOL: &str = "http.protocol";
    pub const UPSTREAM_CLUSTER: &str = "upstream_cluster";
    pub const UPSTREAM_ADDRESS: &str = "upstream_address";
    pub const RESPONSE_FLAGS: &str = "response_flags";
    pub const USER_AGENT: &str = "user_agent";
    pub const PEER_ADDRESS: &str = "peer.address";
    pub const REQUEST_ID: &str = "guid:x-request-id";
    /// Set by [`super::Tracer::start`] from [`super::Settings::canonical_service`].
    pub const CANONICAL_SERVICE: &str = "istio.canonical_service";
    /// wasmgate's own: the VirtualService (`namespace/name`) whose chain routed.
    pub const VIRTUAL_SERVICE: &str = "wasmgate.virtual_service";
    /// wasmgate's own: the route's name (or `http[i]`).
    pub const ROUTE: &str = "wasmgate.route";
    /// On each plugin event: how long the call took.
    pub const DURATION_NS: &str = "duration_ns";
}

/// Attributes a span keeps at most (OpenTelemetry's default span limit); more are
/// counted as dropped.
pub const MAX_ATTRIBUTES: usize = 128;
/// Events a span keeps at most (OpenTelemetry's default span limit).
pub const MAX_EVENTS: usize = 128;
/// String attribute values are cut to this many bytes (at a character boundary).
pub const MAX_VALUE_LEN: usize = 1024;
/// `http.url` is cut to this many bytes, as Envoy does by default.
pub const MAX_URL_LEN: usize = 256;

/// One of Istio `Telemetry`'s `tracing[].customTags`: an attribute added to every
/// recorded span.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomTag {
    pub name: String,
    pub value: TagValue,
}

/// Where a custom tag's value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum TagValue {
    /// `literal.value`.
    Literal(String),
    /// `header.name`, or `header.defaultValue` when the request lacks it (no tag when
    /// neither). A name that is not a valid header name never matches.
    Header {
        name: String,
        default: Option<String>,
    },
    /// `environment.name` of the gateway's process, read once when the tracer is built,
    /// or `environment.defaultValue`.
    Environment {
        name: String,
        default: Option<String>,
    },
}

/// What the tracer is built from: `--trace-sampling` and Istio's `Telemetry` resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `randomSamplingPercentage`, 0 to 100 (clamped), for requests that bring no
    /// sampling decision. Istio's default is 1.
    pub sampling_percent: f64,
    pub custom_tags: Vec<CustomTag>,
    /// The `istio.canonical_service` attribute of every span.
    pub canonical_service: String,
    /// `false` for `disableSpanReporting`: contexts are still read and propagated.
    pub report_spans: bool,
    /// The span name until [`Span::set_name`] gives a better one (Istio names a
    /// gateway's spans by the route's destination, `host:port/*`).
    pub default_span_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sampling_percent: 1.0,
            custom_tags: Vec::new(),
            canonical_service: "wasmgate".to_string(),
            report_spans: true,
            default_span_name: "wasmgate".to_string(),
        }
    }
}

/// A custom tag ready for requests: (attribute name, value or header and default).
enum Tag {
    Literal(String, String),
    Header(String, HeaderName, Option<String>),
}

/// Built once per settings (cheap: a reload may build a new one); shared by requests.
pub struct Tracer {
    /// A roll (a uniform u64) below this samples; 0 never does.
    threshold: u64,
    /// 100 %: every roll samples, `u64::MAX` included.
    always: bool,
    tags: Vec<Tag>,
    canonical_service: String,
    default_span_name: String,
    export: Option<Exporter>,
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracer")
            .field("threshold", &self.threshold)
            .field("always", &self.always)
            .field("tags", &self.tags.len())
            .field("exporting", &self.export.is_some())
            .finish()
    }
}

impl Tracer {
    /// A tracer that records sampled spans into `export` (none: contexts are still read,
    /// decided and propagated, but nothing is recorded).
    pub fn new(settings: &Settings, export: Option<Exporter>) -> Tracer {
        let percent = if settings.sampling_percent.is_nan() {
            0.0
        } else {
            settings.sampling_percent.clamp(0.0, 100.0)
        };
        // A roll is a uniform u64: sampled when below percent/100 of 2^64.
        let threshold = (percent / 100.0 * 18_446_744_073_709_551_616.0) as u64;
        let tags = settings
            .custom_tags
            .iter()
            .filter_map(|t| {
                let key = t.name.clone();
                match &t.value {
                    TagValue::Literal(v) => Some(Tag::Literal(key, v.clone())),
                    TagValue::Environment { name, default } => std::env::var(name)
                        .ok()
                        .or_else(|| default.clone())
                        .map(|v| Tag::Literal(key, v)),
                    TagValue::Header { name, default } => {
                        match HeaderName::from_bytes(name.as_bytes()) {
                            Ok(h) => Some(Tag::Header(key, h, default.clone())),
                            Err(_) => {
                                tracing::warn!(tag = %t.name, header = %name, "custom tag names an invalid header; skipped");
                                None
                            }
                        }
                    }
                }
            })
            .collect();
        Tracer {
            threshold,
            always: percent >= 100.0,
            tags,
            canonical_service: settings.canonical_service.clone(),
            default_span_name: settings.default_span_name.clone(),
            export: export.filter(|_| settings.report_spans),
        }
    }

    /// Whether a request without a caller's decision is sampled, for a roll `r`.
    fn roll(&self, r: u64) -> bool {
        self.always || r < self.threshold
    }

    /// Open the gateway's span for a request with these headers: its context read by
    /// [`Context::from_headers`], then [`Tracer::start_with`].
    pub fn start(&self, headers: &HeaderMap, next_u64: impl FnMut() -> u64) -> Span {
        let context = Context::from_headers(headers);
        self.start_with(&context, headers, next_u64)
    }

    /// Open the gateway's span as the child of `context` (a new trace when it has no
    /// parent). `next_u64` is a fast random source (the gateway's splitmix64): one draw
    /// for the span id, two more for a new trace id, one for the sampling roll when the
    /// caller made no decision. `headers` are read for custom header tags when recording.
    pub fn start_with(
        &self,
        context: &Context,
        headers: &HeaderMap,
        mut next_u64: impl FnMut() -> u64,
    ) -> Span {
        let sampled = match context.sampled {
            Some(s) => s,
            None => self.roll(next_u64()),
        };
        let trace_id = match context.parent {
            Some(p) => p.trace_id,
            None => {
                let hi = next_u64();
                let lo = next_u64();
                TraceId((u128::from(hi) << 64 | u128::from(lo)).max(1))
            }
        };
        let span_id = SpanId(next_u64().max(1));
        let parent = context.parent.map(|p| p.span_id);
        let recording = match &self.export {
            Some(export) if sampled => {
                let mut rec = Recording::new(trace_id, span_id, parent, &self.default_span_name);
                if context.format == Some(Format::W3c) {
                    rec.tracestate = tracestate(headers);
                }
                rec.set(
                    Cow::Borrowed(attr::CANONICAL_SERVICE),
                    Value::Str(self.canonical_service.clone()),
                );
                for tag in &self.tags {
                    match tag {
                        Tag::Literal(k, v) => {
                            rec.set(Cow::Owned(k.clone()), Value::Str(v.clone()));
                        }
                        Tag::Header(k, h, default) => {
                            let value = headers
                                .get(h)
                                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                .or_else(|| default.clone());
                            if let Some(v) = value {
                                rec.set(Cow::Owned(k.clone()), Value::str(v, MAX_VALUE_LEN));
                            }
                        }
                    }
                }
                Some((Box::new(rec), export.clone()))
            }
            _ => None,
        };
        Span {
            trace_id,
            span_id,
            parent,
            sampled,
            debug: context.debug && sampled,
            b3: context.b3,
            drop_tracestate: context.tracestate && context.format != Some(Format::W3c),
            recording,
        }
    }
}

/// Every `tracestate` line, joined as one list (RFC 9110 5.3).
fn tracestate(headers: &HeaderMap) -> String {
    let mut out = String::new();
    for v in headers.get_all(TRACESTATE) {
        let v = String::from_utf8_lossy(v.as_bytes());
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(v);
    }
    truncate(&mut out, MAX_VALUE_LEN * 4);
    out
}

/// The gateway's span for one request. Unsampled, it is a handful of ids; sampled (and
/// with an exporter), it records attributes and events until [`Span::finish`] hands it
/// to the exporter. A span dropped without `finish` (the client went away and the
/// request's future with it) is still exported, with an ERROR status.
#[derive(Debug)]
pub struct Span {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    sampled: bool,
    debug: bool,
    b3: B3,
    /// A `tracestate` came without a valid `traceparent`: it describes another trace.
    drop_tracestate: bool,
    recording: Option<(Box<Recording>, Exporter)>,
}

impl Span {
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The caller's span, when the request came with a context.
    pub fn parent_span_id(&self) -> Option<SpanId> {
        self.parent
    }

    /// The sampling decision propagated upstream.
    pub fn is_sampled(&self) -> bool {
        self.sampled
    }

    /// Whether this span will be exported: the setters below do nothing otherwise.
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Write this span's context into an upstream request's headers (see the module
    /// comment for which headers).
    pub fn inject(&self, headers: &mut HeaderMap) {
        context::inject(self, headers);
    }

    /// The span's name (Istio: the route's destination as `host:port/*`).
    pub fn set_name(&mut self, name: &str) {
        if let Some((rec, _)) = &mut self.recording {
            rec.name.clear();
            rec.name.push_str(name);
            truncate(&mut rec.name, MAX_VALUE_LEN);
        }
    }

    /// A string attribute (replacing one of the same name).
    pub fn set_str(&mut self, key: &'static str, value: &str) {
        if let Some((rec, _)) = &mut self.recording {
            let max = if key == attr::HTTP_URL {
                MAX_URL_LEN
            } else {
                MAX_VALUE_LEN
            };
            rec.set(Cow::Borrowed(key), Value::str(value.to_string(), max));
        }
    }

    /// An integer attribute (replacing one of the same name).
    pub fn set_int(&mut self, key: &'static str, value: i64) {
        if let Some((rec, _)) = &mut self.recording {
            rec.set(Cow::Borrowed(key), Value::Int(value));
        }
    }

    /// One plugin call (or any step) named `name` that just ended after `duration`: an
    /// event at the time it started, with a `duration_ns` attribute.
    pub fn event(&mut self, name: &str, duration: Duration) {
        if let Some((rec, _)) = &mut self.recording {
            if rec.events.len() >= MAX_EVENTS {
                rec.dropped_events += 1;
                return;
            }
            let at = rec.started.elapsed().saturating_sub(duration);
            let mut name = name.to_string();
            truncate(&mut name, MAX_VALUE_LEN);
            rec.events.push(Event {
                unix_nanos: rec.start_unix_nanos.saturating_add(nanos(at)),
                name,
                duration_ns: i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX),
            });
        }
    }

    /// End the span with the response's status (`http.status_code`; 5xx is an ERROR
    /// status) and hand it to the exporter's queue, or drop and count it when the queue
    /// is full. Never waits.
    pub fn finish(mut self, status: u16) {
        self.end(Some(status));
    }

    fn end(&mut self, status: Option<u16>) {
        let Some((mut rec, export)) = self.recording.take() else {
            return;
        };
        rec.end_unix_nanos = rec
            .start_unix_nanos
            .saturating_add(nanos(rec.started.elapsed()));
        match status {
            Some(status) => {
                rec.set(
                    Cow::Borrowed(attr::HTTP_STATUS_CODE),
                    Value::Int(i64::from(status)),
                );
                if status >= 500 {
                    rec.error = Some(Cow::Borrowed(""));
                }
            }
            None => {
                rec.error = Some(Cow::Borrowed("ended before a response was sent"));
            }
        }
        export.send(rec);
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.end(None);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(nanos)
        .unwrap_or(0)
}

/// Cut `s` to at most `max` bytes at a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

/// An attribute value: OTLP `AnyValue` string or int.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
}

impl Value {
    fn str(mut s: String, max: usize) -> Value {
        truncate(&mut s, max);
        Value::Str(s)
    }
}

#[derive(Debug)]
pub(crate) struct Event {
    unix_nanos: u64,
    name: String,
    duration_ns: i64,
}

/// What a recording span has gathered; what the exporter encodes.
#[derive(Debug)]
pub(crate) struct Recording {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    tracestate: String,
    name: String,
    start_unix_nanos: u64,
    started: Instant,
    end_unix_nanos: u64,
    attributes: Vec<(Cow<'static, str>, Value)>,
    dropped_attributes: u32,
    events: Vec<Event>,
    dropped_events: u32,
    /// ERROR status with this message (empty: none).
    error: Option<Cow<'static, str>>,
}

impl Recording {
    fn new(trace_id: TraceId, span_id: SpanId, parent: Option<SpanId>, name: &str) -> Self {
        Recording {
            trace_id,
            span_id,
            parent,
            tracestate: String::new(),
            name: name.to_string(),
            start_unix_nanos: unix_nanos_now(),
            started: Instant::now(),
            end_unix_nanos: 0,
            attributes: Vec::with_capacity(12),
            dropped_attributes: 0,
            events: Vec::new(),
            dropped_events: 0,
            error: None,
        }
    }

    fn set(&mut self, key: Cow<'static, str>, value: Value) {
        if key.is_empty() {
            return;
        }
        if let Some(slot) = self.attributes.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else if self.attributes.len() < MAX_ATTRIBUTES {
            self.attributes.push((key, value));
        } else {
            self.dropped_attributes += 1;
        }
    }
}

#[cfg(test)]
mod tests;
