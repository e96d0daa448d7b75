//! `wasmgate push --to etcd://.../PREFIX PATH... [--prune]`: validate files as
//! `wasmgate validate` does, then write them in one transaction, one key per file
//! (`/PREFIX/<file name>`). Invalid input writes nothing, and neither does a push
//! after which the store as a whole would be refused (a resource defined by a key the
//! push keeps and by a pushed file, say). Unchanged keys are not rewritten (replicas
//! see no change for them); `--prune` deletes config keys whose files were not given.
//! etcd bounds one transaction's operations and comparisons (`--max-txn-ops`, 128 by
//! default): a push has one operation per changed or deleted key and compares every
//! config key it keeps plus two ranges, so a store of more than about 125 keys needs
//! that raised.

use std::collections::BTreeMap;
use std::path::PathBuf;

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, Txn, TxnOp};

use super::{Access, StoreUrl, timed};

/// The keys `paths` become: key -> (the file it came from, its text). Directories give
/// their `*.yaml` / `*.yml` files directly inside, as `--config` reads them.
pub fn keys_of(
    url: &StoreUrl,
    paths: &[PathBuf],
) -> Result<BTreeMap<String, (PathBuf, String)>, Vec<String>> {
    let mut keys: BTreeMap<String, (PathBuf, String)> = BTreeMap::new();
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
            let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                errors.push(format!(
                    "{}: the file name is not UTF-8 text",
                    file.display()
                ));
                continue;
            };
            let key = format!("{}{name}", url.prefix);
            if !url.is_config_key(&key) {
                errors.push(format!(
                    "{}: '{name}' cannot be a key under {}",
                    file.display(),
                    url.prefix
                ));
                continue;
            }
            if let Some((first, _)) = keys.get(&key) {
                errors.push(format!(
                    "{}: the same key {key} as {}",
                    file.display(),
                    first.display()
                ));
                continue;
            }
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    keys.insert(key, (file, text));
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

/// A push read against the store at one revision, not yet written.
pub struct Plan {
    client: Client,
    url: StoreUrl,
    revision: i64,
    /// The config keys stored: value and modification revision.
    stored: BTreeMap<String, (Vec<u8>, i64)>,
    /// The keys to write (changed or new), and the ones to delete (`--prune`).
    put: BTreeMap<String, String>,
    delete: Vec<String>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("revision", &self.revision)
            .field("put", &self.put.keys())
            .field("delete", &self.delete)
            .finish()
    }
}

/// Read the prefix and work out what writing `keys` (and with `prune`, deleting the
/// config keys not among them) changes.
pub async fn plan(
    url: &StoreUrl,
    access: &Access,
    keys: &BTreeMap<String, (PathBuf, String)>,
    prune: bool,
) -> Result<Plan, String> {
    let mut client = super::connect(url, access).await?;
    let (revision, stored) = super::read_config(&mut client, url).await?;
    let put = keys
        .iter()
        .filter(|(key, (_, text))| stored.get(*key).is_none_or(|(v, _)| v != text.as_bytes()))
        .map(|(key, (_, text))| (key.clone(), text.clone()))
        .collect();
    let delete = if prune {
        stored
            .keys()
            .filter(|k| !keys.contains_key(*k))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    Ok(Plan {
        client,
        url: url.clone(),
        revision,
        stored,
        put,
        delete,
    })
}

impl Plan {
    /// The store's config after the push, as the replicas will load it.
    /// A kept value that is not UTF-8 text is an error naming its key, as the replicas
    /// refuse it.
    pub fn result(&self) -> Result<Vec<(PathBuf, String)>, Vec<String>> {
        let kept = self
            .stored
            .iter()
            .filter(|(key, _)| !self.delete.contains(key) && !self.put.contains_key(*key))
            .map(|(key, (value, _))| (key.clone(), value.clone()))
            .collect();
        let mut after = super::Listing {
            revision: self.revision,
            keys: kept,
        }
        .documents()?;
        after.extend(
            self.put
                .iter()
                .map(|(key, text)| (StoreUrl::document_name(key), text.clone())),
        );
        after.sort();
        Ok(after)
    }

    /// Write in one transaction that applies only if no config key under the prefix was
    /// written, created or deleted since the plan read it; else nothing is written.
    pub async fn commit(mut self) -> Result<Pushed, String> {
        let url = &self.url;
        let (written, removed) = (self.put.len(), self.delete.len());
        if written + removed == 0 {
            return Ok(Pushed {
                written,
                removed,
                revision: self.revision,
            });
        }
        let after = self.revision + 1;
        // Every config key, in the two ranges around `status/`, last changed before the
        // read; and each key read still exists (a deleted one would compare as 0).
        let status = url.status_key("");
        let mut guards = vec![
            Compare::mod_revision(url.prefix.as_str(), CompareOp::Less, after)
                .with_range(status.as_str()),
            Compare::mod_revision(range_end(&status), CompareOp::Less, after)
                .with_range(range_end(&url.prefix)),
        ];
        // Keys it writes or deletes end as planned whatever happened to them; the ones
        // it keeps must still be there as read.
        guards.extend(
            self.stored
                .iter()
                .filter(|(key, _)| !self.put.contains_key(*key) && !self.delete.contains(key))
                .map(|(key, (_, modified))| {
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, *modified)
                }),
        );
        let mut ops: Vec<TxnOp> = self
            .put
            .iter()
            .map(|(key, text)| TxnOp::put(key.as_str(), text.as_str(), None))
            .collect();
        ops.extend(
            self.delete
                .iter()
                .map(|key| TxnOp::delete(key.as_str(), None::<DeleteOptions>)),
        );
        let txn = Txn::new().when(guards).and_then(ops);
        let done = timed(url, "writing the transaction", self.client.txn(txn))
            .await
            .map_err(|e| {
                if e.contains("too many operations") {
                    format!(
                        "{e} (a push compares every config key it keeps, plus two ranges: raise etcd's --max-txn-ops)"
                    )
                } else {
                    e
                }
            })?;
        if !done.succeeded() {
            return Err(format!(
                "{url}: config keys changed while pushing (another writer); nothing was written, push again"
            ));
        }
        Ok(Pushed {
            written,
            removed,
            revision: done.header().map_or(after, |h| h.revision()),
        })
    }
}

/// The first key after every key starting with `prefix` (etcd's range end).
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    #[test]
    fn range_ends() {
        assert_eq!(super::range_end("/fleet/"), b"/fleet0");
        assert_eq!(super::range_end("/fleet/status/"), b"/fleet/status0");
    }
}
