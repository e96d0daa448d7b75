//! First-party routing: Istio's HTTPRoute matching and actions for one VirtualService.
//!
//! Its config is the VirtualService `spec` as JSON (the host's validated copy). Matching
//! follows Istio: the `match` list is OR, the fields of one match are AND, the first
//! matching route wins, and a route without `match` matches everything. `uri`,
//! `authority`, `scheme`, `method`, `headers`, `queryParams` take `exact`, `prefix` or
//! `regex` (a full match, RE2 syntax); `ignoreUriCase` applies to exact and prefix URI
//! matches; `withoutHeaders` treats a missing header as empty. No match leaves the
//! decision at "no route" (the host answers 404 once every VirtualService of the host has
//! had its turn). A match produces a forward (weighted destinations, header operations,
//! rewrite, timeout, retries, mirrors), a redirect, or a direct response; CORS preflights
//! are answered here too.

mod index;
mod matching;
mod route;
mod text;

use std::cell::RefCell;

use wasmgate_config::raw::VirtualServiceSpec;
use wasmgate_plugin_sdk::{
    Binding, ConfigError, Edit, PluginError, Policy, Request, export_policy,
};

pub use matching::{CompiledMatch, Matcher, RequestView};
pub use route::CompiledRoute;

/// The prepared routing table of one VirtualService.
#[derive(Debug)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    index: index::RouteIndex,
    /// The candidates of the request being decided ([`index::RouteIndex::candidates`]),
    /// kept between requests so that they allocate nothing. An instance decides one
    /// request at a time.
    candidates: RefCell<Vec<u32>>,
    /// The one header name the routes match on, when they name exactly one (`end-user`
    /// in Istio's samples): read with the path in one host call, before the route index
    /// asks for the path. With none or several the routes read headers as they need
    /// them.
    read_with_path: Option<String>,
}

impl Policy for Router {
    fn prepare(binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        let spec: VirtualServiceSpec = serde_json::from_str(config).map_err(|e| ConfigError {
            field: String::new(),
            message: format!("not a VirtualService spec: {e}"),
        })?;
        let routes = spec
            .http
            .iter()
            .enumerate()
            .map(|(i, http)| CompiledRoute::compile(i, http, &binding.namespace))
            .collect::<Result<Vec<_>, _>>()?;
        let index = index::RouteIndex::new(&routes);
        let read_with_path = the_one_header(&routes);
        Ok(Router {
            routes,
            index,
            candidates: RefCell::new(Vec::new()),
            read_with_path,
        })
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        // What the routes read is asked of the host once, when a route first reads it.
        let view = RequestView::new(request);
        if let Some(name) = &self.read_with_path {
            view.read_header_with_path(name);
        }
        let mut candidates = self.candidates.borrow_mut();
        self.index.candidates(view.path(), &mut candidates);
        for route in candidates
            .iter()
            .filter_map(|&i| self.routes.get(i as usize))
        {
            if let Some(matched) = route.matches(&view) {
                return Ok(route.decide(&view, matched));
            }
        }
        Ok(Edit::keep())
    }
}

/// The header name every header condition of `routes` names, when there is exactly one.
fn the_one_header(routes: &[CompiledRoute]) -> Option<String> {
    let mut names = routes.iter().flat_map(CompiledRoute::header_names);
    let first = names.next()?;
    names
        .all(|name| text::eq(name, first))
        .then(|| first.to_string())
}

export_policy!(Router);

#[cfg(test)]
mod tests;
