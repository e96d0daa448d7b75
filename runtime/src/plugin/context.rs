//! What a plugin reads of a request and a response: host-owned views behind the WIT
//! `request` and `response` resources. One [`RequestView`] serves every call of one
//! request (its chain, then the response and log phases), so a plugin reads the same
//! head, sees the decision so far, and sees the properties earlier plugins set; each
//! call gets a handle of its own saying whether it may read the body.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use super::ops::Ops;
use super::types::{
    Abort, Action, ActionKind, Decision, Destination, Forward, Header, HeaderMutation, RouteRef,
};
use super::{Edit, SharedBox};

/// Most properties one request may carry, their longest name and value.
pub const MAX_PROPERTIES: usize = 64;
pub const MAX_PROPERTY_NAME: usize = 128;
pub const MAX_PROPERTY_VALUE: usize = 4096;
/// The identity properties (`request.auth.claims` is a token's whole payload) may be as
/// large as a request head: a claim a policy checks is never dropped for its size.
pub const MAX_IDENTITY_PROPERTY_VALUE: usize = 64 << 10;

/// A request as the chain's plugins see it.
#[derive(Debug)]
pub struct RequestView {
    /// `x-request-id` (shares the header's bytes).
    pub id: HeaderValue,
    pub method: Method,
    pub scheme: &'static str,
    /// `Host` or `:authority` (shares the header's bytes).
    pub authority: HeaderValue,
    /// The request target (normalized); a clone shares its bytes.
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub client: IpAddr,
    pub port: u16,
    pub sni: Option<String>,
    /// The whole request body, buffered for the plugins that asked; `None` when none
    /// asked or it was larger than the largest limit.
    pub body: Option<Bytes>,
    /// The client certificate's identity (its SPIFFE URI SAN without `spiffe://`), when
    /// the connection is mutual TLS: property `source.principal`.
    pub principal: Option<String>,
    state: Mutex<ChainState>,
}

/// Properties only the gateway sets: the request's JWT identity (set by its
/// RequestAuthentication component) and the peer's certificate identity.
pub fn is_identity_property(name: &str) -> bool {
    name.starts_with("request.auth.") || name.starts_with("source.")
}

/// Whose chain runs: shared by the chain and every request it serves.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChainNames {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    /// `namespace/name` of the VirtualService.
    pub virtual_service: String,
}

/// What changes while the chain runs.
#[derive(Debug)]
pub struct ChainState {
    pub names: Arc<ChainNames>,
    /// The decision so far. A forward here holds its own header operations only: those
    /// edits joined to it are in `joined`, and [`ChainState::decision`] gives them
    /// together, as a plugin reads them.
    pub decision: Current,
    /// Response header operations for a local reply (edits made while the decision was
    /// not a forward; a forward keeps its own).
    pub reply_ops: Vec<HeaderMutation>,
    /// Header operations edits joined to the decision's forward, after its own.
    pub joined: Joined,
    pub properties: Vec<(String, String)>,
    /// Which links of the chain (by index) ran `on-request` and answered: only they get
    /// the response and log phases.
    ran: u128,
    /// The fault the router drew (`request.hold-fault`), as the edit the fault policy
    /// would answer with; the chain takes it after the router's call.
    held_fault: Option<Edit>,
}

/// Header operations a chain's edits joined to a forward, in order: applied after the
/// forward's own as one mutation ([`super::ops::apply`]). Kept apart from the forward so
/// that a prepared edit's operations are shared, not copied into every decision.
#[derive(Debug, Default, Clone)]
pub struct Joined {
    pub request: Vec<Ops>,
    pub response: Vec<Ops>,
}

impl Joined {
    fn clear(&mut self) {
        self.request.clear();
        self.response.clear();
    }
}

/// The decision as the host keeps it while the chain runs: the WIT `decision`, with its
/// action shared with the edit that set it (a prepared edit's forward is the router's
/// answer to most requests: shared, its destinations and strings are not copied into
/// each request) and a `pick` kept as the index of the destination it kept.
#[derive(Debug, Clone)]
pub struct Current {
    pub route: Option<SharedBox<RouteRef>>,
    pub delay_ms: Option<u64>,
    /// Written by [`ChainState::apply`] only, which sets `picked` with it.
    pub action: SharedBox<Action>,
    /// The forward's destination a `pick` kept, by its index in this action's own list:
    /// the decision then has that one destination only ([`Current::destinations`]).
    pub picked: Option<usize>,
    pub log_fields: Vec<Header>,
}

impl Current {
    /// The forward's destinations as they stand: the one picked, or all of them (none for
    /// another action).
    pub fn destinations(&self) -> &[Destination] {
        match (&*self.action, self.picked) {
            (Action::Forward(f), Some(i)) => f.destinations.get(i..=i).unwrap_or_default(),
            (Action::Forward(f), None) => &f.destinations,
            _ => &[],
        }
    }

    /// The forward, when the action is one.
    pub fn forward(&self) -> Option<&Forward> {
        match &*self.action {
            Action::Forward(f) => Some(f),
            _ => None,
        }
    }

    /// The WIT record: the action copied, with the pick applied.
    pub fn to_wit(&self) -> Decision {
        let mut action = (*self.action).clone();
        if let (Action::Forward(f), Some(_)) = (&mut action, self.picked) {
            f.destinations = self.destinations().to_vec();
        }
        Decision {
            route: self.route.as_deref().cloned(),
            delay_ms: self.delay_ms,
            action,
            log_fields: self.log_fields.clone(),
        }
    }
}

/// What a chain decided, taken out of its state to be carried out.
#[derive(Debug)]
pub struct Decided {
    pub decision: Current,
    /// Response header operations for a local reply ([`ChainState::reply_ops`]).
    pub reply_ops: Vec<HeaderMutation>,
    /// Header operations joined to a forward ([`Joined`]).
    pub joined: Joined,
}

/// The names before any chain runs: one shared value, not an allocation per request.
fn no_names() -> Arc<ChainNames> {
    static NONE: std::sync::LazyLock<Arc<ChainNames>> =
        std::sync::LazyLock::new(|| Arc::new(ChainNames::default()));
    NONE.clone()
}

/// The decision a chain starts from (its action one value per thread: not an allocation
/// per request, and no reference count shared between workers' cores).
pub fn no_route() -> Current {
    thread_local! {
        static NO_ROUTE: SharedBox<Action> = SharedBox::new(Action::NoRoute);
    }
    Current {
        route: None,
        delay_ms: None,
        action: NO_ROUTE.with(SharedBox::clone),
        picked: None,
        log_fields: Vec::new(),
    }
}

impl RequestView {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: HeaderValue,
        method: Method,
        scheme: &'static str,
        authority: HeaderValue,
        uri: http::Uri,
        headers: HeaderMap,
        client: IpAddr,
        port: u16,
        sni: Option<String>,
        principal: Option<String>,
        body: Option<Bytes>,
    ) -> Self {
        RequestView {
            id,
            method,
            scheme,
            authority,
            uri,
            headers,
            client,
            port,
            sni,
            body,
            principal,
            state: Mutex::new(ChainState {
                names: no_names(),
                decision: no_route(),
                reply_ops: Vec::new(),
                joined: Joined::default(),
                properties: Vec::new(),
                ran: 0,
                held_fault: None,
            }),
        }
    }

    /// The chain's state (never poisoned in practice: nothing panics holding it).
    pub fn state(&self) -> MutexGuard<'_, ChainState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A chain starts: its names, and the decision back to "no route".
    pub fn start_chain(&self, names: &Arc<ChainNames>) {
        let mut s = self.state();
        s.names = names.clone();
        s.decision = no_route();
        s.reply_ops.clear();
        s.joined.clear();
        // What another VirtualService's policies set is not this chain's business.
        s.properties.clear();
        s.ran = 0;
        s.held_fault = None;
    }

    /// The first value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        first(&self.headers, name)
    }

    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers.get_all(name).iter().map(text).collect()
    }

    /// Every value of header `name` joined with `,` (as Envoy matches a repeated
    /// header); `None` when there is none.
    pub fn header_joined(&self, name: &str) -> Option<String> {
        let mut values = self.headers.get_all(name).iter();
        let mut joined = text(values.next()?);
        for v in values {
            joined.push(',');
            joined.push_str(&text(v));
        }
        Some(joined)
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// The query without `?`; empty when there is none.
    pub fn query(&self) -> &str {
        self.uri.query().unwrap_or_default()
    }

    /// [`Self::path`], then `?` and [`Self::query`] when there is a query.
    pub fn path_and_query(&self) -> String {
        match (self.uri.query(), self.uri.path_and_query()) {
            (Some(_), Some(pq)) => pq.as_str().to_string(),
            // No query, or none to take it from: the path alone (`Uri::path` is empty
            // for an authority-form target, where the path-and-query would say `/`).
            _ => self.path().to_string(),
        }
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(self.query(), name)
    }

    pub fn property(&self, name: &str) -> Option<String> {
        if name == "source.principal" {
            return self.principal.clone();
        }
        self.state()
            .properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// Every property set so far, in order (not `source.principal`, which is the
    /// connection's).
    pub fn properties(&self) -> Vec<(String, String)> {
        self.state().properties.clone()
    }

    /// Put the properties back as [`RequestView::properties`] gave them.
    pub fn restore_properties(&self, properties: Vec<(String, String)>) {
        self.state().properties = properties;
    }

    /// Set or (with `None`) remove a property, within the limits.
    pub fn set_property(&self, name: String, value: Option<String>) -> Result<(), String> {
        let mut s = self.state();
        let at = s.properties.iter().position(|(n, _)| *n == name);
        match (value, at) {
            (None, Some(i)) => {
                s.properties.swap_remove(i);
                Ok(())
            }
            (None, None) => Ok(()),
            (Some(v), at) => {
                if name.is_empty() || name.len() > MAX_PROPERTY_NAME {
                    return Err(format!(
                        "property name of {} bytes (1 to {MAX_PROPERTY_NAME})",
                        name.len()
                    ));
                }
                let max = if is_identity_property(&name) {
                    MAX_IDENTITY_PROPERTY_VALUE
                } else {
                    MAX_PROPERTY_VALUE
                };
                if v.len() > max {
                    return Err(format!("property {name:?}: {} bytes, over {max}", v.len()));
                }
                match at {
                    Some(i) => s.properties[i].1 = v,
                    None if s.properties.len() >= MAX_PROPERTIES => {
                        return Err(format!(
                            "property {name:?}: already {MAX_PROPERTIES} properties"
                        ));
                    }
                    None => s.properties.push((name, v)),
                }
                Ok(())
            }
        }
    }
}

impl ChainState {
    /// Link `i` of the chain ran `on-request` and answered.
    pub fn mark_ran(&mut self, i: usize) {
        if let Some(bit) = 1u128.checked_shl(u32::try_from(i).unwrap_or(u32::MAX)) {
            self.ran |= bit;
        }
    }

    /// Did link `i` run? (Links past the 128th always count as run.)
    pub fn ran(&self, i: usize) -> bool {
        match 1u128.checked_shl(u32::try_from(i).unwrap_or(u32::MAX)) {
            Some(bit) => self.ran & bit != 0,
            None => true,
        }
    }

    /// Hold the fault a router drew: `delay_ms` and `abort` as the fault policy answers
    /// them (log fields `fault=delay`, `fault=abort`); nothing held when neither fired.
    pub fn hold_fault(&mut self, delay_ms: Option<u64>, abort: Option<Abort>) {
        if delay_ms.is_none() && abort.is_none() {
            self.held_fault = None;
            return;
        }
        use wasmgate_config::fault::{LOG_ABORT, LOG_DELAY, LOG_FIELD};
        let field = |value: &str| Header {
            name: LOG_FIELD.to_string(),
            value: value.to_string(),
        };
        let mut log_fields = Vec::new();
        if delay_ms.is_some() {
            log_fields.push(field(LOG_DELAY));
        }
        if abort.is_some() {
            log_fields.push(field(LOG_ABORT));
        }
        self.held_fault = Some(Edit {
            delay_ms,
            action: abort.map(|a| SharedBox::new(Action::Abort(a))),
            log_fields,
            ..Edit::default()
        });
    }

    /// The fault the router held, if any (taken: it is the router's alone).
    pub fn take_held_fault(&mut self) -> Option<Edit> {
        self.held_fault.take()
    }

    /// A pick: keep destination `i` of the forward's destinations as they stand (after
    /// an earlier pick, the one left is index 0, and a pick changes nothing).
    pub fn pick(&mut self, i: usize) {
        let d = &mut self.decision;
        if i < d.destinations().len() && d.picked.is_none() {
            d.picked = Some(i);
        }
    }

    /// Apply a policy's edit, as the WIT says (and the SDK's `Edit::apply` does): route,
    /// action, pick, delay, then header operations (joined to a forward: kept in
    /// [`ChainState::joined`], after its own; for any other action the response ones are
    /// kept for its local reply), then log fields.
    pub fn apply(&mut self, edit: Edit) {
        let d = &mut self.decision;
        if let Some(route) = edit.route {
            d.route = Some(route);
        }
        if let Some(action) = edit.action {
            d.action = action;
            d.picked = None;
            // What was joined to the forward this replaces goes with it.
            self.joined.clear();
        }
        if let Some(i) = edit.pick.and_then(|i| usize::try_from(i).ok()) {
            self.pick(i);
        }
        let d = &mut self.decision;
        if let Some(ms) = edit.delay_ms {
            d.delay_ms = (ms > 0).then_some(ms);
        }
        d.log_fields.extend(edit.log_fields);
        match &*d.action {
            Action::Forward(_) => {
                self.joined.request.extend(edit.request_headers);
                self.joined.response.extend(edit.response_headers);
            }
            _ => self
                .reply_ops
                .extend(edit.response_headers.map(Ops::into_inner)),
        }
    }

    /// The decision as a plugin reads it (`request.decision`): the operations joined to
    /// a forward in its own.
    pub fn decision(&self) -> Decision {
        let mut d = self.decision.to_wit();
        if let Action::Forward(f) = &mut d.action {
            join(&mut f.request_headers, &self.joined.request);
            join(&mut f.response_headers, &self.joined.response);
        }
        d
    }

    /// What the chain decided, to carry out: taken (the state goes back to "no route"),
    /// or copied where later phases read the state again (`keep`).
    pub fn decided(&mut self, keep: bool) -> Decided {
        if keep {
            Decided {
                decision: self.decision.clone(),
                reply_ops: self.reply_ops.clone(),
                joined: self.joined.clone(),
            }
        } else {
            Decided {
                decision: std::mem::replace(&mut self.decision, no_route()),
                reply_ops: std::mem::take(&mut self.reply_ops),
                joined: std::mem::take(&mut self.joined),
            }
        }
    }
}

fn join(into: &mut Option<HeaderMutation>, joined: &[Ops]) {
    for more in joined {
        let more = (**more).clone();
        match into {
            Some(m) => extend_mutation(m, more),
            None => *into = Some(more),
        }
    }
}

/// `more`'s operations after `m`'s.
pub(super) fn extend_mutation(m: &mut HeaderMutation, more: HeaderMutation) {
    m.set.extend(more.set);
    m.add.extend(more.add);
    m.remove.extend(more.remove);
}

/// A header value as a plugin reads it: text, with bytes that are not UTF-8 replaced.
fn text(v: &http::HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// The first value of header `name` in `map`, as text.
pub fn first(map: &HeaderMap, name: &str) -> Option<String> {
    map.get(name).map(text)
}

/// Every header of `map`, names lowercase, values as text.
pub fn all_headers(map: &HeaderMap) -> Vec<Header> {
    map.iter()
        .map(|(n, v)| Header {
            name: n.as_str().to_string(),
            value: text(v),
        })
        .collect()
}

/// The decision in brief.
pub fn kind(d: &Current) -> ActionKind {
    match *d.action {
        Action::NoRoute => ActionKind::NoRoute,
        Action::Forward(_) => ActionKind::Forward,
        Action::Redirect(_) => ActionKind::Redirect,
        Action::Respond(_) => ActionKind::Respond,
        Action::Abort(_) => ActionKind::Abort,
    }
}

/// A response on its way to the client, for the response phase.
#[derive(Debug, Clone)]
pub struct ResponseView {
    pub status: u16,
    pub headers: HeaderMap,
    /// Buffered for the plugins that asked (and fit).
    pub body: Option<Bytes>,
    pub local: bool,
}

/// The table entry behind one call's `request` handle.
#[derive(Debug)]
pub struct RequestCtx {
    pub view: Arc<RequestView>,
    /// This plugin asked for the body and it fit.
    pub body: bool,
}

/// The table entry behind one call's `response` handle.
#[derive(Debug)]
pub struct ResponseCtx {
    pub view: Arc<ResponseView>,
    pub body: bool,
}

/// The first value of `name` in `query`, percent-decoded (`+` is a space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .find(|(k, _)| decode(k) == name)
        .map(|(_, v)| decode(v))
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> RequestView {
        RequestView::new(
            HeaderValue::from_static("id"),
            Method::GET,
            "http",
            HeaderValue::from_static("a"),
            http::Uri::from_static("/?a=1&b=x+y%21&b=2&c"),
            HeaderMap::new(),
            IpAddr::from([127, 0, 0, 1]),
            80,
            None,
            None,
            None,
        )
    }

    #[test]
    fn query_parameters_decode_as_the_sdk_does() {
        let v = view();
        assert_eq!(v.query_param("b").as_deref(), Some("x y!"));
        assert_eq!(v.query_param("c").as_deref(), Some(""));
        assert_eq!(v.query_param("d"), None);
        assert_eq!(query_param("a=%zz%4", "a").as_deref(), Some("%zz%4"));
    }

    #[test]
    fn properties_are_bounded() {
        let v = view();
        v.set_property("a".into(), Some("1".into())).expect("set");
        v.set_property("a".into(), Some("2".into()))
            .expect("overwrite");
        assert_eq!(v.property("a").as_deref(), Some("2"));
        assert!(v.set_property(String::new(), Some("x".into())).is_err());
        assert!(
            v.set_property("big".into(), Some("x".repeat(MAX_PROPERTY_VALUE + 1)))
                .is_err()
        );
        for i in 1..MAX_PROPERTIES {
            v.set_property(format!("p{i}"), Some(String::new()))
                .expect("within the limit");
        }
        assert!(
            v.set_property("one-more".into(), Some(String::new()))
                .is_err()
        );
        v.set_property("a".into(), None).expect("remove");
        assert_eq!(v.property("a"), None);
    }

    fn ops(set: &str) -> HeaderMutation {
        HeaderMutation {
            set: vec![Header {
                name: set.into(),
                value: "1".into(),
            }],
            add: Vec::new(),
            remove: Vec::new(),
        }
    }

    /// An edit forwarding to `hosts`, with its own request header operation `own`.
    fn forward_to(hosts: &[&str], own: Option<&str>) -> Edit {
        let destination = |host: &str| Destination {
            host: host.into(),
            subset: None,
            port: None,
            weight: 50,
            request_headers: None,
            response_headers: None,
        };
        Edit {
            action: Some(SharedBox::new(Action::Forward(Forward {
                destinations: hosts.iter().map(|h| destination(h)).collect(),
                request_headers: own.map(ops),
                response_headers: None,
                rewrite_path: None,
                rewrite_authority: None,
                timeout_ms: None,
                retries: None,
                mirrors: Vec::new(),
            }))),
            ..Edit::default()
        }
    }

    fn forward(own: &str) -> Edit {
        forward_to(&[], Some(own))
    }

    fn headers(edit_request: Ops, edit_response: Ops) -> Edit {
        Edit {
            request_headers: Some(edit_request),
            response_headers: Some(edit_response),
            ..Edit::default()
        }
    }

    fn set_names(m: Option<&HeaderMutation>) -> Vec<&str> {
        m.map(|m| m.set.iter().map(|h| h.name.as_str()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn operations_join_a_forward_in_order_and_go_with_it() {
        let v = view();
        let mut s = v.state();
        s.apply(forward("own"));
        s.apply(headers(Ops::prepared(ops("p")), Ops::prepared(ops("pr"))));
        s.apply(headers(Ops::new(ops("l")), Ops::new(ops("lr"))));
        // A plugin reading the decision sees them joined to the forward, in order.
        let seen = s.decision();
        let Action::Forward(f) = &seen.action else {
            panic!("a forward: {seen:?}");
        };
        assert_eq!(set_names(f.request_headers.as_ref()), ["own", "p", "l"]);
        assert_eq!(set_names(f.response_headers.as_ref()), ["pr", "lr"]);
        // Kept apart in the state: the forward holds its own only.
        let Some(f) = s.decision.forward() else {
            panic!("a forward");
        };
        assert_eq!(set_names(f.request_headers.as_ref()), ["own"]);
        assert_eq!(s.joined.request.len(), 2);
        let kept = s.decided(true);
        assert_eq!(kept.joined.response.len(), 2);
        assert_eq!(s.joined.request.len(), 2, "kept for the later phases");

        // A new action replaces the forward and what was joined to it.
        s.apply(forward("other"));
        assert!(s.joined.request.is_empty() && s.joined.response.is_empty());
        s.apply(headers(Ops::new(ops("x")), Ops::new(ops("xr"))));
        let taken = s.decided(false);
        assert_eq!(taken.joined.request.len(), 1);
        assert!(matches!(*s.decision.action, Action::NoRoute), "taken");
        assert!(s.joined.request.is_empty());

        // No forward: response operations are kept for the local reply, as text.
        s.apply(headers(Ops::prepared(ops("q")), Ops::prepared(ops("qr"))));
        assert!(s.joined.request.is_empty());
        assert_eq!(set_names(s.reply_ops.first()), ["qr"]);
    }

    fn split(hosts: &[&str]) -> Edit {
        forward_to(hosts, None)
    }

    fn pick(i: u32) -> Edit {
        Edit {
            pick: Some(i),
            ..Edit::default()
        }
    }

    fn hosts(d: &[Destination]) -> Vec<&str> {
        d.iter().map(|d| d.host.as_str()).collect()
    }

    #[test]
    fn a_prepared_forward_is_shared_and_a_pick_keeps_one_of_its_destinations() {
        let v = view();
        let mut s = v.state();
        let prepared = split(&["a", "b", "c"]);
        s.apply(prepared.clone());
        s.apply(pick(9));
        assert_eq!(
            hosts(s.decision.destinations()),
            ["a", "b", "c"],
            "out of range"
        );
        s.apply(pick(1));
        assert_eq!(hosts(s.decision.destinations()), ["b"]);
        // Of the one left, index 0 keeps it and any other is out of range.
        s.apply(pick(2));
        s.apply(pick(0));
        assert_eq!(hosts(s.decision.destinations()), ["b"]);
        // Picked and all, the decision holds the prepared edit's action itself, not a
        // copy.
        let Some(action) = &prepared.action else {
            panic!("a forward");
        };
        assert!(Arc::ptr_eq(&s.decision.action.0, &action.0));
        // Kept for the later phases with the pick.
        assert_eq!(hosts(s.decided(true).decision.destinations()), ["b"]);
        // A plugin reading the decision sees the one destination.
        let seen = s.decision();
        let Action::Forward(f) = &seen.action else {
            panic!("a forward: {seen:?}");
        };
        assert_eq!(hosts(&f.destinations), ["b"]);
        // The prepared edit is as it was, and a new action drops the pick.
        assert!(matches!(&**action, Action::Forward(f) if f.destinations.len() == 3));
        s.apply(split(&["x", "y"]));
        assert_eq!(hosts(s.decision.destinations()), ["x", "y"]);
        // A new action and a pick in one edit, after an earlier pick: the pick is of the
        // new action's destinations.
        s.apply(pick(1));
        s.apply(Edit {
            pick: Some(2),
            ..split(&["p", "q", "r"])
        });
        assert_eq!(hosts(s.decision.destinations()), ["r"]);
        // No forward, no destinations: a pick does nothing.
        s.apply(Edit {
            action: Some(SharedBox::new(Action::NoRoute)),
            pick: Some(0),
            ..Edit::default()
        });
        assert!(s.decision.destinations().is_empty() && s.decision.picked.is_none());
        // What the chain decided carries the pick out with it.
        s.apply(split(&["x", "y"]));
        s.apply(pick(0));
        let taken = s.decided(false);
        assert_eq!(hosts(taken.decision.destinations()), ["x"]);
        assert!(s.decision.destinations().is_empty(), "back to no route");
    }

    /// A route an edit sets goes into the decision shared (the edit's own box), stays
    /// through edits that set none, and plugins read it as the WIT record.
    #[test]
    fn a_route_is_shared_and_kept_until_replaced() {
        let v = view();
        let mut s = v.state();
        let route = SharedBox::new(RouteRef {
            index: 3,
            name: "r".into(),
        });
        s.apply(Edit {
            route: Some(route.clone()),
            ..Edit::default()
        });
        s.apply(pick(0));
        let kept = s
            .decision
            .route
            .as_ref()
            .map(|r| Arc::ptr_eq(&r.0, &route.0));
        assert_eq!(kept, Some(true), "the edit's box, not a copy");
        let seen = s.decision().route;
        assert_eq!(
            seen.as_ref().map(|r| (r.index, r.name.as_str())),
            Some((3, "r"))
        );
        s.apply(Edit {
            route: Some(SharedBox::new(RouteRef {
                index: 4,
                name: "s".into(),
            })),
            ..Edit::default()
        });
        assert_eq!(s.decision().route.map(|r| r.index), Some(4));
    }
}
