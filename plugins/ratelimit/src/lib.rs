//! First-party component: Envoy's local rate limit (`envoy.filters.http.local_ratelimit`),
//! a token bucket per key, as a Wasm policy. The operator binds it with a WasmPlugin
//! whose `url` is `builtin://ratelimit`; the gateway grants it `clock` and `state`.
//!
//! ```yaml
//! pluginConfig:
//!   tokenBucket:
//!     maxTokens: 10        # required, at least 1: what the bucket holds, and starts with
//!     tokensPerFill: 10    # default 1, at least 1
//!     fillInterval: 60s    # required: 500ms, 1.5s, 1m, 1h; at least 50ms (Envoy's minimum)
//!   key: {header: x-user}  # or {clientAddress: {}}, {claim: sub}, {path: {}};
//!                          # absent (or {}): one bucket for every request
//!   scope: local           # or global: which store the gateway keeps buckets in
//!   statusCode: 429        # default 429, 400 to 599
//! ```
//!
//! As Envoy's token bucket: a bucket starts full; every `fillInterval` it gains
//! `tokensPerFill` tokens, never more than `maxTokens`; a request takes one token, or is
//! limited when there is none. Fills are discrete, at whole multiples of `fillInterval`
//! since the bucket's first request (Envoy runs one fill timer per filter; here each
//! bucket keeps its own phase): half an interval adds nothing.
//!
//! An allowed request goes on with `x-ratelimit-limit` (`maxTokens`),
//! `x-ratelimit-remaining` (tokens left after it) and `x-ratelimit-reset` (whole seconds
//! until the next fill, rounded up) on its response, the headers of Envoy's
//! `enable_x_ratelimit_headers: DRAFT_VERSION_03` (for an interval of whole seconds the
//! reset is Envoy's value; for others Envoy truncates, down to 0, where rounding up never
//! tells a client to come back before the fill). A limited one gets
//! Envoy's local reply, `statusCode` with the body `local_rate_limited`, the same three
//! headers (remaining 0), and `ratelimit=limited` in the access log.
//!
//! The key picks the bucket: a request header's (first) value, the client's address, a
//! claim of the verified JWT (property `request.auth.claims`, set by the jwt-authn
//! component: a string as it is, a number or boolean as its JSON text), or the path. A
//! request without that value — no such header or claim, an empty one, a claim that is
//! an object, a list or null, no verified JWT — counts in one bucket that all such
//! requests share, so leaving the header out buys nothing. Only what the key needs is
//! read from the request.
//!
//! Buckets live in the gateway's state store, so every instance of the plugin counts in
//! the same ones: each request reads its bucket and writes it back with a
//! compare-and-swap, and retries when another instance wrote in between, so the counts
//! are exact however many requests run at once. A bucket is stored as `tokens:last_fill`
//! (ASCII, the last fill in Unix milliseconds) and expires when it would be full again,
//! which is what an absent bucket means. A limited request writes nothing. The store is
//! one per WasmPlugin and namespace: every VirtualService the plugin is bound to in a
//! namespace counts in the same buckets, as routes share the bucket of Envoy's
//! filter-level config. A local store that is full (10,000 buckets at once: a flood of
//! distinct keys) limits the keys it has no bucket for, so a flood never buys anyone an
//! unlimited pass, while the buckets it holds keep counting. When the store or the clock
//! fails otherwise (not granted, Redis down) the call fails with a `PluginError`, and
//! the WasmPlugin's `failStrategy` decides.

#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use wasmgate_plugin_sdk::{
    Action, Binding, ConfigError, DirectResponse, Edit, Header, PluginError, Policy, Request,
    clock, export_policy, parse_config, state,
};

/// The body of a limited request's reply, as Envoy's local rate limit filter sends it.
pub const LIMITED_BODY: &str = "local_rate_limited";

/// Envoy refuses a shorter fill interval ("local rate limit token bucket fill timer must
/// be >= 50ms").
pub const MIN_FILL_INTERVAL_MS: u64 = 50;

/// Reads and compare-and-swaps of one request's bucket before it gives up: each lost
/// race means another request took a token, so this many in a row means a storm the
/// store cannot serve.
pub const MAX_ATTEMPTS: u32 = 32;

/// The bucket of requests without the key's value.
const MISSING_KEY: &str = "missing";

/// The bucket of every request, without a `key`.
const ALL_KEY: &str = "all";

/// Longest key value kept as it is; a longer one is cut and followed by a hash of the
/// whole, so keys stay under the store's 256 bytes.
const MAX_KEY_VALUE: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    token_bucket: TokenBucketSpec,
    #[serde(default)]
    key: Option<KeySpec>,
    #[serde(default)]
    scope: Scope,
    #[serde(default = "too_many_requests")]
    status_code: u16,
}

fn too_many_requests() -> u16 {
    429
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenBucketSpec {
    max_tokens: u32,
    #[serde(default = "one")]
    tokens_per_fill: u32,
    fill_interval: String,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeySpec {
    #[serde(default)]
    header: Option<String>,
    #[serde(default, deserialize_with = "present")]
    client_address: Option<Empty>,
    #[serde(default)]
    claim: Option<String>,
    #[serde(default, deserialize_with = "present")]
    path: Option<Empty>,
}

/// The value of `clientAddress: {}` and `path: {}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// A field that is there, even as `null` (`clientAddress:` in YAML): it chose the key.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Empty>, D::Error> {
    Option::<Empty>::deserialize(d).map(|e| Some(e.unwrap_or_default()))
}

/// Where the gateway keeps the buckets. The component only checks the value.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Scope {
    #[default]
    Local,
    Global,
}

/// What picks a request's bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    All,
    Header(String),
    ClientAddress,
    Claim(String),
    Path,
}

/// The token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval_ms: u64,
}

/// A bucket as stored: the tokens left and when it was last filled (or started), in
/// Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    tokens: u32,
    last_fill_ms: u64,
}

impl Bucket {
    fn encode(self) -> String {
        format!("{}:{}", self.tokens, self.last_fill_ms)
    }

    /// `None` for anything else: such a value is overwritten as if the bucket were new.
    fn decode(bytes: &[u8]) -> Option<Bucket> {
        let (tokens, last_fill) = std::str::from_utf8(bytes).ok()?.split_once(':')?;
        Some(Bucket {
            tokens: tokens.parse().ok()?,
            last_fill_ms: last_fill.parse().ok()?,
        })
    }
}

/// What one request finds: allowed or not, the header values, and the bucket to write
/// (with its time to live) when it took a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Take {
    allowed: bool,
    remaining: u32,
    reset_secs: u64,
    write: Option<(Bucket, u64)>,
}

impl Limits {
    /// Take a token from `stored` (`None`: absent, a full bucket) at `now_ms`.
    fn take(&self, stored: Option<Bucket>, now_ms: u64) -> Take {
        let interval = self.fill_interval_ms;
        let max = self.max_tokens;
        let (tokens, last_fill_ms) = match stored {
            None => (max, now_ms),
            Some(b) => {
                // A clock that went back fills nothing.
                let fills = now_ms.saturating_sub(b.last_fill_ms) / interval;
                let added = fills.saturating_mul(u64::from(self.tokens_per_fill));
                let tokens = u64::from(b.tokens)
                    .saturating_add(added)
                    .min(u64::from(max));
                // fills * interval is at most the time elapsed: no overflow.
                (
                    u32::try_from(tokens).unwrap_or(max),
                    b.last_fill_ms + fills * interval,
                )
            }
        };
        let until_fill = last_fill_ms
            .saturating_add(interval)
            .saturating_sub(now_ms)
            .min(interval);
        let reset_secs = until_fill.div_ceil(1000);
        if tokens == 0 {
            // Nothing filled (a fill adds at least one token): the bucket stays as it is.
            return Take {
                allowed: false,
                remaining: 0,
                reset_secs,
                write: None,
            };
        }
        let left = tokens - 1;
        // Full again after this many fills from the last; absent from then on.
        let fills_to_full = u64::from((max - left).div_ceil(self.tokens_per_fill));
        let full_at = last_fill_ms.saturating_add(fills_to_full.saturating_mul(interval));
        let ttl_ms = full_at.saturating_sub(now_ms).max(1);
        Take {
            allowed: true,
            remaining: left,
            reset_secs,
            write: Some((
                Bucket {
                    tokens: left,
                    last_fill_ms,
                },
                ttl_ms,
            )),
        }
    }
}

/// The operations on buckets: the host's state store in the gateway; tests put races
/// between them.
trait Store {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, String>;
}

/// The gateway's state store (`wasmgate.io/capabilities: state`).
struct HostState;

impl Store for HostState {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        state::get(key)
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, String> {
        state::compare_and_swap(key, expected, Some(value), Some(ttl))
    }
}

/// Take a token from the bucket at `key`: read, compute, compare-and-swap, and again
/// when another instance wrote the bucket in between.
fn take_from(store: &impl Store, limits: &Limits, key: &str, now_ms: u64) -> Result<Take, String> {
    for _ in 0..MAX_ATTEMPTS {
        let current = store.get(key)?;
        let take = limits.take(current.as_deref().and_then(Bucket::decode), now_ms);
        let Some((bucket, ttl_ms)) = take.write else {
            return Ok(take);
        };
        let value = bucket.encode();
        let ttl = Duration::from_millis(ttl_ms);
        if store.compare_and_swap(key, current.as_deref(), value.as_bytes(), ttl)? {
            return Ok(take);
        }
    }
    Err(format!(
        "bucket {key:?} changed under each of {MAX_ATTEMPTS} attempts to take a token"
    ))
}

/// The prepared policy: the bucket's parameters, the key, the reply status.
#[derive(Debug)]
pub struct RateLimit {
    limits: Limits,
    key: Key,
    status: u16,
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

impl Policy for RateLimit {
    fn prepare(_binding: &Binding, config: &str) -> Result<Self, ConfigError> {
        let config: Config = parse_config(config)?;
        let bucket = &config.token_bucket;
        if bucket.max_tokens == 0 {
            return Err(invalid("tokenBucket.maxTokens", "must be at least 1"));
        }
        if bucket.tokens_per_fill == 0 {
            return Err(invalid("tokenBucket.tokensPerFill", "must be at least 1"));
        }
        let fill_interval_ms = parse_duration_ms(&bucket.fill_interval)
            .map_err(|m| invalid("tokenBucket.fillInterval", m))?;
        if fill_interval_ms < MIN_FILL_INTERVAL_MS {
            return Err(invalid(
                "tokenBucket.fillInterval",
                format!("must be at least {MIN_FILL_INTERVAL_MS}ms, as Envoy requires"),
            ));
        }
        if !(400..=599).contains(&config.status_code) {
            return Err(invalid("statusCode", "must be from 400 to 599"));
        }
        // The gateway picks the store; nothing here depends on which.
        let (Scope::Local | Scope::Global) = config.scope;
        Ok(RateLimit {
            limits: Limits {
                max_tokens: bucket.max_tokens,
                tokens_per_fill: bucket.tokens_per_fill,
                fill_interval_ms,
            },
            key: key(config.key)?,
            status: config.status_code,
        })
    }

    fn on_request(&self, request: &Request) -> Result<Edit, PluginError> {
        let key = self.bucket_key(request);
        let failed = |message: String| PluginError {
            message: format!("ratelimit: {message}"),
        };
        let now_ms = clock::now().map_err(failed)? / 1_000_000;
        let take = match take_from(&HostState, &self.limits, &key, now_ms) {
            Ok(take) => take,
            // The local store is full of buckets (many keys at once: a flood of distinct
            // header values, say): a key without a bucket is limited, never let through
            // unlimited, while the buckets it holds keep counting. Other failures (Redis
            // down) follow the failStrategy.
            Err(e) if e.contains(STORE_FULL) => Take {
                allowed: false,
                remaining: 0,
                reset_secs: self.limits.fill_interval_ms.div_ceil(1000),
                write: None,
            },
            Err(e) => return Err(failed(e)),
        };
        let limit = self.limits.max_tokens.to_string();
        let remaining = take.remaining.to_string();
        let reset = take.reset_secs.to_string();
        if take.allowed {
            let mut edit = Edit::keep();
            edit.set_response_header("x-ratelimit-limit", &limit)
                .set_response_header("x-ratelimit-remaining", &remaining)
                .set_response_header("x-ratelimit-reset", &reset);
            return Ok(edit);
        }
        let mut edit = Edit::action(Action::Respond(DirectResponse {
            status: self.status,
            headers: vec![
                Header::new("content-type", "text/plain"),
                Header::new("x-ratelimit-limit", limit),
                Header::new("x-ratelimit-remaining", remaining),
                Header::new("x-ratelimit-reset", reset),
            ],
            body: LIMITED_BODY.as_bytes().to_vec(),
        }));
        edit.log_field("ratelimit", "limited");
        Ok(edit)
    }
}

/// What the host's local store answers when it holds as many keys as it may.
const STORE_FULL: &str = "the store is full";

/// The key a config names: at most one of its fields.
fn key(spec: Option<KeySpec>) -> Result<Key, ConfigError> {
    let Some(spec) = spec else {
        return Ok(Key::All);
    };
    let mut keys = Vec::new();
    if let Some(name) = spec.header {
        if name.is_empty() {
            return Err(invalid("key.header", "must not be empty"));
        }
        keys.push(Key::Header(name));
    }
    if spec.client_address.is_some() {
        keys.push(Key::ClientAddress);
    }
    if let Some(name) = spec.claim {
        if name.is_empty() {
            return Err(invalid("key.claim", "must not be empty"));
        }
        keys.push(Key::Claim(name));
    }
    if spec.path.is_some() {
        keys.push(Key::Path);
    }
    match keys.len() {
        0 => Ok(Key::All),
        1 => Ok(keys.swap_remove(0)),
        _ => Err(invalid(
            "key",
            "names more than one of header, clientAddress, claim and path",
        )),
    }
}

impl RateLimit {
    /// The state key of the request's bucket. Each kind of key has its prefix, so that a
    /// value never lands in the bucket of another kind, of all requests or of those
    /// without a value.
    fn bucket_key(&self, request: &Request) -> String {
        let (prefix, value) = match &self.key {
            Key::All => return ALL_KEY.into(),
            Key::Header(name) => ("h", request.header(name)),
            Key::ClientAddress => ("a", Some(request.client_address())),
            Key::Claim(name) => ("c", claim(request, name)),
            Key::Path => ("p", Some(request.path().to_string())),
        };
        match value.filter(|v| !v.is_empty()) {
            Some(value) => format!("{prefix}:{}", bounded(&value)),
            None => MISSING_KEY.into(),
        }
    }
}

/// The claim `name` of the verified JWT, as text: strings as they are, numbers and
/// booleans as JSON writes them; `None` for anything else.
fn claim(request: &Request, name: &str) -> Option<String> {
    let claims = request.property("request.auth.claims")?;
    let claims: serde_json::Map<String, Value> = serde_json::from_str(&claims).ok()?;
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// `value` itself up to [`MAX_KEY_VALUE`] bytes; longer, its first bytes (at least 197,
/// cut at a character) and `#` with a hash of the whole, so it cannot equal a short one
/// and two long values sharing a beginning still count apart.
fn bounded(value: &str) -> String {
    if value.len() <= MAX_KEY_VALUE {
        return value.to_string();
    }
    let mut end = MAX_KEY_VALUE;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}#{:016x}", &value[..end], fnv1a(value.as_bytes()))
}

/// FNV-1a, 64 bits: spreads long values apart; not a defence against a client choosing
/// collisions, which would only put it in a bucket it could reach anyway.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A duration such as `60s`, `500ms`, `1.5s`, `1m` or `1h`, in whole milliseconds.
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let expected = "expected a number and a unit (ms, s, m or h), such as 60s or 500ms";
    let at = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?}: {expected}"))?;
    let (number, unit) = text.split_at(at);
    let unit_ns: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(format!("{text:?}: {expected}")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(format!("{text:?}: {expected}"));
    }
    let too_long = || format!("{text:?}: too long");
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_long())?
    };
    let fraction_ns = if fraction.is_empty() {
        0
    } else {
        let scale = u32::try_from(fraction.len())
            .ok()
            .and_then(|n| 10u128.checked_pow(n))
            .ok_or_else(too_long)?;
        let f: u128 = fraction.parse().map_err(|_| too_long())?;
        let scaled = f.checked_mul(unit_ns).ok_or_else(too_long)?;
        if scaled % scale != 0 {
            return Err(format!("{text:?}: not a whole number of milliseconds"));
        }
        scaled / scale
    };
    let ns = whole
        .checked_mul(unit_ns)
        .and_then(|n| n.checked_add(fraction_ns))
        .ok_or_else(too_long)?;
    if ns % 1_000_000 != 0 {
        return Err(format!("{text:?}: not a whole number of milliseconds"));
    }
    u64::try_from(ns / 1_000_000).map_err(|_| too_long())
}

export_policy!(RateLimit);
