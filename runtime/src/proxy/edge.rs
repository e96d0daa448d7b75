//! The request edge: what `serve` checks and changes before a request is routed, so no
//! route, plugin or upstream ever sees an ambiguous request. Requests whose target host
//! is ambiguous (two `Host` lines, a `Host` that is no authority or that disagrees with
//! the absolute-form target) or whose framing hyper hid (`Content-Length` with
//! `Transfer-Encoding`, see `framing.rs`) get 400 with flag `DPE`; the path is
//! normalized per `--path-normalization` (`normalize.rs`); and only the upgrade
//! protocols the gateway allows (`websocket`, plus `--allow-upgrade`) are tunnelled.

use std::str::FromStr;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri, Version, header};

use super::error::ProxyError;
use super::framing::FramingLog;
use super::normalize::PathNormalization;

/// How the edge treats requests; the same for every listener (`wasmgate run` flags).
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// `--path-normalization`, Istio's MeshConfig `pathNormalization` (default BASE).
    pub path_normalization: PathNormalization,
    /// Upgrade protocols tunnelled, lowercase: `websocket` (Istio's default
    /// `upgradeConfigs`) and any `--allow-upgrade`.
    pub upgrades: Vec<String>,
    /// `--num-trusted-proxies`, Istio's `gatewayTopology.numTrustedProxies`: proxies in
    /// front of the gateway whose `x-forwarded-for` entries are trusted;
    /// AuthorizationPolicy's `remoteIpBlocks` read the client's address there.
    pub trusted_proxies: u32,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            path_normalization: PathNormalization::Base,
            upgrades: vec!["websocket".to_string()],
            trusted_proxies: 0,
        }
    }
}

impl EdgeSettings {
    /// With `extra` upgrade protocols allowed beside `websocket`.
    pub fn new(path_normalization: PathNormalization, extra: &[String]) -> Self {
        let mut upgrades = EdgeSettings::default().upgrades;
        for p in extra {
            let p = p.trim().to_ascii_lowercase();
            if !p.is_empty() && !upgrades.contains(&p) {
                upgrades.push(p);
            }
        }
        EdgeSettings {
            path_normalization,
            upgrades,
            trusted_proxies: 0,
        }
    }

    /// Whether an `Upgrade` value is tunnelled: it must name one allowed protocol
    /// (compared whole and case-insensitively, as Envoy's `upgrade_type`).
    pub fn allows_upgrade(&self, protocol: &HeaderValue) -> bool {
        protocol.to_str().is_ok_and(|p| {
            let p = p.trim();
            self.upgrades.iter().any(|u| u.eq_ignore_ascii_case(p))
        })
    }
}

/// Refuse a request whose target host is ambiguous or whose framing the watcher flagged.
pub fn check_head<B>(req: &Request<B>, framing: Option<&FramingLog>) -> Result<(), ProxyError> {
    if let Some(problem) = framing.and_then(|f| f.next(req.method(), req.uri())) {
        return Err(ProxyError::BadRequest(problem));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        // RFC 9112 3.2: more than one Host line is a 400.
        return Err(ProxyError::BadRequest("duplicate Host"));
    }
    let Some(host) = host else {
        return Ok(());
    };
    let host = host
        .to_str()
        .ok()
        .and_then(|h| Authority::from_str(h).ok())
        .filter(|a| !a.as_str().contains('@'))
        .ok_or(ProxyError::BadRequest("invalid Host"))?;
    // HTTP/1 absolute-form (and CONNECT's authority-form): the target names the host, a
    // differing Host is an ambiguity a smuggler would use. HTTP/2's `:authority` simply
    // wins over a `host` header (RFC 9113 8.3.1), as it always has here.
    if req.version() <= Version::HTTP_11
        && let Some(target) = req.uri().authority()
        && !same_authority(&host, target, req.uri().scheme())
    {
        return Err(ProxyError::BadRequest(
            "Host differs from the request target",
        ));
    }
    Ok(())
}

/// Host names equal (case-insensitively), ports equal once the scheme's default port
/// fills in a missing one (for CONNECT, which has no scheme, a `Host` without a port
/// names the target's); userinfo in the target is ignored.
fn same_authority(host: &Authority, target: &Authority, scheme: Option<&Scheme>) -> bool {
    let default = match scheme.map(Scheme::as_str) {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => target.port_u16(),
    };
    host.host().eq_ignore_ascii_case(target.host())
        && host.port_u16().or(default) == target.port_u16().or(default)
}

/// Normalize the request's path in place (the query is kept byte for byte). Returns the
/// path as received when it changed, for the access log.
pub fn normalize_path<B>(
    req: &mut Request<B>,
    mode: PathNormalization,
) -> Result<Option<String>, ProxyError> {
    let Some(pq) = req.uri().path_and_query() else {
        return Ok(None);
    };
    let normalized = match mode.apply(pq.path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(None),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(_) => return Err(ProxyError::BadRequest("invalid path")),
    };
    let raw = pq.path().to_string();
    let rebuilt = match pq.query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query =
        Some(PathAndQuery::try_from(rebuilt).map_err(|_| ProxyError::BadRequest("invalid path"))?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid path"))?;
    Ok(Some(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut r = Request::builder().version(version).uri(uri);
        for h in hosts {
            r = r.header(header::HOST, *h);
        }
        r.body(()).unwrap_or_default()
    }

    fn verdict(r: &Request<()>) -> Result<(), &'static str> {
        check_head(r, None).map_err(|e| match e {
            ProxyError::BadRequest(why) => why,
            _ => "other",
        })
    }

    #[test]
    fn host_rules() {
        const HTTP_10: Version = Version::HTTP_10;
        const HTTP_11: Version = Version::HTTP_11;
        const HTTP_2: Version = Version::HTTP_2;
        assert_eq!(verdict(&req(HTTP_11, "/", &["a.example"])), Ok(()));
        assert_eq!(
            verdict(&req(HTTP_11, "/", &["a.example", "b.example"])),
            Err("duplicate Host")
        );
        assert_eq!(
            verdict(&req(HTTP_11, "/", &["a.example", "a.example"])),
            Err("duplicate Host")
        );
        assert_eq!(verdict(&req(HTTP_11, "/", &["a b"])), Err("invalid Host"));
        assert_eq!(verdict(&req(HTTP_11, "/", &["u@a"])), Err("invalid Host"));
        assert_eq!(verdict(&req(HTTP_11, "/", &[""])), Err("invalid Host"));
        assert_eq!(verdict(&req(HTTP_10, "/", &[])), Ok(()));
        // Absolute-form: the same host, with or without the default port, any case.
        for host in ["a.example", "A.Example:80"] {
            assert_eq!(
                verdict(&req(HTTP_11, "http://a.example/x", &[host])),
                Ok(())
            );
        }
        assert_eq!(
            verdict(&req(
                HTTP_11,
                "https://user@a.example:443/x",
                &["a.example"]
            )),
            Ok(())
        );
        for host in ["b.example", "a.example:8080", "a.example.evil"] {
            assert_eq!(
                verdict(&req(HTTP_11, "http://a.example/x", &[host])),
                Err("Host differs from the request target"),
                "{host}"
            );
        }
        // CONNECT's authority-form: a Host with or without the port.
        let connect = |host: &str| {
            let mut r = req(HTTP_11, "a.example:443", &[host]);
            *r.method_mut() = http::Method::CONNECT;
            verdict(&r)
        };
        assert_eq!(connect("a.example:443"), Ok(()));
        assert_eq!(connect("a.example"), Ok(()));
        assert_eq!(
            connect("b.example:443"),
            Err("Host differs from the request target")
        );
        assert_eq!(
            connect("a.example:80"),
            Err("Host differs from the request target")
        );
        // HTTP/2: :authority wins.
        assert_eq!(
            verdict(&req(HTTP_2, "http://a.example/x", &["b.example"])),
            Ok(())
        );
    }

    #[test]
    fn upgrades_allowed_by_name() {
        let edge = EdgeSettings::new(PathNormalization::Base, &["Echo".to_string()]);
        for ok in ["websocket", "WebSocket", " echo "] {
            assert!(edge.allows_upgrade(&HeaderValue::from_static(ok)), "{ok}");
        }
        for no in ["h2c", "websocket, h2c", "tls/1.0"] {
            assert!(!edge.allows_upgrade(&HeaderValue::from_static(no)), "{no}");
        }
        assert!(!EdgeSettings::default().allows_upgrade(&HeaderValue::from_static("echo")));
    }

    #[test]
    fn path_rewritten_in_place_query_untouched() {
        let mut r = req(Version::HTTP_11, "/x/../hello?a=/../b&c=%2e", &[]);
        let raw = normalize_path(&mut r, PathNormalization::Base);
        assert!(
            matches!(raw, Ok(Some(ref p)) if p == "/x/../hello"),
            "{raw:?}"
        );
        assert_eq!(r.uri().to_string(), "/hello?a=/../b&c=%2e");

        let mut r = req(Version::HTTP_11, "http://a.example/p/%2e%2e/q?", &[]);
        assert!(normalize_path(&mut r, PathNormalization::Base).is_ok());
        assert_eq!(r.uri().to_string(), "http://a.example/q?");

        let mut r = req(Version::HTTP_11, "/fine?x", &[]);
        assert!(matches!(
            normalize_path(&mut r, PathNormalization::Base),
            Ok(None)
        ));
        let mut r = req(Version::HTTP_11, "/a%00", &[]);
        assert!(matches!(
            normalize_path(&mut r, PathNormalization::Base),
            Err(ProxyError::BadRequest("invalid path"))
        ));
    }
}
