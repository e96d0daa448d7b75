//! Test plugin built through wasm32-wasip1 and the preview1 adapter, so it imports WASI
//! the way a wasm32-wasip2 plugin does. It probes what the host grants (environment,
//! arguments, files, clocks) and answers every request with what it found, so a test can
//! prove the sandbox: nothing but stdout/stderr, which the host sends to its log.
//! `/sleep` blocks in a WASI sleep, to prove the host's call deadline still holds; `/env`
//! answers with the environment it sees (a WasmPlugin's `vmConfig.env`, and nothing else).

use std::io::Write;

use wasmgate_plugin_sdk::{
    Binding, ConfigError, Edit, PluginError, Policy, Request, export_policy,
};

#[derive(Debug)]
pub struct WasiProbe {
    report: String,
}

fn probe() -> String {
    let env = std::env::vars().count();
    let args = std::env::args().count();
    let root = match std::fs::read_dir("/") {
        Ok(_) => "readable",
        Err(_) => "denied",
    };
    let passwd = match std::fs::read("/etc/passwd") {
        Ok(_) => "readable",
        Err(_) => "denied",
    };
    let cwd = match std::fs::File::create("wasi-probe.txt") {
        Ok(_) => "writable",
        Err(_) => "denied",
    };
    let clock = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(_) => "ok",
        Err(_) => "before-epoch",
    };
    format!("env={env} args={args} root={root} passwd={passwd} cwd={cwd} clock={clock}")
}

impl Policy for WasiProbe {
    fn prepare(_binding: &Binding, _config: &str) -> Result<Self, ConfigError> {
        let report = probe();
        println!("wasi-probe stdout: {report}");
        let _ = std::io::stdout().flush();
        eprintln!("wasi-probe stderr: prepared");
        Ok(WasiProbe { report })
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        if request.path() == "/sleep" {
            // Blocks in WASI's poll: no Wasm code runs, so only the host's timeout can
            // stop it.
            std::thread::sleep(std::time::Duration::from_secs(30));
        }
        let report = if request.path() == "/env" {
            // The environment the host granted, one `NAME=value` per line.
            std::env::vars()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect()
        } else {
            self.report.clone()
        };
        Ok(Edit::respond(200, report))
    }
}

export_policy!(WasiProbe);
