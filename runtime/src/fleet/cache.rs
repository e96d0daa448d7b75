//! `--etcd-cache DIR`: the last snapshot a replica applied, written after every good
//! apply, so a replica that starts while etcd is unreachable serves it instead of
//! nothing. One file, `DIR/snapshot.json` (prefix, revision, keys), written to a new
//! temporary file (never through an existing name or link) and renamed, readable by its
//! owner only (Secrets are config too). The folder and the file are only used when this
//! user owns them and nobody else may write them: a snapshot someone else planted would
//! be served.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Listing, StoreUrl};

#[derive(Debug, Serialize, Deserialize)]
struct File {
    prefix: String,
    revision: i64,
    keys: BTreeMap<String, String>,
}

/// The cache folder of one replica.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("snapshot.json")
    }

    /// Write `listing` (what was just applied from `url`, so its values are text).
    pub fn write(&self, url: &StoreUrl, listing: &Listing) -> Result<(), String> {
        let file = File {
            prefix: url.prefix.clone(),
            revision: listing.revision,
            keys: listing
                .keys
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        };
        let text = serde_json::to_vec(&file).map_err(|e| e.to_string())?;
        let path = self.path();
        let tmp = self
            .dir
            .join(format!(".snapshot.{}.tmp", std::process::id()));
        let written = (|| {
            create_private_dir(&self.dir)?;
            trusted(&self.dir)?;
            let _ = std::fs::remove_file(&tmp);
            let mut f = private_file(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("--etcd-cache {}: {e}", path.display())
        })
    }

    /// The snapshot written for `url`'s prefix; an error says why there is none usable.
    pub fn read(&self, url: &StoreUrl) -> Result<Listing, String> {
        let path = self.path();
        trusted(&self.dir)
            .and_then(|()| trusted(&path))
            .map_err(|e| e.to_string())?;
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: File =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if file.prefix != url.prefix {
            return Err(format!(
                "{}: holds prefix {}, not {}",
                path.display(),
                file.prefix,
                url.prefix
            ));
        }
        Ok(Listing {
            revision: file.revision,
            keys: file
                .keys
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect(),
        })
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// A new file (`create_new`: an existing name or link there is an error, not followed).
#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// `path` is no link, is this user's, and nobody else may write it.
#[cfg(unix)]
fn trusted(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let me = rustix::process::geteuid().as_raw();
    let why = if meta.file_type().is_symlink() {
        "is a symbolic link"
    } else if meta.uid() != me {
        "is not owned by this user"
    } else if meta.mode() & 0o022 != 0 {
        "may be written by other users"
    } else {
        return Ok(());
    };
    Err(std::io::Error::other(format!("{} {why}", path.display())))
}

#[cfg(not(unix))]
fn trusted(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_snapshot_reads_back_for_its_prefix_only() {
        let dir = std::env::temp_dir().join(format!("wasmgate-etcd-cache-{}", std::process::id()));
        let cache = Cache::new(dir.join("nested"));
        let url: StoreUrl = "etcd://127.0.0.1:2379/fleet".parse().expect("url");
        let listing = Listing {
            revision: 7,
            keys: [("/fleet/a.yaml".to_string(), b"kind: x".to_vec())].into(),
        };
        assert!(cache.read(&url).is_err());
        cache.write(&url, &listing).expect("write");
        assert_eq!(cache.read(&url).expect("read"), listing);
        let other: StoreUrl = "etcd://127.0.0.1:2379/other".parse().expect("url");
        let err = cache.read(&other).expect_err("another prefix");
        assert!(err.contains("holds prefix /fleet/"), "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("nested/snapshot.json"))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
            // A snapshot others may write is not served.
            let file = dir.join("nested/snapshot.json");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
            let err = cache.read(&url).expect_err("a writable snapshot");
            assert!(err.contains("may be written by other users"), "{err}");
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
