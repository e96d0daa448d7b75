//! Edits made from arbitrary bytes: the decision fuzz target (`fuzz/`) sends bytes in a
//! request header, this plugin turns them into any edit the WIT types allow, and the
//! host must act on it without crashing. Every byte string decodes to some edit; running
//! out of bytes reads zeros.

use wasmgate_plugin_sdk::{
    Abort, Action, Destination, DirectResponse, Edit, Forward, Header, HeaderMutation, Mirror,
    Redirect, ResponseEdit, RetryPolicy, RouteRef,
};

/// Strings the host treats specially, so that short inputs reach them.
const WORDS: &[&str] = &[
    "",
    "host",
    ":authority",
    ":path",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "x-envoy-overloaded",
    "set-cookie",
    "location",
    "chunked",
    "0",
    "-1",
    "18446744073709551616",
    "/",
    "//",
    "/a/../..",
    "http://",
    "https://x:99999/",
    "a\r\nb: c",
    "\0",
    "é",
    "outbound|80||upstream.test",
    "upstream.test",
    "*",
    "5xx,reset,connect-failure,retriable-4xx",
];

/// Decodes hex (two digits per byte); anything else is skipped.
pub fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .bytes()
        .filter_map(|c| (c as char).to_digit(16))
        .map(|d| d as u8)
        .collect();
    digits.chunks_exact(2).map(|p| p[0] << 4 | p[1]).collect()
}

/// A reader over the input; past its end every read is zero.
pub struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data, at: 0 }
    }

    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Small values often, the extremes sometimes.
    fn u64(&mut self) -> u64 {
        match self.u8() % 4 {
            0 => u64::from(self.u8()),
            1 => u64::from(self.u32()),
            2 => u64::MAX - u64::from(self.u8()),
            _ => u64::from_le_bytes(std::array::from_fn(|_| self.u8())),
        }
    }

    fn string(&mut self) -> String {
        let tag = self.u8();
        if tag < 128 {
            return WORDS[usize::from(tag) % WORDS.len()].to_string();
        }
        let len = usize::from(tag - 128);
        let bytes: Vec<u8> = (0..len).map(|_| self.u8()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn option<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        if self.bool() { Some(f(self)) } else { None }
    }

    fn list<T>(&mut self, mut f: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.u8() % 5;
        (0..n).map(|_| f(self)).collect()
    }

    fn header(&mut self) -> Header {
        Header {
            name: self.string(),
            value: self.string(),
        }
    }

    fn mutation(&mut self) -> HeaderMutation {
        HeaderMutation {
            set: self.list(Self::header),
            add: self.list(Self::header),
            remove: self.list(Self::string),
        }
    }

    fn destination(&mut self) -> Destination {
        Destination {
            host: self.string(),
            subset: self.option(Self::string),
            port: self.option(Self::u16),
            weight: self.u32(),
            request_headers: self.option(Self::mutation),
            response_headers: self.option(Self::mutation),
        }
    }

    fn action(&mut self) -> Action {
        match self.u8() % 5 {
            0 => Action::NoRoute,
            1 => Action::Forward(Forward {
                destinations: self.list(Self::destination),
                request_headers: self.option(Self::mutation),
                response_headers: self.option(Self::mutation),
                rewrite_path: self.option(Self::string),
                rewrite_authority: self.option(Self::string),
                timeout_ms: self.option(Self::u64),
                retries: self.option(|b| RetryPolicy {
                    attempts: b.u32() % 8,
                    per_try_timeout_ms: b.option(Self::u64),
                    retry_on: b.string(),
                    retry_remote_localities: b.bool(),
                }),
                mirrors: self.list(|b| Mirror {
                    destination: b.destination(),
                    percentage: f64::from(b.u16()) / 100.0 - 100.0,
                }),
            }),
            2 => Action::Redirect(Redirect {
                status: self.u16(),
                location: self.string(),
            }),
            3 => Action::Respond(self.direct()),
            _ => Action::Abort(Abort {
                status: self.u16(),
                grpc_status: self.option(Self::string),
            }),
        }
    }

    fn direct(&mut self) -> DirectResponse {
        DirectResponse {
            status: self.u16(),
            headers: self.list(Self::header),
            body: self.string().into_bytes(),
        }
    }

    /// Any request edit.
    pub fn edit(&mut self) -> Edit {
        Edit {
            route: self.option(|b| RouteRef {
                index: b.u32(),
                name: b.string(),
            }),
            action: self.option(Self::action),
            pick: self.option(Self::u32),
            // Delays stay short so that the fuzzer keeps its pace; the host's cap on long
            // ones has its own test.
            delay_ms: self.option(|b| u64::from(b.u8() % 4)),
            request_headers: self.option(Self::mutation),
            response_headers: self.option(Self::mutation),
            log_fields: self.list(Self::header),
        }
    }

    /// Any response edit.
    pub fn response_edit(&mut self) -> ResponseEdit {
        ResponseEdit {
            headers: self.option(Self::mutation),
            body: self.option(|b| b.string().into_bytes()),
            replace: self.option(Self::direct),
            log_fields: self.list(Self::header),
        }
    }
}
