//! TLS origination to upstreams, from a DestinationRule's `tls` (Istio's
//! `ClientTLSSettings`): SIMPLE verifies the upstream against `caCertificates` (or the
//! system's trust store) and the SNI's name or the `subjectAltNames`; MUTUAL also
//! presents a client certificate; `insecureSkipVerify` accepts any certificate. The
//! upstream client pools connections per settings (`key`) and SNI.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use sha2::{Digest, Sha256};
use wasmgate_config::{ClientTls, ClientTlsMode};

use super::verify::{UpstreamCheck, UpstreamVerifier};
use super::{TlsError, bytes, load_certs, load_crls, load_key, roots, system_roots};

/// TLS settings of one upstream cluster, ready to connect with.
#[derive(Debug)]
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    /// The DestinationRule's `sni`; `None` means the request's host (Istio's auto SNI).
    pub sni: Option<String>,
    /// Equal for equal settings: connections are pooled per key and SNI.
    pub key: [u8; 32],
}

/// Build the client side of `tls` for a cluster spoken to with HTTP/2 (`h2`) or not.
/// `None` for `DISABLE`.
pub fn client_config(tls: &ClientTls, h2: bool) -> Result<Option<UpstreamTls>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match tls.mode {
        ClientTlsMode::Disable => return Ok(None),
        ClientTlsMode::IstioMutual => {
            return Err(TlsError {
                field: "mode".into(),
                origin: String::new(),
                message:
                    "ISTIO_MUTUAL needs Istio's mesh certificates, which wasmgate does not have"
                        .into(),
            });
        }
        ClientTlsMode::Simple | ClientTlsMode::Mutual => {}
    }
    let mut digest = Sha256::new();
    digest.update([u8::from(h2), u8::from(tls.insecure_skip_verify)]);
    let roots = match &tls.ca {
        Some(ca) => {
            digest.update(bytes(ca));
            roots(ca)?
        }
        None => system_roots(),
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            field: String::new(),
            origin: String::new(),
            message: format!("no usable TLS version: {e}"),
        })?;
    for san in &tls.subject_alt_names {
        digest.update(san.as_bytes());
        digest.update([0]);
    }
    let custom = |check| {
        Arc::new(UpstreamVerifier::new(
            check,
            provider.signature_verification_algorithms,
        ))
    };
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(custom(UpstreamCheck::Nothing))
    } else {
        let mut verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone());
        if let Some(crl) = &tls.crl {
            digest.update(bytes(crl));
            verifier = verifier.with_crls(load_crls(crl)?);
        }
        let webpki = verifier.build().map_err(|e| TlsError {
            field: "caCertificates".into(),
            origin: tls
                .ca
                .as_ref()
                .map(|c| c.origin.clone())
                .unwrap_or_default(),
            message: format!("unusable CA: {e}"),
        })?;
        if tls.subject_alt_names.is_empty() {
            builder.with_webpki_verifier(webpki)
        } else {
            // The CA and its CRL still apply: only the name check is replaced.
            builder
                .dangerous()
                .with_custom_certificate_verifier(custom(UpstreamCheck::Sans {
                    webpki,
                    sans: tls.subject_alt_names.clone(),
                }))
        }
    };
    let mut config = match (&tls.mode, &tls.client_cert) {
        (ClientTlsMode::Mutual, Some(pair)) => {
            digest.update(bytes(&pair.cert));
            digest.update(bytes(&pair.key));
            let chain = load_certs(&pair.cert)?;
            let key = load_key(&pair.key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::new(&pair.key, format!("unusable client key: {e}")))?
        }
        (ClientTlsMode::Mutual, None) => {
            return Err(TlsError {
                field: "clientCertificate".into(),
                origin: String::new(),
                message: "MUTUAL TLS requires a client certificate and key".into(),
            });
        }
        _ => builder.with_no_client_auth(),
    };
    if h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    if let Some(sni) = &tls.sni {
        digest.update(sni.as_bytes());
    }
    Ok(Some(UpstreamTls {
        config: Arc::new(config),
        sni: tls.sni.clone(),
        key: digest.finalize().into(),
    }))
}
