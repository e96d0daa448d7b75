//! Compiled components kept on disk between runs, so a restart deserializes machine code
//! instead of running Cranelift again: start-up drops from about a second to a few
//! milliseconds per component, and the compiler's working memory (tens of MiB that the
//! allocator keeps afterwards) is never touched.
//!
//! An entry is named by the SHA-256 of the component's bytes and wasmtime's compatibility
//! hash of the engine configuration, so a changed plugin, wasmtime version or engine
//! setting misses and recompiles. Loading compiled code trusts the file, so the folder
//! is created private (0700) and an entry is used only while neither it nor its folder
//! is writable by group or others; anything odd falls back to compiling.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components live unless `--compile-cache` says otherwise:
/// `$XDG_CACHE_HOME/wasmgate` or `~/.cache/wasmgate`.
pub fn default_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("wasmgate"))
}

fn entry_path(dir: &Path, engine: &Engine, bytes: &[u8]) -> PathBuf {
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let mut sha = Sha256::new();
    sha.update(engine_hash.finish().to_le_bytes());
    sha.update(env!("CARGO_PKG_VERSION").as_bytes());
    sha.update(bytes);
    let digest = sha.finalize();
    let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{name}.cwasm"))
}

fn private(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| !m.file_type().is_symlink() && m.permissions().mode() & 0o022 == 0)
        .unwrap_or(false)
}

/// The compiled component for `bytes`: from `dir` when a usable entry exists, otherwise
/// compiled and (best effort) stored there.
pub fn load_or_compile(dir: &Path, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    let path = entry_path(dir, engine, bytes);
    if private(dir) && private(&path) {
        match deserialize(engine, &path) {
            Ok(c) => {
                tracing::debug!(path = %path.display(), "compiled component loaded from the compile cache");
                return Ok(c);
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), "compile cache entry unusable: {e:#}")
            }
        }
    }
    let compiled = engine.precompile_component(bytes)?;
    match store(dir, &path, &compiled) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "compiled component stored in the compile cache")
        }
        Err(e) => tracing::warn!(dir = %dir.display(), "compile cache not used: {e}"),
    }
    // From the bytes just produced, not from the file: nothing on disk is trusted here.
    deserialize_bytes(engine, &compiled)
}

fn store(dir: &Path, path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if !private(dir) {
        return Err(std::io::Error::other(
            "folder is writable by others; not used",
        ));
    }
    // Write beside, then rename: a concurrent reader sees the old entry or the whole new one.
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(compiled)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the file holds code it produced and that nobody
    // changes it while mapped. Entries are written only by `store` above (0600 in a 0700
    // folder, renamed into place, never rewritten in place) and are used only while
    // neither file nor folder is writable by group or others; wasmtime itself checks the
    // header's version and engine settings and refuses a mismatch.
    unsafe { Component::deserialize_file(engine, path) }
}

#[allow(unsafe_code)]
fn deserialize_bytes(engine: &Engine, compiled: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `compiled` came from `Engine::precompile_component` on this very engine a
    // moment ago, in this process.
    unsafe { Component::deserialize(engine, compiled) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_in_a_folder_others_can_write_are_not_trusted() {
        let dir = std::env::temp_dir().join(format!("wasmgate-cache-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(!private(&dir));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(private(&dir));
        assert!(!private(&dir.join("missing")));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
