//! What each replica serves, for operators: `/PREFIX/status/<replica-id>` holds
//! [`Report`] as JSON, written whenever it changes, under a lease the replica keeps alive,
//! so a replica that dies disappears within [`LEASE_TTL`]. `wasmgate status` reads them.

use std::time::{Duration, SystemTime};

use etcd_client::{Client, GetOptions, PutOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Access, Backoff, StoreUrl, timed};

/// How long a replica's status outlives its last keep-alive.
pub const LEASE_TTL: i64 = 10;

/// One replica's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub replica: String,
    /// The store revision its config was read at or last changed by.
    pub revision: i64,
    /// What it serves, as [`super::Listing::digest`]: replicas serving the same config
    /// show the same digest, whatever revision each read it at.
    pub config: String,
    /// When it applied that config (RFC 3339, UTC).
    pub applied_at: String,
    /// The last apply's error (a refused batch), or `None` when it serves the newest.
    pub error: Option<String>,
}

/// Where the replica's follower records what it applied; the status task writes it.
#[derive(Debug, Clone)]
pub struct Reporter {
    tx: watch::Sender<Report>,
}

impl Reporter {
    /// A reporter for `replica`, and the task that keeps its status key (spawn it).
    pub fn new(
        replica: String,
        url: StoreUrl,
        access: Access,
    ) -> (Reporter, impl Future<Output = ()>) {
        let (tx, rx) = watch::channel(Report {
            replica,
            revision: 0,
            config: String::new(),
            applied_at: String::new(),
            error: None,
        });
        (Reporter { tx }, keep(url, access, rx))
    }

    /// The config with `digest`, read at `revision`, is being served.
    pub fn applied(&self, revision: i64, digest: String) {
        let now = crate::telemetry::access::rfc3339(SystemTime::now());
        self.tx.send_modify(|r| {
            r.revision = revision;
            r.config = digest;
            r.applied_at = now;
            r.error = None;
        });
    }

    /// The store's newest config was refused: `error` (the config served is unchanged).
    pub fn refused(&self, error: String) {
        self.tx.send_modify(|r| r.error = Some(error));
    }
}

/// Keep the status key written, re-granting the lease after etcd was away.
async fn keep(url: StoreUrl, access: Access, mut rx: watch::Receiver<Report>) {
    let mut backoff = Backoff::default();
    loop {
        if let Err(e) = keep_once(&url, &access, &mut rx, &mut backoff).await {
            tracing::warn!("fleet status: {e}");
        }
        if rx.has_changed().is_err() {
            return;
        }
        backoff.wait().await;
    }
}

async fn keep_once(
    url: &StoreUrl,
    access: &Access,
    rx: &mut watch::Receiver<Report>,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let mut client = super::connect(url, access).await?;
    let lease = timed(url, "granting a lease", client.lease_grant(LEASE_TTL, None)).await?;
    let id = lease.id();
    let (mut keeper, mut answers) =
        timed(url, "keeping the lease alive", client.lease_keep_alive(id)).await?;
    let mut tick = tokio::time::interval(Duration::from_secs((LEASE_TTL / 3).max(1) as u64));
    let mut report = rx.borrow_and_update().clone();
    write(&mut client, url, &report, id).await?;
    backoff.reset();
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    // The gateway is stopping: its status goes with it.
                    let _ = timed(url, "revoking the lease", client.lease_revoke(id)).await;
                    return Ok(());
                }
                report = rx.borrow_and_update().clone();
                write(&mut client, url, &report, id).await?;
            }
            _ = tick.tick() => {
                timed(url, "keeping the lease alive", keeper.keep_alive()).await?;
            }
            answer = answers.message() => match answer {
                Ok(Some(a)) if a.ttl() > 0 => {}
                Ok(Some(_)) => return Err(format!("{url}: the status lease expired")),
                Ok(None) => return Err(format!("{url}: the lease stream ended")),
                Err(e) => return Err(format!("{url}: the lease stream: {e}")),
            },
        }
    }
}

async fn write(
    client: &mut Client,
    url: &StoreUrl,
    report: &Report,
    lease: i64,
) -> Result<(), String> {
    let value = serde_json::to_string(report).map_err(|e| e.to_string())?;
    let key = url.status_key(&report.replica);
    timed(
        url,
        "writing the status",
        client.put(key, value, Some(PutOptions::new().with_lease(lease))),
    )
    .await
    .map(drop)
}

/// `wasmgate status`: the store's revision and config digest, then every replica's
/// report, one per line, each marked `current` when it serves the store's config.
pub async fn print(url: &StoreUrl, access: &Access) -> Result<String, String> {
    let mut client = super::connect(url, access).await?;
    let store = super::list(&mut client, url).await?;
    let digest = store.digest();
    let got = timed(
        url,
        "reading the status",
        client.get(url.status_key(""), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut out = format!(
        "store revision {}, config {digest}, {} replica(s)\n",
        store.revision,
        got.kvs().len()
    );
    for kv in got.kvs() {
        let line = match serde_json::from_slice::<Report>(kv.value()) {
            Ok(r) if r.applied_at.is_empty() => format!(
                "{}  not serving yet  {}",
                r.replica,
                r.error
                    .map_or_else(|| "connecting".to_string(), |e| format!("error: {e}"))
            ),
            Ok(r) => format!(
                "{}  revision {}  config {} ({})  applied {}  {}",
                r.replica,
                r.revision,
                r.config,
                if r.config == digest {
                    "current"
                } else {
                    "behind"
                },
                r.applied_at,
                r.error
                    .map_or_else(|| "ok".to_string(), |e| format!("error: {e}"))
            ),
            Err(e) => format!(
                "{}: unreadable status: {e}",
                String::from_utf8_lossy(kv.key())
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// This host's name and the process id: the default `--replica-id`.
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wasmgate".to_string());
    format!("{host}-{}", std::process::id())
}
