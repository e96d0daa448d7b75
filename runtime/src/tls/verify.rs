//! Certificate checks beyond a chain to a trusted CA. For client certificates on
//! MUTUAL servers: Istio's `subjectAltNames`, `verifyCertificateSpki` and
//! `verifyCertificateHash`, checked during the handshake (the client gets an alert, the
//! upstream never sees the connection). For upstream servers: a DestinationRule's
//! `subjectAltNames` replace the host-name check, and `insecureSkipVerify` skips checks.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::cert;

/// Istio's client certificate checks on top of the CA chain, as Envoy applies them:
/// `subjectAltNames` must match when given, and when `verifyCertificateSpki` or
/// `verifyCertificateHash` are given, the certificate must match one entry of either.
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
        // Envoy's rule: with both lists, a match in either admits the certificate.
        let pinned = !self.spki.is_empty() || !self.hashes.is_empty();
        if pinned && !self.spki.contains(&info.spki_sha256) && !self.hashes.contains(&info.sha256) {
            return Err(match (self.spki.is_empty(), self.hashes.is_empty()) {
                (false, true) => "certificate public key matches no verifyCertificateSpki",
                (true, false) => "certificate matches no verifyCertificateHash",
                _ => "certificate matches no verifyCertificateSpki or verifyCertificateHash",
            }
            .into());
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
    /// `webpki`'s checks (the chain to the CA, validity, the `caCrl`) except the name,
    /// then one of the DestinationRule's `subjectAltNames` instead.
    Sans {
        webpki: Arc<WebPkiServerVerifier>,
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
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match &self.check {
            UpstreamCheck::Nothing => Ok(ServerCertVerified::assertion()),
            UpstreamCheck::Sans { webpki, sans } => {
                // rustls checks the chain and its revocation before the name, so a
                // name mismatch alone means everything else passed; the SANs replace
                // the name check (Envoy's `match_typed_subject_alt_names`).
                match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                    Ok(_)
                    | Err(Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. },
                    )) => {}
                    Err(e) => return Err(e),
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// A self-signed certificate for `name`, and the base64 SHA-256 of its
    /// SubjectPublicKeyInfo as rcgen encodes it (independent of x509-parser).
    fn cert(name: &str) -> (CertificateDer<'static>, String) {
        use rcgen::PublicKeyData;
        let key = rcgen::KeyPair::generate().expect("key");
        let c = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let spki = cert::base64(&Sha256::digest(key.subject_public_key_info()));
        (c.der().clone(), spki)
    }

    /// `AB:CD:...`, as openssl prints fingerprints.
    fn fingerprint(der: &CertificateDer<'_>) -> String {
        Sha256::digest(der.as_ref())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn spki_and_hash_pins_admit_a_match_in_either_list() {
        let (a, a_spki) = cert("a.example.com");
        let (b, _) = cert("b.example.com");
        let (c, _) = cert("c.example.com");
        let b_hash = fingerprint(&b);

        let spki = ExtraChecks::new(&[], std::slice::from_ref(&a_spki), &[]);
        assert_eq!(spki.check(&a), Ok(()));
        assert!(
            spki.check(&b)
                .is_err_and(|e| e.contains("verifyCertificateSpki"))
        );

        let hash = ExtraChecks::new(&[], &[], std::slice::from_ref(&b_hash));
        assert_eq!(hash.check(&b), Ok(()), "colons and case do not matter");
        assert!(
            hash.check(&a)
                .is_err_and(|e| e.contains("verifyCertificateHash"))
        );

        let both = ExtraChecks::new(
            &[],
            std::slice::from_ref(&a_spki),
            std::slice::from_ref(&b_hash),
        );
        assert_eq!(both.check(&a), Ok(()));
        assert_eq!(both.check(&b), Ok(()));
        assert!(both.check(&c).is_err());

        // subjectAltNames still apply on top of the pins.
        let named = ExtraChecks::new(&["b.example.com".to_string()], &[a_spki], &[b_hash]);
        assert_eq!(named.check(&b), Ok(()));
        assert!(
            named
                .check(&a)
                .is_err_and(|e| e.contains("subject alt names"))
        );
        assert!(ExtraChecks::default().check(&c).is_ok());
    }

    /// An upstream verified by `subjectAltNames`: the SAN replaces the name check, but
    /// the chain to the CA and the `caCrl` still apply.
    #[test]
    fn upstream_sans_keep_the_chain_and_the_crl() {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(
            ca_params,
            rcgen::KeyPair::generate().expect("key"),
        )
        .expect("ca");
        let leaf = |serial: u64| {
            let mut p = rcgen::CertificateParams::new(vec!["upstream.example".to_string()])
                .expect("params");
            p.serial_number = Some(serial.into());
            let key = rcgen::KeyPair::generate().expect("key");
            p.signed_by(&key, &ca).expect("leaf").der().clone()
        };
        let (good, revoked) = (leaf(1), leaf(2));
        let (stranger, _) = cert("upstream.example");
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: 2u64.into(),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca)
        .expect("crl");
        let provider = rustls::crypto::ring::default_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).expect("root");
        let webpki = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(provider.clone()),
        )
        .with_crls(vec![crl.der().clone()])
        .build()
        .expect("verifier");
        let verifier = |sans: &[&str]| {
            UpstreamVerifier::new(
                UpstreamCheck::Sans {
                    webpki: webpki.clone(),
                    sans: sans.iter().map(|s| s.to_string()).collect(),
                },
                provider.signature_verification_algorithms,
            )
        };
        // The SNI is not the certificate's name: the SANs decide.
        let sni = ServerName::try_from("sni.other.example").expect("name");
        let now = UnixTime::now();
        let check = |v: &UpstreamVerifier, c: &CertificateDer<'_>| {
            v.verify_server_cert(c, &[], &sni, &[], now).map(|_| ())
        };
        let named = verifier(&["upstream.example"]);
        assert_eq!(check(&named, &good), Ok(()));
        assert_eq!(
            check(&named, &revoked),
            Err(Error::InvalidCertificate(rustls::CertificateError::Revoked)),
            "the caCrl applies with subjectAltNames too"
        );
        assert!(check(&named, &stranger).is_err(), "another CA");
        assert_eq!(
            check(&verifier(&["other.example"]), &good),
            Err(Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
            ))
        );
    }
}
