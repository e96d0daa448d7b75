//! The plugin host against real components built from `plugins/`: loading, version and
//! import checks, the deny-all WASI sandbox, failure isolation (a trap, a runaway loop
//! or a memory hog in one call never harms the next), plugin-defined metrics, and the
//! headers a policy reads on demand from the host's request view.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use wasmgate::plugin::context::{ChainNames, Current};
use wasmgate::plugin::types::{Action, Binding, DirectResponse, Interest};
use wasmgate::plugin::{
    CallError, Edit, HostSettings, PluginError, PluginHost, PreparedPolicy, RequestView, SharedBox,
};

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

/// A GET of `path` with no headers, its chain started (decision: no route).
fn view(path: &str) -> Arc<RequestView> {
    view_with(path, &[])
}

/// [`view`] with these headers, in this order (a name may repeat).
fn view_with(path: &str, headers: &[(&str, &str)]) -> Arc<RequestView> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    let view = RequestView::new(
        HeaderValue::from_static("id-1"),
        Method::GET,
        "http",
        HeaderValue::from_static("example.com"),
        path.parse().expect("a request target"),
        map,
        IpAddr::from([127, 0, 0, 1]),
        8080,
        None,
        None,
        None,
    );
    view.start_chain(&Arc::new(ChainNames {
        gateway: "default/gw".into(),
        virtual_service: "default/vs".into(),
    }));
    Arc::new(view)
}

/// An edit that changes nothing (what 0.2's `none` was).
fn keeps(edit: &Edit) -> bool {
    edit.route.is_none()
        && edit.action.is_none()
        && edit.pick.is_none()
        && edit.delay_ms.is_none()
        && edit.request_headers.is_none()
        && edit.response_headers.is_none()
        && edit.log_fields.is_empty()
}

/// The direct response an edit answers with.
fn answer(edit: Edit) -> DirectResponse {
    match edit.action.map(SharedBox::into_inner) {
        Some(Action::Respond(r)) => r,
        other => panic!("expected a direct response, got {other:?}"),
    }
}

/// Asks for nothing beyond `on-request`.
fn asks_nothing_more(i: &Interest) -> bool {
    !i.response && !i.log && i.request_body.is_none() && i.response_body.is_none()
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
    let r = answer(policy.on_request(&view("/")).await.expect("call"));
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
    assert!(
        asks_nothing_more(policy.interest()),
        "{:?}",
        policy.interest()
    );

    for (path, expect) in [
        ("/panic", "unreachable"),
        ("/loop", "time budget"),
        ("/alloc", "memory"),
    ] {
        let started = Instant::now();
        let err = policy
            .on_request(&view(path))
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
        let ok = policy.on_request(&view("/fine")).await;
        assert!(matches!(ok, Ok(ref e) if keeps(e)), "after {path}: {ok:?}");
    }
    let err = policy.on_request(&view("/error")).await;
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
    let err = policy.on_request(&view("/sleep")).await;
    assert!(
        matches!(err, Err(CallError::Trap(ref m)) if m.contains("time budget")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(policy.on_request(&view("/")).await.is_ok());
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
            policy.on_request(&view("/fine")).await
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.expect("task"), Ok(ref e) if keeps(e)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_for_another_wit_version_is_refused_and_told_why() {
    let host = host(HostSettings::default());
    let err = host
        .compile("default/future", &built("future-version"))
        .expect_err("a 0.4 plugin loaded");
    assert!(matches!(err, PluginError::Load { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "default/future: built against wasmgate:policy@0.4.0, but this wasmgate speaks \
         wasmgate:policy@0.3.0; rebuild it with a matching wasmgate-plugin-sdk"
    );
}

fn with_tenant(path: &str, tenant: &str) -> Arc<RequestView> {
    view_with(path, &[("x-tenant", tenant)])
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
            policy.on_request(&with_tenant("/items", tenant)).await
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.expect("task"), Ok(ref e) if keeps(e)));
    }
    let r = answer(
        policies[0]
            .on_request(&view("/define"))
            .await
            .expect("call"),
    );
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "metric \"late_total\": define-counter is allowed in prepare only"
    );
    assert!(matches!(
        policies[1].on_request(&view("/arity")).await,
        Ok(ref e) if keeps(e)
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

/// 0.3 has no header interest: a policy asks the host for the headers it reads, when it
/// reads them, through the `request` resource. The router, matching on headers, sees
/// each request's own: names in any case, every value of a repeated header (joined with
/// `,`, as Envoy matches them), and a header the request lacks as missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reads_the_headers_it_needs_on_demand() {
    let host = host(HostSettings::default());
    let spec = serde_json::json!({
        "hosts": ["*"],
        "http": [
            {"match": [{"headers": {"End-User": {"exact": "jason"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "jason"}}]},
            {"match": [{"headers": {"x-b": {"exact": "1,3"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "both"}}]},
            {"match": [{"headers": {"x-a": {"prefix": "2"}}, "withoutHeaders": {"x-deny": {}}}],
             "route": [{"destination": {"host": "reviews", "subset": "a"}}]},
            {"route": [{"destination": {"host": "reviews", "subset": "rest"}}]},
        ],
    });
    let policy = embedded_router(&host, &spec).await;
    assert!(
        asks_nothing_more(policy.interest()),
        "{:?}",
        policy.interest()
    );
    let cases: [(&[(&str, &str)], u32); 8] = [
        (&[("End-User", "jason")], 0),
        (&[("end-user", "jason"), ("end-user", "other")], 3),
        (&[("end-user", "Jason")], 3),
        (&[("X-B", "1"), ("x-a", "9"), ("x-b", "3")], 1),
        (&[("x-b", "1")], 3),
        (&[("x-a", "22")], 2),
        (&[("x-a", "22"), ("X-Deny", "")], 3),
        (&[], 3),
    ];
    for (headers, route) in cases {
        let decision = decided(&policy, &view_with("/", headers)).await;
        assert_eq!(
            decision.route.as_ref().map(|r| r.index),
            Some(route),
            "{headers:?}: {decision:?}"
        );
        assert!(decision.forward().is_some(), "{headers:?}: {decision:?}");
    }
}

/// The embedded router, prepared for the VirtualService `spec`.
async fn embedded_router(host: &PluginHost, spec: &serde_json::Value) -> PreparedPolicy {
    let router = wasmgate::plugin::builtin::get("router").expect("the embedded router");
    let plugin = host
        .compile("wasmgate/router", router.bytes)
        .expect("compile");
    host.prepare(
        &host.pool(&plugin),
        "wasmgate/router",
        binding(),
        spec.to_string(),
    )
    .await
    .expect("prepare")
}

/// The decision after `policy`'s edit for `view`.
async fn decided(policy: &PreparedPolicy, view: &Arc<RequestView>) -> Current {
    let edit = policy.on_request(view).await.expect("call");
    view.state().apply(edit);
    view.state().decision.clone()
}

/// The router, in Wasm, reads the path and the query in one call (`path-and-query`) and
/// splits them at the first `?`: an exact path matches with or without a query, and the
/// query's parameters are the request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_and_query_come_in_one_call_and_split_at_the_first_question_mark() {
    let host = host(HostSettings::default());
    let spec = serde_json::json!({
        "hosts": ["*"],
        "http": [
            {"match": [{"uri": {"exact": "/a"}, "queryParams": {"flag": {"exact": "on?"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "flag"}}]},
            {"match": [{"uri": {"exact": "/a"}}],
             "route": [{"destination": {"host": "reviews", "subset": "a"}}]},
            {"route": [{"destination": {"host": "reviews", "subset": "rest"}}]},
        ],
    });
    let policy = embedded_router(&host, &spec).await;
    let cases: [(&str, u32); 7] = [
        ("/a?flag=on?", 0),
        ("/a?x=1&flag=on%3F", 0),
        ("/a?flag=on", 1),
        ("/a", 1),
        ("/a?", 1),
        ("/a/?flag=on?", 2),
        ("/b?flag=on?", 2),
    ];
    for (target, route) in cases {
        let view = view_with(target, &[]);
        assert_eq!(view.path_and_query(), target);
        let decision = decided(&policy, &view).await;
        assert_eq!(
            decision.route.as_ref().map(|r| r.index),
            Some(route),
            "{target}: {decision:?}"
        );
    }
}

/// The router, in Wasm, reads a header its routes match with the path and the query in
/// one call (`path-and-query-with-header`), guessing which from the last request: the
/// header's values arrive joined and the target whole (split at its first `?`), and a
/// request decides the same whether the guess was right or wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_read_with_the_path_matches_as_one_read_alone() {
    let host = host(HostSettings::default());
    let spec = serde_json::json!({
        "hosts": ["*"],
        "http": [
            {"match": [{"uri": {"prefix": "/api"}, "headers": {"x-canary": {"exact": "true"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "canary"}}]},
            {"match": [{"uri": {"exact": "/a"}, "headers": {"end-user": {"exact": "jason"}},
                        "queryParams": {"v": {"exact": "2"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "query"}}]},
            {"match": [{"uri": {"prefix": "/a"}, "headers": {"End-User": {"exact": "jason,paul"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "both"}}]},
            {"match": [{"uri": {"prefix": "/a"}, "withoutHeaders": {"end-user": {}}}],
             "route": [{"destination": {"host": "reviews", "subset": "nobody"}}]},
            {"route": [{"destination": {"host": "reviews", "subset": "rest"}}]},
        ],
    });
    let policy = embedded_router(&host, &spec).await;
    /// A request target, its headers, the route it takes.
    type Case = (&'static str, &'static [(&'static str, &'static str)], u32);
    let cases: [Case; 10] = [
        ("/a?v=2", &[("end-user", "jason")], 1),
        ("/a?v=2", &[("End-User", "jason"), ("end-user", "paul")], 2),
        ("/api/x", &[("x-canary", "true"), ("end-user", "jason")], 0),
        ("/a/x", &[("end-user", "jason"), ("end-user", "paul")], 2),
        ("/a?v=1", &[("end-user", "jason")], 4),
        ("/api", &[("x-canary", "false")], 3),
        ("/a?v=2", &[], 3),
        ("/a", &[("x-user", "jason")], 3),
        ("/b?v=2", &[("end-user", "jason")], 4),
        (
            "/a?v=2&w",
            &[("end-user", "jason"), ("x-canary", "true")],
            1,
        ),
    ];
    // Twice, in two orders: the guess differs, the decisions do not.
    for (target, headers, route) in cases.iter().chain(cases.iter().rev()) {
        let view = view_with(target, headers);
        let decision = decided(&policy, &view).await;
        assert_eq!(
            decision.route.as_ref().map(|r| r.index),
            Some(*route),
            "{target} {headers:?}: {decision:?}"
        );
    }
}

/// The SDK's native runner (`testing::decide`) answers a policy's header reads as the
/// host's `request` resource does: the first value, every value in order, every value
/// joined with `,`, names in any case, nothing for a name that is missing or not a
/// header name, and every header with its name lowercase (in an order neither
/// promises).
#[test]
fn the_sdks_testing_reads_headers_as_the_host_does() {
    use std::cell::RefCell;
    use wasmgate::plugin::context::all_headers;
    use wasmgate_plugin_sdk as sdk;

    const NAMES: [&str; 7] = ["X-B", "x-b", "end-user", "X-A", "missing", "not a name", ""];
    type Reads = (
        Vec<(Option<String>, Vec<String>, Option<String>)>,
        Vec<(String, String)>,
    );

    /// Reads every name of [`NAMES`], then all headers.
    struct Reader(RefCell<Option<Reads>>);
    impl sdk::Policy for Reader {
        fn prepare(_: &sdk::Binding, _: &str) -> Result<Self, sdk::ConfigError> {
            Ok(Reader(RefCell::new(None)))
        }
        fn on_request(&self, request: &sdk::Request) -> Result<sdk::Edit, sdk::PluginError> {
            let named = NAMES
                .iter()
                .map(|n| {
                    (
                        request.header(n),
                        request.header_values(n),
                        request.header_joined(n),
                    )
                })
                .collect();
            let mut all: Vec<_> = request
                .headers()
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect();
            all.sort();
            *self.0.borrow_mut() = Some((named, all));
            Ok(sdk::Edit::default())
        }
    }

    let sent = [
        ("X-B", "1"),
        ("x-a", "2"),
        ("x-b", "3"),
        ("End-User", "jason"),
    ];
    let mut native = sdk::testing::request("GET", "/");
    for (name, value) in sent {
        native = native.header(name, value);
    }
    let reader: Reader = sdk::testing::prepare("null");
    sdk::testing::decide(&reader, &native.build());
    let from_sdk = reader.0.take().expect("the policy ran");

    let host = view_with("/", &sent);
    let named = NAMES
        .iter()
        .map(|n| (host.header(n), host.header_values(n), host.header_joined(n)))
        .collect();
    let mut all: Vec<_> = all_headers(&host.headers)
        .into_iter()
        .map(|h| (h.name, h.value))
        .collect();
    all.sort();
    assert_eq!(from_sdk, (named, all));
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
