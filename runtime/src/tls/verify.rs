//! Certificate checks beyond a chain to a trusted CA. For client certificates on
//! MUTUAL servers: Istio's `subjectAltNames`, `verifyCertificateSpki` and
//! `verifyCertificateHash`, checked during the handshake (the client gets an alert, the
//! upstream never sees the connection). For upstream servers: a DestinationRule's
//! `subjectAltNames` replace the host-name check, and `insecureSkipVerify` skips checks.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};

use super::cert;

/// Istio's client certificate checks on top of the CA chain; each list that is
/// non-empty must match.
#[derive(Debug, Clone, Default)]
pub struct ExtraChecks {
    sans: Vec<String>,
    spki: Vec<String>,
    hashes: Vec<String>,
}

impl ExtraChecks {
    pub fn new(sans: &[String], spki: &[String], hashes: &[String]) -> Self {
        ExtraChecks {
            sans: sans.to_vec(),
            spki: spki.to_vec(),
            hashes: hashes.iter().map(|h| cert::normalize_hash(h)).collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.sans.is_empty() && self.spki.is_empty() && self.hashes.is_empty()
    }

    /// Why `der` fails these checks, if it does.
    pub fn check(&self, der: &CertificateDer<'_>) -> Result<(), String> {
        if self.is_empty() {
            return Ok(());
        }
        let info = cert::inspect(der)?;
        if !self.sans.is_empty() && !info.sans().any(|s| self.sans.iter().any(|w| w == s)) {
            return Err("certificate has none of the required subject alt names".into());
        }
        if !self.spki.is_empty() && !self.spki.contains(&info.spki_sha256) {
            return Err("certificate public key matches no verifyCertificateSpki".into());
        }
        if !self.hashes.is_empty() && !self.hashes.contains(&info.sha256) {
            return Err("certificate matches no verifyCertificateHash".into());
        }
        Ok(())
    }

    /// A client verifier that runs `inner` (the CA chain), then these checks.
    pub fn wrap(self, inner: Arc<dyn ClientCertVerifier>) -> Arc<dyn ClientCertVerifier> {
        if self.is_empty() {
            return inner;
        }
        Arc::new(ClientChecks {
            inner,
            checks: self,
        })
    }
}

#[derive(Debug)]
struct ClientChecks {
    inner: Arc<dyn ClientCertVerifier>,
    checks: ExtraChecks,
}

impl ClientCertVerifier for ClientChecks {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.checks.check(end_entity).map_err(|m| {
            tracing::debug!("client certificate refused: {m}");
            Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How an upstream's certificate is checked when the default (chain plus the SNI's
/// name) does not apply.
#[derive(Debug)]
pub enum UpstreamCheck {
    /// Chain to `roots`, then one of the DestinationRule's `subjectAltNames`.
    Sans {
        roots: Arc<RootCertStore>,
        sans: Vec<String>,
    },
    /// `insecureSkipVerify: true`: any certificate (signatures are still checked).
    Nothing,
}

#[derive(Debug)]
pub struct UpstreamVerifier {
    check: UpstreamCheck,
    algorithms: WebPkiSupportedAlgorithms,
}

impl UpstreamVerifier {
    pub fn new(check: UpstreamCheck, algorithms: WebPkiSupportedAlgorithms) -> Self {
        UpstreamVerifier { check, algorithms }
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match &self.check {
            UpstreamCheck::Nothing => Ok(ServerCertVerified::assertion()),
            UpstreamCheck::Sans { roots, sans } => {
                let parsed = ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    roots,
                    intermediates,
                    now,
                    self.algorithms.all,
                )?;
                ExtraChecks::new(sans, &[], &[])
                    .check(end_entity)
                    .map_err(|_| {
                        Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                    })?;
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
