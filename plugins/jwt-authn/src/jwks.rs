//! A JWKS compiled once at `prepare` into public keys, and the signature check that
//! picks keys as jwt_verify_lib does (`verifyJwtWithoutTimeChecking`).

use base64::Engine;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPublicKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::jwt::{BASE64URL, Failure, Jwt};

/// One usable public key.
#[derive(Debug)]
enum PublicKey {
    Rsa(RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

#[derive(Debug)]
struct Key {
    kid: Option<String>,
    alg: Option<String>,
    key: PublicKey,
}

/// The keys of one JWKS.
#[derive(Debug)]
pub struct Jwks {
    keys: Vec<Key>,
}

impl Jwks {
    /// Parse a JWKS (JSON text). Keys of types this plugin cannot verify with (`oct`,
    /// P-521, an OKP curve other than Ed25519) are skipped; a malformed key fails the
    /// whole set with jwt_verify_lib's text for it, as does a set left with no key.
    pub fn parse(text: &str) -> Result<Jwks, Failure> {
        let json: Value = serde_json::from_str(text).map_err(|_| Failure::JwksParseError)?;
        let Value::Object(top) = json else {
            return Err(Failure::JwksParseError);
        };
        let Some(keys) = top.get("keys") else {
            return Err(Failure::JwksNoKeys);
        };
        let Value::Array(keys) = keys else {
            return Err(Failure::JwksBadKeys);
        };
        let mut parsed = Vec::new();
        for key in keys {
            // jwt_verify_lib skips entries that are not objects.
            let Value::Object(key) = key else { continue };
            if let Some(k) = parse_key(key)? {
                parsed.push(k);
            }
        }
        if parsed.is_empty() {
            return Err(Failure::JwksNoValidKeys);
        }
        Ok(Jwks { keys: parsed })
    }

    /// Check `jwt`'s signature: keys whose `kid` differs from the token's (both present)
    /// or whose `alg` differs are passed over; the others are tried in order. No key
    /// tried is "no key to match"; keys tried, none verifying, is "verification fails".
    pub fn verify(&self, jwt: &Jwt) -> Result<(), Failure> {
        if jwt.alg == "EdDSA" && jwt.signature.len() != 64 {
            return Err(Failure::Ed25519SignatureWrongLength);
        }
        let mut matched = false;
        for key in &self.keys {
            if let (Some(want), Some(have)) = (&jwt.kid, &key.kid)
                && want != have
            {
                continue;
            }
            if key.alg.as_ref().is_some_and(|a| *a != jwt.alg) {
                continue;
            }
            matched = true;
            if verify_with(&key.key, jwt) {
                return Ok(());
            }
        }
        Err(if matched {
            Failure::VerificationFail
        } else {
            Failure::JwksKidAlgMismatch
        })
    }
}

fn verify_with(key: &PublicKey, jwt: &Jwt) -> bool {
    let data = jwt.signed.as_bytes();
    let sig = jwt.signature.as_slice();
    match (key, jwt.alg.as_str()) {
        (PublicKey::Rsa(k), "RS256") => k
            .verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(data), sig)
            .is_ok(),
        (PublicKey::Rsa(k), "RS384") => k
            .verify(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(data), sig)
            .is_ok(),
        (PublicKey::Rsa(k), "RS512") => k
            .verify(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(data), sig)
            .is_ok(),
        (PublicKey::Rsa(k), "PS256") => k
            .verify(Pss::new::<Sha256>(), &Sha256::digest(data), sig)
            .is_ok(),
        (PublicKey::Rsa(k), "PS384") => k
            .verify(Pss::new::<Sha384>(), &Sha384::digest(data), sig)
            .is_ok(),
        (PublicKey::Rsa(k), "PS512") => k
            .verify(Pss::new::<Sha512>(), &Sha512::digest(data), sig)
            .is_ok(),
        (PublicKey::P256(k), "ES256") => {
            use p256::ecdsa::signature::Verifier;
            p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(data, &s).is_ok())
        }
        (PublicKey::P384(k), "ES384") => {
            use p384::ecdsa::signature::Verifier;
            p384::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(data, &s).is_ok())
        }
        (PublicKey::Ed25519(k), "EdDSA") => {
            use ed25519_dalek::Verifier;
            <[u8; 64]>::try_from(sig).is_ok_and(|bytes| {
                k.verify(data, &ed25519_dalek::Signature::from_bytes(&bytes))
                    .is_ok()
            })
        }
        // A key of another type than the token's algorithm, or HS*/ES512.
        _ => false,
    }
}

/// A string member of a key: absent, present, or the failure for a non-string.
fn member<'a>(
    key: &'a Map<String, Value>,
    name: &str,
    missing: Option<Failure>,
    wrong: Failure,
) -> Result<Option<&'a str>, Failure> {
    match key.get(name) {
        None => missing.map_or(Ok(None), Err),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(wrong),
    }
}

fn parse_key(key: &Map<String, Value>) -> Result<Option<Key>, Failure> {
    let kty = member(
        key,
        "kty",
        Some(Failure::JwksMissingKty),
        Failure::JwksBadKty,
    )?;
    // kid and alg are optional; a non-string one is treated as absent.
    let kid = key.get("kid").and_then(Value::as_str).map(str::to_string);
    let alg = key.get("alg").and_then(Value::as_str).map(str::to_string);
    let parsed = match kty {
        Some("RSA") => Some(rsa_key(key, alg.as_deref())?),
        Some("EC") => ec_key(key, alg.as_deref())?,
        Some("OKP") => okp_key(key, alg.as_deref())?,
        // `oct` (HMAC) keys are not supported here; other types are jwt_verify_lib's
        // "[kty] is not supported", which it also only skips past at request time.
        _ => None,
    };
    Ok(parsed.map(|key| Key { kid, alg, key }))
}

fn rsa_key(key: &Map<String, Value>, alg: Option<&str>) -> Result<PublicKey, Failure> {
    if alg.is_some_and(|a| !a.starts_with("RS") && !a.starts_with("PS")) {
        return Err(Failure::JwksRsaBadAlg);
    }
    let n = member(
        key,
        "n",
        Some(Failure::JwksRsaMissingN),
        Failure::JwksRsaBadN,
    )?;
    let e = member(
        key,
        "e",
        Some(Failure::JwksRsaMissingE),
        Failure::JwksRsaBadE,
    )?;
    let decode = |s: Option<&str>| {
        s.and_then(|s| BASE64URL.decode(s).ok())
            .filter(|b| !b.is_empty())
            .map(|b| BigUint::from_bytes_be(&b))
            .ok_or(Failure::JwksRsaParseError)
    };
    RsaPublicKey::new(decode(n)?, decode(e)?)
        .map(PublicKey::Rsa)
        .map_err(|_| Failure::JwksRsaParseError)
}

fn ec_key(key: &Map<String, Value>, alg: Option<&str>) -> Result<Option<PublicKey>, Failure> {
    if alg.is_some_and(|a| !a.starts_with("ES")) {
        return Err(Failure::JwksEcBadAlg);
    }
    // jwt_verify_lib derives the curve from `alg` when `crv` is absent.
    let crv = match member(key, "crv", None, Failure::JwksEcBadCrv)? {
        Some(c) => c.to_string(),
        None => match alg {
            Some("ES256") | None => "P-256".to_string(),
            Some("ES384") => "P-384".to_string(),
            Some("ES512") => "P-521".to_string(),
            Some(_) => return Err(Failure::JwksEcAlgOrCrvUnsupported),
        },
    };
    let expected_alg = match crv.as_str() {
        "P-256" => "ES256",
        "P-384" => "ES384",
        "P-521" => "ES512",
        _ => return Err(Failure::JwksEcAlgOrCrvUnsupported),
    };
    if alg.is_some_and(|a| a != expected_alg) {
        return Err(Failure::JwksEcAlgNotCompatibleWithCrv);
    }
    let x = member(key, "x", Some(Failure::JwksEcMissingX), Failure::JwksEcBadX)?;
    let y = member(key, "y", Some(Failure::JwksEcMissingY), Failure::JwksEcBadY)?;
    let decode = |s: Option<&str>| {
        s.and_then(|s| BASE64URL.decode(s).ok())
            .ok_or(Failure::JwksEcXorYBadBase64)
    };
    let (x, y) = (decode(x)?, decode(y)?);
    match crv.as_str() {
        "P-256" if x.len() == 32 && y.len() == 32 => {
            let point = p256::EncodedPoint::from_affine_coordinates(
                p256::FieldBytes::from_slice(&x),
                p256::FieldBytes::from_slice(&y),
                false,
            );
            p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map(|k| Some(PublicKey::P256(k)))
                .map_err(|_| Failure::JwksEcParseError)
        }
        "P-384" if x.len() == 48 && y.len() == 48 => {
            let point = p384::EncodedPoint::from_affine_coordinates(
                p384::FieldBytes::from_slice(&x),
                p384::FieldBytes::from_slice(&y),
                false,
            );
            p384::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map(|k| Some(PublicKey::P384(k)))
                .map_err(|_| Failure::JwksEcParseError)
        }
        // P-521 is skipped: no verifier here.
        "P-521" => Ok(None),
        _ => Err(Failure::JwksEcParseError),
    }
}

fn okp_key(key: &Map<String, Value>, alg: Option<&str>) -> Result<Option<PublicKey>, Failure> {
    if alg.is_some_and(|a| a != "EdDSA") {
        return Err(Failure::JwksOkpBadAlg);
    }
    let crv = member(
        key,
        "crv",
        Some(Failure::JwksOkpMissingCrv),
        Failure::JwksOkpBadCrv,
    )?;
    if crv != Some("Ed25519") {
        return Err(Failure::JwksOkpCrvUnsupported);
    }
    let x = member(
        key,
        "x",
        Some(Failure::JwksOkpMissingX),
        Failure::JwksOkpBadX,
    )?;
    let x = x
        .and_then(|x| BASE64URL.decode(x).ok())
        .ok_or(Failure::JwksOkpXBadBase64)?;
    let x = <[u8; 32]>::try_from(x.as_slice()).map_err(|_| Failure::JwksOkpXWrongLength)?;
    ed25519_dalek::VerifyingKey::from_bytes(&x)
        .map(|k| Some(PublicKey::Ed25519(k)))
        .map_err(|_| Failure::JwksOkpXWrongLength)
}
