//! The command line: `wasmgate run`, `validate`, `build-plugin`, and for fleets `push` and
//! `status`. The contract other tools rely on: `run --config <PATH|etcd://...>...
//! [--plugins DIR] [--admin ADDR]`, admin default 127.0.0.1:15000 with
//! `GET /healthz/ready`; `validate --config <PATH>...` (and `push`, before it writes)
//! exits 0 when valid and 1 with one line per error otherwise.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use crate::build_plugin::build_plugin;
use crate::gateway::{Gateway, Options};
use crate::plugin::{DEFAULT_CALL_BUDGET, DEFAULT_MEMORY_LIMIT, HostSettings};

#[derive(Debug, Parser)]
#[command(
    name = "wasmgate",
    version,
    about = "Istio-compatible gateway with Wasm policies"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Gateways in the config.
    Run(Box<RunArgs>),
    /// Check config files; exit 1 with one line per error.
    Validate(ValidateArgs),
    /// Build a plugin crate into a component ready for the plugins directory.
    BuildPlugin(BuildPluginArgs),
    /// Validate config files as `validate` does, then write them to etcd in one
    /// transaction (one key per file); invalid input writes nothing.
    Push(PushArgs),
    /// Print the replicas following an etcd prefix: what each serves, and errors.
    Status(StatusArgs),
    /// Internal: compile the component on stdin into a compile cache folder (`run`
    /// starts this as a child process on a cache miss).
    #[command(hide = true)]
    CompileEntry(CompileEntryArgs),
}

#[derive(Debug, Args)]
pub struct CompileEntryArgs {
    #[arg(long, value_name = "DIR")]
    pub cache: PathBuf,
    /// The engine settings of the gateway that loads the entry.
    #[arg(long)]
    pub max_instances: u32,
    #[arg(long)]
    pub memory_limit_bytes: usize,
    /// The entry's file name the gateway will look for: a different binary (an upgrade
    /// since the gateway started) computes another and stores nothing.
    #[arg(long)]
    pub expect: Option<String>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The prefix to write: `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`.
    #[arg(long, value_name = "URL")]
    pub to: crate::fleet::StoreUrl,
    /// YAML files, or directories of *.yaml/*.yml files: each becomes the key
    /// `/PREFIX/<file name>`.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Also delete the config keys under the prefix whose files are not given.
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub check: CheckArgs,
    #[command(flatten)]
    pub access: crate::fleet::Access,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The prefix the replicas follow: `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`.
    #[arg(long, value_name = "URL")]
    pub config: crate::fleet::StoreUrl,
    #[command(flatten)]
    pub access: crate::fleet::Access,
}

#[derive(Debug, Args)]
pub struct BuildPluginArgs {
    /// The plugin crate (a folder with Cargo.toml).
    #[arg(default_value = ".", value_name = "CRATE_DIR")]
    pub crate_dir: PathBuf,
    /// Where to write `<package>.wasm`.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Cargo's target folder for the wasm build (default: the crate's own).
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A YAML file or a directory of *.yaml/*.yml files; repeatable. At most one may be
    /// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`: every key under the prefix holds YAML
    /// documents, loaded after the files and followed as it changes (docs/fleet.md).
    #[arg(long = "config", required = true, value_name = "PATH|etcd://...")]
    pub config: Vec<PathBuf>,
    #[command(flatten)]
    pub etcd: crate::fleet::Access,
    /// With an etcd config: keep the last config applied here, and serve it when etcd
    /// cannot be reached at start.
    #[arg(long, value_name = "DIR")]
    pub etcd_cache: Option<PathBuf>,
    /// With an etcd config: this replica's name in `/PREFIX/status/` (default: the host
    /// name and process id).
    #[arg(long, value_name = "ID")]
    pub replica_id: Option<String>,
    /// Directory of plugin .wasm files (WasmPlugin `url: name.wasm`).
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// How often the --plugins directory is checked for added, changed or removed .wasm
    /// files, in milliseconds; a change reloads as SIGHUP does. 0: never.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub plugin_poll_ms: u64,
    /// Admin address: /healthz/ready, /reload, /routes.
    #[arg(long, default_value = "127.0.0.1:15000", value_name = "ADDR")]
    pub admin: SocketAddr,
    /// Address listeners bind to unless a Gateway server sets `bind`.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    pub listen_address: IpAddr,
    /// The port of the Gateway generated for Kubernetes Ingresses (Istio's ingress
    /// gateway serves them on 80).
    #[arg(long, default_value_t = 80, value_name = "PORT")]
    pub ingress_port: u16,
    /// The port of the HTTPS servers generated for Ingress `tls` entries.
    #[arg(long, default_value_t = 443, value_name = "PORT")]
    pub ingress_https_port: u16,
    /// Record Istio's and wasmgate's metrics (served on the admin address at
    /// `/stats/prometheus` and `/metrics`).
    #[arg(long, value_enum, default_value = "on", value_name = "on|off")]
    pub metrics: OnOff,
    /// Access lines: `text` (wasmgate's line, through the log) or `json` (one object per
    /// line with Envoy's default fields).
    #[arg(long, value_enum, default_value = "text", value_name = "text|json")]
    pub access_log_format: crate::telemetry::access::Format,
    /// Where access lines go: a file (appended to), `stderr`, or `off`.
    #[arg(long, default_value = "stderr", value_name = "PATH|stderr|off")]
    pub access_log: crate::telemetry::access::Destination,
    /// Export trace spans with OTLP over HTTP/protobuf to this URL (e.g.
    /// `http://127.0.0.1:4318/v1/traces`); without it nothing is traced.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Percentage of requests without a caller's sampling decision that are traced
    /// (Istio's default is 1); a caller's decision always wins.
    #[arg(long, default_value_t = 1.0, value_name = "PERCENT")]
    pub trace_sampling: f64,
    /// This gateway's workload name: `source_workload` in Istio's metrics.
    #[arg(long, default_value = "wasmgate", value_name = "NAME")]
    pub workload_name: String,
    /// This gateway's namespace: `source_workload_namespace` in Istio's metrics, where
    /// `credentialName` Secrets are found when the Gateway's own namespace lacks them,
    /// and the namespace `exportTo` is read against (docs/istio.md).
    #[arg(long, default_value = "istio-system", value_name = "NAMESPACE")]
    pub workload_namespace: String,
    /// How request paths are normalized before routing, as Istio's MeshConfig
    /// `pathNormalization`: `base` (RFC 3986, Istio's default), `merge-slashes`,
    /// `decode-and-merge-slashes` (also `%2F`, `%5C`), or `none`.
    #[arg(long, value_enum, default_value = "base", value_name = "MODE")]
    pub path_normalization: crate::proxy::normalize::PathNormalization,
    /// Tunnel HTTP/1.1 upgrades to PROTO too (repeatable); `websocket` always is, any
    /// other `Upgrade` is dropped and the request proxied as a plain one.
    #[arg(long = "allow-upgrade", value_name = "PROTO")]
    pub allow_upgrade: Vec<String>,
    /// Proxies in front of the gateway that append to `x-forwarded-for` (Istio's
    /// `gatewayTopology.numTrustedProxies`): AuthorizationPolicy `remoteIpBlocks` and
    /// `remote.ip` take the client's address that many entries from the right.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub num_trusted_proxies: u32,
    /// How often keys named by a RequestAuthentication's `jwksUri` are fetched again (a
    /// reload, when any config has one), in seconds; Istio's default is 20 minutes. 0:
    /// only on reloads.
    #[arg(long, default_value_t = 1200, value_name = "SECONDS")]
    pub jwks_refresh_seconds: u64,
    /// Also serve the mesh: an HTTP proxy listener on ADDR where VirtualServices bound
    /// to `mesh` (or to no gateway) route applications' outbound requests.
    #[arg(long, value_name = "ADDR")]
    pub mesh_listener: Option<SocketAddr>,
    /// The namespace of the applications using the mesh listener: short names like
    /// `reviews` resolve in it.
    #[arg(long, default_value = "default", value_name = "NAMESPACE")]
    pub mesh_namespace: String,
    /// Where this gateway runs, as `region/zone/subzone` (Istio's locality; a ServiceEntry
    /// endpoint's `locality` is written alike). With it, DestinationRules with outlier
    /// detection fail over by locality, and `localityLbSetting.distribute` applies.
    #[arg(long, default_value = "", value_name = "REGION/ZONE/SUBZONE")]
    pub locality: String,
    /// This gateway's network (Istio's `topology.istio.io/network`): a
    /// `localityLbSetting.failoverPriority` on that label prefers endpoints on it.
    #[arg(long, default_value = "", value_name = "NAME")]
    pub network: String,
    /// This gateway's own labels, as its pod's would be (repeat, or separate with
    /// commas): `localityLbSetting.failoverPriority` prefers endpoints whose labels match
    /// them.
    #[arg(long = "workload-labels", value_name = "KEY=VALUE", value_delimiter = ',',
          value_parser = parse_label)]
    pub workload_labels: Vec<(String, String)>,
    /// Seed the random numbers plugins get (fault percentages, traffic splits).
    #[arg(long, value_name = "N")]
    pub random_seed: Option<u64>,
    /// Longest one plugin call may run, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_CALL_BUDGET.as_millis() as u64, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub plugin_time_limit_ms: u64,
    /// Consecutive traps (panics, time or memory limit) of one plugin on one
    /// VirtualService that quarantine it there; 0 never does.
    #[arg(long, default_value_t = crate::plugin::breaker::DEFAULT_FAILURES, value_name = "N")]
    pub plugin_breaker_failures: u32,
    /// How long a quarantined plugin is not called before one request probes it.
    #[arg(long, default_value_t = crate::plugin::breaker::DEFAULT_COOLDOWN.as_millis() as u64,
          value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub plugin_breaker_cooldown_ms: u64,
    /// On SIGTERM or Ctrl-C, how long open connections may finish their requests.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub drain_seconds: u64,
    /// Keep compiled plugins here so a restart skips compiling them
    /// (default `$XDG_CACHE_HOME/wasmgate` or `~/.cache/wasmgate`); `off` disables.
    #[arg(long, value_name = "DIR|off")]
    pub compile_cache: Option<PathBuf>,
    /// Most the compile cache may hold, in MiB: past it the least recently used
    /// entries are removed (never one this process uses).
    #[arg(long, default_value_t = crate::plugin::diskcache::DEFAULT_MAX_MIB, value_name = "MIB")]
    pub compile_cache_max_mib: u64,
    /// Compile cache entries (and downloaded plugins) unused this long are removed.
    #[arg(long, default_value_t = crate::plugin::diskcache::DEFAULT_MAX_AGE_DAYS, value_name = "DAYS")]
    pub compile_cache_max_age_days: u64,
    /// Largest memory one plugin instance may use, in MiB.
    #[arg(long, default_value_t = (DEFAULT_MEMORY_LIMIT >> 20) as u64, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub plugin_memory_limit_mib: u64,
    /// Largest memory all instances of one plugin may hold together, in MiB: past it a
    /// growing call traps and no new instance is made (503, or skipped when FAIL_OPEN).
    #[arg(long, default_value_t = (crate::plugin::DEFAULT_MEMORY_TOTAL >> 20) as u64,
          value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub plugin_memory_total_mib: u64,
    /// Instances the engine's pool holds for all plugins together. Each slot reserves
    /// address space (about 4 GiB for its memory) but no memory until used; fewer suit
    /// a tight address-space limit (`ulimit -v`, valgrind). Idle instances keep their
    /// slots, and a reload needs what the running configuration holds plus a start's
    /// (docs/plugins.md).
    #[arg(long, default_value_t = crate::plugin::DEFAULT_POOL_INSTANCES, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub plugin_pool_instances: u32,
    /// Most instances one plugin may have alive at once.
    #[arg(long, default_value_t = crate::plugin::DEFAULT_MAX_INSTANCES_PER_PLUGIN,
          value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub plugin_max_instances: u32,
    /// CPU one plugin may use per second, all its calls together, in milliseconds (1000
    /// is one core); past it its calls are refused until the next second. 0: unbounded.
    #[arg(long, default_value_t = crate::plugin::DEFAULT_CPU_PER_SECOND.as_millis() as u64,
          value_name = "MS")]
    pub plugin_cpu_ms_per_second: u64,
    /// Threads that accept and serve connections, each with its own runtime, accept
    /// queue (`SO_REUSEPORT`), upstream pools and plugin instances. Default: one per
    /// core the process may use (its CPU affinity and quota).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Redis for `state:global` (the global rate limiter's buckets, shared by replicas):
    /// `redis://[[user]:password@]host[:port][/db]`.
    #[arg(long, value_name = "URL")]
    pub redis: Option<crate::plugin::redis::RedisUrl>,
    /// Longest one Redis command may take; past it the plugin's call gets an error (the
    /// rate limiter then follows its failStrategy: by default, allow).
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub redis_timeout_ms: u64,
    /// Environment variables of wasmgate's own that WasmPlugins may pass to their plugin
    /// with `vmConfig.env[].valueFrom: HOST` (comma-separated or repeated); without it,
    /// `valueFrom: HOST` is a config error.
    #[arg(
        long = "plugin-host-env",
        value_name = "NAME,...",
        value_delimiter = ','
    )]
    pub plugin_host_env: Vec<String>,
    /// Downstream connections open at once, all listeners; more are closed as soon as
    /// they are accepted. Default: half the open-files limit (raised to its hard limit
    /// at start) less a reserve, as each proxied connection also holds an upstream one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Downstream connections open at once on one listener (default: no bound of its
    /// own; `--max-connections` holds).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_listener: Option<u64>,
    /// A request body that sends nothing this long is ended: 408 `SI` before the
    /// response started (Envoy's `stream_idle_timeout`).
    #[arg(long, default_value_t = 300, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stream_idle_timeout_seconds: u64,
    /// An HTTP/1.x request's headers must arrive whole this long after its first bytes
    /// (on a keep-alive connection: after the previous response); else the connection is
    /// closed (the slow-loris guard), so a keep-alive connection idle this long is closed
    /// too, and so is one that sends no byte at all that long. Checked once a second. At
    /// most a day.
    #[arg(long, default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub request_headers_timeout_seconds: u64,
    /// A request must be received whole (headers and body) this long after its head
    /// arrived, unless the response started first: else 408 (Envoy's `request_timeout`,
    /// as its edge guide sets it). 0: no bound (long uploads over slow links).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub request_timeout_seconds: u64,
    /// An upgraded connection (WebSocket), CONNECT tunnel, TCP route or TLS passthrough
    /// that moves no byte either way this long is closed (Envoy's TCP proxy
    /// `idle_timeout`).
    #[arg(long, default_value_t = 3600, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub tunnel_idle_timeout_seconds: u64,
    /// Mirror requests in flight at once; further mirrors are dropped and counted.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_mirrors: usize,
    /// The longest delay a route's fault or a plugin may ask; longer ones are cut to it.
    #[arg(long, default_value_t = 300_000, value_name = "MS")]
    pub max_delay_ms: u64,
    /// Upstream connections in use per cluster when its DestinationRule sets no
    /// `tcp.maxConnections`; requests past it wait for one.
    #[arg(long, default_value_t = 4096, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_upstream_connections: u32,
    /// Clusters kept resolved for hosts only wildcard ServiceEntries declare (as many as
    /// clients name); past it such hosts are resolved for each request instead of kept.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_clusters: usize,
}

impl RunArgs {
    /// The bounds of `limits.rs` these flags set.
    fn limits(&self) -> crate::limits::Settings {
        let max_connections = match self.max_connections {
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => crate::limits::connections_for(crate::limits::raise_open_files_limit()),
        };
        crate::limits::Settings {
            max_connections,
            max_connections_per_listener: self
                .max_connections_per_listener
                .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
            stream_idle: Duration::from_secs(self.stream_idle_timeout_seconds),
            request_headers_timeout: Duration::from_secs(self.request_headers_timeout_seconds),
            request_timeout: (self.request_timeout_seconds > 0)
                .then(|| Duration::from_secs(self.request_timeout_seconds)),
            tunnel_idle: Duration::from_secs(self.tunnel_idle_timeout_seconds),
            max_mirrors: self.max_mirrors,
            max_delay: Duration::from_millis(self.max_delay_ms),
            max_upstream_connections: self.max_upstream_connections,
            max_clusters: self.max_clusters,
        }
    }
}

/// A feature switch on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// A YAML file or a directory of *.yaml/*.yml files; repeatable.
    #[arg(long = "config", required = true, value_name = "PATH")]
    pub config: Vec<PathBuf>,
    #[command(flatten)]
    pub check: CheckArgs,
}

/// How `validate` and `push` check config.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also load and prepare the plugins, from this directory and the embedded ones,
    /// so `pluginConfig` is checked too.
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// Environment variables of wasmgate's own that WasmPlugins may pass to their plugin
    /// with `vmConfig.env[].valueFrom: HOST` (comma-separated or repeated); without it,
    /// `valueFrom: HOST` is a config error.
    #[arg(
        long = "plugin-host-env",
        value_name = "NAME,...",
        value_delimiter = ','
    )]
    pub plugin_host_env: Vec<String>,
    /// The gateway's namespace, as `run --workload-namespace`: where `credentialName`
    /// Secrets are found when the Gateway's own namespace lacks them.
    #[arg(long, default_value = "istio-system", value_name = "NAMESPACE")]
    pub workload_namespace: String,
}

/// Run a parsed command line to completion.
pub async fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate(args) => match check(&args.config, &[], &args.check).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(errors) => {
                for e in errors {
                    println!("{e}");
                }
                ExitCode::from(1)
            }
        },
        Command::Push(args) => push(args).await,
        Command::Status(args) => {
            match crate::fleet::status::print(&args.config, &args.access).await {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wasmgate status: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run(args) => run(*args).await,
        Command::CompileEntry(args) => compile_entry(&args),
        Command::BuildPlugin(args) => {
            match build_plugin(&args.crate_dir, &args.out, args.target_dir.as_deref()) {
                Ok(path) => {
                    println!("{}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wasmgate build-plugin: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// `wasmgate push`: check the files as `validate` does, then the store as the replicas
/// will load it after the push, then write. Any error writes nothing.
async fn push(args: PushArgs) -> ExitCode {
    let refuse = |errors: Vec<String>| {
        for e in errors {
            println!("{e}");
        }
        println!("nothing was written to {}", args.to);
        ExitCode::from(1)
    };
    let keys = match crate::fleet::push::keys_of(&args.to, &args.paths) {
        Ok(keys) => keys,
        Err(errors) => return refuse(errors),
    };
    // Validated from the text that is pushed, named by its file.
    let files: Vec<(PathBuf, String)> = keys.values().cloned().collect();
    if let Err(errors) = check(&[], &files, &args.check).await {
        return refuse(errors);
    }
    let plan = match crate::fleet::push::plan(&args.to, &args.access, &keys, args.prune).await {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("wasmgate push: {e}");
            return ExitCode::from(1);
        }
    };
    let after = match plan.result() {
        Ok(after) => after,
        Err(errors) => return refuse(errors),
    };
    if let Err(mut errors) = check(&[], &after, &args.check).await {
        errors.insert(
            0,
            "the store after this push would be refused by the replicas:".to_string(),
        );
        return refuse(errors);
    }
    match plan.commit().await {
        Ok(p) => {
            println!(
                "pushed {} key(s), removed {}, revision {}",
                p.written, p.removed, p.revision
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wasmgate push: {e}");
            ExitCode::from(1)
        }
    }
}

/// What `validate` checks: the config, its TLS material, and with `--plugins` the
/// plugins and their `pluginConfig`. Errors are whole lines; warnings go to stderr.
/// `documents` (texts named as their errors should name them) load after `paths`.
async fn check(
    paths: &[PathBuf],
    documents: &[(PathBuf, String)],
    args: &CheckArgs,
) -> Result<(), Vec<String>> {
    let load_options = wasmgate_config::LoadOptions {
        host_env: args.plugin_host_env.iter().cloned().collect(),
        workload_namespace: wasmgate_config::WorkloadNamespace(args.workload_namespace.clone()),
        ..wasmgate_config::LoadOptions::default()
    };
    let config = wasmgate_config::load_with_documents(paths, documents, &load_options)
        .map_err(|errors| errors.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    let tls_errors = crate::snapshot::check_tls(&config);
    if !tls_errors.is_empty() {
        return Err(tls_errors.iter().map(ToString::to_string).collect());
    }
    if let Some(dir) = args.plugins.clone() {
        let options = Options {
            config: paths.to_vec(),
            documents: std::sync::Arc::new(documents.to_vec()),
            fallback_documents: None,
            plugins: Some(dir),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listen_address: IpAddr::from([127, 0, 0, 1]),
            ingress: wasmgate_config::ingress::IngressPorts::default(),
            mesh: None,
            // Global state is checked as if Redis were there; validating never uses it.
            host: HostSettings {
                redis: "redis://127.0.0.1:6379"
                    .parse()
                    .ok()
                    .map(|url| (url, Duration::from_millis(1))),
                ..HostSettings::default()
            },
            plugin_host_env: args.plugin_host_env.clone(),
            drain: Duration::ZERO,
            edge: crate::proxy::edge::EdgeSettings::default(),
            metrics: false,
            workload: (String::new(), args.workload_namespace.clone()),
            tracing: None,
            access_log: (
                crate::telemetry::access::Format::Text,
                crate::telemetry::access::Destination::Off,
            ),
            jwks_refresh: crate::snapshot::security::JWKS_REFRESH,
            workers: 1,
            limits: crate::limits::Settings::default(),
            locality: String::new(),
            network: String::new(),
            workload_labels: Default::default(),
        };
        let host = crate::plugin::PluginHost::new(&options.host).map_err(|e| vec![e])?;
        let cache = crate::snapshot::CompileCache::default();
        let metrics = std::sync::Arc::new(crate::telemetry::metrics::Metrics::new(false, "", ""));
        crate::gateway::load(
            &options,
            documents,
            &host,
            &cache,
            &metrics,
            None,
            &Default::default(),
        )
        .await?;
    }
    Ok(())
}

/// `wasmgate compile-entry`: what a gateway's compile cache runs on a miss.
fn compile_entry(args: &CompileEntryArgs) -> ExitCode {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("wasmgate compile-entry: reading the component: {e}");
        return ExitCode::from(1);
    }
    let settings = HostSettings {
        max_instances: args.max_instances,
        memory_limit: args.memory_limit_bytes,
        ..HostSettings::default()
    };
    let compiled = crate::plugin::engine(&settings).and_then(|engine| {
        crate::plugin::diskcache::compile_into(&args.cache, &engine, &bytes, args.expect.as_deref())
    });
    match compiled {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasmgate compile-entry: {e}");
            ExitCode::from(1)
        }
    }
}

/// The `--config etcd://...` of `run`, if any (at most one).
fn store_url(args: &RunArgs) -> Result<Option<crate::fleet::StoreUrl>, String> {
    let mut stores = args
        .config
        .iter()
        .filter_map(|p| crate::fleet::StoreUrl::recognise(&p.to_string_lossy()));
    let first = stores
        .next()
        .transpose()
        .map_err(|e| format!("--config {e}"))?;
    if stores.next().is_some() {
        return Err("--config: only one etcd:// source may be given".into());
    }
    Ok(first)
}

/// `KEY=VALUE` of `--workload-labels`.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("'{text}' is not KEY=VALUE")),
    }
}

/// What `wasmgate run` with `args` runs (also how tests start a gateway in-process).
pub fn run_options(args: &RunArgs) -> Options {
    Options {
        // The etcd source is followed by `run`, not read as a path.
        config: args
            .config
            .iter()
            .filter(|p| crate::fleet::StoreUrl::recognise(&p.to_string_lossy()).is_none())
            .cloned()
            .collect(),
        documents: Default::default(),
        fallback_documents: None,
        plugins: args.plugins.clone(),
        admin: args.admin,
        listen_address: args.listen_address,
        ingress: wasmgate_config::ingress::IngressPorts {
            http: args.ingress_port,
            https: args.ingress_https_port,
        },
        mesh: args
            .mesh_listener
            .map(|addr| crate::snapshot::MeshListener {
                addr,
                namespace: args.mesh_namespace.clone(),
            }),
        host: HostSettings {
            random_seed: args.random_seed,
            call_budget: Duration::from_millis(args.plugin_time_limit_ms),
            breaker_failures: args.plugin_breaker_failures,
            breaker_cooldown: Duration::from_millis(args.plugin_breaker_cooldown_ms),
            memory_limit: args
                .plugin_memory_limit_mib
                .checked_mul(1 << 20)
                .and_then(|b| usize::try_from(b).ok())
                .unwrap_or(usize::MAX),
            memory_total: args
                .plugin_memory_total_mib
                .checked_mul(1 << 20)
                .and_then(|b| usize::try_from(b).ok())
                .unwrap_or(usize::MAX),
            max_instances: args.plugin_pool_instances,
            max_instances_per_plugin: args.plugin_max_instances,
            cpu_per_second: Duration::from_millis(args.plugin_cpu_ms_per_second),
            compile_cache: match args.compile_cache.clone() {
                Some(dir) if dir.as_os_str() == "off" => None,
                Some(dir) => Some(dir),
                None => crate::plugin::diskcache::default_dir(),
            },
            compile_in_child: true,
            compile_cache_limits: crate::plugin::diskcache::Limits {
                max_bytes: args.compile_cache_max_mib.saturating_mul(1 << 20),
                max_age: Duration::from_secs(
                    args.compile_cache_max_age_days.saturating_mul(24 * 3600),
                ),
            },
            redis: args
                .redis
                .clone()
                .map(|url| (url, Duration::from_millis(args.redis_timeout_ms.max(1)))),
        },
        plugin_host_env: args.plugin_host_env.clone(),
        drain: Duration::from_secs(args.drain_seconds),
        edge: crate::proxy::edge::EdgeSettings {
            trusted_proxies: args.num_trusted_proxies,
            ..crate::proxy::edge::EdgeSettings::new(args.path_normalization, &args.allow_upgrade)
        },
        metrics: args.metrics == OnOff::On,
        workload: (args.workload_name.clone(), args.workload_namespace.clone()),
        tracing: args
            .otlp_endpoint
            .clone()
            .map(|url| (url, args.trace_sampling)),
        access_log: (args.access_log_format, args.access_log.clone()),
        workers: args
            .workers
            .map_or_else(crate::workers::default_count, usize::from),
        limits: args.limits(),
        locality: args.locality.clone(),
        network: args.network.clone(),
        workload_labels: args.workload_labels.iter().cloned().collect(),
        jwks_refresh: match args.jwks_refresh_seconds {
            0 => crate::snapshot::security::JWKS_REFRESH,
            s => Duration::from_secs(s),
        },
    }
}

async fn run(args: RunArgs) -> ExitCode {
    // Listed before the gateway loads its plugins, so a change during start-up reloads.
    let watch = match (&args.plugins, args.plugin_poll_ms) {
        (Some(dir), ms) if ms > 0 => Some((
            dir.clone(),
            Duration::from_millis(ms),
            crate::watch::list(dir),
        )),
        _ => None,
    };
    let mut options = run_options(&args);
    let store = match store_url(&args) {
        Ok(store) => store,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    // With an etcd config: its first read (or the cached snapshot) is served from the
    // start, and followed once the gateway runs.
    let fleet = match store {
        None => None,
        Some(url) => {
            let replica = args
                .replica_id
                .clone()
                .unwrap_or_else(crate::fleet::status::default_replica_id);
            let (reporter, keeper) =
                crate::fleet::status::Reporter::new(replica, url.clone(), args.etcd.clone());
            // Reporting from the start: a replica waiting for a good config shows why.
            let status = tokio::spawn(keeper);
            let follower = crate::fleet::follow::Follower {
                url,
                access: args.etcd.clone(),
                cache: args.etcd_cache.clone().map(crate::fleet::cache::Cache::new),
                reporter,
                health: Default::default(),
            };
            let check = |listing: &crate::fleet::Listing| {
                crate::gateway::load_config(&options, &listing.documents()?).map(drop)
            };
            let first = follower.first(check).await;
            options.documents = std::sync::Arc::new(first.listing.documents().unwrap_or_default());
            // What only a whole build finds (plugins, certificates) fails the start
            // with the store's config: the cached snapshot, if any, is served instead.
            let cached = first
                .client
                .as_ref()
                .and(follower.cache.as_ref())
                .and_then(|c| c.read(&follower.url).ok())
                .filter(|c| c.keys != first.listing.keys);
            options.fallback_documents = cached
                .as_ref()
                .and_then(|c| c.documents().ok())
                .map(std::sync::Arc::new);
            Some((follower, first, cached, status))
        }
    };
    let admin = options.admin;
    let drain = options.drain;
    let fallback = options.fallback_documents.clone();
    let gateway = match Gateway::start(options).await {
        Ok(g) => g,
        Err(errors) => {
            for e in errors {
                tracing::error!("{e}");
            }
            tracing::error!("not started");
            if let Some((follower, _, _, status)) = fleet {
                // Its status leaves with it (the status task revokes the lease).
                drop(follower);
                let _ = tokio::time::timeout(Duration::from_secs(2), status).await;
            }
            return ExitCode::from(1);
        }
    };
    let fleet = match fleet {
        Some((follower, _, Some(cached), status))
            if fallback.is_some() && Some(gateway.documents().await) == fallback =>
        {
            tracing::warn!(
                revision = cached.revision,
                "the store's config was refused at start; serving the snapshot --etcd-cache kept"
            );
            let first = crate::fleet::follow::First {
                listing: cached,
                client: None,
            };
            Some((follower, first, status))
        }
        Some((follower, first, _, status)) => Some((follower, first, status)),
        None => None,
    };
    match crate::admin::serve(admin, gateway.clone()).await {
        Ok(addr) => tracing::info!("admin on {addr}"),
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    }
    if let Some((dir, every, seen)) = watch {
        tokio::spawn(crate::watch::plugins(gateway.clone(), dir, every, seen));
    }
    if args.jwks_refresh_seconds > 0 {
        tokio::spawn(crate::watch::jwks(
            gateway.clone(),
            Duration::from_secs(args.jwks_refresh_seconds),
        ));
    }
    let fleet = fleet.map(|(follower, first, status)| {
        follower.health.report_to(gateway.metrics());
        (tokio::spawn(follower.run(gateway.clone(), first)), status)
    });
    crate::workers::control_below_requests();
    tracing::info!("ready");
    wait_for_signals(&gateway).await;
    tracing::info!("shutting down");
    if let Some((follower, status)) = fleet {
        // The follower holds the status reporter: with it gone, the status task revokes
        // the lease, so this replica leaves `/PREFIX/status/` at once.
        follower.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), status).await;
    }
    gateway.shutdown(drain).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

#[cfg(unix)]
async fn wait_for_signals(gateway: &Gateway) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                // `reload` logs each reason (load, plugin and bind errors) itself.
                if let Err(errors) = gateway.reload().await {
                    tracing::error!("SIGHUP: reload failed with {} error(s)", errors.len());
                }
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_gateway: &Gateway) {
    let _ = tokio::signal::ctrl_c().await;
}
