//! The running gateway: loads config and plugins into a snapshot, binds one listener per
//! socket address of its Gateway servers (bind address and port), serves the admin
//! endpoint, and reloads on SIGHUP or `POST /reload`. A reload builds a whole new snapshot beside the old one and swaps it
//! only when everything (config, plugins, new listeners) is good; otherwise it logs why
//! and the gateway keeps serving its last good config. The span exporter is started once;
//! each snapshot gets its own tracer (Telemetry may change sampling and tags on reload).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::cluster::warmup::Arrivals;
use crate::listener::Running;
use crate::plugin::{HostSettings, PluginHost};
use crate::proxy::{Shared, Upstream};
use crate::snapshot::{CompileCache, Listening, MeshListener, PluginSources, Snapshot};
use crate::telemetry::access::{
    AccessLog, Destination as AccessDestination, Format as AccessFormat,
};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::overrides::{self, TraceBase};
use crate::telemetry::trace::{Exporter, ExporterConfig};
use crate::workers::Workers;

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: Vec<PathBuf>,
    /// YAML texts from a config store (`--config etcd://...`), loaded after the files:
    /// the ones the gateway starts with ([`Gateway::apply_documents`] replaces them).
    pub documents: Arc<Documents>,
    /// Started with instead of `documents` when those fail the build (`--etcd-cache`'s
    /// last good snapshot).
    pub fallback_documents: Option<Arc<Documents>>,
    pub plugins: Option<PathBuf>,
    pub admin: SocketAddr,
    /// Address listeners bind to unless a Gateway server sets `bind`.
    pub listen_address: IpAddr,
    /// Where the Gateways generated for Kubernetes Ingresses listen.
    pub ingress: wasmgate_config::ingress::IngressPorts,
    /// `--mesh-listener`: where VirtualServices bound to `mesh` serve applications.
    pub mesh: Option<MeshListener>,
    pub host: HostSettings,
    /// `--plugin-host-env`: environment variables WasmPlugins may pass on with
    /// `valueFrom: HOST`.
    pub plugin_host_env: Vec<String>,
    /// How long a listener that a reload removes keeps serving its open connections.
    pub drain: Duration,
    /// `--path-normalization` and `--allow-upgrade`: how the request edge behaves.
    pub edge: crate::proxy::edge::EdgeSettings,
    /// `--metrics`: record metrics on the request path.
    pub metrics: bool,
    /// The gateway's own workload name and namespace (`source_workload` in metrics).
    pub workload: (String, String),
    /// `--otlp-endpoint` and `--trace-sampling`: tracing, when an endpoint is given.
    pub tracing: Option<(String, f64)>,
    /// `--jwks-refresh-seconds`: how long keys fetched from a `jwksUri` are kept.
    pub jwks_refresh: Duration,
    /// `--access-log-format` and `--access-log`.
    pub access_log: (AccessFormat, AccessDestination),
    /// `--workers`: threads serving connections, each with its own accept queue.
    pub workers: usize,
    /// `--max-connections` and the other bounds (`limits.rs`).
    pub limits: crate::limits::Settings,
    /// `--locality`: where this gateway is (`region/zone/subzone`), for
    /// locality-aware load balancing; empty when not given.
    pub locality: String,
    /// `--network` and `--workload-labels`: what `failoverPriority` compares
    /// endpoints with.
    pub network: String,
    pub workload_labels: BTreeMap<String, String>,
}

/// YAML texts not read from files, each with the name its errors give (`etcd:/prefix/key`).
pub type Documents = Vec<(PathBuf, String)>;

/// Load config (the files of `options`, then `documents`) and build a snapshot (with a
/// tracer when `tracing` is given). Errors are complete lines (file, resource, field).
pub async fn load(
    options: &Options,
    documents: &[(PathBuf, String)],
    host: &PluginHost,
    cache: &CompileCache,
    metrics: &Arc<Metrics>,
    tracing: Option<&TraceBase>,
    arrivals: &Arc<Arrivals>,
) -> Result<Snapshot, Vec<String>> {
    let config = load_config(options, documents)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let sources = PluginSources {
        dir: options.plugins.clone(),
    };
    let listening = Listening {
        address: options.listen_address,
        mesh: options.mesh.clone(),
        trusted_proxies: options.edge.trusted_proxies,
        registry: crate::snapshot::registry::Bounds {
            max_connections: options.limits.max_upstream_connections,
            max_clusters: options.limits.max_clusters,
        },
        seat: crate::snapshot::registry::Seat {
            namespace: options.workload.1.clone(),
            locality: options.locality.clone(),
            network: options.network.clone(),
            labels: options.workload_labels.clone(),
        },
        arrivals: arrivals.clone(),
    };
    Snapshot::build(&config, host, &sources, cache, &listening, metrics, tracing)
        .await
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

/// The first step of [`load`]: read and validate the config (the files of `options`,
/// then `documents`), without building anything. Errors are complete lines.
pub fn load_config(
    options: &Options,
    documents: &[(PathBuf, String)],
) -> Result<wasmgate_config::Config, Vec<String>> {
    let load_options = wasmgate_config::LoadOptions {
        ingress: options.ingress,
        host_env: options.plugin_host_env.iter().cloned().collect(),
        workload_namespace: wasmgate_config::WorkloadNamespace(options.workload.1.clone()),
    };
    wasmgate_config::load_with_documents(&options.config, documents, &load_options)
        .map_err(|errors| errors.0.iter().map(ToString::to_string).collect())
}

/// The span exporter, one per process: spans go to `endpoint` from a background task,
/// the export counters to `/stats/prometheus`. Every snapshot's tracer shares it.
fn exporter(endpoint: &str, service: &str, metrics: &Metrics) -> Result<Exporter, String> {
    let (exporter, _task) = Exporter::spawn(ExporterConfig::new(endpoint, service))
        .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    let stats = exporter.stats().clone();
    metrics.add_family(move |out| {
        use std::fmt::Write as _;
        for (name, help, value) in [
            (
                "wasmgate_trace_spans_exported_total",
                "Spans the collector accepted.",
                stats.exported(),
            ),
            (
                "wasmgate_trace_spans_dropped_total",
                "Spans dropped because the export queue was full.",
                stats.dropped(),
            ),
            (
                "wasmgate_trace_export_failures_total",
                "Export requests that failed.",
                stats.export_failures(),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
    });
    Ok(exporter)
}

/// The bounds' counts: connections open and refused, mirrors dropped, delays cut.
fn limit_metrics(limits: &Arc<crate::limits::Limits>, metrics: &Metrics) {
    let limits = limits.clone();
    metrics.add_family(move |out| {
        use std::fmt::Write as _;
        use std::sync::atomic::Ordering;
        let open = "wasmgate_downstream_connections_open";
        crate::telemetry::metrics::header(
            out,
            open,
            "gauge",
            "Downstream connections open, all listeners (bounded by --max-connections).",
        );
        let _ = writeln!(out, "{open} {}", limits.connections_open());
        for (name, help, value) in [
            (
                "wasmgate_downstream_connections_refused_total",
                "Connections closed at accept: --max-connections or --max-connections-per-listener reached.",
                &limits.connections_refused,
            ),
            (
                "wasmgate_mirrors_dropped_total",
                "Mirror requests not sent: --max-mirrors were in flight.",
                &limits.mirrors_dropped,
            ),
            (
                "wasmgate_delays_capped_total",
                "Delays (faults, plugins) cut to --max-delay-ms.",
                &limits.delays_capped,
            ),
        ] {
            crate::telemetry::metrics::header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
    });
}

/// `wasmgate_worker_connections_accepted_total`: how the kernel spread connections over
/// the workers' accept queues.
fn worker_metrics(workers: &Workers, metrics: &Metrics) {
    let counts = workers.accept_counts().clone();
    // The workers' runtimes and this (the control plane's): tasks alive in each.
    let mut runtimes: Vec<(String, tokio::runtime::Handle)> = workers
        .handles()
        .iter()
        .enumerate()
        .map(|(i, h)| (i.to_string(), h.clone()))
        .collect();
    if let Ok(own) = tokio::runtime::Handle::try_current() {
        runtimes.push(("control".into(), own));
    }
    metrics.add_family(move |out| {
        use std::fmt::Write as _;
        let name = "wasmgate_runtime_tasks_alive";
        crate::telemetry::metrics::header(
            out,
            name,
            "gauge",
            "Tasks alive in each runtime (workers and the control plane): a leak shows here.",
        );
        for (runtime, handle) in &runtimes {
            let _ = writeln!(
                out,
                "{name}{{runtime=\"{runtime}\"}} {}",
                handle.metrics().num_alive_tasks()
            );
        }
    });
    metrics.add_family(move |out| {
        use std::fmt::Write as _;
        let name = "wasmgate_worker_connections_accepted_total";
        crate::telemetry::metrics::header(
            out,
            name,
            "counter",
            "Downstream connections each worker accepted (--workers).",
        );
        for (worker, count) in counts.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{worker=\"{worker}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
    });
}

/// `wasmgate_plugin_breaker_*`: each binding's breaker, read when rendered.
fn breaker_metrics(host: &PluginHost, metrics: &Metrics) {
    let host = host.clone();
    metrics.add_family(move |out| {
        use crate::plugin::Breaker;
        use crate::plugin::breaker::State;
        use std::fmt::Write as _;
        let breakers = host.breakers();
        let labels = |(plugin, vs): &(String, String)| {
            format!(
                "plugin=\"{}\",virtual_service=\"{}\"",
                crate::telemetry::metrics::escape(plugin),
                crate::telemetry::metrics::escape(vs)
            )
        };
        type Family = (&'static str, &'static str, &'static str, fn(&Breaker) -> u64);
        let families: [Family; 3] = [
            (
                "wasmgate_plugin_breaker_open",
                "gauge",
                "1 while the plugin is quarantined on the VirtualService (breaker open or probing).",
                |b| u64::from(b.state() != State::Closed),
            ),
            (
                "wasmgate_plugin_breaker_opened_total",
                "counter",
                "Times the breaker opened after consecutive traps (a failed probe counts).",
                Breaker::opened,
            ),
            (
                "wasmgate_plugin_quarantined_total",
                "counter",
                "Requests that did not call the plugin because its breaker was open.",
                Breaker::skipped,
            ),
        ];
        for (name, kind, help, value) in families {
            crate::telemetry::metrics::header(out, name, kind, help);
            for (key, breaker) in &breakers {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(key), value(breaker));
            }
        }
    });
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    options: Options,
    shared: Arc<Shared>,
    cache: CompileCache,
    /// What each snapshot's tracer is built from (`--otlp-endpoint`, `--trace-sampling`).
    tracing: TraceBase,
    /// When endpoints joined the config, across reloads (slow start).
    arrivals: Arc<Arrivals>,
    /// The threads that accept and serve connections (`--workers`).
    workers: Workers,
    /// One per socket address of the current snapshot.
    listeners: Mutex<BTreeMap<SocketAddr, Running>>,
    /// One reload at a time: a later request waits, then reads the files again. Holds
    /// the config store's documents of the snapshot being served.
    reloading: Mutex<Arc<Documents>>,
    ready: AtomicBool,
}

impl Gateway {
    /// Load everything and bind every listener; fails with all the reasons.
    pub async fn start(options: Options) -> Result<Arc<Gateway>, Vec<String>> {
        // First: plugin pools and upstream pools keep a slot per worker.
        let workers = Workers::start(options.workers).map_err(|e| vec![e])?;
        // Redis and plugins' outbound calls live on the I/O thread (`workers::io_thread`).
        let io = crate::workers::io_thread().map_err(|e| vec![e])?;
        let (host, outbound) = {
            let _on_io = io.enter();
            let host = PluginHost::new(&options.host).map_err(|e| vec![e])?;
            // Plugins' outbound calls go through this gateway once it exists.
            (host, crate::proxy::outbound::PluginOutbound::new())
        };
        host.send_outbound_with(outbound.clone());
        if let Some(redis) = host.global_state()
            && let Err(e) = redis.ping().await
        {
            // Not fatal: global state follows each plugin's failStrategy until it answers.
            tracing::warn!("--redis: {e}; state:global calls fail until it answers");
        }
        // Downloaded plugins are kept beside the compiled ones.
        let cache = CompileCache::default()
            .with_jwks_refresh(options.jwks_refresh)
            .with_downloads(
                options
                    .host
                    .compile_cache
                    .as_ref()
                    .map(|dir| dir.join("downloads")),
            );
        let metrics = Arc::new(Metrics::new(
            options.metrics,
            &options.workload.0,
            &options.workload.1,
        ));
        worker_metrics(&workers, &metrics);
        let limits = Arc::new(crate::limits::Limits::new(options.limits.clone()));
        limit_metrics(&limits, &metrics);
        host.report_metrics_to(metrics.plugin_defined().clone());
        breaker_metrics(&host, &metrics);
        let service = &options.workload.0;
        let tracing = match &options.tracing {
            None => TraceBase {
                exporter: None,
                sampling_percent: 0.0,
                service: service.clone(),
            },
            Some((endpoint, percent)) => TraceBase {
                exporter: Some(exporter(endpoint, service, &metrics).map_err(|e| vec![e])?),
                sampling_percent: *percent,
                service: service.clone(),
            },
        };
        let arrivals = Arc::new(Arrivals::default());
        let build = |documents: Arc<Documents>| {
            let (options, host, cache, metrics, tracing, arrivals) =
                (&options, &host, &cache, &metrics, &tracing, &arrivals);
            async move {
                let built = load(
                    options,
                    &documents,
                    host,
                    cache,
                    metrics,
                    Some(tracing),
                    arrivals,
                )
                .await;
                built.map(|snapshot| (documents, snapshot))
            }
        };
        let (documents, snapshot) = match (
            build(options.documents.clone()).await,
            &options.fallback_documents,
        ) {
            (Ok(built), _) => built,
            (Err(errors), Some(fallback)) => {
                for e in &errors {
                    tracing::error!("refused at start: {e}");
                }
                build(fallback.clone()).await?
            }
            (Err(errors), None) => return Err(errors),
        };
        let access_log = Arc::new(
            AccessLog::open(options.access_log.0, &options.access_log.1).map_err(|e| vec![e])?,
        );
        let gateway = Arc::new(Gateway {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snapshot),
                host,
                upstreams: (0..crate::workers::slots())
                    .map(|_| Upstream::new())
                    .collect(),
                ids: crate::entropy::OsRandom,
                limits: limits.clone(),
                edge: options.edge.clone(),
                metrics,
                access_log,
            }),
            options,
            cache,
            tracing,
            arrivals,
            workers,
            listeners: Mutex::new(BTreeMap::new()),
            reloading: Mutex::new(documents),
            ready: AtomicBool::new(false),
        });
        outbound.attach(&gateway.shared);
        let snapshot = gateway.shared.snapshot.load_full();
        gateway.open_listeners(&snapshot).await?;
        snapshot.registry.settle_arrivals();
        overrides::apply(&gateway.shared.metrics, &snapshot.telemetry);
        gateway
            .shared
            .metrics
            .reloads
            .serving(snapshot.resources.clone());
        gateway.ready.store(true, Ordering::SeqCst);
        // From now on a compile (a reload's) takes only idle CPU.
        gateway.cache.serving();
        gateway.shared.host.prune_compile_cache();
        crate::memory::give_back();
        Ok(gateway)
    }

    /// The config store's documents of the snapshot being served.
    pub async fn documents(&self) -> Arc<Documents> {
        self.reloading.lock().await.clone()
    }

    /// True once every listener of the current snapshot is accepting.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Every metric of the process.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Rebuild from the same paths; swap only if everything (config, plugins,
    /// certificates, new sockets) is good. A listener whose address is gone drains; one
    /// whose protocol or certificates changed keeps its socket and serves new
    /// connections with the new settings.
    pub async fn reload(&self) -> Result<(), Vec<String>> {
        self.reload_with(None).await
    }

    /// Serve the files with these config store documents in place of the ones served
    /// now: as [`Gateway::reload`], all or nothing; on failure the documents served
    /// before stay (a later file reload uses them, not these).
    pub async fn apply_documents(&self, documents: Documents) -> Result<(), Vec<String>> {
        self.reload_with(Some(Arc::new(documents))).await
    }

    async fn reload_with(&self, documents: Option<Arc<Documents>>) -> Result<(), Vec<String>> {
        let mut served = self.reloading.lock().await;
        let documents = documents.unwrap_or_else(|| served.clone());
        let rejected = |errors: Vec<String>| {
            for e in &errors {
                tracing::error!("reload rejected: {e}");
            }
            tracing::error!("reload rejected; still serving the last good configuration");
            errors
        };
        let reloads = &self.shared.metrics.reloads;
        self.cache.begin();
        let loaded = load(
            &self.options,
            &documents,
            &self.shared.host,
            &self.cache,
            &self.shared.metrics,
            Some(&self.tracing),
            &self.arrivals,
        )
        .await;
        let snapshot = match loaded {
            Ok(s) => Arc::new(s),
            Err(errors) => {
                reloads.failed.fetch_add(1, Ordering::Relaxed);
                crate::memory::give_back();
                return Err(rejected(errors));
            }
        };
        if let Err(errors) = self.open_listeners(&snapshot).await {
            reloads.failed.fetch_add(1, Ordering::Relaxed);
            return Err(rejected(errors));
        }
        reloads.serving(snapshot.resources.clone());
        *served = documents;
        overrides::apply(&self.shared.metrics, &snapshot.telemetry);
        let previous = self.shared.snapshot.swap(snapshot.clone());
        snapshot.registry.settle_arrivals();
        // Builds of replaced plugins (and of failed reloads) are not kept.
        self.cache.keep_used();
        let mut listeners = self.listeners.lock().await;
        for (addr, running) in listeners.iter() {
            let (Some(old), Some(new)) =
                (previous.listeners.get(addr), snapshot.listeners.get(addr))
            else {
                continue;
            };
            if old.setup != new.setup {
                tracing::info!(%addr, "listener settings changed; draining the connections accepted before");
                tokio::spawn(running.renew(self.options.drain));
            }
        }
        let gone: Vec<SocketAddr> = listeners
            .keys()
            .filter(|a| !snapshot.listeners.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(running) = listeners.remove(&addr) {
                tracing::info!(%addr, "listener closed; draining its connections");
                tokio::spawn(running.stop(self.options.drain));
            }
        }
        tracing::info!(
            listeners = ?snapshot.listeners.keys().collect::<Vec<_>>(),
            compiled = self.cache.len(),
            "configuration reloaded"
        );
        // The previous snapshot is freed as its last requests finish; what the build
        // used is free now.
        drop(previous);
        crate::memory::give_back();
        Ok(())
    }

    /// Stop accepting, let open connections finish their requests (HTTP/1 connections
    /// close after the current one, HTTP/2 ones get GOAWAY) for at most `drain`.
    pub async fn shutdown(&self, drain: Duration) {
        self.ready.store(false, Ordering::SeqCst);
        let running = std::mem::take(&mut *self.listeners.lock().await);
        let stops = running.into_values().map(|r| r.stop(drain));
        let mut tasks = tokio::task::JoinSet::new();
        for stop in stops {
            tasks.spawn(stop);
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Bind the addresses of `snapshot` that have no listener yet. All or nothing.
    async fn open_listeners(&self, snapshot: &Snapshot) -> Result<(), Vec<String>> {
        let mut listeners = self.listeners.lock().await;
        let mut bound = Vec::new();
        let mut errors = Vec::new();
        for (addr, listener) in &snapshot.listeners {
            if listeners.contains_key(addr) {
                continue;
            }
            match crate::listener::bind(*addr, self.workers.len()) {
                Ok(sockets) => bound.push((*addr, sockets, listener.serve.kind())),
                Err(e) => errors.push(format!("cannot listen on {addr}: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        for (addr, sockets, kind) in bound {
            tracing::info!(
                "listening on {} ({kind}, {} accept queue{})",
                sockets
                    .first()
                    .and_then(|s| s.local_addr().ok())
                    .map_or_else(|| addr.to_string(), |a| a.to_string()),
                sockets.len(),
                if sockets.len() == 1 { "" } else { "s" },
            );
            let running = Running::start(sockets, addr, self.shared.clone(), &self.workers);
            listeners.insert(addr, running);
        }
        Ok(())
    }
}
