//! wasmgate's configuration: Istio networking resources (Gateway, VirtualService,
//! DestinationRule, ServiceEntry, WasmPlugin) read from YAML files, validated with Istio's
//! rules and turned into a resolved model. Three stages: [`raw`] mirrors the YAML,
//! validation applies Istio's checks (errors name the file, line, resource and field), and
//! [`model`] is what the runtime builds its snapshot from. The crate knows nothing of
//! sockets or Wasm; the router plugin (built for wasm32) depends on it for the raw types.

mod duration;
mod error;
pub mod host;
mod load;
pub mod model;
pub mod raw;
mod validate;
mod yaml;

pub use duration::parse_duration;
pub use error::{ConfigError, ConfigWarning, Errors, Kind, ResourceId};
pub use host::expand_host;
pub use load::{load, load_sources, validate_document};
pub use model::{
    Config, DestinationRule, Endpoint, FailStrategy, Gateway, GatewayHost, GatewayRef,
    LoadBalancer, Location, Meta, NamespaceSelector, Phase, PluginSource, Protocol, Resolution,
    Server, ServiceEntry, ServicePort, Subset, TargetRef, VirtualService, WasmPlugin,
};
pub use validate::virtual_service::grpc_status_code;
pub use yaml::{YamlDocument, split_documents};
