//! Bounds on what clients, upstreams and policies can make the gateway hold, each with
//! a flag and a default that keeps the process inside its means. Past a bound, new work
//! is refused early and cheaply, as Envoy's overload manager refuses it: a connection
//! over the limit is closed as soon as it is accepted, a mirror over the limit is not
//! sent, a request body or tunnel that goes quiet is ended, a delay is cut short.
//! Nothing waits without a bound: a request waiting for an upstream connection holds
//! its downstream connection, which `--max-connections` bounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// File descriptors kept back from connections (listeners, the admin server, the
/// compile cache, Redis, logs).
const FD_RESERVE: u64 = 256;

/// The bounds, from `wasmgate run` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `--max-connections`: downstream connections open at once, all listeners.
    pub max_connections: usize,
    /// `--max-connections-per-listener`.
    pub max_connections_per_listener: usize,
    /// `--stream-idle-timeout-seconds`: a request body that sends nothing this long is
    /// ended (408 before the response started). Envoy's `stream_idle_timeout`, 5 min.
    pub stream_idle: Duration,
    /// `--request-headers-timeout-seconds`: an HTTP/1.x request's head must arrive whole
    /// this long after its first bytes (on a keep-alive connection: after the previous
    /// response, so one idle that long is closed); a connection that sends no byte that
    /// long is closed too. The slow-loris guard; Envoy's `request_headers_timeout`,
    /// which Envoy leaves unset.
    pub request_headers_timeout: Duration,
    /// `--request-timeout-seconds`: a request must be received whole (its body ended)
    /// this long after its head arrived, unless the response started first (408).
    /// Envoy's `request_timeout`, as its edge guide sets it: 5 min. `None`: unbounded.
    pub request_timeout: Option<Duration>,
    /// `--tunnel-idle-timeout-seconds`: an upgraded connection (WebSocket), CONNECT
    /// tunnel or TCP route that moves no byte either way this long is closed. Envoy's
    /// TCP proxy `idle_timeout`, 1 h.
    pub tunnel_idle: Duration,
    /// `--max-mirrors`: mirror requests in flight; more are dropped (and counted).
    pub max_mirrors: usize,
    /// `--max-delay-ms`: the longest delay a route's fault or a plugin may ask.
    pub max_delay: Duration,
    /// `--max-upstream-connections`: connections in use per cluster when its
    /// DestinationRule sets no `tcp.maxConnections` (requests past it wait in line).
    pub max_upstream_connections: u32,
    /// `--max-clusters`: clusters a snapshot keeps resolved for hosts only wildcard
    /// ServiceEntries declare; past it such hosts are resolved per request, not kept.
    pub max_clusters: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_connections: connections_for(open_files_limit()),
            max_connections_per_listener: usize::MAX,
            stream_idle: Duration::from_secs(300),
            request_headers_timeout: Duration::from_secs(30),
            request_timeout: Some(Duration::from_secs(300)),
            tunnel_idle: Duration::from_secs(3600),
            max_mirrors: 1024,
            max_delay: Duration::from_secs(300),
            max_upstream_connections: 4096,
            max_clusters: 10_000,
        }
    }
}

/// The open-files limit the process runs with.
pub fn open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit};
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Raise the open-files limit to the hard limit (as operators of nginx and Envoy do by
/// hand: every connection costs a descriptor, a proxied one two); the limit after.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

/// The default `--max-connections` for `open_files` descriptors: half of what is left
/// after the reserve (each proxied connection also holds an upstream one), at least 64.
pub fn connections_for(open_files: u64) -> usize {
    let usable = open_files.saturating_sub(FD_RESERVE) / 2;
    usize::try_from(usable.max(64)).unwrap_or(usize::MAX)
}

/// The bounds and what is held against them now.
#[derive(Debug)]
pub struct Limits {
    pub settings: Settings,
    connections: Arc<AtomicUsize>,
    mirrors: Arc<AtomicUsize>,
    /// Connections closed at accept because a limit was reached.
    pub connections_refused: AtomicU64,
    /// Mirrors not sent because `--max-mirrors` were in flight.
    pub mirrors_dropped: AtomicU64,
    /// Delays cut to `--max-delay-ms`.
    pub delays_capped: AtomicU64,
}

impl Limits {
    pub fn new(settings: Settings) -> Limits {
        Limits {
            settings,
            connections: Arc::default(),
            mirrors: Arc::default(),
            connections_refused: AtomicU64::new(0),
            mirrors_dropped: AtomicU64::new(0),
            delays_capped: AtomicU64::new(0),
        }
    }

    /// A place for one more downstream connection on a listener that has `listener`
    /// open, or `None`: close it.
    pub fn connection(&self, listener: &Arc<AtomicUsize>) -> Option<Held> {
        let both = take(&self.connections, self.settings.max_connections).and_then(|global| {
            take(listener, self.settings.max_connections_per_listener).map(|own| (global, own))
        });
        if both.is_none() {
            self.connections_refused.fetch_add(1, Ordering::Relaxed);
        }
        both.map(|(global, own)| Held(global, own))
    }

    /// A place for one more mirror request, or `None`: drop it.
    pub fn mirror(&self) -> Option<One> {
        let held = take(&self.mirrors, self.settings.max_mirrors);
        if held.is_none() {
            self.mirrors_dropped.fetch_add(1, Ordering::Relaxed);
        }
        held
    }

    /// `delay` within `--max-delay-ms`.
    pub fn delay(&self, delay: Duration) -> Duration {
        if delay > self.settings.max_delay {
            self.delays_capped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "a delay of {delay:?} was cut to --max-delay-ms ({:?})",
                self.settings.max_delay
            );
            self.settings.max_delay
        } else {
            delay
        }
    }

    /// Downstream connections open now.
    pub fn connections_open(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// One more on `count` if that stays within `max`; whether it was added.
pub fn within(count: &AtomicUsize, max: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// One more on `count` if that stays within `max`, given back when dropped.
pub fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<One> {
    within(count, max).then(|| One(count.clone()))
}

/// One unit of a count, given back on drop.
#[derive(Debug)]
pub struct One(Arc<AtomicUsize>);

impl Drop for One {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A downstream connection's place (global and on its listener), until dropped.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] One, #[allow(dead_code)] One);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_count_globally_and_per_listener() {
        let limits = Limits::new(Settings {
            max_connections: 3,
            max_connections_per_listener: 2,
            ..Settings::default()
        });
        let (a, b) = (Arc::default(), Arc::default());
        let a1 = limits.connection(&a);
        let a2 = limits.connection(&a);
        assert!(a1.is_some() && a2.is_some());
        assert!(limits.connection(&a).is_none(), "listener a is full");
        let b1 = limits.connection(&b);
        assert!(b1.is_some());
        assert!(limits.connection(&b).is_none(), "the gateway is full");
        assert_eq!(limits.connections_open(), 3);
        drop(a1);
        assert!(limits.connection(&b).is_some());
        assert_eq!(limits.connections_refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn defaults_follow_the_descriptor_limit() {
        assert_eq!(connections_for(1024), 384);
        assert_eq!(connections_for(100), 64);
        assert!(open_files_limit() >= 1024);
        let limits = Limits::new(Settings {
            max_mirrors: 1,
            max_delay: Duration::from_secs(1),
            ..Settings::default()
        });
        let m = limits.mirror();
        assert!(m.is_some() && limits.mirror().is_none());
        assert_eq!(limits.mirrors_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(limits.delay(Duration::from_secs(5)), Duration::from_secs(1));
        assert_eq!(
            limits.delay(Duration::from_millis(5)),
            Duration::from_millis(5)
        );
    }
}
