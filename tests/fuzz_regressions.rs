//! Every input the fuzz targets (`fuzz/`) are seeded with, and every crash they found
//! (kept in `fuzz/regressions/<target>/` once fixed), replayed against the real loader
//! and the real binary with the targets' own invariants: a config error names its
//! file; whatever bytes a client sends get an HTTP/1 answer or a close, and the gateway
//! serves the next client; whatever decision a plugin makes gets an HTTP answer.
//! Crashes of the `route` target are kept as tests in `plugins/router/src/tests.rs`.

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Echo, Gateway, TempDir, plugins_dir, repo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The files of `fuzz/seeds/<target>` and `fuzz/regressions/<target>`, with names.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = repo().join("fuzz").join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                let bytes = std::fs::read(&path).expect("read a fuzz input");
                found.push((path, bytes));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn config_inputs_load_or_fail_naming_the_file() {
    let all = inputs("config");
    assert!(!all.is_empty(), "no config seeds");
    for (path, bytes) in all {
        let file = PathBuf::from("fuzz.yaml");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Err(errors) = wasmgate_config::load_sources(&[(file.clone(), text.clone())]) {
            for e in &errors.0 {
                assert_eq!(e.file, file, "{}: {e}", path.display());
                assert!(!e.message.is_empty(), "{}", path.display());
            }
        }
        let _ = wasmgate_config::validate_document(&file, &text);
    }
}

/// The fuzz targets' gateway (`fuzz/gateway.yaml`) with the misbehave plugin making
/// edits from request headers.
async fn fuzz_gateway(upstream: &Echo) -> (Gateway, u16, TempDir, TempDir) {
    let dir = TempDir::new("fuzz-replay");
    let port = support::free_port();
    let yaml = std::fs::read_to_string(repo().join("fuzz/gateway.yaml")).expect("gateway.yaml");
    dir.write(
        "config.yaml",
        &yaml
            .replace("UPSTREAM", &upstream.port().to_string())
            .replace("PORT", &port.to_string()),
    );
    let plugins = plugins_dir(&[("misbehave.wasm", "misbehave")]);
    let plugins_arg = plugins.path().display().to_string();
    let gw = Gateway::start(dir.path(), &["--plugins", &plugins_arg]).await;
    (gw, port, dir, plugins)
}

/// Send `bytes`, close the sending side when `half_close` (as the fuzz targets do, so
/// that an incomplete request ends), read until the gateway closes (at most 10 s). The
/// gateway does not serve HTTP/1 half-closed connections: after a client's FIN, the
/// answer to a complete request may be dropped, so complete requests keep it open.
async fn exchange(port: u16, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let _ = stream.write_all(bytes).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "the gateway neither answered nor closed within 10 s"
    );
    got
}

fn head(got: &[u8]) -> String {
    String::from_utf8_lossy(&got[..got.len().min(120)]).into_owned()
}

async fn still_serves(gw: &Gateway, port: u16, after: &Path) {
    let got = exchange(
        port,
        b"GET /direct HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "after {}: {}\n{}",
        after.display(),
        head(&got),
        gw.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_client_bytes_get_an_answer_or_a_close_and_the_next_client_is_served() {
    let upstream = Echo::start("upstream").await;
    let (gw, port, _dir, _plugins) = fuzz_gateway(&upstream).await;
    let all = inputs("edge");
    assert!(all.len() >= 20, "edge seeds are missing");
    for (path, bytes) in all {
        let got = exchange(port, &bytes, true).await;
        // An HTTP/2 preface gets HTTP/2 frames (h2c with prior knowledge).
        let h2 = bytes.starts_with(b"PRI * HTTP/2.0");
        assert!(
            h2 || got.is_empty() || got.starts_with(b"HTTP/1.1 ") || got.starts_with(b"HTTP/1.0 "),
            "{}: {}",
            path.display(),
            head(&got)
        );
        still_serves(&gw, port, &path).await;
    }
    // The seeds reach what they are there for: the upstream, a local answer, a plugin.
    let seed = std::fs::read(repo().join("fuzz/seeds/edge/edit-header")).expect("seed");
    let got = exchange(port, &seed, false).await;
    assert!(got.starts_with(b"HTTP/1.1 500"), "{}", head(&got));
    assert!(upstream.hits() > 0, "no seed reached the upstream");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_plugin_decision_gets_an_http_answer() {
    let upstream = Echo::start("upstream").await;
    let (gw, port, _dir, _plugins) = fuzz_gateway(&upstream).await;
    let all = inputs("decision");
    assert!(!all.is_empty(), "decision seeds are missing");
    for (path, data) in all {
        // As fuzz/fuzz_targets/decision.rs: the first byte splits request and response edits.
        let (split, rest) = match data.split_first() {
            Some((s, rest)) => (usize::from(*s) * rest.len() / 256, rest),
            None => (0, &data[..]),
        };
        let (request_edit, response_edit) = rest.split_at(split);
        let request = format!(
            "GET /decide HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\nx-misbehave-edit: {}\r\nx-misbehave-response-edit: {}\r\n\r\n",
            hex(request_edit),
            hex(response_edit)
        );
        let got = exchange(port, request.as_bytes(), false).await;
        assert!(
            got.starts_with(b"HTTP/1.1 "),
            "{}: {}\n{}",
            path.display(),
            head(&got),
            gw.log_text()
        );
        still_serves(&gw, port, &path).await;
    }
}
