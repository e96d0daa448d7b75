//! Plugins a WasmPlugin names by an `http://` or `https://` url: downloaded while a
//! snapshot is built (at start and on reload, never on the request path), checked against
//! the WasmPlugin's `sha256` before anything reads them, and kept on disk under that
//! digest so a restart does not download again. A download that fails or does not match
//! fails the build, so the running snapshot keeps serving.
//!
//! One GET over HTTP/1.1 (rustls with the system's trusted roots for https), following
//! up to [`MAX_REDIRECTS`] redirects, within [`TIMEOUT`] and [`MAX_BYTES`]. No proxy, no
//! credentials: `imagePullSecret` is for image registries, which wasmgate does not use.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use wasmgate_config::{ClientTls, ClientTlsMode};

/// The whole download, redirects included.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// The largest module wasmgate downloads.
pub const MAX_BYTES: usize = 128 << 20;
/// Redirects followed (release downloads usually redirect once, to a CDN).
pub const MAX_REDIRECTS: usize = 5;

/// The module at `url` whose SHA-256 is `sha256` (64 lowercase hex digits): from `dir`
/// when an entry there still has that digest, otherwise downloaded, checked, and (best
/// effort) stored in `dir`. The error says what went wrong in one line.
pub async fn module(url: &str, sha256: &str, dir: Option<&Path>) -> Result<Vec<u8>, String> {
    // Reading, hashing (up to 128 MiB) and writing block: they run on a blocking thread,
    // never on the runtime's threads that serve connections.
    let entry = dir.map(|d| d.join(format!("{sha256}.wasm")));
    let (want, path) = (sha256.to_string(), entry.clone());
    let cached = tokio::task::spawn_blocking(move || {
        let path = path?;
        let bytes = std::fs::read(&path).ok()?;
        // Checked like a download: a changed or truncated entry is simply fetched again.
        (crate::tls::cert::hex(&Sha256::digest(&bytes)) == want).then_some((path, bytes))
    })
    .await
    .ok()
    .flatten();
    if let Some((path, bytes)) = cached {
        tracing::debug!(url, path = %path.display(), "plugin from the download cache");
        // Used now: the compile cache's pruning keeps it.
        crate::plugin::diskcache::touch(&path);
        return Ok(bytes);
    }
    let bytes = match tokio::time::timeout(TIMEOUT, download(url)).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(format!(
                "cannot download {url}: no complete answer within {} s",
                TIMEOUT.as_secs()
            ));
        }
    };
    let (want, dir, owned_url) = (
        sha256.to_string(),
        dir.map(Path::to_path_buf),
        url.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let got = crate::tls::cert::hex(&Sha256::digest(&bytes));
        if got != want {
            return Err(format!(
                "downloaded {owned_url} ({} bytes) has sha256 {got}, not {want}; not used",
                bytes.len()
            ));
        }
        tracing::info!(
            url = owned_url,
            bytes = bytes.len(),
            "plugin downloaded and verified"
        );
        if let (Some(dir), Some(path)) = (dir, entry)
            && let Err(e) = store(&dir, &path, &bytes)
        {
            tracing::warn!(dir = %dir.display(), "download cache not used: {e}");
        }
        Ok(bytes)
    })
    .await
    .map_err(|e| format!("cannot download {url}: checking it failed: {e}"))?
}

/// Write beside, then rename, in a private folder.
fn store(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// GET `url`, following redirects; the body of the final 200.
async fn download(url: &str) -> Result<Vec<u8>, String> {
    download_at_most(url, MAX_BYTES).await
}

/// [`download`] of a body of at most `max_bytes`.
pub async fn download_at_most(url: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
    let fail = |why: String| format!("cannot download {url}: {why}");
    let mut uri: Uri = url.parse().map_err(|e| fail(format!("{e}")))?;
    for _ in 0..=MAX_REDIRECTS {
        let response = get(&uri).await.map_err(fail)?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| fail(format!("{status} without a Location")))?;
            uri = follow(&uri, location).map_err(fail)?;
            continue;
        }
        if status != StatusCode::OK {
            let via = if uri == url {
                String::new()
            } else {
                format!(" (from {uri})")
            };
            return Err(fail(format!("the server answered {status}{via}")));
        }
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| {
                fail(if e.is::<http_body_util::LengthLimitError>() {
                    format!("larger than {max_bytes} bytes")
                } else {
                    format!("reading the body: {e}")
                })
            })?;
        return Ok(body.to_bytes().to_vec());
    }
    Err(fail(format!("more than {MAX_REDIRECTS} redirects")))
}

/// Where a redirect's `Location` points, from `base`.
fn follow(base: &Uri, location: &str) -> Result<Uri, String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location
            .parse()
            .map_err(|e| format!("bad redirect {location:?}: {e}"));
    }
    if location.starts_with('/') && !location.starts_with("//") {
        let scheme = base.scheme_str().unwrap_or("http");
        let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
        return format!("{scheme}://{authority}{location}")
            .parse()
            .map_err(|e| format!("bad redirect {location:?}: {e}"));
    }
    Err(format!(
        "redirect to {location:?}, which is not an http(s) URL"
    ))
}

/// One request on a fresh connection.
async fn get(uri: &Uri) -> Result<http::Response<hyper::body::Incoming>, String> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => {
            return Err(format!(
                "{} is not an http(s) URL",
                other.map_or_else(|| uri.to_string(), |s| format!("scheme {s:?}"))
            ));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{uri} has no host"))?
        .clone();
    // `[::1]` in a URL is `::1` to connect to and to verify.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = Request::get(path)
        .header(header::HOST, authority.as_str())
        .header(
            header::USER_AGENT,
            concat!("wasmgate/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{e}"))?;
    if https {
        let tls =
            crate::tls::client::client_config(&ClientTls::mode_only(ClientTlsMode::Simple), false)
                .map_err(|e| format!("TLS: {}", e.message))?
                .ok_or("TLS: no client configuration")?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host:?} cannot be verified: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
        send(stream, request).await
    } else {
        send(tcp, request).await
    }
}

async fn send<S>(
    stream: S,
    request: Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_against_the_url() {
        let base: Uri = "https://example.com:8443/a/b.wasm".parse().expect("uri");
        assert_eq!(
            follow(&base, "/c.wasm").map(|u| u.to_string()),
            Ok("https://example.com:8443/c.wasm".to_string())
        );
        assert_eq!(
            follow(&base, "http://cdn.example.com/x").map(|u| u.to_string()),
            Ok("http://cdn.example.com/x".to_string())
        );
        assert!(follow(&base, "ftp://x/y").is_err());
        assert!(follow(&base, "//evil/x").is_err());
    }
}
