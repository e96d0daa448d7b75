//! The Envoy side of `bench/run.py`'s `plugin` scenario: a proxy-wasm HTTP filter that
//! does what `plugins/add-headers` does there, so the two gateways run the same user
//! plugin. Its configuration (the filter's `configuration` in Envoy) has the shape of
//! add-headers' `pluginConfig` and is parsed once, when the plugin is configured:
//!
//! ```json
//! {"requestHeaders": {"x-plugin-saw": "yes"}, "responseHeaders": {"x-powered-by": "wasmgate"}}
//! ```
//!
//! Per request it sets each request header before the request goes upstream and each
//! response header before the response goes downstream (set, i.e. replace, as
//! add-headers' `set` edits do). Nothing else: no logging, no properties read.

use std::collections::BTreeMap;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    request_headers: BTreeMap<String, String>,
    response_headers: BTreeMap<String, String>,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: Rc::default() })
    });
}}

/// One per plugin instance: holds the parsed configuration the requests share.
struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            return true;
        };
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => {
                self.config = Rc::new(config);
                true
            }
            Err(e) => {
                let _ = proxy_wasm::hostcalls::log(
                    LogLevel::Error,
                    &format!("proxy-wasm-add-header: bad configuration: {e}"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AddHeader {
            config: Rc::clone(&self.config),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One per request.
struct AddHeader {
    config: Rc<Config>,
}

impl Context for AddHeader {}

impl HttpContext for AddHeader {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.config.request_headers {
            self.set_http_request_header(name, Some(value));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.config.response_headers {
            self.set_http_response_header(name, Some(value));
        }
        Action::Continue
    }
}
