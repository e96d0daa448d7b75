//! Connection-level proxying, Envoy's `tcp_proxy` for Istio's `tcp` and `tls` routes:
//! the first route whose match fits the connection (port, SNI) picks a destination by
//! weight (so a split is per connection), the destination's cluster an endpoint, and
//! the bytes are spliced both ways until either side closes. For TLS passthrough the
//! ClientHello already read is sent first, so the client completes its handshake with
//! the backend and sees the backend's certificate. One access line per connection with
//! its byte counts and duration.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proxy::{ConnInfo, Shared};
use crate::snapshot::listeners::L4Routes;

/// Envoy's default upstream connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Proxy `downstream` per `routes`; `prefix` (bytes already read from it) goes first.
pub async fn proxy<S>(
    mut downstream: S,
    conn: &ConnInfo,
    shared: &Shared,
    routes: &L4Routes,
    sni: Option<&str>,
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
        sni,
        prefix,
        &mut line,
    )
    .await;
    tracing::info!(
        target: "wasmgate::access",
        "TCP {} sni={} flags={} vs={} route={} cluster={} upstream={} bytes_received={} bytes_sent={} duration_ms={} client={}",
        conn.listener,
        line.sni,
        line.flag.unwrap_or("-"),
        or_dash(&line.virtual_service),
        or_dash(&line.route),
        or_dash(&line.cluster),
        or_dash(&line.upstream),
        line.received,
        line.sent,
        started.elapsed().as_millis(),
        conn.client.ip(),
    );
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
    sni: Option<&str>,
    prefix: Vec<u8>,
    line: &mut Line,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(route) = routes.find(conn.port, sni) else {
        line.flag = Some("NR");
        return;
    };
    line.virtual_service = route.virtual_service.clone();
    line.route = route.route.clone();
    let random = shared.host.random();
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
    let index = cluster.pick(random);
    let Some(target) = cluster.targets.get(index) else {
        line.flag = Some("UH");
        return;
    };
    line.upstream = target.authority();
    let _in_flight = cluster.start(index);
    let connected = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((target.address.as_str(), target.port)),
    )
    .await;
    let mut upstream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(upstream = %line.upstream, "connect failed: {e}");
            line.flag = Some("UF");
            return;
        }
        Err(_) => {
            line.flag = Some("UF");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if !prefix.is_empty() {
        if let Err(e) = upstream.write_all(&prefix).await {
            tracing::debug!(upstream = %line.upstream, "write failed: {e}");
            line.flag = Some("UF");
            return;
        }
        line.received += prefix.len() as u64;
    }
    match tokio::io::copy_bidirectional(downstream, &mut upstream).await {
        Ok((from_client, to_client)) => {
            line.received += from_client;
            line.sent += to_client;
        }
        Err(e) => {
            // A reset on either side ends the splice; byte counts are then unknown.
            tracing::debug!(upstream = %line.upstream, "connection ended: {e}");
        }
    }
}
