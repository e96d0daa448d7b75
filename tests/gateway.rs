//! Gateway behaviour with the real binary: host matching, upstream failures, user
//! plugins from a plugins directory, the WASI sandbox, failure isolation, reloads that
//! keep the last good config, and the admin endpoint.

mod support;

use http::StatusCode;
use support::{
    Echo, Gateway, TempDir, free_port, gateway, get, plugin_bytes, plugins_dir, service_entry,
};

const VS_TWO_HOSTS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: exact
spec:
  hosts: ["api.example.com"]
  gateways: ["gw"]
  http:
  - route:
    - destination: {host: exact-svc}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: wildcard
spec:
  hosts: ["*.example.com"]
  gateways: ["gw"]
  http:
  - match:
    - uri: {prefix: /only-wild}
    route:
    - destination: {host: wild-svc}
"#;

const VS_MERGED: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: shop-a
spec:
  hosts: ["shop.example.org"]
  gateways: ["gw"]
  http:
  - match:
    - uri: {prefix: /a}
    route:
    - destination: {host: exact-svc}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: shop-b
spec:
  hosts: ["shop.example.org"]
  gateways: ["gw"]
  http:
  - match:
    - uri: {prefix: /b}
    route:
    - destination: {host: wild-svc}
"#;

/// Exact hosts shadow wildcards; unknown hosts get 404; the Host port is ignored;
/// routes of several VirtualServices for one host merge in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_matching_follows_istio() {
    let exact = Echo::start("exact").await;
    let wild = Echo::start("wild").await;
    let port = free_port();
    let dir = TempDir::new("hosts");
    dir.write(
        "gw.yaml",
        &gateway("gw", port, &["*.example.com", "shop.example.org"]),
    );
    dir.write("vs.yaml", VS_TWO_HOSTS);
    dir.write("vs-merged.yaml", VS_MERGED);
    dir.write(
        "se.yaml",
        &format!(
            "{}---\n{}",
            service_entry("exact", "exact-svc", 80, &[(exact.port(), &[])]),
            service_entry("wild", "wild-svc", 80, &[(wild.port(), &[])])
        ),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;

    let r = get(port, "api.example.com", "/only-wild", &[])
        .await
        .expect("request");
    assert_eq!(
        r.upstream().as_deref(),
        Some("exact"),
        "exact host shadows the wildcard"
    );
    let r = get(port, "API.Example.com:8443", "/x", &[])
        .await
        .expect("request");
    assert_eq!(
        r.upstream().as_deref(),
        Some("exact"),
        "case and port ignored"
    );
    let r = get(port, "www.example.com", "/only-wild/1", &[])
        .await
        .expect("request");
    assert_eq!(r.upstream().as_deref(), Some("wild"));
    let r = get(port, "www.example.com", "/other", &[])
        .await
        .expect("request");
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "wildcard VS has no route for /other"
    );
    let r = get(port, "example.com", "/only-wild", &[])
        .await
        .expect("request");
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "*.example.com does not cover example.com"
    );
    let r = get(port, "unknown.test", "/", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::NOT_FOUND, "unknown host");

    let r = get(port, "shop.example.org", "/a", &[])
        .await
        .expect("request");
    assert_eq!(r.upstream().as_deref(), Some("exact"));
    let r = get(port, "shop.example.org", "/b", &[])
        .await
        .expect("request");
    assert_eq!(
        r.upstream().as_deref(),
        Some("wild"),
        "second VirtualService's routes merged"
    );
    let r = get(port, "shop.example.org", "/c", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

const VS_FAILURES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: failures
spec:
  hosts: ["*"]
  gateways: ["gw"]
  http:
  - match: [{uri: {prefix: /dead}}]
    route: [{destination: {host: dead-svc}}]
  - match: [{uri: {prefix: /noendpoints}}]
    route: [{destination: {host: empty-svc}}]
  - match: [{uri: {prefix: /unknownsubset}}]
    route: [{destination: {host: live-svc, subset: v9}}]
  - match: [{uri: {prefix: /unknownhost}}]
    route: [{destination: {host: nowhere.example.com}}]
  - match: [{uri: {prefix: /retry}}]
    route: [{destination: {host: half-dead-svc}}]
  - match: [{uri: {prefix: /safe-retry}}]
    route: [{destination: {host: half-dead-svc}}]
    retries: {attempts: 2, retryOn: connect-failure}
  - match: [{uri: {prefix: /relative}}]
    rewrite: {uri: "rel"}
    route: [{destination: {host: live-svc}}]
  - route: [{destination: {host: live-svc}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_502_and_503() {
    let live = Echo::start("live").await;
    let dead_port = free_port();
    let port = free_port();
    let dir = TempDir::new("failures");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write("vs.yaml", VS_FAILURES);
    let empty = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: empty\nspec:\n  hosts: [empty-svc]\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n";
    dir.write(
        "se.yaml",
        &format!(
            "{}---\n{}---\n{}---\n{empty}",
            service_entry(
                "live",
                "live-svc",
                80,
                &[(live.port(), &[("version", "v1")])]
            ),
            service_entry("dead", "dead-svc", 80, &[(dead_port, &[])]),
            service_entry(
                "half",
                "half-dead-svc",
                80,
                &[(dead_port, &[]), (live.port(), &[])]
            ),
        ),
    );
    let gw = Gateway::start(dir.path(), &[]).await;

    let r = get(port, "a", "/dead", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("connection failure"));
    for path in ["/noendpoints", "/unknownsubset", "/unknownhost"] {
        let r = get(port, "a", path, &[]).await.expect("request");
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {}",
            r.text()
        );
        assert_eq!(r.text(), "no healthy upstream");
    }
    // Istio's default retry moves a refused connection to the next endpoint.
    for _ in 0..4 {
        let r = get(port, "a", "/retry", &[]).await.expect("request");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    // `connect-failure` alone keeps no copy of the request for a retry: the attempt
    // that could not connect gives it back whole, and the live endpoint gets every
    // header, the client's `Host` among them.
    let mut retried = false;
    for i in 0..10 {
        let path = format!("/safe-retry/{i}");
        let r = get(port, "a", &path, &[("x-keep", "kept")])
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let echo = r.echo();
        assert_eq!(echo["headers"]["x-keep"], "kept", "{echo}");
        assert_eq!(echo["headers"]["host"], "a", "{echo}");
        let lines = gw
            .wait_for_access(|l| l.iter().any(|l| l.contains(&path)))
            .await;
        retried |= lines
            .iter()
            .any(|l| l.contains(&format!("{path} 200")) && l.contains("attempts=2"));
        if retried {
            break;
        }
    }
    assert!(retried, "no request met the dead endpoint first");
    // A rewrite that leaves no absolute path is the gateway's failure, before any
    // upstream attempt: 500, flag PF.
    let hits = live.hits();
    let r = get(port, "a", "/relative/x", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text());
    assert_eq!(live.hits(), hits, "nothing reached the upstream");
    let r = get(port, "a", "/", &[]).await.expect("request");
    assert_eq!(r.upstream().as_deref(), Some("live"));
    let lines = gw.access_lines();
    assert!(
        lines.iter().any(|l| l.contains("/relative/x 500 ")
            && l.contains("flags=PF")
            && l.contains("attempts=0")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" 502 ") && l.contains("flags=UF")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" 503 ") && l.contains("flags=UH")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" 503 ") && l.contains("flags=NC")),
        "{lines:#?}"
    );
}

fn plugin_config(dir: &TempDir, port: u16, upstream: &Echo, plugin: &str) {
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: app}\n",
    );
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(upstream.port(), &[])]),
    );
    dir.write("plugin.yaml", plugin);
}

const ADD_HEADERS: &str = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: add-headers
spec:
  url: add-headers.wasm
  targetRefs:
  - {group: networking.istio.io, kind: VirtualService, name: app}
  pluginConfig:
    responseHeaders: {x-powered-by: wasmgate-plugin}
    requestHeaders: {x-plugin-saw: "yes"}
    answer: {path: /plugin/hello, status: 203, body: hello from a plugin}
"#;

/// The plugin author's path: a .wasm in the plugins directory, bound by a WasmPlugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_plugin_from_the_plugins_directory_changes_responses() {
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("userplugin");
    let plugins = plugins_dir(&[("add-headers.wasm", "add-headers")]);
    plugin_config(&dir, port, &app, ADD_HEADERS);
    let _gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;

    let r = get(port, "a", "/anything", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-powered-by"], "wasmgate-plugin");
    assert_eq!(r.echo()["headers"]["x-plugin-saw"], "yes");
    let r = get(port, "a", "/plugin/hello", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::NON_AUTHORITATIVE_INFORMATION);
    assert_eq!(r.text(), "hello from a plugin");
    assert_eq!(app.hits(), 1, "the plugin answered /plugin/hello itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_core_module_works_as_a_plugin_file() {
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("coremodule");
    // What `cargo build --target wasm32-unknown-unknown` leaves: not yet a component.
    let plugins = plugins_dir(&[("add-headers.wasm", "core/add-headers")]);
    plugin_config(&dir, port, &app, ADD_HEADERS);
    let _gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    let r = get(port, "a", "/x", &[]).await.expect("request");
    assert_eq!(r.headers["x-powered-by"], "wasmgate-plugin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasip1_plugin_is_sandboxed_and_its_stdout_goes_to_the_log() {
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("wasi");
    let plugins = TempDir::new("plugins");
    let path = plugins.path().join("wasi-probe.wasm");
    std::fs::write(&path, plugin_bytes("wasi-probe")).expect("copy");
    let plugin = format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: probe\nspec:\n  url: file://{}\n",
        path.display()
    );
    plugin_config(&dir, port, &app, &plugin);
    let gw = Gateway::start(dir.path(), &[]).await;
    let r = get(port, "a", "/", &[]).await.expect("request");
    assert_eq!(
        r.text(),
        "env=0 args=0 root=denied passwd=denied cwd=denied clock=ok"
    );
    let log = gw.log_text();
    assert!(log.contains("wasi-probe stdout: env=0"), "{log}");
    assert!(log.contains("wasi-probe stderr: prepared"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_plugin_fails_its_request_only() {
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("trap");
    let plugins = plugins_dir(&[("misbehave.wasm", "misbehave")]);
    plugin_config(
        &dir,
        port,
        &app,
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: misbehave\nspec:\n  url: misbehave\n",
    );
    let gw = Gateway::start(
        dir.path(),
        &["--plugins", plugins.arg(), "--plugin-time-limit-ms", "50"],
    )
    .await;
    for path in ["/panic", "/loop", "/error"] {
        let r = get(port, "a", path, &[]).await.expect("request");
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert_eq!(r.text(), "policy failure");
        let r = get(port, "a", "/fine", &[]).await.expect("request");
        assert_eq!(r.status, StatusCode::OK, "after {path}");
    }
    assert!(gw.access_lines().iter().any(|l| l.contains("flags=PF")));
    assert!(gw.log_text().contains("ran past its time budget"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_plugin_is_skipped_when_it_fails() {
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("failopen");
    let plugins = plugins_dir(&[("misbehave.wasm", "misbehave")]);
    plugin_config(
        &dir,
        port,
        &app,
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: misbehave\nspec:\n  url: misbehave.wasm\n  failStrategy: FAIL_OPEN\n",
    );
    let _gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    let r = get(port, "a", "/panic", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.upstream().as_deref(), Some("app"));
}

/// A broken plugin or a bad pluginConfig stops start-up with a message naming the
/// file, the WasmPlugin and the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_plugins_are_refused_with_their_names() {
    let app = Echo::start("app").await;
    let port = free_port();
    let plugins = plugins_dir(&[("add-headers.wasm", "add-headers")]);
    std::fs::write(plugins.path().join("junk.wasm"), b"this is not wasm").expect("write");
    let plugins_arg = plugins.arg().to_string();

    let cases = [
        (
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: junk\nspec:\n  url: junk.wasm\n",
            "WasmPlugin default/junk: spec.url: ",
            "not a Wasm file",
        ),
        (
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: missing\nspec:\n  url: missing.wasm\n",
            "WasmPlugin default/missing: spec.url: cannot read",
            "missing.wasm",
        ),
        (
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: badcfg\nspec:\n  url: add-headers.wasm\n  pluginConfig:\n    answer: {path: /x, status: 42}\n",
            "WasmPlugin default/badcfg: spec.pluginConfig.answer.status: 42 is not an HTTP status",
            "plugin.yaml",
        ),
        (
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: sha\nspec:\n  url: add-headers.wasm\n  sha256: 0000000000000000000000000000000000000000000000000000000000000000\n",
            "WasmPlugin default/sha: spec.sha256: ",
            "has sha256",
        ),
    ];
    for (yaml, expect, also) in cases {
        let dir = TempDir::new("broken");
        plugin_config(&dir, port, &app, yaml);
        let Err(log) = Gateway::try_start(dir.path(), &["--plugins", &plugins_arg]).await else {
            panic!("started with {yaml}");
        };
        let line = log
            .lines()
            .find(|l| l.contains(expect))
            .unwrap_or_else(|| panic!("no line with {expect:?} in:\n{log}"));
        assert!(line.contains(also), "{line}");
        assert!(line.contains("plugin.yaml"), "the file is named: {line}");
    }
}

/// A bad file on reload changes nothing; a good one takes effect, new ports included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_last_good_config() {
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("reload");
    plugin_config(&dir, port, &app, "");
    let gw = Gateway::start(dir.path(), &[]).await;
    assert_eq!(
        get(port, "a", "/", &[]).await.expect("request").status,
        StatusCode::OK
    );

    // An unknown field: rejected, old config still served.
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: app}\n      wieght: 5\n",
    );
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("vs.yaml"), "{}", r.text());
    assert!(
        r.text().contains("VirtualService default/app"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("wieght"), "{}", r.text());
    assert_eq!(
        get(port, "a", "/", &[]).await.expect("request").status,
        StatusCode::OK
    );

    // A good change: a direct response, and a second port.
    let port2 = free_port();
    dir.write("gw2.yaml", &gateway("gw2", port2, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw, gw2]\n  http:\n  - directResponse: {status: 200, body: {string: v2}}\n",
    );
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        get(port, "a", "/", &[]).await.expect("request").text(),
        "v2"
    );
    assert_eq!(
        get(port2, "a", "/", &[]).await.expect("request").text(),
        "v2"
    );
}

/// A reload that changes only a ServiceEntry (its endpoint moves) moves the traffic,
/// though the VirtualService and its route are the same as before: the cluster a route
/// resolved to (kept per route, `snapshot/route_clusters.rs`) is not carried from one
/// configuration to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_moves_only_an_endpoint_moves_the_traffic() {
    let (a, b) = (Echo::start("a").await, Echo::start("b").await);
    let port = free_port();
    let dir = TempDir::new("endpoint-moves");
    plugin_config(&dir, port, &a, "");
    let gw = Gateway::start(dir.path(), &[]).await;
    for _ in 0..3 {
        let r = get(port, "a", "/", &[]).await.expect("request");
        assert_eq!(r.echo()["upstream"], "a");
    }
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(b.port(), &[])]),
    );
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for _ in 0..3 {
        let r = get(port, "a", "/", &[]).await.expect("request");
        assert_eq!(r.echo()["upstream"], "b");
    }
}

/// `mirror` sends a copy (Host `-shadow`) and ignores its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sends_a_shadow_copy() {
    let app = Echo::start("app").await;
    let shadow = Echo::start("shadow").await;
    let port = free_port();
    let dir = TempDir::new("mirror");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: app}\n    mirror: {host: shadow}\n    mirrorPercentage: {value: 100}\n",
    );
    dir.write(
        "se.yaml",
        &format!(
            "{}---\n{}",
            service_entry("app", "app", 80, &[(app.port(), &[])]),
            service_entry("shadow", "shadow", 80, &[(shadow.port(), &[])])
        ),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;
    let r = get(port, "shop.test:8000", "/x", &[])
        .await
        .expect("request");
    assert_eq!(r.upstream().as_deref(), Some("app"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while shadow.hits() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(shadow.hits(), 1);
    assert_eq!(
        shadow.last_host.lock().expect("lock").as_str(),
        "shop.test-shadow:8000"
    );
    assert_eq!(app.hits(), 1);
}

/// h2c clients are served; `HTTP2` service ports are spoken to in HTTP/2, and the
/// connection goes to the endpoint whatever Host the client sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_both_sides() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let grpcish = Echo::start_h2("h2-upstream").await;
    let port = free_port();
    let dir = TempDir::new("h2");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: h2svc}\n",
    );
    dir.write(
        "se.yaml",
        &service_entry("h2svc", "h2svc", 80, &[(grpcish.port(), &[])])
            .replace("protocol: HTTP", "protocol: HTTP2"),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;

    // An HTTP/1.1 client whose Host names another port on this machine.
    let r = get(port, &format!("127.0.0.1:{}", free_port()), "/x", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo()["version"], "HTTP/2.0");
    assert_eq!(grpcish.hits(), 1, "the endpoint was dialled, not the Host");

    // An h2c client (prior knowledge).
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::builder()
        .uri(format!("http://shop.test:{port}/y"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    // Connect to loopback while :authority says shop.test.
    let req = {
        let (mut parts, body) = req.into_parts();
        parts.uri = format!("http://127.0.0.1:{port}/y").parse().expect("uri");
        parts
            .headers
            .insert("host", "shop.test".parse().expect("host"));
        http::Request::from_parts(parts, body)
    };
    let resp = client.request(req).await.expect("h2c request");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(echo["path"], "/y");
}

/// Bodies stream through both ways; DNS resolution; `ns/host` Gateway hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_dns_endpoints_and_namespaced_gateway_hosts() {
    use bytes::Bytes;
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("bodies");
    // Only VirtualServices from namespace "shop" may bind to this server.
    dir.write(
        "gw.yaml",
        &gateway("gw", port, &["shop/*"]).replace(
            "metadata:\n  name: gw\n",
            "metadata:\n  name: gw\n  namespace: edge\n",
        ),
    );
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\n  namespace: shop\nspec:\n  hosts: [\"*\"]\n  gateways: [edge/gw]\n  http:\n  - route:\n    - destination: {host: app.example.internal}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: intruder\n  namespace: other\nspec:\n  hosts: [\"intruder.test\"]\n  gateways: [edge/gw]\n  http:\n  - directResponse: {status: 200, body: {string: intruder}}\n",
    );
    // DNS resolution: the endpoint is a name resolved when connecting.
    dir.write(
        "se.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: app\n  namespace: shop\nspec:\n  hosts: [app.example.internal]\n  resolution: DNS\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n  - address: localhost\n    ports: {{http: {}}}\n",
            app.port()
        ),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;

    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let text: String = body.iter().map(|b| char::from(b'a' + b % 26)).collect();
    let r = support::request(
        port,
        "POST",
        "x.test",
        "/upload",
        &[("content-type", "text/plain")],
        Bytes::from(text.clone()),
    )
    .await
    .expect("request");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let echo = r.echo();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"].as_str().map(str::len), Some(text.len()));
    assert!(echo["body"] == text.as_str(), "body changed on the way");

    let r = get(port, "intruder.test", "/", &[]).await.expect("request");
    assert_eq!(
        r.upstream().as_deref(),
        Some("app"),
        "namespace 'other' may not bind to shop/*"
    );
}

/// Malformed or hostile requests get an error and the gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_do_not_hurt_the_gateway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("malformed");
    plugin_config(&dir, port, &app, "");
    let _gw = Gateway::start(dir.path(), &[]).await;

    async fn raw(port: u16, bytes: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(bytes).await.expect("write");
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).to_string()
    }
    // HTTP/1.0 without Host.
    let reply = raw(port, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        reply.starts_with("HTTP/1.0 400") || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    // Garbage.
    let reply = raw(port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").await;
    assert!(reply.is_empty() || reply.contains(" 400 "), "{reply}");
    // A 200 KiB header.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(200 << 10)
    );
    let reply = raw(port, huge.as_bytes()).await;
    assert!(
        reply.is_empty() || reply.contains(" 431 ") || reply.contains(" 400 "),
        "{}",
        &reply[..reply.len().min(200)]
    );
    // A rewrite to a path injection is impossible: the client's path cannot become an authority.
    let reply = raw(
        port,
        b"GET @evil.example/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        reply.contains(" 400 ") || reply.contains(" 404 ") || reply.contains(" 500 "),
        "{reply}"
    );
    assert_eq!(app.hits(), 0, "{reply}");
    // Still serving.
    let r = get(port, "a", "/", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK);
}

/// An `Upgrade` (WebSocket-style) request is switched through to the upstream and the
/// bytes flow both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_proxied() {
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // An upstream that answers Upgrade: echo with 101 and then echoes bytes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream_port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |mut req: http::Request<hyper::body::Incoming>| async move {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(up) = on.await {
                                let mut io = hyper_util::rt::TokioIo::new(up);
                                let mut buf = [0u8; 64];
                                while let Ok(n) = io.read(&mut buf).await {
                                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                        let resp = http::Response::builder()
                            .status(101)
                            .header("connection", "upgrade")
                            .header("upgrade", "echo")
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .expect("response");
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });

    let port = free_port();
    let dir = TempDir::new("upgrade");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: ws}\n",
    );
    dir.write(
        "se.yaml",
        &service_entry("ws", "ws", 80, &[(upstream_port, &[])]),
    );
    // Only websocket is tunnelled by default; this test's protocol is allowed by flag.
    let gw = Gateway::start(dir.path(), &["--allow-upgrade", "echo"]).await;

    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut byte))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n == 1, "closed early: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    s.write_all(b"ping through the gateway")
        .await
        .expect("write");
    let mut echoed = [0u8; 24];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .expect("echo in time");
    assert!(read.is_ok(), "{read:?}\n{}", gw.log_text());
    assert_eq!(&echoed, b"ping through the gateway");
}

/// SIGTERM: new connections are refused, the request in flight completes, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight() {
    use std::convert::Infallible;
    use tokio::sync::{Mutex, Notify};

    // An upstream that says when a request arrived and answers only when released.
    let arrived = std::sync::Arc::new(Notify::new());
    let release = std::sync::Arc::new(Mutex::new(()));
    let held = release.clone().lock_owned().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream_port = listener.local_addr().expect("addr").port();
    let (a, r) = (arrived.clone(), release.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (a, r) = (a.clone(), r.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let (a, r) = (a.clone(), r.clone());
                    async move {
                        a.notify_one();
                        let _released = r.lock().await;
                        Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"finished"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let port = free_port();
    let dir = TempDir::new("drain");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: app}\n",
    );
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(upstream_port, &[])]),
    );
    let mut gw = Gateway::start(dir.path(), &[]).await;

    let in_flight = tokio::spawn(async move { get(port, "a", "/slow", &[]).await });
    arrived.notified().await;
    gw.terminate();
    // The gateway stops accepting before it exits; the held request still completes.
    let refused = async {
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), refused)
        .await
        .expect("listener closed after SIGTERM");
    drop(held);
    let reply = in_flight
        .await
        .expect("task")
        .expect("the request in flight completes");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "finished");
    assert_eq!(
        gw.exited(std::time::Duration::from_secs(10)).await,
        Some(0),
        "{}",
        gw.log_text()
    );
}

/// SIGTERM with a client connected that has sent nothing: the drain closes that
/// connection at once (the listener's first read is hyper-util's, which a drain
/// cancels), so the gateway exits long before its drain time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_for_a_silent_connection() {
    let port = free_port();
    let dir = TempDir::new("drain-silent");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - directResponse: {status: 200}\n",
    );
    // One worker: one accept queue, so the request below is accepted after `silent`.
    let args = ["--drain-seconds", "30", "--workers", "1"];
    let mut gw = Gateway::start(dir.path(), &args).await;
    let silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let r = get(port, "a", "/", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK);
    let started = std::time::Instant::now();
    gw.terminate();
    assert_eq!(
        gw.exited(std::time::Duration::from_secs(20)).await,
        Some(0),
        "{}",
        gw.log_text()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "waited {:?} for a connection that sent nothing",
        started.elapsed()
    );
    drop(silent);
}

/// A restart loads compiled components from the compile cache instead of compiling;
/// a damaged entry is compiled again and replaced, and a folder others may write is
/// not used at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_plugins_are_cached_between_runs() {
    use std::os::unix::fs::PermissionsExt;
    let app = Echo::start("app").await;
    let port = free_port();
    let dir = TempDir::new("compilecache");
    let plugins = plugins_dir(&[("add-headers.wasm", "add-headers")]);
    plugin_config(&dir, port, &app, ADD_HEADERS);
    let cache = TempDir::new("compilecache-dir");
    let cache_dir = cache.path().join("cc");
    let cache_arg = cache_dir.to_str().expect("utf-8 path");
    let args = ["--plugins", plugins.arg(), "--compile-cache", cache_arg];
    let entries = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&cache_dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|e| e == "cwasm"));
        v.sort();
        v
    };
    let tag_of = |p: &std::path::Path| {
        let mut name = p.as_os_str().to_owned();
        name.push(".tag");
        std::path::PathBuf::from(name)
    };
    // Start, check a request gets through the plugins, stop; the log tells the rest.
    let run_once = || async {
        let gw = Gateway::start(dir.path(), &args).await;
        let r = get(port, "a", "/x", &[]).await.expect("request");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-powered-by"], "wasmgate-plugin");
        gw.log_text()
    };
    let count = |log: &str, what: &str| log.matches(what).count();

    let log = run_once().await;
    // router, fault, traffic-split and the user's plugin, each compiled by the child
    // process (`wasmgate compile-entry`) and loaded as it stored it.
    assert_eq!(count(&log, "stored in the compile cache"), 4, "{log}");
    assert_eq!(
        count(&log, "loaded as the compiler process stored it"),
        4,
        "{log}"
    );
    assert!(!log.contains("compiling here"), "{log}");
    let first = entries();
    assert_eq!(first.len(), 4, "{first:?}");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&cache_dir), 0o700);
    assert!(first.iter().all(|p| mode(p) == 0o600));
    // Each entry has its tag beside it, and the folder its key, private too.
    assert!(first.iter().all(|p| mode(&tag_of(p)) == 0o600));
    assert_eq!(mode(&cache_dir.join(".key")), 0o600);

    // A restart compiles nothing.
    let log = run_once().await;
    assert_eq!(count(&log, "loaded from the compile cache"), 4, "{log}");
    assert_eq!(count(&log, "stored in the compile cache"), 0, "{log}");

    // Pruning at start: an entry unused for longer than --compile-cache-max-age-days
    // (default 30) goes, a recent one stays, and what a run loads is marked as used.
    let now = std::time::SystemTime::now();
    let days_ago = |d: u64| now - std::time::Duration::from_secs(d * 24 * 3600);
    let set_used = |p: &std::path::Path, t: std::time::SystemTime| {
        std::fs::File::options()
            .write(true)
            .open(p)
            .and_then(|f| f.set_modified(t))
            .expect("set mtime");
    };
    let stale = cache_dir.join(format!("{}.cwasm", "0".repeat(64)));
    let recent = cache_dir.join(format!("{}.cwasm", "1".repeat(64)));
    for (path, days) in [(&stale, 31), (&recent, 1)] {
        std::fs::write(path, b"an old entry").expect("write");
        set_used(path, days_ago(days));
    }
    set_used(&first[1], days_ago(10));
    let log = run_once().await;
    assert!(log.contains("compile cache pruned"), "{log}");
    assert!(!stale.exists(), "an entry unused for 31 days is pruned");
    assert!(recent.exists(), "an entry used yesterday is kept");
    let used = std::fs::metadata(&first[1])
        .and_then(|m| m.modified())
        .expect("mtime");
    assert!(used > days_ago(1), "a loaded entry is marked as used");

    // A damaged entry is not machine code wasmtime accepts: compiled again, replaced.
    std::fs::write(&first[0], b"not a compiled component").expect("damage an entry");
    let log = run_once().await;
    assert_eq!(count(&log, "loaded from the compile cache"), 3, "{log}");
    assert_eq!(count(&log, "stored in the compile cache"), 1, "{log}");
    assert!(std::fs::metadata(&first[0]).expect("entry").len() > 1000);

    // An entry swapped for another valid one, tag and all (wasmtime would run it): its
    // tag names the other entry, so it is compiled again and replaced.
    let before = std::fs::read(&first[2]).expect("entry");
    std::fs::copy(&first[3], &first[2]).expect("swap entry");
    std::fs::copy(tag_of(&first[3]), tag_of(&first[2])).expect("swap tag");
    let log = run_once().await;
    assert_eq!(count(&log, "loaded from the compile cache"), 3, "{log}");
    assert_eq!(count(&log, "stored in the compile cache"), 1, "{log}");
    assert_eq!(std::fs::read(&first[2]).expect("entry"), before);

    // An entry that is a link is not followed, even to the very bytes its tag is for.
    let elsewhere = TempDir::new("compilecache-elsewhere");
    let moved = elsewhere.path().join(first[1].file_name().expect("name"));
    std::fs::copy(&first[1], &moved).expect("copy out");
    std::fs::remove_file(&first[1]).expect("remove");
    std::os::unix::fs::symlink(&moved, &first[1]).expect("symlink");
    let log = run_once().await;
    assert_eq!(count(&log, "loaded from the compile cache"), 3, "{log}");
    assert_eq!(count(&log, "stored in the compile cache"), 1, "{log}");
    assert!(
        !std::fs::symlink_metadata(&first[1])
            .expect("entry")
            .is_symlink()
    );

    // A folder others can write is never trusted (nor written).
    std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let log = run_once().await;
    assert_eq!(count(&log, "loaded from the compile cache"), 0, "{log}");
    assert!(log.contains("compile cache not used"), "{log}");
}

/// A ServiceEntry in namespace `app` for `svc.app.test` with endpoints `a` (version v1)
/// and `b` (version v2), and what else `extra` adds.
fn app_service(a: &Echo, b: &Echo) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc, namespace: app}}\nspec:\n  hosts: [svc.app.test]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{version: v1}}}}\n  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{version: v2}}}}\n",
        a.port(),
        b.port()
    )
}

/// A VirtualService of namespace `app` for `host` through `default/gw` to `dest`.
fn app_route(name: &str, host: &str, export_to: &str, dest: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  hosts: [{host}]\n  gateways: [default/gw]\n  exportTo: {export_to}\n  http:\n  - route: [{{destination: {dest}}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_decides_what_this_gateway_sees() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let port = free_port();
    let dir = TempDir::new("export-to");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write("svc.yaml", &app_service(&a, &b));
    dir.write(
        "hidden.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: hidden, namespace: app}}\nspec:\n  hosts: [hidden.app.test]\n  exportTo: [\"~\"]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]\n",
            a.port()
        ),
    );
    let svc = "{host: svc.app.test}";
    dir.write(
        "vs.yaml",
        &[
            app_route("public", "public.test", "[]", svc),
            app_route("private", "private.test", "[\".\"]", svc),
            app_route("named", "named.test", "[istio-system]", svc),
            app_route("star", "star.test", "[\"*\"]", svc),
            app_route("hidden", "hidden.test", "[]", "{host: hidden.app.test}"),
        ]
        .join("---\n"),
    );
    let status =
        |host: &'static str| async move { get(port, host, "/", &[]).await.expect("answer").status };

    // The gateway's namespace is istio-system (the default of --workload-namespace).
    let gw = Gateway::start(dir.path(), &[]).await;
    assert_eq!(status("public.test").await, StatusCode::OK);
    assert_eq!(status("star.test").await, StatusCode::OK);
    assert_eq!(status("named.test").await, StatusCode::OK);
    // Exported only to its own namespace: not this gateway's route.
    assert_eq!(status("private.test").await, StatusCode::NOT_FOUND);
    // `~`: the ServiceEntry is seen by no proxy, so its host is unknown here.
    let hidden = status("hidden.test").await;
    assert_eq!(hidden, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        a.hits() + b.hits(),
        3,
        "only the three visible routes reached upstream"
    );
    drop(gw);

    // A gateway in namespace `app` sees the private route and not the one named for
    // istio-system.
    let _gw = Gateway::start(dir.path(), &["--workload-namespace", "app"]).await;
    assert_eq!(status("private.test").await, StatusCode::OK);
    assert_eq!(status("named.test").await, StatusCode::NOT_FOUND);
    assert_eq!(status("public.test").await, StatusCode::OK);
}

/// A DestinationRule of `namespace` for svc.app.test whose subset `pick` selects
/// endpoints of `version`.
fn pick_rule(namespace: &str, version: &str, export_to: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: pick, namespace: {namespace}}}\nspec:\n  host: svc.app.test\n  exportTo: {export_to}\n  subsets: [{{name: pick, labels: {{version: {version}}}}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_rules_apply_in_istios_namespace_order() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let port = free_port();
    let dir = TempDir::new("dr-order");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write("svc.yaml", &app_service(&a, &b));
    dir.write(
        "vs.yaml",
        &app_route("r", "\"*\"", "[]", "{host: svc.app.test, subset: pick}"),
    );
    let root_and_service = [
        pick_rule("istio-system", "v1", "[]"),
        pick_rule("app", "v2", "[]"),
        // Another namespace's rule never applies to this service.
        pick_rule("other", "v1", "[]"),
    ]
    .join("---\n");
    dir.write("dr.yaml", &root_and_service);
    let upstream = || async {
        get(port, "x.test", "/", &[])
            .await
            .expect("answer")
            .upstream()
            .unwrap_or_default()
    };

    // A service's own rule beats the root namespace's public one (a mesh-wide
    // default), for a gateway in the root namespace as for one elsewhere.
    let gw = Gateway::start(dir.path(), &[]).await;
    assert_eq!(upstream().await, "b");
    drop(gw);
    let gw = Gateway::start(dir.path(), &["--workload-namespace", "edge"]).await;
    assert_eq!(upstream().await, "b");
    drop(gw);
    // A rule the gateway's namespace keeps to itself comes first.
    dir.write(
        "dr.yaml",
        &[
            pick_rule("istio-system", "v1", "[\".\"]"),
            pick_rule("app", "v2", "[]"),
        ]
        .join("---\n"),
    );
    let gw = Gateway::start(dir.path(), &[]).await;
    assert_eq!(upstream().await, "a");
    drop(gw);
    // The service's rule kept to its namespace: the root namespace's public one applies.
    dir.write(
        "dr.yaml",
        &[
            pick_rule("istio-system", "v1", "[]"),
            pick_rule("app", "v2", "[\".\"]"),
        ]
        .join("---\n"),
    );
    let _gw = Gateway::start(dir.path(), &["--workload-namespace", "edge"]).await;
    assert_eq!(upstream().await, "a");
}
