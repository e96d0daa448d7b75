//! Upstream connections: dialling an endpoint and the TLS handshake, shared by both
//! pools; the connection counter; and the HTTP/2 pool: one multiplexed connection per
//! endpoint, settings and SNI, so the request's `:authority` can be the virtual host
//! while the socket goes to the endpoint. HTTP/1.1's pool is [`super::http1`]. Every
//! connection is counted, while it is open, in the pool metrics of the cluster that
//! opened it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::super::Body;
use super::super::error::ProxyError;
use super::super::read_memo::ReadMemo;

use crate::cluster::Cluster;
use crate::telemetry::metrics::OpenConnection;
use crate::tls::client::UpstreamTls;

/// A connection counted as open (in its cluster's pool metrics) until it is dropped:
/// after its last response, or when an upgraded connection ends.
pub struct Counted<T> {
    io: T,
    _open: OpenConnection,
}

impl<T> Counted<T> {
    pub fn new(io: T, open: OpenConnection) -> Self {
        Counted { io, _open: open }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// TLS settings and the SNI to present: what a pooled connection is reusable for.
pub type TlsKey = ([u8; 32], String);

/// What a pooled HTTP/1.1 connection is shared by, besides its endpoint and TLS:
/// clusters that close it alike (idle timeout) and retire it alike
/// (`maxRequestsPerConnection` > 1, `maxConnectionDuration`). So a subset with limits
/// never shares with its parent without, and a reload that changes them starts new
/// connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub idle: Duration,
    /// `maxRequestsPerConnection` when above 1 (1 is `Connection: close`); 0: no count.
    pub max_requests: u32,
    pub max_age: Option<Duration>,
}

impl PoolKey {
    /// The pool `cluster`'s HTTP/1.1 connections belong to.
    pub fn of(cluster: &Cluster) -> PoolKey {
        PoolKey {
            idle: super::pool_idle(cluster),
            max_requests: match cluster.pool.max_requests_per_connection {
                n if n > 1 => n,
                _ => 0,
            },
            max_age: cluster.pool.max_connection_duration,
        }
    }
}

/// The name to present and verify: an IP when the SNI text is one (no SNI is sent).
pub fn server_name(sni: &str) -> Result<ServerName<'static>, ProxyError> {
    ServerName::try_from(sni.to_string())
        .map_err(|_| ProxyError::UpstreamConnect(format!("{sni:?} is not a valid TLS server name")))
}

/// Dial `authority` (`host:port`) for `cluster`: within its connect timeout, with its
/// TCP keepalive, read through [`ReadMemo`] (hyper's reads of it that would find nothing
/// again do not ask tokio).
pub async fn dial(authority: &str, cluster: &Cluster) -> Result<ReadMemo<TcpStream>, ProxyError> {
    let stream = tokio::time::timeout(cluster.pool.connect_timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| ProxyError::UpstreamConnect(format!("{authority}: connect timeout")))?
        .map_err(|e| ProxyError::UpstreamConnect(format!("{authority}: {e}")))?;
    let _ = stream.set_nodelay(true);
    if let Some(ka) = &cluster.pool.tcp_keepalive {
        use std::os::fd::AsFd;
        crate::cluster::set_keepalive(stream.as_fd(), ka);
    }
    Ok(ReadMemo::new(stream))
}

/// TLS over a dialled stream; the handshake shares the connect timeout.
pub async fn handshake(
    tcp: ReadMemo<TcpStream>,
    tls: &UpstreamTls,
    sni: &str,
    timeout: Duration,
) -> Result<TlsStream<ReadMemo<TcpStream>>, ProxyError> {
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let name = server_name(sni)?;
    tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| ProxyError::UpstreamConnect(format!("{sni}: TLS handshake timeout")))?
        .map_err(|e| ProxyError::UpstreamConnect(format!("TLS handshake with {sni}: {e}")))
}

/// Where an HTTP/2 connection goes and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct H2Key {
    /// The endpoint, `host:port`.
    pub target: String,
    pub tls: Option<TlsKey>,
    /// `maxRequestsPerConnection` (0: no count) and `maxConnectionDuration`: clusters
    /// share a connection only when they retire it alike.
    pub retire: (u32, Option<Duration>),
}

impl H2Key {
    /// What `cluster` retires its HTTP/2 connections by.
    pub fn retire(cluster: &Cluster) -> (u32, Option<Duration>) {
        (
            cluster.pool.max_requests_per_connection,
            cluster.pool.max_connection_duration,
        )
    }
}

/// One multiplexed HTTP/2 connection per key, reconnected when it closes, and
/// replaced once it has carried `maxRequestsPerConnection` streams or lived
/// `maxConnectionDuration` (the old one finishes its streams, then closes: hyper closes
/// a connection whose senders are all gone). One connect per key at a time: requests
/// that find no usable connection while one is being opened wait for it.
#[derive(Debug, Default)]
pub struct H2Pool {
    conns: DashMap<H2Key, H2Conn>,
    /// Held while a key's connection is opened; inside, when the last attempt failed.
    connecting: DashMap<H2Key, Arc<tokio::sync::Mutex<Option<std::time::Instant>>>>,
}

/// Numbers connections, so a failed one is removed only if it is still the one kept.
static H2_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Debug)]
struct H2Conn {
    id: u64,
    sender: SendRequest<Body>,
    opened: std::time::Instant,
    /// Streams given out.
    streams: std::sync::atomic::AtomicU32,
    /// Milliseconds after `opened` of the last stream given out.
    used: std::sync::atomic::AtomicU64,
}

impl H2Conn {
    /// The sender for one more stream, unless the connection is closed or retired by
    /// `retire` (the stream is counted when given).
    fn take(&self, retire: (u32, Option<Duration>)) -> Option<SendRequest<Body>> {
        use std::sync::atomic::Ordering::Relaxed;
        let age = self.opened.elapsed();
        let max_requests = retire.0;
        if self.spent(retire, age)
            || (max_requests > 0 && self.streams.fetch_add(1, Relaxed) >= max_requests)
        {
            return None;
        }
        self.used
            .store(u64::try_from(age.as_millis()).unwrap_or(u64::MAX), Relaxed);
        Some(self.sender.clone())
    }

    /// Closed, or retired by `retire` at `age`: it takes no further stream.
    fn spent(&self, retire: (u32, Option<Duration>), age: Duration) -> bool {
        let (max_requests, max_age) = retire;
        self.sender.is_closed()
            || max_age.is_some_and(|max| age >= max)
            || (max_requests > 0
                && self.streams.load(std::sync::atomic::Ordering::Relaxed) >= max_requests)
    }

    /// Spent, or unused for the pool's idle time: dropped from the pool (hyper closes
    /// it once its streams are done).
    fn stale(&self, retire: (u32, Option<Duration>)) -> bool {
        let age = self.opened.elapsed();
        let used = Duration::from_millis(self.used.load(std::sync::atomic::Ordering::Relaxed));
        self.spent(retire, age) || age.saturating_sub(used) >= super::POOL_IDLE
    }
}

impl H2Pool {
    /// Send `req` (its URI carries the `:authority`) on the connection for `key`; a new
    /// connection is counted for `cluster`.
    pub async fn send(
        &self,
        key: H2Key,
        req: Request<Body>,
        cluster: &Cluster,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (mut sender, id) = if key.retire.0 == 1 {
            // One stream per connection: a connection of its own, dialled in parallel
            // with the others (it closes when its stream is done).
            (self.connect(&key, cluster).await?, None)
        } else {
            let (sender, id) = self.pooled(&key, cluster).await?;
            (sender, Some(id))
        };
        if sender.ready().await.is_err() {
            if let Some(id) = id {
                self.conns.remove_if(&key, |_, c| c.id == id);
            }
            return Err(ProxyError::UpstreamReset(format!(
                "HTTP/2 connection to {} closed",
                key.target
            )));
        }
        sender
            .send_request(req)
            .await
            .map_err(|e| super::classify_hyper(&e))
    }

    /// A stream on the pool's connection for `key` (and that connection's id), opening
    /// one when there is none usable: one dial per key at a time.
    async fn pooled(
        &self,
        key: &H2Key,
        cluster: &Cluster,
    ) -> Result<(SendRequest<Body>, u64), ProxyError> {
        let usable = || {
            self.conns
                .get(key)
                .and_then(|c| c.take(key.retire).map(|s| (s, c.id)))
        };
        if let Some(found) = usable() {
            return Ok(found);
        }
        let asked = std::time::Instant::now();
        let lock = self.connecting.entry(key.clone()).or_default().clone();
        let mut failed = lock.lock().await;
        // Another request may have opened one while this one waited; if its attempt
        // failed, this one fails with it (as requests pending on an Envoy connection
        // do), rather than dialling again in turn.
        if let Some(found) = usable() {
            return Ok(found);
        }
        if failed.is_some_and(|at| at >= asked) {
            return Err(ProxyError::UpstreamConnect(format!(
                "HTTP/2 connection to {} failed",
                key.target
            )));
        }
        let sender = match self.connect(key, cluster).await {
            Ok(s) => {
                *failed = None;
                s
            }
            Err(e) => {
                *failed = Some(std::time::Instant::now());
                return Err(e);
            }
        };
        let id = H2_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Retired, closed and idle connections go as a new one comes, and the dial
        // locks of keys with neither a connection nor a dial in progress.
        self.conns.retain(|k, c| !c.stale(k.retire));
        self.connecting
            .retain(|k, lock| Arc::strong_count(lock) > 1 || self.conns.contains_key(k));
        self.conns.insert(
            key.clone(),
            H2Conn {
                id,
                sender: sender.clone(),
                opened: std::time::Instant::now(),
                streams: std::sync::atomic::AtomicU32::new(1),
                used: std::sync::atomic::AtomicU64::new(0),
            },
        );
        Ok((sender, id))
    }

    async fn connect(
        &self,
        key: &H2Key,
        cluster: &Cluster,
    ) -> Result<SendRequest<Body>, ProxyError> {
        let timeout = cluster.pool.connect_timeout;
        let tls = cluster.tls.as_deref();
        let tcp = dial(&key.target, cluster).await?;
        // Open while the connection's task runs.
        let open = cluster.upstream_stats.opened();
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let handshaken = match (tls, &key.tls) {
            (Some(tls), Some((_, sni))) => {
                let stream = handshake(tcp, tls, sni, timeout).await?;
                let (sender, conn) = builder
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| ProxyError::UpstreamConnect(format!("HTTP/2 handshake: {e}")))?;
                tokio::spawn(async move {
                    let _open = open;
                    if let Err(e) = conn.await {
                        tracing::debug!("upstream HTTP/2 connection ended: {e}");
                    }
                });
                sender
            }
            _ => {
                let (sender, conn) = builder
                    .handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| ProxyError::UpstreamConnect(format!("HTTP/2 handshake: {e}")))?;
                tokio::spawn(async move {
                    let _open = open;
                    if let Err(e) = conn.await {
                        tracing::debug!("upstream HTTP/2 connection ended: {e}");
                    }
                });
                sender
            }
        };
        Ok(handshaken)
    }
}
