//! The first-party policy components, built from `plugins/` by `build.rs` and embedded
//! so that the binary needs no plugins directory. They load through the same path as a
//! user's plugin; a file of the same name in `--plugins` replaces the embedded one.

/// One embedded component.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// The name config and logs use: `router`, `fault`, `traffic-split`.
    pub name: &'static str,
    pub bytes: &'static [u8],
    /// The SHA-256 of `bytes`, computed when the binary was built: a start that finds
    /// the compiled component in the compile cache never reads `bytes` (nor keeps their
    /// pages resident: 2.8 MB of the binary for the six).
    pub sha256: &'static [u8; 32],
}

macro_rules! builtin {
    ($name:literal) => {
        Builtin {
            name: $name,
            bytes: include_bytes!(concat!(env!("OUT_DIR"), "/plugins/", $name, ".wasm")),
            sha256: include_bytes!(concat!(env!("OUT_DIR"), "/plugins/", $name, ".sha256")),
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

/// The router's, the fault's and the traffic split's names (the last two's links are
/// called apart: `snapshot::Link::fault`, `snapshot::Link::split`).
pub const ROUTER: &str = CHAIN[0].name;
pub const FAULT: &str = CHAIN[1].name;
pub const TRAFFIC_SPLIT: &str = CHAIN[2].name;

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

/// Are the bytes whose SHA-256 is `sha256` exactly one of the embedded components?
pub fn is_embedded(sha256: &[u8; 32]) -> bool {
    CHAIN
        .iter()
        .chain([&JWT_AUTHN, &AUTHZ, &RATELIMIT])
        .any(|b| b.sha256 == sha256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn each_embedded_digest_is_its_components() {
        for b in CHAIN.iter().chain([&JWT_AUTHN, &AUTHZ, &RATELIMIT]) {
            let digest: [u8; 32] = Sha256::digest(b.bytes).into();
            assert_eq!(&digest, b.sha256, "{}", b.name);
            assert!(is_embedded(b.sha256), "{}", b.name);
        }
        assert!(!is_embedded(&Sha256::digest(b"not embedded").into()));
    }
}
