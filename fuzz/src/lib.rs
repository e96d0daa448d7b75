//! What the fuzz targets share: a real gateway started in this process (so that
//! libFuzzer sees the coverage of the code that serves a request), an upstream that
//! answers every request, and a panic hook that turns a panic on any thread (a tokio
//! task's included) into a crash libFuzzer records.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser as _;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The gateway every request-side target talks to.
pub struct Harness {
    pub runtime: tokio::runtime::Runtime,
    /// The Gateway server's port on 127.0.0.1.
    pub port: u16,
    _gateway: Arc<wasmgate::gateway::Gateway>,
}

/// libFuzzer's `main` is C's: unlike a Rust binary's, it leaves SIGPIPE deadly, and a
/// write to a connection the gateway closed would kill the run.
fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to "ignore" at start, before any thread
    // of this harness is spawned; no handler runs.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Panics anywhere abort the process: libFuzzer saves the input that did it.
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn folder(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmgate-fuzz-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp folder");
    dir
}

/// The gateway's config (`fuzz/gateway.yaml`, shared with tests/fuzz_regressions.rs).
fn config(port: u16, upstream: u16) -> String {
    include_str!("../gateway.yaml")
        .replace("UPSTREAM", &upstream.to_string())
        .replace("PORT", &port.to_string())
}

/// An upstream that answers 200 with the size of what it was sent.
async fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("upstream bind");
    let port = listener.local_addr().expect("upstream address").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let size = req
                        .into_body()
                        .collect()
                        .await
                        .map_or(0, |b| b.to_bytes().len());
                    Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(format!(
                        "got {size}\n"
                    )))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    port
}

/// The gateway, started once per process.
pub fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        ignore_sigpipe();
        abort_on_panic();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let port = free_port();
        let gateway = runtime.block_on(async {
            let up = upstream().await;
            let config_dir = folder("config");
            std::fs::write(config_dir.join("config.yaml"), config(port, up)).expect("config");
            let plugins = folder("plugins");
            let built = PathBuf::from(wasmgate::build_plugin::TEST_PLUGINS).join("misbehave.wasm");
            std::fs::copy(&built, plugins.join("misbehave.wasm"))
                .unwrap_or_else(|e| panic!("{}: {e}", built.display()));
            let cli = wasmgate::cli::Cli::parse_from([
                "wasmgate".as_ref(),
                "run".as_ref(),
                "--config".as_ref(),
                config_dir.as_os_str(),
                "--plugins".as_ref(),
                plugins.as_os_str(),
                "--listen-address".as_ref(),
                "127.0.0.1".as_ref(),
                "--access-log".as_ref(),
                "off".as_ref(),
                "--workers".as_ref(),
                "1".as_ref(),
            ] as [&std::ffi::OsStr; 12]);
            let wasmgate::cli::Command::Run(args) = cli.command else {
                unreachable!("parsed as run")
            };
            let mut options = wasmgate::cli::run_options(&args);
            // No child processes and no disk cache: everything stays in this process.
            options.host.compile_in_child = false;
            options.host.compile_cache = None;
            let gateway = wasmgate::gateway::Gateway::start(options)
                .await
                .unwrap_or_else(|e| panic!("gateway did not start: {e:?}"));
            gateway
        });
        let harness = Harness {
            runtime,
            port,
            _gateway: gateway,
        };
        assert!(
            harness
                .exchange(
                    b"GET /direct HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                    false
                )
                .starts_with(b"HTTP/1.1 200"),
            "the gateway does not answer"
        );
        harness
    })
}

impl Harness {
    /// Write `bytes` on a new connection, close the sending side when `half_close` (so
    /// that an incomplete request ends), and read what comes back until the gateway
    /// closes (at most 2 s). The gateway drops the answer to a request whose client
    /// half-closed (HTTP/1 half-close is not served), so complete requests keep the
    /// sending side open and ask `Connection: close`. The connection is reset at the end
    /// so that a long run leaves no TIME_WAIT behind.
    pub fn exchange(&self, bytes: &[u8], half_close: bool) -> Vec<u8> {
        self.runtime.block_on(async {
            let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)).await else {
                panic!("the gateway refused a connection");
            };
            let _ = stream.set_zero_linger();
            let _ = stream.write_all(bytes).await;
            if half_close {
                let _ = stream.shutdown().await;
            }
            let mut got = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut got)).await;
            got
        })
    }

    /// Panics unless a plain request still gets its answer: one input must not break
    /// the next.
    pub fn still_serves(&self) {
        let got = self.exchange(
            b"GET /direct HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            false,
        );
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "the gateway stopped serving: {}",
            String::from_utf8_lossy(&got)
        );
    }
}
