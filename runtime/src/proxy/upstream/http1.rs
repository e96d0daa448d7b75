//! HTTP/1.1 upstream connections, in clear text or over TLS, pooled per worker (each
//! worker has its own [`super::Upstream`], so this pool's lock is never contended and
//! no request or connection crosses threads).
//!
//! A connection carries one request at a time. It goes back to its pool when the
//! response body has been read to its end, not when the head arrives, and is taken
//! again last in, first out, so a few warm connections carry the load. Nothing is
//! spawned per request: hyper-util's pooled client, used before, spawned a task per
//! request to wait for the connection to be ready again, and cloned the URI and a
//! pool key per request.
//!
//! What is checked where:
//! - taking: a connection that is closed, idle past its pool's idle timeout or older
//!   than `maxConnectionDuration` is dropped (hyper closes it);
//! - sending: a request a pooled connection gave back unwritten (the upstream closed it
//!   while idle) goes on the next connection, or a new one;
//! - after the response head: a connection that has served `maxRequestsPerConnection`,
//!   that was asked to close (`maxRequestsPerConnection: 1`) or that switched protocols
//!   is not pooled again;
//! - a sweeper task, armed while the pool holds idle connections, closes those whose
//!   time runs out while no request comes to take them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::super::Body;
use super::super::error::ProxyError;
use super::connect::{Counted, PoolKey, TlsKey, dial, handshake};
use crate::cluster::Cluster;

/// Idle connections kept per key at most (hyper-util's `pool_max_idle_per_host` was
/// set to the same); a connection given back to a full list closes.
const MAX_IDLE_PER_KEY: usize = 1024;

/// What a pooled HTTP/1.1 connection can be reused for: its endpoint, its TLS settings
/// and SNI, and how its pool closes and retires connections ([`PoolKey`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The endpoint, `host:port`.
    pub target: Arc<str>,
    pub tls: Option<TlsKey>,
    pub pool: PoolKey,
}

/// The pool of one worker's HTTP/1.1 connections.
#[derive(Clone, Default)]
pub struct Http1Pool {
    idle: Arc<Mutex<Idle>>,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = lock(&self.idle);
        f.debug_struct("Http1Pool")
            .field("keys", &idle.conns.len())
            .field("idle", &idle.conns.values().map(Vec::len).sum::<usize>())
            .finish()
    }
}

#[derive(Default)]
struct Idle {
    conns: HashMap<Key, Vec<Conn>>,
    /// Whether a sweeper task is running for this pool.
    sweeping: bool,
}

fn lock(idle: &Mutex<Idle>) -> MutexGuard<'_, Idle> {
    // Nothing panics while holding it; if something did, the lists are still whole.
    idle.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection: hyper's handle to it and what its pool's limits look at.
struct Conn {
    sender: SendRequest<Body>,
    opened: Instant,
    /// Responses it has carried.
    served: u32,
    idle_since: Instant,
}

impl Conn {
    /// When it may no longer be taken: its idle timeout or its maximum age.
    fn expires(&self, pool: &PoolKey) -> Instant {
        let idle = self.idle_since + pool.idle;
        match pool.max_age {
            Some(age) => idle.min(self.opened + age),
            None => idle,
        }
    }

    fn usable(&self, pool: &PoolKey, now: Instant) -> bool {
        !self.sender.is_closed() && now < self.expires(pool)
    }
}

/// A connection lent to one exchange: given back to its pool with [`Lease::release`]
/// once the response body has been read to its end; dropped otherwise (hyper closes the
/// connection).
pub struct Lease {
    conn: Conn,
    key: Key,
    pool: Weak<Mutex<Idle>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("target", &self.key.target)
            .field("served", &self.conn.served)
            .finish()
    }
}

impl Lease {
    /// The response is done: the connection goes back to its pool, unless it closed or
    /// its time ran out meanwhile, or the pool is full.
    pub fn release(self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut conn = self.conn;
        if !conn.usable(&self.key.pool, now) {
            return;
        }
        conn.idle_since = now;
        let arm = {
            let mut idle = lock(&pool);
            let list = idle.conns.entry(self.key).or_default();
            if list.len() >= MAX_IDLE_PER_KEY {
                return;
            }
            list.push(conn);
            !std::mem::replace(&mut idle.sweeping, true)
        };
        if arm {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(sweep(Arc::downgrade(&pool)));
                }
                // No runtime to run a sweeper on: connections expire when next taken.
                Err(_) => lock(&pool).sweeping = false,
            }
        }
    }
}

/// Close idle connections as their time runs out; ends when the pool holds none (the
/// next connection given back starts another) or is gone.
async fn sweep(pool: Weak<Mutex<Idle>>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else {
                return;
            };
            let mut idle = lock(&pool);
            let now = Instant::now();
            idle.conns.retain(|key, list| {
                list.retain(|c| c.usable(&key.pool, now));
                !list.is_empty()
            });
            let next = idle
                .conns
                .iter()
                .flat_map(|(key, list)| list.iter().map(|c| c.expires(&key.pool)))
                .min();
            if next.is_none() {
                idle.sweeping = false;
            }
            next
        };
        match next {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => return,
        }
    }
}

impl Http1Pool {
    /// The most recently pooled usable connection for `key`; unusable ones met on the
    /// way are dropped.
    fn take(&self, key: &Key) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        let list = idle.conns.get_mut(key)?;
        let now = Instant::now();
        while let Some(conn) = list.pop() {
            if conn.usable(&key.pool, now) {
                return Some(conn);
            }
        }
        None
    }

    /// Send `req` (origin-form URI, `Host` set) on a pooled connection for `key`, or a
    /// new one opened for `cluster` (counted in its metrics while open). `reuse`: whether
    /// the connection may carry further requests after this one. Returns the response
    /// and, when the connection may be pooled again, its lease.
    pub async fn send(
        &self,
        key: Key,
        mut req: Request<Body>,
        cluster: &Cluster,
        reuse: bool,
    ) -> Result<(Response<Incoming>, Option<Lease>), ProxyError> {
        while let Some(mut conn) = self.take(&key) {
            if conn.sender.ready().await.is_err() {
                continue;
            }
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = self.lease(conn, key, &resp, reuse);
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Never written (the upstream closed the connection while it was
                    // idle): the next connection, or a new one, takes it.
                    Some(unsent) => req = unsent,
                    None => return Err(super::classify_send(&e.into_error())),
                },
            }
        }
        let mut conn = self.connect(&key, cluster).await?;
        let resp = conn
            .sender
            .send_request(req)
            .await
            .map_err(|e| super::classify_send(&e))?;
        let lease = self.lease(conn, key, &resp, reuse);
        Ok((resp, lease))
    }

    /// The lease of `conn` after it carried `resp`, unless it must not carry another.
    fn lease(
        &self,
        mut conn: Conn,
        key: Key,
        resp: &Response<Incoming>,
        reuse: bool,
    ) -> Option<Lease> {
        conn.served = conn.served.saturating_add(1);
        let spent = key.pool.max_requests > 0 && conn.served >= key.pool.max_requests;
        (reuse && !spent && resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Lease {
            conn,
            key,
            pool: Arc::downgrade(&self.idle),
        })
    }

    /// A new connection to `key`'s endpoint, within `cluster`'s connect timeout (the
    /// TLS handshake gets its own), with its TCP keepalive, counted in its metrics for
    /// as long as it is open (an upgraded connection too).
    async fn connect(&self, key: &Key, cluster: &Cluster) -> Result<Conn, ProxyError> {
        let timeout = cluster.pool.connect_timeout;
        let tcp = dial(&key.target, timeout).await?;
        if let Some(ka) = &cluster.pool.tcp_keepalive {
            use std::os::fd::AsFd;
            crate::cluster::set_keepalive(tcp.as_fd(), ka);
        }
        let sender = match (cluster.tls.as_deref(), &key.tls) {
            (Some(tls), Some((_, sni))) => {
                let stream = handshake(tcp, tls, sni, timeout).await?;
                let open = cluster.upstream_stats.opened();
                start(Counted::new(TokioIo::new(stream), open)).await?
            }
            _ => {
                let open = cluster.upstream_stats.opened();
                start(Counted::new(TokioIo::new(tcp), open)).await?
            }
        };
        let now = Instant::now();
        Ok(Conn {
            sender,
            opened: now,
            served: 0,
            idle_since: now,
        })
    }
}

/// hyper's HTTP/1.1 client over `io`, its connection driven by a task of its own (with
/// upgrades: a `101` hands the connection to the response's upgrade).
async fn start<T>(io: T) -> Result<SendRequest<Body>, ProxyError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ProxyError::UpstreamConnect(format!("HTTP/1.1 handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream HTTP/1.1 connection ended: {e}");
        }
    });
    Ok(sender)
}
