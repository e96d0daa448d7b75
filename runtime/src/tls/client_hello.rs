//! Reading a TLS ClientHello while keeping every byte of it, for the TLS listener: the
//! server name (SNI) picks the Gateway server, and only then does the listener know whether
//! to terminate TLS itself (rustls reading the same bytes again through
//! [`Rewind`](super::rewind::Rewind)) or, for an Istio `PASSTHROUGH` server, to splice the
//! untouched bytes to a backend. [`parse`] looks at whatever has arrived so far and says
//! whether that is enough; [`read`] pulls bytes from the socket until it is.

use std::borrow::Cow;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most bytes the records carrying a ClientHello may take, record headers included.
/// Real ones are a few hundred bytes to a few KiB (post-quantum key shares, long ALPN or
/// session tickets); the cap bounds what a silent or hostile client makes us buffer.
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// What routing needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The SNI `host_name`, ASCII-lowercased and without a trailing dot, so it compares
    /// directly with a Gateway server's hosts. `None` when the client sent none (as clients
    /// do when connecting to an IP address).
    pub server_name: Option<String>,
    /// The ALPN protocol names in the client's order of preference; empty without ALPN.
    pub alpn: Vec<Vec<u8>>,
}

/// The outcome of looking at the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// The whole ClientHello has arrived and is well-formed.
    Complete(ClientHello),
    /// Every byte so far is consistent with a ClientHello that has not fully arrived.
    NeedMore,
    /// Not TLS at all (plain HTTP, an SSLv2-style hello): the first byte is not a handshake
    /// record or a record's version cannot be TLS.
    NotTls,
    /// TLS-looking, but malformed or too large; the reason is for the log.
    Invalid(&'static str),
}

const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER: usize = 5;
/// RFC 8446 5.1: a plaintext record carries at most 2^14 bytes.
const MAX_RECORD: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// BoringSSL's limit, which is what Envoy's TLS inspector applies; DNS names are shorter.
const MAX_HOST_NAME: usize = 255;

const TOO_LARGE: &str = "ClientHello larger than 64 KiB";

/// Parses the ClientHello at the start of `buf`, the connection's first bytes. Bytes after
/// the ClientHello are ignored. Never panics; the work is linear in `buf.len()`.
pub fn parse(buf: &[u8]) -> Parse {
    Scanner::default().scan(buf)
}

/// Reads from `stream`, appending to `buf`, until [`parse`] of `buf` is no longer
/// [`Parse::NeedMore`], and returns that. Bytes past the ClientHello may have been read
/// too: the caller replays all of `buf`, never just the ClientHello. `buf` never grows
/// beyond [`MAX_CLIENT_HELLO`]` + 5` bytes. There is no timeout here; the caller owns one.
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Parse> {
    // Most ClientHellos arrive in one segment; this reads them in one call.
    const CHUNK: usize = 4096;
    // One scanner across reads, so a client trickling its hello a byte at a time costs a
    // look at each new byte, not a rescan of up to 64 KiB per byte.
    let mut scanner = Scanner::default();
    loop {
        match scanner.scan(buf) {
            Parse::NeedMore => {}
            done => return Ok(done),
        }
        // The scanner asks for more only while the records end before MAX_CLIENT_HELLO or
        // a record header is incomplete, so there is room; the guard keeps that reasoning
        // from being load-bearing.
        let room = (MAX_CLIENT_HELLO + RECORD_HEADER).saturating_sub(buf.len());
        if room == 0 {
            return Ok(Parse::Invalid(TOO_LARGE));
        }
        buf.reserve(room.min(CHUNK));
        // `read_buf` fills spare capacity without zeroing it first, which matters when a
        // client sends one byte per segment; `take` is what enforces the bound.
        let room = u64::try_from(room).unwrap_or(u64::MAX);
        if (&mut *stream).take(room).read_buf(buf).await? == 0 {
            return Ok(Parse::Invalid(
                "connection closed before the ClientHello ended",
            ));
        }
    }
}

/// Where a walk over the handshake records stopped, so that it can resume when more bytes
/// arrive. Only complete records are consumed.
#[derive(Default)]
struct Scanner {
    /// Where the next record header starts.
    pos: usize,
    /// Handshake-message bytes in the records consumed so far.
    in_hand: usize,
    /// The message's 4-byte handshake header, which may itself span records.
    head: [u8; 4],
}

impl Scanner {
    /// Continues over `buf`, which must start with the bytes seen by earlier calls.
    fn scan(&mut self, buf: &[u8]) -> Parse {
        loop {
            if self.pos >= MAX_CLIENT_HELLO {
                return Parse::Invalid(TOO_LARGE);
            }
            let rest = buf.get(self.pos..).unwrap_or_default();
            let header = &rest[..rest.len().min(RECORD_HEADER)];
            // Judge each header byte as soon as it arrives, so that plain HTTP is told
            // apart after its first byte rather than after five.
            if let Some(&content_type) = header.first()
                && content_type != CONTENT_TYPE_HANDSHAKE
            {
                return if self.pos == 0 {
                    Parse::NotTls
                } else {
                    Parse::Invalid("non-handshake record before the ClientHello ended")
                };
            }
            // Every TLS version, SSL 3.0 through TLS 1.3, puts 3 in the record version's
            // major byte; SSLv2-style hellos and other protocols do not.
            if let Some(&major) = header.get(1)
                && major != 3
            {
                return Parse::NotTls;
            }
            let [_, _, _, hi, lo] = *header else {
                return Parse::NeedMore;
            };
            let length = usize::from(u16::from_be_bytes([hi, lo]));
            if length == 0 {
                // RFC 8446 5.1 forbids empty handshake fragments; refusing them also means
                // every record moves the scan forward by more than its header.
                return Parse::Invalid("empty handshake record");
            }
            if length > MAX_RECORD {
                return Parse::Invalid("record longer than 2^14 bytes");
            }
            let end = self.pos + RECORD_HEADER + length;
            if end > MAX_CLIENT_HELLO {
                return Parse::Invalid(TOO_LARGE);
            }
            let Some(fragment) = buf.get(self.pos + RECORD_HEADER..end) else {
                return Parse::NeedMore;
            };
            for (slot, &byte) in self.head.iter_mut().skip(self.in_hand).zip(fragment) {
                *slot = byte;
            }
            self.in_hand += length;
            self.pos = end;

            if self.head[0] != HANDSHAKE_CLIENT_HELLO {
                return Parse::Invalid("first handshake message is not a ClientHello");
            }
            if self.in_hand >= 4 {
                let [_, a, b, c] = self.head;
                let total = 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
                if total > MAX_CLIENT_HELLO {
                    return Parse::Invalid(TOO_LARGE);
                }
                if self.in_hand >= total {
                    return match client_hello(&reassemble(buf, total)) {
                        Ok(hello) => Parse::Complete(hello),
                        Err(reason) => Parse::Invalid(reason),
                    };
                }
            }
        }
    }
}

/// The body of a `total`-byte handshake message carried by the (already checked) records
/// at the start of `buf`: borrowed when one record holds it all, the usual case.
fn reassemble(buf: &[u8], total: usize) -> Cow<'_, [u8]> {
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut rest = buf;
    while message.len() < total {
        let Some(([_, _, _, hi, lo], after)) = rest.split_first_chunk::<RECORD_HEADER>() else {
            break;
        };
        let length = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some((fragment, after)) = after.split_at_checked(length) else {
            break;
        };
        if message.is_empty() {
            message = Cow::Borrowed(fragment);
        } else {
            message.to_mut().extend_from_slice(fragment);
        }
        rest = after;
    }
    // Whatever follows in the last record is the next message's business.
    match message {
        Cow::Borrowed(m) => Cow::Borrowed(m.get(4..total).unwrap_or_default()),
        Cow::Owned(mut m) => {
            m.truncate(total);
            m.drain(..m.len().min(4));
            Cow::Owned(m)
        }
    }
}

/// Parses a ClientHello body (RFC 8446 4.1.2; TLS 1.0-1.2 share the layout).
fn client_hello(body: &[u8]) -> Result<ClientHello, &'static str> {
    let mut r = Reader(body);
    r.take(2, "ClientHello truncated in legacy_version")?;
    r.take(32, "ClientHello truncated in random")?;
    let session_id = r.vec8("ClientHello truncated in session_id")?;
    if session_id.len() > 32 {
        return Err("session_id longer than 32 bytes");
    }
    let suites = r.vec16("ClientHello truncated in cipher_suites")?;
    if suites.len() < 2 || suites.len() % 2 != 0 {
        return Err("cipher_suites length is not a positive even number");
    }
    let compression = r.vec8("ClientHello truncated in compression_methods")?;
    if compression.is_empty() {
        return Err("compression_methods is empty");
    }

    let mut hello = ClientHello::default();
    // Pre-TLS-1.2 clients may stop here: no extensions, so no SNI and no ALPN.
    if r.0.is_empty() {
        return Ok(hello);
    }
    let mut extensions = Reader(r.vec16("ClientHello truncated in extensions")?);
    if !r.0.is_empty() {
        return Err("bytes after the ClientHello extensions");
    }
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !extensions.0.is_empty() {
        let kind = extensions.u16("extension truncated in its type")?;
        let data = extensions.vec16("extension longer than the extensions block")?;
        // A repeated extension is forbidden (RFC 8446 4.2), and two server names would let
        // the router and the backend disagree about which one counts.
        match kind {
            EXT_SERVER_NAME if seen_sni => return Err("server_name extension repeated"),
            EXT_SERVER_NAME => {
                seen_sni = true;
                hello.server_name = server_name(data)?;
            }
            EXT_ALPN if seen_alpn => return Err("ALPN extension repeated"),
            EXT_ALPN => {
                seen_alpn = true;
                hello.alpn = alpn(data)?;
            }
            _ => {}
        }
    }
    Ok(hello)
}

/// The server_name extension (RFC 6066 3): the first `host_name` entry.
fn server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let mut ext = Reader(data);
    let mut list = Reader(ext.vec16("server_name list length missing or too long")?);
    if !ext.0.is_empty() {
        return Err("server_name list length disagrees with the extension length");
    }
    if list.0.is_empty() {
        return Err("server_name list is empty");
    }
    let mut found = None;
    while !list.0.is_empty() {
        let name_type = list.u8("server_name entry truncated")?;
        // RFC 6066 requires every name type, known or future, to be u16-length-prefixed,
        // which is what lets unknown entries be skipped.
        let name = list.vec16("server_name entry longer than its list")?;
        if name_type == NAME_TYPE_HOST_NAME && found.is_none() {
            found = Some(host_name(name)?);
        }
    }
    Ok(found)
}

fn host_name(name: &[u8]) -> Result<String, &'static str> {
    if name.len() > MAX_HOST_NAME {
        return Err("server name longer than 255 bytes");
    }
    // Host names in SNI are A-labels (RFC 6066 3); control bytes, spaces and non-ASCII
    // could only confuse the log and the host matching.
    if !name.iter().all(u8::is_ascii_graphic) {
        return Err("server name is not printable ASCII");
    }
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err("server name is empty");
    }
    Ok(name
        .iter()
        .map(|&b| char::from(b.to_ascii_lowercase()))
        .collect())
}

/// The ALPN extension (RFC 7301 3.1): a non-empty list of non-empty protocol names.
fn alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut ext = Reader(data);
    let mut list = Reader(ext.vec16("ALPN list length missing or too long")?);
    if !ext.0.is_empty() {
        return Err("ALPN list length disagrees with the extension length");
    }
    if list.0.is_empty() {
        return Err("ALPN list is empty");
    }
    let mut protocols = Vec::new();
    while !list.0.is_empty() {
        let protocol = list.vec8("ALPN protocol name longer than its list")?;
        if protocol.is_empty() {
            return Err("ALPN protocol name is empty");
        }
        protocols.push(protocol.to_vec());
    }
    Ok(protocols)
}

/// A cursor over a slice whose reads fail with the caller's reason instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, truncated: &'static str) -> Result<&'a [u8], &'static str> {
        if n > self.0.len() {
            return Err(truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, truncated: &'static str) -> Result<u8, &'static str> {
        Ok(self.take(1, truncated)?[0])
    }

    fn u16(&mut self, truncated: &'static str) -> Result<u16, &'static str> {
        let b = self.take(2, truncated)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, truncated: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u8(truncated)?;
        self.take(usize::from(n), truncated)
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, truncated: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u16(truncated)?;
        self.take(usize::from(n), truncated)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The first flight of a real rustls client. The one place naming a crypto provider.
    fn rustls_hello(server_name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .expect("valid server name");
        let mut client =
            rustls::ClientConnection::new(Arc::new(config), name).expect("client config");
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).expect("write to a Vec");
        }
        out
    }

    fn real_hello() -> Vec<u8> {
        rustls_hello("gateway.example.com", &[b"h2", b"http/1.1"])
    }

    fn expected() -> ClientHello {
        ClientHello {
            server_name: Some("gateway.example.com".into()),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }

    /// Re-cuts the handshake bytes carried by `records` into records of at most `size`.
    fn refragment(records: &[u8], size: usize) -> Vec<u8> {
        let mut payload = Vec::new();
        let mut rest = records;
        while let Some(([_, _, _, hi, lo], after)) = rest.split_first_chunk::<5>() {
            let length = usize::from(u16::from_be_bytes([*hi, *lo]));
            payload.extend_from_slice(&after[..length]);
            rest = &after[length..];
        }
        let mut out = Vec::new();
        for fragment in payload.chunks(size) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(
                &u16::try_from(fragment.len())
                    .expect("length fits")
                    .to_be_bytes(),
            );
            out.extend_from_slice(fragment);
        }
        out
    }

    fn vec8(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(bytes.len()).expect("length fits")];
        out.extend_from_slice(bytes);
        out
    }

    fn vec16(bytes: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(bytes.len())
            .expect("length fits")
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(bytes);
        out
    }

    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend(vec16(data));
        out
    }

    fn sni(names: &[(u8, &[u8])]) -> Vec<u8> {
        let list: Vec<u8> = names
            .iter()
            .flat_map(|(kind, name)| {
                let mut entry = vec![*kind];
                entry.extend(vec16(name));
                entry
            })
            .collect();
        extension(EXT_SERVER_NAME, &vec16(&list))
    }

    fn alpn_ext(protocols: &[&[u8]]) -> Vec<u8> {
        let list: Vec<u8> = protocols.iter().flat_map(|p| vec8(p)).collect();
        extension(EXT_ALPN, &vec16(&list))
    }

    /// A ClientHello body with the given extensions block (`None`: no block at all).
    fn body(extensions: Option<&[u8]>) -> Vec<u8> {
        let mut out = vec![3, 3];
        out.extend([7; 32]);
        out.extend(vec8(&[9; 32]));
        out.extend(vec16(&[0x13, 0x01, 0x13, 0x02]));
        out.extend(vec8(&[0]));
        if let Some(extensions) = extensions {
            out.extend(vec16(extensions));
        }
        out
    }

    /// One handshake message of type `kind`, in records of at most 2^14 bytes.
    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut handshake = vec![kind];
        handshake.extend_from_slice(
            &u32::try_from(body.len())
                .expect("length fits")
                .to_be_bytes()[1..],
        );
        handshake.extend_from_slice(body);
        let mut out = Vec::new();
        for fragment in handshake.chunks(MAX_RECORD) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend(vec16(fragment));
        }
        out
    }

    fn hello(extensions: &[Vec<u8>]) -> Vec<u8> {
        message(1, &body(Some(&extensions.concat())))
    }

    #[test]
    fn real_client_hello() {
        assert_eq!(parse(&real_hello()), Parse::Complete(expected()));
    }

    #[test]
    fn every_prefix_needs_more() {
        let bytes = real_hello();
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Parse::NeedMore, "cut at {cut}");
        }
    }

    #[test]
    fn bytes_after_the_hello_are_ignored() {
        let mut bytes = real_hello();
        bytes.extend_from_slice(&[23, 3, 3, 0, 5, 1, 2, 3]);
        assert_eq!(parse(&bytes), Parse::Complete(expected()));
    }

    #[test]
    fn many_small_records() {
        for size in [1, 3, 50, 100, 1000] {
            let bytes = refragment(&real_hello(), size);
            assert_eq!(
                parse(&bytes),
                Parse::Complete(expected()),
                "{size}-byte records"
            );
            let last = bytes.len() - 1;
            assert_eq!(parse(&bytes[..last]), Parse::NeedMore);
        }
    }

    #[test]
    fn no_sni_for_an_ip_address() {
        let bytes = rustls_hello("192.0.2.7", &[b"h2"]);
        let Parse::Complete(hello) = parse(&bytes) else {
            panic!("{:?}", parse(&bytes));
        };
        assert_eq!(hello.server_name, None);
        assert_eq!(hello.alpn, vec![b"h2".to_vec()]);
    }

    #[test]
    fn no_alpn() {
        let Parse::Complete(hello) = parse(&rustls_hello("a.example", &[])) else {
            panic!("not complete");
        };
        assert_eq!(hello.server_name.as_deref(), Some("a.example"));
        assert!(hello.alpn.is_empty());
    }

    #[test]
    fn server_name_lowercased_without_trailing_dot() {
        let from_rustls = parse(&rustls_hello("Gateway.EXAMPLE.com", &[]));
        let crafted = parse(&hello(&[sni(&[(0, b"WWW.Example.COM.")])]));
        for (parsed, name) in [
            (from_rustls, "gateway.example.com"),
            (crafted, "www.example.com"),
        ] {
            let Parse::Complete(parsed) = parsed else {
                panic!("not complete: {parsed:?}");
            };
            assert_eq!(parsed.server_name.as_deref(), Some(name));
        }
    }

    #[test]
    fn first_host_name_wins_and_unknown_name_types_are_skipped() {
        let bytes = hello(&[sni(&[
            (7, b"opaque"),
            (0, b"first.test"),
            (0, b"second.test"),
        ])]);
        let Parse::Complete(hello) = parse(&bytes) else {
            panic!("not complete");
        };
        assert_eq!(hello.server_name.as_deref(), Some("first.test"));
    }

    #[test]
    fn no_extensions_at_all() {
        let bytes = message(1, &body(None));
        assert_eq!(parse(&bytes), Parse::Complete(ClientHello::default()));
        let bytes = message(1, &body(Some(&[])));
        assert_eq!(parse(&bytes), Parse::Complete(ClientHello::default()));
    }

    #[test]
    fn not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parse::NotTls);
        assert_eq!(parse(b"G"), Parse::NotTls);
        assert_eq!(parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Parse::NotTls);
        // SSLv2-compatible hello: two-byte length with the top bit set, then type 1.
        assert_eq!(
            parse(&[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15]),
            Parse::NotTls
        );
        // A handshake content type but no TLS version.
        assert_eq!(parse(&[22, 0x47]), Parse::NotTls);
        let mut bytes = real_hello();
        bytes[1] = 2;
        assert_eq!(parse(&bytes), Parse::NotTls);
        assert_eq!(parse(&[]), Parse::NeedMore);
    }

    fn invalid(bytes: &[u8]) -> &'static str {
        match parse(bytes) {
            Parse::Invalid(reason) => reason,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn malformed_record_layer() {
        assert_eq!(invalid(&[22, 3, 1, 0, 0]), "empty handshake record");
        assert_eq!(
            invalid(&[22, 3, 1, 0x40, 0x01]),
            "record longer than 2^14 bytes"
        );
        assert_eq!(
            invalid(&message(2, &body(None))),
            "first handshake message is not a ClientHello"
        );
        // An alert between two fragments of the hello.
        let hello = refragment(&real_hello(), 100);
        let mut bytes = hello[..105].to_vec();
        bytes.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
        bytes.extend_from_slice(&hello[105..]);
        assert_eq!(
            invalid(&bytes),
            "non-handshake record before the ClientHello ended"
        );
        // A record claiming a later major version mid-hello.
        let mut bytes = hello.clone();
        bytes[106] = 4;
        assert_eq!(parse(&bytes), Parse::NotTls);
    }

    #[test]
    fn malformed_client_hello() {
        let mut b = body(None);
        b[34] = 33; // session_id length
        b.extend([0; 1]);
        assert_eq!(invalid(&message(1, &b)), "session_id longer than 32 bytes");

        let mut b = body(None);
        b[35 + 32 + 1] = 3; // cipher_suites length, odd
        assert_eq!(
            invalid(&message(1, &b)),
            "cipher_suites length is not a positive even number"
        );

        let mut b = body(None);
        b[35 + 32 + 1] = 0; // no cipher suites
        assert_eq!(
            invalid(&message(1, &b)),
            "cipher_suites length is not a positive even number"
        );

        let mut b = body(None);
        let last = b.len() - 2;
        b.truncate(last);
        b.push(0); // empty compression_methods
        assert_eq!(invalid(&message(1, &b)), "compression_methods is empty");

        let b = body(None);
        assert_eq!(
            invalid(&message(1, &b[..30])),
            "ClientHello truncated in random"
        );

        let mut b = body(Some(&sni(&[(0, b"a.test")])));
        b.push(0);
        assert_eq!(
            invalid(&message(1, &b)),
            "bytes after the ClientHello extensions"
        );

        let mut b = body(Some(&sni(&[(0, b"a.test")])));
        let ext_len = b.len() - sni(&[(0, b"a.test")]).len() - 1;
        b[ext_len] += 1;
        assert_eq!(
            invalid(&message(1, &b)),
            "ClientHello truncated in extensions"
        );
    }

    #[test]
    fn malformed_server_name() {
        assert_eq!(invalid(&hello(&[sni(&[(0, b"")])])), "server name is empty");
        assert_eq!(
            invalid(&hello(&[sni(&[(0, b".")])])),
            "server name is empty"
        );
        assert_eq!(
            invalid(&hello(&[sni(&[(0, b"a\0.test")])])),
            "server name is not printable ASCII"
        );
        assert_eq!(
            invalid(&hello(&[sni(&[(0, "bücher.test".as_bytes())])])),
            "server name is not printable ASCII"
        );
        assert_eq!(
            invalid(&hello(&[sni(&[(0, &[b'a'; 256])])])),
            "server name longer than 255 bytes"
        );
        assert_eq!(
            invalid(&hello(&[extension(EXT_SERVER_NAME, &vec16(&[]))])),
            "server_name list is empty"
        );
        assert_eq!(
            invalid(&hello(&[extension(EXT_SERVER_NAME, &[])])),
            "server_name list length missing or too long"
        );
        // List length one short of the entries, then one past them.
        let mut ext = sni(&[(0, b"a.test")]);
        ext[5] -= 1;
        ext.truncate(ext.len() - 1);
        ext[3] -= 1;
        assert_eq!(
            invalid(&hello(&[ext])),
            "server_name entry longer than its list"
        );
        let mut ext = sni(&[(0, b"a.test")]);
        ext[5] -= 1;
        assert_eq!(
            invalid(&hello(&[ext])),
            "server_name list length disagrees with the extension length"
        );
        assert_eq!(
            invalid(&hello(&[sni(&[(0, b"a.test")]), sni(&[(0, b"b.test")])])),
            "server_name extension repeated"
        );
    }

    #[test]
    fn malformed_alpn() {
        assert_eq!(
            invalid(&hello(&[alpn_ext(&[b"h2", b""])])),
            "ALPN protocol name is empty"
        );
        assert_eq!(invalid(&hello(&[alpn_ext(&[])])), "ALPN list is empty");
        let mut ext = alpn_ext(&[b"h2"]);
        ext[6] = 5; // protocol name length past the list
        assert_eq!(
            invalid(&hello(&[ext])),
            "ALPN protocol name longer than its list"
        );
        assert_eq!(
            invalid(&hello(&[alpn_ext(&[b"h2"]), alpn_ext(&[b"h2"])])),
            "ALPN extension repeated"
        );
        let Parse::Complete(hello) = parse(&hello(&[alpn_ext(&[b"h2", b"x"])])) else {
            panic!("not complete");
        };
        assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"x".to_vec()]);
    }

    #[test]
    fn flipped_bytes_never_panic() {
        for bytes in [real_hello(), refragment(&real_hello(), 50)] {
            for i in 0..bytes.len() {
                for mask in [0x01, 0x80, 0xff] {
                    let mut garbled = bytes.clone();
                    garbled[i] ^= mask;
                    let _ = parse(&garbled);
                    let _ = parse(&garbled[..garbled.len() / 2]);
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // A fixed LCG: reproducible without a dependency.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 33) as u8
        };
        for _ in 0..20_000 {
            let len = usize::from(next()) * 2;
            let mut bytes: Vec<u8> = (0..len).map(|_| next()).collect();
            // Mostly plausible headers, so the fuzzing gets past the first checks.
            if len > 9 {
                let [hi, lo] = u16::try_from(len - 5).expect("length fits").to_be_bytes();
                bytes[..6].copy_from_slice(&[22, 3, 1, hi, lo, 1]);
                if next() & 1 == 0 {
                    let [_, a, b, c] = u32::try_from(len - 9).expect("length fits").to_be_bytes();
                    bytes[6..9].copy_from_slice(&[a, b, c]);
                }
            }
            let _ = parse(&bytes);
        }
    }

    /// A hello padded with an unknown extension to exactly `size` bytes of records,
    /// headers included.
    fn padded_hello(size: usize) -> Vec<u8> {
        let with_padding = |padding: usize| {
            hello(&[
                sni(&[(0, b"big.test")]),
                extension(0xfafa, &vec![0; padding]),
            ])
        };
        // Record headers depend on the length, so settle the padding by stepping down.
        let mut padding = size - with_padding(0).len();
        loop {
            let bytes = with_padding(padding);
            if bytes.len() <= size {
                assert_eq!(bytes.len(), size, "no padding fits {size} exactly");
                return bytes;
            }
            padding -= 1;
        }
    }

    #[test]
    fn size_cap() {
        let Parse::Complete(hello) = parse(&padded_hello(MAX_CLIENT_HELLO)) else {
            panic!("a hello of exactly the cap is accepted");
        };
        assert_eq!(hello.server_name.as_deref(), Some("big.test"));
        assert_eq!(invalid(&padded_hello(MAX_CLIENT_HELLO + 1)), TOO_LARGE);
        // Known from the handshake header alone, without waiting for the bytes.
        assert_eq!(invalid(&[22, 3, 1, 0, 4, 1, 1, 0, 0]), TOO_LARGE);
        // Tiny records whose headers push a modest message past the cap.
        let small = refragment(&padded_hello(20_000), 1);
        assert_eq!(invalid(&small), TOO_LARGE);
    }

    /// Hands out its bytes `step` at a time, then EOF.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let end = self
                .bytes
                .len()
                .min(self.at + self.step)
                .min(self.at + buf.remaining());
            buf.put_slice(&self.bytes[self.at..end]);
            self.at = end;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn read_stops_once_complete() {
        let bytes = real_hello();
        for cut in 0..=bytes.len() {
            let mut stream = (&bytes[..cut]).chain(&bytes[cut..]);
            let mut buf = Vec::new();
            let parsed = read(&mut stream, &mut buf).await.expect("read from memory");
            assert_eq!(parsed, Parse::Complete(expected()), "cut at {cut}");
            assert_eq!(buf, bytes);
        }
    }

    #[tokio::test]
    async fn read_keeps_what_the_caller_already_had() {
        let bytes = real_hello();
        let mut buf = bytes[..10].to_vec();
        let mut rest = &bytes[10..];
        assert_eq!(
            read(&mut rest, &mut buf).await.expect("read from memory"),
            Parse::Complete(expected())
        );
        assert_eq!(buf, bytes);
    }

    #[tokio::test]
    async fn read_a_byte_at_a_time() {
        let bytes = refragment(&padded_hello(60_000), 1000);
        let mut stream = Trickle {
            bytes: bytes.clone(),
            at: 0,
            step: 1,
        };
        let mut buf = Vec::new();
        let Parse::Complete(hello) = read(&mut stream, &mut buf).await.expect("read from memory")
        else {
            panic!("not complete");
        };
        assert_eq!(hello.server_name.as_deref(), Some("big.test"));
        assert_eq!(buf, bytes);
    }

    #[tokio::test]
    async fn read_gives_up_at_the_cap() {
        // 1-byte records of a 60 KB message: the headers push it past the cap.
        let bytes = refragment(&padded_hello(60_000), 1);
        for step in [1, 7, 4096, 100_000] {
            let mut stream = Trickle {
                bytes: bytes.clone(),
                at: 0,
                step,
            };
            let mut buf = Vec::new();
            let parsed = read(&mut stream, &mut buf).await.expect("read from memory");
            assert_eq!(parsed, Parse::Invalid(TOO_LARGE));
            assert!(buf.len() <= MAX_CLIENT_HELLO + 5, "{}", buf.len());
        }
    }

    #[tokio::test]
    async fn read_eof_and_not_tls() {
        let bytes = real_hello();
        let mut short = &bytes[..bytes.len() - 1];
        let mut buf = Vec::new();
        assert_eq!(
            read(&mut short, &mut buf).await.expect("read from memory"),
            Parse::Invalid("connection closed before the ClientHello ended")
        );
        let mut empty: &[u8] = &[];
        assert_eq!(
            read(&mut empty, &mut Vec::new())
                .await
                .expect("read from memory"),
            Parse::Invalid("connection closed before the ClientHello ended")
        );
        let mut http: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut buf = Vec::new();
        assert_eq!(
            read(&mut http, &mut buf).await.expect("read from memory"),
            Parse::NotTls
        );
        assert!(buf.starts_with(b"GET"));
    }

    #[tokio::test]
    async fn read_passes_io_errors_on() {
        struct Broken;
        impl AsyncRead for Broken {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
            }
        }
        let mut buf = vec![22, 3];
        let err = read(&mut Broken, &mut buf)
            .await
            .expect_err("the reset surfaces");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        assert_eq!(buf, [22, 3]);
    }
}
