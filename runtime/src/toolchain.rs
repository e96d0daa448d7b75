//! Building a Rust crate into a wasmgate plugin component, with whatever wasm32 toolchain
//! the machine has: (1) the rustup toolchain's wasm targets; (2) Debian's `rustc-web`
//! with `-Zbuild-std` and rustup's `rust-lld`; otherwise one sentence naming the command
//! that fixes it. Shared, source for source, by `build.rs` (first-party plugins at build
//! time) and `wasmgate build-plugin` (a plugin author's crate), so both take one path.
//! Uses only std, `wit-component` and the WASI adapter: both contexts have them.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target for plugins that need no WASI.
pub const UNKNOWN: &str = "wasm32-unknown-unknown";
/// The target for plugins that use std's WASI support; made a component with the adapter.
pub const WASIP1: &str = "wasm32-wasip1";

/// The sentence printed when no toolchain can build wasm32.
pub const FIX: &str = "no wasm32 Rust target found to build plugins with. Run \
`rustup target add wasm32-unknown-unknown wasm32-wasip1`, or on Debian \
`apt-get install rustc-web cargo-web rust-web-src wasi-libc`.";

/// A toolchain that can build wasm32.
#[derive(Debug, Clone)]
pub enum Toolchain {
    /// rustup's cargo with the wasm targets installed.
    Rustup { cargo: PathBuf },
    /// Debian's `/usr/bin/cargo` and `rustc` building std from source, linked by `lld`.
    Debian { lld: PathBuf },
}

impl Toolchain {
    /// Find one. `forced` is `WASMGATE_WASM_TOOLCHAIN` (`rustup` or `debian`).
    pub fn detect(forced: Option<&str>) -> Result<Toolchain, String> {
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
        if forced != Some("debian") && has_target(UNKNOWN) && has_target(WASIP1) {
            let cargo = env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
            return Ok(Toolchain::Rustup { cargo });
        }
        if forced == Some("rustup") {
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
                "Debian's rustc-web is here but rustup's rust-lld is not; install Rust with \
                 rustup (https://rustup.rs) to link plugins."
                    .to_string()
            })?;
        Ok(Toolchain::Debian { lld })
    }

    /// This toolchain's `cargo`, started in `dir`, with the calling cargo's variables
    /// removed. The caller adds the subcommand.
    pub fn cargo(&self, dir: &Path) -> Command {
        let mut cmd = match self {
            Toolchain::Rustup { cargo } => Command::new(cargo),
            Toolchain::Debian { .. } => Command::new("/usr/bin/cargo"),
        };
        // An outer cargo's variables would point this build at the host's profile,
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
        cmd.current_dir(dir);
        cmd
    }

    /// `cargo build --target <target>` set up for this toolchain, started in `dir`, with
    /// the calling cargo's variables removed. The caller adds profile and packages.
    pub fn cargo_build(&self, dir: &Path, target: &str) -> Command {
        let mut cmd = self.cargo(dir);
        cmd.args(["build", "--target", target]);
        if let Toolchain::Debian { lld } = self {
            let var = format!(
                "CARGO_TARGET_{}_LINKER",
                target.to_uppercase().replace('-', "_")
            );
            cmd.env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env(var, lld)
                .arg("-Zbuild-std=std,panic_abort");
            if target == WASIP1 {
                cmd.env("RUSTFLAGS", "-L /usr/lib/wasm32-wasi");
            }
        }
        cmd
    }
}

/// Run a prepared cargo command; on failure, its stderr in the error.
pub fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let output = cmd
        .output()
        .map_err(|e| format!("starting cargo for {what}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "building {what} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The cargo package name in a `Cargo.toml`'s `[package]` table. A plain reading of the
/// first-party manifests under `plugins/` for `build.rs` (which has no JSON parser);
/// `wasmgate build-plugin` asks `cargo metadata` about an author's crate instead.
pub fn package_name(manifest: &str) -> Option<String> {
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

/// The target a plugin crate asks for: `[package.metadata.wasmgate] target =
/// "wasm32-wasip1"` means WASI; anything else builds for `wasm32-unknown-unknown`. For
/// `build.rs` and the first-party manifests only, as [`package_name`].
pub fn plugin_target(manifest: &str) -> &'static str {
    if manifest.contains("target = \"wasm32-wasip1\"") {
        WASIP1
    } else {
        UNKNOWN
    }
}

/// A component as is; a core module (wit-bindgen's output) made into one, with the WASI
/// preview1 adapter when `wasi`.
pub fn componentize(module: &[u8], wasi: bool) -> Result<Vec<u8>, String> {
    if module.len() >= 8 && module[0..4] == *b"\0asm" && module[6..8] == [1, 0] {
        return Ok(module.to_vec());
    }
    let mut encoder = wit_component::ComponentEncoder::default()
        .module(module)
        .map_err(|e| format!("{e:#}"))?
        .validate(true);
    if wasi {
        encoder = encoder
            .adapter(
                "wasi_snapshot_preview1",
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
            .map_err(|e| format!("{e:#}"))?;
    }
    encoder.encode().map_err(|e| format!("{e:#}"))
}
