//! TLS pieces of the integration tests: a CA made in the test (rcgen) that issues
//! server and client certificates, Kubernetes Secret manifests carrying them, HTTPS
//! clients (rustls, HTTP/1.1 or HTTP/2 by ALPN) that present a chosen SNI and Host, and
//! TLS upstreams (real servers with their own certificates).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};

use super::Reply;

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Leaf {
    /// Base64 SHA-256 of the DER SubjectPublicKeyInfo, as Istio's
    /// `verifyCertificateSpki` wants it (computed from the key, not the certificate).
    pub fn spki_sha256(&self) -> String {
        use rcgen::PublicKeyData;
        use sha2::Digest;
        let key = KeyPair::from_pem(&self.key).expect("key pem");
        b64_bytes(&sha2::Sha256::digest(key.subject_public_key_info()))
    }

    /// SHA-256 of the DER certificate as `openssl x509 -fingerprint -sha256` prints it
    /// (uppercase, colons), one of the forms `verifyCertificateHash` takes.
    pub fn cert_sha256(&self) -> String {
        use sha2::Digest;
        let der = certs(&self.cert).remove(0);
        sha2::Sha256::digest(der.as_ref())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// A CA that issues certificates for one test.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("ca key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("ca cert");
        let pem = issuer.pem();
        Ca { issuer, pem }
    }

    /// A server certificate for `names` (DNS names or IPs).
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.issue(names, None, ExtendedKeyUsagePurpose::ServerAuth, None)
    }

    /// A client certificate with common name `cn`, DNS names and an optional URI SAN.
    pub fn client(&self, cn: &str, names: &[&str], uri: Option<&str>) -> Leaf {
        self.issue(names, uri, ExtendedKeyUsagePurpose::ClientAuth, Some(cn))
    }

    /// A server certificate that expired in 2021.
    pub fn expired_server(&self, names: &[&str]) -> Leaf {
        let mut params = params(names, None, ExtendedKeyUsagePurpose::ServerAuth, None);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.sign(params)
    }

    fn issue(
        &self,
        names: &[&str],
        uri: Option<&str>,
        eku: ExtendedKeyUsagePurpose,
        cn: Option<&str>,
    ) -> Leaf {
        self.sign(params(names, uri, eku, cn))
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(c.expect("ca pem")).expect("add root");
        }
        roots
    }

    /// A client config trusting this CA, optionally presenting `identity`, offering `alpn`.
    pub fn client_config(&self, identity: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(self.roots());
        let mut config = match identity {
            Some(leaf) => builder
                .with_client_auth_cert(certs(&leaf.cert), key(&leaf.key))
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

fn params(
    names: &[&str],
    uri: Option<&str>,
    eku: ExtendedKeyUsagePurpose,
    cn: Option<&str>,
) -> CertificateParams {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    if let Some(uri) = uri {
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().expect("uri san")));
    }
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    params.extended_key_usages = vec![eku];
    params
}

pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.expect("cert pem"))
        .collect()
}

pub fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key pem")
}

/// Base64 for Secret `data`.
pub fn b64(text: &str) -> String {
    b64_bytes(text.as_bytes())
}

/// Standard base64 with padding.
pub fn b64_bytes(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A `kubernetes.io/tls` Secret (with `ca.crt` when `ca` is given), base64 `data`.
pub fn secret(name: &str, namespace: &str, leaf: Option<&Leaf>, ca: Option<&str>) -> String {
    let mut data = String::new();
    if let Some(leaf) = leaf {
        data.push_str(&format!(
            "  tls.crt: {}\n  tls.key: {}\n",
            b64(&leaf.cert),
            b64(&leaf.key)
        ));
    }
    if let Some(ca) = ca {
        data.push_str(&format!("  ca.crt: {}\n", b64(ca)));
    }
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\ntype: kubernetes.io/tls\ndata:\n{data}"
    )
}

/// What a TLS client saw.
#[derive(Debug)]
pub struct Seen {
    pub reply: Reply,
    /// The DNS names of the certificate the server presented.
    pub server_names: Vec<String>,
    pub alpn: Option<Vec<u8>>,
}

/// Connect to 127.0.0.1:`port` with TLS (SNI `sni`), then send `GET path` with `Host:
/// host` over HTTP/2 when the server agrees to ALPN h2, else HTTP/1.1.
pub async fn get(
    port: u16,
    config: Arc<ClientConfig>,
    sni: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Seen, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let server_names = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| dns_names(c))
        .unwrap_or_default();
    let h2 = alpn.as_deref() == Some(b"h2");
    let mut req = Request::builder().method("GET").uri(if h2 {
        format!("https://{host}{path}")
    } else {
        path.to_string()
    });
    if !h2 {
        req = req.header("host", host);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("h1 handshake: {e}"))?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Seen {
        reply: Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        },
        server_names,
        alpn,
    })
}

/// The DNS SANs of a DER certificate (a tiny scan, enough for test certificates).
pub fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An upstream serving HTTPS (HTTP/1.1, or HTTP/2 when the client asks by ALPN) with
/// `leaf`, requiring a client certificate from `client_ca` when given. Answers with the
/// same JSON as the plain echo upstream, plus the client certificate's DNS names.
pub struct TlsEcho {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsEcho {
    pub async fn start(name: &str, leaf: &Leaf, client_ca: Option<&Ca>) -> TlsEcho {
        let builder =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions");
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder(Arc::new(ca.roots()))
                    .build()
                    .expect("verifier"),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs(&leaf.cert), key(&leaf.key))
            .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let (name, counter) = (name.to_string(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, name, counter) = (acceptor.clone(), name.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, session) = tls.get_ref();
                    let client_names = session
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| dns_names(c))
                        .unwrap_or_default();
                    let sni = session.server_name().map(str::to_string);
                    let h2 = session.alpn_protocol() == Some(b"h2");
                    let svc = service_fn(move |req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let json = serde_json::json!({
                            "upstream": name,
                            "path": req.uri().path(),
                            "version": format!("{:?}", req.version()),
                            "authority": req.uri().authority().map(|a| a.to_string()),
                            "host": req.headers().get("host").and_then(|h| h.to_str().ok()),
                            "sni": sni,
                            "client_names": client_names,
                        });
                        async move {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                json.to_string(),
                            ))))
                        }
                    });
                    let io = TokioIo::new(tls);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        TlsEcho { addr, hits, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for TlsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}
