//! Key material and the TLS settings resolved from it: Kubernetes `Secret`s as loaded, and
//! the server (Gateway) and client (DestinationRule) TLS settings with every certificate,
//! key, CA bundle and CRL already read from its Secret or file. The runtime builds its TLS
//! configurations from these without touching the filesystem or the other resources; it
//! parses the bytes (PEM) itself, since this crate has no crypto and also builds for wasm32.
//! Key material never reaches a log: [`SecretValue`]'s `Debug` prints only its length.

use std::collections::BTreeMap;
use std::fmt;

use super::Meta;
use crate::raw;

/// Bytes that may be key material. `Debug` prints `<N bytes redacted>`, never the bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> SecretValue {
        SecretValue(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretValue {
    fn from(bytes: Vec<u8>) -> SecretValue {
        SecretValue(bytes)
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes redacted>", self.0.len())
    }
}

/// A Kubernetes `Secret` (core `v1`). Only its keys and values matter to wasmgate: any
/// `type` is accepted, and a Gateway or DestinationRule that names the Secret says which
/// keys it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// Without the `kubectl.kubernetes.io/last-applied-configuration` annotation, which
    /// would repeat the data.
    pub meta: Meta,
    /// `type` as written (`kubernetes.io/tls`, `Opaque`...); empty when absent.
    pub secret_type: String,
    /// `data` decoded from base64, then `stringData` on top (it wins for a key in both).
    pub data: BTreeMap<String, SecretValue>,
}

impl Secret {
    /// The value of `key`, if the Secret has it.
    pub fn get(&self, key: &str) -> Option<&SecretValue> {
        self.data.get(key)
    }
}

/// Certificate, key, CA bundle or CRL bytes (normally PEM), and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pem {
    pub bytes: SecretValue,
    /// For messages: `Secret istio-system/bookinfo-cert key tls.crt` or
    /// `file /etc/certs/server.pem`.
    pub origin: String,
    /// The field of the Gateway or DestinationRule that led here, e.g.
    /// `spec.servers[1].tls.credentialName`, so that a runtime error about the bytes can
    /// name the resource, the field and the origin.
    pub field: String,
}

/// A certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub cert: Pem,
    pub key: Pem,
}

/// How a Gateway server treats TLS. Istio's `AUTO_PASSTHROUGH` and `ISTIO_MUTUAL` are
/// rejected at load (wasmgate has no mesh identities), so they have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerTlsMode {
    /// Terminate TLS with the server's certificate.
    Simple,
    /// Terminate TLS and require a client certificate signed by `client_ca`.
    Mutual,
    /// Terminate TLS and verify a client certificate when one is presented.
    OptionalMutual,
    /// Do not terminate: route by SNI and pass the bytes through (`tls` routes).
    Passthrough,
}

/// A Gateway server's TLS settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    /// One or two key pairs (two from `credentialNames` or `tlsCertificates`, typically an
    /// RSA and an ECDSA certificate); empty for `Passthrough`.
    pub certificates: Vec<KeyPair>,
    /// The CA bundle that verifies client certificates: `Some` exactly for `Mutual` and
    /// `OptionalMutual`.
    pub client_ca: Option<Pem>,
    /// Revocation list for client certificates (mutual modes only).
    pub crl: Option<Pem>,
    /// `TLSV1_2` or `TLSV1_3`; `None` is the default (TLS 1.2). `TLSV1_0`/`TLSV1_1` are
    /// raised to `TLSV1_2` with a warning and `TLS_AUTO` is `None`.
    pub min_version: Option<raw::TLSProtocol>,
    /// `TLSV1_2` or `TLSV1_3`; `None` is the default (TLS 1.3). Never below `min_version`.
    pub max_version: Option<raw::TLSProtocol>,
    /// As written, without duplicates.
    pub cipher_suites: Vec<String>,
    /// Client certificate checks (mutual modes), as written.
    pub subject_alt_names: Vec<String>,
    pub verify_certificate_spki: Vec<String>,
    pub verify_certificate_hash: Vec<String>,
}

impl ServerTls {
    /// The settings of a `PASSTHROUGH` server: nothing to terminate with, so versions,
    /// ciphers and client checks (which Envoy ignores there too) are left out.
    pub fn passthrough() -> ServerTls {
        ServerTls {
            mode: ServerTlsMode::Passthrough,
            certificates: Vec::new(),
            client_ca: None,
            crl: None,
            min_version: None,
            max_version: None,
            cipher_suites: Vec::new(),
            subject_alt_names: Vec::new(),
            verify_certificate_spki: Vec::new(),
            verify_certificate_hash: Vec::new(),
        }
    }
}

/// How wasmgate talks TLS to an upstream (DestinationRule `tls.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientTlsMode {
    /// Plain text; an explicit `DISABLE` still overrides a less specific setting.
    Disable,
    /// TLS, verifying the server.
    Simple,
    /// TLS with a client certificate.
    Mutual,
    /// Istio's mesh mTLS: needs mesh certificates wasmgate does not have (loaded with a
    /// warning; requests fail with 503).
    IstioMutual,
}

/// An upstream TLS setting (one `tls` block of a DestinationRule), resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub mode: ClientTlsMode,
    /// `Some` exactly for `Mutual`.
    pub client_cert: Option<KeyPair>,
    /// CA bundle that verifies the server; `None` means the platform's trusted roots (or
    /// no verification with `insecure_skip_verify`).
    pub ca: Option<Pem>,
    pub crl: Option<Pem>,
    /// SNI to send; `None`: the runtime's default.
    pub sni: Option<String>,
    pub subject_alt_names: Vec<String>,
    /// `insecureSkipVerify`, `false` when absent.
    pub insecure_skip_verify: bool,
}

impl ClientTls {
    /// A setting with only a mode (`DISABLE`, `ISTIO_MUTUAL`).
    pub fn mode_only(mode: ClientTlsMode) -> ClientTls {
        ClientTls {
            mode,
            client_cert: None,
            ca: None,
            crl: None,
            sni: None,
            subject_alt_names: Vec::new(),
            insecure_skip_verify: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_never_print_their_bytes() {
        let v = SecretValue::new(b"-----BEGIN PRIVATE KEY-----".to_vec());
        assert_eq!(format!("{v:?}"), "<27 bytes redacted>");
        let pem = Pem {
            bytes: v.clone(),
            origin: "file /k.pem".into(),
            field: "spec.servers[0].tls.privateKey".into(),
        };
        let shown = format!("{pem:?} {pem:#?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(shown.contains("file /k.pem"), "{shown}");
        assert_eq!(v.as_bytes(), b"-----BEGIN PRIVATE KEY-----");
        assert_eq!((v.len(), v.is_empty()), (27, false));
    }
}
