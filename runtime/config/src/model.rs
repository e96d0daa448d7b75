//! Stage three: the validated model the runtime builds its snapshot from. Hosts are
//! expanded and lowercase, enums replace strings, defaults are resolved (no `Option` means
//! "use the default"). Parts the runtime passes on to plugins unchanged (HTTP routes)
//! stay as the raw types, and each resource keeps its raw `spec` as written (but for a
//! VirtualService's `delegate` routes, replaced by the merged routes). TLS settings
//! are resolved: certificates and keys are read from their Secrets and files ([`tls`]).

pub mod export;
pub mod locality;
mod tls;
pub mod traffic;

pub use tls::{
    ClientTls, ClientTlsMode, KeyPair, Pem, Secret, SecretValue, ServerTls, ServerTlsMode,
};

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::ResourceId;
use crate::raw;

/// Identity and metadata shared by every resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub id: ResourceId,
    /// The file the resource was read from.
    pub file: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A validated `Gateway`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    pub meta: Meta,
    pub selector: BTreeMap<String, String>,
    /// The servers wasmgate can serve; servers with protocols it does not implement are
    /// left out (with a warning).
    pub servers: Vec<Server>,
    pub spec: raw::GatewaySpec,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Index in `spec.servers`, for messages (`spec.servers[2]`).
    pub index: usize,
    pub name: Option<String>,
    pub port: u16,
    pub port_name: String,
    pub protocol: Protocol,
    pub hosts: Vec<GatewayHost>,
    /// Address to bind, when set (an IP, or `unix://path` with port 0).
    pub bind: Option<String>,
    /// `tls.httpsRedirect` on a plain-text HTTP server: answer 301 to `https://`. Always
    /// `false` on other servers (on HTTPS Envoy's redirect is a no-op).
    pub https_redirect: bool,
    /// `Some` exactly for HTTPS and TLS servers.
    pub tls: Option<ServerTls>,
}

/// Server protocols wasmgate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Https,
    Grpc,
    GrpcWeb,
    Http2,
    Mongo,
    Tcp,
    Tls,
}

impl Protocol {
    /// HTTP in clear text (HTTP/1.1, HTTP/2, gRPC, gRPC-Web): routed with `spec.http`.
    pub fn is_http(&self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }

    /// Protocols that need TLS settings on the server (HTTPS, TLS).
    pub fn is_tls(&self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    /// The protocol's name as Istio writes it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-WEB",
            Protocol::Http2 => "HTTP2",
            Protocol::Mongo => "MONGO",
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
        }
    }
}

/// A host a gateway server exposes, with the namespaces whose VirtualServices may bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayHost {
    pub namespace: NamespaceSelector,
    /// Lowercase; may be `*` or `*.example.com`.
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceSelector {
    Any,
    Named(String),
}

/// A validated `VirtualService`.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualService {
    pub meta: Meta,
    /// Expanded with [`crate::expand_host`], lowercase. Empty for a delegate.
    pub hosts: Vec<String>,
    /// Gateways bound (`mesh` excluded).
    pub gateways: Vec<GatewayRef>,
    /// Bound to the `mesh` gateway (explicitly, or because `gateways` is empty).
    pub binds_mesh: bool,
    /// The HTTP routes, with `delegate` routes replaced by the delegate's routes merged
    /// into them (Istio's rules; see `crate::analyze`). Always equal to `spec.http`.
    pub http: Vec<raw::HTTPRoute>,
    /// The spec as written, for re-serialising to plugins; `http` is the merged routes.
    pub spec: raw::VirtualServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatewayRef {
    pub namespace: String,
    pub name: String,
}

/// A validated `DestinationRule`.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationRule {
    pub meta: Meta,
    /// Expanded, lowercase; may be a wildcard.
    pub host: String,
    pub load_balancer: LoadBalancer,
    /// `trafficPolicy.tls`.
    pub tls: Option<ClientTls>,
    /// `trafficPolicy.portLevelSettings[].tls` by port (the first entry for a port counts,
    /// as in Istio; entries without `tls` are left out).
    pub port_tls: BTreeMap<u16, ClientTls>,
    pub subsets: Vec<Subset>,
    pub spec: raw::DestinationRuleSpec,
}

impl DestinationRule {
    /// The TLS setting for traffic to `port` (of `subset`, when given), by Istio's
    /// merge ([`traffic`]): a `portLevelSettings` entry for the port replaces the level's
    /// `tls` (an entry without `tls` means plain text), and a subset's setting replaces
    /// the rule's. `None`: plain text.
    pub fn client_tls(&self, port: u16, subset: Option<&str>) -> Option<&ClientTls> {
        let has_entry = |tp: Option<&raw::TrafficPolicy>| {
            tp.is_some_and(|tp| {
                tp.port_level_settings
                    .iter()
                    .any(|pl| pl.port.and_then(|p| p.number) == Some(u32::from(port)))
            })
        };
        let rule = if has_entry(self.spec.traffic_policy.as_ref()) {
            self.port_tls.get(&port)
        } else {
            self.tls.as_ref()
        };
        let Some(name) = subset else {
            return rule;
        };
        let Some(own) = self.subsets.iter().find(|s| s.name == name) else {
            return rule;
        };
        let raw_own = self
            .spec
            .subsets
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.traffic_policy.as_ref());
        if has_entry(raw_own) {
            return own.port_tls.get(&port);
        }
        own.tls.as_ref().or(rule)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The subset's own policy, or the rule's.
    pub load_balancer: LoadBalancer,
    /// The subset's own `trafficPolicy.tls` (not inherited: see
    /// [`DestinationRule::client_tls`]).
    pub tls: Option<ClientTls>,
    /// The subset's own `trafficPolicy.portLevelSettings[].tls` by port.
    pub port_tls: BTreeMap<u16, ClientTls>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LoadBalancer {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    Passthrough,
}

/// A validated `ServiceEntry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub meta: Meta,
    /// Expanded with [`crate::expand_host`] (wasmgate expands short ServiceEntry hosts
    /// too, so `reviews` in `default` is `reviews.default.svc.cluster.local`), lowercase.
    pub hosts: Vec<String>,
    pub ports: Vec<ServicePort>,
    /// As written. With `DNS`/`DNS_ROUND_ROBIN` and no endpoints, the hosts themselves are
    /// resolved.
    pub endpoints: Vec<Endpoint>,
    pub resolution: Resolution,
    pub location: Location,
    pub spec: raw::ServiceEntrySpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub number: u16,
    pub name: String,
    /// As written (`HTTP`, `TCP`...); empty when absent.
    pub protocol: String,
    pub target_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// An IP, a DNS name (DNS resolutions) or `unix:///path`.
    pub address: String,
    /// Port name (from `spec.ports`) to the endpoint's port for it.
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    /// Load-balancing weight; 1 when absent or zero.
    pub weight: u32,
    /// `region/zone/subzone` (any part may be missing): see [`locality`].
    pub locality: String,
    /// The endpoint's network (`topology.istio.io/network` to `failoverPriority`).
    pub network: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Istio's default: connect to the address the client asked for.
    #[default]
    None,
    Static,
    Dns,
    DnsRoundRobin,
    /// Resolve the request's host (wildcard hosts only).
    DynamicDns,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

/// A validated `WasmPlugin`.
#[derive(Debug, Clone, PartialEq)]
pub struct WasmPlugin {
    pub meta: Meta,
    pub source: PluginSource,
    pub sha256: Option<String>,
    /// `Null` when absent; otherwise a JSON object.
    pub plugin_config: serde_json::Value,
    pub phase: Phase,
    pub priority: i64,
    pub fail_strategy: FailStrategy,
    /// VirtualServices and Gateways the plugin is bound to; empty means no `targetRef(s)`.
    pub targets: Vec<TargetRef>,
    /// `spec.selector.matchLabels` (workload labels), empty when absent.
    pub selector: BTreeMap<String, String>,
    /// Where it runs, from `match` (`mode` and `ports`).
    pub traffic: PluginMatch,
    /// What the `wasmgate.io/capabilities` annotation grants.
    pub capabilities: Capabilities,
    /// `vmConfig.env` resolved: the plugin's WASI environment, in the order written.
    /// `valueFrom: HOST` values are read from wasmgate's own environment at load, for
    /// the names `--plugin-host-env` allows ([`crate::LoadOptions::host_env`]).
    pub env: Vec<(String, String)>,
    pub spec: raw::WasmPluginSpec,
}

/// Host capabilities a WasmPlugin's `wasmgate.io/capabilities` annotation grants; all
/// denied by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `clock`: wall-clock time.
    pub clock: bool,
    /// `state`: the plugin's key-value store in each namespace.
    pub state: bool,
    /// `state:global`: that store is kept in Redis (`--redis`), shared by every replica.
    pub global_state: bool,
    /// `outbound:<host>`: HTTP calls to these hosts (lowercase, as written).
    pub outbound: Vec<String>,
}

/// Where a WasmPlugin runs, from its `match` list (Istio's traffic selectors: the plugin
/// runs where any entry matches, and everywhere without one). wasmgate is a gateway, which
/// Istio counts as a CLIENT workload, so an entry with `mode: SERVER` never matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PluginMatch {
    /// No `match`, or an entry that matches every port.
    #[default]
    Everywhere,
    /// Only on these listener ports.
    Ports(Vec<u16>),
    /// Every entry selects `mode: SERVER`: the plugin runs on no listener.
    Nowhere,
}

impl PluginMatch {
    /// Does the plugin run on listener port `port`?
    pub fn covers(&self, port: u16) -> bool {
        match self {
            PluginMatch::Everywhere => true,
            PluginMatch::Ports(ports) => ports.contains(&port),
            PluginMatch::Nowhere => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// No scheme: a file name in the `--plugins` directory.
    Named(String),
    /// `file://` URL: a path on this machine.
    File(PathBuf),
    /// `http://` or `https://`: downloaded at load, and checked against the `sha256`
    /// that must come with it (`oci://` is refused by validation).
    Remote(String),
    /// `builtin://<name>`: a first-party component embedded in the binary.
    Builtin(String),
}

/// Where a plugin runs in the filter chain; plugins run in this order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Authn,
    Authz,
    Stats,
    /// Istio's `UNSPECIFIED_PHASE` (the default): after the others, before the router.
    #[default]
    Unspecified,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum FailStrategy {
    /// Istio's default: a failing plugin fails the request.
    #[default]
    FailClose,
    FailOpen,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetRef {
    pub group: String,
    pub kind: String,
    /// The plugin's namespace when absent.
    pub namespace: String,
    pub name: String,
}

/// A Kubernetes `Ingress` as written (the translation into a Gateway and
/// VirtualServices happens when every document is loaded; see `crate::ingress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress {
    pub meta: Meta,
    /// `spec.ingressClassName`, else the `kubernetes.io/ingress.class` annotation.
    pub class: Option<String>,
    pub spec: raw::IngressSpec,
}

/// A Kubernetes `IngressClass`: Ingresses naming it are Istio's when its controller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressClass {
    pub meta: Meta,
    pub controller: String,
}

/// A validated `RequestAuthentication`: where it applies and its JWT rules, as written
/// (the runtime resolves each rule's `jwksUri` into `jwks`).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuthentication {
    pub meta: Meta,
    pub scope: PolicyScope,
    pub jwt_rules: Vec<raw::JwtRule>,
    /// Each rule's `timeout` for fetching its `jwksUri` (Istio's default: 5 s).
    pub fetch_timeouts: Vec<Duration>,
}

/// A validated `AuthorizationPolicy`. `rules` are as written, except that
/// `serviceAccounts` and `trustDomains` are folded into `principals` patterns (which is
/// what Istio matches them against), so the component knows one field.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationPolicy {
    pub meta: Meta,
    pub scope: PolicyScope,
    pub action: AuthorizationAction,
    /// `None`: no `rules` (matches nothing); `Some([{}])` matches every request.
    pub rules: Option<Vec<raw::Rule>>,
}

/// What an AuthorizationPolicy does when it matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthorizationAction {
    #[default]
    Allow,
    Deny,
    Audit,
    /// Delegates to an external authorizer; wasmgate warns and enforces nothing for it.
    Custom,
}

impl AuthorizationAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizationAction::Allow => "ALLOW",
            AuthorizationAction::Deny => "DENY",
            AuthorizationAction::Audit => "AUDIT",
            AuthorizationAction::Custom => "CUSTOM",
        }
    }
}

/// A validated `Telemetry`: what it applies to and what it sets. Each part is `None` (or
/// empty) where the resource leaves it to the levels above; entries for `SERVER` mode,
/// which never applies to a gateway, are left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub meta: Meta,
    pub scope: PolicyScope,
    /// `tracing[]`, its entries merged in order (later fields win).
    pub tracing: Option<TracingOverride>,
    /// Istio metrics the `metrics[].overrides` turn off (`true`) or back on (`false`),
    /// after every override in order; `ALL_METRICS` sets each metric.
    pub metrics: BTreeMap<IstioMetric, bool>,
    /// `accessLogging[].disabled`: the last entry that sets it.
    pub access_logging: Option<bool>,
    pub spec: raw::TelemetrySpec,
}

/// Which workloads a policy resource (Telemetry, RequestAuthentication,
/// AuthorizationPolicy) selects; wasmgate is one workload, serving every Gateway (see
/// [`crate::telemetry`] and the runtime's binding for how each scope applies to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyScope {
    /// Neither `selector` (with labels) nor `targetRefs`: namespace-wide, mesh-wide from
    /// `istio-system`.
    Namespace,
    /// `selector.matchLabels`.
    Selector(BTreeMap<String, String>),
    /// `targetRef(s)` wasmgate can bind (networking.istio.io Gateways); kinds it cannot
    /// (Gateway API, Service, ServiceEntry) are left out, so this may be empty: such a
    /// Telemetry applies to nothing.
    Targets(Vec<TargetRef>),
}

/// Tracing settings of one Telemetry, or merged: `None` leaves the field to the level
/// above (in the end, to `--trace-sampling` and wasmgate's defaults).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TracingOverride {
    /// `randomSamplingPercentage`, 0 to 100.
    pub sampling: Option<f64>,
    pub disable_span_reporting: Option<bool>,
    /// `customTags`, by name. When present they replace the tags of the levels above
    /// (Istio's rule); present and empty removes them.
    pub custom_tags: Option<Vec<(String, CustomTag)>>,
}

impl TracingOverride {
    /// Whether any field is set.
    pub fn is_empty(&self) -> bool {
        self.sampling.is_none()
            && self.disable_span_reporting.is_none()
            && self.custom_tags.is_none()
    }

    /// `other`'s fields where it sets them, else this one's.
    pub fn overlay(&mut self, other: &TracingOverride) {
        if other.sampling.is_some() {
            self.sampling = other.sampling;
        }
        if other.disable_span_reporting.is_some() {
            self.disable_span_reporting = other.disable_span_reporting;
        }
        if other.custom_tags.is_some() {
            self.custom_tags.clone_from(&other.custom_tags);
        }
    }
}

/// Where a custom span tag's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomTag {
    /// `literal.value`.
    Literal(String),
    /// `header.name` of the request, else `header.defaultValue`.
    Header {
        name: String,
        default: Option<String>,
    },
    /// `environment.name` of the gateway's process, else `environment.defaultValue`.
    Environment {
        name: String,
        default: Option<String>,
    },
}

/// Istio's standard metrics (`MetricSelector.IstioMetric` but `ALL_METRICS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IstioMetric {
    RequestCount,
    RequestDuration,
    RequestSize,
    ResponseSize,
    TcpOpenedConnections,
    TcpClosedConnections,
    TcpSentBytes,
    TcpReceivedBytes,
    GrpcRequestMessages,
    GrpcResponseMessages,
}

impl IstioMetric {
    /// Every metric: what `ALL_METRICS` (or an override without `metric`) means.
    pub const ALL: [IstioMetric; 10] = [
        IstioMetric::RequestCount,
        IstioMetric::RequestDuration,
        IstioMetric::RequestSize,
        IstioMetric::ResponseSize,
        IstioMetric::TcpOpenedConnections,
        IstioMetric::TcpClosedConnections,
        IstioMetric::TcpSentBytes,
        IstioMetric::TcpReceivedBytes,
        IstioMetric::GrpcRequestMessages,
        IstioMetric::GrpcResponseMessages,
    ];

    /// The name in a Telemetry (`REQUEST_COUNT`).
    pub fn as_str(self) -> &'static str {
        match self {
            IstioMetric::RequestCount => "REQUEST_COUNT",
            IstioMetric::RequestDuration => "REQUEST_DURATION",
            IstioMetric::RequestSize => "REQUEST_SIZE",
            IstioMetric::ResponseSize => "RESPONSE_SIZE",
            IstioMetric::TcpOpenedConnections => "TCP_OPENED_CONNECTIONS",
            IstioMetric::TcpClosedConnections => "TCP_CLOSED_CONNECTIONS",
            IstioMetric::TcpSentBytes => "TCP_SENT_BYTES",
            IstioMetric::TcpReceivedBytes => "TCP_RECEIVED_BYTES",
            IstioMetric::GrpcRequestMessages => "GRPC_REQUEST_MESSAGES",
            IstioMetric::GrpcResponseMessages => "GRPC_RESPONSE_MESSAGES",
        }
    }

    /// The name Istio's Prometheus provider exports it as.
    pub fn prometheus_name(self) -> &'static str {
        match self {
            IstioMetric::RequestCount => "istio_requests_total",
            IstioMetric::RequestDuration => "istio_request_duration_milliseconds",
            IstioMetric::RequestSize => "istio_request_bytes",
            IstioMetric::ResponseSize => "istio_response_bytes",
            IstioMetric::TcpOpenedConnections => "istio_tcp_connections_opened_total",
            IstioMetric::TcpClosedConnections => "istio_tcp_connections_closed_total",
            IstioMetric::TcpSentBytes => "istio_tcp_sent_bytes_total",
            IstioMetric::TcpReceivedBytes => "istio_tcp_received_bytes_total",
            IstioMetric::GrpcRequestMessages => "istio_request_messages_total",
            IstioMetric::GrpcResponseMessages => "istio_response_messages_total",
        }
    }
}

/// What the Telemetries that apply to wasmgate add up to ([`crate::telemetry`]): one set
/// of settings for the whole process, rebuilt at every load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetrySettings {
    /// The Telemetries merged, most general first.
    pub applied: Vec<ResourceId>,
    /// `None` fields: `--trace-sampling` and wasmgate's defaults.
    pub tracing: TracingOverride,
    /// Metrics neither recorded nor rendered.
    pub disabled_metrics: BTreeSet<IstioMetric>,
    /// No access lines (`accessLogging[].disabled: true`).
    pub access_log_disabled: bool,
}

/// Everything loaded: each kind in load order, and the warnings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub gateways: Vec<Gateway>,
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    pub service_entries: Vec<ServiceEntry>,
    pub wasm_plugins: Vec<WasmPlugin>,
    /// Every Secret loaded, referenced or not.
    pub secrets: Vec<Secret>,
    /// Ingresses Istio serves, as written; their Gateways and VirtualServices are in
    /// `gateways` and `virtual_services` (named `...-istio-autogenerated-k8s-ingress`).
    pub ingresses: Vec<Ingress>,
    pub ingress_classes: Vec<IngressClass>,
    pub telemetries: Vec<Telemetry>,
    pub request_authentications: Vec<RequestAuthentication>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    /// The Telemetries that apply, merged ([`crate::telemetry::settings`]).
    pub telemetry: TelemetrySettings,
    pub warnings: Vec<crate::ConfigWarning>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        assert_eq!(LoadBalancer::default(), LoadBalancer::RoundRobin);
        assert_eq!(Resolution::default(), Resolution::None);
        assert_eq!(Location::default(), Location::MeshExternal);
        assert_eq!(Phase::default(), Phase::Unspecified);
        assert_eq!(FailStrategy::default(), FailStrategy::FailClose);
    }

    #[test]
    fn phases_order_like_the_filter_chain() {
        let mut p = vec![Phase::Unspecified, Phase::Stats, Phase::Authn, Phase::Authz];
        p.sort();
        assert_eq!(
            p,
            vec![Phase::Authn, Phase::Authz, Phase::Stats, Phase::Unspecified]
        );
    }

    fn load(lines: &[&str]) -> Config {
        let yaml = lines.join("\n");
        match crate::load_sources(&[(PathBuf::from("t.yaml"), yaml)]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn virtual_service_defaults() {
        let c = load(&[
            "apiVersion: networking.istio.io/v1",
            "kind: VirtualService",
            "metadata: {name: r, namespace: prod}",
            "spec:",
            "  hosts: [Reviews, web.example.com]",
            "  http: [{route: [{destination: {host: reviews}}]}]",
        ]);
        let vs = &c.virtual_services[0];
        assert!(vs.binds_mesh);
        assert!(vs.gateways.is_empty());
        assert_eq!(
            vs.hosts,
            vec!["reviews.prod.svc.cluster.local", "web.example.com"]
        );
        assert_eq!(vs.meta.id.namespace, "prod");
        let named = load(&[
            "apiVersion: networking.istio.io/v1",
            "kind: VirtualService",
            "metadata: {name: r}",
            "spec:",
            "  hosts: [web.example.com]",
            "  gateways: [gw, edge/gw2]",
            "  http: [{route: [{destination: {host: web}}]}]",
        ]);
        let vs = &named.virtual_services[0];
        assert!(!vs.binds_mesh);
        let gw = |ns: &str, name: &str| GatewayRef {
            namespace: ns.into(),
            name: name.into(),
        };
        assert_eq!(vs.gateways, vec![gw("default", "gw"), gw("edge", "gw2")]);
    }

    #[test]
    fn destination_rule_defaults() {
        let c = load(&[
            "apiVersion: networking.istio.io/v1",
            "kind: DestinationRule",
            "metadata: {name: a}",
            "spec:",
            "  host: a",
            "  subsets: [{name: v1}]",
            "---",
            "apiVersion: networking.istio.io/v1",
            "kind: DestinationRule",
            "metadata: {name: b}",
            "spec:",
            "  host: b.example.com",
            "  trafficPolicy: {loadBalancer: {simple: RANDOM}}",
            "  subsets:",
            "  - {name: v1}",
            "  - {name: v2, trafficPolicy: {loadBalancer: {simple: LEAST_CONN}}}",
        ]);
        let a = &c.destination_rules[0];
        assert_eq!(a.host, "a.default.svc.cluster.local");
        assert_eq!(a.load_balancer, LoadBalancer::RoundRobin);
        assert_eq!(a.subsets[0].load_balancer, LoadBalancer::RoundRobin);
        let b = &c.destination_rules[1];
        assert_eq!(b.load_balancer, LoadBalancer::Random);
        assert_eq!(
            b.subsets[0].load_balancer,
            LoadBalancer::Random,
            "inherited"
        );
        assert_eq!(
            b.subsets[1].load_balancer,
            LoadBalancer::LeastRequest,
            "own"
        );
    }

    #[test]
    fn zone_aware_balancing_warns_naming_its_field() {
        let c = load(&[
            "apiVersion: networking.istio.io/v1",
            "kind: DestinationRule",
            "metadata: {name: z, namespace: ns}",
            "spec:",
            "  host: a",
            "  trafficPolicy:",
            "    loadBalancer: {zoneAwareLbSetting: {enabled: true}}",
        ]);
        let lines: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            lines.iter().any(|w| w.contains("t.yaml")
                && w.contains("DestinationRule ns/z")
                && w.contains("spec.trafficPolicy.loadBalancer.zoneAwareLbSetting")
                && w.contains("not applied")),
            "{lines:#?}"
        );
    }

    #[test]
    fn traffic_policy_fields_not_carried_out_warn() {
        let c = load(&[
            "apiVersion: networking.istio.io/v1",
            "kind: DestinationRule",
            "metadata: {name: a}",
            "spec:",
            "  host: a",
            "  trafficPolicy:",
            "    connectionPool:",
            "      tcp: {maxConnections: 1, connectTimeout: 1s, maxConnectionDuration: 1h}",
            "      http: {maxRequestsPerConnection: 5, http2MaxRequests: 3}",
            "    loadBalancer:",
            "      consistentHash: {httpHeaderName: x-user}",
            "      localityLbSetting: {enabled: true, failoverPriority: [x-label]}",
            "      warmupDurationSecs: 30s",
            "    outlierDetection: {consecutive5xxErrors: 2}",
        ]);
        let fields: Vec<String> = c
            .warnings
            .iter()
            .map(|w| w.to_string())
            .filter(|w| w.contains("not applied"))
            .collect();
        assert_eq!(fields.len(), 1, "{fields:#?}");
        assert!(
            fields
                .iter()
                .any(|w| w.contains("loadBalancer") && w.contains("warmup applies to ROUND_ROBIN")),
            "slow start does not apply to a consistent hash: {fields:#?}"
        );
        assert!(
            !c.warnings
                .iter()
                .any(|w| w.to_string().contains("consistentHash")),
            "consistent hashing is carried out"
        );
        for applied in [
            "localityLbSetting:",
            "failoverPriority",
            "maxConnectionDuration",
            "maxRequestsPerConnection",
        ] {
            assert!(
                !fields.iter().any(|w| w.contains(applied)),
                "{applied} is carried out: {fields:#?}"
            );
        }
    }

    #[test]
    fn client_tls_precedence() {
        let c = load(&[
            "apiVersion: networking.istio.io/v1",
            "kind: DestinationRule",
            "metadata: {name: api}",
            "spec:",
            "  host: api.example.com",
            "  trafficPolicy:",
            "    tls: {mode: SIMPLE, sni: rule}",
            "    portLevelSettings:",
            "    - {port: {number: 8443}, tls: {mode: SIMPLE, sni: rule-port}}",
            "    - {port: {number: 9443}, loadBalancer: {simple: RANDOM}}",
            "    - {port: {number: 9443}, tls: {mode: SIMPLE, sni: ignored}}",
            "  subsets:",
            "  - name: v1",
            "    trafficPolicy:",
            "      tls: {mode: SIMPLE, sni: subset}",
            "      portLevelSettings:",
            "      - {port: {number: 8443}, tls: {mode: DISABLE}}",
            "  - name: v2",
            "    trafficPolicy:",
            "      portLevelSettings:",
            "      - {port: {number: 7443}, tls: {mode: SIMPLE, sni: subset-port}}",
            "  - name: v3",
        ]);
        let dr = &c.destination_rules[0];
        let sni = |port: u16, subset: Option<&str>| {
            dr.client_tls(port, subset).map(|t| match &t.sni {
                Some(s) => s.clone(),
                None => format!("{:?}", t.mode),
            })
        };
        let s = |v: &str| Some(v.to_string());
        assert_eq!(sni(443, None), s("rule"));
        assert_eq!(sni(8443, None), s("rule-port"));
        // The first entry for 9443 has no tls: as in Istio, a port-level entry replaces
        // the rule's settings whole, so traffic to 9443 is plain text.
        assert_eq!(sni(9443, None), None);
        assert_eq!(sni(443, Some("v1")), s("subset"));
        assert_eq!(sni(8443, Some("v1")), s("Disable"));
        assert_eq!(sni(7443, Some("v2")), s("subset-port"));
        assert_eq!(sni(8443, Some("v2")), s("rule-port"));
        assert_eq!(sni(443, Some("v2")), s("rule"));
        assert_eq!(sni(443, Some("v3")), s("rule"));
        assert_eq!(sni(443, Some("nope")), s("rule"));
        assert_eq!(dr.port_tls.keys().copied().collect::<Vec<_>>(), vec![8443]);
        let plain = load(&[
            "apiVersion: networking.istio.io/v1",
            "kind: DestinationRule",
            "metadata: {name: api}",
            "spec: {host: api.example.com}",
        ]);
        assert_eq!(plain.destination_rules[0].client_tls(443, None), None);
    }

    #[test]
    fn service_entry_defaults() {
        let c = load(&[
            "apiVersion: networking.istio.io/v1",
            "kind: ServiceEntry",
            "metadata: {name: s, namespace: shop}",
            "spec:",
            "  hosts: [payments]",
            "  ports: [{number: 80, name: http}]",
            "  resolution: STATIC",
            "  endpoints: [{address: 10.0.0.1}]",
        ]);
        let se = &c.service_entries[0];
        assert_eq!(se.hosts, vec!["payments.shop.svc.cluster.local"]);
        assert_eq!(se.location, Location::MeshExternal);
        assert_eq!(se.resolution, Resolution::Static);
        assert_eq!(se.endpoints[0].weight, 1);
        assert_eq!(se.ports[0].target_port, None);
        assert_eq!(se.ports[0].protocol, "");
        let none = load(&[
            "apiVersion: networking.istio.io/v1",
            "kind: ServiceEntry",
            "metadata: {name: s}",
            "spec:",
            "  hosts: [x.example.com]",
        ]);
        assert_eq!(none.service_entries[0].resolution, Resolution::None);
    }

    #[test]
    fn wasm_plugin_defaults() {
        let c = load(&[
            "apiVersion: extensions.istio.io/v1alpha1",
            "kind: WasmPlugin",
            "metadata: {name: p}",
            "spec:",
            "  url: auth.wasm",
        ]);
        let p = &c.wasm_plugins[0];
        assert_eq!(p.source, PluginSource::Named("auth.wasm".into()));
        assert_eq!(p.phase, Phase::Unspecified);
        assert_eq!(p.priority, 0);
        assert_eq!(p.fail_strategy, FailStrategy::FailClose);
        assert_eq!(p.plugin_config, serde_json::Value::Null);
        assert!(p.targets.is_empty() && p.selector.is_empty());
        assert_eq!(p.traffic, PluginMatch::Everywhere);
        assert_eq!(p.sha256, None);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let t = load(&[
            "apiVersion: extensions.istio.io/v1alpha1",
            "kind: WasmPlugin",
            "metadata: {name: p, namespace: shop}",
            "spec:",
            "  url: file:///x.wasm",
            "  targetRef: {group: networking.istio.io, kind: VirtualService, name: web}",
        ]);
        let p = &t.wasm_plugins[0];
        assert_eq!(p.source, PluginSource::File("/x.wasm".into()));
        assert_eq!(p.targets[0].namespace, "shop");
        // The VirtualService it names is not loaded.
        assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    }

    #[test]
    fn gateway_defaults() {
        let c = load(&[
            "apiVersion: networking.istio.io/v1",
            "kind: Gateway",
            "metadata: {name: g, namespace: edge}",
            "spec:",
            "  servers:",
            "  - port: {number: 80, name: http, protocol: http}",
            "    hosts: [a.example.com, ./b.example.com, \"*/c.example.com\", shop/d.example.com]",
        ]);
        let s = &c.gateways[0].servers[0];
        assert_eq!(s.protocol, Protocol::Http);
        assert_eq!((s.index, s.port), (0, 80));
        assert_eq!(s.name, None);
        assert_eq!(s.bind, None);
        assert_eq!(s.tls, None);
        assert!(!s.https_redirect);
        let ns: Vec<_> = s.hosts.iter().map(|h| h.namespace.clone()).collect();
        assert_eq!(
            ns,
            vec![
                NamespaceSelector::Any,
                NamespaceSelector::Named("edge".into()),
                NamespaceSelector::Any,
                NamespaceSelector::Named("shop".into()),
            ]
        );
    }

    #[test]
    fn http_protocols() {
        assert!(Protocol::Http.is_http());
        assert!(Protocol::GrpcWeb.is_http());
        assert!(!Protocol::Https.is_http());
        assert!(Protocol::Https.is_tls());
        assert!(!Protocol::Tcp.is_http());
    }
}
