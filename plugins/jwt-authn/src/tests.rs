//! Real keys, real signatures: each test signs its tokens and runs the policy as the
//! gateway does.

use std::sync::OnceLock;

use base64::Engine;
use rand::rngs::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, Pss, RsaPrivateKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wasmgate_plugin_sdk::testing::{
    binding, decide, grant, prepare, request, set_clock, try_decide,
};
use wasmgate_plugin_sdk::{Action, Edit, Policy};

use super::*;
use crate::jwt::BASE64URL;

const NOW: u64 = 1_700_000_000;
const ISSUER: &str = "testing@secure.istio.io";

fn b64(bytes: &[u8]) -> String {
    BASE64URL.encode(bytes)
}

/// The test keys, made once for all tests (RSA generation is slow).
struct Keys {
    rsa: RsaPrivateKey,
    other_rsa: RsaPrivateKey,
    p256: p256::ecdsa::SigningKey,
    p384: p384::ecdsa::SigningKey,
    ed: ed25519_dalek::SigningKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: RsaPrivateKey::new(&mut OsRng, 2048).expect("rsa key"),
        other_rsa: RsaPrivateKey::new(&mut OsRng, 2048).expect("rsa key"),
        p256: p256::ecdsa::SigningKey::random(&mut OsRng),
        p384: p384::ecdsa::SigningKey::random(&mut OsRng),
        ed: ed25519_dalek::SigningKey::generate(&mut OsRng),
    })
}

fn rsa_jwk(key: &RsaPrivateKey, kid: &str) -> Value {
    let public = key.to_public_key();
    json!({"kty": "RSA", "kid": kid, "n": b64(&public.n().to_bytes_be()),
           "e": b64(&public.e().to_bytes_be())})
}

/// A JWKS with every test key (the "other" RSA key is not in it).
fn jwks() -> String {
    let k = keys();
    let p256 = k.p256.verifying_key().to_encoded_point(false);
    let p384 = k.p384.verifying_key().to_encoded_point(false);
    json!({"keys": [
        rsa_jwk(&k.rsa, "rsa"),
        {"kty": "EC", "crv": "P-256", "kid": "p256", "alg": "ES256",
         "x": b64(p256.x().expect("x")), "y": b64(p256.y().expect("y"))},
        {"kty": "EC", "crv": "P-384", "kid": "p384",
         "x": b64(p384.x().expect("x")), "y": b64(p384.y().expect("y"))},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(k.ed.verifying_key().as_bytes())},
    ]})
    .to_string()
}

/// Sign `claims` with `alg` (the key that goes with it), header `kid` when given.
fn sign_with(alg: &str, kid: Option<&str>, claims: &Value, rsa: &RsaPrivateKey) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let data = signed.as_bytes();
    let k = keys();
    let signature = match alg {
        "RS256" => rsa
            .sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(data))
            .expect("sign"),
        "RS384" => rsa
            .sign(
                Pkcs1v15Sign::new::<sha2::Sha384>(),
                &sha2::Sha384::digest(data),
            )
            .expect("sign"),
        "PS256" => rsa
            .sign_with_rng(&mut OsRng, Pss::new::<Sha256>(), &Sha256::digest(data))
            .expect("sign"),
        "ES256" => {
            use p256::ecdsa::signature::Signer;
            let s: p256::ecdsa::Signature = k.p256.sign(data);
            s.to_bytes().to_vec()
        }
        "ES384" => {
            use p384::ecdsa::signature::Signer;
            let s: p384::ecdsa::Signature = k.p384.sign(data);
            s.to_bytes().to_vec()
        }
        "EdDSA" => {
            use ed25519_dalek::Signer;
            k.ed.sign(data).to_bytes().to_vec()
        }
        other => panic!("no signer for {other}"),
    };
    format!("{signed}.{}", b64(&signature))
}

fn kid_for(alg: &str) -> &'static str {
    match alg {
        "ES256" => "p256",
        "ES384" => "p384",
        "EdDSA" => "ed",
        _ => "rsa",
    }
}

fn sign(alg: &str, claims: &Value) -> String {
    sign_with(alg, Some(kid_for(alg)), claims, &keys().rsa)
}

fn claims() -> Value {
    json!({"iss": ISSUER, "sub": "alice", "aud": ["a", "b"], "azp": "web",
           "exp": NOW + 3600, "iat": NOW, "group": "admins",
           "n": 42, "ok": true, "f": 1.5, "nested": {"team": {"name": "core"}}})
}

/// A policy with one rule (fields added to the defaults) at the fixed clock.
fn policy(extra: Value) -> JwtAuthn {
    grant(&["clock"]);
    set_clock(Some(NOW * 1_000_000_000));
    let mut rule = json!({"policy": "default/jwt", "issuer": ISSUER, "jwks": jwks()});
    if let (Some(r), Value::Object(extra)) = (rule.as_object_mut(), extra) {
        r.extend(extra);
    }
    prepare(&json!({"rules": [rule]}).to_string())
}

fn bearer(token: &str) -> wasmgate_plugin_sdk::testing::TestRequest {
    request("GET", "/orders?x=1")
        .header("authorization", &format!("Bearer {token}"))
        .build()
}

/// The status and body of a refusal, and its headers.
fn refused(edit: &Edit) -> (u16, String, Vec<Header>) {
    match &edit.action {
        Some(Action::Respond(r)) => (
            r.status,
            String::from_utf8_lossy(&r.body).into_owned(),
            r.headers.clone(),
        ),
        other => panic!("not refused: {other:?}"),
    }
}

fn refusal_text(p: &JwtAuthn, req: &wasmgate_plugin_sdk::testing::TestRequest) -> String {
    let edit = decide(p, req);
    let (status, body, _) = refused(&edit);
    assert_eq!(
        status,
        if body == Failure::AudienceNotAllowed.text() {
            403
        } else {
            401
        }
    );
    assert_eq!(edit.log_fields, vec![Header::new(LOG_FIELD, body.as_str())]);
    body
}

fn removed(edit: &Edit) -> Vec<String> {
    edit.request_headers
        .as_ref()
        .map(|m| m.remove.clone())
        .unwrap_or_default()
}

fn added(edit: &Edit) -> Vec<Header> {
    edit.request_headers
        .as_ref()
        .map(|m| m.add.clone())
        .unwrap_or_default()
}

fn property(req: &wasmgate_plugin_sdk::testing::TestRequest, name: &str) -> Option<String> {
    req.properties.borrow().get(name).cloned()
}

#[test]
fn every_algorithm_verifies_and_sets_the_properties() {
    let p = policy(json!({}));
    for alg in ["RS256", "RS384", "PS256", "ES256", "ES384", "EdDSA"] {
        let req = bearer(&sign(alg, &claims()));
        let edit = decide(&p, &req);
        assert!(edit.action.is_none(), "{alg}: {edit:?}");
        assert_eq!(removed(&edit), vec!["authorization"], "{alg}");
        assert_eq!(
            property(&req, "request.auth.principal").as_deref(),
            Some("testing@secure.istio.io/alice"),
            "{alg}"
        );
        assert_eq!(
            property(&req, "request.auth.audiences").as_deref(),
            Some(r#"["a","b"]"#)
        );
        assert_eq!(
            property(&req, "request.auth.presenter").as_deref(),
            Some("web")
        );
        let claims_seen: Value =
            serde_json::from_str(&property(&req, "request.auth.claims").expect("claims"))
                .expect("json");
        assert_eq!(claims_seen, claims());
    }
}

#[test]
fn no_token_passes_without_a_principal() {
    let p = policy(json!({}));
    let req = request("GET", "/").header("x-other", "1").build();
    assert!(decide(&p, &req).is_empty());
    assert!(req.properties.borrow().is_empty());
    // A header without the prefix holds no token either.
    let req = request("GET", "/")
        .header("authorization", "Basic YWxpY2U6cHc=")
        .build();
    assert!(decide(&p, &req).is_empty());
}

#[test]
fn a_refusal_is_envoys_answer() {
    let p = policy(json!({}));
    let mut expired = claims();
    expired["exp"] = json!(NOW - 61);
    let req = request("GET", "/orders?x=1")
        .scheme("https")
        .authority("shop.example.com")
        .header(
            "authorization",
            &format!("Bearer {}", sign("RS256", &expired)),
        )
        .build();
    let edit = decide(&p, &req);
    let (status, body, headers) = refused(&edit);
    assert_eq!((status, body.as_str()), (401, "Jwt is expired"));
    assert_eq!(
        headers,
        vec![
            Header::new(
                "www-authenticate",
                r#"Bearer realm="https://shop.example.com/orders?x=1", error="invalid_token""#
            ),
            Header::new("content-type", "text/plain"),
        ]
    );
    assert_eq!(
        edit.log_fields,
        vec![Header::new("jwt_authn", "Jwt is expired")]
    );
    assert!(req.properties.borrow().is_empty());
}

#[test]
fn the_realm_path_is_cut_at_256_bytes() {
    let p = policy(json!({}));
    let long = format!("/{}", "a".repeat(300));
    let req = request("GET", &long)
        .header("authorization", "Bearer nope")
        .build();
    let (_, _, headers) = refused(&decide(&p, &req));
    let expected = format!(
        "Bearer realm=\"http://example.com{}\", error=\"invalid_token\"",
        &long[..256]
    );
    assert_eq!(headers[0].value, expected);
}

#[test]
fn exp_and_nbf_allow_sixty_seconds_of_skew() {
    let p = policy(json!({}));
    let with = |field: &str, value: u64| {
        let mut c = claims();
        c[field] = json!(value);
        bearer(&sign("ES256", &c))
    };
    assert!(decide(&p, &with("exp", NOW - 60)).action.is_none());
    assert_eq!(refusal_text(&p, &with("exp", NOW - 61)), "Jwt is expired");
    assert!(decide(&p, &with("nbf", NOW + 60)).action.is_none());
    assert_eq!(
        refusal_text(&p, &with("nbf", NOW + 61)),
        "Jwt not yet valid"
    );
}

#[test]
fn an_issuer_without_a_rule_is_refused() {
    let p = policy(json!({}));
    let mut c = claims();
    c["iss"] = json!("someone@else");
    assert_eq!(
        refusal_text(&p, &bearer(&sign("RS256", &c))),
        "Jwt issuer is not configured"
    );
}

#[test]
fn audiences_must_match_when_configured() {
    let p = policy(json!({"audiences": ["https://api.example.com/", "b"]}));
    let with_aud = |aud: Value| {
        let mut c = claims();
        c["aud"] = aud;
        bearer(&sign("RS256", &c))
    };
    assert!(decide(&p, &with_aud(json!("b"))).action.is_none());
    // Scheme and trailing slash are ignored on both sides, as jwt_verify_lib does.
    assert!(
        decide(&p, &with_aud(json!(["x", "api.example.com"])))
            .action
            .is_none()
    );
    let edit = decide(&p, &with_aud(json!(["x", "y"])));
    assert_eq!(
        refused(&edit).0,
        403,
        "Envoy answers 403 for audiences (Filter::onComplete)"
    );
    assert_eq!(
        refusal_text(&p, &with_aud(json!(["x"]))),
        "Audiences in Jwt are not allowed"
    );
    let mut c = claims();
    c.as_object_mut().map(|o| o.remove("aud"));
    assert_eq!(
        refusal_text(&p, &bearer(&sign("RS256", &c))),
        "Audiences in Jwt are not allowed"
    );
    assert_eq!(
        refusal_text(&p, &with_aud(json!(7))),
        "Jwt payload [aud] field is not a string or string list"
    );
    // Without audiences in the rule, any will do.
    let any = policy(json!({}));
    assert!(decide(&any, &with_aud(json!("zzz"))).action.is_none());
}

#[test]
fn a_bad_signature_or_an_unknown_key_is_refused() {
    let p = policy(json!({}));
    let forged = sign_with("RS256", Some("rsa"), &claims(), &keys().other_rsa);
    assert_eq!(refusal_text(&p, &bearer(&forged)), "Jwt verification fails");
    // Without a kid every key is tried.
    let forged = sign_with("RS256", None, &claims(), &keys().other_rsa);
    assert_eq!(refusal_text(&p, &bearer(&forged)), "Jwt verification fails");
    let unsigned_by_kid = sign_with("RS256", Some("nope"), &claims(), &keys().rsa);
    assert_eq!(
        refusal_text(&p, &bearer(&unsigned_by_kid)),
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
    // A good token with its payload swapped fails.
    let good = sign("EdDSA", &claims());
    let mut c = claims();
    c["sub"] = json!("mallory");
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(c.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(
        refusal_text(&p, &bearer(&tampered)),
        "Jwt verification fails"
    );
    let short = format!("{}.{}.{}", parts[0], parts[1], b64(b"short"));
    assert_eq!(
        refusal_text(&p, &bearer(&short)),
        "Jwt ED25519 signature is wrong length"
    );
}

#[test]
fn malformed_tokens_name_what_is_wrong() {
    let p = policy(json!({}));
    let header = b64(br#"{"alg":"RS256"}"#);
    let payload = b64(claims().to_string().as_bytes());
    let cases = [
        (
            "abc".to_string(),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (
            "a.b.c.d".to_string(),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (
            format!("{header}.{payload}."),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (
            format!("a.{payload}.c2ln"),
            "Jwt header is an invalid Base64url encoded",
        ),
        // Envoy skips what is not base64url after the prefix: this header is empty.
        (
            format!("!!.{payload}.c2ln"),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (
            format!("{}.{payload}.c2ln", b64(b"not json")),
            "Jwt header is an invalid JSON",
        ),
        (
            format!("{}.{payload}.c2ln", b64(br#"{"typ":"JWT"}"#)),
            "Jwt header [alg] field is required and must be a string",
        ),
        (
            format!("{}.{payload}.c2ln", b64(br#"{"alg":"none"}"#)),
            "Jwt header [alg] is not supported",
        ),
        (
            format!("{}.{payload}.c2ln", b64(br#"{"alg":"RS256","kid":1}"#)),
            "Jwt header [kid] field is not a string",
        ),
        (
            format!("{header}.!!.c2ln"),
            "Jwt payload is an invalid Base64url encoded",
        ),
        (
            format!("{header}.{}.c2ln", b64(b"[1]")),
            "Jwt payload is an invalid JSON",
        ),
        (
            format!("{header}.{}.c2ln", b64(br#"{"exp":"soon"}"#)),
            "Jwt payload [exp] field is not an integer",
        ),
        (
            format!("{header}.{}.c2ln", b64(br#"{"exp":-1}"#)),
            "Jwt payload [exp] field is not a positive 64 bit integer",
        ),
        (
            format!("{header}.{}.c2ln", b64(br#"{"iss":1}"#)),
            "Jwt payload [iss] field is not a string",
        ),
        (
            format!("{header}.{payload}.!!"),
            "Jwt signature is an invalid Base64url encoded",
        ),
    ];
    for (token, text) in cases {
        assert_eq!(refusal_text(&p, &bearer(&token)), text, "{token}");
    }
}

#[test]
fn tokens_come_from_the_rules_locations() {
    let p = policy(json!({
        "fromHeaders": [{"name": "X-Jwt", "prefix": "Token "}],
        "fromParams": ["token"],
        "fromCookies": ["session"],
    }));
    let token = sign("ES256", &claims());
    let from_header = request("GET", "/")
        .header("x-jwt", &format!("Token {token}"))
        .build();
    let edit = decide(&p, &from_header);
    assert!(edit.action.is_none());
    assert_eq!(removed(&edit), vec!["x-jwt"]);
    assert!(property(&from_header, "request.auth.principal").is_some());

    // A query parameter or a cookie stays where it is (Envoy removes only headers).
    let from_param = request("GET", &format!("/?token={token}")).build();
    let edit = decide(&p, &from_param);
    assert!(edit.action.is_none() && removed(&edit).is_empty());
    assert!(property(&from_param, "request.auth.principal").is_some());
    let from_cookie = request("GET", "/")
        .header("cookie", &format!("theme=dark; session=\"{token}\""))
        .build();
    let edit = decide(&p, &from_cookie);
    assert!(edit.action.is_none() && removed(&edit).is_empty());
    assert!(property(&from_cookie, "request.auth.principal").is_some());

    // The defaults are not looked at once a rule names its own locations.
    let default_header = bearer(&token);
    assert!(decide(&p, &default_header).is_empty());
    assert!(default_header.properties.borrow().is_empty());
    // A bad token in a configured cookie is refused.
    let bad_cookie = request("GET", "/")
        .header("cookie", "session=x.y.z")
        .build();
    assert_eq!(
        refusal_text(&p, &bad_cookie),
        "Jwt header is an invalid Base64url encoded"
    );
}

#[test]
fn the_default_locations_are_bearer_and_access_token() {
    let p = policy(json!({}));
    let token = sign("RS256", &claims());
    let req = request("GET", &format!("/?access_token={token}")).build();
    assert!(decide(&p, &req).action.is_none());
    assert!(property(&req, "request.auth.principal").is_some());
    let bad = request("GET", "/?access_token=bad").build();
    assert!(refused(&decide(&p, &bad)).0 == 401);
}

#[test]
fn claims_and_payload_go_to_headers() {
    let p = policy(json!({
        "outputPayloadToHeader": "x-jwt-payload",
        "outputClaimToHeaders": [
            {"header": "x-sub", "claim": "sub"},
            {"header": "x-n", "claim": "n"},
            {"header": "x-ok", "claim": "ok"},
            {"header": "x-f", "claim": "f"},
            {"header": "x-team", "claim": "nested.team.name"},
            {"header": "x-absent", "claim": "absent"},
            {"header": "x-aud", "claim": "aud"},
        ],
    }));
    let token = sign("PS256", &claims());
    let edit = decide(&p, &bearer(&token));
    assert!(edit.action.is_none());
    let payload = token.split('.').nth(1).expect("payload");
    assert_eq!(
        added(&edit),
        vec![
            Header::new("x-jwt-payload", payload),
            Header::new("x-sub", "alice"),
            Header::new("x-n", "42"),
            Header::new("x-ok", "true"),
            Header::new("x-f", "1.500000"),
            Header::new("x-team", "core"),
        ]
    );
    // What a client sent in those headers is removed first, token or not.
    let mut sanitized = removed(&edit);
    sanitized.sort();
    assert_eq!(
        sanitized,
        [
            "authorization",
            "x-absent",
            "x-aud",
            "x-f",
            "x-jwt-payload",
            "x-n",
            "x-ok",
            "x-sub",
            "x-team"
        ]
    );
    let forged = request("GET", "/").header("x-sub", "root").build();
    assert!(removed(&decide(&p, &forged)).contains(&"x-sub".to_string()));
}

#[test]
fn forward_original_token_keeps_the_header() {
    let p = policy(json!({"forwardOriginalToken": true}));
    let edit = decide(&p, &bearer(&sign("RS256", &claims())));
    assert!(edit.action.is_none());
    assert!(removed(&edit).is_empty());
}

#[test]
fn an_unfetched_jwks_fails_its_issuers_tokens() {
    grant(&["clock"]);
    set_clock(Some(NOW * 1_000_000_000));
    let p: JwtAuthn = prepare(
        &json!({"rules": [{"issuer": ISSUER, "jwks": null, "jwksUri": "https://x/jwks"}]})
            .to_string(),
    );
    let req = bearer(&sign("RS256", &claims()));
    assert_eq!(refusal_text(&p, &req), "Jwks remote fetch is failed");
    assert!(decide(&p, &request("GET", "/").build()).is_empty());
}

#[test]
fn a_bad_jwks_is_a_config_error() {
    let good = jwks();
    let err = |bad: &str| {
        let config = json!({"rules": [
            {"issuer": "a", "jwks": good},
            {"issuer": ISSUER, "jwks": bad, "timeout": "5s"},
        ]});
        match JwtAuthn::prepare(&binding(), &config.to_string()) {
            Err(e) => (e.field, e.message),
            Ok(_) => panic!("accepted {bad}"),
        }
    };
    let field = "rules[1].jwks".to_string();
    assert_eq!(
        err("nope"),
        (field.clone(), "Jwks is an invalid JSON".into())
    );
    assert_eq!(
        err("{}"),
        (field.clone(), "Jwks does not have [keys] field".into())
    );
    assert_eq!(
        err(r#"{"keys":{}}"#),
        (field.clone(), "[keys] in Jwks is not an array".into())
    );
    assert_eq!(
        err(r#"{"keys":[]}"#),
        (
            field.clone(),
            "Jwks doesn't have any valid public key".into()
        )
    );
    assert_eq!(
        err(r#"{"keys":[{"kty":"RSA","e":"AQAB"}]}"#),
        (field.clone(), "[n] field is missing for a RSA key".into())
    );
    assert_eq!(
        err(r#"{"keys":[{"n":"AQAB"}]}"#),
        (field.clone(), "[kty] is missing in [keys]".into())
    );
    assert_eq!(
        err(r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AQAB","y":"AQAB"}]}"#),
        (
            field,
            "Jwks EC [x] and [y] fields have a parse error.".into()
        )
    );
    // No issuer: serde names the rule.
    let e = JwtAuthn::prepare(&binding(), r#"{"rules":[{"jwks":null}]}"#).expect_err("accepted");
    assert_eq!(e.field, "rules[0]");
    // No config: nothing to enforce.
    let p: JwtAuthn = prepare("null");
    assert!(decide(&p, &bearer("x")).is_empty());
}

#[test]
fn the_rule_of_the_tokens_issuer_verifies_it() {
    grant(&["clock"]);
    set_clock(Some(NOW * 1_000_000_000));
    let k = keys();
    let other_jwks = json!({"keys": [rsa_jwk(&k.other_rsa, "other")]}).to_string();
    let p: JwtAuthn = prepare(
        &json!({"rules": [
            {"issuer": ISSUER, "jwks": jwks()},
            {"issuer": "other", "jwks": other_jwks, "fromHeaders": [{"name": "x-other"}]},
        ]})
        .to_string(),
    );
    let mut c = claims();
    c["iss"] = json!("other");
    let other = sign_with("RS256", Some("other"), &c, &k.other_rsa);
    let req = request("GET", "/").header("x-other", &other).build();
    assert!(decide(&p, &req).action.is_none());
    assert_eq!(
        property(&req, "request.auth.principal").as_deref(),
        Some("other/alice")
    );
    // The first issuer's token in the second rule's header: that location is not its.
    let misplaced = request("GET", "/")
        .header("x-other", &sign("RS256", &claims()))
        .build();
    assert_eq!(refusal_text(&p, &misplaced), "Jwt issuer is not configured");
    // The second issuer's token in the default header: no rule of its issuer looks there.
    assert_eq!(
        refusal_text(&p, &bearer(&other)),
        "Jwt issuer is not configured"
    );
    // Two good tokens, one per rule: passes.
    let both = request("GET", "/")
        .header("x-other", &other)
        .header(
            "authorization",
            &format!("Bearer {}", sign("ES384", &claims())),
        )
        .build();
    let edit = decide(&p, &both);
    assert!(edit.action.is_none(), "{edit:?}");
    // As Envoy's requires_any: the first rule all of whose tokens verify decides, and
    // the second rule's token is neither checked nor removed.
    assert_eq!(removed(&edit), vec!["authorization"]);
    assert_eq!(
        property(&both, "request.auth.principal").as_deref(),
        Some("testing@secure.istio.io/alice"),
    );
    // The second rule's token bad and the first's missing: refused.
    let bad_other = request("GET", "/")
        .header("x-other", &forged_other(&c))
        .build();
    assert_eq!(refusal_text(&p, &bad_other), "Jwt verification fails");
}

/// A token of issuer `other` signed by the wrong key.
fn forged_other(c: &Value) -> String {
    sign_with("RS256", Some("other"), c, &keys().rsa)
}

#[test]
fn a_verified_token_is_cached_until_it_expires() {
    let mut p = policy(json!({}));
    let mut c = claims();
    c["exp"] = json!(NOW + 100);
    let token = sign("RS256", &c);
    assert!(decide(&p, &bearer(&token)).action.is_none());
    assert_eq!(p.cache.borrow().len(), 1);
    // Without keys only the cached token still verifies: its signature is not checked
    // again.
    p.rules[0].jwks = None;
    assert!(decide(&p, &bearer(&token)).action.is_none());
    assert_eq!(
        refusal_text(&p, &bearer(&sign("RS256", &claims()))),
        "Jwks remote fetch is failed"
    );
    // Expiry is checked on a hit too.
    set_clock(Some((NOW + 161) * 1_000_000_000));
    assert_eq!(refusal_text(&p, &bearer(&token)), "Jwt is expired");
    assert_eq!(p.cache.borrow().len(), 0);
}

#[test]
fn the_cache_is_bounded() {
    let p = policy(json!({}));
    for i in 0..(CACHE_CAPACITY + 10) {
        let mut c = claims();
        c["jti"] = json!(format!("t{i}"));
        assert!(decide(&p, &bearer(&sign("EdDSA", &c))).action.is_none());
    }
    assert_eq!(p.cache.borrow().len(), CACHE_CAPACITY);
}

#[test]
fn a_large_payload_keeps_its_claims_and_a_refused_one_fails_closed() {
    let p = policy(json!({}));
    let mut c = claims();
    c["big"] = json!("x".repeat(5000));
    let req = bearer(&sign("ES256", &c));
    assert!(decide(&p, &req).action.is_none());
    assert!(property(&req, "request.auth.claims").is_some_and(|v| v.contains("xxxxx")));
    // Past even the identity limit: a plugin error (FAIL_CLOSE: 500), never a pass
    // without the claims.
    c["big"] = json!("x".repeat(70_000));
    assert!(try_decide(&p, &bearer(&sign("ES256", &c))).is_err());
}

#[test]
fn without_the_clock_grant_a_token_is_a_plugin_error() {
    let p = policy(json!({}));
    grant(&[]);
    assert!(try_decide(&p, &bearer(&sign("RS256", &claims()))).is_err());
    // No token needs no clock.
    assert!(decide(&p, &request("GET", "/").build()).is_empty());
}

#[test]
fn more_tokens_than_a_request_may_carry_are_refused_unchecked() {
    let p = policy(json!({}));
    let token = sign("ES256", &claims());
    let mut req = request("GET", "/");
    for _ in 0..=MAX_TOKENS {
        req = req.header("authorization", &format!("Bearer {token}"));
    }
    let edit = decide(&p, &req.build());
    assert!(edit.action.is_some(), "refused");
    let mut req = request("GET", "/");
    for _ in 0..MAX_TOKENS {
        req = req.header("authorization", &format!("Bearer {token}"));
    }
    assert!(
        decide(&p, &req.build()).action.is_none(),
        "as many as allowed pass"
    );
}
