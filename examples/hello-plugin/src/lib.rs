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
    ActionKind, Binding, ConfigError, Edit, PluginError, Policy, Request, export_policy,
    parse_config,
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

    // Called per request. The request carries the decision so far (the router's, after
    // faults and traffic split); answer with an edit of it. `Edit::keep()` leaves it as it
    // is. Read only what you need: each read asks the gateway (header names ignore case).
    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        if let Some(name) = &self.config.deny_header
            && request.header(name).is_some()
        {
            return Ok(Edit::respond(403, "blocked\n"));
        }
        if request.action_kind() != ActionKind::Forward {
            return Ok(Edit::keep());
        }
        let mut edit = Edit::keep();
        edit.set_response_header("x-greeting", &self.config.greeting);
        Ok(edit)
    }
}

export_policy!(Hello);

// Plugins are plain Rust: these tests run natively with `cargo test`.
#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_plugin_sdk::testing::{decide, prepare, request, run};
    use wasmgate_plugin_sdk::{Action, Decision, Destination, Forward, Header};

    fn forwarded() -> Decision {
        Decision::no_route()
            .with_action(Action::Forward(Forward::to(vec![Destination::new("app")])))
    }

    #[test]
    fn greets_forwarded_responses() {
        let p: Hello = prepare(r#"{"greeting": "hi"}"#);
        // `run` applies the edit to the request's decision, as the gateway does.
        let d = run(&p, &request("GET", "/").decision(forwarded()).build());
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
                let req = request("GET", "/")
                    .header(sent, "1")
                    .decision(forwarded())
                    .build();
                let d = run(&p, &req);
                assert!(
                    matches!(d.action, Action::Respond(r) if r.status == 403),
                    "{configured} / {sent}"
                );
            }
        }
    }

    #[test]
    fn blocks_nothing_without_a_deny_header() {
        // Without `denyHeader` no header turns a request away.
        let p: Hello = prepare(r#"{"greeting": "hi"}"#);
        let req = request("GET", "/")
            .header("x-block-me", "1")
            .decision(forwarded())
            .build();
        assert!(matches!(run(&p, &req).action, Action::Forward(_)));
    }

    #[test]
    fn leaves_requests_it_does_not_forward_alone() {
        // Nothing routed yet (or a local answer): no greeting, the decision is kept.
        let p: Hello = prepare(r#"{"greeting": "hi"}"#);
        assert!(decide(&p, &request("GET", "/").build()).is_empty());
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
