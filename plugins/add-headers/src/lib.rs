//! Example user plugin, and the template for writing one: it sets response and request
//! headers on forwarded requests and can answer one path itself. Its whole config is the
//! WasmPlugin's `pluginConfig`:
//!
//! ```yaml
//! pluginConfig:
//!   responseHeaders: {x-powered-by: wasmgate}
//!   requestHeaders: {x-plugin-saw: "yes"}
//!   answer: {path: /plugin/hello, status: 200, body: "hello from a plugin"}
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use wasmgate_plugin_sdk::host::{Level, log};
use wasmgate_plugin_sdk::{
    Action, ActionKind, Binding, ConfigError, Edit, Header, PluginError, Policy, PreparedEdit,
    Request, export_policy, parse_config,
};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub response_headers: BTreeMap<String, String>,
    pub request_headers: BTreeMap<String, String>,
    pub answer: Option<Answer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub path: String,
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
}

fn ok() -> u16 {
    200
}

#[derive(Debug)]
pub struct AddHeaders {
    config: Config,
    /// The header operations every forwarded request gets, kept by the host.
    forwarded: PreparedEdit,
}

impl Policy for AddHeaders {
    fn prepare(binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        let config: Config = parse_config(config)?;
        if let Some(answer) = &config.answer
            && !(200..=599).contains(&answer.status)
        {
            return Err(ConfigError {
                field: "answer.status".into(),
                message: format!("{} is not an HTTP status (200..=599)", answer.status),
            });
        }
        log(
            Level::Info,
            &format!("add-headers prepared for {}", binding.virtual_service),
        );
        // Header operations only where there is something to add: `None` is free to
        // pass on.
        let mut edit = Edit::keep();
        for (name, value) in &config.response_headers {
            edit.set_response_header(name, value);
        }
        for (name, value) in &config.request_headers {
            edit.set_request_header(name, value);
        }
        Ok(AddHeaders {
            config,
            forwarded: PreparedEdit::new(edit),
        })
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        if let Some(answer) = &self.config.answer
            && request.path() == answer.path
        {
            let mut edit = Edit::respond(answer.status, answer.body.as_str());
            if let Some(Action::Respond(r)) = &mut edit.action {
                r.headers = headers(&self.config.response_headers);
            }
            return Ok(edit);
        }
        // Headers go only on forwarded requests (a local reply keeps its own).
        if request.action_kind() != ActionKind::Forward {
            return Ok(Edit::keep());
        }
        Ok(self.forwarded.answer(request))
    }
}

fn headers(map: &BTreeMap<String, String>) -> Vec<Header> {
    map.iter().map(|(k, v)| Header::new(k, v)).collect()
}

export_policy!(AddHeaders);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_plugin_sdk::testing::{decide, prepare, request, run};
    use wasmgate_plugin_sdk::{Decision, Destination, Forward};

    #[test]
    fn sets_headers_on_forward_and_answers_its_path() {
        let p: AddHeaders = prepare(
            r#"{"responseHeaders":{"X-Powered-By":"wasmgate"},"requestHeaders":{"x-saw":"yes"},
                "answer":{"path":"/plugin/hello","body":"hi"}}"#,
        );
        let fwd = Decision::no_route()
            .with_action(Action::Forward(Forward::to(vec![Destination::new("a")])));
        let d = run(&p, &request("GET", "/x").decision(fwd.clone()).build());
        let Action::Forward(f) = d.action else {
            panic!("not forward")
        };
        assert_eq!(
            f.response_headers.expect("response headers").set,
            vec![Header::new("x-powered-by", "wasmgate")]
        );
        assert_eq!(
            f.request_headers.expect("request headers").set,
            vec![Header::new("x-saw", "yes")]
        );

        let d = run(&p, &request("GET", "/plugin/hello").decision(fwd).build());
        assert!(matches!(d.action, Action::Respond(ref r) if r.body == b"hi" && r.status == 200));
        let Action::Respond(r) = d.action else {
            panic!("not answered")
        };
        assert_eq!(r.headers, vec![Header::new("x-powered-by", "wasmgate")]);
    }

    #[test]
    fn leaves_other_actions_alone() {
        let p: AddHeaders = prepare(r#"{"responseHeaders":{"x-a":"1"}}"#);
        assert!(decide(&p, &request("GET", "/x").build()).is_empty());
        let answered = Decision::no_route().with_action(Decision::respond(403, "no"));
        let req = request("GET", "/x").decision(answered).build();
        assert!(decide(&p, &req).is_empty());
    }

    #[test]
    fn rejects_bad_config() {
        assert!(
            AddHeaders::prepare(&wasmgate_plugin_sdk::testing::binding(), r#"{"nope":1}"#).is_err()
        );
        let e = AddHeaders::prepare(
            &wasmgate_plugin_sdk::testing::binding(),
            r#"{"answer":{"path":"/","status":42}}"#,
        )
        .err();
        assert_eq!(e.map(|e| e.field), Some("answer.status".to_string()));
    }
}
