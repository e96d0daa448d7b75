//! A fleet of gateway processes configured from a real etcd (Debian's `etcd`, started by
//! the test, written to with `etcdctl`): `--config etcd://HOST:PORT/PREFIX` after the
//! files, changes reaching every replica within a second (measured and printed; asserted
//! within a CI-sized bound), a multi-key transaction applied as one snapshot, a bad
//! batch refused while the last good config keeps serving, etcd going away and coming
//! back, `--etcd-cache`, and the `status` and `push` commands.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::{
    Echo, EtcdServer, Gateway, Reply, TempDir, binary, free_port, gateway, get, service_entry,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const PREFIX: &str = "fleet";
/// The host every test routes.
const APP: &str = "app.fleet";
/// How long a change may take to reach every replica. The issue asks for a second (the
/// tests print what they measure); CI runs test binaries in parallel on two cores.
const CONVERGE: Duration = Duration::from_secs(5);
/// How long a replica may take to come back after etcd was out of reach (its back-off
/// between attempts grows to 5 s).
const RECONNECT: Duration = Duration::from_secs(10);

/// `/PREFIX/<name>`.
fn key(name: &str) -> String {
    format!("/{PREFIX}/{name}")
}

/// VirtualService `app` for `app.fleet` on Gateway `gw`: to ServiceEntry host
/// `backend.fleet`, with the response header `x-version: <version>`; `extra` goes under
/// the route.
fn app_routes(version: &str, extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [{APP}]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: backend.fleet}}}}]\n    headers:\n      response:\n        set: {{x-version: {version}}}\n{extra}"
    )
}

/// [`app_routes`] with a timeout that is no duration; the line it is on.
fn bad_routes(version: &str) -> (String, usize) {
    let text = app_routes(version, "    timeout: 5 seconds\n");
    let line = text
        .lines()
        .position(|l| l.contains("timeout:"))
        .expect("a timeout line")
        + 1;
    (text, line)
}

/// ServiceEntry `backend.fleet` whose one endpoint is `upstream`.
fn backend(upstream: &Echo) -> String {
    service_entry("backend", "backend.fleet", 80, &[(upstream.port(), &[])])
}

/// Two upstreams, named after the route versions that lead to them.
async fn upstreams() -> (Echo, Echo) {
    (Echo::start("v1").await, Echo::start("v2").await)
}

/// Version `version` of the routes (key `vs.yaml`) and its upstream (key `se.yaml`),
/// written in one transaction; the revision it made.
fn set_routes(etcd: &EtcdServer, version: &str, upstream: &Echo) -> i64 {
    etcd.txn(&[
        (&key("vs.yaml"), &app_routes(version, "")),
        (&key("se.yaml"), &backend(upstream)),
    ])
}

/// One gateway replica on the fleet's prefix.
struct Replica {
    gateway: Gateway,
    /// Its listener port.
    port: u16,
    _files: Option<TempDir>,
}

impl Replica {
    /// A replica whose own Gateway `gw` (a free port, every host) is in a local file, the
    /// first `--config`; the rest comes from `url`. `id`: its `--replica-id`, if any.
    async fn start(url: &str, id: Option<&str>, extra: &[&str]) -> Replica {
        let port = free_port();
        let files = TempDir::new("fleet-replica");
        let gw = files.write("gw.yaml", &gateway("gw", port, &["*"]));
        let mut args = vec!["--config", url];
        if let Some(id) = id {
            args.extend(["--replica-id", id]);
        }
        args.extend(extra);
        Replica {
            gateway: Gateway::start(&gw, &args).await,
            port,
            _files: Some(files),
        }
    }

    /// A replica configured from `url` alone (the Gateway, on `port`, is in etcd too).
    fn spawn_from_store(url: &str, port: u16, extra: &[&str]) -> Replica {
        Replica {
            gateway: Gateway::spawn(Path::new(url), extra, &[]),
            port,
            _files: None,
        }
    }

    async fn app(&self) -> Result<Reply, String> {
        get(self.port, APP, "/", &[]).await
    }
}

/// Replicas `alpha` and `beta` on `url`, once both serve route version v1.
async fn alpha_and_beta(url: &str) -> (Replica, Replica) {
    let a = Replica::start(url, Some("alpha"), &[]).await;
    let b = Replica::start(url, Some("beta"), &[]).await;
    converge_to("v1", &[&a, &b], Instant::now(), CONVERGE).await;
    (a, b)
}

/// The version a reply's route set and the upstream that answered; `None` for anything
/// but a 200 from an upstream.
fn version_of(reply: &Result<Reply, String>) -> Option<(String, String)> {
    let r = reply.as_ref().ok().filter(|r| r.status == StatusCode::OK)?;
    let version = r.headers.get("x-version")?.to_str().ok()?.to_string();
    Some((version, r.upstream()?))
}

/// Every route version leads to its own upstream.
fn consistent(reply: &Result<Reply, String>) -> bool {
    version_of(reply).is_some_and(|(v, u)| v == u)
}

fn describe(reply: &Result<Reply, String>) -> String {
    match reply {
        Ok(r) if r.status == StatusCode::OK && r.upstream().is_some() => format!(
            "x-version {:?} from upstream {:?}",
            r.headers.get("x-version"),
            r.upstream().unwrap_or_default()
        ),
        Ok(r) => format!("{} {}", r.status, r.text()),
        Err(e) => format!("no reply: {e}"),
    }
}

/// Poll every replica until `host` answers as `done` says, within `limit` of `since`
/// (the moment of the change); each replica's time, printed.
async fn converge(
    what: &str,
    replicas: &[&Replica],
    host: &str,
    done: impl Fn(&Result<Reply, String>) -> bool,
    since: Instant,
    limit: Duration,
) -> Vec<Duration> {
    let mut times: Vec<Option<Duration>> = vec![None; replicas.len()];
    while times.iter().any(Option::is_none) {
        for (i, replica) in replicas.iter().enumerate() {
            if times[i].is_some() {
                continue;
            }
            let reply = get(replica.port, host, "/", &[]).await;
            if done(&reply) {
                times[i] = Some(since.elapsed());
            } else if since.elapsed() > limit {
                panic!(
                    "{what}: replica {i} still answers {} after {limit:?}; its log:\n{}",
                    describe(&reply),
                    replica.gateway.log_text()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let times: Vec<Duration> = times.into_iter().flatten().collect();
    let test = std::thread::current()
        .name()
        .unwrap_or_default()
        .to_string();
    eprintln!("{test}: {what}: every replica within {times:?}");
    times
}

/// Until every replica serves route version `version`.
async fn converge_to(version: &str, replicas: &[&Replica], since: Instant, limit: Duration) {
    let what = format!("routes {version}");
    let done = |r: &Result<Reply, String>| {
        version_of(r).is_some_and(|(v, u)| v == version && u == version)
    };
    converge(&what, replicas, APP, done, since, limit).await;
}

/// Every reply of every replica, for `period`, is route version `version`.
async fn keeps_serving(version: &str, replicas: &[&Replica], period: Duration) {
    let end = Instant::now() + period;
    while Instant::now() < end {
        for (i, replica) in replicas.iter().enumerate() {
            let reply = replica.app().await;
            assert_eq!(
                version_of(&reply),
                Some((version.to_string(), version.to_string())),
                "replica {i}: {}; its log:\n{}",
                describe(&reply),
                replica.gateway.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `wasmgate <args>`: exit code, stdout, stderr.
fn wasmgate(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(binary())
        .args(args)
        .output()
        .expect("run wasmgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What `wasmgate status` printed.
#[derive(Debug)]
struct Status {
    revision: i64,
    replicas: Vec<ReplicaStatus>,
    text: String,
}

/// One replica's line: `ID  revision N  applied RFC3339  ok` (or `error: TEXT`); other
/// columns before `applied` (such as a config digest) are passed over.
#[derive(Debug)]
struct ReplicaStatus {
    id: String,
    revision: i64,
    applied: String,
    state: String,
}

impl Status {
    fn of(&self, id: &str) -> Option<&ReplicaStatus> {
        self.replicas.iter().find(|r| r.id == id)
    }
}

fn parse_replica(line: &str) -> Option<ReplicaStatus> {
    let (id, rest) = line.split_once(" revision ")?;
    let (revision, rest) = rest.trim_start().split_once(' ')?;
    let (_, rest) = rest.split_once(" applied ")?;
    let (applied, state) = rest.trim_start().split_once(' ')?;
    Some(ReplicaStatus {
        id: id.trim().to_string(),
        revision: revision.parse().ok()?,
        applied: applied.to_string(),
        state: state.trim().to_string(),
    })
}

/// `wasmgate status --config <url>`, which must exit 0, parsed: first
/// `store revision N, K replica(s)` (other fields between them are passed over), then K
/// replica lines.
fn status(url: &str) -> Status {
    let (code, text, stderr) = wasmgate(&["status", "--config", url]);
    assert_eq!(code, 0, "wasmgate status: {text}{stderr}");
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let head = lines.next().unwrap_or_default();
    let fields: Vec<&str> = head.split(", ").collect();
    let revision = fields
        .first()
        .and_then(|f| f.strip_prefix("store revision "))
        .and_then(|r| r.parse().ok());
    let count = fields
        .last()
        .and_then(|f| f.strip_suffix(" replica(s)"))
        .and_then(|c| c.parse::<usize>().ok());
    let (Some(revision), Some(count)) = (revision, count) else {
        panic!("status header {head:?}:\n{text}");
    };
    let replicas: Vec<ReplicaStatus> = lines
        .map(|l| parse_replica(l).unwrap_or_else(|| panic!("status line {l:?}:\n{text}")))
        .collect();
    assert_eq!(count, replicas.len(), "{text}");
    Status {
        revision,
        replicas,
        text,
    }
}

/// Run `status` until `done` holds (the replicas write theirs after each apply).
async fn wait_status(url: &str, what: &str, done: impl Fn(&Status) -> bool) -> Status {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(url);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}; status says:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let date_time = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let rest = text.get(19..).unwrap_or_default();
    let rest = rest
        .strip_prefix('.')
        .map_or(rest, |r| r.trim_start_matches(|c: char| c.is_ascii_digit()));
    let zone = matches!(rest, "Z" | "z")
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':');
    date_time && zone
}

/// Two replicas on one prefix serve the same routes from etcd, and a key written with
/// etcdctl reaches both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_serve_the_same_routes_and_follow_a_change() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let v1 = Echo::start("v1").await;
    set_routes(&etcd, "v1", &v1);
    let url = etcd.url(PREFIX);
    let (a, b) = alpha_and_beta(&url).await;
    for replica in [&a, &b] {
        let r = get(replica.port, "new.fleet", "/", &[])
            .await
            .expect("reply");
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    }

    let since = Instant::now();
    etcd.put(
        &key("new.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: new\nspec:\n  hosts: [new.fleet]\n  gateways: [gw]\n  http:\n  - directResponse: {status: 200, body: {string: new}}\n",
    );
    let answered_new = |r: &Result<Reply, String>| {
        r.as_ref()
            .is_ok_and(|r| r.status == StatusCode::OK && r.text() == "new")
    };
    converge(
        "a new key",
        &[&a, &b],
        "new.fleet",
        answered_new,
        since,
        CONVERGE,
    )
    .await;
    // The routes already there are untouched.
    keeps_serving("v1", &[&a, &b], Duration::from_millis(200)).await;
}

/// A transaction over two keys (the routes and the upstream they lead to) is applied as
/// one snapshot: clients polling both replicas all through four such changes never get
/// a route version from the other version's upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multi_key_transaction_applies_atomically() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let (v1, v2) = upstreams().await;
    set_routes(&etcd, "v1", &v1);
    let url = etcd.url(PREFIX);
    let (a, b) = alpha_and_beta(&url).await;

    let stop = Arc::new(AtomicBool::new(false));
    let pollers: Vec<JoinHandle<Vec<Result<Reply, String>>>> = [a.port, b.port]
        .into_iter()
        .map(|port| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut replies = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    replies.push(get(port, APP, "/", &[]).await);
                }
                replies
            })
        })
        .collect();
    for (version, upstream) in [("v2", &v2), ("v1", &v1), ("v2", &v2), ("v1", &v1)] {
        let since = Instant::now();
        set_routes(&etcd, version, upstream);
        converge_to(version, &[&a, &b], since, CONVERGE).await;
        // Held a while, so that each client sees each version.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);

    for (i, poller) in pollers.into_iter().enumerate() {
        let replies = poller.await.expect("poller");
        let wrong: Vec<String> = replies
            .iter()
            .filter(|r| !consistent(r))
            .map(describe)
            .collect();
        assert!(
            wrong.is_empty(),
            "replica {i}: {} of {} replies mixed two snapshots or failed, first: {:#?}",
            wrong.len(),
            replies.len(),
            &wrong[..wrong.len().min(5)]
        );
        // The client really polled through the changes: it saw each version change.
        let versions: Vec<String> = replies
            .iter()
            .filter_map(version_of)
            .map(|(v, _)| v)
            .collect();
        let changes = versions.windows(2).filter(|w| w[0] != w[1]).count();
        eprintln!(
            "replica {i}: {} replies, {changes} version changes",
            replies.len()
        );
        assert!(changes >= 3, "replica {i}: only {changes} changes seen");
    }
}

/// A batch with an invalid document is refused as a whole by both replicas: they keep
/// serving the last good routes, log the error under the key's name, and `status` shows
/// the error for each; a good batch after it applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_batch_is_refused_and_the_last_good_config_keeps_serving() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let (v1, v2) = upstreams().await;
    set_routes(&etcd, "v1", &v1);
    let url = etcd.url(PREFIX);
    let (a, b) = alpha_and_beta(&url).await;

    // One transaction: a good change to the upstream, and routes with a bad timeout.
    let (bad, line) = bad_routes("v2");
    etcd.txn(&[(&key("se.yaml"), &backend(&v2)), (&key("vs.yaml"), &bad)]);
    let s = wait_status(&url, "both replicas report the refused batch", |s| {
        ["alpha", "beta"]
            .iter()
            .all(|id| s.of(id).is_some_and(|r| r.state.starts_with("error:")))
    })
    .await;
    for id in ["alpha", "beta"] {
        let r = s.of(id).expect("listed");
        assert!(
            r.state.contains("/fleet/vs.yaml"),
            "{id}: the error names the key: {}",
            s.text
        );
    }
    // Neither half of the batch was applied.
    keeps_serving("v1", &[&a, &b], Duration::from_millis(500)).await;
    let error = format!(
        "etcd:/fleet/vs.yaml:{line}: VirtualService default/app: spec.http[0].timeout: invalid duration \"5 seconds\""
    );
    for replica in [&a, &b] {
        let log = replica.gateway.log_text();
        assert!(
            log.contains("reload rejected") && log.contains(&error),
            "{error}\nnot in the log:\n{log}"
        );
        let scraped = replica.gateway.scrape().await;
        for (name, at_least) in [
            ("wasmgate_config_store_watching", 1.0),
            ("wasmgate_config_store_revision", 1.0),
        ] {
            assert!(
                support::metric(&scraped, name) >= at_least,
                "{name} < {at_least}:\n{scraped}"
            );
        }
        // Built and refused once: both replicas' status writes since (under the same
        // prefix) did not make either try again.
        let refused = "wasmgate_config_store_applies_total{result=\"refused\"}";
        assert_eq!(support::metric(&scraped, refused), 1.0, "{scraped}");
    }

    // Written back to what they serve: the refusal is over without a rebuild.
    let applied = "wasmgate_config_store_applies_total{result=\"applied\"}";
    let mut before = Vec::new();
    for replica in [&a, &b] {
        before.push(support::metric(&replica.gateway.scrape().await, applied));
    }
    set_routes(&etcd, "v1", &v1);
    wait_status(
        &url,
        "a write back to the served config clears the error",
        |s| {
            ["alpha", "beta"]
                .iter()
                .all(|id| s.of(id).is_some_and(|r| r.state == "ok"))
        },
    )
    .await;
    for (replica, before) in [&a, &b].into_iter().zip(before) {
        let scraped = replica.gateway.scrape().await;
        assert_eq!(support::metric(&scraped, applied), before, "{scraped}");
    }

    // Fixed: the next batch applies, and the status is clean again.
    let since = Instant::now();
    set_routes(&etcd, "v2", &v2);
    converge_to("v2", &[&a, &b], since, CONVERGE).await;
    wait_status(&url, "both replicas report the good batch", |s| {
        ["alpha", "beta"]
            .iter()
            .all(|id| s.of(id).is_some_and(|r| r.state == "ok"))
    })
    .await;
}

/// A TCP forwarder on loopback between the gateways and etcd, which the test can cut:
/// blocked, it drops what it carries and every new connection at once.
struct Forwarder {
    port: u16,
    /// Blocked?, and the connections it carries.
    links: Arc<Mutex<(bool, Vec<JoinHandle<()>>)>>,
    task: JoinHandle<()>,
}

impl Forwarder {
    async fn start(to: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind forwarder");
        let port = listener.local_addr().expect("forwarder addr").port();
        let links: Arc<Mutex<(bool, Vec<JoinHandle<()>>)>> = Arc::default();
        let carried = links.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut links = carried.lock().expect("links");
                if links.0 {
                    continue; // dropped: closed at once
                }
                links.1.push(tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Forwarder { port, links, task }
    }

    fn set_blocked(&self, blocked: bool) {
        let mut links = self.links.lock().expect("links");
        links.0 = blocked;
        if blocked {
            for link in links.1.drain(..) {
                link.abort();
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
        self.set_blocked(true);
    }
}

/// etcd stopped: both replicas keep serving. A change made while they cannot reach etcd
/// (the forwarder between them and etcd is cut, etcd restarted, the change written and
/// the history compacted, so an old watch cannot resume) reaches both once they can.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_ride_out_etcd_going_away_and_converge_after() {
    let Some(mut etcd) = EtcdServer::start().await else {
        return;
    };
    let (v1, v2) = upstreams().await;
    set_routes(&etcd, "v1", &v1);
    let forwarder = Forwarder::start(etcd.client_port).await;
    let url = format!("etcd://127.0.0.1:{}/{PREFIX}", forwarder.port);
    let (a, b) = alpha_and_beta(&url).await;

    etcd.stop();
    keeps_serving("v1", &[&a, &b], Duration::from_secs(1)).await;
    forwarder.set_blocked(true);
    etcd.start_again().await;
    let revision = set_routes(&etcd, "v2", &v2);
    etcd.ctl_ok(&["compact", &revision.to_string()]);
    // Still cut off: still the old routes.
    keeps_serving("v1", &[&a, &b], Duration::from_secs(1)).await;

    let since = Instant::now();
    forwarder.set_blocked(false);
    converge_to("v2", &[&a, &b], since, RECONNECT).await;
    for replica in [&a, &b] {
        let scraped = replica.gateway.scrape().await;
        let relists = support::metric(&scraped, "wasmgate_config_store_relists_total");
        assert!(relists >= 1.0, "the broken watch is counted:\n{scraped}");
    }
}

/// `push` validates as `validate` does: an invalid folder exits 1 naming the file and
/// writes nothing. A valid one is written in one transaction (one key a file, only the
/// folder's own .yaml/.yml files), unchanged files are skipped, and `--prune` removes
/// the keys of files not given, but never a replica's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_validates_writes_in_one_transaction_and_prunes() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let url = etcd.url(PREFIX);
    let v1 = Echo::start("v1").await;
    etcd.put(&key("old.yaml"), &app_routes("old", ""));
    etcd.put(&key("status/someone"), "{\"replica\":\"someone\"}");
    let listing = || etcd.ctl_ok(&["get", "--prefix", &key("")]);
    let before = (listing(), etcd.revision());

    let invalid = TempDir::new("push-invalid");
    invalid.write("se.yaml", &backend(&v1));
    let (bad, line) = bad_routes("v1");
    invalid.write("vs.yaml", &bad);
    let (code, stdout, stderr) = wasmgate(&["push", "--to", &url, invalid.arg()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let (_, validated, _) = wasmgate(&["validate", "--config", invalid.arg()]);
    // validate's error lines, each as it prints it (a summary line may follow).
    assert!(
        validated.contains(&format!("vs.yaml:{line}: ")) && stdout.starts_with(&validated),
        "push printed:\n{stdout}\nvalidate prints:\n{validated}"
    );
    assert_eq!((listing(), etcd.revision()), before, "nothing written");

    let valid = TempDir::new("push-valid");
    let routes = valid.write("vs.yaml", &app_routes("v1", ""));
    valid.write("se.yml", &backend(&v1));
    valid.write("notes.txt", "not config");
    std::fs::create_dir(valid.path().join("sub")).expect("sub folder");
    valid.write("sub/other.yaml", &app_routes("other", ""));
    let pushed = |args: &[&str], what: &str| -> i64 {
        let mut all = vec!["push", "--to", url.as_str()];
        all.extend(args);
        let (code, stdout, stderr) = wasmgate(&all);
        assert_eq!(code, 0, "{stdout}{stderr}");
        let revision = etcd.revision();
        let line = format!("{what}, revision {revision}");
        assert!(
            stdout.lines().any(|l| l == line),
            "expected {line:?}:\n{stdout}{stderr}"
        );
        revision
    };
    // Valid files, but the store would hold VirtualService `app` twice (old.yaml is
    // kept without --prune): refused as the replicas would refuse it, nothing written.
    let (code, stdout, stderr) = wasmgate(&["push", "--to", &url, valid.arg()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("would be refused by the replicas")
            && stdout.contains("etcd:/fleet/")
            && stdout.contains("duplicate"),
        "{stdout}{stderr}"
    );
    assert_eq!((listing(), etcd.revision()), before, "nothing written");

    let first = pushed(&[valid.arg(), "--prune"], "pushed 2 key(s), removed 1");
    assert_eq!(first, before.1 + 1, "one transaction");
    assert_eq!(
        etcd.keys(&key("")),
        [key("se.yml"), key("status/someone"), key("vs.yaml")]
    );
    assert_eq!(
        etcd.value(&key("vs.yaml")).as_deref(),
        Some(app_routes("v1", "").as_str()),
        "the file as it is"
    );
    // Unchanged files are not written again.
    let again = pushed(&[valid.arg()], "pushed 0 key(s), removed 0");
    assert_eq!(again, first, "nothing written");

    // One changed file given with --prune: written, and the other's key removed.
    std::fs::write(&routes, app_routes("v2", "")).expect("change vs.yaml");
    let routes = routes.to_str().expect("UTF-8 path");
    let pruned = pushed(&[routes, "--prune"], "pushed 1 key(s), removed 1");
    assert_eq!(pruned, first + 1, "one transaction");
    assert_eq!(etcd.keys(&key("")), [key("status/someone"), key("vs.yaml")]);
    assert_eq!(
        etcd.value(&key("vs.yaml")).as_deref(),
        Some(app_routes("v2", "").as_str())
    );
}

/// `status` lists each replica (one named by --replica-id, one by its default
/// `hostname-pid`) with the revision it applied, written under `/PREFIX/status/ID` with
/// a 10 s lease; with etcd out of reach it exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_lists_every_replica() {
    let Some(mut etcd) = EtcdServer::start().await else {
        return;
    };
    let (v1, v2) = upstreams().await;
    set_routes(&etcd, "v1", &v1);
    let url = etcd.url(PREFIX);
    let a = Replica::start(&url, Some("alpha"), &[]).await;
    let b = Replica::start(&url, None, &[]).await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let default_id = format!("{}-{}", host.trim(), b.gateway.pid());
    converge_to("v1", &[&a, &b], Instant::now(), CONVERGE).await;

    let since = Instant::now();
    let changed = set_routes(&etcd, "v2", &v2);
    converge_to("v2", &[&a, &b], since, CONVERGE).await;
    let ids = ["alpha", default_id.as_str()];
    let s = wait_status(&url, "both replicas at the change's revision", |s| {
        ids.iter()
            .all(|id| s.of(id).is_some_and(|r| r.revision >= changed))
    })
    .await;
    assert_eq!(s.replicas.len(), 2, "{}", s.text);
    for id in ids {
        let r = s.of(id).expect("listed");
        assert_eq!(r.state, "ok", "{}", s.text);
        assert!(r.revision <= s.revision, "{}", s.text);
        assert!(rfc3339(&r.applied), "applied {:?}: {}", r.applied, s.text);
    }

    let status_key = key("status/alpha");
    let json = etcd.value(&status_key).expect("alpha's status key");
    let v: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    assert_eq!(v["replica"], "alpha", "{json}");
    assert!(
        v["revision"].as_i64().is_some_and(|r| r >= changed),
        "{json}"
    );
    assert!(v["applied_at"].as_str().is_some_and(rfc3339), "{json}");
    assert!(v["error"].is_null(), "{json}");
    let kv: serde_json::Value =
        serde_json::from_str(&etcd.ctl_ok(&["get", &status_key, "-w", "json"])).expect("JSON");
    let lease = kv["kvs"][0]["lease"].as_i64().unwrap_or(0);
    assert_ne!(lease, 0, "written with a lease: {kv}");
    let ttl = etcd.ctl_ok(&["lease", "timetolive", &format!("{lease:x}")]);
    assert!(ttl.contains("granted with TTL(10s)"), "{ttl}");

    etcd.stop();
    let (code, stdout, stderr) = wasmgate(&["status", "--config", &url]);
    assert_eq!(code, 1, "etcd is down: {stdout}{stderr}");
}

/// With --etcd-cache a gateway keeps the last config it applied on disk, and a gateway
/// started on that cache while etcd is down serves it. Without the cache a gateway does
/// not serve until etcd answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_starts_from_its_cache_while_etcd_is_down() {
    let Some(mut etcd) = EtcdServer::start().await else {
        return;
    };
    let (v1, v2) = upstreams().await;
    let port = free_port();
    etcd.put(&key("gw.yaml"), &gateway("gw", port, &["*"]));
    set_routes(&etcd, "v1", &v1);
    let url = etcd.url(PREFIX);
    let cache = TempDir::new("fleet-cache");
    let cached = |id: &'static str| ["--etcd-cache", cache.arg(), "--replica-id", id];
    let ready = |mut replica: Replica| async move {
        if let Err(log) = replica.gateway.wait_ready(RECONNECT).await {
            panic!("not ready in {RECONNECT:?}:\n{log}");
        }
        replica
    };

    let mut first = ready(Replica::spawn_from_store(&url, port, &cached("first"))).await;
    converge_to("v1", &[&first], Instant::now(), CONVERGE).await;
    let since = Instant::now();
    let changed = set_routes(&etcd, "v2", &v2);
    converge_to("v2", &[&first], since, CONVERGE).await;
    wait_status(&url, "the change applied", |s| {
        s.of("first").is_some_and(|r| r.revision >= changed)
    })
    .await;
    let cached_files = std::fs::read_dir(cache.path()).map_or(0, Iterator::count);
    assert!(cached_files > 0, "nothing in {}", cache.arg());
    etcd.stop();
    keeps_serving("v2", &[&first], Duration::from_millis(300)).await;
    first.gateway.terminate();
    assert!(
        first
            .gateway
            .exited(Duration::from_secs(10))
            .await
            .is_some(),
        "first did not stop"
    );
    drop(first);

    let second = ready(Replica::spawn_from_store(&url, port, &cached("second"))).await;
    converge_to("v2", &[&second], Instant::now(), CONVERGE).await;
    drop(second);

    let mut third = Replica::spawn_from_store(&url, port, &["--replica-id", "third"]);
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        assert!(!third.gateway.has_exited(), "{}", third.gateway.log_text());
        assert!(
            !third.gateway.is_ready().await,
            "ready without etcd or a cache:\n{}",
            third.gateway.log_text()
        );
        assert!(third.app().await.is_err(), "serving without a config");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    etcd.start_again().await;
    let since = Instant::now();
    let third = ready(third).await;
    converge_to("v2", &[&third], since, RECONNECT).await;
}

/// etcd over TLS with client certificates and users (`--client-cert-auth`, `auth
/// enable`): a replica given the CA, a client certificate and the user's password file
/// serves the store's routes and follows a change; `status` without the client
/// certificate or with a wrong password is refused by etcd and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_client_certificates_and_a_user_reach_a_secured_etcd() {
    let ca = support::tls::Ca::new("etcd test CA");
    let Some(mut etcd) = EtcdServer::start_tls(&ca).await else {
        return;
    };
    etcd.enable_auth("s3cret");
    let (v1, v2) = upstreams().await;
    set_routes(&etcd, "v1", &v1);
    let files = TempDir::new("fleet-secrets");
    let password = files.write("password", "s3cret\n");
    let wrong = files.write("wrong", "guess\n");
    let tls = etcd.tls.as_ref().expect("a TLS etcd");
    let (ca_file, cert, key_file) = (
        tls.ca.to_string_lossy().into_owned(),
        tls.cert.to_string_lossy().into_owned(),
        tls.key.to_string_lossy().into_owned(),
    );
    let url = etcd.url(PREFIX);
    let user = |file: &Path| -> Vec<String> {
        ["--etcd-user", "root", "--etcd-password-file"]
            .iter()
            .map(|s| s.to_string())
            .chain([file.to_string_lossy().into_owned()])
            .collect()
    };
    let mut access: Vec<String> = [
        "--etcd-ca",
        &ca_file,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key_file,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    access.extend(user(&password));
    let args: Vec<&str> = access.iter().map(String::as_str).collect();
    let mut run_args = vec!["--replica-id", "secure"];
    run_args.extend(&args);
    let replica = Replica::start(&url, None, &run_args).await;
    converge_to("v1", &[&replica], Instant::now(), CONVERGE).await;
    let since = Instant::now();
    set_routes(&etcd, "v2", &v2);
    converge_to("v2", &[&replica], since, CONVERGE).await;

    let mut ok = vec!["status", "--config", url.as_str()];
    ok.extend(&args);
    let (code, text, stderr) = wasmgate(&ok);
    assert_eq!(code, 0, "{text}{stderr}");
    assert!(text.contains("secure  revision"), "{text}");

    // Without a client certificate etcd refuses the TLS handshake.
    let mut no_cert: Vec<&str> = vec!["status", "--config", &url, "--etcd-ca", &ca_file];
    let password_args = user(&password);
    no_cert.extend(password_args.iter().map(String::as_str));
    let (code, text, stderr) = wasmgate(&no_cert);
    assert_eq!(code, 1, "without a client certificate: {text}{stderr}");
    assert!(stderr.contains("wasmgate status:"), "{stderr}");

    // A wrong password: etcd's authentication error, named.
    let wrong_args = user(&wrong);
    let mut bad_password: Vec<&str> = vec![
        "status",
        "--config",
        &url,
        "--etcd-ca",
        &ca_file,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key_file,
    ];
    bad_password.extend(wrong_args.iter().map(String::as_str));
    let (code, text, stderr) = wasmgate(&bad_password);
    assert_eq!(code, 1, "a wrong password: {text}{stderr}");
    assert!(
        stderr.to_lowercase().contains("authentication failed"),
        "{stderr}"
    );
    drop(replica);
}

/// WasmPlugin `broken` names a plugin file no replica has: the loader accepts it, only a
/// whole build refuses it.
const BROKEN_PLUGIN: &str = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: broken\nspec:\n  url: missing.wasm\n";

/// A store config that only a whole build refuses (a plugin nobody has) does not take
/// down a replica that restarts with `--etcd-cache`: it serves its cached snapshot,
/// reports the error, and follows the store once it is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_on_a_store_only_a_build_refuses_serves_the_cache() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let (v1, v2) = upstreams().await;
    set_routes(&etcd, "v1", &v1);
    let url = etcd.url(PREFIX);
    let cache = TempDir::new("fleet-cache");
    let first = Replica::start(&url, Some("first"), &["--etcd-cache", cache.arg()]).await;
    converge_to("v1", &[&first], Instant::now(), CONVERGE).await;
    // The snapshot is written just after the apply: wait for it before stopping.
    let snapshot = cache.path().join("snapshot.json");
    let deadline = Instant::now() + CONVERGE;
    while !snapshot.exists() {
        assert!(Instant::now() < deadline, "no {}", snapshot.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first);

    etcd.put(&key("plugin.yaml"), BROKEN_PLUGIN);
    let second = Replica::start(&url, Some("second"), &["--etcd-cache", cache.arg()]).await;
    keeps_serving("v1", &[&second], Duration::from_millis(300)).await;
    let s = wait_status(&url, "the refusal is reported", |s| {
        s.of("second")
            .is_some_and(|r| r.state.starts_with("error:"))
    })
    .await;
    assert!(s.text.contains("missing.wasm"), "{}", s.text);
    assert!(
        second
            .gateway
            .log_text()
            .contains("serving the snapshot --etcd-cache kept"),
        "{}",
        second.gateway.log_text()
    );

    etcd.ctl_ok(&["del", &key("plugin.yaml")]);
    let since = Instant::now();
    set_routes(&etcd, "v2", &v2);
    converge_to("v2", &[&second], since, CONVERGE).await;
}

/// A replica without a cache whose store config is refused at start waits, serving
/// nothing, says why in its status, and starts once a good config is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_cache_a_refused_store_config_is_waited_out() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let v1 = Echo::start("v1").await;
    let port = free_port();
    etcd.put(&key("gw.yaml"), &gateway("gw", port, &["*"]));
    let (bad, _) = bad_routes("v1");
    etcd.txn(&[(&key("vs.yaml"), &bad), (&key("se.yaml"), &backend(&v1))]);
    let url = etcd.url(PREFIX);
    let mut replica = Replica::spawn_from_store(&url, port, &["--replica-id", "patient"]);
    let deadline = Instant::now() + CONVERGE;
    let text = loop {
        let (code, text, stderr) = wasmgate(&["status", "--config", &url]);
        assert_eq!(code, 0, "{text}{stderr}");
        if text.contains("patient  not serving yet  error: revision") {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.contains("etcd:/fleet/vs.yaml"), "{text}");
    assert!(
        !replica.gateway.has_exited(),
        "{}",
        replica.gateway.log_text()
    );
    assert!(
        !replica.gateway.is_ready().await,
        "ready on a refused config"
    );

    let since = Instant::now();
    set_routes(&etcd, "v1", &v1);
    if let Err(log) = replica.gateway.wait_ready(RECONNECT).await {
        panic!("not ready after the fix:\n{log}");
    }
    converge_to("v1", &[&replica], since, RECONNECT).await;
}

/// A value that is not UTF-8 text is refused naming its key, and the replica keeps
/// following: the next good write applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_value_that_is_not_text_is_refused_by_its_key() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let (v1, v2) = upstreams().await;
    set_routes(&etcd, "v1", &v1);
    let url = etcd.url(PREFIX);
    let replica = Replica::start(&url, Some("alpha"), &[]).await;
    converge_to("v1", &[&replica], Instant::now(), CONVERGE).await;

    etcd.put_bytes(&key("junk.yaml"), b"kind: \xff\xfe\n");
    let s = wait_status(&url, "the refusal is reported", |s| {
        s.of("alpha").is_some_and(|r| r.state.starts_with("error:"))
    })
    .await;
    assert!(
        s.text
            .contains("etcd:/fleet/junk.yaml: the value is not UTF-8 text"),
        "{}",
        s.text
    );
    keeps_serving("v1", &[&replica], Duration::from_millis(200)).await;

    etcd.ctl_ok(&["del", &key("junk.yaml")]);
    let since = Instant::now();
    set_routes(&etcd, "v2", &v2);
    converge_to("v2", &[&replica], since, CONVERGE).await;
    let scraped = replica.gateway.scrape().await;
    assert_eq!(
        support::metric(&scraped, "wasmgate_config_store_relists_total"),
        0.0,
        "the watch never broke:\n{scraped}"
    );
}

/// A push's transaction holds only if no config key it read changed meanwhile: the
/// replicas' status writes under `/PREFIX/status/` do not stop it; a kept key changed
/// or deleted, or a config key created, by another writer does, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_fails_whole_when_another_writer_changed_config_meanwhile() {
    use wasmgate::fleet::{Access, StoreUrl, push};
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let v1 = Echo::start("v1").await;
    etcd.put(&key("kept.yaml"), &backend(&v1));
    let url: StoreUrl = etcd.url(PREFIX).parse().expect("url");
    let files = TempDir::new("push-race");
    files.write("vs.yaml", &app_routes("v1", ""));
    let keys = push::keys_of(&url, &[files.path().to_path_buf()]).expect("files");
    let access = Access::default();
    let plan = || push::plan(&url, &access, &keys, false);

    // Status writes meanwhile: the push applies.
    let p = plan().await.expect("plan");
    etcd.put(&key("status/other"), "{}");
    let pushed = p
        .commit()
        .await
        .expect("a status write does not stop a push");
    assert_eq!(pushed.written, 1);
    etcd.ctl_ok(&["del", &key("vs.yaml")]);

    for (what, meddle) in [
        ("a kept key changed", "put"),
        ("a kept key deleted", "del"),
        ("a config key created", "new"),
    ] {
        let p = plan().await.expect("plan");
        match meddle {
            "put" => {
                etcd.put(&key("kept.yaml"), &backend(&v1));
            }
            "del" => {
                etcd.ctl_ok(&["del", &key("kept.yaml")]);
            }
            _ => {
                etcd.put(&key("other.yaml"), &backend(&v1));
            }
        }
        let before = etcd.keys(&key(""));
        let err = p.commit().await.expect_err(what);
        assert!(err.contains("changed while pushing"), "{what}: {err}");
        assert_eq!(etcd.keys(&key("")), before, "{what}: nothing written");
        assert_eq!(etcd.value(&key("vs.yaml")), None, "{what}");
        etcd.put(&key("kept.yaml"), &backend(&v1));
        etcd.ctl_ok(&["del", &key("other.yaml")]);
    }
}

/// Bad etcd flags are refused before anything runs, each naming the flag and what is
/// wrong: a URL without a port or prefix, two etcd sources, an empty password file, a
/// client certificate without the CA to check etcd with.
#[test]
fn bad_etcd_flags_are_refused_by_name() {
    let files = TempDir::new("fleet-flags");
    let empty = files.write("empty", "\n");
    let pem = files.write("x.pem", "");
    let empty = empty.to_string_lossy();
    let pem = pem.to_string_lossy();
    let runs = [
        (
            vec!["run", "--config", "etcd://127.0.0.1/fleet"],
            "endpoint '127.0.0.1' is not HOST:PORT",
        ),
        (
            vec!["run", "--config", "etcd://127.0.0.1:1"],
            "no /PREFIX after the endpoints",
        ),
        (
            vec![
                "run",
                "--config",
                "etcd://127.0.0.1:1/a",
                "--config",
                "etcd://127.0.0.1:1/b",
            ],
            "only one etcd:// source",
        ),
        (
            vec![
                "status",
                "--config",
                "etcd://127.0.0.1:1/a",
                "--etcd-user",
                "root",
                "--etcd-password-file",
                &empty,
            ],
            "the first line is empty",
        ),
        (
            vec![
                "status",
                "--config",
                "etcd://127.0.0.1:1/a",
                "--etcd-cert",
                &pem,
                "--etcd-key",
                &pem,
            ],
            "--etcd-ca",
        ),
    ];
    for (args, expected) in runs {
        let (code, stdout, stderr) = wasmgate(&args);
        assert_ne!(code, 0, "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
    }
}
