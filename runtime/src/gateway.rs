//! The running gateway: loads config and plugins into a snapshot, binds one listener per
//! Gateway server port, serves the admin endpoint, and reloads on SIGHUP or
//! `POST /reload`. A reload builds a whole new snapshot beside the old one and swaps it
//! only when everything (config, plugins, new listeners) is good; otherwise it logs why
//! and the gateway keeps serving its last good config.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::plugin::{HostSettings, PluginHost};
use crate::proxy::{ConnInfo, Shared, Upstream, handle};
use crate::snapshot::{CompileCache, PluginSources, Snapshot};

/// Longest a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest request head accepted (Envoy's `max_request_headers_kb` default, 60 KiB).
const MAX_HEADERS_BYTES: usize = 60 << 10;

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: Vec<PathBuf>,
    pub plugins: Option<PathBuf>,
    pub admin: SocketAddr,
    /// Address listeners bind to unless a Gateway server sets `bind`.
    pub listen_address: IpAddr,
    pub host: HostSettings,
}

/// Load config and build a snapshot. Errors are complete lines (file, resource, field).
pub async fn load(
    options: &Options,
    host: &PluginHost,
    cache: &CompileCache,
) -> Result<Snapshot, Vec<String>> {
    let config = wasmgate_config::load(&options.config)
        .map_err(|errors| errors.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let sources = PluginSources {
        dir: options.plugins.clone(),
    };
    Snapshot::build(&config, host, &sources, cache)
        .await
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    options: Options,
    shared: Arc<Shared>,
    cache: CompileCache,
    listeners: Mutex<BTreeMap<u16, JoinHandle<()>>>,
    /// Watches every connection, so shutdown can drain them; `None` once draining.
    graceful: Arc<std::sync::Mutex<Option<GracefulShutdown>>>,
    /// One reload at a time: a later request waits, then reads the files again.
    reloading: Mutex<()>,
    ready: AtomicBool,
}

impl Gateway {
    /// Load everything and bind every listener; fails with all the reasons.
    pub async fn start(options: Options) -> Result<Arc<Gateway>, Vec<String>> {
        let host = PluginHost::new(&options.host).map_err(|e| vec![e])?;
        let cache = CompileCache::default();
        let snapshot = load(&options, &host, &cache).await?;
        let gateway = Arc::new(Gateway {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snapshot),
                host,
                upstream: Upstream::new(),
                ids: crate::plugin::Random::new(None),
            }),
            options,
            cache,
            listeners: Mutex::new(BTreeMap::new()),
            graceful: Arc::new(std::sync::Mutex::new(Some(GracefulShutdown::new()))),
            reloading: Mutex::new(()),
            ready: AtomicBool::new(false),
        });
        let snapshot = gateway.shared.snapshot.load_full();
        gateway.open_listeners(&snapshot).await?;
        gateway.ready.store(true, Ordering::SeqCst);
        Ok(gateway)
    }

    /// True once every listener of the current snapshot is accepting.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Rebuild from the same paths; swap only if everything is good.
    pub async fn reload(&self) -> Result<(), Vec<String>> {
        let _one_at_a_time = self.reloading.lock().await;
        let snapshot = match load(&self.options, &self.shared.host, &self.cache).await {
            Ok(s) => Arc::new(s),
            Err(errors) => {
                for e in &errors {
                    tracing::error!("reload rejected: {e}");
                }
                tracing::error!("reload rejected; still serving the last good configuration");
                return Err(errors);
            }
        };
        self.open_listeners(&snapshot).await?;
        self.shared.snapshot.store(snapshot.clone());
        let mut listeners = self.listeners.lock().await;
        let gone: Vec<u16> = listeners
            .keys()
            .filter(|p| !snapshot.ports.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            if let Some(task) = listeners.remove(&port) {
                task.abort();
                tracing::info!(port, "listener closed");
            }
        }
        tracing::info!(ports = ?snapshot.ports.keys().collect::<Vec<_>>(), "configuration reloaded");
        Ok(())
    }

    /// Stop accepting, let open connections finish their requests (HTTP/1 connections
    /// close after the current one, HTTP/2 ones get GOAWAY) for at most `drain`.
    pub async fn shutdown(&self, drain: std::time::Duration) {
        self.ready.store(false, Ordering::SeqCst);
        for (_, task) in std::mem::take(&mut *self.listeners.lock().await) {
            task.abort();
        }
        let graceful = self.graceful.lock().ok().and_then(|mut g| g.take());
        if let Some(graceful) = graceful {
            let open = graceful.count();
            if open > 0 {
                tracing::info!(open, "draining connections for up to {drain:?}");
            }
            if tokio::time::timeout(drain, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("drain time over; closing the remaining connections");
            }
        }
    }

    /// Bind the ports of `snapshot` that have no listener yet. All or nothing.
    async fn open_listeners(&self, snapshot: &Snapshot) -> Result<(), Vec<String>> {
        let mut listeners = self.listeners.lock().await;
        let mut bound = Vec::new();
        let mut errors = Vec::new();
        for (port, table) in &snapshot.ports {
            if listeners.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::new(table.bind.unwrap_or(self.options.listen_address), *port);
            match TcpListener::bind(addr).await {
                Ok(l) => bound.push((*port, l)),
                Err(e) => errors.push(format!("cannot listen on {addr}: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        for (port, listener) in bound {
            tracing::info!(
                port,
                "listening on {}",
                listener
                    .local_addr()
                    .map_or_else(|_| port.to_string(), |a| a.to_string())
            );
            let task = tokio::spawn(accept_loop(
                listener,
                port,
                self.shared.clone(),
                self.graceful.clone(),
            ));
            listeners.insert(port, task);
        }
        Ok(())
    }
}

async fn accept_loop(
    listener: TcpListener,
    port: u16,
    shared: Arc<Shared>,
    graceful: Arc<std::sync::Mutex<Option<GracefulShutdown>>>,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client gets this long to send a request's headers (slow-loris guard).
    // Envoy's default limit on request headers is 60 KiB: larger ones get 431.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADERS_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADERS_BYTES as u32)
        .keep_alive_interval(Some(std::time::Duration::from_secs(60)));
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(port, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let watcher = graceful
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(GracefulShutdown::watcher));
        let Some(watcher) = watcher else {
            // Draining: no new connections.
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let conn = ConnInfo { port, client };
            let service = service_fn(move |req| handle(shared.clone(), conn, req));
            let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(served).await {
                tracing::debug!(port, %client, "connection ended: {e}");
            }
        });
    }
}
