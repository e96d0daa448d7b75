//! `Gateway` (networking.istio.io): the listeners of the gateway and what hosts they serve.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{is_false, is_zero_u32};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Server {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub bind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTLSSettings>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub default_endpoint: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub number: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Deprecated, and has no effect on gateways.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub target_port: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTLSMode {
    #[default]
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TLSProtocol {
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    #[serde(rename = "TLSV1_0")]
    Tlsv10,
    #[serde(rename = "TLSV1_1")]
    Tlsv11,
    #[serde(rename = "TLSV1_2")]
    Tlsv12,
    #[serde(rename = "TLSV1_3")]
    Tlsv13,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTLSSettings {
    #[serde(skip_serializing_if = "is_false")]
    pub https_redirect: bool,
    /// Absent means `PASSTHROUGH`, the proto default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServerTLSMode>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server_certificate: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ca_crl: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub credential_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ca_cert_credential_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TLSCertificate>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TLSProtocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<TLSProtocol>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// The `cipherSuites` names (Envoy's, after OpenSSL) that wasmgate's TLS library
/// implements: the TLS 1.2 ECDHE suites with AES-GCM or ChaCha20-Poly1305, and the TLS
/// 1.3 suites (always on, as in Envoy). Other names (CBC and RSA key exchange suites,
/// typos) are a warning and ignored.
pub const IMPLEMENTED_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// The suite names of one `cipherSuites` entry: a name, or a group of equal preference
/// `[a|b]` (BoringSSL's syntax, which Envoy takes).
pub fn cipher_suite_names(entry: &str) -> impl Iterator<Item = &str> {
    entry
        .trim_matches(|c| c == '[' || c == ']')
        .split('|')
        .map(str::trim)
}

impl ServerTLSSettings {
    /// The mode with the proto default applied.
    pub fn mode(&self) -> ServerTLSMode {
        self.mode.unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TLSCertificate {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server_certificate: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
}
