//! Prepared edits (`host.prepare-edit`, `request.use-edit`): answers a plugin hands the
//! host once, while a binding is prepared, and then names per request. Returning an
//! edit costs the plugin building and lowering every string in it and the host lifting
//! them again; naming a prepared one costs one small call, and the host's copy (cloned
//! into the answer) needs no reading of guest memory. The router prepares each route's
//! forward this way.
//!
//! Kept per instance and binding (an instance recycled after a trap prepares again), at
//! most [`MAX_EDITS`] and [`MAX_BYTES`] per binding: a plugin cannot make the host hold
//! more for it than that.

use std::collections::HashMap;

use super::bindings::wasmgate::policy::types::{self, Action, Destination, Header, HeaderMutation};
use super::bindings::{Boxed, Edit};

/// Prepared edits per binding, at most.
pub const MAX_EDITS: usize = 10_000;
/// Bytes of prepared edits per binding (their strings and bodies, plus a little for
/// each record), at most.
pub const MAX_BYTES: usize = 4 << 20;

/// One instance's prepared edits, and the current call's use of them.
#[derive(Debug, Default)]
pub struct PreparedEdits {
    by_binding: HashMap<u32, Kept>,
    /// The binding being prepared (`prepare-edit` adds to its edits) or called in
    /// `on-request` (`use-edit` names one of its edits); `None` in any other call.
    current: Option<u32>,
    preparing: bool,
    /// The edit the current `on-request` named.
    used: Option<u32>,
}

#[derive(Debug, Default)]
struct Kept {
    edits: Vec<Edit>,
    bytes: usize,
}

impl PreparedEdits {
    /// `binding` is being prepared (again, after an instance is recycled: from scratch).
    pub fn preparing(&mut self, binding: u32) {
        self.by_binding.remove(&binding);
        self.current = Some(binding);
        self.preparing = true;
        self.used = None;
    }

    /// `on-request` for `binding` starts (`None`: another phase, where none is named).
    pub fn calling(&mut self, binding: Option<u32>) {
        self.current = binding;
        self.preparing = false;
        self.used = None;
    }

    /// `host.prepare-edit`.
    pub fn add(&mut self, edit: types::Edit) -> Result<u32, String> {
        let (Some(binding), true) = (self.current, self.preparing) else {
            return Err("prepare-edit is allowed in prepare only".into());
        };
        let kept = self.by_binding.entry(binding).or_default();
        if kept.edits.len() >= MAX_EDITS {
            return Err(format!("at most {MAX_EDITS} prepared edits per binding"));
        }
        let bytes = weigh_edit(&edit);
        if kept.bytes + bytes > MAX_BYTES {
            return Err(format!(
                "prepared edits of this binding would take {} bytes, over {MAX_BYTES}",
                kept.bytes + bytes
            ));
        }
        let id = u32::try_from(kept.edits.len()).map_err(|e| e.to_string())?;
        kept.bytes += bytes;
        kept.edits.push(edit.into());
        Ok(id)
    }

    /// `request.use-edit`: an error (the call traps) outside `on-request` or for a
    /// number this binding was not given.
    pub fn choose(&mut self, id: u32) -> wasmtime::Result<()> {
        let known = match (self.current, self.preparing) {
            (Some(binding), false) => self
                .by_binding
                .get(&binding)
                .is_some_and(|k| usize::try_from(id).is_ok_and(|i| i < k.edits.len())),
            _ => false,
        };
        if !known {
            return Err(wasmtime::format_err!(
                "use-edit({id}): not an edit prepared for this binding, or not in on-request"
            ));
        }
        self.used = Some(id);
        Ok(())
    }

    /// The current `on-request` returned `returned`: its answer, with the prepared edit
    /// it named (if any) under it.
    pub fn answer(&mut self, returned: Edit) -> Edit {
        let (Some(id), Some(binding)) = (self.used.take(), self.current) else {
            return returned;
        };
        match self
            .by_binding
            .get(&binding)
            .and_then(|k| k.edits.get(usize::try_from(id).ok()?))
        {
            Some(prepared) => laid_over(prepared, returned),
            None => returned,
        }
    }
}

/// `prepared` with the fields `returned` sets laid over it, as `request.use-edit` says:
/// a field set replaces the prepared one; header operations and log fields are added.
fn laid_over(prepared: &Edit, returned: Edit) -> Edit {
    let Edit {
        route,
        action,
        pick,
        delay_ms,
        request_headers,
        response_headers,
        log_fields,
    } = returned;
    let mut edit = prepared.clone();
    if route.is_some() {
        edit.route = route;
    }
    if action.is_some() {
        edit.action = action;
    }
    if pick.is_some() {
        edit.pick = pick;
    }
    if delay_ms.is_some() {
        edit.delay_ms = delay_ms;
    }
    join(&mut edit.request_headers, request_headers);
    join(&mut edit.response_headers, response_headers);
    edit.log_fields.extend(log_fields);
    edit
}

fn join(into: &mut Option<Boxed<HeaderMutation>>, more: Option<Boxed<HeaderMutation>>) {
    match (into.as_mut(), more) {
        (_, None) => {}
        (Some(m), Some(more)) => {
            let more = more.into_inner();
            m.set.extend(more.set);
            m.add.extend(more.add);
            m.remove.extend(more.remove);
        }
        (None, more) => *into = more,
    }
}

/// Roughly what an edit takes in the host: its strings and bodies, and a little for
/// each record and list.
fn weigh_edit(e: &types::Edit) -> usize {
    const RECORD: usize = 32;
    RECORD
        + e.route.as_ref().map_or(0, |r| RECORD + r.name.len())
        + e.action.as_ref().map_or(0, weigh_action)
        + weigh_mutation(e.request_headers.as_ref())
        + weigh_mutation(e.response_headers.as_ref())
        + weigh_headers(&e.log_fields)
}

fn weigh_action(a: &Action) -> usize {
    const RECORD: usize = 32;
    RECORD
        + match a {
            Action::NoRoute => 0,
            Action::Forward(f) => {
                f.destinations.iter().map(weigh_destination).sum::<usize>()
                    + weigh_mutation(f.request_headers.as_ref())
                    + weigh_mutation(f.response_headers.as_ref())
                    + f.rewrite_path.as_ref().map_or(0, String::len)
                    + f.rewrite_authority.as_ref().map_or(0, String::len)
                    + f.retries.as_ref().map_or(0, |r| RECORD + r.retry_on.len())
                    + f.mirrors
                        .iter()
                        .map(|m| RECORD + weigh_destination(&m.destination))
                        .sum::<usize>()
            }
            Action::Redirect(r) => r.location.len(),
            Action::Respond(d) => weigh_headers(&d.headers) + d.body.len(),
            Action::Abort(a) => a.grpc_status.as_ref().map_or(0, String::len),
        }
}

fn weigh_destination(d: &Destination) -> usize {
    64 + d.host.len()
        + d.subset.as_ref().map_or(0, String::len)
        + weigh_mutation(d.request_headers.as_ref())
        + weigh_mutation(d.response_headers.as_ref())
}

fn weigh_mutation(m: Option<&HeaderMutation>) -> usize {
    m.map_or(0, |m| {
        32 + weigh_headers(&m.set)
            + weigh_headers(&m.add)
            + m.remove.iter().map(|r| 24 + r.len()).sum::<usize>()
    })
}

fn weigh_headers(headers: &[Header]) -> usize {
    headers
        .iter()
        .map(|h| 48 + h.name.len() + h.value.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use types::{Forward, RouteRef};

    fn forward(host: &str) -> types::Edit {
        types::Edit {
            route: Some(RouteRef {
                index: 3,
                name: "r".into(),
            }),
            action: Some(Action::Forward(Forward {
                destinations: vec![Destination {
                    host: host.into(),
                    subset: None,
                    port: None,
                    weight: 100,
                    request_headers: None,
                    response_headers: None,
                }],
                request_headers: None,
                response_headers: None,
                rewrite_path: None,
                rewrite_authority: None,
                timeout_ms: None,
                retries: None,
                mirrors: Vec::new(),
            })),
            pick: None,
            delay_ms: None,
            request_headers: Some(HeaderMutation {
                set: vec![Header {
                    name: "a".into(),
                    value: "1".into(),
                }],
                add: Vec::new(),
                remove: Vec::new(),
            }),
            response_headers: None,
            log_fields: Vec::new(),
        }
    }

    #[test]
    fn edits_are_prepared_in_prepare_and_named_in_on_request_only() {
        let mut edits = PreparedEdits::default();
        assert!(edits.add(forward("a")).is_err(), "outside prepare");
        edits.preparing(7);
        assert_eq!(edits.add(forward("a")), Ok(0));
        assert_eq!(edits.add(forward("b")), Ok(1));
        edits.calling(None);
        assert!(edits.choose(0).is_err(), "not in on-request");
        edits.calling(Some(8));
        assert!(edits.choose(0).is_err(), "another binding's");
        edits.calling(Some(7));
        assert!(edits.choose(2).is_err(), "not given");
        edits.choose(0).expect("given");
        edits.choose(1).expect("a second replaces the first");
        let mut returned = Edit {
            pick: Some(0),
            ..Edit::default()
        };
        returned.request_headers = Some(Boxed::new(HeaderMutation {
            set: Vec::new(),
            add: vec![Header {
                name: "b".into(),
                value: "2".into(),
            }],
            remove: Vec::new(),
        }));
        let answer = edits.answer(returned);
        match answer.action.as_deref() {
            Some(Action::Forward(f)) => assert_eq!(f.destinations[0].host, "b"),
            other => panic!("the prepared forward: {other:?}"),
        }
        assert_eq!(answer.pick, Some(0), "a field set replaces");
        let ops = answer.request_headers.expect("headers");
        assert_eq!(
            (ops.set.len(), ops.add.len()),
            (1, 1),
            "operations are added"
        );
        // Named once: the next call answers only what it returns.
        edits.calling(Some(7));
        assert!(edits.answer(Edit::default()).action.is_none());
        // Preparing again starts over.
        edits.preparing(7);
        edits.calling(Some(7));
        assert!(edits.choose(0).is_err());
    }

    #[test]
    fn a_binding_holds_a_bounded_number_and_size_of_edits() {
        let mut edits = PreparedEdits::default();
        edits.preparing(1);
        let big = "x".repeat(MAX_BYTES / 4);
        for _ in 0..3 {
            edits.add(forward(&big)).expect("within the bytes");
        }
        let refused = edits.add(forward(&big)).expect_err("over the bytes");
        assert!(refused.contains("over 4194304"), "{refused}");
        edits.preparing(2);
        for _ in 0..MAX_EDITS {
            edits.add(forward("h")).expect("within the count");
        }
        assert!(edits.add(forward("h")).is_err(), "over the count");
    }
}
