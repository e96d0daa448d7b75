//! Istio's `Telemetry` resource through the real binary: tracing sampling and custom
//! tags (spans exported to a real OTLP/HTTP collector stand-in), a metric turned off on
//! `/stats/prometheus`, and access lines turned off, each changed by a reload with no
//! restart.

mod support;

use std::time::Duration;

use support::otlp::{Collector, string};
use support::{Echo, Gateway, TempDir, free_port, gateway, get, service_entry};

const VS: &str = r#"
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

/// A mesh-wide Telemetry with `spec`.
fn telemetry(spec: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: mesh-default\n  namespace: istio-system\nspec:\n{spec}"
    )
}

/// A config folder: Gateway `default/gw` on `port`, the VirtualService, the backend.
fn config(port: u16, backend: &Echo) -> TempDir {
    let dir = TempDir::new("telemetry");
    dir.write("gw.yaml", &gateway("gw", port, &["shop.example.com"]));
    dir.write("vs.yaml", VS);
    dir.write(
        "se.yaml",
        &service_entry("backend", "backend-svc", 80, &[(backend.port(), &[])]),
    );
    dir
}

/// The sampled flag of the `traceparent` the upstream got.
async fn upstream_sampled(port: u16, headers: &[(&str, &str)]) -> String {
    let r = get(port, "shop.example.com", "/checkout", headers)
        .await
        .expect("request");
    assert_eq!(r.status, 200);
    let tp = r.echo()["headers"]["traceparent"]
        .as_str()
        .expect("traceparent upstream")
        .to_string();
    tp.rsplit('-').next().unwrap_or_default().to_string()
}

async fn reload(gw: &Gateway) {
    let r = gw.reload().await;
    assert_eq!(r.status, 200, "reload: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_sampling_and_custom_tags_follow_reloads() {
    let collector = Collector::start().await;
    let backend = Echo::start("backend").await;
    let port = free_port();
    let dir = config(port, &backend);
    dir.write(
        "telemetry.yaml",
        &telemetry(
            "  tracing:\n  - randomSamplingPercentage: 100\n    customTags:\n      team:\n        literal: {value: checkout}\n      user:\n        header: {name: x-user, defaultValue: anonymous}\n",
        ),
    );
    let url = collector.url();
    let gw = Gateway::start(
        dir.path(),
        &["--otlp-endpoint", &url, "--trace-sampling", "0"],
    )
    .await;

    // --trace-sampling 0, but the Telemetry samples every request without a decision.
    assert_eq!(upstream_sampled(port, &[("x-user", "alice")]).await, "01");
    assert_eq!(upstream_sampled(port, &[]).await, "01");
    let spans = collector.wait_for(2).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    for s in &spans {
        assert_eq!(string(&s.attributes, "team"), Some("checkout"));
    }
    let mut users: Vec<&str> = spans
        .iter()
        .filter_map(|s| string(&s.attributes, "user"))
        .collect();
    users.sort_unstable();
    assert_eq!(users, vec!["alice", "anonymous"]);

    // Reloaded at 0 % without tags: a request without a decision is not sampled; one
    // whose caller sampled it still is, without the tags.
    dir.write(
        "telemetry.yaml",
        &telemetry("  tracing:\n  - randomSamplingPercentage: 0\n"),
    );
    reload(&gw).await;
    assert_eq!(upstream_sampled(port, &[("x-user", "bob")]).await, "00");
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        upstream_sampled(port, &[("traceparent", caller)]).await,
        "01"
    );
    let spans = collector.wait_for(3).await;
    assert_eq!(spans.len(), 3, "the caller-sampled request only: {spans:?}");
    let last = &spans[2];
    assert_eq!(
        last.trace_id,
        [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36
        ]
    );
    assert_eq!(string(&last.attributes, "team"), None);
    assert!(
        gw.log_text().contains("Telemetry applied"),
        "{}",
        gw.log_text()
    );
}

/// A series of `family` is on the page (not just the family's name in another's).
fn has_family(page: &str, family: &str) -> bool {
    page.lines().any(|l| l.starts_with(&format!("{family}{{")))
}

/// The value of the `istio_requests_total` series to the backend.
fn requests_total(page: &str) -> Option<String> {
    page.lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("destination_service=\"backend-svc.default.svc.cluster.local\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_metric_leaves_prometheus_after_a_reload() {
    let backend = Echo::start("backend").await;
    let port = free_port();
    let dir = config(port, &backend);
    let gw = Gateway::start(dir.path(), &[]).await;
    let send = || async {
        let r = get(port, "shop.example.com", "/checkout", &[])
            .await
            .expect("request");
        assert_eq!(r.status, 200);
    };
    send().await;
    let page = gw.scrape().await;
    assert_eq!(requests_total(&page).as_deref(), Some("1"), "{page}");

    // istio.io's "disable REQUEST_COUNT" override, client and server.
    dir.write(
        "telemetry.yaml",
        &telemetry(
            "  metrics:\n  - providers:\n    - name: prometheus\n    overrides:\n    - match:\n        metric: REQUEST_COUNT\n        mode: CLIENT_AND_SERVER\n      disabled: true\n",
        ),
    );
    reload(&gw).await;
    send().await;
    let page = gw.scrape().await;
    assert!(!has_family(&page, "istio_requests_total"), "{page}");
    assert!(!page.contains("# TYPE istio_requests_total"), "{page}");
    assert!(
        has_family(&page, "istio_request_duration_milliseconds_count"),
        "the other metrics stay: {page}"
    );
    assert!(page.contains("wasmgate_config_resources{kind=\"Telemetry\"} 1"));

    // Back on: the request made while it was off was not counted.
    std::fs::remove_file(dir.path().join("telemetry.yaml")).expect("remove");
    reload(&gw).await;
    let page = gw.scrape().await;
    assert_eq!(requests_total(&page).as_deref(), Some("1"), "{page}");
    send().await;
    let page = gw.scrape().await;
    assert_eq!(requests_total(&page).as_deref(), Some("2"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logging_disabled_stops_access_lines() {
    let backend = Echo::start("backend").await;
    let port = free_port();
    let dir = config(port, &backend);
    // Namespace-wide, from the Gateway's namespace; tracing without --otlp-endpoint.
    dir.write(
        "telemetry.yaml",
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: no-logs\n  namespace: default\nspec:\n  accessLogging:\n  - disabled: true\n  tracing:\n  - randomSamplingPercentage: 50\n",
    );
    let gw = Gateway::start(dir.path(), &[]).await;
    assert!(
        gw.log_text().contains("no --otlp-endpoint: tracing is off"),
        "{}",
        gw.log_text()
    );
    let r = get(port, "shop.example.com", "/quiet", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 200);

    // `disabled: false` at a more specific level turns them back on.
    dir.write(
        "selected.yaml",
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: logs\n  namespace: default\nspec:\n  targetRefs:\n  - {group: networking.istio.io, kind: Gateway, name: gw}\n  accessLogging:\n  - disabled: false\n",
    );
    reload(&gw).await;
    let r = get(port, "shop.example.com", "/loud", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 200);
    let lines = gw
        .wait_for_access(|lines| lines.iter().any(|l| l.contains("/loud")))
        .await;
    assert!(lines.iter().any(|l| l.contains("/loud")), "{lines:?}");
    // Give a late line for the first request every chance to show up.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lines = gw.access_lines();
    assert!(!lines.iter().any(|l| l.contains("/quiet")), "{lines:?}");
}
