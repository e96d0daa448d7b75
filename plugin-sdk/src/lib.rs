//! The crate a wasmgate plugin author depends on: the `wasmgate:policy@0.2.1` types, a
//! [`Policy`] trait to implement, the [`export_policy!`] macro that turns it into a Wasm
//! component export, the host functions (log, random, time), [`metrics`] the plugin
//! defines and updates, and [`testing`] helpers so a policy can be unit-tested natively
//! with `cargo test`, no Wasm runtime involved.
//!
//! ```ignore
//! use wasmgate_plugin_sdk::{export_policy, Binding, ConfigError, Decision, Policy,
//!     PluginError, RequestHead};
//!
//! struct Hello;
//! impl Policy for Hello {
//!     fn prepare(_: &Binding, _config: &str) -> Result<Self, ConfigError> { Ok(Hello) }
//!     fn on_request(&self, _: &RequestHead, current: Decision)
//!         -> Result<Option<Decision>, PluginError> { Ok(None) }
//! }
//! export_policy!(Hello);
//! ```

extern crate self as wasmgate_plugin_sdk;

mod decision;
pub mod host;
pub mod metrics;
pub mod testing;

#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__wasmgate_export",
        default_bindings_module: "wasmgate_plugin_sdk::__bindings",
        additional_derives: [PartialEq],
        // Imports borrow their arguments: label values go to the host as `&[&str]`,
        // without a `String` made per value.
        ownership: Borrowing { duplicate_if_necessary: false },
        runtime_path: "wasmgate_plugin_sdk::__wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// The generated `destination` record (named so to stay clear of `std` names).
pub use __bindings::wasmgate::policy::types::Destination;
pub use __bindings::wasmgate::policy::types::{
    Abort, Action, Binding, ConfigError, Decision, DirectResponse, Forward, Header, HeaderInterest,
    HeaderMutation, Interest, Mirror, PluginError, Redirect, RequestHead, RetryPolicy, RouteRef,
};
pub use serde;
pub use serde_json;

/// The version of the WIT package this SDK implements.
pub const WIT_VERSION: &str = "0.2.1";

/// A policy plugin: prepared once per binding (plugin x VirtualService), then asked for a
/// decision per request.
pub trait Policy: Sized + 'static {
    /// Parse and check the binding's config (`pluginConfig`, as JSON text; `null` when the
    /// WasmPlugin has none). An error rejects the whole configuration at load.
    fn prepare(binding: &Binding, config: &str) -> Result<Self, ConfigError>;

    /// Which request headers [`Policy::on_request`] reads. Default: none.
    fn interest(&self) -> Interest {
        Interest {
            headers: HeaderInterest::None,
        }
    }

    /// Decide for one request. `current` is the decision so far; return `Ok(None)` to keep
    /// it unchanged, `Ok(Some(d))` to replace it.
    fn on_request(
        &self,
        request: &RequestHead,
        current: Decision,
    ) -> Result<Option<Decision>, PluginError>;
}

/// Parse a plugin's JSON config into `T`. A WasmPlugin without `pluginConfig` sends
/// `null`, which parses as `{}` here, so a struct with `#[serde(default)]` accepts it.
pub fn parse_config<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let trimmed = text.trim();
    let text = if trimmed.is_empty() || trimmed == "null" {
        "{}"
    } else {
        text
    };
    serde_json::from_str(text).map_err(|e| ConfigError {
        field: String::new(),
        message: e.to_string(),
    })
}

#[doc(hidden)]
pub mod __export {
    use super::__bindings::exports::wasmgate::policy::policy::{GuestPrepared, Prepared};
    use super::*;

    /// Bridges a [`Policy`] to the generated resource trait.
    pub struct Adapter<P: Policy>(P);

    impl<P: Policy> GuestPrepared for Adapter<P> {
        fn prepare(binding: Binding, config: String) -> Result<Prepared, ConfigError> {
            P::prepare(&binding, &config).map(|p| Prepared::new(Adapter(p)))
        }

        fn interest(&self) -> Interest {
            self.0.interest()
        }

        fn on_request(
            &self,
            request: RequestHead,
            current: Decision,
        ) -> Result<Option<Decision>, PluginError> {
            self.0.on_request(&request, current)
        }
    }

    pub use super::__bindings::exports::wasmgate::policy::policy::Guest;
}

/// Export a [`Policy`] implementation as this component's `wasmgate:policy/policy`.
/// Use once per plugin crate.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[doc(hidden)]
        pub struct __WasmgatePolicyExport;
        impl $crate::__export::Guest for __WasmgatePolicyExport {
            type Prepared = $crate::__export::Adapter<$policy>;
        }
        // Native builds (unit tests) get no Wasm export symbols: their names are not
        // valid in a native linker's version script.
        #[cfg(target_arch = "wasm32")]
        $crate::__bindings::__wasmgate_export!(__WasmgatePolicyExport);
    };
}
