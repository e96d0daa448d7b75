//! `cargo bench`: micro-benchmarks of the Wasm policy path, so a regression shows without
//! the nginx/HAProxy rig. Each case times one operation through the real components the
//! gateway embeds (host calls included) and prints ns per operation as the median of
//! several samples with min and max.
//!
//! Under `cargo test` (no `--bench` flag) every case runs a handful of iterations, so the
//! benchmark cannot rot unnoticed: it must still build the snapshot and route correctly.
//!
//! The proxy builds one [`RequestView`] per request (`proxy::request_view`: the request's
//! headers move in, the rest is copied) and the chain runs over it; so does each chain
//! case here, whose time includes building the view and taking the decision and the
//! headers back out of it, as the proxy does. A single policy call is timed over a view
//! built once, as the chain before it left it.
//!
//! `cargo bench -p wasmgate -- upstream` times one request to a loopback origin through
//! the gateway's upstream path (`proxy::upstream::send`: endpoint pick, admission, the
//! HTTP/1.1 pool), beside the same request on one bare hyper connection (the floor) and
//! through hyper-util's pooled client (what the gateway used before its own pool). The
//! origin runs on the same thread, so each case includes its work; the difference from
//! the floor is what the gateway's upstream path (endpoint pick, admission, the pool, the
//! body's wrapper) or hyper-util's client adds. `-- edge` times the request edge's
//! header work.
//!
//! `cargo bench -p wasmgate -- metrics` times what recording one request's metrics costs
//! (`--metrics on` against `off`, the same steps the proxy takes); `bench/run.py
//! --scenarios metrics` shows the same on the whole gateway.

use std::cell::RefCell;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Uri};
use http_body_util::BodyExt;
use wasmgate::plugin::context::Current;
use wasmgate::plugin::types::Action;
use wasmgate::plugin::{CallError, HostSettings, PluginHost, RequestView};
use wasmgate::proxy::run_chain;
use wasmgate::snapshot::{Chain, CompileCache, PluginSources, Snapshot};
use wasmgate::telemetry::metrics::{Metrics, RequestStats};
use wasmgate::telemetry::request::{Observation, Observed};

const PORT: u16 = 8080;

fn gateway() -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: bench\nspec:\n  servers:\n  - port: {{number: {PORT}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: origin\nspec:\n  hosts: [origin.bench.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n  endpoints:\n  - address: 127.0.0.1\n    labels: {{version: v1}}\n  - address: 127.0.0.1\n    labels: {{version: v2}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: origin\nspec:\n  host: origin.bench.local\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n"
    )
}

/// The same VirtualService as scenario 1 of bench/run.py: ten rules, the last one hit,
/// with a weighted split and a 0 % fault.
const REALISTIC: &str = include_str!("realistic-vs.yaml");

/// `n` exact-path rules; the benchmark requests the last.
fn scaled(n: usize) -> String {
    let mut s = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: scale\nspec:\n  hosts: [\"*\"]\n  gateways: [bench]\n  http:\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "  - name: r{i}\n    match: [{{uri: {{exact: /svc/{i}}}}}]\n    route: [{{destination: {{host: origin.bench.local, subset: v{}}}}}]\n",
            1 + i % 2
        ));
    }
    s
}

const EXTRA_PLUGIN: &str = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: add-headers\nspec:\n  url: add-headers.wasm\n  phase: STATS\n  targetRefs:\n  - {group: networking.istio.io, kind: VirtualService, name: shop}\n  pluginConfig:\n    responseHeaders: {x-powered-by: wasmgate}\n";

/// `metrics`: [`metrics_off`] unless a case is about metrics.
async fn snapshot(host: &PluginHost, docs: &[String], metrics: &Arc<Metrics>) -> Snapshot {
    let sources: Vec<(PathBuf, String)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (PathBuf::from(format!("bench-{i}.yaml")), d.clone()))
        .collect();
    let config = wasmgate_config::load_sources(&sources).expect("bench config is valid");
    let plugins = PluginSources {
        dir: Some(PathBuf::from(env!("WASMGATE_BUILT_PLUGINS"))),
    };
    let listening = wasmgate::snapshot::Listening {
        address: std::net::IpAddr::from([127, 0, 0, 1]),
        mesh: None,
        trusted_proxies: 0,
        registry: Default::default(),
        seat: wasmgate::snapshot::registry::Seat {
            namespace: "istio-system".into(),
            ..Default::default()
        },
        arrivals: Default::default(),
    };
    Snapshot::build(
        &config,
        host,
        &plugins,
        &CompileCache::default(),
        &listening,
        metrics,
        None,
    )
    .await
    .expect("bench snapshot builds")
}

/// `wasmgate run --metrics off`.
fn metrics_off() -> Arc<Metrics> {
    Arc::new(Metrics::new(false, "bench", "bench"))
}

fn chain(snapshot: &Snapshot) -> Arc<Chain> {
    let vhost = routes(snapshot)
        .hosts
        .find("bench.local")
        .expect("bench host");
    vhost.chains[0].clone()
}

/// The virtual hosts of the bench's plain HTTP listener.
fn routes(snapshot: &Snapshot) -> &wasmgate::snapshot::listeners::HttpRoutes {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], PORT));
    snapshot
        .listeners
        .get(&addr)
        .and_then(|l| l.http_routes(None))
        .expect("bench listener")
}

/// wrk's request as the proxy holds it when the chain runs. Its headers are moved into
/// each view and back out, as the proxy moves them: no copy of the bench's own.
struct Request {
    method: Method,
    uri: Uri,
    headers: RefCell<HeaderMap>,
}

impl Request {
    fn get(path: &str) -> Self {
        Request {
            method: Method::GET,
            uri: path.parse().expect("a request target"),
            headers: RefCell::new(wrk_headers()),
        }
    }

    fn with_header(self, name: &'static str, value: &str) -> Self {
        self.headers.borrow_mut().insert(
            name,
            http::HeaderValue::from_str(value).expect("a header value"),
        );
        self
    }

    /// The request's view, built as `proxy::request_view` builds one per request.
    fn view(&self) -> Arc<RequestView> {
        let headers = std::mem::take(&mut *self.headers.borrow_mut());
        Arc::new(RequestView::new(
            http::HeaderValue::from_static("5f0b8d4e-7c1a-4d8e-9a57-3f1f2b8c9d10"),
            self.method.clone(),
            "http",
            http::HeaderValue::from_static("bench.local"),
            self.uri.clone(),
            headers,
            std::net::IpAddr::from([127, 0, 0, 1]),
            PORT,
            None,
            None,
            None,
        ))
    }

    /// The chain is done with `view`: its decision is taken and its headers go back into
    /// the request, as `proxy::serve` does when no later phase keeps the view.
    fn done(&self, mut view: Arc<RequestView>) -> Current {
        let decision = view.state().decided(false).decision;
        *self.headers.borrow_mut() = match Arc::get_mut(&mut view) {
            Some(v) => std::mem::take(&mut v.headers),
            None => view.headers.clone(),
        };
        decision
    }

    /// One request through `chain`, view included: what the proxy does per request
    /// before acting on the decision.
    async fn route(&self, chain: &Chain) -> Current {
        let view = self.view();
        run_chain(chain, &view, None).await.expect("chain runs");
        self.done(view)
    }
}

/// What wrk sends besides the request line and `Host`.
fn wrk_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", http::HeaderValue::from_static("wrk"));
    headers.insert("accept", http::HeaderValue::from_static("*/*"));
    headers
}

/// Timing loop: `samples` samples of `iters` iterations each.
struct Bencher {
    full: bool,
    filter: Option<String>,
}

impl Bencher {
    /// Is the case `name` run (the command line's filter)?
    fn selected(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    /// Times `op`; the median ns per operation (`None` under `cargo test` or filtered out).
    async fn run<F, Fut>(&self, name: &str, mut op: F) -> Option<f64>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        if !self.selected(name) {
            return None;
        }
        if !self.full {
            for _ in 0..3 {
                op().await;
            }
            println!("{name}: ok");
            return None;
        }
        // Warm up and size a sample to about 100 ms.
        let started = Instant::now();
        let mut calibrate = 0u64;
        while started.elapsed() < Duration::from_millis(200) {
            op().await;
            calibrate += 1;
        }
        let iters = (calibrate / 2).max(1);
        let mut per_op: Vec<f64> = Vec::new();
        // WASMGATE_BENCH_SAMPLES=200 keeps a case running long enough to profile.
        let samples: usize = std::env::var("WASMGATE_BENCH_SAMPLES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(15);
        for _ in 0..samples {
            let t = Instant::now();
            for _ in 0..iters {
                op().await;
            }
            per_op.push(t.elapsed().as_nanos() as f64 / iters as f64);
        }
        per_op.sort_by(f64::total_cmp);
        let median = per_op[per_op.len() / 2];
        println!(
            "{name:<44} {median:>9.0} ns/op  [{:.0}–{:.0}]",
            per_op[0],
            per_op[per_op.len() - 1]
        );
        Some(median)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bencher = Bencher {
        full: args.iter().any(|a| a == "--bench"),
        filter: args.iter().find(|a| !a.starts_with('-')).cloned(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(benches(bencher));
}

async fn benches(b: Bencher) {
    let host = PluginHost::new(&HostSettings {
        random_seed: Some(1),
        ..HostSettings::default()
    })
    .expect("plugin host");
    let off = metrics_off();

    // One policy call through each first-party component, on the realistic config.
    let snap = snapshot(&host, &[gateway(), REALISTIC.to_string()], &off).await;
    let realistic = chain(&snap);
    let req = Request::get("/bench/item");
    let routed = req.route(&realistic).await;
    assert!(
        routed.forward().is_some() && routed.destinations().len() == 1,
        "the realistic chain forwards to one destination: {routed:?}"
    );
    // Each policy sees the decision the links before it made: one view goes along the
    // chain, each call timed over it before its edit is applied. A call only reads the
    // view (the edit it returns is applied by the chain), so every iteration sees the same.
    let names = ["router", "fault", "traffic-split"];
    let view = req.view();
    view.start_chain(&realistic.names);
    for (link, name) in realistic.links.iter().zip(names) {
        assert!(link.policy.plugin_name().ends_with(name), "chain order");
        b.run(&format!("policy call: {name}"), || async {
            black_box(link.policy.on_request(&view).await.expect("policy call"));
        })
        .await;
        let mut edit = link.policy.on_request(&view).await.expect("call");
        // The chain holds the router's pick back to the split's place (proxy/chain.rs):
        // left out here, so that the split is timed on both weighted destinations.
        if name == "router" {
            edit.pick = None;
        }
        view.state().apply(edit);
    }
    let walked = req.done(view);
    assert!(
        walked.forward().is_some()
            && walked.destinations().len() == 1
            && walked.route.as_ref().map(|r| r.index) == routed.route.as_ref().map(|r| r.index),
        "the calls one by one decide as the chain does: {walked:?}"
    );
    b.run("chain: router+fault+split (10 rules)", || async {
        black_box(req.route(&realistic).await);
    })
    .await;
    // The view's share of each chain case: built, its decision and headers taken back.
    b.run("request view: build and take back", || async {
        black_box(req.done(black_box(req.view())));
    })
    .await;

    // One extra user plugin in the chain.
    let plugin = snapshot(
        &host,
        &[gateway(), REALISTIC.to_string(), EXTRA_PLUGIN.to_string()],
        &off,
    )
    .await;
    let with_plugin = chain(&plugin);
    assert_eq!(with_plugin.links.len(), 4, "add-headers joins the chain");
    b.run("chain: + add-headers user plugin", || async {
        black_box(req.route(&with_plugin).await);
    })
    .await;
    drop(plugin);

    // Istio's security policies: a JWT verified (ES256, cached after the first request,
    // as every later one with the same token is) and an ALLOW policy on its principal.
    let (jwks, token) = es256_token();
    let secured = snapshot(
        &host,
        &[gateway(), REALISTIC.to_string(), security_policies(&jwks)],
        &off,
    )
    .await;
    let guarded = chain(&secured);
    assert_eq!(guarded.links.len(), 5, "jwt-authn and authz join the chain");
    let authed =
        Request::get("/bench/item").with_header("authorization", &format!("Bearer {token}"));
    let d = authed.route(&guarded).await;
    assert!(d.forward().is_some(), "the token passes: {d:?}");
    assert!(
        matches!(&*req.route(&guarded).await.action, Action::Respond(r) if r.status == 403),
        "without it, 403"
    );
    b.run(
        "chain: + RequestAuthentication + AuthorizationPolicy",
        || async {
            black_box(authed.route(&guarded).await);
        },
    )
    .await;
    drop(secured);

    // Route matching: the request matches the last of n routes.
    for n in [10usize, 100, 1000] {
        let snap = snapshot(&host, &[gateway(), scaled(n)], &off).await;
        let c = chain(&snap);
        let req = Request::get(&format!("/svc/{}", n - 1));
        let d = req.route(&c).await;
        assert_eq!(
            d.route.as_ref().map(|r| r.index as usize),
            Some(n - 1),
            "the last route matches"
        );
        let router = &c.links[0];
        // The router sees no route so far, as the first link of every chain does.
        let view = req.view();
        view.start_chain(&c.names);
        b.run(
            &format!("route matching: {n} routes (router call)"),
            || async {
                black_box(router.policy.on_request(&view).await.expect("call"));
            },
        )
        .await;
        req.done(view);
    }

    b.run("virtual host lookup", || async {
        black_box(routes(&snap).hosts.find(black_box("bench.local")));
    })
    .await;

    metrics_cases(&b, &host, &req).await;
    upstream_cases(&b, &host, &off).await;
    edge_case(&b).await;
}

/// The request edge's header work on scenario 1's request head, as `proxy::serve` does
/// it: the head checks (one `Host`, agreeing with the target), path normalization
/// (Istio's default, `BASE`), the names scanned once (`headers::Seen`), the upgrade
/// check, hop-by-hop headers stripped, `x-request-id`, `x-forwarded-for` and
/// `x-forwarded-proto` set, a client's `x-forwarded-client-cert` dropped (the case's
/// name says so since 2026-12-05; before, it stopped at the forwarded headers). Each
/// iteration starts from a copy of the head as hyper parsed it (the copy is included).
async fn edge_case(b: &Bencher) {
    use wasmgate::proxy::{edge, headers};
    let mut head = wrk_headers();
    head.insert(
        http::header::HOST,
        http::HeaderValue::from_static("bench.local:8080"),
    );
    let parsed = http::Request::get("/bench/item")
        .body(())
        .expect("request head");
    let client = std::net::IpAddr::from([127, 0, 0, 1]);
    let ids = wasmgate::entropy::OsRandom;
    b.run(
        "edge: head checks, path, hop-by-hop, forwarded, client cert",
        || async {
            let mut req = http::Request::new(());
            *req.uri_mut() = parsed.uri().clone();
            *req.headers_mut() = head.clone();
            edge::check_head(&req, None).expect("a sound head");
            let changed = edge::normalize_path(&mut req, Default::default()).expect("a sound path");
            assert!(changed.is_none(), "the path is already normal");
            // As `proxy::serve` takes them: the names scanned once, then each step.
            let seen = headers::Seen::scan(req.headers());
            assert!(headers::upgrade_request(req.headers(), seen).is_none());
            headers::strip_seen_hop_by_hop(req.headers_mut(), seen);
            let id = headers::edge_headers(req.headers_mut(), seen, client, "http", &ids);
            headers::client_cert_header(req.headers_mut(), seen, None);
            assert!(req.headers().contains_key("x-forwarded-for"));
            black_box((id, req));
        },
    )
    .await;
}

/// What `--metrics on` adds to one request of scenario 1 (router, fault, split), step
/// by step as `proxy::handle` takes them: an [`Observation`] of the request head; each
/// link's call timed (two clock reads) and counted in its plugin's stats, as `run_chain`
/// does; the route's and the destination's series taken; `finish` on the response head,
/// which wraps the body (every response is wrapped, unboxed); and the body sent to its end, when Istio's
/// request metrics and the route's are recorded. The baseline is what the response
/// costs either way (its boxed body polled to the end); `on − off` is the price.
async fn metrics_cases(b: &Bencher, host: &PluginHost, req: &Request) {
    const ON: &str = "metrics on: record one request";
    const OFF: &str = "metrics off: the same response, not recorded";
    const CHAIN: &str = "metrics on: chain router+fault+split";
    if ![ON, OFF, CHAIN].iter().any(|n| b.selected(n)) {
        return;
    }
    let metrics = Arc::new(Metrics::new(true, "bench", "bench"));
    let snap = snapshot(host, &[gateway(), REALISTIC.to_string()], &metrics).await;
    let chain = chain(&snap);
    let routed = req.route(&chain).await;
    let route = routed
        .route
        .as_ref()
        .and_then(|r| chain.route_stats.get(r.index as usize))
        .cloned()
        .expect("the route has its series");
    let destination: Arc<RequestStats> = snap
        .registry
        .resolve("origin.bench.local", Some(80), Some("v1"))
        .expect("the origin's cluster")
        .stats
        .clone();
    let plugins: Vec<_> = chain
        .links
        .iter()
        .map(|l| {
            l.stats
                .clone()
                .expect("each link has stats with metrics on")
        })
        .collect();
    assert_eq!(plugins.len(), 3, "router, fault, traffic split");

    // wrk's request and the origin's response, as they cross the gateway.
    // An empty body, as hyper gives a GET without one (its size hint: exactly 0).
    let mut request = http::Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    *request.uri_mut() = http::Uri::from_static("/bench/item");
    request.headers_mut().extend(wrk_headers());
    request
        .headers_mut()
        .insert("host", http::HeaderValue::from_static("bench.local"));
    let mut response = http::Response::new(());
    for (name, value) in [
        ("server", "nginx/1.22.1"),
        ("date", "Wed, 02 Dec 2026 03:00:00 GMT"),
        ("content-type", "text/plain"),
        ("content-length", "18"),
    ] {
        response
            .headers_mut()
            .insert(name, http::HeaderValue::from_static(value));
    }
    // The head is moved in and out of each response: no allocation of the bench's own.
    let head = RefCell::new(Some(response.into_parts().0));
    let respond = |on: bool| {
        let (request, head, metrics) = (&request, &head, &metrics);
        let (route, destination, plugins) = (&route, &destination, &plugins);
        async move {
            // `handle` reads the clock when a request arrives, metrics on or off.
            let started = black_box(Instant::now());
            let parts = head.borrow_mut().take().expect("the response head");
            let body = wasmgate::proxy::full(b"hello from origin\n".as_slice());
            let response = http::Response::from_parts(parts, body);
            let response = if on {
                let mut observe = Observation::start(started, request, None);
                // The router alone: it draws the fault and the pick, so neither the fault
                // nor the split link is called for its route.
                for stats in &plugins[..1] {
                    let t0 = Instant::now();
                    let called: Result<(), CallError> = Ok(());
                    stats.record(&called, t0.elapsed());
                }
                observe.route = Some(route.clone());
                observe.destination = Some(destination.clone());
                observe.finish(metrics, &[], response, None)
            } else {
                response.map(Observed::plain)
            };
            let (parts, mut body) = response.into_parts();
            while let Some(frame) = body.frame().await {
                black_box(frame.expect("the body"));
            }
            drop(body);
            *head.borrow_mut() = Some(parts);
        }
    };
    let requests = || route.by_class[1].load(Ordering::Relaxed);
    let before = requests();
    let on = b.run(ON, || respond(true)).await;
    if b.selected(ON) {
        assert!(requests() > before, "the route's 2xx counter counts");
        assert!(
            metrics.render().contains("destination_version=\"v1\""),
            "Istio's series of the destination is recorded"
        );
    }
    let off = b.run(OFF, || respond(false)).await;
    if let (Some(on), Some(off)) = (on, off) {
        println!("{:<44} {:>9.0} ns/request", "metrics: on − off", on - off);
    }

    let calls = || plugins[0].calls.load(Ordering::Relaxed);
    let before = calls();
    b.run(CHAIN, || async {
        black_box(req.route(&chain).await);
    })
    .await;
    if b.selected(CHAIN) {
        assert!(calls() > before, "the router's calls are counted");
    }
}

/// An ES256 key made here: its JWKS and a token from it (`iss: bench`, `sub: user`).
fn es256_token() -> (String, String) {
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("key");
    let point = pair.public_key().as_ref();
    let jwks = format!(
        r#"{{"keys":[{{"kty":"EC","crv":"P-256","alg":"ES256","kid":"k","x":"{}","y":"{}"}}]}}"#,
        b64url(&point[1..33]),
        b64url(&point[33..65])
    );
    let header = b64url(br#"{"alg":"ES256","typ":"JWT","kid":"k"}"#);
    let payload = b64url(br#"{"iss":"bench","sub":"user","exp":4102444800}"#);
    let input = format!("{header}.{payload}");
    let sig = pair.sign(&rng, input.as_bytes()).expect("sign");
    (jwks, format!("{input}.{}", b64url(sig.as_ref())))
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// A RequestAuthentication with `jwks` inline and an ALLOW policy on its principal, both
/// namespace-wide in the bench's namespace.
fn security_policies(jwks: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\nspec:\n  jwtRules:\n  - issuer: bench\n    jwks: '{jwks}'\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: require-jwt\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source: {{requestPrincipals: [bench/user]}}\n"
    )
}

/// One request to a loopback origin through the upstream path, against a bare hyper
/// connection and hyper-util's pooled client (module docs).
async fn upstream_cases(b: &Bencher, host: &PluginHost, off: &Arc<Metrics>) {
    const FLOOR: &str = "upstream: one hyper connection, no pool";
    const POOL: &str = "upstream: proxy::upstream::send, HTTP/1.1 pool";
    const LEGACY: &str = "upstream: hyper-util pooled client (before)";
    if ![FLOOR, POOL, LEGACY].iter().any(|n| b.selected(n)) {
        return;
    }
    let (origin, accepted) = loopback_origin().await;
    let port = origin.port();
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: loopback\nspec:\n  hosts: [loopback.bench.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {port}}}\n"
    );
    let snap = snapshot(host, &[gateway(), entry], off).await;
    let cluster = snap
        .registry
        .resolve("loopback.bench.local", Some(80), None)
        .expect("the loopback origin's cluster");
    // wrk's request head and `Host`, rebuilt per request in each case (the gateway adds
    // `x-request-id` and `x-forwarded-*` too; the edge case below times those).
    let head = || {
        let mut h = wrk_headers();
        h.insert(
            http::header::HOST,
            http::HeaderValue::from_static("loopback.bench.local"),
        );
        h
    };

    // The floor: one connection (TCP_NODELAY, as the pool's), hyper's client, nothing
    // pooled or picked.
    if b.selected(FLOOR) {
        let tcp = tokio::net::TcpStream::connect(origin)
            .await
            .expect("connect to the origin");
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        // One request at a time: each iteration takes the sender and puts it back.
        let sender = std::cell::Cell::new(Some(sender));
        b.run(FLOOR, || async {
            let mut req = http::Request::new(wasmgate::proxy::empty());
            *req.uri_mut() = Uri::from_static("/bench");
            *req.headers_mut() = head();
            let mut s = sender.take().expect("the sender is back");
            s.ready().await.expect("connection ready");
            let resp = s.send_request(req).await.expect("response");
            sender.set(Some(s));
            read_ok(resp).await;
        })
        .await;
    }

    // The gateway's path: the cluster picks the endpoint, admits the request, and the
    // worker's pool lends a connection that the body's end gives back.
    let upstream = wasmgate::proxy::Upstream::new();
    let random = wasmgate::plugin::Random::new(Some(1));
    let before = accepted.load(Ordering::Relaxed);
    b.run(POOL, || async {
        let out = wasmgate::proxy::upstream::Outbound {
            method: Method::GET,
            version: http::Version::HTTP_11,
            path_and_query: http::uri::PathAndQuery::from_static("/bench"),
            headers: head(),
            body: None,
        };
        let mut attempted = wasmgate::proxy::upstream::Attempted::default();
        let resp = wasmgate::proxy::upstream::send(
            &upstream,
            &cluster,
            &random,
            None,
            out,
            None,
            &wasmgate::proxy::upstream::DEFAULT_RETRIES,
            &mut attempted,
        )
        .await
        .expect("upstream response");
        read_ok(resp).await;
    })
    .await;
    if b.selected(POOL) {
        assert_eq!(
            accepted.load(Ordering::Relaxed) - before,
            1,
            "one pooled connection carried every request"
        );
    }

    // What the gateway used before its own pool (still its OTLP exporter's client), set
    // up as the gateway had it: TCP_NODELAY, a 60 s idle timeout, 1,024 idle connections
    // per host, tokio's timer.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let legacy = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build::<_, wasmgate::proxy::Body>(connector);
    let uri: Uri = format!("http://{origin}/bench")
        .parse()
        .expect("origin URI");
    b.run(LEGACY, || async {
        let mut req = http::Request::new(wasmgate::proxy::empty());
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = head();
        let resp = legacy.request(req).await.expect("response");
        read_ok(resp).await;
    })
    .await;
}

/// A `200` read to its end.
async fn read_ok<B>(resp: http::Response<B>)
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    assert_eq!(resp.status(), http::StatusCode::OK, "the origin answers");
    black_box(resp.into_body().collect().await.expect("body").to_bytes());
}

/// An HTTP/1.1 origin on a free loopback port, on this thread's runtime: `200 ok` to
/// every request; and how many connections it accepted.
async fn loopback_origin() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the origin");
    let addr = listener.local_addr().expect("origin address");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(tcp),
                hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                }),
            ));
        }
    });
    (addr, accepted)
}
