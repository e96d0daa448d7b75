//! The mesh listener (`wasmgate run --mesh-listener ADDR`): what a sidecar's outbound
//! side does for applications that use wasmgate as their HTTP proxy. VirtualServices
//! bound to `mesh` (explicitly, or by having no `gateways`) route requests by `Host` or
//! absolute-form URI, with the names a sidecar answers to (`reviews`, `reviews.default`,
//! `reviews.default.svc`, `reviews.default.svc.cluster.local`, any port); a service a
//! ServiceEntry declares and no VirtualService covers gets Istio's default route, one
//! per port. Unknown hosts get 404: the mesh listener is not an open proxy (Istio's
//! `REGISTRY_ONLY`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use wasmgate_config::raw::{
    Destination, HTTPMatchRequest, HTTPRoute, HTTPRouteDestination, PortSelector,
    VirtualServiceSpec,
};
use wasmgate_config::{Config, ServiceEntry, VirtualService};

use super::listeners::{HttpRoutes, L4Routes, RouteKind, vs_l4_routes};
use super::vhosts::HostTable;
use super::{Chain, VirtualHost, ns_name};

/// Where the mesh listener listens and whose short names it resolves.
#[derive(Debug, Clone)]
pub struct MeshListener {
    pub addr: SocketAddr,
    /// Clients' namespace: `reviews` means `reviews.<namespace>.svc.cluster.local`.
    pub namespace: String,
}

/// What CONNECT requests on the mesh listener may reach: the `tls` (by SNI) and `tcp`
/// routes of mesh VirtualServices, else a declared service's own port.
#[derive(Debug, Default)]
pub struct Tunnels {
    pub routes: L4Routes,
    /// Short CONNECT hosts expand in this namespace.
    pub namespace: String,
}

/// The chain key of a VirtualService on the mesh listener (`Chain::gateway`).
pub const MESH: &str = "mesh";

/// The names a sidecar in `namespace` answers to for host `fqdn`.
pub fn aliases(fqdn: &str, namespace: &str) -> Vec<String> {
    let mut out = vec![fqdn.to_string()];
    if let Some(base) = fqdn.strip_suffix(".svc.cluster.local")
        && let Some((name, ns)) = base.split_once('.')
        && !ns.contains('.')
    {
        out.push(format!("{name}.{ns}.svc"));
        out.push(format!("{name}.{ns}"));
        if ns == namespace {
            out.push(name.to_string());
        }
    }
    out
}

/// Istio's default route for a service no VirtualService covers: per declared port, a
/// route to that port of the service.
pub fn default_route(se: &ServiceEntry, host: &str) -> VirtualServiceSpec {
    let route = |port: Option<u32>| HTTPRoute {
        match_: port
            .map(|p| {
                vec![HTTPMatchRequest {
                    port: p,
                    ..HTTPMatchRequest::default()
                }]
            })
            .unwrap_or_default(),
        route: vec![HTTPRouteDestination {
            destination: Some(Destination {
                host: host.to_string(),
                port: port.map(|p| PortSelector { number: Some(p) }),
                ..Destination::default()
            }),
            ..HTTPRouteDestination::default()
        }],
        ..HTTPRoute::default()
    };
    let http = if se.ports.len() <= 1 {
        vec![route(None)]
    } else {
        se.ports
            .iter()
            .map(|p| route(Some(u32::from(p.number))))
            .collect()
    };
    VirtualServiceSpec {
        hosts: vec![host.to_string()],
        http,
        ..VirtualServiceSpec::default()
    }
}

/// The hosts ServiceEntries declare that no mesh VirtualService covers, with their
/// entry: each gets a default route.
pub fn uncovered<'a>(
    config: &'a Config,
    mesh_bound: &[&VirtualService],
    namespace: &str,
) -> Vec<(String, &'a ServiceEntry)> {
    let mut out: Vec<(String, &ServiceEntry)> = Vec::new();
    for se in config
        .service_entries
        .iter()
        .filter(|se| super::registry::visible(se, namespace))
    {
        for host in se.hosts.iter().filter(|h| !h.starts_with('*')) {
            let covered = mesh_bound
                .iter()
                .any(|vs| vs.hosts.iter().any(|v| super::vhosts::matches(v, host)));
            if !covered && !out.iter().any(|(h, _)| h == host) {
                out.push((host.clone(), se));
            }
        }
    }
    out
}

/// The mesh listener's virtual hosts: each mesh VirtualService host (and its short
/// names) with its chains in load order; then the default routes.
pub fn routes(
    mesh_bound: &[&VirtualService],
    chains: &HashMap<(String, String), Arc<Chain>>,
    defaults: &[(String, Arc<Chain>)],
    namespace: &str,
) -> HttpRoutes {
    let mut domains: Vec<(String, Vec<Arc<Chain>>)> = Vec::new();
    let mut add =
        |domain: String, chain: &Arc<Chain>| match domains.iter_mut().find(|(d, _)| *d == domain) {
            Some((_, list)) => {
                if !list.iter().any(|c| Arc::ptr_eq(c, chain)) {
                    list.push(chain.clone());
                }
            }
            None => domains.push((domain, vec![chain.clone()])),
        };
    for vs in mesh_bound {
        let Some(chain) = chains.get(&(ns_name(&vs.meta), MESH.to_string())) else {
            continue;
        };
        for host in &vs.hosts {
            for alias in aliases(host, namespace) {
                add(alias, chain);
            }
        }
    }
    for (host, chain) in defaults {
        for alias in aliases(host, namespace) {
            add(alias, chain);
        }
    }
    let mesh_only = |gateways: &[String]| gateways.is_empty() || gateways.iter().any(|g| g == MESH);
    let mut tunnels = Vec::new();
    for kind in [RouteKind::Tls, RouteKind::Tcp] {
        for vs in mesh_bound {
            tunnels.extend(vs_l4_routes(vs, kind, &mesh_only));
        }
    }
    HttpRoutes {
        hosts: HostTable::new(domains.into_iter().map(|(domain, chains)| {
            (
                domain.clone(),
                VirtualHost {
                    domain,
                    chains,
                    https_redirect: false,
                },
            )
        })),
        mesh: Some(Tunnels {
            routes: L4Routes { routes: tunnels },
            namespace: namespace.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_in_the_clients_namespace() {
        assert_eq!(
            aliases("reviews.default.svc.cluster.local", "default"),
            vec![
                "reviews.default.svc.cluster.local",
                "reviews.default.svc",
                "reviews.default",
                "reviews"
            ]
        );
        assert_eq!(
            aliases("ratings.shop.svc.cluster.local", "default"),
            vec![
                "ratings.shop.svc.cluster.local",
                "ratings.shop.svc",
                "ratings.shop"
            ]
        );
        assert_eq!(
            aliases("edition.cnn.com", "default"),
            vec!["edition.cnn.com"]
        );
    }
}
