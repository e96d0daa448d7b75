//! Istio's own samples served by the real `wasmgate` binary, through the real Wasm
//! router, fault and traffic-split components, to real HTTP upstreams on loopback.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::{Echo, Gateway, TempDir, data, free_port, gateway, get, service_entry};

/// bookinfo-gateway.yaml as published, its port moved to a free one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_gateway_routes_listed_paths_to_productpage() {
    let productpage = Echo::start("productpage").await;
    let port = free_port();
    let dir = TempDir::new("bookinfo");
    let sample = data("istio/samples/bookinfo-gateway.yaml");
    assert!(sample.contains("number: 8080"));
    dir.write(
        "bookinfo-gateway.yaml",
        &sample.replace("number: 8080", &format!("number: {port}")),
    );
    dir.write(
        "productpage-se.yaml",
        &service_entry(
            "productpage",
            "productpage",
            9080,
            &[(productpage.port(), &[])],
        ),
    );
    let gw = Gateway::start(dir.path(), &[]).await;

    for path in [
        "/productpage",
        "/static/css/app.css",
        "/login",
        "/logout",
        "/api/v1/products/1?x=y",
    ] {
        let r = get(port, "bookinfo.example.com", path, &[])
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        let echo = r.echo();
        assert_eq!(echo["upstream"], "productpage", "{path}");
        assert_eq!(echo["path"], path, "path passed through unchanged");
        // Host passed through; Envoy's edge headers added.
        assert_eq!(echo["headers"]["host"], "bookinfo.example.com");
        assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
        assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
        assert_eq!(
            echo["headers"]["x-request-id"].as_str().map(str::len),
            Some(36)
        );
    }
    for path in ["/", "/reviews", "/productpage2", "/api/v2/products"] {
        let r = get(port, "bookinfo.example.com", path, &[])
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    // A request id sent by an internal client is kept.
    let r = get(port, "x", "/productpage", &[("x-request-id", "keep-me")])
        .await
        .expect("request");
    assert_eq!(r.echo()["headers"]["x-request-id"], "keep-me");
    assert_eq!(productpage.hits(), 6);

    // One access log line per request, with the flag for no route.
    let lines = gw.access_lines();
    assert_eq!(lines.len(), 10, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" 404 ") && l.contains("flags=NR")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains(" 200 ")
            && l.contains("cluster=outbound|9080||productpage.default.svc.cluster.local")),
        "{lines:#?}"
    );
}

/// virtual-service-reviews-80-20.yaml bound to a test Gateway: the split holds over
/// 1,000 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_80_20_split_holds_over_a_thousand_requests() {
    let v1 = Echo::start("reviews-v1").await;
    let v2 = Echo::start("reviews-v2").await;
    let v3 = Echo::start("reviews-v3").await;
    let port = free_port();
    let dir = TempDir::new("split");
    let vs = data("istio/samples/virtual-service-reviews-80-20.yaml").replace(
        "  hosts:\n    - reviews\n",
        "  hosts:\n    - reviews\n  gateways:\n    - test-gateway\n",
    );
    assert!(vs.contains("test-gateway"));
    dir.write("vs.yaml", &vs);
    dir.write("dr.yaml", &data("istio/samples/destination-rule-all.yaml"));
    dir.write("gw.yaml", &gateway("test-gateway", port, &["*"]));
    dir.write(
        "se.yaml",
        &service_entry(
            "reviews",
            "reviews",
            9080,
            &[
                (v1.port(), &[("version", "v1")]),
                (v2.port(), &[("version", "v2")]),
                (v3.port(), &[("version", "v3")]),
            ],
        ),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;
    // A short name in a gateway VirtualService means the FQDN in its namespace (Istio).
    let host = "reviews.default.svc.cluster.local";
    let mut counts = [0usize; 3];
    for _ in 0..1000 {
        let r = get(port, host, "/reviews/1", &[]).await.expect("request");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        match r.upstream().as_deref() {
            Some("reviews-v1") => counts[0] += 1,
            Some("reviews-v2") => counts[1] += 1,
            other => panic!("unexpected upstream {other:?}"),
        }
    }
    // 800 expected; 5 standard deviations of a binomial(1000, 0.8) is ~63.
    assert!((740..=860).contains(&counts[0]), "v1 got {counts:?}");
    assert_eq!(counts[0] + counts[1], 1000);
    assert_eq!(v3.hits(), 0);
    let r = get(port, "reviews", "/reviews/1", &[])
        .await
        .expect("request");
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "the short name is not a gateway host"
    );
}

fn ratings_config(dir: &TempDir, port: u16, sample: &str, ratings: &Echo) {
    let vs = data(sample).replace(
        "  hosts:\n  - ratings\n",
        "  hosts:\n  - ratings\n  gateways:\n  - test-gateway\n",
    );
    assert!(vs.contains("test-gateway"));
    dir.write("vs.yaml", &vs);
    dir.write("dr.yaml", &data("istio/samples/destination-rule-all.yaml"));
    dir.write("gw.yaml", &gateway("test-gateway", port, &["*"]));
    dir.write(
        "se.yaml",
        &service_entry(
            "ratings",
            "ratings",
            9080,
            &[(ratings.port(), &[("version", "v1")])],
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratings_abort_for_jason_only() {
    let ratings = Echo::start("ratings-v1").await;
    let port = free_port();
    let dir = TempDir::new("abort");
    ratings_config(
        &dir,
        port,
        "istio/samples/virtual-service-ratings-test-abort.yaml",
        &ratings,
    );
    let gw = Gateway::start(dir.path(), &[]).await;
    let host = "ratings.default.svc.cluster.local";
    for _ in 0..20 {
        let r = get(port, host, "/ratings/0", &[("end-user", "jason")])
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.text(), "fault filter abort");
        let r = get(port, host, "/ratings/0", &[("end-user", "json")])
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::OK);
        let r = get(port, host, "/ratings/0", &[]).await.expect("request");
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(
        ratings.hits(),
        40,
        "aborted requests never reach the upstream"
    );
    assert!(
        gw.access_lines()
            .iter()
            .any(|l| l.contains("flags=FI") && l.contains("fault=abort"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratings_delay_is_applied_for_jason_only() {
    let ratings = Echo::start("ratings-v1").await;
    let port = free_port();
    let dir = TempDir::new("delay");
    ratings_config(
        &dir,
        port,
        "istio/samples/virtual-service-ratings-test-delay.yaml",
        &ratings,
    );
    // The sample delays 7 s; the test uses 600 ms to stay quick.
    let vs = std::fs::read_to_string(dir.path().join("vs.yaml")).expect("vs");
    assert!(vs.contains("fixedDelay: 7s"));
    dir.write(
        "vs.yaml",
        &vs.replace("fixedDelay: 7s", "fixedDelay: 600ms"),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;
    let host = "ratings.default.svc.cluster.local";

    let started = Instant::now();
    let r = get(port, host, "/ratings/0", &[]).await.expect("request");
    let plain = started.elapsed();
    assert_eq!(r.status, StatusCode::OK);

    let started = Instant::now();
    let r = get(port, host, "/ratings/0", &[("end-user", "jason")])
        .await
        .expect("request");
    let delayed = started.elapsed();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.upstream().as_deref(), Some("ratings-v1"));
    assert!(
        delayed >= Duration::from_millis(600),
        "delayed only {delayed:?}"
    );
    assert!(
        plain < Duration::from_millis(600),
        "undelayed request took {plain:?}"
    );
}
