//! Shared pieces of the integration tests: free loopback ports, echo upstreams (real
//! hyper servers), a real `wasmgate` process with its log, and a small HTTP client.
#![allow(dead_code)]

pub mod otlp;
pub mod tls;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A loopback port nobody listens on right now, for a process the test starts later.
/// Taken below the kernel's ephemeral range (32768 and up on Linux), where upstreams
/// that bind port 0 land, so one of those cannot take it in between; never the same
/// port twice in one test binary.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let seed = std::process::id() as usize
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize);
    for _ in 0..10_000 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20_000 + ((seed.wrapping_add(n.wrapping_mul(7_919))) % 12_000) as u16;
        let mut given = GIVEN.lock().expect("ports");
        if given.contains(&port) {
            continue;
        }
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    let l = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The repository's top folder.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

/// A file under tests/data.
pub fn data(rel: &str) -> String {
    let path = repo().join("tests/data").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A built plugin component (from runtime/build.rs).
pub fn plugin_bytes(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("WASMGATE_BUILT_PLUGINS")).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A plugins directory holding built plugins, as (file name, built plugin) pairs.
pub fn plugins_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new("plugins");
    for (file, built) in files {
        std::fs::write(dir.path().join(file), plugin_bytes(built)).expect("copy plugin");
    }
    dir
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("wasmgate-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An upstream that answers every request with JSON describing it:
/// `{"upstream": NAME, "method", "path", "headers": {...}}`. A request header
/// `x-echo-delay-ms` delays the answer; [`Echo::status`] (0: 200) sets its status.
pub struct Echo {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// The status every answer gets (0: 200 OK).
    pub status: Arc<std::sync::atomic::AtomicU16>,
    /// The Host header of the last request.
    pub last_host: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start(name: &str) -> Echo {
        Self::start_with(name, false).await
    }

    /// An echo upstream that speaks HTTP/2 with prior knowledge (h2c) only.
    pub async fn start_h2(name: &str) -> Echo {
        Self::start_with(name, true).await
    }

    async fn start_with(name: &str, h2: bool) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(std::sync::atomic::AtomicU16::new(0));
        let last_host = Arc::new(std::sync::Mutex::new(String::new()));
        let (n, h, lh, st) = (
            name.to_string(),
            hits.clone(),
            last_host.clone(),
            status.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, h, lh, st) = (n.clone(), h.clone(), lh.clone(), st.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (n, h, lh, st) = (n.clone(), h.clone(), lh.clone(), st.clone());
                        async move {
                            // Counted on arrival, before any delay.
                            h.fetch_add(1, Ordering::SeqCst);
                            let delay = req
                                .headers()
                                .get("x-echo-delay-ms")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<u64>().ok());
                            if let Some(ms) = delay {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            if let (Ok(mut last), Some(host)) =
                                (lh.lock(), req.headers().get("host"))
                            {
                                *last = String::from_utf8_lossy(host.as_bytes()).to_string();
                            }
                            let mut headers = BTreeMap::new();
                            for (k, v) in req.headers() {
                                headers.insert(
                                    k.to_string(),
                                    String::from_utf8_lossy(v.as_bytes()).to_string(),
                                );
                            }
                            let method = req.method().to_string();
                            let version = format!("{:?}", req.version());
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let json = serde_json::json!({
                                "upstream": n, "method": method, "path": path, "headers": headers,
                                "version": version,
                                "body": String::from_utf8_lossy(&body),
                            });
                            let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
                            let code = st.load(Ordering::SeqCst);
                            if code != 0 {
                                *resp.status_mut() =
                                    StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                            }
                            resp.headers_mut()
                                .insert("x-upstream", n.parse().expect("header value"));
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    }
                });
            }
        });
        Echo {
            name: name.to_string(),
            addr,
            hits,
            status,
            last_host,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running `wasmgate run` process; killed on drop.
pub struct Gateway {
    child: Child,
    pub admin: u16,
    pub log: PathBuf,
    _dir: TempDir,
}

/// Held by the tests of a binary that must not run beside each other (one measures a
/// p99, or pins a gateway to a core that another test's gateway would share).
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// While alive, this process runs on the CPUs [`Gateway::pin_apart`] left it; dropped,
/// on the ones it had before.
pub struct Pinned {
    allowed: String,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        taskset(&self.allowed, std::process::id());
    }
}

/// Put every thread of process `pid` on the CPUs in `list` (`taskset`'s syntax).
fn taskset(list: &str, pid: u32) -> bool {
    Command::new("taskset")
        .args(["--all-tasks", "--pid", "--cpu-list", list])
        .arg(pid.to_string())
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_wasmgate")
}

impl Gateway {
    /// Start `wasmgate run --config <config> [extra...]` and wait until
    /// `/healthz/ready` answers 200. Panics with the log if it exits first.
    pub async fn start(config: &Path, extra: &[&str]) -> Gateway {
        match Self::try_start(config, extra).await {
            Ok(g) => g,
            Err(log) => panic!("wasmgate did not become ready:\n{log}"),
        }
    }

    /// Like [`Gateway::start`], but returns the log when it does not become ready.
    pub async fn try_start(config: &Path, extra: &[&str]) -> Result<Gateway, String> {
        Self::try_start_with_env(config, extra, &[]).await
    }

    /// Like [`Gateway::start`], with extra environment variables.
    pub async fn start_with_env(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        match Self::try_start_with_env(config, extra, env).await {
            Ok(g) => g,
            Err(log) => panic!("wasmgate did not become ready:\n{log}"),
        }
    }

    pub async fn try_start_with_env(
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Gateway, String> {
        let mut gw = Self::spawn(config, extra, env);
        gw.wait_ready(Duration::from_secs(60)).await?;
        Ok(gw)
    }

    /// Start `wasmgate run --config <config> [extra...]` without waiting for it.
    pub fn spawn(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        Self::spawn_under(&[], config, extra, env)
    }

    /// Like [`Gateway::spawn`], run by `wrapper` (a command that ends by executing its
    /// arguments, such as `prlimit --as=N --`); none when empty.
    pub fn spawn_under(
        wrapper: &[&str],
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let dir = TempDir::new("log");
        let log = dir.path().join("wasmgate.log");
        let admin = free_port();
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--listen-address", "127.0.0.1"])
            // A loaded CI machine (tests run in parallel on two cores) can stall a plugin
            // call past the 100 ms default; tests about the limit set their own.
            .args(if extra.contains(&"--plugin-time-limit-ms") {
                &[][..]
            } else {
                &["--plugin-time-limit-ms", "2000"][..]
            })
            .args(extra)
            .env("WASMGATE_LOG", "info,wasmgate=debug")
            // One compile cache for the test run, not the user's.
            .env(
                "XDG_CACHE_HOME",
                concat!(env!("CARGO_TARGET_TMPDIR"), "/xdg-cache"),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn wasmgate");
        Gateway {
            child,
            admin,
            log,
            _dir: dir,
        }
    }

    /// Wait up to `limit` until `/healthz/ready` answers 200; the log if the process
    /// exits first or the time is up.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if self.has_exited() {
                return Err(self.log_text());
            }
            if self.is_ready().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// True when `/healthz/ready` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        matches!(
            get(self.admin, "admin", "/healthz/ready", &[]).await,
            Ok(r) if r.status == StatusCode::OK
        )
    }

    /// True once the process has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Access log lines (target `wasmgate::access`).
    pub fn access_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("wasmgate::access"))
            .map(str::to_string)
            .collect()
    }

    /// Wait up to 5 s for access lines that satisfy `done` (connection-level lines are
    /// written when the connection closes); the lines either way.
    pub async fn wait_for_access(&self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.access_lines();
            if done(&lines) || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Run the gateway alone on the first CPU this process may use and this test process
    /// on the others, as `bench/run.py` lays out a measurement, until the guard drops
    /// (which gives this process back the CPUs it had). `None`, saying why, with fewer
    /// than two CPUs or without `taskset`. Other tests of the binary that start gateways
    /// meanwhile would share the CPUs: the caller keeps them from running at once.
    pub fn pin_apart(&self) -> Option<Pinned> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|l| l.trim().to_string())
            .unwrap_or_default();
        let cpus: Vec<u32> = allowed
            .split(',')
            .flat_map(|part| match part.split_once('-') {
                Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                    (Ok(a), Ok(b)) => (a..=b).collect::<Vec<_>>(),
                    _ => Vec::new(),
                },
                None => part.parse().map(|c| vec![c]).unwrap_or_default(),
            })
            .collect();
        if cpus.len() < 2 {
            eprintln!("not pinned: this process may use CPUs {allowed:?}");
            return None;
        }
        let rest: Vec<String> = cpus[1..].iter().map(u32::to_string).collect();
        let pinned = Pinned { allowed };
        if !taskset(&cpus[0].to_string(), self.pid())
            || !taskset(&rest.join(","), std::process::id())
        {
            eprintln!("not pinned: taskset failed or is missing");
            return None;
        }
        Some(pinned)
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Wait up to `limit` for the process to exit; its exit code.
    pub async fn exited(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// `/stats/prometheus` from the admin port (answered 200).
    pub async fn scrape(&self) -> String {
        let r = get(self.admin, "admin", "/stats/prometheus", &[])
            .await
            .expect("admin reachable");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.text()
    }

    pub async fn reload(&self) -> Reply {
        request(self.admin, "POST", "admin", "/reload", &[], Bytes::new())
            .await
            .expect("admin reachable")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` on a scrape: exit 0, or 3 (lint advice) where the only advice
/// is the one Istio's own name earns (`istio_request_duration_milliseconds` keeps Istio's
/// unit); 1 is a parse error. `dir` holds the scrape file.
pub fn promtool_check(dir: &TempDir, text: &str) {
    let file = dir.write("scrape.txt", text);
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("scrape file"))
        .output()
        .expect("promtool");
    let advice = String::from_utf8_lossy(&check.stderr).to_string();
    assert!(
        matches!(check.status.code(), Some(0 | 3))
            && advice
                .lines()
                .all(|l| l.starts_with("istio_request_duration_milliseconds use base unit")),
        "promtool ({:?}): {}{advice}",
        check.status.code(),
        String::from_utf8_lossy(&check.stdout)
    );
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// The echo upstream's JSON, if this came from one.
    pub fn echo(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not echo JSON ({e}): {} {}", self.status, self.text()))
    }

    pub fn upstream(&self) -> Option<String> {
        self.headers
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

fn client() -> &'static Client<HttpConnector, Full<Bytes>> {
    static CLIENT: std::sync::OnceLock<Client<HttpConnector, Full<Bytes>>> =
        std::sync::OnceLock::new();
    CLIENT.get_or_init(|| Client::builder(TokioExecutor::new()).build_http())
}

/// `GET http://127.0.0.1:{port}{path}` with `Host: {host}` and extra headers.
pub async fn get(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    request(port, "GET", host, path, headers, Bytes::new()).await
}

pub async fn request(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, String> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client().request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A ServiceEntry for `host` with STATIC endpoints on 127.0.0.1 (port, labels).
pub fn service_entry(
    name: &str,
    host: &str,
    port: u16,
    endpoints: &[(u16, &[(&str, &str)])],
) -> String {
    let mut eps = String::new();
    for (p, labels) in endpoints {
        eps.push_str(&format!(
            "  - address: 127.0.0.1\n    ports:\n      http: {p}\n"
        ));
        if !labels.is_empty() {
            eps.push_str("    labels:\n");
            for (k, v) in *labels {
                eps.push_str(&format!("      {k}: {v}\n"));
            }
        }
    }
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\nspec:\n  hosts:\n  - {host}\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - number: {port}\n    name: http\n    protocol: HTTP\n  endpoints:\n{eps}"
    )
}

/// Read from `s` up to the end of a request head (what came with it included); `None`
/// when the peer closes or fails first.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// The sum of a Prometheus text's lines for metric `name` (0 when it has none).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A Gateway `name` with one HTTP server on `port` for `hosts`.
pub fn gateway(name: &str, port: u16, hosts: &[&str]) -> String {
    let hosts: String = hosts.iter().map(|h| format!("    - \"{h}\"\n")).collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\nspec:\n  selector:\n    istio: ingressgateway\n  servers:\n  - port:\n      number: {port}\n      name: http\n      protocol: HTTP\n    hosts:\n{hosts}"
    )
}

/// A real `redis-server` (Debian's package) on a free loopback port, without
/// persistence; stopped on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

/// A real server the test needs is not installed: `None` (the test skips, saying so),
/// except where CI installs it (`WASMGATE_REQUIRE_SERVERS`): there it is a failure.
fn missing<T>(server: &str, packages: &str) -> Option<T> {
    assert!(
        std::env::var_os("WASMGATE_REQUIRE_SERVERS").is_none(),
        "{server} is not installed and WASMGATE_REQUIRE_SERVERS is set"
    );
    eprintln!(
        "skipped: Debian's {server} is not installed (apt-get install {packages}; .ci/run does)"
    );
    None
}

impl RedisServer {
    /// `None` (and a line saying why) when redis-server is not installed.
    pub async fn start() -> Option<RedisServer> {
        let port = free_port();
        let mut server = RedisServer { child: None, port };
        if !server.run() {
            return missing("redis-server", "redis-server");
        }
        server.wait_ready().await;
        Some(server)
    }

    fn run(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => {
                self.child = Some(c);
                true
            }
            Err(_) => false,
        }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stop it (SIGKILL), keeping the port for [`RedisServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        assert!(self.run(), "redis-server");
        self.wait_ready().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real one-member etcd (Debian's `etcd` 3.4, with `etcdctl` speaking API v3) on free
/// loopback ports, its data in a temporary folder; killed on drop.
pub struct EtcdServer {
    child: Option<Child>,
    pub client_port: u16,
    peer_port: u16,
    dir: TempDir,
    /// With [`EtcdServer::start_tls`]: HTTPS with client certificates.
    pub tls: Option<EtcdTls>,
    /// `NAME:PASSWORD` etcdctl authenticates with, once [`EtcdServer::enable_auth`] ran.
    user: Option<String>,
}

/// PEM files of an etcd served over TLS that asks for client certificates: its CA, and a
/// client certificate and key it accepts.
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl EtcdServer {
    /// `None` (and a line saying why) when etcd is not installed.
    pub async fn start() -> Option<EtcdServer> {
        Self::start_with(|_| None).await
    }

    /// Like [`EtcdServer::start`], served over TLS (a certificate for 127.0.0.1 from
    /// `ca`) and refusing clients without a certificate from `ca`.
    pub async fn start_tls(ca: &tls::Ca) -> Option<EtcdServer> {
        Self::start_with(|dir| {
            let write = |name: &str, pem: &str| {
                let path = dir.path().join(name);
                std::fs::write(&path, pem).expect("write pem");
                path
            };
            let server = ca.server(&["127.0.0.1"]);
            let client = ca.client("wasmgate", &[], None);
            Some(EtcdTls {
                ca: write("ca.pem", &ca.pem),
                cert: write("client.pem", &client.cert),
                key: write("client-key.pem", &client.key),
                server_cert: write("server.pem", &server.cert),
                server_key: write("server-key.pem", &server.key),
            })
        })
        .await
    }

    async fn start_with(tls: impl FnOnce(&TempDir) -> Option<EtcdTls>) -> Option<EtcdServer> {
        let dir = TempDir::new("etcd");
        let mut server = EtcdServer {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            tls: tls(&dir),
            dir,
            user: None,
        };
        let installed = Command::new("etcdctl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed || !server.run() {
            return missing("etcd", "etcd-server etcd-client");
        }
        server.wait_ready().await;
        Some(server)
    }

    fn run(&mut self) -> bool {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let secure: Vec<&std::ffi::OsStr> = match &self.tls {
            None => Vec::new(),
            Some(t) => vec![
                "--cert-file".as_ref(),
                t.server_cert.as_os_str(),
                "--key-file".as_ref(),
                t.server_key.as_os_str(),
                "--trusted-ca-file".as_ref(),
                t.ca.as_os_str(),
                "--client-cert-auth".as_ref(),
            ],
        };
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(secure)
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log)
            .spawn();
        match child {
            Ok(c) => {
                self.child = Some(c);
                true
            }
            Err(_) => false,
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited ({status}):\n{}", self.log_text());
            }
            if self.ctl(&["endpoint", "health"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not start:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `127.0.0.1:PORT`, its client endpoint.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `etcd://127.0.0.1:PORT/<prefix>`, a `--config` value.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoint())
    }

    /// `etcdctl --endpoints <endpoint> <args>` (API v3), run to its end.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        self.ctl_with_input(args, "")
    }

    fn ctl_with_input(&self, args: &[&str], input: &str) -> std::process::Output {
        use std::io::Write;
        let mut access: Vec<&std::ffi::OsStr> = Vec::new();
        if let Some(t) = &self.tls {
            access.extend([
                "--cacert".as_ref(),
                t.ca.as_os_str(),
                "--cert".as_ref(),
                t.cert.as_os_str(),
                "--key".as_ref(),
                t.key.as_os_str(),
            ]);
        }
        if let Some(user) = &self.user {
            access.extend(["--user".as_ref(), std::ffi::OsStr::new(user)]);
        }
        let mut child = Command::new("etcdctl")
            .args(["--endpoints", &self.endpoint(), "--dial-timeout", "2s"])
            .args(access)
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run etcdctl");
        let mut stdin = child.stdin.take().expect("etcdctl stdin");
        stdin.write_all(input.as_bytes()).expect("etcdctl stdin");
        drop(stdin);
        child.wait_with_output().expect("etcdctl")
    }

    /// [`EtcdServer::ctl`], which must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `etcdctl put <key> <value>`; the revision it made.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        header_revision(&self.ctl_ok(&["put", "-w", "json", "--", key, value]))
    }

    /// `etcdctl put <key>` with `value` as it is (any bytes, given on stdin).
    pub fn put_bytes(&self, key: &str, value: &[u8]) {
        use std::io::Write;
        let mut child = Command::new("etcdctl")
            .args(["--endpoints", &self.endpoint(), "put", key])
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run etcdctl");
        let mut stdin = child.stdin.take().expect("etcdctl stdin");
        stdin.write_all(value).expect("etcdctl stdin");
        drop(stdin);
        let out = child.wait_with_output().expect("etcdctl");
        assert!(out.status.success(), "etcdctl put: {out:?}");
    }

    /// Put every (key, value) in one transaction (`etcdctl txn`): one revision, which
    /// it returns (others may write after it: replicas write their status).
    pub fn txn(&self, puts: &[(&str, &str)]) -> i64 {
        // No comparisons, the puts, no failure requests; values are Go-quoted strings
        // (Rust's debug quoting agrees for printable ASCII).
        let mut input = String::from("\n");
        for (key, value) in puts {
            assert!(value.is_ascii(), "txn values are quoted as ASCII");
            input.push_str(&format!("put {key} {value:?}\n"));
        }
        input.push_str("\n\n");
        let out = self.ctl_with_input(&["txn", "-w", "json"], &input);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
        assert!(
            out.status.success() && v["succeeded"] == true,
            "etcdctl txn: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        header_revision(&stdout)
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        header_revision(&self.ctl_ok(&["get", "/", "--keys-only", "-w", "json"]))
    }

    /// The value of `key`, if it has one.
    pub fn value(&self, key: &str) -> Option<String> {
        let out = self.ctl_ok(&["get", "--print-value-only", key]);
        // etcdctl ends the value with a newline of its own.
        out.strip_suffix('\n').map(str::to_string)
    }

    /// The keys under `prefix`, in order.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl_ok(&["get", "--prefix", "--keys-only", prefix])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Turn on etcd's authentication with user `root` and `password` (root may do
    /// anything); etcdctl logs in as root from now on.
    pub fn enable_auth(&mut self, password: &str) {
        self.ctl_ok(&["user", "add", &format!("root:{password}")]);
        self.ctl_ok(&["auth", "enable"]);
        self.user = Some(format!("root:{password}"));
    }

    /// Stop it (SIGKILL), keeping its data and ports for [`EtcdServer::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same data and ports.
    pub async fn start_again(&mut self) {
        self.stop();
        assert!(self.run(), "etcd");
        self.wait_ready().await;
    }
}

/// The revision in the header of an `etcdctl -w json` answer.
fn header_revision(json: &str) -> i64 {
    let v: serde_json::Value = serde_json::from_str(json).expect("etcdctl JSON");
    v["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no revision in {json}"))
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
