//! A Gateway server's TLS settings turned into a rustls `ServerConfig`: its certificates
//! (one, or an RSA and an ECDSA one chosen by what the client can verify), protocol
//! versions, cipher suites, ALPN, and for MUTUAL/OPTIONAL_MUTUAL a client verifier with
//! Istio's extra checks. Built when a snapshot is built, so a bad key or an expired
//! certificate is a config error and the running snapshot keeps serving.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use wasmgate_config::raw::TLSProtocol;
use wasmgate_config::{ServerTls, ServerTlsMode};

use super::verify::ExtraChecks;
use super::{TlsError, cert, load_certs, load_crls, load_key, provider_with_suites, roots};

/// A server's TLS, ready for handshakes.
#[derive(Debug)]
pub struct ServerTlsConfig {
    pub config: Arc<ServerConfig>,
    /// URI SANs of the server's own certificate: `By=` in `x-forwarded-client-cert`.
    pub local_uri_sans: Vec<String>,
}

/// ALPN protocols offered on HTTPS servers (HTTP/2 first, as Envoy prefers).
pub const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Build the TLS config of a terminating server. `alpn` is empty for TLS servers that
/// carry TCP. `now` (Unix seconds) is when certificates must be valid.
pub fn server_config(
    tls: &ServerTls,
    alpn: &[&[u8]],
    now: i64,
) -> Result<ServerTlsConfig, TlsError> {
    let provider = Arc::new(provider_with_suites(&tls.cipher_suites));
    let versions = protocol_versions(tls)?;
    let mut keys = Vec::new();
    let mut local_uri_sans = Vec::new();
    for pair in &tls.certificates {
        let chain = load_certs(&pair.cert)?;
        let leaf = chain.first().ok_or_else(|| {
            TlsError::new(
                &pair.cert,
                "no certificate found (expected PEM CERTIFICATE)",
            )
        })?;
        let info = cert::inspect(leaf).map_err(|m| TlsError::new(&pair.cert, m))?;
        if info.not_after < now {
            return Err(TlsError::new(
                &pair.cert,
                format!("certificate expired at {}", unix_to_utc(info.not_after)),
            ));
        }
        if info.not_before > now {
            return Err(TlsError::new(
                &pair.cert,
                format!(
                    "certificate is not valid before {}",
                    unix_to_utc(info.not_before)
                ),
            ));
        }
        if local_uri_sans.is_empty() {
            local_uri_sans = info.uri_sans.clone();
        }
        let key = load_key(&pair.key)?;
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::new(
                &pair.key,
                format!(
                    "private key does not match the certificate ({})",
                    pair.cert.origin
                ),
            ),
            other => TlsError::new(&pair.key, format!("unusable private key: {other}")),
        })?;
        keys.push(Arc::new(key));
    }
    if keys.is_empty() {
        return Err(TlsError {
            field: String::new(),
            origin: String::new(),
            message: "a terminating TLS server needs a certificate".into(),
        });
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| TlsError {
            field: String::new(),
            origin: String::new(),
            message: format!("no usable TLS version and cipher suite combination: {e}"),
        })?;
    let builder = match tls.mode {
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
            let Some(ca) = &tls.client_ca else {
                return Err(TlsError {
                    field: String::new(),
                    origin: String::new(),
                    message: "MUTUAL TLS requires a client CA".into(),
                });
            };
            let roots = roots(ca)?;
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            if let Some(crl) = &tls.crl {
                verifier = verifier.with_crls(load_crls(crl)?);
            }
            if tls.mode == ServerTlsMode::OptionalMutual {
                verifier = verifier.allow_unauthenticated();
            }
            let inner = verifier
                .build()
                .map_err(|e| TlsError::new(ca, format!("unusable client CA: {e}")))?;
            let checks = ExtraChecks::new(
                &tls.subject_alt_names,
                &tls.verify_certificate_spki,
                &tls.verify_certificate_hash,
            );
            builder.with_client_cert_verifier(checks.wrap(inner))
        }
        ServerTlsMode::Simple | ServerTlsMode::Passthrough => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Certificates(keys)));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Full handshakes are what a gateway under a new-connection load pays for; TLS 1.3
    // stateful resumption (rustls' default cache) keeps returning clients cheap.
    Ok(ServerTlsConfig {
        config: Arc::new(config),
        local_uri_sans,
    })
}

fn protocol_versions(tls: &ServerTls) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
    let rank = |v: Option<TLSProtocol>, default: u8| match v {
        None | Some(TLSProtocol::TlsAuto) => default,
        Some(TLSProtocol::Tlsv10) => 10,
        Some(TLSProtocol::Tlsv11) => 11,
        Some(TLSProtocol::Tlsv12) => 12,
        Some(TLSProtocol::Tlsv13) => 13,
    };
    // Envoy's server defaults: TLS 1.2 to 1.3. rustls speaks nothing older.
    let min = rank(tls.min_version, 12).max(12);
    let max = rank(tls.max_version, 13);
    let versions: Vec<&'static SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, v)| v)
            .collect();
    if versions.is_empty() {
        return Err(TlsError {
            field: "maxProtocolVersion".into(),
            origin: String::new(),
            message: "no TLS version left between minProtocolVersion and maxProtocolVersion \
                      (wasmgate speaks TLS 1.2 and 1.3)"
                .into(),
        });
    }
    Ok(versions)
}

/// The server's key pairs: the first whose key can sign with a scheme the client
/// offers (an ECDSA and an RSA certificate serve old and new clients alike).
#[derive(Debug)]
struct Certificates(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        self.0
            .iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .or_else(|| self.0.first())
            .cloned()
    }
}

/// `2026-12-01 23:18:41 UTC` from Unix seconds.
fn unix_to_utc(secs: i64) -> String {
    let (year, month, day, h, m, sec) = crate::time::civil(secs);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{sec:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(unix_to_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(unix_to_utc(1_795_995_521), "2026-11-29 23:38:41 UTC");
        assert_eq!(unix_to_utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
