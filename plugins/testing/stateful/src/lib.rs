//! Test plugin for the capabilities a WasmPlugin grants: `state`, `clock` and
//! `outbound:<host>`. By request path:
//!
//! - `/count`: increments counter `hits` and answers 200 with its new value.
//! - `/get?key=K`: answers 200 with the value stored at `K`, 404 when there is none.
//! - `/panic-after-count`: increments `hits`, then panics (the trap must not lose it).
//! - `/clock`: answers 200 with the wall clock in Unix nanoseconds, or 500 with the error.
//! - `/call?host=H&path=P`: GETs `P` (default `/`) from `H` and answers with the
//!   upstream's status and body, or 502 with the error.
//! - `/cas?key=K&value=V`: writes `V` at `K` only if `K` is absent; answers `true` or
//!   `false`.
//!
//! A state error (not granted, a limit) answers 500 with its text; a missing query
//! parameter answers 400. Other paths pass on. No config.

use wasmgate_plugin_sdk::outbound::{self, OutboundRequest};
use wasmgate_plugin_sdk::{
    Binding, ConfigError, Edit, PluginError, Policy, Request, clock, export_policy, state,
};

#[derive(Debug)]
pub struct Stateful;

/// The counter `/count` and `/panic-after-count` increment.
pub const HITS: &str = "hits";

/// A request answered with an error: its status and text.
type Failure = (u16, String);

/// The answer for a state (or clock) error.
fn error(message: String) -> Failure {
    (500, message)
}

/// A required query parameter, or the 400 answer.
fn param(request: &Request, name: &str) -> Result<String, Failure> {
    request
        .query_param(name)
        .ok_or_else(|| (400, format!("missing query parameter {name}")))
}

impl Stateful {
    fn answer(&self, request: &Request) -> Result<Edit, Failure> {
        Ok(match request.path() {
            "/count" => {
                let hits = state::increment(HITS, 1, None).map_err(error)?;
                Edit::respond(200, hits.to_string())
            }
            "/get" => {
                let key = param(request, "key")?;
                match state::get(&key).map_err(error)? {
                    Some(value) => Edit::respond(200, value),
                    None => Edit::respond(404, format!("no value at {key}")),
                }
            }
            "/panic-after-count" => {
                let hits = state::increment(HITS, 1, None).map_err(error)?;
                panic!("stateful: asked to panic after counting to {hits}");
            }
            "/clock" => Edit::respond(200, clock::now().map_err(error)?.to_string()),
            "/call" => {
                let host = param(request, "host")?;
                let path = request.query_param("path").unwrap_or_else(|| "/".into());
                match outbound::call(&OutboundRequest::get(&host, &path)) {
                    Ok(response) => Edit::respond(response.status, response.body),
                    Err(e) => Edit::respond(502, e),
                }
            }
            "/cas" => {
                let key = param(request, "key")?;
                let value = param(request, "value")?;
                let written = state::compare_and_swap(&key, None, Some(value.as_bytes()), None)
                    .map_err(error)?;
                Edit::respond(200, written.to_string())
            }
            _ => Edit::keep(),
        })
    }
}

impl Policy for Stateful {
    fn prepare(_binding: &Binding, _config: &str) -> Result<Self, ConfigError> {
        Ok(Stateful)
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        Ok(self
            .answer(request)
            .unwrap_or_else(|(status, text)| Edit::respond(status, text)))
    }
}

export_policy!(Stateful);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_plugin_sdk::Action;
    use wasmgate_plugin_sdk::outbound::OutboundResponse;
    use wasmgate_plugin_sdk::testing::{
        decide, grant, prepare, request, serve_outbound, set_clock,
    };

    fn answer(p: &Stateful, path: &str) -> (u16, String) {
        match decide(p, &request("GET", path).build()).action {
            Some(Action::Respond(r)) => (r.status, String::from_utf8_lossy(&r.body).into()),
            other => panic!("{path}: not an answer: {other:?}"),
        }
    }

    #[test]
    fn counts_gets_and_compares_and_swaps() {
        grant(&["state"]);
        let p: Stateful = prepare("null");
        assert_eq!(answer(&p, "/count"), (200, "1".into()));
        assert_eq!(answer(&p, "/count"), (200, "2".into()));
        assert_eq!(answer(&p, "/get?key=k"), (404, "no value at k".into()));
        assert_eq!(answer(&p, "/cas?key=k&value=v%201"), (200, "true".into()));
        assert_eq!(answer(&p, "/cas?key=k&value=w"), (200, "false".into()));
        assert_eq!(answer(&p, "/get?key=k"), (200, "v 1".into()));
        assert_eq!(
            answer(&p, "/get"),
            (400, "missing query parameter key".into())
        );
        assert!(decide(&p, &request("GET", "/other").build()).is_empty());
    }

    #[test]
    fn state_errors_answer_500() {
        grant(&[]);
        let p: Stateful = prepare("null");
        let (status, text) = answer(&p, "/count");
        assert_eq!(status, 500);
        assert!(text.contains("wasmgate.io/capabilities"), "{text}");
        assert_eq!(answer(&p, "/cas?key=k&value=v").0, 500);
        grant(&["state"]);
        let (status, text) = answer(&p, &format!("/get?key={}", "k".repeat(300)));
        assert_eq!(status, 500);
        assert!(text.contains("over 256"), "{text}");
    }

    #[test]
    fn the_count_survives_the_panic() {
        grant(&["state"]);
        let p: Stateful = prepare("null");
        assert_eq!(answer(&p, "/count"), (200, "1".into()));
        let req = request("GET", "/panic-after-count").build();
        let trapped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decide(&p, &req)));
        assert!(trapped.is_err(), "did not panic");
        assert_eq!(answer(&p, "/count"), (200, "3".into()));
    }

    #[test]
    fn the_clock_needs_its_grant() {
        grant(&[]);
        let p: Stateful = prepare("null");
        let (status, text) = answer(&p, "/clock");
        assert_eq!(status, 500);
        assert!(text.contains("clock"), "{text}");
        grant(&["clock"]);
        set_clock(Some(1_234_000_000_000));
        assert_eq!(answer(&p, "/clock"), (200, "1234000000000".into()));
        set_clock(None);
    }

    #[test]
    fn calls_answer_with_the_upstream_or_502() {
        let p: Stateful = prepare("null");
        grant(&["outbound:auth.example.com"]);
        serve_outbound(|r| {
            Ok(OutboundResponse {
                status: if r.path == "/missing" { 404 } else { 200 },
                headers: Vec::new(),
                body: format!("{} {} {}", r.method, r.authority, r.path).into_bytes(),
            })
        });
        assert_eq!(
            answer(&p, "/call?host=auth.example.com&path=/check%3Fa%3D1"),
            (200, "GET auth.example.com /check?a=1".into())
        );
        assert_eq!(
            answer(&p, "/call?host=auth.example.com:8080"),
            (200, "GET auth.example.com:8080 /".into())
        );
        assert_eq!(
            answer(&p, "/call?host=auth.example.com&path=/missing").0,
            404
        );
        let (status, text) = answer(&p, "/call?host=other.example.com");
        assert_eq!(status, 502);
        assert!(text.contains("outbound:other.example.com"), "{text}");
        assert_eq!(answer(&p, "/call").0, 400);
    }
}
