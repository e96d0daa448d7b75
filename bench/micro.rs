//! `cargo bench`: micro-benchmarks of the Wasm policy path, so a regression shows without
//! the nginx/HAProxy rig. Each case times one operation through the real components the
//! gateway embeds (host calls included) and prints ns per operation as the median of
//! several samples with min and max.
//!
//! Under `cargo test` (no `--bench` flag) every case runs a handful of iterations, so the
//! benchmark cannot rot unnoticed: it must still build the snapshot and route correctly.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use wasmgate::plugin::types::{Action, Decision};
use wasmgate::plugin::{HostSettings, PluginHost};
use wasmgate::proxy::headers::{HeadParts, request_head};
use wasmgate::proxy::run_chain;
use wasmgate::snapshot::{Chain, CompileCache, PluginSources, Snapshot};

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

async fn snapshot(host: &PluginHost, docs: &[String]) -> Snapshot {
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
    };
    let metrics = std::sync::Arc::new(wasmgate::telemetry::metrics::Metrics::new(
        false, "bench", "bench",
    ));
    Snapshot::build(
        &config,
        host,
        &plugins,
        &CompileCache::default(),
        &listening,
        &metrics,
        None,
    )
    .await
    .expect("bench snapshot builds")
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

struct Request {
    method: &'static str,
    path: String,
    headers: HeaderMap,
}

impl Request {
    fn get(path: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", http::HeaderValue::from_static("wrk"));
        headers.insert("accept", http::HeaderValue::from_static("*/*"));
        Request {
            method: "GET",
            path: path.to_string(),
            headers,
        }
    }

    fn parts(&self) -> HeadParts<'_> {
        HeadParts {
            id: "5f0b8d4e-7c1a-4d8e-9a57-3f1f2b8c9d10",
            method: self.method,
            scheme: "http",
            authority: "bench.local",
            path: &self.path,
            query: "",
            headers: &self.headers,
            port: PORT,
        }
    }
}

fn no_route() -> Decision {
    Decision {
        route: None,
        delay_ms: None,
        action: Action::NoRoute,
        log_fields: Vec::new(),
    }
}

/// Timing loop: `samples` samples of `iters` iterations each.
struct Bencher {
    full: bool,
    filter: Option<String>,
}

impl Bencher {
    async fn run<F, Fut>(&self, name: &str, mut op: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        if self.filter.as_deref().is_some_and(|f| !name.contains(f)) {
            return;
        }
        if !self.full {
            for _ in 0..3 {
                op().await;
            }
            println!("{name}: ok");
            return;
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
        println!(
            "{name:<44} {:>9.0} ns/op  [{:.0}–{:.0}]",
            per_op[per_op.len() / 2],
            per_op[0],
            per_op[per_op.len() - 1]
        );
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

    // One policy call through each first-party component, on the realistic config.
    let snap = snapshot(&host, &[gateway(), REALISTIC.to_string()]).await;
    let realistic = chain(&snap);
    let req = Request::get("/bench/item");
    let parts = req.parts();
    let routed = run_chain(&realistic, &parts, None)
        .await
        .expect("chain runs");
    assert!(
        matches!(&routed.action, Action::Forward(f) if f.destinations.len() == 1),
        "the realistic chain forwards to one destination: {routed:?}"
    );
    let names = ["router", "fault", "traffic-split"];
    let mut current = no_route();
    for (link, name) in realistic.links.iter().zip(names) {
        assert!(link.policy.plugin_name().ends_with(name), "chain order");
        let head = request_head(
            &parts,
            &link.interest,
            &realistic.gateway,
            &realistic.virtual_service,
        );
        let input = current.clone();
        b.run(&format!("policy call: {name}"), || async {
            black_box(
                link.policy
                    .on_request(&head, &input)
                    .await
                    .expect("policy call"),
            );
        })
        .await;
        if let Some(next) = link.policy.on_request(&head, &current).await.expect("call") {
            current = next;
        }
    }
    b.run("chain: router+fault+split (10 rules)", || async {
        black_box(run_chain(&realistic, &parts, None).await.expect("chain"));
    })
    .await;
    b.run("request head: build (no headers)", || async {
        black_box(request_head(
            &parts,
            &realistic.links[0].interest,
            &realistic.gateway,
            &realistic.virtual_service,
        ));
    })
    .await;

    // One extra user plugin in the chain.
    let plugin = snapshot(
        &host,
        &[gateway(), REALISTIC.to_string(), EXTRA_PLUGIN.to_string()],
    )
    .await;
    let with_plugin = chain(&plugin);
    assert_eq!(with_plugin.links.len(), 4, "add-headers joins the chain");
    b.run("chain: + add-headers user plugin", || async {
        black_box(run_chain(&with_plugin, &parts, None).await.expect("chain"));
    })
    .await;
    drop(plugin);

    // Route matching: the request matches the last of n routes.
    for n in [10usize, 100, 1000] {
        let snap = snapshot(&host, &[gateway(), scaled(n)]).await;
        let c = chain(&snap);
        let req = Request::get(&format!("/svc/{}", n - 1));
        let parts = req.parts();
        let d = run_chain(&c, &parts, None).await.expect("chain");
        assert_eq!(
            d.route.as_ref().map(|r| r.index as usize),
            Some(n - 1),
            "the last route matches"
        );
        let router = &c.links[0];
        let head = request_head(&parts, &router.interest, &c.gateway, &c.virtual_service);
        let empty = no_route();
        b.run(
            &format!("route matching: {n} routes (router call)"),
            || async {
                black_box(router.policy.on_request(&head, &empty).await.expect("call"));
            },
        )
        .await;
    }

    b.run("virtual host lookup", || async {
        black_box(routes(&snap).hosts.find(black_box("bench.local")));
    })
    .await;
}
