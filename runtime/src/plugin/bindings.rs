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
