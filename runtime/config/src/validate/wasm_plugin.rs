//! WasmPlugin rules (Istio's `ValidateWasmPlugin` and the CRD's schema): url and its
//! scheme, sha256, selector vs target references, VM env, traffic selectors; builds
//! [`model::WasmPlugin`].

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{Report, port_u16, validate_port, validate_workload_selector};
use crate::model::{self, FailStrategy, Phase, PluginSource, TargetRef};
use crate::raw::{self, EnvValueSource, PluginPhase, PluginType};
use crate::yaml::FieldPath;

pub(crate) const SCHEME_MESSAGE: &str = "url must have schema one of [http, https, file, oci]";

pub(crate) fn validate(
    meta: &model::Meta,
    spec: &raw::WasmPluginSpec,
    r: &mut Report,
) -> model::WasmPlugin {
    let p = FieldPath::root("spec");
    let ns = &meta.id.namespace;
    let selectors = [
        spec.selector.is_some(),
        spec.target_ref.is_some(),
        !spec.target_refs.is_empty(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if selectors > 1 {
        r.err(&p, "only one of targetRefs or selector can be set");
    }
    if let Some(s) = &spec.selector {
        validate_workload_selector(r, &p.key("selector"), s);
    }
    let mut targets = Vec::new();
    if let Some(t) = &spec.target_ref {
        targets.extend(target(t, ns, &p.key("targetRef"), r, PLUGIN_TARGETS));
    }
    if spec.target_refs.len() > 16 {
        r.err(&p.key("targetRefs"), "targetRefs may have at most 16 items");
    }
    for (i, t) in spec.target_refs.iter().enumerate() {
        targets.extend(target(
            t,
            ns,
            &p.key("targetRefs").index(i),
            r,
            PLUGIN_TARGETS,
        ));
    }

    let source = match parse_url(&spec.url) {
        Ok(s) => s,
        Err(e) => {
            r.err(&p.key("url"), e);
            PluginSource::Named(String::new())
        }
    };
    if let PluginSource::Remote(_) = source {
        r.warn(
            &p.key("url"),
            "wasmgate does not fetch remote plugins; use a file name in the plugins directory or a file:// path",
        );
    }
    if !spec.sha256.is_empty() {
        if spec.sha256.len() != 64 {
            r.err(&p.key("sha256"), "sha256 field must be 64 characters long");
        } else if !spec
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            r.err(
                &p.key("sha256"),
                "sha256 field must match [a-f0-9]{64} pattern",
            );
        }
    }
    for (field, value, max) in [
        ("imagePullSecret", &spec.image_pull_secret, 253),
        ("pluginName", &spec.plugin_name, 256),
    ] {
        match value {
            Some(v) if v.is_empty() => {
                r.err(&p.key(field), format!("{field} must not be empty when set"))
            }
            Some(v) if v.len() > max => r.err(
                &p.key(field),
                format!("{field} must be at most {max} characters long"),
            ),
            _ => {}
        }
    }
    if let Some(cfg) = &spec.plugin_config
        && !cfg.is_object()
    {
        r.err(&p.key("pluginConfig"), "pluginConfig must be an object");
    }
    if let Some(vm) = &spec.vm_config {
        let ep = p.key("vmConfig").key("env");
        if vm.env.len() > 256 {
            r.err(&ep, "env may have at most 256 items");
        }
        let mut names = BTreeSet::new();
        for (i, e) in vm.env.iter().enumerate() {
            let vp = ep.index(i);
            if e.name.is_empty() {
                r.err(&vp.key("name"), "name must not be empty");
            } else if e.name.len() > 256 {
                r.err(&vp.key("name"), "name must be at most 256 characters long");
            } else if !names.insert(e.name.as_str()) {
                r.err(&vp.key("name"), format!("duplicate env name {:?}", e.name));
            }
            if e.value_from == Some(EnvValueSource::Host) && e.value.is_some() {
                r.err(
                    &vp.key("value"),
                    "value may only be set when valueFrom is INLINE",
                );
            }
            if e.value.as_ref().is_some_and(|v| v.len() > 2048) {
                r.err(
                    &vp.key("value"),
                    "value must be at most 2048 characters long",
                );
            }
        }
    }
    let mut ports = Vec::new();
    for (i, m) in spec.match_.iter().enumerate() {
        let mp = p.key("match").index(i);
        let mut seen = BTreeSet::new();
        for (j, port) in m.ports.iter().enumerate() {
            let pp = mp.key("ports").index(j).key("number");
            match port.number {
                None => r.err(&pp, "port number is required"),
                Some(n) => {
                    if let Err(e) = validate_port(n) {
                        r.err(&pp, e);
                    } else if !seen.insert(n) {
                        r.err(&pp, format!("duplicate port number {n}"));
                    } else if !ports.contains(&port_u16(n)) {
                        ports.push(port_u16(n));
                    }
                }
            }
        }
    }
    if spec.type_ == Some(PluginType::Network) {
        r.warn(
            &p.key("type"),
            "wasmgate runs HTTP plugins only; a NETWORK plugin will not work",
        );
    }

    model::WasmPlugin {
        meta: meta.clone(),
        source,
        sha256: (!spec.sha256.is_empty()).then(|| spec.sha256.clone()),
        plugin_config: spec
            .plugin_config
            .clone()
            .unwrap_or(serde_json::Value::Null),
        phase: match spec.phase {
            Some(PluginPhase::Authn) => Phase::Authn,
            Some(PluginPhase::Authz) => Phase::Authz,
            Some(PluginPhase::Stats) => Phase::Stats,
            Some(PluginPhase::Unspecified) | None => Phase::Unspecified,
        },
        priority: i64::from(spec.priority.unwrap_or(0)),
        // FAIL_RELOAD only differs in replacing a crashed VM, which wasmgate always does.
        fail_strategy: match spec.fail_strategy {
            Some(raw::FailStrategy::FailOpen) => FailStrategy::FailOpen,
            _ => FailStrategy::FailClose,
        },
        targets,
        selector: spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .unwrap_or_default(),
        ports,
        spec: spec.clone(),
    }
}

fn is_group(g: &str) -> bool {
    g.is_empty() || (g.len() <= 253 && crate::host::is_k8s_subdomain(g))
}

fn is_kind(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// The networking.istio.io kinds a WasmPlugin binds to (wasmgate's addition to the
/// kinds Istio allows).
const PLUGIN_TARGETS: &[&str] = &["VirtualService", "Gateway"];

/// A policy target. wasmgate binds policies to the `networking.istio.io` kinds in
/// `bindable` (for WasmPlugins VirtualServices and Gateways, for Telemetry Gateways); the
/// kinds Istio itself allows (Service, ServiceEntry, Gateway API Gateway and
/// GatewayClass) are accepted and ignored with a warning.
pub(crate) fn target(
    t: &raw::PolicyTargetReference,
    ns: &str,
    p: &FieldPath,
    r: &mut Report,
    bindable: &[&str],
) -> Option<TargetRef> {
    let before = r.errors.len();
    if t.kind.is_empty() {
        r.err(&p.key("kind"), "targetRef kind must be set");
    } else if !is_kind(&t.kind) {
        r.err(
            &p.key("kind"),
            format!("invalid targetRef kind {:?}", t.kind),
        );
    }
    if t.name.is_empty() {
        r.err(&p.key("name"), "targetRef name must be set");
    } else if t.name.len() > 253 {
        r.err(
            &p.key("name"),
            "targetRef name must be at most 253 characters long",
        );
    }
    if !is_group(&t.group) {
        r.err(
            &p.key("group"),
            format!("invalid targetRef group {:?}", t.group),
        );
    }
    if !t.namespace.is_empty() && t.namespace != ns {
        r.err(
            &p.key("namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        );
    }
    if r.errors.len() != before {
        return None;
    }
    let group = if t.group.is_empty() {
        "core"
    } else {
        t.group.as_str()
    };
    match (group, t.kind.as_str()) {
        ("networking.istio.io", kind) if bindable.contains(&kind) => Some(TargetRef {
            group: t.group.clone(),
            kind: t.kind.clone(),
            namespace: ns.to_string(),
            name: t.name.clone(),
        }),
        ("core", "Service")
        | ("networking.istio.io", "ServiceEntry")
        | ("gateway.networking.k8s.io", "Gateway" | "GatewayClass") => {
            r.warn(
                p,
                format!("ignored by wasmgate: targetRef to {group}/{}", t.kind),
            );
            None
        }
        _ => {
            let allowed: Vec<String> = bindable
                .iter()
                .map(|k| format!("networking.istio.io/{k}"))
                .chain(
                    [
                        "core/Service",
                        "networking.istio.io/ServiceEntry",
                        "gateway.networking.k8s.io/Gateway",
                        "gateway.networking.k8s.io/GatewayClass",
                    ]
                    .map(String::from),
                )
                .collect();
            r.err(
                p,
                format!(
                    "targetRef must be to one of {} but was {group}/{}",
                    allowed.join(", "),
                    t.kind
                ),
            );
            None
        }
    }
}

/// Classifies a plugin url. No scheme names a file in the plugins directory (wasmgate's
/// reading; Istio would pull an OCI image); `file://` a local path; `http(s)://` and
/// `oci://` are remote.
pub(crate) fn parse_url(url: &str) -> Result<PluginSource, String> {
    if url.is_empty() {
        return Err("url field needs to be set".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{SCHEME_MESSAGE}: {url:?} is not a valid URL"));
    }
    let bytes = url.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(format!(
                "{SCHEME_MESSAGE}: {url:?} is not a valid URL (bad % escape)"
            ));
        }
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        if url.starts_with('#') || url.starts_with('?') {
            return Err(format!("{SCHEME_MESSAGE}: {url:?} is not a valid URL"));
        }
        return Ok(PluginSource::Named(url.to_string()));
    };
    let valid_scheme = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return Err(format!("{SCHEME_MESSAGE}: {url:?} is not a valid URL"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            if rest.is_empty() {
                return Err("file:// url has no path".into());
            }
            Ok(PluginSource::File(PathBuf::from(percent_decode(rest))))
        }
        "http" | "https" | "oci" => {
            if rest.is_empty() {
                return Err(format!("{SCHEME_MESSAGE}: {url:?} has no host"));
            }
            Ok(PluginSource::Remote(url.to_string()))
        }
        other => Err(format!("{SCHEME_MESSAGE}: unsupported scheme {other:?}")),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("router.wasm"),
            Ok(PluginSource::Named("router.wasm".into()))
        );
        assert_eq!(
            parse_url("file:///opt/filters/my%20plugin.wasm"),
            Ok(PluginSource::File("/opt/filters/my plugin.wasm".into()))
        );
        assert_eq!(
            parse_url("oci://ghcr.io/x/y:1"),
            Ok(PluginSource::Remote("oci://ghcr.io/x/y:1".into()))
        );
        assert!(matches!(
            parse_url("HTTPS://example.com/x.wasm"),
            Ok(PluginSource::Remote(_))
        ));
        for bad in [
            "",
            "#%blah$#@",
            "fake://example.com",
            "a b",
            "http://",
            "1x://y",
            "50%",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
