//! TLS for listeners and upstreams, with rustls (ring): Gateway servers' certificates and
//! client verification (`server`), upstream origination from DestinationRules
//! (`client`), the ClientHello read that routes a connection by SNI before anything is
//! decided (`client_hello`, `rewind`), Istio's extra certificate checks (`verify`) and
//! the certificate facts behind `x-forwarded-client-cert` (`cert`). Nothing here knows
//! about listeners or snapshots: it turns validated settings into rustls configs, and
//! every failure names the setting and where its bytes came from.

pub mod cert;
pub mod client;
pub mod client_hello;
pub mod rewind;
pub mod server;
pub mod verify;

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use wasmgate_config::Pem;

/// A TLS setting that cannot be used: `field` is the setting (relative to the server's
/// or policy's `tls`), `origin` where the bytes came from (`Secret ns/name key tls.crt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub field: String,
    pub origin: String,
    pub message: String,
}

impl TlsError {
    fn new(pem: &Pem, message: impl Into<String>) -> Self {
        TlsError {
            field: pem.field.clone(),
            origin: pem.origin.clone(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.origin.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.origin, self.message)
        }
    }
}

/// The PEM bytes of a setting. Never logged.
fn bytes(pem: &Pem) -> &[u8] {
    pem.bytes.as_bytes()
}

/// Why PEM text did not parse, in words that never quote it: the parser's own errors
/// can carry a line of the input, and the input may be a private key.
fn pem_problem(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a PEM section has no END line",
        Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed",
        Error::Base64Decode(_) => "a PEM section is not valid base64",
        Error::NoItemsFound => "no PEM section of the expected type",
        Error::SectionTooLarge => "a PEM section is too large",
        _ => "unreadable PEM",
    }
}

/// Every certificate in a PEM bundle, in order.
fn load_certs(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(bytes(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsError::new(
                pem,
                format!("not a PEM certificate bundle: {}", pem_problem(&e)),
            )
        })
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
fn load_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes(pem)).map_err(|e| {
        TlsError::new(
            pem,
            format!("no usable PEM private key: {}", pem_problem(&e)),
        )
    })
}

fn load_crls(pem: &Pem) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    CertificateRevocationListDer::pem_slice_iter(bytes(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(pem, format!("not a PEM CRL: {}", pem_problem(&e))))
}

/// A CA bundle as trust anchors; an empty or unparsable bundle is an error.
fn roots(pem: &Pem) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    let certs = load_certs(pem)?;
    if certs.is_empty() {
        return Err(TlsError::new(pem, "no CA certificate found"));
    }
    for c in certs {
        store
            .add(c)
            .map_err(|e| TlsError::new(pem, format!("unusable CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// The operating system's trust store, for upstreams verified without a CA of their own
/// (Istio's default): `SSL_CERT_FILE` when set (OpenSSL's convention), else Debian's
/// and Red Hat's bundle paths; read once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: std::sync::LazyLock<Arc<RootCertStore>> = std::sync::LazyLock::new(|| {
        let mut store = RootCertStore::empty();
        let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
        let defaults = [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/cert.pem",
        ]
        .map(std::path::PathBuf::from);
        for path in from_env.into_iter().chain(defaults) {
            if let Ok(bytes) = std::fs::read(&path) {
                let certs = CertificateDer::pem_slice_iter(&bytes).filter_map(Result::ok);
                let (added, _) = store.add_parsable_certificates(certs);
                if added > 0 {
                    break;
                }
            }
        }
        Arc::new(store)
    });
    ROOTS.clone()
}

/// ring's provider, with TLS 1.2 suites limited to the `cipherSuites` given (Envoy's
/// OpenSSL names; `[a|b]` groups allowed). TLS 1.3 suites are not configurable, as in
/// Envoy. Names rustls does not implement are skipped here; loading the config warned
/// about them (`wasmgate_config::raw::IMPLEMENTED_CIPHER_SUITES`).
fn provider_with_suites(names: &[String]) -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if names.is_empty() {
        return provider;
    }
    let wanted: Vec<rustls::CipherSuite> = names
        .iter()
        .flat_map(|n| wasmgate_config::raw::cipher_suite_names(n))
        .filter_map(|name| match suite_for(name) {
            Some(Suite::Tls12(s)) => Some(s),
            Some(Suite::Tls13) | None => None,
        })
        .collect();
    provider.cipher_suites.retain(|s| match s {
        rustls::SupportedCipherSuite::Tls13(_) => true,
        rustls::SupportedCipherSuite::Tls12(_) => wanted.contains(&s.suite()),
    });
    // Keep the configured preference order for TLS 1.2.
    provider.cipher_suites.sort_by_key(|s| {
        wanted
            .iter()
            .position(|w| *w == s.suite())
            .unwrap_or(usize::MAX)
    });
    provider
}

enum Suite {
    Tls12(rustls::CipherSuite),
    Tls13,
}

fn suite_for(name: &str) -> Option<Suite> {
    use rustls::CipherSuite as C;
    Some(Suite::Tls12(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384" => C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305" => C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            return Some(Suite::Tls13);
        }
        _ => return None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_suites_by_envoy_name() {
        let names = vec![
            "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]".to_string(),
            "ECDHE-RSA-AES256-GCM-SHA384".to_string(),
            "AES128-SHA".to_string(),
        ];
        let provider = provider_with_suites(&names);
        let tls12: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)))
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            tls12,
            vec![
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            ]
        );
        assert_eq!(
            provider
                .cipher_suites
                .iter()
                .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_)))
                .count(),
            3,
            "TLS 1.3 suites are never filtered"
        );
    }

    /// The names the config accepts without a warning are exactly those mapped here.
    #[test]
    fn implemented_names_match_the_config_crate() {
        for name in wasmgate_config::raw::IMPLEMENTED_CIPHER_SUITES {
            assert!(suite_for(name).is_some(), "{name}");
        }
        for name in [
            "AES128-SHA",
            "ECDHE-RSA-AES128-SHA",
            "AES256-GCM-SHA384",
            "",
        ] {
            assert!(suite_for(name).is_none(), "{name}");
            assert!(!wasmgate_config::raw::IMPLEMENTED_CIPHER_SUITES.contains(&name));
        }
    }
}
