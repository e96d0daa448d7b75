//! The `wasmgate` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = wasmgate::cli::Cli::parse();
    let filter = EnvFilter::try_from_env("WASMGATE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // The main thread's runtime is the control plane (admin, reloads, watchers);
    // connections are served by the workers (`workers.rs`), one current-thread runtime
    // each, which on one core measured 40 instead of 55 µs of CPU per request against
    // tokio's multi-thread scheduler (docs/benchmarks.md).
    let built = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wasmgate: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(wasmgate::cli::main(cli))
}
