//! Raw bytes into the gateway's HTTP/1 listener: whatever a client sends, the gateway
//! answers or closes, never panics, and goes on serving the next client.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;

static RUNS: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let harness = wasmgate_fuzz::harness();
    let got = harness.exchange(data, true);
    // An HTTP/2 preface gets HTTP/2 frames (h2c with prior knowledge).
    if !got.is_empty() && !data.starts_with(b"PRI * HTTP/2.0") {
        assert!(
            got.starts_with(b"HTTP/1.1 ") || got.starts_with(b"HTTP/1.0 "),
            "not an HTTP/1 answer: {}",
            String::from_utf8_lossy(&got[..got.len().min(200)])
        );
    }
    if RUNS.fetch_add(1, Ordering::Relaxed) % 64 == 0 {
        harness.still_serves();
    }
});
