//! Metrics with the real binary and a real Prometheus (Debian's `prometheus` package,
//! which `.ci/run` installs): Prometheus scrapes `/stats/prometheus`, and its HTTP API
//! returns `istio_requests_total` with the exact counts and Istio's labels of the
//! requests the test sent; `promtool check metrics` accepts the exposition; wasmgate's
//! own families (plugin calls, listeners, upstream clusters, reloads) are there.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::{Echo, Gateway, TempDir, free_port, service_entry};

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /reviews}}]
    route:
    - destination: {host: reviews, subset: v1}
  - match: [{uri: {prefix: /down}}]
    route:
    - destination: {host: down}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
"#;

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn scrape(admin: u16) -> String {
    let r = support::get(admin, "admin", "/stats/prometheus", &[])
        .await
        .expect("scrape");
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.headers
    );
    r.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_istio_request_metrics() {
    if !installed("prometheus") || !installed("promtool") {
        eprintln!(
            "skipped: Debian's prometheus package is not installed (apt-get install prometheus; .ci/run does)"
        );
        return;
    }
    let reviews = Echo::start("reviews-v1").await;
    let port = free_port();
    let dir = TempDir::new("metrics");
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    dir.write("vs.yaml", CONFIG);
    dir.write(
        "se.yaml",
        &format!(
            "{}---\n{}",
            service_entry(
                "reviews",
                "reviews",
                9080,
                &[(reviews.port(), &[("version", "v1")])]
            ),
            service_entry("down", "down", 80, &[(free_port(), &[])])
        ),
    );
    let gw = Gateway::start(dir.path(), &[]).await;

    for _ in 0..7 {
        let r = support::get(port, "bookinfo.example.com", "/reviews/1", &[])
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::OK);
    }
    for _ in 0..3 {
        let r = support::get(port, "bookinfo.example.com", "/nothing", &[])
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    let r = support::get(port, "bookinfo.example.com", "/down", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);

    let text = scrape(gw.admin).await;
    // promtool reads the exposition as Prometheus would and lints it.
    support::promtool_check(&dir, &text);
    for family in [
        "wasmgate_plugin_calls_total{plugin=\"wasmgate/router\",virtual_service=\"default/reviews\"} 11",
        "wasmgate_listener_connections_total{listener=\"127.0.0.1:",
        "wasmgate_upstream_requests_total{cluster=\"outbound|9080|v1|reviews.default.svc.cluster.local\"} 7",
        "wasmgate_config_reloads_total{result=\"success\"} 1",
        "wasmgate_config_resources{kind=\"VirtualService\"} 1",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }

    // A real Prometheus scrapes the admin port every second.
    let prom_port = free_port();
    let prom_dir = TempDir::new("prometheus");
    let prom_config = prom_dir.write(
        "prometheus.yml",
        &format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: wasmgate\n  metrics_path: /stats/prometheus\n  static_configs:\n  - targets: ['127.0.0.1:{}']\n",
            gw.admin
        ),
    );
    let prom = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let series = loop {
        let answer = support::get(
            prom_port,
            "prometheus",
            "/api/v1/query?query=istio_requests_total",
            &[],
        )
        .await;
        if let Ok(r) = answer
            && r.status == StatusCode::OK
        {
            let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            if result.len() >= 3 {
                break result;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned the series"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    drop(prom);
    let find = |code: &str| {
        series
            .iter()
            .find(|s| s["metric"]["response_code"] == code)
            .unwrap_or_else(|| panic!("no series for {code}: {series:?}"))
            .clone()
    };
    let ok = find("200");
    assert_eq!(ok["value"][1], "7", "{ok}");
    let labels = &ok["metric"];
    for (k, v) in [
        ("reporter", "source"),
        ("source_workload", "wasmgate"),
        ("source_workload_namespace", "istio-system"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        ("destination_version", "v1"),
        ("request_protocol", "http"),
        ("response_flags", "-"),
        ("grpc_response_status", ""),
        ("job", "wasmgate"),
    ] {
        if v.is_empty() {
            assert!(labels.get(k).is_none() || labels[k] == "", "{k}: {labels}");
        } else {
            assert_eq!(labels[k], v, "{k}: {labels}");
        }
    }
    let missing = find("404");
    assert_eq!(missing["value"][1], "3");
    assert_eq!(missing["metric"]["destination_service"], "unknown");
    assert_eq!(missing["metric"]["response_flags"], "NR");
    let failed = find("502");
    assert_eq!(failed["value"][1], "1");
    assert_eq!(failed["metric"]["response_flags"], "UF");
    assert_eq!(
        failed["metric"]["destination_service"],
        "down.default.svc.cluster.local"
    );
}

/// `--metrics off` records nothing on the request path (the endpoint still answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off() {
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("metrics-off");
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: app}}]\n",
    );
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    let gw = Gateway::start(dir.path(), &["--metrics", "off"]).await;
    let r = support::get(port, "x", "/", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK);
    let text = scrape(gw.admin).await;
    assert!(!text.contains("istio_requests_total{"), "{text}");
}

/// `examples/observability` as its README runs it: the quickstart gateway, Prometheus
/// with the example's `prometheus.yml` (scraping faster, and the test's admin port),
/// traffic, then every query of `grafana-dashboard.json` evaluated by Prometheus: each
/// is valid PromQL, and the request, latency and plugin panels have data. The admin
/// page lists the routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observability_example_dashboard_queries_work() {
    if !installed("prometheus") {
        eprintln!(
            "skipped: Debian's prometheus package is not installed (apt-get install prometheus; .ci/run does)"
        );
        return;
    }
    let example = support::repo().join("examples/observability");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(example.join("grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard is JSON");
    // The quickstart, with its ports moved to free ones (as tests/examples.rs does).
    let dir = TempDir::new("observability");
    let (public, v1, v2) = (free_port(), free_port(), free_port());
    for file in ["gateway.yaml", "backends.yaml"] {
        let text = std::fs::read_to_string(support::repo().join("examples/quickstart").join(file))
            .expect("quickstart")
            .replace("8080", &public.to_string())
            .replace("8081", &v1.to_string())
            .replace("8082", &v2.to_string());
        dir.write(file, &text);
    }
    let gw = Gateway::start(dir.path(), &[]).await;
    let page = support::get(gw.admin, "admin", "/", &[])
        .await
        .expect("page");
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.text().contains("<pre id=\"routes\">listener "),
        "{}",
        page.text()
    );

    let prom_port = free_port();
    let prom_dir = TempDir::new("prometheus-example");
    let config = std::fs::read_to_string(example.join("prometheus.yml"))
        .expect("prometheus.yml")
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace("127.0.0.1:15000", &format!("127.0.0.1:{}", gw.admin));
    let config_file = prom_dir.write("prometheus.yml", &config);
    let _prom = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    // Traffic for a few scrapes, so rates have two points.
    let host = format!("localhost:{public}");
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for path in ["/reviews", "/hello"] {
            let _ = support::get(public, &host, path, &[]).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let query = |expr: String| async move {
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let r = support::get(
            prom_port,
            "prometheus",
            &format!("/api/v1/query?query={encoded}"),
            &[],
        )
        .await
        .expect("query");
        serde_json::from_slice::<serde_json::Value>(&r.body).expect("json")
    };
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 4);
    let deadline = Instant::now() + Duration::from_secs(60);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr").to_string();
            let must_have_data = [
                "Requests per second, per VirtualService",
                "Latency",
                "Plugin call cost",
            ]
            .iter()
            .any(|t| panel["title"].as_str().unwrap_or_default().starts_with(t));
            loop {
                let answer = query(expr.clone()).await;
                assert_eq!(answer["status"], "success", "{expr}: {answer}");
                let n = answer["data"]["result"].as_array().map_or(0, Vec::len);
                if n > 0 || !must_have_data {
                    break;
                }
                assert!(Instant::now() < deadline, "no data for {expr}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// `--access-log-format json --access-log FILE`: one JSON object per line with Envoy's
/// default fields, written when the response has gone out (so its size is known).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_lines_parse() {
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("access-json");
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - name: everything\n    route: [{destination: {host: app}}]\n",
    );
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    let log = dir.path().join("access.jsonl");
    let log_arg = log.to_str().expect("utf-8").to_string();
    let _gw = Gateway::start(
        dir.path(),
        &["--access-log-format", "json", "--access-log", &log_arg],
    )
    .await;
    let r = support::get(
        port,
        "shop.example.com",
        "/a/../cart?x=1",
        &[("user-agent", "test-agent/1.0"), ("x-request-id", "req-1")],
    )
    .await
    .expect("request");
    assert_eq!(r.status, StatusCode::OK);
    let body_len = r.body.len() as u64;
    let _ = support::get(port, "shop.example.com", "/", &[("host", "x")]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let first = lines
        .iter()
        .find(|l| l["request_id"] == "req-1")
        .unwrap_or_else(|| panic!("{lines:?}"));
    for (k, v) in [
        ("method", "GET"),
        ("path", "/cart?x=1"),
        ("raw_path", "/a/../cart"),
        ("protocol", "HTTP/1.1"),
        ("authority", "shop.example.com"),
        ("user_agent", "test-agent/1.0"),
        ("route_name", "everything"),
        (
            "upstream_cluster",
            "outbound|80||app.default.svc.cluster.local",
        ),
        ("response_flags", "-"),
    ] {
        assert_eq!(first[k], v, "{k}: {first}");
    }
    assert_eq!(first["response_code"], 200);
    assert!(
        first["bytes_sent"].as_u64().unwrap_or(0) > body_len,
        "{first}"
    );
    assert!(first["bytes_received"].as_u64().unwrap_or(0) > 0);
    assert!(first["duration"].is_u64() && first["upstream_service_time"].is_u64());
    assert!(
        first["start_time"]
            .as_str()
            .unwrap_or_default()
            .ends_with('Z')
    );
    assert!(
        first["upstream_host"]
            .as_str()
            .unwrap_or_default()
            .starts_with("127.0.0.1:")
    );
    assert!(first.get("x_forwarded_for").is_some() && first.get("trace_id").is_some());
}

/// The value of the sample `name{...}` whose labels contain every one of `labels`
/// (`key="value"` pairs), if the exposition has exactly one.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let found: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let set = match rest {
                "" => "",
                r => r.strip_prefix('{')?.strip_suffix('}')?,
            };
            labels
                .iter()
                .all(|want| set.split(',').any(|have| have == *want))
                .then(|| value.parse().ok())?
        })
        .collect();
    match found[..] {
        [v] => Some(v),
        _ => None,
    }
}

/// Scrape until `ready` holds for the exposition (metrics are recorded when a response
/// or connection has ended, a moment after the client saw it); the last scrape.
async fn scrape_until(admin: u16, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(admin).await;
        if ready(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn simple_vs(name: &str, host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: {host}}}}}]\n"
    )
}

/// A plugin that errors, panics, runs out of time and out of memory: each counted under
/// its own family, per plugin and VirtualService; every trap drops its instance, so the
/// next call waits for a new one (`wasmgate_plugin_instance_waits_total`), and the pool
/// ends with one idle instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_failures_and_instance_pool_are_counted() {
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("metrics-plugin");
    let plugins = support::plugins_dir(&[("misbehave.wasm", "misbehave")]);
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    dir.write("vs.yaml", &simple_vs("app", "app"));
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    dir.write(
        "plugin.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: misbehave\nspec:\n  url: misbehave.wasm\n",
    );
    let gw = Gateway::start(
        dir.path(),
        &[
            "--plugins",
            plugins.arg(),
            "--plugin-time-limit-ms",
            "200",
            "--plugin-memory-limit-mib",
            "16",
        ],
    )
    .await;
    // A clean call between failures, so no run of traps is long enough to trip a breaker.
    for path in ["/error", "/panic", "/loop", "/alloc"] {
        let r = support::get(port, "x", path, &[]).await.expect("request");
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        let r = support::get(port, "x", "/fine", &[])
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::OK, "after {path}");
    }
    let binding = [
        "plugin=\"default/misbehave\"",
        "virtual_service=\"default/app\"",
    ];
    let text = scrape_until(gw.admin, |t| {
        sample(t, "wasmgate_plugin_calls_total", &binding) == Some(8.0)
    })
    .await;
    for (family, n) in [
        ("wasmgate_plugin_calls_total", 8.0),
        ("wasmgate_plugin_errors_total", 1.0),
        ("wasmgate_plugin_traps_total", 3.0),
        ("wasmgate_plugin_deadline_kills_total", 1.0),
        ("wasmgate_plugin_memory_kills_total", 1.0),
        ("wasmgate_plugin_call_duration_seconds_count", 8.0),
    ] {
        assert_eq!(
            sample(&text, family, &binding),
            Some(n),
            "{family}:\n{text}"
        );
    }
    // The deadline kill took at least its 200 ms budget.
    let spent = sample(&text, "wasmgate_plugin_call_duration_seconds_sum", &binding);
    assert!(spent.is_some_and(|s| s >= 0.2), "{spent:?}");

    let plugin = ["plugin=\"default/misbehave\""];
    let waits = sample(&text, "wasmgate_plugin_instance_waits_total", &plugin);
    assert!(
        waits.is_some_and(|n| n >= 3.0),
        "each trap's successor waited: {waits:?}\n{text}"
    );
    let waited = sample(
        &text,
        "wasmgate_plugin_instance_wait_seconds_total",
        &plugin,
    );
    assert!(waited.is_some_and(|s| s > 0.0), "{waited:?}");
    let idle = [plugin[0], "state=\"idle\""];
    let busy = [plugin[0], "state=\"busy\""];
    assert_eq!(
        sample(&text, "wasmgate_plugin_instances", &idle),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "wasmgate_plugin_instances", &busy),
        Some(0.0),
        "{text}"
    );
    // The router served every request from the instance its load prepared.
    let router = ["plugin=\"wasmgate/router\""];
    assert_eq!(
        sample(&text, "wasmgate_plugin_instance_waits_total", &router),
        Some(0.0),
        "{text}"
    );
}

/// An upstream that answers each request `ok` and closes its connection.
async fn closing_upstream() -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if support::read_head(&mut s).await.is_none() {
                    return;
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (port, task)
}

/// An upstream that accepts connections and never answers.
async fn silent_upstream() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (port, task)
}

/// Upstream clusters: a refused endpoint is retried twice (Istio's default) and counted
/// as one connect failure; a route timeout is a timeout; connections are counted while
/// open (a keep-alive one stays, closed ones leave); no endpoint is ever ejected. And
/// Istio's request and response sizes are the bytes of the heads and bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_connections_and_sizes_are_counted() {
    let app = Echo::start("app").await;
    let (closing, _closing) = closing_upstream().await;
    let (silent, _silent) = silent_upstream().await;
    let port = free_port();
    let dir = TempDir::new("metrics-upstream");
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: up\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - match: [{uri: {prefix: /down}}]\n    route: [{destination: {host: down}}]\n  - match: [{uri: {prefix: /slow}}]\n    timeout: 300ms\n    route: [{destination: {host: slow}}]\n  - match: [{uri: {prefix: /closing}}]\n    route: [{destination: {host: closing}}]\n  - route: [{destination: {host: app}}]\n",
    );
    dir.write(
        "se.yaml",
        &[
            service_entry("app", "app", 80, &[(app.port(), &[])]),
            service_entry("down", "down", 80, &[(free_port(), &[])]),
            service_entry("slow", "slow", 80, &[(silent, &[])]),
            service_entry("closing", "closing", 80, &[(closing, &[])]),
        ]
        .join("---\n"),
    );
    let gw = Gateway::start(dir.path(), &[]).await;

    let r = support::get(port, "x", "/down", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    let started = Instant::now();
    let r = support::get(port, "x", "/slow", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(300));
    for _ in 0..3 {
        let r = support::get(port, "x", "/closing", &[])
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "ok");
    }
    let body = "x".repeat(1000);
    let r = support::request(
        port,
        "POST",
        "sizes.example.com",
        "/sizes",
        &[],
        bytes::Bytes::from(body.clone()),
    )
    .await
    .expect("request");
    assert_eq!(r.status, StatusCode::OK);
    // Heads count each header as `name: value\r\n`, the response's status line as 16.
    let head = |h: &http::HeaderMap| -> usize {
        h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum()
    };
    let request_bytes = "host".len()
        + "sizes.example.com".len()
        + 4
        + "content-length".len()
        + "1000".len()
        + 4
        + "/sizes".len()
        + body.len();
    let response_bytes = head(&r.headers) + 16 + r.body.len();

    let cluster = |host: &str| format!("cluster=\"outbound|80||{host}.default.svc.cluster.local\"");
    let (down, slow, closing_c, app_c) = (
        cluster("down"),
        cluster("slow"),
        cluster("closing"),
        cluster("app"),
    );
    let text = scrape_until(gw.admin, |t| {
        sample(t, "wasmgate_upstream_connections_active", &[&closing_c]) == Some(0.0)
            && sample(
                t,
                "istio_request_bytes_count",
                &["destination_service=\"app.default.svc.cluster.local\""],
            ) == Some(1.0)
            // A request is in flight until its response body is dropped.
            && sample(t, "wasmgate_upstream_requests_active", &[&app_c]) == Some(0.0)
    })
    .await;
    for (family, c, n) in [
        ("wasmgate_upstream_requests_total", &down, 3.0),
        ("wasmgate_upstream_retries_total", &down, 2.0),
        ("wasmgate_upstream_connect_failures_total", &down, 1.0),
        ("wasmgate_upstream_timeouts_total", &down, 0.0),
        ("wasmgate_upstream_connections_total", &down, 0.0),
        ("wasmgate_upstream_timeouts_total", &slow, 1.0),
        ("wasmgate_upstream_connect_failures_total", &slow, 0.0),
        ("wasmgate_upstream_connections_total", &closing_c, 3.0),
        ("wasmgate_upstream_connections_active", &closing_c, 0.0),
        ("wasmgate_upstream_connections_total", &app_c, 1.0),
        ("wasmgate_upstream_connections_active", &app_c, 1.0),
        ("wasmgate_upstream_ejections_total", &app_c, 0.0),
        ("wasmgate_upstream_requests_active", &app_c, 0.0),
    ] {
        assert_eq!(
            sample(&text, family, &[c]),
            Some(n),
            "{family}{{{c}}}:\n{text}"
        );
    }

    let app_dest = "destination_service=\"app.default.svc.cluster.local\"";
    for (family, n) in [
        ("istio_request_bytes_count", 1.0),
        ("istio_request_bytes_sum", request_bytes as f64),
        ("istio_response_bytes_count", 1.0),
        ("istio_response_bytes_sum", response_bytes as f64),
    ] {
        assert_eq!(
            sample(&text, family, &[app_dest]),
            Some(n),
            "{family}:\n{text}"
        );
    }
    // Istio's size buckets: a little over 1000 bytes lands in le="10000", not le="1000".
    for (family, le, n) in [
        ("istio_request_bytes_bucket", "le=\"1000\"", 0.0),
        ("istio_request_bytes_bucket", "le=\"10000\"", 1.0),
        ("istio_response_bytes_bucket", "le=\"1000\"", 0.0),
        ("istio_response_bytes_bucket", "le=\"10000\"", 1.0),
    ] {
        assert_eq!(
            sample(&text, family, &[app_dest, le]),
            Some(n),
            "{family} {le}:\n{text}"
        );
    }
}

/// TLS handshakes per listener: one that completes, one that fails (the client does not
/// trust the certificate); a client speaking plain HTTP to the TLS port sends no
/// ClientHello, so it is a connection but no handshake (Envoy counts it as matching no
/// filter chain, not as a TLS error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_and_failures_are_counted() {
    use support::tls::{Ca, secret};
    let app = Echo::start("app").await;
    let ca = Ca::new("metrics-ca");
    let leaf = ca.server(&["shop.example.com"]);
    let port = free_port();
    let dir = TempDir::new("metrics-tls");
    dir.write(
        "gw.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  servers:\n  - port: {{number: {port}, name: https, protocol: HTTPS}}\n    hosts: [shop.example.com]\n    tls: {{mode: SIMPLE, credentialName: shop-cert}}\n"
        ),
    );
    dir.write(
        "secret.yaml",
        &secret("shop-cert", "default", Some(&leaf), None),
    );
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: shop\nspec:\n  hosts: [shop.example.com]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: app}}]\n",
    );
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    let gw = Gateway::start(dir.path(), &[]).await;

    let seen = support::tls::get(
        port,
        ca.client_config(None, &[b"http/1.1"]),
        "shop.example.com",
        "shop.example.com",
        "/",
        &[],
    )
    .await
    .expect("TLS request");
    assert_eq!(seen.reply.status, StatusCode::OK);
    assert!(
        support::get(port, "shop.example.com", "/", &[])
            .await
            .is_err()
    );
    let stranger = Ca::new("someone-else");
    assert!(
        support::tls::get(
            port,
            stranger.client_config(None, &[b"http/1.1"]),
            "shop.example.com",
            "shop.example.com",
            "/",
            &[],
        )
        .await
        .is_err()
    );
    let listener = format!("listener=\"127.0.0.1:{port}\"");
    let text = scrape_until(gw.admin, |t| {
        sample(
            t,
            "wasmgate_listener_tls_handshake_failures_total",
            &[&listener],
        ) == Some(1.0)
            && sample(t, "wasmgate_listener_connections_active", &[&listener]) == Some(0.0)
    })
    .await;
    assert_eq!(
        sample(
            &text,
            "wasmgate_listener_tls_handshakes_total",
            &[&listener]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "wasmgate_listener_tls_handshake_failures_total",
            &[&listener]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "wasmgate_listener_connections_total", &[&listener]),
        Some(3.0),
        "{text}"
    );
}

/// Reloads: a bad file is a failure and leaves the last success's time; a good one is a
/// success with a later time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_failures_and_last_success_time_are_reported() {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs() as f64)
    };
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("metrics-reload");
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    dir.write("vs.yaml", &simple_vs("app", "app"));
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    let before = now();
    let gw = Gateway::start(dir.path(), &[]).await;
    let last = "wasmgate_config_last_success_timestamp_seconds";
    let text = scrape(gw.admin).await;
    let first = sample(&text, last, &[]).expect("timestamp");
    assert!(before <= first && first <= now(), "{before} {first}");
    assert_eq!(
        sample(
            &text,
            "wasmgate_config_reloads_total",
            &["result=\"success\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "wasmgate_config_reloads_total",
            &["result=\"failure\""]
        ),
        Some(0.0)
    );

    dir.write("vs.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  nosuchfield: 1\n");
    assert_eq!(gw.reload().await.status, StatusCode::BAD_REQUEST);
    let text = scrape(gw.admin).await;
    assert_eq!(
        sample(
            &text,
            "wasmgate_config_reloads_total",
            &["result=\"failure\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "wasmgate_config_reloads_total",
            &["result=\"success\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, last, &[]),
        Some(first),
        "a failure keeps the time"
    );

    // The timestamp has a resolution of one second: let one pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    dir.write("vs.yaml", &simple_vs("app", "app"));
    assert_eq!(gw.reload().await.status, StatusCode::OK);
    let text = scrape(gw.admin).await;
    assert_eq!(
        sample(
            &text,
            "wasmgate_config_reloads_total",
            &["result=\"success\""]
        ),
        Some(2.0)
    );
    let second = sample(&text, last, &[]).expect("timestamp");
    assert!(second > first && second <= now(), "{first} {second}");
}

/// Istio's TCP metrics through a real `tcp` route: bytes count while the connection is
/// open (as they are read), the connection when it opens and when it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_tcp_metrics_count_a_real_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A backend that answers each read with `a:` and what it read.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let backend_port = backend.local_addr().expect("addr").port();
    let _backend = tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut out = b"a:".to_vec();
                    out.extend_from_slice(&buf[..n]);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let port = free_port();
    let dir = TempDir::new("metrics-tcp");
    dir.write(
        "gw.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  servers:\n  - port: {{number: {port}, name: tcp, protocol: TCP}}\n    hosts: [\"*\"]\n"
        ),
    );
    dir.write(
        "vs.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: tcp\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  tcp:\n  - match: [{{port: {port}}}]\n    route:\n    - destination: {{host: a.internal, port: {{number: 9000}}}}\n"
        ),
    );
    dir.write(
        "se.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: a\nspec:\n  hosts: [a.internal]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 9000, name: tcp, protocol: TCP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {backend_port}}}}}]\n"
        ),
    );
    let gw = Gateway::start(dir.path(), &[]).await;

    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    conn.write_all(b"hello\n").await.expect("write");
    let mut reply = [0u8; 8];
    conn.read_exact(&mut reply).await.expect("read");
    assert_eq!(&reply, b"a:hello\n");

    let dest = [
        "reporter=\"source\"",
        "source_workload=\"wasmgate\"",
        "destination_service=\"a.internal\"",
        "destination_service_name=\"a.internal\"",
        "destination_service_namespace=\"default\"",
        "request_protocol=\"tcp\"",
    ];
    // Open: the bytes are there already, the close is not.
    let text = scrape(gw.admin).await;
    for (family, n) in [
        ("istio_tcp_connections_opened_total", 1.0),
        ("istio_tcp_connections_closed_total", 0.0),
        ("istio_tcp_received_bytes_total", 6.0),
        ("istio_tcp_sent_bytes_total", 8.0),
    ] {
        assert_eq!(sample(&text, family, &dest), Some(n), "{family}:\n{text}");
    }

    conn.write_all(b"bye\n").await.expect("write");
    let mut reply = [0u8; 6];
    conn.read_exact(&mut reply).await.expect("read");
    drop(conn);
    let text = scrape_until(gw.admin, |t| {
        sample(t, "istio_tcp_connections_closed_total", &dest) == Some(1.0)
    })
    .await;
    for (family, n) in [
        ("istio_tcp_connections_opened_total", 1.0),
        ("istio_tcp_connections_closed_total", 1.0),
        ("istio_tcp_received_bytes_total", 10.0),
        ("istio_tcp_sent_bytes_total", 14.0),
    ] {
        assert_eq!(sample(&text, family, &dest), Some(n), "{family}:\n{text}");
    }
}

/// `--access-log off`: requests are served and counted, and no access line is written
/// (they are written where the metrics are recorded, so a counted request would have
/// had its line by now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_off_writes_no_lines() {
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("access-off");
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - match: [{uri: {prefix: /app}}]\n    route: [{destination: {host: app}}]\n",
    );
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    let gw = Gateway::start(dir.path(), &["--access-log", "off"]).await;
    let r = support::get(port, "x", "/app", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK);
    let r = support::get(port, "x", "/nothing", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let text = scrape_until(gw.admin, |t| {
        sample(t, "istio_requests_total", &["response_code=\"200\""]) == Some(1.0)
            && sample(t, "istio_requests_total", &["response_code=\"404\""]) == Some(1.0)
    })
    .await;
    assert_eq!(
        sample(&text, "istio_requests_total", &["response_code=\"404\""]),
        Some(1.0),
        "{text}"
    );
    let log = gw.log_text();
    assert!(log.contains("ready"), "the log is written: {log}");
    assert!(gw.access_lines().is_empty(), "{log}");
}

/// The router draws a route's fault and its weighted pick when it matches (as Envoy reads
/// per-route config where it resolves the route), so neither the fault nor the traffic
/// split component is called for the router's own routes: their call counts say so,
/// and the fault still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_draws_the_fault_and_the_pick_so_neither_component_is_called() {
    let echo = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("per-route");
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    dir.write(
        "se.yaml",
        &format!(
            "{}---\n{}",
            service_entry("a", "a.internal", 80, &[(echo.port(), &[])]),
            service_entry("b", "b.internal", 80, &[(echo.port(), &[])])
        ),
    );
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - match: [{uri: {prefix: /fault}}]\n    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n    route: [{destination: {host: a.internal}}]\n  - match: [{uri: {prefix: /split}}]\n    route:\n    - {destination: {host: a.internal}, weight: 50}\n    - {destination: {host: b.internal}, weight: 50}\n  - route: [{destination: {host: a.internal}}]\n",
    );
    let gw = Gateway::start(dir.path(), &[]).await;
    for (path, n, status) in [("/plain", 3, 200), ("/fault", 1, 418), ("/split", 2, 200)] {
        for _ in 0..n {
            let r = support::get(port, "x", path, &[]).await.expect("request");
            assert_eq!(r.status.as_u16(), status, "{path}: {}", gw.log_text());
        }
    }
    let text = gw.scrape().await;
    for line in [
        "wasmgate_plugin_calls_total{plugin=\"wasmgate/router\",virtual_service=\"default/app\"} 6",
        "wasmgate_plugin_calls_total{plugin=\"wasmgate/fault\",virtual_service=\"default/app\"} 0",
        "wasmgate_plugin_calls_total{plugin=\"wasmgate/traffic-split\",virtual_service=\"default/app\"} 0",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}
