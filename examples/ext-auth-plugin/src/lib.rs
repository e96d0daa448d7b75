//! External authorization: every request is first checked with an HTTP authorization
//! service, the way Istio's `envoyExtAuthzHttp` extension provider checks it. The check
//! carries the request's method, its path and query (under `pathPrefix`) and its
//! `authorization` header, and no body. A 200 allows the request; any other answer
//! denies it with the service's 401 (and its `www-authenticate`) or 403, and 403 for
//! every other status. When the service cannot be asked (no answer in time, connection
//! refused, the host not granted) the request gets 503, or goes on with `failOpen`.
//!
//! ```yaml
//! pluginConfig:
//!   authority: authz.internal   # the service: host or host:port (a ServiceEntry host)
//!   pathPrefix: /check          # optional: /orders?id=7 is checked as /check/orders?id=7
//!   timeoutMs: 500              # optional: 1 to 10000, default 1000
//!   failOpen: false             # optional: let requests on when the service cannot be asked
//!   userHeader: x-user          # optional: the header in which the service's 200 names
//!                               # the user; it goes upstream and into property auth.user
//! ```
//!
//! The WasmPlugin must grant the service's host (`outbound:authz.internal` in its
//! `wasmgate.io/capabilities` annotation), and a ServiceEntry must define it.

use serde::Deserialize;
use wasmgate_plugin_sdk::host::{Level, log};
use wasmgate_plugin_sdk::outbound::{self, OutboundRequest, OutboundResponse};
use wasmgate_plugin_sdk::{
    Action, Binding, ConfigError, DirectResponse, Edit, Header, PluginError, Policy, Request,
    export_policy, parse_config,
};

/// The property that names the user the service allowed, for the plugins after this one
/// (a rate limiter keyed by user, say) and for the response and log phases.
pub const USER_PROPERTY: &str = "auth.user";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    authority: String,
    #[serde(default)]
    path_prefix: String,
    #[serde(default = "a_second")]
    timeout_ms: u32,
    #[serde(default)]
    fail_open: bool,
    #[serde(default)]
    user_header: Option<String>,
}

fn a_second() -> u32 {
    1000
}

#[derive(Debug)]
pub struct ExtAuth {
    config: Config,
}

fn invalid(field: &str, message: &str) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

impl Policy for ExtAuth {
    fn prepare(_binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        let mut config: Config = parse_config(config)?;
        let authority = &config.authority;
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(invalid(
                "authority",
                "must be host or host:port, without scheme or path",
            ));
        }
        let prefix = &config.path_prefix;
        if !prefix.is_empty() && (!prefix.starts_with('/') || prefix.ends_with('/')) {
            return Err(invalid(
                "pathPrefix",
                "must start with / and not end with one (the request's path follows it)",
            ));
        }
        // The gateway never waits longer than 10 s for an outbound call.
        if !(1..=10_000).contains(&config.timeout_ms) {
            return Err(invalid("timeoutMs", "must be 1 to 10000"));
        }
        if let Some(header) = &mut config.user_header {
            if header.is_empty() {
                return Err(invalid("userHeader", "must not be empty"));
            }
            header.make_ascii_lowercase();
        }
        Ok(ExtAuth { config })
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        let mut check = OutboundRequest::get(&self.config.authority, &self.check_path(request));
        check.method = request.method().to_string();
        check.timeout_ms = self.config.timeout_ms;
        if let Some(credentials) = request.header("authorization") {
            check
                .headers
                .push(Header::new("authorization", credentials));
        }
        // The plugin waits here while the gateway sends the check; its own threads do
        // not block, and the wait does not count against the plugin's time limit.
        match outbound::call(&check) {
            Ok(answer) if answer.status == 200 => self.allow(request, &answer),
            Ok(answer) => Ok(deny(&answer)),
            Err(error) => Ok(self.unavailable(&error)),
        }
    }
}

impl ExtAuth {
    /// `pathPrefix`, the request's path, and its query.
    fn check_path(&self, request: &Request) -> String {
        let mut path = format!("{}{}", self.config.path_prefix, request.path());
        if !request.query().is_empty() {
            path.push('?');
            path.push_str(request.query());
        }
        path
    }

    fn allow(&self, request: &Request, answer: &OutboundResponse) -> Result<Edit, PluginError> {
        let mut edit = Edit::keep();
        let Some(name) = &self.config.user_header else {
            return Ok(edit);
        };
        match answer.header(name).filter(|user| !user.is_empty()) {
            Some(user) => {
                // `set` replaces whatever the client sent under that name.
                edit.set_request_header(name, user);
                request
                    .set_property(USER_PROPERTY, Some(user))
                    .map_err(|message| PluginError { message })?;
            }
            // Only the service names users: a value the client sent never goes upstream.
            None => {
                edit.remove_request_header(name);
            }
        }
        Ok(edit)
    }

    fn unavailable(&self, error: &str) -> Edit {
        // At most 100 log lines a second per plugin reach the gateway's log; the rest are
        // counted, so a service that is down cannot flood it.
        log(
            Level::Warn,
            &format!("authorization service {}: {error}", self.config.authority),
        );
        if !self.config.fail_open {
            return Edit::respond(503, "authorization service unavailable\n");
        }
        let mut edit = Edit::keep();
        if let Some(name) = &self.config.user_header {
            edit.remove_request_header(name);
        }
        edit
    }
}

/// The service's 401 (with its `www-authenticate`, which tells the client how to
/// authenticate) or 403; 403 for any other status.
fn deny(answer: &OutboundResponse) -> Edit {
    let status = match answer.status {
        401 | 403 => answer.status,
        _ => 403,
    };
    let headers = match answer.header("www-authenticate") {
        Some(challenge) if status == 401 => vec![Header::new("www-authenticate", challenge)],
        _ => Vec::new(),
    };
    Edit::action(Action::Respond(DirectResponse {
        status,
        headers,
        body: b"denied\n".to_vec(),
    }))
}

export_policy!(ExtAuth);

// Plugins are plain Rust: these tests run natively with `cargo test`.
#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use wasmgate_plugin_sdk::testing::{
        RequestBuilder, binding, decide, grant, prepare, request, run, serve_outbound,
    };
    use wasmgate_plugin_sdk::{Decision, Destination, Forward};

    const CONFIG: &str = r#"{"authority": "authz.internal", "pathPrefix": "/check",
        "timeoutMs": 500, "userHeader": "x-user"}"#;

    /// The checks the service was sent, in order.
    type Checks = Rc<RefCell<Vec<OutboundRequest>>>;

    /// Grant `authz.internal` and serve its checks with `answer`.
    fn service(
        answer: impl Fn(&OutboundRequest) -> Result<OutboundResponse, String> + 'static,
    ) -> Checks {
        grant(&["outbound:authz.internal"]);
        let checks = Checks::default();
        let kept = checks.clone();
        serve_outbound(move |check| {
            kept.borrow_mut().push(check.clone());
            answer(check)
        });
        checks
    }

    fn reply(status: u16, headers: &[(&str, &str)]) -> Result<OutboundResponse, String> {
        Ok(OutboundResponse {
            status,
            headers: headers.iter().map(|(n, v)| Header::new(*n, *v)).collect(),
            body: Vec::new(),
        })
    }

    /// The example's authorization service: alice's token is allowed and names her, a
    /// request without credentials gets 401, any other credentials 403.
    fn alice_only(check: &OutboundRequest) -> Result<OutboundResponse, String> {
        let credentials = check
            .headers
            .iter()
            .find(|h| h.name == "authorization")
            .map(|h| h.value.as_str());
        match credentials {
            Some("Bearer alice-token") => reply(200, &[("x-user", "alice")]),
            Some(_) => reply(403, &[]),
            None => reply(401, &[("www-authenticate", "Bearer")]),
        }
    }

    /// A request the router forwards upstream.
    fn forwarded(method: &str, path: &str) -> RequestBuilder {
        let upstream = Forward::to(vec![Destination::new("backend")]);
        request(method, path).decision(Decision::no_route().with_action(Action::Forward(upstream)))
    }

    /// The status and headers of the answer the plugin made, if it made one.
    fn answer(edit: &Edit) -> Option<(u16, Vec<Header>)> {
        match &edit.action {
            None => None,
            Some(Action::Respond(r)) => Some((r.status, r.headers.clone())),
            Some(other) => panic!("not an answer: {other:?}"),
        }
    }

    #[test]
    fn checks_method_path_query_and_credentials_only() {
        let checks = service(alice_only);
        let p: ExtAuth = prepare(CONFIG);
        let req = forwarded("POST", "/orders/7?expand=items")
            .header("Authorization", "Bearer alice-token")
            .header("cookie", "session=1")
            .body("{}")
            .build();
        assert_eq!(answer(&decide(&p, &req)), None, "allowed");
        assert_eq!(
            *checks.borrow(),
            vec![OutboundRequest {
                method: "POST".into(),
                authority: "authz.internal".into(),
                path: "/check/orders/7?expand=items".into(),
                headers: vec![Header::new("authorization", "Bearer alice-token")],
                body: Vec::new(),
                timeout_ms: 500,
            }]
        );
    }

    #[test]
    fn an_allowed_request_carries_the_user_the_service_named() {
        service(alice_only);
        let p: ExtAuth = prepare(CONFIG);
        let req = forwarded("GET", "/orders")
            .header("authorization", "Bearer alice-token")
            .header("x-user", "mallory")
            .build();
        // `run` applies the edit to the request's decision, as the gateway does.
        let Action::Forward(f) = run(&p, &req).action else {
            panic!("not forwarded");
        };
        let ops = f.request_headers.expect("request headers");
        assert_eq!(ops.set, vec![Header::new("x-user", "alice")]);
        assert_eq!(
            req.properties
                .borrow()
                .get(USER_PROPERTY)
                .map(String::as_str),
            Some("alice")
        );
    }

    #[test]
    fn only_the_service_names_the_user() {
        service(|_| reply(200, &[]));
        let p: ExtAuth = prepare(CONFIG);
        let req = forwarded("GET", "/").header("x-user", "mallory").build();
        let edit = decide(&p, &req);
        assert_eq!(answer(&edit), None);
        let ops = edit.request_headers.expect("request headers");
        assert_eq!(ops.remove, vec!["x-user".to_string()]);
        assert!(ops.set.is_empty());
        assert!(req.properties.borrow().is_empty());
    }

    #[test]
    fn denials_keep_401_and_403_and_make_anything_else_403() {
        let p: ExtAuth = prepare(CONFIG);
        service(alice_only);
        let denied = |req: RequestBuilder| answer(&decide(&p, &req.build()));
        assert_eq!(
            denied(forwarded("GET", "/")),
            Some((401, vec![Header::new("www-authenticate", "Bearer")]))
        );
        assert_eq!(
            denied(forwarded("GET", "/").header("authorization", "Bearer bob-token")),
            Some((403, Vec::new()))
        );
        for status in [302, 404, 429, 500] {
            service(move |_| reply(status, &[("www-authenticate", "Bearer")]));
            assert_eq!(
                denied(forwarded("GET", "/")),
                Some((403, Vec::new())),
                "{status}"
            );
        }
    }

    #[test]
    fn a_service_that_cannot_be_asked_means_503_or_with_fail_open_no_user() {
        service(|_| Err("connection refused".into()));
        let closed: ExtAuth = prepare(CONFIG);
        let req = || forwarded("GET", "/").header("x-user", "mallory").build();
        assert_eq!(answer(&decide(&closed, &req())), Some((503, Vec::new())));
        let open: ExtAuth = prepare(&CONFIG.replace('}', r#", "failOpen": true}"#));
        let edit = decide(&open, &req());
        assert_eq!(answer(&edit), None, "let through");
        assert_eq!(
            edit.request_headers.map(|m| m.remove),
            Some(vec!["x-user".to_string()])
        );
    }

    #[test]
    fn a_host_not_granted_is_never_called() {
        let checks = service(alice_only);
        grant(&["outbound:other.internal"]);
        let p: ExtAuth = prepare(CONFIG);
        let req = forwarded("GET", "/")
            .header("authorization", "Bearer alice-token")
            .build();
        assert_eq!(answer(&decide(&p, &req)), Some((503, Vec::new())));
        assert!(checks.borrow().is_empty());
    }

    #[test]
    fn bad_configs_name_the_field() {
        let field = |config: &str| match ExtAuth::prepare(&binding(), config) {
            Ok(_) => panic!("accepted {config}"),
            Err(e) => e.field,
        };
        assert_eq!(field("null"), "");
        assert_eq!(
            field(r#"{"authority": "http://authz.internal"}"#),
            "authority"
        );
        assert_eq!(field(r#"{"authority": ""}"#), "authority");
        let with = |extra: &str| format!(r#"{{"authority": "authz.internal", {extra}}}"#);
        assert_eq!(field(&with(r#""pathPrefix": "check""#)), "pathPrefix");
        assert_eq!(field(&with(r#""pathPrefix": "/check/""#)), "pathPrefix");
        assert_eq!(field(&with(r#""timeoutMs": 0"#)), "timeoutMs");
        assert_eq!(field(&with(r#""timeoutMs": 10001"#)), "timeoutMs");
        assert_eq!(field(&with(r#""userHeader": """#)), "userHeader");
        assert_eq!(field(&with(r#""failOpen": "yes""#)), "failOpen");
    }
}
