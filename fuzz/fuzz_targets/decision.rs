//! Arbitrary decisions from a real plugin: the misbehave test plugin turns the bytes it
//! is sent into any request edit and response edit the WIT types allow (statuses out of
//! range, header names that are not names, unknown hosts, huge timeouts...). The host
//! must answer every request with an HTTP response and never panic.
#![no_main]

use std::fmt::Write as _;

use libfuzzer_sys::fuzz_target;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fuzz_target!(|data: &[u8]| {
    let harness = wasmgate_fuzz::harness();
    // The first byte says where the request edit ends and the response edit starts.
    let (split, rest) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s) * rest.len() / 256, rest),
        None => (0, data),
    };
    let (request_edit, response_edit) = rest.split_at(split);
    let request = format!(
        "GET /decide HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\nx-misbehave-edit: {}\r\nx-misbehave-response-edit: {}\r\n\r\n",
        hex(request_edit),
        hex(response_edit)
    );
    let got = harness.exchange(request.as_bytes(), false);
    assert!(
        got.starts_with(b"HTTP/1.1 "),
        "no HTTP answer to a plugin's decision: {:?}",
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
});
