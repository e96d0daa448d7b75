//! Listeners as Envoy builds them for an Istio gateway: one per socket address (bind
//! address and port), shared by every Gateway server on it. A plain HTTP listener picks
//! a virtual host by `Host` among all its servers; a TLS listener picks a server by the
//! ClientHello's SNI, then terminates (HTTPS: that server's own virtual hosts; TLS:
//! `tcp` routes) or passes the bytes through (`tls` routes by SNI); a TCP listener
//! routes whole connections with `tcp` routes. Built with the snapshot, so a bad
//! certificate or a server that cannot share its port is a config error.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use wasmgate_config::raw::RouteDestination;
use wasmgate_config::{
    Config, ConfigError, Gateway, GatewayHost, NamespaceSelector, Pem, Protocol, SecretValue,
    Server, ServerTls, ServerTlsMode, VirtualService,
};

use super::vhosts::{HostTable, intersect};
use super::{Chain, VirtualHost, error, ns_name};
use crate::tls::TlsError;
use crate::tls::server::{HTTP_ALPN, ServerTlsConfig, server_config};

/// One socket and what it serves.
#[derive(Debug)]
pub struct Listener {
    pub addr: SocketAddr,
    pub serve: Serve,
    /// How connections accepted here are set up: each server's protocol and, for TLS
    /// servers, the SNI hosts that pick it and its TLS settings without the certificate
    /// and CA bytes. A reload that changes it drains the connections accepted before (as
    /// Envoy drains a listener whose filter chains change); one that only rotates
    /// certificates or changes routes drains nothing.
    pub setup: Vec<Setup>,
}

/// One server's part of [`Listener::setup`].
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    pub protocol: Protocol,
    pub sni_hosts: Vec<GatewayHost>,
    pub tls: Option<ServerTls>,
}

impl Setup {
    fn of(server: &Server) -> Setup {
        let blank = |pem: Pem| Pem {
            bytes: SecretValue::default(),
            ..pem
        };
        let tls = server.tls.clone().map(|mut tls| {
            tls.certificates.clear();
            tls.client_ca = tls.client_ca.map(blank);
            tls.crl = tls.crl.map(blank);
            tls
        });
        Setup {
            protocol: server.protocol,
            sni_hosts: if tls.is_some() {
                server.hosts.clone()
            } else {
                Vec::new()
            },
            tls,
        }
    }
}

/// What a listener does with a connection.
#[derive(Debug)]
pub enum Serve {
    /// HTTP/1.1 and h2c in clear text: virtual hosts of every server on the socket.
    Http(HttpRoutes),
    /// TLS: the SNI picks a server (exact, then the longest `*.suffix`, then `*`; a
    /// ClientHello without SNI gets the `*` server, if any).
    Tls(HostTable<TlsServer>),
    /// Plain TCP: `tcp` routes of the VirtualServices bound to the servers' Gateways.
    Tcp(L4Routes),
}

impl Listener {
    /// The virtual hosts for an HTTP request that arrived here: in clear text
    /// (`terminated` is `None`), or over TLS this listener terminated for an SNI.
    pub fn http_routes(&self, terminated: Option<Option<&str>>) -> Option<&HttpRoutes> {
        match (&self.serve, terminated) {
            (Serve::Http(routes), None) => Some(routes),
            (Serve::Tls(servers), Some(sni)) => {
                match &servers.find(sni.unwrap_or_default())?.action {
                    TlsAction::Terminate {
                        then: Terminated::Http(routes),
                        ..
                    } => Some(routes),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

impl Serve {
    pub fn kind(&self) -> &'static str {
        match self {
            Serve::Http(_) => "HTTP",
            Serve::Tls(_) => "TLS",
            Serve::Tcp(_) => "TCP",
        }
    }
}

/// Virtual hosts of an HTTP listener, or of one HTTPS server.
#[derive(Debug, Default)]
pub struct HttpRoutes {
    pub hosts: HostTable<VirtualHost>,
    /// Set on the mesh listener: routes see the port of the request's authority (the
    /// service's port, as a sidecar does), and CONNECT opens tunnels.
    pub mesh: Option<super::mesh::Tunnels>,
}

/// A Gateway server on a TLS listener.
#[derive(Debug)]
pub struct TlsServer {
    /// `Gateway ns/name spec.servers[i]`, for logs.
    pub name: String,
    pub action: TlsAction,
}

#[derive(Debug)]
pub enum TlsAction {
    Terminate {
        tls: ServerTlsConfig,
        then: Terminated,
    },
    /// `tls.mode: PASSTHROUGH`: `tls` routes by SNI, bytes spliced as they are.
    Passthrough(L4Routes),
}

/// What a terminated TLS connection carries.
#[derive(Debug)]
pub enum Terminated {
    /// HTTPS: this server's virtual hosts only; a Host of another server is a 404.
    Http(HttpRoutes),
    /// `protocol: TLS` with SIMPLE/MUTUAL: `tcp` routes.
    Tcp(L4Routes),
}

/// Connection-level routes in order: the first whose match fits wins.
#[derive(Debug, Default)]
pub struct L4Routes {
    pub routes: Vec<L4Route>,
}

#[derive(Debug)]
pub struct L4Route {
    /// `namespace/name` of the VirtualService and the route's place (`tcp[0]`).
    pub virtual_service: String,
    pub route: String,
    /// Short destination hosts expand in this namespace.
    pub namespace: String,
    /// Any of these (empty: always).
    pub matches: Vec<L4Match>,
    pub destinations: Vec<L4Destination>,
}

#[derive(Debug, Default)]
pub struct L4Match {
    pub port: Option<u16>,
    /// `sniHosts` of a `tls` route (exact or `*.suffix`); empty for `tcp` routes.
    pub sni_hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct L4Destination {
    pub host: String,
    pub port: Option<u16>,
    pub subset: Option<String>,
    pub weight: u32,
}

impl L4Routes {
    /// The first route for a connection on `port` with `sni`.
    pub fn find(&self, port: u16, sni: Option<&str>) -> Option<&L4Route> {
        self.routes.iter().find(|r| {
            r.matches.is_empty()
                || r.matches.iter().any(|m| {
                    m.port.is_none_or(|p| p == port)
                        && (m.sni_hosts.is_empty()
                            || sni.is_some_and(|s| {
                                m.sni_hosts.iter().any(|h| super::vhosts::matches(h, s))
                            }))
                })
        })
    }
}

/// The Gateway servers that share one socket address, in load order.
type Group<'a> = Vec<(&'a Gateway, &'a Server)>;

/// Build every listener. `listen` is the address of servers without `bind`; `now`
/// (Unix seconds) is when certificates must be valid.
pub fn build(
    config: &Config,
    bound: &[(&VirtualService, Vec<&Gateway>)],
    chains: &HashMap<(String, String), Arc<Chain>>,
    listen: IpAddr,
    now: i64,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<SocketAddr, Arc<Listener>> {
    let groups = group_servers(config, listen, errors);
    let mut listeners = BTreeMap::new();
    for (addr, group) in groups {
        if let Some(serve) = build_one(addr, &group, bound, chains, now, errors) {
            let setup = group.iter().map(|(_, server)| Setup::of(server)).collect();
            listeners.insert(addr, Arc::new(Listener { addr, serve, setup }));
        }
    }
    listeners
}

/// Gateway servers by the socket address they listen on (`bind`, else `listen`, and the
/// port); a `unix://` or unparsable bind is an error on the server.
fn group_servers<'a>(
    config: &'a Config,
    listen: IpAddr,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<SocketAddr, Group<'a>> {
    let mut groups: BTreeMap<SocketAddr, Group<'a>> = BTreeMap::new();
    for gw in &config.gateways {
        for server in &gw.servers {
            let field = format!("spec.servers[{}].bind", server.index);
            let ip = match server.bind.as_deref() {
                None => listen,
                Some(b) if b.starts_with("unix://") => {
                    errors.push(error(
                        &gw.meta,
                        &field,
                        format!(
                            "{b}: unix domain socket listeners are not served by wasmgate; \
                             bind an IP address instead"
                        ),
                    ));
                    continue;
                }
                Some(b) => match b.parse::<IpAddr>() {
                    Ok(ip) => ip,
                    Err(_) => {
                        errors.push(error(&gw.meta, &field, format!("{b} is not a valid IP")));
                        continue;
                    }
                },
            };
            groups
                .entry(SocketAddr::new(ip, server.port))
                .or_default()
                .push((gw, server));
        }
    }
    groups
}

/// Servers of two families on one address cannot be served: the error names both.
fn mixed_families(addr: SocketAddr, group: &Group<'_>) -> Option<ConfigError> {
    let (first_gw, first) = group.first()?;
    let kind = family(first);
    let (gw, other) = group.iter().find(|(_, s)| family(s) != kind)?;
    Some(error(
        &gw.meta,
        &format!("spec.servers[{}].port.protocol", other.index),
        format!(
            "{} cannot share {addr} with {} ({}): a listener serves plain HTTP, TLS or \
             TCP, not a mix",
            other.protocol.as_str(),
            server_name(first_gw, first),
            first.protocol.as_str(),
        ),
    ))
}

/// The listener checks of a snapshot build, without building one (for `wasmgate
/// validate`): binds that cannot be served and servers that cannot share an address.
pub fn check_listeners(config: &Config, listen: IpAddr) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let groups = group_servers(config, listen, &mut errors);
    errors.extend(
        groups
            .iter()
            .filter_map(|(addr, group)| mixed_families(*addr, group)),
    );
    errors
}

/// How a server is served, which decides what may share its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Http,
    Tls,
    Tcp,
}

fn family(server: &Server) -> Family {
    match server.protocol {
        Protocol::Https | Protocol::Tls => Family::Tls,
        Protocol::Tcp | Protocol::Mongo => Family::Tcp,
        Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb => Family::Http,
    }
}

fn server_name(gw: &Gateway, server: &Server) -> String {
    format!("{} spec.servers[{}]", gw.meta.id, server.index)
}

fn build_one(
    addr: SocketAddr,
    group: &Group<'_>,
    bound: &[(&VirtualService, Vec<&Gateway>)],
    chains: &HashMap<(String, String), Arc<Chain>>,
    now: i64,
    errors: &mut Vec<ConfigError>,
) -> Option<Serve> {
    let (_, first) = group.first()?;
    let kind = family(first);
    if let Some(e) = mixed_families(addr, group) {
        errors.push(e);
        return None;
    }
    match kind {
        Family::Http => Some(Serve::Http(http_routes(group, bound, chains))),
        Family::Tcp => Some(Serve::Tcp(l4_routes(group, bound, RouteKind::Tcp))),
        Family::Tls => {
            let mut servers: Vec<(String, Arc<TlsServer>)> = Vec::new();
            for (gw, server) in group {
                let Some(tls) = &server.tls else {
                    continue;
                };
                let one: Group<'_> = vec![(*gw, *server)];
                let action = if tls.mode == ServerTlsMode::Passthrough {
                    TlsAction::Passthrough(l4_routes(&one, bound, RouteKind::Tls))
                } else {
                    let https = server.protocol == Protocol::Https;
                    let alpn: &[&[u8]] = if https { &HTTP_ALPN } else { &[] };
                    let built = match server_config(tls, alpn, now) {
                        Ok(b) => b,
                        Err(e) => {
                            errors.push(tls_error(gw, server, &e));
                            continue;
                        }
                    };
                    let then = if https {
                        Terminated::Http(http_routes(&one, bound, chains))
                    } else {
                        Terminated::Tcp(l4_routes(&one, bound, RouteKind::Tcp))
                    };
                    TlsAction::Terminate { tls: built, then }
                };
                let shared = Arc::new(TlsServer {
                    name: server_name(gw, server),
                    action,
                });
                // One entry per SNI pattern; the first server to claim a name keeps it.
                for h in &server.hosts {
                    if let Some((_, owner)) = servers.iter().find(|(d, _)| *d == h.host) {
                        tracing::warn!(
                            "{}: SNI {} on {addr} already belongs to {}; ignored here",
                            shared.name,
                            h.host,
                            owner.name
                        );
                        continue;
                    }
                    servers.push((h.host.clone(), shared.clone()));
                }
            }
            Some(Serve::Tls(HostTable::from_shared(servers)))
        }
    }
}

/// A server's unusable TLS setting as a config error on its field.
fn tls_error(gw: &Gateway, server: &Server, e: &TlsError) -> ConfigError {
    let field = if e.field.starts_with("spec.") {
        e.field.clone()
    } else if e.field.is_empty() {
        format!("spec.servers[{}].tls", server.index)
    } else {
        format!("spec.servers[{}].tls.{}", server.index, e.field)
    };
    error(&gw.meta, &field, e.to_string())
}

/// The certificate checks of a snapshot build, without building one (for `wasmgate
/// validate`): every terminating server's TLS must load and be valid at `now`.
pub fn check_server_tls(config: &Config, now: i64) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for gw in &config.gateways {
        for server in &gw.servers {
            let Some(tls) = server
                .tls
                .as_ref()
                .filter(|t| t.mode != ServerTlsMode::Passthrough)
            else {
                continue;
            };
            if let Err(e) = server_config(tls, &HTTP_ALPN, now) {
                errors.push(tls_error(gw, server, &e));
            }
        }
    }
    errors
}

/// Does server host `h` admit VirtualService `vs` (namespace), and on which domain?
fn domains<'a>(server: &'a Server, vs: &'a VirtualService) -> impl Iterator<Item = String> + 'a {
    server
        .hosts
        .iter()
        .filter(|h| match &h.namespace {
            NamespaceSelector::Any => true,
            NamespaceSelector::Named(ns) => *ns == vs.meta.id.namespace,
        })
        .flat_map(|h| vs.hosts.iter().filter_map(|v| intersect(v, &h.host)))
}

/// Virtual hosts for `group`'s servers: each VirtualService host joined with each server
/// host of each Gateway it is bound to. A domain's chains are in load order; the same
/// VirtualService through two Gateways on one socket runs as two chains, so a route's
/// `match.gateways` and WasmPlugins targeting either Gateway take effect.
fn http_routes(
    group: &Group<'_>,
    bound: &[(&VirtualService, Vec<&Gateway>)],
    chains: &HashMap<(String, String), Arc<Chain>>,
) -> HttpRoutes {
    let mut domains_out: Vec<(String, Vec<Arc<Chain>>, bool)> = Vec::new();
    for (gw, server) in group {
        let gw_name = ns_name(&gw.meta);
        for (vs, gws) in bound {
            if !gws.iter().any(|g| g.meta.id == gw.meta.id) {
                continue;
            }
            let Some(chain) = chains.get(&(ns_name(&vs.meta), gw_name.clone())) else {
                continue;
            };
            for domain in domains(server, vs) {
                let slot = match domains_out.iter().position(|(d, _, _)| *d == domain) {
                    Some(i) => &mut domains_out[i],
                    None => {
                        domains_out.push((domain, Vec::new(), server.https_redirect));
                        let last = domains_out.len() - 1;
                        &mut domains_out[last]
                    }
                };
                if !slot.1.iter().any(|c| Arc::ptr_eq(c, chain)) {
                    slot.1.push(chain.clone());
                }
            }
        }
        // A server with httpsRedirect answers 301 for its hosts even when no
        // VirtualService routes them (Envoy's `require_tls` virtual host).
        if server.https_redirect {
            for h in &server.hosts {
                if !domains_out.iter().any(|(d, _, _)| *d == h.host) {
                    domains_out.push((h.host.clone(), Vec::new(), true));
                }
            }
        }
    }
    HttpRoutes {
        mesh: None,
        hosts: HostTable::new(domains_out.into_iter().map(|(domain, chains, redirect)| {
            (
                domain.clone(),
                VirtualHost {
                    domain,
                    chains,
                    https_redirect: redirect,
                },
            )
        })),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RouteKind {
    Tcp,
    Tls,
}

/// `tcp` or `tls` routes of the VirtualServices bound to `group`'s Gateways whose hosts
/// meet the servers' hosts, in load order.
fn l4_routes(
    group: &Group<'_>,
    bound: &[(&VirtualService, Vec<&Gateway>)],
    kind: RouteKind,
) -> L4Routes {
    let mut routes: Vec<L4Route> = Vec::new();
    for (gw, server) in group {
        for (vs, gws) in bound {
            if !gws.iter().any(|g| g.meta.id == gw.meta.id) || domains(server, vs).next().is_none()
            {
                continue;
            }
            let vs_name = ns_name(&vs.meta);
            if routes.iter().any(|r| r.virtual_service == vs_name) {
                continue;
            }
            let own_gateway = |m: &[String]| {
                m.is_empty()
                    || m.iter().any(|g| {
                        let r = wasmgate_config::gateway_ref(g, &vs.meta.id.namespace);
                        r.namespace == gw.meta.id.namespace && r.name == gw.meta.id.name
                    })
            };
            routes.extend(vs_l4_routes(vs, kind, &own_gateway));
        }
    }
    L4Routes { routes }
}

/// The `tcp` or `tls` routes of one VirtualService whose matches `applies` accepts
/// (by their `gateways`); a route all of whose matches name other gateways is left out.
pub(super) fn vs_l4_routes(
    vs: &VirtualService,
    kind: RouteKind,
    applies: &dyn Fn(&[String]) -> bool,
) -> Vec<L4Route> {
    let port = |p: u32| match_port(p);
    let entries: Vec<(usize, Vec<L4Match>, &Vec<RouteDestination>)> = match kind {
        RouteKind::Tcp => vs
            .spec
            .tcp
            .iter()
            .map(|r| {
                let matches: Vec<L4Match> = r
                    .match_
                    .iter()
                    .filter(|m| applies(&m.gateways))
                    .map(|m| L4Match {
                        port: port(m.port),
                        sni_hosts: Vec::new(),
                    })
                    .collect();
                (r.match_.len(), matches, &r.route)
            })
            .collect(),
        RouteKind::Tls => vs
            .spec
            .tls
            .iter()
            .map(|r| {
                let matches: Vec<L4Match> = r
                    .match_
                    .iter()
                    .filter(|m| applies(&m.gateways))
                    .map(|m| L4Match {
                        port: port(m.port),
                        sni_hosts: m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                    })
                    .collect();
                (r.match_.len(), matches, &r.route)
            })
            .collect(),
    };
    let field = match kind {
        RouteKind::Tcp => "tcp",
        RouteKind::Tls => "tls",
    };
    let namespace = &vs.meta.id.namespace;
    entries
        .into_iter()
        .enumerate()
        .filter(|(_, (written, matches, _))| *written == 0 || !matches.is_empty())
        .map(|(i, (_, matches, dests))| L4Route {
            virtual_service: ns_name(&vs.meta),
            route: format!("{field}[{i}]"),
            namespace: namespace.clone(),
            matches,
            destinations: dests
                .iter()
                .filter_map(|d| {
                    let dest = d.destination.as_ref()?;
                    Some(L4Destination {
                        host: wasmgate_config::expand_host(&dest.host, namespace),
                        port: dest.port_number().filter(|p| *p > 0),
                        subset: dest.subset_name().map(str::to_string),
                        weight: if dests.len() == 1 {
                            1
                        } else {
                            u32::try_from(d.weight).unwrap_or(0)
                        },
                    })
                })
                .collect(),
        })
        .collect()
}

/// A match's `port` (0 means any).
fn match_port(port: u32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p > 0)
}
