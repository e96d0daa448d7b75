use super::*;
use wasmgate_plugin_sdk::testing::{
    RequestBuilder, TestRequest, binding, decide, prepare, request, run,
};
use wasmgate_plugin_sdk::{Decision, Destination, Forward};

/// One policy of `action` with these rules (JSON list items).
fn config(action: &str, rules: &str) -> String {
    format!(r#"{{"policies": [{{"name": "ns1/p", "action": "{action}", "rules": [{rules}]}}]}}"#)
}

/// Whether an ALLOW policy with this one rule lets `req` through: the way to test one
/// field at a time.
fn allows(rule: &str, req: RequestBuilder) -> bool {
    let authz: Authz = prepare(&config("ALLOW", rule));
    !denied(&authz, &req.build())
}

fn denied(authz: &Authz, req: &TestRequest) -> bool {
    match decide(authz, req).action {
        Some(Action::Respond(r)) => {
            assert_eq!(r.status, 403);
            true
        }
        None => false,
        other => panic!("unexpected action {other:?}"),
    }
}

fn log_fields(authz: &Authz, req: &TestRequest) -> Vec<(String, String)> {
    decide(authz, req)
        .log_fields
        .into_iter()
        .map(|h| (h.name, h.value))
        .collect()
}

fn get(path: &str) -> RequestBuilder {
    request("GET", path)
}

fn config_error(json: &str) -> ConfigError {
    match Authz::prepare(&binding(), json) {
        Err(e) => e,
        Ok(_) => panic!("accepted: {json}"),
    }
}

#[test]
fn deny_wins_over_allow_and_says_which_policy() {
    let authz: Authz = prepare(
        r#"{"policies": [
            {"name": "foo/allow-all", "action": "ALLOW", "rules": [{}]},
            {"name": "default/deny-admin", "action": "DENY",
             "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}]}"#,
    );
    let fwd =
        Decision::no_route().with_action(Action::Forward(Forward::to(vec![Destination::new("a")])));
    let req = get("/admin/x").decision(fwd.clone()).build();
    let Action::Respond(reply) = run(&authz, &req).action else {
        panic!("not denied")
    };
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, b"RBAC: access denied");
    assert_eq!(
        reply.headers,
        vec![Header::new("content-type", "text/plain")]
    );
    assert_eq!(
        log_fields(&authz, &req),
        vec![("rbac".into(), "denied by default/deny-admin".into())]
    );
    // Elsewhere the ALLOW policy lets it through, untouched.
    let ok = get("/public").decision(fwd).build();
    assert!(decide(&authz, &ok).is_empty());
    assert!(matches!(run(&authz, &ok).action, Action::Forward(_)));
}

#[test]
fn without_allow_policies_what_no_deny_matches_passes() {
    let authz: Authz = prepare(&config(
        "DENY",
        r#"{"to": [{"operation": {"methods": ["DELETE"]}}]}"#,
    ));
    assert!(decide(&authz, &get("/").build()).is_empty());
    assert!(denied(&authz, &request("DELETE", "/").build()));
    let none: Authz = prepare("null");
    assert!(decide(&none, &get("/").build()).is_empty());
    let empty: Authz = prepare(r#"{"policies": []}"#);
    assert!(decide(&empty, &get("/").build()).is_empty());
}

#[test]
fn an_allow_policy_that_does_not_match_denies() {
    let authz: Authz = prepare(
        r#"{"policies": [
            {"name": "a/one", "rules": [{"to": [{"operation": {"paths": ["/one"]}}]}]},
            {"name": "a/two", "action": "ALLOW", "rules": [{"to": [{"operation": {"paths": ["/two"]}}]}]}]}"#,
    );
    assert!(!denied(&authz, &get("/one").build()));
    assert!(!denied(&authz, &get("/two").build()));
    let req = get("/three").build();
    assert!(denied(&authz, &req));
    assert_eq!(
        log_fields(&authz, &req),
        vec![("rbac".into(), "denied: no ALLOW policy matched".into())]
    );
}

#[test]
fn no_rules_match_nothing_and_an_empty_rule_matches_everything() {
    let req = || get("/x").build();
    // ALLOW with no rules: an ALLOW policy exists and matches nothing (Istio's allow-nothing).
    for spec in [
        r#"{"policies": [{"name": "a/p", "action": "ALLOW", "rules": []}]}"#,
        r#"{"policies": [{"name": "a/p", "action": "ALLOW"}]}"#,
        r#"{"policies": [{"name": "a/p"}]}"#,
    ] {
        assert!(denied(&prepare::<Authz>(spec), &req()), "{spec}");
    }
    assert!(!denied(&prepare::<Authz>(&config("ALLOW", "{}")), &req()));
    // DENY with no rules denies nothing; with `{}` everything.
    assert!(!denied(
        &prepare::<Authz>(r#"{"policies": [{"name": "a/p", "action": "DENY", "rules": []}]}"#),
        &req()
    ));
    assert!(denied(&prepare::<Authz>(&config("DENY", "{}")), &req()));
    // `from: [{}]`, a source or operation with nothing set: any.
    assert!(allows(
        r#"{"from": [{}], "to": [{"operation": {}}]}"#,
        get("/x")
    ));
}

#[test]
fn paths_exact_prefix_suffix_presence() {
    let rule = |paths: &str| format!(r#"{{"to": [{{"operation": {{"paths": {paths}}}}}]}}"#);
    assert!(allows(&rule(r#"["/a"]"#), get("/a")));
    assert!(!allows(&rule(r#"["/a"]"#), get("/a/")));
    assert!(!allows(&rule(r#"["/a"]"#), get("/A")));
    // The query is not part of the path.
    assert!(allows(&rule(r#"["/a"]"#), get("/a?x=1")));
    assert!(allows(&rule(r#"["/api*"]"#), get("/api/v1/x")));
    assert!(!allows(&rule(r#"["/api*"]"#), get("/ap")));
    assert!(allows(&rule(r#"["*.png"]"#), get("/img/a.png")));
    assert!(!allows(&rule(r#"["*.png"]"#), get("/img/a.png.txt")));
    assert!(allows(&rule(r#"["*"]"#), get("/")));
    assert!(allows(&rule(r#"["/x", "/y"]"#), get("/y")));
    let not = r#"{"to": [{"operation": {"notPaths": ["/private*"]}}]}"#;
    assert!(allows(not, get("/public")));
    assert!(!allows(not, get("/private/1")));
}

#[test]
fn path_templates() {
    let rule = |path: &str| format!(r#"{{"to": [{{"operation": {{"paths": ["{path}"]}}}}]}}"#);
    let one = rule("/users/{*}/profile");
    assert!(allows(&one, get("/users/alice/profile")));
    assert!(!allows(&one, get("/users/profile")));
    assert!(!allows(&one, get("/users//profile")));
    assert!(!allows(&one, get("/users/a/b/profile")));
    assert!(!allows(&one, get("/users/alice/profile/x")));
    let rest = rule("/admin/{**}");
    assert!(allows(&rest, get("/admin/a")));
    assert!(allows(&rest, get("/admin/a/b/c")));
    // Envoy's `**` is `[pchar/]*`: `/admin/` matches, `/admin` does not.
    assert!(allows(&rest, get("/admin/")));
    assert!(!allows(&rest, get("/admin")));
    assert!(!allows(&rest, get("/administrator/a")));
    let both = rule("/{*}/files/{**}");
    assert!(allows(&both, get("/v1/files/a/b.txt")));
    assert!(!allows(&both, get("/v1/v2/files/a")));
    // A glob matches pchar only (Envoy's literal set): not `*`, `[`, spaces.
    assert!(!allows(&one, get("/users/a*b/profile")));
    assert!(allows(&one, get("/users/a%20b/profile")));
    // `{**}` must come last; braces inside a segment are no template.
    let e = config_error(&config("ALLOW", &rule("/a/{**}/b")));
    assert_eq!(e.field, "policies[0].rules[0].to[0].operation.paths[0]");
    let e = config_error(&config("ALLOW", &rule("/a/x{*}")));
    assert_eq!(e.field, "policies[0].rules[0].to[0].operation.paths[0]");
}

#[test]
fn methods() {
    let rule = r#"{"to": [{"operation": {"methods": ["GET", "HEAD"]}}]}"#;
    assert!(allows(rule, request("GET", "/")));
    assert!(allows(rule, request("HEAD", "/")));
    assert!(!allows(rule, request("POST", "/")));
    // Case-sensitive, as Envoy's `:method` header matcher.
    assert!(!allows(rule, request("get", "/")));
    let not = r#"{"to": [{"operation": {"notMethods": ["DELETE"]}}]}"#;
    assert!(allows(not, request("PUT", "/")));
    assert!(!allows(not, request("DELETE", "/")));
}

#[test]
fn hosts_ignore_case_and_keep_the_port() {
    let rule = |hosts: &str| format!(r#"{{"to": [{{"operation": {{"hosts": {hosts}}}}}]}}"#);
    let exact = rule(r#"["Example.COM"]"#);
    assert!(allows(&exact, get("/").authority("example.com")));
    assert!(allows(&exact, get("/").authority("EXAMPLE.com")));
    // As in Istio: an exact host does not match the authority with a port.
    assert!(!allows(&exact, get("/").authority("example.com:8080")));
    let both = rule(r#"["example.com", "example.com:*"]"#);
    assert!(allows(&both, get("/").authority("Example.com:8080")));
    assert!(allows(
        &rule(r#"["*.example.com"]"#),
        get("/").authority("API.Example.Com")
    ));
    assert!(!allows(
        &rule(r#"["*.example.com"]"#),
        get("/").authority("example.com")
    ));
    assert!(allows(&rule(r#"["*"]"#), get("/").authority("anything")));
    let not = r#"{"to": [{"operation": {"notHosts": ["internal.*"]}}]}"#;
    assert!(!allows(not, get("/").authority("INTERNAL.corp")));
    assert!(allows(not, get("/").authority("public.corp")));
}

#[test]
fn ports_are_the_listener_port() {
    let rule = r#"{"to": [{"operation": {"ports": ["8443"]}}]}"#;
    assert!(allows(rule, get("/").port(8443)));
    assert!(!allows(rule, get("/").port(80)));
    // Not the authority's port.
    assert!(!allows(rule, get("/").authority("x:8443").port(80)));
    let not = r#"{"to": [{"operation": {"notPorts": ["80"]}}]}"#;
    assert!(!allows(not, get("/").port(80)));
    assert!(allows(not, get("/").port(81)));
    let when = r#"{"when": [{"key": "destination.port", "values": ["9090"]}]}"#;
    assert!(allows(when, get("/").port(9090)));
    assert!(!allows(when, get("/").port(9091)));
    let e = config_error(&config(
        "ALLOW",
        r#"{"to": [{"operation": {"ports": ["80", "http"]}}]}"#,
    ));
    assert_eq!(e.field, "policies[0].rules[0].to[0].operation.ports[1]");
}

#[test]
fn ip_blocks_match_the_peer_v4_and_v6() {
    let rule =
        r#"{"from": [{"source": {"ipBlocks": ["10.1.0.0/16", "203.0.113.4", "2001:db8::/32"]}}]}"#;
    assert!(allows(rule, get("/").client("10.1.200.3")));
    assert!(!allows(rule, get("/").client("10.2.0.1")));
    assert!(allows(rule, get("/").client("203.0.113.4")));
    assert!(!allows(rule, get("/").client("203.0.113.5")));
    assert!(allows(rule, get("/").client("2001:db8:1::7")));
    assert!(!allows(rule, get("/").client("2001:db9::1")));
    // An IPv4-mapped peer is its IPv4 address.
    assert!(allows(rule, get("/").client("::ffff:10.1.0.9")));
    // x-forwarded-for does not count for ipBlocks.
    assert!(!allows(
        rule,
        get("/")
            .client("192.0.2.1")
            .header("x-forwarded-for", "10.1.0.1,192.0.2.1")
    ));
    let not = r#"{"from": [{"source": {"notIpBlocks": ["10.0.0.0/8", "::1"]}}]}"#;
    assert!(!allows(not, get("/").client("10.9.9.9")));
    assert!(!allows(not, get("/").client("::1")));
    assert!(allows(not, get("/").client("192.0.2.1")));
    let all = r#"{"from": [{"source": {"ipBlocks": ["0.0.0.0/0"]}}]}"#;
    assert!(allows(all, get("/").client("198.51.100.1")));
    assert!(!allows(all, get("/").client("2001:db8::1")));
    let when = r#"{"when": [{"key": "source.ip", "values": ["192.0.2.0/24"], "notValues": ["192.0.2.7"]}]}"#;
    assert!(allows(when, get("/").client("192.0.2.6")));
    assert!(!allows(when, get("/").client("192.0.2.7")));
    let e = config_error(&config(
        "ALLOW",
        r#"{"from": [{"source": {"notIpBlocks": ["10.0.0.0/33"]}}]}"#,
    ));
    assert_eq!(
        e.field,
        "policies[0].rules[0].from[0].source.notIpBlocks[0]"
    );
}

#[test]
fn remote_ip_blocks_follow_num_trusted_proxies() {
    let with = |hops: u32| -> Authz {
        prepare(&format!(
            r#"{{"numTrustedProxies": {hops}, "policies": [{{"name": "a/p", "rules": [
                {{"from": [{{"source": {{"remoteIpBlocks": ["198.51.100.0/24"]}}}}]}}]}}]}}"#
        ))
    };
    // As the gateway hands it over: the peer (192.0.2.1, a proxy) appended last.
    let req = || {
        get("/")
            .client("192.0.2.1")
            .header("x-forwarded-for", "203.0.113.9, 198.51.100.7")
            .header("x-forwarded-for", "192.0.2.1")
            .build()
    };
    // 0: the peer itself.
    assert!(denied(&with(0), &req()));
    assert!(!denied(&with(0), &get("/").client("198.51.100.2").build()));
    // 1: the last address the client (a trusted proxy) sent.
    assert!(!denied(&with(1), &req()));
    // 2: one more to the left.
    assert!(denied(&with(2), &req()));
    let two = get("/")
        .client("192.0.2.1")
        .header("x-forwarded-for", "198.51.100.9, 203.0.113.9,192.0.2.1")
        .build();
    assert!(!denied(&with(2), &two));
    // Fewer addresses than hops, or no header: the peer.
    assert!(denied(&with(3), &req()));
    assert!(!denied(
        &with(3),
        &get("/")
            .client("198.51.100.3")
            .header("x-forwarded-for", "10.0.0.1,198.51.100.3")
            .build()
    ));
    assert!(!denied(&with(1), &get("/").client("198.51.100.3").build()));
    // Not an address: the peer.
    let junk = get("/")
        .client("192.0.2.1")
        .header("x-forwarded-for", "unknown,192.0.2.1")
        .build();
    assert!(denied(&with(1), &junk));
    // IPv6, and `remote.ip` in `when`.
    let v6: Authz = prepare(
        r#"{"numTrustedProxies": 1, "policies": [{"name": "a/p", "action": "DENY", "rules": [
            {"when": [{"key": "remote.ip", "values": ["2001:db8::/64"]}]}]}]}"#,
    );
    let req = get("/")
        .client("192.0.2.1")
        .header("x-forwarded-for", "2001:db8::5,192.0.2.1")
        .build();
    assert!(denied(&v6, &req));
    let req = get("/")
        .client("192.0.2.1")
        .header("x-forwarded-for", "2001:db8:0:1::5,192.0.2.1")
        .build();
    assert!(!denied(&v6, &req));
    let not = r#"{"from": [{"source": {"notRemoteIpBlocks": ["10.0.0.0/8"]}}]}"#;
    assert!(!allows(not, get("/").client("10.0.0.2")));
}

#[test]
fn principals_namespaces_and_service_accounts_come_from_the_peer_certificate() {
    let sleep = || get("/").property("source.principal", "cluster.local/ns/default/sa/sleep");
    let rule = |field: &str, values: &str| {
        format!(r#"{{"from": [{{"source": {{"{field}": {values}}}}}]}}"#)
    };
    assert!(allows(
        &rule("principals", r#"["cluster.local/ns/default/sa/sleep"]"#),
        sleep()
    ));
    assert!(!allows(
        &rule("principals", r#"["cluster.local/ns/default/sa/other"]"#),
        sleep()
    ));
    assert!(allows(&rule("principals", r#"["*/sa/sleep"]"#), sleep()));
    assert!(allows(&rule("principals", r#"["*"]"#), sleep()));
    // Without a client certificate no principal matches, and every notPrincipals passes.
    assert!(!allows(&rule("principals", r#"["*"]"#), get("/")));
    assert!(allows(&rule("notPrincipals", r#"["*"]"#), get("/")));
    assert!(!allows(&rule("notPrincipals", r#"["*"]"#), sleep()));
    assert!(allows(&rule("namespaces", r#"["default"]"#), sleep()));
    assert!(!allows(&rule("namespaces", r#"["defaul"]"#), sleep()));
    assert!(allows(&rule("namespaces", r#"["def*"]"#), sleep()));
    assert!(!allows(&rule("namespaces", r#"["default"]"#), get("/")));
    assert!(!allows(&rule("notNamespaces", r#"["default"]"#), sleep()));
    assert!(allows(&rule("notNamespaces", r#"["prod"]"#), sleep()));
    // serviceAccounts: `ns/sa`, or `sa` in the policy's namespace (`ns1` here).
    assert!(allows(
        &rule("serviceAccounts", r#"["default/sleep"]"#),
        sleep()
    ));
    assert!(!allows(&rule("serviceAccounts", r#"["sleep"]"#), sleep()));
    assert!(allows(
        &rule("serviceAccounts", r#"["sleep"]"#),
        get("/").property("source.principal", "td/ns/ns1/sa/sleep")
    ));
    assert!(!allows(
        &rule("serviceAccounts", r#"["default/slee"]"#),
        sleep()
    ));
    let sa = |principal: &str| {
        let req = get("/").property("source.principal", principal);
        allows(&rule("serviceAccounts", r#"["default/sleep"]"#), req)
    };
    assert!(sa("td/ns/default/k/v/sa/sleep/extra"));
    assert!(!sa("td/ns/default/xsa/sleep"));
    assert!(!sa("td/ns/default/sa/sleeper"));
    assert!(!sa("td/ns/default/sa/sleep/"));
    assert!(!sa("ns/default/sa/sleep"));
    // trustDomains (Istio 1.30): the principal's first part.
    assert!(allows(
        &rule("trustDomains", r#"["cluster.local"]"#),
        sleep()
    ));
    assert!(allows(&rule("trustDomains", r#"["*.local"]"#), sleep()));
    assert!(!allows(&rule("trustDomains", r#"["cluster"]"#), sleep()));
    assert!(!allows(&rule("trustDomains", r#"["*"]"#), get("/")));
    assert!(!allows(
        &rule("notTrustDomains", r#"["cluster.local"]"#),
        sleep()
    ));
    // when: source.principal and source.namespace.
    let when = r#"{"when": [{"key": "source.namespace", "values": ["default"]},
                            {"key": "source.principal", "notValues": ["*/sa/admin"]}]}"#;
    assert!(allows(when, sleep()));
    assert!(!allows(
        when,
        get("/").property("source.principal", "cluster.local/ns/default/sa/admin")
    ));
    // Every set field of a source must match.
    let and = r#"{"from": [{"source": {"namespaces": ["default"], "ipBlocks": ["10.0.0.0/8"]}}]}"#;
    assert!(allows(and, sleep().client("10.0.0.5")));
    assert!(!allows(and, sleep().client("192.0.2.5")));
    // Any of several sources.
    let or = r#"{"from": [{"source": {"namespaces": ["prod"]}}, {"source": {"ipBlocks": ["192.0.2.0/24"]}}]}"#;
    assert!(allows(or, sleep().client("192.0.2.5")));
    assert!(!allows(or, sleep().client("10.0.0.5")));
}

#[test]
fn request_principals_come_from_the_jwt() {
    let alice = || get("/").property("request.auth.principal", "https://issuer.example/alice");
    let rule = |field: &str, values: &str| {
        format!(r#"{{"from": [{{"source": {{"{field}": {values}}}}}]}}"#)
    };
    let rp = |v: &str| rule("requestPrincipals", v);
    assert!(allows(&rp(r#"["https://issuer.example/alice"]"#), alice()));
    assert!(!allows(&rp(r#"["https://issuer.example/bob"]"#), alice()));
    assert!(allows(&rp(r#"["https://issuer.example/*"]"#), alice()));
    assert!(allows(&rp(r#"["*/alice"]"#), alice()));
    assert!(allows(&rp(r#"["*"]"#), alice()));
    assert!(!allows(&rp(r#"["*"]"#), get("/")));
    // Istio splits the value at its last `/` too, and matches iss and sub apart:
    // `https://issuer.ex*` is iss `https:/` exactly and a sub starting `issuer.ex`.
    assert!(!allows(&rp(r#"["https://issuer.ex*"]"#), alice()));
    assert!(allows(&rp(r#"["*.example/alice"]"#), alice()));
    assert!(!allows(
        &rp(r#"["*.example/alice"]"#),
        alice().property("request.auth.principal", "https://issuer.example/x/alice")
    ));
    assert!(!allows(
        &rp(r#"["*"]"#),
        get("/").property("request.auth.principal", "https://issuer.example/")
    ));
    // A DENY of requests without a JWT principal, as in Istio's docs.
    let authz: Authz = prepare(&config("DENY", &rule("notRequestPrincipals", r#"["*"]"#)));
    assert!(denied(&authz, &get("/").build()));
    assert!(!denied(&authz, &alice().build()));
    let when = r#"{"when": [{"key": "request.auth.principal", "values": ["https://issuer.example/alice"]}]}"#;
    assert!(allows(when, alice()));
    assert!(!allows(when, get("/")));
}

#[test]
fn when_request_headers() {
    let rule = r#"{"when": [{"key": "request.headers[X-Version]", "values": ["v1", "beta-*"]}]}"#;
    assert!(allows(rule, get("/").header("x-version", "v1")));
    assert!(allows(rule, get("/").header("X-VERSION", "beta-3")));
    assert!(!allows(rule, get("/").header("x-version", "v2")));
    assert!(!allows(rule, get("/")));
    // Several lines are matched joined with `,`, as Envoy's header matcher sees them.
    assert!(!allows(
        rule,
        get("/").header("x-version", "v2").header("x-version", "v1")
    ));
    assert!(allows(
        rule,
        get("/")
            .header("x-version", "beta-1")
            .header("x-version", "v2")
    ));
    // `*` is presence, even of an empty value.
    let present = r#"{"when": [{"key": "request.headers[x-debug]", "values": ["*"]}]}"#;
    assert!(allows(present, get("/").header("x-debug", "")));
    assert!(!allows(present, get("/")));
    let not =
        r#"{"when": [{"key": "request.headers[user-agent]", "notValues": ["*bot*", "curl*"]}]}"#;
    assert!(allows(not, get("/").header("user-agent", "Mozilla")));
    assert!(allows(not, get("/")));
    assert!(!allows(not, get("/").header("user-agent", "curl/8")));
    // `*bot*` is a suffix match of `bot*`, as Istio reads a leading `*` first.
    assert!(allows(not, get("/").header("user-agent", "a robot")));
    assert!(!allows(not, get("/").header("user-agent", "a bot*")));
}

#[test]
fn when_claims_nested_and_lists() {
    let claims = r#"{"iss": "https://issuer.example", "groups": ["dev", "admins"], "admin": true,
                     "level": 3, "org": {"team": "core", "units": ["a", "b"]}}"#;
    let req = || get("/").property("request.auth.claims", claims);
    let when = |key: &str, values: &str| {
        format!(r#"{{"when": [{{"key": "{key}", "values": {values}}}]}}"#)
    };
    assert!(allows(
        &when("request.auth.claims[iss]", r#"["https://issuer.example"]"#),
        req()
    ));
    assert!(allows(
        &when("request.auth.claims[groups]", r#"["admins"]"#),
        req()
    ));
    assert!(allows(
        &when("request.auth.claims[groups]", r#"["adm*"]"#),
        req()
    ));
    assert!(!allows(
        &when("request.auth.claims[groups]", r#"["ops"]"#),
        req()
    ));
    assert!(allows(
        &when("request.auth.claims[org][team]", r#"["core"]"#),
        req()
    ));
    assert!(allows(
        &when("request.auth.claims[org][units]", r#"["b"]"#),
        req()
    ));
    assert!(!allows(
        &when("request.auth.claims[org][missing]", r#"["*"]"#),
        req()
    ));
    assert!(!allows(
        &when("request.auth.claims[iss][x]", r#"["*"]"#),
        req()
    ));
    // Booleans and numbers are not strings to Envoy's matcher.
    assert!(!allows(
        &when("request.auth.claims[admin]", r#"["true"]"#),
        req()
    ));
    assert!(!allows(
        &when("request.auth.claims[level]", r#"["3"]"#),
        req()
    ));
    assert!(!allows(
        &when("request.auth.claims[org]", r#"["*"]"#),
        req()
    ));
    // No JWT: no claim matches, every notValues passes.
    assert!(!allows(
        &when("request.auth.claims[iss]", r#"["*"]"#),
        get("/")
    ));
    let not = r#"{"when": [{"key": "request.auth.claims[groups]", "notValues": ["banned"]}]}"#;
    assert!(allows(not, get("/")));
    assert!(allows(not, req()));
    assert!(!allows(
        not,
        get("/").property("request.auth.claims", r#"{"groups": ["x", "banned"]}"#)
    ));
}

#[test]
fn when_audiences_presenter_and_sni() {
    let when = |key: &str, values: &str| {
        format!(r#"{{"when": [{{"key": "{key}", "values": {values}}}]}}"#)
    };
    let aud = when("request.auth.audiences", r#"["api.example.com"]"#);
    assert!(allows(
        &aud,
        get("/").property("request.auth.audiences", r#"["web", "api.example.com"]"#)
    ));
    assert!(!allows(
        &aud,
        get("/").property("request.auth.audiences", r#"["web"]"#)
    ));
    assert!(!allows(&aud, get("/")));
    let azp = when("request.auth.presenter", r#"["client-*"]"#);
    assert!(allows(
        &azp,
        get("/").property("request.auth.presenter", "client-7")
    ));
    assert!(!allows(
        &azp,
        get("/").property("request.auth.presenter", "other")
    ));
    assert!(!allows(&azp, get("/")));
    let sni = when("connection.sni", r#"["*.example.com"]"#);
    assert!(allows(&sni, get("/").sni("api.example.com")));
    assert!(!allows(&sni, get("/").sni("example.org")));
    assert!(!allows(&sni, get("/")));
    let not_sni = r#"{"when": [{"key": "connection.sni", "notValues": ["internal.example.com"]}]}"#;
    assert!(allows(not_sni, get("/")));
    assert!(!allows(not_sni, get("/").sni("internal.example.com")));
}

#[test]
fn a_rule_needs_a_source_an_operation_and_every_condition() {
    let rule = r#"{"from": [{"source": {"notIpBlocks": ["10.0.0.0/8"]}}],
                   "to": [{"operation": {"paths": ["/admin/{**}"], "methods": ["GET"]}}],
                   "when": [{"key": "request.auth.claims[groups]", "values": ["admins"]},
                            {"key": "request.headers[x-env]", "values": ["prod"]}]}"#;
    let authz: Authz = prepare(&config("DENY", rule));
    let ok = || {
        request("GET", "/admin/users")
            .client("192.0.2.9")
            .property("request.auth.claims", r#"{"groups": ["admins"]}"#)
            .header("x-env", "prod")
    };
    assert!(denied(&authz, &ok().build()));
    assert!(!denied(&authz, &ok().client("10.0.0.1").build()));
    assert!(!denied(&authz, &ok().header("x-env", "dev").build()));
    assert!(!denied(
        &authz,
        &request("POST", "/admin/users").client("192.0.2.9").build()
    ));
    assert!(!denied(
        &authz,
        &ok().property("request.auth.claims", "{}").build()
    ));
}

#[test]
fn audit_only_logs() {
    let authz: Authz = prepare(
        r#"{"policies": [
            {"name": "a/audit-admin", "action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
            {"name": "a/deny-delete", "action": "DENY", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}]}"#,
    );
    let req = get("/admin/x").build();
    let edit = decide(&authz, &req);
    assert!(edit.action.is_none());
    assert_eq!(
        log_fields(&authz, &req),
        vec![("rbac_audit".into(), "a/audit-admin".into())]
    );
    assert!(decide(&authz, &get("/other").build()).is_empty());
    // Audited and denied: both fields.
    let req = request("DELETE", "/admin/x").build();
    assert!(denied(&authz, &req));
    assert_eq!(
        log_fields(&authz, &req),
        vec![
            ("rbac_audit".into(), "a/audit-admin".into()),
            ("rbac".into(), "denied by a/deny-delete".into()),
        ]
    );
    // An AUDIT policy is not an ALLOW policy: nothing else is denied.
    let only: Authz = prepare(&config(
        "AUDIT",
        r#"{"to": [{"operation": {"paths": ["/nothing"]}}]}"#,
    ));
    assert!(decide(&only, &get("/x").build()).is_empty());
}

#[test]
fn config_errors_name_the_field() {
    let e = config_error(&config(
        "ALLOW",
        r#"{"when": [{"key": "request.auth.claims[a]", "values": ["x"]},
                                                     {"key": "destination.labels[app]", "values": ["x"]}]}"#,
    ));
    assert_eq!(e.field, "policies[0].rules[0].when[1].key");
    assert!(
        e.message.contains("destination.labels[app]"),
        "{}",
        e.message
    );
    let e = config_error(&config(
        "DENY",
        r#"{"when": [{"key": "request.headers[]", "values": ["x"]}]}"#,
    ));
    assert_eq!(e.field, "policies[0].rules[0].when[0].key");
    let e = config_error(&config(
        "DENY",
        r#"{"when": [{"key": "request.auth.claims[a", "values": ["x"]}]}"#,
    ));
    assert_eq!(e.field, "policies[0].rules[0].when[0].key");
    let e = config_error(&config(
        "DENY",
        r#"{"when": [{"key": "source.ip", "values": ["10.0.0.1", "nope"]}]}"#,
    ));
    assert_eq!(e.field, "policies[0].rules[0].when[0].values[1]");
    let e = config_error(r#"{"policies": [{"name": "a/p", "action": "CUSTOM", "rules": [{}]}]}"#);
    assert_eq!(e.field, "policies[0].action");
    let e = config_error(r#"{"policies": [{"name": "a/p", "rules": [{}]}, {"name": 7}]}"#);
    assert_eq!(e.field, "policies[1].name");
    let e = config_error(&config(
        "ALLOW",
        r#"{"from": [{"source": {"serviceAccounts": ["a/b/c"]}}]}"#,
    ));
    assert_eq!(
        e.field,
        "policies[0].rules[0].from[0].source.serviceAccounts[0]"
    );
    // Unknown fields are the gateway's business.
    let _: Authz =
        prepare(r#"{"policies": [{"name": "a/p", "selector": {}, "rules": [{"x": 1}]}], "y": 2}"#);
}

#[test]
fn conditions_that_cannot_be_evaluated_fail_closed() {
    for key in ["destination.ip", "experimental.envoy.filters.http.x[y]"] {
        let rule =
            |field: &str| format!(r#"{{"when": [{{"key": "{key}", "{field}": ["10.0.0.1"]}}]}}"#);
        for field in ["values", "notValues"] {
            // ALLOW: never matches; DENY: always matches.
            assert!(!allows(&rule(field), get("/")), "{key} {field}");
            let deny: Authz = prepare(&config("DENY", &rule(field)));
            assert!(denied(&deny, &get("/").build()), "{key} {field}");
        }
    }
    // Beside the others: the rest of the rule still decides.
    let rule = r#"{"to": [{"operation": {"paths": ["/a"]}}], "when": [{"key": "destination.ip", "values": ["10.0.0.1"]}]}"#;
    let deny: Authz = prepare(&config("DENY", rule));
    assert!(denied(&deny, &get("/a").build()));
    assert!(!denied(&deny, &get("/b").build()));
    // source.trustDomain is evaluated.
    let when = r#"{"when": [{"key": "source.trustDomain", "values": ["cluster.local"]}]}"#;
    assert!(allows(
        when,
        get("/").property("source.principal", "cluster.local/ns/a/sa/b")
    ));
    assert!(!allows(
        when,
        get("/").property("source.principal", "other.td/ns/a/sa/b")
    ));
}

#[test]
fn claim_paths() {
    assert_eq!(claim_path("[a]"), Some(vec!["a".to_string()]));
    assert_eq!(
        claim_path("[a][b]"),
        Some(vec!["a".to_string(), "b".to_string()])
    );
    assert_eq!(claim_path("[a[b]"), Some(vec!["a[b".to_string()]));
    assert_eq!(claim_path("[]"), None);
    assert_eq!(claim_path("a"), None);
}
