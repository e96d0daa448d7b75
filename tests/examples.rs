//! Every example, run the way its README says: the quickstart config with its curl
//! requests, and the plugin author's path (build a plugin crate with
//! `wasmgate build-plugin`, drop it in a plugins directory, bind it with a WasmPlugin)
//! for `hello-plugin`, `rate-limit-plugin` (the state capability) and `ext-auth-plugin`
//! (an outbound call).

mod support;

use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use support::{Gateway, TempDir, binary, free_port, get, repo};

/// The YAML files of `examples/<example>` copied into `dir` with the ports the examples
/// use (8080, 8081, 8082) moved to free ones, which it returns in that order.
fn example_config(example: &str, dir: &TempDir) -> [u16; 3] {
    let ports = [free_port(), free_port(), free_port()];
    let folder = repo().join("examples").join(example);
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .expect("example folder")
        .map(|e| e.expect("example file").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {}", folder.display());
    for file in files {
        let mut text = std::fs::read_to_string(&file).expect("example");
        for (used, free) in [8080, 8081, 8082].iter().zip(ports) {
            text = text.replace(&used.to_string(), &free.to_string());
        }
        dir.write(
            file.file_name()
                .and_then(|n| n.to_str())
                .expect("file name"),
            &text,
        );
    }
    ports
}

/// The quickstart folder with its ports moved; its public port.
fn quickstart(dir: &TempDir) -> u16 {
    example_config("quickstart", dir)[0]
}

/// Step 2 of a plugin example's README: `wasmgate build-plugin examples/<example>` into a
/// fresh plugins directory, which holds `<example>.wasm`, a component, once it returns.
fn build_example_plugin(example: &str) -> TempDir {
    let plugins = TempDir::new(&format!("{example}-built"));
    // Reuse the folder build.rs builds plugins in, so the wasm std is built once.
    let out = Command::new(binary())
        .current_dir(repo())
        .args(["build-plugin", &format!("examples/{example}"), "--out"])
        .arg(plugins.path())
        .arg("--target-dir")
        .arg(env!("WASMGATE_PLUGIN_TARGET_DIR"))
        .output()
        .expect("run build-plugin");
    assert!(
        out.status.success(),
        "build-plugin failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = plugins.path().join(format!("{example}.wasm"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        built.display().to_string()
    );
    assert!(wasmgate::plugin::is_component(
        &std::fs::read(&built).expect("built plugin")
    ));
    plugins
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_answers_as_its_readme_says() {
    let dir = TempDir::new("quickstart");
    let port = quickstart(&dir);
    let gw = Gateway::start(dir.path(), &[]).await;
    let host = format!("localhost:{port}");

    let r = get(port, &host, "/hello", &[]).await.expect("request");
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "hello from wasmgate\n")
    );

    let mut v1 = 0;
    for _ in 0..200 {
        let r = get(port, &host, "/reviews", &[]).await.expect("request");
        match r.text().as_str() {
            "reviews v1\n" => v1 += 1,
            "reviews v2\n" => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((130..=190).contains(&v1), "v1 answered {v1} of 200");

    let r = get(port, &host, "/ratings", &[("end-user", "jason")])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let r = get(port, &host, "/ratings", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK);
    let r = get(port, &host, "/old", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        r.headers["location"],
        format!("http://localhost:{port}/hello").as_str()
    );
    let r = get(port, &host, "/nothing-here", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let routes = get(gw.admin, "admin", "/routes", &[]).await.expect("admin");
    let text = routes.text();
    assert!(text.contains(&format!(":{port} HTTP\n")), "{text}");
    assert!(
        text.contains("default/shop via default/public: wasmgate/router -> wasmgate/fault -> wasmgate/traffic-split"),
        "{text}"
    );
    // No route of the backends has a fault or a split: only the router is bound there.
    assert!(
        text.contains("default/reviews-v1 via default/backend-v1: wasmgate/router\n"),
        "{text}"
    );
}

/// `--plugin-pool-instances` shrinks the address space the engine reserves: under a
/// 64 GiB limit (`prlimit --as`) the default pool (1,000 slots of about 4 GiB each)
/// cannot be reserved and the gateway says so and exits, while a pool of 8 serves the
/// quickstart (`bench/startup-order.sh` starts it with a pool of 4 under valgrind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_instance_pool_starts_under_an_address_space_limit() {
    let dir = TempDir::new("quickstart-pool");
    let port = quickstart(&dir);
    let limit = ["prlimit", "--as=68719476736", "--"];

    let mut default = Gateway::spawn_under(&limit, dir.path(), &[], &[]);
    let code = default.exited(Duration::from_secs(60)).await;
    let log = default.log_text();
    assert!(matches!(code, Some(c) if c != 0), "{code:?}\n{log}");
    assert!(
        log.contains("failed to create memory pool mapping"),
        "{log}"
    );

    let mut small =
        Gateway::spawn_under(&limit, dir.path(), &["--plugin-pool-instances", "8"], &[]);
    if let Err(log) = small.wait_ready(Duration::from_secs(60)).await {
        panic!("a pool of 8 did not start under the limit:\n{log}");
    }
    let host = format!("localhost:{port}");
    let r = get(port, &host, "/hello", &[]).await.expect("request");
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "hello from wasmgate\n")
    );
    let r = get(port, &host, "/reviews", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_plugin_builds_loads_and_runs() {
    let plugins = build_example_plugin("hello-plugin");
    let dir = TempDir::new("hello-config");
    let port = quickstart(&dir);
    let binding = std::fs::read_to_string(repo().join("examples/hello-plugin/wasmplugin.yaml"))
        .expect("example");
    // Configured in mixed case, sent in lowercase (and in upper case below): header
    // names match in any case, through the SDK's `Request::header`.
    assert!(binding.contains("denyHeader: X-Block-Me"), "{binding}");
    dir.write("wasmplugin.yaml", &binding);
    let _gw = Gateway::start(
        dir.path(),
        &["--plugins", plugins.path().to_str().expect("utf-8")],
    )
    .await;
    let host = format!("localhost:{port}");
    let r = get(port, &host, "/reviews", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-greeting"], "hello from my plugin");
    let r = get(port, &host, "/reviews", &[("x-block-me", "1")])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = get(port, &host, "/reviews", &[("X-BLOCK-ME", "1")])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.text(), "blocked\n");
    // The plugin is bound to `shop` only: the backends' VirtualServices are untouched.
    let r = get(port, &host, "/hello", &[]).await.expect("request");
    assert!(
        r.headers.get("x-greeting").is_none(),
        "direct responses are not forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_plugin_builds_loads_and_limits() {
    let plugins = build_example_plugin("rate-limit-plugin");
    let dir = TempDir::new("rate-limit-config");
    let [port, ..] = example_config("rate-limit-plugin", &dir);
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    let host = format!("localhost:{port}");

    // The README's configuration: 3 a minute per client (the test's is 127.0.0.1).
    for remaining in ["2", "1", "0"] {
        let r = get(port, &host, "/", &[]).await.expect("request");
        assert_eq!(r.status, StatusCode::OK, "{}", gw.log_text());
        assert_eq!(r.text(), "hello\n");
        assert_eq!(r.headers["x-ratelimit-limit"], "3");
        assert_eq!(r.headers["x-ratelimit-remaining"], remaining);
    }
    let r = get(port, &host, "/", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["retry-after"], "60");
    assert_eq!(r.text(), "rate limit exceeded\n");
    // `header: x-user`: each user has a count of their own.
    let r = get(port, &host, "/", &[("x-user", "alice")])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-ratelimit-remaining"], "2");
    // The counts are the gateway's: a reload that keeps the plugin keeps them.
    assert_eq!(gw.reload().await.status, StatusCode::OK);
    let r = get(port, &host, "/", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", gw.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_auth_plugin_builds_loads_and_checks_every_request() {
    let plugins = build_example_plugin("ext-auth-plugin");
    let dir = TempDir::new("ext-auth-config");
    // The public port, the authorization service's and the backend's.
    let [port, authz, _] = example_config("ext-auth-plugin", &dir);
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    let host = format!("localhost:{port}");
    let alice = ("authorization", "Bearer alice-token");

    let r = get(port, &host, "/orders", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", gw.log_text());
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = get(
        port,
        &host,
        "/orders",
        &[("authorization", "Bearer bob-token")],
    )
    .await
    .expect("request");
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = get(port, &host, "/orders", &[alice])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK, "{}", gw.log_text());
    assert_eq!(
        r.text(),
        "hello alice\n",
        "the service named the user upstream"
    );
    let r = get(port, &host, "/orders", &[alice, ("x-user", "mallory")])
        .await
        .expect("request");
    assert_eq!(r.text(), "hello alice\n", "the client named the user");
    // Each check is a request of its own, under the configured prefix.
    let checked = "GET authz.internal /check/orders 200";
    let lines = gw
        .wait_for_access(|lines| lines.iter().any(|l| l.contains(checked)))
        .await;
    assert!(lines.iter().any(|l| l.contains(checked)), "{lines:#?}");

    // The service cannot be asked: its endpoint moves to a port nobody listens on.
    let dead = free_port();
    let config = std::fs::read_to_string(dir.path().join("authz.yaml")).expect("authz.yaml");
    let moved = config.replace(&format!("http: {authz}"), &format!("http: {dead}"));
    assert_ne!(moved, config);
    dir.write("authz.yaml", &moved);
    assert_eq!(gw.reload().await.status, StatusCode::OK);
    let r = get(port, &host, "/orders", &[alice])
        .await
        .expect("request");
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        gw.log_text()
    );
    assert_eq!(r.text(), "authorization service unavailable\n");
}

/// Step 1 of each plugin example's README: the plugin's own unit tests run natively, and
/// all of them do.
#[test]
fn example_plugins_unit_tests_pass_natively() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (example, tests) in [
        ("hello-plugin", 6),
        ("rate-limit-plugin", 7),
        ("ext-auth-plugin", 7),
    ] {
        let out = Command::new(&cargo)
            .current_dir(repo())
            .args([
                "test",
                "--manifest-path",
                &format!("examples/{example}/Cargo.toml"),
                "--target-dir",
            ])
            .arg(repo().join("target/examples"))
            .env_remove("RUSTFLAGS")
            .output()
            .expect("run cargo test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{example}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("test result: ok. {tests} passed")),
            "{example}: {stdout}"
        );
    }
}
