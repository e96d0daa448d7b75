//! Test plugin that fails on purpose, chosen by request path: `/panic` traps, `/loop`
//! spins until the host's deadline, `/alloc` grows memory until the host's limit,
//! `/error` returns a plugin error; any other path passes. `{"failPrepare": true}` makes
//! its config invalid. Tests use it to prove one bad request never harms the next.

use serde::Deserialize;
use wasmgate_plugin_sdk::{
    Binding, ConfigError, Decision, PluginError, Policy, RequestHead, export_policy, parse_config,
};

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Config {
    fail_prepare: bool,
}

#[derive(Debug)]
pub struct Misbehave;

impl Policy for Misbehave {
    fn prepare(_binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        let config: Config = parse_config(config)?;
        if config.fail_prepare {
            return Err(ConfigError {
                field: "failPrepare".into(),
                message: "asked to fail".into(),
            });
        }
        Ok(Misbehave)
    }

    fn on_request(
        &self,
        request: &RequestHead,
        _current: Decision,
    ) -> Result<Option<Decision>, PluginError> {
        match request.path.as_str() {
            "/panic" => panic!("misbehave: asked to panic"),
            "/loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "/alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/error" => Err(PluginError {
                message: "misbehave: asked to fail".into(),
            }),
            _ => Ok(None),
        }
    }
}

export_policy!(Misbehave);
