//! One plugin cannot break the gateway for others: while `plugins/testing/misbehave`
//! spins to its deadline, exhausts its memory and panics on one VirtualService, another
//! keeps its throughput and latency; a plugin that keeps trapping is quarantined by its
//! breaker (FAIL_CLOSE: 503 `PQ`; FAIL_OPEN: skipped), reported on `/routes` and
//! `/stats/prometheus`, and probed again after its cool-down. Real binary, real plugin.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::{
    Echo, Gateway, ONE_AT_A_TIME, TempDir, free_port, gateway, get, plugins_dir, service_entry,
};

const MISBEHAVE: &str = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: misbehave\nspec:\n  url: misbehave.wasm\n  targetRefs:\n  - {group: networking.istio.io, kind: VirtualService, name: bad}\n";

/// Two VirtualServices on one port: `bad.example` runs misbehave, `good.example` only
/// the router; both answer directly (no upstream to measure).
fn two_services(dir: &TempDir, port: u16, fail_strategy: &str) {
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    for name in ["bad", "good"] {
        dir.write(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\nspec:\n  hosts: [\"{name}.example\"]\n  gateways: [gw]\n  http:\n  - directResponse: {{status: 200, body: {{string: {name}}}}}\n"
            ),
        );
    }
    dir.write(
        "plugin.yaml",
        &format!("{MISBEHAVE}  failStrategy: {fail_strategy}\n"),
    );
}

/// [`two_services`] served by a gateway started with misbehave in its plugins directory
/// and these extra arguments; the directories live as long as the returned guards.
async fn misbehaving(tag: &str, strategy: &str, args: &[&str]) -> (Gateway, u16, TempDir, TempDir) {
    let port = free_port();
    let dir = TempDir::new(tag);
    two_services(&dir, port, strategy);
    let plugins = plugins_dir(&[("misbehave.wasm", "misbehave")]);
    let mut all = vec!["--plugins", plugins.arg()];
    all.extend_from_slice(args);
    let gw = Gateway::start(dir.path(), &all).await;
    (gw, port, dir, plugins)
}

/// Requests per second and p99 of `conns` clients sending `GET /` to `good.example`
/// one after another for `for_`. Any failed request fails the test, with the log.
async fn load(gw: &Gateway, port: u16, conns: usize, for_: Duration) -> (f64, Duration) {
    let until = Instant::now() + for_;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        tasks.spawn(async move {
            let mut took = Vec::new();
            while Instant::now() < until {
                let t0 = Instant::now();
                match get(port, "good.example", "/", &[]).await {
                    Ok(r) if r.status == StatusCode::OK => took.push(t0.elapsed()),
                    Ok(r) => return Err(format!("{} {}", r.status, r.text())),
                    Err(e) => return Err(e),
                }
            }
            Ok(took)
        });
    }
    let mut all = Vec::new();
    while let Some(t) = tasks.join_next().await {
        match t.expect("load task") {
            Ok(took) => all.extend(took),
            Err(e) => {
                let log = gw.log_text();
                let tail = &log[log.len().saturating_sub(4000)..];
                panic!("good.example failed: {e}\nlog tail:\n{tail}");
            }
        }
    }
    all.sort();
    let p99 = all[(all.len() * 99 / 100).min(all.len() - 1)];
    (all.len() as f64 / for_.as_secs_f64(), p99)
}

/// Clients that each send `path` to `bad.example` one after another until `stop`;
/// counts the answers.
fn misbehave(port: u16, paths: &[&'static str], stop: &Arc<AtomicBool>) -> Arc<AtomicUsize> {
    let answered = Arc::new(AtomicUsize::new(0));
    for &path in paths {
        let (stop, answered) = (stop.clone(), answered.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // Checked by the caller through the count (a failure here would only
                // hide the log the load's failure shows).
                match get(port, "bad.example", path, &[]).await {
                    Ok(r) if r.status == StatusCode::INTERNAL_SERVER_ERROR => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
    }
    answered
}

/// The measurement: two clients looping `/loop` (each call spins to the 100 ms
/// deadline), one `/alloc`, one `/panic`, against a VirtualService that serves 8
/// clients. It keeps at least half its throughput and at most twice its p99, compared
/// with a baseline measured just before in the same test. Before the slow lane it fell
/// to a few percent of its throughput with a p99 of 100 ms and more; with the lane at
/// nice 10 alone, 2.6-3.2x the p99; with a faulting binding's calls on the idle-policy
/// lane, about 1x. The breaker is off here: the scheduling alone must isolate. A loaded
/// machine gets three tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugin_leaves_other_virtual_services_their_throughput_and_latency() {
    // One at a time: the isolation test pins its gateway alone on a core.
    let _alone = ONE_AT_A_TIME.lock().await;
    let (gw, port, _dir, _plugins) = misbehaving(
        "isolation",
        "FAIL_CLOSE",
        &[
            "--plugin-time-limit-ms",
            "100",
            "--plugin-breaker-failures",
            "0",
            "--access-log",
            "off",
        ],
    )
    .await;
    // Measured as bench/run.py does: the gateway alone on one core, the clients on the
    // others. Sharing cores with the clients, the p99 measures the clients' own
    // scheduling as much as the gateway's (2.2-2.6x in some runs, idle lane or not).
    let pinned = gw.pin_apart();
    // Warm up: connections, instances, the spinning path.
    load(&gw, port, 8, Duration::from_millis(500)).await;
    let r = get(port, "bad.example", "/loop", &[]).await.expect("loop");
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);

    let mut tries = Vec::new();
    for _ in 0..3 {
        // Eight clients keep the gateway's core busy (the measurement); one
        // leaves it mostly idle, where a plugin thread that kept its CPU when a worker
        // woke would show at once (nice 10 did: 2.8x the p99).
        let (base_rps, base_p99) = load(&gw, port, 8, Duration::from_secs(2)).await;
        let (_, base_one) = load(&gw, port, 1, Duration::from_millis(1500)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = misbehave(port, &["/loop", "/loop", "/alloc", "/panic"], &stop);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rps, p99) = load(&gw, port, 8, Duration::from_secs(2)).await;
        let (_, one) = load(&gw, port, 1, Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
        let bad = answered.load(Ordering::Relaxed);
        // Let the misbehaving clients' last calls end before the next baseline.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let line = format!(
            "8 clients: baseline {base_rps:.0} req/s p99 {base_p99:?}, misbehaving {rps:.0} \
             req/s p99 {p99:?}; 1 client: p99 {base_one:?}, misbehaving {one:?}; {bad} bad \
             requests answered"
        );
        eprintln!("{line}");
        // The bad requests were served meanwhile (they were not simply starved out).
        assert!(bad >= 8, "{line}");
        // At most 2x the p99 with the gateway on a core of its own; on one CPU, where
        // the clients take the gateway's CPU too, only the throughput is asserted.
        let latency = pinned.is_none() || (p99 <= base_p99 * 2 && one <= base_one * 2);
        if rps >= base_rps / 2.0 && latency {
            let log = gw.log_text();
            assert!(log.contains("ran past its time budget"), "{log}");
            return;
        }
        tries.push(line);
    }
    panic!(
        "another VirtualService lost more than half its throughput or doubled its p99:\n{}",
        tries.join("\n")
    );
}

async fn routes(gw: &Gateway) -> String {
    get(gw.admin, "admin", "/routes", &[])
        .await
        .expect("routes")
        .text()
}

const LABELS: &str = "{plugin=\"default/misbehave\",virtual_service=\"default/bad\"}";

/// FAIL_CLOSE: three traps in a row open the breaker; while open the plugin is not
/// called and requests get 503 with flag PQ; after the cool-down one request probes:
/// a trap opens it again at once, a clean call closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_close_plugin_that_keeps_trapping_is_quarantined_then_probed() {
    // One at a time: the isolation test pins its gateway alone on a core.
    let _alone = ONE_AT_A_TIME.lock().await;
    let (gw, port, _dir, _plugins) = misbehaving(
        "breaker-close",
        "FAIL_CLOSE",
        &[
            "--plugin-breaker-failures",
            "3",
            "--plugin-breaker-cooldown-ms",
            "1500",
        ],
    )
    .await;
    let bad = |path: &'static str| get(port, "bad.example", path, &[]);
    // A clean call in between ends a streak.
    for path in ["/panic", "/panic", "/fine", "/panic", "/panic"] {
        let r = bad(path).await.expect("request");
        let want = if path == "/fine" { 200 } else { 500 };
        assert_eq!(r.status.as_u16(), want, "{path}");
    }
    assert!(!routes(&gw).await.contains("quarantined"));
    let r = bad("/panic").await.expect("third trap in a row");
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let opened = Instant::now();

    // Open: not called, even for a request it would pass.
    let r = bad("/fine").await.expect("quarantined");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text(), "policy unavailable");
    let lines = gw
        .wait_for_access(|l| l.iter().any(|l| l.contains("flags=PQ")))
        .await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("GET bad.example /fine 503 flags=PQ")),
        "{lines:#?}"
    );
    // Other VirtualServices are untouched.
    let r = get(port, "good.example", "/", &[]).await.expect("good");
    assert_eq!(r.status, StatusCode::OK);
    let shown = routes(&gw).await;
    assert!(
        shown.contains("default/misbehave (quarantined, "),
        "{shown}"
    );
    let metrics = gw.scrape().await;
    for want in [
        format!("wasmgate_plugin_breaker_open{LABELS} 1"),
        format!("wasmgate_plugin_breaker_opened_total{LABELS} 1"),
        format!("wasmgate_plugin_quarantined_total{LABELS} 1"),
        "# TYPE wasmgate_plugin_breaker_open gauge".to_string(),
    ] {
        assert!(metrics.contains(&want), "{want} in\n{metrics}");
    }
    assert!(
        metrics.contains(&format!("wasmgate_plugin_traps_total{LABELS} 5")),
        "{metrics}"
    );

    // After the cool-down the next request probes; a trap opens it again.
    tokio::time::sleep(Duration::from_millis(1600).saturating_sub(opened.elapsed())).await;
    assert!(routes(&gw).await.contains("(quarantined, probing)"));
    let r = bad("/panic").await.expect("probe");
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "the probe ran");
    let reopened = Instant::now();
    let r = bad("/fine").await.expect("quarantined again");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        gw.scrape()
            .await
            .contains(&format!("wasmgate_plugin_breaker_opened_total{LABELS} 2"))
    );

    // A clean probe closes it.
    tokio::time::sleep(Duration::from_millis(1600).saturating_sub(reopened.elapsed())).await;
    let r = bad("/fine").await.expect("probe");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "bad");
    let r = bad("/fine").await.expect("closed");
    assert_eq!(r.status, StatusCode::OK);
    assert!(!routes(&gw).await.contains("quarantined"));
    assert!(
        gw.scrape()
            .await
            .contains(&format!("wasmgate_plugin_breaker_open{LABELS} 0"))
    );
    let log = gw.log_text();
    assert!(log.contains("breaker open"), "{log}");
    assert!(log.contains("breaker closed"), "{log}");
}

/// FAIL_OPEN: a trapping plugin is skipped (the request is served), and once its breaker
/// opens it is skipped without being called; deadline kills count as traps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_plugin_that_keeps_trapping_is_skipped_without_being_called() {
    // One at a time: the isolation test pins its gateway alone on a core.
    let _alone = ONE_AT_A_TIME.lock().await;
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("breaker-open");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write(
        "bad.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bad\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: app}\n",
    );
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    dir.write(
        "plugin.yaml",
        &format!("{MISBEHAVE}  failStrategy: FAIL_OPEN\n"),
    );
    let plugins = plugins_dir(&[("misbehave.wasm", "misbehave")]);
    let gw = Gateway::start(
        dir.path(),
        &[
            "--plugins",
            plugins.arg(),
            "--plugin-time-limit-ms",
            "50",
            "--plugin-breaker-failures",
            "2",
            "--plugin-breaker-cooldown-ms",
            "60000",
        ],
    )
    .await;
    for path in ["/panic", "/loop"] {
        let r = get(port, "bad.example", path, &[]).await.expect("request");
        assert_eq!(r.status, StatusCode::OK, "{path} is skipped");
        assert_eq!(r.upstream().as_deref(), Some("app"));
    }
    let started = Instant::now();
    for _ in 0..3 {
        let r = get(port, "bad.example", "/loop", &[])
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::OK);
    }
    // Not called: no deadline to wait for.
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    let metrics = gw.scrape().await;
    for want in [
        format!("wasmgate_plugin_calls_total{LABELS} 2"),
        format!("wasmgate_plugin_deadline_kills_total{LABELS} 1"),
        format!("wasmgate_plugin_breaker_open{LABELS} 1"),
        format!("wasmgate_plugin_quarantined_total{LABELS} 3"),
    ] {
        assert!(metrics.contains(&want), "{want} in\n{metrics}");
    }
    assert!(
        routes(&gw)
            .await
            .contains("default/misbehave (quarantined, ")
    );
}

/// Past its own instance limit a plugin that fails closed answers 503 `LR`, never lets
/// the request through unchecked; one that fails open is skipped. The other
/// VirtualService is untouched either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_at_its_instance_limit_is_never_skipped_when_it_fails_closed() {
    // One at a time: the isolation test pins its gateway alone on a core.
    let _alone = ONE_AT_A_TIME.lock().await;
    for (strategy, expected) in [
        ("FAIL_CLOSE", StatusCode::SERVICE_UNAVAILABLE),
        ("FAIL_OPEN", StatusCode::OK),
    ] {
        let (gw, port, _dir, _plugins) = misbehaving(
            "instance-limit",
            strategy,
            &[
                "--plugin-max-instances",
                "1",
                "--plugin-time-limit-ms",
                "1000",
            ],
        )
        .await;
        // Its one instance spins until the deadline...
        let busy = tokio::spawn(async move { get(port, "bad.example", "/loop", &[]).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        // ... so a second call finds no instance.
        let reply = get(port, "bad.example", "/", &[]).await.expect("reply");
        assert_eq!(reply.status, expected, "{strategy}: {}", gw.log_text());
        if strategy == "FAIL_CLOSE" {
            assert_eq!(reply.text(), "overloaded");
            assert!(
                gw.log_text()
                    .contains("1 instances in use, its limit (--plugin-max-instances)"),
                "{}",
                gw.log_text()
            );
        }
        let good = get(port, "good.example", "/", &[]).await.expect("reply");
        assert_eq!(good.status, StatusCode::OK);
        let looped = busy.await.expect("task").expect("reply");
        assert_eq!(
            looped.status,
            if strategy == "FAIL_CLOSE" {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        );
    }
}

/// The memory all instances of a plugin hold together is bounded: a call that would
/// take it past `--plugin-memory-total-mib` traps, even below the per-instance limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_instances_share_one_memory_limit() {
    // One at a time: the isolation test pins its gateway alone on a core.
    let _alone = ONE_AT_A_TIME.lock().await;
    let (gw, port, _dir, _plugins) = misbehaving(
        "memory-total",
        "FAIL_CLOSE",
        &[
            "--plugin-memory-limit-mib",
            "256",
            "--plugin-memory-total-mib",
            "24",
            "--plugin-time-limit-ms",
            "2000",
        ],
    )
    .await;
    let reply = get(port, "bad.example", "/alloc", &[])
        .await
        .expect("reply");
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        gw.log_text()
            .contains("the plugin's instances together would hold more than 24 MiB"),
        "{}",
        gw.log_text()
    );
    // The memory went back with the instance: the next call runs.
    let reply = get(port, "bad.example", "/", &[]).await.expect("reply");
    assert_eq!(reply.status, StatusCode::OK, "{}", gw.log_text());
}

/// A plugin's calls together get `--plugin-cpu-ms-per-second`: a call that spins is
/// stopped once the plugin has used it, well before its own deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_cpu_per_second_is_bounded() {
    // One at a time: the isolation test pins its gateway alone on a core.
    let _alone = ONE_AT_A_TIME.lock().await;
    let (gw, port, _dir, _plugins) = misbehaving(
        "cpu-budget",
        "FAIL_CLOSE",
        &[
            "--plugin-cpu-ms-per-second",
            "50",
            "--plugin-time-limit-ms",
            "5000",
        ],
    )
    .await;
    let t0 = Instant::now();
    let reply = get(port, "bad.example", "/loop", &[]).await.expect("reply");
    let took = t0.elapsed();
    // Unavailable, not the plugin's fault: 503 `LR`, and its breaker counts nothing.
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        gw.log_text()
            .contains("stopped: the plugin used its CPU for this second"),
        "{}",
        gw.log_text()
    );
    // Stopped by its plugin's budget (at most two seconds' worth of ticks), not by its
    // own 5 s deadline.
    assert!(took < Duration::from_millis(2500), "took {took:?}");
}
