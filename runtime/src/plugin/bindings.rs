//! Host-side bindings for `wit/policy.wit`: the one `bindgen!` of the crate. The
//! `request` and `response` resources are the host's views ([`super::context`]); an
//! outbound call is async on the host, so the plugin's call suspends while it waits.
#![allow(missing_docs, clippy::all, unsafe_code)]

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    imports: {
        "wasmgate:policy/outbound.call": async,
        // `state:global` waits on Redis; a local store answers at once.
        "wasmgate:policy/state": async,
        // A handle the host did not hand out is the guest's bug: trap.
        "wasmgate:policy/types": trappable,
    },
    exports: { default: async },
    with: {
        "wasmgate:policy/types.request": super::context::RequestCtx,
        "wasmgate:policy/types.response": super::context::ResponseCtx,
    },
});

use self::wasmgate::policy::types::{self, Action, Header, RouteRef};
use super::ops::Ops;
// wasmtime's hidden API for hand-written component types (its derive macros use it):
// no semver promise, so a wasmtime upgrade may need this file touched; Cargo.lock pins it.
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift};

/// The WIT `edit` as the host keeps it: the same record, with the action and the header
/// mutations lifted into shared boxes ([`SharedBox`], and [`Ops`]). The generated
/// `types::Edit` holds them inline (528 bytes), and a call's result is moved several
/// times on its way out of wasmtime, each move a copy of the whole record (12 % of a
/// quick call's time, measured); this one is about a fifth of that.
#[derive(ComponentType, Lift, Clone, Debug, Default)]
#[component(record)]
pub struct Edit {
    /// Shared as the action is: a prepared edit's route goes into each request's
    /// decision as a reference count, not a copy of its name.
    pub route: Option<SharedBox<RouteRef>>,
    pub action: Option<SharedBox<Action>>,
    pub pick: Option<u32>,
    #[component(name = "delay-ms")]
    pub delay_ms: Option<u64>,
    #[component(name = "request-headers")]
    pub request_headers: Option<Ops>,
    #[component(name = "response-headers")]
    pub response_headers: Option<Ops>,
    #[component(name = "log-fields")]
    pub log_fields: Vec<Header>,
}

impl From<self::wasmgate::policy::types::Edit> for Edit {
    fn from(e: self::wasmgate::policy::types::Edit) -> Self {
        Edit {
            route: e.route.map(SharedBox::new),
            action: e.action.map(SharedBox::new),
            pick: e.pick,
            delay_ms: e.delay_ms,
            request_headers: e.request_headers.map(Ops::new),
            response_headers: e.response_headers.map(Ops::new),
            log_fields: e.log_fields,
        }
    }
}

/// A `T` lifted into a shared box: the same component type as `T`, one pointer wide.
/// Shared, so a prepared edit's action goes into each request's decision as a reference
/// count, not a copy of its destinations and strings.
#[derive(Debug, PartialEq)]
pub struct SharedBox<T>(pub std::sync::Arc<T>);

impl<T> Clone for SharedBox<T> {
    fn clone(&self) -> Self {
        SharedBox(self.0.clone())
    }
}

impl<T> SharedBox<T> {
    pub fn new(t: T) -> Self {
        SharedBox(std::sync::Arc::new(t))
    }
}

impl<T: Clone> SharedBox<T> {
    /// The value, copied only when it is shared.
    pub fn into_inner(self) -> T {
        std::sync::Arc::unwrap_or_clone(self.0)
    }
}

impl<T> std::ops::Deref for SharedBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

// SAFETY: every item forwards to `T`'s: the same type in the component model, with the
// same flat and memory representation; only where the lifted Rust value lives differs.
unsafe impl<T: ComponentType> ComponentType for SharedBox<T> {
    type Lower = T::Lower;
    const ABI: CanonicalAbiInfo = T::ABI;
    const MAY_REQUIRE_REALLOC: bool = T::MAY_REQUIRE_REALLOC;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        T::typecheck(ty, types)
    }
}

// SAFETY: lifts exactly as `T` does, then puts the value in its shared box.
unsafe impl<T: Lift> Lift for SharedBox<T> {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        T::linear_lift_from_flat(cx, ty, src).map(SharedBox::new)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        T::linear_lift_from_memory(cx, ty, bytes).map(SharedBox::new)
    }
}

// SAFETY: every item forwards to `HeaderMutation`'s (as `SharedBox` does): the same type in
// the component model, with the same flat and memory representation.
unsafe impl ComponentType for Ops {
    type Lower = <types::HeaderMutation as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = types::HeaderMutation::ABI;
    const MAY_REQUIRE_REALLOC: bool = types::HeaderMutation::MAY_REQUIRE_REALLOC;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        types::HeaderMutation::typecheck(ty, types)
    }
}

// SAFETY: lifts exactly as `HeaderMutation` does, then boxes the value.
unsafe impl Lift for Ops {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        types::HeaderMutation::linear_lift_from_flat(cx, ty, src).map(Ops::new)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        types::HeaderMutation::linear_lift_from_memory(cx, ty, bytes).map(Ops::new)
    }
}
