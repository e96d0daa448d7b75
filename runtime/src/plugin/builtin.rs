//! The first-party policy components, built from `plugins/` by `build.rs` and embedded
//! so that the binary needs no plugins directory. They load through the same path as a
//! user's plugin; a file of the same name in `--plugins` replaces the embedded one.

/// One embedded component.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// The name config and logs use: `router`, `fault`, `traffic-split`.
    pub name: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! builtin {
    ($name:literal) => {
        Builtin {
            name: $name,
            bytes: include_bytes!(concat!(env!("OUT_DIR"), "/plugins/", $name, ".wasm")),
        }
    };
}

/// Router, fault, traffic split, in chain order. Every VirtualService gets the router;
/// the snapshot binds fault and traffic split only where a route has a fault or several
/// destinations.
pub const CHAIN: [Builtin; 3] = [
    builtin!("router"),
    builtin!("fault"),
    builtin!("traffic-split"),
];

/// The security components, bound only where a RequestAuthentication or an
/// AuthorizationPolicy applies: JWT authentication (AUTHN), then authorization (AUTHZ).
pub const JWT_AUTHN: Builtin = builtin!("jwt-authn");
pub const AUTHZ: Builtin = builtin!("authz");
/// Bound by a WasmPlugin with `url: builtin://ratelimit` (Envoy's local rate limit).
pub const RATELIMIT: Builtin = builtin!("ratelimit");

/// The embedded component called `name`, if any.
pub fn get(name: &str) -> Option<Builtin> {
    CHAIN
        .iter()
        .chain([&JWT_AUTHN, &AUTHZ, &RATELIMIT])
        .copied()
        .find(|b| b.name == name)
}

/// Are `bytes` exactly one of the embedded components?
pub fn is_embedded(bytes: &[u8]) -> bool {
    CHAIN
        .iter()
        .chain([&JWT_AUTHN, &AUTHZ, &RATELIMIT])
        .any(|b| b.bytes == bytes)
}
