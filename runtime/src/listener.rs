//! Accepting connections on one socket and handing each to what its listener serves in
//! the current snapshot: hyper for HTTP (HTTP/1.1 and HTTP/2, in clear text or after
//! TLS), the TCP proxy for `tcp` routes and TLS passthrough. On TLS listeners the
//! ClientHello is read first, without consuming it, so its SNI can choose between
//! terminating (rustls, that server's certificate) and passing the bytes through.
//! Each listener watches its own connections, so one removed by a reload drains while
//! the others keep serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::rt::Timer;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::proxy::framing::Watched;
use crate::proxy::read_memo::ReadMemo;
use crate::proxy::{ConnInfo, Shared, TlsConn, handle, log_refused_by_hyper};
use crate::snapshot::Serve;
use crate::snapshot::listeners::{Terminated, TlsAction, TlsServer};
use crate::snapshot::vhosts::HostTable;
use crate::tcp;
use crate::telemetry::metrics::ListenerStats;
use crate::tls::client_hello::{self, Parse};
use crate::tls::rewind::Rewind;
use crate::tls::{cert, server::ServerTlsConfig};
use crate::workers::Workers;

mod head_timer;

use head_timer::HeadTimer;

/// Largest request head accepted (Envoy's `max_request_headers_kb` default, 60 KiB).
const MAX_HEADERS_BYTES: usize = 60 << 10;

/// Longest a client may take to send its ClientHello and finish the handshake (Envoy's
/// listener filter timeout is 15 s).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Pending connections the kernel queues per socket before they are accepted.
const BACKLOG: u32 = 1024;

/// Bind `addr` with one listening socket per accept queue. One queue: a plain socket.
/// Several (one per worker): `SO_REUSEPORT` sockets on the same address, each with its
/// own queue. A probe bound without `SO_REUSEPORT` first makes an address another
/// process holds fail with "address in use" rather than be shared with it, and fixes the
/// port when `addr` asks for any (port 0).
pub fn bind(addr: SocketAddr, queues: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let open = |addr: SocketAddr, shared: bool| -> std::io::Result<std::net::TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if shared {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        socket.listen(BACKLOG)?.into_std()
    };
    if queues <= 1 {
        return Ok(vec![open(addr, false)?]);
    }
    let fixed = open(addr, false)?.local_addr()?;
    (0..queues).map(|_| open(fixed, true)).collect()
}

/// A running listener: its accept loops (one per worker) and the connections it watches.
#[derive(Debug)]
pub struct Running {
    tasks: Vec<JoinHandle<()>>,
    connections: Arc<std::sync::Mutex<Option<GracefulShutdown>>>,
}

impl Running {
    /// Accept for the listener at `addr` until stopped: socket `i` of `sockets` on
    /// worker `i` (from [`bind`] with as many queues as workers).
    pub fn start(
        sockets: Vec<std::net::TcpListener>,
        addr: SocketAddr,
        shared: Arc<Shared>,
        workers: &Workers,
    ) -> Running {
        let connections = Arc::new(std::sync::Mutex::new(Some(GracefulShutdown::new())));
        // Connections open on this listener, across its workers.
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks = sockets
            .into_iter()
            .zip(workers.handles().iter().cycle())
            .map(|(socket, worker)| {
                let (shared, connections) = (shared.clone(), connections.clone());
                let counts = workers.accept_counts().clone();
                let open = open.clone();
                worker.spawn(async move {
                    // Registered with the reactor of the worker it runs on.
                    match TcpListener::from_std(socket) {
                        Ok(socket) => {
                            accept_loop(socket, addr, shared, connections, counts, open).await
                        }
                        Err(e) => tracing::error!(%addr, "cannot accept: {e}"),
                    }
                })
            })
            .collect();
        Running { tasks, connections }
    }

    /// Stop accepting now (each worker closes its socket as soon as it runs next); the
    /// future waits for that, then lets open HTTP connections finish their requests
    /// (HTTP/1 closes after the current one, HTTP/2 gets GOAWAY) for at most `drain`.
    pub fn stop(self, drain: Duration) -> impl Future<Output = ()> + Send + 'static {
        for task in &self.tasks {
            task.abort();
        }
        let graceful = self.connections.lock().ok().and_then(|mut g| g.take());
        let tasks = self.tasks;
        async move {
            for task in tasks {
                let _ = task.await;
            }
            drain_out(graceful, drain).await;
        }
    }

    /// Keep accepting, but drain the connections accepted so far as [`Running::stop`]
    /// does: a reload changed how this listener sets connections up (protocol, TLS
    /// settings), and a connection keeps the handshake it was accepted with.
    pub fn renew(&self, drain: Duration) -> impl Future<Output = ()> + Send + 'static {
        let graceful = self.connections.lock().ok().and_then(|mut g| {
            g.as_mut()
                .map(|g| std::mem::replace(g, GracefulShutdown::new()))
        });
        drain_out(graceful, drain)
    }
}

/// Let the connections `graceful` watches finish their requests for at most `drain`.
async fn drain_out(graceful: Option<GracefulShutdown>, drain: Duration) {
    let Some(graceful) = graceful else {
        return;
    };
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

/// What serves HTTP on one listener's connections on one worker: hyper's builder, and
/// the head timer whose sleeps hyper's head timeout and each connection's first-bytes
/// deadline (held by its [`Watched`]) are.
#[derive(Clone)]
struct HttpServer {
    builder: Builder<TokioExecutor>,
    timer: HeadTimer,
    head_timeout: Duration,
}

/// hyper's server for one listener on one worker. A client gets `head_timeout` to send
/// a request's headers (slow-loris guard), timed by the listener's coarse [`HeadTimer`].
/// Envoy's default limit on request headers is 60 KiB: larger ones get 431.
fn http_builder(head_timeout: Duration, timer: HeadTimer) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(timer)
        .header_read_timeout(head_timeout)
        .max_buf_size(MAX_HEADERS_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADERS_BYTES as u32)
        .keep_alive_interval(Some(Duration::from_secs(60)));
    builder
}

async fn accept_loop(
    socket: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    connections: Arc<std::sync::Mutex<Option<GracefulShutdown>>>,
    accepted: Arc<[std::sync::atomic::AtomicU64]>,
    open: Arc<std::sync::atomic::AtomicUsize>,
) {
    let head_timeout = shared.limits.settings.request_headers_timeout;
    let timer = HeadTimer::default();
    let http = HttpServer {
        builder: http_builder(head_timeout, timer.clone()),
        timer,
        head_timeout,
    };
    let stats = shared.metrics.listener(&addr.to_string());
    loop {
        let (stream, client) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(%addr, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        Workers::accepted(&accepted);
        // Over `--max-connections` (or the listener's share): closed at once, before
        // anything is read or allocated for it, while open connections go on.
        let Some(place) = shared.limits.connection(&open) else {
            drop(stream);
            continue;
        };
        let place = Arc::new(place);
        let watcher = connections
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(GracefulShutdown::watcher));
        let Some(watcher) = watcher else {
            // Draining: no new connections.
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo {
            listener: addr,
            port: addr.port(),
            client,
            tls: None,
            framing: None,
            place: Some(place.clone()),
        };
        let active = Active::new(&stats, shared.metrics.enabled);
        // Boxed: the connection's future holds hyper's connection (3.2 KiB in a debug
        // build; the TLS and TCP paths are boxed inside it), and unboxed it was copied
        // whole on its way into the task and at each change of the task's stage: a
        // tenth of a new connection's CPU went to memmove (docs/benchmarks.md).
        let served = Box::pin(connection(
            stream,
            conn,
            shared.clone(),
            http.clone(),
            watcher,
            stats.clone(),
        ));
        tokio::spawn(async move {
            served.await;
            drop(active);
            drop(place);
        });
    }
}

/// Serve one accepted connection per its listener in the current snapshot.
async fn connection(
    stream: TcpStream,
    conn: ConnInfo,
    shared: Arc<Shared>,
    http: HttpServer,
    watcher: Watcher,
    stats: Arc<ListenerStats>,
) {
    let snapshot = shared.snapshot.load_full();
    let Some(listener) = snapshot.listeners.get(&conn.listener).cloned() else {
        return;
    };
    drop(snapshot);
    match &listener.serve {
        Serve::Http(_) => {
            serve_http(
                TokioIo::new(ReadMemo::new(stream)),
                conn,
                shared,
                http,
                watcher,
            )
            .await
        }
        // The TCP and TLS paths boxed: the connection's future is as large as its
        // largest path, and plain HTTP, the common one, is less than half of TLS's (the
        // handshake, then hyper over the TLS stream). This future is copied once into
        // its task and allocated per connection, so it is kept at plain HTTP's size
        // (`tests::connection_future_sizes`); a TLS connection pays one allocation.
        Serve::Tcp(routes) => {
            Box::pin(tcp::proxy(
                stream,
                &conn,
                &shared,
                routes,
                (conn.port, None),
                Vec::new(),
            ))
            .await
        }
        Serve::Tls(servers) => {
            Box::pin(serve_tls(
                stream, conn, shared, http, watcher, servers, stats,
            ))
            .await
        }
    }
}

/// A TLS listener's connection: its ClientHello read, the server its SNI names found,
/// then passed through or terminated, and served.
async fn serve_tls(
    mut stream: TcpStream,
    mut conn: ConnInfo,
    shared: Arc<Shared>,
    http: HttpServer,
    watcher: Watcher,
    servers: &HostTable<TlsServer>,
    stats: Arc<ListenerStats>,
) {
    let mut hello_bytes = Vec::new();
    let read = tokio::time::timeout(
        TLS_HANDSHAKE_TIMEOUT,
        client_hello::read(&mut stream, &mut hello_bytes),
    )
    .await;
    let hello = match read {
        Ok(Ok(Parse::Complete(hello))) => hello,
        Ok(Ok(other)) => {
            tracing::debug!(client = %conn.client, "not a TLS ClientHello: {other:?}");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(client = %conn.client, "reading the ClientHello: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %conn.client, "no ClientHello in time");
            return;
        }
    };
    let sni = hello.server_name;
    let Some(server) = servers.find(sni.as_deref().unwrap_or_default()) else {
        // Envoy closes a connection no filter chain matches.
        tracing::debug!(client = %conn.client, sni = ?sni, "no server for this SNI");
        return;
    };
    match &server.action {
        TlsAction::Passthrough(routes) => {
            tcp::proxy(
                stream,
                &conn,
                &shared,
                routes,
                (conn.port, sni.as_deref()),
                hello_bytes,
            )
            .await;
        }
        TlsAction::Terminate { tls, then } => {
            let Some(tls_stream) = terminate(
                Rewind::new(hello_bytes, ReadMemo::new(stream)),
                tls,
                &conn,
                &stats,
            )
            .await
            else {
                return;
            };
            let peer = {
                let (_, session) = tls_stream.get_ref();
                session
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| cert::inspect(leaf).ok())
            };
            conn.tls = Some(Arc::new(TlsConn {
                sni,
                xfcc: peer
                    .as_ref()
                    .map(|info| cert::xfcc(&tls.local_uri_sans, info)),
                principal: peer.as_ref().and_then(cert::principal),
            }));
            match then {
                Terminated::Http(_) => {
                    serve_http(TokioIo::new(tls_stream), conn, shared, http, watcher).await
                }
                Terminated::Tcp(routes) => {
                    let sni = conn.tls.as_ref().and_then(|t| t.sni.clone());
                    tcp::proxy(
                        tls_stream,
                        &conn,
                        &shared,
                        routes,
                        (conn.port, sni.as_deref()),
                        Vec::new(),
                    )
                    .await
                }
            }
        }
    }
}

/// The TLS handshake, bounded in time; failures are the client's and logged at debug.
async fn terminate<S>(
    io: S,
    tls: &ServerTlsConfig,
    conn: &ConnInfo,
    stats: &ListenerStats,
) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let done = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(client = %conn.client, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(client = %conn.client, "TLS handshake timed out");
            None
        }
    };
    let counter = if done.is_some() {
        &stats.handshakes
    } else {
        &stats.handshake_failures
    };
    counter.fetch_add(1, Ordering::Relaxed);
    done
}

/// Counts a connection as open (and accepted) until dropped.
struct Active(Option<Arc<ListenerStats>>);

impl Active {
    fn new(stats: &Arc<ListenerStats>, enabled: bool) -> Self {
        if !enabled {
            return Active(None);
        }
        stats.total.fetch_add(1, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::Relaxed);
        Active(Some(stats.clone()))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(stats) = &self.0 {
            stats.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

async fn serve_http<I>(
    io: TokioIo<I>,
    mut conn: ConnInfo,
    shared: Arc<Shared>,
    http: HttpServer,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = conn.client;
    let access_log = shared.access_log.clone();
    let logging = shared.clone();
    // hyper reads through a watcher that sees the request framing hyper hides, and
    // holds the deadline for the bytes that tell HTTP/1 from HTTP/2 (hyper's head
    // timeout starts only after them).
    let (io, framing) = Watched::new(io.into_inner(), http.timer.sleep(http.head_timeout));
    conn.framing = Some(framing);
    let connection = Arc::new(crate::proxy::ConnShared { shared, info: conn });
    let service = service_fn(move |req| handle(connection.clone(), req));
    // The connection's first read takes up to 1 KiB although hyper-util's protocol
    // detection asks for 24 bytes; hyper gets the rest from memory, not from a second
    // read of the socket (`Rewind::read_ahead`). The detection still drives that read, so
    // a drain still closes a connection that has sent nothing.
    let served = http
        .builder
        .serve_connection_with_upgrades(TokioIo::new(Rewind::read_ahead(io)), service);
    if let Err(e) = watcher.watch(served).await {
        // Requests hyper refuses itself (400/414/431) never reach `handle`.
        if crate::telemetry::access_log_enabled(&logging) {
            log_refused_by_hyper(&access_log, client, e.as_ref());
        }
        tracing::debug!(%client, "connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's future is allocated and copied whole once per connection, and is
    /// as large as its largest path: the TLS and TCP ones are boxed so that it stays at
    /// plain HTTP's and its own arguments' (in a debug build: 7,520 bytes before,
    /// 3,200 after; plain HTTP's 2,656, TLS's 5,088. With the sockets' read memos:
    /// 3,304 after; plain HTTP's 2,736, TLS's 5,184).
    #[test]
    fn connection_future_sizes() {
        type TlsIo = tokio_rustls::server::TlsStream<Rewind<ReadMemo<TcpStream>>>;
        let connection = future_size!(connection, A, B, C, D, E, F);
        let plain = future_size!(serve_http::<ReadMemo<TcpStream>>, A, B, C, D, E);
        let tls = future_size!(serve_http::<TlsIo>, A, B, C, D, E);
        assert!(
            tls > plain,
            "the TLS path is the larger: {tls} against {plain}"
        );
        assert!(
            connection <= plain + 1024 && connection < tls,
            "a connection's future ({connection} bytes) carries more than plain HTTP's \
             ({plain}): a larger path is inline again"
        );
    }
}
