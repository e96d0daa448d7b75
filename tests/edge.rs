//! The request edge with the real binary, tried as a client would (raw bytes where a
//! client library would refuse to send them): path normalization before routing and
//! plugins, `--path-normalization` modes, 400s for ambiguous requests (two Hosts, a Host
//! against an absolute-form target, Content-Length with Transfer-Encoding, bytes no
//! header may hold), upgrades (only websocket, or `--allow-upgrade`), route response
//! headers on local replies, per-try timeouts retried, and SIGHUP reloads that fail.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::{Echo, Gateway, TempDir, free_port, gateway, get, plugins_dir, service_entry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Write `bytes`, read until the gateway closes (or 5 s): the whole answer as text.
async fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET {path}` as raw bytes; (status line, the echo upstream's JSON if it answered).
async fn raw_get(port: u16, path: &str) -> (String, Option<serde_json::Value>) {
    let reply = raw(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    let status = reply.lines().next().unwrap_or_default().to_string();
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, serde_json::from_str(body).ok())
}

fn vs(name: &str, http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n{http}"
    )
}

/// A gateway on a fresh port routing everything to `app`; (config folder, port).
fn catch_all(app: &Echo) -> (TempDir, u16) {
    let port = free_port();
    let dir = TempDir::new("edge");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        &vs("app", "  - route: [{destination: {host: app}}]\n"),
    );
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    (dir, port)
}

const PREFIX_ROUTES: &str = "  - match: [{uri: {prefix: /admin}}]\n    route: [{destination: {host: admin}}]\n  - match: [{uri: {prefix: /public}}]\n    route: [{destination: {host: public}}]\n  - match: [{uri: {prefix: /hello}}]\n    route: [{destination: {host: hello}}]\n";

/// `/x/../hello` routes as `/hello` and the upstream gets `/hello` (query untouched);
/// `/public/../admin` (however its dots are spelled) takes the `/admin` route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_removed_before_routing() {
    let admin = Echo::start("admin").await;
    let public = Echo::start("public").await;
    let hello = Echo::start("hello").await;
    let port = free_port();
    let dir = TempDir::new("dots");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write("vs.yaml", &vs("app", PREFIX_ROUTES));
    dir.write(
        "se.yaml",
        &format!(
            "{}---\n{}---\n{}",
            service_entry("admin", "admin", 80, &[(admin.port(), &[])]),
            service_entry("public", "public", 80, &[(public.port(), &[])]),
            service_entry("hello", "hello", 80, &[(hello.port(), &[])]),
        ),
    );
    let gw = Gateway::start(dir.path(), &[]).await;

    let (status, echo) = raw_get(port, "/x/../hello").await;
    assert!(status.contains(" 200 "), "{status}\n{}", gw.log_text());
    let echo = echo.expect("echo JSON");
    assert_eq!(echo["upstream"], "hello");
    assert_eq!(echo["path"], "/hello");

    let (_, echo) = raw_get(port, "/x/./../hello/./y?q=/../z&r=%2e%2e").await;
    assert_eq!(
        echo.expect("echo")["path"],
        "/hello/y?q=/../z&r=%2e%2e",
        "query untouched"
    );

    for path in [
        "/public/../admin",
        "/public/%2e%2E/admin",
        "/public/./../../admin/",
        "/public/..\\admin",
        "/%61dmin",
    ] {
        let (status, echo) = raw_get(port, path).await;
        let echo = echo.unwrap_or_else(|| panic!("{path}: {status}"));
        assert_eq!(echo["upstream"], "admin", "{path}");
        assert!(
            echo["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/admin")),
            "{path}: {echo}"
        );
    }
    assert_eq!(public.hits(), 0, "the /public route never saw them");

    let lines = gw
        .wait_for_access(|l| l.iter().any(|l| l.contains("raw_path=/x/../hello")))
        .await;
    let line = lines
        .iter()
        .find(|l| l.contains("raw_path=/x/../hello"))
        .unwrap_or_else(|| panic!("no access line with the raw path:\n{lines:#?}"));
    assert!(line.contains("GET a /hello 200"), "{line}");
}

/// A plugin guarding `/admin` (here: answering it with 401) sees `/admin` however the
/// client spells it, before the router or anything else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_guarding_admin_sees_the_normalized_path() {
    let app = Echo::start("app").await;
    let (dir, port) = catch_all(&app);
    dir.write(
        "plugin.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: guard\nspec:\n  url: add-headers.wasm\n  phase: AUTHZ\n  targetRefs:\n  - {group: networking.istio.io, kind: VirtualService, name: app}\n  pluginConfig:\n    answer: {path: /admin, status: 401, body: denied}\n",
    );
    let plugins = plugins_dir(&[("add-headers.wasm", "add-headers")]);
    let _gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;

    for path in [
        "/admin",
        "/public/../admin",
        "/public/%2E%2E/admin",
        "/%61dmin",
    ] {
        let (status, _) = raw_get(port, path).await;
        assert!(status.contains(" 401 "), "{path}: {status}");
    }
    let (status, _) = raw_get(port, "/public/admin").await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(app.hits(), 1, "only /public/admin reached the upstream");
}

/// Each `--path-normalization` mode, on the inputs that tell them apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_normalization_modes() {
    let app = Echo::start("app").await;
    let cases: [(&str, &[(&str, &str)]); 4] = [
        (
            "none",
            &[("/a/../b", "/a/../b"), ("/a//b", "/a//b"), ("/%61", "/%61")],
        ),
        (
            "base",
            &[
                ("/a/../b", "/b"),
                ("/a//b", "/a//b"),
                ("/%61", "/a"),
                ("/a%2Fb", "/a%2Fb"),
            ],
        ),
        (
            "merge-slashes",
            &[
                ("/a/../b", "/b"),
                ("//a///b/", "/a/b/"),
                ("/a%2F%2fb", "/a%2F%2fb"),
            ],
        ),
        (
            "decode-and-merge-slashes",
            &[
                ("/a%2F%2fb", "/a/b"),
                ("/a%5Cb", "/a/b"),
                ("/x%2F..%2Fb", "/b"),
                ("//a//b", "/a/b"),
            ],
        ),
    ];
    for (mode, inputs) in cases {
        let (dir, port) = catch_all(&app);
        let gw = Gateway::start(dir.path(), &["--path-normalization", mode]).await;
        for (sent, seen) in inputs {
            let (status, echo) = raw_get(port, sent).await;
            let echo = echo.unwrap_or_else(|| panic!("{mode} {sent}: {status}\n{}", gw.log_text()));
            assert_eq!(echo["path"], *seen, "{mode}: {sent}");
        }
        // An encoded NUL is no path (except when nothing is normalized).
        let (status, _) = raw_get(port, "/a%00b").await;
        let expected = if mode == "none" { " 200 " } else { " 400 " };
        assert!(status.contains(expected), "{mode}: {status}");
    }
}

/// Assert `reply` is a 400 and the gateway logged a `DPE` access line containing
/// `detail`.
async fn assert_refused(gw: &Gateway, reply: &str, detail: &str) {
    assert!(
        reply.starts_with("HTTP/1.1 400"),
        "{reply}\n{}",
        gw.log_text()
    );
    let lines = gw
        .wait_for_access(|l| l.iter().any(|l| l.contains("DPE") && l.contains(detail)))
        .await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("DPE") && l.contains(detail)),
        "no DPE line with {detail:?}:\n{lines:#?}"
    );
}

/// RFC 9112 3.2: two Host lines are a 400, whatever their values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_host_is_400() {
    let app = Echo::start("app").await;
    let (dir, port) = catch_all(&app);
    let gw = Gateway::start(dir.path(), &[]).await;
    let reply = raw(
        port,
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_refused(&gw, &reply, "details=duplicate_Host").await;
    let reply = raw(
        port,
        b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(app.hits(), 0);
}

/// An absolute-form target and a Host naming another authority: 400, not "whichever
/// wins".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_differing_from_absolute_form_is_400() {
    let app = Echo::start("app").await;
    let (dir, port) = catch_all(&app);
    let gw = Gateway::start(dir.path(), &[]).await;
    let reply = raw(
        port,
        b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_refused(&gw, &reply, "details=Host_differs_from_the_request_target").await;
    assert_eq!(app.hits(), 0);
    // The same authority (default port spelled out, other case) is fine.
    let reply = raw(
        port,
        b"GET http://a.example/x HTTP/1.1\r\nHost: A.example:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// `Content-Length` with `Transfer-Encoding` (either order, and after a good chunked
/// request on the same connection): 400 and the upstream never sees it. hyper alone
/// would serve it by its chunked framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_400() {
    let app = Echo::start("app").await;
    let (dir, port) = catch_all(&app);
    let gw = Gateway::start(dir.path(), &[]).await;
    let reply = raw(
        port,
        b"POST /cl-te HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_refused(&gw, &reply, "details=Content-Length_with_Transfer-Encoding").await;
    assert!(!reply.contains("HTTP/1.1 200"), "nothing smuggled: {reply}");
    let reply = raw(
        port,
        b"POST /te-cl HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(app.hits(), 0);

    // Keep-alive: a good chunked request, then the bad one, on one connection.
    let reply = raw(
        port,
        b"POST /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nPOST /bad HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    let first = reply.find("HTTP/1.1 200").expect("first answered 200");
    let second = reply.find("HTTP/1.1 400").expect("second refused");
    assert!(first < second, "{reply}");
    assert_eq!(app.hits(), 1);
}

/// Header names and values with bytes HTTP forbids: hyper's parser answers 400 before
/// the gateway's service runs; the gateway still writes a `DPE` access line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_header_bytes_are_400() {
    let app = Echo::start("app").await;
    let (dir, port) = catch_all(&app);
    let gw = Gateway::start(dir.path(), &[]).await;
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nx-bad(name): x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nx-ctl: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nx-del: a\x7fb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nx-nul: a\x00b\r\n\r\n",
        b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let reply = raw(port, bad).await;
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "{:?}: {reply}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_refused(&gw, "HTTP/1.1 400", "- - - 400 flags=DPE").await;
    // A Host that is no authority is the gateway's own 400.
    let reply = raw(
        port,
        b"GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_refused(&gw, &reply, "details=invalid_Host").await;
    assert_eq!(app.hits(), 0);
    let r = get(port, "a", "/", &[]).await.expect("still serving");
    assert_eq!(r.status, StatusCode::OK);
}

/// A raw HTTP/1.1 upstream that answers any `Upgrade` with 101 and then echoes bytes,
/// and anything else with 200 "plain"; it keeps every request head it got.
async fn upgrading_upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Some(head) = read_head(&mut s).await else {
                        return;
                    };
                    // `/always-101` switches whatever the request says.
                    let upgrade = head
                        .lines()
                        .find_map(|l| l.strip_prefix("upgrade: "))
                        .map(str::to_string)
                        .or_else(|| head.contains(" /always-101 ").then(|| "h2c".to_string()));
                    if let Ok(mut seen) = seen.lock() {
                        seen.push(head);
                    }
                    if let Some(protocol) = upgrade {
                        let answer = format!(
                            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        let mut buf = [0u8; 256];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                    let answer = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain";
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, heads)
}

/// A request head (lowercased), or `None` when the peer closed.
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).to_lowercase())
}

/// Read one response head from `s`.
async fn response_head(s: &mut TcpStream) -> String {
    tokio::time::timeout(Duration::from_secs(5), read_head(s))
        .await
        .expect("response in time")
        .expect("a response head")
}

fn upgrade_config(upstream: u16) -> (TempDir, u16) {
    let port = free_port();
    let dir = TempDir::new("upgrade");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        &vs("app", "  - route: [{destination: {host: up}}]\n"),
    );
    dir.write(
        "se.yaml",
        &service_entry("up", "up", 80, &[(upstream, &[])]),
    );
    (dir, port)
}

/// `Upgrade: h2c` is not tunnelled: the upstream (which would switch) never sees
/// `Upgrade` or `HTTP2-Settings`, and the client gets the plain answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_is_not_tunnelled() {
    let (upstream, heads) = upgrading_upstream().await;
    let (dir, port) = upgrade_config(upstream);
    let gw = Gateway::start(dir.path(), &[]).await;
    let reply = raw(
        port,
        b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "{reply}\n{}",
        gw.log_text()
    );
    assert!(reply.ends_with("plain"), "{reply}");
    let heads = heads.lock().expect("heads").clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(!heads[0].contains("upgrade"), "{}", heads[0]);
    assert!(!heads[0].contains("http2-settings"), "{}", heads[0]);

    // An upstream that switches anyway: 502, the client's connection stays HTTP.
    let reply = raw(
        port,
        b"GET /always-101 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, close\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
}

/// `Upgrade: websocket` is still switched through and bytes flow both ways; another
/// protocol is only with `--allow-upgrade`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled() {
    let (upstream, heads) = upgrading_upstream().await;
    let (dir, port) = upgrade_config(upstream);
    let gw = Gateway::start(dir.path(), &["--allow-upgrade", "echo"]).await;
    for protocol in ["websocket", "echo"] {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(
            format!("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let head = response_head(&mut s).await;
        assert!(
            head.starts_with("http/1.1 101"),
            "{head}\n{}",
            gw.log_text()
        );
        assert!(head.contains(&format!("upgrade: {protocol}")), "{head}");
        s.write_all(b"ping through").await.expect("write");
        let mut echoed = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(&echoed, b"ping through");
    }
    let heads = heads.lock().expect("heads").clone();
    assert!(heads.iter().all(|h| h.contains("upgrade: ")), "{heads:?}");

    // Without the flag, `echo` is proxied as a plain request.
    let (dir, port) = upgrade_config(upstream);
    let _gw = Gateway::start(dir.path(), &[]).await;
    let reply = raw(
        port,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, close\r\nUpgrade: echo\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// A raw upstream whose every answer carries two `content-type` lines.
async fn two_types_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                while read_head(&mut s).await.is_some() {
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: text/one\r\n\
                                  content-type: text/two\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// The route's `headers.response` reach direct responses, redirects and aborts, as in
/// Envoy; no response a header operation touched has two content types, and one no
/// operation touched goes on as the upstream sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_response_headers_apply_to_local_replies() {
    let app = Echo::start("app").await;
    let two = two_types_upstream().await;
    let port = free_port();
    let dir = TempDir::new("replies");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        &vs(
            "app",
            r#"  - match: [{uri: {exact: /direct}}]
    directResponse: {status: 200, body: {string: '{"ok":true}'}}
    headers:
      response:
        set: {content-type: application/json, x-route: direct}
  - match: [{uri: {exact: /direct-plain}}]
    directResponse: {status: 503, body: {string: down}}
    headers:
      response:
        add: {x-route: plain}
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new}
    headers:
      response:
        set: {x-route: redirect}
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: app}}]
    headers:
      response:
        set: {x-route: abort}
  - match: [{uri: {exact: /two-as-sent}}]
    route: [{destination: {host: two}}]
  - match: [{uri: {exact: /two-edited}}]
    route: [{destination: {host: two}}]
    headers:
      response:
        set: {x-route: edited}
  - route:
    - destination: {host: app}
      headers:
        response:
          add: {content-type: application/x-second}
    headers:
      response:
        set: {content-type: application/x-first, x-route: forward}
"#,
        ),
    );
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    dir.write(
        "se-two.yaml",
        &service_entry("two", "two", 80, &[(two, &[])]),
    );
    let gw = Gateway::start(dir.path(), &[]).await;

    let types = |r: &support::Reply| -> Vec<String> {
        r.headers
            .get_all("content-type")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let r = get(port, "a", "/direct", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK, "{}", gw.log_text());
    assert_eq!(r.text(), r#"{"ok":true}"#);
    assert_eq!(r.headers["x-route"], "direct");
    assert_eq!(types(&r), ["application/json"]);

    let r = get(port, "a", "/direct-plain", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["x-route"], "plain");
    assert_eq!(types(&r), ["text/plain"]);

    let r = get(port, "a", "/old/x", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.headers["location"], "http://a/new");
    assert_eq!(r.headers["x-route"], "redirect");
    assert!(types(&r).is_empty());

    let r = get(port, "a", "/abort", &[]).await.expect("request");
    assert_eq!(r.status.as_u16(), 418);
    assert_eq!(r.headers["x-route"], "abort");
    assert_eq!(types(&r), ["text/plain"]);

    let r = get(port, "a", "/forwarded", &[]).await.expect("request");
    assert_eq!(r.upstream().as_deref(), Some("app"));
    assert_eq!(r.headers["x-route"], "forward");
    assert_eq!(types(&r), ["application/x-second"], "one content type");
    assert_eq!(app.hits(), 1);

    let r = get(port, "a", "/two-as-sent", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK, "{}", gw.log_text());
    assert_eq!(types(&r), ["text/one", "text/two"], "no operation: as sent");
    let r = get(port, "a", "/two-edited", &[]).await.expect("request");
    assert_eq!(r.headers["x-route"], "edited");
    assert_eq!(types(&r), ["text/two"], "an operation ran: the last one");
}

/// A raw upstream whose first request for each path stalls (the connection held open,
/// no answer) and whose later ones get `200 attempt N`.
async fn stalling_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut s).await {
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    let n = {
                        let Ok(mut seen) = seen.lock() else { return };
                        let n = seen.entry(path).or_default();
                        *n += 1;
                        *n
                    };
                    if n == 1 {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let body = format!("attempt {n}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A per-try timeout is retried under `5xx`, `gateway-error` and `reset` (the second
/// attempt answers); under `connect-failure` alone it is a 504 after one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_is_retried() {
    let upstream = stalling_upstream().await;
    let port = free_port();
    let dir = TempDir::new("per-try");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    let mut routes = String::new();
    for on in ["5xx", "gateway-error", "reset", "connect-failure"] {
        routes.push_str(&format!(
            "  - match: [{{uri: {{prefix: /{on}}}}}]\n    route: [{{destination: {{host: slow}}}}]\n    retries: {{attempts: 2, perTryTimeout: 300ms, retryOn: {on}}}\n"
        ));
    }
    dir.write("vs.yaml", &vs("app", &routes));
    dir.write(
        "se.yaml",
        &service_entry("slow", "slow", 80, &[(upstream, &[])]),
    );
    let gw = Gateway::start(dir.path(), &[]).await;

    for on in ["5xx", "gateway-error", "reset"] {
        let started = Instant::now();
        let r = get(port, "a", &format!("/{on}"), &[])
            .await
            .expect("request");
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{on}: {}\n{}",
            r.text(),
            gw.log_text()
        );
        assert_eq!(r.text(), "attempt 2", "{on}");
        assert!(started.elapsed() >= Duration::from_millis(300), "{on}");
    }
    let r = get(port, "a", "/connect-failure", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    assert_eq!(r.text(), "upstream request timeout");

    let lines = gw
        .wait_for_access(|l| l.iter().filter(|l| l.contains(" /")).count() >= 4)
        .await;
    for on in ["5xx", "gateway-error", "reset"] {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!(" /{on} ")))
            .unwrap_or_else(|| panic!("no line for {on}: {lines:#?}"));
        assert!(
            line.contains(" 200 ") && line.contains("attempts=2"),
            "{line}"
        );
    }
    let line = lines
        .iter()
        .find(|l| l.contains(" /connect-failure "))
        .expect("connect-failure line");
    assert!(
        line.contains(" 504 ") && line.contains("flags=UT") && line.contains("attempts=1"),
        "{line}"
    );
}

/// `wasmgate run` started here (not through `support`) so the test can signal it.
struct Signalled {
    child: Child,
    log: std::path::PathBuf,
    _dir: TempDir,
}

impl Signalled {
    async fn start(config: &std::path::Path) -> Signalled {
        let dir = TempDir::new("hup-log");
        let log = dir.path().join("wasmgate.log");
        let admin = free_port();
        let child = Command::new(support::binary())
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--listen-address", "127.0.0.1"])
            .env("WASMGATE_LOG", "info")
            .env(
                "XDG_CACHE_HOME",
                concat!(env!("CARGO_TARGET_TMPDIR"), "/xdg-cache"),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn wasmgate");
        let mut me = Signalled {
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(_)) = me.child.try_wait() {
                panic!("wasmgate exited:\n{}", me.log_text());
            }
            if get(admin, "admin", "/healthz/ready", &[])
                .await
                .is_ok_and(|r| r.status == StatusCode::OK)
            {
                return me;
            }
            assert!(Instant::now() < deadline, "not ready:\n{}", me.log_text());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Wait up to 10 s for a log line containing every one of `parts`.
    async fn logged(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {parts:?} in:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Signalled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A SIGHUP reload that fails says why in the log (a bad file, a port it cannot bind),
/// and the last good configuration keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_bad_config_logs_why() {
    let app = Echo::start("app").await;
    let (dir, port) = catch_all(&app);
    let gw = Signalled::start(dir.path()).await;

    dir.write(
        "vs.yaml",
        &vs(
            "app",
            "  - route: [{destination: {host: app}, wieght: 5}]\n",
        ),
    );
    gw.hangup();
    let line = gw.logged(&["reload rejected", "vs.yaml"]).await;
    assert!(line.contains("wieght"), "{line}");
    assert!(line.contains("ERROR"), "{line}");
    gw.logged(&["SIGHUP: reload failed with 1 error"]).await;
    let r = get(port, "a", "/", &[]).await.expect("still serving");
    assert_eq!(r.status, StatusCode::OK);

    // A new listener on a port someone else holds: the bind error is the reason.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_port = busy.local_addr().expect("addr").port();
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw, gw2]\n  http:\n  - route: [{destination: {host: app}}]\n",
    );
    dir.write("gw2.yaml", &gateway("gw2", busy_port, &["*"]));
    gw.hangup();
    let line = gw
        .logged(&["reload rejected", &format!("127.0.0.1:{busy_port}")])
        .await;
    assert!(line.contains("cannot listen"), "{line}");
    let r = get(port, "a", "/", &[]).await.expect("still serving");
    assert_eq!(r.status, StatusCode::OK);
    drop(busy);
}

/// What a raw HTTP/2 upstream does with the first request it gets (later ones: 200).
#[derive(Clone, Copy)]
enum First {
    /// RST_STREAM with REFUSED_STREAM.
    Refuse,
    /// A trailers-only gRPC answer: 200 with `grpc-status: 1` (CANCELLED).
    Cancel,
}

/// A minimal HTTP/2 (prior knowledge) upstream written frame by frame, so it can refuse
/// a stream: hyper's own server never does on purpose.
async fn raw_h2_upstream(first: First) -> u16 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let requests = Arc::new(AtomicUsize::new(0));
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| -> Vec<u8> {
        let len = payload.len().to_be_bytes();
        let mut f = vec![len[5], len[6], len[7], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if s.read_exact(&mut preface).await.is_err()
                    || s.write_all(&frame(4, 0, 0, &[])).await.is_err()
                {
                    return;
                }
                loop {
                    let mut head = [0u8; 9];
                    if s.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = usize::from(head[0]) << 16
                        | usize::from(head[1]) << 8
                        | usize::from(head[2]);
                    let (kind, flags) = (head[3], head[4]);
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    let mut payload = vec![0u8; len];
                    if s.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    let reply = match (kind, flags & 1) {
                        (4, 0) => frame(4, 1, 0, &[]),      // SETTINGS -> ACK
                        (6, 0) => frame(6, 1, 0, &payload), // PING -> ACK
                        (1, _) => {
                            // HEADERS: a request. HPACK 0x88 is `:status: 200`.
                            let n = requests.fetch_add(1, Ordering::SeqCst);
                            match (n, first) {
                                (0, First::Refuse) => frame(3, 0, stream, &7u32.to_be_bytes()),
                                (0, First::Cancel) => {
                                    let mut block = vec![0x88, 0x00, 11];
                                    block.extend_from_slice(b"grpc-status");
                                    block.extend_from_slice(&[1, b'1']);
                                    frame(1, 0x5, stream, &block)
                                }
                                _ => frame(1, 0x5, stream, &[0x88]),
                            }
                        }
                        _ => continue,
                    };
                    if s.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// An HTTP/2 upstream's REFUSED_STREAM is retried under `refused-stream`; a trailers-only
/// `grpc-status: 1` under `cancelled` (Envoy's definition). Neither is under
/// `connect-failure` alone: REFUSED_STREAM is then a 502 `UR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_stream_and_cancelled_are_retried() {
    let refusing = raw_h2_upstream(First::Refuse).await;
    let cancelling = raw_h2_upstream(First::Cancel).await;
    let refusing_once_more = raw_h2_upstream(First::Refuse).await;
    let port = free_port();
    let dir = TempDir::new("refused");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write(
        "vs.yaml",
        &vs(
            "app",
            "  - match: [{uri: {prefix: /refused}}]\n    route: [{destination: {host: refusing}}]\n    retries: {attempts: 2, retryOn: refused-stream}\n  - match: [{uri: {prefix: /cancelled}}]\n    route: [{destination: {host: cancelling}}]\n    retries: {attempts: 2, retryOn: cancelled}\n  - match: [{uri: {prefix: /not-retried}}]\n    route: [{destination: {host: refusing2}}]\n    retries: {attempts: 2, retryOn: connect-failure}\n",
        ),
    );
    let entry = |name: &str, port: u16| {
        service_entry(name, name, 80, &[(port, &[])]).replace("protocol: HTTP", "protocol: HTTP2")
    };
    dir.write(
        "se.yaml",
        &format!(
            "{}---\n{}---\n{}",
            entry("refusing", refusing),
            entry("cancelling", cancelling),
            entry("refusing2", refusing_once_more)
        ),
    );
    let gw = Gateway::start(dir.path(), &[]).await;

    let r = get(port, "a", "/refused", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.text(), gw.log_text());
    let r = get(port, "a", "/cancelled", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.get("grpc-status").is_none(), "the retry answered");
    let r = get(port, "a", "/not-retried", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("refused stream"), "{}", r.text());

    let lines = gw
        .wait_for_access(|l| l.iter().filter(|l| l.contains(" /")).count() >= 3)
        .await;
    let line = |path: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!(" {path} ")))
            .unwrap_or_else(|| panic!("no line for {path}: {lines:#?}"))
            .clone()
    };
    assert!(
        line("/refused").contains("attempts=2"),
        "{}",
        line("/refused")
    );
    assert!(
        line("/cancelled").contains("attempts=2"),
        "{}",
        line("/cancelled")
    );
    let l = line("/not-retried");
    assert!(l.contains("flags=UR") && l.contains("attempts=1"), "{l}");
}
