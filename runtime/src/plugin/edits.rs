//! Prepared edits (`host.prepare-edit`, `request.use-edit`): answers a plugin hands the
//! host once, while a binding is prepared, and then names per request. Returning an
//! edit costs the plugin building and lowering every string in it and the host lifting
//! them again; naming a prepared one costs one small call, and the host's copy needs no
//! reading of guest memory. Its action and header operations are shared by every answer
//! (the action in a [`super::SharedBox`], the operations parsed once here,
//! [`Ops::prepared`], the route in one too): an answer copies nothing large. The router
//! prepares each route's forward this way (the route's own `headers`, inside the
//! forward, are parsed per request where they apply).
//!
//! Kept per instance (an instance recycled after a trap prepares again), numbered per
//! instance, each number naming its binding's edit only. Bounded: at most
//! [`MAX_EDIT_BYTES`] each (a bigger one is the plugin's to keep: a plugin that reads
//! the whole `decision()` gets a copy of it), [`MAX_EDITS`] and [`MAX_BYTES`] per
//! instance, and counted in the plugin's memory with its linear memory
//! (`--plugin-memory-total-mib`, [`super::budget::Limiter::charge`]).

use std::mem::size_of;

use super::bindings::Edit;
use super::bindings::wasmgate::policy::types::{self, Action, Destination, Header, HeaderMutation};
use super::context::extend_mutation;
use super::ops::Ops;

/// Prepared edits per instance, at most.
pub const MAX_EDITS: usize = 100_000;
/// Bytes of prepared edits per instance (as [`weigh`] counts them), at most.
pub const MAX_BYTES: usize = 16 << 20;
/// Bytes of one prepared edit, at most.
pub const MAX_EDIT_BYTES: usize = 64 << 10;

/// One instance's prepared edits, and the current call's use of them.
#[derive(Debug, Default)]
pub struct PreparedEdits {
    /// By number: the binding it was prepared for, and the edit.
    edits: Vec<(u32, Edit)>,
    bytes: usize,
    /// The binding being prepared (`prepare-edit` adds to its edits) or called in
    /// `on-request` (`use-edit` names one of its edits); `None` in any other call.
    current: Option<u32>,
    preparing: bool,
    /// The edit the current `on-request` named.
    used: Option<usize>,
}

impl PreparedEdits {
    /// `binding` is being prepared.
    pub fn preparing(&mut self, binding: u32) {
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

    /// `host.prepare-edit`, first step: may `edit` be kept, and what does it weigh?
    pub fn admit(&self, edit: &types::Edit) -> Result<usize, String> {
        if !(self.current.is_some() && self.preparing) {
            return Err("prepare-edit is allowed in prepare only".into());
        }
        if self.edits.len() >= MAX_EDITS {
            return Err(format!("at most {MAX_EDITS} prepared edits per instance"));
        }
        let bytes = weigh(edit);
        if bytes > MAX_EDIT_BYTES {
            return Err(format!(
                "a prepared edit of {bytes} bytes, over {MAX_EDIT_BYTES}: return it instead"
            ));
        }
        if self.bytes + bytes > MAX_BYTES {
            return Err(format!(
                "prepared edits of this instance would take {} bytes, over {MAX_BYTES}",
                self.bytes + bytes
            ));
        }
        Ok(bytes)
    }

    /// `host.prepare-edit`, once admitted (and its bytes charged): its number.
    pub fn add(&mut self, edit: types::Edit, bytes: usize) -> Result<u32, String> {
        let binding = self
            .current
            .ok_or("prepare-edit is allowed in prepare only")?;
        let id = u32::try_from(self.edits.len()).map_err(|e| e.to_string())?;
        self.bytes += bytes;
        let mut edit = Edit::from(edit);
        // Header operations parsed now, once, and shared by every answer naming it.
        edit.request_headers = edit.request_headers.map(|o| Ops::prepared(o.into_inner()));
        edit.response_headers = edit.response_headers.map(|o| Ops::prepared(o.into_inner()));
        self.edits.push((binding, edit));
        Ok(id)
    }

    /// `request.use-edit`: an error (the call traps) outside `on-request` or for a
    /// number not given for this binding.
    pub fn choose(&mut self, id: u32) -> wasmtime::Result<()> {
        let at = usize::try_from(id).ok().filter(|&i| {
            matches!(
                (self.current, self.preparing, self.edits.get(i)),
                (Some(binding), false, Some((of, _))) if *of == binding
            )
        });
        match at {
            Some(i) => {
                self.used = Some(i);
                Ok(())
            }
            None => Err(wasmtime::format_err!(
                "use-edit({id}): not an edit prepared for this binding, or not in on-request"
            )),
        }
    }

    /// The current `on-request` returned `returned`: its answer, with the prepared edit
    /// it named (if any) under it.
    pub fn answer(&mut self, returned: Edit) -> Edit {
        match self.used.take().and_then(|i| self.edits.get(i)) {
            Some((_, prepared)) => laid_over(prepared, returned),
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

fn join(into: &mut Option<Ops>, more: Option<Ops>) {
    match (into.take(), more) {
        (kept, None) => *into = kept,
        // Both: one mutation of the two, as text (rare: a plugin that names a prepared
        // edit usually returns no operations of its own).
        (Some(m), Some(more)) => {
            let mut m = m.into_inner();
            extend_mutation(&mut m, more.into_inner());
            *into = Some(Ops::new(m));
        }
        (None, more) => *into = more,
    }
}

/// What an edit takes in the host: its records, and its strings and bodies; its header
/// operations twice, as text and parsed ([`Ops::prepared`]).
fn weigh(e: &types::Edit) -> usize {
    size_of::<Edit>()
        // The route's shared box: its two reference counts, the record and its name.
        + e.route.as_ref().map_or(0, |r| {
            2 * size_of::<usize>() + size_of::<types::RouteRef>() + r.name.len()
        })
        + e.action.as_ref().map_or(0, weigh_action)
        + 2 * weigh_mutation(e.request_headers.as_ref())
        + 2 * weigh_mutation(e.response_headers.as_ref())
        + weigh_headers(&e.log_fields)
}

fn weigh_action(a: &Action) -> usize {
    // The action's shared box: its two reference counts and the action.
    2 * size_of::<usize>()
        + size_of::<Action>()
        + match a {
            Action::NoRoute => 0,
            Action::Forward(f) => {
                f.destinations.iter().map(weigh_destination).sum::<usize>()
                    + weigh_mutation(f.request_headers.as_ref())
                    + weigh_mutation(f.response_headers.as_ref())
                    + f.rewrite_path.as_ref().map_or(0, String::len)
                    + f.rewrite_authority.as_ref().map_or(0, String::len)
                    + f.retries.as_ref().map_or(0, |r| r.retry_on.len())
                    + f.mirrors
                        .iter()
                        .map(|m| weigh_destination(&m.destination) + size_of::<f64>())
                        .sum::<usize>()
            }
            Action::Redirect(r) => r.location.len(),
            Action::Respond(d) => weigh_headers(&d.headers) + d.body.len(),
            Action::Abort(a) => a.grpc_status.as_ref().map_or(0, String::len),
        }
}

fn weigh_destination(d: &Destination) -> usize {
    size_of::<Destination>()
        + d.host.len()
        + d.subset.as_ref().map_or(0, String::len)
        + weigh_mutation(d.request_headers.as_ref())
        + weigh_mutation(d.response_headers.as_ref())
}

fn weigh_mutation(m: Option<&HeaderMutation>) -> usize {
    m.map_or(0, |m| {
        size_of::<HeaderMutation>()
            + weigh_headers(&m.set)
            + weigh_headers(&m.add)
            + m.remove
                .iter()
                .map(|r| size_of::<String>() + r.len())
                .sum::<usize>()
    })
}

fn weigh_headers(headers: &[Header]) -> usize {
    headers
        .iter()
        .map(|h| size_of::<Header>() + h.name.len() + h.value.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::super::SharedBox;
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

    /// `prepare-edit` as the host does it, without the plugin's memory budget.
    fn add(edits: &mut PreparedEdits, edit: types::Edit) -> Result<u32, String> {
        let bytes = edits.admit(&edit)?;
        edits.add(edit, bytes)
    }

    #[test]
    fn edits_are_prepared_in_prepare_and_named_in_on_request_only() {
        let mut edits = PreparedEdits::default();
        assert!(add(&mut edits, forward("a")).is_err(), "outside prepare");
        edits.preparing(7);
        assert_eq!(add(&mut edits, forward("a")), Ok(0));
        assert_eq!(add(&mut edits, forward("b")), Ok(1));
        edits.preparing(8);
        assert_eq!(
            add(&mut edits, forward("c")),
            Ok(2),
            "numbered per instance"
        );
        edits.calling(None);
        assert!(edits.choose(0).is_err(), "not in on-request");
        edits.calling(Some(8));
        assert!(edits.choose(0).is_err(), "another binding's");
        edits.choose(2).expect("its own");
        edits.calling(Some(7));
        assert!(edits.choose(2).is_err(), "another binding's");
        assert!(edits.choose(3).is_err(), "not given");
        edits.choose(0).expect("given");
        edits.choose(1).expect("a second replaces the first");
        let mut returned = Edit {
            pick: Some(0),
            ..Edit::default()
        };
        returned.request_headers = Some(Ops::new(HeaderMutation {
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
        assert_eq!(
            answer.route.as_deref().map(|r| (r.index, r.name.as_str())),
            Some((3, "r")),
            "the prepared route, where the returned edit sets none"
        );
        // A route the returned edit sets replaces the prepared one.
        edits.calling(Some(7));
        edits.choose(0).expect("given");
        let own = Edit {
            route: Some(SharedBox::new(RouteRef {
                index: 9,
                name: "own".into(),
            })),
            ..Edit::default()
        };
        let answer = edits.answer(own);
        assert_eq!(
            answer.route.as_deref().map(|r| (r.index, r.name.as_str())),
            Some((9, "own"))
        );
        // Named once: the next call answers only what it returns.
        edits.calling(Some(7));
        assert!(edits.answer(Edit::default()).action.is_none());
    }

    #[test]
    fn an_instance_holds_a_bounded_number_and_size_of_edits() {
        let mut edits = PreparedEdits::default();
        edits.preparing(1);
        let refused = add(&mut edits, forward(&"x".repeat(MAX_EDIT_BYTES))).expect_err("too big");
        assert!(refused.contains("return it instead"), "{refused}");
        let big = "x".repeat(MAX_EDIT_BYTES - 1024);
        let fit = MAX_BYTES / weigh(&forward(&big));
        for _ in 0..fit {
            add(&mut edits, forward(&big)).expect("within the bytes");
        }
        let refused = add(&mut edits, forward(&big)).expect_err("over the bytes");
        assert!(refused.contains("over 16777216"), "{refused}");
        let mut edits = PreparedEdits::default();
        edits.preparing(2);
        let small = || types::Edit {
            action: None,
            request_headers: None,
            ..forward("h")
        };
        for _ in 0..MAX_EDITS {
            add(&mut edits, small()).expect("within the count");
        }
        assert!(add(&mut edits, small()).is_err(), "over the count");
    }
}
