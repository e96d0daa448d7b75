//! The plugin host against real components built from `plugins/`: loading, version and
//! import checks, the deny-all WASI sandbox, and failure isolation (a trap, a runaway
//! loop or a memory hog in one call never harms the next).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use wasmgate::plugin::types::{Action, Binding, Decision, Header, HeaderInterest, RequestHead};
use wasmgate::plugin::{CallError, HostSettings, PluginError, PluginHost};

fn built(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("WASMGATE_BUILT_PLUGINS")).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn binding() -> Binding {
    Binding {
        plugin: "default/test".into(),
        virtual_service: "default/vs".into(),
        namespace: "default".into(),
    }
}

fn head(path: &str) -> RequestHead {
    RequestHead {
        id: "id-1".into(),
        method: "GET".into(),
        scheme: "http".into(),
        authority: "example.com".into(),
        path: path.into(),
        query: String::new(),
        headers: vec![],
        port: 8080,
        gateway: "default/gw".into(),
        virtual_service: "default/vs".into(),
    }
}

fn no_route() -> Decision {
    Decision {
        route: None,
        delay_ms: None,
        action: Action::NoRoute,
        log_fields: vec![],
    }
}

fn host(settings: HostSettings) -> PluginHost {
    PluginHost::new(&settings).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasip1_plugin_loads_and_is_granted_nothing() {
    let host = host(HostSettings::default());
    let plugin = host
        .compile("default/wasi-probe", &built("wasi-probe"))
        .expect("compile");
    let pool = host.pool(&plugin);
    let policy = host
        .prepare(&pool, "default/wasi-probe", binding(), "null".into())
        .await
        .expect("prepare");
    let decision = policy
        .on_request(&head("/"), &no_route())
        .await
        .expect("call")
        .expect("a decision");
    let Action::Respond(r) = decision.action else {
        panic!("expected a direct response, got {:?}", decision.action)
    };
    let report = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(
        report, "env=0 args=0 root=denied passwd=denied cwd=denied clock=ok",
        "the WASI sandbox granted something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_module_is_made_into_a_component_on_load() {
    // What `cargo build --target wasm32-unknown-unknown` leaves behind: a core module.
    let module = built("core/add-headers");
    assert!(!wasmgate::plugin::is_component(&module));
    let host = host(HostSettings::default());
    let plugin = host
        .compile("default/add-headers", &module)
        .expect("compile core module");
    host.prepare(&host.pool(&plugin), "default/test", binding(), "{}".into())
        .await
        .expect("prepare");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_and_bad_config_are_load_errors_naming_the_plugin() {
    let host = host(HostSettings::default());
    let err = host
        .compile("default/junk", b"not wasm at all")
        .expect_err("junk loads");
    assert_eq!(
        err.to_string(),
        "default/junk: not a Wasm file (no `\\0asm` header)"
    );
    let mut truncated = built("add-headers");
    truncated.truncate(truncated.len() / 2);
    let err = host
        .compile("default/cut", &truncated)
        .expect_err("truncated loads");
    assert!(
        err.to_string()
            .starts_with("default/cut: not a valid Wasm component"),
        "{err}"
    );

    let plugin = host
        .compile("default/misbehave", &built("misbehave"))
        .expect("compile");
    let err = host
        .prepare(
            &host.pool(&plugin),
            "default/misbehave",
            binding(),
            r#"{"failPrepare": true}"#.into(),
        )
        .await
        .expect_err("config accepted");
    assert!(matches!(err, PluginError::Config { .. }));
    assert_eq!(
        err.to_string(),
        "default/misbehave: pluginConfig.failPrepare: asked to fail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_call_never_harms_the_next() {
    let host = host(HostSettings {
        // `/alloc` must reach the memory limit before the deadline: a call past its
        // first slice finishes on the low-priority slow lane, which a loaded machine
        // (tests run in parallel) gives little CPU.
        call_budget: Duration::from_millis(1000),
        memory_limit: 16 << 20,
        ..HostSettings::default()
    });
    let plugin = host
        .compile("default/misbehave", &built("misbehave"))
        .expect("compile");
    let policy = host
        .prepare(&host.pool(&plugin), "default/test", binding(), "{}".into())
        .await
        .expect("prepare");
    assert!(matches!(policy.header_interest(), HeaderInterest::None));

    for (path, expect) in [
        ("/panic", "unreachable"),
        ("/loop", "time budget"),
        ("/alloc", "memory"),
    ] {
        let started = Instant::now();
        let err = policy
            .on_request(&head(path), &no_route())
            .await
            .err()
            .unwrap_or_else(|| panic!("{path} succeeded"));
        let CallError::Trap(msg) = err else {
            panic!("{path}: expected a trap, got {err:?}")
        };
        assert!(msg.contains(expect), "{path}: {msg}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} took too long"
        );
        // The very next call is served by a healthy instance.
        let ok = policy.on_request(&head("/fine"), &no_route()).await;
        assert!(matches!(ok, Ok(None)), "after {path}: {ok:?}");
    }
    let err = policy.on_request(&head("/error"), &no_route()).await;
    assert!(matches!(err, Err(CallError::Returned(ref m)) if m == "misbehave: asked to fail"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_blocked_in_a_wasi_sleep_is_stopped_at_its_budget() {
    let host = host(HostSettings {
        call_budget: Duration::from_millis(50),
        ..HostSettings::default()
    });
    let plugin = host
        .compile("default/wasi-probe", &built("wasi-probe"))
        .expect("compile");
    let policy = host
        .prepare(
            &host.pool(&plugin),
            "default/wasi-probe",
            binding(),
            "null".into(),
        )
        .await
        .expect("prepare");
    let started = Instant::now();
    let err = policy.on_request(&head("/sleep"), &no_route()).await;
    assert!(
        matches!(err, Err(CallError::Trap(ref m)) if m.contains("time budget")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(policy.on_request(&head("/"), &no_route()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_shared_by_bindings_and_reused() {
    let host = host(HostSettings::default());
    let plugin = host
        .compile("default/misbehave", &built("misbehave"))
        .expect("compile");
    let pool = host.pool(&plugin);
    let mut policies = Vec::new();
    for vs in ["a", "b", "c"] {
        let b = Binding {
            virtual_service: format!("default/{vs}"),
            ..binding()
        };
        let p = host
            .prepare(&pool, "default/misbehave", b, "{}".into())
            .await;
        policies.push(p.expect("prepare"));
    }
    // Many concurrent calls over three bindings: every one answers.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let policy = policies[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            policy.on_request(&head("/fine"), &no_route()).await
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.expect("task"), Ok(None)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_for_another_wit_version_is_refused_and_told_why() {
    let host = host(HostSettings::default());
    let err = host
        .compile("default/future", &built("future-version"))
        .expect_err("a 0.2 plugin loaded");
    assert_eq!(
        err.to_string(),
        "default/future: built against wasmgate:policy@0.3.0, but this wasmgate speaks \
         wasmgate:policy@0.2.1 (and loads plugins built against 0.2.0 to 0.2.1); rebuild it \
         with a matching wasmgate-plugin-sdk"
    );
}

/// 0.2.1 only added the `metrics` import: a plugin built against 0.2.0 (its own copy of
/// that WIT) links its `host@0.2.0` import to the host's 0.2.1 interface and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_the_previous_wit_still_loads() {
    let bytes = built("previous-version");
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("wasmgate:policy/policy@0.2.0"),
        "not a 0.2.0 build"
    );
    assert!(
        text.contains("wasmgate:policy/host@0.2.0"),
        "imports no host function"
    );
    assert!(!text.contains("wasmgate:policy/metrics"));
    let host = host(HostSettings::default());
    let plugin = host
        .compile("default/previous", &bytes)
        .expect("a 0.2.0 plugin is refused");
    let policy = host
        .prepare(
            &host.pool(&plugin),
            "default/previous",
            binding(),
            "null".into(),
        )
        .await
        .expect("prepare");
    let decision = policy
        .on_request(&head("/previous"), &no_route())
        .await
        .expect("call")
        .expect("a decision");
    let Action::Respond(r) = decision.action else {
        panic!("expected a direct response, got {:?}", decision.action)
    };
    assert!(
        String::from_utf8_lossy(&r.body).starts_with("built against wasmgate:policy@0.2.0 ("),
        "{r:?}"
    );
    assert!(matches!(
        policy.on_request(&head("/"), &no_route()).await,
        Ok(None)
    ));
}

fn with_tenant(path: &str, tenant: &str) -> RequestHead {
    RequestHead {
        headers: vec![Header {
            name: "x-tenant".into(),
            value: tenant.into(),
        }],
        ..head(path)
    }
}

/// Metrics a plugin defines at `prepare`: every instance and binding defines them again
/// and gets the same ids, so all updates land in one set of series; defining at request
/// time is an error value; a bad update is dropped and counted, never a trap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_metrics_are_shared_by_instances_and_bindings() {
    let host = host(HostSettings::default());
    let plugin = host
        .compile("default/probe", &built("metrics-probe"))
        .expect("compile");
    let pool = host.pool(&plugin);
    let mut policies = Vec::new();
    for vs in ["a", "b"] {
        let b = Binding {
            virtual_service: format!("default/{vs}"),
            ..binding()
        };
        let p = host.prepare(&pool, "default/probe", b, "null".into()).await;
        policies.push(p.expect("prepare"));
    }
    // Concurrent calls need more than one instance; each prepares its bindings itself.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let policy = policies[i % 2].clone();
        let tenant = if i % 4 < 2 { "t1" } else { "t2" };
        tasks.push(tokio::spawn(async move {
            policy
                .on_request(&with_tenant("/items", tenant), &no_route())
                .await
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.expect("task"), Ok(None)));
    }
    let late = policies[0]
        .on_request(&head("/define"), &no_route())
        .await
        .expect("call")
        .expect("an answer");
    let Action::Respond(r) = late.action else {
        panic!("{late:?}")
    };
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "metric \"late_total\": define-counter is allowed in prepare only"
    );
    assert!(matches!(
        policies[1].on_request(&head("/arity"), &no_route()).await,
        Ok(None)
    ));

    let mut text = String::new();
    host.metrics().render(&mut text);
    for line in [
        "# TYPE wasmgate_plugin_requests_total counter",
        "wasmgate_plugin_requests_total{plugin=\"default/probe\",method=\"GET\",tenant=\"t1\"} 20",
        "wasmgate_plugin_requests_total{plugin=\"default/probe\",method=\"GET\",tenant=\"t2\"} 20",
        "wasmgate_plugin_path_bytes_bucket{plugin=\"default/probe\",method=\"GET\",le=\"4\"} 0",
        "wasmgate_plugin_path_bytes_bucket{plugin=\"default/probe\",method=\"GET\",le=\"16\"} 41",
        "wasmgate_plugin_path_bytes_sum{plugin=\"default/probe\",method=\"GET\"} 246",
        "wasmgate_plugin_path_bytes_count{plugin=\"default/probe\",method=\"GET\"} 41",
        "wasmgate_plugin_metric_updates_dropped_total{plugin=\"default/probe\",reason=\"label_count\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(!text.contains("late_total"), "{text}");
}

/// A definition the host refuses fails `prepare` with the host's reason, as any config
/// error does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_metric_definition_is_a_config_error() {
    let host = host(HostSettings::default());
    let plugin = host
        .compile("default/probe", &built("metrics-probe"))
        .expect("compile");
    for (config, message) in [
        (
            r#"{"counterName": "Requests"}"#,
            "metric \"Requests\": a name matches [a-z_][a-z0-9_]* and has at most 64 bytes",
        ),
        (
            r#"{"counterLabels": ["plugin"]}"#,
            "metric \"requests_total\": label \"plugin\" is reserved (the host sets it)",
        ),
        (
            r#"{"counterName": "calls_total"}"#,
            "metric \"calls_total\" would collide with wasmgate_plugin_calls_total on /stats/prometheus",
        ),
    ] {
        let err = host
            .prepare(
                &host.pool(&plugin),
                "default/probe",
                binding(),
                config.into(),
            )
            .await
            .expect_err(config);
        assert_eq!(
            err.to_string(),
            format!("default/probe: pluginConfig: {message}")
        );
    }
}

/// The SDK's native runner (`testing::decide`, through `testing::visible`) shows a
/// policy the headers the host's request head carries: the same normalization of the
/// interest, the same filter, the same order, for each kind of interest.
#[test]
fn the_sdks_testing_shows_a_policy_the_headers_the_host_passes() {
    use wasmgate::proxy::headers::{HeadParts, request_head};
    use wasmgate::snapshot::Interest;
    use wasmgate_plugin_sdk as sdk;

    let sent = [
        ("X-B", "1"),
        ("x-a", "2"),
        ("x-b", "3"),
        ("End-User", "jason"),
    ];
    let mut map = http::HeaderMap::new();
    let mut native = sdk::testing::request("GET", "/");
    for (name, value) in sent {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            http::HeaderValue::from_static(value),
        );
        native = native.header(name, value);
    }
    let native = native.build();
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases = [
        (HeaderInterest::None, sdk::HeaderInterest::None),
        (HeaderInterest::All, sdk::HeaderInterest::All),
        (
            HeaderInterest::Named(names(&["X-B", "end-user", "x-b", "missing"])),
            sdk::HeaderInterest::Named(names(&["X-B", "end-user", "x-b", "missing"])),
        ),
        (
            HeaderInterest::Named(Vec::new()),
            sdk::HeaderInterest::Named(Vec::new()),
        ),
        (
            HeaderInterest::Named(names(&["not a name", "", "X-A"])),
            sdk::HeaderInterest::Named(names(&["not a name", "", "X-A"])),
        ),
    ];
    for (host, theirs) in cases {
        let parts = HeadParts {
            id: "test-request",
            method: "GET",
            scheme: "http",
            authority: "example.com",
            path: "/",
            query: "",
            headers: &map,
            port: 80,
        };
        let from_host: Vec<(String, String)> = request_head(
            &parts,
            &Interest::from(&host),
            "default/test-gateway",
            "default/test",
        )
        .headers
        .into_iter()
        .map(|h| (h.name, h.value))
        .collect();
        let from_sdk: Vec<(String, String)> =
            sdk::testing::visible(&sdk::Interest { headers: theirs }, &native)
                .headers
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect();
        assert_eq!(from_sdk, from_host, "{host:?}");
    }
}

/// The host's own picks (load balancing, weighted destinations, mirrors) draw from
/// their own sequence: they neither shift what plugins get under `--random-seed` nor
/// reveal it.
#[tokio::test]
async fn plugin_randomness_is_separate_from_the_hosts_picks() {
    let seeded = || {
        host(HostSettings {
            random_seed: Some(42),
            ..HostSettings::default()
        })
    };
    let (quiet, busy) = (seeded(), seeded());
    for _ in 0..100 {
        busy.balancing().next_u64();
    }
    let plugin_draws = |h: &PluginHost| (0..5).map(|_| h.random().next_u64()).collect::<Vec<_>>();
    assert_eq!(plugin_draws(&quiet), plugin_draws(&busy));
    assert_ne!(
        seeded().random().next_u64(),
        seeded().balancing().next_u64()
    );
}
