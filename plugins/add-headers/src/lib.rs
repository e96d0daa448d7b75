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
    Action, Binding, ConfigError, Decision, Header, PluginError, Policy, RequestHead,
    export_policy, parse_config,
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
        Ok(AddHeaders { config })
    }

    fn on_request(
        &self,
        request: &RequestHead,
        mut current: Decision,
    ) -> Result<Option<Decision>, PluginError> {
        if let Some(answer) = &self.config.answer
            && request.path == answer.path
        {
            let mut action = Decision::respond(answer.status, answer.body.clone());
            if let Action::Respond(r) = &mut action {
                r.headers = headers(&self.config.response_headers);
            }
            return Ok(Some(current.with_action(action)));
        }
        let Some(forward) = current.forward_mut() else {
            return Ok(None);
        };
        // Only touched when there is something to add: `None` is free to pass on.
        if !self.config.response_headers.is_empty() {
            forward
                .response_headers_mut()
                .set
                .extend(headers(&self.config.response_headers));
        }
        if !self.config.request_headers.is_empty() {
            forward
                .request_headers_mut()
                .set
                .extend(headers(&self.config.request_headers));
        }
        Ok(Some(current))
    }
}

fn headers(map: &BTreeMap<String, String>) -> Vec<Header> {
    map.iter().map(|(k, v)| Header::new(k, v)).collect()
}

export_policy!(AddHeaders);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_plugin_sdk::testing::{decide, prepare, request};
    use wasmgate_plugin_sdk::{Destination, Forward};

    #[test]
    fn sets_headers_on_forward_and_answers_its_path() {
        let p: AddHeaders = prepare(
            r#"{"responseHeaders":{"X-Powered-By":"wasmgate"},
                "answer":{"path":"/plugin/hello","body":"hi"}}"#,
        );
        let fwd = Decision::no_route()
            .with_action(Action::Forward(Forward::to(vec![Destination::new("a")])));
        let d = decide(&p, &request("GET", "/x").build(), fwd.clone());
        let Action::Forward(f) = d.action else {
            panic!("not forward")
        };
        assert_eq!(
            f.response_headers.expect("response headers").set,
            vec![Header::new("x-powered-by", "wasmgate")]
        );

        let d = decide(&p, &request("GET", "/plugin/hello").build(), fwd);
        assert!(matches!(d.action, Action::Respond(r) if r.body == b"hi" && r.status == 200));
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
