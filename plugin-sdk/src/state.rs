//! A key-value store the host keeps for this plugin in this namespace, shared by all its
//! instances and kept across traps and reloads, when the WasmPlugin grants `state` in
//! its `wasmgate.io/capabilities` annotation (every call returns an error otherwise).
//!
//! Keys at most 256 bytes, values at most 64 KiB, at most 10000 live keys and 16 MiB of
//! values; a `ttl`
//! makes a key expire that long after the write. Counters are 8-byte little-endian
//! signed integers ([`increment`]). Natively [`crate::testing::grant`] grants it, the
//! store lives per thread, and [`crate::testing::set_clock`] moves expiry along.
//!
//! ```
//! use std::time::Duration;
//! use wasmgate_plugin_sdk::{state, testing};
//!
//! testing::grant(&["state"]);
//! // A fixed one-minute window: the ttl is set by the increment that creates the key.
//! let window = Some(Duration::from_secs(60));
//! assert_eq!(state::increment("hits:alice", 1, window), Ok(1));
//! assert_eq!(state::increment("hits:alice", 1, window), Ok(2));
//! assert!(state::compare_and_swap("lock", None, Some(b"me"), None).unwrap());
//! assert!(!state::compare_and_swap("lock", None, Some(b"you"), None).unwrap());
//! ```

use std::time::Duration;

fn ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
}

/// The value at `key`, if any (and not expired).
pub fn get(key: &str) -> Result<Option<Vec<u8>>, String> {
    imp::get(key)
}

/// Write `value` at `key`, expiring after `ttl` if given.
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), String> {
    imp::set(key, value, ms(ttl))
}

/// Remove `key`; true when it existed.
pub fn delete(key: &str) -> Result<bool, String> {
    imp::delete(key)
}

/// Add `delta` to the counter at `key` (absent counts as 0) and return the new value,
/// atomically across instances. `ttl` applies only when this call creates the key.
pub fn increment(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, String> {
    imp::increment(key, delta, ms(ttl))
}

/// Write `value` (`None` deletes) only if the current value is `expected` (`None`: the
/// key is absent); true when written.
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    value: Option<&[u8]>,
    ttl: Option<Duration>,
) -> Result<bool, String> {
    imp::compare_and_swap(key, expected, value, ms(ttl))
}

/// A counter's value as [`get`] returns it (`None` when the bytes are not a counter).
pub fn counter_value(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::__bindings::wasmgate::policy::state as wit;

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, String> {
        wit::get(key)
    }
    pub fn set(key: &str, value: &[u8], ttl: Option<u64>) -> Result<(), String> {
        wit::set(key, value, ttl)
    }
    pub fn delete(key: &str) -> Result<bool, String> {
        wit::delete(key)
    }
    pub fn increment(key: &str, delta: i64, ttl: Option<u64>) -> Result<i64, String> {
        wit::increment(key, delta, ttl)
    }
    pub fn compare_and_swap(
        key: &str,
        expected: Option<&[u8]>,
        value: Option<&[u8]>,
        ttl: Option<u64>,
    ) -> Result<bool, String> {
        wit::compare_and_swap(key, expected, value, ttl)
    }
}

#[cfg(not(target_arch = "wasm32"))]
use crate::testing::native::state as imp;
