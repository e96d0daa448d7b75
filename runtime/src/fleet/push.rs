//! `wasmgate push --to etcd://.../PREFIX PATH... [--prune]`: validate files as
//! `wasmgate validate` does, then write them in one transaction, one key per file
//! (`/PREFIX/<file name>`). Invalid input writes nothing. Unchanged keys are not
//! rewritten (replicas see no change for them); `--prune` deletes config keys whose
//! files were not given. etcd bounds one transaction's operations (`--max-txn-ops`,
//! 128 by default): a push of more files needs that raised.

use std::collections::BTreeMap;
use std::path::PathBuf;

use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp};

use super::{Access, StoreUrl, timed};

/// The keys `paths` become: file name under the prefix -> text. Directories give
/// their `*.yaml` / `*.yml` files directly inside, as `--config` reads them.
pub fn keys_of(url: &StoreUrl, paths: &[PathBuf]) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut keys = BTreeMap::new();
    let mut origin: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut errors = Vec::new();
    for path in paths {
        let files: Vec<PathBuf> = if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut files: Vec<PathBuf> = entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| {
                            p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                        })
                        .collect();
                    files.sort();
                    files
                }
                Err(e) => {
                    errors.push(format!("{}: {e}", path.display()));
                    continue;
                }
            }
        } else {
            vec![path.clone()]
        };
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let key = format!("{}{name}", url.prefix);
            if !url.is_config_key(&key) {
                errors.push(format!(
                    "{}: '{name}' cannot be a key under {}",
                    file.display(),
                    url.prefix
                ));
                continue;
            }
            if let Some(first) = origin.get(&key) {
                errors.push(format!(
                    "{}: the same key {key} as {}",
                    file.display(),
                    first.display()
                ));
                continue;
            }
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    origin.insert(key.clone(), file.clone());
                    keys.insert(key, text);
                }
                Err(e) => errors.push(format!("{}: {e}", file.display())),
            }
        }
    }
    if errors.is_empty() {
        Ok(keys)
    } else {
        Err(errors)
    }
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    pub written: usize,
    pub removed: usize,
    pub revision: i64,
}

/// Write `keys` (and with `prune`, delete the other config keys) in one transaction that
/// applies only if no key it read has changed since; a concurrent change makes it fail
/// and write nothing.
pub async fn push(
    url: &StoreUrl,
    access: &Access,
    keys: &BTreeMap<String, String>,
    prune: bool,
) -> Result<Pushed, String> {
    let mut client = super::connect(url, access).await?;
    let got = timed(
        url,
        "reading the prefix",
        client.get(
            url.prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        ),
    )
    .await?;
    let revision = got.header().map_or(0, |h| h.revision());
    let stored: BTreeMap<String, (Vec<u8>, i64)> = got
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (kv.value().to_vec(), kv.mod_revision()),
            )
        })
        .filter(|(key, _)| url.is_config_key(key))
        .collect();
    let mut guards = Vec::new();
    let mut ops = Vec::new();
    for (key, text) in keys {
        match stored.get(key) {
            Some((value, _)) if value == text.as_bytes() => {}
            Some((_, modified)) => {
                guards.push(Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    *modified,
                ));
                ops.push(TxnOp::put(key.as_str(), text.as_str(), None));
            }
            None => {
                guards.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
                ops.push(TxnOp::put(key.as_str(), text.as_str(), None));
            }
        }
    }
    let written = ops.len();
    if prune {
        for (key, (_, modified)) in stored.iter().filter(|(k, _)| !keys.contains_key(*k)) {
            guards.push(Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                *modified,
            ));
            ops.push(TxnOp::delete(key.as_str(), None::<DeleteOptions>));
        }
    }
    let removed = ops.len() - written;
    if ops.is_empty() {
        return Ok(Pushed {
            written: 0,
            removed: 0,
            revision,
        });
    }
    let txn = Txn::new().when(guards).and_then(ops);
    let done = timed(url, "writing the transaction", client.txn(txn)).await?;
    if !done.succeeded() {
        return Err(format!(
            "{url}: keys changed while pushing (another writer); nothing was written, push again"
        ));
    }
    Ok(Pushed {
        written,
        removed,
        revision: done.header().map_or(revision, |h| h.revision()),
    })
}
