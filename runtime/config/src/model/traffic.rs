//! The traffic policy of one cluster — a DestinationRule's host, one port, maybe a
//! subset — with Istio's merge applied and every value parsed and defaulted, so the
//! runtime reads numbers, not raw fields.
//!
//! The merge is Istio's (`MergeTrafficPolicy`): start from the rule's `trafficPolicy`;
//! a `portLevelSettings` entry for the port replaces its `loadBalancer`,
//! `connectionPool`, `outlierDetection` and `tls` as a whole (an omitted one falls to
//! the default, not to the rule's); a subset's `trafficPolicy` then replaces each group
//! it sets, and the subset's own port-level entry for the port replaces all four again.
//! Groups are replaced whole, never merged field by field.

use std::time::Duration;

use crate::raw;

/// Istio's default connect timeout (mesh config `connectTimeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's default idle timeout of upstream HTTP connections (Istio sets none).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's cap on one ejection's length (`max_ejection_time`).
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// The policy of one cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterPolicy {
    pub balancer: Balancer,
    pub pool: PoolLimits,
    /// `None`: outlier detection is off.
    pub outlier: Option<Outlier>,
    /// `loadBalancer.localityLbSetting` of the merged policy (applied with the
    /// endpoints' localities: [`super::locality::plan`]).
    pub locality: Option<raw::LocalityLoadBalancerSetting>,
    /// `loadBalancer.warmup` (or `warmupDurationSecs`), for round robin and least
    /// request only, as Envoy's slow start.
    pub warmup: Option<Warmup>,
}

/// Envoy's slow start: an endpoint that joined the cluster less than `window` ago
/// gets its weight times `max(min_fraction, (max(age, 1 s) / window) ^ (1 /
/// aggression))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    pub window: Duration,
    /// `minimumPercent` / 100 (Envoy's default 10 %).
    pub min_fraction: f64,
    /// `aggression` (default 1: a linear ramp).
    pub aggression: f64,
}

impl Warmup {
    /// The share of its weight an endpoint `age` after it joined gets (1 once warm).
    pub fn factor(&self, age: Duration) -> f64 {
        if age >= self.window || self.window.is_zero() {
            return 1.0;
        }
        let time = age.max(Duration::from_secs(1)).as_secs_f64() / self.window.as_secs_f64();
        time.min(1.0)
            .powf(1.0 / self.aggression)
            .max(self.min_fraction)
            .min(1.0)
    }
}

/// How an endpoint is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Balancer {
    Simple(super::LoadBalancer),
    Hash(HashPolicy),
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer::Simple(super::LoadBalancer::RoundRobin)
    }
}

/// `consistentHash`: what is hashed, and the table the hash is looked up in.
#[derive(Debug, Clone, PartialEq)]
pub struct HashPolicy {
    pub key: HashKey,
    pub table: HashTable,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HashKey {
    /// `httpHeaderName` (lowercase).
    Header(String),
    /// `httpCookie`: with a `ttl`, a client without the cookie is given one.
    Cookie(CookieKey),
    /// `useSourceIp`: the client's address.
    SourceIp,
    /// `httpQueryParameterName`.
    QueryParameter(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieKey {
    pub name: String,
    pub path: String,
    /// `None`: hash only a cookie the client sent. Set: a client without the cookie is
    /// given one, with this `Max-Age` (zero: a session cookie, without one).
    pub ttl: Option<Duration>,
    pub attributes: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashTable {
    /// Ring hash with at least this many points (Envoy's default 1024).
    Ring { minimum_size: u64 },
    /// Maglev with this (prime) table size (Envoy's default 65537).
    Maglev { table_size: u64 },
}

/// `connectionPool`, with Istio's defaults: no limit unless one is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolLimits {
    /// `tcp.maxConnections`.
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`.
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`: requests in flight to the cluster (both protocols).
    pub max_requests: u32,
    /// `http.maxRetries`: retries in flight to the cluster.
    pub max_retries: u32,
    /// `http.maxRequestsPerConnection`; 0: unlimited.
    pub max_requests_per_connection: u32,
    /// `tcp.connectTimeout`.
    pub connect_timeout: Duration,
    /// `http.idleTimeout`: an upstream connection idle this long is closed.
    pub idle_timeout: Duration,
    /// `tcp.maxConnectionDuration`: no new request goes on a connection this old.
    pub max_connection_duration: Option<Duration>,
    /// `tcp.tcpKeepalive`.
    pub tcp_keepalive: Option<Keepalive>,
    /// `http.h2UpgradePolicy: UPGRADE`: an HTTP/1.1 service port is spoken to with
    /// HTTP/2.
    pub h2_upgrade: bool,
    /// `http.useClientProtocol`: each request goes upstream in the client's protocol.
    pub use_client_protocol: bool,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
            max_requests_per_connection: 0,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connection_duration: None,
            tcp_keepalive: None,
            h2_upgrade: false,
            use_client_protocol: false,
        }
    }
}

/// `tcp.tcpKeepalive`; `None` fields keep the operating system's values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalive {
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
    pub probes: Option<u32>,
}

/// `outlierDetection`, with Istio's and Envoy's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    /// `consecutive5xxErrors` (default 5; 0 turns it off).
    pub consecutive_5xx: u32,
    /// `consecutiveGatewayErrors` (default off).
    pub consecutive_gateway: u32,
    /// `consecutiveLocalOriginFailures` (default 5), counted apart only with
    /// `splitExternalLocalOriginErrors`.
    pub consecutive_local_origin: u32,
    pub split_local_origin: bool,
    /// `interval` (10 s): an ejected endpoint is looked at again on this tick.
    pub interval: Duration,
    /// `baseEjectionTime` (30 s), times the number of ejections, at most 300 s.
    pub base_ejection_time: Duration,
    /// `maxEjectionPercent` (10): an ejection that would take the ejected share past it
    /// is not made (Envoy's rule; fewer than ten endpoints are then never ejected).
    pub max_ejection_percent: u32,
    /// `minHealthPercent` (0): below it, every endpoint is used again (Envoy's panic).
    pub min_health_percent: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_5xx: 5,
            consecutive_gateway: 0,
            consecutive_local_origin: 5,
            split_local_origin: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

/// The four groups a level can replace.
#[derive(Debug, Clone, Copy, Default)]
struct Groups<'a> {
    load_balancer: Option<&'a raw::LoadBalancerSettings>,
    connection_pool: Option<&'a raw::ConnectionPoolSettings>,
    outlier_detection: Option<&'a raw::OutlierDetection>,
}

impl<'a> Groups<'a> {
    /// `tp` over `self`: each group `tp` sets replaces ours; then `tp`'s port-level
    /// entry for `port` (the first one, as Istio) replaces all of them.
    fn over(mut self, tp: &'a raw::TrafficPolicy, port: u16) -> Self {
        if tp.load_balancer.is_some() {
            self.load_balancer = tp.load_balancer.as_ref();
        }
        if tp.connection_pool.is_some() {
            self.connection_pool = tp.connection_pool.as_ref();
        }
        if tp.outlier_detection.is_some() {
            self.outlier_detection = tp.outlier_detection.as_ref();
        }
        let entry = tp
            .port_level_settings
            .iter()
            .find(|pl| pl.port.and_then(|p| p.number) == Some(u32::from(port)));
        if let Some(pl) = entry {
            self.load_balancer = pl.load_balancer.as_ref();
            self.connection_pool = pl.connection_pool.as_ref();
            self.outlier_detection = pl.outlier_detection.as_ref();
        }
        self
    }
}

/// The merged policy of `spec` for traffic to `port` (of `subset`, when given).
pub fn cluster_policy(
    spec: &raw::DestinationRuleSpec,
    port: u16,
    subset: Option<&str>,
) -> ClusterPolicy {
    let mut groups = Groups::default();
    if let Some(tp) = &spec.traffic_policy {
        groups = groups.over(tp, port);
    }
    let own = subset
        .and_then(|name| spec.subsets.iter().find(|s| s.name == name))
        .and_then(|s| s.traffic_policy.as_ref());
    if let Some(tp) = own {
        groups = groups.over(tp, port);
    }
    ClusterPolicy {
        balancer: groups.load_balancer.map(balancer).unwrap_or_default(),
        pool: groups.connection_pool.map(pool).unwrap_or_default(),
        outlier: groups.outlier_detection.map(outlier),
        locality: groups
            .load_balancer
            .and_then(|lb| lb.locality_lb_setting.clone()),
        warmup: groups.load_balancer.and_then(warmup),
    }
}

/// The slow start of `lb`, when it sets one and balances by round robin or least
/// request (Envoy has it for those alone).
fn warmup(lb: &raw::LoadBalancerSettings) -> Option<Warmup> {
    if !warms_up(lb) {
        return None;
    }
    let (window, percent, aggression) = match &lb.warmup {
        Some(w) => (
            parsed(w.duration.as_deref()),
            w.minimum_percent.unwrap_or(10.0),
            w.aggression.unwrap_or(1.0),
        ),
        None => (parsed(lb.warmup_duration_secs.as_deref()), 10.0, 1.0),
    };
    let window = window.filter(|w| !w.is_zero())?;
    let aggression = if aggression.is_finite() && aggression > 0.0 {
        aggression
    } else {
        1.0
    };
    Some(Warmup {
        window,
        min_fraction: (percent / 100.0).clamp(0.0, 1.0),
        aggression,
    })
}

/// Does `lb` balance in a way slow start applies to (round robin, least request)?
pub fn warms_up(lb: &raw::LoadBalancerSettings) -> bool {
    lb.consistent_hash.is_none()
        && !matches!(
            lb.simple,
            Some(raw::SimpleLB::Random) | Some(raw::SimpleLB::Passthrough)
        )
}

/// A duration the validator already accepted; `None` when absent.
fn parsed(value: Option<&str>) -> Option<Duration> {
    value.and_then(|v| crate::parse_duration(v).ok())
}

/// A limit: Istio leaves 0 (unset) at the maximum.
fn limit(value: i32) -> u32 {
    match u32::try_from(value) {
        Ok(0) | Err(_) => u32::MAX,
        Ok(v) => v,
    }
}

fn balancer(lb: &raw::LoadBalancerSettings) -> Balancer {
    use super::LoadBalancer;
    if let Some(ch) = &lb.consistent_hash {
        let key = if let Some(h) = &ch.http_header_name {
            HashKey::Header(h.to_ascii_lowercase())
        } else if let Some(c) = &ch.http_cookie {
            HashKey::Cookie(CookieKey {
                name: c.name.clone(),
                path: c.path.clone(),
                ttl: parsed(c.ttl.as_deref()),
                attributes: c
                    .attributes
                    .iter()
                    .map(|a| (a.name.clone(), a.value.clone()))
                    .collect(),
            })
        } else if ch.use_source_ip == Some(true) {
            HashKey::SourceIp
        } else if let Some(q) = &ch.http_query_parameter_name {
            HashKey::QueryParameter(q.clone())
        } else {
            // Nothing to hash: every request hashes alike, as Envoy's policy-less hash.
            HashKey::Header(String::new())
        };
        let table = match (&ch.maglev, &ch.ring_hash) {
            (Some(m), _) => HashTable::Maglev {
                table_size: if m.table_size == 0 {
                    65537
                } else {
                    m.table_size
                },
            },
            (None, Some(r)) if r.minimum_ring_size > 0 => HashTable::Ring {
                minimum_size: r.minimum_ring_size,
            },
            _ if ch.minimum_ring_size > 0 => HashTable::Ring {
                minimum_size: ch.minimum_ring_size,
            },
            _ => HashTable::Ring { minimum_size: 1024 },
        };
        return Balancer::Hash(HashPolicy { key, table });
    }
    Balancer::Simple(match lb.simple {
        None | Some(raw::SimpleLB::Unspecified) | Some(raw::SimpleLB::RoundRobin) => {
            LoadBalancer::RoundRobin
        }
        Some(raw::SimpleLB::LeastConn) | Some(raw::SimpleLB::LeastRequest) => {
            LoadBalancer::LeastRequest
        }
        Some(raw::SimpleLB::Random) => LoadBalancer::Random,
        Some(raw::SimpleLB::Passthrough) => LoadBalancer::Passthrough,
    })
}

fn pool(cp: &raw::ConnectionPoolSettings) -> PoolLimits {
    let mut out = PoolLimits::default();
    if let Some(tcp) = &cp.tcp {
        out.max_connections = limit(tcp.max_connections);
        if let Some(d) = parsed(tcp.connect_timeout.as_deref()) {
            out.connect_timeout = d;
        }
        out.max_connection_duration = parsed(tcp.max_connection_duration.as_deref());
        out.tcp_keepalive = tcp.tcp_keepalive.as_ref().map(|ka| Keepalive {
            time: parsed(ka.time.as_deref()),
            interval: parsed(ka.interval.as_deref()),
            probes: (ka.probes > 0).then_some(ka.probes),
        });
    }
    if let Some(http) = &cp.http {
        out.max_pending_requests = limit(http.http1_max_pending_requests);
        out.max_requests = limit(http.http2_max_requests);
        out.max_retries = limit(http.max_retries);
        out.max_requests_per_connection =
            u32::try_from(http.max_requests_per_connection).unwrap_or(0);
        if let Some(d) = parsed(http.idle_timeout.as_deref()) {
            out.idle_timeout = d;
        }
        out.h2_upgrade = http.h2_upgrade_policy == Some(raw::H2UpgradePolicy::Upgrade);
        out.use_client_protocol = http.use_client_protocol;
    }
    out
}

fn outlier(od: &raw::OutlierDetection) -> Outlier {
    let d = Outlier::default();
    // The deprecated `consecutiveErrors` is Istio's old name for gateway errors; set, it
    // turns the 5xx detector off unless `consecutive5xxErrors` is set too (Istio).
    let old = (od.consecutive_errors > 0).then(|| od.consecutive_errors.unsigned_abs());
    let gateway = od
        .consecutive_gateway_errors
        .or(old)
        .unwrap_or(d.consecutive_gateway);
    let five_xx = match (od.consecutive_5xx_errors, old) {
        (Some(n), _) => n,
        (None, Some(_)) => 0,
        (None, None) => d.consecutive_5xx,
    };
    Outlier {
        consecutive_5xx: five_xx,
        consecutive_gateway: gateway,
        consecutive_local_origin: od
            .consecutive_local_origin_failures
            .unwrap_or(d.consecutive_local_origin),
        split_local_origin: od.split_external_local_origin_errors,
        interval: parsed(od.interval.as_deref()).unwrap_or(d.interval),
        base_ejection_time: parsed(od.base_ejection_time.as_deref())
            .unwrap_or(d.base_ejection_time),
        max_ejection_percent: if od.max_ejection_percent > 0 {
            od.max_ejection_percent.unsigned_abs()
        } else {
            d.max_ejection_percent
        },
        min_health_percent: od.min_health_percent.unsigned_abs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> raw::DestinationRuleSpec {
        serde_yaml::from_str(yaml).expect("spec")
    }

    #[test]
    fn warmup_ramps_as_envoys_slow_start() {
        let w = cluster_policy(
            &spec("host: a\ntrafficPolicy:\n  loadBalancer: {warmupDurationSecs: 10s}\n"),
            80,
            None,
        )
        .warmup
        .expect("warmup");
        assert_eq!(
            (w.window, w.min_fraction, w.aggression),
            (Duration::from_secs(10), 0.1, 1.0)
        );
        // Under a second counts as one; the floor is minimumPercent; warm at the window.
        assert_eq!(w.factor(Duration::ZERO), 0.1);
        assert!((w.factor(Duration::from_secs(5)) - 0.5).abs() < 1e-9);
        assert_eq!(w.factor(Duration::from_secs(10)), 1.0);
        let w = cluster_policy(
            &spec("host: a\ntrafficPolicy:\n  loadBalancer: {simple: LEAST_REQUEST, warmup: {duration: 4s, minimumPercent: 0, aggression: 0.5}}\n"),
            80,
            None,
        )
        .warmup
        .expect("warmup");
        // Aggression 0.5 squares the time factor: (2/4)^2.
        assert!((w.factor(Duration::from_secs(2)) - 0.25).abs() < 1e-9);
        // Not for a consistent hash or random choice (Envoy's slow start is not).
        for lb in [
            "{simple: RANDOM, warmupDurationSecs: 10s}",
            "{consistentHash: {useSourceIp: true}, warmupDurationSecs: 10s}",
        ] {
            let p = cluster_policy(
                &spec(&format!("host: a\ntrafficPolicy:\n  loadBalancer: {lb}\n")),
                80,
                None,
            );
            assert_eq!(p.warmup, None, "{lb}");
        }
    }

    #[test]
    fn port_level_settings_replace_groups_without_inheriting() {
        let s = spec(
            "host: a\ntrafficPolicy:\n  connectionPool: {tcp: {maxConnections: 7}}\n  outlierDetection: {consecutive5xxErrors: 2}\n  portLevelSettings:\n  - port: {number: 8080}\n    loadBalancer: {simple: RANDOM}\n",
        );
        let top = cluster_policy(&s, 80, None);
        assert_eq!(top.pool.max_connections, 7);
        assert_eq!(top.outlier.map(|o| o.consecutive_5xx), Some(2));
        let port = cluster_policy(&s, 8080, None);
        assert_eq!(
            port.balancer,
            Balancer::Simple(crate::model::LoadBalancer::Random)
        );
        assert_eq!(port.pool, PoolLimits::default(), "not inherited");
        assert_eq!(port.outlier, None, "not inherited");
    }

    #[test]
    fn subsets_replace_the_groups_they_set() {
        let s = spec(
            "host: a\ntrafficPolicy:\n  connectionPool: {http: {http2MaxRequests: 9}}\n  loadBalancer: {simple: RANDOM}\nsubsets:\n- name: v1\n  labels: {v: '1'}\n  trafficPolicy:\n    connectionPool: {http: {maxRetries: 1}}\n    portLevelSettings:\n    - port: {number: 81}\n      outlierDetection: {}\n",
        );
        let v1 = cluster_policy(&s, 80, Some("v1"));
        assert_eq!(v1.pool.max_retries, 1);
        assert_eq!(
            v1.pool.max_requests,
            u32::MAX,
            "the group is replaced whole"
        );
        assert_eq!(
            v1.balancer,
            Balancer::Simple(crate::model::LoadBalancer::Random),
            "inherited from the rule"
        );
        let v1_81 = cluster_policy(&s, 81, Some("v1"));
        assert_eq!(v1_81.outlier, Some(Outlier::default()));
        assert_eq!(v1_81.balancer, Balancer::default());
        assert_eq!(v1_81.pool, PoolLimits::default());
        let none = cluster_policy(&s, 80, Some("v9"));
        assert_eq!(none.pool.max_requests, 9);
    }

    #[test]
    fn consistent_hash_defaults() {
        let s = spec(
            "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      httpCookie: {name: user, ttl: 60s}\n",
        );
        let Balancer::Hash(h) = cluster_policy(&s, 80, None).balancer else {
            panic!("a hash policy");
        };
        assert_eq!(h.table, HashTable::Ring { minimum_size: 1024 });
        let HashKey::Cookie(c) = h.key else {
            panic!("a cookie key");
        };
        assert_eq!(c.ttl, Some(Duration::from_secs(60)));
        let s = spec(
            "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash: {httpHeaderName: X-User, maglev: {tableSize: 101}}\n",
        );
        assert_eq!(
            cluster_policy(&s, 80, None).balancer,
            Balancer::Hash(HashPolicy {
                key: HashKey::Header("x-user".into()),
                table: HashTable::Maglev { table_size: 101 },
            })
        );
    }
}
