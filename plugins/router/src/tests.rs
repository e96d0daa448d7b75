//! Native tests of Istio's matching rules and route actions.

use super::*;
use wasmgate_plugin_sdk::testing::{TestRequest, decide, prepare, request, run, seed_random};
use wasmgate_plugin_sdk::{Action, Decision, HeaderMutation, Interest};

fn router(spec: &str) -> Router {
    prepare::<Router>(spec)
}

/// The route index chosen for `req`, or `None` for no route.
fn route_of(r: &Router, req: &TestRequest) -> Option<u32> {
    let d = run(r, req);
    match d.action {
        Action::NoRoute => None,
        _ => d.route.map(|r| r.index),
    }
}

const BOOKINFO: &str = r#"{"hosts":["*"],"gateways":["bookinfo-gateway"],"http":[{"match":[
  {"uri":{"exact":"/productpage"}},{"uri":{"prefix":"/static"}},{"uri":{"exact":"/login"}},
  {"uri":{"exact":"/logout"}},{"uri":{"prefix":"/api/v1/products"}}],
  "route":[{"destination":{"host":"productpage","port":{"number":9080}}}]}]}"#;

#[test]
fn bookinfo_paths_route_and_others_do_not() {
    let r = router(BOOKINFO);
    for path in [
        "/productpage",
        "/static/x.css",
        "/login",
        "/logout",
        "/api/v1/products/1",
    ] {
        assert_eq!(
            route_of(&r, &request("GET", path).build()),
            Some(0),
            "{path}"
        );
    }
    for path in [
        "/",
        "/productpage/x",
        "/LOGIN",
        "/api/v1/product",
        "/logoutx",
    ] {
        assert_eq!(route_of(&r, &request("GET", path).build()), None, "{path}");
    }
    // The query string is not part of the path.
    assert_eq!(
        route_of(&r, &request("GET", "/productpage?u=1").build()),
        Some(0)
    );
    let d = run(&r, &request("GET", "/login").build());
    let Action::Forward(f) = d.action else {
        panic!("not forward")
    };
    assert_eq!(f.destinations.len(), 1);
    assert_eq!(f.destinations[0].host, "productpage");
    assert_eq!(f.destinations[0].port, Some(9080));
    assert_eq!(f.rewrite_path, None);
}

#[test]
fn header_exact_and_first_match_wins() {
    let r = router(
        r#"{"hosts":["ratings"],"http":[
        {"match":[{"headers":{"end-user":{"exact":"jason"}}}],"route":[{"destination":{"host":"ratings","subset":"v2"}}]},
        {"route":[{"destination":{"host":"ratings","subset":"v1"}}]}]}"#,
    );
    // Headers are read on demand: the router asks for nothing beyond the request phase.
    assert_eq!(r.interest(), Interest::default());
    let jason = request("GET", "/").header("end-user", "jason").build();
    assert_eq!(route_of(&r, &jason), Some(0));
    assert_eq!(
        route_of(&r, &request("GET", "/").header("end-user", "JASON").build()),
        Some(1)
    );
    assert_eq!(route_of(&r, &request("GET", "/").build()), Some(1));
}

#[test]
fn regex_is_a_full_match() {
    let r = router(
        r#"{"hosts":["a"],"http":[{"match":[{"uri":{"regex":"/api/v[0-9]+"}}],"route":[{"destination":{"host":"a"}}]}]}"#,
    );
    assert_eq!(route_of(&r, &request("GET", "/api/v12").build()), Some(0));
    assert_eq!(route_of(&r, &request("GET", "/api/v1/x").build()), None);
    assert_eq!(route_of(&r, &request("GET", "/x/api/v1").build()), None);
}

#[test]
fn ignore_uri_case_for_exact_and_prefix() {
    let r = router(
        r#"{"hosts":["a"],"http":[{"match":[{"uri":{"prefix":"/Static"},"ignoreUriCase":true}],
        "rewrite":{"uri":"/assets"},"route":[{"destination":{"host":"a"}}]}]}"#,
    );
    let d = run(&r, &request("GET", "/STATIC/app.js?v=2").build());
    let Action::Forward(f) = d.action else {
        panic!("not forward")
    };
    assert_eq!(f.rewrite_path.as_deref(), Some("/assets/app.js?v=2"));
    assert_eq!(route_of(&r, &request("GET", "/stat").build()), None);
}

#[test]
fn ignore_uri_case_leaves_regex_case_sensitive() {
    let r = router(
        r#"{"hosts":["a"],"http":[{"match":[{"uri":{"regex":"/Api/[a-z]+"},"ignoreUriCase":true}],
        "route":[{"destination":{"host":"a"}}]}]}"#,
    );
    assert_eq!(route_of(&r, &request("GET", "/Api/users").build()), Some(0));
    assert_eq!(route_of(&r, &request("GET", "/api/users").build()), None);
    assert_eq!(route_of(&r, &request("GET", "/Api/USERS").build()), None);
}

/// The request view keeps the first few headers the routes read in place and the
/// others in a list: routes reading more distinct headers than it keeps in place, and
/// reading them again in later routes, match as ever.
#[test]
fn routes_reading_many_headers_match_as_ever() {
    let r = router(
        r#"{"hosts":["a"],"http":[
        {"match":[{"headers":{"h1":{"exact":"1"},"h2":{"exact":"2"},"h3":{"exact":"3"},
                              "h4":{"exact":"4"},"h5":{"exact":"5"},"h6":{"exact":"6"}}}],
         "route":[{"destination":{"host":"a","subset":"all"}}]},
        {"match":[{"headers":{"h6":{"exact":"6"},"h5":{"exact":"5"}}}],
         "route":[{"destination":{"host":"a","subset":"five-six"}}]},
        {"match":[{"headers":{"h1":{"exact":"1"}}}],"route":[{"destination":{"host":"a","subset":"one"}}]},
        {"route":[{"destination":{"host":"a","subset":"rest"}}]}]}"#,
    );
    let with = |values: &[&str]| {
        let mut b = request("GET", "/");
        for (i, v) in values.iter().enumerate() {
            b = b.header(&format!("h{}", i + 1), v);
        }
        route_of(&r, &b.build())
    };
    assert_eq!(with(&["1", "2", "3", "4", "5", "6"]), Some(0));
    assert_eq!(with(&["1", "2", "3", "4", "5", "x"]), Some(2));
    assert_eq!(with(&["x", "2", "3", "4", "5", "6"]), Some(1));
    assert_eq!(with(&["1", "2", "3", "4", "x", "6"]), Some(2));
    assert_eq!(with(&["x", "2", "3", "4", "x", "6"]), Some(3));
    assert_eq!(with(&[]), Some(3));
}

#[test]
fn without_headers_treats_missing_as_empty() {
    // Route 0 applies unless x-canary is "true"; a missing header is "" and so passes.
    let r = router(
        r#"{"hosts":["a"],"http":[
        {"match":[{"withoutHeaders":{"x-canary":{"exact":"true"}}}],"route":[{"destination":{"host":"stable"}}]},
        {"route":[{"destination":{"host":"canary"}}]}]}"#,
    );
    assert_eq!(route_of(&r, &request("GET", "/").build()), Some(0));
    assert_eq!(
        route_of(&r, &request("GET", "/").header("x-canary", "no").build()),
        Some(0)
    );
    assert_eq!(
        route_of(&r, &request("GET", "/").header("x-canary", "true").build()),
        Some(1)
    );
    // A regex that accepts "" therefore excludes requests without the header.
    let r = router(
        r#"{"hosts":["a"],"http":[{"match":[{"withoutHeaders":{"x-debug":{"regex":".*"}}}],
        "route":[{"destination":{"host":"a"}}]}]}"#,
    );
    assert_eq!(route_of(&r, &request("GET", "/").build()), None);
    // An empty match means presence: withoutHeaders {} passes only when absent.
    let r = router(
        r#"{"hosts":["a"],"http":[{"match":[{"withoutHeaders":{"x-debug":{}}}],
        "route":[{"destination":{"host":"a"}}]}]}"#,
    );
    assert_eq!(route_of(&r, &request("GET", "/").build()), Some(0));
    assert_eq!(
        route_of(&r, &request("GET", "/").header("x-debug", "").build()),
        None
    );
}

#[test]
fn query_method_scheme_authority_port_and_gateway() {
    let r = router(
        r#"{"hosts":["a"],"http":[{"match":[{
          "queryParams":{"v":{"exact":"2"},"id":{"regex":"[0-9]+"}},
          "method":{"exact":"POST"},"scheme":{"exact":"http"},
          "authority":{"prefix":"api."},"port":8080,"gateways":["gw"]}],
          "route":[{"destination":{"host":"a"}}]}]}"#,
    );
    let ok = || {
        request("POST", "/x?v=2&id=42")
            .authority("api.example.com")
            .port(8080)
            .gateway("default/gw")
    };
    assert_eq!(route_of(&r, &ok().build()), Some(0));
    assert_eq!(
        route_of(
            &r,
            &request("GET", "/x?v=2&id=42")
                .authority("api.example.com")
                .port(8080)
                .gateway("default/gw")
                .build()
        ),
        None
    );
    assert_eq!(
        route_of(
            &r,
            &request("POST", "/x?v=2&id=4x")
                .authority("api.example.com")
                .port(8080)
                .gateway("default/gw")
                .build()
        ),
        None
    );
    assert_eq!(
        route_of(
            &r,
            &request("POST", "/x?v=%32&id=1")
                .authority("api.example.com")
                .port(8080)
                .gateway("default/gw")
                .build()
        ),
        Some(0)
    );
    assert_eq!(route_of(&r, &ok().port(80).build()), None);
    assert_eq!(route_of(&r, &ok().gateway("other/gw").build()), None);
    assert_eq!(
        route_of(&r, &ok().authority("www.example.com").build()),
        None
    );
    assert_eq!(route_of(&r, &ok().scheme("https").build()), None);
}

#[test]
fn match_list_is_or_fields_are_and() {
    let r = router(
        r#"{"hosts":["a"],"http":[{"match":[
          {"uri":{"prefix":"/a"},"headers":{"x":{"exact":"1"}}},
          {"uri":{"prefix":"/b"}}],"route":[{"destination":{"host":"a"}}]}]}"#,
    );
    assert_eq!(route_of(&r, &request("GET", "/a").build()), None);
    assert_eq!(
        route_of(&r, &request("GET", "/a").header("x", "1").build()),
        Some(0)
    );
    assert_eq!(route_of(&r, &request("GET", "/b").build()), Some(0));
}

#[test]
fn weighted_destinations_headers_timeout_retries() {
    let r = router(
        r#"{"hosts":["reviews"],"http":[{"name":"split","timeout":"1.5s",
          "retries":{"attempts":3,"perTryTimeout":"200ms"},
          "headers":{"request":{"set":{"X-A":"1"}},"response":{"remove":["server"]}},
          "route":[{"destination":{"host":"reviews","subset":"v1"},"weight":80},
                   {"destination":{"host":"reviews","subset":"v2"},"weight":20,
                    "headers":{"response":{"add":{"x-v":"2"}}}}]}]}"#,
    );
    let edit = decide(&r, &request("GET", "/").build());
    assert_eq!(edit.route.as_ref().map(|r| r.name.as_str()), Some("split"));
    // The router picks one of the weighted destinations (the decision keeps that one).
    assert!(matches!(edit.pick, Some(0 | 1)), "pick {:?}", edit.pick);
    let Some(Action::Forward(f)) = edit.action else {
        panic!("not forward")
    };
    let weights: Vec<u32> = f.destinations.iter().map(|d| d.weight).collect();
    assert_eq!(weights, [80, 20]);
    assert_eq!(f.timeout_ms, Some(1500));
    let retries = f.retries.expect("retries");
    assert_eq!(
        (retries.attempts, retries.per_try_timeout_ms),
        (3, Some(200))
    );
    assert!(retries.retry_on.contains("connect-failure"));
    let none = HeaderMutation::default();
    assert_eq!(
        f.request_headers.as_ref().unwrap_or(&none).set[0].name,
        "x-a"
    );
    assert_eq!(
        f.response_headers.as_ref().unwrap_or(&none).remove,
        ["server"]
    );
    let dest = f.destinations[1].response_headers.as_ref().unwrap_or(&none);
    assert_eq!(dest.add[0].value, "2");
    // A destination without header operations carries none (free to pass on).
    assert!(f.destinations[0].request_headers.is_none());
}

#[test]
fn the_router_draws_its_routes_fault_and_holds_it() {
    seed_random(7);
    let r = router(
        r#"{"hosts":["a"],"http":[
          {"match":[{"uri":{"prefix":"/abort"}}],
           "fault":{"abort":{"grpcStatus":"UNAVAILABLE","percentage":{"value":100}}},
           "route":[{"destination":{"host":"a"}}]},
          {"match":[{"uri":{"prefix":"/delay"}}],
           "fault":{"delay":{"fixedDelay":"250ms","percentage":{"value":100}},
                    "abort":{"httpStatus":503,"percentage":{"value":0}}},
           "route":[{"destination":{"host":"a"}}]},
          {"match":[{"uri":{"prefix":"/some"}}],
           "fault":{"abort":{"httpStatus":503,"percentage":{"value":25}}},
           "route":[{"destination":{"host":"a"}}]},
          {"match":[{"uri":{"prefix":"/never"}}],
           "fault":{"abort":{"httpStatus":503}},
           "route":[{"destination":{"host":"a"}}]},
          {"match":[{"uri":{"prefix":"/moved"}}],
           "fault":{"abort":{"httpStatus":503,"percentage":{"value":100}}},
           "redirect":{"uri":"/elsewhere"}},
          {"match":[{"uri":{"prefix":"/direct"}}],
           "fault":{"abort":{"httpStatus":503,"percentage":{"value":100}}},
           "directResponse":{"status":204}}]}"#,
    );
    let held = |path: &str| {
        let req = request("GET", path).build();
        let edit = decide(&r, &req);
        // The router's own answer is untouched by the fault: the host applies it later.
        assert!(
            edit.delay_ms.is_none() && edit.log_fields.is_empty(),
            "{path}"
        );
        req.held_fault.take()
    };
    let (delay, abort) = held("/abort").expect("an abort is held");
    assert_eq!(delay, None);
    let abort = abort.expect("the abort");
    assert_eq!(
        (abort.status, abort.grpc_status.as_deref()),
        (200, Some("UNAVAILABLE"))
    );
    assert_eq!(
        held("/delay"),
        Some((Some(250), None)),
        "a 0 % abort never fires"
    );
    // A fault without a percentage never fires; a redirect and a direct response are
    // not faulted (only forwards are, as the fault component does).
    assert_eq!(held("/never"), None);
    assert_eq!(held("/moved"), None);
    assert_eq!(held("/direct"), None);
    let fired = (0..10_000).filter(|_| held("/some").is_some()).count();
    assert!((2_200..=2_800).contains(&fired), "{fired} of 10000 at 25 %");
}

#[test]
fn the_router_picks_a_weighted_destination_by_weight() {
    seed_random(11);
    let r = router(
        r#"{"hosts":["reviews"],"http":[{"route":[
          {"destination":{"host":"reviews","subset":"v1"},"weight":80},
          {"destination":{"host":"reviews","subset":"v2"},"weight":20}]}]}"#,
    );
    let mut v1 = 0;
    for _ in 0..10_000 {
        let d = run(&r, &request("GET", "/").build());
        let Action::Forward(f) = d.action else {
            panic!("not forward")
        };
        assert_eq!(
            f.destinations.len(),
            1,
            "one destination left to the upstream"
        );
        if f.destinations[0].subset.as_deref() == Some("v1") {
            v1 += 1;
        }
    }
    assert!((7_700..=8_300).contains(&v1), "v1 got {v1} of 10000");
    // One destination, or a route that is not a forward: nothing to pick.
    let one = router(r#"{"hosts":["a"],"http":[{"route":[{"destination":{"host":"a"}}]}]}"#);
    assert_eq!(decide(&one, &request("GET", "/").build()).pick, None);
    // Every weight 0: no pick; the traffic split answers its error.
    let zero = router(
        r#"{"hosts":["a"],"http":[{"route":[
          {"destination":{"host":"a","subset":"v1"},"weight":0},
          {"destination":{"host":"a","subset":"v2"},"weight":0}]}]}"#,
    );
    let edit = decide(&zero, &request("GET", "/").build());
    assert_eq!(edit.pick, None);
    assert!(matches!(edit.action, Some(Action::Forward(_))));
}

#[test]
fn redirect_and_direct_response() {
    let r = router(
        r#"{"hosts":["a"],"http":[
          {"match":[{"uri":{"prefix":"/old"}}],"redirect":{"prefixRewrite":"/new","authority":"b.example.com"}},
          {"match":[{"uri":{"exact":"/tls"}}],"redirect":{"scheme":"https","derivePort":"FROM_PROTOCOL_DEFAULT","redirectCode":308}},
          {"match":[{"uri":{"exact":"/hi"}}],"directResponse":{"status":418,"body":{"string":"teapot"}}},
          {"match":[{"uri":{"exact":"/b"}}],"directResponse":{"status":200,"body":{"bytes":"aGk="}}}]}"#,
    );
    let d = run(
        &r,
        &request("GET", "/old/x?q=1").authority("a:8080").build(),
    );
    assert!(
        matches!(d.action, Action::Redirect(ref re) if re.status == 301 && re.location == "http://b.example.com/new/x?q=1"),
        "{:?}",
        d.action
    );
    let d = run(&r, &request("GET", "/tls").authority("a:8080").build());
    assert!(
        matches!(d.action, Action::Redirect(ref re) if re.status == 308 && re.location == "https://a/tls"),
        "{:?}",
        d.action
    );
    let d = run(&r, &request("GET", "/hi").build());
    assert!(
        matches!(d.action, Action::Respond(ref re) if re.status == 418 && re.body == b"teapot")
    );
    let d = run(&r, &request("GET", "/b").build());
    assert!(matches!(d.action, Action::Respond(ref re) if re.body == b"hi"));
}

#[test]
fn regex_rewrite_uses_re2_groups() {
    let r = router(
        r#"{"hosts":["a"],"http":[{"rewrite":{"uriRegexRewrite":{"match":"^/service/([^/]+)(/.*)$","rewrite":"\\2/instance/\\1"}},
          "route":[{"destination":{"host":"a"}}]}]}"#,
    );
    let d = run(&r, &request("GET", "/service/foo/v1/api").build());
    let Action::Forward(f) = d.action else {
        panic!("not forward")
    };
    assert_eq!(f.rewrite_path.as_deref(), Some("/v1/api/instance/foo"));
}

#[test]
fn cors_preflight_answered_and_actual_request_decorated() {
    let r = router(
        r#"{"hosts":["a"],"http":[{"corsPolicy":{"allowOrigins":[{"exact":"https://ok.example"}],
          "allowMethods":["GET","POST"],"maxAge":"24h","allowCredentials":true},
          "route":[{"destination":{"host":"a"}}]}]}"#,
    );
    let pre = request("OPTIONS", "/")
        .header("origin", "https://ok.example")
        .header("access-control-request-method", "POST")
        .build();
    let d = run(&r, &pre);
    let Action::Respond(resp) = d.action else {
        panic!("not answered")
    };
    assert!(
        resp.headers
            .iter()
            .any(|h| h.name == "access-control-max-age" && h.value == "86400")
    );
    let bad = request("OPTIONS", "/")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .build();
    assert!(matches!(run(&r, &bad).action, Action::Forward(_)));
    let actual = request("GET", "/")
        .header("origin", "https://ok.example")
        .build();
    let Action::Forward(f) = run(&r, &actual).action else {
        panic!("not forward")
    };
    assert!(
        f.response_headers
            .expect("CORS sets response headers")
            .set
            .iter()
            .any(|h| h.name == "access-control-allow-origin")
    );
}

#[test]
fn bad_regex_is_a_config_error_with_its_field() {
    let e = Router::prepare(
        &wasmgate_plugin_sdk::testing::binding(),
        r#"{"hosts":["a"],"http":[{"match":[{"headers":{"x":{"regex":"("}}}],"route":[{"destination":{"host":"a"}}]}]}"#,
    )

    .expect_err("accepted a bad regex");
    assert_eq!(e.field, "http[0].match[0].headers.x.regex");
}

/// The index must keep Istio's first-match order across every kind of URI condition:
/// exact, prefix, regex, ignoreUriCase, a route without `match`, and prefixes that are
/// not on a char boundary of the path.
#[test]
fn route_index_keeps_first_match_order() {
    let spec = r#"{"hosts":["*"],"http":[
      {"match":[{"uri":{"prefix":"/a/b"}}],"route":[{"destination":{"host":"r0"}}]},
      {"match":[{"uri":{"regex":"/a/.*"}}],"route":[{"destination":{"host":"r1"}}]},
      {"match":[{"uri":{"exact":"/a"}},{"uri":{"prefix":"/é"}}],"route":[{"destination":{"host":"r2"}}]},
      {"match":[{"uri":{"exact":"/CASE"},"ignoreUriCase":true}],"route":[{"destination":{"host":"r3"}}]},
      {"match":[{"uri":{"prefix":"/"}, "method":{"exact":"POST"}}],"route":[{"destination":{"host":"r4"}}]},
      {"match":[{"uri":{"exact":"/a/b"}}],"route":[{"destination":{"host":"r5"}}]},
      {"route":[{"destination":{"host":"r6"}}]}
    ]}"#;
    let r = router(spec);
    let cases = [
        ("GET", "/a/b", Some(0)),
        ("GET", "/a/bc", Some(0)),
        ("GET", "/a/x", Some(1)),
        ("GET", "/a", Some(2)),
        ("GET", "/é/x", Some(2)),
        // Prefix lengths are in bytes: "/é" is three.
        ("GET", "/\u{e9}", Some(2)),
        ("GET", "/case", Some(3)),
        ("POST", "/zzz", Some(4)),
        ("GET", "/zzz", Some(6)),
        ("GET", "/", Some(6)),
    ];
    for (method, path, want) in cases {
        assert_eq!(
            route_of(&r, &request(method, path).build()),
            want,
            "{method} {path}"
        );
    }
}

#[test]
fn a_thousand_exact_routes_find_the_last() {
    let rules: Vec<String> = (0..1000)
        .map(|i| format!(r#"{{"match":[{{"uri":{{"exact":"/svc/{i}"}}}}],"route":[{{"destination":{{"host":"s{i}"}}}}]}}"#))
        .collect();
    let r = router(&format!(
        r#"{{"hosts":["*"],"http":[{}]}}"#,
        rules.join(",")
    ));
    assert_eq!(route_of(&r, &request("GET", "/svc/999").build()), Some(999));
    assert_eq!(route_of(&r, &request("GET", "/svc/0").build()), Some(0));
    assert_eq!(route_of(&r, &request("GET", "/svc/1000").build()), None);
}

#[test]
fn mesh_is_a_gateway_name_of_its_own() {
    let r = router(
        r#"{"hosts":["a"],"gateways":["mesh","egress"],"http":[
          {"match":[{"gateways":["mesh"]}],"route":[{"destination":{"host":"to-egress"}}]},
          {"match":[{"gateways":["egress"]}],"route":[{"destination":{"host":"out"}}]}]}"#,
    );
    assert_eq!(
        route_of(&r, &request("GET", "/").gateway("mesh").build()),
        Some(0)
    );
    assert_eq!(
        route_of(&r, &request("GET", "/").gateway("default/egress").build()),
        Some(1)
    );
    assert_eq!(
        route_of(&r, &request("GET", "/").gateway("default/mesh").build()),
        None
    );
}

#[test]
fn no_match_keeps_the_decision_and_a_match_keeps_delay_and_log_fields() {
    let r = router(
        r#"{"hosts":["a"],"http":[{"match":[{"uri":{"exact":"/a"}}],"name":"only",
          "route":[{"destination":{"host":"a"}}]}]}"#,
    );
    assert!(decide(&r, &request("GET", "/b").build()).is_empty());
    // A match sets the route and the action and nothing else: what an earlier policy put
    // in the decision (a delay, log fields) stays.
    let mut before = Decision::no_route();
    before.delay_ms = Some(5);
    before.log_field("k", "v");
    let req = request("GET", "/a").decision(before).build();
    let edit = decide(&r, &req);
    assert_eq!(
        edit.route.as_ref().map(|r| (r.index, r.name.as_str())),
        Some((0, "only"))
    );
    assert!(matches!(edit.action, Some(Action::Forward(_))));
    assert_eq!((edit.pick, edit.delay_ms), (None, None));
    assert!(edit.request_headers.is_none() && edit.response_headers.is_none());
    assert!(edit.log_fields.is_empty());
    let d = run(&r, &req);
    assert_eq!(d.delay_ms, Some(5));
    assert_eq!(d.log_fields.len(), 1);
    assert_eq!(d.route.map(|r| r.index), Some(0));
}

#[test]
fn repeated_headers_match_joined_and_every_route_sees_them() {
    // Envoy matches the values of a repeated header joined with `,`; later routes read
    // the same header (fetched once) and a header the first route did not name.
    let r = router(
        r#"{"hosts":["a"],"http":[
        {"match":[{"headers":{"x-v":{"exact":"1"}}}],"route":[{"destination":{"host":"one"}}]},
        {"match":[{"headers":{"x-v":{"exact":"1,2"},"x-w":{"prefix":"w"}}}],"route":[{"destination":{"host":"joined"}}]},
        {"match":[{"headers":{"x-v":{"prefix":"1"}}}],"route":[{"destination":{"host":"prefix"}}]}]}"#,
    );
    let req = || request("GET", "/").header("x-v", "1").header("X-V", "2");
    assert_eq!(route_of(&r, &req().header("x-w", "wx").build()), Some(1));
    assert_eq!(route_of(&r, &req().build()), Some(2));
    assert_eq!(
        route_of(&r, &request("GET", "/").header("x-v", "1").build()),
        Some(0)
    );
}

/// A regex route is indexed under the literal text its matches start with, and only a
/// literal every match starts with: optional, repeated, alternative and case-folded
/// text is left out.
#[test]
fn a_uri_regex_is_indexed_by_its_literal_prefix_only() {
    let prefix = matching::regex_prefix;
    assert_eq!(
        prefix("/static/.*[.](css|js|png)").as_deref(),
        Some("/static/")
    );
    assert_eq!(prefix("/api/v[0-9]+").as_deref(), Some("/api/v"));
    assert_eq!(prefix("/apis?/x").as_deref(), Some("/api"));
    assert_eq!(prefix("/a+/x").as_deref(), Some("/a"));
    assert_eq!(prefix("/(foo|far)/x").as_deref(), Some("/f"));
    assert_eq!(prefix("/exact").as_deref(), Some("/exact"));
    assert_eq!(prefix("/foo|/bar").as_deref(), Some("/"));
    assert_eq!(prefix("(?i)/api").as_deref(), Some("/"));
    assert_eq!(prefix("/café|/cafê").as_deref(), Some("/caf"));
    // Not a pattern on its own: wrapped, its second half is not anchored at the start.
    assert_eq!(prefix("/s)|(/s/b"), None);
    for none in ["foo|/bar", ".*", "[/a]x", "(?i)api/x", "x?/y", "(/a)*"] {
        assert_eq!(prefix(none), None, "{none}");
    }
    // First-match order still holds with regex routes indexed: an earlier regex route
    // wins over a later prefix one, and a path without the regex's prefix skips it.
    let r = router(
        r#"{"hosts":["*"],"http":[
      {"match":[{"uri":{"regex":"/static/.*[.](css|js)"}}],"route":[{"destination":{"host":"r0"}}]},
      {"match":[{"uri":{"regex":"/(foo|far)/[0-9]+"}}],"route":[{"destination":{"host":"r1"}}]},
      {"match":[{"uri":{"regex":".*[.]png"}}],"route":[{"destination":{"host":"r2"}}]},
      {"match":[{"uri":{"prefix":"/"}}],"route":[{"destination":{"host":"r3"}}]}
    ]}"#,
    );
    for (path, want) in [
        ("/static/a.css", Some(0)),
        ("/static/a.png", Some(2)),
        ("/static/a.txt", Some(3)),
        ("/far/12", Some(1)),
        ("/foo/1", Some(1)),
        ("/fox/1", Some(3)),
        ("/x.png", Some(2)),
        ("/bench", Some(3)),
    ] {
        assert_eq!(route_of(&r, &request("GET", path).build()), want, "{path}");
    }
}

#[test]
fn query_strings_split_into_decoded_pairs() {
    use crate::matching::parse_query;
    assert!(parse_query("").is_empty());
    assert!(parse_query("&&").is_empty());
    let pairs = |q: &str| -> Vec<(String, String)> { parse_query(q) };
    assert_eq!(
        pairs("a=1&b&c=x%20y"),
        [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), String::new()),
            ("c".to_string(), "x y".to_string())
        ]
    );
}

/// The header the router reads with the path in one host call is a guess among the
/// names its routes match on (`headers`, `withoutHeaders`; each once, in route order,
/// the first 16): at first the first, then the one the last request read instead of the
/// guess. The guess never changes what a request decides.
#[test]
fn the_router_guesses_the_header_it_reads_with_the_path() {
    let route =
        |m: &str| format!(r#"{{"match":[{m}],"route":[{{"destination":{{"host":"a"}}}}]}}"#);
    let spec = |routes: &[String]| format!(r#"{{"hosts":["a"],"http":[{}]}}"#, routes.join(","));
    let realistic = spec(&[
        route(r#"{"uri":{"prefix":"/api"},"headers":{"X-Canary":{"exact":"true"}}}"#),
        route(r#"{"uri":{"prefix":"/api"}}"#),
        route(r#"{"uri":{"prefix":"/bench"},"headers":{"end-user":{"exact":"debug"}}}"#),
        route(r#"{"uri":{"prefix":"/bench"},"withoutHeaders":{"end-user":{}}}"#),
        route(r#"{"uri":{"prefix":"/"}}"#),
    ]);
    let r = router(&realistic);
    assert_eq!(r.header_names, ["x-canary", "end-user"]);
    let req = |path: &str, headers: &[(&str, &str)]| {
        let mut b = request("GET", path);
        for (name, value) in headers {
            b = b.header(name, value);
        }
        b.build()
    };
    // What the router asked for with the path, and the route it took.
    let routed = |r: &Router, request: &TestRequest| {
        let route = route_of(r, request);
        (request.read_with_path.take(), route)
    };
    // (request, the header read with it, the route it takes, the guess after it).
    let steps = [
        (
            req("/api/x", &[("x-canary", "true")]),
            "x-canary",
            Some(0),
            Some(0),
        ),
        // The routes read end-user, not the guess: end-user next.
        (req("/bench", &[]), "x-canary", Some(3), Some(1)),
        (
            req("/bench?x=1", &[("end-user", "debug")]),
            "end-user",
            Some(2),
            Some(1),
        ),
        // No header read at all: the guess stays.
        (req("/other", &[]), "end-user", Some(4), Some(1)),
        (
            req("/api", &[("end-user", "debug")]),
            "end-user",
            Some(1),
            Some(0),
        ),
        (
            req("/bench", &[("x-canary", "1")]),
            "x-canary",
            Some(3),
            Some(1),
        ),
        (
            req("/bench", &[("end-user", "x")]),
            "end-user",
            Some(4),
            Some(1),
        ),
    ];
    for (request, read, route, after) in &steps {
        assert_eq!(
            routed(&r, request),
            (vec![read.to_string()], *route),
            "{request:?}"
        );
        assert_eq!(r.read_with_path.get(), *after, "{request:?}");
        // Whatever the guess (or none), the same route.
        for guess in [None, Some(0), Some(1)] {
            let other = router(&realistic);
            other.read_with_path.set(guess);
            assert_eq!(route_of(&other, request), *route, "{request:?} {guess:?}");
        }
    }
    // Nothing to guess among: no header is read with the path.
    let r = router(&spec(&[
        route(r#"{"uri":{"prefix":"/a"}}"#),
        // A `delegate` route (not supported) never matches: its header is not a name to
        // guess.
        r#"{"match":[{"headers":{"x-never":{}}}],"delegate":{"name":"d"}}"#.to_string(),
    ]));
    assert!(r.header_names.is_empty());
    assert_eq!(r.read_with_path.get(), None);
    assert_eq!(
        routed(&r, &req("/a", &[("end-user", "x")])),
        (vec![], Some(0))
    );
    // Many names: the router guesses among the first sixteen only; the others are read
    // when a route needs them, and reading one of them leaves the guess as it was.
    let many: Vec<String> = (0..20)
        .map(|i| {
            let path = if i < 16 { "/x" } else { "/y" };
            route(&format!(
                r#"{{"uri":{{"prefix":"{path}"}},"headers":{{"h{i}":{{"exact":"1"}}}}}}"#
            ))
        })
        .collect();
    let r = router(&spec(&many));
    assert_eq!(r.header_names.len(), 16);
    assert_eq!(
        routed(&r, &req("/y", &[("h19", "1")])),
        (vec!["h0".into()], Some(19))
    );
    assert_eq!(r.read_with_path.get(), Some(0));
    assert_eq!(
        routed(&r, &req("/x", &[("h3", "1")])),
        (vec!["h0".into()], Some(3))
    );
    assert_eq!(r.read_with_path.get(), Some(0));
    assert_eq!(
        routed(&r, &req("/y", &[("h19", "1")])),
        (vec!["h0".into()], Some(19))
    );
    assert_eq!(r.read_with_path.get(), Some(0));
}
