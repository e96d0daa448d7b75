//! Istio's header operations (a route's `headers`, a plugin's `header-mutation`): remove,
//! then set (replace), then add (append).
//!
//! An edit's operations are held as [`Ops`]: lifted from a plugin's answer (strings,
//! parsed when the request goes out), or parsed once when the plugin prepared the edit
//! (`host.prepare-edit`) and then shared by every answer that names it. A chain's state
//! keeps the operations its edits join to a forward as a list beside the decision
//! (`context::Joined`, applied by [`apply`]), so naming a prepared edit costs a
//! reference count, not a copy of its strings and a parse of its headers per request.

use std::ops::Deref;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::types::{Header, HeaderMutation};

/// Headers that frame the message or belong to one connection: the gateway sets them
/// itself, so route and plugin edits of them are skipped. A plugin that set
/// `content-length: x` would otherwise make the response unsendable (the client got
/// nothing: found by the decision fuzz target).
const FRAMING: [HeaderName; 8] = [
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// An edit's header operations as the host holds them.
#[derive(Clone, Debug)]
pub enum Ops {
    /// As a plugin returned them.
    Lifted(Box<HeaderMutation>),
    /// From a prepared edit: parsed once, shared.
    Prepared(Arc<Parsed>),
}

/// Header operations parsed into names and values (the invalid and framing ones left
/// out, with a debug log, as [`apply_mutation`] skips them), with the text they came from
/// for a plugin that reads the decision.
#[derive(Debug)]
pub struct Parsed {
    text: HeaderMutation,
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl Ops {
    pub fn new(m: HeaderMutation) -> Self {
        Ops::Lifted(Box::new(m))
    }

    /// Parsed now, to be applied to many requests.
    pub fn prepared(m: HeaderMutation) -> Self {
        Ops::Prepared(Arc::new(Parsed {
            remove: m.remove.iter().filter_map(|n| removal(n)).collect(),
            set: m.set.iter().filter_map(parse).collect(),
            add: m.add.iter().filter_map(parse).collect(),
            text: m,
        }))
    }

    /// The operations as text (a copy, for prepared ones).
    pub fn into_inner(self) -> HeaderMutation {
        match self {
            Ops::Lifted(m) => *m,
            Ops::Prepared(p) => p.text.clone(),
        }
    }
}

impl Deref for Ops {
    type Target = HeaderMutation;
    fn deref(&self) -> &HeaderMutation {
        match self {
            Ops::Lifted(m) => m,
            Ops::Prepared(p) => &p.text,
        }
    }
}

/// Apply Istio header operations (if any): remove, then set (replace), then add
/// (append). Invalid names or values, and framing headers ([`FRAMING`]), are skipped
/// with a debug log.
pub fn apply_mutation(headers: &mut HeaderMap, m: Option<&HeaderMutation>) {
    apply(headers, m, &[]);
}

/// Apply `own` (a forward's) and then `joined` (the operations a chain's edits joined to
/// it, in order) as the one mutation they make together: every removal, then every set,
/// then every add.
pub fn apply(headers: &mut HeaderMap, own: Option<&HeaderMutation>, joined: &[Ops]) {
    for pass in [Pass::Remove, Pass::Set, Pass::Add] {
        if let Some(m) = own {
            pass.text(headers, m);
        }
        for ops in joined {
            match ops {
                Ops::Lifted(m) => pass.text(headers, m),
                Ops::Prepared(p) => pass.parsed(headers, p),
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Pass {
    Remove,
    Set,
    Add,
}

impl Pass {
    fn text(self, headers: &mut HeaderMap, m: &HeaderMutation) {
        match self {
            Pass::Remove => {
                for name in m.remove.iter().filter_map(|n| removal(n)) {
                    headers.remove(name);
                }
            }
            Pass::Set => {
                for (name, value) in m.set.iter().filter_map(parse) {
                    headers.insert(name, value);
                }
            }
            Pass::Add => append_all(headers, &m.add),
        }
    }

    fn parsed(self, headers: &mut HeaderMap, p: &Parsed) {
        match self {
            Pass::Remove => {
                for name in &p.remove {
                    headers.remove(name);
                }
            }
            Pass::Set => {
                for (name, value) in &p.set {
                    headers.insert(name.clone(), value.clone());
                }
            }
            Pass::Add => {
                for (name, value) in &p.add {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
    }
}

/// Append each of `list` (a policy's headers; invalid ones are skipped with a debug log).
pub fn append_all(headers: &mut HeaderMap, list: &[Header]) {
    for (name, value) in list.iter().filter_map(parse) {
        headers.append(name, value);
    }
}

/// A header to remove, unless it is invalid or framing.
fn removal(name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.as_bytes())
        .ok()
        .filter(|n| !FRAMING.contains(n))
}

fn parse(h: &Header) -> Option<(HeaderName, HeaderValue)> {
    let name = HeaderName::from_bytes(h.name.as_bytes())
        .ok()
        .filter(|n| !FRAMING.contains(n));
    let value = HeaderValue::from_str(&h.value).ok();
    if name.is_none() || value.is_none() {
        tracing::debug!(name = %h.name, "policy produced an invalid or framing header; skipped");
    }
    Some((name?, value?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn mutation_order_is_remove_set_add() {
        let mut headers = HeaderMap::new();
        headers.insert("a", HeaderValue::from_static("1"));
        headers.insert("b", HeaderValue::from_static("1"));
        apply_mutation(
            &mut headers,
            Some(&HeaderMutation {
                set: vec![h("a", "2"), h("bad name", "x")],
                add: vec![h("a", "3"), h("c", "1")],
                remove: vec!["b".into(), "c".into()],
            }),
        );
        let a: Vec<_> = headers.get_all("a").iter().collect();
        assert_eq!(a, ["2", "3"]);
        assert!(headers.get("b").is_none());
        assert_eq!(headers["c"], "1");
    }

    #[test]
    fn edits_of_framing_headers_are_skipped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let m = HeaderMutation {
            set: vec![h("content-length", "transfer-encoding"), h("x-a", "1")],
            add: vec![h("Transfer-Encoding", "chunked"), h("connection", "close")],
            remove: vec!["content-length".into(), "x-gone".into()],
        };
        apply_mutation(&mut headers, Some(&m));
        assert_eq!(
            headers.get(header::CONTENT_LENGTH).map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
        assert!(!headers.contains_key(header::TRANSFER_ENCODING));
        assert!(!headers.contains_key(header::CONNECTION));
        assert_eq!(headers.get("x-a").map(|v| v.as_bytes()), Some(&b"1"[..]));
    }

    #[test]
    fn joined_operations_apply_as_one_mutation_prepared_or_not() {
        let own = HeaderMutation {
            set: vec![h("a", "own")],
            add: vec![h("b", "own")],
            remove: Vec::new(),
        };
        let first = HeaderMutation {
            set: vec![h("a", "first"), h("content-length", "9")],
            add: vec![h("c", "first"), h("bad name", "x")],
            remove: vec!["a".into(), "transfer-encoding".into()],
        };
        let second = HeaderMutation {
            set: vec![h("c", "second")],
            add: vec![h("b", "second")],
            remove: vec!["b".into(), "x-gone".into()],
        };
        let start = || {
            let mut headers = HeaderMap::new();
            headers.insert("x-gone", HeaderValue::from_static("1"));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            headers
        };
        // The reference: the three joined into one mutation by hand.
        let mut merged = own.clone();
        for m in [&first, &second] {
            merged.set.extend(m.set.clone());
            merged.add.extend(m.add.clone());
            merged.remove.extend(m.remove.clone());
        }
        let mut expected = start();
        apply_mutation(&mut expected, Some(&merged));
        for (a, b) in [
            (Ops::new(first.clone()), Ops::new(second.clone())),
            (Ops::prepared(first.clone()), Ops::new(second.clone())),
            (Ops::new(first.clone()), Ops::prepared(second.clone())),
            (Ops::prepared(first.clone()), Ops::prepared(second.clone())),
        ] {
            let mut headers = start();
            apply(&mut headers, Some(&own), &[a, b]);
            assert_eq!(headers, expected);
        }
        // Removals go first whatever the order: `first` removing `a` does not undo the
        // sets; `second` removing `b` does not undo the adds.
        let all = |n: &str| -> Vec<_> { expected.get_all(n).iter().cloned().collect() };
        assert_eq!(all("a"), ["first"]);
        assert_eq!(all("b"), ["own", "second"]);
        assert_eq!(all("c"), ["second", "first"]);
        assert!(!expected.contains_key("x-gone"));
        assert_eq!(expected[header::CONTENT_LENGTH], "5");
        assert_eq!(expected[header::TRANSFER_ENCODING], "chunked");
        // The prepared ones still read as the text they came from.
        let text = format!("{first:?}");
        assert_eq!(format!("{:?}", *Ops::prepared(first.clone())), text);
        assert_eq!(format!("{:?}", Ops::prepared(first).into_inner()), text);
    }
}
