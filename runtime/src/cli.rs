//! The command line: `wasmgate run` and `wasmgate validate`. The contract other tools rely
//! on: `run --config <PATH>... [--plugins DIR] [--admin ADDR]`, admin default
//! 127.0.0.1:15000 with `GET /healthz/ready`; `validate --config <PATH>...` exits 0 when
//! valid and 1 with one line per error otherwise.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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
    Run(RunArgs),
    /// Check config files; exit 1 with one line per error.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A YAML file or a directory of *.yaml/*.yml files; repeatable.
    #[arg(long = "config", required = true, value_name = "PATH")]
    pub config: Vec<PathBuf>,
    /// Directory of plugin .wasm files (WasmPlugin `url: name.wasm`).
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// Admin address: /healthz/ready, /reload, /routes.
    #[arg(long, default_value = "127.0.0.1:15000", value_name = "ADDR")]
    pub admin: SocketAddr,
    /// Address listeners bind to unless a Gateway server sets `bind`.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    pub listen_address: IpAddr,
    /// Seed the random numbers plugins get (fault percentages, traffic splits).
    #[arg(long, value_name = "N")]
    pub random_seed: Option<u64>,
    /// Longest one plugin call may run, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_CALL_BUDGET.as_millis() as u64, value_name = "MS")]
    pub plugin_time_limit_ms: u64,
    /// Largest memory one plugin instance may use, in MiB.
    #[arg(long, default_value_t = (DEFAULT_MEMORY_LIMIT >> 20) as u64, value_name = "MIB")]
    pub plugin_memory_limit_mib: u64,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// A YAML file or a directory of *.yaml/*.yml files; repeatable.
    #[arg(long = "config", required = true, value_name = "PATH")]
    pub config: Vec<PathBuf>,
    /// Also load and prepare the plugins, from this directory and the embedded ones,
    /// so `pluginConfig` is checked too.
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
}

/// Run a parsed command line to completion.
pub async fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate(args) => validate(args).await,
        Command::Run(args) => run(args).await,
    }
}

async fn validate(args: ValidateArgs) -> ExitCode {
    let config = match wasmgate_config::load(&args.config) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            return ExitCode::from(1);
        }
    };
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(dir) = args.plugins {
        let options = Options {
            config: args.config,
            plugins: Some(dir),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listen_address: IpAddr::from([127, 0, 0, 1]),
            host: HostSettings::default(),
        };
        let host = match crate::plugin::PluginHost::new(&options.host) {
            Ok(h) => h,
            Err(e) => {
                println!("{e}");
                return ExitCode::from(1);
            }
        };
        let cache = crate::snapshot::CompileCache::default();
        if let Err(errors) = crate::gateway::load(&options, &host, &cache).await {
            for e in errors {
                println!("{e}");
            }
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

async fn run(args: RunArgs) -> ExitCode {
    let options = Options {
        config: args.config,
        plugins: args.plugins,
        admin: args.admin,
        listen_address: args.listen_address,
        host: HostSettings {
            random_seed: args.random_seed,
            call_budget: Duration::from_millis(args.plugin_time_limit_ms),
            memory_limit: usize::try_from(args.plugin_memory_limit_mib << 20).unwrap_or(usize::MAX),
            ..HostSettings::default()
        },
    };
    let admin = options.admin;
    let gateway = match Gateway::start(options).await {
        Ok(g) => g,
        Err(errors) => {
            for e in errors {
                tracing::error!("{e}");
            }
            tracing::error!("not started");
            return ExitCode::from(1);
        }
    };
    match crate::admin::serve(admin, gateway.clone()).await {
        Ok(addr) => tracing::info!("admin on {addr}"),
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    }
    tracing::info!("ready");
    wait_for_signals(&gateway).await;
    tracing::info!("shutting down");
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
                let _ = gateway.reload().await;
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_gateway: &Gateway) {
    let _ = tokio::signal::ctrl_c().await;
}
