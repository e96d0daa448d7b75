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

use std::cell::{Cell, RefCell};

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
    /// The header names the routes match on (`headers`, `withoutHeaders`), lowercase,
    /// each once, in route order: the first [`GUESSED_HEADERS`].
    header_names: Vec<String>,
    /// Which of [`Router::header_names`] to read with the path, in one host call, before
    /// the route index asks for the path: the one the last request that read a header
    /// other than this one read first (at first the first in route order). Traffic
    /// mostly repeats its kind of request (`end-user` for `/reviews`), so the guess is
    /// mostly right; a wrong one costs a header looked up for nothing. What a request
    /// decides does not depend on it.
    read_with_path: Cell<Option<usize>>,
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
        let header_names = header_names(&routes);
        let read_with_path = Cell::new((!header_names.is_empty()).then_some(0));
        Ok(Router {
            routes,
            index,
            candidates: RefCell::new(Vec::new()),
            header_names,
            read_with_path,
        })
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        // What the routes read is asked of the host once, when a route first reads it.
        let view = RequestView::new(request);
        let guess = self
            .read_with_path
            .get()
            .and_then(|i| self.header_names.get(i));
        if let Some(name) = guess {
            view.read_header_with_path(name);
        }
        let edit = self.decide(&view);
        if let Some(name) = view.better_read_with_path()
            && let Some(i) = self.header_names.iter().position(|n| text::eq(n, name))
        {
            self.read_with_path.set(Some(i));
        }
        Ok(edit)
    }
}

impl Router {
    /// The edit of the first route that matches, or none.
    fn decide<'r>(&'r self, view: &RequestView<'r>) -> Edit {
        let mut candidates = self.candidates.borrow_mut();
        self.index.candidates(view.path(), &mut candidates);
        for route in candidates
            .iter()
            .filter_map(|&i| self.routes.get(i as usize))
        {
            if let Some(matched) = route.matches(view) {
                return route.decide(view, matched);
            }
        }
        Edit::keep()
    }
}

/// The header names `routes` match on (names are lowercase), each once, in route order:
/// the first [`GUESSED_HEADERS`], which are all the router guesses among.
fn header_names(routes: &[CompiledRoute]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in routes.iter().flat_map(CompiledRoute::header_names) {
        if names.len() == GUESSED_HEADERS {
            break;
        }
        if !names.iter().any(|n| text::eq(n, name)) {
            names.push(name.to_string());
        }
    }
    names
}

/// At most this many header names to guess among (a VirtualService names one or two);
/// the others are read when a route needs them, as ever.
const GUESSED_HEADERS: usize = 16;

export_policy!(Router);

#[cfg(test)]
mod tests;
