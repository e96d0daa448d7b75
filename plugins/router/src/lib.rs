//! Placeholder while the policy is written.
use wasmgate_plugin_sdk::{Binding, ConfigError, Decision, Policy, PluginError, RequestHead, export_policy};
#[derive(Debug)]
pub struct Stub;
impl Policy for Stub {
    fn prepare(_: &Binding, _: &str) -> Result<Self, ConfigError> { Ok(Stub) }
    fn on_request(&self, _: &RequestHead, _: Decision) -> Result<Option<Decision>, PluginError> { Ok(None) }
}
export_policy!(Stub);
