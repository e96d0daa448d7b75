//! Connection-level proxying, Envoy's `tcp_proxy` for Istio's `tcp` and `tls` routes:
//! the first route whose match fits the connection (port, SNI) picks a destination by
//! weight (so a split is per connection), the destination's cluster an endpoint, and
//! the bytes are spliced both ways until either side closes. For TLS passthrough the
//! ClientHello already read is sent first, so the client completes its handshake with
//! the backend and sees the backend's certificate. One access line per connection with
//! its byte counts and duration. Istio's TCP byte counters grow as bytes are read, not
//! only when the connection closes, so a long-lived connection shows its traffic while
//! it lasts (Envoy reports such connections periodically).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::proxy::{Body, ConnInfo, ProxyError, Shared, full};
use crate::snapshot::Snapshot;
use crate::snapshot::listeners::{L4Destination, L4Route, L4Routes};
use crate::snapshot::mesh::Tunnels;
use crate::telemetry::metrics::{Counter, TcpStats};
use crate::tls::client_hello::{self, Parse};

/// How long a tunnel waits for a ClientHello when a `tls` route could apply (Envoy's
/// TLS inspector default).
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// `CONNECT host:port` on the mesh listener: 200, then the tunnel is routed like a
/// sidecar routes a connection: a `tls` route by the SNI the client sends first (read
/// only when a `tls` route names the CONNECT host), else a `tcp` route by port, else
/// the declared service `host` itself on `port`. Nothing declared: 404, no tunnel.
pub fn connect(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    tunnels: &Tunnels,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let target = req
        .uri()
        .authority()
        .cloned()
        .ok_or(ProxyError::BadRequest("CONNECT needs host:port"))?;
    let port = target
        .port_u16()
        .ok_or(ProxyError::BadRequest("CONNECT needs host:port"))?;
    let host = target.host().to_ascii_lowercase();
    let fqdn = wasmgate_config::expand_host(&host, &tunnels.namespace);
    // A `tls` route applies when it names the host being connected to: the client then
    // sends that name as its SNI, which picks the route.
    let tls_possible = tunnels
        .routes
        .find(port, Some(&host))
        .is_some_and(|r| r.matches.iter().any(|m| !m.sni_hosts.is_empty()));
    let service = snapshot.registry.resolve(&fqdn, Some(port), None).is_ok();
    if !tls_possible && !service && tunnels.routes.find(port, None).is_none() {
        return Err(ProxyError::NoRoute);
    }
    let upgrade = hyper::upgrade::on(&mut req);
    let (shared, conn) = (shared.clone(), conn.clone());
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(client = %conn.client, "CONNECT upgrade failed: {e}");
                return;
            }
        };
        let mut io = TokioIo::new(upgraded);
        let mut prefix = Vec::new();
        let mut sni = None;
        if tls_possible {
            let read = tokio::time::timeout(
                CLIENT_HELLO_TIMEOUT,
                client_hello::read(&mut io, &mut prefix),
            )
            .await;
            if let Ok(Ok(Parse::Complete(hello))) = read {
                sni = hello.server_name;
            }
        }
        let snapshot = shared.snapshot.load_full();
        let declared = snapshot
            .listeners
            .get(&conn.listener)
            .and_then(|l| l.http_routes(None))
            .and_then(|r| r.mesh.as_ref())
            .map(|t| &t.routes);
        // No route of a mesh VirtualService: the declared service itself.
        let own = L4Routes {
            routes: vec![L4Route {
                virtual_service: String::new(),
                route: String::new(),
                namespace: String::new(),
                matches: Vec::new(),
                destinations: vec![L4Destination {
                    host: fqdn,
                    port: Some(port),
                    subset: None,
                    weight: 1,
                }],
            }],
        };
        let routes = match declared {
            Some(r) if r.find(port, sni.as_deref()).is_some() => r,
            _ => &own,
        };
        proxy(io, &conn, &shared, routes, (port, sni.as_deref()), prefix).await;
    });
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

/// Proxy `downstream` per `routes` (matched with `port` and `sni`); `prefix` (bytes
/// already read from it) goes first.
pub async fn proxy<S>(
    mut downstream: S,
    conn: &ConnInfo,
    shared: &Shared,
    routes: &L4Routes,
    (port, sni): (u16, Option<&str>),
    prefix: Vec<u8>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut line = Line {
        sni: sni.unwrap_or("-").to_string(),
        ..Line::default()
    };
    connect_and_splice(
        &mut downstream,
        conn,
        shared,
        routes,
        (port, sni),
        prefix,
        &mut line,
    )
    .await;
    if !shared.access_log.enabled() || !crate::telemetry::access_log_enabled(shared) {
        return;
    }
    let duration_ms = started.elapsed().as_millis();
    let text = format!(
        "TCP {} sni={} flags={} vs={} route={} cluster={} upstream={} bytes_received={} bytes_sent={} duration_ms={duration_ms} client={}",
        conn.listener,
        line.sni,
        line.flag.unwrap_or("-"),
        or_dash(&line.virtual_service),
        or_dash(&line.route),
        or_dash(&line.cluster),
        or_dash(&line.upstream),
        line.received,
        line.sent,
        conn.client.ip(),
    );
    shared.access_log.connection(&text, || {
        serde_json::json!({
            "start_time": crate::telemetry::access::rfc3339(std::time::SystemTime::now()),
            "protocol": "TCP",
            "listener": conn.listener.to_string(),
            "requested_server_name": (line.sni != "-").then_some(&line.sni),
            "response_flags": line.flag.unwrap_or("-"),
            "virtual_service": line.virtual_service,
            "route_name": line.route,
            "upstream_cluster": line.cluster,
            "upstream_host": line.upstream,
            "bytes_received": line.received,
            "bytes_sent": line.sent,
            "duration": duration_ms as u64,
            "downstream_remote_address": conn.client.ip().to_string(),
        })
        .to_string()
    });
}

/// One access line's facts.
#[derive(Debug, Default)]
struct Line {
    sni: String,
    virtual_service: String,
    route: String,
    cluster: String,
    upstream: String,
    flag: Option<&'static str>,
    /// From the client.
    received: u64,
    /// To the client.
    sent: u64,
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

async fn connect_and_splice<S>(
    downstream: &mut S,
    conn: &ConnInfo,
    shared: &Shared,
    routes: &L4Routes,
    (port, sni): (u16, Option<&str>),
    prefix: Vec<u8>,
    line: &mut Line,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(route) = routes.find(port, sni) else {
        line.flag = Some("NR");
        return;
    };
    line.virtual_service = route.virtual_service.clone();
    line.route = route.route.clone();
    let random = shared.host.balancing();
    let Some(dest) = route
        .destinations
        .get(random.pick_weighted(route.destinations.iter().map(|d| d.weight)))
    else {
        line.flag = Some("NR");
        return;
    };
    let snapshot = shared.snapshot.load_full();
    let cluster = match snapshot
        .registry
        .resolve(&dest.host, dest.port, dest.subset.as_deref())
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(client = %conn.client, "tcp route {}: {e}", route.route);
            line.flag = Some("UH");
            return;
        }
    };
    drop(snapshot);
    line.cluster = cluster.name.clone();
    let Some((index, target)) = cluster
        .pick(random, None)
        .and_then(|i| Some((i, cluster.targets.get(i)?)))
    else {
        line.flag = Some("UH");
        return;
    };
    line.upstream = target.authority().to_string();
    // `maxConnections` bounds TCP connections too; there is no line to wait in.
    let _connection = match cluster.connection_now() {
        Ok(slot) => slot,
        Err(_) => {
            line.flag = Some("UO");
            return;
        }
    };
    let _in_flight = cluster.start(index);
    let connected = tokio::time::timeout(
        cluster.pool.connect_timeout,
        TcpStream::connect((target.address.as_str(), target.port)),
    )
    .await;
    let mut upstream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(upstream = %line.upstream, "connect failed: {e}");
            cluster.report(index, crate::cluster::Outcome::ConnectFailure);
            line.flag = Some("UF");
            return;
        }
        Err(_) => {
            cluster.report(index, crate::cluster::Outcome::ConnectFailure);
            line.flag = Some("UF");
            return;
        }
    };
    cluster.report(index, crate::cluster::Outcome::Connected);
    let _ = upstream.set_nodelay(true);
    if let Some(ka) = &cluster.pool.tcp_keepalive {
        use std::os::fd::AsFd;
        crate::cluster::set_keepalive(upstream.as_fd(), ka);
    }
    let tcp = shared.metrics.enabled.then_some(&cluster.stats.tcp);
    if let Some(tcp) = tcp {
        tcp.opened.fetch_add(1, Ordering::Relaxed);
    }
    let idle = shared.limits.settings.tunnel_idle;
    splice(downstream, &mut upstream, prefix, line, tcp, idle).await;
    if let Some(tcp) = tcp {
        tcp.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// `prefix`, then bytes both ways until either side closes; counts into `line`, and
/// into `tcp` as the bytes are read.
async fn splice<S>(
    downstream: &mut S,
    upstream: &mut TcpStream,
    prefix: Vec<u8>,
    line: &mut Line,
    tcp: Option<&TcpStats>,
    idle: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !prefix.is_empty() {
        if let Err(e) = upstream.write_all(&prefix).await {
            tracing::debug!(upstream = %line.upstream, "write failed: {e}");
            line.flag = Some("UF");
            return;
        }
        line.received += prefix.len() as u64;
        if let Some(tcp) = tcp {
            tcp.received
                .fetch_add(prefix.len() as u64, Ordering::Relaxed);
        }
    }
    let mut client = Tally::new(downstream, tcp.map(|t| &t.received));
    let mut server = Tally::new(upstream, tcp.map(|t| &t.sent));
    if let Err(e) = pipe(&mut client, &mut server, idle).await {
        // A reset on either side, or the idle timeout, ends the splice; what was read
        // until then counts.
        tracing::debug!(upstream = %line.upstream, "connection ended: {e}");
        if e.kind() == std::io::ErrorKind::TimedOut {
            line.flag = Some("SI");
        }
    }
    line.received += client.read;
    line.sent += server.read;
}

/// Bytes both ways between `a` and `b` until either side closes, or until nothing has
/// moved either way for `idle` (then an error of kind `TimedOut`): the one loop every
/// tunnel (TCP routes, TLS passthrough, CONNECT, upgraded HTTP connections) runs.
pub async fn pipe<A, B>(a: &mut A, b: &mut B, idle: Duration) -> std::io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    // Milliseconds since `base` of the last read on either side.
    let base = tokio::time::Instant::now();
    let last = std::sync::atomic::AtomicU64::new(0);
    let mut a = Quiet {
        inner: a,
        base,
        last: &last,
    };
    let mut b = Quiet {
        inner: b,
        base,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let seen = || base + Duration::from_millis(last.load(Ordering::Relaxed));
    loop {
        let deadline = seen() + idle;
        tokio::select! {
            done = &mut copy => return done.map(|_| ()),
            () = tokio::time::sleep_until(deadline) => {
                if seen() + idle <= tokio::time::Instant::now() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("idle for {idle:?}"),
                    ));
                }
            }
        }
    }
}

/// One side of a [`pipe`]: notes when it last read anything.
struct Quiet<'a, S> {
    inner: &'a mut S,
    base: tokio::time::Instant,
    last: &'a std::sync::atomic::AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Quiet<'_, S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = u64::try_from(this.base.elapsed().as_millis()).unwrap_or(u64::MAX);
            this.last.store(ms, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Quiet<'_, S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A stream whose reads are counted: in `read`, and in an Istio counter as they happen
/// (one atomic addition per read, a buffer's worth of bytes).
struct Tally<'a, S> {
    inner: &'a mut S,
    read: u64,
    counter: Option<&'a Counter>,
}

impl<'a, S> Tally<'a, S> {
    fn new(inner: &'a mut S, counter: Option<&'a Counter>) -> Self {
        Tally {
            inner,
            read: 0,
            counter,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tally<'_, S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.read += n;
            if let Some(c) = this.counter {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tally<'_, S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
