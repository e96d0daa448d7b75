//! The clusters a chain's routes forward to, kept per route and destination once
//! resolved. [`Registry::resolve`] expands the destination's host, hashes it with the
//! port and subset (SipHash: through a wildcard ServiceEntry the key can be a host a
//! client names) and looks it up in a map shared by every worker: about 750
//! instructions per request, for the answer it gave the request before. A route's
//! destinations are the same each time, so the chain keeps what each resolved to and
//! hands it out again for a destination equal to the one it was resolved for (compared
//! by content: a plugin may forward anywhere, with any route index).
//!
//! Sound because a chain and the registry are built together, for one snapshot, and a
//! registry answers the same cluster for the same key for its whole life, once it keeps
//! it. What it does not keep (a wildcard host past `--max-clusters`, built anew per
//! request) is not kept here either. Bounded by the routes' destinations: one entry per
//! destination written in the VirtualService, set once, never replaced.

use std::sync::{Arc, OnceLock};

use super::{Cluster, Registry, ResolveError};
use crate::plugin::types::Destination;

/// Per route (by index in the VirtualService's `http`), per destination (by index in
/// the route's `route`).
#[derive(Debug, Default)]
pub struct RouteClusters {
    routes: Vec<Box<[OnceLock<Box<Kept>>]>>,
}

/// A destination as it was resolved, and its cluster.
#[derive(Debug)]
struct Kept {
    host: String,
    port: Option<u16>,
    subset: Option<String>,
    cluster: Arc<Cluster>,
}

impl Kept {
    fn is_for(&self, d: &Destination) -> bool {
        self.port == d.port && self.host == d.host && self.subset == d.subset
    }
}

impl RouteClusters {
    /// Room for each route's destinations, by their count.
    pub fn new(routes: impl Iterator<Item = usize>) -> Self {
        RouteClusters {
            routes: routes
                .map(|n| (0..n).map(|_| OnceLock::new()).collect())
                .collect(),
        }
    }

    /// The cluster of `destination`, the `slot`th of route `route`'s, whose short host
    /// expands in `namespace`: kept from an earlier request, else resolved (and kept if
    /// the slot is free).
    pub fn resolve(
        &self,
        registry: &Registry,
        namespace: &str,
        route: Option<u32>,
        slot: usize,
        destination: &Destination,
    ) -> Result<Arc<Cluster>, ResolveError> {
        let place = route
            .and_then(|r| self.routes.get(usize::try_from(r).ok()?))
            .and_then(|r| r.get(slot));
        if let Some(kept) = place.and_then(OnceLock::get)
            && kept.is_for(destination)
        {
            return Ok(kept.cluster.clone());
        }
        let host = wasmgate_config::host::expanded(&destination.host, namespace);
        let (cluster, kept) =
            registry.resolve_kept(&host, destination.port, destination.subset.as_deref())?;
        if let Some(place) = place.filter(|_| kept) {
            let _ = place.set(Box::new(Kept {
                host: destination.host.clone(),
                port: destination.port,
                subset: destination.subset.clone(),
                cluster: cluster.clone(),
            }));
        }
        Ok(cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::registry::{Bounds, Seat};
    use crate::telemetry::metrics::Metrics;

    const CONFIG: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shop, namespace: web}
spec:
  hosts: [shop.web.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, labels: {version: v1}}
  - {address: 127.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shop, namespace: web}
spec:
  host: shop.web.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: web}
spec:
  hosts: [\"*.wild.test\"]
  location: MESH_EXTERNAL
  resolution: DYNAMIC_DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
";

    fn registry(max_clusters: usize) -> Registry {
        let config = wasmgate_config::load_sources(&[("r.yaml".into(), CONFIG.to_string())])
            .unwrap_or_else(|e| panic!("{e}"));
        let bounds = Bounds {
            max_clusters,
            ..Bounds::default()
        };
        let metrics = Arc::new(Metrics::new(false, "", ""));
        Registry::new(&config, metrics, bounds, &Seat::default(), Arc::default())
    }

    fn to(host: &str, subset: Option<&str>) -> Destination {
        Destination {
            host: host.into(),
            subset: subset.map(str::to_string),
            port: None,
            weight: 1,
            request_headers: None,
            response_headers: None,
        }
    }

    #[test]
    fn a_routes_destination_is_resolved_once_and_kept() {
        let clusters = RouteClusters::new([1, 2].into_iter());
        let (first, second) = (registry(10), registry(10));
        let v2 = to("shop", Some("v2"));
        let kept = clusters
            .resolve(&first, "web", Some(1), 1, &v2)
            .expect("resolved");
        assert_eq!(kept.name, "outbound|80|v2|shop.web.svc.cluster.local");
        // Kept: the second registry is not asked (it would answer a cluster of its own).
        let again = clusters
            .resolve(&second, "web", Some(1), 1, &v2)
            .expect("resolved");
        assert!(Arc::ptr_eq(&kept, &again));
        // Another slot is resolved on its own.
        let other = clusters
            .resolve(&second, "web", Some(1), 0, &v2)
            .expect("resolved");
        assert!(!Arc::ptr_eq(&kept, &other));
    }

    #[test]
    fn another_destination_in_a_kept_slot_is_resolved_as_it_is() {
        let clusters = RouteClusters::new([2].into_iter());
        let r = registry(10);
        let v1 = clusters
            .resolve(&r, "web", Some(0), 0, &to("shop", Some("v1")))
            .expect("resolved");
        assert_eq!(v1.name, "outbound|80|v1|shop.web.svc.cluster.local");
        // A plugin's forward with the same route index and slot, to another subset,
        // host or port: not the kept cluster.
        for (d, name) in [
            (
                to("shop", Some("v2")),
                "outbound|80|v2|shop.web.svc.cluster.local",
            ),
            (to("shop", None), "outbound|80||shop.web.svc.cluster.local"),
            (to("a.wild.test", None), "outbound|80||*.wild.test"),
        ] {
            let c = clusters
                .resolve(&r, "web", Some(0), 0, &d)
                .expect("resolved");
            assert_eq!(c.name, name);
        }
        let mut port = to("shop", Some("v1"));
        port.port = Some(81);
        assert!(clusters.resolve(&r, "web", Some(0), 0, &port).is_err());
        // An unknown subset is the registry's error, each time.
        let bad = to("shop", Some("v9"));
        for _ in 0..2 {
            assert!(matches!(
                clusters.resolve(&r, "web", Some(0), 1, &bad),
                Err(ResolveError::UnknownSubset { .. })
            ));
        }
    }

    #[test]
    fn what_the_registry_does_not_keep_is_not_kept() {
        // One wildcard host kept by the registry at most: the second is built per request.
        let r = registry(1);
        let clusters = RouteClusters::new([1, 1].into_iter());
        let _ = r
            .resolve("first.wild.test", Some(80), None)
            .expect("resolved");
        let d = to("second.wild.test", None);
        let a = clusters
            .resolve(&r, "web", Some(0), 0, &d)
            .expect("resolved");
        let b = clusters
            .resolve(&r, "web", Some(0), 0, &d)
            .expect("resolved");
        assert!(!Arc::ptr_eq(&a, &b));
        // No route, or one past the chain's: resolved each time, nothing kept.
        let e = to("shop", Some("v1"));
        for route in [None, Some(2), Some(u32::MAX)] {
            let x = clusters.resolve(&r, "web", route, 0, &e).expect("resolved");
            let y = clusters
                .resolve(&registry(1), "web", route, 0, &e)
                .expect("resolved");
            assert!(!Arc::ptr_eq(&x, &y));
        }
    }
}
