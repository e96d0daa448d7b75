//! Header work on the data path, as Envoy does it at an edge (Istio's gateways run with
//! `use_remote_address`): `x-forwarded-for` gets the client address appended,
//! `x-forwarded-proto` is set to the downstream scheme, `x-request-id` is kept from
//! internal clients and generated (UUID v4) otherwise; hop-by-hop headers never cross;
//! Istio's header operations (remove, then set, then add).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::plugin::Random;
use crate::plugin::types::{Header, HeaderMutation};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Envoy's "internal" addresses: loopback, RFC 1918, IPv6 unique local.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4.is_loopback() || v4.is_private();
            }
            v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00
        }
    }
}

/// A random UUID v4, as Envoy generates for `x-request-id`.
pub fn new_request_id(random: &Random) -> String {
    let hi = random.next_u64();
    let lo = random.next_u64();
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&lo.to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    // Formatted by hand: this runs on every request and `format!` per byte showed up in
    // profiles.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(x >> 4)]));
        out.push(char::from(HEX[usize::from(x & 0x0f)]));
    }
    out
}

/// Set `x-request-id`, `x-forwarded-for` and `x-forwarded-proto` on a request from
/// `client` that arrived over `scheme`. Returns the request id.
pub fn edge_headers(
    headers: &mut HeaderMap,
    client: IpAddr,
    scheme: &str,
    random: &Random,
) -> String {
    let keep = is_internal(client)
        && headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.is_empty() && v.len() <= 256);
    let id = if keep {
        headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    } else {
        let id = new_request_id(random);
        if let Ok(v) = HeaderValue::from_str(&id) {
            headers.insert(X_REQUEST_ID, v);
        }
        id
    };

    let client = client.to_canonical().to_string();
    // Every x-forwarded-for line, in order, then the client.
    let mut xff: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    xff.push(&client);
    let xff = xff.join(",");
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if scheme == "https" { "https" } else { "http" }),
    );
    id
}

/// `x-forwarded-client-cert` as Istio's gateways set it (Envoy's `SANITIZE_SET`):
/// whatever the client sent is dropped; a client certificate's details replace it.
pub fn client_cert_header(headers: &mut HeaderMap, xfcc: Option<&str>) {
    headers.remove(X_FORWARDED_CLIENT_CERT);
    if let Some(v) = xfcc.and_then(|x| HeaderValue::from_str(x).ok()) {
        headers.insert(X_FORWARDED_CLIENT_CERT, v);
    }
}

/// The `Upgrade` protocol of an HTTP/1.1 upgrade request (`Connection: upgrade`), such
/// as `websocket`; whether it is tunnelled is the edge's call (`EdgeSettings`).
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Remove hop-by-hop headers (RFC 9110 7.6.1), including those named in `Connection`
/// (but never Host or the edge headers). `te: trailers` survives, as in Envoy: gRPC
/// needs it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let protected = [
        header::HOST,
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_REQUEST_ID,
    ];
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !protected.contains(name))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    // h2c's upgrade settings (RFC 7540 3.2.1) mean nothing past this hop.
    headers.remove("http2-settings");
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Keep only the last `content-type` when operations left several (an `add` on top of
/// a set one): a response has one body, so one type.
pub fn single_content_type(headers: &mut HeaderMap) {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    if types.next().is_some()
        && types.next().is_some()
        && let Some(last) = headers
            .get_all(header::CONTENT_TYPE)
            .iter()
            .next_back()
            .cloned()
    {
        headers.insert(header::CONTENT_TYPE, last);
    }
}

/// Apply Istio header operations (if any): remove, then set (replace), then add
/// (append). Invalid names or values are skipped with a debug log.
pub fn apply_mutation(headers: &mut HeaderMap, m: Option<&HeaderMutation>) {
    let Some(m) = m else {
        return;
    };
    for name in &m.remove {
        headers.remove(name.as_str());
    }
    for h in &m.set {
        if let Some((name, value)) = parse(h) {
            headers.insert(name, value);
        }
    }
    append_all(headers, &m.add);
}

/// Append each of `list` (a policy's headers; invalid ones are skipped with a debug log).
pub fn append_all(headers: &mut HeaderMap, list: &[Header]) {
    for h in list {
        if let Some((name, value)) = parse(h) {
            headers.append(name, value);
        }
    }
}

fn parse(h: &Header) -> Option<(HeaderName, HeaderValue)> {
    let name = HeaderName::from_bytes(h.name.as_bytes()).ok();
    let value = HeaderValue::from_str(&h.value).ok();
    if name.is_none() || value.is_none() {
        tracing::debug!(name = %h.name, "policy produced an invalid header; skipped");
    }
    Some((name?, value?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn xff_appends_and_request_id_kept_only_from_internal_clients() {
        let random = Random::new(Some(1));
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("abc"));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let id = edge_headers(
            &mut headers,
            "127.0.0.1".parse().unwrap_or(IpAddr::from([0; 4])),
            "http",
            &random,
        );
        assert_eq!(id, "abc");
        assert_eq!(headers[&X_FORWARDED_FOR], "203.0.113.9,127.0.0.1");
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");

        let external: IpAddr = IpAddr::from([198, 51, 100, 7]);
        let id = edge_headers(&mut headers, external, "http", &random);
        assert_ne!(id, "abc");
        assert_eq!(headers[&X_REQUEST_ID], id.as_str());
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }

    #[test]
    fn mutation_order_is_remove_set_add() {
        let mut headers = HeaderMap::new();
        headers.insert("a", HeaderValue::from_static("1"));
        headers.insert("b", HeaderValue::from_static("1"));
        apply_mutation(
            &mut headers,
            Some(&HeaderMutation {
                set: vec![h("a", "2"), h("bad name", "x")],
                add: vec![h("a", "3"), h("c", "1")],
                remove: vec!["b".into(), "c".into()],
            }),
        );
        let a: Vec<_> = headers.get_all("a").iter().collect();
        assert_eq!(a, ["2", "3"]);
        assert!(headers.get("b").is_none());
        assert_eq!(headers["c"], "1");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }
}
