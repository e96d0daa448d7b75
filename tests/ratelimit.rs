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

/// The `builtin://ratelimit` WasmPlugin on VirtualService `app`.
fn limiter(config: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: limiter\nspec:\n  url: builtin://ratelimit\n  targetRefs: [{{group: networking.istio.io, kind: VirtualService, name: app}}]\n  pluginConfig: {config}\n"
    )
}

/// Send `n` requests at once to `ports` (round robin); the replies, in no order.
async fn burst(ports: &[u16], n: usize, headers: &[(&str, &str)]) -> Vec<support::Reply> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let port = ports[i % ports.len()];
            let headers = headers.clone();
            tokio::spawn(async move {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                get(port, "a", "/", &h).await.expect("reply")
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

fn passed(replies: &[support::Reply]) -> usize {
    replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count()
}

/// Envoy's local rate limit, exact under concurrency: 50 requests at once against a
/// bucket of 20 (one fill a minute): 20 pass, 30 get 429 `local_rate_limited`, and both
/// carry the x-ratelimit headers. A header key gives each user a bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_rate_limit_is_exact_under_concurrency() {
    let port = free_port();
    let dir = TempDir::new("ratelimit-local");
    config(
        &dir,
        port,
        &limiter("{tokenBucket: {maxTokens: 20, tokensPerFill: 20, fillInterval: 60s}}"),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;
    let replies = burst(&[port], 50, &[]).await;
    assert_eq!(
        passed(&replies),
        20,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let limited = replies
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("a limited reply");
    assert_eq!(limited.text(), "local_rate_limited");
    let header = |r: &support::Reply, name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header(limited, "x-ratelimit-limit"), "20");
    assert_eq!(header(limited, "x-ratelimit-remaining"), "0");
    let reset: u64 = header(limited, "x-ratelimit-reset")
        .parse()
        .expect("reset seconds");
    assert!((1..=60).contains(&reset), "{reset}");
    let ok = replies
        .iter()
        .find(|r| r.status == StatusCode::OK)
        .expect("a passed reply");
    assert_eq!(header(ok, "x-ratelimit-limit"), "20");
    assert!(!header(ok, "x-ratelimit-remaining").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_gives_each_user_a_bucket() {
    let port = free_port();
    let dir = TempDir::new("ratelimit-key");
    config(
        &dir,
        port,
        &limiter(
            "{tokenBucket: {maxTokens: 3, fillInterval: 60s}, key: {header: x-user}, statusCode: 503}",
        ),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;
    for user in ["alice", "bob"] {
        let replies = burst(&[port], 5, &[("x-user", user)]).await;
        assert_eq!(passed(&replies), 3, "{user}");
        assert!(
            replies
                .iter()
                .all(|r| r.status == StatusCode::OK || r.status == StatusCode::SERVICE_UNAVAILABLE),
            "statusCode 503"
        );
    }
}

/// `scope: global`: two gateway processes share one budget in Redis, exactly; with
/// Redis gone the limiter fails open (FAIL_OPEN by default), within the timeout, and
/// the failures are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_rate_limit_is_shared_by_replicas() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let (p1, p2) = (free_port(), free_port());
    let (d1, d2) = (TempDir::new("rl-global-1"), TempDir::new("rl-global-2"));
    let plugin = limiter(
        "{tokenBucket: {maxTokens: 10, tokensPerFill: 10, fillInterval: 60s}, scope: global}",
    );
    config(&d1, p1, &plugin);
    config(&d2, p2, &plugin);
    let url = redis.url();
    // A generous timeout: on a loaded machine a slow Redis answer must not fail open
    // and blur the count (Redis stopped below refuses at once).
    let args = ["--redis", &url, "--redis-timeout-ms", "2000"];
    let g1 = Gateway::start(d1.path(), &args).await;
    let _g2 = Gateway::start(d2.path(), &args).await;
    let replies = burst(&[p1, p2], 30, &[]).await;
    assert_eq!(
        passed(&replies),
        10,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );

    redis.stop();
    let started = Instant::now();
    let replies = burst(&[p1], 5, &[]).await;
    assert_eq!(passed(&replies), 5, "fails open");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let metrics = g1.scrape().await;
    let errors: u64 = metrics
        .lines()
        .find(|l| l.starts_with("wasmgate_plugin_errors_total{") && l.contains("default/limiter"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(errors >= 5, "{metrics}");
}

/// `scope: global` without `--redis` is refused at load.
#[tokio::test]
async fn global_rate_limit_needs_redis() {
    let port = free_port();
    let dir = TempDir::new("rl-no-redis");
    config(
        &dir,
        port,
        &limiter("{tokenBucket: {maxTokens: 1, fillInterval: 1s}, scope: global}"),
    );
    let e = Gateway::try_start(dir.path(), &[])
        .await
        .err()
        .expect("refused");
    assert!(
        e.contains(
            "WasmPlugin default/limiter: spec.pluginConfig.scope: global state is kept in Redis"
        ),
        "{e}"
    );
}
