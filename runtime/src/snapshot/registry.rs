//! The service registry of one snapshot: ServiceEntries give hosts, ports and endpoints,
//! DestinationRules give subsets (endpoints selected by labels) and load balancing.
//! A destination (host, port, subset) resolves to a [`Cluster`] once and is cached for
//! the snapshot's lifetime, so the hot path pays one map lookup.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use wasmgate_config::model::export;
use wasmgate_config::model::locality::{self, Locality, Place};
use wasmgate_config::model::traffic::{ClusterPolicy, cluster_policy};
use wasmgate_config::{Config, DestinationRule, Resolution, ServiceEntry};

use crate::cluster::warmup::Arrivals;
use crate::cluster::{Cluster, Parts, Target};
use crate::telemetry::metrics::{Destination, Metrics};
use crate::tls::client::client_config;

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

/// Hosts from ServiceEntries and subsets from DestinationRules.
#[derive(Debug)]
pub struct Registry {
    services: HashMap<String, Arc<ServiceEntry>>,
    wildcard_services: Vec<(String, Arc<ServiceEntry>)>,
    /// Every rule for an exact host, in load order (which applies depends on the
    /// namespaces: [`Registry::rule`]).
    rules: HashMap<String, Vec<Arc<DestinationRule>>>,
    /// (suffix after '*', rule), longest suffix first.
    wildcard_rules: Vec<(String, Arc<DestinationRule>)>,
    cache: DashMap<ClusterKey, Arc<Cluster>>,
    /// The namespace this registry is seen from (`--workload-namespace`).
    namespace: String,
    /// Where this gateway is (`--locality`), for locality-aware balancing.
    locality: Locality,
    /// `--network` and `--workload-labels`, for `failoverPriority`.
    network: String,
    labels: BTreeMap<String, String>,
    /// Of those, clusters of hosts only a wildcard ServiceEntry declares.
    wildcard_cached: AtomicUsize,
    metrics: Arc<Metrics>,
    bounds: Bounds,
    /// When endpoints joined (kept by the gateway across reloads), for slow start.
    arrivals: Arc<Arrivals>,
    /// The `Arrivals` keys of this registry's endpoints.
    endpoints: HashSet<u64>,
}

/// What the registry's clusters default to, and how many it keeps (`limits.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// `tcp.maxConnections` of a cluster whose DestinationRule sets none.
    pub max_connections: u32,
    /// Clusters kept resolved for hosts only a wildcard ServiceEntry declares (as many
    /// as clients name); past it such a cluster is resolved for its request and not
    /// kept. Exact hosts are always kept: the config bounds them.
    pub max_clusters: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        let s = crate::limits::Settings::default();
        Bounds {
            max_connections: s.max_upstream_connections,
            max_clusters: s.max_clusters,
        }
    }
}

/// Where this gateway sits: the namespace `exportTo` is read against, its locality,
/// network and labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seat {
    /// `--workload-namespace`.
    pub namespace: String,
    /// `--locality`: `region/zone/subzone`, empty when not given.
    pub locality: String,
    /// `--network`: empty when not given.
    pub network: String,
    /// `--workload-labels`: this gateway's own labels, as a pod's.
    pub labels: BTreeMap<String, String>,
}

/// `distribute`: each endpoint's weight scaled so that the endpoints one `to` entry
/// matches share that entry's percentage (in proportion to their own weights, whatever
/// locality each is in, as Istio splits an entry over the localities it matches);
/// endpoints no entry matches are dropped.
fn distribute(targets: Vec<(Target, u32)>, shares: &[Option<(usize, u32)>]) -> Vec<(Target, u32)> {
    let mut totals: HashMap<usize, u64> = HashMap::new();
    for ((_, weight), share) in targets.iter().zip(shares) {
        if let Some((entry, _)) = share {
            *totals.entry(*entry).or_default() += u64::from(*weight);
        }
    }
    targets
        .into_iter()
        .zip(shares)
        .filter_map(|((target, weight), share)| {
            let (entry, percent) = (*share)?;
            let total = totals.get(&entry).copied().unwrap_or(1).max(1);
            let scaled = u64::from(percent) * u64::from(weight) * 1000 / total;
            Some((target, u32::try_from(scaled).unwrap_or(u32::MAX).max(1)))
        })
        .collect()
}

/// Does `se`'s `exportTo` let a proxy in `namespace` see it?
pub fn visible(se: &ServiceEntry, namespace: &str) -> bool {
    export::exported_to(&se.spec.export_to, &se.meta.id.namespace, namespace)
}

impl Registry {
    /// Stamp this registry's new endpoints as joined now and forget the ones it does
    /// not have: called once it serves, so a config that fails to load leaves nothing
    /// behind, and an endpoint removed and added again warms up again.
    pub fn settle_arrivals(&self) {
        self.arrivals.settle(&self.endpoints);
    }

    /// The registry a proxy in `namespace` sees: ServiceEntries exported to it, and the
    /// DestinationRules Istio would apply there (`wasmgate_config::model::export`).
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        bounds: Bounds,
        seen_from: &Seat,
        arrivals: Arc<Arrivals>,
    ) -> Self {
        let namespace = seen_from.namespace.as_str();
        let mut registry = Registry {
            namespace: namespace.to_string(),
            locality: Locality::parse(&seen_from.locality),
            network: seen_from.network.clone(),
            labels: seen_from.labels.clone(),
            services: HashMap::new(),
            wildcard_services: Vec::new(),
            rules: HashMap::new(),
            wildcard_rules: Vec::new(),
            cache: DashMap::new(),
            wildcard_cached: AtomicUsize::new(0),
            metrics,
            bounds,
            arrivals,
            endpoints: HashSet::new(),
        };
        for se in config
            .service_entries
            .iter()
            .filter(|se| visible(se, namespace))
        {
            let se = Arc::new(se.clone());
            for host in &se.hosts {
                // Stamped when this registry serves ([`Registry::settle_arrivals`]).
                for ep in &se.endpoints {
                    registry.endpoints.insert(Arrivals::key(host, ep));
                }
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
                None => registry
                    .rules
                    .entry(dr.host.clone())
                    .or_default()
                    .push(rule),
            }
        }
        registry
            .wildcard_rules
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        registry
    }

    /// The DestinationRule for `host`, a service of namespace `service_ns`, as Istio
    /// picks it: by namespace first (this proxy's, then the service's, then the root
    /// namespace's, each only if exported here), then the exact host before the most
    /// specific wildcard, then the first loaded.
    fn rule(&self, host: &str, service_ns: &str) -> Option<&Arc<DestinationRule>> {
        let exact = self.rules.get(host).into_iter().flatten();
        let wildcards = self
            .wildcard_rules
            .iter()
            .filter(|(suffix, _)| suffix.is_empty() || host.ends_with(suffix.as_str()))
            .map(|(_, r)| r);
        exact
            .chain(wildcards)
            .filter_map(|r| {
                export::rule_rank(
                    &r.meta.id.namespace,
                    &r.spec.export_to,
                    &self.namespace,
                    service_ns,
                )
                .map(|rank| (rank, r))
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, r)| r)
    }

    /// The ServiceEntry declaring `host`, and the wildcard suffix it matched (`None`
    /// for an exact host).
    fn service(&self, host: &str) -> Option<(&Arc<ServiceEntry>, Option<&str>)> {
        self.services.get(host).map(|se| (se, None)).or_else(|| {
            self.wildcard_services
                .iter()
                .find(|(suffix, _)| host.ends_with(suffix.as_str()))
                .map(|(suffix, se)| (se, Some(suffix.as_str())))
        })
    }

    /// The cluster for a fully qualified `host`, optional `port` and `subset`.
    pub fn resolve(
        &self,
        host: &str,
        port: Option<u16>,
        subset: Option<&str>,
    ) -> Result<Arc<Cluster>, ResolveError> {
        self.resolve_kept(host, port, subset).map(|(c, _)| c)
    }

    /// [`Registry::resolve`], and whether the registry keeps the cluster (the one it
    /// answers for this key from now on) or built it for this request only.
    pub fn resolve_kept(
        &self,
        host: &str,
        port: Option<u16>,
        subset: Option<&str>,
    ) -> Result<(Arc<Cluster>, bool), ResolveError> {
        let parts = (host, port, subset);
        if let Some(hit) = self.cache.get(&parts as &dyn KeyParts) {
            return Ok((hit.clone(), true));
        }
        let key = ClusterKey {
            host: host.to_string(),
            port,
            subset: subset.map(str::to_string),
        };
        // Only clusters that exist are cached, so the cache is bounded by the registry
        // whatever destinations plugins invent; one cluster per key, even under races.
        // Hosts of a wildcard ServiceEntry are as many as clients name: past
        // `--max-clusters` they are resolved per request and not kept.
        let built = Arc::new(self.build(host, port, subset)?);
        let invented = !self.services.contains_key(host);
        if invented && self.wildcard_cached.load(Ordering::Relaxed) >= self.bounds.max_clusters {
            return Ok((built, false));
        }
        match self.cache.entry(key) {
            dashmap::Entry::Occupied(kept) => Ok((kept.get().clone(), true)),
            dashmap::Entry::Vacant(slot) => {
                if invented {
                    self.wildcard_cached.fetch_add(1, Ordering::Relaxed);
                }
                Ok((slot.insert(built).clone(), true))
            }
        }
    }

    fn build(
        &self,
        host: &str,
        port: Option<u16>,
        subset: Option<&str>,
    ) -> Result<Cluster, ResolveError> {
        let (se, wildcard) = self
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
        let rule = self.rule(host, &se.meta.id.namespace);
        let labels = match subset {
            None => BTreeMap::new(),
            Some(name) => {
                let found = rule.and_then(|r| r.subsets.iter().find(|s| s.name == name));
                let Some(s) = found else {
                    return Err(ResolveError::UnknownSubset {
                        host: host.to_string(),
                        subset: name.to_string(),
                    });
                };
                s.labels.clone()
            }
        };
        let mut policy = rule.map_or_else(ClusterPolicy::default, |r| {
            cluster_policy(&r.spec, port_number, subset)
        });
        if policy.pool.max_connections == u32::MAX {
            policy.pool.max_connections = self.bounds.max_connections;
        }
        let members: Vec<&wasmgate_config::model::Endpoint> = se
            .endpoints
            .iter()
            .filter(|ep| labels.iter().all(|(k, v)| ep.labels.get(k) == Some(v)))
            .collect();
        let mut targets: Vec<(Target, u32)> = members
            .iter()
            .map(|ep| {
                let target_port = service_port
                    .and_then(|sp| ep.ports.get(&sp.name).copied().or(sp.target_port))
                    .unwrap_or(port_number);
                (Target::new(ep.address.clone(), target_port), ep.weight)
            })
            .collect();
        // Locality and label priorities need outlier detection, `distribute` does not:
        // without either there is no plan, and nothing to parse.
        let may_plan = policy.outlier.is_some()
            || policy
                .locality
                .as_ref()
                .is_some_and(|l| !l.distribute.is_empty());
        let localities: Vec<Locality> = if may_plan {
            members
                .iter()
                .map(|ep| Locality::parse(&ep.locality))
                .collect()
        } else {
            Vec::new()
        };
        let places: Vec<Place<'_>> = members
            .iter()
            .zip(&localities)
            .map(|(ep, locality)| Place {
                locality,
                network: &ep.network,
                labels: &ep.labels,
            })
            .collect();
        let here = Place {
            locality: &self.locality,
            network: &self.network,
            labels: &self.labels,
        };
        let plan = may_plan
            .then(|| {
                locality::plan(
                    policy.locality.as_ref(),
                    policy.outlier.is_some(),
                    &here,
                    &places,
                )
            })
            .flatten();
        // A wildcard ServiceEntry is one cluster, named for its wildcard as Istio names
        // it, so its hosts share one set of series however many clients invent.
        let named: std::borrow::Cow<'_, str> = match wildcard {
            Some(suffix) => format!("*{suffix}").into(),
            None => host.into(),
        };
        let mut joined: Vec<std::time::Instant> = match policy.warmup {
            Some(_) => members
                .iter()
                .map(|ep| self.arrivals.joined(Arrivals::key(&named, ep)))
                .collect(),
            None => Vec::new(),
        };
        let levels = match plan {
            Some(locality::Plan::Distribute(shares)) => {
                if !joined.is_empty() {
                    joined = joined
                        .into_iter()
                        .zip(&shares)
                        .filter(|(_, share)| share.is_some())
                        .map(|(at, _)| at)
                        .collect();
                }
                targets = distribute(targets, &shares);
                None
            }
            Some(locality::Plan::Priorities(levels)) => Some(levels),
            None => None,
        };
        let dns_self = matches!(
            se.resolution,
            Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns
        ) && se.endpoints.is_empty()
            && labels.is_empty();
        if dns_self {
            let target_port = service_port
                .and_then(|sp| sp.target_port)
                .unwrap_or(port_number);
            targets.push((Target::new(host.to_string(), target_port), 1));
        }
        if targets.is_empty() {
            return Err(ResolveError::NoEndpoints(host.to_string()));
        }
        let protocol = service_port.map(|sp| sp.protocol.to_ascii_uppercase());
        // `h2UpgradePolicy: UPGRADE` speaks HTTP/2 to an HTTP/1.1 port too (Istio).
        let http2 = match protocol.as_deref() {
            Some("HTTP2" | "GRPC" | "GRPC-WEB") => true,
            Some("HTTP") => policy.pool.h2_upgrade,
            _ => false,
        };
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
        let name = format!(
            "outbound|{port_number}|{}|{named}",
            subset.unwrap_or_default()
        );
        let metrics = &self.metrics;
        let version = labels.get("version").map(String::as_str);
        let stats = metrics.destination(Destination::new(&named, &se.meta.id.namespace, version));
        let upstream_stats = metrics.cluster(&name);
        Ok(Cluster::new(
            Parts {
                name,
                targets,
                levels,
                joined,
                http2,
                tls,
                stats,
                upstream_stats,
            },
            policy,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(yaml: &str, bounds: Bounds, seat: &Seat) -> Registry {
        let config = wasmgate_config::load_sources(&[("r.yaml".into(), yaml.to_string())])
            .unwrap_or_else(|e| panic!("{e}"));
        let metrics = Arc::new(Metrics::new(false, "", ""));
        Registry::new(&config, metrics, bounds, seat, Arc::default())
    }

    const WILD: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: wild}\nspec:\n  hosts: [\"*.wild.test\"]\n  location: MESH_EXTERNAL\n  resolution: DYNAMIC_DNS\n  ports: [{number: 80, name: http, protocol: HTTP}]\n";

    #[test]
    fn hosts_of_a_wildcard_entry_are_kept_up_to_max_clusters() {
        let bounds = Bounds {
            max_clusters: 2,
            ..Bounds::default()
        };
        let r = registry(WILD, bounds, &Seat::default());
        for i in 0..5 {
            let host = format!("h{i}.wild.test");
            let c = r.resolve(&host, Some(80), None).expect("resolved");
            assert_eq!(c.name, "outbound|80||*.wild.test");
        }
        // Past the bound they are resolved for each request, not kept.
        assert_eq!(r.cache.len(), 2);
        assert!(r.resolve("h0.wild.test", Some(80), None).is_ok());
        assert_eq!(r.cache.len(), 2);
    }

    #[test]
    fn clusters_default_to_max_upstream_connections() {
        let bounds = Bounds {
            max_connections: 7,
            ..Bounds::default()
        };
        let r = registry(WILD, bounds, &Seat::default());
        let c = r.resolve("a.wild.test", Some(80), None).expect("resolved");
        assert_eq!(c.pool.max_connections, 7);
    }

    #[test]
    fn hidden_entries_declare_nothing() {
        let yaml = WILD.replace("spec:\n", "spec:\n  exportTo: [\".\"]\n");
        let here = Seat {
            namespace: "default".into(),
            ..Seat::default()
        };
        assert!(
            registry(&yaml, Bounds::default(), &here)
                .resolve("a.wild.test", Some(80), None)
                .is_ok()
        );
        let gateway = Seat {
            namespace: "istio-system".into(),
            ..Seat::default()
        };
        let r = registry(&yaml, Bounds::default(), &gateway);
        assert!(matches!(
            r.resolve("a.wild.test", Some(80), None),
            Err(ResolveError::UnknownHost(_))
        ));
    }

    #[test]
    fn distribute_splits_an_entry_over_every_endpoint_it_matches() {
        let t = |p: u16| (Target::new("127.0.0.1".into(), p), 1);
        let targets = vec![t(1), t(2), (Target::new("127.0.0.1".into(), 3), 3), t(4)];
        // Entry 0 (80 %) matches endpoints 1 and 2 (two localities), entry 1 (20 %)
        // endpoint 3 (weight 3); endpoint 4 no entry.
        let shares = [Some((0, 80)), Some((0, 80)), Some((1, 20)), None];
        let weights: Vec<u32> = distribute(targets, &shares)
            .iter()
            .map(|(_, w)| *w)
            .collect();
        assert_eq!(weights, [40_000, 40_000, 20_000]);
    }
}
