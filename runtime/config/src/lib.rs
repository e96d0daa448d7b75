//! wasmgate's configuration: Istio networking resources (Gateway, VirtualService,
//! DestinationRule, ServiceEntry, WasmPlugin), Istio's Telemetry and the Kubernetes
//! Secrets their TLS settings name, read from YAML files, validated with Istio's rules and
//! turned into a resolved model ([`telemetry`] merges the Telemetries that apply). Three stages: [`raw`] mirrors the YAML,
//! validation applies Istio's checks (errors name the file, line, resource and field), and
//! [`model`] is what the runtime builds its snapshot from. The crate knows nothing of
//! sockets or Wasm; the router plugin (built for wasm32) depends on it for the raw types.

mod analyze;
mod credentials;
mod duration;
mod error;
pub mod fault;
pub mod host;
pub mod ingress;
mod load;
pub mod model;
pub mod raw;
pub mod telemetry;
mod validate;
mod yaml;

pub use credentials::WorkloadNamespace;
pub use duration::parse_duration;
pub use error::{ConfigError, ConfigWarning, Errors, Kind, ResourceId};
pub use host::expand_host;
pub use load::{
    LoadOptions, load, load_sources, load_sources_with, load_with, load_with_documents,
    validate_document,
};
pub use model::{
    AuthorizationAction, AuthorizationPolicy, ClientTls, ClientTlsMode, Config, CustomTag,
    DestinationRule, Endpoint, FailStrategy, Gateway, GatewayHost, GatewayRef, IstioMetric,
    KeyPair, LoadBalancer, Location, Meta, NamespaceSelector, Pem, Phase, PluginMatch,
    PluginSource, PolicyScope, Protocol, RequestAuthentication, Resolution, Secret, SecretValue,
    Server, ServerTls, ServerTlsMode, ServiceEntry, ServicePort, Subset, TargetRef, Telemetry,
    TelemetrySettings, TracingOverride, VirtualService, WasmPlugin,
};
pub use validate::virtual_service::{gateway_ref, grpc_status_code};
pub use yaml::{YamlDocument, split_documents};
