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

/// Router, fault, traffic split: the chain every VirtualService starts with, in order.
pub const CHAIN: [Builtin; 3] = [
    builtin!("router"),
    builtin!("fault"),
    builtin!("traffic-split"),
];

/// The embedded component called `name`, if any.
pub fn get(name: &str) -> Option<Builtin> {
    CHAIN.iter().copied().find(|b| b.name == name)
}
