//! Whether the compile cache may be trusted: its entries are machine code the gateway
//! runs outside the Wasm sandbox, so an entry is used only when
//!
//! - the folder's real path (links resolved once, then used for every open) is owned by
//!   this user and writable by nobody else; every folder above it on that real path is
//!   owned by this user or root and writable by nobody else, unless it is root's and
//!   sticky (`/tmp`), where others cannot rename what is ours;
//! - the entry (and its tag) is opened without following links, is a regular file
//!   owned by this user, and readable or writable by nobody else;
//! - its tag, an HMAC-SHA-256 over the entry's name and bytes with the folder's key
//!   (`.key`, 32 random bytes made at first use), matches. A file copied in from
//!   elsewhere, a swapped or truncated entry fails the check and is compiled again.
//!
//! Who can write the folder can read the key: the tag proves that this folder's owner
//! stored the entry, not more. See docs/architecture.md, "The compile cache".

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type Tagger = Hmac<Sha256>;

/// The key's file name in the folder.
pub const KEY: &str = ".key";
/// What an entry's tag file adds to its name.
pub const TAG: &str = ".tag";

const KEY_LEN: usize = 32;

/// `O_NOFOLLOW`, for `OpenOptionsExt::custom_flags`.
pub fn no_follow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `dir`'s real path (links resolved) when it is a folder this user may trust with
/// code (see the module's rules), checked up to `/` along that real path: callers use
/// it, not `dir`, so no link in `dir` is followed again after the check.
pub fn trusted_dir(dir: &Path) -> Option<std::path::PathBuf> {
    let real = std::fs::canonicalize(dir).ok()?;
    let meta = std::fs::symlink_metadata(&real).ok()?;
    let mode = meta.permissions().mode();
    if !meta.is_dir() || meta.uid() != me() || mode & 0o022 != 0 {
        return None;
    }
    let parents_safe = real.ancestors().skip(1).all(|parent| {
        let Ok(meta) = std::fs::symlink_metadata(parent) else {
            return false;
        };
        let mode = meta.permissions().mode();
        let owner_ok = meta.uid() == me() || meta.uid() == 0;
        let sticky_root = meta.uid() == 0 && mode & 0o1000 != 0;
        owner_ok && (mode & 0o022 == 0 || sticky_root)
    });
    parents_safe.then_some(real)
}

/// Open `path` for reading when it is a regular file of this user that nobody else may
/// read or write, without following a link.
pub fn open_private(path: &Path) -> Option<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(no_follow())
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    (meta.is_file() && meta.uid() == me() && meta.permissions().mode() & 0o077 == 0).then_some(file)
}

/// Create `path` anew (never through a link or over a file), private to this user.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(path)
}

/// The folder's key, made when it has none. `None` when it cannot be read or made, or
/// is not private.
pub fn key(dir: &Path, create: bool) -> Option<[u8; KEY_LEN]> {
    let path = dir.join(KEY);
    if let Some(key) = read_key(&path) {
        return Some(key);
    }
    // None there (or none usable: making one then fails, as the name is taken).
    if !create {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    crate::entropy::fill(&mut key);
    // Written beside and linked into place: two processes making a key at once agree
    // on the one that lands first.
    let tmp = dir.join(format!("{KEY}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = create_private(&tmp).and_then(|mut f| {
        f.write_all(&key)?;
        f.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Some(key),
        // Someone else's key landed first: use it.
        Err(_) => read_key(&path),
    }
}

/// The key at `path`: a private file of exactly [`KEY_LEN`] bytes.
fn read_key(path: &Path) -> Option<[u8; KEY_LEN]> {
    let mut file = open_private(path)?;
    let mut key = [0u8; KEY_LEN];
    let mut extra = [0u8; 1];
    let whole = file.read_exact(&mut key).is_ok() && matches!(file.read(&mut extra), Ok(0));
    whole.then_some(key)
}

fn tagger(key: &[u8; KEY_LEN], name: &str, bytes: &[u8]) -> Tagger {
    // A key of any length is accepted by HMAC; this cannot fail.
    let mut mac = <Tagger as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(&(name.len() as u64).to_le_bytes());
    mac.update(name.as_bytes());
    mac.update(bytes);
    mac
}

/// The tag of entry `name` holding `bytes`, as stored beside it (hex).
pub fn tag(key: &[u8; KEY_LEN], name: &str, bytes: &[u8]) -> String {
    tagger(key, name, bytes)
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Does `stored` (the tag file's text) authenticate entry `name` holding `bytes`?
/// Compared in constant time.
pub fn verify(key: &[u8; KEY_LEN], name: &str, bytes: &[u8], stored: &str) -> bool {
    let text = stored.trim();
    if text.len() != 64 || !text.is_ascii() {
        return false;
    }
    let Some(raw) = (0..32)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    tagger(key, name, bytes).verify_slice(&raw).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wasmgate-trust-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        dir
    }

    #[test]
    fn folders_are_trusted_by_owner_and_mode_up_to_the_root() {
        let dir = folder("dir");
        let real = std::fs::canonicalize(&dir).expect("real path");
        assert_eq!(
            trusted_dir(&dir),
            Some(real),
            "a private folder under /tmp (root's, sticky)"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).expect("chmod");
        assert!(trusted_dir(&dir).is_none(), "group-writable");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        // A parent others may write (and not sticky): whoever can write it can swap ours.
        let inner = dir.join("inner");
        std::fs::create_dir(&inner).expect("mkdir");
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(trusted_dir(&inner).is_some());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(trusted_dir(&inner).is_none(), "a parent writable by others");
        // A link to the folder from a private place resolves to it; a link into it
        // from an open folder still has the open folder above the real path checked.
        let shared = dir.join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let cache = shared.join("cache");
        std::fs::create_dir(&cache).expect("mkdir");
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let home = folder("home");
        let link = home.join("cache");
        std::os::unix::fs::symlink(&cache, &link).expect("symlink");
        assert!(
            trusted_dir(&link).is_none(),
            "the real path runs through an open folder"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(
            trusted_dir(&link),
            std::fs::canonicalize(&cache).ok(),
            "the real path is used"
        );
        assert!(trusted_dir(&dir.join("missing")).is_none());
        std::fs::remove_dir_all(&home).expect("cleanup");
        if me() == 0 {
            // Owned by someone else (nobody), even with private bits.
            std::os::unix::fs::chown(&inner, Some(65534), None).expect("chown");
            assert!(trusted_dir(&inner).is_none(), "a folder of another user");
        } else {
            eprintln!("not root: the other-owner case needs chown");
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn private_files_are_opened_without_following_links() {
        let dir = folder("files");
        let file = dir.join("entry");
        create_private(&file)
            .and_then(|mut f| f.write_all(b"code"))
            .expect("create");
        assert!(open_private(&file).is_some());
        assert!(
            create_private(&file).is_err(),
            "never over an existing file"
        );
        let link = dir.join("link");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        assert!(open_private(&link).is_none(), "a link is not followed");
        assert!(create_private(&dir.join("link")).is_err());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(open_private(&file).is_none(), "readable by others");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn tags_bind_the_key_the_name_and_the_bytes() {
        let dir = folder("key");
        assert!(key(&dir, false).is_none(), "no key before the first store");
        let k = key(&dir, true).expect("made");
        assert_eq!(key(&dir, false), Some(k), "kept");
        assert_eq!(key(&dir, true), Some(k), "not made twice");
        let t = tag(&k, "a.cwasm", b"code");
        assert!(verify(&k, "a.cwasm", b"code", &t));
        assert!(verify(&k, "a.cwasm", b"code", &format!("{t}\n")));
        assert!(!verify(&k, "b.cwasm", b"code", &t), "another entry's tag");
        assert!(!verify(&k, "a.cwasm", b"codE", &t), "changed bytes");
        assert!(
            !verify(&[7u8; 32], "a.cwasm", b"code", &t),
            "another folder's key"
        );
        assert!(!verify(&k, "a.cwasm", b"code", "zz"), "not a tag");
        assert!(!verify(&k, "a.cwasm", b"code", &"é".repeat(32)));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
