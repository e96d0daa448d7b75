//! `wasmgate build-plugin`: a plugin author's crate built for wasm32 and made a component.
//! What the crate is comes from `cargo metadata`, as cargo itself reads the manifest
//! (workspace inheritance, comments, any TOML spelling): the package name, the target it
//! asks for in `[package.metadata.wasmgate]`, the cdylib's artifact name and the target
//! folder. The toolchain is [`crate::toolchain`]'s, shared with `build.rs`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::toolchain::{Toolchain, UNKNOWN, WASIP1, componentize};

/// Where `build.rs` left the components of `plugins/testing` and the examples when this
/// crate was built: the fuzz targets (`fuzz/`) load the misbehave plugin from here.
pub const TEST_PLUGINS: &str = env!("WASMGATE_BUILT_PLUGINS");

/// A plugin crate as cargo sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginCrate {
    /// The package name: the output is `<name>.wasm`.
    pub name: String,
    /// `wasm32-unknown-unknown`, or `wasm32-wasip1` when the manifest asks for it.
    pub target: &'static str,
    /// The cdylib target's name: cargo writes `<lib_name>.wasm` (dashes made
    /// underscores).
    pub lib_name: String,
    /// Where cargo builds it: the workspace's target folder (or `CARGO_TARGET_DIR`, or
    /// `build.target-dir`).
    pub target_dir: PathBuf,
}

impl PluginCrate {
    /// Read the crate whose manifest is `crate_dir/Cargo.toml` with `cargo metadata`.
    pub fn read(toolchain: &Toolchain, crate_dir: &Path) -> Result<PluginCrate, String> {
        // cargo runs in the crate's folder: a relative path means the caller's.
        let crate_dir = &absolute(crate_dir)?;
        let manifest = crate_dir.join("Cargo.toml");
        let mut cmd = toolchain.cargo(crate_dir);
        cmd.args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(&manifest);
        let output = cmd
            .output()
            .map_err(|e| format!("starting cargo metadata: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cargo metadata failed for {}:\n{}",
                manifest.display(),
                String::from_utf8_lossy(&output.stderr).trim_end()
            ));
        }
        let metadata: Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("cargo metadata for {}: {e}", manifest.display()))?;
        let canonical = manifest
            .canonicalize()
            .map_err(|e| format!("{}: {e}", manifest.display()))?;
        Self::from_metadata(&metadata, &canonical)
    }

    /// The package whose manifest is `manifest` (canonical) in `cargo metadata` output.
    pub fn from_metadata(metadata: &Value, manifest: &Path) -> Result<PluginCrate, String> {
        let packages = metadata["packages"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        let package = packages
            .iter()
            .find(|p| {
                p["manifest_path"]
                    .as_str()
                    .and_then(|m| Path::new(m).canonicalize().ok())
                    .is_some_and(|m| m == manifest)
            })
            .ok_or_else(|| {
                let members: Vec<&str> =
                    packages.iter().filter_map(|p| p["name"].as_str()).collect();
                format!(
                    "{}: no [package] here (a workspace manifest?); point build-plugin at one \
                     of its members: {}",
                    manifest.display(),
                    members.join(", ")
                )
            })?;
        let name = package["name"]
            .as_str()
            .ok_or_else(|| {
                format!(
                    "{}: cargo metadata gave no package name",
                    manifest.display()
                )
            })?
            .to_string();
        let target = match &package["metadata"]["wasmgate"]["target"] {
            Value::Null => UNKNOWN,
            Value::String(t) if t == UNKNOWN => UNKNOWN,
            Value::String(t) if t == WASIP1 => WASIP1,
            other => {
                return Err(format!(
                    "{}: [package.metadata.wasmgate] target = {other}: build-plugin builds \
                     \"{UNKNOWN}\" (the default) or \"{WASIP1}\"",
                    manifest.display()
                ));
            }
        };
        let lib_name = package["targets"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .find(|t| {
                t["crate_types"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
            })
            .and_then(|t| t["name"].as_str())
            .ok_or_else(|| {
                format!(
                    "{}: a plugin crate needs `[lib] crate-type = [\"cdylib\"]` (add \"rlib\" \
                     for native tests)",
                    manifest.display()
                )
            })?
            .replace('-', "_");
        let target_dir = metadata["target_directory"]
            .as_str()
            .map(PathBuf::from)
            .ok_or_else(|| {
                format!(
                    "{}: cargo metadata gave no target folder",
                    manifest.display()
                )
            })?;
        Ok(PluginCrate {
            name,
            target,
            lib_name,
            target_dir,
        })
    }
}

/// Build the plugin crate in `crate_dir` for wasm32 (release) and write the component
/// to `out/<package>.wasm`; returns that path. `target_dir` overrides cargo's.
pub fn build_plugin(
    crate_dir: &Path,
    out: &Path,
    target_dir: Option<&Path>,
) -> Result<PathBuf, String> {
    let forced = std::env::var("WASMGATE_WASM_TOOLCHAIN").ok();
    let toolchain = Toolchain::detect(forced.as_deref())?;
    // cargo runs in the crate's folder: relative paths mean the caller's.
    let crate_dir = &absolute(crate_dir)?;
    let krate = PluginCrate::read(&toolchain, crate_dir)?;
    let target_dir = match target_dir {
        Some(dir) => absolute(dir)?,
        None => krate.target_dir.clone(),
    };
    let mut cmd = toolchain.cargo_build(crate_dir, krate.target);
    cmd.arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .args(["--release", "--lib", "--target-dir"])
        .arg(&target_dir);
    let output = cmd.output().map_err(|e| format!("starting cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build failed for {}:\n{}",
            crate_dir.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let wasm = target_dir
        .join(krate.target)
        .join("release")
        .join(format!("{}.wasm", krate.lib_name));
    let bytes = std::fs::read(&wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
    let component = componentize(&bytes, krate.target == WASIP1)
        .map_err(|e| format!("{}: making a component: {e}", wasm.display()))?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let dest = out.join(format!("{}.wasm", krate.name));
    std::fs::write(&dest, component).map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(dest)
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}
