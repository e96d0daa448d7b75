//! Test plugin for the phases beyond `on-request`: the response and log phases, request
//! and response bodies, and per-request properties. Several bindings with different
//! names in one chain show the order the host runs them in and what each sees of the
//! others. Config (all optional):
//!
//! ```json
//! {"name": "a", "requestBody": 16, "responseBody": 64, "log": true}
//! ```
//!
//! `requestBody` / `responseBody` ask the host to buffer that many bytes; `log` asks for
//! the log phase. The response phase is always asked for. `name` defaults to `phases`.
//! Bound as `wasmgate/fault` or `wasmgate/router` (a `fault.wasm` or `router.wasm` in
//! place of the embedded one) and given their config, a VirtualService spec, it takes
//! the defaults.
//!
//! On a request it sets property `phases.<name>` to `seen`, appends its name to property
//! `phases.order` (comma separated), and sets request header `x-phases-<name>` to the
//! property named by request header `x-read-property` (`none` without one). When request
//! header `x-read-body` is its name it answers 200 with the request body it got (`no
//! body` when none);
//! otherwise with `x-order` it answers 200 with `phases.order`; with `x-set-property:
//! k=v` it sets property `k` to `v` and answers 200 `set`, or 403 with the host's
//! refusal. When request header `x-read-decision` is its name it answers 200 with the
//! names of the request headers the decision so far sets (`request.decision`: the
//! route's and the plugins' before it), comma separated.
//!
//! With request header `x-prepared` set to its name it answers with the edit it prepared
//! (a 200 `prepared by <name>` with response header `x-prepared: <name>`), adding
//! response header `x-host-kept: true|false` (did the host keep it?); with
//! `x-prepared: late-<name>` it does the same with an edit prepared on the request,
//! which the host refuses to keep (`x-host-kept: false`).
//!
//! With request header `x-pick: <name>=<i>` it keeps only destination `i` of the
//! forward (`edit.pick`), whatever the weights. With request header `x-forward:
//! <name>=<host>,<host>...` it replaces the action with a forward to those hosts, each
//! of weight 1 (for the traffic split to pick from). With request header `x-route:
//! <name>=<i>` it sets the decision's route to index `i` (as a plugin that routes
//! elsewhere would).
//!
//! On a response it sets `x-phases-<name>-status: <status>`; when request header
//! `x-replace` is its name it replaces the response with 418 `replaced by <name>`;
//! otherwise, with a response-body interest and request header `x-upper`, it replaces the
//! body with its ASCII uppercase. In the log phase it counts
//! `phases_logged_total{name,status}`.

use serde::Deserialize;
use wasmgate_plugin_sdk::metrics::Counter;
use wasmgate_plugin_sdk::{
    Action, Binding, ConfigError, Destination, Edit, Forward, Interest, LogEntry, PluginError,
    Policy, PreparedEdit, Request, Response, ResponseEdit, RouteRef, export_policy, parse_config,
};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    name: String,
    request_body: Option<u32>,
    response_body: Option<u32>,
    log: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "phases".into(),
            request_body: None,
            response_body: None,
            log: false,
        }
    }
}

#[derive(Debug)]
pub struct Phases {
    name: String,
    interest: Interest,
    logged: Counter,
    prepared: PreparedEdit,
}

/// What `x-prepared` answers with.
fn prepared_answer(name: &str) -> Edit {
    let mut edit = Edit::respond(200, format!("prepared by {name}"));
    edit.set_response_header("x-prepared", name);
    edit
}

/// A prepared edit's answer, with what the request adds laid over it.
fn answer_with(prepared: &PreparedEdit, request: &Request) -> Edit {
    let mut edit = prepared.answer(request);
    edit.set_response_header("x-host-kept", &prepared.kept_by_host().to_string());
    edit
}

/// The property every binding appends its name to.
pub const ORDER: &str = "phases.order";

fn failed(message: String) -> PluginError {
    PluginError { message }
}

impl Policy for Phases {
    fn prepare(binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        // A VirtualService spec is what the host gives a `fault.wasm` or `router.wasm`
        // standing in for the embedded one: the probe then runs as `phases`.
        let stands_in = matches!(
            binding.plugin.as_str(),
            "wasmgate/fault" | "wasmgate/router"
        ) && serde_json::from_str::<serde_json::Value>(config)
            .is_ok_and(|v| v.get("http").is_some());
        let config: Config = if stands_in {
            Config::default()
        } else {
            parse_config(config)?
        };
        if config.name.is_empty() {
            return Err(ConfigError {
                field: "name".into(),
                message: "must not be empty".into(),
            });
        }
        let mut interest = Interest::default().with_response();
        interest.request_body = config.request_body;
        interest.response_body = config.response_body;
        interest.log = config.log;
        Ok(Phases {
            prepared: PreparedEdit::new(prepared_answer(&config.name)),
            name: config.name,
            interest,
            logged: Counter::define(
                "phases_logged_total",
                "Requests the phases probe saw in the log phase, by binding name and status.",
                &["name", "status"],
            )?,
        })
    }

    fn interest(&self) -> Interest {
        self.interest
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        let name = &self.name;
        request
            .set_property(&format!("phases.{name}"), Some("seen"))
            .map_err(failed)?;
        let order = match request.property(ORDER) {
            Some(before) => format!("{before},{name}"),
            None => name.clone(),
        };
        request.set_property(ORDER, Some(&order)).map_err(failed)?;
        if request.header("x-read-body").as_deref() == Some(name.as_str()) {
            return Ok(match request.body() {
                Some(body) => Edit::respond(200, body),
                None => Edit::respond(200, "no body"),
            });
        }
        if let Some(who) = request.header("x-prepared") {
            if who == *name {
                return Ok(answer_with(&self.prepared, request));
            }
            if who.strip_prefix("late-") == Some(name.as_str()) {
                let late = PreparedEdit::new(prepared_answer(name));
                return Ok(answer_with(&late, request));
            }
        }
        if request.header("x-order").is_some() {
            return Ok(Edit::respond(200, order));
        }
        if request.header("x-read-decision").as_deref() == Some(name.as_str()) {
            let set = match request.decision().action {
                Action::Forward(f) => f
                    .request_headers
                    .map(|m| m.set.into_iter().map(|h| h.name).collect::<Vec<_>>())
                    .unwrap_or_default()
                    .join(","),
                _ => "not a forward".into(),
            };
            return Ok(Edit::respond(200, set));
        }
        if let Some(spec) = request.header("x-set-property") {
            let (key, value) = spec.split_once('=').unwrap_or((spec.as_str(), ""));
            return Ok(match request.set_property(key, Some(value)) {
                Ok(()) => Edit::respond(200, "set"),
                Err(e) => Edit::respond(403, e),
            });
        }
        let read = request
            .header("x-read-property")
            .and_then(|property| request.property(&property));
        let mut edit = Edit::keep();
        edit.set_request_header(
            &format!("x-phases-{name}"),
            read.as_deref().unwrap_or("none"),
        );
        if let Some(hosts) = addressed(request, "x-forward", name) {
            let destinations = hosts
                .split(',')
                .map(|host| {
                    let mut d = Destination::new(host);
                    d.weight = 1;
                    d
                })
                .collect();
            edit.action = Some(Action::Forward(Forward::to(destinations)));
        }
        edit.pick = addressed(request, "x-pick", name).and_then(|index| index.parse().ok());
        edit.route = addressed(request, "x-route", name)
            .and_then(|index| index.parse().ok())
            .map(|index| RouteRef {
                index,
                name: String::new(),
            });
        Ok(edit)
    }

    fn on_response(
        &self,
        request: &Request,
        response: &Response,
    ) -> Result<ResponseEdit, PluginError> {
        let name = &self.name;
        let mut edit = ResponseEdit::default();
        edit.set_header(
            &format!("x-phases-{name}-status"),
            &response.status().to_string(),
        );
        if request.header("x-replace").as_deref() == Some(name.as_str()) {
            edit.replace(418, format!("replaced by {name}"));
        } else if self.interest.response_body.is_some()
            && request.header("x-upper").is_some()
            && let Some(body) = response.body()
        {
            edit.body(body.to_ascii_uppercase());
        }
        Ok(edit)
    }

    fn on_log(&self, _request: &Request, entry: &LogEntry) {
        self.logged
            .inc(&[self.name.as_str(), &entry.status.to_string()]);
    }
}

/// What request header `header` (`<name>=<value>`) says to the binding `name`.
fn addressed(request: &Request, header: &str, name: &str) -> Option<String> {
    let spec = request.header(header)?;
    let (who, value) = spec.split_once('=')?;
    (who == name).then(|| value.to_string())
}

export_policy!(Phases);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_plugin_sdk::testing::{
        decide, log, log_entry, prepare, recorded_metrics, request, respond, response, run,
    };
    use wasmgate_plugin_sdk::{Action, Decision, Destination, Forward, Header};

    fn answer(edit: &Edit) -> (u16, String) {
        match &edit.action {
            Some(Action::Respond(r)) => (r.status, String::from_utf8_lossy(&r.body).into()),
            other => panic!("not an answer: {other:?}"),
        }
    }

    fn forwarded() -> Decision {
        Decision::no_route().with_action(Action::Forward(Forward::to(vec![Destination::new("a")])))
    }

    #[test]
    fn interest_follows_the_config() {
        let p: Phases = prepare("null");
        assert_eq!(p.interest(), Interest::default().with_response());
        let p: Phases =
            prepare(r#"{"name": "a", "requestBody": 16, "responseBody": 64, "log": true}"#);
        let i = p.interest();
        assert!(i.response && i.log);
        assert_eq!((i.request_body, i.response_body), (Some(16), Some(64)));
        let e = Phases::prepare(&wasmgate_plugin_sdk::testing::binding(), r#"{"name": 1}"#)
            .expect_err("accepted");
        assert_eq!(e.field, "name");
    }

    #[test]
    fn properties_pass_along_the_chain_in_order() {
        let a: Phases = prepare(r#"{"name": "a"}"#);
        let b: Phases = prepare(r#"{"name": "b"}"#);
        let req = request("GET", "/")
            .header("x-read-property", ORDER)
            .decision(forwarded())
            .build();
        let edit = decide(&a, &req);
        assert_eq!(
            edit.request_headers.map(|m| m.set),
            Some(vec![Header::new("x-phases-a", "a")])
        );
        let d = run(&b, &req);
        let Action::Forward(f) = d.action else {
            panic!("not forwarded")
        };
        assert_eq!(
            f.request_headers.map(|m| m.set),
            Some(vec![Header::new("x-phases-b", "a,b")])
        );
        let props = req.properties.borrow();
        assert_eq!(props.get("phases.a").map(String::as_str), Some("seen"));
        assert_eq!(props.get("phases.b").map(String::as_str), Some("seen"));
        assert_eq!(props.get(ORDER).map(String::as_str), Some("a,b"));
    }

    #[test]
    fn answers_with_its_prepared_edit_and_adds_to_it() {
        let a: Phases = prepare(r#"{"name": "a"}"#);
        for who in ["a", "late-a"] {
            let req = request("GET", "/").header("x-prepared", who).build();
            let edit = decide(&a, &req);
            assert_eq!(answer(&edit), (200, "prepared by a".to_string()));
            assert_eq!(
                edit.response_headers.map(|m| m.set),
                Some(vec![
                    Header::new("x-prepared", "a"),
                    // No host in a native test: the policy keeps its edits.
                    Header::new("x-host-kept", "false"),
                ])
            );
        }
    }

    #[test]
    fn reads_the_property_named_or_none() {
        let a: Phases = prepare(r#"{"name": "a"}"#);
        let header = |req| decide(&a, &req).request_headers.map(|m| m.set);
        let with = |name| request("GET", "/").header("x-read-property", name);
        let set = |value| Some(vec![Header::new("x-phases-a", value)]);
        // Its own, set just before; one an earlier policy set; one nobody set; none asked.
        assert_eq!(header(with("phases.a").build()), set("seen"));
        assert_eq!(
            header(with("claims.sub").property("claims.sub", "alice").build()),
            set("alice")
        );
        assert_eq!(header(with("phases.b").build()), set("none"));
        assert_eq!(header(request("GET", "/").build()), set("none"));
    }

    #[test]
    fn answers_with_the_order_and_the_body() {
        let a: Phases = prepare(r#"{"name": "a"}"#);
        let b: Phases = prepare(r#"{"name": "b", "requestBody": 5}"#);
        let req = request("GET", "/").header("x-order", "1").build();
        decide(&a, &req);
        assert_eq!(answer(&decide(&b, &req)), (200, "a,b".into()));
        let body = |name| request("POST", "/").header("x-read-body", name);
        assert_eq!(
            answer(&decide(&b, &body("b").body("hello").build())),
            (200, "hello".into())
        );
        // Over the limit, or without a request-body interest: no body.
        assert_eq!(
            answer(&decide(&b, &body("b").body("hello!").build())),
            (200, "no body".into())
        );
        assert_eq!(
            answer(&decide(&a, &body("a").body("hello").build())),
            (200, "no body".into())
        );
        // Only the binding named answers.
        assert!(
            decide(&a, &body("b").body("hello").build())
                .action
                .is_none()
        );
    }

    #[test]
    fn response_status_replace_and_uppercase() {
        let a: Phases = prepare(r#"{"name": "a", "responseBody": 8}"#);
        let req = request("GET", "/").build();
        let edit = respond(&a, &req, &response(201).body("ok"));
        assert_eq!(
            edit.headers.map(|m| m.set),
            Some(vec![Header::new("x-phases-a-status", "201")])
        );
        assert!(edit.replace.is_none() && edit.body.is_none());

        let upper = request("GET", "/").header("x-upper", "1").build();
        let edit = respond(&a, &upper, &response(200).body("shout"));
        assert_eq!(edit.body.as_deref(), Some(&b"SHOUT"[..]));
        // A body over the limit is not seen, so not replaced.
        let edit = respond(&a, &upper, &response(200).body("far too long"));
        assert!(edit.body.is_none());
        // Without a response-body interest the body is left alone.
        let plain: Phases = prepare(r#"{"name": "a"}"#);
        assert!(
            respond(&plain, &upper, &response(200).body("x"))
                .body
                .is_none()
        );

        let replace = request("GET", "/").header("x-replace", "a").build();
        let edit = respond(&a, &replace, &response(200));
        let r = edit.replace.expect("replaced");
        assert_eq!((r.status, r.body), (418, b"replaced by a".to_vec()));
        let other = request("GET", "/").header("x-replace", "b").build();
        assert!(respond(&a, &other, &response(200)).replace.is_none());
    }

    #[test]
    fn the_log_phase_counts_by_name_and_status() {
        let a: Phases = prepare(r#"{"name": "a", "log": true}"#);
        let req = request("GET", "/").build();
        log(&a, &req, &log_entry(200));
        log(&a, &req, &log_entry(200));
        log(&a, &req, &log_entry(503));
        let m = recorded_metrics();
        assert_eq!(m.counter("phases_logged_total", &["a", "200"]), 2);
        assert_eq!(m.counter("phases_logged_total", &["a", "503"]), 1);
    }
}
