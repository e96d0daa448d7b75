//! wasmgate: a gateway that serves Istio's `Gateway`, `VirtualService`,
//! `DestinationRule`, `ServiceEntry` and `WasmPlugin` resources without Kubernetes or
//! Envoy. Listeners are hyper; routing, fault injection and traffic splitting are Wasm
//! components (see `wit/policy.wit`) run by the [`plugin`] host. Dependencies point one
//! way: config model (`wasmgate-config`) <- [`plugin`] <- [`snapshot`] <- [`proxy`] <-
//! [`gateway`] / [`admin`] <- [`cli`].

/// The size of the future `f` returns when called with arguments of types `A`... (for
/// the tests that keep the request's future small).
#[cfg(test)]
macro_rules! future_size {
    ($f:expr, $($a:ident),*) => {{
        fn size<$($a),*, Fut>(_: &impl Fn($($a),*) -> Fut) -> usize {
            std::mem::size_of::<Fut>()
        }
        size(&$f)
    }};
}

pub mod admin;
pub mod build_plugin;
pub mod cli;
pub mod cluster;
pub mod entropy;
pub mod fleet;
pub mod gateway;
pub mod int_hash;
pub mod limits;
pub mod listener;
pub mod memory;
pub mod plugin;
pub mod priority;
pub mod proxy;
pub mod snapshot;
pub mod tcp;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod toolchain;
pub mod watch;
pub mod workers;
