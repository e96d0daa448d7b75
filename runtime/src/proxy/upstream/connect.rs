//! Upstream connections that hyper-util's pooled client cannot make alone. HTTP/1.1 over
//! TLS: a connector that dials the endpoint and runs the TLS handshake with the
//! cluster's settings and SNI (one pooled client per settings and SNI). HTTP/2, in
//! clear text or over TLS: one multiplexed connection per endpoint, settings and SNI,
//! kept here, so the request's `:authority` can be the virtual host while the socket
//! goes to the endpoint (hyper-util's client takes both from the URI). Every connection
//! is counted, while it is open, in the pool metrics of the cluster that opened it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::super::error::ProxyError;
use super::super::{Body, BoxError};
use wasmgate_config::model::traffic::DEFAULT_CONNECT_TIMEOUT;

use crate::cluster::Cluster;
use crate::telemetry::metrics::OpenConnection;
use crate::tls::client::UpstreamTls;

tokio::task_local! {
    /// The cluster a request through a pooled client is for. hyper-util's client calls
    /// its connector (with only a URI) from the request's own future, so a connection it
    /// opens is counted for this cluster, within its `connectTimeout` and with its TCP
    /// keepalive; one taken from the pool costs nothing.
    pub static OPENING_FOR: Arc<Cluster>;
}

/// A connector that makes connections as [`OPENING_FOR`]'s cluster asks (connect
/// timeout, TCP keepalive) and counts them in its metrics for as long as they stay
/// open. Outside such a scope: Istio's default 10 s connect timeout, nothing counted.
#[derive(Clone, Debug)]
pub struct Counting<C>(pub C);

impl<C> tower_service::Service<Uri> for Counting<C>
where
    C: tower_service::Service<Uri> + Send,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
    C::Response: Socket,
{
    type Response = Counted<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let cluster = OPENING_FOR.try_with(Arc::clone).ok();
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let limit = cluster
                .as_ref()
                .map_or(DEFAULT_CONNECT_TIMEOUT, |c| c.pool.connect_timeout);
            let io = tokio::time::timeout(limit, connecting)
                .await
                .map_err(|_| BoxError::from("connect timeout"))?
                .map_err(Into::into)?;
            if let Some(ka) = cluster.as_ref().and_then(|c| c.pool.tcp_keepalive)
                && let Some(fd) = io.socket()
            {
                crate::cluster::set_keepalive(fd, &ka);
            }
            Ok(Counted {
                io,
                lifetime: cluster.as_ref().and_then(|c| Lifetime::of(c)),
                _open: cluster.map(|c| c.upstream_stats.opened()),
            })
        })
    }
}

/// A connection whose socket the connector can reach (for TCP keepalive).
pub trait Socket {
    fn socket(&self) -> Option<std::os::fd::BorrowedFd<'_>>;
}

impl Socket for TokioIo<TcpStream> {
    fn socket(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(self.inner().as_fd())
    }
}

impl Socket for TlsIo {
    fn socket(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(self.0.inner().get_ref().0.as_fd())
    }
}

/// A connection counted as open until it is dropped.
pub struct Counted<T> {
    io: T,
    /// How long it may serve, when its cluster bounds that.
    lifetime: Option<Arc<Lifetime>>,
    _open: Option<OpenConnection>,
}

/// `maxRequestsPerConnection` and `maxConnectionDuration` of an HTTP/1.1 connection: how
/// much it has served, against what it may. Carried as the connection's extra, so that
/// after each response [`Lifetime::retire_if_spent`] can take it out of the pool.
#[derive(Debug)]
pub struct Lifetime {
    opened: std::time::Instant,
    served: std::sync::atomic::AtomicU32,
    /// 0: no count.
    max_requests: u32,
    max_age: Option<Duration>,
}

impl Lifetime {
    /// For a connection of `cluster`, when its policy bounds connections' lives.
    fn of(cluster: &Cluster) -> Option<Arc<Lifetime>> {
        let pool = PoolKey::of(cluster);
        pool.bounds_lifetime().then(|| {
            Arc::new(Lifetime {
                opened: std::time::Instant::now(),
                served: std::sync::atomic::AtomicU32::new(0),
                max_requests: pool.max_requests,
                max_age: pool.max_age,
            })
        })
    }

    /// Count a response on the connection `captured` saw; once the connection has
    /// served its count or lived its time, it goes back to no pool (hyper-util closes
    /// it when the response ends), so no further request is sent on it.
    pub fn retire_if_spent(captured: &hyper_util::client::legacy::connect::CaptureConnection) {
        let metadata = captured.connection_metadata();
        let Some(connected) = metadata.as_ref() else {
            return;
        };
        let mut extras = http::Extensions::new();
        connected.get_extras(&mut extras);
        let Some(life) = extras.get::<Arc<Lifetime>>() else {
            return;
        };
        let served = life
            .served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(1);
        let counted_out = life.max_requests > 0 && served >= life.max_requests;
        let aged_out = life.max_age.is_some_and(|age| life.opened.elapsed() >= age);
        if counted_out || aged_out {
            connected.poison();
        }
    }
}

impl<T: Connection> Connection for Counted<T> {
    /// What the connection is, without the connector's `HttpInfo` extra: hyper-util
    /// copies an extra into every response's extensions (three allocations per
    /// request), and nothing here reads it. A [`Lifetime`] is the one extra, and only
    /// for clusters that bound connections' lives.
    fn connected(&self) -> Connected {
        let inner = self.io.connected();
        let mut plain = Connected::new().proxy(inner.is_proxied());
        if let Some(life) = &self.lifetime {
            plain = plain.extra(life.clone());
        }
        if inner.is_negotiated_h2() {
            plain.negotiated_h2()
        } else {
            plain
        }
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

/// What a pooled HTTP/1.1 connection is shared by: clusters that close it alike (idle
/// timeout) and retire it alike (`maxRequestsPerConnection` > 1,
/// `maxConnectionDuration`, which the connection carries from the cluster that opened
/// it). So a subset with limits never shares with its parent without, and a reload
/// that changes them starts new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub idle: Duration,
    /// `maxRequestsPerConnection` when above 1 (1 is `Connection: close`); 0: no count.
    pub max_requests: u32,
    pub max_age: Option<Duration>,
}

impl PoolKey {
    /// The pool of clusters with no policy of their own: the gateway's default client.
    pub const SHARED: PoolKey = PoolKey {
        idle: super::POOL_IDLE,
        max_requests: 0,
        max_age: None,
    };

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

    /// Do these connections serve a bounded number of requests, or for a bounded time?
    /// Only then is a request's connection captured to be looked at.
    pub fn bounds_lifetime(&self) -> bool {
        self.max_requests > 0 || self.max_age.is_some()
    }
}

/// A TLS client pool: its settings and SNI, and its pool key.
type TlsPoolKey = (TlsKey, PoolKey);

/// The name to present and verify: an IP when the SNI text is one (no SNI is sent).
pub fn server_name(sni: &str) -> Result<ServerName<'static>, ProxyError> {
    ServerName::try_from(sni.to_string())
        .map_err(|_| ProxyError::UpstreamConnect(format!("{sni:?} is not a valid TLS server name")))
}

/// Dial `authority` (`host:port`) within `timeout`.
pub async fn dial(authority: &str, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| ProxyError::UpstreamConnect(format!("{authority}: connect timeout")))?
        .map_err(|e| ProxyError::UpstreamConnect(format!("{authority}: {e}")))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// TLS over a dialled stream; the handshake shares the connect timeout.
pub async fn handshake(
    tcp: TcpStream,
    tls: &UpstreamTls,
    sni: &str,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, ProxyError> {
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let name = server_name(sni)?;
    tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| ProxyError::UpstreamConnect(format!("{sni}: TLS handshake timeout")))?
        .map_err(|e| ProxyError::UpstreamConnect(format!("TLS handshake with {sni}: {e}")))
}

/// hyper-util connector for HTTP/1.1 over TLS: the URI names the endpoint.
#[derive(Clone)]
pub struct TlsConnector {
    tcp: HttpConnector,
    tls: Arc<UpstreamTls>,
    sni: String,
}

impl TlsConnector {
    pub fn new(tcp: HttpConnector, tls: Arc<UpstreamTls>, sni: String) -> Self {
        TlsConnector { tcp, tls, sni }
    }
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(BoxError::from)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.tcp.call(uri);
        let tls = self.tls.clone();
        let sni = self.sni.clone();
        Box::pin(async move {
            let tcp = connecting.await.map_err(BoxError::from)?.into_inner();
            let stream = handshake(tcp, &tls, &sni, DEFAULT_CONNECT_TIMEOUT)
                .await
                .map_err(|e| BoxError::from(e.to_string()))?;
            Ok(TlsIo(TokioIo::new(stream)))
        })
    }
}

/// A TLS connection as hyper's client reads and writes it.
pub struct TlsIo(TokioIo<TlsStream<TcpStream>>);

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

/// Pooled HTTP/1.1-over-TLS clients, one per settings and SNI.
#[derive(Debug, Default)]
pub struct TlsClients {
    clients: DashMap<TlsPoolKey, Client<Counting<TlsConnector>, Body>>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("sni", &self.sni)
            .finish()
    }
}

impl TlsClients {
    /// The client for `tls` and `sni` whose connections are pooled by `pool`, made on
    /// first use.
    pub fn get(
        &self,
        tcp: &HttpConnector,
        tls: &Arc<UpstreamTls>,
        sni: &str,
        pool: PoolKey,
    ) -> Client<Counting<TlsConnector>, Body> {
        let key = ((tls.key, sni.to_string()), pool);
        if let Some(c) = self.clients.get(&key) {
            return c.clone();
        }
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(pool.idle)
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(1024)
            .build(Counting(TlsConnector::new(
                tcp.clone(),
                tls.clone(),
                sni.to_string(),
            )));
        self.clients.entry(key).or_insert(client).clone()
    }
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
        let tcp = dial(&key.target, timeout).await?;
        if let Some(ka) = &cluster.pool.tcp_keepalive {
            use std::os::fd::AsFd;
            crate::cluster::set_keepalive(tcp.as_fd(), ka);
        }
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
