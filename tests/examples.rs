//! Every example, run the way its README says: the quickstart config with its curl
//! requests, and the plugin author's path (build a plugin crate with
//! `wasmgate build-plugin`, drop it in a plugins directory, bind it with a WasmPlugin).

mod support;

use std::process::Command;

use http::StatusCode;
use support::{Gateway, TempDir, binary, free_port, get, repo};

/// The quickstart folder copied with its ports (8080, 8081, 8082) moved to free ones.
fn quickstart(dir: &TempDir) -> u16 {
    let (public, v1, v2) = (free_port(), free_port(), free_port());
    for file in ["gateway.yaml", "backends.yaml"] {
        let text = std::fs::read_to_string(repo().join("examples/quickstart").join(file))
            .expect("example");
        let text = text
            .replace("8080", &public.to_string())
            .replace("8081", &v1.to_string())
            .replace("8082", &v2.to_string());
        dir.write(file, &text);
    }
    public
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_plugin_builds_loads_and_runs() {
    let plugins = TempDir::new("hello-plugins");
    // Reuse the folder build.rs builds plugins in, so the wasm std is built once.
    let out = Command::new(binary())
        .current_dir(repo())
        .args(["build-plugin", "examples/hello-plugin", "--out"])
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
    let built = plugins.path().join("hello-plugin.wasm");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        built.display().to_string()
    );
    assert!(wasmgate::plugin::is_component(
        &std::fs::read(&built).expect("built plugin")
    ));

    let dir = TempDir::new("hello-config");
    let port = quickstart(&dir);
    let binding = std::fs::read_to_string(repo().join("examples/hello-plugin/wasmplugin.yaml"))
        .expect("example");
    // Configured in mixed case, sent in lowercase (and in upper case below): header
    // names match in any case, through the SDK's `RequestHead::header`.
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

/// Step 1 of the plugin README: the plugin's own unit tests run natively.
#[test]
fn hello_plugin_unit_tests_pass_natively() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo())
        .args([
            "test",
            "--manifest-path",
            "examples/hello-plugin/Cargo.toml",
            "--target-dir",
        ])
        .arg(repo().join("target/examples"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("test result: ok. 5 passed"), "{stdout}");
}
