//! Test plugin that fails on purpose, chosen by request path: `/panic` traps, `/loop`
//! spins until the host's deadline, `/alloc` grows memory until the host's limit,
//! `/error` returns a plugin error; any other path passes. `{"failPrepare": true}` makes
//! its config invalid. Tests use it to prove one bad request never harms the next.

use serde::Deserialize;
use wasmgate_plugin_sdk::{
    Binding, ConfigError, Edit, PluginError, Policy, Request, export_policy, parse_config,
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

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        match request.path() {
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
            _ => Ok(Edit::keep()),
        }
    }
}

export_policy!(Misbehave);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_plugin_sdk::testing::{binding, decide, prepare, request, try_decide};

    #[test]
    fn errors_on_error_and_passes_the_rest() {
        let p: Misbehave = prepare("null");
        let e = try_decide(&p, &request("GET", "/error").build()).expect_err("no error");
        assert_eq!(e.message, "misbehave: asked to fail");
        assert!(decide(&p, &request("GET", "/fine").build()).is_empty());
        let e = Misbehave::prepare(&binding(), r#"{"failPrepare": true}"#).expect_err("prepared");
        assert_eq!(e.field, "failPrepare");
    }

    #[test]
    #[should_panic(expected = "misbehave: asked to panic")]
    fn panics_on_panic() {
        let p: Misbehave = prepare("null");
        decide(&p, &request("GET", "/panic").build());
    }
}
