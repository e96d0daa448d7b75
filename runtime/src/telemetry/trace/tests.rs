use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;

use super::context::{Found, parse_b3_multi, parse_b3_single, parse_traceparent};
use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const TRACE_ID: TraceId = TraceId(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
const PARENT_ID: SpanId = SpanId(0x00f0_67aa_0ba9_02b7);

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A deterministic random source: 1, 2, 3, ...
fn counter() -> impl FnMut() -> u64 {
    let mut n = 0u64;
    move || {
        n += 1;
        n
    }
}

fn tracer(percent: f64) -> (Tracer, tokio::sync::mpsc::Receiver<Box<Recording>>) {
    let (export, rx) = Exporter::channel(64);
    let settings = Settings {
        sampling_percent: percent,
        ..Settings::default()
    };
    (Tracer::new(&settings, Some(export)), rx)
}

#[test]
fn traceparent_valid_values() {
    let tp = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(
        parse_traceparent(tp.as_bytes()),
        Some((TRACE_ID, PARENT_ID, true))
    );
    let tp = format!("00-{TRACE}-{PARENT}-00");
    assert_eq!(
        parse_traceparent(tp.as_bytes()),
        Some((TRACE_ID, PARENT_ID, false))
    );
    // Only bit 0 is the sampled flag; other bits (level 2's random flag) are ignored.
    let tp = format!("00-{TRACE}-{PARENT}-03");
    assert_eq!(parse_traceparent(tp.as_bytes()).map(|t| t.2), Some(true));
    let tp = format!("00-{TRACE}-{PARENT}-02");
    assert_eq!(parse_traceparent(tp.as_bytes()).map(|t| t.2), Some(false));
    // Optional white space around the value (W3C's test suite sends it).
    let tp = format!(" \t00-{TRACE}-{PARENT}-01 ");
    assert!(parse_traceparent(tp.as_bytes()).is_some());
    // A later version may carry more fields after a dash.
    let tp = format!("cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like");
    assert_eq!(
        parse_traceparent(tp.as_bytes()),
        Some((TRACE_ID, PARENT_ID, true))
    );
    let tp = format!("01-{TRACE}-{PARENT}-01");
    assert!(parse_traceparent(tp.as_bytes()).is_some());
}

#[test]
fn traceparent_invalid_values() {
    let zero_trace = "0".repeat(32);
    let zero_span = "0".repeat(16);
    let upper = TRACE.to_uppercase();
    let cases = [
        // version ff is forbidden, versions are hex
        format!("ff-{TRACE}-{PARENT}-01"),
        format!("0x-{TRACE}-{PARENT}-01"),
        format!("0-{TRACE}-{PARENT}-01"),
        // version 00 is exactly 55 characters
        format!("00-{TRACE}-{PARENT}-01-"),
        format!("00-{TRACE}-{PARENT}-01x"),
        format!("00-{TRACE}-{PARENT}-1"),
        // later versions: more only after a dash
        format!("cc-{TRACE}-{PARENT}-01x"),
        // ids: length, lowercase hex, not all zeros
        format!("00-{}-{PARENT}-01", &TRACE[1..]),
        format!("00-{TRACE}0-{PARENT}-01"),
        format!("00-{TRACE}-{}-01", &PARENT[1..]),
        format!("00-{upper}-{PARENT}-01"),
        format!("00-{}g-{PARENT}-01", &TRACE[1..]),
        format!("00-{zero_trace}-{PARENT}-01"),
        format!("00-{TRACE}-{zero_span}-01"),
        // separators and flags
        format!("00_{TRACE}-{PARENT}-01"),
        format!("00-{TRACE}_{PARENT}-01"),
        format!("00-{TRACE}-{PARENT}_01"),
        format!("00-{TRACE}-{PARENT}-0g"),
        format!("00-{TRACE}-{PARENT}-0F"),
        String::new(),
        "garbage".to_string(),
    ];
    for case in cases {
        assert_eq!(parse_traceparent(case.as_bytes()), None, "{case:?}");
    }
}

#[test]
fn two_traceparent_lines_restart_the_trace() {
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let cx = Context::from_headers(&headers(&[("traceparent", &tp), ("traceparent", &tp)]));
    assert_eq!(cx.parent, None);
    assert_eq!(cx.format, None);
}

#[test]
fn b3_single_values() {
    let short = "a3ce929d0e0e4736";
    let b3 = |s: &str| parse_b3_single(s.as_bytes()).map(|b| (b.parent, b.sampled, b.debug));
    let parent = |t: u128| {
        Some(Parent {
            trace_id: TraceId(t),
            span_id: PARENT_ID,
        })
    };
    // sampling state alone
    assert_eq!(b3("0"), Some((None, Some(false), false)));
    assert_eq!(b3("1"), Some((None, Some(true), false)));
    assert_eq!(b3("d"), Some((None, Some(true), true)));
    assert_eq!(b3("x"), None);
    // ids, with or without a state and the caller's parent
    assert_eq!(
        b3(&format!("{TRACE}-{PARENT}")),
        Some((parent(TRACE_ID.0), None, false))
    );
    assert_eq!(
        b3(&format!("{TRACE}-{PARENT}-1")),
        Some((parent(TRACE_ID.0), Some(true), false))
    );
    assert_eq!(
        b3(&format!("{short}-{PARENT}-0-05e3ac9a4f6e3b90")),
        Some((parent(0xa3ce_929d_0e0e_4736), Some(false), false))
    );
    assert_eq!(
        b3(&format!("{TRACE}-{PARENT}-d")),
        Some((parent(TRACE_ID.0), Some(true), true))
    );
    // B3 hex is read in any case, as Envoy does
    assert_eq!(
        b3(&format!("{}-{PARENT}-1", TRACE.to_uppercase())),
        Some((parent(TRACE_ID.0), Some(true), false))
    );
    for bad in [
        TRACE.to_string(),
        format!("{TRACE}-"),
        format!("{TRACE}-{PARENT}-"),
        format!("{TRACE}-{PARENT}-2"),
        format!("{TRACE}-{PARENT}-1-"),
        format!("{TRACE}-{PARENT}-1-{PARENT}-1"),
        format!("{TRACE}-{PARENT}-1-123"),
        format!("{}-{PARENT}-1", &TRACE[..20]),
        format!("{TRACE}-{}-1", &PARENT[..15]),
        format!("{}-{PARENT}-1", "0".repeat(32)),
        format!("{TRACE}-{}-1", "0".repeat(16)),
        format!("{TRACE}-{PARENT}x-1"),
    ] {
        assert_eq!(b3(&bad), None, "{bad:?}");
    }
}

#[test]
fn b3_multi_values() {
    let b3 = |pairs: &[(&str, &str)]| {
        let h = headers(pairs);
        parse_b3_multi(&Found::in_headers(&h)).map(|b| (b.parent, b.sampled, b.debug))
    };
    let parent = Some(Parent {
        trace_id: TRACE_ID,
        span_id: PARENT_ID,
    });
    assert_eq!(
        b3(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", PARENT),
            ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "1"),
        ]),
        Some((parent, Some(true), false))
    );
    // ids without a decision: the gateway decides
    assert_eq!(
        b3(&[("x-b3-traceid", TRACE), ("x-b3-spanid", PARENT)]),
        Some((parent, None, false))
    );
    // the legacy true/false
    assert_eq!(
        b3(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", PARENT),
            ("x-b3-sampled", "false")
        ]),
        Some((parent, Some(false), false))
    );
    // a decision without ids
    assert_eq!(
        b3(&[("x-b3-sampled", "0")]),
        Some((None, Some(false), false))
    );
    // debug implies sampled
    assert_eq!(
        b3(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", PARENT),
            ("x-b3-flags", "1"),
            ("x-b3-sampled", "0"),
        ]),
        Some((parent, Some(true), true))
    );
    // invalid ids are ignored; an invalid decision too
    assert_eq!(
        b3(&[
            ("x-b3-traceid", "xyz"),
            ("x-b3-spanid", PARENT),
            ("x-b3-sampled", "1"),
        ]),
        Some((None, Some(true), false))
    );
    assert_eq!(b3(&[("x-b3-traceid", TRACE)]), None);
    assert_eq!(b3(&[("x-b3-sampled", "yes")]), None);
}

#[test]
fn w3c_first_then_b3_single_then_multi() {
    let tp = format!("00-{TRACE}-{PARENT}-00");
    let other = "11111111111111111111111111111111";
    let single = format!("{other}-2222222222222222-1");
    let cx = Context::from_headers(&headers(&[
        ("traceparent", &tp),
        ("b3", &single),
        ("x-b3-traceid", other),
    ]));
    assert_eq!(cx.format, Some(Format::W3c));
    assert_eq!(cx.parent.map(|p| p.trace_id), Some(TRACE_ID));
    assert_eq!(cx.sampled, Some(false));
    assert_eq!(
        cx.b3,
        B3 {
            single: true,
            multi: true
        }
    );

    // an invalid traceparent falls back to b3, and b3 to x-b3-*
    let cx = Context::from_headers(&headers(&[("traceparent", "00-bad"), ("b3", &single)]));
    assert_eq!(cx.format, Some(Format::B3Single));
    assert_eq!(cx.sampled, Some(true));
    let cx = Context::from_headers(&headers(&[
        ("b3", "bad"),
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", PARENT),
    ]));
    assert_eq!(cx.format, Some(Format::B3Multi));
    assert_eq!(cx.parent.map(|p| p.span_id), Some(PARENT_ID));
    assert_eq!(cx.sampled, None);

    let cx = Context::from_headers(&headers(&[("user-agent", "curl")]));
    assert_eq!(cx, Context::default());
}

#[test]
fn propagation_names_the_gateway_span() {
    let (tracer, _rx) = tracer(0.0);
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let incoming = headers(&[
        ("traceparent", &tp),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("tracestate", "rojo=00f067aa0ba902b7"),
        ("x-request-id", "keep-me"),
    ]);
    let span = tracer.start(&incoming, counter());
    assert!(span.is_sampled() && span.is_recording());
    assert_eq!(span.trace_id(), TRACE_ID);
    assert_eq!(span.parent_span_id(), Some(PARENT_ID));
    let mut out = incoming.clone();
    span.inject(&mut out);
    let expected = format!("00-{TRACE}-{}-01", span.span_id());
    assert_eq!(get(&out, "traceparent"), Some(expected.as_str()));
    let states: Vec<_> = out.get_all("tracestate").iter().collect();
    assert_eq!(
        states,
        ["congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"],
        "tracestate passed through unchanged"
    );
    assert_eq!(get(&out, "x-request-id"), Some("keep-me"));
    assert!(!out.contains_key("b3") && !out.contains_key("x-b3-traceid"));

    // No context: a new trace, unsampled at 0 %, and still a consistent traceparent.
    let incoming = headers(&[("tracestate", "orphan=1")]);
    let span = tracer.start(&incoming, counter());
    assert!(!span.is_sampled() && !span.is_recording());
    assert_eq!(span.parent_span_id(), None);
    let mut out = incoming.clone();
    span.inject(&mut out);
    let tp = get(&out, "traceparent").unwrap_or_default().to_string();
    assert_eq!(tp, format!("00-{}-{}-00", span.trace_id(), span.span_id()));
    assert!(parse_traceparent(tp.as_bytes()).is_some());
    assert_eq!(
        get(&out, "tracestate"),
        None,
        "tracestate without a valid traceparent"
    );
}

#[test]
fn b3_is_written_in_the_formats_that_came() {
    let (tracer, _rx) = tracer(0.0);
    // x-b3-* with a 64-bit trace id: stays 64-bit in B3, padded in traceparent
    let short = "a3ce929d0e0e4736";
    let incoming = headers(&[
        ("x-b3-traceid", short),
        ("x-b3-spanid", PARENT),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
    ]);
    let span = tracer.start(&incoming, counter());
    assert!(span.is_sampled());
    let mut out = incoming.clone();
    span.inject(&mut out);
    let id = span.span_id().to_string();
    assert_eq!(get(&out, "x-b3-traceid"), Some(short));
    assert_eq!(get(&out, "x-b3-spanid"), Some(id.as_str()));
    assert_eq!(get(&out, "x-b3-parentspanid"), Some(PARENT));
    assert_eq!(get(&out, "x-b3-sampled"), Some("1"));
    assert_eq!(
        get(&out, "traceparent"),
        Some(format!("00-0000000000000000{short}-{id}-01").as_str())
    );
    assert!(!out.contains_key("b3"));

    // b3 single
    let incoming = headers(&[("b3", &format!("{TRACE}-{PARENT}-0"))]);
    let span = tracer.start(&incoming, counter());
    assert!(!span.is_sampled());
    let mut out = incoming.clone();
    span.inject(&mut out);
    assert_eq!(
        get(&out, "b3"),
        Some(format!("{TRACE}-{}-0-{PARENT}", span.span_id()).as_str())
    );
    assert!(!out.contains_key("x-b3-traceid"));

    // a decision without ids: a new root, written back in full
    let incoming = headers(&[("b3", "d")]);
    let span = tracer.start(&incoming, counter());
    assert!(span.is_sampled());
    let mut out = incoming.clone();
    span.inject(&mut out);
    assert_eq!(
        get(&out, "b3"),
        Some(format!("{}-{}-d", span.trace_id(), span.span_id()).as_str())
    );

    // debug in x-b3-*: flags, not sampled; a root drops the old parent
    let incoming = headers(&[("x-b3-flags", "1"), ("x-b3-parentspanid", PARENT)]);
    let span = tracer.start(&incoming, counter());
    let mut out = incoming.clone();
    span.inject(&mut out);
    assert_eq!(get(&out, "x-b3-flags"), Some("1"));
    assert!(!out.contains_key("x-b3-sampled"));
    assert!(!out.contains_key("x-b3-parentspanid"));
    assert_eq!(
        get(&out, "x-b3-traceid"),
        Some(span.trace_id().to_string().as_str())
    );

    // W3C wins, and the B3 that came along is rewritten to the same trace
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let incoming = headers(&[
        ("traceparent", &tp),
        ("x-b3-traceid", "1111111111111111"),
        ("x-b3-spanid", "2222222222222222"),
        ("x-b3-sampled", "0"),
    ]);
    let span = tracer.start(&incoming, counter());
    let mut out = incoming.clone();
    span.inject(&mut out);
    assert_eq!(get(&out, "x-b3-traceid"), Some(TRACE));
    assert_eq!(get(&out, "x-b3-parentspanid"), Some(PARENT));
    assert_eq!(get(&out, "x-b3-sampled"), Some("1"));
}

#[test]
fn sampling_is_parent_based() {
    let sampled = format!("00-{TRACE}-{PARENT}-01");
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    let none = headers(&[]);
    let b3_ids = headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", PARENT)]);
    let (zero, _rx0) = tracer(0.0);
    let (all, _rx1) = tracer(100.0);
    for _ in 0..1000 {
        assert!(!zero.start(&none, rand()).is_sampled(), "0 %");
        assert!(all.start(&none, rand()).is_sampled(), "100 %");
        assert!(!zero.start(&b3_ids, rand()).is_sampled(), "B3 ids, 0 %");
        assert!(all.start(&b3_ids, rand()).is_sampled(), "B3 ids, 100 %");
    }
    // the caller's decision wins both ways
    let s = zero.start(&headers(&[("traceparent", &sampled)]), counter());
    assert!(s.is_sampled() && s.is_recording(), "sampled parent at 0 %");
    let s = all.start(&headers(&[("traceparent", &unsampled)]), counter());
    assert!(
        !s.is_sampled() && !s.is_recording(),
        "unsampled parent at 100 %"
    );
    let s = all.start(&headers(&[("x-b3-sampled", "0")]), counter());
    assert!(!s.is_sampled());
    let s = zero.start(&headers(&[("b3", "1")]), counter());
    assert!(s.is_sampled());
}

/// A splitmix64 sequence, as the gateway's `Random`.
fn rand() -> impl FnMut() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: AtomicU64 = AtomicU64::new(7);
    let mut state = SEED.fetch_add(0x1234_5678_9abc_def1, Ordering::Relaxed);
    move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[test]
fn random_sampling_hits_its_percentage() {
    let (tracer, _rx) = tracer(10.0);
    let none = headers(&[]);
    let mut random = rand();
    let n = 100_000;
    let hits = (0..n)
        .filter(|_| tracer.start(&none, &mut random).is_sampled())
        .count();
    let percent = hits as f64 * 100.0 / n as f64;
    assert!((9.0..11.0).contains(&percent), "{percent} %");
    // Istio's default is 1 %
    assert_eq!(Settings::default().sampling_percent, 1.0);
}

#[test]
fn without_exporter_or_reporting_nothing_records() {
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let h = headers(&[("traceparent", &tp)]);
    let t = Tracer::new(&Settings::default(), None);
    let s = t.start(&h, counter());
    assert!(s.is_sampled() && !s.is_recording());
    let (export, mut rx) = Exporter::channel(4);
    let settings = Settings {
        report_spans: false,
        ..Settings::default()
    };
    let t = Tracer::new(&settings, Some(export));
    t.start(&h, counter()).finish(200);
    assert!(rx.try_recv().is_err());
}

fn string(v: &Option<AnyValue>) -> Option<&str> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn int(v: &Option<AnyValue>) -> Option<i64> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Option<AnyValue>> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| &kv.value)
}

#[test]
fn otlp_encoding_decodes_with_the_official_types() {
    let (export, mut rx) = Exporter::channel(8);
    let settings = Settings {
        sampling_percent: 0.0,
        canonical_service: "istio-ingressgateway".into(),
        custom_tags: vec![
            CustomTag {
                name: "team".into(),
                value: TagValue::Literal("edge".into()),
            },
            CustomTag {
                name: "tenant".into(),
                value: TagValue::Header {
                    name: "x-tenant".into(),
                    default: None,
                },
            },
            CustomTag {
                name: "plan".into(),
                value: TagValue::Header {
                    name: "x-plan".into(),
                    default: Some("free".into()),
                },
            },
            CustomTag {
                name: "absent".into(),
                value: TagValue::Header {
                    name: "x-absent".into(),
                    default: None,
                },
            },
            CustomTag {
                name: "cluster".into(),
                value: TagValue::Environment {
                    name: "WASMGATE_TRACE_TEST_UNSET_VARIABLE".into(),
                    default: Some("local".into()),
                },
            },
        ],
        ..Settings::default()
    };
    let tracer = Tracer::new(&settings, Some(export.clone()));
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let incoming = headers(&[
        ("traceparent", &tp),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("x-tenant", "acme"),
    ]);
    let mut span = tracer.start(&incoming, rand());
    let span_id = span.span_id();
    span.set_name("backend.default.svc.cluster.local:80/*");
    span.set_str(attr::HTTP_METHOD, "GET");
    span.set_str(attr::HTTP_URL, &format!("http://shop/{}", "a".repeat(400)));
    span.set_str(attr::UPSTREAM_CLUSTER, "outbound|80||backend.default.svc");
    span.set_str(attr::VIRTUAL_SERVICE, "default/shop");
    span.set_str(attr::ROUTE, "checkout");
    span.set_int("retries", -3);
    span.event("router", Duration::from_micros(12));
    span.event("fault", Duration::from_micros(3));
    span.finish(503);

    // and a root span without a parent, dropped without finish
    let root = Tracer::new(
        &Settings {
            sampling_percent: 100.0,
            ..Settings::default()
        },
        Some(export),
    );
    let root_span = root.start(&headers(&[]), rand());
    let root_id = root_span.span_id();
    drop(root_span);

    let spans: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(spans.len(), 2);
    let mut body = Vec::new();
    otlp::encode("istio-ingressgateway.istio-system", &spans, &mut body);
    let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("valid protobuf");

    assert_eq!(req.resource_spans.len(), 1);
    let rs = &req.resource_spans[0];
    let resource = rs.resource.as_ref().expect("resource");
    assert_eq!(
        attribute(&resource.attributes, "service.name").and_then(string),
        Some("istio-ingressgateway.istio-system")
    );
    assert_eq!(rs.scope_spans.len(), 1);
    let scope = rs.scope_spans[0].scope.as_ref().expect("scope");
    assert_eq!(scope.name, "wasmgate");
    assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
    let spans = &rs.scope_spans[0].spans;
    assert_eq!(spans.len(), 2);

    let s = &spans[0];
    assert_eq!(s.trace_id, TRACE_ID.0.to_be_bytes());
    assert_eq!(s.span_id, span_id.0.to_be_bytes());
    assert_eq!(s.parent_span_id, PARENT_ID.0.to_be_bytes());
    assert_eq!(s.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(s.name, "backend.default.svc.cluster.local:80/*");
    assert_eq!(s.kind, SpanKind::Server as i32);
    assert!(s.start_time_unix_nano > 1_600_000_000_000_000_000);
    assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
    assert_eq!(s.flags, 0x301, "sampled, parent known to be remote");
    let a = &s.attributes;
    assert_eq!(attribute(a, "http.method").and_then(string), Some("GET"));
    assert_eq!(
        attribute(a, "http.url").and_then(string).map(str::len),
        Some(MAX_URL_LEN)
    );
    assert_eq!(attribute(a, "http.status_code").and_then(int), Some(503));
    assert_eq!(
        attribute(a, "upstream_cluster").and_then(string),
        Some("outbound|80||backend.default.svc")
    );
    assert_eq!(
        attribute(a, "istio.canonical_service").and_then(string),
        Some("istio-ingressgateway")
    );
    assert_eq!(
        attribute(a, "wasmgate.virtual_service").and_then(string),
        Some("default/shop")
    );
    assert_eq!(
        attribute(a, "wasmgate.route").and_then(string),
        Some("checkout")
    );
    assert_eq!(attribute(a, "retries").and_then(int), Some(-3));
    assert_eq!(attribute(a, "team").and_then(string), Some("edge"));
    assert_eq!(attribute(a, "tenant").and_then(string), Some("acme"));
    assert_eq!(attribute(a, "plan").and_then(string), Some("free"));
    assert_eq!(attribute(a, "cluster").and_then(string), Some("local"));
    assert!(attribute(a, "absent").is_none());
    let names: Vec<_> = s.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["router", "fault"]);
    assert_eq!(
        attribute(&s.events[0].attributes, "duration_ns").and_then(int),
        Some(12_000)
    );
    for e in &s.events {
        assert!(e.time_unix_nano >= s.start_time_unix_nano.saturating_sub(1_000_000));
        assert!(e.time_unix_nano <= s.end_time_unix_nano);
    }
    let status = s.status.as_ref().expect("5xx has a status");
    assert_eq!(status.code, StatusCode::Error as i32);

    let r = &spans[1];
    assert_eq!(r.span_id, root_id.0.to_be_bytes());
    assert!(r.parent_span_id.is_empty());
    assert_eq!(r.flags, 0x101, "sampled, parent (none) known not remote");
    assert!(attribute(&r.attributes, "http.status_code").is_none());
    let status = r.status.as_ref().expect("a dropped span has a status");
    assert_eq!(status.code, StatusCode::Error as i32);
    assert!(status.message.contains("before a response"));
}

#[test]
fn limits_bound_a_span() {
    let (t, mut rx) = tracer(100.0);
    let mut span = t.start(&headers(&[]), rand());
    for key in ["a", "b", "c"] {
        span.set_str(key, "v");
    }
    for i in 3..MAX_ATTRIBUTES + 10 {
        span.set_str(Box::leak(format!("k{i}").into_boxed_str()), "v");
    }
    span.set_str("a", &format!("x{}", "é".repeat(MAX_VALUE_LEN)));
    for _ in 0..MAX_EVENTS + 5 {
        span.event("p", Duration::ZERO);
    }
    span.finish(200);
    let rec = rx.try_recv().expect("exported");
    assert_eq!(rec.attributes.len(), MAX_ATTRIBUTES);
    // 140 names (the canonical service, 138 set here, the status code): 12 did not fit
    assert_eq!(rec.dropped_attributes, 12);
    assert_eq!(rec.events.len(), MAX_EVENTS);
    assert_eq!(rec.dropped_events, 5);
    let a = rec
        .attributes
        .iter()
        .find(|(k, _)| k == "a")
        .map(|(_, v)| v.clone());
    match a {
        Some(Value::Str(s)) => assert_eq!(s.len(), MAX_VALUE_LEN - 1, "cut at a char boundary"),
        other => panic!("{other:?}"),
    }
    let mut body = Vec::new();
    otlp::encode("x", &[rec], &mut body);
    let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("valid protobuf");
    let s = &req.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(s.dropped_attributes_count, 12);
    assert_eq!(s.dropped_events_count, 5);
    assert!(s.status.is_none(), "200 leaves the status unset");
}

#[test]
fn a_full_queue_drops_and_counts() {
    let (export, _rx) = Exporter::channel(2);
    let stats = export.stats().clone();
    let t = Tracer::new(
        &Settings {
            sampling_percent: 100.0,
            ..Settings::default()
        },
        Some(export.clone()),
    );
    for _ in 0..5 {
        t.start(&headers(&[]), rand()).finish(200);
    }
    assert_eq!(export.queued(), 2);
    assert_eq!(stats.dropped(), 3);
}

/// An unsampled request's whole tracing cost: read the context, start, inject, finish.
/// Run with `--nocapture` to see the numbers; the bound only catches a regression by an
/// order of magnitude (debug builds of the crate are several times slower than release).
#[test]
fn unsampled_spans_cost_little() {
    let (t, _rx) = tracer(0.0);
    let mut random = rand();
    let request = headers(&[
        ("host", "shop.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("x-request-id", "5f2b7c1e-1111-4222-8333-944445555666"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "http"),
    ]);
    let tp = format!("00-{TRACE}-{PARENT}-00");
    let mut with_context = request.clone();
    with_context.insert("traceparent", HeaderValue::from_str(&tp).expect("value"));
    let n = 100_000u32;
    let mut report = Vec::new();
    for (label, incoming) in [
        ("no context", &request),
        ("unsampled traceparent", &with_context),
    ] {
        let mut out = incoming.clone();
        let started = Instant::now();
        for _ in 0..n {
            let span = t.start(incoming, &mut random);
            span.inject(&mut out);
            span.finish(200);
        }
        let per = started.elapsed() / n;
        report.push(format!("{label}: {} ns", per.as_nanos()));
        assert!(per < Duration::from_micros(50), "{label}: {per:?} per span");
    }
    println!(
        "unsampled span (read context + start + inject + finish): {}",
        report.join(", ")
    );
}

#[test]
fn long_header_lists_are_read_the_same() {
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let cases: [&[(&str, &str)]; 4] = [
        &[("traceparent", &tp), ("tracestate", "a=1"), ("b3", "0")],
        &[("traceparent", &tp), ("traceparent", &tp), ("b3", "1")],
        &[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", PARENT),
            ("x-b3-flags", "1"),
        ],
        &[("x-b3-parentspanid", PARENT), ("tracestate", "a=1")],
    ];
    for pairs in cases {
        let short = headers(pairs);
        let mut long = short.clone();
        for i in 0..40 {
            long.insert(
                http::header::HeaderName::from_bytes(format!("x-filler-{i}").as_bytes())
                    .expect("name"),
                HeaderValue::from_static("1"),
            );
        }
        assert!(long.keys_len() > 32);
        assert_eq!(
            Context::from_headers(&short),
            Context::from_headers(&long),
            "{pairs:?}"
        );
        assert_ne!(Context::from_headers(&short), Context::default());
    }
}
