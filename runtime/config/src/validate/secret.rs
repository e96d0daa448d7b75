//! Kubernetes `Secret` (core `v1`): the document shape (no `spec`; `type`, `data`,
//! `stringData`, `immutable`), key names, and base64 `data`; builds [`model::Secret`].
//! The loader calls it for `kind: Secret`; Gateways and DestinationRules name Secrets with
//! `credentialName`. No message ever repeats a value: they may be keys.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::Report;
use crate::model::{self, SecretValue};
use crate::raw::ObjectMeta;
use crate::yaml::FieldPath;

/// The annotation `kubectl apply` writes: the whole object again, data included.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A Secret as written. Values are [`Opaque`] so that a type error cannot echo them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SecretResource {
    #[allow(dead_code)]
    pub api_version: String,
    #[allow(dead_code)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub data: Option<BTreeMap<String, Opaque>>,
    #[serde(default)]
    pub string_data: Option<BTreeMap<String, Opaque>>,
    #[serde(default)]
    #[allow(dead_code)]
    pub immutable: Option<bool>,
}

/// A string value that never shows up in a message or a `Debug` print.
#[derive(Clone)]
pub(crate) struct Opaque(String);

impl fmt::Debug for Opaque {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes redacted>", self.0.len())
    }
}

impl<'de> Deserialize<'de> for Opaque {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Opaque, D::Error> {
        d.deserialize_any(OpaqueVisitor)
    }
}

struct OpaqueVisitor;

const NOT_A_STRING: &str = "must be a string (quote it); the value is not shown";

/// Every non-string callback fails with a message that leaves the value out (serde's
/// default `invalid type: integer `1234`` would print it).
impl<'de> Visitor<'de> for OpaqueVisitor {
    type Value = Opaque;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Opaque, E> {
        Ok(Opaque(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Opaque, E> {
        Ok(Opaque(v))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Opaque, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Opaque, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Opaque, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Opaque, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Opaque, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Opaque, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Opaque, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Opaque, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_none<E: de::Error>(self) -> Result<Opaque, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_some<D: Deserializer<'de>>(self, _: D) -> Result<Opaque, D::Error> {
        Err(de::Error::custom(NOT_A_STRING))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Opaque, A::Error> {
        Err(de::Error::custom(NOT_A_STRING))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Opaque, A::Error> {
        Err(de::Error::custom(NOT_A_STRING))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Opaque, A::Error> {
        Err(de::Error::custom(NOT_A_STRING))
    }
}

/// The metadata the loader checks like any resource's.
pub(crate) fn metadata(s: &SecretResource) -> &ObjectMeta {
    &s.metadata
}

pub(crate) fn validate(meta: &model::Meta, s: &SecretResource, r: &mut Report) -> model::Secret {
    let mut data = BTreeMap::new();
    let data_path = FieldPath::root("data");
    for (key, value) in s.data.iter().flatten() {
        let p = data_path.key(key);
        r.check(&p, validate_key(key));
        match decode_base64(&value.0) {
            Ok(bytes) => {
                data.insert(key.clone(), SecretValue::new(bytes));
            }
            Err(e) => r.err(&p, e),
        }
    }
    let string_path = FieldPath::root("stringData");
    for (key, value) in s.string_data.iter().flatten() {
        r.check(&string_path.key(key), validate_key(key));
        // Kubernetes' rule: stringData wins over data for the same key.
        data.insert(key.clone(), SecretValue::new(value.0.clone().into_bytes()));
    }
    let mut meta = meta.clone();
    meta.annotations.remove(LAST_APPLIED);
    model::Secret {
        meta,
        secret_type: s.type_.clone().unwrap_or_default(),
        data,
    }
}

/// Kubernetes' rule for Secret and ConfigMap keys.
fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 253 {
        return Err(format!(
            "invalid key {key:?}: must be 1 to 253 characters long"
        ));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "invalid key {key:?}: must consist of alphanumeric characters, '-', '_' or '.'"
        ));
    }
    if key == "." || key == ".." {
        return Err(format!("invalid key {key:?}: must not be '.' or '..'"));
    }
    Ok(())
}

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes base64 as Kubernetes does (Go's `base64.StdEncoding`): the standard alphabet,
/// `=` padding required, line breaks (CR, LF) skipped. Messages give positions, never
/// characters.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let input: Vec<u8> = text
        .bytes()
        .filter(|b| *b != b'\n' && *b != b'\r')
        .collect();
    if let Some(at) = input
        .iter()
        .position(|c| *c != b'=' && sextet(*c).is_none())
    {
        return Err(format!(
            "invalid base64: unexpected character at position {at}"
        ));
    }
    if !input.len().is_multiple_of(4) {
        return Err(format!(
            "invalid base64: {} characters is not a multiple of 4 (padding missing?)",
            input.len()
        ));
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let chunks = input.len() / 4;
    for (i, chunk) in input.chunks(4).enumerate() {
        let last = i + 1 == chunks;
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            let at = i * 4 + chunk.iter().position(|c| *c == b'=').unwrap_or(0);
            return Err(format!(
                "invalid base64: unexpected padding at position {at}"
            ));
        }
        let mut n: u32 = 0;
        for (j, &c) in chunk[..4 - pad].iter().enumerate() {
            // Only `=` can fail here: every other character was checked above.
            let Some(v) = sextet(c) else {
                return Err(format!(
                    "invalid base64: unexpected padding at position {}",
                    i * 4 + j
                ));
            };
            n = (n << 6) | u32::from(v);
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, ConfigError, Errors, Kind};
    use std::path::PathBuf;

    #[test]
    fn base64_like_kubernetes() {
        let ok = |s: &str| decode_base64(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok(""), b"");
        assert_eq!(ok("Zg=="), b"f");
        assert_eq!(ok("Zm8="), b"fo");
        assert_eq!(ok("Zm9v"), b"foo");
        assert_eq!(ok("Zm9v\nYmFy\r\n"), b"foobar");
        assert_eq!(ok("+/+/"), [0xfb, 0xff, 0xbf]);
        let err = |s: &str| decode_base64(s).err().unwrap_or_default();
        assert_eq!(
            err("Zg"),
            "invalid base64: 2 characters is not a multiple of 4 (padding missing?)"
        );
        assert_eq!(
            err("Zm9v-A=="),
            "invalid base64: unexpected character at position 4"
        );
        assert_eq!(
            err("Zg==Zm9v"),
            "invalid base64: unexpected padding at position 2"
        );
        assert_eq!(
            err("Z==="),
            "invalid base64: unexpected padding at position 1"
        );
        assert_eq!(
            err("Zm 9"),
            "invalid base64: unexpected character at position 2"
        );
        // URL-safe alphabet is not Kubernetes'.
        assert!(decode_base64("_-8=").is_err());
    }

    #[test]
    fn keys() {
        assert!(validate_key("tls.crt").is_ok());
        assert!(validate_key("ca-cert_1").is_ok());
        assert!(validate_key("a/b").is_err());
        assert!(validate_key("..").is_err());
        assert!(validate_key("").is_err());
    }

    fn load(yaml: &str) -> Result<Config, Errors> {
        crate::load_sources(&[(PathBuf::from("s.yaml"), yaml.to_string())])
    }

    fn errors(yaml: &str) -> Vec<String> {
        match load(yaml) {
            Ok(_) => panic!("should fail:\n{yaml}"),
            Err(Errors(e)) => e.iter().map(ConfigError::to_string).collect(),
        }
    }

    #[test]
    fn data_and_string_data() {
        let c = match load(
            "apiVersion: v1\n\
             kind: Secret\n\
             metadata: {name: web-cert, namespace: edge}\n\
             type: kubernetes.io/tls\n\
             immutable: true\n\
             data:\n  tls.crt: Y2VydA==\n  tls.key: a2V5\n\
             stringData:\n  tls.key: plain key\n  extra: more\n",
        ) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let s = &c.secrets[0];
        assert_eq!(s.meta.id.kind, Kind::Secret);
        assert_eq!(s.meta.id.to_string(), "Secret edge/web-cert");
        assert_eq!(s.secret_type, "kubernetes.io/tls");
        let get = |k: &str| s.get(k).map(|v| v.as_bytes().to_vec());
        assert_eq!(get("tls.crt"), Some(b"cert".to_vec()));
        assert_eq!(
            get("tls.key"),
            Some(b"plain key".to_vec()),
            "stringData wins"
        );
        assert_eq!(get("extra"), Some(b"more".to_vec()));
        assert_eq!(s.data.len(), 3);
    }

    #[test]
    fn debug_never_shows_values() {
        let c = match load(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: k\n  annotations:\n    \
             kubectl.kubernetes.io/last-applied-configuration: '{\"data\":{\"k\":\"c2VjcmV0LXZhbHVl\"}}'\n    \
             team: edge\ndata: {k: c2VjcmV0LXZhbHVl}\nstringData: {p: hunter2}\n",
        ) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let shown = format!("{:?}\n{:#?}", c.secrets, c);
        for secret in ["secret-value", "c2VjcmV0LXZhbHVl", "hunter2"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("<12 bytes redacted>"), "{shown}");
        assert!(shown.contains("team"), "other annotations stay");
    }

    #[test]
    fn bad_base64_names_the_key() {
        let e = errors(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  ok: Zm9v\n  tls.key: not base64!\n",
        );
        assert_eq!(
            e,
            vec![
                "s.yaml:6: Secret default/s: data.tls.key: invalid base64: unexpected character at position 3"
            ]
        );
    }

    #[test]
    fn shape_errors() {
        let e = errors("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nspec: {}\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("s.yaml:4: Secret default/s: spec: unknown field `spec`"),
            "{e:?}"
        );
        // A number where a string belongs: the value is not echoed.
        let e = errors(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  pin: 918273\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(!e[0].contains("918273"), "{e:?}");
        assert!(e[0].contains("stringData.pin: must be a string"), "{e:?}");
        let e =
            errors("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {\"a b\": Zm9v}\n");
        assert_eq!(
            e,
            vec![
                "s.yaml:4: Secret default/s: data.a b: invalid key \"a b\": must consist of alphanumeric characters, '-', '_' or '.'"
            ]
        );
        let e = errors("apiVersion: v2\nkind: Secret\nmetadata: {name: s}\n");
        assert_eq!(
            e,
            vec![
                "s.yaml:1: Secret default/s: apiVersion: unknown apiVersion \"v2\" for Secret; expected one of v1"
            ]
        );
        let e = errors("apiVersion: v1\nkind: Secret\nmetadata: {name: Bad_Name}\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("metadata.name: invalid name"), "{e:?}");
    }

    #[test]
    fn an_empty_secret_loads() {
        let c = match load("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n") {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(c.secrets[0].data.is_empty());
        assert_eq!(c.secrets[0].secret_type, "");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // `data:` with nothing under it is null: no data.
        let c =
            match load("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\nstringData:\n") {
                Ok(c) => c,
                Err(e) => panic!("{e}"),
            };
        assert!(c.secrets[0].data.is_empty());
    }
}
