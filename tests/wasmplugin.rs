//! WasmPlugin fields through the real binary: a plugin downloaded over HTTP from a
//! loopback server, checked against its sha256 and kept on disk; a download that fails
//! refuses the reload and the last good config keeps serving; `match.mode`; and
//! `vmConfig.env` reaching a WASI plugin's environment.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use support::{Gateway, TempDir, free_port, gateway, get, plugin_bytes, plugins_dir};
use tokio::net::TcpListener;

/// A loopback HTTP server: `/p.wasm` serves `module`, `/moved` redirects there, anything
/// else is 404. Counts the requests for `/p.wasm`.
struct ModuleServer {
    port: u16,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ModuleServer {
    async fn start(module: Vec<u8>) -> ModuleServer {
        Self::start_with(module, None).await
    }

    /// Over HTTPS, with `leaf` as the server certificate.
    async fn start_tls(module: Vec<u8>, leaf: &support::tls::Leaf) -> ModuleServer {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            support::tls::certs(&leaf.cert),
            support::tls::key(&leaf.key),
        )
        .expect("server cert");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start_with(module, Some(acceptor)).await
    }

    async fn start_with(module: Vec<u8>, tls: Option<tokio_rustls::TlsAcceptor>) -> ModuleServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let served = Arc::new(AtomicUsize::new(0));
        let module = Bytes::from(module);
        let counter = served.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (module, counter, tls) = (module.clone(), counter.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (module, counter) = (module.clone(), counter.clone());
                        async move {
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            match req.uri().path() {
                                "/p.wasm" => {
                                    counter.fetch_add(1, Ordering::SeqCst);
                                    *resp.body_mut() = Full::new(module);
                                }
                                "/moved" => {
                                    *resp.status_mut() = StatusCode::FOUND;
                                    resp.headers_mut().insert(
                                        http::header::LOCATION,
                                        http::HeaderValue::from_static("/p.wasm"),
                                    );
                                }
                                _ => *resp.status_mut() = StatusCode::NOT_FOUND,
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                });
            }
        });
        ModuleServer { port, served, task }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for ModuleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A VirtualService for every host on Gateway `gw`, with one route nobody reaches: the
/// plugins answer first.
const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: nowhere.example.com}}]\n";

/// A WasmPlugin `name` running add-headers, which answers `path` with `body`.
fn answering(name: &str, url: &str, sha256: &str, path: &str, body: &str, extra: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: {name}\nspec:\n  url: {url}\n  sha256: {sha256}\n  targetRefs:\n  - {{group: networking.istio.io, kind: VirtualService, name: app}}\n{extra}  pluginConfig:\n    answer: {{path: {path}, status: 200, body: {body}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_is_downloaded_checked_and_kept() {
    let module = plugin_bytes("add-headers");
    let sha = hex(&Sha256::digest(&module));
    let server = ModuleServer::start(module).await;
    let port = free_port();
    let dir = TempDir::new("remote");
    let cache = TempDir::new("remote-cache");
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write("vs.yaml", VS);
    let url = format!("http://127.0.0.1:{}/moved", server.port);
    dir.write(
        "plugin.yaml",
        &answering("remote", &url, &sha, "/hello", "downloaded", ""),
    );
    let args = ["--compile-cache", cache.arg()];
    let gw = Gateway::start(dir.path(), &args).await;
    let reply = get(port, "a", "/hello", &[])
        .await
        .expect("gateway answers");
    assert_eq!(reply.status, StatusCode::OK, "{}", gw.log_text());
    assert_eq!(reply.text(), "downloaded");
    assert_eq!(server.served(), 1, "followed the redirect once");

    // A reload that keeps the plugin neither downloads nor compiles it again.
    assert_eq!(gw.reload().await.status, StatusCode::OK);
    assert_eq!(server.served(), 1);

    // A module that does not match its sha256 refuses the reload; the last good
    // config keeps serving.
    let wrong = "0".repeat(64);
    dir.write(
        "plugin.yaml",
        &answering("remote", &url, &wrong, "/hello", "other", ""),
    );
    let refused = gw.reload().await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let text = refused.text();
    assert!(
        text.contains("plugin.yaml: WasmPlugin default/remote: spec.url: downloaded"),
        "{text}"
    );
    assert!(
        text.contains(&format!("has sha256 {sha}, not {wrong}")),
        "{text}"
    );
    // A server that answers 404 does too, with its status.
    let missing = format!("http://127.0.0.1:{}/gone.wasm", server.port);
    dir.write(
        "plugin.yaml",
        &answering("remote", &missing, &wrong, "/hello", "other", ""),
    );
    let refused = gw.reload().await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.text().contains(&format!(
            "spec.url: cannot download {missing}: the server answered 404 Not Found"
        )),
        "{}",
        refused.text()
    );
    // Nobody listening: the connection error.
    let closed = format!("http://127.0.0.1:{}/p.wasm", free_port());
    dir.write(
        "plugin.yaml",
        &answering("remote", &closed, &wrong, "/hello", "other", ""),
    );
    let refused = gw.reload().await;
    assert!(
        refused.text().contains(&format!(
            "spec.url: cannot download {closed}: connecting to"
        )),
        "{}",
        refused.text()
    );
    let reply = get(port, "a", "/hello", &[]).await.expect("still serving");
    assert_eq!(reply.text(), "downloaded", "the last good config serves");
    drop(gw);

    // A restart with the same cache folder takes the module from disk.
    dir.write(
        "plugin.yaml",
        &answering("remote", &url, &sha, "/hello", "from-disk", ""),
    );
    drop(server);
    let gw = Gateway::start(dir.path(), &args).await;
    let reply = get(port, "a", "/hello", &[])
        .await
        .expect("gateway answers");
    assert_eq!(reply.text(), "from-disk", "{}", gw.log_text());
}

/// Without a sha256 an http(s) url is refused at start, naming file, resource and field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpinned_url_is_refused() {
    let dir = TempDir::new("unpinned");
    let port = free_port();
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write("vs.yaml", VS);
    dir.write(
        "plugin.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: unpinned\nspec:\n  url: http://127.0.0.1:9/p.wasm\n",
    );
    let Err(log) = Gateway::try_start(dir.path(), &[]).await else {
        panic!("started without a sha256");
    };
    assert!(
        log.contains("plugin.yaml:5: WasmPlugin default/unpinned: spec.sha256: sha256 is required with an http:// url"),
        "{log}"
    );
}

/// `match.mode`: wasmgate is a gateway, a CLIENT workload in Istio's terms. A plugin
/// whose only entry selects SERVER never runs; CLIENT and CLIENT_AND_SERVER run, on the
/// ports they name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_mode_on_a_gateway() {
    let module = plugin_bytes("add-headers");
    let sha = hex(&Sha256::digest(&module));
    let plugins = plugins_dir(&[("add-headers.wasm", "add-headers")]);
    let dir = TempDir::new("modes");
    let port = free_port();
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write("vs.yaml", VS);
    let other = port.wrapping_add(1);
    dir.write(
        "plugins.yaml",
        &[
            answering(
                "server",
                "add-headers.wasm",
                &sha,
                "/server",
                "ran",
                "  match: [{mode: SERVER}]\n",
            ),
            answering(
                "client",
                "add-headers.wasm",
                &sha,
                "/client",
                "ran",
                &format!("  match: [{{mode: CLIENT, ports: [{{number: {port}}}]}}]\n"),
            ),
            answering(
                "both",
                "add-headers.wasm",
                &sha,
                "/both",
                "ran",
                "  match: [{mode: CLIENT_AND_SERVER}]\n",
            ),
            answering(
                "elsewhere",
                "add-headers.wasm",
                &sha,
                "/elsewhere",
                "ran",
                &format!("  match: [{{mode: CLIENT, ports: [{{number: {other}}}]}}]\n"),
            ),
        ]
        .join("---\n"),
    );
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    for (path, runs) in [
        ("/server", false),
        ("/client", true),
        ("/both", true),
        ("/elsewhere", false),
    ] {
        let reply = get(port, "a", path, &[]).await.expect("gateway answers");
        assert_eq!(
            reply.text() == "ran",
            runs,
            "{path}: {reply:?}\n{}",
            gw.log_text()
        );
    }
    assert!(
        gw.log_text()
            .contains("WasmPlugin default/server: spec.match: every entry selects mode SERVER"),
        "the warning names it"
    );
}

/// `vmConfig.env` is the WASI environment of the plugin, and all of it: literal values,
/// and `valueFrom: HOST` for the names `--plugin-host-env` allows (any other is refused
/// at start, naming the field).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_reaches_a_wasi_plugin() {
    let plugins = plugins_dir(&[("wasi-probe.wasm", "wasi-probe")]);
    let dir = TempDir::new("env");
    let port = free_port();
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write("vs.yaml", VS);
    dir.write(
        "plugin.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: probe\nspec:\n  url: wasi-probe.wasm\n  vmConfig:\n    env:\n    - {name: MODE, value: strict}\n    - {name: WASMGATE_TEST_TOKEN, valueFrom: HOST}\n",
    );
    // A plugin without WASI cannot read an environment: a warning says so.
    dir.write(
        "plain.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: plain\nspec:\n  url: add-headers.wasm\n  vmConfig: {env: [{name: MODE, value: strict}]}\n",
    );
    std::fs::write(
        plugins.path().join("add-headers.wasm"),
        plugin_bytes("add-headers"),
    )
    .expect("copy plugin");
    let host_env = [
        ("WASMGATE_TEST_TOKEN", "s3cret"),
        ("WASMGATE_TEST_OTHER", "no"),
    ];
    let args = [
        "--plugins",
        plugins.arg(),
        "--plugin-host-env",
        "WASMGATE_TEST_TOKEN",
    ];
    let gw = Gateway::start_with_env(dir.path(), &args, &host_env).await;
    let reply = get(port, "a", "/env", &[]).await.expect("gateway answers");
    assert_eq!(
        reply.text(),
        "MODE=strict\nWASMGATE_TEST_TOKEN=s3cret\n",
        "{}",
        gw.log_text()
    );
    assert!(
        gw.log_text().contains(
            "plain.yaml: WasmPlugin default/plain: spec.vmConfig.env: the plugin imports no WASI"
        ),
        "{}",
        gw.log_text()
    );
    drop(gw);

    let refused =
        Gateway::try_start_with_env(dir.path(), &["--plugins", plugins.arg()], &host_env).await;
    let Err(log) = refused else {
        panic!("started though --plugin-host-env does not allow the variable");
    };
    assert!(
        log.contains("plugin.yaml:10: WasmPlugin default/probe: spec.vmConfig.env[1].valueFrom: HOST: wasmgate passes its own environment variable \"WASMGATE_TEST_TOKEN\" to plugins only when it runs with --plugin-host-env WASMGATE_TEST_TOKEN"),
        "{log}"
    );
}

/// Over HTTPS the server is verified against the system's trusted roots (`SSL_CERT_FILE`
/// names the bundle here): a server from an unknown CA is refused, one the bundle trusts
/// serves the module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_is_downloaded_over_https() {
    let ca = support::tls::Ca::new("plugins-ca");
    let module = plugin_bytes("add-headers");
    let sha = hex(&Sha256::digest(&module));
    let server = ModuleServer::start_tls(module, &ca.server(&["127.0.0.1"])).await;
    let dir = TempDir::new("https");
    let port = free_port();
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write("vs.yaml", VS);
    let url = format!("https://127.0.0.1:{}/p.wasm", server.port);
    dir.write(
        "plugin.yaml",
        &answering("secure", &url, &sha, "/hello", "over-tls", ""),
    );
    let bundles = TempDir::new("https-roots");
    let other = bundles.write("other.pem", &support::tls::Ca::new("other-ca").pem);
    let trusted = bundles.write("trusted.pem", &ca.pem);
    let args = ["--compile-cache", "off"];

    let untrusted = [("SSL_CERT_FILE", other.to_str().expect("utf-8"))];
    let Err(log) = Gateway::try_start_with_env(dir.path(), &args, &untrusted).await else {
        panic!("downloaded from a server no trusted CA issued");
    };
    assert!(
        log.contains(&format!(
            "WasmPlugin default/secure: spec.url: cannot download {url}: TLS with 127.0.0.1:{}",
            server.port
        )),
        "{log}"
    );
    assert_eq!(server.served(), 0);

    let roots = [("SSL_CERT_FILE", trusted.to_str().expect("utf-8"))];
    let gw = Gateway::start_with_env(dir.path(), &args, &roots).await;
    let reply = get(port, "a", "/hello", &[])
        .await
        .expect("gateway answers");
    assert_eq!(reply.text(), "over-tls", "{}", gw.log_text());
    assert_eq!(server.served(), 1);
}
