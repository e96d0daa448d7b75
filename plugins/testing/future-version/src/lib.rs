//! Test plugin built against a future version of the policy world
//! (`wasmgate:policy@0.4.0`, newer than the host's 0.3.0), so the host's version check
//! has something real to refuse.
#![allow(unsafe_code)]

wit_bindgen::generate!({
    inline: "
        package wasmgate:policy@0.4.0;
        interface policy {
            decide: func(path: string) -> string;
        }
        world plugin {
            export policy;
        }
    ",
});

struct Future;

impl exports::wasmgate::policy::policy::Guest for Future {
    fn decide(path: String) -> String {
        path
    }
}

#[cfg(target_arch = "wasm32")]
export!(Future);
