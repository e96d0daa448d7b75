//! Builds every crate under `plugins/` into a Wasm component so that `cargo run` and
//! `cargo test` need no manual step. The first-party components are then embedded in the
//! binary (`src/plugin/builtin.rs`); the rest (examples, test plugins) are left in
//! `$OUT_DIR/plugins` for the tests (core modules in `$OUT_DIR/plugins/core`).
//!
//! Toolchain, first that works: (1) the rustup toolchain's wasm targets; (2) Debian's
//! `rustc-web` with `-Zbuild-std` and rustup's `rust-lld` (see docs/plugins.md);
//! otherwise the build stops with one sentence naming the command that fixes it.
//! `WASMGATE_WASM_TOOLCHAIN=rustup|debian` forces a choice.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const UNKNOWN: &str = "wasm32-unknown-unknown";
const WASIP1: &str = "wasm32-wasip1";
const FIX: &str = "wasmgate cannot build its Wasm plugins: no wasm32 Rust target found. \
Run `rustup target add wasm32-unknown-unknown wasm32-wasip1`, or on Debian \
`apt-get install rustc-web cargo-web rust-web-src wasi-libc`.";

struct Plugin {
    /// Directory under plugins/, e.g. `router` or `testing/wasi-probe`.
    dir: String,
    /// The cargo package name.
    package: String,
    target: &'static str,
}

enum Toolchain {
    Rustup { cargo: PathBuf },
    Debian { lld: PathBuf },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("\n{e}\n");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest
        .parent()
        .ok_or("runtime/ has no parent")?
        .to_path_buf();
    let plugins_dir = root.join("plugins");
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    for watched in [
        "plugins",
        "plugin-sdk",
        "wit",
        "runtime/config/src",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("runtime/config/Cargo.toml").display()
    );
    println!("cargo:rerun-if-env-changed=WASMGATE_WASM_TOOLCHAIN");

    let plugins = discover(&plugins_dir)?;
    let toolchain = pick_toolchain()?;
    // A target folder of its own beside the outer one: sharing the outer one would block
    // on cargo's lock, and living outside OUT_DIR keeps the wasm std build between
    // profile changes.
    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("wasm-plugins"),
        None => root.join("target").join("wasm-plugins"),
    };
    let dest = out_dir.join("plugins");
    fs::create_dir_all(dest.join("core")).map_err(|e| format!("{}: {e}", dest.display()))?;

    for target in [UNKNOWN, WASIP1] {
        let packages: Vec<&Plugin> = plugins.iter().filter(|p| p.target == target).collect();
        if packages.is_empty() {
            continue;
        }
        cargo_build(&toolchain, &root, &target_dir, target, &packages)?;
        for plugin in packages {
            let module = target_dir
                .join(target)
                .join("wasm-plugin")
                .join(format!("{}.wasm", plugin.package.replace('-', "_")));
            let bytes = fs::read(&module).map_err(|e| format!("{}: {e}", module.display()))?;
            let component = componentize(&bytes, target == WASIP1)
                .map_err(|e| format!("plugins/{}: making a component: {e:#}", plugin.dir))?;
            let name = plugin.dir.rsplit('/').next().unwrap_or(&plugin.dir);
            let out = dest.join(format!("{name}.wasm"));
            fs::write(&out, component).map_err(|e| format!("{}: {e}", out.display()))?;
            // The core module too: tests load it to prove a plain
            // `cargo build --target wasm32-unknown-unknown` output works as a plugin.
            let core = dest.join("core").join(format!("{name}.wasm"));
            fs::write(&core, &bytes).map_err(|e| format!("{}: {e}", core.display()))?;
        }
    }
    println!("cargo:rustc-env=WASMGATE_BUILT_PLUGINS={}", dest.display());
    Ok(())
}

/// Every `plugins/*/Cargo.toml` and `plugins/*/*/Cargo.toml` package. A crate asks for
/// WASI with `[package.metadata.wasmgate] target = "wasm32-wasip1"`.
fn discover(plugins_dir: &Path) -> Result<Vec<Plugin>, String> {
    let mut found = Vec::new();
    let mut dirs = vec![(plugins_dir.to_path_buf(), String::new(), 0)];
    while let Some((dir, rel, depth)) = dirs.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !path.is_dir() || name == "target" || name.starts_with('.') {
                continue;
            }
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let manifest = path.join("Cargo.toml");
            if manifest.is_file() {
                let text = fs::read_to_string(&manifest)
                    .map_err(|e| format!("{}: {e}", manifest.display()))?;
                let package = package_name(&text)
                    .ok_or_else(|| format!("{}: no [package] name", manifest.display()))?;
                let target = if text.contains("target = \"wasm32-wasip1\"") {
                    WASIP1
                } else {
                    UNKNOWN
                };
                found.push(Plugin {
                    dir: rel,
                    package,
                    target,
                });
            } else if depth == 0 {
                dirs.push((path, rel, depth + 1));
            }
        }
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(found)
}

fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(rest) = line.strip_prefix("name") {
            let value = rest.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_string());
        }
    }
    None
}

fn pick_toolchain() -> Result<Toolchain, String> {
    let forced = env::var("WASMGATE_WASM_TOOLCHAIN").ok();
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let has_target = |t: &str| {
        sysroot
            .as_ref()
            .is_some_and(|s| s.join("lib/rustlib").join(t).join("lib").is_dir())
    };
    if forced.as_deref() != Some("debian") && has_target(UNKNOWN) && has_target(WASIP1) {
        let cargo = env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
        return Ok(Toolchain::Rustup { cargo });
    }
    if forced.as_deref() == Some("rustup") {
        return Err(FIX.into());
    }
    let debian = Path::new("/usr/bin/rustc").is_file()
        && Path::new("/usr/bin/cargo").is_file()
        && Path::new("/usr/lib/rustlib/src/rust/library").is_dir();
    if !debian {
        return Err(FIX.into());
    }
    let host = env::var("HOST").unwrap_or_else(|_| "x86_64-unknown-linux-gnu".into());
    let lld = sysroot
        .map(|s| s.join("lib/rustlib").join(host).join("bin/rust-lld"))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            "wasmgate cannot build its Wasm plugins: Debian's rustc-web is here but no \
             rust-lld was found in the rustup toolchain; install Rust with rustup \
             (https://rustup.rs)."
                .to_string()
        })?;
    Ok(Toolchain::Debian { lld })
}

fn cargo_build(
    toolchain: &Toolchain,
    workspace: &Path,
    target_dir: &Path,
    target: &str,
    packages: &[&Plugin],
) -> Result<(), String> {
    let mut cmd = match toolchain {
        Toolchain::Rustup { cargo } => Command::new(cargo),
        Toolchain::Debian { .. } => Command::new("/usr/bin/cargo"),
    };
    // The outer cargo's variables would point the inner build at the host's profile,
    // flags and jobserver; start it clean.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_")
            || matches!(
                key.as_ref(),
                "RUSTC" | "RUSTC_WRAPPER" | "RUSTDOC" | "RUSTFLAGS" | "RUSTC_WORKSPACE_WRAPPER"
            )
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.current_dir(workspace)
        .args(["build", "--profile", "wasm-plugin", "--target", target])
        .arg("--target-dir")
        .arg(target_dir);
    for p in packages {
        cmd.args(["-p", &p.package]);
    }
    if let Toolchain::Debian { lld } = toolchain {
        let var = format!(
            "CARGO_TARGET_{}_LINKER",
            target.to_uppercase().replace('-', "_")
        );
        cmd.env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1")
            .env(var, lld)
            .args(["-Zbuild-std=std,panic_abort"]);
        if target == WASIP1 {
            cmd.env("RUSTFLAGS", "-L /usr/lib/wasm32-wasi");
        }
    }
    let output = cmd
        .output()
        .map_err(|e| format!("starting cargo for the plugins: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building plugins for {target} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn componentize(module: &[u8], wasi: bool) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    // A module built by wasm-component-ld (wasip2) is already a component.
    if wasmparser_is_component(module) {
        return Ok(module.to_vec());
    }
    let mut encoder = wit_component::ComponentEncoder::default()
        .module(module)?
        .validate(true);
    if wasi {
        encoder = encoder.adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?;
    }
    Ok(encoder.encode()?)
}

/// A component's header has layer 1 in bytes 6..8; a core module has 0.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}
