//! OTLP's `ExportTraceServiceRequest` in protobuf, written by hand: the gateway sends one
//! resource (`service.name`), one scope and SERVER spans with string and int attributes,
//! events and a status, which is a dozen fields, not worth a code generator and its
//! build-time dependencies. Field numbers are those of opentelemetry-proto's
//! `collector/trace/v1`, `trace/v1`, `resource/v1` and `common/v1`; the tests decode the
//! output with the official types. Each message's length is computed before it is
//! written, so a batch is encoded into one buffer without temporary ones.

use std::borrow::Cow;

use super::{Event, Recording, Value, attr};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// `Span.SpanKind.SPAN_KIND_SERVER`.
const SPAN_KIND_SERVER: u64 = 2;
/// `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_CODE_ERROR: u64 = 2;
/// `SpanFlags`: the low byte holds the W3C trace flags (sampled: every exported span is);
/// then "whether the parent is remote is known" and "it is remote".
const TRACE_FLAG_SAMPLED: u32 = 0x01;
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// The instrumentation scope's name.
const SCOPE: &str = "wasmgate";

fn varint_len(v: u64) -> usize {
    // 7 bits per byte, at least one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, u64::from(field) << 3 | u64::from(wire));
}

fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

/// A length-delimited field of `len` bytes, tag and length included.
fn len_field(field: u32, len: usize) -> usize {
    tag_len(field) + varint_len(len as u64) + len
}

fn put_len(out: &mut Vec<u8>, field: u32, len: usize) {
    put_tag(out, field, LEN);
    put_varint(out, len as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_len(out, field, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    put_tag(out, field, FIXED32);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(out, field, VARINT);
    put_varint(out, v);
}

fn uint_field(field: u32, v: u64) -> usize {
    tag_len(field) + varint_len(v)
}

// common.v1.AnyValue { string_value = 1; int_value = 3 }
fn any_value_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => len_field(1, s.len()),
        Value::Int(i) => uint_field(3, *i as u64),
    }
}

fn put_any_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => put_bytes(out, 1, s.as_bytes()),
        // int64 is a varint of the two's complement.
        Value::Int(i) => put_uint(out, 3, *i as u64),
    }
}

// common.v1.KeyValue { key = 1; value = 2 }
fn key_value_len(key: &str, v: &Value) -> usize {
    len_field(1, key.len()) + len_field(2, any_value_len(v))
}

/// A `KeyValue` as field `field` of its parent.
fn put_key_value(out: &mut Vec<u8>, field: u32, key: &str, v: &Value) {
    put_len(out, field, key_value_len(key, v));
    put_bytes(out, 1, key.as_bytes());
    put_len(out, 2, any_value_len(v));
    put_any_value(out, v);
}

fn attributes_len(attributes: &[(Cow<'static, str>, Value)], field: u32) -> usize {
    attributes
        .iter()
        .map(|(k, v)| len_field(field, key_value_len(k, v)))
        .sum()
}

// trace.v1.Span.Event { time_unix_nano = 1 (fixed64); name = 2; attributes = 3 }
fn event_duration(e: &Event) -> Value {
    Value::Int(e.duration_ns)
}

fn event_len(e: &Event) -> usize {
    tag_len(1)
        + 8
        + len_field(2, e.name.len())
        + len_field(3, key_value_len(attr::DURATION_NS, &event_duration(e)))
}

fn put_event(out: &mut Vec<u8>, e: &Event) {
    put_len(out, 11, event_len(e));
    put_fixed64(out, 1, e.unix_nanos);
    put_bytes(out, 2, e.name.as_bytes());
    put_key_value(out, 3, attr::DURATION_NS, &event_duration(e));
}

// trace.v1.Status { message = 2; code = 3 }
fn status_len(message: &str) -> usize {
    let m = if message.is_empty() {
        0
    } else {
        len_field(2, message.len())
    };
    m + uint_field(3, STATUS_CODE_ERROR)
}

fn flags(rec: &Recording) -> u32 {
    let remote = if rec.parent.is_some() {
        CONTEXT_IS_REMOTE
    } else {
        0
    };
    TRACE_FLAG_SAMPLED | CONTEXT_HAS_IS_REMOTE | remote
}

// trace.v1.Span { trace_id = 1; span_id = 2; trace_state = 3; parent_span_id = 4;
//   name = 5; kind = 6; start_time_unix_nano = 7 (fixed64); end_time_unix_nano = 8
//   (fixed64); attributes = 9; dropped_attributes_count = 10; events = 11;
//   dropped_events_count = 12; status = 15; flags = 16 (fixed32) }
fn span_len(rec: &Recording) -> usize {
    let mut n = len_field(1, 16) + len_field(2, 8);
    if !rec.tracestate.is_empty() {
        n += len_field(3, rec.tracestate.len());
    }
    if rec.parent.is_some() {
        n += len_field(4, 8);
    }
    n += len_field(5, rec.name.len());
    n += uint_field(6, SPAN_KIND_SERVER);
    n += 2 * (tag_len(7) + 8);
    n += attributes_len(&rec.attributes, 9);
    if rec.dropped_attributes > 0 {
        n += uint_field(10, u64::from(rec.dropped_attributes));
    }
    n += rec
        .events
        .iter()
        .map(|e| len_field(11, event_len(e)))
        .sum::<usize>();
    if rec.dropped_events > 0 {
        n += uint_field(12, u64::from(rec.dropped_events));
    }
    if let Some(message) = &rec.error {
        n += len_field(15, status_len(message));
    }
    n + tag_len(16) + 4
}

fn put_span(out: &mut Vec<u8>, rec: &Recording, len: usize) {
    put_len(out, 2, len);
    put_bytes(out, 1, &rec.trace_id.0.to_be_bytes());
    put_bytes(out, 2, &rec.span_id.0.to_be_bytes());
    if !rec.tracestate.is_empty() {
        put_bytes(out, 3, rec.tracestate.as_bytes());
    }
    if let Some(p) = rec.parent {
        put_bytes(out, 4, &p.0.to_be_bytes());
    }
    put_bytes(out, 5, rec.name.as_bytes());
    put_uint(out, 6, SPAN_KIND_SERVER);
    put_fixed64(out, 7, rec.start_unix_nanos);
    put_fixed64(out, 8, rec.end_unix_nanos.max(rec.start_unix_nanos));
    for (k, v) in &rec.attributes {
        put_key_value(out, 9, k, v);
    }
    if rec.dropped_attributes > 0 {
        put_uint(out, 10, u64::from(rec.dropped_attributes));
    }
    for e in &rec.events {
        put_event(out, e);
    }
    if rec.dropped_events > 0 {
        put_uint(out, 12, u64::from(rec.dropped_events));
    }
    if let Some(message) = &rec.error {
        put_len(out, 15, status_len(message));
        if !message.is_empty() {
            put_bytes(out, 2, message.as_bytes());
        }
        put_uint(out, 3, STATUS_CODE_ERROR);
    }
    put_fixed32(out, 16, flags(rec));
}

/// Append `ExportTraceServiceRequest { resource_spans: [{ resource: { service.name },
/// scope_spans: [{ scope: { name, version }, spans }] }] }` to `out`.
pub(super) fn encode(service_name: &str, spans: &[Box<Recording>], out: &mut Vec<u8>) {
    let service = Value::Str(service_name.to_string());
    // resource.v1.Resource { attributes = 1 }
    let resource_len = len_field(1, key_value_len("service.name", &service));
    // common.v1.InstrumentationScope { name = 1; version = 2 }
    let version = env!("CARGO_PKG_VERSION");
    let scope_len = len_field(1, SCOPE.len()) + len_field(2, version.len());
    let span_lens: Vec<usize> = spans.iter().map(|s| span_len(s)).collect();
    // trace.v1.ScopeSpans { scope = 1; spans = 2 }
    let scope_spans_len =
        len_field(1, scope_len) + span_lens.iter().map(|l| len_field(2, *l)).sum::<usize>();
    // trace.v1.ResourceSpans { resource = 1; scope_spans = 2 }
    let resource_spans_len = len_field(1, resource_len) + len_field(2, scope_spans_len);
    out.reserve(len_field(1, resource_spans_len));

    // collector.trace.v1.ExportTraceServiceRequest { resource_spans = 1 }
    put_len(out, 1, resource_spans_len);
    put_len(out, 1, resource_len);
    put_key_value(out, 1, "service.name", &service);
    put_len(out, 2, scope_spans_len);
    put_len(out, 1, scope_len);
    put_bytes(out, 1, SCOPE.as_bytes());
    put_bytes(out, 2, version.as_bytes());
    for (span, len) in spans.iter().zip(span_lens) {
        put_span(out, span, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_as_long_as_they_need() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }
}
