//! What the gateway reads out of X.509 certificates: subject alternative names, the
//! subject in RFC 2253 form, the SHA-256 digests Istio's `verifyCertificateHash` and
//! `verifyCertificateSpki` compare against, and the validity period. Used when a
//! server's certificates are loaded (expired ones are refused), when a client
//! certificate is checked, and to build `x-forwarded-client-cert`.

use std::fmt::Write as _;

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The facts of one certificate the gateway uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertInfo {
    /// RFC 2253 (last RDN first, `,` between them), as Envoy prints subjects.
    pub subject: String,
    pub dns_sans: Vec<String>,
    pub uri_sans: Vec<String>,
    /// IP and email SANs, as text.
    pub other_sans: Vec<String>,
    /// Lowercase hex SHA-256 of the DER certificate.
    pub sha256: String,
    /// Base64 SHA-256 of the DER SubjectPublicKeyInfo.
    pub spki_sha256: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    /// Every SAN as text, in the order DNS, URI, others.
    pub fn sans(&self) -> impl Iterator<Item = &str> {
        self.dns_sans
            .iter()
            .chain(&self.uri_sans)
            .chain(&self.other_sans)
            .map(String::as_str)
    }
}

/// The identity Istio's `principals` match: the first SPIFFE URI SAN without
/// `spiffe://` (`cluster.local/ns/default/sa/sleep`), else the first URI SAN, else the
/// first DNS SAN, else the subject (Envoy's order for the peer's principal).
pub fn principal(info: &CertInfo) -> Option<String> {
    info.uri_sans
        .iter()
        .find_map(|u| u.strip_prefix("spiffe://"))
        .map(str::to_string)
        .or_else(|| info.uri_sans.first().cloned())
        .or_else(|| info.dns_sans.first().cloned())
        .or_else(|| (!info.subject.is_empty()).then(|| info.subject.clone()))
}

/// Read a DER certificate.
pub fn inspect(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut info = CertInfo {
        subject: rfc2253(&cert),
        sha256: hex(&Sha256::digest(der.as_ref())),
        spki_sha256: base64(&Sha256::digest(cert.public_key().raw)),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        ..CertInfo::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => info.dns_sans.push((*d).to_string()),
                GeneralName::URI(u) => info.uri_sans.push((*u).to_string()),
                GeneralName::RFC822Name(e) => info.other_sans.push((*e).to_string()),
                GeneralName::IPAddress(ip) => {
                    if let Some(ip) = ip_text(ip) {
                        info.other_sans.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(info)
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => {
            let b: [u8; 4] = bytes.try_into().ok()?;
            Some(std::net::Ipv4Addr::from(b).to_string())
        }
        16 => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(b).to_string())
        }
        _ => None,
    }
}

/// The subject as OpenSSL's `XN_FLAG_RFC2253` prints it, which is what Envoy puts in
/// `Subject=` of `x-forwarded-client-cert`: RDNs last first, `,` between them, `+`
/// inside a multi-valued RDN, special characters escaped.
fn rfc2253(cert: &X509Certificate<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut rdns = Vec::new();
    for rdn in cert.subject().iter_rdn() {
        let parts: Vec<String> = rdn
            .iter()
            .map(|atv| {
                let oid = atv.attr_type();
                let name = match x509_parser::objects::oid2abbrev(oid, registry) {
                    Ok(short) => short.to_string(),
                    Err(_) => oid.to_id_string(),
                };
                let value = match atv.as_str() {
                    Ok(s) => escape_dn_value(s),
                    // Not a string type: RFC 2253 writes the DER value as #hex.
                    Err(_) => format!("#{}", hex(atv.attr_value().data)),
                };
                format!("{name}={value}")
            })
            .collect();
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    rdns.join(",")
}

fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Standard base64 with padding (what Istio's `verifyCertificateSpki` values are).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A `verifyCertificateHash` entry normalized for comparison: colons dropped,
/// lowercase (Envoy accepts both `AB:CD:...` and `abcd...`).
pub fn normalize_hash(h: &str) -> String {
    h.chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The `x-forwarded-client-cert` value Istio's gateways set (Envoy's `SANITIZE_SET` with
/// subject, URI and DNS details): `By=` for each URI SAN of the gateway's own
/// certificate, `Hash=`, `Subject="..."`, `URI=` (empty when the client has none) and
/// one `DNS=` per DNS SAN.
pub fn xfcc(local_uri_sans: &[String], peer: &CertInfo) -> String {
    let mut parts: Vec<String> = local_uri_sans.iter().map(|u| format!("By={u}")).collect();
    parts.push(format!("Hash={}", peer.sha256));
    parts.push(format!("Subject=\"{}\"", peer.subject.replace('"', "\\\"")));
    if peer.uri_sans.is_empty() {
        parts.push("URI=".to_string());
    } else {
        parts.extend(peer.uri_sans.iter().map(|u| format!("URI={u}")));
    }
    parts.extend(peer.dns_sans.iter().map(|d| format!("DNS={d}")));
    parts.join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn hashes_compare_without_colons_or_case() {
        assert_eq!(normalize_hash("AB:cd:0F"), "abcd0f");
    }

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(escape_dn_value("a,b"), "a\\,b");
        assert_eq!(escape_dn_value("#x "), "\\#x\\ ");
        assert_eq!(escape_dn_value("plain"), "plain");
    }

    #[test]
    fn certificate_facts() {
        let mut params =
            rcgen::CertificateParams::new(vec!["client.example.com".to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test Client");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Inc");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/default/sa/client"
                .try_into()
                .expect("uri"),
        ));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let der = cert.der().clone();
        let info = inspect(&der).expect("inspect");
        assert_eq!(info.subject, "O=Acme\\, Inc,CN=Test Client");
        assert_eq!(info.dns_sans, vec!["client.example.com"]);
        assert_eq!(
            info.uri_sans,
            vec!["spiffe://cluster.local/ns/default/sa/client"]
        );
        assert_eq!(info.sha256, hex(&Sha256::digest(der.as_ref())));
        assert!(info.not_after > info.not_before);
        let header = xfcc(&[], &info);
        assert_eq!(
            header,
            format!(
                "Hash={};Subject=\"O=Acme\\, Inc,CN=Test Client\";URI=spiffe://cluster.local/ns/default/sa/client;DNS=client.example.com",
                info.sha256
            )
        );
        assert!(inspect(&CertificateDer::from(vec![1, 2, 3])).is_err());
    }
}
