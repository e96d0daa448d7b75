//! The request phase: a VirtualService's chain of policies, each reading what it needs
//! of the request (the decision so far included) and answering with an edit.

use std::sync::Arc;
use std::time::Instant;

use super::ProxyError;
use crate::plugin::types::ActionKind;
use crate::plugin::{CallError, RequestView, fits};
use crate::snapshot::{Chain, Fault, Split};
use crate::telemetry::trace::Span;

/// Run a chain's policies in order over `view` (its decision starts at "no route"). The
/// router goes first; when it finds no route the chain ends there (the host tries the
/// next VirtualService). Fault and traffic split only act on forwards, the split only on
/// one to several destinations (the router draws the fault and the pick for its own
/// routes); user plugins see
/// every routed request, whatever the decision. A plugin whose body interest the body
/// outgrew is skipped when it fails open and answers 413 when it fails closed. Public
/// for the benchmarks.
pub async fn run_chain(
    chain: &Chain,
    view: &Arc<RequestView>,
    mut span: Option<&mut Span>,
) -> Result<(), ProxyError> {
    view.start_chain(&chain.names);
    // What the decision so far means to the next link, read when an edit is applied
    // (the state is locked then anyway): a lock is two locked instructions. While a
    // chain runs only `apply` changes the decision (host calls read it), so this is
    // the decision as it stands; before any edit, `start_chain`'s "no route".
    let mut gate = Gate::default();
    // The router's pick among its route's weighted destinations (the first-party router
    // draws it when it matches, as Envoy draws a weighted cluster when it resolves the
    // route). It stands in for the traffic split's: applied where the split would run, so
    // the plugins between see every destination and a pick of theirs wins, as before;
    // dropped when a later edit replaces the action.
    let mut deferred: Option<usize> = None;
    // Likewise the fault the embedded router drew for its route (Istio's `fault`, as
    // Envoy's fault filter reads the route's config), held back to the fault's place and
    // applied there in place of the embedded fault's call, while the route is the one
    // the router drew for (a plugin that routes elsewhere gets the fault component's
    // call, for the new route, as before).
    let mut drawn: Option<Drawn> = None;
    for (i, link) in chain.links.iter().enumerate() {
        if !link.ports.is_empty() && !link.ports.contains(&view.port) {
            continue;
        }
        if i > 0 {
            match gate.action {
                ActionKind::NoRoute => break,
                ActionKind::Forward => {}
                _ if link.builtin => continue,
                _ => {}
            }
            // Traffic split: the router's pick in place of the embedded one's call (a
            // user's split is called and draws its own), and a call only while there is
            // a destination left to pick.
            if let Some(split) = link.split {
                if let Some(pick) = deferred.take().filter(|_| split == Split::Embedded) {
                    let mut state = view.state();
                    state.pick(pick);
                    gate = Gate::of(&state.decision);
                    continue;
                }
                if !gate.several {
                    continue;
                }
            }
            // Fault: what the router drew in place of the embedded fault's call (a
            // user's fault is called, and what the router drew dropped).
            if let Some(fault) = link.fault
                && let Some(held) = drawn
                    .take()
                    .filter(|d| fault == Fault::Drawn && d.route == gate.route)
            {
                if let Some(edit) = held.fault {
                    if edit.action.is_some() {
                        deferred = None;
                    }
                    let mut state = view.state();
                    state.apply(edit);
                    gate = Gate::of(&state.decision);
                }
                continue;
            }
            // Fault and split only where the matched route has something for them.
            if let Some(routes) = &link.routes
                && !gate
                    .route
                    .and_then(|r| routes.get(r))
                    .copied()
                    .unwrap_or(false)
            {
                continue;
            }
        }
        if let Some(limit) = link.policy.interest().request_body
            && !fits(Some(limit), view.body.as_ref())
        {
            if link.fail_open {
                tracing::debug!(
                    plugin = link.policy.plugin_name(),
                    "skipped (FAIL_OPEN): the request body is over {limit} bytes"
                );
                continue;
            }
            return Err(ProxyError::PayloadTooLarge {
                plugin: link.policy.plugin_name().to_string(),
                limit,
            });
        }
        let timed = (link.stats.is_some() || span.is_some()).then(Instant::now);
        // Plugins called directly answer at once, without a call's future.
        let called = match link.policy.on_request_now(view) {
            Some(now) => now,
            None => link.policy.on_request_called(view).await,
        };
        if let Some(t0) = timed {
            let took = t0.elapsed();
            if let Some(stats) = &link.stats {
                stats.record(&called, took);
            }
            if let Some(span) = span.as_deref_mut() {
                span.event(link.policy.plugin_name(), took);
            }
        }
        match called {
            Ok(mut edit) => {
                // A security policy's own answer (401, 403) ends the chain, as Envoy's
                // jwt_authn and rbac filters end theirs with a local reply.
                let ends = link.guard && edit.action.is_some();
                // The chain's first first-party link is its router (`snapshot.rs`).
                let router = i == 0 && link.builtin;
                if router {
                    deferred = edit.pick.take().and_then(|p| usize::try_from(p).ok());
                } else if edit.action.is_some() {
                    deferred = None;
                }
                let mut state = view.state();
                state.apply(edit);
                state.mark_ran(i);
                gate = Gate::of(&state.decision);
                if router {
                    drawn = Some(Drawn {
                        route: gate.route,
                        fault: state.take_held_fault(),
                    });
                }
                if ends {
                    break;
                }
            }
            Err(e) => failed(link, e)?,
        }
    }
    // No traffic split on the way (a chain that ended early keeps its action: a new
    // one dropped the pick).
    if let Some(pick) = deferred {
        view.state().pick(pick);
    }
    Ok(())
}

/// The fault the router drew: for which route, and the edit to apply (`None`: nothing
/// fired).
struct Drawn {
    route: Option<usize>,
    fault: Option<crate::plugin::Edit>,
}

/// What a chain's next link needs of the decision so far.
#[derive(Debug, Clone, Copy)]
struct Gate {
    action: ActionKind,
    /// The matched route's index.
    route: Option<usize>,
    /// The decision forwards to more than one destination.
    several: bool,
}

impl Default for Gate {
    /// The decision a chain starts from.
    fn default() -> Self {
        Gate {
            action: ActionKind::NoRoute,
            route: None,
            several: false,
        }
    }
}

impl Gate {
    fn of(decision: &crate::plugin::context::Current) -> Self {
        Gate {
            action: crate::plugin::context::kind(decision),
            route: decision
                .route
                .as_ref()
                .and_then(|r| usize::try_from(r.index).ok()),
            several: decision.destinations().len() > 1,
        }
    }
}

/// A failed call: skipped for a FAIL_OPEN plugin, the request's error otherwise.
pub fn failed(link: &crate::snapshot::Link, e: CallError) -> Result<(), ProxyError> {
    let plugin = || link.policy.plugin_name().to_string();
    match e {
        // The call's task was lost: nothing is known of what it did, even for a
        // FAIL_OPEN plugin.
        CallError::Lost(message) => Err(ProxyError::Plugin {
            plugin: plugin(),
            message,
        }),
        CallError::Quarantined(_) if link.fail_open => {
            tracing::debug!(
                plugin = link.policy.plugin_name(),
                "skipped (FAIL_OPEN): quarantined"
            );
            Ok(())
        }
        e if link.fail_open => {
            tracing::warn!(
                plugin = link.policy.plugin_name(),
                "skipped (FAIL_OPEN): {e}"
            );
            Ok(())
        }
        CallError::Unavailable(m) => Err(ProxyError::Overloaded(m)),
        CallError::Quarantined(_) => Err(ProxyError::Quarantined(plugin())),
        CallError::Returned(message) | CallError::Trap(message) => Err(ProxyError::Plugin {
            plugin: plugin(),
            message,
        }),
    }
}
