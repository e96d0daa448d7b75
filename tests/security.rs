//! Istio's security policies through the real binary: RequestAuthentication (JWTs made
//! and signed here, ES256 and EdDSA; keys inline, from a `file://` and from an http
//! `jwksUri`) and AuthorizationPolicy, enforced by the first-party `jwt-authn` and
//! `authz` components, as in Istio's "JWT at ingress" task: 401 for a bad token (the
//! chain ends there), 403 `RBAC: access denied` where no ALLOW policy matches or a DENY
//! does, claims to headers, the token removed before the upstream; a bad policy on
//! reload is refused and the last good config keeps serving.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use support::{Echo, Gateway, TempDir, free_port, get, service_entry};

const ISSUER: &str = "testing@secure.istio.io";

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An ES256 key: signs tokens; its public half as a JWK.
struct EsKey {
    pair: EcdsaKeyPair,
    kid: String,
}

impl EsKey {
    fn new(kid: &str) -> EsKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key");
        EsKey {
            pair,
            kid: kid.to_string(),
        }
    }

    fn jwk(&self) -> String {
        let point = self.pair.public_key().as_ref();
        format!(
            r#"{{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"{}","x":"{}","y":"{}"}}"#,
            self.kid,
            b64(&point[1..33]),
            b64(&point[33..65])
        )
    }

    fn token(&self, claims: &serde_json::Value) -> String {
        let header = format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{}"}}"#, self.kid);
        let input = format!(
            "{}.{}",
            b64(header.as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

/// An Ed25519 key (EdDSA).
struct EdKey(Ed25519KeyPair);

impl EdKey {
    fn new() -> EdKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
        EdKey(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key"))
    }

    fn jwk(&self) -> String {
        format!(
            r#"{{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","kid":"ed","x":"{}"}}"#,
            b64(self.0.public_key().as_ref())
        )
    }

    fn token(&self, claims: &serde_json::Value) -> String {
        let header = r#"{"alg":"EdDSA","typ":"JWT","kid":"ed"}"#;
        let input = format!(
            "{}.{}",
            b64(header.as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        format!("{input}.{}", b64(self.0.sign(input.as_bytes()).as_ref()))
    }
}

fn claims(iss: &str, sub: &str, exp_in: i64, groups: &[&str]) -> serde_json::Value {
    let exp = i64::try_from(now()).unwrap_or(0) + exp_in;
    serde_json::json!({"iss": iss, "sub": sub, "exp": exp, "iat": exp - 3600, "groups": groups})
}

/// Gateway `gw` (selector `istio: ingressgateway`) on `port`, VirtualService `app`
/// routing every path to the echo upstream.
fn routed(dir: &TempDir, port: u16, echo: &Echo) {
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    dir.write(
        "se.yaml",
        &service_entry("echo", "echo.internal", 80, &[(echo.port(), &[])]),
    );
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - match: [{uri: {prefix: /direct}}]\n    directResponse: {status: 200, body: {string: direct}}\n  - route:\n    - destination: {host: echo.internal}\n",
    );
}

/// A RequestAuthentication on the ingress gateway's workload, as Istio's task writes it.
fn request_authentication(name: &str, rule: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: {name}\n  namespace: istio-system\nspec:\n  selector:\n    matchLabels:\n      istio: ingressgateway\n  jwtRules:\n{rule}"
    )
}

fn authorization_policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: istio-system\nspec:\n  selector:\n    matchLabels:\n      istio: ingressgateway\n{spec}"
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Istio's "JWT at ingress" task, extended: tokens from the Authorization header and
/// from a custom header, claims to headers, ALLOW by request principal and claim on a
/// path template, DENY by source IP and by method, and a direct response guarded too.
#[tokio::test]
async fn jwt_and_authorization_at_ingress() {
    let echo = Echo::start("echo").await;
    let port = free_port();
    let dir = TempDir::new("security-task");
    routed(&dir, port, &echo);
    let es = EsKey::new("k1");
    let ed = EdKey::new();
    let jwks = format!(r#"{{"keys":[{},{}]}}"#, es.jwk(), ed.jwk());
    dir.write(
        "ra.yaml",
        &request_authentication(
            "jwt",
            &format!(
                "  - issuer: \"{ISSUER}\"\n    jwks: '{jwks}'\n    outputClaimToHeaders:\n    - {{header: x-jwt-sub, claim: sub}}\n  - issuer: other-issuer\n    jwks: '{jwks}'\n    fromHeaders: [{{name: x-token, prefix: \"Token \"}}]\n"
            ),
        ),
    );
    dir.write(
        "ap.yaml",
        &[
            authorization_policy(
                "require-jwt",
                &format!(
                    "  action: ALLOW\n  rules:\n  - from:\n    - source:\n        requestPrincipals: [\"{ISSUER}/*\"]\n    to:\n    - operation:\n        paths: [\"/api/{{*}}\", \"/direct\"]\n    when:\n    - key: request.auth.claims[groups]\n      values: [group1]\n  - from:\n    - source:\n        requestPrincipals: [\"other-issuer/*\"]\n"
                ),
            ),
            authorization_policy(
                "deny-blocked",
                "  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [\"/api/blocked\"]}\n    from:\n    - source: {ipBlocks: [\"127.0.0.0/8\"]}\n  - to:\n    - operation: {methods: [DELETE]}\n",
            ),
        ]
        .join("---\n"),
    );
    // Two probes: one before authentication (it may not forge an identity), one after
    // (it reads the verified principal).
    dir.write(
        "probes.yaml",
        &["AUTHN", "AUTHZ"]
            .map(|phase| {
                let name = phase.to_lowercase();
                format!(
                    "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: probe-{name}\nspec:\n  url: phases.wasm\n  phase: {phase}\n  targetRefs: [{{group: networking.istio.io, kind: VirtualService, name: app}}]\n  pluginConfig: {{name: {name}}}\n"
                )
            })
            .join("---\n"),
    );
    let plugins = support::plugins_dir(&[("phases.wasm", "phases")]);
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    let good = es.token(&claims(ISSUER, "alice", 3600, &["group1"]));
    let ask = |path: &'static str, headers: Vec<(&'static str, String)>| async move {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        get(port, "app.example.com", path, &h).await.expect("reply")
    };

    // No token: authentication passes without a principal; no ALLOW policy matches.
    let r = ask("/api/x", vec![]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.text(), "RBAC: access denied");

    // A good token: allowed; the claim is a header; the token does not go upstream.
    let r = ask("/api/x", vec![("authorization", bearer(&good))]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = r.echo();
    assert_eq!(seen["headers"]["x-jwt-sub"], "alice", "{seen}");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");

    // The probe after authentication read the principal; none may set it.
    let r = ask(
        "/api/x",
        vec![
            ("authorization", bearer(&good)),
            ("x-read-property", "request.auth.principal".into()),
        ],
    )
    .await;
    assert_eq!(
        r.echo()["headers"]["x-phases-authz"],
        format!("{ISSUER}/alice")
    );

    // The path template matches one segment only.
    let r = ask("/api/x/y", vec![("authorization", bearer(&good))]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The claim condition: another group is not allowed.
    let other = es.token(&claims(ISSUER, "bob", 3600, &["group2"]));
    let r = ask("/api/x", vec![("authorization", bearer(&other))]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // DENY wins over ALLOW: by source IP, and by method.
    let r = ask("/api/blocked", vec![("authorization", bearer(&good))]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let h = [("authorization", bearer(&good))];
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = support::request(
        port,
        "DELETE",
        "app.example.com",
        "/api/x",
        &h,
        bytes::Bytes::new(),
    )
    .await
    .expect("reply");
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A direct response is guarded as a forward is.
    assert_eq!(ask("/direct", vec![]).await.status, StatusCode::FORBIDDEN);
    let r = ask("/direct", vec![("authorization", bearer(&good))]).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "direct"));

    // Bad tokens: 401 with Envoy's text, before authorization could say 403.
    let expired = es.token(&claims(ISSUER, "alice", -3600, &["group1"]));
    let r = ask("/api/x", vec![("authorization", bearer(&expired))]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.text(), "Jwt is expired");
    assert!(
        r.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer realm=")),
        "{:?}",
        r.headers
    );
    let mut forged = good.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let r = ask("/api/x", vec![("authorization", bearer(&forged))]).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::UNAUTHORIZED, "Jwt verification fails")
    );
    let stranger = es.token(&claims("stranger", "alice", 3600, &["group1"]));
    let r = ask("/api/x", vec![("authorization", bearer(&stranger))]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.text(), "Jwt issuer is not configured");

    // Algorithm confusion: `none`, and HS256 (which would take the public key as the
    // secret) are never accepted.
    let payload = b64(claims(ISSUER, "alice", 3600, &["group1"])
        .to_string()
        .as_bytes());
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#,
    ] {
        let token = format!("{}.{payload}.{}", b64(header.as_bytes()), b64(b"sig"));
        let r = ask("/api/x", vec![("authorization", bearer(&token))]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{header}: {}", r.text());
    }
    // Normalized before it is matched: `/api/./blocked` is `/api/blocked`.
    let r = ask("/api/./blocked", vec![("authorization", bearer(&good))]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let r = ask("/api/z/../blocked", vec![("authorization", bearer(&good))]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());

    // The second rule: EdDSA, from its own header and prefix; any path.
    let ed_token = ed.token(&claims("other-issuer", "carol", 3600, &[]));
    let r = ask(
        "/anything",
        vec![
            ("x-token", format!("Token {ed_token}")),
            // A client's own claim header never reaches the upstream.
            ("x-jwt-sub", "forged".into()),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.echo()["headers"].get("x-jwt-sub").is_none(),
        "{}",
        r.text()
    );
    let r = ask("/anything", vec![("authorization", bearer(&ed_token))]).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the Authorization header is not other-issuer's location"
    );

    // No plugin may set the identity an AuthorizationPolicy checks (here both probes
    // try; the request is allowed, so their refusal is the answer).
    let r = ask(
        "/anything",
        vec![
            ("x-token", format!("Token {ed_token}")),
            ("x-set-property", "request.auth.principal=forged".into()),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.text().contains("only its RequestAuthentication sets it"),
        "{}",
        r.text()
    );

    // The access log says why.
    let lines = gw
        .wait_for_access(|l| l.iter().filter(|x| x.contains(" 401 ")).count() >= 3)
        .await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" 403 ") && l.contains("rbac=denied by istio-system/deny-blocked")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" 401 ") && l.contains("jwt_authn=Jwt is expired")),
        "{lines:#?}"
    );
}

/// Keys from `jwksUri`: a `file://` path and an http URL served on loopback; a URI that
/// cannot be fetched leaves its issuer's tokens refused (401), the rest serving.
#[tokio::test]
async fn jwks_uri_from_file_and_http() {
    let echo = Echo::start("echo").await;
    let port = free_port();
    let dir = TempDir::new("security-jwks-uri");
    routed(&dir, port, &echo);
    let file_key = EsKey::new("f");
    let http_key = EsKey::new("h");
    let jwks_file = dir.write("jwks.json", &format!(r#"{{"keys":[{}]}}"#, file_key.jwk()));
    let served = format!(r#"{{"keys":[{}]}}"#, http_key.jwk());
    // Keys an identity provider published that wasmgate cannot use (a shared secret):
    // that issuer's tokens are refused; the config still loads.
    let odd_file = dir.write("odd.json", r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#);
    let jwks_port = serve_once_per_request(served).await;
    dir.write(
        "ra.yaml",
        &request_authentication(
            "jwt",
            &format!(
                "  - issuer: file-issuer\n    jwksUri: \"file://{}\"\n  - issuer: http-issuer\n    jwksUri: \"http://127.0.0.1:{jwks_port}/jwks.json\"\n  - issuer: gone-issuer\n    jwksUri: \"http://127.0.0.1:{}/jwks.json\"\n    timeout: 1s\n  - issuer: odd-issuer\n    jwksUri: \"file://{}\"\n",
                jwks_file.display(),
                free_port(),
                odd_file.display()
            ),
        ),
    );
    let gw = Gateway::start(dir.path(), &[]).await;
    for (key, iss) in [(&file_key, "file-issuer"), (&http_key, "http-issuer")] {
        let t = key.token(&claims(iss, "x", 60, &[]));
        let r = get(port, "a", "/", &[("authorization", &bearer(&t))])
            .await
            .expect("reply");
        assert_eq!(r.status, StatusCode::OK, "{iss}: {}", r.text());
    }
    let t = http_key.token(&claims("gone-issuer", "x", 60, &[]));
    let r = get(port, "a", "/", &[("authorization", &bearer(&t))])
        .await
        .expect("reply");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(
        gw.log_text().contains("cannot fetch jwksUri"),
        "{}",
        gw.log_text()
    );
    let t = http_key.token(&claims("odd-issuer", "x", 60, &[]));
    let r = get(port, "a", "/", &[("authorization", &bearer(&t))])
        .await
        .expect("reply");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    // Without a token, requests pass (no AuthorizationPolicy).
    let r = get(port, "a", "/", &[]).await.expect("reply");
    assert_eq!(r.status, StatusCode::OK);
}

/// A loopback HTTP/1.1 server answering every request with `body` (JSON).
async fn serve_once_per_request(body: String) -> u16 {
    serve_changing(Arc::new(Mutex::new(body))).await
}

/// [`serve_once_per_request`] with a body the test may change.
async fn serve_changing(body: Arc<Mutex<String>>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.lock().map(|b| b.clone()).unwrap_or_default();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    port
}

/// A bad AuthorizationPolicy on reload is refused with its file and field; the last good
/// policies keep serving.
#[tokio::test]
async fn a_bad_policy_keeps_the_last_good_config() {
    let echo = Echo::start("echo").await;
    let port = free_port();
    let dir = TempDir::new("security-reload");
    routed(&dir, port, &echo);
    dir.write(
        "ap.yaml",
        &authorization_policy(
            "deny-admin",
            "  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/admin*\"]}}]\n",
        ),
    );
    let gw = Gateway::start(dir.path(), &[]).await;
    assert_eq!(
        get(port, "a", "/admin/x", &[]).await.expect("reply").status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(port, "a", "/other", &[]).await.expect("reply").status,
        StatusCode::OK
    );
    dir.write(
        "ap.yaml",
        &authorization_policy(
            "deny-admin",
            "  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/{**}/x/{**}\"]}}]\n",
        ),
    );
    let reply = gw.reload().await;
    assert_ne!(reply.status, StatusCode::OK, "{}", reply.text());
    let text = reply.text();
    assert!(
        text.contains("ap.yaml")
            && text.contains("AuthorizationPolicy istio-system/deny-admin")
            && text.contains("spec.rules[0].to[0].operation.paths"),
        "{text}"
    );
    assert_eq!(
        get(port, "a", "/admin/x", &[]).await.expect("reply").status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(port, "a", "/other", &[]).await.expect("reply").status,
        StatusCode::OK
    );
}

/// `remoteIpBlocks` read the client's address from `x-forwarded-for` as far as
/// `--num-trusted-proxies` allows; `ipBlocks` keep to the peer.
#[tokio::test]
async fn remote_ip_blocks_trust_the_configured_proxies() {
    let echo = Echo::start("echo").await;
    let dir = TempDir::new("security-xff");
    let port = free_port();
    routed(&dir, port, &echo);
    dir.write(
        "ap.yaml",
        &authorization_policy(
            "deny-range",
            "  action: DENY\n  rules:\n  - from:\n    - source: {remoteIpBlocks: [\"203.0.113.0/24\"]}\n",
        ),
    );
    let xff = [("x-forwarded-for", "203.0.113.7")];
    let trusting = Gateway::start(dir.path(), &["--num-trusted-proxies", "1"]).await;
    let r = get(port, "a", "/", &xff).await.expect("reply");
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(
        get(port, "a", "/", &[]).await.expect("reply").status,
        StatusCode::OK
    );
    drop(trusting);
    // Trusting nobody (the default), the remote address is the peer's: 127.0.0.1.
    let port = free_port();
    routed(&dir, port, &echo);
    let _gw = Gateway::start(dir.path(), &[]).await;
    let r = get(port, "a", "/", &xff).await.expect("reply");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// `principals` and `namespaces` match the client certificate's SPIFFE identity on a
/// mutual-TLS server (OPTIONAL_MUTUAL: clients without one get in to be refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_come_from_client_certificates() {
    use support::tls::{Ca, secret};
    let echo = Echo::start("echo").await;
    let port = free_port();
    let dir = TempDir::new("security-mtls");
    let host = "secure.example.com";
    dir.write(
        "gw.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: https, protocol: HTTPS}}\n    hosts: [{host}]\n    tls: {{mode: OPTIONAL_MUTUAL, credentialName: secure-cert}}\n"
        ),
    );
    dir.write(
        "se.yaml",
        &service_entry("echo", "echo.internal", 80, &[(echo.port(), &[])]),
    );
    dir.write(
        "vs.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [{host}]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {{host: echo.internal}}\n"
        ),
    );
    let ca = Ca::new("ca");
    dir.write(
        "secret.yaml",
        &secret(
            "secure-cert",
            "istio-system",
            Some(&ca.server(&[host])),
            Some(&ca.pem),
        ),
    );
    dir.write(
        "ap.yaml",
        &[
            authorization_policy(
                "allow-client",
                "  action: ALLOW\n  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/default/sa/client\"]}\n  - from:\n    - source: {namespaces: [\"team-*\"]}\n",
            ),
        ]
        .join("---\n"),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;
    let alpn: [&[u8]; 1] = [b"http/1.1"];
    let status = |leaf: Option<support::tls::Leaf>| {
        let config = ca.client_config(leaf.as_ref(), &alpn);
        async move {
            support::tls::get(port, config, host, host, "/", &[])
                .await
                .expect("reply")
                .reply
                .status
        }
    };
    let client = ca.client(
        "client",
        &[],
        Some("spiffe://cluster.local/ns/default/sa/client"),
    );
    assert_eq!(status(Some(client)).await, StatusCode::OK);
    let team = ca.client("t", &[], Some("spiffe://cluster.local/ns/team-a/sa/x"));
    assert_eq!(status(Some(team)).await, StatusCode::OK);
    let other = ca.client(
        "other",
        &[],
        Some("spiffe://cluster.local/ns/default/sa/other"),
    );
    assert_eq!(status(Some(other)).await, StatusCode::FORBIDDEN);
    assert_eq!(status(None).await, StatusCode::FORBIDDEN);
}

/// Token locations and audiences: a rule reading `?token=` and a `session` cookie, with
/// `audiences`; a token in a place no rule reads is no token at all.
#[tokio::test]
async fn token_locations_and_audiences() {
    let echo = Echo::start("echo").await;
    let port = free_port();
    let dir = TempDir::new("security-locations");
    routed(&dir, port, &echo);
    let key = EsKey::new("k");
    dir.write(
        "ra.yaml",
        &request_authentication(
            "jwt",
            &format!(
                "  - issuer: shop-issuer\n    jwks: '{{\"keys\":[{}]}}'\n    audiences: [shop]\n    fromParams: [token]\n    fromCookies: [session]\n    outputPayloadToHeader: x-jwt-payload\n",
                key.jwk()
            ),
        ),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;
    let mut c = claims("shop-issuer", "dora", 600, &[]);
    c["aud"] = serde_json::json!(["shop", "other"]);
    let good = key.token(&c);
    let r = get(port, "a", &format!("/p?token={good}"), &[])
        .await
        .expect("reply");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.echo()["headers"]["x-jwt-payload"].is_string(),
        "{}",
        r.text()
    );
    let cookie = format!("theme=dark; session={good}");
    let r = get(port, "a", "/p", &[("cookie", &cookie)])
        .await
        .expect("reply");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    c["aud"] = serde_json::json!("elsewhere");
    let wrong = key.token(&c);
    let r = get(port, "a", &format!("/p?token={wrong}"), &[])
        .await
        .expect("reply");
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::FORBIDDEN, "Audiences in Jwt are not allowed")
    );
    // The Authorization header is not this rule's location: nothing is verified.
    let r = get(port, "a", "/p", &[("authorization", &bearer(&wrong))])
        .await
        .expect("reply");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.echo()["headers"].get("x-jwt-payload").is_none());
}

/// Keys rotate: every `--jwks-refresh-seconds` the gateway fetches `jwksUri` again, so
/// tokens signed with the new key pass and those of the retired one are refused, with
/// no reload by hand.
#[tokio::test]
async fn rotated_jwks_keys_are_fetched_again() {
    let echo = Echo::start("echo").await;
    let port = free_port();
    let dir = TempDir::new("security-rotation");
    routed(&dir, port, &echo);
    let (old, new) = (EsKey::new("old"), EsKey::new("new"));
    let served = Arc::new(Mutex::new(format!(r#"{{"keys":[{}]}}"#, old.jwk())));
    let jwks_port = serve_changing(served.clone()).await;
    dir.write(
        "ra.yaml",
        &request_authentication(
            "jwt",
            &format!("  - issuer: rot\n    jwksUri: \"http://127.0.0.1:{jwks_port}/jwks.json\"\n"),
        ),
    );
    let _gw = Gateway::start(dir.path(), &["--jwks-refresh-seconds", "1"]).await;
    let status = |key: &EsKey| {
        let token = key.token(&claims("rot", "x", 600, &[]));
        async move {
            get(port, "a", "/", &[("authorization", &bearer(&token))])
                .await
                .expect("reply")
                .status
        }
    };
    assert_eq!(status(&old).await, StatusCode::OK);
    assert_eq!(status(&new).await, StatusCode::UNAUTHORIZED);
    if let Ok(mut b) = served.lock() {
        *b = format!(r#"{{"keys":[{}]}}"#, new.jwk());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&new).await != StatusCode::OK {
        assert!(Instant::now() < deadline, "the new key was never fetched");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status(&old).await, StatusCode::UNAUTHORIZED);
}
