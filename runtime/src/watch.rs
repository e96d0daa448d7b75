//! `--plugins DIR` is watched: every `--plugin-poll-ms` the `.wasm` files in it are
//! listed with their size and modification time, and any difference from the last
//! listing (a file added, changed or removed) reloads the gateway, as SIGHUP does.
//!
//! Polling rather than inotify: it works on every file system (network and container
//! mounts included), costs one directory listing per period, and needs no dependency.
//! A reload compiles what changed on a blocking thread, never on the runtime's own
//! threads, and swaps the snapshot only when everything in it is good; a broken plugin
//! is refused with its reason and the previous build keeps serving. A failed reload is
//! not retried until the directory changes again. A file still being written when it
//! is listed is read half-written and refused; its next change (the rest of the write)
//! reloads again. Writing to a temporary name and renaming is the clean way to publish.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::gateway::Gateway;

/// What the watcher compares: each `.wasm` file's size and modification time.
pub type Listing = BTreeMap<String, (u64, Option<SystemTime>)>;

/// List the `.wasm` files of `dir`. An unreadable directory lists as empty (and
/// reloads when it becomes readable again).
pub fn list(dir: &Path) -> Listing {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Listing::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            Some((name, (meta.len(), meta.modified().ok())))
        })
        .collect()
}

/// What changed between two listings, for the log line: `added a.wasm, changed b.wasm`.
pub fn describe(before: &Listing, after: &Listing) -> String {
    let mut parts = Vec::new();
    for (name, stamp) in after {
        match before.get(name) {
            None => parts.push(format!("added {name}")),
            Some(old) if old != stamp => parts.push(format!("changed {name}")),
            Some(_) => {}
        }
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        parts.push(format!("removed {name}"));
    }
    parts.join(", ")
}

/// Watch `dir` for as long as the process runs, starting from `seen` (the listing
/// taken before the gateway loaded its plugins, so a change during start-up is not
/// missed).
pub async fn plugins(gateway: Arc<Gateway>, dir: PathBuf, every: Duration, mut seen: Listing) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let scan = dir.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || list(&scan)).await else {
            continue;
        };
        if now == seen {
            continue;
        }
        tracing::info!(
            dir = %dir.display(),
            "plugins changed ({}): reloading",
            describe(&seen, &now)
        );
        seen = now;
        // `reload` logs each reason itself and keeps the last good snapshot on failure.
        if let Err(errors) = gateway.reload().await {
            tracing::error!(
                "plugin change: reload failed with {} error(s)",
                errors.len()
            );
        }
    }
}

/// Every `every`, while a RequestAuthentication names a `jwksUri`: reload, which fetches
/// those keys again (an identity provider rotates them; the keys fetched before keep
/// serving if the fetch fails).
pub async fn jwks(gateway: Arc<Gateway>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if !gateway.snapshot().fetches_jwks {
            continue;
        }
        tracing::debug!("fetching jwksUri keys again: reloading");
        if let Err(errors) = gateway.reload().await {
            tracing::error!("JWKS refresh: reload failed with {} error(s)", errors.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_each_change() {
        let t = Some(SystemTime::UNIX_EPOCH);
        let before: Listing = [("a.wasm".into(), (1, t)), ("b.wasm".into(), (2, t))].into();
        let after: Listing = [("b.wasm".into(), (3, t)), ("c.wasm".into(), (1, t))].into();
        assert_eq!(
            describe(&before, &after),
            "changed b.wasm, added c.wasm, removed a.wasm"
        );
    }

    #[test]
    fn list_sees_only_wasm_files() {
        let dir = std::env::temp_dir().join(format!("wasmgate-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("p.wasm"), b"abc").expect("write");
        std::fs::write(dir.join("notes.txt"), b"x").expect("write");
        let listing = list(&dir);
        assert_eq!(listing.keys().collect::<Vec<_>>(), ["p.wasm"]);
        assert_eq!(listing["p.wasm"].0, 3);
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(list(&dir).is_empty());
    }
}
