//! A fleet of gateways configured through etcd (`--config etcd://HOST:PORT/PREFIX`).
//!
//! Every key under `/PREFIX/` holds YAML documents, exactly what a file would hold; keys
//! under `/PREFIX/status/` are the replicas' own status and never config. A replica reads
//! the prefix at one revision, serves it (after the `--config` files), then watches from
//! the next revision: changes arriving together are applied as one snapshot, all or
//! nothing, exactly as a reload of files ([`follow`]). What each replica serves is
//! written under `/PREFIX/status/<replica-id>` with a lease ([`status`]); `wasmgate push`
//! writes files in one transaction ([`push`]); `--etcd-cache` keeps the last good
//! snapshot on disk for a start while etcd is unreachable ([`cache`]).
//! docs/fleet.md is the operator's guide.

pub mod cache;
pub mod follow;
pub mod health;
pub mod push;
pub mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use etcd_client::{Client, ConnectOptions, GetOptions};

use crate::gateway::Documents;

/// How long one etcd request (not a watch) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    pub endpoints: Vec<String>,
    /// The key prefix with its slashes: `/PREFIX/`.
    pub prefix: String,
}

impl StoreUrl {
    /// `Some` for a `--config` value naming etcd, with its parse result.
    pub fn recognise(text: &str) -> Option<Result<StoreUrl, String>> {
        text.starts_with("etcd://").then(|| text.parse())
    }

    /// Where replica `id` writes its status.
    pub fn status_key(&self, id: &str) -> String {
        format!("{}status/{id}", self.prefix)
    }

    /// True for a key that holds config (under the prefix, not a replica's status).
    pub fn is_config_key(&self, key: &str) -> bool {
        key.strip_prefix(&self.prefix)
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with("status/"))
    }

    /// The name config errors give a key: `etcd:/PREFIX/KEY`.
    pub fn document_name(key: &str) -> PathBuf {
        PathBuf::from(format!("etcd:{key}"))
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("{text}: {why} (expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX)");
        let rest = text
            .strip_prefix("etcd://")
            .ok_or_else(|| bad("not an etcd:// URL"))?;
        let (hosts, prefix) = rest
            .split_once('/')
            .ok_or_else(|| bad("no /PREFIX after the endpoints"))?;
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            return Err(bad("the PREFIX is empty"));
        }
        let endpoints: Vec<String> = hosts.split(',').map(str::to_string).collect();
        for e in &endpoints {
            let port = e.rsplit_once(':').map(|(_, p)| p);
            if e.is_empty() || port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return Err(bad(&format!("endpoint '{e}' is not HOST:PORT")));
            }
        }
        Ok(StoreUrl {
            endpoints,
            prefix: format!("/{prefix}/"),
        })
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = self.prefix.trim_end_matches('/');
        write!(f, "etcd://{}{prefix}", self.endpoints.join(","))
    }
}

/// How to reach etcd: TLS and user (the same flags on `run`, `status` and `push`).
#[derive(Debug, Clone, Default, Args)]
pub struct Access {
    /// CA certificate (PEM) that etcd's serving certificate must chain to; with it, etcd
    /// is reached over TLS (and only with it: no system roots are trusted for etcd).
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's `--client-cert-auth`; needs --etcd-key and
    /// --etcd-ca.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_key", "etcd_ca"])]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (etcd's auth); the password is read from --etcd-password-file.
    #[arg(long, value_name = "NAME", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File whose first line is the --etcd-user's password.
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

impl Access {
    /// The client options these flags ask for; errors name the flag and file.
    pub fn options(&self) -> Result<ConnectOptions, String> {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("--{flag} {}: {e}", path.display()))
        };
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            // etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if self.etcd_ca.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.etcd_ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read("etcd-ca", ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read("etcd-cert", cert)?,
                    read("etcd-key", key)?,
                ));
            }
            options = options.with_tls(tls);
        }
        if let (Some(user), Some(file)) = (&self.etcd_user, &self.etcd_password_file) {
            let text = read("etcd-password-file", file)?;
            let password = String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            if password.is_empty() {
                return Err(format!(
                    "--etcd-password-file {}: the first line is empty",
                    file.display()
                ));
            }
            // etcd's tokens expire (5 minutes by default); a long-running replica renews.
            options = options
                .with_user(user.clone(), password)
                .with_auto_token_refresh(true);
        }
        Ok(options)
    }
}

/// Connect to the store (with a user, this authenticates, so it needs etcd up).
pub async fn connect(url: &StoreUrl, access: &Access) -> Result<Client, String> {
    let options = access.options()?;
    let connecting = Client::connect(&url.endpoints, Some(options));
    match tokio::time::timeout(REQUEST_TIMEOUT, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("{url}: {e}")),
        Err(_) => Err(format!("{url}: no answer in {REQUEST_TIMEOUT:?}")),
    }
}

/// The config keys of the prefix at one revision, with their values as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub revision: i64,
    pub keys: BTreeMap<String, Vec<u8>>,
}

impl Listing {
    /// The first 12 hex digits of SHA-256 over the keys and values: equal configs, equal
    /// digests.
    pub fn digest(&self) -> String {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        for (key, text) in &self.keys {
            hash.update((key.len() as u64).to_be_bytes());
            hash.update(key.as_bytes());
            hash.update((text.len() as u64).to_be_bytes());
            hash.update(text);
        }
        hash.finalize()
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The keys as documents for [`crate::gateway::Gateway::apply_documents`], in key
    /// order; a value that is not UTF-8 text is an error naming its key.
    pub fn documents(&self) -> Result<Documents, Vec<String>> {
        let mut documents = Vec::with_capacity(self.keys.len());
        let mut errors = Vec::new();
        for (key, value) in &self.keys {
            match std::str::from_utf8(value) {
                Ok(text) => documents.push((StoreUrl::document_name(key), text.to_string())),
                Err(e) => errors.push(format!("etcd:{key}: the value is not UTF-8 text ({e})")),
            }
        }
        if errors.is_empty() {
            Ok(documents)
        } else {
            Err(errors)
        }
    }
}

/// Bound one etcd request by [`REQUEST_TIMEOUT`].
pub async fn timed<T>(
    url: &StoreUrl,
    what: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{url}: {what}: {e}")),
        Err(_) => Err(format!("{url}: {what}: no answer in {REQUEST_TIMEOUT:?}")),
    }
}

/// Read every config key of the prefix at one revision (one linearizable range read).
pub async fn list(client: &mut Client, url: &StoreUrl) -> Result<Listing, String> {
    let (revision, stored) = read_config(client, url).await?;
    let keys = stored.into_iter().map(|(k, (v, _))| (k, v)).collect();
    Ok(Listing { revision, keys })
}

/// The store's revision and its config keys, each with its value and the revision
/// that last modified it.
pub async fn read_config(
    client: &mut Client,
    url: &StoreUrl,
) -> Result<(i64, BTreeMap<String, (Vec<u8>, i64)>), String> {
    let got = timed(
        url,
        "reading the prefix",
        client.get(url.prefix.as_str(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = got.header().map_or(0, |h| h.revision());
    let stored = got
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            (key, (kv.value().to_vec(), kv.mod_revision()))
        })
        .filter(|(key, _)| url.is_config_key(key))
        .collect();
    Ok((revision, stored))
}

/// Sleeps that double from 100 ms to 5 s between attempts to reach etcd.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url: StoreUrl = "etcd://127.0.0.1:2379,10.0.0.2:2379/fleet/"
            .parse()
            .expect("valid");
        assert_eq!(url.endpoints, ["127.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(url.prefix, "/fleet/");
        assert_eq!(url.to_string(), "etcd://127.0.0.1:2379,10.0.0.2:2379/fleet");
        assert_eq!(url.status_key("a"), "/fleet/status/a");
        assert!(url.is_config_key("/fleet/vs.yaml"));
        assert!(url.is_config_key("/fleet/team/a/vs.yaml"));
        assert!(!url.is_config_key("/fleet/status/a"));
        assert!(!url.is_config_key("/fleet/"));
        assert!(!url.is_config_key("/fleetx/vs.yaml"));
        for bad in [
            "etcd://127.0.0.1:2379",
            "etcd://127.0.0.1:2379/",
            "etcd://127.0.0.1/p",
            "etcd://a:1,/p",
            "http://127.0.0.1:2379/p",
        ] {
            let err = bad.parse::<StoreUrl>().expect_err(bad);
            assert!(err.starts_with(bad), "{err}");
        }
        assert!(StoreUrl::recognise("examples/x.yaml").is_none());
    }
}
