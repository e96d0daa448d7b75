//! Wall-clock time, when the WasmPlugin grants `clock` in its
//! `wasmgate.io/capabilities` annotation (an error says so otherwise). Natively
//! [`crate::testing::grant`] grants it and [`crate::testing::set_clock`] fixes it.

/// Nanoseconds since the Unix epoch (UTC).
pub fn now() -> Result<u64, String> {
    imp::now()
}

/// Seconds since the Unix epoch (UTC), as JWT's `exp`, `nbf` and `iat` count.
pub fn now_secs() -> Result<u64, String> {
    now().map(|ns| ns / 1_000_000_000)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    pub fn now() -> Result<u64, String> {
        crate::__bindings::wasmgate::policy::clock::now()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub fn now() -> Result<u64, String> {
        crate::testing::native::clock_now()
    }
}
