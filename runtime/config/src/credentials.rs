//! The credential pass: once every document is parsed and valid, fills the certificates,
//! keys, CA bundles and CRLs of Gateway servers ([`ServerTls`]) and DestinationRule TLS
//! settings ([`ClientTls`]) from the Secrets they name (`credentialName`: in the
//! resource's own namespace, else in the gateway workload's, [`WorkloadNamespace`]) and
//! the files they name (read now, relative paths from the YAML file's directory). A
//! missing Secret, key or file is an error on the field that named it. The loader
//! (`load::assemble`) runs it and turns the issues into errors with file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::{
    self, ClientTls, ClientTlsMode, Config, KeyPair, Pem, Secret, ServerTls, ServerTlsMode,
};
use crate::raw;
use crate::validate::Report;
use crate::validate::destination_rule::port_tls_settings;
use crate::yaml::FieldPath;

/// Keys Istio reads from a credential Secret: the Kubernetes TLS names first, then the
/// generic ones. The certificate and key come as a pair.
const CERT_KEYS: [(&str, &str); 2] = [("tls.crt", "tls.key"), ("cert", "key")];
const CA_KEYS: [&str; 2] = ["ca.crt", "cacert"];
const CRL_KEYS: [&str; 2] = ["ca.crl", "crl"];
/// The suffix of the Secret that holds the CA when the credential Secret does not.
const CA_SUFFIX: &str = "-cacert";

/// The namespace of the gateway workload, wasmgate itself (`--workload-namespace`,
/// default `istio-system`): Istio's gateways read `credentialName` Secrets from their own
/// namespace, so Secrets are looked for there after the resource's own namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadNamespace(pub String);

impl Default for WorkloadNamespace {
    fn default() -> Self {
        WorkloadNamespace("istio-system".into())
    }
}

impl WorkloadNamespace {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Resolves every credential in `cfg`, Secrets looked for in each resource's namespace,
/// then in `workload`'s; returns each resource's issues (only resources that have some),
/// in Gateway then DestinationRule order.
pub(crate) fn resolve(
    cfg: &mut Config,
    workload: &WorkloadNamespace,
) -> Vec<(model::Meta, Report)> {
    let Config {
        gateways,
        destination_rules,
        secrets,
        ..
    } = cfg;
    let by_name: BTreeMap<(&str, &str), &Secret> = secrets
        .iter()
        .map(|s| ((s.meta.id.namespace.as_str(), s.meta.id.name.as_str()), s))
        .collect();
    let mut out = Vec::new();
    for g in gateways.iter_mut() {
        let mut r = Report::default();
        let cx = Context::new(&by_name, &g.meta, workload.as_str());
        let servers = FieldPath::root("spec").key("servers");
        for server in &mut g.servers {
            let (Some(tls), Some(written)) = (
                server.tls.as_mut(),
                g.spec
                    .servers
                    .get(server.index)
                    .and_then(|s| s.tls.as_ref()),
            ) else {
                continue;
            };
            cx.server(
                written,
                tls,
                &servers.index(server.index).key("tls"),
                &mut r,
            );
        }
        if !r.errors.is_empty() || !r.warnings.is_empty() {
            out.push((g.meta.clone(), r));
        }
    }
    for dr in destination_rules.iter_mut() {
        let mut r = Report::default();
        let cx = Context::new(&by_name, &dr.meta, workload.as_str());
        let spec = FieldPath::root("spec");
        if let Some(tp) = &dr.spec.traffic_policy {
            cx.policy(
                tp,
                &spec.key("trafficPolicy"),
                &mut dr.tls,
                &mut dr.port_tls,
                &mut r,
            );
        }
        for (i, written) in dr.spec.subsets.iter().enumerate() {
            let (Some(tp), Some(subset)) = (&written.traffic_policy, dr.subsets.get_mut(i)) else {
                continue;
            };
            cx.policy(
                tp,
                &spec.key("subsets").index(i).key("trafficPolicy"),
                &mut subset.tls,
                &mut subset.port_tls,
                &mut r,
            );
        }
        if !r.errors.is_empty() || !r.warnings.is_empty() {
            out.push((dr.meta.clone(), r));
        }
    }
    out
}

/// Where one resource looks for its credentials.
struct Context<'a> {
    secrets: &'a BTreeMap<(&'a str, &'a str), &'a Secret>,
    /// The resource's namespace: looked in first.
    namespace: &'a str,
    /// The gateway workload's namespace: looked in next.
    workload: &'a str,
    /// Relative file paths start here: the directory of the resource's YAML file.
    dir: PathBuf,
}

/// Where a CA was found, or why not.
enum CaLookup<'a> {
    Found(Pem, &'a Secret),
    /// `NAME-cacert` exists but has no CA key.
    CacertWithoutKey(&'a Secret),
    /// Neither the Secret nor a `NAME-cacert` Secret has one.
    Missing,
}

impl<'a> Context<'a> {
    fn new(
        secrets: &'a BTreeMap<(&'a str, &'a str), &'a Secret>,
        meta: &'a model::Meta,
        workload: &'a str,
    ) -> Self {
        Context {
            secrets,
            namespace: &meta.id.namespace,
            workload,
            dir: meta
                .file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        }
    }

    fn get(&self, namespace: &str, name: &str) -> Option<&'a Secret> {
        self.secrets.get(&(namespace, name)).copied()
    }

    /// The Secret a `credentialName` names, as Istio reads it (`kubernetes://` prefix
    /// allowed): `name` in the resource's namespace, else in the gateway workload's;
    /// `namespace/name` in that namespace, which must be one of the two (Istio's
    /// gateways are refused any other). `Err` says why there is none.
    fn lookup(&self, written: &str) -> Result<&'a Secret, String> {
        let name = written.strip_prefix("kubernetes://").unwrap_or(written);
        if let Some((ns, name)) = name.split_once('/') {
            if ns != self.namespace && ns != self.workload {
                return Err(format!(
                    "Secret {ns}/{name} is out of reach: a gateway reads credentials only from the resource's namespace ({}) and its own ({}, --workload-namespace)",
                    self.namespace, self.workload
                ));
            }
            return self
                .get(ns, name)
                .ok_or_else(|| format!("Secret {ns}/{name} not found"));
        }
        self.get(self.namespace, name)
            .or_else(|| self.get(self.workload, name))
            .ok_or_else(|| {
                if self.namespace == self.workload {
                    format!("Secret {}/{name} not found", self.namespace)
                } else {
                    format!(
                        "Secret {}/{name} not found, nor {}/{name} (the gateway workload's namespace)",
                        self.namespace, self.workload
                    )
                }
            })
    }

    /// The Secret a `credentialName` names; an error at `field` when there is none.
    fn secret(&self, name: &str, field: &FieldPath, r: &mut Report) -> Option<&'a Secret> {
        match self.lookup(name) {
            Ok(s) => Some(s),
            Err(why) => {
                r.err(field, why);
                None
            }
        }
    }

    fn pem(secret: &Secret, key: &str, field: &FieldPath) -> Option<Pem> {
        secret.get(key).map(|v| Pem {
            bytes: v.clone(),
            origin: format!("{} key {key}", secret.meta.id),
            field: field.to_string(),
        })
    }

    fn first_of(secret: &Secret, keys: &[&str], field: &FieldPath) -> Option<Pem> {
        keys.iter().find_map(|k| Self::pem(secret, k, field))
    }

    /// The certificate and key of a credential Secret: `tls.crt`/`tls.key`, else
    /// `cert`/`key`.
    fn key_pair(secret: &Secret, field: &FieldPath, r: &mut Report) -> Option<KeyPair> {
        let id = &secret.meta.id;
        let Some((cert_key, key_key)) = CERT_KEYS.iter().find(|(c, _)| secret.get(c).is_some())
        else {
            r.err(
                field,
                format!(
                    "Secret {}/{} has no tls.crt (or cert) key",
                    id.namespace, id.name
                ),
            );
            return None;
        };
        let cert = Self::pem(secret, cert_key, field)?;
        let Some(key) = Self::pem(secret, key_key, field) else {
            r.err(
                field,
                format!(
                    "Secret {}/{} has {cert_key} but no {key_key}",
                    id.namespace, id.name
                ),
            );
            return None;
        };
        Some(KeyPair { cert, key })
    }

    /// The CA of credential Secret `home`: its `ca.crt` (or `cacert`), else the same key
    /// of the Secret `NAME-cacert`.
    fn ca(&self, home: &'a Secret, field: &FieldPath) -> CaLookup<'a> {
        if let Some(pem) = Self::first_of(home, &CA_KEYS, field) {
            return CaLookup::Found(pem, home);
        }
        // Beside the credential Secret, wherever that was found.
        let id = &home.meta.id;
        match self.get(&id.namespace, &format!("{}{CA_SUFFIX}", id.name)) {
            None => CaLookup::Missing,
            Some(s) => match Self::first_of(s, &CA_KEYS, field) {
                Some(pem) => CaLookup::Found(pem, s),
                None => CaLookup::CacertWithoutKey(s),
            },
        }
    }

    fn crl(secret: &Secret, field: &FieldPath) -> Option<Pem> {
        Self::first_of(secret, &CRL_KEYS, field)
    }

    fn no_ca_key(secret: &Secret) -> String {
        format!(
            "Secret {}/{} has no ca.crt (or cacert) key",
            secret.meta.id.namespace, secret.meta.id.name
        )
    }

    fn no_ca_anywhere(home: &Secret) -> String {
        let (ns, name) = (&home.meta.id.namespace, &home.meta.id.name);
        format!("Secret {ns}/{name} has no ca.crt and there is no Secret {ns}/{name}{CA_SUFFIX}")
    }

    /// Reads a file named by `field`; an error naming the path when it cannot.
    fn file(&self, path: &str, field: &FieldPath, r: &mut Report) -> Option<Pem> {
        if path.is_empty() {
            // Validation has reported the missing path already.
            return None;
        }
        let full = self.dir.join(path);
        match std::fs::read(&full) {
            Ok(bytes) => Some(Pem {
                bytes: bytes.into(),
                origin: format!("file {}", full.display()),
                field: field.to_string(),
            }),
            Err(e) => {
                r.err(field, format!("cannot read {}: {e}", full.display()));
                None
            }
        }
    }

    fn file_pair(
        &self,
        cert: (&str, FieldPath),
        key: (&str, FieldPath),
        r: &mut Report,
    ) -> Option<KeyPair> {
        let cert = self.file(cert.0, &cert.1, r);
        let key = self.file(key.0, &key.1, r);
        Some(KeyPair {
            cert: cert?,
            key: key?,
        })
    }

    /// A Gateway server's certificates and, for the mutual modes, its client CA and CRL.
    fn server(
        &self,
        t: &raw::ServerTLSSettings,
        out: &mut ServerTls,
        p: &FieldPath,
        r: &mut Report,
    ) {
        let mode_name = match out.mode {
            ServerTlsMode::Passthrough => return,
            ServerTlsMode::Simple => "SIMPLE",
            ServerTlsMode::Mutual => "MUTUAL",
            ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
        };
        let mutual = out.mode != ServerTlsMode::Simple;
        // The Secret the client CA defaults to; `Err` when it is missing (reported).
        let mut ca_home: Option<Result<(&'a Secret, FieldPath), ()>> = None;
        let credentials: Vec<(&str, FieldPath)> = if !t.credential_name.is_empty() {
            vec![(t.credential_name.as_str(), p.key("credentialName"))]
        } else {
            t.credential_names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), p.key("credentialNames").index(i)))
                .collect()
        };
        if !credentials.is_empty() {
            for (i, (name, field)) in credentials.iter().enumerate() {
                let secret = self.secret(name, field, r);
                if let Some(s) = secret
                    && let Some(pair) = Self::key_pair(s, field, r)
                {
                    out.certificates.push(pair);
                }
                if i == 0 {
                    ca_home = Some(secret.map(|s| (s, field.clone())).ok_or(()));
                }
            }
        } else if !t.tls_certificates.is_empty() {
            for (i, c) in t.tls_certificates.iter().enumerate() {
                let cp = p.key("tlsCertificates").index(i);
                if let Some(pair) = self.file_pair(
                    (&c.server_certificate, cp.key("serverCertificate")),
                    (&c.private_key, cp.key("privateKey")),
                    r,
                ) {
                    out.certificates.push(pair);
                }
            }
        } else if let Some(pair) = self.file_pair(
            (&t.server_certificate, p.key("serverCertificate")),
            (&t.private_key, p.key("privateKey")),
            r,
        ) {
            out.certificates.push(pair);
        }
        if !mutual {
            return;
        }
        if !t.ca_cert_credential_name.is_empty() {
            let field = p.key("caCertCredentialName");
            if let Some(s) = self.secret(&t.ca_cert_credential_name, &field, r) {
                match Self::first_of(s, &CA_KEYS, &field) {
                    Some(ca) => {
                        out.client_ca = Some(ca);
                        out.crl = Self::crl(s, &field);
                    }
                    None => r.err(&field, Self::no_ca_key(s)),
                }
            }
        } else if let Some(home) = ca_home {
            // A missing credential Secret is reported already.
            if let Ok((s, field)) = home {
                match self.ca(s, &field) {
                    CaLookup::Found(ca, from) => {
                        out.client_ca = Some(ca);
                        out.crl = Self::crl(from, &field);
                    }
                    CaLookup::CacertWithoutKey(c) => r.err(&field, Self::no_ca_key(c)),
                    CaLookup::Missing => r.err(
                        &field,
                        format!(
                            "{mode_name} TLS requires a client CA: {}",
                            Self::no_ca_anywhere(s)
                        ),
                    ),
                }
            }
        } else if t.ca_certificates.is_empty() {
            r.err(
                &p.key("caCertificates"),
                format!("{mode_name} TLS requires a client CA bundle"),
            );
        } else {
            out.client_ca = self.file(&t.ca_certificates, &p.key("caCertificates"), r);
        }
        if out.crl.is_none() && !t.ca_crl.is_empty() {
            out.crl = self.file(&t.ca_crl, &p.key("caCrl"), r);
        }
    }

    /// One traffic policy's `tls` and port-level `tls` (the model holds exactly the
    /// settings [`port_tls_settings`] selects).
    fn policy(
        &self,
        tp: &raw::TrafficPolicy,
        p: &FieldPath,
        tls: &mut Option<ClientTls>,
        port_tls: &mut BTreeMap<u16, ClientTls>,
        r: &mut Report,
    ) {
        if let (Some(written), Some(out)) = (&tp.tls, tls.as_mut()) {
            self.client(written, out, &p.key("tls"), r);
        }
        for (i, port, written) in port_tls_settings(tp) {
            if let Some(out) = port_tls.get_mut(&port) {
                let field = p.key("portLevelSettings").index(i).key("tls");
                self.client(written, out, &field, r);
            }
        }
    }

    /// A DestinationRule TLS setting's client certificate, CA and CRL.
    fn client(
        &self,
        t: &raw::ClientTLSSettings,
        out: &mut ClientTls,
        p: &FieldPath,
        r: &mut Report,
    ) {
        let mode_name = match out.mode {
            ClientTlsMode::Disable | ClientTlsMode::IstioMutual => return,
            ClientTlsMode::Simple => "SIMPLE",
            ClientTlsMode::Mutual => "MUTUAL",
        };
        let mutual = out.mode == ClientTlsMode::Mutual;
        if !t.credential_name.is_empty() {
            let field = p.key("credentialName");
            let Some(s) = self.secret(&t.credential_name, &field, r) else {
                return;
            };
            if mutual {
                out.client_cert = Self::key_pair(s, &field, r);
            }
            if out.insecure_skip_verify {
                return;
            }
            match self.ca(s, &field) {
                CaLookup::Found(ca, from) => {
                    out.ca = Some(ca);
                    out.crl = Self::crl(from, &field);
                }
                CaLookup::CacertWithoutKey(c) => r.err(&field, Self::no_ca_key(c)),
                CaLookup::Missing => r.err(
                    &field,
                    format!(
                        "{mode_name} TLS with credentialName needs a CA to verify the server: {} (or set insecureSkipVerify)",
                        Self::no_ca_anywhere(s)
                    ),
                ),
            }
            return;
        }
        if mutual {
            out.client_cert = self.file_pair(
                (&t.client_certificate, p.key("clientCertificate")),
                (&t.private_key, p.key("privateKey")),
                r,
            );
        }
        if !t.ca_certificates.is_empty() {
            out.ca = self.file(&t.ca_certificates, &p.key("caCertificates"), r);
        }
        if !t.ca_crl.is_empty() {
            out.crl = self.file(&t.ca_crl, &p.key("caCrl"), r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConfigError, Errors};

    fn try_load(docs: &[&str]) -> Result<Config, Errors> {
        crate::load_sources(&[(PathBuf::from("tls.yaml"), docs.join("---\n"))])
    }

    fn load(docs: &[&str]) -> Config {
        try_load(docs).unwrap_or_else(|e| panic!("{e}"))
    }

    fn errors(docs: &[&str]) -> Vec<String> {
        match try_load(docs) {
            Ok(_) => panic!("should fail:\n{}", docs.join("---\n")),
            Err(Errors(e)) => e.iter().map(ConfigError::to_string).collect(),
        }
    }

    /// A Secret in `edge` with `stringData` entries.
    fn secret(name: &str, entries: &[(&str, &str)]) -> String {
        let data: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("  {k}: {v:?}\n"))
            .collect();
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: edge}}\nstringData:\n{}",
            data.concat()
        )
    }

    /// A Gateway `edge/gw` with one HTTPS server on 443 and these `tls` lines.
    fn gateway(tls: &[&str]) -> String {
        let mut out = String::from(
            "apiVersion: networking.istio.io/v1\n\
             kind: Gateway\n\
             metadata: {name: gw, namespace: edge}\n\
             spec:\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    \
             hosts: [web.example.com]\n    tls:\n",
        );
        for line in tls {
            out.push_str(&format!("      {line}\n"));
        }
        out
    }

    fn server_tls(c: &Config) -> &ServerTls {
        match &c.gateways[0].servers[0].tls {
            Some(t) => t,
            None => panic!("no tls: {:?}", c.gateways[0].servers[0]),
        }
    }

    fn text(pem: &Pem) -> &str {
        std::str::from_utf8(pem.bytes.as_bytes()).unwrap_or("<binary>")
    }

    #[test]
    fn credential_name_with_kubernetes_tls_keys() {
        let c = load(&[
            &secret(
                "web",
                &[("tls.crt", "CERT"), ("tls.key", "KEY"), ("cert", "other")],
            ),
            &gateway(&["mode: SIMPLE", "credentialName: kubernetes://web"]),
        ]);
        let t = server_tls(&c);
        assert_eq!(t.mode, ServerTlsMode::Simple);
        assert_eq!(t.certificates.len(), 1);
        let pair = &t.certificates[0];
        assert_eq!((text(&pair.cert), text(&pair.key)), ("CERT", "KEY"));
        assert_eq!(pair.cert.origin, "Secret edge/web key tls.crt");
        assert_eq!(pair.key.origin, "Secret edge/web key tls.key");
        assert_eq!(pair.cert.field, "spec.servers[0].tls.credentialName");
        assert_eq!((&t.client_ca, &t.crl), (&None, &None));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn credential_name_with_generic_keys() {
        let c = load(&[
            &secret("web", &[("cert", "CERT"), ("key", "KEY"), ("cacert", "CA")]),
            &gateway(&["mode: SIMPLE", "credentialName: web"]),
        ]);
        let t = server_tls(&c);
        let pair = &t.certificates[0];
        assert_eq!((text(&pair.cert), text(&pair.key)), ("CERT", "KEY"));
        assert_eq!(pair.key.origin, "Secret edge/web key key");
        assert_eq!(t.client_ca, None, "SIMPLE has no client CA");
    }

    #[test]
    fn mutual_with_ca_in_the_same_secret() {
        let c = load(&[
            &secret(
                "web",
                &[
                    ("tls.crt", "C"),
                    ("tls.key", "K"),
                    ("ca.crt", "CA"),
                    ("ca.crl", "CRL"),
                ],
            ),
            &gateway(&["mode: MUTUAL", "credentialName: web"]),
        ]);
        let t = server_tls(&c);
        assert_eq!(t.mode, ServerTlsMode::Mutual);
        let ca = t.client_ca.as_ref().map(text);
        assert_eq!(ca, Some("CA"));
        assert_eq!(t.crl.as_ref().map(text), Some("CRL"));
        assert_eq!(
            t.client_ca.as_ref().map(|p| p.origin.as_str()),
            Some("Secret edge/web key ca.crt")
        );
    }

    #[test]
    fn mutual_with_a_cacert_secret() {
        let c = load(&[
            &secret("web", &[("tls.crt", "C"), ("tls.key", "K")]),
            &secret("web-cacert", &[("cacert", "CA"), ("crl", "CRL")]),
            &gateway(&["mode: OPTIONAL_MUTUAL", "credentialName: web"]),
        ]);
        let t = server_tls(&c);
        assert_eq!(t.mode, ServerTlsMode::OptionalMutual);
        let ca = t
            .client_ca
            .as_ref()
            .map(|p| (text(p), p.origin.as_str(), p.field.as_str()));
        assert_eq!(
            ca,
            Some((
                "CA",
                "Secret edge/web-cacert key cacert",
                "spec.servers[0].tls.credentialName"
            ))
        );
        assert_eq!(t.crl.as_ref().map(text), Some("CRL"));
    }

    #[test]
    fn ca_cert_credential_name_wins() {
        let c = load(&[
            &secret(
                "web",
                &[("tls.crt", "C"), ("tls.key", "K"), ("ca.crt", "OWN")],
            ),
            &secret("clients", &[("ca.crt", "CLIENTS")]),
            &gateway(&[
                "mode: MUTUAL",
                "credentialName: web",
                "caCertCredentialName: clients",
            ]),
        ]);
        let t = server_tls(&c);
        let ca = t.client_ca.as_ref().map(|p| (text(p), p.field.as_str()));
        assert_eq!(
            ca,
            Some(("CLIENTS", "spec.servers[0].tls.caCertCredentialName"))
        );
        assert_eq!(t.crl, None);
    }

    #[test]
    fn two_credential_names() {
        let c = load(&[
            &secret(
                "rsa",
                &[("tls.crt", "RSA"), ("tls.key", "K1"), ("ca.crt", "CA")],
            ),
            &secret("ecdsa", &[("tls.crt", "EC"), ("tls.key", "K2")]),
            &gateway(&["mode: MUTUAL", "credentialNames: [rsa, ecdsa]"]),
        ]);
        let t = server_tls(&c);
        let certs: Vec<(&str, &str)> = t
            .certificates
            .iter()
            .map(|p| (text(&p.cert), p.cert.field.as_str()))
            .collect();
        assert_eq!(
            certs,
            vec![
                ("RSA", "spec.servers[0].tls.credentialNames[0]"),
                ("EC", "spec.servers[0].tls.credentialNames[1]")
            ]
        );
        assert_eq!(t.client_ca.as_ref().map(text), Some("CA"));
    }

    #[test]
    fn missing_secrets_and_keys_are_errors() {
        assert_eq!(
            errors(&[&gateway(&["mode: SIMPLE", "credentialName: nope"])]),
            vec![
                "tls.yaml:10: Gateway edge/gw: spec.servers[0].tls.credentialName: Secret edge/nope not found, nor istio-system/nope (the gateway workload's namespace)"
            ]
        );
        // The Secret of a third namespace does not count.
        let elsewhere = secret("web", &[("tls.crt", "C"), ("tls.key", "K")])
            .replace("namespace: edge", "namespace: shop");
        assert_eq!(
            errors(&[
                &elsewhere,
                &gateway(&["mode: SIMPLE", "credentialName: web"])
            ]),
            vec![
                "tls.yaml:17: Gateway edge/gw: spec.servers[0].tls.credentialName: Secret edge/web not found, nor istio-system/web (the gateway workload's namespace)"
            ]
        );
        assert_eq!(
            errors(&[
                &elsewhere,
                &gateway(&["mode: SIMPLE", "credentialName: shop/web"])
            ]),
            vec![
                "tls.yaml:17: Gateway edge/gw: spec.servers[0].tls.credentialName: Secret shop/web is out of reach: a gateway reads credentials only from the resource's namespace (edge) and its own (istio-system, --workload-namespace)"
            ]
        );
        assert_eq!(
            errors(&[&gateway(&[
                "mode: SIMPLE",
                "credentialName: kubernetes://istio-system/web"
            ])]),
            vec![
                "tls.yaml:10: Gateway edge/gw: spec.servers[0].tls.credentialName: Secret istio-system/web not found"
            ]
        );
        assert_eq!(
            errors(&[
                &secret("web", &[("tls.cert", "C"), ("tls.key", "K")]),
                &gateway(&["mode: SIMPLE", "credentialName: web"]),
            ]),
            vec![
                "tls.yaml:17: Gateway edge/gw: spec.servers[0].tls.credentialName: Secret edge/web has no tls.crt (or cert) key"
            ]
        );
        assert_eq!(
            errors(&[
                &secret("web", &[("tls.crt", "C"), ("key", "K")]),
                &gateway(&["mode: SIMPLE", "credentialName: web"]),
            ]),
            vec![
                "tls.yaml:17: Gateway edge/gw: spec.servers[0].tls.credentialName: Secret edge/web has tls.crt but no tls.key"
            ]
        );
        assert_eq!(
            errors(&[
                &secret("a", &[("tls.crt", "C"), ("tls.key", "K")]),
                &gateway(&["mode: SIMPLE", "credentialNames:", "- a", "- b"]),
            ]),
            vec![
                "tls.yaml:19: Gateway edge/gw: spec.servers[0].tls.credentialNames[1]: Secret edge/b not found, nor istio-system/b (the gateway workload's namespace)"
            ]
        );
    }

    /// Istio's gateways read Secrets from the workload's namespace: wasmgate looks there
    /// after the Gateway's own, and `namespace/name` picks one of the two.
    #[test]
    fn secrets_of_the_workload_namespace() {
        let in_ns = |ns: &str, name: &str, entries: &[(&str, &str)]| {
            secret(name, entries).replace("namespace: edge", &format!("namespace: {ns}"))
        };
        let pair = [("tls.crt", "SYS"), ("tls.key", "K")];
        // Only in istio-system: found there, CA beside it.
        let c = load(&[
            &in_ns("istio-system", "web", &pair),
            &in_ns("istio-system", "web-cacert", &[("ca.crt", "CA")]),
            &gateway(&["mode: MUTUAL", "credentialName: web"]),
        ]);
        let t = server_tls(&c);
        assert_eq!(
            t.certificates[0].cert.origin,
            "Secret istio-system/web key tls.crt"
        );
        assert_eq!(
            t.client_ca.as_ref().map(|p| p.origin.as_str()),
            Some("Secret istio-system/web-cacert key ca.crt")
        );
        // The Gateway's namespace first.
        let c = load(&[
            &in_ns("istio-system", "web", &pair),
            &secret("web", &[("tls.crt", "EDGE"), ("tls.key", "K")]),
            &gateway(&["mode: SIMPLE", "credentialName: web"]),
        ]);
        assert_eq!(text(&server_tls(&c).certificates[0].cert), "EDGE");
        // `namespace/name` (with or without `kubernetes://`) picks the workload's.
        for written in ["istio-system/web", "kubernetes://istio-system/web"] {
            let c = load(&[
                &in_ns("istio-system", "web", &pair),
                &secret("web", &[("tls.crt", "EDGE"), ("tls.key", "K")]),
                &gateway(&["mode: SIMPLE", &format!("credentialName: {written}")]),
            ]);
            assert_eq!(
                text(&server_tls(&c).certificates[0].cert),
                "SYS",
                "{written}"
            );
        }
        // Another workload namespace.
        let shop = in_ns("shop", "web", &pair);
        let gw = gateway(&["mode: SIMPLE", "credentialName: web"]);
        let options = crate::LoadOptions {
            workload_namespace: WorkloadNamespace("shop".into()),
            ..crate::LoadOptions::default()
        };
        let c = crate::load_sources_with(
            &[(
                PathBuf::from("tls.yaml"),
                [shop.as_str(), &gw].join("---\n"),
            )],
            &options,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text(&server_tls(&c).certificates[0].cert), "SYS");
        // DestinationRules too (Istio: the Secret of the proxy's namespace).
        let c = load(&[
            &in_ns("istio-system", "up", &[("ca.crt", "CA")]),
            &rule(&["tls: {mode: SIMPLE, credentialName: up}"]),
        ]);
        assert_eq!(
            client(&c).ca.as_ref().map(|p| p.origin.as_str()),
            Some("Secret istio-system/up key ca.crt")
        );
    }

    #[test]
    fn mutual_without_a_ca_is_an_error() {
        let pair = [("tls.crt", "C"), ("tls.key", "K")];
        assert_eq!(
            errors(&[
                &secret("foo", &pair),
                &gateway(&["mode: MUTUAL", "credentialName: foo"]),
            ]),
            vec![
                "tls.yaml:17: Gateway edge/gw: spec.servers[0].tls.credentialName: MUTUAL TLS requires a client CA: Secret edge/foo has no ca.crt and there is no Secret edge/foo-cacert"
            ]
        );
        assert_eq!(
            errors(&[
                &secret("foo", &pair),
                &secret("foo-cacert", &[("ca", "CA")]),
                &gateway(&["mode: OPTIONAL_MUTUAL", "credentialName: foo"]),
            ]),
            vec![
                "tls.yaml:23: Gateway edge/gw: spec.servers[0].tls.credentialName: Secret edge/foo-cacert has no ca.crt (or cacert) key"
            ]
        );
        assert_eq!(
            errors(&[
                &secret("foo", &pair),
                &gateway(&[
                    "mode: MUTUAL",
                    "credentialName: foo",
                    "caCertCredentialName: cas"
                ]),
            ]),
            vec![
                "tls.yaml:18: Gateway edge/gw: spec.servers[0].tls.caCertCredentialName: Secret edge/cas not found, nor istio-system/cas (the gateway workload's namespace)"
            ]
        );
        // SIMPLE needs no CA.
        load(&[
            &secret("foo", &pair),
            &gateway(&["mode: SIMPLE", "credentialName: foo"]),
        ]);
    }

    /// A directory of its own under the system's temporary directory.
    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wasmgate-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dir
    }

    fn write(dir: &Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path.display().to_string()
    }

    #[test]
    fn files_are_read_at_load() {
        let dir = temp_dir("files");
        let cert = write(&dir, "server.pem", "SERVER");
        let key = write(&dir, "server.key", "KEY");
        let ca = write(&dir, "ca.pem", "CA");
        let crl = write(&dir, "ca.crl", "CRL");
        let c = load(&[&gateway(&[
            "mode: MUTUAL",
            &format!("serverCertificate: {cert}"),
            &format!("privateKey: {key}"),
            &format!("caCertificates: {ca}"),
            &format!("caCrl: {crl}"),
        ])]);
        let t = server_tls(&c);
        let pair = &t.certificates[0];
        assert_eq!((text(&pair.cert), text(&pair.key)), ("SERVER", "KEY"));
        assert_eq!(pair.cert.origin, format!("file {cert}"));
        assert_eq!(pair.key.field, "spec.servers[0].tls.privateKey");
        assert_eq!(t.client_ca.as_ref().map(text), Some("CA"));
        assert_eq!(
            t.crl.as_ref().map(|p| (text(p), p.field.as_str())),
            Some(("CRL", "spec.servers[0].tls.caCrl"))
        );
        let two = load(&[&gateway(&[
            "mode: SIMPLE",
            "tlsCertificates:",
            &format!("- {{serverCertificate: {cert}, privateKey: {key}}}"),
            &format!("- {{serverCertificate: {ca}, privateKey: {key}}}"),
        ])]);
        let t = server_tls(&two);
        assert_eq!(t.certificates.len(), 2);
        assert_eq!(
            t.certificates[1].cert.field,
            "spec.servers[0].tls.tlsCertificates[1].serverCertificate"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn relative_paths_start_at_the_yaml_file() {
        let dir = temp_dir("relative");
        write(&dir, "cert.pem", "C");
        write(&dir, "key.pem", "K");
        let yaml = gateway(&[
            "mode: SIMPLE",
            "serverCertificate: cert.pem",
            "privateKey: key.pem",
        ]);
        let file = dir.join("gw.yaml");
        let c = crate::load_sources(&[(file, yaml)]).unwrap_or_else(|e| panic!("{e}"));
        let pair = &server_tls(&c).certificates[0];
        assert_eq!(
            pair.cert.origin,
            format!("file {}", dir.join("cert.pem").display())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let e = errors(&[&gateway(&[
            "mode: SIMPLE",
            "serverCertificate: /nonexistent/wasmgate/server.pem",
            "privateKey: /nonexistent/wasmgate/server.key",
        ])]);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with(
                "tls.yaml:10: Gateway edge/gw: spec.servers[0].tls.serverCertificate: cannot read /nonexistent/wasmgate/server.pem: "
            ),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(
                "tls.yaml:11: Gateway edge/gw: spec.servers[0].tls.privateKey: cannot read /nonexistent/wasmgate/server.key: "
            ),
            "{e:?}"
        );
    }

    #[test]
    fn debug_prints_no_key_material() {
        let c = load(&[
            &secret(
                "web",
                &[("tls.crt", "CERT-BYTES"), ("tls.key", "KEY-BYTES")],
            ),
            &gateway(&["mode: SIMPLE", "credentialName: web"]),
        ]);
        let shown = format!("{c:?}");
        assert!(!shown.contains("BYTES"), "{shown}");
        assert!(shown.contains("<9 bytes redacted>"), "{shown}");
    }

    /// A DestinationRule `edge/dr` for `api.example.com` with this `trafficPolicy`.
    fn rule(policy: &[&str]) -> String {
        let mut out = String::from(
            "apiVersion: networking.istio.io/v1\n\
             kind: DestinationRule\n\
             metadata: {name: dr, namespace: edge}\n\
             spec:\n  host: api.example.com\n  trafficPolicy:\n",
        );
        for line in policy {
            out.push_str(&format!("    {line}\n"));
        }
        out
    }

    fn client(c: &Config) -> &ClientTls {
        match &c.destination_rules[0].tls {
            Some(t) => t,
            None => panic!("no tls: {:?}", c.destination_rules[0]),
        }
    }

    #[test]
    fn client_credential_name() {
        let c = load(&[
            &secret(
                "up",
                &[
                    ("tls.crt", "C"),
                    ("tls.key", "K"),
                    ("ca.crt", "CA"),
                    ("ca.crl", "R"),
                ],
            ),
            &rule(&["tls: {mode: MUTUAL, credentialName: up, sni: api.internal}"]),
        ]);
        let t = client(&c);
        assert_eq!(t.mode, ClientTlsMode::Mutual);
        let pair = t
            .client_cert
            .as_ref()
            .map(|p| (text(&p.cert), text(&p.key)));
        assert_eq!(pair, Some(("C", "K")));
        assert_eq!(
            t.ca.as_ref().map(|p| (text(p), p.field.as_str())),
            Some(("CA", "spec.trafficPolicy.tls.credentialName"))
        );
        assert_eq!(t.crl.as_ref().map(text), Some("R"));
        assert_eq!(t.sni.as_deref(), Some("api.internal"));
        assert!(!t.insecure_skip_verify);
        // SIMPLE: only the CA, here from NAME-cacert.
        let c = load(&[
            &secret("up", &[("x", "y")]),
            &secret("up-cacert", &[("ca.crt", "CA2")]),
            &rule(&["tls: {mode: SIMPLE, credentialName: up}"]),
        ]);
        let t = client(&c);
        assert_eq!(t.client_cert, None);
        assert_eq!(t.ca.as_ref().map(text), Some("CA2"));
    }

    #[test]
    fn client_errors() {
        assert_eq!(
            errors(&[&rule(&["tls: {mode: SIMPLE, credentialName: up}"])]),
            vec![
                "tls.yaml:7: DestinationRule edge/dr: spec.trafficPolicy.tls.credentialName: Secret edge/up not found, nor istio-system/up (the gateway workload's namespace)"
            ]
        );
        assert_eq!(
            errors(&[
                &secret("up", &[("tls.crt", "C"), ("tls.key", "K")]),
                &rule(&["tls:", "  mode: SIMPLE", "  credentialName: up"]),
            ]),
            vec![
                "tls.yaml:16: DestinationRule edge/dr: spec.trafficPolicy.tls.credentialName: SIMPLE TLS with credentialName needs a CA to verify the server: Secret edge/up has no ca.crt and there is no Secret edge/up-cacert (or set insecureSkipVerify)"
            ]
        );
        assert_eq!(
            errors(&[
                &secret("up", &[("ca.crt", "CA")]),
                &rule(&["tls:", "  mode: MUTUAL", "  credentialName: up"]),
            ]),
            vec![
                "tls.yaml:15: DestinationRule edge/dr: spec.trafficPolicy.tls.credentialName: Secret edge/up has no tls.crt (or cert) key"
            ]
        );
        let e = errors(&[&rule(&[
            "portLevelSettings:",
            "- port: {number: 443}",
            "  tls:",
            "    mode: MUTUAL",
            "    clientCertificate: /nonexistent/wasmgate/c.pem",
            "    privateKey: /nonexistent/wasmgate/k.pem",
        ])]);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("tls.yaml:11: DestinationRule edge/dr: spec.trafficPolicy.portLevelSettings[0].tls.clientCertificate: cannot read /nonexistent/wasmgate/c.pem"),
            "{e:?}"
        );
        // insecureSkipVerify: no CA needed.
        let c = load(&[
            &secret("up", &[("tls.crt", "C"), ("tls.key", "K")]),
            &rule(&["tls: {mode: MUTUAL, credentialName: up, insecureSkipVerify: true}"]),
        ]);
        assert!(client(&c).insecure_skip_verify);
        assert_eq!(client(&c).ca, None);
    }

    #[test]
    fn client_files() {
        let dir = temp_dir("client-files");
        let cert = write(&dir, "c.pem", "C");
        let key = write(&dir, "k.pem", "K");
        let ca = write(&dir, "ca.pem", "CA");
        let c = load(&[&rule(&[&format!(
            "tls: {{mode: MUTUAL, clientCertificate: {cert}, privateKey: {key}, caCertificates: {ca}, subjectAltNames: [api.example.com]}}"
        )])]);
        let t = client(&c);
        assert_eq!(
            t.client_cert
                .as_ref()
                .map(|p| (text(&p.cert), p.key.field.as_str())),
            Some(("C", "spec.trafficPolicy.tls.privateKey"))
        );
        assert_eq!(t.ca.as_ref().map(text), Some("CA"));
        assert_eq!(t.subject_alt_names, vec!["api.example.com"]);
        // SIMPLE without a CA: the platform's roots.
        let c = load(&[&rule(&["tls: {mode: SIMPLE}"])]);
        assert_eq!(client(&c).ca, None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn istio_mutual_is_kept_with_a_warning() {
        let c = load(&[&rule(&["tls: {mode: ISTIO_MUTUAL}"])]);
        assert_eq!(client(&c).mode, ClientTlsMode::IstioMutual);
        // (The analyzers' IST0174 about the host no ServiceEntry declares aside.)
        let w: Vec<String> = c
            .warnings
            .iter()
            .filter(|w| !w.message.starts_with("IST0"))
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            w,
            vec![
                "tls.yaml:7: DestinationRule edge/dr: spec.trafficPolicy.tls.mode: ISTIO_MUTUAL needs Istio's mesh certificates; requests to this destination will fail with 503"
            ]
        );
    }

    #[test]
    fn the_shared_istio_analyzer_examples() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/istio/validation");
        let file = dir.join("analyzer-gateway-secrets-validation.yaml");
        let Ok(text) = std::fs::read_to_string(&file) else {
            // shared/ sits beside the repository; without it there is nothing to check.
            return;
        };
        // The Gateways are in `default`, their Secrets in `istio-system`, the gateway
        // workload's namespace, where Istio looks and wasmgate looks next. There the key
        // names decide: `cert`/`key` is fine, a lone `tls.cert` is not (the certificates
        // themselves are checked by the runtime: `wasmgate validate`).
        let e = match crate::load_sources(&[(PathBuf::from("a.yaml"), text)]) {
            Ok(_) => panic!("should fail"),
            Err(Errors(e)) => e,
        };
        let names: Vec<String> = e
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e.resource.as_ref().map(|r| r.name.as_str()).unwrap_or("?"),
                    e.message
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                "defaultgateway-missing-keys Secret istio-system/missing-key has no tls.crt (or cert) key",
                "defaultgateway-invalid-cert Secret istio-system/invalid-cert has no tls.crt (or cert) key",
            ]
        );
        assert!(
            e.iter()
                .all(|e| e.field.as_deref() == Some("spec.servers[0].tls.credentialName"))
        );
        let dr = dir.join("analyzer-destinationrule-simple-port-credentialname.yaml");
        let text = std::fs::read_to_string(&dr).unwrap_or_default();
        let e = match crate::load_sources(&[(PathBuf::from("dr.yaml"), text)]) {
            Ok(_) => panic!("should fail"),
            Err(Errors(e)) => e,
        };
        assert_eq!(
            e.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec![
                "dr.yaml:13: DestinationRule default/db-tls: spec.trafficPolicy.portLevelSettings[0].tls.credentialName: Secret default/db-credential not found, nor istio-system/db-credential (the gateway workload's namespace)"
            ]
        );
    }
}
