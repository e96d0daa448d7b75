//! Compiled components kept on disk between runs, so a restart deserializes machine code
//! instead of running Cranelift again: start-up drops from about a second to a few
//! milliseconds per component, and the compiler's working memory (tens of MiB that the
//! allocator keeps afterwards) is never touched.
//!
//! An entry is named by a SHA-256 over wasmtime's compatibility hash of the engine
//! configuration, the gateway's version and the component's own SHA-256 (for an
//! embedded component computed when the binary was built, so a restart that finds the
//! entry never reads the component), so a changed plugin, gateway, wasmtime version or
//! engine setting misses and recompiles. Loading compiled code trusts the file, so the folder
//! is created private (0700) and an entry is used only when the folder and every folder
//! above it pass the owner and mode checks, the entry is a private file of this user
//! opened without following links, and its tag (a keyed digest written beside it)
//! matches; anything odd falls back to compiling ([`trust`]).
//!
//! A miss is compiled by a child process when the gateway runs (`wasmgate
//! compile-entry`, the same binary, building the same engine): it stores the entry and
//! exits, and the gateway loads the entry as on a restart. Cranelift's working memory
//! (tens of MiB that the allocator would keep) is then never the gateway's, so a first
//! start is as small as a restart. If the child fails, the gateway compiles itself.
//!
//! The folder does not grow forever: at start and after every entry it stores, entries
//! (and downloaded plugins in `downloads/`) not used for `--compile-cache-max-age-days`
//! are removed, then the least recently used until the folder holds at most
//! `--compile-cache-max-mib`. Using an entry (or a download) marks it (its modification
//! time), and entries this process has used are never removed by it, so a small limit
//! cannot make a gateway evict what it serves; the start-up pruning runs once the first
//! configuration has loaded. Another gateway sharing the folder can remove an entry
//! this one last used before it started: this one keeps running the code it mapped and
//! compiles again only if a reload needs the entry.

use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

mod trust;

/// Where compiled components live unless `--compile-cache` says otherwise:
/// `$XDG_CACHE_HOME/wasmgate` or `~/.cache/wasmgate`.
pub fn default_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("wasmgate"))
}

/// The entry of the component whose SHA-256 is `sha256`.
fn entry_path(dir: &Path, engine: &Engine, sha256: &[u8; 32]) -> PathBuf {
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let mut sha = Sha256::new();
    sha.update(engine_hash.finish().to_le_bytes());
    sha.update(env!("CARGO_PKG_VERSION").as_bytes());
    sha.update(sha256);
    let digest = sha.finalize();
    let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{name}.cwasm"))
}

/// How large and how old the compile cache may grow.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes the folder's entries and downloads may take together.
    pub max_bytes: u64,
    /// Entries unused for longer are removed.
    pub max_age: Duration,
}

/// `--compile-cache-max-mib`'s default.
pub const DEFAULT_MAX_MIB: u64 = 1024;
/// `--compile-cache-max-age-days`' default.
pub const DEFAULT_MAX_AGE_DAYS: u64 = 30;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_MIB << 20,
            max_age: Duration::from_secs(DEFAULT_MAX_AGE_DAYS * 24 * 3600),
        }
    }
}

/// How to run the child process that compiles a miss into the cache.
#[derive(Debug, Clone)]
pub struct ChildCompiler {
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
}

impl ChildCompiler {
    /// `wasmgate compile-entry` for `dir`, with the engine settings that make its
    /// entries loadable here; `None` when this process's binary cannot be found.
    pub fn new(dir: &Path, max_instances: u32, memory_limit: usize) -> Option<ChildCompiler> {
        // This very binary even if its file was replaced (an upgrade) since it started.
        let own = PathBuf::from("/proc/self/exe");
        let exe = if own.exists() {
            own
        } else {
            std::env::current_exe().ok()?
        };
        let args = vec![
            "compile-entry".into(),
            "--cache".into(),
            dir.as_os_str().to_owned(),
            "--max-instances".into(),
            max_instances.to_string().into(),
            "--memory-limit-bytes".into(),
            memory_limit.to_string().into(),
        ];
        Some(ChildCompiler { exe, args })
    }

    /// Compile `bytes` into the cache at `entry` in a child process; true when it says
    /// it did.
    fn run(&self, bytes: &[u8], entry: &Path) -> bool {
        use std::process::{Command, Stdio};
        let mut command = Command::new(&self.exe);
        command.args(&self.args);
        if let Some(name) = entry.file_name() {
            command.arg("--expect").arg(name);
        }
        let child = command.stdin(Stdio::piped()).stdout(Stdio::null()).spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("compile cache: cannot start the compiler process: {e}");
                return false;
            }
        };
        let fed = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(bytes))
            .unwrap_or(Ok(()));
        match (fed, child.wait()) {
            (Ok(()), Ok(status)) if status.success() => true,
            (fed, status) => {
                tracing::warn!(
                    "compile cache: the compiler process failed ({}); compiling here",
                    match (fed, status) {
                        (Err(e), _) => e.to_string(),
                        (_, Err(e)) => e.to_string(),
                        (_, Ok(status)) => status.to_string(),
                    }
                );
                false
            }
        }
    }
}

/// What `wasmgate compile-entry` does: compile `bytes` with `engine` and store the
/// entry in `dir` (nothing is loaded). `expect`: the entry's file name the gateway
/// computed; another one means another binary, and nothing is stored.
pub fn compile_into(
    dir: &Path,
    engine: &Engine,
    bytes: &[u8],
    expect: Option<&str>,
) -> Result<(), String> {
    let path = entry_path(dir, engine, &Sha256::digest(bytes).into());
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if expect.is_some_and(|e| e != name) {
        return Err(
            "this binary is not the gateway's (its entries are named differently); nothing stored"
                .into(),
        );
    }
    let compiled = engine
        .precompile_component(bytes)
        .map_err(|e| format!("{e:#}"))?;
    store(dir, &path, &compiled).map_err(|e| format!("{}: {e}", dir.display()))?;
    tracing::debug!(path = %path.display(), "compiled component stored in the compile cache");
    Ok(())
}

/// The compile cache: its folder and limits, and when this process started using it
/// (entries used since are its own and never pruned by it).
#[derive(Debug, Clone)]
pub struct DiskCache {
    pub dir: PathBuf,
    pub limits: Limits,
    started: SystemTime,
    child: Option<ChildCompiler>,
}

impl DiskCache {
    /// Use `dir` within `limits`, compiling misses in `child` when given. Nothing is
    /// pruned until the gateway has loaded (and so marked) what it serves: see
    /// [`DiskCache::prune`].
    pub fn open(dir: PathBuf, limits: Limits, child: Option<ChildCompiler>) -> DiskCache {
        DiskCache {
            dir,
            limits,
            child,
            // A little before now: an entry marked in this same second counts as ours.
            started: SystemTime::now() - Duration::from_secs(1),
        }
    }

    /// Remove what is too old, then the least recently used past the size limit.
    /// Best effort: failures are logged at debug and skipped.
    pub fn prune(&self) {
        let Some(dir) = trust::trusted_dir(&self.dir) else {
            return;
        };
        let removed = prune(&dir, &self.limits, self.started, SystemTime::now());
        if !removed.is_empty() {
            tracing::info!(
                dir = %self.dir.display(),
                removed = removed.len(),
                "compile cache pruned (--compile-cache-max-mib, --compile-cache-max-age-days)"
            );
        }
    }

    /// The compiled component for `bytes` (whose SHA-256 is `sha256`): from the folder
    /// when a usable entry exists (`bytes` are not read), else compiled (by the child
    /// process when there is one) and stored there.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        sha256: &[u8; 32],
        bytes: &[u8],
    ) -> wasmtime::Result<Component> {
        let path = entry_path(&self.dir, engine, sha256);
        if let Some(found) = lookup(&self.dir, engine, &path, "loaded from the compile cache") {
            return Ok(found);
        }
        // A folder that exists but is not private is not used at all (nor written).
        let usable = trust::trusted_dir(&self.dir).is_some() || !self.dir.exists();
        if let Some(child) = self.child.as_ref().filter(|_| usable)
            && child.run(bytes, &path)
        {
            let made = "loaded as the compiler process stored it";
            if let Some(compiled) = lookup(&self.dir, engine, &path, made) {
                self.prune();
                return Ok(compiled);
            }
            tracing::warn!(path = %path.display(), "compile cache: the compiler process stored no usable entry; compiling here");
        }
        let (component, stored) = compile_and_store(&self.dir, &path, engine, bytes)?;
        if stored {
            self.prune();
        }
        Ok(component)
    }
}

/// One file the cache may remove: its path, size and last use.
struct Entry {
    path: PathBuf,
    bytes: u64,
    used: SystemTime,
}

/// Entries (`*.cwasm`), downloads and leftovers of interrupted writes in `dir`.
fn entries(dir: &Path) -> Vec<Entry> {
    let mut found = Vec::new();
    for folder in [dir.to_path_buf(), dir.join("downloads")] {
        let Ok(listing) = std::fs::read_dir(&folder) else {
            continue;
        };
        for item in listing.flatten() {
            let Ok(meta) = item.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let path = item.path();
            let name = item.file_name();
            let name = name.to_string_lossy();
            // An entry's tag goes with it (below); a tag without its entry is a leftover.
            let orphan_tag = name
                .strip_suffix(trust::TAG)
                .is_some_and(|entry| !folder.join(entry).exists());
            let ours =
                folder != dir || name.ends_with(".cwasm") || name.ends_with(".tmp") || orphan_tag;
            if ours {
                found.push(Entry {
                    path,
                    bytes: meta.len(),
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
    }
    found
}

/// Prune `dir` as of `now`: remove entries unused for `limits.max_age`, then the least
/// recently used ones until at most `limits.max_bytes` remain; never one used since
/// `started`. Returns what was removed.
fn prune(dir: &Path, limits: &Limits, started: SystemTime, now: SystemTime) -> Vec<PathBuf> {
    let mut all = entries(dir);
    all.sort_by_key(|e| e.used);
    let mut total: u64 = all.iter().map(|e| e.bytes).sum();
    let mut removed = Vec::new();
    for entry in all {
        if entry.used >= started {
            continue;
        }
        let old = now
            .duration_since(entry.used)
            .is_ok_and(|age| age > limits.max_age);
        if !old && total <= limits.max_bytes {
            continue;
        }
        match std::fs::remove_file(&entry.path) {
            Ok(()) => {
                let _ = std::fs::remove_file(tag_path(&entry.path));
                total = total.saturating_sub(entry.bytes);
                removed.push(entry.path);
            }
            Err(e) => tracing::debug!(path = %entry.path.display(), "not pruned: {e}"),
        }
    }
    removed
}

/// Mark an entry used now (its modification time), so pruning keeps it longest. The
/// caller checked that `path` is a private file, not a link (or wrote it itself).
pub fn touch(path: &Path) {
    let marked = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(trust::no_follow())
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = marked {
        tracing::debug!(path = %path.display(), "compile cache entry not marked as used: {e}");
    }
}

/// Compile `bytes` here and (best effort) store the entry at `path` in `dir`; whether
/// it was stored.
fn compile_and_store(
    dir: &Path,
    path: &Path,
    engine: &Engine,
    bytes: &[u8],
) -> wasmtime::Result<(Component, bool)> {
    let compiled = engine.precompile_component(bytes)?;
    let stored = match store(dir, path, &compiled) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "compiled component stored in the compile cache");
            true
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "compile cache not used: {e}");
            false
        }
    };
    // From the bytes just produced, not from the file: nothing on disk is trusted here.
    Ok((deserialize_bytes(engine, &compiled)?, stored))
}

/// Where the tag of the entry at `path` is kept.
fn tag_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(trust::TAG);
    PathBuf::from(name)
}

/// The entry at `path`, when the folder is trusted, the entry is private, its tag
/// matches and wasmtime accepts it; marked as used. `how` ends the debug line that
/// says so.
fn lookup(dir: &Path, engine: &Engine, path: &Path, how: &str) -> Option<Component> {
    // Everything below goes through the folder's real path, checked link-free.
    let dir = trust::trusted_dir(dir)?;
    let path = &dir.join(path.file_name()?);
    let key = trust::key(&dir, false)?;
    let mut file = trust::open_private(path)?;
    let name = path.file_name()?.to_str()?;
    let mut bytes = Vec::new();
    let mut stored = String::new();
    let tag_read = trust::open_private(&tag_path(path))
        .is_some_and(|mut t| t.read_to_string(&mut stored).is_ok());
    if file.read_to_end(&mut bytes).is_err()
        || !tag_read
        || !trust::verify(&key, name, &bytes, &stored)
    {
        tracing::debug!(path = %path.display(), "compile cache entry not authenticated; compiling");
        return None;
    }
    match deserialize(engine, &file, &bytes) {
        Ok(c) => {
            tracing::debug!(path = %path.display(), "compiled component {how}");
            touch(path);
            Some(c)
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), "compile cache entry unusable: {e:#}");
            None
        }
    }
}

fn store(dir: &Path, path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let Some(dir) = trust::trusted_dir(dir) else {
        return Err(std::io::Error::other(
            "folder (or one above it) is not this user's alone; not used",
        ));
    };
    let dir = dir.as_path();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("entry name is not UTF-8"))?;
    let path = &dir.join(name);
    let key = trust::key(dir, true)
        .ok_or_else(|| std::io::Error::other("its key cannot be read or made; not used"))?;
    // The tag first, then the entry; each written beside and renamed into place, so a
    // concurrent reader sees a whole old or whole new file (a mismatch only recompiles).
    let tag = trust::tag(&key, name, compiled);
    write_beside(dir, &tag_path(path), tag.as_bytes())?;
    write_beside(dir, path, compiled)
}

/// Write `bytes` to a fresh private file beside `path`, then rename it to `path`.
fn write_beside(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    // A leftover of an interrupted write by a process of the same id (or a link
    // planted there): removed, never written through.
    let _ = std::fs::remove_file(&tmp);
    let mut file = trust::create_private(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The entry open as `file`, whose `bytes` were just authenticated. wasmtime maps the
/// same file (through `/proc/self/fd`, so no path can be swapped in between); without
/// `/proc` it copies the bytes.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, file: &std::fs::File, bytes: &[u8]) -> wasmtime::Result<Component> {
    use std::os::fd::AsRawFd;
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    // SAFETY: wasmtime requires that the file holds code it produced and that nobody
    // changes it while mapped. `file` is a regular file of this user that nobody else
    // may read or write, in a folder chain only this user (or root) can change, and its
    // bytes carry the tag only `store` above writes (entries are renamed into place,
    // never rewritten in place); wasmtime itself checks the header's version and engine
    // settings and refuses a mismatch.
    if by_fd.exists() {
        unsafe { Component::deserialize_file(engine, &by_fd) }
    } else {
        unsafe { Component::deserialize(engine, bytes) }
    }
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
    fn pruning_removes_the_old_then_the_least_recently_used_but_never_its_own() {
        let dir = std::env::temp_dir().join(format!("wasmgate-prune-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("downloads")).expect("mkdir");
        let now = SystemTime::now();
        let days = |d: u64| now - Duration::from_secs(d * 24 * 3600);
        let file = |name: &str, kib: usize, used: SystemTime| {
            let path = dir.join(name);
            std::fs::write(&path, vec![0u8; kib << 10]).expect("write");
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(used))
                .expect("mtime");
        };
        file("old.cwasm", 10, days(40));
        file("downloads/old-plugin", 10, days(31));
        file(".x.cwasm.1.tmp", 10, days(45));
        file("lru.cwasm", 400, days(3));
        file("recent.cwasm", 400, days(1));
        file("ours.cwasm", 400, now);
        file("notes.txt", 10, days(400)); // not the cache's: left alone
        let limits = Limits {
            max_bytes: 900 << 10,
            max_age: Duration::from_secs(30 * 24 * 3600),
        };
        let started = now - Duration::from_secs(60);
        let mut removed: Vec<String> = prune(&dir, &limits, started, now)
            .iter()
            .map(|p| p.strip_prefix(&dir).expect("in dir").display().to_string())
            .collect();
        removed.sort();
        assert_eq!(
            removed,
            [
                ".x.cwasm.1.tmp",
                "downloads/old-plugin",
                "lru.cwasm",
                "old.cwasm"
            ]
        );
        for kept in ["recent.cwasm", "ours.cwasm", "notes.txt"] {
            assert!(dir.join(kept).exists(), "{kept}");
        }
        // Under a limit smaller than what this process uses, its own entries stay.
        let tiny = Limits {
            max_bytes: 1,
            ..limits
        };
        let removed = prune(&dir, &tiny, started, now);
        assert_eq!(removed, [dir.join("recent.cwasm")]);
        assert!(dir.join("ours.cwasm").exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
