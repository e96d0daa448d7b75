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
    let dir_text = dir.write("scrape.txt", &text);
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&dir_text).expect("scrape file"))
        .output()
        .expect("promtool");
    // Exit 1 is a parse error; 3 is lint advice. The only advice allowed is the one
    // Istio's own name earns: `istio_request_duration_milliseconds` keeps Istio's unit.
    let advice = String::from_utf8_lossy(&check.stderr).to_string();
    assert!(
        matches!(check.status.code(), Some(0 | 3))
            && advice
                .lines()
                .all(|l| l.starts_with("istio_request_duration_milliseconds use base unit")),
        "promtool ({:?}): {}{advice}",
        check.status.code(),
        String::from_utf8_lossy(&check.stdout)
    );
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
