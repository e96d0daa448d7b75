//! A fixed-window rate limiter: at most `limit` requests per client in a window of
//! `windowSeconds`; past that, 429 with `retry-after`. The counts live in the gateway's
//! state store (the WasmPlugin grants `state`), so every instance of the plugin shares
//! them, and they survive a trap or a reload that keeps the plugin.
//!
//! ```yaml
//! pluginConfig:
//!   limit: 3              # requests per client per window (at least 1)
//!   windowSeconds: 60     # the window (at least 1; default 60)
//!   header: x-user        # optional: count per value of this request header,
//!   property: auth.user   # optional: or of this property, set by an earlier plugin
//! ```
//!
//! The client is the `property` when an earlier plugin set it, else the `header` when
//! the request carries it, else the client's IP address.

use std::time::Duration;

use serde::Deserialize;
use wasmgate_plugin_sdk::{
    Action, Binding, ConfigError, DirectResponse, Edit, Header, PluginError, Policy, Request,
    export_policy, parse_config, state,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    limit: u32,
    #[serde(default = "a_minute")]
    window_seconds: u32,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    property: Option<String>,
}

fn a_minute() -> u32 {
    60
}

#[derive(Debug)]
pub struct RateLimit {
    limit: i64,
    window: Duration,
    header: Option<String>,
    property: Option<String>,
}

/// State keys are at most 256 bytes: an identity longer than this is cut (two clients
/// whose identities share these first bytes share a count).
const MAX_IDENTITY: usize = 200;

fn invalid(field: &str, message: &str) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

impl Policy for RateLimit {
    fn prepare(_binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        let config: Config = parse_config(config)?;
        if config.limit == 0 {
            return Err(invalid("limit", "must be at least 1"));
        }
        if config.window_seconds == 0 {
            return Err(invalid("windowSeconds", "must be at least 1"));
        }
        for (field, name) in [("header", &config.header), ("property", &config.property)] {
            if name.as_deref() == Some("") {
                return Err(invalid(field, "must not be empty"));
            }
        }
        Ok(RateLimit {
            limit: i64::from(config.limit),
            window: Duration::from_secs(u64::from(config.window_seconds)),
            header: config.header,
            property: config.property,
        })
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        // The TTL applies only when this increment creates the key: the window opens at
        // the client's first request, and once it expired the count starts again at 1.
        let count = state::increment(&self.key(request), 1, Some(self.window))
            // A store that refuses (not granted, full) fails the call: the WasmPlugin's
            // failStrategy decides whether the request goes on (FAIL_OPEN) or gets 500.
            .map_err(|message| PluginError { message })?;
        if count > self.limit {
            // The count does not say when its window opened: it ends at most a whole
            // window from now.
            let retry_after = self.window.as_secs().to_string();
            return Ok(Edit::action(Action::Respond(DirectResponse {
                status: 429,
                headers: vec![Header::new("retry-after", retry_after)],
                body: b"rate limit exceeded\n".to_vec(),
            })));
        }
        // Response header operations apply to whatever answers the request: the
        // upstream's response, or a local reply such as a direct response.
        let mut edit = Edit::keep();
        edit.set_response_header("x-ratelimit-limit", &self.limit.to_string())
            .set_response_header("x-ratelimit-remaining", &(self.limit - count).to_string());
        Ok(edit)
    }
}

impl RateLimit {
    /// The state key of the request's client. Each source has its own prefix, so a
    /// header value that reads like an address does not share that address's count.
    fn key(&self, request: &Request) -> String {
        let named = |value: Option<String>| value.filter(|v| !v.is_empty());
        let (source, identity) = if let Some(v) = named(
            self.property
                .as_deref()
                .and_then(|name| request.property(name)),
        ) {
            ("property", v)
        } else if let Some(v) = named(self.header.as_deref().and_then(|name| request.header(name)))
        {
            ("header", v)
        } else {
            ("client", request.client_address())
        };
        format!("{source}:{}", cut(&identity, MAX_IDENTITY))
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

export_policy!(RateLimit);

// Plugins are plain Rust: these tests run natively with `cargo test`.
#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_plugin_sdk::testing::{
        RequestBuilder, binding, clear_state, decide, grant, prepare, request, set_clock,
        try_decide,
    };

    /// Some Tuesday in 2023, in Unix nanoseconds.
    const T0: u64 = 1_700_000_000_000_000_000;
    const SECOND: u64 = 1_000_000_000;

    /// A limiter with `config`, its store granted, empty, and the clock stopped at T0.
    /// (Each test runs on a thread of its own, with a store of its own; this says so.)
    fn limiter(config: &str) -> RateLimit {
        grant(&["state"]);
        clear_state();
        set_clock(Some(T0));
        prepare(config)
    }

    fn get() -> RequestBuilder {
        request("GET", "/")
    }

    /// The status the client gets (200: the route's own answer, kept), and the headers
    /// the plugin adds.
    fn send(p: &RateLimit, req: RequestBuilder) -> (u16, Vec<Header>) {
        let edit = decide(p, &req.build());
        match edit.action {
            None => (
                200,
                edit.response_headers.map(|m| m.set).unwrap_or_default(),
            ),
            Some(Action::Respond(r)) => (r.status, r.headers),
            Some(other) => panic!("neither kept nor answered: {other:?}"),
        }
    }

    fn status(p: &RateLimit, req: RequestBuilder) -> u16 {
        send(p, req).0
    }

    #[test]
    fn allows_the_limit_then_answers_429() {
        let p = limiter(r#"{"limit": 3, "windowSeconds": 60}"#);
        for remaining in ["2", "1", "0"] {
            assert_eq!(
                send(&p, get()),
                (
                    200,
                    vec![
                        Header::new("x-ratelimit-limit", "3"),
                        Header::new("x-ratelimit-remaining", remaining)
                    ]
                )
            );
        }
        for _ in 0..2 {
            assert_eq!(
                send(&p, get()),
                (429, vec![Header::new("retry-after", "60")])
            );
        }
    }

    #[test]
    fn a_new_window_opens_when_the_last_one_expired() {
        let p = limiter(r#"{"limit": 1, "windowSeconds": 10}"#);
        assert_eq!(status(&p, get()), 200);
        set_clock(Some(T0 + 10 * SECOND - 1));
        assert_eq!(status(&p, get()), 429, "still the first window");
        set_clock(Some(T0 + 10 * SECOND));
        assert_eq!(status(&p, get()), 200, "a new window");
        assert_eq!(status(&p, get()), 429);
    }

    #[test]
    fn counts_per_header_value_else_per_client_address() {
        let p = limiter(r#"{"limit": 1, "header": "x-user"}"#);
        let user = |name| get().header("X-User", name);
        assert_eq!(status(&p, user("alice").client("10.0.0.1")), 200);
        assert_eq!(status(&p, user("alice").client("10.0.0.2")), 429);
        assert_eq!(status(&p, user("bob").client("10.0.0.1")), 200);
        // Without the header (or with an empty one) the client address counts.
        assert_eq!(status(&p, get().client("10.0.0.1")), 200);
        assert_eq!(status(&p, user("").client("10.0.0.1")), 429);
        assert_eq!(status(&p, get().client("10.0.0.2")), 200);
        // A header value that reads like an address is not that address.
        assert_eq!(status(&p, user("10.0.0.3")), 200);
        assert_eq!(status(&p, get().client("10.0.0.3")), 200);
    }

    #[test]
    fn a_property_an_earlier_plugin_set_wins_over_the_header() {
        let p = limiter(r#"{"limit": 1, "header": "x-user", "property": "auth.user"}"#);
        let verified = |name| get().property("auth.user", name);
        assert_eq!(status(&p, verified("alice").header("x-user", "a")), 200);
        // Changing the header (the client can) does not buy another request.
        assert_eq!(status(&p, verified("alice").header("x-user", "b")), 429);
        assert_eq!(status(&p, verified("bob")), 200);
    }

    #[test]
    fn long_identities_are_cut_to_fit_a_key() {
        let p = limiter(r#"{"limit": 1, "header": "x-user"}"#);
        let long = "é".repeat(300);
        assert_eq!(status(&p, get().header("x-user", &long)), 200);
        assert_eq!(status(&p, get().header("x-user", &long)), 429);
    }

    #[test]
    fn without_the_state_grant_the_call_fails() {
        let p = limiter(r#"{"limit": 1}"#);
        grant(&[]);
        let e = try_decide(&p, &get().build()).expect_err("counted without a store");
        assert!(
            e.message.contains("wasmgate.io/capabilities"),
            "{}",
            e.message
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let field = |config: &str| match RateLimit::prepare(&binding(), config) {
            Ok(_) => panic!("accepted {config}"),
            Err(e) => (e.field, e.message),
        };
        assert_eq!(
            field(r#"{"limit": 0}"#),
            ("limit".into(), "must be at least 1".into())
        );
        assert_eq!(
            field(r#"{"limit": 1, "windowSeconds": 0}"#).0,
            "windowSeconds"
        );
        assert_eq!(field(r#"{"limit": 1, "header": ""}"#).0, "header");
        assert_eq!(
            field("null"),
            (String::new(), "missing field `limit`".into())
        );
        assert_eq!(field(r#"{"limit": 1, "windowSecs": 5}"#).0, "windowSecs");
    }
}
