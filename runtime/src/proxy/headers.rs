//! Header work on the data path, as Envoy does it at an edge (Istio's gateways run with
//! `use_remote_address`): `x-forwarded-for` gets the client address appended,
//! `x-forwarded-proto` is set to the downstream scheme, `x-request-id` is kept from
//! internal clients and generated (UUID v4) otherwise; hop-by-hop headers never cross.
//! Istio's header operations (routes' and plugins') are [`crate::plugin::ops`].

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::entropy::OsRandom;

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

/// A request's id: the `x-request-id` value the request carries (made here or kept
/// from the client), shared by the header, the policies and the access line.
#[derive(Debug, Clone, Default)]
pub struct RequestId(Option<HeaderValue>);

impl RequestId {
    pub fn as_str(&self) -> &str {
        self.0
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The header value (a clone shares its bytes).
    pub fn value(&self) -> Option<&HeaderValue> {
        self.0.as_ref()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A random UUID v4, as Envoy generates for `x-request-id`, formatted by hand (this
/// runs on every request; `format!` per byte showed up in profiles): each byte's two
/// hex digits from [`HEX_PAIRS`] to its place in [`UUID_PLACES`].
fn new_request_id(random: &OsRandom) -> [u8; 36] {
    let hi = random.next_u64();
    let lo = random.next_u64();
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&lo.to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid_text(b)
}

/// The text of the UUID `b`.
fn uuid_text(b: [u8; 16]) -> [u8; 36] {
    let mut out = [b'-'; 36];
    for (x, at) in b.into_iter().zip(UUID_PLACES) {
        out[at..at + 2].copy_from_slice(&HEX_PAIRS[usize::from(x)]);
    }
    out
}

/// Where each of a UUID's 16 bytes goes in its text (8-4-4-4-12 digits, dashes between).
const UUID_PLACES: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/// The two lowercase hex digits of every byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0x0f]];
        i += 1;
    }
    t
};

/// Set `x-request-id`, `x-forwarded-for` and `x-forwarded-proto` on a request from
/// `client` that arrived over `scheme`. Returns the request id. One allocation for the
/// forwarded-for value, one for a new id.
pub fn edge_headers(
    headers: &mut HeaderMap,
    seen: Seen,
    client: IpAddr,
    scheme: &str,
    random: &OsRandom,
) -> RequestId {
    // A name not seen is not looked up (a lookup hashes it: about 130 instructions).
    debug_assert!(
        (seen.has(Seen::X_REQUEST_ID) || !headers.contains_key(X_REQUEST_ID))
            && (seen.has(Seen::X_FORWARDED_FOR) || !headers.contains_key(X_FORWARDED_FOR)),
        "an edge header added after the scan"
    );
    let kept = seen
        .has(Seen::X_REQUEST_ID)
        .then(|| headers.get(&X_REQUEST_ID))
        .flatten()
        .filter(|v| is_internal(client) && !v.is_empty() && v.len() <= 256 && v.to_str().is_ok())
        .cloned();
    let id = match kept {
        Some(value) => RequestId(Some(value)),
        None => {
            // Owned by one shared allocation, so the copies below are reference counts.
            let made =
                HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(new_request_id(random)))
                    .ok();
            if let Some(v) = &made {
                headers.insert(X_REQUEST_ID, v.clone());
            }
            RequestId(made)
        }
    };

    // Every x-forwarded-for line, in order, then the client.
    let mut client_text = [0u8; 64];
    let client_len = write_ip(&mut client_text, client.to_canonical());
    let client_text = &client_text[..client_len];
    let mut xff = Vec::new();
    let earlier = seen
        .has(Seen::X_FORWARDED_FOR)
        .then(|| headers.get_all(&X_FORWARDED_FOR).iter())
        .into_iter()
        .flatten()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    for line in earlier {
        if xff.is_empty() {
            xff.reserve(line.len() + 1 + client_text.len());
        }
        xff.extend_from_slice(line.as_bytes());
        xff.push(b',');
    }
    let value = if xff.is_empty() {
        HeaderValue::from_bytes(client_text)
    } else {
        xff.extend_from_slice(client_text);
        HeaderValue::from_maybe_shared(bytes::Bytes::from(xff))
    };
    if let Ok(v) = value {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if scheme == "https" { "https" } else { "http" }),
    );
    id
}

/// `ip` as text into `out`, its length returned. An IPv4 address is written digit by
/// digit: through `Display` it took about 1,000 instructions, a per-request cost
/// (callgrind, scenario 1); IPv6 still goes through `Display`.
fn write_ip(out: &mut [u8; 64], ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut at = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[at] = b'.';
                    at += 1;
                }
                if octet >= 100 {
                    out[at] = b'0' + octet / 100;
                    at += 1;
                }
                if octet >= 10 {
                    out[at] = b'0' + octet / 10 % 10;
                    at += 1;
                }
                out[at] = b'0' + octet % 10;
                at += 1;
            }
            at
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut out[..]);
            let _ = write!(cursor, "{ip}");
            usize::try_from(cursor.position()).unwrap_or(0)
        }
    }
}

/// `x-forwarded-client-cert` as Istio's gateways set it (Envoy's `SANITIZE_SET`):
/// whatever the client sent is dropped; a client certificate's details replace it.
pub fn client_cert_header(headers: &mut HeaderMap, seen: Seen, xfcc: Option<&str>) {
    debug_assert!(
        seen.has(Seen::X_FORWARDED_CLIENT_CERT) || !headers.contains_key(X_FORWARDED_CLIENT_CERT),
        "x-forwarded-client-cert added after the scan"
    );
    if seen.has(Seen::X_FORWARDED_CLIENT_CERT) {
        headers.remove(X_FORWARDED_CLIENT_CERT);
    }
    if let Some(v) = xfcc.and_then(|x| HeaderValue::from_str(x).ok()) {
        headers.insert(X_FORWARDED_CLIENT_CERT, v);
    }
}

/// The `Upgrade` protocol of an HTTP/1.1 upgrade request (`Connection: upgrade`), such
/// as `websocket`; whether it is tunnelled is the edge's call (`EdgeSettings`).
pub fn upgrade_request(headers: &HeaderMap, seen: Seen) -> Option<HeaderValue> {
    if seen.has(Seen::CONNECTION) && lists_token(headers, header::CONNECTION, "upgrade") {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Does a comma-separated list in any `name` line hold `token` (case-insensitively)?
fn lists_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The hop-by-hop headers always removed (RFC 9110 7.6.1, and what Envoy removes).
/// `connection` and `te` come first (bits 0 and 1 of [`Seen`]): it reads
/// them before removing.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "keep-alive",
    "proxy-connection",
    // h2c's upgrade settings (RFC 7540 3.2.1) mean nothing past this hop.
    "http2-settings",
];

/// [`HOP_BY_HOP`] as names, removed without parsing text into a name again (a removal
/// by `&str` parses it: about 240 instructions).
const HOP_BY_HOP_NAMES: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("http2-settings"),
];

/// Which of the names the edge reads or removes a request carries: the hop-by-hop ones
/// ([`HOP_BY_HOP`], bit `i` for the `i`th), a field named `close`, and the edge headers
/// ([`Seen::X_REQUEST_ID`], ...). Found in one pass over the names, where a name whose
/// length and first letter none of them has is not compared ([`seen_index`]), so that
/// a head without them (most requests) costs no lookup of each: a lookup hashes the
/// name, about 130 instructions (callgrind, scenario 1). A name not seen is absent; one
/// seen may since have been removed (a `Connection` option), which is only a lookup
/// more. A scan holds until one of its names is added: it is taken again after that
/// (debug builds check).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    names: u16,
    /// A field named `close` (RFC 9110 reserves the name): `Connection: close` names it.
    close_field: bool,
}

/// The edge headers [`Seen`] looks for, after [`HOP_BY_HOP`] (bits 9 to 11).
const EDGE_NAMES: [&str; 3] = ["x-request-id", "x-forwarded-for", "x-forwarded-client-cert"];

/// Which of the names [`Seen`] looks for (by bit: [`HOP_BY_HOP`]'s, then
/// [`EDGE_NAMES`]') `name` is: told apart by length and first letter, so that other
/// names (`host`, `date`, `content-type`, `content-length`, ...) need no comparison,
/// and one of these needs one.
fn seen_index(name: &str) -> Option<usize> {
    let i: usize = match (name.len(), name.as_bytes().first()) {
        (10, Some(b'c')) => 0,
        (2, Some(b't')) => 1,
        (7, Some(b't')) => 2,
        (17, Some(b't')) => 3,
        (7, Some(b'u')) => 4,
        (19, Some(b'p')) => 5,
        (10, Some(b'k')) => 6,
        (16, Some(b'p')) => 7,
        (14, Some(b'h')) => 8,
        (12, Some(b'x')) => 9,
        (15, Some(b'x')) => 10,
        (23, Some(b'x')) => 11,
        _ => return None,
    };
    let text = match i.checked_sub(HOP_BY_HOP.len()) {
        None => HOP_BY_HOP[i],
        Some(e) => EDGE_NAMES[e],
    };
    (text == name).then_some(i)
}

impl Seen {
    pub const CONNECTION: u16 = 1 << 0;
    pub const TE: u16 = 1 << 1;
    pub const X_REQUEST_ID: u16 = 1 << HOP_BY_HOP.len();
    pub const X_FORWARDED_FOR: u16 = 1 << (HOP_BY_HOP.len() + 1);
    pub const X_FORWARDED_CLIENT_CERT: u16 = 1 << (HOP_BY_HOP.len() + 2);

    /// One pass over `headers`' names.
    pub fn scan(headers: &HeaderMap) -> Seen {
        let mut seen = Seen::default();
        for name in headers.keys() {
            let name = name.as_str();
            if let Some(i) = seen_index(name) {
                seen.names |= 1 << i;
            }
            seen.close_field |= name == "close";
        }
        seen
    }

    /// Was a name of `bits` seen?
    pub fn has(self, bits: u16) -> bool {
        self.names & bits != 0
    }

    /// The hop-by-hop names seen, as bits of [`HOP_BY_HOP`].
    fn hop_by_hop(self) -> u16 {
        self.names & ((1 << HOP_BY_HOP.len()) - 1)
    }
}

/// Remove hop-by-hop headers (RFC 9110 7.6.1), including those named in `Connection`
/// (but never Host or the edge headers). `te: trailers` survives, as in Envoy: gRPC
/// needs it. A head without them (most requests) costs the pass of [`Seen::scan`] and
/// no lookup, and one with only `Connection: keep-alive` (most responses) one removal.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_seen_hop_by_hop(headers, Seen::scan(headers));
}

/// [`strip_hop_by_hop`] with the names already scanned.
pub fn strip_seen_hop_by_hop(headers: &mut HeaderMap, seen: Seen) {
    debug_assert_eq!(
        seen.hop_by_hop(),
        Seen::scan(headers).hop_by_hop(),
        "a stale scan"
    );
    let mut present = seen.hop_by_hop();
    let close_field = seen.close_field;
    if present == 0 {
        return;
    }
    if present & Seen::CONNECTION != 0
        && let header::Entry::Occupied(connection) = headers.entry(header::CONNECTION)
    {
        present &= !Seen::CONNECTION;
        let (_, values) = connection.remove_entry_mult();
        let mut listed: Vec<HeaderName> = Vec::new();
        // `keep-alive` and `close`, nearly every `Connection` value, are not parsed into
        // names: `keep-alive` is removed by the pass below when it is there, and a
        // `close` field, which the first pass looked for, here.
        let named = |token: &str| {
            if token.eq_ignore_ascii_case("keep-alive") {
                Some(false)
            } else if token.eq_ignore_ascii_case("close") {
                Some(close_field)
            } else {
                None
            }
        };
        for value in values {
            // Most `Connection` lines are one `keep-alive`, which lists nothing: no split.
            if value.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
                continue;
            }
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                if let Some(remove) = named(token) {
                    if remove {
                        listed.push(HeaderName::from_static("close"));
                    }
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                    && !matches!(
                        name.as_str(),
                        "host" | "x-forwarded-for" | "x-forwarded-proto" | "x-request-id"
                    )
                {
                    listed.push(name);
                }
            }
        }
        for name in listed {
            headers.remove(name);
        }
    }
    // After the names `Connection` listed are gone (a listed `te` takes trailers too).
    let trailers = present & Seen::TE != 0 && lists_token(headers, header::TE, "trailers");
    // By reference: the array by value was copied out (nine names) and dropped per
    // call. Most heads have nothing left here (a response's `Connection` is gone).
    if present != 0 {
        for (i, name) in HOP_BY_HOP_NAMES.iter().enumerate() {
            if present & (1 << i) != 0 {
                headers.remove(name);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A UUID's text as `format!` would write it, 8-4-4-4-12 lowercase hex digits;
    /// a request id is a version 4, variant 1 one.
    #[test]
    fn uuid_text_is_formats() {
        for seed in [0u8, 1, 0x5a, 0xff] {
            let b: [u8; 16] =
                std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 17));
            let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
            let expected = format!(
                "{}-{}-{}-{}-{}",
                hex[..4].concat(),
                hex[4..6].concat(),
                hex[6..8].concat(),
                hex[8..10].concat(),
                hex[10..].concat()
            );
            assert_eq!(std::str::from_utf8(&uuid_text(b)), Ok(expected.as_str()));
        }
        let id = new_request_id(&OsRandom);
        let id = std::str::from_utf8(&id).unwrap_or_default();
        assert_eq!(&id[14..15], "4", "{id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }

    #[test]
    fn ip_text_is_displays() {
        let cases: [IpAddr; 8] = [
            [0, 0, 0, 0].into(),
            [255, 255, 255, 255].into(),
            [127, 0, 0, 1].into(),
            [10, 9, 99, 100].into(),
            [1, 20, 199, 250].into(),
            "::1".parse().expect("v6"),
            "2001:db8::8a2e:370:7334".parse().expect("v6"),
            "::ffff:ffff:ffff".parse().expect("v6"),
        ];
        for ip in cases {
            let mut out = [0u8; 64];
            let n = super::write_ip(&mut out, ip);
            assert_eq!(std::str::from_utf8(&out[..n]), Ok(ip.to_string().as_str()));
        }
        for a in 0..=255u8 {
            let ip = IpAddr::from([a, 255 - a, a / 3, a.wrapping_mul(7)]);
            let mut out = [0u8; 64];
            let n = super::write_ip(&mut out, ip);
            assert_eq!(std::str::from_utf8(&out[..n]), Ok(ip.to_string().as_str()));
        }
    }

    /// [`edge_headers`] as the request path calls it: the names scanned first.
    fn edge(headers: &mut HeaderMap, client: IpAddr, scheme: &str, random: &OsRandom) -> RequestId {
        let seen = Seen::scan(headers);
        edge_headers(headers, seen, client, scheme, random)
    }

    #[test]
    fn xff_appends_and_request_id_kept_only_from_internal_clients() {
        let random = OsRandom;
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("abc"));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let id = edge(
            &mut headers,
            "127.0.0.1".parse().unwrap_or(IpAddr::from([0; 4])),
            "http",
            &random,
        );
        assert_eq!(id.as_str(), "abc");
        assert_eq!(headers[&X_FORWARDED_FOR], "203.0.113.9,127.0.0.1");
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");

        let external: IpAddr = IpAddr::from([198, 51, 100, 7]);
        let id = edge(&mut headers, external, "http", &random);
        let id = id.as_str();
        assert_ne!(id, "abc");
        assert_eq!(headers[&X_REQUEST_ID], id);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_eq!(
            headers[&X_FORWARDED_FOR],
            "203.0.113.9,127.0.0.1,198.51.100.7"
        );

        // No earlier x-forwarded-for: the client alone; IPv4-mapped IPv6 as IPv4.
        let mut headers = HeaderMap::new();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap_or(IpAddr::from([0; 4]));
        let made = edge(&mut headers, mapped, "https", &random);
        assert_eq!(headers[&X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert_eq!(headers[&X_REQUEST_ID], made.as_str());
        let v6: IpAddr = "2001:db8::1".parse().unwrap_or(IpAddr::from([0; 4]));
        edge(&mut headers, v6, "http", &random);
        assert_eq!(headers[&X_FORWARDED_FOR], "192.0.2.1,2001:db8::1");
    }

    /// The scan sees each name it looks for, whatever else is there, and nothing that
    /// is not there; what it saw decides which lookups are made.
    #[test]
    fn the_scan_sees_the_names_the_edge_looks_up() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a.example"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static("t"));
        // Names as long as some looked for (12, 14, 10, 7), but none of them, and some
        // of the same length and first letter.
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("t"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1"));
        headers.insert(
            HeaderName::from_static("keep-alivf"),
            HeaderValue::from_static("t"),
        );
        headers.insert(header::REFERER, HeaderValue::from_static("t"));
        headers.insert(
            HeaderName::from_static("x-request-ix"),
            HeaderValue::from_static("t"),
        );
        headers.insert(
            HeaderName::from_static("te-"),
            HeaderValue::from_static("t"),
        );
        headers.insert(HeaderName::from_static("tx"), HeaderValue::from_static("t"));
        assert_eq!(Seen::scan(&headers), Seen::default());
        let names = HOP_BY_HOP.iter().chain(EDGE_NAMES.iter());
        for (i, name) in names.enumerate() {
            let mut with = headers.clone();
            with.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            let seen = Seen::scan(&with);
            assert_eq!(seen.names, 1 << i, "{name}");
            assert!(!seen.close_field);
        }
        headers.insert(
            HeaderName::from_static("close"),
            HeaderValue::from_static("x"),
        );
        assert!(Seen::scan(&headers).close_field);

        // A client's x-forwarded-client-cert goes whether or not one replaces it.
        let mut sent = HeaderMap::new();
        sent.insert(X_FORWARDED_CLIENT_CERT, HeaderValue::from_static("By=evil"));
        let seen = Seen::scan(&sent);
        assert!(seen.has(Seen::X_FORWARDED_CLIENT_CERT));
        client_cert_header(&mut sent, seen, None);
        assert!(sent.is_empty());
        sent.insert(X_FORWARDED_CLIENT_CERT, HeaderValue::from_static("By=evil"));
        let seen = Seen::scan(&sent);
        client_cert_header(&mut sent, seen, Some("Hash=ab"));
        assert_eq!(sent[&X_FORWARDED_CLIENT_CERT], "Hash=ab");

        // Seen, then removed as a `Connection` option: still dropped, then replaced.
        let mut listed = HeaderMap::new();
        listed.insert(X_FORWARDED_CLIENT_CERT, HeaderValue::from_static("By=evil"));
        listed.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-forwarded-client-cert"),
        );
        let seen = Seen::scan(&listed);
        strip_seen_hop_by_hop(&mut listed, seen);
        assert!(listed.is_empty(), "{listed:?}");
        client_cert_header(&mut listed, seen, Some("Hash=ab"));
        assert_eq!(listed[&X_FORWARDED_CLIENT_CERT], "Hash=ab");

        // Upgrade is read only where Connection asks for it.
        let mut up = HeaderMap::new();
        up.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_request(&up, Seen::scan(&up)), None);
        up.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        assert_eq!(
            upgrade_request(&up, Seen::scan(&up)),
            Some(HeaderValue::from_static("websocket"))
        );
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

    #[test]
    fn hop_by_hop_names_are_the_texts_in_order() {
        let names = HOP_BY_HOP_NAMES;
        let texts: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
        assert_eq!(texts, HOP_BY_HOP);
    }

    #[test]
    fn connection_options_that_name_no_header_are_skipped_and_keep_alive_still_goes() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("Close, KEEP-ALIVE ,x-hop"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        // Names as long as hop-by-hop ones (10, 7) that are not: compared, and kept.
        headers.insert("x-kept-ten", HeaderValue::from_static("1"));
        headers.insert("x-seven", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-kept-ten", "x-seven"]);
        // `close` names a field called `close` too (whole value or one of several), and
        // only when `Connection` says so.
        for connection in ["close", "Close, x-hop"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONNECTION, HeaderValue::from_static(connection));
            headers.insert("close", HeaderValue::from_static("1"));
            headers.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut headers);
            let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
            assert_eq!(left, ["x-kept"], "{connection}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.insert("close", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["close"]);
        // A whole `keep-alive` line is skipped unsplit; the lines after it still count.
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        headers.append(header::CONNECTION, HeaderValue::from_static("x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn each_hop_by_hop_header_is_dropped_alone_and_te_trailers_survives() {
        for name in HOP_BY_HOP {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static("x"));
            headers.insert(header::HOST, HeaderValue::from_static("h"));
            strip_hop_by_hop(&mut headers);
            assert!(!headers.contains_key(name), "{name}");
            assert_eq!(headers.len(), 1, "{name}: only Host is left");
        }
        let te = |value: &'static str, connection: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::TE, HeaderValue::from_static(value));
            if let Some(c) = connection {
                headers.insert(header::CONNECTION, HeaderValue::from_static(c));
            }
            strip_hop_by_hop(&mut headers);
            headers.get(header::TE).cloned()
        };
        assert_eq!(
            te("gzip, trailers", None).as_ref().map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert_eq!(te("gzip", None), None);
        // `Connection: te` names it hop-by-hop: it goes, trailers and all.
        assert_eq!(te("trailers", Some("te")), None);
        // Nothing to strip: the head is left as it was.
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("h"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let before = headers.clone();
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
    }
}
