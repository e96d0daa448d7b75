//! The router's matching: a VirtualService made of arbitrary matches and actions goes
//! through the loader's validation as the gateway's does; a spec it accepts must prepare
//! in the router, and matching any request against it must not panic.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use wasmgate_plugin_sdk::Policy as _;
use wasmgate_plugin_sdk::testing::{binding, request, try_decide};

#[derive(Arbitrary, Debug)]
enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

impl StringMatch {
    fn json(&self) -> Value {
        match self {
            StringMatch::Exact(s) => json!({ "exact": s }),
            StringMatch::Prefix(s) => json!({ "prefix": s }),
            StringMatch::Regex(s) => json!({ "regex": s }),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Match {
    uri: Option<StringMatch>,
    method: Option<StringMatch>,
    authority: Option<StringMatch>,
    scheme: Option<StringMatch>,
    headers: Vec<(String, StringMatch)>,
    query_params: Vec<(String, StringMatch)>,
    without_headers: Vec<(String, StringMatch)>,
    ignore_uri_case: bool,
    port: Option<u16>,
}

fn matches(pairs: &[(String, StringMatch)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, m)| (k.clone(), m.json()))
            .collect::<Map<_, _>>(),
    )
}

impl Match {
    fn json(&self) -> Value {
        let mut m = Map::new();
        for (key, value) in [
            ("uri", &self.uri),
            ("method", &self.method),
            ("authority", &self.authority),
            ("scheme", &self.scheme),
        ] {
            if let Some(v) = value {
                m.insert(key.into(), v.json());
            }
        }
        if !self.headers.is_empty() {
            m.insert("headers".into(), matches(&self.headers));
        }
        if !self.query_params.is_empty() {
            m.insert("queryParams".into(), matches(&self.query_params));
        }
        if !self.without_headers.is_empty() {
            m.insert("withoutHeaders".into(), matches(&self.without_headers));
        }
        if self.ignore_uri_case {
            m.insert("ignoreUriCase".into(), json!(true));
        }
        if let Some(p) = self.port {
            m.insert("port".into(), json!(p));
        }
        Value::Object(m)
    }
}

#[derive(Arbitrary, Debug)]
enum Action {
    Route {
        weights: Vec<u8>,
        rewrite: Option<String>,
    },
    Redirect {
        uri: Option<String>,
        authority: Option<String>,
        code: u16,
    },
    Direct {
        status: u16,
        body: String,
    },
}

#[derive(Arbitrary, Debug)]
struct Route {
    matches: Vec<Match>,
    action: Action,
}

impl Route {
    fn json(&self) -> Value {
        let mut r = Map::new();
        if !self.matches.is_empty() {
            r.insert(
                "match".into(),
                Value::Array(self.matches.iter().map(Match::json).collect()),
            );
        }
        match &self.action {
            Action::Route { weights, rewrite } => {
                let destinations: Vec<Value> = weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| json!({"destination": {"host": format!("s{i}.test")}, "weight": w}))
                    .collect();
                r.insert("route".into(), Value::Array(destinations));
                if let Some(uri) = rewrite {
                    r.insert("rewrite".into(), json!({ "uri": uri }));
                }
            }
            Action::Redirect {
                uri,
                authority,
                code,
            } => {
                let mut d = Map::new();
                if let Some(u) = uri {
                    d.insert("uri".into(), json!(u));
                }
                if let Some(a) = authority {
                    d.insert("authority".into(), json!(a));
                }
                d.insert("redirectCode".into(), json!(code));
                r.insert("redirect".into(), Value::Object(d));
            }
            Action::Direct { status, body } => {
                r.insert(
                    "directResponse".into(),
                    json!({"status": status, "body": {"string": body}}),
                );
            }
        }
        Value::Object(r)
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    hosts: Vec<String>,
    routes: Vec<Route>,
    method: String,
    path: String,
    authority: String,
    scheme: String,
    port: u16,
    headers: Vec<(String, String)>,
}

fuzz_target!(|input: Input| {
    let hosts: Vec<&str> = if input.hosts.is_empty() {
        vec!["*"]
    } else {
        input.hosts.iter().map(String::as_str).collect()
    };
    let doc = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "fuzz", "namespace": "default"},
        "spec": {"hosts": hosts, "http": input.routes.iter().map(Route::json).collect::<Vec<_>>()},
    });
    let Ok(config) = wasmgate_config::load_sources(&[("fuzz.yaml".into(), doc.to_string())]) else {
        return;
    };
    for vs in &config.virtual_services {
        let spec = serde_json::to_string(&vs.spec).expect("a spec serializes");
        let router = match wasmgate_router::Router::prepare(&binding(), &spec) {
            Ok(r) => r,
            Err(e) => panic!("validation accepted what the router refuses: {e:?}\n{spec}"),
        };
        let mut req = request(&input.method, &input.path)
            .authority(&input.authority)
            .scheme(&input.scheme)
            .port(input.port);
        for (name, value) in &input.headers {
            req = req.header(name, value);
        }
        let _ = try_decide(&router, &req.build());
    }
});
