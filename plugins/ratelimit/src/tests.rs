use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;

use super::*;
use wasmgate_plugin_sdk::testing::{
    RequestBuilder, binding, clear_state, decide, grant, prepare, request, set_clock, try_decide,
};

/// Some Tuesday in 2023, in Unix nanoseconds (a whole number of seconds).
const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000 * MS;

/// A limiter with `config`, `clock` and `state` granted, the store empty and the clock
/// stopped at T0. (Each test runs on a thread of its own, with a store of its own.)
fn limiter(config: &str) -> RateLimit {
    grant(&["clock", "state"]);
    clear_state();
    set_clock(Some(T0));
    prepare(config)
}

/// `max` tokens, `per_fill` every `interval`, and these more fields.
fn config(max: u32, per_fill: u32, interval: &str, more: &str) -> String {
    format!(
        r#"{{"tokenBucket": {{"maxTokens": {max}, "tokensPerFill": {per_fill},
             "fillInterval": "{interval}"}}{more}}}"#
    )
}

/// Stop the clock `ns` after T0.
fn at(ns: u64) {
    set_clock(Some(T0 + ns));
}

fn get() -> RequestBuilder {
    request("GET", "/")
}

/// What the client gets: the status (200: the request went on) and the values of
/// `x-ratelimit-limit`, `-remaining` and `-reset`. Checks the rest of the edit: an
/// allowed request changes nothing else; a limited one is Envoy's local reply, logged.
fn send(p: &RateLimit, req: RequestBuilder) -> (u16, [String; 3]) {
    let edit = decide(p, &req.build());
    let ratelimit_headers = |headers: &[Header]| {
        ["limit", "remaining", "reset"].map(|n| {
            let name = format!("x-ratelimit-{n}");
            let values: Vec<&str> = headers
                .iter()
                .filter(|h| h.name == name)
                .map(|h| h.value.as_str())
                .collect();
            assert_eq!(values.len(), 1, "{name} in {headers:?}");
            values[0].to_string()
        })
    };
    match edit.action {
        None => {
            assert!(edit.log_fields.is_empty(), "{:?}", edit.log_fields);
            assert!(edit.request_headers.is_none());
            let ops = edit.response_headers.expect("response headers");
            assert!(ops.add.is_empty() && ops.remove.is_empty());
            assert_eq!(ops.set.len(), 3, "{:?}", ops.set);
            (200, ratelimit_headers(&ops.set))
        }
        Some(Action::Respond(reply)) => {
            assert_eq!(reply.body, LIMITED_BODY.as_bytes());
            assert_eq!(reply.headers.len(), 4, "{:?}", reply.headers);
            assert!(
                reply
                    .headers
                    .contains(&Header::new("content-type", "text/plain"))
            );
            assert_eq!(
                edit.log_fields,
                vec![Header::new("ratelimit", "limited")],
                "the access log says why"
            );
            assert!(edit.response_headers.is_none());
            (reply.status, ratelimit_headers(&reply.headers))
        }
        Some(other) => panic!("neither kept nor answered: {other:?}"),
    }
}

fn status(p: &RateLimit, req: RequestBuilder) -> u16 {
    send(p, req).0
}

/// The expected `send` answer.
fn seen(status: u16, limit: u32, remaining: u32, reset: u64) -> (u16, [String; 3]) {
    (
        status,
        [limit.to_string(), remaining.to_string(), reset.to_string()],
    )
}

#[test]
fn exactly_max_tokens_pass_then_requests_are_limited() {
    let p = limiter(&config(3, 1, "60s", ""));
    for remaining in [2, 1, 0] {
        assert_eq!(send(&p, get()), seen(200, 3, remaining, 60));
    }
    for _ in 0..3 {
        assert_eq!(send(&p, get()), seen(429, 3, 0, 60));
    }
}

#[test]
fn each_fill_adds_tokens_per_fill_up_to_max_tokens() {
    let p = limiter(&config(5, 2, "10s", ""));
    for remaining in (0..5).rev() {
        assert_eq!(send(&p, get()), seen(200, 5, remaining, 10));
    }
    assert_eq!(status(&p, get()), 429);
    at(10 * SECOND);
    assert_eq!(send(&p, get()), seen(200, 5, 1, 10));
    assert_eq!(send(&p, get()), seen(200, 5, 0, 10));
    assert_eq!(status(&p, get()), 429);
    // Nine fills of 2, but the bucket holds 5.
    at(100 * SECOND);
    for remaining in (0..5).rev() {
        assert_eq!(send(&p, get()), seen(200, 5, remaining, 10));
    }
    assert_eq!(status(&p, get()), 429);
}

#[test]
fn fills_are_discrete_at_multiples_of_the_interval() {
    let p = limiter(&config(2, 1, "10s", ""));
    assert_eq!(status(&p, get()), 200);
    at(3 * SECOND);
    assert_eq!(send(&p, get()), seen(200, 2, 0, 7));
    // Half an interval (and then some) adds nothing: no continuous refill.
    at(5 * SECOND);
    assert_eq!(send(&p, get()), seen(429, 2, 0, 5));
    at(10 * SECOND - MS);
    assert_eq!(send(&p, get()), seen(429, 2, 0, 1));
    at(10 * SECOND);
    assert_eq!(send(&p, get()), seen(200, 2, 0, 10));
    assert_eq!(status(&p, get()), 429);
    // The next fill is at 20 s, counted from the bucket's start, not from the last take.
    at(15 * SECOND);
    assert_eq!(send(&p, get()), seen(429, 2, 0, 5));
    at(20 * SECOND);
    assert_eq!(send(&p, get()), seen(200, 2, 0, 10));
}

#[test]
fn reset_is_whole_seconds_until_the_next_fill_rounded_up() {
    let p = limiter(&config(10, 1, "1.5s", ""));
    assert_eq!(send(&p, get()).1[2], "2");
    at(600 * MS);
    assert_eq!(send(&p, get()).1[2], "1", "0.9 s");
    at(1500 * MS);
    assert_eq!(send(&p, get()).1[2], "2", "a fill: 1.5 s again");
    let p = limiter(&config(1, 1, "500ms", ""));
    assert_eq!(send(&p, get()), seen(200, 1, 0, 1));
    assert_eq!(send(&p, get()), seen(429, 1, 0, 1));
    let p = limiter(&config(1, 1, "1m", ""));
    assert_eq!(status(&p, get()), 200);
    at(59 * SECOND + MS);
    assert_eq!(send(&p, get()), seen(429, 1, 0, 1));
}

#[test]
fn buckets_per_header_value_and_one_for_requests_without_it() {
    let p = limiter(&config(1, 1, "60s", r#", "key": {"header": "X-User"}"#));
    let user = |name: &str| get().header("x-user", name);
    assert_eq!(status(&p, user("alice").client("10.0.0.1")), 200);
    assert_eq!(status(&p, user("alice").client("10.0.0.2")), 429);
    assert_eq!(status(&p, user("bob")), 200);
    // Without the header, or with an empty one: the one "missing" bucket.
    assert_eq!(status(&p, get().client("10.0.0.1")), 200);
    assert_eq!(status(&p, get().client("10.0.0.2")), 429);
    assert_eq!(status(&p, user("")), 429);
    // A value that reads like the reserved buckets is a value of its own.
    assert_eq!(status(&p, user("missing")), 200);
    assert_eq!(status(&p, user("all")), 200);
    // The first value counts.
    assert_eq!(status(&p, user("carol").header("x-user", "alice")), 200);
    assert_eq!(status(&p, user("carol")), 429);
}

#[test]
fn buckets_per_client_address() {
    let p = limiter(&config(1, 1, "60s", r#", "key": {"clientAddress": {}}"#));
    assert_eq!(
        status(&p, get().client("10.0.0.1").header("x-user", "a")),
        200
    );
    assert_eq!(
        status(&p, get().client("10.0.0.1").header("x-user", "b")),
        429
    );
    assert_eq!(status(&p, get().client("10.0.0.2")), 200);
    assert_eq!(status(&p, get().client("2001:db8::1")), 200);
    assert_eq!(status(&p, get().client("2001:db8::1")), 429);
}

#[test]
fn buckets_per_claim_of_the_verified_jwt() {
    let p = limiter(&config(1, 1, "60s", r#", "key": {"claim": "sub"}"#));
    let claims = |json: &str| get().property("request.auth.claims", json);
    assert_eq!(status(&p, claims(r#"{"sub": "alice", "iat": 1}"#)), 200);
    assert_eq!(status(&p, claims(r#"{"sub": "alice", "iat": 2}"#)), 429);
    assert_eq!(status(&p, claims(r#"{"sub": "bob"}"#)), 200);
    // Numbers and booleans count as their JSON text.
    assert_eq!(status(&p, claims(r#"{"sub": 42}"#)), 200);
    assert_eq!(status(&p, claims(r#"{"sub": "42"}"#)), 429);
    assert_eq!(status(&p, claims(r#"{"sub": true}"#)), 200);
    assert_eq!(status(&p, claims(r#"{"sub": "true"}"#)), 429);
    // No JWT, no such claim, or one that is not a scalar: the "missing" bucket.
    assert_eq!(status(&p, get()), 200);
    for json in [
        r#"{"iss": "x"}"#,
        r#"{"sub": null}"#,
        r#"{"sub": ["alice"]}"#,
        r#"{"sub": {"id": "alice"}}"#,
        r#"{"sub": ""}"#,
        "not json",
    ] {
        assert_eq!(status(&p, claims(json)), 429, "{json}");
    }
    // A header of that name is not the claim.
    assert_eq!(status(&p, get().header("sub", "carol")), 429);
}

#[test]
fn buckets_per_path_without_the_query() {
    let p = limiter(&config(1, 1, "60s", r#", "key": {"path": {}}"#));
    assert_eq!(status(&p, request("GET", "/a")), 200);
    assert_eq!(status(&p, request("POST", "/a?page=2")), 429);
    assert_eq!(status(&p, request("GET", "/b")), 200);
}

#[test]
fn without_a_key_every_request_shares_one_bucket() {
    for key in ["", r#", "key": {}"#, r#", "key": null"#] {
        let p = limiter(&config(2, 1, "60s", key));
        assert_eq!(status(&p, get().client("10.0.0.1")), 200, "{key}");
        assert_eq!(status(&p, request("GET", "/x").header("x-user", "a")), 200);
        assert_eq!(status(&p, get().client("10.0.0.9")), 429, "{key}");
    }
}

#[test]
fn the_status_code_is_the_configured_one() {
    let p = limiter(&config(1, 1, "1s", r#", "statusCode": 503"#));
    assert_eq!(status(&p, get()), 200);
    assert_eq!(send(&p, get()), seen(503, 1, 0, 1));
}

#[test]
fn a_bucket_is_stored_compactly_and_expires_when_full_again() {
    let p = limiter(&config(3, 1, "10s", ""));
    let stored = || state::get(ALL_KEY).expect("state");
    let t0_ms = T0 / MS;
    assert_eq!(stored(), None);
    for _ in 0..3 {
        status(&p, get());
    }
    assert_eq!(stored(), Some(format!("0:{t0_ms}").into_bytes()));
    // A limited request writes nothing.
    assert_eq!(status(&p, get()), 429);
    assert_eq!(stored(), Some(format!("0:{t0_ms}").into_bytes()));
    // Three tokens short, one a fill: full at 30 s, and gone then.
    at(30 * SECOND - MS);
    assert!(stored().is_some());
    at(30 * SECOND);
    assert_eq!(stored(), None);
    assert_eq!(send(&p, get()), seen(200, 3, 2, 10));
    // After a fill the time to full counts from that fill: taken at 40 s (one fill,
    // one token), one short again, full at 50 s.
    let start = 30 * SECOND;
    at(start + 10 * SECOND);
    assert_eq!(send(&p, get()), seen(200, 3, 2, 10));
    assert_eq!(stored(), Some(format!("2:{}", t0_ms + 40_000).into_bytes()));
    at(start + 20 * SECOND - MS);
    assert!(stored().is_some());
    at(start + 20 * SECOND);
    assert_eq!(stored(), None);
}

#[test]
fn the_time_to_full_counts_fills_of_several_tokens() {
    let p = limiter(&config(5, 2, "10s", ""));
    for _ in 0..5 {
        status(&p, get());
    }
    // Five short at two a fill: three fills.
    at(30 * SECOND - MS);
    assert!(state::get(ALL_KEY).expect("state").is_some());
    at(30 * SECOND);
    assert!(state::get(ALL_KEY).expect("state").is_none());
}

#[test]
fn a_bucket_that_does_not_parse_starts_full() {
    let p = limiter(&config(3, 1, "10s", ""));
    state::set(ALL_KEY, b"garbage", None).expect("set");
    assert_eq!(send(&p, get()), seen(200, 3, 2, 10));
    assert_eq!(
        state::get(ALL_KEY).expect("state"),
        Some(format!("2:{}", T0 / MS).into_bytes())
    );
}

#[test]
fn fewer_max_tokens_after_a_reload_cap_what_is_stored() {
    let p = limiter(&config(10, 1, "10s", ""));
    status(&p, get());
    let smaller: RateLimit = prepare(&config(2, 1, "10s", ""));
    assert_eq!(send(&smaller, get()), seen(200, 2, 1, 10));
}

#[test]
fn without_the_state_or_clock_grant_the_call_fails() {
    let p = limiter(&config(1, 1, "1s", ""));
    grant(&["clock"]);
    let e = try_decide(&p, &get().build()).expect_err("limited without a store");
    assert!(e.message.starts_with("ratelimit: "), "{}", e.message);
    assert!(
        e.message.contains("add `state` to the WasmPlugin"),
        "{}",
        e.message
    );
    grant(&["state"]);
    let e = try_decide(&p, &get().build()).expect_err("limited without a clock");
    assert!(
        e.message.contains("add `clock` to the WasmPlugin"),
        "{}",
        e.message
    );
    // Nothing was taken meanwhile.
    grant(&["clock", "state"]);
    assert_eq!(send(&p, get()), seen(200, 1, 0, 1));
}

#[test]
fn a_full_store_limits_new_keys_and_keeps_counting_the_others() {
    let p = limiter(&config(2, 1, "1s", r#", "key": {"header": "x-user"}"#));
    // A bucket made before the store fills keeps its count.
    assert_eq!(status(&p, get().header("x-user", "old")), 200);
    for i in 0..9_999 {
        state::set(&format!("other{i}"), b"", None).expect("room");
    }
    // A key flood must not let a new key through unlimited (FAIL_OPEN would).
    assert_eq!(status(&p, get().header("x-user", "new")), 429);
    assert_eq!(status(&p, get().header("x-user", "old")), 200);
    assert_eq!(status(&p, get().header("x-user", "old")), 429);
}

#[test]
fn long_key_values_are_bounded_and_still_count_apart() {
    let p = limiter(&config(1, 1, "60s", r#", "key": {"header": "x-user"}"#));
    let long = "é".repeat(300);
    let other = format!("{}x", &long[..400]);
    assert_eq!(status(&p, get().header("x-user", &long)), 200);
    assert_eq!(status(&p, get().header("x-user", &long)), 429);
    assert_eq!(status(&p, get().header("x-user", &other)), 200);
    let key = bounded(&long);
    assert!(key.len() <= MAX_KEY_VALUE + 17, "{}", key.len());
    assert_ne!(bounded(&long), bounded(&other));
    // A long value's key is longer than any short value: the two never meet.
    let ascii = "a".repeat(MAX_KEY_VALUE + 1);
    assert!(bounded(&ascii).len() > MAX_KEY_VALUE);
    assert_eq!(bounded("short"), "short");
}

#[test]
fn prepared_policies_share_the_buckets_as_instances_do() {
    // Four instances of the plugin (each prepares its own policy), taking turns on
    // three users: each user gets exactly max tokens, whichever instance serves it.
    grant(&["clock", "state"]);
    clear_state();
    set_clock(Some(T0));
    let cfg = config(5, 1, "60s", r#", "key": {"header": "x-user"}"#);
    let instances: Vec<RateLimit> = (0..4).map(|_| prepare(&cfg)).collect();
    let mut allowed: HashMap<&str, u32> = HashMap::new();
    for round in 0..12 {
        for user in ["alice", "bob", "carol"] {
            let p = &instances[(round + user.len()) % instances.len()];
            if status(p, get().header("x-user", user)) == 200 {
                *allowed.entry(user).or_default() += 1;
            }
        }
    }
    assert_eq!(
        allowed,
        HashMap::from([("alice", 5), ("bob", 5), ("carol", 5)])
    );
}

/// The host's store, with another instance's whole request run between a read and the
/// compare-and-swap of the first `races` attempts: the interleaving that loses updates
/// when a bucket is written without comparing.
struct Racing<'a> {
    races: Cell<u32>,
    attempts: Cell<u32>,
    other: &'a RateLimit,
}

impl Store for Racing<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.attempts.set(self.attempts.get() + 1);
        HostState.get(key)
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, String> {
        if self.races.get() > 0 {
            self.races.set(self.races.get() - 1);
            assert_eq!(status(self.other, get()), 200, "the other instance");
        }
        HostState.compare_and_swap(key, expected, value, ttl)
    }
}

#[test]
fn a_lost_race_is_retried_and_counts_stay_exact() {
    let a = limiter(&config(3, 1, "60s", ""));
    let b: RateLimit = prepare(&config(3, 1, "60s", ""));
    let racing = Racing {
        races: Cell::new(2),
        attempts: Cell::new(0),
        other: &b,
    };
    // Instance b takes two tokens while a computes; a's third attempt takes the last.
    let take = take_from(&racing, &a.limits, ALL_KEY, T0 / MS).expect("taken");
    assert_eq!(racing.attempts.get(), 3);
    assert!(take.allowed);
    assert_eq!(take.remaining, 0);
    assert_eq!(status(&b, get()), 429);
    assert_eq!(status(&a, get()), 429);
}

/// A store where every compare-and-swap loses.
struct Contended(Cell<u32>);

impl Store for Contended {
    fn get(&self, _key: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.set(self.0.get() + 1);
        Ok(None)
    }

    fn compare_and_swap(
        &self,
        _: &str,
        _: Option<&[u8]>,
        _: &[u8],
        _: Duration,
    ) -> Result<bool, String> {
        Ok(false)
    }
}

#[test]
fn losing_every_race_is_an_error_after_bounded_attempts() {
    let limits = Limits {
        max_tokens: 1,
        tokens_per_fill: 1,
        fill_interval_ms: 1000,
    };
    let store = Contended(Cell::new(0));
    let e = take_from(&store, &limits, ALL_KEY, 0).expect_err("gave up");
    assert_eq!(store.0.get(), MAX_ATTEMPTS);
    assert!(e.contains(&format!("{MAX_ATTEMPTS} attempts")), "{e}");
}

/// A store shared by threads, each get and compare-and-swap atomic as the host's (TTLs
/// are not needed: the clock stands still).
#[derive(Default)]
struct Shared(Mutex<HashMap<String, Vec<u8>>>);

impl Store for Shared {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let value = self.0.lock().map_err(|e| e.to_string())?.get(key).cloned();
        // Let another thread in between this read and the write that follows.
        std::thread::yield_now();
        Ok(value)
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        _: Duration,
    ) -> Result<bool, String> {
        let mut map = self.0.lock().map_err(|e| e.to_string())?;
        if map.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        map.insert(key.to_string(), value.to_vec());
        Ok(true)
    }
}

#[test]
fn instances_on_many_threads_take_exactly_max_tokens() {
    let limits = Limits {
        max_tokens: 500,
        tokens_per_fill: 1,
        fill_interval_ms: 3_600_000,
    };
    let store = Shared::default();
    let allowed = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..250)
                        .filter(|_| {
                            take_from(&store, &limits, ALL_KEY, T0 / MS).is_ok_and(|t| t.allowed)
                        })
                        .count()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .sum::<usize>()
    });
    assert_eq!(allowed, 500);
    let left = store
        .get(ALL_KEY)
        .expect("get")
        .and_then(|v| Bucket::decode(&v));
    assert_eq!(left.map(|b| b.tokens), Some(0));
}

fn config_error(json: &str) -> (String, String) {
    match RateLimit::prepare(&binding(), json) {
        Ok(_) => panic!("accepted {json}"),
        Err(e) => (e.field, e.message),
    }
}

#[test]
fn bad_configs_name_the_field() {
    let bucket = |fields: &str| format!(r#"{{"tokenBucket": {{{fields}}}}}"#);
    let ok = r#""maxTokens": 1, "fillInterval": "1s""#;
    let cases: Vec<(String, &str, &str)> = vec![
        ("null".into(), "", "missing field `tokenBucket`"),
        (
            bucket(r#""fillInterval": "1s""#),
            "tokenBucket",
            "missing field `maxTokens`",
        ),
        (
            bucket(r#""maxTokens": 1"#),
            "tokenBucket",
            "missing field `fillInterval`",
        ),
        (
            bucket(r#""maxTokens": 0, "fillInterval": "1s""#),
            "tokenBucket.maxTokens",
            "must be at least 1",
        ),
        (
            bucket(r#""maxTokens": -1, "fillInterval": "1s""#),
            "tokenBucket.maxTokens",
            "invalid value",
        ),
        (
            bucket(&format!(r#"{ok}, "tokensPerFill": 0"#)),
            "tokenBucket.tokensPerFill",
            "must be at least 1",
        ),
        (
            bucket(r#""maxTokens": 1, "fillInterval": 60"#),
            "tokenBucket.fillInterval",
            "invalid type: integer `60`, expected a string",
        ),
        (
            bucket(&format!(r#"{ok}, "maxToken": 1"#)),
            "tokenBucket.maxToken",
            "unknown field `maxToken`",
        ),
        (
            format!(r#"{{"tokenBucket": {{{ok}}}, "tokenbucket": {{}}}}"#),
            "tokenbucket",
            "unknown field `tokenbucket`",
        ),
    ];
    for interval in [
        "60", "1d", "s", "", "1.2.3s", "-1s", "1 s", "1s ", "1m30s", "1S",
    ] {
        let json = bucket(&format!(r#""maxTokens": 1, "fillInterval": "{interval}""#));
        let (field, message) = config_error(&json);
        assert_eq!(field, "tokenBucket.fillInterval", "{interval:?}");
        assert!(
            message.contains("expected a number and a unit"),
            "{interval:?}: {message}"
        );
    }
    for (interval, message) in [
        ("49ms", "must be at least 50ms, as Envoy requires"),
        ("0.049s", "must be at least 50ms, as Envoy requires"),
        ("0s", "must be at least 50ms, as Envoy requires"),
        ("0.0001s", "\"0.0001s\": not a whole number of milliseconds"),
        ("1.0000000001s", "not a whole number of milliseconds"),
        ("99999999999999999999999999999999999999h", "too long"),
    ] {
        let json = bucket(&format!(r#""maxTokens": 1, "fillInterval": "{interval}""#));
        let (field, m) = config_error(&json);
        assert_eq!(field, "tokenBucket.fillInterval", "{interval}");
        assert!(m.ends_with(message), "{interval}: {m}");
    }
    let with = |more: &str| format!(r#"{{"tokenBucket": {{{ok}}}, {more}}}"#);
    let more: Vec<(String, &str, &str)> = vec![
        (
            with(r#""statusCode": 399"#),
            "statusCode",
            "must be from 400 to 599",
        ),
        (
            with(r#""statusCode": 600"#),
            "statusCode",
            "must be from 400 to 599",
        ),
        (
            with(r#""statusCode": 200"#),
            "statusCode",
            "must be from 400 to 599",
        ),
        (
            with(r#""scope": "regional""#),
            "scope",
            "unknown variant `regional`, expected `local` or `global`",
        ),
        (
            with(r#""key": {"header": "x-user", "path": {}}"#),
            "key",
            "names more than one of header, clientAddress, claim and path",
        ),
        (
            with(r#""key": {"clientAddress": null, "claim": "sub"}"#),
            "key",
            "names more than one of header, clientAddress, claim and path",
        ),
        (
            with(r#""key": {"header": ""}"#),
            "key.header",
            "must not be empty",
        ),
        (
            with(r#""key": {"claim": ""}"#),
            "key.claim",
            "must not be empty",
        ),
        (
            with(r#""key": {"cookie": "x"}"#),
            "key.cookie",
            "unknown field `cookie`",
        ),
        (
            with(r#""key": {"path": {"x": 1}}"#),
            "key.path.x",
            "unknown field `x`",
        ),
        (with(r#""key": "x-user""#), "key", "invalid type"),
    ];
    for (json, field, message) in cases.into_iter().chain(more) {
        let (f, m) = config_error(&json);
        assert_eq!(f, field, "{json}");
        assert!(m.starts_with(message), "{json}: {m}");
    }
}

#[test]
fn good_configs_are_read_as_written() {
    let read = |json: &str| match RateLimit::prepare(&binding(), json) {
        Ok(p) => p,
        Err(e) => panic!("{json}: {}: {}", e.field, e.message),
    };
    let p = read(r#"{"tokenBucket": {"maxTokens": 10, "fillInterval": "60s"}}"#);
    assert_eq!(
        p.limits,
        Limits {
            max_tokens: 10,
            tokens_per_fill: 1,
            fill_interval_ms: 60_000
        }
    );
    assert_eq!((p.key, p.status), (Key::All, 429));
    let p = read(
        r#"{"tokenBucket": {"maxTokens": 10, "tokensPerFill": 10, "fillInterval": "1.5s"},
            "key": {"header": "x-user"}, "scope": "global", "statusCode": 599}"#,
    );
    assert_eq!(p.limits.tokens_per_fill, 10);
    assert_eq!(p.limits.fill_interval_ms, 1500);
    assert_eq!((p.key, p.status), (Key::Header("x-user".into()), 599));
    let key = |k: &str| {
        read(&format!(
            r#"{{"tokenBucket": {{"maxTokens": 1, "fillInterval": "1s"}}, "key": {k},
                 "scope": "local", "statusCode": 400}}"#
        ))
        .key
    };
    assert_eq!(key(r#"{"clientAddress": {}}"#), Key::ClientAddress);
    assert_eq!(key(r#"{"clientAddress": null}"#), Key::ClientAddress);
    assert_eq!(key(r#"{"claim": "sub"}"#), Key::Claim("sub".into()));
    assert_eq!(key(r#"{"path": {}}"#), Key::Path);
    assert_eq!(key("{}"), Key::All);
    assert_eq!(key("null"), Key::All);
}

#[test]
fn durations_parse_to_whole_milliseconds() {
    for (text, ms) in [
        ("50ms", 50),
        ("500ms", 500),
        ("60s", 60_000),
        ("1.5s", 1_500),
        (".5s", 500),
        ("2.s", 2_000),
        ("0.25m", 15_000),
        ("1m", 60_000),
        ("1h", 3_600_000),
        ("1.5ms", 0),
    ] {
        if ms == 0 {
            assert!(parse_duration_ms(text).is_err(), "{text}");
        } else {
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
        }
    }
    assert!(parse_duration_ms(".s").is_err());
}

#[test]
fn buckets_encode_as_text_and_nothing_else_decodes() {
    let b = Bucket {
        tokens: 7,
        last_fill_ms: 1_700_000_000_123,
    };
    assert_eq!(b.encode(), "7:1700000000123");
    assert_eq!(Bucket::decode(b.encode().as_bytes()), Some(b));
    for bad in ["", "7", "7:", ":1", "-1:5", "7:x", "1:2:3"] {
        assert_eq!(Bucket::decode(bad.as_bytes()), None, "{bad}");
    }
}

#[test]
fn a_clock_that_goes_back_fills_nothing() {
    let limits = Limits {
        max_tokens: 2,
        tokens_per_fill: 1,
        fill_interval_ms: 10_000,
    };
    let stored = Bucket {
        tokens: 0,
        last_fill_ms: 100_000,
    };
    let take = limits.take(Some(stored), 50_000);
    assert!(!take.allowed);
    assert_eq!(take.reset_secs, 10, "at most one interval");
    assert_eq!(take.write, None);
}

#[test]
fn a_reload_that_changes_the_key_kind_starts_new_buckets() {
    // One bucket for all, drained; then keyed by a header: requests without it count in
    // the "missing" bucket, not in the old one.
    let all = limiter(&config(1, 1, "60s", ""));
    assert_eq!(status(&all, get()), 200);
    let by_user: RateLimit = prepare(&config(1, 1, "60s", r#", "key": {"header": "x-user"}"#));
    assert_eq!(status(&by_user, get()), 200);
    let by_path: RateLimit = prepare(&config(1, 1, "60s", r#", "key": {"path": {}}"#));
    assert_eq!(status(&by_path, get()), 200);
}
