//! Global state and rate limiting through the real binary: `state:global` keeps a
//! plugin's store in a real Redis (Debian's `redis-server`, started by the test), shared
//! by two gateway processes; when Redis is gone a call fails within `--redis-timeout-ms`
//! and the plugin's failStrategy decides.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::{Gateway, RedisServer, TempDir, free_port, get, plugins_dir};

/// Gateway `gw` on `port`, VirtualService `app` answering 200 `ok` for every path, and
/// `plugin` (a WasmPlugin YAML) bound to it.
fn config(dir: &TempDir, port: u16, plugin: &str) {
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - directResponse: {status: 200, body: {string: ok}}\n",
    );
    dir.write("plugin.yaml", plugin);
}

fn stateful(annotation: &str, extra: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: counter\n  annotations:\n    wasmgate.io/capabilities: \"{annotation}\"\nspec:\n  url: stateful.wasm\n{extra}  targetRefs: [{{group: networking.istio.io, kind: VirtualService, name: app}}]\n"
    )
}

/// Two gateways share one counter in Redis; the local store is each process's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_state_is_shared_by_replicas() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let plugins = plugins_dir(&[("stateful.wasm", "stateful")]);
    let (p1, p2) = (free_port(), free_port());
    let (d1, d2) = (TempDir::new("global-1"), TempDir::new("global-2"));
    config(&d1, p1, &stateful("state:global", ""));
    config(&d2, p2, &stateful("state:global", ""));
    let url = redis.url();
    let args = ["--plugins", plugins.arg(), "--redis", &url];
    let g1 = Gateway::start(d1.path(), &args).await;
    let _g2 = Gateway::start(d2.path(), &args).await;
    let mut last = 0;
    for i in 0..6 {
        let port = if i % 2 == 0 { p1 } else { p2 };
        let r = get(port, "a", "/count", &[]).await.expect("reply");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        last = r.text().parse::<i64>().expect("a count");
    }
    assert_eq!(last, 6, "both replicas counted in one store");
    // Compare-and-swap is atomic in Redis too.
    let r = get(p1, "a", "/cas?key=k&value=one", &[])
        .await
        .expect("reply");
    assert_eq!(r.text(), "true");
    let r = get(p2, "a", "/cas?key=k&value=two", &[])
        .await
        .expect("reply");
    assert_eq!(r.text(), "false");
    let r = get(p2, "a", "/get?key=k", &[]).await.expect("reply");
    assert_eq!(r.text(), "one");

    // Redis gone: the call fails within the timeout (stateful answers 500 with the
    // error), and nothing else stops.
    redis.stop();
    let started = Instant::now();
    let r = get(p1, "a", "/count", &[]).await.expect("reply");
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text());
    assert!(r.text().contains("Redis"), "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let r = get(p1, "a", "/other", &[]).await.expect("reply");
    assert_eq!(r.status, StatusCode::OK);
    // Back: the count starts over (no persistence), through reconnected connections.
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(p1, "a", "/count", &[]).await.expect("reply");
        if r.status == StatusCode::OK {
            assert_eq!(r.text(), "1");
            break;
        }
        assert!(Instant::now() < deadline, "never reconnected: {}", r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(g1);
}

/// `state:global` without `--redis` is a config error naming the WasmPlugin.
#[tokio::test]
async fn global_state_needs_redis() {
    let plugins = plugins_dir(&[("stateful.wasm", "stateful")]);
    let port = free_port();
    let dir = TempDir::new("global-no-redis");
    config(&dir, port, &stateful("state:global", ""));
    let e = Gateway::try_start(dir.path(), &["--plugins", plugins.arg()])
        .await
        .err()
        .expect("refused");
    assert!(
        e.contains(
            "WasmPlugin default/counter: metadata.annotations: global state is kept in Redis"
        ),
        "{e}"
    );
}
