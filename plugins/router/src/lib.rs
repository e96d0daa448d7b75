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

use wasmgate_config::raw::VirtualServiceSpec;
use wasmgate_plugin_sdk::{
    Binding, ConfigError, Decision, Interest, PluginError, Policy, RequestHead, export_policy,
};

pub use matching::{CompiledMatch, Matcher};
pub use route::CompiledRoute;

/// The prepared routing table of one VirtualService.
#[derive(Debug)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    index: index::RouteIndex,
    interest: Vec<String>,
}

impl Policy for Router {
    fn prepare(binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        let spec: VirtualServiceSpec = serde_json::from_str(config).map_err(|e| ConfigError {
            field: String::new(),
            message: format!("not a VirtualService spec: {e}"),
        })?;
        let mut routes = Vec::with_capacity(spec.http.len());
        let mut interest = Vec::new();
        for (i, http) in spec.http.iter().enumerate() {
            let route = CompiledRoute::compile(i, http, &binding.namespace)?;
            interest.extend(route.header_names());
            routes.push(route);
        }
        interest.sort();
        interest.dedup();
        let index = index::RouteIndex::new(&routes);
        Ok(Router {
            routes,
            index,
            interest,
        })
    }

    fn interest(&self) -> Interest {
        Interest::headers(self.interest.iter().cloned())
    }

    fn on_request(
        &self,
        request: &RequestHead,
        current: Decision,
    ) -> Result<Option<Decision>, PluginError> {
        let query = matching::parse_query(&request.query);
        let candidates = self.index.candidates(&request.path);
        for route in candidates
            .iter()
            .filter_map(|&i| self.routes.get(i as usize))
        {
            if let Some(matched) = route.matches(request, &query) {
                return Ok(Some(route.decide(request, matched, current)));
            }
        }
        Ok(None)
    }
}

export_policy!(Router);

#[cfg(test)]
mod tests;
