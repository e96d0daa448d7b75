//! A replica following the store: the first read (or, with `--etcd-cache`, the cached
//! snapshot while etcd is unreachable), then a watch from the next revision.
//!
//! Events are gathered until the stream is quiet for [`QUIET`] (at most [`GATHER`] after
//! the first), then the whole prefix as it stands is applied as one snapshot, so a
//! multi-key transaction (one revision) and a burst of writes never show half-applied.
//! A batch the gateway refuses changes nothing it serves; the error goes to the log and
//! the replica's status. When the watch breaks (etcd away, watch compacted), the replica
//! keeps serving, reconnects with back-off and reads the prefix again, applying it if it
//! differs from what it serves.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::time::Instant;

use super::cache::Cache;
use super::health::Health;
use super::status::Reporter;
use super::{Access, Backoff, Listing, StoreUrl};
use crate::gateway::Gateway;

/// A batch ends when no event arrives for this long...
pub const QUIET: Duration = Duration::from_millis(20);
/// ...or this long after its first event.
pub const GATHER: Duration = Duration::from_millis(200);
/// A watch that lasted this long resets the back-off between reconnections.
const STEADY: Duration = Duration::from_secs(10);

/// What a replica follows and where it reports.
#[derive(Debug, Clone)]
pub struct Follower {
    pub url: StoreUrl,
    pub access: Access,
    pub cache: Option<Cache>,
    pub reporter: Reporter,
    pub health: Arc<Health>,
}

/// Where the first config comes from.
pub struct First {
    pub listing: Listing,
    /// The connection it was read on; `None` when it came from the cache.
    pub client: Option<Client>,
}

impl std::fmt::Debug for First {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("First")
            .field("listing", &self.listing)
            .field("connected", &self.client.is_some())
            .finish()
    }
}

impl Follower {
    /// The config to start with: the prefix read from etcd, once `check` (the config
    /// loader) accepts it. While etcd is unreachable or its config is refused, the
    /// snapshot `--etcd-cache` kept is served at once if there is one; else nothing is
    /// served and the read is retried with back-off.
    pub async fn first(&self, check: impl Fn(&Listing) -> Result<(), Vec<String>>) -> First {
        let mut backoff = Backoff::default();
        // The config last refused, so that re-reading it while it is unchanged does not
        // log every error again.
        let mut refused: Option<String> = None;
        loop {
            let why = match self.read().await {
                Ok((client, listing)) => match check(&listing) {
                    Ok(()) => {
                        return First {
                            listing,
                            client: Some(client),
                        };
                    }
                    Err(errors) => {
                        let digest = Some(listing.digest());
                        if refused != digest {
                            for e in &errors {
                                tracing::error!("{e}");
                            }
                            refused = digest;
                        }
                        let why = format!(
                            "{}: revision {} refused ({} error(s))",
                            self.url,
                            listing.revision,
                            errors.len()
                        );
                        self.reporter.refused(refusal(listing.revision, &errors));
                        why
                    }
                },
                Err(e) => e,
            };
            match self.cache.as_ref().map(|c| c.read(&self.url)) {
                Some(Ok(listing)) => {
                    tracing::warn!(
                        revision = listing.revision,
                        "{why}; serving the snapshot --etcd-cache kept"
                    );
                    return First {
                        listing,
                        client: None,
                    };
                }
                Some(Err(none)) => {
                    tracing::warn!("{why}; --etcd-cache has no snapshot ({none}); retrying");
                }
                None => tracing::warn!("{why}; retrying (nothing is served meanwhile)"),
            }
            backoff.wait().await;
        }
    }

    async fn read(&self) -> Result<(Client, Listing), String> {
        let mut client = super::connect(&self.url, &self.access).await?;
        let listing = super::list(&mut client, &self.url).await?;
        Ok((client, listing))
    }

    /// Follow the store for as long as the process runs; `first` is what the gateway
    /// started with (and serves).
    pub async fn run(self, gateway: Arc<Gateway>, first: First) {
        let mut state = State {
            served: first.listing,
            refused: None,
        };
        let mut fresh = first.client.map(|c| (c, state.served.clone()));
        self.served(&state.served).await;
        let mut backoff = Backoff::default();
        loop {
            let (client, listing) = match fresh.take() {
                Some(read) => read,
                None => match self.read().await {
                    Ok(read) => read,
                    Err(e) => {
                        let revision = state.served.revision;
                        tracing::warn!("{e}; still serving revision {revision}");
                        backoff.wait().await;
                        continue;
                    }
                },
            };
            let mut current = listing;
            if current.keys == state.served.keys {
                // The store is back at what is served: a refusal pending is over (the
                // revision stays the one the served config was read at or changed by).
                if state.refused.take().is_some() {
                    self.served(&state.served).await;
                }
            } else if state.refused.as_ref() != Some(&current.digest()) {
                // (A config refused before is not built again for a mere reconnect.)
                self.apply(&gateway, &current, &mut state).await;
            }
            let watched = tokio::time::Instant::now();
            let broken = self.watch(&gateway, client, &mut current, &mut state).await;
            self.health.watching.store(false, Ordering::Relaxed);
            // A watch that broke at once (refused, cancelled, a proxy closing streams)
            // backs off further; one that lasted starts over from the shortest wait.
            if watched.elapsed() > STEADY {
                backoff.reset();
            }
            if let Err(e) = broken {
                tracing::warn!("{e}; reading the prefix again");
                self.health.relists.fetch_add(1, Ordering::Relaxed);
                backoff.wait().await;
            }
        }
    }

    /// Watch from `current.revision + 1`, keeping `current` as the store's view and
    /// applying each batch that changed config. Returns when the watch breaks.
    async fn watch(
        &self,
        gateway: &Gateway,
        mut client: Client,
        current: &mut Listing,
        state: &mut State,
    ) -> Result<(), String> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(current.revision + 1);
        let mut stream = super::timed(
            &self.url,
            "starting the watch",
            client.watch(self.url.prefix.as_str(), Some(options)),
        )
        .await?;
        self.health.watching.store(true, Ordering::Relaxed);
        loop {
            let first = stream.message().await;
            let mut changed = self.take(first, current)?;
            let deadline = Instant::now() + GATHER;
            loop {
                let wait = QUIET.min(deadline.saturating_duration_since(Instant::now()));
                if wait.is_zero() {
                    break;
                }
                match tokio::time::timeout(wait, stream.message()).await {
                    Ok(message) => changed |= self.take(message, current)?,
                    Err(_) => break,
                }
            }
            // Only batches that touched config count: the replicas' own status writes
            // (under the same prefix) never rebuild anything nor write status again.
            if !changed {
                continue;
            }
            if current.keys != state.served.keys {
                self.apply(gateway, current, state).await;
            } else {
                // Written back to what is served (a refused change undone): nothing to
                // build, and the refusal is over.
                state.refused = None;
                state.served.revision = current.revision;
                self.served(&state.served).await;
            }
        }
    }

    /// Fold one watch message into `current`; true if it changed a config key.
    fn take(
        &self,
        message: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
        current: &mut Listing,
    ) -> Result<bool, String> {
        let url = &self.url;
        let response = match message {
            Ok(Some(r)) => r,
            Ok(None) => return Err(format!("{url}: the watch ended")),
            Err(e) => return Err(format!("{url}: the watch: {e}")),
        };
        if response.canceled() {
            let compacted = response.compact_revision();
            return Err(if compacted > 0 {
                format!("{url}: the watch was compacted (revision {compacted})")
            } else {
                format!(
                    "{url}: the watch was cancelled: {}",
                    response.cancel_reason()
                )
            });
        }
        let mut changed = false;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if !url.is_config_key(&key) {
                continue;
            }
            changed = true;
            // The revision of the newest config change (not of others' status writes).
            current.revision = current.revision.max(kv.mod_revision());
            match event.event_type() {
                EventType::Put => {
                    current.keys.insert(key, kv.value().to_vec());
                }
                EventType::Delete => {
                    current.keys.remove(&key);
                }
            }
        }
        Ok(changed)
    }

    /// Serve `current`; on success it becomes what `state` serves.
    async fn apply(&self, gateway: &Gateway, current: &Listing, state: &mut State) {
        tracing::info!(
            revision = current.revision,
            keys = current.keys.len(),
            "{}: applying the store's config",
            self.url
        );
        let applied = match current.documents() {
            Ok(documents) => gateway.apply_documents(documents).await,
            Err(errors) => {
                for e in &errors {
                    tracing::error!("reload rejected: {e}");
                }
                Err(errors)
            }
        };
        match applied {
            Ok(()) => {
                state.served = current.clone();
                state.refused = None;
                self.health.applied.fetch_add(1, Ordering::Relaxed);
                self.served(&state.served).await;
            }
            Err(errors) => {
                self.health.refused.fetch_add(1, Ordering::Relaxed);
                state.refused = Some(current.digest());
                tracing::error!(
                    "{}: revision {} refused; still serving revision {}",
                    self.url,
                    current.revision,
                    state.served.revision
                );
                self.reporter.refused(refusal(current.revision, &errors));
            }
        }
    }

    /// `served` is what the gateway serves now: report it and keep it in the cache.
    async fn served(&self, served: &Listing) {
        self.health
            .revision
            .store(served.revision, Ordering::Relaxed);
        self.reporter.applied(served.revision, served.digest());
        if let Some(cache) = self.cache.clone() {
            let (url, listing) = (self.url.clone(), served.clone());
            // Written (and synced) off the control thread's runtime; awaited, so
            // snapshots are written in order.
            let written = tokio::task::spawn_blocking(move || cache.write(&url, &listing)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("{e}"),
                Err(e) => tracing::warn!("--etcd-cache: {e}"),
            }
        }
    }
}

/// What a follower serves, and the config it last refused (as its digest).
#[derive(Debug)]
struct State {
    served: Listing,
    refused: Option<String>,
}

/// The status line of a refused config: its revision, the first error, how many more.
pub fn refusal(revision: i64, errors: &[String]) -> String {
    let first = errors.first().map_or("", String::as_str);
    match errors.len() {
        0 | 1 => format!("revision {revision}: {first}"),
        n => format!("revision {revision}: {first} (and {} more)", n - 1),
    }
}
