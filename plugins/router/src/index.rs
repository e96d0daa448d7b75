//! The route index: which routes could match a path, found by hash lookups instead of
//! testing every route in turn, so a VirtualService with a thousand routes costs about
//! what one with ten does. First-match order is kept: the candidates are tested in route
//! order with the full matcher; the index only skips routes whose URI condition cannot
//! hold.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::matching::UriKey;
use crate::route::CompiledRoute;

/// FNV-1a. The keys are the VirtualService's own URIs and prefixes, so the flooding
/// that SipHash's random keys guard against cannot happen (a client chooses only what
/// is looked up, which inserts nothing); a request hashes its path once per prefix
/// length, and SipHash was a tenth of the router's time at ten routes.
#[derive(Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Map = HashMap<String, Vec<u32>, BuildHasherDefault<Fnv>>;

#[derive(Debug, Default)]
pub struct RouteIndex {
    /// Exact URI -> routes with that exact match.
    exact: Map,
    /// URI prefix -> routes with that prefix match.
    prefix: Map,
    /// The lengths of the prefixes in `prefix`, so a lookup tries only those.
    prefix_lens: Vec<usize>,
    /// Routes to test whatever the path: no `uri`, a regex without a literal prefix
    /// (one with, `/static/.*`, is in `prefix` under it), `ignoreUriCase`, no match.
    always: Vec<u32>,
}

impl RouteIndex {
    pub fn new(routes: &[CompiledRoute]) -> Self {
        let mut index = RouteIndex::default();
        let mut lens = BTreeSet::new();
        for (i, route) in routes.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            match route.uri_keys() {
                None => index.always.push(i),
                Some(keys) => {
                    for key in keys {
                        let (map, text) = match key {
                            UriKey::Exact(e) => (&mut index.exact, e),
                            UriKey::Prefix(p) => {
                                lens.insert(p.len());
                                (&mut index.prefix, p)
                            }
                        };
                        let list = map.entry(text.to_string()).or_default();
                        if list.last() != Some(&i) {
                            list.push(i);
                        }
                    }
                }
            }
        }
        index.prefix_lens = lens.into_iter().collect();
        index
    }

    /// Indexes of the routes that may match `path`, ascending, without duplicates, into
    /// `out` (cleared first): the router passes the same vector for every request, so
    /// that finding them allocates nothing once it has grown.
    pub fn candidates(&self, path: &str, out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(&self.always);
        if let Some(list) = self.exact.get(path) {
            out.extend_from_slice(list);
        }
        for &len in &self.prefix_lens {
            let Some(head) = path.get(..len) else {
                if len > path.len() {
                    break;
                }
                // Not a char boundary: no prefix of this length can equal it.
                continue;
            };
            if let Some(list) = self.prefix.get(head) {
                out.extend_from_slice(list);
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The router passes one vector for every request: each call leaves in it that
    /// path's candidates only.
    #[test]
    fn candidates_replace_the_last_requests() {
        let routes: Vec<CompiledRoute> = [
            r#"{"match":[{"uri":{"prefix":"/a"}}],"route":[{"destination":{"host":"h"}}]}"#,
            r#"{"match":[{"uri":{"exact":"/b"}}],"route":[{"destination":{"host":"h"}}]}"#,
            r#"{"route":[{"destination":{"host":"h"}}]}"#,
        ]
        .iter()
        .enumerate()
        .map(|(i, json)| {
            let http = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            CompiledRoute::compile(i, &http, "default").unwrap_or_else(|e| panic!("{e:?}"))
        })
        .collect();
        let index = RouteIndex::new(&routes);
        let mut out = Vec::new();
        index.candidates("/a/x", &mut out);
        assert_eq!(out, [0, 2]);
        index.candidates("/b", &mut out);
        assert_eq!(out, [1, 2]);
        index.candidates("/c", &mut out);
        assert_eq!(out, [2]);
    }
}
