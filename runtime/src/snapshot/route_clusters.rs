//! The clusters a chain's routes forward to, kept per route and destination once
//! resolved. Resolving one expands the destination's host (`host::expanded`), then
//! [`Registry::resolve`] hashes it with the port and subset (SipHash: through a
//! wildcard ServiceEntry the key can be a host a client names) and looks it up in a map
//! shared by every worker: about 750 instructions per request, for the answer it gave
//! the request before. So each destination the VirtualService writes has a slot, made
//! with the routes, holding the destination as the router forwards to it; the cluster
//! it resolves to is kept there at its first request and handed out again for an equal
//! destination (compared by content: a plugin may forward anywhere, under any route
//! index, and then the registry is asked as before).
//!
//! Sound because a chain and the registry are built together, for one snapshot, and a
//! registry answers the same cluster for the same key for its whole life, once it keeps
//! it. What it does not keep (a wildcard host past `--max-clusters`, built anew per
//! request) is not kept here either. One per VirtualService, shared by its chains (one
//! per Gateway it binds): the namespace its short hosts expand in is the
//! VirtualService's.

use std::sync::{Arc, OnceLock};

use wasmgate_config::raw;

use super::{Cluster, Registry, ResolveError};
use crate::plugin::types::Destination;

/// Slots by route (by index in the VirtualService's `http`), then by destination (by
/// index in the route's `route`), in one list.
#[derive(Debug, Default)]
pub struct RouteClusters {
    slots: Box<[Slot]>,
    /// Route `r`'s slots are `starts[r]..starts[r + 1]`.
    starts: Box<[usize]>,
}

/// A destination as the VirtualService writes it (as the router forwards to it), and
/// the cluster it resolved to.
#[derive(Debug)]
struct Slot {
    host: String,
    port: Option<u16>,
    subset: Option<String>,
    cluster: OnceLock<Arc<Cluster>>,
}

impl Slot {
    /// The router's destination for `d` (`plugins/router`): the host as written, its
    /// subset and port as `raw::Destination` reads them.
    fn of(d: Option<&raw::Destination>) -> Slot {
        Slot {
            host: d.map(|d| d.host.clone()).unwrap_or_default(),
            port: d.and_then(raw::Destination::port_number),
            subset: d
                .and_then(raw::Destination::subset_name)
                .map(str::to_string),
            cluster: OnceLock::new(),
        }
    }

    fn is_for(&self, d: &Destination) -> bool {
        self.port == d.port && self.host == d.host && self.subset == d.subset
    }
}

impl RouteClusters {
    /// A slot for each destination of each of `routes`.
    pub fn new(routes: &[raw::HTTPRoute]) -> Self {
        let mut starts = Vec::with_capacity(routes.len() + 1);
        let mut slots = Vec::new();
        for route in routes {
            starts.push(slots.len());
            slots.extend(route.route.iter().map(|d| Slot::of(d.destination.as_ref())));
        }
        starts.push(slots.len());
        RouteClusters {
            slots: slots.into(),
            starts: starts.into(),
        }
    }

    fn slot(&self, route: u32, index: usize) -> Option<&Slot> {
        let r = usize::try_from(route).ok()?;
        let (start, end) = (*self.starts.get(r)?, *self.starts.get(r.checked_add(1)?)?);
        self.slots.get(start..end)?.get(index)
    }

    /// The cluster of `destination`, the `index`th of route `route`'s, whose short host
    /// expands in `namespace`: kept from an earlier request when it is the destination
    /// the VirtualService writes there, else resolved (and then kept, if it is).
    pub fn resolve(
        &self,
        registry: &Registry,
        namespace: &str,
        route: Option<u32>,
        index: usize,
        destination: &Destination,
    ) -> Result<Arc<Cluster>, ResolveError> {
        let slot = route
            .and_then(|r| self.slot(r, index))
            .filter(|s| s.is_for(destination));
        if let Some(kept) = slot.and_then(|s| s.cluster.get()) {
            return Ok(kept.clone());
        }
        let host = wasmgate_config::host::expanded(&destination.host, namespace);
        let (cluster, kept) =
            registry.resolve_kept(&host, destination.port, destination.subset.as_deref())?;
        if let Some(slot) = slot.filter(|_| kept) {
            // Two requests may race to here: both got the registry's one cluster.
            let _ = slot.cluster.set(cluster.clone());
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

    /// Routes whose destinations are `(host, subset)` as a VirtualService writes them
    /// ("" for no subset).
    fn routes(each: &[&[(&str, &str)]]) -> Vec<raw::HTTPRoute> {
        each.iter()
            .map(|ds| raw::HTTPRoute {
                route: ds
                    .iter()
                    .map(|(host, subset)| raw::HTTPRouteDestination {
                        destination: Some(raw::Destination {
                            host: host.to_string(),
                            subset: subset.to_string(),
                            ..raw::Destination::default()
                        }),
                        ..raw::HTTPRouteDestination::default()
                    })
                    .collect(),
                ..raw::HTTPRoute::default()
            })
            .collect()
    }

    #[test]
    fn a_routes_destination_is_resolved_once_and_kept() {
        let clusters = RouteClusters::new(&routes(&[&[], &[("shop", "v1"), ("shop", "v2")]]));
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
        let v1 = to("shop", Some("v1"));
        let other = clusters
            .resolve(&second, "web", Some(1), 0, &v1)
            .expect("resolved");
        assert!(!Arc::ptr_eq(&kept, &other));
        assert!(Arc::ptr_eq(
            &other,
            &clusters
                .resolve(&first, "web", Some(1), 0, &v1)
                .expect("resolved")
        ));
    }

    #[test]
    fn a_destination_other_than_the_routes_own_is_resolved_as_it_is_and_not_kept() {
        let clusters = RouteClusters::new(&routes(&[&[("shop", "v1"), ("shop", "v2")]]));
        let r = registry(10);
        // A plugin's forward under the route's index, first, to another subset, host or
        // port: resolved as it is, each time, and the slot stays the route's own.
        let mut port = to("shop", Some("v1"));
        port.port = Some(81);
        assert!(clusters.resolve(&r, "web", Some(0), 0, &port).is_err());
        for (d, name) in [
            (
                to("shop", Some("v2")),
                "outbound|80|v2|shop.web.svc.cluster.local",
            ),
            (to("shop", None), "outbound|80||shop.web.svc.cluster.local"),
            (to("a.wild.test", None), "outbound|80||*.wild.test"),
        ] {
            for _ in 0..2 {
                let c = clusters
                    .resolve(&r, "web", Some(0), 0, &d)
                    .expect("resolved");
                assert_eq!(c.name, name);
            }
        }
        let v1 = to("shop", Some("v1"));
        let own = clusters
            .resolve(&r, "web", Some(0), 0, &v1)
            .expect("resolved");
        assert_eq!(own.name, "outbound|80|v1|shop.web.svc.cluster.local");
        let again = clusters
            .resolve(&registry(10), "web", Some(0), 0, &v1)
            .expect("resolved");
        assert!(
            Arc::ptr_eq(&own, &again),
            "the route's own destination is kept"
        );
        // An unknown subset the route writes is the registry's error, each time.
        let clusters = RouteClusters::new(&routes(&[&[("shop", "v9")]]));
        for _ in 0..2 {
            assert!(matches!(
                clusters.resolve(&r, "web", Some(0), 0, &to("shop", Some("v9"))),
                Err(ResolveError::UnknownSubset { .. })
            ));
        }
    }

    #[test]
    fn what_the_registry_does_not_keep_is_not_kept() {
        // One wildcard host kept by the registry at most: the second is built per request.
        let r = registry(1);
        let clusters =
            RouteClusters::new(&routes(&[&[("second.wild.test", "")], &[("shop", "v1")]]));
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
        // No route, a slot past the route's, or a route past the chain's: resolved each
        // time, nothing kept.
        let e = to("shop", Some("v1"));
        for (route, index) in [(None, 0), (Some(1), 1), (Some(2), 0), (Some(u32::MAX), 0)] {
            let x = clusters
                .resolve(&r, "web", route, index, &e)
                .expect("resolved");
            let y = clusters
                .resolve(&registry(1), "web", route, index, &e)
                .expect("resolved");
            assert!(!Arc::ptr_eq(&x, &y));
        }
    }
}
