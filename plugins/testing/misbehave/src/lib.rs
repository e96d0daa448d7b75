//! Test plugin that fails on purpose, chosen by request path: `/panic` traps, `/loop`
//! spins until the host's deadline, `/alloc` grows memory until the host's limit,
//! `/error` returns a plugin error; any other path passes. `{"failPrepare": true}` makes
//! its config invalid. Tests use it to prove one bad request never harms the next.
//!
//! With `{"arbitrary": true}` it answers with edits made from the bytes (hex) in request
//! header `x-misbehave-edit`, and, in the response phase, `x-misbehave-response-edit`:
//! the decision fuzz target (`fuzz/`) drives the host with any edit the WIT types allow.

mod arbitrary;

use serde::Deserialize;
use wasmgate_plugin_sdk::{
    Binding, ConfigError, Edit, Interest, PluginError, Policy, Request, Response, ResponseEdit,
    export_policy, parse_config,
};

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Config {
    fail_prepare: bool,
    arbitrary: bool,
}

#[derive(Debug)]
pub struct Misbehave {
    arbitrary: bool,
}

impl Policy for Misbehave {
    fn prepare(_binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        let config: Config = parse_config(config)?;
        if config.fail_prepare {
            return Err(ConfigError {
                field: "failPrepare".into(),
                message: "asked to fail".into(),
            });
        }
        Ok(Misbehave {
            arbitrary: config.arbitrary,
        })
    }

    fn interest(&self) -> Interest {
        if self.arbitrary {
            Interest::default().with_response()
        } else {
            Interest::default()
        }
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        if self.arbitrary
            && let Some(hex) = request.header("x-misbehave-edit")
        {
            return Ok(arbitrary::Bytes::new(&arbitrary::unhex(&hex)).edit());
        }
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

    fn on_response(
        &self,
        request: &Request,
        _response: &Response,
    ) -> Result<ResponseEdit, PluginError> {
        Ok(match request.header("x-misbehave-response-edit") {
            Some(hex) => arbitrary::Bytes::new(&arbitrary::unhex(&hex)).response_edit(),
            None => ResponseEdit::default(),
        })
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
    fn arbitrary_bytes_make_edits_and_plain_requests_pass() {
        let p: Misbehave = prepare(r#"{"arbitrary": true}"#);
        assert!(decide(&p, &request("GET", "/fine").build()).is_empty());
        // 0x03 0x01: an action (option set), Respond; status 0x01f4 = 500 little endian.
        let edit = decide(
            &p,
            &request("GET", "/")
                .header("x-misbehave-edit", "00 01 03 f4 01")
                .build(),
        );
        match edit.action {
            Some(wasmgate_plugin_sdk::Action::Respond(r)) => assert_eq!(r.status, 500),
            other => panic!("{other:?}"),
        }
        // Any bytes decode, the empty string too.
        for hex in ["", "ff", "zz", &"ab".repeat(600)] {
            decide(
                &p,
                &request("GET", "/").header("x-misbehave-edit", hex).build(),
            );
        }
    }

    #[test]
    #[should_panic(expected = "misbehave: asked to panic")]
    fn panics_on_panic() {
        let p: Misbehave = prepare("null");
        decide(&p, &request("GET", "/panic").build());
    }
}
