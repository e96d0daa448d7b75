//! Metrics that plugins define (`wasmgate:policy/metrics`, WIT 0.3.0), through the real
//! binary: a plugin's counter and histogram on `/stats/prometheus` as
//! `wasmgate_plugin_<name>{plugin="<ns>/<name>",...}` with the values and labels of the
//! requests sent, valid for `promtool`; series that survive a reload; and the cap on
//! label sets.

mod support;

use std::process::Command;

use bytes::Bytes;
use http::StatusCode;
use support::{Gateway, TempDir, free_port, get, plugins_dir, request};

fn config(dir: &TempDir, port: u16) {
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - directResponse: {status: 200, body: {string: ok}}\n",
    );
    dir.write(
        "plugins.yaml",
        r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: probe, namespace: default}
spec:
  url: metrics-probe.wasm
  targetRefs:
  - {group: networking.istio.io, kind: VirtualService, name: app}
"#,
    );
}

async fn start(tag: &str) -> (Gateway, u16, TempDir, TempDir) {
    let port = free_port();
    let dir = TempDir::new(tag);
    config(&dir, port);
    let plugins = plugins_dir(&[("metrics-probe.wasm", "metrics-probe")]);
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    (gw, port, dir, plugins)
}

async fn send(port: u16, method: &str, path: &str, tenant: Option<&str>) -> StatusCode {
    let headers: Vec<(&str, &str)> = tenant.map(|t| ("x-tenant", t)).into_iter().collect();
    request(
        port,
        method,
        "app.example.com",
        path,
        &headers,
        Bytes::new(),
    )
    .await
    .expect("request")
    .status
}

fn assert_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(text.lines().any(|l| l == *line), "{line} missing:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_counter_and_histogram_are_on_stats_prometheus() {
    let (gw, port, dir, _plugins) = start("plugin-metrics").await;
    for _ in 0..3 {
        assert_eq!(send(port, "GET", "/items", Some("a")).await, StatusCode::OK);
    }
    assert_eq!(
        send(port, "POST", "/items/42", Some("b")).await,
        StatusCode::OK
    );
    assert_eq!(send(port, "GET", "/", None).await, StatusCode::OK);
    // Misuse is an error value or a dropped update, never a failed request.
    let r = get(port, "app.example.com", "/define", &[])
        .await
        .expect("request");
    assert_eq!(
        r.text(),
        "metric \"late_total\": define-counter is allowed in prepare only"
    );
    assert_eq!(send(port, "GET", "/arity", None).await, StatusCode::OK);

    let text = gw.scrape().await;
    let probe = "plugin=\"default/probe\"";
    assert_lines(
        &text,
        &[
            "# HELP wasmgate_plugin_requests_total Requests the probe saw, by method and tenant.",
            "# TYPE wasmgate_plugin_requests_total counter",
            &format!("wasmgate_plugin_requests_total{{{probe},method=\"GET\",tenant=\"a\"}} 3"),
            &format!("wasmgate_plugin_requests_total{{{probe},method=\"GET\",tenant=\"none\"}} 1"),
            &format!("wasmgate_plugin_requests_total{{{probe},method=\"POST\",tenant=\"b\"}} 1"),
            "# HELP wasmgate_plugin_path_bytes Length of the request path, in bytes.",
            "# TYPE wasmgate_plugin_path_bytes histogram",
            // GET: /items x3 (6 bytes), / (1), /arity (6); /define answers before observing.
            &format!("wasmgate_plugin_path_bytes_bucket{{{probe},method=\"GET\",le=\"1\"}} 1"),
            &format!("wasmgate_plugin_path_bytes_bucket{{{probe},method=\"GET\",le=\"4\"}} 1"),
            &format!("wasmgate_plugin_path_bytes_bucket{{{probe},method=\"GET\",le=\"16\"}} 5"),
            &format!("wasmgate_plugin_path_bytes_bucket{{{probe},method=\"GET\",le=\"64\"}} 5"),
            &format!("wasmgate_plugin_path_bytes_bucket{{{probe},method=\"GET\",le=\"+Inf\"}} 5"),
            &format!("wasmgate_plugin_path_bytes_sum{{{probe},method=\"GET\"}} 25"),
            &format!("wasmgate_plugin_path_bytes_count{{{probe},method=\"GET\"}} 5"),
            &format!("wasmgate_plugin_path_bytes_count{{{probe},method=\"POST\"}} 1"),
            &format!(
                "wasmgate_plugin_metric_updates_dropped_total{{{probe},reason=\"label_count\"}} 1"
            ),
            // The plugin's calls, as for every plugin: the seven requests above.
            &format!("wasmgate_plugin_calls_total{{{probe},virtual_service=\"default/app\"}} 7"),
        ],
    );
    assert!(!text.contains("late_total"), "{text}");

    if Command::new("promtool").arg("--version").output().is_ok() {
        support::promtool_check(&dir, &text);
    }

    // A reload that keeps the plugin keeps its series: the count goes on.
    assert_eq!(gw.reload().await.status, StatusCode::OK);
    assert_eq!(send(port, "GET", "/items", Some("a")).await, StatusCode::OK);
    let text = gw.scrape().await;
    assert_lines(
        &text,
        &[&format!(
            "wasmgate_plugin_requests_total{{{probe},method=\"GET\",tenant=\"a\"}} 4"
        )],
    );
}

/// A label a client controls cannot grow the gateway: a metric keeps 100 label sets,
/// the rest fold into one `__overflow__` series and are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_sets_beyond_the_cap_fold_into_one_series() {
    let (gw, port, _dir, _plugins) = start("plugin-metrics-cap").await;
    for i in 0..105 {
        let tenant = format!("t{i}");
        assert_eq!(send(port, "GET", "/", Some(&tenant)).await, StatusCode::OK);
    }
    // A tenant kept before the cap still counts on its own.
    assert_eq!(send(port, "GET", "/", Some("t7")).await, StatusCode::OK);
    let text = gw.scrape().await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("wasmgate_plugin_requests_total{"))
        .collect();
    assert_eq!(series.len(), 101, "{text}");
    let probe = "plugin=\"default/probe\"";
    assert_lines(
        &text,
        &[
            &format!("wasmgate_plugin_requests_total{{{probe},method=\"GET\",tenant=\"t7\"}} 2"),
            &format!(
                "wasmgate_plugin_requests_total{{{probe},method=\"__overflow__\",tenant=\"__overflow__\"}} 5"
            ),
            &format!(
                "wasmgate_plugin_metric_overflow_total{{{probe},metric=\"requests_total\"}} 5"
            ),
        ],
    );
    // Which five folded depends on arrival order only; here requests went one by one.
    for i in 100..105 {
        assert!(!text.contains(&format!("tenant=\"t{i}\"")), "t{i} kept");
    }
}

/// A user's plugin without waiting imports is called directly on the request's thread
/// for its first slice; a call still running then is stopped and made again on the slow
/// lane. What the first try did is done once: its log line, its counter update and the
/// property it set (read back and incremented by the second try) are not doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_again_on_the_slow_lane_has_its_effects_once() {
    let (gw, port, _dir, _plugins) = start("plugin-metrics-restart").await;
    for _ in 0..3 {
        assert_eq!(send(port, "GET", "/", Some("quick")).await, StatusCode::OK);
    }
    let probe = "plugin=\"default/probe\"";
    let restarted = format!("wasmgate_plugin_calls_restarted_total{{{probe}}}");
    // Quick calls finish within their first slice (on a busy machine one preempted
    // twice in a call could start over too, so this is not asserted exactly).
    let quick = support::metric(&gw.scrape().await, &restarted);

    // 5 ms: past a slice of one to two ticks of 1 ms, well within the deadline.
    let spin = |tenant: &'static str| async move {
        let headers = [("x-tenant", tenant), ("x-spin-ms", "5")];
        get(port, "app.example.com", "/spin", &headers)
            .await
            .expect("request")
    };
    let r = spin("spin").await;
    assert_eq!(r.status, StatusCode::OK, "{}", gw.log_text());
    assert_eq!(
        r.headers.get("x-probe-spins").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "the property the stopped try set was put back"
    );
    // Within the next second the binding's calls start on the slow lane (or, on a slow
    // machine past it, start over again): either way once.
    let r = spin("again").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get("x-probe-spins").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );

    let text = gw.scrape().await;
    let restarts = support::metric(&text, &restarted) - quick;
    assert!(
        (1.0..=2.0).contains(&restarts),
        "{restarts} restarts:\n{text}"
    );
    assert_lines(
        &text,
        &[
            &format!("wasmgate_plugin_requests_total{{{probe},method=\"GET\",tenant=\"spin\"}} 1"),
            &format!("wasmgate_plugin_requests_total{{{probe},method=\"GET\",tenant=\"again\"}} 1"),
            &format!("wasmgate_plugin_calls_total{{{probe},virtual_service=\"default/app\"}} 5"),
            &format!("wasmgate_plugin_traps_total{{{probe},virtual_service=\"default/app\"}} 0"),
        ],
    );
    let log = gw.log_text();
    assert_eq!(log.matches("probe spun (1)").count(), 2, "{log}");
    assert!(!log.contains("probe spun (2)"), "{log}");
}
