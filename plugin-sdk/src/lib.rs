//! The crate a wasmgate plugin author depends on: the `wasmgate:policy@0.3.0` types, a
//! [`Policy`] trait to implement, the [`export_policy!`] macro that turns it into a Wasm
//! component export, the host functions (log, random, time), [`metrics`] the plugin
//! defines and updates, the capabilities an operator may grant ([`clock`], [`state`],
//! [`outbound`]), and [`testing`] helpers so a policy can be unit-tested natively with
//! `cargo test`, no Wasm runtime involved.
//!
//! ```rust,test_harness
//! use wasmgate_plugin_sdk::{export_policy, Binding, ConfigError, Edit, Policy,
//!     PluginError, Request};
//!
//! pub struct Hello;
//! impl Policy for Hello {
//!     fn prepare(_: &Binding, _config: &str) -> Result<Self, ConfigError> { Ok(Hello) }
//!     fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
//!         let mut edit = Edit::default();
//!         if request.header("x-hello").is_some() {
//!             edit.set_response_header("x-hello", "world");
//!         }
//!         Ok(edit)
//!     }
//! }
//! export_policy!(Hello);
//! ```

extern crate self as wasmgate_plugin_sdk;

pub mod clock;
mod decision;
mod edit;
pub mod host;
pub mod metrics;
pub mod outbound;
mod request;
pub mod state;
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

/// The plugin guide, `docs/plugins.md`: rustdoc compiles each of its Rust snippets as a
/// doctest of this crate (`rust,test_harness` ones as a crate of their own, whose
/// `#[test]`s run), so the guide cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../docs/plugins.md")]
pub struct PluginGuide;

/// The generated `destination` record (named so to stay clear of `std` names).
pub use __bindings::wasmgate::policy::types::Destination;
pub use __bindings::wasmgate::policy::types::{
    Abort, Action, ActionKind, Binding, ConfigError, Decision, DirectResponse, Edit, Forward,
    Header, HeaderMutation, Interest, LogEntry, Mirror, PluginError, Redirect, ResponseEdit,
    RetryPolicy, RouteRef,
};
pub use edit::PreparedEdit;
pub use request::{Request, Response};
pub use serde;
pub use serde_json;

/// The version of the WIT package this SDK implements.
pub const WIT_VERSION: &str = "0.3.0";

/// A policy plugin: prepared once per binding (plugin x VirtualService), then called per
/// request; with an [`Interest`] also per response and once each request is over.
pub trait Policy: Sized + 'static {
    /// Parse and check the binding's config (`pluginConfig`, as JSON text; `null` when the
    /// WasmPlugin has none). An error rejects the whole configuration at load.
    fn prepare(binding: &Binding, config: &str) -> Result<Self, ConfigError>;

    /// What this policy takes part in beyond [`Policy::on_request`]: the response phase,
    /// the log phase, request and response bodies. Default: nothing more.
    fn interest(&self) -> Interest {
        Interest::default()
    }

    /// Decide for one request. Read what you need from `request` (its head, the decision
    /// so far, properties earlier policies set) and answer with an [`Edit`]; an empty
    /// edit (`Edit::default()`) changes nothing.
    ///
    /// A call that runs past its first slice (a millisecond or two) may be stopped and
    /// made again from the start in a fresh instance (docs/plugins.md, "Quick calls are
    /// direct calls"): what the stopped try did through the host is undone, but its
    /// instance's globals are gone with it, so keep state that must last in [`state`].
    fn on_request(&self, request: &Request) -> Result<Edit, PluginError>;

    /// Change a response before it goes to the client. Called only when
    /// [`Policy::interest`] asks for the response phase.
    fn on_response(
        &self,
        request: &Request,
        response: &Response,
    ) -> Result<ResponseEdit, PluginError> {
        let _ = (request, response);
        Ok(ResponseEdit::default())
    }

    /// The request is over: status, sizes, durations, flags. Called only when
    /// [`Policy::interest`] asks for the log phase, after the response, off the
    /// request's path.
    fn on_log(&self, request: &Request, entry: &LogEntry) {
        let _ = (request, entry);
    }
}

/// Parse a plugin's JSON config into `T`. A WasmPlugin without `pluginConfig` sends
/// `null`, which parses as `{}` here, so a struct with `#[serde(default)]` accepts it.
///
/// An error names the field it is about: [`ConfigError::field`] is its path inside
/// `pluginConfig` (`rules[2].header`, empty for the whole), and the message is serde's,
/// without a position in the JSON text (the author wrote YAML; the path says where). The
/// gateway reports it as `WasmPlugin ns/name: spec.pluginConfig.rules[2].header: invalid
/// type: integer `7`, expected a string`.
pub fn parse_config<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let trimmed = text.trim();
    let text = if trimmed.is_empty() || trimmed == "null" {
        "{}"
    } else {
        text
    };
    let mut json = serde_json::Deserializer::from_str(text);
    let parsed = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let field = e.path().to_string();
        ConfigError {
            // The root displays as ".".
            field: if field == "." { String::new() } else { field },
            message: without_position(e.inner()),
        }
    })?;
    // Trailing text after the value, as `serde_json::from_str` refuses it.
    json.end().map_err(|e| ConfigError {
        field: String::new(),
        message: without_position(&e),
    })?;
    Ok(parsed)
}

/// serde_json's message without its ` at line L column C`.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&position) {
        Some(message) => message.to_string(),
        None => text,
    }
}

#[doc(hidden)]
pub mod __export {
    use super::__bindings::exports::wasmgate::policy::policy::{GuestPrepared, Prepared};
    use super::__bindings::wasmgate::policy::types as wit;
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

        fn on_request(&self, request: &wit::Request) -> Result<Edit, PluginError> {
            self.0.on_request(&Request::host(request))
        }

        fn on_response(
            &self,
            request: &wit::Request,
            response: &wit::Response,
        ) -> Result<ResponseEdit, PluginError> {
            self.0
                .on_response(&Request::host(request), &Response::host(response))
        }

        fn on_log(&self, request: &wit::Request, entry: LogEntry) {
            self.0.on_log(&Request::host(request), &entry)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        #[serde(default)]
        rules: Vec<Rule>,
        #[serde(default)]
        limits: std::collections::BTreeMap<String, u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Rule {
        header: String,
    }

    fn error(text: &str) -> (String, String) {
        let e = parse_config::<Config>(text).expect_err("accepted");
        (e.field, e.message)
    }

    #[test]
    fn config_errors_name_the_field_path() {
        let (field, message) =
            error(r#"{"rules": [{"header": "a"}, {"header": "b"}, {"header": 7}]}"#);
        assert_eq!(field, "rules[2].header");
        assert_eq!(message, "invalid type: integer `7`, expected a string");
        let (field, message) = error(r#"{"limits": {"gold": -1}}"#);
        assert_eq!(field, "limits.gold");
        assert_eq!(message, "invalid value: integer `-1`, expected u32");
        let (field, message) = error(r#"{"rules": [{}]}"#);
        assert_eq!(field, "rules[0]");
        assert_eq!(message, "missing field `header`");
    }

    #[test]
    fn an_unknown_field_is_named_as_the_path() {
        // As wasmgate's own config errors: `spec.http[0].route[0].wieght: unknown field`.
        let (field, message) = error(r#"{"rules": [{"header": "a", "hedaer": "b"}]}"#);
        assert_eq!(field, "rules[0].hedaer");
        assert!(message.starts_with("unknown field `hedaer`"), "{message}");
    }

    #[test]
    fn errors_about_the_whole_config_have_no_field() {
        let (field, message) = error(r#""text""#);
        assert_eq!(field, "");
        assert_eq!(
            message,
            "invalid type: string \"text\", expected struct Config"
        );
        let (field, message) = error("{} x");
        assert_eq!(field, "");
        assert_eq!(message, "trailing characters");
    }

    /// Every fenced block of the guide is Rust that [`PluginGuide`] compiles, or says
    /// which other language it is: rustdoc takes an untagged block for Rust, and an
    /// `ignore`d or `no_run` one would let the guide drift.
    #[test]
    fn every_rust_snippet_of_the_guide_is_compiled() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/plugins.md");
        let guide = std::fs::read_to_string(path).expect("docs/plugins.md");
        let mut rust = 0;
        let mut open = false;
        for line in guide.lines() {
            let Some(info) = line.trim_start().strip_prefix("```") else {
                continue;
            };
            if open {
                open = false;
                continue;
            }
            open = true;
            let mut attrs = info.split(',').map(str::trim);
            match attrs.next().unwrap_or_default() {
                "" => panic!("an untagged block: say its language ({line})"),
                "rust" => {
                    rust += 1;
                    for attr in attrs {
                        assert!(
                            matches!(attr, "test_harness" | "should_panic" | "edition2024"),
                            "`{attr}` keeps a snippet from being compiled or run ({line})"
                        );
                    }
                }
                _ => {}
            }
        }
        assert!(!open, "an unclosed block");
        assert!(rust >= 2, "{rust} Rust snippets");
    }

    #[test]
    fn null_and_empty_parse_as_an_empty_object() {
        for text in ["null", "", "  null\n"] {
            let config: Config = parse_config(text).expect("empty config");
            assert!(config.rules.is_empty());
        }
    }
}
