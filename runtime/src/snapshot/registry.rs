//! The service registry of one snapshot: ServiceEntries give hosts, ports and endpoints,
//! DestinationRules give subsets (endpoints selected by labels) and load balancing.
//! A destination (host, port, subset) resolves to a [`Cluster`] once and is cached for
//! the snapshot's lifetime, so the hot path pays one map lookup.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use wasmgate_config::{Config, DestinationRule, LoadBalancer, Resolution, ServiceEntry};

use crate::plugin::Random;
use crate::telemetry::metrics::{ClusterStats, Destination, Metrics, RequestStats};
use crate::tls::client::{UpstreamTls, client_config};

/// Why a destination has no cluster: each becomes a 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no ServiceEntry declares host {0}")]
    UnknownHost(String),
    #[error("host {host} has no port {port}")]
    UnknownPort { host: String, port: u16 },
    #[error("host {0} has several ports; the route must name one")]
    AmbiguousPort(String),
    #[error("subset {subset:?} of host {host} is not defined by any DestinationRule")]
    UnknownSubset { host: String, subset: String },
    #[error("host {0} has no endpoints")]
    NoEndpoints(String),
    #[error("TLS settings of DestinationRule {rule} for {host} are unusable: {message}")]
    Tls {
        rule: String,
        host: String,
        message: String,
    },
}

/// Where to connect: an address (IP or DNS name) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: String,
    pub port: u16,
    /// `address:port` (IPv6 bracketed), made once: requests share it.
    authority: Arc<str>,
    /// The same as a URI authority, when it is one.
    uri_authority: Option<http::uri::Authority>,
}

impl Target {
    pub fn new(address: String, port: u16) -> Target {
        let authority: Arc<str> = if address.contains(':') {
            format!("[{address}]:{port}").into()
        } else {
            format!("{address}:{port}").into()
        };
        let uri_authority = http::uri::Authority::from_maybe_shared(bytes::Bytes::copy_from_slice(
            authority.as_bytes(),
        ))
        .ok();
        Target {
            address,
            port,
            authority,
            uri_authority,
        }
    }

    /// `address:port`, bracketing IPv6 addresses.
    pub fn authority(&self) -> &Arc<str> {
        &self.authority
    }

    /// [`Target::authority`] as a URI authority (cloned without copying).
    pub fn uri_authority(&self) -> Option<&http::uri::Authority> {
        self.uri_authority.as_ref()
    }
}

/// The cluster cache's key. Looked up by borrowed parts ([`KeyParts`]), so finding a
/// cached cluster allocates nothing.
#[derive(Debug)]
struct ClusterKey {
    host: String,
    port: Option<u16>,
    subset: Option<String>,
}

/// A (host, port, subset) however it is held.
trait KeyParts {
    fn parts(&self) -> (&str, Option<u16>, Option<&str>);
}

impl KeyParts for ClusterKey {
    fn parts(&self) -> (&str, Option<u16>, Option<&str>) {
        (&self.host, self.port, self.subset.as_deref())
    }
}

impl KeyParts for (&str, Option<u16>, Option<&str>) {
    fn parts(&self) -> (&str, Option<u16>, Option<&str>) {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn KeyParts + 'a> for ClusterKey {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

impl std::hash::Hash for dyn KeyParts + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyParts + '_ {}

// The owned key hashes and compares as its borrowed form does, as `Borrow` requires.
impl std::hash::Hash for ClusterKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for ClusterKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for ClusterKey {}

/// The endpoints of one (host, port, subset) and how to choose among them.
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
    lb: LoadBalancer,
    next: AtomicUsize,
    in_flight: Vec<AtomicUsize>,
}

impl Cluster {
    /// Choose an endpoint. Round robin by default; RANDOM and LEAST_REQUEST (power of
    /// two choices) per the DestinationRule.
    pub fn pick(&self, random: &Random) -> usize {
        let n = self.targets.len();
        if n <= 1 {
            return 0;
        }
        let below = |bound: usize| (random.next_u64() % bound as u64) as usize;
        match self.lb {
            LoadBalancer::Random => below(n),
            LoadBalancer::LeastRequest => {
                let a = below(n);
                let b = below(n);
                let load = |i: usize| self.in_flight[i].load(Ordering::Relaxed);
                if load(b) < load(a) { b } else { a }
            }
            LoadBalancer::RoundRobin | LoadBalancer::Passthrough => {
                self.next.fetch_add(1, Ordering::Relaxed) % n
            }
        }
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

/// Hosts from ServiceEntries and subsets from DestinationRules.
#[derive(Debug)]
pub struct Registry {
    services: HashMap<String, Arc<ServiceEntry>>,
    wildcard_services: Vec<(String, Arc<ServiceEntry>)>,
    rules: HashMap<String, Arc<DestinationRule>>,
    /// (suffix after '*', rule), longest suffix first.
    wildcard_rules: Vec<(String, Arc<DestinationRule>)>,
    cache: DashMap<ClusterKey, Arc<Cluster>>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let mut registry = Registry {
            services: HashMap::new(),
            wildcard_services: Vec::new(),
            rules: HashMap::new(),
            wildcard_rules: Vec::new(),
            cache: DashMap::new(),
            metrics,
        };
        for se in &config.service_entries {
            let se = Arc::new(se.clone());
            for host in &se.hosts {
                if let Some(suffix) = host.strip_prefix('*') {
                    registry
                        .wildcard_services
                        .push((suffix.to_string(), se.clone()));
                } else {
                    // First declared wins, as Istio keeps the oldest.
                    registry
                        .services
                        .entry(host.clone())
                        .or_insert_with(|| se.clone());
                }
            }
        }
        registry
            .wildcard_services
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        for dr in &config.destination_rules {
            let rule = Arc::new(dr.clone());
            match dr.host.strip_prefix('*') {
                Some(suffix) => registry.wildcard_rules.push((suffix.to_string(), rule)),
                None => {
                    registry.rules.entry(dr.host.clone()).or_insert(rule);
                }
            }
        }
        registry
            .wildcard_rules
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        registry
    }

    /// The DestinationRule for `host`: exact, else the most specific wildcard (Istio).
    fn rule(&self, host: &str) -> Option<&Arc<DestinationRule>> {
        self.rules.get(host).or_else(|| {
            self.wildcard_rules
                .iter()
                .find(|(suffix, _)| suffix.is_empty() || host.ends_with(suffix.as_str()))
                .map(|(_, r)| r)
        })
    }

    fn service(&self, host: &str) -> Option<&Arc<ServiceEntry>> {
        self.services.get(host).or_else(|| {
            self.wildcard_services
                .iter()
                .find(|(suffix, _)| host.ends_with(suffix.as_str()))
                .map(|(_, se)| se)
        })
    }

    /// The cluster for a fully qualified `host`, optional `port` and `subset`.
    pub fn resolve(
        &self,
        host: &str,
        port: Option<u16>,
        subset: Option<&str>,
    ) -> Result<Arc<Cluster>, ResolveError> {
        let parts = (host, port, subset);
        if let Some(hit) = self.cache.get(&parts as &dyn KeyParts) {
            return Ok(hit.clone());
        }
        let key = ClusterKey {
            host: host.to_string(),
            port,
            subset: subset.map(str::to_string),
        };
        // Only clusters that exist are cached, so the cache is bounded by the registry
        // whatever destinations plugins invent; one cluster per key, even under races.
        let built = Arc::new(self.build(host, port, subset)?);
        Ok(self.cache.entry(key).or_insert(built).clone())
    }

    fn build(
        &self,
        host: &str,
        port: Option<u16>,
        subset: Option<&str>,
    ) -> Result<Cluster, ResolveError> {
        let se = self
            .service(host)
            .ok_or_else(|| ResolveError::UnknownHost(host.to_string()))?;
        let service_port = match port {
            Some(p) => se.ports.iter().find(|sp| sp.number == p),
            None if se.ports.len() == 1 => se.ports.first(),
            None if se.ports.is_empty() => None,
            None => return Err(ResolveError::AmbiguousPort(host.to_string())),
        };
        let port_number = match (port, service_port) {
            (_, Some(sp)) => sp.number,
            (Some(p), None) if se.ports.is_empty() => p,
            (Some(p), None) => {
                return Err(ResolveError::UnknownPort {
                    host: host.to_string(),
                    port: p,
                });
            }
            (None, None) => 80,
        };
        let rule = self.rule(host);
        let (labels, lb) = match subset {
            None => (
                BTreeMap::new(),
                rule.map_or(LoadBalancer::RoundRobin, |r| r.load_balancer),
            ),
            Some(name) => {
                let found = rule.and_then(|r| r.subsets.iter().find(|s| s.name == name));
                let Some(s) = found else {
                    return Err(ResolveError::UnknownSubset {
                        host: host.to_string(),
                        subset: name.to_string(),
                    });
                };
                (s.labels.clone(), s.load_balancer)
            }
        };
        let mut targets = Vec::new();
        for ep in &se.endpoints {
            if !labels.iter().all(|(k, v)| ep.labels.get(k) == Some(v)) {
                continue;
            }
            let target_port = service_port
                .and_then(|sp| ep.ports.get(&sp.name).copied().or(sp.target_port))
                .unwrap_or(port_number);
            targets.push(Target::new(ep.address.clone(), target_port));
        }
        let dns_self = matches!(
            se.resolution,
            Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns
        ) && se.endpoints.is_empty()
            && labels.is_empty();
        if dns_self {
            let target_port = service_port
                .and_then(|sp| sp.target_port)
                .unwrap_or(port_number);
            targets.push(Target::new(host.to_string(), target_port));
        }
        if targets.is_empty() {
            return Err(ResolveError::NoEndpoints(host.to_string()));
        }
        let http2 = service_port.is_some_and(|sp| {
            matches!(
                sp.protocol.to_ascii_uppercase().as_str(),
                "HTTP2" | "GRPC" | "GRPC-WEB"
            )
        });
        let tls = match rule.and_then(|r| r.client_tls(port_number, subset).map(|t| (r, t))) {
            None => None,
            Some((r, t)) => client_config(t, http2)
                .map_err(|e| ResolveError::Tls {
                    rule: format!("{}/{}", r.meta.id.namespace, r.meta.id.name),
                    host: host.to_string(),
                    message: e.to_string(),
                })?
                .map(Arc::new),
        };
        let in_flight = targets.iter().map(|_| AtomicUsize::new(0)).collect();
        let name = format!(
            "outbound|{port_number}|{}|{host}",
            subset.unwrap_or_default()
        );
        let metrics = &self.metrics;
        let version = labels.get("version").map(String::as_str);
        let stats = metrics.destination(Destination::new(host, &se.meta.id.namespace, version));
        let upstream_stats = metrics.cluster(&name);
        Ok(Cluster {
            name,
            targets,
            http2,
            tls,
            stats,
            upstream_stats,
            lb,
            next: AtomicUsize::new(0),
            in_flight,
        })
    }
}
