//! Trace context in headers: reading W3C Trace Context and B3 (single and multi) from a
//! request, and writing the gateway span's context into the upstream request.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::{Span, SpanId, TraceId};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3_SINGLE: HeaderName = HeaderName::from_static("b3");
const X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Which header set a context was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    W3c,
    B3Single,
    B3Multi,
}

/// The B3 header sets a request carried, valid or not: the formats the gateway writes
/// back, so that every set the upstream reads names the gateway's span.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct B3 {
    /// A `b3` header.
    pub single: bool,
    /// Any of `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`,
    /// `x-b3-flags`.
    pub multi: bool,
}

/// The caller's span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

/// The trace context a request came with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The caller's span, from the first valid format (W3C, then `b3`, then `x-b3-*`).
    pub parent: Option<Parent>,
    /// The caller's sampling decision, which wins over the percentage. B3 may carry one
    /// without ids (`b3: 0`), or ids without one (then the gateway decides).
    pub sampled: Option<bool>,
    /// B3 debug (`d`, `x-b3-flags: 1`): sampled, and propagated as debug.
    pub debug: bool,
    /// The format `parent`/`sampled` came from; `None` when nothing valid came.
    pub format: Option<Format>,
    pub b3: B3,
    /// A `tracestate` came: passed through with a valid `traceparent`, else removed.
    pub tracestate: bool,
}

impl Context {
    /// Read a request's context: `traceparent` first, then `b3`, then `x-b3-*`; an
    /// invalid one is ignored (as its spec says) and the next is tried.
    pub fn from_headers(headers: &HeaderMap) -> Context {
        let found = Found::in_headers(headers);
        let mut cx = Context {
            b3: B3 {
                single: found.b3.is_some(),
                multi: found.b3_multi,
            },
            tracestate: found.tracestate,
            ..Context::default()
        };
        // Two `traceparent` lines are invalid (W3C's test suite restarts the trace).
        if found.traceparent_lines == 1
            && let Some(v) = found.traceparent
            && let Some((trace_id, span_id, sampled)) = parse_traceparent(v.as_bytes())
        {
            cx.parent = Some(Parent { trace_id, span_id });
            cx.sampled = Some(sampled);
            cx.format = Some(Format::W3c);
            return cx;
        }
        if let Some(v) = found.b3
            && let Some(b3) = parse_b3_single(v.as_bytes())
        {
            cx.set_b3(b3, Format::B3Single);
            return cx;
        }
        if found.b3_multi
            && let Some(b3) = parse_b3_multi(&found)
        {
            cx.set_b3(b3, Format::B3Multi);
        }
        cx
    }

    fn set_b3(&mut self, b3: B3Context, format: Format) {
        self.parent = b3.parent;
        self.sampled = b3.sampled;
        self.debug = b3.debug;
        self.format = Some(format);
    }
}

/// The trace headers of a request (the first line of each).
#[derive(Default)]
pub(super) struct Found<'a> {
    traceparent: Option<&'a HeaderValue>,
    traceparent_lines: usize,
    tracestate: bool,
    b3: Option<&'a HeaderValue>,
    b3_multi: bool,
    trace_id: Option<&'a HeaderValue>,
    span_id: Option<&'a HeaderValue>,
    sampled: Option<&'a HeaderValue>,
    flags: Option<&'a HeaderValue>,
}

impl<'a> Found<'a> {
    /// A request carries a dozen headers or so: one pass over them costs less than the
    /// eight lookups it replaces (about 80 ns per request in release builds); a long
    /// list is looked up instead.
    pub(super) fn in_headers(headers: &'a HeaderMap) -> Found<'a> {
        let mut f = Found::default();
        if headers.keys_len() > 32 {
            f.traceparent = headers.get(TRACEPARENT);
            f.traceparent_lines = headers.get_all(TRACEPARENT).iter().count();
            f.tracestate = headers.contains_key(TRACESTATE);
            f.b3 = headers.get(B3_SINGLE);
            f.trace_id = headers.get(X_B3_TRACE_ID);
            f.span_id = headers.get(X_B3_SPAN_ID);
            f.sampled = headers.get(X_B3_SAMPLED);
            f.flags = headers.get(X_B3_FLAGS);
            f.b3_multi = f.trace_id.is_some()
                || f.span_id.is_some()
                || f.sampled.is_some()
                || f.flags.is_some()
                || headers.contains_key(X_B3_PARENT_SPAN_ID);
            return f;
        }
        for (name, value) in headers {
            let first = |slot: &mut Option<&'a HeaderValue>| {
                slot.get_or_insert(value);
            };
            match name.as_str() {
                "traceparent" => {
                    first(&mut f.traceparent);
                    f.traceparent_lines += 1;
                }
                "tracestate" => f.tracestate = true,
                "b3" => first(&mut f.b3),
                n if n.starts_with("x-b3-") => match &n[5..] {
                    "traceid" => {
                        first(&mut f.trace_id);
                        f.b3_multi = true;
                    }
                    "spanid" => {
                        first(&mut f.span_id);
                        f.b3_multi = true;
                    }
                    "sampled" => {
                        first(&mut f.sampled);
                        f.b3_multi = true;
                    }
                    "flags" => {
                        first(&mut f.flags);
                        f.b3_multi = true;
                    }
                    "parentspanid" => f.b3_multi = true,
                    _ => {}
                },
                _ => {}
            }
        }
        f
    }
}

/// What a B3 header set said.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct B3Context {
    pub(super) parent: Option<Parent>,
    pub(super) sampled: Option<bool>,
    pub(super) debug: bool,
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// A hex digit's value; 16 for lowercase-only misses, 32 for anything else.
const fn digits() -> [u8; 256] {
    let mut t = [32u8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 16 + 10 + i as u8;
        i += 1;
    }
    t
}

static DIGITS: [u8; 256] = digits();

/// Up to 16 hex digits as a number: lowercase only unless `any_case`.
fn hex64(s: &[u8], any_case: bool) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        let mut d = DIGITS[usize::from(c)];
        if any_case && (16..32).contains(&d) {
            d -= 16;
        }
        if d >= 16 {
            return None;
        }
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// Up to 32 hex digits as a number: lowercase only unless `any_case`.
fn hex(s: &[u8], any_case: bool) -> Option<u128> {
    if s.len() <= 16 {
        return hex64(s, any_case).map(u128::from);
    }
    if s.len() > 32 {
        return None;
    }
    let (hi, lo) = s.split_at(s.len() - 16);
    Some(u128::from(hex64(hi, any_case)?) << 64 | u128::from(hex64(lo, any_case)?))
}

/// `version-traceid-parentid-flags` (W3C Trace Context level 1): the ids and the
/// sampled flag.
pub(super) fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, bool)> {
    let v = trim(v);
    if v.len() < 55 {
        return None;
    }
    let version = hex(&v[0..2], false)?;
    // `ff` is forbidden; version 00 is exactly 55 characters; a later version may
    // append fields after a `-`, which this reader ignores.
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = hex(&v[3..35], false)?;
    let span_id = u64::try_from(hex(&v[36..52], false)?).ok()?;
    let flags = hex(&v[53..55], false)?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some((TraceId(trace_id), SpanId(span_id), flags & 1 == 1))
}

fn b3_trace_id(s: &[u8]) -> Option<TraceId> {
    if s.len() != 16 && s.len() != 32 {
        return None;
    }
    hex(s, true).filter(|v| *v != 0).map(TraceId)
}

fn b3_span_id(s: &[u8]) -> Option<SpanId> {
    if s.len() != 16 {
        return None;
    }
    hex(s, true)
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v != 0)
        .map(SpanId)
}

/// A B3 sampling state: `(sampled, debug)`.
fn b3_state(s: &[u8]) -> Option<(bool, bool)> {
    match s {
        b"1" => Some((true, false)),
        b"0" => Some((false, false)),
        b"d" => Some((true, true)),
        _ => None,
    }
}

/// `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]` or `b3: {SamplingState}`.
pub(super) fn parse_b3_single(v: &[u8]) -> Option<B3Context> {
    let v = trim(v);
    if v.len() == 1 {
        let (sampled, debug) = b3_state(v)?;
        return Some(B3Context {
            parent: None,
            sampled: Some(sampled),
            debug,
        });
    }
    let mut parts = v.split(|b| *b == b'-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = b3_span_id(parts.next()?)?;
    let state = match parts.next() {
        Some(s) => Some(b3_state(s)?),
        None => None,
    };
    // The caller's parent is not needed, but a malformed one makes the header invalid.
    if let Some(p) = parts.next() {
        b3_span_id(p)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(B3Context {
        parent: Some(Parent { trace_id, span_id }),
        sampled: state.map(|s| s.0),
        debug: state.is_some_and(|s| s.1),
    })
}

/// `x-b3-traceid`, `x-b3-spanid` (both or no ids), `x-b3-sampled` (`1`/`0`, and the
/// legacy `true`/`false`), `x-b3-flags: 1` (debug). An invalid `x-b3-parentspanid` is
/// ignored: the gateway does not need its caller's parent.
pub(super) fn parse_b3_multi(found: &Found<'_>) -> Option<B3Context> {
    fn get(v: Option<&HeaderValue>) -> Option<&[u8]> {
        v.map(|v| trim(v.as_bytes()))
    }
    let parent = match (
        get(found.trace_id).and_then(b3_trace_id),
        get(found.span_id).and_then(b3_span_id),
    ) {
        (Some(trace_id), Some(span_id)) => Some(Parent { trace_id, span_id }),
        _ => None,
    };
    let debug = get(found.flags) == Some(b"1");
    let sampled = if debug {
        Some(true)
    } else {
        match get(found.sampled) {
            Some(b"1") => Some(true),
            Some(s) if s.eq_ignore_ascii_case(b"true") => Some(true),
            Some(b"0") => Some(false),
            Some(s) if s.eq_ignore_ascii_case(b"false") => Some(false),
            _ => None,
        }
    };
    if parent.is_none() && sampled.is_none() {
        return None;
    }
    Some(B3Context {
        parent,
        sampled,
        debug,
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `v` as `out.len()` lowercase hex digits (the low ones).
fn put_hex(out: &mut [u8], mut v: u128) {
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// The header value at `range` of `buf`, sharing its allocation.
fn value(buf: &Bytes, range: std::ops::Range<usize>) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(buf.slice(range)).ok()
}

/// Write `span`'s context: `traceparent` always, `tracestate` kept only when it came
/// with a valid `traceparent`, B3 in the formats the request carried. Every value is a
/// slice of one buffer: one allocation per request.
pub(super) fn inject(span: &Span, headers: &mut HeaderMap) {
    let b3 = span.b3.single || span.b3.multi;
    let mut buf = Vec::with_capacity(if b3 { 55 + 68 + 16 } else { 55 });
    buf.extend_from_slice(b"00-00000000000000000000000000000000-0000000000000000-00");
    put_hex(&mut buf[3..35], span.trace_id.0);
    put_hex(&mut buf[36..52], u128::from(span.span_id.0));
    if span.sampled {
        buf[54] = b'1';
    }
    if !b3 {
        let buf = Bytes::from(buf);
        if let Some(v) = value(&buf, 0..55) {
            headers.insert(TRACEPARENT, v);
        }
        if span.drop_tracestate {
            headers.remove(TRACESTATE);
        }
        return;
    }
    let state = if span.debug {
        b'd'
    } else if span.sampled {
        b'1'
    } else {
        b'0'
    };
    // B3 trace ids stay as wide as they came: 64-bit ones (high half zero) as 16 digits,
    // the low half of traceparent's.
    let trace = if span.trace_id.0 >> 64 == 0 {
        19..35
    } else {
        3..35
    };
    let id = 36..52;
    // Then `trace-span-state[-parent]` for b3, whose last 16 bytes are the parent.
    let single_start = buf.len();
    buf.extend_from_within(trace.clone());
    buf.push(b'-');
    buf.extend_from_within(id.clone());
    buf.push(b'-');
    buf.push(state);
    if let Some(p) = span.parent {
        buf.push(b'-');
        let at = buf.len();
        buf.extend_from_slice(&[0; 16]);
        put_hex(&mut buf[at..], u128::from(p.0));
    }
    let single = single_start..buf.len();
    let parent = buf.len().saturating_sub(16)..buf.len();
    let buf = Bytes::from(buf);
    if let Some(v) = value(&buf, 0..55) {
        headers.insert(TRACEPARENT, v);
    }
    if span.drop_tracestate {
        headers.remove(TRACESTATE);
    }
    if span.b3.single
        && let Some(v) = value(&buf, single)
    {
        headers.insert(B3_SINGLE, v);
    }
    if span.b3.multi {
        if let Some(v) = value(&buf, trace) {
            headers.insert(X_B3_TRACE_ID, v);
        }
        if let Some(v) = value(&buf, id) {
            headers.insert(X_B3_SPAN_ID, v);
        }
        match span.parent {
            Some(_) => {
                if let Some(v) = value(&buf, parent) {
                    headers.insert(X_B3_PARENT_SPAN_ID, v);
                }
            }
            None => {
                headers.remove(X_B3_PARENT_SPAN_ID);
            }
        }
        // Debug implies sampled, and B3 says not to send both.
        if span.debug {
            headers.insert(X_B3_FLAGS, HeaderValue::from_static("1"));
            headers.remove(X_B3_SAMPLED);
        } else {
            headers.remove(X_B3_FLAGS);
            headers.insert(
                X_B3_SAMPLED,
                HeaderValue::from_static(if span.sampled { "1" } else { "0" }),
            );
        }
    }
}
