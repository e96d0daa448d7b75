//! What hyper hides about HTTP/1 request framing. hyper serves a request carrying both
//! `Content-Length` and `Transfer-Encoding` by the chunked framing alone and drops the
//! `Content-Length` header before the service sees it (RFC 9112 6.1 allows that if the
//! connection closes afterwards, which hyper does); Envoy, and wasmgate, answer 400.
//! So `listener.rs` puts a [`Watched`] under hyper on every HTTP connection: it reads the
//! same bytes hyper reads, follows request heads and body framing (lengths and chunks, as
//! hyper's decoder does), and records the heads it objects to in a [`FramingLog`] the
//! service consults per request (`ProxyError::BadRequest`, flag `DPE`).
//!
//! It only observes: bytes pass through unchanged. Whenever it cannot be sure of a
//! message boundary (HTTP/2, an upgrade or CONNECT, anything hyper itself would reject)
//! it stops watching that connection, and a flagged request must also match the
//! method and target the service got, so it can never blame the wrong request.
//!
//! Being the layer every read passes through, it also holds the connection's
//! first-bytes deadline ([`FirstBytes`]): the one thing it may end a connection for.

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{Method, Uri};
use hyper::rt::Sleep;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest request head followed (hyper answers 431 beyond 60 KiB anyway).
const MAX_HEAD: usize = 64 << 10;

/// Longest chunk-size line or trailer section followed.
const MAX_LINE: usize = 16 << 10;

/// Why a request head is refused.
pub const CL_AND_TE: &str = "Content-Length with Transfer-Encoding";

/// Heads a connection's watcher objected to, for the service.
#[derive(Debug, Default)]
pub struct FramingLog {
    /// Requests the service has taken from this connection.
    served: AtomicU64,
    /// Set once anything is flagged: the usual request checks one atomic.
    any: AtomicBool,
    flagged: Mutex<Vec<Flagged>>,
}

#[derive(Debug)]
struct Flagged {
    /// 0 for the connection's first request head.
    ordinal: u64,
    method: Vec<u8>,
    target: Vec<u8>,
    problem: &'static str,
}

impl FramingLog {
    /// Called once per request, in order: what the watcher found wrong with this
    /// request's head, if anything.
    pub fn next(&self, method: &Method, uri: &Uri) -> Option<&'static str> {
        let ordinal = self.served.fetch_add(1, Ordering::Relaxed);
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let flagged = self.flagged.lock().ok()?;
        let f = flagged.iter().find(|f| f.ordinal == ordinal)?;
        let same = f.method == method.as_str().as_bytes()
            && Uri::try_from(f.target.as_slice()).is_ok_and(|t| t == *uri);
        same.then_some(f.problem)
    }

    fn flag(&self, f: Flagged) {
        if let Ok(mut flagged) = self.flagged.lock() {
            flagged.push(f);
            self.any.store(true, Ordering::Release);
        }
    }
}

/// A connection's byte stream as hyper reads it, watched.
pub struct Watched<S> {
    inner: S,
    tracker: Tracker,
    log: std::sync::Arc<FramingLog>,
    /// Until the connection has shown which protocol it speaks.
    first_bytes: Option<FirstBytes>,
}

impl<S> Watched<S> {
    /// `deadline`: by when the connection must show whether it speaks HTTP/1 or HTTP/2
    /// (`--request-headers-timeout-seconds` from now; see [`FirstBytes`]).
    pub fn new(inner: S, deadline: Pin<Box<dyn Sleep>>) -> (Self, std::sync::Arc<FramingLog>) {
        let log = std::sync::Arc::new(FramingLog::default());
        let watched = Watched {
            inner,
            tracker: Tracker::default(),
            log: log.clone(),
            first_bytes: Some(FirstBytes {
                deadline,
                preface: 0,
            }),
        };
        (watched, log)
    }
}

/// HTTP/2's connection preface: hyper-util tells HTTP/1 from HTTP/2 once a byte differs
/// from it, or all of it came.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's deadline for showing its protocol. hyper's own head timeout starts
/// only once hyper-util has told HTTP/1 from HTTP/2, which has no timeout of its own: a
/// connection that sends nothing, or a few bytes of HTTP/2's preface, would be held
/// until the client leaves. Its reads fail with `TimedOut` when the deadline passes
/// first.
struct FirstBytes {
    deadline: Pin<Box<dyn Sleep>>,
    /// Bytes read so far that match HTTP/2's preface.
    preface: usize,
}

impl FirstBytes {
    /// `read` arrived: is the protocol known now? (An empty read, the end of the
    /// stream, tells nothing; hyper closes the connection.)
    fn known_after(&mut self, read: &[u8]) -> bool {
        let rest = H2_PREFACE.get(self.preface..).unwrap_or_default();
        let n = read.len().min(rest.len());
        if read.get(..n) != rest.get(..n) || n == rest.len() {
            return true;
        }
        self.preface += n;
        false
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && !this.tracker.is_passive()
        {
            this.tracker.feed(&buf.filled()[before..], &this.log);
        }
        if let Some(first) = this.first_bytes.as_mut() {
            let known = match &polled {
                Poll::Ready(Ok(())) => first.known_after(&buf.filled()[before..]),
                Poll::Ready(Err(_)) => true,
                Poll::Pending => {
                    if first.deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no request within --request-headers-timeout-seconds",
                        )));
                    }
                    false
                }
            };
            if known {
                this.first_bytes = None;
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Where the byte stream is, per hyper's HTTP/1 server parser and body decoders.
#[derive(Debug, Default)]
enum State {
    /// Before or inside a request head (leading empty lines skipped, as httparse does).
    #[default]
    Head,
    /// `n` body bytes to go (Content-Length).
    Length(u64),
    /// Chunked body, hyper's `ChunkedState` names.
    ChunkSize(u64),
    ChunkSizeLws(u64),
    ChunkExtension(u64),
    ChunkSizeLf(u64),
    ChunkBody(u64),
    ChunkBodyCr,
    ChunkBodyLf,
    ChunkEndCr,
    ChunkEndLf,
    Trailer,
    TrailerLf,
    /// Not following this connection any more.
    Passive,
}

#[derive(Debug, Default)]
struct Tracker {
    state: State,
    head: Vec<u8>,
    /// Bytes of the current chunk-size line or trailer section.
    line: usize,
    /// Request heads seen.
    heads: u64,
}

impl Tracker {
    fn is_passive(&self) -> bool {
        matches!(self.state, State::Passive)
    }

    fn feed(&mut self, mut bytes: &[u8], log: &FramingLog) {
        while !bytes.is_empty() {
            match self.state {
                State::Passive => return,
                State::Head => {
                    if self.head.is_empty() {
                        // Empty lines before a request line are skipped.
                        let skip = bytes
                            .iter()
                            .position(|b| !matches!(b, b'\r' | b'\n'))
                            .unwrap_or(bytes.len());
                        bytes = &bytes[skip..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    // A whole head within this read (nearly always): read in place, no
                    // copy. Only its first MAX_HEAD bytes are searched: a longer head is
                    // the buffered path's to judge.
                    if self.head.is_empty()
                        && let Some(end) = head_end(&bytes[..bytes.len().min(MAX_HEAD)], 0)
                    {
                        self.state = self.on_head(&bytes[..end], log);
                        bytes = &bytes[end..];
                        continue;
                    }
                    let already = self.head.len();
                    let room = (MAX_HEAD + 4).saturating_sub(already);
                    self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    match head_end(&self.head, already) {
                        Some(end) => {
                            let consumed = end - already;
                            bytes = &bytes[consumed..];
                            self.head.truncate(end);
                            let head = std::mem::take(&mut self.head);
                            self.state = self.on_head(&head, log);
                            self.head = head;
                            self.head.clear();
                        }
                        None => {
                            if self.head.len() > MAX_HEAD {
                                self.state = State::Passive;
                            }
                            return;
                        }
                    }
                }
                State::Length(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Length(left)
                    };
                }
                State::ChunkBody(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkBodyCr
                    } else {
                        State::ChunkBody(left)
                    };
                }
                _ => {
                    self.state = self.chunk_byte(bytes[0]);
                    bytes = &bytes[1..];
                }
            }
        }
    }

    /// One byte of chunk framing, as hyper's chunked decoder reads it.
    fn chunk_byte(&mut self, b: u8) -> State {
        self.line += 1;
        if self.line > MAX_LINE {
            return State::Passive;
        }
        let size_digit = |size: u64| {
            char::from(b)
                .to_digit(16)
                .and_then(|d| size.checked_mul(16)?.checked_add(u64::from(d)))
                .map_or(State::Passive, State::ChunkSize)
        };
        match std::mem::take(&mut self.state) {
            State::ChunkSize(size) => match b {
                b'\t' | b' ' => State::ChunkSizeLws(size),
                b';' => State::ChunkExtension(size),
                b'\r' => State::ChunkSizeLf(size),
                _ => size_digit(size),
            },
            State::ChunkSizeLws(size) => match b {
                b'\t' | b' ' => State::ChunkSizeLws(size),
                b';' => State::ChunkExtension(size),
                b'\r' => State::ChunkSizeLf(size),
                _ => State::Passive,
            },
            State::ChunkExtension(size) => match b {
                b'\r' => State::ChunkSizeLf(size),
                b'\n' => State::Passive,
                _ => State::ChunkExtension(size),
            },
            State::ChunkSizeLf(size) => match (b, size) {
                (b'\n', 0) => {
                    self.line = 0;
                    State::ChunkEndCr
                }
                (b'\n', n) => {
                    self.line = 0;
                    State::ChunkBody(n)
                }
                _ => State::Passive,
            },
            State::ChunkBodyCr if b == b'\r' => State::ChunkBodyLf,
            State::ChunkBodyLf if b == b'\n' => {
                self.line = 0;
                State::ChunkSize(0)
            }
            State::ChunkEndCr => match b {
                b'\r' => State::ChunkEndLf,
                _ => State::Trailer,
            },
            State::ChunkEndLf if b == b'\n' => {
                self.line = 0;
                State::Head
            }
            State::Trailer => match b {
                b'\r' => State::TrailerLf,
                _ => State::Trailer,
            },
            State::TrailerLf if b == b'\n' => State::ChunkEndCr,
            _ => State::Passive,
        }
    }

    /// A complete head: flag it if needed, and say what follows it.
    fn on_head(&mut self, head: &[u8], log: &FramingLog) -> State {
        let ordinal = self.heads;
        self.heads += 1;
        let Some(parsed) = Head::parse(head) else {
            // hyper will refuse it (or it is HTTP/2's preface): stop here.
            return State::Passive;
        };
        if parsed.transfer_encoding && parsed.content_length.is_some() {
            log.flag(Flagged {
                ordinal,
                method: parsed.method.to_vec(),
                target: parsed.target.to_vec(),
                problem: CL_AND_TE,
            });
            // hyper closes the connection after answering it.
            return State::Passive;
        }
        if parsed.method == b"CONNECT" || (parsed.http11 && parsed.upgrade) {
            // Whatever follows may not be HTTP any more.
            return State::Passive;
        }
        if parsed.transfer_encoding {
            if !parsed.http11 || !parsed.chunked {
                return State::Passive; // hyper answers 400
            }
            self.line = 0;
            return State::ChunkSize(0);
        }
        match parsed.content_length {
            Some(Some(0)) | None => State::Head,
            Some(Some(n)) => State::Length(n),
            Some(None) => State::Passive, // invalid: hyper answers 400
        }
    }
}

/// The offset just past the blank line ending a head, searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    // Restart a little before the new bytes: the blank line may straddle reads.
    let mut i = from.saturating_sub(3);
    while let Some(lf) = find_lf(buf, i) {
        match buf.get(lf + 1) {
            Some(b'\n') => return Some(lf + 2),
            Some(b'\r') if buf.get(lf + 2) == Some(&b'\n') => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

/// The first `\n` in `buf` at or after `from`, looked for eight bytes at a time (a word
/// with a zero byte after XOR with `\n`s holds one), so a head is searched line by line
/// instead of byte by byte.
fn find_lf(buf: &[u8], from: usize) -> Option<usize> {
    find_byte(buf, from, b'\n')
}

/// The first `byte` in `buf` from `from` on, eight bytes at a time (a word holds it
/// when `x - 0x01..` borrows into a byte whose own high bit was clear).
#[inline]
fn find_byte(buf: &[u8], from: usize, byte: u8) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let splat = u64::from_ne_bytes([byte; 8]);
    let mut i = from;
    while let Some(word) = buf.get(i..i + 8) {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let x = u64::from_ne_bytes(word) ^ splat;
        if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
            break;
        }
        i += 8;
    }
    let rest = buf.get(i..)?;
    rest.iter().position(|b| *b == byte).map(|at| i + at)
}

/// A head's lines as `split(b'\n')` gives them (the last one after the last `\n`,
/// empty if it ends there), without their `\r`; found eight bytes at a time.
struct Lines<'a> {
    head: &'a [u8],
    at: usize,
    done: bool,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        let end = find_lf(self.head, self.at).unwrap_or_else(|| {
            self.done = true;
            self.head.len()
        });
        let line = self.head.get(self.at..end)?;
        self.at = end + 1;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

/// What the watcher needs from a request head.
#[derive(Debug, PartialEq, Eq)]
struct Head<'a> {
    method: &'a [u8],
    target: &'a [u8],
    http11: bool,
    /// `None`: absent; `Some(None)`: present but not one valid length.
    content_length: Option<Option<u64>>,
    transfer_encoding: bool,
    /// The last `Transfer-Encoding` line ends in `chunked` (hyper's rule).
    chunked: bool,
    upgrade: bool,
}

impl<'a> Head<'a> {
    fn parse(head: &'a [u8]) -> Option<Head<'a>> {
        let mut lines = Lines {
            head,
            at: 0,
            done: false,
        };
        let mut request = lines.next()?.split(|b| *b == b' ');
        let (method, target, version) = (request.next()?, request.next()?, request.next()?);
        if request.next().is_some() || method.is_empty() || target.is_empty() {
            return None;
        }
        let http11 = match version {
            b"HTTP/1.1" => true,
            b"HTTP/1.0" => false,
            _ => return None,
        };
        let mut parsed = Head {
            method,
            target,
            http11,
            content_length: None,
            transfer_encoding: false,
            chunked: false,
            upgrade: false,
        };
        for line in lines.take_while(|l| !l.is_empty()) {
            let colon = find_byte(line, 0, b':')?;
            // Only three names matter: a line that starts with another letter is not
            // read further (byte by byte, the lines cost about 500 instructions a head).
            if !line
                .first()
                .is_some_and(|b| matches!(b | 0x20, b'c' | b't' | b'u'))
            {
                continue;
            }
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok());
                parsed.content_length = match (parsed.content_length, n) {
                    (None, n) => Some(n),
                    (Some(Some(a)), Some(b)) if a == b => Some(Some(a)),
                    _ => Some(None),
                };
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                parsed.transfer_encoding = true;
                parsed.chunked = value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                parsed.upgrade = true;
            }
        }
        Some(parsed)
    }
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blank line is found wherever it falls against the eight-byte words, after
    /// any `from`, and bytes that only look like `\n` in a word (0x8a, 0x0b) are not.
    #[test]
    fn head_end_finds_the_blank_line_at_every_offset() {
        for len in 0..40 {
            for end in ["\r\n\r\n", "\n\n", "\n\r\n"] {
                let mut buf = vec![b'a'; len];
                buf[..len.min(3)].fill(0x8a);
                if len > 5 {
                    buf[5] = 0x0b;
                    buf[4] = b'\n';
                }
                buf.extend_from_slice(end.as_bytes());
                buf.extend_from_slice(b"body");
                let want = len + end.len();
                assert_eq!(head_end(&buf, 0), Some(want), "{len} {end:?}");
                assert_eq!(
                    head_end(&buf, len),
                    Some(want),
                    "{len} {end:?} from the end"
                );
                assert_eq!(head_end(&buf[..want - 1], 0), None, "{len} {end:?} cut");
            }
        }
        assert_eq!(find_lf(b"0123456789abcdef\n", 0), Some(16));
        assert_eq!(find_lf(b"\n123456789", 1), None);
    }

    /// Feed `stream` in pieces of `step` bytes; the requests the log flags, by
    /// (method, target) in order of service.
    fn flagged(stream: &[u8], step: usize, served: &[(&str, &str)]) -> Vec<Option<&'static str>> {
        let log = FramingLog::default();
        let mut tracker = Tracker::default();
        for piece in stream.chunks(step) {
            tracker.feed(piece, &log);
        }
        served
            .iter()
            .map(|(m, t)| {
                let method = Method::from_bytes(m.as_bytes()).unwrap_or(Method::GET);
                let uri: Uri = t.parse().unwrap_or_default();
                log.next(&method, &uri)
            })
            .collect()
    }

    const CLTE: &[u8] =
        b"POST /smuggle HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn content_length_with_transfer_encoding_is_flagged_in_any_order_and_split() {
        let tecl =
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: a\r\ncontent-length: 4\r\n\r\n";
        for step in [1, 3, 7, 1000] {
            assert_eq!(
                flagged(CLTE, step, &[("POST", "/smuggle")]),
                [Some(CL_AND_TE)]
            );
            assert_eq!(flagged(tecl, step, &[("POST", "/x")]), [Some(CL_AND_TE)]);
        }
    }

    #[test]
    fn heads_after_bodies_are_found() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"\r\nGET /one HTTP/1.1\r\nHost: a\r\n\r\n");
        stream
            .extend_from_slice(b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
        stream.extend_from_slice(
            b"POST /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhe\r\nl\r\n3 \r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n",
        );
        stream.extend_from_slice(CLTE);
        for step in [1, 2, 5, 4096] {
            assert_eq!(
                flagged(
                    &stream,
                    step,
                    &[
                        ("GET", "/one"),
                        ("POST", "/two"),
                        ("POST", "/three"),
                        ("POST", "/smuggle")
                    ]
                ),
                [None, None, None, Some(CL_AND_TE)],
                "step {step}"
            );
        }
    }

    #[test]
    fn a_flag_never_lands_on_another_request() {
        // The service sees a different request at that position (say the watcher lost
        // count): nothing is blamed.
        assert_eq!(flagged(CLTE, 10, &[("POST", "/other")]), [None]);
        assert_eq!(flagged(CLTE, 10, &[("GET", "/smuggle")]), [None]);
    }

    #[test]
    fn stops_watching_where_hyper_would_stop_or_switch() {
        let after = |first: &[u8]| {
            let mut stream = first.to_vec();
            stream.extend_from_slice(CLTE);
            flagged(&stream, 4096, &[("GET", "/first"), ("POST", "/smuggle")])
        };
        // Upgrades and CONNECT may switch protocols; HTTP/2's preface is no HTTP/1 head.
        assert_eq!(
            after(b"GET /first HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
            [None, None]
        );
        assert_eq!(after(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), [None, None]);
        // Heads hyper refuses: bad Content-Length, bare-LF chunk line.
        assert_eq!(
            after(b"GET /first HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"),
            [None, None]
        );
        assert_eq!(
            after(b"POST /first HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n"),
            [None, None]
        );
        // An HTTP/1.0 upgrade header is no upgrade: watching goes on.
        assert_eq!(
            after(b"GET /first HTTP/1.0\r\nUpgrade: x\r\n\r\n"),
            [None, Some(CL_AND_TE)]
        );
    }

    #[test]
    fn head_parsing() {
        let head = Head::parse(b"GET /a?b HTTP/1.1\r\nContent-Length: 3\r\ncontent-length:3\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!(
            head,
            Some(Head {
                method: b"GET",
                target: b"/a?b",
                http11: true,
                content_length: Some(Some(3)),
                transfer_encoding: true,
                chunked: false,
                upgrade: false,
            })
        );
        let differing = Head::parse(b"GET / HTTP/1.1\nContent-Length: 3\nContent-Length: 4\n\n");
        assert_eq!(differing.map(|h| h.content_length), Some(Some(None)));
        assert_eq!(Head::parse(b"GET / HTTP/1.1 x\r\n\r\n"), None);
        assert_eq!(Head::parse(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"), None);
        assert_eq!(
            Head::parse(
                b"GET / HTTP/1.1\r\nHost: a\r\nX-Long-Header-Name-Here: v\r\nno colon\r\n\r\n"
            ),
            None
        );
        // Names are matched in any case, lines end in LF or CRLF, and what follows
        // the blank line is not read.
        let mixed = Head::parse(
            b"POST /u HTTP/1.1\nhost: a\r\nTRANSFER-encoding: gzip,Chunked\nuPgRaDe: x\r\n\r\nContent-Length: 9\r\n",
        )
        .expect("parsed");
        assert!(mixed.transfer_encoding && mixed.chunked && mixed.upgrade);
        assert_eq!(mixed.content_length, None);
        // A head cut short still gives what it has (its last line has no LF).
        let cut = Head::parse(b"GET / HTTP/1.0\r\nContent-Length: 12").expect("parsed");
        assert_eq!((cut.http11, cut.content_length), (false, Some(Some(12))));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest", 10), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
    }
}
