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
    // On one core (a gateway pinned with taskset or a one-CPU container) a single-threaded
    // scheduler does the same work without cross-thread handoffs: measured in bench/ at
    // 40 instead of 55 µs of CPU per request (docs/benchmarks.md).
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let built = if one_core {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wasmgate: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(wasmgate::cli::main(cli))
}
