//! Tracing: spans exported over OTLP/HTTP protobuf to a real collector stand-in (a hyper
//! server on loopback that decodes every POST with the official OpenTelemetry types),
//! batching, and collectors that are down or never answer, which must never hold up
//! `Span::finish`. These drive `wasmgate::telemetry::trace` directly; the last test runs
//! the gateway binary and waits for the request path to be wired.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::net::TcpListener;

use support::otlp::{Collector, int, string};
use support::{Echo, Gateway, TempDir, free_port, gateway, get, service_entry};
use wasmgate::telemetry::trace::{Exporter, ExporterConfig, Settings, Tracer};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// A collector that accepts connections and never reads or answers.
async fn silent_collector() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

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

fn random() -> impl FnMut() -> u64 {
    let mut state = 0x853c_49e6_748f_ea9b_u64;
    move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn always() -> Settings {
    Settings {
        sampling_percent: 100.0,
        ..Settings::default()
    }
}

/// Sampled spans arrive in batches, as OTLP protobuf, with the context the upstream was
/// given; unsampled ones never leave the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_spans_reach_an_otlp_http_collector_in_batches() {
    let collector = Collector::start().await;
    let mut config = ExporterConfig::new(collector.url(), "istio-ingressgateway.istio-system");
    config.max_batch = 4;
    config.flush_interval = Duration::from_millis(50);
    let (export, task) = Exporter::spawn(config).expect("valid endpoint");
    let stats = export.stats().clone();
    let settings = Settings {
        sampling_percent: 0.0,
        canonical_service: "istio-ingressgateway".into(),
        ..Settings::default()
    };
    let tracer = Tracer::new(&settings, Some(export));
    let mut random = random();

    let sampled = format!("00-{TRACE}-{PARENT}-01");
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    let mut upstream_parents = Vec::new();
    for i in 0..10 {
        // Half come with a sampled traceparent: exported at 0 %; the others are not.
        let tp = if i % 2 == 0 { &sampled } else { &unsampled };
        let incoming = headers(&[("traceparent", tp), ("x-request-id", "keep-me")]);
        let mut span = tracer.start(&incoming, &mut random);
        let mut upstream = incoming.clone();
        span.inject(&mut upstream);
        assert_eq!(upstream["x-request-id"], "keep-me");
        span.set_str("http.method", "GET");
        span.set_str("http.url", &format!("http://shop.example.com/item/{i}"));
        span.event("router", Duration::from_micros(5));
        if span.is_sampled() {
            upstream_parents.push(span.span_id().to_string());
        }
        span.finish(200);
        // Requests without a context at 0 % are not exported either.
        tracer.start(&headers(&[]), &mut random).finish(200);
    }
    let spans = collector.wait_for(5).await;
    assert_eq!(spans.len(), 5, "only the sampled parents' spans");
    let posts = collector.posts();
    assert!(
        posts.len() >= 2,
        "5 spans in batches of 4: {} posts",
        posts.len()
    );
    for post in &posts {
        assert_eq!(post.path, "/v1/traces");
        assert_eq!(post.content_type, "application/x-protobuf");
        let resource = post.request.resource_spans[0]
            .resource
            .as_ref()
            .expect("resource");
        assert_eq!(
            string(&resource.attributes, "service.name"),
            Some("istio-ingressgateway.istio-system")
        );
    }
    for (span, upstream_parent) in spans.iter().zip(&upstream_parents) {
        assert_eq!(hex(&span.trace_id), TRACE);
        assert_eq!(hex(&span.parent_span_id), PARENT);
        assert_eq!(
            &hex(&span.span_id),
            upstream_parent,
            "the upstream's parent is the gateway span"
        );
        assert_eq!(span.kind, SpanKind::Server as i32);
        assert_eq!(string(&span.attributes, "http.method"), Some("GET"));
        assert_eq!(int(&span.attributes, "http.status_code"), Some(200));
        assert_eq!(
            string(&span.attributes, "istio.canonical_service"),
            Some("istio-ingressgateway")
        );
        assert_eq!(span.events.len(), 1);
    }
    assert_eq!(stats.exported(), 5);
    assert_eq!(stats.dropped(), 0);
    assert_eq!(stats.export_failures(), 0);

    // The last handle gone, the task sends what it holds and ends.
    drop(tracer);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the exporter ends with its last handle")
        .expect("no panic");
}

/// Spans still queued when the gateway stops are sent before the task ends, without
/// waiting for the flush interval.
#[tokio::test]
async fn the_last_handle_flushes_the_queue() {
    let collector = Collector::start().await;
    let mut config = ExporterConfig::new(format!("http://{}", collector.addr), "wasmgate");
    config.flush_interval = Duration::from_secs(3600);
    let (export, task) = Exporter::spawn(config).expect("valid endpoint");
    let tracer = Tracer::new(&always(), Some(export));
    let mut random = random();
    for _ in 0..3 {
        tracer.start(&headers(&[]), &mut random).finish(204);
    }
    drop(tracer);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("flushed on close, not after an hour")
        .expect("no panic");
    assert_eq!(collector.spans().len(), 3);
    assert_eq!(
        collector.posts()[0].path,
        "/v1/traces",
        "an endpoint without a path gets OTLP's"
    );
}

/// Finish as fast as possible against a broken collector: never a wait, and every span
/// is accounted for as dropped (queue full) or failed (lost with its batch).
async fn finish_never_waits(endpoint: String, timeout: Duration) {
    let mut config = ExporterConfig::new(endpoint, "wasmgate");
    config.queue_capacity = 8;
    config.max_batch = 4;
    config.flush_interval = Duration::from_millis(10);
    config.timeout = timeout;
    let (export, _task) = Exporter::spawn(config).expect("valid endpoint");
    let stats = export.stats().clone();
    let tracer = Tracer::new(&always(), Some(export.clone()));
    let mut random = random();
    let incoming = headers(&[("user-agent", "load")]);
    let n = 20_000u64;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let mut span = tracer.start(&incoming, &mut random);
        span.set_str("http.method", "GET");
        let mut upstream = incoming.clone();
        span.inject(&mut upstream);
        let t = Instant::now();
        span.finish(200);
        slowest = slowest.max(t.elapsed());
    }
    let total = started.elapsed();
    assert!(
        slowest < Duration::from_millis(50),
        "slowest finish {slowest:?}"
    );
    assert!(total < Duration::from_secs(10), "{n} spans took {total:?}");
    assert!(stats.dropped() > 0, "a full queue drops");

    // The exporter drains what it holds, failing batch by batch.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats.dropped() + stats.failed_spans() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        stats.dropped() + stats.failed_spans(),
        n,
        "every span dropped or failed (dropped {}, failed {}, queued {})",
        stats.dropped(),
        stats.failed_spans(),
        export.queued()
    );
    assert!(stats.export_failures() >= 1);
    assert_eq!(stats.exported(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_never_blocks_finish() {
    let port = free_port();
    finish_never_waits(
        format!("http://127.0.0.1:{port}/v1/traces"),
        Duration::from_millis(500),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_never_blocks_finish() {
    let (addr, task) = silent_collector().await;
    let started = Instant::now();
    finish_never_waits(
        format!("http://{addr}/v1/traces"),
        Duration::from_millis(300),
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "failures came from the timeout"
    );
    task.abort();
}

const VS_TRACED: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: shop
spec:
  hosts: ["shop.example.com"]
  gateways: ["gw"]
  http:
  - name: checkout
    route:
    - destination: {host: backend-svc}
"#;

fn reply_header(echo: &serde_json::Value, name: &str) -> Option<String> {
    echo["headers"][name].as_str().map(str::to_string)
}

/// `traceparent` as `(trace id, parent id, flags)`.
fn split_traceparent(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_span_is_the_upstream_requests_parent() {
    let collector = Collector::start().await;
    let backend = Echo::start("backend").await;
    let port = free_port();
    let dir = TempDir::new("tracing");
    dir.write("gw.yaml", &gateway("gw", port, &["shop.example.com"]));
    dir.write("vs.yaml", VS_TRACED);
    dir.write(
        "se.yaml",
        &service_entry("backend", "backend-svc", 80, &[(backend.port(), &[])]),
    );
    let url = collector.url();
    let _gw = Gateway::start(
        dir.path(),
        &["--otlp-endpoint", &url, "--trace-sampling", "0"],
    )
    .await;

    // 1. A sampled traceparent at 0 %: exported, and the upstream's parent is the span.
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let r = get(
        port,
        "shop.example.com",
        "/checkout?x=1",
        &[
            ("traceparent", &tp),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-request-id", "keep-me"),
        ],
    )
    .await
    .expect("request");
    assert_eq!(r.status, 200);
    let echo = r.echo();
    let upstream_tp = reply_header(&echo, "traceparent").expect("traceparent upstream");
    let (trace_id, parent_id, flags) = split_traceparent(&upstream_tp);
    assert_eq!(trace_id, TRACE, "same trace");
    assert_ne!(parent_id, PARENT, "the gateway's span, not the client's");
    assert_eq!(flags, "01");
    assert_eq!(
        reply_header(&echo, "tracestate").as_deref(),
        Some("congo=t61rcWkgMzE")
    );
    assert_eq!(
        reply_header(&echo, "x-request-id").as_deref(),
        Some("keep-me")
    );
    assert_eq!(reply_header(&echo, "x-b3-traceid"), None, "no B3 came");

    // 2. An unsampled traceparent and no context at 0 %: propagated, not exported.
    let unsampled = format!("00-{}-{PARENT}-00", "1".repeat(32));
    let r = get(
        port,
        "shop.example.com",
        "/checkout",
        &[("traceparent", &unsampled)],
    )
    .await
    .expect("request");
    let (t, p, f) = split_traceparent(&reply_header(&r.echo(), "traceparent").expect("tp"));
    assert_eq!((t.as_str(), f.as_str()), ("1".repeat(32).as_str(), "00"));
    assert_ne!(p, PARENT);
    let r = get(port, "shop.example.com", "/checkout", &[])
        .await
        .expect("request");
    let (fresh, _, f) = split_traceparent(&reply_header(&r.echo(), "traceparent").expect("tp"));
    assert_eq!(f, "00", "1 in 100 would be sampled; 0 % samples none");

    // 3. B3 multi in, B3 multi out naming the gateway span.
    let r = get(
        port,
        "shop.example.com",
        "/checkout",
        &[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", PARENT),
            ("x-b3-sampled", "1"),
        ],
    )
    .await
    .expect("request");
    let echo = r.echo();
    assert_eq!(
        reply_header(&echo, "x-b3-traceid").as_deref(),
        Some("a3ce929d0e0e4736")
    );
    assert_eq!(
        reply_header(&echo, "x-b3-parentspanid").as_deref(),
        Some(PARENT)
    );
    let b3_span = reply_header(&echo, "x-b3-spanid").expect("x-b3-spanid");

    let spans = collector.wait_for(2).await;
    assert_eq!(spans.len(), 2, "the two sampled requests only: {spans:?}");
    let s = &spans[0];
    assert_eq!(hex(&s.trace_id), TRACE);
    assert_eq!(
        hex(&s.span_id),
        parent_id,
        "exported span = upstream's parent"
    );
    assert_eq!(hex(&s.parent_span_id), PARENT);
    assert_eq!(s.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(s.kind, SpanKind::Server as i32);
    let a = &s.attributes;
    assert_eq!(string(a, "http.method"), Some("GET"));
    assert!(
        string(a, "http.url").is_some_and(|u| u.contains("shop.example.com/checkout?x=1")),
        "{:?}",
        string(a, "http.url")
    );
    assert_eq!(int(a, "http.status_code"), Some(200));
    assert!(string(a, "upstream_cluster").is_some_and(|c| c.contains("backend-svc")));
    assert!(string(a, "istio.canonical_service").is_some_and(|c| !c.is_empty()));
    assert!(string(a, "wasmgate.virtual_service").is_some_and(|v| v.contains("shop")));
    assert_eq!(string(a, "wasmgate.route"), Some("checkout"));
    assert_eq!(string(a, "guid:x-request-id"), Some("keep-me"));
    assert!(
        s.events.iter().any(|e| e.name.contains("router")),
        "one event per plugin call: {:?}",
        s.events
    );
    let b3 = &spans[1];
    assert_eq!(
        hex(&b3.trace_id),
        format!("0000000000000000a3ce929d0e0e4736")
    );
    assert_eq!(hex(&b3.span_id), b3_span);
    assert!(spans.iter().all(|s| hex(&s.trace_id) != fresh));
}

/// Requests for `PHASE` through a gateway that traces every request (100 %) to
/// `endpoint`: each one's time (all must succeed), and the exporter's counter of failed
/// export requests once one has failed or 10 s have passed.
async fn traced_requests(endpoint: &str) -> (Vec<Duration>, u64) {
    const PHASE: Duration = Duration::from_millis(3500);
    let backend = Echo::start("backend").await;
    let port = free_port();
    let dir = TempDir::new("tracing-load");
    dir.write("gw.yaml", &gateway("gw", port, &["shop.example.com"]));
    dir.write("vs.yaml", VS_TRACED);
    dir.write(
        "se.yaml",
        &service_entry("backend", "backend-svc", 80, &[(backend.port(), &[])]),
    );
    let gw = Gateway::start(
        dir.path(),
        &["--otlp-endpoint", endpoint, "--trace-sampling", "100"],
    )
    .await;
    let mut times = Vec::new();
    let started = Instant::now();
    // Long enough for the exporter to flush (every second) and, with a silent
    // collector, for an export to run into its 2 s timeout while requests go on.
    while started.elapsed() < PHASE {
        let t = Instant::now();
        let r = get(port, "shop.example.com", "/checkout", &[])
            .await
            .unwrap_or_else(|e| panic!("{endpoint}: request failed: {e}"));
        assert_eq!(r.status, 200, "{endpoint}: {}", r.text());
        times.push(t.elapsed());
    }
    let failures = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("wasmgate_trace_export_failures_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = gw.scrape().await;
        if failures(&text) > 0 || Instant::now() > deadline {
            return (times, failures(&text));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// End to end, at 100 % sampling: with the collector down (nothing listens on its port)
/// or silent (it accepts and never answers), requests are as fast as with a healthy
/// collector and none fails; the exports fail meanwhile, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_silent_collector_never_slows_requests() {
    let healthy = Collector::start().await;
    let (mut baseline, failed) = traced_requests(&healthy.url()).await;
    assert_eq!(failed, 0, "the healthy collector takes every export");
    assert!(
        !healthy.spans().is_empty(),
        "spans reached the healthy collector"
    );
    let base = median(&mut baseline);

    let dead = format!("http://127.0.0.1:{}/v1/traces", free_port());
    let (silent, _task) = silent_collector().await;
    let silent = format!("http://{silent}/v1/traces");
    for endpoint in [dead, silent] {
        let (mut times, failed) = traced_requests(&endpoint).await;
        assert!(failed > 0, "{endpoint}: exports were tried and failed");
        let slowest = times.iter().max().copied().unwrap_or_default();
        let typical = median(&mut times);
        // Generous for a loaded machine; a request held by an export would wait for a
        // refused connection each time, or for the 2 s export timeout.
        assert!(
            typical <= base * 3 + Duration::from_millis(10),
            "{endpoint}: median {typical:?}, with a healthy collector {base:?}"
        );
        assert!(
            slowest < Duration::from_millis(1500),
            "{endpoint}: slowest request {slowest:?}"
        );
        assert!(
            times.len() * 4 >= baseline.len(),
            "{endpoint}: {} requests, {} with a healthy collector",
            times.len(),
            baseline.len()
        );
    }
}
