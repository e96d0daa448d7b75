//! Host-side bindings for `wit/policy.wit`: the one `bindgen!` of the crate.
#![allow(missing_docs, clippy::all, unsafe_code)]

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    exports: { default: async },
});
