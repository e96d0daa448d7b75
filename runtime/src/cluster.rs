//! An upstream cluster: the endpoints of one (host, port, subset) and the
//! DestinationRule policy that governs them. How an endpoint is chosen (`balance.rs`,
//! with consistent hashing in `hash.rs`), how many requests, connections and retries
//! the cluster takes before it answers 503 `UO` (`breakers.rs`), and which endpoints
//! are ejected for failing (`outlier.rs`). Clusters live as long as their snapshot: a
//! reload starts their counts afresh, as a changed Envoy cluster does.

mod balance;
mod breakers;
pub mod hash;
mod outlier;
mod priority;
pub mod warmup;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use std::time::Duration;

use wasmgate_config::model::traffic::{Balancer, ClusterPolicy, HashKey, Keepalive, PoolLimits};

pub use breakers::{Admitted, ConnectionSlot, Overflow, RetrySlot};
pub use outlier::Outcome;

use crate::plugin::Random;
use crate::telemetry::metrics::{ClusterStats, RequestStats};
use crate::tls::client::UpstreamTls;

/// Where to connect: an address (IP or DNS name) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: String,
    pub port: u16,
    /// `address:port` (IPv6 bracketed), made once: requests share it.
    authority: Arc<str>,
}

impl Target {
    pub fn new(address: String, port: u16) -> Target {
        let authority: Arc<str> = if address.contains(':') {
            format!("[{address}]:{port}").into()
        } else {
            format!("{address}:{port}").into()
        };
        Target {
            address,
            port,
            authority,
        }
    }

    /// `address:port`, bracketing IPv6 addresses.
    pub fn authority(&self) -> &Arc<str> {
        &self.authority
    }
}

/// What a cluster is made of, apart from its policy.
#[derive(Debug)]
pub struct Parts {
    /// `outbound|port|subset|host`, as Envoy names it.
    pub name: String,
    /// Endpoints and their load-balancing weights (at least 1).
    pub targets: Vec<(Target, u32)>,
    /// Each endpoint's priority level (locality failover); `None`: one level.
    pub levels: Option<Vec<u8>>,
    /// When each endpoint joined (slow start); empty: long enough ago to be warm.
    pub joined: Vec<std::time::Instant>,
    pub http2: bool,
    pub tls: Option<Arc<UpstreamTls>>,
    pub stats: Arc<RequestStats>,
    pub upstream_stats: Arc<ClusterStats>,
}

/// The endpoints of one (host, port, subset) and how to use them.
#[derive(Debug)]
pub struct Cluster {
    /// `outbound|port|subset|host`, as Envoy names it (for logs).
    pub name: String,
    pub targets: Vec<Target>,
    pub http2: bool,
    /// TLS originated per the DestinationRule (`None`: clear text).
    pub tls: Option<Arc<UpstreamTls>>,
    /// Istio's request metrics of the destination (service, version).
    pub stats: Arc<RequestStats>,
    /// wasmgate's upstream metrics of this cluster.
    pub upstream_stats: Arc<ClusterStats>,
    /// `connectionPool` settings the connections follow.
    pub pool: PoolLimits,
    /// What a consistent hash reads from a request, when the cluster hashes.
    hash_key: Option<HashKey>,
    balancer: balance::Balancer,
    /// Locality failover's priority levels, when there are several.
    levels: Option<priority::Levels>,
    breakers: breakers::Breakers,
    outlier: Option<outlier::Detector>,
    in_flight: Vec<AtomicUsize>,
    /// By target: the hash of its clear-text HTTP/1.1 pool key (endpoint and this
    /// cluster's pool settings), made at its first request (`proxy::upstream`).
    pub(crate) plain_key_hashes: Box<[OnceLock<u64>]>,
}

impl Cluster {
    pub fn new(parts: Parts, policy: ClusterPolicy) -> Cluster {
        let weights: Vec<u32> = parts.targets.iter().map(|(_, w)| (*w).max(1)).collect();
        let targets: Vec<Target> = parts.targets.into_iter().map(|(t, _)| t).collect();
        let hash_key = match &policy.balancer {
            Balancer::Hash(h) => Some(h.key.clone()),
            Balancer::Simple(_) => None,
        };
        let warming = |members: &[usize]| {
            warmup::Warming::of(policy.warmup, &parts.joined, &weights, members)
        };
        // With priority levels each level warms its own endpoints; this one is unused.
        let whole = match parts.levels {
            None => warming(&(0..targets.len()).collect::<Vec<_>>()),
            Some(_) => None,
        };
        let balancer = balance::Balancer::new(&policy.balancer, &targets, &weights, whole);
        let levels = parts
            .levels
            .as_deref()
            .map(|of| priority::Levels::new(of, &policy.balancer, &targets, &weights, &warming));
        let limit_connections = !parts.http2;
        Cluster {
            name: parts.name,
            in_flight: targets.iter().map(|_| AtomicUsize::new(0)).collect(),
            plain_key_hashes: targets.iter().map(|_| OnceLock::new()).collect(),
            outlier: policy
                .outlier
                .map(|o| outlier::Detector::new(o, targets.len())),
            targets,
            http2: parts.http2,
            tls: parts.tls,
            stats: parts.stats,
            breakers: breakers::Breakers::new(&policy.pool, limit_connections),
            upstream_stats: parts.upstream_stats,
            pool: policy.pool,
            hash_key,
            balancer,
            levels,
        }
    }

    /// What a consistent hash of this cluster reads from a request (`None`: it does
    /// not hash).
    pub fn hash_key(&self) -> Option<&HashKey> {
        self.hash_key.as_ref()
    }

    /// Choose an endpoint for a request's first attempt: by the load balancer (and
    /// `hash`, when the cluster hashes), passing over endpoints outlier detection
    /// ejected. `None`: every endpoint is ejected (503 `UH`, as Envoy with no healthy
    /// host).
    pub fn pick(&self, random: &Random, hash: Option<u64>) -> Option<usize> {
        let load = |i: usize| {
            self.in_flight
                .get(i)
                .map_or(0, |c| c.load(Ordering::Relaxed))
        };
        if let Some(levels) = &self.levels {
            // Health and panic are per level here, as Envoy has them per priority.
            let min_health = self.outlier.as_ref().map_or(0, |o| o.min_health_percent());
            return levels.pick(random, hash, &load, &self.not_ejected(), min_health);
        }
        let Some(outlier) = self.usable_outlier() else {
            return Some(self.balancer.pick(random, hash, &load, |_| true));
        };
        let healthy = |i: usize| !outlier.is_ejected(i);
        // Ask the balancer again rather than take the next endpoint, so an ejected
        // endpoint's share spreads over the others instead of doubling its neighbour's
        // (a consistent hash walks on to a healthy endpoint itself).
        let mut last = 0;
        for _ in 0..self.targets.len().max(1) {
            last = self.balancer.pick(random, hash, &load, healthy);
            if healthy(last) {
                return Some(last);
            }
        }
        self.next_after(last, false)
    }

    /// The endpoint a retry after `previous` goes to: the next one outlier detection
    /// has not ejected (Istio's retries avoid the hosts already tried). With locality
    /// levels a retry stays on its level unless `remote` (the route's
    /// `retryRemoteLocalities`).
    pub fn next_after(&self, previous: usize, remote: bool) -> Option<usize> {
        let n = self.targets.len();
        if n == 0 {
            return None;
        }
        if let Some(levels) = &self.levels {
            return levels.next_after(previous, &self.not_ejected(), remote);
        }
        let Some(outlier) = self.usable_outlier() else {
            return Some((previous + 1) % n);
        };
        (1..=n)
            .map(|step| (previous + step) % n)
            .find(|i| !outlier.is_ejected(*i))
    }

    /// Which endpoints outlier detection has not ejected (ejections over are brought
    /// back first), without the cluster-wide panic of [`Cluster::usable_outlier`]:
    /// priority levels judge panic per level.
    fn not_ejected(&self) -> impl Fn(usize) -> bool + '_ {
        let outlier = self.outlier.as_ref().inspect(|o| o.refresh());
        move |i| outlier.is_none_or(|o| !o.is_ejected(i))
    }

    /// The outlier detector, unless it is off, has ejected nothing, or too few
    /// endpoints are healthy for it to count (`minHealthPercent`: Envoy's panic mode,
    /// where every endpoint is used).
    fn usable_outlier(&self) -> Option<&outlier::Detector> {
        let o = self.outlier.as_ref()?;
        o.refresh();
        (o.any_ejected() && !o.panicking()).then_some(o)
    }

    /// Count a request in flight to endpoint `i` until the guard drops.
    pub fn start(self: &Arc<Self>, i: usize) -> InFlight {
        if let Some(c) = self.in_flight.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.upstream_stats.requests.fetch_add(1, Ordering::Relaxed);
        self.upstream_stats
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        InFlight {
            cluster: self.clone(),
            index: i,
        }
    }

    /// What an attempt to endpoint `i` came to, for outlier detection.
    pub fn report(&self, i: usize, outcome: Outcome) {
        if let Some(o) = &self.outlier
            && o.report(i, outcome)
        {
            self.upstream_stats
                .ejections
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                cluster = %self.name,
                endpoint = %self.targets.get(i).map(|t| t.authority().as_ref()).unwrap_or(""),
                "outlier detection ejected an endpoint"
            );
        }
    }

    /// Take a request slot (`http2MaxRequests`), or overflow.
    pub fn admit(self: &Arc<Self>) -> Result<Admitted, Overflow> {
        self.breakers.admit().inspect_err(|_| self.count_overflow())
    }

    /// Take a connection (`maxConnections`) for an HTTP/1.1 or TCP attempt, waiting in
    /// line while `http1MaxPendingRequests` allows; `None` when connections are not
    /// limited.
    pub async fn connection(self: &Arc<Self>) -> Result<Option<ConnectionSlot>, Overflow> {
        self.breakers
            .connection()
            .await
            .inspect_err(|_| self.count_overflow())
    }

    /// Take a connection now or overflow (TCP routes have no pending queue).
    pub fn connection_now(self: &Arc<Self>) -> Result<Option<ConnectionSlot>, Overflow> {
        self.breakers
            .connection_now()
            .inspect_err(|_| self.count_overflow())
    }

    /// A retry slot (`maxRetries`), or `None`: the retry is not made.
    pub fn retry(self: &Arc<Self>) -> Option<RetrySlot> {
        let slot = self.breakers.retry();
        if slot.is_none() {
            self.upstream_stats
                .retry_overflows
                .fetch_add(1, Ordering::Relaxed);
        }
        slot
    }

    fn count_overflow(&self) {
        self.upstream_stats
            .overflows
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Guard from [`Cluster::start`].
#[derive(Debug)]
pub struct InFlight {
    cluster: Arc<Cluster>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(c) = self.cluster.in_flight.get(self.index) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
        self.cluster
            .upstream_stats
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// `tcp.tcpKeepalive` on an upstream socket; what it leaves out keeps the system's
/// value. Whole seconds, as Istio passes them to Envoy.
pub fn set_keepalive(fd: std::os::fd::BorrowedFd<'_>, ka: &Keepalive) {
    use rustix::net::sockopt;
    let mut result = sockopt::set_socket_keepalive(fd, true);
    if let Some(t) = ka.time {
        result = result.and(sockopt::set_tcp_keepidle(fd, t.max(Duration::from_secs(1))));
    }
    if let Some(t) = ka.interval {
        result = result.and(sockopt::set_tcp_keepintvl(
            fd,
            t.max(Duration::from_secs(1)),
        ));
    }
    if let Some(n) = ka.probes {
        result = result.and(sockopt::set_tcp_keepcnt(fd, n));
    }
    if let Err(e) = result {
        tracing::debug!("upstream TCP keepalive not set: {e}");
    }
}
