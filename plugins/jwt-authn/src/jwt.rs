//! A JWT taken apart as Envoy's jwt_verify_lib does it (`Jwt::parseFromString`), the
//! failures it names with the texts Envoy answers with, and the time and audience checks.

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

/// Base64url as absl's `WebSafeBase64Unescape` reads it: padding optional, trailing bits
/// not checked.
pub(crate) const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Envoy's default `clock_skew_seconds`, for `exp` and `nbf`.
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// Why a token (or a JWKS) was refused: jwt_verify_lib's `Status`, of which
/// [`Failure::text`] is what Envoy answers with (`getStatusString`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    NotYetValid,
    Expired,
    BadFormat,
    HeaderBadBase64,
    HeaderBadJson,
    HeaderBadAlg,
    HeaderNotImplementedAlg,
    HeaderBadKid,
    PayloadBadBase64,
    PayloadBadJson,
    IssNotString,
    SubNotString,
    IatNotInteger,
    IatOutOfRange,
    NbfNotInteger,
    NbfOutOfRange,
    ExpNotInteger,
    ExpOutOfRange,
    JtiNotString,
    AudNotString,
    SignatureBadBase64,
    Ed25519SignatureWrongLength,
    UnknownIssuer,
    AudienceNotAllowed,
    VerificationFail,
    JwksParseError,
    JwksNoKeys,
    JwksBadKeys,
    JwksNoValidKeys,
    JwksKidAlgMismatch,
    JwksFetchFail,
    JwksMissingKty,
    JwksBadKty,
    JwksRsaParseError,
    JwksRsaBadAlg,
    JwksRsaMissingN,
    JwksRsaBadN,
    JwksRsaMissingE,
    JwksRsaBadE,
    JwksEcBadAlg,
    JwksEcBadCrv,
    JwksEcAlgOrCrvUnsupported,
    JwksEcAlgNotCompatibleWithCrv,
    JwksEcMissingX,
    JwksEcBadX,
    JwksEcMissingY,
    JwksEcBadY,
    JwksEcXorYBadBase64,
    JwksEcParseError,
    JwksOkpBadAlg,
    JwksOkpMissingCrv,
    JwksOkpBadCrv,
    JwksOkpCrvUnsupported,
    JwksOkpMissingX,
    JwksOkpBadX,
    JwksOkpXBadBase64,
    JwksOkpXWrongLength,
}

impl Failure {
    /// The text Envoy's jwt_authn filter puts in its 401 body (jwt_verify_lib's
    /// `getStatusString`), word for word: clients and tests match on it.
    pub fn text(self) -> &'static str {
        use Failure::*;
        match self {
            NotYetValid => "Jwt not yet valid",
            Expired => "Jwt is expired",
            BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            HeaderBadBase64 => "Jwt header is an invalid Base64url encoded",
            HeaderBadJson => "Jwt header is an invalid JSON",
            HeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            HeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            HeaderBadKid => "Jwt header [kid] field is not a string",
            PayloadBadBase64 => "Jwt payload is an invalid Base64url encoded",
            PayloadBadJson => "Jwt payload is an invalid JSON",
            IssNotString => "Jwt payload [iss] field is not a string",
            SubNotString => "Jwt payload [sub] field is not a string",
            IatNotInteger => "Jwt payload [iat] field is not an integer",
            IatOutOfRange => "Jwt payload [iat] field is not a positive 64 bit integer",
            NbfNotInteger => "Jwt payload [nbf] field is not an integer",
            NbfOutOfRange => "Jwt payload [nbf] field is not a positive 64 bit integer",
            ExpNotInteger => "Jwt payload [exp] field is not an integer",
            ExpOutOfRange => "Jwt payload [exp] field is not a positive 64 bit integer",
            JtiNotString => "Jwt payload [jti] field is not a string",
            AudNotString => "Jwt payload [aud] field is not a string or string list",
            SignatureBadBase64 => "Jwt signature is an invalid Base64url encoded",
            Ed25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
            UnknownIssuer => "Jwt issuer is not configured",
            AudienceNotAllowed => "Audiences in Jwt are not allowed",
            VerificationFail => "Jwt verification fails",
            JwksParseError => "Jwks is an invalid JSON",
            JwksNoKeys => "Jwks does not have [keys] field",
            JwksBadKeys => "[keys] in Jwks is not an array",
            JwksNoValidKeys => "Jwks doesn't have any valid public key",
            JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            JwksFetchFail => "Jwks remote fetch is failed",
            JwksMissingKty => "[kty] is missing in [keys]",
            JwksBadKty => "[kty] is bad in [keys]",
            JwksRsaParseError => "Jwks RSA [n] or [e] field is missing or has a parse error",
            JwksRsaBadAlg => "[alg] is not started with [RS] or [PS] for an RSA key",
            JwksRsaMissingN => "[n] field is missing for a RSA key",
            JwksRsaBadN => "[n] field is not string for a RSA key",
            JwksRsaMissingE => "[e] field is missing for a RSA key",
            JwksRsaBadE => "[e] field is not string for a RSA key",
            JwksEcBadAlg => "[alg] is not started with [ES] for an EC key",
            JwksEcBadCrv => "[crv] field is not string for an EC key",
            JwksEcAlgOrCrvUnsupported => "[crv] or [alg] field is not supported for an EC key",
            JwksEcAlgNotCompatibleWithCrv => {
                "[crv] field specified is not compatible with [alg] for an EC key"
            }
            JwksEcMissingX => "[x] field is missing for an EC key",
            JwksEcBadX => "[x] field is not string for an EC key",
            JwksEcMissingY => "[y] field is missing for an EC key",
            JwksEcBadY => "[y] field is not string for an EC key",
            JwksEcXorYBadBase64 => "Jwks EC [x] or [y] field is an invalid Base64.",
            JwksEcParseError => "Jwks EC [x] and [y] fields have a parse error.",
            JwksOkpBadAlg => "[alg] is not [EdDSA] for an OKP key",
            JwksOkpMissingCrv => "[crv] field is missing for an OKP key",
            JwksOkpBadCrv => "[crv] field is not string for an OKP key",
            JwksOkpCrvUnsupported => "[crv] field is not supported for an OKP key",
            JwksOkpMissingX => "[x] field is missing for an OKP key",
            JwksOkpBadX => "[x] field is not string for an OKP key",
            JwksOkpXBadBase64 => "Jwks OKP [x] field is an invalid Base64.",
            JwksOkpXWrongLength => "Jwks OKP [x] field is wrong length.",
        }
    }

    /// Envoy answers 403 for a token whose audiences are not allowed and 401 for any
    /// other failure (`Filter::onComplete`).
    pub fn http_status(self) -> u16 {
        if self == Failure::AudienceNotAllowed {
            403
        } else {
            401
        }
    }
}

/// The algorithms jwt_verify_lib accepts in a header (`isImplemented`); a token with any
/// other `alg` fails to parse. Of these, this plugin verifies RS*, PS*, ES256, ES384 and
/// EdDSA; the rest (HS*, ES512) find no key.
const IMPLEMENTED_ALGS: [&str; 13] = [
    "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
    "PS384", "PS512", "EdDSA",
];

/// A parsed (not yet verified) token.
#[derive(Debug, Clone)]
pub struct Jwt {
    pub alg: String,
    pub kid: Option<String>,
    pub iss: String,
    pub sub: String,
    pub nbf: u64,
    /// 0: no `exp` (as jwt_verify_lib treats it).
    pub exp: u64,
    pub audiences: Vec<String>,
    /// The payload segment as the token carries it (base64url).
    pub payload_base64url: String,
    /// The decoded payload.
    pub payload: Map<String, Value>,
    /// The payload and the audiences as the JSON texts of the `request.auth.claims` and
    /// `request.auth.audiences` properties, made once (a cached token reuses them).
    pub claims_json: String,
    pub audiences_json: String,
    /// `header.payload`, the signed bytes.
    pub signed: String,
    pub signature: Vec<u8>,
}

impl Jwt {
    /// Take `token` apart, checking each part in jwt_verify_lib's order so that the first
    /// failure named is the one Envoy names.
    pub fn parse(token: &str) -> Result<Jwt, Failure> {
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(Failure::BadFormat);
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [header_b64, payload_b64, signature_b64] = parts[..] else {
            return Err(Failure::BadFormat);
        };
        if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
            return Err(Failure::BadFormat);
        }
        let header_bytes = BASE64URL
            .decode(header_b64)
            .map_err(|_| Failure::HeaderBadBase64)?;
        let header: Map<String, Value> =
            serde_json::from_slice(&header_bytes).map_err(|_| Failure::HeaderBadJson)?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(Failure::HeaderBadAlg),
        };
        if !IMPLEMENTED_ALGS.contains(&alg.as_str()) {
            return Err(Failure::HeaderNotImplementedAlg);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(Failure::HeaderBadKid),
        };
        let payload_bytes = BASE64URL
            .decode(payload_b64)
            .map_err(|_| Failure::PayloadBadBase64)?;
        let payload: Map<String, Value> =
            serde_json::from_slice(&payload_bytes).map_err(|_| Failure::PayloadBadJson)?;
        let iss = string_claim(&payload, "iss", Failure::IssNotString)?;
        let sub = string_claim(&payload, "sub", Failure::SubNotString)?;
        int_claim(
            &payload,
            "iat",
            Failure::IatNotInteger,
            Failure::IatOutOfRange,
        )?;
        let nbf = int_claim(
            &payload,
            "nbf",
            Failure::NbfNotInteger,
            Failure::NbfOutOfRange,
        )?;
        let exp = int_claim(
            &payload,
            "exp",
            Failure::ExpNotInteger,
            Failure::ExpOutOfRange,
        )?;
        string_claim(&payload, "jti", Failure::JtiNotString)?;
        let audiences = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(Failure::AudNotString)?,
            Some(_) => return Err(Failure::AudNotString),
        };
        let signature = BASE64URL
            .decode(signature_b64)
            .map_err(|_| Failure::SignatureBadBase64)?;
        Ok(Jwt {
            alg,
            kid,
            iss,
            sub,
            nbf,
            exp,
            claims_json: serde_json::to_string(&payload).unwrap_or_else(|_| "{}".into()),
            audiences_json: serde_json::to_string(&audiences).unwrap_or_else(|_| "[]".into()),
            audiences,
            payload_base64url: payload_b64.to_string(),
            payload,
            signed: format!("{header_b64}.{payload_b64}"),
            signature,
        })
    }

    /// `nbf` and `exp` against `now` (Unix seconds), each with the clock skew.
    pub fn check_time(&self, now: u64) -> Result<(), Failure> {
        if now.saturating_add(CLOCK_SKEW_SECONDS) < self.nbf {
            return Err(Failure::NotYetValid);
        }
        if self.exp != 0 && now > self.exp.saturating_add(CLOCK_SKEW_SECONDS) {
            return Err(Failure::Expired);
        }
        Ok(())
    }
}

fn string_claim(
    payload: &Map<String, Value>,
    name: &str,
    wrong: Failure,
) -> Result<String, Failure> {
    match payload.get(name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(wrong),
    }
}

/// A numeric claim as jwt_verify_lib reads it: absent is 0; a JSON number that is not a
/// non-negative whole number below 2^64 is out of range.
fn int_claim(
    payload: &Map<String, Value>,
    name: &str,
    wrong: Failure,
    out_of_range: Failure,
) -> Result<u64, Failure> {
    match payload.get(name) {
        None => Ok(0),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                return Ok(u);
            }
            match n.as_f64() {
                // 2^64 as f64: every value below it converts exactly.
                Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0 => {
                    Ok(f as u64)
                }
                _ => Err(out_of_range),
            }
        }
        Some(_) => Err(wrong),
    }
}

/// jwt_verify_lib's `CheckAudience`: a configured or token audience matches without its
/// `http://`/`https://` scheme and one trailing `/`.
pub fn audience_allowed(configured: &[String], token: &[String]) -> bool {
    if configured.is_empty() {
        return true;
    }
    token.iter().any(|aud| {
        configured
            .iter()
            .any(|c| sanitize_audience(c) == sanitize_audience(aud))
    })
}

fn sanitize_audience(aud: &str) -> &str {
    let rest = aud
        .strip_prefix("https://")
        .or_else(|| aud.strip_prefix("http://"))
        .unwrap_or(aud);
    rest.strip_suffix('/').unwrap_or(rest)
}
