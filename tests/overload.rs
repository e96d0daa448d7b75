//! The gateway under load and faults, on loopback: its bounds (connections, slow heads,
//! quiet bodies and tunnels, mirrors, delays) refuse early and cheaply, misbehaving upstreams
//! leave nothing behind, and reloads and SIGTERM under load lose no request.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{
    Echo, Gateway, TempDir, free_port, gateway, get, metric, plugins_dir, service_entry,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: app}}]\n";

/// A folder routing every host on a free port to `upstream_port`, with `vs` as the
/// VirtualService.
fn config(tag: &str, upstream_port: u16, vs: &str) -> (TempDir, u16) {
    let dir = TempDir::new(tag);
    let port = free_port();
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(upstream_port, &[])]),
    );
    dir.write("vs.yaml", vs);
    (dir, port)
}

/// Send `request` on `stream` and read one response head (to the blank line).
async fn exchange(stream: &mut TcpStream, request: &str) -> String {
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 10 s");
    String::from_utf8_lossy(&got).to_string()
}

/// Open file descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_past_the_limit_are_refused_while_open_ones_go_on() {
    let app = Echo::start("app").await;
    let (dir, port) = config("flood", app.port(), VS);
    let gw = Gateway::start(dir.path(), &["--max-connections", "8"]).await;
    let request = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        assert!(exchange(&mut s, request).await.starts_with("HTTP/1.1 200"));
        open.push(s);
    }
    // The flood: accepted by the kernel, closed by the gateway before anything is read.
    for _ in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let head = exchange(&mut s, request).await;
        assert!(!head.contains("HTTP/1.1"), "refused, not served: {head}");
    }
    // The established clients are served on.
    for s in &mut open {
        assert!(exchange(s, request).await.starts_with("HTTP/1.1 200"));
    }
    let text = gw.scrape().await;
    assert_eq!(
        metric(&text, "wasmgate_downstream_connections_refused_total"),
        20.0
    );
    assert_eq!(metric(&text, "wasmgate_downstream_connections_open"), 8.0);
    // A place freed is taken again.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    assert!(exchange(&mut s, request).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_does_not_keep_normal_clients_waiting() {
    let app = Echo::start("app").await;
    let (dir, port) = config("slowloris", app.port(), VS);
    let _gw = Gateway::start(dir.path(), &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..300 {
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
                return;
            };
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ").await;
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(b"a").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..20 {
        let started = Instant::now();
        let r = get(port, "a", &format!("/normal/{i}"), &[])
            .await
            .expect("served");
        assert_eq!(r.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "request {i} waited {:?} behind 300 slow clients",
            started.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
}

/// Read from `s` until the gateway closes it (or 10 s pass): what was read, and when.
async fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "still open after 10 s: {got:?}");
    (got, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_slow_and_idle_connections_are_closed_at_the_head_timeout() {
    let app = Echo::start("app").await;
    let (dir, port) = config("head-timeout", app.port(), VS);
    let _gw = Gateway::start(dir.path(), &["--request-headers-timeout-seconds", "2"]).await;
    // A connection that never sends a byte, and a head that never ends: each closed
    // between the timeout and one tick later.
    let mut silent = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let started = Instant::now();
    let silent = tokio::spawn(async move { read_to_close(&mut silent).await });
    // A byte of HTTP/2's preface, then nothing: the protocol is never known.
    let mut undecided = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    undecided.write_all(b"P").await.expect("write");
    let undecided = tokio::spawn(async move { read_to_close(&mut undecided).await });
    let mut slow = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Slow: a")
        .await
        .expect("write");
    // A keep-alive connection that answers one request, then says nothing.
    let mut idle = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = exchange(&mut idle, "HEAD /once HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let answered = Instant::now();
    let slow = tokio::spawn(async move { read_to_close(&mut slow).await });
    let idle = tokio::spawn(async move { read_to_close(&mut idle).await });
    // A client that keeps sending whole requests is not cut off meanwhile.
    let mut busy = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    while started.elapsed() < Duration::from_secs(4) {
        // HEAD: the answer has no body, so each read starts at the next head.
        let head = exchange(&mut busy, "HEAD /busy HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (got, at) = silent.await.expect("silent reader");
    at_the_timeout("silent connection", at - started);
    assert!(got.is_empty(), "{got:?}");
    let (_, at) = undecided.await.expect("undecided reader");
    at_the_timeout(
        "a connection that sent one byte of HTTP/2's preface",
        at - started,
    );
    let (got, at) = slow.await.expect("slow reader");
    at_the_timeout("slow head", at - started);
    assert!(!String::from_utf8_lossy(&got).contains(" 200 "), "{got:?}");
    let (_, at) = idle.await.expect("idle reader");
    at_the_timeout("idle connection", at - answered);
}

/// `what` was closed `waited` after its 2 s head timeout started: at it, or within the
/// tick the timeout may run late by (and the test's own scheduling).
fn at_the_timeout(what: &str, waited: Duration) {
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "{what} closed after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_goes_quiet_gets_408() {
    let app = Echo::start("app").await;
    let (dir, port) = config("quiet-body", app.port(), VS);
    let gw = Gateway::start(dir.path(), &["--stream-idle-timeout-seconds", "1"]).await;
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let started = Instant::now();
    let head = exchange(
        &mut s,
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let lines = gw.wait_for_access(|l| !l.is_empty()).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("POST a /upload 408 flags=SI")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trickled_body_is_cut_at_the_request_timeout() {
    let app = Echo::start("app").await;
    let (dir, port) = config("trickle-body", app.port(), VS);
    // The idle bound (default 300 s) never fires: a byte comes every 200 ms.
    let gw = Gateway::start(dir.path(), &["--request-timeout-seconds", "2"]).await;
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let started = Instant::now();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        .await
        .expect("head");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(10) {
        if s.write_all(b"x").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let lines = gw
        .wait_for_access(|l| l.iter().any(|x| x.contains("/upload")))
        .await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("POST a /upload 408 flags=-")),
        "{lines:#?}"
    );
}

/// An upstream that switches every request to a byte echo (`101`, then what it reads
/// comes back).
async fn upgrade_echo() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if support::read_head(&mut s).await.is_none() {
                    return;
                }
                let mut buf = [0u8; 1024];
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
                    .await;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_tunnel_is_closed() {
    let (up, _task) = upgrade_echo().await;
    let (dir, port) = config("quiet-tunnel", up, VS);
    let _gw = Gateway::start(dir.path(), &["--tunnel-idle-timeout-seconds", "1"]).await;
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = exchange(
        &mut s,
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Traffic keeps it open past the timeout.
    let mut last = Instant::now();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(b"ping").await.expect("write");
        let mut back = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(&back, b"ping");
        last = Instant::now();
    }
    // Then silence: closed about a second after the last byte.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still open after 10 s");
    assert!(
        last.elapsed() >= Duration::from_millis(900),
        "closed {:?} after the last byte",
        last.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirrors_past_the_limit_are_dropped_and_delays_are_cut() {
    let app = Echo::start("app").await;
    let shadow = Echo::start("shadow").await;
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - match: [{uri: {prefix: /slow}}]\n    fault: {delay: {fixedDelay: 60s, percentage: {value: 100}}}\n    route: [{destination: {host: app}}]\n  - route: [{destination: {host: app}}]\n    mirror: {host: shadow}\n    mirrorPercentage: {value: 100}\n";
    let (dir, port) = config("mirrors", app.port(), vs);
    dir.write(
        "shadow.yaml",
        &service_entry("shadow", "shadow", 80, &[(shadow.port(), &[])]),
    );
    let gw = Gateway::start(dir.path(), &["--max-mirrors", "1", "--max-delay-ms", "300"]).await;
    let slow = [("x-echo-delay-ms", "800")];
    let calls: Vec<_> = (0..3)
        .map(|i| tokio::spawn(async move { get(port, "a", &format!("/m{i}"), &slow).await }))
        .collect();
    for c in calls {
        assert_eq!(c.await.expect("task").expect("reply").status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(shadow.hits(), 1, "one mirror in flight at a time");
    let started = Instant::now();
    let r = get(port, "a", "/slow", &[]).await.expect("reply");
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a 60 s delay cut to 300 ms: {:?}",
        started.elapsed()
    );
    let text = gw.scrape().await;
    assert_eq!(metric(&text, "wasmgate_mirrors_dropped_total"), 2.0);
    assert_eq!(metric(&text, "wasmgate_delays_capped_total"), 1.0);
}

/// An upstream that misbehaves by path: `/reset` closes at once, `/garbage` answers
/// something that is not HTTP, `/midbody` closes halfway through its body, `/stall`
/// never answers.
async fn misbehaving() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = support::read_head(&mut s).await else {
                    return;
                };
                let text = String::from_utf8_lossy(&head).to_string();
                if text.starts_with("GET /reset") {
                    let _ = s.set_zero_linger();
                } else if text.starts_with("GET /garbage") {
                    let _ = s.write_all(b"SURPRISE\r\n\r\n").await;
                } else if text.starts_with("GET /midbody") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
                        .await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                } else if text.starts_with("GET /stall") {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misbehaving_upstreams_get_their_status_and_leave_nothing_open() {
    let (up, _task) = misbehaving().await;
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: app}}]\n    timeout: 500ms\n    retries: {attempts: 0}\n";
    let (dir, port) = config("misbehave", up, vs);
    let gw = Gateway::start(dir.path(), &[]).await;
    let pid = gw.pid();
    // Warm up (the first requests open what stays: the client pool, timers), then count.
    for _ in 0..3 {
        let _ = get(port, "a", "/reset", &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds_before = fds(pid);
    let tasks_before = metric(&gw.scrape().await, "wasmgate_runtime_tasks_alive");
    for round in 0..10 {
        for (path, status) in [("/reset", 502), ("/garbage", 502), ("/stall", 504)] {
            let r = get(port, "a", path, &[]).await.expect("answered");
            assert_eq!(r.status, status, "{path} in round {round}: {}", r.text());
        }
        // The head came through; the client sees the body cut short.
        assert!(get(port, "a", "/midbody", &[]).await.is_err());
    }
    let lines = gw
        .wait_for_access(|l| l.iter().filter(|l| l.contains(" /stall 504 ")).count() >= 10)
        .await;
    for (path, flag) in [
        ("/reset 502", "flags=UR"),
        ("/garbage 502", "flags=UR"),
        ("/stall 504", "flags=UT"),
    ] {
        assert!(
            lines.iter().any(|l| l.contains(path) && l.contains(flag)),
            "{path} {flag}: {lines:#?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_after = fds(pid);
    let tasks_after = metric(&gw.scrape().await, "wasmgate_runtime_tasks_alive");
    assert!(
        fds_after <= fds_before + 2,
        "descriptors {fds_before} -> {fds_after} after 40 failed exchanges"
    );
    assert!(
        tasks_after <= tasks_before + 2.0,
        "tasks {tasks_before} -> {tasks_after} after 40 failed exchanges"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_reloads_under_load_fail_no_request() {
    let app = Echo::start("app").await;
    let plugins = plugins_dir(&[("add-headers.wasm", "add-headers")]);
    let (dir, port) = config("reloads", app.port(), VS);
    let plugin = |n: usize| {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: stamp\nspec:\n  url: add-headers.wasm\n  pluginConfig:\n    responseHeaders: {{x-generation: \"{n}\"}}\n"
        )
    };
    dir.write("plugin.yaml", &plugin(0));
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    match get(port, "a", &format!("/c{c}/{i}"), &[]).await {
                        Ok(r) if r.status == 200 => served.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed: {:?}", other.map(|r| (r.status, r.text())));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for n in 1..=50 {
        // Config and plugin change together: a new pluginConfig is a new binding.
        dir.write("plugin.yaml", &plugin(n));
        let reply = gw.reload().await;
        assert_eq!(reply.status, 200, "reload {n}: {}", reply.text());
    }
    let last = get(port, "a", "/last", &[]).await.expect("served");
    assert_eq!(last.headers["x-generation"], "50");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(served.load(Ordering::Relaxed) > 50, "load ran throughout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_finishes_every_accepted_request() {
    let app = Echo::start("app").await;
    let (dir, port) = config("drain-load", app.port(), VS);
    let mut gw = Gateway::start(dir.path(), &["--drain-seconds", "10"]).await;
    let slow = [("x-echo-delay-ms", "1000")];
    let calls: Vec<_> = (0..20)
        .map(|i| tokio::spawn(async move { get(port, "a", &format!("/d{i}"), &slow).await }))
        .collect();
    // Every request is upstream (accepted, headers read) before the signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.hits() < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.hits(), 20);
    gw.terminate();
    for c in calls {
        let r = c.await.expect("task").expect("answered");
        assert_eq!(r.status, 200);
    }
    assert_eq!(gw.exited(Duration::from_secs(15)).await, Some(0));
}

#[test]
fn bound_flags_out_of_range_are_refused_by_name() {
    for (flag, bad) in [
        ("--max-connections", "0"),
        ("--max-connections-per-listener", "0"),
        ("--stream-idle-timeout-seconds", "0"),
        ("--request-headers-timeout-seconds", "0"),
        ("--request-headers-timeout-seconds", "86401"),
        ("--tunnel-idle-timeout-seconds", "0"),
        ("--max-upstream-connections", "0"),
        ("--request-timeout-seconds", "-1"),
        ("--max-clusters", "many"),
        ("--max-mirrors", "-3"),
        ("--max-delay-ms", "1s"),
    ] {
        let out = std::process::Command::new(support::binary())
            .args(["run", "--config", "/nonexistent", &format!("{flag}={bad}")])
            .output()
            .expect("run wasmgate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}={bad}: {stderr}");
        assert!(stderr.contains(flag), "{flag}={bad}: {stderr}");
        assert!(stderr.contains(bad), "{flag}={bad}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_past_max_upstream_connections_wait_for_one() {
    let app = Echo::start("app").await;
    let (dir, port) = config("upstream-bound", app.port(), VS);
    let _gw = Gateway::start(dir.path(), &["--max-upstream-connections", "1"]).await;
    let slow = [("x-echo-delay-ms", "400")];
    let started = Instant::now();
    let (a, b) = tokio::join!(get(port, "a", "/1", &slow), get(port, "a", "/2", &slow));
    // Both are served (they wait, they are not refused), one after the other.
    assert_eq!(a.expect("first").status, 200);
    assert_eq!(b.expect("second").status, 200);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(780), "{waited:?}");
    assert_eq!(app.hits(), 2);
}
