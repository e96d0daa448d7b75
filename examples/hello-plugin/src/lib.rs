//! A complete wasmgate plugin: it greets every forwarded response with a header, and
//! turns away requests that carry a header its config names.
//!
//! ```yaml
//! pluginConfig:
//!   greeting: hello from my plugin      # value of the `x-greeting` response header
//!   denyHeader: X-Block-Me              # requests carrying it get 403 (any case)
//! ```

use serde::Deserialize;
use wasmgate_plugin_sdk::{
    Binding, ConfigError, Decision, Header, Interest, PluginError, Policy, RequestHead,
    export_policy, parse_config,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    greeting: String,
    #[serde(default)]
    deny_header: Option<String>,
}

#[derive(Debug)]
pub struct Hello {
    config: Config,
}

impl Policy for Hello {
    // Called once per VirtualService this plugin is bound to. A bad pluginConfig stops
    // the config from loading, with this message.
    fn prepare(_binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        let config: Config = parse_config(config)?;
        if config.greeting.is_empty() {
            return Err(ConfigError {
                field: "greeting".into(),
                message: "must not be empty".into(),
            });
        }
        Ok(Hello { config })
    }

    // Only the headers named here are copied into the request the plugin sees (the
    // gateway lowercases the names; `RequestHead::header` ignores case).
    fn interest(&self) -> Interest {
        Interest::headers(self.config.deny_header.iter().cloned())
    }

    // Called per request with the decision so far (the router's, after faults and
    // traffic split). Return Ok(None) to leave it as it is.
    fn on_request(
        &self,
        request: &RequestHead,
        mut current: Decision,
    ) -> Result<Option<Decision>, PluginError> {
        if let Some(name) = &self.config.deny_header
            && request.header(name).is_some()
        {
            return Ok(Some(
                current.with_action(Decision::respond(403, "blocked\n")),
            ));
        }
        let Some(forward) = current.forward_mut() else {
            return Ok(None);
        };
        forward
            .response_headers_mut()
            .set
            .push(Header::new("x-greeting", &self.config.greeting));
        Ok(Some(current))
    }
}

export_policy!(Hello);

// Plugins are plain Rust: these tests run natively with `cargo test`.
#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_plugin_sdk::testing::{decide, prepare, request};
    use wasmgate_plugin_sdk::{Action, Destination, Forward};

    fn forwarded() -> Decision {
        Decision::no_route()
            .with_action(Action::Forward(Forward::to(vec![Destination::new("app")])))
    }

    #[test]
    fn greets_forwarded_responses() {
        let p: Hello = prepare(r#"{"greeting": "hi"}"#);
        let d = decide(&p, &request("GET", "/").build(), forwarded());
        let Action::Forward(f) = d.action else {
            panic!("not forwarded")
        };
        let headers = f.response_headers.expect("response headers");
        assert_eq!(headers.set, vec![Header::new("x-greeting", "hi")]);
    }

    #[test]
    fn blocks_the_named_header_in_any_case() {
        for configured in ["x-block-me", "X-Block-Me"] {
            let p: Hello = prepare(&format!(
                r#"{{"greeting": "hi", "denyHeader": "{configured}"}}"#
            ));
            for sent in ["x-block-me", "X-BLOCK-ME"] {
                let req = request("GET", "/").header(sent, "1").build();
                let d = decide(&p, &req, forwarded());
                assert!(
                    matches!(d.action, Action::Respond(r) if r.status == 403),
                    "{configured} / {sent}"
                );
            }
        }
    }

    #[test]
    fn sees_no_other_header() {
        // `decide` passes only the headers the plugin asked for, as the gateway does:
        // without `denyHeader` the plugin sees none, so nothing is blocked.
        let p: Hello = prepare(r#"{"greeting": "hi"}"#);
        let req = request("GET", "/").header("x-block-me", "1").build();
        assert!(matches!(
            decide(&p, &req, forwarded()).action,
            Action::Forward(_)
        ));
    }

    #[test]
    fn rejects_an_empty_greeting() {
        let e = Hello::prepare(
            &wasmgate_plugin_sdk::testing::binding(),
            r#"{"greeting": ""}"#,
        );
        assert_eq!(e.expect_err("accepted").field, "greeting");
    }

    #[test]
    fn a_bad_config_names_the_field() {
        let e = Hello::prepare(
            &wasmgate_plugin_sdk::testing::binding(),
            r#"{"greeting": "hi", "denyHeader": 7}"#,
        );
        let e = e.expect_err("accepted");
        assert_eq!(e.field, "denyHeader");
        assert_eq!(e.message, "invalid type: integer `7`, expected a string");
    }
}
