//! HTTP/1.1 upstream connections, in clear text or over TLS, pooled per worker: each
//! worker has its own [`super::Upstream`], so a request and its connections stay on
//! the worker and its pool's lock is not contended (the threads that are not workers,
//! the I/O thread and the slow lanes, share one more).
//!
//! A connection carries one request at a time. It goes back to its pool when the
//! response body is over (read to its end, or dropped) and hyper is ready to send on it
//! again, and is taken again last in, first out, so a few warm connections carry the
//! load. In the usual case, a response read to its end, hyper is ready at once and
//! nothing is spawned; hyper-util's pooled client, used before, spawned a task per
//! request to wait for that, and cloned the URI and a pool key per request. A
//! connection not ready yet (still sending the request body after an early answer, or
//! draining a response dropped unread) is pooled by a task when it is, so no request
//! ever waits on another's connection. (hyper drains a dropped response only as far as
//! it has read it; a longer one closes its connection.) Each connection's task drives
//! hyper through a [`Gate`], so a response body read to its end does not wake it for
//! nothing ([`Lease::read_body`]).
//!
//! What is checked where:
//! - taking: a connection that is closed, not ready, idle past its pool's idle timeout
//!   or older than `maxConnectionDuration` is dropped (hyper closes it);
//! - sending: a request a pooled connection gave back unwritten (the upstream closed it
//!   while idle) goes on the next connection, or a new one;
//! - after the response head: a connection that has served `maxRequestsPerConnection`,
//!   that was asked to close (`maxRequestsPerConnection: 1`) or that switched protocols
//!   is not pooled again;
//! - a sweeper task, running while the pool holds idle connections (and lingering
//!   [`SWEEP_LINGER`] after, so one connection taken and given back in turn does not
//!   start one per request) and woken early by a connection that expires before its
//!   next wake, closes those whose time runs out while no request comes to take them.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::super::Body;
use super::super::error::ProxyError;
use super::connect::{Counted, PoolKey, TlsKey, dial, handshake};
use super::gate::{Gate, Gated};
use crate::cluster::Cluster;
use crate::plugin::coarse;

/// Idle connections kept per key at most (hyper-util's `pool_max_idle_per_host` was
/// set to the same); a connection given back to a full list closes.
const MAX_IDLE_PER_KEY: usize = 1024;

/// What a pooled HTTP/1.1 connection can be reused for: its endpoint, its TLS settings
/// and SNI, and how its pool closes and retires connections ([`PoolKey`]). Made with
/// [`Key::new`], which hashes it once.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// The endpoint, `host:port`.
    target: Arc<str>,
    tls: Option<TlsKey>,
    pool: PoolKey,
    /// Every field above, through SipHash with this process's random keys
    /// ([`KEY_HASHER`]): the endpoint can be a host a client named (a wildcard
    /// ServiceEntry), so the pool's map keeps a keyed hash against flooding.
    hash: u64,
}

/// The random SipHash keys every [`Key`] is hashed with, drawn once per process (every
/// worker's pool shares them; each pool had keys of its own before, which a flood
/// would not notice either way: the keys never leave the process).
static KEY_HASHER: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();

impl Key {
    /// The key, hashed once here. A request's key is looked up twice (taken, given
    /// back); each lookup hashed it again, about 730 instructions a time (callgrind,
    /// scenario 1), and now reads this hash.
    pub fn new(target: Arc<str>, tls: Option<TlsKey>, pool: PoolKey) -> Key {
        Key {
            hash: Key::hash_of(&target, tls.as_ref(), &pool),
            target,
            tls,
            pool,
        }
    }

    /// The clear-text key of `cluster`'s target at `index`, with the hash kept from the
    /// first request there (`Cluster::plain_key_hashes`): the endpoint and the
    /// cluster's pool settings it hashes are fixed for the cluster's life, and hashing
    /// per request cost about 270 instructions (scenario 1). `None` past its targets.
    pub fn plain(cluster: &Cluster, index: usize) -> Option<Key> {
        let target = cluster.targets.get(index)?.authority().clone();
        let kept = cluster.plain_key_hashes.get(index)?;
        let pool = PoolKey::of(cluster);
        Some(Key {
            hash: *kept.get_or_init(|| Key::hash_of(&target, None, &pool)),
            target,
            tls: None,
            pool,
        })
    }

    fn hash_of(target: &str, tls: Option<&TlsKey>, pool: &PoolKey) -> u64 {
        let (age_set, age) = match pool.max_age {
            Some(d) => (1u8, d),
            None => (0, Duration::ZERO),
        };
        // Every field, in a fixed layout, in two writes (four with TLS): equal keys
        // hash alike; a field-by-field derived hash took about nine writes.
        let mut fixed = [0u8; 38];
        fixed[..8].copy_from_slice(&pool.idle.as_secs().to_le_bytes());
        fixed[8..12].copy_from_slice(&pool.idle.subsec_nanos().to_le_bytes());
        fixed[12..16].copy_from_slice(&pool.max_requests.to_le_bytes());
        fixed[16] = age_set;
        fixed[17..25].copy_from_slice(&age.as_secs().to_le_bytes());
        fixed[25..29].copy_from_slice(&age.subsec_nanos().to_le_bytes());
        fixed[29] = u8::from(tls.is_some());
        // The endpoint's length, so that no two keys run together alike.
        fixed[30..38].copy_from_slice(&(target.len() as u64).to_le_bytes());
        let mut state = KEY_HASHER.get_or_init(RandomState::new).build_hasher();
        state.write(&fixed);
        state.write(target.as_bytes());
        if let Some((config, sni)) = tls {
            state.write(config);
            state.write(sni.as_bytes());
        }
        state.finish()
    }
}

impl std::fmt::Debug for Key {
    /// Without the hash, which means nothing outside the process (and is better kept
    /// out of logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("target", &self.target)
            .field("tls", &self.tls.as_ref().map(|(_, sni)| sni))
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
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
    /// Hashed by the hash each key brings ([`crate::int_hash`]).
    conns: HashMap<Key, Vec<Conn>, crate::int_hash::BuildIntHasher>,
    /// When the running sweeper wakes next; `None`: no sweeper runs.
    sweeper: Option<Instant>,
    /// Wakes the sweeper before then.
    wake: Arc<tokio::sync::Notify>,
}

/// A sweeper does not wake more often than this: a connection may stay open up to this
/// long past its time (hyper-util's pool timer had a 90 ms floor).
const SWEEP_FLOOR: std::time::Duration = std::time::Duration::from_millis(50);

/// How long a sweeper that finds no idle connection waits before it looks again, and
/// ends if there is still none. Without it, one connection taken and given back in
/// turn (one client at a time) would start a sweeper per request, which would find the
/// connection taken again and end.
const SWEEP_LINGER: std::time::Duration = std::time::Duration::from_secs(10);

fn lock(idle: &Mutex<Idle>) -> MutexGuard<'_, Idle> {
    // Nothing panics while holding it; if something did, the lists are still whole.
    idle.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request that failed: why, and the request itself when no byte of it was sent (no
/// connection could be made), so a retry can send it without having kept a copy.
#[derive(Debug)]
pub struct Failed {
    pub error: ProxyError,
    pub unsent: Option<Request<Body>>,
}

impl From<ProxyError> for Failed {
    fn from(error: ProxyError) -> Self {
        Failed {
            error,
            unsent: None,
        }
    }
}

/// One connection: hyper's handle to it and what its pool's limits look at.
struct Conn {
    sender: SendRequest<Body>,
    /// Between hyper and the task that drives the connection.
    gate: Arc<Gate>,
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

    /// Usable, and ready to send a request now.
    fn takeable(&self, pool: &PoolKey, now: Instant) -> bool {
        self.usable(pool, now) && self.sender.is_ready()
    }
}

/// A connection lent to one exchange: given back to its pool with [`Lease::release`]
/// once the response body is over; dropped when the exchange failed (hyper closes the
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
    /// The response is over (read to its end, or dropped): the connection goes back to
    /// its pool once hyper is ready to send on it, at once in the usual case, else from
    /// a task; unless it closes or its time runs out meanwhile, or the pool is full.
    pub fn release(mut self) {
        if self.conn.sender.is_ready() {
            self.pool();
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if self.conn.sender.ready().await.is_ok() {
                    self.pool();
                }
            });
        }
    }

    /// Run `read`, a poll of the response body this connection carries, which says
    /// what it polled and whether the body is over; hyper's wake-up of the
    /// connection's task for the chunk it took is dropped when the body is over (it
    /// would poll for nothing, [`super::gate`]).
    pub fn read_body<R>(&self, read: impl FnOnce() -> (R, bool)) -> (R, bool) {
        self.conn.gate.read(read)
    }

    fn pool(self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        // Pool times are on the epoch thread's clock, a millisecond or two behind: little
        // against idle times and ages (seconds, a few hundred milliseconds at least), and
        // one system clock read a request fewer. The sweeper reads the system clock.
        let now = coarse::now();
        let mut conn = self.conn;
        if !conn.usable(&self.key.pool, now) {
            return;
        }
        conn.idle_since = now;
        // When the sweeper should look at it: never sooner than the sweeper's floor.
        let expires = conn.expires(&self.key.pool).max(now + SWEEP_FLOOR);
        let mut idle = lock(&pool);
        let list = idle.conns.entry(self.key).or_default();
        if list.len() >= MAX_IDLE_PER_KEY {
            return;
        }
        list.push(conn);
        match idle.sweeper {
            Some(at) if at <= expires => {}
            // The sweeper sleeps past this connection's time: wake it (a permit is kept
            // if it is not waiting yet).
            Some(_) => {
                idle.sweeper = Some(expires);
                idle.wake.notify_one();
            }
            None => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    // No runtime to run a sweeper on: connections expire when next
                    // taken, and the next one given back on a runtime starts it.
                    return;
                };
                idle.sweeper = Some(expires);
                // Unlocked first: a runtime shutting down drops the task inside
                // `spawn`, and the sweeper's drop takes the lock.
                drop(idle);
                runtime.spawn(sweep(Sweeper {
                    pool: Arc::downgrade(&pool),
                    running: true,
                }));
            }
        }
    }
}

/// The sweeper task's hold on its pool. Dropped while still running (its runtime shut
/// down), it says so, so the next connection given back starts another.
struct Sweeper {
    pool: Weak<Mutex<Idle>>,
    running: bool,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        if self.running
            && let Some(pool) = self.pool.upgrade()
        {
            lock(&pool).sweeper = None;
        }
    }
}

/// Close idle connections as their time runs out; ends once it has found the pool
/// holding none for [`SWEEP_LINGER`] (the next connection given back starts another),
/// or when the pool is gone.
async fn sweep(mut sweeper: Sweeper) {
    // Since when it has found no idle connection, looking again until SWEEP_LINGER has
    // passed.
    let mut none_since: Option<Instant> = None;
    loop {
        let (at, wake) = {
            let Some(pool) = sweeper.pool.upgrade() else {
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
            let at = match next {
                Some(next) => {
                    none_since = None;
                    next.max(now + SWEEP_FLOOR)
                }
                None => {
                    let since = *none_since.get_or_insert(now);
                    if now >= since + SWEEP_LINGER {
                        idle.sweeper = None;
                        sweeper.running = false;
                        return;
                    }
                    // A connection given back meanwhile that expires sooner wakes it.
                    since + SWEEP_LINGER
                }
            };
            idle.sweeper = Some(at);
            (at, idle.wake.clone())
        };
        // Woken early or not, the next round looks again.
        let _ = tokio::time::timeout_at(at.into(), wake.notified()).await;
    }
}

impl Http1Pool {
    /// The most recently pooled connection for `key` that is ready to send; the others
    /// met on the way are dropped.
    fn take(&self, key: &Key) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        let list = idle.conns.get_mut(key)?;
        let now = coarse::now();
        while let Some(conn) = list.pop() {
            if conn.takeable(&key.pool, now) {
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
    ) -> Result<(Response<Incoming>, Option<Lease>), Failed> {
        while let Some(mut conn) = self.take(&key) {
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = self.lease(conn, key, &resp, reuse);
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Never written (the upstream closed the connection while it was
                    // idle, or it was not ready after all): the next connection, or a
                    // new one, takes it.
                    Some(unsent) => req = unsent,
                    None => return Err(super::classify_send(&e.into_error()).into()),
                },
            }
        }
        // Boxed: dialling and a TLS handshake make a large future, and every request's
        // future would carry (and move) its size although most find a pooled connection.
        let mut conn = match Box::pin(self.connect(&key, cluster)).await {
            Ok(conn) => conn,
            // Nothing was sent: the request goes back, for a retry to send.
            Err(error) => {
                return Err(Failed {
                    error,
                    unsent: Some(req),
                });
            }
        };
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

    /// A new connection to `key`'s endpoint, dialled and (over TLS) handshaken within
    /// `cluster`'s connect timeout, with its TCP keepalive, counted in its metrics for
    /// as long as it is open (an upgraded connection too).
    async fn connect(&self, key: &Key, cluster: &Cluster) -> Result<Conn, ProxyError> {
        let timeout = cluster.pool.connect_timeout;
        let deadline = Instant::now() + timeout;
        let tcp = dial(&key.target, cluster).await?;
        let (sender, gate) = match (cluster.tls.as_deref(), &key.tls) {
            (Some(tls), Some((_, sni))) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let stream = handshake(tcp, tls, sni, left).await?;
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
            gate,
            opened: now,
            served: 0,
            idle_since: now,
        })
    }
}

/// hyper's HTTP/1.1 client over `io`, its connection driven by a task of its own
/// through a [`Gate`] (with upgrades: a `101` hands the connection to the response's
/// upgrade).
async fn start<T>(io: T) -> Result<(SendRequest<Body>, Arc<Gate>), ProxyError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ProxyError::UpstreamConnect(format!("HTTP/1.1 handshake: {e}")))?;
    let (conn, gate) = Gated::new(conn.with_upgrades());
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream HTTP/1.1 connection ended: {e}");
        }
    });
    Ok((sender, gate))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of a key goes into its hash: keys that differ in any one hash apart,
    /// a key and one made again from the same fields alike, and the pool's map uses
    /// that hash.
    #[test]
    fn a_pool_key_hashes_every_field() {
        let base = || {
            (
                Arc::<str>::from("10.0.0.1:80"),
                None::<TlsKey>,
                PoolKey {
                    idle: Duration::from_secs(60),
                    max_requests: 0,
                    max_age: None,
                },
            )
        };
        let (t, tls, pool) = base();
        let mut keys = vec![Key::new(t, tls, pool)];
        type Parts = (Arc<str>, Option<TlsKey>, PoolKey);
        let vary: [fn(&mut Parts); 8] = [
            |k| k.0 = "10.0.0.1:8".into(),
            |k| k.1 = Some(([0; 32], String::new())),
            |k| k.1 = Some(([1; 32], String::new())),
            |k| k.1 = Some(([0; 32], "a.example".into())),
            |k| k.2.idle = Duration::from_millis(60_001),
            |k| k.2.max_requests = 5,
            |k| k.2.max_age = Some(Duration::ZERO),
            |k| k.2.max_age = Some(Duration::from_nanos(7)),
        ];
        for change in vary {
            let mut parts = base();
            change(&mut parts);
            keys.push(Key::new(parts.0, parts.1, parts.2));
        }
        let (t, tls, pool) = base();
        let again = Key::new(t, tls, pool);
        assert_eq!(again, keys[0]);
        let state = crate::int_hash::BuildIntHasher::default();
        assert_eq!(state.hash_one(&again), state.hash_one(&keys[0]));
        assert_eq!(
            state.hash_one(&again),
            state.hash_one(again.hash),
            "the map uses the key's hash"
        );
        for (i, a) in keys.iter().enumerate() {
            for b in keys.iter().skip(i + 1) {
                assert_ne!(a.hash, b.hash, "{a:?} and {b:?}");
            }
        }
    }

    /// A cluster's clear-text keys are the keys `Key::new` makes for its targets, equal
    /// and hashed alike; the hash is made at the first and read by the later ones.
    #[test]
    fn a_clusters_clear_text_keys_are_hashed_once_per_target() {
        use crate::snapshot::Registry;
        use crate::snapshot::registry::{Bounds, Seat};
        let registry = || {
            let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
                metadata: {name: shop}\nspec:\n  hosts: [shop.test]\n  resolution: STATIC\n  \
                ports: [{number: 80, name: http, protocol: HTTP}]\n  \
                endpoints: [{address: 10.0.0.1}, {address: 10.0.0.2}]\n";
            let config = wasmgate_config::load_sources(&[("r.yaml".into(), yaml.to_string())])
                .unwrap_or_else(|e| panic!("{e}"));
            let metrics = Arc::new(crate::telemetry::metrics::Metrics::new(false, "", ""));
            Registry::new(
                &config,
                metrics,
                Bounds::default(),
                &Seat::default(),
                Arc::default(),
            )
        };
        let r = registry();
        let cluster = r.resolve("shop.test", Some(80), None).expect("resolved");
        for index in 0..2 {
            let target = cluster.targets[index].authority().clone();
            let made = Key::new(target, None, PoolKey::of(&cluster));
            assert_eq!(Key::plain(&cluster, index), Some(made.clone()));
            assert_eq!(cluster.plain_key_hashes[index].get(), Some(&made.hash));
            assert_eq!(Key::plain(&cluster, index), Some(made));
        }
        assert_ne!(Key::plain(&cluster, 0), Key::plain(&cluster, 1));
        assert_eq!(Key::plain(&cluster, 2), None);
        // Later keys read the kept hash, not hash again.
        let r = registry();
        let cluster = r.resolve("shop.test", Some(80), None).expect("resolved");
        assert_eq!(cluster.plain_key_hashes[1].set(42), Ok(()));
        assert_eq!(Key::plain(&cluster, 1).map(|k| k.hash), Some(42));
    }

    /// A request on a pooled connection does not carry the future that opens one (dial,
    /// TLS handshake, hyper's handshake): it is boxed where it is awaited, so the
    /// request's future, at every level above this one, is smaller by its size. Sizes as
    /// the test build lays them out.
    #[test]
    fn sending_does_not_carry_the_connect_future() {
        let send = future_size!(Http1Pool::send, A, B, C, D, E);
        let connect = future_size!(Http1Pool::connect, A, B, C);
        assert!(
            send < connect,
            "Http1Pool::send's future is {send} bytes, connect's {connect}"
        );
    }

    /// A key for connections the tests open by hand: a 60 s idle timeout, no other
    /// limit.
    fn key() -> Key {
        Key::new(
            "127.0.0.1:1".into(),
            None,
            PoolKey {
                idle: Duration::from_secs(60),
                max_requests: 0,
                max_age: None,
            },
        )
    }

    /// A connection to a loopback listener that accepts it and stays silent.
    async fn conn() -> Conn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let _accepted = listener.accept().await;
            std::future::pending::<()>().await;
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, gate) = start(TokioIo::new(tcp)).await.expect("handshake");
        sender.ready().await.expect("ready to send");
        let now = Instant::now();
        Conn {
            sender,
            gate,
            opened: now,
            served: 0,
            idle_since: now,
        }
    }

    /// hyper's I/O that counts its reads: hyper reads each time its connection's task
    /// is polled while the connection is idle.
    struct CountedReads {
        io: TokioIo<tokio::net::TcpStream>,
        reads: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl hyper::rt::Read for CountedReads {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: hyper::rt::ReadBufCursor<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl hyper::rt::Write for CountedReads {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// The size of `/big`'s body: many reads, and many chunks through hyper's channel.
    const BIG: usize = 1 << 20;

    /// A loopback origin, keep-alive, that counts the connections it accepted and
    /// answers `/small` with `ok`, `/big` with [`BIG`] bytes and `/chunked` with
    /// `hello world` in three chunks written apart.
    async fn origin() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                        head.extend_from_slice(&buf[..n]);
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            let request: Vec<u8> = head.drain(..end + 4).collect();
                            let parts: Vec<Vec<u8>> = if request.starts_with(b"GET /big ") {
                                let mut answer =
                                    format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n")
                                        .into_bytes();
                                answer.resize(answer.len() + BIG, b'x');
                                vec![answer]
                            } else if request.starts_with(b"GET /chunked ") {
                                vec![
                                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                                      5\r\nhello\r\n"
                                        .to_vec(),
                                    b"6\r\n world\r\n".to_vec(),
                                    b"0\r\n\r\n".to_vec(),
                                ]
                            } else {
                                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()]
                            };
                            for part in parts {
                                if tcp.write_all(&part).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// Let every task that is woken run (one thread: the test's runtime).
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    /// Read `body` to its end as `UpstreamBody` does (`poll_body`, through `lease`'s
    /// gate when given): its bytes.
    async fn read_to_end(body: &mut Incoming, lease: Option<&Lease>) -> Vec<u8> {
        let mut read = Vec::new();
        std::future::poll_fn(|cx| {
            loop {
                match super::super::poll_body(body, lease, cx) {
                    (std::task::Poll::Ready(Some(Ok(frame))), over) => {
                        if let Ok(data) = frame.into_data() {
                            read.extend_from_slice(&data);
                        }
                        if over {
                            return std::task::Poll::Ready(());
                        }
                    }
                    (std::task::Poll::Ready(None), _) => return std::task::Poll::Ready(()),
                    (std::task::Poll::Ready(Some(Err(e))), _) => panic!("the body failed: {e}"),
                    (std::task::Poll::Pending, _) => return std::task::Poll::Pending,
                }
            }
        })
        .await;
        read
    }

    /// A small response read to its end through its connection's gate does not wake
    /// the connection's task; read without the gate, it does (the test sees that
    /// wake-up, so it would see one through the gate). Longer bodies, in many chunks
    /// and chunked, still arrive whole through the gate (hyper's wake-ups for more
    /// are passed on), and one connection carries every response.
    #[tokio::test]
    async fn a_body_read_to_its_end_through_the_gate_does_not_wake_its_connection() {
        let (addr, accepted) = origin().await;
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let io = CountedReads {
            io: TokioIo::new(tcp),
            reads: reads.clone(),
        };
        let (sender, gate) = start(io).await.expect("handshake");
        let now = Instant::now();
        let mut lease = Lease {
            conn: Conn {
                sender,
                gate,
                opened: now,
                served: 0,
                idle_since: now,
            },
            key: key(),
            pool: Weak::new(),
        };
        let read = || reads.load(std::sync::atomic::Ordering::Relaxed);
        let cases = [
            ("/small", false, b"ok".to_vec()),
            ("/small", true, b"ok".to_vec()),
            ("/big", true, vec![b'x'; BIG]),
            ("/chunked", true, b"hello world".to_vec()),
            ("/small", true, b"ok".to_vec()),
        ];
        for (path, gated, expected) in cases {
            tokio::time::timeout(Duration::from_secs(10), lease.conn.sender.ready())
                .await
                .unwrap_or_else(|_| panic!("{path}: the connection stalled"))
                .expect("ready to send");
            let request = Request::get(path)
                .header(http::header::HOST, "origin.test")
                .body(crate::proxy::empty())
                .expect("a request");
            let resp = tokio::time::timeout(
                Duration::from_secs(10),
                lease.conn.sender.send_request(request),
            )
            .await
            .expect("answered in time")
            .expect("answered");
            let mut body = resp.into_body();
            settle().await;
            let before = read();
            let body = tokio::time::timeout(
                Duration::from_secs(10),
                read_to_end(&mut body, gated.then_some(&lease)),
            )
            .await
            .unwrap_or_else(|_| panic!("{path}: the body stalled"));
            assert!(body == expected, "{path}: {} bytes", body.len());
            // Ready at once: the lease would pool it on the spot, no task spawned.
            assert!(lease.conn.sender.is_ready(), "{path}: ready after its body");
            settle().await;
            if path == "/small" {
                if gated {
                    assert_eq!(read(), before, "through the gate the task slept");
                } else {
                    // Should hyper stop giving this wake-up, the gate can go.
                    assert!(read() > before, "without the gate the task woke");
                }
            }
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "one connection carried every response"
        );
    }

    /// One client at a time: its connection is given back, taken again by the next
    /// request before the sweeper started for it first looks, and given back again. The
    /// sweeper must not end on finding the pool empty (it would be started again for
    /// every request); it stays, and the next give-back finds it running.
    #[tokio::test]
    async fn a_connection_taken_and_given_back_in_turn_does_not_start_a_sweeper_each_time() {
        let pool = Http1Pool::default();
        let key = key();
        let lease = |conn| Lease {
            conn,
            key: key.clone(),
            pool: Arc::downgrade(&pool.idle),
        };
        lease(conn().await).release();
        let first = lock(&pool.idle).sweeper;
        assert!(first.is_some(), "a sweeper starts");
        let taken = pool.take(&key).expect("the connection is pooled");
        // The sweeper runs: it finds nothing idle.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        let lingering = lock(&pool.idle).sweeper;
        assert!(lingering.is_some(), "the sweeper lingers with nothing idle");
        assert_ne!(
            lingering, first,
            "the sweeper has looked (its wake moved from the connection's expiry)"
        );
        lease(taken).release();
        assert_eq!(
            lock(&pool.idle).sweeper,
            lingering,
            "the connection given back (60 s idle timeout) leaves the running sweeper be"
        );
        assert!(pool.take(&key).is_some(), "pooled again");
    }
}
