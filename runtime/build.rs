//! Builds every crate under `plugins/` into a Wasm component so that `cargo run` and
//! `cargo test` need no manual step. The first-party components are then embedded in the
//! binary (`src/plugin/builtin.rs`); the rest (examples, test plugins) are left in
//! `$OUT_DIR/plugins` for the tests (core modules in `$OUT_DIR/plugins/core`).
//!
//! The toolchain logic lives in `src/toolchain.rs`, shared with `wasmgate build-plugin`.
//! `WASMGATE_WASM_TOOLCHAIN=rustup|debian` forces a choice.

#[allow(dead_code)]
#[path = "src/toolchain.rs"]
mod toolchain;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use toolchain::{Toolchain, UNKNOWN, WASIP1};

struct Plugin {
    /// Directory under plugins/, e.g. `router` or `testing/wasi-probe`.
    dir: String,
    package: String,
    target: &'static str,
}

fn main() {
    if let Err(e) = build() {
        eprintln!("\nwasmgate: {e}\n");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest
        .parent()
        .ok_or("runtime/ has no parent")?
        .to_path_buf();
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
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("src/toolchain.rs").display()
    );
    println!("cargo:rerun-if-env-changed=WASMGATE_WASM_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=WASMGATE_PLUGIN_NAMES");

    // Relative relocations packed (DT_RELR): the loader reads a few KiB at start instead
    // of the binary's `.rela.dyn` (0.9 MiB of a release build, all of it resident after
    // start); the binary stays position independent. It then needs glibc 2.36 or later
    // where it runs, so only a native build on such a glibc gets it.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
        && env::var("HOST").ok() == env::var("TARGET").ok()
        && glibc_at_least(2, 36)
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    startup_order(&manifest, &root, &out_dir);

    let plugins = discover(&root.join("plugins"))?;
    let forced = env::var("WASMGATE_WASM_TOOLCHAIN").ok();
    let toolchain = Toolchain::detect(forced.as_deref())?;
    // A target folder of its own beside the outer one: sharing the outer one would block
    // on cargo's lock, and living outside OUT_DIR keeps the wasm std build across
    // profile changes. `wasmgate build-plugin` reuses it for the same reason.
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
        let mut cmd = toolchain.cargo_build(&root, target);
        cmd.args(["--profile", "wasm-plugin", "--target-dir"])
            .arg(&target_dir);
        // `WASMGATE_PLUGIN_NAMES=1`: plugins that keep their function names (the same
        // code, with its name section), so that wasmtime's perf map names them for
        // profiling (bench/README.md, `instructions.py --wasm`).
        if env::var_os("WASMGATE_PLUGIN_NAMES").is_some() {
            cmd.env("CARGO_PROFILE_WASM_PLUGIN_STRIP", "false");
        }
        for p in &packages {
            cmd.args(["-p", &p.package]);
        }
        toolchain::run(cmd, &format!("plugins for {target}"))?;
        for plugin in packages {
            let module = target_dir
                .join(target)
                .join("wasm-plugin")
                .join(format!("{}.wasm", plugin.package.replace('-', "_")));
            let bytes = fs::read(&module).map_err(|e| format!("{}: {e}", module.display()))?;
            let component = toolchain::componentize(&bytes, target == WASIP1)
                .map_err(|e| format!("plugins/{}: making a component: {e}", plugin.dir))?;
            let name = plugin.dir.rsplit('/').next().unwrap_or(&plugin.dir);
            let out = dest.join(format!("{name}.wasm"));
            fs::write(&out, &component).map_err(|e| format!("{}: {e}", out.display()))?;
            // Its SHA-256, embedded beside an embedded component: the compile cache is
            // keyed by it, and a restart that finds the entry never reads the component.
            let digest = dest.join(format!("{name}.sha256"));
            fs::write(&digest, Sha256::digest(&component))
                .map_err(|e| format!("{}: {e}", digest.display()))?;
            // The core module too: tests load it to prove a plain
            // `cargo build --target wasm32-unknown-unknown` output works as a plugin.
            let core = dest.join("core").join(format!("{name}.wasm"));
            fs::write(&core, &bytes).map_err(|e| format!("{}: {e}", core.display()))?;
        }
    }
    println!("cargo:rustc-env=WASMGATE_BUILT_PLUGINS={}", dest.display());
    println!(
        "cargo:rustc-env=WASMGATE_PLUGIN_TARGET_DIR={}",
        target_dir.display()
    );
    Ok(())
}

/// A release build for x86-64 Linux linked by rust-lld (Rust's default linker there
/// since 1.90) lays the functions a start runs side by side, in the order
/// `runtime/startup.order` lists them (`bench/startup-order.sh` makes it). Each page of
/// code a start touches maps the 64 KiB around it, so the 2.4 MiB of functions a start
/// runs, scattered over 22 MiB of code, kept 10.6 MiB of the binary resident at rest.
/// Names the build no longer has are skipped. Whether the linker takes the option is
/// not guessed from the toolchain (a distribution's rustc, a linker set in
/// `.cargo/config.toml` or `-fuse-ld=` in the flags each link with another one): an
/// empty program is linked with it first, the way this build links, and the option is
/// only passed on if that works. (Cargo does not rerun this script when only a
/// config file's linker changes: `cargo clean -p wasmgate --release` then.)
fn startup_order(manifest: &Path, workspace: &Path, out_dir: &Path) {
    let order = manifest.join("startup.order");
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var("HOST").ok() != env::var("TARGET").ok()
        || env::var("PROFILE").as_deref() != Ok("release")
    {
        return;
    }
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let args = [
        format!("-Wl,--symbol-ordering-file={}", order.display()),
        "-Wl,--no-warn-symbol-ordering".to_string(),
    ];
    if order.is_file() && links_with(workspace, out_dir, &args) {
        for arg in args {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
    }
}

/// Does an empty program link with `link_args` added, with this build's compiler,
/// flags and linker, run from `workspace` as cargo runs rustc (relative paths in the
/// flags resolve the same)?
fn links_with(workspace: &Path, out_dir: &Path, link_args: &[String]) -> bool {
    let source = out_dir.join("link-probe.rs");
    if fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut probe = std::process::Command::new(rustc);
    probe
        .current_dir(workspace)
        .arg(&source)
        .arg("-o")
        .arg(out_dir.join("link-probe"))
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--cap-lints",
            "allow",
        ]);
    if let Ok(target) = env::var("TARGET") {
        probe.args(["--target", &target]);
    }
    // Where cargo puts them: the configured linker before the flags, which may override it.
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        probe.arg("-C").arg({
            let mut a = std::ffi::OsString::from("linker=");
            a.push(linker);
            a
        });
    }
    if let Ok(flags) = env::var("CARGO_ENCODED_RUSTFLAGS") {
        probe.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    for arg in link_args {
        probe.arg("-C").arg(format!("link-arg={arg}"));
    }
    probe
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Is `version` (`2.36`, `1.95.0`) at least `major.minor`?
fn version_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// Is this machine's glibc (`getconf GNU_LIBC_VERSION`: `glibc 2.36`) at least
/// `major.minor`? No: anything unexpected.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    version_at_least(version, major, minor)
}

/// Every `plugins/*/Cargo.toml` and `plugins/*/*/Cargo.toml` package.
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
                let package = toolchain::package_name(&text)
                    .ok_or_else(|| format!("{}: no [package] name", manifest.display()))?;
                found.push(Plugin {
                    dir: rel,
                    package,
                    target: toolchain::plugin_target(&text),
                });
            } else if depth == 0 {
                dirs.push((path, rel, depth + 1));
            }
        }
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(found)
}
